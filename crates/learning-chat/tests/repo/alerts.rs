//! The alert rules pass promtool (checks and unit tests), the Prometheus examples are valid and
//! every dashboard query parses.

use super::promql::{alert_exprs, dashboard_exprs};
use crate::support::{read, repo_path};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// promtool, or a failure saying how to get it: these checks must never skip silently.
fn promtool() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "promtool is not installed, so the alert rules cannot be checked. \
             Run ./scripts/test.sh, which installs it (Debian/Ubuntu: apt-get install prometheus)."
        )
    })
}

fn run_promtool(args: &[&str], dir: &Path) -> String {
    let output = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let dir = repo_path("deploy/prometheus");
    let checked = run_promtool(&["check", "rules", "alerts.yml"], &dir);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run_promtool(&["test", "rules", "alerts.test.yml"], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert docs/observability.md documents is there, and tested.
    let names: BTreeSet<String> = alert_exprs().into_iter().map(|(name, _)| name).collect();
    for alert in [
        "LearningChatInstanceDown",
        "LearningChatHigh5xxRate",
        "LearningChatLatencyP99High",
        "LearningChatGeminiQuotaHigh",
        "LearningChatUpstreamSaturated",
        "LearningChatQueueNearlyFull",
        "LearningChatShedding",
        "LearningChatCacheHitRateCollapse",
        "LearningChatRedisDown",
        "LearningChatApiKeysStale",
        "LearningChatSafetyWebhookBacklog",
    ] {
        assert!(names.contains(alert), "alerts.yml lacks {alert}");
        let tests = read("deploy/prometheus/alerts.test.yml");
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "alerts.test.yml does not test {alert}"
        );
    }
}

#[test]
fn the_prometheus_config_example_is_valid() {
    let out = run_promtool(
        &["check", "config", "prometheus.yml"],
        &repo_path("deploy/prometheus"),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    // promtool has no offline query checker, so each query becomes a recording rule.
    let mut rules = Vec::new();
    for (i, (panel, expr)) in dashboard_exprs().into_iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$job", "learning-chat")
            .replace("$instance", ".*");
        assert!(!expr.contains('$'), "{panel}: unknown variable in {expr}");
        rules.push(
            yaml_serde::to_value(
                serde_json::json!({ "record": format!("dashboard_query_{i}"), "expr": expr }),
            )
            .unwrap(),
        );
    }
    let file = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dashboard.yml"),
        yaml_serde::to_string(&file).unwrap(),
    )
    .unwrap();
    run_promtool(&["check", "rules", "dashboard.yml"], dir.path());
}

#[test]
fn the_kubernetes_scrape_config_finds_the_deployments_pods() {
    let scrape: yaml_serde::Value =
        yaml_serde::from_str(&read("deploy/prometheus/kubernetes-scrape.yml")).unwrap();
    let deployment: yaml_serde::Value =
        yaml_serde::from_str(&read("deploy/k8s/deployment.yaml")).unwrap();
    let template = &deployment["spec"]["template"]["metadata"];
    let app_label = template["labels"]["app"]
        .as_str()
        .expect("the pod template's app label");
    let annotations = &template["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));
    let port = annotations["prometheus.io/port"]
        .as_str()
        .expect("a port annotation");
    let container_ports: Vec<String> = deployment["spec"]["template"]["spec"]["containers"][0]
        ["ports"]
        .as_sequence()
        .expect("container ports")
        .iter()
        .filter_map(|p| p["containerPort"].as_u64().map(|n| n.to_string()))
        .collect();
    assert!(
        container_ports.contains(&port.to_owned()),
        "{port} not in {container_ports:?}"
    );
    let job = &scrape["scrape_configs"][0];
    let relabels = job["relabel_configs"]
        .as_sequence()
        .expect("relabel_configs");
    let keeps_app = relabels.iter().any(|r| {
        r["action"].as_str() == Some("keep")
            && r["source_labels"][0].as_str() == Some("__meta_kubernetes_pod_label_app")
            && r["regex"].as_str() == Some(app_label)
    });
    assert!(
        keeps_app,
        "kubernetes-scrape.yml must keep pods labelled app={app_label}"
    );
    let names_job = relabels.iter().any(|r| {
        r["target_label"].as_str() == Some("job")
            && r["replacement"].as_str() == Some("learning-chat")
    });
    assert!(names_job, "the alerts select job=\"learning-chat\"");
    // And the static example uses the same job name.
    let config: yaml_serde::Value =
        yaml_serde::from_str(&read("deploy/prometheus/prometheus.yml")).unwrap();
    assert_eq!(
        config["scrape_configs"][0]["job_name"].as_str(),
        Some("learning-chat")
    );
}
