//! The config the console edits: the running config and the pending one, as TOML documents.
//!
//! Design: both configs are kept as `toml_edit` documents, so a change touches one value and
//! the file's comments and layout survive to `save`. Every edit is checked the moment it is
//! staged: the changed document is read by the config's own deserializer
//! ([`Config::parse_values`]: types, bounds, unknown keys), so `set` refuses a bad value with
//! the key and the allowed values and the pending config never holds one. Rules between keys
//! (a NATS upstream needs a url) are checked by `apply` with the whole validation
//! ([`Config::from_text`], then the plan against the budget: what `check-config` does), so a
//! change that takes two `set`s can be staged; `set` says when `apply` would refuse it yet.
//!
//! Keys are the TOML's dotted paths (`book.depth`, `upstream.nats.stream`); a feed is
//! `feeds.<exchange>.<market>.<key>` (`feeds.binance.spot.symbols`). `get`, `show config` and
//! `diff` read the typed config written back as TOML ([`Config::to_toml`]), so a key left out
//! of the file shows the default the service runs with. Values of secret keys are never shown.
//!
//! Owns: the pending and running documents, what changed between them. Must not touch: the
//! running service (the console hands a validated config to it) or files (`save` writes).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml_edit::{DocumentMut, Item, Table, Value};

use super::command::{Key, shown};
use crate::config::{Config, ConfigError, market_has};
use crate::model::{Channel, Exchange, Market, Symbol};

/// Why an edit was refused. Nothing was staged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditError {
    /// The config's deserializer refused the key or its value; `reason` names the allowed
    /// values.
    Refused { key: String, reason: String },
    /// The key names a table, a whole list of feeds, or something `set` does not change.
    NotSettable { key: String, hint: String },
    /// `add symbol` / `remove symbol` refused.
    Feed { reason: String },
}

impl fmt::Display for EditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EditError::Refused { key, reason } => write!(f, "{key}: {reason}"),
            EditError::NotSettable { key, hint } => write!(f, "{key}: {hint}"),
            EditError::Feed { reason } => f.write_str(reason),
        }
    }
}

impl std::error::Error for EditError {}

/// Why `apply` refused the pending config. Nothing was applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    #[error("{0}")]
    Plan(String),
}

/// One key whose value differs between two configs (values as shown; secrets hidden).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(not set)".to_owned());
        write!(
            f,
            "{}: {} -> {}",
            self.key,
            show(&self.old),
            show(&self.new)
        )
    }
}

/// A pending config that passed the whole validation, ready to be applied.
pub struct Prepared {
    pub config: Arc<Config>,
    pub changes: Vec<Change>,
}

/// The running and pending configs of one service.
pub struct Store {
    path: PathBuf,
    running: DocumentMut,
    running_config: Arc<Config>,
    pending: DocumentMut,
    /// The file's text as last read or written (to tell unsaved changes).
    saved: String,
}

/// Words of a key whose value is a secret (shown as `(hidden)`). Today every credential is a
/// file path (`token_file`, `password_file`); this keeps any value named like a secret out of
/// the console all the same.
fn is_secret(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    !last.ends_with("_file")
        && ["password", "token", "secret", "credentials", "creds"]
            .iter()
            .any(|w| last.contains(w))
}

/// Whether a config names credentials (its file is then written with mode 0600).
fn names_credentials(flat: &BTreeMap<String, String>) -> bool {
    flat.keys().any(|k| {
        let last = k.rsplit('.').next().unwrap_or(k);
        is_secret(k)
            || matches!(
                last,
                "token_file"
                    | "password_file"
                    | "creds_file"
                    | "bearer_token_file"
                    | "user"
                    | "username"
            )
    })
}

/// A value as `get` prints it: strings bare, the rest as TOML.
fn render(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Table(t) => toml::to_string(t).unwrap_or_default().trim_end().to_owned(),
        other => other.to_string(),
    }
}

/// The value at `key` in a typed tree.
fn lookup<'a>(tree: &'a toml::Table, key: &Key) -> Option<&'a toml::Value> {
    let mut words = key.path();
    let mut at = tree.get(words.next()?)?;
    for w in words {
        at = at.as_table()?.get(w)?;
    }
    Some(at)
}

/// The typed tree with `feeds` as a table `exchange → market → feed`, the way keys name them.
fn keyed(mut tree: toml::Table) -> toml::Table {
    let Some(toml::Value::Array(feeds)) = tree.remove("feeds") else {
        return tree;
    };
    let mut by_exchange = toml::Table::new();
    for feed in feeds {
        let toml::Value::Table(mut f) = feed else {
            continue;
        };
        let (Some(toml::Value::String(ex)), Some(toml::Value::String(mkt))) =
            (f.remove("exchange"), f.remove("market"))
        else {
            continue;
        };
        if let toml::Value::Table(markets) = by_exchange
            .entry(ex)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            markets.insert(mkt, toml::Value::Table(f));
        }
    }
    tree.insert("feeds".into(), toml::Value::Table(by_exchange));
    tree
}

/// Every leaf key of a tree with its shown value (arrays are leaves).
fn flatten(tree: &toml::Table, prefix: &str, out: &mut BTreeMap<String, String>) {
    for (k, v) in tree {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(t, &key, out),
            other => {
                let shown = if is_secret(&key) {
                    "(hidden)".to_owned()
                } else {
                    other.to_string()
                };
                out.insert(key, shown);
            }
        }
    }
}

/// The tree of a document read value by value (no rules between keys), for `get` and `diff`.
fn tree_of(doc: &DocumentMut) -> Result<toml::Table, ConfigError> {
    Config::parse_values(&doc.to_string(), "pending").map(|c| keyed(c.to_toml()))
}

/// A value typed at the console: TOML (`15`, `"5s"`, `["stdio"]`, `true`), else the text
/// itself as a string (`5s`, `nats://h:4222`, `23h 30m`).
fn typed_value(raw: &str) -> Value {
    match raw.parse::<Value>() {
        Ok(mut v) => {
            v.decor_mut().clear();
            v
        }
        Err(_) => Value::from(raw),
    }
}

/// Puts `value` at `key` in `doc`, creating missing tables and keeping the decor (the
/// comment after it) of the value it replaces.
fn put(doc: &mut DocumentMut, key: &Key, value: Value) -> Result<(), EditError> {
    let words: Vec<&str> = key.path().collect();
    let not_settable = |hint: String| EditError::NotSettable {
        key: key.to_string(),
        hint,
    };
    let slot = if words[0] == "feeds" {
        let [_, ex, mkt, field] = words.as_slice() else {
            return Err(not_settable(
                "a feed's keys are feeds.EXCHANGE.MARKET.KEY (symbols, channels, lsr_period); \
                 symbols also change with add symbol and remove symbol"
                    .to_owned(),
            ));
        };
        let feed = feed_mut(doc, ex, mkt).ok_or_else(|| {
            not_settable(format!(
                "no [[feeds]] entry collects {ex} {mkt}; add one with add symbol {ex} {mkt} SYMBOL"
            ))
        })?;
        feed.entry(field).or_insert(Item::None)
    } else {
        slot(doc.as_item_mut(), &words)
            .ok_or_else(|| not_settable("a part of this key is a value, not a table".to_owned()))?
    };
    match slot {
        Item::Value(old) => {
            let decor = old.decor().clone();
            *old = value;
            *old.decor_mut() = decor;
        }
        slot @ Item::None => *slot = Item::Value(value),
        Item::Table(t) => {
            let keys: Vec<&str> = t.iter().map(|(k, _)| k).collect();
            return Err(not_settable(format!(
                "is a table; set one of its keys ({})",
                keys.join(", ")
            )));
        }
        Item::ArrayOfTables(_) => return Err(not_settable("is a list of tables".to_owned())),
    }
    Ok(())
}

/// The item at `words` under `item`, creating missing tables on the way (inline ones inside
/// an inline table).
fn slot<'a>(item: &'a mut Item, words: &[&str]) -> Option<&'a mut Item> {
    let Some((first, rest)) = words.split_first() else {
        return Some(item);
    };
    let inline = item.is_inline_table();
    let child = item.as_table_like_mut()?.entry(first).or_insert_with(|| {
        if rest.is_empty() {
            Item::None
        } else if inline {
            Item::Value(Value::InlineTable(Default::default()))
        } else {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        }
    });
    slot(child, rest)
}

/// The `[[feeds]]` entry of an exchange-market.
fn feed_mut<'a>(doc: &'a mut DocumentMut, exchange: &str, market: &str) -> Option<&'a mut Table> {
    doc.get_mut("feeds")?
        .as_array_of_tables_mut()?
        .iter_mut()
        .find(|t| {
            t.get("exchange").and_then(Item::as_str) == Some(exchange)
                && t.get("market").and_then(Item::as_str) == Some(market)
        })
}

impl Store {
    /// The store of a service started with the config file at `path` whose text is `text`
    /// and validated config `config`.
    pub fn new(path: &Path, text: &str, config: Arc<Config>) -> Result<Store, ConfigError> {
        let doc: DocumentMut =
            text.parse()
                .map_err(|e: toml_edit::TomlError| ConfigError::Invalid {
                    path: path.display().to_string(),
                    line: 1,
                    column: 1,
                    reason: e.message().to_owned(),
                })?;
        Ok(Store {
            path: path.to_owned(),
            pending: doc.clone(),
            running: doc,
            running_config: config,
            saved: text.to_owned(),
        })
    }

    /// The config file, as the service was given it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The config the service runs with.
    pub fn running(&self) -> &Arc<Config> {
        &self.running_config
    }

    /// `get KEY`: the value in the config being edited (staged changes included; the default
    /// when the file leaves the key out).
    pub fn get(&self, key: &Key) -> Result<String, EditError> {
        let tree = tree_of(&self.pending).map_err(|e| EditError::Refused {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        match lookup(&tree, key) {
            Some(_) if is_secret(key.as_str()) => Ok("(hidden)".to_owned()),
            Some(v) => Ok(render(v)),
            None => self.unset_or_unknown(key),
        }
    }

    /// A key absent from the typed tree is either optional and unset, or unknown: the
    /// config's deserializer tells which.
    fn unset_or_unknown(&self, key: &Key) -> Result<String, EditError> {
        if key.as_str().starts_with("feeds.") {
            return Err(EditError::Refused {
                key: key.to_string(),
                reason: "no such feed or feed key (keys: feeds.EXCHANGE.MARKET.symbols, \
                         channels, lsr_period)"
                    .to_owned(),
            });
        }
        let mut probe = self.pending.clone();
        put(&mut probe, key, Value::from("")).map_err(|e| EditError::Refused {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        match Config::parse_values(&probe.to_string(), "pending") {
            Err(ConfigError::Invalid { reason, .. }) if reason.contains("unknown field") => {
                Err(EditError::Refused {
                    key: key.to_string(),
                    reason,
                })
            }
            _ => Ok("(not set)".to_owned()),
        }
    }

    /// `set KEY VALUE`: stages the change when the value suits the key. Returns a note when
    /// the pending config is not yet valid as a whole (what `apply` would say).
    pub fn set(&mut self, key: &Key, raw: &str) -> Result<Option<String>, EditError> {
        if key.as_str() == "feeds" {
            return Err(EditError::NotSettable {
                key: key.to_string(),
                hint: "feeds change with add symbol and remove symbol, or \
                       set feeds.EXCHANGE.MARKET.KEY"
                    .to_owned(),
            });
        }
        if let Ok(tree) = tree_of(&self.pending)
            && let Some(toml::Value::Table(t)) = lookup(&tree, key)
        {
            let keys: Vec<&str> = t.keys().map(String::as_str).collect();
            return Err(EditError::NotSettable {
                key: key.to_string(),
                hint: format!("is a table; set one of its keys ({})", keys.join(", ")),
            });
        }
        let typed = typed_value(raw);
        let mut tries = vec![typed.clone()];
        if !typed.is_str() {
            // `set device.id 1234`: the text, when the key wants a string.
            tries.push(Value::from(raw));
        }
        let mut first_error = None;
        for value in tries {
            let mut candidate = self.pending.clone();
            put(&mut candidate, key, value)?;
            match Config::parse_values(&candidate.to_string(), "pending") {
                Ok(_) => {
                    self.pending = candidate;
                    return Ok(self.whole_check());
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let reason = match first_error {
            Some(ConfigError::Invalid { reason, .. }) => reason,
            Some(other) => other.to_string(),
            None => "refused".to_owned(),
        };
        Err(EditError::Refused {
            key: key.to_string(),
            reason: format!("{} is refused: {reason}", shown(raw)),
        })
    }

    /// What the whole validation says of the pending config, when it refuses it.
    fn whole_check(&self) -> Option<String> {
        Config::parse(&self.pending.to_string(), &self.path.display().to_string())
            .err()
            .map(|e| format!("staged, but apply refuses the config until this is fixed: {e}"))
    }

    /// `add symbol`: adds `symbol` to the exchange-market's feed, or a new feed with
    /// `channels` (all the market's channels when none are given).
    pub fn add_symbol(
        &mut self,
        exchange: Exchange,
        market: Market,
        symbol: Symbol,
        channels: &[Channel],
    ) -> Result<(), EditError> {
        let mut candidate = self.pending.clone();
        let (ex, mkt) = (exchange.as_str(), market.as_str());
        if let Some(c) = channels.iter().find(|c| !market_has(market, **c)) {
            return Err(EditError::Feed {
                reason: format!(
                    "{ex} {mkt} has no channel {c}: spot markets carry only orderbook and trade"
                ),
            });
        }
        match feed_mut(&mut candidate, ex, mkt) {
            Some(feed) => {
                let have: Vec<String> = feed
                    .get("channels")
                    .and_then(Item::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                if !channels.is_empty()
                    && (channels.len() != have.len()
                        || channels
                            .iter()
                            .any(|c| !have.iter().any(|h| h == c.as_str())))
                {
                    return Err(EditError::Feed {
                        reason: format!(
                            "{ex} {mkt} collects {} for every symbol; leave the channels out, or \
                             change them for all with set feeds.{ex}.{mkt}.channels [...]",
                            have.join(", ")
                        ),
                    });
                }
                let symbols = feed
                    .get_mut("symbols")
                    .and_then(Item::as_array_mut)
                    .ok_or_else(|| EditError::Feed {
                        reason: format!("the {ex} {mkt} feed has no symbols list"),
                    })?;
                if symbols.iter().any(|s| s.as_str() == Some(symbol.as_str())) {
                    return Err(EditError::Feed {
                        reason: format!("{ex} {mkt} already collects {symbol}"),
                    });
                }
                symbols.push(symbol.as_str());
            }
            None => {
                let channels: Vec<Channel> = if channels.is_empty() {
                    Channel::ALL
                        .into_iter()
                        .filter(|c| market_has(market, *c))
                        .collect()
                } else {
                    channels.to_vec()
                };
                let mut t = Table::new();
                t.insert("exchange", toml_edit::value(ex));
                t.insert("market", toml_edit::value(mkt));
                let mut syms = toml_edit::Array::new();
                syms.push(symbol.as_str());
                t.insert("symbols", toml_edit::value(syms));
                let mut chans = toml_edit::Array::new();
                for c in channels {
                    chans.push(c.as_str());
                }
                t.insert("channels", toml_edit::value(chans));
                let feeds = candidate
                    .entry("feeds")
                    .or_insert(Item::ArrayOfTables(Default::default()));
                match feeds.as_array_of_tables_mut() {
                    Some(a) => a.push(t),
                    None => {
                        return Err(EditError::Feed {
                            reason: "feeds in this file is not a list of [[feeds]] tables".into(),
                        });
                    }
                }
            }
        }
        self.stage_feed(candidate)
    }

    /// `remove symbol`: drops `symbol` from its feed (the feed itself when it was the last).
    pub fn remove_symbol(
        &mut self,
        exchange: Exchange,
        market: Market,
        symbol: Symbol,
    ) -> Result<(), EditError> {
        let mut candidate = self.pending.clone();
        let (ex, mkt) = (exchange.as_str(), market.as_str());
        let not_there = || EditError::Feed {
            reason: format!("{ex} {mkt} does not collect {symbol}"),
        };
        let feed = feed_mut(&mut candidate, ex, mkt).ok_or_else(not_there)?;
        let symbols = feed
            .get_mut("symbols")
            .and_then(Item::as_array_mut)
            .ok_or_else(not_there)?;
        let i = symbols
            .iter()
            .position(|s| s.as_str() == Some(symbol.as_str()))
            .ok_or_else(not_there)?;
        symbols.remove(i);
        if symbols.is_empty()
            && let Some(feeds) = candidate
                .get_mut("feeds")
                .and_then(Item::as_array_of_tables_mut)
        {
            feeds.retain(|t| {
                !(t.get("exchange").and_then(Item::as_str) == Some(ex)
                    && t.get("market").and_then(Item::as_str) == Some(mkt))
            });
        }
        self.stage_feed(candidate)
    }

    /// Stages a feed change unless it is what makes the config invalid.
    fn stage_feed(&mut self, candidate: DocumentMut) -> Result<(), EditError> {
        let origin = self.path.display().to_string();
        if let Err(e) = Config::parse(&candidate.to_string(), &origin)
            && Config::parse(&self.pending.to_string(), &origin).is_ok()
        {
            let reason = match e {
                ConfigError::Invalid { reason, .. } => reason,
                other => other.to_string(),
            };
            return Err(EditError::Feed { reason });
        }
        self.pending = candidate;
        Ok(())
    }

    /// `diff`: keys whose pending value differs from the running one.
    pub fn diff(&self) -> Vec<Change> {
        changes(&self.running, &self.pending)
    }

    /// `revert`: the pending config is the running one again.
    pub fn revert(&mut self) {
        self.pending = self.running.clone();
    }

    /// Validates the pending config as `check-config` would, for `apply`.
    pub fn prepare(&self) -> Result<Prepared, ApplyError> {
        let config = Config::from_text(&self.pending.to_string(), &self.path)?;
        crate::app::check_plan(&config).map_err(|e| ApplyError::Plan(e.to_string()))?;
        Ok(Prepared {
            config: Arc::new(config),
            changes: self.diff(),
        })
    }

    /// The prepared config is running now.
    pub fn commit(&mut self, prepared: &Prepared) {
        self.running = self.pending.clone();
        self.running_config = prepared.config.clone();
    }

    /// `show config`: the running config, every key with its value, secrets hidden.
    pub fn show(&self) -> String {
        let mut tree = self.running_config.to_toml();
        hide_secrets(&mut tree, "");
        toml::to_string(&tree)
            .unwrap_or_default()
            .trim_end()
            .to_owned()
    }

    /// The text `save` writes: the running document, comments and layout kept.
    pub fn text(&self) -> String {
        self.running.to_string()
    }

    /// `text` was written to the file.
    pub fn saved(&mut self, text: String) {
        self.saved = text;
    }

    /// Whether the running config differs from what the file holds.
    pub fn unsaved(&self) -> bool {
        self.running.to_string() != self.saved
    }

    /// Whether the running config names credentials (saved with mode 0600).
    pub fn holds_secrets(&self) -> bool {
        let mut flat = BTreeMap::new();
        flatten(&keyed(self.running_config.to_toml()), "", &mut flat);
        names_credentials(&flat)
    }
}

/// Replaces the values of secret keys.
fn hide_secrets(tree: &mut toml::Table, prefix: &str) {
    for (k, v) in tree.iter_mut() {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => hide_secrets(t, &key),
            toml::Value::Array(a) => {
                for item in a {
                    if let toml::Value::Table(t) = item {
                        hide_secrets(t, &key);
                    }
                }
            }
            other if is_secret(&key) => *other = toml::Value::String("(hidden)".into()),
            _ => {}
        }
    }
}

/// Keys whose values differ between two documents (read value by value).
fn changes(old: &DocumentMut, new: &DocumentMut) -> Vec<Change> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    if let Ok(t) = tree_of(old) {
        flatten(&t, "", &mut a);
    }
    if let Ok(t) = tree_of(new) {
        flatten(&t, "", &mut b);
    }
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| Change {
            key: k.clone(),
            old: a.get(k).cloned(),
            new: b.get(k).cloned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = include_str!("../../config/marketbox.toml");

    fn store(text: &str) -> Store {
        let path = Path::new("/nonexistent/marketbox.toml");
        let cfg = Config::parse(text, "marketbox.toml").expect("a valid config");
        Store::new(path, text, Arc::new(cfg)).expect("a TOML document")
    }

    fn key(k: &str) -> Key {
        Key::parse(k).expect("a key")
    }

    fn sym(s: &str) -> Symbol {
        Symbol::parse(s).expect("a symbol")
    }

    #[test]
    fn get_shows_the_value_or_the_default_the_service_runs_with() {
        let s = store(DEFAULT);
        for (k, want) in [
            // TC0: in the file.
            ("book.depth", "20"),
            ("upstream.kind", "stdout"),
            // TC1: commented out in the file: the default.
            ("session.idle_timeout", "10s"),
            ("session.max_lifetime", "23h 30m"),
            ("metrics.listen", "0.0.0.0:9898"),
            ("console.baud", "115200"),
            ("console.devices", "[]"),
            // TC2: optional and unset; feeds by exchange and market.
            ("upstream.url", "(not set)"),
            ("feeds.binance.spot.symbols", "[\"BTC-USDT\", \"ETH-USDT\"]"),
        ] {
            assert_eq!(s.get(&key(k)).as_deref(), Ok(want), "{k}");
        }
        // TC3: unknown keys name the keys there are.
        let err = s.get(&key("book.dept")).expect_err("unknown").to_string();
        assert!(
            err.contains("unknown field `dept`, expected `depth`"),
            "{err}"
        );
        let err = s
            .get(&key("feeds.kraken.spot.symbols"))
            .expect_err("unknown");
        assert!(err.to_string().contains("no such feed"), "{err}");
    }

    #[test]
    fn an_invalid_set_is_refused_naming_the_key_and_allowed_values() {
        let mut s = store(DEFAULT);
        for (k, v, want) in [
            // TC0: out of bounds, of the wrong type, not one of the allowed words.
            ("book.depth", "500", "between 1 and 50"),
            ("book.depth", "deep", "an integer between 1 and 50"),
            ("upstream.kind", "kafka", "`stdout`, `nats`, `mqtt`"),
            ("session.idle_timeout", "soon", "between 100ms and 1h"),
            ("console.baud", "115201", "one of [9600, 19200"),
            // TC1: keys that do not exist name the ones that do.
            ("book.dept", "15", "expected `depth`"),
            ("budget.max", "15", "expected `max_connections`"),
        ] {
            let err = s.set(&key(k), v).expect_err(k).to_string();
            assert!(err.starts_with(k), "{err}");
            assert!(err.contains(want), "{k} = {v}: {err}");
        }
        // TC2: tables are not values.
        let err = s
            .set(&key("session"), "1")
            .expect_err("a table")
            .to_string();
        assert!(err.contains("set one of its keys (backoff_max,"), "{err}");
        // Nothing was staged.
        assert!(s.diff().is_empty(), "{:?}", s.diff());
        assert_eq!(s.get(&key("book.depth")).as_deref(), Ok("20"));
    }

    #[test]
    fn set_stages_and_keeps_the_comment_and_diff_shows_it() {
        let mut s = store(DEFAULT);
        // TC0: a value, the text form of durations, a value needing a second set.
        assert_eq!(s.set(&key("book.depth"), "15"), Ok(None));
        assert_eq!(s.set(&key("session.idle_timeout"), "5s"), Ok(None));
        let note = s
            .set(&key("upstream.kind"), "nats")
            .expect("staged")
            .expect("a note");
        assert!(note.contains("needs a url"), "{note}");
        assert_eq!(
            s.set(&key("upstream.url"), "nats://127.0.0.1:4222"),
            Ok(None)
        );
        assert_eq!(
            s.set(&key("device.id"), "1234"),
            Ok(None),
            "a number as text"
        );
        assert_eq!(s.get(&key("device.id")).as_deref(), Ok("1234"));
        // TC1: a table the file does not have is created.
        assert_eq!(
            s.set(
                &key("metrics.push.url"),
                "https://prom.example/api/v1/write"
            ),
            Ok(None)
        );
        let diff: Vec<String> = s.diff().iter().map(ToString::to_string).collect();
        assert!(
            diff.contains(&"book.depth: 20 -> 15".to_owned()),
            "{diff:?}"
        );
        assert!(
            diff.contains(&"session.idle_timeout: \"10s\" -> \"5s\"".to_owned()),
            "{diff:?}"
        );
        assert!(
            diff.contains(&"upstream.url: (not set) -> \"nats://127.0.0.1:4222\"".to_owned()),
            "{diff:?}"
        );
        // TC2: the running config is unchanged until commit; the comment stays.
        assert_eq!(s.running().book.depth.0, 20);
        let prepared = s.prepare().expect("valid as a whole");
        s.commit(&prepared);
        let text = s.text();
        assert!(
            text.contains("depth = 15                      # levels per side"),
            "{text}"
        );
        assert!(text.contains("[metrics.push]\nurl = "), "{text}");
        assert!(s.unsaved());
        assert!(s.diff().is_empty());
    }

    #[test]
    fn symbols_are_added_to_their_feed_or_a_new_one_and_removed() {
        let mut s = store(DEFAULT);
        // TC0: an existing feed takes the symbol with its channels.
        s.add_symbol(Exchange::Binance, Market::Spot, sym("SOL-USDT"), &[])
            .expect("added");
        assert_eq!(
            s.get(&key("feeds.binance.spot.symbols")).as_deref(),
            Ok("[\"BTC-USDT\", \"ETH-USDT\", \"SOL-USDT\"]")
        );
        // TC1: twice, other channels than the feed's, a channel spot lacks: refused.
        for (m, chans, want) in [
            (Market::Spot, vec![], "already collects SOL-USDT"),
            (Market::Perpetual, vec![], "already collects"),
            (
                Market::Spot,
                vec![Channel::Trade],
                "collects orderbook, trade for every symbol",
            ),
            (
                Market::Spot,
                vec![Channel::FundingRate],
                "has no channel funding_rate",
            ),
        ] {
            let sym = if m == Market::Spot {
                "SOL-USDT"
            } else {
                "BTC-USDT"
            };
            let err = s
                .add_symbol(
                    Exchange::Binance,
                    m,
                    Symbol::parse(sym).expect("sym"),
                    &chans,
                )
                .expect_err(want)
                .to_string();
            assert!(err.contains(want), "{err}");
        }
        // TC2: removing the last symbol of a feed removes the feed.
        let mut s = store(DEFAULT);
        for sy in ["BTC-USDT", "ETH-USDT"] {
            s.remove_symbol(Exchange::Okx, Market::Spot, sym(sy))
                .expect("removed");
        }
        let err = s.remove_symbol(Exchange::Okx, Market::Spot, sym("BTC-USDT"));
        assert!(err.is_err());
        let p = s.prepare().expect("valid");
        assert_eq!(p.config.feeds().count(), 3);
        // TC3: a new feed gets the channels given.
        let mut s = store(
            "[[feeds]]\nexchange = \"okx\"\nmarket = \"spot\"\nsymbols = [\"BTC-USDT\"]\nchannels = [\"trade\"]\n",
        );
        s.add_symbol(
            Exchange::Binance,
            Market::Spot,
            sym("SOL-USDT"),
            &[Channel::Orderbook],
        )
        .expect("a new feed");
        let p = s.prepare().expect("valid");
        let f = p
            .config
            .feeds()
            .find(|f| f.exchange == Exchange::Binance)
            .expect("the feed");
        assert_eq!(f.channels, vec![Channel::Orderbook]);
    }

    #[test]
    fn revert_drops_what_is_staged() {
        let mut s = store(DEFAULT);
        s.set(&key("book.depth"), "3").expect("staged");
        s.revert();
        assert!(s.diff().is_empty());
        assert_eq!(s.get(&key("book.depth")).as_deref(), Ok("20"));
    }

    #[test]
    fn secrets_never_show_and_credentials_mean_mode_0600() {
        assert!(is_secret("upstream.nats.password"));
        assert!(is_secret("x.api_token"));
        assert!(!is_secret("upstream.nats.password_file"));
        assert!(!is_secret("book.depth"));
        let s = store(DEFAULT);
        assert!(!s.holds_secrets());
        let s = store(
            "[upstream]\nkind = \"nats\"\nurl = \"nats://h\"\n[upstream.nats]\nuser = \"u\"\npassword_file = \"p\"\n",
        );
        assert!(s.holds_secrets());
        let shown = s.show();
        assert!(shown.contains("password_file = \"p\""), "{shown}");
    }
}
