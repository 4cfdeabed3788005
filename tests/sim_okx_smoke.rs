//! The OKX simulator checked with a plain client (async-tungstenite, futures-rustls and hyper
//! trusting the simulator's CA), never with marketbox's own code: what an OKX client would see
//! on the wire, and every fault the integration tests rely on. The client-side book and
//! checksum here are this file's own, written from PROTOCOLS.md.

mod sim;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::{Error as WsError, Message};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use serde_json::{Value, json};
use sim::okx::{BookMode, ChecksumMode, OkxMalformed, OkxOptions, OkxSim, okx_checksum};
use sim::{Disconnect, TextBook};

use sim::client::{Ws, next_msg};

async fn tls_connect(
    sim: &OkxSim,
    url: &str,
) -> futures_rustls::client::TlsStream<smol::Async<std::net::TcpStream>> {
    sim::client::tls_connect(sim.ca_pem_path(), url).await
}

async fn try_ws(sim: &OkxSim, url: &str) -> Result<Ws, WsError> {
    sim::client::try_ws(sim.ca_pem_path(), url).await
}

const BOOKS_PATH: &str = "/api/v5/market/books";
const TOP_PATH: &str = "/api/v5/rubik/stat/contracts/long-short-position-ratio-contract-top-trader";
const ACCOUNT_PATH: &str = "/api/v5/rubik/stat/contracts/long-short-account-ratio-contract";

/// This file's own checksum: the top 25 of each side interleaved, joined with `:`.
fn checksum(bids: &[(String, String)], asks: &[(String, String)]) -> i32 {
    let mut parts: Vec<&str> = Vec::new();
    for i in 0..25 {
        if let Some((p, q)) = bids.get(i) {
            parts.extend([p.as_str(), q.as_str()]);
        }
        if let Some((p, q)) = asks.get(i) {
            parts.extend([p.as_str(), q.as_str()]);
        }
    }
    crc32fast::hash(parts.join(":").as_bytes()) as i32
}

fn tb(levels: &[(&str, &str)]) -> Vec<(String, String)> {
    levels
        .iter()
        .map(|(p, q)| (p.to_string(), q.to_string()))
        .collect()
}

#[test]
fn the_worked_checksum_values_hold_for_the_test_and_the_simulator() {
    // `3366.1:7:3366.8:9:3366:6:3368:8`
    let (b, a) = (
        tb(&[("3366.1", "7"), ("3366", "6")]),
        tb(&[("3366.8", "9"), ("3368", "8")]),
    );
    assert_eq!(checksum(&b, &a), -1881014294);
    assert_eq!(okx_checksum(&b, &a), -1881014294);
    // `3366.1:7:3366.8:9:3368:8:3372:8`: the bids run out, the asks continue alone.
    let (b, a) = (
        tb(&[("3366.1", "7")]),
        tb(&[("3366.8", "9"), ("3368", "8"), ("3372", "8")]),
    );
    assert_eq!(checksum(&b, &a), 831078360);
    assert_eq!(okx_checksum(&b, &a), 831078360);
    fn send_sync<T: Send + Sync>() {}
    send_sync::<OkxSim>();
}

// ---------------------------------------------------------------------------------------------
// Client plumbing

fn fast() -> OkxOptions {
    OkxOptions {
        diff_interval: Duration::from_millis(10),
        heartbeat_chance_pct: 15,
        max_connects_per_sec: 1000,
        funding_interval: Duration::from_millis(200),
        open_interest_interval: Duration::from_millis(200),
        liquidation_interval: Duration::from_millis(200),
        shutdown_grace: Duration::from_millis(200),
        ..OkxOptions::default()
    }
}

async fn ws(sim: &OkxSim) -> Ws {
    try_ws(sim, &sim.ws_url())
        .await
        .expect("WebSocket handshake")
}

/// The next text frame, or `None` after `wait` or at the end.
async fn next_text(ws: &mut Ws, wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_msg(ws, left).await? {
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            _ => return None,
        }
    }
}

/// The next JSON frame (`pong` is skipped).
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let t = next_text(ws, Duration::from_secs(3))
            .await
            .expect("a frame within 3 s");
        if t != "pong" {
            return parse(&t);
        }
    }
}

fn parse(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

async fn send(ws: &mut Ws, v: &Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

async fn subscribe(ws: &mut Ws, id: &str, args: Value) {
    send(ws, &json!({"id": id, "op": "subscribe", "args": args})).await;
}

/// Reads until the stream ends or `wait` passes; returns what was read and what ended it.
async fn read_to_end(ws: &mut Ws, wait: Duration) -> (Vec<Message>, Option<WsError>) {
    let mut got = Vec::new();
    let deadline = Instant::now() + wait;
    loop {
        match next_msg(ws, deadline.saturating_duration_since(Instant::now())).await {
            Some(Ok(m)) => got.push(m),
            Some(Err(e)) => return (got, Some(e)),
            None => return (got, None),
        }
        if Instant::now() >= deadline {
            return (got, None);
        }
    }
}

fn close_code(got: &[Message]) -> Option<CloseCode> {
    got.iter().find_map(|m| match m {
        Message::Close(Some(f)) => Some(f.code),
        _ => None,
    })
}

/// A client-side book keyed by the exact decimal value of the price.
#[derive(Default)]
struct Book {
    bids: BTreeMap<i128, (String, String)>,
    asks: BTreeMap<i128, (String, String)>,
}

/// `"43470.1"` → 434701 × 10^9 (any number with up to 10 decimals).
fn key(px: &str) -> i128 {
    let (int, frac) = px.split_once('.').unwrap_or((px, ""));
    assert!(frac.len() <= 10, "{px}");
    let frac = format!("{frac:0<10}");
    int.parse::<i128>().expect("price") * 10_i128.pow(10) + frac.parse::<i128>().expect("price")
}

fn is_zero(q: &str) -> bool {
    q.bytes().all(|b| b == b'0' || b == b'.')
}

impl Book {
    fn from_text(t: &TextBook) -> Book {
        let mut b = Book::default();
        for (p, q) in &t.0 {
            b.bids.insert(key(p), (p.clone(), q.clone()));
        }
        for (p, q) in &t.1 {
            b.asks.insert(key(p), (p.clone(), q.clone()));
        }
        b
    }
    /// Applies the `bids`/`asks` of one `data` element (`[px, sz, "0", orders]`; sz 0 removes).
    fn apply(&mut self, d: &Value) {
        for (name, side) in [("bids", &mut self.bids), ("asks", &mut self.asks)] {
            for l in d[name].as_array().expect("levels") {
                let row = l.as_array().expect("level");
                assert_eq!(row.len(), 4, "[px, sz, liquidated, orders]: {l}");
                let (p, q) = (row[0].as_str().unwrap(), row[1].as_str().unwrap());
                assert!(row[2] == "0" && row[3].as_str().unwrap().parse::<u32>().is_ok());
                if is_zero(q) {
                    assert_eq!(row[3], "0", "a removal has no orders: {l}");
                    side.remove(&key(p));
                } else {
                    side.insert(key(p), (p.to_owned(), q.to_owned()));
                }
            }
        }
    }
    fn top(&self, depth: usize) -> TextBook {
        (
            self.bids.values().rev().take(depth).cloned().collect(),
            self.asks.values().take(depth).cloned().collect(),
        )
    }
    fn checksum(&self) -> i32 {
        let (b, a) = self.top(25);
        checksum(&b, &a)
    }
}

fn text_levels(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .expect("levels")
        .iter()
        .map(|l| (l[0].as_str().unwrap().into(), l[1].as_str().unwrap().into()))
        .collect()
}

/// A `seqId` written as a JSON number or a string.
fn seq_of(v: &Value) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().expect("i64"),
        Value::String(s) => s.parse().expect("digits"),
        other => panic!("seqId {other}"),
    }
}

/// A `books` data frame (not an ack, which carries the same `arg`).
fn is_books(v: &Value) -> bool {
    v["arg"]["channel"] == "books" && v.get("event").is_none()
}

struct Rest {
    send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    _conn: smol::Task<()>,
}

async fn rest(sim: &OkxSim) -> Rest {
    let tls = tls_connect(sim, &sim.rest()).await;
    let (send, conn) = hyper::client::conn::http1::handshake(smol_hyper::rt::FuturesIo::new(tls))
        .await
        .expect("HTTP handshake");
    Rest {
        send,
        _conn: smol::spawn(async move {
            let _ = conn.await;
        }),
    }
}

impl Rest {
    async fn get(&mut self, path: &str) -> (u16, Value) {
        let req = hyper::Request::get(path)
            .header("host", "localhost")
            .body(Empty::new())
            .expect("request");
        self.send.ready().await.expect("connection ready");
        let resp = self.send.send_request(req).await.expect("response");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, parse(std::str::from_utf8(&body).expect("UTF-8")))
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket

#[test]
fn acks_errors_snapshot_checksummed_chain_and_every_channel() {
    let sim = OkxSim::start(fast());
    smol::block_on(async {
        let mut c = ws(&sim).await;
        subscribe(
            &mut c,
            "7",
            json!([
                {"channel": "books", "instId": "BTC-USDT"},
                {"channel": "books", "instId": "BTC-FOO"},
                {"channel": "trades", "instId": "BTC-USDT"},
                {"channel": "funding-rate", "instId": "BTC-USDT"},
                {"channel": "funding-rate", "instId": "BTC-USDT-SWAP"},
                {"channel": "open-interest", "instId": "BTC-USDT-SWAP"},
                {"channel": "liquidation-orders", "instType": "SWAP"},
            ]),
        )
        .await;
        let (mut acks, mut errors) = (Vec::new(), Vec::new());
        let mut book: Option<Book> = None;
        let mut last = 0i64;
        let (mut updates, mut heartbeats, mut checked) = (0, 0, 0);
        let mut seen: BTreeMap<String, Value> = BTreeMap::new();
        let mut last_trade = 0u64;
        let mut doge = false;
        let deadline = Instant::now() + Duration::from_secs(6);
        while updates < 150 || heartbeats == 0 || seen.len() < 4 || !doge {
            assert!(Instant::now() < deadline, "{updates} {heartbeats} {seen:?}");
            let v = next_json(&mut c).await;
            match v["event"].as_str() {
                Some("subscribe") => {
                    assert_eq!(v["id"], "7");
                    assert!(v["connId"].as_str().is_some_and(|s| !s.is_empty()));
                    acks.push(v["arg"].clone());
                    continue;
                }
                Some("error") => {
                    errors.push(v);
                    continue;
                }
                Some(other) => panic!("event {other}: {v}"),
                None => {}
            }
            let ch = v["arg"]["channel"].as_str().unwrap().to_owned();
            if ch == "books" {
                assert_eq!(v["arg"]["instId"], "BTC-USDT");
                let d = &v["data"][0];
                let (prev, seq) = (
                    d["prevSeqId"].as_i64().unwrap(),
                    d["seqId"].as_i64().unwrap(),
                );
                assert!(d["ts"].as_str().unwrap().parse::<u64>().is_ok());
                let cs = d["checksum"].as_i64().unwrap();
                match book.as_mut() {
                    None => {
                        assert_eq!(v["action"], "snapshot", "a snapshot comes first");
                        assert_eq!(prev, -1);
                        let mut b = Book::default();
                        b.apply(d);
                        assert!(b.bids.len() >= 250 && b.asks.len() >= 250);
                        assert!(d["bids"].as_array().unwrap().len() <= 400);
                        assert_eq!(
                            sim.true_book("BTC-USDT", seq, 400),
                            Some(b.top(400)),
                            "the snapshot is the true book at its seqId"
                        );
                        assert_eq!(i64::from(b.checksum()), cs);
                        book = Some(b);
                    }
                    Some(b) => {
                        assert_eq!(v["action"], "update");
                        assert_eq!(prev, last, "prevSeqId is the previous seqId");
                        if seq == prev {
                            assert!(d["bids"].as_array().unwrap().is_empty());
                            assert!(d["asks"].as_array().unwrap().is_empty());
                            heartbeats += 1;
                        } else {
                            assert!(seq > prev);
                            b.apply(d);
                            updates += 1;
                        }
                        assert_eq!(i64::from(b.checksum()), cs, "checksum at {seq}");
                        checked += 1;
                        if updates % 30 == 0 {
                            assert_eq!(sim.true_book("BTC-USDT", seq, 400), Some(b.top(400)));
                        }
                    }
                }
                last = seq;
                continue;
            }
            let row = &v["data"][0];
            match ch.as_str() {
                "trades" => {
                    for k in [
                        "instId", "tradeId", "px", "sz", "side", "ts", "count", "seqId",
                    ] {
                        assert!(!row[k].is_null(), "trade without {k}: {v}");
                    }
                    let id: u64 = row["tradeId"].as_str().unwrap().parse().unwrap();
                    assert!(id > last_trade, "trade ids increase");
                    last_trade = id;
                    assert!(row["side"] == "buy" || row["side"] == "sell");
                    assert!(row["px"].as_str().unwrap().parse::<f64>().is_ok());
                }
                "funding-rate" => {
                    for k in [
                        "fundingRate",
                        "fundingTime",
                        "nextFundingRate",
                        "nextFundingTime",
                        "instId",
                        "instType",
                        "method",
                        "maxFundingRate",
                        "minFundingRate",
                        "premium",
                        "settFundingRate",
                        "settState",
                        "ts",
                        "formulaType",
                        "impactValue",
                        "interestRate",
                    ] {
                        assert!(row[k].is_string(), "funding-rate without {k}: {v}");
                    }
                    assert_eq!(row["instId"], "BTC-USDT-SWAP");
                }
                "open-interest" => {
                    for k in ["oi", "oiCcy", "oiUsd", "ts", "instId", "instType"] {
                        assert!(row[k].is_string(), "open-interest without {k}: {v}");
                    }
                    let (oi, ccy): (f64, f64) = (
                        row["oi"].as_str().unwrap().parse().unwrap(),
                        row["oiCcy"].as_str().unwrap().parse().unwrap(),
                    );
                    assert!((oi * 0.01 - ccy).abs() < 1e-6, "0.01 BTC a contract: {v}");
                }
                "liquidation-orders" => {
                    assert_eq!(v["arg"]["instType"], "SWAP");
                    let det = &row["details"][0];
                    for k in ["bkLoss", "bkPx", "ccy", "posSide", "side", "sz", "ts"] {
                        assert!(det[k].is_string(), "liquidation without {k}: {v}");
                    }
                    for k in ["instFamily", "instId", "instType", "uly"] {
                        assert!(row[k].is_string(), "liquidation without {k}: {v}");
                    }
                    let inst = row["instId"].as_str().unwrap();
                    assert!(inst.ends_with("-SWAP"), "{inst}");
                    doge |= inst == "DOGE-USDT-SWAP";
                    if inst == "DOGE-USDT-SWAP" {
                        continue;
                    }
                }
                other => panic!("channel {other}: {v}"),
            }
            seen.insert(ch, v);
        }
        assert!(checked > 150);
        assert_eq!(sim.snapshots_sent(), 1);
        assert_eq!(acks.len(), 5, "{acks:?}");
        assert_eq!(errors.len(), 2, "{errors:?}");
        for e in &errors {
            assert_eq!(
                (&e["id"], &e["code"]),
                (&json!("7"), &json!("60018")),
                "{e}"
            );
            assert!(e["connId"].is_string());
        }
        assert!(errors[0]["msg"].as_str().unwrap().contains("BTC-FOO"));
        assert!(
            errors[1]["msg"]
                .as_str()
                .unwrap()
                .contains("funding-rate,instId:BTC-USDT ")
        );
        assert_eq!(
            sim.subscriptions(),
            vec![vec![
                "books:BTC-USDT".to_string(),
                "funding-rate:BTC-USDT-SWAP".into(),
                "liquidation-orders:SWAP".into(),
                "open-interest:BTC-USDT-SWAP".into(),
                "trades:BTC-USDT".into(),
            ]]
        );

        // Unsubscribe (no id: none echoed), bad JSON, a bad op, ping.
        send(
            &mut c,
            &json!({"op": "unsubscribe", "args": [{"channel": "trades", "instId": "BTC-USDT"}]}),
        )
        .await;
        c.send(Message::text("{not json")).await.unwrap();
        send(&mut c, &json!({"id": "9", "op": "subcribe", "args": []})).await;
        c.send(Message::text("ping")).await.unwrap();
        let (mut unsub, mut bad, mut pong) = (None, Vec::new(), false);
        let deadline = Instant::now() + Duration::from_secs(3);
        while unsub.is_none() || bad.len() < 2 || !pong {
            assert!(Instant::now() < deadline);
            let t = next_text(&mut c, Duration::from_secs(2))
                .await
                .expect("replies");
            if t == "pong" {
                pong = true;
                continue;
            }
            let v = parse(&t);
            match v["event"].as_str() {
                Some("unsubscribe") => unsub = Some(v),
                Some("error") => bad.push(v),
                _ => {}
            }
        }
        let unsub = unsub.unwrap();
        assert!(unsub.get("id").is_none(), "{unsub}");
        assert_eq!(
            unsub["arg"],
            json!({"channel": "trades", "instId": "BTC-USDT"})
        );
        assert_eq!(bad[0]["code"], "60012");
        assert_eq!(
            (&bad[1]["code"], &bad[1]["id"]),
            (&json!("60019"), &json!("9"))
        );
        assert_eq!(sim.pings(), 1);
        assert_eq!(sim.error_events(), 4);
        assert!(!sim.subscriptions()[0].contains(&"trades:BTC-USDT".to_string()));

        // Malformed frames reach the client.
        for k in [
            OkxMalformed::NotJson,
            OkxMalformed::UnknownChannel,
            OkxMalformed::BadDecimal,
            OkxMalformed::Binary,
        ] {
            sim.send_malformed(k);
        }
        let (mut not_json, mut unknown, mut bad_dec, mut binary) = (false, false, false, false);
        let deadline = Instant::now() + Duration::from_secs(3);
        while !(not_json && unknown && bad_dec && binary) {
            assert!(
                Instant::now() < deadline,
                "{not_json} {unknown} {bad_dec} {binary}"
            );
            match next_msg(&mut c, Duration::from_secs(2)).await {
                Some(Ok(Message::Binary(_))) => binary = true,
                Some(Ok(Message::Text(t))) => {
                    let Ok(v) = serde_json::from_str::<Value>(&t) else {
                        not_json = true;
                        continue;
                    };
                    unknown |= v["arg"]["channel"] == "tickers";
                    if v["arg"]["channel"] == "trades" {
                        let px = v["data"][0]["px"].as_str().unwrap();
                        bad_dec |= px.parse::<f64>().is_err() && px.contains('O');
                    }
                }
                other => panic!("{other:?}"),
            }
        }
    });
}

#[test]
fn rest_snapshot_mode_sends_no_snapshot_zero_checksums_and_the_rest_snapshot_splices() {
    let sim = OkxSim::start(OkxOptions {
        book_mode: BookMode::RestSnapshot,
        checksum: ChecksumMode::Zero,
        ..fast()
    });
    smol::block_on(async {
        let inst = "BTC-USDT-SWAP";
        let mut c = ws(&sim).await;
        subscribe(
            &mut c,
            "1",
            json!([{"channel": "books", "instId": inst}, {"channel": "books", "instId": "ETH-USDT"}]),
        )
        .await;
        let mut buffered = VecDeque::new();
        let mut acks = 0;
        while buffered.len() < 5 {
            let v = next_json(&mut c).await;
            if v["event"] == "subscribe" {
                acks += 1;
                continue;
            }
            assert!(is_books(&v), "{v}");
            assert_eq!(v["action"], "update", "no snapshot in RestSnapshot mode");
            assert_eq!(v["data"][0]["checksum"], 0);
            if v["arg"]["instId"] == inst {
                buffered.push_back(v["data"][0].clone());
            }
        }
        assert_eq!(acks, 2);
        // The REST snapshot.
        let mut r = rest(&sim).await;
        let (status, body) = r
            .get(&format!("{BOOKS_PATH}?instId={inst}&sz=400&source=0"))
            .await;
        assert_eq!((status, &body["code"]), (200, &json!("0")), "{body}");
        let d = &body["data"][0];
        let snap_seq = seq_of(&d["seqId"]);
        let (bids, asks) = (text_levels(&d["bids"]), text_levels(&d["asks"]));
        assert!(bids.len() >= 250 && bids.len() <= 400);
        assert!(
            bids.iter().all(|(_, q)| !q.contains('.')),
            "whole contracts"
        );
        assert_eq!(
            sim.true_book(inst, snap_seq, 400),
            Some((bids.clone(), asks.clone())),
            "the REST snapshot is the true book at its seqId"
        );
        let mut book = Book::from_text(&(bids, asks));
        // Splice: drop seqId <= S; the first kept has prevSeqId <= S < seqId; then chain.
        let mut last: Option<i64> = None;
        let mut applied = 0;
        while applied < 100 {
            let d = match buffered.pop_front() {
                Some(d) => d,
                None => {
                    let v = next_json(&mut c).await;
                    assert_eq!(v["action"], "update");
                    assert_eq!(v["data"][0]["checksum"], 0);
                    if v["arg"]["instId"] != inst {
                        continue;
                    }
                    v["data"][0].clone()
                }
            };
            let (prev, seq) = (
                d["prevSeqId"].as_i64().unwrap(),
                d["seqId"].as_i64().unwrap(),
            );
            if seq <= snap_seq {
                continue;
            }
            match last {
                None => assert!(
                    prev <= snap_seq && snap_seq < seq,
                    "{prev} {snap_seq} {seq}"
                ),
                Some(l) => assert_eq!(prev, l),
            }
            last = Some(seq);
            if seq == prev {
                continue;
            }
            book.apply(&d);
            applied += 1;
            assert_eq!(
                sim.true_book(inst, seq, 400),
                Some(book.top(400)),
                "spliced book vs the true book at {seq}"
            );
        }
        assert_eq!(sim.snapshots_sent(), 0);
        // seqId alternates between a number and a string.
        let (_, b2) = r.get(&format!("{BOOKS_PATH}?instId={inst}&sz=5")).await;
        assert_ne!(
            body["data"][0]["seqId"].is_string(),
            b2["data"][0]["seqId"].is_string()
        );
        assert_eq!(b2["data"][0]["asks"].as_array().unwrap().len(), 5);
        // Stale snapshots are older but still true.
        sim.stale_snapshots(1);
        let (_, stale) = r.get(&format!("{BOOKS_PATH}?instId={inst}&sz=400")).await;
        let stale_seq = seq_of(&stale["data"][0]["seqId"]);
        assert!(stale_seq < last.unwrap());
        let got = (
            text_levels(&stale["data"][0]["bids"]),
            text_levels(&stale["data"][0]["asks"]),
        );
        assert_eq!(sim.true_book(inst, stale_seq, 400), Some(got));
        // An unknown instrument: HTTP 200 with code 51001.
        let (status, body) = r.get(&format!("{BOOKS_PATH}?instId=BTC-FOO&sz=400")).await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({"code": "51001", "msg": "Instrument ID does not exist", "data": []})
        );
        assert_eq!(sim.rest_requests_to(BOOKS_PATH), 4);
        assert_eq!(sim.max_open_rest(), 1, "one keep-alive connection");
    });
}

#[test]
fn gap_corruption_and_sequence_reset_show_on_the_wire_and_in_the_truth() {
    let sim = OkxSim::start(fast());
    smol::block_on(async {
        let inst = "BTC-USDT";
        let mut c = ws(&sim).await;
        subscribe(&mut c, "g", json!([{"channel": "books", "instId": inst}])).await;
        let mut book = Book::default();
        let mut last: Option<i64> = None;
        let (mut n, mut breaks, mut mismatches, mut resets) =
            (0, Vec::new(), Vec::new(), Vec::new());
        let (mut gap_at, mut corrupt_at, mut reset_at) = (None, None, None);
        while n < 130 {
            let v = next_json(&mut c).await;
            if !is_books(&v) {
                continue;
            }
            let d = &v["data"][0];
            let (prev, seq) = (
                d["prevSeqId"].as_i64().unwrap(),
                d["seqId"].as_i64().unwrap(),
            );
            let cs = d["checksum"].as_i64().unwrap();
            let Some(l) = last else {
                assert_eq!(v["action"], "snapshot");
                book.apply(d);
                last = Some(seq);
                continue;
            };
            n += 1;
            match n {
                20 => {
                    sim.inject_gap(inst);
                    gap_at = Some(seq);
                }
                50 => {
                    sim.corrupt_next(inst);
                    corrupt_at = Some(seq);
                }
                80 => {
                    sim.sequence_reset(inst);
                    reset_at = Some(seq);
                }
                _ => {}
            }
            if seq < prev {
                resets.push((prev, seq));
            }
            if prev != l {
                // A broken chain: resync from the truth and go on.
                breaks.push((l, prev, seq));
                book = Book::from_text(&sim.true_book(inst, seq, 1000).expect("a published id"));
            } else {
                book.apply(d);
            }
            last = Some(seq);
            if i64::from(book.checksum()) != cs {
                mismatches.push(seq);
                let truth = sim.true_book(inst, seq, 1000).expect("true book");
                assert_eq!(
                    i64::from(checksum(&truth.0, &truth.1)),
                    cs,
                    "the frame carries the true book's checksum"
                );
                assert_ne!(
                    book.top(25),
                    (truth.0[..25].to_vec(), truth.1[..25].to_vec())
                );
                book = Book::from_text(&truth);
            } else if n % 10 == 0 {
                assert_eq!(sim.true_book(inst, seq, 400), Some(book.top(400)));
            }
        }
        assert_eq!(breaks.len(), 1, "exactly one broken link: {breaks:?}");
        let (l, prev, _) = breaks[0];
        assert!(prev > l && l >= gap_at.unwrap(), "{breaks:?}");
        // The withheld diff's state is known to the truth.
        assert!(sim.true_book(inst, prev, 5).is_some());
        assert_eq!(
            mismatches.len(),
            1,
            "exactly one bad checksum: {mismatches:?}"
        );
        assert!(mismatches[0] > corrupt_at.unwrap());
        assert_eq!(resets.len(), 1, "exactly one restart: {resets:?}");
        let (old, new) = resets[0];
        assert!(old >= reset_at.unwrap() && new * 4 < old, "{resets:?}");
        // Both epochs answer, and differently.
        let (a, b) = (
            sim.true_book(inst, old, 25).expect("old epoch"),
            sim.true_book(inst, new, 25).expect("new epoch"),
        );
        assert_ne!(a, b);
        let now = sim.last_seq_id(inst).unwrap();
        assert!(now >= new && now < old, "{now}");
        assert_eq!(sim.true_book(inst, last.unwrap(), 400), Some(book.top(400)));
        // An id nobody published.
        assert!(sim.true_book(inst, new + 1_000_000, 5).is_none());
        assert!(sim.true_book("BTC-FOO", new, 5).is_none());
    });
}

#[test]
fn idle_timeout_ping_notice_and_disconnects() {
    let sim = OkxSim::start(OkxOptions {
        idle_timeout: Duration::from_millis(600),
        ..fast()
    });
    smol::block_on(async {
        let mut lazy = ws(&sim).await;
        let mut live = ws(&sim).await;
        // `live` pings every 200 ms; `lazy` sends nothing.
        let start = Instant::now();
        let mut pongs = 0;
        while start.elapsed() < Duration::from_millis(1100) {
            live.send(Message::text("ping")).await.unwrap();
            if next_text(&mut live, Duration::from_millis(200))
                .await
                .as_deref()
                == Some("pong")
            {
                pongs += 1;
            }
            smol::Timer::after(Duration::from_millis(100)).await;
        }
        assert!(pongs >= 3, "{pongs}");
        let (got, _) = read_to_end(&mut lazy, Duration::from_millis(500)).await;
        assert_eq!(close_code(&got), Some(CloseCode::from(4004)), "{got:?}");
        assert_eq!(sim.idle_closes(), 1);
        assert!(sim.pings() >= 3);

        // 64008, then the close (`live` pings first so the idle timeout stays away).
        live.send(Message::text("ping")).await.unwrap();
        assert_eq!(
            next_text(&mut live, Duration::from_secs(1))
                .await
                .as_deref(),
            Some("pong")
        );
        sim.notice_restart();
        let (got, _) = read_to_end(&mut live, Duration::from_millis(1000)).await;
        let notice = got.iter().position(|m| {
            matches!(m, Message::Text(t) if {
                let v = parse(t);
                v["event"] == "notice" && v["code"] == "64008" && v["connId"].is_string()
            })
        });
        let close = got.iter().position(|m| matches!(m, Message::Close(_)));
        assert!(
            notice.is_some() && close.is_some() && notice < close,
            "{got:?}"
        );

        // Close: a close frame 1000.
        let mut c = ws(&sim).await;
        // A pong means the connection is registered (the handshake returns a little earlier).
        c.send(Message::text("ping")).await.unwrap();
        assert_eq!(
            next_text(&mut c, Duration::from_secs(2)).await.as_deref(),
            Some("pong")
        );
        sim.disconnect_all(Disconnect::Close);
        let (got, _) = read_to_end(&mut c, Duration::from_secs(1)).await;
        assert_eq!(close_code(&got), Some(CloseCode::Normal));
        // Reset: no close frame, a TCP reset.
        let mut c = ws(&sim).await;
        subscribe(
            &mut c,
            "r",
            json!([{"channel": "books", "instId": "ETH-USDT"}]),
        )
        .await;
        next_json(&mut c).await;
        sim.disconnect_all(Disconnect::Reset);
        let (got, err) = read_to_end(&mut c, Duration::from_secs(1)).await;
        assert!(close_code(&got).is_none());
        let err = err.expect("the read fails");
        assert!(
            matches!(&err, WsError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "{err:?}"
        );
        // Silence: no data, no pong; the idle timeout still closes it.
        let mut c = ws(&sim).await;
        subscribe(
            &mut c,
            "s",
            json!([{"channel": "books", "instId": "ETH-USDT"}]),
        )
        .await;
        next_json(&mut c).await;
        let wait_open = Instant::now() + Duration::from_secs(2);
        while sim.open_ws() != 1 {
            assert!(Instant::now() < wait_open, "open {}", sim.open_ws());
            smol::Timer::after(Duration::from_millis(10)).await;
        }
        sim.disconnect_all(Disconnect::Silence);
        smol::Timer::after(Duration::from_millis(100)).await;
        while next_msg(&mut c, Duration::from_millis(30)).await.is_some() {}
        c.send(Message::text("ping")).await.unwrap();
        let quiet = next_msg(&mut c, Duration::from_millis(300)).await;
        assert!(quiet.is_none(), "silence broken by {quiet:?}");
        assert_eq!(sim.open_ws(), 1);
        let (got, _) = read_to_end(&mut c, Duration::from_secs(2)).await;
        assert!(close_code(&got).is_none(), "no close frame while silent");
        assert_eq!(sim.idle_closes(), 2);
        let wait_closed = Instant::now() + Duration::from_secs(2);
        while sim.open_ws() != 0 {
            assert!(Instant::now() < wait_closed, "open {}", sim.open_ws());
            smol::Timer::after(Duration::from_millis(10)).await;
        }
    });
}

#[test]
fn the_fourth_connection_in_a_second_is_refused_and_other_paths_are_404() {
    let sim = OkxSim::start(OkxOptions {
        diff_interval: Duration::from_millis(50),
        ..OkxOptions::default()
    });
    smol::block_on(async {
        let mut conns = Vec::new();
        for _ in 0..3 {
            conns.push(ws(&sim).await);
        }
        let Err(err) = try_ws(&sim, &sim.ws_url()).await else {
            panic!("the fourth connection within a second must be refused");
        };
        assert!(
            matches!(err, WsError::Http(ref r) if r.status() == 429),
            "{err:?}"
        );
        assert_eq!(sim.connect_rate_violations(), 1);
        assert_eq!(sim.max_open_ws(), 4, "the refused socket was counted");
        smol::Timer::after(Duration::from_millis(1100)).await;
        let url = sim.ws_url().replace("/public", "/business");
        let Err(err) = try_ws(&sim, &url).await else {
            panic!("only /ws/v5/public is served");
        };
        assert!(
            matches!(err, WsError::Http(ref r) if r.status() == 404),
            "{err:?}"
        );
        assert_eq!(sim.ws_accepts(), 5);
        drop(conns);
        let deadline = Instant::now() + Duration::from_secs(2);
        while sim.open_ws() != 0 {
            assert!(Instant::now() < deadline, "open {}", sim.open_ws());
            smol::Timer::after(Duration::from_millis(10)).await;
        }
        let mut samples = Vec::new();
        sim.sample_open_ws_into(&mut samples);
        assert_eq!(samples.first(), Some(&1));
        assert_eq!(samples.iter().max(), Some(&4));
        assert_eq!(samples.last(), Some(&0));
        sim.reset_max_open_ws();
        assert_eq!(sim.max_open_ws(), 0);
    });
}

#[test]
fn the_subscribe_limit_and_oversized_requests_get_error_events() {
    let sim = OkxSim::start(OkxOptions {
        subscribes_per_hour: 5,
        ..fast()
    });
    smol::block_on(async {
        let mut c = ws(&sim).await;
        let arg = json!([{"channel": "trades", "instId": "ETH-USDT-SWAP"}]);
        for i in 0..6 {
            subscribe(&mut c, &i.to_string(), arg.clone()).await;
        }
        send(
            &mut c,
            &json!({"id": "u", "op": "unsubscribe", "args": arg}),
        )
        .await;
        let big = format!(
            "{{\"op\":\"subscribe\",\"args\":[{{\"channel\":\"trades\",\"instId\":\"{}\"}}]}}",
            "X".repeat(70_000)
        );
        c.send(Message::text(big)).await.unwrap();
        let (mut acks, mut errors) = (Vec::new(), Vec::new());
        let deadline = Instant::now() + Duration::from_secs(3);
        while acks.len() + errors.len() < 8 {
            assert!(Instant::now() < deadline, "{acks:?} {errors:?}");
            let v = next_json(&mut c).await;
            match v["event"].as_str() {
                Some("subscribe") => acks.push(v["id"].clone()),
                Some("error") => errors.push((v["id"].clone(), v["code"].clone())),
                _ => {}
            }
        }
        assert_eq!(acks, ["0", "1", "2", "3", "4"]);
        assert_eq!(
            errors,
            [
                (json!("5"), json!("60014")),
                (json!("u"), json!("60014")),
                (Value::Null, json!("60012")),
            ]
        );
        assert_eq!(sim.subscribe_limit_hits(), 2);
        assert_eq!(sim.subscribe_requests(), 8);
        assert_eq!(sim.error_events(), 3);
        assert_eq!(
            sim.subscriptions(),
            vec![vec!["trades:ETH-USDT-SWAP".to_string()]]
        );
    });
}

// ---------------------------------------------------------------------------------------------
// REST

#[test]
fn rest_books_and_rubik_shapes_limits_and_faults() {
    let sim = OkxSim::start(fast());
    smol::block_on(async {
        let mut r = rest(&sim).await;
        let (s, body) = r
            .get(&format!("{BOOKS_PATH}?instId=ETH-USDT&sz=400&source=0"))
            .await;
        assert_eq!(
            (s, &body["code"], &body["msg"]),
            (200, &json!("0"), &json!(""))
        );
        let d = &body["data"][0];
        for side in ["bids", "asks"] {
            for l in d[side].as_array().unwrap() {
                let row = l.as_array().unwrap();
                assert_eq!(row.len(), 4);
                assert!(row.iter().all(Value::is_string), "{l}");
                let px = row[0].as_str().unwrap();
                assert!(px.split('.').nth(1).is_none_or(|f| f.len() <= 2), "{px}");
                assert!(!px.ends_with('0') || !px.contains('.'), "trimmed: {px}");
            }
        }
        assert!(d["ts"].is_string());
        seq_of(&d["seqId"]);

        let mut rows_seen = 0;
        for (i, path) in [TOP_PATH, ACCOUNT_PATH, TOP_PATH, ACCOUNT_PATH, TOP_PATH]
            .iter()
            .enumerate()
        {
            let (s, body) = r
                .get(&format!("{path}?instId=BTC-USDT-SWAP&period=5m"))
                .await;
            assert_eq!(
                (s, &body["code"]),
                (200, &json!("0")),
                "request {i}: {body}"
            );
            let rows = body["data"].as_array().unwrap();
            assert!(!rows.is_empty());
            let ts: Vec<u64> = rows
                .iter()
                .map(|row| {
                    let row = row.as_array().unwrap();
                    assert_eq!(row.len(), 2);
                    assert!(row[1].as_str().unwrap().parse::<f64>().unwrap() > 0.0);
                    row[0].as_str().unwrap().parse().unwrap()
                })
                .collect();
            assert!(ts.iter().all(|t| t % 300_000 == 0), "5-minute boundaries");
            assert!(
                ts.windows(2).all(|w| w[0] == w[1] + 300_000),
                "newest first"
            );
            rows_seen += rows.len();
        }
        assert!(rows_seen >= 5);
        let (s, body) = r
            .get(&format!("{ACCOUNT_PATH}?instId=BTC-USDT-SWAP&period=5m"))
            .await;
        assert_eq!(s, 429);
        assert_eq!(body, json!({"msg": "Too Many Requests", "code": "50011"}));
        assert_eq!(sim.rubik_limit_hits(), 1);

        sim.rest_fault(503, 1);
        sim.rest_fault(429, 1);
        let (s, _) = r.get(&format!("{BOOKS_PATH}?instId=BTC-USDT&sz=1")).await;
        assert_eq!(s, 503);
        let (s, body) = r.get(&format!("{BOOKS_PATH}?instId=BTC-USDT&sz=1")).await;
        assert_eq!((s, &body["code"]), (429, &json!("50011")));
        let (s, body) = r.get(&format!("{BOOKS_PATH}?instId=BTC-USDT&sz=1")).await;
        assert_eq!(
            (s, body["data"][0]["bids"].as_array().unwrap().len()),
            (200, 1)
        );
        let (s, _) = r.get("/api/v5/market/nope").await;
        assert_eq!(s, 404);
        assert_eq!(sim.rest_requests_to(BOOKS_PATH), 4);
        assert_eq!(sim.rest_requests_to(TOP_PATH), 3);
        assert_eq!(sim.rest_requests_to(ACCOUNT_PATH), 3);
        assert_eq!((sim.open_rest(), sim.max_open_rest()), (1, 1));
    });
}
