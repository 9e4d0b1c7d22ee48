//! The deployment files stay true to each other and to the service, with no cluster and no Docker
//! engine: deploy/k8s (parsed with the Kubernetes 1.30 types of k8s-openapi), deploy/docker
//! (compose.yaml and the Dockerfile) and docs/deploy.md.
//!
//! Every environment variable handed to the service is checked against what it really reads: the
//! `LEARNING_CHAT_*` ones by loading them through the service's own `Settings` (which rejects
//! unknown keys), the others against the documented list of the seed's names.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

use clap::Parser;
use figment::providers::Serialized;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodTemplateSpec, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use learning_chat::{Application, Settings};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The service's Deployment: the seed's name.
const APP: &str = "learning-chat-api";
/// The Redis Deployment and Service.
const REDIS: &str = "redis";
/// Variables the service reads besides `LEARNING_CHAT_<SECTION>__<KEY>` (docs/configuration.md).
const SEED_NAMES: &[&str] = &[
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
const DRAIN_MARGIN_SECS: u64 = 5;
/// The build command documented in docs/deploy.md and the Dockerfile.
const BUILD_COMMAND: &str = "docker build -f deploy/docker/Dockerfile -t ";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    let full = repo().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

// ---------------------------------------------------------------------------------------------
// Kubernetes manifests
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Manifests {
    /// File name -> the (kind, name) of each object in it.
    objects: BTreeMap<String, Vec<(String, String)>>,
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    hpas: Vec<HorizontalPodAutoscaler>,
    pdbs: Vec<PodDisruptionBudget>,
    config_maps: Vec<ConfigMap>,
    secrets: Vec<Secret>,
}

impl Manifests {
    fn load() -> Manifests {
        let mut manifests = Manifests::default();
        let dir = repo().join("deploy/k8s");
        for file in yaml_files(&dir) {
            if file == "kustomization.yaml" {
                continue;
            }
            let text = read(&format!("deploy/k8s/{file}"));
            for (i, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
                let yaml = serde_yaml::Value::deserialize(document)
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

    fn add(&mut self, file: &str, i: usize, yaml: &serde_yaml::Value) {
        let doc = serde_json::to_value(yaml).unwrap();
        let origin = format!("deploy/k8s/{file} (document {i})");
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{origin}: no metadata.name"))
            .to_owned();
        match kind.as_str() {
            "Deployment" => self.deployments.push(typed(&doc, &origin)),
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

    fn deployment(&self, name: &str) -> &Deployment {
        self.deployments
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no Deployment named {name} in deploy/k8s"))
    }

    fn service(&self, name: &str) -> &Service {
        self.services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no Service named {name} in deploy/k8s"))
    }

    fn config_map(&self, name: &str) -> Option<&ConfigMap> {
        self.config_maps
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
    }

    fn secret(&self, name: &str) -> Option<BTreeMap<String, String>> {
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
    fn app_container(&self) -> &Container {
        let spec = pod_spec(self.deployment(APP));
        assert_eq!(spec.containers.len(), 1, "{APP} should run one container");
        &spec.containers[0]
    }

    /// The environment the service's container starts with, every reference resolved.
    fn env_of(&self, container: &Container) -> BTreeMap<String, String> {
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

fn yaml_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .collect()
}

/// Parses a manifest into its Kubernetes type and back: a field the 1.30 API does not know (a
/// typo such as `readinesProbe`, which the API server would drop or reject) makes the round trip
/// differ, so it fails here instead of being silently ignored.
fn typed<T: DeserializeOwned + Serialize>(doc: &Json, origin: &str) -> T {
    let object: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{origin}: not a valid Kubernetes 1.30 object: {e}"));
    let back = serde_json::to_value(&object).unwrap();
    if let Some(difference) = first_difference(doc, &back, "") {
        panic!("{origin}: {difference} (unknown field or wrongly typed value for Kubernetes 1.30)");
    }
    object
}

fn first_difference(written: &Json, understood: &Json, path: &str) -> Option<String> {
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

fn pod_template(deployment: &Deployment) -> &PodTemplateSpec {
    &deployment.spec.as_ref().unwrap().template
}

fn pod_spec(deployment: &Deployment) -> &k8s_openapi::api::core::v1::PodSpec {
    pod_template(deployment).spec.as_ref().unwrap()
}

fn pod_labels(deployment: &Deployment) -> BTreeMap<String, String> {
    pod_template(deployment)
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

/// Whether a label selector selects pods with these labels (matchLabels and matchExpressions).
fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
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
fn resolve_port(container: &Container, port: &IntOrString) -> Option<i32> {
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
fn selected_by<'a>(manifests: &'a Manifests, service: &Service) -> Vec<&'a Deployment> {
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
fn settings_key(name: &str) -> Option<String> {
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
fn settings_from_env(env: &BTreeMap<String, String>, origin: &str) -> Settings {
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
fn check_config_accepts(env: &BTreeMap<String, String>, origin: &str) {
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

// ---------------------------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------------------------

struct Stage {
    from: String,
    name: Option<String>,
    instructions: Vec<(String, String)>,
}

impl Stage {
    fn all(&self, keyword: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, args)| args.as_str())
            .collect()
    }

    fn one(&self, keyword: &str) -> &str {
        let all = self.all(keyword);
        assert_eq!(
            all.len(),
            1,
            "the Dockerfile stage {} should have one {keyword}",
            self.from
        );
        all[0]
    }
}

fn dockerfile() -> Vec<Stage> {
    let text = read("deploy/docker/Dockerfile");
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head.trim());
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    assert!(
        current.is_empty(),
        "the Dockerfile ends inside a continued line"
    );
    let mut stages: Vec<Stage> = Vec::new();
    for line in lines {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let keyword = keyword.to_uppercase();
        let args = args.trim().to_owned();
        if keyword == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                [_] => None,
                _ => panic!("Dockerfile: cannot read FROM {args}"),
            };
            stages.push(Stage {
                from: words[0].to_owned(),
                name,
                instructions: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .expect("the Dockerfile starts with FROM")
                .instructions
                .push((keyword, args));
        }
    }
    stages
}

fn json_array(args: &str, what: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| {
        panic!("Dockerfile {what} should be a JSON array (exec form): {e}: {args}")
    })
}

/// The runtime stage: the last one.
fn runtime_stage(stages: &[Stage]) -> &Stage {
    stages.last().expect("the Dockerfile has stages")
}

/// Binaries (file names) the runtime image holds, each checked to be a real binary target that
/// the builder stage builds.
fn image_binaries() -> BTreeSet<String> {
    let stages = dockerfile();
    let builder = stages
        .iter()
        .find(|s| s.name.as_deref() == Some("builder"))
        .expect("a builder stage");
    let build = builder
        .all("RUN")
        .into_iter()
        .find(|run| run.contains("cargo build"))
        .expect("the builder runs cargo build");
    assert!(
        build.contains("--release"),
        "the image must hold release builds: {build}"
    );
    // Only the cargo command itself, up to the next `&&`.
    let cargo = &build[build.find("cargo build").unwrap()..];
    let cargo = cargo.split("&&").next().unwrap();
    let words: Vec<&str> = cargo.split_whitespace().collect();
    let packages: Vec<&str> = words
        .windows(2)
        .filter(|w| w[0] == "-p" || w[0] == "--package")
        .map(|w| w[1])
        .collect();
    let workspace_bins = workspace_binaries();
    let mut built = BTreeSet::new();
    for package in &packages {
        let bins = workspace_bins.get(*package).unwrap_or_else(|| {
            panic!("the Dockerfile builds -p {package}, not a workspace package")
        });
        built.extend(bins.iter().cloned());
    }
    let mut in_image = BTreeSet::new();
    for copy in runtime_stage(&stages).all("COPY") {
        let words: Vec<&str> = copy.split_whitespace().collect();
        if words.first() != Some(&"--from=builder") {
            continue;
        }
        let (dest, sources) = words[1..].split_last().unwrap();
        assert_eq!(*dest, "/usr/local/bin/", "binaries go on the PATH");
        for source in sources {
            let file = source.rsplit('/').next().unwrap().to_owned();
            assert!(
                built.contains(&file),
                "the runtime copies {file}, which the builder's cargo build does not build ({built:?})"
            );
            assert!(
                build.contains(&format!("target/release/{file}")),
                "the builder does not copy target/release/{file} out of its cache mount"
            );
            in_image.insert(file);
        }
    }
    in_image
}

/// Package name -> its binary targets, for every workspace member.
fn workspace_binaries() -> BTreeMap<String, Vec<String>> {
    let workspace: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    let mut out = BTreeMap::new();
    for member in workspace["workspace"]["members"].as_array().unwrap() {
        let member = member.as_str().unwrap();
        let manifest: toml::Value = toml::from_str(&read(&format!("{member}/Cargo.toml"))).unwrap();
        let name = manifest["package"]["name"].as_str().unwrap().to_owned();
        let mut bins: Vec<String> = manifest
            .get("bin")
            .and_then(toml::Value::as_array)
            .map(|bins| {
                bins.iter()
                    .map(|b| b["name"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        if bins.is_empty() && repo().join(member).join("src/main.rs").exists() {
            bins.push(name.clone());
        }
        out.insert(name, bins);
    }
    out
}

/// ENTRYPOINT followed by CMD of the image, as a container runs it by default.
fn image_command() -> (Vec<String>, Vec<String>) {
    let stages = dockerfile();
    let runtime = runtime_stage(&stages);
    (
        json_array(runtime.one("ENTRYPOINT"), "ENTRYPOINT"),
        json_array(runtime.one("CMD"), "CMD"),
    )
}

/// The image name `docker build -t` gives in a document.
fn documented_tag(path: &str) -> String {
    let text = read(path);
    let line = text
        .lines()
        .find(|l| l.contains(BUILD_COMMAND))
        .unwrap_or_else(|| panic!("{path} does not show `{BUILD_COMMAND}IMAGE .`"));
    let rest = &line[line.find(BUILD_COMMAND).unwrap() + BUILD_COMMAND.len()..];
    let tag = rest.split_whitespace().next().unwrap().to_owned();
    assert!(
        rest.split_whitespace().nth(1) == Some("."),
        "{path}: the build context must be the repository root (`.`): {line}"
    );
    tag
}

// ---------------------------------------------------------------------------------------------
// compose.yaml
// ---------------------------------------------------------------------------------------------

/// The part of the Compose specification compose.yaml uses; anything else (a typo) is rejected.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Compose {
    name: String,
    services: BTreeMap<String, ComposeService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ComposeService {
    image: String,
    build: Option<ComposeBuild>,
    entrypoint: Option<Vec<String>>,
    command: Option<Vec<String>>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    volumes: Vec<String>,
    #[serde(default)]
    depends_on: BTreeMap<String, DependsOn>,
    healthcheck: Option<Healthcheck>,
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    tmpfs: Vec<String>,
    stop_grace_period: Option<String>,
    stop_signal: Option<String>,
    restart: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ComposeBuild {
    context: String,
    dockerfile: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DependsOn {
    condition: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Healthcheck {
    test: Vec<String>,
    interval: String,
    timeout: String,
    retries: u32,
}

fn compose() -> Compose {
    let mut value: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/docker/compose.yaml")).unwrap();
    value.apply_merge().unwrap();
    // `x-` keys are Compose extensions (here: the anchor the three servers share).
    if let Some(map) = value.as_mapping_mut() {
        map.retain(|key, _| !key.as_str().is_some_and(|k| k.starts_with("x-")));
    }
    serde_yaml::from_value(value).unwrap_or_else(|e| panic!("deploy/docker/compose.yaml: {e}"))
}

/// The compose services that run the learning-chat service (the image's default command).
fn compose_servers(compose: &Compose) -> Vec<(&String, &ComposeService)> {
    compose
        .services
        .iter()
        .filter(|(_, s)| s.image == k8s_image() && s.entrypoint.is_none())
        .collect()
}

fn k8s_image() -> String {
    Manifests::load().app_container().image.clone().unwrap()
}

/// Compose durations as written here: `40s` or `1m`.
fn seconds(duration: &str) -> u64 {
    if let Some(s) = duration.strip_suffix('s') {
        s.parse().unwrap()
    } else if let Some(m) = duration.strip_suffix('m') {
        m.parse::<u64>().unwrap() * 60
    } else {
        panic!("cannot read the duration {duration}")
    }
}

/// `scheme://host:port...` -> (host, port).
fn host_port(url: &str) -> (String, u16) {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap();
    let authority = authority.rsplit('@').next().unwrap();
    let (host, port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{url} should name its port explicitly"));
    (host.to_owned(), port.parse().unwrap())
}

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
    let k: Kustomization = serde_yaml::from_str(&read("deploy/k8s/kustomization.yaml")).unwrap();
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
fn kubectl_kustomize_builds_every_object_when_kubectl_is_installed() {
    let dir = repo().join("deploy/k8s");
    let output = match Command::new("kubectl").arg("kustomize").arg(&dir).output() {
        Ok(output) => output,
        Err(e) => {
            // Not silent: the serde checks above ran; only kustomize's own build is not checked.
            eprintln!(
                "NOTE: kubectl not runnable ({e}); `kubectl kustomize deploy/k8s` NOT checked"
            );
            return;
        }
    };
    assert!(
        output.status.success(),
        "kubectl kustomize deploy/k8s failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let built: BTreeSet<(String, String)> = serde_yaml::Deserializer::from_slice(&output.stdout)
        .map(|doc| {
            let v = serde_yaml::Value::deserialize(doc).unwrap();
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
        let targets = selected_by(&manifests, service);
        assert_eq!(
            targets.len(),
            1,
            "Service {name} must select the pods of exactly one Deployment"
        );
        let containers = &pod_spec(targets[0]).containers;
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
                targets[0].metadata.name.clone().unwrap()
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

fn hpa_range(manifests: &Manifests) -> (i32, i32) {
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
    assert_eq!(metrics.len(), 1, "the seed scales on CPU only");
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
    assert_eq!(
        container_port,
        Some(8000),
        "containerPort 8000, named http (the seed's)"
    );
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
    assert_eq!(
        get("prometheus.io/port"),
        Some(listen_port.to_string().as_str())
    );
    assert!(
        settings.telemetry.metrics_enabled,
        "the pods are scraped: keep /metrics on"
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
                assert_eq!(settings.upstream.rpm, 1000, "the seed's paid-tier quota");
                assert!(
                    settings.uses_gemini(),
                    "the Secret's GEMINI_API_KEY reaches the pods"
                );
                assert!(settings.uses_redis(), "the pods share Redis");
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

#[test]
fn the_drain_fits_in_the_termination_grace_period() {
    let manifests = Manifests::load();
    let container = manifests.app_container();
    let settings = settings_from_env(&manifests.env_of(container), "deploy/k8s");
    let config = manifests
        .config_map("learning-chat-api-config")
        .unwrap()
        .data
        .clone()
        .unwrap();
    assert!(
        config.contains_key("LEARNING_CHAT_SERVER__SHUTDOWN_GRACE_MS"),
        "set the shutdown grace explicitly: the termination period is computed from it"
    );
    let pre_stop = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .expect("a preStop hook lets endpoints update before SIGTERM");
    let sleep_secs = match (&pre_stop.exec, &pre_stop.sleep) {
        (Some(exec), None) => {
            let command = exec.command.clone().unwrap_or_default();
            assert_eq!(
                command.len(),
                2,
                "preStop should be [sleep, N]: {command:?}"
            );
            assert_eq!(command[0], "sleep");
            // `sleep` must exist in the image: a Debian base has it, distroless/scratch do not.
            let stages = dockerfile();
            let base = &runtime_stage(&stages).from;
            assert!(
                base.starts_with("debian:"),
                "the runtime image {base} must contain `sleep`"
            );
            command[1].parse::<u64>().unwrap()
        }
        (None, Some(sleep)) => u64::try_from(sleep.seconds).unwrap(),
        other => panic!("preStop should sleep: {other:?}"),
    };
    assert!(
        (3..=15).contains(&sleep_secs),
        "preStop sleep of {sleep_secs} s"
    );
    // Whole seconds, rounded up: the termination period is counted in seconds.
    let grace = settings.server.shutdown_grace_ms.div_ceil(1000);
    assert!(
        settings.server.shutdown_grace_ms >= settings.server.request_timeout_ms,
        "a request accepted just before SIGTERM may run its whole {} ms deadline; grace is {} ms",
        settings.server.request_timeout_ms,
        settings.server.shutdown_grace_ms
    );
    let termination = pod_spec(manifests.deployment(APP))
        .termination_grace_period_seconds
        .unwrap();
    let termination = u64::try_from(termination).unwrap();
    assert!(
        termination >= sleep_secs + grace + DRAIN_MARGIN_SECS,
        "terminationGracePeriodSeconds {termination} < preStop {sleep_secs} + grace {grace} + {DRAIN_MARGIN_SECS}"
    );
}

#[test]
fn redis_url_points_at_the_redis_service() {
    let manifests = Manifests::load();
    let env = manifests.env_of(manifests.app_container());
    let url = env.get("REDIS_URL").expect("REDIS_URL is set for the pods");
    let settings = settings_from_env(&env, "deploy/k8s");
    assert_eq!(settings.redis.url.expose(), url);
    let (host, port) = host_port(url);
    let service = manifests.service(host.split('.').next().unwrap());
    assert_eq!(service.metadata.name.as_deref(), Some(REDIS));
    let ports = service.spec.as_ref().unwrap().ports.clone().unwrap();
    let service_port = ports
        .iter()
        .find(|p| p.port == i32::from(port))
        .unwrap_or_else(|| panic!("Service {REDIS} has no port {port}"));
    let targets = selected_by(&manifests, service);
    assert_eq!(targets[0].metadata.name.as_deref(), Some(REDIS));
    let redis = &pod_spec(targets[0]).containers[0];
    assert!(
        redis.image.as_deref().unwrap().starts_with("redis:7"),
        "redis:7-alpine"
    );
    assert_eq!(
        resolve_port(redis, service_port.target_port.as_ref().unwrap()),
        Some(6379)
    );
    // One Redis: two behind the Service during a rollout would split the quota counters.
    let spec = manifests.deployment(REDIS).spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(
        spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("Recreate")
    );
    let args = redis.args.clone().unwrap_or_default().join(" ");
    assert!(
        args.contains("--save ") && args.contains("--appendonly no"),
        "a cache: no persistence"
    );
}

#[test]
fn the_quota_fallback_share_matches_the_usual_pod_count() {
    let manifests = Manifests::load();
    let settings = settings_from_env(&manifests.env_of(manifests.app_container()), "deploy/k8s");
    let (min, max) = hpa_range(&manifests);
    let replicas = i32::try_from(settings.redis.replicas).unwrap();
    assert!(
        (min..=max).contains(&replicas),
        "redis.replicas {replicas} should be a pod count the HPA can reach ({min}..={max})"
    );
}

#[test]
fn pods_run_as_non_root_on_a_read_only_root_filesystem() {
    let manifests = Manifests::load();
    for deployment in &manifests.deployments {
        let name = deployment.metadata.name.clone().unwrap();
        let spec = pod_spec(deployment);
        let pod = spec.security_context.clone().unwrap_or_default();
        assert_eq!(
            spec.automount_service_account_token,
            Some(false),
            "{name}: no API token needed"
        );
        for container in &spec.containers {
            let c = container.security_context.clone().unwrap_or_default();
            let non_root = c.run_as_non_root.or(pod.run_as_non_root);
            let user = c.run_as_user.or(pod.run_as_user);
            assert_eq!(non_root, Some(true), "{name}: runAsNonRoot");
            assert!(
                user.is_some_and(|u| u > 0),
                "{name}: a numeric non-root runAsUser"
            );
            assert_eq!(
                c.read_only_root_filesystem,
                Some(true),
                "{name}: read-only root fs"
            );
            assert_eq!(
                c.allow_privilege_escalation,
                Some(false),
                "{name}: no privilege escalation"
            );
            let dropped = c
                .capabilities
                .and_then(|caps| caps.drop)
                .unwrap_or_default();
            assert!(
                dropped.contains(&"ALL".to_owned()),
                "{name}: drop all capabilities"
            );
        }
    }
    // The app's user is the image's own.
    let stages = dockerfile();
    let image_user = runtime_stage(&stages)
        .one("USER")
        .split(':')
        .next()
        .unwrap()
        .parse::<i64>()
        .unwrap();
    let pod_user = pod_spec(manifests.deployment(APP))
        .security_context
        .as_ref()
        .unwrap()
        .run_as_user;
    assert_eq!(
        pod_user,
        Some(image_user),
        "runAsUser should be the Dockerfile's USER"
    );
}

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

#[test]
fn compose_has_the_seeds_option_1_topology() {
    let compose = compose();
    assert_eq!(compose.name, "learning-chat");
    let names: BTreeSet<&str> = compose.services.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["nginx", "app1", "app2", "app3", "redis", "gemini-sim"])
    );
    let servers: Vec<&str> = compose_servers(&compose)
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(servers, ["app1", "app2", "app3"]);

    let image = k8s_image();
    for (name, service) in &compose.services {
        if service.image == image {
            let build = service
                .build
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: build: (to --build it)"));
            let context = repo().join("deploy/docker").join(&build.context);
            assert_eq!(
                context.canonicalize().unwrap(),
                repo().canonicalize().unwrap(),
                "{name}: the build context is the repository root"
            );
            assert!(context
                .join(&build.dockerfile)
                .ends_with("deploy/docker/Dockerfile"));
            assert!(context.join(&build.dockerfile).exists());
        }
    }

    let nginx = &compose.services["nginx"];
    assert!(nginx.image.starts_with("nginx:"), "{}", nginx.image);
    assert!(
        nginx.ports.iter().any(|p| p.ends_with(":80")),
        "nginx publishes its port 80"
    );
    let mount = nginx
        .volumes
        .iter()
        .find(|v| v.contains(":/etc/nginx/conf.d/default.conf"))
        .expect("nginx mounts the shared config as conf.d/default.conf");
    assert_eq!(mount.split(':').next(), Some("../nginx/learning-chat.conf"));
    for server in &servers {
        let dependency = nginx
            .depends_on
            .get(*server)
            .unwrap_or_else(|| panic!("nginx waits for {server}"));
        assert_eq!(dependency.condition, "service_healthy");
    }
    // service_healthy needs a health check: the image's HEALTHCHECK for the servers.
    let stages = dockerfile();
    assert_eq!(runtime_stage(&stages).all("HEALTHCHECK").len(), 1);
    for (name, service) in &compose.services {
        for (dependency, condition) in &service.depends_on {
            let target = &compose.services[dependency];
            assert!(
                condition.condition != "service_healthy"
                    || target.healthcheck.is_some()
                    || (target.image == image && target.entrypoint.is_none()),
                "{name} waits for {dependency} to be healthy, which has no health check"
            );
        }
    }

    let redis = &compose.services["redis"];
    assert_eq!(redis.image, "redis:7-alpine");
    let redis_command = redis.command.clone().unwrap().join(" ");
    assert!(redis_command.contains("--save ") && redis_command.contains("--appendonly no"));

    let sim = &compose.services["gemini-sim"];
    assert_eq!(
        sim.entrypoint.as_deref(),
        Some(&["gemini-sim".to_owned()][..])
    );
    let argv = [vec!["gemini-sim".to_owned()], sim.command.clone().unwrap()].concat();
    let cli = gemini_sim::cli::Cli::try_parse_from(&argv).unwrap();
    assert_eq!(cli.bind.to_string(), "0.0.0.0:8100");
    assert_eq!(cli.preset, gemini_sim::cli::Preset::Seed);
    assert_eq!(
        sim.stop_signal.as_deref(),
        Some("SIGINT"),
        "gemini-sim stops on Ctrl-C only"
    );
    assert!(redis.restart.is_some() && sim.healthcheck.is_some());
}

#[test]
fn every_compose_variable_is_one_the_service_reads() {
    let compose = compose();
    let servers = compose_servers(&compose);
    let sim = &compose.services["gemini-sim"];
    let sim_port = gemini_sim::cli::Cli::try_parse_from(
        [vec!["gemini-sim".to_owned()], sim.command.clone().unwrap()].concat(),
    )
    .unwrap()
    .bind
    .port();
    for (name, service) in &servers {
        let origin = format!("compose service {name}");
        let settings = settings_from_env(&service.environment, &origin);
        check_config_accepts(&service.environment, &origin);
        assert_eq!(
            settings.gemini.base_url,
            format!("http://gemini-sim:{sim_port}"),
            "{origin}"
        );
        assert!(
            settings.uses_gemini(),
            "{origin}: a dummy key, so the servers call gemini-sim"
        );
        let (host, port) = host_port(settings.redis.url.expose());
        assert!(
            compose.services.contains_key(&host) && host == "redis",
            "{origin}: {host}"
        );
        assert_eq!(port, 6379);
        assert_eq!(
            settings.redis.replicas as usize,
            servers.len(),
            "{origin}: redis.replicas is the number of servers"
        );
        assert!(settings.server.shutdown_grace_ms >= settings.server.request_timeout_ms);
        let stop = seconds(
            service
                .stop_grace_period
                .as_deref()
                .expect("stop_grace_period"),
        );
        assert!(
            stop >= settings.server.shutdown_grace_ms.div_ceil(1000) + DRAIN_MARGIN_SECS,
            "{origin}: compose kills after {stop} s, before the drain ends"
        );
        assert!(
            service.read_only && service.tmpfs.contains(&"/tmp".to_owned()),
            "{origin}"
        );
        assert_eq!(service.depends_on["redis"].condition, "service_healthy");
        assert_eq!(
            service.image,
            k8s_image(),
            "{origin}: the same image as Kubernetes"
        );
    }
}

#[test]
fn compose_nginx_upstream_names_the_compose_servers() {
    let path = "deploy/nginx/learning-chat.conf";
    assert!(
        repo().join(path).exists(),
        "{path} (written with the nginx part of the scale-out issue) is missing: compose.yaml mounts it"
    );
    let conf = read(path);
    let compose = compose();
    let servers: BTreeSet<String> = compose_servers(&compose)
        .iter()
        .map(|(n, _)| (*n).clone())
        .collect();
    let port = Settings::default().server.bind.port();
    let mut upstream_servers = BTreeSet::new();
    let mut in_upstream = false;
    for line in conf.lines() {
        let line = line.split('#').next().unwrap().trim();
        if line.starts_with("upstream ") {
            in_upstream = true;
        } else if in_upstream && line.starts_with('}') {
            in_upstream = false;
        } else if in_upstream {
            if let Some(rest) = line.strip_prefix("server ") {
                let address = rest.split([' ', ';']).next().unwrap();
                let (host, p) = host_port(address);
                assert_eq!(p, port, "{path}: {address} is not the servers' port {port}");
                upstream_servers.insert(host);
            }
        }
    }
    assert_eq!(
        upstream_servers, servers,
        "{path} upstream servers vs compose.yaml's servers"
    );
    assert!(
        conf.lines().any(|l| l.trim().starts_with("listen")
            && l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.trim_end_matches(';').ends_with("80"))),
        "{path}: nginx listens on 80, the port compose publishes"
    );
}

#[test]
fn docker_compose_config_accepts_the_file_when_docker_compose_is_installed() {
    let file = repo().join("deploy/docker/compose.yaml");
    let probe = Command::new("docker").args(["compose", "version"]).output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        // Not silent: the serde checks of compose.yaml above always run.
        eprintln!("NOTE: `docker compose` unavailable; `docker compose config` NOT checked");
        return;
    }
    let output = Command::new("docker")
        .args(["compose", "-f"])
        .arg(&file)
        .args(["config", "--quiet"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "docker compose config rejects compose.yaml:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_image_name_is_the_documented_build_tag_everywhere() {
    let image = k8s_image();
    assert_eq!(
        documented_tag("docs/deploy.md"),
        image,
        "docs/deploy.md build command"
    );
    assert_eq!(
        documented_tag("deploy/docker/Dockerfile"),
        image,
        "the Dockerfile's build comment"
    );
    let (name, tag) = image.rsplit_once(':').expect("a tagged image");
    assert_eq!(name, APP);
    assert_eq!(
        tag,
        env!("CARGO_PKG_VERSION"),
        "the image tag is the workspace version"
    );
    let compose = compose();
    for server in compose_servers(&compose) {
        assert_eq!(server.1.image, image);
    }
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
    match tokio::time::timeout(Duration::from_secs(5), run).await {
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

#[test]
fn the_docs_explain_build_compose_apply_quota_and_drain() {
    let docs = read("docs/deploy.md");
    for needle in [
        "docker build -f deploy/docker/Dockerfile",
        "docker compose -f deploy/docker/compose.yaml up",
        "kubectl apply -k deploy/k8s",
        "redis.replicas",
        "preStop",
        "SIGTERM",
        "terminationGracePeriodSeconds",
        "shutdown_grace_ms",
    ] {
        assert!(
            docs.contains(needle),
            "docs/deploy.md should cover `{needle}`"
        );
    }
    assert!(
        read("README.md").contains("docs/deploy.md"),
        "README.md links docs/deploy.md"
    );
}

#[test]
fn the_tls_ingress_example_routes_to_the_service_port_and_names_its_certificate() {
    use k8s_openapi::api::networking::v1::Ingress;
    let text = read("deploy/k8s/examples/ingress-tls.yaml");
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("one YAML document");
    let doc = serde_json::to_value(&yaml).unwrap();
    let ingress: Ingress = typed(&doc, "deploy/k8s/examples/ingress-tls.yaml");
    let spec = ingress.spec.as_ref().expect("spec");
    let tls = spec.tls.as_ref().expect("a tls block");
    assert!(tls.iter().all(|t| t.secret_name.is_some()));
    let manifests = Manifests::load();
    let service = manifests.service(APP);
    let ports: Vec<&str> = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(|ports| ports.iter().filter_map(|p| p.name.as_deref()).collect())
        .unwrap_or_default();
    let rules = spec.rules.as_ref().expect("rules");
    for rule in rules {
        let tls_hosts: Vec<&String> = tls.iter().flat_map(|t| t.hosts.iter().flatten()).collect();
        assert!(
            rule.host.as_ref().is_some_and(|h| tls_hosts.contains(&h)),
            "every host is served with TLS"
        );
        for path in &rule.http.as_ref().expect("http").paths {
            let backend = path.backend.service.as_ref().expect("a service backend");
            assert_eq!(backend.name, APP);
            let port = backend.port.as_ref().and_then(|p| p.name.as_deref());
            assert!(
                port.is_some_and(|p| ports.contains(&p)),
                "{port:?} vs {ports:?}"
            );
        }
    }
}
