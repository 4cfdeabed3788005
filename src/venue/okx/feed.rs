//! The OKX per-socket protocol: spot and swaps on one `/ws/v5/public` socket.
//!
//! Design: sans-I/O, like Binance's, and split the same way: frames are read by `wire`,
//! subscriptions (requests, acks, refusals, the 480-per-hour budget) live in `subs`, books in
//! `book` (the seqId machine on the venue-neutral toolkit); this file maps frames to
//! normalized messages and decides how each unsynced book gets its next snapshot. On connect
//! every planned arg is subscribed; a `notice` 64008 (restart in 60 s) asks for a planned
//! rotation. The session probes a quiet socket with the text `ping` (the venue closes after
//! 30 s without a push). Books come from a WebSocket snapshot when the venue sends one, else
//! from a REST snapshot (`/api/v5/market/books?…&source=0`) spliced onto the buffered chain;
//! a gap, reset, checksum mismatch, crossed book or impossible id resyncs that one instrument
//! without dropping the socket.
//!
//! Ids are what JetStream de-duplicates on: trades use the venue's `tradeId` (a number, or the
//! frame is malformed: never 0), funding updates their `ts`, open interest its `ts`,
//! liquidations a stable hash of their fields (the venue does not number them).
//!
//! The socket's plan can change while it runs (`reconfigure`): new args are subscribed and
//! dropped ones unsubscribed on the live socket within the hourly budget (what the budget
//! does not allow now goes out on a later tick); REST answers find their instrument by a
//! tag that stays while the instrument does.
//!
//! Owns: mapping OKX frames to messages and snapshot scheduling. Must not touch: sockets or the
//! upstream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::book::{OkxBook, OkxEvent, ResyncReason};
use super::inst_id;
use super::subs::Subscriptions;
use super::wire::{
    Action, Arg, BookData, Event, Frame, Funding, Liq, NOTICE_RESTART, OkxChannel, Op,
    OpenInterest, Trade, WireError, number, parse_entries, rest_books,
};
use crate::book::Decimal;
use crate::book::sync::Snapshots;
use crate::config::{Config, Endpoint};
use crate::metrics::{BookHealth, Metrics, ResyncLabels, StreamLabels};
use crate::model::{
    Channel, Data, Exchange, FundingRateData, LiquidationData, Market, OpenInterestData, Side,
    Symbol, TradeData,
};
use crate::net::http::{RestError, RestResponse};
use crate::plan::SocketPlan;
use crate::session::rest::{RateSpec, RestRequest};
use crate::session::{ConnectLimit, Connected, Control, FrameKind, Io, Probe, Protocol};

pub use super::subs::ACK_WAIT;
pub use super::wire::{BooksPush, LevelBuf, parse_books_push};

/// The venue closes a socket that received nothing for 30 s: the session probes (the text
/// `ping`) after at most this long without a frame.
pub const MAX_SILENCE: Duration = Duration::from_secs(20);
/// OKX allows 3 connection requests per second per IP; we take 2.
pub const CONNECT_LIMIT: ConnectLimit = ConnectLimit {
    max: 2,
    per: Duration::from_secs(1),
};
/// After a resubscribe, how long to wait for the venue's WebSocket snapshot before falling
/// back to a REST snapshot.
const WS_SNAPSHOT_WAIT: Duration = Duration::from_secs(5);
/// A REST snapshot older than the buffered chain is fetched again after this pause.
const STALE_RETRY: Duration = Duration::from_millis(300);
/// Books REST rate limit: 40 requests per 2 s (we use half).
const BOOKS_RATE: RateSpec = RateSpec {
    bucket: "books",
    capacity: 20,
    window: Duration::from_secs(2),
};

/// Where an unsynced book's next snapshot comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A resubscribe was sent: the venue's WebSocket snapshot is expected until `until`, then
    /// a REST snapshot is fetched instead.
    WsSnapshot { until: Instant },
    /// A REST snapshot, on the toolkit's schedule.
    Rest,
}

/// An instrument's book and what it takes to keep it verified.
struct InstBook {
    stream: usize,
    book: OkxBook,
    health: BookHealth,
    source: Source,
    snapshots: Snapshots,
}

struct Inst {
    /// Stable for the instrument's life on this protocol: REST answers find it by this.
    tag: u64,
    market: Market,
    symbol: Symbol,
    /// `BTC-USDT` or `BTC-USDT-SWAP`.
    id: String,
    book: Option<InstBook>,
    trade: Option<usize>,
    funding: Option<usize>,
    open_interest: Option<usize>,
    liquidation: Option<usize>,
}

/// The protocol of the OKX public socket.
pub struct OkxProtocol {
    url: String,
    rest: Endpoint,
    subs: Subscriptions,
    insts: Vec<Inst>,
    depth: usize,
    metrics: Arc<Metrics>,
    /// The venue sent a WebSocket books snapshot on this connection, so a resubscribe gets one.
    ws_snapshots: bool,
    next_tag: u64,
    logged_malformed: bool,
}

fn dec(s: &str, field: &'static str) -> Result<Decimal, WireError> {
    Decimal::parse(s).map_err(|_| WireError::Invalid(field))
}

fn side(s: &str) -> Result<Side, WireError> {
    match s {
        "buy" => Ok(Side::Buy),
        "sell" => Ok(Side::Sell),
        _ => Err(WireError::Invalid("side")),
    }
}

impl OkxProtocol {
    pub fn new(socket: &SocketPlan, cfg: &Config, metrics: Arc<Metrics>) -> Self {
        let now = Instant::now();
        let subs = Subscriptions::new(metrics.clone(), socket.name.as_str(), now);
        let mut proto = OkxProtocol {
            url: socket.url.clone(),
            rest: cfg.venues.okx.rest.clone(),
            subs,
            insts: Vec::new(),
            depth: cfg.book.depth.0,
            metrics,
            ws_snapshots: false,
            next_tag: 0,
            logged_malformed: false,
        };
        for (channel, key) in proto.rebuild(socket, now) {
            proto.subs.add(channel, &key);
        }
        proto
    }

    /// Makes the instruments those of `socket` (stream indices are positions in
    /// `socket.streams`): one already here keeps its book, a new one starts unsynced, one no
    /// longer planned is dropped. Returns the subscription args the plan needs.
    fn rebuild(&mut self, socket: &SocketPlan, now: Instant) -> Vec<(OkxChannel, String)> {
        let mut old = std::mem::take(&mut self.insts);
        let mut insts: Vec<Inst> = Vec::new();
        let mut args: Vec<(OkxChannel, String)> = Vec::new();
        for (i, s) in socket.streams.iter().enumerate() {
            let id = inst_id(s.market, &s.symbol);
            let pos = match insts.iter().position(|x| x.id == id) {
                Some(p) => p,
                None => {
                    let inst = match old.iter().position(|x| x.id == id) {
                        Some(j) => {
                            let mut inst = old.swap_remove(j);
                            inst.trade = None;
                            inst.funding = None;
                            inst.open_interest = None;
                            inst.liquidation = None;
                            if let Some(b) = inst.book.as_mut() {
                                b.stream = usize::MAX;
                            }
                            inst
                        }
                        None => {
                            self.next_tag += 1;
                            Inst {
                                tag: self.next_tag,
                                market: s.market,
                                symbol: s.symbol,
                                id: id.clone(),
                                book: None,
                                trade: None,
                                funding: None,
                                open_interest: None,
                                liquidation: None,
                            }
                        }
                    };
                    insts.push(inst);
                    insts.len() - 1
                }
            };
            let inst = &mut insts[pos];
            let arg = match s.channel {
                Channel::Orderbook => {
                    match inst.book.as_mut() {
                        Some(b) => b.stream = i,
                        None => {
                            let dropped = self
                                .metrics
                                .book_levels_dropped
                                .get_or_create(&StreamLabels {
                                    exchange: Exchange::Okx,
                                    market: s.market,
                                    symbol: s.symbol.to_string(),
                                    channel: Channel::Orderbook,
                                })
                                .clone();
                            inst.book = Some(InstBook {
                                stream: i,
                                book: OkxBook::with_counter(dropped),
                                health: BookHealth::new(
                                    &self.metrics,
                                    Exchange::Okx,
                                    s.market,
                                    s.symbol.as_str(),
                                    now,
                                ),
                                source: Source::Rest,
                                snapshots: Snapshots::default(),
                            });
                        }
                    }
                    (OkxChannel::Books, id)
                }
                Channel::Trade => {
                    inst.trade = Some(i);
                    (OkxChannel::Trades, id)
                }
                Channel::FundingRate => {
                    inst.funding = Some(i);
                    (OkxChannel::FundingRate, id)
                }
                Channel::OpenInterest => {
                    inst.open_interest = Some(i);
                    (OkxChannel::OpenInterest, id)
                }
                Channel::Liquidation => {
                    inst.liquidation = Some(i);
                    (OkxChannel::LiquidationOrders, "SWAP".to_owned())
                }
                _ => continue,
            };
            if !args.contains(&arg) {
                args.push(arg);
            }
        }
        for inst in &mut insts {
            if inst.book.as_ref().is_some_and(|b| b.stream == usize::MAX) {
                inst.book = None;
            }
        }
        self.insts = insts;
        args
    }

    fn by_tag(&self, tag: u64) -> Option<usize> {
        self.insts.iter().position(|x| x.tag == tag)
    }

    fn count_resync(&self, i: usize, reason: ResyncReason) {
        let inst = &self.insts[i];
        self.metrics
            .resyncs
            .get_or_create(&ResyncLabels {
                exchange: Exchange::Okx,
                market: inst.market,
                symbol: inst.symbol.to_string(),
                reason: reason.label(),
            })
            .inc();
    }

    /// Sends the REST snapshot request of instrument `i` when its schedule allows.
    fn fetch_snapshot(&mut self, i: usize, now: Instant, io: &mut Io<'_>) {
        let inst = &mut self.insts[i];
        let Some(b) = inst.book.as_mut() else {
            return;
        };
        if let Source::WsSnapshot { until } = b.source {
            if now < until {
                return;
            }
            b.source = Source::Rest;
        }
        b.snapshots.want(now);
        if !b.snapshots.due(now) {
            return;
        }
        b.snapshots.sent();
        io.rest.push(RestRequest {
            tag: inst.tag,
            base: self.rest.clone(),
            path: format!("/api/v5/market/books?instId={}&sz=400&source=0", inst.id),
            weight: 1,
            limit: BOOKS_RATE,
        });
    }

    /// What a book machine said about an update (`live`: one that continued a synced book) or
    /// a snapshot.
    fn on_book_event(
        &mut self,
        i: usize,
        ev: OkxEvent,
        live: bool,
        ts_ms: u64,
        now: Instant,
        io: &mut Io<'_>,
    ) {
        match ev {
            OkxEvent::Applied { .. } => {
                let depth = self.depth;
                let Some(b) = self.insts[i].book.as_mut() else {
                    return;
                };
                if live {
                    // A live update verified on top of the snapshot: the resync worked, so
                    // the next loss of sync asks at once again.
                    b.snapshots.succeeded();
                }
                match b.book.fill(depth, io.publisher.book_scratch()) {
                    Ok(true) => {
                        // The seqId; books of captures from before seqId existed (update_id
                        // 0) are told apart by their timestamp.
                        let id = match io.publisher.book_scratch().update_id {
                            0 => ts_ms,
                            seq => seq,
                        };
                        io.publisher.publish_scratch(b.stream, ts_ms, id);
                    }
                    Ok(false) => {}
                    Err(r) => self.resync(i, r, now, io),
                }
            }
            OkxEvent::Buffered => self.fetch_snapshot(i, now, io),
            OkxEvent::Resync(ResyncReason::StaleSnapshot) => {
                // The buffer is kept: fetch again shortly.
                tracing::info!(inst = %self.insts[i].id, "OKX REST snapshot older than the buffered updates; fetching again");
                self.count_resync(i, ResyncReason::StaleSnapshot);
                if let Some(b) = self.insts[i].book.as_mut() {
                    b.snapshots.again_after(now, STALE_RETRY);
                }
            }
            OkxEvent::Resync(ResyncReason::BufferOverflow) => {
                // The snapshot is older than the updates the buffer kept (it dropped older
                // ones to stay within its bounds): the buffer is kept; fetch again now.
                self.count_resync(i, ResyncReason::BufferOverflow);
                self.fetch_snapshot(i, now, io);
            }
            OkxEvent::Resync(r) => self.resync(i, r, now, io),
            OkxEvent::Heartbeat | OkxEvent::Dropped => {}
        }
        if let Some(b) = self.insts[i].book.as_mut() {
            b.health.set(b.book.is_synced(), now);
        }
    }

    /// Resyncs one instrument, never the socket. Where the venue sends WebSocket snapshots on
    /// this connection and the hourly budget allows, unsubscribe + subscribe brings a fresh
    /// one; otherwise the updates that keep flowing are buffered and a REST snapshot is
    /// spliced onto them (which is also the fallback when the WebSocket snapshot is late).
    fn resync(&mut self, i: usize, r: ResyncReason, now: Instant, io: &mut Io<'_>) {
        tracing::warn!(inst = %self.insts[i].id, reason = ?r, "OKX book unsynced; resyncing this instrument");
        self.count_resync(i, r);
        let ws = self.ws_snapshots && self.subs.tokens(now) >= 2;
        let sub = self.subs.find(OkxChannel::Books, &self.insts[i].id);
        let Some(b) = self.insts[i].book.as_mut() else {
            return;
        };
        b.book.reset();
        b.source = Source::Rest;
        if ws
            && let Some(sub) = sub
            && self.subs.request(Op::Unsubscribe, &[sub], now, io.send)
            && self.subs.request(Op::Subscribe, &[sub], now, io.send)
        {
            b.source = Source::WsSnapshot {
                until: crate::time::after(now, WS_SNAPSHOT_WAIT),
            };
        } else {
            // Over REST: at once after a verified stretch, after a growing backoff while the
            // books that snapshots bring keep failing before a live update verifies (a venue
            // that misbehaves gets spaced requests, not one per failure).
            b.snapshots.resync(now);
        }
    }

    fn find(&self, id: &str) -> Option<usize> {
        self.insts.iter().position(|x| x.id == id)
    }

    /// The configured instrument a push is for.
    fn inst_of(&self, arg: &Arg<'_>) -> Result<usize, WireError> {
        arg.inst_id
            .and_then(|id| self.find(id))
            .ok_or(WireError::UnknownInstrument)
    }

    fn on_event(&mut self, event: Event, f: &Frame<'_>) -> (FrameKind, Control) {
        match event {
            Event::Subscribe => {
                if let Some(a) = &f.arg
                    && let (Some(channel), Some(key)) = (a.channel, a.key())
                {
                    self.subs.acked(channel, key);
                }
            }
            Event::Error => {
                self.subs
                    .refused(f.id, f.code.unwrap_or(""), f.msg.unwrap_or(""));
            }
            Event::Notice if f.code == Some(NOTICE_RESTART) => {
                tracing::info!("OKX announced a service restart; rotating the connection");
                return (FrameKind::Control, Control::Rotate);
            }
            Event::Notice | Event::Unsubscribe | Event::Other => {}
        }
        (FrameKind::Control, Control::Continue)
    }

    fn on_books(
        &mut self,
        i: usize,
        f: &Frame<'_>,
        raw: &str,
        now: Instant,
        io: &mut Io<'_>,
    ) -> Result<(), WireError> {
        let entries = match &f.books {
            Some(e) => e.clone(),
            None => parse_entries(raw)?,
        };
        let snapshot = f.action == Some(Action::Snapshot);
        if snapshot {
            self.ws_snapshots = true;
        }
        for d in &entries {
            let Some(b) = self.insts[i].book.as_mut() else {
                return Err(WireError::Invalid("arg.channel"));
            };
            let live = !snapshot && b.book.is_synced();
            let ev = if snapshot {
                b.source = Source::Rest;
                b.book.on_ws_snapshot(d)
            } else {
                b.book.on_update(d)
            };
            self.on_book_event(i, ev, live, d.ts_ms(), now, io);
        }
        Ok(())
    }

    fn handle(
        &mut self,
        f: Frame<'_>,
        now: Instant,
        io: &mut Io<'_>,
    ) -> Result<(FrameKind, Control), WireError> {
        if let Some(event) = f.event {
            return Ok(self.on_event(event, &f));
        }
        let (Some(arg), Some(raw)) = (f.arg, f.data) else {
            return Err(WireError::NotAFrame);
        };
        let Some(channel) = arg.channel else {
            return Ok((FrameKind::Unknown, Control::Continue));
        };
        match channel {
            OkxChannel::Books => {
                let i = self.inst_of(&arg)?;
                self.on_books(i, &f, raw, now, io)?;
            }
            OkxChannel::Trades => {
                let i = self.inst_of(&arg)?;
                let stream = self.insts[i].trade.ok_or(WireError::UnknownInstrument)?;
                let rows: Vec<Trade<'_>> =
                    serde_json::from_str(raw).map_err(|_| WireError::Invalid("data"))?;
                for t in rows {
                    let id = number(t.trade_id, "tradeId")?;
                    let data = TradeData {
                        trade_id: id,
                        price: dec(t.px, "px")?,
                        qty: dec(t.sz, "sz")?,
                        side: side(t.side)?,
                    };
                    io.publisher
                        .publish(stream, number(t.ts, "ts")?, id, Data::Trade(data));
                }
            }
            OkxChannel::FundingRate => {
                let i = self.inst_of(&arg)?;
                let stream = self.insts[i].funding.ok_or(WireError::UnknownInstrument)?;
                let rows: Vec<Funding<'_>> =
                    serde_json::from_str(raw).map_err(|_| WireError::Invalid("data"))?;
                for r in rows {
                    let next = match r.next_funding_rate.filter(|s| !s.is_empty()) {
                        Some(s) => Some(dec(s, "nextFundingRate")?),
                        None => None,
                    };
                    let ts = match r.ts {
                        Some(ts) => number(ts, "ts")?,
                        None => 0,
                    };
                    let id = r.id()?;
                    let data = FundingRateData {
                        funding_rate: dec(r.funding_rate, "fundingRate")?,
                        funding_time_ms: number(r.funding_time, "fundingTime")?,
                        mark_price: None,
                        index_price: None,
                        next_funding_rate: next,
                    };
                    io.publisher
                        .publish(stream, ts, id, Data::FundingRate(data));
                }
            }
            OkxChannel::OpenInterest => {
                let i = self.inst_of(&arg)?;
                let stream = self.insts[i]
                    .open_interest
                    .ok_or(WireError::UnknownInstrument)?;
                let rows: Vec<OpenInterest<'_>> =
                    serde_json::from_str(raw).map_err(|_| WireError::Invalid("data"))?;
                for r in rows {
                    let ts = number(r.ts, "ts")?;
                    let data = OpenInterestData {
                        open_interest: dec(r.oi_ccy, "oiCcy")?,
                        open_interest_contracts: Some(dec(r.oi, "oi")?),
                    };
                    io.publisher
                        .publish(stream, ts, ts, Data::OpenInterest(data));
                }
            }
            OkxChannel::LiquidationOrders => {
                let rows: Vec<Liq<'_>> =
                    serde_json::from_str(raw).map_err(|_| WireError::Invalid("data"))?;
                for r in rows {
                    // Subscribed for every swap: keep only the configured instruments.
                    let Some((i, inst_id)) = r.inst_id.and_then(|id| Some((self.find(id)?, id)))
                    else {
                        continue;
                    };
                    let Some(stream) = self.insts[i].liquidation else {
                        continue;
                    };
                    for d in r.details {
                        let data = LiquidationData {
                            side: side(d.side)?,
                            price: dec(d.price, "bkPx")?,
                            qty: dec(d.sz, "sz")?,
                            avg_price: None,
                            status: None,
                        };
                        io.publisher.publish(
                            stream,
                            number(d.ts, "ts")?,
                            d.id(inst_id),
                            Data::Liquidation(data),
                        );
                    }
                }
            }
        }
        Ok((FrameKind::Data, Control::Continue))
    }

    fn rest_snapshot(&mut self, i: usize, body: &[u8], now: Instant, io: &mut Io<'_>) {
        let parsed = std::str::from_utf8(body)
            .map_err(|_| WireError::Invalid("body"))
            .and_then(rest_books);
        let d: BookData<'_> = match parsed {
            Ok(d) => d,
            Err(err) => {
                if let Some(b) = self.insts[i].book.as_mut() {
                    let wait = b.snapshots.retry_later(now, None);
                    tracing::warn!(inst = %self.insts[i].id, %err, retry_in = ?wait, "OKX book snapshot unusable");
                }
                return;
            }
        };
        let Some(b) = self.insts[i].book.as_mut() else {
            return;
        };
        let ev = b.book.on_rest_snapshot(&d);
        self.on_book_event(i, ev, false, d.ts_ms(), now, io);
    }
}

impl Protocol for OkxProtocol {
    fn url(&self) -> &str {
        &self.url
    }

    fn on_connected(&mut self, now: Instant, io: &mut Io<'_>, how: Connected) {
        self.subs.reconnected(now);
        if how == Connected::Fresh {
            self.ws_snapshots = false;
            for inst in &mut self.insts {
                if let Some(b) = inst.book.as_mut() {
                    b.book.reset();
                    b.snapshots.reconnected();
                    b.source = Source::Rest;
                    b.health.set(false, now);
                }
            }
        }
        // A rotation keeps the books: the old socket feeds them until this one is subscribed,
        // and the seqId chain is the same on both.
        self.subs.subscribe_all(now, io.send);
    }

    fn subscribed(&self) -> bool {
        self.subs.settled()
    }

    fn reconfigure(&mut self, socket: &SocketPlan, cfg: &Config, now: Instant, io: &mut Io<'_>) {
        self.depth = cfg.book.depth.0;
        let wanted = self.rebuild(socket, now);
        // Args no longer planned: unsubscribed on the live socket (one request, within the
        // hourly budget), then forgotten; the instrument's book went with `rebuild`.
        let gone: Vec<usize> = self
            .subs
            .args()
            .enumerate()
            .filter(|(_, (c, k))| !wanted.iter().any(|(wc, wk)| wc == c && wk == k))
            .map(|(i, _)| i)
            .collect();
        if !gone.is_empty() {
            if !self.subs.request(Op::Unsubscribe, &gone, now, io.send) {
                tracing::warn!(
                    "OKX subscribe budget spent: removed instruments stay subscribed on this connection (their frames are counted as unknown)"
                );
            }
            self.subs.remove(&gone);
        }
        // New args: subscribed now as far as the hourly budget allows, the rest on a later
        // tick (`on_tick`), all on this socket.
        for (channel, key) in &wanted {
            self.subs.add(*channel, key);
        }
        self.subs.subscribe_idle(now, io.send);
    }

    fn on_text(&mut self, text: &str, now: Instant, io: &mut Io<'_>) -> (FrameKind, Control) {
        if text == "pong" {
            return (FrameKind::Control, Control::Continue);
        }
        // The levels of a books push are read here with the envelope (no heap: a fixed
        // array on the stack, untouched until filled).
        let mut levels = LevelBuf::new();
        let result = Frame::parse_reading(text, &mut levels).and_then(|f| self.handle(f, now, io));
        match result {
            Ok(r) => r,
            Err(why) => {
                if !self.logged_malformed {
                    self.logged_malformed = true;
                    let head: String = text.chars().take(160).collect();
                    tracing::warn!(%why, frame = %head, "skipping an OKX frame (further ones are only counted)");
                }
                let kind = if why == WireError::UnknownInstrument {
                    FrameKind::Unknown
                } else {
                    FrameKind::Malformed
                };
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
        // An instrument removed since the request was sent has no tag here any more.
        let Some(i) = self.by_tag(tag) else {
            return;
        };
        let Some(b) = self.insts.get_mut(i).and_then(|x| x.book.as_mut()) else {
            return;
        };
        if !b.snapshots.answered() {
            return;
        }
        match result {
            Ok(resp) if resp.status == 200 => self.rest_snapshot(i, &resp.body, now, io),
            Ok(resp) => {
                let wait = b.snapshots.retry_later(now, resp.retry_after);
                tracing::warn!(inst = %self.insts[i].id, status = resp.status, retry_in = ?wait, "OKX book snapshot refused");
            }
            Err(err) => {
                let wait = b.snapshots.retry_later(now, None);
                tracing::warn!(inst = %self.insts[i].id, %err, retry_in = ?wait, "OKX book snapshot failed");
            }
        }
    }

    fn on_tick(&mut self, now: Instant, io: &mut Io<'_>) -> Control {
        self.subs.expire(now);
        self.subs.subscribe_idle(now, io.send);
        for i in 0..self.insts.len() {
            let Some(b) = self.insts[i].book.as_mut() else {
                continue;
            };
            b.health.tick(now);
            // Retries a snapshot that failed or was stale, and falls back to REST when a
            // resubscribe brought no WebSocket snapshot in time.
            if b.book.buffered() > 0 {
                self.fetch_snapshot(i, now, io);
            }
        }
        self.subs.tokens(now);
        Control::Continue
    }

    fn on_disconnected(&mut self) {
        let now = Instant::now();
        for inst in &mut self.insts {
            if let Some(b) = inst.book.as_mut() {
                b.book.reset();
                b.health.set(false, now);
            }
        }
    }

    fn on_idle(&mut self, now: Instant) {
        for inst in &mut self.insts {
            if let Some(b) = inst.book.as_mut() {
                b.health.tick(now);
            }
        }
    }

    fn send_rate(&self) -> (u32, Duration) {
        (3, Duration::from_secs(1))
    }

    fn probe(&self) -> Probe {
        Probe::Text("ping")
    }

    fn max_silence(&self) -> Option<Duration> {
        Some(MAX_SILENCE)
    }

    fn connect_limit(&self) -> ConnectLimit {
        CONNECT_LIMIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Format;
    use crate::upstream::spool::Spool;
    use crate::upstream::{Publisher, StreamKey};

    /// An OKX config (spot and perpetual feeds as given) and its one socket.
    fn okx(spot: &[&str], perp: &[&str]) -> (Config, SocketPlan) {
        let list = |s: &[&str]| {
            s.iter()
                .map(|x| format!("\"{x}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut text = String::new();
        if !spot.is_empty() {
            text += &format!(
                "[[feeds]]\nexchange = \"okx\"\nmarket = \"spot\"\nsymbols = [{}]\nchannels = [\"orderbook\", \"trade\"]\n",
                list(spot)
            );
        }
        if !perp.is_empty() {
            text += &format!(
                "[[feeds]]\nexchange = \"okx\"\nmarket = \"perpetual\"\nsymbols = [{}]\nchannels = [\"orderbook\", \"liquidation\"]\n",
                list(perp)
            );
        }
        let cfg = Config::parse(&text, "t.toml").expect("a valid config");
        let plan = crate::venue::plan(&cfg).expect("a plan");
        let socket = plan.sockets[0].clone();
        (cfg, socket)
    }

    #[test]
    fn instruments_added_or_removed_live_are_subscribed_on_the_same_socket() {
        let metrics = Arc::new(Metrics::new());
        let (cfg, socket) = okx(&["BTC-USDT"], &["BTC-USDT", "ETH-USDT"]);
        let mut proto = OkxProtocol::new(&socket, &cfg, metrics.clone());
        let spool = Spool::new(1 << 16, Default::default());
        let mut template =
            Publisher::new(spool, Format::Json, &StreamKey::for_socket(&socket), None);
        let mut publisher = template.fork();
        let (mut send, mut rest) = (Vec::new(), Vec::new());
        let now = Instant::now();
        let mut io = Io {
            send: &mut send,
            rest: &mut rest,
            publisher: &mut publisher,
        };
        proto.on_connected(now, &mut io, Connected::Fresh);
        assert_eq!(io.send.len(), 1, "one subscribe request on connect");
        io.send.clear();
        // TC0: one swap goes, a spot symbol comes: one unsubscribe, one subscribe request;
        // the liquidation arg stays while a swap needs it.
        let (cfg2, socket2) = okx(&["BTC-USDT", "SOL-USDT"], &["BTC-USDT"]);
        template.retarget(&StreamKey::for_socket(&socket2), None);
        io.publisher.follow(&template);
        proto.reconfigure(&socket2, &cfg2, now, &mut io);
        assert_eq!(io.send.len(), 2, "{:?}", io.send);
        assert!(
            io.send[0].contains(r#""op":"unsubscribe""#),
            "{}",
            io.send[0]
        );
        assert!(io.send[0].contains("ETH-USDT-SWAP"), "{}", io.send[0]);
        assert!(!io.send[0].contains("liquidation"), "{}", io.send[0]);
        assert!(io.send[1].contains(r#""op":"subscribe""#), "{}", io.send[1]);
        assert!(
            io.send[1].contains(r#"{"channel":"books","instId":"SOL-USDT"}"#),
            "{}",
            io.send[1]
        );
        assert!(
            io.send[1].contains(r#"{"channel":"trades","instId":"SOL-USDT"}"#),
            "{}",
            io.send[1]
        );
        assert!(
            !io.send[1].contains("BTC"),
            "only the new args: {}",
            io.send[1]
        );
        assert!(!proto.subscribed(), "the new args wait for their ack");
        // TC1: the last swap goes: the liquidation arg goes with it.
        io.send.clear();
        let (cfg3, socket3) = okx(&["BTC-USDT", "SOL-USDT"], &[]);
        template.retarget(&StreamKey::for_socket(&socket3), None);
        io.publisher.follow(&template);
        proto.reconfigure(&socket3, &cfg3, now, &mut io);
        assert_eq!(io.send.len(), 1, "{:?}", io.send);
        assert!(
            io.send[0].contains(r#"{"channel":"liquidation-orders","instType":"SWAP"}"#),
            "{}",
            io.send[0]
        );
        assert!(
            io.send[0].contains(r#"{"channel":"books","instId":"BTC-USDT-SWAP"}"#),
            "{}",
            io.send[0]
        );
        // TC2: a push for a removed instrument is unknown now; a new one's is data.
        let push = |inst: &str| {
            format!(
                r#"{{"arg":{{"channel":"books","instId":"{inst}"}},"action":"snapshot","data":[{{"asks":[["2","1","0","1"]],"bids":[["1","1","0","1"]],"ts":"1","checksum":0,"seqId":6,"prevSeqId":-1}}]}}"#
            )
        };
        assert_eq!(
            proto.on_text(&push("ETH-USDT-SWAP"), now, &mut io).0,
            FrameKind::Unknown
        );
        assert_eq!(
            proto.on_text(&push("SOL-USDT"), now, &mut io).0,
            FrameKind::Data
        );
        assert_eq!(
            metrics.sum("marketbox_book_verified", &[("symbol", "SOL-USDT")]),
            1
        );
    }

    /// A venue whose books keep failing right after each REST snapshot gets snapshot requests
    /// spaced by a growing backoff, not one per failure; a live update verified on top of a
    /// snapshot makes the next loss of sync ask at once again.
    #[test]
    fn rest_resyncs_back_off_until_a_live_update_verifies() {
        let metrics = Arc::new(Metrics::new());
        let (cfg, socket) = okx(&["BTC-USDT"], &[]);
        let mut proto = OkxProtocol::new(&socket, &cfg, metrics);
        let spool = Spool::new(1 << 16, Default::default());
        let template = Publisher::new(spool, Format::Json, &StreamKey::for_socket(&socket), None);
        let mut publisher = template.fork();
        let (mut send, mut rest) = (Vec::new(), Vec::new());
        let t0 = Instant::now();
        let mut io = Io {
            send: &mut send,
            rest: &mut rest,
            publisher: &mut publisher,
        };
        proto.on_connected(t0, &mut io, Connected::Fresh);
        let update = |seq: i64, prev: i64| {
            format!(
                r#"{{"arg":{{"channel":"books","instId":"BTC-USDT"}},"action":"update","data":[{{"asks":[],"bids":[["1","{seq}","0","1"]],"ts":"1","checksum":0,"seqId":{seq},"prevSeqId":{prev}}}]}}"#
            )
        };
        let answer = |proto: &mut OkxProtocol, io: &mut Io<'_>, seq: i64, now: Instant| {
            let tag = io.rest.last().expect("a snapshot request").tag;
            let body = format!(
                r#"{{"code":"0","msg":"","data":[{{"asks":[["10","1","0","1"]],"bids":[["0.5","1","0","1"]],"ts":"1","seqId":{seq}}}]}}"#
            );
            let resp = RestResponse {
                status: 200,
                retry_after: None,
                used_weight: None,
                body: body.into_bytes(),
            };
            proto.on_rest(tag, Ok(resp), now, io);
            assert!(
                proto.insts[0]
                    .book
                    .as_ref()
                    .is_some_and(|b| b.book.is_synced())
            );
        };
        // TC0: the first update asks for a snapshot; it syncs the book.
        proto.on_text(&update(10, 9), t0, &mut io);
        assert_eq!(io.rest.len(), 1);
        answer(&mut proto, &mut io, 10, t0);
        // TC1: a gap: resynced at once (the first failure); the snapshot syncs, but no live
        // update verifies before the next gap.
        proto.on_text(&update(12, 11), t0, &mut io);
        proto.on_text(&update(13, 12), t0, &mut io);
        assert_eq!(io.rest.len(), 2, "the first resync asks at once");
        answer(&mut proto, &mut io, 13, t0);
        proto.on_text(&update(15, 14), t0, &mut io);
        proto.on_text(&update(16, 15), t0, &mut io);
        assert_eq!(io.rest.len(), 2, "a second failure in a row waits");
        proto.on_tick(t0 + Duration::from_millis(999), &mut io);
        assert_eq!(io.rest.len(), 2);
        let t1 = t0 + Duration::from_secs(1);
        proto.on_tick(t1, &mut io);
        assert_eq!(io.rest.len(), 3, "asked after the 1 s backoff");
        answer(&mut proto, &mut io, 16, t1);
        // TC2: the third failure in a row waits 2 s.
        proto.on_text(&update(18, 17), t1, &mut io);
        proto.on_text(&update(19, 18), t1, &mut io);
        proto.on_tick(t1 + Duration::from_millis(1999), &mut io);
        assert_eq!(io.rest.len(), 3);
        let t2 = t1 + Duration::from_secs(2);
        proto.on_tick(t2, &mut io);
        assert_eq!(io.rest.len(), 4);
        answer(&mut proto, &mut io, 19, t2);
        // TC3: a live update verifies on the snapshot: the next gap asks at once again.
        proto.on_text(&update(20, 19), t2, &mut io);
        proto.on_text(&update(22, 21), t2, &mut io);
        proto.on_text(&update(23, 22), t2, &mut io);
        assert_eq!(
            io.rest.len(),
            5,
            "a resync after a verified stretch asks at once"
        );
    }

    #[test]
    fn new_args_wait_for_the_hourly_budget_and_go_out_on_a_tick() {
        let metrics = Arc::new(Metrics::new());
        let (cfg, socket) = okx(&["BTC-USDT"], &[]);
        let mut proto = OkxProtocol::new(&socket, &cfg, metrics);
        let spool = Spool::new(1 << 16, Default::default());
        let mut template =
            Publisher::new(spool, Format::Json, &StreamKey::for_socket(&socket), None);
        let mut publisher = template.fork();
        let (mut send, mut rest) = (Vec::new(), Vec::new());
        let now = Instant::now();
        let mut io = Io {
            send: &mut send,
            rest: &mut rest,
            publisher: &mut publisher,
        };
        proto.on_connected(now, &mut io, Connected::Fresh);
        // Spend the budget (479 more requests).
        while proto.subs.tokens(now) > 0 {
            proto.subs.request(Op::Subscribe, &[0], now, io.send);
        }
        io.send.clear();
        let (cfg2, socket2) = okx(&["BTC-USDT", "SOL-USDT"], &[]);
        template.retarget(&StreamKey::for_socket(&socket2), None);
        io.publisher.follow(&template);
        proto.reconfigure(&socket2, &cfg2, now, &mut io);
        // TC0: nothing can be sent now.
        assert!(io.send.is_empty(), "{:?}", io.send);
        // TC1: once a token is back (3600 s / 480 = 7.5 s), a tick subscribes the new args.
        proto.on_tick(now + Duration::from_secs(8), &mut io);
        assert_eq!(io.send.len(), 1, "{:?}", io.send);
        assert!(io.send[0].contains("SOL-USDT"), "{}", io.send[0]);
    }
}
