//! Running a process's long-lived tasks to the end: the first failure stops the others (through
//! the shutdown token), and once shutdown starts they get `grace` to finish before they are
//! aborted. `fnmill run` supervises its sources and routes this way, an IO process its servers.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What the log says at the two turning points, in the words of the tasks supervised.
pub(crate) struct Phases {
    /// Logged (info) when shutdown starts, e.g. "Shutting down: finishing in-flight events".
    pub shutting_down: &'static str,
    /// Logged (warn) when the grace period ran out and the remaining tasks are aborted.
    pub grace_over: &'static str,
}

/// Waits for every task of `tasks`. A task that fails (or panics) is logged, its error kept and
/// shutdown started; after shutdown starts, the tasks left get `grace`. Returns the failures in
/// the order they happened.
pub(crate) async fn supervise(
    mut tasks: JoinSet<anyhow::Result<()>>,
    shutdown: &CancellationToken,
    grace: Duration,
    phases: Phases,
) -> Vec<anyhow::Error> {
    let mut failures = Vec::new();
    let mut grace_deadline = None;
    loop {
        let next = async {
            match grace_deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, tasks.join_next())
                    .await
                    .ok(),
                None => Some(tasks.join_next().await),
            }
        };
        tokio::select! {
            joined = next => match joined {
                None => {
                    tracing::warn!(grace = ?grace, "{}", phases.grace_over);
                    tasks.abort_all();
                    break;
                }
                Some(None) => break,
                Some(Some(Ok(Ok(())))) => {}
                Some(Some(Ok(Err(e)))) => {
                    tracing::error!(error = format!("{e:#}"), "Stopping");
                    failures.push(e);
                    shutdown.cancel();
                }
                Some(Some(Err(e))) => {
                    failures.push(anyhow::anyhow!("a task panicked: {e}"));
                    shutdown.cancel();
                }
            },
            _ = shutdown.cancelled(), if grace_deadline.is_none() => {
                tracing::info!(grace = ?grace, "{}", phases.shutting_down);
                grace_deadline = Some(tokio::time::Instant::now() + grace);
            }
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHASES: Phases = Phases {
        shutting_down: "shutting down",
        grace_over: "grace over",
    };

    #[tokio::test]
    async fn a_failure_stops_the_others_and_is_returned() {
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let token = shutdown.clone();
        tasks.spawn(async move {
            token.cancelled().await;
            Ok(())
        });
        tasks.spawn(async { Err(anyhow::anyhow!("broken")) });
        let failures = supervise(tasks, &shutdown, Duration::from_secs(10), PHASES).await;
        assert!(shutdown.is_cancelled());
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].to_string(), "broken");
    }

    #[tokio::test]
    async fn a_task_that_outlives_the_grace_is_aborted() {
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(async {
            std::future::pending::<()>().await;
            Ok(())
        });
        shutdown.cancel();
        let failures = supervise(tasks, &shutdown, Duration::from_millis(50), PHASES).await;
        assert!(failures.is_empty());
    }
}
