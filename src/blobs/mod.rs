//! Attachment bytes behind one trait, so that any replica can serve them.
//!
//! Backends are same-shaped modules: `memory` (tests), `dir` (a local
//! directory: the single-node default), `database` (the store's own database:
//! the default with PostgreSQL, so that replicas need nothing more) and `s3`
//! (S3-compatible object storage through `object_store`). One contract suite
//! (`tests/integration/blob_contract.rs`) runs against each.
//!
//! A blob is written once: `put` refuses a name that holds bytes already, which
//! is what makes an upload URL work once whichever replica answers it.

mod database;
mod dir;
mod memory;
mod s3;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::secret::Secret;
use crate::store::Store;

pub use database::DatabaseBlobs;
pub use dir::DirBlobs;
pub use memory::MemoryBlobs;
pub use s3::{S3Blobs, S3Options};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The name holds bytes already; they stay as they are.
    #[error("blob `{0}` already exists")]
    Exists(String),
    /// A name that is not slash-separated plain segments.
    #[error("invalid blob name `{0}`")]
    InvalidName(String),
    /// The backend failed; the message is for logs, not for clients.
    #[error("blob backend failed: {0}")]
    Backend(String),
}

pub type BlobResult<T> = Result<T, BlobError>;

/// The blob storage contract: names are slash-separated segments of letters,
/// digits, `_`, `-` and `.` (never `.` or `..` alone), checked by every backend.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// A short name for logs, e.g. `s3`.
    fn backend(&self) -> &'static str;
    /// Stores bytes under a new name; `Exists` when the name is taken.
    async fn put(&self, name: &str, bytes: Bytes) -> BlobResult<()>;
    /// The bytes under a name, `None` when there are none.
    async fn get(&self, name: &str) -> BlobResult<Option<Bytes>>;
    /// Deletes the bytes under a name; a missing blob is not an error.
    async fn delete(&self, name: &str) -> BlobResult<()>;
}

/// Checks a blob name, so that no backend sees a path that climbs out of its root.
pub fn check_name(name: &str) -> BlobResult<()> {
    let plain = |segment: &str| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    if name.len() <= 512 && name.split('/').all(plain) {
        Ok(())
    } else {
        Err(BlobError::InvalidName(name.to_owned()))
    }
}

/// The blob name of an attachment's bytes (as the files under the data directory were always named).
pub fn attachment_name(attachment_id: &str) -> String {
    format!("attachments/{attachment_id}")
}

/// Where blobs live, as `CHATKIT_BLOB_URL` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobLocation {
    /// `memory://`: in this process only (tests).
    Memory,
    /// `database`: the store's database.
    Database,
    /// `file:///path` or a plain path: a local (or shared) directory.
    Directory(PathBuf),
    /// `s3://bucket/prefix`.
    S3 { bucket: String, prefix: String },
}

impl BlobLocation {
    /// Reads a `CHATKIT_BLOB_URL`, with an error that names the problem.
    pub fn parse(url: &str) -> Result<BlobLocation, String> {
        if url == "memory://" || url == "memory" {
            return Ok(BlobLocation::Memory);
        }
        if url == "database" || url == "database://" {
            return Ok(BlobLocation::Database);
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("CHATKIT_BLOB_URL `{url}` names no bucket: expected s3://bucket/prefix"));
            }
            let prefix = prefix.trim_matches('/').to_owned();
            if !prefix.is_empty() {
                check_name(&prefix).map_err(|_| format!("CHATKIT_BLOB_URL `{url}` has an invalid prefix"))?;
            }
            return Ok(BlobLocation::S3 { bucket: bucket.to_owned(), prefix });
        }
        if let Some(path) = url.strip_prefix("file://") {
            return Ok(BlobLocation::Directory(PathBuf::from(path)));
        }
        if url.contains("://") {
            return Err(format!(
                "unsupported CHATKIT_BLOB_URL `{url}`: expected s3://bucket/prefix, file:///path, database or memory://"
            ));
        }
        Ok(BlobLocation::Directory(PathBuf::from(url)))
    }
}

/// Opens the blob store at `location`; `database` keeps blobs in `store`.
pub fn open(location: &BlobLocation, store: Arc<dyn Store>, s3: &S3Options) -> BlobResult<Arc<dyn BlobStore>> {
    Ok(match location {
        BlobLocation::Memory => Arc::new(MemoryBlobs::new()),
        BlobLocation::Database => Arc::new(DatabaseBlobs::new(store)),
        BlobLocation::Directory(path) => Arc::new(DirBlobs::new(path.clone())),
        BlobLocation::S3 { bucket, prefix } => Arc::new(S3Blobs::new(bucket, prefix, s3)?),
    })
}

/// Keeps a secret out of `Debug` output while it is handed around as an option.
pub(crate) fn exposed(secret: &Option<Secret>) -> Option<&str> {
    secret.as_ref().map(Secret::expose)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_their_root() {
        assert!(check_name("attachments/atc_1").is_ok());
        assert!(check_name("a/b.c/d-e_f").is_ok());
        for bad in ["", "/a", "a/", "a//b", "../a", "a/../b", ".", "a b", "a\\b"] {
            assert!(check_name(bad).is_err(), "{bad:?} passes");
        }
    }

    #[test]
    fn locations_parse() {
        assert_eq!(
            BlobLocation::parse("s3://bucket/some/prefix/"),
            Ok(BlobLocation::S3 { bucket: "bucket".into(), prefix: "some/prefix".into() })
        );
        assert_eq!(BlobLocation::parse("s3://b"), Ok(BlobLocation::S3 { bucket: "b".into(), prefix: String::new() }));
        assert_eq!(BlobLocation::parse("database"), Ok(BlobLocation::Database));
        assert_eq!(BlobLocation::parse("/srv/blobs"), Ok(BlobLocation::Directory("/srv/blobs".into())));
        assert_eq!(BlobLocation::parse("file:///srv/blobs"), Ok(BlobLocation::Directory("/srv/blobs".into())));
        assert!(BlobLocation::parse("s3:///prefix").unwrap_err().contains("no bucket"));
        assert!(BlobLocation::parse("gs://bucket").unwrap_err().contains("unsupported"));
    }
}
