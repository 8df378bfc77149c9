//! The image, the local stack and the Kubernetes manifests, checked without Docker or a
//! cluster: the Dockerfile and `docker-compose.yml` agree with the config fnmill runs in the
//! stack (which passes `fnmill check`); the Kustomize trees under `deploy/` render (the
//! kustomize library, as `kustomize build` does), every object decodes strictly into the
//! Kubernetes or KEDA API types (deploy/validate, a Go program), misspelt fields and bad bounds
//! fail, the ConfigMaps' configs pass `fnmill check`, and the probes ask what `fnmill run`
//! serves.

use fnmill_testkit::common;
mod stack_support;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::{fnmill, quickstart_component, root, wait_until};
use fnmill::config::{SinkConfig, SourceConfig, load_with_env};
use fnmill_connector_api::connection::Connected;
use serde_yaml::Value;
use stack_support::{compose, dotenv, service_env, stack_config, stack_topics};

/// The admin port of a config's `[admin] listen`.
fn admin_port(config: &fnmill::config::Config) -> u16 {
    config
        .admin
        .listen
        .expect("the config has no [admin] listen")
        .port()
}

/// The environment fnmill gets in the stack, plus the example components where the image has
/// them (/opt/fnmill/functions), so the config loads on the host.
fn stack_env() -> Vec<(String, String)> {
    let mut env = service_env(&compose(), "fnmill");
    // The config reads the database URL from ORDERS_DB_URL when it loads (`url_env`), in this
    // process too: set it once, to the stack's value.
    static SET: std::sync::Once = std::sync::Once::new();
    let url = env
        .iter()
        .find(|(k, _)| k == "ORDERS_DB_URL")
        .unwrap()
        .1
        .clone();
    // SAFETY: only std reads the environment in this test binary (no C library that calls
    // getenv on other threads), and std serializes its own accesses.
    SET.call_once(|| unsafe { std::env::set_var("ORDERS_DB_URL", url) });
    env.extend(component_overrides());
    env
}

fn components_dir() -> PathBuf {
    quickstart_component().parent().unwrap().to_path_buf()
}

fn component_overrides() -> Vec<(String, String)> {
    let dir = components_dir();
    vec![
        (
            "FNMILL__FUNCTIONS__QUICKSTART__COMPONENT".into(),
            dir.join("quickstart_orders.wasm").display().to_string(),
        ),
        (
            "FNMILL__FUNCTIONS__ORDERS_ENRICH__COMPONENT".into(),
            dir.join("orders_enrich.wasm").display().to_string(),
        ),
    ]
}

fn check(config: &Path, env: &[(String, String)]) -> Output {
    check_as(config, "all", env)
}

/// `fnmill check --role role -c config`, which must pass.
fn check_as(config: &Path, role: &str, env: &[(String, String)]) -> Output {
    let out = fnmill()
        .args(["check", "--role", role, "-c"])
        .arg(config)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fnmill check -c {} failed:\n{}{}",
        config.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn compose_services_have_health_checks_and_start_in_order() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    let names: Vec<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    for s in [
        "fnmill",
        "kafka",
        "kafka-init",
        "rabbitmq",
        "postgres",
        "db-init",
        "redis",
        "jaeger",
        "prometheus",
    ] {
        assert!(names.contains(&s), "no service {s} in {names:?}");
    }
    // Every long-running service but Jaeger (whose image has no shell or HTTP client) has a
    // health check; fnmill's comes from the image (Dockerfile HEALTHCHECK), timed by compose.
    for s in ["kafka", "rabbitmq", "postgres", "redis", "prometheus"] {
        assert!(
            compose["services"][s]["healthcheck"]["test"].is_sequence(),
            "{s} has no healthcheck test"
        );
    }
    assert!(compose["services"]["fnmill"]["healthcheck"]["interval"].is_string());
    let depends = |service: &str| -> BTreeMap<String, String> {
        compose["services"][service]["depends_on"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{service} has no depends_on map"))
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().unwrap().to_string(),
                    v["condition"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let fnmill = depends("fnmill");
    assert_eq!(fnmill["kafka-init"], "service_completed_successfully");
    assert_eq!(fnmill["db-init"], "service_completed_successfully");
    assert_eq!(fnmill["rabbitmq"], "service_healthy");
    assert_eq!(fnmill["redis"], "service_healthy");
    assert_eq!(depends("kafka-init")["kafka"], "service_healthy");
    assert_eq!(depends("db-init")["postgres"], "service_healthy");
    assert_eq!(depends("prometheus")["fnmill"], "service_healthy");
    // The schema db-init loads is the example's.
    let volumes = compose["services"]["db-init"]["volumes"]
        .as_sequence()
        .unwrap();
    assert!(volumes.iter().any(|v| {
        v.as_str()
            .unwrap()
            .starts_with("./examples/orders-enrich/schema.sql:")
    }));
    // Shutdown: compose waits longer than fnmill's own grace period.
    let config = load_with_env(&stack_config(), stack_env()).unwrap_or_else(|e| panic!("{e}"));
    let stop = humantime::parse_duration(
        compose["services"]["fnmill"]["stop_grace_period"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(stop > config.runtime.shutdown_grace, "{stop:?}");
}

#[test]
fn every_port_and_credential_comes_from_dotenv() {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let raw: Value = serde_yaml::from_str(&text).unwrap();
    let env = dotenv();
    for (name, service) in raw["services"].as_mapping().unwrap() {
        for port in service["ports"].as_sequence().into_iter().flatten() {
            let port = port.as_str().unwrap();
            let host = port.split(':').next().unwrap();
            assert!(
                host.starts_with("${") && env.contains_key(&host[2..host.len() - 1]),
                "{}: published port {port:?} is not a .env variable",
                name.as_str().unwrap()
            );
        }
    }
    // No credential is written into the compose file: passwords and the userinfo of URLs are
    // .env variables.
    for secret in ["POSTGRES_PASSWORD", "RABBITMQ_PASSWORD"] {
        assert!(env.contains_key(secret), ".env has no {secret}");
    }
    for (name, service) in raw["services"].as_mapping().unwrap() {
        for (key, value) in service["environment"].as_mapping().into_iter().flatten() {
            let (key, value) = (key.as_str().unwrap(), value.as_str().unwrap_or_default());
            let what = format!("{}: {key}", name.as_str().unwrap());
            if key.contains("PASS") {
                assert!(value.starts_with("${") && value.ends_with('}'), "{what}");
            }
            if let Some((_, rest)) = value.split_once("://")
                && let Some((userinfo, _)) = rest.split_once('@')
            {
                for part in userinfo.split(':') {
                    assert!(part.starts_with("${") && part.ends_with('}'), "{what}");
                }
            }
        }
    }
}

#[test]
fn the_stack_config_passes_check_with_the_stack_environment() {
    let env = stack_env();
    // Every FNMILL__ variable names a real key (an unknown key fails the load), and the
    // addresses are the stack's, not the file's.
    let config = load_with_env(&stack_config(), env.clone()).unwrap_or_else(|e| panic!("{e}"));
    for (name, source) in &config.sources {
        match source {
            SourceConfig::Kafka(k) => assert_eq!(k.brokers, "kafka:19092", "sources.{name}"),
            SourceConfig::Amqp(a) => assert!(
                a.connection()
                    .url(None)
                    .unwrap()
                    .expose()
                    .contains("@rabbitmq:5672/"),
                "sources.{name}"
            ),
            SourceConfig::File(_) => panic!("sources.{name}: a file source in the stack"),
        }
    }
    for (name, sink) in &config.sinks {
        match sink {
            SinkConfig::Kafka(k) => assert_eq!(k.brokers, "kafka:19092", "sinks.{name}"),
            SinkConfig::Amqp(a) => assert!(
                a.connection()
                    .url(None)
                    .unwrap()
                    .expose()
                    .contains("@rabbitmq:5672/"),
                "sinks.{name}"
            ),
            SinkConfig::File(_) => panic!("sinks.{name}: a file sink in the stack"),
        }
    }
    assert_eq!(config.routes.len(), 3);
    check(&stack_config(), &env);
}

#[test]
fn kafka_init_creates_every_topic_the_stack_uses() {
    let compose = compose();
    let topics = stack_topics(&compose);
    let config = load_with_env(&stack_config(), stack_env()).unwrap();
    let mut used = Vec::new();
    for source in config.sources.values() {
        if let SourceConfig::Kafka(k) = source {
            used.extend(k.topics.iter().cloned());
        }
    }
    for route in &config.routes {
        for d in route.destinations.values().chain(route.dead_letter.iter()) {
            if let Some(SinkConfig::Kafka(_)) = config.sinks.get(d.sink()) {
                used.push(
                    d.target()
                        .expect("a Kafka destination without target")
                        .into(),
                );
            }
        }
    }
    assert_eq!(used.len(), 8, "{used:?}");
    for t in &used {
        assert!(topics.contains(t), "kafka-init does not create {t}");
    }
}

#[test]
fn prometheus_scrapes_the_admin_port_and_the_dockerfile_serves_it() {
    let config = load_with_env(&stack_config(), stack_env()).unwrap();
    let port = admin_port(&config);
    let prometheus: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("deploy/compose/prometheus.yml")).unwrap(),
    )
    .unwrap();
    let job = &prometheus["scrape_configs"][0];
    assert_eq!(job["metrics_path"].as_str(), Some("/metrics"));
    assert_eq!(
        job["static_configs"][0]["targets"][0].as_str(),
        Some(format!("fnmill:{port}").as_str())
    );
    let compose = compose();
    let ports: Vec<&str> = compose["services"]["fnmill"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(ports, [format!("{}:{port}", dotenv()["FNMILL_ADMIN_PORT"])]);

    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let lines: Vec<&str> = dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    assert!(lines.contains(&format!("EXPOSE {port}").as_str()));
    assert!(
        lines.contains(
            &format!("ENV FNMILL_HEALTHCHECK_URL=http://127.0.0.1:{port}/healthz").as_str()
        )
    );
    assert!(dockerfile.contains("CMD curl -fsS -o /dev/null \"$FNMILL_HEALTHCHECK_URL\""));
    assert!(lines.contains(&"ENTRYPOINT [\"fnmill\"]"));
    assert!(lines.contains(&"USER 10001:10001"));
    // The stages users build (the last one, by default) and the test builds (prebuilt).
    let stages: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("FROM "))
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(
        stages,
        [
            "runtime-base",
            "prebuilt",
            "chef",
            "plan",
            "build",
            "runtime"
        ]
    );
    // The stack's compiled-component cache is a volume where the image keeps it.
    let volumes = compose["services"]["fnmill"]["volumes"]
        .as_sequence()
        .unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v.as_str() == Some("fnmill-cache:/var/cache/fnmill"))
    );
    assert!(lines.contains(&"ENV XDG_CACHE_HOME=/var/cache"));
}

/// deploy/validate, built once per test run into target/ by scripts/deploy-validate.sh
/// (scripts/test.sh starts that build early, in the background; Go's build cache makes this
/// second call quick).
fn validator() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new("bash")
            .arg(root().join("scripts").join("deploy-validate.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running scripts/deploy-validate.sh");
        assert!(out.status.success(), "building deploy/validate failed");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
    .clone()
}

/// Runs the validator on `dirs`, writing renderings under `out`.
fn validate(dirs: &[&Path], out: &Path) -> Output {
    Command::new(validator())
        .arg("-out")
        .arg(out)
        .args(dirs)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn deploy(path: &str) -> PathBuf {
    root().join("deploy").join(path)
}

#[test]
fn kustomizations_render_and_every_object_decodes_strictly() {
    let out = tempfile::tempdir().unwrap();
    let dirs = [
        deploy("base"),
        deploy("overlays/example"),
        deploy("overlays/static-membership"),
    ];
    let result = validate(
        &dirs.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
        out.path(),
    );
    let log = text(&result);
    assert!(result.status.success(), "{log}");
    for (i, kinds) in [
        vec![
            "Deployment/fnmill-kafka",
            "Deployment/fnmill-amqp",
            "Service/fnmill-admin-kafka",
            "PodDisruptionBudget/fnmill-kafka",
            "ScaledObject/fnmill-kafka",
            "ScaledObject/fnmill-amqp",
            "TriggerAuthentication/fnmill-kafka",
            "Deployment/fnmill-io",
            "Service/fnmill-admin-io",
            "PodDisruptionBudget/fnmill-io",
        ],
        vec!["Namespace/fnmill", "Secret/fnmill-secrets-"],
        vec![
            "StatefulSet/fnmill-kafka",
            "Deployment/fnmill-amqp",
            "Deployment/fnmill-io",
        ],
    ]
    .into_iter()
    .enumerate()
    {
        for kind in kinds {
            assert!(
                log.lines()
                    .any(|l| l.starts_with(&format!("{}: {kind}", dirs[i].display()))),
                "{kind} not rendered from {}:\n{log}",
                dirs[i].display()
            );
        }
    }
    // The static-membership overlay scales the StatefulSet.
    let rendered: Vec<Value> = serde_yaml::Deserializer::from_str(
        &std::fs::read_to_string(out.path().join("2/rendered.yaml")).unwrap(),
    )
    .map(|d| Value::deserialize(d).unwrap())
    .collect();
    let scaled = rendered
        .iter()
        .find(|o| o["kind"] == "ScaledObject" && o["metadata"]["name"] == "fnmill-kafka")
        .unwrap();
    assert_eq!(scaled["spec"]["scaleTargetRef"]["kind"], "StatefulSet");
    assert!(
        !rendered
            .iter()
            .any(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "fnmill-kafka")
    );
}

use serde::Deserialize;

/// A kustomization in a temporary directory on top of deploy/base with one JSON patch; the
/// validator's output for it.
fn validate_patched(kind: &str, name: &str, patch: &str) -> (bool, String) {
    // Kustomize takes bases by relative path only: the kustomization lives under target/.
    let parent = root().join("target").join("deploy-tests");
    std::fs::create_dir_all(&parent).unwrap();
    let dir = tempfile::tempdir_in(&parent).unwrap();
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "resources:\n  - {base}\npatches:\n  - target:\n      kind: {kind}\n      name: {name}\n    patch: |-\n{patch}\n",
            base = "../../../deploy/base",
            patch = patch
                .lines()
                .map(|l| format!("      {l}"))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let result = validate(&[dir.path()], out.path());
    (result.status.success(), text(&result))
}

#[test]
fn misspelt_fields_and_bad_bounds_fail_validation() {
    // The IO tier's config without the bucket grant.
    let io_config = std::fs::read_to_string(deploy("base/io/fnmill.toml"))
        .unwrap()
        .replace("buckets = [\"dedup\"]", "buckets = []");
    let io_config_patch = format!(
        "- op: replace\n  path: /data/fnmill.toml\n  value: |\n{}",
        io_config
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let cases = [
        (
            "Deployment",
            "fnmill-kafka",
            "- op: add\n  path: /spec/template/spec/terminationGracePeriodSecond\n  value: 40",
            "unknown field \"terminationGracePeriodSecond\"",
        ),
        (
            "ScaledObject",
            "fnmill-kafka",
            "- op: add\n  path: /spec/maxReplicas\n  value: 3",
            "unknown field \"maxReplicas\"",
        ),
        (
            "ScaledObject",
            "fnmill-kafka",
            "- op: replace\n  path: /spec/maxReplicaCount\n  value: 12",
            "maxReplicaCount 12 is above the partition count 6",
        ),
        (
            "ScaledObject",
            "fnmill-kafka",
            "- op: add\n  path: /spec/triggers/0/metadata/consumergroup\n  value: x",
            "unknown metadata key \"consumergroup\"",
        ),
        (
            "ScaledObject",
            "fnmill-amqp",
            "- op: replace\n  path: /spec/triggers/0/metadata/queueName\n  value: order",
            "no AMQP source of Deployment/fnmill-amqp consumes queue \"order\"",
        ),
        (
            "Deployment",
            "fnmill-kafka",
            "- op: replace\n  path: /spec/template/spec/containers/0/readinessProbe/httpGet/path\n  value: /ready",
            "readinessProbe path \"/ready\"; fnmill serves it on \"/readyz\"",
        ),
        (
            "Deployment",
            "fnmill-amqp",
            "- op: replace\n  path: /spec/template/spec/containers/0/ports/0/containerPort\n  value: 8080",
            "livenessProbe port admin is not the admin port 9464",
        ),
        (
            "Deployment",
            "fnmill-kafka",
            "- op: replace\n  path: /spec/template/spec/terminationGracePeriodSeconds\n  value: 20",
            "terminationGracePeriodSeconds must be above runtime.shutdown_grace (20s)",
        ),
        (
            "Deployment",
            "fnmill-kafka",
            "- op: replace\n  path: /spec/template/spec/volumes/1/secret/secretName\n  value: other\n- op: replace\n  path: /spec/template/spec/volumes/1/name\n  value: x",
            "is not in a mounted Secret",
        ),
        (
            "Deployment",
            "fnmill-kafka",
            "- op: replace\n  path: /spec/template/spec/containers/0/resources/requests/memory\n  value: 256Mo",
            "quantities must match the regular expression",
        ),
        // The IO tier: more replicas than the database allows connections for…
        (
            "Deployment",
            "fnmill-io",
            "- op: replace\n  path: /spec/replicas\n  value: 4",
            "data_sources.orders_db: 4 replicas (+1 during a rolling update) × pool_size 8 = 40 \
             connections, above its limit of 30",
        ),
        // …run as `all`, so nobody serves the Kafka worker's data sources…
        (
            "Deployment",
            "fnmill-io",
            "- op: replace\n  path: /spec/template/spec/containers/0/args\n  value: [run, -c, /etc/fnmill/config/fnmill.toml]",
            "data_sources.orders_db.remote.subject \"fnmill.ds.orders_db\": no --role io workload serves it",
        ),
        // …or granting less than the compute workload's config.
        (
            "ConfigMap",
            "fnmill-config-io",
            io_config_patch.as_str(),
            "functions.orders_enrich is granted bucket dedup, which Deployment/fnmill-io \
             (data_sources.cache) does not grant it",
        ),
        (
            "Deployment",
            "fnmill-kafka",
            "- op: replace\n  path: /spec/template/spec/containers/0/args/2\n  value: computer",
            "--role \"computer\": fnmill knows all, compute and io",
        ),
    ];
    for (kind, name, patch, expected) in cases {
        let (ok, log) = validate_patched(kind, name, patch);
        assert!(!ok, "{kind}/{name} with\n{patch}\npassed:\n{log}");
        assert!(
            log.contains(expected),
            "{kind}/{name} with\n{patch}\ndid not say {expected:?}:\n{log}"
        );
    }
    // The untouched base passes through the same path.
    let (ok, log) = validate_patched(
        "Deployment",
        "fnmill-kafka",
        "- op: replace\n  path: /spec/replicas\n  value: 2",
    );
    assert!(ok, "{log}");
}

#[test]
fn configmap_configs_pass_fnmill_check() {
    let out = tempfile::tempdir().unwrap();
    let dirs = [
        deploy("overlays/example"),
        deploy("overlays/static-membership"),
    ];
    let result = validate(
        &dirs.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
        out.path(),
    );
    assert!(result.status.success(), "{}", text(&result));
    // The files of the Secret fnmill-secrets where the pod mounts them, with well-formed
    // values, and the example components where the image has them.
    let secrets = tempfile::tempdir().unwrap();
    for (name, value) in [
        (
            "orders-db-url",
            "postgres://fnmill:pw@postgres.data.svc:5432/orders",
        ),
        ("redis-url", "redis://redis.data.svc:6379"),
        ("nats-url", "nats://nats.nats.svc:4222"),
        (
            "amqp-url",
            "amqp://fnmill:pw@rabbitmq.rabbitmq.svc:5672/%2f",
        ),
        ("kafka-password", "pw"),
        ("kafka-ca.pem", "not read by check"),
    ] {
        std::fs::write(secrets.path().join(name), value).unwrap();
    }
    let mut checked = Vec::new();
    for i in 0..dirs.len() {
        for entry in std::fs::read_dir(out.path().join(i.to_string())).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace(
                    "/etc/fnmill/secrets/",
                    &format!("{}/", secrets.path().display()),
                )
                .replace(
                    "/opt/fnmill/functions/",
                    &format!("{}/", components_dir().display()),
                );
            std::fs::write(&path, text).unwrap();
            // Checked for the role of every workload that runs it (`fnmill run --role`).
            let roles = std::fs::read_to_string(path.with_extension("roles")).unwrap();
            for role in roles.lines() {
                check_as(&path, role, &[("POD_NAME".into(), "fnmill-kafka-0".into())]);
                checked.push(role.to_string());
            }
        }
    }
    checked.sort();
    assert_eq!(
        checked,
        ["all", "all", "compute", "compute", "io", "io"],
        "the RabbitMQ worker, the Kafka worker and the IO tier in each of the two overlays"
    );
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` on 127.0.0.1:`port`; the status code.
fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn the_probes_ask_what_fnmill_run_serves() {
    let out = tempfile::tempdir().unwrap();
    let result = validate(&[&deploy("base")], out.path());
    assert!(result.status.success(), "{}", text(&result));
    let rendered: Vec<Value> = serde_yaml::Deserializer::from_str(
        &std::fs::read_to_string(out.path().join("0/rendered.yaml")).unwrap(),
    )
    .map(|d| Value::deserialize(d).unwrap())
    .collect();
    let deployment = rendered
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "fnmill-kafka")
        .unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let probes: Vec<(String, String)> = ["startupProbe", "livenessProbe", "readinessProbe"]
        .iter()
        .map(|p| {
            (
                p.to_string(),
                container[*p]["httpGet"]["path"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();

    // fnmill run with a file source that keeps following its input (so it stays up), and the
    // admin endpoint: each probe path answers 200 once the source runs.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "").unwrap();
    let port = free_port();
    let config = dir.path().join("fnmill.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[admin]
listen = "127.0.0.1:{port}"
[sources.in]
kind = "file"
path = "in.jsonl"
follow = true
[sinks.out]
kind = "file"
path = "out.jsonl"
[functions.f]
component = "{component}"
[[routes]]
source = "in"
function = "f"
destinations = {{ valid = "out", invalid = "out" }}
"#,
            component = quickstart_component().display()
        ),
    )
    .unwrap();
    let mut child = fnmill()
        .args(["run", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(60), "fnmill to be ready", || {
        http_status(port, "/readyz") == Some(200)
    });
    for (probe, path) in &probes {
        assert_eq!(http_status(port, path), Some(200), "{probe} asks {path}");
    }
    assert_eq!(http_status(port, "/nothing"), Some(404));
    child.kill().unwrap();
    child.wait().unwrap();
}
