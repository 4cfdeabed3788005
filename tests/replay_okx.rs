//! Replays the real 2022 OKX `books` capture: every checksum verifies, every book matches an
//! independent reference book at full depth after every message, and a corrupted update is
//! caught and resynced.

mod common;

use std::collections::{BTreeMap, HashMap};

use marketbox::book::BookSide;
use marketbox::venue::okx::book::{OkxBook, OkxEvent, ResyncReason as OkxResync};
use marketbox::venue::okx::feed::{LevelBuf, parse_books_push};

/// (bids, asks) of (price, size) strings, best first.
type TextBook = (Vec<(String, String)>, Vec<(String, String)>);

/// A price as an exactly ordered key: (integer part, fraction digits padded to 18).
fn key(price: &str) -> (u64, u64) {
    let (int, frac) = price.split_once('.').unwrap_or((price, ""));
    assert!(frac.len() <= 18, "{price}");
    let frac: u64 = format!("{frac:0<18}").parse().unwrap();
    (int.parse().unwrap(), frac)
}

/// The reference: each side a map from price to the venue's (price, size) strings, built from
/// `serde_json::Value` and nothing of marketbox.
#[derive(Default)]
struct Reference {
    bids: BTreeMap<(u64, u64), (String, String)>,
    asks: BTreeMap<(u64, u64), (String, String)>,
}

impl Reference {
    fn apply(&mut self, data: &serde_json::Value, snapshot: bool) {
        if snapshot {
            *self = Reference::default();
        }
        for (side, name) in [(&mut self.bids, "bids"), (&mut self.asks, "asks")] {
            for l in data[name].as_array().unwrap() {
                let (p, q) = (l[0].as_str().unwrap(), l[1].as_str().unwrap());
                let zero = q.trim_start_matches(['0', '.']).is_empty();
                if zero {
                    side.remove(&key(p));
                } else {
                    side.insert(key(p), (p.to_owned(), q.to_owned()));
                }
            }
        }
    }

    /// Best first.
    fn levels(&self) -> TextBook {
        (
            self.bids.values().rev().cloned().collect(),
            self.asks.values().cloned().collect(),
        )
    }
}

fn ours(book: &OkxBook) -> TextBook {
    let b = book.book().expect("synced");
    let side = |s| {
        b.levels(s)
            .map(|l| (l.price.to_string(), l.qty.to_string()))
            .collect()
    };
    (side(BookSide::Bid), side(BookSide::Ask))
}

struct Replay {
    verified: usize,
    compared: usize,
    resyncs: Vec<(String, OkxResync)>,
}

/// Which frame to rewrite, and how.
type Corrupt<'a> = Option<(usize, &'a dyn Fn(&str) -> String)>;

/// Replays the capture; `corrupt` rewrites one frame first.
fn replay(corrupt: Corrupt<'_>) -> Option<Replay> {
    let dir = common::fixtures()?;
    let frames = common::raw_frames(&dir.join("okx/books_snapshot_and_updates_2022-05-13.jsonl"));
    let mut books: HashMap<String, OkxBook> = HashMap::new();
    let mut refs: HashMap<String, Reference> = HashMap::new();
    let mut r = Replay {
        verified: 0,
        compared: 0,
        resyncs: Vec::new(),
    };
    for (i, raw) in frames.iter().enumerate() {
        let raw = match corrupt {
            Some((at, f)) if at == i => f(raw),
            _ => raw.clone(),
        };
        let mut buf = LevelBuf::new();
        let push = parse_books_push(&raw, &mut buf).expect("a books push");
        let inst = push.inst_id.to_owned();
        let value: serde_json::Value = serde_json::from_str(&raw).unwrap();
        let reference = refs.entry(inst.clone()).or_default();
        reference.apply(&value["data"][0], push.snapshot);
        let book = books.entry(inst.clone()).or_default();
        for d in &push.entries {
            assert_ne!(
                d.checksum.unwrap_or(0),
                0,
                "the 2022 capture carries checksums"
            );
            let ev = if push.snapshot {
                book.on_ws_snapshot(d)
            } else {
                book.on_update(d)
            };
            match ev {
                OkxEvent::Applied { .. } => {
                    r.verified += 1;
                    assert_eq!(
                        ours(book),
                        reference.levels(),
                        "frame {i} ({inst}): the book differs from the reference"
                    );
                    r.compared += 1;
                }
                OkxEvent::Resync(why) => r.resyncs.push((inst.clone(), why)),
                _ => {}
            }
        }
    }
    Some(r)
}

#[test]
fn all_290_checksums_of_the_2022_capture_verify_and_every_book_matches_at_full_depth() {
    let Some(r) = replay(None) else {
        return;
    };
    assert!(r.resyncs.is_empty(), "{:?}", r.resyncs);
    assert_eq!(r.verified, 290);
    assert_eq!(r.compared, 290);
}

#[test]
fn a_corrupted_update_is_caught_by_the_checksum_and_resyncs_its_instrument() {
    // Frame 4 is a BTC-USDT update; change the first ask size it carries.
    let corrupt = |raw: &str| raw.replacen("\"1.2112\"", "\"1.2113\"", 1);
    let Some(r) = replay(Some((4, &corrupt))) else {
        return;
    };
    let first = r.resyncs.first().expect("the corruption went unnoticed");
    assert_eq!(first.0, "BTC-USDT");
    assert!(matches!(first.1, OkxResync::Checksum { .. }), "{first:?}");
    // Only that instrument is affected; until a new snapshot it publishes nothing, and the
    // other two instruments keep verifying every update.
    assert!(
        r.resyncs.iter().all(|(inst, _)| inst == "BTC-USDT"),
        "{:?}",
        r.resyncs
    );
    assert!(r.verified < 290);
    assert!(r.verified >= 290 - 98, "{}", r.verified);
}
