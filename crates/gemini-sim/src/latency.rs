//! Sampling of answer latencies.

use crate::config::Latency;
use rand::RngExt;
use rand_distr::{Distribution, LogNormal};
use std::time::Duration;

/// z-score of the 99th percentile of a standard normal distribution.
const Z_P99: f64 = 2.326_347_874;

/// Cap on any sampled latency, so a wide log-normal cannot produce an absurd hour-long sleep.
const MAX_SAMPLE_MS: f64 = 600_000.0;

/// Draws one latency. [`Latency::None`] and zero values return [`Duration::ZERO`] without touching
/// the random generator, so the zero-latency hot path stays cheap.
pub fn sample(latency: &Latency) -> Duration {
    match *latency {
        Latency::None => Duration::ZERO,
        Latency::Fixed { ms } => Duration::from_millis(ms),
        Latency::Uniform { min_ms, max_ms } => {
            if max_ms <= min_ms {
                Duration::from_millis(min_ms)
            } else {
                Duration::from_millis(rand::rng().random_range(min_ms..=max_ms))
            }
        }
        Latency::LogNormal { median_ms, p99_ms } => {
            if median_ms == 0 {
                return Duration::ZERO;
            }
            let mu = (median_ms as f64).ln();
            // p99 = exp(mu + sigma * z99)  =>  sigma = ln(p99 / median) / z99.
            let sigma = ((p99_ms.max(median_ms) as f64) / median_ms as f64).ln() / Z_P99;
            match LogNormal::new(mu, sigma) {
                Ok(dist) => {
                    let ms: f64 = dist.sample(&mut rand::rng());
                    Duration::from_secs_f64(ms.clamp(0.0, MAX_SAMPLE_MS) / 1000.0)
                }
                Err(_) => Duration::from_millis(median_ms),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_normal_hits_median_and_p99() {
        let latency = Latency::LogNormal {
            median_ms: 1000,
            p99_ms: 5000,
        };
        let mut samples: Vec<Duration> = (0..20_000).map(|_| sample(&latency)).collect();
        samples.sort();
        let median = samples[10_000].as_millis() as f64;
        let p99 = samples[19_800].as_millis() as f64;
        assert!((900.0..1100.0).contains(&median), "median {median}");
        assert!((4000.0..6200.0).contains(&p99), "p99 {p99}");
    }

    #[test]
    fn uniform_stays_in_bounds() {
        let latency = Latency::Uniform {
            min_ms: 10,
            max_ms: 20,
        };
        for _ in 0..1000 {
            let ms = sample(&latency).as_millis();
            assert!((10..=20).contains(&ms));
        }
        assert_eq!(sample(&Latency::None), Duration::ZERO);
    }
}
