//! OKX v5: spot and USDT-margined swaps on one public socket.
//!
//! Owns: OKX URLs, instrument spelling (`BTC-USDT`, `BTC-USDT-SWAP`), channel names, and
//! split as Binance's is: frames and REST bodies (`wire`), subscriptions and their budget
//! (`subs`), the seqId/checksum book machine (`book`), the per-socket protocol (`feed`) and
//! the rubik pollers (`poll`). Must not touch: sockets or other venues.

pub mod book;
pub mod feed;
pub mod poll;
pub mod subs;
pub mod wire;

use crate::config::Config;
use crate::model::{Channel, Exchange, Market, Symbol};
use crate::plan::{Plan, RestPlan, SocketName, SocketPlan, StreamPlan};
use crate::venue::PlanError;

/// `BTC-USDT` (spot) or `BTC-USDT-SWAP` (perpetual).
pub fn inst_id(market: Market, symbol: &Symbol) -> String {
    match market {
        Market::Spot => symbol.as_str().to_owned(),
        Market::Perpetual => format!("{symbol}-SWAP"),
    }
}

/// Adds the OKX socket (shared by spot and swaps) and REST host to the plan.
pub fn plan(cfg: &Config, plan: &mut Plan) -> Result<(), PlanError> {
    let ep = &cfg.venues.okx;
    let mut socket = SocketPlan {
        exchange: Exchange::Okx,
        name: SocketName::Public,
        url: ep.ws.as_str().to_owned(),
        streams: Vec::new(),
    };
    let mut purposes = Vec::new();
    for feed in cfg.feeds().filter(|f| f.exchange == Exchange::Okx) {
        for symbol in &feed.symbols {
            let inst = inst_id(feed.market, symbol);
            for &channel in &feed.channels {
                let wire = match channel {
                    Channel::Orderbook => format!("books:{inst}"),
                    Channel::Trade => format!("trades:{inst}"),
                    Channel::FundingRate => format!("funding-rate:{inst}"),
                    Channel::OpenInterest => format!("open-interest:{inst}"),
                    Channel::Liquidation => "liquidation-orders:SWAP".to_owned(),
                    Channel::LsrTopPosition | Channel::LsrAllAccount => {
                        let p = format!("{channel} ({})", feed.market);
                        if !purposes.contains(&p) {
                            purposes.push(p);
                        }
                        continue;
                    }
                };
                if channel == Channel::Orderbook {
                    let p = format!("orderbook snapshots ({})", feed.market);
                    if !purposes.contains(&p) {
                        purposes.push(p);
                    }
                }
                socket.streams.push(StreamPlan {
                    market: feed.market,
                    symbol: *symbol,
                    channel,
                    wire,
                });
            }
        }
    }
    if !socket.streams.is_empty() {
        plan.sockets.push(socket);
    }
    if !purposes.is_empty() {
        plan.rest.push(RestPlan {
            exchange: Exchange::Okx,
            base: format!("{}://{}", ep.rest.scheme(), ep.rest.authority()),
            purposes,
        });
    }
    Ok(())
}
