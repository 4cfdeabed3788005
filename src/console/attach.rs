//! `marketbox console --socket PATH`: the current terminal attached to a running service's
//! console socket.
//!
//! Design: two copies, socket to stdout and stdin to socket, on two threads (a terminal and
//! a pipe are both blocking files; nothing here is on a service's path). When stdin is a
//! terminal it is put in raw mode, so every key reaches the service's line editor (which
//! echoes, edits, keeps history, and takes Ctrl-C as "cancel the line"); output keeps its
//! `\n` → CR LF translation. The mode is restored however the session ends. When stdin is
//! not a terminal (a script), its lines are sent as they come and its end is passed on as
//! the end of the session's input: the service answers what it got, then closes, and the
//! command exits once everything was printed.
//!
//! Owns: the client side of the socket. Must not touch: the console's commands.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::device::TermMode;

/// Why attaching failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(
        "cannot connect to {path}: {source} (is marketbox running with [console] devices = [\"unix:{path}\"]?)"
    )]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the console connection failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Attaches stdin and stdout to the console at `path` until the service closes the session.
pub fn attach(path: &Path) -> Result<(), AttachError> {
    let stream = UnixStream::connect(path).map_err(|source| AttachError::Connect {
        path: path.display().to_string(),
        source,
    })?;
    let stdin = std::io::stdin();
    let _raw = if rustix::termios::isatty(stdin.as_fd()) {
        Some(TermMode::set(
            stdin.as_fd().try_clone_to_owned()?,
            true,
            true,
        )?)
    } else {
        None
    };
    let mut to_service = stream.try_clone()?;
    // stdin → socket; its end is the end of the session's input.
    std::thread::Builder::new()
        .name("console-input".into())
        .spawn(move || {
            let mut input = std::io::stdin().lock();
            let mut buf = [0u8; 4096];
            loop {
                match input.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to_service.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = to_service.shutdown(Shutdown::Write);
        })?;
    // socket → stdout, until the service closes the session.
    let mut from_service = stream;
    let mut out = std::io::stdout().lock();
    let mut buf = [0u8; 4096];
    loop {
        match from_service.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.write_all(&buf[..n])?;
                out.flush()?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    out.flush()?;
    Ok(())
}
