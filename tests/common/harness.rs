//! The end-to-end harness: the simulator, marketbox in-process, and a checker that compares
//! every published book with the simulator's true book at its `update_id`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use marketbox::app::App;
use marketbox::config::Config;
use marketbox::model::{Channel, Data, Market, Message};

use crate::sim::{Mkt, Sim, SimOptions};

/// What the test saw come out of the spool.
#[derive(Default)]
pub struct Seen {
    pub books: u64,
    pub trades: u64,
    pub wrong_books: u64,
    pub books_by_symbol: HashMap<String, u64>,
    pub last_seq: HashMap<(String, Channel), u64>,
    pub seq_gaps: u64,
    pub other: u64,
}

pub struct Harness {
    pub sim: Sim,
    pub app: App,
    /// The config the app was started with, and the executor it runs on (for `App::serve`;
    /// not every suite uses them).
    #[allow(dead_code)]
    pub config: Config,
    #[allow(dead_code)]
    pub executor: Arc<smol::Executor<'static>>,
    _threads: Vec<std::thread::JoinHandle<()>>,
    stop: smol::channel::Sender<()>,
    pub seen: Seen,
    pub depth: usize,
    pub messages: Vec<Message>,
    buf: Vec<u8>,
}

impl Harness {
    pub fn start(make_config: impl FnOnce(&Sim) -> Config) -> Harness {
        let _ = tracing_subscriber::fmt()
            .with_max_level(
                std::env::var("MARKETBOX_LOG")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(tracing::Level::WARN),
            )
            .with_test_writer()
            .try_init();
        let sim = Sim::start(SimOptions {
            diff_interval: Duration::from_millis(10),
            ..SimOptions::default()
        });
        let ex = Arc::new(smol::Executor::new());
        let config = make_config(&sim);
        let app = App::start(&config, &ex).expect("app starts");
        let (stop, rx) = smol::channel::bounded::<()>(1);
        let mut threads = Vec::new();
        for _ in 0..2 {
            let (ex, rx) = (ex.clone(), rx.clone());
            threads.push(std::thread::spawn(move || {
                smol::block_on(ex.run(async {
                    let _ = rx.recv().await;
                }))
            }));
        }
        Harness {
            sim,
            app,
            config,
            executor: ex,
            _threads: threads,
            stop,
            seen: Seen::default(),
            depth: 10,
            messages: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// Drains the spool, checking every book against the simulator's truth.
    pub fn drain(&mut self) {
        while let Some(h) = self.app.spool.try_pop(&mut self.buf) {
            let msg: Message = serde_json::from_slice(&self.buf).expect("valid JSON message");
            let key = (msg.symbol.to_string(), msg.channel);
            if let Some(prev) = self.seen.last_seq.insert(key, msg.seq)
                && msg.seq != prev + 1
            {
                self.seen.seq_gaps += 1;
            }
            assert_eq!(h.seq, msg.seq);
            match &msg.data {
                Data::Orderbook(ob) => {
                    self.seen.books += 1;
                    *self
                        .seen
                        .books_by_symbol
                        .entry(msg.symbol.to_string())
                        .or_default() += 1;
                    let venue = format!("{}{}", msg.symbol.base(), msg.symbol.quote());
                    let mkt = if msg.market == Market::Spot {
                        Mkt::Spot
                    } else {
                        Mkt::Perp
                    };
                    let truth = self.sim.true_book(mkt, &venue, ob.update_id, self.depth);
                    let got = (
                        ob.bids
                            .iter()
                            .map(|(p, q)| (p.to_string(), q.to_string()))
                            .collect::<Vec<_>>(),
                        ob.asks
                            .iter()
                            .map(|(p, q)| (p.to_string(), q.to_string()))
                            .collect::<Vec<_>>(),
                    );
                    if truth.as_ref() != Some(&got) {
                        self.seen.wrong_books += 1;
                        eprintln!(
                            "WRONG book {} at {}: got {got:?}\ntruth {truth:?}",
                            msg.symbol, ob.update_id
                        );
                    }
                    assert!(msg.id.ends_with(&format!(".{}", ob.update_id)));
                }
                Data::Trade(_) => self.seen.trades += 1,
                _ => self.seen.other += 1,
            }
            self.messages.push(msg);
        }
    }

    /// Waits until every symbol published `n` more books, draining as it goes.
    pub fn wait_books(&mut self, n: u64, timeout: Duration) -> bool {
        self.drain();
        let start: HashMap<String, u64> = self.seen.books_by_symbol.clone();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            self.drain();
            let ok = ["BTC-USDT", "ETH-USDT"].iter().all(|s| {
                self.seen.books_by_symbol.get(*s).copied().unwrap_or(0)
                    >= start.get(*s).copied().unwrap_or(0) + n
            });
            if ok {
                return true;
            }
        }
        false
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.app.metrics.sum(name, labels)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.app.stop();
        for _ in 0..2 {
            let _ = self.stop.try_send(());
        }
    }
}
