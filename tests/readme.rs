//! The README's local commands run as shown: every ```` ```sh readme-test ```` block (the
//! quickstart, `check`, `invoke` on one event, the `orders-enrich` example against the
//! suite's PostgreSQL and Redis) runs with bash from the repository's root and exits 0.
//! `cargo run -- ARGS` runs this build's `fnmill` with ARGS (a nested `cargo run` would wait
//! for the lock the test run holds).

use fnmill_testkit::common;

use std::path::Path;
use std::process::Command;

/// The README's `readme-test` blocks, in order, with the line each starts on.
fn blocks(readme: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in readme.lines().enumerate() {
        match &mut current {
            None if line.trim() == "```sh readme-test" => current = Some((i + 1, String::new())),
            None => {}
            Some(_) if line.trim() == "```" => out.push(current.take().unwrap()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    out
}

/// Outputs the examples write into the repository, removed before and after, and the
/// `orders-enrich` example's dedup marks in Redis (it would skip every event seen before).
fn clean(root: &Path) {
    for dir in ["examples/quickstart", "examples/orders-enrich"] {
        let _ = std::fs::remove_dir_all(root.join(dir).join("out"));
        for f in ["input.jsonl.checkpoint", "input.jsonl.checkpoint.lock"] {
            let _ = std::fs::remove_file(root.join(dir).join(f));
        }
    }
    let _ = Command::new("bash")
        .args([
            "-c",
            "redis-cli --scan --pattern 'orders-enrich:dedup:*' | xargs -r redis-cli del",
        ])
        .output();
}

#[test]
fn the_readme_local_commands_run_as_shown() {
    let root = common::root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks = blocks(&readme);
    assert!(
        blocks.len() >= 3,
        "too few readme-test blocks: {}",
        blocks.len()
    );
    let shim = format!(
        r#"cargo() {{
  if [ "$1" = run ]; then
    while [ $# -gt 0 ] && [ "$1" != -- ]; do shift; done
    shift
    "{fnmill}" "$@"
  else
    command cargo "$@"
  fi
}}
export -f cargo
"#,
        fnmill = env!("CARGO_BIN_EXE_fnmill")
    );
    clean(&root);
    let mut failed = Vec::new();
    for (line, block) in &blocks {
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c"])
            .arg(format!("{shim}{block}"))
            .current_dir(&root)
            .env("XDG_CACHE_HOME", root.join("target").join("test-cache"))
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .unwrap();
        if !out.status.success() {
            failed.push(format!(
                "README.md line {line}: {}\n{block}\nstdout:\n{}\nstderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let enriched = common::count_lines(&root.join("examples/orders-enrich/out/enriched.jsonl"));
    let valid = common::count_lines(&root.join("examples/quickstart/out/valid.jsonl"));
    clean(&root);
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
    assert!(valid > 0, "the quickstart wrote no valid orders");
    assert!(enriched > 0, "orders-enrich wrote no enriched orders");
}
