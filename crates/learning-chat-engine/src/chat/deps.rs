//! What the chat service is built from, and what it lends to the rest of the server (the
//! parts `/ready`, `/metrics` and the conversation endpoints read).

use super::{ChatError, ChatService, Inner};
use crate::admission::{Admission, ModelQuotas};
use crate::agents::{Agent, AgentRegistry};
use crate::cache::{normalise_message, CacheKey, ResponseCache};
use crate::coalesce::local::LocalCoalescer;
use crate::coalesce::ClusterCoalescer;
use crate::config::CacheScope;
use crate::conversations::{ConversationError, Conversations, Head};
use crate::policy::Tutoring;
use crate::providers::resilience::RetryPolicy;
use crate::providers::{ModelRouter, ModelTurn, Provider, ProviderError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Token prices for the estimated-cost metric.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prices {
    /// USD per 1M input tokens.
    pub input_per_million: f64,
    /// USD per 1M output tokens.
    pub output_per_million: f64,
}

/// Counts model calls per minute, for the once-a-minute log line and gauge.
#[derive(Debug, Default)]
pub struct UpstreamMonitor {
    this_minute: AtomicU64,
}

impl UpstreamMonitor {
    pub(super) fn record(&self) {
        let now = self.this_minute.fetch_add(1, Ordering::Relaxed) + 1;
        crate::chat::metrics::upstream_current_minute(now);
    }

    /// Returns the calls counted since the last call and starts a new minute.
    pub fn take_minute(&self) -> u64 {
        let count = self.this_minute.swap(0, Ordering::Relaxed);
        crate::chat::metrics::upstream_current_minute(0);
        count
    }
}

/// Everything the chat service needs, built once at start-up.
pub struct ChatDeps {
    /// The tutors.
    pub agents: AgentRegistry,
    /// The answer cache.
    pub cache: ResponseCache,
    /// The default provider (Gemini or the offline model), for /ready and logs.
    pub provider: Provider,
    /// Each agent's chain of models (fallbacks, breakers, keys, providers).
    pub router: ModelRouter,
    /// Concurrency and queue bounds.
    pub admission: Admission,
    /// Each model's requests/tokens per minute and requests per day.
    pub quotas: ModelQuotas,
    /// Cross-server coalescing, when Redis is configured.
    pub cluster: Option<ClusterCoalescer>,
    /// Multi-turn conversations: the first and last step of every question.
    pub conversations: Conversations,
    /// Retries of failed model calls.
    pub retry: RetryPolicy,
    /// Longest accepted message, in characters.
    pub max_message_chars: usize,
    /// For the cost metric.
    pub prices: Prices,
    /// How long a refused prompt is answered with its refusal without asking again (0 = never).
    pub refusal_ttl: Duration,
    /// Most bytes the remembered refusals take.
    pub refusal_max_bytes: u64,
    /// How long a lease holder's failure is shown to the servers waiting on the same question.
    pub failure_share: Duration,
    /// Who shares cached answers (and calls in flight): everyone, or each key its own.
    pub cache_scope: CacheScope,
    /// Safety settings, flags and crisis answers.
    pub safety: crate::safety::Safety,
    /// Personal data replaced in learner messages before anything else sees them.
    pub redactor: crate::safety::redact::Redactor,
    /// The moderation second opinion on learner messages (`safety.moderation`).
    pub moderator: Option<crate::safety::moderation::Moderator>,
    /// A/B tests of answer policies (`[[experiments]]`).
    pub experiments: crate::experiments::Experiments,
}

impl ChatDeps {
    /// A message (already normalised) the model may be asked.
    pub(super) fn check(&self, message: &str) -> Result<(), ChatError> {
        if message.is_empty() {
            return Err(ChatError::EmptyMessage);
        }
        let chars = message.chars().count();
        if chars > self.max_message_chars {
            return Err(ChatError::MessageTooLong {
                chars,
                limit: self.max_message_chars,
            });
        }
        Ok(())
    }
}

/// The bytes a remembered refusal takes: the error, its text, the key and moka's bookkeeping.
fn refusal_bytes(refusal: &ProviderError) -> u32 {
    let text = refusal.to_string().len();
    u32::try_from(std::mem::size_of::<ProviderError>() + text + 256).unwrap_or(u32::MAX)
}

/// The memo of refused prompts: each kept `ttl`, all of them within `max_bytes`.
fn refusal_memo(ttl: Duration, max_bytes: u64) -> moka::sync::Cache<CacheKey, ProviderError> {
    moka::sync::Cache::builder()
        .max_capacity(max_bytes)
        .weigher(|_, refusal: &ProviderError| refusal_bytes(refusal))
        .time_to_live(ttl)
        .build()
}

impl ChatService {
    /// A service over these parts.
    pub fn new(deps: ChatDeps) -> ChatService {
        let refusals = (!deps.refusal_ttl.is_zero())
            .then(|| refusal_memo(deps.refusal_ttl, deps.refusal_max_bytes));
        ChatService {
            inner: Arc::new(Inner {
                deps,
                calls: LocalCoalescer::new(),
                refusals,
                monitor: UpstreamMonitor::default(),
            }),
        }
    }

    /// The agent `agent_id`, or [`ChatError::UnknownAgent`]: the one place an agent id is
    /// checked; callers resolve it once and pass the agent on.
    pub fn agent(&self, agent_id: &str) -> Result<Arc<Agent>, ChatError> {
        let agents = &self.inner.deps.agents;
        agents.get(agent_id).ok_or_else(|| ChatError::UnknownAgent {
            agent_id: agent_id.to_owned(),
            known: agents.ids(),
        })
    }

    /// A conversation as stored (or, for a token never continued, its first exchange).
    pub async fn conversation(
        &self,
        id: &str,
        owner: Option<&str>,
    ) -> Result<crate::conversations::Conversation, ConversationError> {
        let deps = &self.inner.deps;
        deps.conversations.get(id, owner, &deps.cache).await
    }

    /// Erases a conversation from its store and the answers it caused from the cache.
    pub async fn erase_conversation(
        &self,
        id: &str,
        owner: Option<&str>,
    ) -> Result<(), ConversationError> {
        let deps = &self.inner.deps;
        let owner_id = owner.map(Arc::<str>::from);
        let scope = self.inner.scope(owner_id.as_ref());
        let key_of = self.answer_key_of(scope.as_deref(), owner);
        deps.conversations
            .erase(id, owner, &deps.agents, &deps.cache, key_of)
            .await
    }

    /// Erases a conversation by the id it is stored under (a learner's erasure through the
    /// console), with the answers the model made for it; false when there was none.
    pub async fn erase_stored_conversation(&self, stored: &str) -> Result<bool, ConversationError> {
        let deps = &self.inner.deps;
        let owner = crate::conversations::owner_of(stored);
        let owner_id = owner.map(Arc::<str>::from);
        let scope = self.inner.scope(owner_id.as_ref());
        let key_of = self.answer_key_of(scope.as_deref(), owner);
        deps.conversations
            .erase_stored(stored, &deps.agents, &deps.cache, key_of)
            .await
    }

    /// The cache key an answer of a stored conversation (of `owner`, cached in `scope`) was
    /// made under: its agent, policy and variant as the conversation recorded them, its
    /// message and the history sent with it. An erasure evicts the answers by these keys.
    fn answer_key_of<'a>(
        &'a self,
        scope: Option<&'a str>,
        owner: Option<&'a str>,
    ) -> impl Fn(&Agent, Head<'_>, &str, &[ModelTurn]) -> CacheKey + 'a {
        let (inner, safety) = (&self.inner, &self.inner.deps.safety);
        move |agent: &Agent, head: Head<'_>, message: &str, history: &[ModelTurn]| {
            let shape = super::Shape {
                scope,
                safety: safety.profile(agent.id(), owner).thresholds.fingerprint(),
                tutoring: Tutoring::parse(head.policy)
                    .unwrap_or(agent.tutoring)
                    .name(),
                variant: head.variant,
            };
            inner.key_for(agent, &normalise_message(message), history, shape)
        }
    }

    /// The cache key the service uses for `message` to `agent_id` in the shared cache (for
    /// tests and tools that inspect the shared state); `None` for an unknown agent.
    pub fn cache_key(&self, agent_id: &str, message: &str) -> Option<CacheKey> {
        self.cache_key_with_history(agent_id, message, &[])
    }

    /// The cache key of `message` after `history` to `agent_id`; `None` for an unknown agent.
    pub fn cache_key_with_history(
        &self,
        agent_id: &str,
        message: &str,
        history: &[ModelTurn],
    ) -> Option<CacheKey> {
        let agent = self.inner.deps.agents.get(agent_id)?;
        let safety = self.inner.deps.safety.profile(agent_id, None);
        let shape = super::Shape {
            scope: None,
            safety: safety.thresholds.fingerprint(),
            tutoring: agent.tutoring.name(),
            variant: "",
        };
        Some(
            self.inner
                .key_for(&agent, &normalise_message(message), history, shape),
        )
    }

    /// The experiments.
    pub fn experiments(&self) -> &crate::experiments::Experiments {
        &self.inner.deps.experiments
    }

    /// The safety flags of a conversation (as `get_conversation` names it).
    pub async fn conversation_flags(
        &self,
        id: &str,
        owner: Option<&str>,
    ) -> Result<Vec<learning_chat_records::flags::Flag>, ConversationError> {
        let deps = &self.inner.deps;
        let Some(stored) = deps.conversations.stored_id_for(id, owner) else {
            return Err(ConversationError::NotFound);
        };
        deps.safety
            .conversation_flags(&stored)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "cannot read safety flags");
                ConversationError::StoreUnavailable {
                    retry_after: Duration::from_secs(1),
                }
            })
    }

    /// Safety settings, flags and crisis answers.
    pub fn safety(&self) -> &crate::safety::Safety {
        &self.inner.deps.safety
    }

    /// The agent registry.
    pub fn agents(&self) -> &AgentRegistry {
        &self.inner.deps.agents
    }

    /// Multi-turn conversations.
    pub fn conversations(&self) -> &Conversations {
        &self.inner.deps.conversations
    }

    /// The default provider.
    pub fn provider(&self) -> &Provider {
        &self.inner.deps.provider
    }

    /// The model router.
    pub fn router(&self) -> &ModelRouter {
        &self.inner.deps.router
    }

    /// The per-minute model-call counter.
    pub fn monitor(&self) -> &UpstreamMonitor {
        &self.inner.monitor
    }

    /// Each model's quota.
    pub fn quotas(&self) -> &ModelQuotas {
        &self.inner.deps.quotas
    }

    /// The admission bounds.
    pub fn admission(&self) -> &Admission {
        &self.inner.deps.admission
    }

    /// The response cache.
    pub fn cache(&self) -> &ResponseCache {
        &self.inner.deps.cache
    }

    /// Sets the gauges of the bytes the service's in-process stores hold (called before a
    /// metrics scrape): answers, remembered refusals, calls in flight, conversations.
    pub async fn refresh_memory_gauges(&self) {
        let inner = &self.inner;
        inner.deps.cache.run_pending_tasks().await;
        if let Some(refusals) = &inner.refusals {
            refusals.run_pending_tasks();
            crate::chat::metrics::refusals_bytes(refusals.weighted_size());
        }
        crate::coalesce::metrics::coalesce_bytes(inner.calls.held().1);
        // Zero when conversations live elsewhere (records database, Redis).
        let conversations = match inner.deps.conversations.store() {
            crate::conversations::ConversationStore::Memory(store) => store.bytes(),
            _ => 0,
        };
        crate::conversations::metrics::conversations_memory_bytes(conversations);
    }

    /// Calls in flight on this server and the bytes they hold.
    pub fn calls_held(&self) -> (usize, usize) {
        self.inner.calls.held()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheKeyParts;

    #[tokio::test]
    async fn remembered_refusals_stay_within_their_byte_budget() {
        const BUDGET: u64 = 256 * 1024;
        let memo = refusal_memo(Duration::from_secs(60), BUDGET);
        for i in 0..5_000 {
            let message = format!("prompt {i}");
            let key = CacheKey::new(CacheKeyParts {
                provider: "p",
                agent_id: "math",
                prompt_version: "v",
                model: "m",
                message: &message,
                history: &[],
                scope: None,
                safety: "",
                tutoring: "",
                variant: "",
            });
            let refusal = ProviderError::Blocked {
                reason: "PROHIBITED_CONTENT ".repeat(20),
            };
            memo.insert(key, refusal);
        }
        memo.run_pending_tasks();
        assert!(memo.weighted_size() <= BUDGET, "{}", memo.weighted_size());
        assert!(
            memo.weighted_size() > BUDGET / 2,
            "{}",
            memo.weighted_size()
        );
        assert!(memo.entry_count() < 5_000);
    }
}
