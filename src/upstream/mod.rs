//! Upstream: from the sessions through the spool to the configured sink.
//!
//! Design: sessions never touch the upstream. They hand normalized messages to a
//! [`Publisher`], which numbers them per stream, encodes them once, and pushes the bytes into
//! the [`spool::Spool`] (RAM, or RAM in front of the on-disk log of [`disk`]); one upstream
//! drains the spool into the sink: [`stdout`] on the executor, or a broker ([`nats`],
//! [`mqtt`]) on its own thread with one current-thread tokio runtime, supervised by [`link`]
//! (the budget permit, backoff, the in-flight window that is re-sent after a reconnect).
//!
//! A broker's settings can change while it runs ([`UpstreamControl::reconfigure`], the
//! console's `apply`): the next session reads them, and the window is re-sent to it.
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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    control: UpstreamControl,
}

impl UpstreamHandle {
    /// Changes or ends the upstream while [`UpstreamHandle::join`] waits for it.
    pub fn control(&self) -> UpstreamControl {
        self.control.clone()
    }

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
    let which = Which::from_config(cfg)?;
    let (window, name) = match which {
        Which::Mqtt(_) => (mqtt::WINDOW, "upstream mqtt"),
        Which::Nats(_) => (nats::WINDOW, "upstream nats"),
    };
    let which = Arc::new(std::sync::Mutex::new(which));
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
    let current = which.clone();
    let thread = std::thread::Builder::new()
        .name("marketbox-upstream".into())
        .spawn(move || {
            // Each session reads the settings anew: the console may have changed them.
            sup.run(|w| {
                let which = current.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let (spool, h) = (spool.clone(), handles.clone());
                match which {
                    Which::Nats(s) => {
                        Box::pin(async move { nats::session(&s, &spool, w, &h).await })
                    }
                    Which::Mqtt(s) => {
                        Box::pin(async move { mqtt::session(&s, &spool, w, &h).await })
                    }
                }
            })
        })
        .map_err(link::UpstreamError::Runtime)?;
    Ok(UpstreamHandle {
        thread: Some(thread),
        control: UpstreamControl {
            which,
            stop: stop.clone(),
        },
        stop,
    })
}

/// The broker a session connects to, with everything it needs (secrets read).
#[derive(Clone)]
enum Which {
    Nats(nats::Settings),
    Mqtt(mqtt::Settings),
}

impl Which {
    fn from_config(cfg: &Config) -> Result<Which, link::UpstreamError> {
        let kind = cfg.upstream.kind();
        let url = cfg.upstream.url.as_ref().map(|u| u.get_ref().clone());
        let Some(url) = url.filter(|_| kind != UpstreamKind::Stdout) else {
            return Err(link::UpstreamError::Config(format!(
                "[upstream] kind = \"{}\" is not a broker with a url",
                kind.as_str()
            )));
        };
        Ok(match kind {
            UpstreamKind::Mqtt => Which::Mqtt(
                mqtt::Settings::from_config(cfg, &url).map_err(link::UpstreamError::Config)?,
            ),
            _ => Which::Nats(
                nats::Settings::from_config(cfg, &url).map_err(link::UpstreamError::Config)?,
            ),
        })
    }
}

/// What the service keeps of a running broker upstream: its settings can change (the
/// console's `apply`), and it can be ended. Cheap to clone.
#[derive(Clone)]
pub struct UpstreamControl {
    which: Arc<std::sync::Mutex<Which>>,
    stop: Arc<link::Control>,
}

impl UpstreamControl {
    /// Takes the upstream settings of `cfg` (a broker: NATS or MQTT, url, subject prefix,
    /// credentials, trust roots): the current session ends and the next connects with them,
    /// re-sending what was not acknowledged; the spool and the venues' sockets are not
    /// touched. A config that cannot work (a secret file that cannot be read) changes nothing.
    pub fn reconfigure(&self, cfg: &Config) -> Result<(), link::UpstreamError> {
        let which = Which::from_config(cfg)?;
        *self.which.lock().unwrap_or_else(|e| e.into_inner()) = which;
        self.stop.reconnect();
        Ok(())
    }

    /// Ends the upstream without draining.
    pub fn abort(&self) {
        self.stop.abort();
    }
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
    /// A book stream's level texts, reused from one message to the next (JSON).
    texts: crate::encode::BookTexts,
}

impl StreamState {
    /// A stream starting at `seq` 1, counting into `metrics` when given.
    fn new(key: StreamKey, metrics: Option<&Metrics>) -> Self {
        let labels = StreamLabels {
            exchange: key.exchange,
            market: key.market,
            symbol: key.symbol.to_string(),
            channel: key.channel,
        };
        StreamState {
            key,
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
            texts: Default::default(),
        }
    }

    /// The same stream for another publisher: the numbers go on, the recent ids start over.
    fn fork(&self) -> Self {
        StreamState {
            key: self.key,
            seq: self.seq.clone(),
            published: self.published.clone(),
            clock: self.clock.clone(),
            duplicates: self.duplicates.clone(),
            recent: vec![0; self.recent.len()].into_boxed_slice(),
            recent_next: 0,
            recent_len: 0,
            texts: Default::default(),
        }
    }

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
/// [`WAKE_AFTER`] more messages followed it or the spool is half full, so the upstream takes a
/// burst per wake-up instead of a message per wake-up, and a small spool is not overrun while
/// its reader sleeps. Dropping the publisher flushes.
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
    /// A push since the last [`Publisher::wait_for_room`] said the spool is backlogged.
    backlogged: bool,
}

/// The longest a session pauses reading for the upstream to take a backlog (see
/// [`spool::BACKLOG_HIGH`]): far below any venue's idle timeout, and the sockets' kernel
/// buffers hold what the venue sends meanwhile.
pub const ROOM_WAIT: Duration = Duration::from_millis(250);

/// With deferred wake-ups, the most messages a held wake-up waits for. 256 took the stdout
/// upstream's thread from 0.70-0.86 to 0.54-0.59 µs per firehose message, but the whole process
/// was not measurably cheaper (the ring's working set grows with the batch), so 64 stays.
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
            .map(|key| StreamState::new(*key, metrics))
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
            backlogged: false,
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

    /// Whether a push since the last [`Publisher::wait_for_room`] found more than
    /// [`spool::BACKLOG_HIGH`] bytes waiting: the session should wait for room before it reads
    /// on.
    pub fn backlogged(&self) -> bool {
        self.backlogged
    }

    /// Wakes the upstream and waits, at most [`ROOM_WAIT`], for it to take the spool's RAM
    /// ring down to [`spool::BACKLOG_LOW`].
    pub async fn wait_for_room(&mut self) -> spool::Room {
        self.backlogged = false;
        self.flush();
        self.spool.wait_for_room(ROOM_WAIT).await
    }

    /// A publisher for the same streams that continues their sequence numbers (for a session
    /// restarted after a failure). Its recent-id memory starts empty.
    pub fn fork(&self) -> Publisher {
        let streams = self.streams.iter().map(StreamState::fork).collect();
        Publisher {
            spool: self.spool.clone(),
            encoder: Encoder::new(self.encoder.format()),
            streams,
            scratch: self.scratch.clone(),
            header: self.header.clone(),
            defer: self.defer,
            owed: None,
            backlogged: false,
        }
    }

    /// The streams become `keys`, in that order (the plan of the socket changed while the
    /// service runs): a stream already carried keeps its sequence numbers, a new one starts
    /// at 1. Sessions running on forks take the change with [`Publisher::follow`].
    pub fn retarget(&mut self, keys: &[StreamKey], metrics: Option<&Metrics>) {
        let mut old = std::mem::take(&mut self.streams);
        self.streams = keys
            .iter()
            .map(|k| match old.iter().position(|s| s.key == *k) {
                Some(i) => old.swap_remove(i),
                None => StreamState::new(*k, metrics),
            })
            .collect();
    }

    /// Takes the streams of `template` (after its [`Publisher::retarget`]): the numbers are
    /// the template's, shared; a stream this publisher already carried keeps its recent ids,
    /// so a message published just before the change is still recognised as a duplicate.
    pub fn follow(&mut self, template: &Publisher) {
        let mut old = std::mem::take(&mut self.streams);
        self.streams = template
            .streams
            .iter()
            .map(|t| match old.iter().position(|s| s.key == t.key) {
                Some(i) => {
                    let mut mine = old.swap_remove(i);
                    mine.seq = t.seq.clone();
                    mine
                }
                None => t.fork(),
            })
            .collect();
    }

    /// The stream keys, in index order.
    pub fn keys(&self) -> impl Iterator<Item = StreamKey> + '_ {
        self.streams.iter().map(|s| s.key)
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
        match self.encoder.encode_book(m, &mut st.texts) {
            Ok(bytes) if self.defer => {
                let pushed = self.spool.push_deferred(h, bytes);
                self.backlogged |= pushed.backlogged;
                self.owed = match self.owed {
                    Some(n) if n + 1 >= WAKE_AFTER || pushed.crowded => {
                        self.spool.wake();
                        None
                    }
                    Some(n) => Some(n + 1),
                    None if pushed.wake && pushed.crowded => {
                        self.spool.wake();
                        None
                    }
                    None => pushed.wake.then_some(0),
                };
            }
            Ok(bytes) => {
                self.backlogged |= self.spool.push(h, bytes).backlogged;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Side, TradeData};

    fn key(symbol: &str) -> StreamKey {
        StreamKey {
            exchange: Exchange::Binance,
            market: Market::Spot,
            symbol: Symbol::parse(symbol).expect("a symbol"),
            channel: Channel::Trade,
        }
    }

    fn trade(id: u64) -> Data {
        let one = crate::decimal::Decimal::parse("1").expect("a decimal");
        Data::Trade(TradeData {
            trade_id: id,
            price: one,
            qty: one,
            side: Side::Buy,
        })
    }

    /// Every record in the spool: (symbol, seq).
    fn drain(spool: &Spool) -> Vec<(String, u64)> {
        let mut buf = Vec::new();
        std::iter::from_fn(|| spool.try_pop(&mut buf))
            .map(|h| (h.symbol.to_string(), h.seq))
            .collect()
    }

    #[test]
    fn a_live_plan_change_keeps_the_numbers_of_the_streams_that_stay() {
        let spool = Spool::new(1 << 16, Default::default());
        let (a, b, c) = (key("AAA-USDT"), key("BBB-USDT"), key("CCC-USDT"));
        let mut template = Publisher::new(spool.clone(), Format::Json, &[a, b], None);
        let mut session = template.fork();
        session.publish(0, 1, 10, trade(10));
        session.publish(0, 1, 11, trade(11));
        session.publish(1, 1, 20, trade(20));
        // TC0: the plan becomes [b, c, a]: indices follow the new plan.
        template.retarget(&[b, c, a], None);
        session.follow(&template);
        assert_eq!(session.keys().collect::<Vec<_>>(), vec![b, c, a]);
        session.publish(2, 1, 12, trade(12));
        session.publish(1, 1, 30, trade(30));
        // TC1: the id published just before the change is still a duplicate.
        session.publish(2, 1, 12, trade(12));
        // TC2: a session started again later (a fork of the template) continues the numbers.
        let mut restarted = template.fork();
        restarted.publish(1, 1, 31, trade(31));
        restarted.publish(0, 1, 21, trade(21));
        let got = drain(&spool);
        let want: Vec<(String, u64)> = [
            ("AAA-USDT", 1),
            ("AAA-USDT", 2),
            ("BBB-USDT", 1),
            ("AAA-USDT", 3),
            ("CCC-USDT", 1),
            ("CCC-USDT", 2),
            ("BBB-USDT", 2),
        ]
        .iter()
        .map(|(s, n)| (s.to_string(), *n))
        .collect();
        assert_eq!(got, want);
        // TC3: a stream dropped from the plan is gone; publishing on a stale index is refused.
        template.retarget(&[c], None);
        session.follow(&template);
        session.publish(1, 1, 13, trade(13));
        assert!(drain(&spool).is_empty());
    }

    #[test]
    fn a_held_wake_up_comes_at_the_flush_or_after_wake_after_more_messages() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::{Context, Wake, Waker};
        /// Counts the wake-ups of an upstream waiting on the spool.
        struct Wakes(AtomicUsize);
        impl Wake for Wakes {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let spool = Spool::new(1 << 24, Default::default());
        let mut p = Publisher::new(spool.clone(), Format::Json, &[key("AAA-USDT")], None);
        p.defer_wakes();
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut buf = Vec::new();
        let mut id = 0;
        let mut waiting =
            Box::pin(spool.pop_messages(1 << 20, &mut buf, |o, m| o.extend_from_slice(m)));
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        // TC0: the first message finds the spool empty; its wake-up is held for WAKE_AFTER
        // more, then given.
        for _ in 0..WAKE_AFTER {
            id += 1;
            p.publish(0, 1, id, trade(id));
            assert_eq!(
                wakes.0.load(Ordering::SeqCst),
                0,
                "woken after {id} messages"
            );
        }
        id += 1;
        p.publish(0, 1, id, trade(id));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        // TC1: taken; a burst shorter than WAKE_AFTER is woken for at the flush.
        assert!(waiting.as_mut().poll(&mut cx).is_ready());
        drop(waiting);
        buf.clear();
        let mut waiting =
            Box::pin(spool.pop_messages(1 << 20, &mut buf, |o, m| o.extend_from_slice(m)));
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        for _ in 0..3 {
            id += 1;
            p.publish(0, 1, id, trade(id));
        }
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        p.flush();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        assert!(waiting.as_mut().poll(&mut cx).is_ready());
        drop(waiting);
        // TC2: a spool that fills before WAKE_AFTER messages: woken once it is half full, and
        // nothing is dropped.
        let small = Spool::new(8 << 10, Default::default());
        let mut p = Publisher::new(small.clone(), Format::Json, &[key("AAA-USDT")], None);
        p.defer_wakes();
        buf.clear();
        let mut waiting = Box::pin(small.pop_messages(1 << 20, &mut buf, |o, m| {
            o.extend_from_slice(m);
            o.push(b'\n');
        }));
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        let mut sent = 0;
        while wakes.0.load(Ordering::SeqCst) == 2 {
            id += 1;
            sent += 1;
            p.publish(0, 1, id, trade(id));
            assert!(sent < WAKE_AFTER, "no wake-up before the spool overflowed");
        }
        assert!(waiting.as_mut().poll(&mut cx).is_ready());
        drop(waiting);
        let taken = buf.iter().filter(|&&b| b == b'\n').count();
        assert_eq!(taken, sent as usize, "every message reached the upstream");
    }
}
