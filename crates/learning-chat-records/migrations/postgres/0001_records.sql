-- The records database, version 1 (PostgreSQL). Times are Unix milliseconds unless named `_s`;
-- flags are 0/1 integers; JSON is stored as text. Keep in step with ../sqlite/0001_records.sql.

CREATE TABLE api_keys (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    -- Hex SHA-256 of pepper + secret; the secret itself is never stored.
    hash            TEXT NOT NULL UNIQUE,
    -- JSON array of agent ids; empty allows every agent.
    agents          TEXT NOT NULL DEFAULT '[]',
    -- JSON object of the key's limits.
    limits          TEXT NOT NULL DEFAULT '{}',
    weight          BIGINT NOT NULL DEFAULT 1,
    require_learner BIGINT NOT NULL DEFAULT 0,
    created_at_s    BIGINT NOT NULL,
    revoked_at_s    BIGINT,
    last_used_at_s  BIGINT,
    -- Every write sets it: servers poll for rows changed since their last look.
    changed_at      BIGINT NOT NULL
);
CREATE INDEX api_keys_changed ON api_keys (changed_at);

CREATE TABLE conversations (
    -- The stored id (scoped by owner, see learning_chat_engine::conversations::stored_id).
    id            TEXT PRIMARY KEY,
    owner         TEXT,
    agent_id      TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    turn_count    BIGINT NOT NULL,
    stored_bytes  BIGINT NOT NULL
);
CREATE INDEX conversations_owner ON conversations (owner, updated_at);

CREATE TABLE turns (
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             BIGINT NOT NULL,
    role            TEXT NOT NULL,
    text            TEXT NOT NULL,
    at              BIGINT NOT NULL,
    cached          BIGINT NOT NULL DEFAULT 0,
    model           TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (conversation_id, seq)
);

CREATE TABLE usage_daily (
    -- UTC day, YYYY-MM-DD.
    day             TEXT NOT NULL,
    -- '' when no key was used (auth off).
    key_id          TEXT NOT NULL,
    -- Hashed learner id; '' when none was sent.
    learner         TEXT NOT NULL,
    requests        BIGINT NOT NULL DEFAULT 0,
    cached_requests BIGINT NOT NULL DEFAULT 0,
    input_tokens    BIGINT NOT NULL DEFAULT 0,
    output_tokens   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (day, key_id, learner)
);

CREATE TABLE audit_log (
    id      BIGSERIAL PRIMARY KEY,
    at      BIGINT NOT NULL,
    -- Who did it: `cli`, `admin:<key id>`, ...
    actor   TEXT NOT NULL,
    -- `key.created`, `key.revoked`, `conversation.erased`, ...
    action  TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_at ON audit_log (at);

-- Secrets the servers of one deployment share (the conversation-token signing key), made once.
CREATE TABLE server_secrets (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
