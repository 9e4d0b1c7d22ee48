//! Keys (admins): list with last use, create (the secret shown once), edit limits, weight,
//! classes and retention, revoke — what `learning-chat keys` does, audited the same way (as
//! `admin:<key id>` instead of `cli`). Every server picks a change up within
//! `database.key_refresh_ms`.

use super::{unavailable, Reader};
use crate::api::{ApiError, ApiJson, AppState};
use crate::auth::keys as secrets;
use crate::routes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use learning_chat_records::keys::{ApiKey, KeyEdit, KeyLimits, KeyRole};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Longest key name.
const MAX_NAME_CHARS: usize = 200;

/// A key as the console shows it (never its secret or hash).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyView {
    /// Public id (`key_...`).
    pub id: String,
    /// Who it is for.
    pub name: String,
    /// `learner`, `teacher` or `admin`.
    pub role: String,
    /// A teacher's classes (key ids).
    pub classes: Vec<String>,
    /// Agents it may ask; empty allows every agent.
    pub agents: Vec<String>,
    /// Its limits (0 = no limit).
    #[schema(value_type = Object)]
    pub limits: KeyLimits,
    /// Its share of a contended queue.
    pub weight: u32,
    /// Requests must name their learner.
    pub require_learner: bool,
    /// Days its conversations are kept after their last activity; absent: `records.retention_days`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
    /// Nothing of it is swept.
    pub legal_hold: bool,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339 of the last request seen (to within a minute); absent if never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
    /// RFC 3339; absent while the key is valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

fn secs(unix: u64) -> String {
    crate::api::rfc3339(unix.saturating_mul(1000))
}

impl From<ApiKey> for KeyView {
    fn from(k: ApiKey) -> KeyView {
        KeyView {
            id: k.id,
            name: k.name,
            role: k.role.as_str().to_owned(),
            classes: k.classes,
            agents: k.agents,
            limits: k.limits,
            weight: k.weight,
            require_learner: k.require_learner,
            retention_days: k.retention_days,
            legal_hold: k.legal_hold,
            created_at: secs(k.created_at),
            last_used_at: k.last_used_at.map(secs),
            revoked_at: k.revoked_at.map(secs),
        }
    }
}

/// Every key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    /// Oldest first.
    pub keys: Vec<KeyView>,
}

/// A key to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Who it is for, e.g. a class (1 to 200 characters).
    pub name: String,
    /// `learner` (default), `teacher` or `admin`.
    #[serde(default)]
    pub role: Option<String>,
    /// A teacher's classes (key ids).
    #[serde(default)]
    pub classes: Vec<String>,
    /// Agents it may ask; empty (default) allows every agent.
    #[serde(default)]
    pub agents: Vec<String>,
    /// Its limits (each 0 or absent = no limit).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub limits: KeyLimits,
    /// Its share of a contended queue (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
    /// Requests must name their learner.
    #[serde(default)]
    pub require_learner: bool,
    /// Days its conversations are kept (default `records.retention_days`; 0 keeps them).
    #[serde(default)]
    pub retention_days: Option<u32>,
    /// Put it on legal hold.
    #[serde(default)]
    pub legal_hold: bool,
}

/// A key just created, with its secret: shown this once, never again.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    /// The key.
    pub key: KeyView,
    /// The secret to give its user (`Authorization: Bearer <secret>`).
    pub secret: String,
}

/// What to change in a key; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditKey {
    /// A new name.
    #[serde(default)]
    pub name: Option<String>,
    /// New limits (all of them).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub limits: Option<KeyLimits>,
    /// A new weight (at least 1).
    #[serde(default)]
    pub weight: Option<u32>,
    /// A teacher's classes.
    #[serde(default)]
    pub classes: Option<Vec<String>>,
    /// Days kept; `null` goes back to `records.retention_days`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>)]
    pub retention_days: Option<Option<u32>>,
    /// Legal hold on or off.
    #[serde(default)]
    pub legal_hold: Option<bool>,
}

/// A field that is present (`null` included) is `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
    Option::<u32>::deserialize(d).map(Some)
}

fn invalid(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let chars = name.trim().chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err(invalid(
            "invalid_name",
            "`name` must be 1 to 200 characters",
        ));
    }
    Ok(())
}

fn no_key() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "key_not_found", "no such key")
}

/// Every key (admins).
#[utoipa::path(
    get,
    path = routes::ADMIN_KEYS,
    responses(
        (status = 200, description = "Every key, oldest first", body = KeyList),
        (status = 403, description = "Not an admin key (`admin_required`)", body = crate::api::ErrorBody),
        (status = 503, description = "The records database is down", body = crate::api::ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
) -> Result<Json<KeyList>, ApiError> {
    let reader = Reader::of(&state, caller.as_ref()).await?;
    reader.admin()?;
    let keys = reader.records.keys().await.map_err(unavailable)?;
    Ok(Json(KeyList {
        keys: keys.into_iter().map(KeyView::from).collect(),
    }))
}

/// Creates a key (admins); the answer carries its secret, shown this once. Audited as
/// `key.created`.
#[utoipa::path(
    post,
    path = routes::ADMIN_KEYS,
    request_body = CreateKey,
    responses(
        (status = 201, description = "Created; the secret is in the body, this once", body = CreatedKey),
        (status = 400, description = "Malformed JSON", body = crate::api::ErrorBody),
        (status = 403, description = "Not an admin key (`admin_required`)", body = crate::api::ErrorBody),
        (status = 422, description = "Bad name, role or weight", body = crate::api::ErrorBody),
        (status = 503, description = "The records database is down", body = crate::api::ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    body: Result<ApiJson<CreateKey>, ApiError>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let reader = Reader::of(&state, caller.as_ref()).await?;
    reader.admin()?;
    let ApiJson(body) = body?;
    check_name(&body.name)?;
    let role = match body.role.as_deref().unwrap_or("learner") {
        "learner" => KeyRole::Learner,
        "teacher" => KeyRole::Teacher,
        "admin" => KeyRole::Admin,
        _ => {
            return Err(invalid(
                "invalid_role",
                "`role` must be learner, teacher or admin",
            ))
        }
    };
    if body.weight == Some(0) {
        return Err(invalid("invalid_weight", "`weight` must be at least 1"));
    }
    // Keys are made only with auth on (the console needs a key to be reached at all).
    let Some(auth) = &state.auth else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "console_needs_keys",
            "keys need auth.mode = \"required\"",
        ));
    };
    let secret = secrets::generate_secret();
    let key = ApiKey {
        id: secrets::generate_id(),
        name: body.name.trim().to_owned(),
        hash: auth.hash_secret(&secret),
        agents: body.agents,
        limits: body.limits,
        weight: body.weight.unwrap_or(1),
        require_learner: body.require_learner,
        created_at: secrets::unix_now(),
        last_used_at: None,
        revoked_at: None,
        role,
        // Set apart, with `PUT /api/v1/admin/classes/{key_id}/policy`.
        policy: None,
        classes: body.classes,
        retention_days: body.retention_days,
        legal_hold: body.legal_hold,
    };
    let created = reader
        .records
        .create_key(&key, &reader.actor())
        .await
        .map_err(unavailable)?;
    if !created {
        // 48 random bits of id and 256 of secret: only a broken generator gets here.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "key_exists",
            "a key with this id exists; try again",
        ));
    }
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key: KeyView::from(key),
            secret,
        }),
    ))
}

/// Changes a key's name, limits, weight, classes, retention or legal hold (admins). Audited as
/// `key.updated` with the fields changed.
#[utoipa::path(
    patch,
    path = routes::ADMIN_KEY,
    params(("key_id" = String, Path, description = "The key id")),
    request_body = EditKey,
    responses(
        (status = 200, description = "The key as it is now", body = KeyView),
        (status = 400, description = "Malformed JSON", body = crate::api::ErrorBody),
        (status = 403, description = "Not an admin key (`admin_required`)", body = crate::api::ErrorBody),
        (status = 404, description = "No such key", body = crate::api::ErrorBody),
        (status = 422, description = "Bad name or weight", body = crate::api::ErrorBody),
        (status = 503, description = "The records database is down", body = crate::api::ErrorBody),
    )
)]
pub async fn edit(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    Path(id): Path<String>,
    body: Result<ApiJson<EditKey>, ApiError>,
) -> Result<Json<KeyView>, ApiError> {
    let reader = Reader::of(&state, caller.as_ref()).await?;
    reader.admin()?;
    let ApiJson(body) = body?;
    if let Some(name) = &body.name {
        check_name(name)?;
    }
    if body.weight == Some(0) {
        return Err(invalid("invalid_weight", "`weight` must be at least 1"));
    }
    let edit = KeyEdit {
        name: body.name.map(|n| n.trim().to_owned()),
        limits: body.limits,
        weight: body.weight,
        classes: body.classes,
        retention_days: body.retention_days,
        legal_hold: body.legal_hold,
    };
    let key = reader
        .records
        .update_key(&id, &edit, &reader.actor())
        .await
        .map_err(unavailable)?
        .ok_or_else(no_key)?;
    Ok(Json(KeyView::from(key)))
}

/// Revokes a key (admins): every server refuses it within `database.key_refresh_ms`. Audited
/// as `key.revoked`; revoking twice keeps the first time.
#[utoipa::path(
    delete,
    path = routes::ADMIN_KEY,
    params(("key_id" = String, Path, description = "The key id")),
    responses(
        (status = 200, description = "The key, revoked", body = KeyView),
        (status = 403, description = "Not an admin key (`admin_required`)", body = crate::api::ErrorBody),
        (status = 404, description = "No such key", body = crate::api::ErrorBody),
        (status = 503, description = "The records database is down", body = crate::api::ErrorBody),
    )
)]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let reader = Reader::of(&state, caller.as_ref()).await?;
    reader.admin()?;
    let key = reader
        .records
        .revoke_key(&id, &reader.actor())
        .await
        .map_err(unavailable)?
        .ok_or_else(no_key)?;
    Ok(Json(KeyView::from(key)))
}
