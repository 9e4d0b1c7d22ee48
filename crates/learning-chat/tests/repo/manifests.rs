//! The deployment files parsed: deploy/k8s with the Kubernetes 1.33 types of k8s-openapi, and
//! the service's settings loaded from an environment the way the service loads them.
//!
//! Every environment variable handed to the service is checked against what it really reads: the
//! `LEARNING_CHAT_*` ones by loading them through the service's own `Settings` (which rejects
//! unknown keys), the others against the documented list of plain names (`GEMINI_API_KEY`,
//! `REDIS_URL`, ...) kept for deployments that already set them.

use figment::providers::Serialized;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodTemplateSpec, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use learning_chat::config::placeholders::{is_shipped_placeholder, SHIPPED_PLACEHOLDERS};
use learning_chat::Settings;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use crate::support::{read, repo};

/// The service's Deployment: the name docs/deploy.md and the scrape config use.
pub const APP: &str = "learning-chat-api";
/// The Redis Deployment and Service.
pub const REDIS: &str = "redis";
/// The PostgreSQL StatefulSet and its headless Service.
pub const POSTGRES: &str = "postgres";
/// Variables the service reads besides `LEARNING_CHAT_<SECTION>__<KEY>` (docs/configuration.md).
pub const SEED_NAMES: &[&str] = &[
    "GEMINI_API_KEY",
    "GEMINI_BASE_URL",
    "REDIS_URL",
    "REDIS_HOST",
    "REDIS_PORT",
    "SENTRY_DSN",
    "LEARNING_CHAT_BIND",
    "RUST_LOG",
];
/// Seconds between the end of the drain and SIGKILL that we insist on (exit, telemetry flush).
pub const DRAIN_MARGIN_SECS: u64 = 5;
/// The build command documented in docs/deploy.md and the Dockerfile.
pub const BUILD_COMMAND: &str = "docker build -f deploy/docker/Dockerfile -t ";

// ---------------------------------------------------------------------------------------------
// Kubernetes manifests
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
pub struct Manifests {
    /// File name -> the (kind, name) of each object in it.
    pub objects: BTreeMap<String, Vec<(String, String)>>,
    pub deployments: Vec<Deployment>,
    pub stateful_sets: Vec<StatefulSet>,
    pub services: Vec<Service>,
    pub hpas: Vec<HorizontalPodAutoscaler>,
    pub pdbs: Vec<PodDisruptionBudget>,
    pub config_maps: Vec<ConfigMap>,
    pub secrets: Vec<Secret>,
}

impl Manifests {
    pub fn load() -> Manifests {
        let mut manifests = Manifests::default();
        let dir = repo().join("deploy/k8s");
        for file in yaml_files(&dir) {
            if file == "kustomization.yaml" {
                continue;
            }
            let text = read(&format!("deploy/k8s/{file}"));
            for (i, document) in yaml_serde::Deserializer::from_str(&text).enumerate() {
                let yaml = yaml_serde::Value::deserialize(document)
                    .unwrap_or_else(|e| panic!("deploy/k8s/{file}: document {i}: {e}"));
                if yaml.is_null() {
                    continue;
                }
                manifests.add(&file, i, &yaml);
            }
        }
        assert!(
            !manifests.objects.is_empty(),
            "no manifests in {}",
            dir.display()
        );
        manifests
    }

    pub fn add(&mut self, file: &str, i: usize, yaml: &yaml_serde::Value) {
        let doc = serde_json::to_value(yaml).unwrap();
        let origin = format!("deploy/k8s/{file} (document {i})");
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{origin}: no metadata.name"))
            .to_owned();
        match kind.as_str() {
            "Deployment" => self.deployments.push(typed(&doc, &origin)),
            "StatefulSet" => self.stateful_sets.push(typed(&doc, &origin)),
            "Service" => self.services.push(typed(&doc, &origin)),
            "HorizontalPodAutoscaler" => self.hpas.push(typed(&doc, &origin)),
            "PodDisruptionBudget" => self.pdbs.push(typed(&doc, &origin)),
            "ConfigMap" => self.config_maps.push(typed(&doc, &origin)),
            "Secret" => self.secrets.push(typed(&doc, &origin)),
            other => panic!("{origin}: kind {other:?} is not one this test knows; teach it"),
        }
        self.objects
            .entry(file.to_owned())
            .or_default()
            .push((kind, name));
    }

    pub fn deployment(&self, name: &str) -> &Deployment {
        self.deployments
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no Deployment named {name} in deploy/k8s"))
    }

    pub fn stateful_set(&self, name: &str) -> &StatefulSet {
        self.stateful_sets
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no StatefulSet named {name} in deploy/k8s"))
    }

    /// Every workload's name and pod template: the Deployments' and the StatefulSets'.
    pub fn pod_templates(&self) -> Vec<(String, &PodTemplateSpec)> {
        let deployments = self
            .deployments
            .iter()
            .map(|d| (d.metadata.name.clone().unwrap_or_default(), pod_template(d)));
        let stateful_sets = self.stateful_sets.iter().map(|s| {
            (
                s.metadata.name.clone().unwrap_or_default(),
                &s.spec.as_ref().expect("a StatefulSet spec").template,
            )
        });
        deployments.chain(stateful_sets).collect()
    }

    pub fn service(&self, name: &str) -> &Service {
        self.services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no Service named {name} in deploy/k8s"))
    }

    pub fn config_map(&self, name: &str) -> Option<&ConfigMap> {
        self.config_maps
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
    }

    pub fn secret(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let secret = self
            .secrets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))?;
        let mut values = secret.string_data.clone().unwrap_or_default();
        for (key, bytes) in secret.data.clone().unwrap_or_default() {
            values.insert(key, String::from_utf8(bytes.0).unwrap());
        }
        Some(values)
    }

    /// The one container of the service.
    pub fn app_container(&self) -> &Container {
        let spec = pod_spec(self.deployment(APP));
        assert_eq!(spec.containers.len(), 1, "{APP} should run one container");
        &spec.containers[0]
    }

    /// The environment the service's container starts with once the operator has replaced the
    /// Secret's placeholders (as docs/deploy.md says to), every reference resolved.
    pub fn env_of(&self, container: &Container) -> BTreeMap<String, String> {
        let mut env = self.env_as_shipped(container);
        for value in env.values_mut() {
            if is_shipped_placeholder(value) {
                *value = operator_secret(value);
            }
        }
        env
    }

    /// The environment exactly as the manifests ship it, placeholders and all.
    pub fn env_as_shipped(&self, container: &Container) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for from in container.env_from.iter().flatten() {
            assert!(
                from.prefix.is_none(),
                "envFrom prefixes are not checked here"
            );
            if let Some(r) = &from.config_map_ref {
                match self.config_map(&r.name) {
                    Some(map) => env.extend(map.data.clone().unwrap_or_default()),
                    None => panic!("envFrom names ConfigMap {} which deploy/k8s lacks", r.name),
                }
            }
            if let Some(r) = &from.secret_ref {
                match self.secret(&r.name) {
                    Some(values) => env.extend(values),
                    None => panic!("envFrom names Secret {} which deploy/k8s lacks", r.name),
                }
            }
        }
        for var in container.env.iter().flatten() {
            let value = match (&var.value, &var.value_from) {
                (Some(value), _) => Some(value.clone()),
                (None, None) => Some(String::new()),
                (None, Some(source)) => {
                    if let Some(r) = &source.secret_key_ref {
                        let secret = self
                            .secret(&r.name)
                            .unwrap_or_else(|| panic!("{}: no Secret named {}", var.name, r.name));
                        let value = secret.get(&r.key).cloned();
                        assert!(
                            value.is_some() || r.optional == Some(true),
                            "{}: Secret {} has no key {} (and the reference is not optional)",
                            var.name,
                            r.name,
                            r.key
                        );
                        value
                    } else if let Some(r) = &source.config_map_key_ref {
                        let map = self.config_map(&r.name).unwrap_or_else(|| {
                            panic!("{}: no ConfigMap named {}", var.name, r.name)
                        });
                        let value = map.data.as_ref().and_then(|d| d.get(&r.key)).cloned();
                        assert!(
                            value.is_some() || r.optional == Some(true),
                            "{}: ConfigMap {} has no key {}",
                            var.name,
                            r.name,
                            r.key
                        );
                        value
                    } else {
                        panic!(
                            "{}: only secretKeyRef and configMapKeyRef are checked here",
                            var.name
                        )
                    }
                }
            };
            if let Some(value) = value {
                env.insert(var.name.clone(), value);
            }
        }
        env
    }
}

/// What an operator puts where the repository ships a placeholder: a value of the same shape
/// (a URL keeps its form, with the placeholder part replaced) that is nobody else's.
pub fn operator_secret(placeholder: &str) -> String {
    let own = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let mut value = placeholder.to_owned();
    while let Some(start) = value.find("REPLACE_WITH_") {
        let end = value[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(value.len(), |n| start + n);
        value.replace_range(start..end, own);
    }
    for shipped in SHIPPED_PLACEHOLDERS {
        value = value.replace(shipped, own);
    }
    value
}

pub fn yaml_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .collect()
}

/// Parses a manifest into its Kubernetes type and back: a field the 1.33 API does not know (a
/// typo such as `readinesProbe`, which the API server would drop or reject) makes the round trip
/// differ, so it fails here instead of being silently ignored.
pub fn typed<T: DeserializeOwned + Serialize>(doc: &Json, origin: &str) -> T {
    let object: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{origin}: not a valid Kubernetes 1.33 object: {e}"));
    let back = serde_json::to_value(&object).unwrap();
    if let Some(difference) = first_difference(doc, &back, "") {
        panic!("{origin}: {difference} (unknown field or wrongly typed value for Kubernetes 1.33)");
    }
    object
}

pub fn first_difference(written: &Json, understood: &Json, path: &str) -> Option<String> {
    match (written, understood) {
        (Json::Object(a), Json::Object(b)) => {
            for (key, value) in a {
                let here = format!("{path}.{key}");
                match b.get(key) {
                    None => return Some(format!("`{here}` was not understood")),
                    Some(other) => {
                        if let Some(d) = first_difference(value, other, &here) {
                            return Some(d);
                        }
                    }
                }
            }
            b.keys()
                .find(|key| !a.contains_key(*key))
                .map(|key| format!("`{path}.{key}` appeared from nowhere"))
        }
        (Json::Array(a), Json::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, &format!("{path}[{i}]"))),
        (a, b) if a == b => None,
        (a, b) => Some(format!("`{path}` was written {a} but read as {b}")),
    }
}

pub fn pod_template(deployment: &Deployment) -> &PodTemplateSpec {
    &deployment.spec.as_ref().unwrap().template
}

pub fn pod_spec(deployment: &Deployment) -> &k8s_openapi::api::core::v1::PodSpec {
    pod_template(deployment).spec.as_ref().unwrap()
}

pub fn pod_labels(deployment: &Deployment) -> BTreeMap<String, String> {
    pod_template(deployment)
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

/// Whether a label selector selects pods with these labels (matchLabels and matchExpressions).
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            other => panic!("unknown selector operator {other}"),
        }
    });
    let empty = selector
        .match_labels
        .as_ref()
        .is_none_or(BTreeMap::is_empty)
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty);
    !empty && by_labels && by_expressions
}

/// The container port a Service or probe port names (by name or number).
pub fn resolve_port(container: &Container, port: &IntOrString) -> Option<i32> {
    let ports = container.ports.iter().flatten();
    match port {
        IntOrString::Int(n) => ports.map(|p| p.container_port).find(|p| p == n),
        IntOrString::String(name) => ports
            .filter(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .next(),
    }
}

/// Deployments whose pods a Service selects.
/// The workloads (Deployments and StatefulSets) whose pods `service` selects, by name.
pub fn pods_selected_by<'a>(
    manifests: &'a Manifests,
    service: &Service,
) -> Vec<(String, &'a PodTemplateSpec)> {
    let selector = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    manifests
        .pod_templates()
        .into_iter()
        .filter(|(_, template)| {
            let labels = template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .collect()
}

pub fn selected_by<'a>(manifests: &'a Manifests, service: &Service) -> Vec<&'a Deployment> {
    let selector = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    manifests
        .deployments
        .iter()
        .filter(|d| {
            let labels = pod_labels(d);
            !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The service's settings, loaded the way the service loads them
// ---------------------------------------------------------------------------------------------

/// The settings key a variable sets, as `Settings::figment` maps it (`None`: read elsewhere).
pub fn settings_key(name: &str) -> Option<String> {
    let key = match name {
        "LEARNING_CHAT_BIND" => "server.bind",
        "GEMINI_API_KEY" => "gemini.api_key",
        "GEMINI_BASE_URL" => "gemini.base_url",
        "SENTRY_DSN" => "telemetry.sentry_dsn",
        "REDIS_URL" => "redis.url",
        // REDIS_HOST/REDIS_PORT are resolved in `from_figment`; RUST_LOG by the log setup.
        "REDIS_HOST" | "REDIS_PORT" | "RUST_LOG" => return None,
        _ => {
            let rest = name.strip_prefix("LEARNING_CHAT_")?;
            return Some(rest.to_lowercase().replace("__", "."));
        }
    };
    Some(key.to_owned())
}

/// Loads the service's settings with this environment on top of its own layers
/// (`Settings::figment`) and validation (`Settings::from_figment`, which rejects any
/// `LEARNING_CHAT_*` name that is not a real key); non-prefixed names must be documented ones.
/// The values are merged as figment's `Env` would parse them, without touching the process
/// environment (tests run in parallel); `check_config_accepts` runs the real binary on top.
pub fn settings_from_env(env: &BTreeMap<String, String>, origin: &str) -> Settings {
    let mut figment = Settings::figment(None);
    for (name, value) in env {
        assert!(
            name.starts_with("LEARNING_CHAT_") || SEED_NAMES.contains(&name.as_str()),
            "{origin}: {name} is not a variable the service reads (docs/configuration.md)"
        );
        assert!(
            name != "LEARNING_CHAT_CONFIG",
            "{origin}: LEARNING_CHAT_CONFIG names a file this test cannot see; use variables"
        );
        if let Some(rest) = name.strip_prefix("LEARNING_CHAT_") {
            assert!(
                name == "LEARNING_CHAT_BIND" || rest.split("__").count() == 2,
                "{origin}: {name} is not LEARNING_CHAT_<SECTION>__<KEY>"
            );
        }
        if let Some(key) = settings_key(name) {
            let parsed: figment::value::Value = value.parse().unwrap();
            figment = figment.merge(Serialized::default(&key, parsed));
        }
    }
    if !env.contains_key("REDIS_URL") {
        if let Some(host) = env.get("REDIS_HOST") {
            let port = env.get("REDIS_PORT").map_or("6379", String::as_str);
            figment = figment.merge(Serialized::default(
                "redis.url",
                format!("redis://{host}:{port}"),
            ));
        }
    }
    Settings::from_figment(figment)
        .unwrap_or_else(|e| panic!("{origin}: the service would refuse to start: {e}"))
}

/// Runs the real binary's `check-config` with exactly this environment.
pub fn check_config_accepts(env: &BTreeMap<String, String>, origin: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_learning-chat"))
        .arg("check-config")
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("# configuration is valid"),
        "{origin}: `learning-chat check-config` rejects the environment:\n{stderr}{stdout}"
    );
}
