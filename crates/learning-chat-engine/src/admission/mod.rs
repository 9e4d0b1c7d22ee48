//! Admission control: bounded concurrency with a bounded, time-limited queue, and the model-call
//! quota. Everything past a bound is refused at once with a retry hint, never piled up. The
//! sliding-window limiter behind the quota ([`window`]) also serves the per-key limits.

mod fair;
mod latency;
pub mod metrics;
mod model_quotas;
pub mod pacific;
mod quota;
pub mod window;

pub use fair::{Ahead, FairGate, Flow, Place, QueueFull, Turn, Waited};
pub use latency::LatencyEstimate;
pub use model_quotas::{ModelQuotas, QuotaStatus};
pub use quota::{QuotaLimiter, QuotaRejection};
pub use window::SlidingWindow;

use parking_lot::Mutex;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Why a request was refused before reaching the model; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// The wait queue was full.
    QueueFull,
    /// No slot freed up within the queue wait limit.
    QueueTimeout,
    /// The queue moves too slowly for the request to be admitted before its deadline (or the
    /// queue wait limit): refused on arrival, told how long the queue would have taken.
    QueueWait,
    /// The model-call quota has no slot before the request's deadline.
    Quota,
}

impl ShedReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::QueueFull => "queue_full",
            ShedReason::QueueTimeout => "queue_timeout",
            ShedReason::QueueWait => "queue_wait",
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

/// How many model calls may be in flight: enough to use the quota, never more than the ceiling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConcurrencyBound {
    /// `upstream.max_concurrency`: never more than this, whatever the quota and latency.
    pub ceiling: NonZeroUsize,
    /// `upstream.min_concurrency`: never fewer (capped by the ceiling), so a burst on top of a
    /// low steady rate still finds slots.
    pub floor: usize,
    /// `upstream.rpm` (0 = unlimited: the bound is the ceiling).
    pub rpm: u32,
    /// `upstream.concurrency_headroom`: the multiple of the Little's-law need that is allowed.
    pub headroom: f64,
}

impl ConcurrencyBound {
    /// The limit for calls taking `latency`: by Little's law the quota keeps `rpm / 60 x latency`
    /// calls in flight, times the headroom for bursts and slower calls, within floor and ceiling.
    pub fn limit(&self, latency: Duration) -> usize {
        let ceiling = self.ceiling.get();
        if self.rpm == 0 {
            return ceiling;
        }
        let needed = f64::from(self.rpm) / 60.0 * latency.as_secs_f64() * self.headroom;
        // `as` saturates, and NaN (a nonsense headroom) becomes 0 and so the floor.
        (needed.ceil() as usize).clamp(self.floor.clamp(1, ceiling), ceiling)
    }
}

/// At most the current concurrency limit of model calls at once, at most `max_queue` waiting,
/// each for at most `max_wait`; a key holding more of the queue than another yields its newest
/// place to that key's newcomer (see [`fair`]). The limit follows the latency estimate (see
/// [`ConcurrencyBound`]); it is re-derived at each admission and each recorded call.
#[derive(Debug)]
pub struct Admission {
    slots: Arc<Slots>,
    bound: ConcurrencyBound,
    latency: LatencyEstimate,
    /// Serialises resizes, so two of them never interleave their permit arithmetic.
    resizing: Mutex<()>,
    max_wait: Duration,
    /// Whose request waits next, and the queue's places: keys share the queue fairly when it
    /// is contended.
    fair: FairGate,
}

/// The semaphore and its bookkeeping, shared with the permits so that a permit returned while
/// the limit is being lowered is withheld instead of released.
#[derive(Debug)]
struct Slots {
    semaphore: Semaphore,
    /// The current limit: available + in flight - owed.
    limit: AtomicUsize,
    /// Permits to withhold as calls end: the part of a reduction the free permits could not cover.
    owed: AtomicUsize,
    in_flight: AtomicUsize,
}

impl Slots {
    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        let repaid = self
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| o.checked_sub(1));
        if repaid.is_err() {
            self.semaphore.add_permits(1);
        }
    }
}

/// A model slot, held for the length of one model call (retries included).
#[derive(Debug)]
pub struct AdmissionPermit {
    slots: Arc<Slots>,
    /// The fair-queue turn, held until the caller has also reserved its quota slot.
    turn: Option<Turn>,
    /// False while the slot is lent back (see [`Admission::wait_without_slot`]).
    held: bool,
}

impl AdmissionPermit {
    /// Passes the queue's turn to the next waiter (after the quota slot is reserved).
    pub fn end_turn(&mut self) {
        self.turn = None;
    }
}

impl Drop for AdmissionPermit {
    fn drop(&mut self) {
        if self.held {
            self.slots.release();
        }
    }
}

impl Admission {
    /// Admission within `bound`, sized from `latency`, with the given queue bounds.
    pub fn new(
        bound: ConcurrencyBound,
        latency: LatencyEstimate,
        max_queue: usize,
        max_wait: Duration,
    ) -> Admission {
        // Until calls are seen, size for calls as slow as the estimate allows: too many slots
        // for a while is harmless under the ceiling, too few would queue the first burst.
        let estimate = latency.estimate(latency.cap());
        let limit = bound.limit(estimate);
        crate::admission::metrics::upstream_limit(limit);
        crate::admission::metrics::upstream_latency_estimate(estimate);
        Admission {
            slots: Arc::new(Slots {
                semaphore: Semaphore::new(limit),
                limit: AtomicUsize::new(limit),
                owed: AtomicUsize::new(0),
                in_flight: AtomicUsize::new(0),
            }),
            bound,
            latency,
            resizing: Mutex::new(()),
            max_wait,
            fair: FairGate::new(max_queue),
        }
    }

    /// Waits for a model slot, within the queue bounds and `deadline`, in FIFO order.
    pub async fn admit(&self, deadline: Instant) -> Result<AdmissionPermit, Shed> {
        let mut permit = self.admit_as(&Flow::anonymous(), deadline).await?;
        permit.end_turn();
        Ok(permit)
    }

    /// Waits for a model slot as `flow`: when the queue is contended, flows take turns by
    /// weight. The permit holds the turn until [`AdmissionPermit::end_turn`] (or its drop), so
    /// the quota slot reserved next is handed out in the same fair order.
    pub async fn admit_as(&self, flow: &Flow, deadline: Instant) -> Result<AdmissionPermit, Shed> {
        self.admit_placed(flow, deadline, &Ahead::default()).await
    }

    /// [`Admission::admit_as`], storing in `ahead` how many requests are served before this
    /// one, as counted when it took its queue place (none when it had the turn at once and
    /// waits only for a model slot). Stored before the first await, so a future polled beside
    /// this one reads it after this one's first poll.
    pub async fn admit_placed(
        &self,
        flow: &Flow,
        deadline: Instant,
        ahead: &Ahead,
    ) -> Result<AdmissionPermit, Shed> {
        self.resize();
        let turn = self.fair.try_turn();
        if turn.is_some() {
            if let Ok(permit) = self.slots.semaphore.try_acquire() {
                return Ok(self.hold(permit, turn));
            }
        }
        // Take a queue place first, so the bound holds even under a burst of arrivals.
        let Ok(place) = self.fair.enqueue(flow) else {
            return Err(Shed {
                reason: ShedReason::QueueFull,
                retry_after: QUEUE_RETRY_AFTER,
            });
        };
        if turn.is_none() {
            place.count_into(ahead);
        } else {
            self.fair.count_none(ahead);
            self.fair.holder_took(&place);
        }
        let started = Instant::now();
        let until = deadline.min(started + self.max_wait);
        if turn.is_none() {
            // Admitted later than the deadline less a typical call, the answer would come too
            // late anyway: refuse now, with the queue's own estimate as the retry hint.
            let call = self.latency.estimate(Duration::ZERO);
            let latest = until.min(deadline.checked_sub(call).unwrap_or(deadline));
            if let Some(wait) = self.fair.estimated_wait(flow) {
                if started + wait > latest {
                    return Err(Shed {
                        reason: ShedReason::QueueWait,
                        retry_after: wait.max(QUEUE_RETRY_AFTER),
                    });
                }
            }
        }
        let waited = match turn {
            Some(turn) => Waited::Turn(turn),
            None => self.fair.turn(&place, flow, until).await,
        };
        let turn = match waited {
            Waited::Turn(turn) => turn,
            // Another key's newcomer took the place: refused as if the queue had been full.
            Waited::Displaced => {
                crate::admission::metrics::queue_wait(started.elapsed());
                return Err(Shed {
                    reason: ShedReason::QueueFull,
                    retry_after: QUEUE_RETRY_AFTER,
                });
            }
            Waited::TimedOut => {
                crate::admission::metrics::queue_wait(started.elapsed());
                return Err(Shed {
                    reason: ShedReason::QueueTimeout,
                    retry_after: QUEUE_RETRY_AFTER,
                });
            }
        };
        let acquired = tokio::time::timeout_at(until, self.slots.semaphore.acquire()).await;
        crate::admission::metrics::queue_wait(started.elapsed());
        match acquired {
            Ok(Ok(permit)) => Ok(self.hold(permit, Some(turn))),
            // Closed never happens (we never close it); treat it like a timeout rather than panic.
            Ok(Err(_)) | Err(_) => Err(Shed {
                reason: ShedReason::QueueTimeout,
                retry_after: QUEUE_RETRY_AFTER,
            }),
        }
    }

    /// Turns a semaphore permit into one whose return honours reductions of the limit.
    fn hold(
        &self,
        permit: tokio::sync::SemaphorePermit<'_>,
        turn: Option<Turn>,
    ) -> AdmissionPermit {
        permit.forget();
        self.slots.in_flight.fetch_add(1, Ordering::AcqRel);
        AdmissionPermit {
            slots: self.slots.clone(),
            turn,
            held: true,
        }
    }

    /// Waits until `at` (a reserved quota slot) without holding `permit`'s model slot, then
    /// takes a slot again, waiting for one at most until `deadline`. A question waiting for its
    /// quota slot makes no call: holding a slot meanwhile would keep the queue behind it from
    /// reserving theirs, and make them wait out their deadlines instead of hearing at once.
    pub async fn wait_without_slot(
        &self,
        permit: &mut AdmissionPermit,
        at: Instant,
        deadline: Instant,
    ) -> Result<(), Shed> {
        // A slot already due is no wait: a sleep would still last until the timer's next
        // 1 ms tick, on every call the quota does not hold back.
        let due = at <= Instant::now();
        if due && permit.held {
            return Ok(());
        }
        // Not held: an earlier wait of this question ran out without a slot, and its chain
        // goes on to the next model; that call takes a slot like any other.
        if permit.held {
            permit.held = false;
            self.slots.release();
        }
        if !due {
            tokio::time::sleep_until(at).await;
        }
        match tokio::time::timeout_at(deadline, self.slots.semaphore.acquire()).await {
            Ok(Ok(slot)) => {
                slot.forget();
                self.slots.in_flight.fetch_add(1, Ordering::AcqRel);
                permit.held = true;
                Ok(())
            }
            Ok(Err(_)) | Err(_) => Err(Shed {
                reason: ShedReason::QueueTimeout,
                retry_after: QUEUE_RETRY_AFTER,
            }),
        }
    }

    /// Records a model call that answered after `took`, and re-derives the limit.
    pub fn record_success(&self, took: Duration) {
        self.latency.record_success(took);
        self.resize();
    }

    /// Records a model call that failed or timed out after `waited`, and re-derives the limit.
    pub fn record_failure(&self, waited: Duration) {
        self.latency.record_failure(waited);
        self.resize();
    }

    /// The recent model-call latency (the quota gate's input).
    pub fn latency(&self) -> &LatencyEstimate {
        &self.latency
    }

    /// Sets the limit to what the bound derives from the latency estimate now.
    fn resize(&self) {
        let estimate = self.latency.estimate(self.latency.cap());
        crate::admission::metrics::upstream_latency_estimate(estimate);
        let target = self.bound.limit(estimate);
        if self.slots.limit.load(Ordering::Acquire) == target {
            return;
        }
        let _resizing = self.resizing.lock();
        let current = self.slots.limit.load(Ordering::Acquire);
        let slots = &self.slots;
        if target > current {
            let grow = target - current;
            // Cancel withheld permits first; only the rest become new permits.
            let owed = slots
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| {
                    Some(o.saturating_sub(grow))
                })
                .unwrap_or(0);
            slots.semaphore.add_permits(grow - owed.min(grow));
        } else if target < current {
            let shrink = current - target;
            // Free permits go at once; the rest are withheld as the calls holding them end.
            let forgotten = slots.semaphore.forget_permits(shrink);
            slots.owed.fetch_add(shrink - forgotten, Ordering::AcqRel);
        }
        slots.limit.store(target, Ordering::Release);
        crate::admission::metrics::upstream_limit(target);
    }

    /// Model calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.slots.in_flight.load(Ordering::Acquire)
    }

    /// Questions that would be admitted before a question of `flow` arriving now.
    pub fn ahead_of_newcomer(&self, flow: &Flow) -> Ahead {
        self.fair.ahead_of_newcomer(flow)
    }

    /// Of the questions `ahead` counted, those that have not yet passed the turn on (see
    /// [`FairGate::still_ahead`]).
    pub fn still_ahead(&self, ahead: &Ahead) -> usize {
        self.fair.still_ahead(ahead)
    }

    /// Questions waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.fair.queued()
    }

    /// Entries of the fair gate's per-key maps now (bounded by the queue).
    pub fn fair_entries(&self) -> usize {
        self.fair.entries()
    }

    /// The concurrency limit in force now.
    pub fn limit(&self) -> usize {
        self.slots.limit.load(Ordering::Acquire)
    }

    /// The configured ceiling of the concurrency limit (`upstream.max_concurrency`).
    pub fn max_concurrency(&self) -> usize {
        self.bound.ceiling.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Admission with a fixed limit (no quota to size it from).
    fn fixed(max_concurrency: usize, max_queue: usize, max_wait: Duration) -> Admission {
        let bound = ConcurrencyBound {
            ceiling: NonZeroUsize::new(max_concurrency).unwrap(),
            floor: max_concurrency,
            rpm: 0,
            headroom: 1.0,
        };
        let latency = LatencyEstimate::new(Duration::from_secs(30), Duration::from_secs(30));
        Admission::new(bound, latency, max_queue, max_wait)
    }

    #[tokio::test(start_paused = true)]
    async fn queue_is_bounded_in_length_and_time() {
        let admission = Arc::new(fixed(1, 1, Duration::from_secs(5)));
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
        let admission = Arc::new(fixed(1, 4, Duration::from_secs(5)));
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

    #[tokio::test(start_paused = true)]
    async fn a_request_the_queue_cannot_admit_before_its_deadline_is_refused_at_once() {
        const S: Duration = Duration::from_secs(1);
        // One slot, each call holding it 1 s: the queue admits one request a second.
        let admission = Arc::new(fixed(1, 100, 120 * S));
        let far = Instant::now() + 120 * S;
        let callers: Vec<_> = (0..40)
            .map(|_| {
                let admission = admission.clone();
                tokio::spawn(async move {
                    let permit = admission.admit(far).await;
                    tokio::time::sleep(S).await;
                    drop(permit);
                })
            })
            .collect();
        tokio::time::sleep(9 * S + S / 2).await;
        let waiting = admission.queued();
        assert!((28..=32).contains(&waiting), "{waiting}");
        // 30 s to go with ~31 ahead at one a second: no chance, said at once, with the wait.
        let start = Instant::now();
        let refused = admission.admit(Instant::now() + 30 * S).await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(refused.reason, ShedReason::QueueWait);
        let expected = (waiting + 1) as f64;
        let told = refused.retry_after.as_secs_f64();
        assert!(
            (told - expected).abs() <= 1.5,
            "{told} s for {waiting} ahead"
        );
        // With time enough, the same place waits its turn.
        let patient = admission.admit(Instant::now() + 60 * S).await;
        assert!(patient.is_ok());
        drop(patient);
        for caller in callers {
            caller.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_question_with_the_turn_waiting_only_for_a_slot_counts_nobody_ahead() {
        let admission = fixed(1, 10, Duration::from_secs(60));
        let deadline = Instant::now() + Duration::from_secs(60);
        let calling = admission.admit(deadline).await.unwrap();
        // Counted on arrival behind two questions that then left without their turn.
        let ahead = Ahead::before_any_turn(2);
        let flow = Flow::anonymous();
        let waiting = admission.admit_placed(&flow, deadline, &ahead);
        tokio::pin!(waiting);
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        // It took the free turn and waits for the one model slot: it reserves next.
        assert_eq!(admission.still_ahead(&ahead), 0);
        drop(calling);
        assert!(waiting.await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_question_whose_slot_wait_ran_out_takes_a_slot_again_before_its_next_call() {
        const S: Duration = Duration::from_secs(1);
        let admission = Arc::new(fixed(1, 10, 60 * S));
        let mut question = admission.admit(Instant::now() + 60 * S).await.unwrap();
        // It lends its slot while its quota slot comes (10 s); another question takes that
        // slot and holds it past the first one's deadline (5 s): the wait runs out.
        let lent = {
            let admission = admission.clone();
            tokio::spawn(async move {
                let now = Instant::now();
                let waited = admission
                    .wait_without_slot(&mut question, now + 10 * S, now + 5 * S)
                    .await;
                (question, waited)
            })
        };
        tokio::time::advance(S).await;
        let other = admission.admit(Instant::now()).await.unwrap();
        let (mut question, waited) = lent.await.unwrap();
        assert_eq!(waited.unwrap_err().reason, ShedReason::QueueTimeout);
        // Its chain asks the next model, whose quota slot is due now: the call waits for the
        // model slot the other question holds, rather than running beside it.
        let next = {
            let admission = admission.clone();
            tokio::spawn(async move {
                admission
                    .wait_without_slot(&mut question, Instant::now(), Instant::now() + 60 * S)
                    .await
                    .unwrap();
                question
            })
        };
        tokio::time::advance(S).await;
        assert!(!next.is_finished(), "it waits for the one model slot");
        assert_eq!(admission.in_flight(), 1);
        drop(other);
        let question = next.await.unwrap();
        assert_eq!(admission.in_flight(), 1, "the slot is its own now");
        drop(question);
        assert_eq!(admission.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quota_slot_already_due_is_taken_without_waiting_for_the_timer() {
        let admission = fixed(1, 10, Duration::from_secs(60));
        // Between two of the timer's 1 ms ticks, where a sleep rounds up to the next one.
        tokio::time::advance(Duration::from_micros(100)).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut permit = admission.admit(deadline).await.unwrap();
        let due = Instant::now();
        admission
            .wait_without_slot(&mut permit, due, deadline)
            .await
            .unwrap();
        // The paused clock moves only when a task sleeps: it did not.
        assert_eq!(Instant::now(), due);
        assert_eq!(admission.in_flight(), 1, "the slot stays in hand");
    }

    #[tokio::test(start_paused = true)]
    async fn a_question_waiting_for_its_quota_slot_lends_its_model_slot() {
        const S: Duration = Duration::from_secs(1);
        let admission = Arc::new(fixed(1, 10, 60 * S));
        let deadline = Instant::now() + 60 * S;
        let mut waiting = admission.admit(deadline).await.unwrap();
        let lent = {
            let admission = admission.clone();
            tokio::spawn(async move {
                let slot_at = Instant::now() + 10 * S;
                admission
                    .wait_without_slot(&mut waiting, slot_at, deadline)
                    .await
                    .unwrap();
                assert_eq!(admission.in_flight(), 1, "its slot is back in hand");
                waiting
            })
        };
        tokio::time::advance(S).await;
        // The only slot is free while the first question waits: another may call meanwhile.
        let other = admission.admit(Instant::now()).await.unwrap();
        tokio::time::advance(20 * S).await;
        assert!(!lent.is_finished(), "it waits for the slot the other holds");
        drop(other);
        let waiting = lent.await.unwrap();
        drop(waiting);
        assert_eq!(
            admission.in_flight(),
            0,
            "the slot is released once, not twice"
        );
        assert!(admission.admit(Instant::now()).await.is_ok());
    }

    fn derived(rpm: u32) -> ConcurrencyBound {
        ConcurrencyBound {
            ceiling: NonZeroUsize::new(1000).unwrap(),
            floor: 4,
            rpm,
            headroom: 2.0,
        }
    }

    #[test]
    fn the_bound_is_littles_law_with_headroom_within_floor_and_ceiling() {
        let seed_model = Duration::from_millis(2800);
        // 6000 rpm = 100 calls/s, each 2.8 s: 280 in flight, twice that allowed.
        assert_eq!(derived(6000).limit(seed_model), 560);
        // The quota, not the ceiling, is what limits: 1000 rpm needs 47 slots, allows 94.
        assert_eq!(derived(1000).limit(seed_model), 94);
        // Unlimited quota: the ceiling.
        assert_eq!(derived(0).limit(seed_model), 1000);
        // Never above the ceiling, never below the floor.
        assert_eq!(derived(1_000_000).limit(seed_model), 1000);
        assert_eq!(derived(60).limit(Duration::from_millis(10)), 4);
        // A floor above the ceiling yields to it.
        let tiny = ConcurrencyBound {
            ceiling: NonZeroUsize::new(2).unwrap(),
            floor: 32,
            rpm: 60,
            headroom: 2.0,
        };
        assert_eq!(tiny.limit(Duration::ZERO), 2);
    }

    /// Drives `admission` until it refuses a slot; returns the permits it granted.
    async fn fill(admission: &Admission, deadline: Instant) -> Vec<AdmissionPermit> {
        let mut held = Vec::new();
        while let Ok(permit) = admission.admit(deadline).await {
            held.push(permit);
            assert!(held.len() <= 1000, "the limit never binds");
        }
        held
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_follows_the_latency_estimate_down_and_back_up() {
        const S: Duration = Duration::from_secs(1);
        // 600 rpm: 10 calls/s. Until a call is seen, calls are assumed to take the cap (15 s).
        let latency = LatencyEstimate::new(30 * S, 15 * S);
        let admission = Admission::new(derived(600), latency, 0, Duration::from_millis(100));
        assert_eq!(admission.limit(), 300);
        let deadline = Instant::now() + 3600 * S;
        let mut held = Vec::new();
        for _ in 0..30 {
            held.push(admission.admit(deadline).await.unwrap());
        }
        // Calls turn out to take 1 s: 10/s x 1 s x 2 = 20, plus the prior's pull.
        for _ in 0..200 {
            admission.record_success(S);
        }
        let lowered = admission.limit();
        assert!((20..=25).contains(&lowered), "{lowered}");
        // 30 calls still hold slots above the new limit: nothing more is admitted...
        assert_eq!(admission.in_flight(), 30);
        let refused = admission.admit(deadline).await.unwrap_err();
        assert_eq!(refused.reason, ShedReason::QueueFull);
        // ...until enough of them end; then exactly the new limit is in flight.
        held.truncate(10);
        let more = fill(&admission, deadline).await;
        assert_eq!(admission.in_flight(), lowered);
        assert_eq!(more.len(), lowered - 10);
        drop(more);
        drop(held);
        assert_eq!(admission.in_flight(), 0);
        assert_eq!(fill(&admission, deadline).await.len(), lowered);
        // Ten quiet minutes: the fast calls no longer rule and the limit is back up.
        tokio::time::advance(600 * S).await;
        let held = fill(&admission, deadline).await;
        assert_eq!(admission.limit(), 300);
        assert_eq!(held.len(), 300);
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_raise_the_limit() {
        const S: Duration = Duration::from_secs(1);
        let latency = LatencyEstimate::new(30 * S, 15 * S);
        let admission = Admission::new(derived(600), latency, 0, Duration::from_millis(100));
        for _ in 0..100 {
            admission.record_success(S);
        }
        let before = admission.limit();
        // The model slows down: calls time out after 10 s. Little's law needs more slots.
        for _ in 0..100 {
            admission.record_failure(10 * S);
        }
        let after = admission.limit();
        assert!(after > 4 * before, "{before} -> {after}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn resizing_while_calls_come_and_go_loses_no_slot_and_adds_none() {
        const S: Duration = Duration::from_secs(1);
        let latency = LatencyEstimate::new(30 * S, 15 * S);
        let admission = Arc::new(Admission::new(derived(600), latency, 0, Duration::ZERO));
        let deadline = Instant::now() + 3600 * S;
        let workers: Vec<_> = (0..8)
            .map(|i| {
                let admission = admission.clone();
                tokio::spawn(async move {
                    for n in 0..2_000u32 {
                        // Alternate fast and slow calls, so the limit swings between about 20
                        // and 300 while permits are held and returned.
                        if n % 100 == 0 {
                            let took = if (n / 100 + i) % 2 == 0 {
                                S / 10
                            } else {
                                15 * S
                            };
                            for _ in 0..50 {
                                admission.record_success(took);
                            }
                        }
                        if let Ok(permit) = admission.admit(deadline).await {
                            assert!(admission.in_flight() <= 1000);
                            tokio::task::yield_now().await;
                            drop(permit);
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.unwrap();
        }
        assert_eq!(admission.in_flight(), 0);
        // Whatever the swings, exactly the limit in force can be held now.
        let held = fill(&admission, deadline).await;
        assert_eq!(held.len(), admission.limit());
    }
}
