//! Metrics of streamed answers: time to first token, open streams, bytes: each declared once, next to the code it measures;
//! `crate::metrics::install` describes them with the rest.

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use std::time::Duration;

/// Time from a streaming request's arrival to its first answer text sent, by source (`cached`,
/// `coalesced`: joined a call already in flight here or on another server, `fresh`).
pub const STREAM_TTFT: &str = "learning_chat_stream_time_to_first_token_seconds";

/// Streams open now (`POST /api/v1/agents/{agent_id}/stream` responses being sent).
pub const STREAMS_OPEN: &str = "learning_chat_streams_open";

/// The configured bound on open streams per server (`stream.max_open`).
pub const STREAMS_LIMIT: &str = "learning_chat_streams_limit";

/// Streams refused 503 at `stream.max_open`.
pub const STREAMS_REFUSED: &str = "learning_chat_streams_refused_total";

/// Bytes of server-sent events written to clients.
pub const STREAM_BYTES: &str = "learning_chat_stream_bytes_total";

/// Records a stream's time to its first answer text, by source (`cached`/`coalesced`/`fresh`).
pub fn stream_ttft(source: &'static str, elapsed: Duration) {
    histogram!(STREAM_TTFT, "source" => source).record(elapsed.as_secs_f64());
}

/// Sets the number of open streams.
pub fn streams_open(open: usize) {
    gauge!(STREAMS_OPEN).set(open as f64);
}

/// Sets the bound on open streams.
pub fn streams_limit(limit: usize) {
    gauge!(STREAMS_LIMIT).set(limit as f64);
}

/// Counts a stream refused at the open-stream bound.
pub fn stream_refused() {
    counter!(STREAMS_REFUSED).increment(1);
}

/// Counts server-sent event bytes written.
pub fn stream_bytes(bytes: usize) {
    counter!(STREAM_BYTES).increment(bytes as u64);
}

/// Describes these metrics (their help text) to the installed recorder.
pub(crate) fn describe() {
    describe_histogram!(
        STREAM_TTFT,
        Unit::Seconds,
        "Time to the first answer text of a stream, by source."
    );
    describe_gauge!(STREAMS_OPEN, "Streams open now.");
    describe_gauge!(STREAMS_LIMIT, "Bound on open streams per server.");
    describe_counter!(
        STREAMS_REFUSED,
        "Streams refused 503 at the open-stream bound."
    );
    describe_counter!(STREAM_BYTES, "Server-sent event bytes written.");
}
