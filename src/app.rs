//! The running service: wires config → plan → budget → sessions → spool → upstream.
//!
//! Owns: start-up order (plan checked against the budget before anything connects), the
//! executor, and the tasks of sessions and the upstream. Dropping [`App`] stops everything
//! (sessions drop their sockets and permits).
//!
//! Must not touch: venue formats (venue code builds each socket's protocol) or socket I/O.

use std::sync::Arc;

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use smol::{Executor, Task, Timer};

use crate::budget::Budget;
use crate::config::{Config, UpstreamKind};
use crate::metrics::{Metrics, TaskLabels};
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
}

/// A running marketbox.
pub struct App {
    pub plan: Plan,
    pub metrics: Arc<Metrics>,
    pub budget: Budget,
    pub spool: Spool,
    pub rest: RestClient,
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
        let shared = Shared {
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
            let template =
                Publisher::new(spool.clone(), cfg.upstream.format, &[key], Some(&metrics));
            let (client, limiters, m) = (rest.clone(), shared.limiters.clone(), metrics.clone());
            let name = format!(
                "{} {} {} {}",
                spec.exchange, spec.market, spec.symbol, spec.channel
            );
            tasks.push(supervise(executor, &metrics, "poller", name, move || {
                let (spec, client, limiters, m) =
                    (spec.clone(), client.clone(), limiters.clone(), m.clone());
                let publisher = template.fork();
                async move {
                    match session::poll::run(spec, client, limiters, publisher, m).await {}
                }
            }));
        }
        Ok(App {
            plan,
            metrics,
            budget,
            spool,
            rest,
            tasks,
        })
    }

    /// Stops every session (their sockets close and permits return).
    pub fn stop(&mut self) {
        self.tasks.clear();
        self.spool.close();
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
    let app = App::start(&cfg, &executor)?;
    tracing::info!("{}", app.plan.display(cfg.budget.max_connections.0));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
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
    let result = smol::block_on(executor.run(async {
        match cfg.upstream.kind() {
            UpstreamKind::Stdout => {
                app.metrics.upstream_up.set(1);
                let out = smol::Unblock::new(std::io::stdout());
                crate::upstream::stdout::run(app.spool.clone(), cfg.upstream.format, out).await
            }
            UpstreamKind::Nats | UpstreamKind::Mqtt => {
                let up = crate::upstream::start(
                    &cfg,
                    app.spool.clone(),
                    app.budget.clone(),
                    &app.metrics,
                )
                .map_err(std::io::Error::other)?;
                smol::unblock(move || up.join())
                    .await
                    .map_err(std::io::Error::other)
            }
        }
    }));
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
