//! Safety for young learners, in the engine's one request path: the Gemini safety settings a
//! question is asked with (part of its cache key), the ratings kept with its answer, the flags
//! raised from them, and the crisis text added to an answer.
//!
//! What the cheapest request (a cached one-shot answer) pays: one map lookup for its settings,
//! and a look at the ratings that travel inside the cached entry; a flag is written only when
//! something is flagged. See docs/safety.md.

pub mod metrics;
pub mod moderation;
pub mod redact;
pub mod webhook;

use crate::agents::AgentRegistry;
use crate::config::{CrisisMode, SafetySettings, PROBABILITIES};
use gemini_wire::SafetyRating;
use learning_chat_records::flags::Flag;
use learning_chat_records::Records;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The ratings Gemini gave a question (`promptFeedback.safetyRatings`) and its answer (the
/// candidate's `safetyRatings`), kept with the cached answer so a hit carries them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ratings {
    /// The question's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompt: Vec<SafetyRating>,
    /// The answer's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answer: Vec<SafetyRating>,
}

impl Ratings {
    /// True when neither was rated.
    pub fn is_empty(&self) -> bool {
        self.prompt.is_empty() && self.answer.is_empty()
    }
}

/// The safety thresholds one question is asked with, and their fingerprint for cache keys.
#[derive(Debug, Clone, Default)]
pub struct Thresholds {
    list: Arc<[(String, String)]>,
    fingerprint: Arc<str>,
    /// `safetySettings` as JSON, encoded once (a profile's thresholds go with every call it
    /// makes); `None` for none.
    encoded: Option<Arc<serde_json::value::RawValue>>,
}

/// Equal lists are equal thresholds: the fingerprint and the JSON follow from the list.
impl PartialEq for Thresholds {
    fn eq(&self, other: &Thresholds) -> bool {
        self.list == other.list
    }
}

impl Eq for Thresholds {}

impl Thresholds {
    /// From a map of category to threshold (sorted, so equal maps have equal fingerprints).
    pub fn new(map: &BTreeMap<String, String>) -> Thresholds {
        let list: Vec<(String, String)> = map.iter().map(|(c, t)| (c.clone(), t.clone())).collect();
        let fingerprint = list
            .iter()
            .map(|(c, t)| format!("{c}={t}"))
            .collect::<Vec<_>>()
            .join(";");
        let mut thresholds = Thresholds {
            list: list.into(),
            fingerprint: fingerprint.into(),
            encoded: None,
        };
        thresholds.encoded = thresholds
            .to_wire()
            .and_then(|wire| serde_json::value::to_raw_value(&wire).ok())
            .map(Arc::from);
        thresholds
    }

    /// Gemini's `safetySettings` as JSON: encoded once, or now if that failed; `None` for none.
    pub fn encoded(&self) -> serde_json::Result<Option<Cow<'_, serde_json::value::RawValue>>> {
        if let Some(encoded) = &self.encoded {
            return Ok(Some(Cow::Borrowed(&**encoded)));
        }
        match self.to_wire() {
            Some(wire) => Ok(Some(Cow::Owned(serde_json::value::to_raw_value(&wire)?))),
            None => Ok(None),
        }
    }

    /// What enters the cache key: `CATEGORY=THRESHOLD;...`, empty for none.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Gemini's `safetySettings`, `None` for none.
    pub fn to_wire(&self) -> Option<Vec<serde_json::Value>> {
        (!self.list.is_empty()).then(|| {
            self.list
                .iter()
                .map(|(category, threshold)| {
                    serde_json::json!({"category": category, "threshold": threshold})
                })
                .collect()
        })
    }
}

/// Everything safety decides for one (agent, key): the thresholds sent, the crisis text.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    /// Sent as `safetySettings`, part of the cache key.
    pub thresholds: Thresholds,
    /// The crisis text in the key's locale; `None`: no crisis answers.
    pub crisis_text: Option<Arc<str>>,
    /// Refuse a message whose moderation check could not be made.
    pub moderation_fail_closed: bool,
}

/// Where a flag came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagSource {
    /// Gemini's rating of the learner's message.
    Prompt,
    /// Gemini's rating of the answer.
    Answer,
    /// The model refused the question (blocked or filtered).
    ModelBlock,
    /// The moderation second opinion.
    Moderation,
}

impl FlagSource {
    /// `prompt`, `answer`, `model_block` or `moderation`.
    pub fn as_str(self) -> &'static str {
        match self {
            FlagSource::Prompt => "prompt",
            FlagSource::Answer => "answer",
            FlagSource::ModelBlock => "model_block",
            FlagSource::Moderation => "moderation",
        }
    }
}

/// A flag before it knows whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `HARM_CATEGORY_...`, a moderation category or `blocked`.
    pub category: String,
    /// The probability, score or block reason.
    pub score: String,
    /// Who found it.
    pub source: FlagSource,
}

impl Finding {
    /// True for what calls for the crisis text: self-harm by moderation, or a learner's
    /// message rated dangerous content `HIGH`.
    pub fn is_crisis(&self) -> bool {
        match self.source {
            FlagSource::Moderation => self.category.starts_with("self-harm"),
            FlagSource::Prompt => {
                self.category == "HARM_CATEGORY_DANGEROUS_CONTENT" && self.score == "HIGH"
            }
            _ => false,
        }
    }
}

/// Whose question a finding is about.
#[derive(Debug, Clone, Copy)]
pub struct Whose<'a> {
    /// The API key ('' with auth off).
    pub key_id: &'a str,
    /// The hashed learner id ('' when none).
    pub learner: &'a str,
    /// The stored conversation id ('' when none).
    pub conversation: &'a str,
    /// The exchange's number (0 when unknown).
    pub turn: u32,
    /// The agent asked.
    pub agent_id: &'a str,
}

/// The safety policy, built once at start-up; cheap to clone.
#[derive(Debug, Clone)]
pub struct Safety {
    inner: Arc<SafetyInner>,
}

#[derive(Debug)]
struct SafetyInner {
    by_agent: HashMap<String, Arc<Profile>>,
    /// Only keys with overrides: key id, then agent id.
    by_key: HashMap<String, HashMap<String, Arc<Profile>>>,
    /// For an agent that is not in the registry (never on a real request).
    fallback: Arc<Profile>,
    /// Index in [`PROBABILITIES`] of `safety.flag_at`.
    flag_at: usize,
    crisis_mode: CrisisMode,
    records: Option<Records>,
    /// Posts flags from the outbox, when a webhook is configured (taken when started).
    webhook: parking_lot::Mutex<Option<webhook::WebhookSender>>,
    /// Wakes the webhook sender when a flag is raised on this server.
    raised: Arc<tokio::sync::Notify>,
}

fn rank(probability: &str) -> Option<usize> {
    PROBABILITIES.iter().position(|p| *p == probability)
}

impl Safety {
    /// The policy of `settings` for every agent of `agents`; flags go to `records`.
    pub fn new(
        settings: &SafetySettings,
        agents: &AgentRegistry,
        records: Option<Records>,
        webhook: Option<webhook::WebhookSender>,
    ) -> Safety {
        let crisis = |overrides: &BTreeMap<String, String>, locale: &str| {
            overrides
                .get(locale)
                .or_else(|| settings.crisis_text.get(locale))
                .filter(|t| !t.trim().is_empty())
                .map(|t| Arc::<str>::from(t.as_str()))
        };
        let profile = |agent: &BTreeMap<String, String>, key: Option<&crate::config::KeySafety>| {
            let mut map = settings.settings.clone();
            map.extend(agent.iter().map(|(c, t)| (c.clone(), t.clone())));
            let empty = BTreeMap::new();
            let (key_map, key_crisis, locale, fail_closed) = match key {
                Some(k) => (
                    &k.settings,
                    &k.crisis_text,
                    k.locale.as_deref().unwrap_or(&settings.locale),
                    k.moderation_fail_closed
                        .unwrap_or(settings.moderation_fail_closed),
                ),
                None => (
                    &empty,
                    &empty,
                    settings.locale.as_str(),
                    settings.moderation_fail_closed,
                ),
            };
            map.extend(key_map.iter().map(|(c, t)| (c.clone(), t.clone())));
            Arc::new(Profile {
                thresholds: Thresholds::new(&map),
                crisis_text: crisis(key_crisis, locale),
                moderation_fail_closed: fail_closed,
            })
        };
        let by_agent = agents
            .all()
            .map(|a| {
                (
                    a.id().to_owned(),
                    profile(&a.definition.safety_settings, None),
                )
            })
            .collect();
        let by_key = settings
            .keys
            .iter()
            .map(|(key_id, key)| {
                let agents = agents
                    .all()
                    .map(|a| {
                        (
                            a.id().to_owned(),
                            profile(&a.definition.safety_settings, Some(key)),
                        )
                    })
                    .collect();
                (key_id.clone(), agents)
            })
            .collect();
        Safety {
            inner: Arc::new(SafetyInner {
                by_agent,
                by_key,
                fallback: profile(&BTreeMap::new(), None),
                flag_at: rank(&settings.flag_at).unwrap_or(2),
                crisis_mode: settings.crisis_mode,
                records,
                webhook: parking_lot::Mutex::new(webhook),
                raised: Arc::new(tokio::sync::Notify::new()),
            }),
        }
    }

    /// The profile of a question to `agent_id` by `key_id`: a map lookup or two, no allocation.
    pub fn profile(&self, agent_id: &str, key_id: Option<&str>) -> &Arc<Profile> {
        let inner = &self.inner;
        key_id
            .and_then(|key| inner.by_key.get(key))
            .and_then(|agents| agents.get(agent_id))
            .or_else(|| inner.by_agent.get(agent_id))
            .unwrap_or(&inner.fallback)
    }

    /// What of `ratings` is at or above `safety.flag_at` (or blocked): nothing allocated
    /// when nothing is.
    pub fn judge(&self, ratings: &Ratings) -> Vec<Finding> {
        let flag_at = self.inner.flag_at;
        let flagged = |r: &&SafetyRating| {
            r.blocked == Some(true) || rank(&r.probability).is_some_and(|p| p >= flag_at)
        };
        let prompt = ratings
            .prompt
            .iter()
            .filter(flagged)
            .map(|r| (r, FlagSource::Prompt));
        let answer = ratings
            .answer
            .iter()
            .filter(flagged)
            .map(|r| (r, FlagSource::Answer));
        prompt
            .chain(answer)
            .map(|(r, source)| Finding {
                category: r.category.clone(),
                score: r.probability.clone(),
                source,
            })
            .collect()
    }

    /// Stores `findings` as flags of `whose` question (one write) and counts them. A flag that
    /// cannot be stored is logged and counted, never an error for the learner.
    pub async fn raise(&self, findings: &[Finding], whose: Whose<'_>) {
        if findings.is_empty() {
            return;
        }
        let at_ms = learning_chat_records::now_ms();
        let flags: Vec<Flag> = findings
            .iter()
            .enumerate()
            .map(|(n, f)| {
                metrics::flag_raised(&f.category, f.source.as_str());
                Flag {
                    id: flag_id(at_ms, n),
                    at_ms,
                    key_id: whose.key_id.to_owned(),
                    learner: whose.learner.to_owned(),
                    conversation: whose.conversation.to_owned(),
                    turn: i64::from(whose.turn),
                    agent_id: whose.agent_id.to_owned(),
                    category: f.category.clone(),
                    score: f.score.clone(),
                    source: f.source.as_str().to_owned(),
                }
            })
            .collect();
        tracing::warn!(
            key_id = whose.key_id,
            agent_id = whose.agent_id,
            flags = flags.len(),
            categories = ?findings.iter().map(|f| f.category.as_str()).collect::<Vec<_>>(),
            "safety flag raised"
        );
        let Some(records) = &self.inner.records else {
            metrics::flags_unstored(flags.len());
            return;
        };
        match records.insert_flags(&flags).await {
            Ok(()) => self.inner.raised.notify_one(),
            Err(error) => {
                tracing::error!(%error, "cannot store safety flags");
                metrics::flags_unstored(flags.len());
            }
        }
    }

    /// Starts delivering flags to the webhook (once; `None` without a webhook or a records
    /// database).
    pub fn start_delivery(&self) -> Option<tokio::task::JoinHandle<()>> {
        let records = self.inner.records.clone()?;
        let sender = self.inner.webhook.lock().take()?;
        let raised = self.inner.raised.clone();
        Some(tokio::spawn(sender.run(records, raised)))
    }

    /// The flags of a stored conversation (none without a records database).
    pub async fn conversation_flags(
        &self,
        stored_id: &str,
    ) -> Result<Vec<Flag>, learning_chat_records::RecordsError> {
        match &self.inner.records {
            Some(records) => records.conversation_flags(stored_id, 1_000).await,
            None => Ok(Vec::new()),
        }
    }

    /// The records database flags are kept in.
    pub fn records(&self) -> Option<&Records> {
        self.inner.records.as_ref()
    }

    /// The answer text with the crisis text of `profile`: after it, or instead of it.
    pub fn crisis_answer(&self, answer: &str, crisis_text: &str) -> String {
        match self.inner.crisis_mode {
            CrisisMode::Append => format!("{answer}\n\n{crisis_text}"),
            CrisisMode::Replace => crisis_text.to_owned(),
        }
    }
}

/// A new flag's id: its time and place among the flags raised with it (so ids sort in the order
/// flags were raised), then 64 random bits (so ids never collide across servers).
fn flag_id(at_ms: i64, n: usize) -> String {
    let random = uuid::Uuid::new_v4().as_u128() as u64;
    format!("{at_ms:012x}{n:02x}{random:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rating(category: &str, probability: &str) -> SafetyRating {
        SafetyRating {
            category: category.into(),
            probability: probability.into(),
            blocked: None,
        }
    }

    fn safety(settings: SafetySettings) -> Safety {
        let agents = AgentRegistry::from_toml(
            "[[agents]]\nid = \"math\"\nname = \"M\"\ndescription = \"d\"\nmodel = \"m\"\n\
             system_prompt = \"p\"\nsafety_settings = { HARM_CATEGORY_DANGEROUS_CONTENT = \"BLOCK_ONLY_HIGH\" }\n",
        )
        .unwrap();
        Safety::new(&settings, &agents, None, None)
    }

    #[test]
    fn ratings_at_or_above_flag_at_are_findings() {
        let safety = safety(SafetySettings::default());
        let ratings = Ratings {
            prompt: vec![
                rating("HARM_CATEGORY_DANGEROUS_CONTENT", "HIGH"),
                rating("HARM_CATEGORY_HARASSMENT", "LOW"),
            ],
            answer: vec![rating("HARM_CATEGORY_HATE_SPEECH", "MEDIUM")],
        };
        let found = safety.judge(&ratings);
        assert_eq!(found.len(), 2);
        assert!(found[0].is_crisis());
        assert_eq!(found[1].source, FlagSource::Answer);
        assert!(!found[1].is_crisis());
        assert!(safety.judge(&Ratings::default()).is_empty());
    }

    /// The defaults, with `key_a` allowing harassment (`BLOCK_NONE`).
    fn harassment_allowed_for_key_a() -> SafetySettings {
        let mut settings = SafetySettings::default();
        settings.keys.insert(
            "key_a".into(),
            crate::config::KeySafety {
                settings: [("HARM_CATEGORY_HARASSMENT".into(), "BLOCK_NONE".into())].into(),
                ..Default::default()
            },
        );
        settings
    }

    #[test]
    fn agents_and_keys_override_single_categories() {
        let safety = safety(harassment_allowed_for_key_a());
        let agent = safety
            .profile("math", None)
            .thresholds
            .fingerprint()
            .to_owned();
        assert!(
            agent.contains("HARM_CATEGORY_DANGEROUS_CONTENT=BLOCK_ONLY_HIGH"),
            "{agent}"
        );
        assert!(
            agent.contains("HARM_CATEGORY_HARASSMENT=BLOCK_LOW_AND_ABOVE"),
            "{agent}"
        );
        let keyed = safety
            .profile("math", Some("key_a"))
            .thresholds
            .fingerprint();
        assert!(
            keyed.contains("HARM_CATEGORY_HARASSMENT=BLOCK_NONE"),
            "{keyed}"
        );
        assert!(keyed.contains("HARM_CATEGORY_DANGEROUS_CONTENT=BLOCK_ONLY_HIGH"));
        assert_eq!(
            safety
                .profile("math", Some("key_b"))
                .thresholds
                .fingerprint(),
            agent
        );
        let wire = safety.profile("math", None).thresholds.to_wire().unwrap();
        assert_eq!(wire.len(), 4);
    }

    /// The JSON encoded once is the settings' own, for every profile; none encodes as none.
    #[test]
    fn thresholds_encoded_once_are_their_safety_settings_json() {
        let safety = safety(harassment_allowed_for_key_a());
        for key in [None, Some("key_a")] {
            let thresholds = safety.profile("math", key).thresholds.clone();
            let encoded = thresholds.encoded().unwrap().unwrap();
            assert_eq!(
                encoded.get(),
                serde_json::to_string(&thresholds.to_wire().unwrap()).unwrap(),
                "{key:?}"
            );
        }
        assert!(Thresholds::default().encoded().unwrap().is_none());
        assert!(Thresholds::new(&BTreeMap::new())
            .encoded()
            .unwrap()
            .is_none());
    }
}
