//! Secrets the repository ships as placeholders (deploy/k8s/secret.yaml, docs, examples). A
//! deployment still carrying one has not set its own secret: its API key hashes (the pepper),
//! its database (the password) or its signed ids (the token secret) would be open to anyone who
//! read the repository, so the service refuses to start.

use super::{ConfigError, Settings};

/// Every placeholder secret value the repository ships. `crates/learning-chat/tests/repo/secrets.rs`
/// finds each secret value written in deploy/, docs/, config/, bench/ and the README and checks
/// that the service refuses it.
pub const SHIPPED_PLACEHOLDERS: &[&str] = &[
    "REPLACE_WITH_A_RANDOM_PEPPER_openssl_rand_hex_32",
    "REPLACE_WITH_A_DATABASE_PASSWORD",
];

/// The prefix every placeholder in the repository starts with: a value containing it was
/// copied from an example and never filled in.
const PLACEHOLDER_MARK: &str = "REPLACE_WITH_";

/// True when `value` is, or contains, a placeholder the repository ships.
pub fn is_shipped_placeholder(value: &str) -> bool {
    value.contains(PLACEHOLDER_MARK) || SHIPPED_PLACEHOLDERS.iter().any(|p| value.contains(p))
}

impl Settings {
    /// Refuses any secret left at a value the repository ships, naming its key.
    pub(super) fn refuse_shipped_placeholders(&self) -> Result<(), ConfigError> {
        let secrets = [
            ("auth.pepper", self.auth.pepper.expose()),
            // The password inside a PostgreSQL URL.
            ("database.url", self.database.url().unwrap_or_default()),
            (
                "conversation.token_secret",
                self.conversation.token_secret.expose(),
            ),
        ];
        for (key, value) in secrets {
            if is_shipped_placeholder(value) {
                return Err(ConfigError::Invalid(format!(
                    "{key} ({}) is a placeholder shipped in the repository, not a secret: set \
                     your own (e.g. `openssl rand -hex 32`) before starting",
                    super::env_name(key)
                )));
            }
        }
        Ok(())
    }
}
