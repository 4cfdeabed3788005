//! The `marketbox` command line.

use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use std::sync::Arc;

use marketbox::config::Config;
use marketbox::console::LogControl;
use marketbox::console::command::LogLevel;

/// Market-data appliance: verified order books and market data from Binance and OKX.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: connect to the venues and forward normalized messages upstream.
    Run {
        /// Config file.
        #[arg(long, default_value = "config/marketbox.toml")]
        config: PathBuf,
    },
    /// Validate a config file and print the socket plan and budget.
    CheckConfig {
        /// Config file.
        file: PathBuf,
    },
    /// Decode postcard messages to JSON lines on stdout: length-prefixed records on stdin, or,
    /// given files, one message per file (a NATS or MQTT payload saved as it came).
    Decode {
        /// Files of one postcard payload each; none: length-prefixed records on stdin.
        files: Vec<PathBuf>,
    },
    /// Attach this terminal (or a script's stdin and stdout) to a running service's console.
    Console {
        /// The service's console socket (`[console] devices = ["unix:PATH"]`).
        #[arg(long)]
        socket: PathBuf,
    },
}

/// Logs to stderr (stdout carries the data), filtered by `MARKETBOX_LOG` (default `info`; a
/// level, or targets with levels: `marketbox::venue=debug,info`);
/// returns what the console's `log level` changes the filter with.
fn init_logs() -> LogControl {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = std::env::var("MARKETBOX_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    Arc::new(move |level: LogLevel| {
        handle
            .reload(
                level
                    .as_str()
                    .parse::<Targets>()
                    .map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())
    })
}

/// Starts this program again with the same arguments (the console's `restart`); returns only
/// when that fails.
fn restart() -> ExitCode {
    use std::os::unix::process::CommandExt;
    let err = match std::env::current_exe() {
        Ok(exe) => std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .exec(),
        Err(e) => e,
    };
    eprintln!("error: cannot restart: {err}");
    ExitCode::from(1)
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|err| {
        eprintln!("error: {err}");
        ExitCode::from(2)
    })
}

/// One malloc arena for the whole process (glibc gives each thread that allocates its own, up
/// to eight per core). The data path allocates nothing once running, so the threads never
/// wait on each other for it; what it saves is the arenas' resident pages: 0.4 MB of the
/// default config's 11.7 MB in the steady-state bench. `MALLOC_ARENA_MAX` in the environment
/// still decides when set.
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            one_malloc_arena();
            let log = init_logs();
            let (cfg, text) = match Config::read_text(&config)
                .and_then(|text| Config::from_text(&text, &config).map(|c| (c, text)))
            {
                Ok(c) => c,
                Err(err) => {
                    eprintln!("error: {err}");
                    return ExitCode::from(2);
                }
            };
            let opts = marketbox::app::RunOptions {
                config_path: config,
                config_text: text,
                log: Some(log),
            };
            match marketbox::app::run(cfg, opts) {
                Ok(marketbox::app::Stopped::Restart) => restart(),
                // SIGTERM or SIGINT: stopped after draining the spool (logged by `run`).
                Ok(marketbox::app::Stopped::Signal(_)) => ExitCode::SUCCESS,
                // Refused to start: the config or plan is wrong; restarting will not help.
                Err(marketbox::app::RunError::Start(err)) => {
                    eprintln!("error: {err}");
                    ExitCode::from(2)
                }
                // Failed while running: exit non-zero so the init system restarts us.
                Err(err) => {
                    tracing::error!(%err, "stopping");
                    eprintln!("error: {err}");
                    ExitCode::from(1)
                }
            }
        }
        Command::CheckConfig { file } => {
            let cfg = match load(&file) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let plan = match marketbox::venue::plan(&cfg) {
                Ok(p) => p,
                Err(err) => {
                    eprintln!("error: {}: {err}", file.display());
                    return ExitCode::from(2);
                }
            };
            let limit = cfg.budget.max_connections.0;
            println!("{}: ok", file.display());
            println!("{}", plan.display(limit));
            match plan.check(limit) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("error: {}: {err}", file.display());
                    ExitCode::from(2)
                }
            }
        }
        Command::Console { socket } => match marketbox::console::attach::attach(&socket) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::from(1)
            }
        },
        Command::Decode { files } => match decode(&files) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::from(1)
            }
        },
    }
}

/// Largest postcard record or payload file decoded.
const MAX_RECORD: usize = 1 << 20;

/// Postcard to JSON lines: each file holds one payload; without files, length-prefixed records
/// (`u32` little-endian length, then the message) on stdin. Stops at a clean end of input; a
/// truncated or undecodable record is an error naming its position or file.
fn decode(files: &[PathBuf]) -> Result<(), String> {
    if !files.is_empty() {
        let stdout = std::io::stdout();
        let mut out = BufWriter::new(stdout.lock());
        for f in files {
            let bytes = marketbox::config::read_bounded(f, MAX_RECORD as u64)
                .map_err(|e| format!("{}: {e}", f.display()))?;
            let msg = marketbox::encode::decode_postcard(&bytes)
                .map_err(|e| format!("{}: not a marketbox postcard message: {e}", f.display()))?;
            serde_json::to_writer(&mut out, &msg).map_err(|e| e.to_string())?;
            out.write_all(b"\n").map_err(|e| e.to_string())?;
        }
        return out.flush().map_err(|e| e.to_string());
    }
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut buf = Vec::new();
    let mut n = 0u64;
    loop {
        let mut len = [0u8; 4];
        match input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(format!("reading record {n}: {e}")),
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_RECORD {
            return Err(format!(
                "record {n} claims {len} bytes, more than {MAX_RECORD}"
            ));
        }
        buf.resize(len, 0);
        input
            .read_exact(&mut buf)
            .map_err(|e| format!("record {n} is truncated: {e}"))?;
        let msg = marketbox::encode::decode_postcard(&buf)
            .map_err(|e| format!("record {n} is not a marketbox message: {e}"))?;
        serde_json::to_writer(&mut out, &msg).map_err(|e| e.to_string())?;
        out.write_all(b"\n").map_err(|e| e.to_string())?;
        n += 1;
    }
    out.flush().map_err(|e| e.to_string())
}
