//! Blobs in the store's database (the `blobs` table): the default with
//! PostgreSQL, so that replicas sharing the database share the bytes too.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{check_name, BlobError, BlobResult, BlobStore};
use crate::store::{Store, StoreError};

pub struct DatabaseBlobs {
    store: Arc<dyn Store>,
}

impl DatabaseBlobs {
    pub fn new(store: Arc<dyn Store>) -> Self {
        DatabaseBlobs { store }
    }
}

fn backend(err: StoreError) -> BlobError {
    BlobError::Backend(err.to_string())
}

#[async_trait]
impl BlobStore for DatabaseBlobs {
    fn backend(&self) -> &'static str {
        "database"
    }

    async fn put(&self, name: &str, bytes: Bytes) -> BlobResult<()> {
        check_name(name)?;
        if self.store.put_blob(name, &bytes).await.map_err(backend)? {
            Ok(())
        } else {
            Err(BlobError::Exists(name.to_owned()))
        }
    }

    async fn get(&self, name: &str) -> BlobResult<Option<Bytes>> {
        check_name(name)?;
        Ok(self.store.get_blob(name).await.map_err(backend)?.map(Bytes::from))
    }

    async fn delete(&self, name: &str) -> BlobResult<()> {
        check_name(name)?;
        self.store.delete_blob(name).await.map_err(backend)
    }
}
