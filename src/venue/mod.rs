//! Venues: everything exchange-specific lives in one folder per exchange.

pub mod binance;
pub mod json;
