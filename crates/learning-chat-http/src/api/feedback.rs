//! Learners rate answers: thumbs up or down, with an optional comment, kept in the records
//! database with the conversation's policy and experiment variant, and counted in
//! `learning_chat_feedback_total{agent,policy,variant,rating}`.

use super::{ApiError, ApiJson, AppState};
use crate::routes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use learning_chat_records::feedback::FeedbackRecord;
use metrics::{counter, describe_counter};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Ratings of answers, by the conversation's agent, policy and variant.
pub const FEEDBACK: &str = "learning_chat_feedback_total";

/// Longest comment kept, in characters.
pub const MAX_COMMENT_CHARS: usize = 2000;

/// A rating of one answer.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    /// Which exchange of the conversation (an answer's `turn`: 1 for the first question).
    #[schema(example = 1)]
    pub turn: Option<u32>,
    /// `up` or `down`.
    #[schema(example = "up")]
    pub rating: Option<String>,
    /// Why, in the learner's words (at most 2000 characters).
    #[serde(default)]
    pub comment: Option<String>,
}

/// A rating as stored.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FeedbackView {
    /// Which exchange of the conversation.
    pub turn: u32,
    /// `learner` (thumbs) or `teacher` (1-5).
    pub rater: String,
    /// `up` or `down` (a learner's), `1`..`5` (a teacher's).
    pub rating: String,
    /// The comment, empty when none.
    pub comment: String,
    /// When (RFC 3339, UTC).
    pub at: String,
}

impl From<FeedbackRecord> for FeedbackView {
    fn from(f: FeedbackRecord) -> FeedbackView {
        FeedbackView {
            turn: u32::try_from(f.turn).unwrap_or(0),
            rater: f.rater,
            rating: f.rating,
            comment: f.comment,
            at: super::rfc3339(u64::try_from(f.at_ms).unwrap_or(0)),
        }
    }
}

fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

fn records(state: &AppState) -> Result<&learning_chat_records::Records, ApiError> {
    state.records.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_records_database",
            "feedback is kept in the records database, and none is configured",
        )
    })
}

fn unavailable(error: &learning_chat_records::RecordsError) -> ApiError {
    tracing::warn!(%error, "feedback");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "records_unavailable",
        "the records database is unavailable",
    )
}

/// Rates one answer of a conversation (the caller's own: another key's is 404). A second
/// rating of the same answer replaces the first.
#[utoipa::path(
    post,
    path = routes::CONVERSATION_FEEDBACK,
    params(("conversation_id" = String, Path, description = "From an answer's `conversation_id`")),
    request_body = FeedbackRequest,
    responses(
        (status = 200, description = "The rating, as stored", body = FeedbackView),
        (status = 400, description = "Malformed JSON", body = super::ErrorBody),
        (status = 404, description = "Unknown, erased or expired conversation", body = super::ErrorBody),
        (status = 422, description = "Missing or bad `turn` (`invalid_turn`: not an answered turn of the conversation), `rating` (`invalid_rating`) or a comment too long (`comment_too_long`)", body = super::ErrorBody),
        (status = 503, description = "No records database, or it (or the conversation store) is down", body = super::ErrorBody),
    )
)]
pub async fn post_feedback(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<ApiJson<FeedbackRequest>, ApiError>,
) -> Result<Json<FeedbackView>, ApiError> {
    let Path(id) = path?;
    let ApiJson(request) = body?;
    let rating = match request.rating.as_deref() {
        Some(rating @ ("up" | "down")) => rating,
        _ => {
            return Err(invalid(
                "invalid_rating",
                "`rating` must be \"up\" or \"down\"",
            ))
        }
    };
    let comment = request.comment.unwrap_or_default();
    if comment.chars().count() > MAX_COMMENT_CHARS {
        return Err(invalid(
            "comment_too_long",
            format!("`comment` is limited to {MAX_COMMENT_CHARS} characters"),
        ));
    }
    let records = records(&state)?;
    let owner = caller.as_ref().map(|c| &*c.key_id);
    let conversation = state.chat.conversation(&id, owner).await?;
    let answered = u32::try_from(conversation.turns.len() / 2).unwrap_or(u32::MAX);
    let turn = request
        .turn
        .filter(|turn| (1..=answered).contains(turn))
        .ok_or_else(|| {
            invalid(
                "invalid_turn",
                format!("`turn` must be an answered turn of this conversation: 1 to {answered}"),
            )
        })?;
    let stored = state
        .chat
        .conversations()
        .stored_id_for(&id, owner)
        .ok_or_else(ApiError::not_found)?;
    let record = FeedbackRecord {
        conversation: stored,
        turn: i64::from(turn),
        rater: "learner".to_owned(),
        rating: rating.to_owned(),
        comment,
        at_ms: learning_chat_records::now_ms(),
        key_id: owner.unwrap_or("").to_owned(),
        agent_id: conversation.agent_id,
        policy: conversation.policy,
        variant: conversation.variant,
    };
    records
        .put_feedback(&record)
        .await
        .map_err(|e| unavailable(&e))?;
    counted(&record);
    Ok(Json(FeedbackView::from(record)))
}

/// Counts a rating. The labels are bounded by the configuration: agents, policies, variants.
fn counted(record: &FeedbackRecord) {
    let variant = if record.variant.is_empty() {
        "none"
    } else {
        &record.variant
    };
    let policy = if record.policy.is_empty() {
        "none"
    } else {
        &record.policy
    };
    counter!(
        FEEDBACK,
        "agent" => record.agent_id.clone(),
        "policy" => policy.to_owned(),
        "variant" => variant.to_owned(),
        "rating" => record.rating.clone(),
    )
    .increment(1);
}

/// The ratings of the conversation `id` (the caller's), for its `GET`: none without a records
/// database.
pub(crate) async fn of_conversation(
    state: &AppState,
    id: &str,
    owner: Option<&str>,
) -> Result<Vec<FeedbackView>, ApiError> {
    let (Some(records), Some(stored)) = (
        &state.records,
        state.chat.conversations().stored_id_for(id, owner),
    ) else {
        return Ok(Vec::new());
    };
    let ratings = records
        .conversation_feedback(&stored)
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(ratings.into_iter().map(FeedbackView::from).collect())
}

/// Describes these metrics (their help text) to the installed recorder.
pub(crate) fn describe() {
    describe_counter!(
        FEEDBACK,
        "Answers rated by learners, by agent, policy, experiment variant and rating."
    );
}
