//! The exchange simulator the integration tests run against.
//!
//! Design: a [`Sim`] owns one thread running its own smol executor; everything it serves is
//! real protocol over TLS on loopback (port 0), signed by a throwaway CA whose PEM is written
//! to a temp file for marketbox's `[tls] extra_ca`. It is written from the venues'
//! documentation and captures (`../shared/PROTOCOLS.md`, `../shared/fixtures`), never from
//! marketbox's own parsers, so the two can disagree and a test can see it.
//!
//! Listeners (each its own port, like the venue's hosts):
//! - Binance spot WebSocket (`spot_ws()`): `/stream?streams=…` (combined) and `/ws/…` (raw).
//! - Binance USD-M WebSocket (`perp_*_ws()`): `/public/…`, `/market/…` and the unrouted root,
//!   which delivers only the `/public` tier (as the venue does since 2026-04-23).
//! - REST: `spot_rest()` (`/api/v3/…`), `perp_rest()` (`/fapi/v1/…`, `/futures/data/…`) and
//!   `rest()`, one host that answers both (kept for tests that point both markets at one base).
//!
//! Module map: `book.rs` is the venue-neutral seeded book process with its true-book history;
//! `binance.rs` is everything Binance-specific (paths, frames, the per-connection protocol, the
//! market clock, REST). `okx.rs` is a separate simulator (`okx::OkxSim`, its own thread and
//! listeners) reusing `book.rs` (whose diffs carry `prev_last_id`/`last_id`, i.e. OKX
//! `prevSeqId`/`seqId`, and order counts) and the TLS and socket helpers here.
//!
//! Faults are injected from the test thread at any time; every observation is an atomic or a
//! short lock, so the test can poll while the simulator runs.
#![allow(dead_code)]

pub mod binance;
pub mod book;
pub mod client;
pub mod okx;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use futures_lite::{AsyncRead, AsyncWrite, FutureExt, StreamExt};
use futures_rustls::TlsAcceptor;
use futures_rustls::rustls::{self, ServerConfig};
use http_body_util::Full;
use hyper::body::Bytes;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use smol::{Async, Executor, Timer};

use book::{BookProcess, fmt_units};

/// A book as the venue writes it: (bids, asks) of (price, qty) strings, best first.
pub type TextBook = (Vec<(String, String)>, Vec<(String, String)>);

/// A venue market the simulator keeps books for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mkt {
    /// Binance spot.
    Spot,
    /// Binance USD-M perpetual.
    Perp,
}

/// A WebSocket endpoint (which server a client connected to, by path).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// Binance spot, `/stream` or `/ws`.
    Spot,
    /// Binance USD-M `/public`: `@depth*`, `@bookTicker`, `@trade`.
    PerpPublic,
    /// Binance USD-M `/market`: `@aggTrade`, `@markPrice*`, `@forceOrder`, `!forceOrder@arr`.
    PerpMarket,
    /// Binance USD-M without a routed path: delivers only what `/public` would.
    PerpRoot,
}

impl Endpoint {
    pub fn mkt(self) -> Mkt {
        match self {
            Endpoint::Spot => Mkt::Spot,
            _ => Mkt::Perp,
        }
    }
}

/// How `disconnect_all` ends a WebSocket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disconnect {
    /// A close frame (1000), a short wait for the client's reply, then TCP FIN.
    Close,
    /// No close frame: the socket is closed with `SO_LINGER` 0, so the client gets a TCP RST.
    Reset,
    /// The socket stays open but nothing more is sent (no data, no pings, no replies, not even
    /// pongs) until the client closes it.
    Silence,
    /// Like `Silence`, except that the server keeps sending its own pings: a half-open path
    /// where only the venue's keepalive arrives (no data, no pongs to the client's pings).
    PingsOnly,
    /// The server stops reading the socket (its receive buffer shrinks to 4 KiB) and keeps
    /// sending data and a ping every 5 ms with the largest payload: the client's pongs and
    /// requests fill the path until its writes block.
    StopReading,
}

/// Frames the venue should never send, for `send_malformed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// A text frame that is not JSON (a truncated envelope).
    NotJson,
    /// A valid JSON text frame of exactly `bytes` bytes.
    Oversized { bytes: usize },
    /// A well-formed event of a kind nobody subscribed to (`kline` on `<s>@kline_1m`).
    UnknownEvent,
    /// A subscribed stream's event with an impossible decimal (`"27O12.34000000"`).
    BadDecimal,
    /// A binary frame (gzip magic bytes).
    Binary,
}

/// REST refusals for `rest_fault`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestFault {
    /// HTTP 429, code -1003, `Retry-After`.
    TooMany { retry_after_secs: u64 },
    /// HTTP 418 (IP banned), code -1003, `Retry-After`.
    Banned { retry_after_secs: u64 },
    /// Any status with a `Retry-After` header written exactly as given (a hostile venue:
    /// `18446744073709551615`, an HTTP-date in the year 9999, `-1`).
    Raw {
        status: u16,
        retry_after: &'static str,
    },
    /// A 200 whose `x-mbx-used-weight-1m` header is exactly this (and a real body).
    Weight { used: &'static str },
}

/// Which REST listener a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RestHost {
    /// `api.binance.com`: `/api/v3/…`.
    Spot,
    /// `fapi.binance.com`: `/fapi/v1/…`, `/futures/data/…`.
    Perp,
    /// Both path sets on one host (`rest()`).
    Any,
}

/// The latest row the long/short ratio endpoints return (older rows vary deterministically).
#[derive(Clone, Debug)]
pub struct LsrRow {
    pub long_short_ratio: String,
    pub long_account: String,
    pub short_account: String,
}

/// Simulator settings. Venue values are in the comments; defaults are shorter where tests
/// need them to be.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    /// `BASE-QUOTE` (`BTC-USDT`); the venue spellings are `BTCUSDT` / `btcusdt`. Each symbol
    /// gets a spot and a USD-M book.
    pub symbols: Vec<String>,
    /// One diff per symbol per interval (the venue: 100 ms for `@depth@100ms`).
    pub diff_interval: Duration,
    /// Server ping cadence (venue: spot 20 s, USD-M 3 min).
    pub ping_interval: Duration,
    /// A ping unanswered this long drops the client (venue: spot 1 min, USD-M 10 min).
    pub pong_timeout: Duration,
    /// Incoming messages (any frame, control frames included) allowed in any one-second
    /// window before the connection is closed: spot 5, USD-M 10.
    pub spot_max_incoming_per_sec: u32,
    pub perp_max_incoming_per_sec: u32,
    /// Streams per connection (venue: 1024).
    pub max_streams_per_connection: usize,
    /// Chance (percent) per diff interval and symbol that 1–3 trades print.
    pub trade_chance_pct: u8,
    /// `@markPrice@1s` cadence (1 s at the venue; `@markPrice` gets every third).
    pub mark_price_interval: Duration,
    /// At most one `forceOrder` per symbol per interval (venue: 1 s).
    pub liquidation_interval: Duration,
    /// Which USD-M endpoint serves `@trade`: `PerpPublic` (the default, see `binance.rs`) or
    /// `PerpMarket`.
    pub perp_trade_endpoint: Endpoint,
    /// A stale snapshot is the book this many diffs ago (or the oldest kept).
    pub stale_snapshot_lag: u64,
    /// Diffs of history kept per book for `true_book`.
    pub history: usize,
    pub levels_per_side: usize,
    /// `slow_writes` sends this many bytes per pause.
    pub slow_write_chunk: usize,
    /// `server_shutdown` closes the connection this long after the notice.
    pub shutdown_grace: Duration,
    /// Frames queued per client; a client that falls this far behind is closed (1008), as the
    /// venue drops slow consumers.
    pub client_queue: usize,
    /// REST weight per minute before an automatic 429 (venue: spot 6000, USD-M 2400); `None`
    /// turns the limit off.
    pub spot_weight_limit_1m: Option<u32>,
    pub perp_weight_limit_1m: Option<u32>,
    /// Values of the newest long/short ratio row (default: a live 2026 response).
    pub lsr_latest: LsrRow,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            seed: 7,
            symbols: vec!["BTC-USDT".into(), "ETH-USDT".into()],
            diff_interval: Duration::from_millis(100),
            ping_interval: Duration::from_secs(2),
            pong_timeout: Duration::from_secs(6),
            spot_max_incoming_per_sec: 5,
            perp_max_incoming_per_sec: 10,
            max_streams_per_connection: 1024,
            trade_chance_pct: 40,
            mark_price_interval: Duration::from_secs(1),
            liquidation_interval: Duration::from_secs(1),
            perp_trade_endpoint: Endpoint::PerpPublic,
            stale_snapshot_lag: 500,
            history: 20_000,
            levels_per_side: 300,
            slow_write_chunk: 64,
            shutdown_grace: Duration::from_secs(1),
            client_queue: 8192,
            spot_weight_limit_1m: Some(6000),
            perp_weight_limit_1m: Some(2400),
            lsr_latest: LsrRow {
                long_short_ratio: "1.9823".into(),
                long_account: "0.6647".into(),
                short_account: "0.3353".into(),
            },
        }
    }
}

/// Counters the tests read (all `SeqCst`).
#[derive(Default)]
pub struct Stats {
    /// TLS or WebSocket handshakes that failed (bad path included).
    pub ws_handshake_failures: AtomicU64,
    pub rest_requests: AtomicU64,
    /// Connections closed for sending too many messages per second.
    pub rate_violations: AtomicU64,
    /// Connections dropped for not answering a ping in time.
    pub pong_timeouts: AtomicU64,
    pub pings_sent: AtomicU64,
    /// Pongs received (solicited or not).
    pub pongs: AtomicU64,
    /// Text requests received (SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS, …, bad ones too).
    pub subscribe_requests: AtomicU64,
    /// Depth diffs sent (one per diff per subscribed client).
    pub diffs_sent: AtomicU64,
    /// Clients closed because their queue overflowed.
    pub slow_consumer_drops: AtomicU64,
    /// Automatic 429s for exceeding the REST weight limit.
    pub weight_limit_hits: AtomicU64,
}

/// What a connection task is told to do.
pub(crate) enum Out {
    /// An event on `stream`; wrapped as `{"stream","data"}` for combined connections.
    Event {
        stream: Arc<str>,
        payload: Arc<str>,
    },
    /// A text frame sent exactly as is.
    Raw(Arc<str>),
    Binary(Vec<u8>),
    Disconnect(Disconnect),
    /// `serverShutdown`, then close after `shutdown_grace`.
    Shutdown,
}

/// A connected WebSocket client, as the market clock and the fault API see it.
pub(crate) struct ClientHandle {
    pub id: u64,
    pub endpoint: Endpoint,
    pub streams: Arc<Mutex<BTreeSet<String>>>,
    pub tx: smol::channel::Sender<Out>,
    /// Set when the queue overflowed: the connection closes itself.
    pub overflow: Arc<AtomicBool>,
    pub silenced: Arc<AtomicBool>,
}

impl ClientHandle {
    /// Queues `o`; a full queue marks the client as a slow consumer instead.
    pub fn push(&self, o: Out, stats: &Stats) {
        if let Err(smol::channel::TrySendError::Full(_)) = self.tx.try_send(o)
            && !self.overflow.swap(true, Ordering::SeqCst)
        {
            stats.slow_consumer_drops.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// One symbol of one market.
pub(crate) struct SymbolState {
    pub book: BookProcess,
    pub trade_id: u64,
    pub agg_id: u64,
    /// Diffs still to be withheld (`inject_gap`).
    pub gaps: u32,
    /// Open interest in units of 0.001.
    pub open_interest: i64,
    /// Funding rate in units of 1e-8.
    pub funding: i64,
    /// Mark-price ticks sent (every third also goes to `@markPrice`).
    pub marks: u64,
    /// `silence`: the symbol's market stands still and sends nothing (no diffs, trades,
    /// marks or liquidations) until it is resumed, then carries on without a gap.
    pub silent: bool,
}

pub(crate) struct Market {
    pub books: BTreeMap<(Mkt, String), SymbolState>,
    pub rng: fastrand::Rng,
}

pub(crate) struct Faults {
    pub stale_snapshots: u32,
    pub rest: VecDeque<RestFault>,
    /// Every new WebSocket gets a `serverShutdown` right after its handshake.
    pub shutdown_on_connect: bool,
    /// No market data is sent (pings, pongs and replies still are).
    pub mute_data: bool,
}

/// REST weight used in the current clock minute.
#[derive(Default)]
pub(crate) struct Weight {
    pub minute: u64,
    pub used: u32,
}

pub(crate) struct Shared {
    pub opts: SimOptions,
    pub stats: Stats,
    pub market: Mutex<Market>,
    pub clients: Mutex<Vec<ClientHandle>>,
    pub faults: Mutex<Faults>,
    /// WebSocket and REST TCP connections, from accept to close.
    pub ws_open: Arc<OpenCount>,
    pub rest_open: Arc<OpenCount>,
    pub rest_paths: Mutex<HashMap<String, u64>>,
    /// Keyed by the venue market the path belongs to.
    pub weight: Mutex<HashMap<Mkt, Weight>>,
    pub slow_ws_us: AtomicU64,
    /// New WebSockets wait this long before their TLS handshake starts.
    pub accept_delay_ms: AtomicU64,
    pub slow_rest_us: AtomicU64,
    pub next_client: AtomicU64,
    /// Long/short ratio responses per path and symbol (the timestamp form alternates).
    pub lsr_responses: Mutex<HashMap<String, u64>>,
}

const OPEN_LOG_CAP: usize = 1 << 16;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `BTC-USDT`, `btcusdt` → `BTCUSDT`.
pub fn venue_symbol(s: &str) -> String {
    s.replace(['-', '/', '_'], "").to_ascii_uppercase()
}

/// Connections of one kind open at a simulator, from accept to close: the count now, the most
/// at any instant, accepts, and every count it has been at (after each accept and close, in
/// order; the last 65536 kept) for `sample_open_ws_into`. Both simulators use it.
#[derive(Default)]
pub(crate) struct OpenCount {
    open: AtomicUsize,
    max: AtomicUsize,
    accepts: AtomicU64,
    log: Mutex<VecDeque<usize>>,
}

fn log_count(log: &mut VecDeque<usize>, now: usize) {
    if log.len() == OPEN_LOG_CAP {
        log.pop_front();
    }
    log.push_back(now);
}

impl OpenCount {
    /// Counts one accepted connection until the guard is dropped (at accept, before anything
    /// else can happen, so the peak is exact).
    pub fn opened(self: &Arc<Self>) -> OpenGuard {
        let mut log = lock(&self.log);
        let now = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        self.accepts.fetch_add(1, Ordering::SeqCst);
        log_count(&mut log, now);
        OpenGuard(self.clone())
    }
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
    pub fn accepts(&self) -> u64 {
        self.accepts.load(Ordering::SeqCst)
    }
    /// Restarts the peak from the number open now.
    pub fn reset_max(&self) {
        let _log = lock(&self.log);
        self.max.store(self.open(), Ordering::SeqCst);
    }
    /// Appends every count since the previous call, then the current one.
    pub fn sample_into(&self, out: &mut Vec<usize>) {
        let mut log = lock(&self.log);
        out.extend(log.drain(..));
        out.push(self.open());
    }
}

/// Holds one open TCP connection in its [`OpenCount`]; dropped when the socket is closed.
pub(crate) struct OpenGuard(Arc<OpenCount>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let mut log = lock(&self.0.log);
        let now = self.0.open.fetch_sub(1, Ordering::SeqCst) - 1;
        log_count(&mut log, now);
    }
}

/// An I/O wrapper under TLS that, while `slow_writes`/`slow_rest` is on, writes at most
/// `slow_write_chunk` bytes at a time with a pause after each piece.
pub(crate) struct Throttle<S> {
    inner: S,
    sh: Arc<Shared>,
    rest: bool,
    pause: Option<Timer>,
}

impl<S> Throttle<S> {
    pub fn new(inner: S, sh: Arc<Shared>, rest: bool) -> Self {
        Throttle {
            inner,
            sh,
            rest,
            pause: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Throttle<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Throttle<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let us = if me.rest {
            me.sh.slow_rest_us.load(Ordering::Relaxed)
        } else {
            me.sh.slow_ws_us.load(Ordering::Relaxed)
        };
        if us == 0 {
            me.pause = None;
            return Pin::new(&mut me.inner).poll_write(cx, buf);
        }
        if let Some(t) = me.pause.as_mut() {
            ready!(Pin::new(t).poll(cx));
            me.pause = None;
        }
        let n = buf.len().min(me.sh.opts.slow_write_chunk.max(1));
        let r = ready!(Pin::new(&mut me.inner).poll_write(cx, &buf[..n]));
        if matches!(r, Ok(w) if w > 0) {
            me.pause = Some(Timer::after(Duration::from_micros(us)));
        }
        Poll::Ready(r)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

/// Makes the next `close` of `fd` send a TCP RST instead of a FIN (`SO_LINGER` 0).
#[cfg(target_os = "linux")]
pub(crate) fn abort_on_close(fd: std::os::fd::RawFd) {
    #[repr(C)]
    struct Linger {
        l_onoff: i32,
        l_linger: i32,
    }
    unsafe extern "C" {
        fn setsockopt(
            fd: i32,
            level: i32,
            name: i32,
            val: *const std::ffi::c_void,
            len: u32,
        ) -> i32;
    }
    const SOL_SOCKET: i32 = 1;
    const SO_LINGER: i32 = 13;
    let l = Linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` is an open socket owned by the caller for the duration of the call, and the
    // option value points to a live `struct linger` of the length given.
    unsafe {
        setsockopt(
            fd,
            SOL_SOCKET,
            SO_LINGER,
            (&raw const l).cast(),
            std::mem::size_of::<Linger>() as u32,
        );
    }
}

/// Elsewhere a reset is an ordinary close.
#[cfg(not(target_os = "linux"))]
pub(crate) fn abort_on_close(_fd: i32) {}

/// Shrinks a socket's receive buffer (a server that stops reading fills up sooner).
#[cfg(unix)]
pub(crate) fn shrink_recv_buffer(fd: i32) {
    // SAFETY: `fd` is the connection's open socket, owned by its task for the whole call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(fd, 4096);
}

#[cfg(not(unix))]
pub(crate) fn shrink_recv_buffer(_fd: i32) {}

#[cfg(unix)]
pub(crate) fn raw_fd(s: &Async<TcpStream>) -> i32 {
    use std::os::fd::AsRawFd;
    s.as_raw_fd()
}

#[cfg(not(unix))]
pub(crate) fn raw_fd(_s: &Async<TcpStream>) -> i32 {
    -1
}

/// A throwaway CA and a `localhost`/`127.0.0.1` leaf signed by it.
pub(crate) fn make_tls() -> (Arc<ServerConfig>, String) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "marketbox exchange simulator CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let mut leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("leaf params");
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let leaf = leaf_params.signed_by(&leaf_key, &ca).expect("leaf");
    let certs = vec![CertificateDer::from(leaf.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate");
    (Arc::new(cfg), ca.pem())
}

/// A running simulator. Dropping it stops its thread, closes every socket and removes the CA
/// file.
pub struct Sim {
    shared: Arc<Shared>,
    spot_ws_addr: SocketAddr,
    perp_ws_addr: SocketAddr,
    rest_any_addr: SocketAddr,
    rest_spot_addr: SocketAddr,
    rest_perp_addr: SocketAddr,
    ca_path: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
    stop_tx: smol::channel::Sender<()>,
}

fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind a loopback port")
}

impl Sim {
    /// Starts the simulator on its own thread; it is serving when this returns.
    pub fn start(opts: SimOptions) -> Sim {
        let (tls, ca_pem) = make_tls();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let ca_path = std::env::temp_dir().join(format!(
            "marketbox-sim-ca-{}-{}-{}.pem",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst),
            fastrand::u32(..)
        ));
        std::fs::write(&ca_path, ca_pem).expect("write the CA file");

        let market = binance::new_market(&opts);
        let shared = Arc::new(Shared {
            stats: Stats::default(),
            market: Mutex::new(market),
            clients: Mutex::new(Vec::new()),
            faults: Mutex::new(Faults {
                stale_snapshots: 0,
                rest: VecDeque::new(),
                shutdown_on_connect: false,
                mute_data: false,
            }),
            ws_open: Arc::default(),
            rest_open: Arc::default(),
            rest_paths: Mutex::new(HashMap::new()),
            weight: Mutex::new(HashMap::new()),
            slow_ws_us: AtomicU64::new(0),
            accept_delay_ms: AtomicU64::new(0),
            slow_rest_us: AtomicU64::new(0),
            next_client: AtomicU64::new(1),
            lsr_responses: Mutex::new(HashMap::new()),
            opts,
        });
        let listeners = [bind(), bind(), bind(), bind(), bind()];
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .map(|l| l.local_addr().expect("local addr"))
            .collect();
        let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("exchange-sim".into())
            .spawn(move || {
                let ex = Arc::new(Executor::new());
                let weak = Arc::downgrade(&ex);
                let acceptor = TlsAcceptor::from(tls);
                let [spot_ws, perp_ws, rest_any, rest_spot, rest_perp] =
                    listeners.map(|l| Async::new(l).expect("async listener"));
                ex.spawn(binance::run_market(sh.clone())).detach();
                ex.spawn(accept_ws(
                    weak.clone(),
                    sh.clone(),
                    spot_ws,
                    acceptor.clone(),
                    binance::WsListener::Spot,
                ))
                .detach();
                ex.spawn(accept_ws(
                    weak.clone(),
                    sh.clone(),
                    perp_ws,
                    acceptor.clone(),
                    binance::WsListener::Perp,
                ))
                .detach();
                for (l, host) in [
                    (rest_any, RestHost::Any),
                    (rest_spot, RestHost::Spot),
                    (rest_perp, RestHost::Perp),
                ] {
                    ex.spawn(accept_rest(
                        weak.clone(),
                        sh.clone(),
                        l,
                        acceptor.clone(),
                        host,
                    ))
                    .detach();
                }
                smol::block_on(ex.run(async {
                    let _ = stop_rx.recv().await;
                }));
                // Dropping the executor drops every task, and with them every socket.
                drop(ex);
            })
            .expect("simulator thread");
        Sim {
            shared,
            spot_ws_addr: addrs[0],
            perp_ws_addr: addrs[1],
            rest_any_addr: addrs[2],
            rest_spot_addr: addrs[3],
            rest_perp_addr: addrs[4],
            ca_path,
            thread: Some(thread),
            stop_tx,
        }
    }

    /// The CA certificate (PEM) that signed the simulator's `localhost` certificate.
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_path
    }

    /// Base for `[venues.binance] spot_ws` (the client appends `/stream?streams=…`).
    pub fn spot_ws(&self) -> String {
        format!("wss://localhost:{}", self.spot_ws_addr.port())
    }
    /// Base for `perpetual_public_ws`.
    pub fn perp_public_ws(&self) -> String {
        format!("wss://localhost:{}/public", self.perp_ws_addr.port())
    }
    /// Base for `perpetual_market_ws`.
    pub fn perp_market_ws(&self) -> String {
        format!("wss://localhost:{}/market", self.perp_ws_addr.port())
    }
    /// The USD-M host without a routed path (the legacy URL: only the `/public` tier flows).
    pub fn perp_ws_root(&self) -> String {
        format!("wss://localhost:{}", self.perp_ws_addr.port())
    }
    /// One REST host answering both spot and USD-M paths.
    pub fn rest(&self) -> String {
        format!("https://localhost:{}", self.rest_any_addr.port())
    }
    /// The spot REST host (`/api/v3/…` only).
    pub fn spot_rest(&self) -> String {
        format!("https://localhost:{}", self.rest_spot_addr.port())
    }
    /// The USD-M REST host (`/fapi/v1/…`, `/futures/data/…` only).
    pub fn perp_rest(&self) -> String {
        format!("https://localhost:{}", self.rest_perp_addr.port())
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }
    pub fn open_ws(&self) -> usize {
        self.shared.ws_open.open()
    }
    /// The most WebSocket connections open at any instant since start (or the last reset).
    pub fn max_open_ws(&self) -> usize {
        self.shared.ws_open.max()
    }
    /// Restarts `max_open_ws` from the number open now.
    pub fn reset_max_open_ws(&self) {
        self.shared.ws_open.reset_max();
    }
    pub fn ws_accepts(&self) -> u64 {
        self.shared.ws_open.accepts()
    }
    pub fn open_rest(&self) -> usize {
        self.shared.rest_open.open()
    }
    pub fn max_open_rest(&self) -> usize {
        self.shared.rest_open.max()
    }
    pub fn rest_requests(&self) -> u64 {
        self.shared.stats.rest_requests.load(Ordering::SeqCst)
    }
    /// Requests whose path is exactly `path` (`/api/v3/depth`).
    pub fn rest_requests_to(&self, path: &str) -> u64 {
        lock(&self.shared.rest_paths)
            .get(path)
            .copied()
            .unwrap_or(0)
    }
    pub fn rate_violations(&self) -> u64 {
        self.shared.stats.rate_violations.load(Ordering::SeqCst)
    }
    pub fn pong_timeouts(&self) -> u64 {
        self.shared.stats.pong_timeouts.load(Ordering::SeqCst)
    }
    /// REST weight used this clock minute on a market's host.
    pub fn used_weight_1m(&self, mkt: Mkt) -> u32 {
        let w = lock(&self.shared.weight);
        w.get(&mkt)
            .filter(|w| w.minute == now_ms() / 60_000)
            .map_or(0, |w| w.used)
    }

    /// The streams of every connection on `endpoint` (one sorted list per connection, in
    /// connection order).
    pub fn subscriptions(&self, endpoint: Endpoint) -> Vec<Vec<String>> {
        lock(&self.shared.clients)
            .iter()
            .filter(|c| c.endpoint == endpoint)
            .map(|c| lock(&c.streams).iter().cloned().collect())
            .collect()
    }

    /// Appends every open-WebSocket count the simulator has been at since the previous call
    /// (one entry per accept and per close, in order; the last 65536 are kept), then the
    /// current count. `max()` of what it appends is the peak over that period.
    pub fn sample_open_ws_into(&self, out: &mut Vec<usize>) {
        self.shared.ws_open.sample_into(out);
    }

    /// The true top `depth` levels right after the diff whose final update id is
    /// `update_id`, as the venue writes them; `None` when that id is not a diff's final id
    /// (or is older than the kept history). `symbol` in any spelling (`BTC-USDT`, `BTCUSDT`).
    pub fn true_book(
        &self,
        mkt: Mkt,
        symbol: &str,
        update_id: u64,
        depth: usize,
    ) -> Option<TextBook> {
        let mut m = lock(&self.shared.market);
        let st = m.books.get_mut(&(mkt, venue_symbol(symbol)))?;
        let spec = st.book.spec();
        let snap = st.book.at(update_id, depth)?;
        let text = |v: &[(i64, book::Level)]| {
            v.iter()
                .map(|(p, l)| (spec.price(*p), spec.qty(l.qty)))
                .collect()
        };
        Some((text(&snap.bids), text(&snap.asks)))
    }

    /// The newest update id of a book.
    pub fn last_update_id(&self, mkt: Mkt, symbol: &str) -> Option<u64> {
        lock(&self.shared.market)
            .books
            .get(&(mkt, venue_symbol(symbol)))
            .map(|s| s.book.last_id())
    }

    /// `last_update_id`, 0 for an unknown symbol.
    pub fn last_id(&self, mkt: Mkt, symbol: &str) -> u64 {
        self.last_update_id(mkt, symbol).unwrap_or(0)
    }

    /// The newest trade id of a symbol (0 for an unknown symbol): every trade up to it has
    /// been generated, and sent to every client subscribed at the time.
    pub fn last_trade_id(&self, mkt: Mkt, symbol: &str) -> u64 {
        lock(&self.shared.market)
            .books
            .get(&(mkt, venue_symbol(symbol)))
            .map_or(0, |s| s.trade_id)
    }

    /// Ends (or silences) every open WebSocket.
    pub fn disconnect_all(&self, how: Disconnect) {
        for c in lock(&self.shared.clients).iter() {
            c.push(Out::Disconnect(how), &self.shared.stats);
        }
    }

    /// Ends (or silences) the WebSockets on one endpoint.
    pub fn disconnect(&self, endpoint: Endpoint, how: Disconnect) {
        for c in lock(&self.shared.clients)
            .iter()
            .filter(|c| c.endpoint == endpoint)
        {
            c.push(Out::Disconnect(how), &self.shared.stats);
        }
    }

    /// The next diff of `symbol` is applied to the true book but never sent, so the next one
    /// sent breaks the chain (spot: `U` ≠ previous `u` + 1; USD-M: `pu` ≠ previous `u`).
    pub fn inject_gap(&self, mkt: Mkt, symbol: &str) {
        if let Some(s) = lock(&self.shared.market)
            .books
            .get_mut(&(mkt, venue_symbol(symbol)))
        {
            s.gaps += 1;
        }
    }

    /// `symbol` goes silent (`true`: nothing at all is sent for it, its book stands still) or
    /// resumes where it stopped (`false`). Other symbols are unaffected.
    pub fn silence(&self, mkt: Mkt, symbol: &str, silent: bool) {
        if let Some(s) = lock(&self.shared.market)
            .books
            .get_mut(&(mkt, venue_symbol(symbol)))
        {
            s.silent = silent;
        }
    }

    /// The next `n` depth snapshots (any market) are `stale_snapshot_lag` diffs old.
    pub fn stale_snapshots(&self, n: u32) {
        lock(&self.shared.faults).stale_snapshots += n;
    }

    /// The next `n` REST requests (any host, any path) are refused with `fault`.
    pub fn rest_fault(&self, fault: RestFault, n: usize) {
        let mut f = lock(&self.shared.faults);
        for _ in 0..n {
            f.rest.push_back(fault);
        }
    }

    /// Sends one bad frame of `kind` to every connected client.
    pub fn send_malformed(&self, kind: Malformed) {
        binance::send_malformed(&self.shared, kind);
    }

    /// Every WebSocket from now on gets `serverShutdown` as soon as it is connected (and is
    /// closed `shutdown_grace` later): a venue that asks for a reconnect on every connect.
    pub fn shutdown_on_connect(&self, on: bool) {
        lock(&self.shared.faults).shutdown_on_connect = on;
    }

    /// Stops (or resumes) all market data; the sockets stay up and answer pings and requests.
    pub fn mute_data(&self, on: bool) {
        lock(&self.shared.faults).mute_data = on;
    }

    /// Sends `text` as one frame, exactly as given, to every client on `endpoint` (a hostile
    /// venue's frame: impossible ids, crossed or negative levels).
    pub fn send_raw(&self, endpoint: Endpoint, text: &str) {
        let text: Arc<str> = text.into();
        for c in lock(&self.shared.clients)
            .iter()
            .filter(|c| c.endpoint == endpoint)
        {
            c.push(Out::Raw(text.clone()), &self.shared.stats);
        }
    }

    /// Sends the frame `make(last update id)` to every client subscribed to `symbol`'s depth
    /// stream, right after the last diff sent and before the next (the market is held while
    /// it is queued): a hostile diff that claims to continue the chain.
    pub fn send_after_last_diff(&self, mkt: Mkt, symbol: &str, make: impl FnOnce(u64) -> String) {
        let market = lock(&self.shared.market);
        let Some(st) = market.books.get(&(mkt, venue_symbol(symbol))) else {
            return;
        };
        let text: Arc<str> = make(st.book.last_id()).into();
        let stream = format!("{}@depth@100ms", venue_symbol(symbol).to_ascii_lowercase());
        for c in lock(&self.shared.clients)
            .iter()
            .filter(|c| c.endpoint.mkt() == mkt && lock(&c.streams).contains(&stream))
        {
            c.push(Out::Raw(text.clone()), &self.shared.stats);
        }
        drop(market);
    }

    /// Sends `{"e":"serverShutdown","E":…}` to every client and closes each connection
    /// `shutdown_grace` later (1001).
    pub fn server_shutdown(&self) {
        for c in lock(&self.shared.clients).iter() {
            c.push(Out::Shutdown, &self.shared.stats);
        }
    }

    /// New WebSocket connections wait `d` before their handshake (a slow venue edge: a
    /// replacement socket takes that long to come up).
    pub fn delay_accepts(&self, d: Duration) {
        self.shared
            .accept_delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// WebSocket bytes trickle out `slow_write_chunk` at a time with `pause` after each piece;
    /// `Duration::ZERO` turns it off.
    pub fn slow_writes(&self, pause: Duration) {
        self.shared
            .slow_ws_us
            .store(pause.as_micros() as u64, Ordering::SeqCst);
    }

    /// The same for REST responses.
    pub fn slow_rest(&self, pause: Duration) {
        self.shared
            .slow_rest_us
            .store(pause.as_micros() as u64, Ordering::SeqCst);
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.stop_tx.try_send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.ca_path);
    }
}

async fn accept_ws(
    ex: Weak<Executor<'static>>,
    sh: Arc<Shared>,
    l: Async<TcpListener>,
    acceptor: TlsAcceptor,
    kind: binance::WsListener,
) {
    loop {
        let Ok((tcp, _)) = l.accept().await else {
            Timer::after(Duration::from_millis(10)).await;
            continue;
        };
        let guard = sh.ws_open.opened();
        let Some(ex) = ex.upgrade() else { return };
        ex.spawn(binance::serve_ws(
            sh.clone(),
            guard,
            tcp,
            acceptor.clone(),
            kind,
        ))
        .detach();
    }
}

async fn accept_rest(
    ex: Weak<Executor<'static>>,
    sh: Arc<Shared>,
    l: Async<TcpListener>,
    acceptor: TlsAcceptor,
    host: RestHost,
) {
    loop {
        let Ok((tcp, _)) = l.accept().await else {
            Timer::after(Duration::from_millis(10)).await;
            continue;
        };
        let guard = sh.rest_open.opened();
        let Some(ex) = ex.upgrade() else { return };
        let (sh, acceptor) = (sh.clone(), acceptor.clone());
        ex.spawn(async move {
            let _open = guard;
            let _ = tcp.get_ref().set_nodelay(true);
            let io = Throttle::new(tcp, sh.clone(), true);
            let Some(Ok(tls)) = timeout(Duration::from_secs(5), acceptor.accept(io)).await else {
                return;
            };
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let sh = sh.clone();
                    async move {
                        let r = binance::rest_answer(
                            &sh,
                            host,
                            req.uri().path(),
                            req.uri().query().unwrap_or(""),
                        );
                        let mut b = hyper::Response::builder()
                            .status(r.status)
                            .header("content-type", "application/json;charset=UTF-8");
                        for (k, v) in &r.headers {
                            b = b.header(*k, v);
                        }
                        Ok::<_, std::convert::Infallible>(
                            b.body(Full::new(Bytes::from(r.body))).unwrap_or_default(),
                        )
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(smol_hyper::rt::FuturesIo::new(tls), svc)
                .await;
        })
        .detach();
    }
}

/// `f`, or `None` when it takes longer than `d`.
pub(crate) async fn timeout<T>(d: Duration, f: impl std::future::Future<Output = T>) -> Option<T> {
    async { Some(f.await) }
        .or(async {
            Timer::after(d).await;
            None
        })
        .await
}

/// Writes `v` units of `10^-dec` with all decimals (Binance style).
pub(crate) fn fixed(v: i64, dec: u32) -> String {
    fmt_units(v, dec, book::NumStyle::Fixed)
}

/// Sends a close frame, then waits briefly for the client's reply (or EOF).
pub(crate) async fn close<S>(ws: &mut WebSocketStream<S>, code: CloseCode, reason: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if timeout(Duration::from_secs(1), ws.close(Some(frame)))
        .await
        .is_some_and(|r| r.is_ok())
    {
        timeout(Duration::from_secs(1), async {
            while let Some(Ok(m)) = ws.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// The default config (`config/marketbox.toml`) with every venue endpoint on the simulators,
/// `ca` as `[tls] extra_ca` and the metrics server on `listen`.
pub fn default_config_on(bin: &Sim, okx: &okx::OkxSim, ca: &Path, listen: &str) -> String {
    let default = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/marketbox.toml"
    ))
    .expect("the default config");
    default
        .replacen("[metrics]\n", &format!("[metrics]\nlisten = \"{listen}\"\n"), 1)
        .replacen("[tls]\n", &format!("[tls]\nextra_ca = \"{}\"\n", ca.display()), 1)
        .replacen(
            "[venues.binance]\n",
            &format!(
                "[venues.binance]\nspot_ws = \"{}\"\nspot_rest = \"{r}\"\nperpetual_public_ws = \"{}\"\nperpetual_market_ws = \"{}\"\nperpetual_rest = \"{r}\"\n",
                bin.spot_ws(),
                bin.perp_public_ws(),
                bin.perp_market_ws(),
                r = bin.rest()
            ),
            1,
        )
        .replacen(
            "[venues.okx]\n",
            &format!("[venues.okx]\nws = \"{}\"\nrest = \"{}\"\n", okx.ws_url(), okx.rest()),
            1,
        )
}
