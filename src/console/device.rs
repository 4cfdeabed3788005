//! The console's devices: a serial tty, stdio and a Unix socket, and the session loop they
//! share.
//!
//! Design: every device is a byte stream in and a byte stream out; [`serve`] runs one
//! session over any pair of them on the service's executor. A tty is opened by path
//! (`O_NOCTTY`, close-on-exec), put in raw mode at the configured speed with `rustix`
//! (8N1, no flow control, `CLOCAL`), and opened again after an error, so a console cable
//! pulled and plugged back works. stdio reads stdin and writes stderr (stdout carries data
//! with `upstream.kind = "stdout"`, so the console never writes there); when stdin is a
//! terminal its echo and line buffering are turned off while the console runs (signals stay:
//! Ctrl-C stops a service run by hand). The Unix socket is bound with mode 0600 before it
//! listens, serves one session per connection, refuses a connection beyond
//! [`MAX_SOCKET_SESSIONS`], never replaces a socket another process still answers on, and is
//! removed when the service stops.
//!
//! ## Cancel safety
//! Dropping [`Devices`] ends every session and removes the socket file; a tty or terminal
//! whose mode was changed gets it back.
//!
//! Owns: device I/O and per-session bounds. Must not touch: what commands do ([`Console`]).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt};
use rustix::termios::{self, LocalModes, OptionalActions, OutputModes, Termios};
use smol::{Async, Executor, Task, Timer};

use super::line::{Event, LineEditor, MAX_LINE};
use super::{Console, Kind, PROMPT};
use crate::config::{Baud, ConsoleDevice};
use crate::session::rate::TokenBucket;

/// Socket sessions served at once; one more connection is told so and closed.
pub const MAX_SOCKET_SESSIONS: usize = 4;
/// Bytes read per second from one socket session (a burst of as much is allowed).
pub const SOCKET_BYTES_PER_SEC: u32 = 256 * 1024;
/// A socket session with no input this long is closed.
pub const SOCKET_IDLE: Duration = Duration::from_secs(600);
/// A write to a device that does not complete in this long ends the session.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A terminal whose mode was changed, restored when dropped.
pub struct TermMode {
    fd: OwnedFd,
    saved: Termios,
}

impl TermMode {
    /// The terminal of `fd` without line buffering and echo (the line editor echoes);
    /// `raw`: no signals and no input translation either (a serial line or the attaching
    /// client, where Ctrl-C is the line editor's). Output keeps `\n` → CR LF when `keep_output`.
    pub fn set(fd: OwnedFd, raw: bool, keep_output: bool) -> io::Result<TermMode> {
        let saved = termios::tcgetattr(&fd)?;
        let mut t = saved.clone();
        if raw {
            t.make_raw();
        } else {
            t.local_modes
                .remove(LocalModes::ICANON | LocalModes::ECHO | LocalModes::IEXTEN);
        }
        if keep_output {
            t.output_modes
                .insert(OutputModes::OPOST | OutputModes::ONLCR);
        }
        t.special_codes[termios::SpecialCodeIndex::VMIN] = 1;
        t.special_codes[termios::SpecialCodeIndex::VTIME] = 0;
        termios::tcsetattr(&fd, OptionalActions::Now, &t)?;
        Ok(TermMode { fd, saved })
    }
}

impl Drop for TermMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(&self.fd, OptionalActions::Now, &self.saved);
    }
}

/// Opens a serial tty in raw mode at `baud` (8N1, no flow control, modem lines ignored).
pub fn open_tty(path: &Path, baud: Baud) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut t = termios::tcgetattr(&fd)?;
    t.make_raw();
    t.set_speed(baud.0)?;
    t.control_modes
        .insert(termios::ControlModes::CLOCAL | termios::ControlModes::CREAD);
    t.special_codes[termios::SpecialCodeIndex::VMIN] = 1;
    t.special_codes[termios::SpecialCodeIndex::VTIME] = 0;
    termios::tcsetattr(&fd, OptionalActions::Now, &t)?;
    Ok(File::from(fd))
}

/// Writes `bytes`, giving up after [`WRITE_TIMEOUT`].
async fn put<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> io::Result<()> {
    async {
        w.write_all(bytes).await?;
        w.flush().await
    }
    .or(async {
        Timer::after(WRITE_TIMEOUT).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the console device took no output",
        ))
    })
    .await
}

/// Command output with the device's line ends.
fn with_eol(text: &str, kind: Kind) -> Vec<u8> {
    match kind {
        Kind::Tty => text.replace('\n', "\r\n").into_bytes(),
        Kind::Socket | Kind::Stdio => text.as_bytes().to_vec(),
    }
}

/// Runs one console session until the input ends, the user quits, or a write fails.
pub async fn serve<R, W>(
    console: &Console,
    mut input: R,
    mut output: W,
    kind: Kind,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut ed = LineEditor::new(kind.eol());
    let first = match kind {
        // Whatever the line held (kernel messages, a half-typed line), the prompt starts one.
        Kind::Tty => format!("\r\n{PROMPT}"),
        Kind::Socket | Kind::Stdio => PROMPT.to_owned(),
    };
    put(&mut output, first.as_bytes()).await?;
    let mut buf = [0u8; 1024];
    let mut echo = Vec::with_capacity(1024);
    let mut bucket = TokenBucket::new(SOCKET_BYTES_PER_SEC, Duration::from_secs(1), Instant::now());
    loop {
        let mut want = buf.len();
        if kind == Kind::Socket {
            // At most SOCKET_BYTES_PER_SEC: read what the bucket allows, wait when empty.
            loop {
                let n = bucket.available(Instant::now()) as usize;
                if n > 0 {
                    want = want.min(n);
                    break;
                }
                Timer::after(Duration::from_millis(20)).await;
            }
        }
        let read = input.read(&mut buf[..want]);
        let n = if kind == Kind::Socket {
            match read
                .or(async {
                    Timer::after(SOCKET_IDLE).await;
                    Err(io::Error::new(io::ErrorKind::TimedOut, "idle"))
                })
                .await
            {
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    let _ = put(&mut output, b"\nidle too long; closing\n").await;
                    return Ok(());
                }
                other => other?,
            }
        } else {
            read.await?
        };
        if n == 0 {
            return Ok(());
        }
        bucket.spend(n as u32, Instant::now());
        for &b in &buf[..n] {
            let Some(event) = ed.feed(b, &mut echo) else {
                continue;
            };
            put(&mut output, &echo).await?;
            echo.clear();
            let reply = match event {
                Event::Line(line) => console.execute(&line, kind).await,
                Event::TooLong { len } => super::Reply::line(format!(
                    "error: the line is {len} bytes; at most {MAX_LINE} are read"
                )),
                Event::Cancel => super::Reply::default(),
                Event::Eof if kind == Kind::Tty => super::Reply::default(),
                Event::Eof => return Ok(()),
            };
            put(&mut output, &with_eol(&reply.text, kind)).await?;
            if reply.restart {
                console.restart();
            }
            if reply.close {
                return Ok(());
            }
            put(&mut output, PROMPT.as_bytes()).await?;
        }
        if !echo.is_empty() {
            put(&mut output, &echo).await?;
            echo.clear();
        }
    }
}

/// The console's devices, running. Dropping it stops them.
pub struct Devices {
    _tasks: Vec<Task<()>>,
}

/// Serves `console` on every configured device.
pub fn start(
    console: &Arc<Console>,
    devices: &[ConsoleDevice],
    baud: Baud,
    executor: &Arc<Executor<'static>>,
) -> Devices {
    let mut tasks = Vec::new();
    for d in devices {
        let c = console.clone();
        let task = match d {
            ConsoleDevice::Stdio => executor.spawn(stdio(c)),
            ConsoleDevice::Tty(path) => executor.spawn(tty(c, path.clone(), baud)),
            ConsoleDevice::Unix(path) => executor.spawn(unix(c, path.clone(), executor.clone())),
        };
        tasks.push(task);
    }
    Devices { _tasks: tasks }
}

/// The stdio console: stdin in, stderr out, until stdin ends or `quit`.
async fn stdio(console: Arc<Console>) {
    let stdin = std::io::stdin();
    let _mode = if rustix::termios::isatty(stdin.as_fd()) {
        match stdin
            .as_fd()
            .try_clone_to_owned()
            .and_then(|fd| TermMode::set(fd, false, true))
        {
            Ok(m) => Some(m),
            Err(err) => {
                tracing::warn!(%err, "cannot turn off the terminal's echo; the console echoes twice");
                None
            }
        }
    } else {
        None
    };
    let input = smol::Unblock::new(std::io::stdin());
    let output = smol::Unblock::new(std::io::stderr());
    match serve(&console, input, output, Kind::Stdio).await {
        Ok(()) => tracing::info!("the stdio console ended (stdin closed or quit)"),
        Err(err) => tracing::warn!(%err, "the stdio console ended"),
    }
}

/// The serial console: opened again after any error, forever. A tty that keeps failing at
/// once (a pty nobody holds the other end of) is logged once, not every second.
async fn tty(console: Arc<Console>, path: PathBuf, baud: Baud) {
    let mut logged = false;
    let mut quiet = false;
    loop {
        match open_tty(&path, baud).and_then(Async::new) {
            Ok(file) => {
                logged = false;
                if !quiet {
                    tracing::info!(tty = %path.display(), baud = baud.0, "serving the console");
                }
                let since = Instant::now();
                let ended = serve(&console, &file, &file, Kind::Tty).await;
                if !quiet {
                    match ended {
                        Ok(()) => {
                            tracing::info!(tty = %path.display(), "the console tty closed; opening it again")
                        }
                        Err(err) => {
                            tracing::warn!(tty = %path.display(), %err, "the console tty failed; opening it again (quick failures after this are not logged)")
                        }
                    }
                }
                quiet = since.elapsed() < Duration::from_secs(5);
                Timer::after(Duration::from_secs(1)).await;
            }
            Err(err) => {
                if !logged {
                    logged = true;
                    tracing::error!(tty = %path.display(), %err, "cannot open the console tty; trying again every 5 s");
                }
                Timer::after(Duration::from_secs(5)).await;
            }
        }
    }
}

/// The socket file, removed on drop if it is still the one this process bound.
struct SocketFile {
    path: PathBuf,
    ino: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && (m.dev(), m.ino()) == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the console socket with mode 0600 before it listens. A stale socket file (nothing
/// answers on it) is replaced; a live one, or a file that is not a socket, is refused.
fn bind(path: &Path) -> io::Result<(UnixListener, SocketFile)> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process serves a console on this socket",
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket; it is left alone",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::bind(&fd, &SocketAddrUnix::new(path)?)?;
    let m = std::fs::symlink_metadata(path)?;
    let file = SocketFile {
        path: path.to_owned(),
        ino: (m.dev(), m.ino()),
    };
    rustix::fs::chmod(path, rustix::fs::Mode::from_raw_mode(0o600))?;
    rustix::net::listen(&fd, 8)?;
    Ok((UnixListener::from(fd), file))
}

/// The socket console: one session per connection, at most [`MAX_SOCKET_SESSIONS`].
async fn unix(console: Arc<Console>, path: PathBuf, executor: Arc<Executor<'static>>) {
    let mut logged = false;
    loop {
        let bound = bind(&path).and_then(|(l, f)| Ok((Async::new(l)?, f)));
        let (listener, _file) = match bound {
            Ok(b) => b,
            Err(err) => {
                if !logged {
                    logged = true;
                    tracing::error!(socket = %path.display(), %err, "cannot serve the console socket; trying again every 5 s");
                }
                Timer::after(Duration::from_secs(5)).await;
                continue;
            }
        };
        tracing::info!(socket = %path.display(), "serving the console (mode 0600)");
        let mut sessions: Vec<Task<()>> = Vec::new();
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(err) => {
                    tracing::warn!(socket = %path.display(), %err, "accept failed");
                    Timer::after(Duration::from_millis(100)).await;
                    continue;
                }
            };
            sessions.retain(|t| !t.is_finished());
            if sessions.len() >= MAX_SOCKET_SESSIONS {
                let mut s = &stream;
                let msg = format!(
                    "error: {MAX_SOCKET_SESSIONS} console sessions are open already; try again later\n"
                );
                let _ = s
                    .write_all(msg.as_bytes())
                    .or(async {
                        Timer::after(Duration::from_secs(1)).await;
                        Ok(())
                    })
                    .await;
                continue;
            }
            let c = console.clone();
            sessions.push(executor.spawn(async move {
                if let Err(err) = serve(&c, &stream, &stream, Kind::Socket).await {
                    tracing::debug!(%err, "a console session ended");
                }
            }));
        }
    }
}
