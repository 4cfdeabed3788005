//! The console (DESIGN rule 7): status and live configuration over a serial tty, stdio or a
//! Unix socket, saved atomically.
//!
//! Design: a line typed on any device goes through the same pieces, each pure and tested on
//! its own: the device's bytes through a [`line::LineEditor`] (echo, editing, history,
//! bounds), the line through [`command::parse`] into a typed [`command::Command`], and the
//! command against one [`Console`] shared by every session: the [`store::Store`] of the
//! pending and running configs, the [`Service`] that applies a validated config to the
//! running process, [`save::save`] for the file, and [`status`] for the table. [`device`]
//! holds the I/O: a tty in raw mode at its baud rate, stdio, and a Unix socket (mode 0600, one
//! session per connection), all on the service's executor, never on the feed path.
//!
//! The interface other tools rely on: the prompt `marketbox> ` at the start of a line; each
//! command's output before the next prompt; lines end with CR LF on a tty and LF elsewhere;
//! what is typed is echoed (so a transcript reads the same on every device). `version`
//! prints `marketbox <semver>`; `get KEY` the value alone; `set` prints `ok` or an error that
//! names the key and the allowed values; `save` prints `saved <path>`.
//!
//! Bounds: a line is at most [`command::MAX_LINE`] bytes, the history [`line::HISTORY`]
//! lines; at most [`device::MAX_SOCKET_SESSIONS`] socket sessions at once, each read at most
//! [`device::SOCKET_BYTES_PER_SEC`] and closed after [`device::SOCKET_IDLE`] without input;
//! every write to a device gives up after [`device::WRITE_TIMEOUT`].
//!
//! Owns: the console's state and what each command does. Must not touch: the feed (it asks
//! the [`Service`]), metrics values (it reads the registry).

pub mod attach;
pub mod command;
pub mod device;
pub mod line;
pub mod save;
pub mod status;
pub mod store;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::app::Applied;
use crate::config::Config;
use crate::metrics::Metrics;
use command::{Command, HELP, LogLevel};
use status::{Sample, Sampler};
use store::Store;

/// What the console asks of the running service.
pub trait Service: Send + Sync {
    /// Applies a validated config whose `changed` keys differ from the running one, with the
    /// least disruption; says which keys are live and which wait for a restart.
    fn apply(&self, config: &Arc<Config>, changed: &[String]) -> Result<Applied, String>;
    /// Starts the service again from its config file.
    fn restart(&self);
}

/// Sets the log level (the process's log filter).
pub type LogControl = Arc<dyn Fn(LogLevel) -> Result<(), String> + Send + Sync>;

/// The kind of device a session runs on: line ends, and what `quit` and Ctrl-D do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A serial line: CR LF; it stays open.
    Tty,
    /// One connection of the Unix socket: LF; `quit` closes it.
    Socket,
    /// The process's stdin and stderr: LF; `quit` ends the stdio console.
    Stdio,
}

impl Kind {
    pub fn eol(self) -> &'static [u8] {
        match self {
            Kind::Tty => b"\r\n",
            Kind::Socket | Kind::Stdio => b"\n",
        }
    }
}

/// The prompt, at the start of a line.
pub const PROMPT: &str = "marketbox> ";

/// What a command printed, and what the session does next.
#[derive(Debug, Default)]
pub struct Reply {
    /// Lines, each ending with `\n` (the device's line end is put in when written).
    pub text: String,
    /// The session ends after the reply.
    pub close: bool,
    /// The service restarts after the reply is written.
    pub restart: bool,
}

impl Reply {
    fn line(text: impl Into<String>) -> Reply {
        let mut text = text.into();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        Reply {
            text,
            ..Reply::default()
        }
    }

    fn error(err: impl std::fmt::Display) -> Reply {
        Reply::line(format!("error: {err}"))
    }
}

/// Changed keys as `apply` reports them: a feed's keys as the feed
/// (`feeds.binance.spot`), each once, in order.
fn summary(keys: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for k in keys {
        let k = if k.starts_with("feeds.") {
            k.splitn(4, '.').take(3).collect::<Vec<_>>().join(".")
        } else {
            k.clone()
        };
        if !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

/// The console of one service, shared by every session on every device.
pub struct Console {
    store: Mutex<Store>,
    /// One save at a time (they share the temporary file names).
    saving: async_lock::Mutex<()>,
    service: Arc<dyn Service>,
    metrics: Arc<Metrics>,
    sampler: Sampler,
    log: Option<LogControl>,
    /// Applied keys the running service will only use after a restart.
    waiting_restart: Mutex<Vec<String>>,
}

impl Console {
    pub fn new(
        store: Store,
        service: Arc<dyn Service>,
        metrics: Arc<Metrics>,
        started: Instant,
        log: Option<LogControl>,
    ) -> Arc<Console> {
        Arc::new(Console {
            store: Mutex::new(store),
            saving: async_lock::Mutex::new(()),
            service,
            metrics,
            sampler: Sampler::new(started),
            log,
            waiting_restart: Mutex::new(Vec::new()),
        })
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the registry every [`status::SAMPLE_EVERY`] for the rates `status` shows.
    pub async fn sample_forever(self: Arc<Self>) {
        loop {
            smol::Timer::after(status::SAMPLE_EVERY).await;
            self.sampler
                .push(Sample::read(&self.metrics, Instant::now()));
        }
    }

    /// Runs one line typed on a device of `kind`.
    pub async fn execute(&self, line: &str, kind: Kind) -> Reply {
        let cmd = match command::parse(line) {
            Ok(c) => c,
            Err(e) => return Reply::error(e),
        };
        match cmd {
            Command::Empty => Reply::default(),
            Command::Help => Reply::line(HELP),
            Command::Version => Reply::line(format!("marketbox {}", env!("CARGO_PKG_VERSION"))),
            Command::Status => Reply::line(self.status()),
            Command::ShowConfig => Reply::line(self.store().show()),
            Command::Get { key } => match self.store().get(&key) {
                Ok(v) => Reply::line(v),
                Err(e) => Reply::error(e),
            },
            Command::Set { key, value } => match self.store().set(&key, &value) {
                Ok(None) => Reply::line("ok"),
                Ok(Some(note)) => Reply::line(format!("ok\nnote: {note}")),
                Err(e) => Reply::error(e),
            },
            Command::AddSymbol {
                exchange,
                market,
                symbol,
                channels,
            } => match self.store().add_symbol(exchange, market, symbol, &channels) {
                Ok(()) => Reply::line("ok"),
                Err(e) => Reply::error(e),
            },
            Command::RemoveSymbol {
                exchange,
                market,
                symbol,
            } => match self.store().remove_symbol(exchange, market, symbol) {
                Ok(()) => Reply::line("ok"),
                Err(e) => Reply::error(e),
            },
            Command::Diff => {
                let diff = self.store().diff();
                if diff.is_empty() {
                    Reply::line("no staged changes")
                } else {
                    let mut out = String::new();
                    for c in diff {
                        let _ = writeln!(out, "{c}");
                    }
                    Reply::line(out)
                }
            }
            Command::Revert => {
                self.store().revert();
                Reply::line("staged changes dropped")
            }
            Command::Apply => self.apply(),
            Command::Save => self.save().await,
            Command::LogLevel(level) => match &self.log {
                Some(set) => match set(level) {
                    Ok(()) => Reply::line(format!("log level {}", level.as_str())),
                    Err(e) => Reply::error(e),
                },
                None => Reply::error("this process has no log filter to change"),
            },
            Command::Restart => {
                let store = self.store();
                if store.unsaved() {
                    return Reply::error(format!(
                        "the running config has changes {} does not hold, and restart reads \
                         that file: save first",
                        store.path().display()
                    ));
                }
                let mut r = Reply::line(format!("restarting from {}", store.path().display()));
                r.restart = true;
                r.close = kind != Kind::Tty;
                r
            }
            Command::Quit => match kind {
                Kind::Tty => Reply::line("the serial console stays open"),
                Kind::Socket | Kind::Stdio => Reply {
                    text: "bye\n".into(),
                    close: true,
                    restart: false,
                },
            },
        }
    }

    /// `apply`: the whole validation, then the running service changes; nothing changes when
    /// the validation fails.
    fn apply(&self) -> Reply {
        let mut store = self.store();
        if store.diff().is_empty() {
            return Reply::line("nothing to apply");
        }
        let prepared = match store.prepare() {
            Ok(p) => p,
            Err(e) => return Reply::line(format!("error: {e}\nnothing was applied")),
        };
        let keys: Vec<String> = prepared.changes.iter().map(|c| c.key.clone()).collect();
        let applied = match self.service.apply(&prepared.config, &keys) {
            Ok(a) => a,
            Err(e) => return Reply::line(format!("error: {e}\nnothing was applied")),
        };
        store.commit(&prepared);
        let mut out = String::new();
        if !applied.live.is_empty() {
            let _ = writeln!(out, "applied: {}", summary(&applied.live).join(", "));
        }
        if applied.sockets_changed > 0 {
            let _ = writeln!(
                out,
                "subscriptions changed on {} live socket(s); no socket opened",
                applied.sockets_changed
            );
        }
        if applied.upstream_reconnected {
            let _ = writeln!(
                out,
                "the upstream reconnects with the new settings (unacknowledged messages are sent again); the venues' sockets stay"
            );
        }
        if !applied.restart.is_empty() {
            let keys = summary(&applied.restart);
            let _ = writeln!(
                out,
                "needs a restart to take effect: {} (save, then restart)",
                keys.join(", ")
            );
            let mut waiting = self
                .waiting_restart
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for k in keys {
                if !waiting.contains(&k) {
                    waiting.push(k);
                }
            }
        }
        Reply::line(out)
    }

    /// `save`: the running config to its file, atomically.
    async fn save(&self) -> Reply {
        let _one_at_a_time = self.saving.lock().await;
        let (path, text, secret) = {
            let store = self.store();
            (store.path().to_owned(), store.text(), store.holds_secrets())
        };
        let (p, t) = (path.clone(), text.clone());
        match smol::unblock(move || save::save(&p, &t, secret)).await {
            Ok(_) => {
                self.store().saved(text);
                Reply::line(format!("saved {}", path.display()))
            }
            Err(e) => Reply::error(e),
        }
    }

    fn status(&self) -> String {
        let now = Instant::now();
        let cur = Sample::read(&self.metrics, now);
        let base = self.sampler.base(now);
        let store = self.store();
        let mut notes = Vec::new();
        let staged = store.diff().len();
        if staged > 0 {
            notes.push(format!(
                "config: {staged} staged change(s) not applied (diff, apply, revert)"
            ));
        }
        if store.unsaved() {
            notes.push(format!(
                "config: applied changes not saved to {} (save)",
                store.path().display()
            ));
        }
        let waiting = self
            .waiting_restart
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !waiting.is_empty() {
            notes.push(format!("restart needed for: {}", waiting.join(", ")));
        }
        let ctx = status::Context {
            version: env!("CARGO_PKG_VERSION"),
            uptime: now.saturating_duration_since(self.sampler.started()),
            upstream: store.running().upstream.kind().as_str(),
            notes,
        };
        status::render(&cur, &base, &ctx)
    }

    /// Asks the service to restart (after the reply saying so was written).
    pub fn restart(&self) {
        self.service.restart();
    }
}
