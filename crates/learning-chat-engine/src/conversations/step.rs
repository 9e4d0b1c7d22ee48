//! The conversation step of a question: before the answer, where the message belongs
//! ([`Conversations::open`]: checked, locked, its history loaded and bounded); after it, its
//! exchange written ([`Conversations::record`]) before the answer is returned.

use super::{
    bounded_history, new_id, now_ms, stored_id, AppendOutcome, ConversationError, ConversationLock,
    Conversations, Named, Turn, BUSY_RETRY_AFTER,
};
use crate::agents::Agent;
use crate::cache::{normalise_message, CacheKey, ResponseCache};
use crate::chat::Thread;
use crate::providers::{input_token_estimate, ModelTurn, Role};
use std::sync::Arc;

/// Where a message belongs while it is answered: the history sent with it and, for a
/// follow-up, the conversation's lock (held until its turns are written) and what the write
/// expects to find.
pub struct Place {
    history: Arc<[ModelTurn]>,
    to: Destination,
}

enum Destination {
    /// The first message of a new conversation, under this owner, by this hashed learner.
    New(Option<Arc<str>>, Option<Arc<str>>),
    /// A follow-up (boxed: it holds the conversation's lock; a first message stays small).
    FollowUp(Box<FollowUp>),
    /// A message after turns the client holds (see [`Thread::Turns`]): recorded nowhere.
    HeldByClient {
        /// Which exchange this is.
        turn: u32,
        truncated: bool,
        history_tokens: u32,
    },
}

struct FollowUp {
    /// The id the client knows.
    id: String,
    /// The id it is stored under (see [`stored_id`]).
    stored: String,
    _lock: ConversationLock,
    created_at_ms: u64,
    /// Turns stored when the message arrived.
    expected: usize,
    /// A token's first exchange, read back from the cache: stored with this exchange, since
    /// the conversation was never stored before.
    first: Option<[Turn; 2]>,
    /// The policy the conversation started with (see [`Place::recorded`]).
    policy: String,
    /// The variant it was assigned.
    variant: String,
    /// The hashed learner, recorded when this write creates the conversation.
    learner: Option<Arc<str>>,
    truncated: bool,
    history_tokens: u32,
}

impl Place {
    /// The earlier turns sent to the model with the message (already bounded).
    pub fn history(&self) -> &Arc<[ModelTurn]> {
        &self.history
    }

    /// For a follow-up, the policy and variant its conversation started with (either may be
    /// empty: a conversation stored before policies, or in no experiment); `None` for a new
    /// conversation and turns the client holds.
    pub fn recorded(&self) -> Option<(&str, &str)> {
        match &self.to {
            Destination::FollowUp(follow_up) => Some((&follow_up.policy, &follow_up.variant)),
            Destination::New(..) | Destination::HeldByClient { .. } => None,
        }
    }
}

/// How a new conversation is tutored: recorded when it is created (its token, or its stored
/// row); a follow-up keeps what its conversation started with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Started<'a> {
    /// The answer policy (`socratic@1`).
    pub policy: &'a str,
    /// The experiment variant (`experiment/variant`), empty when none.
    pub variant: &'a str,
    /// The conversation's identity, when it was chosen before the answer (an experiment
    /// assigned its variant by it).
    pub nonce: Option<[u8; 16]>,
}

/// Where an answer's exchange was recorded (or, for a one-shot answer, the token that
/// names it).
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// The conversation's id (a token for a one-shot answer); `None` when a new conversation
    /// could be neither signed nor stored (its answer not cached and the store down), and for
    /// a message after turns the client holds (nothing is stored for it).
    pub conversation_id: Option<String>,
    /// Which exchange this was (1 for the first question).
    pub turn: u32,
    /// True when older turns were left out of the history sent to the model.
    pub history_truncated: bool,
}

/// The answer half of an exchange, as stored.
#[derive(Debug, Clone, Copy)]
pub struct Said<'a> {
    /// The answer text.
    pub text: &'a str,
    /// Served from the cache.
    pub cached: bool,
    /// The model that produced it.
    pub model: &'a str,
    /// The cache key it may be read back under (see `Answer::kept_under`).
    pub kept_under: Option<CacheKey>,
    /// The digest of `text`, when known (a cache hit's), so signing a token does not hash it.
    pub digest: Option<[u8; 8]>,
}

impl Conversations {
    /// The first step of a question: where `message` (normalised) to `agent` belongs. A new
    /// conversation for [`Thread::New`]; a follow-up ([`Thread::Id`]) is checked, its
    /// conversation locked (until the returned place is recorded or dropped) and its history
    /// bounded; turns the client holds ([`Thread::Turns`]) are bounded the same way and stored
    /// nowhere.
    pub async fn open(
        &self,
        agent: &Agent,
        message: &str,
        thread: Thread,
        owner: Option<&Arc<str>>,
        learner: Option<&Arc<str>>,
        cache: &ResponseCache,
    ) -> Result<Place, ConversationError> {
        let turns = match thread {
            Thread::Id(id) => {
                // Boxed: the follow-up's store reads make a future of kilobytes, which every
                // new question (cache hits included) would otherwise carry and move around.
                return Box::pin(self.open_follow_up(agent, message, &id, owner, learner, cache))
                    .await;
            }
            Thread::Turns(turns) if !turns.is_empty() => turns,
            Thread::New | Thread::Turns(_) => {
                if message.len() as u64 > self.settings.max_stored_bytes {
                    return Err(self.too_large(message.len() as u64));
                }
                // One empty history for every new conversation: no allocation per question.
                static NO_HISTORY: std::sync::LazyLock<Arc<[ModelTurn]>> =
                    std::sync::LazyLock::new(|| Arc::from([]));
                return Ok(Place {
                    history: NO_HISTORY.clone(),
                    to: Destination::New(owner.cloned(), learner.cloned()),
                });
            }
        };
        Ok(self.held_by_client(agent, message, turns))
    }

    /// The place of a message after `turns` the client holds: its history bounded like a
    /// stored conversation's (user turns normalised as stored ones are, so the same turns make
    /// the same cache key), nothing locked, nothing to store.
    fn held_by_client(&self, agent: &Agent, message: &str, turns: Vec<ModelTurn>) -> Place {
        let exchanges = u32::try_from(turns.len().div_ceil(2)).unwrap_or(u32::MAX);
        let turns: Vec<Turn> = turns
            .into_iter()
            .map(|turn| Turn {
                text: match turn.role {
                    Role::User => normalise_message(&turn.text).into_owned(),
                    Role::Model => turn.text,
                },
                role: turn.role,
                at_ms: 0,
                cached: false,
                model: String::new(),
            })
            .collect();
        let (history, truncated) = bounded_history(
            &agent.definition.system_prompt,
            &turns,
            message,
            self.settings.max_history_tokens.get(),
        );
        let history_tokens = input_token_estimate("", &history, "");
        Place {
            history: history.into(),
            to: Destination::HeldByClient {
                turn: exchanges.saturating_add(1),
                truncated,
                history_tokens,
            },
        }
    }

    /// [`Conversations::open`] of a follow-up in conversation `id`.
    async fn open_follow_up(
        &self,
        agent: &Agent,
        message: &str,
        id: &str,
        owner: Option<&Arc<str>>,
        learner: Option<&Arc<str>>,
        cache: &ResponseCache,
    ) -> Result<Place, ConversationError> {
        let named = self
            .named(id, owner.map(|o| &**o))
            .ok_or(ConversationError::NotFound)?;
        let stored = match &named {
            Named::Stored(stored) | Named::Token(stored, _) => stored.clone(),
        };
        if !self.store.is_available() {
            return Err(self.unavailable());
        }
        let lock = self.lock(&stored).await?;
        let found = self
            .store
            .load(&stored)
            .await
            .map_err(|_| self.unavailable())?;
        let (conversation, first) = match (found, named) {
            // An erased token conversation's tombstone.
            (Some(conversation), _) if conversation.turns.is_empty() => {
                return Err(ConversationError::NotFound)
            }
            (Some(conversation), _) => (conversation, None),
            (None, Named::Stored(_)) => return Err(ConversationError::NotFound),
            // Continued for the first time: its first exchange comes from the cache.
            (None, Named::Token(_, claims)) => {
                let first = self
                    .first_exchange(&claims, cache)
                    .await
                    .ok_or(ConversationError::NotFound)?;
                let conversation = super::Conversation {
                    id: stored.clone(),
                    agent_id: claims.agent_id,
                    created_at_ms: claims.at_ms,
                    turns: first.to_vec(),
                    policy: claims.policy,
                    variant: claims.variant,
                };
                (conversation, Some(first))
            }
        };
        if conversation.agent_id != agent.id() {
            crate::conversations::metrics::conversation_refused("wrong_agent");
            return Err(ConversationError::WrongAgent {
                owner: conversation.agent_id,
            });
        }
        if conversation.turns.len() + 2 > self.settings.max_turns as usize {
            crate::conversations::metrics::conversation_refused("turn_limit");
            return Err(ConversationError::TurnLimit {
                limit: self.settings.max_turns,
            });
        }
        let bytes = conversation.stored_bytes() + message.len() as u64;
        if bytes > self.settings.max_stored_bytes {
            return Err(self.too_large(bytes));
        }
        let (history, truncated) = bounded_history(
            &agent.definition.system_prompt,
            &conversation.turns,
            message,
            self.settings.max_history_tokens.get(),
        );
        let history_tokens = input_token_estimate("", &history, "");
        Ok(Place {
            history: history.into(),
            to: Destination::FollowUp(Box::new(FollowUp {
                id: id.to_owned(),
                stored,
                _lock: lock,
                created_at_ms: conversation.created_at_ms,
                expected: if first.is_some() {
                    0
                } else {
                    conversation.turns.len()
                },
                first,
                learner: learner.cloned(),
                truncated,
                history_tokens,
                policy: conversation.policy,
                variant: conversation.variant,
            })),
        })
    }

    /// The last step of a question: records `message` and its answer in the conversation of
    /// `place`, before the answer is returned. A first question whose answer is in the cache
    /// stores nothing: its id is a token naming that answer. One whose answer is not cached
    /// is stored; when that cannot be done (the store down) it still answers, under no id: the
    /// learner keeps chatting in single messages rather than losing the service (documented in
    /// the API reference).
    pub async fn record(
        &self,
        place: Place,
        agent_id: &str,
        message: &str,
        answer: Said<'_>,
        started: Started<'_>,
        cache: &ResponseCache,
    ) -> Result<Recorded, ConversationError> {
        let follow_up = match place.to {
            Destination::New(owner, learner) => {
                let signed = super::token::Signed {
                    agent_id,
                    owner: owner.as_deref().unwrap_or(""),
                    policy: started.policy,
                    variant: started.variant,
                    nonce: started.nonce,
                };
                if let Some(token) = self.token_for(signed, answer, cache).await {
                    crate::conversations::metrics::conversation_token_issued();
                    return Ok(Recorded {
                        conversation_id: Some(token),
                        turn: 1,
                        history_truncated: false,
                    });
                }
                // Boxed, like the follow-up below: rare on the hot path, and large.
                return Ok(Box::pin(self.create(
                    owner.as_deref(),
                    learner.as_deref(),
                    signed,
                    message,
                    answer,
                ))
                .await);
            }
            Destination::FollowUp(follow_up) => follow_up,
            Destination::HeldByClient {
                turn,
                truncated,
                history_tokens,
            } => {
                crate::conversations::metrics::conversation_history(history_tokens, truncated);
                return Ok(Recorded {
                    conversation_id: None,
                    turn,
                    history_truncated: truncated,
                });
            }
        };
        crate::conversations::metrics::conversation_history(
            follow_up.history_tokens,
            follow_up.truncated,
        );
        let exchange = exchange(message, answer, now_ms());
        let expected = follow_up.expected;
        let turns: Vec<Turn> = follow_up
            .first
            .iter()
            .flatten()
            .chain(exchange.iter())
            .cloned()
            .collect();
        let head = super::Head {
            agent_id,
            policy: &follow_up.policy,
            variant: &follow_up.variant,
        };
        let appended = Box::pin(self.store.append(
            &follow_up.stored,
            head,
            follow_up.created_at_ms,
            expected,
            &turns,
            follow_up.learner.as_deref().unwrap_or(""),
        ))
        .await;
        match appended {
            Ok(AppendOutcome::Appended(count)) => {
                if follow_up.first.is_some() {
                    crate::conversations::metrics::conversation_created();
                }
                crate::conversations::metrics::conversation_turns(count);
                Ok(Recorded {
                    conversation_id: Some(follow_up.id),
                    turn: u32::try_from(count / 2).unwrap_or(u32::MAX),
                    history_truncated: follow_up.truncated,
                })
            }
            // Erased while the answer was being made: the erasure wins.
            Ok(AppendOutcome::Gone) => Err(ConversationError::NotFound),
            // Only when a lock outlived its lease: the other message was written first.
            Ok(AppendOutcome::Conflict) => {
                crate::conversations::metrics::conversation_refused("busy");
                Err(ConversationError::Busy {
                    retry_after: BUSY_RETRY_AFTER,
                })
            }
            Err(_) => Err(self.unavailable()),
        }
    }

    /// A token for a one-shot answer that is in the cache under the key it names; `None` when
    /// it is not there (not cacheable, or kept elsewhere), so the conversation must be stored.
    async fn token_for(
        &self,
        signed: super::token::Signed<'_>,
        answer: Said<'_>,
        cache: &ResponseCache,
    ) -> Option<String> {
        let key = answer.kept_under?;
        // A hit was read from there just now; a fresh answer is checked (a fallback's is kept
        // under its own key, a truncated one not at all).
        if !answer.cached {
            let kept = Box::pin(cache.read_back(&key)).await?;
            if kept.text != answer.text {
                return None;
            }
        }
        self.tokens.sign(
            &key,
            signed,
            answer
                .digest
                .unwrap_or_else(|| super::token::answer_digest(answer.text)),
            now_ms(),
        )
    }

    /// Stores a new conversation of one exchange, when the store can be used (under the
    /// identity `signed` names, if any, so an experiment's assignment by it holds).
    async fn create(
        &self,
        owner: Option<&str>,
        learner: Option<&str>,
        signed: super::token::Signed<'_>,
        message: &str,
        answer: Said<'_>,
    ) -> Recorded {
        let mut conversation_id = None;
        if self.store.is_available() {
            let id = signed.nonce.map_or_else(new_id, hex::encode);
            let head = super::Head {
                agent_id: signed.agent_id,
                policy: signed.policy,
                variant: signed.variant,
            };
            let started = now_ms();
            let turns = exchange(message, answer, started);
            match self
                .store
                .append(
                    &stored_id(&id, owner),
                    head,
                    started,
                    0,
                    &turns,
                    learner.unwrap_or(""),
                )
                .await
            {
                Ok(AppendOutcome::Appended(count)) => {
                    crate::conversations::metrics::conversation_created();
                    crate::conversations::metrics::conversation_turns(count);
                    conversation_id = Some(id);
                }
                Ok(_) | Err(_) => crate::conversations::metrics::conversation_refused("not_stored"),
            }
        } else {
            crate::conversations::metrics::conversation_refused("not_stored");
        }
        Recorded {
            conversation_id,
            turn: 1,
            history_truncated: false,
        }
    }

    fn too_large(&self, bytes: u64) -> ConversationError {
        crate::conversations::metrics::conversation_refused("too_large");
        ConversationError::TooLarge {
            bytes,
            limit: self.settings.max_stored_bytes,
        }
    }
}

/// A question and its answer as two stored turns.
pub(super) fn exchange(message: &str, answer: Said<'_>, at_ms: u64) -> [Turn; 2] {
    [
        Turn {
            role: Role::User,
            text: message.to_owned(),
            at_ms,
            cached: false,
            model: String::new(),
        },
        Turn {
            role: Role::Model,
            text: answer.text.to_owned(),
            at_ms,
            cached: answer.cached,
            model: answer.model.to_owned(),
        },
    ]
}
