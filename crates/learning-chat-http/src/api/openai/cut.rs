//! The client's `max_tokens` and `stop`, applied to the answer it is sent. The model's answer
//! itself is not changed (it is cached and shared whole): only this client's copy ends early,
//! the same way whether it is sent whole or streamed.

/// Characters per token, the service's estimate (as `gemini_wire::answer::count_tokens`).
const CHARS_PER_TOKEN: usize = 4;

/// Why the copy sent ended before the answer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// At `max_tokens`.
    Length,
    /// Before a `stop` sequence.
    Stop,
}

/// Where a client's copy of an answer ends; fed the answer piece by piece.
#[derive(Debug)]
pub struct Cut {
    max_chars: Option<usize>,
    stop: Vec<String>,
    sent_chars: usize,
    /// The end of the text so far that may begin a stop sequence: held back until the next
    /// piece shows whether it does.
    held: String,
    ended: Option<Ended>,
}

impl Cut {
    /// At most `max_tokens` tokens, ending before the first of `stop`.
    pub fn new(max_tokens: Option<u32>, stop: Vec<String>) -> Cut {
        Cut {
            max_chars: max_tokens.map(|t| (t as usize).saturating_mul(CHARS_PER_TOKEN)),
            stop,
            sent_chars: 0,
            held: String::new(),
            ended: None,
        }
    }

    /// True when nothing is ever cut: the answer goes out as it is.
    pub fn is_none(&self) -> bool {
        self.max_chars.is_none() && self.stop.is_empty()
    }

    /// Why the copy ended early, if it did.
    pub fn ended(&self) -> Option<Ended> {
        self.ended
    }

    /// The part of the next `piece` to send now (possibly empty).
    pub fn piece(&mut self, piece: &str) -> String {
        if self.ended.is_some() {
            return String::new();
        }
        let mut text = std::mem::take(&mut self.held);
        text.push_str(piece);
        if let Some(at) = self.first_stop(&text) {
            text.truncate(at);
            self.ended = Some(Ended::Stop);
        } else {
            let keep = self.stop_prefix_len(&text);
            self.held = text.split_off(text.len() - keep);
        }
        self.limit(text)
    }

    /// What is still held back, at the end of the answer.
    pub fn finish(&mut self) -> String {
        if self.ended.is_some() {
            return String::new();
        }
        let text = std::mem::take(&mut self.held);
        self.limit(text)
    }

    /// The whole of a complete `answer`, cut.
    pub fn whole(&mut self, answer: &str) -> String {
        let mut text = self.piece(answer);
        text.push_str(&self.finish());
        text
    }

    /// Byte index of the earliest stop sequence in `text`.
    fn first_stop(&self, text: &str) -> Option<usize> {
        self.stop.iter().filter_map(|s| text.find(s.as_str())).min()
    }

    /// Bytes at the end of `text` that are the beginning of a stop sequence.
    fn stop_prefix_len(&self, text: &str) -> usize {
        let mut longest = 0;
        for stop in &self.stop {
            for (end, _) in stop.char_indices().skip(1) {
                if end > longest && text.ends_with(&stop[..end]) {
                    longest = end;
                }
            }
        }
        longest
    }

    /// `text` within `max_tokens`, counting what went out before.
    fn limit(&mut self, mut text: String) -> String {
        let Some(max) = self.max_chars else {
            return text;
        };
        let room = max.saturating_sub(self.sent_chars);
        match text.char_indices().nth(room) {
            Some((at, _)) => {
                text.truncate(at);
                self.sent_chars = max;
                self.ended = Some(Ended::Length);
                self.held.clear();
            }
            None => self.sent_chars += text.chars().count(),
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_sequence_split_across_pieces_ends_the_copy_before_it() {
        let mut cut = Cut::new(None, vec!["END".to_owned()]);
        assert_eq!(cut.piece("one two E"), "one two ");
        assert_eq!(cut.piece("N"), "");
        assert_eq!(cut.piece("D three"), "");
        assert_eq!(cut.ended(), Some(Ended::Stop));
        assert_eq!(cut.finish(), "");
    }

    #[test]
    fn a_held_back_prefix_that_is_no_stop_goes_out() {
        let mut cut = Cut::new(None, vec!["END".to_owned()]);
        assert_eq!(cut.piece("an E"), "an ");
        assert_eq!(cut.piece("x"), "Ex");
        assert_eq!(cut.piece("tra E"), "tra ");
        assert_eq!(cut.finish(), "E");
        assert_eq!(cut.ended(), None);
    }

    #[test]
    fn max_tokens_keeps_four_characters_a_token_whole_or_streamed() {
        let answer = "abcdefghijklmnopqrstuvwxyz";
        assert_eq!(Cut::new(Some(2), Vec::new()).whole(answer), "abcdefgh");
        let mut cut = Cut::new(Some(2), Vec::new());
        let streamed: String = ["abc", "def", "ghi", "jkl"]
            .iter()
            .map(|p| cut.piece(p))
            .collect();
        assert_eq!(streamed, "abcdefgh");
        assert_eq!(cut.ended(), Some(Ended::Length));
    }
}
