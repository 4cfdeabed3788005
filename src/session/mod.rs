//! Sessions: one task per planned socket.
//!
//! Design: [`run`] owns the socket and drives two sans-I/O cores: the lifecycle ([`link::Link`])
//! and the venue's [`Protocol`] for that socket (subscriptions, book sync, normalisation). The
//! socket is created inside the loop body, so the old connection (and its permit) is dropped
//! before the next one asks for a permit; make-before-break rotation is the one exception and
//! only happens when the budget has a spare permit. REST work the protocol asks for runs in
//! tasks on the same executor and comes back through a bounded channel, so a slow snapshot
//! never stalls the reads (and the server's pings). The socket's plan comes through a
//! [`crate::watch`] ([`SessionPlan`]): a new one (symbols added or removed while the service
//! runs) is handed to the protocol ([`Protocol::reconfigure`]) and the publisher between two
//! frames, on the live socket.
//!
//! Owns: the read loop, timers (idle, lifetime, ticks), outgoing rate limiting, REST task
//! spawning. Must not touch: venue formats (the protocol owns them) or the upstream (messages
//! go to the protocol's `Publisher`).
//!
//! ## Cancel safety
//! [`run`] never returns; drop its task to stop it. Dropping it drops the socket, its permit
//! and every REST task it spawned.

pub mod backoff;
pub mod link;
pub mod poll;
pub mod rate;
pub mod rest;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use futures_util::future::Either;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use smol::{Executor, Task, Timer};

use crate::budget::{Budget, PermitKind};
use crate::config::SessionConfig;
use crate::metrics::{ConnectLabels, FrameLabels, Metrics, SocketLabels};
use crate::model::Exchange;
use crate::net::http::{RestClient, RestError, RestResponse};
use crate::net::ws::{self, WsConn, WsErrorExt, WsOptions};
use crate::upstream::Publisher;
use link::{EndReason, Link, LinkTimings};
use rate::TokenBucket;
use rest::RestRequest;

/// Turns of a session's loop between two yields to the other tasks of its thread. Without
/// them a saturating socket starves every task that shares its thread: with one executor
/// thread, the firehose bench's snapshot answers (REST on the same executor) waited seconds
/// and 0.082 books per diff were published; with them, 1.000.
const YIELD_EVERY: u32 = 64;
/// What a frame turned out to be (counted per socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Market data, parsed and handled.
    Data,
    /// Acknowledgements, pongs, notices.
    Control,
    /// Not valid JSON or not the shape the venue documents.
    Malformed,
    /// Valid, but an event or stream this socket did not ask for.
    Unknown,
}

/// What the protocol wants the runner to do after an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// The venue asked for a planned replacement (server shutdown notice, maintenance
    /// notice). Obeyed make-before-break, and never sooner than `[session] stable_after`
    /// after the connection was made.
    Rotate,
}

/// How the runner probes a silent socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A WebSocket ping; the venue answers with a pong (Binance).
    WsPing,
    /// A text frame the venue answers (OKX: `ping` → `pong`).
    Text(&'static str),
}

/// How a socket came up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connected {
    /// After start or a failure: every book starts over.
    Fresh,
    /// A planned replacement while the old socket still delivers: books stay verified (their
    /// update chains continue across sockets; duplicates are dropped by id), subscriptions are
    /// made again on the new socket.
    Rotation,
}

/// A venue's connection-attempt limit: at most `max` attempts in any `per`, shared by every
/// socket of the exchange in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectLimit {
    pub max: u32,
    pub per: Duration,
}

/// Side effects a protocol may request while handling an input.
pub struct Io<'a> {
    /// Text frames to send (rate-limited by the runner).
    pub send: &'a mut Vec<String>,
    /// REST requests to run.
    pub rest: &'a mut Vec<RestRequest>,
    pub publisher: &'a mut Publisher,
}

/// The venue's logic for one planned socket. Implementations are sans-I/O: they never block,
/// sleep or touch a socket.
pub trait Protocol: Send {
    /// The URL to connect to (may carry the streams, as Binance's combined streams do).
    fn url(&self) -> &str;
    /// A socket is up. `Fresh`: forget per-connection state (books go unsynced) and queue
    /// subscriptions. `Rotation`: queue subscriptions for the new socket, keep the books.
    fn on_connected(&mut self, now: Instant, io: &mut Io<'_>, how: Connected);
    /// The socket's plan changed while the service runs (symbols added or removed, the book
    /// depth): from now on stream indices are positions in `socket.streams`, as in the
    /// publisher, which follows the same plan. Queues what the venue must be told on the
    /// live socket (subscribe, unsubscribe) and creates or drops books; never opens a socket.
    /// Frames queued while no socket is up are dropped: the next connection subscribes from
    /// the plan.
    fn reconfigure(
        &mut self,
        socket: &crate::plan::SocketPlan,
        cfg: &crate::config::Config,
        now: Instant,
        io: &mut Io<'_>,
    );
    /// Whether every subscription of the newest socket is settled (acknowledged or given up):
    /// during a rotation the old socket is read until then.
    fn subscribed(&self) -> bool {
        true
    }
    /// One text frame.
    fn on_text(&mut self, text: &str, now: Instant, io: &mut Io<'_>) -> (FrameKind, Control);
    /// A REST request made through `Io::rest` finished.
    fn on_rest(
        &mut self,
        tag: u64,
        result: Result<RestResponse, RestError>,
        now: Instant,
        io: &mut Io<'_>,
    );
    /// Called about once a second: stale streams, subscription deadlines, snapshot retries.
    fn on_tick(&mut self, now: Instant, io: &mut Io<'_>) -> Control;
    /// The socket is gone (not called when a rotation replaced it).
    fn on_disconnected(&mut self);
    /// Called while no socket is up (before each wait for a backoff or a connection): time
    /// passes for the books' health (`marketbox_book_unverified_seconds_total` keeps counting
    /// while the venue cannot be reached).
    fn on_idle(&mut self, _now: Instant) {}
    /// Outgoing frames allowed per second on this socket (the venue's incoming limit).
    fn send_rate(&self) -> (u32, Duration);
    /// How to ask a silent socket whether it is alive.
    fn probe(&self) -> Probe {
        Probe::WsPing
    }
    /// Longest silence the venue tolerates before it closes the socket itself (OKX: 30 s):
    /// the runner probes before it.
    fn max_silence(&self) -> Option<Duration> {
        None
    }
    /// The venue's connection-attempt limit.
    fn connect_limit(&self) -> ConnectLimit;
}

/// Most frames a socket's send queue holds; more are dropped and counted (protocols batch
/// and dedupe, so reaching this means something is wrong, not that data is lost).
pub const MAX_SEND_QUEUE: usize = 256;
/// Longest a rotation keeps reading the old socket while the new one subscribes.
pub const MAX_OVERLAP: Duration = Duration::from_secs(10);
/// Shortest: frames already on their way on the old socket are read, not thrown away with it
/// (the new socket's copies of the same events are dropped by id).
pub const MIN_OVERLAP: Duration = Duration::from_secs(1);

/// One exchange's connection-attempt window.
type Window = Arc<std::sync::Mutex<rate::SlidingWindow>>;

/// Every exchange's connection-attempt window, shared by its sockets.
#[derive(Clone, Default)]
pub struct ConnectLimits {
    map: Arc<std::sync::Mutex<Vec<(Exchange, Window)>>>,
}

impl ConnectLimits {
    fn get(&self, exchange: Exchange, limit: ConnectLimit) -> Window {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, w)) = map.iter().find(|(e, _)| *e == exchange) {
            return w.clone();
        }
        let w = Arc::new(std::sync::Mutex::new(rate::SlidingWindow::new(
            limit.max, limit.per,
        )));
        map.push((exchange, w.clone()));
        w
    }
}

/// Waits until the venue's connection limit allows one more attempt, and records it.
async fn pace(window: &std::sync::Mutex<rate::SlidingWindow>) {
    loop {
        let wait = {
            let mut w = window.lock().unwrap_or_else(|e| e.into_inner());
            match w.try_take(Instant::now()) {
                Ok(()) => return,
                Err(wait) => wait,
            }
        };
        Timer::after(wait.max(Duration::from_millis(1))).await;
    }
}

/// What a session runs: its socket's plan, the config, and the publisher whose streams are
/// the plan's. The service replaces it through a [`crate::watch`] when the plan changes while
/// it runs (the console's `apply`); the session takes the new one without reconnecting.
#[derive(Clone)]
pub struct SessionPlan {
    pub socket: crate::plan::SocketPlan,
    pub config: Arc<crate::config::Config>,
    /// The publisher a session's own follows ([`Publisher::follow`]), already retargeted to
    /// `socket`'s streams.
    pub template: Arc<std::sync::Mutex<Publisher>>,
}

impl SessionPlan {
    /// Makes `proto` and `publisher` follow this plan; what must be sent goes to `io_send`.
    fn take(
        &self,
        proto: &mut dyn Protocol,
        publisher: &mut Publisher,
        send: &mut Vec<String>,
        rest: &mut Vec<RestRequest>,
    ) {
        publisher.follow(&self.template.lock().unwrap_or_else(|e| e.into_inner()));
        let mut io = Io {
            send,
            rest,
            publisher,
        };
        proto.reconfigure(&self.socket, &self.config, Instant::now(), &mut io);
    }
}

/// Everything a session shares with the rest of the process.
#[derive(Clone)]
pub struct Shared {
    pub budget: Budget,
    pub tls: Arc<futures_rustls::rustls::ClientConfig>,
    pub rest: RestClient,
    pub limiters: rest::Limiters,
    pub connect_limits: ConnectLimits,
    pub executor: Arc<Executor<'static>>,
    pub metrics: Arc<Metrics>,
    pub session: SessionConfig,
    pub ws: WsOptions,
    /// Where each session's loop shows it is alive (`/health`).
    pub liveness: crate::metrics::health::Liveness,
}

struct Handles {
    open: Gauge,
    connects_ok: Counter,
    connects_err: Counter,
    connects_timeout: Counter,
    connects_refused: Counter,
    disconnects: Counter,
    rotations: Counter,
    rotation_deferred: Counter,
    send_queue: Gauge,
    send_dropped: Counter,
    frames: [Counter; 5],
}

impl Handles {
    fn new(m: &Metrics, exchange: Exchange, socket: &str) -> Self {
        let sl = SocketLabels {
            exchange,
            socket: socket.to_owned(),
        };
        let connect = |result| {
            m.connects
                .get_or_create(&ConnectLabels {
                    exchange,
                    socket: socket.to_owned(),
                    result,
                })
                .clone()
        };
        let frame = |kind| {
            m.frames
                .get_or_create(&FrameLabels {
                    exchange,
                    socket: socket.to_owned(),
                    kind,
                })
                .clone()
        };
        Handles {
            open: m.ws_connections.get_or_create(&sl).clone(),
            connects_ok: connect("ok"),
            connects_err: connect("error"),
            connects_timeout: connect("timeout"),
            connects_refused: connect("refused_by_budget"),
            disconnects: m.disconnects.get_or_create(&sl).clone(),
            rotations: m.rotations.get_or_create(&sl).clone(),
            rotation_deferred: m.rotation_deferred.get_or_create(&sl).clone(),
            send_queue: m.send_queue.get_or_create(&sl).clone(),
            send_dropped: m.send_dropped.get_or_create(&sl).clone(),
            frames: [
                frame("data"),
                frame("control"),
                frame("malformed"),
                frame("unknown"),
                frame("oversized"),
            ],
        }
    }

    fn frame(&self, kind: FrameKind) -> &Counter {
        match kind {
            FrameKind::Data => &self.frames[0],
            FrameKind::Control => &self.frames[1],
            FrameKind::Malformed => &self.frames[2],
            FrameKind::Unknown => &self.frames[3],
        }
    }
}

/// Counts one open socket for as long as it lives.
struct Counted(Gauge);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A live socket, the gauge entry that counts it, and what the runner knows of its health.
struct Live {
    conn: WsConn,
    _open: Counted,
    /// The last frame that proves the venue is there: anything but its own pings (a venue
    /// that only pings proves nothing about its streams or our direction).
    alive_at: Instant,
    /// A probe is out since then.
    probe_sent: Option<Instant>,
}

impl Live {
    fn new(conn: WsConn, open: &Gauge, now: Instant) -> Self {
        open.inc();
        Live {
            conn,
            _open: Counted(open.clone()),
            alive_at: now,
            probe_sent: None,
        }
    }

    /// Closes the socket in the background (bounded by the close timeout); the gauge and
    /// the permit go when it is closed.
    fn close_detached(self, executor: &Executor<'static>) {
        executor
            .spawn(async move {
                let Live { conn, _open, .. } = self;
                conn.close().await;
                drop(_open);
            })
            .detach();
    }
}

/// How one connection's read loop ended.
enum Ended {
    /// Closed, failed, silent or not reading: reconnect after backoff.
    Unplanned(EndReason),
    /// A planned replacement without a spare permit: close first, then reconnect at once.
    RotateByReconnect,
}

type RestDone = (u64, u64, Result<RestResponse, RestError>);

/// The pending outgoing frames of the current socket.
struct SendQueue {
    frames: Vec<String>,
    next: usize,
}

impl SendQueue {
    fn clear(&mut self) {
        self.frames.clear();
        self.next = 0;
    }

    fn pending(&self) -> usize {
        self.frames.len() - self.next
    }

    /// Drops what the protocol queued beyond [`MAX_SEND_QUEUE`]; returns how many.
    fn bound(&mut self) -> usize {
        let over = self.pending().saturating_sub(MAX_SEND_QUEUE);
        if over > 0 {
            let end = self.frames.len() - over;
            self.frames.truncate(end);
        }
        over
    }
}

/// Runs one planned socket forever.
pub async fn run(
    exchange: Exchange,
    socket: &'static str,
    mut proto: Box<dyn Protocol>,
    mut publisher: Publisher,
    shared: Shared,
    mut plan: crate::watch::Receiver<SessionPlan>,
) -> Infallible {
    let h = Handles::new(&shared.metrics, exchange, socket);
    let timings = LinkTimings {
        backoff_min: shared.session.backoff_min(),
        backoff_max: shared.session.backoff_max(),
        stable_after: shared.session.stable_after.0,
        max_lifetime: shared.session.max_lifetime.0,
    };
    let purpose = format!("{exchange} {socket}");
    // The loop beats at least once a second while connected and before every wait; a wait
    // is at most a backoff, a connect or an idle timeout.
    let s = &shared.session;
    let beat = shared.liveness.register(
        format!("session {exchange} {socket}"),
        s.idle_timeout.0 + s.connect_timeout.0 + s.backoff_max() + Duration::from_secs(10),
    );
    let window = shared.connect_limits.get(exchange, proto.connect_limit());
    let (rest_tx, rest_rx) = smol::channel::bounded::<RestDone>(256);
    let mut rest_tasks: Vec<Task<()>> = Vec::new();
    let mut link = Link::new();
    let mut generation = 0u64;
    let mut queue = SendQueue {
        frames: Vec::new(),
        next: 0,
    };
    let mut rest_reqs = Vec::new();
    // The upstream is woken once per burst of frames, before the loop waits (`read_loop`).
    publisher.defer_wakes();
    loop {
        publisher.flush();
        beat.beat();
        if let Some(p) = plan.try_changed() {
            // Not connected: the next connection subscribes from the new plan.
            let (mut send, mut rest) = (Vec::new(), Vec::new());
            p.take(proto.as_mut(), &mut publisher, &mut send, &mut rest);
        }
        proto.on_idle(Instant::now());
        if let Link::Backoff { until, .. } = link {
            Timer::at(until).await;
            link = link.backoff_elapsed(Instant::now());
            continue;
        }
        let permit = match shared.budget.try_acquire(PermitKind::WebSocket, &purpose) {
            Ok(p) => p,
            Err(_) => {
                h.connects_refused.inc();
                link = link.permit_refused(Instant::now(), &timings, fastrand::f64());
                continue;
            }
        };
        link = link.permit_granted();
        pace(&window).await;
        let mut live = match ws::connect(proto.url(), &shared.tls, permit, &shared.ws).await {
            Ok(conn) => {
                h.connects_ok.inc();
                generation += 1;
                Live::new(conn, &h.open, Instant::now())
            }
            Err(err) => {
                if err.is_timeout() {
                    h.connects_timeout.inc();
                } else {
                    h.connects_err.inc();
                }
                tracing::warn!(%exchange, socket, %err, "connect failed");
                link = link.connect_failed(Instant::now(), &timings, fastrand::f64());
                continue;
            }
        };
        link = link.connected(Instant::now());
        tracing::info!(%exchange, socket, url = proto.url(), "connected");
        // REST results and frames queued for an older connection are stale.
        rest_tasks.clear();
        while rest_rx.try_recv().is_ok() {}
        queue.clear();
        {
            let mut io = Io {
                send: &mut queue.frames,
                rest: &mut rest_reqs,
                publisher: &mut publisher,
            };
            proto.on_connected(Instant::now(), &mut io, Connected::Fresh);
        }
        let mut runner = Runner {
            exchange,
            socket,
            proto: proto.as_mut(),
            publisher: &mut publisher,
            shared: &shared,
            h: &h,
            timings: &timings,
            window: &window,
            purpose: &purpose,
            rest: (&rest_tx, &rest_rx),
            rest_tasks: &mut rest_tasks,
            queue: &mut queue,
            rest_reqs: &mut rest_reqs,
            generation,
            beat: &beat,
            plan: &mut plan,
        };
        let (ended, last_link) = runner.read_loop(&mut live, link).await;
        publisher.flush();
        link = last_link;
        h.disconnects.inc();
        match ended {
            Ended::Unplanned(why) => {
                tracing::warn!(%exchange, socket, ?why, "connection ended");
                drop(live);
                proto.on_disconnected();
                link = link.ended(why, Instant::now(), &timings, fastrand::f64());
            }
            Ended::RotateByReconnect => {
                h.rotations.inc();
                tracing::info!(%exchange, socket, "rotating by reconnect (no spare permit)");
                let Live { conn, _open, .. } = live;
                conn.close().await;
                drop(_open);
                proto.on_disconnected();
                link = link.rotate_by_reconnect();
            }
        }
    }
}

enum Event {
    Frame(Option<Result<ws::Message, ws::WsError>>),
    OldFrame(Option<Result<ws::Message, ws::WsError>>),
    Replacement(Box<Result<WsConn, ws::ConnectError>>),
    Rest(RestDone),
    Plan(SessionPlan),
    Tick,
}

type Connecting =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<WsConn, ws::ConnectError>> + Send>>;

/// The read loop of one connection (and of its replacement during a rotation).
struct Runner<'a> {
    exchange: Exchange,
    socket: &'static str,
    proto: &'a mut dyn Protocol,
    publisher: &'a mut Publisher,
    shared: &'a Shared,
    h: &'a Handles,
    timings: &'a LinkTimings,
    window: &'a Window,
    purpose: &'a str,
    rest: (
        &'a smol::channel::Sender<RestDone>,
        &'a smol::channel::Receiver<RestDone>,
    ),
    rest_tasks: &'a mut Vec<Task<()>>,
    queue: &'a mut SendQueue,
    rest_reqs: &'a mut Vec<RestRequest>,
    generation: u64,
    beat: &'a crate::metrics::health::Heartbeat,
    plan: &'a mut crate::watch::Receiver<SessionPlan>,
}

impl Runner<'_> {
    /// Serves `live` until it must be replaced by a reconnect. Planned replacements with a
    /// spare permit happen inside: the new socket is connected and subscribed while the old
    /// one is still read, then the old one is closed. Returns how it ended and the lifecycle
    /// state at that moment.
    async fn read_loop(&mut self, live: &mut Live, mut link: Link) -> (Ended, Link) {
        let idle = self.shared.session.idle_timeout.0;
        let probe_after = self
            .proto
            .max_silence()
            .map_or(idle / 2, |m| m.min(idle / 2));
        let (rate_n, rate_per) = self.proto.send_rate();
        let mut bucket = TokenBucket::new(rate_n, rate_per, Instant::now());
        let mut next_tick = Instant::now() + Duration::from_secs(1);
        // Rotation is spread by up to 1% of the lifetime so sockets don't all rotate together.
        let lifetime_jitter = self.timings.max_lifetime.mul_f64(fastrand::f64() / 100.0);
        // A rotation the venue asked for, postponed until the connection is stable.
        let mut rotate_at: Option<Instant> = None;
        let mut connecting: Option<Connecting> = None;
        let mut old: Option<(Live, Instant)> = None;
        let mut logged_drop = false;
        let mut turn = false;
        let mut since_yield = 0u32;
        loop {
            // The upstream is more than a MiB behind: the venue's bytes wait in the socket's
            // kernel buffer (its TCP window) for at most `ROOM_WAIT`, not in new spool pages.
            if self.publisher.backlogged() {
                self.publisher.wait_for_room().await;
            }
            // Sessions share the executor's threads, which do not preempt: one whose socket is
            // never empty lets the other tasks (sessions, REST connections, the console) run
            // every `YIELD_EVERY` turns.
            since_yield += 1;
            if since_yield >= YIELD_EVERY {
                since_yield = 0;
                futures_lite::future::yield_now().await;
            }
            let now = Instant::now();
            let probe_due = live.probe_sent.is_none()
                && now.saturating_duration_since(live.alive_at) >= probe_after;
            // A send may wait: what was published goes upstream first.
            if probe_due || self.queue.pending() > 0 {
                self.publisher.flush();
            }
            // A probe goes first, within the venue's message rate.
            if probe_due && bucket.take(now).is_ok() {
                let sent = match self.proto.probe() {
                    Probe::WsPing => live.conn.send_ping(Vec::new()).await,
                    Probe::Text(t) => live.conn.send_text(t).await,
                };
                if let Err(err) = sent {
                    tracing::warn!(exchange = %self.exchange, socket = self.socket, %err, "probe failed");
                    return (Ended::Unplanned(EndReason::Error), link);
                }
                live.probe_sent = Some(now);
            }
            // Then what the protocol queued, within the venue's message rate.
            let dropped = self.queue.bound();
            if dropped > 0 {
                self.h.send_dropped.inc_by(dropped as u64);
                if !logged_drop {
                    logged_drop = true;
                    tracing::warn!(exchange = %self.exchange, socket = self.socket, dropped, "send queue full; frames dropped (further drops are only counted)");
                }
            }
            while self.queue.pending() > 0 {
                match bucket.take(now) {
                    Ok(()) => {
                        let frame = &self.queue.frames[self.queue.next];
                        if let Err(err) = live.conn.send_text(frame).await {
                            tracing::warn!(exchange = %self.exchange, socket = self.socket, %err, "send failed; replacing the socket");
                            return (Ended::Unplanned(EndReason::Error), link);
                        }
                        self.queue.next += 1;
                    }
                    Err(wait) => {
                        next_tick = next_tick.min(crate::time::after(now, wait));
                        break;
                    }
                }
            }
            if self.queue.pending() == 0 {
                self.queue.clear();
            }
            self.h.send_queue.set(self.queue.pending() as i64);
            self.spawn_rest();
            let dead_at = crate::time::after(live.alive_at, idle);
            let probe_at = crate::time::after(live.alive_at, probe_after);
            let mut wake = next_tick.min(dead_at);
            if live.probe_sent.is_none() {
                wake = wake.min(probe_at);
            }
            if let Some(t) = rotate_at {
                wake = wake.min(t);
            }
            // A socket that always has a frame ready must not starve the rest: REST answers,
            // due timers and plan changes are taken before the sockets are polled, the replacement's
            // handshake is polled first, and the two sockets of a rotation take turns.
            turn = !turn;
            let event = if let Ok(done) = self.rest.1.try_recv() {
                Event::Rest(done)
            } else if now >= wake {
                // A plan change waits at most for the next tick.
                match self.plan.try_changed() {
                    Some(p) => Event::Plan(p),
                    None => Event::Tick,
                }
            } else {
                let (cur, old_conn, conn_fut, rx, plan, publisher) = (
                    &mut live.conn,
                    old.as_mut(),
                    connecting.as_mut(),
                    self.rest.1,
                    &mut *self.plan,
                    &mut *self.publisher,
                );
                let cur_next = async { Event::Frame(cur.next().await) };
                let old_next = async {
                    match old_conn {
                        Some((o, _)) => Event::OldFrame(o.conn.next().await),
                        None => std::future::pending().await,
                    }
                };
                let frames = if turn {
                    Either::Left(cur_next.or(old_next))
                } else {
                    Either::Right(old_next.or(cur_next))
                };
                async {
                    match conn_fut {
                        Some(f) => Event::Replacement(Box::new(f.await)),
                        None => std::future::pending().await,
                    }
                }
                .or(frames)
                .or(async {
                    match rx.recv().await {
                        Ok(done) => Event::Rest(done),
                        Err(_) => std::future::pending().await,
                    }
                })
                .or(async { Event::Plan(plan.changed().await) })
                .or(async {
                    Timer::at(wake).await;
                    Event::Tick
                })
                .or(async {
                    // Polled only when nothing above is ready: the loop is about to wait,
                    // so the burst it published goes upstream now.
                    publisher.flush();
                    std::future::pending().await
                })
                .await
            };
            let now = Instant::now();
            let mut io = Io {
                send: &mut self.queue.frames,
                rest: self.rest_reqs,
                publisher: self.publisher,
            };
            let control = match event {
                Event::Frame(None) => return (Ended::Unplanned(EndReason::Closed), link),
                Event::Frame(Some(Err(err))) => {
                    if err.is_oversized() {
                        self.h.frames[4].inc();
                        tracing::warn!(exchange = %self.exchange, socket = self.socket, %err, "oversized frame; the venue must be reconnected");
                    } else {
                        tracing::warn!(exchange = %self.exchange, socket = self.socket, %err, "read failed");
                    }
                    return (Ended::Unplanned(EndReason::Error), link);
                }
                Event::Frame(Some(Ok(msg))) => {
                    match handle_message(msg, &mut *self.proto, self.h, &mut bucket, now, &mut io) {
                        Handled::Alive(control) => {
                            live.alive_at = now;
                            live.probe_sent = None;
                            control
                        }
                        Handled::Ping => {
                            io.publisher.flush();
                            if let Err(err) = live.conn.flush().await {
                                tracing::warn!(exchange = %self.exchange, socket = self.socket, %err, "pong failed");
                                return (Ended::Unplanned(EndReason::Error), link);
                            }
                            Control::Continue
                        }
                        Handled::Closed => return (Ended::Unplanned(EndReason::Closed), link),
                    }
                }
                Event::OldFrame(frame) => {
                    // The socket being replaced: its data still counts (duplicates of the
                    // new socket's are dropped by id); its requests to rotate do not.
                    let ended = match frame {
                        Some(Ok(msg)) => {
                            let handled = handle_message(
                                msg,
                                &mut *self.proto,
                                self.h,
                                &mut bucket,
                                now,
                                &mut io,
                            );
                            if let (Handled::Ping, Some((o, _))) = (&handled, old.as_mut()) {
                                io.publisher.flush();
                                let _ = o.conn.flush().await;
                            }
                            matches!(handled, Handled::Closed)
                        }
                        _ => true,
                    };
                    if ended && let Some((o, _)) = old.take() {
                        o.close_detached(&self.shared.executor);
                    }
                    Control::Continue
                }
                Event::Replacement(result) => {
                    connecting = None;
                    match *result {
                        Ok(conn) => {
                            self.h.connects_ok.inc();
                            self.h.rotations.inc();
                            tracing::info!(exchange = %self.exchange, socket = self.socket, "replacement connected; reading both until it is subscribed");
                            let fresh = Live::new(conn, &self.h.open, now);
                            let previous = std::mem::replace(live, fresh);
                            old = Some((previous, now));
                            link = link.rotated(now);
                            rotate_at = None;
                            self.queue.clear();
                            let mut io = Io {
                                send: &mut self.queue.frames,
                                rest: self.rest_reqs,
                                publisher: self.publisher,
                            };
                            self.proto.on_connected(now, &mut io, Connected::Rotation);
                            bucket = TokenBucket::new(rate_n, rate_per, now);
                        }
                        Err(err) => {
                            if err.is_timeout() {
                                self.h.connects_timeout.inc();
                            } else {
                                self.h.connects_err.inc();
                            }
                            tracing::warn!(exchange = %self.exchange, socket = self.socket, %err, "replacement failed to connect; the current socket stays");
                            link = link.rotation_failed();
                            rotate_at = Some(crate::time::after(now, self.timings.backoff_max));
                        }
                    }
                    Control::Continue
                }
                Event::Rest((generation, tag, result)) => {
                    if generation == self.generation {
                        self.proto.on_rest(tag, result, now, &mut io);
                    }
                    Control::Continue
                }
                Event::Plan(p) => {
                    tracing::info!(exchange = %self.exchange, socket = self.socket, streams = p.socket.streams.len(), "the plan changed; reconfiguring the live socket");
                    p.take(
                        &mut *self.proto,
                        self.publisher,
                        &mut self.queue.frames,
                        self.rest_reqs,
                    );
                    Control::Continue
                }
                Event::Tick => {
                    if now >= dead_at {
                        tracing::warn!(exchange = %self.exchange, socket = self.socket, silent = ?idle, "the socket went silent (probe unanswered); replacing it");
                        return (Ended::Unplanned(EndReason::Idle), link);
                    }
                    let mut control = Control::Continue;
                    if now >= next_tick {
                        self.beat.beat();
                        next_tick = now + Duration::from_secs(1);
                        control = self.proto.on_tick(now, &mut io);
                        let rotate_after = self.timings.max_lifetime + lifetime_jitter;
                        if matches!(link, Link::Up { since, .. } if now.saturating_duration_since(since) >= rotate_after)
                        {
                            control = Control::Rotate;
                        }
                    }
                    if rotate_at.is_some_and(|t| now >= t) {
                        rotate_at = None;
                        control = Control::Rotate;
                    }
                    control
                }
            };
            // A finished overlap: the replacement is subscribed (or it took too long).
            if let Some((_, since)) = &old
                && ((self.proto.subscribed()
                    && now.saturating_duration_since(*since) >= MIN_OVERLAP)
                    || now.saturating_duration_since(*since) >= MAX_OVERLAP)
                && let Some((o, _)) = old.take()
            {
                tracing::info!(exchange = %self.exchange, socket = self.socket, "rotated make-before-break");
                self.h.disconnects.inc();
                o.close_detached(&self.shared.executor);
            }
            if control == Control::Rotate && connecting.is_none() && old.is_none() {
                let Link::Up { since, .. } = link else {
                    continue;
                };
                let stable = crate::time::after(since, self.timings.stable_after);
                if now < stable {
                    // Obeying at once would let a venue that asks on every connect make a
                    // reconnect storm; the socket is used until it is stable.
                    if rotate_at.is_none() {
                        self.h.rotation_deferred.inc();
                        tracing::info!(exchange = %self.exchange, socket = self.socket, at = ?stable.saturating_duration_since(now), "the venue asked to reconnect this young socket; postponed");
                        rotate_at = Some(stable);
                    }
                    continue;
                }
                match self.start_replacement() {
                    Some(fut) => {
                        connecting = Some(fut);
                        link = link.rotate(now);
                    }
                    None => return (Ended::RotateByReconnect, link),
                }
            }
        }
    }

    /// The replacement's connect, when a spare permit exists.
    fn start_replacement(&self) -> Option<Connecting> {
        if self.shared.budget.spare() == 0 {
            return None;
        }
        let permit = self
            .shared
            .budget
            .try_acquire(PermitKind::WebSocket, self.purpose)
            .ok()?;
        let (url, tls, opts, window) = (
            self.proto.url().to_owned(),
            self.shared.tls.clone(),
            self.shared.ws.clone(),
            self.window.clone(),
        );
        Some(Box::pin(async move {
            pace(&window).await;
            ws::connect(&url, &tls, permit, &opts).await
        }))
    }

    /// Starts the REST requests the protocol queued.
    fn spawn_rest(&mut self) {
        for req in self.rest_reqs.drain(..) {
            let tx = self.rest.0.clone();
            let client = self.shared.rest.clone();
            let limiter = self.shared.limiters.get(&req.base, req.limit);
            let generation = self.generation;
            self.rest_tasks.retain(|t| !t.is_finished());
            self.rest_tasks.push(self.shared.executor.spawn(async move {
                let tag = req.tag;
                let result = std::panic::AssertUnwindSafe(rest::execute(&client, &limiter, req))
                    .catch_unwind()
                    .await
                    .unwrap_or(Err(RestError::Panicked));
                let _ = tx.send((generation, tag, result)).await;
            }));
        }
    }
}

/// What a message from the venue was.
enum Handled {
    /// Proof of life (data, control, a pong), with what the protocol wants next.
    Alive(Control),
    /// The venue's own ping: answered (flush the pong), proves nothing.
    Ping,
    /// A close frame.
    Closed,
}

fn handle_message(
    msg: ws::Message,
    proto: &mut dyn Protocol,
    h: &Handles,
    bucket: &mut TokenBucket,
    now: Instant,
    io: &mut Io<'_>,
) -> Handled {
    match msg {
        ws::Message::Text(text) => {
            let (kind, control) = proto.on_text(text.as_str(), now, io);
            h.frame(kind).inc();
            Handled::Alive(control)
        }
        ws::Message::Binary(_) => {
            h.frame(FrameKind::Unknown).inc();
            Handled::Alive(Control::Continue)
        }
        ws::Message::Ping(_) => {
            // The pong is queued by the WebSocket layer; it counts against the rate.
            bucket.charge(now);
            h.frame(FrameKind::Control).inc();
            Handled::Ping
        }
        ws::Message::Pong(_) | ws::Message::Frame(_) => {
            h.frame(FrameKind::Control).inc();
            Handled::Alive(Control::Continue)
        }
        ws::Message::Close(_) => Handled::Closed,
    }
}

/// Limits the REST hosts share.
pub use rest::Limiters as RestLimiters;

/// Helper for protocols: a stable id for REST requests.
pub fn rest_tag(stream: usize, kind: u8) -> u64 {
    ((stream as u64) << 8) | u64::from(kind)
}

/// Splits a tag made by [`rest_tag`].
pub fn split_tag(tag: u64) -> (usize, u8) {
    ((tag >> 8) as usize, (tag & 0xff) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_send_queue_drops_the_newest_frames_and_says_how_many() {
        let mut q = SendQueue {
            frames: (0..MAX_SEND_QUEUE + 5).map(|i| i.to_string()).collect(),
            next: 0,
        };
        // TC0: the frames beyond the bound go; the oldest (already promised) stay.
        assert_eq!(q.bound(), 5);
        assert_eq!(q.pending(), MAX_SEND_QUEUE);
        assert_eq!(q.frames.last().map(String::as_str), Some("255"));
        // TC1: sent frames do not count against the bound.
        q.next = 10;
        q.frames.push("x".into());
        assert_eq!(q.bound(), 0);
        q.clear();
        assert_eq!(q.pending(), 0);
    }
}
