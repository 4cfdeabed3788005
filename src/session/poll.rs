//! REST pollers: one task per (exchange, market, symbol, channel) polled over REST.
//!
//! Design: venue code says what to ask and how to read the answer ([`PollerSpec`]); this loop
//! asks under the host's rate limiter and the connection budget (through the shared
//! `RestClient`, one keep-alive per host), publishes a data point only when the venue's
//! timestamp is new, retries failures with capped backoff (honouring `Retry-After`), and shows
//! its state (`marketbox_poller_up`, `marketbox_poller_failures_total`). It never ends by itself.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use smol::Timer;

use crate::config::Endpoint;
use crate::metrics::{Metrics, StreamLabels};
use crate::model::{Channel, Data, Exchange, Market, Symbol};
use crate::net::http::RestClient;
use crate::session::backoff;
use crate::session::rest::{self, Limiters, RateSpec, RestRequest};
use crate::upstream::Publisher;

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
    #[error("the venue refused: {0}")]
    Venue(String),
}

/// Reads a body: `(body, period)`.
pub type Parser = fn(&[u8], &str) -> Result<Polled, PollError>;

/// One poller: what it asks, how often, how to read the answer.
#[derive(Debug, Clone)]
pub struct PollerSpec {
    pub exchange: Exchange,
    pub market: Market,
    pub symbol: Symbol,
    pub channel: Channel,
    pub base: Endpoint,
    pub path: String,
    pub period: &'static str,
    pub interval: Duration,
    pub weight: u32,
    pub limit: RateSpec,
    pub parse: Parser,
}

/// Polls forever.
pub async fn run(
    spec: PollerSpec,
    client: RestClient,
    limiters: Limiters,
    mut publisher: Publisher,
    metrics: Arc<Metrics>,
    beat: crate::metrics::health::Heartbeat,
) -> Infallible {
    let labels = StreamLabels {
        exchange: spec.exchange,
        market: spec.market,
        symbol: spec.symbol.to_string(),
        channel: spec.channel,
    };
    let up = metrics.poller_up.get_or_create(&labels).clone();
    let failures = metrics.poller_failures.get_or_create(&labels).clone();
    let limiter = limiters.get(&spec.base, spec.limit);
    let mut last_ts = 0u64;
    let mut failed = 0u32;
    loop {
        let req = RestRequest {
            tag: 0,
            base: spec.base.clone(),
            path: spec.path.clone(),
            weight: spec.weight,
            limit: spec.limit,
        };
        beat.beat();
        let outcome = match rest::execute_beating(&client, &limiter, req, || beat.beat()).await {
            Ok(resp) if resp.status == 200 => {
                (spec.parse)(&resp.body, spec.period).map_err(|e| (e.to_string(), None))
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
                    tracing::warn!(exchange = %spec.exchange, symbol = %spec.symbol, channel = %spec.channel, %reason, retry_in = ?d, "poll failed; retrying");
                }
                failed = failed.saturating_add(1);
                d
            }
        };
        // Sleep in pieces so the heartbeat shows a waiting poller alive.
        let until = crate::time::after(std::time::Instant::now(), wait);
        loop {
            beat.beat();
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            Timer::after(left.min(Duration::from_secs(5))).await;
        }
    }
}
