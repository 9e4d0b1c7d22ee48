//! Cache keys: a hash of everything that shapes an answer, and nothing per-request.

use crate::providers::ModelTurn;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::fmt;

/// The parts of a question that decide its answer.
#[derive(Debug, Clone, Copy)]
pub struct CacheKeyParts<'a> {
    /// Who answers: the provider identity (`gemini@host`, `offline-simulated`), so answers of
    /// one provider are never served as another's through a shared cache.
    pub provider: &'a str,
    /// The agent id.
    pub agent_id: &'a str,
    /// The agent's prompt version (a hash of its prompt and settings).
    pub prompt_version: &'a str,
    /// The model asked.
    pub model: &'a str,
    /// The normalised message (see [`normalise_message`]).
    pub message: &'a str,
    /// The earlier turns sent with the message, exactly as the model sees them (empty for a
    /// single message or a conversation's first turn, which then keeps the single-message key).
    pub history: &'a [ModelTurn],
    /// Whose answers these are with `cache.scope = "key"`: the caller's key id, so keys never
    /// share answers; `None` for the shared cache (which then keeps the key it always had).
    pub scope: Option<&'a str>,
    /// The safety settings sent (see [`crate::safety::Thresholds::fingerprint`]): an answer
    /// given under lax settings is never served under strict ones. Empty keeps the old key.
    pub safety: &'a str,
    /// The answer policy and its block's version (`socratic@1`, see [`crate::policy`]): a
    /// socratic answer is never served to a class that asked for full ones. Empty keeps the
    /// old key.
    pub tutoring: &'a str,
    /// The experiment variant the conversation is in (`experiment/variant`), so one variant's
    /// answers are never served to another even when both use the same policy. Empty (no
    /// experiment) keeps the key without it.
    pub variant: &'a str,
}

/// A hashed cache key (SHA-256). Kept as bytes, since most are only looked up in memory;
/// its hex form ([`CacheKey::to_hex`]) is safe to use as a Redis key suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// Hashes the parts. Destructured so a new part is a compile error until it is hashed too.
    pub fn new(parts: CacheKeyParts<'_>) -> CacheKey {
        let CacheKeyParts {
            provider,
            agent_id,
            prompt_version,
            model,
            message,
            history,
            scope,
            safety,
            tutoring,
            variant,
        } = parts;
        let mut hasher = Sha256::new();
        // Length-prefixed so ("ab","c") and ("a","bc") cannot collide.
        let mut hash_part = |part: &str| {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        };
        for part in ["v2", provider, agent_id, prompt_version, model, message] {
            hash_part(part);
        }
        // Only after the single-message parts, and only when there is a history: a first turn
        // keeps the key it always had, so it shares the cache with every single question.
        if !history.is_empty() {
            hash_part("history");
            hash_part(&history.len().to_string());
            for turn in history {
                hash_part(turn.role.as_str());
                hash_part(&turn.text);
            }
        }
        // Last, and only when scoped: the shared cache's keys stay what they always were.
        if let Some(scope) = scope {
            hash_part("scope");
            hash_part(scope);
        }
        if !safety.is_empty() {
            hash_part("safety");
            hash_part(safety);
        }
        if !tutoring.is_empty() {
            hash_part("tutoring");
            hash_part(tutoring);
        }
        if !variant.is_empty() {
            hash_part("variant");
            hash_part(variant);
        }
        CacheKey(hasher.finalize().into())
    }

    /// The digest's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A key from its bytes (as carried by a conversation token).
    pub fn from_bytes(bytes: [u8; 32]) -> CacheKey {
        CacheKey(bytes)
    }

    /// The hex digest.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Normalises a message so trivially different spellings share an answer, without touching
/// anything that can change meaning: line endings become `\n`, trailing whitespace of each line
/// goes, and so do blank lines before and after the text. Case, punctuation, inner spacing and
/// indentation (the first line's too) stay, because they matter in code and in math.
pub fn normalise_message(message: &str) -> Cow<'_, str> {
    // Most messages are already in normal form: no copy for them.
    let already_normal = !message.contains('\r')
        && !message.starts_with('\n')
        && message.trim_end() == message
        && message.lines().all(|line| line.trim_end() == line);
    if already_normal {
        return Cow::Borrowed(message);
    }
    let unified = message.replace("\r\n", "\n").replace('\r', "\n");
    let lines: Vec<&str> = unified
        .lines()
        .map(str::trim_end)
        .skip_while(|line| line.is_empty())
        .collect();
    let text_lines = lines.len() - lines.iter().rev().take_while(|l| l.is_empty()).count();
    Cow::Owned(lines[..text_lines].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(message: &str) -> CacheKey {
        CacheKey::new(CacheKeyParts {
            provider: "gemini@generativelanguage.googleapis.com",
            agent_id: "math",
            prompt_version: "v",
            model: "m",
            message: &normalise_message(message),
            history: &[],
            scope: None,
            safety: "",
            tutoring: "",
            variant: "",
        })
    }

    #[test]
    fn whitespace_only_differences_share_a_key() {
        assert_eq!(key("What is 2+2?"), key("\n \nWhat is 2+2?  \r\n"));
        assert_eq!(key("a  \nb"), key("a\r\nb"));
    }

    #[test]
    fn the_no_copy_path_agrees_with_the_full_normalisation() {
        // The slow path, written plainly: every line right-trimmed, blank edge lines dropped.
        let full = |m: &str| {
            let unified = m.replace("\r\n", "\n").replace('\r', "\n");
            let lines: Vec<&str> = unified.lines().map(str::trim_end).collect();
            let first = lines.iter().position(|l| !l.is_empty());
            let last = lines.iter().rposition(|l| !l.is_empty());
            match (first, last) {
                (Some(first), Some(last)) => lines[first..=last].join("\n"),
                _ => String::new(),
            }
        };
        for message in [
            "What is 2+2?",
            "a\n\nb",
            "a \nb",
            "a\t\nb",
            "\ta",
            "a\n",
            "a\r\nb",
            "a\rb",
            "x\u{a0}",
            "if x:\n    y",
            "",
            " ",
            "\n\n",
            "    def f():\n        return 1",
            "\n\n    indented\n\n",
            " \n\tx = 1\n \n",
        ] {
            assert_eq!(normalise_message(message), full(message), "{message:?}");
        }
        assert!(matches!(
            normalise_message("What is 2+2?"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(
            normalise_message("if x:\n    y"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn the_key_format_is_stable() {
        // Answers in Redis outlive a deploy: servers of two versions must derive the same key.
        assert_eq!(
            key("What is 2+2?").to_hex(),
            "39468b4e71c66c6ae755757213ec72c067593354edb9119bf0f8619ef169ff44"
        );
        assert_eq!(
            key("What is 2+2?").to_string(),
            key("What is 2+2?").to_hex()
        );
    }

    #[test]
    fn meaningful_differences_do_not() {
        assert_ne!(key("What is 2+2?"), key("what is 2+2?"));
        assert_ne!(key("What is 2+2?"), key("What is 2+3?"));
        assert_ne!(key("if x:\n    y"), key("if x:\ny"));
        // The first line's indentation is part of the code: it must change the key.
        assert_ne!(key("    return x"), key("return x"));
        assert_eq!(key("\n\n    return x  \n\n"), key("    return x"));
        let other_agent = CacheKey::new(CacheKeyParts {
            provider: "gemini@generativelanguage.googleapis.com",
            agent_id: "science",
            prompt_version: "v",
            model: "m",
            message: "What is 2+2?",
            history: &[],
            scope: None,
            safety: "",
            tutoring: "",
            variant: "",
        });
        assert_ne!(key("What is 2+2?"), other_agent);
        let other_provider = CacheKey::new(CacheKeyParts {
            provider: "offline-simulated",
            agent_id: "math",
            prompt_version: "v",
            model: "m",
            message: "What is 2+2?",
            history: &[],
            scope: None,
            safety: "",
            tutoring: "",
            variant: "",
        });
        assert_ne!(key("What is 2+2?"), other_provider);
    }

    #[test]
    fn the_history_is_part_of_a_follow_up_key() {
        use crate::providers::Role;
        let turn = |role, text: &str| ModelTurn {
            role,
            text: text.to_owned(),
        };
        let follow_up = |history: &[ModelTurn]| {
            CacheKey::new(CacheKeyParts {
                provider: "p",
                agent_id: "math",
                prompt_version: "v",
                model: "m",
                message: "Why?",
                history,
                scope: None,
                safety: "",
                tutoring: "",
                variant: "",
            })
        };
        let a = [turn(Role::User, "What is 2+2?"), turn(Role::Model, "4")];
        let b = [turn(Role::User, "What is 2+3?"), turn(Role::Model, "5")];
        assert_ne!(follow_up(&a), follow_up(&[]));
        assert_ne!(follow_up(&a), follow_up(&b));
        assert_eq!(follow_up(&a), follow_up(&a.clone()));
        // Roles are hashed too: the same words said by the other side are another conversation.
        let swapped = [turn(Role::Model, "What is 2+2?"), turn(Role::User, "4")];
        assert_ne!(follow_up(&a), follow_up(&swapped));
    }

    #[test]
    fn a_scoped_key_is_the_keys_own_and_the_shared_one_is_unchanged() {
        let scoped = |scope| {
            CacheKey::new(CacheKeyParts {
                provider: "gemini@generativelanguage.googleapis.com",
                agent_id: "math",
                prompt_version: "v",
                model: "m",
                message: "What is 2+2?",
                history: &[],
                scope,
                safety: "",
                tutoring: "",
                variant: "",
            })
        };
        assert_eq!(scoped(None), key("What is 2+2?"));
        assert_ne!(scoped(Some("key_a")), scoped(None));
        assert_ne!(scoped(Some("key_a")), scoped(Some("key_b")));
        assert_eq!(scoped(Some("key_a")), scoped(Some("key_a")));
    }

    #[test]
    fn policies_and_variants_are_cached_apart() {
        let shaped = |tutoring, variant| {
            CacheKey::new(CacheKeyParts {
                provider: "gemini@generativelanguage.googleapis.com",
                agent_id: "math",
                prompt_version: "v",
                model: "m",
                message: "What is 2+2?",
                history: &[],
                scope: None,
                safety: "",
                tutoring,
                variant,
            })
        };
        assert_eq!(shaped("", ""), key("What is 2+2?"));
        assert_ne!(shaped("socratic@1", ""), shaped("full@1", ""));
        assert_ne!(shaped("socratic@1", ""), shaped("socratic@2", ""));
        assert_ne!(shaped("socratic@1", "e/a"), shaped("socratic@1", "e/b"));
        assert_ne!(shaped("socratic@1", "e/a"), shaped("socratic@1", ""));
    }
}
