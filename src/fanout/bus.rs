//! The message bus: topics, the numbered messages published on them, and the
//! [`Bus`] trait that publishes, subscribes and catches a joining viewer up.

use std::sync::OnceLock;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Backend, FanoutError, Subscription};
use crate::ids::UserId;

/// What a viewer subscribes to: one thread, or one user's thread history.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    Thread(String),
    User(UserId),
}

impl Topic {
    /// `thread` or `user`, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Topic::Thread(_) => "thread",
            Topic::User(_) => "user",
        }
    }

    /// The channel name, also the prefix of the topic's Redis keys. The braces
    /// are a Redis Cluster hash tag, so a topic's keys share one slot.
    pub fn channel(&self) -> String {
        match self {
            Topic::Thread(id) => format!("ck:{{t:{id}}}"),
            Topic::User(user) => format!("ck:{{u:{}}}", user.0),
        }
    }
}

/// What kind of message a body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// A ChatKit `ThreadStreamEvent` as JSON.
    Event,
    /// `{"thread_id": ...}`: the thread was deleted.
    Deleted,
}

impl MessageKind {
    fn tag(self) -> char {
        match self {
            MessageKind::Event => 'e',
            MessageKind::Deleted => 'd',
        }
    }

    fn from_tag(tag: &str) -> Option<MessageKind> {
        match tag {
            "e" => Some(MessageKind::Event),
            "d" => Some(MessageKind::Deleted),
            _ => None,
        }
    }
}

/// A published message with its place in its topic's sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequencedMessage {
    pub seq: u64,
    /// When the publisher sent it, in microseconds since the Unix epoch, so
    /// that a receiver can measure fan-out latency.
    pub sent_at_us: u64,
    pub kind: MessageKind,
    pub body: String,
    /// The message as viewers receive it, made by the first viewer on this replica that sends it and shared by the
    /// others (the hub hands every viewer of a topic the same `Arc`); never carried between replicas.
    rendered: Rendered,
}

/// A cache of a message's rendering: not part of the message, so equal whether filled or not.
#[derive(Clone, Debug, Default)]
struct Rendered(OnceLock<Bytes>);

impl PartialEq for Rendered {
    fn eq(&self, _: &Rendered) -> bool {
        true
    }
}

impl Eq for Rendered {}

impl SequencedMessage {
    pub fn new(seq: u64, sent_at_us: u64, kind: MessageKind, body: String) -> SequencedMessage {
        SequencedMessage { seq, sent_at_us, kind, body, rendered: Rendered::default() }
    }

    /// The message as `render` makes it, made once: later calls, from any viewer, share the first one's bytes.
    /// The fan-out does not know the format (HTTP frames the message); it only keeps the result.
    pub fn rendered(&self, render: impl FnOnce(&SequencedMessage) -> Bytes) -> Bytes {
        self.rendered.0.get_or_init(|| render(self)).clone()
    }

    /// The text carried between replicas: `<seq> <sent_at_us> <kind> <body>`.
    #[cfg(test)]
    fn encode(&self) -> String {
        format!("{} {}", self.seq, unsequenced(self.sent_at_us, self.kind, &self.body))
    }

    pub(super) fn decode(text: &str) -> Option<SequencedMessage> {
        let (seq, rest) = text.split_once(' ')?;
        SequencedMessage::numbered(seq.parse().ok()?, rest)
    }

    /// A message from its number and its unsequenced text (`<sent_at_us> <kind> <body>`).
    pub(super) fn numbered(seq: u64, text: &str) -> Option<SequencedMessage> {
        let mut parts = text.splitn(3, ' ');
        let sent_at_us = parts.next()?.parse().ok()?;
        let kind = MessageKind::from_tag(parts.next()?)?;
        let body = parts.next()?.to_string();
        Some(SequencedMessage::new(seq, sent_at_us, kind, body))
    }

    /// The messages of one publication: a single message (`<seq> <sent_at_us> <kind> <body>`,
    /// what every release publishes for one message), or a batch of consecutive ones,
    /// `B <first seq>` followed by ` <length>:<unsequenced message>` for each, the length in
    /// bytes; either may be led by `C <traceparent> `, the trace context of the publishing
    /// turn (sent only while traces are exported). `None` when the text is none of these.
    pub(super) fn decode_publication(text: &str) -> Option<Publication<'_>> {
        let (context, text) = match text.strip_prefix(CONTEXT_TAG) {
            Some(rest) => {
                let (context, rest) = rest.split_once(' ')?;
                (Some(context), rest)
            }
            None => (None, text),
        };
        let Some(rest) = text.strip_prefix(BATCH_TAG) else {
            return SequencedMessage::decode(text).map(|message| Publication { context, messages: vec![message] });
        };
        let (first, mut rest) = rest.split_once(' ')?;
        let mut seq: u64 = first.parse().ok()?;
        let mut messages = Vec::new();
        while !rest.is_empty() {
            let (length, tail) = rest.split_once(':')?;
            let length: usize = length.parse().ok()?;
            let text = tail.get(..length)?;
            messages.push(SequencedMessage::numbered(seq, text)?);
            seq += 1;
            rest = tail[length..].strip_prefix(' ').unwrap_or(&tail[length..]);
        }
        (!messages.is_empty()).then_some(Publication { context, messages })
    }
}

/// One publication as a replica receives it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Publication<'a> {
    /// The publishing span's `traceparent`, so that the delivery joins its trace.
    pub context: Option<&'a str>,
    pub messages: Vec<SequencedMessage>,
}

/// What a publication that carries trace context starts with.
pub(super) const CONTEXT_TAG: &str = "C ";

/// What a batch publication starts with; no single message does, since those start with a number.
pub(super) const BATCH_TAG: &str = "B ";

/// A message before its topic numbered it.
pub(super) fn unsequenced(sent_at_us: u64, kind: MessageKind, body: &str) -> String {
    format!("{sent_at_us} {} {body}", kind.tag())
}

/// How a publication changes its thread's snapshot of in-progress items,
/// which a viewer joining mid-turn starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotChange {
    Keep,
    /// The JSON array of the turn's in-progress items, as of this message.
    Set(String),
    Clear,
}

/// The in-progress items of a thread's running turn, as of message `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub seq: u64,
    pub items: String,
}

/// What a joining viewer needs to start from.
#[derive(Clone, Debug, Default)]
pub struct CatchUp {
    /// The newest sequence number of the topic (0 when it has none yet).
    pub head: u64,
    pub snapshot: Option<Snapshot>,
    /// The bounded history, oldest first (empty when not asked for).
    pub history: Vec<SequencedMessage>,
}

impl CatchUp {
    /// The messages after `after`, or `None` when history no longer reaches
    /// back that far (the viewer must resync).
    pub fn since(&self, after: u64) -> Option<Vec<SequencedMessage>> {
        let head = self.history.last().map_or(self.head, |last| last.seq.max(self.head));
        if after == head {
            return Some(Vec::new());
        }
        if after > head {
            // An id from before a reset of the sequence, or from another stream.
            return None;
        }
        let first = self.history.first()?;
        if first.seq > after + 1 {
            return None;
        }
        Some(self.history.iter().filter(|message| message.seq > after).cloned().collect())
    }
}

/// One message for a topic, before the topic numbers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub kind: MessageKind,
    pub body: String,
    pub snapshot: SnapshotChange,
}

/// Carries numbered messages to viewers, on this replica and every other one.
#[async_trait]
pub trait Bus: Backend {
    /// Publishes consecutive messages to every viewer of `topic`, on every
    /// replica, numbered in order. Messages published together travel
    /// together (on Redis, one script call), which is why a turn hands over
    /// the events that are ready at once in one call. Never fails the
    /// caller: the store is the source of truth, and a message that cannot
    /// be carried is made up for by a `resync`.
    async fn publish_all(&self, topic: &Topic, messages: Vec<Outgoing>);

    /// Publishes one message: `publish_all` of one.
    async fn publish(&self, topic: &Topic, kind: MessageKind, body: String, snapshot: SnapshotChange) {
        self.publish_all(topic, vec![Outgoing { kind, body, snapshot }]).await
    }

    /// Joins `topic` on this replica; messages published after this returns
    /// reach the subscription.
    async fn subscribe(&self, topic: &Topic) -> Subscription;

    /// How often a running turn must refresh the topic's in-progress
    /// snapshot. `None` (the default, for a backend that cannot tell where
    /// the viewers are) means with every item change. `Some(n)` says nobody
    /// views the topic: a snapshot started when items are first in progress
    /// and refreshed every `n` messages is enough, because a viewer joining
    /// replays the history since the snapshot, which keeps more than `n`.
    fn snapshot_every(&self, _topic: &Topic) -> Option<u32> {
        None
    }

    /// Where a joining viewer starts: the topic's head and snapshot, and its
    /// history when `after` (the viewer's `Last-Event-ID`) is given or a
    /// snapshot exists; a fresh viewer with nothing to replay needs none.
    async fn catch_up(&self, topic: &Topic, after: Option<u64>) -> Result<CatchUp, FanoutError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64) -> SequencedMessage {
        SequencedMessage::new(seq, 7, MessageKind::Event, format!("{{\"n\":{seq}}}"))
    }

    #[test]
    fn messages_survive_the_trip_between_replicas() {
        let deleted = SequencedMessage::new(1_764_000_000_000_001, 9, MessageKind::Deleted, "{\"a\": \"b c\"}".into());
        for original in [message(3), deleted] {
            assert_eq!(SequencedMessage::decode(&original.encode()), Some(original));
        }
        assert_eq!(SequencedMessage::decode("12 x e {}"), None);
        assert_eq!(SequencedMessage::decode("12 5 z {}"), None);
    }

    #[test]
    fn a_rendering_is_made_once_and_shared() {
        let shared = std::sync::Arc::new(message(4));
        let first = shared.rendered(|m| Bytes::from(format!("<{}>", m.seq)));
        let again = shared.rendered(|_| panic!("rendered a second time"));
        assert_eq!((&first[..], &again[..]), (&b"<4>"[..], &b"<4>"[..]));
        assert_eq!(first.as_ptr(), again.as_ptr(), "the same bytes, not a copy");
        assert_eq!(*shared, message(4), "the cache is not part of the message");
    }

    #[test]
    fn a_batch_publication_carries_consecutive_messages() {
        // As the publish script writes it: lengths in bytes, bodies with spaces, colons and non-ASCII.
        let texts = ["7 e {\"a\": \"x y\"}", "8 d {\"é\":1}", "9 e 3:4 5"];
        let mut batch = format!("{BATCH_TAG}41");
        for text in texts {
            batch.push_str(&format!(" {}:{text}", text.len()));
        }
        let messages = SequencedMessage::decode_publication(&batch).expect("a batch").messages;
        let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![41, 42, 43]);
        assert_eq!(messages[0].body, "{\"a\": \"x y\"}");
        assert_eq!(
            (messages[1].kind, messages[1].sent_at_us, messages[1].body.as_str()),
            (MessageKind::Deleted, 8, "{\"é\":1}")
        );
        assert_eq!(messages[2].body, "3:4 5");
        // A single message, as every earlier release publishes it, still reads.
        let single = vec![SequencedMessage::new(5, 1, MessageKind::Event, "{}".into())];
        assert_eq!(
            SequencedMessage::decode_publication("5 1 e {}"),
            Some(Publication { context: None, messages: single.clone() })
        );
        // Led by the publisher's trace context, while traces are exported.
        let traced = format!("{CONTEXT_TAG}00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 {batch}");
        let publication = SequencedMessage::decode_publication(&traced).expect("a traced batch");
        assert_eq!(publication.context, Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        assert_eq!(publication.messages, messages);
        assert_eq!(
            SequencedMessage::decode_publication("C 00-ab-cd-01 5 1 e {}"),
            Some(Publication { context: Some("00-ab-cd-01"), messages: single })
        );
        for broken in ["B 41 99:7 e {}", "B x 3:1 e", "B 41", "B 41 3:1 q {}", "C 00-ab-cd-01", "C 00-ab B 41"] {
            assert_eq!(SequencedMessage::decode_publication(broken), None, "{broken}");
        }
    }

    #[test]
    fn catch_up_fills_gaps_it_can_and_reports_the_rest() {
        let catch_up = CatchUp { head: 10, snapshot: None, history: (6..=10).map(message).collect() };
        let seqs = |after| catch_up.since(after).map(|m| m.iter().map(|m| m.seq).collect::<Vec<_>>());
        assert_eq!(seqs(10), Some(vec![]), "nothing missed");
        assert_eq!(seqs(7), Some(vec![8, 9, 10]));
        assert_eq!(seqs(5), Some(vec![6, 7, 8, 9, 10]), "history reaches back just far enough");
        assert_eq!(seqs(4), None, "message 5 is gone: resync");
        assert_eq!(seqs(11), None, "an id from the future: resync");
        let empty = CatchUp { head: 10, snapshot: None, history: vec![] };
        assert_eq!(empty.since(10).map(|m| m.len()), Some(0));
        assert!(empty.since(9).is_none());
    }

    #[test]
    fn channels_keep_a_topic_in_one_cluster_slot() {
        assert_eq!(Topic::Thread("thr_1".into()).channel(), "ck:{t:thr_1}");
        assert_eq!(Topic::User(UserId("ann".into())).channel(), "ck:{u:ann}");
    }
}
