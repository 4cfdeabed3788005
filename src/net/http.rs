//! The REST client: at most one keep-alive HTTP/1.1 connection per host, under the budget.
//!
//! Design: each host (`scheme://authority`) has one slot. A request locks the slot (requests to
//! one host are serialized over its single connection), opens the connection on demand with a
//! `Rest` permit, and reuses it afterwards. The hyper connection driver task owns the socket
//! and the permit, so the permit returns exactly when the connection ends. A connection unused
//! for `[rest] idle_timeout` is closed by a reaper, and any error or timeout closes it too.
//! Bodies are bounded by `[rest] max_body_bytes`.
//!
//! Owns: HTTP framing and connection reuse. Must not touch: rate limits (see
//! `session::rest`) or response bodies' meaning.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use futures_rustls::rustls::ClientConfig;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use prometheus_client::metrics::gauge::Gauge;
use smol::{Executor, Task, Timer};
use smol_hyper::rt::FuturesIo;

use crate::budget::{Budget, BudgetExhausted, PermitKind};
use crate::config::{Endpoint, RestConfig};
use crate::metrics::{HostLabels, Metrics, RestLabels};
use crate::net::ws::{self, ConnectError};

/// A REST answer (any status).
#[derive(Debug, Clone)]
pub struct RestResponse {
    pub status: u16,
    /// `Retry-After`, in seconds form.
    pub retry_after: Option<Duration>,
    /// Binance's `x-mbx-used-weight-1m`.
    pub used_weight: Option<u32>,
    pub body: Vec<u8>,
}

/// Why a REST call produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error(transparent)]
    Budget(#[from] BudgetExhausted),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error(
        "response body larger than {limit} bytes (raise [rest] max_body_bytes if this is expected)"
    )]
    BodyTooLarge { limit: usize },
    #[error("HTTP error: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Request(String),
}

struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    /// Owns the socket and the permit; dropping it closes the connection.
    _driver: Task<()>,
    id: u64,
}

/// Counts one open connection while it lives.
struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(g: Gauge) -> Self {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct Slot {
    base: String,
    conn: async_lock::Mutex<Option<Conn>>,
    last_used: Mutex<Instant>,
    open: Gauge,
}

struct Inner {
    budget: Budget,
    tls: Arc<ClientConfig>,
    idle: Duration,
    timeout: Duration,
    max_body: usize,
    executor: Arc<Executor<'static>>,
    metrics: Option<Arc<Metrics>>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// The process's REST client; cheap to clone.
#[derive(Clone)]
pub struct RestClient {
    inner: Arc<Inner>,
}

impl RestClient {
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
                tls,
                idle: cfg.idle_timeout.0,
                timeout: cfg.request_timeout.0,
                max_body: cfg.max_body_bytes.0,
                executor,
                metrics,
                slots: Mutex::new(HashMap::new()),
                next_id: std::sync::atomic::AtomicU64::new(1),
            }),
        }
    }

    fn slot(&self, base: &str) -> Arc<Slot> {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .entry(base.to_owned())
            .or_insert_with(|| {
                let open = self
                    .inner
                    .metrics
                    .as_ref()
                    .map_or_else(Gauge::default, |m| {
                        m.rest_connections
                            .get_or_create(&HostLabels {
                                host: base.to_owned(),
                            })
                            .clone()
                    });
                Arc::new(Slot {
                    base: base.to_owned(),
                    conn: async_lock::Mutex::new(None),
                    last_used: Mutex::new(Instant::now()),
                    open,
                })
            })
            .clone()
    }

    /// Open REST connections (all hosts).
    pub fn open_connections(&self) -> usize {
        let slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.values().map(|s| s.open.get().max(0) as usize).sum()
    }

    /// `GET base + path_and_query`.
    pub async fn get(
        &self,
        base: &Endpoint,
        path_and_query: &str,
    ) -> Result<RestResponse, RestError> {
        let host = format!("{}://{}", base.scheme(), base.authority());
        let path = format!("{}{}", base.path(), path_and_query);
        let slot = self.slot(&host);
        let timeout = self.inner.timeout;
        let result = self
            .request(&slot, base, &path)
            .or(async {
                Timer::after(timeout).await;
                Err(RestError::Timeout(timeout))
            })
            .await;
        if result.is_err() {
            // A connection in an unknown state is not reused.
            *slot.conn.lock().await = None;
        }
        if let Some(m) = &self.inner.metrics {
            let status = match &result {
                Ok(r) => r.status.to_string(),
                Err(_) => "error".to_owned(),
            };
            m.rest_requests
                .get_or_create(&RestLabels { host, status })
                .inc();
        }
        if let Err(err) = &result {
            // Callers log with their own context (once per failure streak); this is detail.
            tracing::debug!(%err, url = %format!("{}{}", base.as_str(), path_and_query), "REST request failed");
        }
        result
    }

    async fn request(
        &self,
        slot: &Arc<Slot>,
        base: &Endpoint,
        path: &str,
    ) -> Result<RestResponse, RestError> {
        let mut guard = slot.conn.lock().await;
        let reusable = guard.as_ref().is_some_and(|c| !c.sender.is_closed());
        if !reusable {
            *guard = None;
            *guard = Some(self.open(slot, base).await?);
        }
        let Some(conn) = guard.as_mut() else {
            return Err(RestError::Request("no connection".into()));
        };
        conn.sender.ready().await?;
        let req = http::Request::get(path)
            .header(http::header::HOST, base.authority())
            .header(
                http::header::USER_AGENT,
                concat!("marketbox/", env!("CARGO_PKG_VERSION")),
            )
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| RestError::Request(e.to_string()))?;
        let resp = conn.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let header_num = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let retry_after = header_num("retry-after").map(Duration::from_secs);
        let used_weight =
            header_num("x-mbx-used-weight-1m").map(|w| w.min(u64::from(u32::MAX)) as u32);
        let limit = self.inner.max_body;
        let body = Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(h) => RestError::Http(*h),
                Err(_) => RestError::BodyTooLarge { limit },
            })?
            .to_bytes()
            .to_vec();
        *slot.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        Ok(RestResponse {
            status,
            retry_after,
            used_weight,
            body,
        })
    }

    async fn open(&self, slot: &Arc<Slot>, base: &Endpoint) -> Result<Conn, RestError> {
        let permit = self
            .inner
            .budget
            .try_acquire(PermitKind::Rest, &slot.base)?;
        let url = slot.base.as_str();
        let (secure, host, port) = ws::split_url(url)
            .ok_or_else(|| RestError::Request(format!("{url} is not an http(s) URL")))?;
        let stream = ws::connect_stream(url, host, port, secure.then_some(&self.inner.tls)).await?;
        let (sender, connection) = http1::handshake(FuturesIo::new(stream)).await?;
        let open = GaugeGuard::new(slot.open.clone());
        let driver = self.inner.executor.spawn(async move {
            // The permit and the gauge live exactly as long as the connection, whether it ends
            // by itself or the task is dropped (idle close, error).
            let _permit = permit;
            let _open = open;
            let _ = connection.await;
        });
        let id = self
            .inner
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *slot.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.spawn_reaper(Arc::downgrade(slot), id);
        tracing::debug!(host = %base.authority(), "REST connection opened");
        Ok(Conn {
            sender,
            _driver: driver,
            id,
        })
    }

    /// Closes connection `id` of the slot once it has been idle for `idle_timeout`.
    fn spawn_reaper(&self, slot: Weak<Slot>, id: u64) {
        let idle = self.inner.idle;
        self.inner
            .executor
            .spawn(async move {
                loop {
                    let Some(s) = slot.upgrade() else { return };
                    let last = *s.last_used.lock().unwrap_or_else(|e| e.into_inner());
                    let due = last + idle;
                    drop(s);
                    Timer::at(due).await;
                    let Some(s) = slot.upgrade() else { return };
                    let mut conn = s.conn.lock().await;
                    match conn.as_ref() {
                        Some(c) if c.id == id => {
                            let last = *s.last_used.lock().unwrap_or_else(|e| e.into_inner());
                            if last.elapsed() >= idle {
                                // Dropping the driver closes the socket and returns the permit.
                                *conn = None;
                                return;
                            }
                        }
                        _ => return,
                    }
                }
            })
            .detach();
    }
}
