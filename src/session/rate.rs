//! Rate limits of what we send to a venue.
//!
//! A token bucket for messages on a socket (Binance counts pings, pongs and control frames
//! against 5 or 10 incoming messages per second per connection; OKX allows 480 subscribe
//! requests per hour per connection), and a sliding window for connection attempts (Binance:
//! 300 per 5 minutes per IP; OKX: 3 per second), which never allows more than `max` in any
//! window, bursts included. Time is passed in, so both are testable without sleeping.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// `capacity` tokens, refilled continuously at `capacity / per`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    per: Duration,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(capacity: u32, per: Duration, now: Instant) -> Self {
        TokenBucket {
            capacity: f64::from(capacity),
            tokens: f64::from(capacity),
            per,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        let rate = self.capacity / self.per.as_secs_f64();
        self.tokens = (self.tokens + elapsed.as_secs_f64() * rate).min(self.capacity);
    }

    /// Takes one token, or says how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let rate = self.capacity / self.per.as_secs_f64();
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }

    /// Takes a token for something already sent (an automatic pong); may go into debt.
    pub fn charge(&mut self, now: Instant) {
        self.refill(now);
        self.tokens -= 1.0;
    }

    /// Takes `n` tokens for something already done (bytes read); may go into debt.
    pub fn spend(&mut self, n: u32, now: Instant) {
        self.refill(now);
        self.tokens -= f64::from(n);
    }

    /// Whole tokens available now.
    pub fn available(&mut self, now: Instant) -> u32 {
        self.refill(now);
        self.tokens.max(0.0) as u32
    }
}

/// At most `max` events in any `window`: a log of the last `max` event times.
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    max: usize,
    window: Duration,
    times: VecDeque<Instant>,
}

impl SlidingWindow {
    /// `max` is at least 1.
    pub fn new(max: u32, window: Duration) -> Self {
        let max = (max as usize).max(1);
        SlidingWindow {
            max,
            window,
            times: VecDeque::with_capacity(max),
        }
    }

    /// Records an event now, or says how long until one is allowed.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        while let Some(t) = self.times.front() {
            if now.saturating_duration_since(*t) >= self.window {
                self.times.pop_front();
            } else {
                break;
            }
        }
        if self.times.len() < self.max {
            self.times.push_back(now);
            return Ok(());
        }
        let oldest = self.times.front().copied().unwrap_or(now);
        Err(crate::time::after(oldest, self.window).saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sliding_window_never_allows_more_than_max_in_any_window() {
        let t0 = Instant::now();
        let w = Duration::from_secs(10);
        let mut s = SlidingWindow::new(3, w);
        // TC0: a burst of max passes, the next waits for the oldest to leave the window.
        for _ in 0..3 {
            assert!(s.try_take(t0).is_ok());
        }
        assert_eq!(
            s.try_take(t0 + Duration::from_secs(4)),
            Err(Duration::from_secs(6))
        );
        // TC1: exactly one window later one more is allowed, not more.
        assert!(s.try_take(t0 + w).is_ok());
        assert!(s.try_take(t0 + w).is_ok());
        assert!(s.try_take(t0 + w).is_ok());
        assert!(s.try_take(t0 + w).is_err());
        // TC2: max 0 behaves as 1 (never a dead lock, never unlimited).
        let mut z = SlidingWindow::new(0, w);
        assert!(z.try_take(t0).is_ok());
        assert!(z.try_take(t0).is_err());
    }

    #[test]
    fn a_burst_is_capped_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(5, Duration::from_secs(1), t0);
        // TC0: five sends pass at once, the sixth must wait 200 ms.
        for _ in 0..5 {
            assert!(b.take(t0).is_ok());
        }
        let wait = b.take(t0).unwrap_err();
        assert!((wait.as_millis() as i64 - 200).abs() <= 1, "{wait:?}");
        // TC1: after 200 ms one token is back.
        assert!(b.take(t0 + Duration::from_millis(200)).is_ok());
        // TC2: a long pause refills to capacity, not beyond.
        assert_eq!(b.available(t0 + Duration::from_secs(60)), 5);
    }

    #[test]
    fn charges_for_automatic_replies_delay_the_next_send() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1, Duration::from_secs(1), t0);
        b.charge(t0);
        b.charge(t0);
        assert!(b.take(t0 + Duration::from_millis(900)).is_err());
        assert!(b.take(t0 + Duration::from_secs(2)).is_ok());
    }
}
