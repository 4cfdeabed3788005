//! A seeded order-book process, independent of any venue's wire format.
//!
//! Design: the book is integer price and quantity units (`10^-decimals` of the venue's number),
//! keyed by price in a `BTreeMap` per side. `step` applies one random diff (updates, inserts and
//! removals near the top, occasionally deeper; sweeps and price improvements that move the mid,
//! mean-reverting towards where it started; removals of levels the book never had, which real
//! venues send too) and records it. Each diff carries an id range `first_id..=last_id` and the
//! previous diff's `last_id`, which is all a venue needs: Binance spot writes `U`/`u`, USD-M adds
//! `pu`, OKX writes `prevSeqId`/`seqId` (the `last_id`s). Levels also carry an order count for
//! venues that publish one (OKX).
//!
//! History: every diff is kept (bounded by `history`) together with full checkpoints every
//! `checkpoint_every` diffs, so the exact book after any kept diff can be rebuilt by replaying
//! from the nearest checkpoint (a cache makes in-order queries cheap). That answers "what was
//! the true book at update id N" for the tests and serves snapshots at any recent id (stale
//! snapshots) without storing a copy per diff.

use std::collections::{BTreeMap, VecDeque};

/// How a venue writes a number: always `decimals` digits after the point (Binance,
/// `"27012.34000000"`), or with trailing zeros trimmed (OKX, `"3366.1"`, `"7"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumStyle {
    Fixed,
    Trimmed,
}

/// An instrument's grid and number format. Prices are integer units of `10^-price_decimals`
/// and always a multiple of `tick`; quantities are units of `10^-qty_decimals`, a multiple of
/// `lot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    pub price_decimals: u32,
    pub tick: i64,
    pub qty_decimals: u32,
    pub lot: i64,
    /// Typical resting size in lots (an occasional level is twenty times larger).
    pub typical_lots: i64,
    pub style: NumStyle,
}

impl Spec {
    pub fn price(&self, units: i64) -> String {
        fmt_units(units, self.price_decimals, self.style)
    }
    pub fn qty(&self, units: i64) -> String {
        fmt_units(units, self.qty_decimals, self.style)
    }
}

/// Writes `v * 10^-decimals`.
pub fn fmt_units(v: i64, decimals: u32, style: NumStyle) -> String {
    let sign = if v < 0 { "-" } else { "" };
    let a = v.unsigned_abs();
    if decimals == 0 {
        return format!("{sign}{a}");
    }
    let p = 10u64.pow(decimals);
    let mut s = format!("{sign}{}.{:0w$}", a / p, a % p, w = decimals as usize);
    if style == NumStyle::Trimmed {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.pop();
        }
    }
    s
}

/// Parses a plain decimal (`"27012.34"`, `"7"`) into units of `10^-decimals`; `None` when it is
/// not a plain decimal or has more digits than `decimals`.
pub fn parse_units(s: &str, decimals: u32) -> Option<i64> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || frac.len() > decimals as usize
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut v: i64 = int.parse().ok()?;
    for i in 0..decimals as usize {
        let d = frac.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
        v = v.checked_mul(10)?.checked_add(d)?;
    }
    Some(if neg { -v } else { v })
}

/// A price level: quantity in units (0 in a diff removes the level) and the number of orders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level {
    pub qty: i64,
    pub orders: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Bid,
    Ask,
}

/// One change set, as a venue would publish it. `bids` best (highest) first, `asks` best
/// (lowest) first; quantities are absolute, 0 removes.
#[derive(Clone, Debug)]
pub struct Diff {
    pub first_id: u64,
    pub last_id: u64,
    /// The previous diff's `last_id` (USD-M `pu`, OKX `prevSeqId`).
    pub prev_last_id: u64,
    pub ts_ms: u64,
    pub bids: Vec<(i64, Level)>,
    pub asks: Vec<(i64, Level)>,
}

/// How update ids advance from one diff to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdRule {
    /// `first_id` = previous `last_id` + 1; each diff spans `1..=max_span` ids (Binance spot).
    Contiguous { max_span: u64 },
    /// `first_id` may jump by up to `max_jump` ids (other symbols' updates share the counter:
    /// Binance USD-M, OKX).
    Jumpy { max_jump: u64, max_span: u64 },
}

#[derive(Clone, Debug)]
pub struct BookParams {
    pub seed: u64,
    pub spec: Spec,
    /// Initial mid price in units (rounded to the tick grid).
    pub mid: i64,
    /// Update id of the initial book.
    pub first_id: u64,
    pub ids: IdRule,
    pub levels_per_side: usize,
    /// Diffs kept for `at` (and checkpoints every `checkpoint_every`).
    pub history: usize,
    pub checkpoint_every: usize,
}

/// The top of a book at an update id; prices and quantities in units, best first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub id: u64,
    pub bids: Vec<(i64, Level)>,
    pub asks: Vec<(i64, Level)>,
}

/// A taker trade against the top of the book (the book itself is not changed by it).
#[derive(Clone, Copy, Debug)]
pub struct Fill {
    pub price: i64,
    pub qty: i64,
    /// The buyer was the maker, so the taker sold (Binance `m`).
    pub buyer_is_maker: bool,
}

type Side2 = BTreeMap<i64, Level>;

struct Checkpoint {
    /// Number of diffs applied to reach this state.
    k: u64,
    id: u64,
    bids: Side2,
    asks: Side2,
}

pub struct BookProcess {
    params: BookParams,
    rng: fastrand::Rng,
    trade_rng: fastrand::Rng,
    bids: Side2,
    asks: Side2,
    anchor: i64,
    last_id: u64,
    /// Diffs generated so far (the current state is state `total`).
    total: u64,
    /// Sequence number (0-based) of `diffs[0]`: diff `k` turns state `k` into state `k + 1`.
    front_seq: u64,
    diffs: VecDeque<Diff>,
    checkpoints: VecDeque<Checkpoint>,
    cache: Option<Checkpoint>,
}

impl BookProcess {
    pub fn new(mut params: BookParams) -> Self {
        // A checkpoint is only useful while the diffs after it are kept.
        params.history = params.history.max(1);
        params.checkpoint_every = params.checkpoint_every.clamp(1, params.history);
        let rng = fastrand::Rng::with_seed(params.seed);
        let trade_rng = fastrand::Rng::with_seed(params.seed ^ 0x7472_6164_6573);
        let tick = params.spec.tick;
        let anchor = params.mid / tick * tick;
        let mut me = BookProcess {
            rng,
            trade_rng,
            bids: BTreeMap::new(),
            asks: BTreeMap::new(),
            anchor,
            last_id: params.first_id,
            total: 0,
            front_seq: 0,
            diffs: VecDeque::new(),
            checkpoints: VecDeque::new(),
            cache: None,
            params,
        };
        // Dense near the top, sparser deeper, like a liquid book.
        for side in [Side::Bid, Side::Ask] {
            let mut d: i64 = 1;
            while me.side(side).len() < me.params.levels_per_side {
                let p = if d <= 20 {
                    90
                } else if d <= 100 {
                    60
                } else {
                    35
                };
                if me.rng.u8(..100) < p {
                    let price = match side {
                        Side::Bid => anchor - d * tick,
                        Side::Ask => anchor + d * tick,
                    };
                    let lv = me.random_level();
                    me.side_mut(side).insert(price, lv);
                }
                d += 1;
            }
        }
        me.checkpoints.push_back(Checkpoint {
            k: 0,
            id: me.last_id,
            bids: me.bids.clone(),
            asks: me.asks.clone(),
        });
        me
    }

    pub fn spec(&self) -> Spec {
        self.params.spec
    }
    pub fn last_id(&self) -> u64 {
        self.last_id
    }
    /// The last diff produced.
    pub fn last_diff(&self) -> Option<&Diff> {
        self.diffs.back()
    }
    /// Oldest update id `at` can still answer.
    pub fn oldest_id(&self) -> u64 {
        self.checkpoints.front().map_or(self.last_id, |c| c.id)
    }

    pub fn best_bid(&self) -> Option<(i64, Level)> {
        self.bids.iter().next_back().map(|(p, l)| (*p, *l))
    }
    pub fn best_ask(&self) -> Option<(i64, Level)> {
        self.asks.iter().next().map(|(p, l)| (*p, *l))
    }
    /// Mid price in units, on the tick grid (rounded down).
    pub fn mid(&self) -> i64 {
        let tick = self.params.spec.tick;
        match (self.best_bid(), self.best_ask()) {
            (Some((b, _)), Some((a, _))) => (b + a) / 2 / tick * tick,
            (Some((b, _)), None) => b,
            (None, Some((a, _))) => a,
            (None, None) => self.anchor,
        }
    }

    /// The current top `depth` levels.
    pub fn top(&self, depth: usize) -> Snapshot {
        top_of(self.last_id, &self.bids, &self.asks, depth)
    }

    /// The top `depth` levels right after the diff whose `last_id` is `id` (or the initial
    /// book), while it is in the kept history.
    pub fn at(&mut self, id: u64, depth: usize) -> Option<Snapshot> {
        let k = self.k_of(id)?;
        let (id, b, a) = self.state(k)?;
        Some(top_of(id, b, a, depth))
    }

    /// The book as it was `diffs_back` diffs ago, or the oldest kept state if that is older
    /// (for stale snapshots).
    pub fn lagged(&mut self, diffs_back: u64, depth: usize) -> Snapshot {
        let earliest = self.checkpoints.front().map_or(self.total, |c| c.k);
        let k = self.total.saturating_sub(diffs_back).max(earliest);
        match self.state(k) {
            Some((id, b, a)) => top_of(id, b, a, depth),
            None => self.top(depth),
        }
    }

    /// A taker trade at the current best price on a random side.
    pub fn fill(&mut self) -> Option<Fill> {
        let taker_buys = self.trade_rng.bool();
        let (price, lv) = if taker_buys {
            self.best_ask()?
        } else {
            self.best_bid()?
        };
        let lot = self.params.spec.lot;
        let lots = (lv.qty / lot).max(1);
        let qty = self
            .trade_rng
            .i64(1..=lots.min(self.params.spec.typical_lots))
            * lot;
        Some(Fill {
            price,
            qty,
            buyer_is_maker: !taker_buys,
        })
    }

    /// Applies one random diff, records it and returns it.
    pub fn step(&mut self, ts_ms: u64) -> &Diff {
        let mut cb: Side2 = BTreeMap::new();
        let mut ca: Side2 = BTreeMap::new();
        let n = if self.rng.u8(..10) == 0 {
            self.rng.usize(5..=12)
        } else {
            self.rng.usize(1..=4)
        };
        for _ in 0..n {
            self.one_change(&mut cb, &mut ca);
        }
        // Liquidity providers close a wide spread quickly (a liquid book is 1–2 ticks wide).
        let tick = self.params.spec.tick;
        if let (Some((b, _)), Some((a, _))) = (self.best_bid(), self.best_ask()) {
            let inside = (a - b) / tick - 1;
            if inside > 0 && self.rng.u8(..100) < (40 + 15 * inside).min(95) as u8 {
                self.improve(&mut cb, &mut ca);
            }
        }
        self.maintain(&mut cb, &mut ca);
        if cb.is_empty() && ca.is_empty() {
            if let Some((p, _)) = self.best_bid() {
                let lv = self.random_level();
                self.set(Side::Bid, p, lv, &mut cb);
            } else {
                let p = self.anchor - self.params.spec.tick;
                let lv = self.random_level();
                self.set(Side::Bid, p, lv, &mut cb);
            }
        }
        let prev = self.last_id;
        let (first, last) = match self.params.ids {
            IdRule::Contiguous { max_span } => {
                let f = prev + 1;
                (f, f + self.rng.u64(0..max_span.max(1)))
            }
            IdRule::Jumpy { max_jump, max_span } => {
                let f = prev + 1 + self.rng.u64(0..=max_jump);
                (f, f + self.rng.u64(0..max_span.max(1)))
            }
        };
        self.last_id = last;
        self.diffs.push_back(Diff {
            first_id: first,
            last_id: last,
            prev_last_id: prev,
            ts_ms,
            bids: cb.into_iter().rev().collect(),
            asks: ca.into_iter().collect(),
        });
        self.total += 1;
        if self.total % self.params.checkpoint_every.max(1) as u64 == 0 {
            self.checkpoints.push_back(Checkpoint {
                k: self.total,
                id: last,
                bids: self.bids.clone(),
                asks: self.asks.clone(),
            });
        }
        while self.diffs.len() > self.params.history.max(1) {
            self.diffs.pop_front();
            self.front_seq += 1;
        }
        // A checkpoint is usable only while the diffs after it are kept.
        while self.checkpoints.len() > 1 && self.checkpoints[0].k < self.front_seq {
            self.checkpoints.pop_front();
        }
        if self.cache.as_ref().is_some_and(|c| c.k < self.front_seq) {
            self.cache = None;
        }
        self.diffs.back().expect("just pushed")
    }

    fn side(&self, s: Side) -> &Side2 {
        match s {
            Side::Bid => &self.bids,
            Side::Ask => &self.asks,
        }
    }
    fn side_mut(&mut self, s: Side) -> &mut Side2 {
        match s {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        }
    }

    fn random_level(&mut self) -> Level {
        let t = self.params.spec.typical_lots.max(1);
        let lots = if self.rng.u8(..20) == 0 {
            self.rng.i64(t..=t * 20)
        } else {
            self.rng.i64(1..=t)
        };
        Level {
            qty: lots * self.params.spec.lot,
            orders: 1 + (self.rng.u32(0..8)).min((lots as u32).saturating_sub(1)),
        }
    }

    fn set(&mut self, side: Side, price: i64, lv: Level, changes: &mut Side2) {
        if lv.qty == 0 {
            self.side_mut(side).remove(&price);
        } else {
            self.side_mut(side).insert(price, lv);
        }
        changes.insert(price, lv);
    }

    /// The `k`-th level from the top (0 = best).
    fn nth(&self, side: Side, k: usize) -> Option<i64> {
        match side {
            Side::Bid => self.bids.keys().rev().nth(k).copied(),
            Side::Ask => self.asks.keys().nth(k).copied(),
        }
    }

    /// Chooses the side whose move pulls the mid back towards the anchor: `down` is the side
    /// that, acted on, lowers the mid.
    fn reverting(&mut self, down: Side, up: Side) -> Side {
        let off = (self.mid() - self.anchor) / self.params.spec.tick;
        let p_down = (0.5 + (off as f64 / 200.0).clamp(-0.45, 0.45)) * 100.0;
        if f64::from(self.rng.u8(..100)) < p_down {
            down
        } else {
            up
        }
    }

    fn one_change(&mut self, cb: &mut Side2, ca: &mut Side2) {
        let tick = self.params.spec.tick;
        let min_levels = self.params.levels_per_side / 2;
        let mut side = if self.rng.bool() {
            Side::Bid
        } else {
            Side::Ask
        };
        let near = self.rng.usize(0..12).min(self.rng.usize(0..12));
        let r = self.rng.u8(..100);
        let op = match r {
            0..=39 => 0,  // update near the top
            40..=57 => 1, // remove near the top
            58..=81 => 2, // insert near the top
            82..=87 => 3, // improve inside the spread
            88..=90 => 4, // sweep the best level
            91..=97 => 5, // deeper change
            _ => 6,       // removal of a level the book does not have
        };
        let (best_b, best_a) = (self.best_bid().map(|x| x.0), self.best_ask().map(|x| x.0));
        match op {
            0 => {
                if let Some(p) = self.nth(side, near) {
                    let lv = self.random_level();
                    self.set_on(side, p, lv, cb, ca);
                }
            }
            1 => {
                if self.side(side).len() > min_levels
                    && let Some(p) = self.nth(side, near)
                {
                    self.set_on(side, p, Level { qty: 0, orders: 0 }, cb, ca);
                }
            }
            2 => {
                let j = self.rng.i64(1..=15);
                let p = match (side, best_b, best_a) {
                    (Side::Bid, Some(b), _) => b - j * tick,
                    (Side::Ask, _, Some(a)) => a + j * tick,
                    (Side::Bid, None, _) => self.anchor - j * tick,
                    (Side::Ask, _, None) => self.anchor + j * tick,
                };
                let lv = self.random_level();
                self.set_on(side, p, lv, cb, ca);
            }
            3 => self.improve(cb, ca),
            4 => {
                side = self.reverting(Side::Bid, Side::Ask);
                if self.side(side).len() > min_levels
                    && let Some(p) = self.nth(side, 0)
                {
                    self.set_on(side, p, Level { qty: 0, orders: 0 }, cb, ca);
                }
            }
            5 => {
                let len = self.side(side).len();
                if len > 13 {
                    let k = self.rng.usize(12..len);
                    if let Some(p) = self.nth(side, k) {
                        let lv = match self.rng.u8(..3) {
                            0 if len > min_levels => Level { qty: 0, orders: 0 },
                            _ => self.random_level(),
                        };
                        self.set_on(side, p, lv, cb, ca);
                    }
                }
            }
            _ => {
                let worst = match side {
                    Side::Bid => self.bids.keys().next().copied(),
                    Side::Ask => self.asks.keys().next_back().copied(),
                };
                if let Some(w) = worst {
                    let j = self.rng.i64(1..=50);
                    let p = match side {
                        Side::Bid => w - j * tick,
                        Side::Ask => w + j * tick,
                    };
                    if p > 0 && !self.side(side).contains_key(&p) {
                        self.set_on(side, p, Level { qty: 0, orders: 0 }, cb, ca);
                    }
                }
            }
        }
    }

    /// A new best level strictly inside the spread, on the side that pulls the mid back.
    fn improve(&mut self, cb: &mut Side2, ca: &mut Side2) {
        let tick = self.params.spec.tick;
        let side = self.reverting(Side::Ask, Side::Bid);
        if let (Some((b, _)), Some((a, _))) = (self.best_bid(), self.best_ask())
            && a - b >= 2 * tick
        {
            let inside = (a - b) / tick - 1;
            let j = self.rng.i64(1..=inside);
            let p = match side {
                Side::Bid => b + j * tick,
                Side::Ask => a - j * tick,
            };
            let lv = self.random_level();
            self.set_on(side, p, lv, cb, ca);
        }
    }

    fn set_on(&mut self, side: Side, p: i64, lv: Level, cb: &mut Side2, ca: &mut Side2) {
        if p <= 0 {
            return;
        }
        match side {
            Side::Bid => self.set(side, p, lv, cb),
            Side::Ask => self.set(side, p, lv, ca),
        }
    }

    /// Keeps each side within a fifth of `levels_per_side` by trimming or extending the tail.
    fn maintain(&mut self, cb: &mut Side2, ca: &mut Side2) {
        let target = self.params.levels_per_side;
        let slack = (target / 5).max(1);
        let tick = self.params.spec.tick;
        for side in [Side::Bid, Side::Ask] {
            while self.side(side).len() > target + slack {
                let worst = match side {
                    Side::Bid => self.bids.keys().next().copied(),
                    Side::Ask => self.asks.keys().next_back().copied(),
                };
                let Some(w) = worst else { break };
                self.set_on(side, w, Level { qty: 0, orders: 0 }, cb, ca);
            }
            while self.side(side).len() < target.saturating_sub(slack) {
                let worst = match side {
                    Side::Bid => self.bids.keys().next().copied(),
                    Side::Ask => self.asks.keys().next_back().copied(),
                };
                let j = self.rng.i64(1..=4);
                let p = match (side, worst) {
                    (Side::Bid, Some(w)) => w - j * tick,
                    (Side::Ask, Some(w)) => w + j * tick,
                    (Side::Bid, None) => self.anchor - j * tick,
                    (Side::Ask, None) => self.anchor + j * tick,
                };
                if p <= 0 {
                    break;
                }
                let lv = self.random_level();
                self.set_on(side, p, lv, cb, ca);
            }
        }
    }

    /// The state number reached right after the diff whose `last_id` is `id`.
    fn k_of(&self, id: u64) -> Option<u64> {
        if id == self.last_id {
            return Some(self.total);
        }
        if let Ok(i) = self.diffs.binary_search_by_key(&id, |d| d.last_id) {
            return Some(self.front_seq + i as u64 + 1);
        }
        self.checkpoints.iter().find(|c| c.id == id).map(|c| c.k)
    }

    /// Rebuilds state `k` (replaying from the nearest checkpoint or the cache).
    fn state(&mut self, k: u64) -> Option<(u64, &Side2, &Side2)> {
        if k == self.total {
            return Some((self.last_id, &self.bids, &self.asks));
        }
        let cp = self.checkpoints.iter().rev().find(|c| c.k <= k)?;
        let use_cache = self.cache.as_ref().is_some_and(|c| c.k <= k && c.k >= cp.k);
        let mut cur = if use_cache {
            self.cache.take().expect("checked")
        } else {
            Checkpoint {
                k: cp.k,
                id: cp.id,
                bids: cp.bids.clone(),
                asks: cp.asks.clone(),
            }
        };
        while cur.k < k {
            let d = self
                .diffs
                .get(cur.k.checked_sub(self.front_seq)? as usize)?;
            for (p, lv) in &d.bids {
                apply(&mut cur.bids, *p, *lv);
            }
            for (p, lv) in &d.asks {
                apply(&mut cur.asks, *p, *lv);
            }
            cur.id = d.last_id;
            cur.k += 1;
        }
        let c = self.cache.insert(cur);
        Some((c.id, &c.bids, &c.asks))
    }
}

fn apply(side: &mut Side2, p: i64, lv: Level) {
    if lv.qty == 0 {
        side.remove(&p);
    } else {
        side.insert(p, lv);
    }
}

fn top_of(id: u64, bids: &Side2, asks: &Side2, depth: usize) -> Snapshot {
    Snapshot {
        id,
        bids: bids
            .iter()
            .rev()
            .take(depth)
            .map(|(p, l)| (*p, *l))
            .collect(),
        asks: asks.iter().take(depth).map(|(p, l)| (*p, *l)).collect(),
    }
}
