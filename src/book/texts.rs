//! Level texts kept from one book to the next.
//!
//! Design: a book changes a few levels from one update to the next, yet whatever writes its
//! top levels as text (the OKX checksum, the JSON message) would write every decimal again.
//! A [`LevelText`] is one level's text framed as its user needs it (`price:size`,
//! `["price","size"]`) with the level it was written from; [`reuse`] matches the texts kept
//! from the last book to the levels of the current one by one walk down a side (both are
//! sorted best first) and hands back a kept text only when the price and the size have the
//! same digits, so the text is always what writing it afresh would give, whatever happened
//! to the book in between (a resync included).
//!
//! Owns: the texts and their matching. Must not touch: what the text is for (hashing,
//! encoding) or the book itself.

use super::{BookSide, Decimal};

/// One level's text in at most `N` bytes, and the level it was written from; not kept (its
/// user writes it afresh) when it does not fit.
#[derive(Debug, Clone, Copy)]
pub struct LevelText<const N: usize> {
    price: Decimal,
    qty: Decimal,
    len: u8,
    text: [u8; N],
}

impl<const N: usize> LevelText<N> {
    /// `open`, the price, `sep`, the size and `close`, written in place.
    pub fn new(price: Decimal, qty: Decimal, [open, sep, close]: [&[u8]; 3]) -> Self {
        let mut t = LevelText {
            price,
            qty,
            len: 0,
            text: [0; N],
        };
        let mut at = 0;
        for (i, part) in [open, sep, close].into_iter().enumerate() {
            let Some(dst) = t.text.get_mut(at..at + part.len()) else {
                return t;
            };
            dst.copy_from_slice(part);
            at += part.len();
            if i == 2 {
                break;
            }
            let d = if i == 0 { price } else { qty };
            let n = t
                .text
                .get_mut(at..)
                .map_or(0, |rest| d.write_ascii_at(rest));
            if n == 0 {
                return t;
            }
            at += n;
        }
        // At most `N` bytes were written; `N` is a small constant of the callers.
        t.len = u8::try_from(at).unwrap_or(0);
        t
    }

    /// The whole buffer and the length of the text at its start (a caller copies all `N`
    /// bytes, a fixed-size copy without a call, and keeps `len`); `None` when not kept.
    pub fn padded(&self) -> Option<(&[u8; N], usize)> {
        (self.len > 0).then_some((&self.text, usize::from(self.len)))
    }

    pub fn price(&self) -> Decimal {
        self.price
    }

    pub fn qty(&self) -> Decimal {
        self.qty
    }
}

/// The kept text for the level `(price, qty)` of `side`, walked best first: `kept` is the same
/// side of the last book (best first) and `j` the walk's position in it, moved past the kept
/// levels that are gone from the book and past this price when it has the same digits. A kept
/// text comes back only when the price and the size have the same digits and the text was
/// kept.
pub fn reuse<'a, const N: usize>(
    kept: &'a [LevelText<N>],
    j: &mut usize,
    side: BookSide,
    price: Decimal,
    qty: Decimal,
) -> Option<&'a LevelText<N>> {
    loop {
        let k = kept.get(*j)?;
        // The same digits first: the common case, and cheaper than ordering two decimals
        // written with different numbers of places.
        if k.price.is_identical(price) {
            *j += 1;
            return (k.qty.is_identical(qty) && k.len > 0).then_some(k);
        }
        // Kept levels better than this one are gone from the book.
        let gone = match side {
            BookSide::Bid => k.price > price,
            BookSide::Ask => k.price < price,
        };
        if !gone {
            return None;
        }
        *j += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).expect("a valid decimal")
    }

    #[test]
    fn a_text_is_framed_or_not_kept_and_reused_only_with_the_same_digits() {
        // TC0: framed as asked; too long for the buffer: not kept.
        let t = LevelText::<16>::new(d("3366.1"), d("7"), [b"[", b",", b"]"]);
        assert_eq!(t.padded().map(|(b, n)| &b[..n]), Some(&b"[3366.1,7]"[..]));
        let long = LevelText::<8>::new(d("3366.1"), d("7"), [b"[", b",", b"]"]);
        assert!(long.padded().is_none());
        // TC1: a walk down the bids: a gone level is skipped, another size or other digits of
        // the same price are not reused, and the walk moves past them.
        let frame = [&b""[..], b":", b""];
        let kept = [
            LevelText::<16>::new(d("10"), d("1"), frame),
            LevelText::new(d("9"), d("1"), frame),
            LevelText::new(d("8"), d("1"), frame),
            LevelText::new(d("7"), d("1"), frame),
        ];
        let mut j = 0;
        assert!(reuse(&kept, &mut j, BookSide::Bid, d("9"), d("1")).is_some());
        assert_eq!(j, 2);
        assert!(reuse(&kept, &mut j, BookSide::Bid, d("8"), d("2")).is_none());
        assert_eq!(j, 3);
        assert!(reuse(&kept, &mut j, BookSide::Bid, d("7.0"), d("1")).is_none());
        // TC2: the asks walk the other way.
        let mut j = 0;
        let asks = [
            LevelText::<16>::new(d("7"), d("1"), frame),
            LevelText::new(d("8"), d("1"), frame),
        ];
        assert!(reuse(&asks, &mut j, BookSide::Ask, d("8"), d("1")).is_some());
    }
}
