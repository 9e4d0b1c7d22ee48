//! The shipped bank of student questions and the ways a load test picks from it.

use rand::{Rng, RngExt};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// The bank shipped with the binary (`crates/learning-chat-loadtest/questions.txt`), so it runs from anywhere.
pub const SHIPPED_BANK: &str = include_str!("../questions.txt");

/// Questions per agent id, each list ordered from the most to the least asked.
#[derive(Clone, Debug, Default)]
pub struct QuestionBank {
    sections: BTreeMap<String, Vec<String>>,
}

impl QuestionBank {
    /// Parses the bank format: `[agent]` lines open a section, `#` lines are comments, every
    /// other non-empty line is one question.
    pub fn parse(text: &str) -> Result<QuestionBank, String> {
        let mut sections: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut current: Option<String> = None;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                let name = name.trim();
                if name.is_empty() {
                    return Err(format!("line {}: empty section name", number + 1));
                }
                current = Some(name.to_owned());
                sections.entry(name.to_owned()).or_default();
                continue;
            }
            let Some(section) = &current else {
                return Err(format!(
                    "line {}: a question before any [agent] section",
                    number + 1
                ));
            };
            sections
                .entry(section.clone())
                .or_default()
                .push(line.to_owned());
        }
        sections.retain(|_, questions| !questions.is_empty());
        if sections.is_empty() {
            return Err("the question bank has no questions".to_owned());
        }
        Ok(QuestionBank { sections })
    }

    /// The shipped bank.
    pub fn shipped() -> QuestionBank {
        // The shipped file is checked by a unit test, so this cannot fail in a release; an empty
        // bank is still a usable value (every pick then falls back to the fixed question).
        QuestionBank::parse(SHIPPED_BANK).unwrap_or_default()
    }

    /// Agent ids with a section, sorted.
    pub fn agents(&self) -> Vec<String> {
        self.sections.keys().cloned().collect()
    }

    /// The questions of `agent`, most asked first; every question when it has no section.
    pub fn questions_for(&self, agent: &str) -> Vec<String> {
        match self.sections.get(agent) {
            Some(questions) => questions.clone(),
            None => self.sections.values().flatten().cloned().collect(),
        }
    }

    /// Number of questions in the bank.
    pub fn len(&self) -> usize {
        self.sections.values().map(Vec::len).sum()
    }

    /// True when the bank has no questions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Samples ranks `0..n` with probability proportional to `1 / (rank + 1)^s`.
#[derive(Clone, Debug)]
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    /// A sampler over `n` ranks with exponent `s` (`s = 0` is uniform; larger is more skewed).
    pub fn new(n: usize, s: f64) -> Zipf {
        let mut total = 0.0;
        let cumulative = (1..=n.max(1))
            .map(|k| {
                total += 1.0 / (k as f64).powf(s);
                total
            })
            .collect();
        Zipf { cumulative }
    }

    /// One rank, `0` being the most likely.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let x = rng.random::<f64>() * total;
        self.cumulative
            .partition_point(|&c| c <= x)
            .min(self.cumulative.len() - 1)
    }
}

/// How each request's question is chosen.
#[derive(Debug)]
pub struct QuestionPicker {
    mode: crate::QuestionMode,
    fixed: String,
    per_agent: BTreeMap<String, (Vec<String>, Zipf)>,
    /// Makes unique questions unique across runs too (the service's cache outlives a run).
    run_tag: u32,
    counter: AtomicU64,
}

impl QuestionPicker {
    /// A picker for the agents of `agents`, drawing from `bank`.
    pub fn new(
        mode: crate::QuestionMode,
        fixed: String,
        bank: &QuestionBank,
        agents: &[String],
        zipf_exponent: f64,
    ) -> QuestionPicker {
        let per_agent = agents
            .iter()
            .map(|agent| {
                let questions = bank.questions_for(agent);
                let zipf = Zipf::new(questions.len(), zipf_exponent);
                (agent.clone(), (questions, zipf))
            })
            .collect();
        QuestionPicker {
            mode,
            fixed,
            per_agent,
            run_tag: rand::random(),
            counter: AtomicU64::new(0),
        }
    }

    /// The next question for `agent`.
    pub fn pick<R: Rng + ?Sized>(&self, agent: &str, rng: &mut R) -> String {
        let from_bank = |rank: Option<usize>, rng: &mut R| -> String {
            match self.per_agent.get(agent) {
                Some((questions, zipf)) if !questions.is_empty() => {
                    let index = match rank {
                        Some(rank) => rank,
                        None => zipf.sample(rng),
                    };
                    questions[index.min(questions.len() - 1)].clone()
                }
                _ => self.fixed.clone(),
            }
        };
        match self.mode {
            crate::QuestionMode::Fixed => self.fixed.clone(),
            crate::QuestionMode::Zipf => from_bank(None, rng),
            crate::QuestionMode::Unique => {
                let n = self.counter.fetch_add(1, Ordering::Relaxed);
                let len = self.per_agent.get(agent).map_or(1, |(q, _)| q.len().max(1));
                let base = from_bank(Some(rng.random_range(0..len)), rng);
                // A suffix a student might plausibly type, unique per request and per run.
                format!("{base} (question {:08x}-{n})", self.run_tag)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_shipped_bank_is_large_varied_and_duplicate_free() {
        let bank = QuestionBank::parse(SHIPPED_BANK).unwrap();
        assert_eq!(
            bank.agents(),
            ["history", "math", "programming", "science", "writing"]
        );
        assert!(bank.len() >= 250, "only {} questions", bank.len());
        for agent in bank.agents() {
            assert!(bank.questions_for(&agent).len() >= 40, "{agent}");
        }
        let mut all: Vec<String> = bank.sections.values().flatten().cloned().collect();
        all.sort();
        let before = all.len();
        all.dedup();
        assert_eq!(before, all.len(), "duplicate questions in the bank");
        assert_eq!(bank.questions_for("math")[0], "What is 2+2?");
    }

    #[test]
    fn bank_format_errors_are_reported() {
        assert!(QuestionBank::parse("What?").is_err());
        assert!(QuestionBank::parse("# only a comment\n[math]\n").is_err());
        assert!(QuestionBank::parse("[]\nWhat?").is_err());
        let bank = QuestionBank::parse("[a]\nq1\n\n# c\nq2\n[b]\nq3").unwrap();
        assert_eq!(bank.questions_for("a"), ["q1", "q2"]);
        assert_eq!(bank.questions_for("zzz").len(), 3);
    }

    #[test]
    fn zipf_favours_low_ranks() {
        let zipf = Zipf::new(100, 1.0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut counts = [0u32; 100];
        for _ in 0..20_000 {
            counts[zipf.sample(&mut rng)] += 1;
        }
        assert!(counts[0] > counts[1] && counts[1] > counts[9] && counts[9] > counts[99]);
        // Rank 1 has probability 1 / H(100) ~ 19%.
        assert!((3000..4800).contains(&counts[0]), "{}", counts[0]);
    }

    #[test]
    fn pickers_follow_their_mode() {
        let bank = QuestionBank::shipped();
        let agents = vec!["math".to_owned(), "science".to_owned()];
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let fixed = QuestionPicker::new(
            crate::QuestionMode::Fixed,
            "What is 2+2?".into(),
            &bank,
            &agents,
            1.0,
        );
        assert_eq!(fixed.pick("science", &mut rng), "What is 2+2?");
        let unique =
            QuestionPicker::new(crate::QuestionMode::Unique, "x".into(), &bank, &agents, 1.0);
        let a = unique.pick("math", &mut rng);
        let b = unique.pick("math", &mut rng);
        assert_ne!(a, b);
        let zipf = QuestionPicker::new(crate::QuestionMode::Zipf, "x".into(), &bank, &agents, 1.0);
        let science = bank.questions_for("science");
        for _ in 0..50 {
            assert!(science.contains(&zipf.pick("science", &mut rng)));
        }
    }
}
