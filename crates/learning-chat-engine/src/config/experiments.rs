//! `[[experiments]]`: A/B tests of answer policies and prompt versions, measured on learning.

use super::ConfigError;
use crate::policy::Tutoring;
use serde::{Deserialize, Serialize};

/// One experiment: conversations of its agents split between its variants by weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSettings {
    /// Its name (1-64 of `a-z 0-9 - _`): in metrics, answers and the records database.
    pub name: String,
    /// The agents whose new conversations take part (at least one; an agent is in at most one
    /// experiment).
    pub agents: Vec<String>,
    /// What is assigned a variant: `conversation` (the default: each new conversation, by a
    /// hash of its id) or `learner` (by a hash of `X-Learner-Id`, so a learner keeps one variant
    /// across conversations; a request without one falls back to its conversation).
    #[serde(default)]
    pub unit: ExperimentUnit,
    /// When it begins (RFC 3339); absent: at once.
    #[serde(default)]
    pub start: Option<String>,
    /// When it ends (RFC 3339); absent: never. From then on no one is assigned; conversations
    /// already in a variant keep it.
    #[serde(default)]
    pub end: Option<String>,
    /// The variants (at least two), the first being the control the others are compared with.
    pub variants: Vec<VariantSettings>,
}

/// What an experiment assigns variants to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExperimentUnit {
    /// Each new conversation.
    #[default]
    Conversation,
    /// Each learner (`X-Learner-Id`).
    Learner,
}

/// One variant of an experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSettings {
    /// Its name (1-64 of `a-z 0-9 - _`), unique in the experiment.
    pub name: String,
    /// The answer policy, at its newest version (`hints`) or pinned (`socratic@1`): two
    /// variants of one policy at two versions compare prompt versions.
    pub policy: String,
    /// Its share of conversations relative to the other variants (at least 1).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// A name as metrics labels and answers carry it.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Unix milliseconds of an RFC 3339 time (`key` names it in the error).
pub fn unix_ms(key: &str, at: &str) -> Result<u64, ConfigError> {
    let at = humantime::parse_rfc3339_weak(at)
        .map_err(|e| ConfigError::Invalid(format!("{key}: {at:?} is not RFC 3339: {e}")))?;
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    Ok(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// Checks every experiment on its own (the agents it names are checked against the agents
/// file when the service is built).
pub fn validate(experiments: &[ExperimentSettings]) -> Result<(), ConfigError> {
    let invalid = |message: String| Err(ConfigError::Invalid(message));
    for (i, experiment) in experiments.iter().enumerate() {
        let name = &experiment.name;
        if !valid_name(name) {
            return invalid(format!(
                "experiments: name {name:?} must be 1-64 chars of a-z, 0-9, '-' or '_'"
            ));
        }
        if experiments[..i].iter().any(|e| &e.name == name) {
            return invalid(format!("experiments: {name:?} is defined twice"));
        }
        if experiment.agents.is_empty() {
            return invalid(format!("experiments.{name}: agents must name at least one"));
        }
        for agent in &experiment.agents {
            if let Some(other) = experiments[..i].iter().find(|e| e.agents.contains(agent)) {
                return invalid(format!(
                    "experiments.{name}: agent {agent:?} is already in experiment {:?}",
                    other.name
                ));
            }
        }
        let start = experiment
            .start
            .as_deref()
            .map(|at| unix_ms(&format!("experiments.{name}.start"), at))
            .transpose()?;
        let end = experiment
            .end
            .as_deref()
            .map(|at| unix_ms(&format!("experiments.{name}.end"), at))
            .transpose()?;
        if let (Some(start), Some(end)) = (start, end) {
            if end <= start {
                return invalid(format!("experiments.{name}: end must be after start"));
            }
        }
        if experiment.variants.len() < 2 {
            return invalid(format!(
                "experiments.{name}: needs at least two variants (the first is the control)"
            ));
        }
        for (j, variant) in experiment.variants.iter().enumerate() {
            let key = format!("experiments.{name}.variants.{}", variant.name);
            if !valid_name(&variant.name) {
                return invalid(format!(
                    "{key}: the name must be 1-64 chars of a-z, 0-9, '-' or '_'"
                ));
            }
            if experiment.variants[..j]
                .iter()
                .any(|v| v.name == variant.name)
            {
                return invalid(format!("{key}: defined twice"));
            }
            if variant.weight == 0 {
                return invalid(format!("{key}: weight must be at least 1"));
            }
            if Tutoring::parse(&variant.policy).is_none() {
                return invalid(format!(
                    "{key}: policy {:?} is not one of {}",
                    variant.policy,
                    Tutoring::all()
                        .map(Tutoring::name)
                        .chain(["socratic", "hints", "full"])
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
    }
    Ok(())
}
