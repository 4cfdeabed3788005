//! Cost of one Binance depth message on the real NKNUSDT spot capture
//! (`../shared/fixtures/binance_spot`, or `MARKETBOX_FIXTURES`): parse the frame, apply it
//! through the synced book machine, fill the published depth and write it as the JSON message
//! a book stream publishes (levels unchanged since the last book copied) — beside a bare
//! `serde_json::from_str::<IgnoredAny>` of the same bytes, the floor any JSON parser pays.
//! Heap allocations per steady-state message are counted by a `#[global_allocator]`.
//!
//! Each timed pass replays the 149 live diffs into a machine freshly synced from the snapshot;
//! the re-sync (snapshot parse, book load) runs outside the timed part (`iter_batched_ref`).
//! A summary line per step gives ns per message and the ratio to the `IgnoredAny` floor.
//!
//! Run: `cargo bench --bench depth -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::time::Duration;

mod common;

use common::{DEPTH, fixtures, out, time_pass};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use marketbox::config::Format;
use marketbox::encode::{BookTexts, Encoder};
use marketbox::model::{Channel, Data, Exchange, Market, Message, OrderbookData, Symbol};
use marketbox::venue::binance::sync::{BookSync, Continuity, SyncEvent};
use marketbox::venue::binance::wire::{DepthSnapshot, Frame, parse_frame, parse_frame_reading};
use marketbox::venue::json::LevelBuf;

/// The snapshot body and the raw diff frames.
fn load() -> Option<(String, Vec<String>)> {
    let dir = fixtures().join("binance_spot");
    let snap =
        std::fs::read_to_string(dir.join("NKNUSDT_rest_depth_snapshot_limit1000.json")).ok()?;
    let frames = common::raw_frames(&dir.join("NKNUSDT_depth100ms_diffs.jsonl"))?;
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

/// One pass: every live frame parsed as the socket does (levels read with the envelope) and
/// applied, and the depth filled when `fill`.
fn pass(s: &mut BookSync, live: &[String], fill: bool, out: &mut OrderbookData) -> u64 {
    let mut applied = 0;
    let mut buf = LevelBuf::new();
    for f in live {
        if let Ok(Frame::Depth(d)) = parse_frame_reading(black_box(f), &mut buf)
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

/// The message a book stream publishes, its payload `o`.
fn message(o: OrderbookData) -> Message {
    let symbol = Symbol::parse("NKN-USDT").expect("a valid symbol");
    let (exchange, market, channel) = (Exchange::Binance, Market::Spot, Channel::Orderbook);
    Message {
        exchange,
        market,
        symbol,
        channel,
        seq: 1,
        ts_exchange_ms: 1_764_050_000_123,
        ts_local_ns: 1_764_050_000_125_000_000,
        id: marketbox::model::message_id(exchange, market, symbol, channel, 1_234_567_890),
        data: Data::Orderbook(o),
    }
}

/// A [`pass`] that also writes each filled book as its JSON message; returns the bytes written.
fn pass_json(
    s: &mut BookSync,
    live: &[String],
    msg: &mut Message,
    enc: &mut Encoder,
    texts: &mut BookTexts,
) -> usize {
    let mut bytes = 0;
    let mut buf = LevelBuf::new();
    for f in live {
        if let Ok(Frame::Depth(d)) = parse_frame_reading(black_box(f), &mut buf)
            && let SyncEvent::Applied { .. } = s.on_diff(&d)
            && let Data::Orderbook(o) = &mut msg.data
            && s.fill(DEPTH, o).is_ok()
        {
            bytes += enc
                .encode_book(msg, texts)
                .map_or(0, |b| black_box(b).len());
        }
    }
    bytes
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
    let (applied, allocs) = common::allocations_of(|| pass(&mut s, live, true, &mut o));
    assert_eq!(applied, n, "every live diff must apply");
    eprintln!(
        "allocations per message: {} ({allocs} over {n} messages, parse + apply + fill)",
        allocs as f64 / n as f64
    );
    assert_eq!(allocs, 0, "the steady-state depth path must not allocate");
    let (mut msg, mut enc, mut texts) = (
        message(out()),
        Encoder::new(Format::Json),
        BookTexts::default(),
    );
    // The first pass grows the encoder's buffer and the kept texts; the second must not allocate.
    let mut s = synced(&snap, first);
    pass_json(&mut s, live, &mut msg, &mut enc, &mut texts);
    let mut s = synced(&snap, first);
    let (_, allocs) =
        common::allocations_of(|| pass_json(&mut s, live, &mut msg, &mut enc, &mut texts));
    assert_eq!(
        allocs, 0,
        "the steady-state depth path with its JSON must not allocate"
    );
    let bytes: usize = live.iter().map(String::len).sum();
    eprintln!("{n} messages, {} bytes on average", bytes / live.len());

    if !common::timed() {
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
        let mut buf = LevelBuf::new();
        b.iter(|| {
            for f in live {
                let _ = black_box(parse_frame_reading(black_box(f), &mut buf));
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
    let parse = per_msg(time_pass(budget, LevelBuf::new, |buf: &mut LevelBuf| {
        for f in live {
            let _ = black_box(parse_frame_reading(black_box(f), buf));
        }
    }));
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
    let json = per_msg(time_pass(
        budget,
        || synced(&snap, first),
        |s| {
            pass_json(s, live, &mut msg, &mut enc, &mut texts);
        },
    ));
    if cfg!(debug_assertions) {
        eprintln!(
            "(unoptimized build, e.g. `cargo test --all-targets`: the timings below mean nothing; use `cargo bench`)"
        );
    }
    common::report(
        "message",
        floor,
        &[
            ("parse_frame (levels read)", parse),
            ("parse + apply", apply),
            ("parse + apply + fill", fill),
            ("parse + apply + fill + JSON", json),
        ],
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
