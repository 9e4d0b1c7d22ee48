//! Conversations in Redis, so any server continues any conversation.
//!
//! One list per conversation under `{prefix}:conversation:{id}`: a header (agent and creation
//! time) then one JSON turn per element, only ever appended to, its TTL refreshed on every use.
//! A sorted set `{prefix}:conversations` (id by last use) gives the active count. A short lock
//! key per conversation keeps two messages of one conversation from running at once, on any
//! server.

use super::{AppendOutcome, Conversation, Head, Turn};
use crate::lease::{HeldLease, LeaseOps, RedisLease};
use crate::redis_link::{RedisLink, RedisUnavailable};
use crate::redis_scripts::SCRIPTS;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::time::Instant;

/// The first element of a conversation's list.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    agent_id: String,
    created_at_ms: u64,
    /// Absent in conversations stored before policies.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    policy: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    variant: String,
}

// Every script touches the conversation's own key only: the index of active conversations is a
// separate key in another Redis Cluster slot, so it is updated by a command of its own.

/// The names of the conversation lock's Redis calls.
const LOCK_OPS: LeaseOps = LeaseOps {
    acquire: "conversation_lock",
    renew: "conversation_lock",
    release: "conversation_unlock",
};

/// The Redis store.
#[derive(Debug, Clone)]
pub struct RedisStore {
    link: RedisLink,
    ttl: Duration,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RedisStore {
    /// A store whose conversations live `ttl` after their last use.
    pub fn new(link: RedisLink, ttl: Duration) -> RedisStore {
        RedisStore { link, ttl }
    }

    /// The link, for its health.
    pub fn link(&self) -> &RedisLink {
        &self.link
    }

    /// The Redis key of a conversation.
    pub fn redis_key(&self, id: &str) -> String {
        self.link.key("conversation", id)
    }

    fn index_key(&self) -> String {
        self.link.key("conversations", "active")
    }

    fn lock_key(&self, id: &str) -> String {
        self.link.key("conversation-lock", id)
    }

    /// The conversation, its TTL refreshed; `None` when unknown, erased, expired or corrupt.
    pub async fn load(&self, id: &str) -> Result<Option<Conversation>, RedisUnavailable> {
        let (key, index) = (self.redis_key(id), self.index_key());
        let (ttl, now) = (millis(self.ttl), super::now_ms());
        let values: Vec<String> = self
            .link
            .run("conversation_load", |mut conn| async move {
                let values: Vec<String> = SCRIPTS
                    .conversation_load
                    .key(key)
                    .arg(ttl)
                    .invoke_async(&mut conn)
                    .await?;
                // A tombstone (the header alone) is not a live conversation.
                if values.len() > 1 && values[0] != "corrupt" {
                    ::redis::cmd("ZADD")
                        .arg(index)
                        .arg(now)
                        .arg(id)
                        .query_async::<()>(&mut conn)
                        .await?;
                }
                Ok(values)
            })
            .await?;
        let Some((header, turns)) = values.split_first() else {
            return Ok(None);
        };
        let header: Option<Header> = serde_json::from_str(header).ok();
        let turns: Option<Vec<Turn>> = turns.iter().map(|t| serde_json::from_str(t).ok()).collect();
        match (header, turns) {
            (Some(header), Some(turns)) => Ok(Some(Conversation {
                id: id.to_owned(),
                agent_id: header.agent_id,
                created_at_ms: header.created_at_ms,
                turns,
                policy: header.policy,
                variant: header.variant,
            })),
            _ => {
                // Unreadable: nobody can continue it, so it goes rather than failing every use.
                crate::redis_link::metrics::redis_corrupt("conversation", 1);
                let _ = self.erase(id).await;
                Ok(None)
            }
        }
    }

    /// Appends `turns` when the conversation still has `expected` turns (0: creates it).
    pub async fn append(
        &self,
        id: &str,
        head: Head<'_>,
        created_at_ms: u64,
        expected: usize,
        turns: &[Turn],
    ) -> Result<AppendOutcome, RedisUnavailable> {
        let header = serde_json::to_string(&Header {
            agent_id: head.agent_id.to_owned(),
            created_at_ms,
            policy: head.policy.to_owned(),
            variant: head.variant.to_owned(),
        })
        .map_err(|e| RedisUnavailable(e.to_string()))?;
        let tombstone = turns.is_empty();
        let turns: Vec<String> = turns
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<_, _>>()
            .map_err(|e| RedisUnavailable(e.to_string()))?;
        let (key, index) = (self.redis_key(id), self.index_key());
        let (ttl, now) = (millis(self.ttl), super::now_ms());
        // The header is element 0, so a conversation of n turns is a list of n + 1.
        let expected_len = if expected == 0 { 0 } else { expected + 1 };
        let length: i64 = self
            .link
            .run("conversation_append", |mut conn| async move {
                let mut invocation = SCRIPTS.conversation_append.key(key);
                invocation
                    .arg(ttl)
                    .arg(id)
                    .arg(now)
                    .arg(expected_len)
                    .arg(header);
                for turn in turns {
                    invocation.arg(turn);
                }
                let length: i64 = invocation.invoke_async(&mut conn).await?;
                // An erased token conversation's tombstone (no turns) is not a conversation.
                if length >= 0 && !tombstone {
                    let mut index_update = ::redis::pipe();
                    index_update
                        .cmd("ZADD")
                        .arg(&index)
                        .arg(now)
                        .arg(id)
                        .ignore();
                    if expected_len == 0 {
                        // Trimmed on every new conversation, so the index stays bounded even if
                        // nobody scrapes the gauge.
                        index_update
                            .cmd("ZREMRANGEBYSCORE")
                            .arg(&index)
                            .arg("-inf")
                            .arg(format!("({}", now.saturating_sub(ttl)))
                            .ignore();
                    }
                    index_update.query_async::<()>(&mut conn).await?;
                }
                Ok(length)
            })
            .await?;
        Ok(match length {
            -2 => AppendOutcome::Gone,
            n if n < 0 => AppendOutcome::Conflict,
            n => AppendOutcome::Appended(usize::try_from(n - 1).unwrap_or(0)),
        })
    }

    /// Erases the conversation; false when there was none.
    pub async fn erase(&self, id: &str) -> Result<bool, RedisUnavailable> {
        let (key, index) = (self.redis_key(id), self.index_key());
        let deleted: i64 = self
            .link
            .run("conversation_erase", |mut conn| async move {
                ::redis::cmd("ZREM")
                    .arg(index)
                    .arg(id)
                    .query_async::<()>(&mut conn)
                    .await?;
                ::redis::cmd("DEL").arg(key).query_async(&mut conn).await
            })
            .await?;
        Ok(deleted > 0)
    }

    /// Conversations used within the TTL, across the cluster.
    pub async fn active(&self) -> Result<u64, RedisUnavailable> {
        let index = self.index_key();
        let oldest = super::now_ms().saturating_sub(millis(self.ttl));
        self.link
            .run("conversation_active", |mut conn| async move {
                SCRIPTS
                    .conversation_active
                    .key(index)
                    .arg(oldest)
                    .invoke_async(&mut conn)
                    .await
            })
            .await
    }

    /// Takes the conversation's lock for `lease`, waiting with backoff while another message
    /// (on any server) holds it, until `until`; `None` when it was still held then. Released
    /// when the returned lease is dropped.
    pub async fn lock(
        &self,
        id: &str,
        lease: Duration,
        until: Instant,
    ) -> Result<Option<HeldLease>, RedisUnavailable> {
        let token = super::new_id();
        RedisLease::new(self.link.clone(), self.lock_key(id), token, lease, LOCK_OPS)
            .take_until(until)
            .await
    }
}
