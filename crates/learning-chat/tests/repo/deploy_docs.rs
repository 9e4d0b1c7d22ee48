//! docs/deploy.md and the TLS ingress example tell the truth about the files.

use super::manifests::{typed, Manifests, APP};
use crate::support::read;

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
    let yaml: yaml_serde::Value = yaml_serde::from_str(&text).expect("one YAML document");
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
