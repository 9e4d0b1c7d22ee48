//! Conversation tokens: the id of a conversation that was never continued.
//!
//! A one-shot question stores nothing. Its answer's `conversation_id` is a signed,
//! self-describing token — the agent, the cache key the answer lives under, a digest of the
//! answer, the owner (the API key), the time and a random nonce — verified when the learner
//! follows up, which then stores the first exchange (read back from the answer cache) and the new
//! one. The token is the conversation's id for its whole life: the stored conversation is found
//! under its nonce.
//!
//! Layout before base64url: version (1) | nonce (16) | at ms (8) | answer digest (8) | cache key
//! (32) | agent length (1) | agent | owner length (1) | owner | policy length (1) | policy |
//! variant length (1) | variant | HMAC-SHA256 of all that (first 16). Version 1 tokens (made
//! before policies) have no policy and variant and are still read.

use crate::cache::CacheKey;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use rand::Rng;
use sha2::{Digest, Sha256};
use std::sync::{Arc, OnceLock};
use subtle::ConstantTimeEq;

const VERSION: u8 = 2;
/// Tokens made before policies: no policy or variant fields.
const VERSION_1: u8 = 1;
const MAC_BYTES: usize = 16;
/// Every token starts with it: a token is told from a stored id (32 hex digits) at a glance.
const PREFIX: &str = "t1";
/// Longest agent id or owner a token carries (one length byte each).
const MAX_FIELD: usize = 255;
/// The longest token's bytes before base64: fixed fields, two full-length fields, the MAC.
const MAX_TOKEN_BYTES: usize = 1 + 16 + 8 + 8 + 32 + 4 + 4 * MAX_FIELD + MAC_BYTES;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Random: the conversation's identity (two learners asking the same question at the same
    /// millisecond get two conversations).
    pub nonce: [u8; 16],
    /// When the first answer was given, in Unix milliseconds.
    pub at_ms: u64,
    /// The first 8 bytes of SHA-256 of the answer text: a follow-up finds the answer the learner
    /// saw, or nothing (the cache entry was replaced).
    pub answer_digest: [u8; 8],
    /// Where the answer lives in the cache.
    pub key: CacheKey,
    /// The agent asked.
    pub agent_id: String,
    /// The API key that asked (empty without keys).
    pub owner: String,
    /// The answer policy the conversation started with (`socratic@1`; empty in old tokens).
    pub policy: String,
    /// The experiment variant it was assigned (empty when none).
    pub variant: String,
}

/// What a token records besides the answer: who asked whom, and how the conversation is
/// tutored.
#[derive(Debug, Clone, Copy, Default)]
pub struct Signed<'a> {
    /// The agent asked.
    pub agent_id: &'a str,
    /// The API key that asked (empty without keys).
    pub owner: &'a str,
    /// The answer policy (`socratic@1`).
    pub policy: &'a str,
    /// The experiment variant (empty when none).
    pub variant: &'a str,
    /// The conversation's identity when it was chosen before the answer (an experiment
    /// assigned it by it); else a new one.
    pub nonce: Option<[u8; 16]>,
}

impl Claims {
    /// The id the conversation is stored under once continued (32 hex digits).
    pub fn stored_id(&self) -> String {
        hex::encode(self.nonce)
    }
}

/// The first 8 bytes of SHA-256 of an answer's text.
pub fn answer_digest(text: &str) -> [u8; 8] {
    let hash = Sha256::digest(text.as_bytes());
    let mut digest = [0u8; 8];
    digest.copy_from_slice(&hash[..8]);
    digest
}

/// HMAC-SHA256 keyed with `key`.
fn keyed(key: &[u8; 32]) -> Hmac<Sha256> {
    // HMAC takes keys of any length (up to a block, padded): a 32-byte key fits.
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    <Hmac<Sha256> as KeyInit>::new(&block.into())
}

/// Signs and verifies tokens with one key, shared by every server of a deployment (kept in the
/// records database, or `conversation.token_secret`). Set once: until then (no database
/// reachable at start), a random key of this process.
#[derive(Clone)]
pub struct TokenSigner {
    /// HMAC-SHA256 keyed once: each use clones the keyed state instead of hashing the key
    /// pads again.
    key: Arc<OnceLock<Hmac<Sha256>>>,
    /// How long after its answer a token may still start a conversation: no longer than the
    /// answer stays cached, after which the cache could hold a newer answer to the question.
    lifetime_ms: u64,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

impl TokenSigner {
    /// A signer whose key is set later ([`TokenSigner::set_secret`]) or made at first use;
    /// its tokens start conversations for `lifetime` after their answer.
    pub fn new(lifetime: std::time::Duration) -> TokenSigner {
        TokenSigner {
            key: Arc::default(),
            lifetime_ms: u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// True while a token of `claims` may still start its conversation (at `now_ms`).
    pub fn can_start(&self, claims: &Claims, now_ms: u64) -> bool {
        now_ms <= claims.at_ms.saturating_add(self.lifetime_ms)
    }

    /// Sets the key from a secret (hashed to 32 bytes); false when a key was already in use.
    pub fn set_secret(&self, secret: &str) -> bool {
        let key: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        self.key.set(keyed(&key)).is_ok()
    }

    /// A new random secret for the records database to keep.
    pub fn random_secret() -> String {
        let mut bytes = [0u8; 32];
        UnwrapErr(SysRng).fill_bytes(&mut bytes);
        hex::encode(bytes)
    }

    fn keyed(&self) -> &Hmac<Sha256> {
        self.key.get_or_init(|| {
            let mut bytes = [0u8; 32];
            UnwrapErr(SysRng).fill_bytes(&mut bytes);
            keyed(&bytes)
        })
    }

    fn mac(&self, payload: &[u8]) -> [u8; MAC_BYTES] {
        let mut mac = self.keyed().clone();
        mac.update(payload);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_BYTES];
        out.copy_from_slice(&full[..MAC_BYTES]);
        out
    }

    /// A token for the answer whose text has `answer_digest` (see [`answer_digest`]), kept
    /// under `key`, given as `signed` says (the agent, the API key that asked, the policy and
    /// variant) at `at_ms`; `None` when a field is too long to carry. Built in one buffer on the stack and
    /// one string: it is made for every one-shot answer, cache hits included.
    pub fn sign(
        &self,
        key: &CacheKey,
        signed: Signed<'_>,
        answer_digest: [u8; 8],
        at_ms: u64,
    ) -> Option<String> {
        let Signed {
            agent_id,
            owner,
            policy,
            variant,
            nonce,
        } = signed;
        if [agent_id, owner, policy, variant]
            .iter()
            .any(|f| f.len() > MAX_FIELD)
        {
            return None;
        }
        let nonce = nonce.unwrap_or_else(|| {
            let mut nonce = [0u8; 16];
            // The thread's CSPRNG (seeded from the OS): no system call per one-shot answer.
            rand::rng().fill_bytes(&mut nonce);
            nonce
        });
        let mut buffer = [0u8; MAX_TOKEN_BYTES];
        let mut len = 0;
        let mut put = |bytes: &[u8]| {
            buffer[len..len + bytes.len()].copy_from_slice(bytes);
            len += bytes.len();
        };
        put(&[VERSION]);
        put(&nonce);
        put(&at_ms.to_be_bytes());
        put(&answer_digest);
        put(key.as_bytes());
        for field in [agent_id, owner, policy, variant] {
            // Checked above: at most MAX_FIELD bytes.
            put(&[u8::try_from(field.len()).unwrap_or(u8::MAX)]);
            put(field.as_bytes());
        }
        let mac = self.mac(&buffer[..len]);
        buffer[len..len + MAC_BYTES].copy_from_slice(&mac);
        len += MAC_BYTES;
        let mut token = String::with_capacity(PREFIX.len() + len.div_ceil(3) * 4);
        token.push_str(PREFIX);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(&buffer[..len], &mut token);
        Some(token)
    }

    /// The claims of a token this deployment signed; `None` for anything else (malformed,
    /// forged, another deployment's, a stored id).
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let body = token.strip_prefix(PREFIX)?;
        // The longest token: fixed fields, four full-length fields, the MAC.
        if body.len() > 4 * MAX_TOKEN_BYTES / 3 + 4 {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .ok()?;
        let (payload, mac) = bytes.split_at_checked(bytes.len().checked_sub(MAC_BYTES)?)?;
        if !bool::from(self.mac(payload).ct_eq(mac)) {
            return None;
        }
        let mut rest = payload;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (head, tail) = rest.split_at_checked(n)?;
            rest = tail;
            Some(head)
        };
        let version = *take(1)?.first()?;
        if version != VERSION && version != VERSION_1 {
            return None;
        }
        let nonce: [u8; 16] = take(16)?.try_into().ok()?;
        let at_ms = u64::from_be_bytes(take(8)?.try_into().ok()?);
        let answer_digest: [u8; 8] = take(8)?.try_into().ok()?;
        let key: [u8; 32] = take(32)?.try_into().ok()?;
        let agent_len = usize::from(*take(1)?.first()?);
        let agent_id = String::from_utf8(take(agent_len)?.to_vec()).ok()?;
        let owner_len = usize::from(*take(1)?.first()?);
        let owner = String::from_utf8(take(owner_len)?.to_vec()).ok()?;
        let (mut policy, mut variant) = (String::new(), String::new());
        if version == VERSION {
            for field in [&mut policy, &mut variant] {
                let len = usize::from(*take(1)?.first()?);
                *field = String::from_utf8(take(len)?.to_vec()).ok()?;
            }
        }
        if !rest.is_empty() {
            return None;
        }
        Some(Claims {
            nonce,
            at_ms,
            answer_digest,
            key: CacheKey::from_bytes(key),
            agent_id,
            owner,
            policy,
            variant,
        })
    }
}

/// The id a token's conversation is stored under once continued, read without verifying the
/// token (for operators and tests looking at a store; the service always verifies).
pub fn stored_id_of(token: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.strip_prefix(PREFIX)?)
        .ok()?;
    bytes.get(1..17).map(hex::encode)
}

/// True for a string shaped like a token (not verified).
pub fn looks_like_token(id: &str) -> bool {
    id.len() > PREFIX.len()
        && id.starts_with(PREFIX)
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheKeyParts;
    use proptest::prelude::*;

    fn key() -> CacheKey {
        CacheKey::new(CacheKeyParts {
            provider: "p",
            agent_id: "math",
            prompt_version: "v",
            model: "m",
            message: "what is 2+2?",
            history: &[],
            scope: None,
            safety: "",
            tutoring: "",
            variant: "",
        })
    }

    fn who<'a>(agent_id: &'a str, owner: &'a str) -> Signed<'a> {
        Signed {
            agent_id,
            owner,
            ..Signed::default()
        }
    }

    #[test]
    fn a_token_records_the_policy_and_variant_and_a_chosen_nonce() {
        let signer = signer("one");
        let signed = Signed {
            policy: "socratic@1",
            variant: "trial/questions",
            nonce: Some([9; 16]),
            ..who("math", "key_1")
        };
        let token = signer.sign(&key(), signed, answer_digest("4"), 42).unwrap();
        assert!(token.len() < 250, "{}", token.len());
        let claims = signer.verify(&token).unwrap();
        assert_eq!(
            (claims.policy.as_str(), claims.variant.as_str()),
            ("socratic@1", "trial/questions")
        );
        assert_eq!(claims.nonce, [9; 16]);
        assert_eq!(claims.stored_id(), hex::encode([9u8; 16]));
    }

    #[test]
    fn a_token_signed_before_policies_still_verifies_with_none_recorded() {
        // Version 1, as the previous release signed it: no policy or variant fields.
        let signer = signer("one");
        let mut payload = vec![VERSION_1];
        payload.extend_from_slice(&[3; 16]);
        payload.extend_from_slice(&42u64.to_be_bytes());
        payload.extend_from_slice(&answer_digest("4"));
        payload.extend_from_slice(key().as_bytes());
        for field in ["math", "key_1"] {
            payload.push(u8::try_from(field.len()).unwrap());
            payload.extend_from_slice(field.as_bytes());
        }
        let mac = signer.mac(&payload);
        payload.extend_from_slice(&mac);
        let token = format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&payload)
        );
        let claims = signer.verify(&token).unwrap();
        assert_eq!(
            (claims.agent_id.as_str(), claims.owner.as_str()),
            ("math", "key_1")
        );
        assert_eq!((claims.policy.as_str(), claims.variant.as_str()), ("", ""));
        assert_eq!(claims.nonce, [3; 16]);
    }

    fn signer(secret: &str) -> TokenSigner {
        let signer = TokenSigner::new(std::time::Duration::from_secs(3600));
        assert!(signer.set_secret(secret));
        signer
    }

    #[test]
    fn the_padded_key_is_the_same_hmac_as_the_key_itself() {
        // Servers of the previous release keyed HMAC with the 32 bytes as they are: tokens
        // signed by either must verify on the other during a rolling upgrade.
        let key = [7u8; 32];
        let mut padded = keyed(&key);
        let mut plain = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
        padded.update(b"payload");
        plain.update(b"payload");
        assert_eq!(
            padded.finalize().into_bytes(),
            plain.finalize().into_bytes()
        );
    }

    #[test]
    fn a_token_round_trips_and_is_an_url_segment() {
        let signer = signer("one");
        let token = signer
            .sign(&key(), who("math", "key_1"), answer_digest("4"), 42)
            .unwrap();
        assert!(looks_like_token(&token), "{token}");
        assert!(token.len() < 200, "{}", token.len());
        let claims = signer.verify(&token).unwrap();
        assert_eq!(claims.key, key());
        assert_eq!(
            (claims.agent_id.as_str(), claims.owner.as_str()),
            ("math", "key_1")
        );
        assert_eq!(claims.at_ms, 42);
        assert_eq!(claims.answer_digest, answer_digest("4"));
        assert_eq!(claims.stored_id().len(), 32);
        assert!(signer.can_start(&claims, 42 + 3_600_000));
        assert!(!signer.can_start(&claims, 42 + 3_600_001));
        // Same question, same moment: two conversations.
        let other = signer
            .sign(&key(), who("math", "key_1"), answer_digest("4"), 42)
            .unwrap();
        assert_ne!(signer.verify(&other).unwrap().nonce, claims.nonce);
    }

    #[test]
    fn another_deployments_or_a_tampered_token_is_refused() {
        let token = signer("one")
            .sign(&key(), who("math", ""), answer_digest("4"), 1)
            .unwrap();
        assert_eq!(signer("two").verify(&token), None);
        let signer = signer("one");
        assert!(signer.verify(&token).is_some());
        // Flip each character in turn: never accepted.
        for at in PREFIX.len()..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            assert_eq!(signer.verify(&tampered), None, "accepted a change at {at}");
        }
        assert_eq!(signer.verify("0123456789abcdef0123456789abcdef"), None);
    }

    #[test]
    fn the_key_is_set_once() {
        let signer = TokenSigner::new(std::time::Duration::from_secs(3600));
        let before = signer
            .sign(&key(), who("math", ""), answer_digest("4"), 1)
            .unwrap();
        // In use already (a random key): a later secret cannot change it under live tokens.
        assert!(!signer.set_secret("late"));
        assert!(signer.verify(&before).is_some());
    }

    proptest! {
        #[test]
        fn arbitrary_input_is_refused_without_panicking(input in ".{0,400}") {
            let signer = signer("one");
            prop_assert_eq!(signer.verify(&input), None);
            prop_assert_eq!(signer.verify(&format!("{PREFIX}{input}")), None);
        }

        #[test]
        fn arbitrary_bytes_after_the_prefix_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let signer = signer("one");
            let token = format!("{PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes));
            prop_assert_eq!(signer.verify(&token), None);
        }

        #[test]
        fn every_signed_claim_comes_back(agent in "[a-z_]{0,255}", owner in "[a-z0-9_]{0,255}", text in ".{0,200}", at in any::<u64>()) {
            let signer = signer("one");
            let token = signer.sign(&key(), who(&agent, &owner), answer_digest(&text), at).unwrap();
            prop_assert!(looks_like_token(&token));
            let claims = signer.verify(&token).unwrap();
            prop_assert_eq!(claims.agent_id, agent);
            prop_assert_eq!(claims.owner, owner);
            prop_assert_eq!(claims.at_ms, at);
            prop_assert_eq!(claims.answer_digest, answer_digest(&text));
        }
    }
}
