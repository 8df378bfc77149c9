//! On-disk cache of compiled components, keyed by the component's content hash and by the
//! engine's compatibility hash (wasmtime version, target, compiler settings), so a restart
//! loads machine code instead of compiling, and a changed component or engine never loads stale
//! code.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::LoadError;

/// `$XDG_CACHE_HOME/fnmill`, else `$HOME/.cache/fnmill`, else a folder in the temp dir.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("fnmill");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".cache").join("fnmill");
    }
    std::env::temp_dir().join("fnmill-cache")
}

pub(super) fn load_or_compile(
    engine: &Engine,
    dir: &Path,
    bytes: &[u8],
    compile: impl Fn(&[u8]) -> Result<Component, LoadError>,
) -> Result<Component, LoadError> {
    let file = dir.join(cache_key(engine, bytes));
    if file.exists() {
        // SAFETY: the file was written by `Component::serialize` of an engine with the same
        // compatibility hash (it is part of the name), into a directory fnmill owns; wasmtime
        // checks the header and version again on load. A corrupt or foreign file is recompiled.
        match unsafe { Component::deserialize_file(engine, &file) } {
            Ok(component) => return Ok(component),
            Err(e) => tracing::warn!(
                file = %file.display(),
                error = %format!("{e:#}"),
                "Ignoring an unusable compiled component in the cache"
            ),
        }
    }
    let component = compile(bytes)?;
    if let Err(e) = store(&component, dir, &file) {
        // The cache is an optimisation: a read-only or full disk must not stop fnmill.
        tracing::warn!(dir = %dir.display(), error = %e, "Cannot write the component cache");
    }
    Ok(component)
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

fn store(component: &Component, dir: &Path, file: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let serialized = component
        .serialize()
        .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
    // Write then rename, so a concurrent reader or a crash never sees half a file.
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        file.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, serialized)?;
    std::fs::rename(&tmp, file)
}
