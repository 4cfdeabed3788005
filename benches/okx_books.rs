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

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{DEPTH, fixtures, out, time_pass};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use marketbox::config::{Config, Format};
use marketbox::metrics::Metrics;
use marketbox::model::OrderbookData;
use marketbox::session::{Io, Protocol};
use marketbox::upstream::spool::Spool;
use marketbox::upstream::{Publisher, StreamKey};
use marketbox::venue::okx::book::{OkxBook, OkxEvent};
use marketbox::venue::okx::feed::{LevelBuf, OkxProtocol, parse_books_push};

/// The raw frames: (snapshots, updates), in capture order.
fn load() -> Option<(Vec<String>, Vec<String>)> {
    let frames =
        common::raw_frames(&fixtures().join("okx/books_snapshot_and_updates_2022-05-13.jsonl"))?;
    let (snaps, updates) = frames
        .into_iter()
        .partition(|f| f.contains(r#""action":"snapshot""#));
    Some((snaps, updates))
}

/// The capture as production sends it since 2026-06-23: snapshots and updates carry a
/// `seqId`/`prevSeqId` chain per instrument (the 2022 capture predates it), updates carry
/// `"checksum":0`, so the machine follows the chain and skips the CRC.
fn production_shaped(snaps: &[String], updates: &[String]) -> (Vec<String>, Vec<String>) {
    const START: i64 = 1_000;
    let inst = |f: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(f).expect("a capture frame");
        v["arg"]["instId"].as_str().unwrap_or("").to_owned()
    };
    let rewrite = |f: &str, sum: Option<i64>, seq: i64, prev: i64| {
        let key = r#""checksum":"#;
        let at = f
            .find(key)
            .expect("every frame of the capture has a checksum");
        let from = at + key.len();
        let to = f[from..].find([',', '}']).map_or(f.len(), |n| from + n);
        let sum = sum.map_or_else(|| f[from..to].to_owned(), |s| s.to_string());
        format!(
            r#"{}{sum},"seqId":{seq},"prevSeqId":{prev}{}"#,
            &f[..from],
            &f[to..]
        )
    };
    let snaps = snaps.iter().map(|f| rewrite(f, None, START, -1)).collect();
    let mut next: HashMap<String, i64> = HashMap::new();
    let updates = updates
        .iter()
        .map(|f| {
            let seq = next.entry(inst(f)).or_insert(START);
            *seq += 1;
            rewrite(f, Some(0), *seq, *seq - 1)
        })
        .collect();
    (snaps, updates)
}

/// One machine per instrument, synced on its snapshot.
fn synced(snaps: &[String]) -> HashMap<String, OkxBook> {
    let mut books = HashMap::new();
    let mut buf = LevelBuf::new();
    for s in snaps {
        let p = parse_books_push(s, &mut buf).expect("snapshot parses");
        let mut b = OkxBook::new();
        assert!(matches!(
            b.on_ws_snapshot(&p.entries[0]),
            OkxEvent::Applied { .. }
        ));
        books.insert(p.inst_id.to_owned(), b);
    }
    books
}

/// One pass: every update parsed and applied (checksum verified), the depth filled when `fill`.
fn pass(
    books: &mut HashMap<String, OkxBook>,
    updates: &[String],
    fill: bool,
    out: &mut OrderbookData,
) -> u64 {
    let mut applied = 0;
    let mut buf = LevelBuf::new();
    for f in updates {
        let Ok(p) = parse_books_push(black_box(f), &mut buf) else {
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
        let keys = StreamKey::for_socket(socket);
        let spool = Spool::new(64 << 20, Default::default());
        // The publisher reports into the registry as in production (message counter,
        // last-message timestamp, latency histogram), so the allocation check covers them.
        let metrics = Arc::new(Metrics::new());
        let mut s = Socket {
            proto: OkxProtocol::new(socket, &cfg, metrics.clone()),
            publisher: Publisher::new(spool.clone(), Format::Json, &keys, Some(&metrics)),
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
    let (snaps_zero, zeroed) = production_shaped(&snaps, &updates);
    let mut o = out();

    // Steady-state allocations: one synced pass, machines and output built beforehand.
    let mut books = synced(&snaps);
    let (applied, allocs) = common::allocations_of(|| pass(&mut books, &updates, true, &mut o));
    assert_eq!(applied, n, "every update must verify and apply");
    eprintln!(
        "allocations per update: {} ({allocs} over {n} updates, parse + apply + checksum + fill)",
        allocs as f64 / n as f64
    );
    assert_eq!(allocs, 0, "the steady-state books path must not allocate");
    // The socket path, publishing included (BTC-USDT is the configured instrument).
    let mut sock = Socket::new(&snaps);
    sock.drain();
    let ((), allocs) = common::allocations_of(|| {
        for f in &btc {
            sock.text(f);
        }
    });
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

    if !common::timed() {
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
        let mut buf = LevelBuf::new();
        b.iter(|| {
            for f in &updates {
                let _ = black_box(parse_books_push(black_box(f), &mut buf));
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
        time_pass(budget, LevelBuf::new, |buf: &mut LevelBuf| {
            for f in &updates {
                let _ = black_box(parse_books_push(black_box(f), buf));
            }
        }),
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
            || synced(&snaps_zero),
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
    common::report(
        "update",
        floor,
        &[
            ("parse", parse),
            ("parse + apply, checksum 0 (2026 production)", apply_zero),
            ("parse + apply + checksum", apply),
            ("parse + apply + checksum + fill", fill),
        ],
    );
    eprintln!(
        "ns per update: socket path with publish (BTC-USDT only) {socket:.0} ({:.2}x its IgnoredAny {btc_floor:.0})",
        socket / btc_floor
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
