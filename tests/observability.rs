//! Observability end to end (issue #15): `/metrics`, `/health`, `/ready` over real HTTP
//! against marketbox running on the exchange simulator, `promtool` on a live scrape and on
//! the shipped alert rules, the remote push into a real Prometheus, and the connection gauge
//! against the sockets the simulator sees while it churns.

#[path = "common/harness.rs"]
mod harness;
#[path = "common/prom.rs"]
mod prom;
mod sim;
#[path = "common/tmp.rs"]
mod tmp;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use harness::Harness;
use marketbox::config::Config;
use prom::{get, promtool, request, sum_of};
use sim::Sim;

/// Prometheus 2.x's scrape `Accept` header.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Binance spot (and, with `perp`, USD-M) against the simulator, the metrics server on a
/// free loopback port, and `extra` appended (e.g. a `[metrics.push]` table).
fn config(sim: &Sim, perp: bool, extra: &str) -> Config {
    let perp_feed = if perp {
        r#"
[[feeds]]
exchange = "binance"
market = "perpetual"
symbols = ["BTC-USDT", "ETH-USDT"]
channels = ["orderbook", "trade", "funding_rate", "liquidation"]
"#
    } else {
        ""
    };
    let text = format!(
        r#"
[device]
id = "obs-test"
[budget]
max_connections = 10
[book]
depth = 10
[session]
connect_timeout = "2s"
stale_after = "3s"
idle_timeout = "500ms"
backoff_min = "20ms"
backoff_max = "200ms"
stable_after = "5s"
[rest]
idle_timeout = "30s"
request_timeout = "2s"
[metrics]
listen = "127.0.0.1:0"
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
symbols = ["BTC-USDT", "ETH-USDT"]
channels = ["orderbook", "trade"]
{perp_feed}
{extra}
"#,
        ca = sim.ca_pem_path().display(),
        ws = sim.spot_ws(),
        rest = sim.rest(),
        pp = sim.perp_public_ws(),
        pm = sim.perp_market_ws(),
    );
    Config::parse(&text, "obs.toml").expect("test config")
}

/// Starts the harness and the metrics server.
fn start(perp: bool, extra: &str) -> (Harness, SocketAddr) {
    let extra = extra.to_owned();
    let mut h = Harness::start(move |sim| config(sim, perp, &extra));
    let (cfg, ex) = (h.config.clone(), h.executor.clone());
    h.app.serve(&cfg, &ex).expect("the metrics server starts");
    let addr = h.app.http_addr().expect("listening");
    (h, addr)
}

/// The shipped Grafana dashboard's text.
fn dashboard_text() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/grafana/marketbox.json"
    ))
    .expect("the dashboard")
}

/// One dashboard query, `$device` set to `device`.
struct Query {
    panel: String,
    unit: serde_json::Value,
    expr: String,
    legend: serde_json::Value,
}

/// Every query of every panel, in order.
fn dashboard_queries(device: &str) -> Vec<Query> {
    let dash: serde_json::Value = serde_json::from_str(&dashboard_text()).expect("dashboard JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            out.push(Query {
                panel: panel["title"].as_str().expect("a title").to_owned(),
                unit: panel["fieldConfig"]["defaults"]["unit"].clone(),
                expr: t["expr"]
                    .as_str()
                    .expect("an expression")
                    .replace("$device", device),
                legend: t["legendFormat"].clone(),
            });
        }
    }
    out
}

fn scrape(addr: SocketAddr) -> String {
    let r = get(addr, "/metrics", &[]).expect("/metrics answers");
    assert_eq!(r.status, 200);
    r.text()
}

#[test]
fn a_live_scrape_passes_promtool_and_openmetrics_is_negotiated() {
    let (mut h, addr) = start(false, "");
    assert!(h.wait_books(3, Duration::from_secs(10)), "no books");

    // Prometheus text 0.0.4 by default, and promtool has nothing to say about it.
    let r = get(addr, "/metrics", &[]).expect("/metrics answers");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let out = promtool(&["check", "metrics"], Some(&r.body));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "promtool check metrics on a {}-byte scrape of {} lines: exit {:?}, output {:?}",
        r.body.len(),
        r.text().lines().count(),
        out.status.code(),
        said
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    let text = r.text();
    let names = prom::sample_names(&text);
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "marketbox_event_latency_seconds_count",
        "marketbox_stream_last_message_timestamp_seconds",
        "marketbox_book_verified",
        "marketbox_plan_ws_connections",
        "marketbox_ws_connections",
    ] {
        assert!(
            sum_of(&text, name) > 0.0,
            "{name} missing or zero in\n{text}"
        );
    }
    for name in [
        "process_cpu_seconds_total",
        "marketbox_book_unverified_seconds_total",
        "marketbox_event_latency_seconds_bucket",
        "marketbox_event_latency_seconds_sum",
    ] {
        assert!(names.contains(name), "{name} missing in\n{text}");
    }

    // OpenMetrics when the scraper prefers it, as Prometheus does.
    let r = get(addr, "/metrics", &[("Accept", PROMETHEUS_ACCEPT)]).expect("answers");
    assert_eq!(
        r.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(r.text().ends_with("# EOF\n"));
}

#[test]
fn the_listener_is_read_only_and_bounded() {
    let (_h, addr) = start(false, "");
    // Read-only: other methods are refused, with the methods allowed.
    let r = request(addr, "POST", "/metrics", &[("Content-Length", "0")]).expect("answers");
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
    let r = request(addr, "DELETE", "/ready", &[]).expect("answers");
    assert_eq!(r.status, 405);
    // HEAD answers the headers only.
    let r = request(addr, "HEAD", "/metrics", &[]).expect("answers");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(get(addr, "/nope", &[]).expect("answers").status, 404);
    // A body is refused.
    let r = prom::raw(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .expect("answers");
    assert_eq!(r.status, 413);
    // Too many headers, or too many header bytes: 431.
    let many: Vec<(String, String)> = (0..40).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(get(addr, "/metrics", &many).expect("answers").status, 431);
    let big = "v".repeat(10_000);
    let r = get(addr, "/metrics", &[("X-Big", &big)]);
    assert!(
        r.as_ref().map_or(true, |r| r.status == 431),
        "a 10 kB header was served: {r:?}"
    );

    // At most 16 connections are served at once: 16 clients that never send a request hold
    // every slot until the header timeout (5 s) closes them; a 17th waits for a slot.
    let idle: Vec<std::net::TcpStream> = (0..16)
        .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let r = get(addr, "/health", &[]).expect("answered once a slot frees");
    let waited = t0.elapsed();
    eprintln!("17th client served after {waited:?}");
    assert_eq!(r.status, 200);
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(9),
        "the 17th client waited {waited:?}"
    );
    // The idle clients were closed by the server.
    for mut s in idle {
        use std::io::Read;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap_or(0);
        assert!(
            n == 0 || buf[..n].starts_with(b"HTTP/1.1 408"),
            "{:?}",
            &buf[..n]
        );
    }
}

#[test]
fn health_names_a_loop_that_stopped_beating() {
    let (h, addr) = start(false, "");
    let r = get(addr, "/health", &[]).expect("answers");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["healthy"], true);
    assert!(
        v["loops"]
            .as_array()
            .expect("loops")
            .iter()
            .any(|l| l["name"] == "executor")
    );
    let beat = h
        .app
        .liveness
        .register("test loop", Duration::from_millis(200));
    std::thread::sleep(Duration::from_millis(400));
    let r = get(addr, "/health", &[]).expect("answers");
    assert_eq!(r.status, 503, "{}", r.text());
    let v = r.json();
    assert_eq!(v["healthy"], false);
    assert_eq!(v["stuck"][0]["name"], "test loop");
    assert!(v["stuck"][0]["silent_seconds"].as_f64().expect("seconds") >= 0.4);
    beat.beat();
    assert_eq!(get(addr, "/health", &[]).expect("answers").status, 200);
}

/// Runs the real stdout upstream into a sink: it drains the spool and sets
/// `marketbox_upstream_up`.
fn run_upstream(h: &Harness) -> smol::Task<()> {
    let (spool, metrics) = (h.app.spool.clone(), h.app.metrics.clone());
    let format = h.config.upstream.format;
    h.executor.spawn(async move {
        let _ = marketbox::app::run_stdout(spool, format, &metrics, futures_lite::io::sink()).await;
    })
}

#[test]
fn ready_names_a_silent_stream_and_recovers_while_health_stays_ok() {
    let (h, addr) = start(false, "");
    let _upstream = run_upstream(&h);
    let health_ok = |what: &str| {
        let r = get(addr, "/health", &[]).expect("/health answers");
        assert_eq!(r.status, 200, "{what}: {}", r.text());
    };
    let wait_ready = |want: u16, limit: Duration| -> (Duration, prom::Answer) {
        let t0 = Instant::now();
        loop {
            let r = get(addr, "/ready", &[]).expect("/ready answers");
            if r.status == want {
                return (t0.elapsed(), r);
            }
            assert!(t0.elapsed() < limit, "/ready never {want}: {}", r.text());
            health_ok("while waiting for /ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (t_start, r) = wait_ready(200, Duration::from_secs(15));
    let v = r.json();
    assert_eq!(v["streams_checked"], 4);
    assert_eq!(v["upstream_up"], true);

    h.sim.silence(sim::Mkt::Spot, "BTC-USDT", true);
    let (t_silent, r) = wait_ready(503, Duration::from_secs(10));
    let v = r.json();
    let named: Vec<&str> = v["not_ready"]
        .as_array()
        .expect("not_ready")
        .iter()
        .filter_map(|s| s["stream"].as_str())
        .collect();
    assert_eq!(named, ["orderbook.binance.spot.BTC-USDT"], "{v}");
    assert_eq!(v["not_ready"][0]["reasons"][0]["reason"], "stale", "{v}");
    assert_eq!(v["not_ready"][0]["reasons"][0]["threshold_seconds"], 3.0);
    // It stays not ready while the symbol is silent (the session resubscribes meanwhile).
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(get(addr, "/ready", &[]).expect("answers").status, 503);
        health_ok("while the symbol is silent");
    }

    h.sim.silence(sim::Mkt::Spot, "BTC-USDT", false);
    let (t_back, _) = wait_ready(200, Duration::from_secs(10));
    health_ok("after recovery");
    eprintln!(
        "/ready: 200 after {t_start:?} from start; 503 naming the silent book {t_silent:?} \
         after the silence began (threshold 3 s); 200 again {t_back:?} after it ended"
    );
    assert!(t_silent >= Duration::from_millis(2900), "{t_silent:?}");
}

#[test]
fn ws_connections_match_the_simulator_at_every_one_second_sample_during_churn() {
    let (h, addr) = start(true, "");
    let _upstream = run_upstream(&h);
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.sim.open_ws() < 3 {
        assert!(Instant::now() < deadline, "three sockets never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let churning = std::sync::atomic::AtomicBool::new(true);
    let (mut samples, mut mismatches, mut streak, mut worst) = (0u32, 0u32, 0u32, 0u32);
    let mut log = Vec::new();
    std::thread::scope(|s| {
        let (sim, churning) = (&h.sim, &churning);
        s.spawn(move || {
            use sim::{Disconnect, Endpoint};
            let kinds = [Disconnect::Close, Disconnect::Reset, Disconnect::Silence];
            let endpoints = [Endpoint::Spot, Endpoint::PerpPublic, Endpoint::PerpMarket];
            let mut i = 0usize;
            while churning.load(std::sync::atomic::Ordering::SeqCst) {
                if i % 4 == 3 {
                    sim.disconnect_all(kinds[i % 3]);
                } else {
                    sim.disconnect(endpoints[i % 3], kinds[(i / 3) % 3]);
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(150 + (i as u64 * 137) % 500));
            }
        });
        let t0 = Instant::now();
        let mut next = t0 + Duration::from_secs(1);
        while t0.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            next += Duration::from_secs(1);
            let gauge = sum_of(&scrape(addr), "marketbox_ws_connections");
            let seen = h.sim.open_ws();
            samples += 1;
            if gauge as usize == seen {
                streak = 0;
            } else {
                mismatches += 1;
                streak += 1;
                worst = worst.max(streak);
            }
            log.push((gauge as usize, seen));
        }
        churning.store(false, std::sync::atomic::Ordering::SeqCst);
    });
    let accepts = h.sim.ws_accepts();
    eprintln!(
        "churn: {samples} one-second samples, {accepts} WebSocket accepts at the simulator, \
         {mismatches} samples where marketbox_ws_connections differed from the simulator's \
         open sockets, longest run {worst} sample(s); (gauge, simulator) per sample: {log:?}"
    );
    assert!(accepts >= 30, "too little churn: {accepts} accepts");
    assert!(samples >= 19);
    assert!(worst <= 2, "a mismatch lasted {worst} samples");
    // After the churn the two agree again and equal the plan.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let gauge = sum_of(&scrape(addr), "marketbox_ws_connections") as usize;
        if gauge == h.sim.open_ws() && gauge == h.app.plan.sockets.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gauge {gauge}, simulator {}",
            h.sim.open_ws()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `[metrics.push]` table sending every second to `url`, with a bearer token file.
fn push_table(url: &str, token_dir: &prom::TempDir) -> String {
    let token = token_dir.path().join("push.token");
    std::fs::write(&token, "s3cret-token\n").expect("write the token");
    format!(
        "[metrics.push]\nurl = \"{url}\"\ninterval = \"1s\"\nbearer_token_file = \"{}\"\n",
        token.display()
    )
}

#[test]
fn pushed_series_reach_a_real_prometheus_labelled_with_the_device() {
    // The receiver's port is chosen first; marketbox pushes before Prometheus is up, so the
    // first attempts fail (connection refused) and are retried.
    let port = prom::free_port();
    let dir = prom::TempDir::new("push");
    let (h, addr) = start(
        true,
        &push_table(&format!("http://127.0.0.1:{port}/api/v1/write"), &dir),
    );
    let _upstream = run_upstream(&h);
    let planned = h.app.plan.sockets.len();
    assert_eq!(planned, 3);
    assert_eq!(
        h.app.plan.push.as_deref(),
        Some(format!("http://127.0.0.1:{port}").as_str())
    );
    assert_eq!(
        h.app.plan.needed(),
        planned + h.app.plan.rest.len() + 1,
        "the push connection is part of the plan"
    );
    std::thread::sleep(Duration::from_millis(1500));
    // Prometheus also scrapes /metrics every second: its own parser reads the exposition.
    let p = prom::Prometheus::start_on(
        port,
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: marketbox\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    );
    let t0 = Instant::now();
    let q = "sum(marketbox_ws_connections{device=\"obs-test\"})";
    loop {
        if p.value(q) == Some(planned as f64) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "Prometheus never had the pushed gauge: {:?}",
            p.query("marketbox_ws_connections")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let arrived = t0.elapsed();
    // One pushed series per planned socket, each 1, each with the device label.
    let series = p.query("marketbox_ws_connections{device=\"obs-test\"}");
    assert_eq!(series.len(), planned, "{series:?}");
    for s in &series {
        assert_eq!(s["value"][1], "1", "{s}");
    }
    // Every pushed series carries the device label: none is missing it.
    assert_eq!(
        p.value("count({__name__=~\"marketbox_.+\",device=\"obs-test\"}) > 0")
            .map(|v| v > 20.0),
        Some(true)
    );
    // The scrape works too.
    let deadline = Instant::now() + Duration::from_secs(15);
    while p.value("up{job=\"marketbox\"}") != Some(1.0)
        || p.value("sum(marketbox_ws_connections{job=\"marketbox\"})") != Some(planned as f64)
    {
        assert!(Instant::now() < deadline, "the scrape never landed");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Refused attempts were retried, then accepted; the push held one REST keep-alive to the
    // receiver under the budget.
    let errors = h.metric("marketbox_push_requests_total", &[("result", "error")]);
    let ok = h.metric("marketbox_push_requests_total", &[("result", "ok")]);
    let rejected = h.metric("marketbox_push_dropped_batches_total", &[]);
    let receiver = format!("http://127.0.0.1:{port}");
    let conns = h.metric("marketbox_rest_connections", &[("host", receiver.as_str())]);
    eprintln!(
        "pushed gauge in Prometheus {arrived:?} after it started; push requests: {errors} \
         failed before the receiver was up, {ok} accepted; batches dropped {rejected}; \
         connections to the receiver {conns}; budget in use {} of {} (plan {})",
        h.app.budget.in_use(),
        h.app.budget.limit(),
        h.app.plan.needed()
    );
    assert!(errors >= 1 && ok >= 1);
    assert_eq!(rejected, 0, "nothing was dropped");
    assert_eq!(conns, 1);
    assert!(h.app.budget.peak() <= h.app.budget.limit());

    // Every dashboard query is valid PromQL against this Prometheus, and the panels the
    // issue names have data for this device.
    let mut empty = Vec::new();
    for q in dashboard_queries("obs-test") {
        if p.query(&q.expr).is_empty() {
            empty.push(format!("{}: {}", q.panel, q.expr));
        }
    }
    eprintln!("dashboard queries without data in a 10 s run: {empty:?}");
    for must in [
        "WebSockets per exchange",
        "Messages/s",
        "Verified %",
        "Resident memory",
    ] {
        assert!(
            !empty.iter().any(|e| e.contains(must)),
            "panel {must} has no data: {empty:?}"
        );
    }
}

/// `marketbox_*` and `process_*` names in a rule file or dashboard.
fn metric_names_in(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for prefix in ["marketbox_", "process_"] {
        let mut rest = text;
        while let Some(i) = rest.find(prefix) {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let before = rest[..i].chars().next_back();
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                out.insert(tail[..end].to_owned());
            }
            rest = &tail[end..];
        }
    }
    out
}

#[test]
fn alert_rules_pass_promtool_and_every_metric_they_and_the_dashboard_name_is_live() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config/prometheus");
    let rules = format!("{dir}/alerts.yml");
    let out = promtool(&["check", "rules", &rules], None);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = promtool(&["test", "rules", &format!("{dir}/alerts_test.yml")], None);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("promtool check rules + test rules: {}", said.trim());

    // A live box with the push configured (to a receiver that is down) and one resync.
    let tokens = prom::TempDir::new("rules");
    let dead = format!("http://127.0.0.1:{}/api/v1/write", prom::free_port());
    let (mut h, addr) = start(false, &push_table(&dead, &tokens));
    assert!(h.wait_books(2, Duration::from_secs(10)), "no books");
    h.sim.inject_gap(sim::Mkt::Spot, "BTCUSDT");
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.metric("marketbox_book_resyncs_total", &[("reason", "gap")]) == 0 {
        assert!(Instant::now() < deadline, "the gap was not seen");
        std::thread::sleep(Duration::from_millis(20));
        h.drain();
    }
    let live = prom::sample_names(&scrape(addr));
    let dashboard = dashboard_text();
    let alerts = std::fs::read_to_string(&rules).expect("the rules");
    for (what, text) in [("alerts.yml", &alerts), ("marketbox.json", &dashboard)] {
        let named = metric_names_in(text);
        assert!(named.len() >= 10, "{what} names {named:?}");
        let missing: Vec<&String> = named.iter().filter(|n| !live.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "{what} names metrics a live scrape does not have: {missing:?}"
        );
        eprintln!(
            "{what}: {} metric names, all in the live scrape",
            named.len()
        );
    }
}

/// What the scripted receiver saw of one request.
struct Received {
    at: Instant,
    headers: hyper::HeaderMap,
    request: marketbox::metrics::push::WriteRequest,
}

/// A remote-write receiver on a loopback port that answers the statuses of `script` in
/// order (then 204), with `Retry-After` where given, and records every request.
struct ScriptedReceiver {
    addr: SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _stop: smol::channel::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ScriptedReceiver {
    fn start(script: Vec<(u16, Option<u64>)>) -> ScriptedReceiver {
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
        let connections: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let script = Arc::new(Mutex::new(std::collections::VecDeque::from(script)));
        let (stop, stopped) = smol::channel::bounded::<()>(1);
        let (seen2, conns2) = (seen.clone(), connections.clone());
        let thread = std::thread::spawn(move || {
            let ex = smol::LocalExecutor::new();
            let listener = smol::Async::new(listener).expect("async listener");
            smol::block_on(ex.run(futures_lite::FutureExt::or(
                async {
                    let _ = stopped.recv().await;
                },
                async {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else {
                            continue;
                        };
                        conns2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let (seen, script) = (seen2.clone(), script.clone());
                        ex.spawn(async move {
                            let svc = hyper::service::service_fn(
                                move |req: hyper::Request<hyper::body::Incoming>| {
                                    let (seen, script) = (seen.clone(), script.clone());
                                    async move {
                                        use http_body_util::BodyExt;
                                        let at = Instant::now();
                                        let headers = req.headers().clone();
                                        let body = req
                                            .into_body()
                                            .collect()
                                            .await
                                            .map(|b| b.to_bytes())
                                            .unwrap_or_default();
                                        let raw = snap::raw::Decoder::new()
                                            .decompress_vec(&body)
                                            .expect("snappy block format");
                                        let request = <marketbox::metrics::push::WriteRequest as prost::Message>::decode(raw.as_slice())
                                            .expect("a WriteRequest");
                                        seen.lock().expect("lock").push(Received {
                                            at,
                                            headers,
                                            request,
                                        });
                                        let (status, retry) = script
                                            .lock()
                                            .expect("lock")
                                            .pop_front()
                                            .unwrap_or((204, None));
                                        let mut b = hyper::Response::builder().status(status);
                                        if let Some(s) = retry {
                                            b = b.header("retry-after", s.to_string());
                                        }
                                        Ok::<_, std::convert::Infallible>(
                                            b.body(http_body_util::Full::new(
                                                hyper::body::Bytes::from_static(b"scripted"),
                                            ))
                                            .expect("a response"),
                                        )
                                    }
                                },
                            );
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(smol_hyper::rt::FuturesIo::new(tcp), svc)
                                .await;
                        })
                        .detach();
                    }
                },
            )));
        });
        ScriptedReceiver {
            addr,
            seen,
            connections,
            _stop: stop,
            thread: Some(thread),
        }
    }
}

impl Drop for ScriptedReceiver {
    fn drop(&mut self) {
        let _ = self._stop.try_send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The sample timestamp of a pushed batch (all its samples share it) and whether every
/// series carries `device="obs-test"`.
fn batch_of(r: &Received) -> (i64, bool) {
    let ts = r.request.timeseries[0].samples[0].timestamp;
    let labelled = r.request.timeseries.iter().all(|s| {
        s.samples.iter().all(|x| x.timestamp == ts)
            && s.labels
                .iter()
                .any(|l| l.name == "device" && l.value == "obs-test")
    });
    (ts, labelled)
}

#[test]
fn the_push_retries_5xx_and_429_in_order_and_drops_what_is_rejected() {
    let rx = ScriptedReceiver::start(vec![(503, None), (503, None), (429, Some(3)), (400, None)]);
    let dir = prom::TempDir::new("retry");
    let (h, _addr) = start(
        false,
        &push_table(&format!("http://{}/api/v1/write", rx.addr), &dir),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while rx.seen.lock().expect("lock").len() < 7 {
        assert!(Instant::now() < deadline, "the push stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = rx.seen.lock().expect("lock");
    let batches: Vec<(i64, bool)> = seen.iter().map(batch_of).collect();
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].at - w[0].at).collect();
    eprintln!(
        "push against 503, 503, 429 (Retry-After 3), 400, then 204: {} requests on {} \
         connection(s); sample timestamps {:?}; gaps {gaps:?}",
        seen.len(),
        rx.connections.load(std::sync::atomic::Ordering::SeqCst),
        batches.iter().map(|b| b.0).collect::<Vec<_>>()
    );
    // Every series is labelled with the device; the headers are remote-write 1.0's.
    assert!(batches.iter().all(|b| b.1));
    let hd = &seen[0].headers;
    assert_eq!(hd["content-encoding"], "snappy");
    assert_eq!(hd["content-type"], "application/x-protobuf");
    assert_eq!(hd["x-prometheus-remote-write-version"], "0.1.0");
    assert_eq!(hd["authorization"], "Bearer s3cret-token");
    // The first batch was sent four times (503, 503, 429, then 400), never re-sampled ...
    assert!(batches[..4].iter().all(|b| b.0 == batches[0].0));
    // ... after the backoff (500 ms, 1 s) and the receiver's Retry-After (3 s).
    assert!(gaps[0] >= Duration::from_millis(450), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(950), "{gaps:?}");
    assert!(gaps[2] >= Duration::from_millis(2950), "{gaps:?}");
    // The rejected batch is gone; the ones queued meanwhile follow in order.
    assert!(batches[4..].iter().all(|b| b.0 > batches[0].0));
    assert!(
        batches[4..].windows(2).all(|w| w[1].0 > w[0].0),
        "{batches:?}"
    );
    assert_eq!(
        h.metric("marketbox_push_requests_total", &[("result", "retry")]),
        3
    );
    assert_eq!(
        h.metric(
            "marketbox_push_dropped_batches_total",
            &[("reason", "rejected")]
        ),
        1
    );
    // One keep-alive connection carried it all (statuses never close it).
    assert_eq!(rx.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn check_config_counts_the_push_connection_in_the_plan() {
    let dir = prom::TempDir::new("check");
    std::fs::write(dir.path().join("push.token"), "t\n").expect("write the token");
    let base = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/marketbox.toml"
    ))
    .expect("the default config");
    let cfg = dir.path().join("box.toml");
    std::fs::write(
        &cfg,
        base.replace(
            "# [metrics.push]",
            "[metrics.push]\nurl = \"https://prom.example/api/v1/write\"\nbearer_token_file = \"push.token\"\n#",
        ),
    )
    .expect("write the config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_marketbox"))
        .arg("check-config")
        .arg(&cfg)
        .output()
        .expect("marketbox runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("metrics push: 1 (https://prom.example, one keep-alive connection)"),
        "{text}"
    );
    assert!(text.contains("budget: 8 of 10 sockets planned"), "{text}");
}

/// Not a check but the source of `config/grafana/marketbox.png`: three minutes of simulated
/// traffic (a gap, a silent symbol, churn, the upstream stopped for 20 s) pushed into a real
/// Prometheus, then every dashboard query as a range query, written as JSON to the file
/// `MARKETBOX_DASHBOARD_OUT` names; `config/grafana/plot.py` draws the panels from it.
/// Run: `MARKETBOX_DASHBOARD_OUT=dash.json cargo test --test observability
/// dashboard_data -- --ignored --nocapture`.
#[test]
#[ignore = "renders the dashboard's data for the README picture; takes three minutes"]
fn dashboard_data() {
    let out = std::env::var_os("MARKETBOX_DASHBOARD_OUT").expect("set MARKETBOX_DASHBOARD_OUT");
    let port = prom::free_port();
    let p = prom::Prometheus::start_on(port, "global:\n  scrape_interval: 5s\n");
    let dir = prom::TempDir::new("dash");
    let (h, _addr) = start(true, &push_table(&p.write_url(), &dir));
    let mut upstream = Some(run_upstream(&h));
    let t0 = Instant::now();
    let at = |s: u64| {
        std::thread::sleep((t0 + Duration::from_secs(s)).saturating_duration_since(Instant::now()))
    };
    at(30);
    h.sim.inject_gap(sim::Mkt::Spot, "BTCUSDT");
    h.sim.inject_gap(sim::Mkt::Perp, "ETHUSDT");
    at(50);
    h.sim.silence(sim::Mkt::Spot, "ETH-USDT", true);
    at(65);
    h.sim.silence(sim::Mkt::Spot, "ETH-USDT", false);
    for i in 0..10u64 {
        at(80 + 2 * i);
        h.sim
            .disconnect_all([sim::Disconnect::Close, sim::Disconnect::Reset][i as usize % 2]);
    }
    at(120);
    drop(upstream.take());
    at(140);
    upstream.replace(run_upstream(&h));
    at(180);
    let end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let mut panels: Vec<serde_json::Value> = Vec::new();
    for q in dashboard_queries("obs-test") {
        let path = format!(
            "/api/v1/query_range?query={}&start={}&end={end}&step=2",
            prom::percent_encode(&q.expr),
            end - 180
        );
        let r = get(p.addr(), &path, &[]).expect("range query");
        assert_eq!(r.status, 200, "{}: {}", q.expr, r.text());
        let target = serde_json::json!({
            "expr": q.expr,
            "legend": q.legend,
            "result": r.json()["data"]["result"],
        });
        match panels.last_mut() {
            Some(last) if last["title"] == q.panel.as_str() => {
                if let Some(t) = last["targets"].as_array_mut() {
                    t.push(target);
                }
            }
            _ => panels.push(serde_json::json!({
                "title": q.panel,
                "unit": q.unit,
                "targets": [target],
            })),
        }
    }
    drop(upstream);
    std::fs::write(&out, serde_json::to_vec(&panels).expect("JSON")).expect("write the data");
    eprintln!("wrote {} panels to {}", panels.len(), out.to_string_lossy());
}
