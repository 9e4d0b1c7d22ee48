//! Loading, layering, deprecated keys and the checks of every section.
#![allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error.

use super::*;
use figment::Jail;

/// Reads one duration field.
type Field = fn(&Settings) -> Duration;

/// Every duration key and the field it fills.
const DURATIONS: [(&str, Field); 41] = [
    ("server.request_timeout_ms", |s| s.server.request_timeout),
    ("server.shutdown_grace_ms", |s| s.server.shutdown_grace),
    ("server.header_read_timeout_ms", |s| {
        s.server.header_read_timeout
    }),
    ("server.body_read_timeout_ms", |s| {
        s.server.body_read_timeout
    }),
    ("server.keep_alive_idle_timeout_ms", |s| {
        s.server.keep_alive_idle_timeout
    }),
    ("server.tls_reload_check_ms", |s| s.server.tls_reload_check),
    ("server.send_stall_timeout_ms", |s| {
        s.server.send_stall_timeout
    }),
    ("server.http2_keep_alive_interval_ms", |s| {
        s.server.http2_keep_alive_interval
    }),
    ("server.http2_keep_alive_timeout_ms", |s| {
        s.server.http2_keep_alive_timeout
    }),
    ("gemini.connect_timeout_ms", |s| s.gemini.connect_timeout),
    ("upstream.latency_half_life_ms", |s| {
        s.upstream.latency_half_life
    }),
    ("upstream.max_queue_wait_ms", |s| s.upstream.max_queue_wait),
    ("upstream.quota_window_margin_ms", |s| {
        s.upstream.quota_window_margin
    }),
    ("upstream.retry_base_delay_ms", |s| {
        s.upstream.retry_base_delay
    }),
    ("upstream.retry_max_delay_ms", |s| {
        s.upstream.retry_max_delay
    }),
    ("upstream.max_retry_after_ms", |s| {
        s.upstream.max_retry_after
    }),
    ("cache.ttl_ms", |s| s.cache.ttl),
    ("cache.l1_ttl_ms", |s| s.cache.l1_ttl),
    ("cache.refusal_ttl_ms", |s| s.cache.refusal_ttl),
    ("redis.command_timeout_ms", |s| s.redis.command_timeout),
    ("redis.lease_ms", |s| s.redis.lease),
    ("redis.failure_share_ms", |s| s.redis.failure_share),
    ("redis.probe_interval_ms", |s| s.redis.probe_interval),
    ("offline.latency_ms", |s| s.offline.latency),
    ("conversation.ttl_ms", |s| s.conversation.ttl),
    ("conversation.busy_wait_ms", |s| s.conversation.busy_wait),
    ("stream.keepalive_ms", |s| s.stream.keepalive),
    ("stream.retry_after_ms", |s| s.stream.retry_after),
    ("stream.redis_ttl_ms", |s| s.stream.redis_ttl),
    ("safety.webhook_timeout_ms", |s| s.safety.webhook_timeout),
    ("safety.webhook_poll_ms", |s| s.safety.webhook_poll),
    ("safety.webhook_retry_min_ms", |s| {
        s.safety.webhook_retry_min
    }),
    ("safety.webhook_retry_max_ms", |s| {
        s.safety.webhook_retry_max
    }),
    ("safety.moderation_timeout_ms", |s| {
        s.safety.moderation_timeout
    }),
    ("safety.moderation_breaker_cooldown_ms", |s| {
        s.safety.moderation_breaker_cooldown
    }),
    ("database.acquire_timeout_ms", |s| {
        s.database.acquire_timeout
    }),
    ("database.key_refresh_ms", |s| s.database.key_refresh),
    ("database.ledger_flush_ms", |s| s.database.ledger_flush),
    ("records.sweep_interval_ms", |s| s.records.sweep_interval),
    ("metrics.upkeep_interval_ms", |s| s.metrics.upkeep_interval),
    ("routing.breaker_cooldown_ms", |s| {
        s.routing.breaker_cooldown
    }),
];

/// Every count that must be positive.
const POSITIVE_COUNTS: [&str; 15] = [
    "server.max_message_chars",
    "server.max_connections",
    "server.http2_max_concurrent_streams",
    "server.max_stalled_streams_per_connection",
    "upstream.max_concurrency",
    "stream.max_open",
    "stream.redis_max_entries",
    "redis.replicas",
    "redis.down_after_failures",
    "redis.up_after_probes",
    "conversation.max_conversations",
    "conversation.max_history_tokens",
    "database.max_connections",
    "database.ledger_max_rows",
    "auth.max_keys",
];

/// A TOML file setting `section.key = value` for each entry, one table per section.
fn toml_file(entries: &[(&str, String)]) -> String {
    let mut sections: Vec<(&str, String)> = Vec::new();
    for (key, value) in entries {
        let (section, name) = key.split_once('.').unwrap();
        let line = format!("{name} = {value}\n");
        match sections.iter_mut().find(|(s, _)| *s == section) {
            Some((_, body)) => body.push_str(&line),
            None => sections.push((section, line)),
        }
    }
    sections
        .iter()
        .map(|(section, body)| format!("[{section}]\n{body}"))
        .collect()
}

fn load(jail: &mut Jail, text: &str) -> Result<Settings, ConfigError> {
    jail.create_file("lc.toml", text).unwrap();
    Settings::from_figment(Settings::figment(Some(Path::new("lc.toml"))))
}

#[test]
fn defaults_are_the_documented_numbers() {
    let s = Settings::default();
    assert_eq!(s.upstream.max_concurrency.get(), 1000);
    assert_eq!(s.cache.ttl, Duration::from_secs(3600));
    assert_eq!(s.cache.capacity, 1000);
    assert_eq!(s.server.request_timeout, Duration::from_secs(30));
    assert_eq!(s.server.gzip_min_bytes, 1000);
    assert!(!s.uses_gemini());
    assert!(!s.uses_redis());
    s.validate().unwrap();
}

#[test]
fn file_then_environment_override_defaults() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "lc.toml",
            "[upstream]\nmax_concurrency = 7\nmax_queue = 3\n[cache]\nttl_ms = 10\n",
        )?;
        jail.set_env("LEARNING_CHAT_UPSTREAM__MAX_QUEUE", "9");
        jail.set_env("LEARNING_CHAT_BIND", "127.0.0.1:9999");
        jail.set_env("GEMINI_API_KEY", "sk-test-secret");
        jail.set_env("REDIS_HOST", "redis.internal");
        jail.set_env("REDIS_PORT", "6380");
        let s = Settings::from_figment(Settings::figment(Some(Path::new("lc.toml"))))
            .map_err(|e| e.to_string())?;
        assert_eq!(s.upstream.max_concurrency.get(), 7);
        assert_eq!(s.upstream.max_queue, 9);
        assert_eq!(s.cache.ttl, Duration::from_millis(10));
        assert_eq!(s.server.bind.to_string(), "127.0.0.1:9999");
        assert_eq!(s.gemini.api_key.expose(), "sk-test-secret");
        assert_eq!(s.redis.url.expose(), "redis://redis.internal:6380");
        let printed = s.to_masked_toml();
        assert!(!printed.contains("sk-test-secret"), "{printed}");
        assert!(!printed.contains("redis.internal"), "{printed}");
        assert!(!format!("{s:?}").contains("sk-test-secret"));
        Ok(())
    });
}

#[test]
fn sentinels_and_cluster_nodes_come_from_file_or_environment() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "ha.toml",
            "[redis]\nsentinels = [\"s1:26379\", \"redis://:pw@s2:26379\"]\n\
             sentinel_master = \"tutor\"\n",
        )?;
        jail.set_env("REDIS_HOST", "ignored.internal");
        let s = Settings::from_figment(Settings::figment(Some(Path::new("ha.toml"))))
            .map_err(|e| e.to_string())?;
        assert!(s.uses_redis());
        assert!(
            s.redis.url.is_empty(),
            "REDIS_HOST must not add a second mode"
        );
        assert_eq!(s.redis.sentinels[1].expose(), "redis://:pw@s2:26379");
        assert_eq!(s.redis.sentinel_master, "tutor");
        assert!(!s.to_masked_toml().contains("pw@"));
        jail.set_env(
            "LEARNING_CHAT_REDIS__CLUSTER_NODES",
            "[\"c1:7000\", \"c2:7000\"]",
        );
        let err = Settings::from_figment(Settings::figment(Some(Path::new("ha.toml"))))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not both"), "{err}");
        let s = Settings::from_figment(Settings::figment(None)).map_err(|e| e.to_string())?;
        let nodes: Vec<&str> = s.redis.cluster_nodes.iter().map(Secret::expose).collect();
        assert_eq!(nodes, ["c1:7000", "c2:7000"]);
        Ok(())
    });
}

#[test]
fn deprecated_seconds_keys_still_work_with_a_warning() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "old.toml",
            "[server]\nrequest_timeout_secs = 7\nshutdown_grace_secs = 9\n\
             [upstream]\nlatency_half_life_secs = 2\n\
             [cache]\nttl_secs = 11\nl1_ttl_secs = 3\nrefusal_ttl_secs = 0\n\
             [conversation]\nttl_secs = 5\n",
        )?;
        jail.set_env("LEARNING_CHAT_AUTH__STALE_TTL_SECS", "4");
        let s = Settings::from_figment(Settings::figment(Some(Path::new("old.toml"))))
            .map_err(|e| e.to_string())?;
        assert_eq!(s.server.request_timeout, Duration::from_secs(7));
        assert_eq!(s.request_timeout(), Duration::from_secs(7));
        assert_eq!(s.server.shutdown_grace, Duration::from_secs(9));
        assert_eq!(s.upstream.latency_half_life, Duration::from_secs(2));
        assert_eq!(s.cache.ttl, Duration::from_secs(11));
        assert_eq!(s.cache.l1_ttl, Duration::from_secs(3));
        assert_eq!(s.cache.refusal_ttl, Duration::ZERO);
        assert_eq!(s.conversation.ttl, Duration::from_secs(5));
        assert_eq!(s.deprecations.len(), 8, "{:?}", s.deprecations);
        assert!(
            s.deprecations[0].contains("server.request_timeout_secs is deprecated")
                && s.deprecations[0].contains("read as server.request_timeout_ms = 7000")
                && s.deprecations[0].contains("LEARNING_CHAT_SERVER__REQUEST_TIMEOUT_MS"),
            "{:?}",
            s.deprecations
        );
        // The old names are not printed back: check-config shows only the `_ms` keys.
        let printed = s.to_masked_toml();
        assert!(!printed.contains("_secs"), "{printed}");
        assert!(printed.contains("request_timeout_ms = 7000"), "{printed}");
        // Both spellings of one key: refused, naming both.
        jail.set_env("LEARNING_CHAT_SERVER__REQUEST_TIMEOUT_MS", "8000");
        let err = Settings::from_figment(Settings::figment(Some(Path::new("old.toml"))))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("request_timeout_secs") && err.contains("request_timeout_ms"),
            "{err}"
        );
        // Without the file: only the deprecated variable is warned about.
        let s = Settings::from_figment(Settings::figment(None)).map_err(|e| e.to_string())?;
        assert_eq!(s.deprecations.len(), 1, "{:?}", s.deprecations);
        assert!(
            s.deprecations[0].starts_with("auth.stale_ttl_secs is deprecated and ignored"),
            "{:?}",
            s.deprecations
        );
        assert_eq!(s.server.request_timeout, Duration::from_millis(8_000));
        assert!(Settings::default().deprecations.is_empty());
        Ok(())
    });
}

#[test]
fn the_old_key_store_settings_are_ignored_with_a_warning_and_keys_need_the_database() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "old.toml",
            "[auth]\nkeys_file = \"old-keys.toml\"\ncache_ttl_ms = 1000\nstale_ttl_ms = 600000\n",
        )?;
        let s = Settings::from_figment(Settings::figment(Some(Path::new("old.toml"))))
            .map_err(|e| e.to_string())?;
        assert_eq!(s.deprecations.len(), 3, "{:?}", s.deprecations);
        assert!(s.deprecations[0].contains("migrate-keys --from-file"));
        assert!(s.deprecations[1].starts_with("auth.cache_ttl_ms is deprecated and ignored"));
        // migrate-keys still finds the file; check-config does not print the old keys.
        assert_eq!(
            s.auth.keys_file.as_deref(),
            Some(Path::new("old-keys.toml"))
        );
        let printed = s.to_masked_toml();
        assert!(
            !printed.contains("keys_file") && !printed.contains("stale_ttl"),
            "{printed}"
        );

        jail.set_env("LEARNING_CHAT_AUTH__MODE", "required");
        jail.set_env("LEARNING_CHAT_AUTH__PEPPER", "pepper-0123456789abcdef");
        jail.set_env("LEARNING_CHAT_DATABASE__URL", "none");
        let err = Settings::from_figment(Settings::figment(None))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("auth.mode") && err.contains("database.url"),
            "{err}"
        );
        jail.set_env("LEARNING_CHAT_DATABASE__URL", "sqlite://records.db");
        Settings::from_figment(Settings::figment(None)).map_err(|e| e.to_string())?;
        Ok(())
    });
}

#[test]
fn every_millisecond_key_loads_as_that_many_milliseconds_or_a_humantime_string() {
    // The table covers every `_ms` key there is.
    let printed = toml::Value::try_from(Settings::default()).unwrap();
    let mut ms_keys: Vec<String> = Vec::new();
    for (section, table) in printed.as_table().unwrap() {
        // `[[experiments]]` is a list of tables, with no durations.
        let Some(table) = table.as_table() else {
            continue;
        };
        for key in table.keys() {
            if key.ends_with("_ms") {
                ms_keys.push(format!("{section}.{key}"));
            }
        }
    }
    let mut table: Vec<String> = DURATIONS.iter().map(|(k, _)| (*k).to_owned()).collect();
    ms_keys.sort();
    table.sort();
    assert_eq!(ms_keys, table);
    // Distinct values, increasing so retry_base_delay_ms stays below retry_max_delay_ms.
    let millis = |i: usize| 1_000 * (i as u64 + 1) + 7;
    let numbers: Vec<(&str, String)> = DURATIONS
        .iter()
        .enumerate()
        .map(|(i, (key, _))| (*key, millis(i).to_string()))
        .collect();
    let strings: Vec<(&str, String)> = DURATIONS
        .iter()
        .enumerate()
        .map(|(i, (key, _))| (*key, format!("\"{}s 7ms\"", i + 1)))
        .collect();
    Jail::expect_with(|jail| {
        for entries in [&numbers, &strings] {
            let s = load(jail, &toml_file(entries)).unwrap();
            for (i, (key, field)) in DURATIONS.iter().enumerate() {
                assert_eq!(field(&s), Duration::from_millis(millis(i)), "{key}");
            }
            // Printed back as milliseconds, whichever way they were written.
            let printed = s.to_masked_toml();
            assert!(printed.contains("request_timeout_ms = 1007\n"), "{printed}");
        }
        // The environment takes both forms too.
        jail.set_env("LEARNING_CHAT_CACHE__TTL_MS", "1500");
        jail.set_env("LEARNING_CHAT_REDIS__LEASE_MS", "2m");
        let s = load(jail, "").unwrap();
        assert_eq!(s.cache.ttl, Duration::from_millis(1500));
        assert_eq!(s.redis.lease, Duration::from_secs(120));
        Ok(())
    });
}

#[test]
fn bad_durations_are_refused_naming_the_key() {
    Jail::expect_with(|jail| {
        for (value, says) in [
            ("\"30 parsecs\"", "unknown time unit"),
            ("\"1500us\"", "whole number of milliseconds"),
            ("-5", "a whole number of milliseconds or a duration"),
            ("2.5", "a whole number of milliseconds or a duration"),
        ] {
            let err = load(jail, &format!("[server]\nrequest_timeout_ms = {value}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("server.request_timeout_ms") && err.contains(says),
                "{value}: {err}"
            );
        }
        Ok(())
    });
}

#[test]
fn zero_is_refused_where_a_positive_value_is_needed_naming_the_key() {
    Jail::expect_with(|jail| {
        for key in POSITIVE_COUNTS {
            let err = load(jail, &toml_file(&[(key, "0".to_owned())]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains("nonzero"), "{key}: {err}");
            // The same from the environment.
            let var = env_name(key);
            jail.set_env(&var, "0");
            // figment names a variable's key as written, upper case.
            let err = load(jail, "").unwrap_err().to_string();
            assert!(
                err.contains(&key.to_uppercase()) && err.contains("nonzero"),
                "{var}: {err}"
            );
            jail.set_env(&var, "1");
            let s = load(jail, "").unwrap();
            let printed = toml::Value::try_from(&s).unwrap();
            let (section, name) = key.split_once('.').unwrap();
            assert_eq!(printed[section][name].as_integer(), Some(1), "{key}");
        }
        for (key, value) in [
            ("server.request_timeout_ms", "0"),
            ("server.header_read_timeout_ms", "\"0s\""),
            ("server.body_read_timeout_ms", "0"),
            ("server.keep_alive_idle_timeout_ms", "0"),
            ("server.send_stall_timeout_ms", "0"),
            ("server.http2_keep_alive_timeout_ms", "0"),
            ("upstream.latency_half_life_ms", "0"),
            ("cache.ttl_ms", "0"),
            ("cache.l1_ttl_ms", "0"),
            ("redis.command_timeout_ms", "0"),
            ("redis.probe_interval_ms", "0"),
            ("conversation.ttl_ms", "0"),
            ("stream.redis_ttl_ms", "0"),
            ("routing.breaker_cooldown_ms", "0"),
        ] {
            let err = load(jail, &toml_file(&[(key, value.to_owned())]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("{key} must be at least 1 ms")),
                "{err}"
            );
        }
        // Zero is a setting of its own where the reference says so.
        let off = toml_file(&[
            ("cache.enabled", "false".to_owned()),
            ("cache.capacity", "0".to_owned()),
            ("cache.ttl_ms", "0".to_owned()),
            ("cache.l1_ttl_ms", "0".to_owned()),
            ("routing.breaker_failures", "0".to_owned()),
            ("routing.breaker_cooldown_ms", "0".to_owned()),
            ("stream.keepalive_ms", "0".to_owned()),
            ("server.http2_keep_alive_interval_ms", "0".to_owned()),
            ("conversation.busy_wait_ms", "0".to_owned()),
            ("upstream.max_queue", "0".to_owned()),
        ]);
        load(jail, &off).unwrap();
        Ok(())
    });
}

#[test]
fn unknown_keys_and_bad_values_are_rejected() {
    Jail::expect_with(|jail| {
        jail.create_file("bad.toml", "[upstream]\nmax_concurency = 7\n")?;
        let err = Settings::from_figment(Settings::figment(Some(Path::new("bad.toml"))))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_concurency"), "{err}");
        jail.create_file("zero.toml", "[upstream]\nmax_concurrency = 0\n")?;
        let err = Settings::from_figment(Settings::figment(Some(Path::new("zero.toml"))))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_concurrency"), "{err}");
        Ok(())
    });
}

#[test]
fn the_metrics_listener_is_an_address_or_off() {
    Jail::expect_with(|jail| {
        let s = load(jail, "").unwrap();
        assert_eq!(
            s.metrics.listener().unwrap(),
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert!(!s.metrics.on_service_port);
        for off in ["off", "OFF", ""] {
            let s = load(jail, &format!("[metrics]\nbind = \"{off}\"\n")).unwrap();
            assert_eq!(s.metrics.listener().unwrap(), None, "{off:?}");
        }
        let err = load(jail, "[metrics]\nbind = \"localhost:9464\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("metrics.bind"), "{err}");
        Ok(())
    });
}

#[test]
fn a_pepper_shipped_in_the_repository_is_refused_naming_the_key() {
    Jail::expect_with(|jail| {
        for pepper in super::placeholders::SHIPPED_PLACEHOLDERS
            .iter()
            .map(|p| (*p).to_owned())
            .chain(["REPLACE_WITH_YOUR_OWN_PEPPER_PLEASE".to_owned()])
        {
            for mode in ["off", "required"] {
                jail.set_env("LEARNING_CHAT_AUTH__MODE", mode);
                jail.set_env("LEARNING_CHAT_AUTH__PEPPER", &pepper);
                let err = load(jail, "").unwrap_err().to_string();
                assert!(
                    err.contains("auth.pepper") && err.contains("LEARNING_CHAT_AUTH__PEPPER"),
                    "{pepper} ({mode}): {err}"
                );
                assert!(
                    !err.contains(&pepper),
                    "the value itself is never printed: {err}"
                );
            }
        }
        jail.set_env(
            "LEARNING_CHAT_AUTH__PEPPER",
            "9f86d081884c7d659a2feaa0c55ad015",
        );
        load(jail, "").unwrap();
        // The database password shipped in deploy/k8s/secret.yaml, inside its URL.
        jail.set_env(
            "LEARNING_CHAT_DATABASE__URL",
            "postgres://learning_chat:REPLACE_WITH_A_DATABASE_PASSWORD@postgres:5432/learning_chat",
        );
        let err = load(jail, "").unwrap_err().to_string();
        assert!(
            err.contains("database.url") && !err.contains("REPLACE_WITH"),
            "{err}"
        );
        jail.set_env(
            "LEARNING_CHAT_DATABASE__URL",
            "postgres://learning_chat:d2c1b4a0e9f8c7b6@postgres:5432/learning_chat",
        );
        load(jail, "").unwrap();
        Ok(())
    });
}

#[test]
fn a_models_own_quota_overrides_the_upstream_budget_key_by_key() {
    Jail::expect_with(|jail| {
        let s = load(
            jail,
            "[upstream]\nrpm = 60\nrpd = 500\n\
             [models.\"gemini-2.5-flash-lite\"]\nrpm = 4000\ninput_tpm = 4000000\n",
        )
        .unwrap();
        let lite = s.model_quota("gemini-2.5-flash-lite");
        assert_eq!((lite.rpm, lite.input_tpm, lite.rpd), (4000, 4_000_000, 500));
        // A model without a table takes the whole [upstream] budget as its own.
        let flash = s.model_quota("gemini-2.5-flash");
        assert_eq!((flash.rpm, flash.input_tpm, flash.rpd), (60, 0, 500));
        // Model ids name Redis keys and metric labels: nothing odd gets in, and no unknown key.
        let odd = load(jail, "[models.\"flash lite\"]\nrpm = 1\n").unwrap_err();
        assert!(odd.to_string().contains("models."), "{odd}");
        let unknown = load(jail, "[models.flash]\nrpmm = 1\n").unwrap_err();
        assert!(unknown.to_string().contains("rpmm"), "{unknown}");
        Ok(())
    });
}
