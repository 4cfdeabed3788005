//! Binance spot end to end against the simulator: churn, gaps, stale snapshots, REST refusals
//! and bad frames, with every published book checked against the simulator's true book.

#[path = "common/harness.rs"]
mod harness;
mod sim;

use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::Harness;
use marketbox::app::App;
use marketbox::config::Config;
use sim::{Disconnect, Malformed, Mkt, RestFault, Sim, SimOptions};

const DEPTH: usize = 10;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn config(sim: &Sim, budget: usize) -> Config {
    config_with_lifetime(sim, budget, "23h")
}

fn config_with_lifetime(sim: &Sim, budget: usize, lifetime: &str) -> Config {
    let text = format!(
        r#"
[budget]
max_connections = {budget}
[book]
depth = {DEPTH}
[session]
connect_timeout = "2s"
stale_after = "3s"
idle_timeout = "500ms"
backoff_min = "20ms"
backoff_max = "200ms"
stable_after = "5s"
max_lifetime = "{lifetime}"
[rest]
idle_timeout = "1s"
request_timeout = "2s"
[tls]
extra_ca = "{ca}"
[venues.binance]
spot_ws = "{ws}"
spot_rest = "{rest}"
[[feeds]]
exchange = "binance"
market = "spot"
symbols = ["BTC-USDT", "ETH-USDT"]
channels = ["orderbook", "trade"]
"#,
        ca = sim.ca_pem_path().display(),
        ws = sim.spot_ws(),
        rest = sim.rest(),
    );
    Config::parse(&text, "e2e.toml").expect("test config")
}

#[test]
fn two_hundred_forced_disconnects_never_exceed_the_plan_and_every_book_is_true() {
    let sim_fds_settle = Duration::from_millis(200);
    let mut h = Harness::start(|sim| config(sim, 3));
    std::thread::sleep(sim_fds_settle);
    assert_eq!(h.app.plan.sockets.len(), 1);
    assert!(
        h.wait_books(3, Duration::from_secs(10)),
        "no verified book at start"
    );
    let mut fd_samples = Vec::new();
    let kinds = [Disconnect::Close, Disconnect::Reset, Disconnect::Silence];
    let t0 = Instant::now();
    for i in 0..200 {
        let accepts = h.sim.ws_accepts();
        h.sim.disconnect_all(kinds[i % 3]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.sim.ws_accepts() == accepts {
            assert!(
                Instant::now() < deadline,
                "no reconnect after disconnect {i} ({:?})",
                kinds[i % 3]
            );
            std::thread::sleep(Duration::from_millis(2));
            h.drain();
        }
        assert!(
            h.wait_books(1, Duration::from_secs(10)),
            "no verified book after disconnect {i} ({:?})",
            kinds[i % 3]
        );
        fd_samples.push(open_fds());
        assert!(
            h.sim.max_open_ws() <= 1,
            "the simulator saw {} sockets at once",
            h.sim.max_open_ws()
        );
        assert!(h.app.budget.peak() <= 3);
    }
    let churn = t0.elapsed();
    let accepts = h.sim.ws_accepts();
    eprintln!(
        "200 disconnects in {churn:?}; ws accepts {accepts}; max open ws at the simulator {}; fd samples min {} max {}",
        h.sim.max_open_ws(),
        fd_samples.iter().min().unwrap(),
        fd_samples.iter().max().unwrap()
    );
    assert!(accepts >= 201);
    // Every socket counted by the service is one the simulator saw, and only one at a time.
    assert_eq!(h.metric("marketbox_ws_connections", &[]), 1);
    assert_eq!(
        h.seen.wrong_books, 0,
        "published books differed from the true book"
    );
    assert!(
        h.seen.books > 400 && h.seen.trades > 0,
        "books {} trades {}",
        h.seen.books,
        h.seen.trades
    );
    assert_eq!(h.seen.seq_gaps, 0, "per-stream seq must have no gaps");
    // Subscriptions and pongs stayed under the venue's 5 incoming messages per second.
    assert_eq!(
        h.sim
            .stats()
            .rate_violations
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    // The fd count does not grow with churn.
    let (first, last) = (
        fd_samples[..20].iter().max().unwrap(),
        fd_samples[180..].iter().max().unwrap(),
    );
    assert!(
        last <= first,
        "fds grew from {first} to {last} over the churn"
    );
}

#[test]
fn every_injected_gap_resyncs_only_its_symbol_and_verifies_again() {
    let mut h = Harness::start(|sim| config(sim, 3));
    assert!(h.wait_books(3, Duration::from_secs(10)));
    let before = h.metric("marketbox_book_resyncs_total", &[("reason", "gap")]);
    let connects = h.metric("marketbox_ws_connects_total", &[("result", "ok")]);
    for i in 0..10 {
        h.sim.inject_gap(Mkt::Spot, "BTCUSDT");
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.metric(
            "marketbox_book_resyncs_total",
            &[("reason", "gap"), ("symbol", "BTC-USDT")],
        ) < before + i + 1
        {
            assert!(Instant::now() < deadline, "gap {i} was not detected");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            h.wait_books(2, Duration::from_secs(10)),
            "no verified book after gap {i}"
        );
    }
    assert_eq!(
        h.metric("marketbox_book_resyncs_total", &[("symbol", "ETH-USDT")]),
        0
    );
    // Resyncs never dropped the socket.
    assert_eq!(
        h.metric("marketbox_ws_connects_total", &[("result", "ok")]),
        connects
    );
    assert_eq!(h.seen.wrong_books, 0);
}

#[test]
fn stale_snapshots_and_rest_refusals_are_survived() {
    let mut h = Harness::start(|sim| config(sim, 3));
    assert!(h.wait_books(2, Duration::from_secs(10)));
    h.sim.stale_snapshots(2);
    h.sim.disconnect_all(Disconnect::Reset);
    assert!(
        h.wait_books(2, Duration::from_secs(10)),
        "no book after stale snapshots"
    );
    assert!(
        h.metric(
            "marketbox_book_resyncs_total",
            &[("reason", "stale_snapshot")]
        ) >= 1
    );
    let t = Instant::now();
    h.sim.rest_fault(
        RestFault::TooMany {
            retry_after_secs: 1,
        },
        1,
    );
    h.sim.rest_fault(
        RestFault::Banned {
            retry_after_secs: 1,
        },
        1,
    );
    h.sim.disconnect_all(Disconnect::Close);
    assert!(
        h.wait_books(2, Duration::from_secs(15)),
        "no book after 429/418"
    );
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    assert!(h.metric("marketbox_rest_requests_total", &[("status", "429")]) >= 1);
    assert!(h.metric("marketbox_rest_requests_total", &[("status", "418")]) >= 1);
    assert!(
        h.sim.max_open_rest() <= 1,
        "more than one REST connection to one host"
    );
    assert_eq!(h.seen.wrong_books, 0);
}

#[test]
fn bad_frames_are_counted_and_skipped_without_losing_the_feed() {
    let mut h = Harness::start(|sim| config(sim, 3));
    assert!(h.wait_books(2, Duration::from_secs(10)));
    let connects = h.metric("marketbox_ws_connects_total", &[("result", "ok")]);
    for kind in [
        Malformed::NotJson,
        Malformed::UnknownEvent,
        Malformed::Binary,
    ] {
        h.sim.send_malformed(kind);
    }
    assert!(h.wait_books(5, Duration::from_secs(10)));
    assert!(h.metric("marketbox_ws_frames_total", &[("kind", "malformed")]) >= 1);
    assert!(h.metric("marketbox_ws_frames_total", &[("kind", "unknown")]) >= 2);
    // Skipped, not reconnected.
    assert_eq!(
        h.metric("marketbox_ws_connects_total", &[("result", "ok")]),
        connects
    );
    // An oversized frame cannot be skipped (the frame limit protects memory): the socket is
    // replaced and counted.
    h.sim
        .send_malformed(Malformed::Oversized { bytes: 2 << 20 });
    assert!(h.wait_books(3, Duration::from_secs(10)));
    assert!(h.metric("marketbox_ws_frames_total", &[("kind", "oversized")]) >= 1);
    // A server shutdown notice on this young socket (reconnected just above, under
    // stable_after) is postponed, not obeyed at once; the venue closes it and it is replaced.
    h.sim.server_shutdown();
    assert!(h.wait_books(3, Duration::from_secs(10)));
    assert!(h.metric("marketbox_ws_rotation_deferred_total", &[]) >= 1);
    assert_eq!(h.seen.wrong_books, 0);
}

#[test]
fn a_plan_over_budget_refuses_to_start() {
    let sim = Sim::start(SimOptions::default());
    let ex = Arc::new(smol::Executor::new());
    let err = App::start(&config(&sim, 1), &ex)
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("max_connections is 1"), "{err}");
}

#[test]
fn the_fd_count_returns_to_its_baseline_after_stop() {
    let sim = Sim::start(SimOptions::default());
    std::thread::sleep(Duration::from_millis(100));
    let baseline = open_fds();
    {
        let ex = Arc::new(smol::Executor::new());
        let mut app = App::start(&config(&sim, 3), &ex).expect("starts");
        let ex2 = ex.clone();
        let (tx, rx) = smol::channel::bounded::<()>(1);
        let t = std::thread::spawn(move || {
            smol::block_on(ex2.run(async {
                let _ = rx.recv().await;
            }))
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while app.budget.in_use() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(open_fds() > baseline);
        app.stop();
        drop(app);
        let deadline = Instant::now() + Duration::from_secs(5);
        while open_fds() > baseline && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = tx.try_send(());
        let _ = t.join();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_fds() > baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(open_fds(), baseline, "sockets leaked");
}

#[test]
fn connections_rotate_at_their_lifetime_make_before_break() {
    let mut h = Harness::start(|sim| config_with_lifetime(sim, 3, "1500ms"));
    assert!(h.wait_books(2, Duration::from_secs(10)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.metric("marketbox_ws_rotations_total", &[]) < 2 {
        assert!(Instant::now() < deadline, "no lifetime rotation");
        std::thread::sleep(Duration::from_millis(20));
        h.drain();
    }
    // A spare permit existed: the replacement was opened before the old socket closed.
    assert_eq!(h.sim.max_open_ws(), 2);
    assert!(h.app.budget.peak() <= 3);
    assert!(
        h.wait_books(2, Duration::from_secs(10)),
        "no book after rotation"
    );
    assert_eq!(h.seen.wrong_books, 0);
}

#[test]
fn the_rest_connection_closes_when_idle_and_returns_its_permit() {
    let mut h = Harness::start(|sim| config(sim, 3));
    assert!(h.wait_books(2, Duration::from_secs(10)));
    // Synced books need no REST; after [rest] idle_timeout (1 s) the keep-alive is closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.metric("marketbox_rest_connections", &[]) != 0 || h.sim.open_rest() != 0 {
        assert!(
            Instant::now() < deadline,
            "the idle REST connection stayed open"
        );
        std::thread::sleep(Duration::from_millis(20));
        h.drain();
    }
    assert_eq!(
        h.app.budget.in_use(),
        1,
        "only the WebSocket holds a permit now"
    );
    // The server pings every 2 s; a live connection answers (or the venue would drop it).
    let deadline = Instant::now() + Duration::from_secs(6);
    while h
        .sim
        .stats()
        .pongs
        .load(std::sync::atomic::Ordering::SeqCst)
        == 0
    {
        assert!(Instant::now() < deadline, "server pings were not answered");
        std::thread::sleep(Duration::from_millis(20));
        h.drain();
    }
}
