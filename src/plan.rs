//! The socket plan (DESIGN rule 1): which socket carries which streams.
//!
//! Design: the plan is computed from the config by venue code (`venue::plan`), printed at
//! start-up and by `check-config`, and checked against the budget before anything connects.
//! A socket is one `SocketPlan`; sessions are created one per planned socket and never open
//! anything the plan does not name.
//!
//! Owns: the venue-neutral plan types, the budget arithmetic and the printed form. Must not
//! touch: how a venue spells its streams (venue code fills `StreamPlan::wire`).

use std::fmt;

use crate::model::{Channel, Exchange, Market, Symbol};

/// One stream on one socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPlan {
    pub market: Market,
    pub symbol: Symbol,
    pub channel: Channel,
    /// The venue's name for the stream (`btcusdt@depth@100ms`, `books:BTC-USDT-SWAP`).
    pub wire: String,
}

/// Which of a venue's endpoints a planned socket is: a fixed set, so the `socket` metric
/// label cannot grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketName {
    /// Binance spot, `/stream`.
    Spot,
    /// Binance USD-M `/public` (depth, trades).
    PerpetualPublic,
    /// Binance USD-M `/market` (mark price, liquidations).
    PerpetualMarket,
    /// OKX `/ws/v5/public` (spot and swaps).
    Public,
}

impl SocketName {
    /// The name in logs and the `socket` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SocketName::Spot => "spot",
            SocketName::PerpetualPublic => "perpetual_public",
            SocketName::PerpetualMarket => "perpetual_market",
            SocketName::Public => "public",
        }
    }
}

impl fmt::Display for SocketName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for SocketName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One planned WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketPlan {
    pub exchange: Exchange,
    /// Which endpoint: logs and the `socket` metric label.
    pub name: SocketName,
    /// The URL the session connects to.
    pub url: String,
    pub streams: Vec<StreamPlan>,
}

/// One planned REST host (one keep-alive connection at most).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestPlan {
    pub exchange: Exchange,
    /// `scheme://authority`.
    pub base: String,
    /// What it is polled for, e.g. `orderbook snapshots (spot)`.
    pub purposes: Vec<String>,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub sockets: Vec<SocketPlan>,
    pub rest: Vec<RestPlan>,
    /// Upstream connections (0 for stdout).
    pub upstream: usize,
    /// The remote-write receiver (`scheme://authority`) when `[metrics.push]` is set: one
    /// keep-alive connection holding a REST permit.
    pub push: Option<String>,
}

/// The plan does not fit the budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the plan needs {needed} sockets ({websockets} WebSockets + {rest} REST hosts + {upstream} \
     upstream + {push} metrics push) but [budget] max_connections is {limit}: raise \
     max_connections or collect fewer exchange-markets"
)]
pub struct PlanExceedsBudget {
    pub needed: usize,
    pub websockets: usize,
    pub rest: usize,
    pub upstream: usize,
    pub push: usize,
    pub limit: usize,
}

impl Plan {
    /// Sockets the plan holds open at once in steady state.
    pub fn needed(&self) -> usize {
        self.sockets.len() + self.rest.len() + self.upstream + usize::from(self.push.is_some())
    }

    /// Refuses a plan that cannot fit `limit` permits.
    pub fn check(&self, limit: usize) -> Result<(), PlanExceedsBudget> {
        let needed = self.needed();
        if needed > limit {
            return Err(PlanExceedsBudget {
                needed,
                websockets: self.sockets.len(),
                rest: self.rest.len(),
                upstream: self.upstream,
                push: usize::from(self.push.is_some()),
                limit,
            });
        }
        Ok(())
    }

    /// WebSockets planned for one exchange.
    pub fn websockets_of(&self, exchange: Exchange) -> usize {
        self.sockets
            .iter()
            .filter(|s| s.exchange == exchange)
            .count()
    }

    /// Renders the plan with the budget it is checked against.
    pub fn display(&self, limit: usize) -> PlanDisplay<'_> {
        PlanDisplay { plan: self, limit }
    }
}

/// Printable plan (`check-config`, start-up log).
pub struct PlanDisplay<'a> {
    plan: &'a Plan,
    limit: usize,
}

impl fmt::Display for PlanDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.plan;
        writeln!(f, "socket plan: {} WebSockets", p.sockets.len())?;
        for (i, s) in p.sockets.iter().enumerate() {
            writeln!(
                f,
                "  ws {}: {} {} -> {} ({} streams)",
                i + 1,
                s.exchange,
                s.name,
                s.url,
                s.streams.len()
            )?;
            for st in &s.streams {
                writeln!(
                    f,
                    "      {} {} {:<16} {}",
                    st.market, st.symbol, st.channel, st.wire
                )?;
            }
        }
        writeln!(
            f,
            "REST hosts: {} (at most one keep-alive connection each)",
            p.rest.len()
        )?;
        for r in &p.rest {
            writeln!(f, "  {} {}: {}", r.exchange, r.base, r.purposes.join(", "))?;
        }
        writeln!(f, "upstream connections: {}", p.upstream)?;
        match &p.push {
            Some(host) => writeln!(f, "metrics push: 1 ({host}, one keep-alive connection)")?,
            None => writeln!(f, "metrics push: 0")?,
        }
        write!(
            f,
            "budget: {} of {} sockets planned, {} spare for make-before-break rotation",
            p.needed(),
            self.limit,
            self.limit.saturating_sub(p.needed())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(ws: usize, rest: usize) -> Plan {
        let sock = SocketPlan {
            exchange: Exchange::Binance,
            name: SocketName::Spot,
            url: "wss://x".into(),
            streams: vec![],
        };
        let host = RestPlan {
            exchange: Exchange::Binance,
            base: "https://x".into(),
            purposes: vec![],
        };
        Plan {
            sockets: vec![sock; ws],
            rest: vec![host; rest],
            upstream: 1,
            push: None,
        }
    }

    #[test]
    fn a_plan_that_does_not_fit_the_budget_is_refused_with_the_arithmetic() {
        // TC0: exactly fits.
        assert!(plan(4, 3).check(8).is_ok());
        // TC1: one over.
        let err = plan(4, 3).check(7).unwrap_err();
        assert_eq!((err.needed, err.limit), (8, 7));
        assert!(
            err.to_string()
                .contains("4 WebSockets + 3 REST hosts + 1 upstream")
        );
    }

    #[test]
    fn the_metrics_push_holds_a_socket_of_the_plan() {
        let mut p = plan(4, 3);
        p.push = Some("https://prom.example".into());
        // TC0: one more socket needed, and the refusal says why.
        assert_eq!(p.needed(), 9);
        let err = p.check(8).unwrap_err();
        assert!(err.to_string().contains("+ 1 metrics push"), "{err}");
        // TC1: the printed plan names the receiver.
        let text = p.display(10).to_string();
        assert!(
            text.contains("metrics push: 1 (https://prom.example"),
            "{text}"
        );
        assert!(text.contains("budget: 9 of 10 sockets planned"), "{text}");
    }
}
