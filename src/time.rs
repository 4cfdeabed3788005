//! Time arithmetic that input cannot break.
//!
//! Design: every `Instant + Duration` that a venue's number or a config value reaches goes
//! through [`after`], which saturates instead of panicking (std's `Add` panics on overflow), and
//! every delay a venue asks for goes through [`venue_delay`], which caps it. A venue that says
//! "retry after 18446744073709551615 seconds" gets [`MAX_VENUE_DELAY`], a log line and a
//! counter upstream of here, never a panic or a task stuck forever.
//!
//! Owns: the caps. Must not touch: clocks (callers pass `now`), sockets.

use std::time::{Duration, Instant, SystemTime};

/// The longest delay a venue can impose on us in one answer (`Retry-After`, a 418 ban): long
/// enough to honour real bans and back-offs, short enough that a bad header costs an hour of
/// one stream at most, never the process.
pub const MAX_VENUE_DELAY: Duration = Duration::from_secs(3600);

/// `now` moved on by `d` with `checked_add`, never panicking: `d` is capped at about a year,
/// a day is taken if that overflows, and `now` itself if even that does.
pub fn after(now: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(365 * 24 * 3600);
    now.checked_add(d.min(FAR))
        .or_else(|| now.checked_add(FAR / 365))
        .unwrap_or(now)
}

/// A venue-given delay, capped at [`MAX_VENUE_DELAY`].
pub fn venue_delay(d: Duration) -> Duration {
    d.min(MAX_VENUE_DELAY)
}

/// Reads an HTTP `Retry-After` value: delay-seconds (`120`) or an HTTP-date, relative to
/// `now`. Capped at [`MAX_VENUE_DELAY`]; a date in the past is zero; anything else (negative,
/// fractional, garbage, empty) is `None`, as if the header were absent.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Digits only, so the one way to fail is more digits than a u64 holds: still "a very
        // long time", which is the cap.
        return Some(v.parse::<u64>().map_or(MAX_VENUE_DELAY, |secs| {
            venue_delay(Duration::from_secs(secs))
        }));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(venue_delay(
        at.duration_since(now).unwrap_or(Duration::ZERO),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_both_forms_and_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        // TC0: delay-seconds, zero and small.
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        // TC1: the type's maximum and beyond are capped.
        assert_eq!(
            parse_retry_after("18446744073709551615", now),
            Some(MAX_VENUE_DELAY)
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(MAX_VENUE_DELAY)
        );
        // TC2: an HTTP-date 90 s ahead; one in the past is zero; one far ahead is capped.
        let at = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(parse_retry_after(&at, now), Some(Duration::from_secs(90)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now),
            Some(MAX_VENUE_DELAY)
        );
        // TC3: negative, fractional, empty, garbage: as if absent.
        for bad in ["-1", "1.5", "", "soon", "1e9"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn instants_saturate_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        let far = after(now, Duration::MAX);
        assert!(far > now + Duration::from_secs(364 * 24 * 3600));
        assert_eq!(venue_delay(Duration::MAX), MAX_VENUE_DELAY);
    }
}
