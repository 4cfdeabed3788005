//! Binance frames and REST bodies, parsed without copying.
//!
//! Design: a combined-stream frame is `{"stream":"btcusdt@depth@100ms","data":{…}}`. The
//! envelope's members are scanned once as raw slices ([`crate::venue::json::Object`]), and the
//! event type `e` inside `data` says which borrowed struct `data` becomes. Frames without an
//! envelope (`serverShutdown`, a raw `/ws` stream, replies to `SUBSCRIBE`, errors) are
//! recognised by their keys.
//!
//! `depthUpdate` — the only high-rate frame that nests — is read by hand, in one pass: on the
//! socket ([`parse_frame_reading`]) each level's price and size are read into a fixed
//! [`LevelBuf`] the caller owns, with the envelope, and applied from there; whatever that pass
//! cannot read to the end (a level a book would refuse, more levels than the buffer holds)
//! stays a raw slice of the frame, walked by [`Levels`] when applied, so the error and where
//! it stops the book are the same either way. Going through `serde_json` there would cost a
//! heap allocation per frame (keeping or skipping a nested value pushes onto the
//! deserializer's scratch `Vec`), and the steady state must allocate nothing. The flat events
//! (`trade`, `aggTrade`, `markPriceUpdate`, `forceOrder`) use borrowed serde structs, which
//! allocate nothing either. The REST depth snapshot (once per resync) keeps its levels as
//! `&RawValue`.
//!
//! Unknown keys are ignored everywhere: 2026 payloads carry undocumented `st`, `nq`, `ap`, `ps`.
//! No input panics; anything unusable is a [`WireError`].
//!
//! Symbols: Binance spells `BTC-USDT` as `btcusdt` in stream names and `BTCUSDT` in REST and in
//! an event's `s`; [`is_symbol`] and [`find_symbol`] compare without allocating, the `write_*`
//! functions spell a symbol into any `fmt::Write` (a `heapless::String` on the hot path).
//!
//! Owns: every Binance field name. Must not touch: book state or publishing.

use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::model::Symbol;
use crate::venue::json::{self, JsonError, LevelBuf, Levels, Object, ReadLevels, Scanner};

/// `depthUpdate`: spot `e,E,s,U,u,b,a`; USD-M adds `T` and `pu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthUpdate<'a> {
    /// `E`, ms.
    pub event_time: u64,
    /// `T` (USD-M), ms.
    pub transact_time: Option<u64>,
    /// `s`, e.g. `BTCUSDT`.
    pub symbol: &'a str,
    /// `U`: first update id in the event.
    pub first_id: u64,
    /// `u`: last update id in the event.
    pub last_id: u64,
    /// `pu` (USD-M): the previous event's `u`.
    pub prev_last_id: Option<u64>,
    /// `b`: the raw JSON array of `[price, qty]` string pairs.
    pub bids: &'a str,
    /// `a`: the raw JSON array of `[price, qty]` string pairs.
    pub asks: &'a str,
    /// Both sides as read with the envelope ([`parse_frame_reading`]); `None`: walk the raw
    /// arrays.
    pub read: Option<ReadLevels<'a>>,
}

impl<'a> DepthUpdate<'a> {
    /// Bid levels, best effort order as sent; each item errors if the array is malformed.
    pub fn bids(&self) -> Levels<'a> {
        Levels::new(self.bids)
    }

    /// Ask levels, as sent.
    pub fn asks(&self) -> Levels<'a> {
        Levels::new(self.asks)
    }
}

/// REST depth snapshot: `/api/v3/depth` `{"lastUpdateId","bids","asks"}`, `/fapi/v1/depth` adds
/// `E` and `T`.
#[derive(Debug, Deserialize)]
pub struct DepthSnapshot<'a> {
    #[serde(rename = "lastUpdateId")]
    pub last_update_id: u64,
    #[serde(rename = "E", default)]
    pub event_time: Option<u64>,
    #[serde(rename = "T", default)]
    pub transact_time: Option<u64>,
    #[serde(borrow)]
    pub bids: &'a RawValue,
    #[serde(borrow)]
    pub asks: &'a RawValue,
}

impl<'a> DepthSnapshot<'a> {
    /// Parses a REST body (borrowing from it).
    pub fn parse(body: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }

    /// Parses a REST body held as text.
    pub fn parse_str(body: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(body)
    }

    pub fn bids(&self) -> Levels<'a> {
        Levels::new(self.bids.get())
    }

    pub fn asks(&self) -> Levels<'a> {
        Levels::new(self.asks.get())
    }
}

/// `trade` (spot and USD-M; USD-M adds `X`, ignored).
#[derive(Debug, Deserialize)]
pub struct Trade<'a> {
    #[serde(rename = "E")]
    pub event_time: u64,
    #[serde(rename = "s", borrow)]
    pub symbol: &'a str,
    #[serde(rename = "t")]
    pub id: u64,
    #[serde(rename = "p", borrow)]
    pub price: &'a str,
    #[serde(rename = "q", borrow)]
    pub qty: &'a str,
    #[serde(rename = "T")]
    pub trade_time: u64,
    /// Buyer is the maker: the taker sold.
    #[serde(rename = "m")]
    pub buyer_is_maker: bool,
}

/// `aggTrade`.
#[derive(Debug, Deserialize)]
pub struct AggTrade<'a> {
    #[serde(rename = "E")]
    pub event_time: u64,
    #[serde(rename = "s", borrow)]
    pub symbol: &'a str,
    /// `a`: aggregate trade id.
    #[serde(rename = "a")]
    pub id: u64,
    #[serde(rename = "p", borrow)]
    pub price: &'a str,
    #[serde(rename = "q", borrow)]
    pub qty: &'a str,
    /// `f`: first trade id.
    #[serde(rename = "f")]
    pub first_trade_id: u64,
    /// `l`: last trade id.
    #[serde(rename = "l")]
    pub last_trade_id: u64,
    #[serde(rename = "T")]
    pub trade_time: u64,
    /// Buyer is the maker: the taker sold.
    #[serde(rename = "m")]
    pub buyer_is_maker: bool,
}

/// `markPriceUpdate`.
#[derive(Debug, Deserialize)]
pub struct MarkPrice<'a> {
    #[serde(rename = "E")]
    pub event_time: u64,
    #[serde(rename = "s", borrow)]
    pub symbol: &'a str,
    #[serde(rename = "p", borrow)]
    pub mark_price: &'a str,
    #[serde(rename = "i", borrow, default)]
    pub index_price: Option<&'a str>,
    #[serde(rename = "r", borrow)]
    pub funding_rate: &'a str,
    #[serde(rename = "T")]
    pub next_funding_time: u64,
}

/// The order inside `forceOrder`.
#[derive(Debug, Deserialize)]
pub struct ForceOrderBody<'a> {
    #[serde(rename = "s", borrow)]
    pub symbol: &'a str,
    #[serde(rename = "S", borrow)]
    pub side: &'a str,
    #[serde(rename = "q", borrow)]
    pub qty: &'a str,
    #[serde(rename = "p", borrow)]
    pub price: &'a str,
    #[serde(rename = "ap", borrow, default)]
    pub avg_price: Option<&'a str>,
    #[serde(rename = "X", borrow, default)]
    pub status: Option<&'a str>,
    #[serde(rename = "T")]
    pub trade_time: u64,
}

/// `forceOrder` (liquidation).
#[derive(Debug, Deserialize)]
pub struct ForceOrder<'a> {
    #[serde(rename = "E")]
    pub event_time: u64,
    #[serde(rename = "o", borrow)]
    pub order: ForceOrderBody<'a>,
}

/// One parsed frame.
#[derive(Debug)]
pub enum Frame<'a> {
    Depth(DepthUpdate<'a>),
    Trade(Trade<'a>),
    AggTrade(AggTrade<'a>),
    MarkPrice(MarkPrice<'a>),
    ForceOrder(ForceOrder<'a>),
    /// `{"result":…,"id":N}`: a live request was accepted.
    Reply {
        id: u64,
    },
    /// `{"code":N,"msg":"…"}` (or `{"error":{"code","msg"},"id"}`): a request was refused.
    Error {
        code: i64,
        msg: String,
    },
    /// `serverShutdown`: the server will close this connection soon.
    ServerShutdown,
}

/// Longest stream or event name kept in [`WireError::Unknown`] (longer ones are cut).
pub const NAME_MAX: usize = 48;

/// A frame that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Not JSON, or a known frame with missing or mistyped fields.
    #[error("malformed Binance frame: {0}")]
    Malformed(Malformed),
    /// Well-formed, but of a kind this parser does not handle (the stream or event name).
    #[error("Binance frame of an unknown kind ({0:?}); not subscribed by marketbox?")]
    Unknown(heapless::String<NAME_MAX>),
}

/// What was wrong with a malformed frame.
#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    #[error("{0}")]
    Json(#[from] JsonError),
    #[error("{0}")]
    Serde(#[from] serde_json::Error),
    #[error("field {0:?} is missing, repeated or of the wrong type")]
    Field(&'static str),
}

impl From<JsonError> for WireError {
    fn from(e: JsonError) -> Self {
        WireError::Malformed(e.into())
    }
}

impl From<serde_json::Error> for WireError {
    fn from(e: serde_json::Error) -> Self {
        WireError::Malformed(e.into())
    }
}

fn unknown(name: &str) -> WireError {
    let mut s = heapless::String::new();
    for c in name.chars() {
        if s.push(c).is_err() {
            break;
        }
    }
    WireError::Unknown(s)
}

fn field(name: &'static str) -> WireError {
    WireError::Malformed(Malformed::Field(name))
}

/// Stores `v` into a slot that must be empty (a repeated key is malformed).
fn set<T>(slot: &mut Option<T>, v: Option<T>, name: &'static str) -> Result<(), WireError> {
    match (slot.is_some(), v) {
        (false, Some(v)) => {
            *slot = Some(v);
            Ok(())
        }
        _ => Err(field(name)),
    }
}

/// The members of a `depthUpdate` payload as read, before the required ones are checked.
#[derive(Default)]
struct DepthFields<'a> {
    e: Option<&'a str>,
    event_time: Option<u64>,
    transact_time: Option<u64>,
    symbol: Option<&'a str>,
    first_id: Option<u64>,
    last_id: Option<u64>,
    prev_last_id: Option<u64>,
    bids: Option<&'a str>,
    asks: Option<&'a str>,
    /// Where `b` and `a` sit in the caller's [`LevelBuf`], when read.
    bids_read: Option<Range<usize>>,
    asks_read: Option<Range<usize>>,
}

impl<'a> DepthFields<'a> {
    /// Reads one object at the scanner, typed values in place, unknown members skipped; the
    /// level arrays into `buf` when there is one ([`Scanner::levels_into`]).
    fn read(sc: &mut Scanner<'a>, mut buf: Option<&mut LevelBuf>) -> Result<Self, WireError> {
        let mut f = DepthFields::default();
        sc.begin_object()?;
        let mut first = true;
        while let Some(k) = sc.next_key(&mut first)? {
            match k {
                "e" => set(&mut f.e, Some(sc.string()?), "e")?,
                "E" => set(&mut f.event_time, Some(sc.u64()?), "E")?,
                "T" => set(&mut f.transact_time, Some(sc.u64()?), "T")?,
                "s" => set(&mut f.symbol, Some(sc.string()?), "s")?,
                "U" => set(&mut f.first_id, Some(sc.u64()?), "U")?,
                "u" => set(&mut f.last_id, Some(sc.u64()?), "u")?,
                "pu" => set(&mut f.prev_last_id, Some(sc.u64()?), "pu")?,
                // Read now, or walked (and checked) by `Levels` when applied.
                "b" => {
                    let (raw, read) = sc.levels_into(buf.as_deref_mut())?;
                    set(&mut f.bids, Some(raw), "b")?;
                    f.bids_read = read;
                }
                "a" => {
                    let (raw, read) = sc.levels_into(buf.as_deref_mut())?;
                    set(&mut f.asks, Some(raw), "a")?;
                    f.asks_read = read;
                }
                _ => {
                    sc.value()?;
                }
            }
        }
        Ok(f)
    }

    fn is_depth(&self) -> bool {
        self.e == Some("depthUpdate")
    }

    /// The update, its levels as read taken from `buf` when both sides were.
    fn build(self, buf: Option<&'a LevelBuf>) -> Result<DepthUpdate<'a>, WireError> {
        if !self.is_depth() {
            return Err(field("e"));
        }
        let read = buf
            .zip(self.bids_read)
            .zip(self.asks_read)
            .and_then(|((buf, b), a)| {
                Some(ReadLevels {
                    bids: buf.get(b)?,
                    asks: buf.get(a)?,
                })
            });
        Ok(DepthUpdate {
            read,
            event_time: self.event_time.ok_or(field("E"))?,
            transact_time: self.transact_time,
            symbol: self.symbol.ok_or(field("s"))?,
            first_id: self.first_id.ok_or(field("U"))?,
            last_id: self.last_id.ok_or(field("u"))?,
            prev_last_id: self.prev_last_id,
            bids: self.bids.ok_or(field("b"))?,
            asks: self.asks.ok_or(field("a"))?,
        })
    }
}

/// A whole `depthUpdate` object.
fn parse_depth(raw: &str) -> Result<DepthUpdate<'_>, WireError> {
    let mut sc = Scanner::new(raw);
    let f = DepthFields::read(&mut sc, None)?;
    sc.end()?;
    f.build(None)
}

/// The event type `e` of an event object (`None` when it has none).
fn event_type(raw: &str) -> Result<Option<&str>, WireError> {
    for m in Object::new(raw) {
        let (k, v) = m?;
        if k == "e" {
            return json::as_plain_str(v).map(Some).ok_or(field("e"));
        }
    }
    Ok(None)
}

/// Parses an event object of type `kind`.
fn parse_event<'a>(kind: &str, raw: &'a str) -> Result<Frame<'a>, WireError> {
    Ok(match kind {
        "depthUpdate" => Frame::Depth(parse_depth(raw)?),
        "trade" => Frame::Trade(serde_json::from_str(raw)?),
        "aggTrade" => Frame::AggTrade(serde_json::from_str(raw)?),
        "markPriceUpdate" => Frame::MarkPrice(serde_json::from_str(raw)?),
        "forceOrder" => Frame::ForceOrder(serde_json::from_str(raw)?),
        "serverShutdown" => {
            // Validates the object; its fields (`E`) are not needed.
            event_type(raw)?;
            Frame::ServerShutdown
        }
        other => return Err(unknown(other)),
    })
}

/// Parses the payload of a combined-stream frame by its event type.
fn parse_data<'a>(stream: Option<&str>, data: &'a str) -> Result<Frame<'a>, WireError> {
    if data.starts_with('[') {
        // `!markPrice@arr` and similar all-market arrays: not subscribed by marketbox.
        return Err(unknown(stream.unwrap_or("array payload")));
    }
    match event_type(data)? {
        Some(kind) => parse_event(kind, data).map_err(|e| match e {
            WireError::Unknown(_) => unknown(stream.unwrap_or(kind)),
            e => e,
        }),
        None => Err(unknown(stream.unwrap_or("event without \"e\""))),
    }
}

/// Parses one text frame from a Binance market-data socket, a depth update's levels left raw
/// (walked when applied). Never panics.
pub fn parse_frame(text: &str) -> Result<Frame<'_>, WireError> {
    parse_frame_into(text, None)
}

/// Parses one text frame as the socket does: a depth update's levels are read into `buf`
/// (emptied first) in the same pass as the envelope; what does not fit or would be refused
/// stays raw. Never panics.
pub fn parse_frame_reading<'a>(
    text: &'a str,
    buf: &'a mut LevelBuf,
) -> Result<Frame<'a>, WireError> {
    buf.clear();
    parse_frame_into(text, Some(buf))
}

/// A depth frame is read in one pass: `stream` comes first in Binance's envelopes, and when it
/// names a depth stream `data` is read in place into a [`DepthUpdate`].
fn parse_frame_into<'a>(
    text: &'a str,
    mut buf: Option<&'a mut LevelBuf>,
) -> Result<Frame<'a>, WireError> {
    let mut sc = Scanner::new(text);
    sc.begin_object()?;
    let mut first = true;
    let mut stream = None;
    let mut data = None;
    let mut depth = None;
    let mut event = None;
    let mut id = None;
    let mut code = None;
    let mut msg = None;
    let mut error = None;
    let mut result = false;
    while let Some(k) = sc.next_key(&mut first)? {
        match k {
            "stream" => set(&mut stream, Some(sc.string()?), "stream")?,
            "data" => {
                let depth_stream = stream.is_some_and(|s: &str| s.contains("@depth"));
                if depth_stream && sc.peek_token() == Some(b'{') {
                    let from = sc.position();
                    let fields = DepthFields::read(&mut sc, buf.as_deref_mut())?;
                    set(&mut data, sc.slice(from, sc.position()), "data")?;
                    depth = Some(fields);
                } else {
                    set(&mut data, Some(sc.value()?), "data")?;
                }
            }
            "e" => set(&mut event, Some(sc.string()?), "e")?,
            "id" => id = Some(sc.value()?),
            "code" => code = Some(sc.value()?),
            "msg" => msg = Some(sc.value()?),
            "error" => error = Some(sc.value()?),
            "result" => {
                sc.value()?;
                result = true;
            }
            _ => {
                sc.value()?;
            }
        }
    }
    sc.end()?;
    if let Some(d) = depth
        && d.is_depth()
    {
        let buf: Option<&'a LevelBuf> = buf.map(|b| &*b);
        return d.build(buf).map(Frame::Depth);
    }
    if let Some(data) = data {
        return parse_data(stream, data);
    }
    if let Some(event) = event {
        // A raw (`/ws/<stream>`) event or an unwrapped `serverShutdown`.
        return parse_event(event, text);
    }
    if let Some(err) = error {
        // `{"error":{"code":2,"msg":"…"},"id":1}`.
        #[derive(Deserialize)]
        struct Body {
            code: i64,
            #[serde(default)]
            msg: String,
        }
        let b: Body = serde_json::from_str(err)?;
        return Ok(Frame::Error {
            code: b.code,
            msg: b.msg,
        });
    }
    if let Some(code) = code {
        return Ok(Frame::Error {
            code: serde_json::from_str(code)?,
            msg: msg
                .map(serde_json::from_str)
                .transpose()?
                .unwrap_or_default(),
        });
    }
    if let Some(id) = id
        && result
    {
        return Ok(Frame::Reply {
            id: json::as_u64(id).ok_or(field("id"))?,
        });
    }
    Err(unknown(
        stream.unwrap_or("frame without stream, event or reply"),
    ))
}

/// A REST error body: `{"code":-1121,"msg":"Invalid symbol."}`.
#[derive(Debug, Deserialize)]
pub struct RestErrorBody {
    pub code: i64,
    #[serde(default)]
    pub msg: String,
}

/// Binance's code for a symbol it does not list.
pub const INVALID_SYMBOL: i64 = -1121;

/// Whether a Binance spelling (`BTCUSDT` in events and REST, `btcusdt` in stream names) names
/// `symbol` (`BTC-USDT`). ASCII case-insensitive; allocates nothing.
pub fn is_symbol(wire: &str, symbol: &Symbol) -> bool {
    let (w, b, q) = (
        wire.as_bytes(),
        symbol.base().as_bytes(),
        symbol.quote().as_bytes(),
    );
    w.len() == b.len() + q.len()
        && w[..b.len()].eq_ignore_ascii_case(b)
        && w[b.len()..].eq_ignore_ascii_case(q)
}

/// Index of the configured symbol a Binance spelling names.
pub fn find_symbol(wire: &str, symbols: &[Symbol]) -> Option<usize> {
    symbols.iter().position(|s| is_symbol(wire, s))
}

/// Writes the stream-name spelling (`btcusdt`).
pub fn write_stream_symbol(symbol: &Symbol, out: &mut impl fmt::Write) -> fmt::Result {
    for c in symbol.base().chars().chain(symbol.quote().chars()) {
        out.write_char(c.to_ascii_lowercase())?;
    }
    Ok(())
}

/// Writes the REST / event spelling (`BTCUSDT`).
pub fn write_rest_symbol(symbol: &Symbol, out: &mut impl fmt::Write) -> fmt::Result {
    out.write_str(symbol.base())?;
    out.write_str(symbol.quote())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The shared captures, or `None` after a loud message.
    fn fixtures() -> Option<PathBuf> {
        let dir = std::env::var_os("MARKETBOX_FIXTURES")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
            });
        if dir.is_dir() {
            Some(dir)
        } else {
            eprintln!(
                "\n!!! SKIPPED: exchange captures not found at {} (set MARKETBOX_FIXTURES) !!!\n",
                dir.display()
            );
            None
        }
    }

    /// The `raw` strings of a JSONL capture (`{"recv_ts","raw"}` or `{"kind",…,"raw"}`), with
    /// the row's `kind` when it has one.
    fn rows(path: PathBuf) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("deserializes from JSON");
                let kind = v["kind"].as_str().unwrap_or("").to_owned();
                (
                    kind,
                    v["raw"].as_str().expect("a raw frame string").to_owned(),
                )
            })
            .collect()
    }

    fn levels(l: Levels<'_>) -> Vec<(&str, &str)> {
        l.collect::<Result<Vec<_>, _>>()
            .expect("every level parses")
    }

    #[test]
    fn depth_frames_parse_with_their_levels() {
        struct Case {
            text: &'static str,
            ids: (u64, u64, Option<u64>, Option<u64>),
            bids: &'static [(&'static str, &'static str)],
        }
        let cases = [
            // TC0: spot: no T, no pu.
            Case {
                text: r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":5,"u":7,"b":[["1.0","2"]],"a":[]}}"#,
                ids: (5, 7, None, None),
                bids: &[("1.0", "2")],
            },
            // TC1: USD-M: T and pu; 2026 extras (st) ignored.
            Case {
                text: r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"T":2,"s":"BTCUSDT","U":5,"u":7,"pu":4,"st":9,"b":[],"a":[["3","4"]]}}"#,
                ids: (5, 7, Some(4), Some(2)),
                bids: &[],
            },
            // TC2: whitespace and member order do not matter; unknown nested extras skipped.
            Case {
                text: "{ \"data\" : { \"b\" : [ [\"9\" , \"1\"] ] , \"x\":{\"y\":[[1]]}, \"a\":[], \"u\":8, \"U\":8, \"s\":\"X\", \"E\":0, \"e\":\"depthUpdate\" }, \"stream\":\"x@depth\" }",
                ids: (8, 8, None, None),
                bids: &[("9", "1")],
            },
            // TC3: a raw `/ws` depth event without envelope.
            Case {
                text: r#"{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,"u":2,"b":[],"a":[]}"#,
                ids: (1, 2, None, None),
                bids: &[],
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            let f = parse_frame(c.text);
            let Ok(Frame::Depth(d)) = f else {
                panic!("TC{i}: {f:?}")
            };
            assert_eq!(
                (d.first_id, d.last_id, d.prev_last_id, d.transact_time),
                c.ids,
                "TC{i}"
            );
            assert_eq!(levels(d.bids()), c.bids, "TC{i}");
        }
    }

    #[test]
    fn control_frames_are_recognised() {
        type Check = fn(&Frame<'_>) -> bool;
        let cases: [(&str, Check); 6] = [
            // TC0: a SUBSCRIBE reply.
            (r#"{"result":null,"id":3}"#, |f| {
                matches!(f, Frame::Reply { id: 3 })
            }),
            // TC1: a LIST_SUBSCRIPTIONS reply.
            (r#"{"result":["btcusdt@trade"],"id":4}"#, |f| {
                matches!(f, Frame::Reply { id: 4 })
            }),
            // TC2: an error.
            (
                r#"{"code":2,"msg":"Invalid request: \"x\"","id":5}"#,
                |f| matches!(f, Frame::Error { code: 2, msg } if msg == "Invalid request: \"x\""),
            ),
            // TC3: the nested error form.
            (
                r#"{"error":{"code":-1,"msg":"m"},"id":6}"#,
                |f| matches!(f, Frame::Error { code: -1, msg } if msg == "m"),
            ),
            // TC4: serverShutdown without envelope.
            (r#"{"e":"serverShutdown","E":1}"#, |f| {
                matches!(f, Frame::ServerShutdown)
            }),
            // TC5: serverShutdown inside a combined-stream envelope.
            (
                r#"{"stream":"btcusdt@depth@100ms","data":{"e":"serverShutdown","E":1}}"#,
                |f| matches!(f, Frame::ServerShutdown),
            ),
        ];
        for (i, (text, ok)) in cases.iter().enumerate() {
            let f = parse_frame(text);
            assert!(f.as_ref().is_ok_and(ok), "TC{i}: {f:?}");
        }
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let malformed = [
            "not json",                                                               // TC0
            "[]",                                                                     // TC1
            "",                                                                       // TC2
            r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":"x"}}"#, // TC3
            r#"{"stream":"b@depth","data":{"e":"depthUpdate","E":1,"s":"B","U":1,"u":2,"b":{},"a":[]}}"#, // TC4: b not an array
            r#"{"stream":"b@depth","data":{"e":"depthUpdate","E":1,"s":"B","U":-1,"u":2,"b":[],"a":[]}}"#, // TC5: negative id
            r#"{"stream":"b@depth","data":{"e":"depthUpdate","E":1,"s":"B","U":1,"u":2,"u":3,"b":[],"a":[]}}"#, // TC6: repeated key
            r#"{"stream":"b@depth","data":{"e":"depthUpdate","E":1,"U":1,"u":2,"b":[],"a":[]}}"#, // TC7: no symbol
            r#"{"stream":"btcusdt@trade","data":{"e":"trade","s":"A\"B"}}"#, // TC8
            r#"{"stream":"b@trade","data":{"e":"trade","E":1,"s":"B","t":1,"p":"1","q":"1","T":1,"m":"no"}}"#, // TC9
            r#"{"stream":"b@depth","data":{"e":"depthUpdate"}"#, // TC10: truncated
            r#"{"result":null,"id":"x"}"#,                       // TC11
        ];
        for (i, text) in malformed.iter().enumerate() {
            let r = parse_frame(text);
            assert!(matches!(r, Err(WireError::Malformed(_))), "TC{i}: {r:?}");
        }
        let unknown = [
            r#"{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1}}"#, // TC0
            r#"{"stream":"!markPrice@arr","data":[{"e":"markPriceUpdate"}]}"#, // TC1
            r#"{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"B"}}"#,   // TC2: no e
            "{}",                                                          // TC3
            r#"{"id":1}"#, // TC4: neither result nor code
        ];
        for (i, text) in unknown.iter().enumerate() {
            let r = parse_frame(text);
            assert!(matches!(r, Err(WireError::Unknown(_))), "TC{i}: {r:?}");
        }
    }

    #[test]
    fn every_cut_and_byte_flip_of_real_frames_is_handled_without_panic() {
        let frames = [
            r#"{"stream":"sushiusdt@depth@100ms","data":{"e":"depthUpdate","E":1626992741037,"T":1626992741024,"s":"SUSHIUSDT","U":600859599090,"u":600859600917,"pu":600859598061,"b":[["7.5040","813"],["7.6090","0"]],"a":[["7.6150","1563"]]}}"#,
            r#"{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1786171884624,"a":3404749954,"s":"BTCUSDT","p":"64990.90","q":"0.002","nq":"0.002","f":7960913511,"l":7960913511,"T":1786171884471,"m":true,"st":1}}"#,
        ];
        for text in frames {
            let bytes = text.as_bytes();
            for cut in 0..bytes.len() {
                let _ = parse_frame(&text[..cut]);
                for b in [
                    b'"', b'[', b']', b'{', b'}', b',', b':', b'\\', b'0', b' ', b'x',
                ] {
                    let mut v = bytes.to_vec();
                    v[cut] = b;
                    let Ok(t) = std::str::from_utf8(&v) else {
                        continue;
                    };
                    if let Ok(Frame::Depth(d)) = parse_frame(t) {
                        d.bids().chain(d.asks()).for_each(drop);
                    }
                }
            }
        }
    }

    use crate::fuzzing::walk_levels as walk;

    /// Reads `text` both ways and checks they agree: the same error, or the same frame, whose
    /// read levels are exactly the raw arrays walked; a depth update is left raw only when a
    /// walk fails or it has more levels than the buffer holds. Whether it was read.
    fn agree(text: &str) -> bool {
        let mut buf = LevelBuf::new();
        match (parse_frame(text), parse_frame_reading(text, &mut buf)) {
            (Ok(Frame::Depth(raw)), Ok(Frame::Depth(one))) => {
                assert!(raw.read.is_none(), "{text}");
                assert_eq!(DepthUpdate { read: None, ..one }, raw, "{text}");
                match one.read {
                    Some(r) => {
                        assert_eq!(Some(r.bids.to_vec()), walk(one.bids), "bids of {text}");
                        assert_eq!(Some(r.asks.to_vec()), walk(one.asks), "asks of {text}");
                        true
                    }
                    None => {
                        let n = walk(one.bids).map(|l| l.len()).unwrap_or(0)
                            + walk(one.asks).map(|l| l.len()).unwrap_or(0);
                        assert!(
                            walk(one.bids).is_none()
                                || walk(one.asks).is_none()
                                || n > json::READ_LEVELS,
                            "left raw for no reason: {text}"
                        );
                        false
                    }
                }
            }
            (a, b) => {
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "{text}");
                false
            }
        }
    }

    #[test]
    fn the_one_pass_depth_reader_agrees_with_the_raw_walk() {
        let one = |b: &str, a: &str| {
            format!(
                r#"{{"stream":"btcusdt@depth@100ms","data":{{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":5,"u":7,"b":{b},"a":{a}}}}}"#
            )
        };
        // TC0: every captured diff, read in one pass, and every prefix of a few.
        if let Some(dir) = fixtures() {
            for file in [
                "binance_spot/NKNUSDT_depth100ms_diffs.jsonl",
                "binance_perpetual/SUSHIUSDT_depth100ms_diffs.jsonl",
            ] {
                let rows = rows(dir.join(file));
                let read = rows.iter().filter(|(_, raw)| agree(raw)).count();
                assert_eq!(read, rows.len(), "{file}");
                for (_, raw) in rows.iter().take(5) {
                    for cut in 0..raw.len() {
                        if let Some(prefix) = raw.get(..cut) {
                            agree(prefix);
                        }
                    }
                }
            }
        }
        // TC1: well-formed levels are read; an empty side too.
        assert!(agree(&one(r#"[["1.5","2"],["1.4","0"]]"#, "[]")));
        assert!(agree(&one(
            r#" [ [ "1.5" , "2" ] ] "#,
            r#"[["2","1","x"]]"#
        )));
        // TC2: levels a book refuses or arrays a walk fails on stay raw, with the same error
        // when the frame itself is malformed.
        for bad in [
            r#"[["-1","2"]]"#,
            r#"[["1","-2"]]"#,
            r#"[["x","2"]]"#,
            r#"[["1"]]"#,
            r#"[[1,"2"]]"#,
            r#"[["1","2"],]"#,
            r#"[["1","2"]"#,
            r#"[["1"","2"]]"#,
            r#"[["1","2"]]]"#,
            r#"{}"#,
            r#"[[]]"#,
            r#"[["1","2"] ["3","4"]]"#,
        ] {
            assert!(!agree(&one(bad, "[]")), "{bad}");
            assert!(!agree(&one("[]", bad)), "{bad}");
        }
        // TC3: a repeated side is malformed both ways.
        let twice = one(r#"[["1","2"]],"b":[["3","4"]]"#, "[]");
        assert!(matches!(parse_frame(&twice), Err(WireError::Malformed(_))));
        assert!(!agree(&twice));
        // TC4: more levels than the buffer holds: the rest stays raw, nothing dropped.
        let many = |n: usize| {
            let v: Vec<String> = (1..=n).map(|i| format!(r#"["{i}","1"]"#)).collect();
            format!("[{}]", v.join(","))
        };
        let half = json::READ_LEVELS / 2;
        assert!(agree(&one(&many(half), &many(half))));
        let over = one(&many(half), &many(half + 1));
        assert!(!agree(&over));
        let mut buf = LevelBuf::new();
        let Ok(Frame::Depth(d)) = parse_frame_reading(&over, &mut buf) else {
            panic!("over capacity still parses")
        };
        assert_eq!(walk(d.asks).map(|l| l.len()), Some(half + 1));
    }

    #[test]
    fn real_captured_frames_parse_to_their_variant() {
        let Some(dir) = fixtures() else { return };
        // TC0: every captured diff is a depth update with levels that scan.
        for (file, pu) in [
            ("binance_spot/NKNUSDT_depth100ms_diffs.jsonl", false),
            ("binance_perpetual/SUSHIUSDT_depth100ms_diffs.jsonl", true),
        ] {
            let rows = rows(dir.join(file));
            assert!(rows.len() > 100, "{file}");
            for (_, raw) in &rows {
                let Ok(Frame::Depth(d)) = parse_frame(raw) else {
                    panic!("{file}: {raw}")
                };
                assert_eq!(d.prev_last_id.is_some(), pu, "{raw}");
                assert!(d.first_id <= d.last_id, "{raw}");
                assert!(d.bids().chain(d.asks()).all(|l| l.is_ok()), "{raw}");
            }
        }
        // TC1: every captured aggTrade frame.
        for file in [
            "binance_spot/aggTrade_combined.jsonl",
            "binance_perpetual/aggTrade_combined_2021.jsonl",
        ] {
            for (_, raw) in rows(dir.join(file)) {
                assert!(
                    matches!(parse_frame(&raw), Ok(Frame::AggTrade(_))),
                    "{file}: {raw}"
                );
            }
        }
        // TC2: the single messages (2021–2026), by kind.
        for file in [
            "binance_spot/misc_single_messages.jsonl",
            "binance_perpetual/misc_single_messages.jsonl",
        ] {
            for (kind, raw) in rows(dir.join(file)) {
                let r = parse_frame(&raw);
                let ok = match kind.as_str() {
                    "aggTrade" => matches!(r, Ok(Frame::AggTrade(_))),
                    "trade" => matches!(r, Ok(Frame::Trade(_))),
                    "depthUpdate" => matches!(r, Ok(Frame::Depth(_))),
                    "markPrice" | "markPrice@1s" => matches!(r, Ok(Frame::MarkPrice(_))),
                    "forceOrder" | "forceOrder@arr" => matches!(r, Ok(Frame::ForceOrder(_))),
                    "markPrice@arr" | "kline" => matches!(r, Err(WireError::Unknown(_))),
                    k if k.starts_with("rest_depth") => DepthSnapshot::parse_str(&raw)
                        .is_ok_and(|s| s.bids().chain(s.asks()).count() == 6),
                    k if k.starts_with("rest_") => true,
                    other => panic!("{file}: a new kind {other:?}: {raw}"),
                };
                assert!(ok, "{file}: {kind}: {r:?}");
            }
        }
    }

    #[test]
    fn symbols_compare_and_spell_without_allocating() {
        let btc = Symbol::parse("BTC-USDT").expect("a valid symbol");
        let syms = [Symbol::parse("ETH-USDT").expect("a valid symbol"), btc];
        // TC0: both Binance spellings match; other symbols and splits do not.
        assert!(is_symbol("BTCUSDT", &btc) && is_symbol("btcusdt", &btc));
        assert!(!is_symbol("BTCUSDC", &btc) && !is_symbol("BTCUSDTX", &btc));
        assert!(!is_symbol("BTCUSD", &btc) && !is_symbol("", &btc));
        assert!(!is_symbol("BTCUSDé", &btc));
        // TC1: lookup among the configured symbols.
        assert_eq!(find_symbol("btcusdt", &syms), Some(1));
        assert_eq!(find_symbol("SOLUSDT", &syms), None);
        // TC2: spelling into a fixed buffer.
        let mut s = heapless::String::<16>::new();
        write_stream_symbol(&btc, &mut s).expect("the symbol fits");
        assert_eq!(s, "btcusdt");
        s.clear();
        write_rest_symbol(&btc, &mut s).expect("the symbol fits");
        assert_eq!(s, "BTCUSDT");
    }
}
