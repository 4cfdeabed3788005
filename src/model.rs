//! Normalized names and messages shared by every stage.
//!
//! Owns: the enums that name exchanges, markets and channels (also used as metric label values,
//! which keeps the number of series bounded), the venue-neutral `Symbol` (`BASE-QUOTE`), and the
//! normalized output message. Must not touch: any venue's wire spelling (`btcusdt`,
//! `BTC-USDT-SWAP`); that mapping lives in `venue/<name>/`.

use std::fmt;

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use serde::{Deserialize, Serialize};

use crate::decimal::Decimal;

/// An exchange marketbox collects from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Exchange {
    Binance,
    Okx,
}

impl Exchange {
    pub const ALL: [Exchange; 2] = [Exchange::Binance, Exchange::Okx];

    pub fn as_str(self) -> &'static str {
        match self {
            Exchange::Binance => "binance",
            Exchange::Okx => "okx",
        }
    }
}

/// A market of an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Market {
    Spot,
    /// Perpetual swaps: Binance USD-M, OKX USDT-margined SWAP.
    Perpetual,
}

impl Market {
    pub fn as_str(self) -> &'static str {
        match self {
            Market::Spot => "spot",
            Market::Perpetual => "perpetual",
        }
    }
}

/// The seven normalized channels. The names are part of the output contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Orderbook,
    Trade,
    FundingRate,
    OpenInterest,
    Liquidation,
    LsrTopPosition,
    LsrAllAccount,
}

impl Channel {
    pub const ALL: [Channel; 7] = [
        Channel::Orderbook,
        Channel::Trade,
        Channel::FundingRate,
        Channel::OpenInterest,
        Channel::Liquidation,
        Channel::LsrTopPosition,
        Channel::LsrAllAccount,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Orderbook => "orderbook",
            Channel::Trade => "trade",
            Channel::FundingRate => "funding_rate",
            Channel::OpenInterest => "open_interest",
            Channel::Liquidation => "liquidation",
            Channel::LsrTopPosition => "lsr_top_position",
            Channel::LsrAllAccount => "lsr_all_account",
        }
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(Exchange, Market, Channel);

macro_rules! label_as_str {
    ($($t:ty),*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
                EncodeLabelValue::encode(&self.as_str(), encoder)
            }
        }
    )*};
}
label_as_str!(Exchange, Market, Channel);

/// Longest `BASE-QUOTE` symbol accepted (venue symbols are far shorter).
pub const SYMBOL_MAX: usize = 24;

/// A venue-neutral symbol, `BASE-QUOTE` in upper case (`BTC-USDT`). Fixed capacity, `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Symbol {
    bytes: [u8; SYMBOL_MAX],
    len: u8,
    dash: u8,
}

/// Why a symbol was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SymbolError {
    #[error("symbol {0:?} must be BASE-QUOTE with one dash, e.g. \"BTC-USDT\"")]
    Shape(String),
    #[error("symbol {0:?} may hold only upper-case letters and digits around the dash")]
    Characters(String),
    #[error("symbol {0:?} is longer than {SYMBOL_MAX} characters")]
    TooLong(String),
}

impl Symbol {
    /// Parses `BASE-QUOTE` (upper-case ASCII letters and digits on each side).
    pub fn parse(s: &str) -> Result<Self, SymbolError> {
        if s.len() > SYMBOL_MAX {
            return Err(SymbolError::TooLong(s.to_owned()));
        }
        let mut parts = s.split('-');
        let (Some(base), Some(quote), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SymbolError::Shape(s.to_owned()));
        };
        if base.is_empty() || quote.is_empty() {
            return Err(SymbolError::Shape(s.to_owned()));
        }
        let ok = |p: &str| {
            p.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        };
        if !ok(base) || !ok(quote) {
            return Err(SymbolError::Characters(s.to_owned()));
        }
        let mut bytes = [0u8; SYMBOL_MAX];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Ok(Symbol {
            bytes,
            len: s.len() as u8,
            dash: base.len() as u8,
        })
    }

    /// Builds a symbol from its two halves (used by venue code when mapping back).
    pub fn from_parts(base: &str, quote: &str) -> Result<Self, SymbolError> {
        let mut buf = [0u8; SYMBOL_MAX + 1];
        let total = base.len() + 1 + quote.len();
        if total > SYMBOL_MAX {
            return Err(SymbolError::TooLong(format!("{base}-{quote}")));
        }
        buf[..base.len()].copy_from_slice(base.as_bytes());
        buf[base.len()] = b'-';
        buf[base.len() + 1..total].copy_from_slice(quote.as_bytes());
        let s = std::str::from_utf8(&buf[..total])
            .map_err(|_| SymbolError::Characters(String::from_utf8_lossy(&buf[..total]).into()))?;
        Symbol::parse(s)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (checked in `parse`).
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }

    pub fn base(&self) -> &str {
        &self.as_str()[..self.dash as usize]
    }

    pub fn quote(&self) -> &str {
        &self.as_str()[self.dash as usize + 1..]
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Symbol({})", self.as_str())
    }
}

impl Serialize for Symbol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Symbol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Symbol::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Which side of the book a taker hit, or a liquidation's order side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Buy,
    Sell,
}

/// Most levels per side an `orderbook` message can carry (the config's `depth` is at most this).
pub const MAX_DEPTH: usize = 50;

/// One price level as published: `[price, qty]`.
pub type PubLevel = (Decimal, Decimal);

/// `orderbook` payload: best first on both sides, at most `depth` levels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderbookData {
    pub bids: heapless::Vec<PubLevel, MAX_DEPTH>,
    pub asks: heapless::Vec<PubLevel, MAX_DEPTH>,
    pub update_id: u64,
}

/// `trade` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TradeData {
    pub trade_id: u64,
    pub price: Decimal,
    pub qty: Decimal,
    /// The taker's side.
    pub side: Side,
}

/// `funding_rate` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FundingRateData {
    /// The current (predicted) funding rate.
    pub funding_rate: Decimal,
    /// When that rate is applied (ms since the epoch).
    pub funding_time_ms: u64,
    /// Mark price, where the venue sends it with the rate (Binance).
    pub mark_price: Option<Decimal>,
    /// Index price, where the venue sends it with the rate (Binance).
    pub index_price: Option<Decimal>,
    /// The rate after this one, where the venue predicts it (OKX).
    pub next_funding_rate: Option<Decimal>,
}

/// `open_interest` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenInterestData {
    /// Open interest in the base asset (BTC for BTC-USDT).
    pub open_interest: Decimal,
    /// Open interest in contracts, where the venue counts in contracts (OKX).
    pub open_interest_contracts: Option<Decimal>,
}

/// Longest order status string kept (`FILLED`, `PARTIALLY_FILLED`).
pub const STATUS_MAX: usize = 24;

/// `liquidation` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LiquidationData {
    /// Side of the liquidation order (`sell` liquidates a long).
    pub side: Side,
    pub price: Decimal,
    pub qty: Decimal,
    /// Average fill price, where the venue sends it (Binance).
    pub avg_price: Option<Decimal>,
    /// Order status, where the venue sends it (Binance: `FILLED`, …).
    pub status: Option<heapless::String<STATUS_MAX>>,
}

/// `lsr_top_position` and `lsr_all_account` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LongShortRatioData {
    /// Longs divided by shorts.
    pub ratio: Decimal,
    /// Share of longs, where the venue sends it (Binance).
    pub long: Option<Decimal>,
    /// Share of shorts, where the venue sends it (Binance).
    pub short: Option<Decimal>,
    /// The statistics period (`5m`, `1h`, …).
    pub period: heapless::String<4>,
}

/// The channel-specific part of a message. In JSON it is the bare object (the `channel` field
/// says what it is); in postcard it carries its variant index so it can be decoded.
// Orderbook is the common case and must not box (no allocation per message).
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    Orderbook(OrderbookData),
    Trade(TradeData),
    FundingRate(FundingRateData),
    OpenInterest(OpenInterestData),
    Liquidation(LiquidationData),
    LongShortRatio(LongShortRatioData),
}

/// JSON form: the bare payload; variants are told apart by their required fields.
#[allow(clippy::large_enum_variant)]
#[derive(Deserialize)]
#[serde(untagged)]
enum DataUntagged {
    Orderbook(OrderbookData),
    Trade(TradeData),
    FundingRate(FundingRateData),
    OpenInterest(OpenInterestData),
    LongShortRatio(LongShortRatioData),
    Liquidation(LiquidationData),
}

/// Postcard form: tagged by variant index.
#[derive(Serialize)]
enum DataTaggedRef<'a> {
    Orderbook(&'a OrderbookData),
    Trade(&'a TradeData),
    FundingRate(&'a FundingRateData),
    OpenInterest(&'a OpenInterestData),
    Liquidation(&'a LiquidationData),
    LongShortRatio(&'a LongShortRatioData),
}

#[allow(clippy::large_enum_variant)]
#[derive(Deserialize)]
enum DataTagged {
    Orderbook(OrderbookData),
    Trade(TradeData),
    FundingRate(FundingRateData),
    OpenInterest(OpenInterestData),
    Liquidation(LiquidationData),
    LongShortRatio(LongShortRatioData),
}

impl Serialize for Data {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            match self {
                Data::Orderbook(d) => d.serialize(s),
                Data::Trade(d) => d.serialize(s),
                Data::FundingRate(d) => d.serialize(s),
                Data::OpenInterest(d) => d.serialize(s),
                Data::Liquidation(d) => d.serialize(s),
                Data::LongShortRatio(d) => d.serialize(s),
            }
        } else {
            match self {
                Data::Orderbook(d) => DataTaggedRef::Orderbook(d),
                Data::Trade(d) => DataTaggedRef::Trade(d),
                Data::FundingRate(d) => DataTaggedRef::FundingRate(d),
                Data::OpenInterest(d) => DataTaggedRef::OpenInterest(d),
                Data::Liquidation(d) => DataTaggedRef::Liquidation(d),
                Data::LongShortRatio(d) => DataTaggedRef::LongShortRatio(d),
            }
            .serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            Ok(match DataUntagged::deserialize(d)? {
                DataUntagged::Orderbook(v) => Data::Orderbook(v),
                DataUntagged::Trade(v) => Data::Trade(v),
                DataUntagged::FundingRate(v) => Data::FundingRate(v),
                DataUntagged::OpenInterest(v) => Data::OpenInterest(v),
                DataUntagged::Liquidation(v) => Data::Liquidation(v),
                DataUntagged::LongShortRatio(v) => Data::LongShortRatio(v),
            })
        } else {
            Ok(match DataTagged::deserialize(d)? {
                DataTagged::Orderbook(v) => Data::Orderbook(v),
                DataTagged::Trade(v) => Data::Trade(v),
                DataTagged::FundingRate(v) => Data::FundingRate(v),
                DataTagged::OpenInterest(v) => Data::OpenInterest(v),
                DataTagged::Liquidation(v) => Data::Liquidation(v),
                DataTagged::LongShortRatio(v) => Data::LongShortRatio(v),
            })
        }
    }
}

/// The normalized output message. Field order is the contract (JSON and postcard alike):
/// `exchange, market, symbol, channel, seq, ts_exchange_ms, ts_local_ns, id, data`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub exchange: Exchange,
    pub market: Market,
    pub symbol: Symbol,
    pub channel: Channel,
    /// Per-stream (exchange, market, symbol, channel) sequence number, from 1, no gaps.
    pub seq: u64,
    pub ts_exchange_ms: u64,
    pub ts_local_ns: u64,
    /// Deterministic id from venue data (trade id, update id), for JetStream de-duplication.
    pub id: MsgId,
    pub data: Data,
}

/// Longest message id.
pub const ID_MAX: usize = 96;

/// A message id: `<exchange>.<market>.<symbol>.<channel>.<venue id>`.
pub type MsgId = heapless::String<ID_MAX>;

/// Builds the deterministic id of a message from its stream and a venue-given number.
pub fn message_id(
    exchange: Exchange,
    market: Market,
    symbol: Symbol,
    channel: Channel,
    venue_id: u64,
) -> MsgId {
    let mut id = MsgId::new();
    // Capacity covers the longest combination (ID_MAX > 7 + 9 + 24 + 16 + 20 + 4 separators),
    // so no push can fail.
    for part in [
        exchange.as_str(),
        ".",
        market.as_str(),
        ".",
        symbol.as_str(),
        ".",
        channel.as_str(),
        ".",
        itoa::Buffer::new().format(venue_id),
    ] {
        let _ = id.push_str(part);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        let d = |s| Decimal::parse(s).expect("a valid decimal");
        let mut bids = heapless::Vec::new();
        bids.push((d("27000.10"), d("0.500")))
            .expect("room for the level");
        Message {
            exchange: Exchange::Binance,
            market: Market::Spot,
            symbol: Symbol::parse("BTC-USDT").expect("a valid symbol"),
            channel: Channel::Orderbook,
            seq: 3,
            ts_exchange_ms: 1_700_000_000_000,
            ts_local_ns: 1_700_000_000_000_000_001,
            id: message_id(
                Exchange::Binance,
                Market::Spot,
                Symbol::parse("BTC-USDT").expect("a valid symbol"),
                Channel::Orderbook,
                42,
            ),
            data: Data::Orderbook(OrderbookData {
                bids,
                asks: heapless::Vec::new(),
                update_id: 42,
            }),
        }
    }

    #[test]
    fn json_has_the_contract_fields_in_order_with_string_decimals() {
        let json = serde_json::to_string(&sample()).expect("serializes to JSON");
        assert_eq!(
            json,
            "{\"exchange\":\"binance\",\"market\":\"spot\",\"symbol\":\"BTC-USDT\",\"channel\":\"orderbook\",\"seq\":3,\"ts_exchange_ms\":1700000000000,\"ts_local_ns\":1700000000000000001,\"id\":\"binance.spot.BTC-USDT.orderbook.42\",\"data\":{\"bids\":[[\"27000.10\",\"0.500\"]],\"asks\":[],\"update_id\":42}}"
        );
        let back: Message = serde_json::from_str(&json).expect("deserializes from JSON");
        assert_eq!(back, sample());
    }

    #[test]
    fn every_payload_roundtrips_through_json_and_postcard() {
        let d = |s| Decimal::parse(s).expect("a valid decimal");
        let payloads = [
            Data::Trade(TradeData {
                trade_id: 9,
                price: d("1.5"),
                qty: d("2"),
                side: Side::Sell,
            }),
            Data::FundingRate(FundingRateData {
                funding_rate: d("0.0001"),
                funding_time_ms: 5,
                mark_price: Some(d("100.1")),
                index_price: None,
                next_funding_rate: None,
            }),
            Data::OpenInterest(OpenInterestData {
                open_interest: d("10659.509"),
                open_interest_contracts: None,
            }),
            Data::Liquidation(LiquidationData {
                side: Side::Buy,
                price: d("9"),
                qty: d("1"),
                avg_price: None,
                status: Some(heapless::String::try_from("FILLED").expect("fits the capacity")),
            }),
            Data::LongShortRatio(LongShortRatioData {
                ratio: d("1.2"),
                long: Some(d("0.55")),
                short: Some(d("0.45")),
                period: heapless::String::try_from("5m").expect("fits the capacity"),
            }),
        ];
        for data in payloads {
            let mut m = sample();
            m.data = data;
            let json = serde_json::to_string(&m).expect("serializes to JSON");
            assert_eq!(
                serde_json::from_str::<Message>(&json).expect("deserializes from JSON"),
                m,
                "{json}"
            );
            let bytes = postcard::to_allocvec(&m).expect("encodes with postcard");
            assert_eq!(
                postcard::from_bytes::<Message>(&bytes).expect("decodes with postcard"),
                m
            );
        }
    }

    #[test]
    fn postcard_roundtrips() {
        let bytes = postcard::to_allocvec(&sample()).expect("encodes with postcard");
        let back: Message = postcard::from_bytes(&bytes).expect("decodes with postcard");
        assert_eq!(back, sample());
    }

    #[test]
    fn symbol_parses_base_quote_and_refuses_other_shapes() {
        let s = Symbol::parse("BTC-USDT").expect("a valid symbol");
        assert_eq!(
            (s.base(), s.quote(), s.as_str()),
            ("BTC", "USDT", "BTC-USDT")
        );
        assert_eq!(
            Symbol::from_parts("ETH", "USDT").expect("a valid symbol"),
            Symbol::parse("ETH-USDT").expect("a valid symbol")
        );
        for bad in [
            "btc-usdt",
            "BTCUSDT",
            "BTC-USDT-SWAP",
            "-USDT",
            "BTC-",
            "BTC_USDT",
            "",
        ] {
            assert!(Symbol::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(matches!(
            Symbol::parse(&"A".repeat(30)),
            Err(SymbolError::TooLong(_))
        ));
    }

    #[test]
    fn channel_names_are_the_contract() {
        let names: Vec<_> = Channel::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "orderbook",
                "trade",
                "funding_rate",
                "open_interest",
                "liquidation",
                "lsr_top_position",
                "lsr_all_account"
            ]
        );
    }

    #[test]
    fn message_id_names_the_stream_and_venue_id() {
        let id = message_id(
            Exchange::Binance,
            Market::Perpetual,
            Symbol::parse("BTC-USDT").expect("a valid symbol"),
            Channel::LsrAllAccount,
            u64::MAX,
        );
        assert_eq!(
            id.as_str(),
            "binance.perpetual.BTC-USDT.lsr_all_account.18446744073709551615"
        );
    }
}
