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
//!
//! Every rebuilt component is a new file, so the cache is bounded: once its compiled files add
//! up to more than [`MAX_CACHE_BYTES`], the least recently used go (a load counts as a use), and
//! so do temporary files a crash left behind.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::LoadError;

/// What the compiled files in the cache may add up to before the least recently used are
/// removed: dozens of Python or JavaScript builds (tens of MiB each), thousands of Rust ones.
pub const MAX_CACHE_BYTES: u64 = 2 << 30;

/// A temporary file older than this is a crashed writer's, and is removed.
const STALE_TEMPORARY: Duration = Duration::from_secs(3600);

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
                Ok(component) => {
                    // The eviction order: least recently loaded first.
                    touch(&file);
                    return Ok(component);
                }
                Err(e) => tracing::warn!(
                    file = %file.display(),
                    error = %format!("{e:#}"),
                    "Ignoring an unusable compiled component in the cache"
                ),
            },
        }
    }
    let component = compile(bytes)?;
    match store(&component, dir, &file) {
        Ok(()) => prune(dir, &file, MAX_CACHE_BYTES),
        // The cache is an optimisation: a read-only or full disk must not stop fnmill.
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "Cannot write the component cache")
        }
    }
    Ok(component)
}

/// Marks `file` as used now. Best effort: a file that cannot be touched is evicted sooner.
fn touch(file: &Path) {
    if let Ok(f) = std::fs::File::options().write(true).open(file) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Removes the least recently used compiled files of `dir` until they add up to `max_bytes` at
/// most, never `keep` (the file just written), and temporary files older than an hour. Other
/// fnmill processes may prune at the same time: a file already gone is skipped.
fn prune(dir: &Path, keep: &Path, max_bytes: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    let mut compiled = Vec::new();
    let mut total = 0u64;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let modified = meta.modified().unwrap_or(now);
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") {
            if now.duration_since(modified).unwrap_or_default() > STALE_TEMPORARY {
                let _ = std::fs::remove_file(&path);
            }
        } else if name.ends_with(".cwasm") {
            total += meta.len();
            if path != keep {
                compiled.push((modified, meta.len(), path));
            }
        }
    }
    if total > max_bytes {
        remove_least_recent(dir, compiled, total, max_bytes, "Component cache");
    }
}

/// A cached file: when it was last used, its size, where it is.
pub(super) type CachedFile = (SystemTime, u64, PathBuf);

/// Removes the least recently used of `files` (which add up to `total` bytes) until the rest
/// add up to `max_bytes` at most, and logs what it did as `what`'s. Another process may prune
/// at the same time: a file already gone is skipped.
pub(super) fn remove_least_recent(
    dir: &Path,
    mut files: Vec<CachedFile>,
    mut total: u64,
    max_bytes: u64,
    what: &str,
) {
    files.sort();
    let (mut removed, mut freed) = (0usize, 0u64);
    for (_, len, path) in files {
        if total <= max_bytes {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            removed += 1;
            freed += len;
        }
        // Gone either way: removed here or by another process.
        total -= len;
    }
    tracing::info!(
        dir = %dir.display(),
        removed,
        freed_mib = freed >> 20,
        limit_mib = max_bytes >> 20,
        "{what} over its size limit: removed the least recently used files"
    );
}

/// Whether `path` is this user's and writable by no one else; the reason when not.
pub(super) fn trusted(path: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if meta.file_type().is_symlink() {
        return Err("a symbolic link".into());
    }
    trusted_metadata(&meta)
}

/// Whether what `meta` describes is this user's and writable by no one else.
#[cfg(unix)]
pub(super) fn trusted_metadata(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
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
    Ok(())
}

#[cfg(not(unix))]
pub(super) fn trusted_metadata(_meta: &std::fs::Metadata) -> Result<(), String> {
    Ok(())
}

/// `bytes` as lower-case hexadecimal.
pub(super) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn cache_key(engine: &Engine, bytes: &[u8]) -> String {
    let content = Sha256::digest(bytes);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{}-{:016x}.cwasm", hex(&content), hasher.finish())
}

/// Creates `dir` (and its parents) with mode 0700 where missing.
pub(super) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
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
    write_private(file, &serialized)
}

/// Writes `bytes` to `file` (mode 0600) through a temporary file beside it and a rename, so a
/// concurrent reader or a crash never sees half a file. The temporary's name is unique to the
/// process and the call, so threads writing the same file at once do not mix their bytes.
pub(super) fn write_private(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let dir = file.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}-{}.tmp",
        file.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = std::io::Write::write_all(&mut options.open(&tmp)?, bytes)
        .and_then(|()| std::fs::rename(&tmp, file));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// Writes `name` with `len` bytes, last modified `age_s` seconds ago.
    fn file(dir: &Path, name: &str, len: usize, age_s: u64) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![0u8; len]).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(age_s))
            .unwrap();
        path
    }

    #[test]
    fn pruning_removes_the_least_recently_used_until_under_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let oldest = file(d, "a.cwasm", 400, 400);
        let old = file(d, "b.cwasm", 400, 300);
        let recent = file(d, "c.cwasm", 400, 200);
        // Just written, yet older than all of them by its time stamp: never removed.
        let written = file(d, "d.cwasm", 400, 1000);
        let other = file(d, "notes.txt", 5000, 5000);
        let stale_tmp = file(d, ".e.cwasm.1.tmp", 10, 7200);
        let fresh_tmp = file(d, ".f.cwasm.2.tmp", 10, 10);
        prune(d, &written, 1000);
        assert!(!oldest.exists() && !old.exists(), "the two oldest go");
        assert!(recent.exists() && written.exists());
        assert!(other.exists(), "only compiled files count and go");
        assert!(!stale_tmp.exists() && fresh_tmp.exists());
        // Under the limit: nothing more goes.
        prune(d, &written, 1000);
        assert!(recent.exists());
    }

    #[test]
    fn a_load_makes_a_file_the_most_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let loaded = file(d, "a.cwasm", 400, 400);
        let idle = file(d, "b.cwasm", 400, 300);
        let written = file(d, "c.cwasm", 400, 0);
        touch(&loaded);
        prune(d, &written, 800);
        assert!(loaded.exists() && !idle.exists());
    }

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
