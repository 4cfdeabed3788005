//! The running service: wires config → plan → budget → sessions → spool → upstream.
//!
//! Owns: start-up order (plan checked against the budget before anything connects), the
//! executor, and the tasks of sessions and the upstream. Dropping [`App`] stops everything
//! (sessions drop their sockets and permits).
//!
//! Observability is started in two steps: [`App::start`] builds what `/health` and `/ready`
//! read (the plan gauges, the readiness checks of every planned stream, the executor's
//! heartbeat), and [`App::serve`] opens the `[metrics] listen` server and starts the
//! `[metrics.push]` loop, as [`run`] does.
//!
//! Live changes (the console's `apply`) go through [`Control`]: each session runs from a
//! [`SessionPlan`] it watches, so a symbol added to or removed from a planned socket is a new
//! plan for that socket (subscribed on the live connection; never a new socket), with its
//! pollers, `/ready` checks and metric series following; a broker upstream's settings go to
//! the upstream alone, which reconnects. What the running service cannot change (a new
//! socket, timings read at start, the budget) is reported for a restart, which [`run`] does
//! by returning [`Stopped::Restart`] after draining the spool (the binary then re-executes).
//! SIGTERM (the init system stopping the box) and SIGINT (Ctrl-C) stop it the same way,
//! returning [`Stopped::Signal`]: the caller exits 0.
//!
//! Must not touch: venue formats (venue code builds each socket's protocol) or socket I/O.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use smol::{Executor, Task, Timer};

use crate::budget::Budget;
use crate::config::{Config, UpstreamKind};
use crate::metrics::health::{Liveness, Readiness, freshness};
use crate::metrics::http::{Endpoints, ListenError, Server};
use crate::metrics::push::{self, PushSetupError};
use crate::metrics::{Metrics, SocketLabels, StreamLabels, TaskLabels};
use crate::net::http::RestClient;
use crate::net::tls;
use crate::net::ws::WsOptions;
use crate::plan::{Plan, PlanExceedsBudget};
use crate::session::poll::PollerSpec;
use crate::session::{self, SessionPlan, Shared};
use crate::upstream::spool::{Spool, SpoolError, SpoolMetrics};
use crate::upstream::{Publisher, StreamKey};
use crate::venue::{self, PlanError};

/// Why the service refused to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the config cannot be planned: {0}")]
    Plan(#[from] PlanError),
    #[error("{0}")]
    Budget(#[from] PlanExceedsBudget),
    #[error("TLS set-up failed: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    Spool(#[from] SpoolError),
    #[error("{0}")]
    Listen(#[from] ListenError),
    #[error("{0}")]
    Push(#[from] PushSetupError),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("the upstream settings cannot be used: {0}")]
    UpstreamSettings(String),
    #[error("cannot handle SIGTERM and SIGINT: {0}")]
    Signals(std::io::Error),
}

/// The plan of a config, checked against its budget: what `check-config` prints and what
/// the service and the console's `apply` refuse to run without.
pub fn check_plan(cfg: &Config) -> Result<Plan, StartError> {
    let plan = venue::plan(cfg)?;
    plan.check(cfg.budget.max_connections.0)?;
    Ok(plan)
}

/// The executor's heartbeat: a task that beats every second; `/health` calls the executor
/// stuck after this long without one.
pub const EXECUTOR_STUCK_AFTER: Duration = Duration::from_secs(10);

/// A running marketbox.
pub struct App {
    /// The plan the service started with (the console may change it since: [`Control`]).
    pub plan: Plan,
    pub metrics: Arc<Metrics>,
    pub budget: Budget,
    pub spool: Spool,
    pub rest: RestClient,
    /// The heartbeats `/health` checks; loops register here.
    pub liveness: Liveness,
    /// Changes the running service (the console's `apply`).
    pub control: Arc<Control>,
    endpoints: Arc<Endpoints>,
    http: Option<Server>,
    tasks: Vec<Task<()>>,
}

/// One planned socket's session: its plan (replaced to reconfigure it live) and its task.
struct Slot {
    exchange: crate::model::Exchange,
    name: crate::plan::SocketName,
    plan: crate::watch::Sender<SessionPlan>,
    _task: Task<()>,
}

/// One REST poller and its task.
struct Poller {
    spec: PollerSpec,
    _task: Task<()>,
}

/// What starting a session or a poller needs.
struct Parts {
    executor: Arc<Executor<'static>>,
    metrics: Arc<Metrics>,
    spool: Spool,
    shared: Shared,
    liveness: Liveness,
}

/// The part of the service the console changes while it runs: sessions, pollers, what
/// `/ready` checks.
struct Runtime {
    config: Arc<Config>,
    plan: Plan,
    slots: Vec<Slot>,
    pollers: Vec<Poller>,
    readiness: Arc<Readiness>,
    parts: Parts,
    /// The broker upstream, when one runs.
    upstream: Option<crate::upstream::UpstreamControl>,
}

/// What `apply` did with each changed key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Keys in effect now, without a restart.
    pub live: Vec<String>,
    /// Keys the running service cannot change: they take effect at the next start.
    pub restart: Vec<String>,
    /// Sockets that took new streams or dropped some (subscribed on the live socket).
    pub sockets_changed: usize,
    /// The broker upstream reconnects with new settings.
    pub upstream_reconnected: bool,
}

/// Changes the running service with the least disruption.
pub struct Control {
    runtime: std::sync::Mutex<Runtime>,
}

impl Control {
    /// Applies `new` (validated as `check-config` does: [`check_plan`]), of which `changed`
    /// keys differ from the running config. Symbols added or removed on a planned socket are
    /// subscribed or unsubscribed on the live socket, with their books, pollers, metrics and
    /// readiness checks; `book.depth` goes to the sessions. Everything else, and a symbol
    /// change that would add or remove a socket or a REST host, is reported for a restart.
    /// Nothing is touched when the new config cannot be planned.
    pub fn apply(&self, new: &Arc<Config>, changed: &[String]) -> Result<Applied, StartError> {
        let new_plan = check_plan(new)?;
        let mut guard = self.runtime.lock().unwrap_or_else(|e| e.into_inner());
        let rt = &mut *guard;
        let same_shape = same_sockets(&rt.plan, &new_plan);
        // A broker's settings change by reconnecting the upstream alone; a switch between
        // stdout and a broker, or of the encoding the sessions use, needs a restart.
        let (old_up, new_up) = (&rt.config.upstream, &new.upstream);
        let upstream_live = rt.upstream.is_some()
            && old_up.kind() != UpstreamKind::Stdout
            && new_up.kind() != UpstreamKind::Stdout
            && old_up.format == new_up.format;
        let mut applied = Applied::default();
        let mut feeds_live = false;
        let mut depth_live = false;
        let mut upstream_changed = false;
        for key in changed {
            let live = if key.starts_with("feeds.") {
                feeds_live |= same_shape;
                same_shape
            } else if key == "book.depth" {
                depth_live = true;
                true
            } else if key.starts_with("upstream.") {
                upstream_changed |= upstream_live;
                upstream_live
            } else {
                false
            };
            if live {
                applied.live.push(key.clone());
            } else {
                applied.restart.push(key.clone());
            }
        }
        if upstream_changed && let Some(up) = &rt.upstream {
            // First, as it can still refuse (a credential file gone since the check).
            up.reconfigure(new)
                .map_err(|e| StartError::UpstreamSettings(e.to_string()))?;
            applied.upstream_reconnected = true;
            let mut running = (*rt.config).clone();
            running.upstream = new.upstream.clone();
            rt.config = Arc::new(running);
        }
        if !feeds_live && !depth_live {
            return Ok(applied);
        }
        // The config the sessions run from: the new one, with the old feeds when the symbol
        // change waits for a restart.
        let mut running = (*rt.config).clone();
        running.book = new.book.clone();
        if feeds_live {
            running.feeds = new.feeds.clone();
        }
        let running = Arc::new(running);
        let plan = if feeds_live {
            new_plan
        } else {
            rt.plan.clone()
        };
        let old_plan = std::mem::replace(&mut rt.plan, plan.clone());
        for slot in &rt.slots {
            let Some(socket) = plan
                .sockets
                .iter()
                .find(|s| (s.exchange, s.name) == (slot.exchange, slot.name))
            else {
                continue;
            };
            let current = slot.plan.borrow();
            if current.socket == *socket && !depth_live {
                continue;
            }
            if current.socket != *socket {
                applied.sockets_changed += 1;
            }
            current
                .template
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retarget(&StreamKey::for_socket(socket), Some(&rt.parts.metrics));
            slot.plan.send(SessionPlan {
                socket: socket.clone(),
                config: running.clone(),
                template: current.template.clone(),
            });
        }
        if feeds_live {
            let before: Vec<StreamKey> = planned_streams(&old_plan, &rt.pollers, &rt.config)
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            let specs = venue::pollers(&running);
            let parts = &rt.parts;
            let mut kept: Vec<Poller> = Vec::new();
            for p in std::mem::take(&mut rt.pollers) {
                if specs.iter().any(|s| same_poller(s, &p.spec)) {
                    kept.push(p);
                }
            }
            for spec in specs {
                if !kept.iter().any(|p| same_poller(&p.spec, &spec)) {
                    let task = start_poller(parts, &running, spec.clone());
                    kept.push(Poller { spec, _task: task });
                }
            }
            rt.pollers = kept;
            // Streams no longer planned disappear from the metrics; `/ready` checks the new set.
            let streams = planned_streams(&plan, &rt.pollers, &running);
            let now: Vec<StreamKey> = streams.iter().map(|(k, _)| *k).collect();
            for k in before.iter().filter(|k| !now.contains(k)) {
                rt.parts
                    .metrics
                    .forget_stream(k.exchange, k.market, k.symbol.as_str(), k.channel);
            }
            rt.readiness.set_streams(&rt.parts.metrics, &streams);
        }
        rt.config = running;
        Ok(applied)
    }

    /// The broker upstream `apply` reconfigures (none for stdout).
    pub fn set_upstream(&self, upstream: Option<crate::upstream::UpstreamControl>) {
        self.runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .upstream = upstream;
    }

    /// The plan the service runs now.
    pub fn plan(&self) -> Plan {
        self.runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .plan
            .clone()
    }
}

/// Whether two plans open the same sockets and REST hosts (only their streams may differ).
fn same_sockets(a: &Plan, b: &Plan) -> bool {
    let key = |s: &crate::plan::SocketPlan| (s.exchange, s.name, s.url.clone());
    a.sockets.len() == b.sockets.len()
        && a.sockets
            .iter()
            .zip(&b.sockets)
            .all(|(x, y)| key(x) == key(y))
        && a.rest
            .iter()
            .map(|r| &r.base)
            .eq(b.rest.iter().map(|r| &r.base))
        && a.upstream == b.upstream
        && a.push == b.push
}

fn same_poller(a: &PollerSpec, b: &PollerSpec) -> bool {
    (
        a.exchange, a.market, a.symbol, a.channel, a.period, a.interval, &a.path,
    ) == (
        b.exchange, b.market, b.symbol, b.channel, b.period, b.interval, &b.path,
    )
}

/// Every planned stream (sockets and pollers) with its freshness threshold, for `/ready`.
fn planned_streams(
    plan: &Plan,
    pollers: &[Poller],
    cfg: &Config,
) -> Vec<(StreamKey, Option<Duration>)> {
    let stale_after = cfg.session.stale_after.0;
    let mut out = Vec::new();
    for socket in &plan.sockets {
        for key in StreamKey::for_socket(socket) {
            out.push((key, freshness(key.channel, stale_after, None)));
        }
    }
    for p in pollers {
        let spec = &p.spec;
        let key = StreamKey {
            exchange: spec.exchange,
            market: spec.market,
            symbol: spec.symbol,
            channel: spec.channel,
        };
        let period = humantime::parse_duration(spec.period).unwrap_or_default();
        let every = spec.interval.max(period);
        out.push((key, freshness(key.channel, stale_after, Some(every))));
    }
    out
}

/// Starts a supervised session for `socket`; it runs from whatever its plan holds when it
/// (re)starts and follows the plan's changes.
fn start_session(
    parts: &Parts,
    cfg: &Arc<Config>,
    socket: &crate::plan::SocketPlan,
) -> Option<Slot> {
    if venue::protocol_for(socket, cfg, &parts.metrics).is_none() {
        tracing::error!(
            exchange = %socket.exchange,
            socket = socket.name.as_str(),
            "this build cannot serve this socket yet; it stays closed"
        );
        return None;
    }
    let keys = StreamKey::for_socket(socket);
    let template = Publisher::new(
        parts.spool.clone(),
        cfg.upstream.format,
        &keys,
        Some(&parts.metrics),
    );
    let (tx, rx) = crate::watch::channel(SessionPlan {
        socket: socket.clone(),
        config: cfg.clone(),
        template: Arc::new(std::sync::Mutex::new(template)),
    });
    let (m, shared) = (parts.metrics.clone(), parts.shared.clone());
    let (exchange, name) = (socket.exchange, socket.name.as_str());
    let task = supervise(
        &parts.executor,
        &parts.metrics,
        "session",
        format!("{exchange} {name}"),
        move || {
            let mut rx = rx.clone();
            let current = rx.try_changed().unwrap_or_else(|| rx.borrow());
            let proto = venue::protocol_for(&current.socket, &current.config, &m);
            let publisher = current
                .template
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .fork();
            let shared = shared.clone();
            async move {
                if let Some(proto) = proto {
                    match session::run(exchange, name, proto, publisher, shared, rx).await {}
                }
            }
        },
    );
    Some(Slot {
        exchange: socket.exchange,
        name: socket.name,
        plan: tx,
        _task: task,
    })
}

/// Starts a supervised REST poller.
fn start_poller(parts: &Parts, cfg: &Config, spec: PollerSpec) -> Task<()> {
    let key = StreamKey {
        exchange: spec.exchange,
        market: spec.market,
        symbol: spec.symbol,
        channel: spec.channel,
    };
    let template = Publisher::new(
        parts.spool.clone(),
        cfg.upstream.format,
        &[key],
        Some(&parts.metrics),
    );
    let (client, limiters, m) = (
        parts.shared.rest.clone(),
        parts.shared.limiters.clone(),
        parts.metrics.clone(),
    );
    let name = format!(
        "{} {} {} {}",
        spec.exchange, spec.market, spec.symbol, spec.channel
    );
    // It beats at least every 5 s while it waits, and around each request.
    let limit = cfg.rest.request_timeout.0 + Duration::from_secs(15);
    let live = parts.liveness.clone();
    let beat_name = format!("poller {name}");
    supervise(&parts.executor, &parts.metrics, "poller", name, move || {
        let (spec, client, limiters, m) =
            (spec.clone(), client.clone(), limiters.clone(), m.clone());
        let publisher = template.fork();
        let beat = live.register(beat_name.clone(), limit);
        async move { match session::poll::run(spec, client, limiters, publisher, m, beat).await {} }
    })
}

impl App {
    /// Checks the plan against the budget, then starts one session per planned socket.
    /// Messages go to the returned spool; the caller runs an upstream on it.
    pub fn start(cfg: &Config, executor: &Arc<Executor<'static>>) -> Result<App, StartError> {
        let cfg = Arc::new(cfg.clone());
        let plan = check_plan(&cfg)?;
        let metrics = Arc::new(Metrics::new());
        let budget = Budget::new(cfg.budget.max_connections.0, Some(metrics.clone()));
        let tls_ws = tls::client_config(cfg.tls.extra_ca.as_deref(), tls::Alpn::None)?;
        let tls_rest = tls::client_config(cfg.tls.extra_ca.as_deref(), tls::Alpn::Http11)?;
        let rest = RestClient::new(
            budget.clone(),
            tls_rest,
            &cfg.rest,
            executor.clone(),
            Some(metrics.clone()),
        );
        let spool = Spool::open(
            cfg.spool.ram_bytes.0,
            cfg.spool.dir.as_ref().map(|d| d.get_ref().as_path()),
            cfg.spool.disk_bytes.0 as u64,
            SpoolMetrics::new(&metrics),
        )?;
        let liveness = Liveness::new();
        let shared = Shared {
            liveness: liveness.clone(),
            budget: budget.clone(),
            tls: tls_ws,
            rest: rest.clone(),
            limiters: session::RestLimiters::new(Some(metrics.clone())),
            connect_limits: session::ConnectLimits::default(),
            executor: executor.clone(),
            metrics: metrics.clone(),
            session: cfg.session.clone(),
            ws: WsOptions {
                connect_timeout: cfg.session.connect_timeout.0,
                send_timeout: cfg.session.idle_timeout.0,
                ..WsOptions::default()
            },
        };
        let parts = Parts {
            executor: executor.clone(),
            metrics: metrics.clone(),
            spool: spool.clone(),
            shared,
            liveness: liveness.clone(),
        };
        let mut tasks = Vec::new();
        metrics.plan_sockets.set(plan.needed() as i64);
        for socket in &plan.sockets {
            metrics
                .plan_ws_connections
                .get_or_create(&SocketLabels {
                    exchange: socket.exchange,
                    socket: socket.name.as_str().to_owned(),
                })
                .set(1);
            for key in StreamKey::for_socket(socket) {
                if key.channel == crate::model::Channel::Orderbook {
                    // Exported at 0 from the start, so rates and alerts see the series.
                    let _ = metrics.book_levels_dropped.get_or_create(&StreamLabels {
                        exchange: key.exchange,
                        market: key.market,
                        symbol: key.symbol.to_string(),
                        channel: key.channel,
                    });
                }
            }
        }
        let slots: Vec<Slot> = plan
            .sockets
            .iter()
            .filter_map(|socket| start_session(&parts, &cfg, socket))
            .collect();
        let pollers: Vec<Poller> = venue::pollers(&cfg)
            .into_iter()
            .map(|spec| Poller {
                _task: start_poller(&parts, &cfg, spec.clone()),
                spec,
            })
            .collect();
        let beat = liveness.register("executor", EXECUTOR_STUCK_AFTER);
        tasks.push(executor.spawn(async move {
            loop {
                beat.beat();
                Timer::after(Duration::from_secs(1)).await;
            }
        }));
        let readiness = Arc::new(Readiness::new(
            &metrics,
            &planned_streams(&plan, &pollers, &cfg),
        ));
        let endpoints = Arc::new(Endpoints {
            metrics: metrics.clone(),
            liveness: liveness.clone(),
            readiness: readiness.clone(),
        });
        let control = Arc::new(Control {
            runtime: std::sync::Mutex::new(Runtime {
                config: cfg,
                plan: plan.clone(),
                slots,
                pollers,
                readiness,
                parts,
                upstream: None,
            }),
        });
        Ok(App {
            plan,
            metrics,
            budget,
            spool,
            rest,
            liveness,
            control,
            endpoints,
            http: None,
            tasks,
        })
    }

    /// Opens the `[metrics] listen` server (unless it is `""`) and starts the
    /// `[metrics.push]` loop (when configured) on `executor`.
    pub fn serve(
        &mut self,
        cfg: &Config,
        executor: &Arc<Executor<'static>>,
    ) -> Result<(), StartError> {
        if let Some(addr) = cfg.metrics.listen.0 {
            self.http = Some(crate::metrics::http::start(
                addr,
                self.endpoints.clone(),
                executor,
            )?);
        }
        if let Some(p) = &cfg.metrics.push {
            let settings = push::PushSettings {
                url: p.url.clone(),
                interval: p.interval.0,
                device: cfg.device.id.to_string(),
                auth: push::Auth::from_config(p)?,
            };
            // A push waits at most one request timeout per round, besides the interval.
            let limit = settings.interval + cfg.rest.request_timeout.0 + Duration::from_secs(10);
            let beat = self.liveness.register("metrics push", limit);
            let (m, rest) = (self.metrics.clone(), self.rest.clone());
            tracing::info!(url = %p.url, interval = ?settings.interval, "pushing metrics (remote write)");
            let name = p.url.to_string();
            self.tasks.push(supervise(
                executor,
                &self.metrics,
                "push",
                name,
                move || {
                    let (settings, m, rest, beat) =
                        (settings.clone(), m.clone(), rest.clone(), beat.clone());
                    async move { match push::run(settings, m, rest, beat).await {} }
                },
            ));
        }
        Ok(())
    }

    /// Where `/metrics`, `/health` and `/ready` are served, once [`App::serve`] opened it.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(Server::local_addr)
    }

    /// Stops every session (their sockets close and permits return).
    pub fn stop(&mut self) {
        self.http = None;
        self.tasks.clear();
        {
            let mut rt = self
                .control
                .runtime
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            rt.slots.clear();
            rt.pollers.clear();
        }
        self.spool.close();
    }
}

/// Runs the stdout upstream until it fails: `marketbox_upstream_up` is 1 while it runs, and
/// 0 once it failed or was cancelled.
pub async fn run_stdout<W>(
    spool: Spool,
    format: crate::config::Format,
    metrics: &Metrics,
    out: W,
) -> std::io::Result<()>
where
    W: futures_lite::io::AsyncWrite + Unpin,
{
    /// Sets the gauge back to 0 however the upstream ends, cancellation included.
    struct Down<'a>(&'a Metrics);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            self.0.upstream_up.set(0);
        }
    }
    metrics.upstream_up.set(1);
    let _down = Down(metrics);
    crate::upstream::stdout::run(spool, format, out).await
}

/// A blocking writer on standard output without `std::io::Stdout`'s line buffering (a write
/// per line): a duplicate of file descriptor 1, so each batch is one `write(2)`.
fn stdout_writer() -> std::io::Result<impl std::io::Write> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        let fd = std::io::stdout().as_fd().try_clone_to_owned()?;
        Ok(std::fs::File::from(fd))
    }
    #[cfg(not(unix))]
    {
        Ok(std::io::stdout())
    }
}

/// Runs tasks made by `make` for ever. A task that ends (none should) or panics is logged with
/// its name, counted in `marketbox_task_restarts_total{task}`, and made again after a pause
/// (from 100 ms, doubling to 30 s while it keeps failing within a minute of its start). A
/// session made again starts its socket and books over; its publisher continues the stream
/// sequence numbers (`Publisher::fork`).
pub fn supervise<F, Fut>(
    executor: &Arc<Executor<'static>>,
    metrics: &Arc<Metrics>,
    task: &'static str,
    name: String,
    mut make: F,
) -> Task<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let restarts = metrics
        .task_restarts
        .get_or_create(&TaskLabels { task })
        .clone();
    executor.spawn(async move {
        let mut failures = 0u32;
        loop {
            let started = Instant::now();
            match AssertUnwindSafe(make()).catch_unwind().await {
                Ok(()) => {
                    tracing::error!(task, %name, "task ended unexpectedly; starting it again")
                }
                Err(panic) => tracing::error!(
                    task,
                    %name,
                    panic = panic_message(&*panic),
                    "task panicked (a bug: please report it with this log); starting it again"
                ),
            }
            restarts.inc();
            if started.elapsed() >= Duration::from_secs(60) {
                failures = 0;
            }
            let pause = crate::session::backoff::delay(
                failures,
                Duration::from_millis(100),
                Duration::from_secs(30),
            );
            failures = failures.saturating_add(1);
            Timer::after(pause).await;
        }
    })
}

/// The text of a panic payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Why the running service stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Start(#[from] StartError),
    /// The upstream failed for good (stdout closed, …): the process exits non-zero so that
    /// the init system restarts it.
    #[error("the upstream failed: {0}")]
    Upstream(#[source] std::io::Error),
    #[error("the upstream stopped")]
    UpstreamEnded,
}

/// What `run` needs besides the config.
pub struct RunOptions {
    /// The config file the service was started with (the console saves to it) and its text
    /// (the console edits it, comments kept).
    pub config_path: std::path::PathBuf,
    pub config_text: String,
    /// Sets the log level (`log level` at the console).
    pub log: Option<crate::console::LogControl>,
}

/// How the service stopped without failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The console asked for a restart: the caller starts the process again.
    Restart,
    /// SIGTERM or SIGINT: the caller exits.
    Signal(&'static str),
}

/// Why [`run`] stops taking messages.
#[derive(Clone, Copy)]
enum Stop {
    Restart,
    Signal(&'static str),
}

/// The console's view of the running service.
struct ConsoleService {
    control: Arc<Control>,
    restart: smol::channel::Sender<()>,
}

impl crate::console::Service for ConsoleService {
    fn apply(&self, config: &Arc<Config>, changed: &[String]) -> Result<Applied, String> {
        self.control
            .apply(config, changed)
            .map_err(|e| e.to_string())
    }

    fn restart(&self) {
        let _ = self.restart.try_send(());
    }
}

/// The name of the first SIGTERM or SIGINT. If they can no longer be read (not seen: the
/// stream reads a pipe its handler writes), that is logged and the service runs on, stopped
/// only by SIGKILL from then: a stop is never made up.
async fn stop_signal(signals: &mut async_signal::Signals) -> &'static str {
    use futures_lite::StreamExt;
    loop {
        match signals.next().await {
            Some(Ok(async_signal::Signal::Term)) => return "SIGTERM",
            Some(Ok(async_signal::Signal::Int)) => return "SIGINT",
            Some(Ok(_)) => {}
            Some(Err(err)) => {
                tracing::error!(
                    %err,
                    "cannot read SIGTERM and SIGINT any more: only SIGKILL stops the service now"
                );
                break;
            }
            None => break,
        }
    }
    std::future::pending().await
}

/// Longest a restart or a stop on a signal waits for the messages already spooled to reach
/// the upstream.
pub const RESTART_DRAIN: Duration = Duration::from_secs(5);

/// Runs the service until SIGTERM or SIGINT, the upstream fails, or the console asks for a
/// restart.
pub fn run(cfg: Config, opts: RunOptions) -> Result<Stopped, RunError> {
    let started = Instant::now();
    // Registered before anything connects, so that a stop asked during start-up is not the
    // default action (the process killed with the spool unflushed).
    let mut signals =
        async_signal::Signals::new([async_signal::Signal::Term, async_signal::Signal::Int])
            .map_err(StartError::Signals)?;
    let executor = Arc::new(Executor::new());
    let mut app = App::start(&cfg, &executor)?;
    app.serve(&cfg, &executor)?;
    tracing::info!("{}", app.plan.display(cfg.budget.max_connections.0));
    let (restart_tx, restart_rx) = smol::channel::bounded::<()>(1);
    let store = crate::console::store::Store::new(
        &opts.config_path,
        &opts.config_text,
        Arc::new(cfg.clone()),
    )
    .map_err(StartError::Config)?;
    let console = crate::console::Console::new(
        store,
        Arc::new(ConsoleService {
            control: app.control.clone(),
            restart: restart_tx,
        }),
        app.metrics.clone(),
        started,
        opts.log,
    );
    let sampler = executor.spawn(console.clone().sample_forever());
    let devices =
        crate::console::device::start(&console, &cfg.console.devices, cfg.console.baud, &executor);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    // The main thread runs the executor too (below).
    for i in 1..threads {
        let (ex, m) = (executor.clone(), app.metrics.clone());
        let _ = std::thread::Builder::new()
            .name(format!("marketbox-{i}"))
            .spawn(move || {
                // A panic in a task nobody supervises would end this thread; run again.
                loop {
                    let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        smol::block_on(ex.run(std::future::pending::<()>()))
                    }));
                    if let Err(panic) = run {
                        tracing::error!(
                            panic = panic_message(&*panic),
                            "an executor thread caught a panic; it keeps running"
                        );
                        m.task_restarts
                            .get_or_create(&TaskLabels { task: "executor" })
                            .inc();
                    }
                }
            });
    }
    // The upstream drains the spool until it is closed (a restart) or fails.
    let mut broker = None;
    let mut upstream: Task<std::io::Result<()>> = match cfg.upstream.kind() {
        UpstreamKind::Stdout => {
            let (spool, format, metrics) =
                (app.spool.clone(), cfg.upstream.format, app.metrics.clone());
            // Blocking batch writes on a thread of their own, never on the executor.
            smol::unblock(move || {
                let out = futures_lite::io::AssertAsync::new(stdout_writer()?);
                smol::block_on(run_stdout(spool, format, &metrics, out))
            })
        }
        UpstreamKind::Nats | UpstreamKind::Mqtt => {
            let up =
                crate::upstream::start(&cfg, app.spool.clone(), app.budget.clone(), &app.metrics)
                    .map_err(|e| RunError::Upstream(std::io::Error::other(e)))?;
            let control = up.control();
            app.control.set_upstream(Some(control.clone()));
            broker = Some(control);
            smol::unblock(move || up.join().map_err(std::io::Error::other))
        }
    };
    let result = smol::block_on(
        executor.run(
            async { Ok((&mut upstream).await) }
                .or(async {
                    let _ = restart_rx.recv().await;
                    Err(Stop::Restart)
                })
                .or(async { Err(Stop::Signal(stop_signal(&mut signals).await)) }),
        ),
    );
    match result {
        Ok(Ok(())) => Err(RunError::UpstreamEnded),
        Ok(Err(err)) => Err(RunError::Upstream(err)),
        Err(stop) => {
            match stop {
                Stop::Restart => tracing::info!("restarting (asked at the console)"),
                Stop::Signal(name) => tracing::info!(signal = name, "stopping"),
            }
            drop(devices);
            drop(sampler);
            // No new messages; what is spooled goes upstream first (for a while).
            app.stop();
            let drained = smol::block_on(
                executor.run(
                    async {
                        let _ = (&mut upstream).await;
                        true
                    }
                    .or(async {
                        Timer::after(RESTART_DRAIN).await;
                        false
                    }),
                ),
            );
            if !drained {
                tracing::warn!(
                    left = app.spool.len(),
                    "the spool did not drain before the {}",
                    match stop {
                        Stop::Restart => "restart",
                        Stop::Signal(_) => "stop",
                    }
                );
                if let Some(b) = broker {
                    b.abort();
                }
            }
            // A disk spool keeps what is left: flushed, and its cursor saved.
            app.spool.shutdown();
            Ok(match stop {
                Stop::Restart => Stopped::Restart,
                Stop::Signal(name) => Stopped::Signal(name),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn sigint_is_named_as_the_reason_to_stop() {
        let mut signals =
            async_signal::Signals::new([async_signal::Signal::Term, async_signal::Signal::Int])
                .expect("the handlers");
        // SAFETY: raise(3) of a signal this process now handles (the handler above).
        unsafe {
            libc::raise(libc::SIGINT);
        }
        let name = smol::block_on(stop_signal(&mut signals).or(async {
            Timer::after(Duration::from_secs(10)).await;
            "nothing in 10 s"
        }));
        assert_eq!(name, "SIGINT");
    }

    #[test]
    fn a_task_that_panics_is_counted_and_started_again() {
        let ex = Arc::new(Executor::new());
        let metrics = Arc::new(Metrics::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let _task = supervise(&ex, &metrics, "session", "test".into(), move || {
            let n = r.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    panic!("the first run fails");
                }
                std::future::pending::<()>().await
            }
        });
        smol::block_on(ex.run(async {
            let end = Instant::now() + Duration::from_secs(5);
            while runs.load(Ordering::SeqCst) < 2 {
                assert!(Instant::now() < end, "the task was not started again");
                Timer::after(Duration::from_millis(10)).await;
            }
        }));
        assert_eq!(
            metrics.sum("marketbox_task_restarts_total", &[("task", "session")]),
            1
        );
    }
}
