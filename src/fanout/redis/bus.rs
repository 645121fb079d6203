//! The Redis backend's message bus: publications numbered and kept by one Lua
//! script each, sent in order by one publisher task, and catch-ups read from
//! the topic's keys.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::{ErrorKind, Script, ScriptInvocation, ServerErrorKind};
use tokio::sync::{mpsc, oneshot};

use super::connection::{AnyConnection, CommandConnection, ConnectionStatus};
use super::subscriber::SubscriberCommand;
use super::{RedisFanout, CONTROL, RESYNC_NOTICE};
use crate::fanout::bus::unsequenced;
use crate::fanout::{
    now_us, sequence_base, Bus, CatchUp, FanoutError, FanoutSettings, Outgoing, SequencedMessage, Snapshot,
    SnapshotChange, Subscription, Topic,
};
use crate::telemetry::metrics::METRICS;

/// Publications waiting for the publisher; a turn waits when it is full.
pub(super) const PUBLISH_QUEUE: usize = 4096;
/// Publications sent to Redis in one pipeline at most.
const PUBLISH_BATCH: usize = 256;
/// How many times the publisher yields to gather more publications into a batch.
const GATHER_YIELDS: usize = 2;
/// How often a publisher that dropped publications tries Redis again, to send
/// the `resync` notices for them even when nothing else is published.
const NOTICE_RETRY: Duration = Duration::from_millis(100);
/// Above this many channels with dropped publications, one notice tells every
/// viewer to resync.
const MAX_LOST_CHANNELS: usize = 1024;

/// A topic's publications kept at least this long after its last one, as a
/// fraction of the history's time to live: the script refreshes the expiry
/// only when the last refresh is older than the rest, which spares the
/// `PEXPIRE` of nearly every publication.
/// (The script spells it out: `* 8 >= ttl`.)
#[cfg(test)]
const EXPIRY_SLACK: u64 = 8;
/// The history is trimmed when a publication's numbers cross a multiple of
/// this, so that only one publication in so many pays for an `HDEL`; a topic
/// holds up to `2 * TRIM_EVERY` and a batch's messages beyond `history`, which
/// catch-ups ignore. (The script spells it out: `every = 32`.)
#[cfg(test)]
const TRIM_EVERY: u64 = 32;

/// The publish script, with the command that publishes (`PUBLISH`, or
/// `SPUBLISH` on a cluster, where the channel shares the key's hash tag).
///
/// One call publishes a batch of consecutive messages of one topic, kept in
/// one hash, `<channel>:log`: field `s` the newest number, `p` the thread's
/// in-progress snapshot (`<seq> <items>`, empty when none), `x` when the
/// expiry was last set (ms), and one field per kept message, its number, with
/// the unsequenced message. KEYS: the hash. ARGV: channel, sequence base,
/// history length, ttl ms, now ms, snapshot op (`k`, `s`, `c`), the position
/// in the batch (from 1) of the message that carries it, snapshot items, the
/// publishing span's `traceparent` (empty without traces), then the unsequenced
/// messages. Publishes `B <first seq>` and ` <length>:<message>` for each, led by
/// `C <traceparent>` when there is one (see `SequencedMessage::decode_publication`);
/// returns the newest number.
/// Redis runs `HMGET`, `HSET`, the publish, and now and then `PEXPIRE` and `HDEL`.
macro_rules! publish_script {
    ($publish:literal) => {
        concat!(
            r"
local key = KEYS[1]
local state = redis.call('HMGET', key, 's', 'x')
local count = #ARGV - 9
local first = tonumber(ARGV[2])
if state[1] then first = tonumber(state[1]) + 1 end
local head = first + count - 1
local fields = {'s', string.format('%d', head)}
local payload = {'B', string.format('%d', first)}
if ARGV[9] ~= '' then payload = {'C', ARGV[9], 'B', string.format('%d', first)} end
for i = 1, count do
  local message = ARGV[9 + i]
  fields[#fields + 1] = string.format('%d', first + i - 1)
  fields[#fields + 1] = message
  payload[#payload + 1] = string.format('%d', #message) .. ':' .. message
end
if ARGV[6] == 's' then
  fields[#fields + 1] = 'p'
  fields[#fields + 1] = string.format('%d', first + tonumber(ARGV[7]) - 1) .. ' ' .. ARGV[8]
elseif ARGV[6] == 'c' then
  fields[#fields + 1] = 'p'
  fields[#fields + 1] = ''
end
local ttl = tonumber(ARGV[4])
local now = tonumber(ARGV[5])
local refresh = not state[2] or math.abs(now - tonumber(state[2])) * 8 >= ttl
if refresh then
  fields[#fields + 1] = 'x'
  fields[#fields + 1] = ARGV[5]
end
redis.call('HSET', key, unpack(fields))
if refresh then redis.call('PEXPIRE', key, ARGV[4]) end
local every = 32
if math.floor(head / every) ~= math.floor((first - 1) / every) then
  local newest = head - tonumber(ARGV[3])
  local stale = {}
  for seq = math.max(newest - 2 * every - count, 0) + 1, newest do
    stale[#stale + 1] = string.format('%d', seq)
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
end
redis.call('",
            $publish,
            r"', ARGV[1], table.concat(payload, ' '))
return head
"
        )
    };
}

/// The script on one Redis server.
static PUBLISH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(publish_script!("PUBLISH")));
/// The script on a Redis Cluster: sharded pub/sub.
static SPUBLISH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(publish_script!("SPUBLISH")));

/// Consecutive publications of one topic: what `publish_all` queues, and what
/// the publisher sends as one script call (the queued ones of a topic, merged).
pub(super) struct TopicBatch {
    channel: String,
    messages: Vec<String>,
    /// The last change to the snapshot, and the position (from 1) of the message that made it.
    snapshot: (SnapshotChange, usize),
    /// The `traceparent` of the first publishing span, sent with the batch so that deliveries on
    /// other replicas join its trace.
    context: Option<String>,
    /// The publishing spans, ended once Redis has taken the batch (empty without traces).
    spans: Vec<tracing::Span>,
}

impl TopicBatch {
    fn new(channel: String) -> TopicBatch {
        TopicBatch {
            channel,
            messages: Vec::new(),
            snapshot: (SnapshotChange::Keep, 0),
            context: None,
            spans: Vec::new(),
        }
    }

    fn push(&mut self, message: String, snapshot: SnapshotChange) {
        self.messages.push(message);
        if snapshot != SnapshotChange::Keep {
            self.snapshot = (snapshot, self.messages.len());
        }
    }

    /// Appends a later batch of the same topic.
    fn append(&mut self, later: TopicBatch) {
        let offset = self.messages.len();
        self.messages.extend(later.messages);
        self.context = self.context.take().or(later.context);
        self.spans.extend(later.spans);
        if later.snapshot.0 != SnapshotChange::Keep {
            self.snapshot = (later.snapshot.0, offset + later.snapshot.1);
        }
    }

    /// The script call that numbers, keeps and publishes the batch.
    fn invocation<'a>(&self, script: &'a Script, settings: &FanoutSettings) -> ScriptInvocation<'a> {
        let (op, items) = match &self.snapshot.0 {
            SnapshotChange::Keep => ("k", ""),
            SnapshotChange::Set(items) => ("s", items.as_str()),
            SnapshotChange::Clear => ("c", ""),
        };
        let mut invocation = script.prepare_invoke();
        invocation
            .key(log_key(&self.channel))
            .arg(&self.channel)
            .arg(sequence_base())
            .arg(settings.history.max(1))
            .arg(settings.history_ttl.as_millis() as u64)
            .arg(now_us() / 1000)
            .arg(op)
            .arg(self.snapshot.1)
            .arg(items)
            .arg(self.context.as_deref().unwrap_or(""));
        for message in &self.messages {
            invocation.arg(message);
        }
        invocation
    }
}

/// Merges queued batches by topic, keeping each topic's order and the order
/// in which topics first appear.
fn by_topic(queued: impl IntoIterator<Item = TopicBatch>) -> Vec<TopicBatch> {
    let mut batches: Vec<TopicBatch> = Vec::new();
    for batch in queued {
        match batches.iter_mut().find(|merged| merged.channel == batch.channel) {
            Some(merged) => merged.append(batch),
            None => batches.push(batch),
        }
    }
    batches
}

/// A topic's one key: its sequence, its kept messages and its thread's snapshot.
fn log_key(channel: &str) -> String {
    format!("{channel}:log")
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
    mut queue: mpsc::Receiver<TopicBatch>,
    settings: FanoutSettings,
    sharded: bool,
) {
    let script: &Script = if sharded { &SPUBLISH_SCRIPT } else { &PUBLISH_SCRIPT };
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
        gather(&mut queue, &mut batch).await;
        let mut conn = match connection.get().await {
            Ok(conn) => conn,
            Err(error) => {
                if !batch.is_empty() {
                    let count: usize = batch.iter().map(|queued| queued.messages.len()).sum();
                    status.dropped_publications.fetch_add(count as u64, Ordering::Relaxed);
                    tracing::debug!(%error, dropped = count, "fan-out publications dropped");
                    dropped.add(batch.drain(..).map(|queued| queued.channel));
                }
                continue;
            }
        };
        // One pipeline on one server, led by the notices; on a cluster, the
        // notices first, then one pipeline per channel (a pipeline must stay
        // on one shard), sent together. Each topic's publications of the
        // batch go in one script call, in order.
        let mut notices = redis::pipe();
        for notice in dropped.notices() {
            notices.cmd("PUBLISH").arg(CONTROL).arg(notice).ignore();
        }
        let mut pipes: Vec<Sent> = Vec::new();
        let mut notices_sent = true;
        if !sharded {
            pipes.push(Sent { channels: Vec::new(), messages: 0, pipe: notices, spans: Vec::new() });
        } else if !notices.is_empty() {
            notices_sent = send(&connection, &status, &mut conn, &notices, 0, script).await;
        }
        for topic in by_topic(batch.drain(..)) {
            if sharded || pipes.is_empty() {
                pipes.push(Sent { channels: Vec::new(), messages: 0, pipe: redis::pipe(), spans: Vec::new() });
            }
            let Some(sent) = pipes.last_mut() else { continue };
            sent.pipe.invoke_script(&topic.invocation(script, &settings)).ignore();
            sent.messages += topic.messages.len();
            sent.channels.push(topic.channel);
            sent.spans.extend(topic.spans);
        }
        let sends = pipes.iter().map(|sent| {
            let (connection, status, mut conn) = (connection.clone(), status.clone(), conn.clone());
            async move {
                sent.pipe.is_empty() || send(&connection, &status, &mut conn, &sent.pipe, sent.messages, script).await
            }
        });
        let results = futures_util::future::join_all(sends).await;
        if !sharded {
            notices_sent = results.first().copied().unwrap_or(true);
        }
        if notices_sent {
            dropped.clear();
        }
        for (sent, delivered) in pipes.into_iter().zip(results) {
            if !delivered {
                for span in &sent.spans {
                    span.record("otel.status_code", "ERROR");
                }
                dropped.add(sent.channels);
            }
        }
    }
}

/// Lets the tasks that just published run on before a small batch is sent: a turn hands over the
/// events that are ready together in one `publish_all`, but other turns publish meanwhile, and what
/// arrives now joins the batch. Yielding costs no time when nothing else is runnable.
async fn gather(queue: &mut mpsc::Receiver<TopicBatch>, batch: &mut Vec<TopicBatch>) {
    for _ in 0..GATHER_YIELDS {
        if batch.len() >= PUBLISH_BATCH {
            return;
        }
        tokio::task::yield_now().await;
        while batch.len() < PUBLISH_BATCH {
            match queue.try_recv() {
                Ok(publication) => batch.push(publication),
                Err(_) => break,
            }
        }
    }
}

/// One pipeline of the publisher: the channels it publishes on and how many messages.
struct Sent {
    channels: Vec<String>,
    messages: usize,
    pipe: redis::Pipeline,
    /// The publishing spans of what the pipeline carries, ended when it has been sent.
    spans: Vec<tracing::Span>,
}

/// Sends one pipeline of publications (`count` messages) and says whether Redis took it.
/// Scripts run by their hash (`EVALSHA`); a server that does not know the script yet
/// (new, restarted, or a replica promoted by a failover) is given it, and the pipeline sent again.
async fn send(
    connection: &CommandConnection,
    status: &ConnectionStatus,
    conn: &mut AnyConnection,
    pipe: &redis::Pipeline,
    count: usize,
    script: &Script,
) -> bool {
    let mut result = pipe.query_async::<()>(conn).await;
    if matches!(&result, Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript)) {
        // NOSCRIPT refuses the call before it runs, so sending again publishes nothing twice.
        result = match script.load_async(conn).await {
            Ok(_) => pipe.query_async::<()>(conn).await,
            Err(error) => Err(error),
        };
    }
    match result {
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
    async fn publish_all(&self, topic: &Topic, messages: Vec<Outgoing>) {
        if messages.is_empty() {
            return;
        }
        let count = messages.len();
        METRICS.fanout_published.with_label_values(&[topic.kind()]).inc_by(count as u64);
        let mut batch = TopicBatch::new(topic.channel());
        // The producer span of the messaging conventions, from the turn's hand-over until Redis took the batch;
        // its context travels with the publication (below `info`: traces only).
        let span = tracing::debug_span!(
            "fanout.publish",
            otel.name = %format_args!("publish {}", topic.kind()),
            otel.kind = "producer",
            messaging.system = "redis",
            messaging.operation.type = "send",
            messaging.destination.name = %batch.channel,
            messaging.batch.message_count = count as i64,
            otel.status_code = tracing::field::Empty,
        );
        if !span.is_disabled() {
            batch.context = crate::telemetry::traces::traceparent_of(&span);
            batch.spans.push(span);
        }
        let sent_at = now_us();
        for Outgoing { kind, body, snapshot } in messages {
            batch.push(unsequenced(sent_at, kind, &body), snapshot);
        }
        // Waiting here when the queue is full slows the turn rather than lose order.
        if self.publications.send(batch).await.is_err() {
            self.status.dropped_publications.fetch_add(count as u64, Ordering::Relaxed);
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
        let key = log_key(&topic.channel());
        let mut conn = self.connection.get().await?;
        let (head, snap): (Option<u64>, Option<String>) = self
            .connection
            .checked(redis::cmd("HMGET").arg(&key).arg("s").arg("p").query_async(&mut conn).await)
            .await?;
        let head = head.unwrap_or(0);
        let snapshot = snap.and_then(|text| {
            let (seq, items) = text.split_once(' ')?;
            Some(Snapshot { seq: seq.parse().ok()?, items: items.to_string() })
        });
        let from = after.or(snapshot.as_ref().map(|s| s.seq));
        let mut history = Vec::new();
        if let Some(from) = from.filter(|from| *from < head) {
            // Only the messages after `from`, and only the newest `history` of them: the script
            // deletes older ones only now and then, but a viewer sees exactly `history` kept.
            // Further back, the first one missing makes the viewer resync.
            let kept = self.settings.history.max(1) as u64;
            let seqs: Vec<u64> = (from.max(head.saturating_sub(kept)) + 1..=head).collect();
            let texts: Vec<Option<String>> =
                self.connection.checked(redis::cmd("HMGET").arg(&key).arg(&seqs).query_async(&mut conn).await).await?;
            let found = seqs.into_iter().zip(texts).skip_while(|(_, text)| text.is_none());
            history = found.map_while(|(seq, text)| SequencedMessage::numbered(seq, &text?)).collect();
        }
        Ok(CatchUp { head, snapshot, history })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(channel: &str, n: u32, snapshot: SnapshotChange) -> TopicBatch {
        let mut batch = TopicBatch::new(channel.into());
        batch.push(format!("{n} e {{}}"), snapshot);
        batch
    }

    #[test]
    fn a_batch_is_one_script_call_per_topic_in_order() {
        let set = |items: &str| SnapshotChange::Set(items.into());
        let batches = by_topic([
            publication("ck:{t:a}", 1, set("[1]")),
            publication("ck:{u:ann}", 2, SnapshotChange::Keep),
            publication("ck:{t:a}", 3, set("[3]")),
            publication("ck:{t:a}", 4, SnapshotChange::Keep),
            publication("ck:{t:b}", 5, SnapshotChange::Clear),
        ]);
        let summary: Vec<(&str, Vec<&str>, &(SnapshotChange, usize))> = batches
            .iter()
            .map(|b| (b.channel.as_str(), b.messages.iter().map(String::as_str).collect(), &b.snapshot))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("ck:{t:a}", vec!["1 e {}", "3 e {}", "4 e {}"], &(set("[3]"), 2)),
                ("ck:{u:ann}", vec!["2 e {}"], &(SnapshotChange::Keep, 0)),
                ("ck:{t:b}", vec!["5 e {}"], &(SnapshotChange::Clear, 1)),
            ]
        );
    }

    #[test]
    fn batches_queued_apart_merge_with_their_snapshot_in_place() {
        let mut later = TopicBatch::new("ck:{t:a}".into());
        later.push("2 e {}".into(), SnapshotChange::Keep);
        later.push("3 e {}".into(), SnapshotChange::Clear);
        later.push("4 e {}".into(), SnapshotChange::Keep);
        let merged = by_topic([publication("ck:{t:a}", 1, SnapshotChange::Set("[1]".into())), later]);
        assert_eq!(merged.len(), 1, "one script call");
        assert_eq!(merged[0].messages, ["1 e {}", "2 e {}", "3 e {}", "4 e {}"]);
        assert_eq!(merged[0].snapshot, (SnapshotChange::Clear, 3), "the clear, at its place in the merged batch");
        let keep = |n| publication("ck:{t:a}", n, SnapshotChange::Keep);
        assert_eq!(by_topic([keep(8), keep(9)])[0].snapshot, (SnapshotChange::Keep, 0));
    }

    #[test]
    fn the_scripts_spell_the_constants_and_touch_one_key() {
        for script in [publish_script!("PUBLISH"), publish_script!("SPUBLISH")] {
            assert!(script.contains(&format!("* {EXPIRY_SLACK} >= ttl")));
            assert!(script.contains(&format!("local every = {TRIM_EVERY}\n")));
            // Every key the script names is KEYS[1], so that a cluster runs it on one shard.
            assert!(!script.contains("KEYS[2]"));
        }
        assert_eq!(log_key(&Topic::Thread("thr_1".into()).channel()), "ck:{t:thr_1}:log");
    }
}
