//! Our own options of the goose mode, taken off the command line before goose parses the rest.
//!
//! goose parses its flags itself (clap, unknown flags are errors), so every flag below is
//! removed from argv first; each also reads an environment variable when the flag is absent.

use rand::{Rng, RngExt};
use std::path::PathBuf;
use std::time::Duration;

/// How questions are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuestionMode {
    /// The same question every time (default: "What is 2+2?"): the cache's best case.
    Fixed,
    /// A different question every time: nothing is cacheable.
    Unique,
    /// Zipf-distributed over the question bank: a few popular questions, a long tail.
    Zipf,
}

impl std::str::FromStr for QuestionMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fixed" => Ok(QuestionMode::Fixed),
            "unique" => Ok(QuestionMode::Unique),
            "zipf" => Ok(QuestionMode::Zipf),
            other => Err(format!(
                "unknown question mode {other:?} (fixed, unique or zipf)"
            )),
        }
    }
}

/// Weighted agents: each request picks one.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentMix {
    entries: Vec<(String, u32)>,
}

impl AgentMix {
    /// Parses `math`, `math,science` or `math=3,science=1`; `all` means every agent of `known`
    /// with equal weight.
    pub fn parse(spec: &str, known: &[String]) -> Result<AgentMix, String> {
        if spec.trim() == "all" {
            if known.is_empty() {
                return Err("`all` needs a question bank with agent sections".to_owned());
            }
            return Ok(AgentMix {
                entries: known.iter().map(|a| (a.clone(), 1)).collect(),
            });
        }
        let mut entries = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (agent, weight) = match part.split_once('=') {
                Some((agent, weight)) => {
                    let weight: u32 = weight
                        .trim()
                        .parse()
                        .map_err(|_| format!("bad weight in {part:?}"))?;
                    (agent.trim(), weight)
                }
                None => (part, 1),
            };
            if agent.is_empty() || agent.contains('/') {
                return Err(format!("bad agent id in {part:?}"));
            }
            if weight > 0 {
                entries.push((agent.to_owned(), weight));
            }
        }
        if entries.is_empty() {
            return Err(format!("no agent with a positive weight in {spec:?}"));
        }
        Ok(AgentMix { entries })
    }

    /// The agent ids in the mix.
    pub fn agents(&self) -> Vec<String> {
        self.entries.iter().map(|(a, _)| a.clone()).collect()
    }

    /// One agent, chosen by weight.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> &str {
        let total: u32 = self.entries.iter().map(|(_, w)| w).sum();
        let mut x = rng.random_range(0..total.max(1));
        for (agent, weight) in &self.entries {
            if x < *weight {
                return agent;
            }
            x -= weight;
        }
        // Unreachable with positive weights; the first agent is a safe answer anyway.
        &self.entries[0].0
    }
}

/// Think time between two requests of one user, drawn uniformly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WaitRange {
    /// Shortest wait.
    pub min: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl std::str::FromStr for WaitRange {
    type Err = String;
    /// `5-15` (seconds, decimals allowed) or a single number for a fixed wait; `0`: no wait.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let seconds = |v: &str| -> Result<Duration, String> {
            let v: f64 = v
                .trim()
                .trim_end_matches('s')
                .parse()
                .map_err(|_| format!("bad wait {s:?} (seconds, e.g. 5-15)"))?;
            if !(0.0..=3600.0).contains(&v) {
                return Err(format!("wait {s:?} out of range (0 to 3600 s)"));
            }
            Ok(Duration::from_secs_f64(v))
        };
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (seconds(a)?, seconds(b)?),
            None => (seconds(s)?, seconds(s)?),
        };
        if min > max {
            return Err(format!("wait {s:?}: minimum above maximum"));
        }
        Ok(WaitRange { min, max })
    }
}

/// Questions per conversation in conversation mode, drawn uniformly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TurnRange {
    /// Fewest questions.
    pub min: u32,
    /// Most questions.
    pub max: u32,
}

impl std::str::FromStr for TurnRange {
    type Err = String;
    /// `3-8`, or one number for a fixed length; at least 1, at most 1000.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let turns = |v: &str| -> Result<u32, String> {
            v.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| format!("bad conversation length {s:?} (1 to 1000, e.g. 3-8)"))
        };
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (turns(a)?, turns(b)?),
            None => (turns(s)?, turns(s)?),
        };
        if min > max {
            return Err(format!("conversation length {s:?}: minimum above maximum"));
        }
        Ok(TurnRange { min, max })
    }
}

/// Everything the goose mode takes besides goose's own flags.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Agents and their weights (`--agents`, `LOADTEST_AGENTS`; default `math`).
    pub agents: String,
    /// Question mix (`--questions`, `LOADTEST_QUESTIONS`; default `fixed`).
    pub questions: QuestionMode,
    /// The fixed question (`--question`, `LOADTEST_QUESTION`; default [`SEED_QUESTION`]).
    pub question: String,
    /// Replaces the shipped bank (`--question-file`, `LOADTEST_QUESTION_FILE`).
    pub question_file: Option<PathBuf>,
    /// Zipf exponent (`--zipf-exponent`, `LOADTEST_ZIPF_EXPONENT`; default 1.0).
    pub zipf_exponent: f64,
    /// Think time (`--wait`, `LOADTEST_WAIT`; default 5-15 s, a learner reading an answer).
    pub wait: WaitRange,
    /// gemini-sim's base URL, for its upstream counts (`--sim-url`, `LOADTEST_SIM_URL`).
    pub sim_url: Option<String>,
    /// Seconds between progress lines on stderr, 0 = none (`--progress-every`,
    /// `LOADTEST_PROGRESS_EVERY`; default 5).
    pub progress_every: u64,
    /// Writes the final report as JSON here (`--summary-json`, `LOADTEST_SUMMARY_JSON`).
    pub summary_json: Option<PathBuf>,
    /// Conversation mode: each user holds conversations of this many questions, sending
    /// follow-ups with the `conversation_id` (`--conversation`, `LOADTEST_CONVERSATION`).
    pub conversation: Option<TurnRange>,
    /// API keys, one per line, spread over the users (user i sends key i mod N) with
    /// `Authorization: Bearer` (`--keys-file`, `LOADTEST_KEYS_FILE`).
    pub keys_file: Option<PathBuf>,
    /// Streaming mode: POST to `/api/v1/agents/{agent}/stream` and read the events as they come
    /// (`--stream`, `LOADTEST_STREAM=1`).
    pub stream: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            agents: "math".to_owned(),
            questions: QuestionMode::Fixed,
            question: SEED_QUESTION.to_owned(),
            question_file: None,
            zipf_exponent: 1.0,
            wait: WaitRange {
                min: Duration::from_secs(5),
                max: Duration::from_secs(15),
            },
            sim_url: None,
            progress_every: 5,
            summary_json: None,
            conversation: None,
            keys_file: None,
            stream: false,
        }
    }
}

/// The reference profile's only question: one short, always-cacheable question.
pub const SEED_QUESTION: &str = "What is 2+2?";

/// Our flags: name, environment variable, help.
pub const OUR_FLAGS: &[(&str, &str, &str)] = &[
    (
        "--agents",
        "LOADTEST_AGENTS",
        "agent mix: math | math,science | math=3,science=1 | all (default: math)",
    ),
    (
        "--questions",
        "LOADTEST_QUESTIONS",
        "fixed | unique | zipf (default: fixed)",
    ),
    (
        "--question",
        "LOADTEST_QUESTION",
        "the fixed question (default: \"What is 2+2?\")",
    ),
    (
        "--question-file",
        "LOADTEST_QUESTION_FILE",
        "question bank replacing the shipped one (format: see questions.txt)",
    ),
    (
        "--zipf-exponent",
        "LOADTEST_ZIPF_EXPONENT",
        "skew of --questions zipf (default: 1.0)",
    ),
    (
        "--wait",
        "LOADTEST_WAIT",
        "think time between requests in seconds, MIN-MAX or N (default: 5-15)",
    ),
    (
        "--sim-url",
        "LOADTEST_SIM_URL",
        "gemini-sim base URL: reset its /stats at start, report its counts at the end",
    ),
    (
        "--progress-every",
        "LOADTEST_PROGRESS_EVERY",
        "seconds between progress lines on stderr, 0 = none (default: 5)",
    ),
    (
        "--summary-json",
        "LOADTEST_SUMMARY_JSON",
        "also write the final report as JSON to this file",
    ),
    (
        "--conversation",
        "LOADTEST_CONVERSATION",
        "conversation mode: each user holds conversations of MIN-MAX questions (e.g. 3-8), follow-ups sent with the conversation_id after the think time",
    ),
    (
        "--keys-file",
        "LOADTEST_KEYS_FILE",
        "API keys, one per line: user i sends key i mod N (auth.mode = required)",
    ),
];

/// Our switches (flags without a value): name, environment variable (`1`/`true` turns it on,
/// `0`/`false` off), help.
pub const OUR_SWITCHES: &[(&str, &str, &str)] = &[(
    "--stream",
    "LOADTEST_STREAM",
    "streaming mode: POST /api/v1/agents/{agent}/stream, read its SSE events as they come, report time to first token and total time (by cached / coalesced / fresh) and stream errors by code",
)];

/// A switch's value: `--stream=true`, `LOADTEST_STREAM=1`.
fn switch_value(name: &str, v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "" | "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("bad {name} value {v:?} (true or false)")),
    }
}

/// goose 0.19 renamed `--hatch-rate` to `--increase-rate`; the old name (locust's habit, the
/// commands recorded in bench/RESULTS.md) is passed on under the new one.
fn goose_spelling(arg: &str) -> String {
    match arg.strip_prefix("--hatch-rate") {
        Some(rest) if rest.is_empty() || rest.starts_with('=') => format!("--increase-rate{rest}"),
        _ => arg.to_owned(),
    }
}

impl LoadOptions {
    /// Takes our flags (`--flag VALUE` or `--flag=VALUE`) out of `args` (argv without the
    /// program name) and returns the options and the arguments left for goose. `env` looks up
    /// environment variables for flags not given.
    pub fn split_args(
        args: &[String],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(LoadOptions, Vec<String>), String> {
        let mut given: Vec<(&'static str, String)> = Vec::new();
        let mut switches: Vec<(&'static str, bool)> = Vec::new();
        let mut rest = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            if let Some((name, _, _)) = OUR_SWITCHES.iter().find(|(name, _, _)| {
                arg == name || arg.strip_prefix(name).is_some_and(|r| r.starts_with('='))
            }) {
                let on = match arg.split_once('=') {
                    Some((_, v)) => switch_value(name, v)?,
                    None => true,
                };
                switches.push((name, on));
                i += 1;
                continue;
            }
            let flag = OUR_FLAGS.iter().find_map(|(name, _, _)| {
                if arg == name {
                    Some((*name, None))
                } else {
                    arg.strip_prefix(name)
                        .and_then(|r| r.strip_prefix('='))
                        .map(|v| (*name, Some(v.to_owned())))
                }
            });
            match flag {
                Some((name, Some(value))) => given.push((name, value)),
                Some((name, None)) => {
                    i += 1;
                    let value = args.get(i).ok_or_else(|| format!("{name} needs a value"))?;
                    given.push((name, value.clone()));
                }
                None => rest.push(goose_spelling(arg)),
            }
            i += 1;
        }
        let value = |name: &str| -> Option<String> {
            given
                .iter()
                .rev()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
                .or_else(|| {
                    OUR_FLAGS
                        .iter()
                        .find(|(n, _, _)| *n == name)
                        .and_then(|(_, var, _)| env(var))
                })
        };
        let mut options = LoadOptions::default();
        if let Some(v) = value("--agents") {
            options.agents = v;
        }
        if let Some(v) = value("--questions") {
            options.questions = v.parse()?;
        }
        if let Some(v) = value("--question") {
            if v.trim().is_empty() {
                return Err("--question must not be empty".to_owned());
            }
            options.question = v;
        }
        options.question_file = value("--question-file").map(PathBuf::from);
        if let Some(v) = value("--zipf-exponent") {
            options.zipf_exponent = v
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| format!("bad --zipf-exponent {v:?}"))?;
        }
        if let Some(v) = value("--wait") {
            options.wait = v.parse()?;
        }
        options.sim_url = value("--sim-url").map(|u| u.trim_end_matches('/').to_owned());
        if let Some(v) = value("--progress-every") {
            options.progress_every = v
                .parse()
                .map_err(|_| format!("bad --progress-every {v:?}"))?;
        }
        options.summary_json = value("--summary-json").map(PathBuf::from);
        if let Some(v) = value("--conversation") {
            options.conversation = Some(v.parse()?);
        }
        options.keys_file = value("--keys-file").map(PathBuf::from);
        let switch = |name: &str| -> Result<bool, String> {
            if let Some((_, on)) = switches.iter().rev().find(|(n, _)| *n == name) {
                return Ok(*on);
            }
            match OUR_SWITCHES
                .iter()
                .find(|(n, _, _)| *n == name)
                .and_then(|(_, var, _)| env(var))
            {
                Some(v) => switch_value(name, &v),
                None => Ok(false),
            }
        };
        options.stream = switch("--stream")?;
        Ok((options, rest))
    }

    /// Help text for our flags.
    pub fn help() -> String {
        let mut out = String::from("learning-chat options (taken off the command line before goose's; each also read from its environment variable):\n");
        for (name, var, help) in OUR_FLAGS.iter().chain(OUR_SWITCHES) {
            out.push_str(&format!("  {name:<18} {help}\n  {:<18} env {var}\n", ""));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_old_hatch_rate_flag_reaches_goose_under_its_new_name() {
        let (_, rest) = LoadOptions::split_args(
            &args(&[
                "--hatch-rate",
                "5",
                "--hatch-rate=7",
                "--hatch-rates",
                "-r",
                "2",
            ]),
            |_| None,
        )
        .unwrap();
        assert_eq!(
            rest,
            args(&[
                "--increase-rate",
                "5",
                "--increase-rate=7",
                "--hatch-rates",
                "-r",
                "2"
            ])
        );
    }

    #[test]
    fn our_flags_are_removed_and_goose_flags_kept() {
        let (options, rest) = LoadOptions::split_args(
            &args(&[
                "--host",
                "http://127.0.0.1:1",
                "--questions",
                "zipf",
                "-u",
                "10",
                "--wait=1-2",
                "--agents",
                "math=3,science",
                "--report-file",
                "r.html",
            ]),
            |_| None,
        )
        .unwrap();
        assert_eq!(
            rest,
            args(&[
                "--host",
                "http://127.0.0.1:1",
                "-u",
                "10",
                "--report-file",
                "r.html"
            ])
        );
        assert_eq!(options.questions, QuestionMode::Zipf);
        assert_eq!(options.wait.min, Duration::from_secs(1));
        assert_eq!(options.wait.max, Duration::from_secs(2));
        assert_eq!(options.agents, "math=3,science");
        assert_eq!(options.question, SEED_QUESTION);
    }

    #[test]
    fn env_fills_in_and_flags_win() {
        let env = |var: &str| match var {
            "LOADTEST_QUESTIONS" => Some("unique".to_owned()),
            "LOADTEST_SIM_URL" => Some("http://127.0.0.1:9/".to_owned()),
            _ => None,
        };
        let (options, rest) = LoadOptions::split_args(&[], env).unwrap();
        assert!(rest.is_empty());
        assert_eq!(options.questions, QuestionMode::Unique);
        assert_eq!(options.sim_url.as_deref(), Some("http://127.0.0.1:9"));
        let (options, _) = LoadOptions::split_args(&args(&["--questions", "fixed"]), env).unwrap();
        assert_eq!(options.questions, QuestionMode::Fixed);
    }

    #[test]
    fn bad_values_are_errors() {
        for bad in [
            &["--questions", "some"][..],
            &["--wait", "9-1"],
            &["--wait", "x"],
            &["--zipf-exponent", "-1"],
            &["--agents"],
        ] {
            assert!(
                LoadOptions::split_args(&args(bad), |_| None).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn conversation_lengths() {
        let (options, _) =
            LoadOptions::split_args(&args(&["--conversation", "3-8"]), |_| None).unwrap();
        assert_eq!(options.conversation, Some(TurnRange { min: 3, max: 8 }));
        let (options, _) = LoadOptions::split_args(&args(&[]), |_| None).unwrap();
        assert_eq!(options.conversation, None);
        assert_eq!("4".parse(), Ok(TurnRange { min: 4, max: 4 }));
        for bad in ["0-3", "8-3", "x", "1-1001"] {
            assert!(bad.parse::<TurnRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn stream_switch() {
        let (options, rest) =
            LoadOptions::split_args(&args(&["--stream", "-u", "3"]), |_| None).unwrap();
        assert!(options.stream);
        assert_eq!(rest, args(&["-u", "3"]));
        let (options, _) = LoadOptions::split_args(&args(&[]), |_| None).unwrap();
        assert!(!options.stream);
        let env = |var: &str| (var == "LOADTEST_STREAM").then(|| "1".to_owned());
        let (options, _) = LoadOptions::split_args(&args(&[]), env).unwrap();
        assert!(options.stream);
        let (options, _) = LoadOptions::split_args(&args(&["--stream=false"]), env).unwrap();
        assert!(!options.stream);
        assert!(LoadOptions::split_args(&args(&["--stream=maybe"]), |_| None).is_err());
        assert!(LoadOptions::help().contains("LOADTEST_STREAM"));
    }

    #[test]
    fn agent_mixes() {
        let known = vec!["math".to_owned(), "science".to_owned()];
        let all = AgentMix::parse("all", &known).unwrap();
        assert_eq!(all.agents(), known);
        let mix = AgentMix::parse("math=3, science=0 ,history", &known).unwrap();
        assert_eq!(mix.agents(), ["math", "history"]);
        let mut rng = rand::rng();
        let maths = (0..4000).filter(|_| mix.pick(&mut rng) == "math").count();
        assert!((2600..3400).contains(&maths), "{maths}");
        assert!(AgentMix::parse("math=0", &known).is_err());
        assert!(AgentMix::parse("a/b", &known).is_err());
    }

    #[test]
    fn wait_ranges() {
        let w: WaitRange = "0".parse().unwrap();
        assert_eq!(w.max, Duration::ZERO);
        let w: WaitRange = "0.5-1.5s".parse().unwrap();
        assert_eq!(w.min, Duration::from_millis(500));
    }
}
