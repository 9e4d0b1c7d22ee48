//! Steps 2 and 6 of the flow, the cache's side: the lookup before any call, and what is kept
//! of a call's result (in both cache tiers, the refusal memo, and for the servers waiting on the
//! lease).

use super::{route_key, ChatError, ChatService, Inner, Shape};
use crate::agents::Agent;
use crate::cache::{CacheKey, CachedAnswer, Share};
use crate::coalesce::{Lease, Publish, SharedOutcome};
use crate::providers::resilience::Answered;
use crate::providers::{Completion, ModelRequest, ModelTurn, ProviderError};
use gemini_wire::FinishReason;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::Instrument;

impl ChatService {
    /// Step 2: the cached answer to the question, if any.
    pub(super) async fn lookup(
        &self,
        agent: &Agent,
        key: &CacheKey,
        message: &str,
        history: &[ModelTurn],
        shape: Shape<'_>,
    ) -> Option<(Arc<CachedAnswer>, CacheKey)> {
        let deps = &self.inner.deps;
        let lookup = crate::trace_span!(
            "cache.lookup",
            cache.hit = tracing::field::Empty,
            cache.tier = tracing::field::Empty,
            cache.key = tracing::field::Empty,
            chat.message = tracing::field::Empty,
        );
        if crate::trace::trace_content() {
            lookup.record("cache.key", tracing::field::display(key));
            lookup.record("chat.message", message);
        }
        let mut found = deps
            .cache
            .get(key)
            .instrument(lookup.clone())
            .await
            .map(|(hit, tier)| (hit, tier, *key));
        if found.is_none() {
            // While the primary is skipped (its circuit open, or its quota refusing questions
            // that then spill over), the model that would answer is the first next one that
            // is not: its cached answer is the one to serve.
            let chain = deps.router.chain(agent);
            let skipped = |route: &crate::providers::Route| {
                route.is_open()
                    || (agent.definition.spill_over && deps.quotas.of(route.model()).refusing())
            };
            if chain.first().is_some_and(|primary| skipped(primary)) {
                // With every later quota refusing too, the answer an earlier spill-over kept
                // is still worth serving: it costs no quota.
                let next = chain.iter().skip(1);
                let route = next
                    .clone()
                    .find(|r| !skipped(r))
                    .or_else(|| next.clone().find(|r| !r.is_open()));
                if let Some(route) = route {
                    let key = route_key(agent, route, message, history, shape);
                    found = deps
                        .cache
                        .get(&key)
                        .instrument(lookup.clone())
                        .await
                        .map(|(hit, tier)| (hit, tier, key));
                }
            }
        }
        lookup.record("cache.hit", found.is_some());
        if let Some((_, tier, _)) = &found {
            lookup.record("cache.tier", tier.as_str());
        }
        found.map(|(hit, _, key)| (hit, key))
    }
}

impl Inner {
    /// Step 6: keeps what is worth keeping of a call's result (a complete answer in both cache
    /// tiers, a refusal in the memo) and tells the servers waiting on the lease.
    pub(super) async fn keep(
        &self,
        key: CacheKey,
        agent: &Agent,
        request: &ModelRequest,
        shape: Shape<'_>,
        lease: Option<Lease>,
        answered: Result<Answered, ChatError>,
    ) -> Result<Arc<Completion>, ChatError> {
        let deps = &self.deps;
        let (cache, shared_for) = (&deps.cache, deps.failure_share);
        let publish = match &answered {
            // A fallback's answer is kept under the fallback's own key, never the primary's:
            // waiters on this question get it, later askers ask the primary again.
            Ok(Answered {
                completion,
                fallback: Some(route),
            }) => {
                if completion.finish_reason == FinishReason::Stop {
                    let key = route_key(agent, route, &request.message, &request.history, shape);
                    cache
                        .keep(key, to_cache(completion, &request.message), Share::Now)
                        .await;
                }
                Publish::Outcome(SharedOutcome::uncached(completion), shared_for)
            }
            // Only complete answers are worth serving again; a truncated one is returned, and
            // shown to the servers waiting on it, but not kept.
            Ok(Answered { completion, .. }) if completion.finish_reason == FinishReason::Stop => {
                let share = if lease.is_some() {
                    Share::ByLease
                } else {
                    Share::Now
                };
                match cache
                    .keep(key, to_cache(completion, &request.message), share)
                    .await
                {
                    Some(answer) => Publish::Answer(answer),
                    None => Publish::Nothing,
                }
            }
            Ok(Answered { completion, .. }) => {
                Publish::Outcome(SharedOutcome::uncached(completion), shared_for)
            }
            Err(ChatError::Provider(error)) if error.is_refusal() => {
                if let Some(refusals) = &self.refusals {
                    refusals.insert(key, error.clone());
                    crate::chat::metrics::refusals_bytes(refusals.weighted_size());
                }
                let ttl = deps.refusal_ttl.max(shared_for);
                Publish::Outcome(SharedOutcome::Failed(error.clone()), ttl)
            }
            // Ran out of the first asker's time: waiters with more time ask themselves.
            Err(ChatError::Provider(ProviderError::Timeout)) => Publish::Nothing,
            Err(ChatError::Provider(error)) => {
                Publish::Outcome(SharedOutcome::Failed(error.clone()), shared_for)
            }
            // Refusals by this server's own admission or quota, timeouts, bugs: nothing the
            // other servers would get too.
            Err(_) => Publish::Nothing,
        };
        if let Some(lease) = lease {
            lease.finish(key, publish);
        }
        answered.map(|answered| Arc::new(answered.completion))
    }

    /// The refusal the model gave this prompt recently, if any.
    pub(super) async fn remembered_refusal(&self, key: &CacheKey) -> Option<ChatError> {
        let refusal = self.refusals.as_ref()?.get(key)?;
        crate::chat::metrics::refusal_remembered();
        Some(ChatError::Provider(refusal))
    }
}

/// A complete answer as the cache keeps it.
fn to_cache(completion: &Completion, question: &str) -> CachedAnswer {
    CachedAnswer {
        digest: Default::default(),
        question: question.to_owned(),
        text: completion.text.clone(),
        model: completion.model.clone(),
        usage: completion.usage,
        ratings: completion.ratings.clone(),
        created_at_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}
