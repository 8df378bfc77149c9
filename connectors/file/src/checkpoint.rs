//! The checkpoint file: how far into which input file every line is settled, as
//! `{"offset":…,"line":…,"file":{"dev":…,"ino":…,"fingerprint":"…","fingerprint_len":…}}`.
//!
//! `file` identifies the input the position belongs to, so that a restart after the file was
//! truncated, rewritten or rotated does not resume in the middle of some other content: the
//! device and inode name the file, a hash of its first bytes tells a file truncated and
//! rewritten in place from the one that was checkpointed. (A checkpoint written before `file`
//! existed has none, and is trusted as far as the file is long.)
//!
//! It is replaced atomically (write a temporary file, fsync, rename, fsync the directory), so
//! after a crash it holds either the previous or the new position, never a torn one. A lock file
//! next to it keeps a second fnmill from reading the same input with the same checkpoint.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::FileError;

/// How many leading bytes of a file its fingerprint hashes: enough to tell two files of JSON
/// Lines apart (their first event), few enough to read in one call.
pub(crate) const FINGERPRINT_BYTES: u64 = 1024;

/// Which file a position is in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    /// SHA-256 (first 16 bytes, hex) of the file's first `fingerprint_len` bytes.
    pub fingerprint: String,
    /// How many bytes the fingerprint covers: [`FINGERPRINT_BYTES`], or the whole file when it
    /// was shorter (then the fingerprint is refreshed as the file grows).
    pub fingerprint_len: u64,
}

impl FileIdentity {
    /// The identity of an open file, from `fstat` and its first bytes.
    pub(crate) fn of(file: &fs::File) -> io::Result<Self> {
        let meta = file.metadata()?;
        let (dev, ino) = dev_ino(&meta);
        let len = meta.len().min(FINGERPRINT_BYTES);
        Ok(Self {
            dev,
            ino,
            fingerprint: fingerprint(file, len)?,
            fingerprint_len: len,
        })
    }

    /// Whether `file` is the file this identity was taken of: the same device and inode, and
    /// the same first bytes (a file truncated and rewritten in place keeps its inode).
    pub(crate) fn matches(&self, file: &fs::File) -> io::Result<bool> {
        let meta = file.metadata()?;
        if dev_ino(&meta) != (self.dev, self.ino) || meta.len() < self.fingerprint_len {
            return Ok(false);
        }
        Ok(fingerprint(file, self.fingerprint_len)? == self.fingerprint)
    }

    /// Whether the fingerprint covers fewer than [`FINGERPRINT_BYTES`] (the file was shorter).
    pub(crate) fn is_weak(&self) -> bool {
        self.fingerprint_len < FINGERPRINT_BYTES
    }
}

#[cfg(unix)]
fn dev_ino(meta: &fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn dev_ino(_meta: &fs::Metadata) -> (u64, u64) {
    (0, 0)
}

fn fingerprint(file: &fs::File, len: u64) -> io::Result<String> {
    let mut head = vec![0; len as usize];
    read_exact_at(file, &mut head, 0)?;
    let digest = Sha256::digest(&head);
    Ok(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(unix)]
fn read_exact_at(file: &fs::File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_exact_at(file: &fs::File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::io::{Read as _, Seek as _};
    let mut f = file.try_clone()?;
    f.seek(io::SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

/// Whether the byte just before `offset` in `file` is a newline, i.e. `offset` starts a line.
pub(crate) fn starts_a_line(file: &fs::File, offset: u64) -> io::Result<bool> {
    if offset == 0 {
        return Ok(true);
    }
    let mut byte = [0];
    read_exact_at(file, &mut byte, offset - 1)?;
    Ok(byte[0] == b'\n')
}

/// What the checkpoint file holds: everything before `offset` (lines `1..=line`) of `file` is
/// settled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Checkpoint {
    /// Byte offset in the input file.
    pub offset: u64,
    /// Number of lines before `offset`, so the next line read is `line + 1`.
    pub line: u64,
    /// The file the position is in; `None` in checkpoints written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileIdentity>,
}

/// `<path><suffix>`, keeping whatever `path` ends with (`a.jsonl` → `a.jsonl.checkpoint`).
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// Reads the checkpoint of `input`; `None` when there is none yet.
pub(crate) fn load(checkpoint: &Path, input: &Path) -> Result<Option<Checkpoint>, FileError> {
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
pub(crate) fn store(checkpoint: &Path, position: &Checkpoint) -> io::Result<()> {
    if let Some(parent) = checkpoint.parent()
        && !parent.as_os_str().is_empty()
    {
        fs::create_dir_all(parent)?;
    }
    let tmp = with_suffix(checkpoint, ".tmp");
    let mut file = fs::File::create(&tmp)?;
    let mut text = serde_json::to_vec(position).map_err(io::Error::other)?;
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

/// An exclusive advisory lock on `<checkpoint>.lock`, held for as long as the value lives: two
/// fnmill processes reading one input with one checkpoint would each process every line (and
/// each overwrite the other's checkpoint).
#[derive(Debug)]
pub(crate) struct Lock {
    _file: fs::File,
}

impl Lock {
    pub(crate) fn acquire(checkpoint: &Path, input: &Path) -> Result<Self, FileError> {
        let path = with_suffix(checkpoint, ".lock");
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            fs::create_dir_all(parent)
                .map_err(|e| FileError::io(format!("creating {}", parent.display()), e))?;
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| FileError::io(format!("lock file {}", path.display()), e))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(FileError::Locked {
                path: input.to_owned(),
                lock: path,
            }),
            Err(fs::TryLockError::Error(e)) => {
                Err(FileError::io(format!("locking {}", path.display()), e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_then_load_round_trips_and_reads_the_old_form() {
        let dir = tempfile::tempdir().unwrap();
        let cp = dir.path().join("in.jsonl.checkpoint");
        let input = dir.path().join("in.jsonl");
        assert_eq!(load(&cp, &input).unwrap(), None);
        fs::write(&input, b"{}\n").unwrap();
        let identity = FileIdentity::of(&fs::File::open(&input).unwrap()).unwrap();
        let pos = Checkpoint {
            offset: 3,
            line: 1,
            file: Some(identity),
        };
        store(&cp, &pos).unwrap();
        assert_eq!(load(&cp, &input).unwrap(), Some(pos));
        assert!(!with_suffix(&cp, ".tmp").exists());
        fs::write(&cp, "{\"offset\":123,\"line\":4}\n").unwrap();
        assert_eq!(
            load(&cp, &input).unwrap(),
            Some(Checkpoint {
                offset: 123,
                line: 4,
                file: None
            })
        );
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

    #[test]
    fn identity_tells_appended_from_rewritten_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"{\"id\":1}\n").unwrap();
        let id = FileIdentity::of(&fs::File::open(&path).unwrap()).unwrap();
        assert!(id.is_weak());
        // Appending keeps it.
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"id\":2}\n").unwrap();
        assert!(id.matches(&fs::File::open(&path).unwrap()).unwrap());
        // Rewriting in place (same inode) does not.
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(0).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"{\"id\":9}\n", 0).unwrap();
        assert!(!id.matches(&fs::File::open(&path).unwrap()).unwrap());
        // A new file by the same name does not either.
        let id = FileIdentity::of(&fs::File::open(&path).unwrap()).unwrap();
        fs::rename(&path, dir.path().join("f.1")).unwrap();
        fs::write(&path, b"{\"id\":9}\n").unwrap();
        assert!(!id.matches(&fs::File::open(&path).unwrap()).unwrap());
        assert!(
            id.matches(&fs::File::open(dir.path().join("f.1")).unwrap())
                .unwrap()
        );
    }

    #[test]
    fn a_second_lock_is_refused_and_released_with_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let cp = dir.path().join("c");
        let input = dir.path().join("in");
        let first = Lock::acquire(&cp, &input).unwrap();
        let err = Lock::acquire(&cp, &input).unwrap_err();
        assert!(matches!(err, FileError::Locked { .. }), "{err}");
        drop(first);
        Lock::acquire(&cp, &input).unwrap();
    }
}
