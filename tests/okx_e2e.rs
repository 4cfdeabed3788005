//! OKX end to end against the OKX simulator: spot and swaps on one socket, both book modes,
//! churn, seqId gaps, sequence resets, corrupted levels, notices, refusals and bad frames,
//! with every published book checked against the simulator's true book at its `update_id`
//! (= `seqId`).

#[path = "common/okx_harness.rs"]
mod harness;
mod sim;

use std::time::{Duration, Instant};

use harness::{INSTS, Okx};
use marketbox::model::Channel;
use sim::okx::{BookMode, ChecksumMode, Disconnect, OTHER_SWAP, OkxMalformed, OkxOptions};

fn fast(book_mode: BookMode, checksum: ChecksumMode) -> OkxOptions {
    OkxOptions {
        book_mode,
        checksum,
        diff_interval: Duration::from_millis(20),
        ..OkxOptions::default()
    }
}

#[test]
fn rest_snapshot_mode_with_zero_checksums_survives_200_disconnects_gaps_and_resets() {
    let mut h = Okx::start(fast(BookMode::RestSnapshot, ChecksumMode::Zero), "");
    assert_eq!(
        h.app.plan.sockets.len(),
        1,
        "spot and swaps share one socket"
    );
    assert!(
        h.wait_books(&INSTS, 3, Duration::from_secs(15)),
        "no verified book at start: {:?}",
        h.books
    );
    assert_eq!(
        h.sim.snapshots_sent(),
        0,
        "this venue mode sends no WS snapshot"
    );
    let kinds = [Disconnect::Close, Disconnect::Reset, Disconnect::Silence];
    let t0 = Instant::now();
    let mut open = Vec::new();
    for i in 0..200 {
        let accepts = h.sim.ws_accepts();
        h.sim.disconnect_all(kinds[i % 3]);
        h.wait_until(
            &format!("a reconnect after disconnect {i} ({:?})", kinds[i % 3]),
            Duration::from_secs(10),
            |h| h.sim.ws_accepts() > accepts,
        );
        assert!(
            h.wait_books(&INSTS, 1, Duration::from_secs(10)),
            "not every instrument resynced after disconnect {i} ({:?}): {:?}",
            kinds[i % 3],
            h.books
        );
        h.sim.sample_open_ws_into(&mut open);
        assert!(
            h.sim.max_open_ws() <= 1,
            "the simulator saw {} sockets at once (the plan is 1)",
            h.sim.max_open_ws()
        );
    }
    let churn = t0.elapsed();
    eprintln!(
        "200 disconnects in {churn:?}; ws accepts {}; peak open ws {}; REST books requests {}; connect-rate refusals {}",
        h.sim.ws_accepts(),
        open.iter().max().copied().unwrap_or(0),
        h.sim.rest_requests_to("/api/v5/market/books"),
        h.sim.connect_rate_violations(),
    );
    assert!(h.sim.ws_accepts() >= 201);
    assert_eq!(
        h.sim.connect_rate_violations(),
        0,
        "reconnects stayed under OKX's 3 per second"
    );
    assert_eq!(h.sim.books_limit_hits(), 0);
    assert!(h.app.budget.peak() <= 2);

    // seqId gaps: each resyncs only its instrument, over REST, on the same socket.
    let accepts = h.sim.ws_accepts();
    let subs = h.sim.subscribe_requests();
    for (n, inst) in ["BTC-USDT-SWAP", "ETH-USDT", "BTC-USDT-SWAP"]
        .iter()
        .enumerate()
    {
        let before = h.resyncs_by_inst("gap");
        h.sim.inject_gap(inst);
        h.wait_until(&format!("gap {n} on {inst}"), Duration::from_secs(5), |h| {
            h.resyncs_by_inst("gap") != before
        });
        let after = h.resyncs_by_inst("gap");
        for (i, name) in INSTS.iter().enumerate() {
            let want = before[i] + u64::from(name == inst);
            assert_eq!(after[i], want, "gap on {inst}: resyncs of {name}");
        }
        assert!(h.wait_books(&[inst], 2, Duration::from_secs(5)));
    }
    // A sequence reset after maintenance: resynced, then the new sequence is followed.
    h.sim.sequence_reset("ETH-USDT-SWAP");
    h.wait_until("the sequence reset", Duration::from_secs(5), |h| {
        h.resyncs("sequence_reset", "ETH-USDT", "perpetual") == 1
    });
    assert!(h.wait_books(&INSTS, 3, Duration::from_secs(10)));
    assert_eq!(h.sim.ws_accepts(), accepts, "no resync dropped the socket");
    assert_eq!(
        h.sim.subscribe_requests(),
        subs,
        "without WS snapshots a resync costs no subscribe request"
    );

    h.drain();
    assert_eq!(
        h.wrong_books, 0,
        "published books differed from the true book"
    );
    assert_eq!(h.seq_gaps, 0, "per-stream seq must have no gaps");
    assert!(
        h.by_channel.get(&Channel::Trade).copied().unwrap_or(0) > 0,
        "{:?}",
        h.by_channel
    );
    eprintln!(
        "books published {:?}; all checked against the true book, 0 wrong",
        h.books
    );
}

#[test]
fn ws_snapshot_mode_verifies_checksums_and_resyncs_corruption_gaps_notices_and_refusals() {
    // FOO-USDT is not listed at the venue: its args are refused, the rest flows.
    let started = Instant::now();
    let mut h = Okx::start(
        fast(BookMode::WsSnapshot, ChecksumMode::On),
        r#", "FOO-USDT""#,
    );
    assert!(
        h.wait_books(&INSTS, 3, Duration::from_secs(15)),
        "no verified book at start: {:?}",
        h.books
    );
    h.wait_until("the refusal of FOO-USDT", Duration::from_secs(5), |h| {
        h.metric("marketbox_ws_subscribe_errors_total", &[("code", "60018")]) >= 1
    });
    assert_eq!(
        h.metric("marketbox_ws_subscribe_errors_total", &[("code", "no_ack")]),
        0
    );
    assert!(h.sim.snapshots_sent() >= 4);

    // Corrupted levels in checksum mode: caught, resynced by resubscribing that instrument.
    let accepts = h.sim.ws_accepts();
    for (n, inst) in ["ETH-USDT", "BTC-USDT-SWAP", "ETH-USDT"].iter().enumerate() {
        let before = h.resyncs_by_inst("checksum");
        let snaps = h.sim.snapshots_sent();
        h.sim.corrupt_next(inst);
        h.wait_until(
            &format!("corruption {n} on {inst}"),
            Duration::from_secs(5),
            |h| h.resyncs_by_inst("checksum") != before,
        );
        let after = h.resyncs_by_inst("checksum");
        for (i, name) in INSTS.iter().enumerate() {
            let want = before[i] + u64::from(name == inst);
            assert_eq!(after[i], want, "corruption on {inst}: resyncs of {name}");
        }
        h.wait_until("a new WS snapshot", Duration::from_secs(5), |h| {
            h.sim.snapshots_sent() > snaps
        });
        assert!(h.wait_books(&[inst], 2, Duration::from_secs(5)));
    }
    // seqId gaps in this mode.
    for inst in ["BTC-USDT", "ETH-USDT-SWAP"] {
        let before = h.resyncs_by_inst("gap");
        h.sim.inject_gap(inst);
        h.wait_until(&format!("the gap on {inst}"), Duration::from_secs(5), |h| {
            h.resyncs_by_inst("gap") != before
        });
        assert!(h.wait_books(&[inst], 2, Duration::from_secs(5)));
    }
    assert_eq!(h.sim.ws_accepts(), accepts, "no resync dropped the socket");

    // Bad frames are counted and skipped; the socket stays.
    for kind in [
        OkxMalformed::NotJson,
        OkxMalformed::UnknownChannel,
        OkxMalformed::BadDecimal,
        OkxMalformed::Binary,
    ] {
        h.sim.send_malformed(kind);
    }
    h.wait_until("malformed frames counted", Duration::from_secs(5), |h| {
        h.metric("marketbox_ws_frames_total", &[("kind", "malformed")]) >= 2
            && h.metric("marketbox_ws_frames_total", &[("kind", "unknown")]) >= 2
    });
    assert!(h.wait_books(&INSTS, 2, Duration::from_secs(5)));
    assert_eq!(h.sim.ws_accepts(), accepts);

    // 64008: a planned make-before-break rotation (the budget has a spare permit), obeyed
    // at once because the socket is older than stable_after (5 s; a younger one waits).
    if let Some(wait) = Duration::from_secs(6).checked_sub(started.elapsed()) {
        std::thread::sleep(wait);
        h.drain();
    }
    h.sim.reset_max_open_ws();
    h.sim.notice_restart();
    h.wait_until("the rotation", Duration::from_secs(5), |h| {
        h.metric("marketbox_ws_rotations_total", &[]) >= 1 && h.sim.ws_accepts() > accepts
    });
    assert!(h.wait_books(&INSTS, 3, Duration::from_secs(10)));
    assert!(
        h.sim.max_open_ws() <= 2,
        "make-before-break holds at most 2"
    );
    assert!(h.app.budget.peak() <= 2);

    // A few plain disconnects in this mode too.
    for kind in [Disconnect::Close, Disconnect::Reset, Disconnect::Silence] {
        let a = h.sim.ws_accepts();
        h.sim.disconnect_all(kind);
        h.wait_until(
            &format!("a reconnect after {kind:?}"),
            Duration::from_secs(10),
            |h| h.sim.ws_accepts() > a,
        );
        assert!(h.wait_books(&INSTS, 1, Duration::from_secs(10)));
    }

    // Every other channel: trades, funding, open interest, liquidations (only configured
    // swaps, not OTHER_SWAP), and both long/short ratios from rubik within its limit.
    h.wait_until("every channel", Duration::from_secs(10), |h| {
        [
            Channel::Trade,
            Channel::FundingRate,
            Channel::OpenInterest,
            Channel::Liquidation,
            Channel::LsrTopPosition,
            Channel::LsrAllAccount,
        ]
        .iter()
        .all(|c| h.by_channel.get(c).copied().unwrap_or(0) > 0)
    });
    let other = OTHER_SWAP.trim_end_matches("-SWAP");
    assert!(
        !h.symbols.iter().any(|s| s.starts_with(other)),
        "{OTHER_SWAP} is not configured: {:?}",
        h.symbols
    );
    assert!(!h.symbols.iter().any(|s| s.starts_with("FOO")));
    assert_eq!(h.sim.rubik_limit_hits(), 0);

    h.drain();
    assert_eq!(
        h.wrong_books, 0,
        "published books differed from the true book"
    );
    assert_eq!(h.seq_gaps, 0, "per-stream seq must have no gaps");
    eprintln!(
        "books published {:?}; channels {:?}; WS snapshots {}; subscribe requests {}",
        h.books,
        h.by_channel,
        h.sim.snapshots_sent(),
        h.sim.subscribe_requests()
    );
}
