//! The `fnmill` command: `run`, `invoke`, `check`, and `new` / `build` for writing functions.

mod cli;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use fnmill::config::{self, Config, ConfigError};
use fnmill::host::{Failure, FunctionSpec, Grants, Host, HostConfig, Limits};
use fnmill_connector_api::Record;
use fnmill_connector_file::jsonl;
use tokio_util::sync::CancellationToken;

/// Runs WebAssembly functions on every event from Kafka, RabbitMQ or JSON Lines files.
#[derive(Parser)]
#[command(name = "fnmill", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the routes of a config until their sources end or a SIGTERM/Ctrl-C arrives.
    Run {
        /// The config file.
        #[arg(short, long, default_value = "fnmill.toml", env = "FNMILL_CONFIG")]
        config: PathBuf,
    },
    /// Run one event through one function, locally, and print its outputs as JSON Lines.
    ///
    /// Exit status: 0 on success; on failure the failure class is printed on stderr and the
    /// status says which: 10 retryable, 11 fatal, 12 trap, 13 timeout, 14 fuel, 15 memory,
    /// 16 output-limit, 17 instantiation; 2 for a usage or config error.
    Invoke {
        /// A component file (`.wasm`), or the name of a function in the config.
        function: String,
        /// The event as JSON (the JSON Lines form: id, key, payload | payload_text |
        /// payload_base64, headers, timestamp_ms), from a file or `-` for stdin.
        #[arg(short, long)]
        event: PathBuf,
        /// The config file, when FUNCTION names a function.
        #[arg(short, long, default_value = "fnmill.toml", env = "FNMILL_CONFIG")]
        config: PathBuf,
        /// A function config value, `KEY=VALUE`; repeatable. Overrides the config file's.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// The attempt number the function sees.
        #[arg(long, default_value_t = 1)]
        attempt: u32,
        /// Wall-clock limit for a component file (default 5s).
        #[arg(long)]
        timeout: Option<humantime::Duration>,
        /// Memory limit for a component file, e.g. 64MiB.
        #[arg(long)]
        memory: Option<bytesize::ByteSize>,
        /// Fuel limit for a component file.
        #[arg(long)]
        fuel: Option<u64>,
    },
    /// Validate a config and compile its components, without running anything.
    Check {
        /// The config file.
        #[arg(short, long, default_value = "fnmill.toml", env = "FNMILL_CONFIG")]
        config: PathBuf,
    },
    /// Write a ready function project: the function, its build file, a unit test, a sample
    /// event and an fnmill.toml that runs it on a JSON Lines file.
    ///
    /// Exit status: 0 written; 2 for a bad name or a directory that exists and is not empty.
    New {
        /// The function's language.
        #[arg(value_enum)]
        language: cli::new::Language,
        /// The project's name (lowercase letters, digits and `-`): its package name and its
        /// component's file name.
        name: String,
        /// Where to write it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build a function project into a component with its language's tool: cargo (Rust),
    /// componentize-js (JavaScript, TypeScript), componentize-py (Python).
    ///
    /// Writes dist/NAME.wasm. Exit status: 0 built; 1 the tool failed (its output says why);
    /// 2 not a project, or a tool is missing (the message says what to install).
    Build {
        /// The project directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Where to write the component (default: DIR/dist/NAME.wasm).
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
}

/// Exit status for a usage or configuration error.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => cmd_run(&config),
        Command::Check { config } => cmd_check(&config),
        Command::New {
            language,
            name,
            dir,
        } => cli::new::run(cli::new::NewArgs {
            language,
            name,
            dir,
        }),
        Command::Build { dir, out } => cli::build::run(cli::build::BuildArgs { dir, out }),
        Command::Invoke {
            function,
            event,
            config,
            set,
            attempt,
            timeout,
            memory,
            fuel,
        } => cmd_invoke(InvokeArgs {
            function,
            event,
            config,
            set,
            attempt,
            timeout: timeout.map(Into::into),
            memory: memory.map(|m| m.as_u64()),
            fuel,
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if let Some(ConfigError::Invalid(problems)) = e.downcast_ref::<ConfigError>() {
                eprintln!("error: invalid configuration:");
                for p in problems {
                    eprintln!("  {p}");
                }
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn load_config(path: &Path) -> Result<Config> {
    let config = config::load(path)?;
    fnmill::telemetry::init(&config.telemetry);
    Ok(config)
}

fn cmd_run(path: &Path) -> Result<ExitCode> {
    let config = load_config(path)?;
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;
    match fnmill::app::run(config, shutdown) {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "fnmill stopped with an error");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// SIGTERM and Ctrl-C cancel `shutdown`; a second Ctrl-C exits at once.
fn spawn_signal_handler(shutdown: CancellationToken) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal handler")?;
    std::thread::Builder::new()
        .name("fnmill-signals".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("installing the SIGTERM handler");
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("Interrupt received"),
                }
                shutdown.cancel();
                let _ = tokio::signal::ctrl_c().await;
                eprintln!("Second interrupt: exiting now");
                std::process::exit(130);
            })
        })?;
    Ok(())
}

fn cmd_check(path: &Path) -> Result<ExitCode> {
    let config = load_config(path)?;
    let host = Host::new(&fnmill::app::host_config(&config))?;
    let functions = fnmill::app::load_functions(&config, &host)?;
    println!(
        "ok: {} source(s), {} sink(s), {} function(s), {} route(s)",
        config.sources.len(),
        config.sinks.len(),
        functions.len(),
        config.routes.len()
    );
    Ok(ExitCode::SUCCESS)
}

struct InvokeArgs {
    function: String,
    event: PathBuf,
    config: PathBuf,
    set: Vec<String>,
    attempt: u32,
    timeout: Option<Duration>,
    memory: Option<u64>,
    fuel: Option<u64>,
}

fn cmd_invoke(args: InvokeArgs) -> Result<ExitCode> {
    // For a function of a config: the config and the function's grants, so its data sources
    // are served as in `fnmill run`.
    let mut granted: Option<(fnmill::config::Config, Grants)> = None;
    let (mut spec, host_config) =
        if args.function.ends_with(".wasm") || Path::new(&args.function).is_file() {
            fnmill::telemetry::init(&Default::default());
            let limits = Limits {
                memory_bytes: args.memory.unwrap_or(64 * 1024 * 1024),
                timeout: args.timeout.unwrap_or(Duration::from_secs(5)),
                fuel: args.fuel,
                max_outputs: 10_000,
                max_output_bytes: 64 * 1024 * 1024,
            };
            let host = HostConfig {
                max_instances: 1,
                max_memory_bytes: limits.memory_bytes,
                fuel: limits.fuel.is_some(),
                cache_dir: Some(fnmill::host::default_cache_dir()),
            };
            let spec = FunctionSpec {
                name: Path::new(&args.function)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| args.function.clone()),
                component: PathBuf::from(&args.function),
                limits,
                config: Default::default(),
            };
            (spec, host)
        } else {
            let config = load_config(&args.config)?;
            let Some(f) = config.functions.get(&args.function) else {
                bail!(
                    "no function named `{}` in {} (and no such .wasm file)",
                    args.function,
                    args.config.display()
                );
            };
            let spec = FunctionSpec {
                name: args.function.clone(),
                component: config.resolve(&f.component),
                limits: Limits {
                    memory_bytes: args.memory.unwrap_or(f.memory),
                    timeout: args.timeout.unwrap_or(f.timeout),
                    fuel: args.fuel.or(f.fuel),
                    max_outputs: f.max_outputs,
                    max_output_bytes: f.max_output_bytes,
                },
                config: f.config.clone(),
            };
            let mut host = fnmill::app::host_config(&config);
            host.max_instances = 1;
            host.max_memory_bytes = host.max_memory_bytes.max(spec.limits.memory_bytes);
            host.fuel |= spec.limits.fuel.is_some();
            if !f.data_sources.is_empty() || !f.buckets.is_empty() {
                let grants = Grants {
                    data_sources: f.data_sources.iter().cloned().collect(),
                    buckets: f.buckets.iter().cloned().collect(),
                };
                granted = Some((config, grants));
            }
            (spec, host)
        };
    for kv in &args.set {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--set expects KEY=VALUE, got `{kv}`");
        };
        spec.config.insert(k.to_string(), v.to_string());
    }

    let mut input = Vec::new();
    if args.event == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut input)
            .context("reading the event from stdin")?;
    } else {
        input = std::fs::read(&args.event)
            .with_context(|| format!("reading the event from {}", args.event.display()))?;
    }
    let event = jsonl::parse_event(&input)
        .with_context(|| format!("parsing the event in {}", args.event.display()))?
        .into_event("invoke", || "invoke-1".to_string(), vec![]);

    let host = Host::new(&host_config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // One thread serves both sides here: the pools' work runs while `block_on` waits for it.
    let function = match &granted {
        Some((config, grants)) => {
            let _entered = rt.enter();
            let data = fnmill::app::build_data_sources(config, rt.handle().clone())?;
            host.load_with(spec, &data, grants)?
        }
        None => host.load(spec)?,
    };
    match rt.block_on(function.invoke(&event, args.attempt)) {
        Ok(outputs) => {
            let mut out = Vec::new();
            for o in outputs {
                let record = Record {
                    target: None,
                    key: o.key,
                    payload: o.payload,
                    headers: o.headers,
                };
                write_output(&o.destination, &record, &mut out);
            }
            std::io::stdout().write_all(&out)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            eprintln!("error: {}: {}", failure.kind(), failure.message());
            Ok(ExitCode::from(exit_code(&failure)))
        }
    }
}

/// One output as a JSON line: the JSON Lines record form with its `destination` first.
fn write_output(destination: &str, record: &Record, out: &mut Vec<u8>) {
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

fn exit_code(failure: &Failure) -> u8 {
    match failure {
        Failure::Retryable(_) => 10,
        Failure::Fatal(_) => 11,
        Failure::Trap { .. } => 12,
        Failure::Timeout(_) => 13,
        Failure::Fuel(_) => 14,
        Failure::Memory(_) => 15,
        Failure::OutputLimit(_) => 16,
        Failure::Instantiation(_) => 17,
    }
}
