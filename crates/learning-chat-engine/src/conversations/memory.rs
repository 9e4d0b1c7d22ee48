//! Conversations in process memory, for a server without Redis: bounded in number, in bytes and
//! per key, and in lifetime (a conversation idle for the TTL is gone).
//!
//! One key cannot evict another key's conversations: a key at `conversation.max_open_per_key`
//! makes room among its own, and when the store is over `conversation.max_memory_bytes` (or
//! `max_conversations`) the conversation evicted is the least recently used one of the owner
//! holding the most bytes. Conversations stored without an owner (auth off) count as one owner.
//!
//! Time is tokio's, so tests can move it with a paused clock.

use super::{AppendOutcome, Conversation, Head, Turn};
use crate::config::ConversationSettings;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What a stored conversation costs besides its text: the entry, its id in the maps and
/// indexes, and the map slots.
const ENTRY_OVERHEAD: usize = std::mem::size_of::<Entry>() + 3 * std::mem::size_of::<String>() + 64;
/// What a turn costs besides its text.
const TURN_OVERHEAD: usize = std::mem::size_of::<Turn>();

/// The store's bounds.
#[derive(Debug, Clone, Copy)]
pub struct MemoryBounds {
    /// Most conversations held.
    pub max_conversations: usize,
    /// Most bytes held (text, ids and bookkeeping).
    pub max_bytes: usize,
    /// Most conversations one key holds (none for conversations without an owner).
    pub max_open_per_key: usize,
    /// How long an idle conversation lives.
    pub ttl: Duration,
}

impl MemoryBounds {
    /// The bounds `settings` give.
    pub fn from_settings(settings: &ConversationSettings) -> MemoryBounds {
        MemoryBounds {
            max_conversations: settings.max_conversations.get(),
            max_bytes: usize::try_from(settings.max_memory_bytes).unwrap_or(usize::MAX),
            max_open_per_key: settings.max_open_per_key.get(),
            ttl: settings.ttl,
        }
    }
}

/// The in-process store. It may go beyond its byte budget only by the conversation being
/// written, when nothing else is left to evict.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    bounds: MemoryBounds,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Use order: the smallest sequence number is the least recently used conversation.
    by_use: BTreeMap<u64, String>,
    /// Each owner's conversations, in use order, and the bytes they hold.
    owners: HashMap<Arc<str>, Owner>,
    next_seq: u64,
    /// Bytes held by every entry.
    bytes: usize,
}

#[derive(Debug, Default)]
struct Owner {
    by_use: BTreeMap<u64, String>,
    bytes: usize,
}

#[derive(Debug)]
struct Entry {
    conversation: Conversation,
    owner: Arc<str>,
    last_used: Instant,
    seq: u64,
    bytes: usize,
}

/// The owner a stored id names: the key id before `~` (see `stored_id`), or none.
fn owner_of(stored: &str) -> &str {
    stored.split_once('~').map_or("", |(owner, _)| owner)
}

/// The bytes a conversation holds in the store.
fn bytes_of(conversation: &Conversation) -> usize {
    ENTRY_OVERHEAD
        + conversation.id.len() * 3
        + conversation.agent_id.len()
        + conversation.policy.len()
        + conversation.variant.len()
        + conversation
            .turns
            .iter()
            .map(|t| TURN_OVERHEAD + t.text.len() + t.model.len())
            .sum::<usize>()
}

impl Inner {
    /// Marks `id` as used now and returns its entry.
    fn touch(&mut self, id: &str, now: Instant) -> Option<&mut Entry> {
        let seq = self.next_seq;
        let entry = self.entries.get_mut(id)?;
        self.by_use.remove(&entry.seq);
        if let Some(owner) = self.owners.get_mut(&entry.owner) {
            owner.by_use.remove(&entry.seq);
            owner.by_use.insert(seq, id.to_owned());
        }
        entry.seq = seq;
        entry.last_used = now;
        self.by_use.insert(seq, id.to_owned());
        self.next_seq += 1;
        Some(entry)
    }

    fn remove(&mut self, id: &str) -> bool {
        let Some(entry) = self.entries.remove(id) else {
            return false;
        };
        self.by_use.remove(&entry.seq);
        self.bytes -= entry.bytes;
        if let Some(owner) = self.owners.get_mut(&entry.owner) {
            owner.by_use.remove(&entry.seq);
            owner.bytes -= entry.bytes;
            if owner.by_use.is_empty() {
                self.owners.remove(&entry.owner);
            }
        }
        true
    }

    /// Changes the bytes counted for `id` to `bytes`.
    fn resize(&mut self, id: &str, bytes: usize) {
        let Some(entry) = self.entries.get_mut(id) else {
            return;
        };
        let old = std::mem::replace(&mut entry.bytes, bytes);
        self.bytes = self.bytes + bytes - old;
        if let Some(owner) = self.owners.get_mut(&entry.owner) {
            owner.bytes = owner.bytes + bytes - old;
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
            if !self.remove(&id) {
                self.by_use.pop_first();
            }
        }
    }

    /// The least recently used conversation of the owner holding the most bytes, but not
    /// `keep`.
    fn heaviest_owners_oldest(&self, keep: &str) -> Option<String> {
        let oldest = |owner: &Owner| {
            owner
                .by_use
                .values()
                .find(|id| id.as_str() != keep)
                .cloned()
        };
        self.owners
            .values()
            .filter(|owner| oldest(owner).is_some())
            .max_by_key(|owner| owner.bytes)
            .and_then(oldest)
    }

    /// Evicts until the store is within `bounds`, sparing `keep`.
    fn make_room(&mut self, bounds: &MemoryBounds, keep: &str) {
        while self.bytes > bounds.max_bytes || self.entries.len() > bounds.max_conversations {
            let Some(victim) = self.heaviest_owners_oldest(keep) else {
                break;
            };
            self.remove(&victim);
            crate::conversations::metrics::conversation_evicted();
        }
    }
}

impl MemoryStore {
    /// A store within `bounds`.
    pub fn new(bounds: MemoryBounds) -> MemoryStore {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            bounds,
        }
    }

    /// The conversation, its lifetime refreshed; `None` when unknown, erased or expired.
    pub fn load(&self, id: &str) -> Option<Conversation> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.expire(now, self.bounds.ttl);
        inner.touch(id, now).map(|e| e.conversation.clone())
    }

    /// Appends `turns` when the conversation still has `expected` turns (0: creates it, as
    /// `agent_id`'s, created at `created_at_ms`).
    pub fn append<'a>(
        &self,
        id: &str,
        head: impl Into<Head<'a>>,
        created_at_ms: u64,
        expected: usize,
        turns: &[Turn],
    ) -> AppendOutcome {
        let head = head.into();
        let now = Instant::now();
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        inner.expire(now, self.bounds.ttl);
        let outcome = if expected == 0 {
            if inner.entries.contains_key(id) {
                return AppendOutcome::Conflict;
            }
            self.create(inner, id, head, created_at_ms, turns, now);
            AppendOutcome::Appended(turns.len())
        } else {
            let Some(entry) = inner.touch(id, now) else {
                return AppendOutcome::Gone;
            };
            if entry.conversation.turns.len() != expected {
                return AppendOutcome::Conflict;
            }
            entry.conversation.turns.extend_from_slice(turns);
            let (len, bytes) = (
                entry.conversation.turns.len(),
                bytes_of(&entry.conversation),
            );
            inner.resize(id, bytes);
            AppendOutcome::Appended(len)
        };
        inner.make_room(&self.bounds, id);
        crate::conversations::metrics::conversations_memory_bytes(inner.bytes);
        outcome
    }

    /// Stores a new conversation, first making room among its owner's own at its cap.
    fn create(
        &self,
        inner: &mut Inner,
        id: &str,
        head: Head<'_>,
        created_at_ms: u64,
        turns: &[Turn],
        now: Instant,
    ) {
        let owner_id = owner_of(id);
        // Only a key's own conversations make room for its new one: others are not touched.
        if !owner_id.is_empty() {
            loop {
                let oldest = inner
                    .owners
                    .get(owner_id)
                    .filter(|o| o.by_use.len() >= self.bounds.max_open_per_key)
                    .and_then(|o| o.by_use.values().next().cloned());
                let Some(oldest) = oldest else {
                    break;
                };
                inner.remove(&oldest);
                crate::conversations::metrics::conversation_evicted();
            }
        }
        let owner: Arc<str> = inner
            .owners
            .get_key_value(owner_id)
            .map_or_else(|| Arc::from(owner_id), |(k, _)| k.clone());
        let conversation = Conversation {
            id: id.to_owned(),
            agent_id: head.agent_id.to_owned(),
            created_at_ms,
            turns: turns.to_vec(),
            policy: head.policy.to_owned(),
            variant: head.variant.to_owned(),
        };
        let bytes = bytes_of(&conversation);
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.by_use.insert(seq, id.to_owned());
        let slot = inner.owners.entry(owner.clone()).or_default();
        slot.by_use.insert(seq, id.to_owned());
        slot.bytes += bytes;
        inner.bytes += bytes;
        inner.entries.insert(
            id.to_owned(),
            Entry {
                conversation,
                owner,
                last_used: now,
                seq,
                bytes,
            },
        );
    }

    /// Erases the conversation; false when there was none.
    pub fn erase(&self, id: &str) -> bool {
        let mut inner = self.inner.lock();
        let erased = inner.remove(id);
        crate::conversations::metrics::conversations_memory_bytes(inner.bytes);
        erased
    }

    /// Conversations alive now.
    pub fn active(&self) -> u64 {
        let mut inner = self.inner.lock();
        inner.expire(Instant::now(), self.bounds.ttl);
        inner.entries.len() as u64
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
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

    fn store(max_conversations: usize) -> MemoryStore {
        MemoryStore::new(MemoryBounds {
            max_conversations,
            max_bytes: usize::MAX,
            max_open_per_key: usize::MAX,
            ttl: Duration::from_secs(100),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn idle_conversations_expire_and_use_refreshes_them() {
        let store = store(10);
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
        assert_eq!(store.bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_least_recently_used_conversation_is_evicted_at_capacity() {
        let store = store(2);
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
        let store = store(2);
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
        assert_eq!(store.bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_bytes_held_stay_within_the_budget_however_much_is_written() {
        const BUDGET: usize = 256 * 1024;
        let store = MemoryStore::new(MemoryBounds {
            max_conversations: 1_000_000,
            max_bytes: BUDGET,
            max_open_per_key: usize::MAX,
            ttl: Duration::from_secs(3600),
        });
        let text = "x".repeat(1000);
        let mut peak = 0;
        for i in 0..2_000 {
            let id = format!("key_{}~{i:032x}", i % 7);
            store.append(&id, "math", 0, 0, &[turn(&text), turn(&text)]);
            // Follow-ups grow conversations already stored.
            store.append(&id, "math", 0, 2, &[turn(&text), turn(&text)]);
            peak = peak.max(store.bytes());
        }
        assert!(peak <= BUDGET, "peak {peak} of {BUDGET}");
        assert!(store.bytes() > BUDGET / 2, "the budget is used");
        // The bytes counted are the text held, and then some.
        let held = store.active() as usize * 4 * 1000;
        assert!(store.bytes() >= held, "{} < {held}", store.bytes());
    }

    #[tokio::test(start_paused = true)]
    async fn one_key_cannot_evict_another_keys_conversations() {
        let store = MemoryStore::new(MemoryBounds {
            max_conversations: 1_000_000,
            max_bytes: 64 * 1024,
            max_open_per_key: 10,
            ttl: Duration::from_secs(3600),
        });
        let quiet: Vec<String> = (0..3).map(|i| format!("key_b~{i:032x}")).collect();
        for id in &quiet {
            store.append(id, "math", 0, 0, &[turn("a question"), turn("an answer")]);
        }
        // Key A opens far more conversations than its cap, with large turns.
        let text = "y".repeat(2000);
        for i in 0..500 {
            let id = format!("key_a~{i:032x}");
            store.append(&id, "math", 0, 0, &[turn(&text), turn(&text)]);
        }
        for id in &quiet {
            assert!(store.load(id).is_some(), "B's {id} survived A's flood");
        }
        // A holds at most its cap, and its most recent ones.
        let a_open = (0..500)
            .filter(|i| store.load(&format!("key_a~{i:032x}")).is_some())
            .count();
        assert!(a_open <= 10, "{a_open}");
        assert!(store.load(&format!("key_a~{:032x}", 499)).is_some());
        assert!(store.bytes() <= 64 * 1024);
    }
}
