//! Threads, their lifecycle status, and the page envelope.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{ThreadItem, Timestamp};

/// A page of records, with the cursor of its last record when more follow
/// (none on a page read backward, toward a `before` cursor).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    #[serde(default = "Vec::new")]
    pub data: Vec<T>,
    #[serde(default)]
    pub has_more: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

impl<T> Default for Page<T> {
    fn default() -> Self {
        Page { data: Vec::new(), has_more: false, after: None }
    }
}

impl<T> Page<T> {
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page { data: self.data.into_iter().map(f).collect(), has_more: self.has_more, after: self.after }
    }
}

/// The lifecycle state of a thread.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ThreadStatus {
    #[default]
    Active,
    Locked {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Closed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

impl ThreadStatus {
    pub fn is_active(&self) -> bool {
        matches!(self, ThreadStatus::Active)
    }
}

/// A thread without its items: what the store keeps for each thread.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThreadMetadata {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub created_at: Timestamp,
    #[serde(default)]
    pub status: ThreadStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_image_domains: Option<Vec<String>>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

impl ThreadMetadata {
    pub fn new(id: String) -> Self {
        ThreadMetadata {
            id,
            title: None,
            created_at: Timestamp::now(),
            status: ThreadStatus::Active,
            allowed_image_domains: None,
            metadata: Map::new(),
        }
    }

    /// The thread as a client sees it: stored metadata withheld, hidden items removed.
    pub fn to_wire(&self, items: Page<ThreadItem>) -> Thread {
        let mut items = items;
        items.data.retain(|item| !item.is_hidden());
        Thread {
            id: self.id.clone(),
            title: self.title.clone(),
            created_at: self.created_at,
            status: self.status.clone(),
            allowed_image_domains: self.allowed_image_domains.clone(),
            metadata: Map::new(),
            items,
        }
    }
}

/// A thread with a page of its items, as sent to clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thread {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub created_at: Timestamp,
    #[serde(default)]
    pub status: ThreadStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_image_domains: Option<Vec<String>>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    pub items: Page<ThreadItem>,
}
