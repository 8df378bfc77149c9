//! Cranelift's per-function cache on disk: the machine code of each wasm function, keyed by
//! the function's own code (Cranelift's hash of its IR and of the compiler's settings), so a
//! component compiled for the first time reuses every function an earlier component had.
//!
//! That is what makes a JavaScript or Python function's first load after an edit quick: almost
//! all of its code is the interpreter, the same in every function of the language, and only
//! what changed is compiled. A rebuilt component is a new file for the whole-component cache
//! ([`super::cache`]), so without this it would compile from scratch, 10–20 s of CPU.
//!
//! It lives beside the compiled components (`<cache_dir>/functions`), under the same rules:
//! created with mode 0700, used only while it is this user's and writable by no one else, and
//! each entry only if it is this user's file and writable by no one else. Entries are written
//! whole (write, then rename), so a reader never sees half of one; an unreadable or stale entry
//! is compiled again (Cranelift checks the version it was written by). The entries are bounded
//! like the components: past [`MAX_FUNCTION_BYTES`] the least recently used go.

use std::borrow::Cow;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::CacheStore;

use super::cache::{
    create_private_dir, hex, remove_least_recent, trusted, trusted_metadata, write_private,
};

/// What the cached functions may add up to before the least recently used are removed: a few
/// language runtimes' worth (a JavaScript runtime's functions are about 40 MiB of entries).
pub const MAX_FUNCTION_BYTES: u64 = 512 << 20;

/// The per-function cache in `dir`, handed to wasmtime as its incremental-compilation store.
#[derive(Debug)]
pub(super) struct FunctionCache {
    dir: PathBuf,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// How many functions a compile found in the cache and how many it compiled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Counts {
    pub hits: u64,
    pub misses: u64,
}

impl FunctionCache {
    /// The cache in `dir`, created if missing; `None`, with a warning, if it cannot be created
    /// or is not trusted (see the module's documentation).
    pub fn open(dir: PathBuf) -> Option<Self> {
        // The folder above too: whoever can write there could put another folder in its place.
        let usable = create_private_dir(&dir)
            .map_err(|e| e.to_string())
            .and_then(|()| dir.parent().map_or(Ok(()), trusted))
            .and_then(|()| trusted(&dir));
        if let Err(why) = usable {
            tracing::warn!(
                dir = %dir.display(),
                why = %why,
                "Not using the per-function compile cache; functions compile from scratch"
            );
            return None;
        }
        Some(Self {
            dir,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// What a compile that started at `before` (the counts then) and took `took` did: logged
    /// (at `info` when the user waited a second or more, as for a JavaScript or Python
    /// runtime; at `debug` otherwise), and the cache pruned if the compile added entries.
    /// Other components compiling at the same time would be counted in too.
    pub fn compiled(&self, component: &Path, before: Counts, took: Duration) {
        let after = self.counts();
        let (functions, from_cache) = (
            after.hits + after.misses - before.hits - before.misses,
            after.hits - before.hits,
        );
        macro_rules! log {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    component = %component.display(),
                    seconds = format_args!("{:.1}", took.as_secs_f64()),
                    functions,
                    from_cache,
                    "Compiled a component"
                )
            };
        }
        if took >= Duration::from_secs(1) {
            log!(tracing::Level::INFO);
        } else {
            log!(tracing::Level::DEBUG);
        }
        if after.misses > before.misses {
            prune(&self.dir, MAX_FUNCTION_BYTES);
        }
    }

    pub fn counts(&self) -> Counts {
        Counts {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// The entry of `key`: `<dir>/<2 hex digits>/<62 hex digits>`, so no directory holds more
    /// than a few hundred entries per runtime.
    fn path(&self, key: &[u8]) -> PathBuf {
        let hex = hex(&Sha256::digest(key));
        self.dir.join(&hex[..2]).join(&hex[2..])
    }

    fn read(&self, path: &Path) -> Option<Vec<u8>> {
        let mut file = std::fs::File::open(path).ok()?;
        // Checked on the open file, so it cannot be swapped between the check and the read.
        let meta = file.metadata().ok()?;
        if !meta.is_file() || trusted_metadata(&meta).is_err() {
            return None;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).ok()?;
        // The eviction order: least recently used first. Best effort.
        let _ = file.set_modified(SystemTime::now());
        Some(bytes)
    }
}

impl CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let found = self.read(&self.path(key));
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found.map(Cow::Owned)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let path = self.path(key);
        let Some(parent) = path.parent() else {
            return false;
        };
        // The cache is an optimisation: a full or read-only disk only costs compile time.
        create_private_dir(parent).is_ok() && write_private(&path, &value).is_ok()
    }
}

/// Removes the least recently used entries of `dir` until they add up to `max_bytes` at most.
/// Other fnmill processes may prune or write at the same time: an entry already gone is
/// skipped, and one removed while another process wanted it is compiled again.
pub(super) fn prune(dir: &Path, max_bytes: u64) {
    let Ok(shards) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries = Vec::new();
    let mut total = 0u64;
    for shard in shards.flatten() {
        let Ok(files) = std::fs::read_dir(shard.path()) else {
            continue;
        };
        for file in files.flatten() {
            let Ok(meta) = file.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            total += meta.len();
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            entries.push((modified, meta.len(), file.path()));
        }
    }
    if total > max_bytes {
        remove_least_recent(dir, entries, total, max_bytes, "Function cache");
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use super::*;

    fn cache() -> (tempfile::TempDir, FunctionCache) {
        let dir = tempfile::tempdir().unwrap();
        let cache = FunctionCache::open(dir.path().join("functions")).unwrap();
        (dir, cache)
    }

    #[test]
    fn an_entry_is_found_again_and_counted() {
        let (_dir, cache) = cache();
        assert_eq!(cache.get(b"key"), None);
        assert!(cache.insert(b"key", b"machine code".to_vec()));
        assert_eq!(cache.get(b"key").as_deref(), Some(&b"machine code"[..]));
        assert_eq!(cache.get(b"other"), None);
        assert_eq!(cache.counts(), Counts { hits: 1, misses: 2 });
        let mode = std::fs::metadata(cache.path(b"key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let shard = cache.path(b"key").parent().unwrap().to_path_buf();
        let mode = std::fs::metadata(shard).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn an_entry_others_could_have_written_is_not_used() {
        let (_dir, cache) = cache();
        assert!(cache.insert(b"key", b"machine code".to_vec()));
        let path = cache.path(b"key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(cache.get(b"key"), None);
    }

    #[test]
    fn a_directory_others_can_write_to_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let functions = dir.path().join("functions");
        std::fs::create_dir(&functions).unwrap();
        std::fs::set_permissions(&functions, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(FunctionCache::open(functions).is_none());
    }

    #[test]
    fn pruning_removes_the_least_recently_used_entries() {
        let (_dir, cache) = cache();
        let aged = |key: &[u8], age_s: u64| {
            assert!(cache.insert(key, vec![0; 400]));
            let f = std::fs::File::options()
                .write(true)
                .open(cache.path(key))
                .unwrap();
            f.set_modified(SystemTime::now() - Duration::from_secs(age_s))
                .unwrap();
        };
        aged(b"oldest", 400);
        aged(b"old", 300);
        aged(b"recent", 200);
        aged(b"used", 500);
        // A hit makes an entry the most recently used.
        assert!(cache.get(b"used").is_some());
        prune(&cache.dir, 800);
        assert!(cache.get(b"oldest").is_none() && cache.get(b"old").is_none());
        assert!(cache.get(b"recent").is_some() && cache.get(b"used").is_some());
    }
}
