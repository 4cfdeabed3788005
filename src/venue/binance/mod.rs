//! Binance: spot and USD-M perpetual.
//!
//! Owns: Binance URLs and stream names, symbol spelling (`btcusdt`, `BTCUSDT`), frame parsing
//! (`wire`), the book sync rules (`sync`) and the per-socket protocol the session drives.
//! Must not touch: sockets (the session owns them) or other venues.
//!
//! Where streams live (2026): spot serves everything from one combined-stream socket. USD-M
//! routes by path since 2026-04-23: `/public` serves `@depth*`, `@bookTicker` and `@trade`;
//! `/market` serves `@aggTrade`, `@markPrice`, `@forceOrder` (a legacy root URL silently
//! delivers only the `/public` tier). So the perpetual market is two sockets.

pub mod feed;
pub mod poll;
pub mod sync;
pub mod wire;

use crate::config::Config;
use crate::model::{Channel, Exchange, Market, Symbol};
use crate::plan::{Plan, RestPlan, SocketName, SocketPlan, StreamPlan};
use crate::venue::PlanError;

/// The protocol of one planned Binance socket.
pub fn protocol_for(
    socket: &SocketPlan,
    market: Market,
    cfg: &Config,
    metrics: &std::sync::Arc<crate::metrics::Metrics>,
) -> Option<Box<dyn crate::session::Protocol>> {
    Some(Box::new(feed::BinanceProtocol::new(
        socket,
        market,
        cfg,
        metrics.clone(),
    )))
}

/// Most streams Binance serves on one connection.
pub const MAX_STREAMS_PER_SOCKET: usize = 1024;

/// `btcusdt`: the stream-name spelling of a symbol.
pub fn stream_symbol(symbol: &Symbol) -> String {
    let mut s = String::with_capacity(symbol.as_str().len());
    s.push_str(&symbol.base().to_ascii_lowercase());
    s.push_str(&symbol.quote().to_ascii_lowercase());
    s
}

/// `BTCUSDT`: the REST spelling of a symbol.
pub fn rest_symbol(symbol: &Symbol) -> String {
    let mut s = String::with_capacity(symbol.as_str().len());
    s.push_str(symbol.base());
    s.push_str(symbol.quote());
    s
}

/// The stream a channel maps to, and which USD-M socket serves it; `None` for REST-only
/// channels.
fn stream_of(market: Market, channel: Channel, sym: &str) -> Option<(SocketName, String)> {
    let (socket, name) = match (market, channel) {
        (Market::Spot, Channel::Orderbook) => (SocketName::Spot, format!("{sym}@depth@100ms")),
        (Market::Spot, Channel::Trade) => (SocketName::Spot, format!("{sym}@trade")),
        (Market::Perpetual, Channel::Orderbook) => {
            (SocketName::PerpetualPublic, format!("{sym}@depth@100ms"))
        }
        (Market::Perpetual, Channel::Trade) => {
            (SocketName::PerpetualPublic, format!("{sym}@trade"))
        }
        (Market::Perpetual, Channel::FundingRate) => {
            (SocketName::PerpetualMarket, format!("{sym}@markPrice@1s"))
        }
        (Market::Perpetual, Channel::Liquidation) => {
            (SocketName::PerpetualMarket, format!("{sym}@forceOrder"))
        }
        _ => return None,
    };
    Some((socket, name))
}

/// Adds Binance's sockets and REST hosts to the plan.
pub fn plan(cfg: &Config, plan: &mut Plan) -> Result<(), PlanError> {
    let ep = &cfg.venues.binance;
    for feed in cfg.feeds().filter(|f| f.exchange == Exchange::Binance) {
        let mut sockets: Vec<SocketPlan> = Vec::new();
        let mut rest_purposes = Vec::new();
        for symbol in &feed.symbols {
            let sym = stream_symbol(symbol);
            for &channel in &feed.channels {
                match stream_of(feed.market, channel, &sym) {
                    Some((socket, wire)) => {
                        let pos = match sockets.iter().position(|s| s.name == socket) {
                            Some(p) => p,
                            None => {
                                let base = match socket {
                                    SocketName::Spot => &ep.spot_ws,
                                    SocketName::PerpetualPublic => &ep.perpetual_public_ws,
                                    _ => &ep.perpetual_market_ws,
                                };
                                sockets.push(SocketPlan {
                                    exchange: Exchange::Binance,
                                    name: socket,
                                    url: format!("{}/stream", base.as_str()),
                                    streams: Vec::new(),
                                });
                                sockets.len() - 1
                            }
                        };
                        sockets[pos].streams.push(StreamPlan {
                            market: feed.market,
                            symbol: *symbol,
                            channel,
                            wire,
                        });
                    }
                    None => {
                        let purpose = format!("{channel} ({})", feed.market);
                        if !rest_purposes.contains(&purpose) {
                            rest_purposes.push(purpose);
                        }
                    }
                }
                if channel == Channel::Orderbook {
                    let purpose = format!("orderbook snapshots ({})", feed.market);
                    if !rest_purposes.contains(&purpose) {
                        rest_purposes.push(purpose);
                    }
                }
            }
        }
        for s in &sockets {
            if s.streams.len() > MAX_STREAMS_PER_SOCKET {
                return Err(PlanError {
                    exchange: Exchange::Binance,
                    reason: format!(
                        "{} socket would carry {} streams; Binance serves at most {MAX_STREAMS_PER_SOCKET} per connection",
                        s.name,
                        s.streams.len()
                    ),
                });
            }
        }
        plan.sockets.extend(sockets);
        if !rest_purposes.is_empty() {
            let base = match feed.market {
                Market::Spot => &ep.spot_rest,
                Market::Perpetual => &ep.perpetual_rest,
            };
            let base = format!("{}://{}", base.scheme(), base.authority());
            match plan.rest.iter_mut().find(|r| r.base == base) {
                Some(r) => r.purposes.extend(rest_purposes),
                None => plan.rest.push(RestPlan {
                    exchange: Exchange::Binance,
                    base,
                    purposes: rest_purposes,
                }),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_spelled_the_binance_way() {
        let s = Symbol::parse("BTC-USDT").expect("a valid symbol");
        assert_eq!(
            (stream_symbol(&s), rest_symbol(&s)),
            ("btcusdt".into(), "BTCUSDT".into())
        );
    }
}
