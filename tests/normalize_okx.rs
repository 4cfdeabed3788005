//! The OKX socket protocol on real OKX frames: subscriptions, books through the checksum,
//! trades, funding, open interest, liquidations filtered to the configured swaps, keepalive
//! and the restart notice.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use marketbox::config::{Config, Format};
use marketbox::metrics::Metrics;
use marketbox::model::{Channel, Data, Market, Message, Side};
use marketbox::net::http::RestResponse;
use marketbox::session::{Connected, Control, FrameKind, Io, Probe, Protocol};
use marketbox::upstream::spool::Spool;
use marketbox::upstream::{Publisher, StreamKey};
use marketbox::venue::okx::feed::{ACK_WAIT, MAX_SILENCE, OkxProtocol};

const CONFIG: &str = r#"
[book]
depth = 5
[[feeds]]
exchange = "okx"
market = "spot"
symbols = ["BTC-USDT"]
channels = ["orderbook", "trade"]
[[feeds]]
exchange = "okx"
market = "perpetual"
symbols = ["BTC-USDT", "WNCG-USDT"]
channels = ["trade", "funding_rate", "open_interest", "liquidation"]
"#;

struct Rig {
    proto: OkxProtocol,
    metrics: Arc<Metrics>,
    publisher: Publisher,
    spool: Spool,
    send: Vec<String>,
    rest: Vec<marketbox::session::rest::RestRequest>,
}

impl Rig {
    fn new() -> Rig {
        let cfg = Config::parse(CONFIG, "okx.toml").unwrap();
        let plan = marketbox::venue::plan(&cfg).unwrap();
        assert_eq!(plan.sockets.len(), 1, "spot and swaps share one OKX socket");
        let socket = &plan.sockets[0];
        let keys = StreamKey::for_socket(socket);
        let spool = Spool::new(8 << 20, Default::default());
        let metrics = Arc::new(Metrics::new());
        Rig {
            proto: OkxProtocol::new(socket, &cfg, metrics.clone()),
            metrics,
            publisher: Publisher::new(spool.clone(), Format::Json, &keys, None),
            spool,
            send: Vec::new(),
            rest: Vec::new(),
        }
    }

    fn text(&mut self, t: &str) -> (FrameKind, Control) {
        self.text_at(t, Instant::now())
    }

    fn text_at(&mut self, t: &str, now: Instant) -> (FrameKind, Control) {
        let mut io = Io {
            send: &mut self.send,
            rest: &mut self.rest,
            publisher: &mut self.publisher,
        };
        self.proto.on_text(t, now, &mut io)
    }

    fn rest_answer(&mut self, tag: u64, body: &str, now: Instant) {
        let mut io = Io {
            send: &mut self.send,
            rest: &mut self.rest,
            publisher: &mut self.publisher,
        };
        let resp = RestResponse {
            status: 200,
            retry_after: None,
            used_weight: None,
            body: body.as_bytes().to_vec(),
        };
        self.proto.on_rest(tag, Ok(resp), now, &mut io);
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.metrics.sum(name, labels)
    }

    fn connect(&mut self, now: Instant) {
        let mut io = Io {
            send: &mut self.send,
            rest: &mut self.rest,
            publisher: &mut self.publisher,
        };
        self.proto.on_connected(now, &mut io, Connected::Fresh);
    }

    fn tick(&mut self, now: Instant) -> Control {
        let mut io = Io {
            send: &mut self.send,
            rest: &mut self.rest,
            publisher: &mut self.publisher,
        };
        self.proto.on_tick(now, &mut io)
    }

    fn messages(&self) -> Vec<Message> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while self.spool.try_pop(&mut buf).is_some() {
            out.push(serde_json::from_slice(&buf).unwrap());
        }
        out
    }
}

fn misc(kind: &str) -> Vec<String> {
    let Some(dir) = common::fixtures() else {
        return Vec::new();
    };
    let text = std::fs::read_to_string(dir.join("okx/misc_single_messages.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == kind)
        .map(|v| v["raw"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn connecting_subscribes_every_arg_in_one_request_with_one_liquidation_arg() {
    let mut r = Rig::new();
    r.connect(Instant::now());
    assert_eq!(r.send.len(), 1, "{:?}", r.send);
    let req: serde_json::Value = serde_json::from_str(&r.send[0]).unwrap();
    assert_eq!(req["op"], "subscribe");
    let args = req["args"].as_array().unwrap();
    // books + trades for spot; trades, funding, open interest for 2 swaps; liquidations once.
    assert_eq!(args.len(), 2 + 3 * 2 + 1, "{args:?}");
    assert_eq!(
        args.iter()
            .filter(|a| a["channel"] == "liquidation-orders")
            .count(),
        1
    );
    assert!(
        args.iter()
            .any(|a| a["instId"] == "BTC-USDT-SWAP" && a["channel"] == "funding-rate")
    );
    assert!(r.send[0].len() < 64 << 10);
}

#[test]
fn real_okx_frames_normalize() {
    let mut frames = misc("trades");
    frames.extend(misc("funding-rate"));
    frames.extend(misc("open-interest"));
    frames.extend(misc("liquidation-orders"));
    if frames.is_empty() {
        return;
    }
    let mut r = Rig::new();
    let mut kinds = Vec::new();
    for f in &frames {
        kinds.push(r.text(f).0);
    }
    let msgs = r.messages();
    // Spot and swap trades of BTC-USDT; BTC-USD-SWAP is not configured.
    let trades: Vec<&Message> = msgs
        .iter()
        .filter(|m| m.channel == Channel::Trade)
        .collect();
    assert_eq!(trades.len(), 2);
    let spot = trades.iter().find(|m| m.market == Market::Spot).unwrap();
    let Data::Trade(t) = &spot.data else {
        unreachable!()
    };
    assert_eq!(
        (t.trade_id, t.price.to_string(), t.qty.to_string(), t.side),
        (314161276, "43474.1".into(), "0.00373695".into(), Side::Buy)
    );
    assert_eq!(spot.ts_exchange_ms, 1646311839593);
    // Funding of BTC-USDT-SWAP with the next rate.
    let f = msgs
        .iter()
        .find_map(|m| match &m.data {
            Data::FundingRate(f) => Some(f),
            _ => None,
        })
        .unwrap();
    assert_eq!(f.funding_rate.to_string(), "0.0001534702159002");
    assert_eq!(f.funding_time_ms, 1646323200000);
    assert!(f.next_funding_rate.is_some());
    // Open interest of WNCG-USDT-SWAP in coin and contracts.
    let oi = msgs
        .iter()
        .find(|m| m.channel == Channel::OpenInterest)
        .unwrap();
    assert_eq!(oi.symbol.as_str(), "WNCG-USDT");
    // Liquidations: subscribed for every swap, kept only for configured ones (BTC-USDT-SWAP).
    let liqs: Vec<&Message> = msgs
        .iter()
        .filter(|m| m.channel == Channel::Liquidation)
        .collect();
    assert_eq!(liqs.len(), 1);
    let Data::Liquidation(l) = &liqs[0].data else {
        unreachable!()
    };
    assert_eq!(
        (l.side, l.price.to_string(), l.qty.to_string()),
        (Side::Sell, "82655.7".into(), "8.55".into())
    );
    assert!(!kinds.contains(&FrameKind::Malformed), "{kinds:?}");
}

#[test]
fn the_2022_books_capture_publishes_verified_books_and_a_corruption_resyncs_only_that_book() {
    let Some(dir) = common::fixtures() else {
        return;
    };
    let frames = common::raw_frames(&dir.join("okx/books_snapshot_and_updates_2022-05-13.jsonl"));
    let mut r = Rig::new();
    let btc: Vec<&String> = frames
        .iter()
        .filter(|f| f.contains("\"instId\":\"BTC-USDT\""))
        .collect();
    for f in &btc {
        assert_eq!(r.text(f).0, FrameKind::Data);
    }
    let books: Vec<Message> = r
        .messages()
        .into_iter()
        .filter(|m| m.channel == Channel::Orderbook)
        .collect();
    assert_eq!(
        books.len(),
        btc.len(),
        "every BTC-USDT book state verified and published"
    );
    let Data::Orderbook(last) = &books.last().unwrap().data else {
        unreachable!()
    };
    assert_eq!((last.bids.len(), last.asks.len()), (5, 5));
    assert!(last.bids[0].0 < last.asks[0].0, "crossed book");
    // A corrupted level: caught by the checksum, that instrument resubscribes (the socket stays).
    let mut r = Rig::new();
    r.text(btc[0]);
    // The first BTC-USDT update sets ask 30243.5 to 1.2112; say 1.2113 instead.
    let bad = btc[1].replacen("\"1.2112\"", "\"1.2113\"", 1);
    assert_ne!(&bad, btc[1]);
    r.send.clear();
    r.text(&bad);
    assert!(
        r.send
            .iter()
            .any(|s| s.contains("unsubscribe") && s.contains("BTC-USDT")),
        "{:?}",
        r.send
    );
    let n = r
        .messages()
        .iter()
        .filter(|m| m.channel == Channel::Orderbook)
        .count();
    assert_eq!(
        n, 1,
        "only the snapshot was published; nothing after the mismatch"
    );
}

#[test]
fn keepalive_is_the_text_ping_within_the_venues_silence_limit_and_notices_rotate() {
    let mut r = Rig::new();
    let t0 = Instant::now();
    r.connect(t0);
    r.send.clear();
    // The session probes silent sockets; the protocol names the probe and the venue's limit
    // (it closes a socket that received nothing for 30 s).
    assert_eq!(r.proto.probe(), Probe::Text("ping"));
    assert!(
        r.proto
            .max_silence()
            .is_some_and(|d| d < Duration::from_secs(30))
    );
    assert_eq!(MAX_SILENCE, Duration::from_secs(20));
    assert_eq!(r.tick(t0 + Duration::from_secs(25)), Control::Continue);
    assert!(
        r.send.is_empty(),
        "the protocol does not ping by itself: {:?}",
        r.send
    );
    assert_eq!(r.text("pong").0, FrameKind::Control);
    assert_eq!(
        r.text(r#"{"event":"notice","code":"64008","msg":"restart","connId":"a"}"#)
            .1,
        Control::Rotate
    );
    assert_eq!(
        r.text(r#"{"event":"error","code":"60018","msg":"no such channel","connId":"a"}"#)
            .0,
        FrameKind::Control
    );
    assert_eq!(r.text("not json").0, FrameKind::Malformed);
}

/// The args of the subscribe request `req` as sent.
fn args_of(req: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(req).unwrap();
    v["args"].as_array().unwrap().clone()
}

fn ack(id: &str, arg: &serde_json::Value) -> String {
    format!(r#"{{"id":"{id}","event":"subscribe","arg":{arg},"connId":"a4d3ae55"}}"#)
}

#[test]
fn refused_and_unacknowledged_args_are_counted_by_code_once_each() {
    // Every arg but the last is acknowledged; the request also drew an error event.
    let mut r = Rig::new();
    let t0 = Instant::now();
    r.connect(t0);
    let args = args_of(&r.send[0]);
    for a in &args[..args.len() - 1] {
        assert_eq!(r.text_at(&ack("1", a), t0).0, FrameKind::Control);
    }
    r.text_at(
        r#"{"id":"1","event":"error","code":"60018","msg":"Wrong URL or channel:trades,instId:WNCG-USDT-SWAP doesn't exist","connId":"a4d3ae55"}"#,
        t0,
    );
    let errors = |r: &Rig, code| r.metric("marketbox_ws_subscribe_errors_total", &[("code", code)]);
    assert_eq!(
        errors(&r, "60018"),
        1,
        "the error event is counted with its code"
    );
    r.tick(t0 + ACK_WAIT);
    assert_eq!(errors(&r, "60018"), 1);
    assert_eq!(
        errors(&r, "no_ack"),
        0,
        "a refused arg is not also unanswered"
    );

    // Without an error event, the arg the venue never acknowledged is counted as no_ack, once.
    let mut r = Rig::new();
    r.connect(t0);
    let args = args_of(&r.send[0]);
    for a in &args[1..] {
        r.text_at(&ack("1", a), t0);
    }
    r.tick(t0 + ACK_WAIT - Duration::from_secs(1));
    assert_eq!(errors(&r, "no_ack"), 0, "not before the deadline");
    r.tick(t0 + ACK_WAIT);
    r.tick(t0 + ACK_WAIT + Duration::from_secs(1));
    assert_eq!(errors(&r, "no_ack"), 1);
    // A venue code that is not a code does not become a label value.
    r.text(r#"{"event":"error","code":"<script>","msg":"?"}"#);
    assert_eq!(errors(&r, "other"), 1);
}

fn update(inst: &str, seq: i64, prev: i64, bid: &str) -> String {
    format!(
        r#"{{"arg":{{"channel":"books","instId":"{inst}"}},"action":"update","data":[{{"asks":[],"bids":[["{bid}","1","0","1"]],"ts":"1","checksum":0,"seqId":{seq},"prevSeqId":{prev}}}]}}"#
    )
}

#[test]
fn without_websocket_snapshots_books_sync_and_resync_by_rest_snapshot_without_resubscribing() {
    let mut r = Rig::new();
    let t0 = Instant::now();
    r.connect(t0);
    r.send.clear();
    // Updates but no snapshot: buffered, one REST snapshot asked for.
    r.text_at(&update("BTC-USDT", 101, 100, "10"), t0);
    r.text_at(&update("BTC-USDT", 103, 101, "11"), t0);
    assert_eq!(r.rest.len(), 1, "one snapshot request while buffering");
    let req = r.rest.remove(0);
    assert_eq!(
        req.path,
        "/api/v5/market/books?instId=BTC-USDT&sz=400&source=0"
    );
    // The REST answer writes seqId as a string; it splices onto the buffered 103.
    r.rest_answer(
        req.tag,
        r#"{"code":"0","msg":"","data":[{"asks":[["12","1","0","1"]],"bids":[["9","1","0","1"]],"ts":"5","seqId":"101"}]}"#,
        t0,
    );
    let books: Vec<Message> = r
        .messages()
        .into_iter()
        .filter(|m| m.channel == Channel::Orderbook)
        .collect();
    assert_eq!(books.len(), 1);
    let Data::Orderbook(b) = &books[0].data else {
        unreachable!()
    };
    assert_eq!(b.update_id, 103);
    let bids: Vec<String> = b.bids.iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(
        bids,
        ["11", "9"],
        "101 was in the snapshot, 103 applied on top"
    );
    // A gap: resynced by a new REST snapshot, no unsubscribe spent (no WS snapshots here).
    r.text_at(&update("BTC-USDT", 110, 105, "12"), t0);
    assert_eq!(
        r.metric("marketbox_book_resyncs_total", &[("reason", "gap")]),
        1
    );
    assert!(r.send.is_empty(), "{:?}", r.send);
    r.text_at(&update("BTC-USDT", 111, 110, "12"), t0);
    assert_eq!(r.rest.len(), 1, "a new snapshot for the new chain");
    assert!(r.messages().is_empty(), "nothing published while unsynced");
    // A stale snapshot keeps the buffer and is fetched again after a pause.
    let req = r.rest.remove(0);
    r.rest_answer(
        req.tag,
        r#"{"code":"0","msg":"","data":[{"asks":[],"bids":[],"ts":"5","seqId":50}]}"#,
        t0,
    );
    assert_eq!(
        r.metric(
            "marketbox_book_resyncs_total",
            &[("reason", "stale_snapshot")]
        ),
        1
    );
    r.tick(t0 + Duration::from_millis(100));
    assert!(r.rest.is_empty(), "not immediately");
    r.tick(t0 + Duration::from_secs(1));
    assert_eq!(r.rest.len(), 1, "fetched again");
}

#[test]
fn with_websocket_snapshots_a_gap_resubscribes_that_instrument_only() {
    let mut r = Rig::new();
    let t0 = Instant::now();
    r.connect(t0);
    r.send.clear();
    r.text_at(
        r#"{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"snapshot","data":[{"asks":[["12","1","0","1"]],"bids":[["9","1","0","1"]],"ts":"1","checksum":0,"seqId":100,"prevSeqId":-1}]}"#,
        t0,
    );
    r.text_at(&update("BTC-USDT", 104, 102, "10"), t0);
    assert_eq!(r.send.len(), 2, "{:?}", r.send);
    assert!(
        r.send[0].contains(r#""op":"unsubscribe""#) && r.send[1].contains(r#""op":"subscribe""#)
    );
    for s in &r.send {
        assert_eq!(args_of(s).len(), 1, "only the books arg of BTC-USDT: {s}");
        assert!(s.contains(r#""channel":"books","instId":"BTC-USDT""#));
    }
    // Updates still in flight are buffered without a REST snapshot while the WS one is due...
    r.text_at(&update("BTC-USDT", 105, 104, "10"), t0);
    assert!(r.rest.is_empty());
    // ...and if it does not come, REST is the fallback.
    r.tick(t0 + Duration::from_secs(6));
    assert_eq!(r.rest.len(), 1);
}
