//! The IO side: serves one data source's calls from its pool in this process, to whichever
//! compute replica sent them ([`Server`]).
//!
//! Every IO-tier process serving a data source subscribes to its subject in one queue group
//! ([`QUEUE_GROUP`]), so NATS hands each request to one of them; when one dies its share goes to
//! the others at once, and the requests it held time out at their callers (who retry). Each
//! request is checked against this process's own grants ([`GrantTable`]) before anything is
//! touched: a compute replica's word is not enough to reach a data source.
//!
//! Requests come in batches ([`protocol::Batch`]); every call of a batch is served on its own,
//! concurrently, up to [`MAX_IN_FLIGHT`] per subscription, the pool's own bound (its size and
//! `wait_timeout`) deciding how many reach the database at once. Answers to the same caller
//! share a message ([`protocol::Answers`]): an answer ready while other calls are still being
//! served is held up to the data source's `linger` (default 1 ms) for the answers that get
//! ready meanwhile, and leaves early once [`HOLD_UNTIL`](crate::client::HOLD_UNTIL) answers
//! wait or no call is left in progress. A call never waits longer than that for a slower one of its batch. At shutdown the
//! subscription is drained: no new request is taken, those already taken are answered.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::Subject;
use fnmill_connector_api::Readiness;
use fnmill_connector_api::capability::kv::Bucket;
use fnmill_connector_api::capability::sql::{SqlSource, Value};
use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::batch::{Hold, MAX_BATCH_BYTES, MAX_BATCH_CALLS, more};
use crate::connection::Nats;
use crate::protocol::{
    self, Answers, Batch, MessageWriter, Op, Reply, Request, WireCaller, WireError,
};

/// The queue group every IO-tier process joins on a data source's subject.
pub const QUEUE_GROUP: &str = "fnmill-io";

/// Requests one subscription serves at once; more wait in NATS's buffer for the subscription.
/// Far above any pool's size, so the pool (not this) is what makes callers wait, while a flood
/// cannot spawn without bound.
pub const MAX_IN_FLIGHT: usize = 4096;

/// How often readiness follows the connection's state.
const READINESS_EVERY: Duration = Duration::from_millis(250);

/// What each function may reach, from the IO tier's own config.
#[derive(Clone, Debug, Default)]
pub struct GrantTable {
    functions: BTreeMap<String, FunctionGrants>,
}

#[derive(Clone, Debug, Default)]
struct FunctionGrants {
    data_sources: BTreeSet<String>,
    buckets: BTreeSet<String>,
}

impl GrantTable {
    /// Grants `function` the SQL `data_sources` and the `buckets` (its `functions.<name>`
    /// table).
    pub fn grant(
        &mut self,
        function: &str,
        data_sources: impl IntoIterator<Item = String>,
        buckets: impl IntoIterator<Item = String>,
    ) {
        let f = self.functions.entry(function.to_string()).or_default();
        f.data_sources.extend(data_sources);
        f.buckets.extend(buckets);
    }

    /// Whether `function` may reach `target` (a SQL data source, or a bucket); why not.
    pub fn check(&self, function: &str, target: &str, sql: bool) -> Result<(), String> {
        let Some(f) = self.functions.get(function) else {
            return Err(format!(
                "the IO tier's config has no function `{function}`, so it grants it nothing"
            ));
        };
        let (granted, what, key) = if sql {
            (&f.data_sources, "data source", "data_sources")
        } else {
            (&f.buckets, "bucket", "buckets")
        };
        if granted.contains(target) {
            Ok(())
        } else {
            Err(format!(
                "the IO tier's config does not grant function `{function}` {what} `{target}` \
                 (functions.{function}.{key})"
            ))
        }
    }
}

/// What one subject serves: a SQL data source, or the buckets of a key-value one.
pub enum Served {
    Sql {
        name: String,
        source: Arc<dyn SqlSource>,
    },
    Buckets(BTreeMap<String, Arc<dyn Bucket>>),
}

/// Watches the requests a server serves, e.g. a span per request continuing the caller's trace
/// (the request's `traceparent`). The crate knows no tracing library; the wiring plugs one in.
pub trait Observer: Send + Sync + 'static {
    /// A request from `caller` to do `op` on `target` (a data source or one of its buckets) of
    /// `data_source` is about to be served (its grant not checked yet).
    fn start(
        &self,
        data_source: &str,
        caller: &WireCaller,
        target: &str,
        op: &Op,
    ) -> Box<dyn ObservedCall>;
}

/// One request an [`Observer`] watches, told how it ended.
pub trait ObservedCall: Send {
    /// The request was answered; `error` is why it failed or was refused.
    fn end(self: Box<Self>, error: Option<&WireError>);
}

/// Counters of a server, for `/metrics`; the calls themselves are measured at the pool.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Requests refused because the IO tier's config does not grant them.
    pub not_granted: AtomicU64,
    /// Requests that could not be read (another protocol version, corrupt).
    pub bad_requests: AtomicU64,
}

/// Serves one data source on its subject.
pub struct Server {
    nats: Nats,
    data_source: String,
    subject: String,
    served: Arc<Served>,
    grants: Arc<GrantTable>,
    readiness: Readiness,
    stats: Arc<ServerStats>,
    observer: Option<Arc<dyn Observer>>,
    /// Longest a ready answer waits for others to share its message.
    linger: Duration,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot subscribe to `{subject}`: {message}")]
pub struct ServeError {
    subject: String,
    message: String,
}

impl Server {
    pub fn new(
        nats: Nats,
        data_source: &str,
        subject: &str,
        served: Served,
        grants: Arc<GrantTable>,
    ) -> Self {
        Self {
            nats,
            data_source: data_source.to_string(),
            subject: subject.to_string(),
            served: Arc::new(served),
            grants,
            readiness: Readiness::default(),
            stats: Arc::default(),
            observer: None,
            linger: Duration::ZERO,
        }
    }

    /// Holds a ready answer up to `linger` while other calls are still being served, so the
    /// answers ready meanwhile share its message (zero, the default here: each leaves as soon as
    /// the writer runs).
    pub fn lingering(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Has `observer` (when given) watch every request but pings.
    pub fn observed_by(mut self, observer: Option<Arc<dyn Observer>>) -> Self {
        self.observer = observer;
        self
    }

    /// Whether the server takes requests: subscribed with NATS connected.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    pub fn stats(&self) -> Arc<ServerStats> {
        self.stats.clone()
    }

    /// Serves until `shutdown`, then drains: answers every request already taken. Returns once
    /// those are answered; bound the wait from outside.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ServeError> {
        let client = self.nats.client().clone();
        let mut subscription = client
            .queue_subscribe(self.subject.clone(), QUEUE_GROUP.to_string())
            .await
            .map_err(|e| ServeError {
                subject: self.subject.clone(),
                message: e.to_string(),
            })?;
        tracing::info!(
            data_source = %self.data_source,
            subject = %self.subject,
            queue_group = QUEUE_GROUP,
            servers = %self.nats.servers(),
            "Serving the data source to compute replicas"
        );
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let tasks = TaskTracker::new();
        let (answers, ready) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_answers(
            client.clone(),
            ready,
            permits.clone(),
            this.linger,
        ));
        let mut tick = tokio::time::interval(READINESS_EVERY);
        let mut draining = false;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if !draining => {
                    draining = true;
                    this.readiness.set(false);
                    tracing::info!(data_source = %this.data_source, "Draining: taking no new requests");
                    if subscription.drain().await.is_err() {
                        break;
                    }
                }
                _ = tick.tick(), if !draining => this.readiness.set(this.nats.is_connected()),
                message = subscription.next() => {
                    let Some(message) = message else { break };
                    let Some(reply_to) = message.reply else {
                        continue;
                    };
                    let batch: Batch = match protocol::decode(&message.payload) {
                        Ok(batch) => batch,
                        Err(e) => {
                            this.unreadable(&e);
                            let refused = Answers::Refused(WireError::BadRequest(e.to_string()));
                            if let Err(e) = client.publish(reply_to, protocol::encode(&refused)).await {
                                tracing::debug!(error = %e, "Could not refuse a batch; its callers time out and retry");
                            }
                            continue;
                        }
                    };
                    let to = Subject::from(batch.answers_to);
                    for call in batch.calls {
                        let permit = permits.clone().acquire_owned().await.expect("never closed");
                        let this = this.clone();
                        let (to, answers) = (to.clone(), answers.clone());
                        tasks.spawn(async move {
                            let reply = this.serve(call.request).await;
                            let body = (call.id, protocol::encode_reply(&reply));
                            // Not in flight any more once its answer is handed over.
                            drop(permit);
                            // The writer outlives every call task.
                            let _ = answers.send((to, body));
                        });
                    }
                }
            }
        }
        this.readiness.set(false);
        tasks.close();
        tasks.wait().await;
        drop(answers);
        let _ = writer.await;
        // Answers of the drained calls leave before the connection goes.
        let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
        Ok(())
    }

    fn unreadable(&self, e: &protocol::DecodeError) {
        self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            data_source = %self.data_source,
            subject = %self.subject,
            error = %e,
            "Refused a request that cannot be read"
        );
    }

    /// The answer to one call.
    async fn serve(&self, request: Request) -> Reply {
        if request.op == Op::Ping {
            return Reply::Pong;
        }
        let observed = self.observer.as_ref().map(|o| {
            o.start(
                &self.data_source,
                &request.caller,
                &request.target,
                &request.op,
            )
        });
        let reply = self.answer(request).await;
        if let Some(call) = observed {
            call.end(match &reply {
                Reply::Failed(e) => Some(e),
                _ => None,
            });
        }
        reply
    }

    /// The answer to a request that was read.
    async fn answer(&self, request: Request) -> Reply {
        let caller = &request.caller;
        let span = tracing::debug_span!(
            "io_call",
            data_source = %self.data_source,
            op = request.op.name(),
            function = %caller.function,
            route = caller.route.as_deref().unwrap_or_default(),
            event = caller.event.as_deref().unwrap_or_default(),
            traceparent = caller.traceparent.as_deref().unwrap_or_default(),
        );
        if let Err(why) = self
            .grants
            .check(&caller.function, &request.target, request.op.is_sql())
        {
            self.stats.not_granted.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                data_source = %self.data_source,
                target = %request.target,
                op = request.op.name(),
                function = %caller.function,
                route = caller.route.as_deref().unwrap_or_default(),
                event = caller.event.as_deref().unwrap_or_default(),
                "Refused a call the IO tier's config does not grant: {why}"
            );
            return Reply::Failed(WireError::NotGranted(why));
        }
        self.dispatch(request.target, request.op)
            .instrument(span)
            .await
    }

    async fn dispatch(&self, target: String, op: Op) -> Reply {
        let not_here = |what: &str| {
            Reply::Failed(WireError::NotGranted(format!(
                "the IO tier serves no {what} `{target}` on `{}`",
                self.subject
            )))
        };
        let values = |params: Vec<protocol::WireValue>| -> Vec<Value> {
            params.into_iter().map(Value::from).collect()
        };
        match (&*self.served, op) {
            (Served::Sql { name, source }, Op::Query { statement, params }) if *name == target => {
                match source.query(statement, values(params)).await {
                    Ok(rows) => Reply::from(rows),
                    Err(e) => Reply::Failed(e.into()),
                }
            }
            (Served::Sql { name, source }, Op::Execute { statement, params })
                if *name == target =>
            {
                match source.execute(statement, values(params)).await {
                    Ok(n) => Reply::Affected(n),
                    Err(e) => Reply::Failed(e.into()),
                }
            }
            (Served::Buckets(buckets), op) if !op.is_sql() => {
                let Some(bucket) = buckets.get(&target) else {
                    return not_here("bucket");
                };
                let result = match op {
                    Op::Get { key } => bucket.get(key).await.map(Reply::Value),
                    Op::Set { key, value } => bucket.set(key, value).await.map(|()| Reply::Done),
                    Op::Delete { key } => bucket.delete(key).await.map(|()| Reply::Done),
                    Op::Exists { key } => bucket.exists(key).await.map(Reply::Exists),
                    Op::ListKeys { cursor } => bucket
                        .list_keys(cursor)
                        .await
                        .map(|(keys, cursor)| Reply::Keys { keys, cursor }),
                    Op::Increment { key, delta } => {
                        bucket.increment(key, delta).await.map(Reply::Counter)
                    }
                    Op::Query { .. } | Op::Execute { .. } | Op::Ping => {
                        return not_here("data source");
                    }
                };
                result.unwrap_or_else(|e| Reply::Failed(e.into()))
            }
            (Served::Sql { .. }, _) => not_here("data source"),
            (Served::Buckets(_), _) => not_here("data source"),
        }
    }
}

/// Sends the answers handed to it (destination, call number, [`protocol::encode_reply`]), one
/// message per destination (and per size cap). What is ready when it runs goes out at once when
/// no other call is in progress (none of `permits` taken) or
/// [`HOLD_UNTIL`](crate::client::HOLD_UNTIL) answers wait; otherwise it is held up to `linger`
/// for company.
async fn write_answers(
    client: async_nats::Client,
    mut ready: mpsc::UnboundedReceiver<(Subject, (u64, Vec<u8>))>,
    permits: Arc<Semaphore>,
    linger: Duration,
) {
    let mut taken = Vec::with_capacity(MAX_BATCH_CALLS);
    let mut messages: Vec<(Subject, MessageWriter)> = Vec::new();
    let mut hold = Hold::new(linger);
    loop {
        let room = MAX_BATCH_CALLS - taken.len();
        tokio::select! {
            biased;
            n = ready.recv_many(&mut taken, room) => {
                if n == 0 {
                    break;
                }
                more(&mut ready, &mut taken, MAX_BATCH_CALLS).await;
                let in_progress = permits.available_permits() < MAX_IN_FLIGHT;
                if hold.keeps(taken.len(), in_progress) {
                    continue;
                }
            }
            _ = hold.expired(), if hold.is_armed() => hold.disarm(),
        }
        write(&client, &mut taken, &mut messages).await;
    }
    write(&client, &mut taken, &mut messages).await;
}

/// Sends `taken` (emptying it), grouped into `messages` by destination.
async fn write(
    client: &async_nats::Client,
    taken: &mut Vec<(Subject, (u64, Vec<u8>))>,
    messages: &mut Vec<(Subject, MessageWriter)>,
) {
    for (to, (id, body)) in taken.drain(..) {
        let at = match messages.iter().position(|(t, _)| *t == to) {
            Some(at) => at,
            None => {
                messages.push((to, MessageWriter::answers()));
                messages.len() - 1
            }
        };
        let full = {
            let writer = &messages[at].1;
            !writer.is_empty() && writer.size() + body.len() > MAX_BATCH_BYTES
        };
        if full {
            let writer = std::mem::replace(&mut messages[at].1, MessageWriter::answers());
            publish(client, messages[at].0.clone(), writer).await;
        }
        messages[at].1.push(id, &body);
    }
    for (to, writer) in messages.drain(..) {
        publish(client, to, writer).await;
    }
}

async fn publish(client: &async_nats::Client, to: Subject, answers: MessageWriter) {
    if let Err(e) = client.publish(to, answers.finish()).await {
        tracing::debug!(error = %e, "Could not send answers; their callers time out and retry");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_name_what_is_missing() {
        let mut g = GrantTable::default();
        g.grant("enrich", ["orders_db".to_string()], ["dedup".to_string()]);
        assert!(g.check("enrich", "orders_db", true).is_ok());
        assert!(g.check("enrich", "dedup", false).is_ok());
        // A bucket name is not a data source, nor the other way round.
        let e = g.check("enrich", "dedup", true).unwrap_err();
        assert!(e.contains("functions.enrich.data_sources"), "{e}");
        assert!(g.check("enrich", "orders_db", false).is_err());
        let e = g.check("other", "orders_db", true).unwrap_err();
        assert!(e.contains("no function `other`"), "{e}");
        assert!(g.check("", "orders_db", true).is_err());
    }
}
