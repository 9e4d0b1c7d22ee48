//! Data rights (admins): everything stored about one learner as JSON (access, GDPR art. 15),
//! and its erasure everywhere (art. 17): each conversation the way `DELETE
//! /api/v1/conversations/{id}` erases one (the database every server reads it from, and the
//! answers the model made for it from the shared cache), then the learner's flags and usage
//! rows. Both are written to the audit log under a pseudonym, never the learner id itself.
//!
//! A learner is named by the `X-Learner-Id` the app sends (hashed here under every key, as the
//! servers store it) or, with `hashed=true`, by a hashed id as the console's lists show it.

use super::{at, unavailable, Reader};
use crate::api::admin::FlagView;
use crate::api::{ApiError, AppState, TurnView};
use crate::routes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// How the learner is named.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LearnerQuery {
    /// `true` when `learner_id` is a hashed id as the console's lists show it (one key's);
    /// otherwise it is the `X-Learner-Id` the app sends, looked up under every key.
    #[serde(default)]
    pub hashed: bool,
}

/// One conversation in an export.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExportedConversation {
    /// Its stored id.
    pub id: String,
    /// The class (key id).
    pub class: String,
    /// The agent.
    pub agent_id: String,
    /// When it began (RFC 3339).
    pub created_at: String,
    /// Every turn, oldest first.
    pub turns: Vec<TurnView>,
}

/// One day of usage in an export.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExportedUsage {
    /// UTC day.
    pub day: String,
    /// The class (key id).
    pub class: String,
    /// Questions.
    pub requests: u64,
    /// Of those, answered from the cache.
    pub cached_requests: u64,
    /// Model input tokens.
    pub input_tokens: u64,
    /// Model output tokens.
    pub output_tokens: u64,
}

/// Everything stored about one learner.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LearnerExport {
    /// The learner id as asked for.
    pub learner_id: String,
    /// When this export was made (RFC 3339).
    pub exported_at: String,
    /// The hashed ids looked up (one per key; how the servers store the learner).
    pub stored_as: Vec<String>,
    /// Their conversations with every turn.
    pub conversations: Vec<ExportedConversation>,
    /// The safety flags their messages raised.
    pub flags: Vec<FlagView>,
    /// Their usage per day and class.
    pub usage: Vec<ExportedUsage>,
}

/// What an erasure removed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Erased {
    /// Conversations (with their turns).
    pub conversations: u64,
    /// Flags.
    pub flags: u64,
    /// Usage rows.
    pub usage_rows: u64,
}

/// The hashed ids `learner_id` is stored under, and the audit log's pseudonym for it.
async fn stored_as(
    state: &AppState,
    reader: &Reader,
    learner_id: &str,
    hashed: bool,
) -> Result<(Vec<String>, String), ApiError> {
    if learner_id.is_empty() || learner_id.len() > 256 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_learner_id",
            "the learner id must be 1 to 256 bytes",
        ));
    }
    let Some(auth) = &state.auth else {
        return Ok((vec![learner_id.to_owned()], format!("learner:{learner_id}")));
    };
    if hashed {
        return Ok((vec![learner_id.to_owned()], format!("learner:{learner_id}")));
    }
    let keys = reader.records.keys().await.map_err(unavailable)?;
    let hashes = keys
        .iter()
        .map(|k| auth.learner_hash(&k.id, learner_id))
        .collect();
    // Under no key: the same person is one pseudonym in the log whatever their classes.
    Ok((
        hashes,
        format!("learner:{}", auth.learner_hash("", learner_id)),
    ))
}

/// Everything stored about one learner, as JSON (admins); audited as `learner.exported`.
#[utoipa::path(
    get,
    path = routes::ADMIN_LEARNER_EXPORT,
    params(("learner_id" = String, Path, description = "The `X-Learner-Id` (or, with `hashed=true`, a hashed id)"), LearnerQuery),
    responses(
        (status = 200, description = "Everything stored about the learner", body = LearnerExport),
        (status = 403, description = "Not an admin key (`admin_required`)", body = crate::api::ErrorBody),
        (status = 503, description = "The records database is down", body = crate::api::ErrorBody),
    )
)]
pub async fn export(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    Path(learner_id): Path<String>,
    query: Result<Query<LearnerQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<LearnerExport>, ApiError> {
    let reader = Reader::of(&state, caller.as_ref()).await?;
    reader.admin()?;
    let Query(query) = query.map_err(|e| super::bad_request("invalid_query", &e.body_text()))?;
    let (hashes, subject) = stored_as(&state, &reader, &learner_id, query.hashed).await?;
    let data = reader
        .records
        .learner_data(&hashes)
        .await
        .map_err(unavailable)?;
    let detail = format!(
        "conversations={} flags={} usage_rows={}",
        data.conversations.len(),
        data.flags.len(),
        data.usage.len()
    );
    reader
        .records
        .audit(&reader.actor(), "learner.exported", &subject, &detail)
        .await
        .map_err(unavailable)?;
    let conversations = data
        .conversations
        .into_iter()
        .map(|c| ExportedConversation {
            class: c.owner.unwrap_or_default(),
            agent_id: c.agent_id,
            created_at: at(c.created_at_ms),
            turns: c
                .turns
                .into_iter()
                .map(|t| TurnView {
                    role: if t.role == "model" {
                        learning_chat_engine::providers::Role::Model
                    } else {
                        learning_chat_engine::providers::Role::User
                    },
                    text: t.text,
                    at: at(t.at_ms),
                    cached: t.cached,
                    model: t.model,
                })
                .collect(),
            id: c.id,
        })
        .collect();
    Ok(Json(LearnerExport {
        learner_id,
        exported_at: at(learning_chat_records::now_ms()),
        stored_as: hashes,
        conversations,
        flags: data.flags.into_iter().map(FlagView::from).collect(),
        usage: data
            .usage
            .into_iter()
            .map(|(day, class, u)| ExportedUsage {
                day,
                class,
                requests: u.requests,
                cached_requests: u.cached_requests,
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
            })
            .collect(),
    }))
}

/// Erases everything stored about one learner, everywhere (admins): each conversation from
/// the database and the shared cache, then their flags and usage; audited as
/// `learner.erased`. Afterwards their conversations are 404 on every server.
#[utoipa::path(
    delete,
    path = routes::ADMIN_LEARNER,
    params(("learner_id" = String, Path, description = "The `X-Learner-Id` (or, with `hashed=true`, a hashed id)"), LearnerQuery),
    responses(
        (status = 200, description = "What was erased", body = Erased),
        (status = 403, description = "Not an admin key (`admin_required`)", body = crate::api::ErrorBody),
        (status = 503, description = "The records database or Redis is down: nothing or part erased; retry", body = crate::api::ErrorBody),
    )
)]
pub async fn erase(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    Path(learner_id): Path<String>,
    query: Result<Query<LearnerQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Erased>, ApiError> {
    let reader = Reader::of(&state, caller.as_ref()).await?;
    reader.admin()?;
    let Query(query) = query.map_err(|e| super::bad_request("invalid_query", &e.body_text()))?;
    let (hashes, subject) = stored_as(&state, &reader, &learner_id, query.hashed).await?;
    let ids = reader
        .records
        .learner_conversation_ids(&hashes)
        .await
        .map_err(unavailable)?;
    let mut conversations = 0;
    for id in &ids {
        // The cache first, then the row: a failure leaves the row, so a retry finds it again.
        if state.chat.erase_stored_conversation(id).await? {
            conversations += 1;
        }
    }
    let rest = reader
        .records
        .erase_learner(
            &hashes,
            &reader.actor(),
            &subject,
            learning_chat_records::now_ms(),
        )
        .await
        .map_err(unavailable)?;
    Ok(Json(Erased {
        conversations: conversations + rest.conversations,
        flags: rest.flags,
        usage_rows: rest.usage_rows,
    }))
}
