//! `[safety]` and `[privacy]`: Gemini safety settings, flags and where they go, crisis answers,
//! the moderation second opinion, and what is redacted before the model sees a message.

use super::{invalid, positive, ConfigError, Secret};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::num::{NonZero, NonZeroU32};
use std::time::Duration;

/// The four harm categories Gemini lets a caller set thresholds for.
pub const HARM_CATEGORIES: [&str; 4] = [
    "HARM_CATEGORY_HARASSMENT",
    "HARM_CATEGORY_HATE_SPEECH",
    "HARM_CATEGORY_SEXUALLY_EXPLICIT",
    "HARM_CATEGORY_DANGEROUS_CONTENT",
];

/// The thresholds Gemini accepts.
pub const THRESHOLDS: [&str; 6] = [
    "BLOCK_LOW_AND_ABOVE",
    "BLOCK_MEDIUM_AND_ABOVE",
    "BLOCK_ONLY_HIGH",
    "BLOCK_NONE",
    "OFF",
    "HARM_BLOCK_THRESHOLD_UNSPECIFIED",
];

/// Gemini's harm probabilities, lowest first.
pub const PROBABILITIES: [&str; 4] = ["NEGLIGIBLE", "LOW", "MEDIUM", "HIGH"];

/// Where the crisis text goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrisisMode {
    /// After the model's answer.
    #[default]
    Append,
    /// Instead of the model's answer.
    Replace,
}

/// Who gives the second opinion on learner messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModerationKind {
    /// No second opinion: Gemini's ratings only.
    #[default]
    None,
    /// An OpenAI-compatible `POST /v1/moderations`.
    Openai,
}

/// Safety for young learners.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SafetySettings {
    /// Gemini `safetySettings`: a threshold per harm category, sent with every call and part
    /// of every cache key. Agents (`safety_settings` in the agents file) and keys
    /// (`[safety.keys."<key id>"]`) override single categories.
    pub settings: BTreeMap<String, String>,
    /// The lowest rating that makes a flag: `NEGLIGIBLE`, `LOW`, `MEDIUM` or `HIGH`.
    pub flag_at: String,
    /// Where flags are posted as JSON (empty: nowhere; they are still stored).
    pub webhook_url: String,
    /// Key of the HMAC-SHA256 signature of each webhook body (`x-learning-chat-signature`).
    pub webhook_secret: Secret,
    /// How long one delivery may take before it counts as failed (`webhook_timeout_ms`).
    #[serde(rename = "webhook_timeout_ms", with = "super::duration")]
    pub webhook_timeout: Duration,
    /// How often each server looks for undelivered flags (`webhook_poll_ms`).
    #[serde(rename = "webhook_poll_ms", with = "super::duration")]
    pub webhook_poll: Duration,
    /// Wait after a flag's first failed delivery (`webhook_retry_min_ms`); doubles each time.
    #[serde(rename = "webhook_retry_min_ms", with = "super::duration")]
    pub webhook_retry_min: Duration,
    /// Longest wait between two deliveries of one flag (`webhook_retry_max_ms`).
    #[serde(rename = "webhook_retry_max_ms", with = "super::duration")]
    pub webhook_retry_max: Duration,
    /// Most flags one server takes from the outbox per look.
    pub webhook_batch: NonZeroU32,
    /// The crisis text by locale (`{ en = "..." }`): added to an answer when a learner's
    /// message is flagged for self-harm or rated dangerous content `HIGH`. Empty: no crisis
    /// answers.
    pub crisis_text: BTreeMap<String, String>,
    /// `append` the crisis text to the model's answer, or `replace` the answer with it.
    pub crisis_mode: CrisisMode,
    /// The locale of the crisis text for keys that set none.
    pub locale: String,
    /// `none` or `openai`: a second opinion on every learner message.
    pub moderation: ModerationKind,
    /// Base URL of the OpenAI-compatible moderation endpoint (`{url}/v1/moderations`).
    pub moderation_url: String,
    /// Bearer token for it.
    pub moderation_api_key: Secret,
    /// The moderation model asked.
    pub moderation_model: String,
    /// How long a moderation check may take (`moderation_timeout_ms`).
    #[serde(rename = "moderation_timeout_ms", with = "super::duration")]
    pub moderation_timeout: Duration,
    /// Most moderation checks per minute from one server; past it checks are skipped.
    pub moderation_rpm: NonZeroU32,
    /// Consecutive failed checks that open the moderation circuit (checks are skipped).
    pub moderation_breaker_failures: NonZeroU32,
    /// How long the moderation circuit stays open (`moderation_breaker_cooldown_ms`).
    #[serde(rename = "moderation_breaker_cooldown_ms", with = "super::duration")]
    pub moderation_breaker_cooldown: Duration,
    /// Refuse a message whose moderation check could not be made (default: answer it, count
    /// the check as skipped).
    pub moderation_fail_closed: bool,
    /// Per-key overrides, by key id.
    pub keys: BTreeMap<String, KeySafety>,
}

/// One key's safety overrides.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeySafety {
    /// Thresholds by category, over the agent's.
    pub settings: BTreeMap<String, String>,
    /// The key's locale for the crisis text.
    pub locale: Option<String>,
    /// The key's crisis text by locale, over `safety.crisis_text`.
    pub crisis_text: BTreeMap<String, String>,
    /// Refuse messages whose moderation check could not be made.
    pub moderation_fail_closed: Option<bool>,
}

impl Default for SafetySettings {
    fn default() -> Self {
        SafetySettings {
            // Strict for minors: block anything rated LOW or above in every category.
            settings: HARM_CATEGORIES
                .iter()
                .map(|c| ((*c).to_owned(), "BLOCK_LOW_AND_ABOVE".to_owned()))
                .collect(),
            flag_at: "MEDIUM".to_owned(),
            webhook_url: String::new(),
            webhook_secret: Secret::default(),
            webhook_timeout: Duration::from_secs(5),
            webhook_poll: Duration::from_secs(1),
            webhook_retry_min: Duration::from_secs(1),
            webhook_retry_max: Duration::from_secs(60),
            webhook_batch: const { NonZero::new(100).unwrap() },
            crisis_text: BTreeMap::new(),
            crisis_mode: CrisisMode::Append,
            locale: "en".to_owned(),
            moderation: ModerationKind::None,
            moderation_url: "https://api.openai.com".to_owned(),
            moderation_api_key: Secret::default(),
            moderation_model: "omni-moderation-latest".to_owned(),
            moderation_timeout: Duration::from_secs(2),
            moderation_rpm: const { NonZero::new(600).unwrap() },
            moderation_breaker_failures: const { NonZero::new(5).unwrap() },
            moderation_breaker_cooldown: Duration::from_secs(30),
            moderation_fail_closed: false,
            keys: BTreeMap::new(),
        }
    }
}

/// Checks a map of thresholds, naming `key` in the error.
pub fn check_thresholds(key: &str, settings: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (category, threshold) in settings {
        if !HARM_CATEGORIES.contains(&category.as_str()) {
            return invalid(&format!(
                "{key}: unknown harm category {category:?} (expected one of {HARM_CATEGORIES:?})"
            ));
        }
        if !THRESHOLDS.contains(&threshold.as_str()) {
            return invalid(&format!(
                "{key}.{category}: unknown threshold {threshold:?} (expected one of {THRESHOLDS:?})"
            ));
        }
    }
    Ok(())
}

impl SafetySettings {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_thresholds("safety.settings", &self.settings)?;
        if !PROBABILITIES.contains(&self.flag_at.as_str()) {
            return invalid(&format!(
                "safety.flag_at: {:?} is not one of {PROBABILITIES:?}",
                self.flag_at
            ));
        }
        for (id, key) in &self.keys {
            check_thresholds(&format!("safety.keys.{id}.settings"), &key.settings)?;
        }
        let url = self.webhook_url.trim();
        if !url.is_empty() {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return invalid("safety.webhook_url must be an http:// or https:// URL");
            }
            if self.webhook_secret.is_empty() {
                return invalid("safety.webhook_url needs safety.webhook_secret (the signing key)");
            }
        }
        positive("safety.webhook_timeout_ms", self.webhook_timeout)?;
        positive("safety.webhook_poll_ms", self.webhook_poll)?;
        positive("safety.webhook_retry_min_ms", self.webhook_retry_min)?;
        if self.webhook_retry_max < self.webhook_retry_min {
            return invalid("safety.webhook_retry_max_ms must be at least webhook_retry_min_ms");
        }
        positive("safety.moderation_timeout_ms", self.moderation_timeout)?;
        if self.moderation == ModerationKind::Openai && self.moderation_url.trim().is_empty() {
            return invalid("safety.moderation = \"openai\" needs safety.moderation_url");
        }
        Ok(())
    }
}

/// Personal data kept from the model, the cache and the stored conversation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacySettings {
    /// What is replaced by a placeholder in learner messages before anything else sees them:
    /// any of `email`, `phone`, `url`, `ip`, `card` (see docs/safety.md for what each detects).
    pub redact: Vec<String>,
}

/// The kinds of personal data `privacy.redact` knows.
pub const REDACTABLE: [&str; 5] = ["email", "phone", "url", "ip", "card"];

impl PrivacySettings {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for kind in &self.redact {
            if !REDACTABLE.contains(&kind.as_str()) {
                return invalid(&format!(
                    "privacy.redact: unknown kind {kind:?} (expected any of {REDACTABLE:?})"
                ));
            }
        }
        Ok(())
    }
}
