//! The command line as other tools drive it.

use std::process::Command;

fn marketbox() -> Command {
    Command::new(env!("CARGO_BIN_EXE_marketbox"))
}

fn temp(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("marketbox-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_config_prints_the_default_plan() {
    let out = marketbox()
        .args([
            "check-config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/marketbox.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("socket plan: 4 WebSockets"), "{text}");
    for socket in [
        "binance spot ->",
        "binance perpetual_public ->",
        "binance perpetual_market ->",
        "okx public ->",
    ] {
        assert!(text.contains(socket), "{socket} missing in\n{text}");
    }
    assert!(text.contains("budget: 7 of 10 sockets planned"), "{text}");
}

#[test]
fn a_bad_config_exits_non_zero_with_file_line_and_reason() {
    let cases = [
        (
            "unknown.toml",
            "[book]\ndepth = 10\nspeed = 3\n",
            ":3:",
            "speed",
        ),
        (
            "depth.toml",
            "[book]\ndepth = 0\n",
            ":2:",
            "between 1 and 50",
        ),
        (
            "symbol.toml",
            "[[feeds]]\nexchange = \"binance\"\nmarket = \"spot\"\nsymbols = [\"BTC/USDT\"]\nchannels = [\"trade\"]\n",
            ":4:",
            "BTC/USDT",
        ),
        ("syntax.toml", "[book\ndepth = 1\n", ":1:", ""),
    ];
    for (name, text, line, reason) in cases {
        let path = temp(name, text);
        for args in [
            vec!["check-config", path.to_str().unwrap()],
            vec!["run", "--config", path.to_str().unwrap()],
        ] {
            let out = marketbox().args(&args).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(
                err.contains(&format!("{name}{line}")),
                "{args:?}: no file:line in {err}"
            );
            assert!(err.contains(reason), "{args:?}: no reason in {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let out = marketbox()
        .args(["check-config", "/nonexistent/marketbox.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/marketbox.toml: cannot read")
    );
}

#[test]
fn decode_turns_postcard_records_into_json_lines() {
    use marketbox::model::{
        Channel, Data, Exchange, Market, Message, Side, Symbol, TradeData, message_id,
    };
    let sym = Symbol::parse("BTC-USDT").unwrap();
    let msg = Message {
        exchange: Exchange::Binance,
        market: Market::Spot,
        symbol: sym,
        channel: Channel::Trade,
        seq: 1,
        ts_exchange_ms: 2,
        ts_local_ns: 3,
        id: message_id(Exchange::Binance, Market::Spot, sym, Channel::Trade, 9),
        data: Data::Trade(TradeData {
            trade_id: 9,
            price: "1.50".parse().unwrap(),
            qty: "2".parse().unwrap(),
            side: Side::Buy,
        }),
    };
    let bytes = postcard::to_allocvec(&msg).unwrap();
    let mut input = (bytes.len() as u32).to_le_bytes().to_vec();
    input.extend_from_slice(&bytes);
    let mut child = marketbox()
        .arg("decode")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    assert_eq!(serde_json::from_str::<Message>(line.trim()).unwrap(), msg);
    assert!(line.contains("\"price\":\"1.50\""), "{line}");

    // One payload per file (a NATS or MQTT message saved as it came); a bad file is named.
    let dir = std::env::temp_dir().join(format!("marketbox-cli-decode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b, bad) = (dir.join("a.bin"), dir.join("b.bin"), dir.join("bad.bin"));
    std::fs::write(&a, &bytes).unwrap();
    std::fs::write(&b, &bytes).unwrap();
    std::fs::write(&bad, [0xff, 0xff, 0xff]).unwrap();
    let out = marketbox().arg("decode").arg(&a).arg(&b).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 2);
    for l in text.lines() {
        assert_eq!(serde_json::from_str::<Message>(l).unwrap(), msg);
    }
    let out = marketbox().arg("decode").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.bin"));
    let _ = std::fs::remove_dir_all(&dir);
}
