//! Queuing several AMQP methods on a channel at once, in order.
//!
//! Each lapin method call (`basic_publish`, `basic_ack`, …) queues its frames on the channel the
//! first time it is polled and then waits until lapin's IO loop has written them: awaited one by
//! one, every call is a round trip to that thread. Awaited with [`in_order`], a batch is queued
//! whole, in order, and the IO loop writes it and wakes the caller once.

use std::pin::Pin;
use std::task::Poll;

/// Awaits `futures`, polling each pending one in index order every time: their first polls
/// (where lapin queues a method's frames, and gives a publish its delivery tag) happen in the
/// order of `futures`. Their outputs, in the same order.
pub(crate) async fn in_order<F: Future + Unpin>(mut futures: Vec<F>) -> Vec<F::Output> {
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match Pin::new(future).poll(cx) {
                    Poll::Ready(o) => *output = Some(o),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("polled to completion"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// First polls happen in index order, whatever order the futures complete in, and the
    /// outputs keep the index order.
    #[tokio::test]
    async fn first_polls_in_order_outputs_in_order() {
        let polled = Arc::new(Mutex::new(Vec::new()));
        let futures: Vec<_> = (0..5u64)
            .map(|i| {
                let polled = polled.clone();
                Box::pin(async move {
                    polled.lock().unwrap().push(i);
                    // Later ones finish first.
                    tokio::time::sleep(std::time::Duration::from_millis(10 * (5 - i))).await;
                    i * 10
                })
            })
            .collect();
        assert_eq!(in_order(futures).await, vec![0, 10, 20, 30, 40]);
        assert_eq!(*polled.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    }
}
