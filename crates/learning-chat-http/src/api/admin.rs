//! Admin endpoints: only for keys created with `--role admin`.

use super::{rfc3339, ApiError, AppState};
use crate::routes;
use axum::extract::{Query, State};
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

fn bad_request(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

fn since_ms(since: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = since.parse::<i64>() {
        return Ok(ms);
    }
    let at = humantime::parse_rfc3339_weak(since).map_err(|_| {
        bad_request(
            "invalid_since",
            "`since` must be RFC 3339 or Unix milliseconds",
        )
    })?;
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    Ok(i64::try_from(ms).unwrap_or(i64::MAX))
}

fn cursor(cursor: &str) -> Result<(i64, String), ApiError> {
    cursor
        .split_once('.')
        .and_then(|(at, id)| Some((at.parse().ok()?, id.to_owned())))
        .ok_or_else(|| {
            bad_request(
                "invalid_cursor",
                "`cursor` must be a `next_cursor` as given",
            )
        })
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
