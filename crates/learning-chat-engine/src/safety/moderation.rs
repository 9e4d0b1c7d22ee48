//! The moderation second opinion (`safety.moderation = "openai"`): each learner message checked
//! by an OpenAI-compatible `POST /v1/moderations`, with its own per-minute quota, timeout and
//! circuit breaker. A check that cannot be made is skipped (counted), unless the key says fail
//! closed.

use super::{Finding, FlagSource};
use crate::config::{ModerationKind, SafetySettings, Secret};
use crate::providers::transport::{HttpRequest, HttpTransport, MakeTransport, TransportOptions};
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What a check found.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Nothing flagged.
    Passed,
    /// The categories flagged, as findings.
    Flagged(Vec<Finding>),
    /// No check was made: why (`timeout`, `error`, `quota`, `circuit_open`).
    Skipped(&'static str),
}

#[derive(Debug, Deserialize)]
struct Response {
    results: Vec<Result>,
}

#[derive(Debug, Deserialize)]
struct Result {
    #[serde(default)]
    categories: BTreeMap<String, bool>,
    #[serde(default)]
    category_scores: BTreeMap<String, f64>,
}

/// The moderation client.
pub struct Moderator {
    http: Arc<dyn HttpTransport>,
    url: url::Url,
    api_key: Secret,
    model: String,
    timeout: Duration,
    rpm: u32,
    breaker_failures: u32,
    breaker_cooldown: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The start of the current minute of the quota, and the checks made in it.
    minute: Instant,
    used: u32,
    /// Consecutive failed checks, and until when the circuit is open.
    failures: u32,
    open_until: Option<Instant>,
}

impl std::fmt::Debug for Moderator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moderator")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl Moderator {
    /// The moderator of `settings`, when `safety.moderation = "openai"`.
    pub fn from_settings(
        settings: &SafetySettings,
        transport: &MakeTransport,
    ) -> anyhow::Result<Option<Moderator>> {
        if settings.moderation == ModerationKind::None {
            return Ok(None);
        }
        let http = transport(TransportOptions {
            connect_timeout: settings.moderation_timeout,
            pool_max_idle_per_host: 32,
            follow_redirects: false,
        })?;
        let base = settings.moderation_url.trim().trim_end_matches('/');
        let url = url::Url::parse(&format!("{base}/v1/moderations"))
            .map_err(|e| anyhow::anyhow!("invalid safety.moderation_url {base:?}: {e}"))?;
        Ok(Some(Moderator {
            http,
            url,
            api_key: settings.moderation_api_key.clone(),
            model: settings.moderation_model.clone(),
            timeout: settings.moderation_timeout,
            rpm: settings.moderation_rpm.get(),
            breaker_failures: settings.moderation_breaker_failures.get(),
            breaker_cooldown: settings.moderation_breaker_cooldown,
            state: Mutex::new(State {
                minute: Instant::now(),
                used: 0,
                failures: 0,
                open_until: None,
            }),
        }))
    }

    /// Checks one learner message.
    pub async fn check(&self, message: &str) -> Verdict {
        if let Some(skipped) = self.admit() {
            super::metrics::moderation("skipped");
            return Verdict::Skipped(skipped);
        }
        let verdict = self.ask(message).await;
        let mut state = self.state.lock();
        match &verdict {
            Ok(_) => {
                state.failures = 0;
                state.open_until = None;
            }
            Err(_) => {
                state.failures += 1;
                if state.failures >= self.breaker_failures {
                    state.open_until = Some(Instant::now() + self.breaker_cooldown);
                }
            }
        }
        drop(state);
        let verdict = verdict.unwrap_or_else(Verdict::Skipped);
        super::metrics::moderation(match &verdict {
            Verdict::Passed => "passed",
            Verdict::Flagged(_) => "flagged",
            Verdict::Skipped(_) => "skipped",
        });
        verdict
    }

    /// `None` when a check may be made now, else why not (quota, open circuit).
    fn admit(&self) -> Option<&'static str> {
        let now = Instant::now();
        let mut state = self.state.lock();
        if let Some(until) = state.open_until {
            if now < until {
                return Some("circuit_open");
            }
            // Half open: this check decides.
            state.open_until = None;
            state.failures = self.breaker_failures.saturating_sub(1);
        }
        if now.duration_since(state.minute) >= Duration::from_secs(60) {
            state.minute = now;
            state.used = 0;
        }
        if state.used >= self.rpm {
            return Some("quota");
        }
        state.used += 1;
        None
    }

    async fn ask(&self, message: &str) -> std::result::Result<Verdict, &'static str> {
        let body = serde_json::json!({"model": self.model, "input": message});
        let body = serde_json::to_vec(&body).map_err(|_| "error")?;
        let mut headers = Vec::new();
        if !self.api_key.is_empty() {
            headers.push(("authorization", format!("Bearer {}", self.api_key.expose())));
        }
        let request = HttpRequest {
            url: self.url.clone(),
            headers,
            body,
            timeout: self.timeout,
        };
        let response = match self.http.post(request).await {
            Ok(response) => response,
            Err(crate::providers::transport::TransportError::Timeout) => return Err("timeout"),
            Err(_) => return Err("error"),
        };
        if !response.is_success() {
            return Err("error");
        }
        let bytes = response.bytes().await.map_err(|_| "error")?;
        let parsed: Response = serde_json::from_slice(&bytes).map_err(|_| "error")?;
        let findings: Vec<Finding> = parsed
            .results
            .iter()
            .flat_map(|r| {
                r.categories
                    .iter()
                    .filter(|(_, flagged)| **flagged)
                    .map(|(category, _)| Finding {
                        category: category.clone(),
                        score: format!(
                            "{:.3}",
                            r.category_scores.get(category).copied().unwrap_or(1.0)
                        ),
                        source: FlagSource::Moderation,
                    })
            })
            .collect();
        Ok(if findings.is_empty() {
            Verdict::Passed
        } else {
            Verdict::Flagged(findings)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::transport::{HttpResponse, TransportError};
    use futures::future::BoxFuture;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A moderation endpoint that is down, counting the calls it gets.
    struct Down(Arc<AtomicU32>);

    impl HttpTransport for Down {
        fn post(
            &self,
            _: HttpRequest,
        ) -> BoxFuture<'static, std::result::Result<HttpResponse, TransportError>> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Box::pin(async { Err(TransportError::Failed("connection refused".into())) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_open_the_circuit_until_the_cooldown_ends() {
        let calls = Arc::new(AtomicU32::new(0));
        let transport: MakeTransport = {
            let calls = calls.clone();
            Arc::new(move |_| Ok(Arc::new(Down(calls.clone())) as Arc<dyn HttpTransport>))
        };
        let settings = SafetySettings {
            moderation: ModerationKind::Openai,
            moderation_breaker_failures: std::num::NonZeroU32::new(2).unwrap(),
            moderation_breaker_cooldown: Duration::from_secs(30),
            ..SafetySettings::default()
        };
        let moderator = Moderator::from_settings(&settings, &transport)
            .unwrap()
            .unwrap();
        assert_eq!(moderator.check("a").await, Verdict::Skipped("error"));
        assert_eq!(moderator.check("b").await, Verdict::Skipped("error"));
        assert_eq!(moderator.check("c").await, Verdict::Skipped("circuit_open"));
        assert_eq!(calls.load(Ordering::Relaxed), 2, "no call while open");
        tokio::time::advance(Duration::from_secs(31)).await;
        // Half open: one call, which fails and opens the circuit again at once.
        assert_eq!(moderator.check("d").await, Verdict::Skipped("error"));
        assert_eq!(moderator.check("e").await, Verdict::Skipped("circuit_open"));
        assert_eq!(calls.load(Ordering::Relaxed), 3);
    }
}
