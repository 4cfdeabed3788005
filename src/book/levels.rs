//! Fixed-capacity order books.
//!
//! Design: each side is a `heapless::Vec<Level, N>` sorted best first (bids descending, asks
//! ascending), updated by binary-search upsert; a quantity of zero removes the level. Nothing
//! here allocates after construction.
//!
//! Truncation policy: a side may know the book only down to a "known through" price. Levels
//! worse than it are unknown, and updates there are ignored, because applying them would
//! create a book with holes. The bound is set when a snapshot was cut by the venue (it returned
//! as many levels as asked for) and when a full side must evict its worst level to take a
//! better one (the evicted level becomes unknown; the bound moves to the new worst kept
//! level; the drop is counted). Every stored level is therefore exactly the venue's. A side
//! with a bound and fewer than `depth` levels cannot fill a message: [`Book::fill`] says
//! `Truncated` and the caller resyncs.

use crate::decimal::Decimal;

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

/// Levels per side the venues' books are kept to (Binance's largest snapshot).
pub const BOOK_CAPACITY: usize = 1000;

/// The book cannot fill `depth` levels it can vouch for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("book side truncated below the published depth")]
pub struct Truncated;

/// What an update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Inserted,
    Updated,
    Removed,
    /// Removal of a level the book did not hold (normal on Binance).
    Absent,
    /// Beyond the known-through bound: ignored.
    Unknown,
    /// Inserted into a full side: the worst level was evicted.
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

    /// Whether `a` is a better price than `b` on this side.
    fn better(&self, a: Decimal, b: Decimal) -> bool {
        match self.side {
            BookSide::Bid => a > b,
            BookSide::Ask => a < b,
        }
    }

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
            Ok(i) => {
                if qty.is_zero() {
                    self.levels.remove(i);
                    Applied::Removed
                } else {
                    self.levels[i] = Level { price, qty };
                    Applied::Updated
                }
            }
            Err(_) if qty.is_zero() => Applied::Absent,
            Err(i) => {
                let level = Level { price, qty };
                if !self.levels.is_full() {
                    // Capacity checked just above.
                    let _ = self.levels.insert(i, level);
                    return Applied::Inserted;
                }
                *dropped += 1;
                if i == self.levels.len() {
                    // Worse than everything kept: it becomes unknown itself.
                    self.known_through = self.levels.last().map(|l| l.price);
                    return Applied::Unknown;
                }
                self.levels.pop();
                let _ = self.levels.insert(i, level);
                self.known_through = self.levels.last().map(|l| l.price);
                Applied::Evicted
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
    pub const fn new() -> Self {
        Book {
            bids: Side::new(BookSide::Bid),
            asks: Side::new(BookSide::Ask),
            dropped: 0,
        }
    }

    /// A book on the heap (built once at start-up; large `N` would not fit a small stack).
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

    /// Empties both sides and forgets their bounds.
    pub fn clear(&mut self) {
        for s in [&mut self.bids, &mut self.asks] {
            s.levels.clear();
            s.known_through = None;
        }
    }

    /// Applies an absolute quantity at a price (zero removes).
    pub fn apply(&mut self, side: BookSide, price: Decimal, qty: Decimal) -> Applied {
        let mut dropped = self.dropped;
        let r = match side {
            BookSide::Bid => self.bids.apply(price, qty, &mut dropped),
            BookSide::Ask => self.asks.apply(price, qty, &mut dropped),
        };
        self.dropped = dropped;
        r
    }

    /// Marks a side as known only through its current worst level (a cut snapshot).
    pub fn bound_at_worst(&mut self, side: BookSide) {
        let s = self.side_mut(side);
        s.known_through = s.levels.last().map(|l| l.price);
    }

    /// Levels of a side, best first.
    pub fn levels(&self, side: BookSide) -> &[Level] {
        &self.side(side).levels
    }

    pub fn len(&self, side: BookSide) -> usize {
        self.side(side).levels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bids.levels.is_empty() && self.asks.levels.is_empty()
    }

    pub fn best(&self, side: BookSide) -> Option<Level> {
        self.side(side).levels.first().copied()
    }

    /// Whether a side has a known-through bound.
    pub fn is_bounded(&self, side: BookSide) -> bool {
        self.side(side).known_through.is_some()
    }

    /// Levels dropped by full sides since creation.
    pub fn dropped_levels(&self) -> u64 {
        self.dropped
    }

    /// Whether both sides can vouch for `depth` levels (or hold the whole book).
    pub fn can_fill(&self, depth: usize) -> bool {
        [&self.bids, &self.asks]
            .iter()
            .all(|s| s.known_through.is_none() || s.levels.len() >= depth)
    }

    /// Whether the best bid is at or above the best ask: a book no venue can have.
    pub fn is_crossed(&self) -> bool {
        match (self.best(BookSide::Bid), self.best(BookSide::Ask)) {
            (Some(b), Some(a)) => b.price >= a.price,
            _ => false,
        }
    }

    /// Writes the top `depth` levels of each side, best first, without allocating.
    pub fn fill<const D: usize>(
        &self,
        depth: usize,
        bids: &mut heapless::Vec<(Decimal, Decimal), D>,
        asks: &mut heapless::Vec<(Decimal, Decimal), D>,
    ) -> Result<(), Truncated> {
        if !self.can_fill(depth) {
            return Err(Truncated);
        }
        bids.clear();
        asks.clear();
        for l in self.bids.levels.iter().take(depth) {
            if bids.push((l.price, l.qty)).is_err() {
                break;
            }
        }
        for l in self.asks.levels.iter().take(depth) {
            if asks.push((l.price, l.qty)).is_err() {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).expect("a valid decimal")
    }

    fn prices<const N: usize>(b: &Book<N>, side: BookSide) -> Vec<String> {
        b.levels(side).iter().map(|l| l.price.to_string()).collect()
    }

    #[test]
    fn sides_stay_sorted_best_first() {
        let mut b = Book::<8>::new();
        // TC0: bids descend, asks ascend, whatever the arrival order.
        for p in ["10", "12", "11"] {
            assert_eq!(b.apply(BookSide::Bid, d(p), d("1")), Applied::Inserted);
        }
        for p in ["15", "13", "14"] {
            b.apply(BookSide::Ask, d(p), d("1"));
        }
        assert_eq!(prices(&b, BookSide::Bid), ["12", "11", "10"]);
        assert_eq!(prices(&b, BookSide::Ask), ["13", "14", "15"]);
        assert_eq!(
            b.best(BookSide::Ask).expect("a level on that side").price,
            d("13")
        );
    }

    #[test]
    fn quantities_are_absolute_and_zero_removes() {
        let mut b = Book::<8>::new();
        b.apply(BookSide::Bid, d("10.0"), d("1"));
        // TC1: same price written differently is the same level; the new digits are kept.
        assert_eq!(b.apply(BookSide::Bid, d("10.00"), d("3")), Applied::Updated);
        assert_eq!(b.levels(BookSide::Bid)[0].qty.to_string(), "3");
        assert_eq!(b.levels(BookSide::Bid)[0].price.to_string(), "10.00");
        // TC2: zero removes; removing again is absent.
        assert_eq!(
            b.apply(BookSide::Bid, d("10"), d("0.000")),
            Applied::Removed
        );
        assert_eq!(b.apply(BookSide::Bid, d("10"), d("0")), Applied::Absent);
        assert!(b.is_empty());
    }

    #[test]
    fn a_full_side_evicts_its_worst_level_and_bounds_itself() {
        let mut b = Book::<3>::new();
        for p in ["10", "9", "8"] {
            b.apply(BookSide::Bid, d(p), d("1"));
        }
        // TC3: a better level evicts 8; 9 becomes the known-through bound.
        assert_eq!(b.apply(BookSide::Bid, d("11"), d("1")), Applied::Evicted);
        assert_eq!(prices(&b, BookSide::Bid), ["11", "10", "9"]);
        assert_eq!(b.dropped_levels(), 1);
        assert!(b.is_bounded(BookSide::Bid));
        // TC4: updates beyond the bound are unknown territory and ignored.
        assert_eq!(b.apply(BookSide::Bid, d("8"), d("5")), Applied::Unknown);
        assert_eq!(b.apply(BookSide::Bid, d("8.5"), d("5")), Applied::Unknown);
        // TC5: the bound itself is known: it can be updated.
        assert_eq!(b.apply(BookSide::Bid, d("9"), d("2")), Applied::Updated);
    }

    #[test]
    fn a_worse_level_into_a_full_side_is_dropped_and_bounds_it() {
        let mut b = Book::<2>::new();
        b.apply(BookSide::Ask, d("1"), d("1"));
        b.apply(BookSide::Ask, d("2"), d("1"));
        // TC6: 3 is worse than everything kept: dropped, bound at 2.
        assert_eq!(b.apply(BookSide::Ask, d("3"), d("1")), Applied::Unknown);
        assert_eq!(b.dropped_levels(), 1);
        assert_eq!(prices(&b, BookSide::Ask), ["1", "2"]);
        assert!(b.is_bounded(BookSide::Ask));
    }

    #[test]
    fn fill_writes_top_levels_or_says_truncated() {
        let mut b = Book::<4>::new();
        for p in ["10", "9", "8"] {
            b.apply(BookSide::Bid, d(p), d("1"));
        }
        b.apply(BookSide::Ask, d("11"), d("2"));
        let (mut bids, mut asks) = (
            heapless::Vec::<(Decimal, Decimal), 8>::new(),
            heapless::Vec::<(Decimal, Decimal), 8>::new(),
        );
        // TC7: an unbounded book publishes what it has, best first.
        b.fill(2, &mut bids, &mut asks)
            .expect("the book fills the depth");
        assert_eq!(
            bids.iter().map(|l| l.0.to_string()).collect::<Vec<_>>(),
            ["10", "9"]
        );
        assert_eq!(asks.len(), 1);
        // TC8: a bounded side with fewer than depth levels cannot vouch for the depth.
        b.bound_at_worst(BookSide::Bid);
        assert!(b.fill(3, &mut bids, &mut asks).is_ok());
        b.apply(BookSide::Bid, d("10"), d("0"));
        assert_eq!(b.fill(3, &mut bids, &mut asks), Err(Truncated));
        assert!(b.fill(2, &mut bids, &mut asks).is_ok());
    }
}
