//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// Where the shared exchange captures are: `MARKETBOX_FIXTURES`, else `../shared/fixtures`
/// beside the repository. `None` (after a loud message) when the folder is absent.
pub fn fixtures() -> Option<PathBuf> {
    let dir = std::env::var_os("MARKETBOX_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"));
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "\n!!! SKIPPED: exchange captures not found at {} (set MARKETBOX_FIXTURES) !!!\n",
            dir.display()
        );
        None
    }
}

/// The `raw` frames of a `{"recv_ts","raw"}` JSONL capture.
pub fn raw_frames(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["raw"].as_str().unwrap().to_owned()
        })
        .collect()
}
