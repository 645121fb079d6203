//! An in-process store for tests and the `memory://` URL: plain maps behind one lock.
//!
//! Order is kept by a sequence number handed out at insertion, never by
//! timestamps, because two records may share a `created_at`. Every lookup checks
//! the owner, so another user's record looks exactly like a missing one.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;

use super::record::{finish_listing, Window};
use super::{
    Entity, ListQuery, Listing, PageQuery, SessionRecord, Store, StoreError, StoreResult, UserId, SESSION_BY_SECRET,
};
use crate::protocol::{Attachment, Order, Page, ThreadItem, ThreadMetadata, DEFAULT_PAGE_SIZE};

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
    /// Every session by id.
    sessions: HashMap<String, SessionRecord>,
    /// Session ids by the hash of their client secret.
    sessions_by_secret: HashMap<String, String>,
}

#[derive(Debug)]
struct ThreadRecord {
    owner: UserId,
    seq: u64,
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
}

/// A zero limit would give an empty page that can never advance, so it means
/// the protocol's default page size, as it does on the wire.
fn effective_limit(limit: usize) -> usize {
    if limit == 0 {
        DEFAULT_PAGE_SIZE
    } else {
        limit
    }
}

/// Takes up to `limit` values strictly after `after_seq` in `order`, and says whether more follow.
fn take_page<V>(map: &BTreeMap<u64, V>, after_seq: Option<u64>, order: Order, limit: usize) -> (Vec<&V>, bool) {
    // One extra value tells whether another page follows without counting the rest.
    let wanted = limit.saturating_add(1);
    let mut values: Vec<&V> = match (order, after_seq) {
        (Order::Asc, None) => map.values().take(wanted).collect(),
        (Order::Asc, Some(seq)) => {
            map.range((Bound::Excluded(seq), Bound::Unbounded)).map(|(_, v)| v).take(wanted).collect()
        }
        (Order::Desc, None) => map.values().rev().take(wanted).collect(),
        (Order::Desc, Some(seq)) => map.range(..seq).rev().map(|(_, v)| v).take(wanted).collect(),
    };
    let has_more = values.len() > limit;
    values.truncate(limit);
    (values, has_more)
}

/// Takes an admin listing's page from `map` (see `Window`), one value beyond it
/// telling whether more follow.
fn take_window<V>(map: &BTreeMap<u64, V>, window: Window<u64>, limit: usize) -> Listing<&V> {
    if window.is_empty() {
        // `BTreeMap::range` panics on bounds that cross, and nothing lies between them anyway.
        return Listing { data: Vec::new(), has_more: false };
    }
    let bound = |seq: Option<u64>| seq.map_or(Bound::Unbounded, Bound::Excluded);
    let range = map.range((bound(window.low), bound(window.high))).map(|(_, value)| value);
    let wanted = limit.saturating_add(1);
    let mut values: Vec<&V> =
        if window.ascending { range.take(wanted).collect() } else { range.rev().take(wanted).collect() };
    let has_more = values.len() > limit;
    values.truncate(limit);
    finish_listing(values, has_more, window.reverse)
}

/// The sequence number of the record a cursor names, or `UnknownCursor` when `seq_of` finds none.
fn cursor_seq(cursor: Option<&String>, seq_of: impl Fn(&str) -> Option<u64>) -> StoreResult<Option<u64>> {
    match cursor {
        Some(id) => seq_of(id).map(Some).ok_or_else(|| StoreError::UnknownCursor(id.clone())),
        None => Ok(None),
    }
}

/// Wraps a page's records, naming the last one as the cursor only when more follow.
fn finish_page<T>(data: Vec<T>, has_more: bool, id_of: impl Fn(&T) -> &str) -> Page<T> {
    let after = if has_more { data.last().map(|last| id_of(last).to_owned()) } else { None };
    Page { data, has_more, after }
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
            ThreadRecord { owner: user.clone(), seq, thread: thread.clone(), items: Items::default() },
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
        let mut inner = self.write();
        inner.thread_mut(user, &thread.id)?.thread = thread.clone();
        Ok(())
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

    async fn load_threads(&self, user: &UserId, query: &PageQuery) -> StoreResult<Page<ThreadMetadata>> {
        let inner = self.read();
        let Some(listing) = inner.threads_by_user.get(user) else {
            // A user with no threads has an empty listing, in which no cursor names a record.
            return match &query.after {
                Some(after) => Err(StoreError::UnknownCursor(after.clone())),
                None => Ok(Page::default()),
            };
        };
        let after_seq = match &query.after {
            Some(after) => match inner.threads.get(after) {
                Some(record) if record.owner == *user => Some(record.seq),
                _ => return Err(StoreError::UnknownCursor(after.clone())),
            },
            None => None,
        };
        let (ids, has_more) = take_page(listing, after_seq, query.order, effective_limit(query.limit));
        let data = ids
            .into_iter()
            .map(|id| {
                // The listing and the thread map change together under the write lock,
                // so a listed id always has its record; a miss would be a bug here.
                inner
                    .threads
                    .get(id)
                    .map(|record| record.thread.clone())
                    .ok_or_else(|| StoreError::Backend(format!("thread `{id}` is listed but has no record")))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(finish_page(data, has_more, |thread| &thread.id))
    }

    async fn load_items(&self, user: &UserId, thread_id: &str, query: &PageQuery) -> StoreResult<Page<ThreadItem>> {
        let inner = self.read();
        let items = &inner.thread(user, thread_id)?.items;
        let after_seq = match &query.after {
            Some(after) => match items.seq_by_id.get(after) {
                Some(seq) => Some(*seq),
                None => return Err(StoreError::UnknownCursor(after.clone())),
            },
            None => None,
        };
        let (values, has_more) = take_page(&items.by_seq, after_seq, query.order, effective_limit(query.limit));
        let data = values.into_iter().cloned().collect();
        Ok(finish_page(data, has_more, |item| &item.id))
    }

    async fn load_item(&self, user: &UserId, thread_id: &str, item_id: &str) -> StoreResult<ThreadItem> {
        let inner = self.read();
        let missing = || StoreError::not_found(Entity::Item, item_id);
        let items = &inner.thread(user, thread_id).map_err(|_| missing())?.items;
        let seq = items.seq_by_id.get(item_id).ok_or_else(missing)?;
        items.by_seq.get(seq).cloned().ok_or_else(missing)
    }

    async fn add_item(&self, user: &UserId, item: &ThreadItem) -> StoreResult<()> {
        let mut inner = self.write();
        let seq = inner.take_seq();
        let items = &mut inner.thread_mut(user, &item.thread_id)?.items;
        if items.seq_by_id.contains_key(&item.id) {
            return Err(StoreError::Duplicate { entity: Entity::Item, id: item.id.clone() });
        }
        items.seq_by_id.insert(item.id.clone(), seq);
        items.by_seq.insert(seq, item.clone());
        Ok(())
    }

    async fn save_item(&self, user: &UserId, item: &ThreadItem) -> StoreResult<()> {
        let mut inner = self.write();
        let seq = inner.take_seq();
        let items = &mut inner.thread_mut(user, &item.thread_id)?.items;
        // An existing item keeps its sequence number, hence its place in the thread.
        let seq = *items.seq_by_id.entry(item.id.clone()).or_insert(seq);
        items.by_seq.insert(seq, item.clone());
        Ok(())
    }

    async fn delete_item(&self, user: &UserId, thread_id: &str, item_id: &str) -> StoreResult<()> {
        let mut inner = self.write();
        let missing = || StoreError::not_found(Entity::Item, item_id);
        let items = &mut inner.thread_mut(user, thread_id).map_err(|_| missing())?.items;
        let seq = items.seq_by_id.remove(item_id).ok_or_else(missing)?;
        items.by_seq.remove(&seq);
        Ok(())
    }

    async fn save_attachment(&self, user: &UserId, attachment: &Attachment) -> StoreResult<()> {
        let mut inner = self.write();
        match inner.attachments.get(&attachment.id) {
            // Ids are global, so another user's attachment cannot be replaced; it is
            // reported as missing so that its existence does not leak.
            Some((owner, _)) if owner != user => Err(StoreError::not_found(Entity::Attachment, &attachment.id)),
            _ => {
                inner.attachments.insert(attachment.id.clone(), (user.clone(), attachment.clone()));
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
                Ok(())
            }
            _ => Err(StoreError::not_found(Entity::Attachment, attachment_id)),
        }
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

    async fn list_threads(
        &self,
        user: Option<&UserId>,
        query: &ListQuery,
    ) -> StoreResult<Listing<(UserId, ThreadMetadata)>> {
        let inner = self.read();
        // A cursor must name a thread of this listing: with a user, one of theirs.
        let seq_of = |id: &str| match inner.threads.get(id) {
            Some(record) if user.is_none_or(|user| record.owner == *user) => Some(record.seq),
            _ => None,
        };
        let after = cursor_seq(query.after.as_ref(), seq_of)?;
        let before = cursor_seq(query.before.as_ref(), seq_of)?;
        let empty = BTreeMap::new();
        let ids = match user {
            Some(user) => inner.threads_by_user.get(user).unwrap_or(&empty),
            None => &inner.threads_by_seq,
        };
        let page = take_window(ids, Window::new(query.order, after, before), effective_limit(query.limit));
        let data = page
            .data
            .into_iter()
            .map(|id| {
                // The listings and the thread map change together under the write lock,
                // so a listed id always has its record; a miss would be a bug here.
                inner
                    .threads
                    .get(id)
                    .map(|record| (record.owner.clone(), record.thread.clone()))
                    .ok_or_else(|| StoreError::Backend(format!("thread `{id}` is listed but has no record")))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Listing { data, has_more: page.has_more })
    }

    async fn list_items(&self, user: &UserId, thread_id: &str, query: &ListQuery) -> StoreResult<Listing<ThreadItem>> {
        let inner = self.read();
        let items = &inner.thread(user, thread_id)?.items;
        let seq_of = |id: &str| items.seq_by_id.get(id).copied();
        let after = cursor_seq(query.after.as_ref(), seq_of)?;
        let before = cursor_seq(query.before.as_ref(), seq_of)?;
        let page = take_window(&items.by_seq, Window::new(query.order, after, before), effective_limit(query.limit));
        Ok(Listing { data: page.data.into_iter().cloned().collect(), has_more: page.has_more })
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
}
