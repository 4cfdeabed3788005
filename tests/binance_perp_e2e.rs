//! Binance USD-M end to end: two sockets (`/public` depth and trade, `/market` markPrice and
//! forceOrder), REST pollers, churn and gaps, every book checked against the true book.

#[path = "common/harness.rs"]
mod harness;
mod sim;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use harness::Harness;
use marketbox::config::Config;
use marketbox::model::{Channel, Data, Market};
use sim::{Disconnect, Mkt, RestFault, Sim};

fn config(sim: &Sim) -> Config {
    let text = format!(
        r#"
[budget]
max_connections = 4
[book]
depth = 10
[session]
connect_timeout = "2s"
idle_timeout = "800ms"
backoff_min = "20ms"
backoff_max = "200ms"
[tls]
extra_ca = "{ca}"
[venues.binance]
perpetual_public_ws = "{public}"
perpetual_market_ws = "{market}"
perpetual_rest = "{rest}"
[[feeds]]
exchange = "binance"
market = "perpetual"
symbols = ["BTC-USDT", "ETH-USDT"]
channels = ["orderbook", "trade", "funding_rate", "open_interest", "liquidation", "lsr_top_position", "lsr_all_account"]
"#,
        ca = sim.ca_pem_path().display(),
        public = sim.perp_public_ws(),
        market = sim.perp_market_ws(),
        rest = sim.rest(),
    );
    Config::parse(&text, "perp.toml").expect("test config")
}

#[test]
fn perpetual_market_on_two_sockets_delivers_every_channel_through_churn() {
    let mut h = Harness::start(|sim| {
        // The first REST answers are refusals: pollers and snapshots must survive them.
        sim.rest_fault(
            RestFault::TooMany {
                retry_after_secs: 1,
            },
            2,
        );
        sim.rest_fault(
            RestFault::Banned {
                retry_after_secs: 1,
            },
            1,
        );
        config(sim)
    });
    let names: Vec<_> = h.app.plan.sockets.iter().map(|s| s.name).collect();
    assert_eq!(names, ["perpetual_public", "perpetual_market"]);
    assert!(
        h.wait_books(3, Duration::from_secs(15)),
        "no verified perpetual book"
    );
    for i in 0..30 {
        let kind = [Disconnect::Close, Disconnect::Reset, Disconnect::Silence][i % 3];
        let accepts = h.sim.ws_accepts();
        h.sim.disconnect_all(kind);
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.sim.ws_accepts() < accepts + 2 {
            assert!(
                Instant::now() < deadline,
                "both sockets did not come back after {kind:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
            h.drain();
        }
        assert!(
            h.wait_books(1, Duration::from_secs(10)),
            "no book after disconnect {i}"
        );
        assert!(
            h.sim.max_open_ws() <= 2,
            "the simulator saw {} sockets at once",
            h.sim.max_open_ws()
        );
    }
    // Gaps in the pu chain resync the one symbol, on a socket that stays up.
    for i in 0..3 {
        let before = h.metric(
            "marketbox_book_resyncs_total",
            &[("reason", "gap"), ("market", "perpetual")],
        );
        h.sim.inject_gap(Mkt::Perp, "BTCUSDT");
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.metric(
            "marketbox_book_resyncs_total",
            &[("reason", "gap"), ("market", "perpetual")],
        ) == before
        {
            assert!(Instant::now() < deadline, "gap {i} was not detected");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            h.wait_books(2, Duration::from_secs(10)),
            "no book after gap {i}"
        );
    }
    // Let the pollers and the /market tier deliver.
    let deadline = Instant::now() + Duration::from_secs(20);
    let all: HashSet<Channel> = Channel::ALL.into_iter().collect();
    loop {
        h.drain();
        let seen: HashSet<Channel> = h.messages.iter().map(|m| m.channel).collect();
        if seen == all || Instant::now() > deadline {
            assert_eq!(seen, all, "channels missing");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        h.seen.wrong_books, 0,
        "a published perpetual book differed from the true book"
    );
    assert!(h.metric("marketbox_rest_requests_total", &[("status", "429")]) >= 1);
    assert!(h.metric("marketbox_rest_requests_total", &[("status", "418")]) >= 1);
    // Every message carries the fields its channel promises.
    for m in &h.messages {
        assert_eq!(m.market, Market::Perpetual);
        match (&m.data, m.channel) {
            (Data::Orderbook(o), Channel::Orderbook) => assert_eq!(o.bids.len(), 10),
            (Data::Trade(t), Channel::Trade) => assert!(!t.qty.is_zero()),
            (Data::FundingRate(f), Channel::FundingRate) => {
                assert!(f.mark_price.is_some() && f.index_price.is_some() && f.funding_time_ms > 0)
            }
            (Data::Liquidation(l), Channel::Liquidation) => {
                assert!(l.avg_price.is_some() && l.status.as_deref() == Some("FILLED"))
            }
            (Data::OpenInterest(o), Channel::OpenInterest) => assert!(!o.open_interest.is_zero()),
            (Data::LongShortRatio(r), Channel::LsrTopPosition | Channel::LsrAllAccount) => {
                assert_eq!(
                    (r.ratio.to_string(), r.period.as_str()),
                    ("1.9823".into(), "5m")
                );
                assert!(r.long.is_some() && r.short.is_some());
            }
            (d, c) => panic!("{c} carried {d:?}"),
        }
    }
    // Ratios are published once per period, however often they are polled.
    let lsr = h
        .messages
        .iter()
        .filter(|m| m.channel == Channel::LsrTopPosition)
        .count();
    assert_eq!(lsr, 2, "one per symbol per 5-minute period");
    // Pollers met the 429/418 (they ask first, before any snapshot) and are up again.
    assert!(h.metric("marketbox_poller_failures_total", &[]) >= 1);
    assert_eq!(h.metric("marketbox_poller_up", &[]), 6);
}
