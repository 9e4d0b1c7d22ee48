//! The service's route paths, defined once: the router, the OpenAPI description, the HTTP metric
//! labels, the auth middleware and the telemetry probes all read them from here. A leaf module.

/// Lists the tutors.
pub const AGENTS: &str = "/api/v1/agents";
/// Asks a tutor (the `{agent_id}` template, as axum and OpenAPI write it).
pub const AGENT_CHAT: &str = "/api/v1/agents/{agent_id}";
/// Streams a tutor's answer as server-sent events.
pub const AGENT_STREAM: &str = "/api/v1/agents/{agent_id}/stream";
/// Reads or erases a conversation.
pub const CONVERSATION: &str = "/api/v1/conversations/{conversation_id}";
/// The OpenAI-compatible model list: one model per tutor.
pub const OPENAI_MODELS: &str = "/v1/models";
/// The OpenAI-compatible Chat Completions endpoint: `model` names the tutor.
pub const OPENAI_CHAT_COMPLETIONS: &str = "/v1/chat/completions";
/// Any other path under `/v1/`: a 404 in OpenAI's error shape.
pub const OPENAI_OTHER: &str = "/v1/{*rest}";
/// Safety flags of every key, for admin keys.
pub const ADMIN_FLAGS: &str = "/api/v1/admin/flags";
/// Rates one answer of a conversation.
pub const CONVERSATION_FEEDBACK: &str = "/api/v1/conversations/{conversation_id}/feedback";
/// A class's (key's) answer policy, over the agents' own.
pub const ADMIN_CLASS_POLICY: &str = "/api/v1/admin/classes/{key_id}/policy";
/// The experiments with their per-variant counts and the thumbs-up difference's interval.
pub const ADMIN_EXPERIMENTS: &str = "/api/v1/admin/experiments";
/// The signed-in console user (teacher or admin).
pub const ADMIN_ME: &str = "/api/v1/admin/me";
/// The classes a teacher or admin may read.
pub const ADMIN_CLASSES: &str = "/api/v1/admin/classes";
/// One class's usage per day and most asked questions.
pub const ADMIN_CLASS_USAGE: &str = "/api/v1/admin/classes/{key_id}/usage";
/// Conversations by class, agent, learner, date and flag.
pub const ADMIN_CONVERSATIONS: &str = "/api/v1/admin/conversations";
/// One conversation's transcript with its flags.
pub const ADMIN_CONVERSATION: &str = "/api/v1/admin/conversations/{conversation_id}";
/// A teacher's 1-5 rating of a conversation's answer (console).
pub const ADMIN_CONVERSATION_FEEDBACK: &str =
    "/api/v1/admin/conversations/{conversation_id}/feedback";
/// Marks a flag reviewed.
pub const ADMIN_FLAG_REVIEW: &str = "/api/v1/admin/flags/{flag_id}/review";
/// Lists and creates keys (admins).
pub const ADMIN_KEYS: &str = "/api/v1/admin/keys";
/// Edits or revokes a key (admins).
pub const ADMIN_KEY: &str = "/api/v1/admin/keys/{key_id}";
/// Everything stored about a learner (admins).
pub const ADMIN_LEARNER_EXPORT: &str = "/api/v1/admin/learners/{learner_id}/export";
/// Erases a learner everywhere (admins).
pub const ADMIN_LEARNER: &str = "/api/v1/admin/learners/{learner_id}";
/// The audit log (admins).
pub const ADMIN_AUDIT: &str = "/api/v1/admin/audit";
/// The teacher/admin console page.
pub const CONSOLE: &str = "/console";
/// Liveness probe.
pub const HEALTH: &str = "/health";
/// Readiness probe.
pub const READY: &str = "/ready";
/// Prometheus metrics.
pub const METRICS: &str = "/metrics";
/// The OpenAPI document.
pub const OPENAPI: &str = "/openapi.json";

/// The route label of a request that matched no route (metrics, logs, error reports).
pub const UNMATCHED: &str = "unmatched";

/// The agent a request path names (`/api/v1/agents/{agent_id}`), if it names one.
pub fn agent_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix(AGENTS)?.strip_prefix('/')?;
    let agent = rest.split('/').next()?;
    (!agent.is_empty()).then_some(agent)
}

/// True for a conversation's path (`/api/v1/conversations/{conversation_id}`): reading and
/// erasing conversations count against a key's request limits like questions do.
pub fn is_conversation(path: &str) -> bool {
    path.strip_prefix("/api/v1/conversations/")
        .is_some_and(|id| !id.is_empty())
}

/// True for the OpenAI-compatible API's paths (`/v1/...`): their errors take OpenAI's shape.
pub fn is_openai(path: &str) -> bool {
    path.starts_with("/v1/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_is_read_from_the_chat_path() {
        assert_eq!(agent_of("/api/v1/agents/math"), Some("math"));
        assert_eq!(agent_of("/api/v1/agents"), None);
        assert_eq!(agent_of("/api/v1/agents/"), None);
        assert_eq!(agent_of("/api/v1/agentsmath"), None);
    }

    #[test]
    fn the_chat_route_is_under_the_agents_route() {
        assert_eq!(AGENT_CHAT, format!("{AGENTS}/{{agent_id}}"));
    }
}
