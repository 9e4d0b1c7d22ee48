//! Step 3 across servers: the cluster lease on a question, or another server's result.

use super::{ChatError, Inner};
use crate::cache::{CacheKey, Share};
use crate::coalesce::fanout::Fanout;
use crate::coalesce::{Lease, LeaseOutcome};
use crate::providers::Completion;
use gemini_wire::FinishReason;
use std::sync::Arc;
use tokio::time::Instant;
use tracing::Instrument;

/// What the cluster said about a question this server is about to ask the model.
pub(super) enum Cluster {
    /// Ask the model: holding the lease, or alone (no Redis, or Redis down).
    Ask(Option<Lease>),
    /// Another server settled the question.
    Settled(Result<Arc<Completion>, ChatError>),
}

impl Inner {
    /// Step 3 across servers: the lease on the question, or another server's result.
    pub(super) async fn cluster(
        &self,
        key: &CacheKey,
        deadline: Instant,
        fanout: Option<&Arc<Fanout>>,
    ) -> Cluster {
        let Some(cluster) = &self.deps.cluster else {
            return Cluster::Ask(None);
        };
        let span = crate::trace_span!("coalesce.cluster");
        match cluster
            .acquire_streamed(key, deadline, fanout)
            .instrument(span)
            .await
        {
            LeaseOutcome::Holder(lease) => Cluster::Ask(Some(lease)),
            LeaseOutcome::Unavailable => Cluster::Ask(None),
            // Another server asked the model; this one only serves the answer on.
            LeaseOutcome::Answered(answer) => {
                let completion = Completion {
                    text: answer.text.clone(),
                    finish_reason: FinishReason::Stop,
                    model: answer.model.clone(),
                    usage: answer.usage,
                    ratings: answer.ratings.clone(),
                };
                self.deps.cache.keep(*key, answer, Share::Already).await;
                Cluster::Settled(Ok(Arc::new(completion)))
            }
            // Another server asked and got no cacheable answer: the same answer for us,
            // without a call of our own.
            LeaseOutcome::Shared(outcome) => {
                crate::coalesce::metrics::shared_outcome(outcome.kind());
                let result = outcome.into_result();
                Cluster::Settled(result.map(Arc::new).map_err(ChatError::Provider))
            }
            LeaseOutcome::TimedOut => Cluster::Settled(Err(ChatError::Timeout)),
        }
    }
}
