//! Resilience in one place: how one question's trip to the model survives a failing model.
//!
//! An agent's chain of models is walked in order ([`ask_chain`]): each model behind its circuit
//! [`Breaker`] (skipped while it is open, unless it is the last), each call retried with
//! [`RetryPolicy`] (the provider's own `RetryInfo` delay when it gave one, else exponential
//! backoff with jitter, never past the deadline), and the next model asked when one gives up
//! with an outage or a quota refusal. When the gate refuses a model (its quota has no room before
//! the deadline), the next model of the chain is asked at once (*spill-over*), unless the agent
//! opted out. Once a streamed piece is out, nothing is retried or asked elsewhere: the learner
//! would see a second beginning. What each attempt needs first
//! (a quota slot) and what it teaches (the latency estimate) is the caller's [`Gate`].

use super::{Completion, ModelRequest, ProviderError, Route, StreamPiece};
use futures::StreamExt;
use parking_lot::Mutex;
use rand::RngExt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// Retry policy for model calls: exponential backoff with full jitter, within the deadline.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff.
    pub base_delay: Duration,
    /// Largest backoff.
    pub max_delay: Duration,
    /// Longest delay honoured from the provider's own retry hint; longer ones clamp to it.
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (0-based) after `error`: Gemini's own
    /// `retryDelay` when it gave one, otherwise a jittered exponential backoff.
    pub fn delay(&self, attempt: u32, error: &ProviderError) -> Duration {
        let mut rng = rand::rng();
        if let Some(asked) = error.retry_after() {
            let asked = asked.min(self.max_retry_after);
            // A little jitter on top, so many clients told the same delay do not return together.
            let extra = asked.mul_f64(rng.random_range(0.0..0.1));
            return asked.saturating_add(extra);
        }
        let ceiling = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(attempt))
            .min(self.max_delay);
        ceiling.mul_f64(rng.random_range(0.5..=1.0))
    }
}

/// What the caller does around each model call: waits for the right to make it (the quota
/// slot) and learns from its outcome (latency, usage).
pub trait Gate: Send {
    /// Why a call may not be made (e.g. no quota slot before the deadline).
    type Refusal: Send;
    /// Waits for the right to make attempt `attempt` (0-based) of `request`.
    fn open(
        &mut self,
        attempt: u32,
        request: &ModelRequest,
    ) -> impl Future<Output = Result<(), Self::Refusal>> + Send;
    /// Takes in one call's outcome and how long it took.
    fn observe(&mut self, outcome: Result<&Completion, &ProviderError>, took: Duration);
}

/// Why a chain gave no answer.
#[derive(Debug)]
pub enum Failure<R> {
    /// The gate refused a call.
    Refused(R),
    /// The last model asked failed (after its retries).
    Model(ProviderError),
}

/// An answer from a chain.
#[derive(Debug)]
pub struct Answered {
    /// The answer.
    pub completion: Completion,
    /// The fallback that gave it; `None` when the primary did.
    pub fallback: Option<Arc<Route>>,
}

/// Where a streamed answer's pieces go as the model writes them; `None` for an answer that is
/// only wanted whole.
pub type Pieces<'a, 'p> = Option<&'a mut (dyn FnMut(&str) + Send + 'p)>;

/// How a chain is walked.
#[derive(Debug, Clone, Copy)]
pub struct ChainPolicy<'a> {
    /// Retries of each model.
    pub retry: &'a RetryPolicy,
    /// A model the gate refuses hands the question to the next one (else the refusal stands).
    pub spill_over: bool,
}

/// Asks `chain` for the answer to `request` (built for any model of it: each route sets its
/// own) by `deadline`: breakers, retries, fallbacks and spill-over as the module describes.
/// When every model asked was refused by the gate, the last refusal is returned (a gate that
/// wants the earliest retry hint keeps it across calls).
pub async fn ask_chain<G: Gate>(
    chain: &[Arc<Route>],
    request: &ModelRequest,
    policy: ChainPolicy<'_>,
    deadline: Instant,
    gate: &mut G,
    mut pieces: Pieces<'_, '_>,
) -> Result<Answered, Failure<G::Refusal>> {
    let retry = policy.retry;
    let mut started = false;
    let mut last: Option<ProviderError> = None;
    let mut refused: Option<G::Refusal> = None;
    for (index, route) in chain.iter().enumerate() {
        let has_next = index + 1 < chain.len();
        // The last model is always tried: skipping it would fail the request outright, so
        // a single-model agent behaves as without a breaker (its circuit only reported).
        if has_next && !route.admit() {
            crate::providers::metrics::model_fallback(route.model());
            continue;
        }
        let request = ModelRequest {
            model: route.model().to_owned(),
            ..request.clone()
        };
        let attempts = Attempts {
            route,
            request: &request,
            retry,
            deadline,
        };
        match attempts
            .run(gate, pieces.as_deref_mut(), &mut started)
            .await
        {
            Ok(completion) => {
                crate::providers::metrics::model_answer(route.model(), index > 0);
                let fallback = (index > 0).then(|| route.clone());
                return Ok(Answered {
                    completion,
                    fallback,
                });
            }
            // Once a piece is out, another model would send the learner a second beginning.
            Err(Failure::Model(error)) if has_next && falls_back(&error) && !started => {
                tracing::warn!(
                    model = route.model(),
                    kind = error.kind(),
                    "model gave up; asking the next model of the chain: {error}"
                );
                crate::providers::metrics::model_fallback(route.model());
                last = Some(error);
            }
            // No room in this model's quota before the deadline: the next one may have some.
            Err(Failure::Refused(refusal)) if policy.spill_over && has_next && !started => {
                tracing::debug!(
                    model = route.model(),
                    "no quota room before the deadline; asking the next model of the chain"
                );
                crate::admission::metrics::spill_over(route.model());
                refused = Some(refusal);
            }
            Err(failure) => return Err(failure),
        }
    }
    if let (Some(refusal), None) = (refused, &last) {
        return Err(Failure::Refused(refusal));
    }
    Err(Failure::Model(last.unwrap_or_else(|| {
        ProviderError::Unavailable {
            status: None,
            message: "the agent has no model to ask".to_owned(),
        }
    })))
}

/// One model of a chain: its calls, each through the gate, with retries.
struct Attempts<'a> {
    route: &'a Route,
    request: &'a ModelRequest,
    retry: &'a RetryPolicy,
    deadline: Instant,
}

impl Attempts<'_> {
    async fn run<G: Gate>(
        &self,
        gate: &mut G,
        mut pieces: Pieces<'_, '_>,
        started: &mut bool,
    ) -> Result<Completion, Failure<G::Refusal>> {
        let mut attempt = 0;
        loop {
            gate.open(attempt, self.request)
                .await
                .map_err(Failure::Refused)?;
            let began = Instant::now();
            let result = self
                .call(attempt, pieces.as_deref_mut(), started)
                .await
                .map_err(|error| error.with_retry_after_at_most(self.retry.max_retry_after));
            let outcome = result.as_ref().map_or_else(ProviderError::kind, |_| "ok");
            crate::providers::metrics::upstream_request(outcome, began.elapsed());
            gate.observe(result.as_ref(), began.elapsed());
            let error = match result {
                Ok(completion) => return Ok(completion),
                Err(error) => error,
            };
            // Once a piece is out, a retry would send the learner a second beginning.
            if !error.is_retryable() || attempt >= self.retry.max_retries || *started {
                return Err(Failure::Model(error));
            }
            let delay = self.retry.delay(attempt, &error);
            if Instant::now() + delay >= self.deadline {
                return Err(Failure::Model(error));
            }
            tracing::warn!(
                kind = error.kind(),
                attempt = attempt + 1,
                delay_ms = delay.as_millis() as u64,
                "model call failed; retrying: {error}"
            );
            crate::providers::metrics::upstream_retry(error.kind());
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// One call, in its trace span: whole, or streamed into `pieces`.
    async fn call(
        &self,
        attempt: u32,
        pieces: Pieces<'_, '_>,
        started: &mut bool,
    ) -> Result<Completion, ProviderError> {
        let span = crate::trace_span!(
            "model.call",
            otel.kind = "client",
            gen_ai.request.model = %self.request.model,
            // Signed: the OpenTelemetry layer records unsigned integers as text.
            model.attempt = i64::from(attempt),
            model.status = tracing::field::Empty,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let result = match pieces {
            None => {
                self.route
                    .generate(self.request, self.deadline)
                    .instrument(span.clone())
                    .await
            }
            Some(pieces) => self.stream(pieces, started).instrument(span.clone()).await,
        };
        span.record(
            "model.status",
            result.as_ref().map_or_else(ProviderError::kind, |_| "ok"),
        );
        match &result {
            Ok(completion) => {
                let usage = completion.usage;
                span.record("gen_ai.usage.input_tokens", i64::from(usage.prompt_tokens));
                span.record("gen_ai.usage.output_tokens", i64::from(usage.output_tokens));
            }
            Err(_) => {
                span.record("otel.status_code", "ERROR");
            }
        }
        result
    }

    /// One streamed call: its pieces into `pieces`, the whole answer at the end.
    async fn stream(
        &self,
        pieces: &mut (dyn FnMut(&str) + Send + '_),
        started: &mut bool,
    ) -> Result<Completion, ProviderError> {
        let mut stream = self
            .route
            .generate_stream(self.request, self.deadline)
            .await?;
        let drained = tokio::time::timeout_at(self.deadline, async {
            while let Some(item) = stream.next().await {
                match item? {
                    StreamPiece::Text(text) => {
                        *started = true;
                        pieces(&text);
                    }
                    StreamPiece::Finished(completion) => return Ok(completion),
                }
            }
            Err(ProviderError::Unavailable {
                status: None,
                message: "the answer stream ended without its end".to_owned(),
            })
        })
        .await;
        drained.unwrap_or(Err(ProviderError::Timeout))
    }
}

/// True for the failures after which the next model of a chain should answer: the model is
/// down or overloaded (after its retries), or out of quota (a per-day 429 at once).
fn falls_back(error: &ProviderError) -> bool {
    matches!(
        error,
        ProviderError::Unavailable { .. } | ProviderError::RateLimited { .. }
    )
}

/// A model's circuit: closed (calls go), open (skipped until the cool-down ends) or half-open
/// (one probe call in flight decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Circuit {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { since: Instant },
}

/// Counts a model's consecutive failures and skips it for a cool-down after too many, so a
/// model that is down costs no latency; one probe after the cool-down closes it again.
#[derive(Debug)]
pub struct Breaker {
    model: String,
    failures_to_open: u32,
    cooldown: Duration,
    circuit: Mutex<Circuit>,
}

impl Breaker {
    /// A closed breaker; `failures_to_open = 0` never opens.
    pub fn new(model: &str, failures_to_open: u32, cooldown: Duration) -> Breaker {
        crate::providers::metrics::circuit_state(model, 0);
        Breaker {
            model: model.to_owned(),
            failures_to_open,
            cooldown,
            circuit: Mutex::new(Circuit::Closed { failures: 0 }),
        }
    }

    /// May a call go to this model now? An open circuit past its cool-down lets exactly one
    /// caller through as the probe (and again if a probe never reports within a cool-down).
    pub fn admit(&self) -> bool {
        let now = Instant::now();
        let mut circuit = self.circuit.lock();
        let due = match *circuit {
            Circuit::Closed { .. } => return true,
            Circuit::Open { until } => now >= until,
            Circuit::HalfOpen { since } => now >= since + self.cooldown,
        };
        if !due {
            return false;
        }
        *circuit = Circuit::HalfOpen { since: now };
        drop(circuit);
        crate::providers::metrics::circuit_state(&self.model, 2);
        tracing::info!(model = %self.model, "circuit half-open: probing the model");
        true
    }

    /// True while the model is being skipped (open, or half-open with its probe out).
    pub fn is_open(&self) -> bool {
        match *self.circuit.lock() {
            Circuit::Closed { .. } => false,
            Circuit::Open { until } => Instant::now() < until,
            Circuit::HalfOpen { .. } => true,
        }
    }

    /// `closed`, `open` or `half_open`, for /ready.
    pub fn state(&self) -> &'static str {
        match *self.circuit.lock() {
            Circuit::Closed { .. } => "closed",
            Circuit::Open { .. } => "open",
            Circuit::HalfOpen { .. } => "half_open",
        }
    }

    /// Takes one call's result in. Only the model's own failures count (5xx, connection
    /// errors, timeouts, garbage); quota refusals and rejected requests say nothing of its
    /// health, and an answer (even a refusal) closes the circuit.
    pub fn record<T>(&self, result: &Result<T, ProviderError>) {
        let failed = match result {
            Ok(_) => false,
            Err(
                ProviderError::Unavailable { .. }
                | ProviderError::Timeout
                | ProviderError::InvalidResponse(_),
            ) => true,
            Err(ProviderError::Blocked { .. } | ProviderError::Empty(_)) => false,
            Err(ProviderError::RateLimited { .. } | ProviderError::Rejected { .. }) => {
                let mut circuit = self.circuit.lock();
                if let Circuit::HalfOpen { .. } = *circuit {
                    // The probe told nothing: let the next call probe at once.
                    *circuit = Circuit::Open {
                        until: Instant::now(),
                    };
                }
                return;
            }
        };
        let mut circuit = self.circuit.lock();
        let next = match (*circuit, failed) {
            (_, false) => Circuit::Closed { failures: 0 },
            (Circuit::Closed { failures }, true)
                if self.failures_to_open == 0 || failures + 1 < self.failures_to_open =>
            {
                Circuit::Closed {
                    failures: failures + 1,
                }
            }
            (_, true) => Circuit::Open {
                until: Instant::now() + self.cooldown,
            },
        };
        let opened =
            matches!(next, Circuit::Open { .. }) && !matches!(*circuit, Circuit::Open { .. });
        let closed =
            matches!(next, Circuit::Closed { .. }) && !matches!(*circuit, Circuit::Closed { .. });
        *circuit = next;
        drop(circuit);
        if opened {
            crate::providers::metrics::circuit_state(&self.model, 1);
            tracing::warn!(
                model = %self.model,
                cooldown_ms = self.cooldown.as_millis() as u64,
                "circuit open: skipping the model for its cool-down"
            );
        } else if closed {
            crate::providers::metrics::circuit_state(&self.model, 0);
            tracing::info!(model = %self.model, "circuit closed: the model answers again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable() -> Result<(), ProviderError> {
        Err(ProviderError::Unavailable {
            status: Some(503),
            message: "overloaded".into(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn the_circuit_opens_after_n_failures_and_closes_after_a_good_probe() {
        let breaker = Breaker::new("m", 3, Duration::from_secs(10));
        for _ in 0..2 {
            assert!(breaker.admit());
            breaker.record(&unavailable());
        }
        // A success in between resets the count.
        breaker.record(&Ok::<(), ProviderError>(()));
        for _ in 0..3 {
            assert!(breaker.admit());
            breaker.record(&unavailable());
        }
        assert_eq!(breaker.state(), "open");
        assert!(!breaker.admit());
        tokio::time::advance(Duration::from_secs(10)).await;
        // One probe, not two.
        assert!(breaker.admit());
        assert!(!breaker.admit());
        assert_eq!(breaker.state(), "half_open");
        // A failed probe opens it for another cool-down.
        breaker.record(&unavailable());
        assert!(!breaker.admit());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(breaker.admit());
        breaker.record(&Ok::<(), ProviderError>(()));
        assert_eq!(breaker.state(), "closed");
        assert!(breaker.admit());
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_reports_is_replaced_after_a_cool_down() {
        let breaker = Breaker::new("m", 1, Duration::from_secs(10));
        breaker.record(&unavailable());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(breaker.admit());
        assert!(!breaker.admit());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(breaker.admit());
    }

    #[test]
    fn quota_refusals_do_not_count_as_failures() {
        let breaker = Breaker::new("m", 1, Duration::from_secs(10));
        breaker.record(&Err::<(), _>(ProviderError::RateLimited {
            retry_after: None,
            daily: false,
        }));
        assert_eq!(breaker.state(), "closed");
    }
}
