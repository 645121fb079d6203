//! In-process fan-out: the single-node default, with no Redis.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::telemetry::metrics::METRICS;
use dashmap::DashMap;
use tokio::sync::broadcast;

use super::coordination::{LocalCounters, LocalWindows};
use super::{
    now_us, sequence_base, Backend, Bus, CatchUp, Coordination, Delivery, FanoutError, FanoutSettings, Health, Hub,
    Lease, Outgoing, SequencedMessage, Snapshot, SnapshotChange, Subscription, Topic,
};

/// How often topics without viewers and recent messages are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

#[derive(Default)]
struct TopicState {
    seq: u64,
    history: VecDeque<Arc<SequencedMessage>>,
    snapshot: Option<Snapshot>,
    touched: Option<Instant>,
}

/// The in-process backend: both its [`Bus`] and its [`Coordination`].
pub struct LocalFanout {
    settings: FanoutSettings,
    hub: Arc<Hub>,
    topics: Arc<DashMap<String, Arc<Mutex<TopicState>>>>,
    cancels: broadcast::Sender<String>,
    counters: LocalCounters,
    windows: LocalWindows,
    session_ends: broadcast::Sender<String>,
}

impl LocalFanout {
    /// Must run inside a tokio runtime: it starts the sweeper that bounds memory.
    pub fn new(settings: FanoutSettings) -> Self {
        let hub = Hub::new(settings.viewer_buffer, None);
        let topics: Arc<DashMap<String, Arc<Mutex<TopicState>>>> = Arc::default();
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep(Arc::downgrade(&topics), hub.clone(), settings.history_ttl));
        }
        LocalFanout {
            settings,
            hub,
            topics,
            cancels: broadcast::channel(16).0,
            counters: LocalCounters::default(),
            windows: LocalWindows::default(),
            session_ends: broadcast::channel(256).0,
        }
    }

    fn topic(&self, channel: &str) -> Arc<Mutex<TopicState>> {
        // A topic that exists (every message but a thread's first) costs no key allocation.
        if let Some(state) = self.topics.get(channel) {
            return state.clone();
        }
        self.topics.entry(channel.to_string()).or_default().clone()
    }
}

/// Forgets topics whose history expired and that nobody views.
async fn sweep(topics: Weak<DashMap<String, Arc<Mutex<TopicState>>>>, hub: Arc<Hub>, ttl: Duration) {
    let mut tick = tokio::time::interval(SWEEP_EVERY.min(ttl));
    loop {
        tick.tick().await;
        let Some(topics) = topics.upgrade() else { return };
        topics.retain(|channel, state| {
            let touched = state.lock().unwrap_or_else(|p| p.into_inner()).touched;
            touched.is_some_and(|at| at.elapsed() < ttl) || hub.has_viewers(channel)
        });
    }
}

impl Backend for LocalFanout {
    fn name(&self) -> &'static str {
        "local"
    }

    fn health(&self) -> Health {
        Health::Local
    }
}

#[async_trait]
impl Bus for LocalFanout {
    async fn publish_all(&self, topic: &Topic, messages: Vec<Outgoing>) {
        if messages.is_empty() {
            return;
        }
        METRICS.fanout_published.with_label_values(&[topic.kind()]).inc_by(messages.len() as u64);
        let channel = topic.channel();
        // Published and delivered in one step here: one span for both (below `info`: traces only).
        let span = tracing::debug_span!(
            "fanout.publish",
            otel.name = %format_args!("publish {}", topic.kind()),
            messaging.system = "local",
            messaging.destination.name = %channel,
            messaging.batch.message_count = messages.len() as i64,
        );
        let _publishing = span.enter();
        let state = self.topic(&channel);
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        let sent_at = now_us();
        for Outgoing { kind, body, snapshot } in messages {
            state.seq = if state.seq == 0 { sequence_base() } else { state.seq + 1 };
            let message = Arc::new(SequencedMessage::new(state.seq, sent_at, kind, body));
            state.history.push_back(message.clone());
            while state.history.len() > self.settings.history {
                state.history.pop_front();
            }
            match snapshot {
                SnapshotChange::Keep => {}
                SnapshotChange::Set(items) => state.snapshot = Some(Snapshot { seq: message.seq, items }),
                SnapshotChange::Clear => state.snapshot = None,
            }
            // Delivered under the topic's lock, so viewers see the sequence in order.
            self.hub.deliver(&channel, Delivery::Message(message));
        }
        state.touched = Some(Instant::now());
    }

    async fn subscribe(&self, topic: &Topic) -> Subscription {
        self.hub.join(&topic.channel()).0
    }

    /// Every viewer of a topic is on this replica, so the hub knows whether
    /// there are any. A viewer that joins between two checks finds the last
    /// snapshot and the history since it, which a quarter of the history
    /// leaves room for.
    fn snapshot_every(&self, topic: &Topic) -> Option<u32> {
        if self.hub.has_viewers(&topic.channel()) {
            return None;
        }
        Some(u32::try_from(self.settings.history / 4).unwrap_or(u32::MAX).max(1))
    }

    async fn catch_up(&self, topic: &Topic, after: Option<u64>) -> Result<CatchUp, FanoutError> {
        let Some(state) = self.topics.get(&topic.channel()).map(|entry| entry.clone()) else {
            return Ok(CatchUp::default());
        };
        let state = state.lock().unwrap_or_else(|p| p.into_inner());
        let from = match (after, &state.snapshot) {
            (Some(after), _) => Some(after),
            (None, Some(snapshot)) => Some(snapshot.seq),
            (None, None) => None,
        };
        // Keep the message just before `from` too, so `CatchUp::since` can tell there is no gap.
        let history = match from {
            Some(from) => state.history.iter().filter(|m| m.seq >= from).map(|m| (**m).clone()).collect(),
            None => Vec::new(),
        };
        Ok(CatchUp { head: state.seq, snapshot: state.snapshot.clone(), history })
    }
}

#[async_trait]
impl Coordination for LocalFanout {
    async fn lease(&self, _thread_id: &str) -> Result<Lease, FanoutError> {
        // One process: the thread's actor already runs its messages one at a time.
        Ok(Lease::local())
    }

    fn lease_wanted(&self) -> broadcast::Receiver<String> {
        // No other replica: nobody ever waits. The sender goes at once, which ends the receiver.
        broadcast::channel(1).1
    }

    async fn still_held(&self, _lease: &Lease) -> bool {
        // In-process leases are never kept: every job takes its own.
        false
    }

    async fn request_cancel(&self, _thread_id: &str) -> bool {
        false
    }

    fn cancel_requests(&self) -> broadcast::Receiver<String> {
        self.cancels.subscribe()
    }

    async fn incr(&self, key: &str, ttl: Duration) -> u64 {
        self.counters.incr(key, ttl)
    }

    async fn admit_window(&self, key: &str, limit: u32, window: Duration, now_ms: i64) -> Result<(), Duration> {
        self.windows.admit(key, limit, window, now_ms)
    }

    async fn end_session(&self, session_id: &str) {
        let _ = self.session_ends.send(session_id.to_string());
    }

    fn session_ends(&self) -> broadcast::Receiver<String> {
        self.session_ends.subscribe()
    }

    /// In one process no notice is ever missed.
    fn session_ends_epoch(&self) -> Option<u64> {
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::MessageKind;

    #[tokio::test]
    async fn snapshots_follow_the_items_only_while_someone_views_the_topic() {
        let settings = FanoutSettings { history: 40, ..FanoutSettings::default() };
        let fanout = LocalFanout::new(settings);
        let topic = Topic::Thread("thr_1".into());
        assert_eq!(fanout.snapshot_every(&topic), Some(10), "nobody views it: a quarter of the history");
        let viewer = fanout.subscribe(&topic).await;
        assert_eq!(fanout.snapshot_every(&topic), None, "a viewer is here: every item change");
        drop(viewer);
        assert_eq!(fanout.snapshot_every(&topic), Some(10), "the viewer left");
        let tiny = LocalFanout::new(FanoutSettings { history: 2, ..FanoutSettings::default() });
        assert_eq!(tiny.snapshot_every(&topic), Some(1), "never less than every message");
    }

    #[tokio::test]
    async fn a_stale_snapshot_and_the_history_since_it_come_to_the_current_items() {
        let fanout = LocalFanout::new(FanoutSettings { history: 8, ..FanoutSettings::default() });
        let topic = Topic::Thread("thr_1".into());
        fanout.publish(&topic, MessageKind::Event, "{\"n\":1}".into(), SnapshotChange::Set("[1]".into())).await;
        for n in 2..=4 {
            fanout.publish(&topic, MessageKind::Event, format!("{{\"n\":{n}}}"), SnapshotChange::Keep).await;
        }
        let catch_up = fanout.catch_up(&topic, None).await.expect("local catch-up");
        let snapshot = catch_up.snapshot.clone().expect("the snapshot of message 1");
        let since = catch_up.since(snapshot.seq).expect("the history reaches back to it");
        let bodies: Vec<&str> = since.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, ["{\"n\":2}", "{\"n\":3}", "{\"n\":4}"]);
    }
}
