//! `[admission]`: how keys share the server: the default cap on a key's requests in progress,
//! and the memory the per-key limit windows may take in process. (The queue's bounds are
//! `[upstream]`'s; its fair share per key needs no setting.)

use super::{invalid, ConfigError};
use serde::{Deserialize, Serialize};

/// How keys share the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionSettings {
    /// Requests in progress at once for a key whose record sets no `concurrency` (0 = no
    /// limit), so a flood from one key is refused (429) before it crowds out the others.
    pub default_key_concurrency: u32,
    /// Most bytes the per-key and per-learner limit windows hold in this process (without
    /// Redis, or while it is down); past it the least recently used are forgotten.
    pub limit_windows_max_bytes: u64,
    /// With Redis, a key whose minute is large takes its requests in blocks (one round trip
    /// each) and spends them on this server; false decides every request in Redis.
    pub key_request_blocks: bool,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        AdmissionSettings {
            // Above the seed's load from one key with every answer a miss (about 100 questions
            // a second x 2.8 s = 280 in progress), far below what floods the queue.
            default_key_concurrency: 500,
            limit_windows_max_bytes: 8 * 1024 * 1024,
            key_request_blocks: true,
        }
    }
}

impl AdmissionSettings {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.limit_windows_max_bytes < 64 * 1024 {
            return invalid("admission.limit_windows_max_bytes must be at least 65536");
        }
        Ok(())
    }
}
