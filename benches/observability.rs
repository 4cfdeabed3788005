//! Cost of observability on the default config (`config/marketbox.toml`: 4 WebSockets
//! carrying 26 streams, plus REST pollers): what the feed path pays per message (`StreamClock::record`: last-message
//! timestamp and latency histogram), what one scrape of `/metrics` costs (text 0.0.4 encode,
//! `/proc` reads included), and what one remote-write batch costs (sample, protobuf, snappy)
//! and weighs. Heap allocations per recorded message are counted by a `#[global_allocator]`.
//!
//! The registry holds every series a running box of that config exports at start: the app's
//! own (plan, books, streams, pushes) plus, per planned socket, the ones its session creates
//! (connections, connect results, frame kinds).
//!
//! Run: `cargo bench --bench observability -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::time_pass;
use criterion::{Criterion, criterion_group, criterion_main};
use marketbox::app::App;
use marketbox::config::Config;
use marketbox::metrics::{ConnectLabels, FrameLabels, Metrics, SocketLabels, StreamClock};
use marketbox::model::{Channel, Exchange, Market};

/// The default config's registry as a running box has it.
fn registry() -> (Arc<Metrics>, usize) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/marketbox.toml");
    let cfg = Config::load(std::path::Path::new(path)).expect("the default config");
    let ex = Arc::new(smol::Executor::new());
    let app = App::start(&cfg, &ex).expect("the default config starts");
    let m = app.metrics.clone();
    for s in &app.plan.sockets {
        let socket = s.name.as_str().to_owned();
        let sl = SocketLabels {
            exchange: s.exchange,
            socket: socket.clone(),
        };
        m.ws_connections.get_or_create(&sl).set(1);
        let _ = m.disconnects.get_or_create(&sl);
        let _ = m.rotations.get_or_create(&sl);
        let _ = m.stale_streams.get_or_create(&sl);
        for result in ["ok", "error", "timeout", "refused_by_budget"] {
            let _ = m.connects.get_or_create(&ConnectLabels {
                exchange: s.exchange,
                socket: socket.clone(),
                result,
            });
        }
        for kind in ["data", "control", "malformed", "unknown", "oversized"] {
            m.frames
                .get_or_create(&FrameLabels {
                    exchange: s.exchange,
                    socket: socket.clone(),
                    kind,
                })
                .inc_by(1000);
        }
    }
    let streams = app.plan.sockets.iter().map(|s| s.streams.len()).sum();
    (m, streams)
}

fn bench(c: &mut Criterion) {
    let (m, streams) = registry();
    let clock = StreamClock::new(
        Some(&m),
        Exchange::Binance,
        Market::Spot,
        "BTC-USDT",
        Channel::Orderbook,
    );
    let now_ms = 1_764_000_000_000u64;
    let record = |n: u64| {
        for i in 0..n {
            let local_ns = (now_ms + i) * 1_000_000 + 2_500_000;
            clock.record(black_box(now_ms + i), black_box(local_ns));
        }
    };
    let n = 10_000u64;
    let ((), allocs) = common::allocations_of(|| record(n));
    eprintln!(
        "allocations per recorded message: {} ({allocs} over {n})",
        allocs as f64 / n as f64
    );
    assert_eq!(allocs, 0, "recording a message's clock must not allocate");
    let scrape = m.encode_prometheus();
    let batch = marketbox::metrics::push::snapshot(&m, "box-01", Instant::now()).expect("a batch");
    eprintln!(
        "default config: {} WebSocket streams, {} series per push, scrape {} bytes, push batch {} bytes (snappy)",
        streams,
        batch.series,
        scrape.len(),
        batch.body.len()
    );

    if !common::timed() {
        return;
    }
    let mut g = c.benchmark_group("observability");
    g.bench_function("stream_clock_record", |b| b.iter(|| record(1)));
    g.bench_function("scrape_encode_0_0_4", |b| {
        b.iter(|| black_box(m.encode_prometheus()))
    });
    g.bench_function("push_snapshot", |b| {
        b.iter(|| {
            black_box(marketbox::metrics::push::snapshot(
                &m,
                "box-01",
                Instant::now(),
            ))
        })
    });
    g.finish();

    let budget = Duration::from_millis(1000);
    let per_record = time_pass(budget, || (), |_| record(n)).as_nanos() as f64 / n as f64;
    let scrape_us = time_pass(
        budget,
        || (),
        |_| {
            black_box(m.encode_prometheus());
        },
    )
    .as_nanos() as f64
        / 1000.0;
    let push_us = time_pass(
        budget,
        || (),
        |_| {
            let _ = black_box(marketbox::metrics::push::snapshot(
                &m,
                "box-01",
                Instant::now(),
            ));
        },
    )
    .as_nanos() as f64
        / 1000.0;
    if cfg!(debug_assertions) {
        eprintln!("(unoptimized build: the timings below mean nothing; use `cargo bench`)");
    }
    eprintln!("ns per message: StreamClock::record {per_record:.1}");
    eprintln!("µs per scrape (text 0.0.4, /proc included): {scrape_us:.0}");
    eprintln!("µs per push batch (sample, protobuf, snappy): {push_us:.0}");
}

criterion_group!(benches, bench);
criterion_main!(benches);
