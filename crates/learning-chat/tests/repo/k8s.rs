//! deploy/k8s stays true to Kubernetes 1.33 and to itself: every object typed with no unknown
//! field, the kustomization complete, selectors, ports, probes, resources and variables right.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use super::manifests::{
    check_config_accepts, pod_labels, pod_spec, pod_template, pods_selected_by, resolve_port,
    selected_by, selects, settings_from_env, typed, yaml_files, Manifests, APP,
};
use crate::support::{read, repo};

// ---------------------------------------------------------------------------------------------
// Kubernetes tests
// ---------------------------------------------------------------------------------------------

#[test]
fn every_manifest_is_a_kubernetes_1_30_object_with_no_unknown_field() {
    let manifests = Manifests::load();
    let kinds: BTreeSet<String> = manifests
        .objects
        .values()
        .flatten()
        .map(|(kind, _)| kind.clone())
        .collect();
    for kind in [
        "Deployment",
        "StatefulSet",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "Secret",
    ] {
        assert!(kinds.contains(kind), "deploy/k8s has no {kind}");
    }
    let mut seen = BTreeSet::new();
    for (kind, name) in manifests.objects.values().flatten() {
        assert!(
            seen.insert((kind, name)),
            "{kind} {name} is defined twice in deploy/k8s"
        );
    }
    // And the negative case: the round trip does catch a typo.
    let typo = serde_json::json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
        "spec": {"selectr": {"app": "x"}}
    });
    let caught = std::panic::catch_unwind(|| typed::<Service>(&typo, "typo"));
    assert!(caught.is_err(), "a misspelt field must not pass");
}

#[test]
fn the_kustomization_lists_every_manifest() {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Kustomization {
        api_version: String,
        kind: String,
        resources: Vec<String>,
    }
    let k: Kustomization = yaml_serde::from_str(&read("deploy/k8s/kustomization.yaml")).unwrap();
    assert_eq!(k.api_version, "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k.kind, "Kustomization");
    let listed: BTreeSet<String> = k.resources.iter().cloned().collect();
    assert_eq!(
        listed.len(),
        k.resources.len(),
        "a resource is listed twice"
    );
    let mut files = yaml_files(&repo().join("deploy/k8s"));
    files.remove("kustomization.yaml");
    assert_eq!(
        listed, files,
        "kustomization.yaml resources vs the files in deploy/k8s"
    );
}

#[test]
fn kubectl_kustomize_builds_every_object() {
    let dir = repo().join("deploy/k8s");
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| {
            // This check must never skip silently.
            panic!(
                "kubectl is not runnable ({e}), so `kubectl kustomize deploy/k8s` cannot be \
                 checked. Run ./scripts/test.sh, which installs it (Debian: kubernetes-client)."
            )
        });
    assert!(
        output.status.success(),
        "kubectl kustomize deploy/k8s failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let built: BTreeSet<(String, String)> = yaml_serde::Deserializer::from_slice(&output.stdout)
        .map(|doc| {
            let v = yaml_serde::Value::deserialize(doc).unwrap();
            (
                v["kind"].as_str().unwrap().to_owned(),
                v["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let parsed: BTreeSet<(String, String)> =
        Manifests::load().objects.into_values().flatten().collect();
    assert_eq!(built, parsed);
}

#[test]
fn service_hpa_and_pdb_point_at_the_deployment_and_its_port() {
    let manifests = Manifests::load();
    for deployment in &manifests.deployments {
        let name = deployment.metadata.name.clone().unwrap();
        assert!(
            selects(
                &deployment.spec.as_ref().unwrap().selector,
                &pod_labels(deployment)
            ),
            "Deployment {name}: its selector does not select its own pods"
        );
    }
    for service in &manifests.services {
        let name = service.metadata.name.clone().unwrap();
        let targets = pods_selected_by(&manifests, service);
        assert_eq!(
            targets.len(),
            1,
            "Service {name} must select the pods of exactly one Deployment or StatefulSet"
        );
        let containers = &targets[0].1.spec.as_ref().expect("a pod spec").containers;
        for port in service.spec.as_ref().unwrap().ports.iter().flatten() {
            let target = port
                .target_port
                .clone()
                .unwrap_or(IntOrString::Int(port.port));
            assert!(
                containers
                    .iter()
                    .any(|c| resolve_port(c, &target).is_some()),
                "Service {name}: targetPort {target:?} is no containerPort of {}",
                targets[0].0
            );
        }
    }
    let service = manifests.service(APP);
    assert_eq!(
        selected_by(&manifests, service)[0].metadata.name.as_deref(),
        Some(APP)
    );
    let service_port = &service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    assert_eq!(
        resolve_port(
            manifests.app_container(),
            service_port.target_port.as_ref().unwrap()
        ),
        Some(8000),
        "the Service must reach the service's port 8000"
    );

    assert_eq!(manifests.hpas.len(), 1);
    let target = &manifests.hpas[0].spec.as_ref().unwrap().scale_target_ref;
    assert_eq!(
        (
            target.api_version.as_deref(),
            target.kind.as_str(),
            target.name.as_str()
        ),
        (Some("apps/v1"), "Deployment", APP)
    );

    assert_eq!(manifests.pdbs.len(), 1);
    let pdb = manifests.pdbs[0].spec.as_ref().unwrap();
    let selector = pdb.selector.as_ref().expect("the PDB has a selector");
    for deployment in &manifests.deployments {
        let name = deployment.metadata.name.as_deref().unwrap();
        assert_eq!(
            selects(selector, &pod_labels(deployment)),
            name == APP,
            "the PDB should select the pods of {APP} and no other (checked {name})"
        );
    }
    // A budget that allows no disruption at all would block every node drain.
    let allows_one = match (&pdb.max_unavailable, &pdb.min_available) {
        (Some(IntOrString::Int(n)), None) => *n >= 1,
        (None, Some(IntOrString::Int(n))) => *n < hpa_range(&manifests).0,
        (Some(IntOrString::String(_)), None) | (None, Some(IntOrString::String(_))) => true,
        other => panic!("the PDB should set exactly one of maxUnavailable/minAvailable: {other:?}"),
    };
    assert!(
        allows_one,
        "the PDB must allow at least one pod to be drained at a time"
    );
}

pub fn hpa_range(manifests: &Manifests) -> (i32, i32) {
    let spec = manifests.hpas[0].spec.as_ref().unwrap();
    (spec.min_replicas.unwrap_or(1), spec.max_replicas)
}

#[test]
fn resources_and_autoscaling_are_the_seeds() {
    let manifests = Manifests::load();
    let container = manifests.app_container();
    let resources = container.resources.as_ref().expect("resources are set");
    let quantities =
        |m: &Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
            m.clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, q)| (k, q.0))
                .collect::<BTreeMap<_, _>>()
        };
    let expect = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        quantities(&resources.requests),
        expect(&[("cpu", "500m"), ("memory", "512Mi")])
    );
    assert_eq!(
        quantities(&resources.limits),
        expect(&[("cpu", "1000m"), ("memory", "1Gi")])
    );

    let hpa = manifests.hpas[0].spec.as_ref().unwrap();
    assert_eq!(hpa_range(&manifests), (5, 20));
    let metrics = hpa.metrics.as_ref().expect("HPA metrics");
    assert_eq!(metrics.len(), 1, "the HPA scales on CPU only");
    let resource = metrics[0].resource.as_ref().expect("a Resource metric");
    assert_eq!(
        (metrics[0].type_.as_str(), resource.name.as_str()),
        ("Resource", "cpu")
    );
    assert_eq!(resource.target.type_, "Utilization");
    assert_eq!(resource.target.average_utilization, Some(70));

    // The HPA owns the replica count: a fixed spec.replicas would reset it on every apply.
    assert_eq!(
        manifests.deployment(APP).spec.as_ref().unwrap().replicas,
        None,
        "leave spec.replicas to the HPA"
    );
    assert_eq!(
        manifests.deployment(APP).metadata.name.as_deref(),
        Some("learning-chat-api")
    );
}

#[test]
fn probes_and_the_scrape_annotations_use_the_served_paths_and_port() {
    let manifests = Manifests::load();
    let container = manifests.app_container();
    let settings = settings_from_env(&manifests.env_of(container), "deploy/k8s");
    let listen_port = i32::from(settings.server.bind.port());
    let container_port = resolve_port(container, &IntOrString::String("http".into()));
    assert_eq!(container_port, Some(8000), "containerPort 8000, named http");
    assert_eq!(
        listen_port, 8000,
        "the service must listen where the containerPort says"
    );

    for (what, probe, path) in [
        ("livenessProbe", &container.liveness_probe, "/health"),
        ("readinessProbe", &container.readiness_probe, "/ready"),
    ] {
        let probe = probe.as_ref().unwrap_or_else(|| panic!("no {what}"));
        let get = probe
            .http_get
            .as_ref()
            .unwrap_or_else(|| panic!("{what} should be an httpGet"));
        assert_eq!(get.path.as_deref(), Some(path), "{what} path");
        assert_eq!(
            resolve_port(container, &get.port),
            Some(listen_port),
            "{what} port"
        );
    }

    let annotations = pod_template(manifests.deployment(APP))
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    let get = |k: &str| annotations.get(k).map(String::as_str);
    assert_eq!(get("prometheus.io/scrape"), Some("true"));
    assert_eq!(get("prometheus.io/path"), Some("/metrics"));
    // Scraped on the metrics listener, which listens beyond the pod's loopback, on its own
    // named port; the service port does not serve /metrics.
    assert!(
        settings.telemetry.metrics_enabled,
        "the pods are scraped: keep metrics on"
    );
    let metrics = settings
        .metrics
        .listener()
        .unwrap()
        .expect("metrics.bind is set for the pods");
    assert!(
        metrics.ip().is_unspecified(),
        "metrics.bind {metrics} is unreachable from Prometheus outside the pod"
    );
    assert_ne!(i32::from(metrics.port()), listen_port);
    assert_eq!(
        get("prometheus.io/port"),
        Some(metrics.port().to_string().as_str())
    );
    assert_eq!(
        resolve_port(container, &IntOrString::String("metrics".into())),
        Some(i32::from(metrics.port())),
        "a containerPort named metrics"
    );
    assert!(
        !settings.metrics.on_service_port,
        "/metrics stays off the service port"
    );
}

#[test]
fn every_k8s_variable_is_one_the_service_reads_and_every_reference_resolves() {
    let manifests = Manifests::load();
    for deployment in &manifests.deployments {
        for container in &pod_spec(deployment).containers {
            // Resolving checks every configMapRef, secretRef and key reference.
            let env = manifests.env_of(container);
            if deployment.metadata.name.as_deref() == Some(APP) {
                let settings = settings_from_env(&env, "deploy/k8s");
                check_config_accepts(&env, "deploy/k8s");
                assert_eq!(
                    settings.upstream.rpm, 1000,
                    "the paid-tier quota of 1000 RPM"
                );
                assert!(
                    settings.uses_gemini(),
                    "the Secret's GEMINI_API_KEY reaches the pods"
                );
                assert!(settings.uses_redis(), "the pods share Redis");
                assert!(
                    settings
                        .database
                        .url()
                        .is_some_and(|u| u.starts_with("postgres://")),
                    "the pods share the records database in PostgreSQL"
                );
            }
        }
    }
    // The ConfigMap's keys are all variables (they reach the pods through envFrom).
    let config = manifests
        .config_map("learning-chat-api-config")
        .expect("the ConfigMap");
    let env: BTreeMap<String, String> = config.data.clone().unwrap_or_default();
    assert!(env.contains_key("LEARNING_CHAT_REDIS__REPLICAS"));
    settings_from_env(&env, "deploy/k8s/configmap.yaml");
    // The check does reject what the service would.
    let typo = BTreeMap::from([("LEARNING_CHAT_UPSTREAM__RPMS".to_owned(), "1".to_owned())]);
    assert!(std::panic::catch_unwind(|| settings_from_env(&typo, "typo")).is_err());
    let unknown = BTreeMap::from([("GEMINI_KEY".to_owned(), "x".to_owned())]);
    assert!(std::panic::catch_unwind(|| settings_from_env(&unknown, "unknown")).is_err());
}
