//! The `fnmill` command: `run`, `invoke`, `check`, `publish`, `replay`, and `new` / `build`
//! for writing functions.

mod cli;

use std::io::{Read, Write};
use std::num::{NonZeroU32, NonZeroU64};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use fnmill::app::StartError;
use fnmill::config::{self, ConfigError, FunctionConfig, Role, ValidatedConfig};
use fnmill::host::{Failure, Host, MAX_GUEST_MEMORY};
use fnmill_connector_api::Record;
use fnmill_connector_file::jsonl;
use tokio_util::sync::CancellationToken;

/// Runs WebAssembly functions on every event from Kafka, RabbitMQ or JSON Lines files.
///
/// Exit status of every command: 0 success; 1 a failure while running; 2 a usage or
/// configuration error, found before anything started (each problem is printed on its own line,
/// naming the flag or the config key).
#[derive(Parser)]
#[command(name = "fnmill", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the routes of a config until their sources end or a SIGTERM/Ctrl-C arrives.
    ///
    /// Exit status: 0 when every source ended (or shut down) with every event settled; 1 when
    /// a source or sink failed for good; 2 for a configuration error (nothing started); 3 when
    /// a shutdown abandoned events (they are delivered again after a restart).
    Run {
        /// The config file.
        #[arg(short, long, default_value = "fnmill.toml", env = "FNMILL_CONFIG")]
        config: PathBuf,
        /// What this process does: `all` (routes, functions and every pool), `compute` (routes
        /// and functions; data sources with a `remote` table through their IO tier), `io` (the
        /// pools of the data sources with a `remote` table, served over NATS).
        #[arg(long, value_enum, default_value_t = Role::All, env = "FNMILL_ROLE")]
        role: Role,
    },
    /// Run one event through one function, locally, and print its outputs as JSON Lines.
    ///
    /// A function of a config runs with that config's limits and granted data sources; a
    /// component file runs with the default limits of a function (`memory = "64MiB"`,
    /// `timeout = "5s"`, `max_outputs = 100`, `max_output_bytes = "4MiB"`). The flags override
    /// either.
    ///
    /// Exit status: 0 on success; on failure the failure class is printed on stderr and the
    /// status says which: 10 retryable, 11 fatal, 12 trap, 13 timeout, 14 fuel, 15 memory,
    /// 16 output-limit, 17 instantiation, 19 host fault; 2 for a usage or config error.
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
        /// The attempt number the function sees (1 = first delivery).
        #[arg(long, default_value = "1")]
        attempt: NonZeroU32,
        /// Wall-clock limit, e.g. `2s`.
        #[arg(long, value_parser = positive_duration)]
        timeout: Option<Duration>,
        /// Memory limit, e.g. `64MiB` (at least 64KiB, at most 4GiB).
        #[arg(long, value_parser = memory_size)]
        memory: Option<u64>,
        /// Fuel limit (about one unit per wasm instruction).
        #[arg(long)]
        fuel: Option<NonZeroU64>,
    },
    /// Validate a config and compile its components, without running anything: passes exactly
    /// when `fnmill run` would start. Warnings are printed but do not fail the check.
    Check {
        /// The config file.
        #[arg(short, long, default_value = "fnmill.toml", env = "FNMILL_CONFIG")]
        config: PathBuf,
        /// The role to check for, as `fnmill run --role` (`io` compiles no component).
        #[arg(long, value_enum, default_value_t = Role::All, env = "FNMILL_ROLE")]
        role: Role,
    },
    /// Put events on a Kafka topic, a RabbitMQ exchange or queue, or a JSON Lines file, each
    /// confirmed before it counts as sent.
    Publish(Box<cli::publish::PublishArgs>),
    /// Replay a range of a Kafka topic, dead letters or a JSON Lines file: to a topic, exchange,
    /// queue or file, back where dead letters came from, or through a function.
    Replay(Box<cli::replay::ReplayArgs>),
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
        /// Rust only: build for wasm32-wasip2, so the standard library's clocks, randomness and
        /// stdio work, at about 3 µs more per event (by default a Rust function is built for
        /// wasm32-unknown-unknown and imports only fnmill's interfaces).
        #[arg(long)]
        wasi: bool,
    },
}

/// Exit status for a usage or configuration error.
const EXIT_USAGE: u8 = 2;

/// Exit status of a run that a shutdown cut short, abandoning events.
const EXIT_ABANDONED: u8 = 3;

fn positive_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration ({e}); write e.g. 250ms, 2s"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

fn memory_size(text: &str) -> Result<u64, String> {
    let bytes = text
        .trim()
        .parse::<bytesize::ByteSize>()
        .map_err(|e| format!("`{text}` is not a size ({e}); write e.g. 64MiB"))?
        .as_u64();
    if bytes < 64 * 1024 {
        return Err("must be at least 64KiB (one wasm page)".into());
    }
    if bytes > MAX_GUEST_MEMORY {
        return Err("must be at most 4GiB, the most a 32-bit wasm guest can address".into());
    }
    Ok(bytes)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, role } => cmd_run(&config, role),
        Command::Check { config, role } => cmd_check(&config, role),
        Command::Publish(args) => cli::publish::run(*args),
        Command::Replay(args) => cli::replay::run(*args),
        Command::New {
            language,
            name,
            dir,
        } => cli::new::run(cli::new::NewArgs {
            language,
            name,
            dir,
        }),
        Command::Build { dir, out, wasi } => {
            cli::build::run(cli::build::BuildArgs { dir, out, wasi })
        }
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
            attempt: attempt.get(),
            timeout,
            memory,
            fuel: fuel.map(NonZeroU64::get),
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

fn load_config(path: &Path, role: Role) -> Result<ValidatedConfig> {
    let config = config::load_as(path, role)?;
    fnmill::telemetry::init(&config.telemetry);
    Ok(config)
}

fn cmd_run(path: &Path, role: Role) -> Result<ExitCode> {
    let config = load_config(path, role)?;
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;
    match fnmill::app::run(config, shutdown.clone()) {
        Ok(summary) => {
            let abandoned = summary.abandoned();
            if abandoned > 0 {
                tracing::warn!(
                    abandoned,
                    "Stopped with events abandoned; they are delivered again after a restart"
                );
                return Ok(ExitCode::from(EXIT_ABANDONED));
            }
            Ok(ExitCode::SUCCESS)
        }
        // Found before anything ran: the same status as an invalid config.
        Err(e) if e.downcast_ref::<StartError>().is_some() => Err(e),
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

fn cmd_check(path: &Path, role: Role) -> Result<ExitCode> {
    let config = load_config(path, role)?;
    if role == Role::Io {
        for w in config.warnings() {
            eprintln!("warning: {w}");
        }
        let served = config
            .data_sources
            .values()
            .filter(|d| d.remote().is_some())
            .count();
        println!(
            "ok (role io): {served} data source(s) served over NATS, grants of {} function(s)",
            config.functions.len()
        );
        println!(
            "telemetry: {}",
            fnmill::telemetry::Telemetry::describe(&config)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let host = Host::new(&fnmill::app::host_config(&config))?;
    let functions = fnmill::app::load_functions(&config, &host, None)?;
    for w in config.warnings() {
        eprintln!("warning: {w}");
    }
    println!(
        "ok: {} source(s), {} sink(s), {} function(s), {} route(s)",
        config.sources.len(),
        config.sinks.len(),
        functions.len(),
        config.routes.len()
    );
    println!(
        "telemetry: {}",
        fnmill::telemetry::Telemetry::describe(&config)
    );
    if role == Role::Compute {
        let remote = config
            .data_sources
            .values()
            .filter(|d| d.remote().is_some())
            .count();
        println!("role compute: {remote} data source(s) through their IO tier over NATS");
    }
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

impl InvokeArgs {
    /// The flags applied to a function's config.
    fn apply(&self, f: &mut FunctionConfig) -> Result<()> {
        if let Some(t) = self.timeout {
            f.timeout = t;
        }
        if let Some(m) = self.memory {
            f.memory = m;
        }
        if let Some(fuel) = self.fuel {
            f.fuel = Some(fuel);
        }
        for kv in &self.set {
            let Some((k, v)) = kv.split_once('=') else {
                bail!("--set expects KEY=VALUE, got `{kv}`");
            };
            f.config.insert(k.to_string(), v.to_string());
        }
        Ok(())
    }
}

fn cmd_invoke(args: InvokeArgs) -> Result<ExitCode> {
    let is_file = args.function.ends_with(".wasm") || Path::new(&args.function).is_file();
    let (config, name) = if is_file {
        fnmill::telemetry::init(&Default::default());
        let path = PathBuf::from(&args.function);
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| args.function.clone());
        let mut f = FunctionConfig::new(std::path::absolute(&path).unwrap_or(path));
        args.apply(&mut f)?;
        (
            ValidatedConfig::for_function(&name, f, Path::new("."))?,
            name,
        )
    } else {
        let mut raw = config::read(&args.config, std::env::vars())?;
        let Some(mut f) = raw.functions.remove(&args.function) else {
            bail!(
                "no function named `{}` in {} (and no such .wasm file)",
                args.function,
                args.config.display()
            );
        };
        args.apply(&mut f)?;
        // The function and what it needs (its data sources, the runtime and log settings),
        // checked by the same rules as under `run`; the config's sources, sinks and routes are
        // not this command's business.
        let config = config::Config {
            functions: [(args.function.clone(), f)].into(),
            sources: Default::default(),
            sinks: Default::default(),
            routes: Vec::new(),
            admin: Default::default(),
            ..raw
        }
        .validate()?;
        fnmill::telemetry::init(&config.telemetry);
        (config, args.function.clone())
    };

    let mut input = Vec::new();
    if args.event == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut input)
            .context("reading the event from stdin")?;
    } else {
        input = std::fs::read(&args.event)
            .with_context(|| format!("--event: cannot read {}", args.event.display()))?;
    }
    let event = jsonl::parse_event(&input)
        .with_context(|| format!("--event: {}", args.event.display()))?
        .into_event("invoke", || "invoke-1".to_string(), vec![]);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // One thread serves both sides here: the pools' work runs while `block_on` waits for it.
    // One instance at a time: a pool sized for one.
    let local = fnmill::app::local_function(&config, &name, 1, rt.handle())?;
    match rt.block_on(local.function.invoke(&event, args.attempt)) {
        Ok(outputs) => {
            let mut out = Vec::new();
            for o in outputs {
                let record = Record {
                    target: None,
                    key: o.key,
                    payload: o.payload,
                    headers: o.headers,
                };
                jsonl::write_output(&o.destination, &record, &mut out);
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
        Failure::Decode(_) => 18,
        Failure::Host(_) => 19,
    }
}
