//! Order books: exact decimals and fixed-capacity sides.
//!
//! Owns: `Decimal` and the `Book` type. Must not touch: any venue's wire format or sync rule
//! (those live in `venue/<name>/`), sockets, or publishing.

mod decimal;

pub use decimal::{DECIMAL_TEXT_MAX, Decimal, DecimalError, MAX_DIGITS};

mod levels;

pub use levels::{Applied, BOOK_CAPACITY, Book, BookSide, Level, Truncated};
