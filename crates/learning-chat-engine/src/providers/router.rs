//! The model router: per agent, a chain of models tried in order, each behind a
//! circuit breaker, each served by its provider (Gemini with several keys, an OpenAI-compatible
//! endpoint, or the offline model). The chat service walks the chain; this module owns which
//! routes exist, their breakers and the providers that serve them.

use super::keys::{KeyPool, KeyQuota};
use super::transport::MakeTransport;
use super::{Completion, CompletionStream, ModelRequest, OpenAiClient, Provider, ProviderError};
use crate::agents::{Agent, AgentRegistry, ModelSpec, ProviderKind};
use crate::config::{Secret, Settings};
use crate::redis_link::RedisLink;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

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
        crate::metrics::circuit_state(model, 0);
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
        crate::metrics::circuit_state(&self.model, 2);
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
            crate::metrics::circuit_state(&self.model, 1);
            tracing::warn!(
                model = %self.model,
                cooldown_ms = self.cooldown.as_millis() as u64,
                "circuit open: skipping the model for its cool-down"
            );
        } else if closed {
            crate::metrics::circuit_state(&self.model, 0);
            tracing::info!(model = %self.model, "circuit closed: the model answers again");
        }
    }
}

/// Who serves a route.
#[derive(Debug)]
enum Server {
    /// One provider (the offline model, or an OpenAI-compatible endpoint).
    Single(Provider),
    /// Gemini through its pool of keys.
    Keys(Arc<KeyPool>),
}

/// One model of a chain: where it is served and its breaker.
#[derive(Debug)]
pub struct Route {
    spec: ModelSpec,
    identity: String,
    server: Server,
    breaker: Breaker,
}

impl Route {
    /// The model id.
    pub fn model(&self) -> &str {
        &self.spec.model
    }

    /// Which provider answers (`gemini@host`, `openai@host:port`, `offline-simulated`): with
    /// the model, part of the cache key of this route's answers.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// May a call go to this model now (its circuit)?
    pub fn admit(&self) -> bool {
        self.breaker.admit()
    }

    /// True while its circuit skips it.
    pub fn is_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// One attempt, bounded by `deadline`; the result feeds the breaker.
    pub async fn generate(
        &self,
        request: &ModelRequest,
        deadline: Instant,
    ) -> Result<Completion, ProviderError> {
        let result = match &self.server {
            Server::Single(provider) => provider.generate(request, deadline).await,
            Server::Keys(pool) => pool.generate(request, deadline).await,
        };
        self.breaker.record(&result);
        result
    }

    /// One streamed attempt; errors before the body feed the breaker, a stream that starts
    /// counts as an answer.
    pub async fn generate_stream(
        &self,
        request: &ModelRequest,
        deadline: Instant,
    ) -> Result<CompletionStream, ProviderError> {
        let result = match &self.server {
            Server::Single(provider) => provider.generate_stream(request, deadline).await,
            Server::Keys(pool) => pool.generate_stream(request, deadline).await,
        };
        self.breaker.record(&result);
        result
    }
}

/// Every agent's chain of routes.
#[derive(Debug, Clone)]
pub struct ModelRouter {
    chains: Arc<HashMap<String, Arc<[Arc<Route>]>>>,
    routes: Arc<Vec<Arc<Route>>>,
    keys: Option<Arc<KeyPool>>,
}

impl ModelRouter {
    /// Builds the routes of every agent: Gemini models through one pool of the configured keys
    /// (or the offline model without any), OpenAI-compatible ones through a client per
    /// endpoint. Models shared by several agents share one route and breaker.
    pub fn build(
        agents: &AgentRegistry,
        settings: &Settings,
        fallback: &Provider,
        redis: Option<RedisLink>,
        transport: &MakeTransport,
    ) -> anyhow::Result<ModelRouter> {
        let keys = match fallback {
            Provider::Gemini(client) => {
                let quota = KeyQuota {
                    rpm: settings.gemini.key_rpm,
                    input_tpm: settings.gemini.key_input_tpm,
                    margin: settings.upstream.quota_window_margin,
                    replicas: settings.redis.replicas,
                    redis,
                };
                Some(Arc::new(KeyPool::new(
                    client,
                    &settings.gemini_keys(),
                    quota,
                )))
            }
            _ => None,
        };
        let routing = &settings.routing;
        let cooldown = routing.breaker_cooldown;
        let mut by_spec: HashMap<ModelSpec, Arc<Route>> = HashMap::new();
        let mut routes = Vec::new();
        let mut chains = HashMap::new();
        for agent in agents.all() {
            let mut chain = Vec::with_capacity(agent.chain.len());
            for spec in &agent.chain {
                if let Some(route) = by_spec.get(spec) {
                    chain.push(route.clone());
                    continue;
                }
                let (server, identity) = match spec.provider() {
                    ProviderKind::Gemini => match &keys {
                        Some(pool) => (Server::Keys(pool.clone()), fallback.identity().to_owned()),
                        None => (
                            Server::Single(fallback.clone()),
                            fallback.identity().to_owned(),
                        ),
                    },
                    ProviderKind::Openai => {
                        let base = spec
                            .base_url
                            .clone()
                            .unwrap_or_else(|| settings.openai.base_url.clone());
                        let key = match &spec.api_key_env {
                            Some(var) => Secret::new(std::env::var(var).unwrap_or_default()),
                            None => settings.openai.api_key.clone(),
                        };
                        let client = OpenAiClient::new(
                            &base,
                            key,
                            settings.gemini.connect_timeout,
                            transport,
                        )?;
                        let identity = client.identity().to_owned();
                        (Server::Single(Provider::OpenAi(client)), identity)
                    }
                };
                let route = Arc::new(Route {
                    spec: spec.clone(),
                    identity,
                    server,
                    breaker: Breaker::new(&spec.model, routing.breaker_failures, cooldown),
                });
                crate::metrics::model_fallback_init(&spec.model);
                by_spec.insert(spec.clone(), route.clone());
                routes.push(route.clone());
                chain.push(route);
            }
            chains.insert(agent.id().to_owned(), Arc::from(chain));
        }
        Ok(ModelRouter {
            chains: Arc::new(chains),
            routes: Arc::new(routes),
            keys,
        })
    }

    /// The agent's routes, primary first.
    pub fn chain(&self, agent: &Agent) -> Arc<[Arc<Route>]> {
        self.chains
            .get(agent.id())
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    /// Each model's circuit (`closed`, `open`, `half_open`), for /ready.
    pub fn circuits(&self) -> BTreeMap<String, String> {
        self.routes
            .iter()
            .map(|r| (r.model().to_owned(), r.breaker.state().to_owned()))
            .collect()
    }

    /// (keys, keys in rotation) when Gemini is configured.
    pub fn key_counts(&self) -> Option<(usize, usize)> {
        self.keys.as_ref().map(|pool| pool.counts())
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
