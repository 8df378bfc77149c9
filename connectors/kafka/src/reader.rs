//! [`KafkaReader`]: reads fixed offset ranges of a topic's partitions by assignment, for
//! replays and inspection, not as a consumer-group member.
//!
//! A consumer group is the wrong tool for "read partition 2 from offset 1,000 to 2,000": it
//! joins, rebalances, starts at the group's committed offsets and commits as it goes, and it
//! leaves a group behind on the cluster. The reader assigns the partitions it was asked for
//! at the offsets it was asked for and stops each partition at its end offset. Without a
//! `group` it joins no group, creates none and commits nothing (librdkafka still wants a
//! `group.id` to assign partitions: it gets a random one that is never used). With a `group`
//! it commits only what its caller hands to [`KafkaReader::commit`], so a replay can record
//! how far it got.
//!
//! Ranges are resolved before reading from the partitions' watermarks and, for times, from
//! `offsets_for_times` (the first offset whose record timestamp is at or after the time), so a
//! range is fixed when reading starts: records produced meanwhile are not part of it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use fnmill_connector_api::Header;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use fnmill_connector_api::Problem;

use crate::KafkaError;
use crate::properties::{self, Fixed, PropertyValue, SecretProperty};

/// Prefix of the group id a reader without a group gives librdkafka (see [`KafkaReader::new`]).
pub const THROWAWAY_GROUP_PREFIX: &str = "fnmill-replay-unjoined-";

/// How long a metadata, watermark, offset or commit request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the reader connects with: the same connection settings as a source or sink.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaReaderConfig {
    /// Bootstrap brokers, `host:port` separated by commas.
    pub brokers: String,
    /// librdkafka consumer properties (TLS, SASL, ...), as in a source's `properties`.
    pub properties: BTreeMap<String, PropertyValue>,
    /// Properties whose values are secrets, as in a source's `secret_properties`.
    pub secret_properties: BTreeMap<String, SecretProperty>,
    /// A consumer group to commit progress under. `None`: no group is joined, created or
    /// committed to.
    pub group: Option<String>,
}

/// Set by the reader whatever the properties say: it commits only on request, and it must
/// hear when a partition has nothing more to read.
const READER_FIXED: &[Fixed] = &[
    Fixed {
        name: "enable.auto.commit",
        value: "false",
        reason: "a replay commits only what it wrote, and only with a group",
    },
    Fixed {
        name: "enable.auto.offset.store",
        value: "false",
        reason: "a replay commits only what it wrote, and only with a group",
    },
    Fixed {
        name: "enable.partition.eof",
        value: "true",
        reason: "the reader stops a partition at its end",
    },
];

/// Asks the cluster for its metadata within `timeout`: tells an unreachable cluster, or one
/// that refuses the credentials, from a working one before anything is produced or read (a
/// producer would otherwise retry quietly until `message.timeout.ms`).
pub fn check_reachable(config: &KafkaReaderConfig, timeout: Duration) -> Result<(), KafkaError> {
    let client = properties::client_config(
        &config.brokers,
        &[],
        &config.properties,
        &config.secret_properties,
        &[],
    )?;
    let consumer: BaseConsumer = client.create().map_err(KafkaError::Client)?;
    consumer
        .fetch_metadata(None, timeout)
        .map(drop)
        .map_err(|source| KafkaError::Request {
            what: format!("cluster metadata from {}", config.brokers),
            source,
        })
}

/// Offsets `start..end` of one partition (`end` exclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetRange {
    pub start: i64,
    pub end: i64,
}

impl OffsetRange {
    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    /// Records in the range, compaction and transaction markers aside.
    pub fn len(&self) -> u64 {
        (self.end - self.start).max(0) as u64
    }
}

/// One record read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Bytes>,
    pub payload: Bytes,
    /// In record order; a header with a null value reads as an empty one.
    pub headers: Vec<Header>,
    /// The record's timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
}

/// What one [`KafkaReader::poll`] found.
#[derive(Debug)]
pub enum Polled {
    Record(ReadRecord),
    /// Nothing within the timeout; the ranges are not finished.
    Idle,
    /// Every assigned partition reached the end of its range.
    Finished,
}

/// Reads offset ranges of one topic by assignment. See the module docs.
pub struct KafkaReader {
    consumer: BaseConsumer,
    topic: String,
    group: bool,
    /// End offset of every partition still being read.
    ends: BTreeMap<i32, i64>,
}

impl std::fmt::Debug for KafkaReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaReader")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("ends", &self.ends)
            .finish_non_exhaustive()
    }
}

fn request(what: &str, topic: &str) -> impl FnOnce(RdKafkaError) -> KafkaError {
    let what = format!("{what} of topic `{topic}`");
    move |source| KafkaError::Request { what, source }
}

impl KafkaReader {
    /// Creates the consumer for `topic`. Nothing is assigned until [`KafkaReader::assign`].
    pub fn new(config: &KafkaReaderConfig, topic: &str) -> Result<Self, KafkaError> {
        if config.brokers.trim().is_empty() {
            return Err(KafkaError::Invalid(Problem::new(
                "brokers",
                "must not be empty",
            )));
        }
        if topic.trim().is_empty() {
            return Err(KafkaError::Invalid(Problem::new(
                "topic",
                "must not be empty",
            )));
        }
        let defaults: &[(&str, &str)] = &[
            ("auto.offset.reset", "earliest"),
            properties::FETCH_QUEUE_BACKOFF,
        ];
        let mut client = properties::client_config(
            &config.brokers,
            defaults,
            &config.properties,
            &config.secret_properties,
            READER_FIXED,
        )?;
        match &config.group {
            Some(group) if group.trim().is_empty() => {
                return Err(KafkaError::Invalid(Problem::new(
                    "group",
                    "must not be empty",
                )));
            }
            Some(group) => {
                client.set("group.id", group);
            }
            None => {
                // librdkafka assigns partitions only in a consumer that has a group id. This one
                // is never joined (no subscribe), never committed to and never stored, so the
                // cluster keeps no group: it only names the coordinator librdkafka looks up.
                client.set(
                    "group.id",
                    format!("{THROWAWAY_GROUP_PREFIX}{:016x}", fastrand::u64(..)),
                );
            }
        }
        let consumer: BaseConsumer = client.create().map_err(KafkaError::Client)?;
        Ok(Self {
            consumer,
            topic: topic.to_string(),
            group: config.group.is_some(),
            ends: BTreeMap::new(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic's partitions. A topic the cluster does not know is an error (reading does
    /// not create it).
    pub fn partitions(&self) -> Result<Vec<i32>, KafkaError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), REQUEST_TIMEOUT)
            .map_err(request("metadata", &self.topic))?;
        let Some(topic) = metadata.topics().iter().find(|t| t.name() == self.topic) else {
            return Err(KafkaError::UnknownTopic(self.topic.clone()));
        };
        if topic.error().is_some() || topic.partitions().is_empty() {
            return Err(KafkaError::UnknownTopic(self.topic.clone()));
        }
        Ok(topic.partitions().iter().map(|p| p.id()).collect())
    }

    /// Low and high watermark of `partition`: its first offset and the offset after its last.
    pub fn watermarks(&self, partition: i32) -> Result<(i64, i64), KafkaError> {
        self.consumer
            .fetch_watermarks(&self.topic, partition, REQUEST_TIMEOUT)
            .map_err(request("watermarks", &self.topic))
    }

    /// Per partition, the first offset whose record timestamp is at or after `timestamp_ms`;
    /// the high watermark where no record is that late.
    pub fn offsets_for_time(
        &self,
        partitions: &[i32],
        timestamp_ms: i64,
    ) -> Result<BTreeMap<i32, i64>, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(timestamp_ms))
                .map_err(request("offsets_for_times", &self.topic))?;
        }
        let found = self
            .consumer
            .offsets_for_times(tpl, REQUEST_TIMEOUT)
            .map_err(request("offsets_for_times", &self.topic))?;
        let mut out = BTreeMap::new();
        for e in found.elements() {
            if let Err(source) = e.error() {
                return Err(request("offsets_for_times", &self.topic)(source));
            }
            let offset = match e.offset() {
                Offset::Offset(o) => o,
                // No record at or after the time.
                _ => self.watermarks(e.partition())?.1,
            };
            out.insert(e.partition(), offset);
        }
        Ok(out)
    }

    /// The group's committed offset per partition (`None` where it committed none). Without a
    /// group, `None` everywhere.
    pub fn committed(&self, partitions: &[i32]) -> Result<BTreeMap<i32, Option<i64>>, KafkaError> {
        if !self.group {
            return Ok(partitions.iter().map(|p| (*p, None)).collect());
        }
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition(&self.topic, p);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, REQUEST_TIMEOUT)
            .map_err(request("committed offsets", &self.topic))?;
        Ok(committed
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(o) if o >= 0 => Some(o),
                    _ => None,
                };
                (e.partition(), offset)
            })
            .collect())
    }

    /// Starts reading `ranges`; empty ranges are finished at once. Replaces any earlier
    /// assignment.
    pub fn assign(&mut self, ranges: &BTreeMap<i32, OffsetRange>) -> Result<(), KafkaError> {
        let mut tpl = TopicPartitionList::new();
        self.ends.clear();
        for (&p, range) in ranges {
            if range.is_empty() {
                continue;
            }
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(range.start))
                .map_err(request("assignment", &self.topic))?;
            self.ends.insert(p, range.end);
        }
        self.consumer
            .assign(&tpl)
            .map_err(request("assignment", &self.topic))
    }

    /// Partitions not yet at the end of their range.
    pub fn unfinished(&self) -> BTreeSet<i32> {
        self.ends.keys().copied().collect()
    }

    /// The next record of the ranges, waiting at most `timeout` for one.
    pub fn poll(&mut self, timeout: Duration) -> Result<Polled, KafkaError> {
        loop {
            if self.ends.is_empty() {
                return Ok(Polled::Finished);
            }
            let message = match self.consumer.poll(timeout) {
                None => return Ok(Polled::Idle),
                Some(Ok(m)) => m,
                Some(Err(RdKafkaError::PartitionEOF(p))) => {
                    // At the high watermark, which is at or past the range's end.
                    self.finish(p);
                    continue;
                }
                Some(Err(e)) => return Err(request("reading", &self.topic)(e)),
            };
            let partition = message.partition();
            let Some(&end) = self.ends.get(&partition) else {
                continue;
            };
            if message.offset() >= end {
                self.finish(partition);
                continue;
            }
            let last = message.offset() + 1 >= end;
            let headers = message
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            Header::new(h.key, Bytes::copy_from_slice(h.value.unwrap_or_default()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let record = ReadRecord {
                partition,
                offset: message.offset(),
                key: message.key().map(Bytes::copy_from_slice),
                payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
                headers,
                timestamp_ms: message.timestamp().to_millis(),
            };
            drop(message);
            if last {
                self.finish(partition);
            }
            return Ok(Polled::Record(record));
        }
    }

    /// Stops fetching `partition`: its range is read.
    fn finish(&mut self, partition: i32) {
        if self.ends.remove(&partition).is_some() {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&self.topic, partition);
            // Only saves fetching what would be dropped anyway.
            let _ = self.consumer.pause(&tpl);
        }
    }

    /// Commits `next` (partition → the offset to read next) for the group, synchronously.
    /// Without a group there is nothing to commit to, and this does nothing.
    pub fn commit(&self, next: &BTreeMap<i32, i64>) -> Result<(), KafkaError> {
        if !self.group || next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (&p, &offset) in next {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(offset))
                .map_err(request("commit", &self.topic))?;
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(request("commit", &self.topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

    fn read_all(reader: &mut KafkaReader) -> Vec<ReadRecord> {
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            assert!(std::time::Instant::now() < deadline, "reading timed out");
            match reader.poll(Duration::from_millis(100)).unwrap() {
                Polled::Record(r) => out.push(r),
                Polled::Idle => {}
                Polled::Finished => return out,
            }
        }
    }

    /// A range in the middle of a partition reads exactly its records, and a partition whose
    /// range is empty finishes at once.
    #[test]
    fn reads_exactly_the_range() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 2, 1).unwrap();
        let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .unwrap();
        for i in 0..10 {
            let payload = format!("p{i}");
            producer
                .send(BaseRecord::to("t").partition(0).key("k").payload(&payload))
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();

        let config = KafkaReaderConfig {
            brokers: cluster.bootstrap_servers(),
            ..Default::default()
        };
        let mut reader = KafkaReader::new(&config, "t").unwrap();
        assert_eq!(reader.partitions().unwrap(), vec![0, 1]);
        assert_eq!(reader.watermarks(0).unwrap(), (0, 10));
        let ranges = BTreeMap::from([
            (0, OffsetRange { start: 3, end: 7 }),
            (1, OffsetRange { start: 0, end: 0 }),
        ]);
        reader.assign(&ranges).unwrap();
        let read = read_all(&mut reader);
        let offsets: Vec<i64> = read.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![3, 4, 5, 6]);
        assert_eq!(&read[0].payload[..], b"p3");
        assert_eq!(read[0].key.as_deref(), Some(&b"k"[..]));
    }

    #[test]
    fn an_unknown_topic_is_an_error_and_auto_commit_cannot_be_switched_on() {
        let cluster = MockCluster::new(1).unwrap();
        let mut config = KafkaReaderConfig {
            brokers: cluster.bootstrap_servers(),
            ..Default::default()
        };
        config.properties.insert(
            "allow.auto.create.topics".into(),
            PropertyValue::Text("false".into()),
        );
        let reader = KafkaReader::new(&config, "no-such-topic").unwrap();
        let err = reader.partitions().unwrap_err().to_string();
        assert!(err.contains("no-such-topic"), "{err}");

        config
            .properties
            .insert("enable.auto.commit".into(), PropertyValue::Bool(true));
        let err = KafkaReader::new(&config, "t").unwrap_err().to_string();
        assert!(err.contains("enable.auto.commit"), "{err}");
    }
}
