//! Server-sent events framing as `streamGenerateContent?alt=sse` uses it: each event is one or more
//! `data:` lines ended by a blank line; Google separates events with `\r\n\r\n`. There is no
//! `[DONE]` sentinel: the stream ends when the connection closes.

/// Formats one SSE event carrying `json` exactly as Gemini frames it.
pub fn frame_event(json: &str) -> String {
    format!("data: {json}\r\n\r\n")
}

/// Incremental SSE decoder: feed it bytes as they arrive, get whole event payloads back.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buffer: String,
    data: Vec<String>,
}

impl SseDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a chunk of the body and returns the payloads of the events it completed.
    pub fn push(&mut self, chunk: &str) -> Vec<String> {
        self.buffer.push_str(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.find('\n') {
            let line: String = self.buffer.drain(..=end).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(self.data.join("\n"));
                    self.data.clear();
                }
            } else if let Some(value) = line.strip_prefix("data:") {
                self.data
                    .push(value.strip_prefix(' ').unwrap_or(value).to_owned());
            }
            // Comments (":...") and other fields (event:, id:, retry:) carry nothing Gemini uses.
        }
        events
    }

    /// Ends the stream: an event not yet closed by a blank line is returned if it has data.
    pub fn finish(mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buffer);
        let mut events = self.push(&rest);
        if !rest.is_empty() && !rest.ends_with('\n') {
            events.extend(self.push("\n"));
        }
        if !self.data.is_empty() {
            events.push(self.data.join("\n"));
        }
        events.pop()
    }
}

/// Splits a whole SSE body into its event payloads.
pub fn parse_events(body: &str) -> Vec<String> {
    let mut decoder = SseDecoder::new();
    let mut events = decoder.push(body);
    events.extend(decoder.finish());
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_events_split_across_chunks() {
        let body = "data: {\"a\":1}\r\n\r\ndata: {\"b\":2}\r\n\r\n";
        let mut decoder = SseDecoder::new();
        let mut got = Vec::new();
        for chunk in body.as_bytes().chunks(5) {
            got.extend(decoder.push(std::str::from_utf8(chunk).unwrap()));
        }
        assert_eq!(got, vec!["{\"a\":1}", "{\"b\":2}"]);
        assert_eq!(decoder.finish(), None);
    }

    #[test]
    fn unterminated_last_event_is_returned_at_finish() {
        assert_eq!(parse_events("data: x\n\ndata: y"), vec!["x", "y"]);
    }
}
