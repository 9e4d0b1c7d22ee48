//! The audit log (admins): who read which transcript, exported or erased which learner,
//! created, changed or revoked which key, reviewed which flag. Read-only: the service has no
//! way to change or delete an entry.

use super::{at, bad_request, unavailable, Reader};
use crate::api::{ApiError, AppState};
use crate::routes;
use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// One entry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditEntryView {
    /// When (RFC 3339).
    pub at: String,
    /// Who: `cli`, `admin:<key id>`, `teacher:<key id>`, `retention`, ...
    pub actor: String,
    /// What: `key.created`, `transcript.read`, `learner.erased`, ...
    pub action: String,
    /// To what: a key id, a conversation id, a learner's pseudonym.
    pub subject: String,
    /// Anything else (counts, fields changed, a review's note).
    pub detail: String,
}

/// The newest entries.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    /// Newest first.
    pub entries: Vec<AuditEntryView>,
}

/// How many entries.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries (1 to 1000, default 100).
    pub limit: Option<u32>,
}

/// The newest entries of the audit log (admins).
#[utoipa::path(
    get,
    path = routes::ADMIN_AUDIT,
    params(AuditQuery),
    responses(
        (status = 200, description = "Newest first", body = AuditPage),
        (status = 400, description = "Bad `limit`", body = crate::api::ErrorBody),
        (status = 403, description = "Not an admin key (`admin_required`)", body = crate::api::ErrorBody),
        (status = 503, description = "The records database is down", body = crate::api::ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let reader = Reader::of(&state, caller.as_ref()).await?;
    reader.admin()?;
    let Query(query) = query.map_err(|e| bad_request("invalid_query", &e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(bad_request("invalid_limit", "`limit` must be 1 to 1000"));
    }
    let entries = reader
        .records
        .audit_log(limit)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|e| AuditEntryView {
            at: at(e.at_ms),
            actor: e.actor,
            action: e.action,
            subject: e.subject,
            detail: e.detail,
        })
        .collect();
    Ok(Json(AuditPage { entries }))
}
