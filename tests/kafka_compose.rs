//! The Kafka path of the local stack, checked statically: `docker-compose.yml` parses and has a
//! KRaft Kafka service on the port the example uses, and `examples/kafka/fnmill.toml` loads,
//! consumes a topic into the quickstart function and produces to topics, with every broker
//! address overridable from the environment.

use fnmill_testkit::common;
mod stack_support;

use common::{quickstart_component, root};
use fnmill::config::{SinkConfig, SourceConfig, load_with_env};

#[test]
fn compose_has_a_kraft_kafka_on_the_example_port() {
    // As Compose reads it: the ports come from .env.
    let compose = stack_support::compose();
    let kafka = &compose["services"]["kafka"];
    assert!(
        kafka["image"]
            .as_str()
            .unwrap()
            .starts_with("apache/kafka:4"),
        "{kafka:?}"
    );
    let ports: Vec<&str> = kafka["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(ports.contains(&"9092:9092"), "{ports:?}");
    let env = &kafka["environment"];
    assert_eq!(
        env["KAFKA_PROCESS_ROLES"].as_str(),
        Some("broker,controller")
    );
    assert!(
        env["KAFKA_ADVERTISED_LISTENERS"]
            .as_str()
            .unwrap()
            .contains("localhost:9092")
    );
}

#[test]
fn kafka_example_loads_and_brokers_come_from_the_environment() {
    let path = root().join("examples").join("kafka").join("fnmill.toml");
    let env = [
        ("FNMILL__SOURCES__ORDERS__BROKERS", "kafka-a:9092"),
        ("FNMILL__SINKS__OUT__BROKERS", "kafka-b:9092"),
        ("FNMILL__SINKS__DEAD__BROKERS", "kafka-c:9092"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into_iter()
    .chain([(
        "FNMILL__FUNCTIONS__ENRICH_ORDERS__COMPONENT".to_string(),
        quickstart_component().display().to_string(),
    )]);
    let config = load_with_env(&path, env).unwrap_or_else(|e| panic!("{e}"));
    let Some(SourceConfig::Kafka(source)) = config.sources.get("orders") else {
        panic!("sources.orders is not a Kafka source");
    };
    assert_eq!(source.brokers, "kafka-a:9092");
    assert_eq!(source.topics, ["orders"]);
    let Some(SinkConfig::Kafka(out)) = config.sinks.get("out") else {
        panic!("sinks.out is not a Kafka sink");
    };
    assert_eq!(out.brokers, "kafka-b:9092");
    let Some(SinkConfig::Kafka(dead)) = config.sinks.get("dead") else {
        panic!("sinks.dead is not a Kafka sink");
    };
    assert_eq!(dead.brokers, "kafka-c:9092");
    assert_eq!(dead.topic.as_deref(), Some("orders.dead"));
    let route = &config.routes[0];
    assert_eq!(route.function, "enrich_orders");
    assert_eq!(route.destinations["valid"].target(), Some("orders.valid"));
    assert_eq!(
        route.destinations["invalid"].target(),
        Some("orders.invalid")
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
