//! Binance USD-M REST pollers: `open_interest`, `lsr_top_position`, `lsr_all_account`.
//!
//! Design: one task per (symbol, channel), each under the host's weight limiter and the
//! connection budget (through the shared `RestClient`, one keep-alive per host). A poller
//! publishes only when the venue reports a new data point (deduplicated by its timestamp),
//! retries failures with capped backoff, honours 429/418, and is visible while failing
//! (`marketbox_poller_up` = 0, `marketbox_poller_failures_total`). It never ends by itself.
//!
//! Owns: the REST paths and body shapes of these three endpoints.

use std::convert::Infallible;
use std::time::Duration;

use serde::Deserialize;
use smol::Timer;

use super::rest_symbol;
use crate::book::Decimal;
use crate::config::{Config, Endpoint};
use crate::metrics::{Metrics, StreamLabels};
use crate::model::{Channel, Data, Exchange, LongShortRatioData, Market, OpenInterestData, Symbol};
use crate::net::http::RestClient;
use crate::session::backoff;
use crate::session::rest::{self, Limiters, RateSpec, RestRequest};
use crate::upstream::Publisher;

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

/// What a poll produced (transient: built and consumed in one poll, never stored).
#[derive(Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Polled {
    /// A data point with its venue timestamp (ms).
    Point { ts_ms: u64, data: Data },
    /// The venue answered with nothing usable yet (empty list).
    Empty,
}

/// Why a poll's body was refused.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("unexpected body: {0}")]
    Body(String),
    #[error("bad decimal {field}: {value:?}")]
    Decimal { field: &'static str, value: String },
}

fn dec(field: &'static str, value: &str) -> Result<Decimal, PollError> {
    Decimal::parse(value).map_err(|_| PollError::Decimal {
        field,
        value: value.to_owned(),
    })
}

/// Parses an open-interest body.
pub fn parse_open_interest(body: &[u8]) -> Result<Polled, PollError> {
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

/// One poller: what it asks, how often, what it publishes.
#[derive(Debug, Clone)]
pub struct PollerSpec {
    pub market: Market,
    pub symbol: Symbol,
    pub channel: Channel,
    pub base: Endpoint,
    pub path: String,
    pub period: &'static str,
    pub interval: Duration,
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
                let (path, interval) = match channel {
                    Channel::OpenInterest => (
                        format!("/fapi/v1/openInterest?symbol={s}"),
                        OPEN_INTEREST_EVERY,
                    ),
                    Channel::LsrTopPosition => (
                        format!(
                            "/futures/data/topLongShortPositionRatio?symbol={s}&period={period}&limit=1"
                        ),
                        RATIO_EVERY,
                    ),
                    Channel::LsrAllAccount => (
                        format!(
                            "/futures/data/globalLongShortAccountRatio?symbol={s}&period={period}&limit=1"
                        ),
                        RATIO_EVERY,
                    ),
                    _ => continue,
                };
                out.push(PollerSpec {
                    market: feed.market,
                    symbol: *symbol,
                    channel,
                    base: cfg.venues.binance.perpetual_rest.clone(),
                    path,
                    period,
                    interval,
                });
            }
        }
    }
    out
}

/// Polls forever: publishes each new data point once, keeps retrying failures with capped
/// backoff (honouring `Retry-After`), and shows its state in `marketbox_poller_up`.
pub async fn run(
    spec: PollerSpec,
    client: RestClient,
    limiters: Limiters,
    mut publisher: Publisher,
    metrics: std::sync::Arc<Metrics>,
) -> Infallible {
    let labels = StreamLabels {
        exchange: Exchange::Binance,
        market: spec.market,
        symbol: spec.symbol.to_string(),
        channel: spec.channel,
    };
    let up = metrics.poller_up.get_or_create(&labels).clone();
    let failures = metrics.poller_failures.get_or_create(&labels).clone();
    let limiter = limiters.get(&spec.base, USDM_WEIGHT);
    let mut last_ts = 0u64;
    let mut failed = 0u32;
    loop {
        let req = RestRequest {
            tag: 0,
            base: spec.base.clone(),
            path: spec.path.clone(),
            weight: 1,
            limit: USDM_WEIGHT,
        };
        let outcome = match rest::execute(&client, &limiter, req).await {
            Ok(resp) if resp.status == 200 => {
                let parsed = match spec.channel {
                    Channel::OpenInterest => parse_open_interest(&resp.body),
                    _ => parse_ratio(&resp.body, spec.period),
                };
                parsed.map_err(|e| (e.to_string(), None))
            }
            Ok(resp) => Err((format!("HTTP {}", resp.status), resp.retry_after)),
            Err(e) => Err((e.to_string(), None)),
        };
        let wait = match outcome {
            Ok(Polled::Point { ts_ms, data }) => {
                up.set(1);
                failed = 0;
                if ts_ms > last_ts {
                    last_ts = ts_ms;
                    publisher.publish(0, ts_ms, ts_ms, data);
                }
                spec.interval
            }
            Ok(Polled::Empty) => {
                up.set(1);
                failed = 0;
                spec.interval
            }
            Err((reason, retry_after)) => {
                up.set(0);
                failures.inc();
                let d = backoff::delay(failed, Duration::from_secs(1), Duration::from_secs(120));
                let d = retry_after.map_or(d, |r| r.max(d));
                if failed == 0 {
                    tracing::warn!(symbol = %spec.symbol, channel = %spec.channel, %reason, retry_in = ?d, "poll failed; retrying");
                }
                failed = failed.saturating_add(1);
                d
            }
        };
        Timer::after(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_interest_body_parses() {
        let p = parse_open_interest(
            br#"{"symbol":"BTCUSDT","openInterest":"84617.188","time":1654336844754}"#,
        )
        .unwrap();
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
            let p = parse_ratio(body, "5m").unwrap();
            let Polled::Point { ts_ms, data: Data::LongShortRatio(r) } = p else { panic!("{p:?}") };
            assert_eq!(ts_ms, 1787372700000);
            assert_eq!((r.ratio.to_string(), r.period.as_str()), ("1.9823".into(), "5m"));
            assert_eq!(r.long.unwrap().to_string(), "0.6647");
        }
        assert_eq!(parse_ratio(b"[]", "5m").unwrap(), Polled::Empty);
        assert!(parse_ratio(br#"[{"longShortRatio":"x","timestamp":1}]"#, "5m").is_err());
        assert!(parse_ratio(br#"{"code":-1}"#, "5m").is_err());
    }
}
