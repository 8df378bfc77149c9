//! RabbitMQ over TLS (`amqps://`), against the TLS listener `scripts/services.sh` opens
//! (`FNMILL_TEST_AMQPS_URL`, default `amqps://guest:guest@localhost:5671/%2f`, trusting the
//! test CA at `FNMILL_TEST_AMQPS_CA`): messages flow through `fnmill run` when
//! the certificate is trusted through `tls_ca_file`; without it the handshake is refused, the
//! source reports not ready and the process stays up. Queues are made, filled and read over the
//! plain listener of the same broker.

#[path = "amqp_common/mod.rs"]
mod amqp_common;
mod common;

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

/// 1,000 messages through a source and a sink that both connect over TLS, the URL (with its
/// password) read from a file next to the config.
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
    route.source_extra = ca.clone();
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
    let broker = Broker::new().await;
    let (input, output) = (unique("tls-untrusted-in"), unique("tls-untrusted-out"));
    broker.queue(&input).await;
    broker.queue(&output).await;
    broker.publish(&input, keyed_messages(10, 1)).await;

    let dir = tempfile::tempdir().unwrap();
    let mut route = AmqpRoute::new(&input, &output, None, guest("echo"));
    route.url = amqps_url();
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
    run.stop();
    broker.cleanup().await;
}
