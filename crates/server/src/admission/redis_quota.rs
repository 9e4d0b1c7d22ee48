//! The cluster-wide quota: the same reserving sliding window as [`super::SlidingWindow`], kept in
//! Redis sorted sets and updated by one atomic script, so every server draws from one budget.
//! Time comes from Redis (`TIME`), so the servers' clocks need not agree.

use crate::redis_link::{RedisLink, RedisUnavailable};
use std::time::Duration;

/// KEYS: requests zset, tokens zset. ARGV: window_ms, rpm, tpm, tokens, max_wait_ms, member.
/// Returns {wait_ms, refused(0/1)}. Members of the token set are "member:tokens".
const RESERVE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local rpm = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local tokens = tonumber(ARGV[4])
local max_wait = tonumber(ARGV[5])
local at = now
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
if at - now > max_wait then
  return {at - now, 1}
end
if rpm > 0 then
  redis.call('ZADD', KEYS[1], at, ARGV[6])
  redis.call('PEXPIRE', KEYS[1], window * 2 + max_wait)
end
if tpm > 0 then
  redis.call('ZADD', KEYS[2], at, ARGV[6] .. ':' .. tokens)
  redis.call('PEXPIRE', KEYS[2], window * 2 + max_wait)
end
return {at - now, 0}
";

/// The answer of the cluster quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// A slot is reserved; go after waiting this long.
    Granted(Duration),
    /// No slot within the allowed wait; the earliest is this far away.
    Refused(Duration),
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
}

impl RedisQuota {
    /// A limiter of `rpm` requests and `input_tpm` tokens per `window`.
    pub fn new(link: RedisLink, rpm: u32, input_tpm: u64, window: Duration) -> RedisQuota {
        let requests_key = link.key("quota", "requests");
        let tokens_key = link.key("quota", "input_tokens");
        RedisQuota {
            link,
            rpm,
            input_tpm,
            window,
            requests_key,
            tokens_key,
        }
    }

    /// Reserves a slot for one request of `input_tokens`, waiting at most `max_wait`.
    pub async fn reserve(
        &self,
        input_tokens: u32,
        max_wait: Duration,
    ) -> Result<Reservation, RedisUnavailable> {
        let member = format!(
            "{}:{}",
            self.link.server_id(),
            uuid::Uuid::new_v4().simple()
        );
        let keys = (self.requests_key.clone(), self.tokens_key.clone());
        let args = (
            self.window.as_millis() as u64,
            self.rpm,
            self.input_tpm,
            input_tokens,
            max_wait.as_millis() as u64,
            member,
        );
        let (wait_ms, refused): (u64, u8) = self
            .link
            .run("quota_reserve", |mut conn| async move {
                ::redis::Script::new(RESERVE_SCRIPT)
                    .key(keys.0)
                    .key(keys.1)
                    .arg(args.0)
                    .arg(args.1)
                    .arg(args.2)
                    .arg(args.3)
                    .arg(args.4)
                    .arg(args.5)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let wait = Duration::from_millis(wait_ms);
        Ok(if refused == 1 {
            Reservation::Refused(wait)
        } else {
            Reservation::Granted(wait)
        })
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
