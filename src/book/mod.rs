//! Order books: exact decimals and fixed-capacity sides.
//!
//! Owns: `Decimal` and the `Book` type. Must not touch: any venue's wire format or sync rule
//! (those live in `venue/<name>/`), sockets, or publishing.

mod decimal;

pub use decimal::{Decimal, DecimalError, MAX_DIGITS};

mod book;
#[allow(unused_imports)]
pub use book::*;
