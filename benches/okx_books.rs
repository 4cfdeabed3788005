//! Cost of one OKX `books` update on the real 2022 capture
//! (`../shared/fixtures/okx`, or `MARKETBOX_FIXTURES`): parse the push as the socket does,
//! apply it through the book machine with the CRC32 checksum verified (every update of the
//! capture carries one), fill the published depth, and the whole socket path
//! (`OkxProtocol::on_text`: parse, apply, checksum, fill, publish into the spool) — beside a
//! bare `serde_json::from_str::<IgnoredAny>` of the same bytes, the floor any JSON parser pays.
//! Heap allocations per steady-state message are counted by a `#[global_allocator]`.
//!
//! The capture holds 3 instruments (BTC-USDT spot, a BTC-USD future, a UNI-USD swap): each
//! timed pass replays their 287 updates into machines freshly synced from their snapshots
//! (the sync runs outside the timed part). A summary line per step gives ns per update and the
//! ratio to the `IgnoredAny` floor.
//!
//! Run: `cargo bench --bench okx_books`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use marketbox::config::{Config, Format};
use marketbox::metrics::Metrics;
use marketbox::model::{Exchange, OrderbookData};
use marketbox::session::{Io, Protocol};
use marketbox::upstream::spool::Spool;
use marketbox::upstream::{Publisher, StreamKey};
use marketbox::venue::okx::book::{OkxBook, OkxEvent};
use marketbox::venue::okx::feed::{OkxProtocol, parse_books_push};

/// Counts every allocation and reallocation.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Published depth per message.
const DEPTH: usize = 20;

fn fixtures() -> PathBuf {
    std::env::var_os("MARKETBOX_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"))
}

/// The raw frames: (snapshots, updates), in capture order.
fn load() -> Option<(Vec<String>, Vec<String>)> {
    let text =
        std::fs::read_to_string(fixtures().join("okx/books_snapshot_and_updates_2022-05-13.jsonl"))
            .ok()?;
    let frames: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["raw"].as_str().map(str::to_owned))
        .collect();
    let (snaps, updates) = frames
        .into_iter()
        .partition(|f| f.contains(r#""action":"snapshot""#));
    Some((snaps, updates))
}

/// The same updates with `"checksum":0`, as production has sent since 2026-06-23: the machine
/// then relies on the seqId chain (absent in 2022, so here nothing is verified) and skips the
/// CRC.
fn zero_checksums(updates: &[String]) -> Vec<String> {
    updates
        .iter()
        .map(|f| {
            let key = r#""checksum":"#;
            let Some(at) = f.find(key) else {
                return f.clone();
            };
            let from = at + key.len();
            let to = f[from..].find([',', '}']).map_or(f.len(), |n| from + n);
            format!("{}0{}", &f[..from], &f[to..])
        })
        .collect()
}

/// One machine per instrument, synced on its snapshot.
fn synced(snaps: &[String]) -> HashMap<String, OkxBook> {
    let mut books = HashMap::new();
    for s in snaps {
        let p = parse_books_push(s).expect("snapshot parses");
        let mut b = OkxBook::new();
        assert!(matches!(
            b.on_ws_snapshot(&p.entries[0]),
            OkxEvent::Applied { .. }
        ));
        books.insert(p.inst_id.to_owned(), b);
    }
    books
}

fn out() -> OrderbookData {
    OrderbookData {
        bids: heapless::Vec::new(),
        asks: heapless::Vec::new(),
        update_id: 0,
    }
}

/// One pass: every update parsed and applied (checksum verified), the depth filled when `fill`.
fn pass(
    books: &mut HashMap<String, OkxBook>,
    updates: &[String],
    fill: bool,
    out: &mut OrderbookData,
) -> u64 {
    let mut applied = 0;
    for f in updates {
        let Ok(p) = parse_books_push(black_box(f)) else {
            continue;
        };
        let Some(b) = books.get_mut(p.inst_id) else {
            continue;
        };
        for d in &p.entries {
            if let OkxEvent::Applied { .. } = b.on_update(d) {
                applied += 1;
                if fill {
                    let _ = black_box(b.fill(DEPTH, out));
                }
            }
        }
    }
    applied
}

/// The socket protocol for the capture's three instruments, with a spool to publish into.
struct Socket {
    proto: OkxProtocol,
    publisher: Publisher,
    spool: Spool,
    send: Vec<String>,
    rest: Vec<marketbox::session::rest::RestRequest>,
}

const CONFIG: &str = r#"
[book]
depth = 20
[[feeds]]
exchange = "okx"
market = "spot"
symbols = ["BTC-USDT"]
channels = ["orderbook"]
"#;

impl Socket {
    fn new(snaps: &[String]) -> Socket {
        let cfg = Config::parse(CONFIG, "bench.toml").expect("config");
        let plan = marketbox::venue::plan(&cfg).expect("plan");
        let socket = &plan.sockets[0];
        let keys: Vec<StreamKey> = socket
            .streams
            .iter()
            .map(|s| StreamKey {
                exchange: Exchange::Okx,
                market: s.market,
                symbol: s.symbol,
                channel: s.channel,
            })
            .collect();
        let spool = Spool::new(64 << 20, Default::default(), Default::default());
        let mut s = Socket {
            proto: OkxProtocol::new(socket, &cfg, Arc::new(Metrics::new())),
            publisher: Publisher::new(spool.clone(), Format::Json, &keys, None),
            spool,
            send: Vec::new(),
            rest: Vec::new(),
        };
        for f in snaps {
            s.text(f);
        }
        s
    }

    fn text(&mut self, t: &str) {
        let mut io = Io {
            send: &mut self.send,
            rest: &mut self.rest,
            publisher: &mut self.publisher,
        };
        black_box(self.proto.on_text(t, Instant::now(), &mut io));
    }

    /// Drains the spool outside the timed part, so every pass publishes into the same space.
    fn drain(&mut self) -> u64 {
        let mut buf = Vec::with_capacity(4096);
        let mut n = 0;
        while self.spool.try_pop(&mut buf).is_some() {
            n += 1;
        }
        n
    }
}

/// Fastest pass of `f` over about `budget` of passes (setup excluded). The minimum, not the
/// mean: the box is shared with builds, and interference only ever adds time.
fn time_pass<S>(
    budget: Duration,
    mut setup: impl FnMut() -> S,
    mut f: impl FnMut(&mut S),
) -> Duration {
    let (mut total, mut best, mut n) = (Duration::ZERO, Duration::MAX, 0u32);
    while total < budget || n < 10 {
        let mut s = setup();
        let t = Instant::now();
        f(&mut s);
        let e = t.elapsed();
        total += e;
        best = best.min(e);
        n += 1;
    }
    best
}

fn bench(c: &mut Criterion) {
    let Some((snaps, updates)) = load() else {
        eprintln!(
            "\n!!! SKIPPED: OKX capture not found under {} (set MARKETBOX_FIXTURES) !!!\n",
            fixtures().display()
        );
        return;
    };
    let n = updates.len() as u64;
    let btc: Vec<String> = updates
        .iter()
        .filter(|f| f.contains(r#""instId":"BTC-USDT""#))
        .cloned()
        .collect();
    let zeroed = zero_checksums(&updates);
    let mut o = out();

    // Steady-state allocations: one synced pass, machines and output built beforehand.
    let mut books = synced(&snaps);
    let before = ALLOCS.load(Ordering::Relaxed);
    let applied = pass(&mut books, &updates, true, &mut o);
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    assert_eq!(applied, n, "every update must verify and apply");
    eprintln!(
        "allocations per update: {} ({allocs} over {n} updates, parse + apply + checksum + fill)",
        allocs as f64 / n as f64
    );
    assert_eq!(allocs, 0, "the steady-state books path must not allocate");
    // The socket path, publishing included (BTC-USDT is the configured instrument).
    let mut sock = Socket::new(&snaps);
    sock.drain();
    let before = ALLOCS.load(Ordering::Relaxed);
    for f in &btc {
        sock.text(f);
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    let published = sock.drain();
    assert_eq!(
        published,
        btc.len() as u64,
        "every BTC-USDT update published"
    );
    eprintln!(
        "allocations per update: {} ({allocs} over {} updates, socket path with publish)",
        allocs as f64 / btc.len() as f64,
        btc.len()
    );
    assert_eq!(allocs, 0, "the steady-state socket path must not allocate");
    let bytes: usize = updates.iter().map(String::len).sum();
    eprintln!("{n} updates, {} bytes on average", bytes / updates.len());

    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs this file too: the allocation checks above are its
        // test; timings need an optimized build (`cargo bench`).
        eprintln!("not run by `cargo bench`: allocation checks only, no timings");
        return;
    }
    let mut g = c.benchmark_group("okx_books_pass");
    g.throughput(Throughput::Elements(n));
    g.bench_function("serde_json_ignored_any", |b| {
        b.iter(|| {
            for f in &updates {
                let _ = black_box(serde_json::from_str::<serde::de::IgnoredAny>(black_box(f)));
            }
        })
    });
    g.bench_function("parse", |b| {
        b.iter(|| {
            for f in &updates {
                let _ = black_box(parse_books_push(black_box(f)));
            }
        })
    });
    for (name, fill) in [
        ("parse_apply_checksum", false),
        ("parse_apply_checksum_fill", true),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || synced(&snaps),
                |s| pass(s, &updates, fill, &mut o),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();

    // Summary: ns per update (fastest pass) and the ratio to the IgnoredAny floor.
    let budget = Duration::from_millis(1000);
    let per = |d: Duration, n: u64| d.as_nanos() as f64 / n as f64;
    let floor = per(
        time_pass(
            budget,
            || (),
            |_| {
                for f in &updates {
                    let _ = black_box(serde_json::from_str::<serde::de::IgnoredAny>(black_box(f)));
                }
            },
        ),
        n,
    );
    let parse = per(
        time_pass(
            budget,
            || (),
            |_| {
                for f in &updates {
                    let _ = black_box(parse_books_push(black_box(f)));
                }
            },
        ),
        n,
    );
    let apply = per(
        time_pass(
            budget,
            || synced(&snaps),
            |s| {
                pass(s, &updates, false, &mut o);
            },
        ),
        n,
    );
    let fill = per(
        time_pass(
            budget,
            || synced(&snaps),
            |s| {
                pass(s, &updates, true, &mut o);
            },
        ),
        n,
    );
    let apply_zero = per(
        time_pass(
            budget,
            || synced(&snaps),
            |s| {
                pass(s, &zeroed, false, &mut o);
            },
        ),
        n,
    );
    let btc_floor = per(
        time_pass(
            budget,
            || (),
            |_| {
                for f in &btc {
                    let _ = black_box(serde_json::from_str::<serde::de::IgnoredAny>(black_box(f)));
                }
            },
        ),
        btc.len() as u64,
    );
    let socket = per(
        time_pass(
            budget,
            || Socket::new(&snaps),
            |s| {
                for f in &btc {
                    s.text(f);
                }
            },
        ),
        btc.len() as u64,
    );
    if cfg!(debug_assertions) {
        eprintln!(
            "(unoptimized build, e.g. `cargo test --all-targets`: the timings below mean nothing; use `cargo bench`)"
        );
    }
    eprintln!("ns per update: serde_json IgnoredAny {floor:.0}");
    for (what, ns) in [
        ("parse", parse),
        ("parse + apply, checksum 0 (2026 production)", apply_zero),
        ("parse + apply + checksum", apply),
        ("parse + apply + checksum + fill", fill),
    ] {
        eprintln!(
            "ns per update: {what} {ns:.0} ({:.2}x IgnoredAny)",
            ns / floor
        );
    }
    eprintln!(
        "ns per update: socket path with publish (BTC-USDT only) {socket:.0} ({:.2}x its IgnoredAny {btc_floor:.0})",
        socket / btc_floor
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
