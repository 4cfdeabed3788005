//! Replays the real 2022 OKX `books` capture: every checksum verifies, and a corrupted update
//! is caught and resynced.

mod common;

use std::collections::HashMap;

use marketbox::venue::okx::book::{BookData, OkxBook, OkxEvent, OkxResync};

#[derive(serde::Deserialize)]
struct Msg<'a> {
    #[serde(borrow)]
    arg: HashMap<&'a str, &'a str>,
    #[serde(borrow)]
    action: &'a str,
    #[serde(borrow)]
    data: Vec<BookData<'a>>,
}

/// Which frame to rewrite, and how.
type Corrupt<'a> = Option<(usize, &'a dyn Fn(&str) -> String)>;

/// Replays the capture; `corrupt` rewrites one frame first. Returns (verified, resyncs).
fn replay(corrupt: Corrupt<'_>) -> Option<(usize, Vec<(String, OkxResync)>)> {
    let dir = common::fixtures()?;
    let frames = common::raw_frames(&dir.join("okx/books_snapshot_and_updates_2022-05-13.jsonl"));
    let mut books: HashMap<String, OkxBook> = HashMap::new();
    let (mut verified, mut resyncs) = (0, Vec::new());
    for (i, raw) in frames.iter().enumerate() {
        let raw = match corrupt {
            Some((at, f)) if at == i => f(raw),
            _ => raw.clone(),
        };
        let msg: Msg<'_> = serde_json::from_str(&raw).unwrap();
        let inst = msg.arg["instId"].to_owned();
        let book = books.entry(inst.clone()).or_default();
        for d in &msg.data {
            assert_ne!(
                d.checksum.unwrap_or(0),
                0,
                "the 2022 capture carries checksums"
            );
            let ev = if msg.action == "snapshot" {
                book.on_ws_snapshot(d)
            } else {
                book.on_update(d)
            };
            match ev {
                OkxEvent::Applied { .. } => verified += 1,
                OkxEvent::Resync(r) => resyncs.push((inst.clone(), r)),
                _ => {}
            }
        }
    }
    Some((verified, resyncs))
}

#[test]
fn all_290_checksums_of_the_2022_capture_verify() {
    let Some((verified, resyncs)) = replay(None) else {
        return;
    };
    assert!(resyncs.is_empty(), "{resyncs:?}");
    assert_eq!(verified, 290);
}

#[test]
fn a_corrupted_update_is_caught_by_the_checksum_and_resyncs_its_instrument() {
    // Frame 4 is a BTC-USDT update; change the first ask size it carries.
    let corrupt = |raw: &str| {
        raw.replacen("\\\"1.2112\\\"", "\\\"1.2113\\\"", 1)
            .replacen("\"1.2112\"", "\"1.2113\"", 1)
    };
    let Some((verified, resyncs)) = replay(Some((4, &corrupt))) else {
        return;
    };
    let first = resyncs.first().expect("the corruption went unnoticed");
    assert_eq!(first.0, "BTC-USDT");
    assert!(matches!(first.1, OkxResync::Checksum { .. }), "{first:?}");
    // Only that instrument is affected; until a new snapshot it publishes nothing.
    assert!(
        resyncs.iter().all(|(inst, _)| inst == "BTC-USDT"),
        "{resyncs:?}"
    );
    assert!(verified < 290);
}
