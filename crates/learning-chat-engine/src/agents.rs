//! The agent registry: the subject tutors learners talk to, loaded from a TOML file.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::policy::Tutoring;
use crate::providers::SystemInstruction;

/// The agents shipped with the project, used when no path is configured.
pub const BUILTIN_AGENTS_TOML: &str = include_str!("../../../config/agents.toml");

/// One tutor as written in the agents file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDefinition {
    /// URL id (`/api/v1/agents/{id}`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// One-line description for the agent list.
    pub description: String,
    /// The model that answers (the primary); may be left out when `models` is given.
    #[serde(default)]
    pub model: String,
    /// The fallback chain, tried in order: the primary first, then the models that answer when
    /// it is overloaded, failing or out of quota. Each is a model id (served by the agent's
    /// `provider`) or a table `{ model, provider, base_url, api_key_env }`.
    #[serde(default)]
    pub models: Vec<ModelEntry>,
    /// When the primary's quota has no room for a question before its deadline, the next model
    /// of the chain with room answers at once (default `true`); `false` for subjects where the
    /// smaller model is not good enough: the question is refused (503) instead.
    #[serde(default = "spill_over_default")]
    pub spill_over: bool,
    /// `gemini` (the default) or `openai` (any Chat Completions endpoint) for the agent's models.
    #[serde(default)]
    pub provider: Option<ProviderKind>,
    /// Base URL of the agent's OpenAI-compatible endpoint (default: `openai.base_url`).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Environment variable holding the bearer token for that endpoint (default:
    /// `openai.api_key`).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The tutor's instructions, sent as `systemInstruction` (followed by the policy's block).
    pub system_prompt: String,
    /// How much the tutor gives away: `socratic`, `hints` or `full` (the default), at its newest
    /// version, or pinned to one (`socratic@1`); see [`crate::policy`]. A key (class) may
    /// override it.
    #[serde(default)]
    pub policy: Option<String>,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Top-k sampling.
    #[serde(default)]
    pub top_k: Option<u32>,
    /// Cap on answer tokens.
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    /// Thinking budget for thinking models (0 = off where allowed).
    #[serde(default)]
    pub thinking_budget: Option<i32>,
    /// Gemini safety thresholds by harm category, over `safety.settings` (a history tutor may
    /// allow `BLOCK_ONLY_HIGH` for dangerous content, say).
    #[serde(default)]
    pub safety_settings: BTreeMap<String, String>,
}

fn spill_over_default() -> bool {
    true
}

/// Which wire format serves a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Gemini's REST API (or the offline model without a key).
    #[default]
    Gemini,
    /// An OpenAI-compatible Chat Completions endpoint.
    Openai,
}

/// One model of a fallback chain as written: an id, or a table naming where it is served.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModelEntry {
    /// A model id served by the agent's provider.
    Id(String),
    /// A model with its own provider settings.
    Spec(ModelSpec),
}

/// One model of a fallback chain with where it is served.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Model id as the provider names it.
    pub model: String,
    /// Who serves it (default: the agent's provider).
    #[serde(default)]
    pub provider: Option<ProviderKind>,
    /// OpenAI-compatible endpoint (default: the agent's, else `openai.base_url`).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Environment variable with the endpoint's bearer token.
    #[serde(default)]
    pub api_key_env: Option<String>,
}

impl ModelSpec {
    /// The provider, resolved (after loading it is always set).
    pub fn provider(&self) -> ProviderKind {
        self.provider.unwrap_or_default()
    }
}

/// A loaded agent: its definition plus the version that enters cache keys.
#[derive(Debug, Clone)]
pub struct Agent {
    /// What the file says (`model` set to the primary).
    pub definition: AgentDefinition,
    /// Hash of everything that shapes answers, so an edited prompt never serves old answers.
    pub prompt_version: String,
    /// The models to try in order, primary first, with provider settings resolved.
    pub chain: Vec<ModelSpec>,
    /// The answer policy of its conversations, unless a key or an experiment says otherwise.
    pub tutoring: Tutoring,
    /// Its system instruction under each shipped answer policy, made once.
    instructions: Arc<[(Tutoring, SystemInstruction)]>,
}

/// The system instruction of `prompt` under every shipped answer policy, and under the default.
fn instructions_of(prompt: &str) -> Arc<[(Tutoring, SystemInstruction)]> {
    let mut tutorings: Vec<Tutoring> = Tutoring::all().collect();
    if !tutorings.contains(&Tutoring::default()) {
        tutorings.push(Tutoring::default());
    }
    tutorings
        .into_iter()
        .map(|t| (t, SystemInstruction::new(t.system_instruction(prompt))))
        .collect()
}

/// The agent's chain with every entry's provider settings resolved from the agent's defaults.
fn resolve_chain(definition: &AgentDefinition) -> Result<Vec<ModelSpec>, String> {
    let id = &definition.id;
    let agent_provider = definition.provider.unwrap_or_default();
    let mut chain: Vec<ModelSpec> = definition
        .models
        .iter()
        .map(|entry| {
            let mut spec = match entry {
                ModelEntry::Id(model) => ModelSpec {
                    model: model.clone(),
                    provider: None,
                    base_url: None,
                    api_key_env: None,
                },
                ModelEntry::Spec(spec) => spec.clone(),
            };
            let provider = spec.provider.unwrap_or(agent_provider);
            if provider == agent_provider {
                spec.base_url = spec.base_url.or_else(|| definition.base_url.clone());
                spec.api_key_env = spec.api_key_env.or_else(|| definition.api_key_env.clone());
            }
            spec.provider = Some(provider);
            spec
        })
        .collect();
    if chain.is_empty() {
        chain.push(ModelSpec {
            model: definition.model.clone(),
            provider: Some(agent_provider),
            base_url: definition.base_url.clone(),
            api_key_env: definition.api_key_env.clone(),
        });
    } else if !definition.model.trim().is_empty() && definition.model != chain[0].model {
        return Err(format!(
            "agent {id}: model {:?} must be the first of models (or left out)",
            definition.model
        ));
    }
    for (i, spec) in chain.iter().enumerate() {
        if spec.model.trim().is_empty() {
            return Err(format!("agent {id}: empty model"));
        }
        if chain[..i].contains(spec) {
            return Err(format!(
                "agent {id}: model {:?} is in models twice",
                spec.model
            ));
        }
        if let Some(url) = &spec.base_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "agent {id}: base_url {url:?} must start with http:// or https://"
                ));
            }
        }
    }
    Ok(chain)
}

impl Agent {
    /// The agent's id.
    pub fn id(&self) -> &str {
        &self.definition.id
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentsFile {
    agents: Vec<AgentDefinition>,
}

/// Why an agents file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AgentsError {
    /// The file could not be read.
    #[error("cannot read agents file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid agents TOML.
    #[error("invalid agents file: {0}")]
    Parse(String),
}

/// All agents by id.
#[derive(Debug, Clone)]
pub struct AgentRegistry {
    agents: Arc<BTreeMap<String, Arc<Agent>>>,
}

impl AgentRegistry {
    /// Loads the file at `path`, or the shipped agents when `None`.
    pub fn load(path: Option<&Path>) -> Result<AgentRegistry, AgentsError> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| AgentsError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                Self::from_toml(&text)
            }
            None => Self::from_toml(BUILTIN_AGENTS_TOML),
        }
    }

    /// Parses and checks agents TOML.
    pub fn from_toml(text: &str) -> Result<AgentRegistry, AgentsError> {
        let file: AgentsFile =
            toml::from_str(text).map_err(|e| AgentsError::Parse(e.to_string()))?;
        if file.agents.is_empty() {
            return Err(AgentsError::Parse("no [[agents]] defined".to_owned()));
        }
        let mut agents = BTreeMap::new();
        for definition in file.agents {
            let id = definition.id.clone();
            let valid_id = !id.is_empty()
                && id.len() <= 64
                && id
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !valid_id {
                return Err(AgentsError::Parse(format!(
                    "agent id {id:?} must be 1-64 chars of a-z, 0-9, '-' or '_'"
                )));
            }
            if definition.system_prompt.trim().is_empty() {
                return Err(AgentsError::Parse(format!(
                    "agent {id}: empty system_prompt"
                )));
            }
            crate::config::check_thresholds(
                &format!("agent {id}: safety_settings"),
                &definition.safety_settings,
            )
            .map_err(|e| AgentsError::Parse(e.to_string()))?;
            let chain = resolve_chain(&definition).map_err(AgentsError::Parse)?;
            let tutoring = match definition.policy.as_deref() {
                None => Tutoring::default(),
                Some(policy) => Tutoring::parse(policy).ok_or_else(|| {
                    AgentsError::Parse(format!(
                        "agent {id}: policy {policy:?} is not one of socratic, hints, full \
                         (optionally @version: {})",
                        Tutoring::all()
                            .map(Tutoring::name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?,
            };
            let mut definition = definition;
            definition.model = chain[0].model.clone();
            let prompt_version = prompt_version(&definition);
            let agent = Agent {
                instructions: instructions_of(&definition.system_prompt),
                definition,
                prompt_version,
                chain,
                tutoring,
            };
            if agents.insert(id.clone(), Arc::new(agent)).is_some() {
                return Err(AgentsError::Parse(format!("agent id {id:?} defined twice")));
            }
        }
        Ok(AgentRegistry {
            agents: Arc::new(agents),
        })
    }

    /// The agent with this id.
    pub fn get(&self, id: &str) -> Option<Arc<Agent>> {
        self.agents.get(id).cloned()
    }

    /// Every agent, sorted by id.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Agent>> {
        self.agents.values()
    }

    /// Every agent id, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.agents.keys().cloned().collect()
    }
}

impl Agent {
    /// This agent answering with the caller's own `temperature` and `top_p` where given: its
    /// prompt version changes with them, so such answers are cached apart from the tutor's
    /// own (same values: the same agent, sharing every cached answer).
    pub fn with_sampling(&self, temperature: Option<f32>, top_p: Option<f32>) -> Option<Agent> {
        let definition = &self.definition;
        let temperature = temperature.filter(|t| Some(*t) != definition.temperature);
        let top_p = top_p.filter(|p| Some(*p) != definition.top_p);
        if temperature.is_none() && top_p.is_none() {
            return None;
        }
        let mut definition = definition.clone();
        definition.temperature = temperature.or(definition.temperature);
        definition.top_p = top_p.or(definition.top_p);
        Some(Agent {
            prompt_version: prompt_version(&definition),
            definition,
            chain: self.chain.clone(),
            tutoring: self.tutoring,
            instructions: self.instructions.clone(),
        })
    }

    /// Its system instruction under the answer policy `tutoring`: the subject prompt, then the
    /// policy's block.
    pub fn system_instruction(&self, tutoring: Tutoring) -> SystemInstruction {
        match self.instructions.iter().find(|(t, _)| *t == tutoring) {
            Some((_, instruction)) => instruction.clone(),
            None => {
                SystemInstruction::new(tutoring.system_instruction(&self.definition.system_prompt))
            }
        }
    }
}

fn prompt_version(definition: &AgentDefinition) -> String {
    // Destructured so a new field that shapes answers cannot be forgotten here.
    let AgentDefinition {
        id: _,
        name: _,
        description: _,
        model,
        // The answering model and its provider enter every cache key themselves, so a change
        // of fallbacks or endpoint needs no new prompt version.
        models: _,
        // Which model answers is in the key already; whether another may is not a prompt.
        spill_over: _,
        provider: _,
        base_url: _,
        api_key_env: _,
        system_prompt,
        // The policy's name and version enter every cache key themselves (a key or an
        // experiment may choose another), so it is not a prompt version.
        policy: _,
        temperature,
        top_p,
        top_k,
        max_output_tokens,
        thinking_budget,
        // The effective safety settings enter every cache key themselves (with the key's
        // overrides), so they are not a prompt version.
        safety_settings: _,
    } = definition;
    let mut hasher = Sha256::new();
    for part in [
        model.as_str(),
        system_prompt.as_str(),
        &format!("{temperature:?}|{top_p:?}|{top_k:?}|{max_output_tokens:?}|{thinking_budget:?}"),
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_sampling_makes_an_agent_cached_apart_and_the_tutors_own_changes_nothing() {
        let registry = AgentRegistry::load(None).unwrap();
        let math = registry.get("math").unwrap();
        let own = math.definition.temperature;
        assert!(math.with_sampling(own, math.definition.top_p).is_none());
        assert!(math.with_sampling(None, None).is_none());
        let warmer = math.with_sampling(Some(1.5), None).unwrap();
        assert_eq!(warmer.definition.temperature, Some(1.5));
        assert_eq!(warmer.definition.top_p, math.definition.top_p);
        assert_ne!(warmer.prompt_version, math.prompt_version);
        assert_eq!(warmer.id(), math.id());
    }

    /// The instructions made once are the ones made per request before, under every answer
    /// policy, for the tutor and for a caller's copy of it with its own sampling.
    #[test]
    fn an_agents_instruction_made_once_is_its_prompt_then_the_policy_block() {
        let registry = AgentRegistry::load(None).unwrap();
        let math = registry.get("math").unwrap();
        let sampled = math.with_sampling(Some(0.11), None).unwrap();
        for agent in [&*math, &sampled] {
            for tutoring in Tutoring::all().chain([Tutoring::default()]) {
                let made = tutoring.system_instruction(&agent.definition.system_prompt);
                let instruction = agent.system_instruction(tutoring);
                assert_eq!(instruction.text(), made, "{tutoring}");
                assert_eq!(
                    serde_json::to_string(instruction.gemini()).unwrap(),
                    serde_json::to_string(&gemini_wire::Content::text(None, made)).unwrap(),
                );
            }
        }
    }

    #[test]
    fn shipped_agents_cover_the_core_subjects() {
        let registry = AgentRegistry::load(None).unwrap();
        for id in ["math", "science", "history", "writing", "programming"] {
            let agent = registry.get(id).unwrap();
            assert!(agent.definition.system_prompt.len() > 100, "{id}");
        }
    }

    #[test]
    fn editing_a_prompt_changes_its_version() {
        let a = AgentRegistry::from_toml(
            "[[agents]]\nid='m'\nname='M'\ndescription='d'\nmodel='gemini-2.5-flash'\nsystem_prompt='one'\n",
        )
        .unwrap();
        let b = AgentRegistry::from_toml(
            "[[agents]]\nid='m'\nname='M'\ndescription='d'\nmodel='gemini-2.5-flash'\nsystem_prompt='two'\n",
        )
        .unwrap();
        assert_ne!(
            a.get("m").unwrap().prompt_version,
            b.get("m").unwrap().prompt_version
        );
    }

    #[test]
    fn a_chain_lists_the_primary_first_and_inherits_the_agent_provider() {
        let registry = AgentRegistry::from_toml(
            "[[agents]]\nid='m'\nname='M'\ndescription='d'\nsystem_prompt='p'\nprovider='openai'\nbase_url='http://127.0.0.1:1'\nmodels=['llama3', {model='gemini-2.5-flash', provider='gemini'}]\n",
        )
        .unwrap();
        let agent = registry.get("m").unwrap();
        assert_eq!(agent.definition.model, "llama3");
        assert_eq!(agent.chain[0].provider(), ProviderKind::Openai);
        assert_eq!(
            agent.chain[0].base_url.as_deref(),
            Some("http://127.0.0.1:1")
        );
        assert_eq!(agent.chain[1].provider(), ProviderKind::Gemini);
        assert_eq!(agent.chain[1].base_url, None);
        let err = AgentRegistry::from_toml(
            "[[agents]]\nid='m'\nname='M'\ndescription='d'\nsystem_prompt='p'\nmodel='a'\nmodels=['b','a']\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("first of models"), "{err}");
    }

    #[test]
    fn bad_files_are_rejected_with_a_reason() {
        let dup = "[[agents]]\nid='m'\nname='M'\ndescription='d'\nmodel='x'\nsystem_prompt='p'\n";
        let err = AgentRegistry::from_toml(&format!("{dup}{dup}")).unwrap_err();
        assert!(err.to_string().contains("twice"));
        let err = AgentRegistry::from_toml(
            "[[agents]]\nid='Bad Id'\nname='M'\ndescription='d'\nmodel='x'\nsystem_prompt='p'\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("Bad Id"));
    }
}
