//! Multi-turn conversations: a learner's follow-ups are answered with the earlier turns as
//! context, on any server.
//!
//! A conversation is stored in Redis when it is configured (so every server continues every
//! conversation) and in process memory otherwise. Its history is sent to the model as Gemini
//! `contents` (roles `user` / `model`), bounded to `conversation.max_history_tokens`, and is part
//! of the cache key, so first turns and identical follow-ups still share answers. Two messages of
//! one conversation never run at once: the second waits (bounded) for the first. Each question and
//! its answer are written before the answer is returned; a write that fails is an error the
//! client sees.

mod memory;
mod redis;

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

use crate::agents::Agent;
use crate::cache::{normalise_message, CacheKey};
use crate::chat::{input_token_estimate, ChatAnswer, ChatError, ChatService, StreamTap};
use crate::config::ConversationSettings;
use crate::providers::{ModelTurn, Role};
use crate::redis_link::RedisUnavailable;
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// One stored turn: a learner's question or the tutor's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// Who said it.
    pub role: Role,
    /// What was said (the normalised message for a question).
    pub text: String,
    /// When, in Unix milliseconds.
    pub at_ms: u64,
    /// For an answer: served from the cache.
    #[serde(default)]
    pub cached: bool,
    /// For an answer: the model that produced it (empty for a question).
    #[serde(default)]
    pub model: String,
}

/// A stored conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    /// Its id.
    pub id: String,
    /// The agent it belongs to.
    pub agent_id: String,
    /// When it began, in Unix milliseconds.
    pub created_at_ms: u64,
    /// Every turn, oldest first.
    pub turns: Vec<Turn>,
}

impl Conversation {
    /// When it last changed, in Unix milliseconds.
    pub fn updated_at_ms(&self) -> u64 {
        self.turns.last().map_or(self.created_at_ms, |t| t.at_ms)
    }

    /// Bytes of turn text stored.
    pub fn stored_bytes(&self) -> u64 {
        self.turns.iter().map(|t| t.text.len() as u64).sum()
    }
}

/// What an append found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Written; the conversation now has this many turns.
    Appended(usize),
    /// The conversation changed since it was read (or, on create, the id exists).
    Conflict,
    /// The conversation is gone (erased or expired).
    Gone,
}

/// Where conversations live.
#[derive(Debug, Clone)]
pub enum ConversationStore {
    /// In this process (no Redis configured).
    Memory(Arc<MemoryStore>),
    /// In Redis, shared by every server.
    Redis(RedisStore),
}

impl ConversationStore {
    /// False while the store cannot be used (Redis down).
    pub fn is_available(&self) -> bool {
        match self {
            ConversationStore::Memory(_) => true,
            ConversationStore::Redis(store) => store.link().is_up(),
        }
    }

    /// The conversation; `None` when unknown, erased or expired.
    pub async fn load(&self, id: &str) -> Result<Option<Conversation>, RedisUnavailable> {
        match self {
            ConversationStore::Memory(store) => Ok(store.load(id)),
            ConversationStore::Redis(store) => store.load(id).await,
        }
    }

    /// Appends `turns` if the conversation still has `expected` turns (0 creates it).
    pub async fn append(
        &self,
        id: &str,
        agent_id: &str,
        created_at_ms: u64,
        expected: usize,
        turns: &[Turn],
    ) -> Result<AppendOutcome, RedisUnavailable> {
        match self {
            ConversationStore::Memory(store) => {
                Ok(store.append(id, agent_id, created_at_ms, expected, turns))
            }
            ConversationStore::Redis(store) => {
                store
                    .append(id, agent_id, created_at_ms, expected, turns)
                    .await
            }
        }
    }

    /// Erases the conversation; false when there was none.
    pub async fn erase(&self, id: &str) -> Result<bool, RedisUnavailable> {
        match self {
            ConversationStore::Memory(store) => Ok(store.erase(id)),
            ConversationStore::Redis(store) => store.erase(id).await,
        }
    }

    /// Conversations alive now (cluster-wide with Redis).
    pub async fn active(&self) -> Result<u64, RedisUnavailable> {
        match self {
            ConversationStore::Memory(store) => Ok(store.active()),
            ConversationStore::Redis(store) => store.active().await,
        }
    }
}

/// Why a conversation message got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ConversationError {
    /// The chat service refused or failed.
    #[error(transparent)]
    Chat(#[from] ChatError),
    /// No conversation with that id (never existed, erased or expired).
    #[error("no such conversation")]
    NotFound,
    /// The conversation belongs to another agent.
    #[error("the conversation belongs to agent {owner:?}")]
    WrongAgent {
        /// The agent it belongs to.
        owner: String,
    },
    /// Another message of the conversation is still being answered.
    #[error("another message of this conversation is being answered")]
    Busy {
        /// When to try again.
        retry_after: Duration,
    },
    /// The store (Redis) cannot be reached: a follow-up cannot be answered without its
    /// history, nor can a turn be written.
    #[error("the conversation store is unavailable")]
    StoreUnavailable {
        /// When to try again.
        retry_after: Duration,
    },
    /// The conversation has as many turns as allowed.
    #[error("the conversation has reached {limit} turns")]
    TurnLimit {
        /// `conversation.max_turns`.
        limit: u32,
    },
    /// The conversation would store more bytes than allowed.
    #[error("the conversation would hold {bytes} bytes; the limit is {limit}")]
    TooLarge {
        /// Bytes it would hold with the message.
        bytes: u64,
        /// `conversation.max_stored_bytes`.
        limit: u64,
    },
}

/// How long a client is told to wait after `conversation_busy`.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(2);
/// How long a client is told to wait while the store is down (Redis is re-probed every second).
const STORE_RETRY_AFTER: Duration = Duration::from_secs(5);

/// An answer within a conversation.
#[derive(Debug, Clone)]
pub struct ConversationAnswer {
    /// The answer.
    pub answer: ChatAnswer,
    /// The conversation's id; `None` when a new conversation could not be stored (Redis down).
    pub conversation_id: Option<String>,
    /// Which exchange this was (1 for the first question).
    pub turn: u32,
    /// True when older turns were left out of the history sent to the model.
    pub history_truncated: bool,
}

/// Conversations: storage, locking, history bounds.
#[derive(Clone)]
pub struct Conversations {
    store: ConversationStore,
    settings: ConversationSettings,
    /// Lease of a Redis lock: longer than any request may take, so it only outlives its holder
    /// when that server dies.
    lock_lease: Duration,
    local_locks: Arc<parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// Holds a conversation's lock; released on drop.
struct ConversationLock {
    local: Option<tokio::sync::OwnedMutexGuard<()>>,
    locks: Arc<parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    id: String,
    /// Released when dropped.
    redis: Option<crate::lease::HeldLease>,
}

impl Drop for ConversationLock {
    fn drop(&mut self) {
        let mut locks = self.locks.lock();
        self.local = None;
        // Under the map's lock, so nobody can be cloning the entry: the map's and no other.
        if locks
            .get(&self.id)
            .is_some_and(|entry| Arc::strong_count(entry) == 1)
        {
            locks.remove(&self.id);
        }
    }
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Where a conversation is stored: under its id, scoped by the API key that started it when keys
/// are required, so another key asking for the same id finds nothing (404), on every server.
pub fn stored_id(id: &str, owner: Option<&str>) -> String {
    match owner {
        None => id.to_owned(),
        Some(owner) => format!("{owner}~{id}"),
    }
}

/// A new conversation id: 128 bits from the operating system's CSPRNG, as 32 hex digits.
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    UnwrapErr(SysRng).fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// True for a string that can be a conversation id (anything else cannot exist).
pub fn is_valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The history sent with `message`: the first exchange always, then as many of the most recent
/// exchanges as fit in `budget` tokens with the system prompt and the message. True when
/// exchanges were left out.
pub fn bounded_history(
    system_prompt: &str,
    turns: &[Turn],
    message: &str,
    budget: u32,
) -> (Vec<ModelTurn>, bool) {
    let as_model = |t: &Turn| ModelTurn {
        role: t.role,
        text: t.text.clone(),
    };
    let exchanges: Vec<&[Turn]> = turns.chunks(2).collect();
    let Some((first, rest)) = exchanges.split_first() else {
        return (Vec::new(), false);
    };
    let count = |turns: &[Turn]| {
        turns.iter().fold(0u32, |sum, t| {
            sum.saturating_add(gemini_wire::answer::count_tokens(&t.text))
        })
    };
    let mut used = input_token_estimate(system_prompt, &[], message).saturating_add(count(first));
    let mut kept = 0;
    for exchange in rest.iter().rev() {
        let cost = count(exchange);
        if used.saturating_add(cost) > budget {
            break;
        }
        used += cost;
        kept += 1;
    }
    let recent = &rest[rest.len() - kept..];
    let history = first
        .iter()
        .chain(recent.iter().flat_map(|e| e.iter()))
        .map(as_model)
        .collect();
    (history, kept < rest.len())
}

impl Conversations {
    /// Conversations in `store`, with these bounds; a lock lasts at most `lock_lease`.
    pub fn new(
        store: ConversationStore,
        settings: ConversationSettings,
        lock_lease: Duration,
    ) -> Conversations {
        Conversations {
            store,
            settings,
            lock_lease,
            local_locks: Arc::default(),
        }
    }

    /// The store.
    pub fn store(&self) -> &ConversationStore {
        &self.store
    }

    /// Waits at most `conversation.busy_wait_ms` for the conversation's lock (this server's,
    /// then the cluster's).
    async fn lock(&self, id: &str) -> Result<ConversationLock, ConversationError> {
        let until = Instant::now() + self.settings.busy_wait;
        let busy = || {
            crate::metrics::conversation_refused("busy");
            ConversationError::Busy {
                retry_after: BUSY_RETRY_AFTER,
            }
        };
        let entry = self
            .local_locks
            .lock()
            .entry(id.to_owned())
            .or_default()
            .clone();
        let mut lock = ConversationLock {
            local: None,
            locks: self.local_locks.clone(),
            id: id.to_owned(),
            redis: None,
        };
        let local = tokio::time::timeout_at(until, entry.lock_owned()).await;
        lock.local = Some(local.map_err(|_| busy())?);
        if let ConversationStore::Redis(store) = &self.store {
            let held = store.lock(id, self.lock_lease, until).await;
            let held = held.map_err(|_| self.unavailable())?;
            lock.redis = Some(held.ok_or_else(busy)?);
        }
        Ok(lock)
    }

    fn unavailable(&self) -> ConversationError {
        crate::metrics::conversation_refused("store_unavailable");
        ConversationError::StoreUnavailable {
            retry_after: STORE_RETRY_AFTER,
        }
    }

    /// The conversation (for GET); its lifetime is refreshed.
    pub async fn get(
        &self,
        id: &str,
        owner: Option<&str>,
    ) -> Result<Conversation, ConversationError> {
        if !is_valid_id(id) {
            return Err(ConversationError::NotFound);
        }
        let mut conversation = self
            .store
            .load(&stored_id(id, owner))
            .await
            .map_err(|_| self.unavailable())?
            .ok_or(ConversationError::NotFound)?;
        id.clone_into(&mut conversation.id);
        Ok(conversation)
    }

    /// Erases the conversation from the store (Redis: for every server), and the answers made
    /// from it from the response cache: this server's memory and Redis. (Another server's
    /// short-lived in-process tier keeps them until `cache.l1_ttl_ms` passes; their keys are
    /// hashes of the whole conversation, so nobody without it can reach them.)
    pub async fn erase(
        &self,
        chat: &ChatService,
        id: &str,
        owner: Option<&str>,
    ) -> Result<(), ConversationError> {
        if !is_valid_id(id) {
            return Err(ConversationError::NotFound);
        }
        let stored = stored_id(id, owner);
        let id = stored.as_str();
        // A message being answered finishes first; one arriving later finds nothing.
        let _lock = self.lock(id).await?;
        let conversation = self
            .store
            .load(id)
            .await
            .map_err(|_| self.unavailable())?
            .ok_or(ConversationError::NotFound)?;
        let keys = self.answer_keys(chat, &conversation);
        if chat.cache().remove(&keys).await.is_err() {
            return Err(self.unavailable());
        }
        match self.store.erase(id).await {
            Ok(true) => {
                crate::metrics::conversation_erased();
                Ok(())
            }
            Ok(false) => Err(ConversationError::NotFound),
            Err(_) => Err(self.unavailable()),
        }
    }

    /// The cache keys the conversation's answers were stored under: each question with the
    /// history that was sent with it (recomputed with today's bounds and agent settings).
    fn answer_keys(&self, chat: &ChatService, conversation: &Conversation) -> Vec<CacheKey> {
        let agent_id = &conversation.agent_id;
        let system_prompt = chat
            .agents()
            .get(agent_id)
            .map(|a| a.definition.system_prompt.clone())
            .unwrap_or_default();
        let turns = &conversation.turns;
        (0..turns.len())
            .step_by(2)
            .filter_map(|at| {
                let message = &turns[at].text;
                let (history, _) = bounded_history(
                    &system_prompt,
                    &turns[..at],
                    message,
                    self.settings.max_history_tokens.get(),
                );
                chat.cache_key_with_history(agent_id, message, &history)
            })
            .collect()
    }

    /// Answers `message` to `agent`: in the conversation `conversation_id` with its history,
    /// or as the first turn of a new one.
    pub async fn send(
        &self,
        chat: &ChatService,
        agent: &Arc<Agent>,
        message: &str,
        conversation_id: Option<&str>,
        owner: Option<&str>,
        deadline: Instant,
    ) -> Result<ConversationAnswer, ConversationError> {
        self.send_streamed(chat, agent, message, conversation_id, owner, deadline, None)
            .await
    }

    /// As [`Conversations::send`]; with `tap`, the answer's pieces are handed over as they
    /// arrive (see [`ChatService::ask_streamed`]). The turn is stored like a JSON one.
    #[allow(clippy::too_many_arguments)]
    pub async fn send_streamed(
        &self,
        chat: &ChatService,
        agent: &Arc<Agent>,
        message: &str,
        conversation_id: Option<&str>,
        owner: Option<&str>,
        deadline: Instant,
        tap: Option<&StreamTap>,
    ) -> Result<ConversationAnswer, ConversationError> {
        let message = normalise_message(message);
        match conversation_id {
            None => {
                self.start(chat, agent, &message, owner, deadline, tap)
                    .await
            }
            Some(id) => {
                if !is_valid_id(id) {
                    return Err(ConversationError::NotFound);
                }
                let mut answer = self
                    .follow_up(chat, agent, &message, &stored_id(id, owner), deadline, tap)
                    .await?;
                answer.conversation_id = Some(id.to_owned());
                Ok(answer)
            }
        }
    }

    async fn start(
        &self,
        chat: &ChatService,
        agent: &Arc<Agent>,
        message: &str,
        owner: Option<&str>,
        deadline: Instant,
        tap: Option<&StreamTap>,
    ) -> Result<ConversationAnswer, ConversationError> {
        if message.len() as u64 > self.settings.max_stored_bytes {
            return Err(self.too_large(message.len() as u64));
        }
        let answer = chat
            .ask_streamed(agent, message, Arc::from([]), deadline, tap)
            .await?;
        // Without Redis the answer still goes out, under no id: the learner keeps chatting in
        // single messages rather than losing the service (documented in the API reference).
        let mut conversation_id = None;
        if self.store.is_available() {
            let id = new_id();
            let started = now_ms();
            let turns = exchange(message, &answer, started);
            match self
                .store
                .append(&stored_id(&id, owner), agent.id(), started, 0, &turns)
                .await
            {
                Ok(AppendOutcome::Appended(count)) => {
                    crate::metrics::conversation_created();
                    crate::metrics::conversation_turns(count);
                    conversation_id = Some(id);
                }
                Ok(_) | Err(_) => crate::metrics::conversation_refused("not_stored"),
            }
        } else {
            crate::metrics::conversation_refused("not_stored");
        }
        Ok(ConversationAnswer {
            answer,
            conversation_id,
            turn: 1,
            history_truncated: false,
        })
    }

    fn too_large(&self, bytes: u64) -> ConversationError {
        crate::metrics::conversation_refused("too_large");
        ConversationError::TooLarge {
            bytes,
            limit: self.settings.max_stored_bytes,
        }
    }

    async fn follow_up(
        &self,
        chat: &ChatService,
        agent: &Arc<Agent>,
        message: &str,
        id: &str,
        deadline: Instant,
        tap: Option<&StreamTap>,
    ) -> Result<ConversationAnswer, ConversationError> {
        // `id` is the stored id (see `stored_id`); the client's id was checked by `send`.
        if !self.store.is_available() {
            return Err(self.unavailable());
        }
        let _lock = self.lock(id).await?;
        let conversation = self
            .store
            .load(id)
            .await
            .map_err(|_| self.unavailable())?
            .ok_or(ConversationError::NotFound)?;
        if conversation.agent_id != agent.id() {
            crate::metrics::conversation_refused("wrong_agent");
            return Err(ConversationError::WrongAgent {
                owner: conversation.agent_id,
            });
        }
        if conversation.turns.len() + 2 > self.settings.max_turns as usize {
            crate::metrics::conversation_refused("turn_limit");
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
        let answer = chat
            .ask_streamed(agent, message, history.into(), deadline, tap)
            .await?;
        crate::metrics::conversation_history(history_tokens, truncated);
        let turns = exchange(message, &answer, now_ms());
        let expected = conversation.turns.len();
        match self
            .store
            .append(id, agent.id(), conversation.created_at_ms, expected, &turns)
            .await
        {
            Ok(AppendOutcome::Appended(count)) => {
                crate::metrics::conversation_turns(count);
                Ok(ConversationAnswer {
                    answer,
                    conversation_id: Some(id.to_owned()),
                    turn: u32::try_from(expected / 2 + 1).unwrap_or(u32::MAX),
                    history_truncated: truncated,
                })
            }
            // Erased while the answer was being made: the erasure wins.
            Ok(AppendOutcome::Gone) => Err(ConversationError::NotFound),
            // Only when a lock outlived its lease: the other message was written first.
            Ok(AppendOutcome::Conflict) => {
                crate::metrics::conversation_refused("busy");
                Err(ConversationError::Busy {
                    retry_after: BUSY_RETRY_AFTER,
                })
            }
            Err(_) => Err(self.unavailable()),
        }
    }
}

/// A question and its answer as two stored turns.
fn exchange(message: &str, answer: &ChatAnswer, at_ms: u64) -> [Turn; 2] {
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
            text: answer.text.clone(),
            at_ms,
            cached: answer.cached,
            model: answer.model.clone(),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turns(texts: &[&str]) -> Vec<Turn> {
        texts
            .iter()
            .enumerate()
            .map(|(i, text)| Turn {
                role: if i % 2 == 0 { Role::User } else { Role::Model },
                text: (*text).to_owned(),
                at_ms: 0,
                cached: false,
                model: String::new(),
            })
            .collect()
    }

    #[test]
    fn the_quota_estimate_counts_the_whole_history_sent() {
        let history: Vec<ModelTurn> = turns(&["12345678", "1234"])
            .iter()
            .map(|t| ModelTurn {
                role: t.role,
                text: t.text.clone(),
            })
            .collect();
        // 4 characters a token: system 1 + history 2 + 1 + message 1.
        assert_eq!(input_token_estimate("abcd", &history, "abcd"), 5);
        assert_eq!(input_token_estimate("abcd", &[], "abcd"), 2);
    }

    #[test]
    fn ids_are_128_random_bits_in_url_safe_hex() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert!(is_valid_id(&a), "{a}");
        assert!(!is_valid_id("../etc/passwd"));
        assert!(!is_valid_id(&a.to_uppercase()));
    }

    #[test]
    fn the_history_keeps_the_first_exchange_and_the_most_recent_that_fit() {
        // 40 characters = 10 tokens per turn.
        let t = "x".repeat(40);
        let all = turns(&[t.as_str(); 8]);
        let texts = |h: &[ModelTurn]| h.len();
        // Unbounded: everything.
        let (history, truncated) = bounded_history("", &all, "q", 1000);
        assert_eq!((texts(&history), truncated), (8, false));
        // Room for the message (1), the first exchange (20) and one more (20).
        let (history, truncated) = bounded_history("", &all, "q", 41);
        assert_eq!((texts(&history), truncated), (4, true));
        assert_eq!(history[0].role, Role::User);
        assert_eq!(history[3].role, Role::Model);
        // Less than the first exchange: it is still sent, alone.
        let (history, truncated) = bounded_history("", &all, "q", 5);
        assert_eq!((texts(&history), truncated), (2, true));
        assert_eq!(bounded_history("", &[], "q", 1), (Vec::new(), false));
    }
}
