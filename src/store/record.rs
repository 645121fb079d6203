//! What the SQL backends share: records as JSON text, and page sizes in SQL.

use serde::{de::DeserializeOwned, Serialize};

use super::{Entity, StoreError, StoreResult};
use crate::protocol::DEFAULT_PAGE_SIZE;

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
