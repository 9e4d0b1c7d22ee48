//! An incremental `text/event-stream` decoder that keeps what the service's stream endpoint
//! needs: each event's name (`delta`, `done`, `error`) and the comments (`: ping`).
//!
//! gemini-wire's `SseDecoder` is not reused: it drops `event:` names and comments, which is all
//! Gemini needs, and it takes `&str`, while network chunks may split a UTF-8 character.

/// One decoded item of an event stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SseItem {
    /// An event: its `event:` name (`message` when absent, as the SSE spec says) and its data
    /// lines joined with `\n`.
    Event {
        /// The `event:` field.
        name: String,
        /// The `data:` lines.
        data: String,
    },
    /// A comment line (`: ping`), without the colon and the optional space.
    Comment(String),
}

/// Feed it the body's bytes as they arrive; it returns every item the bytes completed.
#[derive(Debug, Default)]
pub struct EventDecoder {
    /// Bytes of a line not yet ended.
    line: Vec<u8>,
    /// The event being built: name and data lines seen so far.
    name: Option<String>,
    data: Vec<String>,
    /// The previous chunk ended with `\r`: a `\n` starting the next one belongs to it.
    after_cr: bool,
}

impl EventDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> EventDecoder {
        EventDecoder::default()
    }

    /// Adds a chunk of the body; returns the items it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseItem> {
        let mut items = Vec::new();
        for &byte in chunk {
            let after_cr = std::mem::take(&mut self.after_cr);
            match byte {
                // A line ends at CR, LF or CRLF (the SSE spec allows all three).
                b'\n' if after_cr => {}
                b'\n' => self.end_line(&mut items),
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(&mut items);
                }
                _ => self.line.push(byte),
            }
        }
        items
    }

    /// Bytes held for an event or line not yet complete (a stream that ends with some is cut).
    pub fn pending(&self) -> bool {
        !self.line.is_empty() || self.name.is_some() || !self.data.is_empty()
    }

    fn end_line(&mut self, items: &mut Vec<SseItem>) {
        let line = std::mem::take(&mut self.line);
        // Invalid UTF-8 cannot be valid JSON either; the replacement keeps the event countable.
        let line = String::from_utf8_lossy(&line);
        if line.is_empty() {
            // A blank line dispatches the event; one without data is dropped (SSE spec).
            let name = self.name.take();
            if !self.data.is_empty() {
                items.push(SseItem::Event {
                    name: name.unwrap_or_else(|| "message".to_owned()),
                    data: std::mem::take(&mut self.data).join("\n"),
                });
            }
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            items.push(SseItem::Comment(
                comment.strip_prefix(' ').unwrap_or(comment).to_owned(),
            ));
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => self.name = Some(value.to_owned()),
            "data" => self.data.push(value.to_owned()),
            // id: and retry: mean nothing to a load tester.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, data: &str) -> SseItem {
        SseItem::Event {
            name: name.to_owned(),
            data: data.to_owned(),
        }
    }

    #[test]
    fn events_comments_and_names_in_any_chunking() {
        let body = ": ping\n\nevent: delta\ndata: {\"text\":\"é\"}\n\nevent: done\r\ndata: {\"cached\":true}\r\n\r\ndata: a\ndata: b\n\n";
        let expected = vec![
            SseItem::Comment("ping".to_owned()),
            event("delta", "{\"text\":\"é\"}"),
            event("done", "{\"cached\":true}"),
            event("message", "a\nb"),
        ];
        for size in 1..body.len() {
            let mut decoder = EventDecoder::new();
            let mut got = Vec::new();
            for chunk in body.as_bytes().chunks(size) {
                got.extend(decoder.push(chunk));
            }
            assert_eq!(got, expected, "chunks of {size}");
            assert!(!decoder.pending());
        }
    }

    #[test]
    fn an_unfinished_event_is_pending() {
        let mut decoder = EventDecoder::new();
        assert!(decoder.push(b"event: delta\ndata: {\"te").is_empty());
        assert!(decoder.pending());
        // A name without data is dropped at the blank line.
        let mut decoder = EventDecoder::new();
        assert!(decoder.push(b"event: delta\n\n").is_empty());
        assert!(!decoder.pending());
    }
}
