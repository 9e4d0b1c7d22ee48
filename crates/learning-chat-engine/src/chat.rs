//! The chat flow: one question, one way through the engine, nothing HTTP.
//!
//! [`ChatService::ask`] takes one [`Ask`] and goes through the steps in order:
//!
//! 0. history: the conversation step places the message (a follow-up's turns, bounded);
//! 1. key: the question as the agent's primary model sees it;
//! 2. lookup: the cache (while the primary's circuit is open, its fallback's answer): a hit is
//!    the whole answer, [`Reply::Ready`];
//! 3. coalesce: the call in flight for the question on this server, or a new one, which takes
//!    the cluster lease (or serves another server's result);
//! 4. admission: a model slot for the caller's flow, a quota slot before each call;
//! 5. model: the agent's chain with retries, breakers and fallbacks
//!    ([`crate::providers::resilience`]);
//! 6. keep: a complete answer into both cache tiers, a refusal into the refusal memo, the
//!    outcome to the servers waiting on the lease; then the exchange into the conversation.
//!
//! A miss is [`Reply::Live`]: the answer's pieces as the model writes them, then the answer
//! or an error. A JSON caller only takes that last item ([`Reply::finish`]).

mod answer;
mod cached;
mod cluster;
mod deps;
mod error;
pub mod metrics;
mod model;
mod safeguard;
#[cfg(test)]
mod tests;

pub use answer::{Answer, AnswerText, Ask, Caller, Live, Piece, Reply, Thread};
pub use deps::{ChatDeps, Prices, UpstreamMonitor};
pub use error::ChatError;

use crate::admission::Flow;
use crate::agents::Agent;
use crate::cache::{normalise_message, CacheKey, CacheKeyParts};
use crate::coalesce::fanout::Fanout;
use crate::coalesce::local::LocalCoalescer;
use crate::coalesce::PieceSink;
use crate::config::CacheScope;
use crate::conversations::{Place, Said};
use crate::providers::{Completion, ModelRequest, ModelTurn, ProviderError, Route};
use cluster::Cluster;
use std::sync::Arc;
use tokio::time::Instant;

/// The chat service; cheap to clone.
#[derive(Clone)]
pub struct ChatService {
    inner: Arc<Inner>,
}

struct Inner {
    deps: ChatDeps,
    /// The calls in flight on this server, one per question.
    calls: LocalCoalescer<Arc<Completion>, ChatError>,
    /// Prompts the model refused recently: asking again would cost a call for the same refusal.
    refusals: Option<moka::sync::Cache<CacheKey, ProviderError>>,
    monitor: UpstreamMonitor,
}

impl ChatService {
    /// Answers one question: the answer when it is ready at once (a cache hit), else the live
    /// call, whose pieces and answer the caller reads.
    pub async fn ask(&self, ask: Ask) -> Result<Reply, ChatError> {
        let deps = &self.inner.deps;
        let Ask {
            agent,
            message,
            conversation,
            deadline,
            caller,
            wants_stream,
        } = ask;
        // Personal data goes before anything sees the message: model, cache key, store.
        let message = deps.redactor.redact(normalise_message(&message));
        // The id the client sent, for the flags of a question refused before it is recorded.
        let conversation_id = match &conversation {
            Thread::Id(id) => Some(id.clone()),
            Thread::New | Thread::Turns(_) => None,
        };
        // 0. history
        let place = deps
            .conversations
            .open(
                &agent,
                &message,
                conversation,
                caller.key_id.as_ref(),
                caller.learner.as_ref(),
                &deps.cache,
            )
            .await?;
        deps.check(&message)?;
        let history = place.history().clone();
        // 1. key, with the safety settings the question is asked with
        let profile = deps
            .safety
            .profile(agent.id(), caller.key_id.as_deref())
            .clone();
        let safety = profile.thresholds.fingerprint();
        let scope = self.inner.scope(caller.key_id.as_ref());
        let key = self
            .inner
            .key_for(&agent, &message, &history, scope.as_deref(), safety);
        // Boxed, and only when configured: the cheapest request's future stays small.
        let moderation = if deps.moderator.is_some() {
            Box::pin(self.moderate(&message, &profile)).await?
        } else {
            Vec::new()
        };
        let who = safeguard::Asked {
            caller,
            profile: profile.clone(),
            conversation: conversation_id,
            moderation,
        };
        // 2. lookup
        let found = self
            .lookup(&agent, &key, &message, &history, scope.as_deref(), safety)
            .await;
        if let Some((hit, found_under)) = found {
            let answer = Answer::cached(&hit, found_under);
            return Ok(Reply::Ready(
                self.record(place, &agent, &message, answer, &who).await?,
            ));
        }
        if let Some(refusal) = self.inner.remembered_refusal(&key).await {
            self.refused(&refusal, &agent, &who).await;
            return Err(refusal);
        }
        let caller = who.caller.clone();
        // 3. coalesce; steps 3 (across servers) to 6 run in the call, under its first deadline
        let (inner, called, asked) = (self.inner.clone(), agent.clone(), message.to_string());
        let waiting = self
            .inner
            .calls
            .subscribe(key, deadline, wants_stream, move |fanout| {
                // Built only by the asker that starts a call: the others join it.
                let mut request = model::request(&called, asked.clone(), history.clone());
                request.safety = profile.thresholds.clone();
                let (inner, agent, flow) = (inner.clone(), called.clone(), caller.flow.clone());
                let scope = scope.clone();
                async move {
                    let asker = Asker {
                        flow: &flow,
                        scope: scope.as_deref(),
                        deadline,
                    };
                    inner.call(key, &agent, &request, asker, fanout).await
                }
            });
        let rest = answer::Rest::new(self.clone(), key, place, agent, message.into_owned(), who);
        Ok(Reply::Live(Box::new(Live::new(waiting, rest))))
    }

    /// The last step: the exchange into the conversation, before the answer is returned; then
    /// its flags and crisis text.
    async fn record(
        &self,
        place: Place,
        agent: &Agent,
        message: &str,
        answer: Answer,
        asked: &safeguard::Asked,
    ) -> Result<Answer, ChatError> {
        let said = Said {
            text: &answer.text,
            cached: answer.cached,
            model: &answer.model,
            kept_under: answer.kept_under,
            digest: answer.digest,
        };
        let deps = &self.inner.deps;
        let recorded = deps
            .conversations
            .record(place, agent.id(), message, said, &deps.cache)
            .await?;
        Ok(self
            .safeguard(answer.recorded(recorded), agent, asked)
            .await)
    }
}

/// Who a call is for: whose fair share it spends, whose answers it may share, and until when.
#[derive(Clone, Copy)]
struct Asker<'a> {
    flow: &'a Flow,
    /// The cache scope (the key id with `cache.scope = "key"`).
    scope: Option<&'a str>,
    deadline: Instant,
}

impl Inner {
    /// The cache scope of a caller: its key id with `cache.scope = "key"`, else none (shared).
    fn scope(&self, key_id: Option<&Arc<str>>) -> Option<Arc<str>> {
        match self.deps.cache_scope {
            CacheScope::Shared => None,
            CacheScope::Key => key_id.cloned(),
        }
    }

    /// One call for the question `key`, as the coalescer runs it: the cluster lease (or another
    /// server's result), then admission and the model, then what is worth keeping.
    async fn call(
        &self,
        key: CacheKey,
        agent: &Agent,
        request: &ModelRequest,
        asker: Asker<'_>,
        fanout: Option<Arc<Fanout>>,
    ) -> Result<Arc<Completion>, ChatError> {
        let Asker {
            flow,
            scope,
            deadline,
        } = asker;
        let lease = match self.cluster(&key, deadline, fanout.as_ref()).await {
            Cluster::Ask(lease) => lease,
            Cluster::Settled(result) => return result,
        };
        let mut sink = fanout.as_deref().map(|f| PieceSink::new(f, lease.as_ref()));
        let mut push = sink.as_mut().map(|sink| move |text: &str| sink.push(text));
        let pieces = push
            .as_mut()
            .map(|push| push as &mut (dyn FnMut(&str) + Send));
        let answered = self.ask_model(agent, request, flow, deadline, pieces).await;
        self.keep(key, agent, request, scope, lease, answered).await
    }

    /// The key of the agent's primary model's answer, in the cache `scope`, under the
    /// `safety` settings' fingerprint.
    fn key_for(
        &self,
        agent: &Agent,
        message: &str,
        history: &[ModelTurn],
        scope: Option<&str>,
        safety: &str,
    ) -> CacheKey {
        match self.deps.router.chain(agent).first() {
            Some(primary) => route_key(agent, primary, message, history, scope, safety),
            None => CacheKey::new(CacheKeyParts {
                provider: self.deps.provider.identity(),
                agent_id: agent.id(),
                prompt_version: &agent.prompt_version,
                model: &agent.definition.model,
                message,
                history,
                scope,
                safety,
            }),
        }
    }
}

/// The cache key of an answer to `message` after `history` by `route`, in the cache `scope`,
/// under the `safety` settings' fingerprint.
fn route_key(
    agent: &Agent,
    route: &Route,
    message: &str,
    history: &[ModelTurn],
    scope: Option<&str>,
    safety: &str,
) -> CacheKey {
    CacheKey::new(CacheKeyParts {
        provider: route.identity(),
        agent_id: agent.id(),
        prompt_version: &agent.prompt_version,
        model: route.model(),
        message,
        history,
        scope,
        safety,
    })
}
