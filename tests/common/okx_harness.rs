//! The OKX end-to-end harness: the OKX simulator, marketbox in-process, and a checker that
//! compares every published book with the simulator's true book at its `update_id` (= `seqId`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use marketbox::app::App;
use marketbox::config::Config;
use marketbox::model::{Channel, Data, Market, Message};

use crate::sim::okx::{OkxOptions, OkxSim};

pub const DEPTH: usize = 10;
pub const INSTS: [&str; 4] = ["BTC-USDT", "ETH-USDT", "BTC-USDT-SWAP", "ETH-USDT-SWAP"];

/// The e2e config: both OKX markets, with `extra_spot_symbol` appended to the spot symbols
/// (`, "FOO-USDT"`) and `session` as the `[session]` table.
pub fn config_with(sim: &OkxSim, extra_spot_symbol: &str, session: &str) -> Config {
    let text = format!(
        r#"
[budget]
max_connections = 2
[book]
depth = {DEPTH}
[session]
{session}
[rest]
idle_timeout = "2s"
request_timeout = "2s"
[tls]
extra_ca = "{ca}"
[venues.okx]
ws = "{ws}"
rest = "{rest}"
[[feeds]]
exchange = "okx"
market = "spot"
symbols = ["BTC-USDT", "ETH-USDT"{extra_spot_symbol}]
channels = ["orderbook", "trade"]
[[feeds]]
exchange = "okx"
market = "perpetual"
symbols = ["BTC-USDT", "ETH-USDT"]
channels = ["orderbook", "trade", "funding_rate", "open_interest", "liquidation", "lsr_top_position", "lsr_all_account"]
"#,
        ca = sim.ca_pem_path().display(),
        ws = sim.ws_url(),
        rest = sim.rest(),
    );
    Config::parse(&text, "okx-e2e.toml").expect("test config")
}

/// The `[session]` of the churn tests: short timeouts and backoff.
pub const FAST_SESSION: &str = r#"connect_timeout = "2s"
idle_timeout = "600ms"
backoff_min = "20ms"
backoff_max = "200ms"
stable_after = "5s""#;

pub fn config(sim: &OkxSim, extra_spot_symbol: &str) -> Config {
    config_with(sim, extra_spot_symbol, FAST_SESSION)
}

/// The venue's instrument of a published message.
pub fn inst_of(m: &Message) -> String {
    match m.market {
        Market::Spot => m.symbol.to_string(),
        Market::Perpetual => format!("{}-SWAP", m.symbol),
    }
}

/// The simulator, marketbox in-process, and a checker of everything it publishes.
pub struct Okx {
    pub sim: OkxSim,
    pub app: App,
    stop: smol::channel::Sender<()>,
    pub books: HashMap<String, u64>,
    pub wrong_books: u64,
    pub seq_gaps: u64,
    pub last_seq: HashMap<(String, Channel), u64>,
    pub by_channel: HashMap<Channel, u64>,
    pub symbols: Vec<String>,
    /// Every message published, in order.
    pub messages: Vec<Message>,
    buf: Vec<u8>,
}

impl Okx {
    pub fn start(opts: OkxOptions, extra_spot_symbol: &str) -> Okx {
        Okx::start_with(opts, |sim| config(sim, extra_spot_symbol))
    }

    pub fn start_with(opts: OkxOptions, make_config: impl FnOnce(&OkxSim) -> Config) -> Okx {
        let _ = tracing_subscriber::fmt()
            .with_max_level(
                std::env::var("MARKETBOX_LOG")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(tracing::Level::WARN),
            )
            .with_test_writer()
            .try_init();
        let sim = OkxSim::start(opts);
        let ex = Arc::new(smol::Executor::new());
        let app = App::start(&make_config(&sim), &ex).expect("app starts");
        let (stop, rx) = smol::channel::bounded::<()>(2);
        for _ in 0..2 {
            let (ex, rx) = (ex.clone(), rx.clone());
            std::thread::spawn(move || {
                smol::block_on(ex.run(async {
                    let _ = rx.recv().await;
                }))
            });
        }
        Okx {
            sim,
            app,
            stop,
            books: HashMap::new(),
            wrong_books: 0,
            seq_gaps: 0,
            last_seq: HashMap::new(),
            by_channel: HashMap::new(),
            symbols: Vec::new(),
            messages: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// Drains the spool, checking every book against the simulator's truth.
    pub fn drain(&mut self) {
        while let Some(h) = self.app.spool.try_pop(&mut self.buf) {
            let msg: Message = serde_json::from_slice(&self.buf).expect("valid JSON message");
            assert_eq!(h.seq, msg.seq);
            let inst = inst_of(&msg);
            if let Some(prev) = self.last_seq.insert((inst.clone(), msg.channel), msg.seq)
                && msg.seq != prev + 1
            {
                self.seq_gaps += 1;
            }
            *self.by_channel.entry(msg.channel).or_default() += 1;
            if !self.symbols.contains(&inst) {
                self.symbols.push(inst.clone());
            }
            if let Data::Orderbook(ob) = &msg.data {
                *self.books.entry(inst.clone()).or_default() += 1;
                let truth = self.sim.true_book(&inst, ob.update_id as i64, DEPTH);
                let text = |v: &[(marketbox::book::Decimal, marketbox::book::Decimal)]| {
                    v.iter()
                        .map(|(p, q)| (p.to_string(), q.to_string()))
                        .collect::<Vec<_>>()
                };
                let got = (text(&ob.bids), text(&ob.asks));
                if truth.as_ref() != Some(&got) {
                    self.wrong_books += 1;
                    eprintln!(
                        "WRONG book {inst} at {}: got {got:?}\ntruth {truth:?}",
                        ob.update_id
                    );
                }
                assert!(msg.id.ends_with(&format!(".{}", ob.update_id)));
            }
            self.messages.push(msg);
        }
    }

    /// Waits until each of `insts` published `n` more books, draining as it goes.
    pub fn wait_books(&mut self, insts: &[&str], n: u64, timeout: Duration) -> bool {
        self.drain();
        let start = self.books.clone();
        let deadline = Instant::now() + timeout;
        loop {
            let ok = insts.iter().all(|i| {
                self.books.get(*i).copied().unwrap_or(0) >= start.get(*i).copied().unwrap_or(0) + n
            });
            if ok {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
            self.drain();
        }
    }

    /// Drains until `f` holds (or panics with `what` after `timeout`).
    pub fn wait_until(&mut self, what: &str, timeout: Duration, mut f: impl FnMut(&Okx) -> bool) {
        let deadline = Instant::now() + timeout;
        while !f(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
            self.drain();
        }
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.app.metrics.sum(name, labels)
    }

    pub fn resyncs(&self, reason: &str, symbol: &str, market: &str) -> u64 {
        self.metric(
            "marketbox_book_resyncs_total",
            &[("reason", reason), ("symbol", symbol), ("market", market)],
        )
    }

    /// Every resync of `reason`, by instrument.
    pub fn resyncs_by_inst(&self, reason: &str) -> Vec<u64> {
        INSTS
            .iter()
            .map(|i| {
                let (symbol, market) = match i.strip_suffix("-SWAP") {
                    Some(s) => (s, "perpetual"),
                    None => (*i, "spot"),
                };
                self.resyncs(reason, symbol, market)
            })
            .collect()
    }
}

impl Drop for Okx {
    fn drop(&mut self) {
        self.app.stop();
        for _ in 0..2 {
            let _ = self.stop.try_send(());
        }
    }
}
