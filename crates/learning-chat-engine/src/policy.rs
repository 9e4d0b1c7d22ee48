//! Tutoring policies: how much of a solution the tutor gives away.
//!
//! A policy is a versioned block of the system instruction, added after the agent's own
//! subject prompt. The blocks are written from Google's LearnLM principles (inspire active
//! learning, manage cognitive load, adapt to the learner, stimulate curiosity, deepen
//! metacognition). A block's text never changes once shipped: a better wording is a new
//! version, so cached answers and recorded conversations always name the text they were made
//! with (`socratic@1`), and an experiment can compare two versions of one policy.

use serde::{Deserialize, Serialize};
use std::fmt;

/// How much of a solution the tutor gives away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Guides with questions; never the final answer to an exercise.
    Socratic,
    /// One hint at a time; the answer only after the learner has tried.
    Hints,
    /// Explains completely.
    #[default]
    Full,
}

impl Policy {
    /// Every policy, for listings and checks.
    pub const ALL: [Policy; 3] = [Policy::Socratic, Policy::Hints, Policy::Full];

    /// `socratic`, `hints` or `full`.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Socratic => "socratic",
            Policy::Hints => "hints",
            Policy::Full => "full",
        }
    }

    /// The policy named `name`.
    pub fn parse(name: &str) -> Option<Policy> {
        Policy::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// The newest version of this policy's block (what `policy = "hints"` means).
    pub fn latest(self) -> Tutoring {
        let version = BLOCKS
            .iter()
            .filter(|b| b.policy == self)
            .map(|b| b.version)
            .max()
            .unwrap_or(1);
        Tutoring {
            policy: self,
            version,
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy at one version of its block: what shapes the system instruction, the cache key
/// and what a conversation records. Written `socratic@1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tutoring {
    /// The policy.
    pub policy: Policy,
    /// Which version of its block.
    pub version: u16,
}

impl Default for Tutoring {
    fn default() -> Tutoring {
        Policy::Full.latest()
    }
}

/// One shipped block.
struct Block {
    policy: Policy,
    version: u16,
    /// `policy@version`, spelled out so naming a tutoring allocates nothing.
    name: &'static str,
    text: &'static str,
}

/// Every block ever shipped. Append only: a shipped block's text never changes.
const BLOCKS: &[Block] = &[
    Block {
        policy: Policy::Socratic,
        version: 1,
        name: "socratic@1",
        text: "\
Answer policy (socratic): lead the learner to the answer; never state the final answer to an \
exercise, homework or test question, even when asked directly or told it is urgent.
- Active learning: reply with one focused question or a small next step the learner can take \
now, then stop and wait for their answer.
- Cognitive load: one idea per turn, in short sentences; split a long problem into steps and \
work on the current one only.
- Adapt: start from what the learner said or tried; if they are stuck twice on the same step, \
make the next question easier or give a worked example of a similar (not the same) problem.
- Curiosity: connect the problem to something the learner knows or finds interesting.
- Metacognition: ask the learner to explain their reasoning and to check their own result.
Explaining a concept the learner asks about is fine; solving their exercise for them is not.",
    },
    Block {
        policy: Policy::Socratic,
        version: 2,
        name: "socratic@2",
        text: "\
Answer policy (socratic, concise): do not give the final answer to an exercise, homework or \
test question, whatever the learner says.
- Name in one sentence what the learner has right so far.
- Then ask exactly one question that makes them take the next step, and end your reply with \
that question.
- If they are stuck, make the question smaller rather than giving the step away.
- When they reach the answer, ask them how they could check it.",
    },
    Block {
        policy: Policy::Hints,
        version: 1,
        name: "hints@1",
        text: "\
Answer policy (hints): give one hint at a time; give the full answer to an exercise only after \
the learner has tried.
- Active learning: if the learner has not shown an attempt, ask what they tried or give a \
first hint that points to the method, not the result.
- Cognitive load: each hint covers one step, in two or three sentences.
- Adapt: read the learner's attempt and aim the next hint at their first mistake; make hints \
more specific each time they are stuck.
- Once the learner has made a real attempt (or after three hints), you may show the full \
solution, step by step, and point out where their attempt went right or wrong.
- Metacognition: end with a short question that makes the learner reflect on the method.",
    },
    Block {
        policy: Policy::Full,
        version: 1,
        name: "full@1",
        text: "\
Answer policy (full): explain completely, including the final answer when one is asked for.
- Cognitive load: build the explanation in clear, numbered steps and say why each step follows.
- Adapt: match the level of the learner's question; define terms a beginner may not know.
- Active learning: after the explanation, offer one short practice question the learner can \
try on their own.
- Curiosity: where it helps, add one sentence on where the idea is used or leads next.",
    },
];

impl Tutoring {
    fn block(self) -> Option<&'static Block> {
        BLOCKS
            .iter()
            .find(|b| b.policy == self.policy && b.version == self.version)
    }

    /// `policy@version` (`socratic@1`): the name recorded and put in the cache key.
    pub fn name(self) -> &'static str {
        self.block().map_or("", |b| b.name)
    }

    /// The block of the system instruction.
    pub fn instruction(self) -> &'static str {
        self.block().map_or("", |b| b.text)
    }

    /// `socratic` (its newest version) or `socratic@2`; `None` for an unknown policy or version.
    pub fn parse(text: &str) -> Option<Tutoring> {
        let (policy, version) = match text.split_once('@') {
            Some((policy, version)) => (policy, Some(version.parse::<u16>().ok()?)),
            None => (text, None),
        };
        let policy = Policy::parse(policy)?;
        let tutoring = match version {
            Some(version) => Tutoring { policy, version },
            None => policy.latest(),
        };
        tutoring.block().map(|_| tutoring)
    }

    /// The system instruction: the agent's subject prompt, then this policy's block.
    pub fn system_instruction(self, subject_prompt: &str) -> String {
        let block = self.instruction();
        let mut text = String::with_capacity(subject_prompt.len() + block.len() + 2);
        text.push_str(subject_prompt.trim_end());
        if !block.is_empty() {
            text.push_str("\n\n");
            text.push_str(block);
        }
        text
    }

    /// Every shipped `policy@version`, oldest first.
    pub fn all() -> impl Iterator<Item = Tutoring> {
        BLOCKS.iter().map(|b| Tutoring {
            policy: b.policy,
            version: b.version,
        })
    }
}

impl fmt::Display for Tutoring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_a_bare_policy_is_its_newest_version() {
        for tutoring in Tutoring::all() {
            assert_eq!(Tutoring::parse(tutoring.name()), Some(tutoring));
            assert!(tutoring.instruction().len() > 200, "{tutoring}");
        }
        assert_eq!(Tutoring::parse("socratic").unwrap().name(), "socratic@2");
        assert_eq!(Tutoring::parse("hints").unwrap().name(), "hints@1");
        assert_eq!(Tutoring::parse("socratic@9"), None);
        assert_eq!(Tutoring::parse("lecture"), None);
        assert_eq!(Tutoring::parse("full@x"), None);
        assert_eq!(Tutoring::default().name(), "full@1");
    }

    #[test]
    fn blocks_are_unique_and_named_after_themselves() {
        for (i, block) in BLOCKS.iter().enumerate() {
            assert_eq!(
                block.name,
                format!("{}@{}", block.policy.as_str(), block.version)
            );
            assert!(BLOCKS[..i]
                .iter()
                .all(|b| (b.policy, b.version) != (block.policy, block.version)));
        }
    }

    #[test]
    fn the_system_instruction_is_the_subject_prompt_then_the_block() {
        let hints = Tutoring::parse("hints@1").unwrap();
        let text = hints.system_instruction("You teach math.\n");
        assert!(text.starts_with("You teach math.\n\nAnswer policy (hints)"));
        assert!(text.ends_with(hints.instruction()));
    }
}
