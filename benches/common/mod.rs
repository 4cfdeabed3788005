//! What the benchmarks share: an allocation-counting global allocator, the fixtures folder,
//! the output buffer, the fastest-pass timer and the summary lines. Included by each bench
//! with `mod common;` (a folder, so cargo does not take it for a bench of its own).
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use marketbox::model::OrderbookData;

/// Published depth per message.
pub const DEPTH: usize = 20;

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

/// Heap allocations (and reallocations) `f` made.
pub fn allocations_of<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCS.load(Ordering::Relaxed);
    let out = f();
    (out, ALLOCS.load(Ordering::Relaxed) - before)
}

/// `MARKETBOX_FIXTURES`, else `../shared/fixtures` beside the repository.
pub fn fixtures() -> PathBuf {
    std::env::var_os("MARKETBOX_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"))
}

/// The `raw` frames of a `{"recv_ts","raw"}` JSONL capture; `None` when it is absent.
pub fn raw_frames(path: &std::path::Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["raw"].as_str().map(str::to_owned))
            .collect(),
    )
}

/// An empty published book.
pub fn out() -> OrderbookData {
    OrderbookData {
        bids: heapless::Vec::new(),
        asks: heapless::Vec::new(),
        update_id: 0,
    }
}

/// True under `cargo bench`. `cargo test --all-targets` runs the benches too: there only the
/// allocation checks run, as tests; timings need an optimized build.
pub fn timed() -> bool {
    let timed = std::env::args().any(|a| a == "--bench");
    if !timed {
        eprintln!("not run by `cargo bench`: allocation checks only, no timings");
    }
    timed
}

/// Fastest pass of `f` over about `budget` of passes (setup excluded). The minimum, not the
/// mean: the box is shared with builds, and interference only ever adds time.
pub fn time_pass<S>(
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

/// Prints `ns per <unit>` for the bare-parse floor and each step with its ratio to it.
pub fn report(unit: &str, floor: f64, steps: &[(&str, f64)]) {
    eprintln!("ns per {unit}: serde_json IgnoredAny {floor:.0}");
    for (what, ns) in steps {
        eprintln!(
            "ns per {unit}: {what} {ns:.0} ({:.2}x IgnoredAny)",
            ns / floor
        );
    }
}
