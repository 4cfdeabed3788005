//! A hostile or broken venue cannot crash, stall, storm or fool the box (issue: hardening).
//!
//! Each test drives the exchange simulators in a hostile mode and checks what a user relies
//! on: the session survives, paces itself, notices dead paths, and never publishes a book that
//! is not the venue's true book.

#[path = "common/harness.rs"]
mod harness;
#[path = "common/okx_harness.rs"]
mod okx_harness;
mod sim;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harness::Harness;
use marketbox::config::Config;
use marketbox::model::{Channel, Data, Message};
use okx_harness::Okx;
use sim::okx::{BookMode, ChecksumMode, OkxOptions};
use sim::{Disconnect, Mkt, RestFault, Sim};

/// A Binance spot config against `sim`, with `session` as the `[session]` table (every key
/// left out takes the product default).
fn binance(sim: &Sim, budget: usize, session: &str, symbols: &[String], channels: &str) -> Config {
    let symbols: Vec<String> = symbols.iter().map(|s| format!("\"{s}\"")).collect();
    let text = format!(
        r#"
[budget]
max_connections = {budget}
[book]
depth = 10
[session]
{session}
[rest]
idle_timeout = "2s"
request_timeout = "2s"
[tls]
extra_ca = "{ca}"
[venues.binance]
spot_ws = "{ws}"
spot_rest = "{rest}"
perpetual_public_ws = "{pp}"
perpetual_market_ws = "{pm}"
perpetual_rest = "{rest}"
[[feeds]]
exchange = "binance"
market = "spot"
symbols = [{symbols}]
channels = [{channels}]
"#,
        ca = sim.ca_pem_path().display(),
        ws = sim.spot_ws(),
        pp = sim.perp_public_ws(),
        pm = sim.perp_market_ws(),
        rest = sim.rest(),
        symbols = symbols.join(","),
    );
    Config::parse(&text, "hostile.toml").expect("test config")
}

fn two() -> Vec<String> {
    vec!["BTC-USDT".into(), "ETH-USDT".into()]
}

/// `FAST` with `stable_after = "5s"`.
const STABLE5: &str = r#"connect_timeout = "2s"
backoff_min = "20ms"
backoff_max = "200ms"
stable_after = "5s""#;

const FAST: &str = r#"connect_timeout = "2s"
backoff_min = "20ms"
backoff_max = "200ms""#;

/// Trades and books seen since `from` (an index into `h.messages`), per symbol.
fn counts_since(messages: &[Message], from: usize, channel: Channel, symbol: &str) -> usize {
    messages[from..]
        .iter()
        .filter(|m| m.channel == channel && m.symbol.as_str() == symbol)
        .count()
}

/// Drains for `d`.
fn run_for(h: &mut Harness, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
        h.drain();
    }
}

/// Gives the next snapshot request (`symbol`'s, after a gap) a hostile answer and checks
/// for 3 s that the session lives: trades keep flowing on both symbols, and `other`'s books
/// too when the answer only concerns `symbol`.
fn hostile_answer(h: &mut Harness, fault: RestFault, symbol: &str, other: Option<&str>) {
    h.sim.rest_fault(fault, 1);
    h.sim.inject_gap(Mkt::Spot, symbol);
    let from = h.messages.len();
    run_for(h, Duration::from_secs(3));
    let trades = counts_since(&h.messages, from, Channel::Trade, "BTC-USDT")
        + counts_since(&h.messages, from, Channel::Trade, "ETH-USDT");
    assert!(trades > 0, "{fault:?}: trades stopped");
    if let Some(other) = other {
        assert!(
            counts_since(&h.messages, from, Channel::Orderbook, other) >= 5,
            "{fault:?}: {other} books stopped after {symbol}'s answer"
        );
    }
}

#[test]
fn a_huge_retry_after_on_a_snapshot_neither_kills_nor_stalls_the_session() {
    let mut h = Harness::start(|sim| binance(sim, 4, STABLE5, &two(), r#""orderbook", "trade""#));
    assert!(
        h.wait_books(3, Duration::from_secs(15)),
        "no books at start"
    );
    // TC0: delay-seconds at u64::MAX on BTC-USDT's snapshot: ETH-USDT is untouched.
    let fault = RestFault::Raw {
        status: 503,
        retry_after: "18446744073709551615",
    };
    hostile_answer(&mut h, fault, "BTC-USDT", Some("ETH-USDT"));
    // TC1: an HTTP-date in the year 9999 on ETH-USDT's.
    let fault = RestFault::Raw {
        status: 503,
        retry_after: "Fri, 31 Dec 9999 23:59:59 GMT",
    };
    hostile_answer(&mut h, fault, "ETH-USDT", None);
    assert_eq!(
        h.metric("marketbox_rest_requests_total", &[("status", "503")]),
        2
    );
    assert_eq!(
        h.metric("marketbox_task_restarts_total", &[]),
        0,
        "a task died"
    );
    assert_eq!(h.seen.wrong_books, 0);
}

#[test]
fn a_huge_retry_after_on_a_429_blocks_the_host_for_the_cap_not_for_ever() {
    let mut h = Harness::start(|sim| binance(sim, 4, STABLE5, &two(), r#""orderbook", "trade""#));
    assert!(
        h.wait_books(3, Duration::from_secs(15)),
        "no books at start"
    );
    let fault = RestFault::Raw {
        status: 429,
        retry_after: "18446744073709551615",
    };
    hostile_answer(&mut h, fault, "BTC-USDT", Some("ETH-USDT"));
    assert_eq!(
        h.metric("marketbox_rest_requests_total", &[("status", "429")]),
        1
    );
    // The host is blocked for the cap (1 h), not for 584 billion years.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let until = h.metric("marketbox_rest_blocked_until_timestamp_seconds", &[]);
    assert!(
        (now + 3590..=now + 3610).contains(&until),
        "blocked until {until}, now {now}"
    );
    assert_eq!(
        h.metric("marketbox_task_restarts_total", &[]),
        0,
        "a task died"
    );
    assert_eq!(h.seen.wrong_books, 0);
}

#[test]
fn a_hostile_weight_header_does_not_wrap_the_rest_limiter() {
    let mut h = Harness::start(|sim| binance(sim, 4, STABLE5, &two(), r#""orderbook", "trade""#));
    assert!(h.wait_books(2, Duration::from_secs(15)));
    // ETH-USDT's snapshot answer says the whole minute's weight (and more) is used.
    h.sim
        .rest_fault(RestFault::Weight { used: "4294967295" }, 1);
    h.sim.inject_gap(Mkt::Spot, "ETH-USDT");
    run_for(&mut h, Duration::from_secs(1));
    // The window is taken as spent: BTC-USDT's snapshot waits for the window's end (at most a
    // minute), never for ever, and nothing wraps or panics on the way.
    let before = h.sim.rest_requests();
    h.sim.inject_gap(Mkt::Spot, "BTC-USDT");
    let from = h.messages.len();
    run_for(&mut h, Duration::from_secs(3));
    assert_eq!(
        h.sim.rest_requests(),
        before,
        "the spent window was overrun"
    );
    // The venue's count is taken up to the window's capacity (spot: 3000), no further.
    assert_eq!(
        h.metric("marketbox_rest_weight_used", &[("bucket", "weight")]),
        3000
    );
    assert!(
        counts_since(&h.messages, from, Channel::Orderbook, "ETH-USDT") >= 5,
        "ETH-USDT books stopped"
    );
    assert!(counts_since(&h.messages, from, Channel::Trade, "ETH-USDT") > 0);
    assert_eq!(h.metric("marketbox_task_restarts_total", &[]), 0);
}

#[test]
fn a_shutdown_notice_on_every_connect_is_paced_not_a_storm() {
    let mut h = Harness::start(|sim| binance(sim, 4, STABLE5, &two(), r#""orderbook", "trade""#));
    assert!(h.wait_books(1, Duration::from_secs(15)));
    h.sim.shutdown_on_connect(true);
    h.sim.server_shutdown();
    let accepts = h.sim.ws_accepts();
    run_for(&mut h, Duration::from_secs(15));
    let storm = h.sim.ws_accepts() - accepts;
    // Each socket is used until the venue closes it (1 s after its notice) and reconnects
    // follow the backoff (20 ms doubling to 200 ms): about one connection per 1.2 s.
    assert!(storm <= 20, "{storm} connections in 15 s");
    assert!(h.metric("marketbox_ws_rotation_deferred_total", &[]) >= 5);
    // The same venue, quiet again: one planned rotation once the socket is stable.
    h.sim.shutdown_on_connect(false);
    assert!(h.wait_books(3, Duration::from_secs(10)));
    assert_eq!(h.seen.wrong_books, 0);
}

#[test]
fn an_okx_restart_notice_on_every_connect_is_paced_not_a_storm() {
    let mut h = Okx::start(
        OkxOptions {
            diff_interval: Duration::from_millis(20),
            ..OkxOptions::default()
        },
        "",
    );
    assert!(h.wait_books(&okx_harness::INSTS, 1, Duration::from_secs(15)));
    h.sim.notice_on_connect(true);
    h.sim.notice_restart();
    let accepts = h.sim.ws_accepts();
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
        h.drain();
    }
    let storm = h.sim.ws_accepts() - accepts;
    assert!(storm <= 20, "{storm} connections in 15 s");
    assert_eq!(h.sim.connect_rate_violations(), 0);
    assert_eq!(h.wrong_books, 0);
}

#[test]
fn a_peer_that_stops_reading_is_replaced_after_the_send_timeout() {
    let session = format!("{STABLE5}\nidle_timeout = \"2s\"");
    let mut h = Harness::start(|sim| binance(sim, 4, &session, &two(), r#""orderbook", "trade""#));
    assert!(h.wait_books(2, Duration::from_secs(15)));
    let accepts = h.sim.ws_accepts();
    let drops = h
        .sim
        .stats()
        .slow_consumer_drops
        .load(std::sync::atomic::Ordering::SeqCst);
    let started = Instant::now();
    h.sim.disconnect_all(Disconnect::StopReading);
    // The venue pings every 5 ms and reads nothing: the pongs fill the path, the session's
    // flush times out, the socket is dropped and replaced.
    while h.sim.ws_accepts() == accepts {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the session hung on a peer that stopped reading"
        );
        std::thread::sleep(Duration::from_millis(20));
        h.drain();
    }
    // The stuck venue never closes anything: marketbox gave up on it.
    assert_eq!(
        h.sim
            .stats()
            .slow_consumer_drops
            .load(std::sync::atomic::Ordering::SeqCst),
        drops
    );
    assert!(h.wait_books(3, Duration::from_secs(10)));
    assert!(h.app.budget.peak() <= 4);
    assert_eq!(h.seen.wrong_books, 0);
}

#[test]
fn a_venue_that_freezes_at_connect_cannot_hang_the_subscribe() {
    // 200 symbols on both markets: a subscribe of 1,200 args (several 16 KiB requests) into
    // a peer that reads nothing and advertises a receive window of a few KiB.
    let symbols: Vec<String> = (0..200).map(|i| format!("\"F{i}-USDT\"")).collect();
    let opts = OkxOptions {
        recv_buffer: Some(2048),
        ..OkxOptions::default()
    };
    let mut h = Okx::start_with(opts, |sim| {
        sim.freeze_on_connect(true);
        let text = format!(
            r#"
[budget]
max_connections = 3
[session]
connect_timeout = "2s"
idle_timeout = "2s"
backoff_min = "20ms"
backoff_max = "200ms"
[tls]
extra_ca = "{ca}"
[venues.okx]
ws = "{ws}"
rest = "{rest}"
[[feeds]]
exchange = "okx"
market = "spot"
symbols = [{s}]
channels = ["orderbook", "trade"]
[[feeds]]
exchange = "okx"
market = "perpetual"
symbols = [{s}]
channels = ["orderbook", "trade", "funding_rate", "open_interest"]
"#,
            ca = sim.ca_pem_path().display(),
            ws = sim.ws_url(),
            rest = sim.rest(),
            s = symbols.join(","),
        );
        Config::parse(&text, "frozen.toml").expect("test config")
    });
    let started = Instant::now();
    // The first socket freezes mid-subscribe; the send deadline (idle_timeout, 2 s) gives up
    // on it and a second one is tried.
    while h.sim.ws_accepts() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the session hung writing into a frozen peer"
        );
        std::thread::sleep(Duration::from_millis(20));
        h.drain();
    }
    assert!(h.metric("marketbox_ws_disconnects_total", &[]) >= 1);
    h.sim.freeze_on_connect(false);
}

/// Waits for a new connection after `how`, returning how long it took.
fn replaced_after(h: &mut Harness, how: Disconnect) -> Duration {
    let accepts = h.sim.ws_accepts();
    let started = Instant::now();
    h.sim.disconnect_all(how);
    while h.sim.ws_accepts() == accepts {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a {how:?} socket was never replaced"
        );
        std::thread::sleep(Duration::from_millis(20));
        h.drain();
    }
    started.elapsed()
}

#[test]
fn a_half_open_socket_is_noticed_within_10_seconds_by_default() {
    // No idle_timeout in the config: the product default.
    let mut h = Harness::start(|sim| binance(sim, 4, STABLE5, &two(), r#""orderbook", "trade""#));
    assert!(h.wait_books(2, Duration::from_secs(15)));
    // TC0: nothing at all arrives any more (no data, pings or pongs).
    let took = replaced_after(&mut h, Disconnect::Silence);
    assert!(
        took <= Duration::from_secs(11),
        "silence noticed after {took:?}"
    );
    assert!(h.wait_books(2, Duration::from_secs(10)));
    // TC1: only the venue's own pings arrive: they prove nothing; the probe goes unanswered.
    let took = replaced_after(&mut h, Disconnect::PingsOnly);
    assert!(
        took <= Duration::from_secs(11),
        "pings-only noticed after {took:?}"
    );
    assert!(h.wait_books(2, Duration::from_secs(10)));
    assert!(h.metric("marketbox_ws_frames_total", &[("kind", "control")]) >= 1);
}

#[test]
fn a_half_open_okx_socket_is_noticed_within_10_seconds_by_default() {
    let mut h = Okx::start_with(OkxOptions::default(), |sim| {
        okx_harness::config_with(sim, "", "connect_timeout = \"2s\"\nbackoff_min = \"20ms\"")
    });
    assert!(h.wait_books(&okx_harness::INSTS, 1, Duration::from_secs(15)));
    let accepts = h.sim.ws_accepts();
    let started = Instant::now();
    h.sim.disconnect_all(sim::okx::Disconnect::Silence);
    while h.sim.ws_accepts() == accepts {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never replaced"
        );
        std::thread::sleep(Duration::from_millis(20));
        h.drain();
    }
    let took = started.elapsed();
    assert!(
        took <= Duration::from_secs(11),
        "silence noticed after {took:?}"
    );
}

#[test]
fn quiet_streams_resubscribe_in_bounded_batches_and_old_requests_die_with_their_socket() {
    // 150 depth streams on one socket, all quiet: every stream is stale every second.
    let symbols: Vec<String> = (0..150).map(|i| format!("Q{i}-USDT")).collect();
    let session = format!("{STABLE5}\nstale_after = \"1s\"");
    let mut h = Harness::start(|sim| {
        sim.mute_data(true);
        binance(sim, 4, &session, &symbols, r#""orderbook""#)
    });
    std::thread::sleep(Duration::from_secs(2));
    let before = h
        .sim
        .stats()
        .subscribe_requests
        .load(std::sync::atomic::Ordering::SeqCst);
    run_for(&mut h, Duration::from_secs(10));
    let sent = h
        .sim
        .stats()
        .subscribe_requests
        .load(std::sync::atomic::Ordering::SeqCst)
        - before;
    // One UNSUBSCRIBE and one SUBSCRIBE for all stale streams per tick: at most 2 per second.
    assert!(sent <= 22, "{sent} requests in 10 s for 150 quiet streams");
    assert!(h.metric("marketbox_ws_send_queue", &[]) <= 2);
    assert!(h.metric("marketbox_ws_stale_streams_total", &[]) >= 150);
    // A reconnect starts with an empty queue: nothing queued for the old socket is sent.
    let accepts = h.sim.ws_accepts();
    h.sim.disconnect_all(Disconnect::Close);
    while h.sim.ws_accepts() == accepts {
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = h
        .sim
        .stats()
        .subscribe_requests
        .load(std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(500));
    let sent = h
        .sim
        .stats()
        .subscribe_requests
        .load(std::sync::atomic::Ordering::SeqCst)
        - before;
    assert!(
        sent <= 2,
        "{sent} stale requests replayed on the new socket"
    );
}

#[test]
fn a_rotation_reads_the_old_socket_until_the_new_one_is_up_and_drops_the_overlap() {
    let session = format!("{FAST}\nmax_lifetime = \"3s\"\nstable_after = \"1s\"");
    let mut h = Harness::start(|sim| binance(sim, 4, &session, &two(), r#""orderbook", "trade""#));
    assert!(h.wait_books(2, Duration::from_secs(15)));
    // Replacements take 1.5 s to come up; the old socket must keep delivering meanwhile.
    h.sim.delay_accepts(Duration::from_millis(1500));
    let from = h.messages.len();
    let rotations = h.metric("marketbox_ws_rotations_total", &[]);
    let mut last_book = Instant::now();
    let mut longest_pause = Duration::ZERO;
    let end = Instant::now() + Duration::from_secs(12);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
        let n = h.seen.books;
        h.drain();
        if h.seen.books > n {
            longest_pause = longest_pause.max(last_book.elapsed());
            last_book = Instant::now();
        }
    }
    assert!(
        h.metric("marketbox_ws_rotations_total", &[]) >= rotations + 2,
        "fewer than 2 rotations in 12 s"
    );
    assert!(
        longest_pause < Duration::from_millis(1000),
        "books paused {longest_pause:?} during a rotation"
    );
    // Every trade exactly once: the venue's trade ids are consecutive per symbol.
    let mut ids: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for m in &h.messages[from..] {
        if let Data::Trade(t) = &m.data {
            ids.entry(m.symbol.to_string())
                .or_default()
                .push(t.trade_id);
        }
    }
    for (sym, ids) in &ids {
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len(), "{sym}: duplicate trades published");
        let (first, last) = (sorted[0], sorted[sorted.len() - 1]);
        assert_eq!(
            (last - first + 1) as usize,
            sorted.len(),
            "{sym}: trades missing across rotations"
        );
    }
    assert!(h.sim.max_open_ws() <= 2);
    assert_eq!(h.seen.wrong_books, 0);
    assert_eq!(h.seen.seq_gaps, 0);
}

#[test]
fn an_impossible_binance_update_id_is_refused_and_the_book_recovers() {
    let mut h = Harness::start(|sim| binance(sim, 4, STABLE5, &two(), r#""orderbook""#));
    assert!(h.wait_books(3, Duration::from_secs(15)));
    // A diff that continues the chain (U = last + 1) but claims u = u64::MAX: applied, it
    // would make every later diff look old and the book would silently stop.
    h.sim.send_after_last_diff(Mkt::Spot, "BTC-USDT", |last| {
        format!(
            r#"{{"stream":"btcusdt@depth@100ms","data":{{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":{},"u":18446744073709551615,"b":[],"a":[]}}}}"#,
            last + 1
        )
    });
    assert!(
        h.wait_books(5, Duration::from_secs(10)),
        "the book stopped after an impossible update id"
    );
    assert!(h.metric("marketbox_book_resyncs_total", &[("symbol", "BTC-USDT")]) >= 1);
    assert_eq!(
        h.seen.wrong_books, 0,
        "a book that is not the venue's was published"
    );
}

#[test]
fn crossed_or_negative_binance_levels_are_never_published() {
    let mut h = Harness::start(|sim| binance(sim, 4, STABLE5, &two(), r#""orderbook""#));
    assert!(h.wait_books(3, Duration::from_secs(15)));
    for bids in [
        r#"[["99999999","1"]]"#,
        r#"[["-5","1"]]"#,
        r#"[["1","-1"]]"#,
    ] {
        h.sim.send_after_last_diff(Mkt::Spot, "ETH-USDT", |last| {
            format!(
                r#"{{"stream":"ethusdt@depth@100ms","data":{{"e":"depthUpdate","E":1,"s":"ETHUSDT","U":{},"u":{},"b":{bids},"a":[]}}}}"#,
                last + 1,
                last + 1
            )
        });
        assert!(h.wait_books(3, Duration::from_secs(10)));
    }
    assert_eq!(
        h.seen.wrong_books, 0,
        "a crossed or negative book was published"
    );
    assert!(h.metric("marketbox_book_resyncs_total", &[("symbol", "ETH-USDT")]) >= 3);
}

fn okx_zero() -> OkxOptions {
    OkxOptions {
        book_mode: BookMode::RestSnapshot,
        checksum: ChecksumMode::Zero,
        diff_interval: Duration::from_millis(20),
        ..OkxOptions::default()
    }
}

fn okx_update(inst: &str, fields: &str, bids: &str) -> String {
    format!(
        r#"{{"arg":{{"channel":"books","instId":"{inst}"}},"action":"update","data":[{{"asks":[],"bids":{bids},"ts":"1700000000000","checksum":0{fields}}}]}}"#
    )
}

#[test]
fn hostile_okx_updates_are_never_published_and_the_book_recovers() {
    let mut h = Okx::start(okx_zero(), "");
    assert!(h.wait_books(&okx_harness::INSTS, 3, Duration::from_secs(15)));
    let inst = "BTC-USDT";
    type Make = Box<dyn Fn(i64) -> String>;
    let cases: [(&str, Make); 5] = [
        // TC0: no seqId/prevSeqId after sync, crossing the book.
        (
            "missing sequence",
            Box::new(|_| okx_update(inst, "", r#"[["99999999","1","0","1"]]"#)),
        ),
        // TC1: a negative size, chained.
        (
            "negative size",
            Box::new(|last| {
                okx_update(
                    inst,
                    &format!(r#","seqId":{},"prevSeqId":{last}"#, last + 1),
                    r#"[["1","-3","0","1"]]"#,
                )
            }),
        ),
        // TC2: a crossed book, chained.
        (
            "crossed",
            Box::new(|last| {
                okx_update(
                    inst,
                    &format!(r#","seqId":{},"prevSeqId":{last}"#, last + 1),
                    r#"[["99999999","1","0","1"]]"#,
                )
            }),
        ),
        // TC3: a jump to i64::MAX: every later update would look old.
        (
            "impossible seqId",
            Box::new(|last| {
                okx_update(
                    inst,
                    &format!(r#","seqId":9223372036854775807,"prevSeqId":{last}"#),
                    "[]",
                )
            }),
        ),
        // TC4: a negative price.
        (
            "negative price",
            Box::new(|last| {
                okx_update(
                    inst,
                    &format!(r#","seqId":{},"prevSeqId":{last}"#, last + 1),
                    r#"[["-1","3","0","1"]]"#,
                )
            }),
        ),
    ];
    for (what, make) in cases.iter() {
        h.sim.send_after_last_update(inst, make);
        assert!(
            h.wait_books(&[inst], 5, Duration::from_secs(10)),
            "{what}: the book did not recover"
        );
        assert_eq!(h.wrong_books, 0, "{what}: a wrong book was published");
    }
    assert!(h.resyncs("crossed", "BTC-USDT", "spot") >= 1);
    assert_eq!(h.seq_gaps, 0);
}

#[test]
fn a_closed_stdout_stops_the_process_with_a_non_zero_exit() {
    use std::process::{Command, Stdio};
    let sim = Sim::start(sim::SimOptions::default());
    let dir = std::env::temp_dir().join(format!(
        "marketbox-stdout-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    let path = dir.join("m.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[metrics]
listen = ""
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
        ),
    )
    .expect("write the config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_marketbox"))
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("marketbox starts");
    // Whoever read the data went away.
    drop(child.stdout.take());
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            panic!("marketbox kept running with its upstream (stdout) gone");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("upstream"), "{stderr}");
}

#[test]
fn every_session_shows_its_loop_alive_in_health() {
    let mut h = Harness::start(|sim| binance(sim, 4, STABLE5, &two(), r#""orderbook", "trade""#));
    assert!(h.wait_books(1, Duration::from_secs(15)));
    let report = h.app.liveness.check(Instant::now());
    let names: Vec<&str> = report.loops.iter().map(|l| l.name.as_str()).collect();
    assert!(names.contains(&"session binance spot"), "{names:?}");
    assert!(report.healthy, "{:?}", report.stuck);
}
