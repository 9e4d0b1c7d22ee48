//! The chat service: the request path from a validated question to an answer, nothing HTTP.
//!
//! key -> cache -> coalesce -> admit -> quota -> model (with retries) -> store.
//! One call per question, on this server and across servers, is [`crate::coalesce`]'s job: this
//! module hands it the call to start (`Inner::fetch`: the cluster lease, the model, the store)
//! and reads its result. A streaming request passes a [`StreamTap`] and is handed the pieces of
//! the call it waits on; a call it starts streams from the model, retrying and falling back only
//! before its first piece.

use crate::admission::{Admission, Flow, QuotaLimiter, Shed, ShedReason, FLOW};
use crate::agents::{Agent, AgentRegistry};
use crate::cache::{normalise_message, CacheKey, CacheKeyParts, CachedAnswer, ResponseCache};
use crate::coalesce::fanout::Fanout;
use crate::coalesce::local::{CallError, LocalCoalescer};
pub use crate::coalesce::local::{StreamTap, Tapped};
use crate::coalesce::{ClusterCoalescer, LeaseOutcome, PieceSink, Publish, SharedOutcome};
pub use crate::providers::input_token_estimate;
use crate::providers::{
    Completion, ModelRequest, ModelRouter, ModelTurn, Provider, ProviderError, Route, StreamPiece,
    Usage,
};
use futures::StreamExt;
use gemini_wire::{FinishReason, GenerationConfig, ThinkingConfig};
use rand::RngExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;
use tracing::Instrument;

/// An answer as the API returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatAnswer {
    /// The answer text.
    pub text: String,
    /// True when served from the cache without asking the model.
    pub cached: bool,
    /// The model that produced it.
    pub model: String,
    /// Tokens it cost when produced.
    pub usage: Usage,
    /// `STOP` for complete answers, `MAX_TOKENS` for truncated ones (never cached).
    pub finish_reason: &'static str,
}

/// Why a question got no answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChatError {
    /// No agent with that id.
    #[error("unknown agent {agent_id:?}")]
    UnknownAgent {
        /// The id asked for.
        agent_id: String,
        /// Every valid id.
        known: Vec<String>,
    },
    /// The message is empty or only whitespace.
    #[error("message is empty")]
    EmptyMessage,
    /// The message is longer than allowed.
    #[error("message has {chars} characters; the limit is {limit}")]
    MessageTooLong {
        /// Its length in characters.
        chars: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Refused before reaching the model (overload or quota).
    #[error("service is at capacity ({})", .0.reason.as_str())]
    Shed(Shed),
    /// The request's deadline passed.
    #[error("request deadline exceeded")]
    Timeout,
    /// The model gave no usable answer.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// A bug: a task failed unexpectedly.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CallError for ChatError {
    fn timed_out() -> Self {
        ChatError::Timeout
    }

    fn task_failed(error: tokio::task::JoinError) -> Self {
        ChatError::Internal(format!("model call task failed: {error}"))
    }

    /// The deadline, or a quota slot beyond it.
    fn bound_by_deadline(&self) -> bool {
        matches!(
            self,
            ChatError::Timeout
                | ChatError::Provider(ProviderError::Timeout)
                | ChatError::Shed(Shed {
                    reason: ShedReason::Quota,
                    ..
                })
        )
    }
}

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

/// Token prices for the estimated-cost metric.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prices {
    /// USD per 1M input tokens.
    pub input_per_million: f64,
    /// USD per 1M output tokens.
    pub output_per_million: f64,
}

/// Counts model calls per minute (the seed's quota monitor).
#[derive(Debug, Default)]
pub struct UpstreamMonitor {
    this_minute: AtomicU64,
}

impl UpstreamMonitor {
    fn record(&self) {
        let now = self.this_minute.fetch_add(1, Ordering::Relaxed) + 1;
        crate::metrics::upstream_current_minute(now);
    }

    /// Returns the calls counted since the last call and starts a new minute.
    pub fn take_minute(&self) -> u64 {
        let count = self.this_minute.swap(0, Ordering::Relaxed);
        crate::metrics::upstream_current_minute(0);
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
    /// Requests/tokens per minute.
    pub quota: QuotaLimiter,
    /// Cross-server coalescing, when Redis is configured.
    pub cluster: Option<ClusterCoalescer>,
    /// Retries of failed model calls.
    pub retry: RetryPolicy,
    /// Longest accepted message, in characters.
    pub max_message_chars: usize,
    /// For the cost metric.
    pub prices: Prices,
    /// How long a refused prompt is answered with its refusal without asking again (0 = never).
    pub refusal_ttl: Duration,
    /// How long a lease holder's failure is shown to the servers waiting on the same question.
    pub failure_share: Duration,
}

struct Inner {
    deps: ChatDeps,
    /// The calls in flight on this server, one per question.
    calls: LocalCoalescer<Arc<Completion>, ChatError>,
    /// Prompts the model refused recently: asking again would cost a call for the same refusal.
    refusals: Option<moka::future::Cache<CacheKey, ProviderError>>,
    monitor: UpstreamMonitor,
}

/// The chat service; cheap to clone.
#[derive(Clone)]
pub struct ChatService {
    inner: Arc<Inner>,
}

impl ChatService {
    /// A service over these parts.
    pub fn new(deps: ChatDeps) -> ChatService {
        let refusals = (!deps.refusal_ttl.is_zero()).then(|| {
            moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(deps.refusal_ttl)
                .build()
        });
        ChatService {
            inner: Arc::new(Inner {
                deps,
                calls: LocalCoalescer::new(),
                refusals,
                monitor: UpstreamMonitor::default(),
            }),
        }
    }

    /// The agent registry.
    pub fn agents(&self) -> &AgentRegistry {
        &self.inner.deps.agents
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

    /// The quota limiter.
    pub fn quota(&self) -> &QuotaLimiter {
        &self.inner.deps.quota
    }

    /// The admission bounds.
    pub fn admission(&self) -> &Admission {
        &self.inner.deps.admission
    }

    /// The response cache.
    pub fn cache(&self) -> &ResponseCache {
        &self.inner.deps.cache
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

    /// Answers `message` for `agent` by `deadline`.
    pub async fn ask(
        &self,
        agent: &Arc<Agent>,
        message: &str,
        deadline: Instant,
    ) -> Result<ChatAnswer, ChatError> {
        self.ask_with_history(agent, message, Arc::from([]), deadline)
            .await
    }

    /// Answers `message` for `agent` by `deadline`, with the earlier turns of its
    /// conversation (already bounded) sent along. The history is part of the cache key, so
    /// identical follow-ups after identical histories share one answer and one model call.
    pub async fn ask_with_history(
        &self,
        agent: &Arc<Agent>,
        message: &str,
        history: Arc<[ModelTurn]>,
        deadline: Instant,
    ) -> Result<ChatAnswer, ChatError> {
        self.ask_streamed(agent, message, history, deadline, None)
            .await
    }

    /// As [`ChatService::ask_with_history`]; with `tap`, the request is handed the pieces of
    /// the call it waits on as they arrive, and a call it starts streams from the model.
    pub async fn ask_streamed(
        &self,
        agent: &Arc<Agent>,
        message: &str,
        history: Arc<[ModelTurn]>,
        deadline: Instant,
        tap: Option<&StreamTap>,
    ) -> Result<ChatAnswer, ChatError> {
        let deps = &self.inner.deps;
        let message = normalise_message(message);
        if message.is_empty() {
            return Err(ChatError::EmptyMessage);
        }
        let chars = message.chars().count();
        if chars > deps.max_message_chars {
            return Err(ChatError::MessageTooLong {
                chars,
                limit: deps.max_message_chars,
            });
        }
        let key = self.key_for(agent, &message, &history);
        let lookup = crate::trace_span!(
            "cache.lookup",
            cache.hit = tracing::field::Empty,
            cache.tier = tracing::field::Empty,
            cache.key = tracing::field::Empty,
            chat.message = tracing::field::Empty,
        );
        if crate::trace::trace_content() {
            lookup.record("cache.key", tracing::field::display(&key));
            lookup.record("chat.message", &*message);
        }
        let mut found = deps.cache.get(&key).instrument(lookup.clone()).await;
        if found.is_none() {
            // While the primary is skipped, the model that would answer is the first fallback
            // with a closed circuit: its cached answer is the one to serve.
            let chain = deps.router.chain(agent);
            if chain.first().is_some_and(|primary| primary.is_open()) {
                if let Some(route) = chain.iter().skip(1).find(|r| !r.is_open()) {
                    let fallback_key = self.key_for_route(agent, route, &message, &history);
                    found = deps
                        .cache
                        .get(&fallback_key)
                        .instrument(lookup.clone())
                        .await;
                }
            }
        }
        lookup.record("cache.hit", found.is_some());
        if let Some((_, tier)) = &found {
            lookup.record("cache.tier", tier.as_str());
        }
        drop(lookup);
        if let Some((hit, _tier)) = found {
            return Ok(ChatAnswer {
                text: hit.text.clone(),
                cached: true,
                model: hit.model.clone(),
                usage: hit.usage,
                finish_reason: FinishReason::Stop.as_str(),
            });
        }
        if let Some(refusals) = &self.inner.refusals {
            if let Some(refusal) = refusals.get(&key).await {
                crate::metrics::refusal_remembered();
                return Err(ChatError::Provider(refusal));
            }
        }
        let inner = &self.inner;
        let completion = inner
            .calls
            .ask(key, deadline, tap, |stream| {
                let (inner, agent) = (inner.clone(), agent.clone());
                let (message, history) = (message.to_string(), history.clone());
                // The call queues for its model slot as the key that started it.
                FLOW.scope(Flow::current(), async move {
                    let stream = stream.as_ref();
                    inner
                        .fetch(&key, &agent, message, history, deadline, stream)
                        .await
                })
            })
            .await?;
        Ok(ChatAnswer {
            text: completion.text.clone(),
            cached: false,
            model: completion.model.clone(),
            usage: completion.usage,
            finish_reason: completion.finish_reason.as_str(),
        })
    }

    /// The cache key of `message` (already normalised) after `history` to `agent`: the key
    /// of its primary model's answer.
    fn key_for(&self, agent: &Agent, message: &str, history: &[ModelTurn]) -> CacheKey {
        self.inner.key_for(agent, message, history)
    }

    /// The cache key of an answer by `route` (a model of the agent's chain).
    fn key_for_route(
        &self,
        agent: &Agent,
        route: &Route,
        message: &str,
        history: &[ModelTurn],
    ) -> CacheKey {
        route_key(agent, route.identity(), route.model(), message, history)
    }

    /// The cache key the service uses for `message` to `agent_id` (for tests and tools that
    /// inspect the shared state); `None` for an unknown agent.
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
        Some(self.key_for(&agent, &normalise_message(message), history))
    }
}

/// Keeps the in-flight gauge right however a model call ends.
struct InFlightGauge<'a>(&'a Admission);

impl Drop for InFlightGauge<'_> {
    fn drop(&mut self) {
        // The permit is released after this guard, so one is still counted; subtract it.
        crate::metrics::upstream_in_flight(self.0.in_flight().saturating_sub(1));
    }
}

/// The cache key of an answer to `message` after `history` by `model` served by `identity`.
fn route_key(
    agent: &Agent,
    identity: &str,
    model: &str,
    message: &str,
    history: &[ModelTurn],
) -> CacheKey {
    CacheKey::new(CacheKeyParts {
        provider: identity,
        agent_id: agent.id(),
        prompt_version: &agent.prompt_version,
        model,
        message,
        history,
    })
}

impl Inner {
    /// The key of the agent's primary model's answer.
    fn key_for(&self, agent: &Agent, message: &str, history: &[ModelTurn]) -> CacheKey {
        match self.deps.router.chain(agent).first() {
            Some(primary) => {
                route_key(agent, primary.identity(), primary.model(), message, history)
            }
            None => route_key(
                agent,
                self.deps.provider.identity(),
                &agent.definition.model,
                message,
                history,
            ),
        }
    }

    /// One call for the question `key`, as the coalescer runs it: the cluster lease (or another
    /// server's result), then the model, then what is worth keeping of its result.
    async fn fetch(
        &self,
        key: &CacheKey,
        agent: &Agent,
        message: String,
        history: Arc<[ModelTurn]>,
        deadline: Instant,
        stream: Option<&Arc<Fanout>>,
    ) -> Result<Arc<Completion>, ChatError> {
        let deps = &self.deps;
        let lease = match &deps.cluster {
            None => None,
            Some(cluster) => match cluster
                .acquire_streamed(key, deadline, stream)
                .instrument(crate::trace_span!("coalesce.cluster"))
                .await
            {
                LeaseOutcome::Holder(lease) => Some(lease),
                LeaseOutcome::Answered(answer) => {
                    // Another server asked the model; this one only serves the answer on.
                    deps.cache
                        .insert_local(*key, Arc::new(answer.clone()))
                        .await;
                    return Ok(Arc::new(Completion {
                        text: answer.text,
                        finish_reason: FinishReason::Stop,
                        model: answer.model,
                        usage: answer.usage,
                    }));
                }
                LeaseOutcome::Shared(outcome) => {
                    // Another server asked and got no cacheable answer: the same answer for us,
                    // without a call of our own.
                    crate::metrics::shared_outcome(outcome.kind());
                    return outcome
                        .into_result()
                        .map(Arc::new)
                        .map_err(ChatError::Provider);
                }
                LeaseOutcome::Unavailable => None,
                LeaseOutcome::TimedOut => return Err(ChatError::Timeout),
            },
        };
        let sink = stream.map(|fanout| PieceSink::new(fanout, lease.as_ref()));
        let result = self
            .call_model(agent, message.clone(), history.clone(), deadline, sink)
            .await;
        let (result, publish) = match result {
            // A fallback's answer is kept under the fallback's own key, never the primary's:
            // waiters on this question get it, later askers ask the primary again.
            Ok((completion, Some(route))) => {
                let fallback_key =
                    route_key(agent, route.identity(), route.model(), &message, &history);
                let result = Ok(completion);
                if let Publish::Answer(cached) = self.remember(&fallback_key, &result).await {
                    if let Some(redis) = deps.cache.redis() {
                        let redis = redis.clone();
                        tokio::spawn(crate::trace::in_current_context(async move {
                            let _ = redis.set(&fallback_key, &cached).await;
                        }));
                    }
                }
                let publish = match &result {
                    Ok(c) => Publish::Outcome(SharedOutcome::uncached(c), deps.failure_share),
                    Err(_) => Publish::Nothing,
                };
                (result, publish)
            }
            Ok((completion, None)) => {
                let result = Ok(completion);
                let publish = self.remember(key, &result).await;
                (result, publish)
            }
            Err(error) => {
                let result = Err(error);
                let publish = self.remember(key, &result).await;
                (result, publish)
            }
        };
        match lease {
            Some(lease) => lease.finish(*key, publish),
            None => {
                if let (Some(redis), Publish::Answer(cached)) = (deps.cache.redis(), publish) {
                    // Redis was down when we started; store anyway in case it is back.
                    let (redis, key) = (redis.clone(), *key);
                    tokio::spawn(crate::trace::in_current_context(async move {
                        let _ = redis.set(&key, &cached).await;
                    }));
                }
            }
        }
        result.map(Arc::new)
    }

    /// Keeps what is worth keeping of a call's result on this server (a complete answer in the
    /// cache, a refusal in the refusal memo) and says what to share with the cluster.
    async fn remember(&self, key: &CacheKey, result: &Result<Completion, ChatError>) -> Publish {
        let deps = &self.deps;
        match result {
            // Only complete answers are worth serving again; a truncated one is returned, and
            // shown to the servers waiting on it, but not kept.
            Ok(completion) if completion.finish_reason == FinishReason::Stop => {
                let cached = CachedAnswer {
                    text: completion.text.clone(),
                    model: completion.model.clone(),
                    usage: completion.usage,
                    created_at_unix: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                };
                deps.cache
                    .insert_local(*key, Arc::new(cached.clone()))
                    .await;
                crate::metrics::cache_entries(deps.cache.memory_entries());
                Publish::Answer(cached)
            }
            Ok(completion) => {
                Publish::Outcome(SharedOutcome::uncached(completion), deps.failure_share)
            }
            Err(ChatError::Provider(error)) if error.is_refusal() => {
                if let Some(refusals) = &self.refusals {
                    refusals.insert(*key, error.clone()).await;
                }
                Publish::Outcome(
                    SharedOutcome::Failed(error.clone()),
                    deps.refusal_ttl.max(deps.failure_share),
                )
            }
            // Ran out of the first asker's time: waiters with more time ask themselves.
            Err(ChatError::Provider(ProviderError::Timeout)) => Publish::Nothing,
            Err(ChatError::Provider(error)) => {
                Publish::Outcome(SharedOutcome::Failed(error.clone()), deps.failure_share)
            }
            // Refusals by this server's own admission or quota, timeouts, bugs: nothing the
            // other servers would get too.
            Err(_) => Publish::Nothing,
        }
    }

    /// Admission, then the agent's chain of models in order, each with the quota gate and its
    /// retries: one question's trip to the model. Returns the answer and, when a fallback gave it,
    /// that fallback's route.
    async fn call_model(
        &self,
        agent: &Agent,
        message: String,
        history: Arc<[ModelTurn]>,
        deadline: Instant,
        mut sink: Option<PieceSink<'_>>,
    ) -> Result<(Completion, Option<Arc<Route>>), ChatError> {
        let deps = &self.deps;
        let mut permit = deps
            .admission
            .admit_as(&Flow::current(), deadline)
            .instrument(crate::trace_span!("admission.wait"))
            .await
            .map_err(|shed| {
                crate::metrics::shed(shed.reason.as_str());
                ChatError::Shed(shed)
            })?;
        crate::metrics::upstream_in_flight(deps.admission.in_flight());
        let _gauge = InFlightGauge(&deps.admission);
        let chain = deps.router.chain(agent);
        let mut last: Option<ProviderError> = None;
        for (index, route) in chain.iter().enumerate() {
            let has_next = index + 1 < chain.len();
            // The last model is always tried: skipping it would fail the request outright, so
            // a single-model agent behaves as without a breaker (its circuit only reported).
            if has_next && !route.admit() {
                crate::metrics::model_fallback(route.model());
                continue;
            }
            let request = model_request(agent, route.model(), message.clone(), history.clone());
            match self
                .call_route(route, &request, &mut permit, deadline, sink.as_mut())
                .await
            {
                Ok(completion) => {
                    crate::metrics::model_answer(route.model(), index > 0);
                    return Ok((completion, (index > 0).then(|| route.clone())));
                }
                // Once a piece is out, another model would send the learner a second beginning.
                Err(ChatError::Provider(error))
                    if has_next
                        && falls_back(&error)
                        && !sink.as_ref().is_some_and(|sink| sink.started()) =>
                {
                    tracing::warn!(
                        model = route.model(),
                        kind = error.kind(),
                        "model gave up; asking the next model of the chain: {error}"
                    );
                    crate::metrics::model_fallback(route.model());
                    last = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(ChatError::Provider(last.unwrap_or_else(|| {
            ProviderError::Unavailable {
                status: None,
                message: "the agent has no model to ask".to_owned(),
            }
        })))
    }

    /// One model of the chain: the quota gate and the call, with retries.
    async fn call_route(
        &self,
        route: &Route,
        request: &ModelRequest,
        permit: &mut crate::admission::AdmissionPermit,
        deadline: Instant,
        mut sink: Option<&mut PieceSink<'_>>,
    ) -> Result<Completion, ChatError> {
        let deps = &self.deps;
        let input_tokens =
            input_token_estimate(&request.system_prompt, &request.history, &request.message);
        let mut attempt = 0;
        let completion = loop {
            // A future slot so late that the call cannot finish in time would spend quota on a
            // 504; refuse it now (503 + Retry-After) instead. Twice the typical call leaves room
            // for a slower answer; the cap keeps a slow spell from refusing every future slot.
            // Until calls are seen they are assumed fast (prior 0): a slot free now is granted
            // by the limiter whatever this margin is.
            let latency = deps.admission.latency();
            let margin = (latency.estimate(Duration::ZERO) * 2).min(latency.cap());
            let quota_deadline = deadline.checked_sub(margin).unwrap_or(deadline);
            deps.quota
                .acquire(input_tokens, quota_deadline)
                .instrument(crate::trace_span!(
                    "quota.wait",
                    model.attempt = i64::from(attempt)
                ))
                .await
                .map_err(|rejected| {
                    crate::metrics::shed(ShedReason::Quota.as_str());
                    ChatError::Shed(Shed {
                        reason: ShedReason::Quota,
                        retry_after: rejected.retry_after,
                    })
                })?;
            // The quota slot is ours: the next key in fair order may queue for its own.
            permit.end_turn();
            self.monitor.record();
            let started = Instant::now();
            let call = crate::trace_span!(
                "model.call",
                otel.kind = "client",
                gen_ai.request.model = %request.model,
                // Signed: the OpenTelemetry layer records unsigned integers as text.
                model.attempt = i64::from(attempt),
                model.status = tracing::field::Empty,
                gen_ai.usage.input_tokens = tracing::field::Empty,
                gen_ai.usage.output_tokens = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            let result = match sink.as_mut() {
                None => {
                    route
                        .generate(request, deadline)
                        .instrument(call.clone())
                        .await
                }
                Some(sink) => {
                    stream_attempt(route, request, deadline, sink)
                        .instrument(call.clone())
                        .await
                }
            }
            .map_err(|error| error.with_retry_after_at_most(deps.retry.max_retry_after));
            let outcome = result.as_ref().map_or_else(ProviderError::kind, |_| "ok");
            call.record("model.status", outcome);
            match &result {
                Ok(completion) => {
                    call.record(
                        "gen_ai.usage.input_tokens",
                        i64::from(completion.usage.prompt_tokens),
                    );
                    call.record(
                        "gen_ai.usage.output_tokens",
                        i64::from(completion.usage.output_tokens),
                    );
                }
                Err(_) => {
                    call.record("otel.status_code", "ERROR");
                }
            }
            drop(call);
            crate::metrics::upstream_request(outcome, started.elapsed());
            match &result {
                Ok(_) => deps.admission.record_success(started.elapsed()),
                Err(_) => deps.admission.record_failure(started.elapsed()),
            }
            match result {
                Ok(completion) => break completion,
                // Once a piece is out, a retry would send the learner a second beginning.
                Err(error)
                    if error.is_retryable()
                        && attempt < deps.retry.max_retries
                        && !sink.as_ref().is_some_and(|sink| sink.started()) =>
                {
                    let delay = deps.retry.delay(attempt, &error);
                    if Instant::now() + delay >= deadline {
                        return Err(error.into());
                    }
                    tracing::warn!(
                        kind = error.kind(),
                        attempt = attempt + 1,
                        delay_ms = delay.as_millis() as u64,
                        "model call failed; retrying: {error}"
                    );
                    crate::metrics::upstream_retry(error.kind());
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(error) => return Err(error.into()),
            }
        };
        crate::metrics::upstream_tokens(
            completion.usage.prompt_tokens,
            completion.usage.output_tokens,
            deps.prices.input_per_million,
            deps.prices.output_per_million,
        );
        Ok(completion)
    }
}

/// One streamed model attempt: its pieces into `sink`, the whole answer at the end.
async fn stream_attempt(
    route: &Route,
    request: &ModelRequest,
    deadline: Instant,
    sink: &mut PieceSink<'_>,
) -> Result<Completion, ProviderError> {
    let mut stream = route.generate_stream(request, deadline).await?;
    let drained = tokio::time::timeout_at(deadline, async {
        while let Some(item) = stream.next().await {
            match item? {
                StreamPiece::Text(text) => sink.push(&text),
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

/// True for the failures after which the next model of a chain should answer: the model is
/// down or overloaded (after its retries), or out of quota (a per-day 429 at once).
fn falls_back(error: &ProviderError) -> bool {
    matches!(
        error,
        ProviderError::Unavailable { .. } | ProviderError::RateLimited { .. }
    )
}

fn model_request(
    agent: &Agent,
    model: &str,
    message: String,
    history: Arc<[ModelTurn]>,
) -> ModelRequest {
    let d = &agent.definition;
    ModelRequest {
        model: model.to_owned(),
        system_prompt: d.system_prompt.clone(),
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
    }
}
