//! `learning-chat migrate-keys`: moves API keys from the old key stores (Redis, or the TOML keys
//! file) into the records database, once. Idempotent: a key already there (same id or same
//! hash) is skipped, so it can be run again after a partial run. Each key moved is written to
//! the audit log (`key.migrated`, actor `migrate-keys`). Secrets were never stored, so the keys
//! keep working only with the pepper they were made with.

use crate::auth::keys::ApiKey;
use crate::config::Settings;
use crate::keys_cli::{block_on, open_records};
use crate::redis_link::{RedisConn, RedisLink};
use learning_chat_records::Records;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The actor the audit log names.
const ACTOR: &str = "migrate-keys";

/// Options of `migrate-keys`.
#[derive(Debug, clap::Args)]
pub struct MigrateKeysArgs {
    /// Read keys from this Redis (`redis://host:port`; the old store's `{prefix}:apikey:*`
    /// records, `redis.key_prefix` of the settings). Without either flag: the configured Redis.
    #[arg(long)]
    pub from_redis: Option<String>,
    /// Read keys from this TOML keys file (`[[keys]]`, the old `auth.keys_file`). Without
    /// either flag: `auth.keys_file`, when set.
    #[arg(long)]
    pub from_file: Option<PathBuf>,
}

/// What one source gave.
#[derive(Debug, Default)]
struct Tally {
    moved: usize,
    skipped: usize,
    unreadable: usize,
}

/// Runs `migrate-keys`.
pub fn run(settings: &Settings, args: &MigrateKeysArgs) -> ExitCode {
    block_on(execute(settings, args))
}

async fn execute(settings: &Settings, args: &MigrateKeysArgs) -> anyhow::Result<ExitCode> {
    let (redis, file) = if args.from_redis.is_none() && args.from_file.is_none() {
        (
            settings.uses_redis().then_some(None),
            settings.auth.keys_file.clone(),
        )
    } else {
        (args.from_redis.clone().map(Some), args.from_file.clone())
    };
    if redis.is_none() && file.is_none() {
        anyhow::bail!(
            "nothing to migrate from: pass --from-redis redis://host:port and/or --from-file \
             keys.toml (or configure the old Redis or auth.keys_file)"
        );
    }
    let records = open_records(settings).await?;
    let mut total = Tally::default();
    if let Some(url) = redis {
        let from = url.as_deref().unwrap_or("the configured Redis").to_owned();
        let keys = read_redis(settings, url).await?;
        println!("# {} key record(s) found in {from}", keys.len());
        add(
            &mut total,
            migrate(&records, keys, &format!("from redis {from}")).await?,
        );
    }
    if let Some(path) = file {
        let keys = read_file(&path)?;
        println!("# {} key(s) found in {}", keys.len(), path.display());
        let detail = format!("from file {}", path.display());
        add(&mut total, migrate(&records, keys, &detail).await?);
    }
    println!(
        "# moved {}, already there {}, unreadable {}",
        total.moved, total.skipped, total.unreadable
    );
    Ok(if total.unreadable > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn add(total: &mut Tally, tally: Tally) {
    total.moved += tally.moved;
    total.skipped += tally.skipped;
    total.unreadable += tally.unreadable;
}

/// Inserts each key unless it is there; prints one line per key.
async fn migrate(
    records: &Records,
    keys: Vec<Result<ApiKey, String>>,
    detail: &str,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    for key in keys {
        let key = match key {
            Ok(key) => key,
            Err(reason) => {
                println!("unreadable\t{reason}");
                tally.unreadable += 1;
                continue;
            }
        };
        if records
            .insert_key(&key, ACTOR, "key.migrated", detail)
            .await?
        {
            println!("moved\t{}", crate::keys_cli::line(&key));
            tally.moved += 1;
        } else {
            println!("skipped\t{}\talready in the records database", key.id);
            tally.skipped += 1;
        }
    }
    Ok(tally)
}

/// The keys file's shape.
#[derive(serde::Deserialize)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<ApiKey>,
}

fn read_file(path: &Path) -> anyhow::Result<Vec<Result<ApiKey, String>>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let file: KeysFile = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{} is not a keys file: {e}", path.display()))?;
    Ok(file.keys.into_iter().map(Ok).collect())
}

/// Every key record of the old Redis store: the hashes named by the id index
/// (`{prefix}:apikeys:{all}` → `{prefix}:apikey-id:{id}`) and, on a single Redis, every
/// `{prefix}:apikey:*` found by SCAN (the index may have been evicted), each with its last use.
async fn read_redis(
    settings: &Settings,
    url: Option<String>,
) -> anyhow::Result<Vec<Result<ApiKey, String>>> {
    let mut redis = settings.redis.clone();
    if let Some(url) = url {
        redis.url = crate::config::Secret::new(url);
        redis.cluster_nodes.clear();
        redis.sentinels.clear();
    }
    let link = RedisLink::new(&redis)?;
    if !link.probe().await {
        anyhow::bail!("cannot reach Redis to read the old keys");
    }
    // The old store's layout, spelled out: this reads what older servers wrote.
    let prefix = redis.key_prefix.clone();
    let record = move |hash: &str| format!("{prefix}:apikey:{{{hash}}}");
    let prefix = redis.key_prefix.clone();
    let pattern = format!("{}*", glob_escape(&format!("{prefix}:apikey:")));
    let record_keys: Vec<String> = link
        .run("migrate_keys", |mut conn| async move {
            let ids: Vec<String> = ::redis::cmd("SMEMBERS")
                .arg(format!("{prefix}:apikeys:{{all}}"))
                .query_async(&mut conn)
                .await?;
            let mut records = Vec::new();
            for id in ids {
                let hash: Option<String> = ::redis::cmd("GET")
                    .arg(format!("{prefix}:apikey-id:{{{id}}}"))
                    .query_async(&mut conn)
                    .await?;
                if let Some(hash) = hash {
                    records.push(record(&hash));
                }
            }
            // On a cluster SCAN would see one node only: the index above is all there is.
            if let RedisConn::Single(_) = conn {
                let mut cursor = 0u64;
                loop {
                    let (next, found): (u64, Vec<String>) = ::redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn)
                        .await?;
                    records.extend(found);
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            records.sort();
            records.dedup();
            Ok(records)
        })
        .await?;
    let prefix = redis.key_prefix.clone();
    let mut keys = Vec::with_capacity(record_keys.len());
    for record_key in record_keys {
        let lookup = record_key.clone();
        let raw: Option<String> = link
            .run("migrate_keys", |mut conn| async move {
                ::redis::cmd("GET")
                    .arg(&lookup)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let Some(raw) = raw else {
            keys.push(Err(format!(
                "{record_key}: named by the index but gone (evicted?)"
            )));
            continue;
        };
        let mut key: ApiKey = match serde_json::from_str(&raw) {
            Ok(key) => key,
            Err(e) => {
                keys.push(Err(format!("{record_key}: {e}")));
                continue;
            }
        };
        let used_key = format!("{prefix}:apikey-used:{{{}}}", key.id);
        let used: Option<u64> = link
            .run("migrate_keys", |mut conn| async move {
                ::redis::cmd("GET")
                    .arg(&used_key)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        key.last_used_at = used.max(key.last_used_at);
        keys.push(Ok(key));
    }
    Ok(keys)
}

/// `text` with Redis glob characters escaped, for a MATCH pattern.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}
