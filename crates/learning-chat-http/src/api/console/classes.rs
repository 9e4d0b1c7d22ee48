//! Classes: each class's questions, learners, tokens, estimated cost and cache hit rate, today
//! and per day, and what it asked most this week.

use super::{bad_request, no_class, unavailable, Reader};
use crate::api::{ApiError, AppState};
use crate::routes;
use axum::extract::{Path, Query, State};
use axum::Json;
use learning_chat_records::keys::KeyRole;
use learning_chat_records::ledger::{day_string, today, Usage};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use utoipa::{IntoParams, ToSchema};

/// Most days one usage request covers.
const MAX_DAYS: u32 = 366;
/// Questions in a class's "most asked" list.
const TOP_QUESTIONS: u32 = 10;
/// The "this week" of the most asked questions.
const WEEK_MS: i64 = 7 * 86_400_000;

/// What a class used over some time.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Figures {
    /// Questions answered (cached ones included).
    pub requests: u64,
    /// Of those, answered from the cache.
    pub cached_requests: u64,
    /// Distinct learners that sent an `X-Learner-Id` (per day, at most the key's).
    pub learners: u64,
    /// Model input tokens.
    pub input_tokens: u64,
    /// Model output tokens.
    pub output_tokens: u64,
    /// Estimated USD at `telemetry.price_per_million_input_tokens` and
    /// `..._output_tokens` (the prices of the cost metrics).
    pub cost_usd: f64,
    /// `cached_requests / requests` (0 without requests).
    pub cache_hit_rate: f64,
}

impl Figures {
    fn of(state: &AppState, usage: Usage, learners: u64) -> Figures {
        let t = &state.settings.telemetry;
        let cost = usage.input_tokens as f64 * t.price_per_million_input_tokens / 1e6
            + usage.output_tokens as f64 * t.price_per_million_output_tokens / 1e6;
        Figures {
            requests: usage.requests,
            cached_requests: usage.cached_requests,
            learners,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cost_usd: cost,
            cache_hit_rate: if usage.requests == 0 {
                0.0
            } else {
                usage.cached_requests as f64 / usage.requests as f64
            },
        }
    }
}

/// One class (an API key its learners use).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClassSummary {
    /// The key id.
    pub key_id: String,
    /// The key's name.
    pub name: String,
    /// True once the key is revoked.
    pub revoked: bool,
    /// The class's answer policy as set (`socratic`, `hints@1`); `null` when it follows each
    /// agent's own. Set with `PUT /api/v1/admin/classes/{key_id}/policy`.
    pub policy: Option<String>,
    /// Today (UTC).
    pub today: Figures,
    /// The last 30 days, today included.
    pub last_30_days: Figures,
}

/// The classes the reader may read.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClassList {
    /// Sorted by name.
    pub classes: Vec<ClassSummary>,
}

/// One day of a class.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DayFigures {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// What the class used that day.
    #[serde(flatten)]
    pub figures: Figures,
}

/// A question and how often the class asked it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AskedQuestion {
    /// The question as stored (normalised, personal data redacted).
    pub text: String,
    /// How many times this week.
    pub count: u64,
}

/// A class's usage per day and what it asked most.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClassUsage {
    /// The key id.
    pub key_id: String,
    /// The key's name.
    pub name: String,
    /// Every day of the period, oldest first (days without traffic are zeros).
    pub days: Vec<DayFigures>,
    /// The questions asked most in the class's stored conversations over the last 7 days
    /// (a one-shot question answered from the cache stores nothing, so it is not counted).
    pub top_questions: Vec<AskedQuestion>,
}

/// How many days.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// Days back from today, today included (1 to 366, default 30).
    pub days: Option<u32>,
}

/// The classes the caller may read (a teacher's own, every learner key for an admin), with
/// today's and the last 30 days' figures.
#[utoipa::path(
    get,
    path = routes::ADMIN_CLASSES,
    responses(
        (status = 200, description = "The classes", body = ClassList),
        (status = 401, description = "Missing or unknown API key", body = crate::api::ErrorBody),
        (status = 403, description = "Not a teacher or admin key", body = crate::api::ErrorBody),
        (status = 503, description = "The records database is down", body = crate::api::ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
) -> Result<Json<ClassList>, ApiError> {
    let reader = Reader::of(&state, caller.as_ref()).await?;
    let keys = reader.records.keys().await.map_err(unavailable)?;
    let today = today();
    let totals = |rows: Vec<learning_chat_records::console::ClassTotals>| {
        rows.into_iter()
            .map(|t| (t.key_id, (t.usage, t.learners)))
            .collect::<HashMap<_, _>>()
    };
    let day = totals(
        reader
            .records
            .usage_by_key(&day_string(today))
            .await
            .map_err(unavailable)?,
    );
    let month = totals(
        reader
            .records
            .usage_by_key(&day_string(today - 29))
            .await
            .map_err(unavailable)?,
    );
    let figures = |map: &HashMap<String, (Usage, u64)>, id: &str| {
        let (usage, learners) = map.get(id).copied().unwrap_or_default();
        Figures::of(&state, usage, learners)
    };
    let mut classes: Vec<ClassSummary> = keys
        .into_iter()
        // An admin's classes are the keys learners use; a teacher's, those it was given.
        .filter(|k| match reader.key.role {
            KeyRole::Admin => k.role == KeyRole::Learner,
            _ => reader.reads(&k.id),
        })
        .map(|k| ClassSummary {
            today: figures(&day, &k.id),
            last_30_days: figures(&month, &k.id),
            revoked: k.revoked_at.is_some(),
            policy: k.policy,
            key_id: k.id,
            name: k.name,
        })
        .collect();
    classes.sort_by(|a, b| a.name.cmp(&b.name).then(a.key_id.cmp(&b.key_id)));
    Ok(Json(ClassList { classes }))
}

/// One class's figures per day (for the console's charts) and its most asked questions this
/// week. 404 for a class that is not the caller's.
#[utoipa::path(
    get,
    path = routes::ADMIN_CLASS_USAGE,
    params(("key_id" = String, Path, description = "The class's key id"), UsageQuery),
    responses(
        (status = 200, description = "Per day, oldest first", body = ClassUsage),
        (status = 400, description = "Bad `days`", body = crate::api::ErrorBody),
        (status = 403, description = "Not a teacher or admin key", body = crate::api::ErrorBody),
        (status = 404, description = "No such class, or not the caller's", body = crate::api::ErrorBody),
        (status = 503, description = "The records database is down", body = crate::api::ErrorBody),
    )
)]
pub async fn usage(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    Path(key_id): Path<String>,
    query: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ClassUsage>, ApiError> {
    let reader = Reader::of(&state, caller.as_ref()).await?;
    let Query(query) = query.map_err(|e| bad_request("invalid_query", &e.body_text()))?;
    let days = query.days.unwrap_or(30);
    if days == 0 || days > MAX_DAYS {
        return Err(bad_request("invalid_days", "`days` must be 1 to 366"));
    }
    if !reader.reads(&key_id) {
        return Err(no_class());
    }
    let key = reader
        .records
        .key(&key_id)
        .await
        .map_err(unavailable)?
        .ok_or_else(no_class)?;
    let today = today();
    let first = today - i64::from(days - 1);
    let stored = reader
        .records
        .class_days(&key_id, &day_string(first))
        .await
        .map_err(unavailable)?;
    let mut by_day: HashMap<String, (Usage, u64)> = stored
        .into_iter()
        .map(|d| (d.day, (d.usage, d.learners)))
        .collect();
    let days = (first..=today)
        .map(|n| {
            let day = day_string(n);
            let (usage, learners) = by_day.remove(&day).unwrap_or_default();
            DayFigures {
                day,
                figures: Figures::of(&state, usage, learners),
            }
        })
        .collect();
    let week = learning_chat_records::now_ms() - WEEK_MS;
    let top_questions = reader
        .records
        .top_questions(&key_id, week, TOP_QUESTIONS)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|q| AskedQuestion {
            text: q.text,
            count: q.count,
        })
        .collect();
    Ok(Json(ClassUsage {
        key_id,
        name: key.name,
        days,
        top_questions,
    }))
}
