//! `learning-chat keys create|list|show|revoke|audit|usage`: key management against the records
//! database the servers use (same config file and environment: `database.url`, `auth.pepper`).
//! Every create and revoke is written to the audit log with it, as actor `cli`.

use crate::auth::keys::{self, ApiKey, KeyLimits};
use crate::config::Settings;
use learning_chat_records::{ConnectOptions, Records};
use std::process::ExitCode;

/// The actor the audit log names for this command.
const ACTOR: &str = "cli";

/// The `keys` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key; prints its id and its secret (shown this once only).
    Create(CreateArgs),
    /// List keys, one per line starting with the id.
    List,
    /// Change a key's name, weight, classes, retention or legal hold (limits: the console's
    /// `PATCH /api/v1/admin/keys/{id}`).
    Edit(EditArgs),
    /// Revoke a key; every server refuses it within about `database.key_refresh_ms`.
    Revoke {
        /// The key id (`key_...`).
        id: String,
    },
    /// Show one key (never its secret).
    Show {
        /// The key id (`key_...`).
        id: String,
    },
    /// The newest entries of the audit log (key created, revoked, migrated, ...), newest first.
    Audit {
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// A key's usage per UTC day from the ledger: requests, cached requests, tokens, learners.
    Usage {
        /// The key id (`key_...`).
        id: String,
        /// Days back from today (today included).
        #[arg(long, default_value_t = 30)]
        days: u32,
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
    /// Refuse requests without `X-Learner-Id` (400 `learner_id_required`), so the per-learner
    /// limits always apply.
    #[arg(long)]
    pub require_learner: bool,
    /// `learner` (the default), `teacher` (reads its `--classes` in the console) or `admin`
    /// (reads everything, manages keys).
    #[arg(long, default_value = "learner", value_parser = ["learner", "teacher", "admin"])]
    pub role: String,
    /// A teacher's classes: the key ids (comma-separated) whose data it may read.
    #[arg(long, value_delimiter = ',')]
    pub classes: Vec<String>,
    /// Days this key's conversations are kept after their last activity (default:
    /// `records.retention_days`; 0 keeps them).
    #[arg(long)]
    pub retention_days: Option<u32>,
    /// Put the key on legal hold: the retention sweep leaves everything of it alone.
    #[arg(long)]
    pub legal_hold: bool,
}

/// Options of `keys edit`: only what is given changes.
#[derive(Debug, clap::Args)]
pub struct EditArgs {
    /// The key id (`key_...`).
    pub id: String,
    /// A new name.
    #[arg(long)]
    pub name: Option<String>,
    /// A new weight.
    #[arg(long)]
    pub weight: Option<u32>,
    /// A teacher's classes (comma-separated key ids; replaces the list).
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<String>>,
    /// Days kept after the last activity (0 keeps them).
    #[arg(long)]
    pub retention_days: Option<u32>,
    /// Legal hold on (`true`) or off (`false`).
    #[arg(long)]
    pub legal_hold: Option<bool>,
}

/// Runs one `keys` subcommand.
pub fn run(settings: &Settings, command: &KeysCommand) -> ExitCode {
    block_on(execute(settings, command))
}

/// Runs a command's future on a runtime of its own; errors print and exit 1.
pub(crate) fn block_on(
    command: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> ExitCode {
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
    match runtime.block_on(command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn create(
    settings: &Settings,
    records: &Records,
    args: &CreateArgs,
) -> anyhow::Result<ExitCode> {
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
        require_learner: args.require_learner,
        created_at: keys::unix_now(),
        last_used_at: None,
        revoked_at: None,
        role: learning_chat_records::keys::KeyRole::parse(&args.role),
        policy: None,
        classes: args.classes.clone(),
        retention_days: args.retention_days,
        legal_hold: args.legal_hold,
    };
    if !records.create_key(&key, ACTOR).await? {
        anyhow::bail!("a key with this id or secret exists already; run the command again");
    }
    println!("id: {}", key.id);
    println!("role: {}", key.role.as_str());
    if !key.classes.is_empty() {
        println!("classes: {}", key.classes.join(","));
    }
    println!("secret: {secret}");
    eprintln!(
        "key stored in the records database ({}); every server accepts it within about {} ms; \
         the secret is shown this once only",
        settings.database.url.masked(),
        settings.database.key_refresh.as_millis()
    );
    Ok(ExitCode::SUCCESS)
}

/// The records database of these settings, migrated.
pub(crate) async fn open_records(settings: &Settings) -> anyhow::Result<Records> {
    let Some(url) = settings.database.url() else {
        anyhow::bail!(
            "API keys live in the records database, and database.url is none: set it to the \
             servers' database (LEARNING_CHAT_DATABASE__URL)"
        );
    };
    let records = Records::connect(&ConnectOptions {
        url: url.to_owned(),
        max_connections: 1,
        acquire_timeout: settings.database.acquire_timeout,
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e} ({})", settings.database.url.masked()))?;
    Ok(records)
}

/// One key as one tab-separated line, starting with its id.
pub(crate) fn line(key: &ApiKey) -> String {
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
        "{id}\t{status}\tname={name:?}\tagents={agents}\trpm={rpm}\ttokens_per_day={tpd}\tconcurrency={conc}\tlearner_rpm={lrpm}\tlearner_tokens_per_day={ltpd}\tweight={weight}\trequire_learner={req}\tcreated={created}\tlast_used={used}\trole={role}",
        id = key.id,
        name = key.name,
        rpm = l.rpm,
        tpd = l.tokens_per_day,
        conc = l.concurrency,
        lrpm = l.learner_rpm,
        ltpd = l.learner_tokens_per_day,
        weight = key.weight,
        req = key.require_learner,
        created = time(Some(key.created_at)),
        used = time(key.last_used_at),
        role = key.role.as_str(),
    ) + &format!(
        "\tclasses={classes}\tretention_days={days}\tlegal_hold={hold}",
        classes = key.classes.join(","),
        days = key
            .retention_days
            .map_or_else(|| "default".to_owned(), |d| d.to_string()),
        hold = key.legal_hold,
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

fn time_ms(unix_ms: i64) -> String {
    humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH
            + std::time::Duration::from_millis(u64::try_from(unix_ms).unwrap_or(0)),
    )
    .to_string()
}

async fn execute(settings: &Settings, command: &KeysCommand) -> anyhow::Result<ExitCode> {
    // Before touching the database: a key made with the wrong pepper would never work.
    if matches!(command, KeysCommand::Create(_)) && settings.auth.pepper.expose().len() < 16 {
        anyhow::bail!(
            "auth.pepper (LEARNING_CHAT_AUTH__PEPPER) must be set, at least 16 characters, \
             and the same as the servers'"
        );
    }
    let records = open_records(settings).await?;
    let missing = |id: &str| {
        eprintln!("error: no key {id}");
        Ok(ExitCode::from(3))
    };
    match command {
        KeysCommand::Create(args) => create(settings, &records, args).await,
        KeysCommand::List => {
            for key in records.keys().await? {
                println!("{}", line(&key));
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Edit(args) => {
            let edit = learning_chat_records::keys::KeyEdit {
                name: args.name.clone(),
                limits: None,
                weight: args.weight,
                classes: args.classes.clone(),
                retention_days: args.retention_days.map(Some),
                legal_hold: args.legal_hold,
            };
            match records.update_key(&args.id, &edit, ACTOR).await? {
                Some(key) => {
                    println!("{}", line(&key));
                    Ok(ExitCode::SUCCESS)
                }
                None => missing(&args.id),
            }
        }
        KeysCommand::Revoke { id } => match records.revoke_key(id, ACTOR).await? {
            Some(key) => {
                println!("{}", line(&key));
                Ok(ExitCode::SUCCESS)
            }
            None => missing(id),
        },
        KeysCommand::Show { id } => match records.key(id).await? {
            Some(key) => {
                println!("{}", line(&key));
                Ok(ExitCode::SUCCESS)
            }
            None => missing(id),
        },
        KeysCommand::Audit { limit } => {
            for entry in records.audit_log(*limit).await? {
                println!(
                    "{at}\t{actor}\t{action}\t{subject}\t{detail}",
                    at = time_ms(entry.at_ms),
                    actor = entry.actor,
                    action = entry.action,
                    subject = entry.subject,
                    detail = entry.detail,
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Usage { id, days } => {
            if records.key(id).await?.is_none() {
                return missing(id);
            }
            let today = learning_chat_records::ledger::today();
            let from = learning_chat_records::ledger::day_string(
                today - i64::from(days.saturating_sub(1)),
            );
            println!("day\trequests\tcached\tinput_tokens\toutput_tokens\tlearners");
            for day in records.key_usage(id, &from).await? {
                let u = day.usage;
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    day.day,
                    u.requests,
                    u.cached_requests,
                    u.input_tokens,
                    u.output_tokens,
                    day.learners
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
