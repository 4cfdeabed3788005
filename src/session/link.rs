//! The connection lifecycle of one planned socket, as a sans-I/O state machine.
//!
//! Design: the runner (`session::run`) owns the socket and asks this machine what to do
//! next; each input is one method that consumes the state and returns the next one. Nothing
//! here sleeps or touches a socket, so every transition is unit-tested alone.
//!
//! ```text
//! Idle ──permit refused──▶ Backoff ──elapsed──▶ Idle
//!  │ permit
//!  ▼
//! Connecting ──error/timeout──▶ Backoff (attempt+1)
//!  │ handshake done
//!  ▼
//! Up ──closed/error/idle──▶ Backoff (attempt reset if it was up ≥ stable_after)
//!  │ lifetime reached / server shutdown notice
//!  ▼
//! Rotating ──replacement up──▶ Up        (make-before-break: a spare permit existed)
//!          ──replacement failed──▶ Up    (the old socket stays; retried later)
//! Up ──no spare permit──▶ Idle           (plain reconnect: the old socket is closed first)
//! ```
//!
//! A rotation the venue asks for (`serverShutdown`, OKX 64008) is obeyed only once the socket
//! has been up for `stable_after` (the runner postpones it), and every replacement is a
//! connection attempt under the venue's connect limit: a venue that asks on every connect
//! gets one reconnect per `stable_after`, never a storm.

use std::time::{Duration, Instant};

use super::backoff;

/// Timings of the lifecycle.
#[derive(Debug, Clone, Copy)]
pub struct LinkTimings {
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub stable_after: Duration,
    pub max_lifetime: Duration,
}

/// What a socket is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Ready to ask for a permit and connect.
    Idle { attempt: u32 },
    /// Permit held, handshake in progress.
    Connecting { attempt: u32 },
    /// Connected since `since`.
    Up { since: Instant, attempt: u32 },
    /// Planned replacement under way while the old socket (up since `up_since`) still serves.
    Rotating { since: Instant, up_since: Instant },
    /// Waiting until `until` before the next attempt.
    Backoff { until: Instant, attempt: u32 },
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The peer closed or reset the socket.
    Closed,
    /// A read or write failed.
    Error,
    /// Nothing arrived for `idle_timeout`.
    Idle,
}

impl Link {
    pub fn new() -> Self {
        Link::Idle { attempt: 0 }
    }

    fn attempt(self) -> u32 {
        match self {
            Link::Idle { attempt }
            | Link::Connecting { attempt }
            | Link::Up { attempt, .. }
            | Link::Backoff { attempt, .. } => attempt,
            Link::Rotating { .. } => 0,
        }
    }

    fn backoff(attempt: u32, now: Instant, t: &LinkTimings, unit: f64) -> Link {
        let d = backoff::jitter(backoff::delay(attempt, t.backoff_min, t.backoff_max), unit);
        Link::Backoff {
            until: crate::time::after(now, d),
            attempt: attempt.saturating_add(1),
        }
    }

    /// A permit was granted: connect.
    pub fn permit_granted(self) -> Link {
        Link::Connecting {
            attempt: self.attempt(),
        }
    }

    /// The budget refused a permit: wait like a failed attempt.
    pub fn permit_refused(self, now: Instant, t: &LinkTimings, unit: f64) -> Link {
        Link::backoff(self.attempt(), now, t, unit)
    }

    /// The handshake failed or timed out.
    pub fn connect_failed(self, now: Instant, t: &LinkTimings, unit: f64) -> Link {
        Link::backoff(self.attempt(), now, t, unit)
    }

    /// The handshake completed.
    pub fn connected(self, now: Instant) -> Link {
        Link::Up {
            since: now,
            attempt: self.attempt(),
        }
    }

    /// The connection ended unplanned. A connection that was stable resets the backoff.
    pub fn ended(self, _why: EndReason, now: Instant, t: &LinkTimings, unit: f64) -> Link {
        match self {
            Link::Up { since, attempt } => {
                let attempt = if now.saturating_duration_since(since) >= t.stable_after {
                    0
                } else {
                    attempt
                };
                Link::backoff(attempt, now, t, unit)
            }
            Link::Rotating { .. } => Link::backoff(0, now, t, unit),
            other => Link::backoff(other.attempt(), now, t, unit),
        }
    }

    /// Whether an `Up` socket must be replaced now (lifetime reached).
    pub fn due_for_rotation(self, now: Instant, t: &LinkTimings) -> bool {
        matches!(self, Link::Up { since, .. } if now.saturating_duration_since(since) >= t.max_lifetime)
    }

    /// Start a planned replacement (lifetime or server notice).
    pub fn rotate(self, now: Instant) -> Link {
        match self {
            Link::Up { since, .. } => Link::Rotating {
                since: now,
                up_since: since,
            },
            other => other,
        }
    }

    /// The replacement could not connect: the old socket keeps serving.
    pub fn rotation_failed(self) -> Link {
        match self {
            Link::Rotating { up_since, .. } => Link::Up {
                since: up_since,
                attempt: 0,
            },
            other => other,
        }
    }

    /// The replacement is up; it becomes the live socket.
    pub fn rotated(self, now: Instant) -> Link {
        Link::Up {
            since: now,
            attempt: 0,
        }
    }

    /// No spare permit for make-before-break: close the old socket, then reconnect at once.
    pub fn rotate_by_reconnect(self) -> Link {
        Link::Idle { attempt: 0 }
    }

    /// The backoff elapsed.
    pub fn backoff_elapsed(self, now: Instant) -> Link {
        match self {
            Link::Backoff { until, attempt } if now >= until => Link::Idle { attempt },
            other => other,
        }
    }
}

impl Default for Link {
    fn default() -> Self {
        Link::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: LinkTimings = LinkTimings {
        backoff_min: Duration::from_secs(1),
        backoff_max: Duration::from_secs(8),
        stable_after: Duration::from_secs(60),
        max_lifetime: Duration::from_secs(3600),
    };

    #[test]
    fn tc0_a_granted_permit_starts_connecting() {
        assert_eq!(
            Link::new().permit_granted(),
            Link::Connecting { attempt: 0 }
        );
    }

    #[test]
    fn tc1_a_refused_permit_backs_off_like_a_failure() {
        let now = Instant::now();
        let l = Link::new().permit_refused(now, &T, 1.0);
        assert_eq!(
            l,
            Link::Backoff {
                until: now + T.backoff_min,
                attempt: 1
            }
        );
    }

    #[test]
    fn tc2_repeated_failures_grow_the_backoff_to_the_cap() {
        let mut now = Instant::now();
        let mut l = Link::new();
        let mut waits = Vec::new();
        for _ in 0..6 {
            l = l.permit_granted().connect_failed(now, &T, 1.0);
            let Link::Backoff { until, .. } = l else {
                panic!("{l:?}")
            };
            waits.push((until - now).as_secs());
            now = until;
            l = l.backoff_elapsed(now);
        }
        assert_eq!(waits, [1, 2, 4, 8, 8, 8]);
    }

    #[test]
    fn tc3_backoff_does_not_end_early() {
        let now = Instant::now();
        let l = Link::Backoff {
            until: now + Duration::from_secs(1),
            attempt: 2,
        };
        assert_eq!(l.backoff_elapsed(now), l);
        assert_eq!(
            l.backoff_elapsed(now + Duration::from_secs(1)),
            Link::Idle { attempt: 2 }
        );
    }

    #[test]
    fn tc4_a_stable_connection_resets_the_backoff() {
        let now = Instant::now();
        let up = Link::Connecting { attempt: 5 }.connected(now);
        let after = now + T.stable_after;
        assert_eq!(
            up.ended(EndReason::Closed, after, &T, 1.0),
            Link::Backoff {
                until: after + T.backoff_min,
                attempt: 1
            }
        );
    }

    #[test]
    fn tc5_a_short_lived_connection_keeps_growing_the_backoff() {
        let now = Instant::now();
        let up = Link::Connecting { attempt: 3 }.connected(now);
        let after = now + Duration::from_secs(1);
        assert_eq!(
            up.ended(EndReason::Error, after, &T, 1.0),
            Link::Backoff {
                until: after + Duration::from_secs(8),
                attempt: 4
            }
        );
    }

    #[test]
    fn tc6_rotation_is_due_at_the_lifetime() {
        let now = Instant::now();
        let up = Link::new().permit_granted().connected(now);
        assert!(!up.due_for_rotation(now + T.max_lifetime - Duration::from_secs(1), &T));
        assert!(up.due_for_rotation(now + T.max_lifetime, &T));
    }

    #[test]
    fn tc7_rotation_make_before_break_and_fallback() {
        let now = Instant::now();
        let up = Link::new().permit_granted().connected(now);
        let later = now + Duration::from_secs(5);
        let rot = up.rotate(later);
        assert_eq!(
            rot,
            Link::Rotating {
                since: later,
                up_since: now
            }
        );
        // TC: a failed replacement leaves the old socket up, with its age.
        assert_eq!(
            rot.rotation_failed(),
            Link::Up {
                since: now,
                attempt: 0
            }
        );
        assert_eq!(
            rot.rotated(later),
            Link::Up {
                since: later,
                attempt: 0
            }
        );
        assert_eq!(rot.rotate_by_reconnect(), Link::Idle { attempt: 0 });
    }
}
