//! The metrics listener: `/metrics`, `/health` and `/ready` over HTTP/1.1 (DESIGN rule 6).
//!
//! Design: a hyper 1 HTTP/1 server on the app's smol executor, one task per connection.
//! It is read-only (GET and HEAD; anything else is 405, a request with a body 413) and every
//! resource a client can make it hold is bounded:
//!
//! | what | bound |
//! |---|---|
//! | connections at once | [`MAX_CONNECTIONS`]; further clients wait in the kernel's backlog |
//! | header count | [`MAX_HEADERS`] (hyper answers 431 past it) |
//! | request line + headers | [`MAX_HEADER_BYTES`] (431) |
//! | time to send the headers | [`HEADER_TIMEOUT`], then the connection is closed |
//! | connection lifetime | [`CONNECTION_LIFETIME`], keep-alive included; scrapers reconnect |
//! | request body | none accepted |
//!
//! The listener is not an outgoing socket, so it holds no budget permit; it is bounded by
//! the table above instead. Dropping the [`Server`] closes the listener and every open
//! connection.
//!
//! `/metrics` answers in the Prometheus text format 0.0.4, or OpenMetrics 1.0 when the
//! `Accept` header prefers it ([`wants_openmetrics`]), as Prometheus itself negotiates.
//!
//! Owns: HTTP framing of the three endpoints. Must not touch: what the verdicts mean
//! (`health`), metric names (`metrics`).

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::FutureExt;
use http_body_util::Full;
use hyper::body::{Body, Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use smol::{Async, Executor, Task, Timer};
use smol_hyper::rt::{FuturesIo, SmolTimer};

use super::health::{Liveness, Readiness};
use super::{HttpLabels, Metrics};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Headers in one request.
pub const MAX_HEADERS: usize = 32;
/// Bytes of request line and headers (hyper's smallest read buffer is 8 KiB).
pub const MAX_HEADER_BYTES: usize = 8192;
/// Time a client has to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection lives, keep-alive included.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// `Content-Type` of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[error(
    "[metrics] listen = \"{addr}\": cannot listen: {source} (pick a free port, or \"\" to turn \
     the metrics server off)"
)]
pub struct ListenError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// What the endpoints answer from.
pub struct Endpoints {
    pub metrics: Arc<Metrics>,
    pub liveness: Liveness,
    pub readiness: std::sync::Arc<Readiness>,
}

/// A running listener. Dropping it stops accepting and closes every connection.
pub struct Server {
    addr: SocketAddr,
    _accept: Task<()>,
    /// Connection tasks end when this is dropped (their `recv` fails).
    _stop: smol::channel::Sender<()>,
}

impl Server {
    /// The bound address (the real port when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Binds `listen` and serves the endpoints on `executor`.
pub fn start(
    listen: SocketAddr,
    endpoints: Arc<Endpoints>,
    executor: &Arc<Executor<'static>>,
) -> Result<Server, ListenError> {
    let err = |source| ListenError {
        addr: listen,
        source,
    };
    let listener = TcpListener::bind(listen).map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    let listener = Async::new(listener).map_err(err)?;
    let (stop, stopped) = smol::channel::bounded::<()>(1);
    let accept = executor.spawn(accept_loop(
        listener,
        endpoints,
        Arc::downgrade(executor),
        stopped,
    ));
    tracing::info!(%addr, "serving /metrics, /health and /ready");
    Ok(Server {
        addr,
        _accept: accept,
        _stop: stop,
    })
}

async fn accept_loop(
    listener: Async<TcpListener>,
    endpoints: Arc<Endpoints>,
    executor: Weak<Executor<'static>>,
    stopped: smol::channel::Receiver<()>,
) {
    let slots = Arc::new(async_lock::Semaphore::new(MAX_CONNECTIONS));
    let mut failing = false;
    loop {
        // Wait for a free slot before accepting: past the bound, clients queue in the backlog.
        let slot = slots.acquire_arc().await;
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => {
                if failing {
                    tracing::info!("the metrics listener accepts connections again");
                    failing = false;
                }
                tcp
            }
            Err(err) => {
                // Out of file descriptors, typically: back off instead of spinning.
                if !failing {
                    tracing::warn!(%err, "the metrics listener cannot accept; retrying every 100 ms");
                    failing = true;
                }
                Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(ex) = executor.upgrade() else { return };
        let (endpoints, stopped) = (endpoints.clone(), stopped.clone());
        ex.spawn(async move {
            let _slot = slot;
            let _ = tcp.get_ref().set_nodelay(true);
            let svc = hyper::service::service_fn(move |req| {
                let endpoints = endpoints.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&req, &endpoints)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(SmolTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_headers(MAX_HEADERS)
                .max_buf_size(MAX_HEADER_BYTES)
                .max_header_size(MAX_HEADER_BYTES)
                .keep_alive(true)
                .serve_connection(FuturesIo::new(tcp), svc);
            async {
                // A client that misbehaves ends its own connection; nothing to report.
                let _ = conn.await;
            }
            .or(async {
                Timer::after(CONNECTION_LIFETIME).await;
            })
            .or(async {
                let _ = stopped.recv().await;
            })
            .await;
        })
        .detach();
    }
}

/// The route a request names (a metric label: a fixed set).
fn route(path: &str) -> &'static str {
    match path {
        "/metrics" => "/metrics",
        "/health" => "/health",
        "/ready" => "/ready",
        _ => "other",
    }
}

fn answer(req: &Request<Incoming>, ep: &Endpoints) -> Response<Full<Bytes>> {
    let path = route(req.uri().path());
    let resp = respond(req, path, ep);
    ep.metrics
        .http_requests
        .get_or_create(&HttpLabels {
            path,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

fn respond(req: &Request<Incoming>, path: &'static str, ep: &Endpoints) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "read-only: GET or HEAD\n");
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    if !req.body().is_end_stream() {
        let mut r = plain(StatusCode::PAYLOAD_TOO_LARGE, "requests take no body\n");
        r.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
        return r;
    }
    match path {
        "/metrics" => {
            let accept = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let (body, ctype) = if wants_openmetrics(accept) {
                (ep.metrics.encode(), OPENMETRICS)
            } else {
                (ep.metrics.encode_prometheus(), PROMETHEUS_TEXT)
            };
            with_type(StatusCode::OK, body.into(), ctype)
        }
        "/health" => {
            let report = ep.liveness.check(Instant::now());
            let status = if report.healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(status, &report)
        }
        "/ready" => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let report = ep.readiness.check(now);
            let status = if report.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(status, &report)
        }
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /health, /ready\n",
        ),
    }
}

fn with_type(status: StatusCode, body: Bytes, ctype: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    with_type(
        status,
        Bytes::from_static(text.as_bytes()),
        "text/plain; charset=utf-8",
    )
}

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(v) {
        Ok(mut body) => {
            body.push(b'\n');
            with_type(status, body.into(), "application/json")
        }
        Err(err) => {
            tracing::error!(%err, "a health verdict could not be encoded (a bug)");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "verdict not encodable\n")
        }
    }
}

/// Whether an `Accept` header prefers OpenMetrics 1.0 over the Prometheus text format:
/// the best `q` of `application/openmetrics-text` (without a version, or version 1.0.0) is
/// above zero and at least that of `text/plain` (or a wildcard).
pub fn wants_openmetrics(accept: &str) -> bool {
    let mut om = 0.0f64;
    let mut text = 0.0f64;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let mut q = 1.0f64;
        let mut version: Option<&str> = None;
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                continue;
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "q" => {
                    q = v
                        .trim()
                        .parse()
                        .ok()
                        .filter(|q: &f64| (0.0..=1.0).contains(q))
                        .unwrap_or(0.0)
                }
                "version" => version = Some(v.trim()),
                _ => {}
            }
        }
        match media.as_str() {
            "application/openmetrics-text" if version.is_none_or(|v| v == "1.0.0") => {
                om = om.max(q);
            }
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    om > 0.0 && om >= text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation_follows_what_prometheus_sends() {
        // TC0: Prometheus 2.x's scrape Accept header: OpenMetrics 1.0.0 first.
        assert!(wants_openmetrics(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        // TC1: no header, curl's */*, plain text: the 0.0.4 text format.
        assert!(!wants_openmetrics(""));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics("text/plain;version=0.0.4"));
        // TC2: only an OpenMetrics version this encoder does not write.
        assert!(!wants_openmetrics(
            "application/openmetrics-text;version=0.0.1"
        ));
        // TC3: OpenMetrics refused with q=0, or preferred less than text.
        assert!(!wants_openmetrics("application/openmetrics-text;q=0"));
        assert!(!wants_openmetrics(
            "application/openmetrics-text;q=0.4,text/plain;q=0.9"
        ));
        // TC4: garbage q values count as 0, never panic.
        assert!(!wants_openmetrics("application/openmetrics-text;q=NaN"));
        assert!(!wants_openmetrics("application/openmetrics-text;q=7"));
        assert!(wants_openmetrics("APPLICATION/OpenMetrics-Text"));
    }

    #[test]
    fn routes_are_a_fixed_set() {
        assert_eq!(route("/metrics"), "/metrics");
        assert_eq!(route("/ready"), "/ready");
        assert_eq!(route("/metrics/../../etc/passwd"), "other");
        assert_eq!(route(&"x".repeat(10_000)), "other");
    }
}
