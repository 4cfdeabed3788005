//! Binance frames and REST bodies, parsed without copying.
//!
//! Design: combined-stream frames are `{"stream":"btcusdt@depth@100ms","data":{…}}`. The
//! envelope is read first with `data` kept raw; the stream name's suffix says which event
//! type `data` holds, so the payload is parsed once into its borrowed struct. Book levels stay
//! raw (`&RawValue`) and are walked by `venue::json::Levels` while they are applied. Unknown
//! keys are ignored: 2026 payloads carry undocumented `st`, `nq`, `ap`, `ps`. Frames without
//! an envelope (`serverShutdown`, replies to `SUBSCRIBE`, errors) are recognised by their keys.
//!
//! Owns: every Binance field name. Must not touch: book state or publishing.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::venue::json::Levels;

/// `depthUpdate` (spot: no `T`, `pu`).
#[derive(Debug, Deserialize)]
pub struct DepthUpdate<'a> {
    #[serde(rename = "E")]
    pub event_time: u64,
    #[serde(rename = "T", default)]
    pub transact_time: Option<u64>,
    #[serde(rename = "s", borrow)]
    pub symbol: &'a str,
    #[serde(rename = "U")]
    pub first_id: u64,
    #[serde(rename = "u")]
    pub last_id: u64,
    /// USD-M: the previous event's `u`.
    #[serde(rename = "pu", default)]
    pub prev_last_id: Option<u64>,
    #[serde(rename = "b", borrow)]
    pub bids: &'a RawValue,
    #[serde(rename = "a", borrow)]
    pub asks: &'a RawValue,
}

impl<'a> DepthUpdate<'a> {
    pub fn bids(&self) -> Levels<'a> {
        Levels::new(self.bids.get())
    }
    pub fn asks(&self) -> Levels<'a> {
        Levels::new(self.asks.get())
    }
}

/// REST depth snapshot (`/api/v3/depth`, `/fapi/v1/depth`).
#[derive(Debug, Deserialize)]
pub struct DepthSnapshot<'a> {
    #[serde(rename = "lastUpdateId")]
    pub last_update_id: u64,
    #[serde(rename = "E", default)]
    pub event_time: Option<u64>,
    #[serde(borrow)]
    pub bids: &'a RawValue,
    #[serde(borrow)]
    pub asks: &'a RawValue,
}

impl<'a> DepthSnapshot<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }
    pub fn bids(&self) -> Levels<'a> {
        Levels::new(self.bids.get())
    }
    pub fn asks(&self) -> Levels<'a> {
        Levels::new(self.asks.get())
    }
}

/// `trade`.
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
    #[serde(rename = "a")]
    pub id: u64,
    #[serde(rename = "p", borrow)]
    pub price: &'a str,
    #[serde(rename = "q", borrow)]
    pub qty: &'a str,
    #[serde(rename = "T")]
    pub trade_time: u64,
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
    /// `{"code":N,"msg":"…"}`: a request was refused.
    Error {
        code: i64,
        msg: String,
    },
    /// The server will close this connection soon.
    ServerShutdown,
}

/// A frame that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("frame of an unknown kind (stream {0:?})")]
    Unknown(String),
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    stream: Option<&'a str>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    msg: Option<String>,
    #[serde(rename = "e", borrow, default)]
    event: Option<&'a str>,
}

/// Which payload a stream name carries.
fn kind_of_stream(stream: &str) -> Option<&'static str> {
    let (_, tail) = stream.split_once('@')?;
    Some(match tail {
        t if t.starts_with("depth") => "depthUpdate",
        "trade" => "trade",
        "aggTrade" => "aggTrade",
        t if t.starts_with("markPrice") => "markPriceUpdate",
        "forceOrder" => "forceOrder",
        _ => return None,
    })
}

fn parse_event<'a>(kind: &str, raw: &'a str) -> Result<Frame<'a>, WireError> {
    Ok(match kind {
        "depthUpdate" => Frame::Depth(serde_json::from_str(raw)?),
        "trade" => Frame::Trade(serde_json::from_str(raw)?),
        "aggTrade" => Frame::AggTrade(serde_json::from_str(raw)?),
        "markPriceUpdate" => Frame::MarkPrice(serde_json::from_str(raw)?),
        "forceOrder" => Frame::ForceOrder(serde_json::from_str(raw)?),
        "serverShutdown" => Frame::ServerShutdown,
        other => return Err(WireError::Unknown(other.to_owned())),
    })
}

/// Parses one text frame. Never panics.
pub fn parse_frame(text: &str) -> Result<Frame<'_>, WireError> {
    let env: Envelope<'_> = serde_json::from_str(text)?;
    if let Some(data) = env.data {
        let kind = match env.stream.and_then(kind_of_stream) {
            Some(k) => k,
            None => {
                // No usable stream name: fall back to the event type inside.
                #[derive(Deserialize)]
                struct E<'a> {
                    #[serde(rename = "e", borrow)]
                    e: &'a str,
                }
                let e: E<'_> = serde_json::from_str(data.get())?;
                return parse_event(e.e, data.get()).map_err(|err| match err {
                    WireError::Unknown(_) => {
                        WireError::Unknown(env.stream.unwrap_or(e.e).to_owned())
                    }
                    other => other,
                });
            }
        };
        return parse_event(kind, data.get());
    }
    if let Some(event) = env.event {
        return parse_event(event, text);
    }
    if let Some(code) = env.code {
        return Ok(Frame::Error {
            code,
            msg: env.msg.unwrap_or_default(),
        });
    }
    if let Some(id) = env.id {
        return Ok(Frame::Reply { id });
    }
    Err(WireError::Unknown(env.stream.unwrap_or("").to_owned()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_depth_frames_parse_with_levels() {
        let f = parse_frame(
            r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":5,"u":7,"b":[["1.0","2"]],"a":[]}}"#,
        )
        .unwrap();
        let Frame::Depth(d) = f else { panic!("{f:?}") };
        assert_eq!(
            (d.symbol, d.first_id, d.last_id, d.prev_last_id),
            ("BTCUSDT", 5, 7, None)
        );
        assert_eq!(
            d.bids().collect::<Result<Vec<_>, _>>().unwrap(),
            [("1.0", "2")]
        );
    }

    #[test]
    fn usdm_depth_has_pu_and_extra_keys_are_ignored() {
        let f = parse_frame(
            r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"T":2,"s":"BTCUSDT","U":5,"u":7,"pu":4,"st":9,"b":[],"a":[]}}"#,
        )
        .unwrap();
        let Frame::Depth(d) = f else { panic!("{f:?}") };
        assert_eq!((d.prev_last_id, d.transact_time), (Some(4), Some(2)));
    }

    #[test]
    fn control_frames_are_recognised() {
        assert!(matches!(
            parse_frame(r#"{"result":null,"id":3}"#).unwrap(),
            Frame::Reply { id: 3 }
        ));
        assert!(matches!(
            parse_frame(r#"{"code":2,"msg":"Invalid request"}"#).unwrap(),
            Frame::Error { code: 2, .. }
        ));
        assert!(matches!(
            parse_frame(r#"{"e":"serverShutdown","E":1}"#).unwrap(),
            Frame::ServerShutdown
        ));
        assert!(matches!(
            parse_frame(r#"{"stream":"x","data":{"e":"serverShutdown","E":1}}"#).unwrap(),
            Frame::ServerShutdown
        ));
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        // TC: not JSON, wrong types, unknown streams, missing fields.
        assert!(matches!(
            parse_frame("not json"),
            Err(WireError::Malformed(_))
        ));
        assert!(parse_frame("[]").is_err());
        assert!(matches!(
            parse_frame(r#"{"stream":"btcusdt@kline_1m","data":{"e":"kline"}}"#),
            Err(WireError::Unknown(_))
        ));
        assert!(matches!(
            parse_frame(r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":"x"}}"#),
            Err(WireError::Malformed(_))
        ));
        assert!(parse_frame("{}").is_err());
        assert!(parse_frame(r#"{"stream":"btcusdt@trade","data":{"s":"A\"B"}}"#).is_err());
    }
}
