//! Blobs in this process's memory, for tests.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::{check_name, BlobError, BlobResult, BlobStore};

#[derive(Debug, Default)]
pub struct MemoryBlobs {
    blobs: Mutex<HashMap<String, Bytes>>,
}

impl MemoryBlobs {
    pub fn new() -> Self {
        MemoryBlobs::default()
    }

    fn blobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bytes>> {
        // A panic while the lock was held cannot leave the map half-changed: every
        // change is one insert or remove.
        self.blobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl BlobStore for MemoryBlobs {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn put(&self, name: &str, bytes: Bytes) -> BlobResult<()> {
        check_name(name)?;
        let mut blobs = self.blobs();
        if blobs.contains_key(name) {
            return Err(BlobError::Exists(name.to_owned()));
        }
        blobs.insert(name.to_owned(), bytes);
        Ok(())
    }

    async fn get(&self, name: &str) -> BlobResult<Option<Bytes>> {
        check_name(name)?;
        Ok(self.blobs().get(name).cloned())
    }

    async fn delete(&self, name: &str) -> BlobResult<()> {
        check_name(name)?;
        self.blobs().remove(name);
        Ok(())
    }
}
