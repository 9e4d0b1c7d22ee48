//! `[agents]`: where the tutor agents are defined.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The tutor agents.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSettings {
    /// Path of an agents TOML file; empty uses the agents shipped in `config/agents.toml`.
    pub path: Option<PathBuf>,
}
