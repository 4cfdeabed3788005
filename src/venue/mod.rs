//! Venues: everything exchange-specific lives in one folder per exchange.
//!
//! Design: the venues differ in where streams live and how books are verified; the rest of the
//! program sees only the plan (`plan::Plan`), normalized messages (`model`), and a per-socket
//! protocol driven by the session. The differences:
//!
//! | | Binance spot | Binance USD-M | OKX (spot + swap) |
//! |---|---|---|---|
//! | sockets | 1 (`/stream?streams=`) | 2: `/public` (depth, trade), `/market` (markPrice, forceOrder) | 1 (`/ws/v5/public`), multi-arg subscribe |
//! | book sync | REST snapshot + `U`/`u` | REST snapshot + `pu` chain | `seqId`/`prevSeqId`, CRC32 when non-zero |
//! | keepalive | server pings, we pong | server pings, we pong | we send `ping` text when idle |
//! | REST | depth snapshots | depth, open interest, long/short ratios | book snapshots, long/short ratios |
//!
//! The session loop branches on the venue in one place: building the venue's protocol for a
//! planned socket (`session::protocol_for`).

pub mod binance;
pub mod json;
pub mod okx;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::Exchange;
use crate::plan::{Plan, SocketPlan};
use crate::session::Protocol;

/// A config the venues cannot serve (checked before anything connects).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{exchange}: {reason}")]
pub struct PlanError {
    pub exchange: Exchange,
    pub reason: String,
}

/// Computes the socket plan of a config.
pub fn plan(cfg: &Config) -> Result<Plan, PlanError> {
    let mut plan = Plan {
        upstream: match cfg.upstream.kind() {
            crate::config::UpstreamKind::Stdout => 0,
            crate::config::UpstreamKind::Nats | crate::config::UpstreamKind::Mqtt => 1,
        },
        push: cfg.metrics.push.as_ref().map(|p| p.url.origin()),
        ..Plan::default()
    };
    binance::plan(cfg, &mut plan)?;
    okx::plan(cfg, &mut plan)?;
    Ok(plan)
}

/// Builds the protocol that drives one planned socket.
pub fn protocol_for(
    socket: &SocketPlan,
    cfg: &Config,
    metrics: &std::sync::Arc<Metrics>,
) -> Option<Box<dyn Protocol>> {
    match socket.exchange {
        Exchange::Binance => {
            let market = socket
                .streams
                .first()
                .map_or(crate::model::Market::Spot, |s| s.market);
            binance::protocol_for(socket, market, cfg, metrics)
        }
        Exchange::Okx => Some(Box::new(okx::feed::OkxProtocol::new(
            socket,
            cfg,
            metrics.clone(),
        ))),
    }
}

/// Every REST poller a config asks for.
pub fn pollers(cfg: &Config) -> Vec<crate::session::poll::PollerSpec> {
    let mut out = binance::poll::pollers(cfg);
    out.extend(okx::poll::pollers(cfg));
    out
}
