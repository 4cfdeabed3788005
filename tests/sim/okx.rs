//! OKX v5 public market data (spot and perpetual swaps on one endpoint), as the venue documents
//! it in late 2026. Written from `../shared/PROTOCOLS.md`, the captures in
//! `../shared/fixtures/okx/` and the venue's docs, never from marketbox's parsers.
//!
//! Design: an [`OkxSim`] is its own simulator (thread, smol executor, TLS listeners, CA file),
//! independent of the Binance [`super::Sim`]; a test may run both. Three parts, each a plain
//! function of the shared state, in the style of `binance.rs`:
//! - The market clock (`run_market`): every `diff_interval` each instrument either sends a
//!   `books` heartbeat or takes one `BookProcess` step and sends the diff as an `update`; trades
//!   print from the top of the book; swaps publish `funding-rate` and `open-interest`, and
//!   `liquidation-orders` (instType `SWAP`) also carries a swap that is not configured
//!   (`DOGE-USDT-SWAP`). Frames are built once as text, under the market lock, and queued to
//!   every client subscribed to that `channel:instId` key, so a REST snapshot never runs ahead of
//!   what has been queued.
//! - The connection (`serve_ws`): TLS, the upgrade (the connection-rate limit answers 429, any
//!   path but `/ws/v5/public` 404), then one loop that writes queued frames, answers the text
//!   `ping`, handles `subscribe`/`unsubscribe` (acks, snapshots and errors go through the
//!   client's own queue, so a snapshot is always ordered before the updates that follow it),
//!   enforces the idle timeout (nothing pushed for 30 s: close 4004) and obeys fault commands.
//! - REST (`rest_answer`): `/api/v5/market/books` (the current or a stale true book with its
//!   `seqId`, alternately a JSON number and a string) and the two rubik long/short ratio paths,
//!   with the venue's rate limits and error bodies.
//!
//! Sequence ids: a `BookProcess` id is the wire `seqId` in the first epoch. `sequence_reset`
//! opens a new epoch whose wire ids are far lower (an eighth of the previous epoch's first id),
//! so every epoch's wire range is disjoint from the others and `true_book` maps a wire `seqId`
//! back to its book id unambiguously.
//!
//! Not simulated: other channels (`books5`, `bbo-tbt`, `tickers`, … are refused with 60018),
//! login and private channels, `/business`, the 30-connections-per-channel limit.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::handshake::server::{
    Callback, ErrorResponse, Request, Response,
};
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, FutureExt, StreamExt};
use futures_rustls::TlsAcceptor;
use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::Value;
use smol::{Async, Executor, Timer};

use super::book::{BookParams, BookProcess, IdRule, Level, NumStyle, Spec, fmt_units};
/// Re-exported so a test needs only `sim::okx::*`.
pub use super::{Disconnect, TextBook};
use super::{OpenCount, OpenGuard, abort_on_close, close, lock, make_tls, now_ms, raw_fd, timeout};

/// The only WebSocket path served.
pub const WS_PATH: &str = "/ws/v5/public";
/// A swap that is not configured but still liquidates (for clients' filters).
pub const OTHER_SWAP: &str = "DOGE-USDT-SWAP";

/// How a `books` subscription starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BookMode {
    /// A `snapshot` frame (`prevSeqId` -1) right after the ack, then updates (OKX before 2026-08).
    WsSnapshot,
    /// No snapshot ever: updates start after the ack; the client takes the REST snapshot
    /// (production since August 2026).
    RestSnapshot,
}

/// What `books` frames carry in `checksum`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChecksumMode {
    /// The signed CRC32 of the top 25 levels of the true book.
    On,
    /// Always 0 (production since 2026-06-23).
    Zero,
}

/// Frames the venue should never send, for `send_malformed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OkxMalformed {
    /// A truncated `books` frame.
    NotJson,
    /// A valid `tickers` frame nobody subscribed to.
    UnknownChannel,
    /// A `trades` row (repeating the last trade id) whose `px` has a letter in it (`"4347O.1"`).
    BadDecimal,
    /// A binary frame (gzip magic bytes).
    Binary,
}

/// Simulator settings. Venue values are in the comments; defaults are the venue's unless noted.
#[derive(Clone, Debug)]
pub struct OkxOptions {
    pub seed: u64,
    /// `BASE-QUOTE`; each gets a spot instrument (`BTC-USDT`) and a swap (`BTC-USDT-SWAP`).
    pub symbols: Vec<String>,
    pub book_mode: BookMode,
    pub checksum: ChecksumMode,
    /// One diff (or heartbeat) per instrument per interval (venue: 100 ms).
    pub diff_interval: Duration,
    /// Chance (percent) per tick that an instrument sends a heartbeat instead of a diff.
    pub heartbeat_chance_pct: u8,
    /// A connection the server has pushed nothing to for this long is closed (4004): no
    /// subscription, or a quiet one and no `ping` (venue: 30 s). A `pong` is a push.
    pub idle_timeout: Duration,
    /// WebSocket upgrade requests per second (sliding, refused ones included) before the
    /// upgrade is refused with HTTP 429 (venue: 3).
    pub max_connects_per_sec: usize,
    /// `subscribe`/`unsubscribe` requests per connection per hour (venue: 480); beyond it an
    /// error event 60014.
    pub subscribes_per_hour: usize,
    /// Larger requests get an error event 60012 (venue: 64 KB).
    pub max_request_bytes: usize,
    /// Chance (percent) per tick and instrument that 1–3 trades print.
    pub trade_chance_pct: u8,
    /// `funding-rate` cadence per swap (venue: 30–90 s; default 1 s).
    pub funding_interval: Duration,
    /// `open-interest` cadence per swap (venue: 3 s; default 1 s).
    pub open_interest_interval: Duration,
    /// `liquidation-orders` cadence (at most one per swap per interval; default 1 s).
    pub liquidation_interval: Duration,
    pub levels_per_side: usize,
    /// Diffs of history kept per book for `true_book` and stale snapshots.
    pub history: usize,
    /// After a 64008 notice the connection is closed this long later (venue: 60 s; default 1 s).
    pub shutdown_grace: Duration,
    /// Rubik requests (both ratio paths together) per 2 s (venue: 5).
    pub rubik_per_2s: usize,
    /// `/api/v5/market/books` requests per 2 s (venue: 40).
    pub books_per_2s: usize,
    /// A stale REST snapshot is the book this many diffs ago (or the oldest kept).
    pub stale_snapshot_lag: u64,
    /// Frames queued per client; a client this far behind is closed (4005).
    pub client_queue: usize,
    /// The WebSocket listener's receive buffer (inherited by every connection, so the window
    /// it advertises is small from the first byte); `None` keeps the system's.
    pub recv_buffer: Option<usize>,
}

impl Default for OkxOptions {
    fn default() -> Self {
        OkxOptions {
            seed: 11,
            symbols: vec!["BTC-USDT".into(), "ETH-USDT".into()],
            book_mode: BookMode::WsSnapshot,
            checksum: ChecksumMode::On,
            diff_interval: Duration::from_millis(100),
            heartbeat_chance_pct: 10,
            idle_timeout: Duration::from_secs(30),
            max_connects_per_sec: 3,
            subscribes_per_hour: 480,
            max_request_bytes: 65_536,
            trade_chance_pct: 40,
            funding_interval: Duration::from_secs(1),
            open_interest_interval: Duration::from_secs(1),
            liquidation_interval: Duration::from_secs(1),
            levels_per_side: 400,
            history: 20_000,
            shutdown_grace: Duration::from_secs(1),
            rubik_per_2s: 5,
            books_per_2s: 40,
            stale_snapshot_lag: 500,
            client_queue: 8192,
            recv_buffer: None,
        }
    }
}

/// Counters the tests read (all `SeqCst`).
#[derive(Default)]
pub struct OkxStats {
    /// TLS or upgrade failures (429 and 404 refusals included).
    pub ws_handshake_failures: AtomicU64,
    /// Upgrades refused with 429 for the connection rate.
    pub connect_rate_violations: AtomicU64,
    /// Connections closed for having had nothing pushed for `idle_timeout`.
    pub idle_closes: AtomicU64,
    /// Text `ping`s received.
    pub pings: AtomicU64,
    /// Text requests received other than `ping` (bad ones included).
    pub subscribe_requests: AtomicU64,
    /// Requests refused with 60014.
    pub subscribe_limit_hits: AtomicU64,
    /// Error events sent.
    pub error_events: AtomicU64,
    pub rest_requests: AtomicU64,
    pub rubik_limit_hits: AtomicU64,
    pub books_limit_hits: AtomicU64,
    /// WebSocket `books` snapshots sent.
    pub snapshots_sent: AtomicU64,
    /// `books` updates (heartbeats excluded) queued, one per subscribed client.
    pub updates_sent: AtomicU64,
    pub heartbeats_sent: AtomicU64,
    /// Clients closed because their queue overflowed.
    pub slow_consumer_drops: AtomicU64,
}

// ---------------------------------------------------------------------------------------------
// Instruments and books

/// A range of book ids whose wire `seqId` is `book id - offset`.
#[derive(Clone, Copy, Debug)]
struct Epoch {
    book_start: u64,
    offset: i64,
}

struct Inst {
    swap: bool,
    /// `BTC-USDT` (the swap's `instFamily`/`uly`).
    family: String,
    book: BookProcess,
    epochs: Vec<Epoch>,
    /// Diffs still to be withheld / corrupted / started in a new epoch.
    gaps: u32,
    corrupt: u32,
    resets: u32,
    trade_id: u64,
    trade_seq: i64,
    /// Open interest in contracts.
    oi: i64,
    /// Contract value in units of `10^-ct_dec` of the base currency.
    ct_val: i64,
    ct_dec: u32,
    /// Funding rate in units of 1e-16, and the last settled one.
    funding: i64,
    settled: i64,
}

impl Inst {
    /// The wire `seqId` of a book id.
    fn wire(&self, id: u64) -> i64 {
        let e = self
            .epochs
            .iter()
            .rev()
            .find(|e| e.book_start <= id)
            .unwrap_or(&self.epochs[0]);
        id as i64 - e.offset
    }

    /// The book ids a wire `seqId` can stand for (at most one, epochs being disjoint).
    fn book_ids(&self, seq: i64) -> impl Iterator<Item = u64> + '_ {
        self.epochs.iter().enumerate().filter_map(move |(k, e)| {
            let b = seq.checked_add(e.offset)?;
            let next = self.epochs.get(k + 1).map(|n| n.book_start as i64);
            (b >= e.book_start as i64 && next.is_none_or(|n| b < n)).then_some(b as u64)
        })
    }

    fn text(&self, levels: &[(i64, Level)]) -> Vec<(String, String)> {
        let spec = self.book.spec();
        levels
            .iter()
            .map(|(p, l)| (spec.price(*p), spec.qty(l.qty)))
            .collect()
    }

    /// The checksum of the current true book.
    fn checksum(&self, mode: ChecksumMode) -> i32 {
        match mode {
            ChecksumMode::Zero => 0,
            ChecksumMode::On => {
                let top = self.book.top(25);
                okx_checksum(&self.text(&top.bids), &self.text(&top.asks))
            }
        }
    }
}

/// Grid and starting mid like the venue's: BTC prices `"43470.1"` (tick 0.1), ETH `"2325.12"`;
/// spot sizes up to 8 decimals, swap sizes whole contracts; contract values 0.01 BTC, 0.1 ETH.
/// Returns (spec, mid, contract value units, their decimals).
fn instrument(family: &str, swap: bool, i: usize) -> (Spec, i64, i64, u32) {
    let spec = |price_decimals, qty_decimals, lot, typical_lots| Spec {
        price_decimals,
        tick: 1,
        qty_decimals,
        lot,
        typical_lots,
        style: NumStyle::Trimmed,
    };
    match (family, swap) {
        ("BTC-USDT", false) => (spec(1, 8, 1, 20_000_000), 434_700, 1, 2),
        ("BTC-USDT", true) => (spec(1, 0, 1, 300), 434_710, 1, 2),
        ("ETH-USDT", false) => (spec(2, 8, 100, 1_000_000), 232_512, 1, 1),
        ("ETH-USDT", true) => (spec(2, 0, 1, 500), 232_530, 1, 1),
        (_, false) => (spec(4, 8, 1_000_000, 1_000), (10 + i as i64) * 10_000, 1, 0),
        (_, true) => (spec(4, 0, 1, 200), (10 + i as i64) * 10_000 + 3, 1, 0),
    }
}

fn new_market(opts: &OkxOptions) -> OkxMarket {
    let mut insts = BTreeMap::new();
    for (i, s) in opts.symbols.iter().enumerate() {
        let family = s.to_ascii_uppercase();
        for swap in [false, true] {
            let (spec, mid, ct_val, ct_dec) = instrument(&family, swap, i);
            let first_id =
                11_000_000_000 + i as u64 * 1_000_000_000 + u64::from(swap) * 500_000_000;
            let seed = opts
                .seed
                .wrapping_mul(1_000_003)
                .wrapping_add(0x006f_6b78 + i as u64 * 7_919 + u64::from(swap) * 104_729);
            let book = BookProcess::new(BookParams {
                seed,
                spec,
                mid,
                first_id,
                // Consecutive seqIds jump (other instruments share the counter).
                ids: IdRule::Jumpy {
                    max_jump: 60,
                    max_span: 10,
                },
                // The process keeps within a fifth of its target; this keeps the whole book
                // inside the venue's `levels_per_side` window, so snapshots are complete and a
                // correct client's book equals `true_book` at any depth.
                levels_per_side: (opts.levels_per_side * 5 / 6).max(1),
                history: opts.history,
                checkpoint_every: 256,
            });
            let id = if swap {
                format!("{family}-SWAP")
            } else {
                family.clone()
            };
            insts.insert(
                id,
                Inst {
                    swap,
                    family: family.clone(),
                    book,
                    epochs: vec![Epoch {
                        book_start: first_id,
                        offset: 0,
                    }],
                    gaps: 0,
                    corrupt: 0,
                    resets: 0,
                    trade_id: 300_000_000 + i as u64 * 10_000_000 + u64::from(swap) * 5_000_000,
                    trade_seq: 1_000 + i as i64 * 100_000,
                    oi: 2_500_000 + i as i64 * 100_000,
                    ct_val,
                    ct_dec,
                    funding: 1_534_702_159_002,
                    settled: 1_201_413_274_882,
                },
            );
        }
    }
    OkxMarket {
        insts,
        rng: fastrand::Rng::with_seed(opts.seed ^ 0x6f6b_786d),
    }
}

struct OkxMarket {
    insts: BTreeMap<String, Inst>,
    rng: fastrand::Rng,
}

/// The OKX checksum: signed CRC32 of `bid_px:bid_sz:ask_px:ask_sz:…` over the top 25 levels
/// (best first; when one side runs out the other continues alone), of the exact strings.
pub fn okx_checksum(bids: &[(String, String)], asks: &[(String, String)]) -> i32 {
    let mut s = String::with_capacity(50 * 32);
    for i in 0..25 {
        for side in [bids, asks] {
            if let Some((p, q)) = side.get(i) {
                if !s.is_empty() {
                    s.push(':');
                }
                s.push_str(p);
                s.push(':');
                s.push_str(q);
            }
        }
    }
    crc32fast::hash(s.as_bytes()) as i32
}

// ---------------------------------------------------------------------------------------------
// Shared state

enum OkxOut {
    Text(Arc<str>),
    Binary(Vec<u8>),
    Disconnect(Disconnect),
    /// The 64008 notice, then close after `shutdown_grace`.
    Notice,
}

struct OkxClient {
    id: u64,
    streams: Arc<Mutex<BTreeSet<String>>>,
    tx: smol::channel::Sender<OkxOut>,
    overflow: Arc<AtomicBool>,
    silenced: Arc<AtomicBool>,
}

/// Queues `o`; a full queue marks the client as a slow consumer instead.
fn push(tx: &smol::channel::Sender<OkxOut>, overflow: &AtomicBool, o: OkxOut, stats: &OkxStats) {
    if let Err(smol::channel::TrySendError::Full(_)) = tx.try_send(o)
        && !overflow.swap(true, Ordering::SeqCst)
    {
        stats.slow_consumer_drops.fetch_add(1, Ordering::SeqCst);
    }
}

impl OkxClient {
    fn push(&self, o: OkxOut, stats: &OkxStats) {
        push(&self.tx, &self.overflow, o, stats);
    }
}

struct Faults {
    stale_snapshots: u32,
    rest: VecDeque<u16>,
    /// Every new WebSocket gets a 64008 notice right after its handshake.
    notice_on_connect: bool,
    /// Every new WebSocket freezes right after its handshake: nothing is read or sent (a
    /// venue process that hangs while its kernel still accepts bytes, into a 4 KiB buffer).
    freeze_on_connect: bool,
}

struct OkxShared {
    opts: OkxOptions,
    stats: OkxStats,
    market: Mutex<OkxMarket>,
    /// Instrument id → is a swap (fixed at start; read without the market lock).
    inst_ids: BTreeMap<String, bool>,
    clients: Mutex<Vec<OkxClient>>,
    faults: Mutex<Faults>,
    /// WebSocket TCP connections (refused upgrades included) and REST ones.
    ws_open: Arc<OpenCount>,
    rest_open: Arc<OpenCount>,
    rest_paths: Mutex<HashMap<String, u64>>,
    /// Upgrade requests in the last second.
    connects: Mutex<VecDeque<Instant>>,
    /// Accepted rubik / books requests in the last 2 s.
    rubik: Mutex<VecDeque<Instant>>,
    books_window: Mutex<VecDeque<Instant>>,
    books_responses: AtomicU64,
    next_client: AtomicU64,
    /// Wakes frozen connections (`freeze_on_connect(false)`).
    thaw: event_listener::Event,
    frozen: AtomicU64,
}

/// Drops entries older than `span`; true (and nothing recorded) when `max` remain, else
/// records `now`.
fn over_limit(
    w: &Mutex<VecDeque<Instant>>,
    span: Duration,
    max: usize,
    record_refused: bool,
) -> bool {
    let now = Instant::now();
    let mut w = lock(w);
    while w.front().is_some_and(|t| now.duration_since(*t) >= span) {
        w.pop_front();
    }
    let over = w.len() >= max;
    if !over || record_refused {
        w.push_back(now);
    }
    over
}

/// A JSON string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

// ---------------------------------------------------------------------------------------------
// The simulator

/// A running OKX simulator. Dropping it stops its thread, closes every socket and removes the
/// CA file.
pub struct OkxSim {
    shared: Arc<OkxShared>,
    ws_addr: SocketAddr,
    rest_addr: SocketAddr,
    ca_path: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
    stop_tx: smol::channel::Sender<()>,
}

fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind a loopback port")
}

impl OkxSim {
    /// Starts the simulator on its own thread; it is serving when this returns.
    pub fn start(opts: OkxOptions) -> OkxSim {
        let (tls, ca_pem) = make_tls();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let ca_path = std::env::temp_dir().join(format!(
            "marketbox-okx-sim-ca-{}-{}-{}.pem",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst),
            fastrand::u32(..)
        ));
        std::fs::write(&ca_path, ca_pem).expect("write the CA file");
        let market = new_market(&opts);
        let inst_ids = market
            .insts
            .iter()
            .map(|(k, v)| (k.clone(), v.swap))
            .collect();
        let shared = Arc::new(OkxShared {
            stats: OkxStats::default(),
            market: Mutex::new(market),
            inst_ids,
            clients: Mutex::new(Vec::new()),
            faults: Mutex::new(Faults {
                stale_snapshots: 0,
                rest: VecDeque::new(),
                notice_on_connect: false,
                freeze_on_connect: false,
            }),
            ws_open: Arc::default(),
            rest_open: Arc::default(),
            rest_paths: Mutex::new(HashMap::new()),
            connects: Mutex::new(VecDeque::new()),
            rubik: Mutex::new(VecDeque::new()),
            books_window: Mutex::new(VecDeque::new()),
            books_responses: AtomicU64::new(0),
            next_client: AtomicU64::new(1),
            thaw: event_listener::Event::new(),
            frozen: AtomicU64::new(0),
            opts,
        });
        let (ws_l, rest_l) = (bind(), bind());
        if let Some(bytes) = shared.opts.recv_buffer {
            let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&ws_l, bytes);
        }
        let ws_addr = ws_l.local_addr().expect("local addr");
        let rest_addr = rest_l.local_addr().expect("local addr");
        let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("okx-sim".into())
            .spawn(move || {
                let ex = Arc::new(Executor::new());
                let weak = Arc::downgrade(&ex);
                let acceptor = TlsAcceptor::from(tls);
                let ws_l = Async::new(ws_l).expect("async listener");
                let rest_l = Async::new(rest_l).expect("async listener");
                ex.spawn(run_market(sh.clone())).detach();
                ex.spawn(accept_ws(weak.clone(), sh.clone(), ws_l, acceptor.clone()))
                    .detach();
                ex.spawn(accept_rest(weak, sh.clone(), rest_l, acceptor))
                    .detach();
                smol::block_on(ex.run(async {
                    let _ = stop_rx.recv().await;
                }));
                drop(ex);
            })
            .expect("simulator thread");
        OkxSim {
            shared,
            ws_addr,
            rest_addr,
            ca_path,
            thread: Some(thread),
            stop_tx,
        }
    }

    /// The CA certificate (PEM) that signed the simulator's `localhost` certificate.
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_path
    }
    /// `wss://localhost:PORT/ws/v5/public`.
    pub fn ws_url(&self) -> String {
        format!("wss://localhost:{}{WS_PATH}", self.ws_addr.port())
    }
    /// The REST host, `https://localhost:PORT`.
    pub fn rest(&self) -> String {
        format!("https://localhost:{}", self.rest_addr.port())
    }

    pub fn stats(&self) -> &OkxStats {
        &self.shared.stats
    }
    fn get(a: &AtomicU64) -> u64 {
        a.load(Ordering::SeqCst)
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
    /// Appends every open-WebSocket count since the previous call (one per accept and close,
    /// in order; the last 65536 kept), then the current count.
    pub fn sample_open_ws_into(&self, out: &mut Vec<usize>) {
        self.shared.ws_open.sample_into(out);
    }
    pub fn connect_rate_violations(&self) -> u64 {
        Self::get(&self.shared.stats.connect_rate_violations)
    }
    pub fn idle_closes(&self) -> u64 {
        Self::get(&self.shared.stats.idle_closes)
    }
    /// Text `ping`s received.
    pub fn pings(&self) -> u64 {
        Self::get(&self.shared.stats.pings)
    }
    pub fn subscribe_requests(&self) -> u64 {
        Self::get(&self.shared.stats.subscribe_requests)
    }
    pub fn subscribe_limit_hits(&self) -> u64 {
        Self::get(&self.shared.stats.subscribe_limit_hits)
    }
    pub fn error_events(&self) -> u64 {
        Self::get(&self.shared.stats.error_events)
    }
    pub fn open_rest(&self) -> usize {
        self.shared.rest_open.open()
    }
    pub fn max_open_rest(&self) -> usize {
        self.shared.rest_open.max()
    }
    pub fn rest_requests(&self) -> u64 {
        Self::get(&self.shared.stats.rest_requests)
    }
    /// Requests whose path is exactly `path` (`/api/v5/market/books`), refused ones included.
    pub fn rest_requests_to(&self, path: &str) -> u64 {
        lock(&self.shared.rest_paths)
            .get(path)
            .copied()
            .unwrap_or(0)
    }
    pub fn rubik_limit_hits(&self) -> u64 {
        Self::get(&self.shared.stats.rubik_limit_hits)
    }
    pub fn books_limit_hits(&self) -> u64 {
        Self::get(&self.shared.stats.books_limit_hits)
    }
    /// WebSocket `books` snapshots sent.
    pub fn snapshots_sent(&self) -> u64 {
        Self::get(&self.shared.stats.snapshots_sent)
    }

    /// The channels of every open connection (one sorted list of `channel:instId` /
    /// `liquidation-orders:SWAP` per connection, in connection order).
    pub fn subscriptions(&self) -> Vec<Vec<String>> {
        lock(&self.shared.clients)
            .iter()
            .map(|c| lock(&c.streams).iter().cloned().collect())
            .collect()
    }

    /// The true top `depth` levels right after the diff whose wire `seqId` is `seq_id` (or the
    /// initial book), as the venue writes them, best first; `None` for an id the instrument
    /// never published (heartbeats create none) or one older than the kept history.
    pub fn true_book(&self, inst_id: &str, seq_id: i64, depth: usize) -> Option<TextBook> {
        let mut m = lock(&self.shared.market);
        let st = m.insts.get_mut(inst_id)?;
        let ids: Vec<u64> = st.book_ids(seq_id).collect();
        for id in ids {
            if let Some(s) = st.book.at(id, depth) {
                return Some((st.text(&s.bids), st.text(&s.asks)));
            }
        }
        None
    }

    /// The wire `seqId` of the last diff applied (sent or not).
    pub fn last_seq_id(&self, inst_id: &str) -> Option<i64> {
        let m = lock(&self.shared.market);
        let st = m.insts.get(inst_id)?;
        Some(st.wire(st.book.last_id()))
    }

    /// Ends (or silences) every open WebSocket.
    pub fn disconnect_all(&self, how: Disconnect) {
        for c in lock(&self.shared.clients).iter() {
            c.push(OkxOut::Disconnect(how), &self.shared.stats);
        }
    }

    fn with_inst(&self, inst_id: &str, f: impl FnOnce(&mut Inst)) {
        if let Some(st) = lock(&self.shared.market).insts.get_mut(inst_id) {
            f(st);
        }
    }

    /// The next diff of `inst_id` is applied to the true book but not sent.
    pub fn inject_gap(&self, inst_id: &str) {
        self.with_inst(inst_id, |s| s.gaps += 1);
    }

    /// The next diff of `inst_id` is sent with one level's size one lot larger than the truth
    /// (a level that is in the top 25 afterwards), while its `checksum` is the true book's.
    pub fn corrupt_next(&self, inst_id: &str) {
        self.with_inst(inst_id, |s| s.corrupt += 1);
    }

    /// The next diff of `inst_id` starts a new, far lower sequence: its `prevSeqId` is the old
    /// last `seqId`, its `seqId` is lower; later diffs chain from there.
    pub fn sequence_reset(&self, inst_id: &str) {
        self.with_inst(inst_id, |s| s.resets += 1);
    }

    /// `{"event":"notice","code":"64008",…}` to every client; each connection is closed
    /// `shutdown_grace` later.
    pub fn notice_restart(&self) {
        for c in lock(&self.shared.clients).iter() {
            c.push(OkxOut::Notice, &self.shared.stats);
        }
    }

    /// Every WebSocket from now on gets the 64008 notice as soon as it is connected (and is
    /// closed `shutdown_grace` later): a venue that announces a restart on every connect.
    pub fn notice_on_connect(&self, on: bool) {
        lock(&self.shared.faults).notice_on_connect = on;
    }

    /// New WebSockets freeze after their handshake (`on`), or frozen ones wake up and wait for
    /// their client to leave (`off`).
    pub fn freeze_on_connect(&self, on: bool) {
        lock(&self.shared.faults).freeze_on_connect = on;
        if !on {
            self.shared.thaw.notify(usize::MAX);
        }
    }

    /// WebSockets frozen right now.
    pub fn frozen(&self) -> usize {
        self.shared.frozen.load(Ordering::SeqCst) as usize
    }

    /// Sends `text` as one frame, exactly as given, to every client (a hostile venue's frame:
    /// missing sequence fields, impossible ids, crossed or negative levels).
    pub fn send_raw(&self, text: &str) {
        let text: Arc<str> = text.into();
        for c in lock(&self.shared.clients).iter() {
            c.push(OkxOut::Text(text.clone()), &self.shared.stats);
        }
    }

    /// Sends the frame `make(last wire seqId)` to every client subscribed to `inst_id`'s
    /// books, right after the last update sent and before the next (the market is held while
    /// it is queued): a hostile update that claims to continue the chain.
    pub fn send_after_last_update(&self, inst_id: &str, make: impl FnOnce(i64) -> String) {
        let market = lock(&self.shared.market);
        let Some(st) = market.insts.get(inst_id) else {
            return;
        };
        let text: Arc<str> = make(st.wire(st.book.last_id())).into();
        let key = format!("books:{inst_id}");
        for c in lock(&self.shared.clients)
            .iter()
            .filter(|c| lock(&c.streams).contains(&key))
        {
            c.push(OkxOut::Text(text.clone()), &self.shared.stats);
        }
        drop(market);
    }

    /// Sends one bad frame of `kind` to every client.
    pub fn send_malformed(&self, kind: OkxMalformed) {
        send_malformed(&self.shared, kind);
    }

    /// The next `n` REST requests (any path) are answered with HTTP `status` and an OKX error
    /// body (429: `{"msg":"Too Many Requests","code":"50011"}`).
    pub fn rest_fault(&self, status: u16, n: usize) {
        let mut f = lock(&self.shared.faults);
        for _ in 0..n {
            f.rest.push_back(status);
        }
    }

    /// The next `n` REST books snapshots are `stale_snapshot_lag` diffs old.
    pub fn stale_snapshots(&self, n: u32) {
        lock(&self.shared.faults).stale_snapshots += n;
    }
}

impl Drop for OkxSim {
    fn drop(&mut self) {
        let _ = self.stop_tx.try_send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.ca_path);
    }
}

// ---------------------------------------------------------------------------------------------
// Connections

async fn accept_ws(
    ex: Weak<Executor<'static>>,
    sh: Arc<OkxShared>,
    l: Async<TcpListener>,
    acceptor: TlsAcceptor,
) {
    loop {
        let Ok((tcp, _)) = l.accept().await else {
            Timer::after(Duration::from_millis(10)).await;
            continue;
        };
        // Counted at accept, before anything else can happen, so the peak is exact.
        let guard = sh.ws_open.opened();
        let Some(ex) = ex.upgrade() else { return };
        ex.spawn(serve_ws(sh.clone(), guard, tcp, acceptor.clone()))
            .detach();
    }
}

/// Checks the upgrade request: the connection rate, then the path.
struct Upgrade {
    sh: Arc<OkxShared>,
    ok: Arc<AtomicBool>,
}

impl Callback for Upgrade {
    fn on_request(self, req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
        let refuse = |status: u16, msg: &str| {
            let mut r = ErrorResponse::new(Some(msg.to_owned()));
            *r.status_mut() =
                http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
            r
        };
        let sh = &self.sh;
        if over_limit(
            &sh.connects,
            Duration::from_secs(1),
            sh.opts.max_connects_per_sec,
            true,
        ) {
            sh.stats
                .connect_rate_violations
                .fetch_add(1, Ordering::SeqCst);
            return Err(refuse(429, "Too Many Requests"));
        }
        if req.uri().path() != WS_PATH {
            return Err(refuse(404, "Not Found"));
        }
        self.ok.store(true, Ordering::SeqCst);
        Ok(resp)
    }
}

/// Removes the client from the registry when the connection ends.
struct Registered {
    sh: Arc<OkxShared>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.sh.clients).retain(|c| c.id != self.id);
    }
}

enum End {
    Gone,
    Reset,
}

async fn serve_ws(
    sh: Arc<OkxShared>,
    _open: OpenGuard,
    tcp: Async<TcpStream>,
    acceptor: TlsAcceptor,
) {
    let _ = tcp.get_ref().set_nodelay(true);
    let fd = raw_fd(&tcp);
    let fail = || {
        sh.stats
            .ws_handshake_failures
            .fetch_add(1, Ordering::SeqCst);
    };
    let Some(Ok(tls)) = timeout(Duration::from_secs(5), acceptor.accept(tcp)).await else {
        fail();
        return;
    };
    let ok = Arc::new(AtomicBool::new(false));
    let check = Upgrade {
        sh: sh.clone(),
        ok: ok.clone(),
    };
    let mut cfg = WebSocketConfig::default();
    // Oversized requests get an error event (`max_request_bytes`), so let them through to it.
    cfg.max_message_size = Some(1 << 20);
    cfg.max_frame_size = Some(1 << 20);
    let ws = timeout(
        Duration::from_secs(5),
        async_tungstenite::accept_hdr_async_with_config(tls, check, Some(cfg)),
    )
    .await;
    let Some(Ok(mut ws)) = ws.filter(|_| ok.load(Ordering::SeqCst)) else {
        fail();
        return;
    };
    if lock(&sh.faults).freeze_on_connect {
        super::shrink_recv_buffer(fd);
        sh.frozen.fetch_add(1, Ordering::SeqCst);
        let thawed = sh.thaw.listen();
        if lock(&sh.faults).freeze_on_connect {
            thawed.await;
        }
        sh.frozen.fetch_sub(1, Ordering::SeqCst);
        // Read (and drop) until the client is gone.
        let mut scratch = vec![0u8; 8192];
        while let Ok(n) = ws.get_mut().read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
        return;
    }
    let (tx, rx) = smol::channel::bounded(sh.opts.client_queue.max(1));
    let id = sh.next_client.fetch_add(1, Ordering::SeqCst);
    let mut conn = Conn {
        fd,
        sh: sh.clone(),
        conn_id: format!("{:08x}", fastrand::u32(..)),
        streams: Arc::new(Mutex::new(BTreeSet::new())),
        tx: tx.clone(),
        overflow: Arc::new(AtomicBool::new(false)),
        silenced: Arc::new(AtomicBool::new(false)),
        requests: VecDeque::new(),
    };
    lock(&sh.clients).push(OkxClient {
        id,
        streams: conn.streams.clone(),
        tx,
        overflow: conn.overflow.clone(),
        silenced: conn.silenced.clone(),
    });
    let registered = Registered { sh: sh.clone(), id };
    let end = conn.run(&mut ws, rx).await;
    drop(registered);
    if let End::Reset = end {
        abort_on_close(fd);
    }
}

struct Conn {
    fd: i32,
    sh: Arc<OkxShared>,
    conn_id: String,
    streams: Arc<Mutex<BTreeSet<String>>>,
    /// The client's own queue: replies go through it so they stay ordered with the data.
    tx: smol::channel::Sender<OkxOut>,
    overflow: Arc<AtomicBool>,
    silenced: Arc<AtomicBool>,
    /// Accepted subscribe/unsubscribe requests in the last hour.
    requests: VecDeque<Instant>,
}

enum Ev {
    Out(Option<OkxOut>),
    In(Option<Result<Message, async_tungstenite::tungstenite::Error>>),
    Raw(std::io::Result<usize>),
    Timer,
}

/// A validated subscription argument.
struct Arg {
    /// `books:BTC-USDT`, `liquidation-orders:SWAP`.
    key: String,
    /// The `arg` object echoed in acks.
    json: String,
    /// Set for `books`: the instrument.
    books: Option<String>,
}

impl Conn {
    async fn run<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        rx: smol::channel::Receiver<OkxOut>,
    ) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let sh = self.sh.clone();
        let opts = &sh.opts;
        // The venue breaks a connection when it has pushed nothing for 30 s (no subscription,
        // or a quiet one): a client keeps a quiet connection alive with `ping`, whose `pong`
        // is a push. Busy subscriptions need no pings.
        let mut last_push = Instant::now();
        let mut shutdown_at: Option<Instant> = None;
        let mut silenced = false;
        let mut not_reading = false;
        let mut timer = Timer::never();
        if lock(&sh.faults).notice_on_connect {
            let _ = self.tx.try_send(OkxOut::Notice);
        }
        let mut scratch = vec![0u8; 8192];
        loop {
            if self.overflow.load(Ordering::SeqCst) {
                close(
                    ws,
                    CloseCode::from(4005),
                    "Buffer is full, cannot write data",
                )
                .await;
                return End::Gone;
            }
            let idle_at = last_push + opts.idle_timeout;
            let deadline = shutdown_at.map_or(idle_at, |s| s.min(idle_at));
            let ev = if deadline <= Instant::now() {
                Ev::Timer
            } else {
                timer.set_at(deadline);
                let tick = async {
                    (&mut timer).await;
                    Ev::Timer
                };
                let out = async { Ev::Out(rx.recv().await.ok()) };
                if not_reading {
                    out.or(tick).await
                } else if silenced {
                    // Nothing is sent, not even pongs: read raw (decrypted) bytes only to see
                    // that the client is alive or gone.
                    let raw = async { Ev::Raw(ws.get_mut().read(&mut scratch).await) };
                    raw.or(out).or(tick).await
                } else {
                    let inc = async { Ev::In(ws.next().await) };
                    inc.or(out).or(tick).await
                }
            };
            match ev {
                Ev::Timer => {
                    let now = Instant::now();
                    if now >= idle_at {
                        sh.stats.idle_closes.fetch_add(1, Ordering::SeqCst);
                        if !silenced {
                            close(ws, CloseCode::from(4004), "No data received in 30s").await;
                        }
                        return End::Gone;
                    }
                    if shutdown_at.is_some_and(|t| now >= t) {
                        if !silenced {
                            close(ws, CloseCode::Away, "service upgrade").await;
                        }
                        return End::Gone;
                    }
                }
                Ev::Raw(Ok(0)) | Ev::Raw(Err(_)) => return End::Gone,
                Ev::Raw(Ok(_)) => {}
                Ev::In(None) | Ev::In(Some(Err(_))) => return End::Gone,
                Ev::In(Some(Ok(msg))) => {
                    match msg {
                        Message::Text(t) if t.as_str() == "ping" => {
                            sh.stats.pings.fetch_add(1, Ordering::SeqCst);
                            if ws.send(Message::text("pong")).await.is_err() {
                                return End::Gone;
                            }
                            last_push = Instant::now();
                        }
                        Message::Text(t) => {
                            sh.stats.subscribe_requests.fetch_add(1, Ordering::SeqCst);
                            self.request(t.as_str());
                        }
                        Message::Close(_) => {
                            // Flushes tungstenite's close reply.
                            timeout(Duration::from_millis(500), ws.next()).await;
                            return End::Gone;
                        }
                        // Protocol pings are answered by tungstenite; binary is ignored.
                        _ => {}
                    }
                }
                Ev::Out(None) => return End::Gone,
                Ev::Out(Some(o)) => match o {
                    OkxOut::Text(t) => {
                        if !silenced {
                            if ws.send(Message::text(&*t)).await.is_err() {
                                return End::Gone;
                            }
                            last_push = Instant::now();
                        }
                    }
                    OkxOut::Binary(b) => {
                        if !silenced {
                            if ws.send(Message::binary(b)).await.is_err() {
                                return End::Gone;
                            }
                            last_push = Instant::now();
                        }
                    }
                    OkxOut::Disconnect(Disconnect::Close) => {
                        close(ws, CloseCode::Normal, "").await;
                        return End::Gone;
                    }
                    OkxOut::Disconnect(Disconnect::Reset) => return End::Reset,
                    // OKX sends no pings of its own: "pings only" is silence here.
                    OkxOut::Disconnect(Disconnect::Silence | Disconnect::PingsOnly) => {
                        silenced = true;
                        self.silenced.store(true, Ordering::SeqCst);
                    }
                    OkxOut::Disconnect(Disconnect::StopReading) => {
                        not_reading = true;
                        super::shrink_recv_buffer(self.fd);
                    }
                    OkxOut::Notice => {
                        let text = format!(
                            "{{\"event\":\"notice\",\"code\":\"64008\",\"msg\":\"The connection will soon be closed for a service upgrade. Please reconnect.\",\"connId\":\"{}\"}}",
                            self.conn_id
                        );
                        if !silenced && ws.send(Message::text(text)).await.is_err() {
                            return End::Gone;
                        }
                        shutdown_at.get_or_insert(Instant::now() + opts.shutdown_grace);
                    }
                },
            }
        }
    }

    fn queue(&self, text: String) {
        push(
            &self.tx,
            &self.overflow,
            OkxOut::Text(Arc::from(text)),
            &self.sh.stats,
        );
    }

    fn id_prefix(id: Option<&Value>) -> String {
        id.map_or(String::new(), |id| format!("\"id\":{id},"))
    }

    fn error(&self, id: Option<&Value>, code: &str, msg: &str) {
        self.sh.stats.error_events.fetch_add(1, Ordering::SeqCst);
        self.queue(format!(
            "{{{}\"event\":\"error\",\"code\":\"{code}\",\"msg\":{},\"connId\":\"{}\"}}",
            Self::id_prefix(id),
            js(msg),
            self.conn_id
        ));
    }

    /// Answers `subscribe`/`unsubscribe` (acks, snapshots, errors), through the own queue.
    fn request(&mut self, text: &str) {
        let sh = self.sh.clone();
        let short = |t: &str| t.chars().take(200).collect::<String>();
        if text.len() > sh.opts.max_request_bytes {
            self.error(
                None,
                "60012",
                &format!(
                    "Invalid request: the request exceeds {} bytes",
                    sh.opts.max_request_bytes
                ),
            );
            return;
        }
        let v: Value = match serde_json::from_str::<Value>(text) {
            Ok(v) if v.is_object() => v,
            _ => {
                self.error(None, "60012", &format!("Invalid request: {}", short(text)));
                return;
            }
        };
        let id = v.get("id").filter(|i| !i.is_null());
        let Some(op) = v.get("op").and_then(Value::as_str) else {
            self.error(id, "60012", &format!("Invalid request: {}", short(text)));
            return;
        };
        if op != "subscribe" && op != "unsubscribe" {
            self.error(id, "60019", &format!("Invalid op: {op}"));
            return;
        }
        let Some(args) = v
            .get("args")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
        else {
            self.error(id, "60012", &format!("Invalid request: {}", short(text)));
            return;
        };
        let now = Instant::now();
        while self
            .requests
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(3600))
        {
            self.requests.pop_front();
        }
        if self.requests.len() >= sh.opts.subscribes_per_hour {
            sh.stats.subscribe_limit_hits.fetch_add(1, Ordering::SeqCst);
            self.error(id, "60014", "Requests too frequent.");
            return;
        }
        self.requests.push_back(now);
        for arg in args {
            let a = match self.resolve(arg) {
                Ok(a) => a,
                Err((code, msg)) => {
                    self.error(id, code, &msg);
                    continue;
                }
            };
            let ack = format!(
                "{{{}\"event\":\"{op}\",\"arg\":{},\"connId\":\"{}\"}}",
                Self::id_prefix(id),
                a.json,
                self.conn_id
            );
            if op == "unsubscribe" {
                lock(&self.streams).remove(&a.key);
                self.queue(ack);
                continue;
            }
            match (&a.books, sh.opts.book_mode) {
                (Some(inst), BookMode::WsSnapshot) => {
                    // Under the market lock: no diff can be queued between the snapshot's
                    // state and the subscription taking effect.
                    let mut m = lock(&sh.market);
                    lock(&self.streams).insert(a.key);
                    self.queue(ack);
                    if let Some(st) = m.insts.get_mut(inst.as_str()) {
                        let snap = st.book.top(400);
                        let spec = st.book.spec();
                        let seq = st.wire(st.book.last_id());
                        let frame = books_frame(
                            inst,
                            "snapshot",
                            &levels_json(&spec, &snap.bids),
                            &levels_json(&spec, &snap.asks),
                            now_ms(),
                            st.checksum(sh.opts.checksum),
                            -1,
                            seq,
                        );
                        self.queue(frame);
                        sh.stats.snapshots_sent.fetch_add(1, Ordering::SeqCst);
                    }
                }
                _ => {
                    lock(&self.streams).insert(a.key);
                    self.queue(ack);
                }
            }
        }
    }

    fn resolve(&self, arg: &Value) -> Result<Arg, (&'static str, String)> {
        if !arg.is_object() {
            return Err(("60012", format!("Invalid request: {arg}")));
        }
        let s = |k: &str| arg.get(k).and_then(Value::as_str).unwrap_or("");
        let ch = s("channel");
        match ch {
            "books" | "trades" | "funding-rate" | "open-interest" => {
                let inst = s("instId");
                let ok = self
                    .sh
                    .inst_ids
                    .get(inst)
                    .is_some_and(|swap| *swap || matches!(ch, "books" | "trades"));
                if !ok {
                    return Err((
                        "60018",
                        format!("Wrong URL or channel:{ch},instId:{inst} doesn't exist"),
                    ));
                }
                Ok(Arg {
                    key: format!("{ch}:{inst}"),
                    json: format!("{{\"channel\":\"{ch}\",\"instId\":\"{inst}\"}}"),
                    books: (ch == "books").then(|| inst.to_owned()),
                })
            }
            "liquidation-orders" if s("instType") == "SWAP" => Ok(Arg {
                key: "liquidation-orders:SWAP".into(),
                json: "{\"channel\":\"liquidation-orders\",\"instType\":\"SWAP\"}".into(),
                books: None,
            }),
            "liquidation-orders" => Err((
                "60018",
                format!(
                    "Wrong URL or channel:{ch},instType:{} doesn't exist",
                    s("instType")
                ),
            )),
            _ => Err((
                "60018",
                format!(
                    "Wrong URL or channel:{ch},instId:{} doesn't exist",
                    s("instId")
                ),
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Frames and the market clock

/// `[["px","sz","0","orders"],…]` (a removal is `["px","0","0","0"]`).
fn levels_json(spec: &Spec, levels: &[(i64, Level)]) -> String {
    let mut s = String::with_capacity(levels.len() * 40 + 2);
    s.push('[');
    for (i, (p, l)) in levels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str("[\"");
        s.push_str(&spec.price(*p));
        s.push_str("\",\"");
        s.push_str(&spec.qty(l.qty));
        s.push_str("\",\"0\",\"");
        s.push_str(&l.orders.to_string());
        s.push_str("\"]");
    }
    s.push(']');
    s
}

#[allow(clippy::too_many_arguments)]
fn books_frame(
    inst: &str,
    action: &str,
    bids: &str,
    asks: &str,
    ts: u64,
    checksum: i32,
    prev: i64,
    seq: i64,
) -> String {
    format!(
        "{{\"arg\":{{\"channel\":\"books\",\"instId\":\"{inst}\"}},\"action\":\"{action}\",\"data\":[{{\"asks\":{asks},\"bids\":{bids},\"ts\":\"{ts}\",\"checksum\":{checksum},\"prevSeqId\":{prev},\"seqId\":{seq}}}]}}"
    )
}

fn trade_frame(
    inst: &str,
    trade_id: u64,
    px: &str,
    sz: &str,
    side: &str,
    ts: u64,
    seq: i64,
) -> String {
    format!(
        "{{\"arg\":{{\"channel\":\"trades\",\"instId\":\"{inst}\"}},\"data\":[{{\"instId\":\"{inst}\",\"tradeId\":\"{trade_id}\",\"px\":\"{px}\",\"sz\":\"{sz}\",\"side\":\"{side}\",\"ts\":\"{ts}\",\"count\":\"1\",\"seqId\":{seq}}}]}}"
    )
}

/// Units of 1e-16, written with all 16 decimals like the venue (`"0.0001534702159002"`).
fn rate16(v: i64) -> String {
    fmt_units(v, 16, NumStyle::Fixed)
}

fn funding_frame(inst: &str, st: &Inst, ts: u64) -> String {
    const EIGHT_H: u64 = 8 * 3_600_000;
    let funding_time = (ts / EIGHT_H + 1) * EIGHT_H;
    let premium = st.funding * 2 - 1_000_000_000_000;
    let impact = if st.family.starts_with("BTC") {
        "20000.0000000000000000"
    } else {
        "10000.0000000000000000"
    };
    format!(
        "{{\"arg\":{{\"channel\":\"funding-rate\",\"instId\":\"{inst}\"}},\"data\":[{{\"formulaType\":\"withRate\",\"fundingRate\":\"{}\",\"fundingTime\":\"{funding_time}\",\"impactValue\":\"{impact}\",\"instId\":\"{inst}\",\"instType\":\"SWAP\",\"interestRate\":\"0.0001000000000000\",\"maxFundingRate\":\"0.00375\",\"method\":\"current_period\",\"minFundingRate\":\"-0.00375\",\"nextFundingRate\":\"\",\"nextFundingTime\":\"{}\",\"premium\":\"{}\",\"prevFundingTime\":\"{}\",\"settFundingRate\":\"{}\",\"settState\":\"settled\",\"ts\":\"{ts}\"}}]}}",
        rate16(st.funding),
        funding_time + EIGHT_H,
        rate16(premium),
        funding_time - EIGHT_H,
        rate16(st.settled),
    )
}

fn open_interest_frame(inst: &str, st: &Inst, ts: u64) -> String {
    let spec = st.book.spec();
    let ccy = st.oi * st.ct_val;
    let usd = i128::from(ccy) * i128::from(st.book.mid());
    let usd_dec = st.ct_dec + spec.price_decimals;
    // Trimmed like the venue; i128 keeps large books exact.
    let p = 10i128.pow(usd_dec);
    let mut usd_s = format!("{}.{:0w$}", usd / p, usd % p, w = usd_dec as usize);
    while usd_s.ends_with('0') {
        usd_s.pop();
    }
    if usd_s.ends_with('.') {
        usd_s.pop();
    }
    format!(
        "{{\"arg\":{{\"channel\":\"open-interest\",\"instId\":\"{inst}\"}},\"data\":[{{\"instId\":\"{inst}\",\"instType\":\"SWAP\",\"oi\":\"{}\",\"oiCcy\":\"{}\",\"oiUsd\":\"{usd_s}\",\"ts\":\"{ts}\"}}]}}",
        st.oi,
        fmt_units(ccy, st.ct_dec, NumStyle::Trimmed),
    )
}

fn liquidation_frame(
    inst: &str,
    family: &str,
    bk_px: &str,
    sz: &str,
    long: bool,
    ts: u64,
) -> String {
    // A liquidated long is sold; a liquidated short is bought.
    let (pos, side) = if long {
        ("long", "sell")
    } else {
        ("short", "buy")
    };
    format!(
        "{{\"arg\":{{\"channel\":\"liquidation-orders\",\"instType\":\"SWAP\"}},\"data\":[{{\"details\":[{{\"bkLoss\":\"0\",\"bkPx\":\"{bk_px}\",\"ccy\":\"\",\"posSide\":\"{pos}\",\"side\":\"{side}\",\"sz\":\"{sz}\",\"ts\":\"{}\"}}],\"instFamily\":\"{family}\",\"instId\":\"{inst}\",\"instType\":\"SWAP\",\"uly\":\"{family}\"}}]}}",
        ts.saturating_sub(3)
    )
}

/// Makes the diff misstate one level that is in the true top 25 afterwards: one lot more.
fn corrupt_levels(book: &BookProcess, bids: &mut Vec<(i64, Level)>, asks: &mut [(i64, Level)]) {
    let lot = book.spec().lot;
    let top = book.top(25);
    for (levels, truth) in [(&mut bids[..], &top.bids), (&mut *asks, &top.asks)] {
        if let Some(l) = levels
            .iter_mut()
            .find(|(p, l)| l.qty > 0 && truth.iter().any(|(tp, _)| tp == p))
        {
            l.1.qty += lot;
            return;
        }
    }
    // Nothing near the top changed: restate the best bid with the wrong size.
    if let Some((p, mut l)) = book.best_bid() {
        l.qty += lot;
        bids.insert(0, (p, l));
    }
}

type Event = (Arc<str>, Arc<str>);

#[allow(clippy::too_many_arguments)]
fn inst_tick(
    opts: &OkxOptions,
    stats: &OkxStats,
    id: &str,
    st: &mut Inst,
    rng: &mut fastrand::Rng,
    ts: u64,
    due: (bool, bool, bool),
    out: &mut Vec<(Event, bool)>,
) {
    let (funding_due, oi_due, liq_due) = due;
    let books_key: Arc<str> = Arc::from(format!("books:{id}"));
    let spec = st.book.spec();
    if rng.u8(..100) < opts.heartbeat_chance_pct {
        let s = st.wire(st.book.last_id());
        let frame = books_frame(
            id,
            "update",
            "[]",
            "[]",
            ts,
            st.checksum(opts.checksum),
            s,
            s,
        );
        out.push(((books_key, Arc::from(frame)), false));
        stats.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
    } else {
        let reset = st.resets > 0;
        if reset {
            st.resets -= 1;
        }
        let d = st.book.step(ts).clone();
        let prev = st.wire(d.prev_last_id);
        if reset {
            let cur = *st.epochs.last().expect("an epoch");
            let start = ((cur.book_start as i64 - cur.offset) / 8).max(1_000);
            st.epochs.push(Epoch {
                book_start: d.first_id,
                offset: d.first_id as i64 - start,
            });
        }
        let seq = st.wire(d.last_id);
        if st.gaps > 0 {
            // Applied to the true book, never sent: the chain breaks at the next frame.
            st.gaps -= 1;
        } else {
            let checksum = st.checksum(opts.checksum);
            let (mut bids, mut asks) = (d.bids, d.asks);
            if st.corrupt > 0 {
                st.corrupt -= 1;
                corrupt_levels(&st.book, &mut bids, &mut asks);
            }
            let frame = books_frame(
                id,
                "update",
                &levels_json(&spec, &bids),
                &levels_json(&spec, &asks),
                ts,
                checksum,
                prev,
                seq,
            );
            out.push(((books_key, Arc::from(frame)), true));
        }
    }
    if rng.u8(..100) < opts.trade_chance_pct {
        let key: Arc<str> = Arc::from(format!("trades:{id}"));
        for _ in 0..rng.usize(1..=3) {
            let Some(f) = st.book.fill() else { break };
            st.trade_id += 1;
            st.trade_seq += 1;
            let side = if f.buyer_is_maker { "sell" } else { "buy" };
            let frame = trade_frame(
                id,
                st.trade_id,
                &spec.price(f.price),
                &spec.qty(f.qty),
                side,
                ts,
                st.trade_seq,
            );
            out.push(((key.clone(), Arc::from(frame)), false));
        }
    }
    if !st.swap {
        return;
    }
    st.oi = (st.oi + rng.i64(-300..=300)).max(10_000);
    if funding_due {
        st.funding = (st.funding + rng.i64(-5_000_000_000..=5_000_000_000))
            .clamp(-37_500_000_000_000, 37_500_000_000_000);
        let frame = funding_frame(id, st, ts);
        out.push((
            (Arc::from(format!("funding-rate:{id}")), Arc::from(frame)),
            false,
        ));
    }
    if oi_due {
        let frame = open_interest_frame(id, st, ts);
        out.push((
            (Arc::from(format!("open-interest:{id}")), Arc::from(frame)),
            false,
        ));
    }
    if liq_due && rng.u8(..100) < 70 {
        let long = rng.bool();
        let k = rng.i64(5..80) * spec.tick;
        let mid = st.book.mid();
        let px = if long { mid - k } else { mid + k };
        let sz = rng.i64(1..=spec.typical_lots.max(1)) * spec.lot;
        let frame = liquidation_frame(id, &st.family, &spec.price(px), &spec.qty(sz), long, ts);
        out.push((
            (Arc::from("liquidation-orders:SWAP"), Arc::from(frame)),
            false,
        ));
    }
}

fn broadcast(sh: &OkxShared, clients: &[OkxClient], events: &[(Event, bool)]) {
    for c in clients {
        if c.silenced.load(Ordering::Relaxed) || c.overflow.load(Ordering::Relaxed) {
            continue;
        }
        let subs = lock(&c.streams);
        for ((key, frame), update) in events {
            if subs.contains(&**key) {
                if *update {
                    sh.stats.updates_sent.fetch_add(1, Ordering::Relaxed);
                }
                c.push(OkxOut::Text(frame.clone()), &sh.stats);
            }
        }
    }
}

async fn run_market(sh: Arc<OkxShared>) {
    let opts = &sh.opts;
    let mut ticks = Timer::interval(opts.diff_interval);
    let start = Instant::now();
    let (mut next_funding, mut next_oi, mut next_liq) = (
        start + opts.funding_interval,
        start + opts.open_interest_interval,
        start + opts.liquidation_interval,
    );
    let mut events = Vec::new();
    loop {
        ticks.next().await;
        let now = Instant::now();
        let due = |next: &mut Instant, every: Duration| {
            let d = now >= *next;
            if d {
                *next = now + every;
            }
            d
        };
        let funding_due = due(&mut next_funding, opts.funding_interval);
        let oi_due = due(&mut next_oi, opts.open_interest_interval);
        let liq_due = due(&mut next_liq, opts.liquidation_interval);
        let ts = now_ms();
        let mut m = lock(&sh.market);
        let OkxMarket { insts, rng } = &mut *m;
        events.clear();
        for (id, st) in insts.iter_mut() {
            inst_tick(
                opts,
                &sh.stats,
                id,
                st,
                rng,
                ts,
                (funding_due, oi_due, liq_due),
                &mut events,
            );
        }
        if liq_due {
            // A swap nobody configured: a client must filter it out.
            let px = fmt_units(rng.i64(15_000..17_000), 5, NumStyle::Trimmed);
            let sz = rng.i64(1..5_000).to_string();
            let frame = liquidation_frame(OTHER_SWAP, "DOGE-USDT", &px, &sz, rng.bool(), ts);
            events.push((
                (Arc::from("liquidation-orders:SWAP"), Arc::from(frame)),
                false,
            ));
        }
        let clients = lock(&sh.clients);
        broadcast(&sh, &clients, &events);
    }
}

/// Replaces the first `0` with the letter `O` (`"4347O.1"`), or the last digit if none.
fn corrupt(s: &str) -> String {
    if s.contains('0') {
        s.replacen('0', "O", 1)
    } else {
        let mut t = s.to_owned();
        t.pop();
        t.push('O');
        t
    }
}

fn send_malformed(sh: &OkxShared, kind: OkxMalformed) {
    let m = lock(&sh.market);
    let clients = lock(&sh.clients);
    let ts = now_ms();
    for c in clients.iter() {
        let out = match kind {
            OkxMalformed::NotJson => OkxOut::Text(Arc::from(
                "{\"arg\":{\"channel\":\"books\",\"instId\":\"BTC-USDT\"},\"action\":\"update\",\"data\":[{\"asks\":[[\"4347",
            )),
            OkxMalformed::Binary => OkxOut::Binary(vec![
                0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03,
            ]),
            OkxMalformed::UnknownChannel => {
                let (id, st) = m.insts.iter().next().expect("an instrument");
                let spec = st.book.spec();
                let last = spec.price(st.book.mid());
                OkxOut::Text(Arc::from(format!(
                    "{{\"arg\":{{\"channel\":\"tickers\",\"instId\":\"{id}\"}},\"data\":[{{\"instType\":\"{}\",\"instId\":\"{id}\",\"last\":\"{last}\",\"lastSz\":\"1\",\"askPx\":\"{last}\",\"askSz\":\"1\",\"bidPx\":\"{last}\",\"bidSz\":\"1\",\"open24h\":\"{last}\",\"high24h\":\"{last}\",\"low24h\":\"{last}\",\"volCcy24h\":\"1000\",\"vol24h\":\"10\",\"sodUtc0\":\"{last}\",\"sodUtc8\":\"{last}\",\"ts\":\"{ts}\"}}]}}",
                    if st.swap { "SWAP" } else { "SPOT" }
                )))
            }
            OkxMalformed::BadDecimal => {
                let subs = lock(&c.streams);
                let inst = subs
                    .iter()
                    .find_map(|k| k.strip_prefix("trades:"))
                    .unwrap_or("BTC-USDT");
                let Some(st) = m.insts.get(inst).or_else(|| m.insts.values().next()) else {
                    continue;
                };
                let spec = st.book.spec();
                let px = corrupt(&spec.price(st.book.mid()));
                OkxOut::Text(Arc::from(trade_frame(
                    inst,
                    st.trade_id,
                    &px,
                    &spec.qty(spec.lot),
                    "buy",
                    ts,
                    st.trade_seq,
                )))
            }
        };
        if !c.silenced.load(Ordering::Relaxed) {
            c.push(out, &sh.stats);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// REST

struct Reply {
    status: u16,
    body: String,
}

fn ok_data(data: String) -> Reply {
    Reply {
        status: 200,
        body: format!("{{\"code\":\"0\",\"msg\":\"\",\"data\":{data}}}"),
    }
}

fn okx_error(status: u16, code: &str, msg: &str) -> Reply {
    Reply {
        status,
        body: format!("{{\"code\":\"{code}\",\"msg\":{},\"data\":[]}}", js(msg)),
    }
}

fn too_many() -> Reply {
    Reply {
        status: 429,
        body: "{\"msg\":\"Too Many Requests\",\"code\":\"50011\"}".into(),
    }
}

fn pct_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn param(q: &str, key: &str) -> Option<String> {
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (pct_decode(k) == key).then(|| pct_decode(v))
    })
}

const BOOKS_PATH: &str = "/api/v5/market/books";
const TOP_POSITION_PATH: &str =
    "/api/v5/rubik/stat/contracts/long-short-position-ratio-contract-top-trader";
const ALL_ACCOUNT_PATH: &str = "/api/v5/rubik/stat/contracts/long-short-account-ratio-contract";
const PERIODS: [(&str, u64); 9] = [
    ("5m", 300_000),
    ("15m", 900_000),
    ("30m", 1_800_000),
    ("1H", 3_600_000),
    ("2H", 7_200_000),
    ("4H", 14_400_000),
    ("6H", 21_600_000),
    ("12H", 43_200_000),
    ("1D", 86_400_000),
];

fn rest_answer(sh: &OkxShared, path: &str, query: &str) -> Reply {
    sh.stats.rest_requests.fetch_add(1, Ordering::SeqCst);
    *lock(&sh.rest_paths).entry(path.to_owned()).or_default() += 1;
    let fault = lock(&sh.faults).rest.pop_front();
    if let Some(status) = fault {
        return match status {
            429 => too_many(),
            500..=599 => Reply {
                status,
                body: "{\"msg\":\"Service temporarily unavailable. Please try again later.\",\"code\":\"50001\"}".into(),
            },
            _ => Reply {
                status,
                body: format!("{{\"msg\":\"HTTP {status}\",\"code\":\"50000\"}}"),
            },
        };
    }
    let two_s = Duration::from_secs(2);
    match path {
        BOOKS_PATH => {
            if over_limit(&sh.books_window, two_s, sh.opts.books_per_2s, false) {
                sh.stats.books_limit_hits.fetch_add(1, Ordering::SeqCst);
                return too_many();
            }
            books_answer(sh, query)
        }
        TOP_POSITION_PATH | ALL_ACCOUNT_PATH => {
            if over_limit(&sh.rubik, two_s, sh.opts.rubik_per_2s, false) {
                sh.stats.rubik_limit_hits.fetch_add(1, Ordering::SeqCst);
                return too_many();
            }
            rubik_answer(sh, path == TOP_POSITION_PATH, query)
        }
        _ => Reply {
            status: 404,
            body: "{\"msg\":\"Not Found\",\"code\":\"404\"}".into(),
        },
    }
}

fn books_answer(sh: &OkxShared, query: &str) -> Reply {
    let Some(inst) = param(query, "instId").filter(|s| !s.is_empty()) else {
        return okx_error(400, "50014", "Parameter instId can not be empty.");
    };
    let sz = match param(query, "sz") {
        None => 1,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n >= 1 => n.min(400),
            _ => return okx_error(400, "51000", "Parameter sz error"),
        },
    };
    let mut m = lock(&sh.market);
    let Some(st) = m.insts.get_mut(&inst) else {
        return okx_error(200, "51001", "Instrument ID does not exist");
    };
    let stale = {
        let mut f = lock(&sh.faults);
        let s = f.stale_snapshots > 0;
        if s {
            f.stale_snapshots -= 1;
        }
        s
    };
    let snap = if stale {
        st.book.lagged(sh.opts.stale_snapshot_lag, sz)
    } else {
        st.book.top(sz)
    };
    let spec = st.book.spec();
    let seq = st.wire(snap.id);
    // OKX REST writes most numbers as strings; a client must take either.
    let n = sh.books_responses.fetch_add(1, Ordering::SeqCst);
    let seq = if n % 2 == 0 {
        seq.to_string()
    } else {
        format!("\"{seq}\"")
    };
    ok_data(format!(
        "[{{\"asks\":{},\"bids\":{},\"ts\":\"{}\",\"seqId\":{seq}}}]",
        levels_json(&spec, &snap.asks),
        levels_json(&spec, &snap.bids),
        now_ms()
    ))
}

fn rubik_answer(sh: &OkxShared, top_position: bool, query: &str) -> Reply {
    let Some(inst) = param(query, "instId").filter(|s| !s.is_empty()) else {
        return okx_error(400, "50014", "Parameter instId can not be empty.");
    };
    if sh.inst_ids.get(&inst) != Some(&true) {
        return okx_error(200, "51001", "Instrument ID does not exist");
    }
    let period = param(query, "period").unwrap_or_else(|| "5m".into());
    let Some(&(_, ms)) = PERIODS.iter().find(|(p, _)| *p == period) else {
        return okx_error(400, "51000", "Parameter period error");
    };
    let limit = match param(query, "limit") {
        None => 100,
        Some(s) => match s.parse::<u64>() {
            Ok(n) if n >= 1 => n.min(100),
            _ => return okx_error(400, "51000", "Parameter limit error"),
        },
    };
    let latest = now_ms() / ms * ms;
    let salt: u64 = if top_position { 0x7470 } else { 0x6161 };
    let inst_salt = inst.bytes().map(u64::from).sum::<u64>();
    let rows: Vec<String> = (0..limit)
        .map(|j| {
            let at = latest - j * ms;
            let mut h = fastrand::Rng::with_seed(sh.opts.seed ^ at ^ salt ^ inst_salt);
            let ratio = fmt_units(h.i64(5_000..35_000), 4, NumStyle::Trimmed);
            format!("[\"{at}\",\"{ratio}\"]")
        })
        .collect();
    ok_data(format!("[{}]", rows.join(",")))
}

async fn accept_rest(
    ex: Weak<Executor<'static>>,
    sh: Arc<OkxShared>,
    l: Async<TcpListener>,
    acceptor: TlsAcceptor,
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
            let Some(Ok(tls)) = timeout(Duration::from_secs(5), acceptor.accept(tcp)).await else {
                return;
            };
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let sh = sh.clone();
                    async move {
                        let r = rest_answer(&sh, req.uri().path(), req.uri().query().unwrap_or(""));
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(r.status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(r.body)))
                                .unwrap_or_default(),
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
