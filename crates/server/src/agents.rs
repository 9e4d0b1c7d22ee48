//! The agent registry: the subject tutors learners talk to, loaded from a TOML file.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

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
    /// Gemini model id.
    pub model: String,
    /// The tutor's instructions, sent as `systemInstruction`.
    pub system_prompt: String,
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
}

/// A loaded agent: its definition plus the version that enters cache keys.
#[derive(Debug, Clone)]
pub struct Agent {
    /// What the file says.
    pub definition: AgentDefinition,
    /// Hash of everything that shapes answers, so an edited prompt never serves old answers.
    pub prompt_version: String,
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
            if definition.model.trim().is_empty() {
                return Err(AgentsError::Parse(format!("agent {id}: empty model")));
            }
            let prompt_version = prompt_version(&definition);
            let agent = Agent {
                definition,
                prompt_version,
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

fn prompt_version(definition: &AgentDefinition) -> String {
    // Destructured so a new field that shapes answers cannot be forgotten here.
    let AgentDefinition {
        id: _,
        name: _,
        description: _,
        model,
        system_prompt,
        temperature,
        top_p,
        top_k,
        max_output_tokens,
        thinking_budget,
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
