//! Fixed-capacity order books.
//!
//! Design: each side is a `heapless::Vec<Level, N>` sorted best first (bids descending, asks
//! ascending), updated by binary-search upsert; a quantity of zero removes the level. Prices and
//! quantities are [`Decimal`]s that keep the venue's digits (OKX's checksum is computed over the
//! exact strings). Nothing here allocates after construction.
//!
//! # Truncation policy
//!
//! A side may know the venue's book only down to a *known-through* price: levels worse than it
//! are unknown to us. Updates at prices worse than the bound are ignored, because applying them
//! would create a book with holes (a level we store next to levels we never saw). The bound is
//! set in two cases:
//!
//! - a snapshot returned exactly as many levels as were asked for on a side (the venue cut it):
//!   the caller calls [`Book::bound_at_worst`] after loading that side;
//! - a full side must take a level: the worst level is evicted (or the new level is refused if it
//!   would itself be the worst), the drop is counted in [`Book::dropped_levels`], and the bound
//!   moves to the new worst kept level.
//!
//! The bound only ever moves towards the best price until [`Book::clear`]. Every stored level is
//! therefore exactly the venue's. A bounded side that has shrunk below the published depth
//! cannot vouch for that depth: [`Book::fill`] returns [`Truncated`] and the caller resyncs.

use crate::book::Decimal;
use crate::model::OrderbookData;

/// One price level, with the venue's digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    pub price: Decimal,
    pub qty: Decimal,
}

/// A side of the book.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BookSide {
    Bid,
    Ask,
}

/// Levels per side the venues' books are kept to (Binance's largest snapshot, `limit=1000`).
pub const BOOK_CAPACITY: usize = 1000;

/// The book cannot vouch for the requested depth: a bounded side holds fewer levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("book side truncated below the published depth; request a new snapshot")]
pub struct Truncated;

/// What one update did to the book.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A new level was stored.
    Inserted,
    /// An existing level got a new quantity (and the update's digits).
    Updated,
    /// A level was removed (quantity zero).
    Removed,
    /// Removal of a level the book did not hold (normal on Binance).
    Absent,
    /// At a price worse than the known-through bound, or refused by a full side: ignored.
    Unknown,
    /// Stored into a full side: the worst level was evicted and counted.
    Evicted,
}

#[derive(Debug, Clone)]
struct Side<const N: usize> {
    levels: heapless::Vec<Level, N>,
    known_through: Option<Decimal>,
    side: BookSide,
}

impl<const N: usize> Side<N> {
    const fn new(side: BookSide) -> Self {
        Side {
            levels: heapless::Vec::new(),
            known_through: None,
            side,
        }
    }

    /// Whether `a` is a strictly better price than `b` on this side.
    fn better(&self, a: Decimal, b: Decimal) -> bool {
        match self.side {
            BookSide::Bid => a > b,
            BookSide::Ask => a < b,
        }
    }

    /// Position of `price` in the best-first order.
    fn search(&self, price: Decimal) -> Result<usize, usize> {
        self.levels.binary_search_by(|l| match self.side {
            BookSide::Bid => price.cmp(&l.price),
            BookSide::Ask => l.price.cmp(&price),
        })
    }

    fn apply(&mut self, price: Decimal, qty: Decimal, dropped: &mut u64) -> Applied {
        if let Some(bound) = self.known_through
            && self.better(bound, price)
        {
            return Applied::Unknown;
        }
        match self.search(price) {
            Ok(i) if qty.is_zero() => {
                self.levels.remove(i);
                Applied::Removed
            }
            Ok(i) => {
                self.levels[i] = Level { price, qty };
                Applied::Updated
            }
            Err(_) if qty.is_zero() => Applied::Absent,
            Err(i) => {
                let level = Level { price, qty };
                if !self.levels.is_full() {
                    // Not full (checked just above), so the insert cannot fail.
                    let _ = self.levels.insert(i, level);
                    return Applied::Inserted;
                }
                *dropped += 1;
                if i == self.levels.len() {
                    // Worse than everything kept: the new level itself becomes unknown.
                    self.known_through = self.levels.last().map(|l| l.price);
                    return Applied::Unknown;
                }
                self.levels.pop();
                // One slot was just freed.
                let _ = self.levels.insert(i, level);
                self.known_through = self.levels.last().map(|l| l.price);
                Applied::Evicted
            }
        }
    }

    fn can_fill(&self, depth: usize) -> bool {
        self.known_through.is_none() || self.levels.len() >= depth
    }

    fn fill<const D: usize>(&self, depth: usize, out: &mut heapless::Vec<(Decimal, Decimal), D>) {
        out.clear();
        for l in self.levels.iter().take(depth) {
            if out.push((l.price, l.qty)).is_err() {
                break;
            }
        }
    }
}

/// A two-sided book of at most `N` levels per side.
#[derive(Debug, Clone)]
pub struct Book<const N: usize> {
    bids: Side<N>,
    asks: Side<N>,
    dropped: u64,
}

impl<const N: usize> Default for Book<N> {
    fn default() -> Self {
        Book::new()
    }
}

impl<const N: usize> Book<N> {
    /// An empty, unbounded book.
    pub const fn new() -> Self {
        Book {
            bids: Side::new(BookSide::Bid),
            asks: Side::new(BookSide::Ask),
            dropped: 0,
        }
    }

    /// An empty book on the heap, built once at start-up.
    ///
    /// `Book<BOOK_CAPACITY>` is about 64 KiB. Optimised builds construct it in place (only the
    /// two lengths and bounds are written; the level storage stays uninitialised); unoptimised
    /// builds pass it through the stack once, which any thread's stack affords.
    pub fn new_boxed() -> Box<Self> {
        Box::new(Book::new())
    }

    fn side(&self, side: BookSide) -> &Side<N> {
        match side {
            BookSide::Bid => &self.bids,
            BookSide::Ask => &self.asks,
        }
    }

    fn side_mut(&mut self, side: BookSide) -> &mut Side<N> {
        match side {
            BookSide::Bid => &mut self.bids,
            BookSide::Ask => &mut self.asks,
        }
    }

    /// Empties both sides and forgets their bounds (the dropped-level counter is kept).
    pub fn clear(&mut self) {
        for s in [&mut self.bids, &mut self.asks] {
            s.levels.clear();
            s.known_through = None;
        }
    }

    /// Applies an absolute quantity at a price (zero removes), following the truncation policy.
    pub fn apply(&mut self, side: BookSide, price: Decimal, qty: Decimal) -> Applied {
        let dropped = &mut self.dropped;
        match side {
            BookSide::Bid => self.bids.apply(price, qty, dropped),
            BookSide::Ask => self.asks.apply(price, qty, dropped),
        }
    }

    /// Marks a side as known only through its current worst level (a snapshot cut at its limit).
    pub fn bound_at_worst(&mut self, side: BookSide) {
        let s = self.side_mut(side);
        let worst = s.levels.last().map(|l| l.price);
        s.known_through = match (s.known_through, worst) {
            // Never widen an existing bound.
            (Some(b), Some(w)) if s.better(b, w) => Some(b),
            (_, w) => w,
        };
    }

    /// The known-through bound of a side (`None`: the side holds the venue's whole book).
    pub fn known_through(&self, side: BookSide) -> Option<Decimal> {
        self.side(side).known_through
    }

    /// Levels of a side, best first.
    pub fn levels(&self, side: BookSide) -> &[Level] {
        &self.side(side).levels
    }

    /// Number of levels on a side.
    pub fn len(&self, side: BookSide) -> usize {
        self.side(side).levels.len()
    }

    /// Whether both sides are empty.
    pub fn is_empty(&self) -> bool {
        self.bids.levels.is_empty() && self.asks.levels.is_empty()
    }

    /// Best level of a side.
    pub fn best(&self, side: BookSide) -> Option<Level> {
        self.side(side).levels.first().copied()
    }

    /// Levels dropped by full sides since creation.
    pub fn dropped_levels(&self) -> u64 {
        self.dropped
    }

    /// Whether both sides can vouch for `depth` levels (or hold the venue's whole side).
    pub fn can_fill(&self, depth: usize) -> bool {
        self.bids.can_fill(depth) && self.asks.can_fill(depth)
    }

    /// Writes the top `depth` levels of each side into `out`, best first, without allocating
    /// (at most `out`'s capacity). `update_id` is left to the caller. On `Err` `out` is untouched.
    pub fn fill(&self, depth: usize, out: &mut OrderbookData) -> Result<(), Truncated> {
        if !self.can_fill(depth) {
            return Err(Truncated);
        }
        self.bids.fill(depth, &mut out.bids);
        self.asks.fill(depth, &mut out.asks);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BookSide::{Ask, Bid};

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    fn prices<const N: usize>(b: &Book<N>, side: BookSide) -> Vec<String> {
        b.levels(side).iter().map(|l| l.price.to_string()).collect()
    }

    fn empty_out() -> OrderbookData {
        OrderbookData {
            bids: heapless::Vec::new(),
            asks: heapless::Vec::new(),
            update_id: 0,
        }
    }

    /// Applies `(side, price, qty)` updates in order to a book of capacity 3.
    fn run(updates: &[(BookSide, &str, &str)]) -> (Book<3>, Vec<Applied>) {
        let mut b = Book::<3>::new();
        let r = updates
            .iter()
            .map(|&(s, p, q)| b.apply(s, d(p), d(q)))
            .collect();
        (b, r)
    }

    struct UpsertCase {
        updates: &'static [(BookSide, &'static str, &'static str)],
        bids: &'static [&'static str],
        asks: &'static [&'static str],
        last: Applied,
    }

    #[test]
    fn upsert_keeps_sides_sorted_best_first() {
        let cases = [
            // TC0: bids descend whatever the arrival order.
            UpsertCase {
                updates: &[(Bid, "10", "1"), (Bid, "12", "1"), (Bid, "11", "1")],
                bids: &["12", "11", "10"],
                asks: &[],
                last: Applied::Inserted,
            },
            // TC1: asks ascend whatever the arrival order.
            UpsertCase {
                updates: &[(Ask, "15", "1"), (Ask, "13", "1"), (Ask, "14", "1")],
                bids: &[],
                asks: &["13", "14", "15"],
                last: Applied::Inserted,
            },
            // TC2: the same price written with other digits is the same level; new digits kept.
            UpsertCase {
                updates: &[(Bid, "10.0", "1"), (Bid, "10.00", "3")],
                bids: &["10.00"],
                asks: &[],
                last: Applied::Updated,
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            let (b, r) = run(c.updates);
            assert_eq!(prices(&b, Bid), c.bids, "TC{i}");
            assert_eq!(prices(&b, Ask), c.asks, "TC{i}");
            assert_eq!(r.last(), Some(&c.last), "TC{i}");
        }
    }

    #[test]
    fn quantities_are_absolute_and_zero_removes() {
        struct Case {
            updates: &'static [(BookSide, &'static str, &'static str)],
            qtys: &'static [&'static str],
            last: Applied,
        }
        let cases = [
            // TC0: a quantity replaces the old one, keeping the venue's digits.
            Case {
                updates: &[(Ask, "5", "1"), (Ask, "5", "2.500")],
                qtys: &["2.500"],
                last: Applied::Updated,
            },
            // TC1: zero (in any spelling) removes the level.
            Case {
                updates: &[(Ask, "5", "1"), (Ask, "5.0", "0.00000000")],
                qtys: &[],
                last: Applied::Removed,
            },
            // TC2: removing a level the book does not hold changes nothing.
            Case {
                updates: &[(Ask, "5", "1"), (Ask, "6", "0")],
                qtys: &["1"],
                last: Applied::Absent,
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            let (b, r) = run(c.updates);
            let q: Vec<String> = b.levels(Ask).iter().map(|l| l.qty.to_string()).collect();
            assert_eq!(q, c.qtys, "TC{i}");
            assert_eq!(r.last(), Some(&c.last), "TC{i}");
        }
    }

    #[test]
    fn a_full_side_evicts_its_worst_level_and_sets_known_through() {
        struct Case {
            updates: &'static [(BookSide, &'static str, &'static str)],
            bids: &'static [&'static str],
            bound: Option<&'static str>,
            dropped: u64,
            last: Applied,
        }
        const FULL: [(BookSide, &str, &str); 3] =
            [(Bid, "10", "1"), (Bid, "9", "1"), (Bid, "8", "1")];
        let cases = [
            // TC0: a full side without a bound is unbounded.
            Case {
                updates: &FULL,
                bids: &["10", "9", "8"],
                bound: None,
                dropped: 0,
                last: Applied::Inserted,
            },
            // TC1: a better level evicts the worst (8); the bound moves to the new worst (9).
            Case {
                updates: &[FULL[0], FULL[1], FULL[2], (Bid, "11", "1")],
                bids: &["11", "10", "9"],
                bound: Some("9"),
                dropped: 1,
                last: Applied::Evicted,
            },
            // TC2: a level inside the book evicts the worst too.
            Case {
                updates: &[FULL[0], FULL[1], FULL[2], (Bid, "9.5", "1")],
                bids: &["10", "9.5", "9"],
                bound: Some("9"),
                dropped: 1,
                last: Applied::Evicted,
            },
            // TC3: a level worse than everything kept is refused, counted, and bounds the side.
            Case {
                updates: &[FULL[0], FULL[1], FULL[2], (Bid, "7", "1")],
                bids: &["10", "9", "8"],
                bound: Some("8"),
                dropped: 1,
                last: Applied::Unknown,
            },
            // TC4: updating an existing level of a full side evicts nothing.
            Case {
                updates: &[FULL[0], FULL[1], FULL[2], (Bid, "8", "2")],
                bids: &["10", "9", "8"],
                bound: None,
                dropped: 0,
                last: Applied::Updated,
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            let (b, r) = run(c.updates);
            assert_eq!(prices(&b, Bid), c.bids, "TC{i}");
            assert_eq!(b.known_through(Bid), c.bound.map(d), "TC{i}");
            assert_eq!(b.dropped_levels(), c.dropped, "TC{i}");
            assert_eq!(r.last(), Some(&c.last), "TC{i}");
        }
    }

    #[test]
    fn updates_beyond_known_through_are_ignored() {
        struct Case {
            update: (BookSide, &'static str, &'static str),
            result: Applied,
            asks: &'static [&'static str],
        }
        // Asks 1, 2, 3 bounded at 3 (a cut snapshot).
        let cases = [
            // TC0: a new level worse than the bound is unknown territory.
            Case {
                update: (Ask, "4", "1"),
                result: Applied::Unknown,
                asks: &["1", "2", "3"],
            },
            // TC1: a removal beyond the bound is ignored too.
            Case {
                update: (Ask, "3.5", "0"),
                result: Applied::Unknown,
                asks: &["1", "2", "3"],
            },
            // TC2: the bound price itself is known: it can be updated.
            Case {
                update: (Ask, "3", "7"),
                result: Applied::Updated,
                asks: &["1", "2", "3"],
            },
            // TC3: a removal inside the bound shrinks the side; the bound stays.
            Case {
                update: (Ask, "2", "0"),
                result: Applied::Removed,
                asks: &["1", "3"],
            },
            // TC4: a new level between kept levels and the bound is stored.
            Case {
                update: (Ask, "2.5", "1"),
                result: Applied::Evicted,
                asks: &["1", "2", "2.5"],
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            let (mut b, _) = run(&[(Ask, "1", "1"), (Ask, "2", "1"), (Ask, "3", "1")]);
            b.bound_at_worst(Ask);
            let (s, p, q) = c.update;
            assert_eq!(b.apply(s, d(p), d(q)), c.result, "TC{i}");
            assert_eq!(prices(&b, Ask), c.asks, "TC{i}");
            assert!(b.known_through(Ask).is_some(), "TC{i}");
        }
        // A cleared book forgets its bound.
        let (mut b, _) = run(&[(Ask, "1", "1")]);
        b.bound_at_worst(Ask);
        b.clear();
        assert_eq!((b.known_through(Ask), b.is_empty()), (None, true));
    }

    #[test]
    fn fill_writes_top_levels_or_says_truncated() {
        struct Case {
            bound_bids: bool,
            depth: usize,
            result: Result<(&'static [&'static str], usize), Truncated>,
        }
        // Bids 10, 9; asks 11.
        let cases = [
            // TC0: an unbounded book publishes what it has, best first.
            Case {
                bound_bids: false,
                depth: 1,
                result: Ok((&["10"], 1)),
            },
            // TC1: unbounded sides shorter than depth are the whole book: fine.
            Case {
                bound_bids: false,
                depth: 5,
                result: Ok((&["10", "9"], 1)),
            },
            // TC2: a bounded side holding exactly depth levels can vouch for them.
            Case {
                bound_bids: true,
                depth: 2,
                result: Ok((&["10", "9"], 1)),
            },
            // TC3: a bounded side with fewer than depth levels cannot.
            Case {
                bound_bids: true,
                depth: 3,
                result: Err(Truncated),
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            let (mut b, _) = run(&[(Bid, "10", "1"), (Bid, "9", "2"), (Ask, "11", "3")]);
            if c.bound_bids {
                b.bound_at_worst(Bid);
            }
            let mut out = empty_out();
            let r = b.fill(c.depth, &mut out).map(|()| {
                let bids: Vec<String> = out.bids.iter().map(|l| l.0.to_string()).collect();
                (bids, out.asks.len())
            });
            let want = c
                .result
                .map(|(bids, asks)| (bids.iter().map(|s| s.to_string()).collect(), asks));
            assert_eq!(r, want, "TC{i}");
        }
        // The best level of each side is the first one.
        let (b, _) = run(&[(Bid, "10", "1"), (Bid, "9", "2"), (Ask, "11", "3")]);
        assert_eq!(b.best(Bid).map(|l| l.price), Some(d("10")));
        assert_eq!((b.len(Bid), b.len(Ask)), (2, 1));
    }

    #[test]
    fn a_boxed_book_at_venue_capacity_is_empty() {
        let b = Book::<BOOK_CAPACITY>::new_boxed();
        assert!(b.is_empty() && b.best(Bid).is_none() && b.dropped_levels() == 0);
    }
}
