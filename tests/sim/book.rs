//! A seeded book process: a realistic two-sided book that evolves diff by diff, with the true
//! state recorded at every update id so tests can check what marketbox published.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// Prices in ticks of 0.01, quantities in units of 1e-8 (Binance BTCUSDT style).
pub type Px = i64;
pub type Qty = u64;

/// How the venue writes numbers.
#[derive(Clone, Copy)]
pub struct Format {
    /// Zeros appended after the 2 tick decimals (Binance spot writes 8 decimals: 6 more).
    pub price_pad: usize,
}

pub fn fmt_px(p: Px, f: Format) -> String {
    format!("{}.{:02}{}", p / 100, p % 100, "0".repeat(f.price_pad))
}

pub fn fmt_qty(q: Qty) -> String {
    format!("{}.{:08}", q / 100_000_000, q % 100_000_000)
}

/// One diff: the id range and the changed levels (qty 0 removes).
#[derive(Clone, Debug)]
pub struct Diff {
    pub first: u64,
    pub last: u64,
    pub prev_last: u64,
    pub bids: Vec<(Px, Qty)>,
    pub asks: Vec<(Px, Qty)>,
}

/// A full copy of the book at an update id.
pub type FullBook = (u64, BTreeMap<Px, Qty>, BTreeMap<Px, Qty>);

/// Top levels of the true book at an update id.
pub type Top = (Vec<(Px, Qty)>, Vec<(Px, Qty)>);

pub struct BookProcess {
    rng: fastrand::Rng,
    pub bids: BTreeMap<Px, Qty>,
    pub asks: BTreeMap<Px, Qty>,
    mid: Px,
    pub last_id: u64,
    history: HashMap<u64, Top>,
    order: VecDeque<u64>,
    /// Full copies of recent states, for stale snapshots.
    full: VecDeque<FullBook>,
    pub keep_top: usize,
}

const HISTORY: usize = 20_000;

impl BookProcess {
    pub fn new(seed: u64, mid: Px, first_id: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut bids = BTreeMap::new();
        let mut asks = BTreeMap::new();
        for i in 1..=300 {
            if rng.u8(..10) < 8 {
                bids.insert(mid - i, rng.u64(1..500_000_000));
            }
            if rng.u8(..10) < 8 {
                asks.insert(mid + i, rng.u64(1..500_000_000));
            }
        }
        let mut b = BookProcess {
            rng,
            bids,
            asks,
            mid,
            last_id: first_id,
            history: HashMap::new(),
            order: VecDeque::new(),
            full: VecDeque::new(),
            keep_top: 20,
        };
        b.record();
        b
    }

    fn record(&mut self) {
        let top = self.top(self.keep_top);
        self.history.insert(self.last_id, top);
        self.order.push_back(self.last_id);
        if self.order.len() > HISTORY
            && let Some(old) = self.order.pop_front()
        {
            self.history.remove(&old);
        }
        self.full
            .push_back((self.last_id, self.bids.clone(), self.asks.clone()));
        if self.full.len() > 64 {
            self.full.pop_front();
        }
    }

    pub fn top(&self, n: usize) -> Top {
        (
            self.bids
                .iter()
                .rev()
                .take(n)
                .map(|(p, q)| (*p, *q))
                .collect(),
            self.asks.iter().take(n).map(|(p, q)| (*p, *q)).collect(),
        )
    }

    pub fn true_top(&self, id: u64) -> Option<&Top> {
        self.history.get(&id)
    }

    /// The oldest full state kept (for a stale snapshot).
    pub fn oldest(&self) -> Option<&FullBook> {
        self.full.front()
    }

    /// Advances the book by one diff spanning `1..=4` update ids (`skip` extra ids are
    /// consumed too, as a venue's other symbols would).
    pub fn step(&mut self, skip: u64) -> Diff {
        let prev_last = self.last_id;
        let first = self.last_id + 1 + skip;
        let last = first + self.rng.u64(0..4);
        let mut bids = Vec::new();
        let mut asks = Vec::new();
        // The mid drifts; levels that would cross are removed.
        self.mid += self.rng.i64(-2..=2);
        let crossing_bids: Vec<Px> = self.bids.range(self.mid..).map(|(p, _)| *p).collect();
        for p in crossing_bids {
            self.bids.remove(&p);
            bids.push((p, 0));
        }
        let crossing_asks: Vec<Px> = self.asks.range(..=self.mid).map(|(p, _)| *p).collect();
        for p in crossing_asks {
            self.asks.remove(&p);
            asks.push((p, 0));
        }
        for _ in 0..self.rng.usize(1..7) {
            let bid = self.rng.bool();
            let depth = if self.rng.u8(..10) == 0 {
                self.rng.i64(1..300)
            } else {
                self.rng.i64(1..20)
            };
            let (book, out, p) = if bid {
                (&mut self.bids, &mut bids, self.mid - depth)
            } else {
                (&mut self.asks, &mut asks, self.mid + depth)
            };
            let q = if self.rng.u8(..4) == 0 {
                0
            } else {
                self.rng.u64(1..500_000_000)
            };
            if q == 0 {
                book.remove(&p);
            } else {
                book.insert(p, q);
            }
            out.retain(|(x, _)| *x != p);
            out.push((p, q));
        }
        self.last_id = last;
        self.record();
        Diff {
            first,
            last,
            prev_last,
            bids,
            asks,
        }
    }
}
