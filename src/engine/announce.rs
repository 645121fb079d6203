//! Announces thread changes to live viewers through the fan-out: the one place
//! that decides which change reaches which topic.

use std::sync::Arc;

use serde_json::json;

use super::TurnEvent;
use crate::fanout::{Bus, MessageKind, SnapshotChange, Topic};
use crate::ids::UserId;
use crate::protocol::{Thread, ThreadStreamEvent};

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
        let body = encode(&event);
        let thread_topic = Topic::Thread(thread.id.clone());
        self.bus.publish(&thread_topic, MessageKind::Event, body.clone(), SnapshotChange::Keep).await;
        self.bus.publish(&Topic::User(user.clone()), MessageKind::Event, body, SnapshotChange::Keep).await;
    }

    pub async fn thread_created(&self, user: &UserId, thread: &Thread) {
        let event = ThreadStreamEvent::ThreadCreated { thread: thread.clone() };
        self.bus.publish(&Topic::User(user.clone()), MessageKind::Event, encode(&event), SnapshotChange::Keep).await;
    }

    pub async fn thread_deleted(&self, user: &UserId, thread_id: &str) {
        let body = json!({ "thread_id": thread_id }).to_string();
        let thread_topic = Topic::Thread(thread_id.to_string());
        self.bus.publish(&thread_topic, MessageKind::Deleted, body.clone(), SnapshotChange::Clear).await;
        self.bus.publish(&Topic::User(user.clone()), MessageKind::Deleted, body, SnapshotChange::Keep).await;
    }

    /// An item event of a turn, with what it does to the in-progress snapshot.
    pub async fn item_event(&self, thread_id: &str, event: &ThreadStreamEvent, snapshot: SnapshotChange) {
        self.bus.publish(&Topic::Thread(thread_id.to_string()), MessageKind::Event, encode(event), snapshot).await;
    }

    /// `None` while a thread's in-progress snapshot must follow its items (it
    /// has viewers here, or the fan-out cannot tell); otherwise how many
    /// messages may pass between snapshots (see `Bus::snapshot_every`).
    pub fn unwatched_snapshot_every(&self, thread_id: &str) -> Option<u32> {
        self.bus.snapshot_every(&Topic::Thread(thread_id.to_string()))
    }

    /// A turn event, routed by type, as its client got it (serialized once);
    /// events that only concern the requesting client (stream options,
    /// progress, errors, notices, effects) stay private.
    pub async fn turn_event(&self, user: &UserId, thread_id: &str, event: &TurnEvent, snapshot: SnapshotChange) {
        let topic = match &event.event {
            ThreadStreamEvent::ThreadCreated { .. } => Topic::User(user.clone()),
            ThreadStreamEvent::ThreadUpdated { .. } => {
                let thread_topic = Topic::Thread(thread_id.to_string());
                self.bus.publish(&thread_topic, MessageKind::Event, event.json.clone(), SnapshotChange::Keep).await;
                Topic::User(user.clone())
            }
            ThreadStreamEvent::ItemAdded { .. }
            | ThreadStreamEvent::ItemUpdated { .. }
            | ThreadStreamEvent::ItemDone { .. }
            | ThreadStreamEvent::ItemRemoved { .. }
            | ThreadStreamEvent::ItemReplaced { .. } => Topic::Thread(thread_id.to_string()),
            _ => return,
        };
        self.bus.publish(&topic, MessageKind::Event, event.json.clone(), snapshot).await;
    }
}

fn encode(event: &ThreadStreamEvent) -> String {
    serde_json::to_string(event).unwrap_or_else(|error| {
        tracing::error!(%error, "could not serialize a fan-out event");
        r#"{"type":"error","code":"stream.error","allow_retry":true}"#.to_string()
    })
}
