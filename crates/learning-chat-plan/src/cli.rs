//! `learning-chat plan`: its flags, and the table or JSON it prints.

use crate::render::{count, num};
use crate::{
    class_monthly_cost, plan, render, ChainModel, PlanInput, Price, DEFAULT_SERVER_CAPACITY_RPS,
};

/// `learning-chat plan` flags; defaults are the reference situation ([`PlanInput::seed`]).
#[derive(Clone, Debug, clap::Args)]
pub struct PlanArgs {
    /// Learners using the service.
    #[arg(long, default_value_t = 1000.0)]
    pub users: f64,
    /// Questions per learner per day.
    #[arg(long, default_value_t = 10.0)]
    pub requests_per_user_per_day: f64,
    /// Days per month.
    #[arg(long, default_value_t = 30.0)]
    pub days_per_month: f64,
    /// Learners active at the peak (default: all users).
    #[arg(long)]
    pub peak_concurrent_users: Option<f64>,
    /// Seconds an active learner thinks between questions (locust's between(5, 15): 10).
    #[arg(long, default_value_t = 10.0)]
    pub think_time_secs: f64,
    /// Peak requests per minute to the service (replaces the peak-users estimate).
    #[arg(long)]
    pub peak_rpm: Option<f64>,
    /// Expected cache hit ratio, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    pub cache_hit_ratio: f64,
    /// Seconds per model call.
    #[arg(long, default_value_t = 2.8)]
    pub upstream_latency_secs: f64,
    /// The model's RPM quota per API key (0 = unlimited).
    #[arg(long, default_value_t = 1000.0)]
    pub rpm_quota: f64,
    /// API keys, each with its own --rpm-quota (gemini.api_keys).
    #[arg(long, default_value_t = 1.0)]
    pub api_keys: f64,
    /// Fraction of model calls answered by the agents' fallback model, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    pub fallback_share: f64,
    /// USD per request of the fallback model (default: the primary's price).
    #[arg(long, conflicts_with = "fallback_price_per_1k_tokens")]
    pub fallback_price_per_request: Option<f64>,
    /// USD per 1,000 tokens of the fallback model (with --tokens-per-request).
    #[arg(long)]
    pub fallback_price_per_1k_tokens: Option<f64>,
    /// USD per model request.
    #[arg(long, default_value_t = 0.001, conflicts_with = "price_per_1k_tokens")]
    pub price_per_request: f64,
    /// USD per 1,000 tokens (instead of --price-per-request; with --tokens-per-request).
    #[arg(long)]
    pub price_per_1k_tokens: Option<f64>,
    /// Tokens (input + output) of an average request, for --price-per-1k-tokens.
    #[arg(long, default_value_t = 500.0)]
    pub tokens_per_request: f64,
    /// Questions per conversation (1 = single questions); with --price-per-1k-tokens, each
    /// follow-up also pays for the history sent with it.
    #[arg(long, default_value_t = 1.0)]
    pub turns_per_conversation: f64,
    /// conversation.max_history_tokens: the most history tokens sent with one follow-up.
    #[arg(long, default_value_t = 8000.0)]
    pub max_history_tokens: f64,
    /// Requests/s one server sustains (measure it: bench/RESULTS.md).
    #[arg(long, default_value_t = DEFAULT_SERVER_CAPACITY_RPS)]
    pub server_capacity_rps: f64,
    /// Model calls one server keeps in flight (upstream.max_concurrency).
    #[arg(long, default_value_t = 100.0)]
    pub server_concurrency: f64,
    /// Fraction of each server's capacity to use (headroom).
    #[arg(long, default_value_t = 0.7)]
    pub target_utilisation: f64,
    /// Evaluate a fixed fleet of this many servers.
    #[arg(long)]
    pub servers: Option<u32>,
    /// USD per server per month.
    #[arg(long, default_value_t = 30.0)]
    pub server_monthly_cost: f64,
    /// USD per month shared by a fleet of 2+ servers (Redis, load balancer).
    #[arg(long, default_value_t = 70.0)]
    pub shared_monthly_cost: f64,
    /// One model of the agents' chain, primary first, as `MODEL=RPM` or `MODEL=RPM:USD` (its
    /// quota per key, 0 = unlimited, and its price per request; default --price-per-request).
    /// Repeat it for the chain; it replaces --rpm-quota and --fallback-share: questions spill
    /// over to the next model when one's quota is used up.
    #[arg(long = "model", value_parser = parse_chain_model)]
    pub models: Vec<ChainModel>,
    /// Print the inputs and the plan as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// What one class (API key) costs a month: its model tokens a day, read from
    /// `increase(learning_chat_key_tokens_total{key="key_..."}[1d])` or its `--tokens-per-day`.
    #[arg(long)]
    pub class_tokens_per_day: Option<f64>,
}

impl PlanArgs {
    /// The planner input these flags describe.
    pub fn to_input(&self) -> PlanInput {
        PlanInput {
            users: self.users,
            requests_per_user_per_day: self.requests_per_user_per_day,
            days_per_month: self.days_per_month,
            peak_concurrent_users: self.peak_concurrent_users.unwrap_or(self.users),
            think_time_secs: self.think_time_secs,
            peak_rpm: self.peak_rpm,
            cache_hit_ratio: self.cache_hit_ratio,
            upstream_latency_secs: self.upstream_latency_secs,
            rpm_quota: self.rpm_quota,
            api_keys: self.api_keys,
            fallback_share: self.fallback_share,
            fallback_price: match (
                self.fallback_price_per_request,
                self.fallback_price_per_1k_tokens,
            ) {
                (Some(usd), _) => Some(Price::PerRequest(usd)),
                (None, Some(usd)) => Some(Price::PerThousandTokens {
                    usd,
                    tokens_per_request: self.tokens_per_request,
                }),
                (None, None) => None,
            },
            price: match self.price_per_1k_tokens {
                Some(usd) => Price::PerThousandTokens {
                    usd,
                    tokens_per_request: self.tokens_per_request,
                },
                None => Price::PerRequest(self.price_per_request),
            },
            turns_per_conversation: self.turns_per_conversation,
            max_history_tokens: self.max_history_tokens,
            server_capacity_rps: self.server_capacity_rps,
            server_max_upstream_concurrency: self.server_concurrency,
            target_utilisation: self.target_utilisation,
            servers: self.servers,
            server_monthly_cost: self.server_monthly_cost,
            shared_monthly_cost: self.shared_monthly_cost,
            chain: self.models.clone(),
        }
    }
}

/// Reads `MODEL=RPM` or `MODEL=RPM:USD_PER_REQUEST` (a `--model` flag).
pub fn parse_chain_model(text: &str) -> Result<ChainModel, String> {
    let (model, rest) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected MODEL=RPM or MODEL=RPM:USD"))?;
    let (rpm, price) = match rest.split_once(':') {
        Some((rpm, usd)) => (rpm, Some(usd)),
        None => (rest, None),
    };
    let rpm_quota: f64 = rpm
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: {rpm:?} is not a number of requests per minute"))?;
    let price = price
        .map(|usd| {
            usd.trim()
                .parse::<f64>()
                .map(Price::PerRequest)
                .map_err(|_| format!("{text:?}: {usd:?} is not a price in USD"))
        })
        .transpose()?;
    if model.trim().is_empty() {
        return Err(format!("{text:?}: the model id is empty"));
    }
    Ok(ChainModel {
        model: model.trim().to_owned(),
        rpm_quota,
        price,
    })
}

/// Runs `learning-chat plan`: the table (or JSON) on stdout; exit 2 on invalid input.
pub fn run(args: &PlanArgs) -> std::process::ExitCode {
    let input = args.to_input();
    match plan(&input) {
        Ok(result) => {
            let class = args.class_tokens_per_day.map(|tokens| {
                let usd = class_monthly_cost(&input, tokens, args.tokens_per_request);
                (tokens, usd)
            });
            if args.json {
                let both = serde_json::json!({
                    "input": input,
                    "plan": result,
                    "class_monthly_usd": class.map(|(_, usd)| usd),
                });
                match serde_json::to_string_pretty(&both) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return std::process::ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", render(&input, &result));
                if let Some((tokens, usd)) = class {
                    println!(
                        "class (one API key): {} model tokens a day x {} days = ${usd:.2} a month",
                        count(tokens),
                        num(input.days_per_month)
                    );
                }
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
