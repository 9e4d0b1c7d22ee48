//! Metrics of conversations: each declared once (name, help, labels), next to the code it
//! measures; `crate::metrics::describe` gathers the help texts for the exporter.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

/// Conversations alive now (used within `conversation.ttl_ms`; cluster-wide with Redis).
pub const CONVERSATIONS_ACTIVE: &str = "learning_chat_conversations_active";

/// Conversations started (stored).
pub const CONVERSATIONS_CREATED: &str = "learning_chat_conversations_created_total";

/// One-shot answers given a conversation token instead of a stored conversation.
pub const CONVERSATION_TOKENS: &str = "learning_chat_conversation_tokens_issued_total";

/// Conversations erased by `DELETE /api/v1/conversations/{id}`.
pub const CONVERSATIONS_ERASED: &str = "learning_chat_conversations_erased_total";

/// Conversations evicted from process memory (`conversation.max_conversations`,
/// `max_memory_bytes` or `max_open_per_key`).
pub const CONVERSATIONS_EVICTED: &str = "learning_chat_conversations_evicted_total";

/// Bytes the conversations kept in process memory hold (no Redis).
pub const CONVERSATIONS_MEMORY_BYTES: &str = "learning_chat_conversations_memory_bytes";

/// Turns a conversation holds after each exchange is written.
pub const CONVERSATION_TURNS: &str = "learning_chat_conversation_turns";

/// Tokens of earlier turns sent with each follow-up.
pub const CONVERSATION_HISTORY_TOKENS: &str = "learning_chat_conversation_history_tokens";

/// Follow-ups whose older turns were left out to fit `conversation.max_history_tokens`.
pub const CONVERSATION_TRUNCATIONS: &str = "learning_chat_conversation_history_truncations_total";

/// Conversation messages refused or not stored, by reason.
pub const CONVERSATION_REFUSALS: &str = "learning_chat_conversation_refusals_total";

/// Counts a one-shot answer's token (nothing stored).
pub fn conversation_token_issued() {
    // Every one-shot answer counts here: the handle is kept once the recorder is installed.
    static HANDLE: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    if crate::cache::metrics::recorder_ready() {
        HANDLE
            .get_or_init(|| counter!(CONVERSATION_TOKENS))
            .increment(1);
    } else {
        counter!(CONVERSATION_TOKENS).increment(1);
    }
}

/// Sets the conversations alive now.
pub fn conversations_active(count: u64) {
    gauge!(CONVERSATIONS_ACTIVE).set(count as f64);
}

/// Counts a conversation started.
pub fn conversation_created() {
    counter!(CONVERSATIONS_CREATED).increment(1);
}

/// Counts a conversation erased.
pub fn conversation_erased() {
    counter!(CONVERSATIONS_ERASED).increment(1);
}

/// Counts a conversation evicted from memory.
pub fn conversation_evicted() {
    counter!(CONVERSATIONS_EVICTED).increment(1);
}

/// Sets the bytes the in-process conversations hold.
pub fn conversations_memory_bytes(bytes: usize) {
    gauge!(CONVERSATIONS_MEMORY_BYTES).set(bytes as f64);
}

/// Records the turns a conversation holds after an exchange.
pub fn conversation_turns(turns: usize) {
    histogram!(CONVERSATION_TURNS).record(turns as f64);
}

/// Records the history sent with a follow-up, and whether older turns were left out.
pub fn conversation_history(tokens: u32, truncated: bool) {
    histogram!(CONVERSATION_HISTORY_TOKENS).record(f64::from(tokens));
    if truncated {
        counter!(CONVERSATION_TRUNCATIONS).increment(1);
    }
}

/// Counts a conversation message refused or not stored (`busy`, `store_unavailable`,
/// `wrong_agent`, `turn_limit`, `too_large`, `not_stored`).
pub fn conversation_refused(reason: &'static str) {
    counter!(CONVERSATION_REFUSALS, "reason" => reason).increment(1);
}

/// Describes these metrics (their help text) to the installed recorder.
pub(crate) fn describe() {
    describe_gauge!(
        CONVERSATIONS_ACTIVE,
        "Conversations used within the TTL (cluster-wide with Redis)."
    );
    describe_counter!(
        CONVERSATIONS_CREATED,
        "Conversations stored (a follow-up to a token, or a first answer that could not be cached)."
    );
    describe_counter!(
        CONVERSATION_TOKENS,
        "One-shot answers given a signed conversation token: nothing stored until a follow-up."
    );
    describe_counter!(CONVERSATIONS_ERASED, "Conversations erased on request.");
    describe_counter!(
        CONVERSATIONS_EVICTED,
        "Conversations evicted from memory (conversation.max_conversations, max_memory_bytes or max_open_per_key)."
    );
    describe_gauge!(
        CONVERSATIONS_MEMORY_BYTES,
        metrics::Unit::Bytes,
        "Bytes the conversations kept in process memory hold (conversation.max_memory_bytes)."
    );
    describe_histogram!(
        CONVERSATION_TURNS,
        "Turns a conversation holds after each exchange."
    );
    describe_histogram!(
        CONVERSATION_HISTORY_TOKENS,
        "Tokens of earlier turns sent with each follow-up."
    );
    describe_counter!(
        CONVERSATION_TRUNCATIONS,
        "Follow-ups whose older turns were left out of the history."
    );
    describe_counter!(
        CONVERSATION_REFUSALS,
        "Conversation messages refused or not stored, by reason."
    );
}
