//! `Writes`: the writes one job makes to a thread, under the fence its actor claimed when
//! replicas share the thread (fenced), or plain when nothing else can write it.

use std::sync::Arc;

use super::{Fence, FencedWrite, Store, StoreResult, UserId};
use crate::protocol::{ThreadItem, ThreadMetadata};

/// A job's writes to its thread. Cloning shares the store.
#[derive(Clone)]
pub struct Writes {
    store: Arc<dyn Store>,
    fence: Option<Fence>,
}

impl Writes {
    pub fn new(store: Arc<dyn Store>, fence: Option<Fence>) -> Writes {
        Writes { store, fence }
    }

    /// The fence these writes carry, if any.
    pub fn fence(&self) -> Option<Fence> {
        self.fence
    }

    pub async fn add_item(&self, user: &UserId, item: &ThreadItem) -> StoreResult<()> {
        match self.fence {
            Some(fence) => self.store.write_fenced(user, &item.thread_id, fence, FencedWrite::AddItem(item)).await,
            None => self.store.add_item(user, item).await,
        }
    }

    pub async fn save_item(&self, user: &UserId, item: &ThreadItem) -> StoreResult<()> {
        match self.fence {
            Some(fence) => self.store.write_fenced(user, &item.thread_id, fence, FencedWrite::SaveItem(item)).await,
            None => self.store.save_item(user, item).await,
        }
    }

    pub async fn delete_item(&self, user: &UserId, thread_id: &str, item_id: &str) -> StoreResult<()> {
        match self.fence {
            Some(fence) => self.store.write_fenced(user, thread_id, fence, FencedWrite::DeleteItem(item_id)).await,
            None => self.store.delete_item(user, thread_id, item_id).await,
        }
    }

    pub async fn save_thread(&self, user: &UserId, thread: &ThreadMetadata) -> StoreResult<()> {
        match self.fence {
            Some(fence) => self.store.write_fenced(user, &thread.id, fence, FencedWrite::SaveThread(thread)).await,
            None => self.store.save_thread(user, thread).await,
        }
    }
}
