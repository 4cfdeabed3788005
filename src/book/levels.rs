//! Fixed-capacity order books.
//!
//! Design: each side is kept best first (bids descending, asks ascending) in blocks of
//! [`BLOCK`] levels drawn from a fixed pool, with an order array of block indices and each
//! block's first key kept beside it: a change costs a scan of those first keys (a few dozen
//! integers, branch-predictable), a binary search and a shift within one block (at most
//! [`BLOCK`] levels), not a shift of the whole side, wherever in the book it lands. A block
//! keeps its keys apart from its levels so searches touch only keys. Blocks split when full and
//! are refilled from a neighbour, or merged into it, when under half full, so a side of `N`
//! levels never needs more than `N / (BLOCK / 2) + 1` blocks ([`MAX_BLOCKS`] covers [`BOOK_CAPACITY`]). Each level carries an
//! integer key beside the venue's digits: its value scaled to 19 decimal places as an `i128`,
//! sign-flipped for bids, so every comparison is one integer comparison whatever digits the
//! venue wrote (`"3366"` and `"3366.1"` on OKX), while the digits themselves are kept for
//! output and for OKX's checksum. Nothing here allocates after construction.
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

/// Levels per block.
pub const BLOCK: usize = 32;
/// Blocks in a side's pool: blocks other than a side's only one hold at least `BLOCK / 2`
/// levels, so `BOOK_CAPACITY / (BLOCK / 2) + 1` always suffice.
pub const MAX_BLOCKS: usize = BOOK_CAPACITY / (BLOCK / 2) + 2;

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

/// `10^k` for `k` in `0..=19`.
const POW10: [i128; 20] = {
    let mut t = [1i128; 20];
    let mut i = 1;
    while i < 20 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

/// A price's sort key: its value at 19 decimal places (exact: a `Decimal` has at most 19),
/// negated for bids so that ascending keys are best first on both sides. One `i128`, so a
/// comparison is two instructions without a branch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Key(i128);

fn key(side: BookSide, price: Decimal) -> Key {
    let scale = usize::from(price.scale()).min(19);
    let v = i128::from(price.mantissa()) * POW10[19 - scale];
    Key(match side {
        BookSide::Bid => -v,
        BookSide::Ask => v,
    })
}

/// A level as stored: the two decimals' parts packed (24 bytes instead of 32).
#[derive(Debug, Clone, Copy, Default)]
struct Packed {
    price: i64,
    qty: i64,
    price_scale: u8,
    qty_scale: u8,
}

impl Packed {
    fn new(l: Level) -> Self {
        Packed {
            price: l.price.mantissa(),
            qty: l.qty.mantissa(),
            price_scale: l.price.scale(),
            qty_scale: l.qty.scale(),
        }
    }

    fn level(self) -> Level {
        Level {
            price: Decimal::new(self.price, self.price_scale),
            qty: Decimal::new(self.qty, self.qty_scale),
        }
    }
}

/// A level and its key.
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    key: Key,
    level: Packed,
}

/// Up to [`BLOCK`] consecutive levels, sorted by key. The keys are kept apart from the levels,
/// so a search reads 8 cache lines of keys and never the levels.
#[derive(Debug, Clone)]
struct Block {
    len: usize,
    keys: [Key; BLOCK],
    levels: [Packed; BLOCK],
}

impl Block {
    const EMPTY: Block = Block {
        len: 0,
        keys: [Key(0); BLOCK],
        levels: [Packed {
            price: 0,
            qty: 0,
            price_scale: 0,
            qty_scale: 0,
        }; BLOCK],
    };

    fn first(&self) -> Key {
        self.keys[0]
    }

    fn last(&self) -> Key {
        self.keys[self.len - 1]
    }

    fn search(&self, k: Key) -> Result<usize, usize> {
        self.keys[..self.len].binary_search(&k)
    }

    fn insert(&mut self, at: usize, e: Entry) {
        self.keys.copy_within(at..self.len, at + 1);
        self.levels.copy_within(at..self.len, at + 1);
        self.keys[at] = e.key;
        self.levels[at] = e.level;
        self.len += 1;
    }

    fn remove(&mut self, at: usize) -> Entry {
        let out = Entry {
            key: self.keys[at],
            level: self.levels[at],
        };
        self.keys.copy_within(at + 1..self.len, at);
        self.levels.copy_within(at + 1..self.len, at);
        self.len -= 1;
        out
    }

    /// Appends `other`'s levels `from..to` (they sort after this block's).
    fn append(&mut self, other: &Block, from: usize, to: usize) {
        let (at, n) = (self.len, to - from);
        self.keys[at..at + n].copy_from_slice(&other.keys[from..to]);
        self.levels[at..at + n].copy_from_slice(&other.levels[from..to]);
        self.len += n;
    }
}

/// Two distinct blocks of the pool, mutably.
fn two_mut(blocks: &mut [Block], a: usize, b: usize) -> (&mut Block, &mut Block) {
    if a < b {
        let (x, y) = blocks.split_at_mut(b);
        (&mut x[a], &mut y[0])
    } else {
        let (x, y) = blocks.split_at_mut(a);
        (&mut y[0], &mut x[b])
    }
}

#[derive(Debug)]
struct Side<const N: usize> {
    /// The pool, reserved whole at construction ([`MAX_BLOCKS`]) and filled as the side first
    /// needs each block, so its memory is touched only as deep as the book has been: a side
    /// that never held more than a few hundred levels keeps a few pages, not 82 kB. `order`
    /// says which blocks hold levels, best first; `free` which blocks were used and emptied.
    blocks: Vec<Block>,
    order: heapless::Vec<u16, MAX_BLOCKS>,
    /// The first key of each block in `order` (searched without touching the blocks).
    firsts: heapless::Vec<Key, MAX_BLOCKS>,
    free: heapless::Vec<u16, MAX_BLOCKS>,
    len: usize,
    /// The key of the worst level the side vouches for, when it is cut.
    known_through: Option<Key>,
    side: BookSide,
}

impl<const N: usize> Clone for Side<N> {
    /// Keeps the whole pool's capacity, so the copy does not allocate when it grows.
    fn clone(&self) -> Self {
        let mut blocks = Vec::with_capacity(MAX_BLOCKS);
        blocks.extend_from_slice(&self.blocks);
        Side {
            blocks,
            order: self.order.clone(),
            firsts: self.firsts.clone(),
            free: self.free.clone(),
            len: self.len,
            known_through: self.known_through,
            side: self.side,
        }
    }
}

impl<const N: usize> Side<N> {
    fn new(side: BookSide) -> Self {
        Side {
            blocks: Vec::with_capacity(MAX_BLOCKS),
            order: heapless::Vec::new(),
            firsts: heapless::Vec::new(),
            free: heapless::Vec::new(),
            len: 0,
            known_through: None,
            side,
        }
    }

    fn clear(&mut self) {
        while let Some(b) = self.order.pop() {
            self.blocks[usize::from(b)].len = 0;
            let _ = self.free.push(b);
        }
        self.firsts.clear();
        self.len = 0;
        self.known_through = None;
    }

    /// An empty block: one emptied before, else the pool's next unused one (within the
    /// capacity reserved at construction: no allocation). `None` when all are in use.
    fn take_block(&mut self) -> Option<u16> {
        if let Some(b) = self.free.pop() {
            return Some(b);
        }
        let next = self.blocks.len();
        let id = u16::try_from(next).ok().filter(|_| next < MAX_BLOCKS)?;
        self.blocks.push(Block::EMPTY);
        Some(id)
    }

    fn block(&self, pos: usize) -> &Block {
        &self.blocks[usize::from(self.order[pos])]
    }

    fn block_mut(&mut self, pos: usize) -> &mut Block {
        &mut self.blocks[usize::from(self.order[pos])]
    }

    /// The block position that holds, or would hold, `k`: the last block whose first key is
    /// at most `k` (the first block when `k` is below all).
    fn block_for(&self, k: Key) -> usize {
        // A linear scan from the best block: changes cluster near the top of the book, whose
        // few first keys stay in L1, where a binary search would touch cold middle ones.
        let n = self.order.len();
        let p = self.firsts.iter().position(|f| *f > k).unwrap_or(n);
        p.saturating_sub(1).min(n.saturating_sub(1))
    }

    /// Records block position `pos`'s first key (after it changed).
    fn refresh_first(&mut self, pos: usize) {
        let b = &self.blocks[usize::from(self.order[pos])];
        if b.len > 0 {
            self.firsts[pos] = b.first();
        }
    }

    fn last_key(&self) -> Option<Key> {
        let pos = self.order.len().checked_sub(1)?;
        Some(self.block(pos).last())
    }

    /// Inserts `e` into block position `pos` at `at`, splitting a full block first.
    fn insert_at(&mut self, mut pos: usize, mut at: usize, e: Entry) {
        if self.block(pos).len == BLOCK {
            let Some(fresh) = self.take_block() else {
                // The pool is sized for N <= BOOK_CAPACITY; a smaller side never gets here.
                return;
            };
            let half = BLOCK / 2;
            let (src, dst) = (usize::from(self.order[pos]), usize::from(fresh));
            let (s, d) = two_mut(&mut self.blocks[..], src, dst);
            d.len = 0;
            d.append(s, half, BLOCK);
            s.len = half;
            // Capacity MAX_BLOCKS and a block was free: the inserts fit.
            let first = d.first();
            let _ = self.order.insert(pos + 1, fresh);
            let _ = self.firsts.insert(pos + 1, first);
            if at > half || (at == half && e.key > first) {
                pos += 1;
                at -= half;
            }
        }
        self.block_mut(pos).insert(at, e);
        if at == 0 {
            self.firsts[pos] = e.key;
        }
        self.len += 1;
    }

    /// Removes the level at `at` of block position `pos` and rebalances.
    fn remove_at(&mut self, pos: usize, at: usize) {
        self.block_mut(pos).remove(at);
        self.len -= 1;
        if at == 0 {
            self.refresh_first(pos);
        }
        self.rebalance(pos);
    }

    /// Keeps every block (but a side's only one) at least half full: borrows a level from a
    /// neighbour with more than half, else merges with it.
    fn rebalance(&mut self, pos: usize) {
        let half = BLOCK / 2;
        let len = self.block(pos).len;
        if len >= half {
            return;
        }
        let n = self.order.len();
        if n == 1 {
            return;
        }
        // The neighbour to work with: the next one, else the previous one.
        let (left, right) = if pos + 1 < n {
            (pos, pos + 1)
        } else {
            (pos - 1, pos)
        };
        let (l, r) = (
            usize::from(self.order[left]),
            usize::from(self.order[right]),
        );
        let (lb, rb) = two_mut(&mut self.blocks[..], l, r);
        let (ll, rl) = (lb.len, rb.len);
        if ll + rl <= BLOCK {
            // Merge right into left and free right.
            lb.append(rb, 0, rl);
            rb.len = 0;
            self.order.remove(right);
            self.firsts.remove(right);
            let _ = self.free.push(r as u16);
            self.refresh_first(left);
        } else if ll < rl {
            // Borrow the right block's first level.
            let e = rb.remove(0);
            let at = lb.len;
            lb.insert(at, e);
            self.refresh_first(left);
            self.refresh_first(right);
        } else {
            // Borrow the left block's last level.
            let e = lb.remove(ll - 1);
            rb.insert(0, e);
            self.refresh_first(right);
        }
    }

    fn apply(&mut self, price: Decimal, qty: Decimal, dropped: &mut u64) -> Applied {
        let k = key(self.side, price);
        if let Some(bound) = self.known_through
            && k > bound
        {
            return Applied::Unknown;
        }
        let entry = Entry {
            key: k,
            level: Packed::new(Level { price, qty }),
        };
        if self.order.is_empty() {
            if qty.is_zero() {
                return Applied::Absent;
            }
            let Some(b) = self.take_block() else {
                return Applied::Unknown;
            };
            let _ = self.order.push(b);
            let _ = self.firsts.push(entry.key);
            self.block_mut(0).insert(0, entry);
            self.len = 1;
            return Applied::Inserted;
        }
        let pos = self.block_for(k);
        match self.block(pos).search(k) {
            Ok(at) => {
                if qty.is_zero() {
                    self.remove_at(pos, at);
                    Applied::Removed
                } else {
                    self.block_mut(pos).levels[at] = entry.level;
                    Applied::Updated
                }
            }
            Err(_) if qty.is_zero() => Applied::Absent,
            Err(at) => {
                if self.len < N {
                    self.insert_at(pos, at, entry);
                    return Applied::Inserted;
                }
                *dropped += 1;
                if self.last_key().is_some_and(|last| k > last) {
                    // Worse than everything kept: it becomes unknown itself.
                    self.known_through = self.last_key();
                    return Applied::Unknown;
                }
                // Evict the worst level, then insert (the positions may have moved).
                let last = self.order.len() - 1;
                let at_last = self.block(last).len - 1;
                self.remove_at(last, at_last);
                let pos = self.block_for(k);
                let at = match self.block(pos).search(k) {
                    Ok(at) | Err(at) => at,
                };
                self.insert_at(pos, at, entry);
                self.known_through = self.last_key();
                Applied::Evicted
            }
        }
    }

    /// Every level, best first.
    fn iter(&self) -> impl Iterator<Item = Level> + '_ {
        self.order.iter().flat_map(move |&b| {
            let b = &self.blocks[usize::from(b)];
            b.levels[..b.len].iter().map(|l| l.level())
        })
    }

    /// Replaces `out` with the best `depth` levels (fewer if `out` or the side is shorter),
    /// a block's levels at a time.
    fn fill_into<const D: usize>(
        &self,
        depth: usize,
        out: &mut heapless::Vec<(Decimal, Decimal), D>,
    ) {
        out.clear();
        let mut left = depth.min(D);
        for &b in &self.order {
            if left == 0 {
                break;
            }
            let b = &self.blocks[usize::from(b)];
            let take = b.len.min(left);
            for p in &b.levels[..take] {
                let l = p.level();
                // `left` never exceeds the room in `out`.
                let _ = out.push((l.price, l.qty));
            }
            left -= take;
        }
    }

    fn best(&self) -> Option<Level> {
        let b = &self.blocks[usize::from(*self.order.first()?)];
        (b.len > 0).then(|| b.levels[0].level())
    }

    fn worst(&self) -> Option<Level> {
        let pos = self.order.len().checked_sub(1)?;
        let b = self.block(pos);
        (b.len > 0).then(|| b.levels[b.len - 1].level())
    }
}

/// A two-sided book of at most `N` levels per side (`N` at most [`BOOK_CAPACITY`]).
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
    pub fn new() -> Self {
        const {
            assert!(
                N <= BOOK_CAPACITY,
                "a book side holds at most BOOK_CAPACITY levels"
            )
        };
        Book {
            bids: Side::new(BookSide::Bid),
            asks: Side::new(BookSide::Ask),
            dropped: 0,
        }
    }

    /// A book on the heap (built once at start-up).
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
        self.bids.clear();
        self.asks.clear();
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
        s.known_through = s.last_key();
    }

    /// Levels of a side, best first.
    pub fn levels(&self, side: BookSide) -> impl Iterator<Item = Level> + '_ {
        self.side(side).iter()
    }

    pub fn len(&self, side: BookSide) -> usize {
        self.side(side).len
    }

    pub fn is_empty(&self) -> bool {
        self.bids.len == 0 && self.asks.len == 0
    }

    pub fn best(&self, side: BookSide) -> Option<Level> {
        self.side(side).best()
    }

    /// The worst level a side holds.
    pub fn worst(&self, side: BookSide) -> Option<Level> {
        self.side(side).worst()
    }

    /// Whether a side has a known-through bound.
    pub fn is_bounded(&self, side: BookSide) -> bool {
        self.side(side).known_through.is_some()
    }

    /// Whether `price` lies in the range `side` knows (all of it when the side is not cut).
    pub fn knows(&self, side: BookSide, price: Decimal) -> bool {
        let s = self.side(side);
        s.known_through.is_none_or(|b| key(side, price) <= b)
    }

    /// Whether this book knows `side` at least as far as `other` does (a side that is not cut
    /// is known furthest).
    pub fn knows_as_far(&self, other: &Self, side: BookSide) -> bool {
        match (
            self.side(side).known_through,
            other.side(side).known_through,
        ) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => a >= b,
        }
    }

    /// Exchanges one side with `other`'s (levels, bound and all).
    pub fn swap_side(&mut self, other: &mut Self, side: BookSide) {
        std::mem::swap(self.side_mut(side), other.side_mut(side));
    }

    /// Levels dropped by full sides since creation.
    pub fn dropped_levels(&self) -> u64 {
        self.dropped
    }

    /// Whether both sides can vouch for `depth` levels (or hold the whole book).
    pub fn can_fill(&self, depth: usize) -> bool {
        [&self.bids, &self.asks]
            .iter()
            .all(|s| s.known_through.is_none() || s.len >= depth)
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
        self.bids.fill_into(depth, bids);
        self.asks.fill_into(depth, asks);
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
        b.levels(side).map(|l| l.price.to_string()).collect()
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
        let top = b.best(BookSide::Bid).expect("a bid");
        assert_eq!(top.qty.to_string(), "3");
        assert_eq!(top.price.to_string(), "10.00");
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

    /// Random changes against a reference map: every level, in order, at every step; blocks
    /// split, borrow and merge; the pool never runs dry.
    #[test]
    fn blocks_match_a_reference_through_random_changes() {
        use std::collections::BTreeMap;
        let mut rng = fastrand::Rng::with_seed(7);
        for round in 0..20 {
            let mut b = Book::<BOOK_CAPACITY>::new_boxed();
            let mut reference: BTreeMap<i64, (i64, u8)> = BTreeMap::new();
            let span = [40i64, 400, BOOK_CAPACITY as i64][round % 3];
            for step in 0..4000 {
                let p = rng.i64(1..=span);
                let q = if rng.u8(..3) == 0 { 0 } else { rng.i64(1..100) };
                // The same value with other digits now and then (1.0 == 1).
                let (pm, ps) = if rng.bool() { (p, 0) } else { (p * 10, 1) };
                let r = b.apply(BookSide::Ask, Decimal::new(pm, ps), Decimal::new(q, 0));
                if q == 0 {
                    reference.remove(&p);
                } else if r != Applied::Unknown && r != Applied::Evicted {
                    reference.insert(p, (pm, ps));
                } else {
                    panic!("round {round} step {step}: {r:?} on a side below capacity");
                }
                if step % 97 == 0 || step == 3999 {
                    let got: Vec<(i64, u8)> = b
                        .levels(BookSide::Ask)
                        .map(|l| (l.price.mantissa(), l.price.scale()))
                        .collect();
                    let want: Vec<(i64, u8)> = reference.values().copied().collect();
                    assert_eq!(got, want, "round {round} step {step}");
                    assert_eq!(b.len(BookSide::Ask), reference.len());
                }
            }
        }
    }

    #[test]
    fn a_full_capacity_side_keeps_the_best_levels_in_either_order() {
        for descending in [false, true] {
            let mut b = Book::<BOOK_CAPACITY>::new_boxed();
            let n = BOOK_CAPACITY as i64 + 50;
            let prices: Vec<i64> = if descending {
                (1..=n).rev().collect()
            } else {
                (1..=n).collect()
            };
            for p in prices {
                b.apply(BookSide::Bid, Decimal::new(p, 0), Decimal::new(1, 0));
            }
            assert_eq!(b.len(BookSide::Bid), BOOK_CAPACITY);
            // Better arrivals evict the worst (each counted); worse ones beyond a full side
            // become the unknown territory below the bound (the first one counted).
            assert_eq!(b.dropped_levels(), if descending { 1 } else { 50 });
            let top: Vec<i64> = b
                .levels(BookSide::Bid)
                .take(3)
                .map(|l| l.price.mantissa())
                .collect();
            // Bids: the highest prices are the best.
            assert_eq!(top, [n, n - 1, n - 2], "descending arrival: {descending}");
            assert!(b.is_bounded(BookSide::Bid));
        }
    }

    #[test]
    fn the_pool_is_touched_only_as_deep_as_the_side_has_been_and_never_moves() {
        let mut b = Book::<BOOK_CAPACITY>::new_boxed();
        let start = b.bids.blocks.as_ptr();
        for p in 1..=100 {
            b.apply(BookSide::Bid, Decimal::new(p, 0), Decimal::new(1, 0));
        }
        // 100 levels in order split blocks in halves: at most 100 / (BLOCK / 2) + 1 used.
        let shallow = b.bids.blocks.len();
        assert!(
            shallow <= 100 / (BLOCK / 2) + 1,
            "{shallow} blocks for 100 levels"
        );
        assert!(b.asks.blocks.is_empty(), "an empty side holds no block");
        // Emptied and refilled to the same depth: the emptied blocks are reused.
        b.clear();
        for p in 1..=100 {
            b.apply(BookSide::Bid, Decimal::new(p, 0), Decimal::new(1, 0));
        }
        assert_eq!(b.bids.blocks.len(), shallow);
        // Filled to capacity in either order, and a copy of it grown too: the pool never
        // reallocates (the books' steady state allocates nothing).
        for p in (101..=BOOK_CAPACITY as i64 + 50).rev() {
            b.apply(BookSide::Bid, Decimal::new(p, 0), Decimal::new(1, 0));
        }
        assert_eq!(b.len(BookSide::Bid), BOOK_CAPACITY);
        assert_eq!(b.bids.blocks.as_ptr(), start);
        assert!(b.bids.blocks.len() <= MAX_BLOCKS);
        let mut c = b.clone();
        assert_eq!(c.asks.blocks.capacity(), MAX_BLOCKS);
        let copy = c.asks.blocks.as_ptr();
        for p in 1..=BOOK_CAPACITY as i64 {
            c.apply(BookSide::Ask, Decimal::new(p, 0), Decimal::new(1, 0));
        }
        assert_eq!(c.asks.blocks.as_ptr(), copy);
        assert_eq!(c.len(BookSide::Ask), BOOK_CAPACITY);
    }
}
