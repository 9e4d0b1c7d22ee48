//! Multi-turn conversations: a learner's follow-ups are answered with the earlier turns as
//! context, on any server.
//!
//! A one-shot question stores nothing: its answer's id is a signed token pointing at the
//! answer in the cache ([`token`]); the conversation is stored when the learner follows up. A
//! stored conversation lives in the records database (SQLite or PostgreSQL), else in Redis when
//! it is configured (so every server continues every conversation), else in process memory. Its history is sent to the model as Gemini
//! `contents` (roles `user` / `model`), bounded to `conversation.max_history_tokens`, and is part
//! of the cache key, so first turns and identical follow-ups still share answers. Two messages of
//! one conversation never run at once: the second waits (bounded) for the first. Each question and
//! its answer are written before the answer is returned; a write that fails is an error the
//! client sees.

mod memory;
pub mod metrics;
mod redis;
mod step;
pub mod token;

pub use self::memory::{MemoryBounds, MemoryStore};
pub use self::redis::RedisStore;
pub use self::step::{Place, Recorded, Said, Started};
pub use self::token::{answer_digest, TokenSigner};

use crate::agents::{Agent, AgentRegistry};
use crate::cache::{CacheKey, ResponseCache};
use crate::config::ConversationSettings;
use crate::providers::{input_token_estimate, ModelTurn, Role};
use learning_chat_records::conversations::{Append, ConversationRecord, NewTurns, TurnRecord};
use learning_chat_records::Records;
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
    /// The answer policy it started with and keeps (`socratic@1`); empty for a conversation
    /// stored before policies existed.
    pub policy: String,
    /// The experiment variant it was assigned (`experiment/variant`); empty when none.
    pub variant: String,
}

/// What a conversation is created with (besides its first turns): its agent, and the policy
/// and variant it keeps for its whole life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Head<'a> {
    /// The agent it belongs to.
    pub agent_id: &'a str,
    /// The answer policy and version (`socratic@1`).
    pub policy: &'a str,
    /// The experiment variant (`experiment/variant`), empty when none.
    pub variant: &'a str,
}

impl<'a> From<&'a str> for Head<'a> {
    /// The head of a conversation of `agent_id` with no recorded policy or variant.
    fn from(agent_id: &'a str) -> Head<'a> {
        Head {
            agent_id,
            ..Head::default()
        }
    }
}

impl Conversation {
    /// Its head, as it was created.
    pub fn head(&self) -> Head<'_> {
        Head {
            agent_id: &self.agent_id,
            policy: &self.policy,
            variant: &self.variant,
        }
    }

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
    /// In this process (neither a records database nor Redis configured).
    Memory(Arc<MemoryStore>),
    /// In Redis, shared by every server (no records database configured).
    Redis(RedisStore),
    /// In the records database: kept until erased, shared by every server using it.
    Records(Records),
}

/// The store could not be reached (Redis or the database down); nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the conversation store is unavailable")]
pub struct StoreDown;

impl From<crate::redis_link::RedisUnavailable> for StoreDown {
    fn from(_: crate::redis_link::RedisUnavailable) -> StoreDown {
        StoreDown
    }
}

impl From<learning_chat_records::RecordsError> for StoreDown {
    fn from(error: learning_chat_records::RecordsError) -> StoreDown {
        tracing::warn!(%error, "conversation store");
        StoreDown
    }
}

fn from_record(record: ConversationRecord) -> Conversation {
    Conversation {
        id: record.id,
        agent_id: record.agent_id,
        policy: record.policy,
        variant: record.variant,
        created_at_ms: u64::try_from(record.created_at_ms).unwrap_or(0),
        turns: record
            .turns
            .into_iter()
            .map(|t| Turn {
                role: if t.role == Role::Model.as_str() {
                    Role::Model
                } else {
                    Role::User
                },
                text: t.text,
                at_ms: u64::try_from(t.at_ms).unwrap_or(0),
                cached: t.cached,
                model: t.model,
            })
            .collect(),
    }
}

fn to_record(turn: &Turn) -> TurnRecord {
    TurnRecord {
        role: turn.role.as_str().to_owned(),
        text: turn.text.clone(),
        at_ms: i64::try_from(turn.at_ms).unwrap_or(i64::MAX),
        cached: turn.cached,
        model: turn.model.clone(),
    }
}

/// The owner part of a stored id (`{owner}~{id}`), as the database keeps it.
pub fn owner_of(stored: &str) -> Option<&str> {
    stored.split_once('~').map(|(owner, _)| owner)
}

impl ConversationStore {
    /// False while the store is known to be unusable (Redis down); the database is only
    /// known to be down when a statement fails.
    pub fn is_available(&self) -> bool {
        match self {
            ConversationStore::Memory(_) | ConversationStore::Records(_) => true,
            ConversationStore::Redis(store) => store.link().is_up(),
        }
    }

    /// The conversation; `None` when unknown, erased or expired.
    pub async fn load(&self, id: &str) -> Result<Option<Conversation>, StoreDown> {
        match self {
            ConversationStore::Memory(store) => Ok(store.load(id)),
            ConversationStore::Redis(store) => Ok(store.load(id).await?),
            ConversationStore::Records(records) => {
                Ok(records.load_conversation(id).await?.map(from_record))
            }
        }
    }

    /// Appends `turns` if the conversation still has `expected` turns (0 creates it, with
    /// `head`, started by the hashed `learner`, '' for none: kept by the records database,
    /// whose console and data rights find a learner's conversations by it).
    pub async fn append(
        &self,
        id: &str,
        head: Head<'_>,
        created_at_ms: u64,
        expected: usize,
        turns: &[Turn],
        learner: &str,
    ) -> Result<AppendOutcome, StoreDown> {
        match self {
            ConversationStore::Memory(store) => {
                Ok(store.append(id, head, created_at_ms, expected, turns))
            }
            ConversationStore::Redis(store) => Ok(store
                .append(id, head, created_at_ms, expected, turns)
                .await?),
            ConversationStore::Records(records) => {
                let turns: Vec<TurnRecord> = turns.iter().map(to_record).collect();
                let appended = records
                    .append_turns(NewTurns {
                        id,
                        owner: owner_of(id),
                        learner,
                        agent_id: head.agent_id,
                        policy: head.policy,
                        variant: head.variant,
                        created_at_ms: i64::try_from(created_at_ms).unwrap_or(i64::MAX),
                        expected,
                        turns: &turns,
                    })
                    .await?;
                Ok(match appended {
                    Append::Appended(count) => AppendOutcome::Appended(count),
                    Append::Conflict => AppendOutcome::Conflict,
                    Append::Gone => AppendOutcome::Gone,
                })
            }
        }
    }

    /// Erases the conversation; false when there was none.
    pub async fn erase(&self, id: &str) -> Result<bool, StoreDown> {
        match self {
            ConversationStore::Memory(store) => Ok(store.erase(id)),
            ConversationStore::Redis(store) => Ok(store.erase(id).await?),
            ConversationStore::Records(records) => Ok(records.erase_conversation(id).await?),
        }
    }

    /// Conversations stored now (cluster-wide with Redis or a shared database).
    pub async fn active(&self) -> Result<u64, StoreDown> {
        match self {
            ConversationStore::Memory(store) => Ok(store.active()),
            ConversationStore::Redis(store) => Ok(store.active().await?),
            ConversationStore::Records(records) => Ok(records.conversation_count().await?),
        }
    }
}

/// Why a conversation message got no answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConversationError {
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

/// Conversations: storage, locking, history bounds.
#[derive(Clone)]
pub struct Conversations {
    store: ConversationStore,
    settings: ConversationSettings,
    /// Signs the ids of one-shot answers (nothing stored for them).
    tokens: TokenSigner,
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

/// True for a string that can be a stored conversation's id (anything else cannot exist).
pub fn is_valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// What a conversation id the client sent names.
pub(crate) enum Named {
    /// A stored conversation: its stored id.
    Stored(String),
    /// A one-shot answer's token: the stored id it continues under, and its claims.
    Token(String, token::Claims),
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
        tokens: TokenSigner,
    ) -> Conversations {
        Conversations {
            store,
            settings,
            tokens,
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
            crate::conversations::metrics::conversation_refused("busy");
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
        crate::conversations::metrics::conversation_refused("store_unavailable");
        ConversationError::StoreUnavailable {
            retry_after: STORE_RETRY_AFTER,
        }
    }

    /// The token signer (shared with the start-up code that sets its key).
    pub fn tokens(&self) -> &TokenSigner {
        &self.tokens
    }

    /// What `id` names for the caller `owner`; `None` when it cannot name anything of theirs
    /// (malformed, forged, another key's token).
    /// The id the conversation the client calls `id` is stored under (a token's once
    /// continued); `None` for an id that cannot be one (or a token not verified for `owner`).
    pub fn stored_id_for(&self, id: &str, owner: Option<&str>) -> Option<String> {
        match self.named(id, owner)? {
            Named::Stored(stored) | Named::Token(stored, _) => Some(stored),
        }
    }

    pub(crate) fn named(&self, id: &str, owner: Option<&str>) -> Option<Named> {
        if is_valid_id(id) {
            return Some(Named::Stored(stored_id(id, owner)));
        }
        if !token::looks_like_token(id) {
            return None;
        }
        let claims = self.tokens.verify(id)?;
        if claims.owner != owner.unwrap_or("") {
            return None;
        }
        Some(Named::Token(stored_id(&claims.stored_id(), owner), claims))
    }

    /// The first exchange of a token's conversation, read back from the answer cache; `None`
    /// once the answer is gone from it (or replaced by another).
    pub(crate) async fn first_exchange(
        &self,
        claims: &token::Claims,
        cache: &ResponseCache,
    ) -> Option<[Turn; 2]> {
        if !self.tokens.can_start(claims, now_ms()) {
            return None;
        }
        let hit = cache.read_back(&claims.key).await?;
        if hit.digest() != claims.answer_digest || hit.question.is_empty() {
            return None;
        }
        let [question, mut answer] = step::exchange(
            &hit.question,
            Said {
                text: &hit.text,
                cached: true,
                model: &hit.model,
                kept_under: None,
                digest: None,
            },
            claims.at_ms,
        );
        // Shared by whoever asked the same question: never evicted by an erasure.
        answer.cached = true;
        Some([question, answer])
    }

    /// The conversation (for GET). A token's conversation that was never continued is its
    /// first exchange, while that answer is in the cache.
    pub async fn get(
        &self,
        id: &str,
        owner: Option<&str>,
        cache: &ResponseCache,
    ) -> Result<Conversation, ConversationError> {
        let named = self.named(id, owner).ok_or(ConversationError::NotFound)?;
        let stored = match &named {
            Named::Stored(stored) | Named::Token(stored, _) => stored,
        };
        let found = self
            .store
            .load(stored)
            .await
            .map_err(|_| self.unavailable())?;
        let mut conversation = match (found, named) {
            (Some(conversation), _) if conversation.turns.is_empty() => {
                return Err(ConversationError::NotFound)
            }
            (Some(conversation), _) => conversation,
            (None, Named::Stored(_)) => return Err(ConversationError::NotFound),
            (None, Named::Token(_, claims)) => Conversation {
                id: String::new(),
                turns: self
                    .first_exchange(&claims, cache)
                    .await
                    .ok_or(ConversationError::NotFound)?
                    .to_vec(),
                agent_id: claims.agent_id,
                created_at_ms: claims.at_ms,
                policy: claims.policy,
                variant: claims.variant,
            },
        };
        id.clone_into(&mut conversation.id);
        Ok(conversation)
    }

    /// Erases the conversation from the store (the database or Redis: for every server), and
    /// from `cache` the answers this conversation caused (made by the model for it). Answers it
    /// was served from the cache — a first question's above all — are shared with every other
    /// caller who asked the same and are never evicted: erasing cannot be used to force paid
    /// model calls on others. A token's conversation that was never continued has nothing
    /// stored: erasing it succeeds and changes nothing.
    pub async fn erase(
        &self,
        id: &str,
        owner: Option<&str>,
        agents: &AgentRegistry,
        cache: &ResponseCache,
        key_of: impl Fn(&Agent, Head<'_>, &str, &[ModelTurn]) -> CacheKey,
    ) -> Result<(), ConversationError> {
        let named = self.named(id, owner).ok_or(ConversationError::NotFound)?;
        let (stored, is_token) = match named {
            Named::Stored(stored) => (stored, false),
            Named::Token(stored, _) => (stored, true),
        };
        let id = stored.as_str();
        match self
            .erase_stored_as(id, is_token, agents, cache, key_of)
            .await?
        {
            true => Ok(()),
            false => Err(ConversationError::NotFound),
        }
    }

    /// Erases a conversation by the id it is stored under (the console's erasure of a learner's
    /// data), as [`Conversations::erase`] does: the answers the model made for it from the
    /// cache, then the store. A tombstone stays in its place (no text), since the id may have
    /// begun as a one-shot token that would otherwise read its first exchange back from the
    /// cache. False when there was none.
    pub async fn erase_stored(
        &self,
        stored: &str,
        agents: &AgentRegistry,
        cache: &ResponseCache,
        key_of: impl Fn(&Agent, Head<'_>, &str, &[ModelTurn]) -> CacheKey,
    ) -> Result<bool, ConversationError> {
        self.erase_stored_as(stored, true, agents, cache, key_of)
            .await
    }

    async fn erase_stored_as(
        &self,
        id: &str,
        is_token: bool,
        agents: &AgentRegistry,
        cache: &ResponseCache,
        key_of: impl Fn(&Agent, Head<'_>, &str, &[ModelTurn]) -> CacheKey,
    ) -> Result<bool, ConversationError> {
        // A message being answered finishes first; one arriving later finds nothing.
        let _lock = self.lock(id).await?;
        let found = self.store.load(id).await.map_err(|_| self.unavailable())?;
        let conversation = match found {
            Some(conversation) if !conversation.turns.is_empty() => conversation,
            // Erased already.
            Some(_) => return Ok(false),
            // A token never continued: nothing stored, nothing to erase (its answer is shared);
            // the tombstone keeps the token from starting the conversation afterwards.
            None if is_token => return self.tombstone(id, "").await.map(|()| true),
            None => return Ok(false),
        };
        let keys = match agents.get(&conversation.agent_id) {
            Some(agent) => self.answer_keys(&agent, &conversation, key_of),
            None => Vec::new(),
        };
        if cache.remove(&keys).await.is_err() {
            return Err(self.unavailable());
        }
        match self.store.erase(id).await {
            Ok(true) => {
                crate::conversations::metrics::conversation_erased();
                if is_token {
                    self.tombstone(id, &conversation.agent_id).await?;
                }
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(_) => Err(self.unavailable()),
        }
    }

    /// Marks a token's conversation erased: an empty conversation under its stored id, so the
    /// token (still valid, its answer maybe still cached) cannot start it again. No text is kept.
    async fn tombstone(&self, stored: &str, agent_id: &str) -> Result<(), ConversationError> {
        match self
            .store
            .append(stored, agent_id.into(), now_ms(), 0, &[], "")
            .await
        {
            Ok(_) => Ok(()),
            Err(_) => Err(self.unavailable()),
        }
    }

    /// The cache keys of the answers the model made for this conversation: each such question
    /// with the history that was sent with it (recomputed with today's bounds and agent
    /// settings). Answers served from the cache are left out: others share them.
    fn answer_keys(
        &self,
        agent: &Agent,
        conversation: &Conversation,
        key_of: impl Fn(&Agent, Head<'_>, &str, &[ModelTurn]) -> CacheKey,
    ) -> Vec<CacheKey> {
        let turns = &conversation.turns;
        (0..turns.len())
            .step_by(2)
            .filter(|&at| turns.get(at + 1).is_some_and(|answer| !answer.cached))
            .map(|at| {
                let message = &turns[at].text;
                let (history, _) = bounded_history(
                    &agent.definition.system_prompt,
                    &turns[..at],
                    message,
                    self.settings.max_history_tokens.get(),
                );
                key_of(agent, conversation.head(), message, &history)
            })
            .collect()
    }
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
