//! The store contract, written once and run against every backend.
//!
//! Each check is an async fn over `Arc<dyn Store>`; the `contract!` macro
//! instantiates every check for the memory store, a SQLite file (fresh per test),
//! an in-memory SQLite database and a PostgreSQL database (fresh per test, on the
//! server `TEST_DATABASE_URL` names), so the backends cannot drift apart. Tests
//! after the macro cover what only concerns opening: URLs, re-opening a file and
//! schema versions and migrations.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::common::postgres::{admin_connection, TestDatabase};
use chatkit_gateway::ids::UserId;
use chatkit_gateway::ids::{new_id, new_secret, IdKind};
use chatkit_gateway::protocol::{
    AssistantMessageContent, Attachment, AttachmentKind, ItemBody, Order, Page, ThreadItem, ThreadMetadata,
    ThreadStatus, Timestamp, UserMessage, UserMessageContent, DEFAULT_PAGE_SIZE,
};
use chatkit_gateway::store::{
    self, Entity, FencedWrite, ListQuery, MemoryStore, PostgresStore, SessionRecord, SqliteStore, Store, StoreError,
};
use sqlx::Connection;

// ---------------------------------------------------------------------------
// Fixtures.

/// A backend under test, with whatever must outlive it (the temp directory of a
/// SQLite file, the database of a PostgreSQL store). Fields drop in order, so the
/// store lets go of its connections before its database is dropped.
struct Backend {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    _database: Option<TestDatabase>,
}

async fn memory_backend() -> Backend {
    Backend { store: Arc::new(MemoryStore::new()), _dir: None, _database: None }
}

async fn sqlite_file_backend() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store = SqliteStore::open(&url).await.unwrap();
    Backend { store: Arc::new(store), _dir: Some(dir), _database: None }
}

async fn sqlite_memory_backend() -> Backend {
    Backend { store: Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap()), _dir: None, _database: None }
}

async fn postgres_backend() -> Backend {
    let database = TestDatabase::create().await;
    let store = PostgresStore::open(&database.url).await.unwrap();
    Backend { store: Arc::new(store), _dir: None, _database: Some(database) }
}

fn alice() -> UserId {
    UserId("alice".to_owned())
}

fn bob() -> UserId {
    UserId("bob".to_owned())
}

fn new_thread() -> ThreadMetadata {
    ThreadMetadata::new(new_id(IdKind::Thread))
}

fn user_message(thread_id: &str, text: &str) -> ThreadItem {
    ThreadItem::new(
        new_id(IdKind::Message),
        thread_id.to_owned(),
        ItemBody::UserMessage(UserMessage {
            content: vec![UserMessageContent::InputText { text: text.to_owned() }],
            attachments: Vec::new(),
            quoted_text: None,
            inference_options: Default::default(),
        }),
    )
}

fn assistant_message(thread_id: &str, text: &str) -> ThreadItem {
    ThreadItem::new(
        new_id(IdKind::Message),
        thread_id.to_owned(),
        ItemBody::AssistantMessage { content: vec![AssistantMessageContent::text(text)] },
    )
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn new_attachment() -> Attachment {
    Attachment {
        id: new_id(IdKind::Attachment),
        name: "report.pdf".to_owned(),
        mime_type: "application/pdf".to_owned(),
        upload_descriptor: None,
        thread_id: None,
        metadata: Some(object(json!({ "bucket": "uploads", "key": "a/b/report.pdf" }))),
        kind: AttachmentKind::File {},
    }
}

fn first(limit: usize, order: Order) -> ListQuery {
    ListQuery::first(limit, order)
}

fn after(id: &str, limit: usize, order: Order) -> ListQuery {
    ListQuery { after: Some(id.to_owned()), before: None, limit, order }
}

fn assert_not_found<T: std::fmt::Debug>(result: Result<T, StoreError>, entity: Entity) {
    match result {
        Err(StoreError::NotFound { entity: found, .. }) => assert_eq!(found, entity),
        other => panic!("expected {entity} not found, got {other:?}"),
    }
}

fn assert_unknown_cursor<T: std::fmt::Debug>(result: Result<T, StoreError>, cursor: &str) {
    match result {
        Err(StoreError::UnknownCursor(id)) => assert_eq!(id, cursor),
        other => panic!("expected unknown cursor `{cursor}`, got {other:?}"),
    }
}

fn thread_ids(page: &Page<(UserId, ThreadMetadata)>) -> Vec<String> {
    page.data.iter().map(|(_, thread)| thread.id.clone()).collect()
}

fn item_ids(page: &Page<ThreadItem>) -> Vec<String> {
    page.data.iter().map(|item| item.id.clone()).collect()
}

/// Walks a whole listing forward with `after`, from its start, checking the page
/// envelope as it goes, and returns the ids in the order seen and the size of
/// each page. Every page but the last must say that more follow, which the sizes
/// show: a wrong `has_more` adds an empty page or ends the walk early.
async fn walk<T, F, Fut>(limit: usize, order: Order, mut load: F, id_of: fn(&T) -> String) -> (Vec<String>, Vec<usize>)
where
    F: FnMut(ListQuery) -> Fut,
    Fut: std::future::Future<Output = Result<Page<T>, StoreError>>,
{
    let mut ids = Vec::new();
    let mut sizes = Vec::new();
    let mut query = first(limit, order);
    loop {
        let page = load(query.clone()).await.unwrap();
        sizes.push(page.data.len());
        ids.extend(page.data.iter().map(id_of));
        if !page.has_more {
            assert_eq!(page.after, None, "a last page carries no cursor");
            return (ids, sizes);
        }
        let last = page.data.last().map(id_of);
        assert_eq!(page.after, last, "the cursor names the page's last record");
        query = ListQuery { after: page.after, ..query };
        assert!(sizes.len() < 1000, "paging does not end");
    }
}

/// Walks a listing of the 45 records `created` (in creation order) both ways
/// in pages of 20: the pages are 20, 20 and 5 long, and hold the records in
/// creation order and then in its reverse.
async fn pages_of_20_both_ways<T, F, Fut>(mut load: F, id_of: fn(&T) -> String, created: &[String])
where
    F: FnMut(ListQuery) -> Fut,
    Fut: std::future::Future<Output = Result<Page<T>, StoreError>>,
{
    let (asc, sizes) = walk(20, Order::Asc, &mut load, id_of).await;
    assert_eq!((sizes, asc.as_slice()), (vec![20, 20, 5], created));
    let (mut desc, sizes) = walk(20, Order::Desc, &mut load, id_of).await;
    desc.reverse();
    assert_eq!((sizes, desc.as_slice()), (vec![20, 20, 5], created));
}

fn hidden_context(thread_id: &str, note: &str) -> ThreadItem {
    ThreadItem::new(
        new_id(IdKind::Message),
        thread_id.to_owned(),
        ItemBody::HiddenContext { content: json!({ "note": note }) },
    )
}

fn sdk_hidden_context(thread_id: &str, note: &str) -> ThreadItem {
    ThreadItem::new(
        new_id(IdKind::SdkHiddenContext),
        thread_id.to_owned(),
        ItemBody::SdkHiddenContext { content: note.to_owned() },
    )
}

/// A session of `user` with settings that exercise JSON: nesting, every kind of
/// number, escapes, a NUL and text beyond ASCII.
fn new_session(user: &str) -> SessionRecord {
    SessionRecord {
        id: format!("cksess_{}", new_secret()),
        // The shape of a hex SHA-256; the store never looks inside.
        secret_hash: format!("{}{}", new_secret(), new_secret()),
        user: user.to_owned(),
        created_at: 1_760_000_000,
        expires_at: 1_760_000_600,
        cancelled: false,
        settings: json!({
            "workflow": {
                "id": "wf_68df4b13",
                "version": "3",
                "state_variables": { "plan": "pro", "seats": 12, "ratio": 0.1, "tags": ["a", "b\"c", "\u{0}nul"] },
                "tracing": { "enabled": true }
            },
            "chatkit_configuration": {
                "automatic_thread_titling": { "enabled": false },
                "file_upload": { "enabled": true, "max_file_size": 512, "max_files": 10 },
                "history": { "enabled": true, "recent_threads": null }
            },
            "rate_limits": { "max_requests_per_1_minute": 10 },
            "big": 9_007_199_254_740_993_u64,
            "negative": -42,
            "exponent": 1.5e300,
            "text": "ünïcødé 🚀 \n\t",
            "empty": {},
            "none": []
        }),
    }
}

fn list_after(id: &str, limit: usize, order: Order) -> ListQuery {
    ListQuery { after: Some(id.to_owned()), before: None, limit, order }
}

fn list_before(id: &str, limit: usize, order: Order) -> ListQuery {
    ListQuery { after: None, before: Some(id.to_owned()), limit, order }
}

fn list_between(after: &str, before: &str, limit: usize, order: Order) -> ListQuery {
    ListQuery { after: Some(after.to_owned()), before: Some(before.to_owned()), limit, order }
}

fn reversed(ids: &[String]) -> Vec<String> {
    ids.iter().rev().cloned().collect()
}

/// Walks an admin listing backward with `before`, from the record `end` toward
/// the start, and returns the ids before `end` in listing order and the size of
/// each page, nearest `end` first.
async fn walk_before<T, F, Fut>(
    limit: usize,
    order: Order,
    end: &str,
    mut load: F,
    id_of: fn(&T) -> String,
) -> (Vec<String>, Vec<usize>)
where
    F: FnMut(ListQuery) -> Fut,
    Fut: std::future::Future<Output = Result<Page<T>, StoreError>>,
{
    let mut pages = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor = end.to_owned();
    loop {
        let page = load(list_before(&cursor, limit, order)).await.unwrap();
        assert_eq!(page.after, None, "a page read backward names no cursor after it");
        let ids: Vec<String> = page.data.iter().map(id_of).collect();
        sizes.push(ids.len());
        let first = ids.first().cloned();
        pages.push(ids);
        if !page.has_more {
            pages.reverse();
            return (pages.concat(), sizes);
        }
        cursor = first.expect("a page with more before it holds records");
        assert!(sizes.len() < 1000, "paging does not end");
    }
}

/// Creates `count` threads, owned by Alice and Bob in turn, all with one
/// timestamp and with ids that sort against creation order, so that neither can
/// stand in for it. Returns the owners and ids in creation order.
async fn seed_interleaved_threads(store: &Arc<dyn Store>, count: usize) -> Vec<(UserId, String)> {
    let stamp = Timestamp::now();
    let mut created = Vec::new();
    for n in 0..count {
        let owner = if n % 2 == 0 { alice() } else { bob() };
        let mut thread = ThreadMetadata::new(format!("thr_{:03}", 999 - n));
        thread.created_at = stamp;
        store.create_thread(&owner, &thread).await.unwrap();
        created.push((owner, thread.id));
    }
    created
}

fn owned_by(created: &[(UserId, String)], user: &UserId) -> Vec<String> {
    created.iter().filter(|(owner, _)| owner == user).map(|(_, id)| id.clone()).collect()
}

// ---------------------------------------------------------------------------
// The checks.

async fn ping_answers(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
}

async fn thread_round_trips_and_updates(store: Arc<dyn Store>) {
    let user = alice();
    let mut thread = new_thread();
    thread.allowed_image_domains = Some(vec!["example.com".to_owned()]);
    store.create_thread(&user, &thread).await.unwrap();
    assert_eq!(store.load_thread(&user, &thread.id).await.unwrap(), thread);

    thread.title = Some("Travel plans".to_owned());
    thread.status = ThreadStatus::Locked { reason: Some("moderation".to_owned()) };
    thread.metadata = object(json!({ "previous_response_id": "resp_1", "n": 3 }));
    store.save_thread(&user, &thread).await.unwrap();
    assert_eq!(store.load_thread(&user, &thread.id).await.unwrap(), thread);

    thread.status = ThreadStatus::Closed { reason: None };
    store.save_thread(&user, &thread).await.unwrap();
    assert_eq!(store.load_thread(&user, &thread.id).await.unwrap().status, ThreadStatus::Closed { reason: None });
}

async fn find_thread_names_the_owner(store: Arc<dyn Store>) {
    let mut thread = new_thread();
    thread.title = Some("Owned".to_owned());
    store.create_thread(&bob(), &thread).await.unwrap();
    let (owner, found) = store.find_thread(&thread.id).await.unwrap();
    assert_eq!((owner, found), (bob(), thread));
    assert_not_found(store.find_thread("thr_missing").await.map(|(_, t)| t), Entity::Thread);
}

async fn creating_an_existing_thread_is_duplicate(store: Arc<dyn Store>) {
    let thread = new_thread();
    store.create_thread(&alice(), &thread).await.unwrap();
    match store.create_thread(&alice(), &thread).await {
        Err(StoreError::Duplicate { entity: Entity::Thread, id }) => assert_eq!(id, thread.id),
        other => panic!("expected duplicate, got {other:?}"),
    }
    // Thread ids are global: another user cannot take the id either, and the
    // original thread stays with its owner.
    assert!(matches!(
        store.create_thread(&bob(), &thread).await,
        Err(StoreError::Duplicate { entity: Entity::Thread, .. })
    ));
    assert_not_found(store.load_thread(&bob(), &thread.id).await, Entity::Thread);
    store.load_thread(&alice(), &thread.id).await.unwrap();
}

async fn missing_threads_are_not_found(store: Arc<dyn Store>) {
    let thread = new_thread();
    assert_not_found(store.load_thread(&alice(), &thread.id).await, Entity::Thread);
    assert_not_found(store.save_thread(&alice(), &thread).await, Entity::Thread);
    assert_not_found(store.delete_thread(&alice(), &thread.id).await, Entity::Thread);
    assert_not_found(store.list_items(&alice(), &thread.id, &first(10, Order::Asc)).await, Entity::Thread);
    assert_not_found(store.add_item(&alice(), &user_message(&thread.id, "hi")).await, Entity::Thread);
    assert_not_found(store.save_item(&alice(), &user_message(&thread.id, "hi")).await, Entity::Thread);
    // Saving a missing thread must not create it.
    assert_not_found(store.load_thread(&alice(), &thread.id).await, Entity::Thread);
}

async fn deleting_a_thread_removes_its_items(store: Arc<dyn Store>) {
    let user = alice();
    let thread = new_thread();
    let other = new_thread();
    store.create_thread(&user, &thread).await.unwrap();
    store.create_thread(&user, &other).await.unwrap();
    let item = user_message(&thread.id, "hello");
    store.add_item(&user, &item).await.unwrap();
    store.add_item(&user, &assistant_message(&thread.id, "hi there")).await.unwrap();
    let kept = user_message(&other.id, "elsewhere");
    store.add_item(&user, &kept).await.unwrap();

    store.delete_thread(&user, &thread.id).await.unwrap();
    assert_not_found(store.load_thread(&user, &thread.id).await, Entity::Thread);
    assert_not_found(store.list_items(&user, &thread.id, &first(10, Order::Asc)).await, Entity::Thread);
    assert_not_found(store.load_item(&user, &thread.id, &item.id).await, Entity::Item);
    assert_not_found(store.delete_thread(&user, &thread.id).await, Entity::Thread);
    assert_eq!(
        thread_ids(&store.list_threads(Some(&user), &first(10, Order::Asc)).await.unwrap()),
        vec![other.id.clone()]
    );

    // A thread re-created under the same id starts empty: the old items are gone, not hidden.
    store.create_thread(&user, &thread).await.unwrap();
    let page = store.list_items(&user, &thread.id, &first(10, Order::Asc)).await.unwrap();
    assert!(page.data.is_empty() && !page.has_more && page.after.is_none(), "{page:?}");
    store.add_item(&user, &item).await.unwrap();

    // The other thread is untouched.
    assert_eq!(store.load_item(&user, &other.id, &kept.id).await.unwrap(), kept);
}

async fn another_users_records_are_not_found(store: Arc<dyn Store>) {
    let (owner, stranger) = (alice(), bob());
    let mut thread = new_thread();
    store.create_thread(&owner, &thread).await.unwrap();
    let item = user_message(&thread.id, "private");
    store.add_item(&owner, &item).await.unwrap();
    let attachment = new_attachment();
    store.save_attachment(&owner, &attachment).await.unwrap();

    assert_not_found(store.load_thread(&stranger, &thread.id).await, Entity::Thread);
    thread.title = Some("hijacked".to_owned());
    assert_not_found(store.save_thread(&stranger, &thread).await, Entity::Thread);
    assert_not_found(store.delete_thread(&stranger, &thread.id).await, Entity::Thread);
    assert_not_found(store.list_items(&stranger, &thread.id, &first(10, Order::Asc)).await, Entity::Thread);
    assert_not_found(store.list_items(&stranger, &thread.id, &after(&item.id, 10, Order::Asc)).await, Entity::Thread);
    assert_not_found(store.add_item(&stranger, &user_message(&thread.id, "intrusion")).await, Entity::Thread);
    let mut replaced = item.clone();
    replaced.body = assistant_message(&thread.id, "overwritten").body;
    assert_not_found(store.save_item(&stranger, &replaced).await, Entity::Thread);
    assert_not_found(store.load_item(&stranger, &thread.id, &item.id).await, Entity::Item);
    assert_not_found(store.delete_item(&stranger, &thread.id, &item.id).await, Entity::Item);

    assert_not_found(store.load_attachment(&stranger, &attachment.id).await, Entity::Attachment);
    assert_not_found(store.delete_attachment(&stranger, &attachment.id).await, Entity::Attachment);
    let mut taken = attachment.clone();
    taken.name = "stolen.pdf".to_owned();
    assert_not_found(store.save_attachment(&stranger, &taken).await, Entity::Attachment);

    let listing = store.list_threads(Some(&stranger), &first(10, Order::Desc)).await.unwrap();
    assert!(listing.data.is_empty() && !listing.has_more, "{listing:?}");

    // Nothing the stranger tried changed the owner's records.
    let mut original = thread.clone();
    original.title = None;
    assert_eq!(store.load_thread(&owner, &thread.id).await.unwrap(), original);
    let items = store.list_items(&owner, &thread.id, &first(10, Order::Asc)).await.unwrap();
    assert_eq!(items.data, vec![item]);
    assert_eq!(store.load_attachment(&owner, &attachment.id).await.unwrap(), attachment);
}

async fn threads_list_per_user_in_creation_order(store: Arc<dyn Store>) {
    // Ids that sort against creation order and one shared timestamp, so neither
    // the id nor `created_at` can stand in for insertion order.
    let stamp = Timestamp::now();
    let ids = ["thr_c", "thr_a", "thr_e", "thr_b", "thr_d"];
    for (index, id) in ids.iter().enumerate() {
        let mut thread = ThreadMetadata::new((*id).to_owned());
        thread.created_at = stamp;
        store.create_thread(&alice(), &thread).await.unwrap();
        // Another user's threads interleave in time but never show in Alice's listing.
        let mut foreign = ThreadMetadata::new(format!("thr_bob_{index}"));
        foreign.created_at = stamp;
        store.create_thread(&bob(), &foreign).await.unwrap();
    }
    let asc = store.list_threads(Some(&alice()), &first(10, Order::Asc)).await.unwrap();
    assert_eq!(thread_ids(&asc), ids);
    assert!(!asc.has_more && asc.after.is_none());
    let desc = store.list_threads(Some(&alice()), &first(10, Order::Desc)).await.unwrap();
    let mut reversed = ids.to_vec();
    reversed.reverse();
    assert_eq!(thread_ids(&desc), reversed);

    // Saving a thread does not move it.
    let mut moved = store.load_thread(&alice(), "thr_a").await.unwrap();
    moved.title = Some("renamed".to_owned());
    store.save_thread(&alice(), &moved).await.unwrap();
    assert_eq!(thread_ids(&store.list_threads(Some(&alice()), &first(10, Order::Asc)).await.unwrap()), ids);

    let bobs = store.list_threads(Some(&bob()), &first(10, Order::Asc)).await.unwrap();
    assert_eq!(thread_ids(&bobs), (0..5).map(|i| format!("thr_bob_{i}")).collect::<Vec<_>>());
}

async fn threads_page_through_45(store: Arc<dyn Store>) {
    let user = alice();
    let mut created = Vec::new();
    for _ in 0..45 {
        let thread = new_thread();
        store.create_thread(&user, &thread).await.unwrap();
        created.push(thread.id);
    }
    // Another user's threads must not leak into the pages.
    store.create_thread(&bob(), &new_thread()).await.unwrap();

    let load = |query: ListQuery| {
        let store = store.clone();
        let user = user.clone();
        async move { store.list_threads(Some(&user), &query).await }
    };
    pages_of_20_both_ways(load, |(_, thread): &(UserId, ThreadMetadata)| thread.id.clone(), &created).await;
}

/// The newest items as stored JSON: oldest first, hidden ones included, equal to the parsed items, scoped like
/// every other read.
async fn recent_items_json_are_the_newest_as_stored(store: Arc<dyn Store>) {
    let user = alice();
    let thread = new_thread();
    let neighbour = new_thread();
    store.create_thread(&user, &thread).await.unwrap();
    store.create_thread(&user, &neighbour).await.unwrap();
    assert!(store.recent_items_json(&user, &thread.id, 5).await.unwrap().is_empty(), "a thread without items");
    for n in 0..7 {
        let item = match n {
            3 => hidden_context(&thread.id, "between"),
            _ => user_message(&thread.id, &format!("message {n}")),
        };
        store.add_item(&user, &item).await.unwrap();
        store.add_item(&user, &user_message(&neighbour.id, "noise")).await.unwrap();
    }
    let all = store.list_items(&user, &thread.id, &first(100, Order::Asc)).await.unwrap().data;
    let as_json = |items: &[ThreadItem]| items.iter().map(|item| serde_json::to_value(item).unwrap()).collect();
    let recent = |count| {
        let (store, user, thread_id) = (store.clone(), user.clone(), thread.id.clone());
        async move {
            let raw = store.recent_items_json(&user, &thread_id, count).await.unwrap();
            raw.iter().map(|item| serde_json::from_str(item.get()).unwrap()).collect::<Vec<Value>>()
        }
    };
    let expected: Vec<Value> = as_json(&all[2..]);
    assert_eq!(recent(5).await, expected);
    let expected: Vec<Value> = as_json(&all);
    assert_eq!(recent(50).await, expected, "fewer items than asked for: all of them");
    assert_not_found(store.recent_items_json(&bob(), &thread.id, 5).await, Entity::Thread);
    assert_not_found(store.recent_items_json(&user, "thr_missing", 5).await, Entity::Thread);
}

/// Claims number a thread's jobs; a write under an older claim than the newest is refused and changes nothing, one
/// under the newest lands as its unfenced namesake would.
async fn fenced_writes_land_only_under_the_newest_claim(store: Arc<dyn Store>) {
    let user = alice();
    let mut thread = new_thread();
    store.create_thread(&user, &thread).await.unwrap();
    let older = store.claim_thread(&thread.id).await.unwrap();
    let kept = user_message(&thread.id, "under the older claim");
    store.write_fenced(&user, &thread.id, older, FencedWrite::AddItem(&kept)).await.unwrap();
    let newer = store.claim_thread(&thread.id).await.unwrap();
    assert!(newer.0 > older.0, "{newer:?} follows {older:?}");

    let stale = user_message(&thread.id, "under the stale claim");
    thread.title = Some("stale".into());
    for write in [
        FencedWrite::AddItem(&stale),
        FencedWrite::SaveItem(&stale),
        FencedWrite::DeleteItem(&kept.id),
        FencedWrite::SaveThread(&thread),
    ] {
        let refused = store.write_fenced(&user, &thread.id, older, write).await;
        assert!(matches!(&refused, Err(StoreError::Fenced { thread_id }) if *thread_id == thread.id), "{refused:?}");
    }
    let items = store.list_items(&user, &thread.id, &first(10, Order::Asc)).await.unwrap();
    assert_eq!(item_ids(&items), vec![kept.id.clone()], "nothing of the stale writes landed");
    assert_eq!(store.load_thread(&user, &thread.id).await.unwrap().title, None);

    let mut saved = user_message(&thread.id, "under the newest claim");
    store.write_fenced(&user, &thread.id, newer, FencedWrite::AddItem(&saved)).await.unwrap();
    let duplicate = store.write_fenced(&user, &thread.id, newer, FencedWrite::AddItem(&saved)).await;
    assert!(matches!(duplicate, Err(StoreError::Duplicate { .. })), "{duplicate:?}");
    saved.body = user_message(&thread.id, "edited").body;
    store.write_fenced(&user, &thread.id, newer, FencedWrite::SaveItem(&saved)).await.unwrap();
    store.write_fenced(&user, &thread.id, newer, FencedWrite::DeleteItem(&kept.id)).await.unwrap();
    assert_not_found(
        store.write_fenced(&user, &thread.id, newer, FencedWrite::DeleteItem(&kept.id)).await,
        Entity::Item,
    );
    thread.title = Some("newest".into());
    store.write_fenced(&user, &thread.id, newer, FencedWrite::SaveThread(&thread)).await.unwrap();
    let items = store.list_items(&user, &thread.id, &first(10, Order::Asc)).await.unwrap();
    assert_eq!(item_ids(&items), [saved.id.clone()]);
    assert_eq!(items.data[0].body, saved.body);
    assert_eq!(store.load_thread(&user, &thread.id).await.unwrap().title.as_deref(), Some("newest"));

    // Scoped like every other write; claims by id alone.
    assert_not_found(
        store.write_fenced(&bob(), &thread.id, newer, FencedWrite::SaveThread(&thread)).await,
        Entity::Thread,
    );
    assert_not_found(store.claim_thread("thr_missing").await, Entity::Thread);
}

async fn items_page_through_45(store: Arc<dyn Store>) {
    let user = alice();
    let thread = new_thread();
    let neighbour = new_thread();
    store.create_thread(&user, &thread).await.unwrap();
    store.create_thread(&user, &neighbour).await.unwrap();
    let mut added = Vec::new();
    for n in 0..45 {
        let item = if n % 2 == 0 {
            user_message(&thread.id, &format!("question {n}"))
        } else {
            assistant_message(&thread.id, &format!("answer {n}"))
        };
        store.add_item(&user, &item).await.unwrap();
        // Items of another thread interleave in time but never show in this one.
        store.add_item(&user, &user_message(&neighbour.id, "noise")).await.unwrap();
        added.push(item.id);
    }

    let load = |query: ListQuery| {
        let store = store.clone();
        let user = user.clone();
        let thread_id = thread.id.clone();
        async move { store.list_items(&user, &thread_id, &query).await }
    };
    pages_of_20_both_ways(load, |item: &ThreadItem| item.id.clone(), &added).await;
}

async fn page_envelope_is_exact(store: Arc<dyn Store>) {
    let user = alice();
    let thread = new_thread();
    store.create_thread(&user, &thread).await.unwrap();
    let mut ids = Vec::new();
    for n in 0..4 {
        let item = user_message(&thread.id, &format!("m{n}"));
        store.add_item(&user, &item).await.unwrap();
        ids.push(item.id);
    }

    // A page that holds exactly the rest has no more and no cursor.
    let full = store.list_items(&user, &thread.id, &first(4, Order::Asc)).await.unwrap();
    assert_eq!((item_ids(&full), full.has_more, full.after), (ids.clone(), false, None));

    // A partial page names its last record.
    let part = store.list_items(&user, &thread.id, &first(3, Order::Desc)).await.unwrap();
    assert_eq!(item_ids(&part), vec![ids[3].clone(), ids[2].clone(), ids[1].clone()]);
    assert!(part.has_more);
    assert_eq!(part.after.as_deref(), Some(ids[1].as_str()));

    // A cursor on the last record of the order gives an empty, final page, not an error.
    let end = store.list_items(&user, &thread.id, &after(&ids[3], 5, Order::Asc)).await.unwrap();
    assert!(end.data.is_empty() && !end.has_more && end.after.is_none(), "{end:?}");
    let end = store.list_items(&user, &thread.id, &after(&ids[0], 5, Order::Desc)).await.unwrap();
    assert!(end.data.is_empty() && !end.has_more && end.after.is_none(), "{end:?}");

    // A middle cursor continues strictly after it, in either order.
    let rest = store.list_items(&user, &thread.id, &after(&ids[1], 5, Order::Asc)).await.unwrap();
    assert_eq!(item_ids(&rest), vec![ids[2].clone(), ids[3].clone()]);
    let rest = store.list_items(&user, &thread.id, &after(&ids[1], 5, Order::Desc)).await.unwrap();
    assert_eq!(item_ids(&rest), vec![ids[0].clone()]);

    // An empty thread lists as an empty page.
    let empty = new_thread();
    store.create_thread(&user, &empty).await.unwrap();
    let page = store.list_items(&user, &empty.id, &first(5, Order::Desc)).await.unwrap();
    assert_eq!(page, Page::default());

    // The same holds for threads: the last thread as a cursor ends the listing.
    let threads = store.list_threads(Some(&user), &first(10, Order::Asc)).await.unwrap();
    assert_eq!(thread_ids(&threads), vec![thread.id.clone(), empty.id.clone()]);
    let end = store.list_threads(Some(&user), &after(&empty.id, 10, Order::Asc)).await.unwrap();
    assert_eq!(end, Page::default());
    let back = store.list_threads(Some(&user), &after(&empty.id, 10, Order::Desc)).await.unwrap();
    assert_eq!(thread_ids(&back), vec![thread.id.clone()]);
}

async fn zero_limit_means_the_default_page_size(store: Arc<dyn Store>) {
    let user = alice();
    let thread = new_thread();
    store.create_thread(&user, &thread).await.unwrap();
    for n in 0..DEFAULT_PAGE_SIZE + 1 {
        store.add_item(&user, &user_message(&thread.id, &n.to_string())).await.unwrap();
    }
    let page = store.list_items(&user, &thread.id, &first(0, Order::Asc)).await.unwrap();
    assert_eq!(page.data.len(), DEFAULT_PAGE_SIZE);
    assert!(page.has_more);
}

async fn unknown_cursors_are_rejected(store: Arc<dyn Store>) {
    let user = alice();
    let thread = new_thread();
    let other = new_thread();
    store.create_thread(&user, &thread).await.unwrap();
    store.create_thread(&user, &other).await.unwrap();
    let item = user_message(&thread.id, "here");
    store.add_item(&user, &item).await.unwrap();
    let elsewhere = user_message(&other.id, "there");
    store.add_item(&user, &elsewhere).await.unwrap();
    let foreign = new_thread();
    store.create_thread(&bob(), &foreign).await.unwrap();

    for order in [Order::Asc, Order::Desc] {
        // Threads: an id nobody has, and another user's thread.
        assert_unknown_cursor(store.list_threads(Some(&user), &after("thr_nope", 5, order)).await, "thr_nope");
        assert_unknown_cursor(store.list_threads(Some(&user), &after(&foreign.id, 5, order)).await, &foreign.id);
        // A user with no threads at all still rejects a cursor.
        let nobody = UserId("nobody".to_owned());
        assert_unknown_cursor(store.list_threads(Some(&nobody), &after(&thread.id, 5, order)).await, &thread.id);

        // Items: an id nobody has, another thread's item, and a thread id.
        assert_unknown_cursor(store.list_items(&user, &thread.id, &after("msg_nope", 5, order)).await, "msg_nope");
        assert_unknown_cursor(
            store.list_items(&user, &thread.id, &after(&elsewhere.id, 5, order)).await,
            &elsewhere.id,
        );
        assert_unknown_cursor(store.list_items(&user, &thread.id, &after(&thread.id, 5, order)).await, &thread.id);
    }

    // A deleted record is no longer a cursor.
    store.delete_item(&user, &thread.id, &item.id).await.unwrap();
    assert_unknown_cursor(store.list_items(&user, &thread.id, &after(&item.id, 5, Order::Asc)).await, &item.id);
}

async fn add_item_appends_and_rejects_duplicates(store: Arc<dyn Store>) {
    let user = alice();
    let thread = new_thread();
    let other = new_thread();
    store.create_thread(&user, &thread).await.unwrap();
    store.create_thread(&user, &other).await.unwrap();

    let question = user_message(&thread.id, "What is 2+2?");
    let answer = assistant_message(&thread.id, "4");
    store.add_item(&user, &question).await.unwrap();
    store.add_item(&user, &answer).await.unwrap();
    assert_eq!(store.load_item(&user, &thread.id, &question.id).await.unwrap(), question);
    assert_eq!(store.load_item(&user, &thread.id, &answer.id).await.unwrap(), answer);

    let mut again = question.clone();
    again.body = assistant_message(&thread.id, "changed").body;
    match store.add_item(&user, &again).await {
        Err(StoreError::Duplicate { entity: Entity::Item, id }) => assert_eq!(id, question.id),
        other => panic!("expected duplicate, got {other:?}"),
    }
    // The rejected add changed nothing.
    assert_eq!(store.load_item(&user, &thread.id, &question.id).await.unwrap(), question);

    // Item ids are unique per thread: the same id may live in another thread.
    let mut twin = question.clone();
    twin.thread_id = other.id.clone();
    store.add_item(&user, &twin).await.unwrap();
    assert_eq!(store.load_item(&user, &other.id, &question.id).await.unwrap(), twin);

    // Items of one thread never show in another.
    let page = store.list_items(&user, &thread.id, &first(10, Order::Asc)).await.unwrap();
    assert_eq!(page.data, vec![question.clone(), answer.clone()]);
    let page = store.list_items(&user, &other.id, &first(10, Order::Asc)).await.unwrap();
    assert_eq!(page.data, vec![twin.clone()]);
    assert_not_found(store.load_item(&user, &other.id, &answer.id).await, Entity::Item);
    assert_not_found(store.delete_item(&user, &other.id, &answer.id).await, Entity::Item);
    store.load_item(&user, &thread.id, &answer.id).await.unwrap();
}

async fn save_item_replaces_in_place_or_appends(store: Arc<dyn Store>) {
    let user = alice();
    let thread = new_thread();
    store.create_thread(&user, &thread).await.unwrap();
    let a = user_message(&thread.id, "a");
    let mut b = assistant_message(&thread.id, "b (streaming)");
    let c = user_message(&thread.id, "c");
    for item in [&a, &b, &c] {
        store.add_item(&user, item).await.unwrap();
    }

    b.body = ItemBody::AssistantMessage { content: vec![AssistantMessageContent::text("b (final)")] };
    store.save_item(&user, &b).await.unwrap();
    assert_eq!(store.load_item(&user, &thread.id, &b.id).await.unwrap(), b);
    let page = store.list_items(&user, &thread.id, &first(10, Order::Asc)).await.unwrap();
    assert_eq!(page.data, vec![a.clone(), b.clone(), c.clone()]);

    let d = assistant_message(&thread.id, "d");
    store.save_item(&user, &d).await.unwrap();
    let page = store.list_items(&user, &thread.id, &first(10, Order::Desc)).await.unwrap();
    assert_eq!(page.data, vec![d, c, b, a]);
}

async fn items_load_and_delete(store: Arc<dyn Store>) {
    let user = alice();
    let thread = new_thread();
    store.create_thread(&user, &thread).await.unwrap();
    let keep = user_message(&thread.id, "keep");
    let dropped = assistant_message(&thread.id, "drop");
    store.add_item(&user, &keep).await.unwrap();
    store.add_item(&user, &dropped).await.unwrap();

    assert_not_found(store.load_item(&user, &thread.id, "msg_missing").await, Entity::Item);
    assert_not_found(store.delete_item(&user, &thread.id, "msg_missing").await, Entity::Item);
    assert_not_found(store.load_item(&user, "thr_missing", &keep.id).await, Entity::Item);
    assert_not_found(store.delete_item(&user, "thr_missing", &keep.id).await, Entity::Item);

    store.delete_item(&user, &thread.id, &dropped.id).await.unwrap();
    assert_not_found(store.load_item(&user, &thread.id, &dropped.id).await, Entity::Item);
    assert_not_found(store.delete_item(&user, &thread.id, &dropped.id).await, Entity::Item);
    let page = store.list_items(&user, &thread.id, &first(10, Order::Asc)).await.unwrap();
    assert_eq!(page.data, vec![keep.clone()]);

    // A deleted id can be added again; it goes to the end.
    let late = user_message(&thread.id, "late");
    store.add_item(&user, &late).await.unwrap();
    store.add_item(&user, &dropped).await.unwrap();
    let page = store.list_items(&user, &thread.id, &first(10, Order::Asc)).await.unwrap();
    assert_eq!(page.data, vec![keep, late, dropped]);
}

async fn items_round_trip_with_attachments(store: Arc<dyn Store>) {
    let user = alice();
    let thread = new_thread();
    store.create_thread(&user, &thread).await.unwrap();
    let mut attachment = new_attachment();
    attachment.thread_id = Some(thread.id.clone());
    let mut item = user_message(&thread.id, "see attached");
    if let ItemBody::UserMessage(message) = &mut item.body {
        message.attachments.push(attachment);
        message.quoted_text = Some("quoted".to_owned());
        message.content.push(UserMessageContent::InputTag {
            id: "tag_1".to_owned(),
            text: "@doc".to_owned(),
            data: object(json!({ "doc": 7 })),
            group: None,
            interactive: true,
        });
    }
    store.add_item(&user, &item).await.unwrap();
    assert_eq!(store.load_item(&user, &thread.id, &item.id).await.unwrap(), item);
    let page = store.list_items(&user, &thread.id, &first(1, Order::Desc)).await.unwrap();
    assert_eq!(page.data, vec![item]);
}

async fn attachments_upsert_load_and_delete(store: Arc<dyn Store>) {
    let user = alice();
    let mut attachment = new_attachment();
    assert_not_found(store.load_attachment(&user, &attachment.id).await, Entity::Attachment);

    store.save_attachment(&user, &attachment).await.unwrap();
    let loaded = store.load_attachment(&user, &attachment.id).await.unwrap();
    assert_eq!(loaded, attachment);
    assert_eq!(loaded.metadata.as_ref().and_then(|m| m.get("bucket")), Some(&json!("uploads")));

    attachment.kind = AttachmentKind::Image { preview_url: "https://cdn.example.com/p.png".to_owned() };
    attachment.mime_type = "image/png".to_owned();
    attachment.metadata = Some(object(json!({ "bucket": "images" })));
    store.save_attachment(&user, &attachment).await.unwrap();
    assert_eq!(store.load_attachment(&user, &attachment.id).await.unwrap(), attachment);

    store.delete_attachment(&user, &attachment.id).await.unwrap();
    assert_not_found(store.load_attachment(&user, &attachment.id).await, Entity::Attachment);
    assert_not_found(store.delete_attachment(&user, &attachment.id).await, Entity::Attachment);

    // After deletion the id is free again, for any user.
    store.save_attachment(&bob(), &attachment).await.unwrap();
    assert_eq!(store.load_attachment(&bob(), &attachment.id).await.unwrap(), attachment);
}

async fn attachments_by_thread_and_stale_uploads(store: Arc<dyn Store>) {
    let (user, thread) = (alice(), new_thread());
    store.create_thread(&user, &thread).await.unwrap();
    let loose = new_attachment();
    let mut held = new_attachment();
    store.save_attachment(&user, &loose).await.unwrap();
    store.save_attachment(&user, &held).await.unwrap();
    held.thread_id = Some(thread.id.clone());
    store.save_attachment(&user, &held).await.unwrap();
    assert_eq!(store.thread_attachments(&user, &thread.id).await.unwrap(), vec![held.id.clone()]);
    assert!(store.thread_attachments(&bob(), &thread.id).await.unwrap().is_empty());

    // Stale: unattached and created before the cut-off; nothing is older than the past.
    let future = chatkit_gateway_now() + 60;
    let stale = store.stale_uploads(future, 100).await.unwrap();
    assert!(stale.contains(&(user.clone(), loose.id.clone())), "{stale:?}");
    assert!(!stale.iter().any(|(_, id)| *id == held.id), "an attached upload is never stale");
    assert!(!store.stale_uploads(0, 100).await.unwrap().iter().any(|(_, id)| *id == loose.id));
    assert!(store.stale_uploads(future, 0).await.unwrap().is_empty());

    // Expiring deletes only unattached uploads, and only the owner's.
    assert!(!store.expire_upload(&bob(), &loose.id).await.unwrap());
    assert!(!store.expire_upload(&user, &held.id).await.unwrap());
    assert!(store.expire_upload(&user, &loose.id).await.unwrap());
    assert_not_found(store.load_attachment(&user, &loose.id).await, Entity::Attachment);
    assert_eq!(store.load_attachment(&user, &held.id).await.unwrap(), held);
}

fn chatkit_gateway_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

async fn sessions_round_trip_and_find_by_secret(store: Arc<dyn Store>) {
    let session = new_session("alice");
    store.create_session(&session).await.unwrap();
    let loaded = store.load_session(&session.id).await.unwrap();
    assert_eq!(loaded, session);
    // The settings come back as the very same JSON, not merely an equal-looking one.
    assert_eq!(serde_json::to_string(&loaded.settings).unwrap(), serde_json::to_string(&session.settings).unwrap());
    assert_eq!(loaded.settings["big"].as_u64(), Some(9_007_199_254_740_993));
    assert_eq!(store.find_session(&session.secret_hash).await.unwrap(), session);

    // Sessions stand apart, even for one user, and settings may be any JSON value.
    let mut other = new_session("alice");
    other.settings = Value::Null;
    other.created_at = 0;
    other.expires_at = i64::MAX;
    store.create_session(&other).await.unwrap();
    let mut third = new_session("bob");
    third.settings = json!("just a string");
    store.create_session(&third).await.unwrap();
    for expected in [&session, &other, &third] {
        assert_eq!(&store.load_session(&expected.id).await.unwrap(), expected);
        assert_eq!(&store.find_session(&expected.secret_hash).await.unwrap(), expected);
    }
}

async fn sessions_reject_duplicate_ids_and_secrets(store: Arc<dyn Store>) {
    let session = new_session("alice");
    store.create_session(&session).await.unwrap();

    let mut same_id = new_session("bob");
    same_id.id = session.id.clone();
    match store.create_session(&same_id).await {
        Err(StoreError::Duplicate { entity: Entity::Session, id }) => assert_eq!(id, session.id),
        other => panic!("expected a duplicate session, got {other:?}"),
    }

    let mut same_secret = new_session("bob");
    same_secret.secret_hash = session.secret_hash.clone();
    match store.create_session(&same_secret).await {
        Err(err @ StoreError::Duplicate { entity: Entity::Session, .. }) => {
            assert!(!err.to_string().contains(&session.secret_hash), "the hash leaks: {err}");
            assert!(!format!("{err:?}").contains(&session.secret_hash), "the hash leaks: {err:?}");
        }
        other => panic!("expected a duplicate session, got {other:?}"),
    }

    // The rejected sessions left nothing behind, and the original is untouched.
    assert_not_found(store.load_session(&same_secret.id).await, Entity::Session);
    assert_not_found(store.find_session(&same_id.secret_hash).await, Entity::Session);
    assert_eq!(store.load_session(&session.id).await.unwrap(), session);
    assert_eq!(store.find_session(&session.secret_hash).await.unwrap(), session);
}

async fn missing_sessions_are_not_found(store: Arc<dyn Store>) {
    let known = new_session("alice");
    store.create_session(&known).await.unwrap();
    let missing = new_session("alice");

    match store.load_session(&missing.id).await {
        Err(StoreError::NotFound { entity: Entity::Session, id }) => assert_eq!(id, missing.id),
        other => panic!("expected session not found, got {other:?}"),
    }
    match store.find_session(&missing.secret_hash).await {
        Err(err @ StoreError::NotFound { entity: Entity::Session, .. }) => {
            assert!(!err.to_string().contains(&missing.secret_hash), "the hash leaks: {err}");
            assert!(!format!("{err:?}").contains(&missing.secret_hash), "the hash leaks: {err:?}");
            assert!(err.to_string().contains("session"), "{err}");
        }
        other => panic!("expected session not found, got {other:?}"),
    }
    // A session id is not a secret hash, nor the other way round.
    assert_not_found(store.find_session(&known.id).await, Entity::Session);
    assert_not_found(store.load_session(&known.secret_hash).await, Entity::Session);
    assert_not_found(store.cancel_session(&missing.id).await, Entity::Session);
    assert_not_found(store.cancel_session(&known.secret_hash).await, Entity::Session);
    // Cancelling a missing session did not create it.
    assert_not_found(store.load_session(&missing.id).await, Entity::Session);
}

async fn cancelling_a_session_is_idempotent_and_persists(store: Arc<dyn Store>) {
    let session = new_session("alice");
    let bystander = new_session("alice");
    store.create_session(&session).await.unwrap();
    store.create_session(&bystander).await.unwrap();

    let mut cancelled = session.clone();
    cancelled.cancelled = true;
    assert_eq!(store.cancel_session(&session.id).await.unwrap(), cancelled);
    assert_eq!(store.load_session(&session.id).await.unwrap(), cancelled);
    assert_eq!(store.find_session(&session.secret_hash).await.unwrap(), cancelled);

    // Again: the same answer, and nothing else changes.
    assert_eq!(store.cancel_session(&session.id).await.unwrap(), cancelled);
    assert_eq!(store.load_session(&session.id).await.unwrap(), cancelled);
    assert_eq!(store.load_session(&bystander.id).await.unwrap(), bystander);
}

async fn expired_sessions_are_deleted_in_bounded_batches(store: Arc<dyn Store>) {
    // Five sessions expiring at 100..=104, one at 200, and one cancelled at 101.
    let mut sessions = Vec::new();
    for expires_at in [103, 100, 200, 104, 102, 101] {
        let mut session = new_session("alice");
        session.expires_at = expires_at;
        store.create_session(&session).await.unwrap();
        sessions.push(session);
    }
    store.cancel_session(&sessions[5].id).await.unwrap();
    let gone = |store: &Arc<dyn Store>, session: &SessionRecord| {
        let (store, id) = (store.clone(), session.id.clone());
        async move { matches!(store.load_session(&id).await, Err(StoreError::NotFound { .. })) }
    };
    assert_eq!(store.delete_expired_sessions(99, 10).await.unwrap(), 0, "none expired by 99");
    // A batch of two takes the earliest expiries: 100 and 101 (the cancelled one).
    assert_eq!(store.delete_expired_sessions(104, 2).await.unwrap(), 2);
    assert!(gone(&store, &sessions[1]).await && gone(&store, &sessions[5]).await);
    assert!(!gone(&store, &sessions[4]).await, "102 waits for the next batch");
    assert_not_found(store.find_session(&sessions[1].secret_hash).await, Entity::Session);
    assert_eq!(store.delete_expired_sessions(104, 10).await.unwrap(), 3, "102, 103 and 104");
    assert_eq!(store.delete_expired_sessions(104, 10).await.unwrap(), 0);
    assert_eq!(store.load_session(&sessions[2].id).await.unwrap(), sessions[2], "200 is kept");
    assert_eq!(store.find_session(&sessions[2].secret_hash).await.unwrap(), sessions[2]);
}

async fn admin_threads_page_after_in_both_orders(store: Arc<dyn Store>) {
    let created = seed_interleaved_threads(&store, 13).await;
    let all: Vec<String> = created.iter().map(|(_, id)| id.clone()).collect();

    // One page of everything: every thread with its owner and its record.
    let listing = store.list_threads(None, &ListQuery::first(100, Order::Asc)).await.unwrap();
    assert!(!listing.has_more);
    let owners: Vec<(UserId, String)> =
        listing.data.iter().map(|(owner, thread)| (owner.clone(), thread.id.clone())).collect();
    assert_eq!(owners, created);
    for (owner, thread) in &listing.data {
        assert_eq!(&store.load_thread(owner, &thread.id).await.unwrap(), thread);
    }

    let id_of = |(_, thread): &(UserId, ThreadMetadata)| thread.id.clone();
    for user in [None, Some(alice()), Some(bob())] {
        let expected = match &user {
            None => all.clone(),
            Some(user) => owned_by(&created, user),
        };
        let load = |query: ListQuery| {
            let (store, user) = (store.clone(), user.clone());
            async move { store.list_threads(user.as_ref(), &query).await }
        };
        let (asc, sizes) = walk(3, Order::Asc, load, id_of).await;
        assert_eq!(asc, expected, "{user:?}");
        assert_eq!(sizes.iter().sum::<usize>(), expected.len());
        assert!(sizes[..sizes.len() - 1].iter().all(|size| *size == 3), "{sizes:?}");
        let (desc, desc_sizes) = walk(3, Order::Desc, load, id_of).await;
        assert_eq!(desc, reversed(&expected), "{user:?}");
        assert_eq!(desc_sizes, sizes);
    }
    let load = |query: ListQuery| {
        let store = store.clone();
        async move { store.list_threads(None, &query).await }
    };
    assert_eq!(walk(4, Order::Asc, load, id_of).await.1, vec![4, 4, 4, 1]);
    // A page that ends exactly at the end of the listing says so.
    assert_eq!(walk(13, Order::Desc, load, id_of).await.1, vec![13]);
    assert_eq!(walk(1, Order::Asc, load, id_of).await.1, vec![1; 13]);

    // Every owner comes back with each thread, whichever way the pages go.
    let mut seen = Vec::new();
    let mut query = ListQuery::first(5, Order::Desc);
    loop {
        let page = store.list_threads(None, &query).await.unwrap();
        seen.extend(page.data.iter().map(|(owner, thread)| (owner.clone(), thread.id.clone())));
        if !page.has_more {
            break;
        }
        query.after = page.data.last().map(|(_, thread)| thread.id.clone());
    }
    seen.reverse();
    assert_eq!(seen, created);
}

async fn admin_threads_page_before_in_both_orders(store: Arc<dyn Store>) {
    let created = seed_interleaved_threads(&store, 13).await;
    let all: Vec<String> = created.iter().map(|(_, id)| id.clone()).collect();
    let id_of = |(_, thread): &(UserId, ThreadMetadata)| thread.id.clone();
    for user in [None, Some(alice()), Some(bob())] {
        let expected = match &user {
            None => all.clone(),
            Some(user) => owned_by(&created, user),
        };
        let load = |query: ListQuery| {
            let (store, user) = (store.clone(), user.clone());
            async move { store.list_threads(user.as_ref(), &query).await }
        };
        for limit in [1, 2, 5, 100] {
            // Ascending, the end is the newest thread: the walk sees every other one.
            let (end, rest) = expected.split_last().unwrap();
            let (asc, sizes) = walk_before(limit, Order::Asc, end, load, id_of).await;
            assert_eq!(&asc, rest, "{user:?}, limit {limit}");
            assert_eq!(sizes.iter().sum::<usize>(), rest.len());
            assert!(sizes[..sizes.len() - 1].iter().all(|size| *size == limit), "{sizes:?}");
            // Newest first, the end is the oldest thread.
            let newest_first = reversed(&expected);
            let (end, rest) = newest_first.split_last().unwrap();
            let (desc, desc_sizes) = walk_before(limit, Order::Desc, end, load, id_of).await;
            assert_eq!(&desc, rest, "{user:?}, limit {limit}");
            assert_eq!(desc_sizes, sizes);
        }
    }

    // A `before` page holds the records nearest its cursor, in listing order.
    let page = store.list_threads(None, &list_before(&all[6], 2, Order::Asc)).await.unwrap();
    assert_eq!((thread_ids(&page), page.has_more), (vec![all[4].clone(), all[5].clone()], true));
    let page = store.list_threads(None, &list_before(&all[6], 2, Order::Desc)).await.unwrap();
    assert_eq!((thread_ids(&page), page.has_more), (vec![all[8].clone(), all[7].clone()], true));
    // Exactly the rest: no more before it.
    let page = store.list_threads(None, &list_before(&all[2], 2, Order::Asc)).await.unwrap();
    assert_eq!((thread_ids(&page), page.has_more), (vec![all[0].clone(), all[1].clone()], false));
    // Nothing comes before the first record of the listing.
    let page = store.list_threads(None, &list_before(&all[0], 5, Order::Asc)).await.unwrap();
    assert_eq!(page, Page::default());
    let page = store.list_threads(None, &list_before(&all[12], 5, Order::Desc)).await.unwrap();
    assert_eq!(page, Page::default());
    // Nor after the last.
    let page = store.list_threads(None, &list_after(&all[12], 5, Order::Asc)).await.unwrap();
    assert_eq!(page, Page::default());
    let page = store.list_threads(None, &list_after(&all[0], 5, Order::Desc)).await.unwrap();
    assert_eq!(page, Page::default());
}

async fn admin_threads_between_two_cursors(store: Arc<dyn Store>) {
    let created = seed_interleaved_threads(&store, 10).await;
    let all: Vec<String> = created.iter().map(|(_, id)| id.clone()).collect();
    let between = |after: usize, before: usize, limit: usize, order: Order| {
        let store = store.clone();
        let query = list_between(&all[after], &all[before], limit, order);
        async move {
            let page = store.list_threads(None, &query).await.unwrap();
            (thread_ids(&page), page.has_more)
        }
    };
    let ids = |range: std::ops::Range<usize>| all[range].to_vec();

    // Strictly between, in listing order; `has_more` looks ahead toward `before`.
    assert_eq!(between(1, 6, 10, Order::Asc).await, (ids(2..6), false));
    assert_eq!(between(1, 6, 2, Order::Asc).await, (ids(2..4), true));
    assert_eq!(between(1, 6, 4, Order::Asc).await, (ids(2..6), false));
    assert_eq!(between(3, 6, 2, Order::Asc).await, (ids(4..6), false));
    assert_eq!(between(6, 1, 10, Order::Desc).await, (reversed(&ids(2..6)), false));
    assert_eq!(between(6, 1, 3, Order::Desc).await, (reversed(&ids(3..6)), true));
    // Nothing between one record and itself, neighbours, or cursors the wrong way round.
    for (after, before, order) in [
        (4, 4, Order::Asc),
        (4, 4, Order::Desc),
        (4, 5, Order::Asc),
        (5, 4, Order::Desc),
        (7, 2, Order::Asc),
        (2, 7, Order::Desc),
    ] {
        assert_eq!(between(after, before, 3, order).await, (Vec::new(), false), "{after} {before} {order:?}");
    }

    // With a user, only that user's threads lie between.
    let alices = owned_by(&created, &alice());
    let query = list_between(&alices[0], &alices[4], 10, Order::Asc);
    let page = store.list_threads(Some(&alice()), &query).await.unwrap();
    assert_eq!((thread_ids(&page), page.has_more), (alices[1..4].to_vec(), false));
    let query = list_between(&alices[4], &alices[0], 2, Order::Desc);
    let page = store.list_threads(Some(&alice()), &query).await.unwrap();
    assert_eq!((thread_ids(&page), page.has_more), (vec![alices[3].clone(), alices[2].clone()], true));
}

async fn admin_threads_reject_unknown_cursors(store: Arc<dyn Store>) {
    let created = seed_interleaved_threads(&store, 4).await;
    let alices = owned_by(&created, &alice());
    let bobs = owned_by(&created, &bob());
    let item = user_message(&alices[0], "an item id is no thread cursor");
    store.add_item(&alice(), &item).await.unwrap();
    let nobody = UserId("nobody".to_owned());

    for order in [Order::Asc, Order::Desc] {
        for user in [None, Some(alice()), Some(nobody.clone())] {
            let user = user.as_ref();
            for cursor in ["thr_nope", item.id.as_str()] {
                assert_unknown_cursor(store.list_threads(user, &list_after(cursor, 5, order)).await, cursor);
                assert_unknown_cursor(store.list_threads(user, &list_before(cursor, 5, order)).await, cursor);
            }
        }
        // Another user's thread is no record of a user's listing, on either side.
        let alice_only = Some(&alice());
        assert_unknown_cursor(store.list_threads(alice_only, &list_after(&bobs[0], 5, order)).await, &bobs[0]);
        assert_unknown_cursor(store.list_threads(alice_only, &list_before(&bobs[1], 5, order)).await, &bobs[1]);
        assert_unknown_cursor(
            store.list_threads(alice_only, &list_between(&alices[0], &bobs[1], 5, order)).await,
            &bobs[1],
        );
        assert_unknown_cursor(
            store.list_threads(alice_only, &list_between(&bobs[0], &alices[1], 5, order)).await,
            &bobs[0],
        );
        // A user with no threads at all rejects even a real thread as a cursor.
        assert_unknown_cursor(store.list_threads(Some(&nobody), &list_after(&alices[0], 5, order)).await, &alices[0]);
        // Without a user, every user's thread is a cursor.
        store.list_threads(None, &list_after(&bobs[0], 5, order)).await.unwrap();
        store.list_threads(None, &list_between(&bobs[0], &alices[1], 5, order)).await.unwrap();
    }

    // A deleted thread is no longer a cursor, and no longer listed.
    store.delete_thread(&bob(), &bobs[0]).await.unwrap();
    assert_unknown_cursor(store.list_threads(None, &list_after(&bobs[0], 5, Order::Asc)).await, &bobs[0]);
    assert_unknown_cursor(store.list_threads(None, &list_before(&bobs[0], 5, Order::Desc)).await, &bobs[0]);
    let listing = store.list_threads(None, &ListQuery::first(10, Order::Asc)).await.unwrap();
    assert_eq!(thread_ids(&listing), vec![alices[0].clone(), alices[1].clone(), bobs[1].clone()]);
}

async fn admin_threads_limits_and_empty_listings(store: Arc<dyn Store>) {
    // An empty store lists nothing, for everyone and for anyone, both ways.
    for order in [Order::Asc, Order::Desc] {
        let empty = Page::default();
        assert_eq!(store.list_threads(None, &ListQuery::first(10, order)).await.unwrap(), empty);
        assert_eq!(store.list_threads(Some(&alice()), &ListQuery::first(10, order)).await.unwrap(), empty);
        assert_unknown_cursor(store.list_threads(None, &list_before("thr_nope", 10, order)).await, "thr_nope");
    }

    let created = seed_interleaved_threads(&store, 3).await;
    let all: Vec<String> = created.iter().map(|(_, id)| id.clone()).collect();
    for (limit, expected, has_more) in [(50, all.clone(), false), (3, all.clone(), false), (2, all[..2].to_vec(), true)]
    {
        let listing = store.list_threads(None, &ListQuery::first(limit, Order::Asc)).await.unwrap();
        assert_eq!((thread_ids(&listing), listing.has_more), (expected, has_more), "limit {limit}");
    }
    let listing = store.list_threads(None, &list_before(&all[2], 50, Order::Asc)).await.unwrap();
    assert_eq!((thread_ids(&listing), listing.has_more), (all[..2].to_vec(), false));
    // A zero limit means the default page size, which holds these three.
    let listing = store.list_threads(None, &ListQuery::first(0, Order::Desc)).await.unwrap();
    assert_eq!((thread_ids(&listing), listing.has_more), (reversed(&all), false));
    // A user without threads has an empty listing while others have threads.
    let listing = store.list_threads(Some(&UserId("nobody".to_owned())), &ListQuery::first(5, Order::Asc)).await;
    assert_eq!(listing.unwrap(), Page::default());
}

/// A thread of Alice's with items of every visibility, and items of another
/// thread interleaved in time. Returns the thread id and its items in order.
async fn seed_items(store: &Arc<dyn Store>, count: usize) -> (String, Vec<ThreadItem>) {
    let user = alice();
    let thread = new_thread();
    let neighbour = new_thread();
    store.create_thread(&user, &thread).await.unwrap();
    store.create_thread(&user, &neighbour).await.unwrap();
    let mut added = Vec::new();
    for n in 0..count {
        let item = match n % 4 {
            0 => user_message(&thread.id, &format!("question {n}")),
            1 => hidden_context(&thread.id, &format!("context {n}")),
            2 => assistant_message(&thread.id, &format!("answer {n}")),
            _ => sdk_hidden_context(&thread.id, &format!("sdk context {n}")),
        };
        store.add_item(&user, &item).await.unwrap();
        store.add_item(&user, &user_message(&neighbour.id, "noise")).await.unwrap();
        added.push(item);
    }
    (thread.id, added)
}

async fn admin_items_page_both_ways(store: Arc<dyn Store>) {
    let user = alice();
    let (thread_id, added) = seed_items(&store, 11).await;
    let all: Vec<String> = added.iter().map(|item| item.id.clone()).collect();

    // Hidden items are listed with the rest, whole.
    let listing = store.list_items(&user, &thread_id, &ListQuery::first(100, Order::Asc)).await.unwrap();
    assert_eq!(listing, Page { data: added.clone(), has_more: false, after: None });
    assert_eq!(listing.data.iter().filter(|item| item.is_hidden()).count(), 5);

    let load = |query: ListQuery| {
        let (store, user, thread_id) = (store.clone(), user.clone(), thread_id.clone());
        async move { store.list_items(&user, &thread_id, &query).await }
    };
    let id_of = |item: &ThreadItem| item.id.clone();
    for limit in [1, 3, 4, 11, 100] {
        let (asc, sizes) = walk(limit, Order::Asc, load, id_of).await;
        assert_eq!(asc, all, "limit {limit}");
        assert_eq!(sizes.iter().sum::<usize>(), all.len());
        assert!(sizes[..sizes.len() - 1].iter().all(|size| *size == limit), "{sizes:?}");
        let (desc, desc_sizes) = walk(limit, Order::Desc, load, id_of).await;
        assert_eq!(desc, reversed(&all), "limit {limit}");
        assert_eq!(desc_sizes, sizes);

        let (end, rest) = all.split_last().unwrap();
        let (asc, sizes) = walk_before(limit, Order::Asc, end, load, id_of).await;
        assert_eq!(&asc, rest, "limit {limit}");
        assert!(sizes[..sizes.len() - 1].iter().all(|size| *size == limit), "{sizes:?}");
        let newest_first = reversed(&all);
        let (end, rest) = newest_first.split_last().unwrap();
        let (desc, desc_sizes) = walk_before(limit, Order::Desc, end, load, id_of).await;
        assert_eq!(&desc, rest, "limit {limit}");
        assert_eq!(desc_sizes, sizes);
    }
    assert_eq!(walk(4, Order::Asc, load, id_of).await.1, vec![4, 4, 3]);
    assert_eq!(walk_before(4, Order::Desc, &all[0], load, id_of).await.1, vec![4, 4, 2]);

    // Between two items, strictly, in either order.
    let page = store.list_items(&user, &thread_id, &list_between(&all[2], &all[8], 10, Order::Asc)).await.unwrap();
    assert_eq!((item_ids(&page), page.has_more), (all[3..8].to_vec(), false));
    let page = store.list_items(&user, &thread_id, &list_between(&all[2], &all[8], 3, Order::Asc)).await.unwrap();
    assert_eq!((item_ids(&page), page.has_more), (all[3..6].to_vec(), true));
    let page = store.list_items(&user, &thread_id, &list_between(&all[8], &all[2], 3, Order::Desc)).await.unwrap();
    assert_eq!((item_ids(&page), page.has_more), (reversed(&all[5..8]), true));
    let page = store.list_items(&user, &thread_id, &list_between(&all[8], &all[2], 9, Order::Desc)).await.unwrap();
    assert_eq!((item_ids(&page), page.has_more), (reversed(&all[3..8]), false));
    let page = store.list_items(&user, &thread_id, &list_between(&all[5], &all[5], 9, Order::Asc)).await.unwrap();
    assert_eq!(page, Page::default());
    let page = store.list_items(&user, &thread_id, &list_between(&all[6], &all[5], 9, Order::Asc)).await.unwrap();
    assert_eq!(page, Page::default());

    // The `limit` nearest a `before` cursor.
    let page = store.list_items(&user, &thread_id, &list_before(&all[5], 2, Order::Asc)).await.unwrap();
    assert_eq!((item_ids(&page), page.has_more), (all[3..5].to_vec(), true));
    let page = store.list_items(&user, &thread_id, &list_before(&all[5], 2, Order::Desc)).await.unwrap();
    assert_eq!((item_ids(&page), page.has_more), (reversed(&all[6..8]), true));

    // A saved item keeps its place; an empty thread lists nothing.
    let mut changed = added[4].clone();
    changed.body = assistant_message(&thread_id, "edited").body;
    store.save_item(&user, &changed).await.unwrap();
    let page = store.list_items(&user, &thread_id, &list_after(&all[3], 1, Order::Asc)).await.unwrap();
    let next = Some(changed.id.clone());
    assert_eq!(page, Page { data: vec![changed], has_more: true, after: next });
    let empty = new_thread();
    store.create_thread(&user, &empty).await.unwrap();
    for order in [Order::Asc, Order::Desc] {
        let page = store.list_items(&user, &empty.id, &ListQuery::first(5, order)).await.unwrap();
        assert_eq!(page, Page::default());
    }
}

async fn admin_items_reject_unknown_cursors_and_foreign_threads(store: Arc<dyn Store>) {
    let user = alice();
    let (thread_id, added) = seed_items(&store, 3).await;
    let other = new_thread();
    store.create_thread(&user, &other).await.unwrap();
    let elsewhere = user_message(&other.id, "another thread's item");
    store.add_item(&user, &elsewhere).await.unwrap();
    let first_item = added[0].id.clone();

    for order in [Order::Asc, Order::Desc] {
        for cursor in ["msg_nope", elsewhere.id.as_str(), thread_id.as_str()] {
            let after = list_after(cursor, 5, order);
            assert_unknown_cursor(store.list_items(&user, &thread_id, &after).await, cursor);
            let before = list_before(cursor, 5, order);
            assert_unknown_cursor(store.list_items(&user, &thread_id, &before).await, cursor);
            let between = list_between(&first_item, cursor, 5, order);
            assert_unknown_cursor(store.list_items(&user, &thread_id, &between).await, cursor);
            let between = list_between(cursor, &first_item, 5, order);
            assert_unknown_cursor(store.list_items(&user, &thread_id, &between).await, cursor);
        }
        // Another user's thread, or a missing one, is not found, cursor or not,
        // even when the cursor names one of its items.
        for query in [
            ListQuery::first(5, order),
            list_after(&first_item, 5, order),
            list_before(&first_item, 5, order),
            list_after("msg_nope", 5, order),
        ] {
            assert_not_found(store.list_items(&bob(), &thread_id, &query).await, Entity::Thread);
            assert_not_found(store.list_items(&user, "thr_missing", &query).await, Entity::Thread);
        }
    }

    // A deleted item is no longer a cursor.
    store.delete_item(&user, &thread_id, &first_item).await.unwrap();
    assert_unknown_cursor(
        store.list_items(&user, &thread_id, &list_after(&first_item, 5, Order::Asc)).await,
        &first_item,
    );
    // A deleted thread is not found.
    store.delete_thread(&user, &thread_id).await.unwrap();
    assert_not_found(store.list_items(&user, &thread_id, &ListQuery::first(5, Order::Asc)).await, Entity::Thread);
}

async fn concurrent_adds_all_land_in_one_order(store: Arc<dyn Store>) {
    const WRITERS: usize = 200;
    let user = alice();
    let thread = new_thread();
    store.create_thread(&user, &thread).await.unwrap();

    let mut tasks = Vec::new();
    for n in 0..WRITERS {
        let store = store.clone();
        let user = user.clone();
        let thread_id = thread.id.clone();
        tasks.push(tokio::spawn(async move {
            let item = user_message(&thread_id, &format!("concurrent {n}"));
            store.add_item(&user, &item).await.unwrap();
            // Reads interleave with the writes and must never fail.
            store.list_items(&user, &thread_id, &first(5, Order::Desc)).await.unwrap();
            item.id
        }));
    }
    let mut expected = HashSet::new();
    for task in tasks {
        expected.insert(task.await.unwrap());
    }
    assert_eq!(expected.len(), WRITERS);

    let asc = store.list_items(&user, &thread.id, &first(1000, Order::Asc)).await.unwrap();
    let asc = item_ids(&asc);
    assert_eq!(asc.len(), WRITERS);
    assert_eq!(asc.iter().cloned().collect::<HashSet<_>>(), expected);
    let mut desc = item_ids(&store.list_items(&user, &thread.id, &first(1000, Order::Desc)).await.unwrap());
    desc.reverse();
    assert_eq!(desc, asc, "descending is exactly the reverse of ascending");
    let load = |query: ListQuery| {
        let store = store.clone();
        let user = user.clone();
        let thread_id = thread.id.clone();
        async move { store.list_items(&user, &thread_id, &query).await }
    };
    let (paged, _) = walk(30, Order::Asc, load, |item: &ThreadItem| item.id.clone()).await;
    assert_eq!(paged, asc, "paging sees the same order as one big page");
}

async fn concurrent_threads_and_attachments(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for n in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let user = UserId(format!("user{}", n % 5));
            let thread = new_thread();
            store.create_thread(&user, &thread).await.unwrap();
            store.add_item(&user, &user_message(&thread.id, "hi")).await.unwrap();
            let attachment = new_attachment();
            store.save_attachment(&user, &attachment).await.unwrap();
            store.load_attachment(&user, &attachment.id).await.unwrap();
            store.load_thread(&user, &thread.id).await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for n in 0..5 {
        let page = store.list_threads(Some(&UserId(format!("user{n}"))), &first(100, Order::Asc)).await.unwrap();
        assert_eq!(page.data.len(), 10);
    }
}

// ---------------------------------------------------------------------------
// Instantiation: every check, for every backend.

macro_rules! contract {
    ($($check:ident),* $(,)?) => {
        contract!(@backend memory, memory_backend; $($check),*);
        contract!(@backend sqlite_file, sqlite_file_backend; $($check),*);
        contract!(@backend sqlite_memory, sqlite_memory_backend; $($check),*);
        contract!(@backend postgres, postgres_backend; $($check),*);
    };
    (@backend $backend:ident, $open:ident; $($check:ident),*) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let backend = super::$open().await;
                    super::$check(backend.store.clone()).await;
                }
            )*
        }
    };
}

contract!(
    ping_answers,
    thread_round_trips_and_updates,
    find_thread_names_the_owner,
    creating_an_existing_thread_is_duplicate,
    missing_threads_are_not_found,
    deleting_a_thread_removes_its_items,
    another_users_records_are_not_found,
    threads_list_per_user_in_creation_order,
    threads_page_through_45,
    items_page_through_45,
    recent_items_json_are_the_newest_as_stored,
    fenced_writes_land_only_under_the_newest_claim,
    page_envelope_is_exact,
    zero_limit_means_the_default_page_size,
    unknown_cursors_are_rejected,
    add_item_appends_and_rejects_duplicates,
    save_item_replaces_in_place_or_appends,
    items_load_and_delete,
    items_round_trip_with_attachments,
    attachments_upsert_load_and_delete,
    attachments_by_thread_and_stale_uploads,
    concurrent_adds_all_land_in_one_order,
    concurrent_threads_and_attachments,
    sessions_round_trip_and_find_by_secret,
    sessions_reject_duplicate_ids_and_secrets,
    missing_sessions_are_not_found,
    cancelling_a_session_is_idempotent_and_persists,
    expired_sessions_are_deleted_in_bounded_batches,
    admin_threads_page_after_in_both_orders,
    admin_threads_page_before_in_both_orders,
    admin_threads_between_two_cursors,
    admin_threads_reject_unknown_cursors,
    admin_threads_limits_and_empty_listings,
    admin_items_page_both_ways,
    admin_items_reject_unknown_cursors_and_foreign_threads,
);

// ---------------------------------------------------------------------------
// Opening stores by URL, and SQLite files across restarts.

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// `path` relative to the current directory, spelled with `..` up to the root,
/// so that the relative URL form is tested without writing into the source tree.
fn relative_to_cwd(path: &Path) -> PathBuf {
    let cwd = std::env::current_dir().unwrap();
    let mut relative = PathBuf::new();
    for component in cwd.components() {
        if matches!(component, Component::Normal(_)) {
            relative.push("..");
        }
    }
    for component in path.components() {
        if let Component::Normal(part) = component {
            relative.push(part);
        }
    }
    relative
}

#[tokio::test]
async fn open_dispatches_on_the_url() {
    let memory = store::open("memory://").await.unwrap();
    assert_eq!(memory.backend(), "memory");
    memory.ping().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let absolute = dir.path().join("abs.db");
    assert!(absolute.is_absolute());
    // `sqlite://` followed by an absolute path is the `sqlite:///abs/path.db` form.
    let url = sqlite_url(&absolute);
    assert!(url.starts_with("sqlite:///"), "{url}");
    let sqlite = store::open(&url).await.unwrap();
    assert_eq!(sqlite.backend(), "sqlite");
    sqlite.ping().await.unwrap();
    assert!(absolute.exists());

    let in_memory = store::open("sqlite::memory:").await.unwrap();
    assert_eq!(in_memory.backend(), "sqlite");
    in_memory.ping().await.unwrap();

    // Both spellings of the PostgreSQL scheme open a PostgreSQL store.
    let database = TestDatabase::create().await;
    for url in [database.url.clone(), database.url.replacen("postgres://", "postgresql://", 1)] {
        assert!(url.starts_with("postgres"), "{url}");
        let postgres = store::open(&url).await.unwrap();
        assert_eq!(postgres.backend(), "postgres");
        postgres.ping().await.unwrap();
    }
}

#[tokio::test]
async fn sqlite_opens_relative_paths_and_creates_parent_directories() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("nested").join("deeper").join("store.db");
    let relative = relative_to_cwd(&nested);
    assert!(relative.is_relative());
    let store = SqliteStore::open(&sqlite_url(&relative)).await.unwrap();
    store.create_thread(&alice(), &new_thread()).await.unwrap();
    assert!(nested.exists(), "the database file is created with its directories");
}

#[tokio::test]
async fn unsupported_urls_are_backend_errors() {
    for url in ["garbage", "mysql://x", "", "postgres:/nohost"] {
        match store::open(url).await {
            Err(StoreError::Backend(message)) => assert!(message.contains(url), "`{message}` names `{url}`"),
            Err(other) => panic!("`{url}`: expected a backend error, got {other:?}"),
            Ok(store) => panic!("`{url}` opened a {} store", store.backend()),
        }
    }
    for url in ["sqlite://", "sqlite:", "sqlite://store.db?mode=ro"] {
        assert!(matches!(SqliteStore::open(url).await, Err(StoreError::Backend(_))), "{url}");
    }
}

async fn migration_rows(path: &Path) -> Vec<(i64, String)> {
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut statement = conn.prepare("SELECT version, applied_at FROM schema_migrations ORDER BY version").unwrap();
    let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?))).unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

/// Records written before a SQL store is closed, and checked after it is opened again.
struct Kept {
    user: UserId,
    thread: ThreadMetadata,
    item: ThreadItem,
    attachment: Attachment,
}

impl Kept {
    fn new() -> Kept {
        let thread = new_thread();
        let item = user_message(&thread.id, "persist me");
        Kept { user: alice(), thread, item, attachment: new_attachment() }
    }

    async fn write(&self, store: &dyn Store) {
        store.create_thread(&self.user, &self.thread).await.unwrap();
        store.add_item(&self.user, &self.item).await.unwrap();
        store.save_attachment(&self.user, &self.attachment).await.unwrap();
    }

    /// Every record reads back, and creation order survives the restart: a
    /// new thread goes after the old one.
    async fn check_reopened(&self, store: &dyn Store) {
        let (user, thread) = (&self.user, &self.thread);
        assert_eq!(&store.load_thread(user, &thread.id).await.unwrap(), thread);
        assert_eq!(store.load_item(user, &thread.id, &self.item.id).await.unwrap(), self.item);
        assert_eq!(store.load_attachment(user, &self.attachment.id).await.unwrap(), self.attachment);
        let later = new_thread();
        store.create_thread(user, &later).await.unwrap();
        let listing = store.list_threads(Some(user), &first(10, Order::Asc)).await.unwrap();
        assert_eq!(thread_ids(&listing), vec![thread.id.clone(), later.id.clone()]);
    }
}

/// After the step to schema 2: the thread written under schema 1 reads back,
/// and sessions can be stored and found.
async fn keeps_thread_and_stores_sessions(store: &dyn Store, thread: &ThreadMetadata) {
    assert_eq!(&store.load_thread(&alice(), &thread.id).await.unwrap(), thread);
    let session = new_session("alice");
    store.create_session(&session).await.unwrap();
    assert_eq!(store.find_session(&session.secret_hash).await.unwrap(), session);
}

#[tokio::test]
async fn reopening_a_sqlite_file_keeps_data_and_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keep.db");
    let url = sqlite_url(&path);
    let records = Kept::new();
    {
        let store = SqliteStore::open(&url).await.unwrap();
        assert_eq!(store.schema_version().await.unwrap(), SqliteStore::SCHEMA_VERSION);
        records.write(&store).await;
        store.close().await;
    }
    let applied = migration_rows(&path).await;
    assert_eq!(applied.last().map(|row| row.0), Some(SqliteStore::SCHEMA_VERSION));

    let store = SqliteStore::open(&url).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), SqliteStore::SCHEMA_VERSION);
    records.check_reopened(&store).await;
    store.close().await;

    // Re-opening applied nothing again: the same rows with the same timestamps.
    assert_eq!(migration_rows(&path).await, applied);
}

#[tokio::test]
async fn an_unmigrated_database_is_brought_up_to_date() {
    // A file some earlier build created with the bookkeeping table but no steps applied.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT)", []).unwrap();
    }
    let store = SqliteStore::open(&sqlite_url(&path)).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), SqliteStore::SCHEMA_VERSION);
    store.create_thread(&alice(), &new_thread()).await.unwrap();
}

/// How to take each migration after the first back out of a current database, newest first, to make a database
/// as schema 1 left it. A new migration must add its step here (the tests check that every one has one).
const UNDO_AFTER_SCHEMA_1: &[(i64, &str)] = &[
    (5, "DROP INDEX sessions_by_expiry"),
    (
        4,
        "DROP INDEX attachments_by_thread; DROP INDEX attachments_unattached; \
         ALTER TABLE attachments DROP COLUMN thread_id; ALTER TABLE attachments DROP COLUMN created_at; DROP TABLE blobs",
    ),
    (3, "ALTER TABLE threads DROP COLUMN fence"),
    (2, "DROP TABLE sessions"),
];

/// The SQL that turns a current database back into schema 1.
fn back_to_schema_1(schema_version: i64) -> String {
    let undone: Vec<i64> = UNDO_AFTER_SCHEMA_1.iter().map(|(version, _)| *version).collect();
    assert_eq!(undone, (2..=schema_version).rev().collect::<Vec<_>>(), "every migration after 1 has an undo step");
    let steps: Vec<&str> = UNDO_AFTER_SCHEMA_1.iter().map(|(_, sql)| *sql).collect();
    format!("{}; DELETE FROM schema_migrations WHERE version > 1;", steps.join("; "))
}

#[tokio::test]
async fn a_sqlite_database_of_schema_1_gains_sessions() {
    // Schema 2 adds the sessions table. A file as schema 1 left it is made by
    // taking the later steps back out of a current one, with a thread in it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    let url = sqlite_url(&path);
    let thread = new_thread();
    {
        let store = SqliteStore::open(&url).await.unwrap();
        store.create_thread(&alice(), &thread).await.unwrap();
        store.close().await;
    }
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(&back_to_schema_1(SqliteStore::SCHEMA_VERSION)).unwrap();
    }
    assert_eq!(migration_rows(&path).await.len(), 1);

    let store = SqliteStore::open(&url).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), SqliteStore::SCHEMA_VERSION);
    keeps_thread_and_stores_sessions(&store, &thread).await;
    store.close().await;
    assert_eq!(migration_rows(&path).await.len() as i64, SqliteStore::SCHEMA_VERSION);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let indexed: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = 'sessions_by_expiry'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(indexed, 1, "migration 5 indexes sessions by expiry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_see_each_other() {
    // Two processes (here: two stores) may create the same file at once; both
    // must open and migrate it, and each reads what the other wrote. The race is
    // only on a fresh file, so it is run on several.
    let dir = tempfile::tempdir().unwrap();
    for round in 0..10 {
        let url = sqlite_url(&dir.path().join(format!("shared{round}.db")));
        let (first_store, second_store) = tokio::join!(SqliteStore::open(&url), SqliteStore::open(&url));
        let (first_store, second_store) = (first_store.unwrap(), second_store.unwrap());
        let thread = new_thread();
        first_store.create_thread(&alice(), &thread).await.unwrap();
        assert_eq!(second_store.load_thread(&alice(), &thread.id).await.unwrap(), thread);
        second_store.add_item(&alice(), &user_message(&thread.id, "from the other")).await.unwrap();
        let items = first_store.list_items(&alice(), &thread.id, &first(5, Order::Asc)).await.unwrap();
        assert_eq!(items.data.len(), 1);
        assert_eq!(second_store.schema_version().await.unwrap(), SqliteStore::SCHEMA_VERSION);
        first_store.close().await;
        second_store.close().await;
    }
}

async fn postgres_migration_rows(database: &TestDatabase) -> Vec<(i64, String)> {
    let mut conn = admin_connection(&database.url).await;
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, applied_at::TEXT FROM schema_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let _ = conn.close().await;
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_a_postgres_database_keeps_data_and_schema() {
    let database = TestDatabase::create().await;
    let records = Kept::new();
    {
        let store = PostgresStore::open(&database.url).await.unwrap();
        assert_eq!(store.schema_version().await.unwrap(), PostgresStore::SCHEMA_VERSION);
        records.write(&store).await;
        store.close().await;
    }
    let applied = postgres_migration_rows(&database).await;
    assert_eq!(applied.last().map(|row| row.0), Some(PostgresStore::SCHEMA_VERSION));

    let store = PostgresStore::open(&database.url).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), PostgresStore::SCHEMA_VERSION);
    records.check_reopened(&store).await;
    store.close().await;

    // Re-opening applied nothing again: the same rows with the same timestamps.
    assert_eq!(postgres_migration_rows(&database).await, applied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_database_of_schema_1_gains_sessions() {
    // As for SQLite: schema 1 is a current database with the later steps taken back out.
    let database = TestDatabase::create().await;
    let thread = new_thread();
    {
        let store = PostgresStore::open(&database.url).await.unwrap();
        store.create_thread(&alice(), &thread).await.unwrap();
        store.close().await;
    }
    {
        let mut conn = admin_connection(&database.url).await;
        sqlx::raw_sql(&back_to_schema_1(PostgresStore::SCHEMA_VERSION)).execute(&mut conn).await.unwrap();
        let _ = conn.close().await;
    }
    assert_eq!(postgres_migration_rows(&database).await.len(), 1);

    let store = PostgresStore::open(&database.url).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), PostgresStore::SCHEMA_VERSION);
    keeps_thread_and_stores_sessions(&store, &thread).await;
    store.close().await;
    assert_eq!(postgres_migration_rows(&database).await.len() as i64, PostgresStore::SCHEMA_VERSION);
    let mut conn = admin_connection(&database.url).await;
    let indexed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_indexes WHERE indexname = 'sessions_by_expiry'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;
    assert_eq!(indexed, 1, "migration 5 indexes sessions by expiry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_postgres_migrators_both_open() {
    // Several processes may start on a fresh database at once; the advisory lock
    // must let every one of them open it, with each step applied exactly once.
    let database = TestDatabase::create().await;
    let (a, b, c) = tokio::join!(
        PostgresStore::open(&database.url),
        PostgresStore::open(&database.url),
        PostgresStore::open(&database.url)
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    let thread = new_thread();
    a.create_thread(&alice(), &thread).await.unwrap();
    assert_eq!(b.load_thread(&alice(), &thread.id).await.unwrap(), thread);
    assert_eq!(c.schema_version().await.unwrap(), PostgresStore::SCHEMA_VERSION);
    // Each step once (versions are the table's key), up to the current one; versions may have gaps.
    let versions: Vec<i64> = postgres_migration_rows(&database).await.into_iter().map(|row| row.0).collect();
    assert_eq!((versions.first(), versions.last()), (Some(&1), Some(&PostgresStore::SCHEMA_VERSION)), "{versions:?}");
    for store in [a, b, c] {
        store.close().await;
    }
}
