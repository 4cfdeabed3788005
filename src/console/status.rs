//! `status`: the service at a glance, from the same figures `/metrics` serves.
//!
//! Design: the figures are read from the registry's own text exposition
//! ([`Metrics::encode_prometheus`]), so `status` and a scrape cannot disagree, and nothing is
//! added to the feed path. Rates need two readings: a sampler reads the registry every
//! [`SAMPLE_EVERY`] and keeps the last minute of readings; messages per second and each
//! book's verified share are computed against the oldest one kept (since start, during the
//! first seconds). Verified share = 1 − (growth of `marketbox_book_unverified_seconds_total`)
//! / (time), exactly the dashboard's formula.
//!
//! Owns: the status table and the sampler's readings. Must not touch: the metrics' values.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// How often the sampler reads the registry.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// The longest window rates are computed over.
pub const WINDOW: Duration = Duration::from_secs(60);
/// The series rates are computed from: all a kept reading needs. A whole reading is about a
/// thousand series of small strings (each stream's histogram buckets included), and a
/// minute of them would hold megabytes of a box that has a few.
const RATED: [&str; 2] = [
    "marketbox_messages_total",
    "marketbox_book_unverified_seconds_total",
];

/// One series of the exposition.
#[derive(Debug, Clone, PartialEq)]
struct Series {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Series {
    fn label(&self, k: &str) -> &str {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// Parses `name{a="x",b="y"} value` lines (comments skipped; escapes in values kept simple:
/// `\"`, `\\`, `\n`).
fn parse(text: &str) -> Vec<Series> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
            None => (series, Vec::new()),
        };
        out.push(Series {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    out
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key.trim_start_matches(',').to_owned(), value));
        rest = &after[end.min(after.len())..];
    }
    out
}

/// One reading of the registry.
#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    series: Vec<Series>,
    /// The reading at start: every counter was 0 (a series it lacks counts as 0).
    zero: bool,
}

impl Sample {
    /// Reads the registry now.
    pub fn read(metrics: &Metrics, at: Instant) -> Sample {
        Sample::from_text(&metrics.encode_prometheus(), at)
    }

    fn from_text(text: &str, at: Instant) -> Sample {
        Sample {
            at,
            series: parse(text),
            zero: false,
        }
    }

    /// Every counter at 0, at `at` (the service's start).
    pub fn zero(at: Instant) -> Sample {
        Sample {
            at,
            series: Vec::new(),
            zero: true,
        }
    }

    fn of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Series> + 'a {
        self.series.iter().filter(move |s| s.name == name)
    }

    /// The sum of every series of `name` (0 when there is none).
    fn sum(&self, name: &str) -> f64 {
        self.of(name).fold(0.0, |a, s| a + s.value)
    }

    /// The value of the series `name` whose labels include `labels`; `None` when absent.
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.of(name)
            .find(|s| labels.iter().all(|(k, v)| s.label(k) == *v))
            .map(|s| s.value)
    }
}

/// The readings of the last [`WINDOW`].
pub struct Sampler {
    started: Instant,
    samples: Mutex<VecDeque<Sample>>,
}

impl Sampler {
    pub fn new(started: Instant) -> Sampler {
        Sampler {
            started,
            samples: Mutex::new(VecDeque::new()),
        }
    }

    /// Keeps a reading's [`RATED`] series, dropping readings older than the window.
    pub fn push(&self, mut sample: Sample) {
        sample.series.retain(|x| RATED.contains(&x.name.as_str()));
        sample.series.shrink_to_fit();
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.push_back(sample);
        while s
            .front()
            .is_some_and(|f| f.at + WINDOW + SAMPLE_EVERY < s.back().map_or(f.at, |b| b.at))
        {
            s.pop_front();
        }
    }

    /// The reading rates are computed against at `now`: the oldest within the window, else
    /// the start.
    pub fn base(&self, now: Instant) -> Sample {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.iter()
            .find(|x| now.saturating_duration_since(x.at) <= WINDOW + SAMPLE_EVERY)
            .filter(|x| now.saturating_duration_since(x.at) >= Duration::from_secs(1))
            .cloned()
            .unwrap_or_else(|| Sample::zero(self.started))
    }

    pub fn started(&self) -> Instant {
        self.started
    }
}

/// What the table says besides the registry.
pub struct Context<'a> {
    pub version: &'a str,
    pub uptime: Duration,
    /// `stdout`, `nats`, `mqtt`.
    pub upstream: &'a str,
    /// Lines about the config (unsaved changes, keys waiting for a restart).
    pub notes: Vec<String>,
}

fn uptime(d: Duration) -> String {
    let s = d.as_secs();
    let (days, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d {h:02}h {m:02}m")
    } else {
        format!("{h}h {m:02}m {sec:02}s")
    }
}

/// The status table (lines end with `\n`; the console turns them into the device's ends).
pub fn render(cur: &Sample, base: &Sample, ctx: &Context<'_>) -> String {
    let mut out = String::new();
    let span = cur.at.saturating_duration_since(base.at).as_secs_f64();
    let open = cur.sum("marketbox_ws_connections");
    let planned = cur.sum("marketbox_plan_ws_connections");
    let _ = writeln!(
        out,
        "marketbox {}  up {}  sockets {} of {} planned  budget {} of {} in use",
        ctx.version,
        uptime(ctx.uptime),
        open,
        planned,
        cur.sum("marketbox_budget_in_use"),
        cur.sum("marketbox_budget_limit"),
    );
    // Sockets: every planned one, and any open one the plan lacks (there should be none).
    let mut sockets: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
    for s in cur.of("marketbox_plan_ws_connections") {
        let e = sockets
            .entry((s.label("exchange").into(), s.label("socket").into()))
            .or_default();
        e.1 += s.value;
    }
    for s in cur.of("marketbox_ws_connections") {
        let e = sockets
            .entry((s.label("exchange").into(), s.label("socket").into()))
            .or_default();
        e.0 += s.value;
    }
    let _ = writeln!(
        out,
        "{:<9} {:<18} {:>5} {:>5}",
        "exchange", "socket", "open", "plan"
    );
    for ((ex, name), (o, p)) in &sockets {
        let _ = writeln!(out, "{ex:<9} {name:<18} {o:>5} {p:>5}");
    }
    // Books.
    let window = if base.zero {
        "since start".to_owned()
    } else {
        format!("last {span:.0}s")
    };
    let _ = writeln!(
        out,
        "{:<34} {:<8} {:>12} {:>7}",
        "book", "verified", window, "resyncs"
    );
    let mut books: Vec<&Series> = cur.of("marketbox_book_verified").collect();
    books.sort_by(|a, b| a.labels.cmp(&b.labels));
    for s in books {
        let (ex, mkt, sym) = (s.label("exchange"), s.label("market"), s.label("symbol"));
        let labels = [("exchange", ex), ("market", mkt), ("symbol", sym)];
        let unverified = cur
            .find("marketbox_book_unverified_seconds_total", &labels)
            .unwrap_or(0.0);
        let before = base
            .find("marketbox_book_unverified_seconds_total", &labels)
            .or(base.zero.then_some(0.0));
        let share = match before {
            Some(b) if span >= 1.0 => {
                let pct = 100.0 * (1.0 - (unverified - b).max(0.0) / span);
                format!("{:.1}%", pct.clamp(0.0, 100.0))
            }
            _ => "-".to_owned(),
        };
        let resyncs = cur
            .of("marketbox_book_resyncs_total")
            .filter(|r| labels.iter().all(|(k, v)| r.label(k) == *v))
            .fold(0.0, |a, r| a + r.value);
        let verified = if s.value >= 1.0 { "yes" } else { "no" };
        let _ = writeln!(
            out,
            "{:<34} {verified:<8} {share:>12} {resyncs:>7}",
            format!("{ex} {mkt} {sym}")
        );
    }
    // Messages per second, per channel.
    let mut channels: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for s in cur.of("marketbox_messages_total") {
        channels.entry(s.label("channel").into()).or_default().0 += s.value;
    }
    for s in base.of("marketbox_messages_total") {
        channels.entry(s.label("channel").into()).or_default().1 += s.value;
    }
    let _ = writeln!(out, "{:<18} {:>10}", "channel", "msg/s");
    for (ch, (now, before)) in &channels {
        let rate = if span > 0.0 {
            (now - before).max(0.0) / span
        } else {
            0.0
        };
        let _ = writeln!(out, "{ch:<18} {rate:>10.1}");
    }
    let up = if cur.sum("marketbox_upstream_up") >= 1.0 {
        "up"
    } else {
        "down"
    };
    let _ = writeln!(
        out,
        "upstream {} {up}  spool {} messages, {} dropped",
        ctx.upstream,
        cur.sum("marketbox_spool_depth"),
        cur.sum("marketbox_spool_dropped_total"),
    );
    for n in &ctx.notes {
        let _ = writeln!(out, "{n}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: &str = "\
# HELP marketbox_ws_connections Open WebSocket connections per planned socket
marketbox_ws_connections{exchange=\"binance\",socket=\"spot\"} 1
marketbox_plan_ws_connections{exchange=\"binance\",socket=\"spot\"} 1
marketbox_plan_ws_connections{exchange=\"okx\",socket=\"public\"} 1
marketbox_budget_in_use 3
marketbox_budget_limit 10
marketbox_book_verified{exchange=\"binance\",market=\"spot\",symbol=\"BTC-USDT\"} 1
marketbox_book_unverified_seconds_total{exchange=\"binance\",market=\"spot\",symbol=\"BTC-USDT\"} 2.0
marketbox_book_resyncs_total{exchange=\"binance\",market=\"spot\",symbol=\"BTC-USDT\",reason=\"gap\"} 1
marketbox_messages_total{exchange=\"binance\",market=\"spot\",symbol=\"BTC-USDT\",channel=\"trade\"} 100
marketbox_upstream_up 1
marketbox_spool_depth 4
";

    #[test]
    fn labels_with_escapes_parse() {
        let s = parse("m{a=\"x\\\"y\",b=\"z,w\"} 2.5\nm_total 3\n# c\n");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].label("a"), "x\"y");
        assert_eq!(s[0].label("b"), "z,w");
        assert_eq!(s[1].value, 3.0);
    }

    #[test]
    fn the_table_shows_sockets_books_rates_and_the_upstream() {
        let t0 = Instant::now();
        let base = Sample::from_text(T0, t0);
        let later = T0
            .replace("} 2.0", "} 7.0")
            .replace("channel=\"trade\"} 100", "channel=\"trade\"} 400")
            .replace("{exchange=\"okx\",socket=\"public\"} 1", "{exchange=\"okx\",socket=\"public\"} 1\nmarketbox_book_verified{exchange=\"okx\",market=\"spot\",symbol=\"ETH-USDT\"} 0");
        let cur = Sample::from_text(&later, t0 + Duration::from_secs(50));
        let ctx = Context {
            version: "0.1.0",
            uptime: Duration::from_secs(3723),
            upstream: "stdout",
            notes: vec!["config: unsaved changes (save writes them)".into()],
        };
        let text = render(&cur, &base, &ctx);
        let lines: Vec<&str> = text.lines().collect();
        // TC0: the first line: version, uptime, sockets open of planned, the budget.
        assert_eq!(
            lines[0],
            "marketbox 0.1.0  up 1h 02m 03s  sockets 1 of 2 planned  budget 3 of 10 in use"
        );
        // TC1: each planned socket with what is open.
        assert!(
            text.contains("binance   spot                   1     1"),
            "{text}"
        );
        assert!(
            text.contains("okx       public                 0     1"),
            "{text}"
        );
        // TC2: 5 s unverified in 50 s: 90% verified; a book new since the base shows "-".
        let books: Vec<&str> = lines[5..7].to_vec();
        assert_eq!(
            books,
            [
                "binance spot BTC-USDT              yes             90.0%       1",
                "okx spot ETH-USDT                  no                  -       0"
            ]
        );
        // TC3: 300 trades in 50 s.
        assert!(text.contains("trade                     6.0"), "{text}");
        assert!(
            text.contains("upstream stdout up  spool 4 messages, 0 dropped"),
            "{text}"
        );
        assert!(
            text.ends_with("config: unsaved changes (save writes them)\n"),
            "{text}"
        );
        // TC4: since start, books count from 0.
        let text = render(&cur, &Sample::zero(t0), &ctx);
        assert!(text.contains("since start"), "{text}");
        assert!(text.contains("86.0%"), "{text}");
    }

    #[test]
    fn the_sampler_keeps_a_minute_and_falls_back_to_the_start() {
        let t0 = Instant::now();
        let sampler = Sampler::new(t0);
        // TC0: nothing sampled: since start.
        assert!(sampler.base(t0 + Duration::from_secs(3)).zero);
        for i in 1..=30u64 {
            sampler.push(Sample::from_text(T0, t0 + SAMPLE_EVERY * i as u32));
        }
        // TC1: 150 s in: the oldest kept is at most a window (and a sample) old.
        let now = t0 + Duration::from_secs(150);
        let base = sampler.base(now);
        assert!(!base.zero);
        let age = now.saturating_duration_since(base.at);
        assert!(
            age <= WINDOW + SAMPLE_EVERY && age >= WINDOW - SAMPLE_EVERY,
            "{age:?}"
        );
        assert!(sampler.samples.lock().expect("lock").len() <= 15);
    }

    #[test]
    fn a_kept_reading_holds_only_the_rated_series_and_rates_come_out_the_same() {
        let t0 = Instant::now();
        let sampler = Sampler::new(t0);
        let at = t0 + SAMPLE_EVERY;
        sampler.push(Sample::from_text(T0, at));
        let kept = sampler.base(at + Duration::from_secs(5));
        let full = Sample::from_text(T0, at);
        assert!(!kept.zero);
        assert!(kept.series.len() < full.series.len());
        assert!(kept.series.iter().all(|x| RATED.contains(&x.name.as_str())));
        // Every rated series is kept, so the table is the same against either reading.
        for name in RATED {
            assert_eq!(kept.of(name).count(), full.of(name).count(), "{name}");
            assert!(full.of(name).count() > 0, "{name} is in the test text");
        }
        let later = T0
            .replace("channel=\"trade\"} 100", "channel=\"trade\"} 160")
            .replace("} 2.0", "} 3.0");
        assert_ne!(later, T0);
        let cur = Sample::from_text(&later, at + Duration::from_secs(5));
        let ctx = Context {
            version: "test",
            uptime: Duration::from_secs(10),
            upstream: "stdout",
            notes: Vec::new(),
        };
        assert_eq!(render(&cur, &kept, &ctx), render(&cur, &full, &ctx));
    }
}
