//! deploy/k8s pods: the drain fits the grace period, Redis is reachable by its Service name,
//! the quota share matches the pod count, and pods run as non-root on a read-only root.

use super::images::{dockerfile, host_port, runtime_stage};
use super::k8s::hpa_range;
use super::manifests::{
    pod_spec, pods_selected_by, resolve_port, selected_by, settings_from_env, Manifests, APP,
    DRAIN_MARGIN_SECS, POSTGRES, REDIS,
};

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
    let grace = settings.server.shutdown_grace.as_millis().div_ceil(1000) as u64;
    assert!(
        settings.server.shutdown_grace >= settings.server.request_timeout,
        "a request accepted just before SIGTERM may run its whole {:?} deadline; grace is {:?}",
        settings.server.request_timeout,
        settings.server.shutdown_grace
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
    let replicas = i32::try_from(settings.redis.replicas.get()).unwrap();
    assert!(
        (min..=max).contains(&replicas),
        "redis.replicas {replicas} should be a pod count the HPA can reach ({min}..={max})"
    );
}

#[test]
fn pods_run_as_non_root_on_a_read_only_root_filesystem() {
    let manifests = Manifests::load();
    let templates = manifests.pod_templates();
    assert!(templates.iter().any(|(name, _)| name == POSTGRES));
    for (name, template) in templates {
        let spec = template.spec.as_ref().expect("a pod spec");
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

#[test]
fn the_records_database_is_a_postgres_statefulset_with_its_own_volume_that_the_pods_reach() {
    let manifests = Manifests::load();
    let set = manifests.stateful_set(POSTGRES);
    let spec = set.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1), "one PostgreSQL: no split brain");
    let service = manifests.service(&spec.service_name.clone().expect("serviceName"));
    let service_spec = service.spec.as_ref().unwrap();
    assert_eq!(
        service_spec.cluster_ip.as_deref(),
        Some("None"),
        "the StatefulSet's Service is headless"
    );
    let pods = pods_selected_by(&manifests, service);
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].0, POSTGRES);

    // Its data on a claim of its own, mounted where PGDATA points.
    let claims = spec.volume_claim_templates.clone().unwrap_or_default();
    assert_eq!(claims.len(), 1, "one volumeClaimTemplate");
    let claim = claims[0].metadata.name.clone().unwrap();
    let container = &spec.template.spec.as_ref().unwrap().containers[0];
    assert!(
        container
            .image
            .as_deref()
            .unwrap()
            .starts_with("postgres:16"),
        "the official postgres:16 image"
    );
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == claim)
        .unwrap_or_else(|| panic!("the claim {claim} is not mounted"));
    let env = manifests.env_of(container);
    let pgdata = env.get("PGDATA").expect("PGDATA");
    assert!(
        pgdata.starts_with(&format!("{}/", mount.mount_path)),
        "PGDATA {pgdata} must be a directory on the volume ({}), below its root",
        mount.mount_path
    );
    // The password only from the Secret, never a literal.
    let password = container
        .env
        .iter()
        .flatten()
        .find(|v| v.name == "POSTGRES_PASSWORD")
        .expect("POSTGRES_PASSWORD");
    assert!(
        password.value.is_none()
            && password
                .value_from
                .as_ref()
                .is_some_and(|f| f.secret_key_ref.is_some()),
        "POSTGRES_PASSWORD comes from a Secret"
    );

    // The service's pods reach it: host, port, user, database and password agree.
    let app_env = manifests.env_of(manifests.app_container());
    let url = app_env
        .get("LEARNING_CHAT_DATABASE__URL")
        .expect("LEARNING_CHAT_DATABASE__URL reaches the pods");
    let settings = settings_from_env(&app_env, "deploy/k8s");
    assert_eq!(settings.database.url(), Some(url.as_str()));
    let rest = url.strip_prefix("postgres://").expect("a postgres:// URL");
    let (credentials, location) = rest.split_once('@').expect("user:password@host");
    let (user, url_password) = credentials.split_once(':').expect("user:password");
    let (address, database) = location.split_once('/').expect("host:port/database");
    let (host, port) = address.split_once(':').expect("host:port");
    assert_eq!(host, service.metadata.name.as_deref().unwrap());
    let port: i32 = port.parse().unwrap();
    let service_port = service_spec
        .ports
        .iter()
        .flatten()
        .find(|p| p.port == port)
        .unwrap_or_else(|| panic!("the Service {host} has no port {port}"));
    assert_eq!(
        resolve_port(container, service_port.target_port.as_ref().unwrap()),
        Some(5432)
    );
    assert_eq!(env.get("POSTGRES_USER").map(String::as_str), Some(user));
    assert_eq!(env.get("POSTGRES_DB").map(String::as_str), Some(database));
    assert_eq!(
        env.get("POSTGRES_PASSWORD").map(String::as_str),
        Some(url_password),
        "the URL's password is the one PostgreSQL is initialised with"
    );
}
