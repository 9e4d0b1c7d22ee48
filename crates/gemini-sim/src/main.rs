//! `gemini-sim`: the simulator as a standalone server. Flags: `gemini-sim --help`.

use clap::Parser;
use gemini_sim::cli::Cli;
use gemini_sim::SimServer;
use std::io::IsTerminal;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Colour codes only for a terminal: logs are often piped into files and parsed.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let config = cli.to_config().map_err(anyhow::Error::msg)?;
    let server = SimServer::start(config.clone(), cli.bind).await?;
    let config_json = serde_json::to_string(&config)?;
    tracing::info!(addr = %server.addr(), config = %config_json, "gemini-sim listening");
    server.spawn_rate_logger(Duration::from_secs(cli.log_every_s.max(1)));
    wait_for_stop_signal().await?;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// Ctrl-C, or SIGTERM (what `kill`, systemd and container runtimes send).
async fn wait_for_stop_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}
