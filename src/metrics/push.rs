//! Remote push for boxes nobody can scrape: Prometheus remote-write 1.0.
//!
//! Design: every `[metrics.push] interval` the whole registry is sampled (the same text a
//! scrape of `/metrics` returns, format 0.0.4), every series gets the label
//! `device="<[device] id>"`, and the samples become one protobuf `WriteRequest` (the
//! messages below, derived with `prost`; field numbers from Prometheus' `remote.proto` and
//! `types.proto`), compressed with snappy's block format and `POST`ed with
//! `Content-Encoding: snappy`, `Content-Type: application/x-protobuf` and
//! `X-Prometheus-Remote-Write-Version: 0.1.0`.
//!
//! Requests go through the process's [`RestClient`]: one keep-alive connection to the
//! receiver, holding a `Rest` budget permit like every other socket; the plan counts it
//! (`Plan::push`).
//!
//! A batch that did not get through waits in a bounded queue ([`PushQueue`]) and is retried
//! in order (a receiver refuses samples older than what it already has for a series):
//!
//! ```text
//!   snapshot ──▶ queue ──▶ POST ──2xx──────────────▶ sent (failures reset)
//!                  ▲          ├──5xx, 429, no answer─▶ stays first; retry after
//!                  │          │                        backoff(failures) or Retry-After
//!                  │          └──other status─────────▶ dropped (`rejected`), next batch
//!                  └── past MAX_AGE: dropped (`too_old`); past MAX_BATCHES or
//!                      MAX_QUEUE_BYTES: the oldest dropped (`queue_full`)
//! ```
//!
//! Owns: the remote-write encoding, the retry queue and the push loop. Must not touch: the
//! connection itself (`net::http`) or metric names.
//!
//! ## Cancel safety
//! [`run`] never returns; drop its task to stop it. A request in flight is abandoned with its
//! connection (see `net::http`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::{HeaderMap, HeaderValue};
use hyper::body::Bytes;
use smol::Timer;

use super::health::Heartbeat;
use super::{Metrics, PushDropLabels, PushLabels};
use crate::config::{Endpoint, MAX_SECRET_BYTES, PushConfig, read_bounded};
use crate::net::http::RestClient;

/// `prometheus.WriteRequest` (remote-write 1.0).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`: labels sorted by name, `__name__` among them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`: timestamp in milliseconds since the epoch.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// A batch older than this is not retried any more.
pub const MAX_AGE: Duration = Duration::from_secs(300);
/// Batches waiting at most (a day of failures at 15 s would be 5760: the age cap comes first).
pub const MAX_BATCHES: usize = 64;
/// Compressed bytes waiting at most.
pub const MAX_QUEUE_BYTES: usize = 8 << 20;
/// First and longest retry delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Longest `Retry-After` honoured (a receiver cannot park the push for an hour).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// One parsed sample line of the text format.
#[derive(Debug, Clone, PartialEq)]
pub struct TextSample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses one sample line of the Prometheus text format 0.0.4 (`name{k="v",…} value`);
/// `None` for comments, blank lines and anything malformed.
pub fn parse_sample(line: &str) -> Option<TextSample> {
    let line = line.trim_end();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':');
    if !valid_name {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(mut l) = rest.strip_prefix('{') {
        loop {
            l = l.trim_start_matches([' ', ',']);
            if let Some(after) = l.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = l.split_once('=')?;
            let key = key.trim();
            let mut chars = after.strip_prefix('"')?.char_indices();
            let mut value = String::new();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            if key.is_empty() {
                return None;
            }
            labels.push((key.to_owned(), value));
            l = &after[1 + end + 1..];
        }
    }
    let value = rest.split_ascii_whitespace().next()?.parse::<f64>().ok()?;
    Some(TextSample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Every sample of a text exposition as one series each, labelled `device`, stamped
/// `timestamp_ms`. Malformed lines are skipped.
pub fn write_request(text: &str, device: &str, timestamp_ms: i64) -> WriteRequest {
    let timeseries = text
        .lines()
        .filter_map(parse_sample)
        .map(|s| {
            let mut labels: Vec<Label> = Vec::with_capacity(s.labels.len() + 2);
            labels.push(Label {
                name: "__name__".into(),
                value: s.name,
            });
            labels.extend(
                s.labels
                    .into_iter()
                    .filter(|(k, _)| k != "device" && k != "__name__")
                    .map(|(name, value)| Label { name, value }),
            );
            labels.push(Label {
                name: "device".into(),
                value: device.to_owned(),
            });
            labels.sort_by(|a, b| a.name.cmp(&b.name));
            TimeSeries {
                labels,
                samples: vec![Sample {
                    value: s.value,
                    timestamp: timestamp_ms,
                }],
            }
        })
        .collect();
    WriteRequest { timeseries }
}

/// Protobuf, then snappy's block format: the body remote-write expects.
pub fn encode(req: &WriteRequest) -> Result<Vec<u8>, snap::Error> {
    let proto = prost::Message::encode_to_vec(req);
    snap::raw::Encoder::new().compress_vec(&proto)
}

/// One sampled registry, ready to send.
#[derive(Debug, Clone)]
pub struct Batch {
    pub created: Instant,
    pub body: Bytes,
    pub series: usize,
}

/// What a send attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Accepted,
    /// 5xx or 429 (with the receiver's `Retry-After`), or no answer at all.
    Retry { after: Option<Duration> },
    /// Any other status: the receiver will never take this batch.
    Rejected { status: u16 },
}

impl Outcome {
    /// Classifies an HTTP status.
    pub fn of_status(status: u16, retry_after: Option<Duration>) -> Outcome {
        match status {
            200..=299 => Outcome::Accepted,
            429 | 500..=599 => Outcome::Retry { after: retry_after },
            _ => Outcome::Rejected { status },
        }
    }
}

/// Why batches were given up, and how many.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub rejected: u64,
    pub too_old: u64,
    pub queue_full: u64,
}

/// The retry delay after `failures` failures in a row: 500 ms doubling to 30 s.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_MIN.saturating_mul(1 << doublings).min(BACKOFF_MAX)
}

/// The batches waiting to be sent, oldest first, and when the first may be tried again.
/// Sans-I/O: the push loop feeds it times and outcomes.
#[derive(Debug, Default)]
pub struct PushQueue {
    batches: VecDeque<Batch>,
    bytes: usize,
    failures: u32,
    retry_at: Option<Instant>,
}

impl PushQueue {
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Failures in a row (0 after a success).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// When the first batch may be tried again, while backing off.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Appends a batch; the oldest make room past [`MAX_BATCHES`] or [`MAX_QUEUE_BYTES`].
    pub fn push(&mut self, batch: Batch) -> Dropped {
        let mut d = Dropped::default();
        self.bytes += batch.body.len();
        self.batches.push_back(batch);
        while self.batches.len() > MAX_BATCHES
            || (self.bytes > MAX_QUEUE_BYTES && self.batches.len() > 1)
        {
            self.pop();
            d.queue_full += 1;
        }
        d
    }

    /// Drops batches older than [`MAX_AGE`] at `now`.
    pub fn expire(&mut self, now: Instant) -> Dropped {
        let mut d = Dropped::default();
        while self
            .batches
            .front()
            .is_some_and(|b| now.saturating_duration_since(b.created) > MAX_AGE)
        {
            self.pop();
            d.too_old += 1;
        }
        d
    }

    /// The batch to send at `now`: the oldest, unless backing off.
    pub fn due(&self, now: Instant) -> Option<&Batch> {
        if self.retry_at.is_some_and(|t| now < t) {
            return None;
        }
        self.batches.front()
    }

    /// Applies the outcome of sending the batch [`PushQueue::due`] returned.
    pub fn outcome(&mut self, outcome: Outcome, now: Instant) -> Dropped {
        let mut d = Dropped::default();
        match outcome {
            Outcome::Accepted => {
                self.pop();
                self.failures = 0;
                self.retry_at = None;
            }
            Outcome::Rejected { .. } => {
                // The receiver answered: the link works, this batch never will.
                self.pop();
                self.failures = 0;
                self.retry_at = None;
                d.rejected += 1;
            }
            Outcome::Retry { after } => {
                self.failures = self.failures.saturating_add(1);
                let wait =
                    backoff(self.failures).max(after.unwrap_or_default().min(MAX_RETRY_AFTER));
                self.retry_at = Some(now.checked_add(wait).unwrap_or(now));
            }
        }
        d
    }

    fn pop(&mut self) {
        if let Some(b) = self.batches.pop_front() {
            self.bytes -= b.body.len();
        }
    }
}

/// The push could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PushSetupError {
    #[error("[metrics.push] {key} {path}: {reason}")]
    Secret {
        key: &'static str,
        path: String,
        reason: String,
    },
}

/// The `Authorization` header value, if any. Never logged: `Debug` hides it.
#[derive(Clone, Default)]
pub struct Auth(Option<HeaderValue>);

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Auth(<redacted>)"
        } else {
            "Auth(none)"
        })
    }
}

fn read_secret(key: &'static str, path: &Path) -> Result<String, PushSetupError> {
    let err = |reason: String| PushSetupError::Secret {
        key,
        path: path.display().to_string(),
        reason,
    };
    let bytes = read_bounded(path, MAX_SECRET_BYTES).map_err(err)?;
    let text = String::from_utf8(bytes).map_err(|_| err("it is not UTF-8 text".into()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

impl Auth {
    /// Reads the credential files `[metrics.push]` names (already resolved and checked by
    /// `Config::load`): a bearer token, or a user name and password for basic auth.
    pub fn from_config(cfg: &PushConfig) -> Result<Auth, PushSetupError> {
        let value = if let Some(f) = &cfg.bearer_token_file {
            let key = "bearer_token_file";
            let token = read_secret(key, f.get_ref())?;
            Some((
                key,
                f.get_ref().as_path(),
                format!("Bearer {}", token.trim()),
            ))
        } else if let Some(user) = &cfg.username {
            let key = "password_file";
            let (password, path) = match &cfg.password_file {
                Some(f) => (read_secret(key, f.get_ref())?, f.get_ref().as_path()),
                None => (String::new(), Path::new("")),
            };
            let creds =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            Some((key, path, format!("Basic {creds}")))
        } else {
            None
        };
        match value {
            None => Ok(Auth(None)),
            Some((key, path, v)) => {
                let mut h = HeaderValue::from_str(&v).map_err(|_| PushSetupError::Secret {
                    key,
                    path: path.display().to_string(),
                    reason: "it holds characters an HTTP header cannot carry (control \
                             characters or non-ASCII)"
                        .into(),
                })?;
                h.set_sensitive(true);
                Ok(Auth(Some(h)))
            }
        }
    }
}

/// Everything the push loop needs.
#[derive(Clone)]
pub struct PushSettings {
    pub url: Endpoint,
    pub interval: Duration,
    pub device: String,
    pub auth: Auth,
}

fn headers(auth: &Auth) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONTENT_ENCODING,
        HeaderValue::from_static("snappy"),
    );
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    h.insert(
        "x-prometheus-remote-write-version",
        HeaderValue::from_static("0.1.0"),
    );
    if let Some(v) = &auth.0 {
        h.insert(http::header::AUTHORIZATION, v.clone());
    }
    h
}

fn now_unix() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Samples the registry into a batch.
pub fn snapshot(metrics: &Metrics, device: &str, now: Instant) -> Result<Batch, snap::Error> {
    let ts = i64::try_from(now_unix().as_millis()).unwrap_or(i64::MAX);
    let req = write_request(&metrics.encode_prometheus(), device, ts);
    let series = req.timeseries.len();
    Ok(Batch {
        created: now,
        body: encode(&req)?.into(),
        series,
    })
}

/// Counters of the push, resolved once.
struct Counters {
    ok: prometheus_client::metrics::counter::Counter,
    retry: prometheus_client::metrics::counter::Counter,
    rejected: prometheus_client::metrics::counter::Counter,
    error: prometheus_client::metrics::counter::Counter,
    dropped_rejected: prometheus_client::metrics::counter::Counter,
    dropped_too_old: prometheus_client::metrics::counter::Counter,
    dropped_full: prometheus_client::metrics::counter::Counter,
}

impl Counters {
    fn new(m: &Metrics) -> Self {
        let req = |result| {
            m.push_requests
                .get_or_create(&PushLabels { result })
                .clone()
        };
        let drop = |reason| {
            m.push_dropped
                .get_or_create(&PushDropLabels { reason })
                .clone()
        };
        Counters {
            ok: req("ok"),
            retry: req("retry"),
            rejected: req("rejected"),
            error: req("error"),
            dropped_rejected: drop("rejected"),
            dropped_too_old: drop("too_old"),
            dropped_full: drop("queue_full"),
        }
    }

    fn dropped(&self, d: Dropped) {
        self.dropped_rejected.inc_by(d.rejected);
        self.dropped_too_old.inc_by(d.too_old);
        self.dropped_full.inc_by(d.queue_full);
    }
}

/// Pushes the registry every interval, forever. Beats `heartbeat` every time round.
pub async fn run(
    settings: PushSettings,
    metrics: Arc<Metrics>,
    rest: RestClient,
    heartbeat: Heartbeat,
) -> Infallible {
    let c = Counters::new(&metrics);
    let headers = headers(&settings.auth);
    let mut queue = PushQueue::default();
    let mut next_snapshot = Instant::now();
    // Logged once per failure streak; the recovery is logged too.
    let mut failing = false;
    loop {
        heartbeat.beat();
        let now = Instant::now();
        if now >= next_snapshot {
            match snapshot(&metrics, &settings.device, now) {
                Ok(batch) => c.dropped(queue.push(batch)),
                Err(err) => tracing::error!(%err, "metrics could not be compressed (a bug)"),
            }
            next_snapshot = next_snapshot
                .checked_add(settings.interval)
                .filter(|t| *t > now)
                .unwrap_or_else(|| crate::time::after(now, settings.interval));
        }
        c.dropped(queue.expire(now));
        while let Some(batch) = queue.due(Instant::now()) {
            let body = batch.body.clone();
            let series = batch.series;
            let result = rest.post(&settings.url, "", &headers, body).await;
            heartbeat.beat();
            let outcome = match &result {
                Ok(r) => {
                    let o = Outcome::of_status(r.status, r.retry_after);
                    match o {
                        Outcome::Accepted => c.ok.inc(),
                        Outcome::Retry { .. } => c.retry.inc(),
                        Outcome::Rejected { .. } => c.rejected.inc(),
                    };
                    o
                }
                Err(_) => {
                    c.error.inc();
                    Outcome::Retry { after: None }
                }
            };
            let now = Instant::now();
            c.dropped(queue.outcome(outcome, now));
            match (&outcome, &result) {
                (Outcome::Accepted, _) => {
                    metrics.push_last_success.set(now_unix().as_secs_f64());
                    if failing {
                        tracing::info!(url = %settings.url, series, "remote write works again");
                        failing = false;
                    }
                }
                (Outcome::Rejected { status }, Ok(r)) => {
                    // Each rejection loses data: every one is logged.
                    let body = String::from_utf8_lossy(&r.body[..r.body.len().min(200)]);
                    tracing::warn!(url = %settings.url, status, %body, series, "the receiver rejected a remote-write batch; dropped");
                }
                (Outcome::Retry { .. }, _) if !failing => {
                    failing = true;
                    let why = match &result {
                        Ok(r) => format!("HTTP {}", r.status),
                        Err(e) => e.to_string(),
                    };
                    tracing::warn!(url = %settings.url, %why, retry_in = ?queue.retry_at().map(|t| t.saturating_duration_since(now)), "remote write failed; retrying with backoff");
                }
                _ => {}
            }
            if matches!(outcome, Outcome::Retry { .. }) {
                break;
            }
        }
        metrics.push_queue.set(queue.len() as i64);
        let wake = queue
            .retry_at()
            .filter(|_| !queue.is_empty())
            .map_or(next_snapshot, |t| t.min(next_snapshot));
        Timer::at(wake).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_config(extra: &str, dir: &std::path::Path) -> PushConfig {
        let text = format!("[metrics.push]\nurl = \"https://prom.example/api/v1/write\"\n{extra}");
        let cfg = crate::config::Config::parse(&text, "t.toml").expect("a push config");
        let mut p = cfg.metrics.push.expect("a push table");
        for f in [&mut p.bearer_token_file, &mut p.password_file]
            .into_iter()
            .flatten()
        {
            *f = toml::Spanned::new(f.span(), dir.join(f.get_ref()));
        }
        p
    }

    #[test]
    fn credentials_become_one_authorization_header_that_is_never_printed() {
        let dir = std::env::temp_dir().join(format!("marketbox-push-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp folder");
        std::fs::write(dir.join("token"), "abc.def\n").expect("write");
        std::fs::write(dir.join("password"), "pa:ss\r\n").expect("write");
        std::fs::write(dir.join("bad"), "abc\u{7}def\n").expect("write");
        // TC0: no credentials: no header.
        assert!(
            Auth::from_config(&push_config("", &dir))
                .expect("ok")
                .0
                .is_none()
        );
        // TC1: a bearer token, its trailing newline trimmed.
        let a =
            Auth::from_config(&push_config("bearer_token_file = \"token\"\n", &dir)).expect("ok");
        assert_eq!(
            a.0.as_ref().map(|h| h.as_bytes()),
            Some(&b"Bearer abc.def"[..])
        );
        assert!(a.0.as_ref().is_some_and(|h| h.is_sensitive()));
        assert_eq!(format!("{a:?}"), "Auth(<redacted>)");
        // TC2: basic auth: base64 of user:password.
        let a = Auth::from_config(&push_config(
            "username = \"box\"\npassword_file = \"password\"\n",
            &dir,
        ))
        .expect("ok");
        assert_eq!(
            a.0.as_ref().map(|h| h.as_bytes()),
            Some(&b"Basic Ym94OnBhOnNz"[..])
        );
        // TC3: a control character cannot become a header: a clear error naming the key,
        // without the secret.
        let err = Auth::from_config(&push_config("bearer_token_file = \"bad\"\n", &dir))
            .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("bearer_token_file") && !text.contains("abc"),
            "{text}"
        );
        // TC4: a missing file.
        let err = Auth::from_config(&push_config("bearer_token_file = \"none\"\n", &dir))
            .expect_err("refused");
        assert!(err.to_string().contains("cannot open"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sample_lines_parse_with_escapes_and_bad_lines_are_skipped() {
        // TC0: labels with every escape the format has.
        let s = parse_sample(r#"marketbox_x_total{a="b",c="q\"uote\\back\nline"} 42"#)
            .expect("a sample");
        assert_eq!(s.name, "marketbox_x_total");
        assert_eq!(
            s.labels,
            vec![
                ("a".into(), "b".into()),
                ("c".into(), "q\"uote\\back\nline".into())
            ]
        );
        assert_eq!(s.value, 42.0);
        // TC1: no labels, a float, infinities.
        assert_eq!(parse_sample("up 0.5").map(|s| s.value), Some(0.5));
        let inf = parse_sample(r#"h_bucket{le="+Inf"} +Inf"#).expect("a sample");
        assert_eq!(inf.labels[0].1, "+Inf");
        assert!(inf.value.is_infinite());
        // TC2: comments, blank, and broken lines: skipped, never a panic.
        for bad in [
            "# HELP x y",
            "",
            "x{a=\"b\" 1",
            "x{a=b} 1",
            "x{=\"b\"} 1",
            "x{a=\"b\\",
            "x",
            "x notanumber",
            "{a=\"b\"} 1",
            "bad-name 1",
        ] {
            assert_eq!(parse_sample(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn write_requests_label_every_series_with_the_device_sorted() {
        let text = "# TYPE a gauge\na{z=\"1\",b=\"2\"} 3\nc_total 4\n";
        let req = write_request(text, "box-01", 1_700_000_000_000);
        assert_eq!(req.timeseries.len(), 2);
        let names: Vec<&str> = req.timeseries[0]
            .labels
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(names, ["__name__", "b", "device", "z"]);
        assert_eq!(req.timeseries[1].labels[1].value, "box-01");
        assert_eq!(req.timeseries[1].samples[0].timestamp, 1_700_000_000_000);
        // A series' own `device` label cannot override the box's.
        let req = write_request("a{device=\"evil\"} 1\n", "box-01", 0);
        assert_eq!(req.timeseries[0].labels.len(), 2);
        assert_eq!(req.timeseries[0].labels[1].value, "box-01");
        // Snappy block format round-trips to the same protobuf.
        let body = encode(&req).expect("compressible");
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&body)
            .expect("valid snappy");
        let back = <WriteRequest as prost::Message>::decode(raw.as_slice()).expect("valid proto");
        assert_eq!(back, req);
    }

    #[test]
    fn outcomes_classify_statuses() {
        // TC0..TC3: 2xx accepted, 429/5xx retried, other 4xx and odd statuses rejected.
        assert_eq!(Outcome::of_status(204, None), Outcome::Accepted);
        let ra = Some(Duration::from_secs(3));
        assert_eq!(Outcome::of_status(429, ra), Outcome::Retry { after: ra });
        assert_eq!(
            Outcome::of_status(503, None),
            Outcome::Retry { after: None }
        );
        assert_eq!(
            Outcome::of_status(400, None),
            Outcome::Rejected { status: 400 }
        );
        assert_eq!(
            Outcome::of_status(302, None),
            Outcome::Rejected { status: 302 }
        );
    }

    #[test]
    fn backoff_doubles_to_its_cap_without_overflow() {
        assert_eq!(backoff(0), BACKOFF_MIN);
        assert_eq!(backoff(1), BACKOFF_MIN);
        assert_eq!(backoff(2), BACKOFF_MIN * 2);
        assert_eq!(backoff(7), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    fn batch(created: Instant, bytes: usize) -> Batch {
        Batch {
            created,
            body: Bytes::from(vec![0u8; bytes]),
            series: 1,
        }
    }

    #[test]
    fn the_queue_retries_in_order_drops_rejections_and_caps_age_and_size() {
        let t0 = Instant::now();
        let mut q = PushQueue::default();
        // TC0: a batch is due at once.
        q.push(batch(t0, 10));
        assert!(q.due(t0).is_some());
        // TC1: 503: it stays first and is not due before the backoff.
        assert_eq!(
            q.outcome(Outcome::Retry { after: None }, t0),
            Dropped::default()
        );
        assert_eq!(q.len(), 1);
        assert!(q.due(t0 + Duration::from_millis(499)).is_none());
        assert!(q.due(t0 + BACKOFF_MIN).is_some());
        // TC2: 429 with Retry-After 5 s: waits 5 s (more than the backoff).
        q.outcome(
            Outcome::Retry {
                after: Some(Duration::from_secs(5)),
            },
            t0,
        );
        assert!(q.due(t0 + Duration::from_secs(4)).is_none());
        assert!(q.due(t0 + Duration::from_secs(5)).is_some());
        // TC3: a Retry-After of a day is capped.
        q.outcome(
            Outcome::Retry {
                after: Some(Duration::from_secs(86_400)),
            },
            t0,
        );
        assert!(q.due(t0 + MAX_RETRY_AFTER).is_some());
        // TC4: a newer batch waits behind the older one; success sends the older first.
        q.push(batch(t0 + Duration::from_secs(1), 10));
        assert_eq!(q.due(t0 + MAX_RETRY_AFTER).map(|b| b.created), Some(t0));
        q.outcome(Outcome::Accepted, t0 + MAX_RETRY_AFTER);
        assert_eq!(q.failures(), 0);
        assert_eq!(
            q.due(t0 + MAX_RETRY_AFTER).map(|b| b.created),
            Some(t0 + Duration::from_secs(1))
        );
        // TC5: a 400 drops the batch and does not back off.
        let d = q.outcome(Outcome::Rejected { status: 400 }, t0);
        assert_eq!(d.rejected, 1);
        assert!(q.is_empty() && q.retry_at().is_none());
        // TC6: retried past MAX_AGE: dropped as too old.
        q.push(batch(t0, 10));
        q.outcome(Outcome::Retry { after: None }, t0);
        assert_eq!(q.expire(t0 + MAX_AGE).too_old, 0);
        assert_eq!(q.expire(t0 + MAX_AGE + Duration::from_millis(1)).too_old, 1);
        // TC7: past MAX_BATCHES or MAX_QUEUE_BYTES the oldest make room.
        let mut q = PushQueue::default();
        let full: u64 = (0..MAX_BATCHES + 3)
            .map(|_| q.push(batch(t0, 1)).queue_full)
            .sum();
        assert_eq!((full, q.len()), (3, MAX_BATCHES));
        let mut q = PushQueue::default();
        q.push(batch(t0, MAX_QUEUE_BYTES));
        assert_eq!(q.push(batch(t0, 1)).queue_full, 1);
        assert_eq!(q.len(), 1);
        // TC8: one batch larger than the cap is still kept (it is the newest).
        assert_eq!(q.push(batch(t0, MAX_QUEUE_BYTES + 1)).queue_full, 1);
        assert_eq!(q.len(), 1);
    }
}
