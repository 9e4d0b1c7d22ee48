//! Conversations in process memory, for a server without Redis: bounded in number (least
//! recently used evicted first) and in lifetime (a conversation idle for the TTL is gone).
//!
//! Time is tokio's, so tests can move it with a paused clock.

use super::{AppendOutcome, Conversation, Turn};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::time::Duration;
use tokio::time::Instant;

/// The in-process store.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    ttl: Duration,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Use order: the smallest sequence number is the least recently used conversation.
    by_use: BTreeMap<u64, String>,
    next_seq: u64,
}

#[derive(Debug)]
struct Entry {
    conversation: Conversation,
    last_used: Instant,
    seq: u64,
}

impl Inner {
    /// Marks `id` as used now and returns its entry.
    fn touch(&mut self, id: &str, now: Instant) -> Option<&mut Entry> {
        let seq = self.next_seq;
        let entry = self.entries.get_mut(id)?;
        self.by_use.remove(&entry.seq);
        entry.seq = seq;
        entry.last_used = now;
        self.by_use.insert(seq, id.to_owned());
        self.next_seq += 1;
        Some(entry)
    }

    fn remove(&mut self, id: &str) -> bool {
        match self.entries.remove(id) {
            Some(entry) => {
                self.by_use.remove(&entry.seq);
                true
            }
            None => false,
        }
    }

    /// Drops the conversations idle for longer than `ttl`, oldest first (they lead the order).
    fn expire(&mut self, now: Instant, ttl: Duration) {
        while let Some((_, id)) = self.by_use.first_key_value() {
            let expired = self
                .entries
                .get(id)
                .is_none_or(|e| now.saturating_duration_since(e.last_used) > ttl);
            if !expired {
                break;
            }
            let id = id.clone();
            self.by_use.pop_first();
            self.entries.remove(&id);
        }
    }
}

impl MemoryStore {
    /// A store of at most `capacity` conversations, each living `ttl` after its last use.
    pub fn new(capacity: NonZeroUsize, ttl: Duration) -> MemoryStore {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            ttl,
            capacity: capacity.get(),
        }
    }

    /// The conversation, its lifetime refreshed; `None` when unknown, erased or expired.
    pub fn load(&self, id: &str) -> Option<Conversation> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.expire(now, self.ttl);
        inner.touch(id, now).map(|e| e.conversation.clone())
    }

    /// Appends `turns` when the conversation still has `expected` turns (0: creates it, as
    /// `agent_id`'s, created at `created_at_ms`).
    pub fn append(
        &self,
        id: &str,
        agent_id: &str,
        created_at_ms: u64,
        expected: usize,
        turns: &[Turn],
    ) -> AppendOutcome {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.expire(now, self.ttl);
        if expected == 0 {
            if inner.entries.contains_key(id) {
                return AppendOutcome::Conflict;
            }
            while inner.entries.len() >= self.capacity {
                let Some((_, oldest)) = inner.by_use.pop_first() else {
                    break;
                };
                inner.entries.remove(&oldest);
                crate::conversations::metrics::conversation_evicted();
            }
            let seq = inner.next_seq;
            inner.next_seq += 1;
            inner.by_use.insert(seq, id.to_owned());
            inner.entries.insert(
                id.to_owned(),
                Entry {
                    conversation: Conversation {
                        id: id.to_owned(),
                        agent_id: agent_id.to_owned(),
                        created_at_ms,
                        turns: turns.to_vec(),
                    },
                    last_used: now,
                    seq,
                },
            );
            return AppendOutcome::Appended(turns.len());
        }
        let Some(entry) = inner.touch(id, now) else {
            return AppendOutcome::Gone;
        };
        if entry.conversation.turns.len() != expected {
            return AppendOutcome::Conflict;
        }
        entry.conversation.turns.extend_from_slice(turns);
        AppendOutcome::Appended(entry.conversation.turns.len())
    }

    /// Erases the conversation; false when there was none.
    pub fn erase(&self, id: &str) -> bool {
        self.inner.lock().remove(id)
    }

    /// Conversations alive now.
    pub fn active(&self) -> u64 {
        let mut inner = self.inner.lock();
        inner.expire(Instant::now(), self.ttl);
        inner.entries.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Role;

    fn turn(text: &str) -> Turn {
        Turn {
            role: Role::User,
            text: text.to_owned(),
            at_ms: 0,
            cached: false,
            model: String::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_conversations_expire_and_use_refreshes_them() {
        let store = MemoryStore::new(NonZeroUsize::new(10).unwrap(), Duration::from_secs(100));
        store.append("a", "math", 0, 0, &[turn("q")]);
        store.append("b", "math", 0, 0, &[turn("q")]);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(store.load("a").is_some());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(store.load("a").is_some(), "used 60 s ago");
        assert!(store.load("b").is_none(), "idle for 120 s");
        assert_eq!(store.active(), 1);
        tokio::time::advance(Duration::from_secs(101)).await;
        assert!(store.load("a").is_none());
        assert_eq!(store.active(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_least_recently_used_conversation_is_evicted_at_capacity() {
        let store = MemoryStore::new(NonZeroUsize::new(2).unwrap(), Duration::from_secs(100));
        store.append("a", "math", 0, 0, &[turn("q")]);
        store.append("b", "math", 0, 0, &[turn("q")]);
        assert!(store.load("a").is_some());
        store.append("c", "math", 0, 0, &[turn("q")]);
        assert!(store.load("b").is_none(), "b was the least recently used");
        assert!(store.load("a").is_some());
        assert!(store.load("c").is_some());
        assert_eq!(store.active(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn appends_only_extend_the_expected_history() {
        let store = MemoryStore::new(NonZeroUsize::new(2).unwrap(), Duration::from_secs(100));
        assert_eq!(
            store.append("a", "math", 0, 2, &[turn("q")]),
            AppendOutcome::Gone
        );
        assert_eq!(
            store.append("a", "math", 0, 0, &[turn("q"), turn("a")]),
            AppendOutcome::Appended(2)
        );
        assert_eq!(
            store.append("a", "math", 0, 0, &[turn("q")]),
            AppendOutcome::Conflict
        );
        assert_eq!(
            store.append("a", "math", 0, 1, &[turn("q")]),
            AppendOutcome::Conflict
        );
        assert_eq!(
            store.append("a", "math", 0, 2, &[turn("q"), turn("a")]),
            AppendOutcome::Appended(4)
        );
        assert!(store.erase("a"));
        assert!(!store.erase("a"));
        assert!(store.load("a").is_none());
    }
}
