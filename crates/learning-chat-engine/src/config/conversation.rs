//! `[conversation]`: multi-turn conversations: storage, lifetime and bounds.

use super::{invalid, ConfigError, Secret};
use serde::{Deserialize, Serialize};
use std::num::{NonZero, NonZeroU32, NonZeroUsize};
use std::time::Duration;

/// Multi-turn conversations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConversationSettings {
    /// How long a conversation lives after its last use (`ttl_ms`; refreshed on every use).
    #[serde(rename = "ttl_ms", with = "super::duration")]
    pub ttl: Duration,
    /// Most conversations kept in process memory when Redis is not configured; beyond it the
    /// least recently used one of the key holding the most is evicted.
    pub max_conversations: NonZeroUsize,
    /// Most bytes the conversations kept in process memory hold (text and bookkeeping); beyond
    /// it the least recently used one of the key holding the most bytes is evicted.
    pub max_memory_bytes: u64,
    /// Most conversations one API key keeps open in process memory; its new one evicts its own
    /// least recently used, never another key's.
    pub max_open_per_key: NonZeroUsize,
    /// Most tokens of history (system prompt, earlier turns and the new message) sent to the
    /// model; older turns beyond it are left out, the first exchange is always kept.
    pub max_history_tokens: NonZeroU32,
    /// Most turns stored per conversation (a question and its answer are two turns; at least
    /// 2); a message that would go beyond it is refused with 422 `conversation_turn_limit`.
    pub max_turns: u32,
    /// Most bytes of turn text stored per conversation; a message that would go beyond it is
    /// refused with 413 `conversation_too_large`.
    pub max_stored_bytes: u64,
    /// How long a message waits for an earlier message of the same conversation to finish
    /// (`busy_wait_ms`) before it is refused with 409 `conversation_busy` and `Retry-After`.
    #[serde(rename = "busy_wait_ms", with = "super::duration")]
    pub busy_wait: Duration,
    /// Key of the signed ids of one-shot answers (`LEARNING_CHAT_CONVERSATION__TOKEN_SECRET`);
    /// empty: the records database keeps one for every server, else one is derived from
    /// `auth.pepper`, else each process makes its own.
    pub token_secret: Secret,
    /// Deprecated: `ttl_secs` in seconds, read as `ttl_ms` (warned about at start-up).
    #[serde(rename = "ttl_secs", skip_serializing)]
    pub deprecated_ttl_secs: Option<u64>,
}

impl Default for ConversationSettings {
    fn default() -> Self {
        ConversationSettings {
            ttl: Duration::from_secs(86_400),
            max_conversations: const { NonZero::new(100_000).unwrap() },
            max_memory_bytes: 8 * 1024 * 1024,
            max_open_per_key: const { NonZero::new(2_000).unwrap() },
            max_history_tokens: const { NonZero::new(8_000).unwrap() },
            max_turns: 200,
            max_stored_bytes: 512 * 1024,
            busy_wait: Duration::from_secs(10),
            token_secret: Secret::default(),
            deprecated_ttl_secs: None,
        }
    }
}

impl ConversationSettings {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        super::positive("conversation.ttl_ms", self.ttl)?;
        if self.max_memory_bytes < self.max_stored_bytes {
            return invalid(
                "conversation.max_memory_bytes must be at least conversation.max_stored_bytes",
            );
        }
        if self.max_turns < 2 {
            return invalid(
                "conversation.max_turns must be at least 2 (a question and its answer)",
            );
        }
        Ok(())
    }
}
