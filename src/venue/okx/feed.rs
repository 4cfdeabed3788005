//! The OKX per-socket protocol: spot and swaps on one `/ws/v5/public` socket.
//!
//! Design: sans-I/O, like Binance's. On connect it subscribes every planned arg with multi-arg
//! requests (each well under the venue's 64 KB), counted against the venue's 480
//! subscribe/unsubscribe requests per hour per connection (a token bucket shown in
//! `marketbox_ws_subscribe_tokens`). Every ack is expected; an `error` event is a per-arg
//! failure, logged with its code and counted. Keepalive is the text `ping` after 20 s without
//! a frame (the venue closes after 30 s); a `notice` 64008 (restart in 60 s) asks for a planned
//! rotation. Books go through [`OkxBook`]: a WebSocket snapshot when the venue sends one, else
//! a REST snapshot (`/api/v5/market/books?…&source=0`) spliced onto the buffered chain; a gap,
//! reset or checksum mismatch resyncs that one instrument without dropping the socket.
//!
//! Owns: OKX frames and instrument spelling. Must not touch: sockets or the upstream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;

use super::book::{BookData, Entries, OkxBook, OkxEvent, OkxResync, parse_entries};
use super::inst_id;
use crate::book::Decimal;
use crate::config::{Config, Endpoint};
use crate::metrics::{BookHealth, Metrics, ResyncLabels, SocketLabels, SubscribeErrorLabels};
use crate::model::{
    Channel, Data, Exchange, FundingRateData, LiquidationData, Market, OpenInterestData, Side,
    Symbol, TradeData,
};
use crate::net::http::{RestError, RestResponse};
use crate::plan::SocketPlan;
use crate::session::rate::TokenBucket;
use crate::session::rest::{RateSpec, RestRequest};
use crate::session::{ConnectLimit, Connected, Control, FrameKind, Io, Probe, Protocol};
use crate::venue::json::{Object, as_plain_str, as_u64};

/// The venue closes a socket that received nothing for 30 s: the session probes (the text
/// `ping`) after at most this long without a frame.
pub const MAX_SILENCE: Duration = Duration::from_secs(20);
/// OKX allows 3 connection requests per second per IP; we take 2.
pub const CONNECT_LIMIT: ConnectLimit = ConnectLimit {
    max: 2,
    per: Duration::from_secs(1),
};
/// An arg not acknowledged this long after its request is given up (and counted).
pub const ACK_WAIT: Duration = Duration::from_secs(10);
/// After a resubscribe, how long to wait for the venue's WebSocket snapshot before falling
/// back to a REST snapshot.
const WS_SNAPSHOT_WAIT: Duration = Duration::from_secs(5);
/// A REST snapshot older than the buffered chain is fetched again after this pause.
const STALE_RETRY: Duration = Duration::from_millis(300);
/// Largest subscribe request we build (the venue allows 64 KB).
const MAX_REQUEST_BYTES: usize = 16 << 10;
/// OKX: 480 subscribe/unsubscribe requests per hour per connection.
const SUBSCRIBES_PER_HOUR: u32 = 480;
/// The venue's notice code for "service restart in 60 s".
const NOTICE_RESTART: &str = "64008";
/// Books REST rate limit: 40 requests per 2 s (we use half).
const BOOKS_RATE: RateSpec = RateSpec {
    bucket: "books",
    capacity: 20,
    window: Duration::from_secs(2),
};

struct Inst {
    market: Market,
    symbol: Symbol,
    /// `BTC-USDT` or `BTC-USDT-SWAP`.
    id: String,
    book: Option<(usize, OkxBook)>,
    /// What the metrics show of the book (when there is one).
    health: Option<BookHealth>,
    trade: Option<usize>,
    funding: Option<usize>,
    open_interest: Option<usize>,
    liquidation: Option<usize>,
    snapshot_in_flight: bool,
    snapshot_not_before: Instant,
    failures: u32,
    /// Resubscribed to get a WebSocket snapshot: no REST snapshot before this instant.
    ws_snapshot_until: Option<Instant>,
}

/// What the venue said about one subscription arg on the current connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubState {
    /// Not requested on this connection.
    Idle,
    /// Requested by request `id`, not acknowledged yet.
    Pending { id: u64, since: Instant },
    /// Acknowledged.
    Live,
    /// Refused by an error event, or never acknowledged: given up until the next connection.
    Failed,
}

/// One subscription arg.
struct Sub {
    /// The arg exactly as sent.
    json: String,
    channel: &'static str,
    /// `instId`, or `instType` for `liquidation-orders`.
    key: String,
    state: SubState,
}

/// The protocol of the OKX public socket.
pub struct OkxProtocol {
    url: String,
    socket: String,
    rest: Endpoint,
    subs: Vec<Sub>,
    /// Error events by request id (the newest few), matched to args at their ack deadline.
    refused: Vec<(u64, String)>,
    insts: Vec<Inst>,
    depth: usize,
    metrics: Arc<Metrics>,
    subscribe_tokens: Gauge,
    sub_bucket: TokenBucket,
    /// The venue sent a WebSocket books snapshot on this connection, so a resubscribe gets one.
    ws_snapshots: bool,
    next_id: u64,
    logged_malformed: bool,
}

/// A subscription arg as the venue echoes it.
#[derive(Debug, Default, Clone, Copy)]
struct Arg<'a> {
    channel: &'a str,
    inst_id: Option<&'a str>,
    inst_type: Option<&'a str>,
}

impl<'a> Arg<'a> {
    fn parse(raw: &'a str) -> Result<Self, &'static str> {
        let mut a = Arg::default();
        for m in Object::new(raw) {
            let (k, v) = m.map_err(|_| "bad arg")?;
            let text = || as_plain_str(v).ok_or("bad arg");
            match k {
                "channel" => a.channel = text()?,
                "instId" => a.inst_id = Some(text()?),
                "instType" => a.inst_type = Some(text()?),
                _ => {}
            }
        }
        if a.channel.is_empty() {
            return Err("arg without a channel");
        }
        Ok(a)
    }
}

/// A frame's envelope, read in one pass without allocating: an event (`subscribe`, `error`,
/// `notice`, …) or a push (`arg` + `data`, with `action` for books). `data` stays raw.
#[derive(Debug, Default)]
struct Frame<'a> {
    id: Option<&'a str>,
    event: Option<&'a str>,
    code: Option<&'a str>,
    /// The message text (raw JSON when it holds escapes); for logs only.
    msg: Option<&'a str>,
    arg: Option<Arg<'a>>,
    action: Option<&'a str>,
    data: Option<&'a str>,
}

impl<'a> Frame<'a> {
    fn parse(text: &'a str) -> Result<Self, &'static str> {
        let mut f = Frame::default();
        for m in Object::new(text) {
            let (k, v) = m.map_err(|_| "not JSON")?;
            match k {
                "id" => f.id = as_plain_str(v),
                "event" => f.event = Some(as_plain_str(v).ok_or("bad event")?),
                // Written as a string; a number is tolerated.
                "code" => f.code = as_plain_str(v).or_else(|| as_u64(v).map(|_| v)),
                "msg" => f.msg = Some(as_plain_str(v).unwrap_or(v)),
                "arg" => f.arg = Some(Arg::parse(v)?),
                "action" => f.action = Some(as_plain_str(v).ok_or("bad action")?),
                "data" => f.data = Some(v),
                _ => {}
            }
        }
        Ok(f)
    }
}

#[derive(Deserialize)]
struct Trade<'a> {
    #[serde(rename = "tradeId", borrow)]
    trade_id: &'a str,
    #[serde(borrow)]
    px: &'a str,
    #[serde(borrow)]
    sz: &'a str,
    #[serde(borrow)]
    side: &'a str,
    #[serde(borrow)]
    ts: &'a str,
}

#[derive(Deserialize)]
struct Funding<'a> {
    #[serde(rename = "fundingRate", borrow)]
    funding_rate: &'a str,
    #[serde(rename = "fundingTime", borrow)]
    funding_time: &'a str,
    #[serde(rename = "nextFundingRate", borrow, default)]
    next_funding_rate: Option<&'a str>,
    #[serde(borrow, default)]
    ts: Option<&'a str>,
}

#[derive(Deserialize)]
struct OpenInterest<'a> {
    #[serde(borrow)]
    oi: &'a str,
    #[serde(rename = "oiCcy", borrow)]
    oi_ccy: &'a str,
    #[serde(borrow)]
    ts: &'a str,
}

#[derive(Deserialize)]
struct LiqDetail<'a> {
    #[serde(borrow)]
    side: &'a str,
    #[serde(rename = "bkPx", borrow)]
    price: &'a str,
    #[serde(borrow)]
    sz: &'a str,
    #[serde(borrow)]
    ts: &'a str,
}

#[derive(Deserialize)]
struct Liq<'a> {
    #[serde(rename = "instId", borrow, default)]
    inst_id: Option<&'a str>,
    #[serde(borrow)]
    details: Vec<LiqDetail<'a>>,
}

/// A `GET /api/v5/market/books` answer: `code` and the first entry of `data`.
fn rest_books(body: &str) -> Result<BookData<'_>, String> {
    let (mut code, mut data) = (None, None);
    for m in Object::new(body) {
        let (k, v) = m.map_err(|e| e.to_string())?;
        match k {
            "code" => code = as_plain_str(v).or(Some(v)),
            "data" => data = Some(v),
            _ => {}
        }
    }
    match code {
        Some("0") => {}
        Some(c) => return Err(format!("the venue answered code {c}")),
        None => return Err("no code in the answer".into()),
    }
    let entries = parse_entries(data.ok_or("no data in the answer")?).map_err(|e| e.to_string())?;
    entries
        .first()
        .copied()
        .ok_or_else(|| "no book in the answer".into())
}

/// A `books` push as the socket parses it: the envelope, then its entries.
pub struct BooksPush<'a> {
    pub inst_id: &'a str,
    pub snapshot: bool,
    pub entries: Entries<'a>,
}

/// Parses a `books` push the way [`OkxProtocol`] does (for benchmarks and tools).
pub fn parse_books_push(text: &str) -> Result<BooksPush<'_>, &'static str> {
    let f = Frame::parse(text)?;
    let (Some(arg), Some(data)) = (f.arg, f.data) else {
        return Err("not a push");
    };
    if arg.channel != "books" {
        return Err("not books");
    }
    Ok(BooksPush {
        inst_id: arg.inst_id.ok_or("no instId")?,
        snapshot: f.action == Some("snapshot"),
        entries: parse_entries(data).map_err(|_| "bad books data")?,
    })
}

/// Splits `items` into consecutive batches whose request (args joined by commas, plus the
/// envelope) stays under `max` bytes. An item too large on its own goes alone.
fn batches(items: &[usize], len: impl Fn(usize) -> usize, max: usize) -> Vec<Vec<usize>> {
    const ENVELOPE: usize = 64;
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut size = ENVELOPE;
    for &i in items {
        let l = len(i) + 1;
        match out.last_mut() {
            Some(b) if size + l <= max => b.push(i),
            _ => {
                out.push(vec![i]);
                size = ENVELOPE;
            }
        }
        size += l;
    }
    out
}

fn dec(s: &str) -> Option<Decimal> {
    Decimal::parse(s).ok()
}

fn num(s: &str) -> u64 {
    s.parse().unwrap_or(0)
}

fn side(s: &str) -> Option<Side> {
    match s {
        "buy" => Some(Side::Buy),
        "sell" => Some(Side::Sell),
        _ => None,
    }
}

impl OkxProtocol {
    pub fn new(socket: &SocketPlan, cfg: &Config, metrics: Arc<Metrics>) -> Self {
        let now = Instant::now();
        let mut insts: Vec<Inst> = Vec::new();
        let mut subs: Vec<Sub> = Vec::new();
        for (i, s) in socket.streams.iter().enumerate() {
            let id = inst_id(s.market, &s.symbol);
            let pos = match insts.iter().position(|x| x.id == id) {
                Some(p) => p,
                None => {
                    insts.push(Inst {
                        market: s.market,
                        symbol: s.symbol,
                        id: id.clone(),
                        book: None,
                        health: None,
                        trade: None,
                        funding: None,
                        open_interest: None,
                        liquidation: None,
                        snapshot_in_flight: false,
                        snapshot_not_before: now,
                        failures: 0,
                        ws_snapshot_until: None,
                    });
                    insts.len() - 1
                }
            };
            let inst = &mut insts[pos];
            let (channel, key) = match s.channel {
                Channel::Orderbook => {
                    inst.book = Some((i, OkxBook::new()));
                    inst.health = Some(BookHealth::new(
                        &metrics,
                        Exchange::Okx,
                        s.market,
                        s.symbol.as_str(),
                        now,
                    ));
                    ("books", id)
                }
                Channel::Trade => {
                    inst.trade = Some(i);
                    ("trades", id)
                }
                Channel::FundingRate => {
                    inst.funding = Some(i);
                    ("funding-rate", id)
                }
                Channel::OpenInterest => {
                    inst.open_interest = Some(i);
                    ("open-interest", id)
                }
                Channel::Liquidation => {
                    inst.liquidation = Some(i);
                    ("liquidation-orders", "SWAP".to_owned())
                }
                _ => continue,
            };
            if !subs.iter().any(|x| x.channel == channel && x.key == key) {
                let field = if channel == "liquidation-orders" {
                    "instType"
                } else {
                    "instId"
                };
                subs.push(Sub {
                    json: format!(r#"{{"channel":"{channel}","{field}":"{key}"}}"#),
                    channel,
                    key,
                    state: SubState::Idle,
                });
            }
        }
        let subscribe_tokens = metrics
            .subscribe_tokens
            .get_or_create(&SocketLabels {
                exchange: Exchange::Okx,
                socket: socket.name.to_owned(),
            })
            .clone();
        OkxProtocol {
            url: socket.url.clone(),
            socket: socket.name.to_owned(),
            rest: cfg.venues.okx.rest.clone(),
            subs,
            refused: Vec::new(),
            insts,
            depth: cfg.book.depth.0,
            metrics,
            subscribe_tokens,
            sub_bucket: TokenBucket::new(SUBSCRIBES_PER_HOUR, Duration::from_secs(3600), now),
            ws_snapshots: false,
            next_id: 1,
            logged_malformed: false,
        }
    }

    /// Sends `op` (`subscribe` or `unsubscribe`) for the subs at `which`, in multi-arg
    /// requests each under the size limit, each taking one token of the hourly budget. A
    /// subscribe marks its args pending until the venue acknowledges them. Returns false when
    /// the budget was spent (nothing more was sent).
    fn requests(&mut self, op: &str, which: &[usize], now: Instant, io: &mut Io<'_>) -> bool {
        let mut sent_all = true;
        for chunk in batches(which, |i| self.subs[i].json.len(), MAX_REQUEST_BYTES) {
            if self.sub_bucket.take(now).is_err() {
                tracing::warn!(
                    op,
                    args = chunk.len(),
                    "OKX subscribe budget (480 requests per hour per connection) spent; request not sent"
                );
                sent_all = false;
                break;
            }
            let id = self.next_id;
            self.next_id += 1;
            let mut req = format!(r#"{{"id":"{id}","op":"{op}","args":["#);
            for (n, &i) in chunk.iter().enumerate() {
                if n > 0 {
                    req.push(',');
                }
                req.push_str(&self.subs[i].json);
                if op == "subscribe" {
                    self.subs[i].state = SubState::Pending { id, since: now };
                }
            }
            req.push_str("]}");
            io.send.push(req);
        }
        self.subscribe_tokens
            .set(i64::from(self.sub_bucket.available(now)));
        sent_all
    }

    fn sub_of(&self, channel: &str, key: &str) -> Option<usize> {
        self.subs
            .iter()
            .position(|s| s.channel == channel && s.key == key)
    }

    /// `code` is a label value: a venue code through [`SubscribeErrorLabels::code`], or
    /// `no_ack`.
    fn count_subscribe_error(&self, code: String) {
        self.metrics
            .subscribe_errors
            .get_or_create(&SubscribeErrorLabels {
                exchange: Exchange::Okx,
                socket: self.socket.clone(),
                code,
            })
            .inc();
    }

    /// Args whose ack deadline passed: refused (if their request drew an error event) or
    /// unanswered. Either way given up on this connection, logged once each and counted.
    fn expire_pending(&mut self, now: Instant) {
        for i in 0..self.subs.len() {
            let SubState::Pending { id, since } = self.subs[i].state else {
                continue;
            };
            if now.saturating_duration_since(since) < ACK_WAIT {
                continue;
            }
            self.subs[i].state = SubState::Failed;
            let arg = &self.subs[i].json;
            match self.refused.iter().find(|(r, _)| *r == id) {
                Some((_, code)) => {
                    tracing::warn!(%arg, code = %code, request = id, "OKX refused this subscription; it stays off until the next connection");
                }
                None => {
                    tracing::warn!(%arg, request = id, wait = ?ACK_WAIT, "OKX never acknowledged this subscription; it stays off until the next connection");
                    self.count_subscribe_error("no_ack".to_owned());
                }
            }
        }
    }

    fn count_resync(&self, i: usize, reason: &'static str) {
        let inst = &self.insts[i];
        self.metrics
            .resyncs
            .get_or_create(&ResyncLabels {
                exchange: Exchange::Okx,
                market: inst.market,
                symbol: inst.symbol.to_string(),
                reason,
            })
            .inc();
    }

    fn want_snapshot(&mut self, i: usize, now: Instant, io: &mut Io<'_>) {
        let inst = &mut self.insts[i];
        if inst.snapshot_in_flight || now < inst.snapshot_not_before {
            return;
        }
        inst.snapshot_in_flight = true;
        io.rest.push(RestRequest {
            tag: i as u64,
            base: self.rest.clone(),
            path: format!("/api/v5/market/books?instId={}&sz=400&source=0", inst.id),
            weight: 1,
            limit: BOOKS_RATE,
        });
    }

    fn on_book_event(&mut self, i: usize, ev: OkxEvent, ts_ms: u64, now: Instant, io: &mut Io<'_>) {
        self.book_event(i, ev, ts_ms, now, io);
        let inst = &mut self.insts[i];
        if let (Some(h), Some((_, book))) = (inst.health.as_mut(), inst.book.as_ref()) {
            h.set(book.is_synced(), now);
        }
    }

    fn book_event(&mut self, i: usize, ev: OkxEvent, ts_ms: u64, now: Instant, io: &mut Io<'_>) {
        match ev {
            OkxEvent::Applied { .. } => {
                self.insts[i].failures = 0;
                let depth = self.depth;
                let Some((stream, book)) = self.insts[i].book.as_mut() else {
                    return;
                };
                let stream = *stream;
                match book.fill(depth, io.publisher.book_scratch()) {
                    Ok(true) => {
                        let id = io.publisher.book_scratch().update_id;
                        io.publisher.publish_scratch(stream, ts_ms, id);
                    }
                    Ok(false) => {}
                    Err(r) => self.resync(i, r, now, io),
                }
            }
            OkxEvent::Buffered => {
                if self.insts[i].ws_snapshot_until.is_none_or(|t| now >= t) {
                    self.want_snapshot(i, now, io);
                }
            }
            OkxEvent::Resync(OkxResync::StaleSnapshot) => {
                // The buffer is kept: fetch again shortly.
                tracing::info!(inst = %self.insts[i].id, "OKX REST snapshot older than the buffered updates; fetching again");
                self.count_resync(i, OkxResync::StaleSnapshot.label());
                self.insts[i].snapshot_not_before = now + STALE_RETRY;
            }
            OkxEvent::Resync(r) => self.resync(i, r, now, io),
            OkxEvent::Heartbeat | OkxEvent::Dropped => {}
        }
    }

    /// Resyncs one instrument, never the socket. Where the venue sends WebSocket snapshots on
    /// this connection and the hourly budget allows, unsubscribe + subscribe brings a fresh
    /// one; otherwise the updates that keep flowing are buffered and a REST snapshot is
    /// spliced onto them (which is also the fallback when the WebSocket snapshot is late).
    fn resync(&mut self, i: usize, r: OkxResync, now: Instant, io: &mut Io<'_>) {
        tracing::warn!(inst = %self.insts[i].id, reason = ?r, "OKX book unsynced; resyncing this instrument");
        self.count_resync(i, r.label());
        if let Some((_, book)) = self.insts[i].book.as_mut() {
            book.reset();
        }
        self.insts[i].ws_snapshot_until = None;
        if self.ws_snapshots && self.sub_bucket.available(now) >= 2 {
            let id = self.insts[i].id.clone();
            if let Some(sub) = self.sub_of("books", &id)
                && self.requests("unsubscribe", &[sub], now, io)
                && self.requests("subscribe", &[sub], now, io)
            {
                self.insts[i].ws_snapshot_until = Some(now + WS_SNAPSHOT_WAIT);
            }
        }
    }

    fn find(&self, id: &str) -> Option<usize> {
        self.insts.iter().position(|x| x.id == id)
    }

    /// The configured instrument a push is for.
    fn inst_of(&self, arg: &Arg<'_>) -> Result<usize, &'static str> {
        arg.inst_id
            .and_then(|id| self.find(id))
            .ok_or("unknown instrument")
    }

    fn handle(
        &mut self,
        f: Frame<'_>,
        now: Instant,
        io: &mut Io<'_>,
    ) -> Result<(FrameKind, Control), &'static str> {
        if let Some(event) = f.event {
            return Ok(match event {
                "subscribe" => {
                    if let Some(a) = &f.arg
                        && let Some(i) = a
                            .inst_id
                            .or(a.inst_type)
                            .and_then(|k| self.sub_of(a.channel, k))
                    {
                        self.subs[i].state = SubState::Live;
                    }
                    (FrameKind::Control, Control::Continue)
                }
                "unsubscribe" => (FrameKind::Control, Control::Continue),
                "error" => {
                    let code = f.code.unwrap_or("");
                    let request = f.id.and_then(|id| id.parse::<u64>().ok());
                    let args: Vec<&str> = self
                        .subs
                        .iter()
                        .filter(|s| matches!(s.state, SubState::Pending { id, .. } if Some(id) == request))
                        .map(|s| s.json.as_str())
                        .collect();
                    tracing::warn!(
                        code,
                        msg = f.msg.unwrap_or(""),
                        request = f.id.unwrap_or("-"),
                        pending_args = ?args,
                        "OKX refused a request"
                    );
                    self.count_subscribe_error(SubscribeErrorLabels::code(code));
                    if let Some(id) = request {
                        if self.refused.len() >= 16 {
                            self.refused.remove(0);
                        }
                        self.refused.push((id, code.to_owned()));
                    }
                    (FrameKind::Control, Control::Continue)
                }
                "notice" if f.code == Some(NOTICE_RESTART) => {
                    tracing::info!("OKX announced a service restart; rotating the connection");
                    (FrameKind::Control, Control::Rotate)
                }
                _ => (FrameKind::Control, Control::Continue),
            });
        }
        let (Some(arg), Some(data)) = (f.arg, f.data) else {
            return Err("neither an event nor data");
        };
        let raw = data;
        match arg.channel {
            "books" => {
                let i = self.inst_of(&arg)?;
                let entries = parse_entries(raw).map_err(|_| "bad books data")?;
                let snapshot = f.action == Some("snapshot");
                if snapshot {
                    self.ws_snapshots = true;
                    self.insts[i].ws_snapshot_until = None;
                }
                for d in &entries {
                    let Some((_, book)) = self.insts[i].book.as_mut() else {
                        return Err("books not planned");
                    };
                    let ev = if snapshot {
                        book.on_ws_snapshot(d)
                    } else {
                        book.on_update(d)
                    };
                    self.on_book_event(i, ev, d.ts_ms(), now, io);
                }
            }
            "trades" => {
                let i = self.inst_of(&arg)?;
                let stream = self.insts[i].trade.ok_or("trades not planned")?;
                let rows: Vec<Trade<'_>> =
                    serde_json::from_str(raw).map_err(|_| "bad trades data")?;
                for t in rows {
                    let (Some(price), Some(qty), Some(side)) = (dec(t.px), dec(t.sz), side(t.side))
                    else {
                        return Err("bad trade");
                    };
                    let id = num(t.trade_id);
                    io.publisher.publish(
                        stream,
                        num(t.ts),
                        id,
                        Data::Trade(TradeData {
                            trade_id: id,
                            price,
                            qty,
                            side,
                        }),
                    );
                }
            }
            "funding-rate" => {
                let i = self.inst_of(&arg)?;
                let stream = self.insts[i].funding.ok_or("funding not planned")?;
                let rows: Vec<Funding<'_>> =
                    serde_json::from_str(raw).map_err(|_| "bad funding data")?;
                for r in rows {
                    let rate = dec(r.funding_rate).ok_or("bad funding rate")?;
                    let next = match r.next_funding_rate.filter(|s| !s.is_empty()) {
                        Some(s) => Some(dec(s).ok_or("bad next funding rate")?),
                        None => None,
                    };
                    let ts = r.ts.map_or(0, num);
                    let at = num(r.funding_time);
                    io.publisher.publish(
                        stream,
                        ts,
                        at,
                        Data::FundingRate(FundingRateData {
                            funding_rate: rate,
                            funding_time_ms: at,
                            mark_price: None,
                            index_price: None,
                            next_funding_rate: next,
                        }),
                    );
                }
            }
            "open-interest" => {
                let i = self.inst_of(&arg)?;
                let stream = self.insts[i]
                    .open_interest
                    .ok_or("open interest not planned")?;
                let rows: Vec<OpenInterest<'_>> =
                    serde_json::from_str(raw).map_err(|_| "bad open-interest data")?;
                for r in rows {
                    let (Some(base), Some(contracts)) = (dec(r.oi_ccy), dec(r.oi)) else {
                        return Err("bad open interest");
                    };
                    let ts = num(r.ts);
                    io.publisher.publish(
                        stream,
                        ts,
                        ts,
                        Data::OpenInterest(OpenInterestData {
                            open_interest: base,
                            open_interest_contracts: Some(contracts),
                        }),
                    );
                }
            }
            "liquidation-orders" => {
                let rows: Vec<Liq<'_>> =
                    serde_json::from_str(raw).map_err(|_| "bad liquidation data")?;
                for r in rows {
                    // Subscribed for every swap: keep only the configured instruments.
                    let Some(i) = r.inst_id.and_then(|id| self.find(id)) else {
                        continue;
                    };
                    let Some(stream) = self.insts[i].liquidation else {
                        continue;
                    };
                    for d in r.details {
                        let (Some(side), Some(price), Some(qty)) =
                            (side(d.side), dec(d.price), dec(d.sz))
                        else {
                            return Err("bad liquidation");
                        };
                        let ts = num(d.ts);
                        io.publisher.publish(
                            stream,
                            ts,
                            ts,
                            Data::Liquidation(LiquidationData {
                                side,
                                price,
                                qty,
                                avg_price: None,
                                status: None,
                            }),
                        );
                    }
                }
            }
            _ => return Ok((FrameKind::Unknown, Control::Continue)),
        }
        Ok((FrameKind::Data, Control::Continue))
    }
}

impl Protocol for OkxProtocol {
    fn url(&self) -> &str {
        &self.url
    }

    fn on_connected(&mut self, now: Instant, io: &mut Io<'_>, how: Connected) {
        for sub in &mut self.subs {
            sub.state = SubState::Idle;
        }
        self.refused.clear();
        // A new connection has its own subscribe budget.
        self.sub_bucket = TokenBucket::new(SUBSCRIBES_PER_HOUR, Duration::from_secs(3600), now);
        let all: Vec<usize> = (0..self.subs.len()).collect();
        if how == Connected::Rotation {
            // The books continue: the old socket keeps feeding them until this one is
            // subscribed, and the seqId chain is the same on both.
            self.requests("subscribe", &all, now, io);
            return;
        }
        for inst in &mut self.insts {
            if let Some((_, book)) = inst.book.as_mut() {
                book.reset();
            }
            inst.snapshot_in_flight = false;
            inst.ws_snapshot_until = None;
            if let Some(h) = inst.health.as_mut() {
                h.set(false, now);
            }
        }
        self.ws_snapshots = false;
        self.requests("subscribe", &all, now, io);
    }

    fn subscribed(&self) -> bool {
        !self
            .subs
            .iter()
            .any(|s| matches!(s.state, SubState::Pending { .. }))
    }

    fn on_text(&mut self, text: &str, now: Instant, io: &mut Io<'_>) -> (FrameKind, Control) {
        if text == "pong" {
            return (FrameKind::Control, Control::Continue);
        }
        let result = Frame::parse(text).and_then(|f| self.handle(f, now, io));
        match result {
            Ok(r) => r,
            Err(why) => {
                if !self.logged_malformed {
                    self.logged_malformed = true;
                    let head: String = text.chars().take(160).collect();
                    tracing::warn!(why, frame = %head, "skipping an OKX frame (further ones are only counted)");
                }
                let kind = if why == "unknown instrument" {
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
        let i = tag as usize;
        let Some(inst) = self.insts.get_mut(i) else {
            return;
        };
        inst.snapshot_in_flight = false;
        let backoff = |inst: &mut Inst, retry_after: Option<Duration>, why: &str| {
            inst.failures += 1;
            let d = crate::session::backoff::delay(
                inst.failures,
                Duration::from_millis(500),
                Duration::from_secs(60),
            );
            let d = retry_after.map_or(d, |ra| ra.max(d));
            inst.snapshot_not_before = crate::time::after(now, d);
            tracing::warn!(inst = %inst.id, retry_in = ?d, why, "OKX book snapshot failed");
        };
        let body = match result {
            Ok(resp) if resp.status == 200 => resp.body,
            Ok(resp) => return backoff(inst, resp.retry_after, "HTTP status"),
            Err(_) => return backoff(inst, None, "request failed"),
        };
        let parsed = std::str::from_utf8(&body)
            .map_err(|_| "the body is not UTF-8".to_owned())
            .and_then(rest_books);
        let d = match parsed {
            Ok(d) => d,
            Err(why) => return backoff(inst, None, &why),
        };
        let Some((_, book)) = inst.book.as_mut() else {
            return;
        };
        let ev = book.on_rest_snapshot(&d);
        let ts = d.ts_ms();
        self.on_book_event(i, ev, ts, now, io);
    }

    fn on_tick(&mut self, now: Instant, io: &mut Io<'_>) -> Control {
        for inst in &mut self.insts {
            if let Some(h) = inst.health.as_mut() {
                h.tick(now);
            }
        }
        self.expire_pending(now);
        for i in 0..self.insts.len() {
            // Retries a snapshot that failed or was stale, and falls back to REST when a
            // resubscribe brought no WebSocket snapshot in time.
            let buffering = self.insts[i]
                .book
                .as_ref()
                .is_some_and(|(_, b)| b.buffered() > 0);
            if buffering && self.insts[i].ws_snapshot_until.is_none_or(|t| now >= t) {
                self.want_snapshot(i, now, io);
            }
        }
        self.subscribe_tokens
            .set(i64::from(self.sub_bucket.available(now)));
        Control::Continue
    }

    fn on_disconnected(&mut self) {
        let now = Instant::now();
        for inst in &mut self.insts {
            if let Some((_, book)) = inst.book.as_mut() {
                book.reset();
            }
            if let Some(h) = inst.health.as_mut() {
                h.set(false, now);
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
    use super::batches;

    #[test]
    fn batches_stay_under_the_request_limit_and_keep_order() {
        let lens = [40usize, 40, 40, 40, 40];
        // Envelope 64 + (41 each): two fit in 150, the third would not.
        let b = batches(&[0, 1, 2, 3, 4], |i| lens[i], 150);
        assert_eq!(b, vec![vec![0, 1], vec![2, 3], vec![4]]);
        for chunk in &b {
            assert!(64 + chunk.iter().map(|&i| lens[i] + 1).sum::<usize>() <= 150);
        }
        // Everything in one request when it fits; an oversized item goes alone.
        assert_eq!(batches(&[0, 1], |i| lens[i], 1 << 14), vec![vec![0, 1]]);
        assert_eq!(
            batches(&[0, 1], |i| [500, 10][i], 150),
            vec![vec![0], vec![1]]
        );
        assert!(batches(&[], |_| 1, 150).is_empty());
    }
}
