//! No secret the repository ships can run a server: every pepper value written in deploy/,
//! docs/, config/, bench/ or the README is refused at start-up, naming its key, and so is the
//! Kubernetes base as shipped (its Secret holds placeholders).

use super::manifests::{settings_from_env, Manifests};
use crate::support::{read, repo};
use figment::providers::Serialized;
use learning_chat::Settings;
use std::collections::BTreeSet;
use std::path::Path;

/// Every file under `dir` (recursively), relative to the repository root.
fn files_under(dir: &str, out: &mut Vec<String>) {
    let root = repo();
    let path = root.join(dir);
    if path.is_file() {
        out.push(dir.to_owned());
        return;
    }
    for entry in std::fs::read_dir(&path).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let relative = format!("{dir}/{name}");
        if entry.file_type().unwrap().is_dir() {
            // Generated benchmark output is not shipped.
            if relative != "bench/out" {
                files_under(&relative, out);
            }
        } else if is_text(&entry.path()) {
            out.push(relative);
        }
    }
}

fn is_text(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|bytes| std::str::from_utf8(&bytes).is_ok())
}

/// The value written right after `at` in `line` (`: value`, `= value`, `="value"`, ...), if it
/// is a literal: substitutions (`$(...)`, `${...}`, `$VAR`), templates (`<password>`) and empty
/// values are none.
fn value_after(line: &str, at: usize) -> Option<String> {
    let rest = line[at..].trim_start_matches(['"', '\'']).trim_start();
    let rest = rest.strip_prefix([':', '='])?.trim_start();
    let value = match rest.chars().next()? {
        quote @ ('"' | '\'' | '`') => rest[1..].split(quote).next()?,
        _ => rest
            .split(|c: char| c.is_whitespace() || c == ',' || c == '`')
            .next()?,
    };
    let value = value.trim();
    // `<password>` and the like are templates, not values.
    (!value.is_empty() && !value.contains('$') && !value.contains('<')).then(|| value.to_owned())
}

/// Every literal value the shipped files give one of `names`: as a variable in YAML, shell and
/// Markdown (`NAME: value`, `NAME=value`), or as a key in TOML (`name = "value"`, lower case).
/// Substitutions (`$VAR`, `$(...)`, `${...}`) are no literal and not returned.
fn shipped_values(names: &[&str]) -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    for dir in ["deploy", "docs", "config", "bench", "README.md"] {
        files_under(dir, &mut files);
    }
    let mut found = BTreeSet::new();
    for file in files {
        for (n, line) in read(&file).lines().enumerate() {
            let origin = format!("{file}:{}", n + 1);
            for name in names {
                let mut from = 0;
                while let Some(i) = line[from..].find(name) {
                    let at = from + i + name.len();
                    // `${NAME:?message}` reads the variable, it sets nothing.
                    let read_here =
                        line[..from + i].ends_with('$') || line[..from + i].ends_with("${");
                    if let Some(value) = value_after(line, at).filter(|_| !read_here) {
                        found.insert((origin.clone(), value));
                    }
                    from = at;
                }
                let toml_key = name.rsplit("__").next().unwrap_or(name).to_lowercase();
                if let Some(rest) = line.trim_start().strip_prefix(&toml_key) {
                    if let Some(value) = value_after(rest, 0) {
                        found.insert((origin.clone(), value));
                    }
                }
            }
        }
    }
    found
}

/// Every literal pepper the shipped files set.
fn shipped_peppers() -> BTreeSet<(String, String)> {
    shipped_values(&["LEARNING_CHAT_AUTH__PEPPER"])
}

/// Settings with this pepper (keys required), as the service would load them.
fn with_pepper(pepper: &str) -> Result<Settings, String> {
    let figment = Settings::figment(None)
        .merge(Serialized::default("auth.mode", "required"))
        .merge(Serialized::default("auth.pepper", pepper));
    Settings::from_figment(figment).map_err(|e| e.to_string())
}

#[test]
fn every_pepper_written_in_the_repository_is_refused_naming_the_key() {
    let found = shipped_peppers();
    assert!(
        found
            .iter()
            .any(|(origin, _)| origin.starts_with("deploy/k8s/secret.yaml")),
        "the scan missed deploy/k8s/secret.yaml's pepper: {found:?}"
    );
    for (origin, pepper) in &found {
        let error = with_pepper(pepper).err().unwrap_or_else(|| {
            panic!("{origin}: the service starts with the shipped pepper {pepper:?}")
        });
        assert!(
            error.contains("auth.pepper") && error.contains("LEARNING_CHAT_AUTH__PEPPER"),
            "{origin}: {error}"
        );
    }
    // The scanner reads the forms the files use, and the check is no blanket refusal.
    assert_eq!(
        value_after(r#"  LEARNING_CHAT_AUTH__PEPPER: "abc""#, 28).as_deref(),
        Some("abc")
    );
    assert_eq!(value_after("X=$(openssl rand -hex 32)", 1), None);
    with_pepper("d2c1b4a0e9f8c7b6a5d4c3b2a1f0e9d8").expect("an operator's own pepper starts");
}

/// Settings with this records database URL, as the service would load them.
fn with_database_url(url: &str) -> Result<Settings, String> {
    let figment = Settings::figment(None).merge(Serialized::default("database.url", url));
    Settings::from_figment(figment).map_err(|e| e.to_string())
}

#[test]
fn every_database_password_written_in_the_repository_is_refused_naming_the_key() {
    let urls = shipped_values(&["LEARNING_CHAT_DATABASE__URL"]);
    let passwords = shipped_values(&["POSTGRES_PASSWORD"]);
    assert!(
        passwords
            .iter()
            .any(|(origin, _)| origin.starts_with("deploy/k8s/secret.yaml")),
        "the scan missed deploy/k8s/secret.yaml's database password: {passwords:?}"
    );
    let candidates = urls
        .into_iter()
        .chain(passwords.into_iter().map(|(origin, password)| {
            (
                origin,
                format!("postgres://learning_chat:{password}@postgres:5432/learning_chat"),
            )
        }));
    let mut checked = 0;
    for (origin, url) in candidates {
        // Only URLs that carry a password (`user:password@`) hold a secret.
        let carries_password = url.starts_with("postgres")
            && url
                .split_once("://")
                .and_then(|(_, rest)| rest.split_once('@'))
                .is_some_and(|(credentials, _)| credentials.contains(':'));
        if !carries_password {
            continue;
        }
        checked += 1;
        let error = with_database_url(&url)
            .err()
            .unwrap_or_else(|| panic!("{origin}: the service starts with the shipped {url}"));
        assert!(
            error.contains("database.url") && error.contains("LEARNING_CHAT_DATABASE__URL"),
            "{origin}: {error}"
        );
    }
    assert!(checked >= 2, "the URL and the password of secret.yaml");
    with_database_url("postgres://learning_chat:5d41402abc4b2a76b9719d911017c592@postgres:5432/lc")
        .expect("an operator's own password starts");
}

#[test]
fn the_kubernetes_base_as_shipped_does_not_start_until_its_secret_is_replaced() {
    let manifests = Manifests::load();
    let container = manifests.app_container();
    let shipped = manifests.env_as_shipped(container);
    let refused = std::panic::catch_unwind(|| settings_from_env(&shipped, "deploy/k8s as shipped"));
    let message = refused
        .err()
        .and_then(|e| e.downcast_ref::<String>().cloned())
        .expect("the shipped Secret's placeholders are refused");
    assert!(message.contains("auth.pepper"), "{message}");
    // With the operator's own values (manifests.env_of) it starts: the other repo tests.
    settings_from_env(&manifests.env_of(container), "deploy/k8s, Secret replaced");
}

#[test]
fn compose_publishes_the_simulators_unauthenticated_config_on_loopback_only() {
    let compose = super::images::compose();
    for (name, service) in &compose.services {
        for port in &service.ports {
            if name == "nginx" {
                continue;
            }
            assert!(
                port.starts_with("127.0.0.1:"),
                "compose service {name} publishes {port} on every interface"
            );
        }
    }
    assert!(
        compose.services["gemini-sim"]
            .ports
            .iter()
            .all(|p| p.starts_with("127.0.0.1:")),
        "gemini-sim's POST /config must not be reachable from the network"
    );
}
