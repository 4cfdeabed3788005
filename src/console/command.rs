//! The console's commands: one line of text parsed into a typed [`Command`].
//!
//! Design: a pure function ("parse, don't validate"): words are split on blanks, the first one
//! or two name the command, the rest are its arguments, each parsed into its type (exchange,
//! market, symbol, channel, log level) or refused with an error that says what was expected
//! and which values are allowed. A config key is checked for its shape here (dotted lowercase
//! words); whether it exists, and whether a value suits it, is the config's to say when the
//! change is staged (`store`). Whatever the user typed is shown back in errors only
//! shortened and escaped, so an error line is bounded and never carries control characters.
//! Fuzzed (`fuzzing::console_command`): it never panics, and what it accepts prints back to
//! a line that parses to the same command.
//!
//! Owns: the command grammar, its help text and its errors. Must not touch: the config, the
//! service, or any I/O.

use std::fmt;

use crate::model::{Channel, Exchange, Market, Symbol};

/// Longest line the parser reads (the line editor refuses longer ones before they get here).
pub const MAX_LINE: usize = 4096;
/// Longest config key: dotted words such as `upstream.nats.duplicate_window`.
pub const MAX_KEY: usize = 128;
/// Longest value a `set` takes (the longest config value is a URL or a path).
pub const MAX_VALUE: usize = 1024;

/// A log level for `log level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub const ALL: [LogLevel; 5] = [
        LogLevel::Error,
        LogLevel::Warn,
        LogLevel::Info,
        LogLevel::Debug,
        LogLevel::Trace,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// A config key: dotted lowercase words (`book.depth`, `upstream.nats.stream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    pub fn parse(s: &str) -> Result<Key, ParseError> {
        let word_ok = |w: &str| {
            !w.is_empty()
                && w.len() <= 64
                && w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if s.len() <= MAX_KEY && s.split('.').count() <= 8 && s.split('.').all(word_ok) {
            Ok(Key(s.to_owned()))
        } else {
            Err(ParseError::BadKey { key: shown(s) })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The dotted words.
    pub fn path(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A blank line: just a new prompt.
    Empty,
    Help,
    Status,
    ShowConfig,
    Get {
        key: Key,
    },
    /// Stage `key = value`; `value` is the rest of the line as typed.
    Set {
        key: Key,
        value: String,
    },
    /// Stage a symbol on an exchange-market; `channels` empty means the feed's channels.
    AddSymbol {
        exchange: Exchange,
        market: Market,
        symbol: Symbol,
        channels: Vec<Channel>,
    },
    RemoveSymbol {
        exchange: Exchange,
        market: Market,
        symbol: Symbol,
    },
    Diff,
    Apply,
    Save,
    Revert,
    LogLevel(LogLevel),
    Restart,
    Version,
    /// End this console session (a socket closes; a serial line prompts again).
    Quit,
}

impl fmt::Display for Command {
    /// The command as a line that parses back to it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Empty => Ok(()),
            Command::Help => f.write_str("help"),
            Command::Status => f.write_str("status"),
            Command::ShowConfig => f.write_str("show config"),
            Command::Get { key } => write!(f, "get {key}"),
            Command::Set { key, value } => write!(f, "set {key} {value}"),
            Command::AddSymbol {
                exchange,
                market,
                symbol,
                channels,
            } => {
                write!(f, "add symbol {exchange} {market} {symbol}")?;
                for c in channels {
                    write!(f, " {c}")?;
                }
                Ok(())
            }
            Command::RemoveSymbol {
                exchange,
                market,
                symbol,
            } => write!(f, "remove symbol {exchange} {market} {symbol}"),
            Command::Diff => f.write_str("diff"),
            Command::Apply => f.write_str("apply"),
            Command::Save => f.write_str("save"),
            Command::Revert => f.write_str("revert"),
            Command::LogLevel(l) => write!(f, "log level {}", l.as_str()),
            Command::Restart => f.write_str("restart"),
            Command::Version => f.write_str("version"),
            Command::Quit => f.write_str("quit"),
        }
    }
}

/// Why a line is not a command. Each says what was expected; user text is shortened and
/// escaped ([`shown`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The first word is no command.
    Unknown {
        word: String,
    },
    /// Wrong arguments for a known command.
    Usage {
        usage: &'static str,
    },
    BadKey {
        key: String,
    },
    /// An argument that is not one of the allowed values.
    BadValue {
        what: &'static str,
        got: String,
        allowed: String,
    },
    TooLong {
        len: usize,
        max: usize,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Unknown { word } => write!(
                f,
                "unknown command {word}; commands: {} (help explains them)",
                COMMANDS.join(", ")
            ),
            ParseError::Usage { usage } => write!(f, "usage: {usage}"),
            ParseError::BadKey { key } => write!(
                f,
                "{key} is not a config key: keys are dotted lowercase names such as book.depth, \
                 session.idle_timeout or upstream.kind"
            ),
            ParseError::BadValue { what, got, allowed } => {
                write!(f, "{what} {got} is not one of: {allowed}")
            }
            ParseError::TooLong { len, max } => {
                write!(f, "the line is {len} bytes; at most {max} are read")
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// The command words, as `help` and errors list them.
pub const COMMANDS: [&str; 15] = [
    "help",
    "status",
    "show config",
    "get",
    "set",
    "add symbol",
    "remove symbol",
    "diff",
    "apply",
    "save",
    "revert",
    "log level",
    "restart",
    "version",
    "quit",
];

const USAGE_GET: &str = "get KEY (e.g. get book.depth)";
const USAGE_SET: &str = "set KEY VALUE (e.g. set book.depth 15, set session.idle_timeout 5s)";
const USAGE_ADD: &str =
    "add symbol EXCHANGE MARKET SYMBOL [CHANNEL...] (e.g. add symbol binance spot SOL-USDT)";
const USAGE_REMOVE: &str =
    "remove symbol EXCHANGE MARKET SYMBOL (e.g. remove symbol okx perpetual ETH-USDT)";
const USAGE_LOG: &str = "log level error|warn|info|debug|trace";
const USAGE_SHOW: &str = "show config";

/// The help text, one command per line.
pub const HELP: &str = "\
help                      this list
status                    sockets against plan and budget, books, messages/s, upstream, uptime
show config               the running config, every key with its value (secrets hidden)
get KEY                   one value of the config being edited, e.g. get book.depth
set KEY VALUE             stage a change, e.g. set book.depth 15 (nothing changes until apply)
add symbol EXCHANGE MARKET SYMBOL [CHANNEL...]
                          stage a symbol, e.g. add symbol binance spot SOL-USDT
remove symbol EXCHANGE MARKET SYMBOL
                          stage removing a symbol (its book is dropped on apply)
diff                      staged changes against the running config
apply                     validate and apply the staged changes with the least disruption
save                      write the running config to its file (atomically, keeping comments)
revert                    drop the staged changes
log level LEVEL           error, warn, info, debug or trace, until the next restart
restart                   start the service again from its config file
version                   marketbox and its version
quit                      end this console session";

/// At most this many characters of user text go into an error, escaped.
const SHOWN_MAX: usize = 48;

/// User text as errors show it: quoted, escaped, at most 48 characters.
pub fn shown(s: &str) -> String {
    let mut out = String::with_capacity(SHOWN_MAX + 8);
    out.push('"');
    for (n, c) in s.chars().enumerate() {
        if n == SHOWN_MAX {
            out.push_str("...");
            break;
        }
        out.extend(c.escape_default());
    }
    out.push('"');
    out
}

fn one_of<T: Copy>(
    what: &'static str,
    got: &str,
    all: &[T],
    name: impl Fn(T) -> &'static str,
) -> Result<T, ParseError> {
    all.iter()
        .copied()
        .find(|v| name(*v) == got)
        .ok_or_else(|| ParseError::BadValue {
            what,
            got: shown(got),
            allowed: all.iter().map(|v| name(*v)).collect::<Vec<_>>().join(", "),
        })
}

fn exchange(s: &str) -> Result<Exchange, ParseError> {
    one_of("exchange", s, &Exchange::ALL, Exchange::as_str)
}

fn market(s: &str) -> Result<Market, ParseError> {
    one_of(
        "market",
        s,
        &[Market::Spot, Market::Perpetual],
        Market::as_str,
    )
}

fn symbol(s: &str) -> Result<Symbol, ParseError> {
    Symbol::parse(s).map_err(|_| ParseError::BadValue {
        what: "symbol",
        got: shown(s),
        allowed: "BASE-QUOTE in capitals, e.g. BTC-USDT".to_owned(),
    })
}

/// Parses one line (without its line ending).
pub fn parse(line: &str) -> Result<Command, ParseError> {
    if line.len() > MAX_LINE {
        return Err(ParseError::TooLong {
            len: line.len(),
            max: MAX_LINE,
        });
    }
    let line = line.trim();
    let mut words = line.split_ascii_whitespace();
    let Some(first) = words.next() else {
        return Ok(Command::Empty);
    };
    let rest: Vec<&str> = words.collect();
    let none = |c: Command, usage: &'static str| {
        if rest.is_empty() {
            Ok(c)
        } else {
            Err(ParseError::Usage { usage })
        }
    };
    match first {
        "help" | "?" => none(Command::Help, "help"),
        "status" => none(Command::Status, "status"),
        "diff" => none(Command::Diff, "diff"),
        "apply" => none(Command::Apply, "apply"),
        "save" => none(Command::Save, "save"),
        "revert" => none(Command::Revert, "revert"),
        "restart" => none(Command::Restart, "restart"),
        "version" => none(Command::Version, "version"),
        "quit" | "exit" => none(Command::Quit, "quit"),
        "show" => match rest.as_slice() {
            ["config"] => Ok(Command::ShowConfig),
            _ => Err(ParseError::Usage { usage: USAGE_SHOW }),
        },
        "get" => match rest.as_slice() {
            [key] => Ok(Command::Get {
                key: Key::parse(key)?,
            }),
            _ => Err(ParseError::Usage { usage: USAGE_GET }),
        },
        "set" => {
            let [key, ..] = rest.as_slice() else {
                return Err(ParseError::Usage { usage: USAGE_SET });
            };
            let key = Key::parse(key)?;
            // The value is the rest of the line as typed (a path or a TOML array may hold
            // blanks), after the key.
            let after_set = line[first.len()..].trim_start();
            let value = after_set[key.as_str().len()..].trim();
            if value.is_empty() {
                return Err(ParseError::Usage { usage: USAGE_SET });
            }
            if value.len() > MAX_VALUE {
                return Err(ParseError::TooLong {
                    len: value.len(),
                    max: MAX_VALUE,
                });
            }
            Ok(Command::Set {
                key,
                value: value.to_owned(),
            })
        }
        "add" => match rest.as_slice() {
            ["symbol", ex, mkt, sym, channels @ ..] => {
                let (exchange, market, symbol) = (exchange(ex)?, market(mkt)?, symbol(sym)?);
                let mut out: Vec<Channel> = Vec::with_capacity(channels.len());
                for c in channels {
                    let c = one_of("channel", c, &Channel::ALL, Channel::as_str)?;
                    if !out.contains(&c) {
                        out.push(c);
                    }
                }
                Ok(Command::AddSymbol {
                    exchange,
                    market,
                    symbol,
                    channels: out,
                })
            }
            _ => Err(ParseError::Usage { usage: USAGE_ADD }),
        },
        "remove" => match rest.as_slice() {
            ["symbol", ex, mkt, sym] => Ok(Command::RemoveSymbol {
                exchange: exchange(ex)?,
                market: market(mkt)?,
                symbol: symbol(sym)?,
            }),
            _ => Err(ParseError::Usage {
                usage: USAGE_REMOVE,
            }),
        },
        "log" => match rest.as_slice() {
            ["level", level] => Ok(Command::LogLevel(one_of(
                "log level",
                level,
                &LogLevel::ALL,
                LogLevel::as_str,
            )?)),
            _ => Err(ParseError::Usage { usage: USAGE_LOG }),
        },
        other => Err(ParseError::Unknown { word: shown(other) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(s: &str) -> Symbol {
        Symbol::parse(s).expect("a valid symbol")
    }

    #[test]
    fn every_command_parses_into_its_type() {
        let key = |k: &str| Key::parse(k).expect("a valid key");
        let cases: Vec<(&str, Command)> = vec![
            // TC0: blank lines and bare words.
            ("", Command::Empty),
            ("   \t ", Command::Empty),
            ("help", Command::Help),
            ("status", Command::Status),
            ("  version  ", Command::Version),
            ("show config", Command::ShowConfig),
            ("diff", Command::Diff),
            ("apply", Command::Apply),
            ("save", Command::Save),
            ("revert", Command::Revert),
            ("restart", Command::Restart),
            ("exit", Command::Quit),
            // TC1: keys and values; the value is the rest of the line as typed.
            (
                "get book.depth",
                Command::Get {
                    key: key("book.depth"),
                },
            ),
            (
                "set book.depth 15",
                Command::Set {
                    key: key("book.depth"),
                    value: "15".into(),
                },
            ),
            (
                "set console.devices [\"stdio\", \"unix:/run/a b.sock\"]",
                Command::Set {
                    key: key("console.devices"),
                    value: "[\"stdio\", \"unix:/run/a b.sock\"]".into(),
                },
            ),
            (
                "set  session.max_lifetime   23h 30m ",
                Command::Set {
                    key: key("session.max_lifetime"),
                    value: "23h 30m".into(),
                },
            ),
            // TC2: symbols, with and without channels (a repeated channel counts once).
            (
                "add symbol binance spot SOL-USDT",
                Command::AddSymbol {
                    exchange: Exchange::Binance,
                    market: Market::Spot,
                    symbol: sym("SOL-USDT"),
                    channels: vec![],
                },
            ),
            (
                "add symbol okx perpetual SOL-USDT trade orderbook trade",
                Command::AddSymbol {
                    exchange: Exchange::Okx,
                    market: Market::Perpetual,
                    symbol: sym("SOL-USDT"),
                    channels: vec![Channel::Trade, Channel::Orderbook],
                },
            ),
            (
                "remove symbol okx spot ETH-USDT",
                Command::RemoveSymbol {
                    exchange: Exchange::Okx,
                    market: Market::Spot,
                    symbol: sym("ETH-USDT"),
                },
            ),
            ("log level debug", Command::LogLevel(LogLevel::Debug)),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line), Ok(want), "{line:?}");
        }
    }

    #[test]
    fn errors_say_what_was_expected_and_the_allowed_values() {
        let cases = [
            // TC0: an unknown word lists the commands.
            (
                "reboot now",
                "unknown command \"reboot\"; commands: help, status",
            ),
            // TC1: wrong arguments show the usage.
            ("status please", "usage: status"),
            ("show", "usage: show config"),
            ("get", "usage: get KEY"),
            ("set book.depth", "usage: set KEY VALUE"),
            ("add symbol binance spot", "usage: add symbol EXCHANGE"),
            (
                "remove symbol okx spot BTC-USDT trade",
                "usage: remove symbol",
            ),
            // TC2: values outside their set name the set.
            (
                "add symbol kraken spot BTC-USDT",
                "exchange \"kraken\" is not one of: binance, okx",
            ),
            (
                "add symbol okx futures BTC-USDT",
                "market \"futures\" is not one of: spot, perpetual",
            ),
            ("add symbol okx spot btcusdt", "BASE-QUOTE in capitals"),
            (
                "add symbol okx spot BTC-USDT candles",
                "channel \"candles\" is not one of: orderbook, trade, funding_rate",
            ),
            (
                "log level loud",
                "log level \"loud\" is not one of: error, warn, info, debug, trace",
            ),
            ("get Book.Depth", "\"Book.Depth\" is not a config key"),
            ("get book..depth", "is not a config key"),
        ];
        for (line, want) in cases {
            let err = parse(line).expect_err(line).to_string();
            assert!(err.contains(want), "{line:?}: {err}");
        }
    }

    #[test]
    fn user_text_in_errors_is_bounded_and_escaped() {
        // TC0: control characters are escaped, long words cut.
        let err = parse("\u{1b}[2Jboom").expect_err("unknown").to_string();
        assert!(!err.contains('\u{1b}'), "{err}");
        assert!(err.contains("\\u{1b}"), "{err}");
        let long = "x".repeat(10_000);
        let err = parse(&long).expect_err("too long").to_string();
        assert!(err.contains("at most 4096"), "{err}");
        let err = parse(&"y".repeat(4000)).expect_err("unknown").to_string();
        assert!(err.len() < 400, "{} bytes", err.len());
        // TC1: values longer than any config value are refused.
        let err = parse(&format!("set upstream.url {}", "z".repeat(2000)))
            .expect_err("too long")
            .to_string();
        assert!(err.contains("at most 1024"), "{err}");
    }

    #[test]
    fn a_parsed_command_prints_back_to_itself() {
        for line in [
            "help",
            "show config",
            "get upstream.nats.stream",
            "set upstream.url nats://127.0.0.1:4222",
            "add symbol okx perpetual SOL-USDT orderbook funding_rate",
            "remove symbol binance perpetual BTC-USDT",
            "log level warn",
            "quit",
        ] {
            let cmd = parse(line).expect(line);
            assert_eq!(cmd.to_string(), line);
            assert_eq!(parse(&cmd.to_string()), Ok(cmd));
        }
    }
}
