//! Deterministic tutor-like answers and the token rule of thumb.
//!
//! The text is built from phrase pools picked by a hash of the prompt, so the same system
//! instruction and conversation always give the same answer (caches and replay tests depend on
//! that), while different questions read differently. The question's topic is echoed so answers
//! look related to what was asked.

/// Tokens in `text` by Gemini's rule of thumb: one token per 4 characters, rounded up.
pub fn count_tokens(text: &str) -> u32 {
    chars_to_tokens(text.chars().count())
}

/// Tokens for a number of characters (4 characters a token, rounded up).
pub fn chars_to_tokens(chars: usize) -> u32 {
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX)
}

/// Deterministic tutor-like answer for (system instruction text, conversation text), about
/// `tokens` tokens long (never more; a little less when the cut falls inside a word).
pub fn tutor_answer(system: &str, prompt: &str, tokens: u32) -> String {
    let budget = tokens as usize * 4;
    if budget == 0 {
        return String::new();
    }
    let mut rng = Mix::new(fnv1a(
        fnv1a(FNV_OFFSET, system.as_bytes()) ^ 0x9e37,
        prompt.as_bytes(),
    ));
    let topic = extract_topic(prompt);
    let subject = Subject::detect(system, prompt);

    let mut text = String::with_capacity(budget + 64);
    let push = |text: &mut String, piece: &str| {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push(' ');
        }
        text.push_str(piece);
    };

    push(&mut text, &fill(rng.pick(OPENINGS), &topic));
    push(&mut text, &fill(rng.pick(CORE_IDEAS), &topic));
    // The worked example comes early so even a short answer carries one.
    text.push_str("\n\nExample: ");
    text.push_str(rng.pick(subject.examples()));
    text.push_str("\n\nSteps to try:\n");
    let first = rng.below(STEPS.len());
    for (n, offset) in [0usize, 3, 6].iter().enumerate() {
        let step = STEPS[(first + offset) % STEPS.len()];
        text.push_str(&format!("{}. {}\n", n + 1, fill(step, &topic)));
    }
    text.push_str("\nCheck your understanding: ");
    text.push_str(&fill(rng.pick(CHECKS), &topic));
    text.push_str("\n\nCommon mistake: ");
    text.push_str(&fill(rng.pick(MISTAKES), &topic));
    // Longer answers go on with practice advice, cycling through the pool from a hashed start.
    let start = rng.below(FURTHER.len());
    let mut round = 0;
    while text.len() < budget {
        if round % FURTHER.len() == 0 {
            text.push_str("\n\n");
        }
        push(
            &mut text,
            &fill(FURTHER[(start + round) % FURTHER.len()], &topic),
        );
        round += 1;
    }
    truncate_to_budget(text, budget)
}

/// Deterministic answer to a whole conversation: `turns` are the texts of every content in
/// order, the new message last. One turn gives exactly [`tutor_answer`] of it; a follow-up's
/// answer depends on every turn and opens by naming the conversation's first topic, so a
/// client (or a test) can tell the context was sent.
pub fn conversation_answer(system: &str, turns: &[&str], tokens: u32) -> String {
    let conversation = turns.join("\n\n");
    let answer = tutor_answer(system, &conversation, tokens);
    match turns {
        [first, _, ..] if !answer.is_empty() => truncate_to_budget(
            format!("Following on from {}: {answer}", extract_topic(first)),
            tokens as usize * 4,
        ),
        _ => answer,
    }
}

/// Cuts `text` to at most `budget` characters, at a word boundary when there is one, ending
/// with a full stop so a short answer still reads as a sentence.
fn truncate_to_budget(mut text: String, budget: usize) -> String {
    if text.chars().count() <= budget {
        return text;
    }
    // Leave room for the closing '.'.
    let keep = budget.saturating_sub(1);
    let cut = text.char_indices().nth(keep).map_or(text.len(), |(i, _)| i);
    text.truncate(cut);
    // End at a sentence when one ends in the last quarter of the budget; otherwise at a word.
    match text
        .rfind(['.', '?', '!', '\n'])
        .filter(|i| *i * 4 >= cut * 3)
    {
        Some(end) => text.truncate(end),
        None => {
            if let Some(space) = text.rfind([' ', '\n']).filter(|i| *i > 0) {
                text.truncate(space);
            }
        }
    }
    // A dangling section heading ("Steps to try:", "1") says nothing; drop such lines.
    loop {
        let trimmed = text.trim_end_matches([' ', '.', ',', ';', '\n']).len();
        text.truncate(trimmed);
        let line_start = text.rfind('\n').map_or(0, |i| i + 1);
        let line = &text[line_start..];
        let dangling = line.ends_with(':') || (line_start > 0 && !line.contains(' '));
        if !dangling {
            break;
        }
        text.truncate(line_start);
    }
    if text.is_empty() {
        return "Ok.".chars().take(budget).collect();
    }
    if !text.ends_with(['?', '!']) {
        text.push('.');
    }
    text
}

/// The topic of the question: the last paragraph's question sentence without its lead-in
/// ("Can you explain ...", "What is ..."), at most 8 words.
fn extract_topic(prompt: &str) -> String {
    let last = prompt
        .rsplit("\n\n")
        .map(str::trim)
        .find(|p| !p.is_empty())
        .unwrap_or("");
    let sentence = last
        .split_inclusive(['?', '.', '!', '\n'])
        .map(str::trim)
        .find(|s| s.ends_with('?'))
        .or_else(|| last.split_inclusive(['.', '!', '\n']).map(str::trim).next())
        .unwrap_or("");
    let mut words: Vec<&str> = sentence
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'' && c != '-'))
        .filter(|w| !w.is_empty())
        .collect();
    // Drop the question's lead-in words so "How do I solve quadratic equations" -> "solve
    // quadratic equations".
    while let Some(first) = words.first() {
        if LEAD_INS.contains(&first.to_ascii_lowercase().as_str()) {
            words.remove(0);
        } else {
            break;
        }
    }
    words.truncate(8);
    let topic = words.join(" ");
    if topic.is_empty() {
        "this idea".to_owned()
    } else if topic.chars().next().is_some_and(char::is_uppercase)
        && !topic
            .split_whitespace()
            .next()
            .is_some_and(|w| w.len() > 1 && w.chars().all(|c| c.is_uppercase()))
        && topic.split_whitespace().count() > 1
    {
        // "Photosynthesis in plants" reads better mid-sentence as "photosynthesis in plants";
        // a leading acronym ("DNA") keeps its case.
        let mut chars = topic.chars();
        chars
            .next()
            .map(|c| c.to_lowercase().chain(chars).collect())
            .unwrap_or(topic)
    } else {
        topic
    }
}

const LEAD_INS: &[&str] = &[
    "can",
    "could",
    "would",
    "you",
    "please",
    "explain",
    "tell",
    "me",
    "about",
    "what",
    "is",
    "are",
    "was",
    "were",
    "how",
    "do",
    "does",
    "did",
    "i",
    "we",
    "why",
    "help",
    "understand",
    "the",
    "a",
    "an",
    "describe",
    "show",
    "teach",
    "hi",
    "hello",
    "hey",
    "so",
    "ok",
    "okay",
    "when",
    "should",
    "to",
    "define",
    "whats",
    "what's",
    "i'm",
    "im",
    "confused",
    "by",
    "with",
    "solve",
    "calculate",
    "find",
    "use",
    "write",
    "learn",
    "compute",
    "work",
    "out",
    "figure",
    "get",
    "make",
    "know",
    "need",
    "want",
    "really",
    "still",
    "don't",
    "dont",
    "not",
];

fn fill(template: &str, topic: &str) -> String {
    template.replace("{t}", topic)
}

/// School subject guessed from the system instruction (the tutor's persona) or the prompt,
/// used to pick a fitting worked example.
#[derive(Clone, Copy)]
enum Subject {
    Math,
    Physics,
    Chemistry,
    Biology,
    History,
    Language,
    Programming,
    General,
}

impl Subject {
    fn detect(system: &str, prompt: &str) -> Subject {
        const KEYWORDS: &[(&str, Subject)] = &[
            ("math", Subject::Math),
            ("algebra", Subject::Math),
            ("equation", Subject::Math),
            ("geometry", Subject::Math),
            ("fraction", Subject::Math),
            ("physics", Subject::Physics),
            ("force", Subject::Physics),
            ("gravity", Subject::Physics),
            ("energy", Subject::Physics),
            ("chemistry", Subject::Chemistry),
            ("reaction", Subject::Chemistry),
            ("acid", Subject::Chemistry),
            ("atom", Subject::Chemistry),
            ("biology", Subject::Biology),
            ("cell", Subject::Biology),
            ("photosynthesis", Subject::Biology),
            ("plant", Subject::Biology),
            ("history", Subject::History),
            ("war", Subject::History),
            ("english", Subject::Language),
            ("grammar", Subject::Language),
            ("writing", Subject::Language),
            ("essay", Subject::Language),
            ("programming", Subject::Programming),
            ("code", Subject::Programming),
            ("python", Subject::Programming),
            ("loop", Subject::Programming),
            ("computer", Subject::Programming),
        ];
        // The question names the subject more precisely than the tutor's persona.
        for text in [prompt, system] {
            let lower = text.to_ascii_lowercase();
            if let Some((_, subject)) = KEYWORDS.iter().find(|(k, _)| lower.contains(k)) {
                return *subject;
            }
        }
        Subject::General
    }

    fn examples(self) -> &'static [&'static str] {
        match self {
            Subject::Math => &[
                "x^2 - 5x + 6 = 0 factorises as (x - 2)(x - 3) = 0, so x = 2 or x = 3. Substituting x = 2 gives 4 - 10 + 6 = 0, which confirms it; try x = 3 yourself.",
                "to solve 2x + 6 = 14, subtract 6 from both sides to get 2x = 8, then divide both sides by 2, so x = 4. Substituting back, 2 times 4 plus 6 is 14, which confirms the answer.",
                "the area of a rectangle 3 cm wide and 5 cm long is 3 times 5, which is 15 square centimetres. Doubling only the length doubles the area to 30, which shows how the parts are linked.",
                "to add 1/3 and 1/4, rewrite both with the common denominator 12: 4/12 plus 3/12 equals 7/12. Checking with decimals, 0.333 plus 0.25 is about 0.583, and so is 7/12.",
            ],
            Subject::Physics => &[
                "a ball dropped from rest falls about 4.9 metres in the first second, because gravity accelerates it by 9.8 metres per second every second. After two seconds it has fallen about 19.6 metres.",
                "pushing a 2 kg box with a net force of 10 newtons gives it an acceleration of 10 / 2 = 5 metres per second squared, from F = m a. Double the mass and the same push gives half the acceleration.",
            ],
            Subject::Chemistry => &[
                "when you mix baking soda and vinegar, an acid reacts with a base and releases carbon dioxide gas, which is why it fizzes. The total mass is conserved; some of it simply escapes as gas.",
                "burning methane, CH4 + 2 O2 gives CO2 + 2 H2O. Count the atoms on each side: one carbon, four hydrogens and four oxygens both before and after, so the equation is balanced.",
            ],
            Subject::Biology => &[
                "a plant in sunlight takes in carbon dioxide and water and, using light energy, makes glucose and oxygen. Cover a leaf with foil and it stops making starch, which you can test with iodine.",
                "a red blood cell has no nucleus, which leaves more room for haemoglobin to carry oxygen. Asking how a cell's shape fits its job is a useful habit throughout biology.",
            ],
            Subject::History => &[
                "the printing press of the 1450s made books far cheaper, so ideas spread faster. Ask what changed before and after it, who gained, and who lost; that is the habit historians use for every event.",
                "the causes of a war are usually a mix of long-term tensions, such as rivalries and alliances, and a short-term trigger. Sorting causes into those two groups makes an essay much clearer.",
            ],
            Subject::Language => &[
                "in the sentence \"The dog that chased the cats was tired\", the verb agrees with \"dog\", not \"cats\", so it is \"was\", not \"were\". Finding the real subject first avoids that mistake.",
                "a strong paragraph opens with a topic sentence, gives evidence such as a quotation, explains how the evidence supports the point, and links back to the main argument.",
            ],
            Subject::Programming => &[
                "a loop that adds the numbers 1 to 5 keeps a running total: start at 0, add 1, then 2, and so on, ending with 15. Printing the total inside the loop shows each step and makes bugs easy to spot.",
                "a function that checks whether a number is even returns true when the remainder after dividing by 2 is 0. Testing it with 4, 7 and 0 covers the normal case, the other case and an edge case.",
            ],
            Subject::General => &[
                "imagine explaining the idea to a friend with a simple everyday case first, then a slightly harder one. If you can predict what happens in the harder case, you have really understood it.",
                "take one concrete case, write down what you know and what you want to find, and work through it slowly. Then change one detail and see how the result changes.",
            ],
        }
    }
}

const OPENINGS: &[&str] = &[
    "Great question! Let's work through {t} together.",
    "Good thinking to ask about {t}. Let's break it down step by step.",
    "Let's explore {t} carefully, one idea at a time.",
    "That's a really useful thing to understand. Here is a clear way to think about {t}.",
    "I'm glad you asked about {t}. Let's build it up from the basics.",
];

const CORE_IDEAS: &[&str] = &[
    "When you study {t}, the key is to see how the parts of the problem relate to each other, so name each part before doing anything else.",
    "Behind {t} there are only a few rules, and once you see why each rule is there, the rest becomes much easier to remember.",
    "Understanding {t} mostly means connecting ideas you already know, in the right order.",
    "A good way to picture {t}: a process with a clear start, a middle where something changes, and a result you can check.",
];

const STEPS: &[&str] = &[
    "Read the question carefully and underline what it is really asking.",
    "Write down what you already know about {t}, even if it seems obvious.",
    "Split the problem into smaller parts and solve one part at a time.",
    "Identify the rule or definition that applies, and say it in your own words.",
    "Apply that rule to the first small part and write each step clearly.",
    "Look for a pattern between the parts before moving on.",
    "Check your result: does it make sense, and does it answer the question?",
    "Compare your answer with a simpler case you are sure about.",
    "Explain your reasoning out loud or in writing, as if teaching someone else.",
];

const MISTAKES: &[&str] = &[
    "rushing to an answer about {t} before checking what the question asks. Slow down for the first step and the rest gets easier.",
    "memorising the steps for {t} without knowing why they work. If you know the reason, you can rebuild a step you forget.",
    "skipping the check at the end. A quick test with a simple case catches most slips.",
    "mixing up two similar ideas. Write each definition side by side and note how they differ.",
];

const CHECKS: &[&str] = &[
    "can you explain {t} in your own words, in two or three sentences?",
    "try a similar problem on your own and tell me your answer, and I'll give you feedback.",
    "what would change if one part of the example were different? Tell me what you think.",
    "which step above felt least clear? Tell me and we can go through it again together.",
];

const FURTHER: &[&str] = &[
    "To go further, try making up your own question about {t} and solving it.",
    "Practising a little every day helps much more than one long session.",
    "If you get stuck, go back to the step where things last made sense and start again from there.",
    "Drawing a quick diagram or table often makes the structure of the problem visible.",
    "Keep a short list of mistakes you have made; reviewing it before a test is very effective.",
    "Try explaining {t} to a friend or family member; teaching is one of the best ways to learn.",
];

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a: tiny, stable across Rust versions and platforms (unlike `DefaultHasher`, whose output
/// is not guaranteed), which keeps answers identical between builds.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// SplitMix64: a stable, seedable generator for the phrase choices.
struct Mix(u64);

impl Mix {
    fn new(seed: u64) -> Self {
        Mix(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_four_chars_rounded_up() {
        assert_eq!(count_tokens(""), 0);
        assert_eq!(count_tokens("abc"), 1);
        assert_eq!(count_tokens("abcd"), 1);
        assert_eq!(count_tokens("abcde"), 2);
        assert_eq!(count_tokens("éééé"), 1);
    }

    #[test]
    fn a_conversation_answer_depends_on_every_turn() {
        let system = "You are a maths tutor.";
        let single = conversation_answer(system, &["What is a derivative?"], 120);
        assert_eq!(single, tutor_answer(system, "What is a derivative?", 120));
        let follow_up = |first: &str, answer: &str| {
            conversation_answer(system, &[first, answer, "Can you show me an example?"], 120)
        };
        let a = follow_up("What is a derivative?", "A rate of change.");
        assert!(a.starts_with("Following on from derivative"), "{a}");
        assert!(count_tokens(&a) <= 120, "{a}");
        assert_ne!(a, follow_up("What is a fraction?", "A rate of change."));
        assert_ne!(a, follow_up("What is a derivative?", "A slope."));
        assert_ne!(
            a,
            conversation_answer(system, &["Can you show me an example?"], 120)
        );
    }

    #[test]
    fn answers_are_deterministic_and_sized() {
        let a = tutor_answer(
            "You are a maths tutor.",
            "How do I solve linear equations?",
            120,
        );
        let b = tutor_answer(
            "You are a maths tutor.",
            "How do I solve linear equations?",
            120,
        );
        assert_eq!(a, b);
        let tokens = count_tokens(&a);
        assert!((90..=120).contains(&tokens), "{tokens}: {a}");
        assert!(a.contains("linear equations"), "{a}");
        let other = tutor_answer("You are a maths tutor.", "What is a prime number?", 120);
        assert_ne!(a, other);
        for n in [0, 1, 2, 5, 17, 400, 1000] {
            let text = tutor_answer("", "Explain photosynthesis", n);
            assert!(count_tokens(&text) <= n, "{n}: {text}");
            assert!(n < 20 || count_tokens(&text) * 4 >= n * 3, "{n}: {text}");
        }
    }
}
