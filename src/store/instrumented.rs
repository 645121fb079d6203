//! A store wrapper that times every operation into
//! `chatkit_store_operation_seconds{backend, operation}`, whatever the backend, and traces each as a span.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use serde_json::value::RawValue;
use tracing::Instrument;

use super::{Fence, FencedWrite, ListQuery, SessionRecord, Store, StoreResult, UserId};
use crate::protocol::{Attachment, ListedThread, Page, ThreadItem, ThreadMetadata};
use crate::telemetry::metrics::METRICS;

pub struct Instrumented {
    inner: Arc<dyn Store>,
}

impl Instrumented {
    pub fn wrap(inner: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(Instrumented { inner })
    }

    async fn timed<T>(&self, operation: &'static str, call: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        let started = Instant::now();
        // A client span in the database conventions, below `info`: built only while traces are exported.
        let span = tracing::debug_span!(
            "store",
            otel.name = operation,
            otel.kind = "client",
            db.system.name = db_system(self.inner.backend()),
            db.operation.name = operation,
            otel.status_code = tracing::field::Empty,
        );
        let result = call.instrument(span.clone()).await;
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        METRICS
            .store_duration
            .with_label_values(&[self.inner.backend(), operation])
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

/// The backend as the database conventions name its system.
fn db_system(backend: &'static str) -> &'static str {
    match backend {
        "postgres" => "postgresql",
        other => other,
    }
}

#[async_trait]
impl Store for Instrumented {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn create_thread(&self, user: &UserId, thread: &ThreadMetadata) -> StoreResult<()> {
        self.timed("create_thread", self.inner.create_thread(user, thread)).await
    }

    async fn load_thread(&self, user: &UserId, thread_id: &str) -> StoreResult<ThreadMetadata> {
        self.timed("load_thread", self.inner.load_thread(user, thread_id)).await
    }

    async fn save_thread(&self, user: &UserId, thread: &ThreadMetadata) -> StoreResult<()> {
        self.timed("save_thread", self.inner.save_thread(user, thread)).await
    }

    async fn delete_thread(&self, user: &UserId, thread_id: &str) -> StoreResult<()> {
        self.timed("delete_thread", self.inner.delete_thread(user, thread_id)).await
    }

    async fn list_threads(
        &self,
        user: Option<&UserId>,
        query: &ListQuery,
    ) -> StoreResult<Page<(UserId, ThreadMetadata)>> {
        self.timed("list_threads", self.inner.list_threads(user, query)).await
    }

    async fn list_listed_threads(&self, user: &UserId, query: &ListQuery) -> StoreResult<Page<ListedThread>> {
        self.timed("list_threads", self.inner.list_listed_threads(user, query)).await
    }

    async fn find_thread(&self, thread_id: &str) -> StoreResult<(UserId, ThreadMetadata)> {
        self.timed("find_thread", self.inner.find_thread(thread_id)).await
    }

    async fn list_items(&self, user: &UserId, thread_id: &str, query: &ListQuery) -> StoreResult<Page<ThreadItem>> {
        self.timed("list_items", self.inner.list_items(user, thread_id, query)).await
    }

    async fn recent_items_json(&self, user: &UserId, thread_id: &str, count: usize) -> StoreResult<Vec<Box<RawValue>>> {
        self.timed("recent_items_json", self.inner.recent_items_json(user, thread_id, count)).await
    }

    async fn claim_thread(&self, thread_id: &str) -> StoreResult<Fence> {
        self.timed("claim_thread", self.inner.claim_thread(thread_id)).await
    }

    async fn write_fenced(
        &self,
        user: &UserId,
        thread_id: &str,
        fence: Fence,
        write: FencedWrite<'_>,
    ) -> StoreResult<()> {
        // Labelled as the write it is, fenced or not, so that dashboards see one operation.
        let operation = match write {
            FencedWrite::AddItem(_) => "add_item",
            FencedWrite::SaveItem(_) => "save_item",
            FencedWrite::DeleteItem(_) => "delete_item",
            FencedWrite::SaveThread(_) => "save_thread",
        };
        self.timed(operation, self.inner.write_fenced(user, thread_id, fence, write)).await
    }

    async fn load_item(&self, user: &UserId, thread_id: &str, item_id: &str) -> StoreResult<ThreadItem> {
        self.timed("load_item", self.inner.load_item(user, thread_id, item_id)).await
    }

    async fn add_item(&self, user: &UserId, item: &ThreadItem) -> StoreResult<()> {
        self.timed("add_item", self.inner.add_item(user, item)).await
    }

    async fn save_item(&self, user: &UserId, item: &ThreadItem) -> StoreResult<()> {
        self.timed("save_item", self.inner.save_item(user, item)).await
    }

    async fn delete_item(&self, user: &UserId, thread_id: &str, item_id: &str) -> StoreResult<()> {
        self.timed("delete_item", self.inner.delete_item(user, thread_id, item_id)).await
    }

    async fn save_attachment(&self, user: &UserId, attachment: &Attachment) -> StoreResult<()> {
        self.timed("save_attachment", self.inner.save_attachment(user, attachment)).await
    }

    async fn load_attachment(&self, user: &UserId, attachment_id: &str) -> StoreResult<Attachment> {
        self.timed("load_attachment", self.inner.load_attachment(user, attachment_id)).await
    }

    async fn delete_attachment(&self, user: &UserId, attachment_id: &str) -> StoreResult<()> {
        self.timed("delete_attachment", self.inner.delete_attachment(user, attachment_id)).await
    }

    async fn thread_attachments(&self, user: &UserId, thread_id: &str) -> StoreResult<Vec<String>> {
        self.timed("thread_attachments", self.inner.thread_attachments(user, thread_id)).await
    }

    async fn stale_uploads(&self, before: i64, limit: usize) -> StoreResult<Vec<(UserId, String)>> {
        self.timed("stale_uploads", self.inner.stale_uploads(before, limit)).await
    }

    async fn expire_upload(&self, user: &UserId, attachment_id: &str) -> StoreResult<bool> {
        self.timed("expire_upload", self.inner.expire_upload(user, attachment_id)).await
    }

    async fn put_blob(&self, name: &str, bytes: &[u8]) -> StoreResult<bool> {
        self.timed("put_blob", self.inner.put_blob(name, bytes)).await
    }

    async fn get_blob(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
        self.timed("get_blob", self.inner.get_blob(name)).await
    }

    async fn delete_blob(&self, name: &str) -> StoreResult<()> {
        self.timed("delete_blob", self.inner.delete_blob(name)).await
    }

    async fn create_session(&self, session: &SessionRecord) -> StoreResult<()> {
        self.timed("create_session", self.inner.create_session(session)).await
    }

    async fn load_session(&self, session_id: &str) -> StoreResult<SessionRecord> {
        self.timed("load_session", self.inner.load_session(session_id)).await
    }

    async fn find_session(&self, secret_hash: &str) -> StoreResult<SessionRecord> {
        self.timed("find_session", self.inner.find_session(secret_hash)).await
    }

    async fn cancel_session(&self, session_id: &str) -> StoreResult<SessionRecord> {
        self.timed("cancel_session", self.inner.cancel_session(session_id)).await
    }

    async fn delete_expired_sessions(&self, expired_by: i64, limit: usize) -> StoreResult<usize> {
        self.timed("delete_expired_sessions", self.inner.delete_expired_sessions(expired_by, limit)).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.timed("ping", self.inner.ping()).await
    }
}
