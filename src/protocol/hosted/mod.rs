//! Wire types of the `/v1` API, in the shapes of the hosted ChatKit service's
//! REST API (`/v1/chatkit/...`) as the `openai` Python SDK's `types/beta/chatkit`
//! describes them: `sessions` (parameters, validation, defaults,
//! `chatkit.session`), `threads` (`chatkit.thread`, status changes and the
//! answers to deletion and cancellation), `items` (`chatkit.thread_item` and
//! the conversion from the protocol's items) and `list` (listing parameters
//! and `list` objects). Unlike the protocol's types they write `null` rather
//! than omit a field, as the hosted service does; their `utoipa` derives make
//! the `/v1/openapi.json` document.

mod items;
mod list;
mod sessions;
mod threads;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use items::*;
pub use list::*;
pub use sessions::*;
pub use threads::*;

/// Declares a one-value enum that serializes as a fixed string and documents
/// itself as that one value, for the `object` and `type` fields of the hosted types.
///
/// The value is taken as a raw token (`tt`), not as a `literal` fragment: the
/// schema derive does not see through the group a `literal` fragment becomes,
/// and would document the variant's Rust name instead.
macro_rules! hosted_tag {
    ($(#[$meta:meta])* $name:ident, $value:tt) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
        pub enum $name {
            #[default]
            #[serde(rename = $value)]
            Tag,
        }
    };
}

hosted_tag!(
    /// Always `chatkit.session`.
    SessionObject,
    "chatkit.session"
);
hosted_tag!(
    /// Always `chatkit.thread`.
    ThreadObject,
    "chatkit.thread"
);
hosted_tag!(
    /// Always `chatkit.thread_item`.
    ThreadItemObject,
    "chatkit.thread_item"
);
hosted_tag!(
    /// Always `chatkit.thread.deleted`.
    ThreadDeletedObject,
    "chatkit.thread.deleted"
);
hosted_tag!(
    /// Always `list`.
    ListObject,
    "list"
);
hosted_tag!(
    /// Always `output_text`.
    OutputTextType,
    "output_text"
);
hosted_tag!(
    /// Always `url`.
    UrlSourceType,
    "url"
);
hosted_tag!(
    /// Always `file`.
    FileSourceType,
    "file"
);

/// Every error answer of the gateway.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorObject,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorObject {
    /// What went wrong, naming the offending parameter or field.
    pub message: String,
    /// The error family, e.g. `invalid_request_error`, `not_found_error`, `authentication_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A stable code, e.g. `invalid_request`, `not_found`, `unauthorized`.
    pub code: String,
    /// The answer's `x-request-id`: what finds the request in the gateway's logs.
    pub request_id: String,
}
