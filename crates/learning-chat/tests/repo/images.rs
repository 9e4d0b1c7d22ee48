//! deploy/docker parsed: the Dockerfile's stages and what the image runs, and compose.yaml.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

use super::manifests::{Manifests, BUILD_COMMAND};
use crate::support::{read, repo};

// ---------------------------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------------------------

pub struct Stage {
    pub from: String,
    pub name: Option<String>,
    pub instructions: Vec<(String, String)>,
}

impl Stage {
    pub fn all(&self, keyword: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, args)| args.as_str())
            .collect()
    }

    pub fn one(&self, keyword: &str) -> &str {
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

pub fn dockerfile() -> Vec<Stage> {
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

pub fn json_array(args: &str, what: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| {
        panic!("Dockerfile {what} should be a JSON array (exec form): {e}: {args}")
    })
}

/// The runtime stage: the last one.
pub fn runtime_stage(stages: &[Stage]) -> &Stage {
    stages.last().expect("the Dockerfile has stages")
}

/// Binaries (file names) the runtime image holds, each checked to be a real binary target that
/// the builder stage builds.
pub fn image_binaries() -> BTreeSet<String> {
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
pub fn workspace_binaries() -> BTreeMap<String, Vec<String>> {
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
pub fn image_command() -> (Vec<String>, Vec<String>) {
    let stages = dockerfile();
    let runtime = runtime_stage(&stages);
    (
        json_array(runtime.one("ENTRYPOINT"), "ENTRYPOINT"),
        json_array(runtime.one("CMD"), "CMD"),
    )
}

/// The image name `docker build -t` gives in a document.
pub fn documented_tag(path: &str) -> String {
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
pub struct Compose {
    pub name: String,
    pub services: BTreeMap<String, ComposeService>,
    /// Named volumes (their options unused here).
    #[serde(default)]
    pub volumes: BTreeMap<String, Option<yaml_serde::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeService {
    pub image: String,
    pub build: Option<ComposeBuild>,
    pub entrypoint: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub depends_on: BTreeMap<String, DependsOn>,
    pub healthcheck: Option<Healthcheck>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub tmpfs: Vec<String>,
    pub stop_grace_period: Option<String>,
    pub stop_signal: Option<String>,
    pub restart: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeBuild {
    pub context: String,
    pub dockerfile: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DependsOn {
    pub condition: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Healthcheck {
    pub test: Vec<String>,
    pub interval: String,
    pub timeout: String,
    pub retries: u32,
}

pub fn compose() -> Compose {
    let mut value: yaml_serde::Value =
        yaml_serde::from_str(&read("deploy/docker/compose.yaml")).unwrap();
    value.apply_merge().unwrap();
    // `x-` keys are Compose extensions (here: the anchor the three servers share).
    if let Some(map) = value.as_mapping_mut() {
        map.retain(|key, _| !key.as_str().is_some_and(|k| k.starts_with("x-")));
    }
    yaml_serde::from_value(value).unwrap_or_else(|e| panic!("deploy/docker/compose.yaml: {e}"))
}

/// The compose services that run the learning-chat service (the image's default command).
pub fn compose_servers(compose: &Compose) -> Vec<(&String, &ComposeService)> {
    compose
        .services
        .iter()
        .filter(|(_, s)| s.image == k8s_image() && s.entrypoint.is_none())
        .collect()
}

pub fn k8s_image() -> String {
    Manifests::load().app_container().image.clone().unwrap()
}

/// Compose durations as written here: `40s` or `1m`.
pub fn seconds(duration: &str) -> u64 {
    if let Some(s) = duration.strip_suffix('s') {
        s.parse().unwrap()
    } else if let Some(m) = duration.strip_suffix('m') {
        m.parse::<u64>().unwrap() * 60
    } else {
        panic!("cannot read the duration {duration}")
    }
}

/// `scheme://host:port...` -> (host, port).
pub fn host_port(url: &str) -> (String, u16) {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap();
    let authority = authority.rsplit('@').next().unwrap();
    let (host, port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{url} should name its port explicitly"));
    (host.to_owned(), port.parse().unwrap())
}
