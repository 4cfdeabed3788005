//! The on-disk spool end to end: marketbox killed with SIGKILL while its broker is down loses
//! nothing that was in the spool, nor does one stopped with SIGTERM (it waits for the broker
//! a while, flushes and exits 0), and a disk that refuses writes (a file size limit, so writes
//! fail with EFBIG as on a full disk) is named, counted and survived: messages go on from RAM.

#[path = "common/brokers.rs"]
mod brokers;
mod sim;
#[path = "common/tmp.rs"]
mod tmp;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brokers::{InProc, Marketbox, Nats, NatsAuth, Seen, TempDir, read_stream};
use marketbox::config::Config;
use sim::{Disconnect, Mkt, Sim};

fn sim() -> Sim {
    brokers::busy_sim()
}

fn config_text(sim: &Sim, nats_url: &str, spool_dir: &std::path::Path) -> String {
    brokers::spot_feed(
        sim,
        &format!(
            "[upstream]\nkind = \"nats\"\nurl = \"{nats_url}\"\n[spool]\ndir = \"{}\"\ndisk_bytes = 1048576\n",
            spool_dir.display()
        ),
    )
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A first marketbox on a disk spool, its broker (at `port`) down, 3 s after it found the
/// broker unreachable: the spool holds what the simulator sent since.
struct FirstRun {
    sim: Sim,
    port: u16,
    _dir: TempDir,
    spool: std::path::PathBuf,
    config: std::path::PathBuf,
    first: Marketbox,
}

fn first_run_with_the_broker_down(name: &str) -> FirstRun {
    let sim = sim();
    let port = brokers::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let dir = TempDir::new(name);
    let spool = dir.path().join("spool");
    let config = dir.path().join("marketbox.toml");
    std::fs::write(&config, config_text(&sim, &url, &spool)).expect("write the config");
    let first = Marketbox::start(&config, None);
    assert!(
        first.wait_log("cannot connect", Duration::from_secs(10)),
        "{}",
        first.log()
    );
    std::thread::sleep(Duration::from_secs(3));
    FirstRun {
        sim,
        port,
        _dir: dir,
        spool,
        config,
        first,
    }
}

#[test]
fn sigkill_with_the_broker_down_loses_nothing_that_was_in_the_spool() {
    let FirstRun {
        sim,
        port,
        _dir,
        spool,
        config,
        mut first,
    } = first_run_with_the_broker_down("spool-kill");
    // Stop the feed (the socket stays open, nothing more comes), let the last batch reach
    // the disk, then kill without warning.
    let sent = ["BTC-USDT", "ETH-USDT"].map(|s| sim.last_trade_id(Mkt::Spot, s));
    sim.disconnect_all(Disconnect::Silence);
    std::thread::sleep(Duration::from_millis(500));
    assert!(first.is_running());
    first.kill();
    replayed_by_a_second_run(&config, &spool, port, sent, now_ns());
}

#[test]
fn sigterm_with_the_broker_down_flushes_the_spool_and_exits_0() {
    let FirstRun {
        sim: _sim,
        port,
        _dir,
        spool,
        config,
        mut first,
    } = first_run_with_the_broker_down("spool-term");
    // The feed still flowing: the stop takes no new message, waits for the broker for a
    // while (down: the spool cannot drain), flushes the disk spool and exits 0.
    let asked = std::time::Instant::now();
    let status = first.stop(libc::SIGTERM, Duration::from_secs(20));
    let stopped_at = now_ns();
    let log = first.log();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?} after SIGTERM:\n{log}"
    );
    assert!(
        asked.elapsed() >= marketbox::app::RESTART_DRAIN,
        "stopped in {:?}, before waiting for the broker",
        asked.elapsed()
    );
    assert!(log.contains("stopping") && log.contains("SIGTERM"), "{log}");
    assert!(
        log.contains("the spool did not drain before the stop"),
        "{log}"
    );
    // What the first run took in is all on disk: the trades it read up to the stop are
    // contiguous when a second run replays them (which of the simulator's trades it had read
    // when the signal came is not known, so no last id is asked for).
    replayed_by_a_second_run(&config, &spool, port, [0, 0], stopped_at);
}

/// Starts the broker and marketbox again on `spool`: the first run's messages (stamped
/// before `first_ended`) must all reach the broker, each stream in order exactly once, its
/// trades contiguous and reaching `sent` (the last trade id the simulator had sent, per
/// symbol, when the first run stopped reading).
fn replayed_by_a_second_run(
    config: &std::path::Path,
    spool: &std::path::Path,
    port: u16,
    sent: [u64; 2],
    first_ended: u64,
) {
    let on_disk: u64 = std::fs::read_dir(spool)
        .expect("the spool folder")
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    assert!(on_disk > 10_000, "only {on_disk} bytes spooled");
    // Broker up, marketbox again on the same spool: it replays what the first one left.
    let nats = Nats::start_on(port, NatsAuth::None);
    let second = Marketbox::start(config, None);
    assert!(
        second.wait_log("upstream connected", Duration::from_secs(20)),
        "{}",
        second.log()
    );
    std::thread::sleep(Duration::from_secs(3));
    drop(second);
    let msgs = read_stream(&nats, "MARKETBOX");
    let all = Seen::from_payloads(msgs.iter().map(|(_, p)| p.as_slice()));
    let first_run: Vec<&[u8]> = msgs
        .iter()
        .map(|(_, p)| p.as_slice())
        .filter(|p| {
            serde_json::from_slice::<marketbox::model::Message>(p)
                .map(|m| m.ts_local_ns < first_ended)
                .unwrap_or(false)
        })
        .collect();
    let seen = Seen::from_payloads(first_run.iter().copied());
    eprintln!(
        "spooled {on_disk} bytes; the first run's {} messages replayed by the second (stream total {})",
        seen.messages, all.messages
    );
    assert!(seen.messages > 500, "only {} replayed", seen.messages);
    // Nothing of the first run is missing: every stream 1, 2, 3, … and every trade the
    // simulator sent before the feed stopped.
    seen.assert_in_order_exactly_once();
    seen.assert_trades_contiguous();
    for (i, s) in ["BTC-USDT", "ETH-USDT"].iter().enumerate() {
        let ids = &seen.trade_ids()[&format!("trade.binance.spot.{s}")];
        assert!(
            *ids.last().expect("trades") >= sent[i],
            "{s}: trades up to {} were sent, the last replayed is {:?}",
            sent[i],
            ids.last()
        );
    }
}

/// Collects the log of the process (the inner half runs alone in its own process).
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> LogBuf {
        self.clone()
    }
}

const INNER: &str = "MARKETBOX_FULL_DISK_NATS";

#[test]
fn a_full_disk_is_named_counted_and_messages_go_on_from_ram() {
    if let Some(url) = std::env::var_os(INNER) {
        return full_disk_inner(&url.to_string_lossy());
    }
    // Re-run this test alone in a process whose files cannot grow past 64 KiB (SIGXFSZ
    // ignored, so a write past it fails with EFBIG, as on a full disk). The broker runs
    // outside that limit.
    let nats = Nats::start(NatsAuth::None);
    let exe = std::env::current_exe().expect("the test binary");
    let status = std::process::Command::new("bash")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 64; exec \"$0\" \"$@\"")
        .arg(exe)
        .args([
            "--exact",
            "a_full_disk_is_named_counted_and_messages_go_on_from_ram",
            "--nocapture",
        ])
        .env(INNER, nats.url())
        .status()
        .expect("the inner test runs");
    assert!(status.success(), "the inner test failed: {status}");
    let msgs = read_stream(&nats, "MARKETBOX");
    let seen = Seen::from_payloads(msgs.iter().map(|(_, p)| p.as_slice()));
    assert!(seen.messages > 1000, "only {}", seen.messages);
    seen.assert_in_order_exactly_once();
    seen.assert_trades_contiguous();
}

fn full_disk_inner(url: &str) {
    let log = LogBuf::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(log.clone())
        .init();
    let sim = sim();
    let dir = TempDir::new("spool-full");
    let cfg = Config::parse(
        &config_text(&sim, url, &dir.path().join("spool")),
        "full.toml",
    )
    .expect("test config");
    let mut mb = InProc::start(&cfg);
    assert!(
        mb.wait_metric(
            "marketbox_spool_disk_errors_total",
            &[],
            2,
            Duration::from_secs(30)
        ),
        "no disk error counted"
    );
    let acked = mb.metric("marketbox_upstream_acked_total", &[]);
    assert!(mb.wait_metric(
        "marketbox_upstream_acked_total",
        &[],
        acked + 500,
        Duration::from_secs(20)
    ));
    brokers::quiesce(&sim);
    mb.stop_and_drain(Duration::from_secs(20));
    let text = String::from_utf8_lossy(&log.0.lock().expect("lock")).to_string();
    let errors = mb.metric("marketbox_spool_disk_errors_total", &[]);
    let published = mb.metric("marketbox_messages_total", &[]);
    eprintln!("disk errors {errors}, published {published}, none dropped");
    assert!(text.contains("[spool] dir"), "{text}");
    assert!(text.contains("File too large"), "{text}");
    assert_eq!(mb.metric("marketbox_spool_dropped_total", &[]), 0);
    assert_eq!(mb.metric("marketbox_upstream_acked_total", &[]), published);
}
