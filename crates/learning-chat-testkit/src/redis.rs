//! Private redis-servers on free loopback ports: a plain one a test can kill, freeze and restart,
//! and highly available deployments (a master with a replica watched by three sentinels, a Redis
//! Cluster made by `redis-cli --cluster create`).

use crate::net::{free_port, wait_for_port, wait_until};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A private redis-server, killed on drop.
pub struct RedisProcess {
    pub port: u16,
    // Behind a mutex so a test can kill and restart it while others only read `port`.
    child: std::sync::Mutex<Option<Child>>,
    dir: tempfile::TempDir,
}

impl RedisProcess {
    /// Starts redis-server on a free port with no persistence.
    pub fn start() -> RedisProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let redis = RedisProcess {
            port: free_port(),
            child: std::sync::Mutex::new(None),
            dir,
        };
        redis.restart();
        redis
    }

    /// (Re)starts the server on the same port.
    pub fn restart(&self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh checks it)");
        *self.child.lock().unwrap() = Some(child);
        assert!(
            wait_for_port(self.port, Duration::from_secs(10)),
            "redis-server did not start"
        );
    }

    /// Kills the server (SIGKILL: an outage, not a clean stop).
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Unfreezes it (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = self.child.lock().unwrap().as_ref() {
            let status = Command::new("kill")
                .arg(signal)
                .arg(child.id().to_string())
                .status();
            assert!(status.is_ok_and(|s| s.success()));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs a redis-cli command against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.thaw();
        self.kill();
    }
}

/// One redis-server (plain, replica, sentinel or cluster node), killed on drop.
pub struct RedisNode {
    pub port: u16,
    child: std::sync::Mutex<Option<Child>>,
    // Holds the node's config file and data until the node is dropped.
    _dir: tempfile::TempDir,
}

impl RedisNode {
    /// Starts `redis-server <config file>` plus `extra` arguments. The config file (written into
    /// the node's own directory) holds `config`; sentinels and cluster nodes rewrite it.
    // The child is waited for on every path: kept by the node (killed and reaped on drop), reaped
    // once it exited, or killed and reaped before the panic; the lint cannot follow the first.
    #[allow(clippy::zombie_processes)]
    pub fn start(config: &str, extra: &[&str]) -> RedisNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster = config.contains("cluster-enabled yes");
        // A port found free can be taken before the server binds it (and a cluster node also
        // binds port + 10000, in the range the kernel hands out to outgoing connections): a
        // server that exits at once is started again on another port.
        for _ in 0..5 {
            let port = node_port(cluster);
            let file = dir.path().join("redis.conf");
            let body = format!(
                "port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndir {}\n{config}\n",
                dir.path().display()
            );
            std::fs::write(&file, body).expect("write redis.conf");
            let mut child = Command::new("redis-server")
                .arg(&file)
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (scripts/test.sh checks it)");
            let until = std::time::Instant::now() + Duration::from_secs(10);
            let mut exited = false;
            while std::time::Instant::now() < until {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return RedisNode {
                        port,
                        child: std::sync::Mutex::new(Some(child)),
                        _dir: dir,
                    };
                }
                if matches!(child.try_wait(), Ok(Some(_))) {
                    let _ = child.wait();
                    exited = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !exited {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-server on {port} did not start within 10 s");
            }
        }
        panic!("redis-server exited at start five times (ports taken?)");
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: an outage, not a clean stop).
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs a redis-cli command against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The master group name the sentinels watch.
pub const MASTER_NAME: &str = "mymaster";

/// A master, one replica and three sentinels (quorum 2, master down after 1 s).
pub struct SentinelGroup {
    pub master: RedisNode,
    pub replica: RedisNode,
    pub sentinels: Vec<RedisNode>,
}

impl SentinelGroup {
    /// Starts everything and waits until the replica is in sync and every sentinel knows the
    /// replica and the two other sentinels (so a failover can be elected at once).
    pub fn start() -> SentinelGroup {
        let master = RedisNode::start("", &[]);
        let replica = RedisNode::start(&format!("replicaof 127.0.0.1 {}", master.port), &[]);
        let monitor = format!(
            "sentinel monitor {MASTER_NAME} 127.0.0.1 {} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
             sentinel failover-timeout {MASTER_NAME} 5000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            master.port
        );
        let sentinels: Vec<RedisNode> = (0..3)
            .map(|_| RedisNode::start(&monitor, &["--sentinel"]))
            .collect();
        let group = SentinelGroup {
            master,
            replica,
            sentinels,
        };
        assert!(
            wait_until(Duration::from_secs(20), || group
                .replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")),
            "the replica never synced"
        );
        assert!(
            wait_until(Duration::from_secs(40), || group.sentinels.iter().all(
                |s| {
                    let replicas = s.cli(&["SENTINEL", "REPLICAS", MASTER_NAME]);
                    let others = s.cli(&["SENTINEL", "SENTINELS", MASTER_NAME]);
                    replicas.contains(&group.replica.port.to_string())
                        && others.matches("runid").count() == 2
                }
            )),
            "the sentinels never found the replica and each other"
        );
        group
    }

    /// `host:port` of each sentinel, for `redis.sentinels`.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisNode::addr).collect()
    }

    /// The master port the first answering sentinel names.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let out = s.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME]);
            out.lines().nth(1).and_then(|p| p.trim().parse().ok())
        })
    }
}

/// A Redis Cluster of `masters` masters with `replicas` replicas each (node timeout 1 s).
pub struct RedisCluster {
    pub nodes: Vec<RedisNode>,
}

impl RedisCluster {
    /// Starts the nodes, joins them with `redis-cli --cluster create --cluster-yes` and waits
    /// until every node reports `cluster_state:ok`.
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        let config = "cluster-enabled yes\ncluster-config-file nodes.conf\n\
                      cluster-node-timeout 1000\ncluster-require-full-coverage no\n";
        let nodes: Vec<RedisNode> = (0..masters * (1 + replicas))
            .map(|_| RedisNode::start(config, &[]))
            .collect();
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for node in &nodes {
            create.arg(node.addr());
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes };
        assert!(
            wait_until(Duration::from_secs(30), || cluster.all_ok()),
            "the cluster never reached cluster_state:ok"
        );
        cluster
    }

    /// True when every live node reports `cluster_state:ok`.
    pub fn all_ok(&self) -> bool {
        self.nodes
            .iter()
            .filter(|n| n.child.lock().unwrap().is_some())
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    }

    /// Moves every slot of the master at `from` to the master at `to` (`redis-cli --cluster
    /// reshard`, keys migrated with MIGRATE); returns whether redis-cli succeeded.
    pub fn reshard_all(&self, from: &RedisNode, to: &RedisNode) -> bool {
        let from_id = from.cli(&["CLUSTER", "MYID"]);
        let to_id = to.cli(&["CLUSTER", "MYID"]);
        let slots: usize = from
            .cli(&["CLUSTER", "NODES"])
            .lines()
            .filter(|l| l.contains("myself"))
            .flat_map(|l| {
                l.split_whitespace()
                    .skip(8)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .map(|range| match range.split_once('-') {
                Some((a, b)) => {
                    b.parse::<usize>().unwrap_or(0) + 1 - a.parse::<usize>().unwrap_or(0)
                }
                None => 1,
            })
            .sum();
        Command::new("redis-cli")
            .args(["--cluster", "reshard", &from.addr()])
            .args(["--cluster-from", &from_id, "--cluster-to", &to_id])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The live masters.
    pub fn masters(&self) -> Vec<&RedisNode> {
        self.nodes
            .iter()
            .filter(|n| n.child.lock().unwrap().is_some())
            .filter(|n| n.cli(&["INFO", "replication"]).contains("role:master"))
            .collect()
    }

    /// `host:port` of every node, for `redis.cluster_nodes`.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(RedisNode::addr).collect()
    }

    /// The node currently serving `key`'s slot as master.
    pub fn master_of(&self, key: &str) -> Option<&RedisNode> {
        let live = |n: &&RedisNode| n.child.lock().unwrap().is_some();
        let slot = self
            .nodes
            .iter()
            .find(live)?
            .cli(&["CLUSTER", "KEYSLOT", key]);
        self.nodes.iter().find(|n| {
            live(n)
                && n.cli(&["INFO", "replication"]).contains("role:master")
                && owns_slot(n, &slot)
        })
    }
}

fn owns_slot(node: &RedisNode, slot: &str) -> bool {
    let Ok(slot) = slot.parse::<u32>() else {
        return false;
    };
    let shards = node.cli(&["CLUSTER", "NODES"]);
    shards.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(2).is_some_and(|flags| flags.contains("myself"))
            && fields.iter().skip(8).any(|range| {
                let mut ends = range.split('-');
                match (ends.next().and_then(|a| a.parse::<u32>().ok()), ends.next()) {
                    (Some(a), None) => a == slot,
                    (Some(a), Some(b)) => b.parse::<u32>().is_ok_and(|b| (a..=b).contains(&slot)),
                    _ => false,
                }
            })
    })
}

/// A free port for a node; for a cluster node, one whose bus port (+ 10000) is free too.
fn node_port(cluster: bool) -> u16 {
    loop {
        let port = free_port();
        let bus_free = port
            .checked_add(10000)
            .is_some_and(|bus| std::net::TcpListener::bind(("127.0.0.1", bus)).is_ok());
        if !cluster || bus_free {
            return port;
        }
    }
}
