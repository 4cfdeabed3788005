//! Scratch folders and free ports for the tests and benches. A test crate includes this file
//! once (`#[path = "common/tmp.rs"] mod tmp;`) beside the helper modules that re-export from
//! it (`brokers.rs`, `prom.rs`, `console.rs`).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// A free loopback port (bound, read and released: a small race the callers retry).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A folder under the system's temporary directory, made at once and removed with everything
/// in it on drop; its name carries `tag`, the process id and a random number.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "marketbox-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("a temp folder");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside the folder.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
