//! Sessions: one task per planned socket.
//!
//! Design: [`run`] owns the socket and drives two sans-I/O cores: the lifecycle ([`link::Link`])
//! and the venue's [`Protocol`] for that socket (subscriptions, book sync, normalisation). The
//! socket is created inside the loop body, so the old connection (and its permit) is dropped
//! before the next one asks for a permit; make-before-break rotation is the one exception and
//! only happens when the budget has a spare permit. REST work the protocol asks for runs in
//! tasks on the same executor and comes back through a bounded channel, so a slow snapshot
//! never stalls the reads (and the server's pings).
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
    /// A planned replacement (server shutdown notice, maintenance notice).
    Rotate,
    /// The protocol's own keepalive failed (a ping went unanswered): replace the socket now.
    Dead,
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
    /// The socket is up: forget per-connection state (books go unsynced) and queue subscriptions.
    fn on_connected(&mut self, now: Instant, io: &mut Io<'_>);
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
    /// Called about once a second: stale streams, keepalive.
    fn on_tick(&mut self, now: Instant, io: &mut Io<'_>) -> Control;
    /// The socket is gone.
    fn on_disconnected(&mut self);
    /// Outgoing frames allowed per second on this socket (the venue's incoming limit).
    fn send_rate(&self) -> (u32, Duration);
    /// Least time between two connection attempts of this socket (the venue's connection
    /// rate limit, e.g. OKX's 3 per second); zero when backoff alone is enough.
    fn min_connect_interval(&self) -> Duration {
        Duration::ZERO
    }
}

/// Waits until `interval` has passed since the previous connection attempt, then records this
/// one.
async fn pace(last: &mut Option<Instant>, interval: Duration) {
    if let Some(t) = *last {
        Timer::at(t + interval).await;
    }
    *last = Some(Instant::now());
}

/// Everything a session shares with the rest of the process.
#[derive(Clone)]
pub struct Shared {
    pub budget: Budget,
    pub tls: Arc<futures_rustls::rustls::ClientConfig>,
    pub rest: RestClient,
    pub limiters: rest::Limiters,
    pub executor: Arc<Executor<'static>>,
    pub metrics: Arc<Metrics>,
    pub session: SessionConfig,
    pub ws: WsOptions,
}

struct Handles {
    open: Gauge,
    connects_ok: Counter,
    connects_err: Counter,
    connects_timeout: Counter,
    connects_refused: Counter,
    disconnects: Counter,
    rotations: Counter,
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

/// A live socket and the gauge entry that counts it: both go together.
struct Live {
    conn: WsConn,
    _open: Counted,
    generation: u64,
}

impl Live {
    fn new(conn: WsConn, open: &Gauge, generation: u64) -> Self {
        open.inc();
        Live {
            conn,
            _open: Counted(open.clone()),
            generation,
        }
    }
}

/// How one connection's read loop ended.
enum Ended {
    Unplanned(EndReason),
    Rotate,
}

type RestDone = (u64, u64, Result<RestResponse, RestError>);

/// Runs one planned socket forever.
pub async fn run(
    exchange: Exchange,
    socket: &'static str,
    mut proto: Box<dyn Protocol>,
    mut publisher: Publisher,
    shared: Shared,
) -> Infallible {
    let h = Handles::new(&shared.metrics, exchange, socket);
    let timings = LinkTimings {
        backoff_min: shared.session.backoff_min(),
        backoff_max: shared.session.backoff_max(),
        stable_after: shared.session.stable_after.0,
        max_lifetime: shared.session.max_lifetime.0,
    };
    let purpose = format!("{exchange} {socket}");
    let (rest_tx, rest_rx) = smol::channel::bounded::<RestDone>(256);
    let mut rest_tasks: Vec<Task<()>> = Vec::new();
    let mut link = Link::new();
    let mut generation = 0u64;
    let mut next: Option<Live> = None;
    let mut send = Vec::new();
    let mut rest_reqs = Vec::new();
    let mut last_attempt: Option<Instant> = None;
    let connect_interval = proto.min_connect_interval();
    loop {
        let now = Instant::now();
        if let Link::Backoff { until, .. } = link {
            // Keep serving REST results for nothing: no socket, nothing to apply them to.
            Timer::at(until).await;
            link = link.backoff_elapsed(Instant::now());
            continue;
        }
        let mut live = match next.take() {
            Some(l) => l,
            None => {
                let permit = match shared.budget.try_acquire(PermitKind::WebSocket, &purpose) {
                    Ok(p) => p,
                    Err(_) => {
                        h.connects_refused.inc();
                        link = link.permit_refused(now, &timings, fastrand::f64());
                        continue;
                    }
                };
                link = link.permit_granted();
                pace(&mut last_attempt, connect_interval).await;
                match ws::connect(proto.url(), &shared.tls, permit, &shared.ws).await {
                    Ok(conn) => {
                        h.connects_ok.inc();
                        generation += 1;
                        Live::new(conn, &h.open, generation)
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
                }
            }
        };
        link = link.connected(Instant::now());
        tracing::info!(%exchange, socket, url = proto.url(), "connected");
        // Results of REST calls made for an older connection are stale: drop those tasks.
        rest_tasks.clear();
        while rest_rx.try_recv().is_ok() {}
        {
            let mut io = Io {
                send: &mut send,
                rest: &mut rest_reqs,
                publisher: &mut publisher,
            };
            proto.on_connected(Instant::now(), &mut io);
        }
        let ended = read_loop(
            &mut live,
            proto.as_mut(),
            &mut publisher,
            &shared,
            &h,
            &timings,
            link,
            (&rest_tx, &rest_rx),
            &mut rest_tasks,
            (&mut send, &mut rest_reqs),
        )
        .await;
        match ended {
            Ended::Unplanned(why) => {
                h.disconnects.inc();
                tracing::warn!(%exchange, socket, ?why, "connection ended");
                drop(live);
                proto.on_disconnected();
                link = link.ended(why, Instant::now(), &timings, fastrand::f64());
            }
            Ended::Rotate => {
                h.rotations.inc();
                link = link.rotate(Instant::now());
                // Make-before-break when a spare permit exists, else close first.
                let replacement = if shared.budget.spare() > 0 {
                    match shared.budget.try_acquire(PermitKind::WebSocket, &purpose) {
                        Ok(permit) => {
                            pace(&mut last_attempt, connect_interval).await;
                            ws::connect(proto.url(), &shared.tls, permit, &shared.ws)
                                .await
                                .ok()
                        }
                        Err(_) => None,
                    }
                } else {
                    None
                };
                h.disconnects.inc();
                let Live { conn, _open, .. } = live;
                conn.close().await;
                drop(_open);
                proto.on_disconnected();
                match replacement {
                    Some(conn) => {
                        tracing::info!(%exchange, socket, "rotated make-before-break");
                        h.connects_ok.inc();
                        generation += 1;
                        next = Some(Live::new(conn, &h.open, generation));
                        link = link.rotated(Instant::now());
                    }
                    None => {
                        tracing::info!(%exchange, socket, "rotating by reconnect");
                        link = link.rotate_by_reconnect();
                    }
                }
            }
        }
    }
}

enum Event {
    Frame(Option<Result<ws::Message, ws::WsError>>),
    Rest(RestDone),
    Tick,
}

#[allow(clippy::too_many_arguments)]
async fn read_loop(
    live: &mut Live,
    proto: &mut dyn Protocol,
    publisher: &mut Publisher,
    shared: &Shared,
    h: &Handles,
    timings: &LinkTimings,
    link: Link,
    (rest_tx, rest_rx): (
        &smol::channel::Sender<RestDone>,
        &smol::channel::Receiver<RestDone>,
    ),
    rest_tasks: &mut Vec<Task<()>>,
    (send, rest_reqs): (&mut Vec<String>, &mut Vec<RestRequest>),
) -> Ended {
    let idle = shared.session.idle_timeout.0;
    let (rate_n, rate_per) = proto.send_rate();
    let mut bucket = TokenBucket::new(rate_n, rate_per, Instant::now());
    let mut last_frame = Instant::now();
    let mut next_tick = Instant::now() + Duration::from_secs(1);
    // Rotation is spread by up to 1% of the lifetime so sockets don't all rotate together.
    let lifetime_jitter = timings.max_lifetime.mul_f64(fastrand::f64() / 100.0);
    let mut pending_send: usize = 0;
    loop {
        // Send what the protocol queued, within the venue's message rate.
        let now = Instant::now();
        while pending_send < send.len() {
            match bucket.take(now) {
                Ok(()) => {
                    if let Err(err) = live.conn.send_text(&send[pending_send]).await {
                        tracing::warn!(%err, "send failed");
                        return Ended::Unplanned(EndReason::Error);
                    }
                    pending_send += 1;
                }
                Err(wait) => {
                    next_tick = next_tick.min(now + wait);
                    break;
                }
            }
        }
        if pending_send == send.len() {
            send.clear();
            pending_send = 0;
        }
        for req in rest_reqs.drain(..) {
            let tx = rest_tx.clone();
            let client = shared.rest.clone();
            let limiter = shared.limiters.get(&req.base, req.limit);
            let generation = live.generation;
            rest_tasks.retain(|t| !t.is_finished());
            rest_tasks.push(shared.executor.spawn(async move {
                let tag = req.tag;
                let result = rest::execute(&client, &limiter, req).await;
                let _ = tx.send((generation, tag, result)).await;
            }));
        }
        let deadline = last_frame + idle;
        let event = async { Event::Frame(live.conn.next().await) }
            .or(async {
                match rest_rx.recv().await {
                    Ok(done) => Event::Rest(done),
                    Err(_) => std::future::pending().await,
                }
            })
            .or(async {
                Timer::at(next_tick.min(deadline)).await;
                Event::Tick
            })
            .await;
        let now = Instant::now();
        let mut io = Io {
            send,
            rest: rest_reqs,
            publisher,
        };
        match event {
            Event::Frame(None) => return Ended::Unplanned(EndReason::Closed),
            Event::Frame(Some(Err(err))) => {
                if err.is_oversized() {
                    h.frames[4].inc();
                    tracing::warn!(%err, "oversized frame; the venue must be reconnected");
                } else {
                    tracing::warn!(%err, "read failed");
                }
                return Ended::Unplanned(EndReason::Error);
            }
            Event::Frame(Some(Ok(msg))) => {
                last_frame = now;
                match msg {
                    ws::Message::Text(text) => {
                        let (kind, control) = proto.on_text(text.as_str(), now, &mut io);
                        h.frame(kind).inc();
                        match control {
                            Control::Continue => {}
                            Control::Rotate => return Ended::Rotate,
                            Control::Dead => return Ended::Unplanned(EndReason::Idle),
                        }
                    }
                    ws::Message::Binary(_) => {
                        h.frame(FrameKind::Unknown).inc();
                    }
                    ws::Message::Ping(_) => {
                        // The pong is queued by the WebSocket layer; it counts against the rate.
                        bucket.charge(now);
                        h.frame(FrameKind::Control).inc();
                        if let Err(err) = live.conn.flush().await {
                            tracing::warn!(%err, "pong failed");
                            return Ended::Unplanned(EndReason::Error);
                        }
                    }
                    ws::Message::Pong(_) | ws::Message::Frame(_) => {
                        h.frame(FrameKind::Control).inc();
                    }
                    ws::Message::Close(_) => {
                        return Ended::Unplanned(EndReason::Closed);
                    }
                }
            }
            Event::Rest((generation, tag, result)) => {
                if generation == live.generation {
                    proto.on_rest(tag, result, now, &mut io);
                }
            }
            Event::Tick => {
                if now >= deadline {
                    tracing::warn!(idle = ?idle, "no frame within the idle timeout; replacing the socket");
                    return Ended::Unplanned(EndReason::Idle);
                }
                if now >= next_tick {
                    next_tick = now + Duration::from_secs(1);
                    match proto.on_tick(now, &mut io) {
                        Control::Continue => {}
                        Control::Rotate => return Ended::Rotate,
                        Control::Dead => {
                            tracing::warn!(
                                "the venue did not answer its keepalive; replacing the socket"
                            );
                            return Ended::Unplanned(EndReason::Idle);
                        }
                    }
                    let rotate_at = timings.max_lifetime + lifetime_jitter;
                    if matches!(link, Link::Up { since, .. } if now.saturating_duration_since(since) >= rotate_at)
                    {
                        return Ended::Rotate;
                    }
                }
            }
        }
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
    fn connection_attempts_are_paced_by_the_venue_interval() {
        smol::block_on(async {
            let mut last = None;
            let interval = Duration::from_millis(60);
            let t0 = Instant::now();
            pace(&mut last, interval).await;
            assert!(t0.elapsed() < interval, "the first attempt does not wait");
            pace(&mut last, interval).await;
            pace(&mut last, interval).await;
            assert!(t0.elapsed() >= interval * 2, "{:?}", t0.elapsed());
            // No interval: never waits.
            let mut last = None;
            let t1 = Instant::now();
            for _ in 0..3 {
                pace(&mut last, Duration::ZERO).await;
            }
            assert!(t1.elapsed() < interval);
        });
    }
}
