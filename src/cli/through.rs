//! `replay --through`: runs events through a function locally. The function is loaded the way
//! `fnmill invoke` loads it — a component file with default limits, or a function of the config
//! with its limits, its `config` values and the data sources and buckets it is granted — all in
//! [`load`], the one place to re-point when the wiring of functions changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use fnmill::config::Config;
use fnmill::host::{DataSources, Function, FunctionSpec, Grants, Host, HostConfig, Limits};
use fnmill_connector_api::Record;
use fnmill_connector_file::jsonl;

use super::endpoint::known;

/// Instances of the function alive at once: replay runs one event at a time (order), so one
/// is enough; a second lets a timed-out instance be torn down while the next starts.
const INSTANCES: u32 = 2;

/// A loaded function and what keeps it working (the host's epoch ticker, the pools).
pub struct Through {
    pub function: Arc<Function>,
    _host: Host,
    _data: Option<DataSources>,
}

/// Loads `function`: a `.wasm` component file, or the name of a function of `config`. The
/// data sources' work runs on `io`.
pub fn load(
    function: &str,
    config: Option<&Config>,
    io: &tokio::runtime::Handle,
) -> Result<Through> {
    if function.ends_with(".wasm") || Path::new(function).is_file() {
        if !Path::new(function).is_file() {
            bail!("--through: no component file at {function}");
        }
        let limits = Limits {
            memory_bytes: 64 * 1024 * 1024,
            timeout: Duration::from_secs(5),
            fuel: None,
            max_outputs: 10_000,
            max_output_bytes: 64 * 1024 * 1024,
        };
        let host = Host::new(&HostConfig {
            max_instances: INSTANCES,
            max_memory_bytes: limits.memory_bytes,
            fuel: false,
            cache_dir: Some(fnmill::host::default_cache_dir()),
        })?;
        let spec = FunctionSpec {
            name: Path::new(function)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| function.to_string()),
            component: PathBuf::from(function),
            limits,
            config: Default::default(),
        };
        let function = host
            .load(spec)
            .map_err(|e| anyhow::anyhow!("--through: {e}"))?;
        return Ok(Through {
            function: Arc::new(function),
            _host: host,
            _data: None,
        });
    }
    let Some(config) = config else {
        bail!(
            "--through: `{function}` is not a component file; to name a function of a config, \
             give --config"
        );
    };
    let Some(f) = config.functions.get(function) else {
        bail!(
            "--through: no function named `{function}` in the config{} (and no such .wasm file)",
            known(config.functions.keys())
        );
    };
    let spec = FunctionSpec {
        name: function.to_string(),
        component: config.resolve(&f.component),
        limits: Limits {
            memory_bytes: f.memory,
            timeout: f.timeout,
            fuel: f.fuel,
            max_outputs: f.max_outputs,
            max_output_bytes: f.max_output_bytes,
        },
        config: f.config.clone(),
    };
    let mut host_config = fnmill::app::host_config(config);
    host_config.max_instances = INSTANCES;
    let host = Host::new(&host_config)?;
    let grants = Grants {
        data_sources: f.data_sources.iter().cloned().collect(),
        buckets: f.buckets.iter().cloned().collect(),
    };
    let (function, data) = if grants.data_sources.is_empty() && grants.buckets.is_empty() {
        (host.load(spec)?, None)
    } else {
        let _entered = io.enter();
        let data = fnmill::app::build_data_sources(config, io.clone())?;
        (host.load_with(spec, &data, &grants)?, Some(data))
    };
    Ok(Through {
        function: Arc::new(function),
        _host: host,
        _data: data,
    })
}

/// One output as a JSON line, as `fnmill invoke` prints it: the JSON Lines record form with
/// its `destination` first.
pub fn output_line(destination: &str, record: &Record, out: &mut Vec<u8>) {
    let mut line = Vec::new();
    jsonl::write_record(record, &mut line);
    let name = serde_json::to_string(destination).expect("a string serializes");
    out.extend_from_slice(b"{\"destination\":");
    out.extend_from_slice(name.as_bytes());
    let rest = &line[1..];
    if !rest.starts_with(b"}") {
        out.push(b',');
    }
    out.extend_from_slice(rest);
}
