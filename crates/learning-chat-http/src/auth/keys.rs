//! API keys: the secret's format and its peppered hash. The stored record ([`ApiKey`]) and the
//! store (the records database) live in `learning_chat_records`; every server holds all keys in
//! memory ([`super::key_set::KeySet`]).

use base64::Engine;
use learning_chat_engine::config::Secret;
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use rand::Rng;
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

pub use learning_chat_records::keys::{ApiKey, KeyLimits};

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
    let mut hex = [0u8; 64];
    hash_secret_into(pepper, secret, &mut hex).to_owned()
}

/// [`hash_secret`] written into `out`, without allocating (every keyed request hashes its
/// key): the 64 hex digits, as a `str` borrowed from `out`.
pub fn hash_secret_into<'a>(pepper: &Secret, secret: &str, out: &'a mut [u8; 64]) -> &'a str {
    let mut hasher = Sha256::new();
    hasher.update(pepper.expose().as_bytes());
    hasher.update([0u8]);
    hasher.update(secret.as_bytes());
    // 32 bytes always fill 64 hex digits, which are ASCII.
    let _ = hex::encode_to_slice(hasher.finalize(), out);
    std::str::from_utf8(out).unwrap_or_default()
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

/// True when two hashes are equal, compared in constant time (only their lengths, which are
/// not secret, decide early).
///
/// Word by word: `subtle` compares a byte slice a byte at a time, each behind an optimisation
/// barrier, which cost 840 instructions of every keyed request for a 64-digit hash (bench 16).
pub fn hashes_match(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut equal = subtle::Choice::from(1);
    for (x, y) in a.chunks(8).zip(b.chunks(8)) {
        equal &= word(x).ct_eq(&word(y));
    }
    bool::from(equal)
}

/// Up to 8 bytes as one word, zero-padded.
fn word(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(word)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
    fn the_stored_form_is_hex_sha256_of_pepper_nul_secret() {
        // Keys already in the database were hashed this way: the form must not change.
        let expected = hex::encode(Sha256::digest(b"pepper-0123456789\0lc_secret"));
        assert_eq!(
            hash_secret(&Secret::new("pepper-0123456789"), "lc_secret"),
            expected
        );
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

    #[test]
    fn hashes_match_only_when_every_byte_does() {
        // Every length around a word's edge, and a difference at every position, the last
        // (partial) word's included.
        for len in [0, 1, 7, 8, 9, 16, 63, 64, 65] {
            let a: String = "0123456789abcdef".chars().cycle().take(len).collect();
            assert!(hashes_match(&a, &a.clone()), "len {len}");
            for at in 0..len {
                let mut b = a.clone().into_bytes();
                b[at] = if b[at] == b'x' { b'y' } else { b'x' };
                let b = String::from_utf8(b).unwrap();
                assert!(!hashes_match(&a, &b), "len {len}, differing at {at}");
            }
            assert!(
                !hashes_match(&a, &format!("{a}0")),
                "len {len} against one more"
            );
        }
    }
}
