//! Building Gemini response bodies: what the simulator (and the service's offline model)
//! answers, independent of latency, quotas and faults.

use crate::answer::{chars_to_tokens, conversation_answer};
use crate::{
    Candidate, Content, FinishReason, GenerateContentRequest, GenerateContentResponse,
    ModalityTokenCount, PromptFeedback, SafetyRating, UsageMetadata,
};
use rand::RngExt;

/// What shapes an answer: the simulator's answer settings, borrowed so building a response
/// allocates nothing for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerSettings<'a> {
    /// Length of a generated answer, in tokens (a token is 4 characters, rounded up).
    pub answer_tokens: u32,
    /// Thinking tokens reported by thinking models (2.5 and 3 families); 0 reports none.
    pub thinking_tokens: u32,
    /// A prompt containing this text is blocked (`promptFeedback.blockReason`). Empty: never.
    pub block_trigger: &'a str,
    /// The `blockReason` given to blocked prompts.
    pub block_reason: &'a str,
    /// A prompt containing this text gets its answer filtered (`finishReason: SAFETY`). Empty:
    /// never.
    pub safety_trigger: &'a str,
    /// A prompt containing this text is answered, but rated `HARM_CATEGORY_DANGEROUS_CONTENT`
    /// `HIGH` in `promptFeedback.safetyRatings` and in the candidate's `safetyRatings`. Empty:
    /// never.
    pub harm_trigger: &'a str,
    /// `usageMetadata.serviceTier`; `None` leaves the field out.
    pub service_tier: Option<&'a str>,
    /// Answer tokens per `streamGenerateContent` event.
    pub chunk_tokens: u32,
}

impl AnswerSettings<'static> {
    /// The simulator's defaults (also the offline model's, apart from its answer length).
    pub const DEFAULT: AnswerSettings<'static> = AnswerSettings {
        answer_tokens: 120,
        thinking_tokens: 0,
        block_trigger: "[[block]]",
        block_reason: "PROHIBITED_CONTENT",
        safety_trigger: "[[unsafe]]",
        harm_trigger: "",
        service_tier: Some("standard"),
        chunk_tokens: 32,
    };
}

impl Default for AnswerSettings<'static> {
    fn default() -> Self {
        AnswerSettings::DEFAULT
    }
}

/// What the simulator would answer to `request` for `model`, without latency, quotas or faults
/// (a fresh random `responseId` aside, the same request always gets the same answer).
pub fn simulate_response(
    request: &GenerateContentRequest,
    model: &str,
    settings: &AnswerSettings<'_>,
) -> GenerateContentResponse {
    let plan = plan(request, model, settings);
    full_response(&plan, model, response_id(), settings)
}

/// What a request will be answered, before it is shaped into one response or stream chunks.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Input tokens (system instruction and contents).
    pub prompt_tokens: u32,
    /// The prompt hit the block trigger: no candidates.
    pub blocked: bool,
    /// The answer text (after stop sequences and `maxOutputTokens`).
    pub text: String,
    /// How the answer ends.
    pub finish: FinishReason,
    /// Reported thinking tokens.
    pub thoughts: Option<u32>,
    /// The prompt hit the harm trigger: answered, rated dangerous (`HIGH`).
    pub harmful: bool,
}

impl Plan {
    /// True when the model gives no answer: a blocked prompt or a filtered (SAFETY) answer.
    pub fn refused(&self) -> bool {
        self.blocked || self.finish == FinishReason::Safety
    }
}

fn text_parts<'a>(contents: impl Iterator<Item = &'a Content>) -> impl Iterator<Item = &'a str> {
    contents.flat_map(|c| c.parts.iter().filter_map(|p| p.text.as_deref()))
}

/// Input tokens of a system instruction plus contents: the characters of every text part,
/// 4 to a token, rounded up once (so it equals `count_tokens` of the concatenated text).
pub fn prompt_tokens(system: Option<&Content>, contents: &[Content]) -> u32 {
    let chars: usize = text_parts(system.into_iter().chain(contents))
        .map(|t| t.chars().count())
        .sum();
    chars_to_tokens(chars)
}

/// True for models that think by default (2.5 and 3 families).
fn is_thinking_model(model: &str) -> bool {
    model.starts_with("gemini-2.5") || model.starts_with("gemini-3")
}

/// Decides the answer to `request`.
pub fn plan(request: &GenerateContentRequest, model: &str, config: &AnswerSettings<'_>) -> Plan {
    let system = request.system_instruction.as_ref();
    let prompt_tokens = prompt_tokens(system, &request.contents);
    let trigger = config.block_trigger;
    let blocked = !trigger.is_empty()
        && text_parts(system.into_iter().chain(&request.contents)).any(|t| t.contains(trigger));
    if blocked {
        return Plan {
            prompt_tokens,
            blocked,
            text: String::new(),
            finish: FinishReason::Stop,
            thoughts: None,
            harmful: false,
        };
    }
    let unsafe_trigger = config.safety_trigger;
    if !unsafe_trigger.is_empty()
        && text_parts(system.into_iter().chain(&request.contents))
            .any(|t| t.contains(unsafe_trigger))
    {
        return Plan {
            prompt_tokens,
            blocked: false,
            text: String::new(),
            finish: FinishReason::Safety,
            thoughts: None,
            harmful: false,
        };
    }
    let system_text = system.map(Content::joined_text).unwrap_or_default();
    let turns: Vec<String> = request.contents.iter().map(Content::joined_text).collect();
    let turns: Vec<&str> = turns.iter().map(String::as_str).collect();
    let mut text = conversation_answer(&system_text, &turns, config.answer_tokens);
    let generation = request.generation_config.as_ref();
    let mut finish = FinishReason::Stop;
    if let Some(stops) = generation.and_then(|g| g.stop_sequences.as_ref()) {
        if let Some(cut) = stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            text.truncate(cut);
        }
    }
    // 0 means "not set" for Gemini, which then uses the model's own limit.
    if let Some(max) = generation
        .and_then(|g| g.max_output_tokens)
        .filter(|m| *m > 0)
    {
        let max_chars = max as usize * 4;
        if let Some((cut, _)) = text.char_indices().nth(max_chars) {
            text.truncate(cut);
            finish = FinishReason::MaxTokens;
        }
    }
    let thoughts = if config.thinking_tokens > 0 && is_thinking_model(model) {
        match generation
            .and_then(|g| g.thinking_config.as_ref())
            .and_then(|t| t.thinking_budget)
        {
            Some(0) => None,
            Some(budget) if budget > 0 => Some(
                config
                    .thinking_tokens
                    .min(u32::try_from(budget).unwrap_or(u32::MAX)),
            ),
            _ => Some(config.thinking_tokens),
        }
    } else {
        None
    };
    let harm = config.harm_trigger;
    let harmful = !harm.is_empty()
        && text_parts(system.into_iter().chain(&request.contents)).any(|t| t.contains(harm));
    Plan {
        prompt_tokens,
        blocked,
        text,
        finish,
        thoughts,
        harmful,
    }
}

/// The ratings of a harmful prompt (and its answer): dangerous content `HIGH`, the rest
/// `NEGLIGIBLE`, in the order Gemini lists them.
pub fn harmful_ratings() -> Vec<SafetyRating> {
    [
        ("HARM_CATEGORY_HATE_SPEECH", "NEGLIGIBLE"),
        ("HARM_CATEGORY_DANGEROUS_CONTENT", "HIGH"),
        ("HARM_CATEGORY_HARASSMENT", "NEGLIGIBLE"),
        ("HARM_CATEGORY_SEXUALLY_EXPLICIT", "NEGLIGIBLE"),
    ]
    .into_iter()
    .map(|(category, probability)| SafetyRating {
        category: category.to_owned(),
        probability: probability.to_owned(),
        blocked: None,
    })
    .collect()
}

/// The `promptFeedback` of an answered prompt: its ratings when it was harmful, else none.
fn prompt_feedback(plan: &Plan) -> Option<PromptFeedback> {
    plan.harmful.then(|| PromptFeedback {
        block_reason: None,
        safety_ratings: Some(harmful_ratings()),
    })
}

/// A fresh `responseId`: 23 characters of the URL-safe base64 alphabet, like Google's.
pub fn response_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    (0..23)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

fn usage(plan: &Plan, output_tokens: Option<u32>, config: &AnswerSettings<'_>) -> UsageMetadata {
    let thoughts = plan.thoughts.unwrap_or(0);
    UsageMetadata {
        prompt_token_count: plan.prompt_tokens,
        candidates_token_count: output_tokens.filter(|n| *n > 0),
        total_token_count: plan.prompt_tokens + output_tokens.unwrap_or(0) + thoughts,
        thoughts_token_count: plan.thoughts,
        cached_content_token_count: None,
        prompt_tokens_details: Some(vec![ModalityTokenCount {
            modality: "TEXT".to_owned(),
            token_count: plan.prompt_tokens,
        }]),
        service_tier: config.service_tier.map(str::to_owned),
    }
}

fn blocked_response(
    plan: &Plan,
    model: &str,
    id: String,
    config: &AnswerSettings<'_>,
) -> GenerateContentResponse {
    GenerateContentResponse {
        candidates: Vec::new(),
        prompt_feedback: Some(PromptFeedback {
            block_reason: Some(config.block_reason.to_owned()),
            safety_ratings: None,
        }),
        usage_metadata: Some(usage(plan, None, config)),
        model_version: Some(model.to_owned()),
        response_id: Some(id),
    }
}

/// A filtered answer, shaped like finish_safety.json: `content: {}`, no index, the ratings
/// with the category that tripped the filter marked `blocked`, no output tokens.
fn safety_response(
    plan: &Plan,
    model: &str,
    id: String,
    config: &AnswerSettings<'_>,
) -> GenerateContentResponse {
    let rating = |category: &str, probability: &str, blocked: Option<bool>| SafetyRating {
        category: category.to_owned(),
        probability: probability.to_owned(),
        blocked,
    };
    GenerateContentResponse {
        candidates: vec![Candidate {
            content: Some(Content {
                role: None,
                parts: Vec::new(),
            }),
            finish_reason: Some(FinishReason::Safety),
            index: None,
            safety_ratings: Some(vec![
                rating("HARM_CATEGORY_HATE_SPEECH", "LOW", Some(true)),
                rating("HARM_CATEGORY_DANGEROUS_CONTENT", "NEGLIGIBLE", None),
                rating("HARM_CATEGORY_HARASSMENT", "NEGLIGIBLE", None),
                rating("HARM_CATEGORY_SEXUALLY_EXPLICIT", "NEGLIGIBLE", None),
            ]),
        }],
        prompt_feedback: None,
        usage_metadata: Some(usage(plan, None, config)),
        model_version: Some(model.to_owned()),
        response_id: Some(id),
    }
}

fn candidate(text: &str, finish: Option<FinishReason>, harmful: bool) -> Candidate {
    Candidate {
        // An empty answer is `{"role": "model"}` without parts, as in max_tokens.json.
        content: Some(if text.is_empty() {
            Content {
                role: Some("model".to_owned()),
                parts: Vec::new(),
            }
        } else {
            Content::text(Some("model"), text)
        }),
        // Ratings come with the last event, as Gemini sends them.
        safety_ratings: (harmful && finish.is_some()).then(harmful_ratings),
        finish_reason: finish,
        index: Some(0),
    }
}

/// The whole `generateContent` response for a plan.
pub fn full_response(
    plan: &Plan,
    model: &str,
    id: String,
    config: &AnswerSettings<'_>,
) -> GenerateContentResponse {
    if plan.blocked {
        return blocked_response(plan, model, id, config);
    }
    if plan.finish == FinishReason::Safety {
        return safety_response(plan, model, id, config);
    }
    let output = chars_to_tokens(plan.text.chars().count());
    GenerateContentResponse {
        candidates: vec![candidate(
            &plan.text,
            Some(plan.finish.clone()),
            plan.harmful,
        )],
        prompt_feedback: prompt_feedback(plan),
        usage_metadata: Some(usage(plan, Some(output), config)),
        model_version: Some(model.to_owned()),
        response_id: Some(id),
    }
}

/// The events of `streamGenerateContent` for a plan: text deltas of `chunk_tokens` tokens,
/// cumulative usage, the finish reason on the last event only, one `responseId` throughout.
pub fn stream_responses(
    plan: &Plan,
    model: &str,
    id: &str,
    config: &AnswerSettings<'_>,
) -> Vec<GenerateContentResponse> {
    if plan.blocked {
        return vec![blocked_response(plan, model, id.to_owned(), config)];
    }
    if plan.finish == FinishReason::Safety {
        return vec![safety_response(plan, model, id.to_owned(), config)];
    }
    let chunk_chars = (config.chunk_tokens.max(1) as usize) * 4;
    let mut pieces: Vec<&str> = Vec::new();
    let mut start = 0;
    let mut chars = 0;
    for (index, _) in plan.text.char_indices() {
        if chars == chunk_chars {
            pieces.push(&plan.text[start..index]);
            start = index;
            chars = 0;
        }
        chars += 1;
    }
    if start < plan.text.len() || pieces.is_empty() {
        pieces.push(&plan.text[start..]);
    }
    let last = pieces.len() - 1;
    let mut sent_chars = 0;
    pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            sent_chars += piece.chars().count();
            let finish = (i == last).then(|| plan.finish.clone());
            GenerateContentResponse {
                candidates: vec![candidate(piece, finish, plan.harmful)],
                // The prompt's ratings come with the first event.
                prompt_feedback: if i == 0 { prompt_feedback(plan) } else { None },
                usage_metadata: Some(usage(plan, Some(chars_to_tokens(sent_chars)), config)),
                model_version: Some(model.to_owned()),
                response_id: Some(id.to_owned()),
            }
        })
        .collect()
}
