//! API keys: the secret's format, its peppered hash, the stored record and the key store
//! (Redis when configured, so every server sees a change at once; otherwise a TOML file).

use base64::Engine;
use learning_chat_engine::config::Secret;
use learning_chat_engine::redis_link::{RedisLink, RedisUnavailable};
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

/// Every secret starts with this, so leaked keys are easy to recognise (and to scan for).
pub const SECRET_PREFIX: &str = "lc_";

/// A new secret: `lc_` + base64url (no padding) of 32 random bytes from the OS.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    // No safe secret without the OS generator: `UnwrapErr` panics if it fails, as rand 0.8's
    // OsRng did.
    UnwrapErr(SysRng).fill_bytes(&mut bytes);
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// A new key id (not secret: it appears in lists, logs and metric labels).
pub fn generate_id() -> String {
    let mut bytes = [0u8; 6];
    UnwrapErr(SysRng).fill_bytes(&mut bytes);
    format!("key_{}", hex::encode(bytes))
}

/// The stored form of a secret: hex SHA-256 of the pepper and the secret.
pub fn hash_secret(pepper: &Secret, secret: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(pepper.expose().as_bytes());
    hasher.update([0u8]);
    hasher.update(secret.as_bytes());
    hex::encode(hasher.finalize())
}

/// An opaque learner id hashed for use in Redis keys (never stored in the clear).
pub fn hash_learner(pepper: &Secret, key_id: &str, learner: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(pepper.expose().as_bytes());
    hasher.update(b"\0learner\0");
    hasher.update(key_id.as_bytes());
    hasher.update([0u8]);
    hasher.update(learner.as_bytes());
    hex::encode(&hasher.finalize()[..16])
}

/// True when two hashes are equal, compared in constant time.
pub fn hashes_match(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

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

/// A key as stored: never the secret, only its hash.
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
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds of the last request seen (updated at most once a minute per server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<u64>,
    /// Unix seconds; a revoked key gets 403.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
}

impl ApiKey {
    /// True when the key may ask `agent_id`.
    pub fn allows_agent(&self, agent_id: &str) -> bool {
        self.agents.is_empty() || self.agents.iter().any(|a| a == agent_id)
    }
}

/// The key store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis is down or slow.
    #[error(transparent)]
    Redis(#[from] RedisUnavailable),
    /// The keys file could not be read, parsed or written.
    #[error("keys file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A stored record is not valid JSON.
    #[error("corrupt key record: {0}")]
    Corrupt(String),
}

/// The keys file's shape.
#[derive(Debug, Default, Serialize, Deserialize)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<ApiKey>,
}

/// Where keys live.
#[derive(Debug, Clone)]
pub enum KeyStore {
    /// `{prefix}:apikey:{hash}` holds the record, `{prefix}:apikey-id:{id}` its hash,
    /// `{prefix}:apikeys` the set of ids.
    Redis(RedisLink),
    /// A TOML file with `[[keys]]` entries, re-read when it changes.
    File(PathBuf),
}

impl KeyStore {
    /// Looks a key up by the hash of its secret.
    pub async fn by_hash(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        match self {
            KeyStore::Redis(link) => {
                let record_key = link.key("apikey", hash);
                let raw: Option<String> = link
                    .run("auth_lookup", |mut conn| async move {
                        ::redis::cmd("GET")
                            .arg(&record_key)
                            .query_async(&mut conn)
                            .await
                    })
                    .await?;
                raw.map(|raw| parse_record(&raw)).transpose()
            }
            KeyStore::File(path) => Ok(read_file(path)?
                .keys
                .into_iter()
                .find(|k| hashes_match(&k.hash, hash))),
        }
    }

    /// Adds a new key.
    pub async fn insert(&self, key: &ApiKey) -> Result<(), StoreError> {
        match self {
            KeyStore::Redis(link) => {
                let record =
                    serde_json::to_string(key).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let (record_key, id_key, set_key) = (
                    link.key("apikey", &key.hash),
                    link.key("apikey-id", &key.id),
                    link.key("apikeys", "all"),
                );
                let (id, hash) = (key.id.clone(), key.hash.clone());
                link.run("auth_write", |mut conn| async move {
                    ::redis::pipe()
                        .atomic()
                        .set(&record_key, record)
                        .set(&id_key, hash)
                        .sadd(&set_key, id)
                        .query_async::<()>(&mut conn)
                        .await
                })
                .await?;
                Ok(())
            }
            KeyStore::File(path) => {
                let mut file = read_file(path)?;
                file.keys.push(key.clone());
                write_file(path, &file)
            }
        }
    }

    /// Every key, sorted by creation time.
    pub async fn list(&self) -> Result<Vec<ApiKey>, StoreError> {
        let mut keys = match self {
            KeyStore::Redis(link) => {
                let set_key = link.key("apikeys", "all");
                let ids: Vec<String> = link
                    .run("auth_list", |mut conn| async move {
                        ::redis::cmd("SMEMBERS")
                            .arg(&set_key)
                            .query_async(&mut conn)
                            .await
                    })
                    .await?;
                let mut keys = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Some(key) = self.get(&id).await? {
                        keys.push(key);
                    }
                }
                keys
            }
            KeyStore::File(path) => read_file(path)?.keys,
        };
        keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(keys)
    }

    /// One key by id.
    pub async fn get(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        match self {
            KeyStore::Redis(link) => {
                let id_key = link.key("apikey-id", id);
                let hash: Option<String> = link
                    .run("auth_lookup", |mut conn| async move {
                        ::redis::cmd("GET")
                            .arg(&id_key)
                            .query_async(&mut conn)
                            .await
                    })
                    .await?;
                match hash {
                    Some(hash) => self.by_hash(&hash).await,
                    None => Ok(None),
                }
            }
            KeyStore::File(path) => Ok(read_file(path)?.keys.into_iter().find(|k| k.id == id)),
        }
    }

    /// Marks a key revoked; returns it, or `None` when there is no such key.
    pub async fn revoke(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        match self {
            KeyStore::Redis(link) => {
                let Some(mut key) = self.get(id).await? else {
                    return Ok(None);
                };
                key.revoked_at.get_or_insert(unix_now());
                let record =
                    serde_json::to_string(&key).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let record_key = link.key("apikey", &key.hash);
                link.run("auth_write", |mut conn| async move {
                    ::redis::cmd("SET")
                        .arg(&record_key)
                        .arg(record)
                        .query_async::<()>(&mut conn)
                        .await
                })
                .await?;
                Ok(Some(key))
            }
            KeyStore::File(path) => {
                let mut file = read_file(path)?;
                let Some(key) = file.keys.iter_mut().find(|k| k.id == id) else {
                    return Ok(None);
                };
                key.revoked_at.get_or_insert(unix_now());
                let key = key.clone();
                write_file(path, &file)?;
                Ok(Some(key))
            }
        }
    }

    /// Records that a key was used (best effort; Redis only, the file is not rewritten per
    /// request).
    pub async fn touch(&self, id: &str, at: u64) {
        if let KeyStore::Redis(link) = self {
            let used_key = link.key("apikey-used", id);
            let _ = link
                .run("auth_touch", |mut conn| async move {
                    ::redis::cmd("SET")
                        .arg(&used_key)
                        .arg(at)
                        .query_async::<()>(&mut conn)
                        .await
                })
                .await;
        }
    }

    /// When a key was last used, where the store records it.
    pub async fn last_used(&self, id: &str) -> Option<u64> {
        let KeyStore::Redis(link) = self else {
            return None;
        };
        let used_key = link.key("apikey-used", id);
        link.run("auth_lookup", |mut conn| async move {
            ::redis::cmd("GET")
                .arg(&used_key)
                .query_async::<Option<u64>>(&mut conn)
                .await
        })
        .await
        .ok()
        .flatten()
    }
}

fn parse_record(raw: &str) -> Result<ApiKey, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn read_file(path: &Path) -> Result<KeysFile, StoreError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(KeysFile::default()),
        Err(e) => {
            return Err(StoreError::File {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        }
    };
    toml::from_str(&text).map_err(|e| StoreError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Writes the whole file through a temporary file and a rename, so a reader never sees half.
fn write_file(path: &Path, file: &KeysFile) -> Result<(), StoreError> {
    let fail = |e: String| StoreError::File {
        path: path.to_owned(),
        reason: e,
    };
    let text = toml::to_string_pretty(file).map_err(|e| fail(e.to_string()))?;
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).map_err(|e| fail(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_url_safe_and_distinct() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX));
        assert_eq!(a.len(), 3 + 43);
        assert!(a[3..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn the_hash_depends_on_the_pepper() {
        let secret = generate_secret();
        let one = hash_secret(&Secret::new("pepper-one-0123456789"), &secret);
        let two = hash_secret(&Secret::new("pepper-two-0123456789"), &secret);
        assert_ne!(one, two);
        assert!(hashes_match(&one, &one.clone()));
        assert!(!hashes_match(&one, &two));
        assert!(!one.contains(&secret[3..]));
    }

    #[tokio::test]
    async fn the_file_store_round_trips_and_revokes() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::File(dir.path().join("keys.toml"));
        let key = ApiKey {
            id: generate_id(),
            name: "class 7b".into(),
            hash: hash_secret(&Secret::new("p"), "s"),
            agents: vec!["math".into()],
            limits: KeyLimits {
                rpm: 10,
                ..KeyLimits::default()
            },
            weight: 1,
            created_at: unix_now(),
            last_used_at: None,
            revoked_at: None,
        };
        store.insert(&key).await.unwrap();
        assert_eq!(store.by_hash(&key.hash).await.unwrap(), Some(key.clone()));
        assert_eq!(store.list().await.unwrap().len(), 1);
        let revoked = store.revoke(&key.id).await.unwrap().unwrap();
        assert!(revoked.revoked_at.is_some());
        assert!(store
            .get(&key.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some());
    }
}
