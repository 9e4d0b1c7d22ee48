//! One answer's text as it streams in, shared by every local request waiting on it.
//!
//! The text only grows; each reader keeps its own position, so a request that joins late first
//! reads everything produced so far (the replayed prefix) and then waits for more. Writers give
//! the byte offset of each piece: a piece that repeats text already here (a server that takes
//! over a question after its holder died asks the model again from the start) is skipped, and
//! one that disagrees with it or leaves a gap is refused, so readers never see two answers
//! spliced together; the final answer fills in whatever the pieces did not deliver.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// The growing text of one answer and its readers' wake-up signal.
#[derive(Debug)]
pub struct Fanout {
    text: Mutex<String>,
    /// The text's length and whether it is complete (no more pieces will come).
    progress: watch::Sender<(usize, bool)>,
    /// Set when pieces came from another server's stream (for the time-to-first-token label).
    relayed: AtomicBool,
}

/// What [`Fanout::push_at`] did with a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// New text was appended.
    Appended,
    /// The piece repeats text already here.
    Known,
    /// The piece disagrees with the text here or starts beyond its end: ignored.
    Refused,
}

impl Default for Fanout {
    fn default() -> Self {
        Fanout {
            text: Mutex::new(String::new()),
            progress: watch::Sender::new((0, false)),
            relayed: AtomicBool::new(false),
        }
    }
}

impl Fanout {
    /// An empty, open fan-out.
    pub fn new() -> Arc<Fanout> {
        Arc::new(Fanout::default())
    }

    /// Appends `piece`, which starts at byte `offset` of the answer.
    pub fn push_at(&self, offset: usize, piece: &str) -> Pushed {
        let mut text = self.text.lock();
        if self.progress.borrow().1 {
            return Pushed::Refused;
        }
        let outcome = overlap(&text, offset, piece);
        if let Overlap::Extends(from) = outcome {
            text.push_str(&piece[from..]);
            let len = text.len();
            drop(text);
            self.progress.send_replace((len, false));
            return Pushed::Appended;
        }
        if outcome == Overlap::Inside {
            Pushed::Known
        } else {
            Pushed::Refused
        }
    }

    /// Bytes of text held now.
    pub fn len(&self) -> usize {
        self.progress.borrow().0
    }

    /// True while no text arrived.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks that pieces now come from another server.
    pub fn mark_relayed(&self) {
        self.relayed.store(true, Ordering::Relaxed);
    }

    /// True when pieces came from another server.
    pub fn relayed(&self) -> bool {
        self.relayed.load(Ordering::Relaxed)
    }

    /// No more pieces: readers end once they have read everything.
    pub fn close(&self) {
        let _guard = self.text.lock();
        self.progress.send_modify(|(_, closed)| *closed = true);
    }

    /// A reader from the start of the answer.
    pub fn subscribe(self: &Arc<Self>) -> FanoutReader {
        FanoutReader {
            fanout: self.clone(),
            position: 0,
            progress: self.progress.subscribe(),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Overlap {
    /// The piece adds text from this byte of the piece on.
    Extends(usize),
    /// Everything in the piece is already in the text.
    Inside,
    /// It disagrees, or there is a gap before it.
    Conflict,
}

/// How `piece`, starting at byte `offset` of the answer, relates to `text` (its known prefix).
fn overlap(text: &str, offset: usize, piece: &str) -> Overlap {
    if offset > text.len() || piece.is_empty() {
        return if piece.is_empty() && offset <= text.len() {
            Overlap::Inside
        } else {
            Overlap::Conflict
        };
    }
    let shared = (text.len() - offset).min(piece.len());
    let (Some(ours), Some(theirs)) = (text.get(offset..offset + shared), piece.get(..shared))
    else {
        return Overlap::Conflict;
    };
    if ours != theirs {
        return Overlap::Conflict;
    }
    if shared == piece.len() {
        Overlap::Inside
    } else {
        Overlap::Extends(shared)
    }
}

/// What a client has been sent of an answer: new pieces are checked against it, so a client
/// switched to another source of the same answer (a re-asked call) gets no text twice.
#[derive(Debug, Default)]
pub struct Sent {
    text: String,
}

impl Sent {
    /// Nothing sent yet.
    pub fn new() -> Sent {
        Sent::default()
    }

    /// The part of `piece` (at byte `offset` of its answer) not sent yet, now counted as sent;
    /// `None` when it adds nothing or disagrees with what was sent.
    pub fn accept(&mut self, offset: usize, piece: &str) -> Option<String> {
        match overlap(&self.text, offset, piece) {
            Overlap::Extends(from) => {
                let new = piece[from..].to_owned();
                self.text.push_str(&new);
                Some(new)
            }
            Overlap::Inside | Overlap::Conflict => None,
        }
    }

    /// Everything sent so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// True before the first piece.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
}

/// One request's position in a [`Fanout`].
#[derive(Debug)]
pub struct FanoutReader {
    fanout: Arc<Fanout>,
    position: usize,
    progress: watch::Receiver<(usize, bool)>,
}

impl FanoutReader {
    /// The text not read yet and its byte offset, waiting until there is some; `None` once the
    /// answer is complete and everything was read.
    pub async fn next(&mut self) -> Option<(usize, String)> {
        loop {
            let (len, closed) = *self.progress.borrow_and_update();
            if len > self.position {
                let text = self.fanout.text.lock();
                let piece = text.get(self.position..len)?.to_owned();
                drop(text);
                let offset = self.position;
                self.position = len;
                return Some((offset, piece));
            }
            if closed {
                return None;
            }
            // The sender lives in the fan-out this reader holds, so this only fails if it is
            // gone, which cannot happen while we hold it.
            if self.progress.changed().await.is_err() {
                return None;
            }
        }
    }

    /// True when the pieces came from another server's stream.
    pub fn relayed(&self) -> bool {
        self.fanout.relayed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_late_reader_gets_the_prefix_then_the_rest() {
        let fanout = Fanout::new();
        assert_eq!(fanout.push_at(0, "Hello "), Pushed::Appended);
        assert_eq!(fanout.push_at(6, "wor"), Pushed::Appended);
        let mut late = fanout.subscribe();
        assert_eq!(late.next().await, Some((0, "Hello wor".to_owned())));
        fanout.push_at(9, "ld");
        fanout.close();
        assert_eq!(late.next().await, Some((9, "ld".to_owned())));
        assert_eq!(late.next().await, None);
    }

    #[test]
    fn a_restarted_answer_is_deduplicated_and_a_different_one_refused() {
        let fanout = Fanout::new();
        fanout.push_at(0, "The answer is 4.");
        assert_eq!(fanout.push_at(0, "The ans"), Pushed::Known);
        assert_eq!(fanout.push_at(7, "wer is 4. Yes"), Pushed::Appended);
        assert_eq!(fanout.push_at(0, "A different"), Pushed::Refused);
        assert_eq!(fanout.push_at(100, "gap"), Pushed::Refused);
        assert_eq!(*fanout.text.lock(), "The answer is 4. Yes");
    }

    #[test]
    fn sent_text_is_never_repeated() {
        let mut sent = Sent::new();
        assert_eq!(sent.accept(0, "ab"), Some("ab".to_owned()));
        assert_eq!(sent.accept(0, "abc"), Some("c".to_owned()));
        assert_eq!(sent.accept(1, "b"), None);
        assert_eq!(sent.accept(0, "x"), None);
        assert_eq!(sent.text(), "abc");
    }

    #[test]
    fn pieces_are_cut_on_character_boundaries_only() {
        let fanout = Fanout::new();
        fanout.push_at(0, "é");
        // Offset 1 is inside "é": refused rather than split.
        assert_eq!(fanout.push_at(1, "x"), Pushed::Refused);
    }
}
