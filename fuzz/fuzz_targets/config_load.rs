//! A config file: arbitrary TOML text, with `#env NAME=VALUE` comment lines as `FNMILL__…`
//! overrides. Loading gives a config or an error of one line per problem, each naming its key.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// A private folder per fuzzing process with the files configs may name; relative paths in the
/// fuzzed configs resolve inside it.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fnmill-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the fuzzing folder");
        fnmill::fuzzing::prepare_config_dir(&dir).expect("filling the fuzzing folder");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    if let Err(e) = fnmill::fuzzing::check_config(data, dir()) {
        panic!("{e}");
    }
});
