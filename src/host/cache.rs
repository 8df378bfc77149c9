//! On-disk cache of compiled components, keyed by the component's content hash and by the
//! engine's compatibility hash (wasmtime version, target, compiler settings), so a restart
//! loads machine code instead of compiling, and a changed component or engine never loads stale
//! code.
//!
//! Loading a cached file runs the native code in it, so the cache is treated like a binary
//! directory: fnmill creates it with mode 0700, and uses it — and each file in it — only if it
//! belongs to the user fnmill runs as and nobody else can write to it. There is no fallback to
//! a shared temporary folder: without `$XDG_CACHE_HOME` or `$HOME` (and no `cache_dir`), nothing
//! is cached.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::LoadError;

/// `$XDG_CACHE_HOME/fnmill`, else `$HOME/.cache/fnmill`; `None` (no cache) when neither is set.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("fnmill"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|home| PathBuf::from(home).join(".cache").join("fnmill"))
}

pub(super) fn load_or_compile(
    engine: &Engine,
    dir: &Path,
    bytes: &[u8],
    compile: impl Fn(&[u8]) -> Result<Component, LoadError>,
) -> Result<Component, LoadError> {
    let file = dir.join(cache_key(engine, bytes));
    if file.exists() {
        match trusted(dir).and_then(|()| trusted(&file)) {
            Err(why) => tracing::warn!(
                file = %file.display(),
                why = %why,
                "Not loading a compiled component from the cache; compiling it instead"
            ),
            // SAFETY: the file was written by `Component::serialize` of an engine with the same
            // compatibility hash (it is part of the name), into a directory only this user can
            // write to, and is owned by this user and writable by no one else (checked just
            // above); wasmtime checks the header and version again on load.
            Ok(()) => match unsafe { Component::deserialize_file(engine, &file) } {
                Ok(component) => return Ok(component),
                Err(e) => tracing::warn!(
                    file = %file.display(),
                    error = %format!("{e:#}"),
                    "Ignoring an unusable compiled component in the cache"
                ),
            },
        }
    }
    let component = compile(bytes)?;
    if let Err(e) = store(&component, dir, &file) {
        // The cache is an optimisation: a read-only or full disk must not stop fnmill.
        tracing::warn!(dir = %dir.display(), error = %e, "Cannot write the component cache");
    }
    Ok(component)
}

/// Whether `path` is this user's and writable by no one else; the reason when not.
#[cfg(unix)]
fn trusted(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!(
            "owned by uid {}, not by this user (uid {me})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "writable by others (mode {:o})",
            meta.mode() & 0o777
        ));
    }
    if meta.file_type().is_symlink() {
        return Err("a symbolic link".into());
    }
    Ok(())
}

#[cfg(not(unix))]
fn trusted(_path: &Path) -> Result<(), String> {
    Ok(())
}

fn cache_key(engine: &Engine, bytes: &[u8]) -> String {
    let content = Sha256::digest(bytes);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let mut name = String::with_capacity(64 + 18 + 6);
    for b in content {
        name.push_str(&format!("{b:02x}"));
    }
    name.push_str(&format!("-{:016x}.cwasm", hasher.finish()));
    name
}

/// Creates `dir` (and its parents) with mode 0700 where missing.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

fn store(component: &Component, dir: &Path, file: &Path) -> std::io::Result<()> {
    create_private_dir(dir)?;
    trusted(dir).map_err(|why| std::io::Error::other(format!("{}: {why}", dir.display())))?;
    let serialized = component
        .serialize()
        .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
    // Write then rename, so a concurrent reader or a crash never sees half a file.
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        file.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(&tmp)?, &serialized)?;
    std::fs::rename(&tmp, file)
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn only_this_users_private_files_are_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        create_private_dir(&cache).unwrap();
        let mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(trusted(&cache), Ok(()));
        let file = cache.join("x.cwasm");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(trusted(&file).unwrap_err().contains("writable by others"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(trusted(&file), Ok(()));
    }
}
