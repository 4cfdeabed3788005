//! `save`: the running config written to its file so that no crash can leave it corrupt,
//! empty or missing.
//!
//! Design: the file is replaced by `rename`, which is atomic, and only with a file that is
//! complete on disk:
//!
//! 1. the new text goes to `.NAME.tmp` in the file's folder (same filesystem, so the rename
//!    cannot turn into a copy), created with the mode the file will have, then `fsync`;
//! 2. the previous file is copied to `.NAME.bak.tmp`, `fsync`, renamed to `NAME.bak`;
//! 3. `.NAME.tmp` is renamed over `NAME`, and the folder is `fsync`ed so the renames last.
//!
//! A crash (power loss, SIGKILL) at any point leaves `NAME` either the old or the new text,
//! whole; at worst a temporary file stays behind, and the next save starts by removing it.
//! The mode is 0600 when the config names credentials, else the previous file's mode. A
//! config path that is a symlink is followed: the file it points to is replaced.
//!
//! Owns: writing the config file. Must not touch: what the config says (`store`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::{MAX_CONFIG_BYTES, read_bounded};

/// Why a save failed: the step and the file, so the fix is clear. The config file itself is
/// untouched whenever this is returned (unless the step is the final rename, which either
/// happens whole or not at all).
#[derive(Debug, thiserror::Error)]
#[error("cannot {step} {}: {source}", path.display())]
pub struct SaveError {
    pub step: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn at<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SaveError + 'a {
    move |source| SaveError {
        step,
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `path` (created anew with `mode`) and flushes it to disk.
fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SaveError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(at("remove the leftover", path)(e)),
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(at("create", path))?;
    // The umask may have taken bits away; the mode is exactly what was asked.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(at("set the mode of", path))?;
    f.write_all(bytes).map_err(at("write", path))?;
    f.sync_all().map_err(at("sync", path))
}

/// Saves `text` as the config file `path` (see the module doc). `secret`: the config names
/// credentials, so the file is made readable by its owner only. Returns the file written
/// (the symlink's target when `path` is one).
pub fn save(path: &Path, text: &str, secret: bool) -> Result<PathBuf, SaveError> {
    let real = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => path.to_owned(),
        Err(e) => return Err(at("resolve", path)(e)),
    };
    let dir = match real.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            at("save to", &real)(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the path names no file",
            ))
        })?;
    let previous = match std::fs::metadata(&real) {
        Ok(m) => Some(m.permissions().mode() & 0o7777),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(at("read the metadata of", &real)(e)),
    };
    let mode = if secret {
        0o600
    } else {
        previous.unwrap_or(0o644) & 0o777
    };
    let tmp = dir.join(format!(".{name}.tmp"));
    write_synced(&tmp, text.as_bytes(), mode)?;
    if let Some(old_mode) = previous {
        let old = read_bounded(&real, MAX_CONFIG_BYTES)
            .map_err(|e| at("read", &real)(std::io::Error::other(e)))?;
        let bak_tmp = dir.join(format!(".{name}.bak.tmp"));
        let bak = dir.join(format!("{name}.bak"));
        // The backup keeps the old file's mode, or 0600 when the new one is secret (the old
        // one may name the same credentials).
        let bak_mode = if secret { 0o600 } else { old_mode & 0o777 };
        write_synced(&bak_tmp, &old, bak_mode)?;
        std::fs::rename(&bak_tmp, &bak).map_err(at("rename the backup to", &bak))?;
    }
    std::fs::rename(&tmp, &real).map_err(at("rename the new file to", &real))?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(at("sync the folder", &dir))?;
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testutil::Scratch;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn the_file_is_replaced_the_previous_one_kept_and_no_temp_file_stays() {
        let s = Scratch::new("save");
        let path = s.0.join("marketbox.toml");
        std::fs::write(&path, "[book]\ndepth = 20\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        // TC0: new text in, old text in .bak, the mode kept.
        let real = save(&path, "[book]\ndepth = 15\n", false).expect("saved");
        assert_eq!(real, std::fs::canonicalize(&path).expect("canonical"));
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "[book]\ndepth = 15\n"
        );
        let bak = s.0.join("marketbox.toml.bak");
        assert_eq!(
            std::fs::read_to_string(&bak).expect("read"),
            "[book]\ndepth = 20\n"
        );
        assert_eq!(mode(&path), 0o640);
        let mut names: Vec<String> = std::fs::read_dir(&s.0)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["marketbox.toml", "marketbox.toml.bak"]);
        // TC1: a config naming credentials becomes 0600, and so does its backup.
        save(&path, "[upstream.nats]\ntoken_file = \"t\"\n", true).expect("saved");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&bak), 0o600);
        // TC2: leftovers of a save killed half-way are replaced, not in the way.
        std::fs::write(s.0.join(".marketbox.toml.tmp"), "garbage").expect("write");
        std::fs::write(s.0.join(".marketbox.toml.bak.tmp"), "garbage").expect("write");
        save(&path, "[book]\ndepth = 7\n", false).expect("saved over the leftovers");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "[book]\ndepth = 7\n"
        );
        assert!(!s.0.join(".marketbox.toml.tmp").exists());
    }

    #[test]
    fn a_symlinked_config_is_saved_where_it_points() {
        let s = Scratch::new("save");
        let data = s.0.join("data");
        std::fs::create_dir_all(&data).expect("mkdir");
        let target = data.join("marketbox.toml");
        std::fs::write(&target, "[book]\ndepth = 20\n").expect("write");
        let link = s.0.join("marketbox.toml");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        save(&link, "[book]\ndepth = 3\n", false).expect("saved");
        assert!(
            std::fs::symlink_metadata(&link)
                .expect("meta")
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            std::fs::read_to_string(&target).expect("read"),
            "[book]\ndepth = 3\n"
        );
        assert!(data.join("marketbox.toml.bak").exists());
    }

    #[test]
    fn a_folder_that_refuses_writes_names_the_step_and_leaves_the_file() {
        let s = Scratch::new("save");
        let path = s.0.join("missing-dir").join("marketbox.toml");
        let err = save(&path, "x", false).expect_err("no folder");
        assert_eq!(err.step, "create");
        assert!(err.to_string().contains(".marketbox.toml.tmp"), "{err}");
    }
}
