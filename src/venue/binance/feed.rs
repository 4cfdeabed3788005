//! The Binance per-socket protocol the session drives (spot, USD-M `/public`, USD-M `/market`).
//!
//! Design: sans-I/O. Frames come in as text, normalized messages go to the publisher, and what
//! must be sent or fetched is queued in `Io`. Each symbol with an `orderbook` stream owns a
//! [`BookSync`] machine; a gap, a stale snapshot or a truncated book resyncs that one symbol
//! by fetching a new REST snapshot — the socket stays up, other symbols keep publishing.
//! Snapshot requests are throttled per symbol (exponential from 500 ms to 60 s on repeated
//! failures, `Retry-After` honoured) and share the host's weight limiter.
//!
//! The socket's plan can change while it runs (`reconfigure`): symbols already collected
//! keep their books; new streams are asked with `SUBSCRIBE`, dropped ones with `UNSUBSCRIBE`
//! on the live combined stream, and the URL follows, so a reconnect asks for the same set.
//! REST answers find their symbol by a tag that stays while the symbol does.
//!
//! Owns: mapping Binance frames to normalized messages and snapshot scheduling. Must not touch:
//! sockets, the rate limiter's internals, the upstream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use super::rest_symbol;
use super::sync::{BookSync, Continuity, Deepened, ResyncReason, SyncEvent};
use super::wire::{self, DepthSnapshot, Frame, RestErrorBody};
use crate::book::Decimal;
use crate::book::sync::Snapshots;
use crate::config::{Config, Endpoint};
use crate::metrics::{
    BookHealth, Metrics, ResyncLabels, SocketLabels, StreamLabels, SubscribeErrorLabels,
};
use crate::model::{
    Channel, Data, Exchange, FundingRateData, LiquidationData, Market, Side, Symbol, TradeData,
};
use crate::net::http::{RestError, RestResponse};
use crate::plan::SocketPlan;
use crate::session::rest::{RateSpec, RestRequest};
use crate::session::{ConnectLimit, Connected, Control, FrameKind, Io, Protocol};
use crate::venue::json::LevelBuf;

struct SymbolState {
    /// Stable for the symbol's life on this protocol: REST answers find their symbol by it
    /// (positions change when the plan changes live).
    tag: u64,
    symbol: Symbol,
    /// `BTCUSDT`, as in events' `s` and REST.
    upper: String,
    depth_stream: Option<String>,
    book: Option<usize>,
    trade: Option<usize>,
    funding: Option<usize>,
    liquidation: Option<usize>,
    sync: Option<BookSync>,
    /// What the metrics show of this symbol's book (when it has one).
    health: Option<BookHealth>,
    snapshots: Snapshots,
    /// Background snapshots that deepen the synced book when its known range gets thin.
    deep: Snapshots,
    /// Levels asked of the next deepening (adapts between 100 and 1000).
    deep_limit: u32,
    /// Levels asked of the resync snapshot in flight (its answer is cut when it holds as
    /// many).
    resync_limit: u32,
    /// A shallow book ran out here (it was deepened, or lost to `Truncated`): resyncs ask
    /// for `deep_limit` levels.
    deep_resync: bool,
    /// When the book was last deepened.
    deepened_at: Option<Instant>,
    /// The book's loss of sync was logged; retries until it is synced again are only
    /// counted (a firehose can overflow the buffer thousands of times before a snapshot).
    unsync_logged: bool,
    deepenings: Counter,
    last_depth: Instant,
}

/// REST tags of deepening snapshots carry this bit beside the symbol's tag.
const DEEP: u64 = 1 << 63;
/// Deepening snapshot sizes: a symbol deepened again within a minute asks for the next size,
/// one left alone for ten minutes for the previous.
const DEEP_LIMITS: [u32; 3] = [100, 500, 1000];

/// Request weight of a depth snapshot of `limit` levels (the venues' tables).
fn snapshot_weight(market: Market, limit: u32) -> u32 {
    match (market, limit) {
        (Market::Spot, 0..=100) => 5,
        (Market::Spot, 101..=500) => 25,
        (Market::Spot, _) => 50,
        (Market::Perpetual, 0..=50) => 2,
        (Market::Perpetual, 51..=100) => 5,
        (Market::Perpetual, 101..=500) => 10,
        (Market::Perpetual, _) => 20,
    }
}

/// The protocol of one planned Binance socket.
pub struct BinanceProtocol {
    url: String,
    exchange_market: Market,
    rest_base: Endpoint,
    rate: RateSpec,
    depth: usize,
    stale_after: Duration,
    symbols: Vec<SymbolState>,
    metrics: Arc<Metrics>,
    stale: Counter,
    /// Refused requests by code label ([`ERROR_CODES`]).
    refusals: [Counter; 5],
    next_id: u64,
    next_tag: u64,
    continuity: Continuity,
    /// The planned socket's base URL (`…/stream`) and its stream names, in plan order.
    base_url: String,
    wires: Vec<String>,
    logged_malformed: bool,
    logged_unknown: bool,
}

/// Most stream names in one `SUBSCRIBE` or `UNSUBSCRIBE` request (each request is one of the
/// venue's incoming messages; the session paces them).
const STREAMS_PER_REQUEST: usize = 100;

/// The error codes of Binance's WebSocket API (0 unknown property, 1 invalid value type,
/// 2 invalid request, 3 invalid JSON) become metric labels; anything else is `other`.
const ERROR_CODES: [&str; 5] = ["0", "1", "2", "3", "other"];

/// Levels per side asked of a REST snapshot: twice the largest publishable depth.
pub const SNAPSHOT_LIMIT: u32 = 100;

impl BinanceProtocol {
    /// The protocol for one planned socket; stream indices are positions in `socket.streams`.
    pub fn new(socket: &SocketPlan, market: Market, cfg: &Config, metrics: Arc<Metrics>) -> Self {
        let ep = &cfg.venues.binance;
        let (rest_base, rate, continuity) = match market {
            // Spot: 6000 weight per minute per IP; we use half so a second box fits too. A
            // 100-level snapshot (weight 5) covers any published depth (at most 50) and allows
            // ten times more resyncs per minute than a 1000-level one (weight 50).
            Market::Spot => (
                ep.spot_rest.clone(),
                RateSpec {
                    bucket: "weight",
                    capacity: 3000,
                    window: Duration::from_secs(60),
                },
                Continuity::Spot,
            ),
            // USD-M: 2400 per minute per IP; half again. `limit=100` weighs 5 there too.
            Market::Perpetual => (
                ep.perpetual_rest.clone(),
                RateSpec {
                    bucket: "weight",
                    capacity: 1200,
                    window: Duration::from_secs(60),
                },
                Continuity::UsdM,
            ),
        };
        let now = Instant::now();
        let stale = metrics
            .stale_streams
            .get_or_create(&SocketLabels {
                exchange: Exchange::Binance,
                socket: socket.name.as_str().to_owned(),
            })
            .clone();
        let refusals = ERROR_CODES.map(|code| {
            metrics
                .subscribe_errors
                .get_or_create(&SubscribeErrorLabels {
                    exchange: Exchange::Binance,
                    socket: socket.name.as_str().to_owned(),
                    code: code.to_owned(),
                })
                .clone()
        });
        let mut proto = BinanceProtocol {
            refusals,
            url: String::new(),
            exchange_market: market,
            rest_base,
            rate,
            depth: cfg.book.depth.0,
            stale_after: cfg.session.stale_after.0,
            symbols: Vec::new(),
            metrics,
            stale,
            next_id: 1,
            next_tag: 0,
            continuity,
            base_url: socket.url.clone(),
            wires: Vec::new(),
            logged_malformed: false,
            logged_unknown: false,
        };
        proto.rebuild(socket, now);
        proto
    }

    /// Makes the symbols those of `socket` (stream indices are positions in
    /// `socket.streams`): a symbol already here keeps its book and snapshot schedule, a new
    /// one starts unsynced, one no longer planned is dropped. The URL carries the streams.
    fn rebuild(&mut self, socket: &SocketPlan, now: Instant) {
        let market = self.exchange_market;
        let mut old = std::mem::take(&mut self.symbols);
        let mut symbols: Vec<SymbolState> = Vec::new();
        for (i, s) in socket.streams.iter().enumerate() {
            let pos = match symbols.iter().position(|st| st.symbol == s.symbol) {
                Some(p) => p,
                None => {
                    let st = match old.iter().position(|o| o.symbol == s.symbol) {
                        Some(j) => {
                            let mut st = old.swap_remove(j);
                            st.book = None;
                            st.trade = None;
                            st.funding = None;
                            st.liquidation = None;
                            st
                        }
                        None => {
                            self.next_tag += 1;
                            SymbolState {
                                tag: self.next_tag,
                                symbol: s.symbol,
                                upper: rest_symbol(&s.symbol),
                                depth_stream: None,
                                book: None,
                                trade: None,
                                funding: None,
                                liquidation: None,
                                sync: None,
                                health: None,
                                snapshots: Snapshots::default(),
                                deep: Snapshots::default(),
                                deep_limit: DEEP_LIMITS[1],
                                resync_limit: SNAPSHOT_LIMIT,
                                deep_resync: false,
                                deepened_at: None,
                                unsync_logged: false,
                                deepenings: self
                                    .metrics
                                    .book_deepenings
                                    .get_or_create(&crate::metrics::BookLabels {
                                        exchange: Exchange::Binance,
                                        market,
                                        symbol: s.symbol.to_string(),
                                    })
                                    .clone(),
                                last_depth: now,
                            }
                        }
                    };
                    symbols.push(st);
                    symbols.len() - 1
                }
            };
            let st = &mut symbols[pos];
            match s.channel {
                Channel::Orderbook => {
                    st.book = Some(i);
                    st.depth_stream = Some(s.wire.clone());
                    if st.sync.is_none() {
                        let dropped = self
                            .metrics
                            .book_levels_dropped
                            .get_or_create(&StreamLabels {
                                exchange: Exchange::Binance,
                                market,
                                symbol: s.symbol.to_string(),
                                channel: Channel::Orderbook,
                            })
                            .clone();
                        st.sync = Some(BookSync::with_counter(self.continuity, dropped));
                        st.health = Some(BookHealth::new(
                            &self.metrics,
                            Exchange::Binance,
                            market,
                            s.symbol.as_str(),
                            now,
                        ));
                        st.snapshots = Snapshots::default();
                        st.last_depth = now;
                    }
                }
                Channel::Trade => st.trade = Some(i),
                Channel::FundingRate => st.funding = Some(i),
                Channel::Liquidation => st.liquidation = Some(i),
                _ => {}
            }
        }
        for st in &mut symbols {
            if st.book.is_none() {
                st.depth_stream = None;
                st.sync = None;
                st.health = None;
            }
        }
        self.symbols = symbols;
        self.wires = socket.streams.iter().map(|s| s.wire.clone()).collect();
        self.url = format!("{}?streams={}", self.base_url, self.wires.join("/"));
    }

    /// Queues `method` (`SUBSCRIBE`, `UNSUBSCRIBE`) for `streams`, in requests of at most
    /// [`STREAMS_PER_REQUEST`] names.
    fn request(&mut self, method: &str, streams: &[&str], io: &mut Io<'_>) {
        for chunk in streams.chunks(STREAMS_PER_REQUEST) {
            let params: Vec<String> = chunk.iter().map(|s| format!("\"{s}\"")).collect();
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            io.send.push(format!(
                r#"{{"method":"{method}","params":[{}],"id":{id}}}"#,
                params.join(",")
            ));
        }
    }

    fn by_tag(&self, tag: u64) -> Option<usize> {
        self.symbols.iter().position(|s| s.tag == tag)
    }

    fn find(&self, upper: &str) -> Option<usize> {
        self.symbols
            .iter()
            .position(|s| s.upper.eq_ignore_ascii_case(upper))
    }

    fn count_resync(&self, i: usize, reason: ResyncReason) {
        self.metrics
            .resyncs
            .get_or_create(&ResyncLabels {
                exchange: Exchange::Binance,
                market: self.exchange_market,
                symbol: self.symbols[i].symbol.to_string(),
                reason: reason.label(),
            })
            .inc();
    }

    /// Sends the snapshot requests whose throttle has passed: resync snapshots, and the
    /// deeper ones of books whose known range got thin.
    fn issue_snapshots(&mut self, now: Instant, io: &mut Io<'_>) {
        // A depth snapshot of `limit` levels, weighed as the venue weighs it.
        let (market, base, rate) = (self.exchange_market, &self.rest_base, self.rate);
        let path = match market {
            Market::Spot => "/api/v3/depth",
            Market::Perpetual => "/fapi/v1/depth",
        };
        let request = |tag: u64, upper: &str, limit: u32| RestRequest {
            tag,
            base: base.clone(),
            path: format!("{path}?symbol={upper}&limit={limit}"),
            weight: snapshot_weight(market, limit),
            limit: rate,
        };
        for st in self.symbols.iter_mut() {
            if st.deep.due(now)
                && let Some(sync) = st.sync.as_mut()
                && (sync.is_deepening() || sync.start_deepening())
            {
                st.deep.sent();
                io.rest
                    .push(request(st.tag | DEEP, &st.upper, st.deep_limit));
            }
            if st.snapshots.due(now) {
                st.snapshots.sent();
                // A book that has needed deepening, or ran out of levels, resyncs as deep as
                // it would be deepened: a shallower book would run thin again before a
                // deepening could reach it (under a walking firehose, 100 levels went thin
                // within 60 ms, again and again, while the deepening waited its backoff).
                st.resync_limit = match st.deep_resync {
                    true => st.deep_limit.max(SNAPSHOT_LIMIT),
                    false => SNAPSHOT_LIMIT,
                };
                io.rest.push(request(st.tag, &st.upper, st.resync_limit));
            }
        }
    }

    /// Acts on what the book sync machine said.
    fn on_sync_event(
        &mut self,
        i: usize,
        ev: SyncEvent,
        ts_ms: u64,
        now: Instant,
        io: &mut Io<'_>,
    ) -> FrameKind {
        match ev {
            SyncEvent::Applied { .. } => {
                // A snapshot succeeded once the stream continues it, not when it is applied.
                if self.symbols[i]
                    .sync
                    .as_ref()
                    .is_some_and(|s| s.is_bridged())
                {
                    self.symbols[i].snapshots.succeeded();
                }
                self.symbols[i].unsync_logged = false;
                self.publish_book(i, ts_ms, io, now);
            }
            SyncEvent::NeedSnapshot => self.symbols[i].snapshots.want(now),
            SyncEvent::Resync(reason) => {
                if std::mem::replace(&mut self.symbols[i].unsync_logged, true) {
                    tracing::debug!(symbol = %self.symbols[i].symbol, market = %self.exchange_market, ?reason, "book still unsynced; fetching a new snapshot");
                } else {
                    tracing::warn!(symbol = %self.symbols[i].symbol, market = %self.exchange_market, ?reason, "book unsynced; fetching a new snapshot (until it is synced again, further reasons are only counted in marketbox_book_resyncs_total)");
                }
                self.count_resync(i, reason);
                let st = &mut self.symbols[i];
                if reason == ResyncReason::Truncated {
                    st.deep_resync = true;
                }
                if reason == ResyncReason::StaleSnapshot {
                    // Asked too early: ask again after the backoff, not at once.
                    st.snapshots.retry_later(now, None);
                } else {
                    // At once after a verified stretch; after the backoff while snapshots
                    // keep failing to bridge (a stream far behind them, say).
                    st.snapshots.resync(now);
                }
            }
            SyncEvent::Buffered | SyncEvent::Dropped | SyncEvent::Ignored => {}
        }
        self.issue_snapshots(now, io);
        FrameKind::Data
    }

    /// The answer to a deepening snapshot of symbol `i`.
    fn on_deep_rest(
        &mut self,
        i: usize,
        result: Result<RestResponse, RestError>,
        now: Instant,
        io: &mut Io<'_>,
    ) {
        let st = &mut self.symbols[i];
        if !st.deep.answered() {
            return;
        }
        let Some(sync) = st.sync.as_mut() else {
            return;
        };
        let outcome = match result {
            Ok(resp) if resp.status == 200 => match DepthSnapshot::parse(&resp.body) {
                Ok(snap) => sync.on_deep_snapshot(&snap, st.deep_limit as usize),
                Err(_) => Deepened::Stale,
            },
            Ok(resp) => {
                sync.cancel_deepening();
                st.deep.retry_later(now, resp.retry_after);
                return;
            }
            Err(_) => {
                sync.cancel_deepening();
                st.deep.retry_later(now, None);
                return;
            }
        };
        self.on_deep_outcome(i, outcome, now, io);
        self.update_health(i, now);
    }

    /// How a deepening of symbol `i` went, from its REST answer or from the diffs that
    /// brought the live book up to its snapshot.
    fn on_deep_outcome(&mut self, i: usize, outcome: Deepened, now: Instant, io: &mut Io<'_>) {
        let st = &mut self.symbols[i];
        match outcome {
            Deepened::Spliced => {
                st.deep.succeeded();
                st.deepenings.inc();
                // Deepened again within a minute: ask for more next time; left alone for ten
                // minutes: for less.
                let step = DEEP_LIMITS
                    .iter()
                    .position(|l| *l == st.deep_limit)
                    .unwrap_or(1);
                let step = match st.deepened_at.map(|t| now.saturating_duration_since(t)) {
                    Some(d) if d < Duration::from_secs(60) => (step + 1).min(DEEP_LIMITS.len() - 1),
                    Some(d) if d > Duration::from_secs(600) => step.saturating_sub(1),
                    _ => step,
                };
                st.deep_limit = DEEP_LIMITS[step];
                st.deepened_at = Some(now);
                st.deep_resync = true;
            }
            Deepened::Waiting | Deepened::Ignored => {}
            Deepened::Stale => {
                if let Some(sync) = st.sync.as_mut() {
                    sync.cancel_deepening();
                }
                st.deep.retry_later(now, None);
            }
            Deepened::Resync(r) => {
                self.on_sync_event(i, SyncEvent::Resync(r), 0, now, io);
            }
        }
    }

    /// Shows symbol `i`'s book state in the metrics.
    fn update_health(&mut self, i: usize, now: Instant) {
        let st = &mut self.symbols[i];
        if let (Some(h), Some(sync)) = (st.health.as_mut(), st.sync.as_ref()) {
            h.set(sync.is_synced(), now);
        }
    }

    fn log_bad_frame(&mut self, kind: FrameKind, err: &dyn std::fmt::Display, text: &str) {
        let flag = match kind {
            FrameKind::Malformed => &mut self.logged_malformed,
            _ => &mut self.logged_unknown,
        };
        if !*flag {
            *flag = true;
            let head: String = text.chars().take(160).collect();
            tracing::warn!(%err, frame = %head, "skipping a frame (further ones are only counted in marketbox_ws_frames_total)");
        }
    }
}

fn dec(s: &str) -> Option<Decimal> {
    Decimal::parse(s).ok()
}

fn side_of(s: &str) -> Option<Side> {
    match s {
        "BUY" => Some(Side::Buy),
        "SELL" => Some(Side::Sell),
        _ => None,
    }
}

impl BinanceProtocol {
    fn publish_book(&mut self, i: usize, ts_ms: u64, io: &mut Io<'_>, now: Instant) {
        let st = &mut self.symbols[i];
        let (Some(stream), Some(sync)) = (st.book, st.sync.as_mut()) else {
            return;
        };
        let out = io.publisher.book_scratch();
        match sync.fill(self.depth, out) {
            Ok(true) => {
                let update_id = out.update_id;
                io.publisher.publish_scratch(stream, ts_ms, update_id);
                // A cut side with less than four times the published depth left: deepen it in
                // the background before it runs out. (Eight times made no difference under
                // the firehose: a resync in 5 of 16 runs against 5 of 17, for more weight.)
                if st.deep.state == crate::book::sync::SnapshotState::Idle
                    && sync.is_thin(4 * self.depth)
                {
                    st.deep.want(now);
                }
            }
            Ok(false) => {}
            Err(reason) => {
                self.on_sync_event(i, SyncEvent::Resync(reason), ts_ms, now, io);
            }
        }
    }

    /// A `trade` or `aggTrade`: the taker sold when the buyer was the maker.
    #[allow(clippy::too_many_arguments)]
    fn publish_trade(
        &self,
        symbol: &str,
        id: u64,
        price: &str,
        qty: &str,
        buyer_is_maker: bool,
        ts_ms: u64,
        io: &mut Io<'_>,
    ) -> FrameKind {
        let Some(stream) = self.find(symbol).and_then(|i| self.symbols[i].trade) else {
            return FrameKind::Unknown;
        };
        let (Some(price), Some(qty)) = (dec(price), dec(qty)) else {
            return FrameKind::Malformed;
        };
        let side = if buyer_is_maker {
            Side::Sell
        } else {
            Side::Buy
        };
        io.publisher.publish(
            stream,
            ts_ms,
            id,
            Data::Trade(TradeData {
                trade_id: id,
                price,
                qty,
                side,
            }),
        );
        FrameKind::Data
    }

    fn handle_frame(
        &mut self,
        frame: Frame<'_>,
        now: Instant,
        io: &mut Io<'_>,
    ) -> (FrameKind, Control) {
        match frame {
            Frame::Depth(d) => {
                let Some(i) = self.find(d.symbol) else {
                    return (FrameKind::Unknown, Control::Continue);
                };
                if self.symbols[i].sync.is_none() {
                    return (FrameKind::Unknown, Control::Continue);
                }
                self.symbols[i].last_depth = now;
                let ev = match self.symbols[i].sync.as_mut() {
                    Some(sync) => sync.on_diff(&d),
                    None => return (FrameKind::Unknown, Control::Continue),
                };
                let deep = self.symbols[i]
                    .sync
                    .as_mut()
                    .and_then(|s| s.take_deep_outcome());
                if let Some(outcome) = deep {
                    self.on_deep_outcome(i, outcome, now, io);
                }
                let kind = self.on_sync_event(i, ev, d.event_time, now, io);
                self.update_health(i, now);
                (kind, Control::Continue)
            }
            Frame::Trade(t) => (
                self.publish_trade(
                    t.symbol,
                    t.id,
                    t.price,
                    t.qty,
                    t.buyer_is_maker,
                    t.trade_time,
                    io,
                ),
                Control::Continue,
            ),
            Frame::AggTrade(t) => (
                self.publish_trade(
                    t.symbol,
                    t.id,
                    t.price,
                    t.qty,
                    t.buyer_is_maker,
                    t.trade_time,
                    io,
                ),
                Control::Continue,
            ),
            Frame::MarkPrice(m) => {
                let Some(stream) = self.find(m.symbol).and_then(|i| self.symbols[i].funding) else {
                    return (FrameKind::Unknown, Control::Continue);
                };
                let (Some(rate), Some(mark)) = (dec(m.funding_rate), dec(m.mark_price)) else {
                    return (FrameKind::Malformed, Control::Continue);
                };
                let index = match m.index_price.map(dec) {
                    Some(None) => return (FrameKind::Malformed, Control::Continue),
                    Some(v) => v,
                    None => None,
                };
                io.publisher.publish(
                    stream,
                    m.event_time,
                    m.event_time,
                    Data::FundingRate(FundingRateData {
                        funding_rate: rate,
                        funding_time_ms: m.next_funding_time,
                        mark_price: Some(mark),
                        index_price: index,
                        next_funding_rate: None,
                    }),
                );
                (FrameKind::Data, Control::Continue)
            }
            Frame::ForceOrder(f) => {
                let o = &f.order;
                let Some(stream) = self
                    .find(o.symbol)
                    .and_then(|i| self.symbols[i].liquidation)
                else {
                    return (FrameKind::Unknown, Control::Continue);
                };
                let (Some(side), Some(price), Some(qty)) =
                    (side_of(o.side), dec(o.price), dec(o.qty))
                else {
                    return (FrameKind::Malformed, Control::Continue);
                };
                let avg_price = match o.avg_price.map(dec) {
                    Some(None) => return (FrameKind::Malformed, Control::Continue),
                    Some(v) => v,
                    None => None,
                };
                let status = o.status.and_then(|s| heapless::String::try_from(s).ok());
                io.publisher.publish(
                    stream,
                    o.trade_time,
                    o.trade_time,
                    Data::Liquidation(LiquidationData {
                        side,
                        price,
                        qty,
                        avg_price,
                        status,
                    }),
                );
                (FrameKind::Data, Control::Continue)
            }
            Frame::Reply { .. } => (FrameKind::Control, Control::Continue),
            Frame::Error { code, msg } => {
                tracing::warn!(code, %msg, url = %self.url, "Binance refused a request");
                let label = usize::try_from(code).ok().filter(|c| *c < 4).unwrap_or(4);
                self.refusals[label].inc();
                (FrameKind::Control, Control::Continue)
            }
            Frame::ServerShutdown => {
                tracing::info!(url = %self.url, "serverShutdown: rotating the connection");
                (FrameKind::Control, Control::Rotate)
            }
        }
    }
}

impl Protocol for BinanceProtocol {
    fn url(&self) -> &str {
        &self.url
    }

    fn on_connected(&mut self, now: Instant, _io: &mut Io<'_>, how: Connected) {
        // The URL carries the streams. A replacement continues the books (the update ids are
        // the venue's, the same on every socket); a fresh connection starts them over.
        if how == Connected::Rotation {
            for st in &mut self.symbols {
                st.last_depth = now;
            }
            return;
        }
        for st in &mut self.symbols {
            if let Some(sync) = st.sync.as_mut() {
                sync.reset();
            }
            st.snapshots.reconnected();
            st.last_depth = now;
            if let Some(h) = st.health.as_mut() {
                h.set(false, now);
            }
        }
    }

    fn reconfigure(&mut self, socket: &SocketPlan, cfg: &Config, now: Instant, io: &mut Io<'_>) {
        self.depth = cfg.book.depth.0;
        self.stale_after = cfg.session.stale_after.0;
        let old = std::mem::take(&mut self.wires);
        self.rebuild(socket, now);
        // The combined stream takes SUBSCRIBE and UNSUBSCRIBE on the live socket: the socket
        // stays, its other streams keep flowing, and a new symbol's book syncs from its first
        // diff and a REST snapshot like any other.
        let new = std::mem::take(&mut self.wires);
        let removed: Vec<&str> = old
            .iter()
            .filter(|w| !new.contains(w))
            .map(String::as_str)
            .collect();
        let added: Vec<&str> = new
            .iter()
            .filter(|w| !old.contains(w))
            .map(String::as_str)
            .collect();
        if !removed.is_empty() {
            tracing::info!(url = %self.base_url, streams = ?removed, "unsubscribing");
            self.request("UNSUBSCRIBE", &removed, io);
        }
        if !added.is_empty() {
            tracing::info!(url = %self.base_url, streams = ?added, "subscribing");
            self.request("SUBSCRIBE", &added, io);
        }
        self.wires = new;
    }

    fn on_text(&mut self, text: &str, now: Instant, io: &mut Io<'_>) -> (FrameKind, Control) {
        // A depth update's levels are read here with the envelope (no heap: a fixed array on
        // the stack, untouched until filled).
        let mut levels = LevelBuf::new();
        match wire::parse_frame_reading(text, &mut levels) {
            Ok(frame) => self.handle_frame(frame, now, io),
            Err(err) => {
                let kind = match err {
                    wire::WireError::Malformed(_) => FrameKind::Malformed,
                    wire::WireError::Unknown(_) => FrameKind::Unknown,
                };
                self.log_bad_frame(kind, &err, text);
                (kind, Control::Continue)
            }
        }
    }

    fn on_rest(
        &mut self,
        tag: u64,
        result: Result<RestResponse, RestError>,
        now: Instant,
        io: &mut Io<'_>,
    ) {
        // A symbol removed since the request was sent has no tag here any more.
        let Some(i) = self.by_tag(tag & !DEEP) else {
            return;
        };
        if tag & DEEP != 0 {
            self.on_deep_rest(i, result, now, io);
            return;
        }
        if !self.symbols[i].snapshots.answered() {
            return;
        }
        match result {
            Ok(resp) if resp.status == 200 => match DepthSnapshot::parse(&resp.body) {
                Ok(snap) => {
                    let st = &mut self.symbols[i];
                    let ev = match st.sync.as_mut() {
                        Some(sync) => sync.on_snapshot(&snap, st.resync_limit as usize),
                        None => return,
                    };
                    let ts = snap.event_time.unwrap_or(0);
                    self.on_sync_event(i, ev, ts, now, io);
                }
                Err(err) => {
                    let st = &mut self.symbols[i];
                    let d = st.snapshots.retry_later(now, None);
                    tracing::warn!(%err, symbol = %st.symbol, retry_in = ?d, "snapshot body is not a depth snapshot (the venue's REST answer is malformed)");
                }
            },
            Ok(resp) => {
                let st = &mut self.symbols[i];
                let body: Option<RestErrorBody> = serde_json::from_slice(&resp.body).ok();
                if resp.status == 400
                    && body
                        .as_ref()
                        .is_some_and(|b| b.code == wire::INVALID_SYMBOL)
                {
                    tracing::error!(symbol = %st.symbol, market = %self.exchange_market, "Binance does not list this symbol; its book stays unpublished (fix the config)");
                    st.snapshots.refuse();
                    return;
                }
                let d = st.snapshots.retry_later(now, resp.retry_after);
                tracing::warn!(status = resp.status, symbol = %st.symbol, retry_in = ?d, "snapshot refused");
            }
            Err(err) => {
                let st = &mut self.symbols[i];
                let d = st.snapshots.retry_later(now, None);
                tracing::warn!(%err, symbol = %st.symbol, retry_in = ?d, "snapshot failed");
            }
        }
        self.issue_snapshots(now, io);
        self.update_health(i, now);
    }

    fn on_tick(&mut self, now: Instant, io: &mut Io<'_>) -> Control {
        // A deepening whose log overflowed (or whose answer was stale) is asked again once its
        // schedule allows.
        for st in &mut self.symbols {
            if let Some(sync) = st.sync.as_ref()
                && st.deep.state == crate::book::sync::SnapshotState::Idle
                && sync.is_thin(4 * self.depth)
            {
                st.deep.want(now);
            }
        }
        for st in &mut self.symbols {
            if let Some(h) = st.health.as_mut() {
                h.tick(now);
            }
        }
        // Book streams that went quiet while the socket lives: resubscribe them, all in one
        // UNSUBSCRIBE and one SUBSCRIBE (two frames per tick at most, however many streams),
        // and each stream at most once per `stale_after`.
        let mut params = String::new();
        let mut quiet = 0usize;
        for st in &mut self.symbols {
            let Some(stream) = &st.depth_stream else {
                continue;
            };
            if now.saturating_duration_since(st.last_depth) >= self.stale_after {
                self.stale.inc();
                if quiet == 0 {
                    tracing::warn!(stream = %stream, quiet = ?self.stale_after, "stream went quiet; resubscribing");
                }
                if !params.is_empty() {
                    params.push(',');
                }
                params.push('"');
                params.push_str(stream);
                params.push('"');
                quiet += 1;
                st.last_depth = now;
            }
        }
        if quiet > 0 {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(2);
            io.send.push(format!(
                r#"{{"method":"UNSUBSCRIBE","params":[{params}],"id":{id}}}"#
            ));
            io.send.push(format!(
                r#"{{"method":"SUBSCRIBE","params":[{params}],"id":{}}}"#,
                id.wrapping_add(1)
            ));
        }
        self.issue_snapshots(now, io);
        Control::Continue
    }

    fn on_disconnected(&mut self) {
        let now = Instant::now();
        for st in &mut self.symbols {
            if let Some(sync) = st.sync.as_mut() {
                sync.reset();
            }
            if let Some(h) = st.health.as_mut() {
                h.set(false, now);
            }
        }
    }

    fn on_idle(&mut self, now: Instant) {
        for st in &mut self.symbols {
            if let Some(h) = st.health.as_mut() {
                h.tick(now);
            }
        }
    }

    /// Binance allows 300 connection attempts per 5 minutes per IP; we take 240.
    fn connect_limit(&self) -> ConnectLimit {
        ConnectLimit {
            max: 240,
            per: Duration::from_secs(300),
        }
    }

    fn send_rate(&self) -> (u32, Duration) {
        // Spot allows 5 incoming messages per second, USD-M 10; keep one in reserve.
        match self.exchange_market {
            Market::Spot => (4, Duration::from_secs(1)),
            Market::Perpetual => (9, Duration::from_secs(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Format;
    use crate::upstream::Publisher;
    use crate::upstream::spool::Spool;

    /// A JSON publisher for `socket`'s streams into a RAM spool of `bytes`.
    fn spool_publisher(socket: &SocketPlan, bytes: usize) -> Publisher {
        Publisher::new(
            Spool::new(bytes, Default::default()),
            Format::Json,
            &crate::upstream::StreamKey::for_socket(socket),
            None,
        )
    }

    /// A Binance spot config of `symbols` (orderbook and trade) and its one socket.
    fn spot(symbols: &[&str]) -> (Config, SocketPlan) {
        let list: Vec<String> = symbols.iter().map(|s| format!("\"{s}\"")).collect();
        let text = format!(
            "[[feeds]]\nexchange = \"binance\"\nmarket = \"spot\"\nsymbols = [{}]\nchannels = [\"orderbook\", \"trade\"]\n",
            list.join(", ")
        );
        let cfg = Config::parse(&text, "t.toml").expect("a valid config");
        let plan = crate::venue::plan(&cfg).expect("a plan");
        let socket = plan.sockets[0].clone();
        (cfg, socket)
    }

    fn diff(sym: &str) -> String {
        format!(
            r#"{{"stream":"{}@depth@100ms","data":{{"e":"depthUpdate","E":1,"s":"{}","U":5,"u":7,"b":[["1.5","2"]],"a":[["2","1"]]}}}}"#,
            sym.to_ascii_lowercase(),
            sym
        )
    }

    #[test]
    fn a_symbol_added_or_removed_live_is_subscribed_on_the_same_socket() {
        let metrics = Arc::new(Metrics::new());
        let (cfg, socket) = spot(&["BTC-USDT", "ETH-USDT"]);
        let mut proto = BinanceProtocol::new(&socket, Market::Spot, &cfg, metrics.clone());
        let mut template = spool_publisher(&socket, 1 << 16);
        let mut publisher = template.fork();
        let (mut send, mut rest) = (Vec::new(), Vec::new());
        let now = Instant::now();
        let mut io = Io {
            send: &mut send,
            rest: &mut rest,
            publisher: &mut publisher,
        };
        proto.on_connected(now, &mut io, Connected::Fresh);
        // ETH's first diff asks for its snapshot (the request carries ETH's tag).
        proto.on_text(&diff("ETHUSDT"), now, &mut io);
        let eth_tag = io.rest.pop().expect("ETH's snapshot request").tag;
        // TC0: the plan becomes BTC + SOL: one UNSUBSCRIBE, one SUBSCRIBE, no new socket.
        let (cfg2, socket2) = spot(&["BTC-USDT", "SOL-USDT"]);
        template.retarget(&crate::upstream::StreamKey::for_socket(&socket2), None);
        io.publisher.follow(&template);
        proto.reconfigure(&socket2, &cfg2, now, &mut io);
        assert_eq!(
            io.send.as_slice(),
            [
                r#"{"method":"UNSUBSCRIBE","params":["ethusdt@depth@100ms","ethusdt@trade"],"id":1}"#,
                r#"{"method":"SUBSCRIBE","params":["solusdt@depth@100ms","solusdt@trade"],"id":2}"#,
            ]
        );
        assert!(proto.url().ends_with("/stream?streams=btcusdt@depth@100ms/btcusdt@trade/solusdt@depth@100ms/solusdt@trade"), "{}", proto.url());
        assert_eq!(
            metrics.sum("marketbox_book_verified", &[("symbol", "SOL-USDT")]),
            0
        );
        // TC1: the removed symbol's late snapshot is ignored; its diffs are unknown now.
        let body = br#"{"lastUpdateId":6,"bids":[["1","1"]],"asks":[["3","1"]]}"#;
        let resp = RestResponse {
            status: 200,
            body: body.to_vec(),
            retry_after: None,
            used_weight: None,
        };
        proto.on_rest(eth_tag, Ok(resp), now, &mut io);
        assert!(io.rest.is_empty());
        assert_eq!(
            proto.on_text(&diff("ETHUSDT"), now, &mut io).0,
            FrameKind::Unknown
        );
        // TC2: the new symbol syncs like any other: its first diff asks for its snapshot.
        assert_eq!(
            proto.on_text(&diff("SOLUSDT"), now, &mut io).0,
            FrameKind::Data
        );
        let req = io.rest.pop().expect("SOL's snapshot request");
        assert!(req.path.contains("symbol=SOLUSDT"), "{}", req.path);
        assert_ne!(req.tag, eth_tag);
        // TC3: the same plan again changes nothing.
        io.send.clear();
        proto.reconfigure(&socket2, &cfg2, now, &mut io);
        assert!(io.send.is_empty());
    }

    #[test]
    fn a_book_that_needed_deepening_resyncs_as_deep_as_it_was_deepened() {
        let metrics = Arc::new(Metrics::new());
        let (cfg, socket) = spot(&["BTC-USDT"]);
        let mut proto = BinanceProtocol::new(&socket, Market::Spot, &cfg, metrics);
        let mut publisher = spool_publisher(&socket, 1 << 20);
        let (mut send, mut rest) = (Vec::new(), Vec::new());
        let now = Instant::now();
        let mut io = Io {
            send: &mut send,
            rest: &mut rest,
            publisher: &mut publisher,
        };
        let frame = |first: u64, last: u64| {
            format!(
                r#"{{"stream":"btcusdt@depth@100ms","data":{{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":{first},"u":{last},"b":[["990","2"]],"a":[["1010","1"]]}}}}"#
            )
        };
        // The resync snapshot request among those sent (not a deepening's).
        let resync_request = |rest: &[RestRequest]| {
            rest.iter()
                .find(|r| r.tag & DEEP == 0)
                .cloned()
                .expect("a resync snapshot request")
        };
        let answer = |last_id: u64, levels: usize| {
            let side = |from: u64, step: i64| -> Vec<String> {
                (0..levels as i64)
                    .map(|i| format!(r#"["{}","1"]"#, from as i64 + step * i))
                    .collect()
            };
            let body = format!(
                r#"{{"lastUpdateId":{last_id},"bids":[{}],"asks":[{}]}}"#,
                side(1000, -1).join(","),
                side(1001, 1).join(",")
            );
            Ok(RestResponse {
                status: 200,
                body: body.into_bytes(),
                retry_after: None,
                used_weight: None,
            })
        };
        proto.on_connected(now, &mut io, Connected::Fresh);
        // TC0: a book never deepened resyncs with 100 levels (weight 5).
        proto.on_text(&frame(5, 7), now, &mut io);
        let req = io.rest.pop().expect("a snapshot request");
        assert!(req.path.ends_with("&limit=100"), "{}", req.path);
        assert_eq!(req.weight, 5);
        proto.on_rest(req.tag, answer(6, 150), now, &mut io);
        assert!(
            proto.symbols[0]
                .sync
                .as_ref()
                .is_some_and(|s| s.is_synced())
        );
        // TC1: once deepened to 1000 levels, a resync (a gap) asks for 1000 (weight 50).
        proto.symbols[0].deep_resync = true;
        proto.symbols[0].deep_limit = 1000;
        proto.on_text(&frame(20, 21), now, &mut io);
        let req = resync_request(io.rest);
        assert!(req.path.ends_with("&limit=1000"), "{}", req.path);
        assert_eq!(req.weight, 50);
        // TC2: its answer is read against what was asked: 150 levels of 1000 asked are the
        // whole book, not a cut one (a cut side of 150 would be thin at 200).
        proto.on_rest(req.tag, answer(20, 150), now, &mut io);
        let sync = proto.symbols[0].sync.as_ref().expect("the book");
        assert!(sync.is_synced());
        assert!(!sync.is_thin(200));
        // TC3: a book never deepened that runs out of levels (`Truncated`) resyncs at the
        // deepening depth too (500 levels, weight 25, until it is deepened further).
        let (cfg, socket) = spot(&["BTC-USDT"]);
        let mut proto = BinanceProtocol::new(&socket, Market::Spot, &cfg, Arc::new(Metrics::new()));
        proto.on_connected(now, &mut io, Connected::Fresh);
        io.rest.clear();
        proto.on_text(&frame(5, 7), now, &mut io);
        let req = io.rest.pop().expect("a snapshot request");
        assert!(req.path.ends_with("&limit=100"), "{}", req.path);
        proto.on_rest(req.tag, answer(6, 150), now, &mut io);
        proto.on_sync_event(
            0,
            SyncEvent::Resync(ResyncReason::Truncated),
            0,
            now,
            &mut io,
        );
        let req = resync_request(io.rest);
        assert!(req.path.ends_with("&limit=500"), "{}", req.path);
        assert_eq!(req.weight, 25);
    }
}
