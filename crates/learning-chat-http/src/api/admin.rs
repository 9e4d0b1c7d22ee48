//! Admin endpoints: only for keys created with `--role admin`.

use super::console::{bad_request, cursor, since_ms};
use super::{rfc3339, ApiError, AppState};
use crate::routes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use learning_chat_records::flags::{Flag, FlagFilter};
use learning_chat_records::keys::KeyRole;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Most flags on one page.
const MAX_PAGE: u32 = 500;
/// Flags on a page when `limit` is not given.
const DEFAULT_PAGE: u32 = 100;

/// One safety flag.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FlagView {
    /// Stable id: a webhook receiver drops a second delivery by it.
    pub id: String,
    /// When it was raised (RFC 3339, UTC).
    pub at: String,
    /// The API key that asked (empty with auth off).
    pub key_id: String,
    /// The hashed learner id (`X-Learner-Id`), empty when none was sent.
    pub learner: String,
    /// The stored conversation id (empty when none).
    pub conversation: String,
    /// Which exchange of the conversation (1 for the first question; 0 when unknown).
    pub turn: i64,
    /// The agent asked.
    pub agent_id: String,
    /// `HARM_CATEGORY_...`, a moderation category (`self-harm`, ...) or `blocked`.
    pub category: String,
    /// The probability (`NEGLIGIBLE`..`HIGH`), a moderation score, or the block reason.
    pub score: String,
    /// `prompt`, `answer`, `model_block` or `moderation`.
    pub source: String,
}

impl From<Flag> for FlagView {
    fn from(f: Flag) -> FlagView {
        FlagView {
            at: rfc3339(u64::try_from(f.at_ms).unwrap_or(0)),
            id: f.id,
            key_id: f.key_id,
            learner: f.learner,
            conversation: f.conversation,
            turn: f.turn,
            agent_id: f.agent_id,
            category: f.category,
            score: f.score,
            source: f.source,
        }
    }
}

/// A page of flags.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FlagPage {
    /// Oldest first.
    pub flags: Vec<FlagView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Which flags to list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FlagQuery {
    /// Only this key's flags.
    pub key: Option<String>,
    /// Only flags raised at or after this time (RFC 3339, or Unix milliseconds).
    pub since: Option<String>,
    /// Only this category (e.g. `HARM_CATEGORY_DANGEROUS_CONTENT`, `self-harm`, `blocked`).
    pub category: Option<String>,
    /// Flags per page (1 to 500, default 100).
    pub limit: Option<u32>,
    /// The `next_cursor` of the page before.
    pub cursor: Option<String>,
}

/// Safety flags of every key, oldest first, for admin keys.
#[utoipa::path(
    get,
    path = routes::ADMIN_FLAGS,
    params(FlagQuery),
    responses(
        (status = 200, description = "A page of flags", body = FlagPage),
        (status = 400, description = "Bad `since`, `cursor` or `limit`", body = super::ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = super::ErrorBody),
        (status = 403, description = "Not an admin key (`admin_required`), or auth is off", body = super::ErrorBody),
        (status = 503, description = "No records database, or it is down", body = super::ErrorBody),
    )
)]
pub async fn list_flags(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    query: Result<Query<FlagQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<FlagPage>, ApiError> {
    let is_admin = caller.is_some_and(|axum::Extension(c)| c.role == KeyRole::Admin);
    if !is_admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_required",
            "this endpoint needs an admin key (learning-chat keys create --role admin)",
        ));
    }
    let Query(query) = query.map_err(|e| bad_request("invalid_query", &e.body_text()))?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(bad_request("invalid_limit", "`limit` must be 1 to 500"));
    }
    let filter = FlagFilter {
        key_id: query.key,
        since_ms: query.since.as_deref().map(since_ms).transpose()?,
        category: query.category,
        after: query.cursor.as_deref().map(cursor).transpose()?,
    };
    let Some(records) = state.chat.safety().records() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_records_database",
            "flags are kept in the records database, and none is configured",
        ));
    };
    // One more than the page: whether there is a next page, without a count.
    let mut flags = records
        .list_flags(&filter, limit + 1)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "cannot list flags");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "records_unavailable",
                "the records database is unavailable",
            )
        })?;
    let next_cursor = if flags.len() > limit as usize {
        flags.truncate(limit as usize);
        flags.last().map(|f| format!("{}.{}", f.at_ms, f.id))
    } else {
        None
    };
    Ok(Json(FlagPage {
        flags: flags.into_iter().map(FlagView::from).collect(),
        next_cursor,
    }))
}

/// May `caller` set (and read) the answer policy of the class (key) `key_id`? An admin key any
/// class; a teacher key the classes it was given, read from the records database as the
/// console reads them (so a class taken away is gone at once), and 404 `class_not_found` for
/// any other class, as if it did not exist (the console's rule); anyone else 403.
async fn may_manage_class(
    state: &AppState,
    caller: Option<&crate::auth::Caller>,
    key_id: &str,
) -> Result<(), ApiError> {
    match caller.map(|c| c.role) {
        Some(KeyRole::Admin) => Ok(()),
        Some(KeyRole::Teacher) => {
            let teacher = caller.map_or("", |c| &*c.key_id);
            let reads = class_records(state)?
                .key(teacher)
                .await
                .map_err(|e| records_unavailable(&e))?
                .filter(|k| k.revoked_at.is_none())
                .is_some_and(|k| k.reads_class(key_id));
            if reads {
                Ok(())
            } else {
                Err(super::console::no_class())
            }
        }
        _ => Err(admin_required()),
    }
}

/// May `caller` read the experiments' results? Admin keys (the console's teachers are one more
/// arm here; the console shows its Experiments section by this, through `/admin/me`).
pub(crate) fn may_read_experiments(caller: Option<&crate::auth::Caller>) -> bool {
    caller.is_some_and(|c| c.role == KeyRole::Admin)
}

fn admin_required() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "admin_required",
        "this endpoint needs an admin key (learning-chat keys create --role admin)",
    )
}

fn records_unavailable(error: &learning_chat_records::RecordsError) -> ApiError {
    tracing::warn!(%error, "records database");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "records_unavailable",
        "the records database is unavailable",
    )
}

/// A class's answer policy to set.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyUpdate {
    /// `socratic`, `hints` or `full` (each at its newest version), or one pinned to a version
    /// (`socratic@1`); `null` to follow each agent's own policy again.
    #[schema(example = "socratic")]
    pub policy: Option<String>,
}

/// A class's answer policy.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClassPolicy {
    /// The key (class).
    pub key_id: String,
    /// The policy as set; `null` when the class follows each agent's own.
    pub policy: Option<String>,
    /// What it means today (`socratic@2`); `null` when not set.
    pub resolved: Option<String>,
}

impl ClassPolicy {
    fn of(key: &learning_chat_records::keys::ApiKey) -> ClassPolicy {
        ClassPolicy {
            key_id: key.id.clone(),
            resolved: key
                .policy
                .as_deref()
                .and_then(learning_chat_engine::policy::Tutoring::parse)
                .map(|t| t.name().to_owned()),
            policy: key.policy.clone(),
        }
    }
}

fn class_records(state: &AppState) -> Result<&learning_chat_records::Records, ApiError> {
    state.records.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_records_database",
            "class policies are kept with the keys in the records database, and none is configured",
        )
    })
}

fn no_such_key(key_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "key_not_found",
        format!("no key {key_id:?}"),
    )
}

/// A class's (key's) answer policy.
#[utoipa::path(
    get,
    path = routes::ADMIN_CLASS_POLICY,
    params(("key_id" = String, Path, description = "The class's key id (`key_...`)")),
    responses(
        (status = 200, description = "The class's policy", body = ClassPolicy),
        (status = 403, description = "Neither an admin nor a teacher key (`admin_required`), or auth is off", body = super::ErrorBody),
        (status = 404, description = "No such key (`key_not_found`), or a teacher's request for a class not theirs (`class_not_found`)", body = super::ErrorBody),
        (status = 503, description = "No records database, or it is down", body = super::ErrorBody),
    )
)]
pub async fn get_class_policy(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    Path(key_id): Path<String>,
) -> Result<Json<ClassPolicy>, ApiError> {
    may_manage_class(&state, caller.as_deref(), &key_id).await?;
    let key = class_records(&state)?
        .key(&key_id)
        .await
        .map_err(|e| records_unavailable(&e))?
        .ok_or_else(|| no_such_key(&key_id))?;
    Ok(Json(ClassPolicy::of(&key)))
}

/// Sets a class's (key's) answer policy: every new conversation of the key takes it (unless
/// its agent is in a running experiment); conversations already started keep theirs. This
/// server applies it at once, the others at their next poll of changed keys
/// (`database.key_refresh_ms`). Audited as `key.policy`.
#[utoipa::path(
    put,
    path = routes::ADMIN_CLASS_POLICY,
    params(("key_id" = String, Path, description = "The class's key id (`key_...`)")),
    request_body = PolicyUpdate,
    responses(
        (status = 200, description = "The class's policy, as set", body = ClassPolicy),
        (status = 400, description = "Malformed JSON", body = super::ErrorBody),
        (status = 403, description = "Neither an admin nor a teacher key (`admin_required`), or auth is off", body = super::ErrorBody),
        (status = 404, description = "No such key (`key_not_found`), or a teacher's request for a class not theirs (`class_not_found`)", body = super::ErrorBody),
        (status = 422, description = "Unknown policy or version (`invalid_policy`)", body = super::ErrorBody),
        (status = 503, description = "No records database, or it is down", body = super::ErrorBody),
    )
)]
pub async fn put_class_policy(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    Path(key_id): Path<String>,
    body: Result<super::ApiJson<PolicyUpdate>, ApiError>,
) -> Result<Json<ClassPolicy>, ApiError> {
    let caller = caller.as_deref();
    may_manage_class(&state, caller, &key_id).await?;
    let super::ApiJson(update) = body?;
    let policy = update.policy.map(|p| p.trim().to_owned());
    if let Some(policy) = &policy {
        if learning_chat_engine::policy::Tutoring::parse(policy).is_none() {
            let known: Vec<&str> = learning_chat_engine::policy::Tutoring::all()
                .map(|t| t.name())
                .collect();
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_policy",
                format!(
                    "policy {policy:?} is not socratic, hints or full, nor one of {}",
                    known.join(", ")
                ),
            ));
        }
    }
    let actor = caller.map_or(String::new(), |c| {
        format!("{}:{}", c.role.as_str(), c.key_id)
    });
    let key = class_records(&state)?
        .set_key_policy(&key_id, policy.as_deref(), &actor)
        .await
        .map_err(|e| records_unavailable(&e))?
        .ok_or_else(|| no_such_key(&key_id))?;
    let view = ClassPolicy::of(&key);
    if let Some(auth) = &state.auth {
        auth.key_changed(key);
    }
    Ok(Json(view))
}

/// The difference of a variant's thumbs-up rate from the control's, with its 95% interval.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DifferenceView {
    /// This variant's thumbs-up rate minus the control's.
    pub difference: f64,
    /// Lower end of the 95% interval (Newcombe's hybrid score method).
    pub low: f64,
    /// Upper end.
    pub high: f64,
    /// True when the interval leaves out 0: the difference is unlikely to be chance.
    pub significant: bool,
}

/// One variant's results.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VariantView {
    /// Its name.
    pub name: String,
    /// Its policy and version (`socratic@1`).
    pub policy: String,
    /// Its share of new conversations.
    pub weight: u32,
    /// Conversations started in it (every server, as of its last write of counts).
    pub conversations: u64,
    /// Of those, with at least one follow-up.
    pub follow_ups: u64,
    /// `follow_ups / conversations`; `null` before any conversation.
    pub follow_up_rate: Option<f64>,
    /// Questions answered.
    pub turns: u64,
    /// `turns / conversations`.
    pub turns_per_conversation: Option<f64>,
    /// Model tokens (input + output; cache hits cost none) per conversation.
    pub tokens_per_conversation: Option<f64>,
    /// Estimated cost per conversation in USD (`[telemetry]` prices).
    pub cost_per_conversation_usd: Option<f64>,
    /// Answers rated up by learners (every server: the records database).
    pub thumbs_up: u64,
    /// Answers rated down by learners (every server).
    pub thumbs_down: u64,
    /// `thumbs_up / (thumbs_up + thumbs_down)`; `null` before any rating.
    pub thumbs_up_rate: Option<f64>,
    /// The difference from the control (the first variant) with its 95% interval; `null`
    /// for the control itself and while either side has no ratings.
    pub vs_control: Option<DifferenceView>,
}

/// One experiment's results.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExperimentView {
    /// Its name.
    pub name: String,
    /// The agents it covers.
    pub agents: Vec<String>,
    /// `conversation` or `learner`.
    pub unit: String,
    /// When it begins (RFC 3339), if set.
    pub start: Option<String>,
    /// When it ends (RFC 3339), if set.
    pub end: Option<String>,
    /// True while it assigns new conversations.
    pub running: bool,
    /// Its variants, the control first.
    pub variants: Vec<VariantView>,
}

/// Every configured experiment.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExperimentList {
    /// In configuration order.
    pub experiments: Vec<ExperimentView>,
}

fn ratio(part: f64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part / whole as f64)
}

/// The experiments with, per variant, conversations, follow-up rate, turns, tokens and cost
/// per conversation (every server's counts, which each adds to the records database every
/// `database.ledger_flush_ms`, plus this server's latest; without a database, this server's
/// since it started), and learners' thumbs with the 95% interval of each variant's difference
/// in thumbs-up rate from the control (every server: the records database).
#[utoipa::path(
    get,
    path = routes::ADMIN_EXPERIMENTS,
    responses(
        (status = 200, description = "The experiments and their results", body = ExperimentList),
        (status = 403, description = "Not an admin key (`admin_required`), or auth is off", body = super::ErrorBody),
        (status = 503, description = "The records database is down", body = super::ErrorBody),
    )
)]
pub async fn list_experiments(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
) -> Result<Json<ExperimentList>, ApiError> {
    use learning_chat_engine::experiments::{difference_interval, VariantCounts};
    if !may_read_experiments(caller.as_deref()) {
        return Err(admin_required());
    }
    let now = u64::try_from(learning_chat_records::now_ms()).unwrap_or(0);
    let mut experiments = Vec::new();
    for experiment in state.chat.experiments().all() {
        let (thumbs, written) = match &state.records {
            Some(records) => (
                records
                    .experiment_thumbs(&experiment.name)
                    .await
                    .map_err(|e| records_unavailable(&e))?,
                records
                    .experiment_counts(&experiment.name)
                    .await
                    .map_err(|e| records_unavailable(&e))?,
            ),
            None => (Vec::new(), Vec::new()),
        };
        let thumbs_of = |label: &str| {
            thumbs
                .iter()
                .find(|t| t.variant == label)
                .map_or((0, 0), |t| (t.up, t.down))
        };
        let control = experiment.variants.first().map(|v| thumbs_of(&v.label));
        let variants = experiment
            .variants
            .iter()
            .enumerate()
            .map(|(i, variant)| {
                // Every server's written counts and this server's latest; without a records
                // database, this server's alone.
                let counts = match written.iter().find(|w| *w.variant == *variant.name) {
                    Some(w) => {
                        let mine = variant.unwritten();
                        let n = |v: i64| u64::try_from(v).unwrap_or(0);
                        VariantCounts {
                            conversations: n(w.conversations) + mine.conversations,
                            follow_ups: n(w.follow_ups) + mine.follow_ups,
                            turns: n(w.turns) + mine.turns,
                            input_tokens: n(w.input_tokens) + mine.input_tokens,
                            output_tokens: n(w.output_tokens) + mine.output_tokens,
                            cost_usd: n(w.cost_microusd) as f64 / 1e6 + mine.cost_usd,
                        }
                    }
                    None if state.records.is_some() => variant.unwritten(),
                    None => variant.counts(),
                };
                let (up, down) = thumbs_of(&variant.label);
                let vs_control = control.filter(|_| i > 0).and_then(|(c_up, c_down)| {
                    difference_interval(up, up + down, c_up, c_up + c_down).map(|d| {
                        DifferenceView {
                            difference: d.difference,
                            low: d.low,
                            high: d.high,
                            significant: d.excludes_zero(),
                        }
                    })
                });
                let n = counts.conversations;
                VariantView {
                    name: variant.name.to_string(),
                    policy: variant.tutoring.name().to_owned(),
                    weight: variant.weight,
                    conversations: n,
                    follow_ups: counts.follow_ups,
                    follow_up_rate: ratio(counts.follow_ups as f64, n),
                    turns: counts.turns,
                    turns_per_conversation: ratio(counts.turns as f64, n),
                    tokens_per_conversation: ratio(
                        (counts.input_tokens + counts.output_tokens) as f64,
                        n,
                    ),
                    cost_per_conversation_usd: ratio(counts.cost_usd, n),
                    thumbs_up: up,
                    thumbs_down: down,
                    thumbs_up_rate: ratio(up as f64, up + down),
                    vs_control,
                }
            })
            .collect();
        experiments.push(ExperimentView {
            name: experiment.name.to_string(),
            agents: experiment.agents.clone(),
            unit: match experiment.unit {
                learning_chat_engine::config::ExperimentUnit::Conversation => "conversation",
                learning_chat_engine::config::ExperimentUnit::Learner => "learner",
            }
            .to_owned(),
            start: experiment.start_ms.map(rfc3339),
            end: experiment.end_ms.map(rfc3339),
            running: experiment.is_running_at(now),
            variants,
        });
    }
    Ok(Json(ExperimentList { experiments }))
}
