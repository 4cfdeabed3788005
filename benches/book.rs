//! Cost of one level change in a book side, on the real OKX 2022 capture
//! (`../shared/fixtures/okx`, or `MARKETBOX_FIXTURES`): every level of every update of its 3
//! instruments, decimals already read, applied to books synced from their snapshots. Beside
//! it the layout the book had before its blocks: one flat best-first array of levels with a
//! binary search and a shift of the whole tail per insert or removal (a copy kept here only to
//! compare). Fastest pass of several; a summary line per layout.
//!
//! Run: `cargo bench --bench book`.

use std::hint::black_box;
use std::time::Duration;

mod common;

use common::{fixtures, time_pass};
use marketbox::book::{BOOK_CAPACITY, Book, BookSide, Decimal};

type Change = (usize, BookSide, Decimal, Decimal);

/// The capture as (instrument, side, price, qty): snapshots first, then the updates.
fn load() -> Option<(Vec<Change>, Vec<Change>)> {
    let frames =
        common::raw_frames(&fixtures().join("okx/books_snapshot_and_updates_2022-05-13.jsonl"))?;
    let mut insts: Vec<String> = Vec::new();
    let (mut snaps, mut updates) = (Vec::new(), Vec::new());
    for f in frames {
        let v: serde_json::Value = serde_json::from_str(&f).ok()?;
        let inst = v["arg"]["instId"].as_str()?.to_owned();
        let i = match insts.iter().position(|x| *x == inst) {
            Some(i) => i,
            None => {
                insts.push(inst);
                insts.len() - 1
            }
        };
        let out = if v["action"] == "snapshot" {
            &mut snaps
        } else {
            &mut updates
        };
        for d in v["data"].as_array()? {
            for (key, side) in [("bids", BookSide::Bid), ("asks", BookSide::Ask)] {
                for l in d[key].as_array()? {
                    let p = Decimal::parse(l[0].as_str()?).ok()?;
                    let q = Decimal::parse(l[1].as_str()?).ok()?;
                    out.push((i, side, p, q));
                }
            }
        }
    }
    Some((snaps, updates))
}

/// The flat layout the book had before: one sorted array per side, best first.
#[derive(Default)]
struct Flat {
    bids: Vec<(Decimal, Decimal)>,
    asks: Vec<(Decimal, Decimal)>,
}

impl Flat {
    fn apply(&mut self, side: BookSide, p: Decimal, q: Decimal) {
        let v = match side {
            BookSide::Bid => &mut self.bids,
            BookSide::Ask => &mut self.asks,
        };
        let at = v.binary_search_by(|l| match side {
            BookSide::Bid => p.cmp(&l.0),
            BookSide::Ask => l.0.cmp(&p),
        });
        match at {
            Ok(i) if q.is_zero() => {
                v.remove(i);
            }
            Ok(i) => v[i].1 = q,
            Err(_) if q.is_zero() => {}
            Err(i) if v.len() < BOOK_CAPACITY => v.insert(i, (p, q)),
            Err(_) => {}
        }
    }
}

fn main() {
    let Some((snaps, updates)) = load() else {
        eprintln!(
            "\n!!! SKIPPED: OKX capture not found under {} (set MARKETBOX_FIXTURES) !!!\n",
            fixtures().display()
        );
        return;
    };
    let n = updates.len();
    if !common::timed() {
        return;
    }
    let budget = Duration::from_secs(3);
    let blocks = time_pass(
        budget,
        || {
            let mut books: Vec<Box<Book<BOOK_CAPACITY>>> =
                (0..3).map(|_| Book::new_boxed()).collect();
            for &(i, side, p, q) in &snaps {
                books[i].apply(side, p, q);
            }
            books
        },
        |books| {
            for &(i, side, p, q) in &updates {
                black_box(books[i].apply(side, black_box(p), black_box(q)));
            }
        },
    );
    let flat = time_pass(
        budget,
        || {
            let mut books: Vec<Flat> = (0..3)
                .map(|_| Flat {
                    bids: Vec::with_capacity(BOOK_CAPACITY),
                    asks: Vec::with_capacity(BOOK_CAPACITY),
                })
                .collect();
            for &(i, side, p, q) in &snaps {
                books[i].apply(side, p, q);
            }
            books
        },
        |books| {
            for &(i, side, p, q) in &updates {
                books[i].apply(side, black_box(p), black_box(q));
                black_box(&books[i]);
            }
        },
    );
    let per = |d: Duration| d.as_nanos() as f64 / n as f64;
    eprintln!("{n} level changes over 3 instruments");
    eprintln!(
        "ns per level change: book (blocks of levels) {:.1}",
        per(blocks)
    );
    eprintln!(
        "ns per level change: flat best-first array (the old layout) {:.1}",
        per(flat)
    );
}
