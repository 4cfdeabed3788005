//! Binance spot and USD-M, as the venue documents them (late 2026).
//!
//! Design: three parts, each a plain function of the shared state.
//! - The market clock (`run_market`): every `diff_interval` each book takes one step; the diff,
//!   a `bookTicker`, trades (`@trade`, `@aggTrade`) and, for USD-M, `@markPrice@1s` and
//!   `@forceOrder` are built once as text and queued to every client that is subscribed AND
//!   on an endpoint that serves the stream. Diffs are built and queued under the market lock,
//!   so a REST snapshot never runs ahead of what has been queued.
//! - The connection (`serve_ws`): TLS, the handshake (the path decides the endpoint; a bad path
//!   is an HTTP error), then one loop that writes queued frames, answers requests, pings,
//!   enforces the incoming-message limit and the pong deadline, and obeys fault commands.
//! - REST (`rest_answer`): depth snapshots of the true book, open interest, long/short ratios,
//!   with the weight header, Binance error bodies, injected 429/418 and stale snapshots.
//!
//! USD-M routing since 2026-04-23: `/public` serves `@depth*` and `@bookTicker`; `/market`
//! serves `@aggTrade`, `@markPrice*`, `@forceOrder`, `!forceOrder@arr` (klines, tickers); a
//! connection without a routed path gets only what `/public` serves; a stream asked on the
//! wrong endpoint is accepted (`{"result":null}`) and silently never delivered. `@trade` is not
//! on the venue's mapping excerpt; PROTOCOLS.md says "probably `/public`", a frame captured on
//! 2026-08-02 on the *unrouted* URL (which only carries `/public` data) had `@trade` flowing
//! while `@markPrice` was withheld, and third-party clients file `@trade` under `/public`. So
//! `@trade` is served on `/public` by default; `SimOptions::perp_trade_endpoint` moves it to
//! `/market` for tests of the other reading.
//!
//! Not simulated: `@depth` at 250/500/1000 ms and partial-depth streams (accepted, silent),
//! user data (`/private` is refused), the 300-connections-per-5-minutes limit.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::handshake::server::{
    Callback, ErrorResponse, Request, Response,
};
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::{Bytes, Message};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, FutureExt, StreamExt};
use futures_rustls::TlsAcceptor;
use smol::{Async, Timer};

use super::book::{BookParams, BookProcess, Diff, IdRule, Level, NumStyle, Spec};
use super::{
    ClientHandle, Disconnect, Endpoint, Malformed, Market, Mkt, OpenGuard, Out, RestFault,
    RestHost, Shared, SimOptions, SymbolState, Throttle, abort_on_close, fixed, lock, now_ms,
    raw_fd, venue_symbol,
};
use super::{close, timeout};

/// Which WebSocket host a connection arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsListener {
    /// `stream.binance.com`.
    Spot,
    /// `fstream.binance.com`.
    Perp,
}

// ---------------------------------------------------------------------------------------------
// Instruments and books

/// Grid, number format and starting mid of an instrument, like the venue's (BTCUSDT spot
/// `"27012.34000000"`/`"0.01200000"`; USD-M `"27010.10"`/`"0.012"`).
fn instrument(mkt: Mkt, sym: &str, i: usize) -> (Spec, i64) {
    let spec = |price_decimals, tick, qty_decimals, lot, typical_lots| Spec {
        price_decimals,
        tick,
        qty_decimals,
        lot,
        typical_lots,
        style: NumStyle::Fixed,
    };
    match (mkt, sym) {
        (Mkt::Spot, "BTCUSDT") => (spec(8, 1_000_000, 8, 1_000, 5_000), 2_701_234_000_000),
        (Mkt::Spot, "ETHUSDT") => (spec(8, 1_000_000, 8, 10_000, 2_000), 165_012_000_000),
        (Mkt::Spot, _) => (
            spec(8, 10_000, 8, 1_000_000, 1_000),
            (10 + i as i64) * 100_000_000,
        ),
        (Mkt::Perp, "BTCUSDT") => (spec(2, 10, 3, 1, 500), 2_701_010),
        (Mkt::Perp, "ETHUSDT") => (spec(2, 1, 3, 1, 2_000), 165_003),
        (Mkt::Perp, _) => (spec(4, 1, 0, 1, 200), (10 + i as i64) * 10_000),
    }
}

pub(crate) fn new_market(opts: &SimOptions) -> Market {
    let mut books = BTreeMap::new();
    for (i, s) in opts.symbols.iter().enumerate() {
        let sym = venue_symbol(s);
        for mkt in [Mkt::Spot, Mkt::Perp] {
            let (spec, mid) = instrument(mkt, &sym, i);
            let (first_id, ids) = match mkt {
                // Spot: `U` = previous `u` + 1, several ids per diff.
                Mkt::Spot => (
                    40_000_000_000 + i as u64 * 1_000_000_000,
                    IdRule::Contiguous { max_span: 12 },
                ),
                // USD-M: `pu` = previous `u`; `U` jumps over other symbols' ids.
                Mkt::Perp => (
                    7_000_000_000_000 + i as u64 * 100_000_000_000,
                    IdRule::Jumpy {
                        max_jump: 30,
                        max_span: 12,
                    },
                ),
            };
            let seed = opts
                .seed
                .wrapping_mul(1_000_003)
                .wrapping_add(i as u64 * 7_919 + mkt as u64 * 104_729);
            let book = BookProcess::new(BookParams {
                seed,
                spec,
                mid,
                first_id,
                ids,
                levels_per_side: opts.levels_per_side,
                history: opts.history,
                checkpoint_every: 256,
            });
            books.insert(
                (mkt, sym.clone()),
                SymbolState {
                    book,
                    trade_id: if mkt == Mkt::Spot {
                        3_000_000_000
                    } else {
                        6_000_000_000
                    } + i as u64 * 100_000_000,
                    agg_id: 900_000_000 + i as u64 * 10_000_000,
                    gaps: 0,
                    open_interest: 80_000_000 + i as i64 * 1_000_000,
                    funding: 3_936,
                    marks: 0,
                    silent: false,
                },
            );
        }
    }
    Market {
        books,
        rng: fastrand::Rng::with_seed(opts.seed ^ 0x6d61_726b),
    }
}

// ---------------------------------------------------------------------------------------------
// Routing

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tier {
    Public,
    Market,
}

/// The USD-M tier a stream belongs to.
fn tier(opts: &SimOptions, stream: &str) -> Tier {
    let name = stream.trim_start_matches('!');
    let kind = if stream.starts_with('!') {
        name.split('@').next().unwrap_or("")
    } else {
        name.split_once('@').map_or("", |(_, k)| k)
    };
    if kind.starts_with("depth") || kind == "bookTicker" {
        Tier::Public
    } else if kind == "trade" {
        if opts.perp_trade_endpoint == Endpoint::PerpMarket {
            Tier::Market
        } else {
            Tier::Public
        }
    } else {
        Tier::Market
    }
}

/// Whether an event of `mkt` on `stream` reaches a client on `ep` (subscription aside).
fn delivers(opts: &SimOptions, ep: Endpoint, mkt: Mkt, stream: &str) -> bool {
    match ep {
        Endpoint::Spot => mkt == Mkt::Spot,
        Endpoint::PerpPublic | Endpoint::PerpRoot => {
            mkt == Mkt::Perp && tier(opts, stream) == Tier::Public
        }
        Endpoint::PerpMarket => mkt == Mkt::Perp && tier(opts, stream) == Tier::Market,
    }
}

/// What a handshake asked for.
#[derive(Clone, Debug)]
struct Target {
    endpoint: Endpoint,
    /// `/stream` (envelope) rather than `/ws` (raw payloads).
    combined: bool,
    streams: Vec<String>,
}

fn valid_stream(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '@' || c == '_';
    if s.is_empty() || s.len() > 200 {
        return false;
    }
    if let Some(r) = s.strip_prefix('!') {
        return !r.is_empty() && r.chars().all(ok);
    }
    match s.split_once('@') {
        Some((sym, kind)) => {
            !sym.is_empty()
                && sym
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && !kind.is_empty()
                && kind.chars().all(ok)
        }
        None => false,
    }
}

fn pct_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of `key` in a query string, percent-decoded.
fn param(q: &str, key: &str) -> Option<String> {
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (pct_decode(k) == key).then(|| pct_decode(v))
    })
}

fn parse_target(
    listener: WsListener,
    path: &str,
    query: Option<&str>,
    max: usize,
) -> Result<Target, (u16, String)> {
    let (endpoint, rest) = match listener {
        WsListener::Spot => (Endpoint::Spot, path),
        WsListener::Perp => {
            let tier = |t: &str| {
                path.strip_prefix(t)
                    .filter(|r| r.is_empty() || r.starts_with('/'))
            };
            if let Some(r) = tier("/public") {
                (Endpoint::PerpPublic, r)
            } else if let Some(r) = tier("/market") {
                (Endpoint::PerpMarket, r)
            } else if tier("/private").is_some() {
                return Err((403, "user data streams are not simulated".into()));
            } else {
                (Endpoint::PerpRoot, path)
            }
        }
    };
    let (combined, streams): (bool, Vec<String>) = match rest {
        "/ws" | "/ws/" => (false, Vec::new()),
        "/stream" | "/stream/" => (
            true,
            query
                .and_then(|q| param(q, "streams"))
                .map(|s| {
                    s.split('/')
                        .filter(|x| !x.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        ),
        r => match r.strip_prefix("/ws/") {
            Some(list) => (
                false,
                pct_decode(list)
                    .split('/')
                    .filter(|x| !x.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            None => return Err((404, format!("no such path: {path}"))),
        },
    };
    if let Some(bad) = streams.iter().find(|s| !valid_stream(s)) {
        return Err((400, format!("invalid stream name: {bad}")));
    }
    let set: BTreeSet<String> = streams.into_iter().collect();
    if set.len() > max {
        return Err((400, format!("too many streams: {} > {max}", set.len())));
    }
    Ok(Target {
        endpoint,
        combined,
        streams: set.into_iter().collect(),
    })
}

/// Reads the request path during the handshake; a bad one is refused with an HTTP error.
struct PathCheck {
    listener: WsListener,
    max: usize,
    slot: Arc<Mutex<Option<Target>>>,
}

impl Callback for PathCheck {
    fn on_request(self, req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
        match parse_target(self.listener, req.uri().path(), req.uri().query(), self.max) {
            Ok(t) => {
                *lock(&self.slot) = Some(t);
                Ok(resp)
            }
            Err((status, msg)) => {
                let mut r = ErrorResponse::new(Some(msg));
                *r.status_mut() =
                    http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
                Err(r)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Connections

/// Removes the client from the registry when the connection ends.
struct Registered {
    sh: Arc<Shared>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.sh.clients).retain(|c| c.id != self.id);
    }
}

enum End {
    Gone,
    Reset,
}

/// One WebSocket connection from TCP accept to close. `_open` keeps it in the counters until
/// the socket is closed (it is dropped last).
pub(crate) async fn serve_ws(
    sh: Arc<Shared>,
    _open: OpenGuard,
    tcp: Async<TcpStream>,
    acceptor: TlsAcceptor,
    listener: WsListener,
) {
    let _ = tcp.get_ref().set_nodelay(true);
    let fd = raw_fd(&tcp);
    let delay = sh.accept_delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        Timer::after(Duration::from_millis(delay)).await;
    }
    let io = Throttle::new(tcp, sh.clone(), false);
    let Some(Ok(tls)) = timeout(Duration::from_secs(5), acceptor.accept(io)).await else {
        sh.stats
            .ws_handshake_failures
            .fetch_add(1, Ordering::SeqCst);
        return;
    };
    let slot = Arc::new(Mutex::new(None));
    let check = PathCheck {
        listener,
        max: sh.opts.max_streams_per_connection,
        slot: slot.clone(),
    };
    let mut cfg = WebSocketConfig::default();
    // Requests are small; a client sending megabytes is misbehaving.
    cfg.max_message_size = Some(1 << 20);
    cfg.max_frame_size = Some(1 << 20);
    let ws = timeout(
        Duration::from_secs(5),
        async_tungstenite::accept_hdr_async_with_config(tls, check, Some(cfg)),
    )
    .await;
    let (Some(Ok(mut ws)), Some(target)) = (ws, lock(&slot).take()) else {
        sh.stats
            .ws_handshake_failures
            .fetch_add(1, Ordering::SeqCst);
        return;
    };
    let (tx, rx) = smol::channel::bounded(sh.opts.client_queue.max(1));
    let id = sh.next_client.fetch_add(1, Ordering::SeqCst);
    let mut conn = Conn {
        fd,
        sh: sh.clone(),
        endpoint: target.endpoint,
        combined: target.combined,
        streams: Arc::new(Mutex::new(target.streams.into_iter().collect())),
        overflow: Arc::new(AtomicBool::new(false)),
        silenced: Arc::new(AtomicBool::new(false)),
    };
    lock(&sh.clients).push(ClientHandle {
        id,
        endpoint: conn.endpoint,
        streams: conn.streams.clone(),
        tx,
        overflow: conn.overflow.clone(),
        silenced: conn.silenced.clone(),
    });
    let registered = Registered { sh: sh.clone(), id };
    let end = conn.run(&mut ws, rx).await;
    drop(registered);
    if let End::Reset = end {
        abort_on_close(fd);
    }
    // `ws` (and the socket) drops here, then `_open`.
}

struct Conn {
    fd: i32,
    sh: Arc<Shared>,
    endpoint: Endpoint,
    combined: bool,
    streams: Arc<Mutex<BTreeSet<String>>>,
    overflow: Arc<AtomicBool>,
    silenced: Arc<AtomicBool>,
}

enum Ev {
    Out(Option<Out>),
    In(Option<Result<Message, async_tungstenite::tungstenite::Error>>),
    Raw(std::io::Result<usize>),
    Timer,
}

impl Conn {
    async fn run<S>(&mut self, ws: &mut WebSocketStream<S>, rx: smol::channel::Receiver<Out>) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let sh = self.sh.clone();
        let opts = &sh.opts;
        let limit = if self.endpoint == Endpoint::Spot {
            opts.spot_max_incoming_per_sec
        } else {
            opts.perp_max_incoming_per_sec
        } as usize;
        let mut window: VecDeque<Instant> = VecDeque::new();
        let mut next_ping = Instant::now() + opts.ping_interval;
        let mut pong_due: Option<Instant> = None;
        let mut pings: VecDeque<Bytes> = VecDeque::new();
        let mut shutdown_at: Option<Instant> = None;
        let mut silenced = false;
        // PingsOnly: silenced, but the server's own pings go on; StopReading: nothing is read.
        let mut pings_only = false;
        let mut not_reading = false;
        if lock(&sh.faults).shutdown_on_connect {
            let text = format!("{{\"e\":\"serverShutdown\",\"E\":{}}}", now_ms());
            if ws.send(Message::text(text)).await.is_err() {
                return End::Gone;
            }
            shutdown_at = Some(Instant::now() + opts.shutdown_grace);
        }
        let mut timer = Timer::never();
        let mut scratch = vec![0u8; 8192];
        loop {
            // A server that stopped reading is stuck, not strict: it never closes by itself.
            if self.overflow.load(Ordering::SeqCst) && !not_reading {
                close(ws, CloseCode::Policy, "slow consumer").await;
                return End::Gone;
            }
            let mut deadline = shutdown_at;
            if !silenced {
                for d in [Some(next_ping), pong_due].into_iter().flatten() {
                    deadline = Some(deadline.map_or(d, |x| x.min(d)));
                }
            } else if pings_only {
                deadline = Some(deadline.map_or(next_ping, |x| x.min(next_ping)));
            }
            let ev = if deadline.is_some_and(|d| d <= Instant::now()) {
                Ev::Timer
            } else {
                match deadline {
                    Some(d) => timer.set_at(d),
                    None => timer.set_after(Duration::from_secs(3600)),
                }
                let tick = async {
                    (&mut timer).await;
                    Ev::Timer
                };
                let out = async { Ev::Out(rx.recv().await.ok()) };
                if not_reading {
                    out.or(tick).await
                } else if silenced {
                    // Nothing is sent, not even automatic pongs: read raw bytes (TLS
                    // decrypted) only to notice when the client gives up.
                    let raw = async { Ev::Raw(ws.get_mut().read(&mut scratch).await) };
                    raw.or(out).or(tick).await
                } else {
                    let inc = async { Ev::In(ws.next().await) };
                    inc.or(out).or(tick).await
                }
            };
            match ev {
                Ev::Timer => {
                    let now = Instant::now();
                    if shutdown_at.is_some_and(|t| now >= t) {
                        close(ws, CloseCode::Away, "server shutdown").await;
                        return End::Gone;
                    }
                    if (silenced && !pings_only) || (not_reading && now < next_ping) {
                        continue;
                    }
                    if pings_only || not_reading {
                        // The venue's keepalive and nothing else; its pongs are never awaited.
                        let payload = Bytes::from(vec![b'p'; if not_reading { 125 } else { 16 }]);
                        if ws.send(Message::Ping(payload)).await.is_err() {
                            return End::Gone;
                        }
                        sh.stats.pings_sent.fetch_add(1, Ordering::SeqCst);
                        next_ping = now
                            + if not_reading {
                                Duration::from_millis(5)
                            } else {
                                opts.ping_interval
                            };
                        continue;
                    }
                    if pong_due.is_some_and(|t| now >= t) {
                        sh.stats.pong_timeouts.fetch_add(1, Ordering::SeqCst);
                        close(ws, CloseCode::Policy, "pong timeout").await;
                        return End::Gone;
                    }
                    if now >= next_ping {
                        let payload = Bytes::from(now_ms().to_string());
                        if ws.send(Message::Ping(payload.clone())).await.is_err() {
                            return End::Gone;
                        }
                        sh.stats.pings_sent.fetch_add(1, Ordering::SeqCst);
                        pings.push_back(payload);
                        if pings.len() > 8 {
                            pings.pop_front();
                        }
                        pong_due.get_or_insert(now + opts.pong_timeout);
                        next_ping = now + opts.ping_interval;
                    }
                }
                Ev::Raw(Ok(0)) | Ev::Raw(Err(_)) => return End::Gone,
                Ev::Raw(Ok(_)) => {}
                Ev::In(None) | Ev::In(Some(Err(_))) => return End::Gone,
                Ev::In(Some(Ok(msg))) => {
                    let now = Instant::now();
                    window.push_back(now);
                    while window
                        .front()
                        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
                    {
                        window.pop_front();
                    }
                    if window.len() > limit {
                        sh.stats.rate_violations.fetch_add(1, Ordering::SeqCst);
                        close(ws, CloseCode::Policy, "Too many requests").await;
                        return End::Gone;
                    }
                    match msg {
                        Message::Pong(p) => {
                            sh.stats.pongs.fetch_add(1, Ordering::SeqCst);
                            // Spot: only a pong echoing a ping's payload counts; USD-M
                            // accepts unsolicited pongs as keepalive.
                            if self.endpoint != Endpoint::Spot || pings.contains(&p) {
                                pong_due = None;
                                pings.clear();
                            }
                        }
                        Message::Text(t) => {
                            sh.stats.subscribe_requests.fetch_add(1, Ordering::SeqCst);
                            let reply = self.request(t.as_str());
                            if ws.send(Message::text(reply)).await.is_err() {
                                return End::Gone;
                            }
                        }
                        Message::Close(_) => {
                            // Flushes tungstenite's close reply.
                            timeout(Duration::from_millis(500), ws.next()).await;
                            return End::Gone;
                        }
                        // Pings are answered by tungstenite; binary requests are ignored.
                        _ => {}
                    }
                }
                Ev::Out(None) => return End::Gone,
                Ev::Out(Some(o)) => match o {
                    Out::Event { stream, payload } => {
                        if silenced {
                            continue;
                        }
                        let text = if self.combined {
                            format!("{{\"stream\":\"{stream}\",\"data\":{payload}}}")
                        } else {
                            payload.to_string()
                        };
                        if ws.send(Message::text(text)).await.is_err() {
                            return End::Gone;
                        }
                    }
                    Out::Raw(t) => {
                        if !silenced && ws.send(Message::text(&*t)).await.is_err() {
                            return End::Gone;
                        }
                    }
                    Out::Binary(b) => {
                        if !silenced && ws.send(Message::binary(b)).await.is_err() {
                            return End::Gone;
                        }
                    }
                    Out::Disconnect(Disconnect::Close) => {
                        close(ws, CloseCode::Normal, "").await;
                        return End::Gone;
                    }
                    Out::Disconnect(Disconnect::Reset) => return End::Reset,
                    Out::Disconnect(Disconnect::Silence) => {
                        silenced = true;
                        self.silenced.store(true, Ordering::SeqCst);
                    }
                    Out::Disconnect(Disconnect::PingsOnly) => {
                        silenced = true;
                        pings_only = true;
                        self.silenced.store(true, Ordering::SeqCst);
                    }
                    Out::Disconnect(Disconnect::StopReading) => {
                        not_reading = true;
                        pong_due = None;
                        next_ping = Instant::now();
                        super::shrink_recv_buffer(self.fd);
                    }
                    Out::Shutdown => {
                        let text = format!("{{\"e\":\"serverShutdown\",\"E\":{}}}", now_ms());
                        if !silenced && ws.send(Message::text(text)).await.is_err() {
                            return End::Gone;
                        }
                        shutdown_at.get_or_insert(Instant::now() + opts.shutdown_grace);
                    }
                },
            }
        }
    }

    /// Answers a live request (`SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`,
    /// `SET_PROPERTY`, `GET_PROPERTY`) with the venue's reply or error body.
    fn request(&mut self, text: &str) -> String {
        let v: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                return serde_json::json!({"code": 3, "msg": format!("Invalid JSON: {e}")})
                    .to_string();
            }
        };
        let err = |code: i64, msg: &str, id: &serde_json::Value| {
            let mut e = serde_json::json!({"code": code, "msg": msg});
            if !id.is_null() {
                e["id"] = id.clone();
            }
            e.to_string()
        };
        let Some(obj) = v.as_object() else {
            return err(
                2,
                "Invalid request: expected a JSON object",
                &serde_json::Value::Null,
            );
        };
        let id = obj.get("id").cloned().unwrap_or(serde_json::Value::Null);
        let id_ok = match &id {
            serde_json::Value::Null => true,
            serde_json::Value::Number(n) => n.is_u64(),
            serde_json::Value::String(s) => {
                s.len() <= 36 && s.chars().all(|c| c.is_ascii_alphanumeric())
            }
            _ => false,
        };
        if !id_ok {
            return err(
                2,
                "Invalid request: request ID must be an unsigned integer",
                &serde_json::Value::Null,
            );
        }
        let Some(method) = obj.get("method") else {
            return err(2, "Invalid request: missing field `method`", &id);
        };
        let params = obj.get("params");
        let names = || -> Option<Vec<String>> {
            params?
                .as_array()?
                .iter()
                .map(|p| p.as_str().map(str::to_owned))
                .collect()
        };
        match method.as_str() {
            Some(m @ ("SUBSCRIBE" | "UNSUBSCRIBE")) => {
                let Some(list) = names() else {
                    return err(
                        2,
                        "Invalid request: params must be an array of strings",
                        &id,
                    );
                };
                if let Some(bad) = list.iter().find(|s| !valid_stream(s)) {
                    return err(
                        2,
                        &format!("Invalid request: invalid stream name `{bad}`"),
                        &id,
                    );
                }
                let mut set = lock(&self.streams);
                if m == "SUBSCRIBE" {
                    let after: BTreeSet<&String> = set.iter().chain(list.iter()).collect();
                    if after.len() > self.sh.opts.max_streams_per_connection {
                        return err(2, "Invalid request: too many streams", &id);
                    }
                    set.extend(list);
                } else {
                    for s in &list {
                        set.remove(s);
                    }
                }
                serde_json::json!({"result": null, "id": id}).to_string()
            }
            Some("LIST_SUBSCRIPTIONS") => {
                let list: Vec<String> = lock(&self.streams).iter().cloned().collect();
                serde_json::json!({"result": list, "id": id}).to_string()
            }
            Some("SET_PROPERTY") => match params.and_then(|p| p.as_array()).map(Vec::as_slice) {
                Some([name, value]) if name == "combined" => match value.as_bool() {
                    Some(b) => {
                        self.combined = b;
                        serde_json::json!({"result": null, "id": id}).to_string()
                    }
                    None => err(1, "Invalid value type: expected Boolean", &id),
                },
                _ => err(0, "Unknown property", &id),
            },
            Some("GET_PROPERTY") => match params.and_then(|p| p.as_array()).map(Vec::as_slice) {
                Some([name]) if name == "combined" => {
                    serde_json::json!({"result": self.combined, "id": id}).to_string()
                }
                _ => err(0, "Unknown property", &id),
            },
            _ => err(
                2,
                &format!(
                    "Invalid request: unknown variant `{}`, expected one of `SUBSCRIBE`, \
                     `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`",
                    method.as_str().unwrap_or("?")
                ),
                &id,
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The market clock and frames

fn levels_json(spec: &Spec, levels: &[(i64, Level)]) -> String {
    let mut s = String::with_capacity(levels.len() * 36 + 2);
    s.push('[');
    for (i, (p, l)) in levels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str("[\"");
        s.push_str(&spec.price(*p));
        s.push_str("\",\"");
        s.push_str(&spec.qty(l.qty));
        s.push_str("\"]");
    }
    s.push(']');
    s
}

fn depth_payload(mkt: Mkt, sym: &str, spec: &Spec, d: &Diff, ts: u64) -> String {
    depth_json(
        mkt,
        sym,
        d,
        ts,
        &levels_json(spec, &d.bids),
        &levels_json(spec, &d.asks),
    )
}

/// A `depthUpdate` with the ids of `d` and the given level arrays.
fn depth_json(mkt: Mkt, sym: &str, d: &Diff, ts: u64, b: &str, a: &str) -> String {
    match mkt {
        Mkt::Spot => format!(
            "{{\"e\":\"depthUpdate\",\"E\":{ts},\"s\":\"{sym}\",\"U\":{},\"u\":{},\"b\":{b},\"a\":{a}}}",
            d.first_id, d.last_id
        ),
        Mkt::Perp => format!(
            "{{\"e\":\"depthUpdate\",\"E\":{ts},\"T\":{},\"s\":\"{sym}\",\"U\":{},\"u\":{},\"pu\":{},\"b\":{b},\"a\":{a}}}",
            ts.saturating_sub(2),
            d.first_id,
            d.last_id,
            d.prev_last_id
        ),
    }
}

fn book_ticker(mkt: Mkt, sym: &str, st: &SymbolState, ts: u64) -> Option<String> {
    let spec = st.book.spec();
    let (b, bl) = st.book.best_bid()?;
    let (a, al) = st.book.best_ask()?;
    let u = st.book.last_id();
    let (b, bq, a, aq) = (
        spec.price(b),
        spec.qty(bl.qty),
        spec.price(a),
        spec.qty(al.qty),
    );
    Some(match mkt {
        Mkt::Spot => {
            format!(
                "{{\"u\":{u},\"s\":\"{sym}\",\"b\":\"{b}\",\"B\":\"{bq}\",\"a\":\"{a}\",\"A\":\"{aq}\"}}"
            )
        }
        Mkt::Perp => format!(
            "{{\"e\":\"bookTicker\",\"u\":{u},\"s\":\"{sym}\",\"b\":\"{b}\",\"B\":\"{bq}\",\"a\":\"{a}\",\"A\":\"{aq}\",\"T\":{},\"E\":{ts}}}",
            ts.saturating_sub(2)
        ),
    })
}

fn trade_payload(mkt: Mkt, sym: &str, t: u64, p: &str, q: &str, m: bool, ts: u64) -> String {
    match mkt {
        Mkt::Spot => format!(
            "{{\"e\":\"trade\",\"E\":{ts},\"s\":\"{sym}\",\"t\":{t},\"p\":\"{p}\",\"q\":\"{q}\",\"T\":{},\"m\":{m},\"M\":true}}",
            ts.saturating_sub(1)
        ),
        // The 2026 shape: `X` and the undocumented `st`.
        Mkt::Perp => format!(
            "{{\"e\":\"trade\",\"E\":{ts},\"T\":{},\"s\":\"{sym}\",\"t\":{t},\"p\":\"{p}\",\"q\":\"{q}\",\"X\":\"MARKET\",\"m\":{m},\"st\":1}}",
            ts.saturating_sub(1)
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn agg_payload(mkt: Mkt, sym: &str, a: u64, t: u64, p: &str, q: &str, m: bool, ts: u64) -> String {
    match mkt {
        Mkt::Spot => format!(
            "{{\"e\":\"aggTrade\",\"E\":{ts},\"s\":\"{sym}\",\"a\":{a},\"p\":\"{p}\",\"q\":\"{q}\",\"f\":{t},\"l\":{t},\"T\":{},\"m\":{m},\"M\":true}}",
            ts.saturating_sub(1)
        ),
        // The 2026 shape: undocumented `nq` and `st`.
        Mkt::Perp => format!(
            "{{\"e\":\"aggTrade\",\"E\":{ts},\"a\":{a},\"s\":\"{sym}\",\"p\":\"{p}\",\"q\":\"{q}\",\"nq\":\"{q}\",\"f\":{t},\"l\":{t},\"T\":{},\"m\":{m},\"st\":1}}",
            ts.saturating_sub(1)
        ),
    }
}

/// A price in units of `10^-dec` rescaled to 8 decimals plus `noise` (mark/index prices are
/// written with 8 decimals).
fn to8(units: i64, dec: u32, noise: i64) -> String {
    let scale = 10i64.pow(8u32.saturating_sub(dec));
    fixed(units * scale + noise, 8)
}

fn mark_payload(sym: &str, st: &SymbolState, rng: &mut fastrand::Rng, ts: u64, p: &str) -> String {
    let spec = st.book.spec();
    let mid = st.book.mid();
    let d = spec.price_decimals;
    let span = 10i64.pow(8u32.saturating_sub(d)).max(2);
    let e = ts / 1000 * 1000;
    format!(
        "{{\"e\":\"markPriceUpdate\",\"E\":{e},\"s\":\"{sym}\",\"p\":\"{p}\",\"ap\":\"{p}\",\"P\":\"{}\",\"i\":\"{}\",\"r\":\"{}\",\"T\":{},\"st\":1}}",
        to8(mid - 3 * spec.tick, d, rng.i64(0..span)),
        to8(mid + spec.tick, d, rng.i64(0..span)),
        fixed(st.funding, 8),
        (ts / 28_800_000 + 1) * 28_800_000
    )
}

fn force_order(
    sym: &str,
    st: &SymbolState,
    rng: &mut fastrand::Rng,
    ts: u64,
    bad_qty: bool,
) -> String {
    let spec = st.book.spec();
    let mid = st.book.mid();
    let sell = rng.bool();
    let k = rng.i64(5..60) * spec.tick;
    let better = rng.i64(0..5) * spec.tick;
    // A liquidated long is sold below the market at its bankruptcy price; fills come better.
    let (side, p, ap) = if sell {
        ("SELL", mid - k, mid - k + better)
    } else {
        ("BUY", mid + k, mid + k - better)
    };
    let z = rng.i64(1..=spec.typical_lots) * spec.lot;
    let l = (z / 2).max(spec.lot);
    let q = if bad_qty {
        "0.0.1".to_string()
    } else {
        spec.qty(z)
    };
    format!(
        "{{\"e\":\"forceOrder\",\"E\":{ts},\"o\":{{\"s\":\"{sym}\",\"S\":\"{side}\",\"o\":\"LIMIT\",\"f\":\"IOC\",\"q\":\"{q}\",\"p\":\"{}\",\"ap\":\"{}\",\"X\":\"FILLED\",\"l\":\"{}\",\"z\":\"{}\",\"T\":{},\"ps\":\"{sym}\",\"st\":1}}}}",
        spec.price(p),
        spec.price(ap),
        spec.qty(l.min(z)),
        spec.qty(z),
        ts.saturating_sub(1)
    )
}

type Event = (Mkt, Arc<str>, Arc<str>);

#[allow(clippy::too_many_arguments)]
fn symbol_tick(
    opts: &SimOptions,
    mkt: Mkt,
    sym: &str,
    st: &mut SymbolState,
    rng: &mut fastrand::Rng,
    ts: u64,
    mark_due: bool,
    liq_due: bool,
    out: &mut Vec<Event>,
) {
    let lower = sym.to_ascii_lowercase();
    let spec = st.book.spec();
    let mut ev = |stream: String, payload: String| {
        out.push((mkt, Arc::from(stream), Arc::from(payload)));
    };
    let depth = {
        let d = st.book.step(ts);
        depth_payload(mkt, sym, &spec, d, ts)
    };
    if st.gaps > 0 {
        // Applied to the true book, never sent: the chain breaks at the next diff.
        st.gaps -= 1;
    } else {
        ev(format!("{lower}@depth@100ms"), depth);
        if let Some(bt) = book_ticker(mkt, sym, st, ts) {
            ev(format!("{lower}@bookTicker"), bt);
        }
    }
    if rng.u8(..100) < opts.trade_chance_pct {
        for _ in 0..rng.usize(1..=3) {
            let Some(f) = st.book.fill() else { break };
            st.trade_id += 1;
            st.agg_id += 1;
            let (p, q) = (spec.price(f.price), spec.qty(f.qty));
            let m = f.buyer_is_maker;
            ev(
                format!("{lower}@trade"),
                trade_payload(mkt, sym, st.trade_id, &p, &q, m, ts),
            );
            ev(
                format!("{lower}@aggTrade"),
                agg_payload(mkt, sym, st.agg_id, st.trade_id, &p, &q, m, ts),
            );
        }
    }
    if mkt != Mkt::Perp {
        return;
    }
    st.open_interest = (st.open_interest + rng.i64(-400..=400)).max(1_000_000);
    if mark_due {
        st.funding = (st.funding + rng.i64(-50..=50)).clamp(-20_000, 40_000);
        let span = 10i64.pow(8u32.saturating_sub(spec.price_decimals)).max(2);
        let p = to8(st.book.mid(), spec.price_decimals, rng.i64(0..span));
        let mark = mark_payload(sym, st, rng, ts, &p);
        st.marks += 1;
        if st.marks % 3 == 0 {
            ev(format!("{lower}@markPrice"), mark.clone());
        }
        ev(format!("{lower}@markPrice@1s"), mark);
    }
    if liq_due && rng.u8(..100) < 70 {
        let liq = force_order(sym, st, rng, ts, false);
        ev("!forceOrder@arr".to_string(), liq.clone());
        ev(format!("{lower}@forceOrder"), liq);
    }
}

fn broadcast(sh: &Shared, clients: &[ClientHandle], events: &[Event]) {
    if lock(&sh.faults).mute_data {
        return;
    }
    for c in clients {
        if c.silenced.load(Ordering::Relaxed) || c.overflow.load(Ordering::Relaxed) {
            continue;
        }
        let subs = lock(&c.streams);
        for (mkt, stream, payload) in events {
            if subs.contains(&**stream) && delivers(&sh.opts, c.endpoint, *mkt, stream) {
                if stream.ends_with("@depth@100ms") {
                    sh.stats.diffs_sent.fetch_add(1, Ordering::Relaxed);
                }
                c.push(
                    Out::Event {
                        stream: stream.clone(),
                        payload: payload.clone(),
                    },
                    &sh.stats,
                );
            }
        }
    }
}

/// Steps every book each `diff_interval` and fans the events out.
pub(crate) async fn run_market(sh: Arc<Shared>) {
    let opts = &sh.opts;
    let mut ticks = Timer::interval(opts.diff_interval);
    let mut next_mark = Instant::now() + opts.mark_price_interval;
    let mut next_liq = Instant::now() + opts.liquidation_interval;
    let mut events = Vec::new();
    loop {
        ticks.next().await;
        let now = Instant::now();
        let mark_due = now >= next_mark;
        if mark_due {
            next_mark = now + opts.mark_price_interval;
        }
        let liq_due = now >= next_liq;
        if liq_due {
            next_liq = now + opts.liquidation_interval;
        }
        let ts = now_ms();
        let mut m = lock(&sh.market);
        let Market { books, rng } = &mut *m;
        events.clear();
        for ((mkt, sym), st) in books.iter_mut().filter(|(_, st)| !st.silent) {
            symbol_tick(opts, *mkt, sym, st, rng, ts, mark_due, liq_due, &mut events);
        }
        let clients = lock(&sh.clients);
        broadcast(&sh, &clients, &events);
    }
}

/// Replaces the first `0` with the letter `O` (`"27O12.34000000"`).
fn corrupt(s: &str) -> String {
    if s.contains('0') {
        s.replacen('0', "O", 1)
    } else {
        format!("{s}.1.2")
    }
}

/// An event with an impossible decimal on one of the client's delivered streams: a trade or
/// aggTrade repeating the last trade id, a depth diff repeating the last diff's ids, a mark
/// price, or a liquidation.
fn bad_decimal(sh: &Shared, m: &mut Market, c: &ClientHandle) -> Option<Out> {
    let mut subs: Vec<String> = lock(&c.streams).iter().cloned().collect();
    // Trades first: a bad trade cannot disturb a book.
    let rank = |s: &String| match s.split_once('@').map_or("", |(_, k)| k) {
        "trade" => 0,
        "aggTrade" => 1,
        "markPrice@1s" | "markPrice" => 2,
        "forceOrder" => 3,
        _ => 4,
    };
    subs.sort_by_key(rank);
    let mkt = c.endpoint.mkt();
    let ts = now_ms();
    for s in subs {
        if !delivers(&sh.opts, c.endpoint, mkt, &s) {
            continue;
        }
        let Some((sym_l, kind)) = s.split_once('@') else {
            continue;
        };
        let sym = sym_l.to_ascii_uppercase();
        let Market { books, rng } = &mut *m;
        let Some(st) = books.get(&(mkt, sym.clone())) else {
            continue;
        };
        let spec = st.book.spec();
        let bad_px = corrupt(&spec.price(st.book.mid()));
        let q = spec.qty(spec.lot);
        let payload = match kind {
            "trade" => trade_payload(mkt, &sym, st.trade_id, &bad_px, &q, true, ts),
            "aggTrade" => agg_payload(mkt, &sym, st.agg_id, st.trade_id, &bad_px, &q, true, ts),
            "depth@100ms" => {
                let d = st.book.last_diff()?;
                depth_json(mkt, &sym, d, ts, &format!("[[\"{bad_px}\",\"{q}\"]]"), "[]")
            }
            "markPrice@1s" | "markPrice" => mark_payload(&sym, st, rng, ts, &bad_px),
            "forceOrder" => force_order(&sym, st, rng, ts, true),
            _ => continue,
        };
        return Some(Out::Event {
            stream: Arc::from(s.as_str()),
            payload: Arc::from(payload),
        });
    }
    None
}

pub(crate) fn send_malformed(sh: &Shared, kind: Malformed) {
    let mut m = lock(&sh.market);
    let clients = lock(&sh.clients);
    for c in clients.iter() {
        let out = match kind {
            Malformed::NotJson => Some(Out::Raw(Arc::from(
                "{\"stream\":\"btcusdt@depth@100ms\",\"data\":{\"e\":\"depthUpdate\",\"E\":1,oops",
            ))),
            Malformed::Oversized { bytes } => {
                let head = "{\"stream\":\"btcusdt@trade\",\"data\":{\"e\":\"trade\",\"pad\":\"";
                let tail = "\"}}";
                let pad = bytes.saturating_sub(head.len() + tail.len());
                let text = if bytes >= head.len() + tail.len() {
                    format!("{head}{}{tail}", "x".repeat(pad))
                } else {
                    "x".repeat(bytes)
                };
                Some(Out::Raw(Arc::from(text)))
            }
            Malformed::UnknownEvent => {
                let sym_l = lock(&c.streams)
                    .iter()
                    .find_map(|s| s.split_once('@').map(|(a, _)| a.to_owned()))
                    .unwrap_or_else(|| "btcusdt".into());
                let sym = sym_l.to_ascii_uppercase();
                let ts = now_ms();
                let start = ts / 60_000 * 60_000;
                Some(Out::Event {
                    stream: Arc::from(format!("{sym_l}@kline_1m")),
                    payload: Arc::from(format!(
                        "{{\"e\":\"kline\",\"E\":{ts},\"s\":\"{sym}\",\"k\":{{\"t\":{start},\"T\":{},\"s\":\"{sym}\",\"i\":\"1m\",\"f\":1,\"L\":2,\"o\":\"1.0\",\"c\":\"1.0\",\"h\":\"1.0\",\"l\":\"1.0\",\"v\":\"1.0\",\"n\":2,\"x\":false,\"q\":\"1.0\",\"V\":\"0.5\",\"Q\":\"0.5\",\"B\":\"0\"}}}}",
                        start + 59_999
                    )),
                })
            }
            Malformed::BadDecimal => bad_decimal(sh, &mut m, c),
            Malformed::Binary => Some(Out::Binary(vec![
                0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03,
            ])),
        };
        if let Some(o) = out {
            c.push(o, &sh.stats);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// REST

/// A REST answer: status, extra headers, JSON body.
pub(crate) struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    SpotDepth,
    SpotPing,
    SpotTime,
    PerpDepth,
    PerpPing,
    PerpTime,
    OpenInterest,
    TopLsr,
    GlobalLsr,
}

fn route(host: RestHost, path: &str) -> Option<Route> {
    let spot = matches!(host, RestHost::Spot | RestHost::Any);
    let perp = matches!(host, RestHost::Perp | RestHost::Any);
    Some(match path {
        "/api/v3/depth" if spot => Route::SpotDepth,
        "/api/v3/ping" if spot => Route::SpotPing,
        "/api/v3/time" if spot => Route::SpotTime,
        "/fapi/v1/depth" if perp => Route::PerpDepth,
        "/fapi/v1/ping" if perp => Route::PerpPing,
        "/fapi/v1/time" if perp => Route::PerpTime,
        "/fapi/v1/openInterest" if perp => Route::OpenInterest,
        "/futures/data/topLongShortPositionRatio" if perp => Route::TopLsr,
        "/futures/data/globalLongShortAccountRatio" if perp => Route::GlobalLsr,
        _ => return None,
    })
}

fn error(status: u16, code: i64, msg: &str) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: serde_json::json!({"code": code, "msg": msg}).to_string(),
    }
}

fn ok(body: String) -> Reply {
    Reply {
        status: 200,
        headers: Vec::new(),
        body,
    }
}

const MANDATORY_SYMBOL: &str =
    "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.";
const PERP_LIMITS: [usize; 7] = [5, 10, 20, 50, 100, 500, 1000];
const PERIODS: [(&str, u64); 9] = [
    ("5m", 300_000),
    ("15m", 900_000),
    ("30m", 1_800_000),
    ("1h", 3_600_000),
    ("2h", 7_200_000),
    ("4h", 14_400_000),
    ("6h", 21_600_000),
    ("12h", 43_200_000),
    ("1d", 86_400_000),
];

/// Request weight as the venue documents it.
fn weight(r: Route, limit: usize) -> u32 {
    match r {
        Route::SpotDepth => match limit {
            0..=100 => 5,
            101..=500 => 25,
            501..=1000 => 50,
            _ => 250,
        },
        Route::PerpDepth => match limit {
            0..=50 => 2,
            51..=100 => 5,
            101..=500 => 10,
            _ => 20,
        },
        Route::SpotPing | Route::SpotTime | Route::PerpPing | Route::PerpTime => 1,
        Route::OpenInterest | Route::TopLsr | Route::GlobalLsr => 1,
    }
}

pub(crate) fn rest_answer(sh: &Shared, host: RestHost, path: &str, query: &str) -> Reply {
    sh.stats.rest_requests.fetch_add(1, Ordering::SeqCst);
    *lock(&sh.rest_paths).entry(path.to_owned()).or_default() += 1;
    let fault = lock(&sh.faults).rest.pop_front();
    if let Some(f) = fault {
        let (status, secs, msg) = match f {
            RestFault::TooMany { retry_after_secs } => (
                429,
                retry_after_secs,
                "Too many requests; current limit of IP(127.0.0.1) is 6000 requests per minute. \
                 Please use the websocket for live updates to avoid polling the API."
                    .to_string(),
            ),
            RestFault::Banned { retry_after_secs } => (
                418,
                retry_after_secs,
                format!(
                    "Way too many requests; IP(127.0.0.1) banned until {}. Please use the \
                     websocket for live updates to avoid bans.",
                    now_ms().saturating_add(retry_after_secs.saturating_mul(1000))
                ),
            ),
            RestFault::Raw {
                status,
                retry_after,
            } => {
                let mut r = error(status, -1003, "Service unavailable.");
                r.headers.push(("retry-after", retry_after.to_string()));
                return r;
            }
            RestFault::Weight { used } => {
                let Some(r) = route(host, path) else {
                    return error(404, -1, "Not found.");
                };
                let mkt = match r {
                    Route::SpotDepth | Route::SpotPing | Route::SpotTime => Mkt::Spot,
                    _ => Mkt::Perp,
                };
                let limit_param = param(query, "limit");
                let limit_n = limit_param.as_deref().and_then(|l| l.parse::<usize>().ok());
                let mut rep = answer(sh, r, mkt, query, limit_param.as_deref(), limit_n);
                rep.headers.push(("x-mbx-used-weight-1m", used.to_string()));
                return rep;
            }
        };
        let mut r = error(status, -1003, &msg);
        r.headers.push(("retry-after", secs.to_string()));
        return r;
    }
    let Some(r) = route(host, path) else {
        return error(404, -1, "Not found.");
    };
    let mkt = match r {
        Route::SpotDepth | Route::SpotPing | Route::SpotTime => Mkt::Spot,
        _ => Mkt::Perp,
    };
    let limit_param = param(query, "limit");
    let limit_n = limit_param.as_deref().and_then(|l| l.parse::<usize>().ok());
    let default_limit = match r {
        Route::SpotDepth => 100,
        Route::PerpDepth => 500,
        _ => 30,
    };
    let wt = weight(r, limit_n.unwrap_or(default_limit));
    let used = {
        let mut w = lock(&sh.weight);
        let e = w.entry(mkt).or_default();
        let minute = now_ms() / 60_000;
        if e.minute != minute {
            e.minute = minute;
            e.used = 0;
        }
        let cap = match mkt {
            Mkt::Spot => sh.opts.spot_weight_limit_1m,
            Mkt::Perp => sh.opts.perp_weight_limit_1m,
        };
        if cap.is_some_and(|c| e.used + wt > c) {
            sh.stats.weight_limit_hits.fetch_add(1, Ordering::SeqCst);
            let mut rep = error(
                429,
                -1003,
                "Too many requests; request weight exceeded the limit for this minute.",
            );
            rep.headers
                .push(("retry-after", (60 - now_ms() / 1000 % 60).to_string()));
            rep.headers
                .push(("x-mbx-used-weight-1m", e.used.to_string()));
            return rep;
        }
        e.used += wt;
        e.used
    };
    let mut rep = answer(sh, r, mkt, query, limit_param.as_deref(), limit_n);
    if mkt == Mkt::Spot {
        rep.headers.push(("x-mbx-used-weight", used.to_string()));
    }
    rep.headers.push(("x-mbx-used-weight-1m", used.to_string()));
    rep
}

fn answer(
    sh: &Shared,
    r: Route,
    mkt: Mkt,
    query: &str,
    limit_param: Option<&str>,
    limit_n: Option<usize>,
) -> Reply {
    let ts = now_ms();
    match r {
        Route::SpotPing | Route::PerpPing => return ok("{}".into()),
        Route::SpotTime | Route::PerpTime => return ok(format!("{{\"serverTime\":{ts}}}")),
        _ => {}
    }
    let Some(sym) = param(query, "symbol").filter(|s| !s.is_empty()) else {
        return error(400, -1102, MANDATORY_SYMBOL);
    };
    if !sym
        .chars()
        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || "-_.".contains(c))
        || sym.len() > 20
    {
        return error(
            400,
            -1100,
            "Illegal characters found in parameter 'symbol'; legal range is '^[A-Z0-9-_.]{1,20}$'.",
        );
    }
    let mut m = lock(&sh.market);
    if !m.books.contains_key(&(mkt, sym.clone())) {
        return error(400, -1121, "Invalid symbol.");
    }
    match r {
        Route::SpotDepth | Route::PerpDepth => {
            let limit = match (r, limit_param, limit_n) {
                (_, None, _) => {
                    if r == Route::SpotDepth {
                        100
                    } else {
                        500
                    }
                }
                (Route::SpotDepth, Some(_), Some(n)) if n >= 1 => n.min(5000),
                (Route::PerpDepth, Some(_), Some(n)) if PERP_LIMITS.contains(&n) => n,
                (Route::PerpDepth, Some(_), Some(_)) => {
                    return error(400, -1130, "Data sent for parameter 'limit' is not valid.");
                }
                _ => {
                    return error(
                        400,
                        -1100,
                        "Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'.",
                    );
                }
            };
            let stale = {
                let mut f = lock(&sh.faults);
                let s = f.stale_snapshots > 0;
                if s {
                    f.stale_snapshots -= 1;
                }
                s
            };
            let st = m.books.get_mut(&(mkt, sym)).expect("checked above");
            let spec = st.book.spec();
            let snap = if stale {
                st.book.lagged(sh.opts.stale_snapshot_lag, limit)
            } else {
                st.book.top(limit)
            };
            let (b, a) = (
                levels_json(&spec, &snap.bids),
                levels_json(&spec, &snap.asks),
            );
            ok(match mkt {
                Mkt::Spot => format!("{{\"lastUpdateId\":{},\"bids\":{b},\"asks\":{a}}}", snap.id),
                Mkt::Perp => format!(
                    "{{\"lastUpdateId\":{},\"E\":{ts},\"T\":{},\"bids\":{b},\"asks\":{a}}}",
                    snap.id,
                    ts.saturating_sub(2)
                ),
            })
        }
        Route::OpenInterest => {
            let st = &m.books[&(mkt, sym.clone())];
            ok(format!(
                "{{\"symbol\":\"{sym}\",\"openInterest\":\"{}\",\"time\":{ts}}}",
                fixed(st.open_interest, 3)
            ))
        }
        Route::TopLsr | Route::GlobalLsr => {
            drop(m);
            let Some(period) = param(query, "period") else {
                return error(
                    400,
                    -1102,
                    "Mandatory parameter 'period' was not sent, was empty/null, or malformed.",
                );
            };
            let Some(&(_, ms)) = PERIODS.iter().find(|(p, _)| *p == period) else {
                return error(400, -1130, "Data sent for parameter 'period' is not valid.");
            };
            let limit = match (limit_param, limit_n) {
                (None, _) => 30,
                (Some(_), Some(n)) if n >= 1 => n.min(500),
                _ => return error(400, -1130, "Data sent for parameter 'limit' is not valid."),
            };
            let n = {
                let mut c = lock(&sh.lsr_responses);
                let e = c.entry(format!("{r:?}/{sym}")).or_default();
                *e += 1;
                *e - 1
            };
            let latest = ts / ms * ms;
            let salt = if r == Route::TopLsr { 0x70 } else { 0x61 };
            let rows: Vec<String> = (0..limit as u64)
                .map(|i| {
                    let at = latest - (limit as u64 - 1 - i) * ms;
                    let (ratio, long, short) = if i + 1 == limit as u64 {
                        let l = &sh.opts.lsr_latest;
                        (
                            l.long_short_ratio.clone(),
                            l.long_account.clone(),
                            l.short_account.clone(),
                        )
                    } else {
                        let mut h = fastrand::Rng::with_seed(
                            sh.opts.seed ^ at ^ salt ^ sym.bytes().map(u64::from).sum::<u64>(),
                        );
                        let long = h.i64(4000..7500);
                        let short = 10_000 - long;
                        let ratio = (long * 10_000 + short / 2) / short;
                        (fixed(ratio, 4), fixed(long, 4), fixed(short, 4))
                    };
                    // The venue has sent the timestamp both as a number and as a string.
                    let stamp = if n % 2 == 0 {
                        at.to_string()
                    } else {
                        format!("\"{at}\"")
                    };
                    format!(
                        "{{\"symbol\":\"{sym}\",\"longAccount\":\"{long}\",\"longShortRatio\":\"{ratio}\",\"shortAccount\":\"{short}\",\"timestamp\":{stamp}}}"
                    )
                })
                .collect();
            ok(format!("[{}]", rows.join(",")))
        }
        _ => error(404, -1, "Not found."),
    }
}
