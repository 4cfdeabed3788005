//! Fuzz targets: one function per parser and state machine, each asserting its invariants.
//!
//! Design: the same functions run under cargo-fuzz (`fuzz/`, coverage-guided, nightly) and in
//! the stable test command (`tests/fuzz_sweep.rs`, a few seconds of seeded mutations each), so
//! an invariant is written once. A target panics when an invariant breaks; it must never panic
//! otherwise, whatever the bytes.
//!
//! The book targets read the bytes as a script for a reference venue (an honest book process
//! with a history of its states) plus a hostile one: honest updates delivered, dropped (gaps),
//! repeated or late, snapshots fresh, stale or cut, reconnects, and hostile updates that carry
//! a detectable defect (negative or unreadable levels, impossible ids, crossing levels, wrong
//! checksums, missing sequence fields). The invariant: every book the machine lets through is
//! the reference venue's book at that update id, never crossed, never negative.
//!
//! Owns: the targets and their invariants. Must not touch: anything at run time (nothing in
//! the service calls this module).

use std::collections::BTreeMap;

use crate::book::{BookSide, Decimal};
use crate::model::OrderbookData;

/// Reads a fuzz input as a stream of small choices; past the end every read is 0.
struct Bytes<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Bytes<'a> {
    fn new(data: &'a [u8]) -> Self {
        Bytes { data, at: 0 }
    }

    fn done(&self) -> bool {
        self.at >= self.data.len()
    }

    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    fn below(&mut self, n: u8) -> u8 {
        self.u8() % n.max(1)
    }
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// `Decimal::parse` never panics; what it accepts prints back to the same digits and value.
pub fn decimal(data: &[u8]) {
    let Some(s) = text(data) else { return };
    if let Ok(d) = Decimal::parse(s) {
        let printed = d.to_string();
        let again = Decimal::parse(&printed).expect("a printed decimal parses");
        assert_eq!(again, d, "{s:?} → {printed:?}");
        assert!(again.is_identical(d), "{s:?} → {printed:?}: digits changed");
        let mut buf = [0u8; crate::book::DECIMAL_TEXT_MAX];
        assert_eq!(d.write_ascii(&mut buf), printed.as_bytes());
    }
}

/// `Config::parse` never panics, whatever the text.
pub fn config(data: &[u8]) {
    if let Some(s) = text(data) {
        let _ = crate::config::Config::parse(s, "fuzz.toml");
    }
}

/// The console's command parser never panics; a command it accepts prints back to a line
/// that parses to the same command.
pub fn console_command(data: &[u8]) {
    use crate::console::command::parse;
    let Some(s) = text(data) else { return };
    if let Ok(cmd) = parse(s) {
        let printed = cmd.to_string();
        assert_eq!(parse(&printed), Ok(cmd), "{s:?} printed as {printed:?}");
    }
}

/// The console's line editor never panics whatever the bytes (noise, escapes, endless
/// lines): it keeps at most `MAX_LINE` bytes of a line, and a line it hands out is at most
/// that (each invalid byte shown as one replacement character) and parses without panic.
pub fn console_line(data: &[u8]) {
    use crate::console::line::{Event, LineEditor, MAX_LINE};
    let mut ed = LineEditor::new(b"\r\n");
    let mut echo = Vec::new();
    for &b in data {
        if let Some(Event::Line(line)) = ed.feed(b, &mut echo) {
            assert!(line.len() <= 3 * MAX_LINE, "a line of {} bytes", line.len());
            let _ = crate::console::command::parse(&line);
        }
        assert!(ed.pending().len() <= MAX_LINE);
        echo.clear();
    }
}

/// `Retry-After` values never panic and never exceed the cap.
pub fn retry_after(data: &[u8]) {
    if let Some(s) = text(data) {
        let now = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1 << 31);
        if let Some(d) = crate::time::parse_retry_after(s, now) {
            assert!(d <= crate::time::MAX_VENUE_DELAY);
        }
    }
}

/// A raw level array walked as a book walks it when its levels were left raw
/// ([`crate::venue::json::Levels`], [`crate::book::sync::read_level`]): the reference the
/// one-pass read of either venue must equal, here and in the wire tests.
/// `None` where the walk meets an error.
pub fn walk_levels(raw: &str) -> Option<Vec<(Decimal, Decimal)>> {
    crate::venue::json::Levels::new(raw)
        .map(|lv| {
            lv.ok()
                .and_then(|(p, q)| crate::book::sync::read_level(p, q).ok())
        })
        .collect()
}

/// Binance frames and REST bodies: parsing never panics; depth levels can be walked, and a
/// depth update's levels read with the envelope are exactly its raw arrays walked.
pub fn binance_frame(data: &[u8]) {
    use crate::book::sync::read_level;
    use crate::venue::binance::wire::{DepthSnapshot, Frame, parse_frame, parse_frame_reading};
    use crate::venue::json::LevelBuf;
    let Some(s) = text(data) else { return };
    let raw = parse_frame(s);
    if let Ok(Frame::Depth(d)) = &raw {
        for (p, q) in d.bids().chain(d.asks()).flatten() {
            let _ = read_level(p, q);
        }
    }
    let mut buf = LevelBuf::new();
    let one = parse_frame_reading(s, &mut buf);
    assert_eq!(
        raw.as_ref().err().map(|e| e.to_string()),
        one.as_ref().err().map(|e| e.to_string()),
        "the two reads differ"
    );
    if let Ok(Frame::Depth(d)) = &one
        && let Some(r) = d.read
    {
        assert_read_as_walked(r, d.bids, d.asks);
    }
    if let Ok(snap) = DepthSnapshot::parse_str(s) {
        let _ = snap.bids().count() + snap.asks().count();
    }
    let _ = crate::venue::binance::poll::parse_open_interest(data, "5m");
    let _ = crate::venue::binance::poll::parse_ratio(data, "5m");
}

/// Levels read with the envelope are exactly the raw arrays walked as a book walks them.
fn assert_read_as_walked(r: crate::venue::json::ReadLevels<'_>, bids: &str, asks: &str) {
    assert_eq!(
        Some(r.bids.to_vec()),
        walk_levels(bids),
        "bids read otherwise"
    );
    assert_eq!(
        Some(r.asks.to_vec()),
        walk_levels(asks),
        "asks read otherwise"
    );
}

/// OKX frames and REST bodies: parsing never panics, and a push's levels read with the
/// envelope are exactly its raw arrays walked as the book walks them.
pub fn okx_frame(data: &[u8]) {
    use crate::venue::json::Levels;
    use crate::venue::okx::wire::{BookData, Frame, LevelBuf, parse_entries, rest_books};
    let Some(s) = text(data) else { return };
    if let Ok(f) = Frame::parse(s)
        && let Some(raw) = f.data
        && let Ok(entries) = parse_entries(raw)
    {
        for d in &entries {
            let walked: BookData<'_> = *d;
            let _ = Levels::new(walked.bids).count() + Levels::new(walked.asks).count();
        }
    }
    let mut buf = LevelBuf::new();
    let one = Frame::parse_reading(s, &mut buf);
    assert_eq!(
        Frame::parse(s).err(),
        one.as_ref().err().copied(),
        "the two reads differ"
    );
    for d in one.iter().flat_map(|f| f.books.iter().flatten()) {
        if let Some(r) = d.read {
            assert_read_as_walked(r, d.bids, d.asks);
        }
    }
    let _ = rest_books(s);
    let _ = crate::venue::okx::poll::parse_ratio(data, "5m");
}

/// A published level.
type Level = (Decimal, Decimal);

/// A fuzz target.
pub type Target = fn(&[u8]);

/// A reference book: price ticks to quantity strings, bids below 101, asks above 100.
#[derive(Debug, Clone, Default, PartialEq)]
struct RefBook {
    bids: BTreeMap<u32, String>,
    asks: BTreeMap<u32, String>,
}

impl RefBook {
    /// A book holding the best bid (100) and ask (101) that never leave.
    fn pinned() -> Self {
        let mut b = RefBook::default();
        b.bids.insert(100, "1".into());
        b.asks.insert(101, "1".into());
        b
    }

    /// The top `n` levels, best first, as values.
    fn top(&self, n: usize) -> (Vec<Level>, Vec<Level>) {
        let level = |(p, q): (&u32, &String)| {
            (
                Decimal::new(i64::from(*p), 0),
                Decimal::parse(q).expect("a reference quantity"),
            )
        };
        (
            self.bids.iter().rev().take(n).map(level).collect(),
            self.asks.iter().take(n).map(level).collect(),
        )
    }

    /// A random change: a side, a price on that side, a quantity (0 removes).
    fn change(&mut self, b: &mut Bytes<'_>) -> (BookSide, u32, String) {
        let side = if b.below(2) == 0 {
            BookSide::Bid
        } else {
            BookSide::Ask
        };
        let price = match side {
            BookSide::Bid => 1 + u32::from(b.below(100)),
            BookSide::Ask => 101 + u32::from(b.below(100)),
        };
        // The best possible bid (100) and ask (101) never leave, so a hostile level at 250 or
        // 0.5 always crosses the book: a defect the machine can see.
        let pinned = matches!((side, price), (BookSide::Bid, 100) | (BookSide::Ask, 101));
        let qty = match b.below(6) {
            0 if !pinned => "0".to_owned(),
            0 => "1".to_owned(),
            n => {
                // Equal values written differently: the book keeps the venue's digits.
                if b.below(2) == 0 {
                    n.to_string()
                } else {
                    format!("{n}.0{}", b.below(10))
                }
            }
        };
        let map = match side {
            BookSide::Bid => &mut self.bids,
            BookSide::Ask => &mut self.asks,
        };
        if qty == "0" {
            map.remove(&price);
        } else {
            map.insert(price, qty.clone());
        }
        (side, price, qty)
    }

    /// `[["p","q"],…]` of the top `n` levels of a side (best first), OKX-style when `okx`.
    fn json_side(&self, side: BookSide, n: usize, okx: bool) -> String {
        let items: Vec<String> = match side {
            BookSide::Bid => self.bids.iter().rev().take(n).collect::<Vec<_>>(),
            BookSide::Ask => self.asks.iter().take(n).collect::<Vec<_>>(),
        }
        .into_iter()
        .map(|(p, q)| level_json(&p.to_string(), q, okx))
        .collect();
        format!("[{}]", items.join(","))
    }

    /// OKX's checksum text of the top 25 levels, hashed independently of the crate's book.
    fn okx_checksum(&self) -> i32 {
        let bids: Vec<(String, String)> = self
            .bids
            .iter()
            .rev()
            .take(25)
            .map(|(p, q)| (p.to_string(), q.clone()))
            .collect();
        let asks: Vec<(String, String)> = self
            .asks
            .iter()
            .take(25)
            .map(|(p, q)| (p.to_string(), q.clone()))
            .collect();
        let mut parts = Vec::new();
        for i in 0..25 {
            for l in [bids.get(i), asks.get(i)].into_iter().flatten() {
                parts.push(format!("{}:{}", l.0, l.1));
            }
        }
        crc32fast::hash(parts.join(":").as_bytes()) as i32
    }
}

fn level_json(p: &str, q: &str, okx: bool) -> String {
    if okx {
        format!(r#"["{p}","{q}","0","1"]"#)
    } else {
        format!(r#"["{p}","{q}"]"#)
    }
}

fn changes_json(changes: &[(BookSide, u32, String)], side: BookSide, okx: bool) -> String {
    let items: Vec<String> = changes
        .iter()
        .filter(|c| c.0 == side)
        .map(|(_, p, q)| level_json(&p.to_string(), q, okx))
        .collect();
    format!("[{}]", items.join(","))
}

/// A hostile level list with a detectable defect.
fn hostile_levels(b: &mut Bytes<'_>, okx: bool) -> (String, String) {
    let lv = |p: &str, q: &str| format!("[{}]", level_json(p, q, okx));
    match b.below(5) {
        0 => (lv("50", "-1"), "[]".into()),
        1 => (lv("-50", "1"), "[]".into()),
        2 => (lv("5O", "1"), "[]".into()),
        // A bid above every ask (asks start at 101).
        3 => (lv("250", "1"), "[]".into()),
        _ => ("[]".into(), lv("0.5", "1")),
    }
}

/// The reference venue's states by update id (bounded).
struct History {
    states: BTreeMap<i128, RefBook>,
}

impl History {
    fn record(&mut self, id: i128, book: &RefBook) {
        self.states.insert(id, book.clone());
        while self.states.len() > 512 {
            self.states.pop_first();
        }
    }
}

const DEPTH: usize = 5;

/// Books the book targets checked against their reference (for reports: a sweep that checks
/// none proves nothing).
pub static BOOKS_CHECKED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Books the protocol targets saw published.
pub static PROTOCOL_BOOKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Checks a book the machine published: the reference's at `id`, not crossed, nothing
/// negative.
fn check_published(out: &OrderbookData, id: i128, history: &History, what: &str) {
    let truth = history
        .states
        .get(&id)
        .unwrap_or_else(|| panic!("{what}: published a book at {id}, an id the venue never had"));
    let (bids, asks) = truth.top(DEPTH);
    assert_eq!(out.bids.as_slice(), bids.as_slice(), "{what}: bids at {id}");
    assert_eq!(out.asks.as_slice(), asks.as_slice(), "{what}: asks at {id}");
    if let (Some(b), Some(a)) = (out.bids.first(), out.asks.first()) {
        assert!(b.0 < a.0, "{what}: crossed book published at {id}");
    }
    for (p, q) in out.bids.iter().chain(out.asks.iter()) {
        assert!(
            !p.is_negative() && !q.is_negative(),
            "{what}: negative level"
        );
    }
    BOOKS_CHECKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

fn empty_out() -> OrderbookData {
    OrderbookData {
        bids: heapless::Vec::new(),
        asks: heapless::Vec::new(),
        update_id: 0,
    }
}

/// The Binance sync machine (spot or USD-M, chosen by the first byte) against a reference
/// venue.
pub fn binance_book(data: &[u8]) {
    use crate::venue::binance::sync::{BookSync, Continuity, SyncEvent};
    use crate::venue::binance::wire::{DepthSnapshot, Frame, parse_frame};
    let mut b = Bytes::new(data);
    let rule = if b.below(2) == 0 {
        Continuity::Spot
    } else {
        Continuity::UsdM
    };
    let usdm = rule == Continuity::UsdM;
    let mut venue = RefBook::pinned();
    let mut history = History {
        states: BTreeMap::new(),
    };
    let mut id: u64 = 1_000 + u64::from(b.u8());
    history.record(i128::from(id), &venue);
    let mut m = BookSync::new(rule);
    let mut last_sent: Option<String> = None;
    let mut steps = 0;
    let check = |m: &mut BookSync, ev: SyncEvent, history: &History| {
        if let SyncEvent::Applied { .. } = ev {
            let mut out = empty_out();
            if let Ok(true) = m.fill(DEPTH, &mut out) {
                check_published(&out, i128::from(out.update_id), history, "binance");
            }
        }
    };
    let frame = |first: u64, last: u64, prev: u64, bids: &str, asks: &str| {
        let pu = if usdm {
            format!(r#","pu":{prev}"#)
        } else {
            String::new()
        };
        format!(
            r#"{{"stream":"x@depth@100ms","data":{{"e":"depthUpdate","E":1,"s":"X","U":{first},"u":{last}{pu},"b":{bids},"a":{asks}}}}}"#
        )
    };
    while !b.done() && steps < 2_000 {
        steps += 1;
        match b.below(10) {
            // An honest diff, delivered (0-3) or lost on the way (4).
            op @ 0..=4 => {
                let n = 1 + b.below(4);
                let changes: Vec<_> = (0..n).map(|_| venue.change(&mut b)).collect();
                let first = id + 1 + if usdm { u64::from(b.below(3)) } else { 0 };
                let last = first + u64::from(b.below(3));
                let text = frame(
                    first,
                    last,
                    id,
                    &changes_json(&changes, BookSide::Bid, false),
                    &changes_json(&changes, BookSide::Ask, false),
                );
                id = last;
                history.record(i128::from(id), &venue);
                if op < 4 {
                    if let Ok(Frame::Depth(d)) = parse_frame(&text) {
                        let ev = m.on_diff(&d);
                        check(&mut m, ev, &history);
                    }
                    last_sent = Some(text);
                }
            }
            // The last diff again.
            5 => {
                if let Some(text) = &last_sent
                    && let Ok(Frame::Depth(d)) = parse_frame(text)
                {
                    let ev = m.on_diff(&d);
                    check(&mut m, ev, &history);
                }
            }
            // A snapshot: fresh or stale, whole or cut.
            6 => {
                let lag = u64::from(b.below(4));
                let at = history
                    .states
                    .range(..=i128::from(id.saturating_sub(lag)))
                    .next_back()
                    .map(|(k, v)| (*k, v.clone()));
                let Some((at, book)) = at else { continue };
                let limit = [3usize, 5, 1000][usize::from(b.below(3))];
                let text = format!(
                    r#"{{"lastUpdateId":{at},"bids":{},"asks":{}}}"#,
                    book.json_side(BookSide::Bid, limit, false),
                    book.json_side(BookSide::Ask, limit, false)
                );
                if let Ok(snap) = DepthSnapshot::parse_str(&text) {
                    let ev = m.on_snapshot(&snap, limit);
                    check(&mut m, ev, &history);
                }
            }
            // A hostile diff: a detectable defect, never applied as the venue's data.
            7 | 8 => {
                let (bids, asks) = hostile_levels(&mut b, false);
                let text = match b.below(4) {
                    0 => frame(id + 1, u64::MAX, id, "[]", "[]"),
                    1 => frame(id + 5, id + 2, id, "[]", "[]"),
                    2 => frame(id + 1, id + 1 + (1 << 41), id, "[]", "[]"),
                    _ => frame(id + 1, id + 1, id, &bids, &asks),
                };
                if let Ok(Frame::Depth(d)) = parse_frame(&text) {
                    let ev = m.on_diff(&d);
                    check(&mut m, ev, &history);
                }
                // The venue's own next diff is the honest continuation of `id`; a hostile
                // diff that claimed `id + 1` made it a duplicate or a gap, as in life.
            }
            // A deeper snapshot for a synced book (fresh or a little old, whole or cut):
            // spliced only when it agrees, and the book stays the venue's.
            9 if b.below(2) == 0 => {
                if m.is_deepening() || m.start_deepening() {
                    let lag = u64::from(b.below(3));
                    let at = history
                        .states
                        .range(..=i128::from(id.saturating_sub(lag)))
                        .next_back()
                        .map(|(k, v)| (*k, v.clone()));
                    let Some((at, book)) = at else { continue };
                    let limit = [5usize, 1000][usize::from(b.below(2))];
                    let text = format!(
                        r#"{{"lastUpdateId":{at},"bids":{},"asks":{}}}"#,
                        book.json_side(BookSide::Bid, limit, false),
                        book.json_side(BookSide::Ask, limit, false)
                    );
                    if let Ok(snap) = DepthSnapshot::parse_str(&text) {
                        let _ = m.on_deep_snapshot(&snap, limit);
                        let mut out = empty_out();
                        if let Ok(true) = m.fill(DEPTH, &mut out) {
                            check_published(
                                &out,
                                i128::from(out.update_id),
                                &history,
                                "binance deepened",
                            );
                        }
                    }
                }
            }
            // A reconnect.
            _ => m.reset(),
        }
    }
}

/// The OKX seqId/checksum machine (WebSocket or REST snapshots, checksums on or zero) against
/// a reference venue.
pub fn okx_book(data: &[u8]) {
    use crate::venue::okx::book::{OkxBook, OkxEvent};
    use crate::venue::okx::wire::BookData;
    let mut b = Bytes::new(data);
    let checksums = b.below(2) == 0;
    let mut venue = RefBook::pinned();
    let mut history = History {
        states: BTreeMap::new(),
    };
    let mut seq: i64 = 10_000 + i64::from(b.u8());
    history.record(i128::from(seq), &venue);
    let mut m = OkxBook::new();
    let mut last_sent: Option<String> = None;
    let mut steps = 0;
    let check = |m: &mut OkxBook, ev: OkxEvent, history: &History| {
        if let OkxEvent::Applied { seq_id } = ev {
            let mut out = empty_out();
            if let Ok(true) = m.fill(DEPTH, &mut out) {
                check_published(&out, i128::from(seq_id), history, "okx");
            }
        }
    };
    let entry = |bids: &str, asks: &str, checksum: i64, ids: &str| {
        format!(r#"{{"asks":{asks},"bids":{bids},"ts":"1","checksum":{checksum}{ids}}}"#)
    };
    while !b.done() && steps < 2_000 {
        steps += 1;
        match b.below(11) {
            // An honest update, delivered (0-3) or lost (4).
            op @ 0..=4 => {
                let n = 1 + b.below(4);
                let changes: Vec<_> = (0..n).map(|_| venue.change(&mut b)).collect();
                let next = seq + 1 + i64::from(b.below(3));
                let sum = if checksums {
                    i64::from(venue.okx_checksum())
                } else {
                    0
                };
                let text = entry(
                    &changes_json(&changes, BookSide::Bid, true),
                    &changes_json(&changes, BookSide::Ask, true),
                    sum,
                    &format!(r#","seqId":{next},"prevSeqId":{seq}"#),
                );
                seq = next;
                history.record(i128::from(seq), &venue);
                if op < 4 {
                    if let Ok(d) = BookData::parse(&text) {
                        let ev = m.on_update(&d);
                        check(&mut m, ev, &history);
                    }
                    last_sent = Some(text);
                }
            }
            // A heartbeat.
            5 => {
                let sum = if checksums {
                    i64::from(venue.okx_checksum())
                } else {
                    0
                };
                let text = entry(
                    "[]",
                    "[]",
                    sum,
                    &format!(r#","seqId":{seq},"prevSeqId":{seq}"#),
                );
                if let Ok(d) = BookData::parse(&text) {
                    let ev = m.on_update(&d);
                    check(&mut m, ev, &history);
                }
            }
            // The last update again.
            6 => {
                if let Some(text) = &last_sent
                    && let Ok(d) = BookData::parse(text)
                {
                    let ev = m.on_update(&d);
                    check(&mut m, ev, &history);
                }
            }
            // A snapshot over the WebSocket (current) or REST (current or stale).
            7 => {
                let ws = b.below(2) == 0;
                let lag = if ws { 0 } else { i64::from(b.below(4)) };
                let at = history
                    .states
                    .range(..=i128::from(seq - lag))
                    .next_back()
                    .map(|(k, v)| (*k, v.clone()));
                let Some((at, book)) = at else { continue };
                let sum = if checksums {
                    i64::from(book.okx_checksum())
                } else {
                    0
                };
                let text = entry(
                    &book.json_side(BookSide::Bid, 400, true),
                    &book.json_side(BookSide::Ask, 400, true),
                    sum,
                    &format!(r#","seqId":{at},"prevSeqId":-1"#),
                );
                if let Ok(d) = BookData::parse(&text) {
                    let ev = if ws {
                        m.on_ws_snapshot(&d)
                    } else {
                        m.on_rest_snapshot(&d)
                    };
                    check(&mut m, ev, &history);
                }
            }
            // A hostile update with a detectable defect.
            8 | 9 => {
                let (bids, asks) = hostile_levels(&mut b, true);
                let ids = format!(r#","seqId":{},"prevSeqId":{seq}"#, seq + 1);
                let text = match b.below(5) {
                    0 => entry(&bids, &asks, 0, ""),
                    1 => entry(
                        "[]",
                        "[]",
                        0,
                        &format!(r#","seqId":9223372036854775807,"prevSeqId":{seq}"#),
                    ),
                    // A wrong non-zero checksum on honest-looking content.
                    2 if checksums => entry("[]", "[]", i64::from(venue.okx_checksum()) ^ 1, &ids),
                    3 => entry("[]", "[]", 0, &format!(r#","seqId":{}"#, seq + 1)),
                    _ => entry(&bids, &asks, 0, &ids),
                };
                if let Ok(d) = BookData::parse(&text) {
                    let ev = m.on_update(&d);
                    check(&mut m, ev, &history);
                }
            }
            // A reconnect or resubscribe.
            _ => m.reset(),
        }
    }
}

/// A socket's whole protocol (the default config's first socket of `exchange`) fed the input
/// as frames (one per line; a line starting with `REST ` is a 200 answer to the newest REST
/// request): nothing panics, every message published decodes, and no published book is
/// crossed or negative.
fn protocol(data: &[u8], exchange: crate::model::Exchange) {
    use std::time::{Duration, Instant};

    use crate::model::{Data, Message};
    use crate::session::{Connected, Io};
    use crate::upstream::spool::Spool;
    use crate::upstream::{Publisher, StreamKey};

    const DEFAULT: &str = include_str!("../config/marketbox.toml");
    let Some(s) = text(data) else { return };
    let Ok(cfg) = crate::config::Config::parse(DEFAULT, "marketbox.toml") else {
        panic!("the default config parses");
    };
    let Ok(plan) = crate::venue::plan(&cfg) else {
        panic!("the default config plans");
    };
    let Some(socket) = plan.sockets.iter().find(|s| s.exchange == exchange) else {
        panic!("the default config has a {exchange} socket");
    };
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let Some(mut proto) = crate::venue::protocol_for(socket, &cfg, &metrics) else {
        panic!("a protocol for {exchange}");
    };
    let spool = Spool::new(1 << 20, Default::default());
    let keys = StreamKey::for_socket(socket);
    let mut publisher = Publisher::new(spool.clone(), cfg.upstream.format, &keys, None);
    let (mut send, mut rest) = (Vec::new(), Vec::new());
    let mut now = Instant::now();
    let mut io = Io {
        send: &mut send,
        rest: &mut rest,
        publisher: &mut publisher,
    };
    proto.on_connected(now, &mut io, Connected::Fresh);
    let mut buf = Vec::new();
    for line in s.split('\n').take(500) {
        now += Duration::from_millis(50);
        let mut io = Io {
            send: &mut send,
            rest: &mut rest,
            publisher: &mut publisher,
        };
        match line.strip_prefix("REST ") {
            Some(body) => {
                if let Some(req) = io.rest.pop() {
                    let resp = crate::net::http::RestResponse {
                        status: 200,
                        retry_after: None,
                        used_weight: None,
                        body: body.as_bytes().to_vec(),
                    };
                    proto.on_rest(req.tag, Ok(resp), now, &mut io);
                }
            }
            None if line == "TICK" => {
                let _ = proto.on_tick(now, &mut io);
            }
            None => {
                let _ = proto.on_text(line, now, &mut io);
            }
        }
        send.clear();
        while spool.try_pop(&mut buf).is_some() {
            let msg: Message = serde_json::from_slice(&buf).expect("a published message decodes");
            if let Data::Orderbook(ob) = &msg.data {
                PROTOCOL_BOOKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let (Some(b), Some(a)) = (ob.bids.first(), ob.asks.first()) {
                    assert!(b.0 < a.0, "{exchange}: a crossed book was published");
                }
                for (p, q) in ob.bids.iter().chain(ob.asks.iter()) {
                    assert!(
                        !p.is_negative() && !q.is_negative(),
                        "{exchange}: negative level"
                    );
                }
            }
        }
    }
}

/// The Binance spot socket's protocol, end to end (see [`protocol`]).
pub fn binance_protocol(data: &[u8]) {
    protocol(data, crate::model::Exchange::Binance);
}

/// The OKX socket's protocol, end to end (see [`protocol`]).
pub fn okx_protocol(data: &[u8]) {
    protocol(data, crate::model::Exchange::Okx);
}

/// Every target, by name (for the stable sweep and `fuzz/`).
pub const TARGETS: [(&str, Target); 11] = [
    ("decimal", decimal),
    ("config", config),
    ("retry_after", retry_after),
    ("binance_frame", binance_frame),
    ("okx_frame", okx_frame),
    ("binance_book", binance_book),
    ("okx_book", okx_book),
    ("binance_protocol", binance_protocol),
    ("okx_protocol", okx_protocol),
    ("console_command", console_command),
    ("console_line", console_line),
];
