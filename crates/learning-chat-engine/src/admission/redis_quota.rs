//! The cluster-wide quota: the same reserving sliding window as [`super::SlidingWindow`], kept in
//! Redis sorted sets and updated by one atomic script, so every server draws from one budget.
//! Time comes from Redis (`TIME`), so the servers' clocks need not agree.

use crate::redis_link::{RedisLink, RedisUnavailable};
use std::time::Duration;

/// KEYS: requests zset, tokens zset, synced zset. ARGV: window_ms, rpm, tpm, tokens, max_wait_ms,
/// member, server_id, not_before_ms, snapshot (0/1), fresh_ms.
/// Returns {wait_ms, outcome, requests in window, fresh servers, [others' bucket ms, count]...}:
/// outcome 0 granted, 1 refused, 2 this server's calls are missing from Redis (it restarted
/// empty, or expired the key): nothing reserved, the caller re-publishes and asks again.
/// Members of the token set are "member:tokens". The synced set holds, per server that has
/// published its calls, the Redis time of its last reservation; with fresh_ms > 0 the count of
/// servers seen within fresh_ms is returned. With snapshot = 1 the other servers' entries are
/// returned as counts per second, each second rounded up (so they expire no earlier than the
/// real entries), relative to Redis' now.
const RESERVE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local rpm = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local tokens = tonumber(ARGV[4])
local max_wait = tonumber(ARGV[5])
if not redis.call('ZSCORE', KEYS[3], ARGV[7]) then
  return {0, 2, 0, 0}
end
redis.call('ZADD', KEYS[3], now, ARGV[7])
redis.call('PEXPIRE', KEYS[3], window * 2)
local at = now + tonumber(ARGV[8])
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  local n = redis.call('ZCARD', KEYS[1])
  if n >= rpm then
    local e = redis.call('ZRANGE', KEYS[1], n - rpm, n - rpm, 'WITHSCORES')
    at = math.max(at, tonumber(e[2]) + window)
  end
end
if tpm > 0 then
  if tokens > tpm then tokens = tpm end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  local total = 0
  local units = {}
  for i = 1, #entries, 2 do
    local u = tonumber(string.match(entries[i], ':(%d+)$'))
    units[#units + 1] = {u, tonumber(entries[i + 1])}
    total = total + u
  end
  if total + tokens > tpm then
    local remaining = total
    for _, e in ipairs(units) do
      remaining = remaining - e[1]
      if remaining + tokens <= tpm then
        at = math.max(at, e[2] + window)
        break
      end
    end
  end
end
local refused = 0
if at - now > max_wait then
  refused = 1
else
  if rpm > 0 then
    redis.call('ZADD', KEYS[1], at, ARGV[6])
    redis.call('PEXPIRE', KEYS[1], window * 2 + max_wait)
  end
  if tpm > 0 then
    redis.call('ZADD', KEYS[2], at, ARGV[6] .. ':' .. tokens)
    redis.call('PEXPIRE', KEYS[2], window * 2 + max_wait)
  end
end
local count = 0
if rpm > 0 then count = redis.call('ZCARD', KEYS[1]) end
local fresh = 0
if tonumber(ARGV[10]) > 0 then
  fresh = redis.call('ZCOUNT', KEYS[3], now - tonumber(ARGV[10]), '+inf')
end
local out = {at - now, refused, count, fresh}
if ARGV[9] == '1' and rpm > 0 then
  local own = ARGV[7] .. ':'
  local buckets = {}
  local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    if string.sub(entries[i], 1, #own) ~= own then
      local b = math.ceil(tonumber(entries[i + 1]) / 1000) * 1000
      buckets[b] = (buckets[b] or 0) + 1
    end
  end
  for b, c in pairs(buckets) do
    out[#out + 1] = b - now
    out[#out + 1] = c
  end
end
return out
";

/// KEYS: requests zset, tokens zset, synced zset. ARGV: window_ms, server_id, requests (0/1),
/// tokens (0/1), then per call: age_ms (negative: still to come), member, tokens.
/// Writes this server's calls back with scores on Redis' clock (NX: calls Redis still holds keep
/// their score), and records the server as synced. Returns the number of calls added.
const REPUBLISH_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local added = 0
local longest = 0
for i = 5, #ARGV, 3 do
  local age = tonumber(ARGV[i])
  local score = now - age
  if score > now - window then
    if -age > longest then longest = -age end
    if ARGV[3] == '1' then
      added = added + redis.call('ZADD', KEYS[1], 'NX', score, ARGV[i + 1])
    end
    if ARGV[4] == '1' then
      redis.call('ZADD', KEYS[2], 'NX', score, ARGV[i + 1] .. ':' .. ARGV[i + 2])
    end
  end
end
if ARGV[3] == '1' then redis.call('PEXPIRE', KEYS[1], window * 2 + longest) end
if ARGV[4] == '1' then redis.call('PEXPIRE', KEYS[2], window * 2 + longest) end
redis.call('ZADD', KEYS[3], now, ARGV[2])
redis.call('PEXPIRE', KEYS[3], window * 2)
return added
";

/// The answer of the cluster quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// A slot is reserved; go after waiting this long.
    Granted(Duration),
    /// No slot within the allowed wait; the earliest is this far away.
    Refused(Duration),
    /// Redis does not know this server's calls (it came back empty): nothing was reserved;
    /// re-publish them with [`RedisQuota::republish`] first.
    Unsynced,
}

/// A reservation request.
#[derive(Debug, Clone)]
pub struct ReserveRequest {
    /// The member id of this call (`{server_id}:{unique}`), kept to re-publish it later.
    pub member: String,
    /// Input tokens of the call.
    pub input_tokens: u32,
    /// The longest acceptable wait.
    pub max_wait: Duration,
    /// Reserve no earlier than this from Redis' now.
    pub not_before: Duration,
    /// Also return the other servers' entries.
    pub snapshot: bool,
    /// Also count the servers seen within this (zero: don't).
    pub fresh: Duration,
}

/// What the cluster quota answered, and what it showed of the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveReply {
    /// The decision.
    pub reservation: Reservation,
    /// Requests in the window, reservations and this one included.
    pub requests: u64,
    /// Servers seen within `fresh` that have published their calls.
    pub fresh_servers: u64,
    /// With `snapshot`: the other servers' entries as (ms from Redis' now, count), each rounded
    /// up to a whole second.
    pub others: Option<Vec<(i64, u64)>>,
}

/// One of this server's calls, to write back into a window that lost it.
#[derive(Debug, Clone)]
pub struct OwnCall {
    /// How long ago the call went (negative: it is still to go).
    pub age_ms: i64,
    /// Its member id.
    pub member: String,
    /// Its input tokens.
    pub tokens: u64,
}

/// The cluster-wide requests/tokens-per-minute limiter.
#[derive(Debug, Clone)]
pub struct RedisQuota {
    link: RedisLink,
    rpm: u32,
    input_tpm: u64,
    window: Duration,
    requests_key: String,
    tokens_key: String,
    synced_key: String,
}

impl RedisQuota {
    /// A limiter of `rpm` requests and `input_tpm` tokens per `window`.
    pub fn new(link: RedisLink, rpm: u32, input_tpm: u64, window: Duration) -> RedisQuota {
        Self::scoped(link, rpm, input_tpm, window, "quota")
    }

    /// A limiter whose keys form the group `scope` (one per API key and model, issue 16).
    pub fn scoped(
        link: RedisLink,
        rpm: u32,
        input_tpm: u64,
        window: Duration,
        scope: &str,
    ) -> RedisQuota {
        let requests_key = link.grouped_key("quota", scope, "requests");
        let tokens_key = link.grouped_key("quota", scope, "input_tokens");
        let synced_key = link.grouped_key("quota", scope, "synced");
        RedisQuota {
            link,
            rpm,
            input_tpm,
            window,
            requests_key,
            tokens_key,
            synced_key,
        }
    }

    /// A new member id for one call of this server.
    pub fn new_member(&self) -> String {
        format!(
            "{}:{}",
            self.link.server_id(),
            uuid::Uuid::new_v4().simple()
        )
    }

    /// Reserves a slot for one call.
    pub async fn reserve(&self, request: ReserveRequest) -> Result<ReserveReply, RedisUnavailable> {
        let keys = [
            self.requests_key.clone(),
            self.tokens_key.clone(),
            self.synced_key.clone(),
        ];
        let window = self.window.as_millis() as u64;
        let (rpm, tpm) = (self.rpm, self.input_tpm);
        let server_id = self.link.server_id().to_owned();
        let reply: Vec<i64> = self
            .link
            .run("quota_reserve", |mut conn| async move {
                ::redis::Script::new(RESERVE_SCRIPT)
                    .key(&keys[0])
                    .key(&keys[1])
                    .key(&keys[2])
                    .arg(window)
                    .arg(rpm)
                    .arg(tpm)
                    .arg(request.input_tokens)
                    .arg(request.max_wait.as_millis() as u64)
                    .arg(&request.member)
                    .arg(server_id)
                    .arg(request.not_before.as_millis() as u64)
                    .arg(u8::from(request.snapshot))
                    .arg(request.fresh.as_millis() as u64)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let field = |i: usize| reply.get(i).copied().unwrap_or(0).max(0) as u64;
        let wait = Duration::from_millis(field(0));
        let reservation = match field(1) {
            0 => Reservation::Granted(wait),
            1 => Reservation::Refused(wait),
            _ => Reservation::Unsynced,
        };
        let others = request.snapshot.then(|| {
            reply
                .get(4..)
                .unwrap_or_default()
                .chunks_exact(2)
                .map(|pair| (pair[0], pair[1].max(0) as u64))
                .collect()
        });
        Ok(ReserveReply {
            reservation,
            requests: field(2),
            fresh_servers: field(3),
            others,
        })
    }

    /// Writes this server's calls of the window back into Redis (those it still holds keep
    /// their time) and records the server as synced; returns how many were missing.
    pub async fn republish(&self, calls: Vec<OwnCall>) -> Result<u64, RedisUnavailable> {
        let keys = [
            self.requests_key.clone(),
            self.tokens_key.clone(),
            self.synced_key.clone(),
        ];
        let window = self.window.as_millis() as u64;
        let flags = (u8::from(self.rpm > 0), u8::from(self.input_tpm > 0));
        let server_id = self.link.server_id().to_owned();
        self.link
            .run("quota_republish", |mut conn| async move {
                let script = ::redis::Script::new(REPUBLISH_SCRIPT);
                let mut invocation = script.prepare_invoke();
                invocation
                    .key(&keys[0])
                    .key(&keys[1])
                    .key(&keys[2])
                    .arg(window)
                    .arg(server_id)
                    .arg(flags.0)
                    .arg(flags.1);
                for call in &calls {
                    invocation
                        .arg(call.age_ms)
                        .arg(&call.member)
                        .arg(call.tokens);
                }
                invocation.invoke_async(&mut conn).await
            })
            .await
    }

    /// Requests counted cluster-wide in the current window, reservations due so far included.
    pub async fn used(&self) -> Result<u64, RedisUnavailable> {
        let key = self.requests_key.clone();
        let window = self.window.as_millis() as u64;
        self.link
            .run("quota_used", |mut conn| async move {
                let script = ::redis::Script::new(
                    r"local t = redis.call('TIME')
                      local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
                      return redis.call('ZCOUNT', KEYS[1], now - ARGV[1] + 1, now)",
                );
                script.key(key).arg(window).invoke_async(&mut conn).await
            })
            .await
    }
}
