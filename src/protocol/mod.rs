//! The ChatKit wire protocol: requests, threads, items and stream events, typed.
//!
//! This module knows nothing of HTTP, actors or SQL. Its types serialize exactly
//! as openai-chatkit 1.6.5 does with `exclude_none=True`: `None` fields are
//! omitted and fields with defaults are always written.

mod events;
pub mod hosted;
mod items;
mod listed;
mod requests;
mod thread;
mod time;

pub use events::*;
pub use items::*;
pub use listed::ListedThread;
pub use requests::*;
pub use thread::*;
pub use time::Timestamp;

/// The page size the reference uses when a request names none (or zero).
pub const DEFAULT_PAGE_SIZE: usize = 20;

/// Declares a one-value enum that serializes as a fixed string.
///
/// Standalone structs such as `URLSource` carry their own `type` field on the
/// wire; a literal tag type writes it and rejects any other value when read.
macro_rules! literal_tag {
    ($name:ident, $value:literal) => {
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            #[default]
            #[serde(rename = $value)]
            Tag,
        }
    };
}
pub(crate) use literal_tag;
