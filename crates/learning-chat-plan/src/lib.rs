//! Capacity and cost planning (`learning-chat plan`): the back-of-the-envelope arithmetic of sizing
//! the service (requests per month, cost, model calls per minute against the quota, Little's law
//! for the calls in flight) as one pure function over a struct, so it is tested; the CLI only
//! formats.

use serde::Serialize;

/// How the model is priced.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Price {
    /// USD per model request (default: $0.001, a typical paid-tier price).
    PerRequest(f64),
    /// USD per 1,000 tokens, with the tokens (input + output) of an average request.
    PerThousandTokens {
        /// USD per 1,000 tokens.
        usd: f64,
        /// Average tokens per request.
        tokens_per_request: f64,
    },
}

impl Price {
    /// USD per model request.
    pub fn per_request(&self) -> f64 {
        match *self {
            Price::PerRequest(usd) => usd,
            Price::PerThousandTokens {
                usd,
                tokens_per_request,
            } => usd * tokens_per_request / 1000.0,
        }
    }
}

/// One model of the agents' chain: its own quota and price. Questions spill over from a model
/// whose quota is used up to the next one with room, so at the peak each model takes what the
/// earlier ones left, up to its quota.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChainModel {
    /// The model id.
    pub model: String,
    /// Its requests-per-minute quota per API key; 0 = unlimited.
    pub rpm_quota: f64,
    /// Its price (default: the input's `price`).
    pub price: Option<Price>,
}

/// What the plan gives one model of the chain.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelPlan {
    /// The model id.
    pub model: String,
    /// Its quota over every key (0 = unlimited).
    pub rpm_quota: f64,
    /// Model calls per minute it answers at the peak.
    pub peak_rpm: f64,
    /// Its share of the model calls (the peak's split).
    pub share: f64,
    /// Model calls per month it answers (the peak's split of the month's calls: an upper bound
    /// on what the later models answer, as quieter hours leave the earlier ones room).
    pub requests_per_month: f64,
    /// USD per call, history included.
    pub price_per_request: f64,
    /// USD per month.
    pub monthly_cost: f64,
}

/// What the planner is told.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanInput {
    /// Learners using the service.
    pub users: f64,
    /// Questions each learner asks per day.
    pub requests_per_user_per_day: f64,
    /// Days in a month (default 30: a billing month).
    pub days_per_month: f64,
    /// Learners active at the busiest moment (defaults to every user).
    pub peak_concurrent_users: f64,
    /// Average think time of an active learner between answer and next question, in seconds
    /// (default 10: the reference load profile waits 5-15 s).
    pub think_time_secs: f64,
    /// Peak requests per minute offered to the service; when set it replaces the estimate from
    /// peak users and think time (for a load known as a rate, such as "1000 RPM").
    pub peak_rpm: Option<f64>,
    /// Fraction of questions answered from the cache (0 to 1; default 0, the worst case).
    pub cache_hit_ratio: f64,
    /// Time of one model call in seconds (default 2.8, a full model answer).
    pub upstream_latency_secs: f64,
    /// The model's requests-per-minute quota per API key; 0 = unlimited.
    pub rpm_quota: f64,
    /// API keys, each with its own `rpm_quota` (`gemini.api_keys`): the service spreads calls
    /// over them, so the quota is `rpm_quota x api_keys`.
    pub api_keys: f64,
    /// The model's price.
    pub price: Price,
    /// Fraction of model calls answered by the agent's fallback model (0 to 1): when the
    /// primary is overloaded or its circuit open.
    pub fallback_share: f64,
    /// The fallback model's price (default: the primary's).
    pub fallback_price: Option<Price>,
    /// Questions per conversation (1 = every question stands alone). Each follow-up is sent
    /// with the earlier questions and answers, so with a per-token price longer conversations
    /// cost more per question.
    pub turns_per_conversation: f64,
    /// `conversation.max_history_tokens`: the most history tokens sent with one follow-up.
    pub max_history_tokens: f64,
    /// Requests per second one server sustains (measured: bench/RESULTS.md).
    pub server_capacity_rps: f64,
    /// Model calls one server keeps in flight (`upstream.max_concurrency`).
    pub server_max_upstream_concurrency: f64,
    /// Fraction of a server's capacity to plan for (headroom for spikes; default 0.7, the HPA's
    /// CPU target).
    pub target_utilisation: f64,
    /// A fixed fleet size to evaluate (an existing fleet's cost and load); otherwise the fleet is
    /// what is needed.
    pub servers: Option<u32>,
    /// USD per server per month.
    pub server_monthly_cost: f64,
    /// USD per month for what a fleet of more than one server shares (Redis, load balancer).
    pub shared_monthly_cost: f64,
    /// The agents' chain with each model's own quota (`[models]`), primary first; empty: one
    /// model with `rpm_quota` and `price` (and `fallback_share` for a fallback). When given,
    /// it replaces those three: the quota is the chain's together and each model's share is
    /// what spill-over leaves it.
    pub chain: Vec<ChainModel>,
}

impl PlanInput {
    /// The reference situation, the planner's defaults: 1000 users x 10 requests a day at $0.001,
    /// 2.8 s calls, a 1000 RPM (paid-tier) quota.
    pub fn seed() -> PlanInput {
        PlanInput {
            users: 1000.0,
            requests_per_user_per_day: 10.0,
            days_per_month: 30.0,
            peak_concurrent_users: 1000.0,
            think_time_secs: 10.0,
            peak_rpm: None,
            cache_hit_ratio: 0.0,
            upstream_latency_secs: 2.8,
            rpm_quota: 1000.0,
            api_keys: 1.0,
            price: Price::PerRequest(0.001),
            fallback_share: 0.0,
            fallback_price: None,
            turns_per_conversation: 1.0,
            max_history_tokens: 8000.0,
            server_capacity_rps: DEFAULT_SERVER_CAPACITY_RPS,
            server_max_upstream_concurrency: 100.0,
            target_utilisation: 0.7,
            servers: None,
            server_monthly_cost: 30.0,
            shared_monthly_cost: 70.0,
            chain: Vec::new(),
        }
    }
}

/// Default requests/s of one server: a round figure below the cache-hit throughput measured on
/// a 2-core machine (bench/RESULTS.md, benchmark 3); pass your own measurement.
pub const DEFAULT_SERVER_CAPACITY_RPS: f64 = 5000.0;

/// What the planner works out.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    /// All requests per day.
    pub requests_per_day: f64,
    /// All requests per month.
    pub requests_per_month: f64,
    /// Requests per month that reach the model (cache misses).
    pub upstream_requests_per_month: f64,
    /// Peak requests per second offered to the service.
    pub peak_rps: f64,
    /// Peak model requests per minute needed (cache misses at the peak).
    pub upstream_rpm_needed: f64,
    /// True when the needed RPM fits the quota (always with an unlimited quota).
    pub quota_fits: bool,
    /// Needed RPM over the quota (0 with an unlimited quota).
    pub quota_utilisation: f64,
    /// The smallest cache hit ratio with which the peak fits the quota.
    pub min_cache_hit_ratio_for_quota: f64,
    /// Model calls per second actually sent at the peak (the quota caps them).
    pub upstream_rps: f64,
    /// Model calls in flight at the peak: upstream_rps x latency (Little's law).
    pub upstream_in_flight: f64,
    /// Servers needed for the request rate.
    pub servers_for_throughput: u32,
    /// Servers needed for the model calls in flight.
    pub servers_for_concurrency: u32,
    /// Servers needed: the larger of the two, at least 1.
    pub servers_needed: u32,
    /// The fleet evaluated: the fixed size when given, else `servers_needed`.
    pub servers: u32,
    /// Requests per second per server at the peak.
    pub per_server_rps: f64,
    /// Model requests per minute per server at the peak.
    pub per_server_upstream_rpm: f64,
    /// Model calls in flight per server at the peak (what `upstream.max_concurrency` must hold).
    pub per_server_upstream_in_flight: f64,
    /// History tokens sent with an average question: the k-th question of a conversation
    /// carries the k - 1 exchanges before it (about `tokens_per_request` each), up to
    /// `max_history_tokens`. 0 with a per-request price, where history costs nothing extra.
    pub history_tokens_per_request: f64,
    /// The quota all keys give together: `rpm_quota x api_keys` (0 = unlimited).
    pub effective_rpm_quota: f64,
    /// USD per model request, history included.
    pub price_per_request: f64,
    /// USD per request of the fallback model, history included.
    pub fallback_price_per_request: f64,
    /// Model requests per month answered by the fallback model.
    pub fallback_requests_per_month: f64,
    /// USD per model request over primary and fallback answers.
    pub blended_price_per_request: f64,
    /// USD per month for the model.
    pub monthly_upstream_cost: f64,
    /// USD per month for servers and shared infrastructure.
    pub monthly_infrastructure_cost: f64,
    /// Both.
    pub monthly_total_cost: f64,
    /// Each model of the chain (empty without one): its quota, calls and cost.
    pub per_model: Vec<ModelPlan>,
}

/// An input the arithmetic cannot use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid plan input: {0}")]
pub struct PlanError(pub String);

/// Works out the plan for `input`.
pub fn plan(input: &PlanInput) -> Result<Plan, PlanError> {
    validate(input)?;
    let miss = 1.0 - input.cache_hit_ratio;
    let requests_per_day = input.users * input.requests_per_user_per_day;
    let requests_per_month = requests_per_day * input.days_per_month;
    let upstream_requests_per_month = requests_per_month * miss;

    // A closed loop (each active learner waits for the answer, thinks, asks again) offers
    // users / (think time + response time) requests per second; hits answer in ~0 s.
    let peak_rps = match input.peak_rpm {
        Some(rpm) => rpm / 60.0,
        None => {
            let cycle = input.think_time_secs + miss * input.upstream_latency_secs;
            if cycle > 0.0 {
                input.peak_concurrent_users / cycle
            } else {
                0.0
            }
        }
    };
    let upstream_rpm_needed = peak_rps * 60.0 * miss;
    let rpm_quota = if input.chain.is_empty() {
        input.rpm_quota * input.api_keys
    } else if input.chain.iter().any(|m| m.rpm_quota == 0.0) {
        0.0
    } else {
        input.chain.iter().map(|m| m.rpm_quota).sum::<f64>() * input.api_keys
    };
    let unlimited = rpm_quota == 0.0;
    // A tiny tolerance so 1000.0000001 "needed" against 1000 still fits (floating point).
    let quota_fits = unlimited || upstream_rpm_needed <= rpm_quota * (1.0 + 1e-9);
    let quota_utilisation = if unlimited {
        0.0
    } else {
        upstream_rpm_needed / rpm_quota
    };
    let offered_rpm = peak_rps * 60.0;
    let min_cache_hit_ratio_for_quota = if unlimited || offered_rpm <= rpm_quota {
        0.0
    } else {
        1.0 - rpm_quota / offered_rpm
    };
    let upstream_rps = if unlimited {
        upstream_rpm_needed / 60.0
    } else {
        upstream_rpm_needed.min(rpm_quota) / 60.0
    };
    let upstream_in_flight = upstream_rps * input.upstream_latency_secs;

    let servers_for = |load: f64, per_server: f64| -> u32 {
        let usable = per_server * input.target_utilisation;
        // Rounded to 1e-9 first so 5.0000000001 does not become 6 servers.
        let n = (load / usable * 1e9).round() / 1e9;
        n.ceil().clamp(0.0, u32::MAX as f64) as u32
    };
    let servers_for_throughput = servers_for(peak_rps, input.server_capacity_rps);
    let servers_for_concurrency =
        servers_for(upstream_in_flight, input.server_max_upstream_concurrency);
    let servers_needed = servers_for_throughput.max(servers_for_concurrency).max(1);
    let servers = input.servers.unwrap_or(servers_needed).max(1);
    let n = f64::from(servers);

    let history_tokens_per_request = history_tokens_per_request(input);
    let price_of = |price: Price| match price {
        Price::PerRequest(usd) => usd,
        Price::PerThousandTokens {
            usd,
            tokens_per_request,
        } => usd * (tokens_per_request + history_tokens_per_request) / 1000.0,
    };
    let price_per_request = price_of(input.price);
    let per_model = chain_split(
        input,
        upstream_rps * 60.0,
        upstream_requests_per_month,
        &price_of,
    );
    let (fallback_share, fallback_price_per_request) = match per_model.split_first() {
        None => (
            input.fallback_share,
            price_of(input.fallback_price.unwrap_or(input.price)),
        ),
        Some((primary, rest)) => {
            let share: f64 = rest.iter().map(|m| m.share).sum();
            let cost: f64 = rest.iter().map(|m| m.share * m.price_per_request).sum();
            let price = if share > 0.0 {
                cost / share
            } else {
                rest.first()
                    .map_or(primary.price_per_request, |m| m.price_per_request)
            };
            (share, price)
        }
    };
    let price_per_request = per_model
        .first()
        .map_or(price_per_request, |m| m.price_per_request);
    // A failed primary call (503, overloaded) is not billed: a fallback answer costs only its
    // own call.
    let blended_price_per_request =
        (1.0 - fallback_share) * price_per_request + fallback_share * fallback_price_per_request;
    let fallback_requests_per_month = upstream_requests_per_month * fallback_share;
    let monthly_upstream_cost = upstream_requests_per_month * blended_price_per_request;
    let monthly_infrastructure_cost = n * input.server_monthly_cost
        + if servers > 1 {
            input.shared_monthly_cost
        } else {
            0.0
        };
    Ok(Plan {
        requests_per_day,
        requests_per_month,
        upstream_requests_per_month,
        peak_rps,
        upstream_rpm_needed,
        quota_fits,
        quota_utilisation,
        min_cache_hit_ratio_for_quota,
        upstream_rps,
        upstream_in_flight,
        servers_for_throughput,
        servers_for_concurrency,
        servers_needed,
        servers,
        per_server_rps: peak_rps / n,
        per_server_upstream_rpm: upstream_rps * 60.0 / n,
        per_server_upstream_in_flight: upstream_in_flight / n,
        history_tokens_per_request,
        effective_rpm_quota: rpm_quota,
        price_per_request,
        fallback_price_per_request,
        fallback_requests_per_month,
        blended_price_per_request,
        monthly_upstream_cost,
        monthly_infrastructure_cost,
        monthly_total_cost: monthly_upstream_cost + monthly_infrastructure_cost,
        per_model,
    })
}

/// Splits `sent_rpm` model calls a minute over the chain as spill-over does (each model takes
/// what the earlier ones left, up to its quota), and the month's calls in the same proportion.
fn chain_split(
    input: &PlanInput,
    sent_rpm: f64,
    requests_per_month: f64,
    price_of: &dyn Fn(Price) -> f64,
) -> Vec<ModelPlan> {
    let mut left = sent_rpm;
    let count = input.chain.len();
    input
        .chain
        .iter()
        .enumerate()
        .map(|(i, model)| {
            let quota = model.rpm_quota * input.api_keys;
            // The last model takes the rest: within the quota, `left` is within its share.
            let takes = if quota == 0.0 || i + 1 == count {
                left
            } else {
                left.min(quota)
            };
            left -= takes;
            let share = if sent_rpm > 0.0 {
                takes / sent_rpm
            } else if i == 0 {
                1.0
            } else {
                0.0
            };
            let price_per_request = price_of(model.price.unwrap_or(input.price));
            let requests = requests_per_month * share;
            ModelPlan {
                model: model.model.clone(),
                rpm_quota: quota,
                peak_rpm: takes,
                share,
                requests_per_month: requests,
                price_per_request,
                monthly_cost: requests * price_per_request,
            }
        })
        .collect()
}

/// The average history tokens sent per question, over the questions of one conversation.
fn history_tokens_per_request(input: &PlanInput) -> f64 {
    let Price::PerThousandTokens {
        tokens_per_request, ..
    } = input.price
    else {
        return 0.0;
    };
    // Bounded so an absurd input cannot spin; a conversation beyond it costs the same per
    // question anyway, since every question then carries the full history budget.
    let turns = input.turns_per_conversation.round().clamp(1.0, 100_000.0) as u64;
    let total: f64 = (0..turns)
        .map(|earlier| (earlier as f64 * tokens_per_request).min(input.max_history_tokens))
        .sum();
    total / turns as f64
}

fn validate(input: &PlanInput) -> Result<(), PlanError> {
    let non_negative = [
        ("users", input.users),
        ("requests per user per day", input.requests_per_user_per_day),
        ("peak concurrent users", input.peak_concurrent_users),
        ("think time", input.think_time_secs),
        ("upstream latency", input.upstream_latency_secs),
        ("RPM quota", input.rpm_quota),
        ("price per request", input.price.per_request()),
        (
            "fallback price per request",
            input.fallback_price.map_or(0.0, |p| p.per_request()),
        ),
        ("server monthly cost", input.server_monthly_cost),
        ("shared monthly cost", input.shared_monthly_cost),
        ("peak RPM", input.peak_rpm.unwrap_or(0.0)),
        ("max history tokens", input.max_history_tokens),
    ];
    for (name, value) in non_negative {
        if !value.is_finite() || value < 0.0 {
            return Err(PlanError(format!(
                "{name} must be a number >= 0, not {value}"
            )));
        }
    }
    let positive = [
        ("days per month", input.days_per_month),
        ("server capacity", input.server_capacity_rps),
        (
            "server upstream concurrency",
            input.server_max_upstream_concurrency,
        ),
    ];
    for (name, value) in positive {
        if !value.is_finite() || value <= 0.0 {
            return Err(PlanError(format!(
                "{name} must be a number > 0, not {value}"
            )));
        }
    }
    if !(input.turns_per_conversation.is_finite() && input.turns_per_conversation >= 1.0) {
        return Err(PlanError(format!(
            "turns per conversation must be a number >= 1, not {}",
            input.turns_per_conversation
        )));
    }
    if !(input.api_keys.is_finite() && input.api_keys >= 1.0) {
        return Err(PlanError(format!(
            "API keys must be a number >= 1, not {}",
            input.api_keys
        )));
    }
    for model in &input.chain {
        let price = model.price.map_or(0.0, |p| p.per_request());
        if !(model.rpm_quota.is_finite()
            && model.rpm_quota >= 0.0
            && price.is_finite()
            && price >= 0.0)
        {
            return Err(PlanError(format!(
                "model {}: its RPM quota and price must be numbers >= 0",
                model.model
            )));
        }
    }
    if !(0.0..=1.0).contains(&input.fallback_share) {
        return Err(PlanError(format!(
            "fallback share must be between 0 and 1, not {}",
            input.fallback_share
        )));
    }
    if !(0.0..=1.0).contains(&input.cache_hit_ratio) {
        return Err(PlanError(format!(
            "cache hit ratio must be between 0 and 1, not {}",
            input.cache_hit_ratio
        )));
    }
    if !(input.target_utilisation > 0.0 && input.target_utilisation <= 1.0) {
        return Err(PlanError(format!(
            "target utilisation must be in (0, 1], not {}",
            input.target_utilisation
        )));
    }
    if input.peak_concurrent_users > input.users && input.users > 0.0 {
        return Err(PlanError(format!(
            "peak concurrent users ({}) cannot exceed users ({})",
            input.peak_concurrent_users, input.users
        )));
    }
    Ok(())
}

/// USD a month for a class (API key) using `tokens_per_day` model tokens (input + output) a day,
/// at the input's price: per 1,000 tokens, or per request with `tokens_per_request` a request.
pub fn class_monthly_cost(input: &PlanInput, tokens_per_day: f64, tokens_per_request: f64) -> f64 {
    let per_token = match input.price {
        Price::PerThousandTokens { usd, .. } => usd / 1000.0,
        Price::PerRequest(usd) => usd / tokens_per_request.max(1.0),
    };
    tokens_per_day.max(0.0) * input.days_per_month * per_token
}

mod cli;
mod render;

pub use cli::{parse_chain_model, run, PlanArgs};
pub use render::render;
