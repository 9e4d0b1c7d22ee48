//! The offline model: the Gemini simulator's answer generator (shared through `gemini-wire`),
//! in-process, with no network.

use super::{
    completion_from_response, Completion, CompletionStream, ModelRequest, ProviderError,
    StreamPiece,
};
use crate::config::OfflineSettings;
use futures::StreamExt;
use gemini_wire::respond::{simulate_response, AnswerSettings};
use std::time::Duration;
use tokio::time::Instant;

/// Answers like `gemini-sim` does, without a server; used when no API key is configured.
#[derive(Debug, Clone)]
pub struct OfflineModel {
    answer_tokens: u32,
    latency: Duration,
}

/// Prefix of the `model` field of every offline answer, so nobody mistakes it for Gemini.
pub const OFFLINE_MODEL_PREFIX: &str = "offline-simulated/";

impl OfflineModel {
    /// The offline model with the configured answer length and latency.
    pub fn new(settings: &OfflineSettings) -> OfflineModel {
        OfflineModel {
            answer_tokens: settings.answer_tokens,
            latency: settings.latency,
        }
    }

    /// One offline answer after the configured latency (or a timeout at `deadline`).
    pub async fn generate(
        &self,
        request: &ModelRequest,
        deadline: Instant,
    ) -> Result<Completion, ProviderError> {
        self.answer_after(self.latency, request, deadline).await
    }

    /// The answer to `request` once `wait` has passed, or a timeout when that is past `deadline`.
    async fn answer_after(
        &self,
        wait: Duration,
        request: &ModelRequest,
        deadline: Instant,
    ) -> Result<Completion, ProviderError> {
        if !wait.is_zero() {
            let ready = Instant::now() + wait;
            if ready > deadline {
                tokio::time::sleep_until(deadline).await;
                return Err(ProviderError::Timeout);
            }
            tokio::time::sleep_until(ready).await;
        }
        let answer = AnswerSettings {
            answer_tokens: self.answer_tokens,
            ..AnswerSettings::DEFAULT
        };
        let response = simulate_response(&request.to_wire(), &request.model, &answer);
        let mut completion = completion_from_response(response, &request.model)?;
        completion.model = format!("{OFFLINE_MODEL_PREFIX}{}", request.model);
        Ok(completion)
    }

    /// The same answer as [`OfflineModel::generate`], streamed word by word: the first word
    /// after a quarter of the configured latency, the rest spread over the remainder, so the
    /// offline default shows what streaming looks like.
    pub async fn generate_stream(
        &self,
        request: &ModelRequest,
        deadline: Instant,
    ) -> Result<CompletionStream, ProviderError> {
        let first = self.latency / 4;
        let completion = self.answer_after(first, request, deadline).await?;
        let words = words(&completion.text);
        let gap = (self.latency - first)
            .checked_div(u32::try_from(words.len()).unwrap_or(u32::MAX).max(1))
            .unwrap_or_default();
        let stream = async_stream::stream! {
            for (i, word) in words.into_iter().enumerate() {
                if i > 0 && !gap.is_zero() {
                    if Instant::now() + gap > deadline {
                        tokio::time::sleep_until(deadline).await;
                        yield Err(ProviderError::Timeout);
                        return;
                    }
                    tokio::time::sleep(gap).await;
                }
                yield Ok(StreamPiece::Text(word));
            }
            yield Ok(StreamPiece::Finished(completion));
        };
        Ok(stream.boxed())
    }
}

/// `text` cut after each run of whitespace: the pieces, joined, are `text` again.
fn words(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    for (index, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            pieces.push(text[start..index].to_owned());
            start = index;
            in_space = false;
        }
    }
    if start < text.len() {
        pieces.push(text[start..].to_owned());
    }
    pieces
}

#[cfg(test)]
mod tests {
    #[test]
    fn words_join_back_to_the_text() {
        let text = "One two  three\nfour ";
        let pieces = super::words(text);
        assert_eq!(pieces, vec!["One ", "two  ", "three\n", "four "]);
        assert_eq!(pieces.concat(), text);
    }
}
