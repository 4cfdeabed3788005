//! marketbox: a market-data appliance.
//!
//! One WebSocket per exchange-market under a hard connection budget, verified order books in
//! fixed-capacity buffers, normalized messages forwarded upstream. See `README.md` and the
//! module docs: each says what it owns and what it must not touch.

pub mod app;
pub mod book;
pub mod budget;
pub mod config;
pub mod console;
pub mod decimal;
pub mod encode;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod model;
pub mod net;
pub mod plan;
pub mod session;
#[cfg(test)]
mod testutil;
pub mod time;
pub mod upstream;
pub mod venue;
pub mod watch;
