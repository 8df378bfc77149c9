//! The local stack, run for real with Docker: builds the fnmill image from the Dockerfile
//! (target `prebuilt`, from the binary and example components this test run built), brings
//! `docker-compose.yml` up with tests/stack/docker-compose.test.yml on top (stand-ins that point
//! at the Kafka, RabbitMQ, PostgreSQL and Redis the suite runs natively, since no image registry
//! is reachable here), publishes orders to both Kafka routes (with `fnmill publish` inside the
//! fnmill container, as the README's walk-through does) and the RabbitMQ route, reads the
//! enriched outputs and the dead letters back, checks health, readiness, metrics and the
//! compiled-component cache volume, and brings the stack down.
//!
//! `scripts/docker.sh start` (run by scripts/test.sh) provides the engine; when it could not,
//! test.sh says why in FNMILL_TEST_DOCKER_UNAVAILABLE and this test prints that one line
//! instead of running. Without that variable a missing engine fails the test.

use fnmill_testkit::amqp_common;
use fnmill_testkit::common;
use fnmill_testkit::kafka_support;
mod stack_support;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{quickstart_component, root, wait_until};
use fnmill_connector_kafka::rdkafka;
use kafka_support::{Read, bootstrap, read_topic};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::{ClientConfig, types::RDKafkaErrorCode};
use serde_json::{Value, json};
use stack_support::{compose, stack_topics};

/// The docker client (`FNMILL_TEST_DOCKER` from scripts/docker.sh env, else as that script
/// picks it: Debian's, which builds with BuildKit without the buildx plugin), BuildKit on.
fn docker() -> Command {
    let bin = std::env::var("FNMILL_TEST_DOCKER")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| {
            let debian = "/usr/bin/docker";
            if Path::new(debian).is_file() {
                debian
            } else {
                "docker"
            }
            .to_string()
        });
    let mut cmd = Command::new(bin);
    cmd.env("DOCKER_BUILDKIT", "1");
    cmd
}

fn run(mut cmd: Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `docker compose` on the stack's file and the test's override, as project `project`, with
/// the test's variables.
struct Stack {
    project: String,
    env: Vec<(String, String)>,
    up: bool,
}

impl Stack {
    fn compose(&self) -> Command {
        // The compose plugin runs under the docker CLI on PATH (scripts/docker.sh installs it
        // there); the engine is the same.
        let mut cmd = Command::new("docker");
        cmd.arg("compose")
            .args(["-p", &self.project])
            .arg("-f")
            .arg(root().join("docker-compose.yml"))
            .arg("-f")
            .arg(root().join("tests/stack/docker-compose.test.yml"))
            .current_dir(root())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.compose();
        cmd.args(args);
        run(cmd, &format!("docker compose {}", args.join(" ")))
    }

    /// `docker compose exec -T <service> <args>` with `input` on its standard input.
    fn exec_with_input(&self, service: &str, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut cmd = self.compose();
        cmd.args(["exec", "-T", service])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let what = format!("docker compose exec {service} {}", args.join(" "));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{what} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn logs(&self) -> String {
        let out = self
            .compose()
            .args(["logs", "--no-color", "fnmill"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn container(&self, service: &str) -> String {
        let out = self.run(&["ps", "-a", "-q", service]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if self.up {
            if std::thread::panicking() {
                eprintln!("fnmill's log:\n{}", self.logs());
            }
            let _ = self.compose().args(["down", "-v", "-t", "5"]).output();
        }
    }
}

/// Removes the image this run built, however the test ends (after the stack: declared
/// before it, dropped after it).
struct RemoveImage(String);

impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = docker().args(["rmi", "-f", &self.0]).output();
    }
}

/// Whether the test can run: the engine answers, or test.sh said why it could not.
fn engine_ready() -> bool {
    if let Ok(why) = std::env::var("FNMILL_TEST_DOCKER_UNAVAILABLE")
        && !why.is_empty()
    {
        println!("stack test not run: {why}");
        return false;
    }
    let answers = docker()
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        answers,
        "no Docker engine answers; run scripts/docker.sh start (scripts/test.sh does)"
    );
    true
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` on `addr`: (status, body).
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// The docker build context of the `prebuilt` target: the fnmill binary this run built and
/// the example components.
fn prebuilt_context(dir: &Path) {
    std::fs::copy(env!("CARGO_BIN_EXE_fnmill"), dir.join("fnmill")).unwrap();
    let functions = dir.join("functions");
    std::fs::create_dir(&functions).unwrap();
    let built = quickstart_component().parent().unwrap().to_path_buf();
    for name in ["quickstart_orders.wasm", "orders_enrich.wasm"] {
        std::fs::copy(built.join(name), functions.join(name)).unwrap();
    }
}

/// Creates the topics the stack's kafka-init service would, on the suite's broker.
fn create_topics(brokers: &str, topics: &[String]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, 4, TopicReplication::Fixed(1)))
        .collect();
    let results = futures::executor::block_on(admin.create_topics(
        &new,
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))
    .unwrap();
    for r in results {
        if let Err((t, e)) = r {
            assert_eq!(e, RDKafkaErrorCode::TopicAlreadyExists, "creating {t}");
        }
    }
}

/// The PostgreSQL database of the stack test: `fnmill_stack` on the suite's server, created
/// if missing; (url, host port, user, database).
fn database() -> (String, u16, String, String) {
    let base = std::env::var("FNMILL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let (server, _) = base.rsplit_once('/').unwrap();
    let db = "fnmill_stack".to_string();
    let exists = run(
        {
            let mut c = Command::new("psql");
            c.args([
                &base,
                "-tAc",
                "select 1 from pg_database where datname = 'fnmill_stack'",
            ]);
            c
        },
        "psql",
    );
    if String::from_utf8_lossy(&exists.stdout).trim() != "1" {
        let mut c = Command::new("psql");
        c.args([&base, "-qc", "create database fnmill_stack"]);
        run(c, "psql create database");
    }
    let authority = server.trim_start_matches("postgres://");
    let (user, hostport) = authority.split_once('@').unwrap();
    let user = user.split(':').next().unwrap().to_string();
    let port = hostport
        .rsplit_once(':')
        .map_or(5432, |(_, p)| p.parse().unwrap());
    (format!("{server}/{db}"), port, user, db)
}

fn port_of(url: &str, default: u16) -> u16 {
    let after = url.split_once("://").map_or(url, |(_, a)| a);
    let hostport = after.rsplit_once('@').map_or(after, |(_, h)| h);
    let hostport = hostport.split('/').next().unwrap();
    hostport
        .rsplit_once(':')
        .map_or(default, |(_, p)| p.parse().unwrap())
}

/// Records of `topic` whose payload or key mentions `run`.
fn records(brokers: &str, topic: &str, run: &str) -> Vec<Read> {
    read_topic(brokers, topic)
        .into_iter()
        .filter(|r| {
            String::from_utf8_lossy(&r.payload).contains(run)
                || r.key
                    .as_deref()
                    .is_some_and(|k| String::from_utf8_lossy(k).contains(run))
        })
        .collect()
}

fn header(r: &Read, name: &str) -> String {
    String::from_utf8_lossy(r.headers.get(name).map(Vec::as_slice).unwrap_or_default()).into_owned()
}

/// Waits until `queue` exists (a passive declare succeeds), at most 60 s.
async fn wait_for_queue(connection: &lapin::Connection, queue: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let channel = connection.create_channel().await.unwrap();
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declared = channel
            .queue_declare(queue.into(), passive, lapin::types::FieldTable::default())
            .await;
        if declared.is_ok() {
            let _ = channel.close(200, "ok".into()).await;
            return;
        }
        assert!(
            Instant::now() < deadline,
            "queue {queue} was never declared"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn the_stack_runs_the_example_routes_end_to_end() {
    if !engine_ready() {
        return;
    }
    let started = Instant::now();
    let run_id = format!("stack{:08x}", fastrand::u32(..));
    let mut timings: BTreeMap<&str, Duration> = BTreeMap::new();

    // The image: the Dockerfile users build, at its `prebuilt` target; or, with
    // FNMILL_TEST_STACK_IMAGE, an image built before (e.g. by the full `docker build .`).
    let given = std::env::var("FNMILL_TEST_STACK_IMAGE")
        .ok()
        .filter(|i| !i.is_empty());
    let image = given.clone().unwrap_or_else(|| format!("fnmill:{run_id}"));
    let t = Instant::now();
    let _image = if given.is_none() {
        let context = tempfile::tempdir().unwrap();
        prebuilt_context(context.path());
        let mut build = docker();
        build
            .args(["build", "-q", "--target", "prebuilt", "-t", &image, "-f"])
            .arg(root().join("Dockerfile"))
            .arg(context.path());
        let guard = RemoveImage(image.clone());
        run(build, "docker build --target prebuilt");
        Some(guard)
    } else {
        println!("stack: running the given image {image}");
        None
    };
    let mut psql = docker();
    psql.args(["build", "-q", "-t", "fnmill-test-psql:1", "-f"])
        .arg(root().join("tests/stack/psql.Dockerfile"))
        .arg(root().join("tests/stack"));
    run(psql, "docker build psql");
    timings.insert("1 image builds", t.elapsed());

    // The services the suite runs natively, as the stack's stand-ins point at them.
    let brokers = bootstrap();
    let (kafka_host, kafka_port) = brokers.split(',').next().unwrap().rsplit_once(':').unwrap();
    let compose_file = compose();
    let topics = stack_topics(&compose_file);
    create_topics(&brokers, &topics);
    let (pg_url, pg_port, pg_user, pg_db) = database();
    let amqp_url = amqp_common::amqp_url();
    let redis_url =
        std::env::var("FNMILL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let admin = format!("127.0.0.1:{}", free_port());
    let vars = [
        ("FNMILL_STACK_IMAGE", image.clone()),
        ("FNMILL_STACK_PSQL_IMAGE", "fnmill-test-psql:1".into()),
        ("FNMILL_STACK_RUN", run_id.clone()),
        ("FNMILL_STACK_ADMIN", admin.clone()),
        ("FNMILL_STACK_KAFKA", brokers.clone()),
        ("FNMILL_STACK_KAFKA_HOST", kafka_host.into()),
        ("FNMILL_STACK_KAFKA_PORT", kafka_port.into()),
        ("FNMILL_STACK_AMQP_URL", amqp_url.clone()),
        (
            "FNMILL_STACK_AMQP_PORT",
            port_of(&amqp_url, 5672).to_string(),
        ),
        ("FNMILL_STACK_REDIS_URL", redis_url.clone()),
        (
            "FNMILL_STACK_REDIS_PORT",
            port_of(&redis_url, 6379).to_string(),
        ),
        ("FNMILL_STACK_POSTGRES_URL", pg_url),
        ("FNMILL_STACK_POSTGRES_PORT", pg_port.to_string()),
        ("FNMILL_STACK_POSTGRES_USER", pg_user),
        ("FNMILL_STACK_POSTGRES_DB", pg_db),
    ];
    let mut stack = Stack {
        project: format!("fnmill-{run_id}"),
        env: vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        up: false,
    };

    // Up, in the order the health checks and depends_on conditions give; --wait returns once
    // fnmill's own HEALTHCHECK (GET /healthz in the container) reports healthy.
    let t = Instant::now();
    stack.up = true;
    stack.run(&["up", "-d", "--no-build", "--wait", "fnmill"]);
    timings.insert("2 compose up (until fnmill healthy)", t.elapsed());
    let fnmill = stack.container("fnmill");
    let health = run(
        {
            let mut c = docker();
            c.args(["inspect", "-f", "{{.State.Health.Status}}", &fnmill]);
            c
        },
        "docker inspect",
    );
    assert_eq!(String::from_utf8_lossy(&health.stdout).trim(), "healthy");
    // db-init loaded the example schema, as the stack does at every `up`.
    let db_init = stack.container("db-init");
    let exit = run(
        {
            let mut c = docker();
            c.args(["inspect", "-f", "{{.State.ExitCode}}", &db_init]);
            c
        },
        "docker inspect",
    );
    assert_eq!(String::from_utf8_lossy(&exit.stdout).trim(), "0");
    wait_until(Duration::from_secs(60), "fnmill's /readyz", || {
        http_get(&admin, "/readyz").is_some_and(|(s, _)| s == 200)
    });

    // Orders on both Kafka routes, published as the README shows: JSON Lines into
    // `fnmill publish` inside the fnmill container, each record confirmed before it exits.
    let t = Instant::now();
    let order = |n: u32, items: Value| {
        json!({"order_id": format!("{run_id}-o{n}"), "customer_id": format!("c-{n}"),
               "currency": "EUR", "items": items})
    };
    let valid = order(1, json!([{"sku": "BOOK-1", "qty": 2, "unit_price": 12.5}]));
    let invalid = order(2, json!([]));
    // A JSON payload is its JSON text; a string that is not JSON goes as `payload_text`.
    let lines = |events: Vec<(String, Value)>| {
        events
            .into_iter()
            .map(|(key, payload)| match payload {
                Value::String(text) => json!({"key": key, "payload_text": text}),
                payload => json!({"key": key, "payload": payload}),
            })
            .map(|line| line.to_string() + "\n")
            .collect::<String>()
    };
    let orders = lines(vec![
        (format!("{run_id}-c1"), valid),
        (format!("{run_id}-c2"), invalid),
        (
            format!("{run_id}-c3"),
            json!(format!("not an order {run_id}")),
        ),
    ]);
    let mut enrich: Vec<(String, Value)> = [(1, json!(1)), (2, json!(2)), (3, json!(99))]
        .into_iter()
        .map(|(n, customer)| {
            (
                format!("{run_id}-e{n}"),
                json!({"order_id": format!("{run_id}-e{n}"), "customer_id": customer, "total": 10.0}),
            )
        })
        .collect();
    enrich.push((
        format!("{run_id}-e4"),
        json!({"order_id": format!("{run_id}-e4")}),
    ));
    for (topic, input, count) in [("orders", orders, 3), ("customer-orders", lines(enrich), 4)] {
        let target = format!("kafka://{brokers}/{topic}");
        let out = stack.exec_with_input("fnmill", &["fnmill", "publish", &target], &input);
        let summary = String::from_utf8_lossy(&out.stderr);
        assert!(
            summary.contains(&format!("publish: {count} sent, 0 failed")),
            "fnmill publish {target}: {summary}"
        );
    }

    // And on the RabbitMQ route, through the queue fnmill declared.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_broker, valid_q, invalid_q, dead_q) = rt.block_on(async {
        let broker = amqp_common::Broker::new().await;
        let message = |id: &str, payload: String| amqp_common::Message {
            id: format!("{run_id}-{id}"),
            payload: payload.into_bytes(),
            headers: vec![("customer_id".to_string(), format!("{run_id}-c"))],
        };
        broker
            .publish(
                "orders",
                [
                    message(
                        "a1",
                        order(11, json!([{"sku": "PEN", "qty": 1, "unit_price": 2.0}])).to_string(),
                    ),
                    message("a2", order(12, json!([])).to_string()),
                    message("a3", format!("malformed {run_id}")),
                ],
            )
            .await;
        // fnmill's sinks declare their queues when they first publish; what they published
        // waits there for the collectors.
        let mut collectors = Vec::new();
        for queue in ["orders.valid", "orders.invalid", "orders.dead"] {
            wait_for_queue(&broker.connection, queue).await;
            collectors.push(amqp_common::Collector::start(&broker.connection, queue).await);
        }
        let dead = collectors.pop().unwrap();
        let invalid = collectors.pop().unwrap();
        let valid = collectors.pop().unwrap();
        // The broker's connection stays open while the collectors read.
        (broker, valid, invalid, dead)
    });

    let mine = |c: &amqp_common::Collector| -> Vec<amqp_common::Received> {
        c.snapshot()
            .into_iter()
            .filter(|m| String::from_utf8_lossy(&m.payload).contains(&run_id))
            .collect()
    };
    wait_until(
        Duration::from_secs(60),
        "every output and dead letter",
        || {
            records(&brokers, "orders.valid", &run_id).len() == 1
                && records(&brokers, "orders.invalid", &run_id).len() == 1
                && records(&brokers, "orders.dead", &run_id).len() == 1
                && records(&brokers, "customer-orders.enriched", &run_id).len() == 2
                && records(&brokers, "customer-orders.unknown-customer", &run_id).len() == 1
                && records(&brokers, "customer-orders.dead", &run_id).len() == 1
                && mine(&valid_q).len() == 1
                && mine(&invalid_q).len() == 1
                && mine(&dead_q).len() == 1
        },
    );
    timings.insert("3 publish → every output read back", t.elapsed());

    // What came out: the quickstart's totals, the customers from PostgreSQL, dead letters with
    // their reasons.
    let v = records(&brokers, "orders.valid", &run_id)[0].json();
    assert_eq!(v["order_id"], format!("{run_id}-o1"));
    assert_eq!(v["total"], 30.0, "{v}");
    let i = records(&brokers, "orders.invalid", &run_id)[0].json();
    assert!(!i["reasons"].as_array().unwrap().is_empty(), "{i}");
    let dead = &records(&brokers, "orders.dead", &run_id)[0];
    assert_eq!(dead.payload, format!("not an order {run_id}").into_bytes());
    assert_eq!(header(dead, "fnmill.error.kind"), "fatal");
    assert_eq!(header(dead, "fnmill.error.route"), "orders");
    assert_eq!(header(dead, "fnmill.error.origin.topic"), "orders");
    let mut enriched: Vec<Value> = records(&brokers, "customer-orders.enriched", &run_id)
        .iter()
        .map(Read::json)
        .collect();
    enriched.sort_by_key(|e| e["order_id"].as_str().unwrap().to_string());
    assert_eq!(
        enriched[0]["customer"]["name"], "Ada Lovelace",
        "{enriched:?}"
    );
    assert_eq!(
        enriched[1]["customer"]["name"], "Alan Turing",
        "{enriched:?}"
    );
    let unknown = records(&brokers, "customer-orders.unknown-customer", &run_id)[0].json();
    assert_eq!(unknown["customer_id"], 99);
    let dead = &records(&brokers, "customer-orders.dead", &run_id)[0];
    assert_eq!(header(dead, "fnmill.error.function"), "orders_enrich");
    assert!(
        header(dead, "fnmill.error.message").contains("customer_id"),
        "{:?}",
        dead.headers
    );
    assert_eq!(mine(&valid_q)[0].json()["total"], 2.4);
    assert!(
        !mine(&invalid_q)[0].json()["reasons"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let amqp_dead = &mine(&dead_q)[0];
    assert_eq!(amqp_dead.headers["fnmill.error.kind"], "fatal");
    assert_eq!(amqp_dead.headers["fnmill.error.origin.queue"], "orders");

    // Metrics on the admin port, served from the container.
    let (status, metrics) = http_get(&admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    // Each route dead-lettered one invalid order, counted under its failure's kind.
    for route in ["orders", "customer-orders", "amqp-orders"] {
        assert!(
            metrics.contains(&format!(
                "fnmill_events_dead_lettered_total{{route=\"{route}\",error_type=\"fatal\"}}"
            )),
            "{metrics}"
        );
    }
    // Components compiled once, into the cache volume.
    let cache = stack.run(&[
        "exec",
        "-T",
        "fnmill",
        "sh",
        "-c",
        "find /var/cache/fnmill -type f | wc -l",
    ]);
    assert!(
        String::from_utf8_lossy(&cache.stdout)
            .trim()
            .parse::<u32>()
            .unwrap()
            >= 2
    );

    // Down: fnmill stops gracefully on SIGTERM (exit 0) within the stop grace period.
    let t = Instant::now();
    stack.run(&["stop", "fnmill"]);
    let exit = run(
        {
            let mut c = docker();
            c.args(["inspect", "-f", "{{.State.ExitCode}}", &fnmill]);
            c
        },
        "docker inspect",
    );
    assert_eq!(
        String::from_utf8_lossy(&exit.stdout).trim(),
        "0",
        "{}",
        stack.logs()
    );
    stack.run(&["down", "-v", "-t", "5"]);
    stack.up = false;
    timings.insert("4 stop + down -v", t.elapsed());
    drop(_broker);
    drop(rt);

    timings.insert("5 total", started.elapsed());
    for (what, took) in &timings {
        println!("stack: {what}: {:.1} s", took.as_secs_f64());
    }
}
