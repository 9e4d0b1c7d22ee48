//! API keys, per-key limits and the caller's identity.
//!
//! With `auth.mode = "required"` every `/api/` request carries a key (`Authorization: Bearer`
//! or `x-api-key`). The key's peppered hash is looked up in this server's copy of every key
//! ([`key_set::KeySet`], no I/O), kept current from the records database every
//! `database.key_refresh_ms` whether or not Redis is up; a new or revoked key takes effect on
//! every server within about that. Usage is added to the ledger ([`Ledger`]) where the [`Bill`]
//! is settled, and written in batches. The caller's key id goes into
//! the request's extensions ([`Caller`]) and into the admission queue's fair order
//! ([`learning_chat_engine::admission::Flow`]); its limits are enforced by [`limits::KeyLimiter`]. The secret
//! itself is never logged, labelled or echoed: only the key id is.

mod admit;
pub mod key_set;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod refusals;

pub use admit::{Admitted, Identified, RateLimitState, Refused};

use admit::learner_header;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;
use key_set::{Found, KeyRefresher, KeySet};
use keys::KeyLimits;
use learning_chat_engine::admission::Flow;
use learning_chat_engine::chat::{Answer, Prices};
use learning_chat_engine::config::{AuthMode, Secret, Settings};
use learning_chat_engine::redis_link::RedisLink;
use learning_chat_records::ledger::{Ledger, Usage};
use learning_chat_records::Records;
use limits::{Decision, KeyLimiter, LimitKind, Subject};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Header a client may use instead of `Authorization: Bearer`.
pub const API_KEY_HEADER: &str = "x-api-key";
/// Opaque learner id header (hashed before use) for per-learner limits.
pub const LEARNER_HEADER: &str = "x-learner-id";
/// The label used for keys beyond `metrics.max_key_labels`.
pub const OTHER_KEY_LABEL: &str = "other";

/// Who is calling, put in the request's extensions by the auth middleware.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key id (never the secret); conversations and metrics are keyed by it.
    pub key_id: Arc<str>,
    /// The key's name.
    pub name: Arc<str>,
    /// The hashed `X-Learner-Id`, when sent.
    pub learner: Option<Arc<str>>,
    /// The key's share in the admission queue's fair order.
    pub weight: u32,
    /// What the key may do besides asking (`admin`: also read flags).
    pub role: learning_chat_records::keys::KeyRole,
    /// Where a question's handler puts what its answer cost; `None` for requests that ask
    /// nothing.
    pub bill: Option<Bill>,
    /// The key's (class's) answer policy, over the agents' own.
    pub policy: Option<learning_chat_engine::policy::Tutoring>,
}

impl Caller {
    /// The caller as the engine knows it: its conversations' scope and its fair-share flow.
    pub fn asker(&self) -> learning_chat_engine::chat::Caller {
        learning_chat_engine::chat::Caller {
            key_id: Some(self.key_id.clone()),
            flow: Flow {
                id: self.key_id.clone(),
                weight: self.weight,
            },
            learner: self.learner.clone(),
            policy: self.policy,
        }
    }
}

/// What an answer cost, as the key's limits and metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerCost {
    /// Served from the cache: counts against the request rate only.
    pub cached: bool,
    /// Input tokens of the model call.
    pub prompt_tokens: u32,
    /// Output tokens of the model call.
    pub output_tokens: u32,
}

impl AnswerCost {
    /// What `answer` cost.
    pub fn of(answer: &Answer) -> AnswerCost {
        AnswerCost {
            cached: answer.cached,
            prompt_tokens: answer.usage.prompt_tokens,
            output_tokens: answer.usage.output_tokens,
        }
    }
}

/// A question's bill: its handler writes what the answer cost once it has it, and the key is
/// charged (metrics, token budget, the end of its hold on the key's limits) when the last
/// holder lets go: right after the handler for an answer sent whole, at the end of a stream
/// for a streamed one. A question with no answer is charged nothing beyond the request.
#[derive(Clone)]
pub struct Bill(Arc<Tab>);

impl std::fmt::Debug for Bill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Bill").field(&self.0.cost.get()).finish()
    }
}

impl Bill {
    /// Writes what the answer cost (the first write counts).
    pub fn charge(&self, answer: &Answer) {
        let _ = self.0.cost.set(AnswerCost::of(answer));
    }
}

/// What a [`Bill`] settles. Settled once, when the last holder drops it.
struct Tab {
    auth: Arc<Auth>,
    requests: Arc<metrics::KeyRequests>,
    key_id: Arc<str>,
    learner: Option<Arc<str>>,
    /// The hold on the key's own limits, when it has any.
    held: Option<Held>,
    /// The request's place under `admission.default_key_concurrency`, when that applies.
    _in_flight: Option<key_set::InFlight>,
    cost: std::sync::OnceLock<AnswerCost>,
}

impl Tab {
    /// Counts the answer in the key's metrics and the ledger; returns the tokens to charge its
    /// budget.
    fn charge(&self) -> u64 {
        let cost = self.cost.get().copied();
        self.auth.ledger.record(
            &self.key_id,
            self.learner.as_ref(),
            Usage {
                requests: 1,
                cached_requests: u64::from(cost.is_some_and(|c| c.cached)),
                input_tokens: cost
                    .filter(|c| !c.cached)
                    .map_or(0, |c| c.prompt_tokens.into()),
                output_tokens: cost
                    .filter(|c| !c.cached)
                    .map_or(0, |c| c.output_tokens.into()),
            },
        );
        charge(&self.auth, &self.requests, cost)
    }
}

impl Drop for Tab {
    fn drop(&mut self) {
        // The last holder is gone: the handler of an answer sent whole, or the stream at its
        // end. What the limits need settling (tokens, a concurrency lease) goes in the
        // background: the answer does not wait for it.
        let tokens = self.charge();
        if let Some(held) = self.held.take() {
            held.finish(tokens);
        }
    }
}

/// Metric labels for key ids, bounded: the first `max` ids seen get their own label.
struct KeyLabels {
    max: usize,
    seen: Mutex<HashSet<Arc<str>>>,
}

impl KeyLabels {
    fn label(&self, id: &Arc<str>) -> Arc<str> {
        let mut seen = self.seen.lock();
        if seen.contains(id) {
            return id.clone();
        }
        if seen.len() < self.max {
            seen.insert(id.clone());
            return id.clone();
        }
        Arc::from(OTHER_KEY_LABEL)
    }
}

/// Why a request was refused by the key check; the API's error type turns it into the answer
/// (`impl IntoResponse for Refusal` in `api`), so this module needs nothing of the HTTP edge.
#[derive(Debug)]
pub enum Refusal {
    /// No key sent.
    Missing,
    /// No such key.
    Unknown,
    /// The key was revoked.
    Revoked,
    /// The key may not ask this agent.
    AgentNotAllowed,
    /// The key requires `X-Learner-Id` and the request has none.
    LearnerRequired,
    /// The keys have not been loaded yet (the records database has been down since start).
    Unavailable,
    /// A per-key or per-learner limit refused the request.
    Limited {
        /// The limit that refused.
        limit: limits::LimitKind,
        /// When to retry.
        retry_after: Duration,
    },
}

impl Refusal {
    /// The `reason` label of `learning_chat_auth_failures_total` (none for limits, which
    /// `learning_chat_key_limited_total` counts).
    fn reason(&self) -> Option<&'static str> {
        Some(match self {
            Refusal::Missing => "missing",
            Refusal::Unknown => "unknown",
            Refusal::Revoked => "revoked",
            Refusal::AgentNotAllowed => "agent_not_allowed",
            Refusal::LearnerRequired => "learner_required",
            Refusal::Unavailable => "store_unavailable",
            Refusal::Limited { .. } => return None,
        })
    }
}

/// The key check and per-key limits of one server.
pub struct Auth {
    pepper: Secret,
    /// Every key, by hash.
    keys: Arc<KeySet>,
    /// Where the keys live and the ledger goes.
    records: Records,
    /// This server's usage not yet written.
    ledger: Ledger,
    refusals: refusals::RefusalLog,
    key_refresh: Duration,
    ledger_flush: Duration,
    limiter: KeyLimiter,
    /// `admission.default_key_concurrency`: requests in progress on this server for a key
    /// that sets no `concurrency` of its own (0 = no limit).
    default_concurrency: u32,
    labels: KeyLabels,
    prices: Prices,
}

impl Auth {
    /// The key check for these settings, or `None` with `auth.mode = "off"` (logged loudly).
    /// Nothing is read yet: [`Auth::load`] and [`Auth::start`] do.
    pub fn from_settings(
        settings: &Settings,
        records: Option<Records>,
        redis: Option<RedisLink>,
    ) -> anyhow::Result<Option<Arc<Auth>>> {
        if settings.auth.mode == AuthMode::Off {
            return Ok(None);
        }
        let Some(records) = records else {
            anyhow::bail!("auth.mode = \"required\" needs the records database (database.url)");
        };
        let lease = settings.request_timeout() + Duration::from_secs(5);
        Ok(Some(Arc::new(Auth {
            pepper: settings.auth.pepper.clone(),
            keys: Arc::new(KeySet::new(settings.auth.max_keys.get())),
            records,
            ledger: Ledger::new(settings.database.ledger_max_rows.get()),
            refusals: refusals::RefusalLog::default(),
            key_refresh: settings.database.key_refresh,
            ledger_flush: settings.database.ledger_flush,
            limiter: KeyLimiter::new(redis, settings.redis.replicas, lease, &settings.admission),
            default_concurrency: settings.admission.default_key_concurrency,
            labels: KeyLabels {
                max: settings.metrics.max_key_labels,
                seen: Mutex::new(HashSet::new()),
            },
            prices: Prices {
                input_per_million: settings.telemetry.price_per_million_input_tokens,
                output_per_million: settings.telemetry.price_per_million_output_tokens,
            },
        })))
    }

    /// Takes a key this server just changed at once (the others have it at their next poll
    /// of changed keys).
    pub fn key_changed(&self, key: learning_chat_records::keys::ApiKey) {
        self.keys.changed_here(vec![key]);
    }

    /// The stored form of a new key's secret (the console creates keys as the CLI does).
    pub fn hash_secret(&self, secret: &str) -> String {
        keys::hash_secret(&self.pepper, secret)
    }

    /// `learner` (an `X-Learner-Id` as the app sends it) as stored for key `key_id`: the
    /// console finds a learner's data under each key by it.
    pub fn learner_hash(&self, key_id: &str, learner: &str) -> String {
        keys::hash_learner(&self.pepper, key_id, learner)
    }

    /// How many keys this server holds.
    pub fn keys_held(&self) -> usize {
        self.keys.len()
    }

    /// Loads every key now (at start, before the listener serves): until a load succeeds every
    /// request with a key gets 503 `auth_unavailable`. Returns the refresher that keeps the
    /// set current, for [`Auth::start`].
    pub async fn load(
        &self,
    ) -> (
        KeyRefresher,
        Result<(), learning_chat_records::RecordsError>,
    ) {
        let mut refresher = KeyRefresher::new(self.keys.clone(), self.records.clone());
        let result = refresher.refresh().await;
        (refresher, result)
    }

    /// Starts the background work: the key refresher (every `database.key_refresh_ms`) and
    /// the ledger writer (every `database.ledger_flush_ms`). Stop them with
    /// [`AuthTasks::stop`], which writes the ledger one last time.
    pub fn start(self: &Arc<Self>, mut refresher: KeyRefresher) -> AuthTasks {
        let (stop, stopped) = watch::channel(false);
        let auth = self.clone();
        let mut until = stopped.clone();
        let keys = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(auth.key_refresh);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = until.changed() => break,
                }
                match refresher.refresh().await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!(
                            keys = auth.keys.len(),
                            "API keys read from the records database again"
                        );
                    }
                    Ok(()) => {}
                    Err(error) if !failing => {
                        failing = true;
                        tracing::warn!(%error, keys = auth.keys.len(), "cannot read API keys from the records database; keeping the keys held (revocations seen so far hold, new keys wait)");
                    }
                    Err(_) => {}
                }
                auth.refusals.flush_if_due();
            }
        });
        let auth = self.clone();
        let mut until = stopped;
        let ledger = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(auth.ledger_flush);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                let stopping = tokio::select! {
                    _ = ticks.tick() => false,
                    _ = until.changed() => true,
                };
                // Awaited to the end, never cancelled: a dropped flush would lose its batch.
                match auth.ledger.flush(&auth.records).await {
                    Ok(_) => failing = false,
                    Err(error) if !failing || stopping => {
                        failing = true;
                        tracing::warn!(%error, pending_rows = auth.ledger.pending_rows(), "cannot write the usage ledger; keeping the counts and retrying");
                    }
                    Err(_) => {}
                }
                if stopping {
                    break;
                }
            }
        });
        AuthTasks { stop, keys, ledger }
    }

    /// Writes the ledger now (tests, shutdown).
    pub async fn flush_ledger(&self) -> Result<usize, learning_chat_records::RecordsError> {
        self.ledger.flush(&self.records).await
    }

    /// Finds the key whose secret is `secret`: a hash and a map lookup, no I/O.
    fn lookup(&self, secret: &str) -> Result<Arc<key_set::HeldKey>, Refusal> {
        let mut hex = [0u8; 64];
        let hash = keys::hash_secret_into(&self.pepper, secret, &mut hex);
        let held = match self.keys.find(hash) {
            Found::Key(held) => held,
            Found::Unknown => return Err(Refusal::Unknown),
            Found::NotLoaded => return Err(Refusal::Unavailable),
        };
        // The map found it by hash; compare again in constant time, so no code path depends
        // on how much of a wrong hash matched.
        if !keys::hashes_match(&held.key.hash, hash) {
            return Err(Refusal::Unknown);
        }
        if held.key.revoked_at.is_some() {
            return Err(Refusal::Revoked);
        }
        Ok(held)
    }
}

/// The background work of [`Auth::start`].
pub struct AuthTasks {
    stop: watch::Sender<bool>,
    keys: JoinHandle<()>,
    ledger: JoinHandle<()>,
}

impl AuthTasks {
    /// Stops the refresher and writes the ledger a last time (at most `within`).
    pub async fn stop(self, within: Duration) {
        let _ = self.stop.send(true);
        self.keys.abort();
        if tokio::time::timeout(within, self.ledger).await.is_err() {
            tracing::warn!("the usage ledger's last write did not finish in time");
        }
    }
}

/// Logs the auth mode at start; loudly when keys are off.
pub fn log_mode(settings: &Settings) {
    match settings.auth.mode {
        AuthMode::Off => tracing::warn!(
            "AUTH IS OFF (auth.mode = \"off\"): anyone who can reach this port can spend the \
             model budget. Set auth.mode = \"required\" and LEARNING_CHAT_AUTH__PEPPER, and \
             create keys with `learning-chat keys create`."
        ),
        AuthMode::Required => tracing::info!(
            database = %settings.database.url.masked(),
            "API keys required (kept in the records database, held in memory)"
        ),
    }
}

/// The secret the request carries, if any.
fn presented_secret(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?.trim();
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty());
    }
    headers
        .get(API_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// A granted request's hold on its key's own limits; ended (tokens charged, lease released)
/// when the answer is out, or when the client went away first.
struct Held {
    auth: Arc<Auth>,
    limits: KeyLimits,
    subject: Subject,
    decision: Decision,
    done: bool,
}

impl Held {
    /// Settles the hold in the background when a window changes (see
    /// [`KeyLimiter::needs_settling`]); otherwise there is nothing to do.
    fn finish(mut self, tokens: u64) {
        self.done = true;
        self.settle(tokens);
    }

    fn settle(&self, tokens: u64) {
        if !KeyLimiter::needs_settling(&self.limits, self.subject.learner.is_some(), tokens) {
            return;
        }
        let auth = self.auth.clone();
        let (limits, subject, decision) = (self.limits, self.subject.clone(), self.decision);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(crate::telemetry::in_current_context(async move {
                auth.limiter
                    .finish(&limits, &subject, &decision, tokens)
                    .await;
            }));
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.done {
            self.settle(0);
        }
    }
}

/// Admits a native question to `agent` under the key in `headers`: what [`require_key`] does
/// for `POST /api/v1/agents/{agent_id}`, for the chat route's direct dispatch (no middleware
/// boxes, no extension map). A refusal is the answer to send.
pub async fn admit_question(
    auth: &Arc<Auth>,
    headers: &HeaderMap,
    agent: &str,
) -> Result<Admitted, Response> {
    let held = auth
        .identify(headers)
        .map_err(Refused::into_native_response)?;
    let learner = learner_header(headers).map(|v| auth.learner_id(&held, v));
    auth.admit(&held, Some(agent), learner, true)
        .await
        .map_err(Refused::into_native_response)
}

/// The middleware of every `/api/` and `/v1/` route with `auth.mode = "required"`. The
/// OpenAI-compatible routes (`/v1/`) are refused in OpenAI's error shape, and hand their
/// handlers the key ([`Identified`]): `/v1/chat/completions` names its agent and learner in
/// the body, so its handler admits the question once it has read them.
pub async fn require_key(
    State(auth): State<Arc<Auth>>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let openai = crate::routes::is_openai(path);
    let refuse = |refused: Refused| {
        if openai {
            crate::api::openai::refused(refused)
        } else {
            refused.into_native_response()
        }
    };
    let held = match auth.identify(request.headers()) {
        Ok(held) => held,
        Err(refused) => return refuse(refused),
    };
    let learner = learner_header(request.headers()).map(|v| auth.learner_id(&held, v));
    if path == crate::routes::OPENAI_CHAT_COMPLETIONS {
        let identified = Identified {
            auth,
            held,
            learner,
        };
        request.extensions_mut().insert(identified);
        return next.run(request).await;
    }
    let agent = crate::routes::agent_of(path).map(str::to_owned);
    // Questions and conversation reads/erasures count against the key's limits (an erasure
    // loop must not run unbounded); listing agents needs a key but spends no budget.
    let spends = agent.is_some() || crate::routes::is_conversation(path);
    let admitted = match auth.admit(&held, agent.as_deref(), learner, spends).await {
        Ok(admitted) => admitted,
        Err(refused) => return refuse(refused),
    };
    if openai {
        // `/v1/models` lists the agents the key may use; nothing there reads a learner.
        let identified = Identified {
            auth,
            held,
            learner: None,
        };
        request.extensions_mut().insert(identified);
    }
    request.extensions_mut().insert(admitted.caller);
    let mut response = next.run(request).await;
    admitted.rate.write(response.headers_mut());
    // The request's bill is settled when its last holder lets go: here, as the handler's
    // extensions were dropped with the request, for an answer sent whole; at its end for a
    // stream, which holds it.
    response
}

/// Counts an answer against its key's metrics; returns the tokens to charge its budget.
fn charge(auth: &Auth, requests: &metrics::KeyRequests, cost: Option<AnswerCost>) -> u64 {
    match cost {
        Some(cost) if !cost.cached => {
            requests.ok();
            crate::auth::metrics::key_tokens(
                &requests.label,
                cost.prompt_tokens,
                cost.output_tokens,
                auth.prices.input_per_million,
                auth.prices.output_per_million,
            );
            u64::from(cost.prompt_tokens) + u64::from(cost.output_tokens)
        }
        Some(_) => {
            requests.cached();
            0
        }
        None => {
            requests.error();
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_secret_comes_from_either_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_secret(&headers), None);
        headers.insert(API_KEY_HEADER, HeaderValue::from_static("lc_abc"));
        assert_eq!(presented_secret(&headers), Some("lc_abc"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer lc_xyz"),
        );
        assert_eq!(presented_secret(&headers), Some("lc_xyz"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic Zm9v"),
        );
        assert_eq!(presented_secret(&headers), None);
    }

    #[test]
    fn key_labels_are_bounded() {
        let labels = KeyLabels {
            max: 2,
            seen: Mutex::new(HashSet::new()),
        };
        let ids: Vec<Arc<str>> = ["a", "b", "c"].into_iter().map(Arc::from).collect();
        assert_eq!(&*labels.label(&ids[0]), "a");
        assert_eq!(&*labels.label(&ids[1]), "b");
        assert_eq!(&*labels.label(&ids[2]), OTHER_KEY_LABEL);
        assert_eq!(&*labels.label(&ids[0]), "a");
    }
}
