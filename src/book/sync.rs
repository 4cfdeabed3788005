//! The venue-neutral half of book synchronisation: what every venue's sync machine must do,
//! written once so that a check added here holds for every venue.
//!
//! Design: each venue keeps only its own continuity rule in its own machine
//! (`venue/binance/sync.rs`: spot `U`/`u`, USD-M `pu`; `venue/okx/book.rs`: `seqId`/`prevSeqId`
//! and the checksum). Everything else is here:
//! - [`BookCore`]: the fixed-capacity book with the checks every update and every publication
//!   goes through: levels read from the venue's strings as two decimals, neither negative
//!   ([`read_level`]); levels a full side had to drop, counted; updates dropped as older than
//!   the book, counted in a row so a book that only ever drops ([`MAX_DROPPED_IN_A_ROW`]) is
//!   resynced instead of going silent; and the last check before a book is published: a
//!   crossed book is not the venue's, and a side cut below the depth cannot be vouched for.
//! - [`check_jump`]: one update may not move the venue's id further than [`MAX_ID_JUMP`]; a
//!   larger jump (`u = u64::MAX`, `seqId = i64::MAX`) would make every later update look old.
//! - [`UpdateBuffer`]: the updates kept while a snapshot is fetched, bounded in count *and*
//!   bytes, with one overflow policy: drop the oldest, keep the newest, and remember it did
//!   (a snapshot older than what is left is then [`ResyncReason::BufferOverflow`], not
//!   stale).
//! - [`ResyncReason`]: why a book went unsynced, one label set for the metrics.
//! - [`Snapshots`]: when to ask for the next snapshot (throttle, backoff, `Retry-After`, a
//!   venue that does not list the symbol).
//!
//! Owns: those rules. Must not touch: any venue's wire format (levels arrive as string pairs
//! from the venue's own parser), sockets, publishing, metrics registration (counters are
//! handed in).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use super::{BOOK_CAPACITY, Book, BookSide};
use crate::decimal::Decimal;

/// Most updates one book buffers while its snapshot is fetched (200 s of 100 ms updates).
pub const MAX_BUFFERED: usize = 2000;
/// Most bytes of levels one book buffers while its snapshot is fetched.
pub const MAX_BUFFER_BYTES: usize = 1 << 20;
/// The largest move of a venue's update id one update may make. Binance USD-M ids are global
/// (about 10^4 to 10^5 a second) and a quiet symbol's next diff may jump by hours of them;
/// 2^40 is years of ids, and still refuses `u64::MAX` or `i64::MAX`.
pub const MAX_ID_JUMP: i128 = 1 << 40;
/// Updates in a row dropped as older than the book before it is resynced: a book that drops
/// everything is stuck, not verified (5 s of 100 ms updates).
pub const MAX_DROPPED_IN_A_ROW: u32 = 50;

/// Why a book was marked unsynced. Ids are `i128` so every venue's ids fit (Binance `u64`,
/// OKX `i64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncReason {
    /// The update chain broke.
    Gap { expected: i128, got: i128 },
    /// The snapshot is older than every buffered update.
    StaleSnapshot,
    /// The book was cut (capacity or snapshot limit) below the published depth.
    Truncated,
    /// A level could not be read, was negative, or an update lacked a required field.
    Malformed,
    /// The update buffer was full while a snapshot was fetched: emptied, buffering restarts.
    BufferOverflow,
    /// The book's checksum differs from the venue's.
    Checksum { venue: i64, ours: i32 },
    /// The venue restarted its sequence (maintenance).
    SequenceReset,
    /// The best bid reached the best ask.
    Crossed,
    /// An update moved the id further than [`MAX_ID_JUMP`].
    ImpossibleId { from: i128, to: i128 },
    /// [`MAX_DROPPED_IN_A_ROW`] updates in a row were older than the book.
    Stuck,
    /// A synced book got an update it cannot check (no sequence ids, no checksum).
    MissingSequence,
    /// A deeper snapshot, brought up to date, disagreed with the live book where both know
    /// the levels.
    CrossCheck,
}

impl ResyncReason {
    /// Every label, for documentation and tests.
    pub const LABELS: [&'static str; 12] = [
        "gap",
        "stale_snapshot",
        "truncated",
        "malformed",
        "buffer_overflow",
        "checksum",
        "sequence_reset",
        "crossed",
        "impossible_id",
        "stuck",
        "missing_sequence",
        "cross_check",
    ];

    /// The metric label (`marketbox_book_resyncs_total{reason}`).
    pub fn label(self) -> &'static str {
        let i = match self {
            ResyncReason::Gap { .. } => 0,
            ResyncReason::StaleSnapshot => 1,
            ResyncReason::Truncated => 2,
            ResyncReason::Malformed => 3,
            ResyncReason::BufferOverflow => 4,
            ResyncReason::Checksum { .. } => 5,
            ResyncReason::SequenceReset => 6,
            ResyncReason::Crossed => 7,
            ResyncReason::ImpossibleId { .. } => 8,
            ResyncReason::Stuck => 9,
            ResyncReason::MissingSequence => 10,
            ResyncReason::CrossCheck => 11,
        };
        Self::LABELS[i]
    }
}

/// Reads one level from the venue's strings: two decimals, neither negative.
pub fn read_level(price: &str, qty: &str) -> Result<(Decimal, Decimal), ResyncReason> {
    let p = Decimal::parse(price).map_err(|_| ResyncReason::Malformed)?;
    let q = Decimal::parse(qty).map_err(|_| ResyncReason::Malformed)?;
    if p.is_negative() || q.is_negative() {
        return Err(ResyncReason::Malformed);
    }
    Ok((p, q))
}

/// Whether an update may move the id from `from` to `to` (forward by at most
/// [`MAX_ID_JUMP`]).
pub fn check_jump(from: i128, to: i128) -> Result<(), ResyncReason> {
    if to.saturating_sub(from) > MAX_ID_JUMP {
        return Err(ResyncReason::ImpossibleId { from, to });
    }
    Ok(())
}

/// An update's bids and asks as its parser already read them.
pub type ReadSides<'r> = (&'r [(Decimal, Decimal)], &'r [(Decimal, Decimal)]);

/// Levels as a venue parser yields them: string pairs, or an error for a malformed entry.
pub trait LevelSource<'a>: Iterator<Item = Result<(&'a str, &'a str), Self::Error>> {
    type Error;
}

impl<'a, E, I: Iterator<Item = Result<(&'a str, &'a str), E>>> LevelSource<'a> for I {
    type Error = E;
}

/// The book a venue machine guards, with the checks shared by every venue.
pub struct BookCore {
    book: Box<Book<BOOK_CAPACITY>>,
    /// `book.dropped_levels()` already counted.
    levels_dropped_seen: u64,
    levels_dropped: Counter,
    dropped_in_a_row: u32,
    updates_dropped: u64,
}

impl BookCore {
    /// A book whose full-side drops are counted in `levels_dropped`
    /// (`marketbox_book_levels_dropped_total`).
    pub fn new(levels_dropped: Counter) -> Self {
        BookCore {
            book: Book::new_boxed(),
            levels_dropped_seen: 0,
            levels_dropped,
            dropped_in_a_row: 0,
            updates_dropped: 0,
        }
    }

    pub fn book(&self) -> &Book<BOOK_CAPACITY> {
        &self.book
    }

    /// Forgets every level (the book is about to be rebuilt from a snapshot).
    pub fn clear(&mut self) {
        self.book.clear();
        self.dropped_in_a_row = 0;
    }

    /// Reads and applies levels straight from the frame (no allocation). The first bad level
    /// stops it: the book is then half-updated and must be resynced.
    pub fn apply_levels<'a, L: LevelSource<'a>>(
        &mut self,
        side: BookSide,
        levels: L,
    ) -> Result<usize, ResyncReason> {
        let mut n = 0;
        for lv in levels {
            let (p, q) = lv.map_err(|_| ResyncReason::Malformed)?;
            let (p, q) = read_level(p, q)?;
            self.book.apply(side, p, q);
            n += 1;
        }
        self.count_level_drops();
        Ok(n)
    }

    /// Applies an update's two sides: as read with its envelope when `read` holds them
    /// (bids, asks), else walked from the raw `bids` and `asks` ([`BookCore::apply_levels`]:
    /// the same levels, and the same error at the same level when one is bad).
    pub fn apply_sides<'a, L: LevelSource<'a>>(
        &mut self,
        read: Option<ReadSides<'_>>,
        bids: L,
        asks: L,
    ) -> Result<(), ResyncReason> {
        match read {
            Some((b, a)) => {
                self.apply_owned(BookSide::Bid, b);
                self.apply_owned(BookSide::Ask, a);
            }
            None => {
                self.apply_levels(BookSide::Bid, bids)?;
                self.apply_levels(BookSide::Ask, asks)?;
            }
        }
        Ok(())
    }

    /// Applies levels already read (a buffered update).
    pub fn apply_owned(&mut self, side: BookSide, levels: &[(Decimal, Decimal)]) {
        for (p, q) in levels {
            self.book.apply(side, *p, *q);
        }
        self.count_level_drops();
    }

    /// Marks a side as known only through its worst level (a cut snapshot).
    pub fn bound_at_worst(&mut self, side: BookSide) {
        self.book.bound_at_worst(side);
    }

    fn count_level_drops(&mut self) {
        let now = self.book.dropped_levels();
        if now > self.levels_dropped_seen {
            self.levels_dropped.inc_by(now - self.levels_dropped_seen);
            self.levels_dropped_seen = now;
        }
    }

    /// An update was older than the book and dropped, as the venue's procedure says; too
    /// many in a row means the book is stuck.
    pub fn dropped_old(&mut self) -> Result<(), ResyncReason> {
        self.updates_dropped += 1;
        self.dropped_in_a_row += 1;
        if self.dropped_in_a_row > MAX_DROPPED_IN_A_ROW {
            self.dropped_in_a_row = 0;
            return Err(ResyncReason::Stuck);
        }
        Ok(())
    }

    /// An update was applied (the run of dropped ones ends).
    pub fn advanced(&mut self) {
        self.dropped_in_a_row = 0;
    }

    /// Updates dropped as older than the book, since creation.
    pub fn updates_dropped(&self) -> u64 {
        self.updates_dropped
    }

    /// Counts `n` updates dropped by a snapshot (not a run: the snapshot moved the book on).
    pub fn dropped_by_snapshot(&mut self, n: u64) {
        self.updates_dropped += n;
    }

    /// Swaps in a book built elsewhere.
    fn replace_book(&mut self, book: Box<Book<BOOK_CAPACITY>>) {
        self.book = book;
        self.levels_dropped_seen = self.book.dropped_levels();
    }

    /// Replaces the book with `deeper`, which [`agrees`] with it, keeping each side from
    /// whichever of the two knows it further.
    pub fn splice(&mut self, mut deeper: Box<Book<BOOK_CAPACITY>>) {
        for side in [BookSide::Bid, BookSide::Ask] {
            if !deeper.knows_as_far(&self.book, side) {
                deeper.swap_side(&mut self.book, side);
            }
        }
        self.replace_book(deeper);
    }

    /// Whether a side is cut (bounded) and holds fewer than `levels`: its known range is
    /// getting thin and a deeper snapshot should be fetched before it runs out.
    pub fn is_thin(&self, levels: usize) -> bool {
        [BookSide::Bid, BookSide::Ask]
            .into_iter()
            .any(|s| self.book.is_bounded(s) && self.book.len(s) < levels)
    }

    /// The last check before publishing, then the top `depth` levels: a crossed book, or a
    /// side cut below `depth`, is refused.
    pub fn fill<const D: usize>(
        &self,
        depth: usize,
        bids: &mut heapless::Vec<(Decimal, Decimal), D>,
        asks: &mut heapless::Vec<(Decimal, Decimal), D>,
    ) -> Result<(), ResyncReason> {
        if self.book.is_crossed() {
            return Err(ResyncReason::Crossed);
        }
        self.book
            .fill(depth, bids, asks)
            .map_err(|_| ResyncReason::Truncated)
    }
}

/// Whether `deeper` (a deeper snapshot brought up to the live book's update) agrees with
/// `live` wherever both know the book: on each side, the levels of the book that knows less
/// far are exactly the other's levels in that range, in order. The cross-check that lets a
/// deeper book replace a live one without going unverified ([`BookCore::splice`]). A deeper
/// side may know less than the live one: after a trend, the side the price moved towards
/// holds more levels than a snapshot's limit.
pub fn agrees<const N: usize>(live: &Book<N>, deeper: &Book<N>) -> bool {
    [BookSide::Bid, BookSide::Ask].into_iter().all(|side| {
        let (short, long) = if deeper.knows_as_far(live, side) {
            (live, deeper)
        } else {
            (deeper, live)
        };
        let mut long_levels = long.levels(side).take_while(|l| short.knows(side, l.price));
        short.levels(side).all(|a| {
            long_levels
                .next()
                .is_some_and(|b| a.price == b.price && a.qty == b.qty)
        }) && long_levels.next().is_none()
    })
}

/// One update kept while a snapshot is fetched: the venue's ids and its levels, read.
#[derive(Debug, Clone)]
pub struct Buffered<I> {
    pub ids: I,
    pub bids: Vec<(Decimal, Decimal)>,
    pub asks: Vec<(Decimal, Decimal)>,
    /// The venue's checksum of the book after this update, if it sent one.
    pub checksum: Option<i64>,
}

impl<I> Buffered<I> {
    fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + (self.bids.len() + self.asks.len()) * std::mem::size_of::<(Decimal, Decimal)>()
    }
}

/// The updates of one book kept while its snapshot is fetched, bounded by [`MAX_BUFFERED`]
/// updates and [`MAX_BUFFER_BYTES`] bytes: the newest ones, a window that slides when full.
/// Allocates (it is the resync path); never grows past its bounds.
///
/// Why a window and not "full: start over": whether the snapshot in flight can be bridged
/// is only known when it arrives. A snapshot ahead of everything kept (a stream behind the
/// venue, the normal case under load) needs no buffered update at all, and one that is
/// older needs the updates right after it, which are the newest ones whenever it is not
/// hopelessly late. Starting over on overflow gave up snapshots of both kinds (under a
/// firehose, a deepening whose answer took 7 ms instead of 1–4 ms, and then the book ran out
/// of levels).
#[derive(Debug)]
pub struct UpdateBuffer<I> {
    items: VecDeque<Buffered<I>>,
    bytes: usize,
    /// Whether updates were dropped from the front to stay within the bounds.
    trimmed: bool,
}

impl<I> Default for UpdateBuffer<I> {
    fn default() -> Self {
        UpdateBuffer {
            items: VecDeque::new(),
            bytes: 0,
            trimmed: false,
        }
    }
}

impl<I> UpdateBuffer<I> {
    /// Keeps an update: its levels as read with its envelope when `read` holds them (bids,
    /// asks; copied, one allocation a side), else read from the raw `bids` and `asks` (the
    /// same levels, as [`BookCore::apply_sides`] relies on). A malformed raw level is
    /// `Err(Malformed)` (nothing kept); a full buffer drops its oldest updates until this one
    /// fits (see [`UpdateBuffer::trimmed`]).
    pub fn push<'a, B: LevelSource<'a>, A: LevelSource<'a>>(
        &mut self,
        ids: I,
        read: Option<ReadSides<'_>>,
        bids: B,
        asks: A,
        checksum: Option<i64>,
    ) -> Result<(), ResyncReason> {
        let mut u = Buffered {
            ids,
            bids: Vec::new(),
            asks: Vec::new(),
            checksum,
        };
        match read {
            Some((b, a)) => {
                u.bids = b.to_vec();
                u.asks = a.to_vec();
            }
            None => {
                for lv in bids {
                    let (p, q) = lv.map_err(|_| ResyncReason::Malformed)?;
                    u.bids.push(read_level(p, q)?);
                }
                for lv in asks {
                    let (p, q) = lv.map_err(|_| ResyncReason::Malformed)?;
                    u.asks.push(read_level(p, q)?);
                }
            }
        }
        let size = u.bytes();
        while !self.items.is_empty()
            && (self.items.len() >= MAX_BUFFERED || self.bytes + size > MAX_BUFFER_BYTES)
        {
            if let Some(old) = self.items.pop_front() {
                self.bytes -= old.bytes();
            }
            self.trimmed = true;
        }
        self.bytes += size;
        self.items.push_back(u);
        Ok(())
    }

    /// Whether older updates were dropped to keep within the bounds: a snapshot that the
    /// first update kept does not continue could have been bridged by a larger buffer
    /// (`BufferOverflow`), where an untrimmed buffer says the snapshot was stale.
    pub fn trimmed(&self) -> bool {
        self.trimmed
    }

    /// The reason a snapshot that the first kept update does not continue cannot be used.
    pub fn unbridged(&self) -> ResyncReason {
        if self.trimmed {
            ResyncReason::BufferOverflow
        } else {
            ResyncReason::StaleSnapshot
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes held (levels and bookkeeping).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn clear(&mut self) {
        self.items.clear();
        self.bytes = 0;
        self.trimmed = false;
    }

    pub fn iter(&self) -> impl Iterator<Item = &Buffered<I>> {
        self.items.iter()
    }
}

/// When a book's next snapshot may be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotState {
    /// Nothing wanted.
    Idle,
    /// Wanted, not before the given instant (throttle).
    Wanted { not_before: Instant },
    /// A request is out.
    InFlight,
    /// The venue says the symbol does not exist: never asked again on this connection.
    Refused,
}

/// Snapshot scheduling of one book: an enum of states and the count of failures in a row
/// that sets the backoff (500 ms doubling to 60 s, or the venue's `Retry-After` when longer,
/// capped by [`crate::time::MAX_VENUE_DELAY`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshots {
    pub state: SnapshotState,
    pub failures: u32,
}

impl Default for Snapshots {
    fn default() -> Self {
        Snapshots {
            state: SnapshotState::Idle,
            failures: 0,
        }
    }
}

/// Backoff between snapshot attempts after `failures` failures in a row.
pub fn snapshot_delay(failures: u32) -> Duration {
    crate::session::backoff::delay(
        failures,
        Duration::from_millis(500),
        Duration::from_secs(60),
    )
}

impl Snapshots {
    /// Asks for a snapshot as soon as the throttle allows (no-op when one is wanted, out or
    /// refused).
    pub fn want(&mut self, now: Instant) {
        if self.state == SnapshotState::Idle {
            self.state = SnapshotState::Wanted { not_before: now };
        }
    }

    /// The book lost sync: ask at once after a verified stretch, after the backoff while
    /// snapshots keep failing (each call since the last [`Snapshots::succeeded`] counts);
    /// nothing changes while a request is wanted or out.
    pub fn resync(&mut self, now: Instant) {
        if self.state != SnapshotState::Idle {
            return;
        }
        let d = match self.failures {
            0 => Duration::ZERO,
            n => snapshot_delay(n),
        };
        self.failures = self.failures.saturating_add(1);
        self.state = SnapshotState::Wanted {
            not_before: crate::time::after(now, d),
        };
    }

    /// Whether a request should be sent now.
    pub fn due(&self, now: Instant) -> bool {
        matches!(self.state, SnapshotState::Wanted { not_before } if now >= not_before)
    }

    /// The request was sent.
    pub fn sent(&mut self) {
        self.state = SnapshotState::InFlight;
    }

    /// An answer arrived; `false` when none was expected (a stale answer: ignore it).
    pub fn answered(&mut self) -> bool {
        if self.state != SnapshotState::InFlight {
            return false;
        }
        self.state = SnapshotState::Idle;
        true
    }

    /// The snapshot was applied.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// The attempt failed: ask again after the backoff, or after the venue's `Retry-After`
    /// when that is longer.
    pub fn retry_later(&mut self, now: Instant, retry_after: Option<Duration>) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let d = snapshot_delay(self.failures);
        let d = retry_after.map_or(d, |r| crate::time::venue_delay(r).max(d));
        self.state = SnapshotState::Wanted {
            not_before: crate::time::after(now, d),
        };
        d
    }

    /// Ask again after `d` without counting a failure (a stale snapshot: the venue answered,
    /// just too early).
    pub fn again_after(&mut self, now: Instant, d: Duration) {
        self.state = SnapshotState::Wanted {
            not_before: crate::time::after(now, d),
        };
    }

    /// The venue does not list the symbol: stop asking on this connection.
    pub fn refuse(&mut self) {
        self.state = SnapshotState::Refused;
    }

    /// A new connection: requests of the old one are void; a refusal stands.
    pub fn reconnected(&mut self) {
        if self.state != SnapshotState::Refused {
            self.state = SnapshotState::Idle;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs<'a>(
        v: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = Result<(&'a str, &'a str), ()>> {
        v.iter().map(|p| Ok(*p))
    }

    #[test]
    fn levels_are_two_decimals_neither_negative() {
        // TC0: the venue's digits are kept.
        let (p, q) = read_level("27000.10", "0.500").expect("a valid level");
        assert_eq!(
            (p.to_string(), q.to_string()),
            ("27000.10".into(), "0.500".into())
        );
        // TC1: negative price or size, exponent, empty: malformed.
        for (p, q) in [
            ("-1", "1"),
            ("1", "-0.1"),
            ("1e5", "1"),
            ("", "1"),
            ("1", ""),
        ] {
            assert_eq!(read_level(p, q), Err(ResyncReason::Malformed), "{p} {q}");
        }
        // TC2: zero quantity is a removal, not an error.
        assert!(read_level("1", "0").is_ok());
    }

    #[test]
    fn ids_may_not_jump_past_the_bound() {
        // TC0: normal moves, backwards included (that is a gap or a reset, not this check).
        assert!(check_jump(10, 11).is_ok());
        assert!(check_jump(10, 10 + MAX_ID_JUMP).is_ok());
        assert!(check_jump(10, 5).is_ok());
        // TC1: the types' maxima.
        assert_eq!(
            check_jump(10, i128::from(u64::MAX)),
            Err(ResyncReason::ImpossibleId {
                from: 10,
                to: i128::from(u64::MAX)
            })
        );
        assert!(check_jump(-1, i128::from(i64::MAX)).is_err());
        assert!(check_jump(i128::MIN, i128::MAX).is_err());
    }

    #[test]
    fn a_book_that_only_drops_is_stuck() {
        let mut b = BookCore::new(Counter::default());
        for _ in 0..MAX_DROPPED_IN_A_ROW {
            assert!(b.dropped_old().is_ok());
        }
        assert_eq!(b.dropped_old(), Err(ResyncReason::Stuck));
        // An applied update ends the run.
        for _ in 0..MAX_DROPPED_IN_A_ROW {
            assert!(b.dropped_old().is_ok());
        }
        b.advanced();
        assert!(b.dropped_old().is_ok());
        assert_eq!(b.updates_dropped(), 2 * MAX_DROPPED_IN_A_ROW as u64 + 2);
    }

    #[test]
    fn crossed_or_cut_books_are_not_published() {
        let mut b = BookCore::new(Counter::default());
        let (mut bids, mut asks) = (
            heapless::Vec::<(Decimal, Decimal), 4>::new(),
            heapless::Vec::<(Decimal, Decimal), 4>::new(),
        );
        b.apply_levels(BookSide::Bid, pairs(&[("10", "1"), ("9", "1")]))
            .expect("valid levels");
        b.apply_levels(BookSide::Ask, pairs(&[("11", "1")]))
            .expect("valid levels");
        assert!(b.fill(2, &mut bids, &mut asks).is_ok());
        // TC0: a bid at the ask crosses the book.
        b.apply_levels(BookSide::Bid, pairs(&[("11", "2")]))
            .expect("valid levels");
        assert_eq!(b.fill(2, &mut bids, &mut asks), Err(ResyncReason::Crossed));
        // TC1: a negative level stops the update.
        assert_eq!(
            b.apply_levels(BookSide::Ask, pairs(&[("12", "-1")])),
            Err(ResyncReason::Malformed)
        );
        // TC2: a cut side below the depth.
        b.clear();
        b.apply_levels(BookSide::Bid, pairs(&[("10", "1")]))
            .expect("valid levels");
        b.bound_at_worst(BookSide::Bid);
        assert_eq!(
            b.fill(2, &mut bids, &mut asks),
            Err(ResyncReason::Truncated)
        );
    }

    #[test]
    fn full_sides_count_their_dropped_levels() {
        let c = Counter::default();
        let mut b = BookCore::new(c.clone());
        // Worst first: each of the last three is better than everything kept and evicts the
        // worst level.
        let prices: Vec<String> = (1..=BOOK_CAPACITY + 3)
            .rev()
            .map(|p| p.to_string())
            .collect();
        let levels: Vec<(&str, &str)> = prices.iter().map(|p| (p.as_str(), "1")).collect();
        b.apply_levels(BookSide::Ask, pairs(&levels))
            .expect("valid levels");
        assert_eq!(c.get(), 3);
    }

    #[test]
    fn the_buffer_is_bounded_in_count_and_bytes_and_keeps_the_newest() {
        let mut buf = UpdateBuffer::<u64>::default();
        let one = [("1", "1")];
        let ids = |b: &UpdateBuffer<u64>| b.iter().map(|u| u.ids).collect::<Vec<_>>();
        // TC0: count bound: full, nothing dropped yet; a snapshot it cannot bridge is stale.
        for id in 0..MAX_BUFFERED as u64 {
            buf.push(id, None, pairs(&one), pairs(&[]), None)
                .expect("room");
        }
        assert!(!buf.trimmed());
        assert_eq!(buf.unbridged(), ResyncReason::StaleSnapshot);
        // TC1: one more drops the oldest, keeps the rest in order, and says it trimmed.
        buf.push(9999, None, pairs(&one), pairs(&[]), None)
            .expect("a full buffer slides");
        assert_eq!(buf.len(), MAX_BUFFERED);
        let kept = ids(&buf);
        assert_eq!(kept.first(), Some(&1));
        assert_eq!(kept.get(MAX_BUFFERED - 2), Some(&(MAX_BUFFERED as u64 - 1)));
        assert_eq!(kept.last(), Some(&9999));
        assert!(buf.trimmed());
        assert_eq!(buf.unbridged(), ResyncReason::BufferOverflow);
        // TC2: byte bound: big updates slide long before the count, and the bytes held stay
        // within the bound however many are pushed.
        let mut buf = UpdateBuffer::<u64>::default();
        let prices: Vec<String> = (1..=1000).map(|p| p.to_string()).collect();
        let big: Vec<(&str, &str)> = prices.iter().map(|p| (p.as_str(), "1")).collect();
        for n in 0..300 {
            buf.push(n, None, pairs(&big), pairs(&big), None)
                .expect("room is made");
            assert!(buf.bytes() <= MAX_BUFFER_BYTES);
        }
        assert!(buf.len() < 100, "{} updates of 2000 levels kept", buf.len());
        assert_eq!(ids(&buf).last(), Some(&299));
        let n = buf.len() as u64;
        assert_eq!(ids(&buf), (300 - n..300).collect::<Vec<_>>());
        // TC3: cleared, it forgets that it trimmed.
        buf.clear();
        assert!(!buf.trimmed() && buf.is_empty() && buf.bytes() == 0);
        // TC4: a malformed level keeps nothing.
        let mut buf = UpdateBuffer::<u64>::default();
        assert_eq!(
            buf.push(1, None, pairs(&[("x", "1")]), pairs(&[]), None),
            Err(ResyncReason::Malformed)
        );
        assert!(buf.is_empty());
        // TC5: an update whose levels were read with its envelope is kept as read (its raw
        // arrays, here ones that would not read, are not walked again): the same levels and
        // the same bytes as walking the raw arrays of the same update.
        let (bids, asks) = ([("10.5", "2"), ("10.4", "0")], [("10.6", "1.25")]);
        let read = |l: &[(&str, &str)]| -> Vec<(Decimal, Decimal)> {
            l.iter()
                .map(|(p, q)| read_level(p, q).expect("valid levels"))
                .collect()
        };
        let (rb, ra) = (read(&bids), read(&asks));
        let mut walked = UpdateBuffer::<u64>::default();
        walked
            .push(7, None, pairs(&bids), pairs(&asks), Some(3))
            .expect("room");
        let mut as_read = UpdateBuffer::<u64>::default();
        let bad = [("x", "1")];
        as_read
            .push(7, Some((&rb, &ra)), pairs(&bad), pairs(&bad), Some(3))
            .expect("room");
        let (w, r) = (walked.iter().next(), as_read.iter().next());
        assert_eq!(w.map(|u| (&u.bids, &u.asks)), r.map(|u| (&u.bids, &u.asks)));
        assert_eq!(w.map(|u| u.checksum), Some(Some(3)));
        assert_eq!(walked.bytes(), as_read.bytes());
    }

    #[test]
    fn snapshots_follow_one_schedule() {
        let t0 = Instant::now();
        let mut s = Snapshots::default();
        // TC0: wanted now, sent, answered once.
        s.want(t0);
        assert!(s.due(t0));
        s.sent();
        assert!(!s.due(t0));
        assert!(s.answered());
        assert!(!s.answered(), "a second answer is stale");
        // TC1: failures back off; a longer Retry-After wins, capped.
        let d = s.retry_later(t0, None);
        assert_eq!(d, Duration::from_secs(1));
        assert!(!s.due(t0) && s.due(t0 + d));
        let d = s.retry_later(t0, Some(Duration::from_secs(u64::MAX)));
        assert_eq!(d, crate::time::MAX_VENUE_DELAY);
        // TC2: a refusal stands across reconnects; anything else is forgotten.
        s.refuse();
        s.reconnected();
        assert_eq!(s.state, SnapshotState::Refused);
        s.want(t0);
        assert!(!s.due(t0));
        let mut s = Snapshots::default();
        s.sent();
        s.reconnected();
        assert_eq!(s.state, SnapshotState::Idle);
        // TC3: a lost sync asks at once after a verified stretch, then backs off while the
        // snapshots keep failing, and does not stack requests.
        let mut s = Snapshots::default();
        s.resync(t0);
        assert!(s.due(t0));
        s.sent();
        s.resync(t0);
        assert_eq!(s.state, SnapshotState::InFlight, "one request at a time");
        assert!(s.answered());
        s.resync(t0);
        assert!(!s.due(t0), "the second in a row waits");
        assert!(s.due(t0 + snapshot_delay(1)));
        s.sent();
        assert!(s.answered());
        s.resync(t0);
        assert!(!s.due(t0 + snapshot_delay(1)), "and the third longer");
        s.succeeded();
        s.sent();
        assert!(s.answered());
        s.resync(t0);
        assert!(s.due(t0), "after a success: at once again");
        // TC4: the labels are distinct.
        let mut labels = ResyncReason::LABELS.to_vec();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), ResyncReason::LABELS.len());
    }
}
