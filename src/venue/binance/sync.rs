//! Binance book synchronisation, as a sans-I/O state machine per symbol.
//!
//! Design: the documented procedure, one input at a time (`on_diff`, `on_snapshot`, `reset`),
//! each returning what the session must do. States are named for what they wait for:
//!
//! ```text
//! AwaitingFirstDiff ──diff──▶ AwaitingSnapshot{buffer} ──snapshot──▶ Bridging{L} | Synced{u}
//!        ▲                          ▲   (stale snapshot: ask again)        │ first diff spans L
//!        └──── reset ───────────────┴── gap / truncated / malformed / … ◀──┴─▶ Synced{u}
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
//! Only that continuity rule is Binance's; the rest is the venue-neutral toolkit
//! (`book::sync`): levels are two non-negative decimals, a diff may not move the id by more
//! than `MAX_ID_JUMP` (nor have `U > u`), a run of diffs all older than the book means it is
//! stuck, a crossed or cut book is never published, and the buffer kept while a snapshot is
//! fetched is bounded in count and bytes (it keeps the newest diffs; a snapshot older than
//! what it kept is `Resync(BufferOverflow)`, one older than what it ever held is stale).
//! After a gap (or a stale snapshot found live) the diff that
//! revealed it is kept: it is the first one the next snapshot may bridge. Ids come from the
//! network, so no id arithmetic can overflow. The synced path applies the borrowed frame
//! straight into the book and allocates nothing.
//!
//! Deepening: a snapshot cut at `limit` levels only knows the book that far, and as the price
//! walks one side's known range thins out until it can no longer fill the published depth.
//! Before that ([`BookSync::is_thin`]), the feed asks for a deeper snapshot in the background
//! ([`BookSync::start_deepening`]) while the book stays verified and published; the diffs
//! applied meanwhile are logged. The snapshot (`L`) is brought up to the live update by
//! replaying the logged diffs after `L` (waiting for the live book when `L` is ahead of it),
//! then cross-checked against the live book wherever the live book knows levels (`agrees`):
//! agreement swaps the deeper book in without a moment unverified; disagreement is a
//! resync (`cross_check`), since one of the two is not the venue's book.

use prometheus_client::metrics::counter::Counter;

use super::wire::{DepthSnapshot, DepthUpdate};
pub use crate::book::sync::ResyncReason;
use crate::book::sync::{BookCore, UpdateBuffer, agrees, check_jump, read_level};
use crate::book::{BOOK_CAPACITY, Book, BookSide};
use crate::model::OrderbookData;

/// Which continuity rule a market follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuity {
    Spot,
    UsdM,
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

/// What a deeper snapshot did to a synced book.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deepened {
    /// The deeper book agreed with the live one and replaced it.
    Spliced,
    /// The snapshot is ahead of the live book: it is kept until the stream reaches it.
    Waiting,
    /// The snapshot cannot be brought up to date (older than the diffs the log kept, or
    /// malformed): nothing changed; ask again later.
    Stale,
    /// Nobody asked for it (the book resynced meanwhile): ignored.
    Ignored,
    /// The deeper book disagreed with the live one: the book is unsynced.
    Resync(ResyncReason),
}

/// A background snapshot deepening a synced book.
struct Deepening {
    /// `last_id` when the request went out: a snapshot older than this cannot be replayed.
    from: u64,
    /// Diffs applied since the request went out, to replay onto the snapshot: the newest
    /// ones, as many as an [`UpdateBuffer`] keeps (a late answer may still be bridged by
    /// them; one ahead of the live book needs none).
    log: UpdateBuffer<Ids>,
    /// The snapshot's book and `L`, while the live book has not reached `L`.
    pending: Option<(u64, Box<Book<BOOK_CAPACITY>>)>,
}

pub use crate::book::sync::MAX_BUFFERED;

/// A buffered diff's ids: `U`, `u`, `pu`.
#[derive(Debug, Clone, Copy)]
struct Ids {
    first: u64,
    last: u64,
    prev: Option<u64>,
}

/// The states of one symbol's book.
#[derive(Debug)]
enum State {
    /// Nothing received since (re)connect; the first diff triggers the snapshot request.
    AwaitingFirstDiff,
    /// Buffering diffs while the snapshot is fetched.
    AwaitingSnapshot { buffered: UpdateBuffer<Ids> },
    /// Snapshot `L` applied; waiting for the diff that spans it. `seen` is the newest diff
    /// dropped meanwhile: a stream catching up to a snapshot ahead of it drops thousands of
    /// diffs, which is progress, not a stuck book, as long as their ids advance.
    Bridging { snapshot_id: u64, seen: u64 },
    /// Verified through `last_id`.
    Synced { last_id: u64 },
}

/// The sync machine and the book it guards.
pub struct BookSync {
    rule: Continuity,
    state: State,
    core: BookCore,
    deepening: Option<Deepening>,
    /// How a deepening ended while diffs were applied (spliced once the live book reached
    /// the snapshot, or given up), for the feed to take: [`BookSync::take_deep_outcome`].
    deep_outcome: Option<Deepened>,
}

impl BookSync {
    pub fn new(rule: Continuity) -> Self {
        BookSync::with_counter(rule, Counter::default())
    }

    /// A machine counting levels dropped by full sides in `levels_dropped`.
    pub fn with_counter(rule: Continuity, levels_dropped: Counter) -> Self {
        BookSync {
            rule,
            state: State::AwaitingFirstDiff,
            core: BookCore::new(levels_dropped),
            deepening: None,
            deep_outcome: None,
        }
    }

    /// The socket was replaced: everything starts over.
    pub fn reset(&mut self) {
        self.state = State::AwaitingFirstDiff;
        self.core.clear();
        self.deepening = None;
        self.deep_outcome = None;
    }

    /// Marks the book unsynced (after a resync reason found outside, e.g. truncation).
    fn unsync(&mut self) {
        self.state = State::AwaitingSnapshot {
            buffered: UpdateBuffer::default(),
        };
        self.core.clear();
        self.deepening = None;
        self.deep_outcome = None;
    }

    /// Whether the synced book's known range is thin: a cut side holds fewer than `levels`
    /// (and no deepening is under way).
    pub fn is_thin(&self, levels: usize) -> bool {
        matches!(self.state, State::Synced { .. })
            && self.deepening.is_none()
            && self.core.is_thin(levels)
    }

    /// Starts logging diffs for a deeper snapshot about to be requested; false when the book
    /// is not synced or a deepening is already under way.
    pub fn start_deepening(&mut self) -> bool {
        let State::Synced { last_id } = self.state else {
            return false;
        };
        if self.deepening.is_some() {
            return false;
        }
        self.deepening = Some(Deepening {
            from: last_id,
            log: UpdateBuffer::default(),
            pending: None,
        });
        true
    }

    /// How the deepening under way ended while diffs were applied, once: `Spliced` (the live
    /// book reached the waiting snapshot and they agreed) or `Stale` (its log did not
    /// continue the snapshot). A resync is the diff's own event.
    pub fn take_deep_outcome(&mut self) -> Option<Deepened> {
        self.deep_outcome.take()
    }

    /// Whether a deepening is under way.
    pub fn is_deepening(&self) -> bool {
        self.deepening.is_some()
    }

    /// Gives up the deepening under way (its request failed).
    pub fn cancel_deepening(&mut self) {
        self.deepening = None;
    }

    /// A deeper REST snapshot, asked for with `limit` levels per side, for the deepening
    /// under way.
    pub fn on_deep_snapshot(&mut self, snap: &DepthSnapshot<'_>, limit: usize) -> Deepened {
        if !matches!(self.state, State::Synced { .. }) {
            return Deepened::Ignored;
        }
        let Some(deep) = self.deepening.as_mut() else {
            return Deepened::Ignored;
        };
        let l = snap.last_update_id;
        if l < deep.from {
            // Older than the log: the diffs between it and the live book are not all kept.
            self.deepening = None;
            return Deepened::Stale;
        }
        let mut book = Book::<BOOK_CAPACITY>::new_boxed();
        for (side, levels) in [(BookSide::Bid, snap.bids()), (BookSide::Ask, snap.asks())] {
            let mut n = 0;
            for lv in levels {
                let Ok((p, q)) = lv
                    .map_err(|_| ResyncReason::Malformed)
                    .and_then(|(p, q)| read_level(p, q))
                else {
                    self.deepening = None;
                    return Deepened::Stale;
                };
                book.apply(side, p, q);
                n += 1;
            }
            if n >= limit {
                book.bound_at_worst(side);
            }
        }
        deep.pending = Some((l, book));
        match self.try_splice() {
            Some(Ok(())) => Deepened::Spliced,
            Some(Err(ResyncReason::StaleSnapshot)) => Deepened::Stale,
            Some(Err(r)) => {
                self.unsync();
                Deepened::Resync(r)
            }
            None => Deepened::Waiting,
        }
    }

    /// Brings the pending deeper snapshot up to the live book and swaps it in when they agree.
    /// `None` while the live book is behind the snapshot or nothing is pending.
    fn try_splice(&mut self) -> Option<Result<(), ResyncReason>> {
        let State::Synced { last_id } = self.state else {
            return None;
        };
        let deep = self.deepening.as_mut()?;
        let (l, _) = deep.pending.as_ref()?;
        let l = *l;
        if l > last_id {
            return None;
        }
        let (_, mut book) = deep.pending.take()?;
        let log = std::mem::take(&mut deep.log);
        self.deepening = None;
        let mut at = l;
        let mut bridged = false;
        for d in log.iter().filter(|d| !self.before_snapshot(l, d.ids.last)) {
            let fits = if bridged {
                self.follows(at, d.ids.first, d.ids.prev).is_ok()
            } else {
                self.spans(l, d.ids.first, d.ids.last)
            };
            if !fits {
                // The log does not continue the snapshot: ask again later.
                return Some(Err(ResyncReason::StaleSnapshot));
            }
            bridged = true;
            for (p, q) in &d.bids {
                book.apply(BookSide::Bid, *p, *q);
            }
            for (p, q) in &d.asks {
                book.apply(BookSide::Ask, *p, *q);
            }
            at = d.ids.last;
        }
        if at != last_id || !agrees(self.core.book(), &book) {
            return Some(Err(ResyncReason::CrossCheck));
        }
        self.core.splice(book);
        Some(Ok(()))
    }

    /// Diffs the procedure dropped as older than the book (buffered or live).
    pub fn dropped_diffs(&self) -> u64 {
        self.core.updates_dropped()
    }

    pub fn is_synced(&self) -> bool {
        matches!(self.state, State::Synced { .. } | State::Bridging { .. })
    }

    /// Whether the stream continues the snapshot (synced past the diff that spans it).
    pub fn is_bridged(&self) -> bool {
        matches!(self.state, State::Synced { .. })
    }

    /// The verified book (for tests and status), only while synced.
    pub fn book(&self) -> Option<&Book<BOOK_CAPACITY>> {
        self.is_synced().then_some(self.core.book())
    }

    /// Whether a diff `(U, u, pu)` may follow a book at `last` (after the first applied diff).
    fn follows(&self, last: u64, first: u64, prev: Option<u64>) -> Result<(), ResyncReason> {
        match self.rule {
            // Ids come from the network: no arithmetic that can overflow.
            Continuity::Spot if last.checked_add(1) == Some(first) => Ok(()),
            Continuity::Spot => Err(ResyncReason::Gap {
                expected: i128::from(last) + 1,
                got: i128::from(first),
            }),
            Continuity::UsdM => match prev {
                Some(p) if p == last => Ok(()),
                Some(p) => Err(ResyncReason::Gap {
                    expected: i128::from(last),
                    got: i128::from(p),
                }),
                None => Err(ResyncReason::Malformed),
            },
        }
    }

    /// Whether a diff's own ids are possible: `U <= u`, and `u` not past `U` (spot) or `pu`
    /// (USD-M) by more than the toolkit's bound.
    fn possible(&self, d: &Ids) -> Result<(), ResyncReason> {
        if d.first > d.last {
            return Err(ResyncReason::Malformed);
        }
        let from = match (self.rule, d.prev) {
            (Continuity::UsdM, Some(p)) => p,
            _ => d.first,
        };
        check_jump(i128::from(from), i128::from(d.last))
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
            // U <= L+1 <= u, without computing L+1.
            Continuity::Spot => first.saturating_sub(1) <= l && l < last,
            Continuity::UsdM => first <= l && l <= last,
        }
    }

    fn fail(&mut self, reason: ResyncReason) -> SyncEvent {
        self.unsync();
        SyncEvent::Resync(reason)
    }

    /// Unsyncs for `reason` and buffers `d`, the first diff the next snapshot may bridge.
    fn fail_keeping(&mut self, reason: ResyncReason, d: &DepthUpdate<'_>) -> SyncEvent {
        self.unsync();
        match self.buffer(d) {
            Ok(()) => SyncEvent::Resync(reason),
            Err(r) => SyncEvent::Resync(r),
        }
    }

    /// Keeps an owned copy of `d` until the snapshot arrives (the resync path may allocate).
    /// On a malformed diff the book starts over; a full buffer drops its oldest diffs.
    fn buffer(&mut self, d: &DepthUpdate<'_>) -> Result<(), ResyncReason> {
        if !matches!(self.state, State::AwaitingSnapshot { .. }) {
            self.state = State::AwaitingSnapshot {
                buffered: UpdateBuffer::default(),
            };
        }
        let State::AwaitingSnapshot { buffered } = &mut self.state else {
            return Ok(());
        };
        let ids = Ids {
            first: d.first_id,
            last: d.last_id,
            prev: d.prev_last_id,
        };
        match buffered.push(
            ids,
            d.read.map(|r| (r.bids, r.asks)),
            d.bids(),
            d.asks(),
            None,
        ) {
            Err(ResyncReason::Malformed) => {
                self.unsync();
                Err(ResyncReason::Malformed)
            }
            other => other,
        }
    }

    /// One diff from the stream.
    pub fn on_diff(&mut self, d: &DepthUpdate<'_>) -> SyncEvent {
        let ids = Ids {
            first: d.first_id,
            last: d.last_id,
            prev: d.prev_last_id,
        };
        if let Err(r) = self.possible(&ids) {
            return self.fail(r);
        }
        let (first, last, prev) = (ids.first, ids.last, ids.prev);
        match &mut self.state {
            State::AwaitingFirstDiff | State::AwaitingSnapshot { .. } => {
                let ask = matches!(self.state, State::AwaitingFirstDiff);
                match self.buffer(d) {
                    Ok(()) if ask => SyncEvent::NeedSnapshot,
                    Ok(()) => SyncEvent::Buffered,
                    Err(r) => SyncEvent::Resync(r),
                }
            }
            State::Bridging { snapshot_id, seen } => {
                let (l, progress) = (*snapshot_id, last > *seen);
                if progress {
                    *seen = last;
                }
                if self.before_snapshot(l, last) {
                    if progress {
                        self.core.advanced();
                    }
                    return match self.core.dropped_old() {
                        Ok(()) => SyncEvent::Dropped,
                        Err(r) => self.fail(r),
                    };
                }
                if !self.spans(l, first, last) {
                    // The stream is already past the snapshot: the snapshot is stale. This
                    // diff may bridge the next one.
                    return self.fail_keeping(ResyncReason::StaleSnapshot, d);
                }
                self.apply_borrowed(d)
            }
            State::Synced { last_id } => {
                let l = *last_id;
                if last <= l {
                    return match self.core.dropped_old() {
                        Ok(()) => SyncEvent::Dropped,
                        Err(r) => self.fail(r),
                    };
                }
                if let Err(r) = self.follows(l, first, prev) {
                    if r == ResyncReason::Malformed {
                        return self.fail(r);
                    }
                    // The diff after the gap may bridge the next snapshot.
                    return self.fail_keeping(r, d);
                }
                self.apply_borrowed(d)
            }
        }
    }

    fn apply_borrowed(&mut self, d: &DepthUpdate<'_>) -> SyncEvent {
        let r = self
            .core
            .apply_sides(d.read.map(|r| (r.bids, r.asks)), d.bids(), d.asks());
        match r {
            Ok(_) => {
                self.core.advanced();
                self.state = State::Synced { last_id: d.last_id };
                if let Some(deep) = self.deepening.as_mut() {
                    let ids = Ids {
                        first: d.first_id,
                        last: d.last_id,
                        prev: d.prev_last_id,
                    };
                    // A diff the pending snapshot already holds needs no replay.
                    let held = deep.pending.as_ref().is_some_and(|(l, _)| d.last_id <= *l);
                    let read = d.read.map(|r| (r.bids, r.asks));
                    if !held && deep.log.push(ids, read, d.bids(), d.asks(), None).is_err() {
                        // The book read this diff's levels, so the log reads them too; if
                        // it ever could not, this deepening could not be replayed.
                        self.deepening = None;
                        self.deep_outcome = Some(Deepened::Stale);
                    } else {
                        match self.try_splice() {
                            Some(Ok(())) => self.deep_outcome = Some(Deepened::Spliced),
                            Some(Err(ResyncReason::StaleSnapshot)) => {
                                self.deep_outcome = Some(Deepened::Stale);
                            }
                            Some(Err(r)) => return self.fail(r),
                            None => {}
                        }
                    }
                }
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
        let kept: Vec<_> = buffered
            .iter()
            .filter(|d| !self.before_snapshot(l, d.ids.last))
            .collect();
        let dropped = (buffered.len() - kept.len()) as u64;
        if let Some(first) = kept.first()
            && !self.spans(l, first.ids.first, first.ids.last)
        {
            // Older than the first diff kept: stale, or (when older diffs were dropped to
            // stay within the buffer's bounds) lost to the buffer.
            let stale = SyncEvent::Resync(buffered.unbridged());
            drop(kept);
            self.state = State::AwaitingSnapshot { buffered };
            return stale;
        }
        self.core.dropped_by_snapshot(dropped);
        self.core.clear();
        for (side, levels) in [(BookSide::Bid, snap.bids()), (BookSide::Ask, snap.asks())] {
            match self.core.apply_levels(side, levels) {
                Ok(n) if n >= limit => {
                    // The venue cut the snapshot: below its last level the book is unknown.
                    self.core.bound_at_worst(side);
                }
                Ok(_) => {}
                Err(r) => {
                    drop(kept);
                    self.state = State::AwaitingSnapshot { buffered };
                    self.core.clear();
                    return SyncEvent::Resync(r);
                }
            }
        }
        let mut last_id = l;
        let mut bridged = false;
        for d in kept {
            if bridged && let Err(r) = self.follows(last_id, d.ids.first, d.ids.prev) {
                return self.fail(r);
            }
            bridged = true;
            self.core.apply_owned(BookSide::Bid, &d.bids);
            self.core.apply_owned(BookSide::Ask, &d.asks);
            last_id = d.ids.last;
        }
        self.core.advanced();
        self.state = if bridged {
            State::Synced { last_id }
        } else {
            State::Bridging {
                snapshot_id: l,
                seen: 0,
            }
        };
        SyncEvent::Applied { update_id: last_id }
    }

    /// Fills `out` with the top `depth` levels when the book is synced. `Ok(false)` while
    /// unsynced; `Err(reason)` when the book cannot vouch for what it would publish (cut below
    /// `depth`, or crossed): it is then unsynced and a snapshot must be fetched.
    pub fn fill(&mut self, depth: usize, out: &mut OrderbookData) -> Result<bool, ResyncReason> {
        let update_id = match self.state {
            State::Synced { last_id } => last_id,
            State::Bridging { snapshot_id, .. } => snapshot_id,
            _ => return Ok(false),
        };
        match self.core.fill(depth, &mut out.bids, &mut out.asks) {
            Ok(()) => {
                out.update_id = update_id;
                Ok(true)
            }
            Err(reason) => {
                self.unsync();
                Err(reason)
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
        let snap = DepthSnapshot::parse(t.as_bytes()).expect("the snapshot parses");
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
        let book = s.book().expect("a synced book");
        assert_eq!(
            book.best(BookSide::Bid)
                .expect("a level on that side")
                .price
                .to_string(),
            "7"
        );
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
        let snap = DepthSnapshot::parse(t.as_bytes()).expect("the snapshot parses");
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

    /// One input of a transition table and the event it must give.
    #[derive(Clone, Copy)]
    enum Step {
        /// A diff `(U, u, pu)`.
        Diff(u64, u64, Option<u64>, SyncEvent),
        /// A snapshot with `lastUpdateId` L.
        Snap(u64, SyncEvent),
    }
    use Step::{Diff, Snap};

    const fn applied(update_id: u64) -> SyncEvent {
        SyncEvent::Applied { update_id }
    }
    const fn gap(expected: u64, got: u64) -> SyncEvent {
        SyncEvent::Resync(ResyncReason::Gap {
            expected: expected as i128,
            got: got as i128,
        })
    }
    const STALE: SyncEvent = SyncEvent::Resync(ResyncReason::StaleSnapshot);
    const NEED: SyncEvent = SyncEvent::NeedSnapshot;

    fn run_table(rule: Continuity, cases: &[&[Step]]) {
        for (i, steps) in cases.iter().enumerate() {
            let mut s = BookSync::new(rule);
            for (j, step) in steps.iter().enumerate() {
                let (got, want) = match *step {
                    Diff(first, last, prev, want) => (feed(&mut s, first, last, prev, "5"), want),
                    Snap(l, want) => (snap(&mut s, l), want),
                };
                assert_eq!(got, want, "{rule:?} TC{i} step {j}");
            }
        }
    }

    #[test]
    fn spot_transitions_at_the_edges() {
        let none = None;
        run_table(
            Continuity::Spot,
            &[
                // TC0: u == L is dropped; the next diff with U == L+1 applies.
                &[
                    Diff(10, 12, none, NEED),
                    Snap(12, applied(12)),
                    Diff(13, 14, none, applied(14)),
                ],
                // TC1: U < L+1 == u bridges the snapshot from the buffer.
                &[Diff(10, 12, none, NEED), Snap(11, applied(12))],
                // TC2: U == L+1 bridges from the buffer.
                &[Diff(13, 14, none, NEED), Snap(12, applied(14))],
                // TC3: U == L+2: the snapshot is too old; the buffer is kept for the next one.
                &[
                    Diff(14, 15, none, NEED),
                    Snap(12, STALE),
                    Snap(13, applied(15)),
                ],
                // TC4: a snapshot past the buffer waits; a live U == L+2 means it was stale.
                &[
                    Diff(10, 12, none, NEED),
                    Snap(13, applied(13)),
                    Diff(15, 16, none, STALE),
                ],
                // TC5: after sync: U == u+1 applies, u <= last is dropped, a hole is a gap.
                &[
                    Diff(10, 14, none, NEED),
                    Snap(12, applied(14)),
                    Diff(15, 15, none, applied(15)),
                    Diff(14, 15, none, SyncEvent::Dropped),
                    Diff(17, 18, none, gap(16, 17)),
                ],
                // TC6: an overlapping diff (U <= last < u) is a gap too.
                &[
                    Diff(10, 14, none, NEED),
                    Snap(12, applied(14)),
                    Diff(14, 16, none, gap(15, 14)),
                ],
                // TC7: the diff after a gap is kept: a snapshot it spans re-syncs at once.
                &[
                    Diff(10, 14, none, NEED),
                    Snap(12, applied(14)),
                    Diff(17, 18, none, gap(15, 17)),
                    Snap(17, applied(18)),
                ],
                // TC8: ids at the top of the range never overflow.
                &[
                    Diff(u64::MAX - 1, u64::MAX, none, NEED),
                    Snap(u64::MAX - 1, applied(u64::MAX)),
                    Diff(u64::MAX, u64::MAX, none, SyncEvent::Dropped),
                    Diff(0, 0, none, SyncEvent::Dropped),
                ],
            ],
        );
    }

    #[test]
    fn usdm_transitions_at_the_edges() {
        run_table(
            Continuity::UsdM,
            &[
                // TC0: u < L is dropped; U <= L <= u applies live.
                &[
                    Diff(5, 9, Some(4), NEED),
                    Snap(10, applied(10)),
                    Diff(10, 12, Some(9), applied(12)),
                ],
                // TC1: u == L is kept (unlike spot) and bridges from the buffer.
                &[Diff(8, 10, Some(7), NEED), Snap(10, applied(10))],
                // TC2: U == L applies.
                &[Diff(10, 11, Some(9), NEED), Snap(10, applied(11))],
                // TC3: U == L+1: the snapshot is too old.
                &[Diff(11, 12, Some(10), NEED), Snap(10, STALE)],
                // TC4: after sync gaps in U are normal; pu must be the previous u.
                &[
                    Diff(10, 12, Some(9), NEED),
                    Snap(11, applied(12)),
                    Diff(20, 25, Some(12), applied(25)),
                    Diff(30, 31, Some(24), gap(25, 24)),
                ],
                // TC5: a synced USD-M diff without pu cannot be checked.
                &[
                    Diff(10, 12, Some(9), NEED),
                    Snap(11, applied(12)),
                    Diff(13, 14, None, SyncEvent::Resync(ResyncReason::Malformed)),
                ],
                // TC6: ids at the top of the range never overflow.
                &[
                    Diff(u64::MAX, u64::MAX, Some(u64::MAX - 1), NEED),
                    Snap(u64::MAX, applied(u64::MAX)),
                    Diff(u64::MAX, u64::MAX, Some(u64::MAX), SyncEvent::Dropped),
                ],
            ],
        );
    }

    #[test]
    fn a_full_buffer_keeps_the_newest_diffs_and_a_snapshot_older_than_them_is_an_overflow() {
        let full = |s: &mut BookSync| {
            // MAX_BUFFERED diffs are kept; one more drops the oldest (diff 1) and is kept
            // too: nothing is said yet, the snapshot in flight may still be bridged.
            assert_eq!(feed(s, 1, 1, None, "5"), NEED);
            for id in 2..=MAX_BUFFERED as u64 + 1 {
                assert_eq!(feed(s, id, id, None, "5"), SyncEvent::Buffered);
            }
        };
        let last = MAX_BUFFERED as u64 + 1;
        // TC0: a snapshot older than the first diff kept could have been bridged by a larger
        // buffer: an overflow, and the buffer is kept for the next snapshot.
        let mut s = BookSync::new(Continuity::Spot);
        full(&mut s);
        assert_eq!(
            snap(&mut s, 0),
            SyncEvent::Resync(ResyncReason::BufferOverflow)
        );
        assert_eq!(ResyncReason::BufferOverflow.label(), "buffer_overflow");
        // TC1: the oldest diff kept bridges the next one: every kept diff is applied.
        assert_eq!(snap(&mut s, 1), applied(last));
        assert_eq!(
            feed(&mut s, last + 1, last + 1, None, "5"),
            applied(last + 1)
        );
        // TC2: a snapshot bridged by a diff near the end of the window is applied too.
        let mut s = BookSync::new(Continuity::Spot);
        full(&mut s);
        assert_eq!(snap(&mut s, last - 3), applied(last));
        // TC3: a snapshot ahead of every kept diff waits for the stream to reach it.
        let mut s = BookSync::new(Continuity::Spot);
        full(&mut s);
        assert_eq!(snap(&mut s, last + 5), applied(last + 5));
        assert!(!s.is_bridged());
        assert_eq!(
            feed(&mut s, last + 1, last + 5, None, "5"),
            SyncEvent::Dropped
        );
        assert_eq!(
            feed(&mut s, last + 6, last + 6, None, "5"),
            applied(last + 6)
        );
        assert!(s.is_bridged());
        // TC4: without anything dropped, a snapshot older than the first diff is stale.
        let mut s = BookSync::new(Continuity::Spot);
        assert_eq!(feed(&mut s, 10, 10, None, "5"), NEED);
        assert_eq!(snap(&mut s, 5), STALE);
    }

    #[test]
    fn impossible_ids_and_endless_old_diffs_resync() {
        // TC0: spot, chained (U = last+1) but u = u64::MAX.
        let mut s = BookSync::new(Continuity::Spot);
        feed(&mut s, 10, 12, None, "5");
        snap(&mut s, 11);
        assert_eq!(
            feed(&mut s, 13, u64::MAX, None, "5"),
            SyncEvent::Resync(ResyncReason::ImpossibleId {
                from: 13,
                to: i128::from(u64::MAX)
            })
        );
        // TC1: U > u is no diff at all.
        let mut s = BookSync::new(Continuity::Spot);
        assert_eq!(
            feed(&mut s, 12, 10, None, "5"),
            SyncEvent::Resync(ResyncReason::Malformed)
        );
        // TC2: USD-M, pu chained but u = u64::MAX.
        let mut s = BookSync::new(Continuity::UsdM);
        feed(&mut s, 10, 12, Some(9), "5");
        snap(&mut s, 11);
        assert!(matches!(
            feed(&mut s, 13, u64::MAX, Some(12), "5"),
            SyncEvent::Resync(ResyncReason::ImpossibleId { .. })
        ));
        // TC3: a run of diffs all older than the book: stuck, not verified.
        let mut s = BookSync::new(Continuity::Spot);
        feed(&mut s, 10, 20, None, "5");
        snap(&mut s, 15);
        for _ in 0..crate::book::sync::MAX_DROPPED_IN_A_ROW {
            assert_eq!(feed(&mut s, 1, 2, None, "5"), SyncEvent::Dropped);
        }
        assert_eq!(
            feed(&mut s, 1, 2, None, "5"),
            SyncEvent::Resync(ResyncReason::Stuck)
        );
        // TC4: a crossing level applies (the chain is fine) but is never published.
        let mut s = BookSync::new(Continuity::Spot);
        feed(&mut s, 10, 12, None, "5");
        snap(&mut s, 11);
        assert_eq!(feed(&mut s, 13, 13, None, "300"), applied(13));
        let mut out = OrderbookData {
            bids: heapless::Vec::new(),
            asks: heapless::Vec::new(),
            update_id: 0,
        };
        assert_eq!(s.fill(1, &mut out), Err(ResyncReason::Crossed));
        assert!(!s.is_synced());
    }

    fn depth_snap(l: u64, bids: &[(&str, &str)], asks: &[(&str, &str)]) -> String {
        let side = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(p, q)| format!(r#"["{p}","{q}"]"#))
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            r#"{{"lastUpdateId":{l},"bids":[{}],"asks":[{}]}}"#,
            side(bids),
            side(asks)
        )
    }

    /// A spot book synced at 10 from a snapshot cut at 2 levels a side (bids 4, 3; asks 150,
    /// 160), plus diff 10 (bid 5, ask 100): thin on both sides.
    fn thin_book() -> BookSync {
        let mut s = BookSync::new(Continuity::Spot);
        assert_eq!(feed(&mut s, 10, 10, None, "5"), NEED);
        let t = depth_snap(9, &[("4", "1"), ("3", "1")], &[("150", "1"), ("160", "1")]);
        let snap = DepthSnapshot::parse(t.as_bytes()).expect("the snapshot parses");
        assert_eq!(s.on_snapshot(&snap, 2), applied(10));
        assert!(s.is_thin(8));
        s
    }

    fn deep(s: &mut BookSync, l: u64, bids: &[(&str, &str)], limit: usize) -> Deepened {
        let asks = [
            ("100", "1"),
            ("150", "1"),
            ("160", "1"),
            ("170", "1"),
            ("180", "1"),
        ];
        let t = depth_snap(l, bids, &asks);
        let snap = DepthSnapshot::parse(t.as_bytes()).expect("the snapshot parses");
        s.on_deep_snapshot(&snap, limit)
    }

    #[test]
    fn a_thin_book_is_deepened_in_the_background_and_stays_verified() {
        let mut s = thin_book();
        assert!(s.start_deepening());
        assert!(!s.start_deepening(), "one at a time");
        // TC0: diffs keep applying (and publishing) while the snapshot is out.
        assert_eq!(feed(&mut s, 11, 11, None, "6"), applied(11));
        // TC1: the venue's book at 10, five levels a side, brought up to 11 and checked.
        let bids = [("5", "1"), ("4", "1"), ("3", "1"), ("2", "1"), ("1", "1")];
        assert_eq!(deep(&mut s, 10, &bids, 5), Deepened::Spliced);
        assert!(s.is_synced() && !s.is_deepening());
        let book = s.book().expect("a synced book");
        let got: Vec<String> = book
            .levels(BookSide::Bid)
            .map(|l| l.price.to_string())
            .collect();
        assert_eq!(got, ["6", "5", "4", "3", "2", "1"]);
        assert_eq!(book.len(BookSide::Ask), 5);
        // The next diff follows as before.
        assert_eq!(feed(&mut s, 12, 12, None, "7"), applied(12));
    }

    #[test]
    fn a_deeper_book_that_disagrees_resyncs_and_an_older_one_is_stale() {
        // TC0: the deeper snapshot says bid 4 has 2, the live book says 1.
        let mut s = thin_book();
        assert!(s.start_deepening());
        let bids = [("5", "1"), ("4", "2"), ("3", "1"), ("2", "1"), ("1", "1")];
        assert_eq!(
            deep(&mut s, 10, &bids, 5),
            Deepened::Resync(ResyncReason::CrossCheck)
        );
        assert!(!s.is_synced());
        // TC1: a snapshot older than the deepening's start cannot be replayed: stale, and the
        // live book is untouched.
        let mut s = thin_book();
        assert_eq!(feed(&mut s, 11, 11, None, "6"), applied(11));
        assert!(s.start_deepening());
        let bids = [("5", "1"), ("4", "1"), ("3", "1"), ("2", "1"), ("1", "1")];
        assert_eq!(deep(&mut s, 10, &bids, 5), Deepened::Stale);
        assert!(s.is_synced() && !s.is_deepening());
        assert_eq!(s.book().map(|b| b.len(BookSide::Bid)), Some(4));
    }

    #[test]
    fn a_deeper_snapshot_ahead_of_the_stream_waits_for_it() {
        let mut s = thin_book();
        assert!(s.start_deepening());
        // The venue's book at 12 (diffs 11 and 12 add bids 6 and 7).
        let bids = [
            ("7", "1"),
            ("6", "1"),
            ("5", "1"),
            ("4", "1"),
            ("3", "1"),
            ("2", "1"),
        ];
        assert_eq!(deep(&mut s, 12, &bids, 6), Deepened::Waiting);
        assert_eq!(feed(&mut s, 11, 11, None, "6"), applied(11));
        assert!(s.is_deepening());
        // The stream reaches 12: spliced there, and the feed is told (it counts deepenings).
        assert_eq!(s.take_deep_outcome(), None);
        assert_eq!(feed(&mut s, 12, 12, None, "7"), applied(12));
        assert!(!s.is_deepening());
        assert_eq!(s.take_deep_outcome(), Some(Deepened::Spliced));
        assert_eq!(s.take_deep_outcome(), None, "told once");
        assert_eq!(s.book().map(|b| b.len(BookSide::Bid)), Some(6));
    }

    #[test]
    fn a_stream_catching_up_to_a_snapshot_ahead_of_it_is_not_stuck() {
        // TC0: the snapshot is 490 diffs ahead of the stream (thousands of frames unread):
        // the diffs it holds are dropped while their ids advance, and the next one bridges.
        let mut s = BookSync::new(Continuity::Spot);
        assert_eq!(feed(&mut s, 10, 10, None, "5"), NEED);
        assert_eq!(snap(&mut s, 500), applied(500));
        for id in 11..=500 {
            assert_eq!(feed(&mut s, id, id, None, "5"), SyncEvent::Dropped, "{id}");
        }
        assert!(!s.is_bridged());
        assert_eq!(feed(&mut s, 501, 501, None, "5"), applied(501));
        assert!(s.is_bridged());
        // TC1: the same old diff over and over is stuck, bridging or not.
        let mut s = BookSync::new(Continuity::Spot);
        feed(&mut s, 10, 10, None, "5");
        snap(&mut s, 500);
        for _ in 0..crate::book::sync::MAX_DROPPED_IN_A_ROW {
            assert_eq!(feed(&mut s, 20, 20, None, "5"), SyncEvent::Dropped);
        }
        assert_eq!(
            feed(&mut s, 20, 20, None, "5"),
            SyncEvent::Resync(ResyncReason::Stuck)
        );
    }

    #[test]
    fn a_deeper_snapshot_far_ahead_is_reached_without_logging_what_it_holds() {
        // The snapshot is more diffs ahead of the live book than the log may hold (a socket
        // with thousands of frames unread): the diffs it already holds are not logged.
        let mut s = thin_book();
        assert!(s.start_deepening());
        let l = 10 + MAX_BUFFERED as u64 + 500;
        let bids = [("5", "1"), ("4", "1"), ("3", "1"), ("2", "1"), ("1", "1")];
        assert_eq!(deep(&mut s, l, &bids, 5), Deepened::Waiting);
        for id in 11..l {
            assert_eq!(feed(&mut s, id, id, None, "5"), applied(id));
            assert!(s.is_deepening(), "still waiting at {id}");
        }
        assert_eq!(feed(&mut s, l, l, None, "5"), applied(l));
        assert_eq!(s.take_deep_outcome(), Some(Deepened::Spliced));
        assert_eq!(s.book().map(|b| b.len(BookSide::Bid)), Some(5));
    }

    #[test]
    fn a_late_deeper_snapshot_is_replayed_from_the_newest_diffs_the_log_kept() {
        // No answer for longer than the log may hold: the log keeps the newest diffs, and
        // the deepening stays under way (it used to be given up here, and under a firehose
        // the book then ran out of levels before the next one).
        let bids = [("5", "1"), ("4", "1"), ("3", "1"), ("2", "1"), ("1", "1")];
        let end = 10 + 2 * MAX_BUFFERED as u64;
        let late = |s: &mut BookSync| {
            assert!(s.start_deepening());
            for id in 11..=end {
                assert_eq!(feed(s, id, id, None, "5"), applied(id));
            }
            assert!(s.is_deepening());
            assert_eq!(s.take_deep_outcome(), None);
        };
        // TC0: an answer the kept diffs continue is replayed and spliced.
        let mut s = thin_book();
        late(&mut s);
        assert_eq!(deep(&mut s, end - 100, &bids, 5), Deepened::Spliced);
        assert_eq!(s.book().map(|b| b.len(BookSide::Bid)), Some(5));
        // TC1: an answer older than the first diff kept cannot be replayed: nothing changes,
        // the live book stays verified, and the feed asks again later.
        let mut s = thin_book();
        late(&mut s);
        assert_eq!(
            deep(&mut s, end - MAX_BUFFERED as u64 - 1, &bids, 5),
            Deepened::Stale
        );
        assert!(s.is_bridged());
        assert_eq!(
            s.book().map(|b| b.len(BookSide::Bid)),
            Some(3),
            "the live 5, 4, 3"
        );
        assert_eq!(feed(&mut s, end + 1, end + 1, None, "5"), applied(end + 1));
    }

    #[test]
    fn a_deeper_side_cut_short_of_the_live_one_is_spliced_keeping_the_longer_side() {
        // The live asks know 100, 150, 160 (cut at 160); the deeper snapshot, asked for 2
        // levels a side, is cut at 150 on the asks: shorter than the live side. Where both know (through 150) they agree,
        // so the splice goes ahead: the deeper bids, the live asks.
        let mut s = thin_book();
        assert!(s.start_deepening());
        let bids = [("5", "1"), ("4", "1"), ("3", "1"), ("2", "1"), ("1", "1")];
        let t = depth_snap(10, &bids, &[("100", "1"), ("150", "1")]);
        let snap = DepthSnapshot::parse(t.as_bytes()).expect("the snapshot parses");
        assert_eq!(s.on_deep_snapshot(&snap, 2), Deepened::Spliced);
        let book = s.book().expect("synced");
        assert_eq!(book.len(BookSide::Bid), 5);
        let asks: Vec<String> = book
            .levels(BookSide::Ask)
            .map(|l| l.price.to_string())
            .collect();
        assert_eq!(asks, ["100", "150", "160"]);
        // TC1: the same, but where both know the asks the deeper one differs: resync.
        let mut s = thin_book();
        assert!(s.start_deepening());
        let t = depth_snap(10, &bids, &[("100", "1"), ("150", "2")]);
        let snap = DepthSnapshot::parse(t.as_bytes()).expect("the snapshot parses");
        assert_eq!(
            s.on_deep_snapshot(&snap, 2),
            Deepened::Resync(ResyncReason::CrossCheck)
        );
    }
}
