//! Prints a few generated answers, to eyeball their tone: `cargo run -p gemini-sim --example answers`.

fn main() {
    let cases = [
        (
            "You are a friendly maths tutor.",
            "How do I solve quadratic equations?",
            120,
        ),
        (
            "You are a biology tutor.",
            "Can you explain photosynthesis?",
            120,
        ),
        ("", "hi", 60),
        (
            "You are a history tutor.",
            "Why did World War I start?\n\nI'm confused by the alliances.",
            200,
        ),
        (
            "You are a programming tutor.",
            "What is a for loop in Python?",
            30,
        ),
    ];
    for (system, prompt, tokens) in cases {
        let answer = gemini_sim::answer::tutor_answer(system, prompt, tokens);
        println!(
            "--- {prompt:?} ({tokens} tokens asked, {} got)\n{answer}\n",
            gemini_sim::answer::count_tokens(&answer)
        );
    }
}
