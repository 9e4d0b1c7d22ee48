//! Every API key in memory: authenticating a request is a hash and a map lookup, with no I/O.
//!
//! The set is loaded whole at start and kept current by a poll of the records database every
//! `database.key_refresh_ms` ([`KeyRefresher`]: keys changed since the last look, see
//! [`KeyPoll`]), plus a whole reload every [`FULL_RELOAD`] that also drops rows deleted by
//! hand. An unknown key never reads the store: it is unknown until a poll brings it. While the
//! database cannot be read the set stays as it is — revocations already seen hold, and a key
//! created meanwhile is refused until the database is back (`learning_chat_auth_keys_age_seconds`
//! shows how old the set is).
//!
//! A change this server writes itself (the console: a revocation, a class's policy) applies
//! at once ([`KeySet::changed_here`]). A poll whose read began before it may still hold the row
//! as it was; it leaves that key alone and is read again, so the change is never undone.

use super::keys::{unix_now, ApiKey};
use super::metrics::KeyRequests;
use learning_chat_records::keys::KeyPoll;
use learning_chat_records::{Records, RecordsError};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How often the whole table is read again (the polls in between read only changes).
pub const FULL_RELOAD: Duration = Duration::from_secs(600);
/// A key's last use is written at most this often per server.
const TOUCH_EVERY_SECS: u64 = 60;

/// A key held in memory, with what a request needs of it ready to clone.
#[derive(Debug)]
pub struct HeldKey {
    /// The key as stored.
    pub key: ApiKey,
    /// Its id, shared by every request of the key.
    pub id: Arc<str>,
    /// Its name, shared likewise.
    pub name: Arc<str>,
    /// Its (class's) answer policy, parsed once; `None` when unset or unknown to this build.
    pub policy: Option<learning_chat_engine::policy::Tutoring>,
    /// Unix seconds of the last use this server queued for writing.
    touched: AtomicU64,
    /// Requests of this key in progress on this server (`admission.default_key_concurrency`
    /// bounds it for keys that set no `concurrency` of their own).
    in_flight: AtomicU32,
    /// Its request counters, resolved at its first request.
    requests: OnceLock<Arc<KeyRequests>>,
    /// When this server applied a change it wrote itself (the console), so that a poll whose
    /// read began before then, and may hold the row as it was, does not put it back.
    changed_here: Option<Instant>,
}

impl HeldKey {
    fn new(key: ApiKey) -> HeldKey {
        HeldKey {
            id: Arc::from(key.id.as_str()),
            name: Arc::from(key.name.as_str()),
            policy: key
                .policy
                .as_deref()
                .and_then(learning_chat_engine::policy::Tutoring::parse),
            touched: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            requests: OnceLock::new(),
            changed_here: None,
            key,
        }
    }

    /// Its request counters, made with `label` at the first request.
    pub fn requests(&self, label: impl FnOnce(&Arc<str>) -> Arc<str>) -> &Arc<KeyRequests> {
        self.requests
            .get_or_init(|| Arc::new(KeyRequests::new(label(&self.id))))
    }

    /// Counts a request in progress on this server, unless `max` are already: the guard ends
    /// it. `None` when the key is at `max`.
    pub fn enter(self: &Arc<Self>, max: u32) -> Option<InFlight> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight(self.clone()))
    }
}

/// A request of a key in progress on this server; ends when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<HeldKey>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Found {
    /// The key with this hash.
    Key(Arc<HeldKey>),
    /// No key has this hash.
    Unknown,
    /// The set has never been loaded (the database was down since start): nothing can be said.
    NotLoaded,
}

/// The keys of one server, by hash.
pub struct KeySet {
    by_hash: RwLock<HashMap<String, Arc<HeldKey>>>,
    loaded: AtomicBool,
    max: usize,
    /// Key id → unix seconds of a use not yet written to the database.
    used: Mutex<HashMap<Arc<str>, u64>>,
}

impl KeySet {
    /// An empty set that will hold at most `max` keys.
    pub fn new(max: usize) -> KeySet {
        KeySet {
            by_hash: RwLock::new(HashMap::new()),
            loaded: AtomicBool::new(false),
            max: max.max(1),
            used: Mutex::new(HashMap::new()),
        }
    }

    /// The key whose secret hashes to `hash`: a read lock and a map lookup.
    pub fn find(&self, hash: &str) -> Found {
        if let Some(key) = self.by_hash.read().get(hash) {
            return Found::Key(key.clone());
        }
        if self.loaded.load(Ordering::Acquire) {
            Found::Unknown
        } else {
            Found::NotLoaded
        }
    }

    /// Notes that a key was used: at most once a minute it queues a last-use write (taking a
    /// short lock); otherwise one atomic load.
    pub fn mark_used(&self, held: &HeldKey) {
        let now = unix_now();
        let last = held.touched.load(Ordering::Relaxed);
        if now < last.saturating_add(TOUCH_EVERY_SECS) {
            return;
        }
        if held
            .touched
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.used.lock().insert(held.id.clone(), now);
        }
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.by_hash.read().len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces the whole set with a full read of the database that began at `read_at`. A key
    /// this server changed after that is kept as it is here: the read may predate the change.
    /// True when such a key was kept, so the read must be made again to see what is newer.
    fn replace(&self, keys: Vec<ApiKey>, read_at: Instant) -> bool {
        let old = self.by_hash.read().clone();
        let mut fresh = HashMap::with_capacity(keys.len().min(self.max));
        let mut skipped = 0u64;
        for key in keys {
            if fresh.len() >= self.max {
                skipped += 1;
                continue;
            }
            fresh.insert(key.hash.clone(), keep(old.get(&key.hash), key));
        }
        let mut set_aside = false;
        for (hash, held) in &old {
            if changed_after(held, read_at) && (fresh.contains_key(hash) || fresh.len() < self.max)
            {
                fresh.insert(hash.clone(), held.clone());
                set_aside = true;
            }
        }
        let held = fresh.len();
        *self.by_hash.write() = fresh;
        self.loaded.store(true, Ordering::Release);
        self.counted(held, skipped);
        set_aside
    }

    /// Applies the keys a poll that began at `read_at` found changed. A key this server changed
    /// after that is left as it is here (see [`KeySet::replace`]); true when one was.
    fn apply_read(&self, keys: Vec<ApiKey>, read_at: Instant) -> bool {
        self.apply(
            keys,
            |old| !old.is_some_and(|held| changed_after(held, read_at)),
            None,
        )
    }

    /// Applies keys this server has just written to the database (the console): their rows
    /// as committed, newer than any read already under way.
    pub(crate) fn changed_here(&self, keys: Vec<ApiKey>) {
        self.apply(keys, |_| true, Some(Instant::now()));
    }

    /// Puts `keys` in the set where `take` allows, marked as changed here at `changed_here`;
    /// true when `take` refused one.
    fn apply(
        &self,
        keys: Vec<ApiKey>,
        take: impl Fn(Option<&Arc<HeldKey>>) -> bool,
        changed_here: Option<Instant>,
    ) -> bool {
        if keys.is_empty() {
            return false;
        }
        let mut skipped = 0u64;
        let mut refused = false;
        let mut set = self.by_hash.write();
        for key in keys {
            let hash = key.hash.clone();
            let old = set.get(&hash);
            if !take(old) {
                refused = true;
                continue;
            }
            if old.is_none() && set.len() >= self.max {
                skipped += 1;
                continue;
            }
            let mut held = keep(old, key);
            if let Some(held) = Arc::get_mut(&mut held) {
                held.changed_here = changed_here;
            }
            set.insert(hash, held);
        }
        let held = set.len();
        drop(set);
        self.counted(held, skipped);
        refused
    }

    fn counted(&self, held: usize, skipped: u64) {
        super::metrics::keys_held(held);
        if skipped > 0 {
            super::metrics::keys_skipped(skipped);
            tracing::error!(
                skipped,
                max_keys = self.max,
                "API keys not loaded: this server holds at most auth.max_keys keys; the others get 401"
            );
        }
    }

    fn take_used(&self) -> Vec<(String, u64)> {
        self.used
            .lock()
            .drain()
            .map(|(id, at)| (id.to_string(), at))
            .collect()
    }

    fn requeue_used(&self, used: Vec<(String, u64)>) {
        let mut pending = self.used.lock();
        for (id, at) in used {
            let entry = pending.entry(Arc::from(id.as_str())).or_insert(at);
            *entry = (*entry).max(at);
        }
    }
}

/// True when this server changed `held` itself after `read_at`.
fn changed_after(held: &HeldKey, read_at: Instant) -> bool {
    held.changed_here.is_some_and(|at| at > read_at)
}

/// The held entry for `key`: the old one's last-use time kept, so a refresh does not cause a
/// write.
fn keep(old: Option<&Arc<HeldKey>>, key: ApiKey) -> Arc<HeldKey> {
    let held = HeldKey::new(key);
    if let Some(old) = old {
        held.touched
            .store(old.touched.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    Arc::new(held)
}

/// Keeps one [`KeySet`] current from the records database.
pub struct KeyRefresher {
    set: Arc<KeySet>,
    records: Records,
    poll: KeyPoll,
    migrated: bool,
    last_full: Option<Instant>,
    /// When the set last matched the database.
    last_success: Instant,
}

impl KeyRefresher {
    /// A refresher of `set` from `records`; nothing is read until [`KeyRefresher::refresh`].
    pub fn new(set: Arc<KeySet>, records: Records) -> KeyRefresher {
        KeyRefresher {
            set,
            records,
            poll: KeyPoll::new(),
            migrated: false,
            last_full: None,
            last_success: Instant::now(),
        }
    }

    /// One look at the database: the whole table when due (or never loaded), else what changed
    /// since the last look; then the queued last-use times. On failure the set is unchanged.
    pub async fn refresh(&mut self) -> Result<(), RecordsError> {
        let result = self.read().await;
        match &result {
            Ok(()) => {
                self.last_success = Instant::now();
                super::metrics::keys_age(Duration::ZERO);
            }
            Err(_) => super::metrics::keys_age(self.last_success.elapsed()),
        }
        result?;
        let used = self.set.take_used();
        if !used.is_empty() {
            if let Err(error) = self.records.touch_keys(&used).await {
                self.set.requeue_used(used);
                return Err(error);
            }
        }
        Ok(())
    }

    async fn read(&mut self) -> Result<(), RecordsError> {
        if !self.migrated {
            self.records.migrate().await?;
            self.migrated = true;
        }
        let started = Instant::now();
        let full_due = self
            .last_full
            .is_none_or(|at| started.duration_since(at) >= FULL_RELOAD);
        if full_due {
            super::metrics::key_read("full");
            let all = self.records.keys_changed_since(None).await?;
            let mut poll = KeyPoll::new();
            poll.seen(started, &all);
            self.poll = poll;
            // A key changed here during the read was kept: the next refresh reads all again.
            if !self.set.replace(all.keys, started) {
                self.last_full = Some(started);
            }
        } else {
            super::metrics::key_read("changes");
            let mut changed = self.records.keys_changed_since(self.poll.after()).await?;
            let keys = std::mem::take(&mut changed.keys);
            // A key changed here during the read was left as it is: this poll is not counted,
            // so the next one reads the same changes again, the newer row among them.
            if !self.set.apply_read(keys, started) {
                self.poll.seen(started, &changed);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use learning_chat_records::keys::KeyLimits;

    fn key(id: &str, hash: &str) -> ApiKey {
        ApiKey {
            id: id.into(),
            name: id.into(),
            hash: hash.into(),
            agents: Vec::new(),
            limits: KeyLimits::default(),
            weight: 1,
            require_learner: false,
            created_at: 1,
            last_used_at: None,
            revoked_at: None,
            role: Default::default(),
            policy: None,
            classes: Vec::new(),
            retention_days: None,
            legal_hold: false,
        }
    }

    #[test]
    fn nothing_is_known_before_the_first_load_and_the_set_is_bounded() {
        let set = KeySet::new(2);
        assert!(matches!(set.find("h1"), Found::NotLoaded));
        set.replace(
            vec![key("a", "h1"), key("b", "h2"), key("c", "h3")],
            Instant::now(),
        );
        assert_eq!(set.len(), 2);
        assert!(matches!(set.find("h1"), Found::Key(k) if k.key.id == "a"));
        assert!(matches!(set.find("h3"), Found::Unknown));
        // A change to a held key applies; a new key past the bound does not.
        let mut revoked = key("a", "h1");
        revoked.revoked_at = Some(5);
        set.apply_read(vec![revoked, key("d", "h4")], Instant::now());
        assert!(matches!(set.find("h1"), Found::Key(k) if k.key.revoked_at == Some(5)));
        assert!(matches!(set.find("h4"), Found::Unknown));
    }

    #[test]
    fn a_key_is_queued_for_a_last_use_write_once_a_minute() {
        let set = KeySet::new(10);
        set.replace(vec![key("a", "h1")], Instant::now());
        let Found::Key(held) = set.find("h1") else {
            panic!("held")
        };
        for _ in 0..100 {
            set.mark_used(&held);
        }
        assert_eq!(set.take_used().len(), 1);
        set.mark_used(&held);
        assert!(set.take_used().is_empty());
        // A refresh of the key keeps its last use: no new write.
        set.apply_read(vec![key("a", "h1")], Instant::now());
        let Found::Key(held) = set.find("h1") else {
            panic!("held")
        };
        set.mark_used(&held);
        assert!(set.take_used().is_empty());
    }

    #[test]
    fn a_read_begun_before_a_change_made_here_does_not_undo_it() {
        let set = KeySet::new(10);
        let before = Instant::now();
        set.replace(vec![key("a", "h1")], before);
        let mut revoked = key("a", "h1");
        revoked.revoked_at = Some(5);
        set.changed_here(vec![revoked.clone(), key("n", "h9")]);
        let revoked_here =
            |set: &KeySet| matches!(set.find("h1"), Found::Key(k) if k.key.revoked_at == Some(5));
        // A poll and a full read that began before the change hold the old rows (and no new
        // key): both leave the change as it is, and say so.
        assert!(set.apply_read(vec![key("a", "h1")], before));
        assert!(revoked_here(&set));
        assert!(set.replace(vec![key("a", "h1")], before));
        assert!(revoked_here(&set));
        assert!(matches!(set.find("h9"), Found::Key(_)));
        // A read begun after it is the database's word.
        let after = Instant::now();
        assert!(!set.apply_read(vec![revoked], after));
        assert!(!set.apply_read(vec![key("a", "h1")], after));
        assert!(!revoked_here(&set));
        assert!(!set.replace(vec![key("a", "h1")], after));
        assert!(matches!(set.find("h9"), Found::Unknown));
    }
}
