//! Kafka over TLS, against the listeners `scripts/kafka.sh` opens on Apache Kafka:
//! - SASL_SSL with PLAIN and SCRAM-SHA-512: `fnmill run` consumes and produces through it with
//!   the CA and the user from config and the password from an environment variable
//!   (`secret_properties`); a wrong password is reported, not fatal.
//! - SSL with client certificates required (mutual TLS): the client certificate and key from
//!   config, the key's password from an environment variable; a certificate the broker does not
//!   trust is reported, not fatal.
//!
//! Topics are made, filled and read through the plain listener of the same broker.

use fnmill_testkit::common;
use fnmill_testkit::kafka_support;

use std::time::Duration;

use common::{guest, wait_until};
use kafka_support::{
    KafkaRoute, Running, bootstrap, check, count, create_topic, produce_events, read_topic,
};

/// The SASL_SSL listener, its CA certificate (PEM), the SASL user and password.
struct Secure {
    bootstrap: String,
    ca: String,
    user: String,
    password: String,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run `eval \"$(scripts/kafka.sh env)\"` (scripts/test.sh does), \
             or set it for your own broker's TLS listeners"
        )
    })
}

fn secure() -> Secure {
    Secure {
        bootstrap: var("FNMILL_TEST_KAFKA_TLS_BOOTSTRAP"),
        ca: var("FNMILL_TEST_KAFKA_TLS_CA"),
        user: var("FNMILL_TEST_KAFKA_SASL_USER"),
        password: var("FNMILL_TEST_KAFKA_SASL_PASSWORD"),
    }
}

/// A route whose three clients all go through the SASL_SSL listener with `mechanism`, the
/// password read from the environment variable `FNMILL_KAFKA_PASSWORD`.
fn secure_route(dir: &std::path::Path, s: &Secure, mechanism: &str) -> KafkaRoute {
    let mut route = KafkaRoute::new(dir, &s.bootstrap, guest("echo"));
    route.client_properties = format!(
        "\"security.protocol\" = \"sasl_ssl\", \"sasl.mechanism\" = \"{mechanism}\", \
         \"sasl.username\" = \"{}\", \"ssl.ca.location\" = \"{}\"",
        s.user, s.ca
    );
    route.client_extra =
        r#"secret_properties = { "sasl.password" = { env = "FNMILL_KAFKA_PASSWORD" } }"#.into();
    route
}

/// 2,000 events in over TLS + SASL/PLAIN → every id out once; the password never reaches the
/// log, even with every library logging at trace level.
#[test]
fn events_flow_over_tls_with_sasl_plain_and_the_password_stays_out_of_the_log() {
    events_flow_over_tls("PLAIN");
}

/// The same with SCRAM-SHA-512, the challenge-response mechanism managed clusters use.
#[test]
fn events_flow_over_tls_with_sasl_scram() {
    events_flow_over_tls("SCRAM-SHA-512");
}

fn events_flow_over_tls(mechanism: &str) {
    let s = secure();
    let dir = tempfile::tempdir().unwrap();
    let route = secure_route(dir.path(), &s, mechanism);
    events_flow(&route, dir.path(), ("FNMILL_KAFKA_PASSWORD", &s.password));
}

/// 2,000 events through `route` (whose topics this makes) with the environment variable
/// `secret` set: every id out once, and the secret's value never in the log.
fn events_flow(route: &KafkaRoute, dir: &std::path::Path, secret: (&str, &str)) {
    const TOTAL: u64 = 2_000;
    let plain = bootstrap();
    for (topic, partitions) in [(&route.input, 4), (&route.output, 4), (&route.dead, 1)] {
        create_topic(&plain, topic, partitions);
    }
    produce_events(&plain, &route.input, 0..TOTAL, 50);
    let config = route.write("fnmill");
    let mut run = Running::start_with_env(
        &config,
        dir.join("run.log"),
        &[secret, ("RUST_LOG", "trace")],
    );
    wait_until(Duration::from_secs(120), "all outputs over TLS", || {
        assert!(run.alive(), "fnmill exited: {}", run.log_text());
        count(&plain, &route.output) >= TOTAL as i64
    });
    run.terminate(Duration::from_secs(30));
    let verdict = check(TOTAL, &read_topic(&plain, &route.output), &[]);
    assert!(verdict.lost.is_empty(), "lost: {}", verdict.lost.len());
    assert_eq!(verdict.ok, TOTAL as usize);
    let log = run.log_text();
    assert!(log.contains("TRACE"), "trace logging was not on");
    assert!(
        !log.contains(secret.1),
        "the secret is in the log: {}",
        log.lines()
            .find(|l| l.contains(secret.1))
            .unwrap_or_default()
    );
    assert!(!log.contains("panicked"), "{log}");
}

/// A wrong password: `fnmill run` stays up, says authentication failed, reports not ready,
/// and the log still holds no password.
#[test]
fn a_wrong_password_is_reported_and_not_ready() {
    let s = secure();
    let dir = tempfile::tempdir().unwrap();
    let route = secure_route(dir.path(), &s, "PLAIN");
    let wrong = format!("not-{}", s.password);
    refused_and_not_ready(
        route,
        dir.path(),
        ("FNMILL_KAFKA_PASSWORD", &wrong),
        "authentication",
    );
}

/// The SSL listener that requires client certificates, and the client certificates made for it.
struct Mutual {
    bootstrap: String,
    ca: String,
    cert: String,
    key: String,
    key_password: String,
    rogue_cert: String,
    rogue_key: String,
}

fn mutual() -> Mutual {
    Mutual {
        bootstrap: var("FNMILL_TEST_KAFKA_MTLS_BOOTSTRAP"),
        ca: var("FNMILL_TEST_KAFKA_TLS_CA"),
        cert: var("FNMILL_TEST_KAFKA_CLIENT_CERT"),
        key: var("FNMILL_TEST_KAFKA_CLIENT_KEY"),
        key_password: var("FNMILL_TEST_KAFKA_CLIENT_KEY_PASSWORD"),
        rogue_cert: var("FNMILL_TEST_KAFKA_ROGUE_CERT"),
        rogue_key: var("FNMILL_TEST_KAFKA_ROGUE_KEY"),
    }
}

/// A route whose three clients go through the SSL listener presenting `cert` and `key`, the
/// key's password read from the environment variable `FNMILL_KAFKA_KEY_PASSWORD`.
fn mutual_route(dir: &std::path::Path, m: &Mutual, cert: &str, key: &str) -> KafkaRoute {
    let mut route = KafkaRoute::new(dir, &m.bootstrap, guest("echo"));
    route.client_properties = format!(
        "\"security.protocol\" = \"ssl\", \"ssl.ca.location\" = \"{}\", \
         \"ssl.certificate.location\" = \"{cert}\", \"ssl.key.location\" = \"{key}\"",
        m.ca
    );
    route.client_extra =
        r#"secret_properties = { "ssl.key.password" = { env = "FNMILL_KAFKA_KEY_PASSWORD" } }"#
            .into();
    route
}

/// 2,000 events through a broker that requires client certificates, the client's key
/// encrypted and its password given as a secret → every id out once, no password in the log.
#[test]
fn events_flow_over_mutual_tls_with_the_key_password_from_a_secret() {
    let m = mutual();
    let dir = tempfile::tempdir().unwrap();
    let route = mutual_route(dir.path(), &m, &m.cert, &m.key);
    events_flow(
        &route,
        dir.path(),
        ("FNMILL_KAFKA_KEY_PASSWORD", &m.key_password),
    );
}

/// A client certificate the broker's client CA did not sign: `fnmill run` stays up, logs the
/// failed handshake and reports not ready.
#[test]
fn a_client_certificate_the_broker_does_not_trust_is_reported_and_not_ready() {
    let m = mutual();
    let dir = tempfile::tempdir().unwrap();
    let route = mutual_route(dir.path(), &m, &m.rogue_cert, &m.rogue_key);
    refused_and_not_ready(
        route,
        dir.path(),
        ("FNMILL_KAFKA_KEY_PASSWORD", &m.key_password),
        "bad certificate",
    );
}

/// Runs `route` (whose topics this makes) with the environment variable `secret` set, where
/// the broker refuses its clients: `fnmill run` stays up, logs `expected` (compared in lower
/// case), `/readyz` answers 503, and the secret's value is not in the log.
fn refused_and_not_ready(
    mut route: KafkaRoute,
    dir: &std::path::Path,
    secret: (&str, &str),
    expected: &str,
) {
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    route.runtime_extra = format!("\n[admin]\nlisten = \"{admin}\"\n");
    let plain = bootstrap();
    for topic in [&route.input, &route.output, &route.dead] {
        create_topic(&plain, topic, 1);
    }
    let mut run = Running::start_with_env(&route.write("fnmill"), dir.join("run.log"), &[secret]);
    wait_until(
        Duration::from_secs(60),
        &format!("`{expected}` in the log"),
        || {
            assert!(run.alive(), "fnmill exited: {}", run.log_text());
            run.log_text().to_lowercase().contains(expected)
        },
    );
    let readyz = || kafka_support::readyz(admin);
    wait_until(Duration::from_secs(10), "/readyz to answer", || {
        readyz().is_some()
    });
    let answer = readyz().unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(run.alive(), "fnmill exited: {}", run.log_text());
    let log = run.log_text();
    assert!(!log.contains(secret.1), "the secret is in the log: {log}");
    run.terminate(Duration::from_secs(30));
}
