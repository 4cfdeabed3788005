//! NATS JetStream upstream end to end: the exchange simulator feeds marketbox, marketbox
//! publishes to a real `nats-server -js` on a free loopback port, and the test reads the
//! stream back and checks every stream's `seq` and every trade id.

#[path = "common/brokers.rs"]
mod brokers;
mod sim;
#[path = "common/tmp.rs"]
mod tmp;

use std::time::{Duration, Instant};

use brokers::{InProc, Marketbox, Nats, NatsAuth, Seen, TempDir, read_stream};
use marketbox::config::Config;
use sim::{Mkt, Sim};

fn sim() -> Sim {
    brokers::busy_sim()
}

fn config_text(sim: &Sim, extra: &str) -> String {
    brokers::spot_feed(sim, extra)
}

fn nats_upstream(url: &str, more: &str) -> String {
    format!(
        "[upstream]\nkind = \"nats\"\nurl = \"{url}\"\n[upstream.nats]\nstream = \"MARKETBOX\"\n{more}"
    )
}

fn parse(text: &str) -> Config {
    Config::parse(text, "upstream.toml").expect("test config")
}

fn seen(nats: &Nats) -> Seen {
    let msgs = read_stream(nats, "MARKETBOX");
    Seen::from_payloads(msgs.iter().map(|(_, p)| p.as_slice()))
}

#[test]
fn every_message_reaches_jetstream_once_in_order_through_a_30s_broker_outage() {
    let sim = sim();
    let mut nats = Nats::start(NatsAuth::None);
    let cfg = parse(&config_text(&sim, &nats_upstream(&nats.url(), "")));
    let mut mb = InProc::start(&cfg);
    assert!(
        mb.wait_metric(
            "marketbox_upstream_acked_total",
            &[],
            500,
            Duration::from_secs(20)
        ),
        "nothing acknowledged"
    );
    assert_eq!(mb.metric("marketbox_upstream_up", &[]), 1);
    // The upstream socket holds a permit: one WebSocket + one upstream (+ REST while syncing).
    assert!(mb.app.budget.in_use() >= 2);
    nats.kill();
    let killed = Instant::now();
    let acked_at_kill = mb.metric("marketbox_upstream_acked_total", &[]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(mb.metric("marketbox_upstream_up", &[]), 0);
    let waiting = mb.app.spool.len();
    std::thread::sleep(Duration::from_secs(30).saturating_sub(killed.elapsed()));
    nats.restart();
    assert!(
        mb.wait_metric(
            "marketbox_upstream_acked_total",
            &[],
            acked_at_kill + 2000,
            Duration::from_secs(20)
        ),
        "no recovery after the restart"
    );
    brokers::quiesce(&sim);
    mb.stop_and_drain(Duration::from_secs(20));
    let published = mb.metric("marketbox_messages_total", &[]);
    let dropped = mb.metric("marketbox_spool_dropped_total", &[]);
    let errors = mb.metric("marketbox_upstream_errors_total", &[]);
    let dups = mb.metric("marketbox_upstream_duplicates_total", &[]);
    let seen = seen(&nats);
    eprintln!(
        "published {published}, in the stream {}, waiting at the outage {waiting}, upstream errors {errors}, duplicates dropped by Msg-Id {dups}",
        seen.messages
    );
    assert_eq!(dropped, 0);
    assert!(errors >= 1, "the outage was not counted");
    assert_eq!(seen.messages, published, "not exactly once");
    seen.assert_in_order_exactly_once();
    seen.assert_trades_contiguous();
    let trades: usize = seen.trade_ids().values().map(Vec::len).sum();
    assert!(trades > 500, "only {trades} trades");
    // Every trade the simulator made while subscribed is there, up to the last one sent.
    for sym in ["BTC-USDT", "ETH-USDT"] {
        let ids = &seen.trade_ids()[&format!("trade.binance.spot.{sym}")];
        assert!(*ids.last().expect("trades") <= sim.last_trade_id(Mkt::Spot, sym));
    }
}

#[test]
fn with_a_tiny_spool_and_the_broker_down_the_gaps_equal_the_drops() {
    let sim = sim();
    let port = brokers::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let cfg = parse(&config_text(
        &sim,
        &format!("{}\n[spool]\nram_bytes = 4096\n", nats_upstream(&url, "")),
    ));
    let mut mb = InProc::start(&cfg);
    // Unreachable broker at start: counted, collection goes on.
    let msg = mb.failure("connect");
    assert!(
        msg.contains("[upstream] url") && msg.contains("cannot connect"),
        "{msg}"
    );
    assert!(mb.wait_metric(
        "marketbox_spool_dropped_total",
        &[],
        200,
        Duration::from_secs(20)
    ));
    assert_eq!(mb.metric("marketbox_upstream_up", &[]), 0);
    let nats = Nats::start_on(port, NatsAuth::None);
    assert!(mb.wait_metric(
        "marketbox_upstream_acked_total",
        &[],
        200,
        Duration::from_secs(20)
    ));
    brokers::quiesce(&sim);
    mb.stop_and_drain(Duration::from_secs(20));
    let seen = seen(&nats);
    // Per channel: published - received = dropped, exactly.
    for ch in ["orderbook", "trade"] {
        let published = mb.metric("marketbox_messages_total", &[("channel", ch)]);
        let dropped = mb.metric("marketbox_spool_dropped_total", &[("channel", ch)]);
        let received: u64 = seen
            .streams
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{ch}.")))
            .map(|(_, v)| v.len() as u64)
            .sum();
        // And the gaps in `seq` a consumer sees are those drops.
        let gaps: u64 = seen
            .streams
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{ch}.")))
            .map(|(_, v)| {
                let max = v.iter().map(|m| m.seq).max().unwrap_or(0);
                max - v.len() as u64
            })
            .sum();
        eprintln!(
            "{ch}: published {published}, received {received}, dropped {dropped}, gaps below the last seq {gaps}"
        );
        assert!(dropped > 0, "{ch}: nothing dropped");
        assert_eq!(published - received, dropped, "{ch}");
        assert!(gaps <= dropped);
        for (k, v) in &seen.streams {
            assert!(
                v.windows(2).all(|w| w[1].seq > w[0].seq),
                "{k}: out of order"
            );
        }
    }
}

#[test]
fn two_boxes_on_one_feed_store_each_trade_once() {
    let sim = sim();
    let nats = Nats::start(NatsAuth::None);
    let dir = TempDir::new("two-boxes");
    let mut boxes = Vec::new();
    for i in 0..2 {
        let path = dir.path().join(format!("box{i}.toml"));
        let text = config_text(&sim, &nats_upstream(&nats.url(), ""))
            .replace("id = \"test-box\"", &format!("id = \"box-{i}\""));
        std::fs::write(&path, text).expect("write the config");
        boxes.push(Marketbox::start(&path, None));
    }
    for b in &boxes {
        assert!(
            b.wait_log("upstream connected", Duration::from_secs(20)),
            "{}",
            b.log()
        );
    }
    std::thread::sleep(Duration::from_secs(4));
    for b in &mut boxes {
        assert!(b.is_running());
    }
    // Both stop; what they had acknowledged is in the stream.
    for b in &mut boxes {
        b.kill();
    }
    let seen = seen(&nats);
    let ids = seen.trade_ids();
    let mut total = 0;
    for (k, v) in &ids {
        let mut sorted = v.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), v.len(), "{k}: a trade stored twice");
        total += v.len();
    }
    let books: usize = seen
        .streams
        .iter()
        .filter(|(k, _)| k.starts_with("orderbook."))
        .map(|(_, v)| v.len())
        .sum();
    eprintln!("two boxes: {total} trades, {books} books, each once");
    assert!(total > 200, "only {total} trades");
}

#[test]
fn refused_credentials_and_a_foreign_stream_are_named_counted_and_survived() {
    let sim = sim();
    let dir = TempDir::new("nats-bad");
    // TC0: a wrong token.
    let nats = Nats::start(NatsAuth::Token("right-token".into()));
    let token = dir.path().join("token");
    std::fs::write(&token, "wrong-token\n").expect("write the token");
    let cfg = Config::load(&{
        let p = dir.path().join("auth.toml");
        std::fs::write(
            &p,
            config_text(
                &sim,
                &nats_upstream(
                    &nats.url(),
                    &format!("token_file = \"{}\"\n", token.display()),
                ),
            ),
        )
        .expect("write");
        p
    })
    .expect("valid config");
    let mb = InProc::start(&cfg);
    let msg = mb.failure("auth");
    assert!(msg.contains("token_file"), "{msg}");
    assert!(
        !msg.contains("wrong-token"),
        "a secret in the message: {msg}"
    );
    mb.assert_collecting_while_down();
    drop(mb);
    // The right token works.
    std::fs::write(&token, "right-token\n").expect("write the token");
    let cfg = Config::load(&dir.path().join("auth.toml")).expect("valid config");
    let mb = InProc::start(&cfg);
    assert!(mb.wait_metric(
        "marketbox_upstream_acked_total",
        &[],
        10,
        Duration::from_secs(10)
    ));
    drop(mb);
    drop(nats);

    // TC1: the stream exists with other subjects.
    let nats = Nats::start(NatsAuth::None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let js = async_nats::jetstream::new(nats.client().await);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "MARKETBOX".into(),
            subjects: vec!["other.>".into()],
            ..Default::default()
        })
        .await
        .expect("the test creates a foreign stream");
    });
    let cfg = parse(&config_text(&sim, &nats_upstream(&nats.url(), "")));
    let mb = InProc::start(&cfg);
    let msg = mb.failure("stream");
    assert!(
        msg.contains("[upstream.nats] stream") && msg.contains("other.>"),
        "{msg}"
    );
    mb.assert_collecting_while_down();
    assert_eq!(mb.metric("marketbox_upstream_acked_total", &[]), 0);
}

#[test]
fn tls_trusts_the_configured_ca_and_only_it() {
    let sim = sim();
    let dir = TempDir::new("nats-tls");
    let (ca, cert, key) = brokers::tls_files(dir.path());
    let nats = Nats::start_tls(&cert, &key);
    // TC0: the webpki roots alone do not trust the broker: named, counted, collection goes on.
    let mb = InProc::start(&parse(&config_text(&sim, &nats_upstream(&nats.url(), ""))));
    let msg = mb.failure("tls");
    assert!(msg.contains("[upstream.nats] ca"), "{msg}");
    mb.assert_collecting_while_down();
    drop(mb);
    // TC1: with `ca` it is verified and messages are acknowledged.
    let cfg = parse(&config_text(
        &sim,
        &nats_upstream(&nats.url(), &format!("ca = \"{}\"\n", ca.display())),
    ));
    let mb = InProc::start(&cfg);
    assert!(mb.wait_metric(
        "marketbox_upstream_acked_total",
        &[],
        10,
        Duration::from_secs(10)
    ));
}
