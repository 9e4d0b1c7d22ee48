//! `[database]`: the records database (API keys, conversations, usage ledger, audit log).

use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::num::{NonZero, NonZeroU32};
use std::time::Duration;

/// The records database: a SQLite file by default, PostgreSQL for clusters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://<file>` (created when missing), `postgres://<user>:<password>@<host>:<port>/<db>`,
    /// or `none` (nothing kept beyond the process: conversations in memory or Redis, no API keys).
    /// A PostgreSQL URL's password never prints (see [`DatabaseUrl`]).
    pub url: DatabaseUrl,
    /// Connections in the pool of each server.
    pub max_connections: NonZeroU32,
    /// How long a query waits for a connection (or a connection attempt lasts) before the
    /// database counts as down for that request (`acquire_timeout_ms`).
    #[serde(rename = "acquire_timeout_ms", with = "super::duration")]
    pub acquire_timeout: Duration,
    /// How often each server looks for new, changed and revoked API keys (`key_refresh_ms`): a
    /// revocation reaches every server within about this.
    #[serde(rename = "key_refresh_ms", with = "super::duration")]
    pub key_refresh: Duration,
    /// How often each server writes its usage counts to the ledger (`ledger_flush_ms`): a killed
    /// server loses at most this much usage.
    #[serde(rename = "ledger_flush_ms", with = "super::duration")]
    pub ledger_flush: Duration,
}

/// The database URL: Debug and Serialize mask the password of a `postgres://` URL, so
/// `check-config` and logs never show it.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> DatabaseUrl {
        DatabaseUrl(url.into())
    }

    /// The URL with its password replaced by `********`.
    pub fn masked(&self) -> String {
        let url = &self.0;
        let Some(scheme_end) = url.find("://") else {
            return url.clone();
        };
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => format!(
                "{}{}:********{}",
                &url[..scheme_end + 3],
                &authority[..colon],
                &rest[at..]
            ),
            _ => url.clone(),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.masked())
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: DatabaseUrl("sqlite://learning-chat.db".into()),
            max_connections: const { NonZero::new(8).unwrap() },
            acquire_timeout: Duration::from_secs(2),
            key_refresh: Duration::from_secs(1),
            ledger_flush: Duration::from_secs(1),
        }
    }
}

impl DatabaseSettings {
    /// The URL, or `None` when the database is turned off (`none` or empty).
    pub fn url(&self) -> Option<&str> {
        let url = self.url.0.trim();
        (!url.is_empty() && !url.eq_ignore_ascii_case("none")).then_some(url)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), super::ConfigError> {
        if let Some(url) = self.url() {
            let known = ["sqlite:", "postgres://", "postgresql://"];
            if !known.iter().any(|p| url.starts_with(p)) {
                return super::invalid(
                    "database.url must be sqlite://<file>, postgres://<user>:<password>@<host>:<port>/<db> or none",
                );
            }
        }
        super::positive("database.acquire_timeout_ms", self.acquire_timeout)?;
        super::positive("database.key_refresh_ms", self.key_refresh)?;
        super::positive("database.ledger_flush_ms", self.ledger_flush)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_password_never_prints() {
        let url = DatabaseUrl::new("postgres://chat:s3cret@db:5432/records");
        assert_eq!(url.masked(), "postgres://chat:********@db:5432/records");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert!(!serde_json::to_string(&url).unwrap().contains("s3cret"));
        let plain = DatabaseUrl::new("sqlite://data/records.db");
        assert_eq!(plain.masked(), "sqlite://data/records.db");
    }
}
