//! REST requests of sessions and pollers: rate limits shared per host and bucket.
//!
//! Design: a venue names the limit a request counts against (`RateSpec`: a bucket name,
//! capacity and window, e.g. Binance's request weight per minute, OKX's 5 requests per 2 s on
//! the rubik endpoints) and the request's weight. One [`HostLimiter`] per (host, bucket) is
//! shared by every task of the process, so two sessions on one host never overrun it together.
//! A 429 or 418 blocks the whole host until its `Retry-After` (or a conservative default), and
//! the venue's own used-weight header, when present, corrects our count.
//!
//! This module separates rate limiting (how fast we may ask) from the connection budget (how
//! many sockets we may hold, `budget`) and from retry policy (when a protocol asks again).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smol::Timer;

use prometheus_client::metrics::gauge::Gauge;

use crate::config::Endpoint;
use crate::metrics::{LimiterLabels, Metrics};
use crate::net::http::{RestClient, RestError, RestResponse};

/// A rate limit: `capacity` units of weight per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSpec {
    pub bucket: &'static str,
    pub capacity: u32,
    pub window: Duration,
}

/// One REST call a protocol or poller wants made.
#[derive(Debug, Clone)]
pub struct RestRequest {
    /// Returned with the result, so the caller knows what it asked for.
    pub tag: u64,
    pub base: Endpoint,
    pub path: String,
    pub weight: u32,
    pub limit: RateSpec,
}

#[derive(Debug)]
struct LimState {
    window_start: Instant,
    used: u32,
    blocked_until: Option<Instant>,
}

/// The shared limit of one (host, bucket).
#[derive(Debug)]
pub struct HostLimiter {
    spec: RateSpec,
    state: Mutex<LimState>,
    /// `marketbox_rest_weight_used{host,bucket}`.
    used_gauge: Gauge,
    /// `marketbox_rest_blocked_until_timestamp_seconds{host,bucket}`: when a 429/418 block
    /// ends (Unix seconds), 0 when none was ever set.
    blocked_gauge: Gauge,
}

/// Default block after a 429 without `Retry-After`.
const DEFAULT_429_BLOCK: Duration = Duration::from_secs(60);
/// Default block after a 418 (IP ban) without `Retry-After`.
const DEFAULT_418_BLOCK: Duration = Duration::from_secs(120);

impl HostLimiter {
    pub fn new(spec: RateSpec, now: Instant) -> Self {
        HostLimiter::with_gauges(spec, now, Gauge::default(), Gauge::default())
    }

    fn with_gauges(spec: RateSpec, now: Instant, used_gauge: Gauge, blocked_gauge: Gauge) -> Self {
        HostLimiter {
            spec,
            state: Mutex::new(LimState {
                window_start: now,
                used: 0,
                blocked_until: None,
            }),
            used_gauge,
            blocked_gauge,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves `weight` now, or says how long to wait first.
    pub fn try_reserve(&self, weight: u32, now: Instant) -> Result<(), Duration> {
        let mut s = self.lock();
        if let Some(until) = s.blocked_until {
            if now < until {
                return Err(until.saturating_duration_since(now));
            }
            s.blocked_until = None;
        }
        if now.saturating_duration_since(s.window_start) >= self.spec.window {
            s.window_start = now;
            s.used = 0;
        }
        let weight = weight.min(self.spec.capacity);
        if s.used.saturating_add(weight) > self.spec.capacity {
            let end = crate::time::after(s.window_start, self.spec.window);
            return Err(end.saturating_duration_since(now));
        }
        s.used = s.used.saturating_add(weight);
        self.used_gauge.set(i64::from(s.used));
        Ok(())
    }

    /// Learns from a response: blocks on 429/418, trusts the venue's used-weight count.
    pub fn observe(&self, resp: &RestResponse, now: Instant) {
        let mut s = self.lock();
        let block = match resp.status {
            429 => Some(resp.retry_after.unwrap_or(DEFAULT_429_BLOCK)),
            418 => Some(resp.retry_after.unwrap_or(DEFAULT_418_BLOCK)),
            _ => None,
        };
        if let Some(d) = block {
            let d = crate::time::venue_delay(d);
            let until = crate::time::after(now, d);
            let unix = crate::upstream::now_ns() / 1_000_000_000 + d.as_secs();
            self.blocked_gauge
                .set(i64::try_from(unix).unwrap_or(i64::MAX));
            s.blocked_until = Some(s.blocked_until.map_or(until, |u| u.max(until)));
            tracing::warn!(status = resp.status, block = ?d, bucket = self.spec.bucket, "REST rate limit hit; host blocked");
        }
        if let Some(w) = resp.used_weight {
            // The venue's count is trusted only up to the window's capacity: a header of
            // 4294967295 means "spent", not a number to add to.
            s.used = s.used.max(w.min(self.spec.capacity));
            self.used_gauge.set(i64::from(s.used));
        }
    }

    /// Weight used in the current window.
    pub fn used(&self) -> u32 {
        self.lock().used
    }

    /// When the host is blocked by a 429/418, until when.
    pub fn blocked_until(&self) -> Option<Instant> {
        self.lock().blocked_until
    }
}

/// (host, bucket) → limiter.
type LimiterMap = HashMap<(String, &'static str), Arc<HostLimiter>>;

/// Every limiter of the process, by (host, bucket).
#[derive(Clone, Default)]
pub struct Limiters {
    map: Arc<Mutex<LimiterMap>>,
    metrics: Option<Arc<Metrics>>,
}

impl Limiters {
    /// Limiters that show their state in `metrics`.
    pub fn new(metrics: Option<Arc<Metrics>>) -> Self {
        Limiters {
            map: Arc::default(),
            metrics,
        }
    }

    /// The limiter for a request's host and bucket.
    pub fn get(&self, base: &Endpoint, spec: RateSpec) -> Arc<HostLimiter> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((base.authority().to_owned(), spec.bucket))
            .or_insert_with(|| {
                let (used, blocked) = match &self.metrics {
                    Some(m) => {
                        let labels = LimiterLabels {
                            host: base.authority().to_owned(),
                            bucket: spec.bucket,
                        };
                        (
                            m.rest_weight_used.get_or_create(&labels).clone(),
                            m.rest_blocked_until.get_or_create(&labels).clone(),
                        )
                    }
                    None => (Gauge::default(), Gauge::default()),
                };
                Arc::new(HostLimiter::with_gauges(
                    spec,
                    Instant::now(),
                    used,
                    blocked,
                ))
            })
            .clone()
    }
}

/// Waits for the limiter, makes the call, and lets the limiter learn from the answer.
pub async fn execute(
    client: &RestClient,
    limiter: &HostLimiter,
    req: RestRequest,
) -> Result<RestResponse, RestError> {
    execute_beating(client, limiter, req, || {}).await
}

/// [`execute`], calling `alive` at least every 5 s while it waits for the limiter (a loop
/// waiting out a venue's block is alive, not stuck).
pub async fn execute_beating(
    client: &RestClient,
    limiter: &HostLimiter,
    req: RestRequest,
    alive: impl Fn(),
) -> Result<RestResponse, RestError> {
    let mut logged = false;
    while let Err(wait) = limiter.try_reserve(req.weight, Instant::now()) {
        if wait >= Duration::from_secs(1) && !logged {
            logged = true;
            tracing::info!(wait = ?wait, bucket = limiter.spec.bucket, host = %req.base.authority(), "REST request waits for the venue's rate limit");
        }
        alive();
        Timer::after(wait.clamp(Duration::from_millis(10), Duration::from_secs(5))).await;
    }
    let result = client.get(&req.base, &req.path).await;
    if let Ok(resp) = &result {
        limiter.observe(resp, Instant::now());
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: RateSpec = RateSpec {
        bucket: "weight",
        capacity: 100,
        window: Duration::from_secs(60),
    };

    fn resp(status: u16, retry_after: Option<u64>, used: Option<u32>) -> RestResponse {
        RestResponse {
            status,
            retry_after: retry_after.map(Duration::from_secs),
            used_weight: used,
            body: Vec::new(),
        }
    }

    #[test]
    fn weight_is_reserved_until_the_window_is_spent() {
        let t0 = Instant::now();
        let l = HostLimiter::new(SPEC, t0);
        assert!(l.try_reserve(50, t0).is_ok());
        assert!(l.try_reserve(50, t0).is_ok());
        // TC0: the window is spent: wait for its end.
        assert_eq!(
            l.try_reserve(1, t0 + Duration::from_secs(10)),
            Err(Duration::from_secs(50))
        );
        // TC1: a new window starts fresh.
        assert!(l.try_reserve(100, t0 + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn a_429_blocks_the_host_for_its_retry_after() {
        let t0 = Instant::now();
        let l = HostLimiter::new(SPEC, t0);
        l.observe(&resp(429, Some(7), None), t0);
        assert_eq!(l.try_reserve(1, t0), Err(Duration::from_secs(7)));
        assert!(l.try_reserve(1, t0 + Duration::from_secs(7)).is_ok());
    }

    #[test]
    fn a_418_without_retry_after_blocks_for_the_default() {
        let t0 = Instant::now();
        let l = HostLimiter::new(SPEC, t0);
        l.observe(&resp(418, None, None), t0);
        assert_eq!(l.try_reserve(1, t0), Err(DEFAULT_418_BLOCK));
    }

    #[test]
    fn hostile_weight_and_retry_after_values_neither_wrap_nor_panic() {
        let t0 = Instant::now();
        let l = HostLimiter::new(SPEC, t0);
        // TC0: used weight at u32::MAX: the window is spent, nothing wraps.
        l.observe(&resp(200, None, Some(u32::MAX)), t0);
        assert_eq!(l.used(), SPEC.capacity);
        assert_eq!(l.try_reserve(u32::MAX, t0), Err(SPEC.window));
        assert!(l.try_reserve(1, t0 + SPEC.window).is_ok());
        // TC1: a Retry-After of u64::MAX seconds blocks for the cap, and the block ends.
        let l = HostLimiter::new(SPEC, t0);
        l.observe(&resp(429, Some(u64::MAX), None), t0);
        assert_eq!(l.try_reserve(1, t0), Err(crate::time::MAX_VENUE_DELAY));
        assert!(l.try_reserve(1, t0 + crate::time::MAX_VENUE_DELAY).is_ok());
    }

    #[test]
    fn the_venues_used_weight_corrects_our_count() {
        let t0 = Instant::now();
        let l = HostLimiter::new(SPEC, t0);
        l.observe(&resp(200, None, Some(95)), t0);
        assert!(l.try_reserve(5, t0).is_ok());
        assert!(l.try_reserve(1, t0).is_err());
    }
}
