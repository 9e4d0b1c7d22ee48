//! Every Lua script the server runs in Redis, one `.lua` file each in this folder, built once.
//!
//! A script is atomic in Redis, which is why the shared state (answers, leases, quota and limit
//! windows, conversations) is changed through scripts and not command by command. Fragments
//! shared by several scripts (`read_capped.lua`, `lease.lua`, `window.lua`) are prepended once,
//! here, when the registry is built; each script's SHA-1 is computed then too, so a call sends
//! only `EVALSHA` (and the source once per Redis that does not know it yet).
//!
//! Each script's contract (its KEYS, ARGV and reply) is written at the top of its file and
//! tested against a real redis-server in `tests`. Every key one script touches must carry the
//! same hash tag (see [`crate::redis_link::RedisLink::key`]), or Redis Cluster refuses it.

use ::redis::Script;
use std::sync::LazyLock;

const READ_CAPPED: &str = include_str!("read_capped.lua");
const LEASE: &str = include_str!("lease.lua");
const WINDOW: &str = include_str!("window.lua");

/// The scripts, by name.
pub(crate) struct Scripts {
    /// `cache_get.lua`: one answer or outcome, dropped when mistyped or oversized.
    pub cache_get: Script,
    /// `coalesce_look.lua`: a question's answer, else its shared outcome, else its lease.
    pub coalesce_look: Script,
    /// `lease_acquire.lua`: takes a lease when free.
    pub lease_acquire: Script,
    /// `lease_renew.lua`: extends a lease its holder still holds.
    pub lease_renew: Script,
    /// `lease_release.lua`: deletes a lease its holder still holds.
    pub lease_release: Script,
    /// `conversation_load.lua`: a conversation's list, its TTL refreshed.
    pub conversation_load: Script,
    /// `conversation_append.lua`: appends turns when the list has the expected length.
    pub conversation_append: Script,
    /// `conversation_active.lua`: the live count of the conversation index.
    pub conversation_active: Script,
    /// `window_reserve.lua`: reserves units in sliding windows.
    pub window_reserve: Script,
    /// `window_record.lua`: adds or removes window entries after the fact.
    pub window_record: Script,
    /// `window_used.lua`: the units a window counts now.
    pub window_used: Script,
}

/// The registry, built on first use.
pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(Scripts::load);

/// A script made of `fragments` followed by `body`.
fn compose(fragments: &[&str], body: &str) -> Script {
    let mut source = fragments.join("\n");
    source.push('\n');
    source.push_str(body);
    Script::new(&source)
}

impl Scripts {
    fn load() -> Scripts {
        Scripts {
            cache_get: compose(&[READ_CAPPED], include_str!("cache_get.lua")),
            coalesce_look: compose(&[READ_CAPPED, LEASE], include_str!("coalesce_look.lua")),
            lease_acquire: compose(&[LEASE], include_str!("lease_acquire.lua")),
            lease_renew: Script::new(include_str!("lease_renew.lua")),
            lease_release: Script::new(include_str!("lease_release.lua")),
            conversation_load: Script::new(include_str!("conversation_load.lua")),
            conversation_append: Script::new(include_str!("conversation_append.lua")),
            conversation_active: Script::new(include_str!("conversation_active.lua")),
            window_reserve: compose(&[WINDOW], include_str!("window_reserve.lua")),
            window_record: compose(&[WINDOW], include_str!("window_record.lua")),
            window_used: compose(&[WINDOW], include_str!("window_used.lua")),
        }
    }

    /// Every script with its file name (for the test that loads them all).
    #[cfg(test)]
    pub(crate) fn all(&self) -> [(&'static str, &Script); 11] {
        [
            ("cache_get", &self.cache_get),
            ("coalesce_look", &self.coalesce_look),
            ("lease_acquire", &self.lease_acquire),
            ("lease_renew", &self.lease_renew),
            ("lease_release", &self.lease_release),
            ("conversation_load", &self.conversation_load),
            ("conversation_append", &self.conversation_append),
            ("conversation_active", &self.conversation_active),
            ("window_reserve", &self.window_reserve),
            ("window_record", &self.window_record),
            ("window_used", &self.window_used),
        ]
    }
}

#[cfg(test)]
mod tests;
