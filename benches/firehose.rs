//! End to end on a firehose: a loopback TLS WebSocket server replays generated Binance spot
//! depth diffs (25 levels, about 930 bytes each) as fast as marketbox reads them, through the
//! whole service (TLS, WebSocket, parse, book, encode, spool, stdout upstream into /dev/null),
//! with REST snapshots consistent with the diffs. marketbox is the built binary, run as a child
//! process so its CPU time and memory are its own:
//!
//! - CPU µs per message: utime + stime of the process (`/proc/<pid>/stat`) over the measured
//!   window, divided by the depth frames it received in that window (its own
//!   `marketbox_ws_frames_total{kind="data"}`);
//! - messages/s: those frames per second of the window;
//! - peak RSS: `VmHWM` of `/proc/<pid>/status` at the end of the run;
//! - resyncs (`marketbox_book_resyncs_total`, by reason), background deepenings
//!   (`marketbox_book_deepenings_total`) and books published per diff
//!   (`marketbox_messages_total{channel="orderbook"}` over the same frames).
//!
//! The generator paces itself at 1,000 diffs/s until marketbox publishes its first book (the
//! measured figures start after the first sync), then sends without pause. It is written for
//! speed, not shared with `tests/sim` (whose book process keeps a history for the tests): a
//! flat array of price ticks, 25 changes per diff near the top (a few deep), sweeps and
//! improvements that move the mid, mean-reverting around where it started; the REST snapshot
//! is the same book at the last diff generated.
//!
//! A second figure, `steady`, is the resident memory of `marketbox run` with the default
//! config's feeds pointed at the exchange simulators (`tests/sim`) after it has run a while.
//!
//! Run: `cargo bench --bench firehose` (both), `-- firehose [secs]` or `-- steady [secs]`;
//! `MARKETBOX_BENCH_BIN=path` measures another build of the binary.
//! Under `cargo test` a short smoke pass runs the debug binary through the same path.

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

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
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

/// Price ticks the book can use; the mid starts in the middle and reverts towards it.
const TICKS: usize = 1 << 16;
const CENTER: usize = TICKS / 2;
/// The price of tick `CENTER`, in cents (87,000.00).
const CENTER_CENTS: u64 = 8_700_000;
/// Quantities are lots of 0.00001 (1,000 units of 10^-8).
const LOT_UNITS: u64 = 1_000;
/// Level changes per diff (bids and asks together).
const CHANGES: usize = 25;

/// One symbol's book on a flat tick grid: `qty[i]` lots at tick `i`; every tick at or below
/// `bid` is a bid, at or above `ask` an ask, nothing in between.
struct Book {
    qty: Vec<u32>,
    bid: usize,
    ask: usize,
    last_id: u64,
    rng: fastrand::Rng,
    diffs: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Bid,
    Ask,
}

impl Book {
    fn new(seed: u64) -> Book {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut qty = vec![0u32; TICKS];
        // Dense near the top, sparser deeper, 2,000 ticks each way.
        for d in 1..2000usize {
            let p = if d < 50 { 85 } else { 45 };
            if rng.u8(..100) < p {
                qty[CENTER - d] = 1 + rng.u32(..2000);
            }
            if rng.u8(..100) < p {
                qty[CENTER + d] = 1 + rng.u32(..2000);
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
        }
    }

    fn random_lots(&mut self) -> u32 {
        if self.rng.u8(..20) == 0 {
            1 + self.rng.u32(..40_000)
        } else {
            1 + self.rng.u32(..2000)
        }
    }

    /// The side whose sweep pulls the mid back towards the centre (a sweep of the bids
    /// lowers it); an improvement is made on the other side.
    fn reverting_sweep(&mut self) -> Side {
        let mid = (self.bid + self.ask) / 2;
        let off = mid as f64 - CENTER as f64;
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
        if !(4000..TICKS - 4000).contains(&i) {
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
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
    let cents = CENTER_CENTS + tick as u64 - CENTER as u64;
    out.extend_from_slice(b"[\"");
    push_u64(out, cents / 100);
    out.push(b'.');
    push_padded(out, cents % 100, 2);
    out.extend_from_slice(b"000000\",\"");
    let units = u64::from(lots) * LOT_UNITS;
    push_u64(out, units / 100_000_000);
    out.push(b'.');
    push_padded(out, units % 100_000_000, 8);
    out.extend_from_slice(b"\"]");
}

// ---------------------------------------------------------------------------------------------
// The servers

/// The market the WebSocket writes and REST reads, and the switch from paced to firehose.
struct Market {
    book: Mutex<Book>,
    firehose: AtomicBool,
    stop: AtomicBool,
    sent: AtomicU64,
    bytes: AtomicU64,
    snapshots: AtomicU64,
    connections: AtomicU64,
}

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
    while !m.stop.load(Ordering::Relaxed) {
        let firehose = m.firehose.load(Ordering::Relaxed);
        {
            let mut book = m.book.lock().unwrap_or_else(|e| e.into_inner());
            book.step(STREAM, SYMBOL, &mut frame);
        }
        m.bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
        let text = String::from_utf8(std::mem::take(&mut frame))?;
        frame = Vec::with_capacity(2048);
        ws.write(tungstenite::Message::text(text))?;
        m.sent.fetch_add(1, Ordering::Relaxed);
        since_flush += 1;
        if !firehose || since_flush >= 32 {
            ws.flush()?;
            since_flush = 0;
        }
        if !firehose {
            std::thread::sleep(Duration::from_millis(1));
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
    fn start() -> Firehose {
        let (tls, ca_pem) = sim::make_tls();
        let ca = brokers::TempDir::new("firehose");
        std::fs::write(ca.path().join("ca.pem"), ca_pem).expect("write the CA");
        let market = Arc::new(Market {
            book: Mutex::new(Book::new(7)),
            firehose: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            connections: AtomicU64::new(0),
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
depth = 20
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
    dropped: f64,
    scrape: String,
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
        dropped: metric(&scrape, "marketbox_spool_dropped_total", &[]),
        scrape,
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
}

/// `marketbox run --config <config>`: this build, or `MARKETBOX_BENCH_BIN` (another build to
/// compare with).
fn start(config: &Path) -> brokers::Marketbox {
    match std::env::var_os("MARKETBOX_BENCH_BIN") {
        Some(bin) => brokers::Marketbox::start_bin(Path::new(&bin), config, None),
        None => brokers::Marketbox::start(config, None),
    }
}

/// Runs marketbox against the firehose for `secs` after its first book.
fn firehose(secs: u64) -> Figures {
    let fh = Firehose::start();
    let port = brokers::free_port();
    let dir = brokers::TempDir::new("firehose-cfg");
    let path = dir.path().join("marketbox.toml");
    std::fs::write(&path, fh.config(port)).expect("write the config");
    let mut mb = start(&path);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let pid = mb.pid();
    // Paced until the first book: the measured part starts synced.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(mb.is_running(), "marketbox exited:\n{}", mb.log());
        assert!(
            Instant::now() < deadline,
            "no book within 60 s:\n{}",
            mb.log()
        );
        if let Ok(a) = prom::get(addr, "/metrics", &[])
            && metric(
                &a.text(),
                "marketbox_messages_total",
                &[("channel", "orderbook")],
            ) > 0.0
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    fh.market.firehose.store(true, Ordering::SeqCst);
    // A second to reach full speed, then the measured window.
    std::thread::sleep(Duration::from_secs(1));
    let a = sample(pid, addr);
    std::thread::sleep(Duration::from_secs(secs));
    let b = sample(pid, addr);
    assert!(mb.is_running(), "marketbox exited:\n{}", mb.log());
    let peak = status_kb(pid, "VmHWM:");
    let rss = status_kb(pid, "VmRSS:");
    let secs = (b.at - a.at).as_secs_f64();
    let diffs = b.diffs - a.diffs;
    let f = Figures {
        diffs,
        us_per_msg: (b.cpu - a.cpu) * 1e6 / diffs.max(1.0),
        msgs_per_s: diffs / secs,
        resyncs: b.resyncs - a.resyncs,
        books_per_diff: (b.books - a.books) / diffs.max(1.0),
        spool_dropped: b.dropped,
    };
    let sent = fh.market.sent.load(Ordering::SeqCst);
    let bytes = fh.market.bytes.load(Ordering::SeqCst);
    println!(
        "firehose: {diffs:.0} Binance spot depth diffs (25 levels, {:.0} B on average) in {secs:.1} s",
        bytes as f64 / sent.max(1) as f64
    );
    println!(
        "firehose: CPU {:.2} µs per message (utime + stime {:.2} s), {:.0} messages/s",
        f.us_per_msg,
        b.cpu - a.cpu,
        f.msgs_per_s
    );
    println!(
        "firehose: peak RSS {:.1} MB (VmHWM), {:.1} MB at the end (VmRSS)",
        peak as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    println!(
        "firehose: books published per diff {:.3}; resyncs in the window {:.0} (whole run {:.0}); deepenings {:.0}; REST snapshots {}; spool drops {:.0}; WebSocket connections {}",
        f.books_per_diff,
        f.resyncs,
        b.resyncs,
        metric(&b.scrape, "marketbox_book_deepenings_total", &[]),
        fh.market.snapshots.load(Ordering::SeqCst),
        b.dropped,
        fh.market.connections.load(Ordering::SeqCst),
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
    for l in nonzero(&b.scrape, "marketbox_book_resyncs_total") {
        println!("firehose:   {l}");
    }
    mb.kill();
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
    let mut mb = start(&path);
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
    println!(
        "steady: marketbox run, the default config's feeds on the simulators, after {secs} s: VmRSS {:.1} MB, VmHWM {:.1} MB ({books:.0} books published)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    assert!(books > 0.0, "no books published:\n{}", mb.log());
    mb.kill();
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
        // `cargo test`: the debug binary through the same path, briefly; it must sync and
        // publish under the firehose without dropping anything in the spool.
        let f = firehose(2);
        assert!(f.diffs > 0.0, "no diffs read in the window");
        assert!(f.books_per_diff > 0.0, "no books published in the window");
        assert_eq!(f.spool_dropped, 0.0, "the spool dropped messages");
        return;
    }
    let only_firehose = args.iter().any(|a| a == "firehose");
    let only_steady = args.iter().any(|a| a == "steady");
    if !only_steady {
        firehose(secs_after("firehose", 10));
    }
    if !only_firehose {
        steady(secs_after("steady", 20));
    }
}
