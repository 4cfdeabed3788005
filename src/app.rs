//! The running service: wires config → plan → budget → sessions → spool → upstream.
//!
//! Owns: start-up order (plan checked against the budget before anything connects), the
//! executor, and the tasks of sessions and the upstream. Dropping [`App`] stops everything
//! (sessions drop their sockets and permits).
//!
//! Must not touch: venue formats (venue code builds each socket's protocol) or socket I/O.

use std::sync::Arc;

use smol::{Executor, Task};

use crate::budget::Budget;
use crate::config::{Config, UpstreamKind};
use crate::metrics::Metrics;
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
            limiters: session::RestLimiters::default(),
            executor: executor.clone(),
            metrics: metrics.clone(),
            session: cfg.session.clone(),
            ws: WsOptions {
                connect_timeout: cfg.session.connect_timeout.0,
                ..WsOptions::default()
            },
        };
        let mut tasks = Vec::new();
        for socket in &plan.sockets {
            let keys = StreamKey::for_socket(socket);
            let publisher =
                Publisher::new(spool.clone(), cfg.upstream.format, &keys, Some(&metrics));
            let Some(proto) = venue::protocol_for(socket, cfg, &metrics) else {
                tracing::error!(
                    exchange = %socket.exchange,
                    socket = socket.name,
                    "this build cannot serve this socket yet; it stays closed"
                );
                continue;
            };
            let (exchange, name, shared) = (socket.exchange, socket.name, shared.clone());
            tasks.push(executor.spawn(async move {
                match session::run(exchange, name, proto, publisher, shared).await {}
            }));
        }
        for spec in venue::pollers(cfg) {
            let key = StreamKey {
                exchange: spec.exchange,
                market: spec.market,
                symbol: spec.symbol,
                channel: spec.channel,
            };
            let publisher =
                Publisher::new(spool.clone(), cfg.upstream.format, &[key], Some(&metrics));
            let (client, limiters, m) = (rest.clone(), shared.limiters.clone(), metrics.clone());
            tasks.push(executor.spawn(async move {
                match session::poll::run(spec, client, limiters, publisher, m).await {}
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

/// Runs the service until the process is stopped.
pub fn run(cfg: Config) -> Result<(), StartError> {
    let executor = Arc::new(Executor::new());
    let app = App::start(&cfg, &executor)?;
    tracing::info!("{}", app.plan.display(cfg.budget.max_connections.0));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    for i in 1..threads {
        let ex = executor.clone();
        let _ = std::thread::Builder::new()
            .name(format!("marketbox-{i}"))
            .spawn(move || smol::block_on(ex.run(std::future::pending::<()>())));
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
    if let Err(err) = result {
        tracing::error!(%err, "the upstream stopped");
    }
    Ok(())
}
