//! `learning-chat-loadtest`: the reference load profile (1000 users, 50/s, 5-15 s think time) on
//! goose (default), or one of the other generators (`open-loop`, `burst`) when the first argument
//! names it.

use clap::Parser;
use learning_chat_loadtest::burst::{self, BurstArgs};
use learning_chat_loadtest::openloop::{self, OpenLoopArgs};
use learning_chat_loadtest::{scenario, LoadOptions, Report};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    learning_chat_loadtest::install_crypto_provider();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match args.first().map(String::as_str) {
        // Subcommands are recognised before goose sees argv: goose rejects unknown words.
        Some("open-loop") => {
            let args = OpenLoopArgs::parse_from(std::env::args().skip(1));
            let summary = args.target.summary_json.clone();
            runtime
                .block_on(openloop::run(args))
                .map(|report| (report, summary))
        }
        Some("burst") => {
            let args = BurstArgs::parse_from(std::env::args().skip(1));
            let summary = args.target.summary_json.clone();
            runtime
                .block_on(burst::run(args))
                .map(|report| (report, summary))
        }
        _ => {
            if args.iter().any(|a| a == "-h" || a == "--help") {
                // A closed pipe (`| head`) is not an error worth a panic.
                let _ = writeln!(std::io::stdout(), "{}", scenario::help());
                return ExitCode::SUCCESS;
            }
            let (options, goose_args) =
                match LoadOptions::split_args(&args, |var| std::env::var(var).ok()) {
                    Ok(split) => split,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                };
            let summary = options.summary_json.clone();
            runtime
                .block_on(scenario::run(options, goose_args))
                .map(|report| (report, summary))
        }
    };
    match result {
        Ok((report, summary)) => finish(&report, summary),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the report and writes its JSON when asked.
fn finish(report: &Report, summary: Option<PathBuf>) -> ExitCode {
    let _ = writeln!(std::io::stdout(), "{}", report.to_text());
    if let Some(path) = summary {
        if let Err(e) = report.write_json(&path) {
            eprintln!("error: cannot write {}: {e:#}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
