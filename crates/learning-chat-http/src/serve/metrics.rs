//! Metrics of the server loop: client connections and their read, idle and send bounds: each declared once, next to the code it measures;
//! `crate::metrics::install` describes them with the rest.

use metrics::{counter, describe_counter, describe_gauge, gauge};

/// Client connections open now.
pub const HTTP_CONNECTIONS_OPEN: &str = "learning_chat_http_connections_open";

/// The configured bound on open client connections (`server.max_connections`).
pub const HTTP_CONNECTIONS_LIMIT: &str = "learning_chat_http_connections_limit";

/// Client connections accepted.
pub const HTTP_CONNECTIONS: &str = "learning_chat_http_connections_total";

/// Times the accept loop waited because `server.max_connections` were open.
pub const HTTP_CONNECTION_LIMIT_WAITS: &str = "learning_chat_http_connection_limit_waits_total";

/// Connections closed or requests answered 408 by a read bound, by phase (header/body/idle).
pub const HTTP_CONNECTION_TIMEOUTS: &str = "learning_chat_http_connection_timeouts_total";

/// Responses dropped because the client took no data for `server.send_stall_timeout_ms`, by
/// protocol (`http1`/`http2`).
pub const HTTP_STALLED_RESPONSES: &str = "learning_chat_http_stalled_responses_total";

/// Connections closed because their peer stalled (an HTTP/1 response, or
/// `server.max_stalled_streams_per_connection` HTTP/2 streams).
pub const HTTP_STALLED_CONNECTIONS_CLOSED: &str =
    "learning_chat_http_stalled_connections_closed_total";

/// Tracks open client connections (+1 on accept, -1 on close).
pub fn http_connections_open(delta: f64) {
    gauge!(HTTP_CONNECTIONS_OPEN).increment(delta);
}

/// Sets the configured bound on open client connections, and makes every connection series
/// exist from the start (at 0), so rates and alerts see them before the first event.
pub fn http_connections_limit(limit: usize) {
    gauge!(HTTP_CONNECTIONS_LIMIT).set(limit as f64);
    gauge!(HTTP_CONNECTIONS_OPEN).increment(0.0);
    counter!(HTTP_CONNECTIONS).increment(0);
    counter!(HTTP_CONNECTION_LIMIT_WAITS).increment(0);
    for phase in ["header", "body", "idle"] {
        counter!(HTTP_CONNECTION_TIMEOUTS, "phase" => phase).increment(0);
    }
    for protocol in ["http1", "http2"] {
        counter!(HTTP_STALLED_RESPONSES, "protocol" => protocol).increment(0);
    }
    counter!(HTTP_STALLED_CONNECTIONS_CLOSED).increment(0);
}

/// Counts an accepted client connection.
pub fn http_connection_accepted() {
    counter!(HTTP_CONNECTIONS).increment(1);
}

/// Counts an accept delayed by the connection bound.
pub fn http_connection_limit_wait() {
    counter!(HTTP_CONNECTION_LIMIT_WAITS).increment(1);
}

/// Counts a read bound firing; `phase` is `header`, `body` or `idle`.
pub fn http_connection_timeout(phase: &'static str) {
    counter!(HTTP_CONNECTION_TIMEOUTS, "phase" => phase).increment(1);
}

/// Counts responses dropped for stalling on one connection.
pub fn http_stalled_responses(multiplexed: bool, count: usize) {
    let protocol = if multiplexed { "http2" } else { "http1" };
    counter!(HTTP_STALLED_RESPONSES, "protocol" => protocol).increment(count as u64);
}

/// Counts a connection closed because its peer stalled.
pub fn http_stalled_connection_closed() {
    counter!(HTTP_STALLED_CONNECTIONS_CLOSED).increment(1);
}

/// Describes these metrics (their help text) to the installed recorder.
pub(crate) fn describe() {
    describe_gauge!(HTTP_CONNECTIONS_OPEN, "Client connections open now.");
    describe_gauge!(
        HTTP_CONNECTIONS_LIMIT,
        "Configured bound on open client connections."
    );
    describe_counter!(HTTP_CONNECTIONS, "Client connections accepted.");
    describe_counter!(
        HTTP_CONNECTION_LIMIT_WAITS,
        "Accepts delayed because the connection bound was reached."
    );
    describe_counter!(
        HTTP_CONNECTION_TIMEOUTS,
        "Connections closed or requests answered 408 by a read bound, by phase."
    );
    describe_counter!(
        HTTP_STALLED_RESPONSES,
        "Responses dropped because the client took no data within the send stall bound, by protocol."
    );
    describe_counter!(
        HTTP_STALLED_CONNECTIONS_CLOSED,
        "Connections closed because their peer stopped taking data."
    );
}
