//! docs/deploy.md and the TLS ingress example tell the truth about the files.

use super::manifests::{resolve_port, settings_from_env, typed, Manifests, APP};
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

#[test]
fn neither_the_ingress_example_nor_nginx_exposes_metrics() {
    use k8s_openapi::api::networking::v1::Ingress;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let origin = "deploy/k8s/examples/ingress-tls.yaml";
    let yaml: yaml_serde::Value = yaml_serde::from_str(&read(origin)).unwrap();
    let ingress: Ingress = typed(&serde_json::to_value(&yaml).unwrap(), origin);
    let manifests = Manifests::load();
    let container = manifests.app_container();
    let settings = settings_from_env(&manifests.env_of(container), "deploy/k8s");
    let metrics_port = settings
        .metrics
        .listener()
        .unwrap()
        .map(|addr| i32::from(addr.port()));
    let service_port = i32::from(settings.server.bind.port());
    assert!(
        !settings.metrics.on_service_port,
        "with metrics.on_service_port the Ingress would publish /metrics"
    );
    let service = manifests.service(APP);
    let ports = service.spec.as_ref().unwrap().ports.clone().unwrap();
    let spec = ingress.spec.as_ref().expect("spec");
    let backends = spec
        .rules
        .iter()
        .flatten()
        .flat_map(|rule| rule.http.iter().flat_map(|http| http.paths.iter()))
        .map(|path| path.backend.clone())
        .chain(spec.default_backend.clone());
    let mut seen = 0;
    for backend in backends {
        seen += 1;
        let backend = backend.service.expect("a service backend");
        assert_eq!(backend.name, APP);
        let port = backend.port.expect("a service port");
        let service_port_entry = ports
            .iter()
            .find(|p| {
                port.name
                    .as_deref()
                    .is_some_and(|n| p.name.as_deref() == Some(n))
                    || port.number == Some(p.port)
            })
            .unwrap_or_else(|| panic!("{origin}: {port:?} is no port of Service {APP}"));
        let target = service_port_entry
            .target_port
            .clone()
            .unwrap_or(IntOrString::Int(service_port_entry.port));
        let reaches = resolve_port(container, &target);
        assert_eq!(
            reaches,
            Some(service_port),
            "{origin} routes to container port {reaches:?}, not the service port"
        );
        assert_ne!(
            reaches, metrics_port,
            "{origin} exposes the metrics listener"
        );
    }
    assert!(seen > 0, "{origin} has no backend");

    // nginx answers /metrics itself, should a server ever serve it on its service port.
    for conf in [
        "deploy/nginx/learning-chat.conf",
        "deploy/nginx/learning-chat-tls.conf",
    ] {
        let text = read(conf);
        let at = text
            .find("location = /metrics {")
            .unwrap_or_else(|| panic!("{conf} has no `location = /metrics` block"));
        let block = &text[at..at + text[at..].find('}').unwrap()];
        assert!(block.contains("return 404;"), "{conf}: {block}");
    }
}

/// Every `.rs` file under `dir`, recursively.
fn rust_sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_security_doc_covers_every_hardening_item_and_names_tests_that_exist() {
    let doc = read("docs/security.md");
    assert!(
        read("README.md").contains("docs/security.md"),
        "README.md links docs/security.md"
    );
    for needle in [
        "## Threat model",
        "## Reporting a vulnerability",
        "metrics.bind",
        "pepper",
    ] {
        assert!(
            doc.contains(needle),
            "docs/security.md should cover {needle}"
        );
    }
    let items = &doc[doc
        .find("## Hardening items (issue 23)")
        .expect("a hardening section")..];
    for n in 1..=10 {
        assert!(
            items.contains(&format!("\n### {n}. ")),
            "docs/security.md has no subsection for item {n}"
        );
    }
    // Each test it names is a real test function.
    let mut sources = Vec::new();
    rust_sources(&crate::support::repo().join("crates"), &mut sources);
    let code: String = sources
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect();
    let mut named = 0;
    for (i, part) in items.split('`').enumerate() {
        let name = part.rsplit("::").next().unwrap_or(part);
        // Test names are sentences; settings keys and metric names are not.
        let looks_like_a_test = i % 2 == 1
            && name.matches('_').count() >= 6
            && !name.starts_with("learning_chat_")
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if looks_like_a_test {
            named += 1;
            assert!(
                code.contains(&format!("fn {name}(")),
                "docs/security.md names the test {name}, which does not exist"
            );
        }
    }
    assert!(named >= 10, "only {named} tests named");
}
