//! End to end on a firehose: a loopback TLS WebSocket server replays generated Binance spot
//! depth diffs (25 levels, about 930 bytes each) as fast as marketbox reads them, through the
//! whole service (TLS, WebSocket, parse, book, encode, spool, stdout upstream into a pipe this
//! bench reads), with REST snapshots consistent with the diffs. marketbox is the built binary,
//! run as a child process so its CPU time and memory are its own:
//!
//! - CPU µs per message: utime + stime of the process (`/proc/<pid>/stat`) over the measured
//!   window, divided by the depth frames it received in that window (its own
//!   `marketbox_ws_frames_total{kind="data"}`);
//! - messages/s: those frames per second of the window;
//! - peak RSS: `VmHWM` of `/proc/<pid>/status` at the end of the window;
//! - resyncs (`marketbox_book_resyncs_total`, by reason), background deepenings
//!   (`marketbox_book_deepenings_total`), the REST snapshots served (by `limit`, with their
//!   request weight and how far the generator was ahead of marketbox's last book) and books
//!   published per diff (`marketbox_messages_total{channel="orderbook"}` over the same frames).
//!
//! The generator paces itself at 1,000 diffs/s until marketbox publishes its first book (the
//! measured figures start after the first sync), then sends without pause (or at `-- rate N`
//! diffs a second). It is written for speed, not shared with `tests/sim` (whose book process
//! keeps a history for the tests): a flat array of price ticks, half of them holding a level
//! over the whole grid (denser near the start), so that wherever the price goes a deeper
//! snapshot has levels to show; 25 changes per diff near the top (a few deep), sweeps and
//! improvements that move the mid, mean-reverting around a target that walks a tick every
//! [`WALK_TIMED`] diffs, [`WALK_AMP`] ticks down from the start, then up twice that, down,
//! and so on. The range a cut snapshot made known therefore thins out on one side, and
//! marketbox must deepen it in the background (the feed asks for 500, then 1000 levels,
//! when a cut side holds fewer than four times the published depth) several times a run;
//! the REST snapshot is the same book at the last diff generated.
//!
//! Reference check: a thread of the bench reads marketbox's stdout (JSON lines) 1 MiB at a
//! time and takes each orderbook line's `update_id` from the end of the line without parsing
//! the rest. The generator records the `u` of every diff, in order, and for each diff whose
//! `u` is a multiple of [`SAMPLE_IDS`] (about one in 1,000) the top 20 levels of each side as
//! the venue's text. At the end the generator stops and the bench waits until the last book
//! is at the last `u` generated. Then, from the first book on, the books' update ids must be
//! exactly the generated `u`s: each diff one book, none missing, none twice, none at an id
//! never generated; the sampled books and the last one, parsed (serde_json), must hold
//! exactly the reference levels. Books missing across a REST snapshot (marketbox resynced:
//! silent, not wrong) are counted apart from the others and shown with the resync reasons
//! and marketbox's warnings.
//!
//! Saturation: at full speed the generator outruns marketbox, so the socket always holds
//! megabytes of diffs (a few thousand) that marketbox has not read: every snapshot it asks
//! for is that far ahead of its live book, and the session always has a frame ready. The
//! smoke pass runs saturated too (the debug binary reads 15,000 to 50,000 diffs a second), so
//! it fails if REST answers starve behind the socket or a snapshot far ahead cannot be
//! reached; `-- rate N` paces a timed run instead.
//!
//! A second figure, `steady`, is the resident memory of `marketbox run` with the default
//! config's feeds pointed at the exchange simulators (`tests/sim`) after it has run a while.
//!
//! Run: `cargo bench --bench firehose` (both), `-- firehose [secs] [rate N]` or
//! `-- steady [secs]`; `MARKETBOX_BENCH_BIN=path` measures another build of the binary,
//! `MARKETBOX_BENCH_LOG=file` keeps its log. Under `cargo test` a short smoke pass runs the
//! debug binary through the same path, the target walking a tick every [`WALK_SMOKE`] diffs,
//! and asserts the reference check clean: 0 wrong, missing or repeated books after the first,
//! 0 spool drops. The timed run asserts that no book is wrong.

#[path = "../tests/common/brokers.rs"]
mod brokers;
#[path = "../tests/common/prom.rs"]
#[allow(unused_imports)]
mod prom;
#[path = "../tests/sim/mod.rs"]
#[allow(unused_imports)]
mod sim;
#[path = "../tests/common/tmp.rs"]
mod tmp;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_tungstenite::tungstenite;
use futures_rustls::rustls::{self, ServerConfig};
use http_body_util::Full;
use hyper::body::Bytes;

fn timed() -> bool {
    std::env::args().any(|a| a == "--bench")
}

// ---------------------------------------------------------------------------------------------
// The generated market

/// `[spool] ram_bytes` by default (both runs leave it at that): the ring's size.
const SPOOL_RAM_DEFAULT: u64 = 64 << 20;
/// Price ticks the book can use; the mid starts in the middle and follows a walking target.
const TICKS: usize = 1 << 16;
const CENTER: usize = TICKS / 2;
/// `set` refuses levels this close to either end of the grid.
const EDGE: usize = 4000;
/// The price of tick `CENTER`, in cents (87,000.00).
const CENTER_CENTS: u64 = 8_700_000;
/// Quantities are lots of 0.00001 (1,000 units of 10^-8).
const LOT_UNITS: u64 = 1_000;
/// Level changes per diff (bids and asks together).
const CHANGES: usize = 25;
/// The target the mid reverts to walks between `CENTER - WALK_AMP` and `CENTER + WALK_AMP`:
/// legs of 5,000 ticks, more than twice what a 1000-level snapshot covers (about 1,800 ticks
/// a side), so every leg thins the known range at least once.
const WALK_AMP: usize = 2500;
/// Diffs per tick of the target's walk, timed (about 1,000 ticks a second at 150,000 diffs/s:
/// a deepening every second or two, within the spot weight budget) and in the smoke pass
/// (100 to 300 ticks a second from the debug binary: at least one deepening in its run).
const WALK_TIMED: u64 = 150;
const WALK_SMOKE: u64 = 150;
/// Diffs a second in the smoke pass: 0, as fast as the debug binary reads (see the module
/// doc on saturation).
const SMOKE_RATE: u64 = 0;
/// The published depth (the config's `[book] depth`).
const DEPTH: usize = 20;
/// Diffs whose `u` is a multiple of this get their top levels recorded for the reference
/// check: about one diff in this many (`u` moves by 1 to 24 per diff).
const SAMPLE_IDS: u64 = 1000;

/// One side's top levels as the venue writes them: `[price, qty]` text pairs, best first.
type Levels = Vec<[String; 2]>;

/// One symbol's book on a flat tick grid: `qty[i]` lots at tick `i`; every tick at or below
/// `bid` is a bid, at or above `ask` an ask, nothing in between. It also keeps what the
/// reference check needs: every diff's `u` in order, and the sampled books.
struct Book {
    qty: Vec<u32>,
    bid: usize,
    ask: usize,
    last_id: u64,
    rng: fastrand::Rng,
    diffs: u64,
    /// Where the mid reverts to, and which way it walks, one tick every `walk` diffs.
    target: usize,
    down: bool,
    walk: u64,
    /// The `u` of every diff generated, in order (strictly increasing).
    ids: Vec<u64>,
    /// `(u, bids, asks)` of the diffs whose `u` is a multiple of [`SAMPLE_IDS`].
    refs: Vec<(u64, Levels, Levels)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Bid,
    Ask,
}

impl Book {
    fn new(seed: u64, walk: u64) -> Book {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut qty = vec![0u32; TICKS];
        // Dense near the top, half the ticks deeper, over the whole grid: wherever the price
        // walks, a deeper snapshot has levels to show.
        for (i, q) in qty.iter_mut().enumerate().take(TICKS - EDGE).skip(EDGE) {
            let p = if i.abs_diff(CENTER) < 50 { 85 } else { 50 };
            if i != CENTER && rng.u8(..100) < p {
                *q = 1 + rng.u32(..2000);
            }
        }
        qty[CENTER - 1] = 500;
        qty[CENTER + 1] = 500;
        Book {
            qty,
            bid: CENTER - 1,
            ask: CENTER + 1,
            last_id: 1_000_000_000,
            rng,
            diffs: 0,
            target: CENTER,
            down: true,
            walk: walk.max(1),
            ids: Vec::with_capacity(1 << 21),
            refs: Vec::new(),
        }
    }

    fn random_lots(&mut self) -> u32 {
        if self.rng.u8(..20) == 0 {
            1 + self.rng.u32(..40_000)
        } else {
            1 + self.rng.u32(..2000)
        }
    }

    /// Moves the target one tick every `walk` diffs, turning at `CENTER ± WALK_AMP`.
    fn walk(&mut self) {
        if self.diffs % self.walk != 0 {
            return;
        }
        if self.down {
            self.target -= 1;
            self.down = self.target > CENTER - WALK_AMP;
        } else {
            self.target += 1;
            self.down = self.target >= CENTER + WALK_AMP;
        }
    }

    /// The side whose sweep pulls the mid back towards the target (a sweep of the bids
    /// lowers it); an improvement is made on the other side.
    fn reverting_sweep(&mut self) -> Side {
        let mid = (self.bid + self.ask) / 2;
        let off = mid as f64 - self.target as f64;
        // Off by 100 ticks: 75 % of the sweeps pull back.
        let p_bid = (0.5 + (off / 400.0).clamp(-0.45, 0.45)) * 100.0;
        if f64::from(self.rng.u8(..100)) < p_bid {
            Side::Bid
        } else {
            Side::Ask
        }
    }

    /// Sets tick `i` and keeps `bid`/`ask` the best levels. Refuses (returns `false`) what
    /// would leave a side empty near the top or reach the grid's edge.
    fn set(&mut self, side: Side, i: usize, lots: u32) -> bool {
        if !(EDGE..TICKS - EDGE).contains(&i) {
            return false;
        }
        match side {
            Side::Bid => {
                if i >= self.ask {
                    return false;
                }
                if lots == 0 && i == self.bid {
                    let Some(next) = (i.saturating_sub(200)..i).rev().find(|&j| self.qty[j] > 0)
                    else {
                        return false;
                    };
                    self.bid = next;
                } else if lots > 0 && i > self.bid {
                    self.bid = i;
                }
            }
            Side::Ask => {
                if i <= self.bid {
                    return false;
                }
                if lots == 0 && i == self.ask {
                    let Some(next) = (i + 1..i + 200).find(|&j| self.qty[j] > 0) else {
                        return false;
                    };
                    self.ask = next;
                } else if lots > 0 && i < self.ask {
                    self.ask = i;
                }
            }
        }
        self.qty[i] = lots;
        true
    }

    /// One diff of [`CHANGES`] level changes (each price at most once), written as the
    /// combined-stream frame of `stream` into `out` (cleared first).
    fn step(&mut self, stream: &str, symbol: &str, out: &mut Vec<u8>) {
        self.walk();
        let mut changed: [(Side, usize, u32); CHANGES] = [(Side::Bid, 0, 0); CHANGES];
        let mut n = 0;
        let mut tries = 0;
        while n < CHANGES && tries < CHANGES * 4 {
            tries += 1;
            let r = self.rng.u8(..100);
            let side = if self.rng.bool() {
                Side::Bid
            } else {
                Side::Ask
            };
            let (side, i, lots) = match r {
                // An update, insert or removal near the top.
                0..=69 => {
                    let d = self.rng.usize(..40).min(self.rng.usize(..40));
                    let i = match side {
                        Side::Bid => self.bid - d,
                        Side::Ask => self.ask + d,
                    };
                    let lots = if self.qty[i] > 0 && self.rng.u8(..100) < 40 {
                        0
                    } else {
                        self.random_lots()
                    };
                    (side, i, lots)
                }
                // A sweep of the best level.
                70..=79 => {
                    let side = self.reverting_sweep();
                    let i = match side {
                        Side::Bid => self.bid,
                        Side::Ask => self.ask,
                    };
                    (side, i, 0)
                }
                // An improvement inside the spread, on the side that pulls the mid back.
                80..=91 => {
                    let side = match self.reverting_sweep() {
                        Side::Bid => Side::Ask,
                        Side::Ask => Side::Bid,
                    };
                    if self.ask - self.bid < 2 {
                        continue;
                    }
                    let i = self.rng.usize(self.bid + 1..self.ask);
                    let lots = self.random_lots();
                    (side, i, lots)
                }
                // Deeper: beyond what a 100-level snapshot shows.
                _ => {
                    let d = self.rng.usize(40..600);
                    let i = match side {
                        Side::Bid => self.bid - d,
                        Side::Ask => self.ask + d,
                    };
                    let lots = if self.qty[i] > 0 && self.rng.bool() {
                        0
                    } else {
                        self.random_lots()
                    };
                    (side, i, lots)
                }
            };
            if changed[..n].iter().any(|c| c.1 == i) || !self.set(side, i, lots) {
                continue;
            }
            changed[n] = (side, i, lots);
            n += 1;
        }
        let first = self.last_id + 1;
        self.last_id = first + self.rng.u64(..24);
        self.diffs += 1;
        self.ids.push(self.last_id);
        if self.last_id % SAMPLE_IDS == 0 {
            let (bids, asks) = self.top(DEPTH);
            self.refs.push((self.last_id, bids, asks));
        }
        let changed = &mut changed[..n];
        // Best first on each side, as the venue writes them.
        changed.sort_unstable_by_key(|c| match c.0 {
            Side::Bid => (0, usize::MAX - c.1),
            Side::Ask => (1, c.1),
        });
        out.clear();
        out.extend_from_slice(b"{\"stream\":\"");
        out.extend_from_slice(stream.as_bytes());
        out.extend_from_slice(b"\",\"data\":{\"e\":\"depthUpdate\",\"E\":");
        push_u64(out, now_ms());
        out.extend_from_slice(b",\"s\":\"");
        out.extend_from_slice(symbol.as_bytes());
        out.extend_from_slice(b"\",\"U\":");
        push_u64(out, first);
        out.extend_from_slice(b",\"u\":");
        push_u64(out, self.last_id);
        for (key, side) in [
            (&b",\"b\":["[..], Side::Bid),
            (&b"],\"a\":["[..], Side::Ask),
        ] {
            out.extend_from_slice(key);
            let mut comma = false;
            for c in changed.iter().filter(|c| c.0 == side) {
                if comma {
                    out.push(b',');
                }
                comma = true;
                push_level(out, c.1, c.2);
            }
        }
        out.extend_from_slice(b"]}}");
    }

    /// The REST snapshot body: the top `limit` levels of each side at the last diff.
    fn snapshot(&self, limit: usize) -> String {
        let mut out = Vec::with_capacity(64 + limit * 70);
        out.extend_from_slice(b"{\"lastUpdateId\":");
        push_u64(&mut out, self.last_id);
        out.extend_from_slice(b",\"bids\":[");
        let bids = (0..=self.bid)
            .rev()
            .filter(|&i| self.qty[i] > 0)
            .take(limit);
        for (k, i) in bids.enumerate() {
            if k > 0 {
                out.push(b',');
            }
            push_level(&mut out, i, self.qty[i]);
        }
        out.extend_from_slice(b"],\"asks\":[");
        let asks = (self.ask..TICKS).filter(|&i| self.qty[i] > 0).take(limit);
        for (k, i) in asks.enumerate() {
            if k > 0 {
                out.push(b',');
            }
            push_level(&mut out, i, self.qty[i]);
        }
        out.extend_from_slice(b"]}");
        String::from_utf8(out).expect("ASCII")
    }

    /// The top `n` levels of each side, as the venue's text: what a book published now must
    /// show.
    fn top(&self, n: usize) -> (Levels, Levels) {
        let bids = (0..=self.bid)
            .rev()
            .filter(|&i| self.qty[i] > 0)
            .take(n)
            .map(|i| level_text(i, self.qty[i]))
            .collect();
        let asks = (self.ask..TICKS)
            .filter(|&i| self.qty[i] > 0)
            .take(n)
            .map(|i| level_text(i, self.qty[i]))
            .collect();
        (bids, asks)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `hh:mm:ss.mmm` UTC, to set beside marketbox's log.
fn clock(t: SystemTime) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600 % 24,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}

fn push_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// `v` zero-padded to `width` digits.
fn push_padded(out: &mut Vec<u8>, v: u64, width: usize) {
    let mut b = itoa::Buffer::new();
    let s = b.format(v);
    out.extend(std::iter::repeat_n(b'0', width.saturating_sub(s.len())));
    out.extend_from_slice(s.as_bytes());
}

/// `["87012.34000000","0.51200000"]`: Binance spot BTCUSDT's 8 decimals on both.
fn push_level(out: &mut Vec<u8>, tick: usize, lots: u32) {
    out.extend_from_slice(b"[\"");
    push_price(out, tick);
    out.extend_from_slice(b"\",\"");
    push_qty(out, lots);
    out.extend_from_slice(b"\"]");
}

/// `87012.34000000`: the price of `tick`.
fn push_price(out: &mut Vec<u8>, tick: usize) {
    let cents = CENTER_CENTS + tick as u64 - CENTER as u64;
    push_u64(out, cents / 100);
    out.push(b'.');
    push_padded(out, cents % 100, 2);
    out.extend_from_slice(b"000000");
}

/// `0.51200000`: `lots` lots.
fn push_qty(out: &mut Vec<u8>, lots: u32) {
    let units = u64::from(lots) * LOT_UNITS;
    push_u64(out, units / 100_000_000);
    out.push(b'.');
    push_padded(out, units % 100_000_000, 8);
}

/// One level as the venue's text, for the reference.
fn level_text(tick: usize, lots: u32) -> [String; 2] {
    let (mut p, mut q) = (Vec::with_capacity(16), Vec::with_capacity(16));
    push_price(&mut p, tick);
    push_qty(&mut q, lots);
    [p, q].map(|b| String::from_utf8(b).expect("ASCII"))
}

// ---------------------------------------------------------------------------------------------
// The servers

/// The market the WebSocket writes and REST reads, and the switch from paced to firehose.
struct Market {
    book: Mutex<Book>,
    /// Past the first book: diffs at `rate` a second (0: as fast as marketbox reads them).
    firehose: AtomicBool,
    rate: AtomicU64,
    /// No more diffs (what was generated is flushed): the end of the run.
    pause: AtomicBool,
    stop: AtomicBool,
    sent: AtomicU64,
    bytes: AtomicU64,
    snapshots: AtomicU64,
    connections: AtomicU64,
    /// The update id of the last book marketbox wrote to stdout (0 before the first).
    last_book: AtomicU64,
    /// Each REST snapshot served, in order.
    rest_log: Mutex<Vec<Served>>,
}

/// A REST snapshot served.
#[derive(Clone, Copy)]
struct Served {
    at: SystemTime,
    limit: usize,
    /// Its `lastUpdateId`.
    last_id: u64,
    /// Diffs generated beyond marketbox's last book (`None` before the first book).
    ahead: Option<usize>,
}

/// Diffs a second until the first book.
const PACED: u64 = 1000;

const STREAM: &str = "btcusdt@depth@100ms";
const SYMBOL: &str = "BTCUSDT";

/// Serves WebSockets on `l` until `m.stop`: one thread per connection, writing diffs.
fn serve_ws(l: TcpListener, tls: Arc<ServerConfig>, m: Arc<Market>) {
    l.set_nonblocking(true).expect("nonblocking listener");
    while !m.stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((tcp, _)) => {
                let (tls, m) = (tls.clone(), m.clone());
                std::thread::spawn(move || {
                    let _ = ws_connection(tcp, tls, &m);
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn ws_connection(
    tcp: TcpStream,
    tls: Arc<ServerConfig>,
    m: &Market,
) -> Result<(), Box<dyn std::error::Error>> {
    tcp.set_nonblocking(false)?;
    tcp.set_nodelay(true)?;
    let conn = rustls::ServerConnection::new(tls)?;
    let stream = rustls::StreamOwned::new(conn, tcp);
    let mut path = String::new();
    // tungstenite's callback type returns its large error response by value.
    #[allow(clippy::result_large_err)]
    let cb = |req: &tungstenite::handshake::server::Request,
              resp: tungstenite::handshake::server::Response| {
        path = req.uri().to_string();
        Ok(resp)
    };
    let mut ws = tungstenite::accept_hdr(stream, cb).map_err(|e| e.to_string())?;
    if !path.contains(STREAM) {
        return Err(format!("unexpected streams: {path}").into());
    }
    m.connections.fetch_add(1, Ordering::SeqCst);
    let mut frame = Vec::with_capacity(2048);
    let mut since_flush = 0;
    // The schedule: `sent` diffs since `since` at `rate` a second (0: as fast as it goes).
    let (mut rate, mut since, mut sent) = (u64::MAX, Instant::now(), 0u64);
    while !m.stop.load(Ordering::Relaxed) {
        let firehose = m.firehose.load(Ordering::Relaxed);
        let want = if firehose {
            m.rate.load(Ordering::Relaxed)
        } else {
            PACED
        };
        if want != rate {
            (rate, since, sent) = (want, Instant::now(), 0);
        }
        let due = rate == 0 || sent <= (since.elapsed().as_secs_f64() * rate as f64) as u64;
        let stepped = due && {
            // Read under the lock: once the bench has set `pause` and then held the lock, no
            // diff follows the last one it saw.
            let mut book = m.book.lock().unwrap_or_else(|e| e.into_inner());
            let go = !m.pause.load(Ordering::SeqCst);
            if go {
                book.step(STREAM, SYMBOL, &mut frame);
            }
            go
        };
        if !stepped {
            if since_flush > 0 {
                ws.flush()?;
                since_flush = 0;
            }
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        m.bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
        let text = String::from_utf8(std::mem::take(&mut frame))?;
        frame = Vec::with_capacity(2048);
        ws.write(tungstenite::Message::text(text))?;
        m.sent.fetch_add(1, Ordering::Relaxed);
        sent += 1;
        since_flush += 1;
        if !firehose || since_flush >= 32 {
            ws.flush()?;
            since_flush = 0;
        }
    }
    Ok(())
}

/// Serves `/api/v3/depth?symbol=BTCUSDT&limit=N` from the market (HTTP/1.1 keep-alive over
/// TLS, with hyper on a small executor of its own).
fn serve_rest(l: TcpListener, tls: Arc<ServerConfig>, m: Arc<Market>) {
    let acceptor = futures_rustls::TlsAcceptor::from(tls);
    let l = smol::Async::new(l).expect("async listener");
    let ex = smol::LocalExecutor::new();
    smol::block_on(ex.run(async {
        while !m.stop.load(Ordering::Relaxed) {
            let accepted = futures_lite::FutureExt::or(async { Some(l.accept().await) }, async {
                smol::Timer::after(Duration::from_millis(50)).await;
                None
            })
            .await;
            let Some(Ok((tcp, _))) = accepted else {
                continue;
            };
            let (acceptor, m) = (acceptor.clone(), m.clone());
            ex.spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let m = m.clone();
                        async move {
                            let q = req.uri().query().unwrap_or("");
                            let limit = q
                                .split('&')
                                .find_map(|kv| kv.strip_prefix("limit="))
                                .and_then(|v| v.parse::<usize>().ok())
                                .unwrap_or(100)
                                .min(5000);
                            let ok = req.uri().path() == "/api/v3/depth"
                                && q.contains(&format!("symbol={SYMBOL}"));
                            let (status, body) = if ok {
                                m.snapshots.fetch_add(1, Ordering::SeqCst);
                                let book = m.book.lock().unwrap_or_else(|e| e.into_inner());
                                let last = m.last_book.load(Ordering::SeqCst);
                                let ahead = (last > 0).then(|| {
                                    book.ids.len() - book.ids.partition_point(|&u| u <= last)
                                });
                                m.rest_log
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push(Served {
                                        at: SystemTime::now(),
                                        limit,
                                        last_id: book.last_id,
                                        ahead,
                                    });
                                (200, book.snapshot(limit))
                            } else {
                                (404, "{\"code\":-1,\"msg\":\"not here\"}".to_owned())
                            };
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/json;charset=UTF-8")
                                .body(Full::new(Bytes::from(body)))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(smol_hyper::rt::FuturesIo::new(tls), svc)
                    .await;
            })
            .detach();
        }
    }));
}

/// The generated market's two servers, on free loopback ports; stopped on drop.
struct Firehose {
    market: Arc<Market>,
    ws: SocketAddr,
    rest: SocketAddr,
    ca: brokers::TempDir,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Firehose {
    /// The servers of a market whose target walks a tick every `walk` diffs.
    fn start(walk: u64) -> Firehose {
        let (tls, ca_pem) = sim::make_tls();
        let ca = brokers::TempDir::new("firehose");
        std::fs::write(ca.path().join("ca.pem"), ca_pem).expect("write the CA");
        let market = Arc::new(Market {
            book: Mutex::new(Book::new(7, walk)),
            firehose: AtomicBool::new(false),
            rate: AtomicU64::new(0),
            pause: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            last_book: AtomicU64::new(0),
            rest_log: Mutex::new(Vec::new()),
        });
        let (lw, lr) = (bind(), bind());
        let (ws, rest) = (
            lw.local_addr().expect("addr"),
            lr.local_addr().expect("addr"),
        );
        let threads = vec![
            {
                let (tls, m) = (tls.clone(), market.clone());
                std::thread::spawn(move || serve_ws(lw, tls, m))
            },
            {
                let m = market.clone();
                std::thread::spawn(move || serve_rest(lr, tls, m))
            },
        ];
        Firehose {
            market,
            ws,
            rest,
            ca,
            threads,
        }
    }

    /// A marketbox config reading BTC-USDT spot depth from here into stdout.
    fn config(&self, metrics_port: u16) -> String {
        format!(
            r#"[budget]
max_connections = 4
[book]
depth = {DEPTH}
[upstream]
kind = "stdout"
format = "json"
[metrics]
listen = "127.0.0.1:{metrics_port}"
[tls]
extra_ca = "{ca}"
[venues.binance]
spot_ws = "wss://localhost:{ws}"
spot_rest = "https://localhost:{rest}"
[[feeds]]
exchange = "binance"
market = "spot"
symbols = ["BTC-USDT"]
channels = ["orderbook"]
"#,
            ca = self.ca.path().join("ca.pem").display(),
            ws = self.ws.port(),
            rest = self.rest.port(),
        )
    }
}

impl Drop for Firehose {
    fn drop(&mut self) {
        self.market.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind a loopback port")
}

// ---------------------------------------------------------------------------------------------
// Reading the child

/// utime + stime of `pid`, in seconds (clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the child's stat");
    // Fields after the command name (which may hold spaces) start at field 3.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime is field 14, stime 15 (1-based); `after` starts at field 3.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// A `/proc/<pid>/status` line's value in kB (`VmHWM`, `VmRSS`).
fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Where a process's resident memory is, from `/proc/<pid>/smaps`, in kB.
#[derive(Default)]
struct Resident {
    /// The program's own file (code, read-only data: file-backed, shared with the page cache).
    program: u64,
    /// Other files: libc, the loader.
    libraries: u64,
    /// The spool's RAM ring (the anonymous mapping of at least `[spool] ram_bytes`): its
    /// front, and past it the pages that hold records not yet read.
    ring: u64,
    /// Every other anonymous page: the heap, stacks, relocated data.
    anonymous: u64,
}

impl std::fmt::Display for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = |kb: u64| kb as f64 / 1024.0;
        write!(
            f,
            "spool ring {:.1} MB, other anonymous {:.1} MB, the program's file {:.1} MB, libraries {:.1} MB",
            mb(self.ring),
            mb(self.anonymous),
            mb(self.program),
            mb(self.libraries)
        )
    }
}

/// Splits `pid`'s resident memory by mapping (`ring_bytes`: the spool's RAM ring size).
fn resident(pid: u32, ring_bytes: u64) -> Resident {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut r = Resident::default();
    let (mut path, mut size) = (String::new(), 0u64);
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        let kb = || words.clone().next().and_then(|v| v.parse::<u64>().ok());
        match first {
            "Size:" => size = kb().unwrap_or(0),
            "Rss:" => {
                let rss = kb().unwrap_or(0);
                let slot = if path.starts_with('/') {
                    if Path::new(&path) == exe {
                        &mut r.program
                    } else {
                        &mut r.libraries
                    }
                } else if size * 1024 >= ring_bytes {
                    &mut r.ring
                } else {
                    &mut r.anonymous
                };
                *slot += rss;
            }
            // A mapping's header: `start-end perms offset dev inode [path]`.
            _ if first.contains('-') && !first.ends_with(':') => {
                path = words.nth(4).unwrap_or("").to_owned();
            }
            _ => {}
        }
    }
    r
}

/// Sum of a metric's series with all of `labels`, from a scrape.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            if n != name || !all {
                return None;
            }
            value.parse::<f64>().ok()
        })
        // `sum` of nothing is -0.0.
        .fold(0.0, |a, b| a + b)
}

/// The series of `name` with a non-zero value, as `labels value` lines.
fn nonzero(text: &str, name: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| l.rsplit_once(' ').is_some_and(|(_, v)| v != "0"))
        .map(str::to_owned)
        .collect()
}

/// utime + stime of each thread of `pid`, in seconds, by thread name.
fn thread_cpu(pid: u32) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let secs = (ticks(11) + ticks(12)) as f64 / 100.0;
        let name = name.trim().to_owned();
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, s)) => *s += secs,
            None => out.push((name, secs)),
        }
    }
    out
}

struct Sample {
    at: Instant,
    cpu: f64,
    threads: Vec<(String, f64)>,
    diffs: f64,
    books: f64,
    resyncs: f64,
}

fn sample(pid: u32, metrics: SocketAddr) -> Sample {
    let at = Instant::now();
    let cpu = cpu_seconds(pid);
    let threads = thread_cpu(pid);
    let scrape = prom::get(metrics, "/metrics", &[])
        .expect("/metrics answers")
        .text();
    Sample {
        at,
        cpu,
        threads,
        diffs: metric(&scrape, "marketbox_ws_frames_total", &[("kind", "data")]),
        books: metric(
            &scrape,
            "marketbox_messages_total",
            &[("channel", "orderbook")],
        ),
        resyncs: metric(&scrape, "marketbox_book_resyncs_total", &[]),
    }
}

// ---------------------------------------------------------------------------------------------
// marketbox's output against the reference

/// What the stdout reader saw.
#[derive(Default)]
struct Seen {
    /// The update id of every orderbook line, in order.
    ids: Vec<u64>,
    /// The lines whose update id is a multiple of [`SAMPLE_IDS`], with it.
    samples: Vec<(u64, Vec<u8>)>,
    /// The last orderbook line.
    last: Vec<u8>,
    /// Lines that are not an orderbook message ending in an update id, and the first of them
    /// (cut short) for the report.
    unreadable: u64,
    first_unreadable: Option<String>,
}

/// The update id ending an orderbook line, `…,"update_id":123}}` (`src/encode.rs` writes it
/// last in `data`, and `data` last in the message), found without parsing the rest.
fn update_id(line: &[u8]) -> Option<u64> {
    let body = line.strip_suffix(b"}}")?;
    let digits = body.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let (head, id) = body.split_at(body.len() - digits);
    if digits == 0 || !head.ends_with(b",\"update_id\":") {
        return None;
    }
    std::str::from_utf8(id).ok()?.parse().ok()
}

/// Reads marketbox's stdout (JSON lines) until it closes, 1 MiB at a time, keeping what the
/// reference check needs and each book's update id in `last` as it goes.
fn read_books(out: impl Read, last: &AtomicU64) -> Seen {
    let mut r = BufReader::with_capacity(1 << 20, out);
    let mut seen = Seen {
        ids: Vec::with_capacity(1 << 21),
        ..Seen::default()
    };
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let Some(id) = update_id(&line) else {
            seen.unreadable += 1;
            if seen.first_unreadable.is_none() {
                let head = &line[..line.len().min(200)];
                seen.first_unreadable = Some(String::from_utf8_lossy(head).into_owned());
            }
            continue;
        };
        seen.ids.push(id);
        last.store(id, Ordering::SeqCst);
        if id % SAMPLE_IDS == 0 {
            seen.samples.push((id, line.clone()));
        }
        // The line becomes `last` (its buffer is reused for the next read).
        std::mem::swap(&mut line, &mut seen.last);
    }
    seen
}

/// An orderbook line of marketbox's stdout, as far as the check reads it.
#[derive(serde::Deserialize)]
struct OutLine {
    channel: String,
    symbol: String,
    data: OutBook,
}

#[derive(serde::Deserialize)]
struct OutBook {
    bids: Levels,
    asks: Levels,
    update_id: u64,
}

/// Whether `line` is the book at `u` with exactly these levels; the first difference when not.
fn same_book(line: &[u8], u: u64, bids: &Levels, asks: &Levels) -> Result<(), String> {
    let out: OutLine = serde_json::from_slice(line).map_err(|e| {
        let head = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
        format!("not an orderbook line ({e}): {head}")
    })?;
    if out.channel != "orderbook" || out.symbol != "BTC-USDT" || out.data.update_id != u {
        return Err(format!(
            "{} {} at {} where the book at {u} was expected",
            out.channel, out.symbol, out.data.update_id
        ));
    }
    for (name, got, want) in [
        ("bids", &out.data.bids, bids),
        ("asks", &out.data.asks, asks),
    ] {
        if let Some(k) = (0..got.len().max(want.len())).find(|&k| got.get(k) != want.get(k)) {
            return Err(format!(
                "book at {u}: {name}[{k}] is {:?}, the reference {:?} ({} levels, {} expected)",
                got.get(k),
                want.get(k),
                got.len(),
                want.len()
            ));
        }
    }
    Ok(())
}

/// The reference check's figures.
#[derive(Default)]
struct Check {
    /// Diffs generated, and the position among them of the first book's.
    generated: usize,
    first_at: Option<usize>,
    /// Books at the next generated `u` (the first book counts).
    in_order: u64,
    /// Generated diffs after the first book that got no book, and the runs they form; of
    /// those, the ones a REST snapshot was served in (from the last book before to the first
    /// after: a resync, honest silence) and the diffs at the end that never got a book.
    missing: u64,
    gaps: u64,
    resync_missing: u64,
    resync_gaps: u64,
    tail_missing: u64,
    /// Books at an id not after the previous book's (twice, or going back).
    repeated: u64,
    /// Books at an id never generated.
    unknown: u64,
    /// Books compared in full with the reference (the sampled ones and the last), and those
    /// that differ.
    compared: u64,
    mismatches: u64,
    /// Whether the last book was at the last diff generated and compared.
    last_compared: bool,
    unreadable: u64,
    /// The first few differences, for the report.
    notes: Vec<String>,
}

impl Check {
    fn note(&mut self, s: String) {
        if self.notes.len() < 5 {
            self.notes.push(s);
        }
    }

    /// Whether every diff after the first book yielded exactly one book, all of them right.
    fn clean(&self) -> bool {
        self.first_at.is_some()
            && self.missing == 0
            && self.repeated == 0
            && self.unknown == 0
            && self.mismatches == 0
            && self.unreadable == 0
            && self.last_compared
    }
}

/// Checks what marketbox wrote against the generator's record: `ids` the `u` of every diff
/// in order, `refs` the sampled books, `last` the book at the last diff, `snapshots` the
/// `lastUpdateId` of every REST snapshot served, in order.
fn check(
    ids: &[u64],
    refs: &[(u64, Levels, Levels)],
    last: &(u64, Levels, Levels),
    snapshots: &[u64],
    seen: &Seen,
) -> Check {
    let mut c = Check {
        generated: ids.len(),
        unreadable: seen.unreadable,
        ..Check::default()
    };
    if let Some(l) = &seen.first_unreadable {
        c.note(format!("unreadable line: {l}"));
    }
    let Some(&first) = seen.ids.first() else {
        c.note("no book at all".into());
        return c;
    };
    let Ok(start) = ids.binary_search(&first) else {
        c.unknown = 1;
        c.note(format!(
            "the first book is at {first}, an id never generated"
        ));
        return c;
    };
    c.first_at = Some(start);
    // `next`: the position of the diff the next book should be at.
    let mut next = start;
    for &b in &seen.ids {
        if ids.get(next) == Some(&b) {
            c.in_order += 1;
            next += 1;
        } else if next > 0 && b <= ids[next - 1] {
            c.repeated += 1;
            c.note(format!("a book at {b} after the book at {}", ids[next - 1]));
        } else {
            match ids.binary_search(&b) {
                Ok(k) => {
                    let n = (k - next) as u64;
                    c.missing += n;
                    c.gaps += 1;
                    // A snapshot at or after the last book and before this one: the book
                    // resynced in between.
                    let prev = ids[next - 1];
                    let i = snapshots.partition_point(|&l| l < prev);
                    if snapshots.get(i).is_some_and(|&l| l < b) {
                        c.resync_missing += n;
                        c.resync_gaps += 1;
                    } else {
                        c.note(format!(
                            "{n} diffs after the book at {prev} got no book, and no snapshot was served meanwhile"
                        ));
                    }
                    c.in_order += 1;
                    next = k + 1;
                }
                Err(_) => {
                    c.unknown += 1;
                    c.note(format!("a book at {b}, an id never generated"));
                }
            }
        }
    }
    // Diffs at the end that got no book (the wait for the last one timed out).
    c.tail_missing = (ids.len() - next) as u64;
    c.missing += c.tail_missing;
    for (u, line) in &seen.samples {
        let Ok(k) = refs.binary_search_by_key(u, |r| r.0) else {
            continue;
        };
        c.compared += 1;
        if let Err(e) = same_book(line, *u, &refs[k].1, &refs[k].2) {
            c.mismatches += 1;
            c.note(e);
        }
    }
    if seen.ids.last() == Some(&last.0) {
        c.compared += 1;
        c.last_compared = true;
        if let Err(e) = same_book(&seen.last, last.0, &last.1, &last.2) {
            c.mismatches += 1;
            c.note(format!("the last book: {e}"));
        }
    } else {
        c.note(format!(
            "the last book is at {:?}, the last diff generated at {}",
            seen.ids.last(),
            last.0
        ));
    }
    c
}

/// Request weight of a spot depth snapshot of `limit` levels (Binance's table).
fn spot_weight(limit: usize) -> u64 {
    match limit {
        0..=100 => 5,
        101..=500 => 25,
        501..=1000 => 50,
        _ => 250,
    }
}

/// What one firehose run measured.
struct Figures {
    diffs: f64,
    us_per_msg: f64,
    msgs_per_s: f64,
    resyncs: f64,
    books_per_diff: f64,
    spool_dropped: f64,
    check: Check,
}

/// `marketbox run --config <config>`: this build, or `MARKETBOX_BENCH_BIN` (another build to
/// compare with), its stdout sent to `stdout`.
fn start(config: &Path, stdout: Stdio) -> brokers::Marketbox {
    let bin = std::env::var_os("MARKETBOX_BENCH_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_marketbox")),
        PathBuf::from,
    );
    brokers::Marketbox::start_bin_with_stdout(&bin, config, None, stdout)
}

/// Stops marketbox as the box's init system does (SIGTERM): it must exit 0. An instrumented
/// build writes its profile on that exit (`image/build` trains on these runs).
fn stop(mb: &mut brokers::Marketbox) {
    let status = mb.stop(libc::SIGTERM, Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "marketbox exited {status:?} on SIGTERM:\n{}",
        mb.log()
    );
}

/// Runs marketbox against the firehose for `secs` after its first book, at `rate` diffs a
/// second (0: as fast as it reads them), the target walking a tick every `walk` diffs; then
/// checks every book it wrote against the generator's.
fn firehose(secs: u64, walk: u64, rate: u64) -> Figures {
    let fh = Firehose::start(walk);
    let port = brokers::free_port();
    let dir = brokers::TempDir::new("firehose-cfg");
    let path = dir.path().join("marketbox.toml");
    std::fs::write(&path, fh.config(port)).expect("write the config");
    let mut mb = start(&path, Stdio::piped());
    let out = mb.take_stdout().expect("marketbox's stdout is piped");
    let reader = {
        let m = fh.market.clone();
        std::thread::spawn(move || read_books(out, &m.last_book))
    };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let pid = mb.pid();
    // Paced until the first book: the measured part starts synced.
    let deadline = Instant::now() + Duration::from_secs(60);
    while fh.market.last_book.load(Ordering::SeqCst) == 0 {
        assert!(mb.is_running(), "marketbox exited:\n{}", mb.log());
        assert!(
            Instant::now() < deadline,
            "no book within 60 s:\n{}",
            mb.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    fh.market.rate.store(rate, Ordering::SeqCst);
    fh.market.firehose.store(true, Ordering::SeqCst);
    // A second to reach full speed, then the measured window.
    std::thread::sleep(Duration::from_secs(1));
    let a = sample(pid, addr);
    std::thread::sleep(Duration::from_secs(secs));
    let b = sample(pid, addr);
    assert!(mb.is_running(), "marketbox exited:\n{}", mb.log());
    let peak = status_kb(pid, "VmHWM:");
    let rss = status_kb(pid, "VmRSS:");
    let split = resident(pid, SPOOL_RAM_DEFAULT);
    // The end: no diff after this one; wait for its book.
    fh.market.pause.store(true, Ordering::SeqCst);
    let stopped = Instant::now();
    let last_ref = {
        let book = fh.market.book.lock().unwrap_or_else(|e| e.into_inner());
        let (bids, asks) = book.top(DEPTH);
        (book.last_id, bids, asks)
    };
    let deadline = stopped + Duration::from_secs(30);
    while fh.market.last_book.load(Ordering::SeqCst) != last_ref.0
        && Instant::now() < deadline
        && mb.is_running()
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let drained = stopped.elapsed();
    let end = prom::get(addr, "/metrics", &[])
        .expect("/metrics answers")
        .text();
    stop(&mut mb);
    let seen = reader.join().expect("the stdout reader");
    let (ids, refs) = {
        let mut book = fh.market.book.lock().unwrap_or_else(|e| e.into_inner());
        (
            std::mem::take(&mut book.ids),
            std::mem::take(&mut book.refs),
        )
    };
    let rest = fh
        .market
        .rest_log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let snapshots: Vec<u64> = rest.iter().map(|r| r.last_id).collect();
    let check = check(&ids, &refs, &last_ref, &snapshots, &seen);

    let secs = (b.at - a.at).as_secs_f64();
    let diffs = b.diffs - a.diffs;
    let f = Figures {
        diffs,
        us_per_msg: (b.cpu - a.cpu) * 1e6 / diffs.max(1.0),
        msgs_per_s: diffs / secs,
        resyncs: b.resyncs - a.resyncs,
        books_per_diff: (b.books - a.books) / diffs.max(1.0),
        spool_dropped: metric(&end, "marketbox_spool_dropped_total", &[]),
        check,
    };
    let resyncs_run = metric(&end, "marketbox_book_resyncs_total", &[]);
    let sent = fh.market.sent.load(Ordering::SeqCst);
    let bytes = fh.market.bytes.load(Ordering::SeqCst);
    println!(
        "firehose: {diffs:.0} Binance spot depth diffs (25 levels, {:.0} B on average) in {secs:.1} s, {}; the target walking a tick every {walk} diffs",
        bytes as f64 / sent.max(1) as f64,
        if rate == 0 {
            "as fast as marketbox reads them".to_owned()
        } else {
            format!("paced at {rate} a second")
        }
    );
    println!(
        "firehose: CPU {:.2} µs per message (utime + stime {:.2} s), {:.0} messages/s",
        f.us_per_msg,
        b.cpu - a.cpu,
        f.msgs_per_s
    );
    println!(
        "firehose: peak RSS {:.1} MB (VmHWM), {:.1} MB at the end (VmRSS): {split}; the sessions paused {:.2} s for the upstream (backpressure)",
        peak as f64 / 1024.0,
        rss as f64 / 1024.0,
        metric(&end, "marketbox_spool_backpressure_seconds_total", &[]),
    );
    let mut by_limit: Vec<(usize, u64)> = Vec::new();
    for &Served { limit, .. } in &rest {
        match by_limit.iter_mut().find(|(l, _)| *l == limit) {
            Some((_, n)) => *n += 1,
            None => by_limit.push((limit, 1)),
        }
    }
    by_limit.sort_unstable();
    let weight: u64 = rest.iter().map(|r| spot_weight(r.limit)).sum();
    println!(
        "firehose: books published per diff {:.3}; resyncs in the window {:.0} (whole run {resyncs_run:.0}); deepenings {:.0}; REST snapshots {} ({}; weight {weight}); spool drops {:.0}; WebSocket connections {}",
        f.books_per_diff,
        f.resyncs,
        metric(&end, "marketbox_book_deepenings_total", &[]),
        rest.len(),
        by_limit
            .iter()
            .map(|(l, n)| format!("limit {l} ×{n}"))
            .collect::<Vec<_>>()
            .join(", "),
        f.spool_dropped,
        fh.market.connections.load(Ordering::SeqCst),
    );
    let leads: Vec<String> = rest
        .iter()
        .take(16)
        .map(|r| match r.ahead {
            Some(n) => format!("{} {}/{n}", clock(r.at), r.limit),
            None => format!("{} {}/-", clock(r.at), r.limit),
        })
        .collect();
    println!(
        "firehose: REST snapshots served (UTC, limit/diffs generated beyond marketbox's last book): {}{}",
        leads.join(", "),
        if rest.len() > 16 {
            format!(" … ({} more)", rest.len() - 16)
        } else {
            String::new()
        }
    );
    let per_thread: Vec<String> = b
        .threads
        .iter()
        .map(|(name, end)| {
            let start = a
                .threads
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0.0, |t| t.1);
            format!("{name} {:.2}", (end - start) * 1e6 / diffs.max(1.0))
        })
        .collect();
    println!(
        "firehose: µs per message by thread: {}",
        per_thread.join(", ")
    );
    let c = &f.check;
    println!(
        "firehose: reference check: {} books compared (incl. the last: {}), {} mismatches; {} books in order from the first (diff {} of {} generated), {} missing in {} gaps ({} in {} gaps across a resync snapshot, {} never delivered), {} repeated, {} at unknown ids, {} unreadable lines; the last book {:.0} ms after the generator stopped",
        c.compared,
        if c.last_compared { "yes" } else { "NO" },
        c.mismatches,
        c.in_order,
        c.first_at.map_or(0, |p| p + 1),
        c.generated,
        c.missing,
        c.gaps,
        c.resync_missing,
        c.resync_gaps,
        c.tail_missing,
        c.repeated,
        c.unknown,
        c.unreadable,
        drained.as_secs_f64() * 1e3,
    );
    for n in &c.notes {
        println!("firehose:   {n}");
    }
    for l in nonzero(&end, "marketbox_book_resyncs_total") {
        println!("firehose:   {l}");
    }
    if let Some(p) = std::env::var_os("MARKETBOX_BENCH_LOG") {
        std::fs::write(&p, mb.log()).expect("write marketbox's log");
    }
    if resyncs_run > 0.0 || !c.clean() {
        let log = mb.log();
        for l in log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(12)
        {
            println!("firehose:   log: {l}");
        }
    }
    f
}

// ---------------------------------------------------------------------------------------------
// Steady state with the default config

/// `marketbox run` with the default config's feeds on the simulators: VmRSS after `secs`.
fn steady(secs: u64) -> (u64, u64) {
    let bin = sim::Sim::start(sim::SimOptions::default());
    let okx = sim::okx::OkxSim::start(sim::okx::OkxOptions::default());
    let dir = brokers::TempDir::new("bench-steady");
    let ca = dir.path().join("ca.pem");
    let mut pem = std::fs::read(bin.ca_pem_path()).expect("the CA");
    pem.extend(std::fs::read(okx.ca_pem_path()).expect("the CA"));
    std::fs::write(&ca, pem).expect("write the CA");
    let path = dir.path().join("marketbox.toml");
    let port = brokers::free_port();
    std::fs::write(
        &path,
        sim::default_config_on(&bin, &okx, &ca, &format!("127.0.0.1:{port}")),
    )
    .expect("write the config");
    let mut mb = start(&path, Stdio::null());
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    std::thread::sleep(Duration::from_secs(secs));
    assert!(mb.is_running(), "{}", mb.log());
    let scrape = prom::get(addr, "/metrics", &[]).expect("/metrics").text();
    let books = metric(
        &scrape,
        "marketbox_messages_total",
        &[("channel", "orderbook")],
    );
    let (rss, hwm) = (status_kb(mb.pid(), "VmRSS:"), status_kb(mb.pid(), "VmHWM:"));
    let split = resident(mb.pid(), SPOOL_RAM_DEFAULT);
    println!(
        "steady: marketbox run, the default config's feeds on the simulators, after {secs} s: VmRSS {:.1} MB, VmHWM {:.1} MB ({books:.0} books published): {split}",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    assert!(books > 0.0, "no books published:\n{}", mb.log());
    stop(&mut mb);
    (rss, hwm)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs_after = |word: &str, default: u64| {
        args.iter()
            .position(|a| a == word)
            .and_then(|i| args.get(i + 1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    if !timed() {
        // `cargo test`: the debug binary through the same path, briefly, at a rate it keeps
        // up with, the target walking faster so that it deepens too; it must sync and then
        // publish exactly one right book per diff without dropping anything in the spool.
        let f = firehose(2, WALK_SMOKE, SMOKE_RATE);
        assert!(f.diffs > 0.0, "no diffs read in the window");
        assert!(f.books_per_diff > 0.0, "no books published in the window");
        assert_eq!(f.spool_dropped, 0.0, "the spool dropped messages");
        assert!(
            f.check.clean(),
            "the books on stdout are not exactly one right book per diff after the first (see the reference check above)"
        );
        return;
    }
    let only_firehose = args.iter().any(|a| a == "firehose");
    let only_steady = args.iter().any(|a| a == "steady");
    if !only_steady {
        let f = firehose(
            secs_after("firehose", 10),
            WALK_TIMED,
            secs_after("rate", 0),
        );
        // A wrong book is a bug, whatever the speed.
        assert_eq!(
            (f.check.mismatches, f.check.unknown),
            (0, 0),
            "books differ from the reference (see the reference check above)"
        );
    }
    if !only_firehose {
        steady(secs_after("steady", 20));
    }
}
