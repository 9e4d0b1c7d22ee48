//! The engine's metrics, gathered: each one is declared next to the code it measures (a
//! `metrics` module in `cache`, `coalesce`, `admission`, `providers`, `chat`, `redis_link` and
//! `conversations`); this module describes them all to the exporter at once.
//!
//! Labels are low-cardinality by construction (cache tiers, error kinds, reasons), never raw
//! messages. The dashboard and alert rules in `deploy/` use these names, and a test scrapes a
//! running instance to keep them in step.

/// Describes every engine metric (its help text) to the installed recorder.
pub fn describe() {
    crate::admission::metrics::describe();
    crate::cache::metrics::describe();
    crate::chat::metrics::describe();
    crate::coalesce::metrics::describe();
    crate::conversations::metrics::describe();
    crate::experiments::describe();
    crate::providers::metrics::describe();
    crate::redis_link::metrics::describe();
    crate::safety::metrics::describe();
}

/// Tells the engine the process's metrics recorder is installed: from now on its hot counters
/// keep their handles.
pub fn recorder_installed() {
    crate::cache::metrics::recorder_installed();
}
