//! The listings of the `/v1` API: their query parameters with validation and
//! defaults, and the `list` objects they answer, OpenAI-style (`first_id`,
//! `last_id`, `has_more`).

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ChatKitThread, ChatKitThreadItem, ListObject};
use crate::protocol::Order;

/// The default page size of the `/v1` API's listings.
pub const DEFAULT_LIST_LIMIT: usize = 20;
/// The largest page size the `/v1` API's listings accept.
pub const MAX_LIST_LIMIT: usize = 100;

/// The sort order of a listing, by creation time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SortOrder {
    /// Oldest first.
    Asc,
    /// Newest first.
    #[default]
    Desc,
}

impl SortOrder {
    /// Reads a query parameter's value: `asc` or `desc`, nothing else.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "asc" => Some(SortOrder::Asc),
            "desc" => Some(SortOrder::Desc),
            _ => None,
        }
    }
}

impl From<SortOrder> for Order {
    fn from(order: SortOrder) -> Self {
        match order {
            SortOrder::Asc => Order::Asc,
            SortOrder::Desc => Order::Desc,
        }
    }
}

/// The query parameters of every listing: of threads and of a thread's items.
#[derive(Clone, Debug, Default, PartialEq, Eq, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListingParams {
    /// List the records that follow this record id in the listing's order.
    pub after: Option<String>,
    /// List the records that precede this record id in the listing's order (the `limit` closest to it).
    pub before: Option<String>,
    /// How many records to answer, 1 to 100; default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `asc` (oldest first) or `desc` (newest first); default `desc`.
    #[param(inline)]
    pub order: Option<SortOrder>,
}

/// The query parameter of `GET /v1/chatkit/threads` beyond those of every listing.
#[derive(Clone, Debug, Default, PartialEq, Eq, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserFilter {
    /// Only the threads of this user; default every user's.
    pub user: Option<String>,
}

impl ListingParams {
    /// Reads a listing's query parameters from the decoded query string:
    /// `after`, `before`, `limit`, `order` and, when `with_user`, `user`.
    /// Anything else, an empty or bad value, or a parameter given twice is an
    /// error that names it.
    pub fn from_query(pairs: Vec<(String, String)>, with_user: bool) -> Result<(Self, UserFilter), String> {
        let mut params = ListingParams::default();
        let mut filter = UserFilter::default();
        for (name, value) in pairs {
            let twice = || format!("query parameter `{name}` is given more than once");
            let not_empty = |value: String| {
                if value.is_empty() {
                    Err(format!("`{name}` must not be empty"))
                } else {
                    Ok(value)
                }
            };
            match name.as_str() {
                "after" if params.after.is_some() => return Err(twice()),
                "after" => params.after = Some(not_empty(value)?),
                "before" if params.before.is_some() => return Err(twice()),
                "before" => params.before = Some(not_empty(value)?),
                "limit" if params.limit.is_some() => return Err(twice()),
                "limit" => {
                    let limit = value.trim().parse::<u32>().ok().filter(|n| (1..=MAX_LIST_LIMIT as u32).contains(n));
                    params.limit = Some(limit.ok_or_else(|| {
                        format!("`limit` must be an integer from 1 to {MAX_LIST_LIMIT}, got `{value}`")
                    })?);
                }
                "order" if params.order.is_some() => return Err(twice()),
                "order" => {
                    params.order = Some(
                        SortOrder::parse(&value)
                            .ok_or_else(|| format!("`order` must be `asc` or `desc`, got `{value}`"))?,
                    );
                }
                "user" if with_user && filter.user.is_some() => return Err(twice()),
                "user" if with_user => filter.user = Some(not_empty(value)?),
                _ => {
                    let known = if with_user {
                        "`after`, `before`, `limit`, `order`, `user`"
                    } else {
                        "`after`, `before`, `limit`, `order`"
                    };
                    return Err(format!("unknown query parameter `{name}`; this endpoint takes {known}"));
                }
            }
        }
        Ok((params, filter))
    }

    /// The page size asked for, or the default.
    pub fn limit(&self) -> usize {
        self.limit.map_or(DEFAULT_LIST_LIMIT, |limit| limit as usize)
    }
}

/// Declares a page of a listing: `object: "list"`, the page's records, the
/// ids of its first and last record and `has_more`, with the constructor that
/// fills in the ids. The field descriptions are given whole (`tt`) because
/// the schema derive reads only plain string literals as documentation.
macro_rules! hosted_list {
    (
        $(#[$meta:meta])*
        $name:ident of $entry:ident,
        first_id: $first:tt,
        last_id: $last:tt,
        has_more: $more:tt $(,)?
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
        pub struct $name {
            pub object: ListObject,
            pub data: Vec<$entry>,
            #[doc = $first]
            pub first_id: Option<String>,
            #[doc = $last]
            pub last_id: Option<String>,
            #[doc = $more]
            pub has_more: bool,
        }

        impl $name {
            pub fn new(data: Vec<$entry>, has_more: bool) -> Self {
                let first_id = data.first().map(|entry| entry.id().to_string());
                let last_id = data.last().map(|entry| entry.id().to_string());
                $name { object: ListObject::Tag, data, first_id, last_id, has_more }
            }
        }
    };
}

hosted_list!(
    /// A page of threads: `object: "list"` with the ids of its first and last thread.
    ChatKitThreadList of ChatKitThread,
    first_id: "The id of the first thread of the page; `null` when it is empty.",
    last_id: "The id of the last thread of the page, the `after` of the next page; `null` when it is empty.",
    has_more: "Whether threads remain beyond the page in the direction of travel.",
);

hosted_list!(
    /// A page of thread items: `object: "list"` with the ids of its first and last item.
    ChatKitThreadItemList of ChatKitThreadItem,
    first_id: "The id of the first item of the page; `null` when it is empty.",
    last_id: "The id of the last item of the page, the `after` of the next page; `null` when it is empty.",
    has_more: "Whether items remain beyond the page in the direction of travel.",
);
