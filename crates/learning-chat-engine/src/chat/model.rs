//! Steps 4 and 5 of the flow: a model slot for the caller's flow, then the agent's chain of
//! models through [`resilience`], with the quota gate before each call.

use super::{ChatDeps, ChatError, Inner, UpstreamMonitor};
use crate::admission::{Admission, AdmissionPermit, Ahead, Flow, Shed, ShedReason};
use crate::agents::Agent;
use crate::providers::resilience::{self, Answered, ChainPolicy, Failure, Gate, Pieces};
use crate::providers::{input_token_estimate, Completion, ModelRequest, ModelTurn, ProviderError};
use gemini_wire::{GenerationConfig, ThinkingConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

impl Inner {
    /// Admission for `flow`, then the agent's chain: one question's trip to the model.
    pub(super) async fn ask_model(
        &self,
        agent: &Agent,
        request: &ModelRequest,
        flow: &Flow,
        deadline: Instant,
        pieces: Pieces<'_, '_>,
    ) -> Result<Answered, ChatError> {
        let deps = &self.deps;
        let started = Instant::now();
        let ahead = deps.admission.ahead_of_newcomer(flow);
        let admitted = deps
            .admission
            .admit_placed(flow, deadline, &ahead)
            .instrument(crate::trace_span!("admission.wait"));
        // Checked first, so a question no usable model has a slot for in time is refused
        // before it queues; again once it holds its queue place; then, while it queues, at
        // each refusal of a question ahead: slots are reserved in order, so none frees up
        // before the one that refusal named.
        let admitted = tokio::select! {
            biased;
            shed = self.quota_refusal_while_queued(agent, deadline, &ahead) => Err(shed),
            admitted = admitted => admitted,
        };
        let permit = admitted.map_err(|shed| {
            crate::admission::metrics::shed(shed.reason.as_str(), started.elapsed());
            ChatError::Shed(shed)
        })?;
        crate::admission::metrics::upstream_in_flight(deps.admission.in_flight());
        let mut slots = Slots {
            deps,
            monitor: &self.monitor,
            permit,
            deadline,
            earliest_refusal: None,
        };
        // Made after the permit's holder, so dropped before it: see its `Drop`.
        let _gauge = InFlightGauge(&deps.admission);
        let chain = deps.router.chain(agent);
        let policy = ChainPolicy {
            retry: &deps.retry,
            spill_over: agent.definition.spill_over,
        };
        resilience::ask_chain(&chain, request, policy, deadline, &mut slots, pieces)
            .await
            .map_err(|failure| match failure {
                Failure::Refused(shed) => {
                    // Counted once per question, however many models of its chain refused it.
                    crate::admission::metrics::shed(shed.reason.as_str(), started.elapsed());
                    ChatError::Shed(shed)
                }
                Failure::Model(error) => ChatError::Provider(error),
            })
    }
}

impl Inner {
    /// A refusal of a question no model it may use has a quota slot for before its latest
    /// start, so that it hears so now instead of waiting its turn only to be refused then.
    /// `ahead` is how many questions will reserve before it (each takes a slot first, as
    /// slots are reserved in order). Two signs, either enough:
    /// - the budgets this server decides (no Redis, or Redis away) leave fewer slots before
    ///   its latest start, across every usable model, than it needs;
    /// - every usable model's last refusal here named a first free slot after that start (the
    ///   one sign with Redis deciding).
    fn quota_refuses(&self, agent: &Agent, deadline: Instant, ahead: usize) -> Option<Shed> {
        let deps = &self.deps;
        let chain = deps.router.chain(agent);
        let usable = if agent.definition.spill_over {
            chain.len()
        } else {
            1
        };
        let latest = quota_deadline(&deps.admission, deadline);
        let models = || chain.iter().take(usable).map(|r| deps.quotas.of(r.model()));
        let retry_after =
            no_room_before(models(), latest, ahead).or_else(|| refusing_past(models(), latest))?;
        Some(Shed {
            reason: ShedReason::Quota,
            retry_after: retry_after.saturating_duration_since(Instant::now()),
        })
    }

    /// Resolves once the quota cannot serve this question in time (see
    /// [`Inner::quota_refuses`]): checked at once, for a question arriving behind those
    /// `ahead` counts, then at each refusal of a question ahead of it while it queues; pending
    /// for as long as it might be served.
    pub(super) async fn quota_refusal_while_queued(
        &self,
        agent: &Agent,
        deadline: Instant,
        ahead: &Ahead,
    ) -> Shed {
        let refusals = self.deps.quotas.refusals();
        let admission = &self.deps.admission;
        // On arrival, before the question takes a queue place.
        if let Some(shed) = self.quota_refuses(agent, deadline, admission.still_ahead(ahead)) {
            return shed;
        }
        // Then with the place it took (the admission beside this future takes it on its first
        // poll, during this yield): questions arriving together all counted the same queue
        // above, and only their places tell them apart. Those ahead that reserved their slot
        // meanwhile are in the quota's count now, and `still_ahead` leaves them out. One window
        // is left: in the minutes after Redis comes back, the limiter counts the holder's slot
        // locally before Redis replies, while the holder passes the turn on only after that
        // reply; a question checked in between counts that slot twice (refused one slot early).
        tokio::task::yield_now().await;
        let mut ahead = admission.still_ahead(ahead);
        loop {
            // Registered before the check, so a refusal between the two is not missed.
            let refused = refusals.notified();
            tokio::pin!(refused);
            refused.as_mut().enable();
            if let Some(shed) = self.quota_refuses(agent, deadline, ahead) {
                return shed;
            }
            refused.await;
            // Its place in the queue is not known once it moves: count only itself.
            ahead = 0;
        }
    }
}

/// When every quota of `models` was last said to have no slot before, if that is after
/// `latest` for each of them (`None` as soon as one may have room by then).
fn refusing_past<'a>(
    models: impl Iterator<Item = &'a crate::admission::QuotaLimiter>,
    latest: Instant,
) -> Option<Instant> {
    let mut earliest: Option<Instant> = None;
    for quota in models {
        let until = quota.refusing_until()?;
        if until <= latest {
            return None;
        }
        earliest = Some(earliest.map_or(until, |e| e.min(until)));
    }
    earliest
}

/// When `ahead + 1` calls would fit one of `models`, if the slots the models have by
/// `latest` together are fewer (`None` when they suffice or any of them is decided by Redis).
fn no_room_before<'a>(
    models: impl Iterator<Item = &'a crate::admission::QuotaLimiter> + Clone,
    latest: Instant,
    ahead: usize,
) -> Option<Instant> {
    let needed = u64::try_from(ahead).unwrap_or(u64::MAX).saturating_add(1);
    let mut room: u64 = 0;
    for quota in models.clone() {
        room = room.saturating_add(quota.room_at(latest)?);
        if room >= needed {
            return None;
        }
    }
    models.filter_map(|quota| quota.earliest_for(needed)).min()
}

/// The latest start of a model call that can still end before `deadline`: a future slot so
/// late that the call cannot finish in time would spend quota on a 504, so it is refused with
/// 503 and Retry-After instead. Twice the typical call leaves room for a slower answer; the
/// cap keeps a slow spell from refusing every future slot. Until calls are seen they are
/// assumed fast (prior 0): a slot free now is granted by the limiter whatever this margin is.
fn quota_deadline(admission: &Admission, deadline: Instant) -> Instant {
    let latency = admission.latency();
    let margin = (latency.estimate(Duration::ZERO) * 2).min(latency.cap());
    deadline.checked_sub(margin).unwrap_or(deadline)
}

/// The gate of each model call: a quota slot of the model first; latency and usage learnt
/// after.
struct Slots<'a> {
    deps: &'a ChatDeps,
    monitor: &'a UpstreamMonitor,
    permit: AdmissionPermit,
    deadline: Instant,
    /// The soonest retry hint of the models refused so far: when the whole chain is refused,
    /// the learner may come back as soon as any of them has room.
    earliest_refusal: Option<Duration>,
}

impl Gate for Slots<'_> {
    type Refusal = Shed;

    async fn open(&mut self, attempt: u32, request: &ModelRequest) -> Result<(), Shed> {
        let deps = self.deps;
        let input_tokens =
            input_token_estimate(request.system.text(), &request.history, &request.message);
        let quota_deadline = quota_deadline(&deps.admission, self.deadline);
        let span = crate::trace_span!("quota.wait", model.attempt = i64::from(attempt));
        let reserved = deps
            .quotas
            .of(&request.model)
            .reserve(input_tokens, quota_deadline)
            .instrument(span.clone())
            .await;
        let at = match reserved {
            Ok(at) => at,
            Err(rejected) => {
                let retry_after = self
                    .earliest_refusal
                    .map_or(rejected.retry_after, |r| r.min(rejected.retry_after));
                self.earliest_refusal = Some(retry_after);
                return Err(Shed {
                    reason: ShedReason::Quota,
                    retry_after,
                });
            }
        };
        // The quota slot is ours: the next question in fair order may reserve its own while
        // this one waits for its slot, so the queue moves at the pace of reservations and a
        // question the quota cannot serve in time hears so at once.
        self.permit.end_turn();
        if at > Instant::now() {
            crate::admission::metrics::quota_wait(at - Instant::now());
        }
        deps.admission
            .wait_without_slot(&mut self.permit, at, self.deadline)
            .instrument(span)
            .await?;
        self.monitor.record();
        Ok(())
    }

    fn observe(&mut self, outcome: Result<&Completion, &ProviderError>, took: Duration) {
        let deps = self.deps;
        match outcome {
            Ok(completion) => {
                deps.admission.record_success(took);
                crate::providers::metrics::upstream_tokens(
                    completion.usage.prompt_tokens,
                    completion.usage.output_tokens,
                    deps.prices.input_per_million,
                    deps.prices.output_per_million,
                );
            }
            Err(_) => deps.admission.record_failure(took),
        }
    }
}

/// Keeps the in-flight gauge right however a model call ends.
struct InFlightGauge<'a>(&'a Admission);

impl Drop for InFlightGauge<'_> {
    fn drop(&mut self) {
        // The permit is released after this guard, so one is still counted; subtract it.
        crate::admission::metrics::upstream_in_flight(self.0.in_flight().saturating_sub(1));
    }
}

/// The request for `message` after `history` to `agent` under the answer policy `tutoring`
/// (each model of its chain sets its own model id).
pub(super) fn request(
    agent: &Agent,
    tutoring: crate::policy::Tutoring,
    message: String,
    history: Arc<[ModelTurn]>,
) -> ModelRequest {
    let d = &agent.definition;
    ModelRequest {
        model: d.model.clone(),
        system: agent.system_instruction(tutoring),
        history,
        message,
        generation: GenerationConfig {
            temperature: d.temperature,
            top_p: d.top_p,
            top_k: d.top_k,
            max_output_tokens: d.max_output_tokens,
            candidate_count: None,
            stop_sequences: None,
            thinking_config: d.thinking_budget.map(|budget| ThinkingConfig {
                thinking_budget: Some(budget),
                include_thoughts: None,
            }),
        },
        // Set by the flow from the caller's safety profile.
        safety: Default::default(),
    }
}
