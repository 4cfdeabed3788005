//! Driving the console as a user does: the marketbox binary as a child process, its console
//! on a Unix socket and on a real pty pair, its stdout read as JSON lines.
#![allow(dead_code)]

pub use crate::tmp::TempDir;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use marketbox::model::Message;

/// The prompt the console prints at the start of a line.
pub const PROMPT: &str = "marketbox> ";

pub fn marketbox() -> Command {
    Command::new(env!("CARGO_BIN_EXE_marketbox"))
}

/// The bytes read so far, and whether the stream ended.
type Received = Mutex<(Vec<u8>, bool)>;

/// Bytes read from a stream by a thread, waited on with a deadline.
#[derive(Clone, Default)]
pub struct Inbox {
    inner: Arc<(Received, Condvar)>,
}

impl Inbox {
    /// Starts a thread copying `r` into the inbox until it ends (`EIO` from a pty master
    /// whose slave is not open yet is waited out).
    pub fn reading(mut r: impl Read + Send + 'static) -> Inbox {
        let inbox = Inbox::default();
        let i = inbox.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let (lock, cv) = &*i.inner;
                        lock.lock().expect("inbox").0.extend_from_slice(&buf[..n]);
                        cv.notify_all();
                    }
                    Err(e) if e.raw_os_error() == Some(5) => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let (lock, cv) = &*i.inner;
            lock.lock().expect("inbox").1 = true;
            cv.notify_all();
        });
        inbox
    }

    /// Waits until the bytes from `from` on contain `pat`; returns the end of the match.
    pub fn wait_for(&self, from: usize, pat: &str, timeout: Duration) -> Option<usize> {
        let (lock, cv) = &*self.inner;
        let deadline = Instant::now() + timeout;
        let mut g = lock.lock().expect("inbox");
        loop {
            if let Some(at) = find(&g.0[from.min(g.0.len())..], pat.as_bytes()) {
                return Some(from + at + pat.len());
            }
            let now = Instant::now();
            if now >= deadline || g.1 {
                return None;
            }
            g = cv.wait_timeout(g, deadline - now).expect("inbox").0;
        }
    }

    /// Waits until the stream ended.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let (lock, cv) = &*self.inner;
        let deadline = Instant::now() + timeout;
        let mut g = lock.lock().expect("inbox");
        while !g.1 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = cv.wait_timeout(g, deadline - now).expect("inbox").0;
        }
        true
    }

    pub fn len(&self) -> usize {
        self.inner.0.lock().expect("inbox").0.len()
    }

    pub fn text(&self, from: usize, to: usize) -> String {
        let g = self.inner.0.lock().expect("inbox");
        String::from_utf8_lossy(&g.0[from.min(g.0.len())..to.min(g.0.len())]).into_owned()
    }

    pub fn all(&self) -> String {
        self.text(0, usize::MAX)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The lines a command printed in a transcript slice `text` that starts right after a
/// prompt: the first line is the echo of what was typed (edits included), the rest is the
/// reply.
pub fn reply_lines(text: &str) -> Vec<String> {
    let text = text.replace("\r\n", "\n");
    text.split('\n')
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// A console session: something to write to, and what came back.
pub struct Session<W: Write> {
    pub out: W,
    pub inbox: Inbox,
    /// Where the next reply starts.
    pub pos: usize,
    /// What Enter sends: `\r` on a tty, `\n` on a socket.
    pub enter: &'static str,
}

impl<W: Write> Session<W> {
    /// Waits for the first prompt.
    pub fn ready(&mut self, timeout: Duration) {
        let end = self
            .inbox
            .wait_for(0, PROMPT, timeout)
            .unwrap_or_else(|| panic!("no prompt; got {:?}", self.inbox.all()));
        self.pos = end;
    }

    /// Types a command; returns its output lines (echo and prompt removed).
    pub fn command(&mut self, line: &str) -> Vec<String> {
        self.try_command(line).unwrap_or_else(|| {
            panic!(
                "no prompt after {line:?}; got {:?}",
                self.inbox.text(self.pos, usize::MAX)
            )
        })
    }

    /// [`Session::command`], or `None` when no prompt follows (the session closed).
    pub fn try_command(&mut self, line: &str) -> Option<Vec<String>> {
        self.out
            .write_all(format!("{line}{}", self.enter).as_bytes())
            .ok()?;
        self.out.flush().ok()?;
        let end = self
            .inbox
            .wait_for(self.pos, &format!("\n{PROMPT}"), Duration::from_secs(20))?;
        let text = self.inbox.text(self.pos, end - PROMPT.len());
        self.pos = end;
        Some(reply_lines(&text))
    }
}

/// Connects to a console socket (waiting for it to appear, and again when a service going
/// away closes the connection before its prompt) and waits for the prompt.
pub fn connect(path: &Path, timeout: Duration) -> Session<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        let stream = match UnixStream::connect(path) {
            Ok(s) => s,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no console on {}: {e}",
                    path.display()
                );
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let inbox = Inbox::reading(stream.try_clone().expect("clone the stream"));
        let left = deadline.saturating_duration_since(Instant::now());
        if let Some(end) = inbox.wait_for(0, PROMPT, left) {
            return Session {
                out: stream,
                inbox,
                pos: end,
                enter: "\n",
            };
        }
        assert!(
            Instant::now() < deadline,
            "no prompt on {}; got {:?}",
            path.display(),
            inbox.all()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A pty pair: the master (the test's end) and the slave's path (the device the service or
/// the client opens).
pub fn openpty() -> (std::fs::File, PathBuf) {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master: OwnedFd =
        openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).expect("openpt");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    let name = ptsname(&master, Vec::new()).expect("ptsname");
    let path = PathBuf::from(name.to_string_lossy().into_owned());
    (std::fs::File::from(master), path)
}

/// A console session on a pty master.
pub fn pty_session(master: std::fs::File) -> Session<std::fs::File> {
    let inbox = Inbox::reading(master.try_clone().expect("clone the master"));
    Session {
        out: master,
        inbox,
        pos: 0,
        enter: "\r",
    }
}

/// The marketbox service as a child process; killed on drop.
pub struct Service {
    pub child: Child,
    /// Messages the service wrote to stdout (JSON lines), as they came.
    pub messages: Arc<Mutex<Vec<Message>>>,
    pub stderr: Inbox,
}

impl Service {
    /// `marketbox run --config <config>`, stdout parsed as JSON messages.
    pub fn start(config: &Path) -> Service {
        let mut child = marketbox()
            .args(["run", "--config"])
            .arg(config)
            .env("MARKETBOX_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start marketbox");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = Inbox::reading(child.stderr.take().expect("stderr"));
        let messages = Arc::new(Mutex::new(Vec::new()));
        let m = messages.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let msg: Message = serde_json::from_str(&line).expect("a JSON message on stdout");
                m.lock().expect("messages").push(msg);
            }
        });
        Service {
            child,
            messages,
            stderr,
        }
    }

    /// Messages so far.
    pub fn count(&self) -> usize {
        self.messages.lock().expect("messages").len()
    }

    /// Waits until `ok` holds for the messages (checked every 10 ms).
    pub fn wait(&self, timeout: Duration, ok: impl Fn(&[Message]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if ok(&self.messages.lock().expect("messages")) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}
