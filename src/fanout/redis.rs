//! Fan-out between replicas over Redis pub/sub.
//!
//! Each message goes through one Lua script that numbers it in its topic's
//! sequence, appends it to the topic's bounded history, updates the thread's
//! in-progress snapshot and publishes it, atomically, so every replica sees
//! one order. Each replica holds one subscriber connection, subscribed to the
//! channels its local viewers watch, and one multiplexed connection for
//! everything else. Redis going away never fails a turn: publications are
//! dropped, viewers are told to `resync`, and both connections come back
//! with backoff. A replica that dropped publications tells every replica's
//! viewers of those channels to `resync` as soon as Redis takes a command
//! again, since their own connection may have come back before its did.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::telemetry::metrics::METRICS;
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};
use tokio::sync::{broadcast, mpsc, oneshot, Notify};

use super::{
    now_us, sequence_base, unsequenced, CatchUp, Delivery, Fanout, FanoutError, FanoutSettings, Health, Hub, Kind,
    Lease, LocalCounters, Snapshot, SnapshotChange, Stamped, Subscription, Topic,
};

/// The channel replicas send each other control messages on.
const CONTROL: &str = "ck:control";
/// Publications waiting for the publisher; a turn waits when it is full.
const PUBLISH_QUEUE: usize = 4096;
/// Publications sent to Redis in one pipeline at most.
const PUBLISH_BATCH: usize = 256;
/// Subscription changes waiting for the subscriber task.
const COMMAND_QUEUE: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The first pause between reconnection attempts.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// The longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(800);
/// How often a publisher that dropped publications tries Redis again, to send
/// the `resync` notices for them even when nothing else is published.
const NOTICE_RETRY: Duration = Duration::from_millis(100);
/// Above this many channels with dropped publications, one notice tells every
/// viewer to resync.
const MAX_LOST_CHANNELS: usize = 1024;
/// How often subscriptions without local viewers are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// KEYS: sequence, history, snapshot. ARGV: channel, unsequenced message,
/// sequence base, history length, ttl ms, snapshot op (`k`, `s`, `c`), snapshot.
const PUBLISH_SCRIPT: &str = r"
local seq = redis.call('INCR', KEYS[1])
if seq == 1 then
  redis.call('SET', KEYS[1], ARGV[3])
  seq = redis.call('GET', KEYS[1])
else
  seq = string.format('%d', seq)
end
local message = seq .. ' ' .. ARGV[2]
redis.call('RPUSH', KEYS[2], message)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
if ARGV[6] == 's' then
  redis.call('SET', KEYS[3], seq .. ' ' .. ARGV[7], 'PX', ARGV[5])
elseif ARGV[6] == 'c' then
  redis.call('DEL', KEYS[3])
end
redis.call('PUBLISH', ARGV[1], message)
return 1
";

/// KEYS: lease, fence. ARGV: holder, ttl ms. Returns the fencing token, or 0
/// when another holder has the lease.
const ACQUIRE_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. string.format('%d', token), 'PX', ARGV[2])
return token
";

/// KEYS: lease, fence. ARGV: value, ttl ms, token. 1 when still held and
/// extended. A lease Redis no longer has (it restarted empty, or the lease
/// expired unnoticed) that nobody took since is taken back, with the fence
/// raised to its token so that later grants still get higher ones; 0 only when
/// another holder has it.
const RENEW_SCRIPT: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[3]) then
  redis.call('SET', KEYS[2], ARGV[3])
end
return 1
";

/// KEYS: lease. ARGV: value. Deletes the lease only if it is still ours.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

struct Publication {
    channel: String,
    message: String,
    snapshot: SnapshotChange,
}

enum Command {
    Subscribe(String, oneshot::Sender<()>),
}

/// Connection state, shared by the tasks and read by health checks.
#[derive(Default)]
struct LinkState {
    subscribed: AtomicBool,
    last_error: Mutex<String>,
    reconnects: AtomicU64,
    dropped_publications: AtomicU64,
}

impl LinkState {
    fn down(&self, why: impl std::fmt::Display) {
        METRICS.redis_connected.set(0);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = why.to_string();
        self.subscribed.store(false, Ordering::SeqCst);
    }
}

/// The multiplexed command connection, reopened on demand after a failure.
struct Link {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// No reconnection attempt before this instant, so a dead Redis costs
    /// callers nothing between attempts.
    next_try: Mutex<Instant>,
    backoff: Mutex<Duration>,
}

impl Link {
    fn new(client: &redis::Client) -> Arc<Link> {
        Arc::new(Link {
            client: client.clone(),
            conn: tokio::sync::Mutex::new(None),
            next_try: Mutex::new(Instant::now()),
            backoff: Mutex::new(MIN_BACKOFF),
        })
    }

    async fn get(&self) -> Result<MultiplexedConnection, FanoutError> {
        let mut conn = self.conn.lock().await;
        if let Some(conn) = conn.as_ref() {
            return Ok(conn.clone());
        }
        {
            let next_try = self.next_try.lock().unwrap_or_else(|p| p.into_inner());
            if Instant::now() < *next_try {
                return Err(FanoutError::Unavailable("Redis is unreachable; retrying shortly".into()));
            }
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        match self.client.get_multiplexed_async_connection_with_config(&config).await {
            Ok(fresh) => {
                *self.backoff.lock().unwrap_or_else(|p| p.into_inner()) = MIN_BACKOFF;
                *conn = Some(fresh.clone());
                Ok(fresh)
            }
            Err(error) => {
                let mut backoff = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
                *self.next_try.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now() + *backoff;
                *backoff = (*backoff * 2).min(MAX_BACKOFF);
                Err(unavailable(&error))
            }
        }
    }

    /// Redis answers again (the subscriber connection just came back): the
    /// next call connects at once rather than wait out its backoff, and on a
    /// fresh connection, since the old one most likely died with the other.
    /// Without this, `/readyz` could report ready while publications are
    /// still dropped and leases not taken.
    fn retry_now(&self) {
        *self.next_try.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        *self.backoff.lock().unwrap_or_else(|p| p.into_inner()) = MIN_BACKOFF;
        // A caller holding the lock is connecting now, so there is nothing stale to forget.
        if let Ok(mut conn) = self.conn.try_lock() {
            *conn = None;
        }
    }

    /// Forgets the connection after a failure that may have broken it.
    async fn failed(&self, error: &RedisError) {
        if error.is_io_error() || error.is_connection_dropped() || error.is_timeout() || error.is_unrecoverable_error()
        {
            *self.conn.lock().await = None;
        }
    }
}

fn unavailable(error: &RedisError) -> FanoutError {
    FanoutError::Unavailable(format!("Redis: {error}"))
}

pub struct RedisFanout {
    settings: FanoutSettings,
    hub: Arc<Hub>,
    link: Arc<Link>,
    state: Arc<LinkState>,
    publications: mpsc::Sender<Publication>,
    commands: mpsc::Sender<Command>,
    cancels: broadcast::Sender<String>,
    session_ends: broadcast::Sender<String>,
    /// Counts while Redis is away.
    fallback_counters: LocalCounters,
    /// Names this replica as a lease holder.
    replica: String,
}

impl RedisFanout {
    /// Parses the URL and starts the publisher and subscriber tasks; it does
    /// not wait for Redis, which may come up later. Must run inside a tokio runtime.
    pub fn open(url: &str, settings: FanoutSettings) -> Result<Self, FanoutError> {
        let client = redis::Client::open(url).map_err(|e| FanoutError::Config(format!("REDIS_URL: {e}")))?;
        let (empty_tx, empty_rx) = mpsc::channel(COMMAND_QUEUE);
        let hub = Hub::new(settings.viewer_buffer, Some(empty_tx));
        // Publications get a connection of their own: leases, catch-ups and
        // counters must not queue behind pipelines of up to 256 scripts.
        let link = Link::new(&client);
        let publish_link = Link::new(&client);
        let state = Arc::new(LinkState::default());
        let (publications, publication_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let cancels = broadcast::channel(256).0;
        let session_ends = broadcast::channel(256).0;
        tokio::spawn(publisher(publish_link.clone(), state.clone(), publication_rx, settings.clone()));
        let shared = SubscriberShared {
            client,
            links: [link.clone(), publish_link],
            hub: hub.clone(),
            state: state.clone(),
            cancels: cancels.clone(),
            session_ends: session_ends.clone(),
            ping_every: settings.ping_every,
        };
        tokio::spawn(subscriber(shared, command_rx, empty_rx));
        let replica = format!("{:016x}", rand::random::<u64>());
        Ok(RedisFanout {
            settings,
            hub,
            link,
            state,
            publications,
            commands,
            cancels,
            session_ends,
            fallback_counters: LocalCounters::default(),
            replica,
        })
    }
}

fn keys(channel: &str) -> [String; 3] {
    [format!("{channel}:seq"), format!("{channel}:history"), format!("{channel}:snapshot")]
}

fn lease_keys(thread_id: &str) -> [String; 2] {
    let channel = Topic::Thread(thread_id.to_string()).channel();
    [format!("{channel}:lease"), format!("{channel}:fence")]
}

/// Channels whose publications were dropped since Redis last took some.
#[derive(Default)]
struct DroppedOn {
    channels: HashSet<String>,
    /// There were too many to name them, so every viewer must resync.
    all: bool,
}

impl DroppedOn {
    fn is_empty(&self) -> bool {
        !self.all && self.channels.is_empty()
    }

    fn add(&mut self, channels: impl IntoIterator<Item = String>) {
        if !self.all {
            self.channels.extend(channels);
            if self.channels.len() > MAX_LOST_CHANNELS {
                self.all = true;
                self.channels.clear();
            }
        }
    }

    /// The control messages that tell every replica's viewers of these channels to resync.
    fn notices(&self) -> Vec<String> {
        if self.all {
            vec![format!("{RESYNC_NOTICE}*")]
        } else {
            self.channels.iter().map(|channel| format!("{RESYNC_NOTICE}{channel}")).collect()
        }
    }

    fn clear(&mut self) {
        *self = DroppedOn::default();
    }
}

/// The prefix of a control message that says a client session ended.
const SESSION_ENDED: &str = "session-ended ";

/// The prefix of a control message that tells the viewers of a channel (or of
/// every channel, for `*`) to resync.
const RESYNC_NOTICE: &str = "resync ";

/// Sends queued publications in order, a pipeline at a time.
///
/// A publication Redis does not take is dropped, so that turns never wait on
/// Redis. Viewers on this replica learn of the gap when its subscriber
/// connection comes back; but viewers on a replica whose connection came back
/// first would not, so once Redis takes commands again this publisher sends a
/// `resync` notice for every channel it dropped something on, before anything else.
async fn publisher(
    link: Arc<Link>,
    state: Arc<LinkState>,
    mut queue: mpsc::Receiver<Publication>,
    settings: FanoutSettings,
) {
    let ttl_ms = settings.history_ttl.as_millis() as u64;
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    let mut dropped_on = DroppedOn::default();
    loop {
        if dropped_on.is_empty() {
            if queue.recv_many(&mut batch, PUBLISH_BATCH).await == 0 {
                return;
            }
        } else {
            // Notices are owed: try Redis again even if nothing else comes.
            tokio::select! {
                received = queue.recv_many(&mut batch, PUBLISH_BATCH) => if received == 0 { return },
                _ = tokio::time::sleep(NOTICE_RETRY) => {}
            }
        }
        let mut conn = match link.get().await {
            Ok(conn) => conn,
            Err(error) => {
                if !batch.is_empty() {
                    state.dropped_publications.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    tracing::debug!(%error, dropped = batch.len(), "fan-out publications dropped");
                    dropped_on.add(batch.drain(..).map(|publication| publication.channel));
                }
                continue;
            }
        };
        let mut pipe = redis::pipe();
        for notice in dropped_on.notices() {
            pipe.cmd("PUBLISH").arg(CONTROL).arg(notice).ignore();
        }
        let channels: Vec<String> = batch.iter().map(|publication| publication.channel.clone()).collect();
        for publication in batch.drain(..) {
            let [seq, history, snapshot] = keys(&publication.channel);
            let (op, items) = match publication.snapshot {
                SnapshotChange::Keep => ("k", String::new()),
                SnapshotChange::Set(items) => ("s", items),
                SnapshotChange::Clear => ("c", String::new()),
            };
            pipe.cmd("EVAL")
                .arg(PUBLISH_SCRIPT)
                .arg(3)
                .arg(seq)
                .arg(history)
                .arg(snapshot)
                .arg(&publication.channel)
                .arg(publication.message)
                .arg(sequence_base())
                .arg(settings.history.max(1))
                .arg(ttl_ms)
                .arg(op)
                .arg(items)
                .ignore();
        }
        match pipe.query_async::<()>(&mut conn).await {
            Ok(()) => dropped_on.clear(),
            Err(error) => {
                // Some of the pipeline may have gone through; resyncing too many viewers is harmless.
                tracing::warn!(%error, "fan-out publication failed");
                state.dropped_publications.fetch_add(channels.len() as u64, Ordering::Relaxed);
                dropped_on.add(channels);
                link.failed(&error).await;
            }
        }
    }
}

/// What the subscriber task shares with the rest of the backend.
struct SubscriberShared {
    client: redis::Client,
    /// The command and publication connections, told to reconnect at once when this one does.
    links: [Arc<Link>; 2],
    hub: Arc<Hub>,
    state: Arc<LinkState>,
    cancels: broadcast::Sender<String>,
    session_ends: broadcast::Sender<String>,
    ping_every: Duration,
}

/// Holds the subscriber connection: follows local viewers' channels, hands
/// messages to the hub, and reconnects with backoff.
async fn subscriber(
    shared: SubscriberShared,
    mut commands: mpsc::Receiver<Command>,
    mut emptied: mpsc::Receiver<String>,
) {
    let SubscriberShared { client, links, hub, state, cancels, session_ends, ping_every } = shared;
    let mut backoff = Duration::from_millis(50);
    let mut connected_before = false;
    loop {
        let connected = match tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub()).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err("timed out connecting to Redis".to_string()),
        };
        let pubsub = match connected {
            Ok(pubsub) => pubsub,
            Err(error) => {
                state.down(&error);
                // Viewers joining now are served when the connection returns:
                // their channel is in the hub, and they get a `resync` then.
                let pause = tokio::time::sleep(backoff);
                tokio::pin!(pause);
                loop {
                    tokio::select! {
                        _ = &mut pause => break,
                        Some(Command::Subscribe(_, ack)) = commands.recv() => { let _ = ack.send(()); }
                        Some(_) = emptied.recv() => {}
                    }
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut subscribed: HashSet<String> = hub.channels().into_iter().collect();
        let mut wanted: Vec<String> = subscribed.iter().cloned().collect();
        wanted.push(CONTROL.to_string());
        if let Err(error) = sink.subscribe(&wanted).await {
            state.down(&error);
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(50);
        state.subscribed.store(true, Ordering::SeqCst);
        METRICS.redis_connected.set(1);
        if connected_before {
            state.reconnects.fetch_add(1, Ordering::Relaxed);
            METRICS.redis_reconnects.inc();
            tracing::info!("Redis fan-out reconnected");
            for link in &links {
                link.retry_now();
            }
            // Whatever was published while the connection was down is lost to
            // these viewers: they must refetch.
            hub.resync_all();
        }
        connected_before = true;
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.tick().await;
        let mut ping = tokio::time::interval(ping_every);
        ping.tick().await;
        let error = loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else { break "subscriber connection closed".to_string() };
                    let channel = message.get_channel_name();
                    let Ok(payload) = std::str::from_utf8(message.get_payload_bytes()) else { continue };
                    if channel == CONTROL {
                        if let Some(thread_id) = payload.strip_prefix("cancel ") {
                            let _ = cancels.send(thread_id.to_string());
                        } else if let Some(session_id) = payload.strip_prefix(SESSION_ENDED) {
                            let _ = session_ends.send(session_id.to_string());
                        } else if let Some(target) = payload.strip_prefix(RESYNC_NOTICE) {
                            // Another replica (or this one) dropped publications on the channel.
                            if target == "*" {
                                hub.resync_all();
                            } else {
                                hub.deliver(target, Delivery::Resync);
                            }
                        }
                    } else if let Some(stamped) = Stamped::decode(payload) {
                        hub.deliver(channel, Delivery::Message(Arc::new(stamped)));
                    } else {
                        tracing::warn!(channel, "ignoring a malformed fan-out message");
                    }
                }
                Some(command) = commands.recv() => {
                    let mut acks = Vec::new();
                    let mut fresh = Vec::new();
                    let mut next = Some(command);
                    // Subscribes everything queued in one command.
                    while let Some(Command::Subscribe(channel, ack)) = next {
                        if subscribed.insert(channel.clone()) {
                            fresh.push(channel);
                        }
                        acks.push(ack);
                        next = commands.try_recv().ok();
                    }
                    if !fresh.is_empty() {
                        if let Err(error) = sink.subscribe(&fresh).await {
                            for ack in acks {
                                let _ = ack.send(());
                            }
                            break error.to_string();
                        }
                    }
                    for ack in acks {
                        let _ = ack.send(());
                    }
                }
                Some(channel) = emptied.recv() => {
                    if !hub.has_viewers(&channel) && subscribed.remove(&channel) {
                        if let Err(error) = sink.unsubscribe(&channel).await {
                            break error.to_string();
                        }
                    }
                }
                _ = ping.tick() => {
                    // A silent network partition never closes the stream; a ping notices it.
                    match tokio::time::timeout(RESPONSE_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => break error.to_string(),
                        Err(_) => break "Redis did not answer a ping".to_string(),
                    }
                }
                _ = sweep.tick() => {
                    let idle: Vec<String> = subscribed.iter().filter(|c| !hub.has_viewers(c)).cloned().collect();
                    for channel in &idle {
                        subscribed.remove(channel);
                    }
                    if !idle.is_empty() {
                        if let Err(error) = sink.unsubscribe(&idle).await {
                            break error.to_string();
                        }
                    }
                }
            }
        };
        tracing::warn!(%error, "Redis fan-out connection lost; reconnecting");
        state.down(&error);
        hub.resync_all();
    }
}

#[async_trait]
impl Fanout for RedisFanout {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, topic: &Topic, kind: Kind, body: String, snapshot: SnapshotChange) {
        METRICS.fanout_published.with_label_values(&[topic.kind()]).inc();
        let channel = topic.channel();
        let message = unsequenced(now_us(), kind, &body);
        // Waiting here when the queue is full slows the turn rather than lose order.
        if self.publications.send(Publication { channel, message, snapshot }).await.is_err() {
            self.state.dropped_publications.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn subscribe(&self, topic: &Topic) -> Subscription {
        let channel = topic.channel();
        let (subscription, _) = self.hub.join(&channel);
        let (ack, acked) = oneshot::channel();
        if self.commands.send(Command::Subscribe(channel, ack)).await.is_ok() {
            // Once acknowledged, Redis delivers everything published after.
            let _ = acked.await;
        }
        subscription
    }

    async fn catch_up(&self, topic: &Topic, after: Option<u64>) -> Result<CatchUp, FanoutError> {
        let [seq, history, snapshot] = keys(&topic.channel());
        let mut conn = self.link.get().await?;
        let (head, snap): (Option<u64>, Option<String>) =
            match redis::pipe().get(&seq).get(&snapshot).query_async(&mut conn).await {
                Ok(values) => values,
                Err(error) => {
                    self.link.failed(&error).await;
                    return Err(unavailable(&error));
                }
            };
        let snapshot = snap.and_then(|text| {
            let (seq, items) = text.split_once(' ')?;
            Some(Snapshot { seq: seq.parse().ok()?, items: items.to_string() })
        });
        let from = after.or(snapshot.as_ref().map(|s| s.seq));
        let mut messages = Vec::new();
        if from.is_some() {
            let entries: Vec<String> =
                match redis::cmd("LRANGE").arg(&history).arg(0).arg(-1).query_async(&mut conn).await {
                    Ok(entries) => entries,
                    Err(error) => {
                        self.link.failed(&error).await;
                        return Err(unavailable(&error));
                    }
                };
            messages = entries.iter().filter_map(|entry| Stamped::decode(entry)).collect();
        }
        Ok(CatchUp { head: head.unwrap_or(0), snapshot, history: messages })
    }

    async fn lease(&self, thread_id: &str) -> Result<Lease, FanoutError> {
        let [lease_key, fence_key] = lease_keys(thread_id);
        let ttl_ms = self.settings.lease_ttl.as_millis() as u64;
        let started = Instant::now();
        let deadline = started + self.settings.lease_wait;
        let mut pause = Duration::from_millis(2);
        let mut contended = false;
        let waited = || METRICS.lease_wait.with_label_values(&["redis"]).observe(started.elapsed().as_secs_f64());
        loop {
            let mut conn = match self.link.get().await {
                Ok(conn) => conn,
                Err(error) => {
                    // The store is the source of truth and the local actor
                    // still serializes: run rather than refuse while Redis is away.
                    tracing::warn!(%error, thread_id, "running without a cross-replica lease");
                    return Ok(Lease::local());
                }
            };
            let granted: Result<u64, RedisError> = redis::cmd("EVAL")
                .arg(ACQUIRE_SCRIPT)
                .arg(2)
                .arg(&lease_key)
                .arg(&fence_key)
                .arg(&self.replica)
                .arg(ttl_ms)
                .query_async(&mut conn)
                .await;
            match granted {
                Ok(0) if Instant::now() >= deadline => {
                    waited();
                    return Err(FanoutError::LeaseBusy);
                }
                Ok(0) => {
                    if !contended {
                        contended = true;
                        METRICS.lease_contended.inc();
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(25));
                }
                Ok(token) => {
                    waited();
                    let value = format!("{}:{token}", self.replica);
                    return Ok(self.held(lease_key, fence_key, value, token));
                }
                Err(error) => {
                    self.link.failed(&error).await;
                    tracing::warn!(%error, thread_id, "running without a cross-replica lease");
                    return Ok(Lease::local());
                }
            }
        }
    }

    async fn request_cancel(&self, thread_id: &str) -> bool {
        let Ok(mut conn) = self.link.get().await else { return false };
        let [lease_key, _] = lease_keys(thread_id);
        let result: Result<((), Option<String>), RedisError> = redis::pipe()
            .cmd("PUBLISH")
            .arg(CONTROL)
            .arg(format!("cancel {thread_id}"))
            .ignore()
            .get(&lease_key)
            .query_async(&mut conn)
            .await
            .map(|(holder,): (Option<String>,)| ((), holder));
        match result {
            Ok(((), holder)) => holder.is_some_and(|holder| !holder.starts_with(&format!("{}:", self.replica))),
            Err(error) => {
                self.link.failed(&error).await;
                false
            }
        }
    }

    fn cancel_requests(&self) -> broadcast::Receiver<String> {
        self.cancels.subscribe()
    }

    async fn incr(&self, key: &str, ttl: Duration) -> u64 {
        let counted = async {
            let mut conn = self.link.get().await?;
            let key = format!("ck:count:{key}");
            let result: Result<(u64,), RedisError> = redis::pipe()
                .cmd("INCR")
                .arg(&key)
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(ttl.as_millis() as u64)
                .arg("NX")
                .ignore()
                .query_async(&mut conn)
                .await;
            match result {
                Ok((count,)) => Ok(count),
                Err(error) => {
                    self.link.failed(&error).await;
                    Err(unavailable(&error))
                }
            }
        };
        match counted.await {
            Ok(count) => count,
            Err(error) => {
                tracing::warn!(%error, "counting on this replica alone while Redis is away");
                self.fallback_counters.incr(key, ttl)
            }
        }
    }

    async fn end_session(&self, session_id: &str) {
        // Local streams close at once, whatever Redis does.
        let _ = self.session_ends.send(session_id.to_string());
        let Ok(mut conn) = self.link.get().await else { return };
        let published: Result<(), RedisError> =
            redis::cmd("PUBLISH").arg(CONTROL).arg(format!("{SESSION_ENDED}{session_id}")).query_async(&mut conn).await;
        if let Err(error) = published {
            self.link.failed(&error).await;
        }
    }

    fn session_ends(&self) -> broadcast::Receiver<String> {
        self.session_ends.subscribe()
    }

    fn health(&self) -> Health {
        if self.state.subscribed.load(Ordering::SeqCst) {
            Health::Connected
        } else {
            let error = self.state.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
            Health::Disconnected(if error.is_empty() { "connecting to Redis".into() } else { error })
        }
    }
}

impl RedisFanout {
    /// A granted lease: renewed in the background until dropped, released on drop.
    fn held(&self, key: String, fence: String, value: String, token: u64) -> Lease {
        let lost = Arc::new(Notify::new());
        let lost_flag = Arc::new(AtomicBool::new(false));
        let ttl_ms = self.settings.lease_ttl.as_millis() as u64;
        let renew_every = self.settings.lease_ttl / 3;
        let renewer = tokio::spawn({
            let (link, key, value, lost, lost_flag) =
                (self.link.clone(), key.clone(), value.clone(), lost.clone(), lost_flag.clone());
            async move {
                loop {
                    tokio::time::sleep(renew_every).await;
                    let Ok(mut conn) = link.get().await else { continue };
                    let renewed: Result<u64, RedisError> = redis::cmd("EVAL")
                        .arg(RENEW_SCRIPT)
                        .arg(2)
                        .arg(&key)
                        .arg(&fence)
                        .arg(&value)
                        .arg(ttl_ms)
                        .arg(token)
                        .query_async(&mut conn)
                        .await;
                    match renewed {
                        Ok(1) => {}
                        Ok(_) => {
                            tracing::error!(lease = %key, "lost a thread lease while holding it; stopping the turn");
                            lost_flag.store(true, Ordering::SeqCst);
                            lost.notify_waiters();
                            return;
                        }
                        Err(error) => link.failed(&error).await,
                    }
                }
            }
        });
        let link = self.link.clone();
        let release = Box::new(move || {
            renewer.abort();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let Ok(mut conn) = link.get().await else { return };
                    let released: Result<u64, RedisError> = redis::cmd("EVAL")
                        .arg(RELEASE_SCRIPT)
                        .arg(1)
                        .arg(&key)
                        .arg(&value)
                        .query_async(&mut conn)
                        .await;
                    if let Err(error) = released {
                        link.failed(&error).await;
                    }
                });
            }
        });
        Lease { token, lost, lost_flag, release: Some(release) }
    }
}
