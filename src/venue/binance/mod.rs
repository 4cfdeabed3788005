//! Binance: spot and USD-M perpetual.

pub mod sync;
pub mod wire;
