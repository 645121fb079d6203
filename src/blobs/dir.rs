//! Blobs as files under a directory: the single-node default (the data
//! directory), or a volume every replica mounts.

use std::io::ErrorKind;
use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;

use super::{check_name, BlobError, BlobResult, BlobStore};

#[derive(Clone, Debug)]
pub struct DirBlobs {
    root: PathBuf,
}

impl DirBlobs {
    pub fn new(root: PathBuf) -> Self {
        DirBlobs { root }
    }

    fn path(&self, name: &str) -> BlobResult<PathBuf> {
        check_name(name)?;
        Ok(self.root.join(name))
    }
}

fn backend(err: std::io::Error) -> BlobError {
    BlobError::Backend(err.to_string())
}

#[async_trait]
impl BlobStore for DirBlobs {
    fn backend(&self) -> &'static str {
        "dir"
    }

    async fn put(&self, name: &str, bytes: Bytes) -> BlobResult<()> {
        let path = self.path(name)?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(backend)?;
        }
        // Written under a name of its own, then linked into place: a reader never
        // sees half a file, and the link fails when the name is taken, even when
        // another process made it a moment ago.
        let partial = path.with_file_name(format!(
            "{}.partial-{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("blob"),
            crate::ids::new_secret()
        ));
        tokio::fs::write(&partial, &bytes).await.map_err(backend)?;
        let linked = tokio::fs::hard_link(&partial, &path).await;
        let _ = tokio::fs::remove_file(&partial).await;
        match linked {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == ErrorKind::AlreadyExists => Err(BlobError::Exists(name.to_owned())),
            Err(err) => Err(backend(err)),
        }
    }

    async fn get(&self, name: &str) -> BlobResult<Option<Bytes>> {
        match tokio::fs::read(self.path(name)?).await {
            Ok(bytes) => Ok(Some(bytes.into())),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
            Err(err) => Err(backend(err)),
        }
    }

    async fn delete(&self, name: &str) -> BlobResult<()> {
        match tokio::fs::remove_file(self.path(name)?).await {
            Err(err) if err.kind() != ErrorKind::NotFound => Err(backend(err)),
            _ => Ok(()),
        }
    }
}
