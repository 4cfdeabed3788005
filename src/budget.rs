//! The connection budget (DESIGN rule 2).
//!
//! Design: every outgoing socket (WebSocket, REST keep-alive, upstream) holds a [`Permit`] from
//! one [`Budget`]. The permit is meant to live *inside* the connection value, so it is released
//! exactly when the socket is dropped (closed), never earlier. Asking for a permit never waits:
//! a refusal is counted, logged once per refusal, and handed back to the caller, who backs off.
//! There is no way to open a socket past the budget, because the socket constructors in
//! `net::` take the permit by value.
//!
//! Owns: the permit count and the per-socket gauge `marketbox_ws_connections` bookkeeping for
//! whatever it labels. Must not touch: sockets themselves.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::Metrics;

/// What a permit is for; labels the budget metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PermitKind {
    WebSocket,
    Rest,
    Upstream,
}

impl PermitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PermitKind::WebSocket => "websocket",
            PermitKind::Rest => "rest",
            PermitKind::Upstream => "upstream",
        }
    }
}

/// The budget was spent: no socket may be opened now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "connection budget exhausted: {in_use} of {limit} sockets open, refused a {kind} socket for \
     {purpose}; raise [budget] max_connections or wait for a socket to close"
)]
pub struct BudgetExhausted {
    pub kind: &'static str,
    pub purpose: String,
    pub in_use: usize,
    pub limit: usize,
}

struct Inner {
    limit: usize,
    in_use: AtomicUsize,
    peak: AtomicUsize,
    refused: Counter,
    open: Gauge,
}

/// One budget for every outgoing socket of the process. Cheap to clone.
#[derive(Clone)]
pub struct Budget {
    inner: Arc<Inner>,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("limit", &self.inner.limit)
            .field("in_use", &self.in_use())
            .finish()
    }
}

impl Budget {
    /// A budget of `limit` sockets, reporting into `metrics` when given.
    pub fn new(limit: usize, metrics: Option<Arc<Metrics>>) -> Self {
        let (refused, open) = match &metrics {
            Some(m) => (m.budget_refused.clone(), m.budget_in_use.clone()),
            None => (Counter::default(), Gauge::default()),
        };
        if let Some(m) = &metrics {
            m.budget_limit.set(limit as i64);
        }
        Budget {
            inner: Arc::new(Inner {
                limit,
                in_use: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                refused,
                open,
            }),
            metrics,
        }
    }

    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Sockets open right now.
    pub fn in_use(&self) -> usize {
        self.inner.in_use.load(Ordering::Acquire)
    }

    /// Most sockets ever open at once.
    pub fn peak(&self) -> usize {
        self.inner.peak.load(Ordering::Acquire)
    }

    /// Spare permits right now (make-before-break asks this before it tries).
    pub fn spare(&self) -> usize {
        self.inner.limit.saturating_sub(self.in_use())
    }

    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// Takes a permit or refuses at once; a refusal is counted and logged.
    pub fn try_acquire(&self, kind: PermitKind, purpose: &str) -> Result<Permit, BudgetExhausted> {
        let inner = &self.inner;
        let mut cur = inner.in_use.load(Ordering::Acquire);
        loop {
            if cur >= inner.limit {
                inner.refused.inc();
                let err = BudgetExhausted {
                    kind: kind.as_str(),
                    purpose: purpose.to_owned(),
                    in_use: cur,
                    limit: inner.limit,
                };
                tracing::warn!(%err, "permit refused");
                return Err(err);
            }
            match inner.in_use.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        inner.peak.fetch_max(cur + 1, Ordering::AcqRel);
        inner.open.inc();
        Ok(Permit {
            inner: Arc::clone(inner),
            kind,
        })
    }
}

/// The right to hold one open socket. Keep it inside the connection value; dropping it
/// returns the permit.
#[must_use = "a permit must live inside the connection it allows"]
pub struct Permit {
    inner: Arc<Inner>,
    kind: PermitKind,
}

impl Permit {
    pub fn kind(&self) -> PermitKind {
        self.kind
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").field("kind", &self.kind).finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.inner.in_use.fetch_sub(1, Ordering::AcqRel);
        self.inner.open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_refused_past_the_limit_and_returned_on_drop() {
        let b = Budget::new(2, None);
        let p1 = b
            .try_acquire(PermitKind::WebSocket, "a")
            .expect("a free permit");
        let p2 = b.try_acquire(PermitKind::Rest, "b").expect("a free permit");
        let err = b.try_acquire(PermitKind::WebSocket, "c").unwrap_err();
        assert_eq!((err.in_use, err.limit), (2, 2));
        assert_eq!(b.inner.refused.get(), 1);
        drop(p1);
        assert_eq!(b.in_use(), 1);
        let _p3 = b
            .try_acquire(PermitKind::WebSocket, "c")
            .expect("a free permit");
        assert_eq!(b.peak(), 2);
        drop(p2);
        assert_eq!(b.spare(), 1);
    }

    #[test]
    fn concurrent_acquirers_never_exceed_the_limit() {
        let b = Budget::new(3, None);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        if let Ok(p) = b.try_acquire(PermitKind::WebSocket, "t") {
                            assert!(b.in_use() <= 3);
                            drop(p);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("the thread finished without panicking");
        }
        assert!(b.peak() <= 3);
        assert_eq!(b.in_use(), 0);
    }
}
