//! What the `/v1` API reads across users, in its hosted shapes: threads of
//! every user with their owners, a thread with its first page of items, a page
//! of a thread's items; and the store's readiness. Every store listing the
//! `/v1` API makes goes through here, so a change of the store's paging API
//! lands in this one file.

use std::collections::VecDeque;

use super::{Engine, EngineError, EngineResult};
use crate::ids::UserId;
use crate::protocol::hosted::{
    ChatKitThread, ChatKitThreadItem, ChatKitThreadItemList, ChatKitThreadList, ListingParams,
};
use crate::store::{ListQuery, StoreError, StoreResult};

impl Engine {
    /// A page of threads of every user, or of `user`, with their owners.
    pub async fn list_all_threads(
        &self,
        user: Option<&UserId>,
        params: &ListingParams,
    ) -> EngineResult<ChatKitThreadList> {
        let query = list_query(params);
        let listing = self.store.list_threads(user, &query).await.map_err(|e| listing_error(e, &query))?;
        let threads = listing.data.iter().map(|(owner, thread)| ChatKitThread::new(owner.as_str(), thread)).collect();
        Ok(ChatKitThreadList::new(threads, listing.has_more))
    }

    /// The user who owns a thread, found by the thread's id alone.
    pub async fn thread_owner(&self, thread_id: &str) -> EngineResult<UserId> {
        Ok(self.store.find_thread(thread_id).await?.0)
    }

    /// A thread with its owner and its first page of items, as
    /// [`Engine::hosted_items`] answers it without parameters.
    pub async fn hosted_thread(&self, thread_id: &str) -> EngineResult<ChatKitThread> {
        let (owner, thread) = self.store.find_thread(thread_id).await?;
        let items = self.item_page(&owner, thread_id, &list_query(&ListingParams::default())).await?;
        Ok(ChatKitThread { items: Some(items), ..ChatKitThread::new(owner.as_str(), &thread) })
    }

    /// A page of a thread's items, whoever owns it.
    pub async fn hosted_items(&self, thread_id: &str, params: &ListingParams) -> EngineResult<ChatKitThreadItemList> {
        let owner = self.thread_owner(thread_id).await?;
        self.item_page(&owner, thread_id, &list_query(params)).await
    }

    /// The store backend's short name, for readiness and logs.
    pub fn store_backend(&self) -> &'static str {
        self.store.backend()
    }

    /// Checks that the store answers, for readiness.
    pub async fn ping_store(&self) -> StoreResult<()> {
        self.store.ping().await
    }

    /// A page of a thread's items in the hosted shapes. Items without a hosted
    /// shape (hidden context, end-of-turn markers) are skipped and the store is
    /// read on past them, so that `limit` and `has_more` count shown items only.
    async fn item_page(
        &self,
        owner: &UserId,
        thread_id: &str,
        query: &ListQuery,
    ) -> EngineResult<ChatKitThreadItemList> {
        let limit = query.limit;
        // With `before` alone the page grows towards the start of the listing.
        let backward = query.before.is_some() && query.after.is_none();
        let mut shown = VecDeque::with_capacity(limit + 1);
        let mut next = query.clone();
        loop {
            // One item more than the page holds tells whether more follow.
            next.limit = limit + 1 - shown.len();
            let page = self.store.list_items(owner, thread_id, &next).await.map_err(|e| listing_error(e, query))?;
            let (Some(first), Some(last)) = (page.data.first(), page.data.last()) else { break };
            let (first_id, last_id) = (first.id.clone(), last.id.clone());
            let mapped = page.data.iter().filter_map(ChatKitThreadItem::from_item);
            if backward {
                mapped.rev().for_each(|item| shown.push_front(item));
            } else {
                shown.extend(mapped);
            }
            if shown.len() > limit || !page.has_more {
                break;
            }
            if backward {
                next.before = Some(first_id);
            } else {
                next.after = Some(last_id);
            }
        }
        let has_more = shown.len() > limit;
        if has_more {
            if backward {
                shown.pop_front();
            } else {
                shown.pop_back();
            }
        }
        Ok(ChatKitThreadItemList::new(shown.into(), has_more))
    }
}

/// The store query of a listing's parameters, with their defaults.
fn list_query(params: &ListingParams) -> ListQuery {
    ListQuery {
        after: params.after.clone(),
        before: params.before.clone(),
        limit: params.limit(),
        order: params.order.unwrap_or_default().into(),
    }
}

/// A listing's store error; an unknown cursor names the parameter that carried it.
fn listing_error(error: StoreError, query: &ListQuery) -> EngineError {
    match error {
        StoreError::UnknownCursor(id) => {
            let parameter = if query.after.as_deref() == Some(id.as_str()) { "after" } else { "before" };
            EngineError::BadRequest(format!("`{parameter}` names `{id}`, which is not part of this listing"))
        }
        other => other.into(),
    }
}
