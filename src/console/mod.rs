//! The console (DESIGN rule 7): status and live configuration over a serial tty, stdio or a
//! Unix socket.

pub mod command;
pub mod line;
pub mod store;
