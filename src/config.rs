//! Typed configuration (TOML), validated on load.
//!
//! Design: config is plain data. Every value that can be wrong is a type whose `Deserialize`
//! checks it (`Depth`, `Dur`, `Endpoint`, `Symbol`), so `toml` reports the span of the bad value;
//! cross-field rules (a channel a market does not have, a feed listed twice) are checked after
//! parsing against the spans kept by `toml::Spanned`. Every error names the file, the line and
//! the reason. Unknown keys are errors (`deny_unknown_fields`) so a typo never silently falls
//! back to a default.
//!
//! Owns: the config schema and its defaults. Must not touch: sockets, or what a venue calls its
//! streams (the socket plan is computed by `plan` from venue code).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
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

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
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
    pub tls: TlsConfig,
    #[serde(default)]
    pub venues: Venues,
    #[serde(default)]
    pub feeds: Vec<Spanned<Feed>>,
}

/// `[budget]`: the hard cap on outgoing sockets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Every outgoing socket counts: WebSockets, REST keep-alives, the upstream.
    #[serde(default = "default_max_connections")]
    pub max_connections: Positive,
}

fn default_max_connections() -> Positive {
    Positive(10)
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            max_connections: default_max_connections(),
        }
    }
}

/// `[book]`: what an `orderbook` message carries.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BookConfig {
    /// Levels per side in every `orderbook` message.
    #[serde(default)]
    pub depth: Depth,
}

/// `[session]`: WebSocket lifecycle timings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    #[serde(default = "d_connect_timeout")]
    pub connect_timeout: Dur,
    /// A subscribed stream silent this long while the socket lives is stale: resubscribed.
    #[serde(default = "d_stale_after")]
    pub stale_after: Dur,
    /// No frame at all for this long: the socket is dead and is replaced.
    #[serde(default = "d_idle_timeout")]
    pub idle_timeout: Dur,
    /// Rotate a connection before the venue's 24 h limit.
    #[serde(default = "d_max_lifetime")]
    pub max_lifetime: Dur,
    #[serde(default = "d_backoff_min")]
    pub backoff_min: Dur,
    #[serde(default = "d_backoff_max")]
    pub backoff_max: Dur,
    /// A connection that lived this long resets the backoff.
    #[serde(default = "d_stable_after")]
    pub stable_after: Dur,
}

fn d_connect_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn d_stale_after() -> Dur {
    Dur(Duration::from_secs(30))
}
fn d_idle_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}
fn d_max_lifetime() -> Dur {
    Dur(Duration::from_secs(23 * 3600 + 30 * 60))
}
fn d_backoff_min() -> Dur {
    Dur(Duration::from_millis(500))
}
fn d_backoff_max() -> Dur {
    Dur(Duration::from_secs(30))
}
fn d_stable_after() -> Dur {
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

/// `[rest]`: the REST client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestConfig {
    /// A keep-alive connection unused this long is closed (and its permit returned).
    #[serde(default = "d_rest_idle")]
    pub idle_timeout: Dur,
    #[serde(default = "d_rest_timeout")]
    pub request_timeout: Dur,
    /// Largest response body accepted.
    #[serde(default = "d_rest_max_body")]
    pub max_body_bytes: Positive,
}

fn d_rest_idle() -> Dur {
    Dur(Duration::from_secs(30))
}
fn d_rest_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn d_rest_max_body() -> Positive {
    Positive(4 << 20)
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    #[default]
    Stdout,
}

/// How messages are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Postcard,
}

/// `[upstream]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(default)]
    pub kind: UpstreamKind,
    #[serde(default)]
    pub format: Format,
}

/// `[spool]`: the bounded queue between sessions and the upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Bytes of encoded messages held in RAM; past this the oldest are dropped and counted.
    #[serde(default = "d_spool_ram")]
    pub ram_bytes: Positive,
}

fn d_spool_ram() -> Positive {
    Positive(64 << 20)
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            ram_bytes: d_spool_ram(),
        }
    }
}

/// `[tls]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// A PEM file of extra trust roots (added to the webpki roots, never replacing them).
    /// Relative paths are read from the config file's folder.
    pub extra_ca: Option<PathBuf>,
}

/// `[venues.*]`: endpoint overrides.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Venues {
    #[serde(default)]
    pub binance: BinanceEndpoints,
    #[serde(default)]
    pub okx: OkxEndpoints,
}

/// `[venues.binance]`: bases the stream path (`/stream?streams=`) or REST path is appended to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinanceEndpoints {
    #[serde(default = "d_b_spot_ws")]
    pub spot_ws: Endpoint,
    #[serde(default = "d_b_spot_rest")]
    pub spot_rest: Endpoint,
    #[serde(default = "d_b_perp_public")]
    pub perpetual_public_ws: Endpoint,
    #[serde(default = "d_b_perp_market")]
    pub perpetual_market_ws: Endpoint,
    #[serde(default = "d_b_perp_rest")]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OkxEndpoints {
    #[serde(default = "d_okx_ws")]
    pub ws: Endpoint,
    #[serde(default = "d_okx_rest")]
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
#[derive(Debug, Clone, Deserialize)]
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

/// A positive integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Positive(pub usize);

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        if v <= 0 {
            return Err(serde::de::Error::custom(format!(
                "{v} must be a positive integer"
            )));
        }
        Ok(Positive(v as usize))
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
        let v = i64::deserialize(d)?;
        if v < 1 || v > MAX_DEPTH as i64 {
            return Err(serde::de::Error::custom(format!(
                "depth {v} is impossible: it must be between 1 and {MAX_DEPTH}"
            )));
        }
        Ok(Depth(v as usize))
    }
}

/// A duration written as `500ms`, `10s`, `23h 50m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let v = humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration like \"10s\" or \"500ms\": {e}"
            ))
        })?;
        if v.is_zero() {
            return Err(serde::de::Error::custom(format!(
                "{s:?}: a zero duration is impossible here"
            )));
        }
        Ok(Dur(v))
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

/// A `ws`, `wss`, `http` or `https` URL with a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    url: String,
    scheme_len: usize,
}

impl Endpoint {
    fn known(s: &str) -> Endpoint {
        match Endpoint::parse(s) {
            Ok(e) => e,
            Err(e) => panic!("built-in endpoint {s} is invalid: {e}"),
        }
    }

    /// Checks the shape of an endpoint URL (scheme, host, optional port and path).
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("{s:?} is not a URL (expected scheme://host)"))?;
        if !matches!(scheme, "ws" | "wss" | "http" | "https") {
            return Err(format!(
                "{s:?}: scheme {scheme:?} is not ws, wss, http or https"
            ));
        }
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let host = authority.rsplit_once(':').map_or(authority, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty() {
                h
            } else {
                authority
            }
        });
        if host.is_empty() || host.contains(['@', ' ']) {
            return Err(format!("{s:?} has no valid host"));
        }
        if let Some((_, port)) = authority.rsplit_once(':')
            && port.parse::<u16>().is_err()
        {
            return Err(format!(
                "{s:?}: port {port:?} is not a number between 0 and 65535"
            ));
        }
        Ok(Endpoint {
            url: s.trim_end_matches('/').to_owned(),
            scheme_len: scheme.len(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.url
    }

    pub fn scheme(&self) -> &str {
        &self.url[..self.scheme_len]
    }

    /// `host[:port]`.
    pub fn authority(&self) -> &str {
        let rest = &self.url[self.scheme_len + 3..];
        rest.split(['/', '?']).next().unwrap_or(rest)
    }

    /// The path after the authority, possibly empty.
    pub fn path(&self) -> &str {
        let rest = &self.url[self.scheme_len + 3..];
        &rest[self.authority().len()..]
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Endpoint::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Which channels each market has.
pub fn market_has(market: Market, channel: Channel) -> bool {
    match market {
        Market::Spot => matches!(channel, Channel::Orderbook | Channel::Trade),
        Market::Perpetual => true,
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut cfg = Config::parse(&text, &path.display().to_string())?;
        if let Some(ca) = &cfg.tls.extra_ca
            && ca.is_relative()
        {
            let beside = path.parent().unwrap_or(Path::new(".")).join(ca);
            if beside.exists() || !ca.exists() {
                cfg.tls.extra_ca = Some(beside);
            }
        }
        Ok(cfg)
    }

    /// Parses and validates config text; `origin` names the file in errors.
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
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            at(offset, e.message().trim().to_owned())
        })?;
        let mut seen = BTreeSet::new();
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
        }
        if cfg.session.backoff_min.0 > cfg.session.backoff_max.0 {
            return Err(at(
                0,
                "[session] backoff_min is longer than backoff_max".to_owned(),
            ));
        }
        Ok(cfg)
    }

    /// The feeds without their spans.
    pub fn feeds(&self) -> impl Iterator<Item = &Feed> {
        self.feeds.iter().map(|f| f.get_ref())
    }
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
        assert_eq!(cfg.upstream.kind, UpstreamKind::Stdout);
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
        assert!(reason.contains("positive"), "{reason}");
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
        let e = Endpoint::parse("wss://127.0.0.1:4443/public/").expect("a valid endpoint");
        assert_eq!(
            (e.scheme(), e.authority(), e.path()),
            ("wss", "127.0.0.1:4443", "/public")
        );
        assert!(Endpoint::parse("wss://:80").is_err());
        assert!(Endpoint::parse("wss://h:99999").is_err());
    }
}
