//! API keys: the source of truth. Servers keep every key in memory and poll
//! [`Records::keys_changed_since`] for what changed; nothing here is on a request's path.
//!
//! Every write that changes what a server decides (insert, revoke) sets `changed_at` to a value
//! above every value already stored, whatever the writer's clock says, so a poller that has seen
//! value `w` finds every later write with `changed_at > w` (see [`KeyPoll`] for writes that
//! commit late). `last_used_at_s` is informational and does not move `changed_at`: servers
//! would otherwise re-read every busy key once a minute for nothing.

use crate::{now_ms, on_pool, Records, RecordsError};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A key's limits; 0 means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyLimits {
    /// Requests per minute (cached answers included).
    pub rpm: u32,
    /// Model tokens (input + output) per day (any 24 hours); cached answers cost none.
    pub tokens_per_day: u64,
    /// Requests in progress at once.
    pub concurrency: u32,
    /// Requests per minute per learner (`X-Learner-Id`).
    pub learner_rpm: u32,
    /// Model tokens per day (any 24 hours) per learner.
    pub learner_tokens_per_day: u64,
}

fn one() -> u32 {
    1
}

/// A key as stored: never the secret, only its hash. Its serde form is the one the old Redis
/// and file key stores wrote (read by `learning-chat migrate-keys`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Public id (`key_...`).
    pub id: String,
    /// Who it is for, e.g. a class or an app.
    pub name: String,
    /// Hex SHA-256 of pepper + secret.
    pub hash: String,
    /// Agents this key may ask; empty allows every agent.
    #[serde(default)]
    pub agents: Vec<String>,
    /// Its limits.
    #[serde(default)]
    pub limits: KeyLimits,
    /// Its share of a contended queue relative to other keys.
    #[serde(default = "one")]
    pub weight: u32,
    /// Every request must name its learner (`X-Learner-Id`), so the per-learner limits always
    /// apply.
    #[serde(default)]
    pub require_learner: bool,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds of the last request seen (updated at most once a minute per server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<u64>,
    /// Unix seconds; a revoked key gets 403.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
    /// What the key may do besides asking: an `admin` key also reads flags.
    #[serde(default)]
    pub role: KeyRole,
    /// The class's answer policy (`socratic`, `hints@1`, ...) over the agents' own; `None`
    /// keeps the agents'. Set with `PUT /api/v1/admin/classes/{key_id}/policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// For a `teacher` key: the key ids (classes) whose data it may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    /// Days this key's conversations are kept after their last activity; `None` takes
    /// `records.retention_days`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
    /// Legal hold: the retention sweep leaves everything of this key alone.
    #[serde(default)]
    pub legal_hold: bool,
}

/// What a key may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyRole {
    /// Asks tutors (every key).
    #[default]
    Learner,
    /// Also reads the data of its classes (the keys in [`ApiKey::classes`]) in the console.
    Teacher,
    /// Also reads everything (flags, every class, the audit log) and manages keys.
    Admin,
}

impl KeyRole {
    /// `learner` or `admin`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::Learner => "learner",
            KeyRole::Teacher => "teacher",
            KeyRole::Admin => "admin",
        }
    }

    /// The role stored as `text`; an unknown role is a learner's (the least it can be).
    pub fn parse(text: &str) -> KeyRole {
        match text {
            "admin" => KeyRole::Admin,
            "teacher" => KeyRole::Teacher,
            _ => KeyRole::Learner,
        }
    }
}

impl ApiKey {
    /// True when this key may read the console data of class `key_id`: an admin every class,
    /// a teacher its own classes, nobody else any.
    pub fn reads_class(&self, key_id: &str) -> bool {
        match self.role {
            KeyRole::Admin => true,
            KeyRole::Teacher => self.classes.iter().any(|c| c == key_id),
            KeyRole::Learner => false,
        }
    }

    /// True when the key may ask `agent_id`.
    pub fn allows_agent(&self, agent_id: &str) -> bool {
        self.agents.is_empty() || self.agents.iter().any(|a| a == agent_id)
    }
}

/// The columns of a key, in [`key_columns!`] order.
type KeyRow = (
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    i64,
    String,
    Option<String>,
    String,
    Option<i64>,
    i64,
);

/// The columns of a key, as one literal (sqlx takes only static SQL text).
macro_rules! key_columns {
    () => {
        "id, name, hash, agents, limits, weight, require_learner, \
         created_at_s, revoked_at_s, last_used_at_s, changed_at, role, policy, classes, \
         retention_days, legal_hold"
    };
}

/// `changed_at` of a new write: above every stored value (so a poller's watermark never skips
/// it, whatever this writer's clock says) and otherwise now. `$1` is now in Unix ms.
macro_rules! next_change {
    () => {
        "(SELECT CASE WHEN COALESCE(MAX(changed_at), 0) < $1 THEN $1 \
         ELSE MAX(changed_at) + 1 END FROM api_keys)"
    };
}

fn secs(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn from_row(row: KeyRow) -> Result<(ApiKey, i64), RecordsError> {
    let (
        id,
        name,
        hash,
        agents,
        limits,
        weight,
        require_learner,
        created,
        revoked,
        used,
        changed,
        role,
        policy,
        classes,
        retention_days,
        legal_hold,
    ) = row;
    let agents: Vec<String> = serde_json::from_str(&agents)
        .map_err(|e| RecordsError::Corrupt(format!("key {id}: agents: {e}")))?;
    let limits: KeyLimits = serde_json::from_str(&limits)
        .map_err(|e| RecordsError::Corrupt(format!("key {id}: limits: {e}")))?;
    let classes: Vec<String> = serde_json::from_str(&classes)
        .map_err(|e| RecordsError::Corrupt(format!("key {id}: classes: {e}")))?;
    Ok((
        ApiKey {
            id,
            name,
            hash,
            agents,
            limits,
            weight: u32::try_from(weight).unwrap_or(u32::MAX).max(1),
            require_learner: require_learner != 0,
            created_at: secs(created),
            last_used_at: used.map(secs),
            revoked_at: revoked.map(secs),
            role: KeyRole::parse(&role),
            policy,
            classes,
            retention_days: retention_days.and_then(|d| u32::try_from(d).ok()),
            legal_hold: legal_hold != 0,
        },
        changed,
    ))
}

fn json(value: &impl Serialize) -> Result<String, RecordsError> {
    serde_json::to_string(value).map_err(|e| RecordsError::Corrupt(e.to_string()))
}

/// What an edit of a key changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyEdit {
    /// A new name.
    pub name: Option<String>,
    /// New limits (all of them).
    pub limits: Option<KeyLimits>,
    /// A new weight (at least 1).
    pub weight: Option<u32>,
    /// A teacher's classes (key ids).
    pub classes: Option<Vec<String>>,
    /// Days kept after the last activity; `Some(None)` goes back to `records.retention_days`.
    #[serde(deserialize_with = "present")]
    pub retention_days: Option<Option<u32>>,
    /// Legal hold on or off.
    pub legal_hold: Option<bool>,
}

/// A field that is present (`null` included) is `Some`: `null` is then "back to the default".
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
    Option::<u32>::deserialize(d).map(Some)
}

impl KeyEdit {
    /// Applies the edit; the names of the fields it set.
    pub fn apply(&self, key: &mut ApiKey) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if let Some(name) = &self.name {
            key.name.clone_from(name);
            changed.push("name");
        }
        if let Some(limits) = self.limits {
            key.limits = limits;
            changed.push("limits");
        }
        if let Some(weight) = self.weight {
            key.weight = weight.max(1);
            changed.push("weight");
        }
        if let Some(classes) = &self.classes {
            key.classes.clone_from(classes);
            changed.push("classes");
        }
        if let Some(days) = self.retention_days {
            key.retention_days = days;
            changed.push("retention_days");
        }
        if let Some(hold) = self.legal_hold {
            key.legal_hold = hold;
            changed.push("legal_hold");
        }
        changed
    }
}

/// Keys changed since a poller's last look.
#[derive(Debug, Clone, Default)]
pub struct KeysChanged {
    /// Each changed key, oldest change first.
    pub keys: Vec<ApiKey>,
    /// The largest `changed_at` among them (`None` when nothing changed).
    pub newest: Option<i64>,
}

impl Records {
    /// Stores a new key and writes `key.created` by `actor` to the audit log, in one
    /// transaction. False (and nothing written) when a key with its id or hash exists.
    pub async fn create_key(&self, key: &ApiKey, actor: &str) -> Result<bool, RecordsError> {
        self.insert_key(key, actor, "key.created", "").await
    }

    /// Stores a key unless its id or hash exists (then false, nothing written), and audits it
    /// as `action` by `actor` with `detail`.
    pub async fn insert_key(
        &self,
        key: &ApiKey,
        actor: &str,
        action: &str,
        detail: &str,
    ) -> Result<bool, RecordsError> {
        let agents = json(&key.agents)?;
        let limits = json(&key.limits)?;
        let classes = json(&key.classes)?;
        let now = now_ms();
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let inserted = sqlx::query(concat!("INSERT INTO api_keys (", key_columns!(), ") \
                 VALUES ($2, $3, $4, $5, $6, $7, $8, $9, $10, $11, ", next_change!(), ", $12, \
                 $13, $14, $15, $16) ON CONFLICT DO NOTHING"))
            .bind(now)
            .bind(&key.id)
            .bind(&key.name)
            .bind(&key.hash)
            .bind(agents)
            .bind(limits)
            .bind(i64::from(key.weight.max(1)))
            .bind(i64::from(key.require_learner))
            .bind(signed(key.created_at))
            .bind(key.revoked_at.map(signed))
            .bind(key.last_used_at.map(signed))
            .bind(key.role.as_str())
            .bind(key.policy.as_deref())
            .bind(classes)
            .bind(key.retention_days.map(i64::from))
            .bind(i64::from(key.legal_hold))
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                return Ok(false);
            }
            crate::audit::write_entry!(&mut *tx, now, actor, action, &key.id, detail)?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Marks a key revoked (keeping the first revocation time) and writes `key.revoked` by
    /// `actor` to the audit log; returns the key, or `None` when there is no such key.
    pub async fn revoke_key(&self, id: &str, actor: &str) -> Result<Option<ApiKey>, RecordsError> {
        let now = now_ms();
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let updated = sqlx::query(concat!("UPDATE api_keys SET revoked_at_s = COALESCE(revoked_at_s, $2), \
                 changed_at = ", next_change!(), " WHERE id = $3"))
            .bind(now)
            .bind(now / 1000)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() == 0 {
                return Ok(None);
            }
            crate::audit::write_entry!(&mut *tx, now, actor, "key.revoked", id, "")?;
            let row: KeyRow =
                sqlx::query_as(concat!("SELECT ", key_columns!(), " FROM api_keys WHERE id = $1"))
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
            tx.commit().await?;
            Ok(Some(from_row(row)?.0))
        })
    }

    /// Sets (or with `None` clears) a key's answer policy and writes `key.policy` by `actor`
    /// to the audit log; returns the key, or `None` when there is no such key. Every server
    /// has it at its next poll of changed keys.
    pub async fn set_key_policy(
        &self,
        id: &str,
        policy: Option<&str>,
        actor: &str,
    ) -> Result<Option<ApiKey>, RecordsError> {
        let now = now_ms();
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let updated = sqlx::query(concat!("UPDATE api_keys SET policy = $2, \
                 changed_at = ", next_change!(), " WHERE id = $3"))
            .bind(now)
            .bind(policy)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() == 0 {
                return Ok(None);
            }
            let detail = policy.unwrap_or("");
            crate::audit::write_entry!(&mut *tx, now, actor, "key.policy", id, detail)?;
            let row: KeyRow =
                sqlx::query_as(concat!("SELECT ", key_columns!(), " FROM api_keys WHERE id = $1"))
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
            tx.commit().await?;
            Ok(Some(from_row(row)?.0))
        })
    }

    /// Applies `edit` to a key and writes `key.updated` by `actor` (naming the fields changed)
    /// to the audit log, in one transaction; every server picks the change up with its next
    /// poll. Returns the key as it is now, or `None` when there is no such key.
    pub async fn update_key(
        &self,
        id: &str,
        edit: &KeyEdit,
        actor: &str,
    ) -> Result<Option<ApiKey>, RecordsError> {
        let now = now_ms();
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let row: Option<KeyRow> =
                sqlx::query_as(concat!("SELECT ", key_columns!(), " FROM api_keys WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let mut key = from_row(row)?.0;
            let changed = edit.apply(&mut key);
            sqlx::query(concat!("UPDATE api_keys SET name = $2, limits = $3, weight = $4, \
                 classes = $5, retention_days = $6, legal_hold = $7, \
                 changed_at = ", next_change!(), " WHERE id = $8"))
            .bind(now)
            .bind(&key.name)
            .bind(json(&key.limits)?)
            .bind(i64::from(key.weight.max(1)))
            .bind(json(&key.classes)?)
            .bind(key.retention_days.map(i64::from))
            .bind(i64::from(key.legal_hold))
            .bind(id)
            .execute(&mut *tx)
            .await?;
            crate::audit::write_entry!(&mut *tx, now, actor, "key.updated", id, changed.join(","))?;
            tx.commit().await?;
            Ok(Some(key))
        })
    }

    /// One key by id.
    pub async fn key(&self, id: &str) -> Result<Option<ApiKey>, RecordsError> {
        on_pool!(self, pool => {
            let row: Option<KeyRow> =
                sqlx::query_as(concat!("SELECT ", key_columns!(), " FROM api_keys WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(pool)
                    .await?;
            row.map(|r| from_row(r).map(|(key, _)| key)).transpose()
        })
    }

    /// One key by the hash of its secret.
    pub async fn key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>, RecordsError> {
        on_pool!(self, pool => {
            let row: Option<KeyRow> =
                sqlx::query_as(concat!("SELECT ", key_columns!(), " FROM api_keys WHERE hash = $1"))
                    .bind(hash)
                    .fetch_optional(pool)
                    .await?;
            row.map(|r| from_row(r).map(|(key, _)| key)).transpose()
        })
    }

    /// Every key, oldest first.
    pub async fn keys(&self) -> Result<Vec<ApiKey>, RecordsError> {
        Ok(self.keys_changed_since(None).await?.keys).map(|mut keys| {
            keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
            keys
        })
    }

    /// Keys whose `changed_at` is above `after` (every key for `None`), oldest change first.
    pub async fn keys_changed_since(
        &self,
        after: Option<i64>,
    ) -> Result<KeysChanged, RecordsError> {
        on_pool!(self, pool => {
            let rows: Vec<KeyRow> = sqlx::query_as(concat!("SELECT ", key_columns!(), " FROM api_keys WHERE changed_at > $1 ORDER BY changed_at"))
            .bind(after.unwrap_or(i64::MIN))
            .fetch_all(pool)
            .await?;
            let mut changed = KeysChanged::default();
            for row in rows {
                let (key, at) = from_row(row)?;
                changed.newest = Some(changed.newest.map_or(at, |n: i64| n.max(at)));
                changed.keys.push(key);
            }
            Ok(changed)
        })
    }

    /// Records when keys were last used, `(id, unix seconds)` each, in one transaction; a
    /// time never moves backwards.
    pub async fn touch_keys(&self, used: &[(String, u64)]) -> Result<(), RecordsError> {
        if used.is_empty() {
            return Ok(());
        }
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for (id, at) in used {
                sqlx::query(
                    "UPDATE api_keys SET last_used_at_s = $1 \
                     WHERE id = $2 AND (last_used_at_s IS NULL OR last_used_at_s < $1)",
                )
                .bind(signed(*at))
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }
}

/// How long a write may take between choosing its `changed_at` and committing. A poll re-reads
/// what changed within this before its last look, so such a write is still found; statements
/// here are single short transactions, so a few seconds is ample.
pub const CHANGE_OVERLAP: Duration = Duration::from_secs(5);

/// A poller's position in the keys' change stream.
///
/// Each poll asks for keys changed above a floor. The floor only moves up to the newest value
/// seen by a poll made [`CHANGE_OVERLAP`] ago or longer: a write that chose a smaller
/// `changed_at` but had not committed then has committed since. Rows changed within the
/// overlap are re-read a few times; everything older is never read again.
#[derive(Debug, Default)]
pub struct KeyPoll {
    floor: Option<i64>,
    newest: Option<i64>,
    /// (when a poll was made, the newest value known after it), oldest first.
    looks: VecDeque<(Instant, Option<i64>)>,
}

impl KeyPoll {
    /// Before the first look: the next poll reads every key.
    pub fn new() -> KeyPoll {
        KeyPoll::default()
    }

    /// The `after` argument of the next [`Records::keys_changed_since`].
    pub fn after(&self) -> Option<i64> {
        self.floor
    }

    /// Notes a poll made at `at` that found `changed`.
    pub fn seen(&mut self, at: Instant, changed: &KeysChanged) {
        if let Some(n) = changed.newest {
            self.newest = Some(self.newest.map_or(n, |old| old.max(n)));
        }
        self.looks.push_back((at, self.newest));
        while let Some(&(when, newest)) = self.looks.front() {
            if at.duration_since(when) < CHANGE_OVERLAP {
                break;
            }
            self.floor = newest.max(self.floor);
            self.looks.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::each_backend;

    fn key(id: &str, hash: &str) -> ApiKey {
        ApiKey {
            id: id.into(),
            name: format!("class {id}"),
            hash: hash.into(),
            agents: vec!["math".into()],
            limits: KeyLimits {
                rpm: 10,
                learner_tokens_per_day: 7,
                ..KeyLimits::default()
            },
            weight: 2,
            require_learner: true,
            created_at: 1_700_000_000,
            last_used_at: None,
            revoked_at: None,
            role: Default::default(),
            policy: None,
            classes: Vec::new(),
            retention_days: None,
            legal_hold: false,
        }
    }

    #[tokio::test]
    async fn a_class_policy_is_set_cleared_audited_and_seen_by_pollers() {
        each_backend(|records| async move {
            records
                .create_key(&key("key_p", "h_p"), "cli")
                .await
                .unwrap();
            let before = records.keys_changed_since(None).await.unwrap().newest;
            let set = records
                .set_key_policy("key_p", Some("socratic"), "admin:key_x")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(set.policy.as_deref(), Some("socratic"));
            let changed = records.keys_changed_since(before).await.unwrap();
            assert_eq!(changed.keys.len(), 1, "a poller sees the change");
            assert_eq!(changed.keys[0].policy.as_deref(), Some("socratic"));
            let cleared = records.set_key_policy("key_p", None, "cli").await.unwrap();
            assert_eq!(cleared.unwrap().policy, None);
            assert_eq!(
                records.set_key_policy("nope", None, "cli").await.unwrap(),
                None
            );
            let log = records.audit_log(1).await.unwrap();
            assert_eq!(
                (log[0].action.as_str(), log[0].subject.as_str()),
                ("key.policy", "key_p")
            );
        })
        .await;
    }

    #[tokio::test]
    async fn keys_round_trip_revoke_once_and_are_audited() {
        each_backend(|records| async move {
            let a = key("key_a", "h_a");
            assert!(records.create_key(&a, "cli").await.unwrap());
            // Same id or same hash: nothing written.
            assert!(!records.create_key(&a, "cli").await.unwrap());
            assert!(!records
                .create_key(&key("key_other", "h_a"), "cli")
                .await
                .unwrap());
            assert_eq!(records.key("key_a").await.unwrap(), Some(a.clone()));
            assert_eq!(records.key_by_hash("h_a").await.unwrap(), Some(a.clone()));
            assert_eq!(records.key("nope").await.unwrap(), None);
            records
                .create_key(&key("key_b", "h_b"), "cli")
                .await
                .unwrap();
            let ids: Vec<String> = records
                .keys()
                .await
                .unwrap()
                .into_iter()
                .map(|k| k.id)
                .collect();
            assert_eq!(ids, ["key_a", "key_b"]);

            let revoked = records.revoke_key("key_a", "cli").await.unwrap().unwrap();
            let first = revoked.revoked_at.unwrap();
            let again = records.revoke_key("key_a", "cli").await.unwrap().unwrap();
            assert_eq!(
                again.revoked_at,
                Some(first),
                "the first revocation time stays"
            );
            assert_eq!(records.revoke_key("nope", "cli").await.unwrap(), None);

            records
                .touch_keys(&[("key_b".into(), 100), ("key_b".into(), 50)])
                .await
                .unwrap();
            assert_eq!(
                records.key("key_b").await.unwrap().unwrap().last_used_at,
                Some(100)
            );

            let log = records.audit_log(10).await.unwrap();
            let actions: Vec<(&str, &str)> = log
                .iter()
                .map(|e| (e.action.as_str(), e.subject.as_str()))
                .collect();
            // Newest first; the refused duplicate wrote nothing.
            assert_eq!(
                actions,
                [
                    ("key.revoked", "key_a"),
                    ("key.revoked", "key_a"),
                    ("key.created", "key_b"),
                    ("key.created", "key_a"),
                ]
            );
            assert!(log.iter().all(|e| e.actor == "cli"));
        })
        .await;
    }

    #[tokio::test]
    async fn a_poll_finds_every_later_write_even_from_a_clock_far_behind() {
        each_backend(|records| async move {
            records
                .create_key(&key("key_1", "h1"), "cli")
                .await
                .unwrap();
            let mut poll = KeyPoll::new();
            let t0 = Instant::now();
            let all = records.keys_changed_since(poll.after()).await.unwrap();
            assert_eq!(all.keys.len(), 1);
            poll.seen(t0, &all);
            // A write whose own clock says 1970 still lands above what was seen.
            let old_clock = key("key_2", "h2");
            let agents = json(&old_clock.agents).unwrap();
            let limits = json(&old_clock.limits).unwrap();
            on_pool!(records, pool => {
                sqlx::query(concat!("INSERT INTO api_keys (", key_columns!(), ") \
                     VALUES ($2, $3, $4, $5, $6, 1, 0, 0, NULL, NULL, ", next_change!(), ", 'learner', \
                     NULL, '[]', NULL, 0)"))
                .bind(5_i64)
                .bind(&old_clock.id)
                .bind(&old_clock.name)
                .bind(&old_clock.hash)
                .bind(agents)
                .bind(limits)
                .execute(pool)
                .await
                .unwrap();
            });
            let changed = records.keys_changed_since(poll.after()).await.unwrap();
            let ids: Vec<&str> = changed.keys.iter().map(|k| k.id.as_str()).collect();
            assert!(ids.contains(&"key_2"), "{ids:?}");
            assert!(changed.newest > all.newest);
            poll.seen(t0 + Duration::from_millis(10), &changed);
            // Within the overlap the floor has not moved: a late commit would still be found.
            assert_eq!(poll.after(), None);
            // Past it, the floor moves to what the first look knew, then to the second's.
            poll.seen(t0 + CHANGE_OVERLAP, &KeysChanged::default());
            assert_eq!(poll.after(), all.newest);
            poll.seen(t0 + CHANGE_OVERLAP * 2, &KeysChanged::default());
            assert_eq!(poll.after(), changed.newest);
            assert!(records
                .keys_changed_since(poll.after())
                .await
                .unwrap()
                .keys
                .is_empty());
            records.revoke_key("key_1", "cli").await.unwrap();
            let revoked = records.keys_changed_since(poll.after()).await.unwrap();
            assert_eq!(revoked.keys.len(), 1);
            assert!(revoked.keys[0].revoked_at.is_some());
        })
        .await;
    }
}
