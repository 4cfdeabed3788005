//! Upstream: from the sessions through the spool to the configured sink.
//!
//! Design: sessions never touch the upstream. They hand normalized messages to a
//! [`Publisher`], which numbers them per stream, encodes them once, and pushes the bytes into
//! the [`spool::Spool`] (RAM, or RAM in front of the on-disk log of [`disk`]); one upstream
//! drains the spool into the sink: [`stdout`] on the executor, or a broker ([`nats`],
//! [`mqtt`]) on its own thread with one current-thread tokio runtime, supervised by [`link`]
//! (the budget permit, backoff, the in-flight window that is re-sent after a reconnect).
//!
//! Owns: per-stream sequence numbers, the record framing on stdout, starting the upstream.
//! Must not touch: venue formats, sockets to exchanges.

pub mod disk;
pub mod link;
pub mod mqtt;
pub mod nats;
pub mod spool;
pub mod stdout;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;

use crate::budget::Budget;
use crate::config::{Config, Format, UpstreamKind};
use crate::encode::Encoder;
use crate::metrics::{Metrics, StreamClock, StreamLabels};
use crate::model::{
    Channel, Data, Exchange, Market, Message, MsgId, OrderbookData, Symbol, message_id,
};
use crate::plan::SocketPlan;
use spool::{RecordHeader, Spool};

/// A broker upstream running on its own thread.
pub struct UpstreamHandle {
    thread: Option<std::thread::JoinHandle<Result<(), link::UpstreamError>>>,
    stop: Arc<link::Control>,
}

impl UpstreamHandle {
    /// Ends the upstream without draining (what is unacknowledged stays in the spool's disk
    /// log, if any).
    pub fn abort(&self) {
        self.stop.abort();
    }

    /// Waits for the thread: it ends once the spool is closed and drained, or when aborted.
    pub fn join(mut self) -> Result<(), link::UpstreamError> {
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(link::UpstreamError::Panicked),
            None => Ok(()),
        }
    }

    /// The last broker failure (its message names the config key to look at).
    pub fn last_error(&self) -> Option<String> {
        self.stop.last_error()
    }

    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for UpstreamHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop.abort();
        }
    }
}

/// Starts the configured broker upstream (`nats` or `mqtt`) on its own thread, draining
/// `spool`. Its socket holds a permit of `budget`. Errors only for a config that cannot work
/// (unreadable secrets, bad trust roots) or a thread that cannot start; broker failures are
/// retried with backoff for ever, counted and logged.
pub fn start(
    cfg: &Config,
    spool: Spool,
    budget: Budget,
    metrics: &crate::metrics::Metrics,
) -> Result<UpstreamHandle, link::UpstreamError> {
    start_observed(cfg, spool, budget, metrics, None)
}

/// [`start`], telling `observer` each message's stamp-to-ack latency (for benchmarks).
pub fn start_observed(
    cfg: &Config,
    spool: Spool,
    budget: Budget,
    metrics: &crate::metrics::Metrics,
    observer: Option<link::AckObserver>,
) -> Result<UpstreamHandle, link::UpstreamError> {
    let kind = cfg.upstream.kind();
    let url = cfg.upstream.url.as_ref().map(|u| u.get_ref().clone());
    let Some(url) = url.filter(|_| kind != UpstreamKind::Stdout) else {
        return Err(link::UpstreamError::Config(format!(
            "[upstream] kind = \"{}\" is not a broker with a url",
            kind.as_str()
        )));
    };
    enum Which {
        Nats(nats::Settings),
        Mqtt(mqtt::Settings),
    }
    let (which, window, name) = match kind {
        UpstreamKind::Mqtt => (
            Which::Mqtt(
                mqtt::Settings::from_config(cfg, &url).map_err(link::UpstreamError::Config)?,
            ),
            mqtt::WINDOW,
            "upstream mqtt",
        ),
        _ => (
            Which::Nats(
                nats::Settings::from_config(cfg, &url).map_err(link::UpstreamError::Config)?,
            ),
            nats::WINDOW,
            "upstream nats",
        ),
    };
    let stop = Arc::new(link::Control::default());
    let mut handles = link::Handles::new(metrics);
    handles.observer = observer;
    let sup = link::Supervisor {
        name,
        spool: spool.clone(),
        budget,
        handles: handles.clone(),
        stop: stop.clone(),
        backoff_min: cfg.session.backoff_min(),
        backoff_max: cfg.session.backoff_max(),
        stable_after: cfg.session.stable_after.0,
        window,
    };
    let thread = std::thread::Builder::new()
        .name("marketbox-upstream".into())
        .spawn(move || match which {
            Which::Nats(s) => sup.run(|w| {
                let (s, spool, h) = (s.clone(), spool.clone(), handles.clone());
                Box::pin(async move { nats::session(&s, &spool, w, &h).await })
            }),
            Which::Mqtt(s) => sup.run(|w| {
                let (s, spool, h) = (s.clone(), spool.clone(), handles.clone());
                Box::pin(async move { mqtt::session(&s, &spool, w, &h).await })
            }),
        })
        .map_err(link::UpstreamError::Runtime)?;
    Ok(UpstreamHandle {
        thread: Some(thread),
        stop,
    })
}

/// One output stream: what a message's `seq` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub exchange: Exchange,
    pub market: Market,
    pub symbol: Symbol,
    pub channel: Channel,
}

impl StreamKey {
    /// The output streams of one planned socket, in the plan's stream order (the index a
    /// protocol publishes to).
    pub fn for_socket(socket: &SocketPlan) -> Vec<StreamKey> {
        socket
            .streams
            .iter()
            .map(|s| StreamKey {
                exchange: socket.exchange,
                market: s.market,
                symbol: s.symbol,
                channel: s.channel,
            })
            .collect()
    }
}

struct StreamState {
    key: StreamKey,
    /// Shared with every fork of the publisher, so a restarted session continues the numbers.
    seq: Arc<AtomicU64>,
    published: Counter,
    clock: StreamClock,
    duplicates: Counter,
    /// The venue ids published last on this stream (a ring), to drop a message whose id was
    /// just published: the overlap of two sockets during a rotation, a venue's re-send.
    recent: Box<[u64]>,
    recent_next: usize,
    recent_len: usize,
}

impl StreamState {
    /// Whether `id` was published recently; records it when not.
    fn seen(&mut self, id: u64) -> bool {
        if self.recent[..self.recent_len].contains(&id) {
            return true;
        }
        self.recent[self.recent_next] = id;
        self.recent_next = (self.recent_next + 1) % self.recent.len();
        self.recent_len = (self.recent_len + 1).min(self.recent.len());
        false
    }
}

/// How many recent ids a stream remembers: trades and liquidations arrive in bursts (a
/// rotation's overlap can repeat a few hundred), the other channels one at a time.
fn recent_ids(channel: Channel) -> usize {
    match channel {
        Channel::Trade | Channel::Liquidation => 512,
        _ => 8,
    }
}

/// Numbers, encodes and spools the messages of one session. Steady state allocates nothing.
///
/// By default each message that finds the spool empty wakes the upstream at once. A session
/// that reads bursts calls [`Publisher::defer_wakes`]: the wake-up is then held until
/// [`Publisher::flush`] (which the session calls before it waits for anything) or until
/// [`WAKE_AFTER`] more messages followed it, so the upstream takes a burst per wake-up instead
/// of a message per wake-up. Dropping the publisher flushes.
pub struct Publisher {
    spool: Spool,
    encoder: Encoder,
    streams: Vec<StreamState>,
    scratch: Message,
    header: RecordHeader,
    defer: bool,
    /// Messages pushed since a push found the spool empty, while its wake-up is held; `None`
    /// when no wake-up is owed.
    owed: Option<u32>,
}

/// With deferred wake-ups, the most messages a held wake-up waits for.
pub const WAKE_AFTER: u32 = 64;

/// Local wall-clock time in nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Publisher {
    /// A publisher for `streams` (index = position), counting into `metrics` when given.
    pub fn new(
        spool: Spool,
        format: Format,
        streams: &[StreamKey],
        metrics: Option<&Metrics>,
    ) -> Self {
        let streams = streams
            .iter()
            .map(|key| {
                let labels = StreamLabels {
                    exchange: key.exchange,
                    market: key.market,
                    symbol: key.symbol.to_string(),
                    channel: key.channel,
                };
                StreamState {
                    key: *key,
                    seq: Arc::new(AtomicU64::new(0)),
                    published: metrics.map_or_else(Counter::default, |m| {
                        m.messages.get_or_create(&labels).clone()
                    }),
                    clock: StreamClock::new(
                        metrics,
                        key.exchange,
                        key.market,
                        key.symbol.as_str(),
                        key.channel,
                    ),
                    duplicates: metrics.map_or_else(Counter::default, |m| {
                        m.duplicates.get_or_create(&labels).clone()
                    }),
                    recent: vec![0; recent_ids(key.channel)].into_boxed_slice(),
                    recent_next: 0,
                    recent_len: 0,
                }
            })
            .collect();
        let placeholder = Symbol::parse("X-Y").unwrap_or_else(|_| unreachable!("valid literal"));
        Publisher {
            spool,
            encoder: Encoder::new(format),
            streams,
            scratch: Message {
                exchange: Exchange::Binance,
                market: Market::Spot,
                symbol: placeholder,
                channel: Channel::Orderbook,
                seq: 0,
                ts_exchange_ms: 0,
                ts_local_ns: 0,
                id: MsgId::new(),
                data: Data::Orderbook(OrderbookData {
                    bids: heapless::Vec::new(),
                    asks: heapless::Vec::new(),
                    update_id: 0,
                }),
            },
            header: RecordHeader {
                exchange: Exchange::Binance,
                market: Market::Spot,
                symbol: placeholder,
                channel: Channel::Orderbook,
                seq: 0,
                id: MsgId::new(),
                ts_local_ns: 0,
            },
            defer: false,
            owed: None,
        }
    }

    /// Holds the upstream's wake-ups until [`Publisher::flush`] (see the type's doc).
    pub fn defer_wakes(&mut self) {
        self.defer = true;
    }

    /// Wakes the upstream if a message since the last flush found the spool empty. Call it
    /// before waiting for anything when wake-ups are deferred.
    pub fn flush(&mut self) {
        if self.owed.take().is_some() {
            self.spool.wake();
        }
    }

    /// A publisher for the same streams that continues their sequence numbers (for a session
    /// restarted after a failure). Its recent-id memory starts empty.
    pub fn fork(&self) -> Publisher {
        let streams = self
            .streams
            .iter()
            .map(|s| StreamState {
                key: s.key,
                seq: s.seq.clone(),
                published: s.published.clone(),
                clock: s.clock.clone(),
                duplicates: s.duplicates.clone(),
                recent: vec![0; s.recent.len()].into_boxed_slice(),
                recent_next: 0,
                recent_len: 0,
            })
            .collect();
        Publisher {
            spool: self.spool.clone(),
            encoder: Encoder::new(self.encoder.format()),
            streams,
            scratch: self.scratch.clone(),
            header: self.header.clone(),
            defer: self.defer,
            owed: None,
        }
    }

    /// The stream index of a key, if this publisher carries it.
    pub fn index_of(&self, key: &StreamKey) -> Option<usize> {
        self.streams.iter().position(|s| s.key == *key)
    }

    pub fn key(&self, stream: usize) -> Option<StreamKey> {
        self.streams.get(stream).map(|s| s.key)
    }

    /// The reusable orderbook payload: fill it, then call [`Publisher::publish_scratch`].
    pub fn book_scratch(&mut self) -> &mut OrderbookData {
        if !matches!(self.scratch.data, Data::Orderbook(_)) {
            self.scratch.data = Data::Orderbook(OrderbookData {
                bids: heapless::Vec::new(),
                asks: heapless::Vec::new(),
                update_id: 0,
            });
        }
        match &mut self.scratch.data {
            Data::Orderbook(o) => o,
            _ => unreachable!("set just above"),
        }
    }

    /// Publishes `data` on `stream`.
    pub fn publish(&mut self, stream: usize, ts_exchange_ms: u64, venue_id: u64, data: Data) {
        self.scratch.data = data;
        self.publish_scratch(stream, ts_exchange_ms, venue_id);
    }

    /// Publishes whatever the scratch payload holds on `stream`. A message whose id was
    /// published just before on the stream is the same data again: it is dropped and counted
    /// (`marketbox_messages_duplicate_total`), so `seq` stays gapless for what is new.
    pub fn publish_scratch(&mut self, stream: usize, ts_exchange_ms: u64, venue_id: u64) {
        let Some(st) = self.streams.get_mut(stream) else {
            tracing::error!(
                stream,
                "publish on an unknown stream index (a bug); dropped"
            );
            return;
        };
        if st.seen(venue_id) {
            st.duplicates.inc();
            return;
        }
        let seq = st.seq.fetch_add(1, Ordering::Relaxed) + 1;
        st.published.inc();
        let local_ns = now_ns();
        st.clock.record(ts_exchange_ms, local_ns);
        let key = st.key;
        let m = &mut self.scratch;
        m.exchange = key.exchange;
        m.market = key.market;
        m.symbol = key.symbol;
        m.channel = key.channel;
        m.seq = seq;
        m.ts_exchange_ms = ts_exchange_ms;
        m.ts_local_ns = local_ns;
        m.id = message_id(key.exchange, key.market, key.symbol, key.channel, venue_id);
        let h = &mut self.header;
        h.exchange = key.exchange;
        h.market = key.market;
        h.symbol = key.symbol;
        h.channel = key.channel;
        h.seq = m.seq;
        h.id.clone_from(&m.id);
        h.ts_local_ns = m.ts_local_ns;
        match self.encoder.encode(m) {
            Ok(bytes) if self.defer => {
                let pushed = self.spool.push_deferred(h, bytes);
                self.owed = match self.owed {
                    Some(n) if n + 1 >= WAKE_AFTER => {
                        self.spool.wake();
                        None
                    }
                    Some(n) => Some(n + 1),
                    None => pushed.wake.then_some(0),
                };
            }
            Ok(bytes) => {
                self.spool.push(h, bytes);
            }
            Err(err) => tracing::error!(%err, "message could not be encoded (a bug); dropped"),
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.flush();
    }
}
