//! Server-sent events (`text/event-stream`): framing as Gemini's `streamGenerateContent?alt=sse`
//! writes it, and the one decoder every reader in the workspace uses (the Gemini and
//! OpenAI-compatible clients, the load tester, the tests).
//!
//! Gemini frames each event as one `data:` line ended by `\r\n\r\n` and sends no `[DONE]`: the
//! stream ends when the connection closes. OpenAI-compatible servers end with `data: [DONE]`, and
//! the service's own stream names its events (`event: delta`) and sends `: ping` comments. The
//! decoder follows the WHATWG HTML "event stream interpretation" rules, so all of them decode
//! alike: lines end at `\n`, `\r\n` or `\r`; `data:` lines join with `\n`; a blank line
//! dispatches; comments are reported rather than dropped, since the tests and the load tester
//! count `: ping`. Two rules are the project's own: a byte sequence that is not UTF-8 is an error
//! (the spec replaces it with U+FFFD, which would hide a broken upstream inside a JSON string),
//! and an event or line larger than a limit is an error rather than unbounded memory.

mod stream;

pub use stream::{SseStream, StreamError};

use std::fmt;

/// Formats one SSE event carrying `json` exactly as Gemini frames it.
pub fn frame_event(json: &str) -> String {
    format!("data: {json}\r\n\r\n")
}

/// Largest event (its name, data and current line) a decoder holds unless told otherwise. The
/// service's `done` event carries a whole answer; 4 MiB is many times the longest one.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 4 << 20;

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, or `message` when the event has none (the spec's default).
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The last event ID: the latest `id:` field, which carries over to later events as the spec
    /// says; `None` until the stream sets one.
    pub id: Option<String>,
}

/// One decoded item of an event stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SseItem {
    /// An event completed by a blank line.
    Event(SseEvent),
    /// A comment line (`: ping`): the text after the colon, one leading space removed.
    Comment(String),
}

/// Why an event stream cannot be decoded. After one, the decoder returns it again on every call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SseError {
    /// A byte sequence that is not UTF-8, or is cut off by the end of the stream.
    InvalidUtf8 {
        /// Where the bad sequence starts, in bytes from the start of the stream.
        offset: u64,
    },
    /// An event, or one line of it, grew past the decoder's limit before it ended.
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::InvalidUtf8 { offset } => {
                write!(f, "event stream is not UTF-8 at byte {offset}")
            }
            SseError::TooLarge { limit } => {
                write!(f, "event stream has an event or line over {limit} bytes")
            }
        }
    }
}

impl std::error::Error for SseError {}

/// Incremental decoder: [`feed`](SseDecoder::feed) it bytes as they arrive (a chunk may end
/// anywhere, inside a line or a UTF-8 character), take items with
/// [`next_item`](SseDecoder::next_item) until `None`, and [`end`](SseDecoder::end) it when the body
/// ends. [`push`](SseDecoder::push) and [`finish`](SseDecoder::finish) do both steps at once.
#[derive(Debug)]
pub struct SseDecoder {
    /// Bytes received and not yet decoded from `start` on.
    buffer: Vec<u8>,
    start: usize,
    /// `buffer[start..scanned]` holds no line end: scanning resumes there after the next chunk.
    scanned: usize,
    /// Bytes of the stream before `buffer[0]`, for error offsets.
    offset: u64,
    /// The last line ended with `\r`: a `\n` arriving next belongs to that line end.
    after_cr: bool,
    /// No line decoded yet: a byte order mark may still start the stream.
    first_line: bool,
    /// The body ended: what is left is the last line and the last event.
    ended: bool,
    event: PendingEvent,
    last_id: Option<String>,
    max_event_bytes: usize,
    failed: Option<SseError>,
}

/// The event being built from its field lines.
#[derive(Debug, Default)]
struct PendingEvent {
    name: String,
    /// Every `data:` value followed by `\n`, as the spec's data buffer.
    data: String,
}

impl Default for SseDecoder {
    fn default() -> Self {
        SseDecoder::with_max_event_bytes(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseDecoder {
    /// A decoder with nothing buffered and the default size limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder that fails with [`SseError::TooLarge`] once an event or line exceeds `limit`
    /// bytes.
    pub fn with_max_event_bytes(limit: usize) -> Self {
        SseDecoder {
            buffer: Vec::new(),
            start: 0,
            scanned: 0,
            offset: 0,
            after_cr: false,
            first_line: true,
            ended: false,
            event: PendingEvent::default(),
            last_id: None,
            max_event_bytes: limit,
            failed: None,
        }
    }

    /// Adds a chunk of the body. Take what it completed with [`next_item`](Self::next_item).
    pub fn feed(&mut self, chunk: &[u8]) {
        // Decoded bytes go once they are at least half the buffer: moving the rest stays linear
        // in the body however small the chunks.
        if self.start > 0 && self.start >= self.buffer.len() - self.start {
            self.buffer.drain(..self.start);
            self.offset += self.start as u64;
            self.scanned -= self.start;
            self.start = 0;
        }
        self.buffer.extend_from_slice(chunk);
    }

    /// Marks the end of the body: the next calls to [`next_item`](Self::next_item) return the
    /// last line even without its line end, then the last event even without its blank line.
    /// The spec discards such an unfinished event; the model clients accept it (a server that
    /// closes right after its last `data:` line still gave a whole answer). Readers that count
    /// it as a cut check [`has_pending`](Self::has_pending) before ending.
    pub fn end(&mut self) {
        self.ended = true;
    }

    /// True when bytes of an unfinished line or event are held: a body that stops here was cut.
    pub fn has_pending(&self) -> bool {
        self.start < self.buffer.len() || !self.event.name.is_empty() || !self.event.data.is_empty()
    }

    /// The next complete item, or `None` until more bytes are fed (or, after
    /// [`end`](Self::end), when nothing is left).
    pub fn next_item(&mut self) -> Result<Option<SseItem>, SseError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.decode();
        if let Err(error) = &result {
            self.failed = Some(error.clone());
        }
        result
    }

    /// [`feed`](Self::feed) then every item the chunk completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseItem>, SseError> {
        self.feed(chunk);
        self.drain()
    }

    /// [`end`](Self::end) then every item left, in order.
    pub fn finish(&mut self) -> Result<Vec<SseItem>, SseError> {
        self.end();
        self.drain()
    }

    fn drain(&mut self) -> Result<Vec<SseItem>, SseError> {
        let mut items = Vec::new();
        while let Some(item) = self.next_item()? {
            items.push(item);
        }
        Ok(items)
    }

    fn decode(&mut self) -> Result<Option<SseItem>, SseError> {
        loop {
            if self.after_cr && self.start < self.buffer.len() {
                if self.buffer[self.start] == b'\n' {
                    self.start += 1;
                }
                self.after_cr = false;
            }
            let from = self.scanned.max(self.start);
            let line_end = self.buffer[from..]
                .iter()
                .position(|&b| b == b'\n' || b == b'\r');
            let (line_start, line_end) = match line_end {
                Some(at) => {
                    let end = from + at;
                    self.after_cr = self.buffer[end] == b'\r';
                    let line_start = self.start;
                    self.start = end + 1;
                    self.scanned = self.start;
                    (line_start, end)
                }
                None if self.ended && self.start < self.buffer.len() => {
                    let line_start = self.start;
                    self.start = self.buffer.len();
                    self.scanned = self.start;
                    (line_start, self.start)
                }
                None if self.ended => return Ok(self.event.dispatch(&self.last_id)),
                None => {
                    self.scanned = self.buffer.len();
                    let held = self.buffer.len() - self.start + self.event.size();
                    if held > self.max_event_bytes {
                        return Err(SseError::TooLarge {
                            limit: self.max_event_bytes,
                        });
                    }
                    return Ok(None);
                }
            };
            // Checked on whole lines too, so the error does not depend on how chunks fell.
            if line_end - line_start + self.event.size() > self.max_event_bytes {
                return Err(SseError::TooLarge {
                    limit: self.max_event_bytes,
                });
            }
            let bytes = &self.buffer[line_start..line_end];
            let line = std::str::from_utf8(bytes).map_err(|e| SseError::InvalidUtf8 {
                offset: self.offset + (line_start + e.valid_up_to()) as u64,
            })?;
            let line = if std::mem::take(&mut self.first_line) {
                line.strip_prefix('\u{feff}').unwrap_or(line)
            } else {
                line
            };
            // A line adds at most its own length: the event stays within the limit.
            let item = self.event.line(line, &mut self.last_id);
            if item.is_some() {
                return Ok(item);
            }
        }
    }
}

impl PendingEvent {
    fn size(&self) -> usize {
        self.name.len() + self.data.len()
    }

    /// Takes one line (without its line end) in; returns the item it completes, if any.
    fn line(&mut self, line: &str, last_id: &mut Option<String>) -> Option<SseItem> {
        if line.is_empty() {
            return self.dispatch(last_id);
        }
        if let Some(comment) = line.strip_prefix(':') {
            let comment = comment.strip_prefix(' ').unwrap_or(comment);
            return Some(SseItem::Comment(comment.to_owned()));
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => {
                self.name.clear();
                self.name.push_str(value);
            }
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            // The spec ignores an id holding NUL.
            "id" if !value.contains('\0') => *last_id = Some(value.to_owned()),
            // `retry:` sets a reconnection delay, and no reader here reconnects; the spec
            // ignores unknown fields.
            _ => {}
        }
        None
    }

    /// The blank line: the event if it has data (one without is dropped, as the spec says).
    fn dispatch(&mut self, last_id: &Option<String>) -> Option<SseItem> {
        if self.data.is_empty() {
            self.name.clear();
            return None;
        }
        self.data.pop();
        let event = if self.name.is_empty() {
            "message".to_owned()
        } else {
            std::mem::take(&mut self.name)
        };
        Some(SseItem::Event(SseEvent {
            event,
            data: std::mem::take(&mut self.data),
            id: last_id.clone(),
        }))
    }
}

/// Decodes a whole body into its events (comments skipped), accepting an unfinished last event
/// as [`SseDecoder::end`] describes.
pub fn parse_events(body: impl AsRef<[u8]>) -> Result<Vec<SseEvent>, SseError> {
    let mut decoder = SseDecoder::new();
    let mut items = decoder.push(body.as_ref())?;
    items.extend(decoder.finish()?);
    Ok(items
        .into_iter()
        .filter_map(|item| match item {
            SseItem::Event(event) => Some(event),
            SseItem::Comment(_) => None,
        })
        .collect())
}

#[cfg(test)]
mod tests;
