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
use serde_json::value::RawValue;

use super::book::{BookData, OkxBook, OkxEvent, OkxResync};
use super::inst_id;
use crate::book::Decimal;
use crate::config::{Config, Endpoint};
use crate::metrics::{Metrics, ResyncLabels, SocketLabels};
use crate::model::{
    Channel, Data, Exchange, FundingRateData, LiquidationData, Market, OpenInterestData, Side,
    Symbol, TradeData,
};
use crate::net::http::{RestError, RestResponse};
use crate::plan::SocketPlan;
use crate::session::rate::TokenBucket;
use crate::session::rest::{RateSpec, RestRequest};
use crate::session::{Control, FrameKind, Io, Protocol};

/// Send the text `ping` after this long without a frame (the venue closes at 30 s).
pub const PING_AFTER: Duration = Duration::from_secs(20);
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
    trade: Option<usize>,
    funding: Option<usize>,
    open_interest: Option<usize>,
    liquidation: Option<usize>,
    snapshot_in_flight: bool,
    snapshot_not_before: Instant,
    failures: u32,
}

/// The protocol of the OKX public socket.
pub struct OkxProtocol {
    url: String,
    rest: Endpoint,
    args: Vec<String>,
    insts: Vec<Inst>,
    depth: usize,
    metrics: Arc<Metrics>,
    subscribe_tokens: Gauge,
    sub_bucket: TokenBucket,
    last_rx: Instant,
    next_id: u64,
    logged_malformed: bool,
}

#[derive(Deserialize)]
struct Arg<'a> {
    #[serde(borrow)]
    channel: &'a str,
    #[serde(rename = "instId", borrow, default)]
    inst_id: Option<&'a str>,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow, default)]
    event: Option<&'a str>,
    #[serde(borrow, default)]
    code: Option<&'a str>,
    #[serde(borrow, default)]
    msg: Option<&'a str>,
    #[serde(borrow, default)]
    arg: Option<Arg<'a>>,
    #[serde(borrow, default)]
    action: Option<&'a str>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
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

/// `GET /api/v5/market/books` answer.
#[derive(Deserialize)]
struct RestBooks<'a> {
    #[serde(borrow)]
    code: &'a str,
    #[serde(borrow, default)]
    data: Vec<BookData<'a>>,
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
        let mut args = Vec::new();
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
                        trade: None,
                        funding: None,
                        open_interest: None,
                        liquidation: None,
                        snapshot_in_flight: false,
                        snapshot_not_before: now,
                        failures: 0,
                    });
                    insts.len() - 1
                }
            };
            let inst = &mut insts[pos];
            let arg = match s.channel {
                Channel::Orderbook => {
                    inst.book = Some((i, OkxBook::new()));
                    format!(r#"{{"channel":"books","instId":"{id}"}}"#)
                }
                Channel::Trade => {
                    inst.trade = Some(i);
                    format!(r#"{{"channel":"trades","instId":"{id}"}}"#)
                }
                Channel::FundingRate => {
                    inst.funding = Some(i);
                    format!(r#"{{"channel":"funding-rate","instId":"{id}"}}"#)
                }
                Channel::OpenInterest => {
                    inst.open_interest = Some(i);
                    format!(r#"{{"channel":"open-interest","instId":"{id}"}}"#)
                }
                Channel::Liquidation => {
                    inst.liquidation = Some(i);
                    r#"{"channel":"liquidation-orders","instType":"SWAP"}"#.to_owned()
                }
                _ => continue,
            };
            if !args.contains(&arg) {
                args.push(arg);
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
            rest: cfg.venues.okx.rest.clone(),
            args,
            insts,
            depth: cfg.book.depth.0,
            metrics,
            subscribe_tokens,
            sub_bucket: TokenBucket::new(SUBSCRIBES_PER_HOUR, Duration::from_secs(3600), now),
            last_rx: now,
            next_id: 1,
            logged_malformed: false,
        }
    }

    /// Builds subscribe (or unsubscribe) requests for `args`, each under the size limit.
    fn requests(&mut self, op: &str, args: &[String], now: Instant, io: &mut Io<'_>) {
        let mut batch: Vec<&str> = Vec::new();
        let mut size = 0;
        let flush = |batch: &mut Vec<&str>, io: &mut Io<'_>, this: &mut Self| {
            if batch.is_empty() {
                return;
            }
            if this.sub_bucket.take(now).is_err() {
                tracing::warn!(
                    op,
                    "OKX subscribe budget (480 per hour) spent; request dropped"
                );
                batch.clear();
                return;
            }
            let id = this.next_id;
            this.next_id += 1;
            io.send.push(format!(
                r#"{{"id":"{id}","op":"{op}","args":[{}]}}"#,
                batch.join(",")
            ));
            batch.clear();
        };
        for a in args {
            if size + a.len() + 64 > MAX_REQUEST_BYTES {
                flush(&mut batch, io, self);
                size = 0;
            }
            size += a.len() + 1;
            batch.push(a);
        }
        flush(&mut batch, io, self);
        self.subscribe_tokens
            .set(i64::from(self.sub_bucket.available(now)));
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
            OkxEvent::Buffered => self.want_snapshot(i, now, io),
            OkxEvent::Resync(r) => self.resync(i, r, now, io),
            OkxEvent::Heartbeat | OkxEvent::Dropped => {}
        }
    }

    /// Resyncs one instrument: a new REST snapshot onto a fresh chain, and a resubscribe so a
    /// venue that still sends WebSocket snapshots sends one.
    fn resync(&mut self, i: usize, r: OkxResync, now: Instant, io: &mut Io<'_>) {
        tracing::warn!(inst = %self.insts[i].id, reason = ?r, "OKX book unsynced; resyncing this instrument");
        self.count_resync(i, r.label());
        if let Some((_, book)) = self.insts[i].book.as_mut() {
            book.reset();
        }
        let arg = format!(r#"{{"channel":"books","instId":"{}"}}"#, self.insts[i].id);
        self.requests("unsubscribe", std::slice::from_ref(&arg), now, io);
        self.requests("subscribe", std::slice::from_ref(&arg), now, io);
    }

    fn find(&self, id: &str) -> Option<usize> {
        self.insts.iter().position(|x| x.id == id)
    }

    fn handle(
        &mut self,
        f: Frame<'_>,
        now: Instant,
        io: &mut Io<'_>,
    ) -> Result<(FrameKind, Control), &'static str> {
        if let Some(event) = f.event {
            return Ok(match event {
                "subscribe" | "unsubscribe" => (FrameKind::Control, Control::Continue),
                "error" => {
                    tracing::warn!(
                        code = f.code.unwrap_or(""),
                        msg = f.msg.unwrap_or(""),
                        "OKX refused a request"
                    );
                    self.metrics
                        .subscribe_errors
                        .get_or_create(&SocketLabels {
                            exchange: Exchange::Okx,
                            socket: "public".into(),
                        })
                        .inc();
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
        let raw = data.get();
        match arg.channel {
            "books" => {
                let i = arg
                    .inst_id
                    .and_then(|id| self.find(id))
                    .ok_or("unknown instrument")?;
                let entries: Vec<BookData<'_>> =
                    serde_json::from_str(raw).map_err(|_| "bad books data")?;
                for d in &entries {
                    let Some((_, book)) = self.insts[i].book.as_mut() else {
                        return Err("books not planned");
                    };
                    let ev = if f.action == Some("snapshot") {
                        book.on_ws_snapshot(d)
                    } else {
                        book.on_update(d)
                    };
                    self.on_book_event(i, ev, d.ts_ms(), now, io);
                }
            }
            "trades" => {
                let i = arg
                    .inst_id
                    .and_then(|id| self.find(id))
                    .ok_or("unknown instrument")?;
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
                let i = arg
                    .inst_id
                    .and_then(|id| self.find(id))
                    .ok_or("unknown instrument")?;
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
                let i = arg
                    .inst_id
                    .and_then(|id| self.find(id))
                    .ok_or("unknown instrument")?;
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

    fn on_connected(&mut self, now: Instant, io: &mut Io<'_>) {
        for inst in &mut self.insts {
            if let Some((_, book)) = inst.book.as_mut() {
                book.reset();
            }
            inst.snapshot_in_flight = false;
        }
        self.last_rx = now;
        // A new connection has its own subscribe budget.
        self.sub_bucket = TokenBucket::new(SUBSCRIBES_PER_HOUR, Duration::from_secs(3600), now);
        let args = self.args.clone();
        self.requests("subscribe", &args, now, io);
    }

    fn on_text(&mut self, text: &str, now: Instant, io: &mut Io<'_>) -> (FrameKind, Control) {
        self.last_rx = now;
        if text == "pong" {
            return (FrameKind::Control, Control::Continue);
        }
        let result = serde_json::from_str::<Frame<'_>>(text)
            .map_err(|_| "not JSON")
            .and_then(|f| self.handle(f, now, io));
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
        let body = match result {
            Ok(resp) if resp.status == 200 => resp.body,
            other => {
                inst.failures += 1;
                let d = crate::session::backoff::delay(
                    inst.failures,
                    Duration::from_millis(500),
                    Duration::from_secs(60),
                );
                let d = match &other {
                    Ok(r) => r.retry_after.map_or(d, |ra| ra.max(d)),
                    Err(_) => d,
                };
                inst.snapshot_not_before = now + d;
                tracing::warn!(inst = %inst.id, retry_in = ?d, "OKX book snapshot failed");
                return;
            }
        };
        let Ok(parsed) = serde_json::from_slice::<RestBooks<'_>>(&body) else {
            tracing::warn!(inst = %inst.id, "OKX book snapshot body is not a books answer");
            return;
        };
        if parsed.code != "0" {
            tracing::warn!(inst = %inst.id, code = parsed.code, "OKX refused the book snapshot");
            return;
        }
        let Some(d) = parsed.data.first() else { return };
        let Some((_, book)) = inst.book.as_mut() else {
            return;
        };
        let ev = book.on_rest_snapshot(d);
        let ts = d.ts_ms();
        self.on_book_event(i, ev, ts, now, io);
    }

    fn on_tick(&mut self, now: Instant, io: &mut Io<'_>) -> Control {
        if now.saturating_duration_since(self.last_rx) >= PING_AFTER {
            io.send.push("ping".to_owned());
            self.last_rx = now;
        }
        for i in 0..self.insts.len() {
            let waiting = self.insts[i]
                .book
                .as_ref()
                .is_some_and(|(_, b)| !b.is_synced());
            if waiting {
                self.want_snapshot(i, now, io);
            }
        }
        self.subscribe_tokens
            .set(i64::from(self.sub_bucket.available(now)));
        Control::Continue
    }

    fn on_disconnected(&mut self) {
        for inst in &mut self.insts {
            if let Some((_, book)) = inst.book.as_mut() {
                book.reset();
            }
        }
    }

    fn send_rate(&self) -> (u32, Duration) {
        (3, Duration::from_secs(1))
    }
}
