//! Webhook delivery of safety flags from the records database (the outbox).
//!
//! A flag is written to the database first ([`super::Safety::raise`]); this loop, one per
//! server, takes the flags due for delivery, claims each for a while (so two servers do not
//! post it at once, and a server killed mid-delivery leaves it due again when the claim ends),
//! posts it signed, and marks it delivered when the receiver answers 2xx, or due again after a
//! backoff that doubles up to `safety.webhook_retry_max_ms`. Delivery is at least once: a
//! receiver drops a second copy by the flag's stable id.

use crate::config::SafetySettings;
use crate::providers::transport::{HttpRequest, HttpTransport, MakeTransport, TransportOptions};
use hmac::{Hmac, KeyInit, Mac};
use learning_chat_records::flags::Flag;
use learning_chat_records::Records;
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;

/// The header carrying `sha256=<hex HMAC-SHA256 of "{timestamp}.{body}">`.
pub const SIGNATURE_HEADER: &str = "x-learning-chat-signature";
/// The header carrying the Unix seconds the signature was made at (against replays).
pub const TIMESTAMP_HEADER: &str = "x-learning-chat-timestamp";
/// The header carrying the flag's id (also in the body).
pub const FLAG_ID_HEADER: &str = "x-learning-chat-flag-id";

/// The signature of `body` made at `timestamp` with `secret`: `sha256=` and the hex HMAC-SHA256
/// of `"{timestamp}.{body}"`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(secret) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this arm is never taken.
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Posts flags from the outbox to `safety.webhook_url`.
pub struct WebhookSender {
    url: url::Url,
    secret: crate::config::Secret,
    http: Arc<dyn HttpTransport>,
    timeout: Duration,
    poll: Duration,
    retry_min: Duration,
    retry_max: Duration,
    batch: u32,
}

impl std::fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSender")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl WebhookSender {
    /// The sender of `settings`, when a webhook is configured.
    pub fn from_settings(
        settings: &SafetySettings,
        transport: &MakeTransport,
    ) -> anyhow::Result<Option<WebhookSender>> {
        let url = settings.webhook_url.trim();
        if url.is_empty() {
            return Ok(None);
        }
        let http = transport(TransportOptions {
            connect_timeout: settings.webhook_timeout,
            pool_max_idle_per_host: 2,
            // A school's endpoint may move (http to https, a new path); it gets only the flag
            // and its signature, never a key.
            follow_redirects: true,
        })?;
        let url = url::Url::parse(url)
            .map_err(|e| anyhow::anyhow!("invalid safety.webhook_url {url:?}: {e}"))?;
        Ok(Some(WebhookSender {
            url,
            secret: settings.webhook_secret.clone(),
            http,
            timeout: settings.webhook_timeout,
            poll: settings.webhook_poll,
            retry_min: settings.webhook_retry_min,
            retry_max: settings.webhook_retry_max,
            batch: settings.webhook_batch.get(),
        }))
    }

    /// The wait before the next delivery of a flag that has failed `failures` times.
    pub fn backoff(&self, failures: i64) -> Duration {
        let doublings = u32::try_from(failures.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        self.retry_min
            .saturating_mul(2u32.saturating_pow(doublings))
            .min(self.retry_max)
    }

    /// Delivers until the task is aborted: the flags due, then a wait of `webhook_poll_ms` (or
    /// less, when a flag is raised on this server).
    pub async fn run(self, records: Records, raised: Arc<tokio::sync::Notify>) {
        loop {
            self.round(&records).await;
            tokio::select! {
                () = raised.notified() => {}
                () = tokio::time::sleep(self.poll) => {}
            }
        }
    }

    /// One look at the outbox: every flag due, delivered or put back with its backoff.
    async fn round(&self, records: &Records) {
        // A claim outlives one delivery attempt, so only a dead server's claim runs out.
        let claim = (self.timeout * 2 + self.poll).as_millis();
        let claim = i64::try_from(claim).unwrap_or(i64::MAX);
        let due = match records.due_flags(self.batch, claim).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "cannot read the flag outbox");
                return;
            }
        };
        for (flag, failures) in due {
            self.deliver(records, &flag, failures).await;
        }
        if let Ok((pending, oldest)) = records.undelivered_flags().await {
            let now = learning_chat_records::now_ms();
            let age = oldest.map_or(0.0, |at| now.saturating_sub(at).max(0) as f64 / 1000.0);
            super::metrics::webhook_pending(pending, age);
        }
    }

    async fn deliver(&self, records: &Records, flag: &Flag, failures: i64) {
        let Ok(body) = serde_json::to_vec(flag) else {
            return;
        };
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let request = HttpRequest {
            url: self.url.clone(),
            headers: vec![
                (
                    SIGNATURE_HEADER,
                    signature(self.secret.expose().as_bytes(), timestamp, &body),
                ),
                (TIMESTAMP_HEADER, timestamp.to_string()),
                (FLAG_ID_HEADER, flag.id.clone()),
            ],
            body,
            timeout: self.timeout,
        };
        let delivered = match self.http.post(request).await {
            Ok(response) => {
                let ok = response.is_success();
                // Read to the end, so the connection can be used again.
                let _ = response.bytes().await;
                ok
            }
            Err(_) => false,
        };
        let result = if delivered {
            let lag = learning_chat_records::now_ms()
                .saturating_sub(flag.at_ms)
                .max(0);
            super::metrics::webhook_attempt(true, Some(lag as f64 / 1000.0));
            records.flag_delivered(&flag.id).await
        } else {
            super::metrics::webhook_attempt(false, None);
            let wait = self.backoff(failures.saturating_add(1));
            let wait = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
            records.flag_failed(&flag.id, wait).await
        };
        if let Err(error) = result {
            // Still claimed: it is tried again when the claim runs out.
            tracing::warn!(%error, "cannot record a flag delivery");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_timestamp_and_body() {
        // Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            signature(b"secret", 1_700_000_000, br#"{"a":1}"#),
            "sha256=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }
}
