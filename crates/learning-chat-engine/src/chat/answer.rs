//! The engine's entry and exit: one [`Ask`] in; one [`Reply`] out, either the [`Answer`] at
//! once or a [`Live`] call whose pieces end in the answer or an error.

use super::safeguard::Asked;
use super::{ChatError, ChatService};
use crate::admission::Flow;
use crate::agents::Agent;
use crate::cache::{CacheKey, CachedAnswer};
use crate::coalesce::subscription::{Subscription, Update};
use crate::conversations::{Place, Recorded};
use crate::providers::{Completion, Usage};
use crate::safety::Ratings;
use gemini_wire::FinishReason;
use std::sync::Arc;
use tokio::time::Instant;

/// Who asks: whose conversations these are and whose fair share the model call spends.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The API key id that scopes the caller's conversations; `None` with auth off.
    pub key_id: Option<Arc<str>>,
    /// The caller's flow in the admission queue's fair order.
    pub flow: Flow,
    /// The hashed learner id (`X-Learner-Id`), for the flags of the learner's messages (and
    /// experiments assigned per learner).
    pub learner: Option<Arc<str>>,
    /// The key's (class's) answer policy over the agent's own, for new conversations.
    pub policy: Option<crate::policy::Tutoring>,
}

impl Caller {
    /// The caller when auth is off: one anonymous flow, unscoped conversations.
    pub fn anonymous() -> Caller {
        Caller {
            key_id: None,
            flow: Flow::anonymous(),
            learner: None,
            policy: None,
        }
    }
}

/// One question, as the edge hands it to the engine.
#[derive(Debug, Clone)]
pub struct Ask {
    /// The tutor, resolved once by the edge.
    pub agent: Arc<Agent>,
    /// The learner's message, as sent.
    pub message: String,
    /// What the learner tried themselves, if they say: sent to the model as part of the turn
    /// (and so part of its cache key and of the stored conversation).
    pub attempt: Option<String>,
    /// What the message continues: nothing (a new conversation), a conversation by its id, or
    /// turns the client holds itself.
    pub conversation: Thread,
    /// When the answer is no longer wanted.
    pub deadline: Instant,
    /// Who asks.
    pub caller: Caller,
    /// True when the caller reads the answer as the model writes it: the call it starts
    /// streams from the model, and stops when its last reader goes.
    pub wants_stream: bool,
}

/// What a message continues.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Thread {
    /// Nothing: the first message of a new conversation (shares the cache with every learner).
    #[default]
    New,
    /// The conversation with this id (from an earlier answer's `conversation_id`).
    Id(String),
    /// Earlier turns the client holds itself, oldest first, alternating `user` / `model` from a
    /// `user` turn (the OpenAI-compatible API's `messages`): bounded like a stored
    /// conversation's history and keyed the same way, so the same turns share the same cached
    /// answers; stored nowhere. An empty list starts a new conversation like [`Thread::New`],
    /// but from a client that holds its history: an experiment assigns it by its first
    /// message (as it will its follow-ups), not by a new conversation id.
    Turns(Vec<crate::providers::ModelTurn>),
}

impl From<Option<String>> for Thread {
    /// A conversation id if there is one, else a new conversation.
    fn from(id: Option<String>) -> Thread {
        id.map_or(Thread::New, Thread::Id)
    }
}

/// A complete answer: what the learner reads, what it cost, and where it was recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The answer text.
    pub text: AnswerText,
    /// True when served from the cache without asking the model.
    pub cached: bool,
    /// The model that produced it.
    pub model: String,
    /// Tokens it cost when produced.
    pub usage: Usage,
    /// `STOP` for complete answers, `MAX_TOKENS` for truncated ones (never cached).
    pub finish_reason: &'static str,
    /// The conversation it belongs to; `None` when a new one could not be stored.
    pub conversation_id: Option<String>,
    /// Which exchange of the conversation this was (1 for its first question).
    pub turn: u32,
    /// True when older turns were left out of the history sent to the model.
    pub history_truncated: bool,
    /// The cache key the answer can be read back under, when it may be in the cache: a
    /// one-shot answer's conversation token points there instead of storing anything.
    pub(crate) kept_under: Option<CacheKey>,
    /// The digest of `text` (see [`CachedAnswer::digest`]), when known without hashing it.
    pub(crate) digest: Option<[u8; 8]>,
    /// A fresh answer's safety ratings (a hit's are in its cached entry: see
    /// [`Answer::ratings`]).
    pub(crate) fresh_ratings: Ratings,
    /// True when the crisis text was added to (or replaced) the model's answer.
    pub crisis: bool,
    /// The answer policy and version it was made under (`socratic@1`).
    pub policy: crate::policy::Tutoring,
    /// The experiment variant of its conversation, if any (a thin pointer: a cache hit's
    /// answer stays small).
    pub variant: Option<Arc<crate::experiments::Variant>>,
}

impl Answer {
    /// A cache hit.
    pub(super) fn cached(hit: &Arc<CachedAnswer>, key: CacheKey) -> Answer {
        Answer {
            kept_under: Some(key),
            digest: Some(hit.digest()),
            text: AnswerText::Cached(hit.clone()),
            cached: true,
            model: hit.model.clone(),
            usage: hit.usage,
            finish_reason: FinishReason::Stop.as_str(),
            conversation_id: None,
            turn: 0,
            history_truncated: false,
            fresh_ratings: Ratings::default(),
            crisis: false,
            policy: crate::policy::Tutoring::default(),
            variant: None,
        }
    }

    /// The safety ratings of the question and the answer (a hit's from its cached entry).
    pub fn ratings(&self) -> &Ratings {
        match &self.text {
            AnswerText::Cached(hit) => &hit.ratings,
            AnswerText::Owned(_) => &self.fresh_ratings,
        }
    }

    /// A model's answer (this server's call, or another server's).
    fn fresh(completion: &Completion, key: CacheKey) -> Answer {
        Answer {
            // Kept only when complete; whether it is there is checked before a token is made.
            kept_under: (completion.finish_reason == FinishReason::Stop).then_some(key),
            digest: None,
            text: AnswerText::Owned(completion.text.clone()),
            cached: false,
            model: completion.model.clone(),
            usage: completion.usage,
            finish_reason: completion.finish_reason.as_str(),
            conversation_id: None,
            turn: 0,
            history_truncated: false,
            fresh_ratings: completion.ratings.clone(),
            crisis: false,
            policy: crate::policy::Tutoring::default(),
            variant: None,
        }
    }

    /// The answer with the place its exchange was recorded at.
    pub(super) fn recorded(self, recorded: Recorded) -> Answer {
        Answer {
            conversation_id: recorded.conversation_id,
            turn: recorded.turn,
            history_truncated: recorded.history_truncated,
            ..self
        }
    }
}

/// An answer's text: a cache hit's is the cached entry's own (no copy of kilobytes per hit),
/// any other is owned. Reads as a `str`; serialises as a string.
#[derive(Debug, Clone)]
pub enum AnswerText {
    /// Made for this answer.
    Owned(String),
    /// The text of this cached answer.
    Cached(Arc<CachedAnswer>),
}

impl std::ops::Deref for AnswerText {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            AnswerText::Owned(text) => text,
            AnswerText::Cached(hit) => &hit.text,
        }
    }
}

impl AnswerText {
    /// The text.
    pub fn as_str(&self) -> &str {
        self
    }
}

impl PartialEq for AnswerText {
    fn eq(&self, other: &AnswerText) -> bool {
        **self == **other
    }
}

impl PartialEq<str> for AnswerText {
    fn eq(&self, other: &str) -> bool {
        &**self == other
    }
}

impl PartialEq<&str> for AnswerText {
    fn eq(&self, other: &&str) -> bool {
        &**self == *other
    }
}

impl PartialEq<String> for AnswerText {
    fn eq(&self, other: &String) -> bool {
        **self == **other
    }
}

impl PartialEq<AnswerText> for String {
    fn eq(&self, other: &AnswerText) -> bool {
        **self == **other
    }
}

impl From<String> for AnswerText {
    fn from(text: String) -> AnswerText {
        AnswerText::Owned(text)
    }
}

impl std::fmt::Display for AnswerText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

impl serde::Serialize for AnswerText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for AnswerText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(AnswerText::Owned)
    }
}

/// The engine's reply to an [`Ask`].
pub enum Reply {
    /// The answer, at once (a cache hit): no call, no task, no channel.
    Ready(Answer),
    /// The call the answer comes from (boxed: a ready reply stays small).
    Live(Box<Live>),
}

impl Reply {
    /// The complete answer: the last item of the reply.
    pub async fn finish(self) -> Result<Answer, ChatError> {
        match self {
            Reply::Ready(answer) => Ok(answer),
            // Boxed: waiting for a call and recording its outcome is kilobytes of future,
            // and unboxed it sat in every answer's future, copied on each move of it, the
            // cached answers' (which never need it) included.
            Reply::Live(live) => Box::pin(live.finish()).await,
        }
    }
}

/// What a [`Live`] reply has next.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// More of the answer's text; the pieces joined are the answer's text.
    Text(String),
    /// The end: the complete answer, or why there is none.
    Done(Result<Answer, ChatError>),
}

/// A reply still being written: the answer's pieces so far, then live, then the answer.
pub struct Live {
    waiting: Subscription<Arc<Completion>, ChatError>,
    /// The steps after the call; `None` once taken.
    rest: Option<Rest>,
    /// The end, held back while the text the pieces missed goes out first.
    done: Option<Result<Answer, ChatError>>,
}

/// What a live reply still has to do with the call's outcome: record the exchange.
pub(super) struct Rest {
    chat: ChatService,
    key: CacheKey,
    place: Place,
    agent: Arc<Agent>,
    message: String,
    asked: Asked,
}

impl Rest {
    pub(super) fn new(
        chat: ChatService,
        key: CacheKey,
        place: Place,
        agent: Arc<Agent>,
        message: String,
        asked: Asked,
    ) -> Rest {
        Rest {
            chat,
            key,
            place,
            agent,
            message,
            asked,
        }
    }

    async fn conclude(
        self,
        outcome: Result<Arc<Completion>, ChatError>,
    ) -> Result<Answer, ChatError> {
        let Rest {
            chat,
            key,
            place,
            agent,
            message,
            asked,
        } = self;
        let completion = match outcome {
            Ok(completion) => completion,
            Err(error) => {
                chat.refused(&error, &agent, &asked).await;
                return Err(error);
            }
        };
        let answer = Answer::fresh(&completion, key);
        chat.record(place, &agent, &message, answer, &asked).await
    }
}

impl Live {
    pub(super) fn new(waiting: Subscription<Arc<Completion>, ChatError>, rest: Rest) -> Live {
        Live {
            waiting,
            rest: Some(rest),
            done: None,
        }
    }

    /// The next piece, or the end; `None` after the end.
    pub async fn next(&mut self) -> Option<Piece> {
        if let Some(done) = self.done.take() {
            return Some(Piece::Done(done));
        }
        let outcome = match self.waiting.next().await? {
            Update::Piece(text) => return Some(Piece::Text(text)),
            Update::Done(outcome) => outcome,
        };
        let answer = match self.rest.take()?.conclude(outcome).await {
            Ok(answer) => answer,
            Err(error) => return Some(Piece::Done(Err(error))),
        };
        // The answer fills in what the pieces did not deliver (another server's answer, pieces
        // trimmed from a long Redis Stream, a call that did not stream).
        match answer.text.strip_prefix(self.waiting.sent()) {
            Some("") => Some(Piece::Done(Ok(answer))),
            Some(missing) => {
                let missing = missing.to_owned();
                self.done = Some(Ok(answer));
                Some(Piece::Text(missing))
            }
            // The crisis text in place of the model's answer (`crisis_mode = "replace"`): the
            // pieces are out already; the end carries the text to show instead.
            None if answer.crisis => Some(Piece::Done(Ok(answer))),
            None => {
                tracing::warn!("streamed pieces disagree with the final answer");
                Some(Piece::Done(Err(ChatError::StreamInconsistent)))
            }
        }
    }

    /// The complete answer, without the pieces.
    pub async fn finish(mut self) -> Result<Answer, ChatError> {
        if let Some(done) = self.done.take() {
            return done;
        }
        let Some(rest) = self.rest.take() else {
            // `next` already handed out the end.
            return Err(ChatError::Internal(
                "the answer was already taken".to_owned(),
            ));
        };
        rest.conclude(self.waiting.finish().await).await
    }

    /// True when the call was started by another request (or another server's pieces came).
    pub fn coalesced(&self) -> bool {
        self.waiting.joined() || self.waiting.relayed()
    }
}
