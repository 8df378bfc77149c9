//! Replays every input the fuzz targets keep (`fuzz/seeds/<target>/`, hand-written, and
//! `fuzz/corpus/<target>/`, minimized from fuzzing runs) through the same checks the targets run,
//! on stable Rust, so a change that breaks one of them fails the suite without a fuzzer.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// Every file of the seeds and corpus of `target`, in a stable order.
fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for kind in ["seeds", "corpus"] {
        let dir = root.join(kind).join(target);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        let before = files.len();
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_file() {
                files.push(path);
            }
        }
        assert!(files.len() > before, "{} holds no input", dir.display());
    }
    files.sort();
    files
}

/// Runs `check` on every input of `target`; fails listing each input that breaks a property or
/// panics, not just the first.
fn replay(target: &str, check: impl Fn(&[u8]) -> Result<(), String>) {
    let inputs = inputs(target);
    let mut failures = Vec::new();
    for path in &inputs {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match catch_unwind(AssertUnwindSafe(|| check(&data))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("{}: {e}", path.display())),
            Err(_) => failures.push(format!("{}: panicked (message above)", path.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} {target} inputs fail:\n{}",
        failures.len(),
        inputs.len(),
        failures.join("\n")
    );
}

#[test]
fn jsonl_event_inputs_round_trip() {
    replay(
        "jsonl_event",
        fnmill_connector_file::fuzzing::check_jsonl_line,
    );
}

#[test]
fn config_load_inputs_load_or_name_their_keys() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    fnmill::fuzzing::prepare_config_dir(dir.path()).expect("filling the folder");
    replay("config_load", |data| {
        fnmill::fuzzing::check_config(data, dir.path())
    });
}
