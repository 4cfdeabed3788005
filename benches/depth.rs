//! Cost of one Binance depth message on the real NKNUSDT spot capture
//! (`../shared/fixtures/binance_spot`, or `MARKETBOX_FIXTURES`): parse the frame, apply it
//! through the synced book machine, and fill the published depth — beside a bare
//! `serde_json::from_str::<IgnoredAny>` of the same bytes, the floor any JSON parser pays.
//! Heap allocations per steady-state message are counted by a `#[global_allocator]`.
//!
//! Each timed pass replays the 149 live diffs into a machine freshly synced from the snapshot;
//! the re-sync (snapshot parse, book load) runs outside the timed part (`iter_batched_ref`).
//! A summary line per step gives ns per message and the ratio to the `IgnoredAny` floor.
//!
//! Run: `cargo bench --bench depth -- --warm-up-time 1 --measurement-time 3`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use marketbox::model::OrderbookData;
use marketbox::venue::binance::sync::{BookSync, Continuity, SyncEvent};
use marketbox::venue::binance::wire::{DepthSnapshot, Frame, parse_frame};

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

/// Published depth per message (the default config's is in the same range).
const DEPTH: usize = 20;

fn fixtures() -> PathBuf {
    std::env::var_os("MARKETBOX_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"))
}

/// The snapshot body and the raw diff frames.
fn load() -> Option<(String, Vec<String>)> {
    let dir = fixtures().join("binance_spot");
    let snap =
        std::fs::read_to_string(dir.join("NKNUSDT_rest_depth_snapshot_limit1000.json")).ok()?;
    let text = std::fs::read_to_string(dir.join("NKNUSDT_depth100ms_diffs.jsonl")).ok()?;
    let frames = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["raw"].as_str().map(str::to_owned))
        .collect();
    Some((snap, frames))
}

/// A machine synced on the snapshot: the first diff asks for it, the snapshot drops that diff
/// (`u == L`), and the machine waits for the diff that bridges `L`.
fn synced(snap: &str, first: &str) -> BookSync {
    let mut s = BookSync::new(Continuity::Spot);
    let Ok(Frame::Depth(d)) = parse_frame(first) else {
        panic!("the first capture row is not a depth frame")
    };
    assert_eq!(s.on_diff(&d), SyncEvent::NeedSnapshot);
    let snap = DepthSnapshot::parse_str(snap).expect("snapshot parses");
    assert!(matches!(
        s.on_snapshot(&snap, 1000),
        SyncEvent::Applied { .. }
    ));
    s
}

fn out() -> OrderbookData {
    OrderbookData {
        bids: heapless::Vec::new(),
        asks: heapless::Vec::new(),
        update_id: 0,
    }
}

/// One pass: every live frame parsed and applied, and the depth filled when `fill`.
fn pass(s: &mut BookSync, live: &[String], fill: bool, out: &mut OrderbookData) -> u64 {
    let mut applied = 0;
    for f in live {
        if let Ok(Frame::Depth(d)) = parse_frame(black_box(f))
            && let SyncEvent::Applied { .. } = s.on_diff(&d)
        {
            applied += 1;
            if fill {
                let _ = black_box(s.fill(DEPTH, out));
            }
        }
    }
    applied
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
    let Some((snap, frames)) = load() else {
        eprintln!(
            "\n!!! SKIPPED: NKNUSDT capture not found under {} (set MARKETBOX_FIXTURES) !!!\n",
            fixtures().display()
        );
        return;
    };
    let (first, live) = (&frames[0], &frames[1..]);
    let n = live.len() as u64;
    let mut o = out();

    // Steady-state allocations: one synced pass, the machine and output built beforehand.
    let mut s = synced(&snap, first);
    let before = ALLOCS.load(Ordering::Relaxed);
    let applied = pass(&mut s, live, true, &mut o);
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    assert_eq!(applied, n, "every live diff must apply");
    eprintln!(
        "allocations per message: {} ({allocs} over {n} messages, parse + apply + fill)",
        allocs as f64 / n as f64
    );
    assert_eq!(allocs, 0, "the steady-state depth path must not allocate");
    let bytes: usize = live.iter().map(String::len).sum();
    eprintln!("{n} messages, {} bytes on average", bytes / live.len());

    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs this file too: the allocation checks above are its
        // test; timings need an optimized build (`cargo bench`).
        eprintln!("not run by `cargo bench`: allocation checks only, no timings");
        return;
    }
    let mut g = c.benchmark_group("binance_spot_depth_pass");
    g.throughput(Throughput::Elements(n));
    g.bench_function("serde_json_ignored_any", |b| {
        b.iter(|| {
            for f in live {
                let _ = black_box(serde_json::from_str::<serde::de::IgnoredAny>(black_box(f)));
            }
        })
    });
    g.bench_function("parse_frame", |b| {
        b.iter(|| {
            for f in live {
                let _ = black_box(parse_frame(black_box(f)));
            }
        })
    });
    for (name, fill) in [("parse_apply", false), ("parse_apply_fill", true)] {
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || synced(&snap, first),
                |s| pass(s, live, fill, &mut o),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();

    // Summary: ns per message (fastest pass) and the ratio to the IgnoredAny floor.
    let budget = Duration::from_millis(1000);
    let per_msg = |d: Duration| d.as_nanos() as f64 / n as f64;
    let floor = per_msg(time_pass(
        budget,
        || (),
        |_| {
            for f in live {
                let _ = black_box(serde_json::from_str::<serde::de::IgnoredAny>(black_box(f)));
            }
        },
    ));
    let parse = per_msg(time_pass(
        budget,
        || (),
        |_| {
            for f in live {
                let _ = black_box(parse_frame(black_box(f)));
            }
        },
    ));
    let apply = per_msg(time_pass(
        budget,
        || synced(&snap, first),
        |s| {
            pass(s, live, false, &mut o);
        },
    ));
    let fill = per_msg(time_pass(
        budget,
        || synced(&snap, first),
        |s| {
            pass(s, live, true, &mut o);
        },
    ));
    if cfg!(debug_assertions) {
        eprintln!(
            "(unoptimized build, e.g. `cargo test --all-targets`: the timings below mean nothing; use `cargo bench`)"
        );
    }
    eprintln!("ns per message: serde_json IgnoredAny {floor:.0}");
    for (what, ns) in [
        ("parse_frame", parse),
        ("parse + apply", apply),
        ("parse + apply + fill", fill),
    ] {
        eprintln!(
            "ns per message: {what} {ns:.0} ({:.2}x IgnoredAny)",
            ns / floor
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
