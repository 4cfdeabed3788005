//! OKX long/short ratios over REST (the rubik statistics endpoints; there is no WebSocket for
//! them): `lsr_top_position` and `lsr_all_account`, rows `[ts, ratio]`, newest first.
//!
//! Owns: the rubik paths, their rate limit (5 requests per 2 s) and body shape; the polling
//! loop is `session::poll`.

use std::time::Duration;

use serde::Deserialize;

use super::inst_id;
use crate::book::Decimal;
use crate::config::Config;
use crate::model::{Channel, Data, Exchange, LongShortRatioData, Market};
use crate::session::poll::{PollError, Polled, PollerSpec};
use crate::session::rest::RateSpec;

/// Rubik: 5 requests per 2 s per IP; we keep one in reserve.
const RUBIK: RateSpec = RateSpec {
    bucket: "rubik",
    capacity: 4,
    window: Duration::from_secs(2),
};

const RATIO_EVERY: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow)]
    code: &'a str,
    #[serde(borrow, default)]
    msg: Option<&'a str>,
    #[serde(borrow, default)]
    data: Vec<Vec<&'a str>>,
}

/// Parses a rubik ratio answer: the newest row.
pub fn parse_ratio(body: &[u8], period: &str) -> Result<Polled, PollError> {
    let a: Answer<'_> = serde_json::from_slice(body).map_err(|e| PollError::Body(e.to_string()))?;
    if a.code != "0" {
        return Err(PollError::Venue(format!(
            "code {} {}",
            a.code,
            a.msg.unwrap_or("")
        )));
    }
    let newest = a
        .data
        .iter()
        .filter_map(|r| Some((r.first()?.parse::<u64>().ok()?, *r.get(1)?)))
        .max_by_key(|r| r.0);
    let Some((ts_ms, ratio)) = newest else {
        return Ok(Polled::Empty);
    };
    let ratio = Decimal::parse(ratio).map_err(|_| PollError::Decimal {
        field: "ratio",
        value: ratio.to_owned(),
    })?;
    Ok(Polled::Point {
        ts_ms,
        data: Data::LongShortRatio(LongShortRatioData {
            ratio,
            long: None,
            short: None,
            period: heapless::String::try_from(period).unwrap_or_default(),
        }),
    })
}

/// The pollers a config asks for (OKX perpetual swaps).
pub fn pollers(cfg: &Config) -> Vec<PollerSpec> {
    let mut out = Vec::new();
    for feed in cfg
        .feeds()
        .filter(|f| f.exchange == Exchange::Okx && f.market == Market::Perpetual)
    {
        let period = feed.lsr_period.as_str();
        for symbol in &feed.symbols {
            let inst = inst_id(feed.market, symbol);
            for &channel in &feed.channels {
                let path = match channel {
                    Channel::LsrTopPosition => format!(
                        "/api/v5/rubik/stat/contracts/long-short-position-ratio-contract-top-trader?instId={inst}&period={period}"
                    ),
                    Channel::LsrAllAccount => format!(
                        "/api/v5/rubik/stat/contracts/long-short-account-ratio-contract?instId={inst}&period={period}"
                    ),
                    _ => continue,
                };
                out.push(PollerSpec {
                    exchange: Exchange::Okx,
                    market: feed.market,
                    symbol: *symbol,
                    channel,
                    base: cfg.venues.okx.rest.clone(),
                    path,
                    period,
                    interval: RATIO_EVERY,
                    weight: 1,
                    limit: RUBIK,
                    parse: parse_ratio,
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
    fn rubik_rows_give_the_newest_ratio() {
        let p = parse_ratio(
            br#"{"code":"0","msg":"","data":[["1701417600000","1.25"],["1701417300000","1.2"]]}"#,
            "5m",
        )
        .expect("the ratio answer parses");
        let Polled::Point {
            ts_ms,
            data: Data::LongShortRatio(r),
        } = p
        else {
            panic!("{p:?}")
        };
        assert_eq!(
            (ts_ms, r.ratio.to_string(), r.period.as_str()),
            (1701417600000, "1.25".into(), "5m")
        );
        assert_eq!(
            parse_ratio(br#"{"code":"0","data":[]}"#, "5m").expect("the ratio answer parses"),
            Polled::Empty
        );
        assert!(matches!(
            parse_ratio(br#"{"code":"50011","msg":"Too Many Requests"}"#, "5m"),
            Err(PollError::Venue(_))
        ));
        assert!(parse_ratio(br#"{"code":"0","data":[["1","x"]]}"#, "5m").is_err());
    }

    #[test]
    fn default_config_polls_both_ratios_for_both_swaps() {
        let cfg = Config::parse(include_str!("../../../config/marketbox.toml"), "m.toml")
            .expect("the config parses");
        let p = pollers(&cfg);
        assert_eq!(p.len(), 4);
        assert!(p.iter().all(|s| s.path.contains("-SWAP&period=5m")));
    }
}
