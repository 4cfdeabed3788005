//! The exchange simulator checked with a plain client (async-tungstenite, futures-rustls and
//! hyper trusting the simulator's CA), never with marketbox's own code: what a venue client
//! would see on the wire, and every fault the integration tests rely on.

mod sim;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::{Error as WsError, Message};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use serde_json::Value;
use sim::{Disconnect, Endpoint, Malformed, Mkt, RestFault, Sim, SimOptions, TextBook};

use sim::client::{Ws, next_msg};

async fn tls_connect(
    sim: &Sim,
    base: &str,
) -> futures_rustls::client::TlsStream<smol::Async<std::net::TcpStream>> {
    sim::client::tls_connect(sim.ca_pem_path(), base).await
}

async fn try_ws(sim: &Sim, base: &str, path: &str) -> Result<Ws, WsError> {
    sim::client::try_ws(sim.ca_pem_path(), &format!("{base}{path}")).await
}

#[test]
fn the_simulator_can_be_shared_with_other_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Sim>();
}

#[test]
fn the_book_process_is_deterministic_never_crosses_and_replays_its_history() {
    use sim::book::{BookParams, BookProcess, IdRule, NumStyle, Spec};
    let params = BookParams {
        seed: 42,
        spec: Spec {
            price_decimals: 8,
            tick: 1_000_000,
            qty_decimals: 8,
            lot: 1_000,
            typical_lots: 5_000,
            style: NumStyle::Fixed,
        },
        mid: 2_701_234_000_000,
        first_id: 100,
        ids: IdRule::Jumpy {
            max_jump: 5,
            max_span: 4,
        },
        levels_per_side: 300,
        history: 2_000,
        checkpoint_every: 128,
    };
    let (mut a, mut b) = (BookProcess::new(params.clone()), BookProcess::new(params));
    let mut seen = Vec::new();
    for i in 0..5_000 {
        let (da, db) = (a.step(i).clone(), b.step(i).clone());
        assert_eq!(
            (da.first_id, da.last_id, &da.bids),
            (db.first_id, db.last_id, &db.bids)
        );
        assert!(da.prev_last_id < da.first_id && da.first_id <= da.last_id);
        let (bid, ask) = (a.best_bid().unwrap().0, a.best_ask().unwrap().0);
        assert!(bid < ask, "crossed at step {i}");
        let top = a.top(400);
        assert!((240..=360).contains(&top.bids.len()) && (240..=360).contains(&top.asks.len()));
        if i % 97 == 0 {
            seen.push(a.top(50));
        }
    }
    // States older than the kept history are gone; recent ones replay exactly.
    let mut replayed = 0;
    for snap in &seen {
        match a.at(snap.id, 50) {
            Some(got) => {
                assert_eq!(&got, snap);
                replayed += 1;
            }
            None => assert!(snap.id < a.oldest_id()),
        }
    }
    assert!(replayed >= 15, "{replayed}");
    // Mid reverts: after 5000 diffs it is still near where it started.
    let drift = (a.mid() - 2_701_234_000_000).abs() / 1_000_000;
    assert!(drift < 300, "mid drifted {drift} ticks");
}

fn fast() -> SimOptions {
    SimOptions {
        diff_interval: Duration::from_millis(10),
        ping_interval: Duration::from_secs(5),
        pong_timeout: Duration::from_secs(10),
        mark_price_interval: Duration::from_millis(200),
        liquidation_interval: Duration::from_millis(200),
        shutdown_grace: Duration::from_millis(200),
        ..SimOptions::default()
    }
}

async fn ws(sim: &Sim, base: &str, path: &str) -> Ws {
    try_ws(sim, base, path).await.expect("WebSocket handshake")
}

/// The next text frame (pings and pongs skipped), or `None` after `wait` or at the end.
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

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

struct Rest {
    send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    _conn: smol::Task<()>,
}

async fn rest(sim: &Sim, base: &str) -> Rest {
    let tls = tls_connect(sim, base).await;
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
    async fn get(&mut self, path: &str) -> (u16, hyper::HeaderMap, String) {
        let req = hyper::Request::get(path)
            .header("host", "localhost")
            .body(Empty::new())
            .expect("request");
        self.send.ready().await.expect("connection ready");
        let resp = self.send.send_request(req).await.expect("response");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (
            status,
            headers,
            String::from_utf8(body.to_vec()).expect("UTF-8"),
        )
    }
}

/// A client-side book keyed by the price without its decimal point (all prices of one
/// instrument carry the same number of decimals).
#[derive(Default)]
struct LocalBook {
    bids: BTreeMap<i128, (String, String)>,
    asks: BTreeMap<i128, (String, String)>,
}

fn key(px: &str) -> i128 {
    px.replace('.', "").parse().expect("price digits")
}

impl LocalBook {
    fn apply(&mut self, bids: &Value, asks: &Value) {
        for (levels, side) in [(bids, &mut self.bids), (asks, &mut self.asks)] {
            for l in levels.as_array().expect("levels") {
                let (p, q) = (l[0].as_str().unwrap(), l[1].as_str().unwrap());
                if q.bytes().all(|b| b == b'0' || b == b'.') {
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
}

fn text_levels(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|l| (l[0].as_str().unwrap().into(), l[1].as_str().unwrap().into()))
        .collect()
}

#[test]
fn spot_stream_and_snapshot_sync_by_the_documented_procedure_to_the_true_book() {
    let sim = Sim::start(fast());
    smol::block_on(async {
        let mut ws = ws(
            &sim,
            &sim.spot_ws(),
            "/stream?streams=btcusdt@depth@100ms/btcusdt@trade",
        )
        .await;
        // Buffer a few diffs, then take the snapshot.
        let mut buffered = std::collections::VecDeque::new();
        while buffered.len() < 3 {
            let v = json(
                &next_text(&mut ws, Duration::from_secs(3))
                    .await
                    .expect("frames"),
            );
            if v["stream"] == "btcusdt@depth@100ms" {
                buffered.push_back(v["data"].clone());
            }
        }
        let mut r = rest(&sim, &sim.spot_rest()).await;
        let (status, headers, body) = r.get("/api/v3/depth?symbol=BTCUSDT&limit=1000").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["x-mbx-used-weight-1m"], "50");
        let snap = json(&body);
        let last = snap["lastUpdateId"].as_u64().unwrap();
        let (bids, asks) = (text_levels(&snap["bids"]), text_levels(&snap["asks"]));
        assert!(
            bids.len() >= 200 && asks.len() >= 200,
            "a few hundred levels per side"
        );
        assert!(bids[0].0.ends_with(|c: char| c.is_ascii_digit()) && bids[0].0.len() > 9);
        assert_eq!(bids[0].0.split('.').nth(1).unwrap().len(), 8, "8 decimals");
        assert_eq!(
            sim.true_book(Mkt::Spot, "BTC-USDT", last, 1000),
            Some((bids, asks)),
            "the snapshot is the true book at lastUpdateId"
        );
        let mut book = LocalBook::default();
        book.apply(&snap["bids"], &snap["asks"]);
        // The documented procedure: drop u <= L, the first has U <= L+1 <= u, then U = u'+1.
        let mut prev: Option<u64> = None;
        let (mut applied, mut trades, mut last_trade) = (0, 0, 0u64);
        while applied < 150 {
            let d = match buffered.pop_front() {
                Some(d) => d,
                None => {
                    let v = json(
                        &next_text(&mut ws, Duration::from_secs(3))
                            .await
                            .expect("live"),
                    );
                    let d = v["data"].clone();
                    if v["stream"] == "btcusdt@trade" {
                        for k in ["e", "E", "s", "t", "p", "q", "T", "m", "M"] {
                            assert!(!d[k].is_null(), "trade without {k}: {d}");
                        }
                        let t = d["t"].as_u64().unwrap();
                        assert!(t > last_trade, "trade ids increase");
                        last_trade = t;
                        trades += 1;
                        continue;
                    }
                    assert_eq!(v["stream"], "btcusdt@depth@100ms");
                    d
                }
            };
            assert_eq!(d["e"], "depthUpdate");
            assert_eq!(d["s"], "BTCUSDT");
            let (u0, u1) = (d["U"].as_u64().unwrap(), d["u"].as_u64().unwrap());
            assert!(u0 <= u1);
            if u1 <= last {
                continue;
            }
            match prev {
                None => assert!(
                    u0 <= last + 1 && last < u1,
                    "first diff {u0}..{u1} vs L {last}"
                ),
                Some(p) => assert_eq!(u0, p + 1, "the U/u chain continues"),
            }
            prev = Some(u1);
            book.apply(&d["b"], &d["a"]);
            applied += 1;
            let depth = if applied % 25 == 0 { 1000 } else { 20 };
            assert_eq!(
                Some(book.top(depth)),
                sim.true_book(Mkt::Spot, "BTCUSDT", u1, depth),
                "applied book differs from the true book at {u1}"
            );
        }
        assert!(trades > 0, "no trades");
        // A mid-diff id is not a state anyone can observe.
        assert!(
            sim.true_book(Mkt::Spot, "BTCUSDT", prev.unwrap() + 1_000_000, 5)
                .is_none()
        );
    });
}

#[test]
fn live_requests_are_answered_and_tracked() {
    let sim = Sim::start(fast());
    smol::block_on(async {
        let mut ws = ws(&sim, &sim.spot_ws(), "/stream").await;
        let pause = Duration::from_millis(260);
        let reply = async |ws: &mut Ws, req: &str, id: &str| -> Value {
            ws.send(Message::text(req)).await.expect("send");
            loop {
                let v = json(&next_text(ws, Duration::from_secs(2)).await.expect("reply"));
                if v.get("stream").is_none() && (id.is_empty() || v["id"] == json(id)) {
                    smol::Timer::after(pause).await;
                    return v;
                }
            }
        };
        let v = reply(
            &mut ws,
            r#"{"method":"SUBSCRIBE","params":["ethusdt@depth@100ms"],"id":1}"#,
            "1",
        )
        .await;
        assert_eq!(v, json(r#"{"result":null,"id":1}"#));
        let first = json(
            &next_text(&mut ws, Duration::from_secs(2))
                .await
                .expect("event"),
        );
        assert_eq!(first["stream"], "ethusdt@depth@100ms");
        assert_eq!(
            sim.subscriptions(Endpoint::Spot),
            vec![vec!["ethusdt@depth@100ms".to_string()]]
        );
        let v = reply(&mut ws, r#"{"method":"LIST_SUBSCRIPTIONS","id":2}"#, "2").await;
        assert_eq!(v, json(r#"{"result":["ethusdt@depth@100ms"],"id":2}"#));
        let v = reply(
            &mut ws,
            r#"{"method":"SUBSCRIBED","params":[],"id":3}"#,
            "3",
        )
        .await;
        assert_eq!(v["code"], 2, "{v}");
        let v = reply(&mut ws, "not json", "").await;
        assert_eq!(v["code"], 3, "{v}");
        let v = reply(
            &mut ws,
            r#"{"method":"UNSUBSCRIBE","params":["ethusdt@depth@100ms"],"id":4}"#,
            "4",
        )
        .await;
        assert_eq!(v, json(r#"{"result":null,"id":4}"#));
        while next_text(&mut ws, Duration::from_millis(300))
            .await
            .is_some()
        {}
        assert!(sim.subscriptions(Endpoint::Spot)[0].is_empty());
        assert_eq!(sim.rate_violations(), 0, "paced requests stay under 5/s");

        // A raw `/ws/<stream>` connection gets bare payloads.
        let mut raw = crate::ws(&sim, &sim.spot_ws(), "/ws/btcusdt@depth@100ms").await;
        let v = json(
            &next_text(&mut raw, Duration::from_secs(2))
                .await
                .expect("raw"),
        );
        assert_eq!(v["e"], "depthUpdate");
        // An unknown path is refused at the handshake.
        let Err(err) = try_ws(&sim, &sim.spot_ws(), "/nope").await else {
            panic!("an unknown path must be refused");
        };
        assert!(
            matches!(err, WsError::Http(ref r) if r.status() == 404),
            "{err:?}"
        );
    });
}

#[test]
fn more_than_five_messages_a_second_close_the_connection() {
    let sim = Sim::start(fast());
    smol::block_on(async {
        let mut ws = ws(&sim, &sim.spot_ws(), "/stream?streams=btcusdt@trade").await;
        for _ in 0..6 {
            ws.send(Message::Ping(Bytes::from_static(b"hi")))
                .await
                .expect("ping");
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        let close = loop {
            assert!(Instant::now() < deadline, "not closed");
            match next_msg(&mut ws, Duration::from_secs(3)).await {
                Some(Ok(Message::Close(c))) => break c,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        };
        assert_eq!(close.expect("close frame").code, CloseCode::Policy);
        assert_eq!(sim.rate_violations(), 1);
    });
}

#[test]
fn rest_snapshots_keep_alive_weights_errors_and_usdm_endpoints() {
    let sim = Sim::start(fast());
    smol::block_on(async {
        let mut r = rest(&sim, &sim.spot_rest()).await;
        let (s, h, body) = r.get("/api/v3/depth?symbol=ETHUSDT&limit=100").await;
        assert_eq!(s, 200);
        assert_eq!(h["x-mbx-used-weight-1m"], "5");
        let v = json(&body);
        let id = v["lastUpdateId"].as_u64().unwrap();
        let got = (text_levels(&v["bids"]), text_levels(&v["asks"]));
        assert_eq!(got.0.len(), 100);
        assert_eq!(sim.true_book(Mkt::Spot, "ETHUSDT", id, 100), Some(got));
        let (s, h, _) = r.get("/api/v3/depth?symbol=ETHUSDT&limit=1000").await;
        assert_eq!(
            (s, h["x-mbx-used-weight-1m"].to_str().unwrap()),
            (200, "55")
        );
        let (s, _, body) = r.get("/api/v3/depth?symbol=NOPEUSDT").await;
        assert_eq!(
            (s, json(&body)),
            (400, json(r#"{"code":-1121,"msg":"Invalid symbol."}"#))
        );
        let (s, _, body) = r.get("/api/v3/depth?symbol=btcusdt").await;
        assert_eq!((s, json(&body)["code"].as_i64()), (400, Some(-1100)));
        let (s, _, _) = r.get("/fapi/v1/depth?symbol=BTCUSDT").await;
        assert_eq!(s, 404, "USD-M paths are not on the spot host");
        assert_eq!(
            sim.max_open_rest(),
            1,
            "all of it on one keep-alive connection"
        );
        assert_eq!(sim.rest_requests_to("/api/v3/depth"), 4);

        let mut f = rest(&sim, &sim.perp_rest()).await;
        let (s, _, body) = f.get("/fapi/v1/depth?symbol=BTCUSDT&limit=100").await;
        assert_eq!(s, 200);
        let v = json(&body);
        assert!(v["E"].is_u64() && v["T"].is_u64());
        let id = v["lastUpdateId"].as_u64().unwrap();
        let got = (text_levels(&v["bids"]), text_levels(&v["asks"]));
        assert_eq!(got.0[0].0.split('.').nth(1).unwrap().len(), 2);
        assert_eq!(got.0[0].1.split('.').nth(1).unwrap().len(), 3);
        assert_eq!(sim.true_book(Mkt::Perp, "BTCUSDT", id, 100), Some(got));
        let (s, _, body) = f.get("/fapi/v1/depth?symbol=BTCUSDT&limit=7").await;
        assert_eq!((s, json(&body)["code"].as_i64()), (400, Some(-1130)));
        let (s, _, body) = f.get("/fapi/v1/openInterest?symbol=ETHUSDT").await;
        assert_eq!(s, 200);
        let v = json(&body);
        assert_eq!(v["symbol"], "ETHUSDT");
        assert_eq!(
            v["openInterest"]
                .as_str()
                .unwrap()
                .split('.')
                .nth(1)
                .unwrap()
                .len(),
            3
        );
        assert!(v["time"].is_u64());
        let mut forms = Vec::new();
        for p in ["topLongShortPositionRatio", "globalLongShortAccountRatio"] {
            for _ in 0..2 {
                let (s, _, body) = f
                    .get(&format!(
                        "/futures/data/{p}?symbol=BTCUSDT&period=5m&limit=3"
                    ))
                    .await;
                assert_eq!(s, 200, "{body}");
                let rows = json(&body);
                let rows = rows.as_array().unwrap();
                assert_eq!(rows.len(), 3);
                let last = &rows[2];
                assert_eq!(last["longShortRatio"], "1.9823");
                for k in ["symbol", "longAccount", "shortAccount", "timestamp"] {
                    assert!(!last[k].is_null(), "{k}");
                }
                forms.push(last["timestamp"].is_string());
            }
        }
        assert_eq!(
            forms,
            [false, true, false, true],
            "timestamp alternates number/string"
        );
        let (s, _, _) = f
            .get("/futures/data/topLongShortPositionRatio?symbol=BTCUSDT&period=7m")
            .await;
        assert_eq!(s, 400);
    });
}

#[test]
fn usdm_public_and_market_endpoints_deliver_only_their_tier() {
    let sim = Sim::start(fast());
    smol::block_on(async {
        let streams = "btcusdt@depth@100ms/btcusdt@trade/btcusdt@markPrice@1s/btcusdt@forceOrder/btcusdt@aggTrade";
        let mut public = ws(
            &sim,
            &sim.perp_public_ws(),
            &format!("/stream?streams={streams}"),
        )
        .await;
        let mut market = ws(
            &sim,
            &sim.perp_market_ws(),
            &format!("/stream?streams={streams}"),
        )
        .await;
        let mut root = ws(
            &sim,
            &sim.perp_ws_root(),
            &format!("/stream?streams={streams}"),
        )
        .await;
        let (p, m, r) = (
            by_stream(&mut public).await,
            by_stream(&mut market).await,
            by_stream(&mut root).await,
        );
        let keys = |b: &BTreeMap<String, Vec<Value>>| b.keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&p), ["btcusdt@depth@100ms", "btcusdt@trade"]);
        assert_eq!(
            keys(&r),
            keys(&p),
            "the unrouted root serves only the /public tier"
        );
        assert_eq!(
            keys(&m),
            [
                "btcusdt@aggTrade",
                "btcusdt@forceOrder",
                "btcusdt@markPrice@1s"
            ]
        );
        // USD-M diffs chain by pu.
        let diffs = &p["btcusdt@depth@100ms"];
        for w in diffs.windows(2) {
            assert_eq!(w[1]["pu"], w[0]["u"], "pu is the previous u");
            assert!(!w[1]["T"].is_null());
        }
        let mark = &m["btcusdt@markPrice@1s"][0];
        for k in ["e", "E", "s", "p", "i", "P", "r", "T", "ap", "st"] {
            assert!(!mark[k].is_null(), "markPrice without {k}: {mark}");
        }
        assert_eq!(mark["e"], "markPriceUpdate");
        let liq = &m["btcusdt@forceOrder"][0];
        for k in ["s", "S", "o", "f", "q", "p", "ap", "X", "l", "z", "T"] {
            assert!(!liq["o"][k].is_null(), "forceOrder without o.{k}: {liq}");
        }
        let agg = &m["btcusdt@aggTrade"][0];
        assert!(
            !agg["nq"].is_null() && !agg["st"].is_null(),
            "2026 extras: {agg}"
        );
        let trade = &p["btcusdt@trade"][0];
        assert_eq!(trade["X"], "MARKET");
        assert_eq!(sim.subscriptions(Endpoint::PerpMarket).len(), 1);
    });
}

/// Events received in 1.5 s, by stream.
async fn by_stream(ws: &mut Ws) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_millis(1500);
    while let Some(t) = next_text(ws, deadline.saturating_duration_since(Instant::now())).await {
        let v = json(&t);
        out.entry(v["stream"].as_str().unwrap().to_owned())
            .or_default()
            .push(v["data"].clone());
    }
    out
}

/// Reads until the stream ends; returns what ended it.
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

#[test]
fn close_reset_and_silence_are_what_the_client_sees() {
    let sim = Sim::start(SimOptions {
        ping_interval: Duration::from_millis(100),
        ..fast()
    });
    smol::block_on(async {
        let path = "/stream?streams=btcusdt@depth@100ms";
        // Close: a close frame (1000), then the end.
        let mut c = ws(&sim, &sim.spot_ws(), path).await;
        next_text(&mut c, Duration::from_secs(2))
            .await
            .expect("data");
        sim.disconnect_all(Disconnect::Close);
        let (got, _) = read_to_end(&mut c, Duration::from_secs(2)).await;
        let close = got.iter().find_map(|m| match m {
            Message::Close(f) => Some(f.clone()),
            _ => None,
        });
        assert_eq!(close.flatten().map(|f| f.code), Some(CloseCode::Normal));
        drop(c);

        // Reset: no close frame, the read fails.
        let mut c = ws(&sim, &sim.spot_ws(), path).await;
        next_text(&mut c, Duration::from_secs(2))
            .await
            .expect("data");
        sim.disconnect_all(Disconnect::Reset);
        let (got, err) = read_to_end(&mut c, Duration::from_secs(2)).await;
        assert!(
            !got.iter().any(|m| matches!(m, Message::Close(_))),
            "no close frame"
        );
        let err = err.expect("the read fails");
        // SO_LINGER 0: a real TCP reset, not a FIN without close_notify.
        assert!(
            matches!(&err, WsError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "{err:?}"
        );
        drop(c);

        // Silence: nothing at all (pings included) while the socket stays open.
        let mut c = ws(&sim, &sim.spot_ws(), path).await;
        next_text(&mut c, Duration::from_secs(2))
            .await
            .expect("data");
        let wait_open = Instant::now() + Duration::from_secs(2);
        while sim.open_ws() != 1 {
            assert!(Instant::now() < wait_open);
            smol::Timer::after(Duration::from_millis(10)).await;
        }
        sim.disconnect_all(Disconnect::Silence);
        smol::Timer::after(Duration::from_millis(100)).await;
        while next_msg(&mut c, Duration::from_millis(50)).await.is_some() {}
        let quiet = next_msg(&mut c, Duration::from_millis(600)).await;
        assert!(quiet.is_none(), "silence broken by {quiet:?}");
        assert_eq!(sim.open_ws(), 1, "the silent socket is still open");
        drop(c);
        let deadline = Instant::now() + Duration::from_secs(2);
        while sim.open_ws() != 0 {
            assert!(
                Instant::now() < deadline,
                "the socket was not closed after the client left"
            );
            smol::Timer::after(Duration::from_millis(10)).await;
        }
    });
}

#[test]
fn gaps_malformed_frames_and_shutdown_reach_the_client() {
    let sim = Sim::start(fast());
    smol::block_on(async {
        let mut ws = ws(
            &sim,
            &sim.spot_ws(),
            "/stream?streams=btcusdt@depth@100ms/btcusdt@trade",
        )
        .await;
        let mut prev: Option<u64> = None;
        let mut breaks = Vec::new();
        let mut n = 0;
        while n < 40 {
            let v = json(
                &next_text(&mut ws, Duration::from_secs(2))
                    .await
                    .expect("diffs"),
            );
            if v["stream"] != "btcusdt@depth@100ms" {
                continue;
            }
            n += 1;
            if n == 10 {
                sim.inject_gap(Mkt::Spot, "BTCUSDT");
            }
            let (u0, u1) = (
                v["data"]["U"].as_u64().unwrap(),
                v["data"]["u"].as_u64().unwrap(),
            );
            if let Some(p) = prev
                && u0 != p + 1
            {
                breaks.push((p, u0));
            }
            prev = Some(u1);
        }
        assert_eq!(breaks.len(), 1, "exactly one broken link: {breaks:?}");
        let (p, u0) = breaks[0];
        assert!(u0 > p + 1);
        // The withheld diff was applied to the true book: its final id is a known state.
        assert!(sim.true_book(Mkt::Spot, "BTCUSDT", u0 - 1, 5).is_some());

        for kind in [
            Malformed::NotJson,
            Malformed::Oversized { bytes: 100_000 },
            Malformed::UnknownEvent,
            Malformed::BadDecimal,
            Malformed::Binary,
        ] {
            sim.send_malformed(kind);
        }
        let (mut not_json, mut big, mut unknown, mut bad_dec, mut binary) =
            (false, false, false, false, false);
        let deadline = Instant::now() + Duration::from_secs(3);
        while !(not_json && big && unknown && bad_dec && binary) {
            assert!(
                Instant::now() < deadline,
                "{not_json} {big} {unknown} {bad_dec} {binary}"
            );
            match next_msg(&mut ws, Duration::from_secs(2)).await {
                Some(Ok(Message::Binary(_))) => binary = true,
                Some(Ok(Message::Text(t))) => {
                    if t.len() == 100_000 {
                        big = json(&t)["stream"].is_string();
                        continue;
                    }
                    let Ok(v) = serde_json::from_str::<Value>(&t) else {
                        not_json = true;
                        continue;
                    };
                    if v["stream"] == "btcusdt@kline_1m" {
                        unknown = true;
                    }
                    if v["stream"] == "btcusdt@trade" {
                        let p = v["data"]["p"].as_str().unwrap();
                        if p.parse::<f64>().is_err() {
                            bad_dec = true;
                        }
                    }
                }
                other => panic!("{other:?}"),
            }
        }

        sim.server_shutdown();
        let (got, _) = read_to_end(&mut ws, Duration::from_secs(3)).await;
        let notice = got
            .iter()
            .position(|m| matches!(m, Message::Text(t) if json(t)["e"] == "serverShutdown"));
        let close = got.iter().position(|m| matches!(m, Message::Close(_)));
        assert!(
            notice.is_some() && close.is_some() && notice < close,
            "{notice:?} {close:?}"
        );
        if let Some(Message::Close(Some(f))) = close.map(|i| &got[i]) {
            assert_eq!(f.code, CloseCode::Away);
        }
    });
}

#[test]
fn rest_refusals_and_stale_snapshots() {
    let sim = Sim::start(fast());
    smol::block_on(async {
        let mut r = rest(&sim, &sim.rest()).await;
        sim.rest_fault(
            RestFault::TooMany {
                retry_after_secs: 2,
            },
            1,
        );
        sim.rest_fault(
            RestFault::Banned {
                retry_after_secs: 3,
            },
            1,
        );
        let (s, h, body) = r.get("/api/v3/depth?symbol=BTCUSDT").await;
        assert_eq!((s, h["retry-after"].to_str().unwrap()), (429, "2"));
        assert_eq!(json(&body)["code"], -1003);
        let (s, h, _) = r.get("/fapi/v1/openInterest?symbol=BTCUSDT").await;
        assert_eq!((s, h["retry-after"].to_str().unwrap()), (418, "3"));
        let (s, _, _) = r.get("/api/v3/depth?symbol=BTCUSDT").await;
        assert_eq!(s, 200);

        smol::Timer::after(Duration::from_millis(300)).await;
        sim.stale_snapshots(1);
        let (_, _, body) = r.get("/api/v3/depth?symbol=BTCUSDT&limit=50").await;
        let stale = json(&body);
        let id = stale["lastUpdateId"].as_u64().unwrap();
        let (_, _, body) = r.get("/api/v3/depth?symbol=BTCUSDT&limit=50").await;
        let fresh = json(&body)["lastUpdateId"].as_u64().unwrap();
        assert!(id + 20 < fresh, "stale {id} vs fresh {fresh}");
        let got = (text_levels(&stale["bids"]), text_levels(&stale["asks"]));
        assert_eq!(sim.true_book(Mkt::Spot, "BTCUSDT", id, 50), Some(got));
    });
}

#[test]
fn an_unanswered_ping_drops_the_client_and_an_answered_one_does_not() {
    let sim = Sim::start(SimOptions {
        ping_interval: Duration::from_millis(100),
        pong_timeout: Duration::from_millis(300),
        ..fast()
    });
    smol::block_on(async {
        let path = "/stream?streams=btcusdt@trade";
        let mut lazy = ws(&sim, &sim.spot_ws(), path).await;
        let mut live = ws(&sim, &sim.spot_ws(), path).await;
        // `live` reads (tungstenite answers pings while reading); `lazy` does not.
        let (got, _) = read_to_end(&mut live, Duration::from_millis(900)).await;
        assert!(
            got.iter().any(|m| matches!(m, Message::Ping(_))),
            "server pings"
        );
        let (got, _) = read_to_end(&mut lazy, Duration::from_secs(1)).await;
        assert!(
            got.iter()
                .any(|m| matches!(m, Message::Close(Some(f)) if f.code == CloseCode::Policy)),
            "the lazy client was dropped with a close frame"
        );
        assert_eq!(sim.pong_timeouts(), 1);
        assert!(sim.stats().pongs.load(std::sync::atomic::Ordering::SeqCst) >= 3);
        let (got, err) = read_to_end(&mut live, Duration::from_millis(300)).await;
        assert!(err.is_none() && !got.iter().any(|m| matches!(m, Message::Close(_))));
    });
}

#[test]
fn slow_writes_trickle_frames() {
    let sim = Sim::start(fast());
    smol::block_on(async {
        let mut ws = ws(&sim, &sim.spot_ws(), "/stream?streams=btcusdt@depth@100ms").await;
        let count = async |ws: &mut Ws, d: Duration| {
            let deadline = Instant::now() + d;
            let mut n = 0;
            while next_text(ws, deadline.saturating_duration_since(Instant::now()))
                .await
                .is_some()
            {
                n += 1;
            }
            n
        };
        let normal = count(&mut ws, Duration::from_millis(500)).await;
        sim.slow_writes(Duration::from_millis(20));
        let slow = count(&mut ws, Duration::from_millis(500)).await;
        sim.slow_writes(Duration::ZERO);
        assert!(normal >= 20, "normal {normal}");
        assert!(slow * 4 < normal, "slow {slow} vs normal {normal}");
    });
}

#[test]
fn every_socket_is_counted_from_accept_to_close() {
    let sim = Sim::start(fast());
    smol::block_on(async {
        let mut samples = Vec::new();
        let mut conns = Vec::new();
        for _ in 0..3 {
            conns.push(ws(&sim, &sim.spot_ws(), "/stream?streams=btcusdt@trade").await);
        }
        let bad = try_ws(&sim, &sim.perp_ws_root(), "/private/ws").await;
        assert!(bad.is_err());
        assert_eq!(sim.ws_accepts(), 4);
        // The refused handshake was a fourth socket while three were open.
        assert_eq!(sim.max_open_ws(), 4);
        drop(conns);
        let deadline = Instant::now() + Duration::from_secs(2);
        while sim.open_ws() != 0 {
            assert!(Instant::now() < deadline, "open {}", sim.open_ws());
            smol::Timer::after(Duration::from_millis(10)).await;
        }
        sim.sample_open_ws_into(&mut samples);
        assert_eq!(samples.first(), Some(&1));
        assert_eq!(samples.iter().max(), Some(&sim.max_open_ws()));
        assert_eq!(samples.last(), Some(&0));
        assert_eq!(
            sim.stats()
                .ws_handshake_failures
                .load(std::sync::atomic::Ordering::SeqCst),
            1
        );
    });
}
