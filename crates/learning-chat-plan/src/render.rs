//! The plan as a readable table.

use crate::{Plan, PlanInput, Price};
use std::fmt::Write as _;

/// The plan as a readable table.
pub fn render(input: &PlanInput, plan: &Plan) -> String {
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut row = |what: &str, value: String, note: String| {
        rows.push((what.to_owned(), value, note));
    };
    row(
        "requests per day",
        count(plan.requests_per_day),
        format!(
            "{} users x {} a day",
            count(input.users),
            num(input.requests_per_user_per_day)
        ),
    );
    row(
        "requests per month",
        count(plan.requests_per_month),
        format!("x {} days", num(input.days_per_month)),
    );
    row(
        "model requests per month",
        count(plan.upstream_requests_per_month),
        format!("cache hit ratio {:.0}%", input.cache_hit_ratio * 100.0),
    );
    let peak_note = match input.peak_rpm {
        Some(rpm) => format!("given: {} RPM", num(rpm)),
        None => format!(
            "{} active users / ({} s think + {} s answer)",
            count(input.peak_concurrent_users),
            num(input.think_time_secs),
            num((1.0 - input.cache_hit_ratio) * input.upstream_latency_secs)
        ),
    };
    row("peak requests/s", num(plan.peak_rps), peak_note);
    let quota_name = if !input.chain.is_empty() {
        format!(
            "{} RPM quota of the chain ({})",
            count(plan.effective_rpm_quota),
            plan.per_model
                .iter()
                .map(|m| format!("{} {}", m.model, count(m.rpm_quota)))
                .collect::<Vec<_>>()
                .join(" + ")
        )
    } else if input.api_keys > 1.0 {
        format!(
            "{} RPM quota ({} keys x {})",
            count(plan.effective_rpm_quota),
            num(input.api_keys),
            count(input.rpm_quota)
        )
    } else {
        format!("{} RPM quota", count(plan.effective_rpm_quota))
    };
    let quota = if plan.effective_rpm_quota == 0.0 {
        "unlimited quota".to_owned()
    } else if plan.quota_fits {
        format!(
            "fits the {quota_name} ({:.0}% of it)",
            plan.quota_utilisation * 100.0
        )
    } else {
        format!(
            "EXCEEDS the {quota_name} ({:.0}%): needs a cache hit ratio >= {:.0}%, more keys or a \
             larger quota; the excess waits or gets 503",
            plan.quota_utilisation * 100.0,
            plan.min_cache_hit_ratio_for_quota * 100.0
        )
    };
    row(
        "model RPM needed at peak",
        num(plan.upstream_rpm_needed),
        quota,
    );
    row(
        "model calls in flight",
        num(plan.upstream_in_flight),
        format!(
            "{} calls/s x {} s (Little's law)",
            num(plan.upstream_rps),
            num(input.upstream_latency_secs)
        ),
    );
    row(
        "servers needed",
        plan.servers_needed.to_string(),
        format!(
            "throughput: {} (at {} req/s each), model calls: {} (at {} each), {:.0}% utilisation",
            plan.servers_for_throughput,
            num(input.server_capacity_rps),
            plan.servers_for_concurrency,
            num(input.server_max_upstream_concurrency),
            input.target_utilisation * 100.0
        ),
    );
    let fleet_note = match input.servers {
        Some(n) if n < plan.servers_needed => {
            format!("fixed by --servers: {} too few", plan.servers_needed - n)
        }
        Some(_) => "fixed by --servers".to_owned(),
        None => "as needed".to_owned(),
    };
    row("servers", plan.servers.to_string(), fleet_note);
    row(
        "per server: requests/s",
        num(plan.per_server_rps),
        String::new(),
    );
    row(
        "per server: model RPM",
        num(plan.per_server_upstream_rpm),
        format!("{} calls/s", num(plan.per_server_upstream_rpm / 60.0)),
    );
    row(
        "per server: model calls in flight",
        num(plan.per_server_upstream_in_flight),
        format!(
            "concurrency limit {}",
            num(input.server_max_upstream_concurrency)
        ),
    );
    let history_note = match input.price {
        Price::PerRequest(_) => String::new(),
        Price::PerThousandTokens {
            tokens_per_request, ..
        } => format!(
            ", {} tokens + {} of history ({} questions per conversation)",
            num(tokens_per_request),
            num(plan.history_tokens_per_request),
            num(input.turns_per_conversation)
        ),
    };
    let fallback_note = if !plan.per_model.is_empty() {
        String::new()
    } else if input.fallback_share > 0.0 {
        format!(
            "; {:.0}% answered by the fallback at {} ({} blended)",
            input.fallback_share * 100.0,
            usd_precise(plan.fallback_price_per_request),
            usd_precise(plan.blended_price_per_request)
        )
    } else {
        String::new()
    };
    row(
        "monthly model cost",
        usd(plan.monthly_upstream_cost),
        format!(
            "{} per request{history_note}{fallback_note}",
            usd_precise(plan.price_per_request)
        ),
    );
    for model in &plan.per_model {
        row(
            &format!("  {}", model.model),
            usd(model.monthly_cost),
            format!(
                "{} calls a month ({:.0}%), {} RPM at peak of its {}, {} per request",
                count(model.requests_per_month),
                model.share * 100.0,
                num(model.peak_rpm),
                if model.rpm_quota == 0.0 {
                    "unlimited quota".to_owned()
                } else {
                    format!("{} RPM quota", count(model.rpm_quota))
                },
                usd_precise(model.price_per_request)
            ),
        );
    }
    row(
        "monthly infrastructure cost",
        usd(plan.monthly_infrastructure_cost),
        format!(
            "{} x {} per server{}",
            plan.servers,
            usd(input.server_monthly_cost),
            if plan.servers > 1 {
                format!(
                    " + {} shared (Redis, load balancer)",
                    usd(input.shared_monthly_cost)
                )
            } else {
                String::new()
            }
        ),
    );
    row("monthly total", usd(plan.monthly_total_cost), String::new());

    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (what, value, note) in rows {
        let _ = writeln!(out, "{what:<w0$}  {value:>w1$}  {note}");
    }
    out
}

/// A count with thousands separators, rounded.
pub(crate) fn count(x: f64) -> String {
    let n = x.round().max(0.0) as u64;
    let digits = n.to_string();
    // Groups of three from the right; the digits are ASCII so every chunk is valid UTF-8.
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|chunk| std::str::from_utf8(chunk).unwrap_or(""))
        .collect();
    groups.join(",")
}

/// A rate or ratio with sensible precision.
pub(crate) fn num(x: f64) -> String {
    if x >= 100.0 {
        count(x)
    } else if (x - x.round()).abs() < 1e-9 {
        format!("{}", x.round())
    } else {
        format!("{x:.2}")
    }
}

fn usd(x: f64) -> String {
    format!("${}", count(x))
}

fn usd_precise(x: f64) -> String {
    format!("${x:.4}")
}
