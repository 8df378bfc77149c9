//! The compute side: a data source served by the IO tier, behind the same capability traits an
//! in-process pool implements ([`RemoteSql`], [`RemoteBucket`]).
//!
//! Each call is one NATS request on the data source's subject, answered by one IO-tier process
//! of the queue group. Requests are pipelined: every call in flight shares the process's one
//! connection, each waiting on its own reply inbox. A call that cannot be answered — NATS down,
//! no IO-tier process subscribed, none answering within the timeout — fails as `unavailable`, so
//! the route retries the event with backoff. A refusal by the IO tier (`not-granted`) is logged
//! here too.
//!
//! [`Remote::readiness`] says whether the IO tier answers: every call's outcome updates it, and
//! while no call comes a ping every few seconds does ([`Remote::watch`]).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::client::RequestErrorKind;
use async_nats::{Request as NatsRequest, Subject};
use fnmill_connector_api::Readiness;
use fnmill_connector_api::capability::Caller;
use fnmill_connector_api::capability::kv::{Bucket, KvError};
use fnmill_connector_api::capability::sql::{Rows, SqlError, SqlSource, Value};
use futures::future::BoxFuture;

use crate::connection::Nats;
use crate::protocol::{self, CallerRef, Op, Reply, RequestRef, WireError, WireValue};

/// How often the IO tier is pinged while it answers, and while it does not.
const PING_EVERY_READY: Duration = Duration::from_secs(5);
const PING_EVERY_NOT_READY: Duration = Duration::from_secs(1);

/// What the last logged state of the IO tier was.
const UNKNOWN: u8 = 0;
const ANSWERS: u8 = 1;
const SILENT: u8 = 2;

/// Longest a readiness ping waits.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What every handle of one remote data source shares.
pub struct Remote {
    nats: Nats,
    /// The data source's name, for logs.
    data_source: String,
    subject: Subject,
    /// Longest one call waits for its answer.
    timeout: Duration,
    readiness: Readiness,
    /// The last state logged (`UNKNOWN`, `ANSWERS`, `SILENT`), so each change is logged once.
    answered: AtomicU8,
}

/// Why a call got no answer.
enum NoAnswer {
    /// Nothing was sent or nobody answered: the call may be made again.
    Unavailable(String),
}

impl Remote {
    /// The data source `data_source`, served by the IO tier on `subject` through `nats`; a
    /// call gets `unavailable` when no answer came within `timeout`.
    pub fn new(nats: Nats, data_source: &str, subject: &str, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            nats,
            data_source: data_source.to_string(),
            subject: Subject::from(subject),
            timeout,
            readiness: Readiness::default(),
            answered: AtomicU8::new(UNKNOWN),
        })
    }

    /// Whether the IO tier answers, for `/readyz`.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
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
                    target: &remote.data_source,
                    op: &Op::Ping,
                };
                let _ = remote
                    .request(&ping, PING_TIMEOUT.min(remote.timeout))
                    .await;
                let wait = if remote.readiness.is_ready() {
                    PING_EVERY_READY
                } else {
                    PING_EVERY_NOT_READY
                };
                drop(remote);
                tokio::time::sleep(wait).await;
            }
        }
    }

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

    /// Sends `request` and waits up to `timeout` for the reply.
    async fn request(
        &self,
        request: &RequestRef<'_>,
        timeout: Duration,
    ) -> Result<Reply, NoAnswer> {
        if !self.nats.is_connected() {
            let why = format!("NATS ({}) is not connected", self.nats.servers());
            self.answered(false, &why);
            return Err(NoAnswer::Unavailable(format!(
                "{why}; the call was not sent"
            )));
        }
        let body = protocol::encode(request);
        let sent = self
            .nats
            .client()
            .send_request(
                self.subject.clone(),
                NatsRequest::new().payload(body).timeout(Some(timeout)),
            )
            .await;
        let message = match sent {
            Ok(m) => m,
            Err(e) => {
                let why = match e.kind() {
                    RequestErrorKind::NoResponders => format!(
                        "no IO-tier process serves `{}` (no responders)",
                        self.subject
                    ),
                    RequestErrorKind::TimedOut => format!(
                        "no IO-tier process answered on `{}` within {timeout:?}",
                        self.subject
                    ),
                    _ => format!("NATS request on `{}` failed: {e}", self.subject),
                };
                // A slow answer is no sign the tier is gone: only silence on every call is.
                if e.kind() != RequestErrorKind::TimedOut {
                    self.answered(false, &why);
                }
                return Err(NoAnswer::Unavailable(why));
            }
        };
        self.answered(true, "");
        protocol::decode::<Reply>(&message.payload)
            .map_err(|e| NoAnswer::Unavailable(format!("unreadable answer from the IO tier: {e}")))
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
                    data_source = %self.data_source,
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
