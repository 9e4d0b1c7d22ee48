//! The `learning-chat` binary: a thin CLI over the library.

use clap::{Parser, Subcommand};
use learning_chat::{app, telemetry, Application, Settings};
use std::path::PathBuf;
use std::process::ExitCode;

/// glibc's allocator cost a sixth of a cache hit's CPU; mimalloc's thread-local free lists do not
/// (bench/RESULTS.md, benchmark 3).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "learning-chat",
    version,
    about = "AI tutoring chat service in front of Google Gemini"
)]
struct Cli {
    /// TOML config file (also LEARNING_CHAT_CONFIG); environment variables override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service (the default).
    Serve {
        /// Address to listen on (overrides server.bind / LEARNING_CHAT_BIND).
        #[arg(long)]
        bind: Option<std::net::SocketAddr>,
    },
    /// Validate the configuration and print the effective settings (secrets masked).
    CheckConfig,
    /// Capacity and cost planner: model calls per minute vs quota, servers, concurrency, monthly cost.
    Plan(learning_chat::plan::PlanArgs),
    /// Manage API keys in the records database the servers use (database.url).
    #[command(subcommand)]
    Keys(learning_chat::keys_cli::KeysCommand),
    /// Move API keys from the old key stores (Redis, a keys file) into the records database,
    /// once; keys already there are skipped.
    MigrateKeys(learning_chat::migrate_keys::MigrateKeysArgs),
}

fn main() -> ExitCode {
    // Before anything can build an HTTP client (src/tls.rs says why).
    learning_chat::tls::install_crypto_provider();
    let cli = Cli::parse();
    // The planner is pure arithmetic over its flags: it needs no (valid) service configuration.
    if let Some(Command::Plan(args)) = &cli.command {
        return learning_chat::plan::run(args);
    }
    let mut settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve { bind: None }) {
        Command::CheckConfig => check_config(&settings),
        Command::Plan(args) => learning_chat::plan::run(&args),
        Command::Keys(command) => learning_chat::keys_cli::run(&settings, &command),
        Command::MigrateKeys(args) => learning_chat::migrate_keys::run(&settings, &args),
        Command::Serve { bind } => {
            if let Some(bind) = bind {
                settings.server.bind = bind;
            }
            serve(settings)
        }
    }
}

fn check_config(settings: &Settings) -> ExitCode {
    let agents = learning_chat::agents::AgentRegistry::load(settings.agents.path.as_deref())
        .map_err(|e| e.to_string())
        .and_then(|agents| {
            // The experiments name agents: checked against the file that defines them.
            learning_chat::experiments::Experiments::new(&settings.experiments, &agents)?;
            Ok(agents)
        });
    match agents {
        Ok(agents) => {
            println!("# configuration is valid");
            for deprecation in &settings.deprecations {
                println!("# warning: {deprecation}");
            }
            println!(
                "# provider: {}",
                if settings.uses_gemini() {
                    "gemini"
                } else {
                    "offline-simulated (no GEMINI_API_KEY)"
                }
            );
            println!("# agents: {}", agents.ids().join(", "));
            print!("{}", settings.to_masked_toml());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn serve(settings: Settings) -> ExitCode {
    // Before the runtime exists, so every thread's hub starts with the client; dropped last
    // (declared first), flushing queued error reports after the runtime has stopped.
    let sentry_guard = match telemetry::init_sentry(&settings) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(&settings.telemetry);
    for deprecation in &settings.deprecations {
        tracing::warn!("{deprecation}");
    }
    if sentry_guard.is_some() {
        tracing::info!(environment = %settings.telemetry.environment, "reporting errors to Sentry");
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if settings.server.worker_threads > 0 {
        runtime.worker_threads(settings.server.worker_threads);
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        if !settings.uses_gemini() {
            tracing::warn!(
                "NO GEMINI_API_KEY SET: answering from the built-in OFFLINE model; \
                 answers are not real. Set GEMINI_API_KEY to use Gemini."
            );
        }
        learning_chat::auth::log_mode(&settings);
        let application = Application::build(settings).await?;
        let metrics = application
            .metrics_addr()
            .map_or_else(|| "off".to_owned(), |addr| addr.to_string());
        tracing::info!(addr = %application.local_addr(), %metrics, provider = application.state().chat.provider().name(), "learning-chat listening");
        application.run_until_stopped(app::shutdown_signal()).await
    });
    // Last, after the drain: the spans of the final requests are queued by now.
    telemetry::shutdown_traces();
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("fatal: {e:#}");
            sentry::capture_message(&format!("fatal: {e:#}"), sentry::Level::Fatal);
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
