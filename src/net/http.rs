//! The REST client: at most one keep-alive HTTP/1.1 connection per host, under the budget.
//!
//! Design: each host (`scheme://authority`) has one slot holding at most one connection.
//! A request locks the slot, so requests to one host are serialized over that connection; it
//! opens the connection on demand with a `Rest` permit (refused → [`RestError::Budget`], never
//! a wait) and leaves it for the next request. The connection's driver task, spawned on the
//! executor given to [`RestClient::new`], owns the socket *and* the permit (one value,
//! `Driver`, socket field first), so the permit returns exactly when the socket closes:
//! when the server ends the connection, when the client closes it, or when the task is
//! dropped. The executor must be running for requests to make progress at all.
//!
//! A connection is closed
//! - when it has been idle for `[rest] idle_timeout` (a reaper task per connection, armed
//!   from its last use),
//! - after any error or timeout (its state is unknown, so it is never reused),
//! - when a request on it was abandoned (the caller dropped the `get` future): it is dropped
//!   with the future (and, should that ever be missed, the next request or the reaper finds
//!   it marked busy and closes it).
//!
//! Closing awaits the driver task's cancellation, so when it returns the fd is gone and the
//! permit is back; a replacement connection therefore never needs a second permit.
//!
//! Every request is bounded by `[rest] request_timeout` (waiting for the slot included) and
//! every body by `[rest] max_body_bytes`.
//!
//! Requests are `GET`s for the venues and, for the remote-write push (`metrics::push`), a
//! `POST` with a body and its own headers ([`RestClient::post`]) over the same kind of
//! connection and permit.
//!
//! Owns: HTTP framing and connection reuse. Must not touch: rate limits (see
//! `session::rest`) or what response bodies mean.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use futures_rustls::rustls::ClientConfig;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use prometheus_client::metrics::gauge::Gauge;
use smol::{Executor, Task, Timer};
use smol_hyper::rt::FuturesIo;

use super::tls::{self, Alpn, ConnectError, Transport};
use crate::budget::{Budget, BudgetExhausted, Permit, PermitKind};
use crate::config::{Endpoint, RestConfig};
use crate::metrics::{HostLabels, Metrics, RestLabels};

/// The `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("marketbox/", env!("CARGO_PKG_VERSION"));

/// A REST answer, whatever its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestResponse {
    pub status: u16,
    /// `Retry-After`, as delay-seconds or an HTTP-date, capped at
    /// [`crate::time::MAX_VENUE_DELAY`]; `None` when absent or unreadable.
    pub retry_after: Option<Duration>,
    /// Binance's `x-mbx-used-weight-1m`, when present and a number (clamped to `u32`).
    pub used_weight: Option<u32>,
    pub body: Vec<u8>,
}

/// Why a REST call produced no answer. Every one of them closes the host's connection.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// No permit for a new connection; back off and retry later.
    #[error(transparent)]
    Budget(#[from] BudgetExhausted),
    #[error(transparent)]
    Connect {
        #[from]
        source: ConnectError,
    },
    #[error(
        "no complete answer within {after:?} (the host is slow or unreachable; \
         [rest] request_timeout bounds each request)"
    )]
    Timeout { after: Duration },
    #[error(
        "response body over {limit} bytes (raise [rest] max_body_bytes if the venue really \
         sends this much)"
    )]
    BodyTooLarge { limit: usize },
    #[error("HTTP exchange failed: {source}")]
    Http {
        #[from]
        source: hyper::Error,
    },
    /// The task making the request panicked (a bug); the caller sees a failed request and
    /// retries as for any other failure, instead of waiting for an answer for ever.
    #[error("the request task failed unexpectedly (a bug: please report it with this log)")]
    Panicked,
    #[error("{path:?} is not a valid request path: {source}")]
    InvalidPath {
        path: String,
        #[source]
        source: http::Error,
    },
}

impl RestError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, RestError::Timeout { .. })
    }
}

/// Counts one open connection (client-wide and per host) while it lives.
struct OpenGuard {
    count: Arc<AtomicUsize>,
    gauge: Gauge,
}

impl OpenGuard {
    fn new(count: Arc<AtomicUsize>, gauge: Gauge) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        gauge.inc();
        OpenGuard { count, gauge }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// The hyper connection future with everything that must end with it.
struct Driver {
    // Field order is drop order: socket, then the count, then the permit.
    conn: Connection<FuturesIo<Transport>, Full<Bytes>>,
    _open: OpenGuard,
    _permit: Permit,
    host: Arc<str>,
}

impl Future for Driver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match Pin::new(&mut self.conn).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Ready(Err(err)) => {
                tracing::debug!(host = %self.host, %err, "REST connection ended with an error");
                Poll::Ready(())
            }
        }
    }
}

/// One keep-alive connection.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    /// A request was started and has not finished: if the slot is free, it was abandoned.
    busy: bool,
    last_used: Instant,
    id: u64,
    driver: Task<()>,
}

impl Conn {
    /// Closes the socket and returns the permit; both are done when this returns.
    async fn close(self) {
        drop(self.sender);
        self.driver.cancel().await;
    }
}

/// A locked slot. If the `get` future is dropped mid-request (the caller was cancelled), the
/// connection it was using is dropped with it: its driver task is cancelled and the executor
/// closes the socket and returns the permit right away, without waiting for the reaper.
/// (hyper also ends a connection whose response future or body was dropped; this does not
/// rely on that.)
struct Locked<'a>(async_lock::MutexGuard<'a, Option<Conn>>);

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if self.0.as_ref().is_some_and(|c| c.busy) {
            self.0.take();
        }
    }
}

struct Slot {
    /// `scheme://authority`.
    host: Arc<str>,
    conn: async_lock::Mutex<Option<Conn>>,
    gauge: Gauge,
}

struct Inner {
    budget: Budget,
    tls: Arc<ClientConfig>,
    idle: Duration,
    timeout: Duration,
    max_body: usize,
    executor: Arc<Executor<'static>>,
    metrics: Option<Arc<Metrics>>,
    slots: Mutex<HashMap<Arc<str>, Arc<Slot>>>,
    open: Arc<AtomicUsize>,
    next_id: AtomicU64,
}

/// The process's REST client. Cheap to clone; clones share the connections.
#[derive(Clone)]
pub struct RestClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestClient")
            .field("open_connections", &self.open_connections())
            .finish_non_exhaustive()
    }
}

impl RestClient {
    /// A client whose connections take `Rest` permits from `budget` and run their drivers
    /// and idle reapers on `executor`. `tls` is used with ALPN `http/1.1` whatever it offers.
    pub fn new(
        budget: Budget,
        tls: Arc<ClientConfig>,
        cfg: &RestConfig,
        executor: Arc<Executor<'static>>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        RestClient {
            inner: Arc::new(Inner {
                budget,
                tls: tls::with_alpn(&tls, Alpn::Http11),
                idle: cfg.idle_timeout.0,
                timeout: cfg.request_timeout.0,
                max_body: cfg.max_body_bytes.0,
                executor,
                metrics,
                slots: Mutex::new(HashMap::new()),
                open: Arc::new(AtomicUsize::new(0)),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Open REST connections, all hosts together.
    pub fn open_connections(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// `GET` `base` + `path_and_query` (which starts with `/`), within `[rest]
    /// request_timeout`. Any status is an `Ok`; only a missing answer is an error.
    ///
    /// Cancel-safe in the sense that dropping the future never leaks: a connection left
    /// mid-request is closed by the next request or the reaper.
    pub async fn get(
        &self,
        base: &Endpoint,
        path_and_query: &str,
    ) -> Result<RestResponse, RestError> {
        let out = Outgoing {
            method: http::Method::GET,
            path_and_query,
            headers: None,
            body: Bytes::new(),
        };
        self.send(base, out).await
    }

    /// `POST` `body` to `base` + `path_and_query` with `headers` added, on the host's one
    /// keep-alive connection, under the same timeout, body limit and cancel safety as
    /// [`RestClient::get`].
    pub async fn post(
        &self,
        base: &Endpoint,
        path_and_query: &str,
        headers: &http::HeaderMap,
        body: Bytes,
    ) -> Result<RestResponse, RestError> {
        let out = Outgoing {
            method: http::Method::POST,
            path_and_query,
            headers: Some(headers),
            body,
        };
        self.send(base, out).await
    }

    async fn send(&self, base: &Endpoint, out: Outgoing<'_>) -> Result<RestResponse, RestError> {
        let path_and_query = out.path_and_query;
        let slot = self.slot(base);
        let deadline = crate::time::after(Instant::now(), self.inner.timeout);
        let result = self.locked_request(&slot, base, out, deadline).await;
        if let Some(m) = &self.inner.metrics {
            let status = match &result {
                Ok(r) => r.status.to_string(),
                Err(_) => "error".to_owned(),
            };
            m.rest_requests
                .get_or_create(&RestLabels {
                    host: slot.host.to_string(),
                    status,
                })
                .inc();
        }
        if let Err(err) = &result {
            // Callers log with their own context (once per failure streak); this is detail.
            tracing::debug!(host = %slot.host, path = path_and_query, %err, "REST request failed");
        }
        result
    }

    fn slot(&self, base: &Endpoint) -> Arc<Slot> {
        let host = format!("{}://{}", base.scheme(), base.authority());
        let mut slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get(host.as_str()) {
            return Arc::clone(slot);
        }
        let gauge = self
            .inner
            .metrics
            .as_ref()
            .map_or_else(Gauge::default, |m| {
                m.rest_connections
                    .get_or_create(&HostLabels { host: host.clone() })
                    .clone()
            });
        let host: Arc<str> = host.into();
        let slot = Arc::new(Slot {
            host: Arc::clone(&host),
            conn: async_lock::Mutex::new(None),
            gauge,
        });
        slots.insert(host, Arc::clone(&slot));
        slot
    }

    /// Waits for the slot, runs the request, and closes the connection of a failed request
    /// before the slot is released; waiting and requesting are bounded by `deadline`, the
    /// close (quick: it only waits for the executor to drop the driver) is not, so that it
    /// is complete when this returns.
    async fn locked_request(
        &self,
        slot: &Arc<Slot>,
        base: &Endpoint,
        out: Outgoing<'_>,
        deadline: Instant,
    ) -> Result<RestResponse, RestError> {
        let after = self.inner.timeout;
        let mut guard = async { Ok(Locked(slot.conn.lock().await)) }
            .or(expire(deadline, after))
            .await?;
        let result = self
            .request(&mut guard.0, slot, base, out)
            .or(expire(deadline, after))
            .await;
        if result.is_err()
            && let Some(conn) = guard.0.take()
        {
            conn.close().await;
        }
        result
    }

    async fn request(
        &self,
        conn: &mut Option<Conn>,
        slot: &Arc<Slot>,
        base: &Endpoint,
        out: Outgoing<'_>,
    ) -> Result<RestResponse, RestError> {
        let path_and_query = out.path_and_query;
        let mut path = String::with_capacity(base.path().len() + path_and_query.len() + 1);
        path.push_str(base.path());
        path.push_str(path_and_query);
        if path.is_empty() {
            path.push('/');
        }
        let mut req = http::Request::builder()
            .method(out.method)
            .uri(path.as_str())
            .header(http::header::HOST, base.authority())
            .header(http::header::USER_AGENT, USER_AGENT)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(out.body))
            .map_err(|source| RestError::InvalidPath {
                path: path.clone(),
                source,
            })?;
        if let Some(extra) = out.headers {
            for (name, value) in extra {
                req.headers_mut().insert(name, value.clone());
            }
        }

        // Reuse only a connection that is idle and still open.
        if let Some(c) = conn.as_mut() {
            let alive = !c.busy && c.sender.ready().await.is_ok();
            if !alive && let Some(old) = conn.take() {
                old.close().await;
            }
        }
        let c = match conn {
            Some(c) => c,
            None => {
                let fresh = self.open(slot).await?;
                conn.insert(fresh)
            }
        };
        c.sender.ready().await?;
        c.busy = true;
        c.last_used = Instant::now();
        let resp = c.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
        let header_num = |name: &str| header(name).and_then(|v| v.trim().parse::<u64>().ok());
        let retry_after = header("retry-after")
            .and_then(|v| crate::time::parse_retry_after(v, std::time::SystemTime::now()));
        let used_weight =
            header_num("x-mbx-used-weight-1m").map(|w| u32::try_from(w).unwrap_or(u32::MAX));
        let declared = header_num("content-length");
        let body = read_body(resp.into_body(), declared, self.inner.max_body).await?;
        c.busy = false;
        c.last_used = Instant::now();
        Ok(RestResponse {
            status,
            retry_after,
            used_weight,
            body,
        })
    }

    /// Opens the slot's connection: permit, TCP, TLS, HTTP/1 handshake; spawns its driver
    /// and its idle reaper.
    async fn open(&self, slot: &Arc<Slot>) -> Result<Conn, RestError> {
        let host = &*slot.host;
        let target = tls::split_url(host)
            .filter(|_| host.starts_with("http://") || host.starts_with("https://"))
            .ok_or_else(|| ConnectError::Url {
                url: host.to_owned(),
            })?;
        let permit = self.inner.budget.try_acquire(PermitKind::Rest, host)?;
        // On any failure below, the transport is dropped (closed) before the permit.
        let transport = tls::connect_transport(
            host,
            target,
            &self.inner.tls,
            &permit,
            Some(self.inner.timeout),
        )
        .await?;
        let (sender, conn) = http1::handshake(FuturesIo::new(transport)).await?;
        let driver = Driver {
            conn,
            _open: OpenGuard::new(Arc::clone(&self.inner.open), slot.gauge.clone()),
            _permit: permit,
            host: Arc::clone(&slot.host),
        };
        let driver = self.inner.executor.spawn(driver);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.spawn_reaper(Arc::downgrade(slot), id);
        tracing::debug!(host, "REST connection opened");
        Ok(Conn {
            sender,
            busy: false,
            last_used: Instant::now(),
            id,
            driver,
        })
    }

    /// Closes connection `id` of `slot` once it has been idle for `idle_timeout`, or as soon
    /// as it is found closed by the server or abandoned mid-request. Ends with the
    /// connection.
    fn spawn_reaper(&self, slot: Weak<Slot>, id: u64) {
        let idle = self.inner.idle;
        let mut due = crate::time::after(Instant::now(), idle);
        self.inner
            .executor
            .spawn(async move {
                loop {
                    Timer::at(due).await;
                    let Some(slot) = slot.upgrade() else { return };
                    let mut guard = slot.conn.lock().await;
                    let Some(c) = guard.as_ref().filter(|c| c.id == id) else {
                        return;
                    };
                    let idle_until = crate::time::after(c.last_used, idle);
                    if c.busy || c.sender.is_closed() || Instant::now() >= idle_until {
                        if let Some(c) = guard.take() {
                            drop(guard);
                            c.close().await;
                            tracing::debug!(host = %slot.host, "idle REST connection closed");
                        }
                        return;
                    }
                    due = idle_until;
                }
            })
            .detach();
    }
}

/// One request: method, target, extra headers and body (empty for a `GET`).
struct Outgoing<'a> {
    method: http::Method,
    path_and_query: &'a str,
    headers: Option<&'a http::HeaderMap>,
    body: Bytes,
}

/// Fails with [`RestError::Timeout`] at `deadline`.
async fn expire<T>(deadline: Instant, after: Duration) -> Result<T, RestError> {
    Timer::at(deadline).await;
    Err(RestError::Timeout { after })
}

/// Reads a whole body, refusing more than `limit` bytes (before reading, when the
/// `Content-Length` already says so).
async fn read_body(
    mut body: hyper::body::Incoming,
    declared: Option<u64>,
    limit: usize,
) -> Result<Vec<u8>, RestError> {
    let too_large = || RestError::BodyTooLarge { limit };
    let capacity = match declared {
        Some(n) if n > limit as u64 => return Err(too_large()),
        Some(n) => n as usize,
        None => 0,
    };
    let mut out = Vec::with_capacity(capacity);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if data.len() > limit - out.len() {
                return Err(too_large());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}
