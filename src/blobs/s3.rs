//! Blobs in S3-compatible object storage, through `object_store`: the bucket
//! and prefix of `CHATKIT_BLOB_URL=s3://bucket/prefix`, credentials, region and
//! endpoint from the usual AWS variables (or the matching flags).

use async_trait::async_trait;
use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::{check_name, exposed, BlobError, BlobResult, BlobStore};
use crate::secret::Secret;

/// What reaches the S3 client besides the bucket: each unset one is read from
/// the environment by `object_store` (`AWS_*`), as the AWS tools read it.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    pub region: Option<String>,
    /// A server other than AWS's (`http://127.0.0.1:9000`), addressed path-style.
    pub endpoint: Option<String>,
    /// Whether `endpoint` may be plain HTTP.
    pub allow_http: bool,
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
}

pub struct S3Blobs {
    client: AmazonS3,
    prefix: String,
}

impl S3Blobs {
    pub fn new(bucket: &str, prefix: &str, options: &S3Options) -> BlobResult<Self> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(region) = &options.region {
            builder = builder.with_region(region);
        }
        if let Some(endpoint) = &options.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if options.allow_http {
            builder = builder.with_allow_http(true);
        }
        if let Some(key) = exposed(&options.access_key_id) {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = exposed(&options.secret_access_key) {
            builder = builder.with_secret_access_key(secret);
        }
        // The builder's errors name settings, never their values.
        let client = builder.build().map_err(|err| BlobError::Backend(format!("S3 client: {err}")))?;
        Ok(S3Blobs { client, prefix: prefix.to_owned() })
    }

    fn path(&self, name: &str) -> BlobResult<Path> {
        check_name(name)?;
        Ok(if self.prefix.is_empty() { Path::from(name) } else { Path::from(format!("{}/{name}", self.prefix)) })
    }
}

fn backend(err: object_store::Error) -> BlobError {
    BlobError::Backend(err.to_string())
}

#[async_trait]
impl BlobStore for S3Blobs {
    fn backend(&self) -> &'static str {
        "s3"
    }

    async fn put(&self, name: &str, bytes: Bytes) -> BlobResult<()> {
        let path = self.path(name)?;
        // `If-None-Match: *`: the server refuses a name that is taken, atomically.
        let options = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.client.put_opts(&path, PutPayload::from(bytes), options).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Err(BlobError::Exists(name.to_owned()))
            }
            Err(err) => Err(backend(err)),
        }
    }

    async fn get(&self, name: &str) -> BlobResult<Option<Bytes>> {
        let path = self.path(name)?;
        match self.client.get(&path).await {
            Ok(found) => Ok(Some(found.bytes().await.map_err(backend)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(backend(err)),
        }
    }

    async fn delete(&self, name: &str) -> BlobResult<()> {
        match self.client.delete(&self.path(name)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(backend(err)),
        }
    }
}
