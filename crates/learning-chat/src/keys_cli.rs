//! `learning-chat keys create|list|revoke|show`: key management against the store the server
//! uses (same config file and environment: Redis when configured, else `auth.keys_file`).

use crate::auth::keys::{self, ApiKey, KeyLimits, KeyStore};
use crate::config::Settings;
use crate::redis_link::RedisLink;
use std::process::ExitCode;

/// The `keys` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key; prints its id and its secret (shown this once only).
    Create(CreateArgs),
    /// List keys, one per line starting with the id.
    List,
    /// Revoke a key; every server refuses it within `auth.cache_ttl_ms`.
    Revoke {
        /// The key id (`key_...`).
        id: String,
    },
    /// Show one key (never its secret).
    Show {
        /// The key id (`key_...`).
        id: String,
    },
}

/// Options of `keys create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Who the key is for, e.g. a class or an app.
    #[arg(long)]
    pub name: String,
    /// Agents the key may ask (comma-separated); all when omitted.
    #[arg(long, value_delimiter = ',')]
    pub agents: Vec<String>,
    /// Requests per minute (0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub rpm: u32,
    /// Model tokens (input + output) per day (any 24 hours) (0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub tokens_per_day: u64,
    /// Requests in progress at once (0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub concurrency: u32,
    /// Requests per minute per learner (`X-Learner-Id`; 0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub learner_rpm: u32,
    /// Model tokens per day (any 24 hours) per learner (0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub learner_tokens_per_day: u64,
    /// Share of a contended queue relative to other keys.
    #[arg(long, default_value_t = 1)]
    pub weight: u32,
}

/// Runs one `keys` subcommand.
pub fn run(settings: &Settings, command: &KeysCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(settings, command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn open_store(settings: &Settings) -> anyhow::Result<KeyStore> {
    let redis = if settings.uses_redis() {
        let link = RedisLink::new(&settings.redis)?;
        if !link.probe().await {
            anyhow::bail!("redis is configured but not reachable; the key store lives there");
        }
        Some(link)
    } else {
        None
    };
    Ok(crate::auth::store_for(settings, redis))
}

fn describe(store: &KeyStore) -> String {
    match store {
        KeyStore::Redis(_) => "redis".to_owned(),
        KeyStore::File(path) => format!("file {}", path.display()),
    }
}

fn line(key: &ApiKey) -> String {
    let l = &key.limits;
    let agents = if key.agents.is_empty() {
        "*".to_owned()
    } else {
        key.agents.join(",")
    };
    let status = if key.revoked_at.is_some() {
        "revoked"
    } else {
        "active"
    };
    format!(
        "{id}\t{status}\tname={name:?}\tagents={agents}\trpm={rpm}\ttokens_per_day={tpd}\tconcurrency={conc}\tlearner_rpm={lrpm}\tlearner_tokens_per_day={ltpd}\tweight={weight}\tcreated={created}\tlast_used={used}",
        id = key.id,
        name = key.name,
        rpm = l.rpm,
        tpd = l.tokens_per_day,
        conc = l.concurrency,
        lrpm = l.learner_rpm,
        ltpd = l.learner_tokens_per_day,
        weight = key.weight,
        created = time(Some(key.created_at)),
        used = time(key.last_used_at),
    )
}

fn time(unix: Option<u64>) -> String {
    match unix {
        Some(secs) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        )
        .to_string(),
        None => "-".to_owned(),
    }
}

async fn execute(settings: &Settings, command: &KeysCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(settings).await?;
    match command {
        KeysCommand::Create(args) => {
            if settings.auth.pepper.expose().len() < 16 {
                anyhow::bail!(
                    "auth.pepper (LEARNING_CHAT_AUTH__PEPPER) must be set, at least 16 characters, \
                     and the same as the servers'"
                );
            }
            let secret = keys::generate_secret();
            let key = ApiKey {
                id: keys::generate_id(),
                name: args.name.clone(),
                hash: keys::hash_secret(&settings.auth.pepper, &secret),
                agents: args.agents.clone(),
                limits: KeyLimits {
                    rpm: args.rpm,
                    tokens_per_day: args.tokens_per_day,
                    concurrency: args.concurrency,
                    learner_rpm: args.learner_rpm,
                    learner_tokens_per_day: args.learner_tokens_per_day,
                },
                weight: args.weight.max(1),
                created_at: keys::unix_now(),
                last_used_at: None,
                revoked_at: None,
            };
            store.insert(&key).await?;
            println!("id: {}", key.id);
            println!("secret: {secret}");
            eprintln!(
                "key stored in the {} key store; the secret is shown this once only",
                describe(&store)
            );
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::List => {
            for mut key in store.list().await? {
                key.last_used_at = store.last_used(&key.id).await.or(key.last_used_at);
                println!("{}", line(&key));
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Revoke { id } => match store.revoke(id).await? {
            Some(key) => {
                println!("{}", line(&key));
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("error: no key {id}");
                Ok(ExitCode::from(3))
            }
        },
        KeysCommand::Show { id } => match store.get(id).await? {
            Some(mut key) => {
                key.last_used_at = store.last_used(&key.id).await.or(key.last_used_at);
                println!("{}", line(&key));
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("error: no key {id}");
                Ok(ExitCode::from(3))
            }
        },
    }
}
