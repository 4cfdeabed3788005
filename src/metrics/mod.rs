//! The one metrics registry (DESIGN rule 6).
//!
//! Design: every family is created here, once, with label sets built from enums and configured
//! names, so the number of series stays bounded. Stages resolve their handles (`Counter`,
//! `Gauge` are cheap `Arc` clones) when a session starts, so the per-message path never hashes a
//! label set or allocates. HTTP serving and remote push plug in on top of [`Metrics::encode`].
//!
//! The registry has two levels: the `marketbox_` families, and beside them (no prefix) the
//! standard `process_*` metrics read from `/proc` at each encode ([`process`]). It encodes in
//! both exposition formats: OpenMetrics 1.0 ([`Metrics::encode`]) and Prometheus text 0.0.4
//! ([`Metrics::encode_prometheus`]), which `/metrics` picks by the `Accept` header and the
//! remote push reads its samples from.
//!
//! Owns: metric names, help texts and label sets. Must not touch: sockets or venue formats.
//!
//! Submodules: [`health`] (`/health` and `/ready` verdicts), [`http`] (the server),
//! [`push`] (Prometheus remote-write), [`process`] (`/proc` figures).

pub mod health;
pub mod http;
pub mod process;
pub mod push;

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::model::{Channel, Exchange, Market};

/// Bucket bounds (seconds) of `marketbox_event_latency_seconds`: from a same-rack millisecond
/// to a half-minute stall.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Labels of a planned socket.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SocketLabels {
    pub exchange: Exchange,
    /// The plan's socket name, e.g. `spot`, `perpetual_public`, `public`.
    pub socket: String,
}

/// Labels of a request the venue refused or never answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscribeErrorLabels {
    pub exchange: Exchange,
    pub socket: String,
    /// The venue's error code (digits only, at most 8, else `other`), or `no_ack` when an arg
    /// was never acknowledged.
    pub code: String,
}

impl SubscribeErrorLabels {
    /// Bounds the label to what a venue code looks like, so a venue cannot grow the series.
    pub fn code(raw: &str) -> String {
        if !raw.is_empty() && raw.len() <= 8 && raw.bytes().all(|b| b.is_ascii_digit()) {
            raw.to_owned()
        } else {
            "other".to_owned()
        }
    }
}

/// Labels of a frame outcome on a socket.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrameLabels {
    pub exchange: Exchange,
    pub socket: String,
    /// `data`, `control`, `malformed`, `oversized`, `unknown`.
    pub kind: &'static str,
}

/// Labels of a per-stream outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub exchange: Exchange,
    pub market: Market,
    pub symbol: String,
    pub channel: Channel,
}

/// Labels of a book resync.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResyncLabels {
    pub exchange: Exchange,
    pub market: Market,
    pub symbol: String,
    /// `gap`, `stale_snapshot`, `checksum`, `truncated`, `buffer_overflow`, `reconnect`.
    pub reason: &'static str,
}

/// Labels of one order book.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BookLabels {
    pub exchange: Exchange,
    pub market: Market,
    pub symbol: String,
}

/// Labels of a per-channel spool outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpoolChannelLabels {
    pub channel: Channel,
}

/// Labels of a spool tier.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpoolTierLabels {
    /// `ram` or `disk`.
    pub tier: &'static str,
}

/// Labels of an upstream failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    /// A fixed set: see `upstream::ErrorKind::as_str`.
    pub kind: &'static str,
}

/// Labels of a supervised task.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    /// `session`, `poller`, `upstream`, … (a fixed set, never venue data).
    pub task: &'static str,
}

/// Labels of a connection attempt outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectLabels {
    pub exchange: Exchange,
    pub socket: String,
    /// `ok`, `refused_by_budget`, `timeout`, `error`.
    pub result: &'static str,
}

/// Labels of a REST request outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RestLabels {
    pub host: String,
    /// HTTP status code, or `error`.
    pub status: String,
}

/// Labels of a REST rate limit: the host and the venue's bucket (`weight`, `books`, `rubik`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimiterLabels {
    pub host: String,
    pub bucket: &'static str,
}

/// Labels naming a REST host.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    pub host: String,
}

/// Labels of the exchange-to-publish latency: per venue pipe and channel (the symbol adds
/// series, not insight: every symbol of a market shares the socket and the clock).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub exchange: Exchange,
    pub market: Market,
    pub channel: Channel,
}

/// Labels of a remote-write attempt outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabels {
    /// `ok`, `retry` (5xx or 429), `rejected` (another status), `error` (no answer).
    pub result: &'static str,
}

/// Labels of remote-write batches given up.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushDropLabels {
    /// `rejected` (a 4xx other than 429), `too_old` (retried past the age cap), `queue_full`.
    pub reason: &'static str,
}

/// Labels of an HTTP request served.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// `/metrics`, `/health`, `/ready`, or `other`.
    pub path: &'static str,
    pub status: u16,
}

/// Buckets of `marketbox_upstream_ack_latency_seconds`: 100 µs to 30 s.
const ACK_LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0,
];

/// Every metric marketbox exports.
pub struct Metrics {
    registry: Registry,
    pub ws_connections: Family<SocketLabels, Gauge>,
    pub connects: Family<ConnectLabels, Counter>,
    pub disconnects: Family<SocketLabels, Counter>,
    pub stale_streams: Family<SocketLabels, Counter>,
    pub rotations: Family<SocketLabels, Counter>,
    pub subscribe_tokens: Family<SocketLabels, Gauge>,
    pub send_queue: Family<SocketLabels, Gauge>,
    pub send_dropped: Family<SocketLabels, Counter>,
    pub rotation_deferred: Family<SocketLabels, Counter>,
    pub subscribe_errors: Family<SubscribeErrorLabels, Counter>,
    pub frames: Family<FrameLabels, Counter>,
    pub resyncs: Family<ResyncLabels, Counter>,
    pub book_levels_dropped: Family<StreamLabels, Counter>,
    pub messages: Family<StreamLabels, Counter>,
    pub duplicates: Family<StreamLabels, Counter>,
    pub rest_requests: Family<RestLabels, Counter>,
    pub poller_up: Family<StreamLabels, Gauge>,
    pub poller_failures: Family<StreamLabels, Counter>,
    pub rest_connections: Family<HostLabels, Gauge>,
    pub rest_weight_used: Family<LimiterLabels, Gauge>,
    pub rest_blocked_until: Family<LimiterLabels, Gauge>,
    pub budget_limit: Gauge,
    pub budget_in_use: Gauge,
    pub budget_refused: Counter,
    pub spool_dropped: Family<SpoolChannelLabels, Counter>,
    pub spool_depth: Family<SpoolTierLabels, Gauge>,
    pub spool_bytes: Family<SpoolTierLabels, Gauge>,
    pub spool_disk_errors: Counter,
    pub spool_backpressure_seconds: Counter<f64, AtomicU64>,
    pub book_verified: Family<BookLabels, Gauge>,
    pub book_deepenings: Family<BookLabels, Counter>,
    pub book_unverified_seconds: Family<BookLabels, Counter<f64, AtomicU64>>,
    pub upstream_up: Gauge,
    pub upstream_published: Counter,
    pub upstream_acked: Counter,
    pub upstream_duplicates: Counter,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub upstream_ack_latency: Histogram,
    pub task_restarts: Family<TaskLabels, Counter>,
    pub stream_last_message: Family<StreamLabels, Gauge<f64, AtomicU64>>,
    pub event_latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    pub plan_ws_connections: Family<SocketLabels, Gauge>,
    pub plan_sockets: Gauge,
    pub push_requests: Family<PushLabels, Counter>,
    pub push_dropped: Family<PushDropLabels, Counter>,
    pub push_last_success: Gauge<f64, AtomicU64>,
    pub push_queue: Gauge,
    pub http_requests: Family<HttpLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("marketbox");
        let m = Metrics {
            ws_connections: Family::default(),
            connects: Family::default(),
            disconnects: Family::default(),
            stale_streams: Family::default(),
            rotations: Family::default(),
            subscribe_tokens: Family::default(),
            send_queue: Family::default(),
            send_dropped: Family::default(),
            rotation_deferred: Family::default(),
            subscribe_errors: Family::default(),
            frames: Family::default(),
            resyncs: Family::default(),
            book_levels_dropped: Family::default(),
            messages: Family::default(),
            duplicates: Family::default(),
            rest_requests: Family::default(),
            poller_up: Family::default(),
            poller_failures: Family::default(),
            rest_connections: Family::default(),
            rest_weight_used: Family::default(),
            rest_blocked_until: Family::default(),
            budget_limit: Gauge::default(),
            budget_in_use: Gauge::default(),
            budget_refused: Counter::default(),
            spool_dropped: Family::default(),
            spool_depth: Family::default(),
            spool_bytes: Family::default(),
            spool_disk_errors: Counter::default(),
            spool_backpressure_seconds: Counter::default(),
            book_verified: Family::default(),
            book_deepenings: Family::default(),
            book_unverified_seconds: Family::default(),
            upstream_up: Gauge::default(),
            upstream_published: Counter::default(),
            upstream_acked: Counter::default(),
            upstream_duplicates: Counter::default(),
            upstream_errors: Family::default(),
            upstream_ack_latency: Histogram::new(ACK_LATENCY_BUCKETS),
            task_restarts: Family::default(),
            stream_last_message: Family::default(),
            event_latency: Family::new_with_constructor(latency_histogram),
            plan_ws_connections: Family::default(),
            plan_sockets: Gauge::default(),
            push_requests: Family::default(),
            push_dropped: Family::default(),
            push_last_success: Gauge::default(),
            push_queue: Gauge::default(),
            http_requests: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "ws_connections",
            "Open WebSocket connections per planned socket",
            m.ws_connections.clone(),
        );
        registry.register(
            "ws_connects",
            "WebSocket connection attempts by result",
            m.connects.clone(),
        );
        registry.register(
            "ws_disconnects",
            "WebSocket connections that ended, for any reason",
            m.disconnects.clone(),
        );
        registry.register(
            "ws_stale_streams",
            "Subscribed streams that went quiet while the socket lived, then resubscribed",
            m.stale_streams.clone(),
        );
        registry.register(
            "ws_rotations",
            "Planned reconnects (lifetime limit, server shutdown notice)",
            m.rotations.clone(),
        );
        registry.register(
            "ws_subscribe_tokens",
            "Subscribe/unsubscribe requests the venue still allows on this connection (OKX: 480 per hour)",
            m.subscribe_tokens.clone(),
        );
        registry.register(
            "ws_send_queue",
            "Frames queued to send on a socket, waiting for the venue's message rate",
            m.send_queue.clone(),
        );
        registry.register(
            "ws_send_dropped",
            "Frames never sent because a socket's send queue was full",
            m.send_dropped.clone(),
        );
        registry.register(
            "ws_rotation_deferred",
            "Venue requests to reconnect (serverShutdown, notice 64008) postponed because the connection was younger than [session] stable_after",
            m.rotation_deferred.clone(),
        );
        registry.register(
            "ws_subscribe_errors",
            "Subscription requests the venue refused (error events, by code) or left unacknowledged (code no_ack)",
            m.subscribe_errors.clone(),
        );
        registry.register(
            "ws_frames",
            "WebSocket frames received by kind (data, control, malformed, oversized, unknown)",
            m.frames.clone(),
        );
        registry.register(
            "book_resyncs",
            "Order books marked unsynced and requested again, by reason",
            m.resyncs.clone(),
        );
        registry.register(
            "book_levels_dropped",
            "Levels dropped because a fixed-capacity book side was full",
            m.book_levels_dropped.clone(),
        );
        registry.register(
            "messages",
            "Normalized messages handed to the spool",
            m.messages.clone(),
        );
        registry.register(
            "messages_duplicate",
            "Messages not published because the same id was just published on the stream (socket overlap during a rotation, venue re-sends)",
            m.duplicates.clone(),
        );
        registry.register(
            "rest_requests",
            "REST requests by host and HTTP status",
            m.rest_requests.clone(),
        );
        registry.register(
            "poller_up",
            "1 while a REST poller's last poll succeeded, 0 while it is failing",
            m.poller_up.clone(),
        );
        registry.register(
            "poller_failures",
            "Failed REST polls (network, HTTP status, body), per stream",
            m.poller_failures.clone(),
        );
        registry.register(
            "rest_connections",
            "Open REST keep-alive connections per host",
            m.rest_connections.clone(),
        );
        registry.register(
            "rest_weight_used",
            "Request weight used in the current window, per host and rate-limit bucket",
            m.rest_weight_used.clone(),
        );
        registry.register(
            "rest_blocked_until_timestamp_seconds",
            "When the venue's last 429/418 block of a host ends (Unix seconds; venue delays are capped at 1 h)",
            m.rest_blocked_until.clone(),
        );
        registry.register(
            "budget_limit",
            "Connection budget: sockets allowed",
            m.budget_limit.clone(),
        );
        registry.register(
            "budget_in_use",
            "Connection budget: sockets open",
            m.budget_in_use.clone(),
        );
        registry.register(
            "budget_refused",
            "Socket permits refused because the budget was spent",
            m.budget_refused.clone(),
        );
        registry.register(
            "spool_dropped",
            "Messages dropped from the spool (oldest first) because it was full, per channel",
            m.spool_dropped.clone(),
        );
        registry.register(
            "spool_depth",
            "Messages waiting in the spool, per tier (ram, disk)",
            m.spool_depth.clone(),
        );
        registry.register(
            "spool_bytes",
            "Bytes held by the spool, per tier (ram, disk)",
            m.spool_bytes.clone(),
        );
        registry.register(
            "spool_disk_errors",
            "Writes to the on-disk spool that failed (disk full, I/O error); the batch went on from RAM",
            m.spool_disk_errors.clone(),
        );
        registry.register(
            "spool_backpressure_seconds",
            "Time the sessions paused reading because more than 1 MiB (a quarter of a smaller ram_bytes) waited in the spool's RAM ring (each pause at most 250 ms, then the ring takes the backlog)",
            m.spool_backpressure_seconds.clone(),
        );
        registry.register(
            "book_verified",
            "1 while an order book is verified and published, 0 while it is unsynced",
            m.book_verified.clone(),
        );
        registry.register(
            "book_deepenings",
            "Deeper snapshots spliced onto a verified book whose known range got thin (it stayed verified)",
            m.book_deepenings.clone(),
        );
        registry.register(
            "book_unverified_seconds",
            "Seconds an order book spent unverified (verified share = 1 - rate of this)",
            m.book_unverified_seconds.clone(),
        );
        registry.register(
            "upstream_up",
            "1 while the upstream connection is established (stdout: always 1)",
            m.upstream_up.clone(),
        );
        registry.register(
            "upstream_published",
            "Messages handed to the upstream broker, re-sends included",
            m.upstream_published.clone(),
        );
        registry.register(
            "upstream_acked",
            "Messages the upstream broker acknowledged (JetStream ack, MQTT PUBACK)",
            m.upstream_acked.clone(),
        );
        registry.register(
            "upstream_duplicates",
            "Acknowledged messages JetStream reported as duplicates (dropped by Msg-Id)",
            m.upstream_duplicates.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream failures by kind; each one closes the connection and re-sends what was unacknowledged",
            m.upstream_errors.clone(),
        );
        registry.register(
            "upstream_ack_latency_seconds",
            "From stamping a message (ts_local_ns) to the broker's acknowledgement",
            m.upstream_ack_latency.clone(),
        );
        registry.register(
            "task_restarts",
            "Supervised tasks that ended or panicked and were restarted",
            m.task_restarts.clone(),
        );
        registry.register(
            "stream_last_message_timestamp_seconds",
            "Unix time of the last message published on a stream (age = time() - this; 0 before the first)",
            m.stream_last_message.clone(),
        );
        registry.register(
            "event_latency_seconds",
            "Time from the exchange's event timestamp to the message entering the spool",
            m.event_latency.clone(),
        );
        registry.register(
            "plan_ws_connections",
            "WebSockets the plan holds open per socket (compare marketbox_ws_connections)",
            m.plan_ws_connections.clone(),
        );
        registry.register(
            "plan_sockets",
            "Sockets of every kind the plan holds open at once (compare marketbox_budget_in_use)",
            m.plan_sockets.clone(),
        );
        registry.register(
            "push_requests",
            "Remote-write requests by result (ok, retry, rejected, error)",
            m.push_requests.clone(),
        );
        registry.register(
            "push_dropped_batches",
            "Remote-write batches given up, by reason (rejected, too_old, queue_full)",
            m.push_dropped.clone(),
        );
        registry.register(
            "push_last_success_timestamp_seconds",
            "Unix time of the last remote-write request the receiver accepted",
            m.push_last_success.clone(),
        );
        registry.register(
            "push_queue_batches",
            "Remote-write batches waiting to be sent (retries included)",
            m.push_queue.clone(),
        );
        registry.register(
            "http_requests",
            "Requests served on the metrics listener, by path and status",
            m.http_requests.clone(),
        );
        Metrics {
            registry: root,
            ..m
        }
    }

    /// The registry in the OpenMetrics 1.0 text format (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The registry in the Prometheus text format 0.0.4 (what `promtool check metrics` reads
    /// and what the remote push samples).
    pub fn encode_prometheus(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// Removes every series of a stream no longer planned (a symbol removed at the console),
    /// and of its book when it is an `orderbook` stream, so neither `/metrics` nor `status`
    /// shows it. Handles still held elsewhere keep working; they are just not exported.
    pub fn forget_stream(
        &self,
        exchange: Exchange,
        market: Market,
        symbol: &str,
        channel: Channel,
    ) {
        let labels = StreamLabels {
            exchange,
            market,
            symbol: symbol.to_owned(),
            channel,
        };
        self.messages.remove(&labels);
        self.duplicates.remove(&labels);
        self.stream_last_message.remove(&labels);
        self.book_levels_dropped.remove(&labels);
        self.poller_up.remove(&labels);
        self.poller_failures.remove(&labels);
        if channel == Channel::Orderbook {
            let book = BookLabels {
                exchange,
                market,
                symbol: symbol.to_owned(),
            };
            self.book_verified.remove(&book);
            self.book_unverified_seconds.remove(&book);
            for reason in crate::book::sync::ResyncReason::LABELS {
                self.resyncs.remove(&ResyncLabels {
                    exchange,
                    market,
                    symbol: symbol.to_owned(),
                    reason,
                });
            }
        }
    }

    /// Sum of a frame counter over every socket of an exchange (for tests and status).
    pub fn frames_of_kind(&self, exchange: Exchange, kind: &str) -> u64 {
        let text = self.encode();
        sum_series(
            &text,
            "marketbox_ws_frames_total",
            &[("exchange", exchange.as_str()), ("kind", kind)],
        )
    }

    /// Sum of every series of `name` whose labels include all of `labels`, read from the text
    /// exposition (what a scraper sees).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        sum_series(&self.encode(), name, labels)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The verified state of one book as the metrics show it: `marketbox_book_verified` and the
/// seconds spent unverified. Venue code calls [`BookHealth::set`] on every transition and
/// [`BookHealth::tick`] about once a second; a book counts as unverified from its creation
/// until its first verified state.
#[derive(Debug)]
pub struct BookHealth {
    verified: Gauge,
    unverified_seconds: Counter<f64, AtomicU64>,
    /// Unverified since (accounted up to) this instant; `None` while verified.
    unverified_since: Option<Instant>,
}

impl BookHealth {
    pub fn new(
        m: &Metrics,
        exchange: Exchange,
        market: Market,
        symbol: &str,
        now: Instant,
    ) -> Self {
        let labels = BookLabels {
            exchange,
            market,
            symbol: symbol.to_owned(),
        };
        let verified = m.book_verified.get_or_create(&labels).clone();
        verified.set(0);
        BookHealth {
            verified,
            unverified_seconds: m.book_unverified_seconds.get_or_create(&labels).clone(),
            unverified_since: Some(now),
        }
    }

    /// A book not reported anywhere (tests, tools).
    pub fn detached(now: Instant) -> Self {
        BookHealth {
            verified: Gauge::default(),
            unverified_seconds: Counter::default(),
            unverified_since: Some(now),
        }
    }

    pub fn is_verified(&self) -> bool {
        self.unverified_since.is_none()
    }

    /// The book became verified (`true`) or unsynced (`false`).
    pub fn set(&mut self, verified: bool, now: Instant) {
        match (verified, self.unverified_since) {
            (true, Some(_)) => {
                self.tick(now);
                self.unverified_since = None;
                self.verified.set(1);
            }
            (false, None) => {
                self.unverified_since = Some(now);
                self.verified.set(0);
            }
            _ => {}
        }
    }

    /// Accounts the unverified time up to `now`.
    pub fn tick(&mut self, now: Instant) {
        if let Some(since) = self.unverified_since {
            self.unverified_seconds
                .inc_by(now.saturating_duration_since(since).as_secs_f64());
            self.unverified_since = Some(now.max(since));
        }
    }
}

/// The per-stream clock readings a publisher records for every message: the
/// last-message timestamp and the exchange-to-publish latency. Resolved once per stream;
/// recording is two atomic updates, no allocation.
#[derive(Debug, Clone)]
pub struct StreamClock {
    last_message: Gauge<f64, AtomicU64>,
    latency: Option<Histogram>,
}

impl StreamClock {
    /// The handles of one stream, or detached ones when `metrics` is `None`.
    pub fn new(
        metrics: Option<&Metrics>,
        exchange: Exchange,
        market: Market,
        symbol: &str,
        channel: Channel,
    ) -> Self {
        let Some(m) = metrics else {
            return StreamClock {
                last_message: Gauge::default(),
                latency: None,
            };
        };
        let labels = StreamLabels {
            exchange,
            market,
            symbol: symbol.to_owned(),
            channel,
        };
        StreamClock {
            last_message: m.stream_last_message.get_or_create(&labels).clone(),
            latency: Some(
                m.event_latency
                    .get_or_create(&LatencyLabels {
                        exchange,
                        market,
                        channel,
                    })
                    .clone(),
            ),
        }
    }

    /// A message stamped `ts_exchange_ms` by the venue (0: the venue gave no time) was
    /// published at `local_ns` (Unix nanoseconds). A venue clock ahead of ours counts as
    /// zero latency; an absurd venue time cannot overflow.
    pub fn record(&self, ts_exchange_ms: u64, local_ns: u64) {
        self.last_message.set(local_ns as f64 / 1e9);
        if let Some(h) = &self.latency
            && ts_exchange_ms > 0
        {
            let latency_ns = local_ns.saturating_sub(ts_exchange_ms.saturating_mul(1_000_000));
            h.observe(latency_ns as f64 / 1e9);
        }
    }
}

fn sum_series(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            if n != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            if !all {
                return None;
            }
            value.parse::<f64>().ok().map(|v| v as u64)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix_and_counters_the_total_suffix() {
        let m = Metrics::new();
        m.ws_connections
            .get_or_create(&SocketLabels {
                exchange: Exchange::Binance,
                socket: "spot".into(),
            })
            .set(1);
        m.budget_refused.inc();
        let text = m.encode();
        assert!(
            text.contains("marketbox_ws_connections{exchange=\"binance\",socket=\"spot\"} 1"),
            "{text}"
        );
        assert!(text.contains("marketbox_budget_refused_total 1"), "{text}");
        assert_eq!(m.sum("marketbox_ws_connections", &[("socket", "spot")]), 1);
    }

    #[test]
    fn book_health_counts_unverified_time_and_shows_the_state() {
        let m = Metrics::new();
        let t0 = Instant::now();
        let mut h = BookHealth::new(&m, Exchange::Okx, Market::Spot, "BTC-USDT", t0);
        let labels = [("exchange", "okx"), ("symbol", "BTC-USDT")];
        // TC0: unverified from creation.
        assert_eq!(m.sum("marketbox_book_verified", &labels), 0);
        h.tick(t0 + std::time::Duration::from_secs(2));
        // TC1: verified after 3 s in all: 3 s counted, gauge 1.
        h.set(true, t0 + std::time::Duration::from_secs(3));
        assert_eq!(m.sum("marketbox_book_verified", &labels), 1);
        assert_eq!(m.sum("marketbox_book_unverified_seconds_total", &labels), 3);
        // TC2: verified time is not counted; unsynced again for 2 s.
        h.tick(t0 + std::time::Duration::from_secs(10));
        h.set(false, t0 + std::time::Duration::from_secs(10));
        h.set(false, t0 + std::time::Duration::from_secs(11));
        h.tick(t0 + std::time::Duration::from_secs(12));
        assert_eq!(m.sum("marketbox_book_unverified_seconds_total", &labels), 5);
        assert!(!h.is_verified());
    }
}
