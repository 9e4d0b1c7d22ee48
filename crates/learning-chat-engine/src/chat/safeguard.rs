//! The safety side of the flow's last step: the flags an answer's ratings (or a refusal) raise,
//! and the crisis text a flagged learner's answer gets. The ratings come with the answer, from
//! the model or inside the cached entry, so an unflagged hit costs no store write, Redis round
//! trip or lock here.

use super::{Answer, AnswerText, Caller, ChatError, ChatService};
use crate::agents::Agent;
use crate::safety::moderation::Verdict;
use crate::safety::{Finding, FlagSource, Profile, Whose};
use std::sync::Arc;

/// Who asked, for the flags of the answer: the caller, their safety profile, and the
/// conversation id they sent (for a refusal, which records no exchange).
#[derive(Debug, Clone)]
pub(super) struct Asked {
    pub caller: Caller,
    pub profile: Arc<Profile>,
    pub conversation: Option<String>,
    /// What moderation found in the message (empty without moderation).
    pub moderation: Vec<Finding>,
    /// How the conversation is tutored: its policy and experiment variant.
    pub setup: super::Setup,
}

impl ChatService {
    /// Raises the flags of `answer`'s ratings and adds the crisis text when they call for it.
    pub(super) async fn safeguard(
        &self,
        mut answer: Answer,
        agent: &Agent,
        asked: &Asked,
    ) -> Answer {
        let safety = &self.inner.deps.safety;
        let mut findings = safety.judge(answer.ratings());
        if findings.is_empty() && asked.moderation.is_empty() {
            return answer;
        }
        findings.extend(asked.moderation.iter().cloned());
        let conversation = answer.conversation_id.clone();
        // Boxed: storing flags is a records write (about 14 kB of future), and unboxed it sat
        // in every answer's future, copied on each move of it, cached ones included.
        Box::pin(self.raise(
            &findings,
            agent,
            asked,
            conversation.as_deref(),
            answer.turn,
        ))
        .await;
        if let Some(crisis) = asked.profile.crisis_text.as_deref() {
            if findings.iter().any(Finding::is_crisis) {
                // After the cache and the conversation: the crisis text is this key's, in its
                // locale, and never reaches the shared cache.
                answer.text = AnswerText::Owned(safety.crisis_answer(&answer.text, crisis));
                answer.crisis = true;
                crate::safety::metrics::crisis_answer();
            }
        }
        answer
    }

    /// Raises the flag of a refusal by the model (a blocked or filtered question).
    pub(super) async fn refused(&self, error: &ChatError, agent: &Agent, asked: &Asked) {
        let ChatError::Provider(crate::providers::ProviderError::Blocked { reason }) = error else {
            return;
        };
        let mut findings = vec![Finding {
            category: "blocked".to_owned(),
            score: reason.clone(),
            source: FlagSource::ModelBlock,
        }];
        findings.extend(asked.moderation.iter().cloned());
        // Boxed for the same reason as in `safeguard`.
        Box::pin(self.raise(&findings, agent, asked, asked.conversation.as_deref(), 0)).await;
    }

    /// The moderation second opinion on `message`, when configured: what it flagged, or the
    /// refusal of a key that fails closed when no check could be made.
    pub(super) async fn moderate(
        &self,
        message: &str,
        profile: &Profile,
    ) -> Result<Vec<Finding>, ChatError> {
        let Some(moderator) = &self.inner.deps.moderator else {
            return Ok(Vec::new());
        };
        match moderator.check(message).await {
            Verdict::Passed => Ok(Vec::new()),
            Verdict::Flagged(findings) => Ok(findings),
            Verdict::Skipped(why) if profile.moderation_fail_closed => {
                crate::safety::metrics::moderation("refused");
                Err(ChatError::ModerationUnavailable(why))
            }
            Verdict::Skipped(why) => {
                tracing::warn!(reason = why, "moderation check skipped: message answered");
                Ok(Vec::new())
            }
        }
    }

    /// Stores `findings` as flags of the conversation the client calls `conversation`.
    async fn raise(
        &self,
        findings: &[Finding],
        agent: &Agent,
        asked: &Asked,
        conversation: Option<&str>,
        turn: u32,
    ) {
        let deps = &self.inner.deps;
        let owner = asked.caller.key_id.as_deref();
        let stored = conversation
            .and_then(|id| deps.conversations.stored_id_for(id, owner))
            .unwrap_or_default();
        let whose = Whose {
            key_id: owner.unwrap_or(""),
            learner: asked.caller.learner.as_deref().unwrap_or(""),
            conversation: &stored,
            turn,
            agent_id: agent.id(),
        };
        deps.safety.raise(findings, whose).await;
    }
}
