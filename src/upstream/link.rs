//! The broker upstreams' common half: the in-flight window, the error kinds, and the
//! supervisor that owns the connection permit and the tokio runtime.
//!
//! Design: NATS (`async-nats`) and MQTT (`rumqttc`) need tokio; nothing of tokio may run in
//! the feed path. So the upstream runs on its own thread (`marketbox-upstream`), which loops:
//!
//! ```text
//!   take a budget permit ──refused──▶ count, back off ─┐
//!        │                                             │
//!        ▼                                             │
//!   new current-thread runtime ─▶ one session (connect, check, publish until it fails)
//!        │                                             │
//!        ▼                                             │
//!   drop the runtime (every task of the client ends: its socket is closed)
//!   drop the permit ─▶ drained? done : back off ───────┘
//! ```
//!
//! A session also ends when the settings changed ([`Control::reconnect`], the console's
//! `apply`): the next one starts at once, without backoff, with the new settings.
//!
//! One session is one client and at most one socket: the clients' own reconnect logic is
//! switched off (a lost connection ends the session), because a client that reconnects by
//! itself could let newer messages overtake ones lost with the old socket, and because it
//! would open a socket the budget cannot see. Dropping the runtime is the one way to end
//! `async-nats`' connection task deterministically, so the permit is released only after the
//! socket is closed (DESIGN rule 2). Only one runtime exists at a time, on one thread.
//!
//! The [`Window`] holds every record taken from the spool and not yet acknowledged, in
//! spool order, and outlives sessions: a new session re-sends it from the oldest record, in
//! order, before anything newer. JetStream drops the copies it already stored (`Nats-Msg-Id`
//! within the duplicate window); MQTT QoS 1 may deliver them twice, which the consumer sees by
//! `id`.
//!
//! Owns: the upstream thread, the upstream permit, session backoff, the window. Must not
//! touch: encodings, the spool's internals, broker protocol details (in `nats.rs`, `mqtt.rs`).
//!
//! ## Cancel safety
//! A session future may be dropped at any await (the runtime is dropped with it); the window
//! is owned by the supervisor and stays consistent because it is only changed between awaits.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use event_listener::Event;
use futures_lite::FutureExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use super::spool::{Record, Spool};
use crate::budget::{Budget, PermitKind};
use crate::metrics::{Metrics, UpstreamErrorLabels};
use crate::session::backoff;

/// What went wrong with the upstream; the kind labels `marketbox_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// TCP connect, DNS, connect timeout.
    Connect,
    /// The TLS handshake failed.
    Tls,
    /// The broker refused the credentials.
    Auth,
    /// The JetStream stream is missing and cannot be created, or does not take our subjects.
    Stream,
    /// A publish was refused or its acknowledgement did not come in time.
    Publish,
    /// The connection was lost.
    Disconnected,
    /// The connection budget had no permit.
    Budget,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Connect,
        ErrorKind::Tls,
        ErrorKind::Auth,
        ErrorKind::Stream,
        ErrorKind::Publish,
        ErrorKind::Disconnected,
        ErrorKind::Budget,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::Auth => "auth",
            ErrorKind::Stream => "stream",
            ErrorKind::Publish => "publish",
            ErrorKind::Disconnected => "disconnected",
            ErrorKind::Budget => "refused_by_budget",
        }
    }
}

/// Why a session ended badly: the kind, and a message that names the config key to look at.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SessionError {
    pub kind: ErrorKind,
    pub message: String,
}

impl SessionError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        SessionError {
            kind,
            message: message.into(),
        }
    }
}

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The spool was closed and everything in it was acknowledged.
    Drained,
    /// [`Control::abort`] was called.
    Aborted,
    /// [`Control::reconnect`] was called: the next session starts at once (new settings),
    /// and re-sends the window.
    Reconnect,
    /// The connection failed; the window is re-sent by the next session.
    Failed {
        error: SessionError,
        /// Whether the session got as far as publishing (resets the backoff when it lasted).
        connected: bool,
    },
}

/// Why the upstream thread gave up for good.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot start the upstream thread or its runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("the upstream thread panicked")]
    Panicked,
    #[error("{0}")]
    Config(String),
}

/// Shared between the upstream thread and its handle: the abort switch (end without
/// draining: tests, shutdown with a dead broker) and the last failure, for status.
#[derive(Default)]
pub struct Control {
    flag: AtomicBool,
    /// How many reconnects were asked for (a session ends when this moves).
    reconnects: std::sync::atomic::AtomicU64,
    event: Event,
    last_error: std::sync::Mutex<Option<String>>,
}

impl Control {
    /// The last failure's message (it names the config key to look at).
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_last_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }

    pub fn abort(&self) {
        self.flag.store(true, Ordering::Release);
        self.event.notify(usize::MAX);
    }

    pub fn is_aborted(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Ends the current session, not the upstream: the supervisor connects again at once,
    /// with the settings it reads then (the console changed them), and re-sends the window.
    pub fn reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::AcqRel);
        self.event.notify(usize::MAX);
    }

    fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Acquire)
    }

    /// Resolves once a reconnect was asked after `seen` ([`Control::reconnects`]).
    async fn reconnect_after(&self, seen: u64) {
        loop {
            let l = self.event.listen();
            if self.reconnects() != seen {
                return;
            }
            l.await;
        }
    }

    /// Resolves once aborted.
    pub async fn aborted(&self) {
        loop {
            let l = self.event.listen();
            if self.is_aborted() {
                return;
            }
            l.await;
        }
    }
}

/// Metric handles of the upstream, resolved once.
#[derive(Clone)]
pub struct Handles {
    pub up: Gauge,
    pub published: Counter,
    pub acked: Counter,
    pub duplicates: Counter,
    pub latency: Histogram,
    errors: Vec<(ErrorKind, Counter)>,
    /// Also told every stamp-to-ack latency in ns (benchmarks want exact percentiles).
    pub observer: Option<AckObserver>,
}

/// A callback given each acknowledged message's stamp-to-ack latency, in nanoseconds.
pub type AckObserver = Arc<dyn Fn(u64) + Send + Sync>;

impl Handles {
    pub fn new(m: &Metrics) -> Self {
        Handles {
            up: m.upstream_up.clone(),
            published: m.upstream_published.clone(),
            acked: m.upstream_acked.clone(),
            duplicates: m.upstream_duplicates.clone(),
            latency: m.upstream_ack_latency.clone(),
            errors: ErrorKind::ALL
                .iter()
                .map(|k| {
                    (
                        *k,
                        m.upstream_errors
                            .get_or_create(&UpstreamErrorLabels { kind: k.as_str() })
                            .clone(),
                    )
                })
                .collect(),
            observer: None,
        }
    }

    pub fn error(&self, kind: ErrorKind) {
        if let Some((_, c)) = self.errors.iter().find(|(k, _)| *k == kind) {
            c.inc();
        }
    }
}

/// Sets `marketbox_upstream_up` to 1 for as long as it lives.
pub struct UpGuard(Gauge);

impl UpGuard {
    pub fn new(g: &Gauge) -> Self {
        g.set(1);
        UpGuard(g.clone())
    }
}

impl Drop for UpGuard {
    fn drop(&mut self) {
        self.0.set(0);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// Not written to the current connection.
    Queued,
    /// Written; waiting for the broker's acknowledgement.
    Sent,
    Acked,
}

/// Records taken from the spool and not yet acknowledged, oldest first (sequence numbers
/// ascending). Pure: no I/O.
pub struct Window {
    slots: VecDeque<(Record, SlotState)>,
    cap: usize,
    /// Index of the first `Queued` slot.
    next: usize,
}

impl Window {
    pub fn new(cap: usize) -> Self {
        Window {
            slots: VecDeque::with_capacity(cap.max(1)),
            cap: cap.max(1),
            next: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Records that can still be taken from the spool.
    pub fn room(&self) -> usize {
        self.cap - self.slots.len().min(self.cap)
    }

    /// Appends a record taken from the spool. Sequence numbers only grow; a record at or
    /// below the newest one is already here (or was acknowledged) and is not taken twice.
    pub fn push(&mut self, rec: Record) -> bool {
        if self.slots.back().is_some_and(|b| b.0.sseq >= rec.sseq) {
            tracing::error!(
                sseq = rec.sseq,
                "the spool handed out a record twice (a bug); ignored"
            );
            return false;
        }
        self.slots.push_back((rec, SlotState::Queued));
        true
    }

    /// A new connection: everything unacknowledged is to be sent again, oldest first.
    pub fn resend_all(&mut self) {
        for s in &mut self.slots {
            if s.1 == SlotState::Sent {
                s.1 = SlotState::Queued;
            }
        }
        self.next = self
            .slots
            .iter()
            .position(|s| s.1 == SlotState::Queued)
            .unwrap_or(self.slots.len());
    }

    /// The oldest record not yet written to this connection; call [`Window::mark_sent`] once
    /// it is.
    pub fn next_unsent(&self) -> Option<&Record> {
        self.slots
            .get(self.next)
            .filter(|s| s.1 == SlotState::Queued)
            .map(|s| &s.0)
    }

    pub fn mark_sent(&mut self) {
        if let Some(s) = self.slots.get_mut(self.next) {
            s.1 = SlotState::Sent;
            self.next += 1;
            while self
                .slots
                .get(self.next)
                .is_some_and(|s| s.1 != SlotState::Queued)
            {
                self.next += 1;
            }
        }
    }

    /// The broker acknowledged `sseq`. Returns the record's stamp (`ts_local_ns`) when it was
    /// in flight, `None` for an unknown or repeated acknowledgement.
    pub fn ack(&mut self, sseq: u64) -> Option<u64> {
        let i = self.slots.binary_search_by_key(&sseq, |s| s.0.sseq).ok()?;
        let slot = &mut self.slots[i];
        if slot.1 != SlotState::Sent {
            return None;
        }
        slot.1 = SlotState::Acked;
        Some(slot.0.header.ts_local_ns)
    }

    /// Drops the acknowledged records at the front; returns the highest sequence number below
    /// which everything is acknowledged, when that moved.
    pub fn pop_acked(&mut self) -> Option<u64> {
        let mut through = None;
        while self.slots.front().is_some_and(|s| s.1 == SlotState::Acked) {
            through = self.slots.pop_front().map(|s| s.0.sseq);
            self.next = self.next.saturating_sub(1);
        }
        through
    }
}

/// Moves up to `window.room()` records from the spool into the window, waiting for the first.
/// `false` once the spool is closed and drained. Cancel safe.
pub async fn fill(spool: &Spool, window: &mut Window, scratch: &mut VecDeque<Record>) -> bool {
    let room = window.room();
    if room == 0 {
        return std::future::pending().await;
    }
    let more = spool.pop_batch(room, scratch).await;
    for r in scratch.drain(..) {
        let _ = window.push(r);
    }
    more
}

/// Records an acknowledgement: counters, latency, and the spool's cursor.
pub fn acked(h: &Handles, window: &mut Window, spool: &Spool, sseq: u64) {
    if let Some(stamp) = window.ack(sseq) {
        h.acked.inc();
        let ns = super::now_ns().saturating_sub(stamp);
        h.latency.observe(ns as f64 / 1_000_000_000.0);
        if let Some(o) = &h.observer {
            o(ns);
        }
    }
    if let Some(through) = window.pop_acked() {
        spool.ack_through(through);
    }
}

/// One session, borrowing the window.
pub type SessionFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = SessionEnd> + 'a>>;

/// Settings the supervisor needs.
pub struct Supervisor {
    pub name: &'static str,
    pub spool: Spool,
    pub budget: Budget,
    pub handles: Handles,
    pub stop: Arc<Control>,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub stable_after: Duration,
    pub window: usize,
}

impl Supervisor {
    /// Runs sessions until the spool is drained or the upstream is aborted. `session` builds
    /// one session future per connection; it runs on a fresh runtime that is dropped before
    /// the permit.
    pub fn run<F>(self, mut session: F) -> Result<(), UpstreamError>
    where
        F: for<'a> FnMut(&'a mut Window) -> SessionFuture<'a>,
    {
        let mut window = Window::new(self.window);
        let mut attempt = 0u32;
        let mut last_error: Option<String> = None;
        let mut failures = 0u64;
        loop {
            if self.stop.is_aborted() {
                return Ok(());
            }
            let permit = match self.budget.try_acquire(PermitKind::Upstream, self.name) {
                Ok(p) => p,
                Err(_) => {
                    // Counted and logged by the budget.
                    self.handles.error(ErrorKind::Budget);
                    self.pause(attempt);
                    attempt = attempt.saturating_add(1);
                    continue;
                }
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(UpstreamError::Runtime)?;
            let started = Instant::now();
            let stop = self.stop.clone();
            let seen = stop.reconnects();
            let end = rt.block_on(async {
                session(&mut window)
                    .or(async {
                        stop.aborted().await;
                        SessionEnd::Aborted
                    })
                    .or(async {
                        stop.reconnect_after(seen).await;
                        SessionEnd::Reconnect
                    })
                    .await
            });
            // The client's tasks end here, closing its socket; only then the permit returns.
            drop(rt);
            self.handles.up.set(0);
            drop(permit);
            match end {
                SessionEnd::Drained | SessionEnd::Aborted => return Ok(()),
                SessionEnd::Reconnect => {
                    tracing::info!(
                        upstream = self.name,
                        waiting = window.len(),
                        "the upstream settings changed; connecting again (unacknowledged messages are sent again)"
                    );
                    self.stop.set_last_error(None);
                    last_error = None;
                    attempt = 0;
                }
                SessionEnd::Failed { error, connected } => {
                    self.handles.error(error.kind);
                    failures += 1;
                    let msg = error.to_string();
                    self.stop.set_last_error(Some(msg.clone()));
                    if last_error.as_deref() != Some(&msg) {
                        tracing::error!(
                            upstream = self.name,
                            kind = error.kind.as_str(),
                            waiting = window.len(),
                            "{msg}"
                        );
                        last_error = Some(msg);
                    } else {
                        tracing::debug!(upstream = self.name, failures, "{msg}");
                    }
                    if connected && started.elapsed() >= self.stable_after {
                        attempt = 0;
                    }
                    self.pause(attempt);
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// Waits the backoff for `attempt`, or less when aborted.
    fn pause(&self, attempt: u32) {
        let d = backoff::jitter(
            backoff::delay(attempt, self.backoff_min, self.backoff_max),
            fastrand::f64(),
        );
        let stop = self.stop.clone();
        futures_lite::future::block_on(
            async {
                smol::Timer::after(d).await;
            }
            .or(async move { stop.aborted().await }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Channel, Exchange, Market, MsgId, Symbol};
    use crate::upstream::spool::RecordHeader;

    fn rec(sseq: u64) -> Record {
        Record {
            sseq,
            header: RecordHeader {
                exchange: Exchange::Binance,
                market: Market::Spot,
                symbol: Symbol::parse("BTC-USDT").expect("valid"),
                channel: Channel::Trade,
                seq: sseq,
                id: MsgId::new(),
                ts_local_ns: sseq * 10,
            },
            payload: vec![1],
        }
    }

    fn sent_all(w: &mut Window) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(r) = w.next_unsent() {
            out.push(r.sseq);
            w.mark_sent();
        }
        out
    }

    #[test]
    fn records_are_sent_once_in_order_and_leave_on_their_ack() {
        let mut w = Window::new(4);
        for s in [3, 5, 9] {
            w.push(rec(s));
        }
        // TC0: room shrinks as records come in.
        assert_eq!(w.room(), 1);
        assert_eq!(sent_all(&mut w), vec![3, 5, 9]);
        assert_eq!(w.next_unsent().map(|r| r.sseq), None);
        // TC1: an ack out of order leaves the front in place.
        assert_eq!(w.ack(5), Some(50));
        assert_eq!(w.pop_acked(), None);
        // TC2: the front's ack releases both.
        assert_eq!(w.ack(3), Some(30));
        assert_eq!(w.pop_acked(), Some(5));
        assert_eq!(w.len(), 1);
        // TC3: a record handed out twice is not taken twice.
        assert!(!w.push(rec(9)));
        assert!(!w.push(rec(4)));
        assert_eq!(w.len(), 1);
        // TC4: repeated and unknown acks change nothing.
        assert_eq!(w.ack(3), None);
        assert_eq!(w.ack(4), None);
        assert_eq!(w.ack(9), Some(90));
        assert_eq!(w.pop_acked(), Some(9));
        assert!(w.is_empty());
    }

    #[test]
    fn a_new_connection_resends_every_unacknowledged_record_oldest_first() {
        let mut w = Window::new(8);
        for s in 1..=5 {
            w.push(rec(s));
        }
        assert_eq!(sent_all(&mut w).len(), 5);
        assert_eq!(w.ack(2), Some(20));
        w.push(rec(6));
        // TC0: 1, 3, 4, 5 were in flight, 6 never sent: all go again in order; 2 does not.
        w.resend_all();
        assert_eq!(sent_all(&mut w), vec![1, 3, 4, 5, 6]);
        // TC1: a record not yet sent cannot be acknowledged.
        w.push(rec(7));
        assert_eq!(w.ack(7), None);
        // TC2: acks after the resend release in order.
        for s in [1, 3, 4, 5, 6] {
            assert!(w.ack(s).is_some());
        }
        assert_eq!(w.pop_acked(), Some(6));
        assert_eq!(sent_all(&mut w), vec![7]);
    }

    #[test]
    fn room_never_underflows() {
        let mut w = Window::new(0);
        assert_eq!(w.room(), 1);
        w.push(rec(1));
        w.push(rec(2));
        assert_eq!(w.room(), 0);
    }
}
