//! What the gateway accepts of an agent's event stream: every event parsed into the protocol's
//! types, thread changes applied to the turn's thread, and updates only for items in progress.

use std::borrow::Cow;
use std::collections::HashSet;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::call::Failure;
use crate::protocol::{ThreadStatus, ThreadStreamEvent};
use crate::responder::{ResponderError, SharedThread};

/// The part of a `thread.updated` event an agent may change; a field left out stays as it is.
#[derive(Deserialize)]
struct ThreadChange {
    id: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    status: Option<ThreadStatus>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

/// The one field of an event read before the rest.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
}

/// A `thread.updated` event as an agent sends it.
#[derive(Deserialize)]
struct ThreadUpdate {
    thread: ThreadChange,
}

/// Checks one turn's events, in order.
pub(super) struct Checker {
    thread: SharedThread,
    /// Items added and not yet done, removed or replaced: the only ones an update may name.
    open: HashSet<String>,
}

impl Checker {
    pub(super) fn new(thread: SharedThread) -> Checker {
        Checker { thread, open: HashSet::new() }
    }

    /// The event to pass on, `None` for one the engine reports itself (`thread.updated`), or the
    /// error that ends the turn.
    pub(super) fn accept(&mut self, data: &str) -> Result<Option<ThreadStreamEvent>, ResponderError> {
        let invalid = |detail: String| Failure::Invalid(detail).into_error();
        // The type is read first, without building a tree of the event; then the event is parsed once, into the type
        // it names.
        let head: Head<'_> = serde_json::from_str(data).map_err(|e| invalid(format!("an event is not JSON ({e})")))?;
        let kind = head.kind.as_deref().unwrap_or_default();
        if kind == "thread.updated" {
            let update: ThreadUpdate = serde_json::from_str(data)
                .map_err(|e| invalid(format!("a `thread.updated` event has a bad `thread` ({e})")))?;
            self.apply(update.thread).map_err(invalid)?;
            // The engine persists the change and emits its own `thread.updated`.
            return Ok(None);
        }
        let event: ThreadStreamEvent = serde_json::from_str(data)
            .map_err(|e| invalid(format!("the event of type `{kind}` does not parse ({e})")))?;
        let named = match &event {
            ThreadStreamEvent::ItemAdded { item }
            | ThreadStreamEvent::ItemDone { item }
            | ThreadStreamEvent::ItemReplaced { item } => Some(item.id.as_str()),
            ThreadStreamEvent::ItemUpdated { item_id, .. } | ThreadStreamEvent::ItemRemoved { item_id } => {
                Some(item_id.as_str())
            }
            _ => None,
        };
        if named.is_some_and(|id| id.trim().is_empty()) {
            return Err(invalid(format!("a `{kind}` event names an item with an empty id")));
        }
        match &event {
            ThreadStreamEvent::ThreadCreated { .. } => {
                return Err(invalid("`thread.created` is not an event an agent may send".into()))
            }
            ThreadStreamEvent::ItemAdded { item } => {
                self.open.insert(item.id.clone());
            }
            ThreadStreamEvent::ItemUpdated { item_id, .. } if !self.open.contains(item_id) => {
                return Err(invalid(format!("an update for `{item_id}`, which is not an item in progress")));
            }
            ThreadStreamEvent::ItemDone { item } | ThreadStreamEvent::ItemReplaced { item } => {
                self.open.remove(&item.id);
            }
            ThreadStreamEvent::ItemRemoved { item_id } => {
                self.open.remove(item_id);
            }
            ThreadStreamEvent::Error(error) => {
                // The agent's own error ends the turn as a responder error does, keeping partial output.
                return Err(match &error.message {
                    Some(message) => {
                        ResponderError::Custom { message: message.clone(), allow_retry: error.allow_retry }
                    }
                    None => ResponderError::Stream { code: error.code.clone(), allow_retry: error.allow_retry },
                });
            }
            _ => {}
        }
        Ok(Some(event))
    }

    /// The stream ended: an item still in progress means it was cut.
    pub(super) fn finish(&self) -> Result<(), ResponderError> {
        match self.open.iter().next() {
            Some(id) => Err(Failure::Broken(format!("the stream ended with `{id}` unfinished")).into_error()),
            None => Ok(()),
        }
    }

    fn apply(&self, change: ThreadChange) -> Result<(), String> {
        let id = self.thread.id();
        if change.id.as_deref().is_some_and(|other| other != id) {
            return Err(format!("a `thread.updated` event names another thread than `{id}`"));
        }
        self.thread.update(|thread| {
            if let Some(title) = change.title {
                thread.title = Some(title);
            }
            if let Some(status) = change.status {
                thread.status = status;
            }
            if let Some(metadata) = change.metadata {
                thread.metadata = metadata;
            }
        });
        Ok(())
    }
}
