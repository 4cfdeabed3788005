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
use crate::session::{self, Shared};
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
}

/// The executor's heartbeat: a task that beats every second; `/health` calls the executor
/// stuck after this long without one.
pub const EXECUTOR_STUCK_AFTER: Duration = Duration::from_secs(10);

/// A running marketbox.
pub struct App {
    pub plan: Plan,
    pub metrics: Arc<Metrics>,
    pub budget: Budget,
    pub spool: Spool,
    pub rest: RestClient,
    /// The heartbeats `/health` checks; loops register here.
    pub liveness: Liveness,
    endpoints: Arc<Endpoints>,
    http: Option<Server>,
    tasks: Vec<Task<()>>,
}

impl App {
    /// Checks the plan against the budget, then starts one session per planned socket.
    /// Messages go to the returned spool; the caller runs an upstream on it.
    pub fn start(cfg: &Config, executor: &Arc<Executor<'static>>) -> Result<App, StartError> {
        let plan = venue::plan(cfg)?;
        plan.check(cfg.budget.max_connections.0)?;
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
        let mut tasks = Vec::new();
        metrics.plan_sockets.set(plan.needed() as i64);
        let mut checked = Vec::new();
        let stale_after = cfg.session.stale_after.0;
        for socket in &plan.sockets {
            metrics
                .plan_ws_connections
                .get_or_create(&SocketLabels {
                    exchange: socket.exchange,
                    socket: socket.name.as_str().to_owned(),
                })
                .set(1);
            for key in StreamKey::for_socket(socket) {
                checked.push((key, freshness(key.channel, stale_after, None)));
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
        for socket in &plan.sockets {
            let keys = StreamKey::for_socket(socket);
            let template =
                Publisher::new(spool.clone(), cfg.upstream.format, &keys, Some(&metrics));
            if venue::protocol_for(socket, cfg, &metrics).is_none() {
                tracing::error!(
                    exchange = %socket.exchange,
                    socket = socket.name.as_str(),
                    "this build cannot serve this socket yet; it stays closed"
                );
                continue;
            }
            let (socket, cfg_, m, shared) =
                (socket.clone(), cfg.clone(), metrics.clone(), shared.clone());
            let name = format!("{} {}", socket.exchange, socket.name);
            tasks.push(supervise(executor, &metrics, "session", name, move || {
                let proto = venue::protocol_for(&socket, &cfg_, &m);
                let (exchange, name) = (socket.exchange, socket.name.as_str());
                let (publisher, shared) = (template.fork(), shared.clone());
                async move {
                    if let Some(proto) = proto {
                        match session::run(exchange, name, proto, publisher, shared).await {}
                    }
                }
            }));
        }
        for spec in venue::pollers(cfg) {
            let key = StreamKey {
                exchange: spec.exchange,
                market: spec.market,
                symbol: spec.symbol,
                channel: spec.channel,
            };
            let period = humantime::parse_duration(spec.period).unwrap_or_default();
            let every = spec.interval.max(period);
            checked.push((key, freshness(key.channel, stale_after, Some(every))));
            let template =
                Publisher::new(spool.clone(), cfg.upstream.format, &[key], Some(&metrics));
            let (client, limiters, m) = (rest.clone(), shared.limiters.clone(), metrics.clone());
            let name = format!(
                "{} {} {} {}",
                spec.exchange, spec.market, spec.symbol, spec.channel
            );
            // It beats at least every 5 s while it waits, and around each request.
            let limit = cfg.rest.request_timeout.0 + Duration::from_secs(15);
            let live = liveness.clone();
            let beat_name = format!("poller {name}");
            tasks.push(supervise(executor, &metrics, "poller", name, move || {
                let (spec, client, limiters, m) =
                    (spec.clone(), client.clone(), limiters.clone(), m.clone());
                let publisher = template.fork();
                let beat = live.register(beat_name.clone(), limit);
                async move {
                    match session::poll::run(spec, client, limiters, publisher, m, beat).await {}
                }
            }));
        }
        let beat = liveness.register("executor", EXECUTOR_STUCK_AFTER);
        tasks.push(executor.spawn(async move {
            loop {
                beat.beat();
                Timer::after(Duration::from_secs(1)).await;
            }
        }));
        let endpoints = Arc::new(Endpoints {
            metrics: metrics.clone(),
            liveness: liveness.clone(),
            readiness: Readiness::new(&metrics, &checked),
        });
        Ok(App {
            plan,
            metrics,
            budget,
            spool,
            rest,
            liveness,
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

/// Runs the service until the process is stopped or the upstream fails.
pub fn run(cfg: Config) -> Result<(), RunError> {
    let executor = Arc::new(Executor::new());
    let mut app = App::start(&cfg, &executor)?;
    app.serve(&cfg, &executor)?;
    tracing::info!("{}", app.plan.display(cfg.budget.max_connections.0));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    // With stdout the main thread is the writer (blocking writes, never on the executor);
    // with a broker it runs the executor too.
    let first = usize::from(cfg.upstream.kind() != UpstreamKind::Stdout);
    for i in first..threads {
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
    let result = match cfg.upstream.kind() {
        UpstreamKind::Stdout => stdout_writer().and_then(|out| {
            let out = futures_lite::io::AssertAsync::new(out);
            smol::block_on(run_stdout(
                app.spool.clone(),
                cfg.upstream.format,
                &app.metrics,
                out,
            ))
        }),
        UpstreamKind::Nats | UpstreamKind::Mqtt => smol::block_on(executor.run(async {
            let up =
                crate::upstream::start(&cfg, app.spool.clone(), app.budget.clone(), &app.metrics)
                    .map_err(std::io::Error::other)?;
            smol::unblock(move || up.join())
                .await
                .map_err(std::io::Error::other)
        })),
    };
    match result {
        Ok(()) => Err(RunError::UpstreamEnded),
        Err(err) => Err(RunError::Upstream(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
