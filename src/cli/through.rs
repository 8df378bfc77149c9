//! `replay --through`: runs events through a function locally. The function is loaded the way
//! `fnmill invoke` loads it — a component file with default limits, or a function of the config
//! with its limits, its `config` values and the data sources and buckets it is granted — all in
//! [`load`], the one place to re-point when the wiring of functions changes.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail};
use fnmill::app::LocalFunction;
use fnmill::config::{FunctionConfig, ValidatedConfig};
use fnmill::host::Function;
use fnmill_connector_api::Record;
use fnmill_connector_file::jsonl;

use super::endpoint::known;

/// Instances of the function alive at once: replay runs one event at a time (order), so one
/// is enough; a second lets a timed-out instance be torn down while the next starts.
const INSTANCES: u32 = 2;

/// A loaded function and what keeps it working (the host's epoch ticker, the pools).
pub struct Through {
    pub function: Arc<Function>,
    _local: LocalFunction,
}

/// Loads `function`: a `.wasm` component file (with a function's default limits), or the name
/// of a function of `config` (with its limits, config and grants) — through the same wiring as
/// `fnmill run` and `fnmill invoke`. The data sources' work runs on `io`.
pub fn load(
    function: &str,
    config: Option<&ValidatedConfig>,
    io: &tokio::runtime::Handle,
) -> Result<Through> {
    let local = if function.ends_with(".wasm") || Path::new(function).is_file() {
        let path = Path::new(function);
        if !path.is_file() {
            bail!("--through: no component file at {function}");
        }
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| function.to_string());
        let component = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let config =
            ValidatedConfig::for_function(&name, FunctionConfig::new(component), Path::new("."))
                .map_err(|e| anyhow::anyhow!("--through: {e}"))?;
        fnmill::app::local_function(&config, &name, INSTANCES, io)?
    } else {
        let Some(config) = config else {
            bail!(
                "--through: `{function}` is not a component file; to name a function of a config, \
                 give --config"
            );
        };
        if !config.functions.contains_key(function) {
            bail!(
                "--through: no function named `{function}` in the config{} (and no such .wasm file)",
                known(config.functions.keys())
            );
        }
        fnmill::app::local_function(config, function, INSTANCES, io)?
    };
    Ok(Through {
        function: local.function.clone(),
        _local: local,
    })
}

/// One output as a JSON line, as `fnmill invoke` prints it: the JSON Lines record form with
/// its `destination` first.
pub fn output_line(destination: &str, record: &Record, out: &mut Vec<u8>) {
    jsonl::write_output(destination, record, out);
}
