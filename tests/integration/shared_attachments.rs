//! Attachments any replica can serve: an image uploaded through replica A is
//! previewed through B, handed to the model on C (the fake OpenAI server sees
//! it) and gone from the blob store once its thread is deleted, for each blob
//! backend replicas can share (the database, a shared directory, S3 on moto).
//! Plus the upload rules: a URL works once (409), the declared size and type
//! must match, and uploads no message holds expire.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chatkit_gateway::blobs::{self, attachment_name, BlobLocation, BlobStore, S3Options};
use chatkit_gateway::config::Config;
use chatkit_gateway::responder::{OpenAiResponder, Responder};
use chatkit_gateway::secret::Secret;
use chatkit_gateway::store::{PostgresStore, Store};
use serde_json::{json, Value};

use crate::common::fake_openai::{FakeOpenAi, Reply, MODEL};
use crate::common::moto::MotoServer;
use crate::common::postgres::TestDatabase;
use crate::common::redis::RedisServer;
use crate::common::*;

/// A small PNG-looking payload: the gateway never decodes images.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n fake image bytes for the model";

fn model_responder(fake: &FakeOpenAi) -> Arc<dyn Responder> {
    let mut config = Config::defaults();
    config.model.name = Some(MODEL.into());
    config.model.openai_api_key = Some(Secret::new("sk-test"));
    config.model.openai_base_url = fake.base_url();
    config.model.titles = false;
    let settings = config.model.settings().expect("valid model settings").expect("a model responder");
    Arc::new(OpenAiResponder::new(settings).expect("responder builds"))
}

/// Which blob backend the replicas share.
enum Shared {
    Database,
    Directory(tempfile::TempDir),
    S3(MotoServer),
}

impl Shared {
    fn configure(&self, config: &mut Config) {
        match self {
            Shared::Database => config.storage.blob_url = None,
            Shared::Directory(dir) => config.storage.blob_url = Some(dir.path().display().to_string()),
            Shared::S3(moto) => moto.configure(config, "replicas"),
        }
    }

    /// The same blobs, opened by the test, to look inside.
    fn open(&self, store: Arc<dyn Store>) -> Arc<dyn BlobStore> {
        let (location, s3) = match self {
            Shared::Database => (BlobLocation::Database, S3Options::default()),
            Shared::Directory(dir) => (BlobLocation::Directory(dir.path().to_path_buf()), S3Options::default()),
            Shared::S3(moto) => {
                (BlobLocation::S3 { bucket: moto.bucket.clone(), prefix: "replicas".into() }, moto.options())
            }
        };
        blobs::open(&location, store, &s3).expect("blob store opens")
    }
}

/// The whole journey of one image across three replicas sharing PostgreSQL, Redis and `shared`.
async fn image_across_replicas(shared: Shared) {
    let redis = RedisServer::start();
    let database = TestDatabase::create().await;
    let fake = FakeOpenAi::start();
    fake.push(Reply::text(MODEL, &["A cat."]));
    let shared = Arc::new(shared);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let store = PostgresStore::open(&database.url).await.expect("store opens");
        let (url, shared) = (redis.url(), shared.clone());
        replicas.push(spawn(Spawn {
            store: Some(Arc::new(store)),
            responder: model_responder(&fake),
            configure: Box::new(move |config| {
                config.fanout.redis_url = Some(Secret::new(url));
                shared.configure(config);
            }),
            record: false,
        }));
    }
    let [a, b, c]: [TestApp; 3] = replicas.try_into().unwrap_or_else(|_| unreachable!());

    // Uploaded through A.
    let create = json!({"name": "cat.png", "size": PNG.len(), "mime_type": "image/png"});
    let image = a.call("alice", "attachments.create", create).await;
    let id = image["id"].as_str().expect("id").to_owned();
    let upload_url = image["upload_descriptor"]["url"].as_str().expect("upload url");
    let response = a.client.post(upload_url).header("content-type", "image/png").body(PNG).send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());

    // Previewed through B.
    let preview = image["preview_url"].as_str().expect("preview url").replace(&a.base, &b.base);
    let response = b.client.get(&preview).send().await.expect("preview");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    assert_eq!(response.bytes().await.expect("bytes").as_ref(), PNG);

    // Given to the model on C.
    let mut input = text_input("what is this?");
    input["attachments"] = json!([id]);
    let events = c.stream("alice", "threads.create", json!({"input": input})).await;
    assert_eq!(assistant_text(&events), "A cat.", "{events:?}");
    let thread_id = events[0]["thread"]["id"].as_str().expect("thread id").to_owned();
    let requests = fake.chat_requests();
    assert_eq!(requests.len(), 1);
    let body = requests[0].json.as_ref().expect("chat request JSON");
    let url = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(PNG));
    assert!(image_urls(body).contains(&url), "the model was not given the image: {body}");

    // Gone from the blob store once the thread is deleted (through B).
    let probe = shared.open(Arc::new(PostgresStore::open(&database.url).await.expect("store opens")));
    assert!(probe.get(&attachment_name(&id)).await.expect("blob read").is_some());
    b.call("alice", "threads.delete", json!({"thread_id": thread_id})).await;
    assert!(probe.get(&attachment_name(&id)).await.expect("blob read").is_none(), "the blob outlived its thread");
    error_of(a.client.get(preview.replace(&b.base, &a.base)).send().await.expect("preview"), 404).await;
}

/// Every `image_url` of the user messages of a chat request.
fn image_urls(body: &Value) -> Vec<String> {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    messages
        .iter()
        .filter_map(|message| message["content"].as_array())
        .flatten()
        .filter_map(|part| part["image_url"]["url"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_crosses_replicas_with_database_blobs() {
    image_across_replicas(Shared::Database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_crosses_replicas_with_a_shared_directory() {
    image_across_replicas(Shared::Directory(tempfile::tempdir().expect("temp dir"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_crosses_replicas_with_s3_blobs() {
    image_across_replicas(Shared::S3(MotoServer::start().await)).await;
}

#[tokio::test]
async fn an_upload_url_works_once() {
    let app = spawn_app();
    let created =
        app.call("alice", "attachments.create", json!({"name": "a.txt", "size": 5, "mime_type": "text/plain"})).await;
    let url = created["upload_descriptor"]["url"].as_str().expect("upload url");
    assert_eq!(app.client.put(url).body("hello").send().await.expect("sent").status(), 200);
    let error = error_of(app.client.put(url).body("HELLO").send().await.expect("sent"), 409).await;
    assert!(error["message"].as_str().unwrap_or_default().contains("already been uploaded"), "{error}");
    // The first bytes stay.
    let content = app.client.get(url.replace("/upload?", "/content?")).send().await.expect("content");
    assert_eq!(content.bytes().await.expect("bytes").as_ref(), b"hello");
}

#[tokio::test]
async fn an_upload_must_match_its_declared_size_and_type() {
    let app = spawn_app();
    let created =
        app.call("alice", "attachments.create", json!({"name": "a.png", "size": 5, "mime_type": "image/png"})).await;
    let url = created["upload_descriptor"]["url"].as_str().expect("upload url");
    let id = created["id"].as_str().expect("id");
    let error = error_of(app.client.put(url).body("four").send().await.expect("sent"), 400).await;
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("4 bytes") && message.contains("5 bytes declared"), "{error}");
    let wrong_type = app.client.put(url).header("content-type", "text/html").body("12345").send().await.expect("sent");
    let error = error_of(wrong_type, 400).await;
    assert!(error["message"].as_str().unwrap_or_default().contains("text/html"), "{error}");
    // Nothing was stored, so the URL still works for the right bytes.
    let blobs = app.engine.blobs().clone();
    assert!(blobs.get(&attachment_name(id)).await.expect("blob read").is_none());
    let fits = app.client.put(url).header("content-type", "image/png").body("12345").send().await.expect("sent");
    assert_eq!(fits.status(), 200);
    assert!(blobs.get(&attachment_name(id)).await.expect("blob read").is_some());
}

#[tokio::test]
async fn uploads_no_message_holds_expire() {
    let app = spawn(Spawn {
        configure: Box::new(|config| {
            config.storage.upload_ttl_secs = 2;
            config.storage.upload_sweep_secs = 1;
        }),
        ..Spawn::default()
    });
    let create = json!({"name": "a.txt", "size": 5, "mime_type": "text/plain"});
    let loose = app.call("alice", "attachments.create", create.clone()).await;
    let held = app.call("alice", "attachments.create", create).await;
    for attachment in [&loose, &held] {
        let url = attachment["upload_descriptor"]["url"].as_str().expect("upload url");
        assert_eq!(app.client.put(url).body("hello").send().await.expect("sent").status(), 200);
    }
    let mut input = text_input("keep this one");
    input["attachments"] = json!([held["id"]]);
    app.stream("alice", "threads.create", json!({"input": input})).await;

    // The sweeper deletes the loose upload (record and bytes) within a few passes.
    let user = chatkit_gateway::ids::UserId("alice".into());
    let loose_id = loose["id"].as_str().expect("id");
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.store.load_attachment(&user, loose_id).await.is_ok() {
        assert!(Instant::now() < deadline, "the loose upload never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let blobs = app.engine.blobs().clone();
    assert!(blobs.get(&attachment_name(loose_id)).await.expect("blob read").is_none());
    // The attached one stays, bytes and all.
    let held_id = held["id"].as_str().expect("id");
    assert!(app.store.load_attachment(&user, held_id).await.is_ok());
    assert!(blobs.get(&attachment_name(held_id)).await.expect("blob read").is_some());
}
