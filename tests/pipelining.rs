//! Per-key pipelining: a key's next event starts once the previous event's outputs are handed to
//! their sink ([`Sink::enqueue`]), and every event still settles only on its own confirmation. A
//! sink whose hand-over waits for the confirmation keeps the lane waiting. A failed event held
//! in its lane (no dead-letter destination) abandons the events queued behind it at shutdown;
//! an undecodable event is dead-lettered without running the function.
//!
//! These drive a [`Route`] directly with real guests and scripted sinks, so the test decides when
//! each confirmation arrives and how it ends.

use fnmill_testkit::common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use fnmill::pipeline::{Backoff, DeadLetter, Destination, Route, RouteStats};
use fnmill_connector_api::{
    Confirm, Delivery, Event, Header, Outbox, Outcome, Record, Sink, SinkError, Unconfirmed,
};
use futures::future::BoxFuture;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(20);

/// Records each `enqueue` and holds its confirmation until the test resolves it. A failed
/// confirmation hands the records back marked with a `handed-back` header; a record enqueued
/// again after its failure is confirmed at once.
#[derive(Default)]
struct HeldSink {
    /// Payloads in the order they were enqueued the first time.
    enqueued: Mutex<Vec<Bytes>>,
    /// Pending confirmations by payload, with their records.
    pending: Mutex<HashMap<Bytes, (Confirm, Vec<Record>)>>,
    /// Payloads whose confirmation failed.
    failed: Mutex<Vec<Bytes>>,
    /// Records enqueued again after their confirmation failed.
    republished: Mutex<Vec<Record>>,
}

impl HeldSink {
    fn resolve(&self, payload: &str, result: Result<(), SinkError>) {
        let (confirm, mut records) = self
            .pending
            .lock()
            .unwrap()
            .remove(payload.as_bytes())
            .unwrap_or_else(|| panic!("no pending confirmation for {payload}"));
        confirm(result.map_err(|error| {
            self.failed
                .lock()
                .unwrap()
                .push(Bytes::from(payload.to_owned()));
            for r in &mut records {
                r.headers.push(Header::new("handed-back", "yes"));
            }
            Unconfirmed::new(error, records)
        }));
    }

    fn enqueued(&self) -> Vec<Bytes> {
        self.enqueued.lock().unwrap().clone()
    }
}

impl Sink for HeldSink {
    fn enqueue<'a>(
        &'a self,
        records: &'a [Record],
        _lane: u64,
        confirm: Confirm,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        let payload = records[0].payload.clone();
        if self.failed.lock().unwrap().contains(&payload) {
            self.republished.lock().unwrap().extend_from_slice(records);
            confirm(Ok(()));
        } else {
            self.enqueued.lock().unwrap().push(payload.clone());
            self.pending
                .lock()
                .unwrap()
                .insert(payload, (confirm, records.to_vec()));
        }
        Box::pin(async { Ok(()) })
    }
}

/// A sink whose hand-over waits for the confirmation (as a sink whose transport keeps no order
/// does), released by the test.
#[derive(Default)]
struct GatedSink {
    started: Mutex<Vec<Bytes>>,
    gates: Mutex<HashMap<Bytes, oneshot::Sender<()>>>,
}

impl Sink for GatedSink {
    fn enqueue<'a>(
        &'a self,
        records: &'a [Record],
        _lane: u64,
        confirm: Confirm,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        let (tx, rx) = oneshot::channel();
        let payload = records[0].payload.clone();
        self.started.lock().unwrap().push(payload.clone());
        self.gates.lock().unwrap().insert(payload, tx);
        Box::pin(async move {
            let _ = rx.await;
            confirm(Ok(()));
            Ok(())
        })
    }
}

/// Collects what it is given and confirms it at once.
#[derive(Default)]
struct Collect(Mutex<Vec<Record>>);

impl Collect {
    fn payloads(&self) -> Vec<Bytes> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.payload.clone())
            .collect()
    }
}

impl Sink for Collect {
    fn enqueue<'a>(
        &'a self,
        records: &'a [Record],
        _lane: u64,
        confirm: Confirm,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        self.0.lock().unwrap().extend_from_slice(records);
        confirm(Ok(()));
        Box::pin(async { Ok(()) })
    }
}

fn destination(name: &str, sink: Arc<dyn Sink>) -> Destination {
    Destination {
        sink_name: name.into(),
        sink,
        target: None,
    }
}

fn route(out: Arc<dyn Sink>, dead: Arc<Collect>) -> Arc<Route> {
    route_of(
        "echo",
        out,
        DeadLetter::Destination(destination("dead", dead)),
    )
}

fn route_of(guest: &str, out: Arc<dyn Sink>, dead_letter: DeadLetter) -> Arc<Route> {
    let function = common::load_guest(guest, 16);
    Arc::new(Route {
        name: "pipelining".into(),
        function: Arc::new(function),
        destinations: BTreeMap::from([("out".to_string(), destination("out", out))]),
        dead_letter,
        backoff: Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(1),
            multiplier: 1.0,
            jitter: 0.0,
        },
        max_attempts: 3,
        max_in_flight: 100,
        shards: 2,
        compute: tokio::runtime::Handle::current(),
        io: tokio::runtime::Handle::current(),
        shutdown: CancellationToken::new(),
        stats: Arc::new(RouteStats::default()),
        telemetry: Default::default(),
        fatal: OnceLock::new(),
        repeated_logs: Default::default(),
    })
}

/// Starts the route; returns its outbox and the task that ends with it.
fn start(route: &Arc<Route>) -> (Outbox, tokio::task::JoinHandle<()>) {
    let (outbox, done) = route.clone().start();
    (outbox, tokio::spawn(done))
}

type Settlements = Arc<Mutex<Vec<(String, Outcome)>>>;

/// Sends one delivery per payload, all with the same ordering key; returns what settled.
async fn send_same_key(tx: &Outbox, payloads: &[&str]) -> Settlements {
    let settled: Settlements = Default::default();
    for p in payloads {
        send(tx, p, Some(Bytes::from_static(b"k")), &settled).await;
    }
    settled
}

async fn send(tx: &Outbox, payload: &str, key: Option<Bytes>, settled: &Settlements) {
    let mut event = Event::new(payload, "test", Bytes::copy_from_slice(payload.as_bytes()));
    event.key = key.clone();
    send_event(tx, event, key, settled).await;
}

async fn send_event(tx: &Outbox, event: Event, key: Option<Bytes>, settled: &Settlements) {
    let s = settled.clone();
    let id = event.id.clone();
    let delivery = Delivery::new(event, key, move |o| s.lock().unwrap().push((id, o)));
    assert!(tx.send(delivery).await.is_ok(), "the route is gone");
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn outcomes(settled: &Settlements) -> Vec<(String, Outcome)> {
    let mut v = settled.lock().unwrap().clone();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_event_of_a_key_runs_before_the_previous_is_confirmed() {
    let sink = Arc::new(HeldSink::default());
    let route = route(sink.clone(), Arc::new(Collect::default()));
    let (tx, run) = start(&route);
    let settled = send_same_key(&tx, &["e1", "e2", "e3"]).await;

    // All three ran and handed their outputs over, in key order, with no confirmation yet.
    wait_for("three enqueues", || sink.enqueued().len() == 3).await;
    assert_eq!(
        sink.enqueued(),
        ["e1", "e2", "e3"].map(|p| Bytes::from_static(p.as_bytes()))
    );
    assert!(
        settled.lock().unwrap().is_empty(),
        "nothing settles unconfirmed"
    );

    // Each event settles on its own confirmation, in whatever order they come.
    sink.resolve("e2", Ok(()));
    wait_for("e2 to settle", || settled.lock().unwrap().len() == 1).await;
    assert_eq!(outcomes(&settled), [("e2".to_string(), Outcome::Done)]);
    sink.resolve("e3", Ok(()));
    sink.resolve("e1", Ok(()));
    wait_for("all to settle", || settled.lock().unwrap().len() == 3).await;
    assert!(outcomes(&settled).iter().all(|(_, o)| *o == Outcome::Done));

    drop(tx);
    tokio::time::timeout(DEADLINE, run).await.unwrap().unwrap();
    assert_eq!(
        route.stats.done.load(std::sync::atomic::Ordering::Relaxed),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_confirmations_publish_again_or_dead_letter() {
    let sink = Arc::new(HeldSink::default());
    let dead = Arc::new(Collect::default());
    let route = route(sink.clone(), dead.clone());
    let (tx, run) = start(&route);
    let settled = send_same_key(&tx, &["retry-me", "too-large"]).await;
    wait_for("two enqueues", || sink.enqueued().len() == 2).await;

    sink.resolve("retry-me", Err(SinkError::Retryable("broker away".into())));
    sink.resolve(
        "too-large",
        Err(SinkError::Permanent("message too large".into())),
    );
    wait_for("both to settle", || settled.lock().unwrap().len() == 2).await;

    assert_eq!(
        outcomes(&settled),
        [
            ("retry-me".to_string(), Outcome::Done),
            ("too-large".to_string(), Outcome::DeadLettered),
        ]
    );
    let republished = sink.republished.lock().unwrap().clone();
    assert_eq!(
        republished.iter().map(|r| &r.payload).collect::<Vec<_>>(),
        [&Bytes::from_static(b"retry-me")],
        "the retryable failure is published again, the permanent one is not"
    );
    assert!(
        republished[0]
            .headers
            .iter()
            .any(|h| h.name == "handed-back"),
        "what is published again is what the sink handed back, not a copy the pipeline kept: \
         {:?}",
        republished[0].headers
    );
    assert_eq!(
        route
            .stats
            .sink_retries
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one publish tried again"
    );
    let dead = dead.0.lock().unwrap().clone();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, Bytes::from_static(b"too-large"));
    let kind = dead[0]
        .headers
        .iter()
        .find(|h| h.name == "fnmill.error.kind")
        .map(|h| h.value.clone());
    assert_eq!(kind, Some(Bytes::from_static(b"fatal")));
    drop(tx);
    tokio::time::timeout(DEADLINE, run).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_without_enqueue_keeps_the_lane_waiting_for_its_confirmation() {
    let sink = Arc::new(GatedSink::default());
    let route = route(sink.clone(), Arc::new(Collect::default()));
    let (tx, run) = start(&route);
    let settled = send_same_key(&tx, &["e1", "e2"]).await;
    // An event without a key, sent after e2, runs at once: once it has published, the route
    // has long taken e2 in, which must still wait behind e1's confirmation.
    send(&tx, "free", None, &settled).await;

    wait_for("e1 and the keyless event to publish", || {
        sink.started.lock().unwrap().len() == 2
    })
    .await;
    let mut started = sink.started.lock().unwrap().clone();
    started.sort();
    assert_eq!(
        started,
        [Bytes::from_static(b"e1"), Bytes::from_static(b"free")]
    );
    let gate = sink
        .gates
        .lock()
        .unwrap()
        .remove(b"free".as_slice())
        .unwrap();
    gate.send(()).unwrap();

    let gate = sink.gates.lock().unwrap().remove(b"e1".as_slice()).unwrap();
    gate.send(()).unwrap();
    wait_for("e2 to publish", || sink.started.lock().unwrap().len() == 3).await;
    let gate = sink.gates.lock().unwrap().remove(b"e2".as_slice()).unwrap();
    gate.send(()).unwrap();
    wait_for("all to settle", || settled.lock().unwrap().len() == 3).await;
    assert_eq!(
        outcomes(&settled),
        [
            ("e1".to_string(), Outcome::Done),
            ("e2".to_string(), Outcome::Done),
            ("free".to_string(), Outcome::Done)
        ]
    );
    drop(tx);
    tokio::time::timeout(DEADLINE, run).await.unwrap().unwrap();
}

/// A failed event with nowhere to go holds its lane; at shutdown it is abandoned, and so are the
/// events of its key queued behind it: none of them is published before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lane_abandons_its_queued_events_at_shutdown() {
    let out = Arc::new(Collect::default());
    let route = route_of("poison", out.clone(), DeadLetter::Hold);
    let (tx, run) = start(&route);
    let settled = send_same_key(&tx, &["poison-1", "e2", "e3"]).await;
    // A keyless witness sent after them: once it is out, the route has taken e2 and e3 in.
    send(&tx, "witness", None, &settled).await;
    wait_for("the witness", || {
        out.payloads() == [Bytes::from_static(b"witness")]
    })
    .await;

    route.shutdown.cancel();
    wait_for("all to settle", || settled.lock().unwrap().len() == 4).await;
    assert_eq!(
        outcomes(&settled),
        [
            ("e2".to_string(), Outcome::Abandoned),
            ("e3".to_string(), Outcome::Abandoned),
            ("poison-1".to_string(), Outcome::Abandoned),
            ("witness".to_string(), Outcome::Done),
        ]
    );
    assert_eq!(
        out.payloads(),
        [Bytes::from_static(b"witness")],
        "nothing of the key went out"
    );
    assert_eq!(
        route
            .stats
            .abandoned
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    drop(tx);
    tokio::time::timeout(DEADLINE, run).await.unwrap().unwrap();
}

/// An event its source could not decode goes to the dead-letter destination as `decode`,
/// without running the function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_event_is_dead_lettered_without_running_the_function() {
    let out = Arc::new(Collect::default());
    let dead = Arc::new(Collect::default());
    let route = route(out.clone(), dead.clone());
    let (tx, run) = start(&route);
    let settled: Settlements = Default::default();
    let mut event = Event::new("bad-1", "test", Bytes::from_static(b"{not json"));
    event.decode_error = Some("expected value at line 1 column 2".into());
    send_event(&tx, event, None, &settled).await;
    wait_for("the dead letter", || settled.lock().unwrap().len() == 1).await;
    assert_eq!(
        outcomes(&settled),
        [("bad-1".to_string(), Outcome::DeadLettered)]
    );
    assert!(out.payloads().is_empty(), "the function ran");
    let dead = dead.0.lock().unwrap().clone();
    assert_eq!(dead[0].payload, Bytes::from_static(b"{not json"));
    let header = |name: &str| {
        dead[0]
            .headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| String::from_utf8_lossy(&h.value).into_owned())
    };
    assert_eq!(header("fnmill.error.kind").as_deref(), Some("decode"));
    assert_eq!(header("fnmill.error.attempts").as_deref(), Some("0"));
    assert!(
        header("fnmill.error.message")
            .unwrap()
            .contains("expected value")
    );
    drop(tx);
    tokio::time::timeout(DEADLINE, run).await.unwrap().unwrap();
}
