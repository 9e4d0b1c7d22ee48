//! deploy/docker/compose.yaml: the shared-Redis topology of several servers behind one load balancer, every variable one the service
//! reads, nginx's upstreams the compose servers, one image name everywhere.

use clap::Parser;
use learning_chat::Settings;
use std::collections::BTreeSet;
use std::process::Command;

use super::images::{
    compose, compose_servers, dockerfile, documented_tag, host_port, k8s_image, runtime_stage,
    seconds,
};
use super::manifests::{check_config_accepts, settings_from_env, APP, DRAIN_MARGIN_SECS};
use crate::support::{read, repo};

#[test]
fn compose_has_the_seeds_option_1_topology() {
    let compose = compose();
    assert_eq!(compose.name, "learning-chat");
    let names: BTreeSet<&str> = compose.services.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "nginx",
            "app1",
            "app2",
            "app3",
            "redis",
            "postgres",
            "gemini-sim"
        ])
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
            settings.redis.replicas.get() as usize,
            servers.len(),
            "{origin}: redis.replicas is the number of servers"
        );
        assert!(settings.server.shutdown_grace >= settings.server.request_timeout);
        let stop = seconds(
            service
                .stop_grace_period
                .as_deref()
                .expect("stop_grace_period"),
        );
        assert!(
            stop >= settings.server.shutdown_grace.as_millis().div_ceil(1000) as u64
                + DRAIN_MARGIN_SECS,
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
        "{path} is missing: compose.yaml mounts it"
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

/// Docker Compose v2, as the `docker compose` plugin or the standalone `docker-compose`, or a
/// failure saying how to get it: this check must never skip silently.
fn compose_v2() -> Command {
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("v2."))
    };
    if works("docker", &["compose", "version"]) {
        let mut command = Command::new("docker");
        command.arg("compose");
        return command;
    }
    // Compose v1 (Debian 12's `docker-compose` 1.29) rejects the compose spec's top-level `name:`.
    if works("docker-compose", &["version"]) {
        return Command::new("docker-compose");
    }
    panic!(
        "Docker Compose v2 is not installed, so `docker compose config` cannot check \
         deploy/docker/compose.yaml. Run ./scripts/test.sh, which installs it."
    )
}

#[test]
fn docker_compose_config_accepts_the_file() {
    let file = repo().join("deploy/docker/compose.yaml");
    let output = compose_v2()
        .arg("-f")
        .arg(&file)
        .args(["config", "--quiet"])
        // The file requires the pepper and the database password from the shell (they are never
        // in the image or the file).
        .env(
            "LEARNING_CHAT_AUTH__PEPPER",
            "0123456789abcdef0123456789abcdef",
        )
        .env("POSTGRES_PASSWORD", "fedcba9876543210fedcba9876543210")
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

#[test]
fn prometheus_scrapes_each_compose_servers_metrics_listener_which_is_published_nowhere() {
    let compose = compose();
    let servers = compose_servers(&compose);
    let config: yaml_serde::Value =
        yaml_serde::from_str(&read("deploy/prometheus/prometheus.yml")).unwrap();
    let targets: BTreeSet<String> = config["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_sequence()
        .expect("static targets")
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    let mut expected = BTreeSet::new();
    for (name, service) in &servers {
        let settings = settings_from_env(&service.environment, &format!("compose service {name}"));
        assert!(!settings.metrics.on_service_port, "{name}");
        let metrics = settings
            .metrics
            .listener()
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: no metrics listener"));
        assert!(
            metrics.ip().is_unspecified(),
            "{name}: metrics.bind {metrics} is unreachable from the compose network"
        );
        expected.insert(format!("{name}:{}", metrics.port()));
        assert!(
            service
                .ports
                .iter()
                .all(|p| !p.contains(&metrics.port().to_string())),
            "{name} publishes its metrics port: {:?}",
            service.ports
        );
    }
    assert_eq!(
        targets, expected,
        "prometheus.yml targets vs compose servers"
    );
}

#[test]
fn compose_keeps_the_records_in_postgres_on_a_named_volume_with_the_password_from_the_shell() {
    let compose = compose();
    let postgres = &compose.services["postgres"];
    assert!(
        postgres.image.starts_with("postgres:16"),
        "{}",
        postgres.image
    );
    let data = postgres
        .volumes
        .iter()
        .find(|v| v.ends_with(":/var/lib/postgresql/data"))
        .expect("the data directory on a volume");
    let volume = data.split(':').next().unwrap();
    assert!(
        compose.volumes.contains_key(volume),
        "{volume} is a named volume (declared under volumes:), so `down` keeps it"
    );
    assert!(postgres.ports.is_empty(), "PostgreSQL is published nowhere");
    let healthcheck = postgres.healthcheck.as_ref().expect("a health check");
    assert!(healthcheck.test.iter().any(|a| a == "pg_isready"));
    // The password is interpolated from the shell or .env, never written here.
    let password = &postgres.environment["POSTGRES_PASSWORD"];
    assert!(
        password.starts_with("${POSTGRES_PASSWORD:?"),
        "POSTGRES_PASSWORD: {password}"
    );
    let user = &postgres.environment["POSTGRES_USER"];
    let database = &postgres.environment["POSTGRES_DB"];
    for (name, service) in compose_servers(&compose) {
        let origin = format!("compose service {name}");
        assert_eq!(service.depends_on["postgres"].condition, "service_healthy");
        let settings = settings_from_env(&service.environment, &origin);
        let url = settings.database.url().expect("a records database");
        assert_eq!(
            url,
            format!("postgres://{user}:{password}@postgres:5432/{database}"),
            "{origin}"
        );
    }
}
