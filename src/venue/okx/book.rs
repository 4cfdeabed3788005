//! OKX `books`: the CRC32 checksum and the seqId book machine.
//!
//! Design: a sans-I/O machine per instrument, named for what it waits for. Two ways in, as the
//! venue works today: (a) a WebSocket `snapshot` followed by updates chained by
//! `prevSeqId == previous seqId`; (b) no WebSocket snapshot (production since August 2026):
//! updates are buffered, a REST snapshot carrying `seqId` is fetched, updates with
//! `seqId <= snapshot seqId` are dropped, the first kept has
//! `prevSeqId <= snapshot seqId < seqId`, then the chain is followed. An update with
//! `seqId == prevSeqId` is a heartbeat. A `seqId` lower than `prevSeqId` is the venue's
//! sequence reset after maintenance: resync. Whenever the venue sends a non-zero checksum it
//! is verified (the REST snapshot's own included): signed CRC32 of the top 25 bids and asks
//! interleaved `bid_px:bid_sz:ask_px:ask_sz:…` with the exact strings the venue sent (the book
//! keeps them). Captures from before seqId existed carry none: then the checksum alone
//! verifies, and an update with neither cannot be checked (`MissingSequence`). Once a book
//! is synced on a sequence, every update must carry `seqId` and `prevSeqId`.
//!
//! Only that continuity rule and the checksum are OKX's; level reading (negative values are
//! malformed), the id jump bound, the stuck-book rule, the crossed-book check, the bounded
//! update buffer and the resync reasons are the venue-neutral toolkit (`book::sync`).

use prometheus_client::metrics::counter::Counter;

use super::wire::BookData;
pub use crate::book::sync::ResyncReason;
use crate::book::sync::{BookCore, UpdateBuffer, check_jump};
use crate::book::texts::{LevelText, text_for};
use crate::book::{BOOK_CAPACITY, Book, BookSide, DECIMAL_TEXT_MAX};
use crate::model::OrderbookData;
use crate::venue::json::Levels;

/// Levels per side that enter the checksum.
pub const CHECKSUM_LEVELS: usize = 25;

/// OKX's checksum of a book, every decimal written afresh: the reference the [`Checksummer`]
/// is tested against.
#[cfg(test)]
fn checksum<const N: usize>(book: &Book<N>) -> i32 {
    // The text goes to the hasher in chunks of about `CHUNK` bytes (long enough for its
    // vectorised path), from a small buffer that is never cleared.
    const CHUNK: usize = 512;
    let (mut bids, mut asks) = (book.levels(BookSide::Bid), book.levels(BookSide::Ask));
    let mut text = [0u8; CHUNK + 2 * (DECIMAL_TEXT_MAX + 1)];
    let mut len = 0;
    let mut hasher = crc32fast::Hasher::new();
    let mut first = true;
    for _ in 0..CHECKSUM_LEVELS {
        for l in [bids.next(), asks.next()].into_iter().flatten() {
            // Separators go before each decimal but the first; `text` has room for a level
            // past `CHUNK`, so the writes below never come up short.
            if !first {
                text[len] = b':';
                len += 1;
            }
            first = false;
            len += l.price.write_ascii_at(&mut text[len..]);
            text[len] = b':';
            len += 1;
            len += l.qty.write_ascii_at(&mut text[len..]);
            if len >= CHUNK {
                hasher.update(&text[..len]);
                len = 0;
            }
        }
    }
    hasher.update(&text[..len]);
    hasher.finalize() as i32
}

/// Longest `price:size` text a [`Checksummer`] keeps for reuse (longer ones, which no venue
/// sends, are written each time).
const SEGMENT_MAX: usize = 30;

/// How a level enters the checksum: `price:size`.
const SEGMENT: [&[u8]; 3] = [b"", b":", b""];

type Segment = LevelText<SEGMENT_MAX>;

/// OKX's checksum of a book (signed CRC32 over the top 25 levels interleaved
/// `bid_px:bid_sz:ask_px:ask_sz:…`, one side continuing alone when the other runs out) for a
/// book that changes a few levels at a time: each level's text is kept
/// ([`crate::book::texts`]) and written again only when its digits changed. The text goes to
/// the hasher in chunks of about `CHUNK` bytes (long enough for its vectorised path).
#[derive(Debug, Default)]
pub struct Checksummer {
    /// Two sets of texts, bids then asks, used in turn: the last book's is `texts[kept]`
    /// (no copy from one set to the other).
    texts: [[heapless::Vec<Segment, CHECKSUM_LEVELS>; 2]; 2],
    kept: usize,
}

impl Checksummer {
    pub fn checksum<const N: usize>(&mut self, book: &Book<N>) -> i32 {
        let [a, b] = &mut self.texts;
        let (last, this) = match self.kept {
            0 => (&*a, b),
            _ => (&*b, a),
        };
        self.kept ^= 1;
        for (i, side) in [BookSide::Bid, BookSide::Ask].into_iter().enumerate() {
            let (kept, next) = (&last[i], &mut this[i]);
            next.clear();
            let mut j = 0;
            for l in book.levels(side).take(CHECKSUM_LEVELS) {
                let seg = text_for(kept, &mut j, side, l.price, l.qty, SEGMENT);
                // At most CHECKSUM_LEVELS levels: fits.
                let _ = next.push(seg);
            }
        }
        const CHUNK: usize = 512;
        let mut text = [0u8; CHUNK + 2 * (DECIMAL_TEXT_MAX + 1)];
        let mut len = 0;
        let mut hasher = crc32fast::Hasher::new();
        let [bids, asks] = &*this;
        let mut first = true;
        for i in 0..CHECKSUM_LEVELS {
            for seg in [bids.get(i), asks.get(i)].into_iter().flatten() {
                // `text` has room for a segment past `CHUNK`, so no write comes up short.
                if !first {
                    text[len] = b':';
                    len += 1;
                }
                first = false;
                if let Some((bytes, n)) = seg.padded() {
                    // All of it (a fixed-size copy); what follows the text is overwritten by
                    // the next segment or never hashed.
                    text[len..len + SEGMENT_MAX].copy_from_slice(bytes);
                    len += n;
                } else {
                    len += seg.price().write_ascii_at(&mut text[len..]);
                    text[len] = b':';
                    len += 1;
                    len += seg.qty().write_ascii_at(&mut text[len..]);
                }
                if len >= CHUNK {
                    hasher.update(&text[..len]);
                    len = 0;
                }
            }
        }
        hasher.update(&text[..len]);
        hasher.finalize() as i32
    }
}

/// What the session must do after an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OkxEvent {
    /// Verified at this `seqId` (0 for captures without one): publish.
    Applied { seq_id: i64 },
    /// A heartbeat: nothing changed.
    Heartbeat,
    /// Kept until a snapshot arrives.
    Buffered,
    /// Older than the book (or without a sequence while waiting): ignored.
    Dropped,
    /// Unsynced: resubscribe or fetch a REST snapshot; publish nothing meanwhile.
    Resync(ResyncReason),
}

/// A buffered update's ids.
#[derive(Debug, Clone, Copy)]
struct Seq {
    seq_id: i64,
    prev_seq_id: i64,
}

#[derive(Debug)]
enum State {
    /// No snapshot yet: updates are buffered for a REST snapshot.
    AwaitingSnapshot { buffered: UpdateBuffer<Seq> },
    /// Verified through `seq_id` (`None` when the venue sends no sequence: checksums alone).
    Synced { seq_id: Option<i64> },
}

/// One instrument's book and its machine.
pub struct OkxBook {
    state: State,
    core: BookCore,
    sums: Checksummer,
}

impl Default for OkxBook {
    fn default() -> Self {
        OkxBook::new()
    }
}

impl OkxBook {
    pub fn new() -> Self {
        OkxBook::with_counter(Counter::default())
    }

    /// A machine counting levels dropped by full sides in `levels_dropped`.
    pub fn with_counter(levels_dropped: Counter) -> Self {
        OkxBook {
            state: State::AwaitingSnapshot {
                buffered: UpdateBuffer::default(),
            },
            core: BookCore::new(levels_dropped),
            sums: Checksummer::default(),
        }
    }

    /// Back to waiting for a snapshot (reconnect, resubscribe).
    pub fn reset(&mut self) {
        self.state = State::AwaitingSnapshot {
            buffered: UpdateBuffer::default(),
        };
        self.core.clear();
    }

    /// Updates kept while waiting for a snapshot.
    pub fn buffered(&self) -> usize {
        match &self.state {
            State::AwaitingSnapshot { buffered } => buffered.len(),
            State::Synced { .. } => 0,
        }
    }

    pub fn is_synced(&self) -> bool {
        matches!(self.state, State::Synced { .. })
    }

    pub fn book(&self) -> Option<&Book<BOOK_CAPACITY>> {
        self.is_synced().then_some(self.core.book())
    }

    fn fail(&mut self, r: ResyncReason) -> OkxEvent {
        self.reset();
        OkxEvent::Resync(r)
    }

    /// Checks the book against the venue's checksum; none, or 0 (OKX's value since it stopped
    /// computing them on 2026-06-23), checks nothing.
    fn verify(&mut self, venue: Option<i64>) -> Result<(), ResyncReason> {
        let Some(venue) = venue.filter(|c| *c != 0) else {
            return Ok(());
        };
        let ours = self.sums.checksum(self.core.book());
        if i64::from(ours) != venue {
            return Err(ResyncReason::Checksum { venue, ours });
        }
        Ok(())
    }

    /// Applies an entry's levels (as read with the envelope, else walked from the raw
    /// arrays) and checks the result against its checksum.
    fn apply(&mut self, d: &BookData<'_>) -> Result<(), ResyncReason> {
        self.core.apply_sides(
            d.read.map(|r| (r.bids, r.asks)),
            Levels::new(d.bids),
            Levels::new(d.asks),
        )?;
        self.verify(d.checksum)
    }

    /// A WebSocket `snapshot` (action `snapshot`).
    pub fn on_ws_snapshot(&mut self, d: &BookData<'_>) -> OkxEvent {
        self.core.clear();
        let r = self.apply(d);
        match r {
            Ok(()) => {
                self.core.advanced();
                self.state = State::Synced { seq_id: d.seq_id };
                OkxEvent::Applied {
                    seq_id: d.seq_id.unwrap_or(0),
                }
            }
            Err(e) => self.fail(e),
        }
    }

    /// A WebSocket `update`.
    pub fn on_update(&mut self, d: &BookData<'_>) -> OkxEvent {
        let last = match &mut self.state {
            State::AwaitingSnapshot { buffered } => {
                let (Some(seq_id), Some(prev_seq_id)) = (d.seq_id, d.prev_seq_id) else {
                    // Without a sequence there is nothing to splice a REST snapshot onto.
                    return OkxEvent::Dropped;
                };
                if seq_id != prev_seq_id
                    && let Err(r) = check_jump(i128::from(prev_seq_id), i128::from(seq_id))
                {
                    return self.fail(r);
                }
                let ids = Seq {
                    seq_id,
                    prev_seq_id,
                };
                let pushed = buffered.push(
                    ids,
                    d.read.map(|r| (r.bids, r.asks)),
                    Levels::new(d.bids),
                    Levels::new(d.asks),
                    d.checksum,
                );
                // A full buffer drops its oldest updates; only a malformed level fails.
                return match pushed {
                    Ok(()) => OkxEvent::Buffered,
                    Err(r) => self.fail(r),
                };
            }
            State::Synced { seq_id } => *seq_id,
        };
        match (last, d.seq_id, d.prev_seq_id) {
            (Some(last), Some(seq), Some(prev)) => {
                if seq == prev && seq == last {
                    // A heartbeat: nothing changed; its checksum (if any) is the book's.
                    // Levels under an unchanged seqId contradict the chain.
                    if Levels::new(d.bids).next().is_some() || Levels::new(d.asks).next().is_some()
                    {
                        return self.fail(ResyncReason::Malformed);
                    }
                    return match self.verify(d.checksum) {
                        Ok(()) => OkxEvent::Heartbeat,
                        Err(e) => self.fail(e),
                    };
                }
                if seq < prev {
                    return self.fail(ResyncReason::SequenceReset);
                }
                if let Err(r) = check_jump(i128::from(prev), i128::from(seq)) {
                    return self.fail(r);
                }
                if seq <= last {
                    return match self.core.dropped_old() {
                        Ok(()) => OkxEvent::Dropped,
                        Err(r) => self.fail(r),
                    };
                }
                if prev != last {
                    return self.fail(ResyncReason::Gap {
                        expected: i128::from(last),
                        got: i128::from(prev),
                    });
                }
            }
            // Synced on a sequence: an update without one cannot be placed in the chain.
            (Some(_), _, _) => return self.fail(ResyncReason::MissingSequence),
            // Synced without a sequence (captures before seqId existed): only a checksum
            // can verify the update.
            (None, _, _) if d.checksum.is_none_or(|c| c == 0) => {
                return self.fail(ResyncReason::MissingSequence);
            }
            (None, _, _) => {}
        }
        let r = self.apply(d);
        match r {
            Ok(()) => {
                self.core.advanced();
                self.state = State::Synced {
                    seq_id: d.seq_id.or(last),
                };
                OkxEvent::Applied {
                    seq_id: d.seq_id.unwrap_or(0),
                }
            }
            Err(e) => self.fail(e),
        }
    }

    /// A REST snapshot (`/api/v5/market/books?…&source=0`) with its `seqId`.
    pub fn on_rest_snapshot(&mut self, d: &BookData<'_>) -> OkxEvent {
        let State::AwaitingSnapshot { buffered } = &mut self.state else {
            return OkxEvent::Dropped;
        };
        let buffered = std::mem::take(buffered);
        let Some(snap) = d.seq_id else {
            return self.fail(ResyncReason::Malformed);
        };
        let kept: Vec<_> = buffered.iter().filter(|u| u.ids.seq_id > snap).collect();
        if let Some(first) = kept.first()
            && first.ids.prev_seq_id > snap
        {
            // Older than the first update kept: stale, or lost to the buffer's bounds.
            let reason = buffered.unbridged();
            drop(kept);
            self.state = State::AwaitingSnapshot { buffered };
            return OkxEvent::Resync(reason);
        }
        self.core
            .dropped_by_snapshot((buffered.len() - kept.len()) as u64);
        self.core.clear();
        // The snapshot's own checksum, when it carries one, before anything is spliced on.
        if let Err(e) = self.apply(d) {
            drop(kept);
            return self.fail(e);
        }
        let mut last = snap;
        for (i, u) in kept.iter().enumerate() {
            if i > 0 && u.ids.prev_seq_id != last {
                let gap = ResyncReason::Gap {
                    expected: i128::from(last),
                    got: i128::from(u.ids.prev_seq_id),
                };
                drop(kept);
                return self.fail(gap);
            }
            self.core.apply_owned(BookSide::Bid, &u.bids);
            self.core.apply_owned(BookSide::Ask, &u.asks);
            last = u.ids.seq_id;
            if let Err(e) = self.verify(u.checksum) {
                drop(kept);
                return self.fail(e);
            }
        }
        self.core.advanced();
        self.state = State::Synced { seq_id: Some(last) };
        OkxEvent::Applied { seq_id: last }
    }

    /// Fills the top `depth` levels while synced; `Err` when the book cannot vouch for them
    /// (cut below `depth`, or crossed): it is then reset.
    pub fn fill(&mut self, depth: usize, out: &mut OrderbookData) -> Result<bool, ResyncReason> {
        let State::Synced { seq_id } = self.state else {
            return Ok(false);
        };
        match self.core.fill(depth, &mut out.bids, &mut out.asks) {
            Ok(()) => {
                out.update_id = seq_id.unwrap_or(0).max(0) as u64;
                Ok(true)
            }
            Err(r) => {
                self.reset();
                Err(r)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::Decimal;
    use crate::book::sync::MAX_BUFFERED;

    fn crc(s: &str) -> i32 {
        crc32fast::hash(s.as_bytes()) as i32
    }

    #[test]
    fn worked_checksum_values_from_the_venue_docs() {
        // TC0/TC1: PROTOCOLS.md's worked values.
        assert_eq!(crc("3366.1:7:3366.8:9:3366:6:3368:8"), -1881014294);
        assert_eq!(crc("3366.1:7:3366.8:9:3368:8:3372:8"), 831078360);
        // TC2: the book builds the same string: bids 3366.1x7, 3366x6; asks 3366.8x9, 3368x8.
        let d = |s| Decimal::parse(s).expect("a valid decimal");
        let mut b = Book::<8>::new();
        b.apply(BookSide::Bid, d("3366.1"), d("7"));
        b.apply(BookSide::Bid, d("3366"), d("6"));
        b.apply(BookSide::Ask, d("3366.8"), d("9"));
        b.apply(BookSide::Ask, d("3368"), d("8"));
        assert_eq!(checksum(&b), -1881014294);
        // TC3: one side runs out, the other continues alone.
        let mut b = Book::<8>::new();
        b.apply(BookSide::Bid, d("3366.1"), d("7"));
        b.apply(BookSide::Ask, d("3366.8"), d("9"));
        b.apply(BookSide::Ask, d("3368"), d("8"));
        b.apply(BookSide::Ask, d("3372"), d("8"));
        assert_eq!(checksum(&b), 831078360);
        // TC4: one side only, or none: no separator before the first level.
        let mut sums = Checksummer::default();
        let mut b = Book::<8>::new();
        assert_eq!(sums.checksum(&b), crc(""));
        b.apply(BookSide::Ask, d("3366.8"), d("9"));
        b.apply(BookSide::Ask, d("3368"), d("8"));
        assert_eq!(checksum(&b), crc("3366.8:9:3368:8"));
        assert_eq!(sums.checksum(&b), crc("3366.8:9:3368:8"));
        let mut b = Book::<8>::new();
        b.apply(BookSide::Bid, d("3366.1"), d("7"));
        b.apply(BookSide::Bid, d("3366"), d("6"));
        assert_eq!(sums.checksum(&b), crc("3366.1:7:3366:6"));
        assert_eq!(checksum(&b), crc("3366.1:7:3366:6"));
    }

    #[test]
    fn the_checksummer_reuses_text_and_always_agrees_with_the_plain_checksum() {
        // Random changes near the top of a book (inserts, removals, new sizes, the same
        // price written with other digits, and levels too long to keep): after each one, the
        // checksum from kept texts is the checksum written from scratch.
        let mut rng = fastrand::Rng::with_seed(25);
        let mut b = Book::<BOOK_CAPACITY>::new();
        let mut sums = Checksummer::default();
        let dec = |m: i64, scale: u8| Decimal::new(m, scale);
        for step in 0..20_000 {
            let side = if rng.bool() {
                BookSide::Bid
            } else {
                BookSide::Ask
            };
            // Bids below 1000.0, asks above: never crossed.
            let tick = rng.i64(0..60);
            let px = match side {
                BookSide::Bid => 9_990 - tick,
                BookSide::Ask => 10_010 + tick,
            };
            let (price, qty) = match rng.u8(..10) {
                // The same price with another trailing zero ("999.0" and "999.00").
                0 => (dec(px * 10, 2), dec(rng.i64(1..50), 0)),
                // Digits too long to keep.
                1 => (
                    dec(px * 100_000_000_000_000, 15),
                    dec(rng.i64(1..1_000_000_000_000_000_000), 17),
                ),
                2 | 3 => (dec(px, 1), Decimal::ZERO),
                _ => (dec(px, 1), dec(rng.i64(1..500), rng.u8(0..4))),
            };
            b.apply(side, price, qty);
            assert_eq!(sums.checksum(&b), checksum(&b), "step {step}");
        }
    }

    fn data(json: &str) -> BookData<'_> {
        BookData::parse(json).expect("a valid books entry")
    }

    #[test]
    fn tc4_ws_snapshot_then_chained_updates_heartbeats_and_gaps() {
        let mut b = OkxBook::new();
        let e = b.on_ws_snapshot(&data(r#"{"asks":[["2","1","0","1"]],"bids":[["1","1","0","1"]],"checksum":0,"seqId":10,"prevSeqId":-1}"#));
        assert_eq!(e, OkxEvent::Applied { seq_id: 10 });
        let up = |s, p| {
            format!(
                r#"{{"asks":[],"bids":[["1.5","2","0","1"]],"checksum":0,"seqId":{s},"prevSeqId":{p}}}"#
            )
        };
        assert_eq!(
            b.on_update(&data(&up(11, 10))),
            OkxEvent::Applied { seq_id: 11 }
        );
        // A replayed update is older than the book.
        assert_eq!(b.on_update(&data(&up(11, 10))), OkxEvent::Dropped);
        assert_eq!(
            b.on_update(&data(
                r#"{"asks":[],"bids":[],"checksum":0,"seqId":12,"prevSeqId":12}"#
            )),
            OkxEvent::Resync(ResyncReason::Gap {
                expected: 11,
                got: 12
            })
        );
        // Levels under an unchanged seqId are not a heartbeat.
        let mut c = OkxBook::new();
        c.on_ws_snapshot(&data(
            r#"{"asks":[],"bids":[["1","1","0","1"]],"checksum":0,"seqId":11,"prevSeqId":-1}"#,
        ));
        assert_eq!(
            c.on_update(&data(&up(11, 11))),
            OkxEvent::Resync(ResyncReason::Malformed)
        );
    }

    #[test]
    fn tc5_heartbeat_and_sequence_reset() {
        let mut b = OkxBook::new();
        b.on_ws_snapshot(&data(
            r#"{"asks":[],"bids":[["1","1","0","1"]],"checksum":0,"seqId":10,"prevSeqId":-1}"#,
        ));
        // A heartbeat repeats the last seqId as both ids; the chain continues after it.
        assert_eq!(
            b.on_update(&data(
                r#"{"asks":[],"bids":[],"checksum":0,"seqId":10,"prevSeqId":10}"#
            )),
            OkxEvent::Heartbeat
        );
        assert_eq!(
            b.on_update(&data(
                r#"{"asks":[],"bids":[],"checksum":0,"seqId":11,"prevSeqId":10}"#
            )),
            OkxEvent::Applied { seq_id: 11 }
        );
        // A heartbeat whose seqId is not the book's is a gap, not a heartbeat.
        let mut c = OkxBook::new();
        c.on_ws_snapshot(&data(
            r#"{"asks":[],"bids":[["1","1","0","1"]],"checksum":0,"seqId":10,"prevSeqId":-1}"#,
        ));
        assert_eq!(
            c.on_update(&data(
                r#"{"asks":[],"bids":[],"checksum":0,"seqId":12,"prevSeqId":12}"#
            )),
            OkxEvent::Resync(ResyncReason::Gap {
                expected: 10,
                got: 12
            })
        );
        assert_eq!(
            b.on_update(&data(
                r#"{"asks":[],"bids":[],"checksum":0,"seqId":3,"prevSeqId":11}"#
            )),
            OkxEvent::Resync(ResyncReason::SequenceReset)
        );
    }

    #[test]
    fn tc6_rest_snapshot_splices_the_buffered_chain() {
        let mut b = OkxBook::new();
        let up = |s: i64, p: i64, px: &str| {
            format!(
                r#"{{"asks":[],"bids":[["{px}","2","0","1"]],"checksum":0,"seqId":{s},"prevSeqId":{p}}}"#
            )
        };
        assert_eq!(b.on_update(&data(&up(5, 4, "1"))), OkxEvent::Buffered);
        assert_eq!(b.on_update(&data(&up(8, 5, "2"))), OkxEvent::Buffered);
        assert_eq!(b.on_update(&data(&up(9, 8, "3"))), OkxEvent::Buffered);
        // Snapshot at 6: drop 5 (<= 6); first kept has prev 5 <= 6 < 8.
        let e = b.on_rest_snapshot(&data(
            r#"{"asks":[["10","1","0","1"]],"bids":[["0.5","1","0","1"]],"seqId":6}"#,
        ));
        assert_eq!(e, OkxEvent::Applied { seq_id: 9 });
        let bids: Vec<String> = b
            .book()
            .expect("a synced book")
            .levels(BookSide::Bid)
            .map(|l| l.price.to_string())
            .collect();
        assert_eq!(bids, ["3", "2", "0.5"]);
    }

    #[test]
    fn tc7_a_rest_snapshot_older_than_the_buffer_is_stale() {
        let mut b = OkxBook::new();
        b.on_update(&data(
            r#"{"asks":[],"bids":[],"checksum":0,"seqId":20,"prevSeqId":19}"#,
        ));
        assert_eq!(
            b.on_rest_snapshot(&data(r#"{"asks":[],"bids":[],"seqId":10}"#)),
            OkxEvent::Resync(ResyncReason::StaleSnapshot)
        );
    }

    #[test]
    fn a_full_buffer_keeps_the_newest_updates_and_a_snapshot_older_than_them_is_an_overflow() {
        let full = |b: &mut OkxBook| {
            // Updates 1..=MAX_BUFFERED+1, each chained to the last: the first is dropped to
            // keep the buffer within its bound, and nothing is said yet.
            for s in 1..=MAX_BUFFERED as i64 + 1 {
                let u = format!(
                    r#"{{"asks":[],"bids":[["100","{s}","0","1"]],"checksum":0,"seqId":{s},"prevSeqId":{}}}"#,
                    s - 1
                );
                assert_eq!(b.on_update(&data(&u)), OkxEvent::Buffered, "update {s}");
            }
            assert_eq!(b.buffered(), MAX_BUFFERED);
        };
        let last = MAX_BUFFERED as i64 + 1;
        // TC0: a snapshot at 0 needed update 1, which was dropped: an overflow, buffer kept.
        let mut b = OkxBook::new();
        full(&mut b);
        assert_eq!(
            b.on_rest_snapshot(&data(r#"{"asks":[],"bids":[],"seqId":0}"#)),
            OkxEvent::Resync(ResyncReason::BufferOverflow)
        );
        assert_eq!(b.buffered(), MAX_BUFFERED);
        // TC1: a snapshot at 1 is continued by the oldest update kept: all of them apply.
        assert_eq!(
            b.on_rest_snapshot(&data(r#"{"asks":[],"bids":[],"seqId":1}"#)),
            OkxEvent::Applied { seq_id: last }
        );
        let book = b.book().expect("a synced book");
        let bids: Vec<String> = book
            .levels(BookSide::Bid)
            .map(|l| format!("{}x{}", l.price, l.qty))
            .collect();
        assert_eq!(bids, [format!("100x{last}")]);
    }

    #[test]
    fn a_heartbeat_with_the_wrong_checksum_resyncs() {
        let mut b = OkxBook::new();
        // 3366.1x7 / 3366.8x9: its checksum is crc("3366.1:7:3366.8:9").
        let good = crc("3366.1:7:3366.8:9");
        let snap = format!(
            r#"{{"asks":[["3366.8","9","0","1"]],"bids":[["3366.1","7","0","1"]],"checksum":{good},"seqId":5,"prevSeqId":-1}}"#
        );
        assert_eq!(
            b.on_ws_snapshot(&data(&snap)),
            OkxEvent::Applied { seq_id: 5 }
        );
        let hb =
            |c: i32| format!(r#"{{"asks":[],"bids":[],"checksum":{c},"seqId":5,"prevSeqId":5}}"#);
        assert_eq!(b.on_update(&data(&hb(good))), OkxEvent::Heartbeat);
        assert_eq!(
            b.on_update(&data(&hb(good ^ 1))),
            OkxEvent::Resync(ResyncReason::Checksum {
                venue: i64::from(good ^ 1),
                ours: good
            })
        );
        assert!(!b.is_synced());
    }

    fn synced_at(seq: i64) -> OkxBook {
        let mut b = OkxBook::new();
        let snap = format!(
            r#"{{"asks":[["10","1","0","1"]],"bids":[["9","1","0","1"]],"checksum":0,"seqId":{seq},"prevSeqId":-1}}"#
        );
        assert_eq!(
            b.on_ws_snapshot(&data(&snap)),
            OkxEvent::Applied { seq_id: seq }
        );
        b
    }

    fn filled(b: &mut OkxBook) -> Result<bool, ResyncReason> {
        let mut out = OrderbookData {
            bids: heapless::Vec::new(),
            asks: heapless::Vec::new(),
            update_id: 0,
        };
        b.fill(5, &mut out)
    }

    #[test]
    fn tc8_a_synced_book_refuses_what_it_cannot_check_or_what_no_venue_has() {
        // TC0: no sequence fields once synced on a sequence.
        let mut b = synced_at(10);
        assert_eq!(
            b.on_update(&data(
                r#"{"asks":[],"bids":[["9.5","1","0","1"]],"checksum":0}"#
            )),
            OkxEvent::Resync(ResyncReason::MissingSequence)
        );
        // TC1: only one of the two.
        let mut b = synced_at(10);
        assert_eq!(
            b.on_update(&data(r#"{"asks":[],"bids":[],"checksum":0,"seqId":11}"#)),
            OkxEvent::Resync(ResyncReason::MissingSequence)
        );
        // TC2: negative size, negative price.
        for bids in [r#"[["9.5","-1","0","1"]]"#, r#"[["-9.5","1","0","1"]]"#] {
            let mut b = synced_at(10);
            let up =
                format!(r#"{{"asks":[],"bids":{bids},"checksum":0,"seqId":11,"prevSeqId":10}}"#);
            assert_eq!(
                b.on_update(&data(&up)),
                OkxEvent::Resync(ResyncReason::Malformed),
                "{bids}"
            );
        }
        // TC3: a crossing bid applies (the chain is fine) but is never published.
        let mut b = synced_at(10);
        assert_eq!(
            b.on_update(&data(
                r#"{"asks":[],"bids":[["11","1","0","1"]],"checksum":0,"seqId":11,"prevSeqId":10}"#
            )),
            OkxEvent::Applied { seq_id: 11 }
        );
        assert_eq!(filled(&mut b), Err(ResyncReason::Crossed));
        assert!(!b.is_synced());
        // TC4: a jump to i64::MAX, and backwards past the reset rule.
        let mut b = synced_at(10);
        assert_eq!(
            b.on_update(&data(
                r#"{"asks":[],"bids":[],"checksum":0,"seqId":9223372036854775807,"prevSeqId":10}"#
            )),
            OkxEvent::Resync(ResyncReason::ImpossibleId {
                from: 10,
                to: i128::from(i64::MAX)
            })
        );
        // TC5: a book without a sequence (a 2022 capture) takes only checksummed updates.
        let mut c = OkxBook::new();
        c.on_ws_snapshot(&data(r#"{"asks":[],"bids":[["1","1","0","1"]]}"#));
        assert_eq!(
            c.on_update(&data(
                r#"{"asks":[],"bids":[["2","1","0","1"]],"checksum":0}"#
            )),
            OkxEvent::Resync(ResyncReason::MissingSequence)
        );
    }

    #[test]
    fn tc9_a_rest_snapshot_with_a_wrong_checksum_is_refused() {
        let mut b = OkxBook::new();
        let good = crc("3366.1:7:3366.8:9");
        let snap = |c: i32| {
            format!(
                r#"{{"asks":[["3366.8","9","0","1"]],"bids":[["3366.1","7","0","1"]],"checksum":{c},"seqId":5}}"#
            )
        };
        assert_eq!(
            b.on_rest_snapshot(&data(&snap(good ^ 1))),
            OkxEvent::Resync(ResyncReason::Checksum {
                venue: i64::from(good ^ 1),
                ours: good
            })
        );
        assert!(!b.is_synced());
        assert_eq!(
            b.on_rest_snapshot(&data(&snap(good))),
            OkxEvent::Applied { seq_id: 5 }
        );
    }

    #[test]
    fn tc10_a_book_that_only_gets_old_updates_is_stuck() {
        let mut b = synced_at(100);
        let old = r#"{"asks":[],"bids":[],"checksum":0,"seqId":50,"prevSeqId":49}"#;
        for _ in 0..crate::book::sync::MAX_DROPPED_IN_A_ROW {
            assert_eq!(b.on_update(&data(old)), OkxEvent::Dropped);
        }
        assert_eq!(
            b.on_update(&data(old)),
            OkxEvent::Resync(ResyncReason::Stuck)
        );
    }
}
