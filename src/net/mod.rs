//! Outgoing sockets: TLS, WebSocket and REST, each holding a budget permit.
//!
//! Owns: connecting, TLS verification (webpki roots + `[tls] extra_ca`, never disabled), frame
//! and body size limits. Must not touch: venue formats, books or publishing.

pub mod http;
pub mod tls;
pub mod ws;
