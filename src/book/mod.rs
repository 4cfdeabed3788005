//! Order books: fixed-capacity sides, and the venue-neutral part of keeping them verified.
//!
//! Owns: the `Book` type (`levels`) and the book-sync toolkit every venue's machine uses
//! (`sync`), and the level texts kept from one book to the next (`texts`). Must not touch: any venue's wire format or continuity rule (those live in
//! `venue/<name>/`), sockets, publishing or the message model (`Decimal` is a leaf module,
//! re-exported here).

pub use crate::decimal::{DECIMAL_TEXT_MAX, Decimal, DecimalError, MAX_DIGITS};

mod levels;

pub use levels::{Applied, BOOK_CAPACITY, Book, BookSide, Level, Truncated};

pub mod sync;
pub mod texts;
