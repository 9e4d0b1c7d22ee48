//! The repository's files stay true to the code and to each other, with no cluster and no Docker
//! engine: deploy manifests (Kubernetes, Docker, compose), the configuration reference, the
//! dashboard, alert rules and Prometheus examples, and the docs that describe them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test reports by failing

#[path = "../support/mod.rs"]
pub mod support;

mod alerts;
mod compose;
mod config_docs;
mod dashboard;
mod deploy_docs;
mod docker;
mod images;
mod k8s;
mod k8s_pods;
mod manifests;
mod promql;
mod secrets;
