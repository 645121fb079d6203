//! An in-process store for tests and the `memory://` URL: plain maps behind one lock.
//!
//! Order is kept by a sequence number handed out at insertion, never by
//! timestamps, because two records may share a `created_at`. Every lookup checks
//! the owner, so another user's record looks exactly like a missing one.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;

use super::paging::{effective_limit, finish_page, Listed, Window};
use super::{
    Entity, Fence, FencedWrite, ListQuery, SessionRecord, Store, StoreError, StoreResult, UserId, SESSION_BY_SECRET,
};
use crate::protocol::{Attachment, Page, ThreadItem, ThreadMetadata};

/// A store that lives and dies with the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The next sequence number; shared by threads and items since only relative order matters.
    next_seq: u64,
    /// Every thread by id. Thread ids are global, as they are in SQLite.
    threads: HashMap<String, ThreadRecord>,
    /// Each user's thread ids by creation sequence, for listing in order.
    threads_by_user: HashMap<UserId, BTreeMap<u64, String>>,
    /// Every thread id by creation sequence, for the admin listing of all users' threads.
    threads_by_seq: BTreeMap<u64, String>,
    /// Every attachment by id, with its owner.
    attachments: HashMap<String, (UserId, Attachment)>,
    /// When each attachment was first saved, in Unix seconds.
    attachments_created: HashMap<String, i64>,
    /// Blob bytes by name.
    blobs: HashMap<String, Vec<u8>>,
    /// Every session by id.
    sessions: HashMap<String, SessionRecord>,
    /// Session ids by the hash of their client secret.
    sessions_by_secret: HashMap<String, String>,
}

#[derive(Debug)]
struct ThreadRecord {
    owner: UserId,
    seq: u64,
    /// The newest fencing token claimed.
    fence: i64,
    thread: ThreadMetadata,
    items: Items,
}

/// A thread's items in the order they were added.
#[derive(Debug, Default)]
struct Items {
    seq_by_id: HashMap<String, u64>,
    by_seq: BTreeMap<u64, ThreadItem>,
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// A panic while holding the lock cannot leave the maps half-updated in a way
    /// that breaks later calls, so a poisoned lock is recovered rather than spread.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn take_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn thread(&self, user: &UserId, thread_id: &str) -> StoreResult<&ThreadRecord> {
        match self.threads.get(thread_id) {
            Some(record) if record.owner == *user => Ok(record),
            _ => Err(StoreError::not_found(Entity::Thread, thread_id)),
        }
    }

    fn thread_mut(&mut self, user: &UserId, thread_id: &str) -> StoreResult<&mut ThreadRecord> {
        match self.threads.get_mut(thread_id) {
            Some(record) if record.owner == *user => Ok(record),
            _ => Err(StoreError::not_found(Entity::Thread, thread_id)),
        }
    }

    fn save_thread(&mut self, user: &UserId, thread: &ThreadMetadata) -> StoreResult<()> {
        self.thread_mut(user, &thread.id)?.thread = thread.clone();
        Ok(())
    }

    fn add_item(&mut self, user: &UserId, item: &ThreadItem) -> StoreResult<()> {
        let seq = self.take_seq();
        let items = &mut self.thread_mut(user, &item.thread_id)?.items;
        if items.seq_by_id.contains_key(&item.id) {
            return Err(StoreError::Duplicate { entity: Entity::Item, id: item.id.clone() });
        }
        items.seq_by_id.insert(item.id.clone(), seq);
        items.by_seq.insert(seq, item.clone());
        Ok(())
    }

    fn save_item(&mut self, user: &UserId, item: &ThreadItem) -> StoreResult<()> {
        let seq = self.take_seq();
        let items = &mut self.thread_mut(user, &item.thread_id)?.items;
        // An existing item keeps its sequence number, hence its place in the thread.
        let seq = *items.seq_by_id.entry(item.id.clone()).or_insert(seq);
        items.by_seq.insert(seq, item.clone());
        Ok(())
    }

    fn delete_item(&mut self, user: &UserId, thread_id: &str, item_id: &str) -> StoreResult<()> {
        let missing = || StoreError::not_found(Entity::Item, item_id);
        let items = &mut self.thread_mut(user, thread_id).map_err(|_| missing())?.items;
        let seq = items.seq_by_id.remove(item_id).ok_or_else(missing)?;
        items.by_seq.remove(&seq);
        Ok(())
    }
}

/// Takes the page of `query` from `map`, where `seq_of` finds the records its
/// cursors name, turning each value taken into a record with `record`.
fn take_page<V, T: Listed>(
    map: &BTreeMap<u64, V>,
    query: &ListQuery,
    seq_of: impl Fn(&str) -> Option<u64>,
    record: impl Fn(&V) -> StoreResult<T>,
) -> StoreResult<Page<T>> {
    let window =
        Window::of(query, query.after.as_deref().and_then(&seq_of), query.before.as_deref().and_then(&seq_of))?;
    if window.is_empty() {
        // `BTreeMap::range` panics on bounds that cross, and nothing lies between them anyway.
        return Ok(Page::default());
    }
    let bound = |seq: Option<u64>| seq.map_or(Bound::Unbounded, Bound::Excluded);
    let range = map.range((bound(window.low), bound(window.high))).map(|(_, value)| value);
    // One value beyond the page tells whether more follow without counting the rest.
    let limit = effective_limit(query.limit);
    let wanted = limit.saturating_add(1);
    let values: Vec<&V> =
        if window.ascending { range.take(wanted).collect() } else { range.rev().take(wanted).collect() };
    let has_more = values.len() > limit;
    let data = values.into_iter().take(limit).map(record).collect::<StoreResult<Vec<T>>>()?;
    Ok(finish_page(data, has_more, &window))
}

#[async_trait]
impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn create_thread(&self, user: &UserId, thread: &ThreadMetadata) -> StoreResult<()> {
        let mut inner = self.write();
        if inner.threads.contains_key(&thread.id) {
            return Err(StoreError::Duplicate { entity: Entity::Thread, id: thread.id.clone() });
        }
        let seq = inner.take_seq();
        inner.threads_by_user.entry(user.clone()).or_default().insert(seq, thread.id.clone());
        inner.threads_by_seq.insert(seq, thread.id.clone());
        inner.threads.insert(
            thread.id.clone(),
            ThreadRecord { owner: user.clone(), seq, fence: 0, thread: thread.clone(), items: Items::default() },
        );
        Ok(())
    }

    async fn load_thread(&self, user: &UserId, thread_id: &str) -> StoreResult<ThreadMetadata> {
        Ok(self.read().thread(user, thread_id)?.thread.clone())
    }

    async fn find_thread(&self, thread_id: &str) -> StoreResult<(UserId, ThreadMetadata)> {
        let inner = self.read();
        let record = inner.threads.get(thread_id).ok_or_else(|| StoreError::not_found(Entity::Thread, thread_id))?;
        Ok((record.owner.clone(), record.thread.clone()))
    }

    async fn save_thread(&self, user: &UserId, thread: &ThreadMetadata) -> StoreResult<()> {
        self.write().save_thread(user, thread)
    }

    async fn delete_thread(&self, user: &UserId, thread_id: &str) -> StoreResult<()> {
        let mut inner = self.write();
        let seq = inner.thread(user, thread_id)?.seq;
        inner.threads.remove(thread_id);
        inner.threads_by_seq.remove(&seq);
        if let Some(listing) = inner.threads_by_user.get_mut(user) {
            listing.remove(&seq);
            if listing.is_empty() {
                inner.threads_by_user.remove(user);
            }
        }
        Ok(())
    }

    async fn list_threads(
        &self,
        user: Option<&UserId>,
        query: &ListQuery,
    ) -> StoreResult<Page<(UserId, ThreadMetadata)>> {
        let inner = self.read();
        // A cursor must name a thread of this listing: with a user, one of theirs.
        let seq_of = |id: &str| match inner.threads.get(id) {
            Some(record) if user.is_none_or(|user| record.owner == *user) => Some(record.seq),
            _ => None,
        };
        let empty = BTreeMap::new();
        let ids = match user {
            Some(user) => inner.threads_by_user.get(user).unwrap_or(&empty),
            None => &inner.threads_by_seq,
        };
        take_page(ids, query, seq_of, |id| {
            // The listings and the thread map change together under the write lock,
            // so a listed id always has its record; a miss would be a bug here.
            inner
                .threads
                .get(id)
                .map(|record| (record.owner.clone(), record.thread.clone()))
                .ok_or_else(|| StoreError::Backend(format!("thread `{id}` is listed but has no record")))
        })
    }

    async fn list_items(&self, user: &UserId, thread_id: &str, query: &ListQuery) -> StoreResult<Page<ThreadItem>> {
        let inner = self.read();
        let items = &inner.thread(user, thread_id)?.items;
        take_page(&items.by_seq, query, |id| items.seq_by_id.get(id).copied(), |item| Ok(item.clone()))
    }

    async fn load_item(&self, user: &UserId, thread_id: &str, item_id: &str) -> StoreResult<ThreadItem> {
        let inner = self.read();
        let missing = || StoreError::not_found(Entity::Item, item_id);
        let items = &inner.thread(user, thread_id).map_err(|_| missing())?.items;
        let seq = items.seq_by_id.get(item_id).ok_or_else(missing)?;
        items.by_seq.get(seq).cloned().ok_or_else(missing)
    }

    async fn add_item(&self, user: &UserId, item: &ThreadItem) -> StoreResult<()> {
        self.write().add_item(user, item)
    }

    async fn save_item(&self, user: &UserId, item: &ThreadItem) -> StoreResult<()> {
        self.write().save_item(user, item)
    }

    async fn delete_item(&self, user: &UserId, thread_id: &str, item_id: &str) -> StoreResult<()> {
        self.write().delete_item(user, thread_id, item_id)
    }

    async fn claim_thread(&self, thread_id: &str) -> StoreResult<Fence> {
        let mut inner = self.write();
        let record =
            inner.threads.get_mut(thread_id).ok_or_else(|| StoreError::not_found(Entity::Thread, thread_id))?;
        record.fence += 1;
        Ok(Fence(record.fence))
    }

    async fn write_fenced(
        &self,
        user: &UserId,
        thread_id: &str,
        fence: Fence,
        write: FencedWrite<'_>,
    ) -> StoreResult<()> {
        // One lock covers the check and the write, as one statement does in SQL.
        let mut inner = self.write();
        if inner.thread(user, thread_id)?.fence > fence.0 {
            return Err(StoreError::Fenced { thread_id: thread_id.to_owned() });
        }
        match write {
            FencedWrite::AddItem(item) => inner.add_item(user, item),
            FencedWrite::SaveItem(item) => inner.save_item(user, item),
            FencedWrite::DeleteItem(item_id) => inner.delete_item(user, thread_id, item_id),
            FencedWrite::SaveThread(thread) => inner.save_thread(user, thread),
        }
    }

    async fn save_attachment(&self, user: &UserId, attachment: &Attachment) -> StoreResult<()> {
        let mut inner = self.write();
        match inner.attachments.get(&attachment.id) {
            // Ids are global, so another user's attachment cannot be replaced; it is
            // reported as missing so that its existence does not leak.
            Some((owner, _)) if owner != user => Err(StoreError::not_found(Entity::Attachment, &attachment.id)),
            _ => {
                inner.attachments.insert(attachment.id.clone(), (user.clone(), attachment.clone()));
                inner.attachments_created.entry(attachment.id.clone()).or_insert_with(super::unix_now);
                Ok(())
            }
        }
    }

    async fn load_attachment(&self, user: &UserId, attachment_id: &str) -> StoreResult<Attachment> {
        match self.read().attachments.get(attachment_id) {
            Some((owner, attachment)) if owner == user => Ok(attachment.clone()),
            _ => Err(StoreError::not_found(Entity::Attachment, attachment_id)),
        }
    }

    async fn delete_attachment(&self, user: &UserId, attachment_id: &str) -> StoreResult<()> {
        let mut inner = self.write();
        match inner.attachments.get(attachment_id) {
            Some((owner, _)) if owner == user => {
                inner.attachments.remove(attachment_id);
                inner.attachments_created.remove(attachment_id);
                Ok(())
            }
            _ => Err(StoreError::not_found(Entity::Attachment, attachment_id)),
        }
    }

    async fn thread_attachments(&self, user: &UserId, thread_id: &str) -> StoreResult<Vec<String>> {
        let inner = self.read();
        let held = inner
            .attachments
            .values()
            .filter(|(owner, attachment)| owner == user && attachment.thread_id.as_deref() == Some(thread_id));
        Ok(held.map(|(_, attachment)| attachment.id.clone()).collect())
    }

    async fn stale_uploads(&self, before: i64, limit: usize) -> StoreResult<Vec<(UserId, String)>> {
        let inner = self.read();
        let mut stale: Vec<(i64, UserId, String)> = inner
            .attachments
            .values()
            .filter(|(_, attachment)| attachment.thread_id.is_none())
            .filter_map(|(owner, attachment)| {
                let created = *inner.attachments_created.get(&attachment.id)?;
                (created < before).then(|| (created, owner.clone(), attachment.id.clone()))
            })
            .collect();
        stale.sort();
        Ok(stale.into_iter().take(limit).map(|(_, owner, id)| (owner, id)).collect())
    }

    async fn expire_upload(&self, user: &UserId, attachment_id: &str) -> StoreResult<bool> {
        let mut inner = self.write();
        match inner.attachments.get(attachment_id) {
            Some((owner, attachment)) if owner == user && attachment.thread_id.is_none() => {
                inner.attachments.remove(attachment_id);
                inner.attachments_created.remove(attachment_id);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn put_blob(&self, name: &str, bytes: &[u8]) -> StoreResult<bool> {
        let mut inner = self.write();
        if inner.blobs.contains_key(name) {
            return Ok(false);
        }
        inner.blobs.insert(name.to_owned(), bytes.to_vec());
        Ok(true)
    }

    async fn get_blob(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.read().blobs.get(name).cloned())
    }

    async fn delete_blob(&self, name: &str) -> StoreResult<()> {
        self.write().blobs.remove(name);
        Ok(())
    }

    async fn create_session(&self, session: &SessionRecord) -> StoreResult<()> {
        let mut inner = self.write();
        if inner.sessions.contains_key(&session.id) || inner.sessions_by_secret.contains_key(&session.secret_hash) {
            return Err(StoreError::Duplicate { entity: Entity::Session, id: session.id.clone() });
        }
        inner.sessions_by_secret.insert(session.secret_hash.clone(), session.id.clone());
        inner.sessions.insert(session.id.clone(), session.clone());
        Ok(())
    }

    async fn load_session(&self, session_id: &str) -> StoreResult<SessionRecord> {
        self.read().sessions.get(session_id).cloned().ok_or_else(|| StoreError::not_found(Entity::Session, session_id))
    }

    async fn find_session(&self, secret_hash: &str) -> StoreResult<SessionRecord> {
        let inner = self.read();
        inner
            .sessions_by_secret
            .get(secret_hash)
            .and_then(|id| inner.sessions.get(id))
            .cloned()
            .ok_or_else(|| StoreError::not_found(Entity::Session, SESSION_BY_SECRET))
    }

    async fn cancel_session(&self, session_id: &str) -> StoreResult<SessionRecord> {
        let mut inner = self.write();
        let session =
            inner.sessions.get_mut(session_id).ok_or_else(|| StoreError::not_found(Entity::Session, session_id))?;
        session.cancelled = true;
        Ok(session.clone())
    }

    async fn delete_expired_sessions(&self, expired_by: i64, limit: usize) -> StoreResult<usize> {
        let mut inner = self.write();
        let mut expired: Vec<(i64, String)> = inner
            .sessions
            .values()
            .filter(|session| session.expires_at <= expired_by)
            .map(|session| (session.expires_at, session.id.clone()))
            .collect();
        expired.sort_unstable();
        expired.truncate(limit);
        for (_, id) in &expired {
            if let Some(session) = inner.sessions.remove(id) {
                inner.sessions_by_secret.remove(&session.secret_hash);
            }
        }
        Ok(expired.len())
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
}
