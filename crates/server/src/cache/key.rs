//! Cache keys: a hash of everything that shapes an answer, and nothing per-request.

use sha2::{Digest, Sha256};
use std::fmt;

/// The parts of a question that decide its answer.
#[derive(Debug, Clone, Copy)]
pub struct CacheKeyParts<'a> {
    /// The agent id.
    pub agent_id: &'a str,
    /// The agent's prompt version (a hash of its prompt and settings).
    pub prompt_version: &'a str,
    /// The model asked.
    pub model: &'a str,
    /// The normalised message (see [`normalise_message`]).
    pub message: &'a str,
}

/// A hashed cache key (hex SHA-256), safe to use as a Redis key suffix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    /// Hashes the parts. Destructured so a new part is a compile error until it is hashed too.
    pub fn new(parts: CacheKeyParts<'_>) -> CacheKey {
        let CacheKeyParts {
            agent_id,
            prompt_version,
            model,
            message,
        } = parts;
        let mut hasher = Sha256::new();
        // Length-prefixed so ("ab","c") and ("a","bc") cannot collide.
        for part in ["v1", agent_id, prompt_version, model, message] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        CacheKey(hex::encode(hasher.finalize()))
    }

    /// The hex digest.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Normalises a message so trivially different spellings share an answer, without touching
/// anything that can change meaning: surrounding whitespace is trimmed, line endings become `\n`
/// and trailing spaces of each line go. Case, punctuation, inner spacing and indentation stay,
/// because they matter in code and in math.
pub fn normalise_message(message: &str) -> String {
    let unified = message.replace("\r\n", "\n").replace('\r', "\n");
    let lines: Vec<&str> = unified.lines().map(str::trim_end).collect();
    lines.join("\n").trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(message: &str) -> CacheKey {
        CacheKey::new(CacheKeyParts {
            agent_id: "math",
            prompt_version: "v",
            model: "m",
            message: &normalise_message(message),
        })
    }

    #[test]
    fn whitespace_only_differences_share_a_key() {
        assert_eq!(key("What is 2+2?"), key("  What is 2+2?\r\n"));
        assert_eq!(key("a  \nb"), key("a\r\nb"));
    }

    #[test]
    fn meaningful_differences_do_not() {
        assert_ne!(key("What is 2+2?"), key("what is 2+2?"));
        assert_ne!(key("What is 2+2?"), key("What is 2+3?"));
        assert_ne!(key("if x:\n    y"), key("if x:\ny"));
        let other_agent = CacheKey::new(CacheKeyParts {
            agent_id: "science",
            prompt_version: "v",
            model: "m",
            message: "What is 2+2?",
        });
        assert_ne!(key("What is 2+2?"), other_agent);
    }
}
