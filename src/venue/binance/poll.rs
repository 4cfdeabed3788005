//! Binance USD-M REST pollers: `open_interest`, `lsr_top_position`, `lsr_all_account`.
//!
//! Owns: the REST paths, weights and body shapes of these three endpoints; the polling loop
//! itself is venue-neutral (`session::poll`).

use std::time::Duration;

use serde::Deserialize;

use super::rest_symbol;
use crate::book::Decimal;
use crate::config::Config;
use crate::model::{Channel, Data, Exchange, LongShortRatioData, Market, OpenInterestData};
use crate::session::poll::{Parser, PollError, Polled, PollerSpec};
use crate::session::rest::RateSpec;

/// `GET /fapi/v1/openInterest` body.
#[derive(Debug, Deserialize)]
struct OpenInterest<'a> {
    #[serde(rename = "openInterest", borrow)]
    open_interest: &'a str,
    time: u64,
}

/// A timestamp the venue writes as a number or a string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Millis<'a> {
    Number(u64),
    Text(&'a str),
}

impl Millis<'_> {
    fn get(&self) -> Option<u64> {
        match self {
            Millis::Number(n) => Some(*n),
            Millis::Text(s) => s.parse().ok(),
        }
    }
}

/// One row of `/futures/data/*LongShort*Ratio`.
#[derive(Debug, Deserialize)]
struct RatioRow<'a> {
    #[serde(rename = "longShortRatio", borrow)]
    ratio: &'a str,
    #[serde(rename = "longAccount", borrow, default)]
    long: Option<&'a str>,
    #[serde(rename = "shortAccount", borrow, default)]
    short: Option<&'a str>,
    #[serde(borrow)]
    timestamp: Millis<'a>,
}

fn dec(field: &'static str, value: &str) -> Result<Decimal, PollError> {
    Decimal::parse(value).map_err(|_| PollError::Decimal {
        field,
        value: value.to_owned(),
    })
}

/// Parses an open-interest body.
pub fn parse_open_interest(body: &[u8], _period: &str) -> Result<Polled, PollError> {
    let oi: OpenInterest<'_> =
        serde_json::from_slice(body).map_err(|e| PollError::Body(e.to_string()))?;
    Ok(Polled::Point {
        ts_ms: oi.time,
        data: Data::OpenInterest(OpenInterestData {
            open_interest: dec("openInterest", oi.open_interest)?,
            open_interest_contracts: None,
        }),
    })
}

/// Parses a long/short ratio body (`limit=1`: the latest period).
pub fn parse_ratio(body: &[u8], period: &str) -> Result<Polled, PollError> {
    let rows: Vec<RatioRow<'_>> =
        serde_json::from_slice(body).map_err(|e| PollError::Body(e.to_string()))?;
    let Some(row) = rows.iter().max_by_key(|r| r.timestamp.get().unwrap_or(0)) else {
        return Ok(Polled::Empty);
    };
    let ts_ms = row
        .timestamp
        .get()
        .ok_or_else(|| PollError::Body(format!("timestamp {:?} is not a number", row.timestamp)))?;
    Ok(Polled::Point {
        ts_ms,
        data: Data::LongShortRatio(LongShortRatioData {
            ratio: dec("longShortRatio", row.ratio)?,
            long: row.long.map(|v| dec("longAccount", v)).transpose()?,
            short: row.short.map(|v| dec("shortAccount", v)).transpose()?,
            period: heapless::String::try_from(period).unwrap_or_default(),
        }),
    })
}

/// USD-M request weight: 2400 per minute per IP, half of it ours (shared with snapshots).
const USDM_WEIGHT: RateSpec = RateSpec {
    bucket: "weight",
    capacity: 1200,
    window: Duration::from_secs(60),
};

/// Open interest changes continuously; ratios once per period (polled well inside it).
const OPEN_INTEREST_EVERY: Duration = Duration::from_secs(10);
const RATIO_EVERY: Duration = Duration::from_secs(60);

/// The pollers a config asks for (Binance USD-M only: spot has none of these channels).
pub fn pollers(cfg: &Config) -> Vec<PollerSpec> {
    let mut out = Vec::new();
    for feed in cfg
        .feeds()
        .filter(|f| f.exchange == Exchange::Binance && f.market == Market::Perpetual)
    {
        let period = feed.lsr_period.as_str();
        for symbol in &feed.symbols {
            let s = rest_symbol(symbol);
            for &channel in &feed.channels {
                let (path, interval, parse): (String, Duration, Parser) = match channel {
                    Channel::OpenInterest => (
                        format!("/fapi/v1/openInterest?symbol={s}"),
                        OPEN_INTEREST_EVERY,
                        parse_open_interest,
                    ),
                    Channel::LsrTopPosition => (
                        format!(
                            "/futures/data/topLongShortPositionRatio?symbol={s}&period={period}&limit=1"
                        ),
                        RATIO_EVERY,
                        parse_ratio,
                    ),
                    Channel::LsrAllAccount => (
                        format!(
                            "/futures/data/globalLongShortAccountRatio?symbol={s}&period={period}&limit=1"
                        ),
                        RATIO_EVERY,
                        parse_ratio,
                    ),
                    _ => continue,
                };
                out.push(PollerSpec {
                    exchange: Exchange::Binance,
                    market: feed.market,
                    symbol: *symbol,
                    channel,
                    base: cfg.venues.binance.perpetual_rest.clone(),
                    path,
                    period,
                    interval,
                    weight: 1,
                    limit: USDM_WEIGHT,
                    parse,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_interest_body_parses() {
        let p = parse_open_interest(
            br#"{"symbol":"BTCUSDT","openInterest":"84617.188","time":1654336844754}"#,
            "",
        )
        .expect("the open interest answer parses");
        let Polled::Point {
            ts_ms,
            data: Data::OpenInterest(oi),
        } = p
        else {
            panic!("{p:?}")
        };
        assert_eq!(
            (ts_ms, oi.open_interest.to_string()),
            (1654336844754, "84617.188".into())
        );
    }

    #[test]
    fn ratio_timestamps_may_be_numbers_or_strings() {
        for body in [
            &br#"[{"symbol":"BTCUSDT","longAccount":"0.6647","longShortRatio":"1.9823","shortAccount":"0.3353","timestamp":1787372700000}]"#[..],
            &br#"[{"symbol":"BTCUSDT","longAccount":"0.6647","longShortRatio":"1.9823","shortAccount":"0.3353","timestamp":"1787372700000"}]"#[..],
        ] {
            let p = parse_ratio(body, "5m").expect("the ratio answer parses");
            let Polled::Point { ts_ms, data: Data::LongShortRatio(r) } = p else { panic!("{p:?}") };
            assert_eq!(ts_ms, 1787372700000);
            assert_eq!((r.ratio.to_string(), r.period.as_str()), ("1.9823".into(), "5m"));
            assert_eq!(r.long.expect("a long share").to_string(), "0.6647");
        }
        assert_eq!(
            parse_ratio(b"[]", "5m").expect("the ratio answer parses"),
            Polled::Empty
        );
        assert!(parse_ratio(br#"[{"longShortRatio":"x","timestamp":1}]"#, "5m").is_err());
        assert!(parse_ratio(br#"{"code":-1}"#, "5m").is_err());
    }
}
