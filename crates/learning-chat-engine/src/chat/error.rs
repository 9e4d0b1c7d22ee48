//! Why a question got no answer: the one error of the chat flow.

use crate::admission::{Shed, ShedReason};
use crate::coalesce::local::CallError;
use crate::conversations::ConversationError;
use crate::providers::ProviderError;

/// Why a question got no answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChatError {
    /// No agent with that id.
    #[error("unknown agent {agent_id:?}")]
    UnknownAgent {
        /// The id asked for.
        agent_id: String,
        /// Every valid id.
        known: Vec<String>,
    },
    /// The message is empty or only whitespace.
    #[error("message is empty")]
    EmptyMessage,
    /// The message is longer than allowed.
    #[error("message has {chars} characters; the limit is {limit}")]
    MessageTooLong {
        /// Its length in characters.
        chars: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The conversation step refused the message (unknown, busy, full, store down, ...).
    #[error(transparent)]
    Conversation(#[from] ConversationError),
    /// Refused before reaching the model (overload or quota).
    #[error("service is at capacity ({})", .0.reason.as_str())]
    Shed(Shed),
    /// The request's deadline passed.
    #[error("request deadline exceeded")]
    Timeout,
    /// The model gave no usable answer.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The pieces streamed belong to an answer that was asked again and came out different:
    /// the text the learner has cannot be completed.
    #[error("the answer changed while it was streaming")]
    StreamInconsistent,
    /// The moderation check of the message could not be made, and the key fails closed
    /// (`safety.moderation_fail_closed`).
    #[error("the safety check of the message could not be made ({0})")]
    ModerationUnavailable(&'static str),
    /// A bug: a task failed unexpectedly.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CallError for ChatError {
    fn timed_out() -> Self {
        ChatError::Timeout
    }

    fn task_failed(error: tokio::task::JoinError) -> Self {
        ChatError::Internal(format!("model call task failed: {error}"))
    }

    /// The deadline, or a quota slot beyond it.
    fn bound_by_deadline(&self) -> bool {
        matches!(
            self,
            ChatError::Timeout
                | ChatError::Provider(ProviderError::Timeout)
                | ChatError::Shed(Shed {
                    reason: ShedReason::Quota | ShedReason::QueueWait,
                    ..
                })
        )
    }
}
