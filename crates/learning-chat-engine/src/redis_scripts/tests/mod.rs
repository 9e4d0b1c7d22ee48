//! Each script's contract against a real redis-server on a free port: its KEYS, ARGV and reply,
//! and the edge cases it exists for (expiry, mistyped or oversized values, compare and delete).

mod cache;
mod conversation;
mod lease;
mod window;

use super::SCRIPTS;
use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncCommands, FromRedisValue, Script, ScriptInvocation};
use learning_chat_testkit::redis::RedisProcess;

/// An invocation of `script` with `keys` and `args`.
fn call(script: &'static Script, keys: &[&str], args: &[&str]) -> ScriptInvocation<'static> {
    let mut invocation = script.prepare_invoke();
    for key in keys {
        invocation.key(*key);
    }
    for arg in args {
        invocation.arg(*arg);
    }
    invocation
}

/// A private redis-server and a connection to it.
struct Redis {
    // Killed when the test ends.
    _process: RedisProcess,
    conn: MultiplexedConnection,
}

impl Redis {
    async fn start() -> Redis {
        let process = tokio::task::spawn_blocking(RedisProcess::start)
            .await
            .unwrap();
        let client = ::redis::Client::open(process.url()).unwrap();
        let conn = client.get_multiplexed_async_connection().await.unwrap();
        Redis {
            _process: process,
            conn,
        }
    }

    async fn run<T: FromRedisValue>(&mut self, invocation: &ScriptInvocation<'_>) -> T {
        invocation.invoke_async(&mut self.conn).await.unwrap()
    }

    async fn cmd<T: FromRedisValue>(&mut self, args: &[&str]) -> T {
        let mut cmd = ::redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query_async(&mut self.conn).await.unwrap()
    }

    async fn exists(&mut self, key: &str) -> bool {
        self.conn.exists(key).await.unwrap()
    }

    async fn pttl(&mut self, key: &str) -> i64 {
        self.conn.pttl(key).await.unwrap()
    }

    /// Redis' clock in ms.
    async fn now_ms(&mut self) -> i64 {
        let (secs, micros): (i64, i64) = self.cmd(&["TIME"]).await;
        secs * 1000 + micros / 1000
    }
}

#[tokio::test]
async fn every_script_compiles_and_is_known_by_its_hash() {
    let mut redis = Redis::start().await;
    for (name, script) in SCRIPTS.all() {
        let sha = script.load_async(&mut redis.conn).await;
        assert_eq!(
            sha.as_deref().ok(),
            Some(script.get_hash()),
            "{name}: {sha:?}"
        );
    }
}
