//! Typed configuration (TOML), validated on load.
//!
//! Design: config is plain data. Every value that can be wrong is a type whose `Deserialize`
//! checks it (`Int<MIN, MAX>`, `Dur<MIN, MAX>`, `Endpoint` per scheme, `Symbol`), so `toml`
//! reports the span of the bad value; cross-field rules (a channel a market does not have, a
//! feed listed twice, `backoff_min` above `backoff_max`, an upstream URL that does not fit
//! its kind) are checked after parsing against the spans kept by `toml::Spanned`. Files the
//! config names (`[tls] extra_ca`, credential files) are read and checked by [`Config::load`],
//! bounded in size, so `check-config` finds what `run` would trip over. Every error names the
//! file, the line and the reason. Unknown keys are errors (`deny_unknown_fields`) so a typo
//! never silently falls back to a default.
//!
//! Every number has bounds: a value that would pass here and then overflow a timer, allocate
//! the whole machine or turn a backoff into a storm is refused with its line.
//!
//! Owns: the config schema, its defaults and bounds. Must not touch: sockets, or what a venue
//! calls its streams (the socket plan is computed by `plan` from venue code).

use std::collections::BTreeSet;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::Spanned;

use crate::model::{Channel, Exchange, MAX_DEPTH, Market, Symbol};

/// A config that failed to load: where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {reason}")]
    Invalid {
        path: String,
        line: usize,
        column: usize,
        reason: String,
    },
}

/// Largest config file read (a config is a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest file of trust roots read for `[tls] extra_ca`.
pub const MAX_CA_BYTES: u64 = 1 << 20;
/// Largest credential file read (tokens, passwords, NATS creds).
pub const MAX_SECRET_BYTES: u64 = 64 << 10;
/// Most symbols in one `[[feeds]]` entry, and most streams a box plans in all: each stream
/// costs a book or a queue slot, so the config bounds them before anything is allocated.
pub const MAX_SYMBOLS_PER_FEED: usize = 200;
pub const MAX_STREAMS: usize = 2000;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub device: DeviceConfig,
    #[serde(default)]
    pub budget: BudgetConfig,
    #[serde(default)]
    pub book: BookConfig,
    #[serde(default)]
    pub session: SessionConfig,
    #[serde(default)]
    pub rest: RestConfig,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub spool: SpoolConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub console: ConsoleConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub venues: Venues,
    #[serde(default)]
    pub feeds: Vec<Spanned<Feed>>,
}

/// `[device]`: who this box is (labels pushed metrics, names the MQTT client).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    #[serde(default = "default_device_id")]
    pub id: DeviceId,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            id: default_device_id(),
        }
    }
}

/// A device id: 1 to 64 of `A-Z a-z 0-9 . _ -`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceId(String);

impl DeviceId {
    pub fn parse(s: &str) -> Result<DeviceId, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(DeviceId(s.to_owned()))
        } else {
            Err(format!(
                "device id {s:?} must be 1 to 64 letters, digits, '.', '_' or '-'"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DeviceId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The host name (what `[device] id` defaults to), made a valid id; `marketbox` when unknown.
fn default_device_id() -> DeviceId {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let cleaned: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    DeviceId::parse(&cleaned).unwrap_or_else(|_| DeviceId("marketbox".to_owned()))
}

/// `[budget]`: the hard cap on outgoing sockets.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Every outgoing socket counts: WebSockets, REST keep-alives, the upstream, the push.
    #[serde(default = "default_max_connections")]
    pub max_connections: Int<1, 256>,
}

fn default_max_connections() -> Int<1, 256> {
    Int(10)
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            max_connections: default_max_connections(),
        }
    }
}

/// `[book]`: what an `orderbook` message carries.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BookConfig {
    /// Levels per side in every `orderbook` message.
    #[serde(default)]
    pub depth: Depth,
}

/// One millisecond, one second, … in milliseconds, for duration bounds.
pub const MS: u64 = 1;
pub const SEC: u64 = 1000;
pub const MIN: u64 = 60 * SEC;
pub const HOUR: u64 = 60 * MIN;
pub const DAY: u64 = 24 * HOUR;

/// `[session]`: WebSocket lifecycle timings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    #[serde(default = "d_connect_timeout")]
    pub connect_timeout: Dur<{ 100 * MS }, { 5 * MIN }>,
    /// A subscribed stream silent this long while the socket lives is stale: resubscribed.
    #[serde(default = "d_stale_after")]
    pub stale_after: Dur<{ SEC }, { HOUR }>,
    /// No frame from the venue for this long: the socket is dead and is replaced. After half
    /// of it in silence the socket is probed (a WebSocket ping, or the venue's text ping), so
    /// a live but quiet socket answers in time. A send that cannot complete within it (the
    /// peer stopped reading) also ends the socket.
    #[serde(default = "d_idle_timeout")]
    pub idle_timeout: Dur<{ 100 * MS }, { HOUR }>,
    /// Rotate a connection before the venue's 24 h limit.
    #[serde(default = "d_max_lifetime")]
    pub max_lifetime: Dur<{ SEC }, { DAY }>,
    #[serde(default = "d_backoff_min")]
    pub backoff_min: Spanned<Dur<{ 10 * MS }, { 10 * MIN }>>,
    #[serde(default = "d_backoff_max")]
    pub backoff_max: Spanned<Dur<{ 10 * MS }, { HOUR }>>,
    /// A connection that lived this long resets the backoff; a venue's request to rotate
    /// (Binance `serverShutdown`, OKX notice 64008) sooner than this after connecting is
    /// obeyed only once this much time has passed.
    #[serde(default = "d_stable_after")]
    pub stable_after: Dur<{ 100 * MS }, { DAY }>,
}

fn d_connect_timeout() -> Dur<{ 100 * MS }, { 5 * MIN }> {
    Dur(Duration::from_secs(10))
}
fn d_stale_after() -> Dur<{ SEC }, { HOUR }> {
    Dur(Duration::from_secs(30))
}
fn d_idle_timeout() -> Dur<{ 100 * MS }, { HOUR }> {
    Dur(Duration::from_secs(10))
}
fn d_max_lifetime() -> Dur<{ SEC }, { DAY }> {
    Dur(Duration::from_secs(23 * 3600 + 30 * 60))
}
fn d_backoff_min() -> Spanned<Dur<{ 10 * MS }, { 10 * MIN }>> {
    Spanned::new(0..0, Dur(Duration::from_millis(500)))
}
fn d_backoff_max() -> Spanned<Dur<{ 10 * MS }, { HOUR }>> {
    Spanned::new(0..0, Dur(Duration::from_secs(30)))
}
fn d_stable_after() -> Dur<{ 100 * MS }, { DAY }> {
    Dur(Duration::from_secs(60))
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            connect_timeout: d_connect_timeout(),
            stale_after: d_stale_after(),
            idle_timeout: d_idle_timeout(),
            max_lifetime: d_max_lifetime(),
            backoff_min: d_backoff_min(),
            backoff_max: d_backoff_max(),
            stable_after: d_stable_after(),
        }
    }
}

impl SessionConfig {
    pub fn backoff_min(&self) -> Duration {
        self.backoff_min.get_ref().0
    }

    pub fn backoff_max(&self) -> Duration {
        self.backoff_max.get_ref().0
    }
}

/// `[rest]`: the REST client.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RestConfig {
    /// A keep-alive connection unused this long is closed (and its permit returned).
    #[serde(default = "d_rest_idle")]
    pub idle_timeout: Dur<{ 100 * MS }, { HOUR }>,
    #[serde(default = "d_rest_timeout")]
    pub request_timeout: Dur<{ 100 * MS }, { 5 * MIN }>,
    /// Largest response body accepted.
    #[serde(default = "d_rest_max_body")]
    pub max_body_bytes: Int<1024, { 64 << 20 }>,
}

fn d_rest_idle() -> Dur<{ 100 * MS }, { HOUR }> {
    Dur(Duration::from_secs(30))
}
fn d_rest_timeout() -> Dur<{ 100 * MS }, { 5 * MIN }> {
    Dur(Duration::from_secs(10))
}
fn d_rest_max_body() -> Int<1024, { 64 << 20 }> {
    Int(4 << 20)
}

impl Default for RestConfig {
    fn default() -> Self {
        RestConfig {
            idle_timeout: d_rest_idle(),
            request_timeout: d_rest_timeout(),
            max_body_bytes: d_rest_max_body(),
        }
    }
}

/// Where normalized messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    #[default]
    Stdout,
    Nats,
    Mqtt,
}

impl UpstreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamKind::Stdout => "stdout",
            UpstreamKind::Nats => "nats",
            UpstreamKind::Mqtt => "mqtt",
        }
    }
}

/// How messages are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Postcard,
}

/// `[upstream]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(default = "d_kind")]
    pub kind: Spanned<UpstreamKind>,
    /// `nats://` or `tls://` for NATS, `mqtt://` or `mqtts://` for MQTT; required for both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<Spanned<UpstreamUrl>>,
    #[serde(default)]
    pub format: Format,
    /// Prepended to every subject (`prefix.trade.binance.spot.BTC-USDT`) or topic
    /// (`prefix/trade/binance/spot/BTC-USDT`); empty for none.
    #[serde(default)]
    pub subject_prefix: SubjectPrefix,
    #[serde(default)]
    pub nats: NatsConfig,
    #[serde(default)]
    pub mqtt: MqttConfig,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            kind: Spanned::new(0..0, UpstreamKind::Stdout),
            url: None,
            format: Format::Json,
            subject_prefix: SubjectPrefix::default(),
            nats: NatsConfig::default(),
            mqtt: MqttConfig::default(),
        }
    }
}

impl UpstreamConfig {
    pub fn kind(&self) -> UpstreamKind {
        *self.kind.get_ref()
    }
}

fn d_kind() -> Spanned<UpstreamKind> {
    Spanned::new(0..0, UpstreamKind::Stdout)
}

/// An upstream URL: scheme, host and port (the port defaults to the scheme's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    url: String,
    scheme: &'static str,
    host: String,
    port: u16,
}

impl UpstreamUrl {
    pub fn parse(s: &str) -> Result<UpstreamUrl, String> {
        let uri: http::Uri = s
            .parse()
            .map_err(|e| format!("{s:?} is not a URL like \"nats://host:4222\": {e}"))?;
        let scheme = match uri.scheme_str() {
            Some("nats") => "nats",
            Some("tls") => "tls",
            Some("mqtt") => "mqtt",
            Some("mqtts") => "mqtts",
            _ => {
                return Err(format!(
                    "{s:?}: the scheme must be nats://, tls:// (NATS) or mqtt://, mqtts:// (MQTT)"
                ));
            }
        };
        let auth = uri
            .authority()
            .ok_or_else(|| format!("{s:?} has no host"))?;
        if auth.as_str().contains('@') {
            return Err(format!(
                "{s:?}: credentials do not belong in the URL; use the key's user/password_file or token_file"
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!("{s:?}: an upstream URL has no path or query"));
        }
        let (host, port) = crate::net::tls::split_authority(auth.as_str()).ok_or_else(|| {
            format!("{s:?}: expected a host and an optional port from 1 to 65535")
        })?;
        let port = port.unwrap_or(match scheme {
            "nats" | "tls" => 4222,
            "mqtt" => 1883,
            _ => 8883,
        });
        Ok(UpstreamUrl {
            url: s.to_owned(),
            scheme,
            host: host.to_owned(),
            port,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.url
    }

    pub fn scheme(&self) -> &str {
        self.scheme
    }

    /// Whether the scheme asks for TLS (`tls://`, `mqtts://`).
    pub fn is_tls(&self) -> bool {
        matches!(self.scheme, "tls" | "mqtts")
    }

    /// The host, without IPv6 brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn fits(&self, kind: UpstreamKind) -> bool {
        match kind {
            UpstreamKind::Stdout => true,
            UpstreamKind::Nats => matches!(self.scheme, "nats" | "tls"),
            UpstreamKind::Mqtt => matches!(self.scheme, "mqtt" | "mqtts"),
        }
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl<'de> Deserialize<'de> for UpstreamUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        UpstreamUrl::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A subject prefix: empty, or dot-separated tokens of `A-Z a-z 0-9 _ -` (valid both as NATS
/// subject tokens and MQTT topic levels: no wildcards, no blanks).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubjectPrefix(String);

impl SubjectPrefix {
    pub fn parse(s: &str) -> Result<SubjectPrefix, String> {
        if s.is_empty() {
            return Ok(SubjectPrefix(String::new()));
        }
        let token_ok = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        };
        if s.len() > 128 || !s.split('.').all(token_ok) {
            return Err(format!(
                "subject_prefix {s:?} must be dot-separated words of letters, digits, '_' or '-' \
                 (no wildcards, blanks or empty words), at most 128 characters"
            ));
        }
        Ok(SubjectPrefix(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for SubjectPrefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SubjectPrefix::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `[upstream.nats]`: the JetStream stream and how to authenticate.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// The JetStream stream (created when missing, checked when present).
    #[serde(default = "d_nats_stream")]
    pub stream: StreamName,
    /// JetStream's duplicate window: a re-sent message id inside it is dropped.
    #[serde(default = "d_duplicate_window")]
    pub duplicate_window: Dur<{ SEC }, { 7 * DAY }>,
    /// Age after which the stream discards messages (none: kept until `max_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Dur<{ SEC }, { 3650 * DAY }>>,
    /// Size the stream is capped at (none: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<Int<{ 1 << 20 }, { 1 << 50 }>>,
    /// A file holding the auth token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<Spanned<PathBuf>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A file holding `user`'s password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<Spanned<PathBuf>>,
    /// A NATS credentials file (JWT and NKey seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creds_file: Option<Spanned<PathBuf>>,
    /// A PEM file of trust roots for `tls://`, added to the webpki roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<Spanned<PathBuf>>,
}

fn d_nats_stream() -> StreamName {
    StreamName("MARKETBOX".to_owned())
}
fn d_duplicate_window() -> Dur<{ SEC }, { 7 * DAY }> {
    Dur(Duration::from_secs(120))
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            stream: d_nats_stream(),
            duplicate_window: d_duplicate_window(),
            max_age: None,
            max_bytes: None,
            token_file: None,
            user: None,
            password_file: None,
            creds_file: None,
            ca: None,
        }
    }
}

/// A JetStream stream name: 1 to 64 of `A-Z a-z 0-9 _ -`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamName(String);

impl StreamName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for StreamName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
        if ok {
            Ok(StreamName(s))
        } else {
            Err(serde::de::Error::custom(format!(
                "stream {s:?} must be 1 to 64 letters, digits, '_' or '-'"
            )))
        }
    }
}

/// `[upstream.mqtt]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Stable across restarts so the broker keeps the session; default `marketbox-<device id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<ClientId>,
    #[serde(default = "d_qos")]
    pub qos: Int<0, 2>,
    #[serde(default = "d_keep_alive")]
    pub keep_alive: Dur<{ 5 * SEC }, { 65535 * SEC }>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<Spanned<PathBuf>>,
    /// A PEM file of trust roots for `mqtts://`, added to the webpki roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<Spanned<PathBuf>>,
}

fn d_qos() -> Int<0, 2> {
    Int(1)
}
fn d_keep_alive() -> Dur<{ 5 * SEC }, { 65535 * SEC }> {
    Dur(Duration::from_secs(30))
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            client_id: None,
            qos: d_qos(),
            keep_alive: d_keep_alive(),
            username: None,
            password_file: None,
            ca: None,
        }
    }
}

impl MqttConfig {
    /// The configured client id, or `marketbox-<device id>`.
    pub fn client_id(&self, device: &DeviceId) -> String {
        match &self.client_id {
            Some(c) => c.0.clone(),
            None => format!("marketbox-{device}"),
        }
    }
}

/// An MQTT client id: 1 to 64 of `A-Z a-z 0-9 . _ -`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientId(String);

impl<'de> Deserialize<'de> for ClientId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DeviceId::parse(&s).map(|d| ClientId(d.0)).map_err(|_| {
            serde::de::Error::custom(format!(
                "client_id {s:?} must be 1 to 64 letters, digits, '.', '_' or '-'"
            ))
        })
    }
}

/// `[spool]`: the bounded queue between sessions and the upstream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Bytes of encoded messages held in RAM; past this the oldest are dropped and counted.
    #[serde(default = "d_spool_ram")]
    pub ram_bytes: Int<1024, { 1 << 30 }>,
    /// A folder for the on-disk spool (none: RAM only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<Spanned<PathBuf>>,
    /// Bytes the on-disk spool may use.
    #[serde(default = "d_spool_disk")]
    pub disk_bytes: Int<{ 1 << 20 }, { 1 << 40 }>,
}

fn d_spool_ram() -> Int<1024, { 1 << 30 }> {
    Int(64 << 20)
}
fn d_spool_disk() -> Int<{ 1 << 20 }, { 1 << 40 }> {
    Int(1 << 30)
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            ram_bytes: d_spool_ram(),
            dir: None,
            disk_bytes: d_spool_disk(),
        }
    }
}

/// `[metrics]`: the HTTP server and the remote push.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` for `/metrics`, `/health`, `/ready`; empty turns the server off.
    #[serde(default = "d_listen")]
    pub listen: Listen,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushConfig>,
}

fn d_listen() -> Listen {
    Listen(Some(std::net::SocketAddr::from(([0, 0, 0, 0], 9898))))
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: d_listen(),
            push: None,
        }
    }
}

/// A listen address, or none (`""`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<std::net::SocketAddr>);

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Ok(Listen(None));
        }
        s.parse().map(|a| Listen(Some(a))).map_err(|_| {
            serde::de::Error::custom(format!(
                "listen {s:?} must be an IP address and port like \"0.0.0.0:9898\" or \"[::1]:9898\", or \"\" to turn the server off"
            ))
        })
    }
}

/// `[metrics.push]`: Prometheus remote-write.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// The remote-write endpoint, e.g. `https://prom.example/api/v1/write`.
    #[serde(deserialize_with = "http_url")]
    pub url: Endpoint,
    #[serde(default = "d_push_interval")]
    pub interval: Dur<{ SEC }, { HOUR }>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<Spanned<PathBuf>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<Spanned<PathBuf>>,
}

fn d_push_interval() -> Dur<{ SEC }, { HOUR }> {
    Dur(Duration::from_secs(15))
}

/// `[console]`: where the service serves its console.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    #[serde(default)]
    pub devices: Vec<ConsoleDevice>,
    #[serde(default = "d_baud")]
    pub baud: Baud,
}

fn d_baud() -> Baud {
    Baud(115_200)
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            devices: Vec::new(),
            baud: d_baud(),
        }
    }
}

/// A console device: `stdio`, a tty path (`/dev/ttyAMA0`) or `unix:/path/to.sock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleDevice {
    Stdio,
    Tty(PathBuf),
    Unix(PathBuf),
}

impl<'de> Deserialize<'de> for ConsoleDevice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "stdio" {
            return Ok(ConsoleDevice::Stdio);
        }
        if let Some(p) = s.strip_prefix("unix:")
            && p.starts_with('/')
            && p.len() < 100
        {
            return Ok(ConsoleDevice::Unix(PathBuf::from(p)));
        }
        if s.starts_with("/dev/") && s.len() > 5 && !s.contains("..") {
            return Ok(ConsoleDevice::Tty(PathBuf::from(s)));
        }
        Err(serde::de::Error::custom(format!(
            "console device {s:?} must be \"stdio\", a tty such as \"/dev/ttyAMA0\", or \
             \"unix:/absolute/path.sock\" (under 100 characters)"
        )))
    }
}

/// A serial speed the console supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Baud(pub u32);

/// The speeds termios offers that serial consoles use.
pub const BAUD_RATES: [u32; 8] = [
    9600, 19_200, 38_400, 57_600, 115_200, 230_400, 460_800, 921_600,
];

impl<'de> Deserialize<'de> for Baud {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = integer(d, format!("one of {BAUD_RATES:?}"))?;
        BAUD_RATES
            .iter()
            .find(|b| i64::from(**b) == v)
            .map(|b| Baud(*b))
            .ok_or_else(|| {
                serde::de::Error::custom(format!("baud {v} must be one of {BAUD_RATES:?}"))
            })
    }
}

/// `[tls]`.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// A PEM file of extra trust roots (added to the webpki roots, never replacing them).
    /// Relative paths are read from the config file's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_ca: Option<PathBuf>,
}

/// `[venues.*]`: endpoint overrides.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Venues {
    #[serde(default)]
    pub binance: BinanceEndpoints,
    #[serde(default)]
    pub okx: OkxEndpoints,
}

/// `[venues.binance]`: bases the stream path (`/stream?streams=`) or REST path is appended to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BinanceEndpoints {
    #[serde(default = "d_b_spot_ws", deserialize_with = "wss_url")]
    pub spot_ws: Endpoint,
    #[serde(default = "d_b_spot_rest", deserialize_with = "https_url")]
    pub spot_rest: Endpoint,
    #[serde(default = "d_b_perp_public", deserialize_with = "wss_url")]
    pub perpetual_public_ws: Endpoint,
    #[serde(default = "d_b_perp_market", deserialize_with = "wss_url")]
    pub perpetual_market_ws: Endpoint,
    #[serde(default = "d_b_perp_rest", deserialize_with = "https_url")]
    pub perpetual_rest: Endpoint,
}

fn d_b_spot_ws() -> Endpoint {
    Endpoint::known("wss://stream.binance.com:9443")
}
fn d_b_spot_rest() -> Endpoint {
    Endpoint::known("https://api.binance.com")
}
fn d_b_perp_public() -> Endpoint {
    Endpoint::known("wss://fstream.binance.com/public")
}
fn d_b_perp_market() -> Endpoint {
    Endpoint::known("wss://fstream.binance.com/market")
}
fn d_b_perp_rest() -> Endpoint {
    Endpoint::known("https://fapi.binance.com")
}

impl Default for BinanceEndpoints {
    fn default() -> Self {
        BinanceEndpoints {
            spot_ws: d_b_spot_ws(),
            spot_rest: d_b_spot_rest(),
            perpetual_public_ws: d_b_perp_public(),
            perpetual_market_ws: d_b_perp_market(),
            perpetual_rest: d_b_perp_rest(),
        }
    }
}

/// `[venues.okx]`: `ws` is the full URL, `rest` the base.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OkxEndpoints {
    #[serde(default = "d_okx_ws", deserialize_with = "wss_url")]
    pub ws: Endpoint,
    #[serde(default = "d_okx_rest", deserialize_with = "https_url")]
    pub rest: Endpoint,
}

fn d_okx_ws() -> Endpoint {
    Endpoint::known("wss://ws.okx.com:8443/ws/v5/public")
}
fn d_okx_rest() -> Endpoint {
    Endpoint::known("https://www.okx.com")
}

impl Default for OkxEndpoints {
    fn default() -> Self {
        OkxEndpoints {
            ws: d_okx_ws(),
            rest: d_okx_rest(),
        }
    }
}

/// `[[feeds]]`: what to collect from one exchange-market.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Feed {
    pub exchange: Exchange,
    pub market: Market,
    pub symbols: Vec<Symbol>,
    pub channels: Vec<Channel>,
    /// Period of the long/short ratio pollers (`5m`, `15m`, `30m`, `1h`, `2h`, `4h`, `6h`,
    /// `12h`, `1d`).
    #[serde(default)]
    pub lsr_period: LsrPeriod,
}

/// An integer in `MIN..=MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int<const MIN: u64, const MAX: u64>(pub usize);

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Int<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = integer(d, format!("an integer between {MIN} and {MAX}"))?;
        match u64::try_from(v) {
            Ok(u) if (MIN..=MAX).contains(&u) => usize::try_from(u).map(Int).map_err(|_| {
                serde::de::Error::custom(format!("{v} is too large for this machine"))
            }),
            _ => Err(serde::de::Error::custom(format!(
                "{v} is out of range: it must be between {MIN} and {MAX}"
            ))),
        }
    }
}

/// Levels per side in `orderbook` messages, 1..=[`MAX_DEPTH`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Depth(pub usize);

impl Default for Depth {
    fn default() -> Self {
        Depth(20)
    }
}

impl<'de> Deserialize<'de> for Depth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = integer(d, format!("an integer between 1 and {MAX_DEPTH}"))?;
        if v < 1 || v > MAX_DEPTH as i64 {
            return Err(serde::de::Error::custom(format!(
                "depth {v} is impossible: it must be between 1 and {MAX_DEPTH}"
            )));
        }
        Ok(Depth(v as usize))
    }
}

/// A duration written as `500ms`, `10s`, `23h 50m`, between `MIN_MS` and `MAX_MS`
/// milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur<const MIN_MS: u64, const MAX_MS: u64>(pub Duration);

impl<const MIN_MS: u64, const MAX_MS: u64> Dur<MIN_MS, MAX_MS> {
    pub const MIN: Duration = Duration::from_millis(MIN_MS);
    pub const MAX: Duration = Duration::from_millis(MAX_MS);

    /// Parses and bounds a duration.
    pub fn parse(s: &str) -> Result<Self, String> {
        let v = humantime::parse_duration(s).map_err(|e| {
            format!(
                "{s:?} is not a duration like \"10s\" or \"500ms\" ({e}); it must be between {} and {}",
                humantime::format_duration(Self::MIN),
                humantime::format_duration(Self::MAX)
            )
        })?;
        if v < Self::MIN || v > Self::MAX {
            return Err(format!(
                "{s:?} is out of range: it must be between {} and {}",
                humantime::format_duration(Self::MIN),
                humantime::format_duration(Self::MAX)
            ));
        }
        Ok(Dur(v))
    }
}

impl<'de, const MIN_MS: u64, const MAX_MS: u64> Deserialize<'de> for Dur<MIN_MS, MAX_MS> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let expecting = format!(
            "a duration with its unit, like \"10s\" or \"500ms\", between {} and {}",
            humantime::format_duration(Self::MIN),
            humantime::format_duration(Self::MAX)
        );
        let s = d.deserialize_str(Expecting::<String>::new(expecting))?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl<const MIN_MS: u64, const MAX_MS: u64> Serialize for Dur<MIN_MS, MAX_MS> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// Reads an integer; anything else is an error that says what was `expecting` (the bounds),
/// not just the type.
fn integer<'de, D: Deserializer<'de>>(d: D, expecting: String) -> Result<i64, D::Error> {
    d.deserialize_i64(Expecting::<i64>::new(expecting))
}

/// A visitor for one integer or one string whose error names the allowed values.
struct Expecting<T> {
    what: String,
    _t: std::marker::PhantomData<T>,
}

impl<T> Expecting<T> {
    fn new(what: String) -> Self {
        Expecting {
            what,
            _t: std::marker::PhantomData,
        }
    }
}

impl serde::de::Visitor<'_> for Expecting<i64> {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v)
            .map_err(|_| E::custom(format!("{v} is out of range: expected {}", self.what)))
    }
}

impl serde::de::Visitor<'_> for Expecting<String> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
}

/// Long/short ratio period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LsrPeriod(pub &'static str);

const LSR_PERIODS: [&str; 9] = ["5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d"];

impl LsrPeriod {
    pub fn as_str(self) -> &'static str {
        if self.0.is_empty() { "5m" } else { self.0 }
    }
}

impl<'de> Deserialize<'de> for LsrPeriod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        LSR_PERIODS
            .iter()
            .find(|p| **p == s)
            .map(|p| LsrPeriod(p))
            .ok_or_else(|| {
                serde::de::Error::custom(format!("lsr_period {s:?} must be one of {LSR_PERIODS:?}"))
            })
    }
}

/// A venue or push URL: `scheme://host[:port][/path]`, no credentials, query or fragment.
/// Parsed by `http::Uri`, the same parser the connectors use (`net::tls::split_url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    url: String,
    scheme_len: usize,
    authority_len: usize,
}

impl Endpoint {
    fn known(s: &str) -> Endpoint {
        match Endpoint::parse(s, &["wss", "https"]) {
            Ok(e) => e,
            Err(e) => panic!("built-in endpoint {s} is invalid: {e}"),
        }
    }

    /// Checks an endpoint URL: one of `schemes`, a host, an optional port and path.
    pub fn parse(s: &str, schemes: &[&str]) -> Result<Endpoint, String> {
        let uri: http::Uri = s
            .parse()
            .map_err(|e| format!("{s:?} is not a URL (expected scheme://host[:port]/path): {e}"))?;
        let scheme = uri.scheme_str().unwrap_or("");
        if !schemes.contains(&scheme) {
            let want = schemes
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(" or ");
            return Err(if scheme.is_empty() {
                format!("{s:?} is not a URL: it must start with {want}")
            } else {
                format!(
                    "{s:?}: the scheme must be {want} here (TLS is never turned off; a ws:// or \
                     http:// URL, or a REST URL for a WebSocket key, is refused)"
                )
            });
        }
        let auth = uri
            .authority()
            .ok_or_else(|| format!("{s:?} has no host"))?;
        if auth.as_str().contains('@') {
            return Err(format!("{s:?}: credentials in a URL are not supported"));
        }
        if crate::net::tls::split_authority(auth.as_str()).is_none() {
            return Err(format!(
                "{s:?}: expected a host and an optional port from 1 to 65535"
            ));
        }
        if uri.query().is_some() {
            return Err(format!("{s:?}: an endpoint takes no query string"));
        }
        let path = uri.path().trim_end_matches('/');
        let url = format!("{scheme}://{}{path}", auth.as_str());
        Ok(Endpoint {
            scheme_len: scheme.len(),
            authority_len: auth.as_str().len(),
            url,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.url
    }

    pub fn scheme(&self) -> &str {
        &self.url[..self.scheme_len]
    }

    /// `host[:port]` (IPv6 hosts in brackets).
    pub fn authority(&self) -> &str {
        let start = self.scheme_len + 3;
        &self.url[start..start + self.authority_len]
    }

    /// `scheme://authority`: the host a connection goes to.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme(), self.authority())
    }

    /// The path after the authority, possibly empty, without a trailing `/`.
    pub fn path(&self) -> &str {
        &self.url[self.scheme_len + 3 + self.authority_len..]
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

fn endpoint<'de, D: Deserializer<'de>>(d: D, schemes: &[&str]) -> Result<Endpoint, D::Error> {
    let s = String::deserialize(d)?;
    Endpoint::parse(&s, schemes).map_err(serde::de::Error::custom)
}

/// A WebSocket endpoint key: `wss://` only.
fn wss_url<'de, D: Deserializer<'de>>(d: D) -> Result<Endpoint, D::Error> {
    endpoint(d, &["wss"])
}

/// A REST endpoint key: `https://` only.
fn https_url<'de, D: Deserializer<'de>>(d: D) -> Result<Endpoint, D::Error> {
    endpoint(d, &["https"])
}

/// The push URL: `https://`, or `http://` for a receiver on the same trusted network.
fn http_url<'de, D: Deserializer<'de>>(d: D) -> Result<Endpoint, D::Error> {
    endpoint(d, &["https", "http"])
}

/// Config values are written back (`show config`, `get`) as the text they are read from.
macro_rules! serialize_as_str {
    ($($t:ty => |$v:ident| $e:expr;)*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let $v = self;
                s.serialize_str(&$e)
            }
        }
    )*};
}

serialize_as_str! {
    DeviceId => |v| v.0;
    UpstreamUrl => |v| v.url;
    SubjectPrefix => |v| v.0;
    StreamName => |v| v.0;
    ClientId => |v| v.0;
    Endpoint => |v| v.url;
    LsrPeriod => |v| v.as_str();
    Listen => |v| v.0.map(|a| a.to_string()).unwrap_or_default();
    ConsoleDevice => |v| match v {
        ConsoleDevice::Stdio => "stdio".to_owned(),
        ConsoleDevice::Tty(p) => p.to_string_lossy().into_owned(),
        ConsoleDevice::Unix(p) => format!("unix:{}", p.to_string_lossy()),
    };
}

impl<const MIN: u64, const MAX: u64> Serialize for Int<MIN, MAX> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0 as u64)
    }
}

impl Serialize for Depth {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0 as u64)
    }
}

impl Serialize for Baud {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

/// Which channels each market has.
pub fn market_has(market: Market, channel: Channel) -> bool {
    match market {
        Market::Spot => matches!(channel, Channel::Orderbook | Channel::Trade),
        Market::Perpetual => true,
    }
}

/// Reads at most `limit` bytes of a regular file; anything else (a folder, a device, a larger
/// file) is an error saying so.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read its metadata: {e}"))?;
    if !meta.is_file() {
        return Err("it is not a regular file".to_owned());
    }
    if meta.len() > limit {
        return Err(format!(
            "it holds {} bytes, more than the {limit} allowed",
            meta.len()
        ));
    }
    let mut out = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if out.len() as u64 > limit {
        return Err(format!("it holds more than the {limit} bytes allowed"));
    }
    Ok(out)
}

impl Config {
    /// Reads and validates a config file, and the files it names (bounded reads).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = Config::read_text(path)?;
        Config::from_text(&text, path)
    }

    /// Reads a config file's text (at most [`MAX_CONFIG_BYTES`], UTF-8).
    pub fn read_text(path: &Path) -> Result<String, ConfigError> {
        let origin = path.display().to_string();
        let bytes = read_bounded(path, MAX_CONFIG_BYTES).map_err(|reason| ConfigError::Read {
            path: origin.clone(),
            source: std::io::Error::other(reason),
        })?;
        String::from_utf8(bytes).map_err(|e| ConfigError::Read {
            path: origin.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    /// Validates config text as if it were the file at `path` (what [`Config::load`] does
    /// after reading it): the text, then the files it names, relative to `path`'s folder.
    /// The console's `apply` checks a pending config with this before anything changes.
    pub fn from_text(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let mut cfg = Config::parse(text, &origin)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_files(dir, text, &origin)?;
        Ok(cfg)
    }

    /// The config as a TOML tree, every key present with its effective value (defaults
    /// included; paths as resolved). What `show config` and `get` read.
    pub fn to_toml(&self) -> toml::Table {
        match toml::Table::try_from(self) {
            Ok(t) => t,
            Err(err) => {
                // Every value is a string, integer, array or table: cannot happen.
                tracing::error!(%err, "the config could not be written as TOML (a bug)");
                toml::Table::new()
            }
        }
    }

    /// Makes relative file paths relative to the config's folder and checks every file the
    /// config names: trust roots parse, credential files are readable and small.
    fn resolve_files(&mut self, dir: &Path, text: &str, origin: &str) -> Result<(), ConfigError> {
        let at = |span: std::ops::Range<usize>, reason: String| {
            let (line, column) = line_col(text, span.start);
            ConfigError::Invalid {
                path: origin.to_owned(),
                line,
                column,
                reason,
            }
        };
        let beside = |p: &Path| {
            if p.is_relative() {
                dir.join(p)
            } else {
                p.to_owned()
            }
        };
        if let Some(ca) = &self.tls.extra_ca {
            let full = beside(ca);
            crate::net::tls::read_extra_ca(&full)
                .map_err(|e| at(span_of_key(text, "extra_ca"), e.to_string()))?;
            self.tls.extra_ca = Some(full);
        }
        let mut secrets: Vec<(&'static str, &mut Spanned<PathBuf>, bool)> = Vec::new();
        let n = &mut self.upstream.nats;
        for (key, f, pem) in [
            ("[upstream.nats] token_file", &mut n.token_file, false),
            ("[upstream.nats] password_file", &mut n.password_file, false),
            ("[upstream.nats] creds_file", &mut n.creds_file, false),
            ("[upstream.nats] ca", &mut n.ca, true),
        ] {
            if let Some(f) = f.as_mut() {
                secrets.push((key, f, pem));
            }
        }
        let m = &mut self.upstream.mqtt;
        for (key, f, pem) in [
            ("[upstream.mqtt] password_file", &mut m.password_file, false),
            ("[upstream.mqtt] ca", &mut m.ca, true),
        ] {
            if let Some(f) = f.as_mut() {
                secrets.push((key, f, pem));
            }
        }
        if let Some(p) = self.metrics.push.as_mut() {
            for (key, f) in [
                ("[metrics.push] bearer_token_file", &mut p.bearer_token_file),
                ("[metrics.push] password_file", &mut p.password_file),
            ] {
                if let Some(f) = f.as_mut() {
                    secrets.push((key, f, false));
                }
            }
        }
        for (key, f, pem) in secrets {
            let full = beside(f.get_ref());
            let span = f.span();
            let checked = if pem {
                crate::net::tls::read_extra_ca(&full)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            } else {
                read_bounded(&full, MAX_SECRET_BYTES)
                    .map(|_| ())
                    .map_err(|e| format!("{key} {}: {e}", full.display()))
            };
            checked.map_err(|reason| at(span.clone(), reason))?;
            *f = Spanned::new(span, full);
        }
        if let Some(d) = &mut self.spool.dir {
            let full = beside(d.get_ref());
            *d = Spanned::new(d.span(), full);
        }
        Ok(())
    }

    /// Reads config text checking each value on its own (types, bounds, unknown keys), without
    /// the rules between keys that [`Config::parse`] adds. The console's `set` uses it to
    /// refuse a bad value at once while a change that needs a second `set` can be staged.
    pub fn parse_values(text: &str, origin: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            let (line, column) = line_col(text, offset);
            ConfigError::Invalid {
                path: origin.to_owned(),
                line,
                column,
                reason: e.message().trim().to_owned(),
            }
        })
    }

    /// Parses and validates config text; `origin` names the file in errors. Files the config
    /// names are checked by [`Config::load`].
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let at = |offset: usize, reason: String| {
            let (line, column) = line_col(text, offset);
            ConfigError::Invalid {
                path: origin.to_owned(),
                line,
                column,
                reason,
            }
        };
        let cfg = Config::parse_values(text, origin)?;
        let mut seen = BTreeSet::new();
        let mut streams = 0usize;
        for feed in &cfg.feeds {
            let offset = feed.span().start;
            let f = feed.get_ref();
            if !seen.insert((f.exchange, f.market)) {
                return Err(at(
                    offset,
                    format!(
                        "{} {} is listed twice; put every symbol and channel of one exchange-market in one [[feeds]] entry",
                        f.exchange, f.market
                    ),
                ));
            }
            if f.symbols.is_empty() || f.channels.is_empty() {
                return Err(at(
                    offset,
                    format!(
                        "{} {}: symbols and channels must not be empty",
                        f.exchange, f.market
                    ),
                ));
            }
            if f.symbols.len() > MAX_SYMBOLS_PER_FEED {
                return Err(at(
                    offset,
                    format!(
                        "{} {} lists {} symbols; at most {MAX_SYMBOLS_PER_FEED} per exchange-market are supported (each holds a book and queues)",
                        f.exchange,
                        f.market,
                        f.symbols.len()
                    ),
                ));
            }
            for c in &f.channels {
                if !market_has(f.market, *c) {
                    return Err(at(
                        offset,
                        format!(
                            "{} {} has no channel {c}: spot markets carry only orderbook and trade",
                            f.exchange, f.market
                        ),
                    ));
                }
            }
            let mut syms = BTreeSet::new();
            if let Some(s) = f.symbols.iter().find(|s| !syms.insert(**s)) {
                return Err(at(offset, format!("symbol {s} is listed twice")));
            }
            let mut chans = BTreeSet::new();
            if let Some(c) = f.channels.iter().find(|c| !chans.insert(**c)) {
                return Err(at(offset, format!("channel {c} is listed twice")));
            }
            streams += f.symbols.len() * f.channels.len();
            if streams > MAX_STREAMS {
                return Err(at(
                    offset,
                    format!(
                        "the feeds ask for more than {MAX_STREAMS} streams in all (symbols × channels); collect fewer"
                    ),
                ));
            }
        }
        let s = &cfg.session;
        if s.backoff_min() > s.backoff_max() {
            let span = if s.backoff_min.span().is_empty() {
                s.backoff_max.span()
            } else {
                s.backoff_min.span()
            };
            return Err(at(
                span.start,
                format!(
                    "[session] backoff_min ({}) is longer than backoff_max ({})",
                    humantime::format_duration(s.backoff_min()),
                    humantime::format_duration(s.backoff_max())
                ),
            ));
        }
        cfg.check_upstream(text, &at)?;
        let devices = &cfg.console.devices;
        if let Some(d) = devices
            .iter()
            .enumerate()
            .find(|(i, d)| devices[..*i].contains(d))
            .map(|(_, d)| d)
        {
            return Err(at(
                span_of_key(text, "devices").start,
                format!(
                    "[console] devices lists {} twice; each device serves one console",
                    match d {
                        ConsoleDevice::Stdio => "stdio".to_owned(),
                        ConsoleDevice::Tty(p) => p.display().to_string(),
                        ConsoleDevice::Unix(p) => format!("unix:{}", p.display()),
                    }
                ),
            ));
        }
        Ok(cfg)
    }

    fn check_upstream(
        &self,
        text: &str,
        at: &dyn Fn(usize, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let u = &self.upstream;
        let kind = u.kind();
        let kind_at = if u.kind.span().is_empty() {
            span_of_key(text, "upstream").start
        } else {
            u.kind.span().start
        };
        match (&u.url, kind) {
            (None, UpstreamKind::Nats | UpstreamKind::Mqtt) => {
                return Err(at(
                    kind_at,
                    format!(
                        "[upstream] kind = \"{}\" needs a url (e.g. \"{}\")",
                        kind.as_str(),
                        if kind == UpstreamKind::Nats {
                            "nats://127.0.0.1:4222"
                        } else {
                            "mqtt://127.0.0.1:1883"
                        }
                    ),
                ));
            }
            (Some(url), _) if !url.get_ref().fits(kind) => {
                return Err(at(
                    url.span().start,
                    format!(
                        "[upstream] url {} does not fit kind = \"{}\" ({})",
                        url.get_ref(),
                        kind.as_str(),
                        match kind {
                            UpstreamKind::Nats => "use nats:// or tls://",
                            UpstreamKind::Mqtt => "use mqtt:// or mqtts://",
                            UpstreamKind::Stdout => "stdout takes no url",
                        }
                    ),
                ));
            }
            _ => {}
        }
        let n = &u.nats;
        if let (Some(_), Some(c)) = (&n.token_file, &n.creds_file) {
            return Err(at(
                c.span().start,
                "[upstream.nats] token_file and creds_file exclude each other: give one".into(),
            ));
        }
        if n.password_file.is_some() && n.user.is_none() {
            let span = n.password_file.as_ref().map_or(0, |p| p.span().start);
            return Err(at(span, "[upstream.nats] password_file needs user".into()));
        }
        let m = &u.mqtt;
        if m.password_file.is_some() && m.username.is_none() {
            let span = m.password_file.as_ref().map_or(0, |p| p.span().start);
            return Err(at(
                span,
                "[upstream.mqtt] password_file needs username".into(),
            ));
        }
        if let Some(p) = &self.metrics.push {
            if p.password_file.is_some() && p.username.is_none() {
                let span = p.password_file.as_ref().map_or(0, |f| f.span().start);
                return Err(at(
                    span,
                    "[metrics.push] password_file needs username".into(),
                ));
            }
            if p.password_file.is_some() && p.bearer_token_file.is_some() {
                let span = p.password_file.as_ref().map_or(0, |f| f.span().start);
                return Err(at(
                    span,
                    "[metrics.push] bearer_token_file and username/password_file exclude each other".into(),
                ));
            }
        }
        Ok(())
    }

    /// The feeds without their spans.
    pub fn feeds(&self) -> impl Iterator<Item = &Feed> {
        self.feeds.iter().map(|f| f.get_ref())
    }
}

/// The span of the first `key =` in `text` (for errors about files that only [`Config::load`]
/// can check); the start of the text when absent.
fn span_of_key(text: &str, key: &str) -> std::ops::Range<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            let start = offset + (line.len() - t.len());
            return start..start + key.len();
        }
        offset += line.len();
    }
    0..0
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = offset
        - before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = include_str!("../config/marketbox.toml");

    fn err(text: &str) -> (usize, String) {
        match Config::parse(text, "t.toml") {
            Err(ConfigError::Invalid {
                line, reason, path, ..
            }) => {
                assert_eq!(path, "t.toml");
                (line, reason)
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn default_config_holds_the_design_table() {
        let cfg = Config::parse(DEFAULT, "marketbox.toml").expect("the config parses");
        let feeds: Vec<_> = cfg.feeds().collect();
        assert_eq!(feeds.len(), 4);
        for f in &feeds {
            let syms: Vec<_> = f.symbols.iter().map(|s| s.as_str()).collect();
            assert_eq!(syms, ["BTC-USDT", "ETH-USDT"]);
            let n = if f.market == Market::Spot { 2 } else { 7 };
            assert_eq!(f.channels.len(), n, "{:?} {:?}", f.exchange, f.market);
        }
        assert_eq!(cfg.upstream.kind(), UpstreamKind::Stdout);
        assert_eq!(
            cfg.venues.binance.spot_ws.as_str(),
            "wss://stream.binance.com:9443"
        );
        assert_eq!(cfg.venues.okx.ws.path(), "/ws/v5/public");
    }

    #[test]
    fn unknown_keys_name_the_line() {
        let (line, reason) = err("[book]\ndepth = 10\n\n[tls]\nextra_caa = \"x.pem\"\n");
        assert_eq!(line, 5);
        assert!(reason.contains("extra_caa"), "{reason}");
    }

    #[test]
    fn impossible_values_name_the_line_and_reason() {
        let (line, reason) = err("[book]\ndepth = 500\n");
        assert_eq!(line, 2);
        assert!(reason.contains("between 1 and 50"), "{reason}");
        let (line, reason) = err("[session]\nconnect_timeout = \"soon\"\n");
        assert_eq!(line, 2);
        assert!(reason.contains("soon"), "{reason}");
        let (line, _) = err("[venues.binance]\nspot_ws = \"ftp://x\"\n");
        assert_eq!(line, 2);
        let (_, reason) = err("[budget]\nmax_connections = 0\n");
        assert!(reason.contains("between 1 and 256"), "{reason}");
    }

    #[test]
    fn bad_symbols_and_channels_name_the_line() {
        let text = "\n[[feeds]]\nexchange = \"binance\"\nmarket = \"spot\"\nsymbols = [\"btcusdt\"]\nchannels = [\"trade\"]\n";
        let (line, reason) = err(text);
        assert_eq!(line, 5);
        assert!(reason.contains("btcusdt"), "{reason}");
        let text = "[[feeds]]\nexchange = \"binance\"\nmarket = \"spot\"\nsymbols = [\"BTC-USDT\"]\nchannels = [\"funding_rate\"]\n";
        let (line, reason) = err(text);
        assert_eq!(line, 1);
        assert!(reason.contains("no channel funding_rate"), "{reason}");
        let text = "[[feeds]]\nexchange = \"kraken\"\nmarket = \"spot\"\nsymbols = [\"BTC-USDT\"]\nchannels = [\"trade\"]\n";
        let (line, _) = err(text);
        assert_eq!(line, 2);
    }

    #[test]
    fn duplicate_feeds_are_refused() {
        let one = "[[feeds]]\nexchange = \"okx\"\nmarket = \"spot\"\nsymbols = [\"BTC-USDT\"]\nchannels = [\"trade\"]\n";
        let (line, reason) = err(&format!("{one}{one}"));
        assert_eq!(line, 6);
        assert!(reason.contains("listed twice"), "{reason}");
    }

    #[test]
    fn endpoints_split_into_parts() {
        let e =
            Endpoint::parse("wss://127.0.0.1:4443/public/", &["wss"]).expect("a valid endpoint");
        assert_eq!(
            (e.scheme(), e.authority(), e.path()),
            ("wss", "127.0.0.1:4443", "/public")
        );
        // TC1: an IPv6 literal is accepted here exactly as the connector accepts it.
        let e = Endpoint::parse("wss://[::1]:9443", &["wss"]).expect("an IPv6 endpoint");
        assert_eq!((e.authority(), e.path()), ("[::1]:9443", ""));
        let t = crate::net::tls::split_url(e.as_str()).expect("the connector reads it");
        assert_eq!((t.host, t.port, t.tls), ("::1", 9443, true));
        // TC2: shapes refused.
        for bad in [
            "wss://:80",
            "wss://h:99999",
            "wss://h:0",
            "wss://user@h/x",
            "wss://h/x?q=1",
            "stream.binance.com",
            "wss://h:",
        ] {
            assert!(Endpoint::parse(bad, &["wss"]).is_err(), "{bad}");
        }
    }

    #[test]
    fn venue_urls_must_be_tls_and_of_their_kind() {
        // TC0: plaintext is refused for every venue key.
        for (table, key, url) in [
            ("venues.binance", "spot_ws", "ws://127.0.0.1:9443"),
            ("venues.binance", "spot_rest", "http://127.0.0.1:9443"),
            ("venues.okx", "ws", "ws://h/ws/v5/public"),
            ("venues.okx", "rest", "http://h"),
        ] {
            let (line, reason) = err(&format!("[{table}]\n{key} = \"{url}\"\n"));
            assert_eq!(line, 2, "{key}");
            assert!(reason.contains("TLS is never turned off"), "{reason}");
        }
        // TC1: a REST URL for a WebSocket key, and the reverse.
        let (line, reason) =
            err("[venues.binance]\nperpetual_public_ws = \"https://fapi.binance.com\"\n");
        assert_eq!(line, 2);
        assert!(reason.contains("wss://"), "{reason}");
        let (_, reason) = err("[venues.okx]\nrest = \"wss://www.okx.com\"\n");
        assert!(reason.contains("https://"), "{reason}");
    }

    #[test]
    fn every_number_is_bounded_and_named_by_its_line() {
        // TC0: durations that would overflow a timer or make a storm.
        for (key, v) in [
            ("connect_timeout", "300000000000y"),
            ("idle_timeout", "1ns"),
            ("backoff_min", "1ns"),
            ("backoff_max", "300000000000y"),
            ("stale_after", "0s"),
            ("max_lifetime", "1000d"),
            ("stable_after", "1us"),
        ] {
            let (line, reason) = err(&format!("[session]\n\n{key} = \"{v}\"\n"));
            assert_eq!(line, 3, "{key} = {v}");
            assert!(
                reason.contains("out of range") || reason.contains("not a duration"),
                "{key}: {reason}"
            );
        }
        // TC1: sizes near the type's maximum.
        for (table, key) in [
            ("spool", "ram_bytes"),
            ("spool", "disk_bytes"),
            ("rest", "max_body_bytes"),
            ("budget", "max_connections"),
        ] {
            let (line, reason) = err(&format!("[{table}]\n{key} = 9223372036854775807\n"));
            assert_eq!(line, 2, "{key}");
            assert!(reason.contains("out of range"), "{reason}");
            let (_, reason) = err(&format!("[{table}]\n{key} = -1\n"));
            assert!(reason.contains("out of range"), "{reason}");
        }
        let (line, _) = err("[upstream.mqtt]\nqos = 3\n");
        assert_eq!(line, 2);
        let (line, _) = err("[console]\nbaud = 115201\n");
        assert_eq!(line, 2);
        // TC2: backoff_min above backoff_max names backoff_min's line, not 1:1.
        let (line, reason) = err("[session]\nbackoff_max = \"1s\"\nbackoff_min = \"5s\"\n");
        assert_eq!(line, 3);
        assert!(reason.contains("longer than backoff_max"), "{reason}");
        // TC3: the bounds admit the values tests and users rely on.
        let ok = "[session]\nidle_timeout = \"500ms\"\nbackoff_min = \"20ms\"\nbackoff_max = \"200ms\"\nmax_lifetime = \"1500ms\"\n[spool]\nram_bytes = 4096\n";
        assert!(Config::parse(ok, "t.toml").is_ok());
    }

    #[test]
    fn too_many_symbols_are_refused_before_anything_is_allocated() {
        let syms: Vec<String> = (0..=MAX_SYMBOLS_PER_FEED)
            .map(|i| format!("\"S{i}-USDT\""))
            .collect();
        let text = format!(
            "[[feeds]]\nexchange = \"okx\"\nmarket = \"spot\"\nsymbols = [{}]\nchannels = [\"orderbook\"]\n",
            syms.join(",")
        );
        let (line, reason) = err(&text);
        assert_eq!(line, 1);
        assert!(reason.contains("symbols"), "{reason}");
    }

    #[test]
    fn upstream_keys_are_checked_together() {
        // TC0: nats and mqtt need a url of their kind.
        let (line, reason) = err("[upstream]\nkind = \"nats\"\n");
        assert_eq!(line, 2);
        assert!(reason.contains("needs a url"), "{reason}");
        let (line, reason) = err("[upstream]\nkind = \"mqtt\"\nurl = \"nats://127.0.0.1:4222\"\n");
        assert_eq!(line, 3);
        assert!(reason.contains("does not fit"), "{reason}");
        let (_, reason) = err("[upstream]\nkind = \"nats\"\nurl = \"http://h\"\n");
        assert!(reason.contains("scheme"), "{reason}");
        let (_, reason) = err("[upstream]\nkind = \"nats\"\nurl = \"nats://u:p@h\"\n");
        assert!(reason.contains("credentials"), "{reason}");
        // TC1: a valid NATS upstream with its defaults.
        let cfg = Config::parse(
            "[device]\nid = \"box-01\"\n[upstream]\nkind = \"nats\"\nurl = \"tls://[::1]\"\nsubject_prefix = \"md.eu\"\n",
            "t.toml",
        )
        .expect("valid");
        let url = cfg.upstream.url.as_ref().expect("a url");
        assert_eq!(
            (
                url.get_ref().host(),
                url.get_ref().port(),
                url.get_ref().is_tls()
            ),
            ("::1", 4222, true)
        );
        assert_eq!(cfg.upstream.nats.stream.as_str(), "MARKETBOX");
        assert_eq!(
            cfg.upstream.nats.duplicate_window.0,
            Duration::from_secs(120)
        );
        assert_eq!(
            cfg.upstream.mqtt.client_id(&cfg.device.id),
            "marketbox-box-01"
        );
        assert_eq!(cfg.upstream.mqtt.qos.0, 1);
        // TC2: prefixes that are not subject tokens, and exclusive credentials.
        for bad in ["a..b", "a.*", "a b", ">", "a/b"] {
            let (line, _) = err(&format!("[upstream]\nsubject_prefix = \"{bad}\"\n"));
            assert_eq!(line, 2, "{bad}");
        }
        let (_, reason) = err("[upstream.nats]\npassword_file = \"p\"\n");
        assert!(reason.contains("needs user"), "{reason}");
        let (_, reason) = err("[upstream.nats]\ntoken_file = \"t\"\ncreds_file = \"c\"\n");
        assert!(reason.contains("exclude"), "{reason}");
        let (line, _) = err("[device]\nid = \"box 01\"\n");
        assert_eq!(line, 2);
        let (line, _) = err("[metrics]\nlisten = \"9898\"\n");
        assert_eq!(line, 2);
        assert_eq!(
            Config::parse("[metrics]\nlisten = \"\"\n", "t")
                .expect("valid")
                .metrics
                .listen,
            Listen(None)
        );
        let (line, _) = err("[console]\ndevices = [\"stdio\", \"ttyS0\"]\n");
        assert_eq!(line, 2);
        let (line, reason) =
            err("[console]\ndevices = [\"/dev/ttyS0\", \"stdio\", \"/dev/ttyS0\"]\n");
        assert_eq!(line, 2);
        assert!(reason.contains("lists /dev/ttyS0 twice"), "{reason}");
    }

    #[test]
    fn the_config_written_back_reads_as_the_same_config() {
        // TC0: the default config, every key present with its effective value.
        let cfg = Config::parse(DEFAULT, "marketbox.toml").expect("the config parses");
        let tree = cfg.to_toml();
        assert_eq!(tree["book"]["depth"].as_integer(), Some(20));
        assert_eq!(tree["session"]["max_lifetime"].as_str(), Some("23h 30m"));
        assert_eq!(tree["metrics"]["listen"].as_str(), Some("0.0.0.0:9898"));
        assert!(tree["upstream"].get("url").is_none(), "None is left out");
        let text = toml::to_string(&tree).expect("TOML");
        let again = Config::parse(&text, "again.toml").expect("the written config parses");
        assert_eq!(again.to_toml(), tree);
        // TC1: optional keys and every value type survive the trip.
        let cfg = Config::parse(
            "[upstream]\nkind = \"nats\"\nurl = \"tls://[::1]:4333\"\n[upstream.nats]\nmax_age = \"7days\"\n[metrics]\nlisten = \"\"\n[console]\ndevices = [\"stdio\", \"/dev/ttyAMA0\", \"unix:/run/m.sock\"]\nbaud = 9600\n",
            "t.toml",
        )
        .expect("valid");
        let tree = cfg.to_toml();
        let text = toml::to_string(&tree).expect("TOML");
        assert_eq!(
            Config::parse(&text, "t").expect("valid").to_toml(),
            tree,
            "{text}"
        );
        assert_eq!(tree["upstream"]["nats"]["max_age"].as_str(), Some("7days"));
        assert_eq!(tree["metrics"]["listen"].as_str(), Some(""));
    }

    #[test]
    fn a_value_of_the_wrong_type_names_the_allowed_values() {
        for (text, want) in [
            ("[book]\ndepth = \"deep\"\n", "an integer between 1 and 50"),
            (
                "[budget]\nmax_connections = 1.5\n",
                "an integer between 1 and 256",
            ),
            ("[console]\nbaud = \"fast\"\n", "one of [9600"),
            ("[session]\nidle_timeout = 5\n", "between 100ms and 1h"),
            ("[session]\nidle_timeout = \"5\"\n", "between 100ms and 1h"),
            ("[upstream]\nkind = \"kafka\"\n", "`stdout`, `nats`, `mqtt`"),
        ] {
            let (line, reason) = err(text);
            assert_eq!(line, 2, "{text}");
            assert!(reason.contains(want), "{text}: {reason}");
        }
    }

    use crate::testutil::Scratch;

    fn load_err(dir: &Path, text: &str) -> (usize, String) {
        let path = dir.join("m.toml");
        std::fs::write(&path, text).expect("write the config");
        match Config::load(&path) {
            Err(ConfigError::Invalid { line, reason, .. }) => (line, reason),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn extra_ca_is_read_and_checked_by_check_config() {
        let s = Scratch::new("ca");
        let dir = &s.0;
        std::fs::create_dir_all(dir.join("folder")).expect("mkdir");
        std::fs::write(dir.join("garbage.pem"), "not a certificate\n").expect("write");
        let big = std::fs::File::create(dir.join("big.pem")).expect("create");
        big.set_len(1 << 30).expect("a sparse 1 GB file");
        for (ca, want) in [
            ("folder", "not a regular file"),
            ("garbage.pem", "no certificate"),
            ("/dev/zero", "not a regular file"),
            ("big.pem", "more than"),
            ("missing.pem", "cannot open"),
        ] {
            let (line, reason) = load_err(dir, &format!("\n[tls]\nextra_ca = \"{ca}\"\n"));
            assert_eq!(line, 3, "{ca}");
            assert!(reason.contains(want), "{ca}: {reason}");
        }
        // TC1: a relative path is read beside the config, not from the working folder.
        let ca = test_ca_pem();
        std::fs::write(dir.join("ok.pem"), ca).expect("write");
        let path = dir.join("m.toml");
        std::fs::write(&path, "[tls]\nextra_ca = \"ok.pem\"\n").expect("write");
        let cfg = Config::load(&path).expect("a valid CA beside the config");
        assert_eq!(
            cfg.tls.extra_ca.as_deref(),
            Some(dir.join("ok.pem").as_path())
        );
        // TC2: credential files are checked the same way.
        let (line, reason) = load_err(
            dir,
            "[upstream]\nkind = \"nats\"\nurl = \"nats://h\"\n[upstream.nats]\ntoken_file = \"folder\"\n",
        );
        assert_eq!(line, 5);
        assert!(reason.contains("token_file"), "{reason}");
    }

    /// A self-signed CA certificate, made for the test.
    fn test_ca_pem() -> String {
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("a CA").pem()
    }
}
