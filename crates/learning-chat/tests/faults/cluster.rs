//! Scenarios 3 and 4: three servers behind the shipped nginx config sharing one Redis and one
//! quota, while Redis or a server dies.

use crate::harness::{
    canary, canary_failures, http, ms, open_loop, print_row, recovery, start_server, start_sim,
    SimControl,
};
use crate::support::cluster::{start_nginx, Proc};
use crate::support::processes::RedisProcess;
use crate::LOAD_RATE;
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

/// Three servers behind the shipped nginx config, one Redis, one shared quota.
struct Cluster {
    nginx: Proc,
    servers: Vec<Proc>,
    sim: Proc,
    redis: RedisProcess,
    dir: tempfile::TempDir,
}

/// The shared quota of the cluster scenarios; the simulator enforces the same one.
const CLUSTER_RPM: u32 = 300;
/// gemini-sim's latency in the cluster scenarios: long enough that every server has calls in
/// flight when Redis or a server dies.
const CLUSTER_LATENCY_MS: u64 = 1000;

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let redis = RedisProcess::start();
        let sim = start_sim(CLUSTER_RPM, CLUSTER_LATENCY_MS);
        let servers: Vec<Proc> = (0..3)
            .map(|_| {
                start_server(
                    sim.port,
                    &[
                        ("REDIS_URL", redis.url()),
                        ("LEARNING_CHAT_REDIS__REPLICAS", "3".to_owned()),
                        ("LEARNING_CHAT_UPSTREAM__RPM", CLUSTER_RPM.to_string()),
                    ],
                )
            })
            .collect();
        let nginx = start_nginx(dir.path(), &servers);
        let cluster = Cluster {
            nginx,
            servers,
            sim,
            redis,
            dir,
        };
        for server in &cluster.servers {
            assert!(
                redis_up_within(server.port, Duration::from_secs(30)).await,
                "server {} never reported redis up",
                server.port
            );
        }
        cluster
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.nginx.port)
    }
}

/// Whether the server's /ready reports Redis "up" within `within` (polled every 50 ms).
async fn redis_up_within(port: u16, within: Duration) -> bool {
    let client = http();
    let until = Instant::now() + within;
    while Instant::now() < until {
        let ready = client
            .get(format!("http://127.0.0.1:{port}/ready"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if let Ok(reply) = ready {
            if let Ok(body) = reply.json::<Value>().await {
                if body["redis"] == "up" {
                    return true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Load and canary through nginx for `total`, running `fault` at `fault_at` meanwhile. `fault`
/// returns when its fault ended and how many upstream calls it may have cost twice (calls lost
/// with a killed server). Asserts no request failed, no upstream 429, and at most one upstream
/// call per distinct question beyond those.
async fn cluster_under_fault<F, Fut>(
    cluster: &Cluster,
    scenario: &str,
    fault_at: Duration,
    total: Duration,
    fault: F,
) where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = (Instant, u64)>,
{
    let control = SimControl::new(cluster.sim.port);
    control.reset_stats().await;
    let begin = Instant::now();
    let chat_url = format!("{}/api/v1/agents/math", cluster.base());
    let load = open_loop(cluster.base(), total, cluster.dir.path(), "load");
    let canary_all = canary(
        chat_url,
        "cluster",
        begin,
        begin + total,
        Duration::from_millis(200),
        None,
    );
    tokio::time::sleep_until(begin + fault_at).await;
    let (fault_end, extra_calls) = fault().await;
    let load = load.await.unwrap();
    let probes = canary_all.await.unwrap();
    let upstream = control.stats().await;
    let recovered = recovery(&probes, fault_end);
    let (canary_failed, _) = canary_failures(&probes);
    let distinct = load.requests + probes.len() as u64;
    let failed = format!(
        "load {:?}; canary {canary_failed:?}",
        load.failures_by_status
    );
    print_row(
        scenario,
        &format!(
            "3 servers + nginx, shared quota {CLUSTER_RPM} rpm, answers {CLUSTER_LATENCY_MS} ms, \
             {LOAD_RATE}/s load + 5/s canary"
        ),
        distinct,
        &failed,
        &upstream,
        recovered,
    );
    assert!(load.requests > 0 && load.ok > 0);
    assert_eq!(load.failures(), 0, "no request may fail: {failed}");
    assert!(canary_failed.is_empty(), "no request may fail: {failed}");
    assert_eq!(
        upstream.rate_limited, 0,
        "the shared quota is never exceeded"
    );
    assert!(
        upstream.requests <= distinct + extra_calls,
        "one upstream call per distinct question: {} calls for {distinct} questions \
         ({extra_calls} were in flight on a lost server)",
        upstream.requests
    );
}

/// Scenario 3: Redis SIGKILLed 4 s into the load, restarted 4 s later.
#[tokio::test]
async fn redis_killed_and_restarted_under_three_servers_fails_nothing() {
    let cluster = Cluster::start().await;
    let reconnected = std::cell::Cell::new(None);
    // When each server was seen up again, from just before the restart (no server can trust
    // Redis before it listens).
    let seen_up = std::cell::RefCell::new(Vec::new());
    cluster_under_fault(
        &cluster,
        "3. Redis SIGKILLed, restarted after 4 s",
        Duration::from_secs(4),
        Duration::from_secs(14),
        || async {
            cluster.redis.kill();
            tokio::time::sleep(Duration::from_secs(4)).await;
            let restarting = Instant::now();
            cluster.redis.restart();
            let restarted = Instant::now();
            let mut all_up = true;
            for server in &cluster.servers {
                all_up &= redis_up_within(server.port, Duration::from_secs(20)).await;
                seen_up.borrow_mut().push(restarting.elapsed());
            }
            reconnected.set(all_up.then(|| restarted.elapsed()));
            (restarted, 0)
        },
    )
    .await;
    let reconnected = reconnected.get();
    eprintln!(
        "redis fault: every server reported Redis up again {} ms after redis-server listened",
        ms(reconnected)
    );
    // Requests never stopped succeeding (checked above). Every server goes back to the shared
    // state (within the 20 s hang guard above; how soon is the figure printed), and not before
    // the deliberate hysteresis (a flapping Redis is not trusted at once):
    // `redis.up_after_probes` successful probes in a row, `redis.probe_interval_ms` apart, so at
    // least (probes - 1) intervals after Redis listened. Each server is seen up no sooner than it
    // went up, so this lower bound holds however loaded the machine is.
    let defaults = learning_chat::config::RedisSettings::default();
    let hysteresis = defaults.probe_interval * (defaults.up_after_probes.get() - 1);
    assert!(
        reconnected.is_some(),
        "every server back on the shared Redis: {}",
        ms(reconnected)
    );
    let seen_up = seen_up.into_inner();
    assert!(
        seen_up.iter().all(|at| *at >= hysteresis),
        "a server trusted the restarted Redis before {} probes in a row: seen up {seen_up:?} \
         after the restart began",
        defaults.up_after_probes,
    );
}

/// Scenario 4: one of three servers SIGKILLed 5 s into the load.
#[tokio::test]
async fn one_of_three_servers_sigkilled_fails_nothing() {
    let cluster = Cluster::start().await;
    let control = SimControl::new(cluster.sim.port);
    cluster_under_fault(
        &cluster,
        "4. one of 3 servers SIGKILLed",
        Duration::from_secs(5),
        Duration::from_secs(14),
        || async {
            // Calls the killed server had in flight are lost with it and asked again elsewhere.
            let in_flight = control.stats().await.in_flight;
            cluster.servers[1].signal("-KILL");
            (Instant::now(), in_flight)
        },
    )
    .await;
}
