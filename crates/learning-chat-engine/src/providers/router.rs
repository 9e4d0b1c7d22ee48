//! The model router: per agent, a chain of models tried in order, each behind a circuit
//! breaker, each served by its provider (Gemini with several keys, an OpenAI-compatible
//! endpoint, or the offline model). This module owns which routes exist and the providers that
//! serve them; [`super::resilience`] walks a chain (retries, breakers, fallbacks).

use super::keys::{KeyPool, KeyQuota};
use super::resilience::Breaker;
use super::transport::MakeTransport;
use super::{Completion, CompletionStream, ModelRequest, OpenAiClient, Provider, ProviderError};
use crate::agents::{Agent, AgentRegistry, ModelSpec, ProviderKind};
use crate::config::{Secret, Settings};
use crate::redis_link::RedisLink;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::time::Instant;

/// Who serves a route.
#[derive(Debug)]
enum Server {
    /// One provider (the offline model, or an OpenAI-compatible endpoint).
    Single(Provider),
    /// Gemini through its pool of keys.
    Keys(Arc<KeyPool>),
    /// A scripted model, for tests.
    #[cfg(test)]
    Scripted(Arc<super::script::Script>),
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
            #[cfg(test)]
            Server::Scripted(script) => script.generate(request, deadline).await,
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
            #[cfg(test)]
            Server::Scripted(script) => script.generate_stream(request, deadline).await,
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
                crate::providers::metrics::model_fallback_init(&spec.model);
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
impl ModelRouter {
    /// Every agent served by the same chain of scripted models (breakers open after 3 failures,
    /// for 10 s), for the chat flow's tests.
    pub(crate) fn scripted(
        agents: &AgentRegistry,
        chain: &[Arc<super::script::Script>],
    ) -> ModelRouter {
        let routes: Vec<Arc<Route>> = chain
            .iter()
            .map(|script| {
                Arc::new(Route {
                    spec: ModelSpec {
                        model: script.model().to_owned(),
                        provider: None,
                        base_url: None,
                        api_key_env: None,
                    },
                    identity: "scripted".to_owned(),
                    server: Server::Scripted(script.clone()),
                    breaker: Breaker::new(script.model(), 3, std::time::Duration::from_secs(10)),
                })
            })
            .collect();
        let chain: Arc<[Arc<Route>]> = Arc::from(routes.clone());
        ModelRouter {
            chains: Arc::new(
                agents
                    .all()
                    .map(|a| (a.id().to_owned(), chain.clone()))
                    .collect(),
            ),
            routes: Arc::new(routes),
            keys: None,
        }
    }
}
