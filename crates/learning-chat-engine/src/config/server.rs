//! `[server]`: the HTTP listener and request limits.

use super::{invalid, ConfigError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::num::{NonZero, NonZeroU32, NonZeroUsize};
use std::time::Duration;

/// HTTP listener and request limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// Tokio worker threads; 0 means one per CPU core.
    pub worker_threads: usize,
    /// Deadline for a whole request (`request_timeout_ms`); past it the client gets 504.
    #[serde(rename = "request_timeout_ms", with = "super::duration")]
    pub request_timeout: Duration,
    /// After SIGTERM, how long in-flight requests may take to finish (`shutdown_grace_ms`).
    #[serde(rename = "shutdown_grace_ms", with = "super::duration")]
    pub shutdown_grace: Duration,
    /// Deprecated: `request_timeout_secs` in seconds, read as `request_timeout_ms` (warned about at start-up).
    #[serde(rename = "request_timeout_secs", skip_serializing)]
    pub deprecated_request_timeout_secs: Option<u64>,
    /// Deprecated: `shutdown_grace_secs` in seconds, read as `shutdown_grace_ms` (warned about at start-up).
    #[serde(rename = "shutdown_grace_secs", skip_serializing)]
    pub deprecated_shutdown_grace_secs: Option<u64>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Longest accepted message, in characters.
    pub max_message_chars: NonZeroUsize,
    /// Responses at least this large are gzip-compressed when the client accepts it.
    pub gzip_min_bytes: u16,
    /// Longest wait for a request's headers (from its first byte, or from accept for the
    /// first request) (`header_read_timeout_ms`); past it the connection is closed.
    #[serde(rename = "header_read_timeout_ms", with = "super::duration")]
    pub header_read_timeout: Duration,
    /// Longest wait for a request's whole body (`body_read_timeout_ms`); past it the client
    /// gets 408.
    #[serde(rename = "body_read_timeout_ms", with = "super::duration")]
    pub body_read_timeout: Duration,
    /// How long a keep-alive connection may sit idle between requests
    /// (`keep_alive_idle_timeout_ms`).
    #[serde(rename = "keep_alive_idle_timeout_ms", with = "super::duration")]
    pub keep_alive_idle_timeout: Duration,
    /// Client connections open at once; further ones wait in the kernel's accept backlog.
    pub max_connections: NonZeroUsize,
    /// Streams one HTTP/2 connection may have open at once.
    pub http2_max_concurrent_streams: NonZeroU32,
    /// Longest a response may wait for the client to take its data (`send_stall_timeout_ms`):
    /// an HTTP/2 peer that never opens its flow-control window, or an HTTP/1 socket nobody
    /// reads. Past it the response is dropped, which frees what it holds (a stream slot).
    #[serde(rename = "send_stall_timeout_ms", with = "super::duration")]
    pub send_stall_timeout: Duration,
    /// Stalled responses after which an HTTP/2 connection is closed (GOAWAY); an HTTP/1
    /// connection, which can carry nothing else meanwhile, is closed at its first.
    pub max_stalled_streams_per_connection: NonZeroU32,
    /// Interval of HTTP/2 keep-alive pings (`http2_keep_alive_interval_ms`); zero sends none.
    #[serde(rename = "http2_keep_alive_interval_ms", with = "super::duration")]
    pub http2_keep_alive_interval: Duration,
    /// How long a keep-alive ping may go unanswered before the connection is closed
    /// (`http2_keep_alive_timeout_ms`).
    #[serde(rename = "http2_keep_alive_timeout_ms", with = "super::duration")]
    pub http2_keep_alive_timeout: Duration,
    /// PEM certificate chain; with `tls_key` the port speaks TLS (ALPN `h2`, `http/1.1`).
    pub tls_cert: String,
    /// PEM private key of `tls_cert`.
    pub tls_key: String,
    /// How often the certificate files are checked for changes (`tls_reload_check_ms`);
    /// zero = SIGHUP only.
    #[serde(rename = "tls_reload_check_ms", with = "super::duration")]
    pub tls_reload_check: Duration,
    /// Serve the learner's chat page at `/` and the API docs at `/docs`.
    pub web_ui: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            bind: SocketAddr::from(([0, 0, 0, 0], 8000)),
            worker_threads: 0,
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(25),
            deprecated_request_timeout_secs: None,
            deprecated_shutdown_grace_secs: None,
            max_body_bytes: 64 * 1024,
            max_message_chars: const { NonZero::new(4000).unwrap() },
            gzip_min_bytes: 1000,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            // Above nginx's upstream `keepalive_timeout 60s`, so nginx, not the server, closes
            // idle connections and never sends a request on one being closed.
            keep_alive_idle_timeout: Duration::from_secs(75),
            max_connections: const { NonZero::new(10_000).unwrap() },
            // Above h2load's and nginx's usual stream counts per connection (100-256).
            http2_max_concurrent_streams: const { NonZero::new(256).unwrap() },
            // A reading client takes data within milliseconds; only a peer that stopped reading
            // (or never opened its window) waits this long, as long as a header may take.
            send_stall_timeout: Duration::from_secs(10),
            // One stall can be a client's bad moment; a second on one connection is a pattern.
            max_stalled_streams_per_connection: const { NonZero::new(2).unwrap() },
            http2_keep_alive_interval: Duration::from_secs(20),
            http2_keep_alive_timeout: Duration::from_secs(20),
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_reload_check: Duration::from_secs(10),
            web_ui: true,
        }
    }
}

impl ServerSettings {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        super::positive("server.request_timeout_ms", self.request_timeout)?;
        super::positive("server.header_read_timeout_ms", self.header_read_timeout)?;
        super::positive("server.body_read_timeout_ms", self.body_read_timeout)?;
        super::positive(
            "server.keep_alive_idle_timeout_ms",
            self.keep_alive_idle_timeout,
        )?;
        super::positive("server.send_stall_timeout_ms", self.send_stall_timeout)?;
        super::positive(
            "server.http2_keep_alive_timeout_ms",
            self.http2_keep_alive_timeout,
        )?;
        if self.max_body_bytes < 64 {
            return invalid("server.max_body_bytes must be at least 64");
        }
        if self.tls_cert.is_empty() != self.tls_key.is_empty() {
            return invalid("server.tls_cert and server.tls_key must be set together");
        }
        Ok(())
    }
}
