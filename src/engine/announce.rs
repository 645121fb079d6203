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

    /// `None` while a thread's in-progress snapshot must follow its items (it
    /// has viewers here, or the fan-out cannot tell); otherwise how many
    /// messages may pass between snapshots (see `Bus::snapshot_every`).
    pub fn unwatched_snapshot_every(&self, thread: &Topic) -> Option<u32> {
        self.bus.snapshot_every(thread)
    }

    /// A turn event, routed by type, as its client got it (serialized once);
    /// events that only concern the requesting client (stream options,
    /// progress, errors, notices, effects) stay private. `thread` is the
    /// turn's thread topic, which the turn builds once.
    pub async fn turn_event(&self, user: &UserId, thread: &Topic, event: &TurnEvent, snapshot: SnapshotChange) {
        let json = || event.json.clone();
        match &event.event {
            ThreadStreamEvent::ThreadCreated { .. } => {
                self.bus.publish(&Topic::User(user.clone()), MessageKind::Event, json(), snapshot).await
            }
            ThreadStreamEvent::ThreadUpdated { .. } => {
                self.bus.publish(thread, MessageKind::Event, json(), SnapshotChange::Keep).await;
                self.bus.publish(&Topic::User(user.clone()), MessageKind::Event, json(), snapshot).await;
            }
            ThreadStreamEvent::ItemAdded { .. }
            | ThreadStreamEvent::ItemUpdated { .. }
            | ThreadStreamEvent::ItemDone { .. }
            | ThreadStreamEvent::ItemRemoved { .. }
            | ThreadStreamEvent::ItemReplaced { .. } => {
                self.bus.publish(thread, MessageKind::Event, json(), snapshot).await
            }
            _ => {}
        }
    }
}
