//! Reconnect backoff: capped exponential with jitter, reset after a stable period.
//!
//! Pure functions of the attempt number, so the edge values are testable without a clock.

use std::time::Duration;

/// Delay before reconnect attempt `attempt` (0 = first retry): `min * 2^attempt`, capped at `max`.
/// Attempt 0 already waits `min`: there is no zero-delay retry loop.
pub fn delay(attempt: u32, min: Duration, max: Duration) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    min.checked_mul(factor).unwrap_or(max).min(max).max(min)
}

/// "Equal jitter": a delay drawn from `[d/2, d]`, so sockets of many boxes don't reconnect in
/// lockstep yet never retry sooner than half the nominal delay. `unit` is uniform in `[0, 1)`
/// (passed in to keep this function pure).
pub fn jitter(d: Duration, unit: f64) -> Duration {
    let unit = unit.clamp(0.0, 1.0);
    d / 2 + d.mul_f64(unit / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn delays_double_from_min_and_stop_at_max() {
        // TC0: the first retry waits min, never zero.
        assert_eq!(delay(0, MIN, MAX), MIN);
        // TC1: doubles.
        assert_eq!(delay(1, MIN, MAX), Duration::from_secs(1));
        assert_eq!(delay(5, MIN, MAX), Duration::from_secs(16));
        // TC2: capped.
        assert_eq!(delay(6, MIN, MAX), MAX);
        // TC3: huge attempts don't overflow.
        assert_eq!(delay(u32::MAX, MIN, MAX), MAX);
    }

    #[test]
    fn jitter_stays_within_half_to_full() {
        let d = Duration::from_secs(10);
        assert_eq!(jitter(d, 0.0), Duration::from_secs(5));
        assert_eq!(jitter(d, 1.0), d);
        assert_eq!(jitter(d, 7.0), d);
        let mid = jitter(d, 0.5);
        assert!(mid > Duration::from_secs(5) && mid < d);
    }
}
