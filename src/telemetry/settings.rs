//! `[telemetry.traces]` and `[telemetry.metrics]`, and the standard `OTEL_*` environment
//! variables that fill in what the config leaves out, resolved once at validation into
//! [`TelemetrySettings`]: where spans and metrics go over OTLP, how, and how often.
//!
//! Precedence, per setting: the config key (itself overridable as `FNMILL__TELEMETRY__…`), then
//! the signal's own variable (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), then the general one
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`), then the default. `OTEL_SDK_DISABLED=true`,
//! `OTEL_TRACES_EXPORTER=none` and `OTEL_METRICS_EXPORTER=none` switch export off whatever the
//! config says. Every problem names the key or the variable it came from.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::config::Problem;

/// The wire protocol of an OTLP exporter.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC (port 4317 by convention).
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318 by convention): what the OpenTelemetry
    /// specification makes the default.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        })
    }
}

/// `[telemetry.traces]`: OpenTelemetry spans for every event, exported over OTLP. Without an
/// endpoint (here or in `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`)
/// no span is made at all.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracesConfig {
    /// The collector, e.g. `"http://otel-collector:4318"` (`http/protobuf`: spans are posted
    /// to `<endpoint>/v1/traces` unless the URL has a path of its own) or
    /// `"http://otel-collector:4317"` (`grpc`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `"http/protobuf"` (default) or `"grpc"`.
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// Fraction of the traces that *start* at fnmill to keep, 0.0 to 1.0 (default 1.0). An
    /// event that carries a `traceparent` follows its producer's decision (parent-based
    /// sampling), so a trace is kept or dropped whole.
    #[serde(default)]
    pub sample_ratio: Option<f64>,
    /// Longest time one export may take (default 10 s); spans that cannot be sent are dropped,
    /// never waited for by the events.
    #[serde(default, deserialize_with = "optional_duration")]
    pub timeout: Option<Duration>,
}

/// `[telemetry.metrics]`: the same metrics as `/metrics`, pushed over OTLP. Without an endpoint
/// (here or in the `OTEL_EXPORTER_OTLP_*` variables) metrics are only served on `/metrics`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// The collector, as for traces; metrics are posted to `<endpoint>/v1/metrics` over
    /// `http/protobuf`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `"http/protobuf"` (default) or `"grpc"`.
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// How often metrics are pushed (default 60 s, or `OTEL_METRIC_EXPORT_INTERVAL` in ms).
    #[serde(default, deserialize_with = "optional_duration")]
    pub interval: Option<Duration>,
    /// Longest time one push may take (default 10 s).
    #[serde(default, deserialize_with = "optional_duration")]
    pub timeout: Option<Duration>,
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    crate::config::duration(d).map(Some)
}

/// Where one signal goes over OTLP.
#[derive(Clone, Debug, PartialEq)]
pub struct Otlp {
    /// The full URL for `http/protobuf` (`…/v1/traces`), the server's URL for `grpc`.
    pub endpoint: String,
    pub protocol: Protocol,
    pub timeout: Duration,
    /// Request headers (`OTEL_EXPORTER_OTLP_HEADERS`), e.g. an API key. Never logged.
    pub headers: Vec<(String, String)>,
}

impl fmt::Display for Otlp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OTLP {} to {}", self.protocol, self.endpoint)
    }
}

/// Resolved tracing settings.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSettings {
    pub otlp: Otlp,
    /// Parent-based: applies to traces that start at fnmill.
    pub sample_ratio: f64,
}

/// Everything telemetry needs, resolved from the config and the environment.
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetrySettings {
    /// `service.name` of every span and metric.
    pub service_name: String,
    /// More resource attributes (`OTEL_RESOURCE_ATTRIBUTES`).
    pub resource: Vec<(String, String)>,
    /// `None`: tracing is off and costs nothing.
    pub traces: Option<TraceSettings>,
    /// `None`: metrics are not pushed (they may still be served on `/metrics`).
    pub metrics: Option<Otlp>,
    /// How often metrics are pushed.
    pub metrics_interval: Duration,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            service_name: DEFAULT_SERVICE_NAME.into(),
            resource: Vec::new(),
            traces: None,
            metrics: None,
            metrics_interval: DEFAULT_INTERVAL,
        }
    }
}

const DEFAULT_SERVICE_NAME: &str = "fnmill";
/// The OpenTelemetry specification's default export timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The OpenTelemetry specification's default metric export interval.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// A value and where it came from (a config key or an environment variable), for errors.
struct Found {
    value: String,
    from: String,
}

/// Reads the environment (tests pass a map).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn env_var(env: Env, name: &str) -> Option<Found> {
    env(name)
        .filter(|v| !v.trim().is_empty())
        .map(|value| Found {
            value: value.trim().to_string(),
            from: name.to_string(),
        })
}

/// The first of `config` (named `key`) and the variables `vars` that is set.
fn first(env: Env, key: &str, config: Option<String>, vars: &[&str]) -> Option<Found> {
    config
        .map(|value| Found {
            value,
            from: key.to_string(),
        })
        .or_else(|| vars.iter().find_map(|v| env_var(env, v)))
}

/// One signal's names: the config table and the variables' infix.
struct Signal {
    key: &'static str,
    var: &'static str,
    path: &'static str,
    exporter_var: &'static str,
}

const TRACES: Signal = Signal {
    key: "telemetry.traces",
    var: "TRACES",
    path: "/v1/traces",
    exporter_var: "OTEL_TRACES_EXPORTER",
};

const METRICS: Signal = Signal {
    key: "telemetry.metrics",
    var: "METRICS",
    path: "/v1/metrics",
    exporter_var: "OTEL_METRICS_EXPORTER",
};

/// The config section's own settings, as the resolution needs them.
struct SignalConfig {
    endpoint: Option<String>,
    protocol: Option<Protocol>,
    timeout: Option<Duration>,
}

/// Resolves `[telemetry]` and the environment; every problem names its key or variable.
pub fn resolve(
    config: &crate::config::TelemetryConfig,
    env: Env,
) -> Result<TelemetrySettings, Vec<Problem>> {
    let mut problems = Vec::new();
    let disabled = match env_var(env, "OTEL_SDK_DISABLED") {
        Some(f) => match f.value.to_ascii_lowercase().as_str() {
            "true" => true,
            "false" => false,
            _ => {
                problems.push(Problem::new(
                    f.from,
                    format!("`{}` is neither true nor false", f.value),
                ));
                false
            }
        },
        None => false,
    };
    let service_name = first(
        env,
        "telemetry.service_name",
        config.service_name.clone(),
        &["OTEL_SERVICE_NAME"],
    )
    .map_or_else(|| DEFAULT_SERVICE_NAME.to_string(), |f| f.value);
    if service_name.trim().is_empty() {
        problems.push(Problem::new("telemetry.service_name", "must not be empty"));
    }
    let resource = match env_var(env, "OTEL_RESOURCE_ATTRIBUTES") {
        Some(f) => match key_values(&f.value) {
            Ok(pairs) => pairs,
            Err(message) => {
                problems.push(Problem::new(f.from, message));
                Vec::new()
            }
        },
        None => Vec::new(),
    };

    let traces_config = SignalConfig {
        endpoint: config.traces.endpoint.clone(),
        protocol: config.traces.protocol,
        timeout: config.traces.timeout,
    };
    let traces = signal(&TRACES, &traces_config, env, &mut problems).filter(|_| !disabled);
    let sample_ratio = sample_ratio(config.traces.sample_ratio, env, &mut problems);
    let metrics_config = SignalConfig {
        endpoint: config.metrics.endpoint.clone(),
        protocol: config.metrics.protocol,
        timeout: config.metrics.timeout,
    };
    let metrics = signal(&METRICS, &metrics_config, env, &mut problems).filter(|_| !disabled);
    let metrics_interval = match config.metrics.interval {
        Some(i) if i.is_zero() => {
            problems.push(Problem::new(
                "telemetry.metrics.interval",
                "must be greater than zero",
            ));
            DEFAULT_INTERVAL
        }
        Some(i) => i,
        None => millis_var(env, "OTEL_METRIC_EXPORT_INTERVAL", &mut problems)
            .unwrap_or(DEFAULT_INTERVAL),
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(TelemetrySettings {
        service_name,
        resource,
        traces: traces.map(|otlp| TraceSettings { otlp, sample_ratio }),
        metrics,
        metrics_interval,
    })
}

fn sample_ratio(config: Option<f64>, env: Env, problems: &mut Vec<Problem>) -> f64 {
    let found = match config {
        Some(r) => Some((r, "telemetry.traces.sample_ratio".to_string())),
        None => {
            // Only the ratio samplers take a ratio; fnmill's sampler is always parent-based.
            let sampler = env_var(env, "OTEL_TRACES_SAMPLER").map(|f| f.value);
            match sampler.as_deref() {
                None | Some("parentbased_traceidratio" | "traceidratio") => {
                    match env_var(env, "OTEL_TRACES_SAMPLER_ARG") {
                        Some(f) => match f.value.parse::<f64>() {
                            Ok(r) => Some((r, f.from)),
                            Err(_) => {
                                problems.push(Problem::new(
                                    f.from,
                                    format!("`{}` is not a number", f.value),
                                ));
                                None
                            }
                        },
                        None => None,
                    }
                }
                Some("always_off" | "parentbased_always_off") => {
                    Some((0.0, "OTEL_TRACES_SAMPLER".into()))
                }
                Some("always_on" | "parentbased_always_on") => {
                    Some((1.0, "OTEL_TRACES_SAMPLER".into()))
                }
                Some(other) => {
                    problems.push(Problem::new(
                        "OTEL_TRACES_SAMPLER",
                        format!(
                            "`{other}` is not supported (fnmill samples parent-based: use \
                             parentbased_traceidratio, parentbased_always_on or parentbased_always_off)"
                        ),
                    ));
                    None
                }
            }
        }
    };
    match found {
        Some((r, _)) if (0.0..=1.0).contains(&r) => r,
        Some((r, from)) => {
            problems.push(Problem::new(
                from,
                format!("`{r}` is not between 0.0 and 1.0"),
            ));
            1.0
        }
        None => 1.0,
    }
}

/// Where one signal goes, or `None` when nothing says it should go anywhere.
fn signal(
    s: &Signal,
    config: &SignalConfig,
    env: Env,
    problems: &mut Vec<Problem>,
) -> Option<Otlp> {
    let exporter = env_var(env, s.exporter_var);
    if let Some(f) = &exporter {
        match f.value.as_str() {
            "none" => return None,
            // fnmill serves Prometheus on the admin port by itself; no push.
            "prometheus" if s.var == "METRICS" => return None,
            "otlp" => {}
            other => {
                problems.push(Problem::new(
                    f.from.clone(),
                    format!("`{other}` is not supported (otlp or none)"),
                ));
                return None;
            }
        }
    }
    let protocol_var = format!("OTEL_EXPORTER_OTLP_{}_PROTOCOL", s.var);
    let protocol = match config.protocol {
        Some(p) => p,
        None => match [protocol_var.as_str(), "OTEL_EXPORTER_OTLP_PROTOCOL"]
            .iter()
            .find_map(|v| env_var(env, v))
        {
            None => Protocol::default(),
            Some(f) => match f.value.as_str() {
                "grpc" => Protocol::Grpc,
                "http/protobuf" => Protocol::HttpProtobuf,
                other => {
                    problems.push(Problem::new(
                        f.from,
                        format!("`{other}` is not supported (grpc or http/protobuf)"),
                    ));
                    Protocol::default()
                }
            },
        },
    };
    let endpoint_key = format!("{}.endpoint", s.key);
    let signal_var = format!("OTEL_EXPORTER_OTLP_{}_ENDPOINT", s.var);
    let (found, general) = match first(env, &endpoint_key, config.endpoint.clone(), &[&signal_var])
    {
        Some(f) => (f, false),
        None => (env_var(env, "OTEL_EXPORTER_OTLP_ENDPOINT")?, true),
    };
    if let Err(message) = check_url(&found.value) {
        problems.push(Problem::new(found.from, message));
        return None;
    }
    let endpoint = match protocol {
        Protocol::Grpc => found.value,
        // The general variable is a base URL: each signal has its own path under it (the
        // specification's rule); a signal's own endpoint is taken as it is, unless it is only a
        // base URL too.
        Protocol::HttpProtobuf if general || !has_path(&found.value) => {
            format!("{}{}", found.value.trim_end_matches('/'), s.path)
        }
        Protocol::HttpProtobuf => found.value,
    };
    let timeout_var = format!("OTEL_EXPORTER_OTLP_{}_TIMEOUT", s.var);
    let timeout = match config.timeout {
        Some(t) if t.is_zero() => {
            problems.push(Problem::new(
                format!("{}.timeout", s.key),
                "must be greater than zero",
            ));
            DEFAULT_TIMEOUT
        }
        Some(t) => t,
        None => millis_var(env, &timeout_var, problems)
            .or_else(|| millis_var(env, "OTEL_EXPORTER_OTLP_TIMEOUT", problems))
            .unwrap_or(DEFAULT_TIMEOUT),
    };
    let headers_var = format!("OTEL_EXPORTER_OTLP_{}_HEADERS", s.var);
    let headers = match [headers_var.as_str(), "OTEL_EXPORTER_OTLP_HEADERS"]
        .iter()
        .find_map(|v| env_var(env, v))
    {
        None => Vec::new(),
        Some(f) => match key_values(&f.value) {
            Ok(pairs) => pairs,
            Err(message) => {
                problems.push(Problem::new(f.from, message));
                Vec::new()
            }
        },
    };
    Some(Otlp {
        endpoint,
        protocol,
        timeout,
        headers,
    })
}

fn check_url(text: &str) -> Result<(), String> {
    match url::Url::parse(text) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(u) => Err(format!(
            "`{text}` is not an http:// or https:// URL (scheme `{}`)",
            u.scheme()
        )),
        Err(e) => Err(format!("`{text}` is not a URL: {e}")),
    }
}

fn has_path(text: &str) -> bool {
    url::Url::parse(text).is_ok_and(|u| !matches!(u.path(), "" | "/"))
}

/// A duration in milliseconds from the variable `name`, if set.
fn millis_var(env: Env, name: &str, problems: &mut Vec<Problem>) -> Option<Duration> {
    let f = env_var(env, name)?;
    match f.value.parse::<u64>() {
        Ok(0) => {
            problems.push(Problem::new(f.from, "must be greater than zero"));
            None
        }
        Ok(ms) => Some(Duration::from_millis(ms)),
        Err(_) => {
            problems.push(Problem::new(
                f.from,
                format!("`{}` is not a whole number of milliseconds", f.value),
            ));
            None
        }
    }
}

/// `k=v,k2=v2` with percent-encoded values (the W3C baggage form the OTEL_* lists use).
/// Values are never echoed in an error: headers may hold API keys.
fn key_values(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (i, item) in text.split(',').enumerate() {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let Some((k, v)) = item.split_once('=') else {
            return Err(format!(
                "item {} has no `=` (expected key=value,key=value)",
                i + 1
            ));
        };
        let k = k.trim();
        if k.is_empty() {
            return Err(format!("item {} has an empty key", i + 1));
        }
        let v = url::form_urlencoded::parse(format!("v={}", v.trim()).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        out.insert(k.to_string(), v);
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TelemetryConfig;

    fn resolve_with(
        config: &TelemetryConfig,
        vars: &[(&str, &str)],
    ) -> Result<TelemetrySettings, Vec<Problem>> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        resolve(config, &|k| vars.get(k).cloned())
    }

    #[test]
    fn nothing_set_means_no_export() {
        let s = resolve_with(&TelemetryConfig::default(), &[]).unwrap();
        assert_eq!(s.traces, None);
        assert_eq!(s.metrics, None);
        assert_eq!(s.service_name, "fnmill");
    }

    #[test]
    fn the_general_endpoint_gets_each_signals_path_over_http() {
        let s = resolve_with(
            &TelemetryConfig::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
                ("OTEL_SERVICE_NAME", "orders"),
            ],
        )
        .unwrap();
        let t = s.traces.unwrap();
        assert_eq!(t.otlp.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(t.otlp.protocol, Protocol::HttpProtobuf);
        assert_eq!(t.sample_ratio, 1.0);
        assert_eq!(
            s.metrics.unwrap().endpoint,
            "http://collector:4318/v1/metrics"
        );
        assert_eq!(s.service_name, "orders");
    }

    #[test]
    fn the_config_wins_over_the_environment_and_grpc_keeps_the_url() {
        let mut c = TelemetryConfig::default();
        c.traces.endpoint = Some("http://jaeger:4317".into());
        c.traces.protocol = Some(Protocol::Grpc);
        c.traces.sample_ratio = Some(0.25);
        let s = resolve_with(
            &c,
            &[
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://elsewhere:4318/v1/traces",
                ),
                ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b,x=1"),
            ],
        )
        .unwrap();
        let t = s.traces.unwrap();
        assert_eq!(t.otlp.endpoint, "http://jaeger:4317");
        assert_eq!(t.sample_ratio, 0.25);
        assert_eq!(
            t.otlp.headers,
            vec![
                ("api-key".to_string(), "a b".to_string()),
                ("x".into(), "1".into())
            ]
        );
        // Metrics have no endpoint of their own here.
        assert_eq!(s.metrics, None);
    }

    #[test]
    fn switches_turn_export_off() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ];
        let s = resolve_with(&TelemetryConfig::default(), &vars).unwrap();
        assert!(s.traces.is_some());
        assert_eq!(s.metrics, None);
        let s = resolve_with(
            &TelemetryConfig::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "true"),
            ],
        )
        .unwrap();
        assert_eq!((s.traces, s.metrics), (None, None));
    }

    #[test]
    fn every_problem_names_its_key_or_variable() {
        let mut c = TelemetryConfig::default();
        c.traces.endpoint = Some("collector:4317".into());
        c.traces.sample_ratio = Some(1.5);
        c.metrics.interval = Some(Duration::ZERO);
        let problems = resolve_with(
            &c,
            &[
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "ftp://x"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
            ],
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "telemetry.traces.endpoint",
            "telemetry.traces.sample_ratio",
            "telemetry.metrics.interval",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            assert!(keys.contains(&key), "{key} missing from {problems:?}");
        }
        let c = TelemetryConfig::default();
        let problems = resolve_with(
            &c,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "secret-token-without-equals"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
            ],
        )
        .unwrap_err();
        let text = format!("{problems:?}");
        assert!(text.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{text}");
        assert!(
            !text.contains("secret-token"),
            "a header value was echoed: {text}"
        );
        assert!(text.contains("OTEL_EXPORTER_OTLP_TIMEOUT"), "{text}");
    }
}
