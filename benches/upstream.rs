//! Upstream figures against real brokers on loopback (`nats-server -js`, `mosquitto`, started
//! here on free ports):
//!
//! - acknowledged publish throughput: a burst of trades published into the spool (encode,
//!   push) and drained by the upstream, from the first push to the last acknowledgement;
//! - stamp-to-ack latency p50/p99 at a paced rate (the stamp is `ts_local_ns`, set when a
//!   parsed frame's message is handed to the spool), measured on every message;
//! - postcard and JSON bytes per message type;
//! - resident memory of `marketbox run` with the default config's feeds (pointed at the
//!   exchange simulators) and `[upstream] kind = "nats"`, after it has run for a while.
//!
//! Run: `cargo bench --bench upstream`. Under `cargo test` only a small smoke pass runs (a
//! few hundred messages through each broker), as a test.

#[path = "../tests/common/brokers.rs"]
mod brokers;
#[path = "../tests/sim/mod.rs"]
#[allow(unused_imports)]
mod sim;
#[path = "../tests/common/tmp.rs"]
mod tmp;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use marketbox::book::Decimal;
use marketbox::config::{Config, Format};
use marketbox::encode::Encoder;
use marketbox::metrics::Metrics;
use marketbox::model::{
    Channel, Data, Exchange, FundingRateData, LiquidationData, LongShortRatioData, Market, Message,
    OpenInterestData, OrderbookData, Side, Symbol, TradeData,
};
use marketbox::upstream::spool::{Spool, SpoolMetrics};
use marketbox::upstream::{Publisher, StreamKey};

fn timed() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn d(s: &str) -> Decimal {
    s.parse().expect("a decimal literal")
}

fn sample(channel: Channel) -> Data {
    match channel {
        Channel::Orderbook => {
            let mut bids = heapless::Vec::new();
            let mut asks = heapless::Vec::new();
            for i in 0..20 {
                let _ = bids.push((d(&format!("87012.{:02}000000", 34 - i)), d("0.51200000")));
                let _ = asks.push((d(&format!("87013.{:02}000000", 35 + i)), d("1.00300000")));
            }
            Data::Orderbook(OrderbookData {
                bids,
                asks,
                update_id: 72_631_001_234,
            })
        }
        Channel::Trade => Data::Trade(TradeData {
            trade_id: 5_123_456_789,
            price: d("87012.35000000"),
            qty: d("0.00123000"),
            side: Side::Buy,
        }),
        Channel::FundingRate => Data::FundingRate(FundingRateData {
            funding_rate: d("0.00010000"),
            funding_time_ms: 1_764_057_600_000,
            mark_price: Some(d("87015.12345678")),
            index_price: Some(d("87010.98765432")),
            next_funding_rate: None,
        }),
        Channel::OpenInterest => Data::OpenInterest(OpenInterestData {
            open_interest: d("81234.567"),
            open_interest_contracts: None,
        }),
        Channel::Liquidation => Data::Liquidation(LiquidationData {
            side: Side::Sell,
            price: d("86950.10"),
            qty: d("0.014"),
            avg_price: Some(d("86951.23")),
            status: heapless::String::try_from("FILLED").ok(),
        }),
        Channel::LsrTopPosition | Channel::LsrAllAccount => {
            Data::LongShortRatio(LongShortRatioData {
                ratio: d("1.9823"),
                long: Some(d("0.6647")),
                short: Some(d("0.3353")),
                period: heapless::String::try_from("5m").unwrap_or_default(),
            })
        }
    }
}

fn bytes_per_type() {
    println!("\nbytes per message (BTC-USDT, perpetual; books at 20 levels):");
    println!("| channel | json | postcard | postcard / json |");
    println!("|---|---|---|---|");
    let sym = Symbol::parse("BTC-USDT").expect("valid");
    for ch in Channel::ALL {
        let m = Message {
            exchange: Exchange::Binance,
            market: Market::Perpetual,
            symbol: sym,
            channel: ch,
            seq: 123_456,
            ts_exchange_ms: 1_764_050_000_123,
            ts_local_ns: 1_764_050_000_125_000_000,
            id: marketbox::model::message_id(
                Exchange::Binance,
                Market::Perpetual,
                sym,
                ch,
                5_123_456_789,
            ),
            data: sample(ch),
        };
        let j = Encoder::new(Format::Json)
            .encode(&m)
            .expect("encodes")
            .len();
        let p = Encoder::new(Format::Postcard)
            .encode(&m)
            .expect("encodes")
            .len();
        println!("| {ch} | {j} | {p} | {:.2} |", p as f64 / j as f64);
    }
}

fn broker_config(kind: &str, url: &str) -> Config {
    let text = format!(
        "[session]\nbackoff_min = \"50ms\"\nbackoff_max = \"1s\"\n[upstream]\nkind = \"{kind}\"\nurl = \"{url}\"\n"
    );
    Config::parse(&text, "bench.toml").expect("bench config")
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Burst throughput and paced latency through one broker.
fn run_broker(name: &str, cfg: &Config, burst: u64, paced: u64, rate: u64) {
    let metrics = Metrics::new();
    let spool = Spool::new(256 << 20, SpoolMetrics::new(&metrics));
    let budget = marketbox::budget::Budget::new(2, None);
    let samples: Arc<Mutex<Vec<u64>>> = Arc::default();
    let sink = samples.clone();
    let up = marketbox::upstream::start_observed(
        cfg,
        spool.clone(),
        budget,
        &metrics,
        Some(Arc::new(move |ns| {
            sink.lock().unwrap_or_else(|e| e.into_inner()).push(ns)
        })),
    )
    .expect("the upstream starts");
    let key = StreamKey {
        exchange: Exchange::Binance,
        market: Market::Spot,
        symbol: Symbol::parse("BTC-USDT").expect("valid"),
        channel: Channel::Trade,
    };
    let mut publisher = Publisher::new(spool.clone(), cfg.upstream.format, &[key], None);
    let acked = || metrics.upstream_acked.get();
    let wait_acked = |n: u64, timeout: Duration| {
        let deadline = Instant::now() + timeout;
        while acked() < n {
            assert!(
                Instant::now() < deadline,
                "{name}: only {} of {n} acknowledged",
                acked()
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    };
    let mut trade_id = 1u64;
    let mut publish = |publisher: &mut Publisher| {
        trade_id += 1;
        if let Data::Trade(mut t) = sample(Channel::Trade) {
            t.trade_id = trade_id;
            publisher.publish(0, 1_764_050_000_123, trade_id, Data::Trade(t));
        }
    };
    // Warm up: connected, stream created.
    publish(&mut publisher);
    wait_acked(1, Duration::from_secs(20));
    // Burst.
    let t0 = Instant::now();
    for _ in 0..burst {
        publish(&mut publisher);
    }
    wait_acked(1 + burst, Duration::from_secs(120));
    let elapsed = t0.elapsed();
    // Paced.
    samples.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let gap = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let start = Instant::now();
    for i in 0..paced {
        let due = start + gap * i as u32;
        // Sleep, not spin: the box has two cores, and the broker and the upstream need them.
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        publish(&mut publisher);
    }
    wait_acked(1 + burst + paced, Duration::from_secs(60));
    let mut lat = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    lat.sort_unstable();
    println!(
        "{name}: {burst} trades acknowledged in {:.3} s = {:.0} msg/s; paced {paced} at {rate}/s: \
         stamp-to-ack p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, max {:.0} µs ({} samples); dropped {}",
        elapsed.as_secs_f64(),
        burst as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.90),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
        lat.len(),
        spool.metrics().dropped_total()
    );
    assert_eq!(spool.metrics().dropped_total(), 0);
    spool.close();
    up.join().expect("the upstream drained");
}

/// The default config's feeds against the simulators, NATS upstream; VmRSS after `secs`.
fn rss(secs: u64, upstream: &str) {
    let bin = sim::Sim::start(sim::SimOptions::default());
    let okx = sim::okx::OkxSim::start(sim::okx::OkxOptions::default());
    let nats = brokers::Nats::start(brokers::NatsAuth::None);
    let dir = brokers::TempDir::new("bench-rss");
    let ca = dir.path().join("ca.pem");
    let mut pem = std::fs::read(bin.ca_pem_path()).expect("the CA");
    pem.extend(std::fs::read(okx.ca_pem_path()).expect("the CA"));
    std::fs::write(&ca, pem).expect("write the CA");
    let text = sim::default_config_on(&bin, &okx, &ca, "127.0.0.1:0").replacen(
        "kind = \"stdout\"",
        &if upstream == "nats" {
            format!("kind = \"nats\"\nurl = \"{}\"", nats.url())
        } else {
            "kind = \"stdout\"".to_owned()
        },
        1,
    );
    let path = dir.path().join("marketbox.toml");
    std::fs::write(&path, text).expect("write the config");
    let mut mb = brokers::Marketbox::start(&path, None);
    if upstream == "nats" {
        assert!(
            mb.wait_log("upstream connected", Duration::from_secs(30)),
            "{}",
            mb.log()
        );
    }
    std::thread::sleep(Duration::from_secs(secs));
    assert!(mb.is_running(), "{}", mb.log());
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", mb.pid())).expect("the child's status");
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or("VmRSS: ?")
        .to_owned();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or("VmHWM: ?")
        .to_owned();
    println!(
        "marketbox run, default feeds on the simulators, upstream {upstream}, after {secs} s: {rss}, peak {hwm}"
    );
}

fn main() {
    if !timed() {
        // `cargo test`: a smoke pass that fails if a broker path is broken.
        let nats = brokers::Nats::start(brokers::NatsAuth::None);
        run_broker(
            "nats smoke",
            &broker_config("nats", &nats.url()),
            200,
            100,
            2000,
        );
        let mq = brokers::Mosquitto::start();
        run_broker(
            "mqtt smoke",
            &broker_config("mqtt", &mq.url()),
            200,
            100,
            2000,
        );
        return;
    }
    // `cargo bench --bench upstream -- rss`: the memory figures alone.
    if std::env::args().any(|a| a == "rss") {
        rss(20, "nats");
        rss(20, "stdout");
        return;
    }
    if std::env::args().any(|a| a == "nats") {
        let nats = brokers::Nats::start(brokers::NatsAuth::None);
        let cfg = broker_config("nats", &nats.url());
        run_broker("JetStream 2k/s", &cfg, 20_000, 10_000, 2_000);
        return;
    }
    bytes_per_type();
    println!();
    let nats = brokers::Nats::start(brokers::NatsAuth::None);
    run_broker(
        "JetStream acked publish (json)",
        &broker_config("nats", &nats.url()),
        200_000,
        20_000,
        10_000,
    );
    drop(nats);
    let mq = brokers::Mosquitto::start();
    run_broker(
        "MQTT QoS 1 (json)",
        &broker_config("mqtt", &mq.url()),
        200_000,
        20_000,
        10_000,
    );
    drop(mq);
    rss(20, "nats");
    rss(20, "stdout");
}
