//! [`KafkaSink`]: produces records with an idempotent producer and resolves each `publish` call
//! once librdkafka's delivery report for every one of its records arrived.
//!
//! The producer is a `ThreadedProducer` whose delivery callback counts down a per-call
//! [`Batch`]: one librdkafka queue and one callback thread serve every concurrent call, and
//! librdkafka batches their records into few produce requests (a future per message measured
//! 1.6–2.5× slower). Sinks with the same brokers and properties share one producer. A producer
//! that raised a fatal error (an idempotence guarantee it can no longer keep) is replaced by a
//! fresh one on the next publish; what was queued on it fails and is published again.
//!
//! Errors: librdkafka retries retriable produce errors by itself (idempotence keeps that free of
//! duplicates and reordering) until `message.timeout.ms`; what still fails is reported as
//! [`SinkError::Retryable`] (the pipeline retries with backoff) unless it can never succeed —
//! a record too large, an unknown or forbidden topic — which is [`SinkError::Permanent`], and the
//! pipeline dead-letters the source event. A success reported without an offset is not taken as
//! stored either (see [`is_unlocated`]): it is reported as [`SinkError::Retryable`], and the
//! record is published again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use fnmill_connector_api::{Confirm, Header, Problem, Record, Sink, SinkError, Unconfirmed};
use futures::future::BoxFuture;
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::{
    BorrowedMessage, DeliveryResult, Header as KafkaHeader, Headers, Message, OwnedHeaders,
};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use serde::Deserialize;
use tracing::{error, warn};

use crate::KafkaError;
use crate::properties::{self, Fixed, PropertyValue, SecretProperty};

/// How long `close` waits for records still queued in librdkafka to be delivered.
const CLOSE_FLUSH: Duration = Duration::from_secs(10);

/// How long to wait before retrying a record librdkafka's full queue refused: long enough for
/// a few deliveries to free space, short against a produce round trip.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(2);

/// `sinks.<name>` with `kind = "kafka"`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, `host:port` separated by commas (librdkafka's `bootstrap.servers`).
    pub brokers: String,
    /// Topic for records whose destination names no `target`. A route destination
    /// `{ sink = "<name>", target = "<topic>" }` picks the topic per destination.
    #[serde(default)]
    pub topic: Option<String>,
    /// Any librdkafka producer property (see librdkafka's CONFIGURATION.md), e.g.
    /// `{ "linger.ms" = 20, "compression.type" = "lz4" }`. `enable.idempotence = true` and
    /// `acks = "all"` are always set: a record counts as delivered only once every in-sync
    /// replica has it, and librdkafka's retries never duplicate or reorder it.
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyValue>,
    /// Properties whose values are secrets, read from the environment or a file when the sink
    /// starts, e.g. `{ "sasl.password" = { env = "KAFKA_PASSWORD" } }`.
    #[serde(default)]
    pub secret_properties: BTreeMap<String, SecretProperty>,
}

impl KafkaSinkConfig {
    pub fn new(brokers: impl Into<String>, topic: Option<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic,
            properties: BTreeMap::new(),
            secret_properties: BTreeMap::new(),
        }
    }
}

impl KafkaSinkConfig {
    /// Makes the files of `secret_properties` absolute against `base_dir`.
    pub fn resolve_paths(&mut self, base_dir: &std::path::Path) {
        for secret in self.secret_properties.values_mut() {
            secret.resolve_path(base_dir);
        }
    }

    /// Everything [`KafkaSink::new`] would refuse, each naming its key.
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.brokers.trim().is_empty() {
            problems.push(Problem::new("brokers", "must not be empty"));
        }
        if self.topic.as_deref().is_some_and(|t| t.trim().is_empty()) {
            problems.push(Problem::new(
                "topic",
                "must not be empty (leave it out to require a target per destination)",
            ));
        }
        let mut client = properties::check(
            &self.brokers,
            &[],
            &self.properties,
            &self.secret_properties,
            SINK_FIXED,
        );
        problems.append(&mut client);
        problems
    }
}

const SINK_FIXED: &[Fixed] = &[
    Fixed {
        name: "enable.idempotence",
        value: "true",
        reason: "librdkafka's internal retries must not duplicate or reorder records",
    },
    Fixed {
        name: "acks",
        value: "all",
        reason: "a record is confirmed only once every in-sync replica has it",
    },
];

/// Where a record was written: its partition and offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    pub partition: i32,
    pub offset: i64,
}

/// How the error of a record reported delivered without an offset begins.
const UNLOCATED: &str = "reported delivered without an offset";

/// Whether `error` is a record librdkafka reported delivered without an offset, which fnmill
/// does not take as stored. librdkafka reports so when a later request of the same partition
/// succeeded while an earlier one was still unanswered or failed ("implicitly acknowledged"),
/// assuming the broker refuses a gap in the idempotent sequence numbers; and when the broker
/// answered "duplicate sequence number". Neither report is proof: test runs saw two records a
/// replay sent to a topic it had just created reported so and missing from the topic (most
/// likely a broker with no state yet for the producer on the new partition took a later batch
/// after refusing the earlier ones). Publishing such a record again costs at worst a duplicate.
pub fn is_unlocated(error: &SinkError) -> bool {
    matches!(error, SinkError::Retryable(m) if m.starts_with(UNLOCATED))
}

/// What a batch resolves with: where its last delivered record landed (exact for a batch of
/// one record, as [`KafkaSink::enqueue_located`] makes), or the first error with the records
/// that were not delivered.
type BatchResult = Result<Option<Located>, Unconfirmed>;

/// Told a batch's outcome, once.
enum OnDone {
    /// The pipeline's confirmation (a [`Sink::enqueue`] call): whether all were delivered.
    Confirm(Confirm),
    /// Where the record landed ([`KafkaSink::enqueue_located`]).
    Located(tokio::sync::oneshot::Sender<Result<Option<Located>, SinkError>>),
}

impl OnDone {
    fn call(self, result: BatchResult) {
        match self {
            OnDone::Confirm(confirm) => confirm(result.map(drop)),
            OnDone::Located(tx) => {
                let _ = tx.send(result.map_err(|u| u.error));
            }
        }
    }
}

/// Counts down one `enqueue` call's delivery reports and confirms it with the first error and
/// every record that failed, rebuilt from its report: the caller keeps no copy of what it
/// handed over, librdkafka's queue holds the only one.
struct Batch {
    inner: Mutex<BatchInner>,
}

struct BatchInner {
    /// Reports still expected, plus one held by `enqueue` until every record is handed over.
    remaining: usize,
    error: Option<SinkError>,
    /// The records that failed, in the order their reports came (a partition's in the order
    /// they were queued).
    unconfirmed: Vec<Record>,
    /// Where the last delivered record landed.
    last: Option<Located>,
    done: Option<OnDone>,
}

impl Batch {
    fn new(done: OnDone) -> Arc<Self> {
        Arc::new(Batch {
            inner: Mutex::new(BatchInner {
                remaining: 1,
                error: None,
                unconfirmed: Vec::new(),
                last: None,
                done: Some(done),
            }),
        })
    }

    fn expect_one_more(&self) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remaining += 1;
    }

    /// One record delivered, to `at`.
    fn delivered(&self, at: Located) {
        self.one_done(|inner| inner.last = Some(at));
    }

    /// Every record of the call is handed over: drops the count `enqueue` held meanwhile.
    fn handed_over(&self) {
        self.one_done(|_| {});
    }

    /// One record failed with `error`; `record` is what to publish again.
    fn failed(&self, error: SinkError, record: Record) {
        self.one_done(|inner| {
            inner.error.get_or_insert(error);
            inner.unconfirmed.push(record);
        });
    }

    fn one_done(&self, update: impl FnOnce(&mut BatchInner)) {
        let done = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            update(&mut inner);
            inner.remaining -= 1;
            if inner.remaining > 0 {
                return;
            }
            let result = match inner.error.take() {
                Some(e) => Err(Unconfirmed::new(e, std::mem::take(&mut inner.unconfirmed))),
                None => Ok(inner.last),
            };
            inner.done.take().map(|c| (c, result))
        };
        // Outside the lock: the pipeline settles the event in it.
        if let Some((done, result)) = done {
            done.call(result);
        }
    }
}

/// A record as its delivery report gives it back (topic, key, payload, headers), to be published
/// again.
fn reported_record(m: &BorrowedMessage<'_>) -> Record {
    Record {
        target: Some(m.topic().to_owned()),
        key: m.key().map(Bytes::copy_from_slice),
        payload: m.payload().map(Bytes::copy_from_slice).unwrap_or_default(),
        headers: m
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        Header::new(h.key, Bytes::copy_from_slice(h.value.unwrap_or_default()))
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The producer's context: receives delivery reports on librdkafka's callback thread.
#[derive(Clone)]
struct SinkContext {
    /// Which producer a log line is about, when sinks with different properties run one each.
    producer: Arc<str>,
}

impl SinkContext {
    /// Names the producer of `config` by its brokers and the names of the properties it sets
    /// (never their values: a careless config may hold a secret in `properties`).
    fn for_config(config: &KafkaSinkConfig) -> Self {
        let names: Vec<&str> = config
            .properties
            .keys()
            .chain(config.secret_properties.keys())
            .map(String::as_str)
            .collect();
        let producer = if names.is_empty() {
            config.brokers.clone()
        } else {
            format!("{} with {}", config.brokers, names.join(", "))
        };
        Self {
            producer: producer.into(),
        }
    }
}

impl ClientContext for SinkContext {
    fn error(&self, error: RdKafkaError, reason: &str) {
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown)
        ) {
            warn!(
                producer = %self.producer,
                error = %reason,
                "Kafka producer: brokers unreachable; retrying"
            );
        } else if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            error!(
                producer = %self.producer,
                error = %error,
                reason,
                "Kafka producer: fatal error; it will be replaced"
            );
        }
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Arc<Batch>;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: Arc<Batch>) {
        match result {
            // Not taken as stored: see `is_unlocated`.
            Ok(m) if m.offset() < 0 => batch.failed(
                SinkError::Retryable(format!(
                    "{UNLOCATED} to {}[{}]; published again",
                    m.topic(),
                    m.partition()
                )),
                reported_record(m),
            ),
            Ok(m) => batch.delivered(Located {
                partition: m.partition(),
                offset: m.offset(),
            }),
            Err((e, m)) => batch.failed(classify(e), reported_record(m)),
        }
    }
}

/// Whether a produce error can ever succeed when tried again.
fn classify(e: &RdKafkaError) -> SinkError {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidMessage
            | C::MessageBatchTooLarge
            | C::InvalidRecord
            | C::UnknownTopic
            | C::UnknownPartition
            | C::InvalidTopic
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::InvalidArgument,
        ) => SinkError::Permanent(e.to_string()),
        _ => SinkError::Retryable(e.to_string()),
    }
}

type SharedProducer = ThreadedProducer<SinkContext>;

/// The producer of one cluster config, replaced by a fresh one after a fatal error.
struct ProducerSlot {
    config: ClientConfig,
    context: SinkContext,
    current: RwLock<Arc<SharedProducer>>,
}

impl ProducerSlot {
    fn new(config: ClientConfig, context: SinkContext) -> Result<Self, KafkaError> {
        let producer = config
            .create_with_context(context.clone())
            .map_err(KafkaError::Client)?;
        Ok(Self {
            config,
            context,
            current: RwLock::new(Arc::new(producer)),
        })
    }

    /// The current producer; a fatal one is replaced first. Records queued on the fatal one
    /// fail (librdkafka purges them when it is dropped) and the pipeline publishes them again.
    fn get(&self) -> Arc<SharedProducer> {
        let current = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // An atomic read inside librdkafka while there is no fatal error.
        let Some((code, reason)) = current.client().fatal_error() else {
            return current;
        };
        let mut slot = self.current.write().unwrap_or_else(|p| p.into_inner());
        if Arc::ptr_eq(&slot, &current) {
            match self.config.create_with_context(self.context.clone()) {
                Ok(fresh) => {
                    warn!(
                        producer = %self.context.producer,
                        error = ?code,
                        reason,
                        "Kafka producer: replaced after its fatal error"
                    );
                    let old = std::mem::replace(&mut *slot, Arc::new(fresh));
                    // Dropping purges and flushes for up to half a second: not on this thread.
                    std::thread::spawn(move || drop(old));
                }
                Err(e) => error!(
                    producer = %self.context.producer,
                    error = %e,
                    "Kafka producer: could not create a replacement"
                ),
            }
        }
        slot.clone()
    }
}

/// Producers by cluster config, so sinks that differ only by topic share one.
fn registry() -> &'static Mutex<HashMap<String, Weak<ProducerSlot>>> {
    static PRODUCERS: OnceLock<Mutex<HashMap<String, Weak<ProducerSlot>>>> = OnceLock::new();
    PRODUCERS.get_or_init(Default::default)
}

/// Produces records to Kafka. Cheap to share: every `publish` goes through one producer.
pub struct KafkaSink {
    producer: Arc<ProducerSlot>,
    topic: Option<String>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// Creates (or joins) the producer for the config. It connects in the background.
    pub fn new(config: KafkaSinkConfig) -> Result<Self, KafkaError> {
        if let Some(p) = config.check().into_iter().next() {
            return Err(KafkaError::Invalid(p));
        }
        let client = properties::client_config(
            &config.brokers,
            &[],
            &config.properties,
            &config.secret_properties,
            SINK_FIXED,
        )?;
        // Secrets are keyed by where they come from, not by their values.
        let key = format!(
            "{}|{:?}|{:?}",
            config.brokers, config.properties, config.secret_properties
        );
        let mut producers = registry().lock().unwrap_or_else(|p| p.into_inner());
        let producer = match producers.get(&key).and_then(Weak::upgrade) {
            Some(p) => p,
            None => {
                let p = Arc::new(ProducerSlot::new(client, SinkContext::for_config(&config))?);
                producers.insert(key, Arc::downgrade(&p));
                p
            }
        };
        Ok(Self {
            producer,
            topic: config.topic,
        })
    }

    /// Queues `record` as [`Sink::enqueue`] does (records of later calls are produced after
    /// it) and returns the future of its delivery report, which says where it was written.
    /// For tools that report offsets, such as `fnmill publish`.
    pub async fn enqueue_located(
        &self,
        record: &Record,
    ) -> BoxFuture<'static, Result<Located, SinkError>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue_all(std::slice::from_ref(record), OnDone::Located(tx))
            .await;
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(SinkError::Retryable("the producer was dropped".into())))?
                .ok_or_else(|| {
                    SinkError::Retryable("the delivery report named no partition".into())
                })
        })
    }

    /// Hands every record to librdkafka's queue, in order; `done` gets their delivery reports.
    /// Records that cannot be queued fail the outcome, not this call.
    async fn enqueue_all(&self, records: &[Record], done: OnDone) {
        let producer = self.producer.get();
        let batch = Batch::new(done);
        for record in records {
            batch.expect_one_more();
            let Some(topic) = record.target.as_deref().or(self.topic.as_deref()) else {
                batch.failed(
                    SinkError::Permanent(
                        "no topic: set the sink's `topic` or the destination's `target`".into(),
                    ),
                    record.clone(),
                );
                continue;
            };
            let mut base =
                BaseRecord::with_opaque_to(topic, batch.clone()).payload(record.payload.as_ref());
            // librdkafka allocates a header list even for none.
            if !record.headers.is_empty() {
                let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
                for h in &record.headers {
                    headers = headers.insert(KafkaHeader {
                        key: &h.name,
                        value: Some(h.value.as_ref()),
                    });
                }
                base = base.headers(headers);
            }
            if let Some(key) = &record.key {
                base = base.key(key.as_ref());
            }
            loop {
                match producer.send(base) {
                    Ok(()) => break,
                    Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        base = back;
                        tokio::time::sleep(QUEUE_FULL_WAIT).await;
                    }
                    Err((e, back)) => {
                        // The record never entered the queue: no report will come for it.
                        drop(back);
                        batch.failed(classify(&e), record.clone());
                        break;
                    }
                }
            }
        }
        batch.handed_over();
    }
}

impl Sink for KafkaSink {
    /// One producer queue keeps the order records were handed over in, per partition, whatever
    /// the lane, and the idempotent producer keeps it through librdkafka's retries.
    fn enqueue<'a>(
        &'a self,
        records: &'a [Record],
        _lane: u64,
        confirm: Confirm,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            self.enqueue_all(records, OnDone::Confirm(confirm)).await;
            Ok(())
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        let producer = self.producer.get();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || producer.flush(CLOSE_FLUSH))
                .await
                .map_err(|e| SinkError::Retryable(e.to_string()))?
                .map_err(|e| SinkError::Retryable(format!("flushing the producer: {e}")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A producer's log lines name its brokers and the properties it sets, never their values.
    #[test]
    fn a_producer_is_named_by_brokers_and_property_names_only() {
        let mut c = KafkaSinkConfig::new("b1:9092,b2:9092", None);
        assert_eq!(&*SinkContext::for_config(&c).producer, "b1:9092,b2:9092");
        c.properties
            .insert("linger.ms".into(), PropertyValue::Integer(20));
        c.properties.insert(
            "sasl.password".into(),
            PropertyValue::Text("careless".into()),
        );
        c.secret_properties.insert(
            "ssl.key.password".into(),
            SecretProperty {
                env: Some("PW".into()),
                file: None,
            },
        );
        let name = SinkContext::for_config(&c).producer;
        assert_eq!(
            &*name,
            "b1:9092,b2:9092 with linger.ms, sasl.password, ssl.key.password"
        );
        assert!(!name.contains("careless") && !name.contains("20"));
    }

    #[test]
    fn too_large_is_permanent_and_timeouts_are_retryable() {
        let e = RdKafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(matches!(classify(&e), SinkError::Permanent(_)));
        let e = RdKafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert!(classify(&e).is_retryable());
    }

    #[test]
    fn idempotence_cannot_be_switched_off() {
        let mut c = KafkaSinkConfig::new("127.0.0.1:1", Some("t".into()));
        c.properties
            .insert("enable.idempotence".into(), PropertyValue::Bool(false));
        let err = KafkaSink::new(c).unwrap_err().to_string();
        assert!(err.contains("enable.idempotence"), "{err}");
    }

    /// Each record's delivery report says where it landed: consecutive offsets of one
    /// partition for records of one key, in the order they were queued.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn enqueue_located_reports_partition_and_offset() {
        use rdkafka::mocking::MockCluster;
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 3, 1).unwrap();
        let sink = KafkaSink::new(KafkaSinkConfig::new(
            cluster.bootstrap_servers(),
            Some("t".into()),
        ))
        .unwrap();
        let mut confirmations = Vec::new();
        for i in 0..5 {
            let record = Record {
                target: None,
                key: Some(Bytes::from_static(b"same-key")),
                payload: Bytes::from(format!("v{i}")),
                headers: vec![],
            };
            confirmations.push(sink.enqueue_located(&record).await);
        }
        let mut located = Vec::new();
        for c in confirmations {
            located.push(c.await.unwrap());
        }
        let partition = located[0].partition;
        assert!(
            located.iter().all(|l| l.partition == partition),
            "{located:?}"
        );
        let offsets: Vec<i64> = located.iter().map(|l| l.offset).collect();
        assert_eq!(offsets, [0, 1, 2, 3, 4]);
    }

    /// A batch the broker answers "duplicate sequence number" is reported delivered without an
    /// offset; the sink does not confirm it but hands its records back to be published again,
    /// and the mock, which never stored them, holds them once that is done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_reported_delivered_without_an_offset_come_back_unconfirmed() {
        use rdkafka::mocking::MockCluster;
        use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_DUPLICATE_SEQUENCE_NUMBER],
        );
        let sink = KafkaSink::new(KafkaSinkConfig::new(
            cluster.bootstrap_servers(),
            Some("t".into()),
        ))
        .unwrap();
        let record = Record {
            target: None,
            key: Some(Bytes::from_static(b"k")),
            payload: Bytes::from_static(b"v"),
            headers: vec![],
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let confirm: Confirm = Box::new(move |result| {
            let _ = tx.send(result);
        });
        sink.enqueue(std::slice::from_ref(&record), 0, confirm)
            .await
            .unwrap();
        let unconfirmed = tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert!(is_unlocated(&unconfirmed.error), "{:?}", unconfirmed.error);
        assert_eq!(unconfirmed.records.len(), 1);
        assert_eq!(unconfirmed.records[0].payload, record.payload);
        let again = sink.enqueue_located(&unconfirmed.records[0]).await;
        let at = tokio::time::timeout(Duration::from_secs(20), again)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(at.offset, 0, "the first send was never stored");
    }

    /// Records that were not delivered come back with the failure, rebuilt from their delivery
    /// reports (topic, key, payload, headers) in the order they were queued: the caller kept no
    /// copy. Here the only broker is down and the records time out in librdkafka's queue.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn undelivered_records_come_back_rebuilt_from_their_reports() {
        use rdkafka::mocking::MockCluster;
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let mut config = KafkaSinkConfig::new(cluster.bootstrap_servers(), Some("t".into()));
        config
            .properties
            .insert("message.timeout.ms".into(), PropertyValue::Integer(500));
        cluster.broker_down(1).unwrap();
        let sink = KafkaSink::new(config).unwrap();
        let records: Vec<Record> = (0..3)
            .map(|i| Record {
                target: None,
                key: (i != 1).then(|| Bytes::from(format!("k{i}"))),
                payload: Bytes::from(format!("v{i}")),
                headers: vec![Header::new("h", format!("{i}"))],
            })
            .collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let confirm: Confirm = Box::new(move |result| {
            let _ = tx.send(result);
        });
        sink.enqueue(&records, 0, confirm).await.unwrap();
        let unconfirmed = tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .expect("a delivery report for every record within the timeout")
            .unwrap()
            .expect_err("the broker is down");
        assert!(unconfirmed.error.is_retryable(), "{:?}", unconfirmed.error);
        let expected: Vec<Record> = records
            .into_iter()
            .map(|r| Record {
                target: Some("t".into()),
                ..r
            })
            .collect();
        assert_eq!(unconfirmed.records, expected);
    }

    /// librdkafka's test hook raises a fatal error on the producer (what a broken idempotence
    /// guarantee does); the next publish goes through a fresh producer and succeeds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_producer_with_a_fatal_error_is_replaced() {
        use rdkafka::mocking::MockCluster;
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let sink = KafkaSink::new(KafkaSinkConfig::new(
            cluster.bootstrap_servers(),
            Some("t".into()),
        ))
        .unwrap();
        let record = || Record {
            target: None,
            key: Some(Bytes::from_static(b"k")),
            payload: Bytes::from_static(b"v"),
            headers: vec![],
        };
        sink.publish(vec![record()]).await.unwrap();

        let first = sink.producer.get();
        let code = rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER;
        // SAFETY: a live producer handle and a NUL-terminated reason.
        let raised = unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                first.client().native_ptr(),
                code,
                c"injected by the test".as_ptr(),
            )
        };
        assert_eq!(
            raised,
            rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR
        );
        assert!(first.client().fatal_error().is_some());

        sink.publish(vec![record()]).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &sink.producer.get()), "replaced");
    }
}
