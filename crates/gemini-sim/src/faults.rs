//! Fault injection: one roll per generate request decides whether (and how) it fails.

use crate::config::FaultConfig;
use rand::RngExt;

/// A fault the simulator injects instead of (or in the middle of) a normal answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 500 INTERNAL.
    Internal,
    /// 503 UNAVAILABLE (model overloaded).
    Unavailable,
    /// 504 DEADLINE_EXCEEDED.
    DeadlineExceeded,
    /// No response until the client goes away (or the hang bound passes).
    Hang,
    /// A stream closed after some chunks, without a finish reason.
    StreamCut,
    /// 429 RESOURCE_EXHAUSTED with a RetryInfo, answered at once.
    QuotaExhausted,
}

/// Rolls the dice. Rates are taken in the order 500, 503, 504, hang, stream cut, 429 on one uniform
/// draw, so they add up (and later ones are squeezed out if the sum passes 1). `stream_cut` only
/// applies when `streaming` is true; for other requests its share answers normally.
pub fn roll(faults: &FaultConfig, streaming: bool) -> Option<Fault> {
    if !faults.any() {
        return None;
    }
    let draw: f64 = rand::rng().random();
    let mut threshold = 0.0;
    for (rate, fault) in [
        (faults.error_500, Fault::Internal),
        (faults.error_503, Fault::Unavailable),
        (faults.error_504, Fault::DeadlineExceeded),
        (faults.hang, Fault::Hang),
        (faults.stream_cut, Fault::StreamCut),
        (faults.error_429, Fault::QuotaExhausted),
    ] {
        threshold += rate;
        if draw < threshold {
            if fault == Fault::StreamCut && !streaming {
                return None;
            }
            return Some(fault);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_respected() {
        let faults = FaultConfig {
            error_503: 0.25,
            stream_cut: 1.0,
            ..FaultConfig::default()
        };
        let mut unavailable = 0;
        let mut cut = 0;
        for _ in 0..10_000 {
            match roll(&faults, true) {
                Some(Fault::Unavailable) => unavailable += 1,
                Some(Fault::StreamCut) => cut += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!((2200..2800).contains(&unavailable), "{unavailable}");
        assert_eq!(unavailable + cut, 10_000);
        assert_eq!(roll(&FaultConfig::default(), true), None);
        let only_cut = FaultConfig {
            stream_cut: 1.0,
            ..FaultConfig::default()
        };
        assert_eq!(roll(&only_cut, false), None);
    }
}
