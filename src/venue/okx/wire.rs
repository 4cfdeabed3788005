//! OKX frames and REST bodies, parsed without copying.
//!
//! Design: a WebSocket frame is an event (`{"event":"subscribe"|"error"|"notice",…}`) or a
//! push (`{"arg":{"channel","instId"|"instType"},"action"?,"data":[…]}`). The envelope is read
//! in one pass by the zero-copy scanner ([`Frame::parse`]); `data` stays raw and is read by
//! the channel's own parser: `books` entries by [`BookData::parse`], the flat channels by
//! borrowed serde rows. Channels, events, actions and ops are enums, never compared strings.
//!
//! A `books` push on the socket is read once ([`Frame::parse_reading`]): each level's price
//! and size are read into a fixed-capacity [`LevelBuf`] the caller owns, in the same pass as
//! the envelope, and applied from there. Whatever that pass does not read to the end (a level
//! the book would refuse, more levels than the buffer holds) is kept raw and walked when
//! applied, as every level was before: the error, and where it stops the book, are the same
//! whichever way a level arrives, and no level is ever dropped.
//!
//! Numbers are typed: a field that must be a number and is not is a [`WireError`] (counted as
//! malformed by the feed), never a default value: an unreadable trade id must not become 0
//! and collide in JetStream's duplicate window.
//!
//! Unknown keys are ignored everywhere (live payloads carry undocumented extras).
//!
//! Owns: every OKX field name. Must not touch: book state, subscriptions or publishing.

use std::ops::Range;

use serde::Deserialize;

use crate::venue::json::{JsonError, Object, Scanner, as_plain_str, as_u64};

/// Why a frame or body could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error("`{0}` is missing")]
    Missing(&'static str),
    #[error("`{0}` is not what it should be")]
    Invalid(&'static str),
    #[error("more than {MAX_ENTRIES} entries in one push")]
    TooMany,
    #[error("neither an event nor a push")]
    NotAFrame,
    #[error("a push for an instrument this socket does not carry")]
    UnknownInstrument,
    #[error("the venue answered with error code {0}")]
    Refused(Code),
}

/// An OKX error code as the venue wrote it (digits; at most 8 kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    digits: [u8; 8],
    len: u8,
}

impl Code {
    /// Keeps up to 8 characters of `raw` (any text: it is only shown, never a label).
    pub fn new(raw: &str) -> Code {
        let mut digits = [0u8; 8];
        let mut len = 0;
        for b in raw.bytes().filter(u8::is_ascii_graphic).take(8) {
            digits[len] = b;
            len += 1;
        }
        Code {
            digits,
            len: len as u8,
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.digits[..usize::from(self.len)]).unwrap_or("?")
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The channels marketbox subscribes to on `/ws/v5/public`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OkxChannel {
    Books,
    Trades,
    FundingRate,
    OpenInterest,
    LiquidationOrders,
}

impl OkxChannel {
    pub fn as_str(self) -> &'static str {
        match self {
            OkxChannel::Books => "books",
            OkxChannel::Trades => "trades",
            OkxChannel::FundingRate => "funding-rate",
            OkxChannel::OpenInterest => "open-interest",
            OkxChannel::LiquidationOrders => "liquidation-orders",
        }
    }

    pub fn parse(s: &str) -> Option<OkxChannel> {
        Some(match s {
            "books" => OkxChannel::Books,
            "trades" => OkxChannel::Trades,
            "funding-rate" => OkxChannel::FundingRate,
            "open-interest" => OkxChannel::OpenInterest,
            "liquidation-orders" => OkxChannel::LiquidationOrders,
            _ => return None,
        })
    }

    /// `liquidation-orders` is subscribed by `instType`, every other channel by `instId`.
    pub fn key_field(self) -> &'static str {
        match self {
            OkxChannel::LiquidationOrders => "instType",
            _ => "instId",
        }
    }
}

/// A subscription request's operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Subscribe,
    Unsubscribe,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Subscribe => "subscribe",
            Op::Unsubscribe => "unsubscribe",
        }
    }
}

/// An event frame's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Subscribe,
    Unsubscribe,
    Error,
    Notice,
    /// `login`, `channel-conn-count`, … : nothing marketbox acts on.
    Other,
}

/// A `books` push's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Snapshot,
    Update,
}

/// The venue's notice code for "service restart in 60 s".
pub const NOTICE_RESTART: &str = "64008";

/// A subscription arg as the venue echoes it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Arg<'a> {
    /// `None` for a channel marketbox does not know (counted as unknown).
    pub channel: Option<OkxChannel>,
    pub inst_id: Option<&'a str>,
    pub inst_type: Option<&'a str>,
}

impl<'a> Arg<'a> {
    /// The subscription key: `instId`, or `instType` for `liquidation-orders`.
    pub fn key(&self) -> Option<&'a str> {
        self.inst_id.or(self.inst_type)
    }
}

/// A frame's envelope, read in one pass without allocating. A `books` push (its `arg` comes
/// before its `data`, as OKX writes them) has its entries read in the same pass into
/// [`Frame::books`], their levels read too when a [`LevelBuf`] is given
/// ([`Frame::parse_reading`]), else kept as raw slices for the book to walk once.
#[derive(Debug, Default)]
pub struct Frame<'a> {
    /// The request id an event answers.
    pub id: Option<&'a str>,
    pub event: Option<Event>,
    pub code: Option<&'a str>,
    /// The message text (raw JSON when it holds escapes); for logs only.
    pub msg: Option<&'a str>,
    pub arg: Option<Arg<'a>>,
    pub action: Option<Action>,
    /// The raw `data` array of a push.
    pub data: Option<&'a str>,
    /// The entries of a `books` push, read with the envelope.
    pub books: Option<Entries<'a>>,
}

/// Reads the `arg` object at the scanner.
fn read_arg<'a>(sc: &mut Scanner<'a>) -> Result<Arg<'a>, WireError> {
    let mut a = Arg::default();
    let mut named = false;
    sc.begin_object()?;
    let mut first = true;
    while let Some(k) = sc.next_key(&mut first)? {
        match k {
            "channel" => {
                a.channel = OkxChannel::parse(sc.string().map_err(|_| WireError::Invalid("arg"))?);
                named = true;
            }
            "instId" => a.inst_id = Some(sc.string().map_err(|_| WireError::Invalid("arg"))?),
            "instType" => a.inst_type = Some(sc.string().map_err(|_| WireError::Invalid("arg"))?),
            _ => {
                sc.value()?;
            }
        }
    }
    if !named {
        return Err(WireError::Missing("arg.channel"));
    }
    Ok(a)
}

pub use crate::venue::json::{LevelBuf, READ_LEVELS, ReadLevel, ReadLevels};

/// Where an entry's sides sit in the [`LevelBuf`] (bids, asks), when both were read.
type ReadRanges = Option<[Range<usize>; 2]>;

/// The level array at the scanner, read into `buf` when there is one
/// ([`Scanner::levels_into`]), else skipped raw.
fn read_side<'a>(
    sc: &mut Scanner<'a>,
    buf: Option<&mut LevelBuf>,
    field: &'static str,
) -> Result<(&'a str, Option<Range<usize>>), WireError> {
    sc.levels_into(buf).map_err(|_| WireError::Invalid(field))
}

/// Reads one `books` entry object at the scanner; the level arrays are read into `buf` when
/// there is one ([`read_side`]), else skipped (brackets and strings matched) and kept raw.
fn read_entry<'a>(
    sc: &mut Scanner<'a>,
    mut buf: Option<&mut LevelBuf>,
) -> Result<(BookData<'a>, ReadRanges), WireError> {
    let (mut asks, mut bids) = (None, None);
    let mut d = BookData {
        asks: "[]",
        bids: "[]",
        read: None,
        ts: None,
        checksum: None,
        seq_id: None,
        prev_seq_id: None,
    };
    sc.begin_object()?;
    let mut first = true;
    while let Some(k) = sc.next_key(&mut first)? {
        match k {
            "asks" => asks = Some(read_side(sc, buf.as_deref_mut(), "asks")?),
            "bids" => bids = Some(read_side(sc, buf.as_deref_mut(), "bids")?),
            "ts" => d.ts = Some(sc.string().map_err(|_| WireError::Invalid("ts"))?),
            "checksum" => {
                d.checksum = sc
                    .i64_or_null()
                    .map_err(|_| WireError::Invalid("checksum"))?
            }
            "seqId" => d.seq_id = sc.i64_or_null().map_err(|_| WireError::Invalid("seqId"))?,
            "prevSeqId" => {
                d.prev_seq_id = sc
                    .i64_or_null()
                    .map_err(|_| WireError::Invalid("prevSeqId"))?
            }
            _ => {
                sc.value()?;
            }
        }
    }
    let (asks, asks_read) = asks.ok_or(WireError::Missing("asks"))?;
    let (bids, bids_read) = bids.ok_or(WireError::Missing("bids"))?;
    d.asks = asks;
    d.bids = bids;
    Ok((d, bids_read.zip(asks_read).map(|(b, a)| [b, a])))
}

/// Reads a `data` array of `books` entries at the scanner, in place, their levels into `buf`
/// when there is one.
fn read_entries<'a>(
    sc: &mut Scanner<'a>,
    mut buf: Option<&mut LevelBuf>,
) -> Result<(Entries<'a>, [ReadRanges; MAX_ENTRIES]), WireError> {
    let mut out = Entries::new();
    let mut ranges: [ReadRanges; MAX_ENTRIES] = Default::default();
    sc.begin_array()?;
    let mut first = true;
    while sc.next_element(&mut first)? {
        let (d, r) = read_entry(sc, buf.as_deref_mut())?;
        // `ranges` has a slot for every entry `out` takes.
        if let Some(slot) = ranges.get_mut(out.len()) {
            *slot = r;
        }
        out.push(d).map_err(|_| WireError::TooMany)?;
    }
    Ok((out, ranges))
}

impl<'a> Frame<'a> {
    /// Reads a frame, the levels of a `books` push left raw (walked when applied).
    pub fn parse(text: &'a str) -> Result<Self, WireError> {
        Frame::parse_into(text, None)
    }

    /// Reads a frame as the socket does: the levels of a `books` push are read into `buf` in
    /// the same pass ([`BookData::read`]); what does not fit or would be refused stays raw.
    pub fn parse_reading(text: &'a str, buf: &'a mut LevelBuf) -> Result<Self, WireError> {
        buf.clear();
        Frame::parse_into(text, Some(buf))
    }

    fn parse_into(text: &'a str, mut buf: Option<&'a mut LevelBuf>) -> Result<Self, WireError> {
        let mut f = Frame::default();
        let mut ranges: [ReadRanges; MAX_ENTRIES] = Default::default();
        let mut sc = Scanner::new(text);
        sc.begin_object()?;
        let mut first = true;
        while let Some(k) = sc.next_key(&mut first)? {
            match k {
                "id" => f.id = as_plain_str(sc.value()?),
                "event" => {
                    f.event = Some(
                        match sc.string().map_err(|_| WireError::Invalid("event"))? {
                            "subscribe" => Event::Subscribe,
                            "unsubscribe" => Event::Unsubscribe,
                            "error" => Event::Error,
                            "notice" => Event::Notice,
                            _ => Event::Other,
                        },
                    )
                }
                // Written as a string; a number is tolerated.
                "code" => {
                    let v = sc.value()?;
                    f.code = as_plain_str(v).or_else(|| as_u64(v).map(|_| v));
                }
                "msg" => {
                    let v = sc.value()?;
                    f.msg = Some(as_plain_str(v).unwrap_or(v));
                }
                "arg" => f.arg = Some(read_arg(&mut sc)?),
                "action" => {
                    f.action = Some(
                        match sc.string().map_err(|_| WireError::Invalid("action"))? {
                            "snapshot" => Action::Snapshot,
                            "update" => Action::Update,
                            _ => return Err(WireError::Invalid("action")),
                        },
                    )
                }
                "data" => {
                    let books = f.arg.is_some_and(|a| a.channel == Some(OkxChannel::Books));
                    if books && sc.peek_token() == Some(b'[') {
                        let from = sc.position();
                        let (entries, read) = read_entries(&mut sc, buf.as_deref_mut())?;
                        f.data = sc.slice(from, sc.position());
                        f.books = Some(entries);
                        ranges = read;
                    } else {
                        f.data = Some(sc.value()?);
                    }
                }
                _ => {
                    sc.value()?;
                }
            }
        }
        sc.end()?;
        if f.event.is_none() && (f.arg.is_none() || f.data.is_none()) {
            return Err(WireError::NotAFrame);
        }
        if let (Some(buf), Some(books)) = (buf, f.books.as_mut()) {
            let buf: &'a LevelBuf = buf;
            for (d, r) in books.iter_mut().zip(ranges) {
                d.read = r.and_then(|[b, a]| {
                    Some(ReadLevels {
                        bids: buf.get(b)?,
                        asks: buf.get(a)?,
                    })
                });
            }
        }
        Ok(f)
    }
}

/// One `books` data entry (snapshot or update), borrowed from the frame. `asks` and `bids`
/// are the raw level arrays; `read`, when the envelope pass read both, their levels.
#[derive(Debug, Clone, Copy)]
pub struct BookData<'a> {
    pub asks: &'a str,
    pub bids: &'a str,
    /// Both sides read by [`Frame::parse_reading`]; `None` when they are to be walked raw.
    pub read: Option<ReadLevels<'a>>,
    pub ts: Option<&'a str>,
    pub checksum: Option<i64>,
    pub seq_id: Option<i64>,
    pub prev_seq_id: Option<i64>,
}

impl<'a> BookData<'a> {
    /// Reads one entry object without allocating, as the socket path does ([`read_entry`]).
    /// Unknown members are skipped.
    pub fn parse(raw: &'a str) -> Result<Self, WireError> {
        let mut sc = Scanner::new(raw);
        let (d, _) = read_entry(&mut sc, None)?;
        sc.end()?;
        Ok(d)
    }

    /// The venue's timestamp (ms); 0 when absent or unreadable (it only labels the message,
    /// it never reaches an id or a timer).
    pub fn ts_ms(&self) -> u64 {
        self.ts.and_then(|t| t.parse().ok()).unwrap_or(0)
    }
}

/// Most entries one `books` push may carry (the venue sends one).
pub const MAX_ENTRIES: usize = 4;

/// The entries of one `books` push, kept inline so the hot path does not allocate.
pub type Entries<'a> = heapless::Vec<BookData<'a>, MAX_ENTRIES>;

/// Parses the raw `data` array of a `books` push (or of a REST books answer).
pub fn parse_entries(raw: &str) -> Result<Entries<'_>, WireError> {
    let mut sc = Scanner::new(raw);
    let (out, _) = read_entries(&mut sc, None)?;
    sc.end()?;
    Ok(out)
}

/// A `books` push as the socket parses it: the envelope, then its entries.
pub struct BooksPush<'a> {
    pub inst_id: &'a str,
    pub snapshot: bool,
    pub entries: Entries<'a>,
}

/// Parses a `books` push the way the feed does, levels read into `buf` (for benchmarks and
/// tools).
pub fn parse_books_push<'a>(
    text: &'a str,
    buf: &'a mut LevelBuf,
) -> Result<BooksPush<'a>, WireError> {
    let f = Frame::parse_reading(text, buf)?;
    let (Some(arg), Some(data)) = (f.arg, f.data) else {
        return Err(WireError::NotAFrame);
    };
    if arg.channel != Some(OkxChannel::Books) {
        return Err(WireError::Invalid("arg.channel"));
    }
    let entries = match f.books {
        Some(e) => e,
        None => parse_entries(data)?,
    };
    Ok(BooksPush {
        inst_id: arg.inst_id.ok_or(WireError::Missing("arg.instId"))?,
        snapshot: f.action == Some(Action::Snapshot),
        entries,
    })
}

/// A `GET /api/v5/market/books` answer: `code` and the first entry of `data`.
pub fn rest_books(body: &str) -> Result<BookData<'_>, WireError> {
    let (mut code, mut data) = (None, None);
    for m in Object::new(body) {
        let (k, v) = m?;
        match k {
            "code" => code = as_plain_str(v).or(Some(v)),
            "data" => data = Some(v),
            _ => {}
        }
    }
    match code {
        Some("0") => {}
        Some(c) => return Err(WireError::Refused(Code::new(c))),
        None => return Err(WireError::Missing("code")),
    }
    let entries = parse_entries(data.ok_or(WireError::Missing("data"))?)?;
    entries
        .first()
        .copied()
        .ok_or(WireError::Missing("data[0]"))
}

/// A non-negative integer written as a JSON string (OKX's ids and timestamps).
pub fn number(s: &str, field: &'static str) -> Result<u64, WireError> {
    as_u64(s).ok_or(WireError::Invalid(field))
}

/// A `trades` row.
#[derive(Deserialize)]
pub struct Trade<'a> {
    #[serde(rename = "tradeId", borrow)]
    pub trade_id: &'a str,
    #[serde(borrow)]
    pub px: &'a str,
    #[serde(borrow)]
    pub sz: &'a str,
    #[serde(borrow)]
    pub side: &'a str,
    #[serde(borrow)]
    pub ts: &'a str,
}

/// A `funding-rate` row.
#[derive(Deserialize)]
pub struct Funding<'a> {
    #[serde(rename = "fundingRate", borrow)]
    pub funding_rate: &'a str,
    #[serde(rename = "fundingTime", borrow)]
    pub funding_time: &'a str,
    #[serde(rename = "nextFundingRate", borrow, default)]
    pub next_funding_rate: Option<&'a str>,
    #[serde(borrow, default)]
    pub ts: Option<&'a str>,
}

/// An `open-interest` row.
#[derive(Deserialize)]
pub struct OpenInterest<'a> {
    #[serde(borrow)]
    pub oi: &'a str,
    #[serde(rename = "oiCcy", borrow)]
    pub oi_ccy: &'a str,
    #[serde(borrow)]
    pub ts: &'a str,
}

/// One liquidation of a `liquidation-orders` row.
#[derive(Deserialize)]
pub struct LiqDetail<'a> {
    #[serde(borrow)]
    pub side: &'a str,
    #[serde(rename = "posSide", borrow, default)]
    pub pos_side: Option<&'a str>,
    #[serde(rename = "bkPx", borrow)]
    pub price: &'a str,
    #[serde(borrow)]
    pub sz: &'a str,
    #[serde(borrow)]
    pub ts: &'a str,
}

/// A stable 64-bit id for venue data the venue does not number: FNV-1a over the fields as
/// written, each followed by a separator. The same data re-sent (or seen by a second box) gets
/// the same id; data differing in any field gets another.
pub fn content_id(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl LiqDetail<'_> {
    /// A liquidation's id (the venue does not number them): [`content_id`] of its
    /// instrument, timestamp, side, position side, price and size. Two in one millisecond
    /// differ.
    pub fn id(&self, inst_id: &str) -> u64 {
        content_id(&[
            inst_id,
            self.ts,
            self.side,
            self.pos_side.unwrap_or(""),
            self.price,
            self.sz,
        ])
    }
}

impl Funding<'_> {
    /// A funding update's id: its `ts` (every update in a funding period shares
    /// `fundingTime`); payloads without `ts` (before 2023) get [`content_id`] of their funding
    /// time and rates, so a changed rate is never taken for a re-send.
    pub fn id(&self) -> Result<u64, WireError> {
        match self.ts {
            Some(ts) => number(ts, "ts"),
            None => Ok(content_id(&[
                self.funding_time,
                self.funding_rate,
                self.next_funding_rate.unwrap_or(""),
            ])),
        }
    }
}

/// A `liquidation-orders` row.
#[derive(Deserialize)]
pub struct Liq<'a> {
    #[serde(rename = "instId", borrow, default)]
    pub inst_id: Option<&'a str>,
    #[serde(borrow)]
    pub details: Vec<LiqDetail<'a>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decimal::Decimal;

    #[test]
    fn envelopes_are_typed() {
        // TC0: a push.
        let f = Frame::parse(
            r#"{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":[]}"#,
        )
        .expect("a push");
        assert_eq!(f.arg.and_then(|a| a.channel), Some(OkxChannel::Books));
        assert_eq!(f.action, Some(Action::Update));
        // TC1: an event; an unknown channel is kept as unknown, not an error.
        let f = Frame::parse(r#"{"event":"notice","code":"64008","msg":"x"}"#).expect("an event");
        assert_eq!(
            (f.event, f.code),
            (Some(Event::Notice), Some(NOTICE_RESTART))
        );
        let f = Frame::parse(r#"{"arg":{"channel":"tickers","instId":"X"},"data":[]}"#)
            .expect("a push on a channel marketbox does not know");
        assert_eq!(f.arg.and_then(|a| a.channel), None);
        // TC2: shapes refused.
        for bad in [
            "{}",
            r#"{"arg":{"instId":"X"},"data":[]}"#,
            r#"{"arg":{"channel":"books"},"action":"partial","data":[]}"#,
            r#"{"event":5}"#,
            "not json",
        ] {
            assert!(Frame::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_are_numbers_or_errors_never_zero() {
        assert_eq!(number("123", "tradeId"), Ok(123));
        for bad in ["", "-1", "1.5", "abc", "99999999999999999999999"] {
            assert_eq!(
                number(bad, "tradeId"),
                Err(WireError::Invalid("tradeId")),
                "{bad}"
            );
        }
        assert_eq!(
            rest_books(r#"{"code":"51001","msg":"Instrument ID does not exist","data":[]}"#)
                .map(|_| ()),
            Err(WireError::Refused(Code::new("51001")))
        );
    }

    #[test]
    fn liquidation_ids_are_stable_and_distinct() {
        let a = LiqDetail {
            side: "sell",
            pos_side: Some("long"),
            price: "27000.1",
            sz: "3",
            ts: "1700000000000",
        };
        let b = LiqDetail { sz: "4", ..a };
        let again = LiqDetail { ..a };
        assert_eq!(a.id("BTC-USDT-SWAP"), again.id("BTC-USDT-SWAP"));
        assert_ne!(
            a.id("BTC-USDT-SWAP"),
            b.id("BTC-USDT-SWAP"),
            "same ms, other size"
        );
        assert_ne!(a.id("BTC-USDT-SWAP"), a.id("ETH-USDT-SWAP"));
        // The separators keep "1|23" and "12|3" apart.
        let x = LiqDetail {
            price: "1",
            sz: "23",
            ..a
        };
        let y = LiqDetail {
            price: "12",
            sz: "3",
            ..a
        };
        assert_ne!(x.id("I"), y.id("I"));
    }

    use crate::fuzzing::walk_levels as walk;

    /// Reads `text` both ways and checks they agree: the same error, or the same envelope and
    /// entries, whose read levels are exactly the raw arrays walked; an entry is left raw
    /// only when a walk fails or the push has more levels than the buffer holds. Returns how
    /// many entries were read in one pass.
    fn agree(text: &str) -> usize {
        let mut buf = LevelBuf::new();
        let (raw, one) = (Frame::parse(text), Frame::parse_reading(text, &mut buf));
        let (raw, one) = match (raw, one) {
            (Err(a), Err(b)) => {
                assert_eq!(a, b, "{text}");
                return 0;
            }
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => panic!("{text}: raw {:?}, one pass {:?}", a.err(), b.err()),
        };
        assert_eq!(
            (raw.id, raw.event, raw.code, raw.msg, raw.action, raw.data),
            (one.id, one.event, one.code, one.msg, one.action, one.data),
            "{text}"
        );
        let (raw, one) = (raw.books.unwrap_or_default(), one.books.unwrap_or_default());
        assert_eq!(raw.len(), one.len(), "{text}");
        let levels: usize = raw
            .iter()
            .map(|d| walk(d.bids).map_or(0, |l| l.len()) + walk(d.asks).map_or(0, |l| l.len()))
            .sum();
        let mut read = 0;
        for (a, b) in raw.iter().zip(&one) {
            assert!(a.read.is_none(), "{text}");
            assert_eq!(
                (a.bids, a.asks, a.ts, a.checksum, a.seq_id, a.prev_seq_id),
                (b.bids, b.asks, b.ts, b.checksum, b.seq_id, b.prev_seq_id),
                "{text}"
            );
            match b.read {
                Some(r) => {
                    assert_eq!(Some(r.bids.to_vec()), walk(b.bids), "bids of {text}");
                    assert_eq!(Some(r.asks.to_vec()), walk(b.asks), "asks of {text}");
                    read += 1;
                }
                None => assert!(
                    walk(b.bids).is_none() || walk(b.asks).is_none() || levels > READ_LEVELS,
                    "left raw for no reason: {text}"
                ),
            }
        }
        read
    }

    #[test]
    fn the_one_pass_reader_agrees_with_the_raw_walk_on_every_captured_frame_and_its_prefixes() {
        let dir = std::env::var_os("MARKETBOX_FIXTURES")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
            })
            .join("okx");
        let Ok(files) = std::fs::read_dir(&dir) else {
            eprintln!(
                "\n!!! SKIPPED: OKX captures not found at {} (set MARKETBOX_FIXTURES) !!!\n",
                dir.display()
            );
            return;
        };
        let (mut frames, mut read) = (0, 0);
        for file in files.flatten() {
            let text = std::fs::read_to_string(file.path()).expect("a readable capture");
            for line in text.lines().filter(|l| l.starts_with('{')) {
                let v: serde_json::Value = serde_json::from_str(line).expect("a JSON row");
                let Some(raw) = v["raw"].as_str() else {
                    continue;
                };
                frames += 1;
                read += agree(raw);
                // Every prefix of some books updates: truncated anywhere, the same error
                // both ways.
                if raw.contains(r#""action":"update""#) && frames % 8 == 0 {
                    for cut in 0..raw.len() {
                        assert_eq!(agree(&raw[..cut]), 0);
                    }
                }
            }
        }
        // The books capture: 3 snapshots (the deepest 400 a side) and 287 updates, all read.
        assert!(frames > 300, "{frames} frames");
        assert_eq!(read, 290);
    }

    #[test]
    fn the_one_pass_reader_leaves_raw_what_it_cannot_read_and_agrees_on_malformed_frames() {
        let push = |asks: &str, bids: &str| {
            format!(
                r#"{{"arg":{{"channel":"books","instId":"BTC-USDT"}},"action":"update","data":[{{"asks":{asks},"bids":{bids},"ts":"1","checksum":0,"seqId":2,"prevSeqId":1}}]}}"#
            )
        };
        let ok = r#"[["3366.1","7","0","2"]]"#;
        let cases: [(&str, &str, usize); 22] = [
            // TC0: read, with whitespace, pairs and longer entries.
            (ok, r#" [ ["1" , "2"] ,["0.5","3","0","1","x"] ] "#, 1),
            // TC1: empty sides.
            ("[]", "[]", 1),
            // TC2..: wrong types inside a level: left raw (the book finds the error).
            (ok, r#"[["1",2,"0","1"]]"#, 0),
            (ok, r#"[["1","2",0,"1"]]"#, 0),
            (ok, r#"[[1,"2"]]"#, 0),
            (ok, r#"[null]"#, 0),
            (ok, r#"[{"px":"1"}]"#, 0),
            (ok, r#"[["1"]]"#, 0),
            (ok, r#"[[]]"#, 0),
            (ok, r#"[["1"","2"]]"#, 0),
            (ok, r#"[["1","2"],]"#, 0),
            // TC11..: decimals the book refuses: negative, exponent, empty, too long.
            (ok, r#"[["1","-2","0","1"]]"#, 0),
            (r#"[["-1","2","0","1"]]"#, ok, 0),
            (ok, r#"[["1e5","2"]]"#, 0),
            (ok, r#"[["","2"]]"#, 0),
            (ok, r#"[["1","1234567890123456789"]]"#, 0),
            // TC16: a bracket mismatch the raw skip lets through (`}` closes the array).
            (ok, r#"[["1","2"]}"#, 0),
            // TC17..: not arrays, unterminated: the frame is refused both ways.
            (ok, r#"{}"#, 0),
            (ok, r#""[]""#, 0),
            (ok, r#"[["1","2"]"#, 0),
            (ok, r#"[["1","2"#, 0),
            (ok, "[[\"1\n\",\"2\"]]", 0),
        ];
        for (i, (asks, bids, want)) in cases.iter().enumerate() {
            let text = push(asks, bids);
            assert_eq!(agree(&text), *want, "TC{i}: {text}");
        }
        // TC22: a repeated key: the last one counts, both ways.
        let twice = push(ok, r#"[["1","2"]],"bids":[["5","6"]]"#);
        assert_eq!(agree(&twice), 1);
        let mut buf = LevelBuf::new();
        {
            let f = Frame::parse_reading(&twice, &mut buf).expect("a push");
            let read = f.books.and_then(|b| b.first().and_then(|d| d.read));
            assert_eq!(
                read.map(|r| r.bids.to_vec()),
                Some(vec![(Decimal::new(5, 0), Decimal::new(6, 0))])
            );
        }
        // TC23: more levels than the buffer holds: left raw, never cut; a push that fits
        // after another entry took the room is read.
        let many = |n: usize| {
            let l: Vec<String> = (1..=n).map(|i| format!(r#"["{i}","1","0","1"]"#)).collect();
            format!("[{}]", l.join(","))
        };
        assert_eq!(
            agree(&push(&many(READ_LEVELS / 2), &many(READ_LEVELS / 2))),
            1
        );
        let over = push(&many(READ_LEVELS / 2), &many(READ_LEVELS / 2 + 1));
        assert_eq!(agree(&over), 0);
        {
            let f = Frame::parse_reading(&over, &mut buf).expect("a push");
            let d = f.books.and_then(|b| b.first().copied()).expect("an entry");
            assert!(d.read.is_none());
            assert_eq!(walk(d.bids).map(|l| l.len()), Some(READ_LEVELS / 2 + 1));
        }
        let entry = |n: usize| format!(r#"{{"asks":{},"bids":[]}}"#, many(n));
        let two = format!(
            r#"{{"arg":{{"channel":"books","instId":"X"}},"action":"update","data":[{},{}]}}"#,
            entry(READ_LEVELS - 1),
            entry(2)
        );
        assert_eq!(
            agree(&two),
            1,
            "the first entry is read, the second left raw"
        );
        // TC24: the buffer is refilled by each frame, whatever the last one left in it.
        let small = push(ok, "[]");
        let f = Frame::parse_reading(&small, &mut buf).expect("a push");
        let read = f.books.and_then(|b| b.first().and_then(|d| d.read));
        assert_eq!(read.map(|r| (r.asks.len(), r.bids.len())), Some((1, 0)));
    }

    #[test]
    fn a_rest_seq_id_written_as_a_string_is_read_and_junk_is_refused() {
        let d = BookData::parse(r#"{"asks":[],"bids":[],"seqId":"123","prevSeqId":null}"#)
            .expect("valid");
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
        assert_eq!(parse_entries(&five).unwrap_err(), WireError::TooMany);
    }
}
