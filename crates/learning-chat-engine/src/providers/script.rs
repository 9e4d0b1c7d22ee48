//! A scripted model for the chat flow's tests: each call takes the next outcome of its script
//! (the last one repeats) after a delay, whole or streamed word by word.

use super::{Completion, CompletionStream, ModelRequest, ProviderError, StreamPiece, Usage};
use gemini_wire::FinishReason;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A model that answers from a script.
#[derive(Debug)]
pub struct Script {
    model: String,
    delay: Duration,
    outcomes: Mutex<VecDeque<Result<String, ProviderError>>>,
    calls: AtomicUsize,
    /// The history length of each request, in order.
    histories: Mutex<Vec<usize>>,
}

impl Script {
    /// `model` answering `outcomes` in turn, each after `delay` (a stream: each word after it).
    pub fn new(
        model: &str,
        delay: Duration,
        outcomes: &[Result<&str, ProviderError>],
    ) -> Arc<Script> {
        Arc::new(Script {
            model: model.to_owned(),
            delay,
            outcomes: Mutex::new(
                outcomes
                    .iter()
                    .map(|o| o.clone().map(str::to_owned))
                    .collect(),
            ),
            calls: AtomicUsize::new(0),
            histories: Mutex::new(Vec::new()),
        })
    }

    /// The model id it serves.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Calls made so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The number of history turns sent with each call.
    pub fn histories(&self) -> Vec<usize> {
        self.histories.lock().clone()
    }

    fn next(&self, request: &ModelRequest) -> Result<Completion, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.histories.lock().push(request.history.len());
        let mut outcomes = self.outcomes.lock();
        let outcome = match outcomes.len() {
            0 => Err(ProviderError::Empty("the script ran out".to_owned())),
            1 => outcomes[0].clone(),
            _ => outcomes.pop_front().unwrap_or_else(|| unreachable!()),
        };
        outcome.map(|text| Completion {
            usage: Usage {
                prompt_tokens: 10,
                output_tokens: u32::try_from(text.len()).unwrap_or(u32::MAX),
            },
            text,
            finish_reason: FinishReason::Stop,
            model: self.model.clone(),
            ratings: Default::default(),
        })
    }

    /// The answer after the delay, or a timeout at `deadline`.
    pub async fn generate(
        &self,
        request: &ModelRequest,
        deadline: Instant,
    ) -> Result<Completion, ProviderError> {
        wait(self.delay, deadline).await?;
        self.next(request)
    }

    /// The answer streamed: each word after the delay.
    pub async fn generate_stream(
        &self,
        request: &ModelRequest,
        deadline: Instant,
    ) -> Result<CompletionStream, ProviderError> {
        let completion = self.next(request)?;
        let delay = self.delay;
        let words: Vec<String> = completion
            .text
            .split_inclusive(' ')
            .map(str::to_owned)
            .collect();
        let stream = async_stream::stream! {
            for word in words {
                wait(delay, deadline).await?;
                yield Ok(StreamPiece::Text(word));
            }
            yield Ok(StreamPiece::Finished(completion));
        };
        Ok(Box::pin(stream))
    }
}

async fn wait(delay: Duration, deadline: Instant) -> Result<(), ProviderError> {
    if Instant::now() + delay > deadline {
        tokio::time::sleep_until(deadline).await;
        return Err(ProviderError::Timeout);
    }
    tokio::time::sleep(delay).await;
    Ok(())
}
