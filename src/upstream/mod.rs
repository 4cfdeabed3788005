//! Upstream: from the sessions through the spool to the configured sink.
//!
//! Design: sessions never touch the upstream. They hand normalized messages to a
//! [`Publisher`], which numbers them per stream, encodes them once, and pushes the bytes into
//! the [`spool::Spool`]; one upstream task drains the spool into the sink (stdout now; NATS
//! JetStream and MQTT plug in beside it with their own connection permit).
//!
//! Owns: per-stream sequence numbers, the record framing on stdout. Must not touch: venue
//! formats, sockets to exchanges.

pub mod spool;
pub mod stdout;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;

use crate::config::Format;
use crate::encode::Encoder;
use crate::metrics::{Metrics, StreamClock, StreamLabels};
use crate::model::{
    Channel, Data, Exchange, Market, Message, MsgId, OrderbookData, Symbol, message_id,
};
use crate::plan::SocketPlan;
use spool::{RecordHeader, Spool};

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
pub struct Publisher {
    spool: Spool,
    encoder: Encoder,
    streams: Vec<StreamState>,
    scratch: Message,
    header: RecordHeader,
}

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
            },
        }
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
        match self.encoder.encode(m) {
            Ok(bytes) => {
                self.spool.push(h, bytes);
            }
            Err(err) => tracing::error!(%err, "message could not be encoded (a bug); dropped"),
        }
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
        let spool = Spool::new(1 << 16, Counter::default(), Default::default());
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
}
