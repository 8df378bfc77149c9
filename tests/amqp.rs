//! RabbitMQ end to end through `fnmill run`, against the broker at `FNMILL_TEST_AMQP_URL`
//! (default 127.0.0.1:5672, guest/guest), with random queue names per test: every id comes out
//! in per-key order; poison goes to the dead-letter queue with its original bytes; `kill -9` and
//! cut connections lose nothing; an unroutable output dead-letters its event; a quorum queue with
//! a delivery limit and the broker's own dead-letter exchange keeps the same guarantees.

use fnmill_testkit::amqp_common;
use fnmill_testkit::common;

use std::collections::HashMap;
use std::time::Duration;

use amqp_common::{
    AmqpRoute, Broker, Collector, Message, Proxy, Running, keyed_messages, tally, unique, wait_for,
};
use common::{fnmill, guest};
use lapin::types::{AMQPValue, FieldTable};

fn ids(messages: &[Message]) -> Vec<String> {
    messages.iter().map(|m| m.id.clone()).collect()
}

/// An input queue holding `total` messages over `keys` ordering keys, and an output queue read
/// by a collector: what the resilience tests run a route over.
struct Backlog {
    broker: Broker,
    input: String,
    output: String,
    messages: Vec<Message>,
    out: Collector,
}

impl Backlog {
    async fn new(prefix: &str, total: usize, keys: usize) -> Self {
        let broker = Broker::new().await;
        let (input, output) = broker.queue_pair(prefix).await;
        let messages = keyed_messages(total, keys);
        broker
            .publish(&input, messages.iter().map(clone_message))
            .await;
        let out = Collector::start(&broker.connection, &output).await;
        Self {
            broker,
            input,
            output,
            messages,
            out,
        }
    }

    /// Waits until every id came out, stops fnmill and returns its log and the tally.
    async fn every_id_out(&self, run: Running) -> (String, amqp_common::Tally) {
        let expected = ids(&self.messages);
        run.wait_for(Duration::from_secs(120), "every id out", || {
            self.out.len() >= self.messages.len()
                && tally(&expected, &self.out.snapshot(), &[]).lost.is_empty()
        })
        .await;
        let log = run.stop();
        let t = tally(&expected, &self.out.snapshot(), &[]);
        assert!(t.lost.is_empty() && t.ok == self.messages.len(), "{t:?}");
        (log, t)
    }
}

/// 20,000 messages over 100 ordering keys: every id comes out exactly once, each key's messages
/// in the order they were published, and the input queue is left empty (everything acked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_every_id_out_in_per_key_order() {
    let broker = Broker::new().await;
    let (input, output) = (unique("e2e-in"), unique("e2e-out"));
    broker.queue(&input).await;
    broker.queue(&output).await;
    let messages = keyed_messages(20_000, 100);
    broker
        .publish(&input, messages.iter().map(clone_message))
        .await;
    let out = Collector::start(&broker.connection, &output).await;

    let dir = tempfile::tempdir().unwrap();
    let config = AmqpRoute::new(&input, &output, None, guest("echo")).write(dir.path());
    let run = Running::start(fnmill(), &config);
    wait_for(Duration::from_secs(120), "20,000 outputs", || {
        out.len() >= 20_000
    })
    .await;
    run.stop();

    let outputs = out.snapshot();
    let t = tally(&ids(&messages), &outputs, &[]);
    assert!(
        t.lost.is_empty(),
        "lost: {:?}",
        &t.lost[..t.lost.len().min(10)]
    );
    assert_eq!((t.ok, t.duplicates, t.unexpected), (20_000, 0, 0), "{t:?}");
    let mut last: HashMap<String, i64> = HashMap::new();
    for r in &outputs {
        let v = r.json();
        let (key, seq) = (
            v["key"].as_str().unwrap().to_string(),
            v["seq"].as_i64().unwrap(),
        );
        let prev = last.insert(key.clone(), seq).unwrap_or(-1);
        assert!(seq > prev, "key {key}: seq {seq} after {prev}");
        assert_eq!(r.headers.get("k"), Some(&key), "headers pass through");
    }
    assert_eq!(broker.ready(&input).await, 0);
    broker.cleanup().await;
}

fn clone_message(m: &Message) -> Message {
    Message {
        id: m.id.clone(),
        payload: m.payload.clone(),
        headers: m.headers.clone(),
    }
}

/// A poison message (the `poison` guest fails it as fatal) lands in the dead-letter queue with
/// its original payload bytes and headers plus `fnmill.error.*`; the rest come out; nothing stays
/// in the input queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_to_the_dead_letter_queue_with_headers_and_original_bytes() {
    let broker = Broker::new().await;
    let (input, output, dead) = (unique("p-in"), unique("p-out"), unique("p-dead"));
    for q in [&input, &output, &dead] {
        broker.queue(q).await;
    }
    let mut messages = keyed_messages(200, 10);
    // Not JSON, odd bytes: must come back exactly.
    let poison_payload = b"{\"id\": \"m7\",  \"poison\" :true}\xff\x00 tail".to_vec();
    messages[7].payload = poison_payload.clone();
    messages[7]
        .headers
        .push(("traceparent".into(), "00-abc-def-01".into()));
    broker
        .publish(&input, messages.iter().map(clone_message))
        .await;
    let out = Collector::start(&broker.connection, &output).await;
    let dl = Collector::start(&broker.connection, &dead).await;

    let dir = tempfile::tempdir().unwrap();
    let config = AmqpRoute::new(&input, &output, Some(&dead), guest("poison")).write(dir.path());
    let run = Running::start(fnmill(), &config);
    wait_for(
        Duration::from_secs(60),
        "199 outputs and 1 dead letter",
        || out.len() >= 199 && !dl.is_empty(),
    )
    .await;
    run.stop();

    let dead_letters = dl.snapshot();
    let t = tally(&ids(&messages), &out.snapshot(), &dead_letters);
    assert_eq!(
        (t.ok, t.dead_lettered, t.lost.len(), t.duplicates),
        (199, 1, 0, 0),
        "{t:?}"
    );
    let d = &dead_letters[0];
    assert_eq!(d.payload, poison_payload, "original bytes");
    let h = &d.headers;
    assert_eq!(h["k"], "k7");
    assert_eq!(h["traceparent"], "00-abc-def-01");
    assert_eq!(h["fnmill.error.kind"], "fatal");
    assert!(
        h["fnmill.error.message"].contains("poison message"),
        "{h:?}"
    );
    assert_eq!(h["fnmill.error.event.id"], "m7");
    assert_eq!(h["fnmill.error.function"], "f");
    assert_eq!(h["fnmill.error.source"], "in");
    assert_eq!(h["fnmill.error.attempts"], "1");
    assert_eq!(h["fnmill.error.origin.queue"], input);
    assert!(h.contains_key("fnmill.error.origin.delivery_tag"), "{h:?}");
    assert_eq!(h["fnmill.error.origin.redelivered"], "false");
    assert_eq!(broker.ready(&input).await, 0);
    broker.cleanup().await;
}

/// `kill -9` of `fnmill run` five times while 50,000 messages flow: each kill lands mid-stream
/// (outputs grew since the start and input is left), the next run picks up the unacked
/// messages, and in the end nothing is lost and duplicates stay within the prefetch per kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_five_times_loses_nothing() {
    const TOTAL: usize = 50_000;
    const KILLS: usize = 5;
    let broker = Broker::new().await;
    let (input, output) = (unique("k-in"), unique("k-out"));
    broker.queue(&input).await;
    broker.queue(&output).await;
    let messages = keyed_messages(TOTAL, 100);
    broker
        .publish(&input, messages.iter().map(clone_message))
        .await;
    let out = Collector::start(&broker.connection, &output).await;

    let dir = tempfile::tempdir().unwrap();
    let route = AmqpRoute::new(&input, &output, None, guest("echo"));
    let config = route.write(dir.path());
    for kill in 0..KILLS {
        let before = out.len();
        let mut run = Running::start(fnmill(), &config);
        // Let it make progress — a slice of the total — before the kill.
        let step = 4_000;
        wait_for(Duration::from_secs(120), "progress before the kill", || {
            out.len() >= before + step
        })
        .await;
        run.kill9();
        let at_kill = out.len();
        let left = broker.ready(&input).await;
        assert!(
            at_kill < TOTAL && left > 0,
            "kill {kill} must land mid-stream: {at_kill} out, {left} left in the queue"
        );
    }
    let run = Running::start(fnmill(), &config);
    let expected = ids(&messages);
    wait_for(Duration::from_secs(180), "every id out", || {
        out.len() >= TOTAL && tally(&expected, &out.snapshot(), &[]).lost.is_empty()
    })
    .await;
    run.stop();
    let t = tally(&expected, &out.snapshot(), &[]);
    assert!(t.lost.is_empty(), "lost {}", t.lost.len());
    assert_eq!(t.ok, TOTAL);
    assert!(
        t.duplicates <= KILLS * route.prefetch as usize,
        "{} duplicates for {KILLS} kills at prefetch {}",
        t.duplicates,
        route.prefetch
    );
    assert_eq!(broker.ready(&input).await, 0);
    broker.cleanup().await;
}

/// The connection to the broker is cut under fnmill (a TCP proxy in the test drops every socket)
/// twice mid-run: it logs the loss, reconnects with backoff, and every id still comes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_reconnect_and_lose_nothing() {
    const TOTAL: usize = 10_000;
    let b = Backlog::new("c", TOTAL, 50).await;
    let proxy = Proxy::start().await;

    let dir = tempfile::tempdir().unwrap();
    let mut route = AmqpRoute::new(&b.input, &b.output, None, guest("echo"));
    route.url = proxy.url();
    let run = Running::start(fnmill(), &route.write(dir.path()));
    for (i, at) in [2_000, 5_000].into_iter().enumerate() {
        run.wait_for(Duration::from_secs(60), "progress before the cut", || {
            b.out.len() >= at
        })
        .await;
        let cut = proxy.cut();
        assert!(cut >= 2, "source and sink connections cut, got {cut}");
        let at_cut = b.out.len();
        assert!(at_cut < TOTAL, "cut {i} must land mid-stream");
        run.wait_for(Duration::from_secs(30), "the loss logged", || {
            run.logged("Connection to the broker lost")
        })
        .await;
        run.wait_for(
            Duration::from_secs(60),
            &format!("progress after cut {i} ({at_cut} outputs then)"),
            || b.out.len() > at_cut + 500,
        )
        .await;
    }
    let (log, t) = b.every_id_out(run).await;
    assert!(log.contains("Consuming"), "{log}");
    // Per cut, up to a prefetch window of unacked messages comes back from the broker, and the
    // same events — still in the pipeline when the sink's connection went too — may republish
    // an output whose confirm was lost: at most two copies per in-flight event.
    assert!(t.duplicates <= 2 * 2 * route.prefetch as usize, "{t:?}");
    assert_eq!(b.broker.ready(&b.input).await, 0);
    b.broker.cleanup().await;
}

/// The sink's connection goes silent without a reset (a frozen network path; heartbeats far too
/// slow to notice): its confirms time out, the channel it then asks for on the same connection
/// times out too, and the sink gives that connection up and connects again. Nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_connection_that_stops_answering_is_replaced() {
    const TOTAL: usize = 10_000;
    let b = Backlog::new("f", TOTAL, 50).await;
    let proxy = Proxy::start().await;

    let dir = tempfile::tempdir().unwrap();
    let mut route = AmqpRoute::new(&b.input, &b.output, None, guest("echo"));
    route.sink_url = Some(proxy.url());
    // The broker caps the heartbeat at its own 60 s: noticed that way after about two minutes.
    route.out_sink_extra = "confirm_timeout = \"2s\"\nheartbeat = \"600s\"\n".into();
    let started = std::time::Instant::now();
    let mut cmd = fnmill();
    // The lines the throttle holds back go out at debug: counted below.
    cmd.env("RUST_LOG", "info,fnmill::pipeline::event=debug");
    let run = Running::start(cmd, &route.write(dir.path()));
    run.wait_for(
        Duration::from_secs(60),
        "progress before the freeze",
        || b.out.len() >= 2_000,
    )
    .await;
    proxy.freeze();
    assert!(b.out.len() < TOTAL, "the freeze must land mid-stream");
    run.wait_for(
        Duration::from_secs(30),
        "the silent connection given up",
        || run.logged("does not answer on this connection"),
    )
    .await;
    let (log, _) = b.every_id_out(run).await;
    assert!(log.contains("no publisher confirm within 2s"), "{log}");
    // Every output outstanding on the frozen connection fails; the warnings about it are let
    // through at most once a second each, the rest logged at debug. (The republished outputs
    // then fail to get a channel on it, at least once, before the sink connects again.)
    let seconds = started.elapsed().as_secs() as usize + 1;
    let count = |line: &str, level: &str| {
        log.lines()
            .filter(|l| l.contains(line) && l.contains(level))
            .count()
    };
    for line in [
        "Outputs not confirmed; publishing them again",
        "Sink failed; retrying",
    ] {
        let warned = count(line, " WARN ");
        assert!(
            (1..=seconds).contains(&warned),
            "`{line}`: {warned} warnings in {seconds} s:\n{log}"
        );
    }
    let unconfirmed = "Outputs not confirmed; publishing them again";
    assert!(
        count(unconfirmed, " DEBUG ") > count(unconfirmed, " WARN "),
        "nothing held back:\n{log}"
    );
    assert_eq!(b.broker.ready(&b.input).await, 0);
    b.broker.cleanup().await;
}

/// Outputs to an exchange with no binding come back (`mandatory`): each event is dead-lettered
/// with an `unroutable` reason, nothing is acked as done, and the input queue ends empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_to_an_unbound_exchange_is_dead_lettered_not_done() {
    let broker = Broker::new().await;
    let (input, dead) = (unique("u-in"), unique("u-dead"));
    let exchange = unique("u-exchange");
    broker.queue(&input).await;
    broker.queue(&dead).await;
    let messages = keyed_messages(20, 4);
    broker
        .publish(&input, messages.iter().map(clone_message))
        .await;
    let dl = Collector::start(&broker.connection, &dead).await;

    let dir = tempfile::tempdir().unwrap();
    let mut route = AmqpRoute::new(&input, "anything", Some(&dead), guest("echo"));
    // The sink declares its exchange (auto-deleted later) and binds nothing to it.
    route.out_sink_extra = format!(
        "exchange = \"{exchange}\"\ndeclare = {{ exchanges = [{{ name = \"{exchange}\", type = \"direct\", durable = false, auto_delete = true }}] }}\n"
    );
    let run = Running::start(fnmill(), &route.write(dir.path()));
    wait_for(Duration::from_secs(60), "20 dead letters", || {
        dl.len() >= 20
    })
    .await;
    let log = run.stop();

    let dead_letters = dl.snapshot();
    let t = tally(&ids(&messages), &[], &dead_letters);
    assert_eq!((t.dead_lettered, t.lost.len()), (20, 0), "{t:?}\n{log}");
    for d in &dead_letters {
        assert_eq!(d.headers["fnmill.error.kind"], "fatal");
        assert!(
            d.headers["fnmill.error.message"].contains("unroutable"),
            "{:?}",
            d.headers
        );
    }
    assert_eq!(broker.ready(&input).await, 0);
    broker.cleanup().await;
}

/// A quorum queue with `x-delivery-limit`, declared by fnmill's own `declare` config, with
/// `dead_letter = "broker"`: poison is rejected to the queue's dead-letter exchange (arriving
/// with the broker's `x-death`/`x-first-death-*` headers), the rest come out, a `kill -9`
/// mid-run loses nothing, and redeliveries carry the broker's `x-delivery-count`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queue_with_delivery_limit_and_broker_dead_lettering() {
    const TOTAL: usize = 6_000;
    let broker = Broker::new().await;
    let (input, output, dlq) = (unique("q-in"), unique("q-out"), unique("q-dlq"));
    broker.queue(&output).await;
    broker.queue(&dlq).await;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(10));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dlq.as_str().into()),
    );
    broker.queue_with(&input, args).await;
    let mut messages = keyed_messages(TOTAL, 20);
    let poison: Vec<usize> = vec![10, 2_000, 5_999];
    for &i in &poison {
        messages[i].payload = format!("{{\"id\":\"m{i}\",\"poison\":true}}").into_bytes();
    }
    broker
        .publish(&input, messages.iter().map(clone_message))
        .await;
    let out = Collector::start(&broker.connection, &output).await;
    let dl = Collector::start(&broker.connection, &dlq).await;

    let dir = tempfile::tempdir().unwrap();
    let mut route = AmqpRoute::new(&input, &output, None, guest("poison"));
    route.source_extra = format!(
        "dead_letter = \"broker\"\n\
         [[sources.in.declare.queues]]\n\
         name = \"{input}\"\n\
         type = \"quorum\"\n\
         arguments = {{ \"x-delivery-limit\" = 10, \"x-dead-letter-exchange\" = \"\", \"x-dead-letter-routing-key\" = \"{dlq}\" }}\n"
    );
    let config = route.write(dir.path());
    let mut run = Running::start(fnmill(), &config);
    wait_for(Duration::from_secs(60), "progress before the kill", || {
        out.len() >= 1_500
    })
    .await;
    run.kill9();
    assert!(out.len() < TOTAL, "the kill must land mid-stream");
    let run = Running::start(fnmill(), &config);
    let expected = ids(&messages);
    wait_for(
        Duration::from_secs(120),
        "every id out or dead-lettered",
        || {
            let t = tally(&expected, &out.snapshot(), &dl.snapshot());
            t.lost.is_empty()
        },
    )
    .await;
    let log = run.stop();

    let dead_letters = dl.snapshot();
    let t = tally(&expected, &out.snapshot(), &dead_letters);
    assert_eq!(
        (t.ok, t.dead_lettered, t.lost.len()),
        (TOTAL - poison.len(), poison.len(), 0),
        "{t:?}\n{log}"
    );
    assert!(t.duplicates <= 100, "{t:?}");
    for d in &dead_letters {
        assert!(d.payload.windows(6).any(|w| w == b"poison"));
        assert_eq!(
            d.headers.get("x-first-death-reason").map(String::as_str),
            Some("rejected"),
            "{:?}",
            d.headers
        );
        assert_eq!(d.headers.get("x-first-death-queue"), Some(&input));
    }
    // Messages that were in flight at the kill came back with a delivery count.
    let redelivered = out
        .snapshot()
        .iter()
        .filter(|r| r.headers.contains_key("x-delivery-count"))
        .count();
    assert!(
        redelivered > 0,
        "the kill left unacked messages that came back"
    );
    assert_eq!(broker.ready(&input).await, 0);
    broker.cleanup().await;
}
