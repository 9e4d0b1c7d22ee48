//! Webhook delivery of safety flags from the records database (the outbox).
