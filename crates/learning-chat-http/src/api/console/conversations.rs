//! Conversations: a filtered, paginated list; one transcript with its flags inline (every read
//! audited); a flag marked reviewed with a note.

use super::{at, bad_request, cursor, no_class, since_ms, unavailable, Reader};
use crate::api::admin::FlagView;
use crate::api::feedback::{FeedbackView, MAX_COMMENT_CHARS};
use crate::api::{ApiError, ApiJson, AppState, TurnView};
use crate::routes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use learning_chat_records::console::{ConversationFilter, ConversationSummary, FlagReview};
use learning_chat_records::feedback::FeedbackRecord;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Most conversations on one page.
const MAX_PAGE: u32 = 200;
/// Conversations on a page when `limit` is not given.
const DEFAULT_PAGE: u32 = 50;
/// Longest review note.
const MAX_NOTE_CHARS: usize = 2_000;

/// One conversation in a list.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConversationRow {
    /// The id the console reads it by (`GET /api/v1/admin/conversations/{id}`).
    pub id: String,
    /// The class (key id) it belongs to; empty with auth off.
    pub class: String,
    /// The hashed learner id; empty when none was sent.
    pub learner: String,
    /// Its agent.
    pub agent_id: String,
    /// When it began (RFC 3339).
    pub created_at: String,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
    /// Turns stored (a question and its answer are two).
    pub turns: u64,
    /// Its first question.
    pub first_question: String,
    /// Flags it raised.
    pub flags: u64,
    /// Of those, not reviewed yet.
    pub unreviewed_flags: u64,
}

impl From<ConversationSummary> for ConversationRow {
    fn from(c: ConversationSummary) -> ConversationRow {
        ConversationRow {
            id: c.id,
            class: c.owner.unwrap_or_default(),
            learner: c.learner,
            agent_id: c.agent_id,
            created_at: at(c.created_at_ms),
            updated_at: at(c.updated_at_ms),
            turns: c.turn_count,
            first_question: c.first_question,
            flags: c.flags,
            unreviewed_flags: c.unreviewed_flags,
        }
    }
}

/// A page of conversations.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConversationPage {
    /// Most recently active first.
    pub conversations: Vec<ConversationRow>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Which conversations to list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ConversationQuery {
    /// Only this class's (key id); 404 when it is not the caller's.
    pub class: Option<String>,
    /// Only this agent's.
    pub agent: Option<String>,
    /// Only this learner's: the `X-Learner-Id` the app sends, or its hashed form as lists show.
    pub learner: Option<String>,
    /// `true`: only flagged conversations; `false`: only unflagged ones.
    pub flagged: Option<bool>,
    /// Only those active at or after this time (RFC 3339, or Unix milliseconds).
    pub since: Option<String>,
    /// Conversations per page (1 to 200, default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the page before.
    pub cursor: Option<String>,
}

/// A review of a flag.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReviewView {
    /// When (RFC 3339).
    pub at: String,
    /// Who: `teacher:<key id>` or `admin:<key id>`.
    pub by: String,
    /// Their note.
    pub note: String,
}

impl From<FlagReview> for ReviewView {
    fn from(r: FlagReview) -> ReviewView {
        ReviewView {
            at: at(r.at_ms),
            by: r.by,
            note: r.note,
        }
    }
}

/// A flag with its review.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReviewedFlag {
    /// The flag.
    #[serde(flatten)]
    pub flag: FlagView,
    /// Its review; absent until someone marks it reviewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewView>,
}

/// A conversation's transcript with its flags.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Transcript {
    /// What it is listed under.
    #[serde(flatten)]
    pub conversation: ConversationRow,
    /// Every turn, oldest first.
    pub transcript: Vec<TurnView>,
    /// Its flags, oldest first; each names the exchange (`turn`) it belongs to.
    pub flag_list: Vec<ReviewedFlag>,
    /// Its ratings by exchange: learners' thumbs and teachers' 1-5.
    pub ratings: Vec<FeedbackView>,
}

/// A teacher's rating of one answer.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RatingRequest {
    /// Which exchange of the conversation (1 for the first question).
    #[schema(example = 1)]
    pub turn: Option<u32>,
    /// 1 (poor) to 5 (excellent).
    #[schema(example = 4)]
    pub rating: Option<u8>,
    /// Why (at most 2000 characters).
    #[serde(default)]
    pub comment: Option<String>,
}

/// A flag marked reviewed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewRequest {
    /// What was done about it (up to 2000 characters; may be empty).
    #[serde(default)]
    pub note: String,
}

/// Conversations the caller may read, by class, agent, learner, date and flag; paginated.
#[utoipa::path(
    get,
    path = routes::ADMIN_CONVERSATIONS,
    params(ConversationQuery),
    responses(
        (status = 200, description = "A page of conversations", body = ConversationPage),
        (status = 400, description = "Bad filter, `limit` or `cursor`", body = crate::api::ErrorBody),
        (status = 403, description = "Not a teacher or admin key", body = crate::api::ErrorBody),
        (status = 404, description = "`class` is not the caller's", body = crate::api::ErrorBody),
        (status = 503, description = "The records database is down", body = crate::api::ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    query: Result<Query<ConversationQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ConversationPage>, ApiError> {
    let reader = Reader::of(&state, caller.as_ref()).await?;
    let Query(query) = query.map_err(|e| bad_request("invalid_query", &e.body_text()))?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(bad_request("invalid_limit", "`limit` must be 1 to 200"));
    }
    let owners = match &query.class {
        Some(class) if !reader.reads(class) => return Err(no_class()),
        Some(class) => Some(vec![class.clone()]),
        None => reader.scope(),
    };
    let learners = match (&query.learner, &state.auth) {
        (Some(learner), Some(auth)) => {
            // Hashed under each class it could be in, and as given (a hash from a list).
            let classes = match &owners {
                Some(owners) => owners.clone(),
                None => reader
                    .records
                    .keys()
                    .await
                    .map_err(unavailable)?
                    .into_iter()
                    .map(|k| k.id)
                    .collect(),
            };
            let mut hashes: Vec<String> = classes
                .iter()
                .map(|class| auth.learner_hash(class, learner))
                .collect();
            hashes.push(learner.clone());
            Some(hashes)
        }
        (Some(learner), None) => Some(vec![learner.clone()]),
        (None, _) => None,
    };
    let filter = ConversationFilter {
        owners,
        agent_id: query.agent,
        learners,
        since_ms: query.since.as_deref().map(since_ms).transpose()?,
        flagged: query.flagged,
        before: query.cursor.as_deref().map(cursor).transpose()?,
    };
    let mut rows = reader
        .records
        .list_conversations(&filter, limit + 1)
        .await
        .map_err(unavailable)?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|c| format!("{}.{}", c.updated_at_ms, c.id))
    } else {
        None
    };
    Ok(Json(ConversationPage {
        conversations: rows.into_iter().map(ConversationRow::from).collect(),
        next_cursor,
    }))
}

/// One conversation's transcript with its flags inline; the read is written to the audit log
/// (`transcript.read`). 404 for a conversation of a class that is not the caller's.
#[utoipa::path(
    get,
    path = routes::ADMIN_CONVERSATION,
    params(("conversation_id" = String, Path, description = "An `id` from the conversation list")),
    responses(
        (status = 200, description = "The transcript", body = Transcript),
        (status = 403, description = "Not a teacher or admin key", body = crate::api::ErrorBody),
        (status = 404, description = "No such conversation, or not the caller's", body = crate::api::ErrorBody),
        (status = 503, description = "The records database is down", body = crate::api::ErrorBody),
    )
)]
pub async fn transcript(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    Path(id): Path<String>,
) -> Result<Json<Transcript>, ApiError> {
    let reader = Reader::of(&state, caller.as_ref()).await?;
    let missing = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "conversation_not_found",
            "no such conversation",
        )
    };
    let records = &reader.records;
    let summary = records
        .conversation_summary(&id)
        .await
        .map_err(unavailable)?
        .ok_or_else(missing)?;
    if !reader.reads(summary.owner.as_deref().unwrap_or("")) {
        return Err(missing());
    }
    let stored = records
        .load_conversation(&id)
        .await
        .map_err(unavailable)?
        .ok_or_else(missing)?;
    let flags = records
        .conversation_flags(&id, 1_000)
        .await
        .map_err(unavailable)?;
    let mut reviews = records.flag_reviews(&id).await.map_err(unavailable)?;
    let ratings = records
        .conversation_feedback(&id)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(FeedbackView::from)
        .collect();
    records
        .audit(&reader.actor(), "transcript.read", &id, "")
        .await
        .map_err(unavailable)?;
    let flag_list = flags
        .into_iter()
        .map(|flag| {
            let review = reviews
                .iter()
                .position(|r| r.flag_id == flag.id)
                .map(|n| ReviewView::from(reviews.swap_remove(n)));
            ReviewedFlag {
                flag: FlagView::from(flag),
                review,
            }
        })
        .collect();
    let transcript = stored
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
        .collect();
    Ok(Json(Transcript {
        conversation: ConversationRow::from(summary),
        transcript,
        flag_list,
        ratings,
    }))
}

/// A teacher's (or admin's) 1-5 rating of one answer of a conversation of their class, kept
/// beside learners' thumbs with the conversation's policy and variant (one teacher rating per
/// answer: a second replaces the first) and audited as `turn.rated`. 404 for a conversation of
/// a class that is not the caller's.
#[utoipa::path(
    post,
    path = routes::ADMIN_CONVERSATION_FEEDBACK,
    params(("conversation_id" = String, Path, description = "An `id` from the conversation list")),
    request_body = RatingRequest,
    responses(
        (status = 200, description = "The rating, as stored", body = FeedbackView),
        (status = 400, description = "Malformed JSON", body = crate::api::ErrorBody),
        (status = 403, description = "Not a teacher or admin key", body = crate::api::ErrorBody),
        (status = 404, description = "No such conversation, or not the caller's", body = crate::api::ErrorBody),
        (status = 422, description = "Missing or bad `turn` (`invalid_turn`: not an answered turn), `rating` (`invalid_rating`: not 1 to 5) or a comment too long (`comment_too_long`)", body = crate::api::ErrorBody),
        (status = 503, description = "The records database is down", body = crate::api::ErrorBody),
    )
)]
pub async fn rate(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    Path(id): Path<String>,
    body: Result<ApiJson<RatingRequest>, ApiError>,
) -> Result<Json<FeedbackView>, ApiError> {
    let reader = Reader::of(&state, caller.as_ref()).await?;
    let ApiJson(request) = body?;
    let invalid =
        |code, message: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message);
    let rating = request
        .rating
        .filter(|r| (1..=5).contains(r))
        .ok_or_else(|| invalid("invalid_rating", "`rating` must be 1 to 5".to_owned()))?;
    let comment = request.comment.unwrap_or_default();
    if comment.chars().count() > MAX_COMMENT_CHARS {
        return Err(invalid(
            "comment_too_long",
            format!("`comment` is limited to {MAX_COMMENT_CHARS} characters"),
        ));
    }
    let missing = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "conversation_not_found",
            "no such conversation",
        )
    };
    let records = &reader.records;
    let conversation = records
        .load_conversation(&id)
        .await
        .map_err(unavailable)?
        .ok_or_else(missing)?;
    let class = conversation.owner.clone().unwrap_or_default();
    if !reader.reads(&class) {
        return Err(missing());
    }
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
    let record = FeedbackRecord {
        conversation: conversation.id,
        turn: i64::from(turn),
        rater: "teacher".to_owned(),
        rating: rating.to_string(),
        comment,
        at_ms: learning_chat_records::now_ms(),
        key_id: class,
        agent_id: conversation.agent_id,
        policy: conversation.policy,
        variant: conversation.variant,
    };
    records.put_feedback(&record).await.map_err(unavailable)?;
    records
        .audit(
            &reader.actor(),
            "turn.rated",
            &id,
            &format!("turn {turn}: {rating}"),
        )
        .await
        .map_err(unavailable)?;
    Ok(Json(FeedbackView::from(record)))
}

/// Marks a flag reviewed with a note (a second review replaces the first), audited as
/// `flag.reviewed`. 404 for a flag of a class that is not the caller's.
#[utoipa::path(
    post,
    path = routes::ADMIN_FLAG_REVIEW,
    params(("flag_id" = String, Path, description = "The flag's id")),
    request_body = ReviewRequest,
    responses(
        (status = 200, description = "The flag with its review", body = ReviewedFlag),
        (status = 400, description = "Bad body, or the note is too long", body = crate::api::ErrorBody),
        (status = 403, description = "Not a teacher or admin key", body = crate::api::ErrorBody),
        (status = 404, description = "No such flag, or not the caller's", body = crate::api::ErrorBody),
        (status = 503, description = "The records database is down", body = crate::api::ErrorBody),
    )
)]
pub async fn review(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    Path(flag_id): Path<String>,
    body: Result<ApiJson<ReviewRequest>, ApiError>,
) -> Result<Json<ReviewedFlag>, ApiError> {
    let reader = Reader::of(&state, caller.as_ref()).await?;
    let ApiJson(body) = body?;
    if body.note.chars().count() > MAX_NOTE_CHARS {
        return Err(bad_request(
            "note_too_long",
            "`note` must be at most 2000 characters",
        ));
    }
    let missing = || ApiError::new(StatusCode::NOT_FOUND, "flag_not_found", "no such flag");
    let records = &reader.records;
    let (flag, _) = records
        .flag(&flag_id)
        .await
        .map_err(unavailable)?
        .ok_or_else(missing)?;
    if !reader.reads(&flag.key_id) {
        return Err(missing());
    }
    let now = learning_chat_records::now_ms();
    if !records
        .review_flag(&flag_id, &reader.actor(), body.note.trim(), now)
        .await
        .map_err(unavailable)?
    {
        return Err(missing());
    }
    let (flag, review) = records
        .flag(&flag_id)
        .await
        .map_err(unavailable)?
        .ok_or_else(missing)?;
    Ok(Json(ReviewedFlag {
        flag: FlagView::from(flag),
        review: review.map(ReviewView::from),
    }))
}
