//! [`KafkaSource`]: a consumer-group member that lends each message out as a [`Delivery`] and
//! stores, per partition, the contiguous watermark of messages settled as done or dead-lettered.
//!
//! One dedicated thread owns the librdkafka consumer. It polls messages, hands them to the
//! pipeline, applies settlements and stores offsets; librdkafka runs the rebalance callbacks on
//! this same thread (inside `poll`), so the bookkeeping needs no cross-thread coordination beyond
//! the channel the settle closures send on. Settle closures, called wherever an event finished,
//! only send a message.
//!
//! Backpressure: when the pipeline's channel is full, the message in hand is held and every
//! assigned partition is paused, so librdkafka stops fetching instead of fnmill buffering; the
//! partitions resume once the held messages are handed over. (librdkafka resumes a paused
//! partition at the position after the last message it returned, so nothing is skipped.)

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use fnmill_connector_api::settlement::{self, OrderedWindow, Seq, Settled, Settlements, Settler};
use fnmill_connector_api::{
    Delivery, Event, Header, OriginValue, Outbox, Problem, Readiness, Source, SourceContext,
    SourceError,
};
use futures::future::BoxFuture;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::runtime::Handle;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::KafkaError;
use crate::properties::{self, Fixed, PropertyValue, SecretProperty};

/// How long one `poll` may block while idle: the latency of noticing shutdown and of applying
/// settlements when no message arrives. Short enough to be unnoticeable, long enough that an
/// idle source costs nothing measurable.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// `poll` timeout while messages are held for a full pipeline: how soon a freed slot is used.
const HELD_POLL: Duration = Duration::from_millis(5);

/// Messages taken from librdkafka's queue in a row before the consumer loop's bookkeeping
/// (settlements, offset stores, commits, pausing) runs again: it then costs a message 1/64th of
/// what it did once per message.
const POLL_BATCH: usize = 64;

/// How long a message waits for room in a full pipeline before the partitions are paused. A
/// busy pipeline frees a slot within milliseconds; pausing at once would make librdkafka drop
/// and fetch again its prefetched messages on every resume.
const PAUSE_AFTER: Duration = Duration::from_millis(100);

/// While not ready, how often the source asks the cluster for metadata to learn it is back.
const READINESS_PROBE: Duration = Duration::from_secs(2);

/// librdkafka's default `session.timeout.ms`.
const DEFAULT_SESSION_TIMEOUT_MS: u64 = 45_000;

/// Where `drain_timeout` comes from: below the 20 s default `runtime.shutdown_grace`, itself
/// below Kubernetes' 30 s between SIGTERM and SIGKILL, so offsets are committed before either.
fn default_drain_timeout() -> Duration {
    Duration::from_secs(15)
}

/// `sources.<name>` with `kind = "kafka"`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap brokers, `host:port` separated by commas (librdkafka's `bootstrap.servers`).
    pub brokers: String,
    /// Consumer group id. Replicas with the same group share the partitions between them.
    pub group: String,
    /// Topics to consume. A name starting with `^` is a regular expression matched against every
    /// topic of the cluster, including topics created later (e.g. `"^orders\\..*"`).
    pub topics: Vec<String>,
    /// On shutdown, how long to wait for events already handed to functions before committing
    /// what finished and leaving the group; unfinished events are consumed again by whoever gets
    /// the partition. On a partition revoke the wait is also capped at two thirds of
    /// `session.timeout.ms`, so the member is never expelled while it drains. Default: `15s`.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Any librdkafka consumer property (see librdkafka's CONFIGURATION.md), e.g.
    /// `{ "session.timeout.ms" = 6000, "auto.offset.reset" = "latest" }`. fnmill's defaults:
    /// `partition.assignment.strategy = "cooperative-sticky"` (a rebalance moves only the
    /// partitions that must move), `auto.offset.reset = "earliest"` (a new group processes what
    /// the topic holds), `fetch.queue.backoff.ms = 10` (librdkafka's 1 s caps a consumer of
    /// small records near 150k a second). `enable.auto.offset.store` is always `false`: fnmill
    /// stores an offset only after the events before it finished. `enable.auto.commit` is
    /// always `false`: fnmill commits what it stored itself, every `auto.commit.interval.ms`
    /// (default 5 s), one commit at a time.
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyValue>,
    /// Properties whose values are secrets, read from the environment or a file when the
    /// source starts, e.g. `{ "sasl.password" = { env = "KAFKA_PASSWORD" } }`.
    #[serde(default)]
    pub secret_properties: BTreeMap<String, SecretProperty>,
}

impl KafkaSourceConfig {
    /// A config for `topics` in `group` on `brokers`, everything else at its default.
    pub fn new(brokers: impl Into<String>, group: impl Into<String>, topics: Vec<String>) -> Self {
        Self {
            brokers: brokers.into(),
            group: group.into(),
            topics,
            drain_timeout: default_drain_timeout(),
            properties: BTreeMap::new(),
            secret_properties: BTreeMap::new(),
        }
    }
}

impl KafkaSourceConfig {
    /// Makes the files of `secret_properties` absolute against `base_dir`.
    pub fn resolve_paths(&mut self, base_dir: &Path) {
        for secret in self.secret_properties.values_mut() {
            secret.resolve_path(base_dir);
        }
    }

    /// Everything [`KafkaSource::new`] would refuse, each naming its key: empty brokers, group or
    /// topics, a topic pattern that is not a regular expression, a zero drain, and every property
    /// librdkafka or fnmill would refuse.
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.brokers.trim().is_empty() {
            problems.push(Problem::new("brokers", "must not be empty"));
        }
        if self.group.trim().is_empty() {
            problems.push(Problem::new("group", "must not be empty"));
        }
        if self.topics.is_empty() {
            problems.push(Problem::new("topics", "must name at least one topic"));
        }
        for (i, topic) in self.topics.iter().enumerate() {
            if topic.trim().is_empty() {
                problems.push(Problem::new(format!("topics[{i}]"), "must not be empty"));
            } else if topic.starts_with('^')
                && let Err(e) = regex::Regex::new(topic)
            {
                let reason = e.to_string();
                let reason = reason.lines().last().unwrap_or_default().trim();
                problems.push(Problem::new(
                    format!("topics[{i}]"),
                    format!("`{topic}` starts with ^ but is not a regular expression: {reason}"),
                ));
            }
        }
        if self.drain_timeout.is_zero() {
            problems.push(Problem::new("drain_timeout", "must be greater than zero"));
        }
        for (name, default) in [
            ("session.timeout.ms", DEFAULT_SESSION_TIMEOUT_MS),
            ("auto.commit.interval.ms", DEFAULT_COMMIT_INTERVAL_MS),
        ] {
            if let Err(e) = properties::millis(&self.properties, name, default) {
                problems.push(e.into());
            }
        }
        let mut client = properties::check(
            &self.brokers,
            SOURCE_DEFAULTS,
            &self.properties,
            &self.secret_properties,
            SOURCE_FIXED,
        );
        problems.append(&mut client);
        problems
    }
}

/// How long the last commit before the consumer leaves keeps trying while the coordinator
/// recovers: inside the default `runtime.shutdown_grace` (20 s) after a full `drain_timeout`.
const FINAL_COMMIT_PATIENCE: Duration = Duration::from_secs(3);

const SOURCE_DEFAULTS: &[(&str, &str)] = &[
    ("partition.assignment.strategy", "cooperative-sticky"),
    ("auto.offset.reset", "earliest"),
    ("enable.partition.eof", "false"),
    properties::FETCH_QUEUE_BACKOFF,
];

const SOURCE_FIXED: &[Fixed] = &[
    Fixed {
        name: "enable.auto.offset.store",
        value: "false",
        reason: "an offset is stored only after the events before it finished (at-least-once)",
    },
    Fixed {
        name: "enable.auto.commit",
        value: "false",
        reason: "fnmill commits stored offsets itself every `auto.commit.interval.ms`, one \
                 commit at a time, so that a commit librdkafka sends again after an error never \
                 lands after a newer one and moves the group's offset back",
    },
];

/// How often the source commits what it stored, unless `auto.commit.interval.ms` says
/// otherwise: librdkafka's default for its own background commits.
const DEFAULT_COMMIT_INTERVAL_MS: u64 = 5_000;

/// Consumes Kafka topics as a consumer-group member and lends each message out.
pub struct KafkaSource {
    /// Shared with every event it delivers.
    name: Arc<str>,
    config: rdkafka::ClientConfig,
    /// Where the consumer lag of each assigned partition goes, when someone reads it.
    lag: Option<Arc<ConsumerLag>>,
    topics: Vec<String>,
    brokers: String,
    drain_timeout: Duration,
    revoke_timeout: Duration,
    /// How often the consumer thread commits the offsets it stored.
    commit_interval: Duration,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("name", &self.name)
            .field("brokers", &self.brokers)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl KafkaSource {
    /// Checks the config; `name` becomes [`Event::source`]. Nothing connects yet.
    pub fn new(name: impl Into<Arc<str>>, config: KafkaSourceConfig) -> Result<Self, KafkaError> {
        if let Some(p) = config.check().into_iter().next() {
            return Err(KafkaError::Invalid(p));
        }
        let session = properties::millis(
            &config.properties,
            "session.timeout.ms",
            DEFAULT_SESSION_TIMEOUT_MS,
        )?;
        let mut client = properties::client_config(
            &config.brokers,
            SOURCE_DEFAULTS,
            &config.properties,
            &config.secret_properties,
            SOURCE_FIXED,
        )?;
        client.set("group.id", &config.group);
        let commit_interval = properties::millis(
            &config.properties,
            "auto.commit.interval.ms",
            DEFAULT_COMMIT_INTERVAL_MS,
        )?;
        Ok(Self {
            name: name.into(),
            config: client,
            lag: None,
            topics: config.topics,
            brokers: config.brokers,
            drain_timeout: config.drain_timeout,
            revoke_timeout: config
                .drain_timeout
                .min(Duration::from_millis(session * 2 / 3)),
            commit_interval: Duration::from_millis(commit_interval),
        })
    }
}

/// The consumer lag of one assigned partition: records behind the end of the partition (the
/// high watermark, or the last stable offset under `read_committed`), counted from the offset
/// fnmill stored — the next record not yet settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub lag: i64,
}

/// The consumer lag of every partition a [`KafkaSource`] holds, refreshed from librdkafka's
/// statistics every `statistics.interval.ms` (5 s unless the source's properties say
/// otherwise). A revoked partition leaves the table with the next statistics.
#[derive(Debug, Default)]
pub struct ConsumerLag(Mutex<Vec<PartitionLag>>);

impl ConsumerLag {
    /// The lag of each assigned partition whose lag librdkafka knows, as of the last statistics.
    pub fn snapshot(&self) -> Vec<PartitionLag> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn replace(&self, lags: Vec<PartitionLag>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = lags;
    }
}

/// How often librdkafka reports statistics (and so the lag) when the properties do not say.
const LAG_INTERVAL_MS: &str = "5000";

impl KafkaSource {
    /// Reports the consumer lag of each assigned partition into `lag`; turns librdkafka's
    /// statistics on (`statistics.interval.ms`, 5 s) unless the properties set them.
    pub fn with_lag(mut self, lag: Arc<ConsumerLag>) -> Self {
        if self
            .config
            .get("statistics.interval.ms")
            .is_none_or(|v| v == "0")
        {
            self.config.set("statistics.interval.ms", LAG_INTERVAL_MS);
        }
        self.lag = Some(lag);
        self
    }
}

impl Source for KafkaSource {
    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, Result<(), SourceError>> {
        Box::pin(async move {
            let ready = ctx.ready.clone();
            let io = Handle::current();
            let result = tokio::task::spawn_blocking(move || self.run_blocking(ctx, io))
                .await
                .unwrap_or_else(|e| Err(SourceError::Other(format!("consumer thread: {e}"))));
            ready.set(false);
            result
        })
    }
}

/// Which delivery a settlement is about: its partition, the assignment it was lent in, and its
/// place in that partition's window.
#[derive(Clone, Debug)]
struct Ticket {
    partition: PartitionId,
    epoch: u64,
    seq: Seq,
}

type PartitionId = (Arc<str>, i32);

/// An assigned partition's unsettled messages.
#[derive(Debug)]
struct PartitionState {
    /// Bumped on every assignment, so settlements of an earlier assignment are ignored.
    epoch: u64,
    /// Created at the first message of the assignment: its positions are the next offset to
    /// consume after each message, so the watermark is what to store. An abandoned message pins
    /// it for the rest of this assignment: it and everything after it are consumed again later.
    window: Option<OrderedWindow<i64>>,
    /// What was last stored with librdkafka.
    stored: Option<i64>,
    /// What was last committed by the periodic commit.
    committed: Option<i64>,
}

impl PartitionState {
    fn new(epoch: u64) -> Self {
        Self {
            epoch,
            window: None,
            stored: None,
            committed: None,
        }
    }

    fn in_flight(&self) -> usize {
        self.window.as_ref().map_or(0, OrderedWindow::outstanding)
    }

    /// What may be stored, once any message was acknowledged.
    fn watermark(&self) -> Option<i64> {
        self.window.as_ref().map(OrderedWindow::watermark)
    }
}

/// The consumer thread's bookkeeping, reachable from the rebalance callbacks.
#[derive(Default)]
struct State {
    partitions: foldhash::HashMap<PartitionId, PartitionState>,
    next_epoch: u64,
    /// Deliveries the pipeline had no room for; while any is held, partitions are paused.
    held: VecDeque<(PartitionId, Delivery)>,
    paused: bool,
    /// Set once the shutdown drain is over: the revoke on leaving the group must not wait again.
    closing: bool,
}

/// The consumer's context: librdkafka calls it (on the consumer thread) for rebalances and errors.
struct SourceContextImpl {
    name: Arc<str>,
    brokers: String,
    ready: Readiness,
    state: Mutex<State>,
    settlements: Mutex<Settlements<Ticket>>,
    /// Where `drain` waits for settlements (the consumer thread is not a runtime thread).
    io: Handle,
    revoke_timeout: Duration,
    /// When the last "brokers unreachable" line was logged, so a long outage logs once in a
    /// while, not on every reconnect attempt.
    last_down_log: Mutex<Option<Instant>>,
    /// Where librdkafka's statistics put the consumer lag.
    lag: Option<Arc<ConsumerLag>>,
}

impl SourceContextImpl {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies every queued settlement, waiting up to `wait` for the first one. Returns whether
    /// any arrived.
    fn apply_settlements(&self, state: &mut State, wait: Duration) -> bool {
        let mut rx = self.settlements.lock().unwrap_or_else(|p| p.into_inner());
        let mut any = false;
        while let Some(settled) = rx.try_recv() {
            apply(state, settled);
            any = true;
        }
        if any || wait.is_zero() {
            return any;
        }
        let mut batch = Vec::new();
        let waited = self
            .io
            .block_on(tokio::time::timeout(wait, rx.recv_many(&mut batch, 1024)));
        if !matches!(waited, Ok(n) if n > 0) {
            return false;
        }
        for settled in batch {
            apply(state, settled);
        }
        while let Some(settled) = rx.try_recv() {
            apply(state, settled);
        }
        true
    }

    /// Stores the watermark of `which` partitions (all if `None`) that moved since last stored,
    /// and returns them as a list fit for a commit.
    fn store(
        &self,
        consumer: &BaseConsumer<SourceContextImpl>,
        state: &mut State,
        which: Option<&[PartitionId]>,
    ) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        let mut all = TopicPartitionList::new();
        for (id, p) in state.partitions.iter_mut() {
            if which.is_some_and(|w| !w.contains(id)) {
                continue;
            }
            let Some(watermark) = p.watermark() else {
                continue;
            };
            let _ = all.add_partition_offset(&id.0, id.1, Offset::Offset(watermark));
            if p.stored != Some(watermark) {
                let _ = tpl.add_partition_offset(&id.0, id.1, Offset::Offset(watermark));
                p.stored = Some(watermark);
            }
        }
        if tpl.count() > 0
            && let Err(e) = consumer.store_offsets(&tpl)
        {
            // A partition revoked under us: the new owner starts from the last commit.
            debug!(source = %self.name, error = %e, "Storing offsets failed");
        }
        all
    }

    /// Waits until `which` partitions have nothing in flight, or `timeout`.
    fn drain(&self, state: &mut State, which: Option<&[PartitionId]>, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let in_flight: usize = state
                .partitions
                .iter()
                .filter(|(id, _)| which.is_none_or(|w| w.contains(id)))
                .map(|(_, p)| p.in_flight())
                .sum();
            let now = Instant::now();
            if in_flight == 0 || now >= deadline {
                return in_flight;
            }
            self.apply_settlements(state, (deadline - now).min(Duration::from_millis(50)));
        }
    }

    /// Commits `tpl` synchronously, logging the outcome.
    fn commit(&self, consumer: &BaseConsumer<SourceContextImpl>, tpl: &TopicPartitionList) {
        self.commit_within(consumer, tpl, Duration::ZERO);
    }

    /// Commits, synchronously, what was stored for every partition whose stored offset moved
    /// since its last commit. All commits are synchronous and made from the consumer thread,
    /// so one is in flight at a time: librdkafka sends a failed commit request again unchanged,
    /// and one sent in the background could land after a newer commit and move the group back.
    fn commit_moved(&self, consumer: &BaseConsumer<SourceContextImpl>, state: &mut State) {
        let mut tpl = TopicPartitionList::new();
        let mut moved = Vec::new();
        for (id, p) in &state.partitions {
            if let Some(stored) = p.stored
                && p.committed != Some(stored)
            {
                let _ = tpl.add_partition_offset(&id.0, id.1, Offset::Offset(stored));
                moved.push((id.clone(), stored));
            }
        }
        if self.commit_within(consumer, &tpl, Duration::ZERO) {
            for (id, offset) in moved {
                if let Some(p) = state.partitions.get_mut(&id) {
                    p.committed = Some(offset);
                }
            }
        }
    }

    /// Commits `tpl` synchronously, trying again while the error is one a coordinator recovers
    /// from (it is loading, moving, or did not answer in time) and `patience` lasts; logs the
    /// outcome. The last commit before the consumer leaves uses it: whatever it fails to cover
    /// is delivered again to the next member.
    /// Returns whether the commit succeeded (true for nothing to commit).
    fn commit_within(
        &self,
        consumer: &BaseConsumer<SourceContextImpl>,
        tpl: &TopicPartitionList,
        patience: Duration,
    ) -> bool {
        if tpl.count() == 0 {
            return true;
        }
        let deadline = Instant::now() + patience;
        let mut backoff = Duration::from_millis(50);
        loop {
            match consumer.commit(tpl, CommitMode::Sync) {
                Ok(()) => {
                    debug!(source = %self.name, partitions = tpl.count(), "Committed offsets");
                    return true;
                }
                Err(e) if commit_retriable(&e) && Instant::now() + backoff < deadline => {
                    debug!(source = %self.name, error = %e, "Committing offsets failed; trying again");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(e) => {
                    warn!(source = %self.name, error = %e, "Committing offsets failed");
                    return false;
                }
            }
        }
    }
}

/// Whether a failed commit may succeed if tried again soon: the group coordinator is loading,
/// moving or unreachable for a moment, or the request timed out.
fn commit_retriable(e: &RdKafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::CoordinatorLoadInProgress
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::BrokerTransportFailure
        )
    )
}

impl ClientContext for SourceContextImpl {
    /// Runs on the consumer thread, inside `poll`, every `statistics.interval.ms`.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(lag) = &self.lag else {
            return;
        };
        let state = self.state();
        let mut lags = Vec::with_capacity(state.partitions.len());
        for (topic, partition) in state.partitions.keys() {
            let Some(p) = statistics
                .topics
                .get(&**topic)
                .and_then(|t| t.partitions.get(partition))
            else {
                continue;
            };
            // The stored offset moves as events settle; before anything was stored in this
            // assignment, the committed one is what a restart would resume from.
            let behind = [p.consumer_lag_stored, p.consumer_lag]
                .into_iter()
                .find(|lag| *lag >= 0);
            if let Some(behind) = behind {
                lags.push(PartitionLag {
                    topic: topic.to_string(),
                    partition: *partition,
                    lag: behind,
                });
            }
        }
        drop(state);
        lags.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        lag.replace(lags);
    }

    fn error(&self, error: RdKafkaError, reason: &str) {
        let down = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure)
        );
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown)
        ) {
            self.ready.set(false);
        }
        if down {
            let mut last = self.last_down_log.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                *last = Some(Instant::now());
                error!(
                    source = %self.name,
                    brokers = %self.brokers,
                    error = %reason,
                    "Kafka brokers unreachable; not ready, retrying"
                );
            }
        } else {
            warn!(source = %self.name, error = %error, reason, "Kafka client error");
        }
    }
}

impl ConsumerContext for SourceContextImpl {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let revoked: Vec<PartitionId> = tpl
                    .elements()
                    .iter()
                    .map(|e| (Arc::from(e.topic()), e.partition()))
                    .collect();
                let mut state = self.state();
                // Stop reading them: what the pipeline has not taken is given back.
                state.held.retain(|(id, _)| !revoked.contains(id));
                let timeout = if state.closing {
                    Duration::ZERO
                } else {
                    self.revoke_timeout
                };
                let left = self.drain(&mut state, Some(&revoked), timeout);
                let tpl = self.store(consumer, &mut state, Some(&revoked));
                self.commit(consumer, &tpl);
                for id in &revoked {
                    state.partitions.remove(id);
                }
                info!(
                    source = %self.name,
                    partitions = %names(&revoked),
                    abandoned = left,
                    "Partitions revoked: drained and committed"
                );
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => warn!(source = %self.name, error = %e, "Rebalance failed"),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut state = self.state();
            let mut assigned = Vec::new();
            for e in tpl.elements() {
                let id: PartitionId = (Arc::from(e.topic()), e.partition());
                state.next_epoch += 1;
                let epoch = state.next_epoch;
                state
                    .partitions
                    .insert(id.clone(), PartitionState::new(epoch));
                assigned.push(id);
            }
            // Newly assigned partitions are not paused; the loop pauses them when needed.
            state.paused = false;
            self.ready.set(true);
            info!(source = %self.name, partitions = %names(&assigned), "Partitions assigned");
        }
    }
}

/// Marks a settled message in its partition's window, unless the partition was revoked (or
/// assigned again) since it was lent out.
fn apply(state: &mut State, settled: Settled<Ticket>) {
    let Settled {
        ticket, outcome, ..
    } = settled;
    if let Some(p) = state.partitions.get_mut(&ticket.partition)
        && p.epoch == ticket.epoch
        && let Some(window) = &mut p.window
    {
        let _ = window.settle(ticket.seq, outcome);
    }
}

fn names(ids: &[PartitionId]) -> String {
    ids.iter()
        .map(|(t, p)| format!("{t}[{p}]"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `payload`, `key`, and the ordering key of `topic`/`partition`/`key`, copied into one buffer
/// that the three share: one allocation (and one free, on whichever thread settles the event)
/// instead of three.
///
/// Events with the same topic, partition and key run in order; the partition is part of the
/// ordering key because Kafka orders only within a partition.
fn copied(
    payload: &[u8],
    topic: &str,
    partition: i32,
    key: Option<&[u8]>,
) -> (Bytes, Option<Bytes>, Bytes) {
    let key_len = key.map_or(0, <[u8]>::len);
    let ordering_len = topic.len() + 5 + key_len;
    let mut b = BytesMut::with_capacity(payload.len() + ordering_len);
    b.put_slice(payload);
    b.put_slice(topic.as_bytes());
    b.put_u8(0);
    b.put_i32(partition);
    b.put_slice(key.unwrap_or_default());
    let all = b.freeze();
    let end = all.len();
    let key = key.map(|_| all.slice(end - key_len..));
    let ordering = all.slice(payload.len()..);
    let payload = all.slice(..payload.len());
    (payload, key, ordering)
}

/// The event of `m`, from `topic` (`m`'s topic, shared by its partition's events), and its
/// ordering key.
fn event(source: &Arc<str>, topic: &Arc<str>, m: &BorrowedMessage<'_>) -> (Event, Bytes) {
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| Header::new(h.key, Bytes::copy_from_slice(h.value.unwrap_or_default())))
                .collect()
        })
        .unwrap_or_default();
    let (payload, key, ordering) = copied(
        m.payload().unwrap_or_default(),
        topic,
        m.partition(),
        m.key(),
    );
    let event = Event {
        id: event_id(topic, m.partition(), m.offset()),
        source: source.clone(),
        key,
        payload,
        headers,
        timestamp_ms: m.timestamp().to_millis(),
        origin: vec![
            ("topic", OriginValue::Text(topic.clone())),
            ("partition", OriginValue::Number(m.partition().into())),
            ("offset", OriginValue::Number(m.offset())),
        ],
        decode_error: None,
    };
    (event, ordering)
}

/// `topic/partition/offset`: sized up front (`format!` would grow it once on the way), the
/// numbers written by `itoa`.
fn event_id(topic: &str, partition: i32, offset: i64) -> String {
    let mut numbers = itoa::Buffer::new();
    let mut id = String::with_capacity(topic.len() + 32);
    id.push_str(topic);
    id.push('/');
    id.push_str(numbers.format(partition));
    id.push('/');
    id.push_str(numbers.format(offset));
    id
}

impl KafkaSource {
    fn run_blocking(self, ctx: SourceContext, io: Handle) -> Result<(), SourceError> {
        let SourceContext {
            out,
            shutdown,
            ready,
        } = ctx;
        let (settler, settlements) = settlement::channel();
        let context = SourceContextImpl {
            name: self.name.clone(),
            brokers: self.brokers.clone(),
            ready: ready.clone(),
            state: Mutex::new(State::default()),
            settlements: Mutex::new(settlements),
            io: io.clone(),
            revoke_timeout: self.revoke_timeout,
            last_down_log: Mutex::new(None),
            lag: self.lag.clone(),
        };
        let consumer: BaseConsumer<SourceContextImpl> = self
            .config
            .create_with_context(context)
            .map_err(|e| SourceError::from(KafkaError::Client(e)))?;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| SourceError::Other(format!("subscribing to {topics:?}: {e}")))?;
        info!(source = %self.name, brokers = %self.brokers, topics = ?topics, "Kafka source started");

        let outcome = self.consume(&consumer, &out, &shutdown, &settler, &io);
        // Stop taking new events: the pipeline finishes what it accepted.
        drop(out);
        let cx = consumer.context();
        let mut state = cx.state();
        state.held.clear();
        let left = cx.drain(&mut state, None, self.drain_timeout);
        let tpl = cx.store(&consumer, &mut state, None);
        let committed = cx.commit_within(&consumer, &tpl, FINAL_COMMIT_PATIENCE);
        state.closing = true;
        if committed {
            info!(
                source = %self.name,
                partitions = tpl.count(),
                abandoned = left,
                "Kafka source stopped: offsets committed"
            );
        } else {
            warn!(
                source = %self.name,
                partitions = tpl.count(),
                abandoned = left,
                "Kafka source stopped without its last commit: what finished since the last \
                 commit is delivered again to the next member"
            );
        }
        drop(state);
        // Leaves the group; the revoke callback runs once more and finds nothing in flight.
        drop(consumer);
        outcome
    }

    /// The consume loop; returns on shutdown or when the pipeline is gone.
    fn consume(
        &self,
        consumer: &BaseConsumer<SourceContextImpl>,
        out: &Outbox,
        shutdown: &CancellationToken,
        settler: &Settler<Ticket>,
        io: &Handle,
    ) -> Result<(), SourceError> {
        let cx = consumer.context();
        let mut last_probe = Instant::now();
        let mut last_store = Instant::now();
        let mut last_commit = Instant::now();
        // The partition of the previous message: a fetch hands over a run of one partition's
        // messages, which then share one topic name instead of allocating one each.
        let mut last_partition: Option<PartitionId> = None;
        while !shutdown.is_cancelled() {
            let timeout = {
                let mut state = cx.state();
                cx.apply_settlements(&mut state, Duration::ZERO);
                // Storing is cheap but not free: at most every few milliseconds, and always
                // right before a commit, so that the commit covers what finished.
                let now = Instant::now();
                let commit_due = now.duration_since(last_commit) >= self.commit_interval;
                if commit_due || now.duration_since(last_store) >= Duration::from_millis(5) {
                    cx.store(consumer, &mut state, None);
                    last_store = now;
                }
                if commit_due {
                    cx.commit_moved(consumer, &mut state);
                    last_commit = Instant::now();
                }
                while let Some((id, d)) = state.held.pop_front() {
                    match out.try_send(d) {
                        Ok(()) => {}
                        Err(TrySendError::Full(d)) => {
                            state.held.push_front((id, d));
                            break;
                        }
                        Err(TrySendError::Closed(_)) => return Ok(()),
                    }
                }
                if state.held.is_empty() {
                    if state.paused {
                        state.paused = false;
                        if let Ok(assignment) = consumer.assignment() {
                            let _ = consumer.resume(&assignment);
                        }
                    }
                    IDLE_POLL
                } else {
                    if !state.paused {
                        state.paused = true;
                        if let Ok(assignment) = consumer.assignment() {
                            let _ = consumer.pause(&assignment);
                        }
                    }
                    HELD_POLL
                }
            };
            // The first message is waited for; what is queued behind it is taken without
            // waiting, up to a batch, before the bookkeeping above runs again.
            let mut wait = timeout;
            for _ in 0..POLL_BATCH {
                if wait.is_zero() && shutdown.is_cancelled() {
                    break;
                }
                let Some(polled) = consumer.poll(wait) else {
                    break;
                };
                wait = Duration::ZERO;
                let m = match polled {
                    Ok(m) => m,
                    Err(e) => {
                        debug!(source = %self.name, error = %e, "Kafka consumer error");
                        continue;
                    }
                };
                cx.ready.set(true);
                let id: PartitionId = match &last_partition {
                    Some(id) if id.1 == m.partition() && &*id.0 == m.topic() => id.clone(),
                    _ => {
                        let id = (Arc::from(m.topic()), m.partition());
                        last_partition = Some(id.clone());
                        id
                    }
                };
                let mut state = cx.state();
                let State {
                    partitions,
                    next_epoch,
                    ..
                } = &mut *state;
                let p = partitions.entry(id.clone()).or_insert_with(|| {
                    *next_epoch += 1;
                    PartitionState::new(*next_epoch)
                });
                let offset = m.offset();
                let window = p.window.get_or_insert_with(|| {
                    // Nothing before this message is ours to store.
                    OrderedWindow::new(offset)
                });
                if offset < window.newest() {
                    // Already lent out in this assignment (a fetch raced a pause).
                    continue;
                }
                let ticket = Ticket {
                    partition: id.clone(),
                    epoch: p.epoch,
                    seq: window.lend(offset + 1),
                };
                if p.stored.is_none() {
                    p.stored = Some(offset);
                }
                let (event, ordering) = event(&self.name, &id.0, &m);
                let delivery = settler.delivery(event, Some(ordering), ticket);
                if state.held.is_empty() {
                    match out.try_send(delivery) {
                        Ok(()) => {}
                        Err(TrySendError::Full(d)) => {
                            match io.block_on(tokio::time::timeout(PAUSE_AFTER, out.reserve())) {
                                Ok(Ok(permit)) => {
                                    if permit.send(d).is_err() {
                                        return Ok(());
                                    }
                                }
                                Ok(Err(_)) => return Ok(()),
                                Err(_) => state.held.push_back((id, d)),
                            }
                        }
                        Err(TrySendError::Closed(_)) => return Ok(()),
                    }
                } else {
                    state.held.push_back((id, delivery));
                    // A partition assigned since the pause is not paused yet.
                    state.paused = false;
                }
                // A full pipeline: pause (the bookkeeping above) before taking more.
                if !state.held.is_empty() {
                    break;
                }
            }
            if !cx.ready.is_ready() && last_probe.elapsed() >= READINESS_PROBE {
                last_probe = Instant::now();
                if consumer
                    .fetch_metadata(None, Duration::from_millis(500))
                    .is_ok()
                {
                    info!(source = %self.name, "Kafka brokers reachable again");
                    cx.ready.set(true);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ordering_key(topic: &str, partition: i32, key: Option<&[u8]>) -> Bytes {
        copied(&[], topic, partition, key).2
    }

    #[test]
    fn ordering_key_separates_partitions_and_keys() {
        assert_ne!(
            ordering_key("t", 0, Some(b"k")),
            ordering_key("t", 1, Some(b"k"))
        );
        assert_ne!(
            ordering_key("t", 0, Some(b"a")),
            ordering_key("t", 0, Some(b"b"))
        );
        assert_eq!(ordering_key("t", 0, None), ordering_key("t", 0, Some(b"")));
    }

    #[test]
    fn a_commit_is_tried_again_only_while_the_coordinator_may_recover() {
        let failed = |code| RdKafkaError::ConsumerCommit(code);
        assert!(commit_retriable(&failed(
            RDKafkaErrorCode::CoordinatorLoadInProgress
        )));
        assert!(commit_retriable(&failed(RDKafkaErrorCode::NotCoordinator)));
        assert!(!commit_retriable(&failed(
            RDKafkaErrorCode::RebalanceInProgress
        )));
        assert!(!commit_retriable(&failed(
            RDKafkaErrorCode::UnknownMemberId
        )));
    }

    #[test]
    fn the_source_commits_itself_at_the_interval_it_is_given() {
        let config = |name: &str, value: PropertyValue| {
            let mut c = KafkaSourceConfig::new("127.0.0.1:9092", "g", vec!["t".into()]);
            c.properties.insert(name.into(), value);
            c
        };
        // librdkafka's background commits stay off, whatever the config says.
        let problems = config("enable.auto.commit", PropertyValue::Bool(true)).check();
        assert!(
            problems
                .iter()
                .any(|p| p.key.contains("enable.auto.commit")),
            "{problems:?}"
        );
        let problems = config(
            "auto.commit.interval.ms",
            PropertyValue::Text("soon".into()),
        )
        .check();
        assert!(
            problems
                .iter()
                .any(|p| p.key.contains("auto.commit.interval.ms")),
            "{problems:?}"
        );
        let source = KafkaSource::new(
            "in",
            config("auto.commit.interval.ms", PropertyValue::Integer(250)),
        )
        .unwrap();
        assert_eq!(source.commit_interval, Duration::from_millis(250));
        assert_eq!(source.config.get("enable.auto.commit"), Some("false"));
        let source = KafkaSource::new(
            "in",
            KafkaSourceConfig::new("b:9092", "g", vec!["t".into()]),
        )
        .unwrap();
        assert_eq!(source.commit_interval, Duration::from_secs(5));
    }

    #[test]
    fn an_event_id_is_topic_partition_offset() {
        assert_eq!(event_id("orders", 3, 1_234_567), "orders/3/1234567");
        assert_eq!(event_id("t", -1, i64::MAX), format!("t/-1/{}", i64::MAX));
    }

    #[test]
    fn copied_parts_are_the_originals() {
        let (payload, key, ordering) = copied(b"{\"a\":1}", "orders", 3, Some(b"k1"));
        assert_eq!(&payload[..], b"{\"a\":1}");
        assert_eq!(key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(ordering, ordering_key("orders", 3, Some(b"k1")));
        let (payload, key, ordering) = copied(b"", "t", 0, None);
        assert!(payload.is_empty());
        assert_eq!(key, None);
        assert_eq!(ordering, ordering_key("t", 0, None));
        // An empty key is a key, not an absent one.
        let (_, key, _) = copied(b"x", "t", 0, Some(b""));
        assert_eq!(key.as_deref(), Some(&b""[..]));
    }

    #[test]
    fn config_checks_name_the_key() {
        let mut c = KafkaSourceConfig::new(" ", "", vec![]);
        c.drain_timeout = Duration::ZERO;
        let keys: Vec<String> = c.check().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["brokers", "group", "topics", "drain_timeout"]);
        let err = KafkaSource::new("s", c.clone()).unwrap_err().to_string();
        assert!(err.starts_with("brokers:"), "{err}");

        let mut c = KafkaSourceConfig::new("b:9092", "g", vec!["ok".into(), "^orders.(".into()]);
        let p = c.check();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "topics[1]");
        assert!(p[0].message.contains("not a regular expression"), "{p:?}");
        c.properties
            .insert("enable.auto.offset.store".into(), PropertyValue::Bool(true));
        c.topics = vec!["t".into()];
        let p = c.check();
        assert_eq!(p[0].key, "properties.\"enable.auto.offset.store\"", "{p:?}");
        c.properties.clear();
        c.properties
            .insert("session.timeout.ms".into(), PropertyValue::Integer(6000));
        let s = KafkaSource::new("s", c).unwrap();
        assert_eq!(s.revoke_timeout, Duration::from_secs(4));
    }
}
