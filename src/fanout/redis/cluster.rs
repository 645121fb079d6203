//! Redis Cluster: which `REDIS_URL` names one, and the subscriber task for a
//! cluster, which follows the control channel with classic pub/sub and the
//! topic channels with sharded pub/sub (`SSUBSCRIBE`), so that each topic's
//! messages stay on the shard of its keys.
//!
//! The `redis` crate's cluster connection reconnects, follows slot moves and
//! failovers and subscribes again by itself; this task tells viewers to
//! `resync` whenever that may have cost them messages: a node connection lost,
//! a channel subscribed again, a shard that unsubscribed us when its slot moved.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ProtocolVersion, PushInfo, PushKind, RedisError, Value};
use tokio::sync::{mpsc, oneshot};

use super::connection::{RedisClient, CONNECT_TIMEOUT, MIN_BACKOFF, RESPONSE_TIMEOUT};
use super::subscriber::{wait_out, Subscriber, SubscriberCommand, SWEEP_EVERY};
use super::CONTROL;
use crate::fanout::{Delivery, FanoutError};

/// The scheme that names a cluster even with one seed node.
const CLUSTER_SCHEME: &str = "redis+cluster://";
/// Pushes (messages and subscription notices) waiting for the subscriber task;
/// past this, messages are dropped and every viewer is told to resync.
const PUSH_QUEUE: usize = 8192;
/// A command to a cluster gives up after this, retries and redirections
/// included, so that a shard failing over stalls a turn at most this long.
const OVERALL_TIMEOUT: Duration = Duration::from_secs(4);

/// The client `REDIS_URL` names: a cluster for `redis+cluster://host:port,...`
/// or for a comma-separated list of nodes, else one server.
pub(super) fn client(url: &str) -> Result<RedisClient, FanoutError> {
    let invalid = |e: RedisError| FanoutError::Config(format!("REDIS_URL: {e}"));
    let nodes = match url.strip_prefix(CLUSTER_SCHEME) {
        Some(rest) => nodes(rest, "redis://"),
        None if url.contains(',') => nodes(url, "redis://"),
        None => return redis::Client::open(url).map(RedisClient::Single).map_err(invalid),
    };
    if nodes.is_empty() {
        return Err(FanoutError::Config("REDIS_URL: a cluster needs at least one node".into()));
    }
    let commands = builder(&nodes).build().map_err(invalid)?;
    // Built once here, so that a bad node address is refused at start.
    Ok(RedisClient::Cluster { commands: Box::new(commands), nodes })
}

/// The seed nodes of a list: each gets the scheme if it has none, and the
/// first node's credentials if it has none of its own.
fn nodes(list: &str, scheme: &str) -> Vec<String> {
    let mut nodes = Vec::new();
    let mut credentials: Option<String> = None;
    for node in list.split(',').map(str::trim).filter(|node| !node.is_empty()) {
        let (node_scheme, rest) = match node.split_once("://") {
            Some((node_scheme, rest)) => (format!("{node_scheme}://"), rest.to_string()),
            None => (scheme.to_string(), node.to_string()),
        };
        let rest = match rest.rsplit_once('@') {
            Some((user, _)) => {
                credentials.get_or_insert_with(|| user.to_string());
                rest
            }
            None => match &credentials {
                Some(user) => format!("{user}@{rest}"),
                None => rest,
            },
        };
        nodes.push(format!("{node_scheme}{rest}"));
    }
    nodes
}

fn builder(nodes: &[String]) -> ClusterClientBuilder {
    ClusterClient::builder(nodes.to_vec())
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .overall_response_timeout(Some(OVERALL_TIMEOUT))
}

/// The first argument of a push (its channel) as text.
fn channel_of(push: &PushInfo) -> Option<String> {
    match push.data.first()? {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

/// Its second argument (a message's payload) as text.
fn payload_of(push: &PushInfo) -> Option<String> {
    match push.data.get(1)? {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        _ => None,
    }
}

impl Subscriber {
    /// The subscriber task for a cluster: one cluster connection with RESP3
    /// pushes, subscribed to the control channel and to the topic channels
    /// local viewers watch, sharded.
    pub(super) async fn run_cluster(
        self,
        nodes: Vec<String>,
        mut commands: mpsc::Receiver<SubscriberCommand>,
        mut emptied: mpsc::Receiver<String>,
    ) {
        let hub = &self.hub;
        let status = &self.status;
        let (push_tx, mut pushes) = mpsc::channel::<PushInfo>(PUSH_QUEUE);
        let overflowed = Arc::new(AtomicBool::new(false));
        let sender = {
            let overflowed = overflowed.clone();
            move |push: PushInfo| {
                if push_tx.try_send(push).is_err() {
                    overflowed.store(true, Ordering::SeqCst);
                }
                Ok::<(), ()>(())
            }
        };
        let client = match builder(&nodes).use_protocol(ProtocolVersion::RESP3).push_sender(sender).build() {
            Ok(client) => client,
            Err(error) => {
                status.down(&error);
                return;
            }
        };
        let mut backoff = MIN_BACKOFF;
        loop {
            let connected = match tokio::time::timeout(CONNECT_TIMEOUT * 2, client.get_async_connection()).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err("timed out connecting to Redis Cluster".to_string()),
            };
            let mut conn = match connected {
                Ok(conn) => conn,
                Err(error) => {
                    status.down(&error);
                    backoff = wait_out(backoff, &mut commands, &mut emptied).await;
                    continue;
                }
            };
            let mut subscribed: HashSet<String> = hub.channels().into_iter().collect();
            let wanted: Vec<String> = subscribed.iter().cloned().collect();
            let mut subscribing = conn.subscribe(CONTROL).await;
            if subscribing.is_ok() {
                subscribing = ssubscribe_each(&conn, &wanted).await;
            }
            if let Err(error) = subscribing {
                status.down(&error);
                tokio::time::sleep(backoff).await;
                continue;
            }
            backoff = MIN_BACKOFF;
            // The cluster connection reconnects by itself from here on, so
            // this is the first connection and the loop below never ends.
            self.came_back(false);
            // Channels whose subscription a shard confirmed once: a second
            // confirmation is a resubscription, after which messages may be missing.
            let mut confirmed: HashSet<String> = HashSet::new();
            let mut down = false;
            let mut sweep = tokio::time::interval(SWEEP_EVERY);
            sweep.tick().await;
            let mut ping = tokio::time::interval(self.ping_every);
            ping.tick().await;
            loop {
                tokio::select! {
                    Some(push) = pushes.recv() => {
                        if overflowed.swap(false, Ordering::SeqCst) {
                            // Control messages may have been dropped too: session ends among them.
                            status.notice_losses.fetch_add(1, Ordering::SeqCst);
                            hub.resync_all();
                        }
                        match push.kind {
                            PushKind::Message | PushKind::SMessage => {
                                if let (Some(channel), Some(payload)) = (channel_of(&push), payload_of(&push)) {
                                    self.received(&channel, &payload);
                                }
                            }
                            PushKind::Disconnection => {
                                // A node connection broke: what it carried is lost to
                                // our viewers until the crate reconnects and resubscribes.
                                if !down {
                                    status.down("a Redis Cluster node connection was lost");
                                    down = true;
                                }
                                hub.resync_all();
                            }
                            PushKind::SSubscribe => {
                                if let Some(channel) = channel_of(&push) {
                                    if !confirmed.insert(channel.clone()) {
                                        hub.deliver(&channel, Delivery::Resync);
                                    }
                                }
                            }
                            PushKind::SUnsubscribe => {
                                let Some(channel) = channel_of(&push) else { continue };
                                confirmed.remove(&channel);
                                // Not asked for: the channel's slot moved to another shard.
                                if subscribed.contains(&channel) {
                                    hub.deliver(&channel, Delivery::Resync);
                                    if let Err(error) = conn.ssubscribe(&channel).await {
                                        tracing::warn!(%error, "could not follow a moved fan-out channel");
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                    Some(command) = commands.recv() => {
                        let mut acks = Vec::new();
                        let mut fresh = Vec::new();
                        let mut next = Some(command);
                        while let Some(SubscriberCommand::Subscribe(channel, ack)) = next {
                            if subscribed.insert(channel.clone()) {
                                fresh.push(channel);
                            }
                            acks.push(ack);
                            next = commands.try_recv().ok();
                        }
                        if !fresh.is_empty() {
                            if let Err(error) = ssubscribe_each(&conn, &fresh).await {
                                // The crate subscribes again when the shard returns;
                                // until then these viewers must not trust their stream.
                                tracing::warn!(%error, "sharded subscription failed");
                                for channel in &fresh {
                                    hub.deliver(channel, Delivery::Resync);
                                }
                            }
                        }
                        acknowledge(acks);
                    }
                    Some(channel) = emptied.recv() => {
                        if !hub.has_viewers(&channel) && subscribed.remove(&channel) {
                            let _ = conn.sunsubscribe(&channel).await;
                        }
                    }
                    _ = ping.tick(), if !down => {
                        if !ping_any(&mut conn).await {
                            down = true;
                            status.down("Redis Cluster did not answer a ping");
                            hub.resync_all();
                        }
                    }
                    _ = tokio::time::sleep(backoff), if down => {
                        // Subscribing again sends each channel to its slot's
                        // node: one that died makes the crate learn the new
                        // slot map, where a replica has taken over. Until every
                        // subscription stands, the fan-out stays down.
                        let control = conn.subscribe(CONTROL).await;
                        let wanted: Vec<String> = subscribed.iter().cloned().collect();
                        if control.is_ok() && ssubscribe_each(&conn, &wanted).await.is_ok() {
                            down = false;
                            self.came_back(true);
                        }
                    }
                    _ = sweep.tick() => {
                        let idle: Vec<String> = subscribed.iter().filter(|c| !hub.has_viewers(c)).cloned().collect();
                        for channel in &idle {
                            subscribed.remove(channel);
                        }
                        if !idle.is_empty() {
                            let _ = conn.sunsubscribe(&idle).await;
                        }
                    }
                }
            }
        }
    }
}

/// Subscribes to each channel on its own shard (one `SSUBSCRIBE` may only
/// name channels of one slot), all at once.
async fn ssubscribe_each(conn: &ClusterConnection, channels: &[String]) -> Result<(), RedisError> {
    let subscriptions = channels.iter().map(|channel| {
        let mut conn = conn.clone();
        async move { conn.ssubscribe(channel).await }
    });
    futures_util::future::join_all(subscriptions).await.into_iter().collect()
}

fn acknowledge(acks: Vec<oneshot::Sender<()>>) {
    for ack in acks {
        let _ = ack.send(());
    }
}

/// Whether some node of the cluster answers a ping in time.
async fn ping_any(conn: &mut ClusterConnection) -> bool {
    let ping = conn.route_command(redis::cmd("PING"), RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random));
    matches!(tokio::time::timeout(RESPONSE_TIMEOUT, ping).await, Ok(Ok(_)))
}

#[cfg(test)]
mod tests {
    use super::nodes;

    #[test]
    fn node_lists_get_schemes_and_the_first_nodes_credentials() {
        assert_eq!(nodes("a:1, b:2", "redis://"), ["redis://a:1", "redis://b:2"]);
        assert_eq!(nodes("redis://a:1,redis://b:2", "redis://"), ["redis://a:1", "redis://b:2"]);
        assert_eq!(nodes(":pw@a:1,b:2", "redis://"), ["redis://:pw@a:1", "redis://:pw@b:2"]);
        assert!(nodes(" , ", "redis://").is_empty());
    }
}
