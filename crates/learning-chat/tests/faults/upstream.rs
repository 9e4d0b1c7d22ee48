//! Scenarios 1 and 2: one server, no Redis, and an upstream that turns slow or refuses every
//! call for a while.

use crate::harness::{print_row, Phases};
use crate::{FAULT, HEALTHY_LATENCY_MS, LOAD_RATE, SLOW_FAULT, SLOW_LATENCY_MS};
use serde_json::json;
use std::time::Duration;

/// Scenario 1: one server, no Redis; gemini-sim's latency 200 ms -> 20 s for 25 s -> 200 ms.
async fn slow_upstream(deadline_secs: u64, scenario: &str) {
    // Requests sent in the slow phase may take up to the deadline to end; the canary watches
    // until they have all drained, and the steady load runs from the recovery bound on.
    let watch = Duration::from_secs(deadline_secs.min(SLOW_LATENCY_MS / 1000) + 4);
    let run = Phases::run(
        &[(
            "LEARNING_CHAT_SERVER__REQUEST_TIMEOUT_MS",
            (deadline_secs * 1000).to_string(),
        )],
        json!({"latency": {"kind": "fixed", "ms": SLOW_LATENCY_MS}}),
        json!({"latency": {"kind": "fixed", "ms": HEALTHY_LATENCY_MS}}),
        SLOW_FAULT,
        watch,
    )
    .await;
    let (distinct, failed) = (run.distinct(), run.failed());
    print_row(
        scenario,
        &format!("deadline {deadline_secs} s, {LOAD_RATE}/s load + canary"),
        distinct,
        &failed,
        &run.upstream,
        run.recovered(),
    );

    assert!(run.warm.requests > 0 && run.during.requests > 0 && run.after.requests > 0);
    assert!(
        run.during.failures_except(&["503", "504"]).is_empty(),
        "while the upstream is slow only 503/504 are allowed: {failed}"
    );
    run.assert_recovered();
    assert_eq!(
        run.upstream.rate_limited, 0,
        "the quota is the service's to keep"
    );
    assert!(
        run.upstream.requests <= distinct,
        "at most one upstream call per distinct question: {} calls, {distinct} questions",
        run.upstream.requests
    );
}

#[tokio::test]
async fn slow_upstream_with_a_10s_deadline_recovers_within_2s() {
    slow_upstream(10, "1a. latency 200 ms -> 20 s (25 s) -> 200 ms").await;
}

#[tokio::test]
async fn slow_upstream_with_the_default_30s_deadline_recovers_within_2s() {
    slow_upstream(30, "1b. latency 200 ms -> 20 s (25 s) -> 200 ms").await;
}

/// Scenario 2: one server; gemini-sim answers every call 429 (RetryInfo 10 s) for 20 s.
#[tokio::test]
async fn upstream_429s_are_honoured_not_hammered_and_recovery_is_within_2s() {
    const RETRY_DELAY: Duration = Duration::from_secs(10);
    // Requests refused in the fault wait out their RetryInfo (up to 10 s + 10% jitter).
    let watch = RETRY_DELAY + Duration::from_secs(4);
    let run = Phases::run(
        &[],
        json!({"faults": {
            "error_429": 1.0,
            "error_429_retry_delay_ms": RETRY_DELAY.as_millis() as u64,
        }}),
        json!({"faults": {"error_429": 0.0}}),
        FAULT,
        watch,
    )
    .await;
    assert_eq!(
        run.fault_config["faults"]["error_429"], 1.0,
        "this gemini-sim has no 429 fault: rebuild it (cargo build -p gemini-sim)"
    );
    let (before, in_fault) = (&run.before, &run.in_fault);

    // What honouring RetryInfo allows: a question first asked at t may be sent again only
    // RETRY_DELAY after each refusal, so within the fault it costs 1 + (fault end - t) / delay
    // calls at most. Load tester questions leave on a fixed schedule from the fault's start;
    // the canary's were recorded. Up to one second of warm-up load may straddle the switch.
    // The fault lasted as long as it really did: on a loaded machine switching it off may come
    // later than planned, and the calls of that extra time are allowed too.
    let lasted = run.fault_end.saturating_duration_since(run.fault_start);
    let retries_allowed = |sent_after_start: Duration| {
        let left = lasted.saturating_sub(sent_after_start) + Duration::from_millis(500);
        1 + (left.as_millis() / RETRY_DELAY.as_millis()) as u64
    };
    let scheduled = (LOAD_RATE * FAULT.as_secs_f64()).round() as u64;
    let mut bound: u64 = (0..scheduled)
        .map(|i| retries_allowed(Duration::from_secs_f64(i as f64 / LOAD_RATE)))
        .sum();
    bound += run
        .canary_during
        .iter()
        .map(|p| retries_allowed(p.sent.saturating_duration_since(run.fault_start)))
        .sum::<u64>();
    bound += LOAD_RATE.ceil() as u64 * retries_allowed(Duration::ZERO);
    let refused_in_fault = in_fault.rate_limited - before.rate_limited;
    let questions_in_fault = run.during.requests + run.canary_during.len() as u64;

    let failed = run.failed();
    eprintln!(
        "429 fault: {questions_in_fault} questions asked in the fault, {refused_in_fault} upstream \
         429s in it (RetryInfo bound {bound}); {} upstream calls in it",
        in_fault.requests - before.requests
    );
    print_row(
        "2. every call 429 + RetryInfo 10 s (20 s)",
        &format!("default 30 s deadline, {LOAD_RATE}/s load + canary"),
        run.distinct(),
        &failed,
        &run.upstream,
        run.recovered(),
    );

    assert!(
        run.during.failures_except(&["503"]).is_empty(),
        "while the upstream refuses only 503 (with Retry-After) is allowed: {failed}"
    );
    assert!(refused_in_fault > 0, "the fault was in force: {in_fault:?}");
    assert!(
        refused_in_fault <= bound,
        "{refused_in_fault} upstream 429s in a 20 s fault for {questions_in_fault} questions: \
         RetryInfo (10 s) allows at most {bound}"
    );
    run.assert_recovered();
    assert_eq!(
        run.upstream.rate_limited, refused_in_fault,
        "no 429 outside the injected fault"
    );
}
