//! The Redis backend's message bus: publications numbered and kept by one Lua
//! script each, sent in order by one publisher task, and catch-ups read from
//! the topic's keys.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::connection::{AnyConnection, CommandConnection, ConnectionStatus};
use super::subscriber::SubscriberCommand;
use super::{RedisFanout, CONTROL, RESYNC_NOTICE};
use crate::fanout::bus::unsequenced;
use crate::fanout::{
    now_us, sequence_base, Bus, CatchUp, FanoutError, FanoutSettings, MessageKind, SequencedMessage, Snapshot,
    SnapshotChange, Subscription, Topic,
};
use crate::telemetry::metrics::METRICS;

/// Publications waiting for the publisher; a turn waits when it is full.
pub(super) const PUBLISH_QUEUE: usize = 4096;
/// Publications sent to Redis in one pipeline at most.
const PUBLISH_BATCH: usize = 256;
/// How often a publisher that dropped publications tries Redis again, to send
/// the `resync` notices for them even when nothing else is published.
const NOTICE_RETRY: Duration = Duration::from_millis(100);
/// Above this many channels with dropped publications, one notice tells every
/// viewer to resync.
const MAX_LOST_CHANNELS: usize = 1024;

/// The publish script, with the command that publishes (`PUBLISH`, or
/// `SPUBLISH` on a cluster, where the channel shares the keys' hash tag).
/// KEYS: sequence, history, snapshot. ARGV: channel, unsequenced message,
/// sequence base, history length, ttl ms, snapshot op (`k`, `s`, `c`), snapshot.
macro_rules! publish_script {
    ($publish:literal) => {
        concat!(
            r"
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
redis.call('",
            $publish,
            r"', ARGV[1], message)
return 1
"
        )
    };
}

/// The script on one Redis server; unchanged from earlier releases.
const PUBLISH_SCRIPT: &str = publish_script!("PUBLISH");
/// The script on a Redis Cluster: sharded pub/sub.
const SPUBLISH_SCRIPT: &str = publish_script!("SPUBLISH");

pub(super) struct Publication {
    channel: String,
    message: String,
    snapshot: SnapshotChange,
}

/// A topic's keys: its sequence, its history and its thread's snapshot.
fn keys(channel: &str) -> [String; 3] {
    [format!("{channel}:seq"), format!("{channel}:history"), format!("{channel}:snapshot")]
}

/// Channels whose publications were dropped since Redis last took some.
#[derive(Default)]
struct DroppedChannels {
    channels: HashSet<String>,
    /// There were too many to name them, so every viewer must resync.
    all: bool,
}

impl DroppedChannels {
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
        *self = DroppedChannels::default();
    }
}

/// Sends queued publications in order, a pipeline at a time.
///
/// A publication Redis does not take is dropped, so that turns never wait on
/// Redis. Viewers on this replica learn of the gap when its subscriber
/// connection comes back; but viewers on a replica whose connection came back
/// first would not, so once Redis takes commands again this publisher sends a
/// `resync` notice for every channel it dropped something on, before anything else.
pub(super) async fn publisher(
    connection: Arc<CommandConnection>,
    status: Arc<ConnectionStatus>,
    mut queue: mpsc::Receiver<Publication>,
    settings: FanoutSettings,
    sharded: bool,
) {
    let script = if sharded { SPUBLISH_SCRIPT } else { PUBLISH_SCRIPT };
    let ttl_ms = settings.history_ttl.as_millis() as u64;
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    let mut dropped = DroppedChannels::default();
    loop {
        if dropped.is_empty() {
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
        let mut conn = match connection.get().await {
            Ok(conn) => conn,
            Err(error) => {
                if !batch.is_empty() {
                    status.dropped_publications.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    tracing::debug!(%error, dropped = batch.len(), "fan-out publications dropped");
                    dropped.add(batch.drain(..).map(|publication| publication.channel));
                }
                continue;
            }
        };
        // One pipeline on one server, led by the notices; on a cluster, the
        // notices first, then one pipeline per channel (a pipeline must stay
        // on one shard), sent together, each in order.
        let mut notices = redis::pipe();
        for notice in dropped.notices() {
            notices.cmd("PUBLISH").arg(CONTROL).arg(notice).ignore();
        }
        let mut pipes: Vec<(Vec<String>, redis::Pipeline)> = Vec::new();
        let mut notices_sent = true;
        if !sharded {
            pipes.push((Vec::new(), notices));
        } else if !notices.is_empty() {
            notices_sent = send(&connection, &status, &mut conn, &notices, 0).await;
        }
        for publication in batch.drain(..) {
            let [seq, history, snapshot] = keys(&publication.channel);
            let (op, items) = match publication.snapshot {
                SnapshotChange::Keep => ("k", String::new()),
                SnapshotChange::Set(items) => ("s", items),
                SnapshotChange::Clear => ("c", String::new()),
            };
            let index = match pipes.iter().position(|(channels, _)| !sharded || channels[0] == publication.channel) {
                Some(index) => index,
                None => {
                    pipes.push((Vec::new(), redis::pipe()));
                    pipes.len() - 1
                }
            };
            let (channels, pipe) = &mut pipes[index];
            channels.push(publication.channel.clone());
            pipe.cmd("EVAL")
                .arg(script)
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
        let sends = pipes.iter().map(|(channels, pipe)| {
            let (connection, status, mut conn) = (connection.clone(), status.clone(), conn.clone());
            async move { pipe.is_empty() || send(&connection, &status, &mut conn, pipe, channels.len()).await }
        });
        let results = futures_util::future::join_all(sends).await;
        if !sharded {
            notices_sent = results.first().copied().unwrap_or(true);
        }
        if notices_sent {
            dropped.clear();
        }
        for ((channels, _), sent) in pipes.into_iter().zip(results) {
            if !sent {
                dropped.add(channels);
            }
        }
    }
}

/// Sends one pipeline of publications (`count` of them) and says whether Redis took it.
async fn send(
    connection: &CommandConnection,
    status: &ConnectionStatus,
    conn: &mut AnyConnection,
    pipe: &redis::Pipeline,
    count: usize,
) -> bool {
    match pipe.query_async::<()>(conn).await {
        Ok(()) => true,
        Err(error) => {
            // Some of the pipeline may have gone through; resyncing too many viewers is harmless.
            tracing::warn!(%error, "fan-out publication failed");
            status.dropped_publications.fetch_add(count as u64, Ordering::Relaxed);
            connection.failed(&error).await;
            false
        }
    }
}

#[async_trait]
impl Bus for RedisFanout {
    async fn publish(&self, topic: &Topic, kind: MessageKind, body: String, snapshot: SnapshotChange) {
        METRICS.fanout_published.with_label_values(&[topic.kind()]).inc();
        let channel = topic.channel();
        let message = unsequenced(now_us(), kind, &body);
        // Waiting here when the queue is full slows the turn rather than lose order.
        if self.publications.send(Publication { channel, message, snapshot }).await.is_err() {
            self.status.dropped_publications.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn subscribe(&self, topic: &Topic) -> Subscription {
        let channel = topic.channel();
        let (subscription, _) = self.hub.join(&channel);
        let (ack, acked) = oneshot::channel();
        if self.subscriber.send(SubscriberCommand::Subscribe(channel, ack)).await.is_ok() {
            // Once acknowledged, Redis delivers everything published after.
            let _ = acked.await;
        }
        subscription
    }

    async fn catch_up(&self, topic: &Topic, after: Option<u64>) -> Result<CatchUp, FanoutError> {
        let [seq, history, snapshot] = keys(&topic.channel());
        let mut conn = self.connection.get().await?;
        let (head, snap): (Option<u64>, Option<String>) =
            self.connection.checked(redis::pipe().get(&seq).get(&snapshot).query_async(&mut conn).await).await?;
        let snapshot = snap.and_then(|text| {
            let (seq, items) = text.split_once(' ')?;
            Some(Snapshot { seq: seq.parse().ok()?, items: items.to_string() })
        });
        let from = after.or(snapshot.as_ref().map(|s| s.seq));
        let mut messages = Vec::new();
        if from.is_some() {
            let entries: Vec<String> = self
                .connection
                .checked(redis::cmd("LRANGE").arg(&history).arg(0).arg(-1).query_async(&mut conn).await)
                .await?;
            messages = entries.iter().filter_map(|entry| SequencedMessage::decode(entry)).collect();
        }
        Ok(CatchUp { head: head.unwrap_or(0), snapshot, history: messages })
    }
}
