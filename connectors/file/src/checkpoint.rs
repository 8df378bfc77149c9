//! The checkpoint file: how far into the input every line is settled, as `{"offset":…,"line":…}`.
//!
//! It is replaced atomically (write a temporary file, fsync, rename, fsync the directory), so
//! after a crash it holds either the previous or the new position, never a torn one.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::FileError;

/// A position just past a line: everything before `offset` (lines `1..=line`) is settled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Position {
    /// Byte offset in the input file.
    pub offset: u64,
    /// Number of lines before `offset`, so the next line read is `line + 1`.
    pub line: u64,
}

/// `<path><suffix>`, keeping whatever `path` ends with (`a.jsonl` → `a.jsonl.checkpoint`).
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// Reads the checkpoint of `input`; `None` when there is none yet.
pub(crate) fn load(checkpoint: &Path, input: &Path) -> Result<Option<Position>, FileError> {
    let text = match fs::read(checkpoint) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(FileError::io(
                format!("checkpoint {}", checkpoint.display()),
                err,
            ));
        }
    };
    // Starting over from byte 0 would also be safe (at-least-once), but it silently duplicates a
    // whole file of outputs; an operator should decide that.
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| FileError::CorruptCheckpoint {
            checkpoint: checkpoint.to_owned(),
            path: input.to_owned(),
            source,
        })
}

/// Durably replaces the checkpoint with `position`.
pub(crate) fn store(checkpoint: &Path, position: Position) -> io::Result<()> {
    let tmp = with_suffix(checkpoint, ".tmp");
    let mut file = fs::File::create(&tmp)?;
    let mut text = serde_json::to_vec(&position).map_err(io::Error::other)?;
    text.push(b'\n');
    file.write_all(&text)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, checkpoint)?;
    sync_parent(checkpoint)
}

/// Makes the rename itself durable: without it a power loss may bring back the old directory
/// entry (or none). Only Unix can open a directory to fsync it.
#[cfg(unix)]
fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::File::open(parent)?.sync_all()
}

#[cfg(not(unix))]
fn sync_parent(_path: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let cp = dir.path().join("in.jsonl.checkpoint");
        let input = dir.path().join("in.jsonl");
        assert_eq!(load(&cp, &input).unwrap(), None);
        let pos = Position {
            offset: 123,
            line: 4,
        };
        store(&cp, pos).unwrap();
        assert_eq!(load(&cp, &input).unwrap(), Some(pos));
        assert_eq!(
            fs::read_to_string(&cp).unwrap(),
            "{\"offset\":123,\"line\":4}\n"
        );
        assert!(!with_suffix(&cp, ".tmp").exists());
    }

    #[test]
    fn corrupt_checkpoint_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cp = dir.path().join("c");
        fs::write(&cp, b"{\"offset\":").unwrap();
        let err = load(&cp, Path::new("in.jsonl")).unwrap_err();
        assert!(matches!(err, FileError::CorruptCheckpoint { .. }));
        assert!(err.to_string().contains(&cp.display().to_string()), "{err}");
    }
}
