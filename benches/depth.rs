//! ns per Binance depth message (parse + apply into a synced book + fill the published depth)
//! on the real NKNUSDT capture, beside a bare `serde_json` parse of the same bytes into
//! `IgnoredAny`; and heap allocations per steady-state message, counted by a global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use marketbox::model::OrderbookData;
use marketbox::venue::binance::sync::{BookSync, Continuity, SyncEvent};
use marketbox::venue::binance::wire::{DepthSnapshot, Frame, parse_frame};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn fixtures() -> Option<PathBuf> {
    let dir = std::env::var_os("MARKETBOX_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"));
    dir.is_dir().then_some(dir)
}

fn load() -> Option<(Vec<u8>, Vec<String>)> {
    let dir = fixtures()?.join("binance_spot");
    let snap = std::fs::read(dir.join("NKNUSDT_rest_depth_snapshot_limit1000.json")).ok()?;
    let text = std::fs::read_to_string(dir.join("NKNUSDT_depth100ms_diffs.jsonl")).ok()?;
    let frames = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["raw"].as_str().map(str::to_owned))
        .collect();
    Some((snap, frames))
}

/// A machine synced on the snapshot, fed the first `n` frames.
fn synced(snap: &[u8], frames: &[String]) -> BookSync {
    let mut s = BookSync::new(Continuity::Spot);
    if let Ok(Frame::Depth(d)) = parse_frame(&frames[0]) {
        s.on_diff(&d);
    }
    if let Ok(snap) = DepthSnapshot::parse(snap) {
        s.on_snapshot(&snap, 1000);
    }
    s
}

fn bench(c: &mut Criterion) {
    let Some((snap, frames)) = load() else {
        eprintln!("!!! SKIPPED: fixtures not found (set MARKETBOX_FIXTURES) !!!");
        return;
    };
    let live = &frames[1..];
    let mut out = OrderbookData {
        bids: heapless::Vec::new(),
        asks: heapless::Vec::new(),
        update_id: 0,
    };

    // Allocations in the steady state: one pass over the synced stream.
    let mut s = synced(&snap, &frames);
    let before = ALLOCS.load(Ordering::Relaxed);
    let mut applied = 0u64;
    for f in live {
        if let Ok(Frame::Depth(d)) = parse_frame(f)
            && let SyncEvent::Applied { .. } = s.on_diff(&d)
        {
            applied += 1;
            let _ = s.fill(20, &mut out);
        }
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    eprintln!(
        "allocations per message: {:.3} ({allocs} over {applied} applied diffs)",
        allocs as f64 / applied.max(1) as f64
    );

    let bytes: usize = live.iter().map(|f| f.len()).sum();
    eprintln!(
        "{} messages, {:.0} bytes on average",
        live.len(),
        bytes as f64 / live.len() as f64
    );

    let mut g = c.benchmark_group("binance_spot_depth");
    g.throughput(criterion::Throughput::Elements(live.len() as u64));
    g.bench_function("serde_json_ignored_any", |b| {
        b.iter(|| {
            for f in live {
                let _ = black_box(serde_json::from_str::<serde::de::IgnoredAny>(black_box(f)));
            }
        })
    });
    g.bench_function("parse_apply_fill", |b| {
        b.iter_batched_ref(
            || synced(&snap, &frames),
            |s| {
                for f in live {
                    if let Ok(Frame::Depth(d)) = parse_frame(black_box(f))
                        && let SyncEvent::Applied { .. } = s.on_diff(&d)
                    {
                        let _ = s.fill(20, &mut out);
                    }
                }
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
