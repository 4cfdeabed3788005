//! The exchange simulator the integration tests run against.
//!
//! It speaks Binance's real public protocol over TLS on loopback (port 0) with a throwaway CA:
//! combined-stream WebSockets (`/stream?streams=…` for spot; `/public/stream` and
//! `/market/stream` for USD-M, each serving only its tier, as the venue does since 2026-04),
//! live SUBSCRIBE/UNSUBSCRIBE, server pings, the 5-messages-per-second incoming limit, and the
//! REST depth snapshot. Books are driven by a seeded process (`book.rs`) whose true state is
//! recorded at every update id. Faults are injected from the test thread at any time.
//!
//! It is written from the venue's documentation and captures, independently of marketbox's
//! own parsers.
#![allow(dead_code)]

pub mod book;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::handshake::server::{Request, Response};
use futures_lite::FutureExt;
use futures_rustls::TlsAcceptor;
use futures_rustls::rustls::{self, ServerConfig};
use futures_util::StreamExt;
use http_body_util::Full;
use hyper::body::Bytes;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use smol::{Async, Executor, Timer};

use book::{BookProcess, Diff, Format, Px, Qty, fmt_px, fmt_qty};

/// A book as the venue writes it: (bids, asks) of (price, qty) strings, best first.
pub type TextBook = (Vec<(String, String)>, Vec<(String, String)>);

/// Which market a book or connection belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mkt {
    Spot,
    Perp,
}

/// How a fault ends a WebSocket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disconnect {
    /// A WebSocket close frame, then the socket closes.
    Close,
    /// The socket is dropped without a close frame.
    Reset,
    /// The socket stays open but nothing is sent any more (no data, no pings).
    Silence,
}

/// Frames the venue would never send correctly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    NotJson,
    Oversized { bytes: usize },
    UnknownEvent,
    Binary,
}

/// REST refusals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestFault {
    TooMany { retry_after_secs: u64 },
    Banned { retry_after_secs: u64 },
}

/// Simulator settings.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    /// Symbols as the venue spells them in REST (`BTCUSDT`).
    pub symbols: Vec<String>,
    pub diff_interval: Duration,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    /// Incoming messages per second a client may send before it is disconnected.
    pub max_incoming_per_sec: u32,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            seed: 7,
            symbols: vec!["BTCUSDT".into(), "ETHUSDT".into()],
            diff_interval: Duration::from_millis(20),
            ping_interval: Duration::from_secs(2),
            pong_timeout: Duration::from_secs(6),
            max_incoming_per_sec: 5,
        }
    }
}

enum Cmd {
    Text(Arc<str>),
    Close,
    Reset,
    Silence,
    Binary,
}

struct Client {
    id: u64,
    mkt: Mkt,
    /// `spot`, `public` or `market`.
    tier: &'static str,
    streams: Arc<Mutex<HashSet<String>>>,
    tx: smol::channel::Sender<Cmd>,
}

struct State {
    books: HashMap<(Mkt, String), BookProcess>,
    clients: Vec<Client>,
    gaps: HashSet<(Mkt, String)>,
    stale_snapshots: u32,
    rest_faults: VecDeque<RestFault>,
    trade_id: u64,
}

/// Counters the tests read.
#[derive(Default)]
pub struct Stats {
    pub open_ws: AtomicUsize,
    pub max_open_ws: AtomicUsize,
    pub ws_accepts: AtomicU64,
    pub open_rest: AtomicUsize,
    pub max_open_rest: AtomicUsize,
    pub rest_requests: AtomicU64,
    pub rate_violations: AtomicU64,
    pub pongs: AtomicU64,
    pub subscribe_requests: AtomicU64,
    pub diffs_sent: AtomicU64,
}

struct Shared {
    state: Mutex<State>,
    stats: Stats,
    opts: SimOptions,
    next_client: AtomicU64,
    slow_writes_ms: AtomicU64,
    stop: AtomicBool,
}

/// A running simulator. Dropping it stops it.
pub struct Sim {
    shared: Arc<Shared>,
    ws_addr: SocketAddr,
    rest_addr: SocketAddr,
    ca_path: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
    stop_tx: Option<smol::channel::Sender<()>>,
}

struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(open: &'a AtomicUsize, max: &AtomicUsize) -> Self {
        let now = open.fetch_add(1, Ordering::SeqCst) + 1;
        max.fetch_max(now, Ordering::SeqCst);
        Counted(open)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

const SPOT_FMT: Format = Format { price_pad: 6 };
const PERP_FMT: Format = Format { price_pad: 0 };

fn fmt_of(m: Mkt) -> Format {
    match m {
        Mkt::Spot => SPOT_FMT,
        Mkt::Perp => PERP_FMT,
    }
}

fn levels_json(levels: &[(Px, Qty)], f: Format) -> String {
    let parts: Vec<String> = levels
        .iter()
        .map(|(p, q)| format!("[\"{}\",\"{}\"]", fmt_px(*p, f), fmt_qty(*q)))
        .collect();
    format!("[{}]", parts.join(","))
}

fn make_tls() -> (Arc<ServerConfig>, String) {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "marketbox test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("leaf params");
    let leaf = leaf_params.signed_by(&leaf_key, &ca).expect("leaf");
    let certs = vec![CertificateDer::from(leaf.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server cert");
    (Arc::new(cfg), ca.pem())
}

impl Sim {
    pub fn start(opts: SimOptions) -> Sim {
        let (tls, ca_pem) = make_tls();
        let ca_path = std::env::temp_dir().join(format!(
            "marketbox-sim-ca-{}-{}.pem",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&ca_path, ca_pem).expect("write CA");
        let mut books = HashMap::new();
        for (i, s) in opts.symbols.iter().enumerate() {
            let seed = opts.seed.wrapping_mul(31).wrapping_add(i as u64);
            books.insert(
                (Mkt::Spot, s.clone()),
                BookProcess::new(seed, 2_700_000 + 1000 * i as i64, 1_000_000),
            );
            books.insert(
                (Mkt::Perp, s.clone()),
                BookProcess::new(seed ^ 0xfff, 2_700_100 + 1000 * i as i64, 5_000_000_000),
            );
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                books,
                clients: Vec::new(),
                gaps: HashSet::new(),
                stale_snapshots: 0,
                rest_faults: VecDeque::new(),
                trade_id: 100,
            }),
            stats: Stats::default(),
            opts,
            next_client: AtomicU64::new(1),
            slow_writes_ms: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let ws_l = TcpListener::bind("127.0.0.1:0").expect("bind ws");
        let rest_l = TcpListener::bind("127.0.0.1:0").expect("bind rest");
        let (ws_addr, rest_addr) = (
            ws_l.local_addr().expect("addr"),
            rest_l.local_addr().expect("addr"),
        );
        let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("exchange-sim".into())
            .spawn(move || {
                let ex = Arc::new(Executor::new());
                let acceptor = TlsAcceptor::from(tls);
                let ws_l = Async::new(ws_l).expect("async ws");
                let rest_l = Async::new(rest_l).expect("async rest");
                ex.spawn(run_books(sh.clone())).detach();
                ex.spawn(accept_ws(ex.clone(), sh.clone(), ws_l, acceptor.clone()))
                    .detach();
                ex.spawn(accept_rest(ex.clone(), sh.clone(), rest_l, acceptor))
                    .detach();
                smol::block_on(ex.run(async {
                    let _ = stop_rx.recv().await;
                }));
            })
            .expect("sim thread");
        Sim {
            shared,
            ws_addr,
            rest_addr,
            ca_path,
            thread: Some(thread),
            stop_tx: Some(stop_tx),
        }
    }

    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_path
    }

    /// Base for `[venues.binance] spot_ws` (the client appends `/stream`).
    pub fn spot_ws(&self) -> String {
        format!("wss://localhost:{}", self.ws_addr.port())
    }
    pub fn perp_public_ws(&self) -> String {
        format!("wss://localhost:{}/public", self.ws_addr.port())
    }
    pub fn perp_market_ws(&self) -> String {
        format!("wss://localhost:{}/market", self.ws_addr.port())
    }
    pub fn rest(&self) -> String {
        format!("https://localhost:{}", self.rest_addr.port())
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    pub fn open_ws(&self) -> usize {
        self.shared.stats.open_ws.load(Ordering::SeqCst)
    }
    pub fn max_open_ws(&self) -> usize {
        self.shared.stats.max_open_ws.load(Ordering::SeqCst)
    }
    pub fn max_open_rest(&self) -> usize {
        self.shared.stats.max_open_rest.load(Ordering::SeqCst)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends (or silences) every open WebSocket.
    pub fn disconnect_all(&self, how: Disconnect) {
        let st = self.state();
        for c in &st.clients {
            let _ = c.tx.try_send(match how {
                Disconnect::Close => Cmd::Close,
                Disconnect::Reset => Cmd::Reset,
                Disconnect::Silence => Cmd::Silence,
            });
        }
    }

    /// The next diff of `symbol` is applied to the true book but not sent: the chain breaks.
    pub fn inject_gap(&self, mkt: Mkt, symbol: &str) {
        self.state().gaps.insert((mkt, symbol.to_owned()));
    }

    /// The next `n` snapshots are older than the stream.
    pub fn stale_snapshots(&self, n: u32) {
        self.state().stale_snapshots += n;
    }

    pub fn rest_fault(&self, fault: RestFault, n: usize) {
        let mut st = self.state();
        for _ in 0..n {
            st.rest_faults.push_back(fault);
        }
    }

    /// Sends a bad frame to every client.
    pub fn send_malformed(&self, kind: Malformed) {
        let st = self.state();
        for c in &st.clients {
            let cmd = match kind {
                Malformed::NotJson => Cmd::Text(Arc::from(
                    "{\"stream\":\"btcusdt@depth@100ms\",\"data\":{oops",
                )),
                Malformed::Oversized { bytes } => Cmd::Text(Arc::from(format!(
                    "{{\"stream\":\"x@trade\",\"data\":\"{}\"}}",
                    "x".repeat(bytes)
                ))),
                Malformed::UnknownEvent => Cmd::Text(Arc::from(
                    "{\"stream\":\"btcusdt@kline_1m\",\"data\":{\"e\":\"kline\",\"E\":1,\"s\":\"BTCUSDT\"}}",
                )),
                Malformed::Binary => Cmd::Binary,
            };
            let _ = c.tx.try_send(cmd);
        }
    }

    /// Sends `serverShutdown` to every client (then they keep running until the client leaves).
    pub fn server_shutdown(&self) {
        let st = self.state();
        for c in &st.clients {
            let _ = c.tx.try_send(Cmd::Text(Arc::from(format!(
                "{{\"e\":\"serverShutdown\",\"E\":{}}}",
                now_ms()
            ))));
        }
    }

    /// Every frame is delayed by this much (a slow server).
    pub fn slow_writes(&self, d: Duration) {
        self.shared
            .slow_writes_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// The true top `depth` levels at `update_id`, as the venue writes them.
    pub fn true_book(
        &self,
        mkt: Mkt,
        symbol: &str,
        update_id: u64,
        depth: usize,
    ) -> Option<TextBook> {
        let st = self.state();
        let (b, a) = st
            .books
            .get(&(mkt, symbol.to_owned()))?
            .true_top(update_id)?;
        let f = fmt_of(mkt);
        let conv = |v: &Vec<(Px, Qty)>| {
            v.iter()
                .take(depth)
                .map(|(p, q)| (fmt_px(*p, f), fmt_qty(*q)))
                .collect()
        };
        Some((conv(b), conv(a)))
    }

    /// Current update id of a book.
    pub fn last_id(&self, mkt: Mkt, symbol: &str) -> u64 {
        self.state()
            .books
            .get(&(mkt, symbol.to_owned()))
            .map_or(0, |b| b.last_id)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.try_send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.ca_path);
    }
}

fn depth_frame(mkt: Mkt, sym: &str, d: &Diff) -> String {
    let lower = sym.to_ascii_lowercase();
    let f = fmt_of(mkt);
    let ts = now_ms();
    match mkt {
        Mkt::Spot => format!(
            "{{\"stream\":\"{lower}@depth@100ms\",\"data\":{{\"e\":\"depthUpdate\",\"E\":{ts},\"s\":\"{sym}\",\"U\":{},\"u\":{},\"b\":{},\"a\":{}}}}}",
            d.first,
            d.last,
            levels_json(&d.bids, f),
            levels_json(&d.asks, f)
        ),
        Mkt::Perp => format!(
            "{{\"stream\":\"{lower}@depth@100ms\",\"data\":{{\"e\":\"depthUpdate\",\"E\":{ts},\"T\":{ts},\"s\":\"{sym}\",\"U\":{},\"u\":{},\"pu\":{},\"b\":{},\"a\":{}}}}}",
            d.first,
            d.last,
            d.prev_last,
            levels_json(&d.bids, f),
            levels_json(&d.asks, f)
        ),
    }
}

fn broadcast(st: &State, mkt: Mkt, tier: &str, stream: &str, text: &Arc<str>) {
    for c in &st.clients {
        if c.mkt == mkt
            && c.tier == tier
            && c.streams
                .lock()
                .map(|s| s.contains(stream))
                .unwrap_or(false)
        {
            // A client that cannot keep up loses frames (the venue would drop it).
            let _ = c.tx.try_send(Cmd::Text(text.clone()));
        }
    }
}

async fn run_books(sh: Arc<Shared>) {
    let mut tick: u64 = 0;
    while !sh.stop.load(Ordering::SeqCst) {
        Timer::after(sh.opts.diff_interval).await;
        tick += 1;
        let mut st = sh.state.lock().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<(Mkt, String)> = st.books.keys().cloned().collect();
        for (mkt, sym) in keys {
            let skip = if mkt == Mkt::Perp { tick % 3 } else { 0 };
            let Some(book) = st.books.get_mut(&(mkt, sym.clone())) else {
                continue;
            };
            let diff = book.step(skip);
            let mid = book.bids.keys().next_back().copied().unwrap_or(0);
            if st.gaps.remove(&(mkt, sym.clone())) {
                continue;
            }
            let lower = sym.to_ascii_lowercase();
            let tier = if mkt == Mkt::Spot { "spot" } else { "public" };
            let text: Arc<str> = Arc::from(depth_frame(mkt, &sym, &diff));
            broadcast(&st, mkt, tier, &format!("{lower}@depth@100ms"), &text);
            sh.stats.diffs_sent.fetch_add(1, Ordering::Relaxed);
            if mkt == Mkt::Perp && tick % 25 == 0 {
                let ts = now_ms();
                let f = fmt_of(mkt);
                // The 2026 shape, extra `ap` and `st` included.
                let mark = format!(
                    "{{\"stream\":\"{lower}@markPrice@1s\",\"data\":{{\"e\":\"markPriceUpdate\",\"E\":{ts},\"s\":\"{sym}\",\"p\":\"{}\",\"ap\":\"{}\",\"P\":\"{}\",\"i\":\"{}\",\"r\":\"0.000{:05}\",\"T\":{},\"st\":1}}}}",
                    fmt_px(mid, f),
                    fmt_px(mid, f),
                    fmt_px(mid - 3, f),
                    fmt_px(mid + 1, f),
                    tick % 100_000,
                    (ts / 28_800_000 + 1) * 28_800_000
                );
                broadcast(
                    &st,
                    mkt,
                    "market",
                    &format!("{lower}@markPrice@1s"),
                    &Arc::from(mark),
                );
            }
            if mkt == Mkt::Perp && tick % 50 == 0 {
                let ts = now_ms();
                let f = fmt_of(mkt);
                let liq = format!(
                    "{{\"stream\":\"{lower}@forceOrder\",\"data\":{{\"e\":\"forceOrder\",\"E\":{ts},\"o\":{{\"s\":\"{sym}\",\"S\":\"{}\",\"o\":\"LIMIT\",\"f\":\"IOC\",\"q\":\"0.010\",\"p\":\"{}\",\"ap\":\"{}\",\"X\":\"FILLED\",\"l\":\"0.010\",\"z\":\"0.010\",\"T\":{ts},\"ps\":\"{sym}\",\"st\":1}}}}}}",
                    if tick % 100 == 0 { "BUY" } else { "SELL" },
                    fmt_px(mid - 50, f),
                    fmt_px(mid - 45, f)
                );
                broadcast(
                    &st,
                    mkt,
                    "market",
                    &format!("{lower}@forceOrder"),
                    &Arc::from(liq),
                );
            }
            if tick % 4 == 0 {
                st.trade_id += 1;
                let ts = now_ms();
                let f = fmt_of(mkt);
                let trade = format!(
                    "{{\"stream\":\"{lower}@trade\",\"data\":{{\"e\":\"trade\",\"E\":{ts},\"s\":\"{sym}\",\"t\":{},\"p\":\"{}\",\"q\":\"{}\",\"T\":{ts},\"m\":{},\"M\":true}}}}",
                    st.trade_id,
                    fmt_px(mid, f),
                    fmt_qty(1_000_000 + tick),
                    tick % 8 == 0
                );
                broadcast(&st, mkt, tier, &format!("{lower}@trade"), &Arc::from(trade));
            }
        }
    }
}

async fn accept_ws(
    ex: Arc<Executor<'static>>,
    sh: Arc<Shared>,
    l: Async<TcpListener>,
    acceptor: TlsAcceptor,
) {
    loop {
        let Ok((tcp, _)) = l.accept().await else {
            continue;
        };
        let (sh, acceptor) = (sh.clone(), acceptor.clone());
        ex.spawn(async move {
            let _open = Counted::new(&sh.stats.open_ws, &sh.stats.max_open_ws);
            sh.stats.ws_accepts.fetch_add(1, Ordering::SeqCst);
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let path = Arc::new(Mutex::new(String::new()));
            let p2 = path.clone();
            #[allow(clippy::result_large_err)] // tungstenite's callback signature
            let cb = move |req: &Request, resp: Response| {
                if let Ok(mut p) = p2.lock() {
                    *p = req.uri().to_string();
                }
                Ok(resp)
            };
            let Ok(ws) = async_tungstenite::accept_hdr_async(tls, cb).await else {
                return;
            };
            let uri = path.lock().map(|p| p.clone()).unwrap_or_default();
            serve_ws(sh.clone(), ws, &uri).await;
        })
        .detach();
    }
}

async fn serve_ws<S>(sh: Arc<Shared>, ws: async_tungstenite::WebSocketStream<S>, uri: &str)
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    let (mkt, tier) = if uri.starts_with("/public/") {
        (Mkt::Perp, "public")
    } else if uri.starts_with("/market/") {
        (Mkt::Perp, "market")
    } else {
        (Mkt::Spot, "spot")
    };
    let streams: HashSet<String> = uri
        .split_once("streams=")
        .map(|(_, s)| s.split('/').map(str::to_owned).collect())
        .unwrap_or_default();
    let streams = Arc::new(Mutex::new(streams));
    let (tx, rx) = smol::channel::bounded::<Cmd>(4096);
    let id = sh.next_client.fetch_add(1, Ordering::SeqCst);
    sh.state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clients
        .push(Client {
            id,
            mkt,
            tier,
            streams: streams.clone(),
            tx,
        });
    let (mut sink, mut source) = ws.split();
    let mut silenced = false;
    let mut last_pong = Instant::now();
    let mut next_ping = Instant::now() + sh.opts.ping_interval;
    let mut window = (Instant::now(), 0u32);
    enum Ev {
        Cmd(Option<Cmd>),
        Msg(Option<Result<Message, async_tungstenite::tungstenite::Error>>),
        Ping,
    }
    loop {
        let ev = async { Ev::Cmd(rx.recv().await.ok()) }
            .or(async { Ev::Msg(source.next().await) })
            .or(async {
                Timer::at(next_ping).await;
                Ev::Ping
            })
            .await;
        match ev {
            Ev::Cmd(None) => break,
            Ev::Cmd(Some(cmd)) => match cmd {
                Cmd::Text(t) if !silenced => {
                    let slow = sh.slow_writes_ms.load(Ordering::Relaxed);
                    if slow > 0 {
                        Timer::after(Duration::from_millis(slow)).await;
                    }
                    if sink.send(Message::text(&*t)).await.is_err() {
                        break;
                    }
                }
                Cmd::Binary if !silenced => {
                    let _ = sink.send(Message::binary(vec![0u8, 1, 2])).await;
                }
                Cmd::Close => {
                    let _ = sink.close(None).await;
                    break;
                }
                Cmd::Reset => break,
                Cmd::Silence => silenced = true,
                _ => {}
            },
            Ev::Msg(None) | Ev::Msg(Some(Err(_))) => break,
            Ev::Msg(Some(Ok(msg))) => {
                let now = Instant::now();
                if now.duration_since(window.0) >= Duration::from_secs(1) {
                    window = (now, 0);
                }
                window.1 += 1;
                if window.1 > sh.opts.max_incoming_per_sec {
                    sh.stats.rate_violations.fetch_add(1, Ordering::SeqCst);
                    let _ = sink.close(None).await;
                    break;
                }
                match msg {
                    Message::Pong(_) => {
                        sh.stats.pongs.fetch_add(1, Ordering::SeqCst);
                        last_pong = now;
                    }
                    Message::Text(t) if !silenced => {
                        let reply = handle_request(&sh, &streams, t.as_str());
                        if sink.send(Message::text(reply)).await.is_err() {
                            break;
                        }
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            Ev::Ping => {
                if silenced {
                    next_ping = Instant::now() + Duration::from_secs(3600);
                    continue;
                }
                if last_pong.elapsed() > sh.opts.pong_timeout + sh.opts.ping_interval {
                    let _ = sink.close(None).await;
                    break;
                }
                next_ping = Instant::now() + sh.opts.ping_interval;
                if sink
                    .send(Message::Ping(b"sim".to_vec().into()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    let mut st = sh.state.lock().unwrap_or_else(|e| e.into_inner());
    st.clients.retain(|c| c.id != id);
}

fn handle_request(sh: &Shared, streams: &Mutex<HashSet<String>>, text: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return "{\"code\":2,\"msg\":\"Invalid JSON\"}".into();
    };
    let id = v["id"].clone();
    let params: Vec<String> = v["params"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    sh.stats.subscribe_requests.fetch_add(1, Ordering::SeqCst);
    let Ok(mut set) = streams.lock() else {
        return "{\"code\":3}".into();
    };
    match v["method"].as_str() {
        Some("SUBSCRIBE") => set.extend(params),
        Some("UNSUBSCRIBE") => {
            for p in params {
                set.remove(&p);
            }
        }
        Some("LIST_SUBSCRIPTIONS") => {
            let list: Vec<_> = set.iter().cloned().collect();
            return serde_json::json!({"result": list, "id": id}).to_string();
        }
        _ => return format!("{{\"code\":2,\"msg\":\"Invalid request\",\"id\":{id}}}"),
    }
    format!("{{\"result\":null,\"id\":{id}}}")
}

async fn accept_rest(
    ex: Arc<Executor<'static>>,
    sh: Arc<Shared>,
    l: Async<TcpListener>,
    acceptor: TlsAcceptor,
) {
    loop {
        let Ok((tcp, _)) = l.accept().await else {
            continue;
        };
        let (sh, acceptor) = (sh.clone(), acceptor.clone());
        ex.spawn(async move {
            let _open = Counted::new(&sh.stats.open_rest, &sh.stats.max_open_rest);
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let sh2 = sh.clone();
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let sh = sh2.clone();
                    async move { Ok::<_, std::convert::Infallible>(rest_answer(&sh, &req)) }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(smol_hyper::rt::FuturesIo::new(tls), svc)
                .await;
        })
        .detach();
    }
}

fn query<'a>(q: &'a str, key: &str) -> Option<&'a str> {
    q.split('&').find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
    })
}

fn json(status: u16, body: String) -> hyper::Response<Full<Bytes>> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-mbx-used-weight-1m", "10")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

fn rest_answer(
    sh: &Shared,
    req: &hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    sh.stats.rest_requests.fetch_add(1, Ordering::SeqCst);
    let mut st = sh.state.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(fault) = st.rest_faults.pop_front() {
        let (status, secs) = match fault {
            RestFault::TooMany { retry_after_secs } => (429, retry_after_secs),
            RestFault::Banned { retry_after_secs } => (418, retry_after_secs),
        };
        let mut r = json(
            status,
            format!("{{\"code\":-1003,\"msg\":\"Too many requests; retry after {secs}s\"}}"),
        );
        if let Ok(v) = secs.to_string().parse() {
            r.headers_mut().insert("retry-after", v);
        }
        return r;
    }
    let path = req.uri().path();
    let q = req.uri().query().unwrap_or("");
    let symbol = query(q, "symbol").unwrap_or("");
    let known = st.books.contains_key(&(Mkt::Perp, symbol.to_owned()));
    let n = sh.stats.rest_requests.load(Ordering::SeqCst);
    match path {
        "/fapi/v1/openInterest" if known => {
            return json(
                200,
                format!(
                    "{{\"symbol\":\"{symbol}\",\"openInterest\":\"{}.{:03}\",\"time\":{}}}",
                    80_000 + n,
                    n % 1000,
                    now_ms()
                ),
            );
        }
        "/futures/data/topLongShortPositionRatio" | "/futures/data/globalLongShortAccountRatio"
            if known =>
        {
            // One row per 5-minute period; the timestamp is a number or a string, as the venue
            // has sent both.
            let period = now_ms() / 300_000 * 300_000;
            let ts = if n % 2 == 0 {
                period.to_string()
            } else {
                format!("\"{period}\"")
            };
            return json(
                200,
                format!(
                    "[{{\"symbol\":\"{symbol}\",\"longShortRatio\":\"1.9823\",\"longAccount\":\"0.6647\",\"shortAccount\":\"0.3353\",\"timestamp\":{ts}}}]"
                ),
            );
        }
        "/fapi/v1/openInterest"
        | "/futures/data/topLongShortPositionRatio"
        | "/futures/data/globalLongShortAccountRatio" => {
            return json(400, "{\"code\":-1121,\"msg\":\"Invalid symbol.\"}".into());
        }
        _ => {}
    }
    let mkt = match path {
        "/api/v3/depth" => Mkt::Spot,
        "/fapi/v1/depth" => Mkt::Perp,
        _ => return json(404, "{\"code\":-1,\"msg\":\"not found\"}".into()),
    };
    let limit: usize = query(q, "limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(100)
        .min(5000);
    let stale = st.stale_snapshots > 0;
    if stale {
        st.stale_snapshots -= 1;
    }
    let Some(book) = st.books.get(&(mkt, symbol.to_owned())) else {
        return json(400, "{\"code\":-1121,\"msg\":\"Invalid symbol.\"}".into());
    };
    let f = fmt_of(mkt);
    type Levels = Vec<(Px, Qty)>;
    let (id, bids, asks): (u64, Levels, Levels) = match (stale, book.oldest()) {
        (true, Some((id, b, a))) => (
            *id,
            b.iter().rev().take(limit).map(|(p, q)| (*p, *q)).collect(),
            a.iter().take(limit).map(|(p, q)| (*p, *q)).collect(),
        ),
        _ => (
            book.last_id,
            book.bids
                .iter()
                .rev()
                .take(limit)
                .map(|(p, q)| (*p, *q))
                .collect(),
            book.asks
                .iter()
                .take(limit)
                .map(|(p, q)| (*p, *q))
                .collect(),
        ),
    };
    let ts = now_ms();
    let body = match mkt {
        Mkt::Spot => format!(
            "{{\"lastUpdateId\":{id},\"bids\":{},\"asks\":{}}}",
            levels_json(&bids, f),
            levels_json(&asks, f)
        ),
        Mkt::Perp => format!(
            "{{\"lastUpdateId\":{id},\"E\":{ts},\"T\":{ts},\"bids\":{},\"asks\":{}}}",
            levels_json(&bids, f),
            levels_json(&asks, f)
        ),
    };
    json(200, body)
}
