//! What the backends share: records as JSON text, page sizes in SQL, and the
//! window an admin listing reads.

use serde::{de::DeserializeOwned, Serialize};

use super::{Entity, Listing, StoreError, StoreResult};
use crate::protocol::{Order, DEFAULT_PAGE_SIZE};

pub(super) fn to_json<T: Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|err| StoreError::Backend(format!("cannot serialize record: {err}")))
}

pub(super) fn from_json<T: DeserializeOwned>(text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|err| StoreError::Backend(format!("stored record does not parse: {err}")))
}

/// A zero limit would give an empty page that can never advance, so it means
/// the protocol's default page size, as it does on the wire.
pub(super) fn effective_limit(limit: usize) -> usize {
    if limit == 0 {
        DEFAULT_PAGE_SIZE
    } else {
        limit
    }
}

/// The SQL `LIMIT` that fetches one row beyond the page, which tells whether more follow.
pub(super) fn fetch_limit(limit: usize) -> i64 {
    i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX)
}

/// A statement that changed no row found nothing to change: the record is
/// missing, or belongs to another user, which must look the same.
pub(super) fn found(changed: bool, entity: Entity, id: impl Into<String>) -> StoreResult<()> {
    if changed {
        Ok(())
    } else {
        Err(StoreError::not_found(entity, id))
    }
}

/// What an admin listing reads, in sequence numbers: the records strictly
/// between `low` and `high` (unbounded on a side that is `None`), scanned up
/// from `low` when `ascending`, else down from `high`, for one record beyond
/// the page.
///
/// A page with a `before` cursor alone holds the records closest to it, so it
/// is scanned against the listing's order, from the cursor away, and then
/// `reverse`d into listing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Window<S> {
    pub low: Option<S>,
    pub high: Option<S>,
    pub ascending: bool,
    pub reverse: bool,
}

impl<S: Copy + Ord> Window<S> {
    /// The window of a listing in `order` whose cursors name the records at
    /// these sequence numbers.
    pub(super) fn new(order: Order, after: Option<S>, before: Option<S>) -> Self {
        // Newest first, what follows a record is older than it: the cursors swap sides.
        let (low, high) = match order {
            Order::Asc => (after, before),
            Order::Desc => (before, after),
        };
        let before_alone = before.is_some() && after.is_none();
        Window { low, high, ascending: matches!(order, Order::Asc) != before_alone, reverse: before_alone }
    }

    /// Whether no record can lie between the bounds: the cursors are the same
    /// record, neighbours seen from the wrong sides, or in the wrong order.
    pub(super) fn is_empty(&self) -> bool {
        matches!((self.low, self.high), (Some(low), Some(high)) if low >= high)
    }
}

impl Window<i64> {
    /// The bounds as SQL parameters, both exclusive. Sequence numbers start at 1
    /// and would reach `i64::MAX` only after some 9.2e18 inserts, so the extremes
    /// stand for "no bound".
    pub(super) fn sql_bounds(&self) -> (i64, i64) {
        (self.low.unwrap_or(i64::MIN), self.high.unwrap_or(i64::MAX))
    }
}

/// A listing from the page's records in scan order, reversed into listing
/// order when the window says so.
pub(super) fn finish_listing<T>(mut data: Vec<T>, has_more: bool, window_reversed: bool) -> Listing<T> {
    if window_reversed {
        data.reverse();
    }
    Listing { data, has_more }
}
