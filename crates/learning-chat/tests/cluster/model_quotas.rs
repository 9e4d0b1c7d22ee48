//! Per-model quotas across three servers behind the shipped nginx config, one Redis and a
//! simulator counting its quota per key and model: a burst of distinct questions on the chain
//! Flash -> Flash-Lite uses each model's whole quota (spill-over included) and never more, so the
//! upstream never answers 429; every server's /ready shows the cluster's windows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

use crate::support::cluster::{Cluster, ClusterConfig};
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;

const FLASH: &str = "gemini-2.5-flash";
const LITE: &str = "gemini-2.5-flash-lite";
/// Flash's quota (`upstream.rpm`) and the simulator's per model.
const FLASH_RPM: u32 = 10;
/// Flash-Lite's own, smaller quota (`[models."gemini-2.5-flash-lite"]`).
const LITE_RPM: u32 = 6;
/// Questions at once: more than both quotas together.
const QUESTIONS: usize = 40;

#[tokio::test]
async fn each_models_window_holds_cluster_wide_with_spill_over() {
    let files = tempfile::tempdir().unwrap();
    let agents = files.path().join("agents.toml");
    std::fs::write(
        &agents,
        format!(
            "[[agents]]\nid = 'tutor'\nname = 'Tutor'\ndescription = 'd'\n\
             system_prompt = 'You are a tutor.'\nmodels = ['{FLASH}', '{LITE}']\n"
        ),
    )
    .unwrap();
    let config = files.path().join("learning-chat.toml");
    std::fs::write(&config, format!("[models.\"{LITE}\"]\nrpm = {LITE_RPM}\n")).unwrap();
    let cluster = Cluster::start(ClusterConfig {
        sim_args: vec![
            "--latency-ms".into(),
            "300".into(),
            "--rpm".into(),
            FLASH_RPM.to_string(),
        ],
        rpm: FLASH_RPM,
        request_timeout_secs: 5,
        server_env: vec![
            (
                "LEARNING_CHAT_AGENTS__PATH".into(),
                agents.display().to_string(),
            ),
            ("LEARNING_CHAT_CONFIG".into(), config.display().to_string()),
        ],
        ..ClusterConfig::default()
    })
    .await;
    // All at once, through nginx to the three servers; the run takes seconds, well inside
    // one quota window, so each model's calls of the whole run are its busiest window.
    let statuses =
        join_all((0..QUESTIONS).map(|i| cluster.ask("tutor", format!("distinct question {i}"))))
            .await;
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    let stats = cluster.sim_stats().await;
    let calls = |model: &str| stats.per_model.get(model).map_or(0, |s| s.requests);
    eprintln!(
        "model quotas across 3 servers: {QUESTIONS} questions, {ok} answered, {refused} \
         refused; upstream calls {FLASH} {} (quota {FLASH_RPM}), {LITE} {} (quota {LITE_RPM}), \
         429s {}",
        calls(FLASH),
        calls(LITE),
        stats.rate_limited
    );
    assert_eq!(stats.rate_limited, 0, "no model was pushed past its quota");
    assert_eq!(
        (calls(FLASH), calls(LITE)),
        (u64::from(FLASH_RPM), u64::from(LITE_RPM)),
        "each model's whole quota used, and no more"
    );
    assert_eq!(ok, (FLASH_RPM + LITE_RPM) as usize);
    assert_eq!(refused, QUESTIONS - ok);
    // Every server shows the cluster's windows, not its own share.
    for server in &cluster.servers {
        let ready: Value = cluster
            .http
            .get(format!("http://127.0.0.1:{}/ready", server.port))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for (model, rpm) in [(FLASH, FLASH_RPM), (LITE, LITE_RPM)] {
            assert_eq!(ready["quotas"][model]["rpm"], rpm, "{ready}");
            assert_eq!(ready["quotas"][model]["requests_in_window"], rpm, "{ready}");
            assert_eq!(ready["quotas"][model]["remaining_in_window"], 0, "{ready}");
        }
    }
}
