//! The compute side: a data source served by the IO tier, behind the same capability traits an
//! in-process pool implements ([`RemoteSql`], [`RemoteBucket`]).
//!
//! Calls are pipelined and batched: every call in flight shares the process's one connection,
//! and the calls to one subject queued while the link's task was busy leave together as one
//! NATS message (a [`protocol::Batch`], up to [`MAX_BATCH_CALLS`] calls or [`MAX_BATCH_BYTES`]).
//! A call made while none is in flight leaves at once, alone. While others are in flight (their
//! answers on the way), a new call is held up to the data source's `linger` (default 1 ms) for
//! company: what the functions call meanwhile joins its message, which leaves early once it has
//! [`HOLD_UNTIL`] calls or nothing is in flight any more. Answers come back to one inbox of
//! this data source, several per message, each to its own call. Each call keeps its own
//! deadline (the data source's timeout from when it was made), outcome and caller (trace
//! context included).
//!
//! A call that cannot be answered — NATS down, no IO-tier process subscribed (every call of the
//! batch), none answering within the timeout — fails as `unavailable`, so the route retries the
//! event with backoff. A refusal by the IO tier (`not-granted`) is logged here too.
//!
//! [`Remote::readiness`] says whether the IO tier answers: every call's outcome updates it, and
//! while no call comes a ping every few seconds does ([`Remote::watch`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::{Message, StatusCode, Subject, Subscriber};
use fnmill_connector_api::Readiness;
use fnmill_connector_api::capability::Caller;
use fnmill_connector_api::capability::kv::{Bucket, KvError};
use fnmill_connector_api::capability::sql::{Rows, SqlError, SqlSource, Value};
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::{OnceCell, mpsc, oneshot};

pub use crate::batch::{HOLD_UNTIL, MAX_BATCH_BYTES, MAX_BATCH_CALLS};
use crate::batch::{Hold, more};
use crate::connection::Nats;
use crate::protocol::{
    self, Answers, CallerRef, MessageWriter, Op, Reply, RequestRef, WireError, WireValue,
};

/// How often the IO tier is pinged while it answers, and while it does not.
const PING_EVERY_READY: Duration = Duration::from_secs(5);
const PING_EVERY_NOT_READY: Duration = Duration::from_secs(1);

/// What the last logged state of the IO tier was.
const UNKNOWN: u8 = 0;
const ANSWERS: u8 = 1;
const SILENT: u8 = 2;

/// Longest a readiness ping waits.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the link forgets calls whose caller stopped waiting (timed out, cancelled) and
/// whose answer never came.
const FORGET_EVERY: Duration = Duration::from_secs(1);

/// What every handle of one remote data source shares.
pub struct Remote {
    nats: Nats,
    health: Arc<Health>,
    /// Longest one call waits for its answer.
    timeout: Duration,
    /// Longest a call waits for others to share its message.
    linger: Duration,
    /// The task that batches this data source's calls and routes their answers, started by the
    /// first call (on the runtime that makes calls).
    link: OnceCell<mpsc::UnboundedSender<Queued>>,
    stats: Arc<BatchStats>,
}

/// Whether the IO tier answers, shared by the calls and the link's task.
struct Health {
    /// The data source's name, for logs.
    data_source: String,
    subject: Subject,
    readiness: Readiness,
    /// The last state logged (`UNKNOWN`, `ANSWERS`, `SILENT`), so each change is logged once.
    answered: AtomicU8,
}

/// Calls and the messages that carried them, both ways.
#[derive(Debug, Default)]
struct BatchStats {
    calls: AtomicU64,
    batches: AtomicU64,
    answers: AtomicU64,
    answer_messages: AtomicU64,
}

/// How much batching there was: calls sent, the messages they went in, answers received, the
/// messages they came in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Batching {
    pub calls: u64,
    pub batches: u64,
    pub answers: u64,
    pub answer_messages: u64,
}

/// A call waiting for the link's task to send it.
struct Queued {
    /// The request, encoded ([`protocol::encode_request`]).
    request: Vec<u8>,
    answer: oneshot::Sender<Result<Reply, NoAnswer>>,
}

/// Why a call got no answer.
enum NoAnswer {
    /// Nothing was sent or nobody answered: the call may be made again.
    Unavailable(String),
}

impl Remote {
    /// The data source `data_source`, served by the IO tier on `subject` through `nats`; a
    /// call gets `unavailable` when no answer came within `timeout`.
    ///
    /// While calls are in flight, a new one is held up to `linger` so that those made in the
    /// meantime share its message (it leaves sooner once [`HOLD_UNTIL`] calls wait, or once
    /// no call is in flight); a call made while none is in flight leaves at once. Zero sends
    /// every call as soon as the link's task runs.
    pub fn new(
        nats: Nats,
        data_source: &str,
        subject: &str,
        timeout: Duration,
        linger: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            nats,
            health: Arc::new(Health {
                data_source: data_source.to_string(),
                subject: Subject::from(subject),
                readiness: Readiness::default(),
                answered: AtomicU8::new(UNKNOWN),
            }),
            timeout,
            linger,
            link: OnceCell::new(),
            stats: Arc::default(),
        })
    }

    /// Whether the IO tier answers, for `/readyz`.
    pub fn readiness(&self) -> Readiness {
        self.health.readiness.clone()
    }

    /// How much the calls were batched so far.
    pub fn batching(&self) -> Batching {
        let s = &self.stats;
        Batching {
            calls: s.calls.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            answers: s.answers.load(Ordering::Relaxed),
            answer_messages: s.answer_messages.load(Ordering::Relaxed),
        }
    }

    /// The data source's `sql` capability, for callers that [`SqlSource::for_caller`] names.
    pub fn sql(self: &Arc<Self>, target: &str) -> RemoteSql {
        RemoteSql {
            remote: self.clone(),
            target: Arc::from(target),
            caller: Caller::default(),
        }
    }

    /// The bucket `bucket` of the data source.
    pub fn bucket(self: &Arc<Self>, bucket: &str) -> RemoteBucket {
        RemoteBucket {
            remote: self.clone(),
            target: Arc::from(bucket),
            caller: Caller::default(),
        }
    }

    /// Pings the IO tier every few seconds, for as long as the data source exists, so readiness
    /// holds without traffic. Spawn it on the runtime of the connection.
    pub fn watch(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let weak: Weak<Self> = Arc::downgrade(self);
        async move {
            loop {
                let Some(remote) = weak.upgrade() else { return };
                let ping = RequestRef {
                    caller: CallerRef::default(),
                    target: &remote.health.data_source,
                    op: &Op::Ping,
                };
                let _ = remote
                    .request(&ping, PING_TIMEOUT.min(remote.timeout))
                    .await;
                let wait = if remote.health.readiness.is_ready() {
                    PING_EVERY_READY
                } else {
                    PING_EVERY_NOT_READY
                };
                drop(remote);
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// The link's queue, starting its task on the first call.
    async fn link(&self) -> Result<&mpsc::UnboundedSender<Queued>, NoAnswer> {
        self.link
            .get_or_try_init(|| async {
                let client = self.nats.client();
                let inbox = client.new_inbox();
                let subscription = client.subscribe(format!("{inbox}.>")).await.map_err(|e| {
                    NoAnswer::Unavailable(format!("cannot subscribe to the answers: {e}"))
                })?;
                let (queue, queued) = mpsc::unbounded_channel();
                let link = Link {
                    client: client.clone(),
                    health: self.health.clone(),
                    stats: self.stats.clone(),
                    answers_to: format!("{inbox}.a"),
                    batches: format!("{inbox}.b."),
                    inbox,
                    pending: HashMap::new(),
                    next_id: 0,
                    linger: self.linger,
                };
                tokio::spawn(link.run(subscription, queued));
                Ok(queue)
            })
            .await
    }

    /// Sends `request` and waits up to `timeout` for the reply.
    async fn request(
        &self,
        request: &RequestRef<'_>,
        timeout: Duration,
    ) -> Result<Reply, NoAnswer> {
        if !self.nats.is_connected() {
            let why = format!("NATS ({}) is not connected", self.nats.servers());
            self.health.answered(false, &why);
            return Err(NoAnswer::Unavailable(format!(
                "{why}; the call was not sent"
            )));
        }
        let call = async {
            let queue = self.link().await?;
            let (answer, answered) = oneshot::channel();
            let queued = Queued {
                request: protocol::encode_request(request),
                answer,
            };
            queue.send(queued).map_err(|_| closed())?;
            answered.await.map_err(|_| closed())?
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(answer) => answer,
            // A slow answer is no sign the tier is gone: only silence on every call is.
            Err(_) => Err(NoAnswer::Unavailable(format!(
                "no IO-tier process answered on `{}` within {timeout:?}",
                self.health.subject
            ))),
        }
    }

    /// Makes one call for `caller` and returns the reply, or why there was none.
    async fn call(&self, caller: &Caller, target: &str, op: Op) -> Result<Reply, WireError> {
        let name = op.name();
        let request = RequestRef {
            caller: CallerRef::from(caller),
            target,
            op: &op,
        };
        match self.request(&request, self.timeout).await {
            Ok(Reply::Failed(WireError::NotGranted(message))) => {
                tracing::warn!(
                    data_source = %self.health.data_source,
                    target,
                    op = name,
                    function = %caller.function,
                    route = caller.route.as_deref().unwrap_or_default(),
                    event = caller.event.as_deref().unwrap_or_default(),
                    "The IO tier refused the call: {message}"
                );
                Err(WireError::NotGranted(message))
            }
            Ok(Reply::Failed(e)) => Err(e),
            Ok(reply) => Ok(reply),
            Err(NoAnswer::Unavailable(why)) => Err(WireError::Unavailable(why)),
        }
    }
}

fn closed() -> NoAnswer {
    NoAnswer::Unavailable("the link to the IO tier closed (the process is stopping)".into())
}

impl Health {
    /// Records whether the IO tier answered, logging each change once.
    fn answered(&self, yes: bool, why: &str) {
        self.readiness.set(yes);
        let state = if yes { ANSWERS } else { SILENT };
        if self.answered.swap(state, Ordering::Relaxed) != state {
            if yes {
                tracing::info!(
                    data_source = %self.data_source,
                    subject = %self.subject,
                    "The IO tier answers; data source ready"
                );
            } else {
                tracing::warn!(
                    data_source = %self.data_source,
                    subject = %self.subject,
                    reason = why,
                    "The IO tier does not answer; data source not ready, its calls fail as unavailable"
                );
            }
        }
    }
}

/// The task of one remote data source: sends the queued calls in batches and hands each answer
/// to its call.
///
/// A batch's reply subject is `<inbox>.b.<first call>.<calls>`, its calls numbered one after
/// another: NATS's "no responders" notice comes there, with no body, and fails exactly those
/// calls. Answers come to `<inbox>.a` (the batches' `answers_to`), each naming its call.
struct Link {
    client: async_nats::Client,
    health: Arc<Health>,
    stats: Arc<BatchStats>,
    inbox: String,
    answers_to: String,
    /// `<inbox>.b.`
    batches: String,
    /// The calls sent and not answered yet, by number.
    pending: HashMap<u64, oneshot::Sender<Result<Reply, NoAnswer>>>,
    next_id: u64,
    /// Longest a call is held for company while others are in flight ([`Remote::new`]).
    linger: Duration,
}

impl Link {
    async fn run(mut self, mut answers: Subscriber, mut queue: mpsc::UnboundedReceiver<Queued>) {
        let mut taken = Vec::with_capacity(MAX_BATCH_CALLS);
        let mut forget = tokio::time::interval(FORGET_EVERY);
        forget.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hold = Hold::new(self.linger);
        loop {
            let room = MAX_BATCH_CALLS - taken.len();
            tokio::select! {
                // Answers first: they free callers, and their calls' memory.
                biased;
                message = answers.next() => match message {
                    Some(message) => {
                        self.on_message(message);
                        // Nothing left to wait with: the held calls go now.
                        if hold.is_armed() && self.pending.is_empty() {
                            hold.disarm();
                            self.send(&mut taken).await;
                        }
                    }
                    None => break,
                },
                n = queue.recv_many(&mut taken, room) => {
                    if n == 0 {
                        break;
                    }
                    more(&mut queue, &mut taken, MAX_BATCH_CALLS).await;
                    if !hold.keeps(taken.len(), !self.pending.is_empty()) {
                        self.send(&mut taken).await;
                    }
                }
                _ = hold.expired(), if hold.is_armed() => {
                    hold.disarm();
                    self.send(&mut taken).await;
                }
                _ = forget.tick() => self.pending.retain(|_, call| !call.is_closed()),
            }
        }
        // Calls still held when the process stops get their answers or fail as usual.
        self.send(&mut taken).await;
        tracing::debug!(inbox = %self.inbox, "The IO tier link stopped");
    }

    /// Sends the calls in `taken` (emptying it) in as few batches as the size caps allow.
    async fn send(&mut self, taken: &mut Vec<Queued>) {
        let mut calls = taken.drain(..).filter(|q| !q.answer.is_closed()).peekable();
        while calls.peek().is_some() {
            let first = self.next_id;
            let mut batch = MessageWriter::batch(&self.answers_to);
            while let Some(call) = calls
                .next_if(|c| batch.is_empty() || batch.size() + c.request.len() <= MAX_BATCH_BYTES)
            {
                let id = self.next_id;
                self.next_id += 1;
                batch.push(id, &call.request);
                self.pending.insert(id, call.answer);
            }
            let n = batch.len() as u64;
            self.stats.calls.fetch_add(n, Ordering::Relaxed);
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            let reply = format!("{}{first}.{n}", self.batches);
            if let Err(e) = self
                .client
                .publish_with_reply(self.health.subject.clone(), reply, batch.finish())
                .await
            {
                let why = format!("NATS request on `{}` failed: {e}", self.health.subject);
                self.health.answered(false, &why);
                self.fail(first, n, || Err(NoAnswer::Unavailable(why.clone())));
            }
        }
    }

    /// Ends calls `first`.. (`n` of them) still waiting with `answer`.
    fn fail(&mut self, first: u64, n: u64, answer: impl Fn() -> Result<Reply, NoAnswer>) {
        for id in first..first.saturating_add(n) {
            if let Some(call) = self.pending.remove(&id) {
                let _ = call.send(answer());
            }
        }
    }

    fn on_message(&mut self, message: Message) {
        // `<first>.<n>` of a batch's own reply subject, if it is one (no batch is larger).
        let batch = message
            .subject
            .strip_prefix(self.batches.as_str())
            .and_then(|rest| rest.split_once('.'))
            .and_then(|(first, n)| Some((first.parse::<u64>().ok()?, n.parse::<u64>().ok()?)))
            .map(|(first, n)| (first, n.min(MAX_BATCH_CALLS as u64)));
        if message.status == Some(StatusCode::NO_RESPONDERS) {
            let why = format!(
                "no IO-tier process serves `{}` (no responders)",
                self.health.subject
            );
            self.health.answered(false, &why);
            if let Some((first, n)) = batch {
                self.fail(first, n, || Err(NoAnswer::Unavailable(why.clone())));
            }
            return;
        }
        match protocol::decode::<Answers>(&message.payload) {
            Ok(Answers::Replies(replies)) => {
                self.health.answered(true, "");
                self.stats
                    .answers
                    .fetch_add(replies.len() as u64, Ordering::Relaxed);
                self.stats.answer_messages.fetch_add(1, Ordering::Relaxed);
                for (id, reply) in replies {
                    if let Some(call) = self.pending.remove(&id) {
                        let _ = call.send(Ok(reply));
                    }
                }
            }
            Ok(Answers::Refused(e)) => {
                self.health.answered(true, "");
                if let Some((first, n)) = batch {
                    self.fail(first, n, || Ok(Reply::Failed(e.clone())));
                }
            }
            Err(e) => match batch {
                // Another version's answer to a whole batch (its refusal, most likely).
                Some((first, n)) => {
                    let why = format!("unreadable answer from the IO tier: {e}");
                    self.fail(first, n, || Err(NoAnswer::Unavailable(why.clone())));
                }
                None => tracing::debug!(
                    subject = %message.subject,
                    error = %e,
                    "An unreadable answer from the IO tier; its calls time out"
                ),
            },
        }
    }
}

fn unexpected(reply: &Reply) -> WireError {
    WireError::BadRequest(format!("unexpected answer {reply:?}"))
}

/// A SQL data source served by the IO tier.
#[derive(Clone)]
pub struct RemoteSql {
    remote: Arc<Remote>,
    target: Arc<str>,
    /// Named in every request; an unnamed caller (function `""`) is refused by the IO tier.
    caller: Caller,
}

impl RemoteSql {
    fn run(&self, op: Op) -> BoxFuture<'static, Result<Reply, SqlError>> {
        let this = self.clone();
        Box::pin(async move {
            this.remote
                .call(&this.caller, &this.target, op)
                .await
                .map_err(WireError::into_sql)
        })
    }
}

fn wire(params: Vec<Value>) -> Vec<WireValue> {
    params.into_iter().map(WireValue::from).collect()
}

impl SqlSource for RemoteSql {
    fn query(
        &self,
        statement: String,
        params: Vec<Value>,
    ) -> BoxFuture<'static, Result<Rows, SqlError>> {
        let call = self.run(Op::Query {
            statement,
            params: wire(params),
        });
        Box::pin(async move {
            match call.await? {
                Reply::Rows { columns, rows } => Ok(Rows {
                    columns,
                    rows: rows
                        .into_iter()
                        .map(|r| r.into_iter().map(Value::from).collect())
                        .collect(),
                }),
                other => Err(unexpected(&other).into_sql()),
            }
        })
    }

    fn execute(
        &self,
        statement: String,
        params: Vec<Value>,
    ) -> BoxFuture<'static, Result<u64, SqlError>> {
        let call = self.run(Op::Execute {
            statement,
            params: wire(params),
        });
        Box::pin(async move {
            match call.await? {
                Reply::Affected(n) => Ok(n),
                other => Err(unexpected(&other).into_sql()),
            }
        })
    }

    fn for_caller(&self, caller: &Caller) -> Option<Arc<dyn SqlSource>> {
        Some(Arc::new(RemoteSql {
            remote: self.remote.clone(),
            target: self.target.clone(),
            caller: caller.clone(),
        }))
    }
}

/// A bucket served by the IO tier.
#[derive(Clone)]
pub struct RemoteBucket {
    remote: Arc<Remote>,
    target: Arc<str>,
    caller: Caller,
}

impl RemoteBucket {
    fn run<T: Send + 'static>(
        &self,
        op: Op,
        answer: fn(Reply) -> Option<T>,
    ) -> BoxFuture<'static, Result<T, KvError>> {
        let this = self.clone();
        Box::pin(async move {
            let reply = this
                .remote
                .call(&this.caller, &this.target, op)
                .await
                .map_err(WireError::into_kv)?;
            match answer(reply) {
                Some(value) => Ok(value),
                None => Err(KvError::Unavailable(
                    "unexpected answer from the IO tier".into(),
                )),
            }
        })
    }
}

impl Bucket for RemoteBucket {
    fn get(&self, key: String) -> BoxFuture<'static, Result<Option<Vec<u8>>, KvError>> {
        self.run(Op::Get { key }, |r| match r {
            Reply::Value(v) => Some(v),
            _ => None,
        })
    }

    fn set(&self, key: String, value: Vec<u8>) -> BoxFuture<'static, Result<(), KvError>> {
        self.run(Op::Set { key, value }, |r| {
            matches!(r, Reply::Done).then_some(())
        })
    }

    fn delete(&self, key: String) -> BoxFuture<'static, Result<(), KvError>> {
        self.run(Op::Delete { key }, |r| {
            matches!(r, Reply::Done).then_some(())
        })
    }

    fn exists(&self, key: String) -> BoxFuture<'static, Result<bool, KvError>> {
        self.run(Op::Exists { key }, |r| match r {
            Reply::Exists(b) => Some(b),
            _ => None,
        })
    }

    fn list_keys(
        &self,
        cursor: Option<u64>,
    ) -> BoxFuture<'static, Result<(Vec<String>, Option<u64>), KvError>> {
        self.run(Op::ListKeys { cursor }, |r| match r {
            Reply::Keys { keys, cursor } => Some((keys, cursor)),
            _ => None,
        })
    }

    fn increment(&self, key: String, delta: i64) -> BoxFuture<'static, Result<i64, KvError>> {
        self.run(Op::Increment { key, delta }, |r| match r {
            Reply::Counter(n) => Some(n),
            _ => None,
        })
    }

    fn for_caller(&self, caller: &Caller) -> Option<Arc<dyn Bucket>> {
        Some(Arc::new(RemoteBucket {
            remote: self.remote.clone(),
            target: self.target.clone(),
            caller: caller.clone(),
        }))
    }
}
