//! Experiments: new conversations of an agent split between variants (an answer policy or a
//! prompt version each), measured on learning.
//!
//! Assignment is a stable hash of the experiment's name and the unit (the conversation's id,
//! or the learner's): every server assigns a conversation the same variant without talking to
//! any other, and the variant is recorded on the conversation (its token, or its stored row), so
//! it keeps it for its whole life, through config changes too. Per variant, this server counts
//! conversations, follow-ups, turns, tokens and cost (metrics, summed across servers by
//! Prometheus); thumbs up and down are kept in the records database with the feedback, so the
//! difference in thumbs-up rate and its 95% interval ([`difference_interval`]) are cluster-wide.

use crate::agents::AgentRegistry;
use crate::config::{ExperimentSettings, ExperimentUnit};
use crate::policy::Tutoring;
use metrics::{counter, describe_counter, Counter};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Conversations that started in a variant.
pub const CONVERSATIONS: &str = "learning_chat_experiment_conversations_total";
/// Conversations of a variant that had a follow-up (a second question).
pub const FOLLOW_UPS: &str = "learning_chat_experiment_follow_ups_total";
/// Questions answered in a variant (every turn of its conversations).
pub const TURNS: &str = "learning_chat_experiment_turns_total";
/// Model tokens spent on a variant's answers (cache hits cost none), by `kind` (input/output).
pub const TOKENS: &str = "learning_chat_experiment_tokens_total";
/// Estimated cost of a variant's answers in micro-USD (`[upstream]` prices).
pub const COST: &str = "learning_chat_experiment_cost_microusd_total";

/// The configured experiments.
#[derive(Debug, Default)]
pub struct Experiments {
    list: Vec<Arc<Experiment>>,
}

/// One experiment.
#[derive(Debug)]
pub struct Experiment {
    /// Its name.
    pub name: Arc<str>,
    /// The agents it covers.
    pub agents: Vec<String>,
    /// What is assigned.
    pub unit: ExperimentUnit,
    /// When it begins (Unix ms), if set.
    pub start_ms: Option<u64>,
    /// When it ends (Unix ms), if set.
    pub end_ms: Option<u64>,
    /// Its variants, the control first.
    pub variants: Vec<Arc<Variant>>,
    total_weight: u64,
}

/// One variant.
#[derive(Debug)]
pub struct Variant {
    /// `experiment/variant`: what answers, conversations and cache keys carry.
    pub label: Arc<str>,
    /// Its experiment's name.
    pub experiment: Arc<str>,
    /// Its own name.
    pub name: Arc<str>,
    /// Its answer policy at one version.
    pub tutoring: Tutoring,
    /// Its share of the experiment's conversations.
    pub weight: u32,
    counts: Counts,
    handles: OnceLock<Handles>,
    /// The counts as of the last write to the records database (only the writer takes it).
    written: parking_lot::Mutex<[u64; 6]>,
}

/// What this server counted for a variant since it started.
#[derive(Debug, Default)]
struct Counts {
    conversations: AtomicU64,
    follow_ups: AtomicU64,
    turns: AtomicU64,
    input_tokens: AtomicU64,
    output_tokens: AtomicU64,
    /// Millionths of a USD.
    cost_micro_usd: AtomicU64,
}

/// The metric handles of a variant, made at its first count (once the recorder is installed).
#[derive(Debug)]
struct Handles {
    conversations: Counter,
    follow_ups: Counter,
    turns: Counter,
    input_tokens: Counter,
    output_tokens: Counter,
    cost: Counter,
}

/// A variant's counts on this server.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VariantCounts {
    /// Conversations started in it.
    pub conversations: u64,
    /// Of those, conversations with at least one follow-up.
    pub follow_ups: u64,
    /// Questions answered (every turn).
    pub turns: u64,
    /// Model input tokens (cache hits cost none).
    pub input_tokens: u64,
    /// Model output tokens.
    pub output_tokens: u64,
    /// Estimated cost in USD.
    pub cost_usd: f64,
}

/// What one answered question adds to its variant's counts.
#[derive(Debug, Clone, Copy)]
pub struct Counted {
    /// Which exchange of its conversation it was (1 for the first question).
    pub turn: u32,
    /// Served from the cache: no tokens spent.
    pub cached: bool,
    /// Input tokens of the model call.
    pub input_tokens: u32,
    /// Output tokens of the model call.
    pub output_tokens: u32,
    /// USD of the call.
    pub cost_usd: f64,
}

/// Unix milliseconds now.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Experiments {
    /// The experiments of `settings`, each agent they name checked against `agents`.
    pub fn new(
        settings: &[ExperimentSettings],
        agents: &AgentRegistry,
    ) -> Result<Experiments, String> {
        let mut list = Vec::with_capacity(settings.len());
        for experiment in settings {
            let name: Arc<str> = Arc::from(experiment.name.as_str());
            for agent in &experiment.agents {
                if agents.get(agent).is_none() {
                    return Err(format!(
                        "experiments.{name}: no agent {agent:?} (agents: {})",
                        agents.ids().join(", ")
                    ));
                }
            }
            let at = |key: &str, at: &Option<String>| {
                at.as_deref()
                    .map(|at| {
                        crate::config::experiment_time(&format!("experiments.{name}.{key}"), at)
                    })
                    .transpose()
                    .map_err(|e| e.to_string())
            };
            let variants = experiment
                .variants
                .iter()
                .map(|v| {
                    let tutoring = Tutoring::parse(&v.policy).ok_or_else(|| {
                        format!("experiments.{name}.variants.{}: unknown policy", v.name)
                    })?;
                    Ok(Arc::new(Variant {
                        label: Arc::from(format!("{name}/{}", v.name)),
                        experiment: name.clone(),
                        name: Arc::from(v.name.as_str()),
                        tutoring,
                        weight: v.weight,
                        counts: Counts::default(),
                        handles: OnceLock::new(),
                        written: parking_lot::Mutex::new([0; 6]),
                    }))
                })
                .collect::<Result<Vec<_>, String>>()?;
            list.push(Arc::new(Experiment {
                total_weight: variants.iter().map(|v| u64::from(v.weight)).sum(),
                start_ms: at("start", &experiment.start)?,
                end_ms: at("end", &experiment.end)?,
                name,
                agents: experiment.agents.clone(),
                unit: experiment.unit,
                variants,
            }));
        }
        Ok(Experiments { list })
    }

    /// Every experiment, as configured.
    pub fn all(&self) -> &[Arc<Experiment>] {
        &self.list
    }

    /// The experiment `agent_id` is in, while it runs: nothing to do (an empty list) for
    /// almost every question.
    pub fn running_for(&self, agent_id: &str) -> Option<&Arc<Experiment>> {
        if self.list.is_empty() {
            return None;
        }
        let now = now_ms();
        self.list
            .iter()
            .find(|e| e.agents.iter().any(|a| a == agent_id))
            .filter(|e| e.is_running_at(now))
    }

    /// The variant recorded on a conversation (`experiment/variant`), if it is still configured
    /// (its experiment may have ended: it is still counted).
    pub fn variant(&self, label: &str) -> Option<&Arc<Variant>> {
        let (experiment, _) = label.split_once('/')?;
        self.list
            .iter()
            .find(|e| &*e.name == experiment)?
            .variants
            .iter()
            .find(|v| &*v.label == label)
    }
}

impl Experiment {
    /// True between its start and its end.
    pub fn is_running_at(&self, now_ms: u64) -> bool {
        self.start_ms.is_none_or(|start| now_ms >= start)
            && self.end_ms.is_none_or(|end| now_ms < end)
    }

    /// The variant of `unit` (a conversation's id, a learner's hashed id): the same on every
    /// server, every time, in proportion to the weights.
    pub fn assign(&self, unit: &[u8]) -> &Arc<Variant> {
        let mut hasher = Sha256::new();
        hasher.update(b"learning-chat experiment\0");
        hasher.update(self.name.as_bytes());
        hasher.update([0]);
        hasher.update(unit);
        let digest = hasher.finalize();
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        // 2^64 is so far above any total weight that the modulo's bias is nil.
        let mut point = u64::from_be_bytes(head) % self.total_weight.max(1);
        for variant in &self.variants {
            let weight = u64::from(variant.weight);
            if point < weight {
                return variant;
            }
            point -= weight;
        }
        &self.variants[0]
    }
}

impl PartialEq for Variant {
    /// Variants are told apart by their label (their counts are not what they are).
    fn eq(&self, other: &Variant) -> bool {
        self.label == other.label && self.tutoring == other.tutoring
    }
}

impl Variant {
    /// A variant recorded on a conversation whose experiment is no longer configured: named
    /// in its answers and cache keys, counted nowhere.
    pub fn detached(label: &str, tutoring: Tutoring) -> Variant {
        let (experiment, name) = label.split_once('/').unwrap_or(("", label));
        Variant {
            label: Arc::from(label),
            experiment: Arc::from(experiment),
            name: Arc::from(name),
            tutoring,
            weight: 0,
            counts: Counts::default(),
            handles: OnceLock::new(),
            written: parking_lot::Mutex::new([0; 6]),
        }
    }

    /// Counts one answered question of a conversation in this variant.
    pub fn count(&self, counted: Counted) {
        let handles = self.handles.get_or_init(|| {
            let labels = [
                ("experiment", self.experiment.to_string()),
                ("variant", self.name.to_string()),
            ];
            let tokens = |kind: &'static str| {
                let mut labels = labels.to_vec();
                labels.push(("kind", kind.to_owned()));
                counter!(TOKENS, &labels)
            };
            Handles {
                conversations: counter!(CONVERSATIONS, &labels),
                follow_ups: counter!(FOLLOW_UPS, &labels),
                turns: counter!(TURNS, &labels),
                input_tokens: tokens("input"),
                output_tokens: tokens("output"),
                cost: counter!(COST, &labels),
            }
        });
        let counts = &self.counts;
        let bump = |atomic: &AtomicU64, counter: &Counter, by: u64| {
            atomic.fetch_add(by, Relaxed);
            counter.increment(by);
        };
        if counted.turn == 1 {
            bump(&counts.conversations, &handles.conversations, 1);
        }
        if counted.turn == 2 {
            bump(&counts.follow_ups, &handles.follow_ups, 1);
        }
        bump(&counts.turns, &handles.turns, 1);
        if !counted.cached {
            let (input, output) = (
                u64::from(counted.input_tokens),
                u64::from(counted.output_tokens),
            );
            bump(&counts.input_tokens, &handles.input_tokens, input);
            bump(&counts.output_tokens, &handles.output_tokens, output);
            let micro = (counted.cost_usd * 1e6).round().max(0.0) as u64;
            counts.cost_micro_usd.fetch_add(micro, Relaxed);
            handles.cost.increment(micro);
        }
    }

    /// What this server counted since it started.
    pub fn counts(&self) -> VariantCounts {
        VariantCounts::from_raw(self.raw())
    }

    /// What this server counted and has not written to the records database yet.
    pub fn unwritten(&self) -> VariantCounts {
        let (now, written) = (self.raw(), *self.written.lock());
        VariantCounts::from_raw(std::array::from_fn(|i| now[i].saturating_sub(written[i])))
    }

    fn raw(&self) -> [u64; 6] {
        let c = &self.counts;
        [
            c.conversations.load(Relaxed),
            c.follow_ups.load(Relaxed),
            c.turns.load(Relaxed),
            c.input_tokens.load(Relaxed),
            c.output_tokens.load(Relaxed),
            c.cost_micro_usd.load(Relaxed),
        ]
    }
}

impl VariantCounts {
    fn from_raw(raw: [u64; 6]) -> VariantCounts {
        let [conversations, follow_ups, turns, input_tokens, output_tokens, cost] = raw;
        VariantCounts {
            conversations,
            follow_ups,
            turns,
            input_tokens,
            output_tokens,
            cost_usd: cost as f64 / 1e6,
        }
    }
}

impl Experiments {
    /// Adds what this server counted since its last write to the records database, in one
    /// transaction (off every request's path: a background task every
    /// `database.ledger_flush_ms`, and once more at shutdown); what could not be written is
    /// written next time. Returns the variants written.
    pub async fn write_counts(
        &self,
        records: &learning_chat_records::Records,
    ) -> Result<usize, learning_chat_records::RecordsError> {
        use learning_chat_records::feedback::VariantTotals;
        let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let mut rows = Vec::new();
        let mut taken = Vec::new();
        for variant in self.list.iter().flat_map(|e| e.variants.iter()) {
            let now = variant.raw();
            let written = *variant.written.lock();
            let delta: [u64; 6] = std::array::from_fn(|i| now[i].saturating_sub(written[i]));
            if delta == [0; 6] {
                continue;
            }
            let [conversations, follow_ups, turns, input_tokens, output_tokens, cost] = delta;
            rows.push(VariantTotals {
                experiment: variant.experiment.to_string(),
                variant: variant.name.to_string(),
                conversations: signed(conversations),
                follow_ups: signed(follow_ups),
                turns: signed(turns),
                input_tokens: signed(input_tokens),
                output_tokens: signed(output_tokens),
                cost_microusd: signed(cost),
            });
            taken.push((variant, now));
        }
        records.add_experiment_counts(&rows).await?;
        for (variant, now) in &taken {
            *variant.written.lock() = *now;
        }
        Ok(taken.len())
    }
}

/// A difference of two rates with its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// The rate of the variant minus the control's.
    pub difference: f64,
    /// The interval's lower end.
    pub low: f64,
    /// Its upper end.
    pub high: f64,
}

impl Interval {
    /// True when the interval leaves out 0: the difference is unlikely to be chance.
    pub fn excludes_zero(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }
}

/// z of a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// The Wilson score interval of `successes` out of `trials` (`None` without trials).
fn wilson(successes: u64, trials: u64) -> Option<(f64, f64)> {
    if trials == 0 {
        return None;
    }
    let (x, n, z2) = (successes as f64, trials as f64, Z95 * Z95);
    let center = (x + z2 / 2.0) / (n + z2);
    let half = Z95 * (x * (n - x) / n + z2 / 4.0).sqrt() / (n + z2);
    Some(((center - half).max(0.0), (center + half).min(1.0)))
}

/// The 95% interval of the difference of two rates, `a_up / a_n - b_up / b_n`, by Newcombe's
/// hybrid score method (his method 10, from the Wilson intervals of each rate): unlike the
/// textbook Wald interval it stays within [-1, 1] and keeps its coverage for small counts and
/// rates near 0 or 1, which thumbs on a few classes' conversations are. `None` while either
/// side has no ratings.
pub fn difference_interval(a_up: u64, a_n: u64, b_up: u64, b_n: u64) -> Option<Interval> {
    let (a_low, a_high) = wilson(a_up, a_n)?;
    let (b_low, b_high) = wilson(b_up, b_n)?;
    let (a, b) = (a_up as f64 / a_n as f64, b_up as f64 / b_n as f64);
    let difference = a - b;
    Some(Interval {
        difference,
        low: difference - ((a - a_low).powi(2) + (b_high - b).powi(2)).sqrt(),
        high: difference + ((a_high - a).powi(2) + (b - b_low).powi(2)).sqrt(),
    })
}

/// Describes these metrics (their help text) to the installed recorder.
pub(crate) fn describe() {
    describe_counter!(
        CONVERSATIONS,
        "Conversations started in an experiment variant (this server)."
    );
    describe_counter!(
        FOLLOW_UPS,
        "Conversations of an experiment variant that had a follow-up question."
    );
    describe_counter!(
        TURNS,
        "Questions answered in an experiment variant (every turn)."
    );
    describe_counter!(
        TOKENS,
        "Model tokens spent on an experiment variant's answers, by kind (cache hits cost none)."
    );
    describe_counter!(
        COST,
        "Estimated cost of an experiment variant's answers in micro-USD."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VariantSettings;

    fn experiment(weights: &[u32], end: Option<&str>) -> Experiment {
        let settings = ExperimentSettings {
            name: "policy-test".into(),
            agents: vec!["math".into()],
            unit: ExperimentUnit::Conversation,
            start: None,
            end: end.map(str::to_owned),
            variants: weights
                .iter()
                .enumerate()
                .map(|(i, w)| VariantSettings {
                    name: format!("v{i}"),
                    policy: ["full", "socratic", "hints"][i % 3].into(),
                    weight: *w,
                })
                .collect(),
        };
        let agents = AgentRegistry::load(None).unwrap();
        let mut all = Experiments::new(&[settings], &agents).unwrap();
        Arc::into_inner(all.list.remove(0)).unwrap()
    }

    #[test]
    fn assignment_is_stable_and_close_to_the_weights_over_10000_conversations() {
        let e = experiment(&[1, 3], None);
        let mut counts = [0u32; 2];
        for i in 0..10_000u32 {
            let id = format!("{:032x}", u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let variant = e.assign(id.as_bytes());
            // The same unit always gets the same variant.
            assert!(Arc::ptr_eq(variant, e.assign(id.as_bytes())));
            counts[usize::from(&*variant.name == "v1")] += 1;
        }
        // 2500 expected in v0; a binomial's sd is ~43, so 5 sd either way.
        assert!((2_285..=2_715).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn an_experiment_past_its_end_runs_no_more() {
        let ended = experiment(&[1, 1], Some("2020-01-01T00:00:00Z"));
        assert!(!ended.is_running_at(now_ms()));
        assert!(experiment(&[1, 1], None).is_running_at(now_ms()));
    }

    #[test]
    fn the_interval_matches_newcombes_worked_example() {
        // Newcombe (1998), "Interval estimation for the difference between independent
        // proportions", Statistics in Medicine 17:873-890, example (a): 56/70 - 48/80, method
        // 10 (score, no continuity correction): 0.0524 to 0.3339.
        let i = difference_interval(56, 70, 48, 80).unwrap();
        assert!((i.difference - 0.2).abs() < 1e-12);
        assert!((i.low - 0.0524).abs() < 5e-5, "{i:?}");
        assert!((i.high - 0.3339).abs() < 5e-5, "{i:?}");
        assert!(i.excludes_zero());
        // Example (b): 9/10 - 3/10 -> 0.1705 to 0.8090.
        let i = difference_interval(9, 10, 3, 10).unwrap();
        assert!((i.low - 0.1705).abs() < 5e-5, "{i:?}");
        assert!((i.high - 0.8090).abs() < 5e-5, "{i:?}");
        // Equal rates: an interval around 0.
        let i = difference_interval(5, 10, 5, 10).unwrap();
        assert!(!i.excludes_zero());
        assert_eq!(difference_interval(1, 0, 1, 1), None);
    }
}
