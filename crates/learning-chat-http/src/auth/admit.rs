//! Admitting a request under its key: the key it carries ([`Auth::identify`]), then the key's
//! agents, learner requirement and limits ([`Auth::admit`]). The middleware does both for the
//! native API; the OpenAI-compatible completions handler admits once it has read the agent and
//! learner from the body ([`Identified::admit`]).

use super::{
    key_set, keys, presented_secret, Auth, Bill, Caller, Decision, Held, KeyLimiter, KeyLimits,
    LimitKind, Refusal, Subject, Tab, LEARNER_HEADER,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;

/// What a request's key limits said, for the rate-limit headers of its answer.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitState {
    limits: KeyLimits,
    decision: Option<Decision>,
}

impl RateLimitState {
    /// `RateLimit-Limit/-Remaining/-Reset` (requests of the key's minute), when the key has a
    /// requests-per-minute limit and it was checked.
    pub fn write(&self, headers: &mut HeaderMap) {
        if let Some((limit, remaining, reset)) = self.requests() {
            for (name, value) in [
                ("ratelimit-limit", limit),
                ("ratelimit-remaining", remaining),
                ("ratelimit-reset", reset),
            ] {
                headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
            }
        }
    }

    /// The same, plus OpenAI's names (`x-ratelimit-limit-requests`,
    /// `x-ratelimit-remaining-requests`, `x-ratelimit-reset-requests` as a duration such as
    /// `12s`), which OpenAI clients read.
    pub fn write_openai(&self, headers: &mut HeaderMap) {
        self.write(headers);
        if let Some((limit, remaining, reset)) = self.requests() {
            headers.insert(
                HeaderName::from_static("x-ratelimit-limit-requests"),
                HeaderValue::from(limit),
            );
            headers.insert(
                HeaderName::from_static("x-ratelimit-remaining-requests"),
                HeaderValue::from(remaining),
            );
            if let Ok(reset) = HeaderValue::from_str(&format!("{reset}s")) {
                headers.insert(HeaderName::from_static("x-ratelimit-reset-requests"), reset);
            }
        }
    }

    /// The key's requests per minute, those left, and whole seconds until the window moves.
    fn requests(&self) -> Option<(u64, u64, u64)> {
        let decision = self.decision.filter(|_| self.limits.rpm > 0)?;
        let limit = u64::from(self.limits.rpm);
        let reset = decision.reset.as_secs() + u64::from(decision.reset.subsec_nanos() > 0);
        Some((limit, limit.saturating_sub(decision.rpm_used), reset.max(1)))
    }
}

/// A request with a valid key, not yet admitted under the key's limits: the OpenAI-compatible
/// endpoints name the agent (and the learner) in the body, so their handlers admit the request
/// once they have read it ([`Identified::admit`]).
#[derive(Clone)]
pub struct Identified {
    pub(super) auth: Arc<Auth>,
    pub(super) held: Arc<key_set::HeldKey>,
    /// The hashed `X-Learner-Id`, when the request has one (it wins over a body's learner).
    pub(super) learner: Option<Arc<str>>,
}

impl std::fmt::Debug for Identified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Identified").field(&self.held.id).finish()
    }
}

impl Identified {
    /// True when the key may ask `agent`.
    pub fn allows_agent(&self, agent: &str) -> bool {
        self.held.key.allows_agent(agent)
    }

    /// Admits a question to `agent` under the key's limits, exactly as the middleware admits
    /// a native question: for the request's `X-Learner-Id`, else for `learner` from the body
    /// (as sent: hashed here).
    pub async fn admit(&self, agent: &str, learner: Option<&str>) -> Result<Admitted, Refused> {
        let learner = self.learner.clone().or_else(|| {
            learner
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| self.auth.learner_id(&self.held, v))
        });
        self.auth
            .admit(&self.held, Some(agent), learner, true)
            .await
    }
}

/// An admitted request: its caller (with the bill of a question) and what its limits said.
#[derive(Debug)]
pub struct Admitted {
    /// Who calls; goes with the question to the engine.
    pub caller: Caller,
    /// For the answer's rate-limit headers.
    pub rate: RateLimitState,
}

/// A refused request: why, and what its limits said (counted in the metrics already).
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub refusal: Refusal,
    /// For the answer's rate-limit headers (a 429 says when the window moves).
    pub rate: Option<RateLimitState>,
}

impl Refused {
    fn plain(refusal: Refusal) -> Refused {
        Refused {
            refusal,
            rate: None,
        }
    }

    /// The answer in the service's own error shape.
    pub fn into_native_response(self) -> Response {
        let mut response = self.refusal.into_response();
        if let Some(rate) = self.rate {
            rate.write(response.headers_mut());
        }
        response
    }
}

impl Auth {
    /// The hashed learner id of `learner` for the key `held`.
    pub(super) fn learner_id(&self, held: &key_set::HeldKey, learner: &str) -> Arc<str> {
        Arc::from(keys::hash_learner(&self.pepper, &held.key.id, learner))
    }

    /// Counts a refusal of the key check (not of a limit) in the metrics and the refusal log.
    fn count(&self, refusal: &Refusal) {
        if let Some(reason) = refusal.reason() {
            crate::auth::metrics::auth_failure(reason);
            self.refusals.record(reason);
        }
    }

    /// The key whose secret the request carries.
    pub(super) fn identify(&self, headers: &HeaderMap) -> Result<Arc<key_set::HeldKey>, Refused> {
        let found = presented_secret(headers)
            .ok_or(Refusal::Missing)
            .and_then(|secret| self.lookup(secret));
        found.map_err(|refusal| {
            self.count(&refusal);
            Refused::plain(refusal)
        })
    }

    /// Admits a request of the key `held`: asking `agent` (when it asks one), for `learner`
    /// (hashed); `spends` when it counts against the key's limits (questions, conversation
    /// reads and erasures; listing agents needs a key but spends no budget).
    pub(super) async fn admit(
        self: &Arc<Self>,
        held: &Arc<key_set::HeldKey>,
        agent: Option<&str>,
        learner: Option<Arc<str>>,
        spends: bool,
    ) -> Result<Admitted, Refused> {
        let key = &held.key;
        if agent.is_some_and(|agent| !key.allows_agent(agent)) {
            self.count(&Refusal::AgentNotAllowed);
            return Err(Refused::plain(Refusal::AgentNotAllowed));
        }
        tracing::debug!(key_id = %key.id, "api key accepted");
        if key.require_learner && learner.is_none() {
            self.count(&Refusal::LearnerRequired);
            return Err(Refused::plain(Refusal::LearnerRequired));
        }
        self.keys.mark_used(held);
        let key_id = held.id.clone();
        let mut caller = Caller {
            key_id: key_id.clone(),
            name: held.name.clone(),
            learner: learner.clone(),
            weight: key.weight.max(1),
            role: key.role,
            bill: None,
            policy: held.policy,
        };
        let mut rate = RateLimitState {
            limits: key.limits,
            decision: None,
        };
        if !spends {
            return Ok(Admitted { caller, rate });
        }
        let requests = held.requests(|id| self.labels.label(id)).clone();
        // Keys without a `concurrency` of their own: a per-server count on the held key, no
        // limiter work at all.
        let in_flight = match (key.limits.concurrency, self.default_concurrency) {
            (0, max) if max > 0 => match held.enter(max) {
                Some(in_flight) => Some(in_flight),
                None => {
                    crate::auth::metrics::key_limited(
                        &requests.label,
                        LimitKind::KeyConcurrency.code(),
                    );
                    return Err(Refused::plain(Refusal::Limited {
                        limit: LimitKind::KeyConcurrency,
                        retry_after: Duration::from_secs(1),
                    }));
                }
            },
            _ => None,
        };
        // The key's own limits, when it has any: one limiter decision (one Redis script call).
        let mut hold = None;
        if KeyLimiter::applies(&key.limits, learner.is_some()) {
            let subject = Subject {
                key_id: key.id.clone(),
                learner: learner.as_deref().map(str::to_owned),
                member: uuid::Uuid::new_v4().to_string(),
            };
            // Boxed: the limiter's Redis script call is kilobytes of future, which unboxed sat
            // in every question's future (keys without limits included) and was copied with it.
            let decided = Box::pin(self.limiter.acquire(&key.limits, &subject)).await;
            rate.decision = Some(decided);
            if let Some(limit) = decided.refused {
                crate::auth::metrics::key_limited(&requests.label, limit.code());
                return Err(Refused {
                    refusal: Refusal::Limited {
                        limit,
                        retry_after: decided.retry_after.max(Duration::from_secs(1)),
                    },
                    rate: Some(rate),
                });
            }
            hold = Some(Held {
                auth: self.clone(),
                limits: key.limits,
                subject,
                decision: decided,
                done: false,
            });
        }
        let tab = Arc::new(Tab {
            auth: self.clone(),
            requests,
            key_id,
            learner,
            held: hold,
            _in_flight: in_flight,
            cost: std::sync::OnceLock::new(),
        });
        caller.bill = Some(Bill(tab));
        Ok(Admitted { caller, rate })
    }
}

/// The learner id header's value, when the request has a usable one.
pub(super) fn learner_header(headers: &HeaderMap) -> Option<&str> {
    // A name made once: looking up by `&str` parses and validates the name on every request.
    const LEARNER: HeaderName = HeaderName::from_static(LEARNER_HEADER);
    headers
        .get(&LEARNER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}
