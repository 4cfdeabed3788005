//! Replays the real Binance captures in `../shared/fixtures/` through the book sync machine and
//! checks every book state against the captured bookTicker at the same update id.

mod common;

use std::collections::HashMap;

use marketbox::book::BookSide;
use marketbox::venue::binance::sync::{BookSync, Continuity, ResyncReason, SyncEvent};
use marketbox::venue::binance::wire::{DepthSnapshot, Frame, parse_frame};

#[derive(Debug, Default)]
struct Replay {
    dropped: usize,
    applied: usize,
    checks: usize,
    mismatches: usize,
    resyncs: Vec<ResyncReason>,
}

/// Best bid (price, qty) and best ask after each applied update id.
type Tops = HashMap<u64, [(String, String); 2]>;

fn replay(market: &str, symbol: &str, rule: Continuity, skip: Option<usize>) -> Option<Replay> {
    let dir = common::fixtures()?.join(market);
    let snapshot =
        std::fs::read(dir.join(format!("{symbol}_rest_depth_snapshot_limit1000.json"))).unwrap();
    let diffs = common::raw_frames(&dir.join(format!("{symbol}_depth100ms_diffs.jsonl")));
    let tickers = common::raw_frames(&dir.join(format!("{symbol}_bookTicker.jsonl")));

    let mut sync = BookSync::new(rule);
    let mut r = Replay::default();
    let mut tops = Tops::new();
    let snap = DepthSnapshot::parse(&snapshot).unwrap();
    let mut snapshot_done = false;
    for (i, raw) in diffs.iter().enumerate() {
        if skip == Some(i) {
            continue;
        }
        let Ok(Frame::Depth(d)) = parse_frame(raw) else {
            panic!("diff {i} did not parse")
        };
        let mut ev = sync.on_diff(&d);
        if !snapshot_done && matches!(ev, SyncEvent::NeedSnapshot | SyncEvent::Buffered) && i >= 3 {
            // The capture took its snapshot after the first diffs arrived.
            ev = sync.on_snapshot(&snap, 1000);
            snapshot_done = true;
        }
        match ev {
            SyncEvent::Applied { update_id } => {
                r.applied += 1;
                let book = sync.book().unwrap();
                let top = |side| {
                    let l = book.best(side).unwrap();
                    (l.price.to_string(), l.qty.to_string())
                };
                tops.insert(update_id, [top(BookSide::Bid), top(BookSide::Ask)]);
            }
            SyncEvent::Resync(reason) => r.resyncs.push(reason),
            _ => {}
        }
    }
    r.dropped = sync.dropped_diffs() as usize;
    // bookTicker pushes every change of the top of the book, so the top at update id `u` is the
    // last ticker with an id <= u (once the ticker capture has started).
    let mut ticks: Vec<(u64, [(String, String); 2])> = tickers
        .iter()
        .map(|raw| {
            let v: serde_json::Value = serde_json::from_str(raw).unwrap();
            let t = &v["data"];
            let s = |k: &str| t[k].as_str().unwrap().to_owned();
            (
                t["u"].as_u64().unwrap(),
                [(s("b"), s("B")), (s("a"), s("A"))],
            )
        })
        .collect();
    ticks.sort_by_key(|t| t.0);
    let mut ids: Vec<_> = tops.keys().copied().collect();
    ids.sort_unstable();
    for u in ids {
        let i = ticks.partition_point(|t| t.0 <= u);
        if i == 0 {
            continue;
        }
        r.checks += 1;
        let (tu, want) = &ticks[i - 1];
        if tops[&u] != *want {
            r.mismatches += 1;
            eprintln!("book at u={u} {:?} != ticker at u={tu} {want:?}", tops[&u]);
        }
    }
    eprintln!("{market} {symbol}: {r:?}");
    Some(r)
}

#[test]
fn spot_nknusdt_capture_matches_every_book_ticker() {
    let Some(r) = replay("binance_spot", "NKNUSDT", Continuity::Spot, None) else {
        return;
    };
    // The first diff (U=499869750, u=499869752 = L) is dropped by the procedure; the rest apply.
    assert_eq!(r.dropped, 1);
    // 149 diffs apply: 3 buffered ones in one step when the snapshot bridges them, 146 live.
    assert_eq!(r.applied, 1 + 146, "{r:?}");
    assert!(r.resyncs.is_empty(), "{r:?}");
    assert!(r.checks >= 70, "too few cross-checks: {r:?}");
    assert_eq!(r.mismatches, 0);
}

#[test]
fn usdm_sushiusdt_capture_matches_every_book_ticker() {
    let Some(r) = replay("binance_perpetual", "SUSHIUSDT", Continuity::UsdM, None) else {
        return;
    };
    // Three diffs end before the snapshot (u < L) and are dropped.
    assert_eq!(r.dropped, 3, "{r:?}");
    assert!(r.resyncs.is_empty(), "{r:?}");
    assert!(r.checks >= 200, "too few cross-checks: {r:?}");
    assert_eq!(r.mismatches, 0);
}

#[test]
fn a_capture_with_a_missing_diff_is_caught_as_a_gap() {
    for (market, symbol, rule) in [
        ("binance_spot", "NKNUSDT", Continuity::Spot),
        ("binance_perpetual", "SUSHIUSDT", Continuity::UsdM),
    ] {
        let Some(r) = replay(market, symbol, rule, Some(100)) else {
            return;
        };
        assert!(
            matches!(r.resyncs.first(), Some(ResyncReason::Gap { .. })),
            "{market}: a removed diff went unnoticed: {r:?}"
        );
        assert_eq!(r.mismatches, 0, "an unsynced book was compared");
    }
}

/// Every real frame, cut and corrupted at many points, goes through the parser and the sync
/// machine without a panic.
#[test]
fn mutated_real_frames_never_panic() {
    let Some(dir) = common::fixtures() else {
        return;
    };
    let mut frames = common::raw_frames(&dir.join("binance_spot/NKNUSDT_depth100ms_diffs.jsonl"));
    frames.truncate(40);
    let mut rng = fastrand::Rng::with_seed(11);
    let mut sync = BookSync::new(Continuity::Spot);
    let mut errors = 0;
    for f in &frames {
        for _ in 0..50 {
            let mut bytes = f.clone().into_bytes();
            match rng.u8(..3) {
                0 => bytes.truncate(rng.usize(..bytes.len())),
                1 => {
                    let i = rng.usize(..bytes.len());
                    bytes[i] = b"\"[]{},:0-.e9x\\"[rng.usize(..14)];
                }
                _ => {
                    let i = rng.usize(..bytes.len());
                    bytes.insert(i, b'"');
                }
            }
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            match parse_frame(&text) {
                Ok(Frame::Depth(d)) => {
                    sync.on_diff(&d);
                }
                Ok(_) => {}
                Err(_) => errors += 1,
            }
        }
    }
    assert!(
        errors > 100,
        "the mutations should mostly be refused ({errors})"
    );
}
