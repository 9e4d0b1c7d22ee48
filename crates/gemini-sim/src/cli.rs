//! Command-line flags of the `gemini-sim` binary, turned into a [`SimConfig`].

use crate::config::{Latency, SimConfig};
use clap::{Parser, ValueEnum};
use std::net::SocketAddr;

/// Named starting points for the config; explicit flags override them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// Zero latency, no quotas, no faults.
    Default,
    /// A fixed 2.8 s per request, like a full model answer.
    Seed,
}

/// A faithful Gemini REST v1beta simulator (generateContent, streamGenerateContent, countTokens)
/// with latency, per-key quotas, fault injection and request statistics.
///
/// Control endpoints: GET /stats, GET /stats/timeline, POST /stats/reset, POST /quota/reset,
/// GET /config, POST /config (partial JSON merged over the current config).
#[derive(Debug, Parser)]
#[command(name = "gemini-sim", version)]
pub struct Cli {
    /// Address to listen on (port 0 picks a free port; the bound address is logged).
    #[arg(long, default_value = "127.0.0.1:8100", env = "GEMINI_SIM_BIND")]
    pub bind: SocketAddr,

    /// Starting config; the flags below override it.
    #[arg(long, value_enum, default_value = "default")]
    pub preset: Preset,

    /// Fixed latency of every answer, in ms (0: answer at once).
    #[arg(long, conflicts_with_all = ["latency_min_ms", "latency_median_ms"])]
    pub latency_ms: Option<u64>,

    /// Uniform latency: lower bound in ms (with --latency-max-ms).
    #[arg(
        long,
        requires = "latency_max_ms",
        conflicts_with = "latency_median_ms"
    )]
    pub latency_min_ms: Option<u64>,

    /// Uniform latency: upper bound in ms (with --latency-min-ms).
    #[arg(long, requires = "latency_min_ms")]
    pub latency_max_ms: Option<u64>,

    /// Log-normal latency: median in ms (with --latency-p99-ms).
    #[arg(long, requires = "latency_p99_ms")]
    pub latency_median_ms: Option<u64>,

    /// Log-normal latency: 99th percentile in ms (with --latency-median-ms).
    #[arg(long, requires = "latency_median_ms")]
    pub latency_p99_ms: Option<u64>,

    /// Streams: time to the first chunk in ms (default: a sample of the answer latency).
    #[arg(long)]
    pub first_chunk_ms: Option<u64>,

    /// Streams: delay between chunks in ms.
    #[arg(long)]
    pub chunk_delay_ms: Option<u64>,

    /// Streams: answer tokens per chunk.
    #[arg(long)]
    pub chunk_tokens: Option<u32>,

    /// Requests per minute per API key (sliding 60 s window; 0 = unlimited).
    #[arg(long)]
    pub rpm: Option<u64>,

    /// Input tokens per minute per API key (sliding 60 s window; 0 = unlimited).
    #[arg(long)]
    pub tpm: Option<u64>,

    /// Requests per day per API key (sliding 24 h window; 0 = unlimited).
    #[arg(long)]
    pub rpd: Option<u64>,

    /// Word 429s like the free tier (`-FreeTier` quota ids).
    #[arg(long)]
    pub free_tier: bool,

    /// Accepted API key (repeatable). Without any, every non-empty key is accepted.
    #[arg(long = "api-key")]
    pub api_keys: Vec<String>,

    /// Answer length in tokens (4 characters each).
    #[arg(long)]
    pub answer_tokens: Option<u32>,

    /// Thinking tokens reported by thinking models (0: none).
    #[arg(long)]
    pub thinking_tokens: Option<u32>,

    /// Prompts containing this text are blocked (empty: never).
    #[arg(long)]
    pub block_trigger: Option<String>,

    /// `promptFeedback.blockReason` of blocked prompts.
    #[arg(long)]
    pub block_reason: Option<String>,

    /// Prompts containing this text get a filtered answer: no text, `finishReason: SAFETY`
    /// (empty: never).
    #[arg(long)]
    pub safety_trigger: Option<String>,

    /// Prompts containing this text are answered but rated dangerous content `HIGH`
    /// (empty: never).
    #[arg(long)]
    pub harm_trigger: Option<String>,

    /// `/v1/moderations` inputs containing this text are flagged `self-harm` (empty: never).
    #[arg(long)]
    pub self_harm_trigger: Option<String>,

    /// Probability (0..1) of a 500 INTERNAL.
    #[arg(long = "fault-500")]
    pub fault_500: Option<f64>,

    /// Probability (0..1) of a 503 UNAVAILABLE (model overloaded).
    #[arg(long = "fault-503")]
    pub fault_503: Option<f64>,

    /// Probability (0..1) of a 504 DEADLINE_EXCEEDED.
    #[arg(long = "fault-504")]
    pub fault_504: Option<f64>,

    /// Probability (0..1) of a 429 RESOURCE_EXHAUSTED with RetryInfo, answered at once.
    #[arg(long = "fault-429")]
    pub fault_429: Option<f64>,

    /// `retryDelay` of the injected 429s, in ms (default 26000, as in the recorded body).
    #[arg(long = "fault-429-retry-delay-ms")]
    pub fault_429_retry_delay_ms: Option<u64>,

    /// Probability (0..1) that a stream is cut mid-way (connection closed, no finishReason).
    #[arg(long)]
    pub fault_stream_cut: Option<f64>,

    /// Probability (0..1) that no response comes until the client leaves (or --hang-max-ms).
    #[arg(long)]
    pub fault_hang: Option<f64>,

    /// Bound of a hang in ms; after it the request gets a 504.
    #[arg(long)]
    pub hang_max_ms: Option<u64>,

    /// Known models, comma-separated (others get 404).
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,

    /// Seconds between request-rate log lines.
    #[arg(long, default_value_t = 60)]
    pub log_every_s: u64,
}

impl Cli {
    /// The config these flags describe (validated).
    pub fn to_config(&self) -> Result<SimConfig, String> {
        let mut config = match self.preset {
            Preset::Default => SimConfig::default(),
            Preset::Seed => SimConfig::seed_preset(),
        };
        if let Some(ms) = self.latency_ms {
            config.latency = if ms == 0 {
                Latency::None
            } else {
                Latency::Fixed { ms }
            };
        }
        if let (Some(min_ms), Some(max_ms)) = (self.latency_min_ms, self.latency_max_ms) {
            config.latency = Latency::Uniform { min_ms, max_ms };
        }
        if let (Some(median_ms), Some(p99_ms)) = (self.latency_median_ms, self.latency_p99_ms) {
            config.latency = Latency::LogNormal { median_ms, p99_ms };
        }
        let stream = &mut config.stream;
        if self.first_chunk_ms.is_some() {
            stream.first_chunk_ms = self.first_chunk_ms;
        }
        set(&mut stream.chunk_delay_ms, self.chunk_delay_ms);
        set(&mut stream.chunk_tokens, self.chunk_tokens);
        set(&mut config.quota.rpm, self.rpm);
        set(&mut config.quota.tpm, self.tpm);
        set(&mut config.quota.rpd, self.rpd);
        config.quota.free_tier |= self.free_tier;
        if !self.api_keys.is_empty() {
            config.api_keys.clone_from(&self.api_keys);
        }
        set(&mut config.answer_tokens, self.answer_tokens);
        set(&mut config.thinking_tokens, self.thinking_tokens);
        set(&mut config.block_trigger, self.block_trigger.clone());
        set(&mut config.block_reason, self.block_reason.clone());
        set(&mut config.safety_trigger, self.safety_trigger.clone());
        set(&mut config.harm_trigger, self.harm_trigger.clone());
        set(
            &mut config.self_harm_trigger,
            self.self_harm_trigger.clone(),
        );
        set(&mut config.faults.error_500, self.fault_500);
        set(&mut config.faults.error_503, self.fault_503);
        set(&mut config.faults.error_504, self.fault_504);
        set(&mut config.faults.error_429, self.fault_429);
        set(
            &mut config.faults.error_429_retry_delay_ms,
            self.fault_429_retry_delay_ms,
        );
        set(&mut config.faults.stream_cut, self.fault_stream_cut);
        set(&mut config.faults.hang, self.fault_hang);
        set(&mut config.hang_max_ms, self.hang_max_ms);
        if !self.models.is_empty() {
            config.models.clone_from(&self.models);
        }
        config.validate()?;
        Ok(config)
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_build_the_config() {
        let cli = Cli::parse_from([
            "gemini-sim",
            "--preset",
            "seed",
            "--rpm",
            "1000",
            "--api-key",
            "a",
            "--api-key",
            "b",
            "--fault-503",
            "0.1",
            "--fault-429",
            "0.2",
            "--fault-429-retry-delay-ms",
            "5000",
            "--models",
            "m1,m2",
        ]);
        let config = cli.to_config().unwrap();
        assert_eq!(config.latency, Latency::Fixed { ms: 2800 });
        assert_eq!(config.quota.rpm, 1000);
        assert_eq!(config.api_keys, vec!["a", "b"]);
        assert_eq!(config.faults.error_503, 0.1);
        assert_eq!(config.faults.error_429, 0.2);
        assert_eq!(config.faults.error_429_retry_delay_ms, 5000);
        assert_eq!(config.models, vec!["m1", "m2"]);
        let cli = Cli::parse_from([
            "gemini-sim",
            "--latency-median-ms",
            "900",
            "--latency-p99-ms",
            "5000",
        ]);
        assert_eq!(
            cli.to_config().unwrap().latency,
            Latency::LogNormal {
                median_ms: 900,
                p99_ms: 5000
            }
        );
        let cli = Cli::parse_from(["gemini-sim", "--fault-hang", "3"]);
        assert!(cli.to_config().is_err());
    }
}
