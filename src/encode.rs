//! Message encodings: JSON lines and postcard.
//!
//! Design: one reusable buffer per encoder; encoding a message writes into it and returns the
//! bytes, so the steady state allocates nothing once the buffer has grown to the largest
//! message. Postcard carries the same fields in the same order as JSON.
//!
//! JSON is written directly, not through serde: the keys are fixed, the enums' names are
//! constants, and a decimal's digits (ASCII digits, `.`, `-`) never need escaping, so the
//! writer appends them as they are and only strings that could hold anything (the message id,
//! a liquidation's status, the period) go through the escaper. The bytes are exactly what
//! `serde_json::to_writer` writes for [`Message`] (field order, compact form, decimals as
//! strings with the venue's digits, `null` for absent optional fields); a test compares the two
//! for every payload type. Postcard goes through serde (it is compact already).
//!
//! Owns: the byte form of `model::Message`. Must not touch: where bytes go.

use crate::book::BookSide;
use crate::book::texts::{LevelText, text_for};
use crate::config::Format;
use crate::decimal::Decimal;
use crate::model::{
    Data, FundingRateData, LiquidationData, LongShortRatioData, Message, OpenInterestData,
    OrderbookData, PubLevel, Side, TradeData,
};

/// Why a message could not be encoded (a bug, never input-driven: every field is bounded).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("postcard encoding failed: {0}")]
    Postcard(#[from] postcard::Error),
}

/// An encoder with its reusable buffer.
pub struct Encoder {
    format: Format,
    buf: Vec<u8>,
}

impl Encoder {
    pub fn new(format: Format) -> Self {
        Encoder {
            format,
            // Grows to the largest message encoded (an idle publisher costs nothing).
            buf: Vec::new(),
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// [`Encoder::encode`] for a book stream's message, reusing in JSON the text of the
    /// levels that did not change since the stream's last book ([`BookTexts`]).
    pub fn encode_book(
        &mut self,
        msg: &Message,
        texts: &mut BookTexts,
    ) -> Result<&[u8], EncodeError> {
        if self.format != Format::Json {
            return self.encode(msg);
        }
        self.buf.clear();
        write_json_with(msg, &mut self.buf, Some(texts));
        Ok(&self.buf)
    }

    /// Encodes one message (JSON without the trailing newline).
    pub fn encode(&mut self, msg: &Message) -> Result<&[u8], EncodeError> {
        self.buf.clear();
        match self.format {
            Format::Json => write_json(msg, &mut self.buf),
            Format::Postcard => {
                postcard::to_io(msg, &mut self.buf)?;
            }
        }
        Ok(&self.buf)
    }
}

/// Decodes a stream of length-prefixed postcard records (as `marketbox decode` reads them):
/// each record is a little-endian `u32` length and that many bytes.
pub fn decode_postcard(record: &[u8]) -> Result<Message, postcard::Error> {
    postcard::from_bytes(record)
}

/// Appends `msg` as compact JSON to `out`: the same bytes as `serde_json::to_writer`.
pub fn write_json(msg: &Message, out: &mut Vec<u8>) {
    write_json_with(msg, out, None);
}

/// [`write_json`], a book's levels through `texts` when given.
fn write_json_with(msg: &Message, out: &mut Vec<u8>, texts: Option<&mut BookTexts>) {
    out.extend_from_slice(b"{\"exchange\":\"");
    out.extend_from_slice(msg.exchange.as_str().as_bytes());
    out.extend_from_slice(b"\",\"market\":\"");
    out.extend_from_slice(msg.market.as_str().as_bytes());
    out.extend_from_slice(b"\",\"symbol\":");
    string(out, msg.symbol.as_str());
    out.extend_from_slice(b",\"channel\":\"");
    out.extend_from_slice(msg.channel.as_str().as_bytes());
    out.extend_from_slice(b"\",\"seq\":");
    uint(out, msg.seq);
    out.extend_from_slice(b",\"ts_exchange_ms\":");
    uint(out, msg.ts_exchange_ms);
    out.extend_from_slice(b",\"ts_local_ns\":");
    uint(out, msg.ts_local_ns);
    out.extend_from_slice(b",\"id\":");
    string(out, msg.id.as_str());
    out.extend_from_slice(b",\"data\":");
    match &msg.data {
        Data::Orderbook(d) => orderbook(out, d, texts),
        Data::Trade(d) => trade(out, d),
        Data::FundingRate(d) => funding_rate(out, d),
        Data::OpenInterest(d) => open_interest(out, d),
        Data::Liquidation(d) => liquidation(out, d),
        Data::LongShortRatio(d) => long_short_ratio(out, d),
    }
    out.push(b'}');
}

fn orderbook(out: &mut Vec<u8>, d: &OrderbookData, texts: Option<&mut BookTexts>) {
    out.extend_from_slice(b"{\"bids\":");
    match texts {
        Some(t) => {
            // Room for the deepest book at the first one, so no later message allocates.
            for v in t.kept.iter_mut().chain(t.next.iter_mut()) {
                if v.capacity() < crate::model::MAX_DEPTH {
                    v.reserve_exact(crate::model::MAX_DEPTH - v.len());
                }
            }
            let ([kb, ka], [nb, na]) = (&t.kept, &mut t.next);
            levels_reusing(out, &d.bids, BookSide::Bid, kb, nb);
            out.extend_from_slice(b",\"asks\":");
            levels_reusing(out, &d.asks, BookSide::Ask, ka, na);
            std::mem::swap(&mut t.kept, &mut t.next);
        }
        None => {
            levels(out, &d.bids);
            out.extend_from_slice(b",\"asks\":");
            levels(out, &d.asks);
        }
    }
    out.extend_from_slice(b",\"update_id\":");
    uint(out, d.update_id);
    out.push(b'}');
}

/// `[["price","qty"],…]`, each decimal written in place (see [`decimal`]).
fn levels(out: &mut Vec<u8>, levels: &[PubLevel]) {
    out.reserve(2 + levels.len() * LEVEL_MAX);
    out.push(b'[');
    for (i, (price, qty)) in levels.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        level(out, *price, *qty);
    }
    out.push(b']');
}

/// `["price","qty"]`, each decimal written in place.
fn level(out: &mut Vec<u8>, price: Decimal, qty: Decimal) {
    out.push(b'[');
    decimal(out, price);
    out.push(b',');
    decimal(out, qty);
    out.push(b']');
}

/// Longest `["price","qty"]` text [`BookTexts`] keeps (longer ones are written each time).
const LEVEL_TEXT_MAX: usize = 40;

/// How a level is written: `["price","qty"]`.
const LEVEL_FRAME: [&[u8]; 3] = [b"[\"", b"\",\"", b"\"]"];

type KeptLevel = LevelText<LEVEL_TEXT_MAX>;

/// One book stream's level texts ([`crate::book::texts`]): those of its last book, and the
/// ones being written, bids then asks.
#[derive(Debug, Default)]
pub struct BookTexts {
    kept: [Vec<KeptLevel>; 2],
    next: [Vec<KeptLevel>; 2],
}

/// [`levels`], copying the text of each level that `kept` (the stream's last book, the same
/// side) holds with the same digits (its price's text when only the size changed), and
/// recording every level's text in `next`.
fn levels_reusing(
    out: &mut Vec<u8>,
    levels: &[PubLevel],
    side: BookSide,
    kept: &[KeptLevel],
    next: &mut Vec<KeptLevel>,
) {
    next.clear();
    out.reserve(2 + levels.len() * LEVEL_MAX);
    out.push(b'[');
    let mut j = 0;
    for (i, &(price, qty)) in levels.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let t = text_for(kept, &mut j, side, price, qty, LEVEL_FRAME);
        match t.padded() {
            Some((bytes, n)) => {
                // All of it (a fixed-size copy, no call), then back to the text's end.
                let at = out.len();
                out.extend_from_slice(bytes);
                out.truncate(at + n);
            }
            None => level(out, price, qty),
        }
        next.push(t);
    }
    out.push(b']');
}

fn trade(out: &mut Vec<u8>, d: &TradeData) {
    out.extend_from_slice(b"{\"trade_id\":");
    uint(out, d.trade_id);
    out.extend_from_slice(b",\"price\":");
    decimal(out, d.price);
    out.extend_from_slice(b",\"qty\":");
    decimal(out, d.qty);
    out.extend_from_slice(b",\"side\":");
    side(out, d.side);
    out.push(b'}');
}

fn funding_rate(out: &mut Vec<u8>, d: &FundingRateData) {
    out.extend_from_slice(b"{\"funding_rate\":");
    decimal(out, d.funding_rate);
    out.extend_from_slice(b",\"funding_time_ms\":");
    uint(out, d.funding_time_ms);
    out.extend_from_slice(b",\"mark_price\":");
    opt_decimal(out, d.mark_price);
    out.extend_from_slice(b",\"index_price\":");
    opt_decimal(out, d.index_price);
    out.extend_from_slice(b",\"next_funding_rate\":");
    opt_decimal(out, d.next_funding_rate);
    out.push(b'}');
}

fn open_interest(out: &mut Vec<u8>, d: &OpenInterestData) {
    out.extend_from_slice(b"{\"open_interest\":");
    decimal(out, d.open_interest);
    out.extend_from_slice(b",\"open_interest_contracts\":");
    opt_decimal(out, d.open_interest_contracts);
    out.push(b'}');
}

fn liquidation(out: &mut Vec<u8>, d: &LiquidationData) {
    out.extend_from_slice(b"{\"side\":");
    side(out, d.side);
    out.extend_from_slice(b",\"price\":");
    decimal(out, d.price);
    out.extend_from_slice(b",\"qty\":");
    decimal(out, d.qty);
    out.extend_from_slice(b",\"avg_price\":");
    opt_decimal(out, d.avg_price);
    out.extend_from_slice(b",\"status\":");
    match &d.status {
        Some(s) => string(out, s.as_str()),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
}

fn long_short_ratio(out: &mut Vec<u8>, d: &LongShortRatioData) {
    out.extend_from_slice(b"{\"ratio\":");
    decimal(out, d.ratio);
    out.extend_from_slice(b",\"long\":");
    opt_decimal(out, d.long);
    out.extend_from_slice(b",\"short\":");
    opt_decimal(out, d.short);
    out.extend_from_slice(b",\"period\":");
    string(out, d.period.as_str());
    out.push(b'}');
}

fn side(out: &mut Vec<u8>, s: Side) {
    out.extend_from_slice(match s {
        Side::Buy => b"\"buy\"",
        Side::Sell => b"\"sell\"",
    });
}

fn uint(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn opt_decimal(out: &mut Vec<u8>, d: Option<Decimal>) {
    match d {
        Some(d) => decimal(out, d),
        None => out.extend_from_slice(b"null"),
    }
}

/// The longest decimal text a parsed decimal makes: a sign, `0.` and 19 digits (every parser
/// here stops at 19 digits).
const DECIMAL_MAX: usize = 22;
/// The longest level of parsed decimals: `,["…","…"]`.
const LEVEL_MAX: usize = 2 * (DECIMAL_MAX + 2) + 4;

/// A decimal as a JSON string with the venue's digits (what `Display` writes), written
/// straight into `out` by [`Decimal::write_ascii_at`]: digits, `.` and `-` need no escaping.
fn decimal(out: &mut Vec<u8>, d: Decimal) {
    // A sign, 20 integer digits, the point and the fraction: room for any decimal.
    let room = 22 + usize::from(d.scale());
    let start = out.len();
    out.resize(start + room + 2, 0);
    out[start] = b'"';
    let n = d.write_ascii_at(&mut out[start + 1..]);
    out[start + 1 + n] = b'"';
    out.truncate(start + n + 2);
}

/// A JSON string, escaped as serde_json escapes (`"`, `\`, and control characters; everything
/// else, UTF-8 included, as it is).
fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    if !bytes.iter().any(|&b| needs_escape(b)) {
        out.extend_from_slice(bytes);
    } else {
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if !needs_escape(b) {
                continue;
            }
            out.extend_from_slice(&bytes[start..i]);
            start = i + 1;
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\x08' => out.extend_from_slice(b"\\b"),
                b'\x0c' => out.extend_from_slice(b"\\f"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                _ => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 0xf)]);
                }
            }
        }
        out.extend_from_slice(&bytes[start..]);
    }
    out.push(b'"');
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Channel, Exchange, MAX_DEPTH, Market, MsgId, STATUS_MAX, Symbol, message_id,
    };

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).expect("a valid decimal")
    }

    fn base(channel: Channel, data: Data) -> Message {
        let symbol = Symbol::parse("BTC-USDT").expect("a valid symbol");
        Message {
            exchange: Exchange::Okx,
            market: Market::Perpetual,
            symbol,
            channel,
            seq: u64::MAX,
            ts_exchange_ms: 0,
            ts_local_ns: 1_764_050_000_125_000_000,
            id: message_id(Exchange::Okx, Market::Perpetual, symbol, channel, 42),
            data,
        }
    }

    fn serde(m: &Message) -> Vec<u8> {
        serde_json::to_vec(m).expect("serde_json encodes every message")
    }

    fn ours(m: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        write_json(m, &mut out);
        out
    }

    /// Every payload type, with every optional field present and absent, and the edge values
    /// of decimals (zero, negative, all-fraction, no fraction, the most digits).
    fn every_payload() -> Vec<Message> {
        let decimals = [
            "0",
            "0.0",
            "0.00000001",
            "-0.5",
            "-123.456",
            "87012.34000000",
            "999999999999999999",
            "0.999999999999999999",
            "100",
        ];
        let mut book = OrderbookData {
            bids: heapless::Vec::new(),
            asks: heapless::Vec::new(),
            update_id: u64::MAX,
        };
        for (i, p) in decimals.iter().enumerate() {
            let q = decimals[decimals.len() - 1 - i];
            book.bids.push((d(p), d(q))).expect("room");
            book.asks.push((d(q), d(p))).expect("room");
        }
        let mut full = book.clone();
        while full.bids.len() < MAX_DEPTH {
            full.bids.push((d("1.5"), d("2"))).expect("room");
            full.asks.push((d("2.5"), d("3"))).expect("room");
        }
        let empty = OrderbookData {
            bids: heapless::Vec::new(),
            asks: heapless::Vec::new(),
            update_id: 0,
        };
        let status = |s: &str| Some(heapless::String::<STATUS_MAX>::try_from(s).expect("fits"));
        let period = |s: &str| heapless::String::<4>::try_from(s).expect("fits");
        let mut out = vec![
            base(Channel::Orderbook, Data::Orderbook(book)),
            base(Channel::Orderbook, Data::Orderbook(full)),
            base(Channel::Orderbook, Data::Orderbook(empty)),
        ];
        for (i, p) in decimals.iter().enumerate() {
            let side = if i % 2 == 0 { Side::Buy } else { Side::Sell };
            let some = |on: bool| on.then(|| d(p));
            out.push(base(
                Channel::Trade,
                Data::Trade(TradeData {
                    trade_id: i as u64,
                    price: d(p),
                    qty: d(decimals[(i + 3) % decimals.len()]),
                    side,
                }),
            ));
            out.push(base(
                Channel::FundingRate,
                Data::FundingRate(FundingRateData {
                    funding_rate: d(p),
                    funding_time_ms: u64::MAX - i as u64,
                    mark_price: some(i % 2 == 0),
                    index_price: some(i % 3 == 0),
                    next_funding_rate: some(i % 2 == 1),
                }),
            ));
            out.push(base(
                Channel::OpenInterest,
                Data::OpenInterest(OpenInterestData {
                    open_interest: d(p),
                    open_interest_contracts: some(i % 2 == 0),
                }),
            ));
            out.push(base(
                Channel::Liquidation,
                Data::Liquidation(LiquidationData {
                    side,
                    price: d(p),
                    qty: d(p),
                    avg_price: some(i % 2 == 1),
                    status: if i % 2 == 0 { status("FILLED") } else { None },
                }),
            ));
            out.push(base(
                Channel::LsrTopPosition,
                Data::LongShortRatio(LongShortRatioData {
                    ratio: d(p),
                    long: some(i % 2 == 0),
                    short: some(i % 2 == 1),
                    period: period(["5m", "1h", "1d", "12h"][i % 4]),
                }),
            ));
        }
        // Strings that need escaping, where a string field could hold them.
        let mut odd = base(
            Channel::Liquidation,
            Data::Liquidation(LiquidationData {
                side: Side::Sell,
                price: d("1"),
                qty: d("2"),
                avg_price: None,
                status: status("a\"b\\c\n\t\r\u{8}\u{c}\u{1}\u{1f}é\u{7f}"),
            }),
        );
        odd.id = MsgId::try_from("id with \"quotes\" and \\ and \u{0}").expect("fits");
        out.push(odd);
        out
    }

    #[test]
    fn the_json_writer_writes_exactly_what_serde_json_writes_for_every_payload() {
        for m in every_payload() {
            let (want, got) = (serde(&m), ours(&m));
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want),
                "{m:?}"
            );
            // And it reads back as the same message.
            let back: Message = serde_json::from_slice(&got).expect("valid JSON");
            assert_eq!(back, m);
        }
    }

    #[test]
    fn a_book_stream_writes_the_same_bytes_reusing_level_texts() {
        // A book walked through random changes near its top (new levels, new sizes, the
        // same price written with other digits, levels too long to keep, sides emptied),
        // encoded through the stream's texts after each: exactly what the plain writer
        // writes, and so what serde writes. A second stream's texts start empty.
        let mut rng = fastrand::Rng::with_seed(20);
        let mut e = Encoder::new(Format::Json);
        let mut texts = BookTexts::default();
        let mut bids: Vec<(i64, u8)> = Vec::new();
        let mut asks: Vec<(i64, u8)> = Vec::new();
        let qty = |rng: &mut fastrand::Rng| match rng.u8(..8) {
            0 => Decimal::new(rng.i64(1..1_000_000_000_000_000_000), 18),
            _ => Decimal::new(rng.i64(1..5000), rng.u8(0..4)),
        };
        let mut sizes: std::collections::BTreeMap<(bool, (i64, u8)), Decimal> =
            std::collections::BTreeMap::new();
        for step in 0..5000 {
            for _ in 0..rng.usize(1..6) {
                // Prices in tenths: bids below 1000, asks above; the digits of a price
                // change now and then ("999.5" and "999.50").
                let bid = rng.bool();
                let tick = rng.i64(0..40);
                let px = if bid { 9_995 - tick } else { 10_005 + tick };
                let digits = if rng.u8(..6) == 0 {
                    (px * 10, 2)
                } else {
                    (px, 1)
                };
                let side = if bid { &mut bids } else { &mut asks };
                side.retain(|p| Decimal::new(p.0, p.1) != Decimal::new(digits.0, digits.1));
                if rng.u8(..3) > 0 {
                    side.push(digits);
                    // Now and then the same size with another trailing zero ("5" and "5.0").
                    let q = match sizes.get(&(bid, digits)) {
                        Some(old) if rng.u8(..3) == 0 => old
                            .mantissa()
                            .checked_mul(10)
                            .map_or(*old, |m| Decimal::new(m, old.scale() + 1)),
                        _ => qty(&mut rng),
                    };
                    sizes.insert((bid, digits), q);
                }
            }
            bids.sort_by(|a, b| Decimal::new(b.0, b.1).cmp(&Decimal::new(a.0, a.1)));
            asks.sort_by(|a, b| Decimal::new(a.0, a.1).cmp(&Decimal::new(b.0, b.1)));
            let side = |v: &[(i64, u8)], bid: bool| {
                let mut out = heapless::Vec::new();
                for p in v.iter().take(20) {
                    let q = sizes.get(&(bid, *p)).copied().unwrap_or(Decimal::ZERO);
                    out.push((Decimal::new(p.0, p.1), q)).expect("room");
                }
                out
            };
            let m = base(
                Channel::Orderbook,
                Data::Orderbook(OrderbookData {
                    bids: side(&bids, true),
                    asks: side(&asks, false),
                    update_id: step,
                }),
            );
            let want = String::from_utf8_lossy(&ours(&m)).into_owned();
            let got = e.encode_book(&m, &mut texts).expect("encodes").to_vec();
            assert_eq!(String::from_utf8_lossy(&got), want, "step {step}");
            if step % 1000 == 0 {
                assert_eq!(ours(&m), serde(&m), "step {step}");
                let mut fresh = BookTexts::default();
                let got = e.encode_book(&m, &mut fresh).expect("encodes").to_vec();
                assert_eq!(String::from_utf8_lossy(&got), want, "a fresh stream");
            }
        }
    }

    #[test]
    fn decimals_are_written_with_the_venues_digits() {
        // TC0..: random mantissas and scales against `Display` (what serde writes).
        let mut rng = fastrand::Rng::with_seed(16);
        for _ in 0..20_000 {
            let mantissa = match rng.u8(..4) {
                0 => rng.i64(..),
                1 => rng.i64(-1000..1000),
                2 => *[i64::MIN + 1, i64::MAX, 0, -1, 1]
                    .get(rng.usize(..5))
                    .unwrap_or(&0),
                _ => rng.i64(-999_999_999_999_999_999..=999_999_999_999_999_999),
            };
            let v = Decimal::new(mantissa, rng.u8(..=24));
            let mut out = Vec::new();
            decimal(&mut out, v);
            assert_eq!(
                out,
                format!("\"{v}\"").into_bytes(),
                "{mantissa} {}",
                v.scale()
            );
            // And inside a level, as books write them.
            out.clear();
            levels(&mut out, &[(v, v), (v, Decimal::ZERO)]);
            assert_eq!(
                out,
                format!("[[\"{v}\",\"{v}\"],[\"{v}\",\"0\"]]").into_bytes()
            );
        }
    }

    #[test]
    fn the_encoder_reuses_its_buffer_and_postcard_still_goes_through_serde() {
        let m = every_payload().remove(1);
        let mut e = Encoder::new(Format::Json);
        assert_eq!(e.encode(&m).expect("encodes"), serde(&m).as_slice());
        let cap = e.buf.capacity();
        assert_eq!(e.encode(&m).expect("encodes"), serde(&m).as_slice());
        assert_eq!(e.buf.capacity(), cap);
        let mut p = Encoder::new(Format::Postcard);
        let bytes = p.encode(&m).expect("encodes").to_vec();
        assert_eq!(decode_postcard(&bytes).expect("decodes"), m);
    }
}
