//! OKX `books`: parsing, the CRC32 checksum and the seqId book machine.
//!
//! Design: a sans-I/O machine per instrument, named for what it waits for. Two ways in, as the
//! venue works today: (a) a WebSocket `snapshot` followed by updates chained by
//! `prevSeqId == previous seqId`; (b) no WebSocket snapshot (production since August 2026):
//! updates are buffered, a REST snapshot carrying `seqId` is fetched, updates with
//! `seqId <= snapshot seqId` are dropped, the first kept has
//! `prevSeqId <= snapshot seqId < seqId`, then the chain is followed. An update with
//! `seqId == prevSeqId` is a heartbeat. A `seqId` lower than `prevSeqId` is the venue's
//! sequence reset after maintenance: resync. Whenever the venue sends a non-zero checksum it
//! is verified: signed CRC32 of the top 25 bids and asks interleaved `bid_px:bid_sz:ask_px:
//! ask_sz:…` with the exact strings the venue sent (the book keeps them). Captures from before
//! seqId existed carry none: then the checksum alone verifies.

use std::collections::VecDeque;

use crate::book::{BOOK_CAPACITY, Book, BookSide, DECIMAL_TEXT_MAX, Decimal};
use crate::model::OrderbookData;
use crate::venue::json::{Array, JsonError, Levels, Object, as_i64, as_plain_str};

/// Levels per side that enter the checksum.
pub const CHECKSUM_LEVELS: usize = 25;

/// One `books` data entry (snapshot or update), borrowed from the frame. `asks` and `bids`
/// are the raw level arrays, walked only when applied.
#[derive(Debug, Clone, Copy)]
pub struct BookData<'a> {
    pub asks: &'a str,
    pub bids: &'a str,
    pub ts: Option<&'a str>,
    pub checksum: Option<i64>,
    pub seq_id: Option<i64>,
    pub prev_seq_id: Option<i64>,
}

/// Why a `books` entry could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BookDataError {
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error("`{0}` is missing")]
    Missing(&'static str),
    #[error("`{0}` is not what it should be")]
    Invalid(&'static str),
    #[error("more than 4 entries in one push")]
    TooMany,
}

/// A sequence id: a JSON integer on the WebSocket; OKX's REST API writes most numbers as
/// strings, so an integer in a string is accepted too. `null` is absent.
fn seq(raw: &str, name: &'static str) -> Result<Option<i64>, BookDataError> {
    if raw == "null" {
        return Ok(None);
    }
    as_i64(raw)
        .or_else(|| as_plain_str(raw).and_then(as_i64))
        .map(Some)
        .ok_or(BookDataError::Invalid(name))
}

impl<'a> BookData<'a> {
    /// Reads one entry object without allocating. Unknown members are skipped.
    pub fn parse(raw: &'a str) -> Result<Self, BookDataError> {
        let (mut asks, mut bids) = (None, None);
        let mut d = BookData {
            asks: "[]",
            bids: "[]",
            ts: None,
            checksum: None,
            seq_id: None,
            prev_seq_id: None,
        };
        for member in Object::new(raw) {
            let (key, value) = member?;
            match key {
                "asks" => asks = Some(value),
                "bids" => bids = Some(value),
                "ts" => d.ts = Some(as_plain_str(value).ok_or(BookDataError::Invalid("ts"))?),
                "checksum" => d.checksum = seq(value, "checksum")?,
                "seqId" => d.seq_id = seq(value, "seqId")?,
                "prevSeqId" => d.prev_seq_id = seq(value, "prevSeqId")?,
                _ => {}
            }
        }
        d.asks = asks.ok_or(BookDataError::Missing("asks"))?;
        d.bids = bids.ok_or(BookDataError::Missing("bids"))?;
        if !d.asks.starts_with('[') {
            return Err(BookDataError::Invalid("asks"));
        }
        if !d.bids.starts_with('[') {
            return Err(BookDataError::Invalid("bids"));
        }
        Ok(d)
    }

    pub fn ts_ms(&self) -> u64 {
        self.ts.and_then(|t| t.parse().ok()).unwrap_or(0)
    }
}

/// The entries of one `books` push (the venue sends one; a few are tolerated), kept inline so
/// the hot path does not allocate.
pub type Entries<'a> = heapless::Vec<BookData<'a>, 4>;

/// Parses the raw `data` array of a `books` push (or of a REST books answer).
pub fn parse_entries(raw: &str) -> Result<Entries<'_>, BookDataError> {
    let mut out = Entries::new();
    for item in Array::new(raw) {
        out.push(BookData::parse(item?)?)
            .map_err(|_| BookDataError::TooMany)?;
    }
    Ok(out)
}

/// OKX's checksum of a book: signed CRC32 over the top 25 levels interleaved
/// (`bid_px:bid_sz:ask_px:ask_sz:…`, one side continuing alone when the other runs out). The
/// text is assembled in a stack buffer and hashed in one call.
pub fn checksum<const N: usize>(book: &Book<N>) -> i32 {
    // 50 levels of two decimals (at most 23 bytes each) and their separators.
    const MAX: usize = 2 * CHECKSUM_LEVELS * 2 * (DECIMAL_TEXT_MAX + 1);
    let (bids, asks) = (book.levels(BookSide::Bid), book.levels(BookSide::Ask));
    let mut text = [0u8; MAX];
    let mut len = 0;
    let mut num = [0u8; DECIMAL_TEXT_MAX];
    let mut push = |bytes: &[u8], len: &mut usize| {
        text[*len..*len + bytes.len()].copy_from_slice(bytes);
        *len += bytes.len();
    };
    for i in 0..CHECKSUM_LEVELS {
        for l in [bids.get(i), asks.get(i)].into_iter().flatten() {
            if len > 0 {
                push(b":", &mut len);
            }
            push(l.price.write_ascii(&mut num), &mut len);
            push(b":", &mut len);
            push(l.qty.write_ascii(&mut num), &mut len);
        }
    }
    crc32fast::hash(&text[..len]) as i32
}

/// Why an OKX book was marked unsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OkxResync {
    /// `prevSeqId` did not continue the chain.
    Gap {
        expected: i64,
        got: i64,
    },
    /// The venue restarted its sequence (maintenance).
    SequenceReset,
    /// The book's checksum differs from the venue's.
    Checksum {
        venue: i64,
        ours: i32,
    },
    /// The REST snapshot is older than every buffered update.
    StaleSnapshot,
    Malformed,
    Truncated,
}

impl OkxResync {
    pub fn label(self) -> &'static str {
        match self {
            OkxResync::Gap { .. } => "gap",
            OkxResync::SequenceReset => "sequence_reset",
            OkxResync::Checksum { .. } => "checksum",
            OkxResync::StaleSnapshot => "stale_snapshot",
            OkxResync::Malformed => "malformed",
            OkxResync::Truncated => "truncated",
        }
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
    /// Older than the book: ignored.
    Dropped,
    /// Unsynced: resubscribe or fetch a REST snapshot; publish nothing meanwhile.
    Resync(OkxResync),
}

#[derive(Debug)]
struct OwnedUpdate {
    seq_id: i64,
    prev_seq_id: i64,
    bids: Vec<(Decimal, Decimal)>,
    asks: Vec<(Decimal, Decimal)>,
    checksum: i64,
}

#[derive(Debug)]
enum State {
    /// No snapshot yet: updates are buffered for a REST snapshot.
    AwaitingSnapshot { buffered: VecDeque<OwnedUpdate> },
    /// Verified through `seq_id` (`None` when the venue sends no sequence).
    Synced { seq_id: Option<i64> },
}

/// Most updates buffered while a REST snapshot is fetched.
pub const MAX_BUFFERED: usize = 2000;

/// One instrument's book and its machine.
pub struct OkxBook {
    state: State,
    book: Box<Book<BOOK_CAPACITY>>,
}

fn read_levels(raw: &str, out: &mut Vec<(Decimal, Decimal)>) -> Result<(), OkxResync> {
    for lv in Levels::new(raw) {
        let (p, q) = lv.map_err(|_| OkxResync::Malformed)?;
        let p = Decimal::parse(p).map_err(|_| OkxResync::Malformed)?;
        let q = Decimal::parse(q).map_err(|_| OkxResync::Malformed)?;
        out.push((p, q));
    }
    Ok(())
}

fn apply_raw(book: &mut Book<BOOK_CAPACITY>, side: BookSide, raw: &str) -> Result<(), OkxResync> {
    for lv in Levels::new(raw) {
        let (p, q) = lv.map_err(|_| OkxResync::Malformed)?;
        let p = Decimal::parse(p).map_err(|_| OkxResync::Malformed)?;
        let q = Decimal::parse(q).map_err(|_| OkxResync::Malformed)?;
        book.apply(side, p, q);
    }
    Ok(())
}

impl Default for OkxBook {
    fn default() -> Self {
        OkxBook::new()
    }
}

impl OkxBook {
    pub fn new() -> Self {
        OkxBook {
            state: State::AwaitingSnapshot {
                buffered: VecDeque::new(),
            },
            book: Book::new_boxed(),
        }
    }

    /// Back to waiting for a snapshot (reconnect, resubscribe).
    pub fn reset(&mut self) {
        self.state = State::AwaitingSnapshot {
            buffered: VecDeque::new(),
        };
        self.book.clear();
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
        self.is_synced().then_some(&*self.book)
    }

    fn fail(&mut self, r: OkxResync) -> OkxEvent {
        self.reset();
        OkxEvent::Resync(r)
    }

    fn verify(&mut self, venue: i64) -> Result<(), OkxResync> {
        if venue == 0 {
            return Ok(());
        }
        let ours = checksum(&self.book);
        if i64::from(ours) != venue {
            return Err(OkxResync::Checksum { venue, ours });
        }
        Ok(())
    }

    /// A WebSocket `snapshot` (action `snapshot`).
    pub fn on_ws_snapshot(&mut self, d: &BookData<'_>) -> OkxEvent {
        self.book.clear();
        let r = apply_raw(&mut self.book, BookSide::Bid, d.bids)
            .and_then(|()| apply_raw(&mut self.book, BookSide::Ask, d.asks))
            .and_then(|()| self.verify(d.checksum.unwrap_or(0)));
        match r {
            Ok(()) => {
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
        match &mut self.state {
            State::AwaitingSnapshot { buffered } => {
                let (Some(seq_id), Some(prev_seq_id)) = (d.seq_id, d.prev_seq_id) else {
                    // Without a sequence there is nothing to splice a REST snapshot onto.
                    return OkxEvent::Dropped;
                };
                let mut u = OwnedUpdate {
                    seq_id,
                    prev_seq_id,
                    bids: Vec::new(),
                    asks: Vec::new(),
                    checksum: d.checksum.unwrap_or(0),
                };
                if let Err(e) =
                    read_levels(d.bids, &mut u.bids).and_then(|()| read_levels(d.asks, &mut u.asks))
                {
                    return self.fail(e);
                }
                if buffered.len() >= MAX_BUFFERED {
                    buffered.pop_front();
                }
                buffered.push_back(u);
                OkxEvent::Buffered
            }
            State::Synced { seq_id } => {
                let last = *seq_id;
                if let (Some(last), Some(seq), Some(prev)) = (last, d.seq_id, d.prev_seq_id) {
                    if seq == prev && seq == last {
                        // A heartbeat: nothing changed; its checksum (if any) is the book's.
                        // Levels under an unchanged seqId contradict the chain.
                        if Levels::new(d.bids).next().is_some()
                            || Levels::new(d.asks).next().is_some()
                        {
                            return self.fail(OkxResync::Malformed);
                        }
                        return match self.verify(d.checksum.unwrap_or(0)) {
                            Ok(()) => OkxEvent::Heartbeat,
                            Err(e) => self.fail(e),
                        };
                    }
                    if seq < prev {
                        return self.fail(OkxResync::SequenceReset);
                    }
                    if seq <= last {
                        return OkxEvent::Dropped;
                    }
                    if prev != last {
                        return self.fail(OkxResync::Gap {
                            expected: last,
                            got: prev,
                        });
                    }
                }
                let r = apply_raw(&mut self.book, BookSide::Bid, d.bids)
                    .and_then(|()| apply_raw(&mut self.book, BookSide::Ask, d.asks))
                    .and_then(|()| self.verify(d.checksum.unwrap_or(0)));
                match r {
                    Ok(()) => {
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
        }
    }

    /// A REST snapshot (`/api/v5/market/books?…&source=0`) with its `seqId`.
    pub fn on_rest_snapshot(&mut self, d: &BookData<'_>) -> OkxEvent {
        let State::AwaitingSnapshot { buffered } = &mut self.state else {
            return OkxEvent::Dropped;
        };
        let buffered = std::mem::take(buffered);
        let Some(snap) = d.seq_id else {
            return self.fail(OkxResync::Malformed);
        };
        let kept: Vec<&OwnedUpdate> = buffered.iter().filter(|u| u.seq_id > snap).collect();
        if let Some(first) = kept.first()
            && first.prev_seq_id > snap
        {
            self.state = State::AwaitingSnapshot { buffered };
            return OkxEvent::Resync(OkxResync::StaleSnapshot);
        }
        self.book.clear();
        if let Err(e) = apply_raw(&mut self.book, BookSide::Bid, d.bids)
            .and_then(|()| apply_raw(&mut self.book, BookSide::Ask, d.asks))
        {
            return self.fail(e);
        }
        let mut last = snap;
        for (i, u) in kept.iter().enumerate() {
            if i > 0 && u.prev_seq_id != last {
                return self.fail(OkxResync::Gap {
                    expected: last,
                    got: u.prev_seq_id,
                });
            }
            for (p, q) in &u.bids {
                self.book.apply(BookSide::Bid, *p, *q);
            }
            for (p, q) in &u.asks {
                self.book.apply(BookSide::Ask, *p, *q);
            }
            last = u.seq_id;
            if let Err(e) = self.verify(u.checksum) {
                return self.fail(e);
            }
        }
        self.state = State::Synced { seq_id: Some(last) };
        OkxEvent::Applied { seq_id: last }
    }

    /// Fills the top `depth` levels while synced (`Err` when the book was cut below it).
    pub fn fill(&mut self, depth: usize, out: &mut OrderbookData) -> Result<bool, OkxResync> {
        let State::Synced { seq_id } = self.state else {
            return Ok(false);
        };
        match self.book.fill(depth, out) {
            Ok(()) => {
                out.update_id = seq_id.unwrap_or(0).max(0) as u64;
                Ok(true)
            }
            Err(_) => {
                self.reset();
                Err(OkxResync::Truncated)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            OkxEvent::Resync(OkxResync::Gap {
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
            OkxEvent::Resync(OkxResync::Malformed)
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
            OkxEvent::Resync(OkxResync::Gap {
                expected: 10,
                got: 12
            })
        );
        assert_eq!(
            b.on_update(&data(
                r#"{"asks":[],"bids":[],"checksum":0,"seqId":3,"prevSeqId":11}"#
            )),
            OkxEvent::Resync(OkxResync::SequenceReset)
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
            .iter()
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
            OkxEvent::Resync(OkxResync::StaleSnapshot)
        );
    }

    #[test]
    fn a_rest_seq_id_written_as_a_string_is_read_and_junk_is_refused() {
        let d = data(r#"{"asks":[],"bids":[],"seqId":"123","prevSeqId":null}"#);
        assert_eq!((d.seq_id, d.prev_seq_id), (Some(123), None));
        for bad in [
            r#"{"asks":[],"bids":[],"seqId":"12a"}"#,
            r#"{"asks":[],"bids":[],"seqId":1.5}"#,
            r#"{"asks":[],"bids":[],"checksum":true}"#,
            r#"{"asks":[],"seqId":1}"#,
            r#"{"asks":{},"bids":[]}"#,
            r#"{"asks":[],"bids":[],"ts":5}"#,
            r#"{"asks":[],"bids":[]"#,
        ] {
            assert!(BookData::parse(bad).is_err(), "{bad}");
        }
        let e = parse_entries(r#"[{"asks":[],"bids":[]},{"asks":[],"bids":[]}]"#)
            .expect("valid books entries");
        assert_eq!(e.len(), 2);
        let five = format!("[{}]", [r#"{"asks":[],"bids":[]}"#; 5].join(","));
        assert_eq!(parse_entries(&five).unwrap_err(), BookDataError::TooMany);
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
            OkxEvent::Resync(OkxResync::Checksum {
                venue: i64::from(good ^ 1),
                ours: good
            })
        );
        assert!(!b.is_synced());
    }
}
