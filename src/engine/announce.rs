//! Announces thread changes to live viewers through the fan-out: the one place
//! that decides which change reaches which topic.

use std::sync::Arc;

use serde_json::json;

use super::TurnEvent;
use crate::fanout::{Bus, MessageKind, Outgoing, SnapshotChange, Topic};
use crate::ids::UserId;
use crate::protocol::{Thread, ThreadItem, ThreadStreamEvent};

#[derive(Clone)]
pub struct Announcer {
    bus: Arc<dyn Bus>,
}

impl Announcer {
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        Announcer { bus }
    }

    /// A title or status change: for the thread's viewers and its owner's history.
    pub async fn thread_updated(&self, user: &UserId, thread: &Thread) {
        let event = ThreadStreamEvent::ThreadUpdated { thread: thread.clone() };
        let body = TurnEvent::new(event).json;
        let thread_topic = Topic::Thread(thread.id.clone());
        self.bus.publish(&thread_topic, MessageKind::Event, body.clone(), SnapshotChange::Keep).await;
        self.bus.publish(&Topic::User(user.clone()), MessageKind::Event, body, SnapshotChange::Keep).await;
    }

    pub async fn thread_deleted(&self, user: &UserId, thread_id: &str) {
        let body = json!({ "thread_id": thread_id }).to_string();
        let thread_topic = Topic::Thread(thread_id.to_string());
        self.bus.publish(&thread_topic, MessageKind::Deleted, body.clone(), SnapshotChange::Clear).await;
        self.bus.publish(&Topic::User(user.clone()), MessageKind::Deleted, body, SnapshotChange::Keep).await;
    }

    /// An item a synchronous action replaced (a widget's new state): for the thread's viewers.
    pub async fn item_replaced(&self, thread_id: &str, item: &ThreadItem) {
        if item.is_hidden() {
            return;
        }
        let body = TurnEvent::new(ThreadStreamEvent::ItemReplaced { item: item.clone() }).json;
        let topic = Topic::Thread(thread_id.to_string());
        self.bus.publish(&topic, MessageKind::Event, body, SnapshotChange::Keep).await;
    }

    /// Items removed without events on the client's stream (a retry drops the items after the
    /// retried message): for the thread's viewers, in one publication.
    pub async fn items_removed(&self, thread_id: &str, item_ids: Vec<String>) {
        let messages: Vec<Outgoing> = item_ids
            .into_iter()
            .map(|item_id| Outgoing {
                kind: MessageKind::Event,
                body: TurnEvent::new(ThreadStreamEvent::ItemRemoved { item_id }).json,
                snapshot: SnapshotChange::Keep,
            })
            .collect();
        if !messages.is_empty() {
            self.bus.publish_all(&Topic::Thread(thread_id.to_string()), messages).await;
        }
    }

    /// `None` while a thread's in-progress snapshot must follow its items (it
    /// has viewers here, or the fan-out cannot tell); otherwise how many
    /// messages may pass between snapshots (see `Bus::snapshot_every`).
    pub fn unwatched_snapshot_every(&self, thread: &Topic) -> Option<u32> {
        self.bus.snapshot_every(thread)
    }

    /// A turn's events that are ready together, routed by type, as its client
    /// got them (serialized once), each with its change to the snapshot; all
    /// of a topic's go in one publication. Events that only concern the
    /// requesting client (stream options, progress, errors, notices, effects)
    /// stay private. `thread` is the turn's thread topic, which the turn
    /// builds once.
    pub async fn turn_events<'e>(
        &self,
        user: &UserId,
        thread: &Topic,
        events: impl IntoIterator<Item = (&'e TurnEvent, SnapshotChange)>,
    ) {
        let (mut to_thread, mut to_user) = (Vec::new(), Vec::new());
        let message =
            |event: &TurnEvent, snapshot| Outgoing { kind: MessageKind::Event, body: event.json.clone(), snapshot };
        for (event, snapshot) in events {
            match &event.event {
                ThreadStreamEvent::ThreadCreated { .. } => to_user.push(message(event, snapshot)),
                ThreadStreamEvent::ThreadUpdated { .. } => {
                    to_thread.push(message(event, SnapshotChange::Keep));
                    to_user.push(message(event, snapshot));
                }
                ThreadStreamEvent::ItemAdded { .. }
                | ThreadStreamEvent::ItemUpdated { .. }
                | ThreadStreamEvent::ItemDone { .. }
                | ThreadStreamEvent::ItemRemoved { .. }
                | ThreadStreamEvent::ItemReplaced { .. } => to_thread.push(message(event, snapshot)),
                _ => {}
            }
        }
        if !to_thread.is_empty() {
            self.bus.publish_all(thread, to_thread).await;
        }
        if !to_user.is_empty() {
            self.bus.publish_all(&Topic::User(user.clone()), to_user).await;
        }
    }
}
