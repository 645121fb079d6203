//! A private Redis Cluster per test: six `redis-server` processes on free
//! loopback ports, three masters with one replica each, joined by
//! `redis-cli --cluster create`; a test can kill the master of a key's shard.
//!
//! `cluster-node-timeout` is 1000 ms so that a replica takes over a killed
//! master within a few seconds, and `cluster-require-full-coverage no` so that
//! the other shards keep serving meanwhile.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::redis::{replicas_on, RedisServer};
use crate::common::{Spawn, TestApp};

/// How long the cluster may take to agree on its slots once created, or on a new master.
const SETTLE: Duration = Duration::from_secs(30);

/// A running cluster, every node killed when dropped.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts six nodes, makes them a cluster and waits (bounded) until every node reports it ready.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-require-full-coverage",
                    "no",
                    // A replica may take over however long ago it last heard
                    // from its master (a fresh one may not have synced yet).
                    "--cluster-replica-validity-factor",
                    "0",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(|node| format!("127.0.0.1:{}", node.port())).collect();
        let output = Command::new(cli())
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli runs (install redis-tools or set REDIS_CLI)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = RedisCluster { nodes };
        cluster.settle("every node sees the whole cluster", |cluster| {
            cluster.nodes.iter().all(|node| cluster.info(node.port()).contains("cluster_state:ok"))
                && cluster.masters().len() == 3
        });
        cluster
    }

    /// The seed list every replica gets: `redis+cluster://` and the first three nodes.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes[..3].iter().map(|node| format!("127.0.0.1:{}", node.port())).collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// `count` gateway replicas sharing one in-memory store and this cluster.
    pub fn replicas(&self, count: usize, spawn: impl Fn() -> Spawn) -> Vec<TestApp> {
        replicas_on(&self.url(), count, spawn)
    }

    /// Runs `redis-cli` against a live node (following redirections) and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let port = self.live_port();
        let output = Command::new(cli()).args(["-c", "-p", &port.to_string()]).args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// The port of the master that holds `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        let slot: u16 = self.cli(&["cluster", "keyslot", key]).parse().expect("a slot number");
        self.masters()
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|(from, to)| (*from..=*to).contains(&slot)))
            .map(|(port, _)| port)
            .unwrap_or_else(|| panic!("no master holds slot {slot}"))
    }

    /// Moves the slot of `key`, with every key in it, from its master to another master, as
    /// `redis-cli --cluster reshard` moves slots: the target imports, the source migrates, the keys
    /// are sent over with MIGRATE, then every master learns the slot's new owner. Answers the
    /// ports of the old and the new owner.
    pub fn move_slot_of(&self, key: &str) -> (u16, u16) {
        let slot = self.cli(&["cluster", "keyslot", key]);
        let from = self.master_of(key);
        let masters: Vec<u16> = self.masters().into_iter().map(|(port, _)| port).collect();
        let to = *masters.iter().find(|port| **port != from).expect("another master");
        let id = |port: u16| node_cli(port, &["cluster", "myid"]);
        let (from_id, to_id) = (id(from), id(to));
        assert_eq!(node_cli(to, &["cluster", "setslot", &slot, "importing", &from_id]), "OK");
        assert_eq!(node_cli(from, &["cluster", "setslot", &slot, "migrating", &to_id]), "OK");
        loop {
            let keys = node_cli(from, &["cluster", "getkeysinslot", &slot, "100"]);
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["migrate", "127.0.0.1"];
            let port = to.to_string();
            args.extend([port.as_str(), "", "0", "5000", "keys"]);
            args.extend(keys.lines());
            assert_eq!(node_cli(from, &args), "OK", "MIGRATE of {keys:?}");
        }
        // The new owner first, as redis-cli does, so that no master points the slot at a node
        // that does not yet know it owns it.
        for port in std::iter::once(to).chain(masters.iter().copied().filter(|port| *port != to)) {
            assert_eq!(node_cli(port, &["cluster", "setslot", &slot, "node", &to_id]), "OK");
        }
        self.settle("every node sees the slot's new owner", |cluster| cluster.master_of(key) == to);
        (from, to)
    }

    /// Kills (SIGKILL) the node on `port`.
    pub fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|node| node.port() == port).expect("a node of the cluster");
        node.kill();
    }

    /// Waits (bounded) until the live nodes agree that a live master holds every slot again.
    pub fn await_failover(&self, dead: u16) {
        self.settle("a replica took over the killed master's slots", |cluster| {
            let masters = cluster.masters();
            let covered: u32 = masters.iter().flat_map(|(_, r)| r).map(|(f, t)| u32::from(t - f) + 1).sum();
            covered == 16384 && masters.iter().all(|(port, _)| *port != dead)
        });
    }

    fn settle(&self, what: &str, done: impl Fn(&RedisCluster) -> bool) {
        let deadline = Instant::now() + SETTLE;
        while !done(self) {
            assert!(Instant::now() < deadline, "Redis Cluster: not within {SETTLE:?}: {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn info(&self, port: u16) -> String {
        let output = Command::new(cli()).args(["-p", &port.to_string(), "cluster", "info"]).output();
        output.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }

    fn live_port(&self) -> u16 {
        let live = self.nodes.iter().find(|node| self.info(node.port()).contains("cluster_state"));
        live.expect("a live node").port()
    }

    /// The live masters as a live node sees them: their ports and slot ranges.
    fn masters(&self) -> Vec<(u16, Vec<(u16, u16)>)> {
        let nodes = self.cli(&["cluster", "nodes"]);
        let mut masters = Vec::new();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let Some(port) = fields[1].split(['@', ':']).nth(1).and_then(|p| p.parse().ok()) else { continue };
            let ranges = fields[8..]
                .iter()
                .filter(|range| !range.starts_with('['))
                .filter_map(|range| match range.split_once('-') {
                    Some((from, to)) => Some((from.parse().ok()?, to.parse().ok()?)),
                    None => range.parse().ok().map(|slot| (slot, slot)),
                })
                .collect::<Vec<_>>();
            if !ranges.is_empty() {
                masters.push((port, ranges));
            }
        }
        masters
    }
}

/// Runs `redis-cli` against the node on `port` alone (no redirections) and returns its output.
fn node_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new(cli()).args(["-p", &port.to_string()]).args(args).output().expect("redis-cli");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn cli() -> String {
    std::env::var("REDIS_CLI").unwrap_or_else(|_| "redis-cli".to_string())
}
