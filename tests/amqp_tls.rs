//! RabbitMQ over TLS (`amqps://`), against the TLS listener `scripts/services.sh` opens
//! (`FNMILL_TEST_AMQPS_URL`, default `amqps://guest:guest@localhost:5671/%2f`, trusting the
//! test CA at `FNMILL_TEST_AMQPS_CA`; the client certificates in `FNMILL_TEST_AMQPS_TLS_DIR`,
//! default `/etc/rabbitmq/tls`): messages flow through `fnmill run` when the certificate is
//! trusted through `tls_ca_file`, with and without a client certificate the broker trusts;
//! without `tls_ca_file`, or with a client certificate the broker does not trust, the handshake
//! is refused, nothing is consumed and the process stays up. Queues are made, filled and read
//! over the plain listener of the same broker.

use fnmill_testkit::amqp_common;
use fnmill_testkit::common;

use std::time::Duration;

use amqp_common::{AmqpRoute, Broker, Collector, Running, keyed_messages, tally, unique, wait_for};
use common::{fnmill, guest};

fn amqps_url() -> String {
    std::env::var("FNMILL_TEST_AMQPS_URL")
        .unwrap_or_else(|_| "amqps://guest:guest@localhost:5671/%2f".into())
}

fn amqps_ca() -> String {
    let ca =
        std::env::var("FNMILL_TEST_AMQPS_CA").unwrap_or_else(|_| "/etc/rabbitmq/tls/ca.pem".into());
    assert!(
        std::path::Path::new(&ca).is_file(),
        "no CA certificate at {ca}: run scripts/services.sh rabbitmq, or set FNMILL_TEST_AMQPS_CA"
    );
    ca
}

/// `tls_cert_file` and `tls_key_file` lines for the client certificate `name` (`client`, signed
/// by the broker's CA, or `rogue`, self-signed) made by `scripts/services.sh`.
fn client_certificate(name: &str) -> String {
    let dir =
        std::env::var("FNMILL_TEST_AMQPS_TLS_DIR").unwrap_or_else(|_| "/etc/rabbitmq/tls".into());
    let (cert, key) = (format!("{dir}/{name}.pem"), format!("{dir}/{name}-key.pem"));
    assert!(
        std::path::Path::new(&key).is_file(),
        "no client key at {key}: run scripts/services.sh rabbitmq, or set FNMILL_TEST_AMQPS_TLS_DIR"
    );
    format!("tls_cert_file = \"{cert}\"\ntls_key_file = \"{key}\"")
}

/// 1,000 messages through a source and a sink that both connect over TLS, the URL (with its
/// password) read from a file next to the config. The source presents a client certificate the
/// broker trusts (mutual TLS); the sink presents none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_over_tls_with_the_ca_from_tls_ca_file() {
    let broker = Broker::new().await;
    let (input, output) = (unique("tls-in"), unique("tls-out"));
    broker.queue(&input).await;
    broker.queue(&output).await;
    let messages = keyed_messages(1_000, 10);
    let expected: Vec<String> = messages.iter().map(|m| m.id.clone()).collect();
    broker.publish(&input, messages).await;
    let out = Collector::start(&broker.connection, &output).await;

    let dir = tempfile::tempdir().unwrap();
    let mut route = AmqpRoute::new(&input, &output, None, guest("echo"));
    std::fs::write(dir.path().join("broker-url"), format!("{}\n", amqps_url())).unwrap();
    route.url_file = Some("broker-url".into());
    let ca = format!("tls_ca_file = \"{}\"", amqps_ca());
    route.source_extra = format!("{ca}\n{}", client_certificate("client"));
    route.out_sink_extra = ca;
    let run = Running::start(fnmill(), &route.write(dir.path()));
    wait_for(Duration::from_secs(60), "1,000 outputs over TLS", || {
        out.len() >= 1_000
    })
    .await;
    let log = run.stop();
    let t = tally(&expected, &out.snapshot(), &[]);
    assert_eq!((t.ok, t.duplicates, t.unexpected), (1_000, 0, 0), "{t:?}");
    assert!(t.lost.is_empty(), "lost: {:?}", t.lost);
    assert_eq!(broker.ready(&input).await, 0, "the input was not drained");
    assert!(!log.contains("panicked"), "{log}");
    broker.cleanup().await;
}

/// The broker's certificate, signed by a test CA, without `tls_ca_file`: the handshake is refused with a
/// log line saying why, nothing is consumed, and the process keeps retrying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused_and_retried() {
    refused_and_retried("tls-untrusted", String::new(), String::new()).await;
}

/// A client certificate the broker's CA did not sign: the broker ends the handshake, the log
/// says so (`BadCertificate`), nothing is consumed, the process keeps retrying, and no key
/// material reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_the_broker_does_not_trust_is_refused() {
    let ca = format!("tls_ca_file = \"{}\"", amqps_ca());
    let source = format!("{ca}\n{}", client_certificate("rogue"));
    let log = refused_and_retried("tls-rogue", source, ca).await;
    assert!(!log.contains("BEGIN"), "key material in the log: {log}");
}

/// Runs an amqps:// route whose source (with `source_extra` in its config) cannot connect:
/// waits for a certificate error in the log, checks that the process is up and that the 10
/// input messages are still queued. Returns the log.
async fn refused_and_retried(prefix: &str, source_extra: String, sink_extra: String) -> String {
    let broker = Broker::new().await;
    let (input, output) = broker.queue_pair(prefix).await;
    broker.publish(&input, keyed_messages(10, 1)).await;

    let dir = tempfile::tempdir().unwrap();
    let mut route = AmqpRoute::new(&input, &output, None, guest("echo"));
    route.url = amqps_url();
    route.source_extra = source_extra;
    route.out_sink_extra = sink_extra;
    let mut run = Running::start(fnmill(), &route.write(dir.path()));
    wait_for(
        Duration::from_secs(30),
        "a certificate error in the log",
        || run.log_text().to_lowercase().contains("certificate"),
    )
    .await;
    assert!(
        run.child.try_wait().unwrap().is_none(),
        "fnmill exited: {}",
        run.log_text()
    );
    assert_eq!(broker.ready(&input).await, 10, "messages were consumed");
    let log = run.stop();
    broker.cleanup().await;
    log
}
