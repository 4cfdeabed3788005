//! The socket layer against real loopback servers (port 0) that trust a throwaway CA.
//!
//! Each test runs its servers and the client on its own `Executor` inside `smol::block_on`.
//! Waits are bounded polls of the condition, never fixed sleeps longer than the bound under
//! test.

use std::convert::Infallible;
use std::future::Future;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::{Bytes, Message};
use futures_lite::{AsyncRead, AsyncWrite, FutureExt, StreamExt};
use futures_rustls::TlsAcceptor;
use futures_rustls::rustls::{self, ServerConfig};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use smol::channel::{Receiver, Sender};
use smol::{Async, Executor, Timer};

use marketbox::budget::{Budget, PermitKind};
use marketbox::config::{Dur, Endpoint, Int, RestConfig};
use marketbox::metrics::{HostLabels, Metrics, RestLabels};
use marketbox::net::http::{RestClient, RestError};
use marketbox::net::tls::{self, Alpn};
use marketbox::net::ws::{self, ConnectError, WsError, WsOptions};

// ---------------------------------------------------------------------------------------------
// Helpers

/// A throwaway CA, a leaf for `localhost`/127.0.0.1 signed by it, and the CA's PEM file.
struct Pki {
    leaf: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
    ca_path: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "marketbox net test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("leaf params")
            .signed_by(&leaf_key, &ca)
            .expect("leaf");
        let ca_path = std::env::temp_dir().join(format!(
            "marketbox-net-ca-{}-{}.pem",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&ca_path, ca.pem()).expect("write CA");
        Pki {
            leaf: vec![CertificateDer::from(leaf.der().to_vec())],
            key_der: leaf_key.serialize_der(),
            ca_path,
        }
    }

    fn server(&self, alpn: &[&[u8]]) -> TlsAcceptor {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let mut cfg =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(self.leaf.clone(), key)
                .expect("server cert");
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsAcceptor::from(Arc::new(cfg))
    }

    fn ca(&self) -> &Path {
        &self.ca_path
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_path);
    }
}

/// `fut`, or `None` when it takes longer than `limit`.
async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> Option<T> {
    async { Some(fut.await) }
        .or(async {
            Timer::after(limit).await;
            None
        })
        .await
}

/// Polls `cond` every 10 ms until it holds; false if it still fails after `limit`.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        Timer::after(Duration::from_millis(10)).await;
    }
}

fn listener() -> (Async<TcpListener>, u16) {
    let l = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).expect("bind");
    let port = l.get_ref().local_addr().expect("addr").port();
    (l, port)
}

fn run<T>(test: impl FnOnce(Arc<Executor<'static>>) -> T) -> T {
    let ex = Arc::new(Executor::new());
    test(ex)
}

// ---------------------------------------------------------------------------------------------
// WebSocket server

#[derive(Debug, PartialEq, Eq)]
enum WsEvent {
    Pong(Vec<u8>),
    CloseFrame,
    /// The connection ended (EOF or reset, after a close frame or not).
    Ended,
}

/// A WebSocket server: echoes text, answers `big:N` with an N-byte text frame and `ping-me`
/// with a ping. `tls: None` serves plain `ws://`.
fn ws_server(ex: &Arc<Executor<'static>>, tls: Option<TlsAcceptor>) -> (u16, Receiver<WsEvent>) {
    let (l, port) = listener();
    let (tx, rx) = smol::channel::unbounded();
    let ex2 = Arc::clone(ex);
    ex.spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (tx, tls) = (tx.clone(), tls.clone());
            ex2.spawn(async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(tcp).await {
                            serve_ws(s, tx).await;
                        }
                    }
                    None => serve_ws(tcp, tx).await,
                }
            })
            .detach();
        }
    })
    .detach();
    (port, rx)
}

async fn serve_ws<S: AsyncRead + AsyncWrite + Unpin>(s: S, tx: Sender<WsEvent>) {
    let Ok(mut ws) = async_tungstenite::accept_async(s).await else {
        return;
    };
    loop {
        let sent = match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                if let Some(n) = t.strip_prefix("big:") {
                    let n: usize = n.parse().unwrap_or(0);
                    ws.send(Message::text("x".repeat(n))).await
                } else if t.as_str() == "ping-me" {
                    ws.send(Message::Ping(Bytes::from_static(b"hb"))).await
                } else {
                    ws.send(Message::Text(t)).await
                }
            }
            Some(Ok(Message::Pong(p))) => {
                let _ = tx.send(WsEvent::Pong(p.to_vec())).await;
                Ok(())
            }
            Some(Ok(Message::Close(_))) => {
                let _ = tx.send(WsEvent::CloseFrame).await;
                Ok(())
            }
            Some(Ok(_)) => Ok(()),
            Some(Err(_)) | None => break,
        };
        if sent.is_err() {
            break;
        }
    }
    let _ = tx.send(WsEvent::Ended).await;
}

fn ws_opts() -> WsOptions {
    WsOptions {
        connect_timeout: Duration::from_secs(3),
        ..WsOptions::default()
    }
}

async fn next_text(conn: &mut ws::WsConn) -> String {
    match within(Duration::from_secs(3), conn.next()).await {
        Some(Some(Ok(Message::Text(t)))) => t.as_str().to_owned(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket tests

#[test]
fn wss_with_the_extra_ca_connects_echoes_and_answers_pings_without_a_flush() {
    run(|ex| {
        smol::block_on(ex.run(async {
            let pki = Pki::new();
            let (port, events) = ws_server(&ex, Some(pki.server(&[])));
            let budget = Budget::new(1, None);
            let tls = tls::client_config(Some(pki.ca()), Alpn::None).expect("tls");
            let permit = budget
                .try_acquire(PermitKind::WebSocket, "test")
                .expect("permit");
            let url = format!("wss://localhost:{port}/stream?streams=x");
            let mut conn = ws::connect(&url, &tls, permit, &ws_opts())
                .await
                .expect("connect");
            assert_eq!(budget.in_use(), 1);
            assert!(conn.local_addr().expect("local addr").ip().is_loopback());

            conn.send_text("hello").await.expect("send");
            assert_eq!(next_text(&mut conn).await, "hello");

            // The server pings; `next` returns the ping and the pong goes out with no flush
            // and no further read from the caller.
            conn.send_text("ping-me").await.expect("send");
            match within(Duration::from_secs(3), conn.next()).await {
                Some(Some(Ok(Message::Ping(p)))) => assert_eq!(&p[..], b"hb"),
                other => panic!("expected a ping, got {other:?}"),
            }
            assert_eq!(
                within(Duration::from_secs(3), events.recv()).await,
                Some(Ok(WsEvent::Pong(b"hb".to_vec())))
            );

            // Unsolicited pong and ping are written out too.
            conn.send_pong(&b"mine"[..]).await.expect("pong");
            assert_eq!(
                within(Duration::from_secs(3), events.recv()).await,
                Some(Ok(WsEvent::Pong(b"mine".to_vec())))
            );
            conn.send_ping(&b"p"[..]).await.expect("ping");
            match within(Duration::from_secs(3), conn.next()).await {
                Some(Some(Ok(Message::Pong(p)))) => assert_eq!(&p[..], b"p"),
                other => panic!("expected a pong, got {other:?}"),
            }
        }))
    });
}

#[test]
fn plain_ws_connects_and_a_graceful_close_returns_the_permit() {
    run(|ex| {
        smol::block_on(ex.run(async {
            let (port, events) = ws_server(&ex, None);
            let budget = Budget::new(1, None);
            let tls = tls::client_config(None, Alpn::None).expect("tls");
            let permit = budget
                .try_acquire(PermitKind::WebSocket, "t")
                .expect("permit");
            let mut conn =
                ws::connect(&format!("ws://127.0.0.1:{port}/"), &tls, permit, &ws_opts())
                    .await
                    .expect("connect");
            conn.send_text("plain").await.expect("send");
            assert_eq!(next_text(&mut conn).await, "plain");

            let started = Instant::now();
            conn.close().await;
            assert!(
                started.elapsed() < Duration::from_millis(900),
                "close waited out its timeout"
            );
            assert_eq!(budget.in_use(), 0);
            assert_eq!(
                within(Duration::from_secs(3), events.recv()).await,
                Some(Ok(WsEvent::CloseFrame))
            );
            assert_eq!(
                within(Duration::from_secs(3), events.recv()).await,
                Some(Ok(WsEvent::Ended))
            );
        }))
    });
}

#[test]
fn a_peer_that_stops_reading_fails_the_send_after_the_send_timeout() {
    run(|ex| {
        smol::block_on(ex.run(async {
            // A server that completes the upgrade and then never reads again.
            let (l, port) = listener();
            let (held_tx, held_rx) = smol::channel::unbounded();
            ex.spawn(async move {
                if let Ok((tcp, _)) = l.accept().await
                    && let Ok(ws) = async_tungstenite::accept_async(tcp).await
                {
                    let _ = held_tx.send(ws).await;
                }
            })
            .detach();
            let budget = Budget::new(1, None);
            let tls = tls::client_config(None, Alpn::None).expect("tls");
            let permit = budget
                .try_acquire(PermitKind::WebSocket, "t")
                .expect("permit");
            let opts = WsOptions {
                send_timeout: Duration::from_millis(500),
                ..ws_opts()
            };
            let mut conn = ws::connect(&format!("ws://127.0.0.1:{port}/"), &tls, permit, &opts)
                .await
                .expect("connect");
            let _held = held_rx.recv().await.expect("the server holds the socket");
            // 1 MiB frames until the peer's window, the kernel's buffers and the WebSocket
            // layer's are full: a send must then fail within its timeout, not hang.
            let chunk = "x".repeat(1 << 20);
            let started = Instant::now();
            let mut outcome = None;
            for _ in 0..256 {
                match within(Duration::from_secs(10), conn.send_text(&chunk)).await {
                    Some(Ok(())) => continue,
                    Some(Err(e)) => {
                        outcome = Some(e);
                        break;
                    }
                    None => panic!("a send hung for 10 s on a peer that stopped reading"),
                }
            }
            let err = outcome.expect("256 MiB were accepted by a peer that reads nothing");
            // Our deadline, or the kernel's TCP_USER_TIMEOUT (set to the same value), whichever
            // notices first.
            assert!(
                matches!(&err, ws::WsError::Stalled { .. })
                    || matches!(&err, ws::WsError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut),
                "{err}"
            );
            assert!(started.elapsed() < Duration::from_secs(30));
            drop(conn);
            assert_eq!(budget.in_use(), 0, "the permit came back with the socket");
        }))
    });
}

#[test]
fn wss_without_the_extra_ca_fails_with_a_tls_error_and_returns_the_permit() {
    run(|ex| {
        smol::block_on(ex.run(async {
            let pki = Pki::new();
            let (port, _events) = ws_server(&ex, Some(pki.server(&[])));
            let budget = Budget::new(1, None);
            let tls = tls::client_config(None, Alpn::None).expect("tls");
            let permit = budget
                .try_acquire(PermitKind::WebSocket, "t")
                .expect("permit");
            let err = ws::connect(
                &format!("wss://localhost:{port}/"),
                &tls,
                permit,
                &ws_opts(),
            )
            .await
            .expect_err("an untrusted certificate must fail");
            assert!(matches!(err, ConnectError::Tls { .. }), "{err}");
            assert!(err.to_string().contains("extra_ca"), "{err}");
            assert_eq!(budget.in_use(), 0);
        }))
    });
}

#[test]
fn a_frame_over_the_limit_is_reported_as_oversized() {
    run(|ex| {
        smol::block_on(ex.run(async {
            let pki = Pki::new();
            let (port, _events) = ws_server(&ex, Some(pki.server(&[])));
            let budget = Budget::new(1, None);
            let tls = tls::client_config(Some(pki.ca()), Alpn::None).expect("tls");
            let opts = WsOptions {
                max_frame: 64 * 1024,
                max_message: 64 * 1024,
                ..ws_opts()
            };
            let permit = budget
                .try_acquire(PermitKind::WebSocket, "t")
                .expect("permit");
            let mut conn = ws::connect(&format!("wss://localhost:{port}/"), &tls, permit, &opts)
                .await
                .expect("connect");
            // At the limit passes; one byte over is refused.
            conn.send_text("big:65536").await.expect("send");
            assert_eq!(next_text(&mut conn).await.len(), 65536);
            conn.send_text("big:65537").await.expect("send");
            match within(Duration::from_secs(3), conn.next()).await {
                Some(Some(Err(e @ WsError::Oversized { .. }))) => {
                    assert!(matches!(
                        e,
                        WsError::Oversized {
                            size: 65537,
                            limit: 65536
                        }
                    ));
                    assert!(ws::WsErrorExt::is_oversized(&e));
                }
                other => panic!("expected an oversized error, got {other:?}"),
            }
            // The stream is finished after the error.
            assert!(conn.next().await.is_none());
        }))
    });
}

#[test]
fn dropping_the_connection_returns_the_permit_and_the_server_sees_eof() {
    run(|ex| {
        smol::block_on(ex.run(async {
            let pki = Pki::new();
            let (port, events) = ws_server(&ex, Some(pki.server(&[])));
            let budget = Budget::new(1, None);
            let tls = tls::client_config(Some(pki.ca()), Alpn::None).expect("tls");
            let permit = budget
                .try_acquire(PermitKind::WebSocket, "first")
                .expect("permit");
            let mut conn = ws::connect(
                &format!("wss://localhost:{port}/"),
                &tls,
                permit,
                &ws_opts(),
            )
            .await
            .expect("connect");
            conn.send_text("up").await.expect("send");
            assert_eq!(next_text(&mut conn).await, "up");

            // The budget is spent: no second permit, and `ws::connect` cannot be called
            // without one (it takes a `Permit` by value).
            let refused = budget
                .try_acquire(PermitKind::WebSocket, "second")
                .expect_err("budget of one");
            assert_eq!((refused.in_use, refused.limit), (1, 1));

            drop(conn);
            assert_eq!(budget.in_use(), 0, "the permit returns with the socket");
            assert_eq!(
                within(Duration::from_secs(3), events.recv()).await,
                Some(Ok(WsEvent::Ended)),
                "the server must see the socket close"
            );
            let _again = budget
                .try_acquire(PermitKind::WebSocket, "again")
                .expect("the permit is free again");
        }))
    });
}

#[test]
fn connect_times_out_when_the_server_never_answers_the_tls_handshake() {
    run(|ex| {
        smol::block_on(ex.run(async {
            // Accepts TCP and then says nothing.
            let (l, port) = listener();
            let held: Arc<Mutex<Vec<Async<TcpStream>>>> = Arc::default();
            let held2 = Arc::clone(&held);
            ex.spawn(async move {
                while let Ok((tcp, _)) = l.accept().await {
                    held2.lock().expect("lock").push(tcp);
                }
            })
            .detach();
            let budget = Budget::new(1, None);
            let tls = tls::client_config(None, Alpn::None).expect("tls");
            let opts = WsOptions {
                connect_timeout: Duration::from_millis(300),
                ..WsOptions::default()
            };
            let permit = budget
                .try_acquire(PermitKind::WebSocket, "t")
                .expect("permit");
            let started = Instant::now();
            let err = ws::connect(&format!("wss://localhost:{port}/"), &tls, permit, &opts)
                .await
                .expect_err("must time out");
            let took = started.elapsed();
            assert!(err.is_timeout(), "{err}");
            assert!(matches!(err, ConnectError::Timeout { .. }));
            assert!(
                took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
                "took {took:?}"
            );
            assert_eq!(budget.in_use(), 0);
            assert_eq!(held.lock().expect("lock").len(), 1, "TCP was accepted");
        }))
    });
}

// ---------------------------------------------------------------------------------------------
// HTTP server

#[derive(Default)]
struct HttpStats {
    accepts: AtomicUsize,
    closed: AtomicUsize,
    requests: AtomicUsize,
    /// (Host, User-Agent) of the last request.
    last: Mutex<Option<(String, String)>>,
}

type Body = BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn n_param(req: &hyper::Request<hyper::body::Incoming>) -> usize {
    req.uri()
        .query()
        .and_then(|q| q.strip_prefix("n="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    stats: Arc<HttpStats>,
) -> hyper::Response<Body> {
    stats.requests.fetch_add(1, Ordering::AcqRel);
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    *stats.last.lock().expect("lock") = Some((header("host"), header("user-agent")));
    let resp = hyper::Response::builder();
    let resp = match req.uri().path() {
        "/api/ok" => resp.header("x-mbx-used-weight-1m", "7").body(full("ok")),
        "/api/big" => resp.body(full(vec![b'x'; n_param(&req)])),
        "/api/chunked" => {
            let chunks = (0..n_param(&req) / 1000)
                .map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'y'; 1000]))));
            resp.body(BodyExt::boxed(StreamBody::new(futures_lite::stream::iter(
                chunks,
            ))))
        }
        "/api/busy" => resp
            .status(429)
            .header("retry-after", "2")
            .body(full("{\"code\":-1003}")),
        "/api/stall" => {
            Timer::after(Duration::from_secs(10)).await;
            resp.body(full("late"))
        }
        "/api/close" => resp.header("connection", "close").body(full("bye")),
        _ => resp.status(404).body(full("")),
    };
    resp.unwrap_or_else(|_| hyper::Response::new(full("")))
}

/// A TLS HTTP/1.1 keep-alive server counting accepted and closed connections.
fn http_server(ex: &Arc<Executor<'static>>, acceptor: TlsAcceptor) -> (u16, Arc<HttpStats>) {
    let (l, port) = listener();
    let stats = Arc::new(HttpStats::default());
    let (ex2, stats2) = (Arc::clone(ex), Arc::clone(&stats));
    ex.spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            stats2.accepts.fetch_add(1, Ordering::AcqRel);
            let (acceptor, stats) = (acceptor.clone(), Arc::clone(&stats2));
            ex2.spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let st = Arc::clone(&stats);
                    let svc = hyper::service::service_fn(move |req| {
                        let st = Arc::clone(&st);
                        async move { Ok::<_, Infallible>(answer(req, st).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(smol_hyper::rt::FuturesIo::new(tls), svc)
                        .await;
                }
                stats.closed.fetch_add(1, Ordering::AcqRel);
            })
            .detach();
        }
    })
    .detach();
    (port, stats)
}

struct Rest {
    client: RestClient,
    budget: Budget,
    metrics: Arc<Metrics>,
    base: Endpoint,
    host: String,
    stats: Arc<HttpStats>,
    _pki: Pki,
}

fn rest_setup(ex: &Arc<Executor<'static>>, budget_limit: usize, cfg: RestConfig) -> Rest {
    let pki = Pki::new();
    let (port, stats) = http_server(ex, pki.server(&[b"http/1.1"]));
    let metrics = Arc::new(Metrics::new());
    let budget = Budget::new(budget_limit, Some(Arc::clone(&metrics)));
    let tls = tls::client_config(Some(pki.ca()), Alpn::Http11).expect("tls");
    let client = RestClient::new(
        budget.clone(),
        tls,
        &cfg,
        Arc::clone(ex),
        Some(Arc::clone(&metrics)),
    );
    let host = format!("https://localhost:{port}");
    let base = Endpoint::parse(&format!("{host}/api"), &["https", "http"]).expect("endpoint");
    Rest {
        client,
        budget,
        metrics,
        base,
        host,
        stats,
        _pki: pki,
    }
}

fn rest_cfg(idle_ms: u64, timeout_ms: u64, max_body: usize) -> RestConfig {
    RestConfig {
        idle_timeout: Dur(Duration::from_millis(idle_ms)),
        request_timeout: Dur(Duration::from_millis(timeout_ms)),
        max_body_bytes: Int(max_body),
    }
}

impl Rest {
    fn requests(&self, status: &str) -> u64 {
        self.metrics
            .rest_requests
            .get_or_create(&RestLabels {
                host: self.host.clone(),
                status: status.into(),
            })
            .get()
    }

    fn connections_gauge(&self) -> i64 {
        self.metrics
            .rest_connections
            .get_or_create(&HostLabels {
                host: self.host.clone(),
            })
            .get()
    }

    /// The connection is gone on both ends and its permit is back.
    async fn all_closed(&self, limit: Duration) -> bool {
        let accepts = self.stats.accepts.load(Ordering::Acquire);
        eventually(limit, || {
            self.client.open_connections() == 0
                && self.budget.in_use() == 0
                && self.connections_gauge() == 0
                && self.stats.closed.load(Ordering::Acquire) == accepts
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// REST tests

#[test]
fn twenty_sequential_gets_share_one_connection_which_closes_when_idle() {
    run(|ex| {
        smol::block_on(ex.run(async {
            let r = rest_setup(&ex, 1, rest_cfg(300, 3000, 1 << 20));
            for _ in 0..20 {
                let resp = r.client.get(&r.base, "/ok").await.expect("get");
                assert_eq!(resp.status, 200);
                assert_eq!(resp.body, b"ok");
                assert_eq!(resp.used_weight, Some(7));
                assert_eq!(resp.retry_after, None);
            }
            // Concurrent requests to the host queue for the same connection.
            let many: Vec<_> = (0..5)
                .map(|_| {
                    let (c, b) = (r.client.clone(), r.base.clone());
                    ex.spawn(async move { c.get(&b, "/ok").await.map(|r| r.status) })
                })
                .collect();
            for t in many {
                assert_eq!(t.await.expect("get"), 200);
            }
            let last_use = Instant::now();
            assert_eq!(
                r.stats.accepts.load(Ordering::Acquire),
                1,
                "one TCP connection"
            );
            assert_eq!(r.stats.requests.load(Ordering::Acquire), 25);
            assert_eq!(r.client.open_connections(), 1);
            assert_eq!(r.budget.in_use(), 1);
            assert_eq!(r.connections_gauge(), 1);
            assert_eq!(r.requests("200"), 25);
            let (host, ua) = r.stats.last.lock().expect("lock").clone().expect("seen");
            assert_eq!(host, r.host.trim_start_matches("https://"));
            assert_eq!(ua, format!("marketbox/{}", env!("CARGO_PKG_VERSION")));

            // Idle for 300 ms: closed on both ends, permit back.
            assert!(
                r.all_closed(Duration::from_secs(2)).await,
                "idle connection not closed"
            );
            assert!(
                last_use.elapsed() >= Duration::from_millis(300),
                "closed before idle"
            );
            assert_eq!(r.stats.closed.load(Ordering::Acquire), 1);

            // The next request opens a new one.
            let resp = r.client.get(&r.base, "/ok").await.expect("get");
            assert_eq!(resp.status, 200);
            assert_eq!(r.stats.accepts.load(Ordering::Acquire), 2);
        }))
    });
}

#[test]
fn an_idle_connection_stays_open_while_it_is_used() {
    run(|ex| {
        smol::block_on(ex.run(async {
            let r = rest_setup(&ex, 1, rest_cfg(300, 3000, 1 << 20));
            // Requests 200 ms apart keep re-arming the idle timer.
            for _ in 0..4 {
                r.client.get(&r.base, "/ok").await.expect("get");
                Timer::after(Duration::from_millis(200)).await;
            }
            assert_eq!(r.stats.accepts.load(Ordering::Acquire), 1);
            assert_eq!(r.client.open_connections(), 1);
        }))
    });
}

#[test]
fn a_body_over_the_limit_is_refused_and_its_connection_closed() {
    run(|ex| {
        smol::block_on(ex.run(async {
            let r = rest_setup(&ex, 1, rest_cfg(5000, 3000, 4000));
            let ok = r
                .client
                .get(&r.base, "/big?n=4000")
                .await
                .expect("at the limit");
            assert_eq!(ok.body.len(), 4000);

            // Declared by Content-Length.
            let err = r
                .client
                .get(&r.base, "/big?n=4001")
                .await
                .expect_err("too large");
            assert!(
                matches!(err, RestError::BodyTooLarge { limit: 4000 }),
                "{err}"
            );
            assert!(
                r.all_closed(Duration::from_secs(2)).await,
                "connection left open"
            );

            // Chunked, no length: refused while reading.
            let err = r
                .client
                .get(&r.base, "/chunked?n=10000")
                .await
                .expect_err("too large");
            assert!(
                matches!(err, RestError::BodyTooLarge { limit: 4000 }),
                "{err}"
            );
            assert!(
                r.all_closed(Duration::from_secs(2)).await,
                "connection left open"
            );
            assert_eq!(r.requests("error"), 2);
            assert_eq!(r.requests("200"), 1);
        }))
    });
}

#[test]
fn a_429_with_retry_after_is_an_answer_not_an_error() {
    run(|ex| {
        smol::block_on(ex.run(async {
            let r = rest_setup(&ex, 1, rest_cfg(5000, 3000, 1 << 20));
            let resp = r.client.get(&r.base, "/busy").await.expect("an answer");
            assert_eq!(resp.status, 429);
            assert_eq!(resp.retry_after, Some(Duration::from_secs(2)));
            assert_eq!(resp.used_weight, None);
            assert_eq!(r.requests("429"), 1);
            // The connection is still good for the next request.
            r.client.get(&r.base, "/ok").await.expect("get");
            assert_eq!(r.stats.accepts.load(Ordering::Acquire), 1);
        }))
    });
}

#[test]
fn a_stalled_server_times_out_and_its_connection_is_closed() {
    run(|ex| {
        smol::block_on(ex.run(async {
            let r = rest_setup(&ex, 1, rest_cfg(5000, 300, 1 << 20));
            let started = Instant::now();
            let err = r
                .client
                .get(&r.base, "/stall")
                .await
                .expect_err("must time out");
            let took = started.elapsed();
            assert!(err.is_timeout(), "{err}");
            assert!(
                took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
                "took {took:?}"
            );
            // Closed before `get` returned: fd gone, permit back.
            assert_eq!(r.client.open_connections(), 0);
            assert_eq!(r.budget.in_use(), 0);
            assert!(
                r.all_closed(Duration::from_secs(2)).await,
                "server did not see the close"
            );
            assert_eq!(r.requests("error"), 1);
        }))
    });
}

#[test]
fn an_abandoned_request_closes_its_connection_without_waiting_for_idle() {
    run(|ex| {
        smol::block_on(ex.run(async {
            let r = rest_setup(&ex, 1, rest_cfg(5000, 5000, 1 << 20));
            // The caller gives up (its task is cancelled) while the server stalls.
            let gave_up = within(Duration::from_millis(150), r.client.get(&r.base, "/stall")).await;
            assert!(gave_up.is_none());
            assert!(
                r.all_closed(Duration::from_secs(1)).await,
                "the abandoned connection must close long before the 5 s idle timeout"
            );
            // The host is usable again with the same single permit.
            let resp = r.client.get(&r.base, "/ok").await.expect("get");
            assert_eq!(resp.status, 200);
            assert_eq!(r.stats.accepts.load(Ordering::Acquire), 2);
            assert!(r.budget.peak() <= 1);
        }))
    });
}

#[test]
fn a_connection_the_server_closed_is_replaced_with_the_same_single_permit() {
    run(|ex| {
        smol::block_on(ex.run(async {
            let r = rest_setup(&ex, 1, rest_cfg(5000, 3000, 1 << 20));
            let resp = r.client.get(&r.base, "/close").await.expect("get");
            assert_eq!(resp.body, b"bye");
            let resp = r
                .client
                .get(&r.base, "/ok")
                .await
                .expect("get on a new connection");
            assert_eq!(resp.status, 200);
            assert_eq!(r.stats.accepts.load(Ordering::Acquire), 2);
            assert_eq!(r.budget.in_use(), 1);
            assert!(r.budget.peak() <= 1);
        }))
    });
}

#[test]
fn a_refused_permit_is_a_budget_error_and_nothing_connects() {
    run(|ex| {
        smol::block_on(ex.run(async {
            let r = rest_setup(&ex, 0, rest_cfg(5000, 3000, 1 << 20));
            let err = r.client.get(&r.base, "/ok").await.expect_err("no budget");
            assert!(matches!(err, RestError::Budget(_)), "{err}");
            assert_eq!(r.stats.accepts.load(Ordering::Acquire), 0);
            assert_eq!(r.requests("error"), 1);
        }))
    });
}

#[test]
fn rest_without_the_extra_ca_fails_with_a_tls_error() {
    run(|ex| {
        smol::block_on(ex.run(async {
            let r = rest_setup(&ex, 1, rest_cfg(5000, 3000, 1 << 20));
            let untrusting = RestClient::new(
                r.budget.clone(),
                tls::client_config(None, Alpn::Http11).expect("tls"),
                &rest_cfg(5000, 3000, 1 << 20),
                Arc::clone(&ex),
                None,
            );
            let err = untrusting.get(&r.base, "/ok").await.expect_err("untrusted");
            assert!(
                matches!(
                    err,
                    RestError::Connect {
                        source: ConnectError::Tls { .. }
                    }
                ),
                "{err}"
            );
            assert_eq!(r.budget.in_use(), 0);
        }))
    });
}
