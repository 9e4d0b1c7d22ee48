//! The capacity planner reproduces the usual hand arithmetic of sizing (monthly cost, each
//! server's share of the quota, Little's law for calls in flight), and its CLI prints it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

use learning_chat::plan::{
    class_monthly_cost, parse_chain_model, plan, ChainModel, PlanInput, Price,
};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6 * b.abs().max(1.0)
}

#[test]
fn seed_cost_estimate_300_000_requests_300_dollars() {
    // "1000 users x 10 requests/day = 10,000 requests/day; 300,000 requests/month;
    //  at $0.001/request = $300/month"
    let result = plan(&PlanInput::seed()).unwrap();
    assert!(close(result.requests_per_day, 10_000.0));
    assert!(close(result.requests_per_month, 300_000.0));
    assert!(close(result.upstream_requests_per_month, 300_000.0));
    assert!(close(result.monthly_upstream_cost, 300.0));
}

#[test]
fn seed_semaphore_arithmetic_littles_law() {
    // "If you have 1000 RPM limit and 5 servers: each server can do ~200 requests/minute =
    //  ~3.3 requests/second. With 2.8s per request, you can handle ~10-15 concurrent per server"
    let input = PlanInput {
        peak_rpm: Some(1000.0),
        servers: Some(5),
        ..PlanInput::seed()
    };
    let result = plan(&input).unwrap();
    assert!(result.quota_fits);
    assert!(close(result.quota_utilisation, 1.0));
    assert!(close(result.per_server_upstream_rpm, 200.0));
    assert!(close(result.per_server_upstream_rpm / 60.0, 10.0 / 3.0));
    // 3.33 calls/s x 2.8 s = 9.33 in flight per server; 46.7 across the fleet.
    assert!(close(result.per_server_upstream_in_flight, 28.0 / 3.0));
    assert!(close(result.upstream_in_flight, 140.0 / 3.0));
    // One server's concurrency bound (100) holds all 46.7: 5 servers are not needed for it.
    assert_eq!(result.servers_for_concurrency, 1);
    assert_eq!(result.servers_needed, 1);
    assert_eq!(result.servers, 5);
    // 5 servers x $30 + $70 shared: inside the usual $100-200 (servers) + $40-100 (Redis, load
    // balancer) estimate for such a fleet.
    assert!(close(result.monthly_infrastructure_cost, 220.0));
    assert!(close(result.monthly_total_cost, 520.0));
}

#[test]
fn peak_from_active_users_and_the_quota_check() {
    // 1000 active learners thinking 10 s and waiting 2.8 s offer 1000 / 12.8 = 78.1 req/s,
    // 4687.5 RPM: far above a 1000 RPM quota without the cache.
    let result = plan(&PlanInput::seed()).unwrap();
    assert!(close(result.peak_rps, 1000.0 / 12.8));
    assert!(close(result.upstream_rpm_needed, 60_000.0 / 12.8));
    assert!(!result.quota_fits);
    assert!(close(
        result.min_cache_hit_ratio_for_quota,
        1.0 - 1000.0 / 4687.5
    ));
    // What is sent is capped by the quota: 1000 RPM.
    assert!(close(result.upstream_rps, 1000.0 / 60.0));

    // With a 50% hit ratio the answer is faster and half is upstream.
    let half = plan(&PlanInput {
        cache_hit_ratio: 0.5,
        ..PlanInput::seed()
    })
    .unwrap();
    assert!(close(half.peak_rps, 1000.0 / 11.4));
    assert!(close(half.upstream_rpm_needed, 0.5 * 60_000.0 / 11.4));
    assert!(close(half.monthly_upstream_cost, 150.0));

    let unlimited = plan(&PlanInput {
        rpm_quota: 0.0,
        ..PlanInput::seed()
    })
    .unwrap();
    assert!(unlimited.quota_fits);
    assert!(close(unlimited.upstream_in_flight, 1000.0 / 12.8 * 2.8));
}

#[test]
fn servers_scale_with_load_and_price_per_token() {
    let result = plan(&PlanInput {
        users: 100_000.0,
        peak_concurrent_users: 100_000.0,
        rpm_quota: 0.0,
        server_capacity_rps: 1000.0,
        price: Price::PerThousandTokens {
            usd: 0.002,
            tokens_per_request: 500.0,
        },
        ..PlanInput::seed()
    })
    .unwrap();
    // 7812.5 req/s over 1000 x 0.7 per server = 11.2 -> 12; in flight 21,875 / 70 = 312.5 -> 313.
    assert_eq!(result.servers_for_throughput, 12);
    assert_eq!(result.servers_for_concurrency, 313);
    assert_eq!(result.servers_needed, 313);
    assert!(close(result.monthly_upstream_cost, 30_000_000.0 * 0.001));
}

#[test]
fn tokens_per_conversation_grow_the_bill() {
    let priced = |turns: f64, max_history_tokens: f64| {
        plan(&PlanInput {
            price: Price::PerThousandTokens {
                usd: 0.002,
                tokens_per_request: 500.0,
            },
            turns_per_conversation: turns,
            max_history_tokens,
            ..PlanInput::seed()
        })
        .unwrap()
    };
    let single = priced(1.0, 8000.0);
    assert_eq!(single.history_tokens_per_request, 0.0);
    assert!(close(single.price_per_request, 0.001));
    // 4 questions: 0, 500, 1000 and 1500 history tokens, 750 on average.
    let four = priced(4.0, 8000.0);
    assert!(close(four.history_tokens_per_request, 750.0));
    assert!(close(four.price_per_request, 0.002 * 1250.0 / 1000.0));
    assert!(close(
        four.monthly_upstream_cost,
        single.monthly_upstream_cost * 1250.0 / 500.0
    ));
    // The history bound caps what each follow-up carries: 0, 500, 800, 800.
    let capped = priced(4.0, 800.0);
    assert!(close(capped.history_tokens_per_request, 525.0));
    // A per-request price does not depend on what is sent.
    let per_request = plan(&PlanInput {
        turns_per_conversation: 8.0,
        ..PlanInput::seed()
    })
    .unwrap();
    assert_eq!(per_request.history_tokens_per_request, 0.0);
    assert!(close(per_request.monthly_upstream_cost, 300.0));
    assert!(plan(&PlanInput {
        turns_per_conversation: 0.5,
        ..PlanInput::seed()
    })
    .is_err());
}

#[test]
fn invalid_inputs_are_rejected() {
    for bad in [
        PlanInput {
            cache_hit_ratio: 1.5,
            ..PlanInput::seed()
        },
        PlanInput {
            users: -1.0,
            ..PlanInput::seed()
        },
        PlanInput {
            upstream_latency_secs: f64::NAN,
            ..PlanInput::seed()
        },
        PlanInput {
            server_capacity_rps: 0.0,
            ..PlanInput::seed()
        },
        PlanInput {
            peak_concurrent_users: 2000.0,
            ..PlanInput::seed()
        },
    ] {
        assert!(plan(&bad).is_err(), "{bad:?}");
    }
}

#[test]
fn the_cli_prints_the_table() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_learning-chat"))
        .args([
            "plan",
            "--users",
            "1000",
            "--requests-per-user-per-day",
            "10",
            "--price-per-request",
            "0.001",
            "--peak-rpm",
            "1000",
            "--servers",
            "5",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let table = String::from_utf8(output.stdout).unwrap();
    for expected in [
        "requests per month",
        "300,000",
        "$300",
        "9.33",
        "fits the 1,000 RPM quota (100% of it)",
    ] {
        assert!(
            table.contains(expected),
            "{expected:?} missing from:\n{table}"
        );
    }
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_learning-chat"))
        .args(["plan", "--cache-hit-ratio", "2"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let json = std::process::Command::new(env!("CARGO_BIN_EXE_learning-chat"))
        .args(["plan", "--json"])
        .output()
        .unwrap();
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["plan"]["requests_per_month"], 300_000.0);
}

#[test]
fn a_class_costs_its_daily_tokens_at_the_price() {
    let mut input = PlanInput::seed();
    input.price = Price::PerThousandTokens {
        usd: 0.002,
        tokens_per_request: 500.0,
    };
    // 100k tokens a day x 30 days x $0.002 / 1k tokens = $6 a month.
    assert!((class_monthly_cost(&input, 100_000.0, 500.0) - 6.0).abs() < 1e-9);
    // $0.001 a request of 500 tokens: the same 100k tokens are 200 requests a day, $6 a month.
    input.price = Price::PerRequest(0.001);
    assert!((class_monthly_cost(&input, 100_000.0, 500.0) - 6.0).abs() < 1e-9);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_learning-chat"))
        .args(["plan", "--class-tokens-per-day", "100000"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("class (one API key)"), "{text}");
    assert!(text.contains("$6.00 a month"), "{text}");
}

#[test]
fn several_keys_multiply_the_quota_and_fallbacks_blend_the_price() {
    // 3,000 RPM offered at the peak against 1,000 RPM per key: one key is too few, three fit.
    let input = PlanInput {
        peak_rpm: Some(2_500.0),
        ..PlanInput::seed()
    };
    assert!(!plan(&input).unwrap().quota_fits);
    let three = plan(&PlanInput {
        api_keys: 3.0,
        ..input.clone()
    })
    .unwrap();
    assert!(three.quota_fits);
    assert_eq!(three.effective_rpm_quota, 3_000.0);
    // A quarter of the answers from a fallback at a tenth of the price.
    let blended = plan(&PlanInput {
        fallback_share: 0.25,
        fallback_price: Some(Price::PerRequest(0.0001)),
        ..PlanInput::seed()
    })
    .unwrap();
    assert!((blended.blended_price_per_request - (0.75 * 0.001 + 0.25 * 0.0001)).abs() < 1e-12);
    assert!((blended.monthly_upstream_cost - 300_000.0 * 0.000775).abs() < 1e-6);
    assert_eq!(blended.fallback_requests_per_month, 75_000.0);
    assert!(plan(&PlanInput {
        api_keys: 0.0,
        ..PlanInput::seed()
    })
    .is_err());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_learning-chat"))
        .args([
            "plan",
            "--peak-rpm",
            "2500",
            "--api-keys",
            "3",
            "--fallback-share",
            "0.25",
            "--fallback-price-per-request",
            "0.0001",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("3 keys x 1,000"), "{text}");
    assert!(text.contains("25% answered by the fallback"), "{text}");
}

#[test]
fn a_chain_with_per_model_quotas_spills_the_peak_over_and_prices_each_model() {
    // The seed's peak (4687.5 RPM needed) on Flash (1000 RPM, $0.001) then Flash-Lite (4000
    // RPM, $0.0004): Flash answers its 1000 RPM, Flash-Lite the other 3687.5.
    let input = PlanInput {
        chain: vec![
            parse_chain_model("gemini-2.5-flash=1000").unwrap(),
            parse_chain_model("gemini-2.5-flash-lite=4000:0.0004").unwrap(),
        ],
        ..PlanInput::seed()
    };
    let result = plan(&input).unwrap();
    assert!(result.quota_fits, "5000 RPM together");
    assert!(close(result.effective_rpm_quota, 5000.0));
    let [flash, lite] = &result.per_model[..] else {
        panic!("{:?}", result.per_model)
    };
    assert!(close(flash.peak_rpm, 1000.0));
    assert!(close(lite.peak_rpm, 3687.5));
    assert!(close(flash.share + lite.share, 1.0));
    assert!(close(flash.requests_per_month, 300_000.0 * 1000.0 / 4687.5));
    assert!(close(flash.monthly_cost, flash.requests_per_month * 0.001));
    assert!(close(lite.monthly_cost, lite.requests_per_month * 0.0004));
    assert!(close(
        result.monthly_upstream_cost,
        flash.monthly_cost + lite.monthly_cost
    ));
    // Every call the chain sends is in flight somewhere: 4687.5 RPM x 2.8 s.
    assert!(close(result.upstream_in_flight, 4687.5 / 60.0 * 2.8));
    // Below Flash's quota nothing spills over.
    let quiet = plan(&PlanInput {
        peak_rpm: Some(600.0),
        ..input.clone()
    })
    .unwrap();
    assert!(close(quiet.per_model[0].share, 1.0));
    assert!(close(quiet.per_model[1].requests_per_month, 0.0));
    // Without the chain the same peak EXCEEDS the primary's quota alone.
    assert!(!plan(&PlanInput::seed()).unwrap().quota_fits);
    assert_eq!(
        parse_chain_model("m=10:0.5").unwrap(),
        ChainModel {
            model: "m".to_owned(),
            rpm_quota: 10.0,
            price: Some(Price::PerRequest(0.5)),
        }
    );
    assert!(parse_chain_model("no-equals").is_err());
    assert!(parse_chain_model("m=lots").is_err());
}
