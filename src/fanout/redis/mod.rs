//! Fan-out between replicas over Redis pub/sub.
//!
//! Each message goes through one Lua script that numbers it in its topic's
//! sequence, keeps it in the topic's bounded history, updates the thread's
//! in-progress snapshot and publishes it, atomically, so every replica sees
//! one order; the messages of one topic queued together go through one call
//! of it, as one batch, and the topic's sequence, history and snapshot are one hash. Each replica holds one subscriber connection, subscribed to the
//! channels its local viewers watch, one multiplexed connection for
//! publications and one for everything else. Redis going away never fails a
//! turn: publications are dropped, viewers are told to `resync`, and the
//! connections come back with backoff. A replica that dropped publications
//! tells every replica's viewers of those channels to `resync` as soon as
//! Redis takes a command again, since their own connection may have come back
//! before its did.
//!
//! `bus.rs` publishes and catches viewers up, `subscriber.rs` holds the
//! subscriber connection, `coordination.rs` has the leases, cancel requests,
//! counters and session ends, and `connection.rs` the command connections.
//! On a Redis Cluster (`cluster.rs`) the same runs with every key of a thread
//! on one shard (hash tags), topics on sharded pub/sub and the control channel
//! on classic pub/sub.
//! The keys, scripts and channel names are the wire format between replicas:
//! replicas of different versions share them.

mod bus;
mod cluster;
mod connection;
mod coordination;
mod subscriber;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};

use self::bus::{publisher, TopicBatch, PUBLISH_QUEUE};
use self::connection::{CommandConnection, ConnectionStatus};
use self::subscriber::{Subscriber, SubscriberCommand};
use super::coordination::{LocalCounters, LocalWindows};
use super::{Backend, FanoutError, FanoutSettings, Health, Hub};

/// The channel replicas send each other control messages on.
const CONTROL: &str = "ck:control";
/// The prefix of a control message that asks to cancel a thread's running turn.
const CANCEL_REQUEST: &str = "cancel ";
/// The prefix of a control message that asks the replica keeping a thread's lease idle to let it go.
const LEASE_WANTED: &str = "lease-wanted ";
/// The prefix of a control message that says a client session ended.
const SESSION_ENDED: &str = "session-ended ";
/// The prefix of a control message that tells the viewers of a channel (or of
/// every channel, for `*`) to resync.
const RESYNC_NOTICE: &str = "resync ";
/// Subscription changes waiting for the subscriber task.
const COMMAND_QUEUE: usize = 4096;

/// The Redis backend, one per replica: both its [`Bus`](super::Bus) and its
/// [`Coordination`](super::Coordination).
pub struct RedisFanout {
    settings: FanoutSettings,
    hub: Arc<Hub>,
    /// For catch-ups and coordination; publications have their own.
    connection: Arc<CommandConnection>,
    status: Arc<ConnectionStatus>,
    publications: mpsc::Sender<TopicBatch>,
    subscriber: mpsc::Sender<SubscriberCommand>,
    cancels: broadcast::Sender<String>,
    lease_wanted: broadcast::Sender<String>,
    session_ends: broadcast::Sender<String>,
    /// Counts while Redis is away.
    fallback_counters: LocalCounters,
    /// The sliding windows counted on this replica while Redis is away.
    fallback_windows: LocalWindows,
    /// Names this replica as a lease holder.
    replica: String,
    /// Redis Cluster: topics go over sharded pub/sub, and each command and
    /// pipeline touches the keys of one hash tag only.
    sharded: bool,
}

impl RedisFanout {
    /// Parses the URL and starts the publisher and subscriber tasks; it does
    /// not wait for Redis, which may come up later. Must run inside a tokio runtime.
    pub fn open(url: &str, settings: FanoutSettings) -> Result<Self, FanoutError> {
        let client = cluster::client(url)?;
        let sharded = client.is_cluster();
        let (empty_tx, empty_rx) = mpsc::channel(COMMAND_QUEUE);
        let hub = Hub::new(settings.viewer_buffer, Some(empty_tx));
        // Publications get a connection of their own: leases, catch-ups and
        // counters must not queue behind pipelines of up to 256 scripts.
        let connection = CommandConnection::new(&client);
        let publish_connection = CommandConnection::new(&client);
        let status = Arc::new(ConnectionStatus::default());
        let (publications, publication_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (subscriber, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let cancels = broadcast::channel(256).0;
        let lease_wanted = broadcast::channel(256).0;
        let session_ends = broadcast::channel(256).0;
        tokio::spawn(publisher(publish_connection.clone(), status.clone(), publication_rx, settings.clone(), sharded));
        let task = Subscriber {
            client,
            connections: [connection.clone(), publish_connection],
            hub: hub.clone(),
            status: status.clone(),
            cancels: cancels.clone(),
            lease_wanted: lease_wanted.clone(),
            session_ends: session_ends.clone(),
            ping_every: settings.ping_every,
        };
        tokio::spawn(task.run(command_rx, empty_rx));
        let replica = format!("{:016x}", rand::random::<u64>());
        Ok(RedisFanout {
            settings,
            hub,
            connection,
            status,
            publications,
            subscriber,
            cancels,
            lease_wanted,
            session_ends,
            fallback_counters: LocalCounters::default(),
            fallback_windows: LocalWindows::default(),
            replica,
            sharded,
        })
    }
}

impl Backend for RedisFanout {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn health(&self) -> Health {
        if self.status.subscribed.load(Ordering::SeqCst) {
            Health::Connected
        } else {
            let error = self.status.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
            Health::Disconnected(if error.is_empty() { "connecting to Redis".into() } else { error })
        }
    }
}
