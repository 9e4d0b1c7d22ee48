//! The API behind the teacher/admin console (`/console`): one module per section of the page
//! (classes, conversations, keys, data rights, audit), each with its handlers and types; a new
//! section is a new module here, its routes in [`routes`] and its paths in [`ConsoleApi`].
//!
//! Who reads what is decided here once, by [`Reader`]: a `teacher` key reads the classes (keys)
//! it was given and gets 404 for any other, as if it did not exist; an `admin` key reads
//! everything and manages keys; a `learner` key gets 403. The key is read from the records
//! database on each console request (not the servers' in-memory copy), so a class taken from a
//! teacher is gone at its next click.

pub mod audit;
pub mod classes;
pub mod conversations;
pub mod keys;
pub mod learners;

use super::{ApiError, AppState};
use crate::routes;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use learning_chat_records::keys::{ApiKey, KeyRole};
use learning_chat_records::{Records, RecordsError};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

/// The console's routes (under the API's auth middleware).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(routes::ADMIN_ME, get(me))
        .route(routes::ADMIN_CLASSES, get(classes::list))
        .route(routes::ADMIN_CLASS_USAGE, get(classes::usage))
        .route(routes::ADMIN_CONVERSATIONS, get(conversations::list))
        .route(routes::ADMIN_CONVERSATION, get(conversations::transcript))
        .route(
            routes::ADMIN_CONVERSATION_FEEDBACK,
            post(conversations::rate),
        )
        .route(routes::ADMIN_FLAG_REVIEW, post(conversations::review))
        .route(routes::ADMIN_KEYS, get(keys::list).post(keys::create))
        .route(
            routes::ADMIN_KEY,
            axum::routing::patch(keys::edit).delete(keys::revoke),
        )
        .route(routes::ADMIN_LEARNER_EXPORT, get(learners::export))
        .route(
            routes::ADMIN_LEARNER,
            axum::routing::delete(learners::erase),
        )
        .route(routes::ADMIN_AUDIT, get(audit::list))
}

/// The console's part of the OpenAPI description (merged into the API's by [`ConsolePaths`]).
#[derive(OpenApi)]
#[openapi(
    paths(
        me,
        classes::list,
        classes::usage,
        conversations::list,
        conversations::transcript,
        conversations::review,
        conversations::rate,
        keys::list,
        keys::create,
        keys::edit,
        keys::revoke,
        learners::export,
        learners::erase,
        audit::list
    ),
    components(schemas(
        Me,
        classes::Figures,
        classes::ClassSummary,
        classes::ClassList,
        classes::DayFigures,
        classes::AskedQuestion,
        classes::ClassUsage,
        conversations::ConversationRow,
        conversations::ConversationPage,
        conversations::ReviewView,
        conversations::ReviewedFlag,
        conversations::Transcript,
        conversations::ReviewRequest,
        conversations::RatingRequest,
        keys::KeyView,
        keys::KeyList,
        keys::CreateKey,
        keys::CreatedKey,
        keys::EditKey,
        learners::LearnerExport,
        learners::ExportedConversation,
        learners::ExportedUsage,
        learners::Erased,
        audit::AuditEntryView,
        audit::AuditPage
    ))
)]
pub struct ConsoleApi;

/// Merges [`ConsoleApi`] into the API's description (before the key scheme is added to every
/// `/api/` operation).
pub struct ConsolePaths;

impl utoipa::Modify for ConsolePaths {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi.merge(ConsoleApi::openapi());
    }
}

/// The signed-in console user.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Me {
    /// The key id.
    pub key_id: String,
    /// The key's name.
    pub name: String,
    /// `teacher` or `admin`.
    pub role: String,
    /// A teacher's classes (key ids); empty for an admin, who reads every class.
    pub classes: Vec<String>,
    /// True when the key may read the experiments' results (`GET /api/v1/admin/experiments`).
    pub experiments: bool,
}

/// Who is signed in to the console, checked: a teacher or an admin key, and the records
/// database its data is in.
pub(crate) struct Reader {
    /// The caller's key as stored now.
    pub key: ApiKey,
    /// The database.
    pub records: Records,
}

fn forbidden(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, message)
}

pub(crate) fn bad_request(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

/// 503 for a database that did not answer (logged once here, never echoed).
pub(crate) fn unavailable(error: RecordsError) -> ApiError {
    tracing::warn!(%error, "console: records database");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "records_unavailable",
        "the records database is unavailable",
    )
}

/// The 404 of a class that is not the reader's, the same as of one that does not exist.
pub(crate) fn no_class() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "class_not_found", "no such class")
}

impl Reader {
    /// The reader of a console request: 403 without a key (auth off), for a `learner` key, or
    /// without a records database.
    pub(crate) async fn of(
        state: &AppState,
        caller: Option<&axum::Extension<crate::auth::Caller>>,
    ) -> Result<Reader, ApiError> {
        let Some(axum::Extension(caller)) = caller else {
            return Err(forbidden(
                "console_needs_keys",
                "the console needs API keys (auth.mode = \"required\") and a teacher or admin key",
            ));
        };
        if caller.role == KeyRole::Learner {
            return Err(forbidden(
                "console_role_required",
                "the console needs a teacher or admin key (learning-chat keys create --role teacher|admin)",
            ));
        }
        let Some(records) = state.records.clone() else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_records_database",
                "the console reads the records database, and none is configured",
            ));
        };
        let key = records
            .key(&caller.key_id)
            .await
            .map_err(unavailable)?
            .filter(|k| k.revoked_at.is_none() && k.role != KeyRole::Learner)
            .ok_or_else(|| {
                forbidden(
                    "console_role_required",
                    "the console needs a teacher or admin key",
                )
            })?;
        Ok(Reader { key, records })
    }

    /// Only an admin gets past this (403 `admin_required` for a teacher).
    pub(crate) fn admin(&self) -> Result<(), ApiError> {
        if self.key.role == KeyRole::Admin {
            Ok(())
        } else {
            Err(forbidden(
                "admin_required",
                "this needs an admin key (learning-chat keys create --role admin)",
            ))
        }
    }

    /// True when the reader may read class `key_id`.
    pub(crate) fn reads(&self, key_id: &str) -> bool {
        self.key.reads_class(key_id)
    }

    /// The classes a teacher may read; `None` for an admin (every class).
    pub(crate) fn scope(&self) -> Option<Vec<String>> {
        match self.key.role {
            KeyRole::Admin => None,
            _ => Some(self.key.classes.clone()),
        }
    }

    /// How the audit log names the reader: `admin:<key id>` or `teacher:<key id>`.
    pub(crate) fn actor(&self) -> String {
        format!("{}:{}", self.key.role.as_str(), self.key.id)
    }
}

/// Who is signed in (the console's first call, to choose what to show).
#[utoipa::path(
    get,
    path = routes::ADMIN_ME,
    responses(
        (status = 200, description = "The signed-in teacher or admin", body = Me),
        (status = 401, description = "Missing or unknown API key", body = super::ErrorBody),
        (status = 403, description = "A learner key (`console_role_required`), or auth is off", body = super::ErrorBody),
    )
)]
pub async fn me(
    axum::extract::State(state): axum::extract::State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
) -> Result<Json<Me>, ApiError> {
    let reader = Reader::of(&state, caller.as_ref()).await?;
    let experiments = super::admin::may_read_experiments(caller.as_deref());
    Ok(Json(Me {
        experiments,
        key_id: reader.key.id.clone(),
        name: reader.key.name.clone(),
        role: reader.key.role.as_str().to_owned(),
        classes: match reader.key.role {
            KeyRole::Admin => Vec::new(),
            _ => reader.key.classes.clone(),
        },
    }))
}

/// Reads `since` as RFC 3339 or Unix milliseconds.
pub(crate) fn since_ms(since: &str) -> Result<i64, ApiError> {
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

/// Reads a page's `cursor` (a `next_cursor` as given: `<unix ms>.<id>`).
pub(crate) fn cursor(cursor: &str) -> Result<(i64, String), ApiError> {
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

/// RFC 3339 of a Unix millisecond.
pub(crate) fn at(ms: i64) -> String {
    super::rfc3339(u64::try_from(ms).unwrap_or(0))
}
