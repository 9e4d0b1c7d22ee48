//! How long a model call takes now: the one estimate behind the quota gate (is a future quota
//! slot still worth reserving?) and the concurrency bound (how many calls must be in flight to
//! use the quota?).
//!
//! It is a time-weighted mean: every sample's weight halves each `half_life`, so the estimate
//! follows recent calls whatever their rate, and a sample from ten minutes ago no longer rules
//! now. It is blended with a prior worth one sample, chosen by the caller, so one odd call (or a
//! long silence) cannot pin it. Failures count too: a call that failed or timed out after `t`
//! says an answer takes at least `t`. Every sample, and so the estimate, is capped (at a fraction
//! of the request deadline), so no single slow call can make the estimate larger than a request
//! could ever wait.

use parking_lot::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The prior counts as much as this many samples.
const PRIOR_WEIGHT: f64 = 1.0;

/// The recent typical model-call latency; see the module docs.
#[derive(Debug)]
pub struct LatencyEstimate {
    half_life: Duration,
    cap: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Sum of the samples' decayed weights.
    weight: f64,
    /// Sum of decayed weight x sample, in milliseconds.
    weighted_ms: f64,
    /// When the sums were last decayed.
    at: Instant,
}

impl State {
    fn decay_to(&mut self, now: Instant, half_life: Duration) {
        let elapsed = now.saturating_duration_since(self.at);
        if elapsed.is_zero() {
            return;
        }
        let factor = if half_life.is_zero() {
            0.0
        } else {
            0.5_f64.powf(elapsed.as_secs_f64() / half_life.as_secs_f64())
        };
        self.weight *= factor;
        self.weighted_ms *= factor;
        self.at = now;
    }

    fn mean_ms(&self, prior_ms: f64) -> f64 {
        (self.weighted_ms + PRIOR_WEIGHT * prior_ms) / (self.weight + PRIOR_WEIGHT)
    }
}

impl LatencyEstimate {
    /// An estimate with no samples yet, whose samples lose half their weight every `half_life`
    /// and which never exceeds `cap`.
    pub fn new(half_life: Duration, cap: Duration) -> LatencyEstimate {
        LatencyEstimate {
            half_life,
            cap,
            state: Mutex::new(State {
                weight: 0.0,
                weighted_ms: 0.0,
                at: Instant::now(),
            }),
        }
    }

    /// The largest value a sample or the estimate can take.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// A call answered after `took`.
    pub fn record_success(&self, took: Duration) {
        self.add(took.min(self.cap));
    }

    /// A call that failed or timed out after `waited`: the answer would have taken at least that
    /// long, and, for all we know, as long as calls typically take now.
    pub fn record_failure(&self, waited: Duration) {
        let now = Instant::now();
        let mut state = self.state.lock();
        state.decay_to(now, self.half_life);
        let waited_ms = waited.min(self.cap).as_secs_f64() * 1000.0;
        let typical_ms = if state.weight > 0.0 {
            state.weighted_ms / state.weight
        } else {
            waited_ms
        };
        let sample_ms = waited_ms.max(typical_ms);
        state.weight += 1.0;
        state.weighted_ms += sample_ms;
    }

    fn add(&self, sample: Duration) {
        let now = Instant::now();
        let mut state = self.state.lock();
        state.decay_to(now, self.half_life);
        state.weight += 1.0;
        state.weighted_ms += sample.as_secs_f64() * 1000.0;
    }

    /// The estimate now, with `prior` standing in for what recent samples do not tell (with no
    /// recent sample it is `prior`); never above the cap.
    pub fn estimate(&self, prior: Duration) -> Duration {
        let now = Instant::now();
        let prior_ms = prior.min(self.cap).as_secs_f64() * 1000.0;
        let mean_ms = {
            let mut state = self.state.lock();
            state.decay_to(now, self.half_life);
            state.mean_ms(prior_ms)
        };
        Duration::from_secs_f64(mean_ms.max(0.0) / 1000.0).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_samples_the_estimate_is_the_prior() {
        let latency = LatencyEstimate::new(30 * S, 15 * S);
        assert_eq!(latency.estimate(Duration::ZERO), Duration::ZERO);
        assert_eq!(latency.estimate(3 * S), 3 * S);
        // The prior is capped like everything else.
        assert_eq!(latency.estimate(60 * S), 15 * S);
    }

    #[tokio::test(start_paused = true)]
    async fn one_slow_call_moves_the_estimate_but_does_not_pin_it() {
        let latency = LatencyEstimate::new(30 * S, 15 * S);
        latency.record_success(16 * S);
        // Capped at 15 s, blended with a zero prior worth one sample.
        assert!((secs(latency.estimate(Duration::ZERO)) - 7.5).abs() < 0.01);
        // Fast calls after it bring it down, without waiting for time to pass.
        for _ in 0..20 {
            latency.record_success(Duration::from_millis(100));
        }
        assert!(latency.estimate(Duration::ZERO) < Duration::from_millis(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn old_samples_fade_back_to_the_prior() {
        let latency = LatencyEstimate::new(30 * S, 15 * S);
        for _ in 0..1000 {
            latency.record_success(12 * S);
        }
        assert!((secs(latency.estimate(Duration::ZERO)) - 12.0).abs() < 0.1);
        tokio::time::advance(60 * S).await;
        // Two half-lives later: 1000 samples weigh 250, still far more than the prior.
        assert!((secs(latency.estimate(Duration::ZERO)) - 12.0).abs() < 0.1);
        tokio::time::advance(600 * S).await;
        // Ten minutes of silence: the old calls no longer rule.
        assert!(latency.estimate(Duration::ZERO) < Duration::from_millis(100));
        assert!(latency.estimate(15 * S) > 14 * S);
    }

    #[tokio::test(start_paused = true)]
    async fn recent_samples_outweigh_older_ones() {
        let latency = LatencyEstimate::new(30 * S, 15 * S);
        for _ in 0..100 {
            latency.record_success(10 * S);
        }
        tokio::time::advance(120 * S).await;
        for _ in 0..100 {
            latency.record_success(2 * S);
        }
        // The 10 s calls are four half-lives old: weight 100/16 against 100.
        let now = secs(latency.estimate(Duration::ZERO));
        assert!(now > 2.0 && now < 3.0, "{now}");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_and_timeouts_count_as_at_least_the_time_waited() {
        let latency = LatencyEstimate::new(30 * S, 15 * S);
        for _ in 0..10 {
            latency.record_success(2 * S);
        }
        // An instant 503 says nothing about how long an answer takes: the estimate holds.
        for _ in 0..50 {
            latency.record_failure(Duration::from_millis(5));
        }
        assert!((secs(latency.estimate(Duration::ZERO)) - 2.0).abs() < 0.1);
        // Timeouts at 12 s raise it: the answers take at least that long.
        for _ in 0..50 {
            latency.record_failure(12 * S);
        }
        assert!(latency.estimate(Duration::ZERO) > 6 * S);
        // A timeout longer than the cap counts as the cap.
        for _ in 0..1000 {
            latency.record_failure(60 * S);
        }
        let capped = latency.estimate(Duration::ZERO);
        assert!(capped > 14 * S && capped <= 15 * S, "{capped:?}");
    }
}
