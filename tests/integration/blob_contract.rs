//! One contract suite for attachment bytes, run against every blob backend:
//! memory, a directory, the database (SQLite and PostgreSQL) and S3 (moto).

use std::sync::Arc;

use bytes::Bytes;
use chatkit_gateway::blobs::{self, BlobError, BlobLocation, BlobStore, S3Options};
use chatkit_gateway::store::{self, Store};

use crate::common::moto::MotoServer;
use crate::common::postgres::TestDatabase;

/// Everything a blob backend promises.
async fn contract(blobs: Arc<dyn BlobStore>) {
    let name = "attachments/atc_contract";
    assert!(blobs.get(name).await.expect("get").is_none(), "{}: a new name holds nothing", blobs.backend());

    let bytes = Bytes::from((0..=255u8).cycle().take(70_000).collect::<Vec<u8>>());
    blobs.put(name, bytes.clone()).await.expect("put");
    assert_eq!(blobs.get(name).await.expect("get").as_ref(), Some(&bytes), "{}: bytes round-trip", blobs.backend());

    // A blob is written once: the second put is refused and changes nothing.
    let again = blobs.put(name, Bytes::from_static(b"other")).await;
    assert!(matches!(again, Err(BlobError::Exists(_))), "{}: second put gave {again:?}", blobs.backend());
    assert_eq!(blobs.get(name).await.expect("get").as_ref(), Some(&bytes));

    // Names are independent; empty blobs are blobs.
    blobs.put("attachments/atc_empty", Bytes::new()).await.expect("put empty");
    assert_eq!(blobs.get("attachments/atc_empty").await.expect("get"), Some(Bytes::new()));
    assert_eq!(blobs.get(name).await.expect("get").as_ref(), Some(&bytes));

    blobs.delete(name).await.expect("delete");
    assert!(blobs.get(name).await.expect("get").is_none(), "{}: deleted", blobs.backend());
    blobs.delete(name).await.expect("deleting a missing blob is not an error");
    // A deleted name can be written again.
    blobs.put(name, Bytes::from_static(b"new")).await.expect("put after delete");
    assert_eq!(blobs.get(name).await.expect("get"), Some(Bytes::from_static(b"new")));

    // Names that could climb out of the backend's root never reach it.
    for bad in ["../escape", "attachments/../x", "/abs", "a//b", ""] {
        let put = blobs.put(bad, Bytes::from_static(b"x")).await;
        assert!(matches!(put, Err(BlobError::InvalidName(_))), "{}: {bad:?} gave {put:?}", blobs.backend());
        assert!(matches!(blobs.get(bad).await, Err(BlobError::InvalidName(_))));
        assert!(matches!(blobs.delete(bad).await, Err(BlobError::InvalidName(_))));
    }
}

fn open(location: BlobLocation, store: Arc<dyn Store>, s3: &S3Options) -> Arc<dyn BlobStore> {
    blobs::open(&location, store, s3).expect("blob store opens")
}

fn no_store() -> Arc<dyn Store> {
    Arc::new(chatkit_gateway::store::MemoryStore::new())
}

#[actix_web::test]
async fn memory_blobs_keep_the_contract() {
    contract(open(BlobLocation::Memory, no_store(), &S3Options::default())).await;
}

#[actix_web::test]
async fn directory_blobs_keep_the_contract() {
    let dir = tempfile::tempdir().expect("temp dir");
    contract(open(BlobLocation::Directory(dir.path().join("blobs")), no_store(), &S3Options::default())).await;
}

#[actix_web::test]
async fn memory_store_blobs_keep_the_contract() {
    contract(open(BlobLocation::Database, no_store(), &S3Options::default())).await;
}

#[actix_web::test]
async fn sqlite_blobs_keep_the_contract() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("chatkit.db").display());
    let store = store::open(&url).await.expect("sqlite store");
    contract(open(BlobLocation::Database, store, &S3Options::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_blobs_keep_the_contract() {
    let database = TestDatabase::create().await;
    let store = store::open(&database.url).await.expect("postgres store");
    contract(open(BlobLocation::Database, store, &S3Options::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_blobs_keep_the_contract() {
    let moto = MotoServer::start().await;
    let location = BlobLocation::S3 { bucket: moto.bucket.clone(), prefix: "contract/run".into() };
    contract(open(location, no_store(), &moto.options())).await;
    // Without a prefix, names are the keys themselves.
    let location = BlobLocation::S3 { bucket: moto.bucket.clone(), prefix: String::new() };
    contract(open(location, no_store(), &moto.options())).await;
}
