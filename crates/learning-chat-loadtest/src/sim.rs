//! Reads gemini-sim's counters (`GET /stats`, `POST /stats/reset`) to report upstream calls.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The part of gemini-sim's `/stats` the report uses (other fields are ignored).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpstreamStats {
    /// Calls that reached the model routes.
    pub requests: u64,
    /// Complete 2xx answers.
    pub ok: u64,
    /// 429s.
    pub rate_limited: u64,
    /// Other non-2xx.
    pub errors: u64,
    /// Most requests in flight at once since the reset.
    pub in_flight_peak: u64,
    /// `streamGenerateContent` calls among `requests`.
    pub streams: u64,
    /// Streams the simulator cut mid-way on purpose (fault injection).
    pub stream_cut: u64,
    /// Calls whose client (the service) went away before the answer was complete.
    pub cancelled: u64,
    /// Input tokens answered.
    pub prompt_tokens: u64,
    /// Answer tokens sent.
    pub output_tokens: u64,
}

/// A client for one simulator.
#[derive(Clone, Debug)]
pub struct SimClient {
    base: String,
    http: reqwest::Client,
}

impl SimClient {
    /// A client for the simulator at `base` (e.g. `http://127.0.0.1:8100`).
    pub fn new(base: &str) -> anyhow::Result<SimClient> {
        let http = crate::client_builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(SimClient {
            base: base.trim_end_matches('/').to_owned(),
            http,
        })
    }

    /// A client for the simulator at `url`, when one is given, with its counters zeroed so the
    /// report shows this run's calls only.
    pub async fn reset_if_given(url: Option<&str>) -> anyhow::Result<Option<SimClient>> {
        let Some(url) = url else {
            return Ok(None);
        };
        let sim = SimClient::new(url)?;
        sim.reset()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reset gemini-sim's stats at {url}: {e}"))?;
        Ok(Some(sim))
    }

    /// Zeroes the simulator's counters, so the report shows this run's calls only.
    pub async fn reset(&self) -> anyhow::Result<()> {
        self.http
            .post(format!("{}/stats/reset", self.base))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// The counters now.
    pub async fn stats(&self) -> anyhow::Result<UpstreamStats> {
        Ok(self
            .http
            .get(format!("{}/stats", self.base))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}
