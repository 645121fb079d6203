//! Identifiers: ids for threads, items and attachments, and the user a request acts for.

use rand::Rng;

/// Who a request acts for. Stores scope every read and write by it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub String);

impl UserId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an id is for; decides its prefix, as the reference's `StoreItemType` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    Thread,
    Message,
    ToolCall,
    Task,
    Workflow,
    Attachment,
    SdkHiddenContext,
    Session,
    /// An HTTP request, for `x-request-id` and the logs; not a stored record.
    Request,
}

impl IdKind {
    fn prefix(self) -> &'static str {
        match self {
            IdKind::Thread => "thr",
            IdKind::Message => "msg",
            IdKind::ToolCall => "tc",
            IdKind::Task => "tsk",
            IdKind::Workflow => "wf",
            IdKind::Attachment => "atc",
            IdKind::SdkHiddenContext => "shcx",
            IdKind::Session => "cksess",
            IdKind::Request => "req",
        }
    }
}

/// A new random id such as `thr_1f0c9a7e52b4d3c8`.
///
/// The reference uses 32 random bits; we use 64 so that ids stay unique across
/// replicas and millions of threads without coordination.
pub fn new_id(kind: IdKind) -> String {
    let bits: u64 = rand::rng().random();
    format!("{}_{bits:016x}", kind.prefix())
}

/// A random secret of 128 bits as hex, for capability URLs.
pub fn new_secret() -> String {
    let bits: u128 = rand::rng().random();
    format!("{bits:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_reference_prefixes() {
        let id = new_id(IdKind::Thread);
        assert!(id.starts_with("thr_") && id.len() == 20, "{id}");
        assert!(new_id(IdKind::SdkHiddenContext).starts_with("shcx_"));
        assert_ne!(new_id(IdKind::Message), new_id(IdKind::Message));
        assert_eq!(new_secret().len(), 32);
    }
}
