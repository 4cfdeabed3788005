//! The fuzz targets of `marketbox::fuzzing`, swept on the stable toolchain: seeds (hand-made
//! and, when the shared captures are there, real venue frames) mutated by a seeded PRNG for a
//! few seconds per target. Each target asserts its own invariants (no panic; no published book
//! crossed, negative or unequal to its reference book). A failing input is written to
//! `target/fuzz-failures/` and named in the failure.
//!
//! `MARKETBOX_FUZZ_SECS` sets the seconds per target (default 2); `MARKETBOX_FUZZ_SEED` the
//! PRNG seed (default: fixed, so a run is repeatable). Coverage-guided fuzzing of the same
//! targets: `fuzz/` (cargo-fuzz).

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use marketbox::fuzzing::TARGETS;

/// Values that sit on edges: zero, the types' maxima, negatives, junk.
const INTERESTING: [&str; 12] = [
    "0",
    "-1",
    "1",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "99999999999999999999999",
    "1e9",
    "0.000000000000000000001",
    "null",
    "\"\"",
];

fn mutate(rng: &mut fastrand::Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.usize(1..=8) {
        let len = v.len();
        match rng.u8(..7) {
            0 if len > 0 => {
                let i = rng.usize(..len);
                v[i] ^= 1 << rng.u8(..8);
            }
            1 if len > 0 => {
                let i = rng.usize(..len);
                v[i] = *rng.choice(b"0-9\",[]{}.:e \\".iter()).unwrap_or(&b'0');
            }
            2 => {
                let i = rng.usize(..=len);
                v.insert(i, rng.u8(..));
            }
            3 if len > 1 => {
                let a = rng.usize(..len);
                let b = (a + rng.usize(1..=16)).min(len);
                v.drain(a..b);
            }
            4 if len > 1 => {
                let a = rng.usize(..len);
                let b = (a + rng.usize(1..=64)).min(len);
                let piece = v[a..b].to_vec();
                let at = rng.usize(..=v.len());
                v.splice(at..at, piece);
            }
            5 if !other.is_empty() => {
                let a = rng.usize(..other.len());
                let b = (a + rng.usize(1..=64)).min(other.len());
                let at = rng.usize(..=v.len());
                v.splice(at..at, other[a..b].iter().copied());
            }
            _ => {
                // Replace a run of digits with an edge value.
                if let Some(start) = (0..len).find(|&i| v[i].is_ascii_digit() && rng.bool()) {
                    let end = (start..len)
                        .find(|&i| !v[i].is_ascii_digit())
                        .unwrap_or(len);
                    let pick = INTERESTING[rng.usize(..INTERESTING.len())];
                    v.splice(start..end, pick.bytes());
                }
            }
        }
    }
    v
}

fn lines_of(path: &std::path::Path) -> Vec<String> {
    if path.extension().is_some_and(|e| e == "jsonl") {
        common::raw_frames(path)
    } else {
        std::fs::read_to_string(path)
            .map(|t| vec![t])
            .unwrap_or_default()
    }
}

/// The seeds of a target.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut add = |s: &str| out.push(s.as_bytes().to_vec());
    match target {
        "decimal" => {
            for s in [
                "0",
                "1.5",
                "-0.001",
                "27000.10000000",
                "123456789012345678",
                "00.10",
            ] {
                add(s);
            }
        }
        "config" => {
            add(include_str!("../config/marketbox.toml"));
            add(
                "[session]\nbackoff_min = \"1s\"\nbackoff_max = \"2s\"\n[upstream]\nkind = \"nats\"\nurl = \"nats://h\"\n",
            );
        }
        "retry_after" => {
            for s in ["0", "120", "Fri, 31 Dec 9999 23:59:59 GMT", "-1", "1.5"] {
                add(s);
            }
        }
        "console_command" | "console_line" => {
            for s in [
                "status",
                "show config",
                "get book.depth",
                "set book.depth 15",
                "set console.devices [\"stdio\", \"unix:/run/m.sock\"]",
                "add symbol binance spot SOL-USDT orderbook trade",
                "remove symbol okx perpetual ETH-USDT",
                "log level debug",
                "statuz\x7fs\r\nget book.de\x03\x1b[A\x1b[B\x15apply\n\x04",
                "\x1b[999;999H\x1bOA\x1b]0;t\x07save\r\n",
            ] {
                add(s);
            }
        }
        "binance_frame" | "binance_protocol" => {
            add(
                r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":5,"u":7,"b":[["1.5","2"]],"a":[["2","1"]]}}"#,
            );
            add(r#"{"lastUpdateId":4,"bids":[["1","1"]],"asks":[["3","1"]]}"#);
        }
        "okx_frame" | "okx_protocol" => {
            add(
                r#"{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":[{"asks":[["2","1","0","1"]],"bids":[],"ts":"1","checksum":0,"seqId":6,"prevSeqId":5}]}"#,
            );
            add(r#"{"event":"error","code":"60018","msg":"x","connId":"a"}"#);
        }
        _ => {}
    }
    // Real frames, where the captures are.
    if let Some(dir) = std::env::var_os("MARKETBOX_FIXTURES")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")))
        .filter(|d| d.is_dir())
    {
        let (venue, rename): (&str, &[(&str, &str)]) = match target {
            "binance_frame" => ("binance_spot", &[]),
            "binance_protocol" => (
                "binance_spot",
                &[("NKNUSDT", "BTCUSDT"), ("nknusdt", "btcusdt")],
            ),
            "okx_frame" => ("okx", &[]),
            "okx_protocol" => (
                "okx",
                &[
                    ("BTC-USD-220527", "BTC-USDT"),
                    ("BTC-USDT-220527", "ETH-USDT"),
                ],
            ),
            _ => ("", &[]),
        };
        if !venue.is_empty()
            && let Ok(files) = std::fs::read_dir(dir.join(venue))
        {
            let mut files: Vec<_> = files.flatten().map(|e| e.path()).collect();
            files.sort();
            let protocol = target.ends_with("_protocol");
            for f in files {
                let lines = lines_of(&f);
                if protocol {
                    // A whole session: the capture's frames in order, as one input; a REST
                    // snapshot file answers the first snapshot request.
                    let mut text = lines.join("\n");
                    if f.to_string_lossy().contains("snapshot")
                        && !f.to_string_lossy().contains("books_")
                    {
                        text = format!("REST {}", text.replace('\n', ""));
                    }
                    for (a, b) in rename {
                        text = text.replace(a, b);
                    }
                    out.push(text.into_bytes());
                } else {
                    out.extend(lines.into_iter().take(200).map(String::into_bytes));
                }
            }
            if target == "binance_protocol" {
                // The first diff asks for the snapshot; the snapshot answers; the other diffs
                // follow: the sync path end to end, on the venue's real numbers.
                let diffs = lines_of(&dir.join(venue).join("NKNUSDT_depth100ms_diffs.jsonl"));
                let snap = lines_of(
                    &dir.join(venue)
                        .join("NKNUSDT_rest_depth_snapshot_limit1000.json"),
                );
                if let (Some((first, rest)), Some(snap)) = (diffs.split_first(), snap.first()) {
                    let mut text = format!(
                        "{first}\nREST {}\nTICK\n{}",
                        snap.replace('\n', ""),
                        rest.join("\n")
                    );
                    for (a, b) in rename {
                        text = text.replace(a, b);
                    }
                    out.push(text.into_bytes());
                }
            }
        }
    }
    if out.is_empty() {
        out.push(Vec::new());
    }
    out
}

#[test]
fn every_fuzz_target_holds_its_invariants_on_mutated_inputs() {
    let secs: f64 = std::env::var("MARKETBOX_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let seed: u64 = std::env::var("MARKETBOX_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6d61_726b_6574);
    // The targets' own assertions report; the default hook would print every caught panic.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for (name, target) in TARGETS {
        let seeds = seeds(name);
        let mut rng = fastrand::Rng::with_seed(seed ^ name.len() as u64);
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut runs = 0u64;
        let mut inputs: Vec<Vec<u8>> = seeds.clone();
        // Structured targets read bytes as a script: random bytes are good inputs too.
        for _ in 0..16 {
            let n = rng.usize(1..512);
            inputs.push((0..n).map(|_| rng.u8(..)).collect());
        }
        let structured = name.ends_with("_book");
        let mut i = 0;
        while Instant::now() < end {
            let input = if i < inputs.len() {
                inputs[i].clone()
            } else if structured {
                // A script: fresh random bytes, or a mutation of one that ran before.
                if rng.bool() || inputs.len() < 32 {
                    let n = rng.usize(64..4096);
                    let v: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
                    inputs.push(v.clone());
                    v
                } else {
                    let a = &inputs[rng.usize(16..inputs.len())];
                    mutate(&mut rng, a, a)
                }
            } else {
                let a = &seeds[rng.usize(..seeds.len())];
                let b = &seeds[rng.usize(..seeds.len())];
                mutate(&mut rng, a, b)
            };
            i += 1;
            runs += 1;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| target(&input))) {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
                let _ = std::fs::create_dir_all(&dir);
                let file = dir.join(format!("{name}-{runs}.bin"));
                let _ = std::fs::write(&file, &input);
                failures.push(format!("{name}: {msg} (input saved to {})", file.display()));
                break;
            }
        }
        report.push(format!("{name}: {runs} inputs"));
    }
    std::panic::set_hook(hook);
    eprintln!(
        "fuzz sweep: {}; {} published books checked against the reference venue, {} published by the protocol targets",
        report.join(", "),
        marketbox::fuzzing::BOOKS_CHECKED.load(std::sync::atomic::Ordering::Relaxed),
        marketbox::fuzzing::PROTOCOL_BOOKS.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
