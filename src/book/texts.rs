//! Level texts kept from one book to the next.
//!
//! Design: a book changes a few levels from one update to the next, yet whatever writes its
//! top levels as text (the OKX checksum, the JSON message) would write every decimal again.
//! A [`LevelText`] is one level's text framed as its user needs it (`price:size`,
//! `["price","size"]`) with the level it was written from; [`reuse`] matches the texts kept
//! from the last book to the levels of the current one by one walk down a side (both are
//! sorted best first) and hands back a kept text only when the price and the size have the
//! same digits, so the text is always what writing it afresh would give, whatever happened
//! to the book in between (a resync included). [`text_for`] goes one step further for the
//! commonest change, a new size at a price the book had: the kept text's opening and price
//! are copied and only the size is written.
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
    /// Where the size's digits start (after the opening, the price and the separator); 0
    /// when the text was not kept.
    qty_at: u8,
    text: [u8; N],
}

impl<const N: usize> LevelText<N> {
    /// `open`, the price, `sep`, the size and `close`, written in place.
    pub fn new(price: Decimal, qty: Decimal, [open, sep, close]: [&[u8]; 3]) -> Self {
        let mut t = LevelText {
            price,
            qty,
            len: 0,
            qty_at: 0,
            text: [0; N],
        };
        let Some(dst) = t.text.get_mut(..open.len()) else {
            return t;
        };
        dst.copy_from_slice(open);
        let mut at = open.len();
        let n = t
            .text
            .get_mut(at..)
            .map_or(0, |rest| price.write_ascii_at(rest));
        if n == 0 {
            return t;
        }
        at += n;
        let Some(dst) = t.text.get_mut(at..at + sep.len()) else {
            return t;
        };
        dst.copy_from_slice(sep);
        t.write_qty(at + sep.len(), close);
        t
    }

    /// This text with another size: the opening, price and separator as they are, the size
    /// and `close` written after them. Only for a kept text (`qty_at > 0`).
    fn with_qty(&self, qty: Decimal, close: &[u8]) -> Self {
        let mut t = *self;
        t.qty = qty;
        t.len = 0;
        t.write_qty(usize::from(self.qty_at), close);
        t
    }

    /// Writes the size at `at`, then `close`, and marks the text kept when all of it fits.
    fn write_qty(&mut self, at: usize, close: &[u8]) {
        let n = self
            .text
            .get_mut(at..)
            .map_or(0, |rest| self.qty.write_ascii_at(rest));
        if n == 0 {
            return;
        }
        let end = at + n;
        let Some(dst) = self.text.get_mut(end..end + close.len()) else {
            return;
        };
        dst.copy_from_slice(close);
        // At most `N` bytes were written; `N` is a small constant of the callers.
        if let (Ok(len), Ok(qty_at)) = (u8::try_from(end + close.len()), u8::try_from(at)) {
            self.len = len;
            self.qty_at = qty_at;
        }
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

/// The text of the level `(price, qty)` of `side`, framed by `frame`. `kept` is the same side
/// of the last book (best first) and `j` the walk's position in it, moved past the kept
/// levels that are gone from the book and past this price when it has the same digits. The
/// kept text comes back when the price and the size have the same digits; when only the size
/// changed, the kept text's opening and price with the new size written after them; else
/// the text is written afresh. Always the bytes [`LevelText::new`] would write.
#[inline]
pub fn text_for<const N: usize>(
    kept: &[LevelText<N>],
    j: &mut usize,
    side: BookSide,
    price: Decimal,
    qty: Decimal,
    frame: [&[u8]; 3],
) -> LevelText<N> {
    match walk(kept, j, side, price) {
        Some(k) if k.qty_at > 0 && k.qty.is_identical(qty) => *k,
        Some(k) if k.qty_at > 0 => k.with_qty(qty, frame[2]),
        _ => LevelText::new(price, qty, frame),
    }
}

/// The kept text with `price`'s digits, walking `j` past kept levels that are gone from the
/// book and past this price; `None` when the book's level is new.
#[inline]
fn walk<'a, const N: usize>(
    kept: &'a [LevelText<N>],
    j: &mut usize,
    side: BookSide,
    price: Decimal,
) -> Option<&'a LevelText<N>> {
    loop {
        let k = kept.get(*j)?;
        // The same digits first: the common case, and cheaper than ordering two decimals
        // written with different numbers of places.
        if k.price.is_identical(price) {
            *j += 1;
            return Some(k);
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

    fn text<const N: usize>(t: &LevelText<N>) -> Option<&[u8]> {
        t.padded().map(|(b, n)| &b[..n])
    }

    #[test]
    fn a_text_is_framed_or_not_kept_and_reused_only_with_the_same_digits() {
        // TC0: framed as asked; too long for the buffer: not kept.
        let t = LevelText::<16>::new(d("3366.1"), d("7"), [b"[", b",", b"]"]);
        assert_eq!(text(&t), Some(&b"[3366.1,7]"[..]));
        let long = LevelText::<8>::new(d("3366.1"), d("7"), [b"[", b",", b"]"]);
        assert!(long.padded().is_none());
        // TC1: a walk down the bids. The kept texts are framed `<p|q>` and the new ones
        // `[p,q]`, so what was taken from a kept text shows: a gone level is skipped, the same
        // digits are the kept text, a new size keeps the kept price (and opening), other
        // digits of the same price are written afresh, and the walk moves past each.
        let old = [&b"<"[..], b"|", b">"];
        let new = [&b"["[..], b",", b"]"];
        let kept = [
            LevelText::<16>::new(d("10"), d("1"), old),
            LevelText::new(d("9"), d("1"), old),
            LevelText::new(d("8"), d("1"), old),
            LevelText::new(d("7"), d("1"), old),
        ];
        let mut j = 0;
        let t = text_for(&kept, &mut j, BookSide::Bid, d("9"), d("1"), new);
        assert_eq!((text(&t), j), (Some(&b"<9|1>"[..]), 2));
        let t = text_for(&kept, &mut j, BookSide::Bid, d("8"), d("2.50"), new);
        assert_eq!((text(&t), j), (Some(&b"<8|2.50]"[..]), 3));
        assert!(t.qty().is_identical(d("2.50")) && t.price().is_identical(d("8")));
        let t = text_for(&kept, &mut j, BookSide::Bid, d("7.0"), d("1"), new);
        assert_eq!(text(&t), Some(&b"[7.0,1]"[..]));
        // TC2: the asks walk the other way; a price between two kept ones is new.
        let asks = [
            LevelText::<16>::new(d("7"), d("1"), old),
            LevelText::new(d("8"), d("1"), old),
        ];
        let mut j = 0;
        let t = text_for(&asks, &mut j, BookSide::Ask, d("7.5"), d("1"), new);
        assert_eq!((text(&t), j), (Some(&b"[7.5,1]"[..]), 1));
        let t = text_for(&asks, &mut j, BookSide::Ask, d("8"), d("1"), new);
        assert_eq!((text(&t), j), (Some(&b"<8|1>"[..]), 2));
        // TC3: a new size too long for the buffer: not kept, and not reused next time.
        let kept = [LevelText::<8>::new(d("9"), d("1"), new)];
        let mut j = 0;
        let t = text_for(&kept, &mut j, BookSide::Bid, d("9"), d("123456"), new);
        assert!(t.padded().is_none());
        let t = text_for(&[t], &mut 0, BookSide::Bid, d("9"), d("1"), new);
        assert_eq!(text(&t), Some(&b"[9,1]"[..]));
    }

    #[test]
    fn reused_texts_are_always_what_writing_afresh_gives() {
        // Random books one after the other (prices on a small grid, written with one or two
        // places; sizes of any length, some too long for the buffer): every text the walk
        // hands out is the bytes `LevelText::new` writes for its level.
        let mut rng = fastrand::Rng::with_seed(40);
        let frame = [&b"[\""[..], b"\",\"", b"\"]"];
        for side in [BookSide::Bid, BookSide::Ask] {
            let mut kept: Vec<LevelText<24>> = Vec::new();
            for round in 0..5_000 {
                let mut prices: Vec<Decimal> = (0..rng.usize(0..12))
                    .map(|_| {
                        let tick = rng.i64(1..30);
                        match rng.bool() {
                            true => Decimal::new(tick * 10, 1),
                            false => Decimal::new(tick * 100, 2),
                        }
                    })
                    .collect();
                prices.sort_by(|a, b| match side {
                    BookSide::Bid => b.cmp(a),
                    BookSide::Ask => a.cmp(b),
                });
                prices.dedup_by(|a, b| a == b);
                let mut j = 0;
                let next: Vec<LevelText<24>> = prices
                    .iter()
                    .map(|&p| {
                        let digits = rng.u32(1..16);
                        let q = Decimal::new(rng.i64(1..10i64.pow(digits)), rng.u8(0..6));
                        let t = text_for(&kept, &mut j, side, p, q, frame);
                        let fresh = LevelText::<24>::new(p, q, frame);
                        assert_eq!(text(&t), text(&fresh), "round {round}: {p} {q}");
                        assert!(t.price().is_identical(p) && t.qty().is_identical(q));
                        t
                    })
                    .collect();
                kept = next;
            }
        }
    }
}
