//! Helpers shared by the integration tests: a simulator on 127.0.0.1:0 and a small client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use gemini_sim::{SimConfig, SimServer};
use serde_json::{json, Value};
use std::path::PathBuf;

pub const KEY: &str = "test-key";
pub const MODEL: &str = "gemini-2.5-flash";

pub async fn start(config: SimConfig) -> SimServer {
    SimServer::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// `reqwest::Client::builder()` without proxies, after installing the crypto provider the
/// workspace builds reqwest without (a client built before one is installed panics). No system
/// CA roots: the simulator speaks plain HTTP, and reqwest 0.13 would otherwise read and parse the
/// system's CA store for each client, too slow in a debug build for tests that build dozens.
pub fn client_builder() -> reqwest::ClientBuilder {
    // An error only means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only(std::iter::empty())
}

pub fn client() -> reqwest::Client {
    client_builder().build().unwrap()
}

pub fn model_url(sim: &SimServer, model: &str, method: &str) -> String {
    format!("{}/v1beta/models/{model}:{method}", sim.base_url())
}

/// A one-turn request with a system instruction.
pub fn request(question: &str) -> Value {
    json!({
        "systemInstruction": {"parts": [{"text": "You are a patient maths tutor."}]},
        "contents": [{"role": "user", "parts": [{"text": question}]}],
    })
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }

    pub fn error(&self) -> gemini_wire::ErrorStatus {
        serde_json::from_str::<gemini_wire::ErrorBody>(&self.text)
            .unwrap_or_else(|e| panic!("{e}: {}", self.text))
            .error
    }
}

pub async fn post_raw(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    body: String,
) -> Reply {
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(key) = key {
        req = req.header("x-goog-api-key", key);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    Reply {
        status,
        headers,
        text,
    }
}

pub async fn generate(sim: &SimServer, body: &Value) -> Reply {
    post_raw(
        &client(),
        &model_url(sim, MODEL, "generateContent"),
        Some(KEY),
        body.to_string(),
    )
    .await
}

pub async fn post_config(sim: &SimServer, patch: Value) -> Value {
    let resp = client()
        .post(format!("{}/config", sim.base_url()))
        .json(&patch)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

pub fn fixture(name: &str) -> String {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "gemini-wire",
        "tests",
        "fixtures",
        name,
    ]
    .iter()
    .collect();
    std::fs::read_to_string(path).unwrap()
}

pub fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).unwrap()
}

/// Every key path in a JSON value ("a.b[].c"), for comparing shapes with a fixture.
pub fn key_paths(value: &Value) -> std::collections::BTreeSet<String> {
    fn walk(value: &Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    out.insert(path.clone());
                    walk(v, &path, out);
                }
            }
            Value::Array(items) => {
                for item in items {
                    walk(item, &format!("{prefix}[]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(value, "", &mut out);
    out
}
