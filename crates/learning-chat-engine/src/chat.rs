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
use crate::conversations::{Place, Said, Started};
use crate::experiments::{Counted, Variant};
use crate::policy::Tutoring;
use crate::providers::{Completion, ModelRequest, ModelTurn, ProviderError, Route};
use cluster::Cluster;
use rand::Rng;
use std::borrow::Cow;
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
            attempt,
            conversation,
            deadline,
            caller,
            wants_stream,
        } = ask;
        let message = with_attempt(message, attempt.as_deref());
        // Personal data goes before anything sees the message: model, cache key, store.
        let message = deps.redactor.redact(normalise_message(&message));
        // The id the client sent, for the flags of a question refused before it is recorded.
        let conversation_id = match &conversation {
            Thread::Id(id) => Some(id.clone()),
            Thread::New | Thread::Turns(_) => None,
        };
        // Nothing to do unless the agent is in a running experiment.
        let assigned = self.inner.assign(&agent, &conversation, &message, &caller);
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
        let setup = self.inner.setup(&agent, &place, assigned, &caller);
        // 1. key, with the safety settings the question is asked with
        let profile = deps
            .safety
            .profile(agent.id(), caller.key_id.as_deref())
            .clone();
        let scope = self.inner.scope(caller.key_id.as_ref());
        let shape = Shape {
            scope: scope.as_deref(),
            safety: profile.thresholds.fingerprint(),
            tutoring: setup.tutoring.name(),
            variant: setup.variant_label(),
        };
        let key = self.inner.key_for(&agent, &message, &history, shape);
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
            setup: setup.clone(),
        };
        // 2. lookup
        let found = self.lookup(&agent, &key, &message, &history, shape).await;
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
                let tutoring = setup.tutoring;
                let mut request = model::request(&called, tutoring, asked.clone(), history.clone());
                request.safety = profile.thresholds.clone();
                let (inner, agent, flow) = (inner.clone(), called.clone(), caller.flow.clone());
                let (scope, variant) = (scope.clone(), setup.variant.clone());
                async move {
                    let asker = Asker {
                        flow: &flow,
                        shape: Shape {
                            scope: scope.as_deref(),
                            safety: request.safety.fingerprint(),
                            tutoring: tutoring.name(),
                            variant: variant.as_ref().map_or("", |v| &*v.label),
                        },
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
        let setup = &asked.setup;
        let started = Started {
            policy: setup.tutoring.name(),
            variant: setup.variant_label(),
            nonce: setup.nonce,
        };
        let recorded = deps
            .conversations
            .record(place, agent.id(), message, said, started, &deps.cache)
            .await?;
        let mut answer = answer.recorded(recorded);
        answer.policy = setup.tutoring;
        answer.variant.clone_from(&setup.variant);
        if let Some(variant) = setup.variant.as_ref().filter(|_| setup.counted) {
            let (usage, prices) = (answer.usage, deps.prices);
            variant.count(Counted {
                turn: answer.turn,
                cached: answer.cached,
                input_tokens: usage.prompt_tokens,
                output_tokens: usage.output_tokens,
                cost_usd: (f64::from(usage.prompt_tokens) * prices.input_per_million
                    + f64::from(usage.output_tokens) * prices.output_per_million)
                    / 1e6,
            });
        }
        Ok(self.safeguard(answer, agent, asked).await)
    }
}

/// The message as the model sees it: the learner's question, then what they tried (part of
/// the turn, so of its cache key and of the stored conversation too).
fn with_attempt(message: String, attempt: Option<&str>) -> String {
    match attempt.map(str::trim).filter(|a| !a.is_empty()) {
        // An attempt is no question: an empty message stays empty (and is refused as such).
        _ if message.trim().is_empty() => message,
        None => message,
        Some(attempt) => format!("{}\n\nWhat I tried:\n{attempt}", message.trim_end()),
    }
}

/// How a conversation is tutored: the answer policy (at one version) and, in an experiment,
/// its variant. Decided when the conversation starts and kept for its whole life.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    tutoring: Tutoring,
    variant: Option<Arc<Variant>>,
    /// True while the variant is configured: its counts are kept (a recorded variant whose
    /// experiment was removed from the configuration is only named).
    counted: bool,
    /// A new conversation's identity, chosen before the answer because its variant was
    /// assigned by it.
    nonce: Option<[u8; 16]>,
}

impl Setup {
    /// `experiment/variant`, empty when none.
    fn variant_label(&self) -> &str {
        self.variant.as_ref().map_or("", |v| &v.label)
    }
}

/// Whose cached answers a question may share, besides the question itself.
#[derive(Debug, Clone, Copy)]
struct Shape<'a> {
    /// The cache scope (the key id with `cache.scope = "key"`).
    scope: Option<&'a str>,
    /// The fingerprint of the safety settings sent.
    safety: &'a str,
    /// The answer policy's name and version.
    tutoring: &'static str,
    /// The experiment variant, empty when none.
    variant: &'a str,
}

/// Who a call is for: whose fair share it spends, whose answers it may share, and until when.
#[derive(Clone, Copy)]
struct Asker<'a> {
    flow: &'a Flow,
    shape: Shape<'a>,
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

    /// The experiment variant of a new conversation of `agent` (and the identity it was
    /// assigned by, when chosen now), by a stable hash: of the learner with `unit = "learner"`,
    /// else of the conversation (a new conversation's id, or the first message of turns the
    /// client holds). `None` when the agent is in no running experiment, and for follow-ups
    /// of stored conversations, which keep the variant they were given.
    fn assign(
        &self,
        agent: &Agent,
        thread: &crate::chat::Thread,
        message: &str,
        caller: &Caller,
    ) -> Option<(Arc<Variant>, Option<[u8; 16]>)> {
        use crate::chat::Thread;
        let experiment = self.deps.experiments.running_for(agent.id())?;
        let learner = caller
            .learner
            .as_deref()
            .filter(|_| experiment.unit == crate::config::ExperimentUnit::Learner);
        let (unit, nonce) = match (thread, learner) {
            (Thread::Id(_), _) => return None,
            (_, Some(learner)) => (learner.as_bytes().to_vec(), None),
            (Thread::New, None) => {
                let mut nonce = [0u8; 16];
                rand::rng().fill_bytes(&mut nonce);
                (hex::encode(nonce).into_bytes(), Some(nonce))
            }
            // No conversation id: the client's own key and the first message name it (the
            // key keeps two classes asking the same first question from sharing a variant).
            (Thread::Turns(turns), None) => {
                let first = turns
                    .first()
                    .map_or(Cow::Borrowed(message), |turn| normalise_message(&turn.text));
                let key = caller.key_id.as_deref().unwrap_or("");
                let mut unit = Vec::with_capacity(key.len() + 1 + first.len());
                unit.extend_from_slice(key.as_bytes());
                unit.push(0);
                unit.extend_from_slice(first.as_bytes());
                (unit, None)
            }
        };
        Some((experiment.assign(&unit).clone(), nonce))
    }

    /// How the conversation at `place` is tutored: a follow-up keeps what its conversation
    /// started with; a new one takes its experiment variant, else its key's (class's) policy,
    /// else its agent's.
    fn setup(
        &self,
        agent: &Agent,
        place: &Place,
        assigned: Option<(Arc<Variant>, Option<[u8; 16]>)>,
        caller: &Caller,
    ) -> Setup {
        let recorded = place
            .recorded()
            .and_then(|(policy, variant)| Some((Tutoring::parse(policy)?, variant)));
        if let Some((tutoring, label)) = recorded {
            let configured = self.deps.experiments.variant(label).cloned();
            let counted = configured.is_some();
            let variant = configured.or_else(|| {
                (!label.is_empty()).then(|| Arc::new(Variant::detached(label, tutoring)))
            });
            return Setup {
                tutoring,
                variant,
                counted,
                nonce: None,
            };
        }
        match assigned {
            Some((variant, nonce)) => Setup {
                tutoring: variant.tutoring,
                variant: Some(variant),
                counted: true,
                nonce,
            },
            None => Setup {
                tutoring: caller.policy.unwrap_or(agent.tutoring),
                variant: None,
                counted: false,
                nonce: None,
            },
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
            shape,
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
        self.keep(key, agent, request, shape, lease, answered).await
    }

    /// The key of the agent's primary model's answer, in the `shape` asked.
    fn key_for(
        &self,
        agent: &Agent,
        message: &str,
        history: &[ModelTurn],
        shape: Shape<'_>,
    ) -> CacheKey {
        match self.deps.router.chain(agent).first() {
            Some(primary) => route_key(agent, primary, message, history, shape),
            None => CacheKey::new(CacheKeyParts {
                provider: self.deps.provider.identity(),
                agent_id: agent.id(),
                prompt_version: &agent.prompt_version,
                model: &agent.definition.model,
                message,
                history,
                scope: shape.scope,
                safety: shape.safety,
                tutoring: shape.tutoring,
                variant: shape.variant,
            }),
        }
    }
}

/// The cache key of an answer to `message` after `history` by `route`, in the `shape` asked.
fn route_key(
    agent: &Agent,
    route: &Route,
    message: &str,
    history: &[ModelTurn],
    shape: Shape<'_>,
) -> CacheKey {
    let Shape {
        scope,
        safety,
        tutoring,
        variant,
    } = shape;
    CacheKey::new(CacheKeyParts {
        provider: route.identity(),
        agent_id: agent.id(),
        prompt_version: &agent.prompt_version,
        model: route.model(),
        message,
        history,
        scope,
        safety,
        tutoring,
        variant,
    })
}
