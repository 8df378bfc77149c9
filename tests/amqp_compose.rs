//! The RabbitMQ path of the local stack, checked statically: `docker-compose.yml` has a RabbitMQ
//! service on the port the example uses, and `examples/amqp/fnmill.toml` loads — a quorum-queue
//! source with a header ordering key, exchange sinks, routing keys as targets — with every broker
//! URL overridable from the environment.

use fnmill_testkit::common;
mod stack_support;

use common::{quickstart_component, root};
use fnmill::config::{SinkConfig, SourceConfig, load_with_env};
use fnmill_connector_amqp::OrderingKey;
use fnmill_connector_amqp::config::QueueType;

#[test]
fn compose_has_rabbitmq_on_the_example_port() {
    // As Compose reads it: the ports come from .env.
    let compose = stack_support::compose();
    let rabbit = &compose["services"]["rabbitmq"];
    assert!(
        rabbit["image"].as_str().unwrap().starts_with("rabbitmq:"),
        "{rabbit:?}"
    );
    let ports: Vec<&str> = rabbit["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(ports.contains(&"5672:5672"), "{ports:?}");
    assert!(root().join("examples/amqp/fnmill.toml").is_file());
}

#[test]
fn amqp_example_loads_and_urls_come_from_the_environment() {
    let path = root().join("examples").join("amqp").join("fnmill.toml");
    let env = [
        (
            "FNMILL__SOURCES__ORDERS__URL",
            "amqp://a:b@rabbit-a:5672/%2f",
        ),
        ("FNMILL__SINKS__OUT__URL", "amqp://a:b@rabbit-b:5672/%2f"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into_iter()
    .chain([(
        "FNMILL__FUNCTIONS__ENRICH_ORDERS__COMPONENT".to_string(),
        quickstart_component().display().to_string(),
    )]);
    let config = load_with_env(&path, env).unwrap_or_else(|e| panic!("{e}"));
    let Some(SourceConfig::Amqp(source)) = config.sources.get("orders") else {
        panic!("sources.orders is not an AMQP source");
    };
    assert_eq!(
        source.url.as_ref().map(|u| u.0.as_str()),
        Some("amqp://a:b@rabbit-a:5672/%2f")
    );
    assert_eq!(source.queue, "orders");
    assert_eq!(
        source.ordering_key,
        OrderingKey::Header("customer_id".into())
    );
    assert_eq!(source.declare.queues[0].kind, QueueType::Quorum);
    let Some(SinkConfig::Amqp(out)) = config.sinks.get("out") else {
        panic!("sinks.out is not an AMQP sink");
    };
    assert_eq!(
        out.url.as_ref().map(|u| u.0.as_str()),
        Some("amqp://a:b@rabbit-b:5672/%2f")
    );
    assert_eq!(out.exchange, "orders.out");
    let route = &config.routes[0];
    assert_eq!(route.destinations["valid"].target(), Some("valid"));
    assert_eq!(
        route.dead_letter.as_ref().unwrap().target(),
        Some("orders.dead")
    );
    // The component path the example names is where the examples build puts it.
    let named = path
        .parent()
        .unwrap()
        .join("../target/wasm32-wasip2/release/quickstart_orders.wasm");
    assert_eq!(
        std::fs::canonicalize(named).unwrap(),
        std::fs::canonicalize(quickstart_component()).unwrap()
    );
}
