//! Binance book synchronisation, as a sans-I/O state machine per symbol.
//!
//! Design: the documented procedure, one input at a time (`on_diff`, `on_snapshot`, `reset`),
//! each returning what the session must do. States are named for what they wait for:
//!
//! ```text
//! AwaitingFirstDiff ──diff──▶ AwaitingSnapshot{buffer} ──snapshot──▶ Bridging{L} | Synced{u}
//!        ▲                          ▲   (stale snapshot: ask again)        │ first diff spans L
//!        └──── reset ───────────────┴──── gap / truncated / malformed ◀────┴─▶ Synced{u}
//! ```
//!
//! Spot (`/api/v3/depth` + `@depth`): 1. buffer the stream's diffs; 2. get a snapshot,
//! L = `lastUpdateId`; 3. if no buffered diff can follow it (L older than the buffer) get
//! another; 4. drop diffs with `u <= L`; 5. the first applied diff has `U <= L+1 <= u`;
//! 6. afterwards each `U` is the previous `u + 1`, else the book is invalid: resync.
//!
//! USD-M (`/fapi/v1/depth` + `@depth`): the same, except diffs with `u < L` are dropped, the
//! first applied has `U <= L <= u`, and afterwards each diff's `pu` is the previous `u` (gaps in
//! `U` are normal there).
//!
//! Buffered diffs are owned copies (the resync path may allocate); the synced path applies the
//! borrowed frame straight into the book and allocates nothing.

use std::collections::VecDeque;

use super::wire::{DepthSnapshot, DepthUpdate};
use crate::book::{BOOK_CAPACITY, Book, BookSide, Decimal};
use crate::model::OrderbookData;
use crate::venue::json::Levels;

/// Which continuity rule a market follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuity {
    Spot,
    UsdM,
}

/// Why a book was marked unsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncReason {
    /// The diff chain broke.
    Gap { expected: u64, got: u64 },
    /// The snapshot is older than every buffered diff.
    StaleSnapshot,
    /// The book was cut (capacity or snapshot limit) below the published depth.
    Truncated,
    /// A level could not be read.
    Malformed,
}

impl ResyncReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            ResyncReason::Gap { .. } => "gap",
            ResyncReason::StaleSnapshot => "stale_snapshot",
            ResyncReason::Truncated => "truncated",
            ResyncReason::Malformed => "malformed",
        }
    }
}

/// What the session must do after an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncEvent {
    /// Fetch a snapshot for this symbol.
    NeedSnapshot,
    /// Diff kept until the snapshot arrives.
    Buffered,
    /// Diff older than the book: ignored, as the procedure says.
    Dropped,
    /// The book is verified at `update_id`: publish it.
    Applied { update_id: u64 },
    /// The book is unsynced; fetch a new snapshot. Nothing is published until it is synced.
    Resync(ResyncReason),
    /// A snapshot nobody waits for (after a reset): ignored.
    Ignored,
}

/// Most diffs buffered while a snapshot is fetched (200 s of 100 ms diffs); older ones are
/// dropped, which at worst makes the snapshot stale and fetched again.
pub const MAX_BUFFERED: usize = 2000;

#[derive(Debug, Clone)]
struct OwnedDiff {
    first: u64,
    last: u64,
    prev: Option<u64>,
    bids: Vec<(Decimal, Decimal)>,
    asks: Vec<(Decimal, Decimal)>,
}

/// The states of one symbol's book.
#[derive(Debug)]
enum State {
    /// Nothing received since (re)connect; the first diff triggers the snapshot request.
    AwaitingFirstDiff,
    /// Buffering diffs while the snapshot is fetched.
    AwaitingSnapshot { buffered: VecDeque<OwnedDiff> },
    /// Snapshot `L` applied; waiting for the diff that spans it.
    Bridging { snapshot_id: u64 },
    /// Verified through `last_id`.
    Synced { last_id: u64 },
}

/// The sync machine and the book it guards.
pub struct BookSync {
    rule: Continuity,
    state: State,
    book: Box<Book<BOOK_CAPACITY>>,
    dropped: u64,
}

fn parse_levels(levels: Levels<'_>, out: &mut Vec<(Decimal, Decimal)>) -> Result<(), ResyncReason> {
    for lv in levels {
        let (p, q) = lv.map_err(|_| ResyncReason::Malformed)?;
        let p = Decimal::parse(p).map_err(|_| ResyncReason::Malformed)?;
        let q = Decimal::parse(q).map_err(|_| ResyncReason::Malformed)?;
        out.push((p, q));
    }
    Ok(())
}

/// Applies levels straight from the frame (no allocation).
fn apply_raw(
    book: &mut Book<BOOK_CAPACITY>,
    side: BookSide,
    levels: Levels<'_>,
) -> Result<(), ResyncReason> {
    for lv in levels {
        let (p, q) = lv.map_err(|_| ResyncReason::Malformed)?;
        let p = Decimal::parse(p).map_err(|_| ResyncReason::Malformed)?;
        let q = Decimal::parse(q).map_err(|_| ResyncReason::Malformed)?;
        if p.is_negative() || q.is_negative() {
            return Err(ResyncReason::Malformed);
        }
        book.apply(side, p, q);
    }
    Ok(())
}

impl BookSync {
    pub fn new(rule: Continuity) -> Self {
        BookSync {
            rule,
            state: State::AwaitingFirstDiff,
            book: Book::new_boxed(),
            dropped: 0,
        }
    }

    /// The socket was replaced: everything starts over.
    pub fn reset(&mut self) {
        self.state = State::AwaitingFirstDiff;
        self.book.clear();
    }

    /// Marks the book unsynced (after a resync reason found outside, e.g. truncation).
    fn unsync(&mut self) {
        self.state = State::AwaitingSnapshot {
            buffered: VecDeque::new(),
        };
        self.book.clear();
    }

    /// Diffs the procedure dropped as older than the book (buffered or live).
    pub fn dropped_diffs(&self) -> u64 {
        self.dropped
    }

    pub fn is_synced(&self) -> bool {
        matches!(self.state, State::Synced { .. } | State::Bridging { .. })
    }

    /// The verified book (for tests and status), only while synced.
    pub fn book(&self) -> Option<&Book<BOOK_CAPACITY>> {
        self.is_synced().then_some(&*self.book)
    }

    /// Whether a diff `(U, u, pu)` may follow a book at `last` (after the first applied diff).
    fn follows(&self, last: u64, first: u64, prev: Option<u64>) -> Result<(), ResyncReason> {
        match self.rule {
            Continuity::Spot if first == last + 1 => Ok(()),
            Continuity::Spot => Err(ResyncReason::Gap {
                expected: last + 1,
                got: first,
            }),
            Continuity::UsdM if prev == Some(last) => Ok(()),
            Continuity::UsdM => Err(ResyncReason::Gap {
                expected: last,
                got: prev.unwrap_or(0),
            }),
        }
    }

    /// Whether a diff is older than the snapshot `l` (dropped by the procedure).
    fn before_snapshot(&self, l: u64, last: u64) -> bool {
        match self.rule {
            Continuity::Spot => last <= l,
            Continuity::UsdM => last < l,
        }
    }

    /// Whether a diff `[U, u]` is the first to apply on a snapshot `l`.
    fn spans(&self, l: u64, first: u64, last: u64) -> bool {
        match self.rule {
            Continuity::Spot => first <= l + 1 && l < last,
            Continuity::UsdM => first <= l && l <= last,
        }
    }

    fn fail(&mut self, reason: ResyncReason) -> SyncEvent {
        self.unsync();
        SyncEvent::Resync(reason)
    }

    /// One diff from the stream.
    pub fn on_diff(&mut self, d: &DepthUpdate<'_>) -> SyncEvent {
        let (first, last, prev) = (d.first_id, d.last_id, d.prev_last_id);
        match &mut self.state {
            State::AwaitingFirstDiff | State::AwaitingSnapshot { .. } => {
                let mut owned = OwnedDiff {
                    first,
                    last,
                    prev,
                    bids: Vec::new(),
                    asks: Vec::new(),
                };
                if let Err(r) = parse_levels(d.bids(), &mut owned.bids)
                    .and_then(|()| parse_levels(d.asks(), &mut owned.asks))
                {
                    return self.fail(r);
                }
                let ask = matches!(self.state, State::AwaitingFirstDiff);
                if ask {
                    self.state = State::AwaitingSnapshot {
                        buffered: VecDeque::new(),
                    };
                }
                if let State::AwaitingSnapshot { buffered } = &mut self.state {
                    if buffered.len() >= MAX_BUFFERED {
                        buffered.pop_front();
                    }
                    buffered.push_back(owned);
                }
                if ask {
                    SyncEvent::NeedSnapshot
                } else {
                    SyncEvent::Buffered
                }
            }
            State::Bridging { snapshot_id } => {
                let l = *snapshot_id;
                if self.before_snapshot(l, last) {
                    self.dropped += 1;
                    return SyncEvent::Dropped;
                }
                if !self.spans(l, first, last) {
                    // The stream is already past the snapshot: the snapshot is stale.
                    return self.fail(ResyncReason::StaleSnapshot);
                }
                self.apply_borrowed(d)
            }
            State::Synced { last_id } => {
                let l = *last_id;
                if last <= l {
                    self.dropped += 1;
                    return SyncEvent::Dropped;
                }
                if let Err(r) = self.follows(l, first, prev) {
                    return self.fail(r);
                }
                self.apply_borrowed(d)
            }
        }
    }

    fn apply_borrowed(&mut self, d: &DepthUpdate<'_>) -> SyncEvent {
        let r = apply_raw(&mut self.book, BookSide::Bid, d.bids())
            .and_then(|()| apply_raw(&mut self.book, BookSide::Ask, d.asks()));
        match r {
            Ok(()) => {
                self.state = State::Synced { last_id: d.last_id };
                SyncEvent::Applied {
                    update_id: d.last_id,
                }
            }
            Err(reason) => self.fail(reason),
        }
    }

    /// A REST snapshot that was asked for with `limit` levels per side.
    pub fn on_snapshot(&mut self, snap: &DepthSnapshot<'_>, limit: usize) -> SyncEvent {
        let buffered = match &mut self.state {
            State::AwaitingSnapshot { buffered } => std::mem::take(buffered),
            _ => return SyncEvent::Ignored,
        };
        let l = snap.last_update_id;
        // Step 3: a snapshot older than everything buffered cannot be bridged: ask again.
        let kept: Vec<&OwnedDiff> = buffered
            .iter()
            .filter(|d| !self.before_snapshot(l, d.last))
            .collect();
        let dropped = (buffered.len() - kept.len()) as u64;
        if let Some(first) = kept.first()
            && !self.spans(l, first.first, first.last)
        {
            self.state = State::AwaitingSnapshot { buffered };
            return SyncEvent::Resync(ResyncReason::StaleSnapshot);
        }
        self.dropped += dropped;
        self.book.clear();
        for (side, levels) in [(BookSide::Bid, snap.bids()), (BookSide::Ask, snap.asks())] {
            let mut n = 0;
            for lv in levels {
                let parsed = lv
                    .ok()
                    .and_then(|(p, q)| Some((Decimal::parse(p).ok()?, Decimal::parse(q).ok()?)));
                let Some((p, q)) = parsed else {
                    self.state = State::AwaitingSnapshot { buffered };
                    self.book.clear();
                    return SyncEvent::Resync(ResyncReason::Malformed);
                };
                self.book.apply(side, p, q);
                n += 1;
            }
            if n >= limit {
                // The venue cut the snapshot: below its last level the book is unknown.
                self.book.bound_at_worst(side);
            }
        }
        let mut last_id = l;
        let mut bridged = false;
        for d in kept {
            if bridged && let Err(r) = self.follows(last_id, d.first, d.prev) {
                return self.fail(r);
            }
            bridged = true;
            for (p, q) in &d.bids {
                self.book.apply(BookSide::Bid, *p, *q);
            }
            for (p, q) in &d.asks {
                self.book.apply(BookSide::Ask, *p, *q);
            }
            last_id = d.last;
        }
        self.state = if bridged {
            State::Synced { last_id }
        } else {
            State::Bridging { snapshot_id: l }
        };
        SyncEvent::Applied { update_id: last_id }
    }

    /// Fills `out` with the top `depth` levels when the book is synced. `Ok(false)` while
    /// unsynced; `Err(Truncated)` when the book cannot vouch for `depth` levels any more (it
    /// is then unsynced and a snapshot must be fetched).
    pub fn fill(&mut self, depth: usize, out: &mut OrderbookData) -> Result<bool, ResyncReason> {
        let update_id = match self.state {
            State::Synced { last_id } => last_id,
            State::Bridging { snapshot_id } => snapshot_id,
            _ => return Ok(false),
        };
        match self.book.fill(depth, out) {
            Ok(()) => {
                out.update_id = update_id;
                Ok(true)
            }
            Err(_) => {
                self.unsync();
                Err(ResyncReason::Truncated)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::venue::binance::wire::{Frame, parse_frame};

    fn diff_text(first: u64, last: u64, prev: Option<u64>, bid: &str) -> String {
        let pu = prev.map(|p| format!(",\"pu\":{p}")).unwrap_or_default();
        format!(
            r#"{{"stream":"x@depth@100ms","data":{{"e":"depthUpdate","E":1,"s":"X","U":{first},"u":{last}{pu},"b":[["{bid}","1"]],"a":[["100","1"]]}}}}"#
        )
    }

    fn feed(s: &mut BookSync, first: u64, last: u64, prev: Option<u64>, bid: &str) -> SyncEvent {
        let t = diff_text(first, last, prev, bid);
        let Ok(Frame::Depth(d)) = parse_frame(&t) else {
            panic!("bad test frame")
        };
        s.on_diff(&d)
    }

    fn snap(s: &mut BookSync, l: u64) -> SyncEvent {
        let t = format!(r#"{{"lastUpdateId":{l},"bids":[["1","1"]],"asks":[["200","1"]]}}"#);
        let snap = DepthSnapshot::parse(t.as_bytes()).unwrap();
        s.on_snapshot(&snap, 1000)
    }

    #[test]
    fn tc0_the_first_diff_asks_for_a_snapshot_and_later_ones_buffer() {
        let mut s = BookSync::new(Continuity::Spot);
        assert_eq!(feed(&mut s, 10, 12, None, "5"), SyncEvent::NeedSnapshot);
        assert_eq!(feed(&mut s, 13, 15, None, "5"), SyncEvent::Buffered);
        assert!(!s.is_synced());
    }

    #[test]
    fn tc1_spot_drops_u_le_l_and_applies_from_u_eq_l_plus_1() {
        let mut s = BookSync::new(Continuity::Spot);
        feed(&mut s, 10, 12, None, "5"); // u <= L: dropped
        feed(&mut s, 13, 15, None, "6"); // U = L+1: first applied
        feed(&mut s, 16, 16, None, "7");
        assert_eq!(snap(&mut s, 12), SyncEvent::Applied { update_id: 16 });
        let book = s.book().unwrap();
        assert_eq!(book.best(BookSide::Bid).unwrap().price.to_string(), "7");
        // Snapshot bid 1 plus 6 and 7; the dropped diff's 5 never applied.
        assert_eq!(book.len(BookSide::Bid), 3);
    }

    #[test]
    fn tc2_spot_a_snapshot_inside_the_first_diff_bridges_it() {
        let mut s = BookSync::new(Continuity::Spot);
        feed(&mut s, 10, 20, None, "5");
        // U=10 <= L+1=16 <= u=20.
        assert_eq!(snap(&mut s, 15), SyncEvent::Applied { update_id: 20 });
    }

    #[test]
    fn tc3_a_snapshot_older_than_the_buffer_is_stale_and_the_buffer_kept() {
        let mut s = BookSync::new(Continuity::Spot);
        feed(&mut s, 10, 12, None, "5");
        // L+1 = 9 < U = 10.
        assert_eq!(
            snap(&mut s, 8),
            SyncEvent::Resync(ResyncReason::StaleSnapshot)
        );
        assert_eq!(feed(&mut s, 13, 13, None, "5"), SyncEvent::Buffered);
        assert_eq!(snap(&mut s, 9), SyncEvent::Applied { update_id: 13 });
    }

    #[test]
    fn tc4_spot_gap_after_sync_resyncs_and_publishes_nothing() {
        let mut s = BookSync::new(Continuity::Spot);
        feed(&mut s, 10, 12, None, "5");
        snap(&mut s, 11);
        assert_eq!(
            feed(&mut s, 13, 14, None, "5"),
            SyncEvent::Applied { update_id: 14 }
        );
        // TC: U must be 15.
        assert_eq!(
            feed(&mut s, 16, 17, None, "5"),
            SyncEvent::Resync(ResyncReason::Gap {
                expected: 15,
                got: 16
            })
        );
        assert!(s.book().is_none());
        let mut out = OrderbookData {
            bids: heapless::Vec::new(),
            asks: heapless::Vec::new(),
            update_id: 0,
        };
        assert_eq!(s.fill(5, &mut out), Ok(false));
        // Buffering resumes at once; the next snapshot re-syncs.
        assert_eq!(feed(&mut s, 18, 18, None, "5"), SyncEvent::Buffered);
        assert_eq!(snap(&mut s, 17), SyncEvent::Applied { update_id: 18 });
    }

    #[test]
    fn tc5_a_duplicate_diff_after_sync_is_dropped() {
        let mut s = BookSync::new(Continuity::Spot);
        feed(&mut s, 10, 12, None, "5");
        snap(&mut s, 11);
        assert_eq!(feed(&mut s, 11, 12, None, "5"), SyncEvent::Dropped);
    }

    #[test]
    fn tc6_a_snapshot_newer_than_the_buffer_bridges_on_the_next_diff() {
        let mut s = BookSync::new(Continuity::Spot);
        feed(&mut s, 10, 12, None, "5");
        assert_eq!(snap(&mut s, 20), SyncEvent::Applied { update_id: 20 });
        assert_eq!(feed(&mut s, 15, 20, None, "5"), SyncEvent::Dropped);
        assert_eq!(
            feed(&mut s, 21, 22, None, "9"),
            SyncEvent::Applied { update_id: 22 }
        );
        // …but a first diff past L+1 means the snapshot was stale.
        let mut s = BookSync::new(Continuity::Spot);
        feed(&mut s, 10, 12, None, "5");
        snap(&mut s, 20);
        assert_eq!(
            feed(&mut s, 23, 25, None, "5"),
            SyncEvent::Resync(ResyncReason::StaleSnapshot)
        );
    }

    #[test]
    fn tc7_usdm_drops_u_lt_l_and_first_applied_spans_l() {
        let mut s = BookSync::new(Continuity::UsdM);
        feed(&mut s, 5, 9, Some(4), "5"); // u < L=10: dropped
        feed(&mut s, 10, 14, Some(9), "6"); // U <= 10 <= u: first applied (u == L is kept)
        feed(&mut s, 20, 22, Some(14), "7"); // pu chain, U jumps: normal on futures
        assert_eq!(snap(&mut s, 10), SyncEvent::Applied { update_id: 22 });
        assert_eq!(
            feed(&mut s, 30, 31, Some(22), "8"),
            SyncEvent::Applied { update_id: 31 }
        );
    }

    #[test]
    fn tc8_usdm_broken_pu_chain_resyncs() {
        let mut s = BookSync::new(Continuity::UsdM);
        feed(&mut s, 10, 14, Some(9), "6");
        snap(&mut s, 12);
        assert_eq!(
            feed(&mut s, 20, 22, Some(15), "7"),
            SyncEvent::Resync(ResyncReason::Gap {
                expected: 14,
                got: 15
            })
        );
    }

    #[test]
    fn tc9_usdm_edge_u_equals_l_is_kept() {
        let mut s = BookSync::new(Continuity::UsdM);
        feed(&mut s, 8, 10, Some(7), "6");
        assert_eq!(snap(&mut s, 10), SyncEvent::Applied { update_id: 10 });
        assert!(s.is_synced());
    }

    #[test]
    fn tc10_reset_forgets_the_book() {
        let mut s = BookSync::new(Continuity::Spot);
        feed(&mut s, 10, 12, None, "5");
        snap(&mut s, 11);
        s.reset();
        assert!(s.book().is_none());
        assert_eq!(snap(&mut s, 11), SyncEvent::Ignored);
        assert_eq!(feed(&mut s, 13, 13, None, "5"), SyncEvent::NeedSnapshot);
    }

    #[test]
    fn tc11_malformed_levels_resync() {
        let mut s = BookSync::new(Continuity::Spot);
        feed(&mut s, 10, 12, None, "5");
        snap(&mut s, 11);
        assert_eq!(
            feed(&mut s, 13, 13, None, "1e5"),
            SyncEvent::Resync(ResyncReason::Malformed)
        );
    }

    #[test]
    fn tc12_a_cut_snapshot_that_falls_below_depth_is_truncated() {
        let mut s = BookSync::new(Continuity::Spot);
        feed(&mut s, 10, 12, None, "5");
        let t = r#"{"lastUpdateId":11,"bids":[["1","1"],["0.5","1"]],"asks":[["200","1"]]}"#;
        let snap = DepthSnapshot::parse(t.as_bytes()).unwrap();
        // Asked for 2 levels and got 2 bids: the bid side is cut.
        assert_eq!(
            s.on_snapshot(&snap, 2),
            SyncEvent::Applied { update_id: 12 }
        );
        let mut out = OrderbookData {
            bids: heapless::Vec::new(),
            asks: heapless::Vec::new(),
            update_id: 0,
        };
        // The diff added bid 5: 3 bids known.
        assert_eq!(s.fill(3, &mut out), Ok(true));
        assert_eq!(s.fill(4, &mut out), Err(ResyncReason::Truncated));
        assert!(!s.is_synced());
    }
}
