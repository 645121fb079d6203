//! The paging rules every backend shares: page sizes, the window a listing
//! reads between its cursors, and the page it answers, in listing order with
//! the cursor of the next page.

use super::{ListQuery, StoreError, StoreResult, UserId};
use crate::protocol::{ListedThread, Order, Page, ThreadItem, ThreadMetadata, DEFAULT_PAGE_SIZE};

/// A zero limit would give an empty page that can never advance, so it means
/// the protocol's default page size, as it does on the wire.
pub(super) fn effective_limit(limit: usize) -> usize {
    if limit == 0 {
        DEFAULT_PAGE_SIZE
    } else {
        limit
    }
}

/// What a listing reads, in sequence numbers: the records strictly between
/// `low` and `high` (unbounded on a side that is `None`), scanned up from `low`
/// when `ascending`, else down from `high`, for one record beyond the page.
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
    /// The window of `query`, whose cursors name the records at these sequence
    /// numbers; a cursor given but found at none is `UnknownCursor`.
    pub(super) fn of(query: &ListQuery, after: Option<S>, before: Option<S>) -> StoreResult<Self> {
        for (cursor, seq) in [(&query.after, after.is_some()), (&query.before, before.is_some())] {
            if let (Some(cursor), false) = (cursor, seq) {
                return Err(StoreError::UnknownCursor(cursor.clone()));
            }
        }
        // Newest first, what follows a record is older than it: the cursors swap sides.
        let (low, high) = match query.order {
            Order::Asc => (after, before),
            Order::Desc => (before, after),
        };
        let before_alone = before.is_some() && after.is_none();
        Ok(Window { low, high, ascending: matches!(query.order, Order::Asc) != before_alone, reverse: before_alone })
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

/// A record a listing holds, by the id its cursors use.
pub(super) trait Listed {
    fn cursor(&self) -> &str;
}

impl Listed for ThreadItem {
    fn cursor(&self) -> &str {
        &self.id
    }
}

impl Listed for ListedThread {
    fn cursor(&self) -> &str {
        &self.id
    }
}

impl Listed for (UserId, ThreadMetadata) {
    fn cursor(&self) -> &str {
        &self.1.id
    }
}

/// The page of a window from its records in scan order, reversed into listing
/// order when the window says so. `has_more` tells whether a record was found
/// beyond the page, in the direction of travel. A page read forward names its
/// last record as `after`, the cursor of the next page, when more follow; one
/// read backward (`before` alone) names none, its next page being before its
/// first record.
pub(super) fn finish_page<T: Listed, S>(mut data: Vec<T>, has_more: bool, window: &Window<S>) -> Page<T> {
    if window.reverse {
        data.reverse();
        return Page { data, has_more, after: None };
    }
    let after = if has_more { data.last().map(|last| last.cursor().to_owned()) } else { None };
    Page { data, has_more, after }
}
