//! Admission control: bounded concurrency with a bounded, time-limited queue, and the upstream
//! quota. Everything past a bound is refused at once with a retry hint, never piled up.

mod quota;
mod redis_quota;
mod sliding_window;

pub use quota::{QuotaLimiter, QuotaRejection};
pub use sliding_window::SlidingWindow;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Why a request was refused before reaching the model; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// The wait queue was full.
    QueueFull,
    /// No slot freed up within the queue wait limit.
    QueueTimeout,
    /// The upstream quota has no slot before the request's deadline.
    Quota,
}

impl ShedReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::QueueFull => "queue_full",
            ShedReason::QueueTimeout => "queue_timeout",
            ShedReason::Quota => "quota",
        }
    }
}

/// A refusal, with how long the client should wait before trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shed {
    /// Why.
    pub reason: ShedReason,
    /// The `Retry-After` hint.
    pub retry_after: Duration,
}

/// The retry hint when the queue is the bound: slots free up within seconds under normal load.
const QUEUE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// At most `max_concurrency` model calls at once, at most `max_queue` waiting, each for at most
/// `max_wait` (the seed's `Semaphore(100)`, with the bounds it lacked).
#[derive(Debug)]
pub struct Admission {
    semaphore: Arc<Semaphore>,
    max_concurrency: usize,
    max_queue: usize,
    max_wait: Duration,
    queued: AtomicUsize,
}

/// Decrements the queue depth however the wait ends (slot, timeout or cancellation).
struct QueueSlot<'a>(&'a AtomicUsize);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        crate::metrics::queue_depth(self.0.load(Ordering::Acquire));
    }
}

impl Admission {
    /// Admission with the given bounds.
    pub fn new(max_concurrency: usize, max_queue: usize, max_wait: Duration) -> Admission {
        crate::metrics::upstream_limit(max_concurrency);
        Admission {
            semaphore: Arc::new(Semaphore::new(max_concurrency)),
            max_concurrency,
            max_queue,
            max_wait,
            queued: AtomicUsize::new(0),
        }
    }

    /// Waits for a model slot, within the queue bounds and `deadline`.
    pub async fn admit(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, Shed> {
        if let Ok(permit) = self.semaphore.clone().try_acquire_owned() {
            return Ok(permit);
        }
        // Reserve a queue place first, so the bound holds even under a burst of arrivals.
        let reserved = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < self.max_queue).then_some(q + 1)
            });
        if reserved.is_err() {
            return Err(Shed {
                reason: ShedReason::QueueFull,
                retry_after: QUEUE_RETRY_AFTER,
            });
        }
        let _slot = QueueSlot(&self.queued);
        crate::metrics::queue_depth(self.queued.load(Ordering::Acquire));
        let started = Instant::now();
        let until = deadline.min(started + self.max_wait);
        let acquired = tokio::time::timeout_at(until, self.semaphore.clone().acquire_owned()).await;
        crate::metrics::queue_wait(started.elapsed());
        match acquired {
            Ok(Ok(permit)) => Ok(permit),
            // Closed never happens (we never close it); treat it like a timeout rather than panic.
            Ok(Err(_)) | Err(_) => Err(Shed {
                reason: ShedReason::QueueTimeout,
                retry_after: QUEUE_RETRY_AFTER,
            }),
        }
    }

    /// Model calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.max_concurrency - self.semaphore.available_permits()
    }

    /// Questions waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The configured concurrency limit.
    pub fn max_concurrency(&self) -> usize {
        self.max_concurrency
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn queue_is_bounded_in_length_and_time() {
        let admission = Arc::new(Admission::new(1, 1, Duration::from_secs(5)));
        let deadline = Instant::now() + Duration::from_secs(30);
        let held = admission.admit(deadline).await.unwrap();
        let waiter = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.admit(deadline).await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        assert_eq!(admission.queued(), 1);
        let full = admission.admit(deadline).await.unwrap_err();
        assert_eq!(full.reason, ShedReason::QueueFull);
        tokio::time::advance(Duration::from_secs(6)).await;
        let timed_out = waiter.await.unwrap().unwrap_err();
        assert_eq!(timed_out.reason, ShedReason::QueueTimeout);
        assert_eq!(admission.queued(), 0);
        drop(held);
        assert!(admission.admit(deadline).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_request_gets_the_next_free_slot() {
        let admission = Arc::new(Admission::new(1, 4, Duration::from_secs(5)));
        let deadline = Instant::now() + Duration::from_secs(30);
        let held = admission.admit(deadline).await.unwrap();
        let waiter = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.admit(deadline).await.map(|_| ()) })
        };
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(admission.in_flight(), 1);
        drop(held);
        assert!(waiter.await.unwrap().is_ok());
    }
}
