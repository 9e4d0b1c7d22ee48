//! deploy/docker: the Dockerfile builds what compose and Kubernetes run, non-root on port 8000,
//! and the health checks pass against a serving process only.

use clap::Parser;
use learning_chat::{Application, Settings};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use super::images::{
    compose, dockerfile, image_binaries, image_command, json_array, k8s_image, runtime_stage,
    seconds,
};
use super::manifests::Manifests;
use crate::support::read;

// ---------------------------------------------------------------------------------------------
// Docker tests
// ---------------------------------------------------------------------------------------------

#[test]
fn the_dockerfile_builds_both_binaries_on_rust_and_runs_them_on_debian_slim() {
    let stages = dockerfile();
    assert_eq!(stages.len(), 2, "a builder and a runtime stage");
    assert_eq!(stages[0].from, "rust:1-bookworm");
    assert_eq!(stages[0].name.as_deref(), Some("builder"));
    assert_eq!(stages[1].from, "debian:bookworm-slim");
    let binaries = image_binaries();
    assert_eq!(
        binaries,
        BTreeSet::from(["learning-chat".to_owned(), "gemini-sim".to_owned()])
    );
    let runtime = runtime_stage(&stages);
    assert!(
        runtime
            .all("RUN")
            .iter()
            .any(|r| r.contains("apt-get install") && r.contains("ca-certificates")),
        "the runtime installs ca-certificates"
    );
    let ignore = read(".dockerignore");
    for excluded in ["target", ".git"] {
        assert!(
            ignore.lines().any(|l| l.trim() == excluded),
            ".dockerignore should exclude {excluded}"
        );
    }
}

#[test]
fn the_runtime_image_is_non_root_and_exposes_8000() {
    let stages = dockerfile();
    let runtime = runtime_stage(&stages);
    let user = runtime.one("USER");
    let uid = user.split(':').next().unwrap();
    let uid: u32 = uid
        .parse()
        .unwrap_or_else(|_| panic!("USER {user}: numeric, so Kubernetes can verify runAsNonRoot"));
    assert_ne!(uid, 0, "the image must not run as root");
    let exposed: Vec<&str> = runtime
        .all("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .collect();
    assert_eq!(exposed, ["8000"]);
    assert_eq!(
        Settings::default().server.bind.port(),
        8000,
        "EXPOSE is where the service listens"
    );
    let (entrypoint, cmd) = image_command();
    assert_eq!(entrypoint, ["learning-chat"]);
    assert_eq!(cmd, ["serve"]);
}

#[test]
fn every_command_that_compose_and_k8s_run_is_built_into_the_image() {
    let binaries = image_binaries();
    let (entrypoint, cmd) = image_command();
    let manifests = Manifests::load();
    let mut commands: Vec<(String, Vec<String>)> = Vec::new();
    let container = manifests.app_container();
    let argv = match (&container.command, &container.args) {
        (Some(command), args) => [command.clone(), args.clone().unwrap_or_default()].concat(),
        (None, Some(args)) => [entrypoint.clone(), args.clone()].concat(),
        (None, None) => [entrypoint.clone(), cmd.clone()].concat(),
    };
    commands.push(("deploy/k8s".into(), argv));
    for (name, service) in &compose().services {
        if service.image != k8s_image() {
            continue;
        }
        let argv = [
            service
                .entrypoint
                .clone()
                .unwrap_or_else(|| entrypoint.clone()),
            service.command.clone().unwrap_or_else(|| {
                if service.entrypoint.is_some() {
                    Vec::new()
                } else {
                    cmd.clone()
                }
            }),
        ]
        .concat();
        commands.push((format!("compose service {name}"), argv));
    }
    for (origin, argv) in &commands {
        assert!(
            binaries.contains(&argv[0]),
            "{origin} runs {}, not built into the image",
            argv[0]
        );
        match argv[0].as_str() {
            // The arguments are ones the real binary accepts.
            "learning-chat" => {
                let status = Command::new(env!("CARGO_BIN_EXE_learning-chat"))
                    .args(&argv[1..])
                    .arg("--help")
                    .output()
                    .unwrap()
                    .status;
                assert!(
                    status.success(),
                    "{origin}: `{}` is not a learning-chat command",
                    argv.join(" ")
                );
            }
            "gemini-sim" => {
                let cli = gemini_sim::cli::Cli::try_parse_from(argv)
                    .unwrap_or_else(|e| panic!("{origin}: {e}"));
                cli.to_config().unwrap_or_else(|e| panic!("{origin}: {e}"));
            }
            other => panic!("{origin}: no check for {other}"),
        }
    }
    assert!(
        commands.len() >= 5,
        "k8s plus four compose services use the image: {commands:?}"
    );
}

/// Runs a health-check command with its port swapped for a test server's; true when it passes.
async fn probe_passes(argv: &[String], port_in_command: u16, port: u16) -> bool {
    let from = format!("/dev/tcp/127.0.0.1/{port_in_command}");
    assert!(
        argv.iter().any(|a| a.contains(&from)),
        "the check should probe {from}: {argv:?}"
    );
    let argv: Vec<String> = argv
        .iter()
        .map(|a| a.replace(&from, &format!("/dev/tcp/127.0.0.1/{port}")))
        .collect();
    let run = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .kill_on_drop(true)
        .status();
    // Only bounds a hang: a check that passes on a loaded machine may take a while to start.
    match tokio::time::timeout(Duration::from_secs(30), run).await {
        Ok(status) => status.unwrap().success(),
        Err(_) => false,
    }
}

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn the_health_checks_pass_against_a_serving_process_only() {
    // The image's HEALTHCHECK against the real service.
    let stages = dockerfile();
    let healthcheck = runtime_stage(&stages).one("HEALTHCHECK");
    let argv = json_array(
        &healthcheck[healthcheck.find("CMD ").expect("HEALTHCHECK ... CMD") + 4..],
        "HEALTHCHECK",
    );
    let mut settings = Settings::default();
    settings.server.bind = "127.0.0.1:0".parse().unwrap();
    settings.metrics.bind = "off".to_owned();
    // Not the default ./learning-chat.db, which every run would share.
    settings.database.url = crate::support::fresh_records_url();
    let port_in_image = Settings::default().server.bind.port();
    let app = Application::build(settings).await.unwrap();
    let port = app.local_addr().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    assert!(
        probe_passes(&argv, port_in_image, port).await,
        "HEALTHCHECK fails against a healthy service"
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    assert!(
        !probe_passes(&argv, port_in_image, closed_port()).await,
        "HEALTHCHECK passes with nothing listening"
    );

    // compose.yaml's gemini-sim health check against the real simulator.
    let compose = compose();
    let check = compose.services["gemini-sim"].healthcheck.as_ref().unwrap();
    assert_eq!(check.test[0], "CMD");
    assert!(seconds(&check.timeout) <= seconds(&check.interval) && check.retries > 0);
    let sim = gemini_sim::SimServer::start(
        gemini_sim::SimConfig::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    assert!(
        probe_passes(&check.test[1..], 8100, sim.addr().port()).await,
        "gemini-sim health check fails"
    );
    sim.shutdown().await;
    assert!(!probe_passes(&check.test[1..], 8100, closed_port()).await);
}
