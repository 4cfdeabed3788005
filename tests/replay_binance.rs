//! Replays the real Binance captures in `../shared/fixtures/` (or `MARKETBOX_FIXTURES`) through
//! the wire parser and the book sync machine, and checks the books against the captured
//! `bookTicker` stream. Skips loudly only when the folder is absent.
//!
//! Cross-check rule: Binance pushes a `bookTicker` on every change of the top of the book, so
//! the top at update id `u` is the last ticker with an id `<= u`; it is checked for every
//! applied diff whose `u` lies inside the ticker capture (`first ticker u ..= last ticker u`).
//! This reproduces the fixtures README's figures (132 spot, 252 USD-M). Tickers whose `u` equals
//! an applied id exactly are a subset of these (19 spot, 12 USD-M), also counted.

mod common;

use std::path::Path;

use marketbox::book::BookSide;
use marketbox::model::OrderbookData;
use marketbox::venue::binance::sync::{BookSync, Continuity, ResyncReason, SyncEvent};
use marketbox::venue::binance::wire::{DepthSnapshot, DepthUpdate, Frame, parse_frame};

/// Top of the book as the venue wrote it: `[(bid px, bid qty), (ask px, ask qty)]`.
type Top = [(String, String); 2];

struct Capture {
    snapshot: String,
    diffs: Vec<String>,
    /// `(u, top)` of every ticker, sorted by `u`.
    tickers: Vec<(u64, Top)>,
}

fn load(market: &str, symbol: &str) -> Option<Capture> {
    let dir = common::fixtures()?.join(market);
    let read = |name: String| {
        std::fs::read_to_string(dir.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let mut tickers: Vec<(u64, Top)> =
        common::raw_frames(&dir.join(format!("{symbol}_bookTicker.jsonl")))
            .iter()
            .map(|raw| {
                let v: serde_json::Value = serde_json::from_str(raw).unwrap();
                let t = &v["data"];
                let s = |k: &str| t[k].as_str().unwrap().to_owned();
                let top = [(s("b"), s("B")), (s("a"), s("A"))];
                (t["u"].as_u64().unwrap(), top)
            })
            .collect();
    tickers.sort_by_key(|t| t.0);
    Some(Capture {
        snapshot: read(format!("{symbol}_rest_depth_snapshot_limit1000.json")),
        diffs: common::raw_frames(&dir.join(format!("{symbol}_depth100ms_diffs.jsonl"))),
        tickers,
    })
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let resyncs: Vec<_> = self
            .events
            .iter()
            .filter(|e| matches!(e, SyncEvent::Resync(_)))
            .collect();
        write!(
            f,
            "applied {}, dropped {}, checks {} ({} at an exact id), mismatches {}, resyncs {resyncs:?}",
            self.applied.len(),
            self.dropped,
            self.checks,
            self.exact_id_checks,
            self.mismatches
        )
    }
}

fn depth(raw: &str) -> DepthUpdate<'_> {
    match parse_frame(raw) {
        Ok(Frame::Depth(d)) => d,
        other => panic!("not a depth frame: {other:?}: {raw}"),
    }
}

fn top(sync: &BookSync) -> Top {
    let book = sync.book().expect("an applied diff leaves the book synced");
    let level = |side| {
        let l = book.best(side).expect("both sides hold levels");
        (l.price.to_string(), l.qty.to_string())
    };
    [level(BookSide::Bid), level(BookSide::Ask)]
}

/// What a replay saw.
#[derive(Default)]
struct Replay {
    /// `(U, u)` of every diff applied one by one after the snapshot.
    applied: Vec<(u64, u64)>,
    /// The event of every diff, in order.
    events: Vec<SyncEvent>,
    dropped: u64,
    checks: usize,
    exact_id_checks: usize,
    mismatches: usize,
}

/// Feeds `diffs` (skipping index `skip`), delivering the snapshot as soon as `snapshot_after`
/// diffs have been seen, and cross-checks every applied book against the tickers.
fn replay(cap: &Capture, rule: Continuity, snapshot_after: usize, skip: Option<usize>) -> Replay {
    let snap = DepthSnapshot::parse_str(&cap.snapshot).expect("snapshot parses");
    let mut sync = BookSync::new(rule);
    let mut r = Replay::default();
    let (lo, hi) = (cap.tickers[0].0, cap.tickers[cap.tickers.len() - 1].0);
    // Checks the book at `u`; counted as a cross-check when `u` is a diff's (the README's
    // figures count diffs), while the snapshot's own book is checked uncounted.
    let check = |sync: &BookSync, u: u64, counted: bool, r: &mut Replay| {
        if !(lo..=hi).contains(&u) {
            return;
        }
        let i = cap.tickers.partition_point(|t| t.0 <= u);
        let (tu, want) = &cap.tickers[i - 1];
        if counted {
            r.checks += 1;
            r.exact_id_checks += usize::from(*tu == u);
        }
        let got = top(sync);
        if got != *want {
            r.mismatches += 1;
            eprintln!("book at u={u} {got:?} != ticker at u={tu} {want:?}");
        }
    };
    let mut seen = 0;
    for (i, raw) in cap.diffs.iter().enumerate() {
        if skip == Some(i) {
            continue;
        }
        let d = depth(raw);
        let ev = sync.on_diff(&d);
        r.events.push(ev);
        seen += 1;
        if let SyncEvent::Applied { update_id } = ev {
            assert_eq!(update_id, d.last_id);
            r.applied.push((d.first_id, d.last_id));
            check(&sync, update_id, true, &mut r);
        }
        if seen == snapshot_after {
            let ev = sync.on_snapshot(&snap, 1000);
            assert!(matches!(ev, SyncEvent::Applied { .. }), "snapshot: {ev:?}");
            if let SyncEvent::Applied { update_id } = ev {
                check(&sync, update_id, false, &mut r);
            }
        }
    }
    r.dropped = sync.dropped_diffs();
    r
}

#[test]
fn spot_nknusdt_capture_matches_the_book_ticker_at_every_applied_diff() {
    let Some(cap) = load("binance_spot", "NKNUSDT") else {
        return;
    };
    let l = DepthSnapshot::parse_str(&cap.snapshot)
        .unwrap()
        .last_update_id;
    assert_eq!(l, 499_869_752);
    // The snapshot arrives right after the first diff asked for it.
    let r = replay(&cap, Continuity::Spot, 1, None);
    // The first diff (U=499869750, u=499869752 = L) is dropped; the next starts at U = L+1.
    assert_eq!(r.events[0], SyncEvent::NeedSnapshot);
    assert_eq!(depth(&cap.diffs[0]).first_id, 499_869_750);
    assert_eq!(r.dropped, 1);
    assert_eq!(r.applied.len(), 149);
    assert_eq!(r.applied[0].0, l + 1);
    assert!(r.applied.windows(2).all(|w| w[1].0 == w[0].1 + 1));
    assert_eq!(
        (r.checks, r.exact_id_checks, r.mismatches),
        (132, 19, 0),
        "{r:?}"
    );
}

#[test]
fn usdm_sushiusdt_capture_matches_the_book_ticker_at_every_applied_diff() {
    let Some(cap) = load("binance_perpetual", "SUSHIUSDT") else {
        return;
    };
    let l = DepthSnapshot::parse_str(&cap.snapshot)
        .unwrap()
        .last_update_id;
    assert_eq!(l, 600_859_605_926);
    let r = replay(&cap, Continuity::UsdM, 1, None);
    // Three diffs end before the snapshot (u < L); the first applied spans it: U <= L <= u.
    assert_eq!(r.dropped, 3);
    assert_eq!(r.applied.len(), 252);
    let (first, last) = r.applied[0];
    assert!(first <= l && l <= last, "{first} {l} {last}");
    assert_eq!(
        (r.checks, r.exact_id_checks, r.mismatches),
        (252, 12, 0),
        "{r:?}"
    );
}

#[test]
fn a_late_snapshot_bridges_the_buffered_diffs_with_the_same_books() {
    // TC0/TC1: the snapshot arrives after a few diffs were buffered (the capture's real
    // timing); the buffered ones are applied in one step and every later book still matches.
    for (market, symbol, rule, after, dropped) in [
        ("binance_spot", "NKNUSDT", Continuity::Spot, 4, 1),
        ("binance_perpetual", "SUSHIUSDT", Continuity::UsdM, 6, 3),
    ] {
        let Some(cap) = load(market, symbol) else {
            return;
        };
        let r = replay(&cap, rule, after, None);
        assert_eq!(r.dropped, dropped, "{symbol}");
        assert!(
            r.events[..after]
                .iter()
                .all(|e| matches!(e, SyncEvent::NeedSnapshot | SyncEvent::Buffered))
        );
        assert_eq!(r.applied.len(), cap.diffs.len() - after, "{symbol}");
        assert_eq!(r.mismatches, 0, "{symbol}: {r:?}");
        assert!(r.checks > 100, "{symbol}: {r:?}");
    }
}

#[test]
fn a_capture_with_a_diff_removed_resyncs_with_a_gap_exactly_there() {
    for (market, symbol, rule) in [
        ("binance_spot", "NKNUSDT", Continuity::Spot),
        ("binance_perpetual", "SUSHIUSDT", Continuity::UsdM),
    ] {
        let Some(cap) = load(market, symbol) else {
            return;
        };
        let removed = cap.diffs.len() / 2;
        let (before, after) = (
            depth(&cap.diffs[removed - 1]),
            depth(&cap.diffs[removed + 1]),
        );
        let want = match rule {
            // Spot: U must be the previous u + 1.
            Continuity::Spot => ResyncReason::Gap {
                expected: i128::from(before.last_id) + 1,
                got: i128::from(after.first_id),
            },
            // USD-M: pu must be the previous u.
            Continuity::UsdM => ResyncReason::Gap {
                expected: i128::from(before.last_id),
                got: i128::from(after.prev_last_id.unwrap()),
            },
        };
        let r = replay(&cap, rule, 1, Some(removed));
        // Events are indexed by fed diff: the one after the hole sits at `removed`.
        assert_eq!(r.events[removed], SyncEvent::Resync(want), "{symbol}");
        assert!(
            r.events[..removed]
                .iter()
                .all(|e| !matches!(e, SyncEvent::Resync(_))),
            "{symbol}: resync before the hole"
        );
        // Verified or silent: nothing applies after the gap until a new snapshot.
        assert!(
            r.events[removed + 1..]
                .iter()
                .all(|e| *e == SyncEvent::Buffered),
            "{symbol}"
        );
        assert_eq!(r.mismatches, 0, "{symbol}");
    }
}

#[test]
fn an_unsynced_book_fills_nothing() {
    let Some(cap) = load("binance_spot", "NKNUSDT") else {
        return;
    };
    let mut out = OrderbookData {
        bids: heapless::Vec::new(),
        asks: heapless::Vec::new(),
        update_id: 0,
    };
    let mut sync = BookSync::new(Continuity::Spot);
    // TC0: before the snapshot.
    sync.on_diff(&depth(&cap.diffs[0]));
    assert_eq!(sync.fill(20, &mut out), Ok(false));
    // TC1: synced: 20 levels a side, best first, at the last applied id.
    let snap = DepthSnapshot::parse_str(&cap.snapshot).unwrap();
    sync.on_snapshot(&snap, 1000);
    let d = depth(&cap.diffs[1]);
    assert_eq!(
        sync.on_diff(&d),
        SyncEvent::Applied {
            update_id: d.last_id
        }
    );
    assert_eq!(sync.fill(20, &mut out), Ok(true));
    assert_eq!(
        (out.bids.len(), out.asks.len(), out.update_id),
        (20, 20, d.last_id)
    );
    assert!(out.bids.windows(2).all(|w| w[0].0 > w[1].0));
    assert!(out.asks.windows(2).all(|w| w[0].0 < w[1].0));
    // TC2: after a gap.
    let gap = depth(&cap.diffs[3]);
    assert!(matches!(
        sync.on_diff(&gap),
        SyncEvent::Resync(ResyncReason::Gap { .. })
    ));
    assert_eq!(sync.fill(20, &mut out), Ok(false));
}

/// A canonical one-line description of a parsed single message, fields as the venue wrote them.
fn describe(kind: &str, raw: &str) -> String {
    if kind.starts_with("rest_depth") {
        let s = DepthSnapshot::parse_str(raw).expect("REST depth parses");
        return format!(
            "Snapshot L={} E={:?} T={:?} bids={} asks={}",
            s.last_update_id,
            s.event_time,
            s.transact_time,
            s.bids().count(),
            s.asks().count()
        );
    }
    let f = match parse_frame(raw) {
        Ok(f) => f,
        Err(marketbox::venue::binance::wire::WireError::Unknown(_)) => return "Unknown".into(),
        Err(e) => return format!("Malformed {e}"),
    };
    let lv = |l: marketbox::venue::json::Levels<'_>| {
        l.map(|x| {
            let (p, q) = x.unwrap();
            format!("{p}/{q}")
        })
        .collect::<Vec<_>>()
        .join(" ")
    };
    match f {
        Frame::Depth(d) => format!(
            "Depth {} E={} T={:?} U={} u={} pu={:?} b=[{}] a=[{}]",
            d.symbol,
            d.event_time,
            d.transact_time,
            d.first_id,
            d.last_id,
            d.prev_last_id,
            lv(d.bids()),
            lv(d.asks())
        ),
        Frame::Trade(t) => format!(
            "Trade {} E={} t={} p={} q={} T={} m={}",
            t.symbol, t.event_time, t.id, t.price, t.qty, t.trade_time, t.buyer_is_maker
        ),
        Frame::AggTrade(t) => format!(
            "AggTrade {} E={} a={} p={} q={} f={} l={} T={} m={}",
            t.symbol,
            t.event_time,
            t.id,
            t.price,
            t.qty,
            t.first_trade_id,
            t.last_trade_id,
            t.trade_time,
            t.buyer_is_maker
        ),
        Frame::MarkPrice(m) => format!(
            "MarkPrice {} E={} p={} i={:?} r={} T={}",
            m.symbol,
            m.event_time,
            m.mark_price,
            m.index_price,
            m.funding_rate,
            m.next_funding_time
        ),
        Frame::ForceOrder(f) => {
            let o = &f.order;
            format!(
                "ForceOrder {} E={} S={} q={} p={} ap={:?} X={:?} T={}",
                o.symbol, f.event_time, o.side, o.qty, o.price, o.avg_price, o.status, o.trade_time
            )
        }
        Frame::Reply { id } => format!("Reply {id}"),
        Frame::Error { code, msg } => format!("Error {code} {msg}"),
        Frame::ServerShutdown => "ServerShutdown".into(),
    }
}

fn check_single_messages(file: &Path, want: &[(&str, &str)]) {
    let text = std::fs::read_to_string(file).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), want.len(), "{}: rows changed", file.display());
    for (i, (row, (kind, expected))) in rows.iter().zip(want).enumerate() {
        assert_eq!(
            row["kind"].as_str(),
            Some(*kind),
            "{} TC{i}",
            file.display()
        );
        let raw = row["raw"].as_str().unwrap();
        if kind.starts_with("rest_") && !kind.starts_with("rest_depth") {
            // Bodies of other REST endpoints are not stream frames: they must not panic.
            let _ = parse_frame(raw);
            continue;
        }
        assert_eq!(
            describe(kind, raw),
            *expected,
            "{} TC{i}: {raw}",
            file.display()
        );
    }
}

#[test]
fn spot_single_messages_parse_to_their_variants_with_exact_fields() {
    let Some(dir) = common::fixtures() else {
        return;
    };
    check_single_messages(
        &dir.join("binance_spot/misc_single_messages.jsonl"),
        &[
            // TC0: 2021 aggTrade (with the old "M").
            (
                "aggTrade",
                "AggTrade BTCUSDT E=1616176861895 a=640283266 p=58942.01000000 q=0.00035600 f=716849523 l=716849523 T=1616176861893 m=false",
            ),
            // TC1: a spot diff: no T, no pu.
            (
                "depthUpdate",
                "Depth BTCUSDT E=1622363903670 T=None U=11294093710 u=11294093726 pu=None b=[35743.98000000/0.00000000 35743.87000000/0.00001500] a=[35743.88000000/0.24000000 35743.97000000/0.00000000]",
            ),
            // TC2: /api/v3/depth (cut to 3 levels by the test author).
            (
                "rest_depth_snapshot",
                "Snapshot L=33933317943 E=None T=None bids=3 asks=3",
            ),
            // TC3: 2026 trade (no "b"/"a" order ids any more).
            (
                "trade",
                "Trade BNBUSDT E=1789722601401 t=1587720407 p=755.17000000 q=0.00800000 T=1789722601401 m=false",
            ),
        ],
    );
}

#[test]
fn usdm_single_messages_parse_to_their_variants_with_exact_fields() {
    let Some(dir) = common::fixtures() else {
        return;
    };
    check_single_messages(
        &dir.join("binance_perpetual/misc_single_messages.jsonl"),
        &[
            // TC0: 2021 aggTrade.
            (
                "aggTrade",
                "AggTrade BTCUSDT E=1616202009196 a=389551486 p=58665.00 q=0.043 f=621622993 l=621622993 T=1616202009188 m=false",
            ),
            // TC1: 2021 markPrice.
            (
                "markPrice",
                "MarkPrice BTCUSDT E=1617308820003 p=58940.14924532 i=Some(\"58857.26693664\") r=0.00058455 T=1617321600000",
            ),
            // TC2: the all-market array is not subscribed: unknown, not malformed.
            ("markPrice@arr", "Unknown"),
            // TC3: a USD-M diff with T and pu.
            (
                "depthUpdate",
                "Depth BTCUSDT E=1622371244693 T=Some(1622371244687) U=475776377463 u=475776380184 pu=Some(475776377452) b=[35729.77/1.600 35750.00/5.106] a=[35819.20/0.211 35820.31/0.001]",
            ),
            // TC4/TC5: /fapi/v1/depth with E and T.
            (
                "rest_depth_snapshot",
                "Snapshot L=1570223094073 E=Some(1654231622340) T=Some(1654231622320) bids=3 asks=3",
            ),
            (
                "rest_depth_snapshot",
                "Snapshot L=1570255790655 E=Some(1654232606707) T=Some(1654232606695) bids=3 asks=3",
            ),
            // TC6: another REST body.
            ("rest_openInterest", ""),
            // TC7: 2026 aggTrade: the extra "nq" and "st" are ignored, strings kept exact.
            (
                "aggTrade",
                "AggTrade BTCUSDT E=1786171884624 a=3404749954 p=64990.90 q=0.002 f=7960913511 l=7960913511 T=1786171884471 m=true",
            ),
            // TC8: 2026 markPrice: the extra "ap" and "st" are ignored.
            (
                "markPrice",
                "MarkPrice BTCUSDT E=1786171884000 p=64991.37858696 i=Some(\"65016.05673913\") r=0.00003936 T=1786176000000",
            ),
            // TC9: klines are not parsed.
            ("kline", "Unknown"),
            // TC10: 2026 forceOrder with "ps" and "st" inside the order.
            (
                "forceOrder",
                "ForceOrder STGUSDT E=1786172557615 S=SELL q=5 p=0.1336000 ap=Some(\"0.1355000\") X=Some(\"FILLED\") T=1786172556607",
            ),
            // TC11: the all-market liquidation stream carries the same object.
            (
                "forceOrder@arr",
                "ForceOrder BTCUSDT E=1791565603055 S=SELL q=0.190 p=82338.30 ap=Some(\"82651.90\") X=Some(\"FILLED\") T=1791565602120",
            ),
            // TC12: 2026 USD-M trade with X and st.
            (
                "trade",
                "Trade BTCUSDT E=1785671500407 t=7947131392 p=63105.80 q=0.030 T=1785671500407 m=true",
            ),
            // TC13/TC14: long/short ratio REST bodies.
            ("rest_topLongShortPositionRatio", ""),
            ("rest_globalLongShortAccountRatio", ""),
            // TC15: 2020 forceOrder.
            (
                "forceOrder",
                "ForceOrder BTCUSDT E=1584059031426 S=BUY q=0.014 p=4793.91 ap=Some(\"4706.04\") X=Some(\"FILLED\") T=1584059031421",
            ),
            // TC16: an insurance-fund trade.
            (
                "trade",
                "Trade ETHUSDT E=1596034530241 t=73701056 p=2366.55 q=0.070 T=1596034530235 m=true",
            ),
            // TC17: markPrice@1s.
            (
                "markPrice@1s",
                "MarkPrice BTCUSDT E=1597536008000 p=11857.56000000 i=Some(\"11851.86949091\") r=0.00015640 T=1597564800000",
            ),
        ],
    );
}
