//! Helpers for the unit tests only (compiled under `cfg(test)`). Owns nothing of the product.

use std::path::PathBuf;

/// A scratch folder under the system's temporary directory, made at once and removed with
/// everything in it on drop; its name carries `tag`, the process id and a random number.
pub(crate) struct Scratch(pub PathBuf);

impl Scratch {
    pub(crate) fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "marketbox-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("a scratch folder");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
