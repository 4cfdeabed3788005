//! The verdicts behind `/health` (is the service loop alive?) and `/ready` (is the data good?).
//!
//! Design: both are computed on request from state the service already keeps, so a check
//! never adds work to the feed path.
//!
//! - **Liveness** is a set of named heartbeats. A loop registers one ([`Liveness::register`])
//!   with the longest silence it may keep, and calls [`Heartbeat::beat`] each time round
//!   (an atomic store). `/health` is 200 while every registered loop beat within its limit,
//!   else 503 naming each stuck loop and for how long. A heartbeat stays registered when its
//!   handle is dropped (a loop that died is stuck, not gone); registering the same name again
//!   (a supervised restart) replaces it.
//! - **Readiness** reads the registry: for every planned stream the
//!   `marketbox_stream_last_message_timestamp_seconds` gauge against its channel's freshness
//!   threshold ([`freshness`]), for every orderbook stream `marketbox_book_verified`, and
//!   `marketbox_upstream_up`. The handles are resolved once, when the checker is built.
//!
//! Owns: the heartbeat registry, the freshness thresholds and both JSON verdicts. Must not
//! touch: sockets, or the state machines whose outcomes it reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;

use super::{BookLabels, Metrics, StreamLabels};
use crate::model::Channel;
use crate::upstream::StreamKey;

struct Beat {
    name: String,
    limit: Duration,
    /// Milliseconds since the registry's epoch at the last beat.
    last_ms: AtomicU64,
}

/// The registry of heartbeats. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct Liveness {
    epoch: Instant,
    beats: Arc<Mutex<Vec<Arc<Beat>>>>,
}

impl std::fmt::Debug for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Liveness").finish_non_exhaustive()
    }
}

/// One loop's heartbeat.
#[derive(Clone)]
pub struct Heartbeat {
    epoch: Instant,
    beat: Arc<Beat>,
}

impl Heartbeat {
    /// The loop is alive now.
    pub fn beat(&self) {
        let ms = Instant::now()
            .saturating_duration_since(self.epoch)
            .as_millis();
        self.beat
            .last_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Release);
    }
}

/// One loop as `/health` reports it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LoopState {
    pub name: String,
    pub silent_seconds: f64,
    pub limit_seconds: f64,
}

/// The `/health` verdict.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HealthReport {
    pub healthy: bool,
    /// Loops past their limit (empty when healthy).
    pub stuck: Vec<LoopState>,
    /// Every registered loop.
    pub loops: Vec<LoopState>,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness::new()
    }
}

impl Liveness {
    pub fn new() -> Self {
        Liveness {
            epoch: Instant::now(),
            beats: Arc::default(),
        }
    }

    /// Registers (or, for a name already registered, replaces) a loop that must beat at
    /// least every `limit`. It counts as having beaten now.
    pub fn register(&self, name: impl Into<String>, limit: Duration) -> Heartbeat {
        let name = name.into();
        let beat = Arc::new(Beat {
            name,
            limit,
            last_ms: AtomicU64::new(0),
        });
        let hb = Heartbeat {
            epoch: self.epoch,
            beat: Arc::clone(&beat),
        };
        hb.beat();
        let mut beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        beats.retain(|b| b.name != beat.name);
        beats.push(beat);
        hb
    }

    /// Every loop's silence at `now`.
    pub fn check(&self, now: Instant) -> HealthReport {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis();
        let now_ms = u64::try_from(now_ms).unwrap_or(u64::MAX);
        let beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        let mut loops = Vec::with_capacity(beats.len());
        let mut stuck = Vec::new();
        for b in beats.iter() {
            let silent =
                Duration::from_millis(now_ms.saturating_sub(b.last_ms.load(Ordering::Acquire)));
            let state = LoopState {
                name: b.name.clone(),
                silent_seconds: round_ms(silent),
                limit_seconds: round_ms(b.limit),
            };
            if silent > b.limit {
                stuck.push(state.clone());
            }
            loops.push(state);
        }
        HealthReport {
            healthy: stuck.is_empty(),
            stuck,
            loops,
        }
    }
}

fn round_ms(d: Duration) -> f64 {
    (d.as_millis() as f64) / 1000.0
}

/// How long a stream may stay silent before it is not ready, by channel; `None` for streams
/// whose silence is normal (liquidations happen when they happen).
///
/// - `orderbook`: `[session] stale_after`, the silence after which the session itself
///   resubscribes the stream (venues send book updates every 100 ms).
/// - `trade`: five times that: busy pairs trade every second, quiet ones can pause.
/// - `funding_rate`, `open_interest` over a WebSocket: `stale_after`, at least 3 minutes
///   (OKX pushes funding every 30–90 s).
/// - polled streams (open interest on Binance, the long/short ratios): twice the longer of
///   the poll interval and the venue's period, plus `stale_after` (a ratio is published once
///   per period).
pub fn freshness(
    channel: Channel,
    stale_after: Duration,
    poll: Option<Duration>,
) -> Option<Duration> {
    if channel == Channel::Liquidation {
        return None;
    }
    if let Some(every) = poll {
        return Some(every.saturating_mul(2).saturating_add(stale_after));
    }
    Some(match channel {
        Channel::Orderbook => stale_after,
        Channel::Trade => stale_after.saturating_mul(5),
        _ => stale_after.max(Duration::from_secs(180)),
    })
}

/// Why a stream is not ready.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum NotReady {
    /// The book is not verified (syncing, resyncing, or never synced).
    Unverified,
    /// Nothing published since start.
    NoMessage { threshold_seconds: f64 },
    /// The last message is older than the channel's threshold.
    Stale {
        last_message_age_seconds: f64,
        threshold_seconds: f64,
    },
}

/// One stream that is not ready.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StreamVerdict {
    /// `<channel>.<exchange>.<market>.<symbol>`, the NATS subject without prefix.
    pub stream: String,
    pub exchange: &'static str,
    pub market: &'static str,
    pub symbol: String,
    pub channel: &'static str,
    pub reasons: Vec<NotReady>,
}

/// The `/ready` verdict.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReadyReport {
    pub ready: bool,
    pub upstream_up: bool,
    pub streams_checked: usize,
    pub not_ready: Vec<StreamVerdict>,
}

struct StreamCheck {
    key: StreamKey,
    last_message: Gauge<f64, AtomicU64>,
    threshold: Option<Duration>,
    verified: Option<Gauge>,
}

/// Checks every planned stream; built from the plan, and given the new plan's streams when
/// the plan changes while the service runs ([`Readiness::set_streams`]).
pub struct Readiness {
    streams: Mutex<Vec<StreamCheck>>,
    upstream_up: Gauge,
}

impl Readiness {
    /// `streams`: every planned stream with its freshness threshold ([`freshness`]).
    pub fn new(metrics: &Metrics, streams: &[(StreamKey, Option<Duration>)]) -> Self {
        Readiness {
            streams: Mutex::new(Self::checks(metrics, streams)),
            upstream_up: metrics.upstream_up.clone(),
        }
    }

    /// The streams checked from now on (a symbol added or removed at the console).
    pub fn set_streams(&self, metrics: &Metrics, streams: &[(StreamKey, Option<Duration>)]) {
        let checks = Self::checks(metrics, streams);
        *self.streams.lock().unwrap_or_else(|e| e.into_inner()) = checks;
    }

    fn checks(metrics: &Metrics, streams: &[(StreamKey, Option<Duration>)]) -> Vec<StreamCheck> {
        streams
            .iter()
            .map(|(key, threshold)| {
                let labels = StreamLabels {
                    exchange: key.exchange,
                    market: key.market,
                    symbol: key.symbol.to_string(),
                    channel: key.channel,
                };
                let verified = (key.channel == Channel::Orderbook).then(|| {
                    metrics
                        .book_verified
                        .get_or_create(&BookLabels {
                            exchange: key.exchange,
                            market: key.market,
                            symbol: key.symbol.to_string(),
                        })
                        .clone()
                });
                StreamCheck {
                    key: *key,
                    last_message: metrics.stream_last_message.get_or_create(&labels).clone(),
                    threshold: *threshold,
                    verified,
                }
            })
            .collect()
    }

    /// The verdict at wall-clock time `now_unix` (seconds since the epoch).
    pub fn check(&self, now_unix: f64) -> ReadyReport {
        let mut not_ready = Vec::new();
        let streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        for s in streams.iter() {
            let mut reasons = Vec::new();
            if s.verified.as_ref().is_some_and(|g| g.get() != 1) {
                reasons.push(NotReady::Unverified);
            }
            if let Some(limit) = s.threshold {
                let last = s.last_message.get();
                let threshold_seconds = limit.as_secs_f64();
                if last <= 0.0 || !last.is_finite() {
                    reasons.push(NotReady::NoMessage { threshold_seconds });
                } else {
                    let age = (now_unix - last).max(0.0);
                    if age > threshold_seconds {
                        reasons.push(NotReady::Stale {
                            last_message_age_seconds: (age * 1000.0).round() / 1000.0,
                            threshold_seconds,
                        });
                    }
                }
            }
            if !reasons.is_empty() {
                let k = s.key;
                not_ready.push(StreamVerdict {
                    stream: format!(
                        "{}.{}.{}.{}",
                        k.channel.as_str(),
                        k.exchange.as_str(),
                        k.market.as_str(),
                        k.symbol
                    ),
                    exchange: k.exchange.as_str(),
                    market: k.market.as_str(),
                    symbol: k.symbol.to_string(),
                    channel: k.channel.as_str(),
                    reasons,
                });
            }
        }
        let upstream_up = self.upstream_up.get() == 1;
        ReadyReport {
            ready: upstream_up && not_ready.is_empty(),
            upstream_up,
            streams_checked: streams.len(),
            not_ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Exchange, Market, Symbol};

    fn key(symbol: &str, channel: Channel) -> StreamKey {
        StreamKey {
            exchange: Exchange::Binance,
            market: Market::Spot,
            symbol: Symbol::parse(symbol).expect("a valid symbol"),
            channel,
        }
    }

    #[test]
    fn a_loop_is_stuck_only_past_its_limit_and_a_restart_replaces_it() {
        let l = Liveness::new();
        let t0 = Instant::now();
        let a = l.register("session binance spot", Duration::from_secs(5));
        let _b = l.register("executor", Duration::from_secs(10));
        // TC0: just registered: healthy.
        assert!(l.check(t0).healthy);
        // TC1: 6 s later neither beat: only the 5 s loop is stuck, and named.
        let r = l.check(t0 + Duration::from_secs(6));
        assert!(!r.healthy);
        assert_eq!(r.stuck.len(), 1);
        assert_eq!(r.stuck[0].name, "session binance spot");
        assert!(r.stuck[0].silent_seconds >= 6.0);
        // TC2: a beat clears it.
        a.beat();
        assert!(l.check(Instant::now()).healthy);
        // TC3: a dropped handle stays registered (a dead loop is stuck, not gone) ...
        drop(a);
        assert_eq!(l.check(Instant::now()).loops.len(), 2);
        // TC4: ... until the same name registers again (a supervised restart).
        let _a2 = l.register("session binance spot", Duration::from_secs(5));
        assert_eq!(l.check(Instant::now()).loops.len(), 2);
        // TC5: a clock far in the future never overflows.
        let r = l.check(t0 + Duration::from_secs(u32::MAX as u64));
        assert_eq!(r.stuck.len(), 2);
    }

    #[test]
    fn freshness_thresholds_follow_the_channel() {
        let s = Duration::from_secs(30);
        // TC0..TC4: one per kind of channel.
        assert_eq!(freshness(Channel::Orderbook, s, None), Some(s));
        assert_eq!(freshness(Channel::Trade, s, None), Some(s * 5));
        assert_eq!(
            freshness(Channel::FundingRate, s, None),
            Some(Duration::from_secs(180))
        );
        assert_eq!(freshness(Channel::Liquidation, s, None), None);
        assert_eq!(
            freshness(Channel::LsrTopPosition, s, Some(Duration::from_secs(300))),
            Some(Duration::from_secs(630))
        );
        // TC5: the largest durations saturate instead of overflowing.
        assert_eq!(
            freshness(Channel::Trade, Duration::MAX, None),
            Some(Duration::MAX)
        );
    }

    #[test]
    fn readiness_names_each_stream_and_reason() {
        let m = Metrics::new();
        let book = key("BTC-USDT", Channel::Orderbook);
        let trade = key("ETH-USDT", Channel::Trade);
        let liq = key("ETH-USDT", Channel::Liquidation);
        let r = Readiness::new(
            &m,
            &[
                (book, Some(Duration::from_secs(3))),
                (trade, Some(Duration::from_secs(15))),
                (liq, None),
            ],
        );
        let labels = |k: StreamKey| StreamLabels {
            exchange: k.exchange,
            market: k.market,
            symbol: k.symbol.to_string(),
            channel: k.channel,
        };
        // TC0: nothing yet: upstream down, book unverified, both streams silent since start;
        // the liquidation stream is never a reason.
        let v = r.check(1000.0);
        assert!(!v.ready && !v.upstream_up);
        assert_eq!(v.streams_checked, 3);
        assert_eq!(v.not_ready.len(), 2);
        assert_eq!(v.not_ready[0].stream, "orderbook.binance.spot.BTC-USDT");
        assert_eq!(
            v.not_ready[0].reasons,
            vec![
                NotReady::Unverified,
                NotReady::NoMessage {
                    threshold_seconds: 3.0
                }
            ]
        );
        // TC1: all fresh, verified, upstream up: ready.
        m.upstream_up.set(1);
        m.book_verified
            .get_or_create(&BookLabels {
                exchange: book.exchange,
                market: book.market,
                symbol: "BTC-USDT".into(),
            })
            .set(1);
        m.stream_last_message
            .get_or_create(&labels(book))
            .set(999.0);
        m.stream_last_message
            .get_or_create(&labels(trade))
            .set(990.0);
        let v = r.check(1000.0);
        assert!(v.ready, "{v:?}");
        // TC2: the book goes quiet past 3 s: only it is named, as stale.
        let v = r.check(1003.5);
        assert!(!v.ready);
        assert_eq!(v.not_ready.len(), 1);
        assert_eq!(
            v.not_ready[0].reasons,
            vec![NotReady::Stale {
                last_message_age_seconds: 4.5,
                threshold_seconds: 3.0
            }]
        );
        // TC3: a clock behind the last message is age 0, not negative.
        assert!(r.check(500.0).ready);
        // TC4: the JSON names the reason.
        let json = serde_json::to_string(&r.check(1003.5)).expect("serializable");
        assert!(json.contains(r#""reason":"stale""#), "{json}");
    }
}
