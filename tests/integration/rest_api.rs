//! The `/v1` threads API under `/v1/chatkit/threads`: listings and their cursors,
//! one thread, deletion through the thread's actor, items in the hosted API's
//! shapes, parameter errors, admin keys, the OpenAPI document, and validation
//! of every answer by the `openai` SDK's own types (`tests/conformance/validate_hosted.py`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use crate::common::gated::*;
use crate::common::*;
use chatkit_gateway::ids::UserId;
use chatkit_gateway::protocol::ThreadItem;
use chatkit_gateway::secret::Secret;
use chatkit_gateway::store::{SqliteStore, Store};
use serde_json::{json, Value};

/// Answers of the `/v1` API, recorded for the reference types: (kind, label, body).
type Recorded = Vec<(&'static str, String, Value)>;

/// Sends a request to the `/v1` API with an optional admin key; the status and the JSON body.
async fn send(app: &TestApp, method: reqwest::Method, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut request = app.client.request(method, app.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: body is not JSON ({e}): {text}"));
    (status, body)
}

/// A `GET` that must answer 200.
async fn get_ok(app: &TestApp, path: &str) -> Value {
    let (status, body) = send(app, reqwest::Method::GET, path, None).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// A request that must fail with `status` and the documented error body; returns the `error` object.
async fn error_at(app: &TestApp, method: reqwest::Method, path: &str, status: u16) -> Value {
    let response = app.client.request(method, app.url(path)).send().await.expect("request sent");
    error_of(response, status).await
}

fn ids(page: &Value) -> Vec<String> {
    page["data"].as_array().expect("data").iter().map(|record| record["id"].as_str().expect("id").to_string()).collect()
}

/// Checks a list object's envelope: `object`, `first_id` and `last_id` naming its ends, `has_more`.
fn check_envelope(page: &Value) {
    let data = page["data"].as_array().unwrap_or_else(|| panic!("no data: {page}"));
    assert_eq!(page["object"], "list", "{page}");
    let end = |record: Option<&Value>| record.map_or(Value::Null, |record| record["id"].clone());
    assert_eq!(page["first_id"], end(data.first()), "{page}");
    assert_eq!(page["last_id"], end(data.last()), "{page}");
    assert!(page["has_more"].is_boolean(), "{page}");
    let mut keys: Vec<&str> = page.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["data", "first_id", "has_more", "last_id", "object"], "{page}");
}

/// Walks a listing forward from its start, `after` the previous page's `last_id`;
/// every page is checked, and every page but the last is full and says `has_more`.
async fn walk_forward(app: &TestApp, path: &str, order: &str, limit: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut after = None::<String>;
    loop {
        let cursor = after.as_ref().map(|id| format!("&after={id}")).unwrap_or_default();
        let page = get_ok(app, &format!("{path}?order={order}&limit={limit}{cursor}")).await;
        check_envelope(&page);
        let page_ids = ids(&page);
        seen.extend(page_ids.iter().cloned());
        if page["has_more"] == false {
            assert!(page_ids.len() <= limit);
            return seen;
        }
        assert_eq!(page_ids.len(), limit, "a page with more after it is full: {page}");
        after = page["last_id"].as_str().map(str::to_string);
        assert!(seen.len() < 1000, "the walk does not end");
    }
}

/// Walks a listing backward from `start` (exclusive), `before` the previous page's
/// `first_id`; returns what precedes `start`, in listing order.
async fn walk_backward(app: &TestApp, path: &str, order: &str, limit: usize, start: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut before = start.to_string();
    loop {
        let page = get_ok(app, &format!("{path}?order={order}&limit={limit}&before={before}")).await;
        check_envelope(&page);
        let mut page_ids = ids(&page);
        page_ids.append(&mut seen);
        seen = page_ids;
        if page["has_more"] == false {
            return seen;
        }
        assert_eq!(page["data"].as_array().unwrap().len(), limit, "a page with more before it is full: {page}");
        before = page["first_id"].as_str().expect("first_id").to_string();
        assert!(seen.len() < 1000, "the walk does not end");
    }
}

/// Walks a listing both ways in both orders with a small page and checks that
/// each walk meets every record exactly once, in order. `asc` is the listing oldest first.
async fn check_walks(app: &TestApp, path: &str, asc: &[String], limit: usize) {
    let desc: Vec<String> = asc.iter().rev().cloned().collect();
    for (order, expected) in [("asc", asc.to_vec()), ("desc", desc)] {
        assert_eq!(walk_forward(app, path, order, limit).await, expected, "{path} forward, {order}");
        let (last, rest) = expected.split_last().expect("a listing to walk");
        assert_eq!(walk_backward(app, path, order, limit, last).await, rest, "{path} backward, {order}");
        // Both cursors: the records strictly between them.
        if expected.len() >= 4 {
            let between = &expected[1..expected.len() - 1];
            let (low, high) = (&expected[0], &expected[expected.len() - 1]);
            let window = get_ok(app, &format!("{path}?order={order}&limit=100&after={low}&before={high}")).await;
            check_envelope(&window);
            assert_eq!(ids(&window), between, "{path} between, {order}");
            assert_eq!(window["has_more"], false);
            let small = get_ok(app, &format!("{path}?order={order}&limit=2&after={low}&before={high}")).await;
            assert_eq!(ids(&small), between[..2], "{path} between, small page, {order}");
            assert_eq!(small["has_more"], between.len() > 2);
        }
        // Past the end: an empty page.
        let past = get_ok(app, &format!("{path}?order={order}&after={}", expected.last().unwrap())).await;
        check_envelope(&past);
        assert_eq!((past["data"].as_array().unwrap().len(), &past["has_more"]), (0, &json!(false)));
    }
}

#[tokio::test]
async fn thread_pages_meet_every_thread_once_both_ways_in_both_orders() {
    let app = spawn_app();
    let mut created = Vec::new();
    for (index, user) in ["alice", "bob", "carol", "alice", "bob", "alice", "carol", "bob", "alice"].iter().enumerate()
    {
        let (id, _) = app.create_thread(user, &format!("thread {index}")).await;
        created.push((user.to_string(), id));
    }
    let all: Vec<String> = created.iter().map(|(_, id)| id.clone()).collect();

    // The defaults: newest first, 20 at most.
    let page = get_ok(&app, "/v1/chatkit/threads").await;
    check_envelope(&page);
    assert_eq!(ids(&page), all.iter().rev().cloned().collect::<Vec<_>>());
    assert_eq!(page["has_more"], false);
    let newest = &page["data"][0];
    assert_eq!(newest["object"], "chatkit.thread");
    assert_eq!(newest["user"], "alice");
    assert_eq!(newest["title"], "thread 8");
    assert_eq!(newest["status"], json!({"type": "active"}));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let created_at = newest["created_at"].as_i64().expect("created_at is unix seconds");
    assert!((now - 60..=now + 1).contains(&created_at), "{created_at} vs {now}");

    check_walks(&app, "/v1/chatkit/threads", &all, 2).await;

    // One user's threads, and nobody else's.
    for user in ["alice", "bob", "carol"] {
        let theirs: Vec<String> = created.iter().filter(|(owner, _)| owner == user).map(|(_, id)| id.clone()).collect();
        let page = get_ok(&app, &format!("/v1/chatkit/threads?user={user}&order=asc")).await;
        assert_eq!(ids(&page), theirs, "{user}");
        assert!(page["data"].as_array().unwrap().iter().all(|thread| thread["user"] == user), "{page}");
        let mut seen = Vec::new();
        let mut after = String::new();
        loop {
            let page = get_ok(&app, &format!("/v1/chatkit/threads?user={user}&order=asc&limit=1{after}")).await;
            check_envelope(&page);
            seen.extend(ids(&page));
            if page["has_more"] == false {
                break;
            }
            after = format!("&after={}", page["last_id"].as_str().unwrap());
        }
        assert_eq!(seen, theirs, "{user}, one at a time");
    }
    let nobody = get_ok(&app, "/v1/chatkit/threads?user=dave").await;
    check_envelope(&nobody);
    assert_eq!((nobody["data"].as_array().unwrap().len(), &nobody["first_id"]), (0, &Value::Null));

    // Another user's thread is no cursor of a user's listing.
    let bobs = &created[1].1;
    let error =
        error_at(&app, reqwest::Method::GET, &format!("/v1/chatkit/threads?user=alice&after={bobs}"), 400).await;
    assert!(error["message"].as_str().unwrap().contains("`after`"), "{error}");
}

#[tokio::test]
async fn one_thread_comes_with_its_newest_items() {
    let app = spawn_app();
    let (tid, _) = app.create_thread("alice", "hello").await;
    for turn in 0..10 {
        app.say("alice", &tid, &format!("turn {turn}")).await;
    }
    let protocol: Vec<String> =
        app.items("alice", &tid).await.iter().map(|item| item["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(protocol.len(), 22);

    let thread = get_ok(&app, &format!("/v1/chatkit/threads/{tid}")).await;
    assert_eq!(thread["id"], tid.as_str());
    assert_eq!(thread["object"], "chatkit.thread");
    assert_eq!(thread["user"], "alice");
    assert_eq!(thread["title"], "hello");
    assert_eq!(thread["status"], json!({"type": "active"}));
    let items = &thread["items"];
    check_envelope(items);
    let newest: Vec<String> = protocol.iter().rev().take(20).cloned().collect();
    assert_eq!(ids(items), newest, "the 20 newest, newest first");
    assert_eq!(items["has_more"], true);
    assert_eq!(items["data"][0]["type"], "chatkit.assistant_message");
    assert_eq!(items["data"][0]["content"][0]["text"], "echo: turn 9");
    assert_eq!(
        *items,
        get_ok(&app, &format!("/v1/chatkit/threads/{tid}/items")).await,
        "the items endpoint's default page"
    );

    // A locked thread shows its reason.
    app.set_status(&tid, json!({"type": "locked", "reason": "Under review"})).await;
    let locked = get_ok(&app, &format!("/v1/chatkit/threads/{tid}")).await;
    assert_eq!(locked["status"], json!({"type": "locked", "reason": "Under review"}));

    let error = error_at(&app, reqwest::Method::GET, "/v1/chatkit/threads/thr_nope", 404).await;
    assert!(error["message"].as_str().unwrap().contains("thr_nope"), "{error}");
    assert_eq!(error["type"], "not_found_error");
    error_at(&app, reqwest::Method::GET, "/v1/chatkit/threads/thr_nope/items", 404).await;
}

#[tokio::test]
async fn a_deletion_waits_its_turn_in_the_actor_and_is_announced_to_the_owner() {
    let (app, gate) = spawn_gated(|_| {});
    let (tid, _) = app.create_thread("alice", "hello").await;
    let (other, _) = app.create_thread("alice", "stays").await;
    let mut history = app.view_history("alice").await;
    let running = start_slow(&app, &tid).await;

    let delete_path = format!("/v1/chatkit/threads/{tid}");
    let delete = send(&app, reqwest::Method::DELETE, &delete_path, None);
    let release = async {
        eventually("the deletion waits behind the running turn", || async { app.threads.queued() == 1 }).await;
        gate.add_permits(1);
        rest_of(running).await
    };
    let ((status, deleted), rest) = tokio::join!(delete, release);
    assert!(rest.contains("partial rest"), "the running turn completed first: {rest}");
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted, json!({"id": tid, "object": "chatkit.thread.deleted", "deleted": true}));

    let frames = history.until(|frame| frame.event.as_deref() == Some("thread.deleted")).await;
    assert_eq!(frames.last().unwrap().data, json!({"thread_id": tid}));

    error_at(&app, reqwest::Method::GET, &format!("/v1/chatkit/threads/{tid}"), 404).await;
    error_at(&app, reqwest::Method::GET, &format!("/v1/chatkit/threads/{tid}/items"), 404).await;
    error_at(&app, reqwest::Method::DELETE, &format!("/v1/chatkit/threads/{tid}"), 404).await;
    error_at(&app, reqwest::Method::DELETE, "/v1/chatkit/threads/thr_nope", 404).await;
    assert_eq!(ids(&get_ok(&app, "/v1/chatkit/threads").await), [other]);
    app.check_error("alice", "threads.get_by_id", json!({"thread_id": tid}), 404, "not found").await;
}

/// Stores an item in the protocol's wire format, straight into the store.
async fn store_item(app: &TestApp, thread_id: &str, id: &str, body: Value) {
    let mut item = json!({"id": id, "thread_id": thread_id, "created_at": "2026-01-02T03:04:05"});
    item.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
    let item: ThreadItem = serde_json::from_value(item).expect("a protocol item");
    app.store.add_item(&UserId("alice".into()), &item).await.expect("item stored");
}

/// A thread with every item type: from the echo responder's commands, and
/// stored directly for the types it does not make (hidden ones among them).
async fn rich_thread(app: &TestApp) -> String {
    let user = "alice";
    let created = app.create_rich_thread(user).await;
    let tid = created[0]["thread"]["id"].as_str().unwrap().to_string();
    store_item(app, &tid, "hid_1", json!({"type": "hidden_context_item", "content": "for the model only"})).await;
    app.say(user, &tid, "/widget").await;
    app.say(user, &tid, "/tool").await;
    app.stream(user, "threads.add_client_tool_output", json!({"thread_id": tid, "result": {"time": "12:00"}})).await;
    let ask = app.say(user, &tid, "/ask").await;
    let ask_id =
        ask.iter().find(|e| e["item"]["type"] == "structured_input").expect("a question")["item"]["id"].clone();
    let answers =
        json!({"status": "answered", "answers": {"color": {"values": ["blue"]}, "why": {"values": ["calm"]}}});
    app.stream(user, "threads.add_structured_input", json!({"thread_id": tid, "item_id": ask_id, "input": answers}))
        .await;
    store_item(app, &tid, "sdk_1", json!({"type": "sdk_hidden_context", "content": "also hidden"})).await;
    let thought =
        json!({"type": "thought", "title": "Thinking", "content": "Let me see.", "status_indicator": "complete"});
    let step = json!({"type": "custom", "title": "Looked it up", "content": "Found 3"});
    let workflow =
        json!({"type": "reasoning", "tasks": [thought, step], "summary": {"duration": 3}, "expanded": false});
    store_item(app, &tid, "wf_1", json!({"type": "workflow", "workflow": workflow})).await;
    let search = json!({"type": "web_search", "title_query": "cats", "queries": ["cats", "cat food"],
        "sources": [{"type": "url", "title": "Cats", "url": "https://example.com/cats"}]});
    store_item(app, &tid, "task_1", json!({"type": "task", "task": search})).await;
    store_item(app, &tid, "task_2", json!({"type": "task", "task": thought})).await;
    store_item(app, &tid, "eot_1", json!({"type": "end_of_turn"})).await;
    let image = json!({"id": "img_1", "url": "https://example.com/cat.png"});
    store_item(app, &tid, "gen_1", json!({"type": "generated_image", "image": image})).await;
    store_item(app, &tid, "gen_2", json!({"type": "generated_image"})).await;
    let annotations = json!([
        {"type": "annotation", "index": 3,
         "source": {"type": "url", "title": "Cats", "url": "https://example.com/cats"}},
        {"type": "annotation", "source": {"type": "file", "title": "Notes", "filename": "notes.txt"}},
        {"type": "annotation", "source": {"type": "entity", "title": "Tom", "id": "ent_1"}}
    ]);
    let content = json!([{"type": "output_text", "text": "Cats [1] and notes [2].", "annotations": annotations}]);
    store_item(app, &tid, "cite_1", json!({"type": "assistant_message", "content": content})).await;
    tid
}

fn parsed(text: &Value) -> Value {
    serde_json::from_str(text.as_str().unwrap_or_else(|| panic!("not a JSON string: {text}"))).expect("JSON text")
}

#[tokio::test]
async fn items_come_in_the_hosted_shapes_and_page_past_hidden_ones() {
    let app = spawn_app();
    let tid = rich_thread(&app).await;
    let path = format!("/v1/chatkit/threads/{tid}/items");
    let protocol = app.items("alice", &tid).await;
    let page = get_ok(&app, &format!("{path}?order=asc&limit=100")).await;
    check_envelope(&page);
    assert_eq!(page["has_more"], false);
    let items = page["data"].as_array().unwrap();

    // Hidden context and end-of-turn markers are not shown; everything else is, in order.
    let shown: Vec<&Value> = protocol.iter().filter(|item| item["type"] != "end_of_turn").collect();
    assert_eq!(ids(&page), shown.iter().map(|item| item["id"].as_str().unwrap()).collect::<Vec<_>>());
    for id in ["hid_1", "sdk_1", "eot_1"] {
        assert!(!ids(&page).iter().any(|shown| shown == id), "{id} is not shown");
    }
    for (item, original) in items.iter().zip(&shown) {
        assert_eq!(item["object"], "chatkit.thread_item", "{item}");
        assert_eq!(item["thread_id"], tid.as_str(), "{item}");
        assert!(item["created_at"].is_i64(), "{item}");
        let expected = match original["type"].as_str().unwrap() {
            "user_message" => "chatkit.user_message",
            "assistant_message" => "chatkit.assistant_message",
            "widget" => "chatkit.widget",
            "client_tool_call" => "chatkit.client_tool_call",
            "task" => "chatkit.task",
            "workflow" | "structured_input" => "chatkit.task_group",
            "generated_image" if original["image"].is_object() => "chatkit.assistant_message",
            "generated_image" => "chatkit.task",
            other => panic!("unexpected protocol item type {other}"),
        };
        assert_eq!(item["type"], expected, "{original} became {item}");
    }
    let by_id = |id: &str| items.iter().find(|item| item["id"] == id).unwrap_or_else(|| panic!("no {id}"));
    let of_kind = |kind: &'static str| items.iter().filter(move |item| item["type"] == kind);

    let first = &items[0];
    assert_eq!(
        first["content"],
        json!([{"type": "quoted_text", "text": "a quote"}, {"type": "input_text", "text": "Look at this "},
               {"type": "input_text", "text": "@cat"}])
    );
    assert_eq!(first["inference_options"], json!({"model": "echo", "tool_choice": {"id": "search"}}));
    let attachment = &first["attachments"][0];
    assert_eq!(
        (&attachment["type"], &attachment["name"], &attachment["mime_type"]),
        (&json!("image"), &json!("cat.png"), &json!("image/png"))
    );
    assert!(attachment["preview_url"].as_str().is_some_and(|url| url.starts_with("http")), "{attachment}");
    let plain = of_kind("chatkit.user_message").nth(1).unwrap();
    assert_eq!(
        (&plain["content"], &plain["attachments"], &plain["inference_options"]),
        (&json!([{"type": "input_text", "text": "/widget"}]), &json!([]), &Value::Null)
    );

    let echo = of_kind("chatkit.assistant_message").next().unwrap();
    assert_eq!(echo["content"], json!([{"type": "output_text", "text": "echo: Look at this @cat", "annotations": []}]));

    let widget = of_kind("chatkit.widget").next().unwrap();
    let original = protocol.iter().find(|item| item["id"] == widget["id"]).unwrap();
    assert_eq!(parsed(&widget["widget"]), original["widget"], "the widget, JSON-encoded");

    let call = of_kind("chatkit.client_tool_call").next().unwrap();
    assert_eq!((&call["name"], &call["status"]), (&json!("get_time"), &json!("completed")));
    assert_eq!(parsed(&call["arguments"]), json!({"tz": "UTC"}));
    assert_eq!(parsed(&call["output"]), json!({"time": "12:00"}));
    assert!(call["call_id"].is_string());

    let question = of_kind("chatkit.task_group").next().unwrap();
    let summaries: Vec<&Value> = question["tasks"].as_array().unwrap().iter().map(|task| &task["summary"]).collect();
    assert_eq!(summaries, [&json!("blue"), &json!("calm")], "{question}");
    assert!(question["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|task| task["type"] == "custom" && task["heading"].is_string()));

    assert_eq!(
        by_id("wf_1")["tasks"],
        json!([{"type": "thought", "heading": "Thinking", "summary": "Let me see."},
               {"type": "custom", "heading": "Looked it up", "summary": "Found 3"}])
    );
    let search = by_id("task_1");
    assert_eq!((&search["task_type"], &search["heading"]), (&json!("custom"), &json!("cats")));
    assert_eq!(search["summary"], "cats\ncat food\nCats (https://example.com/cats)");
    assert_eq!(
        (&by_id("task_2")["task_type"], &by_id("task_2")["summary"]),
        (&json!("thought"), &json!("Let me see."))
    );
    assert_eq!(
        by_id("gen_1")["content"],
        json!([{"type": "output_text", "text": "![Generated image](https://example.com/cat.png)",
                "annotations": [{"type": "url", "source": {"type": "url", "url": "https://example.com/cat.png"}}]}])
    );
    assert_eq!((&by_id("gen_2")["heading"], &by_id("gen_2")["summary"]), (&json!("Generating image"), &Value::Null));
    assert_eq!(
        by_id("cite_1")["content"][0]["annotations"],
        json!([{"type": "url", "source": {"type": "url", "url": "https://example.com/cats"}},
               {"type": "file", "source": {"type": "file", "filename": "notes.txt"}}]),
        "entity citations have no hosted shape"
    );

    // Pages count shown items only, both ways, in both orders.
    let all = ids(&page);
    for limit in [1, 2, 3] {
        check_walks(&app, &path, &all, limit).await;
    }
    // A hidden item's id is still a cursor of the listing.
    let after_hidden = get_ok(&app, &format!("{path}?order=asc&after=hid_1&limit=1")).await;
    let hidden_at =
        protocol.iter().position(|item| item["type"] == "user_message" && item["content"][0]["text"] == "/widget");
    assert_eq!(ids(&after_hidden), [protocol[hidden_at.unwrap()]["id"].as_str().unwrap()]);
}

#[tokio::test]
async fn listings_page_the_same_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("rest.db").display());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.expect("sqlite store"));
    let app = spawn(Spawn { store: Some(store), ..Default::default() });
    let tid = rich_thread(&app).await;
    let path = format!("/v1/chatkit/threads/{tid}/items");
    let all = ids(&get_ok(&app, &format!("{path}?order=asc&limit=100")).await);
    let protocol = app.items("alice", &tid).await;
    assert_eq!(all.len(), protocol.iter().filter(|item| item["type"] != "end_of_turn").count());
    for limit in [1, 3] {
        check_walks(&app, &path, &all, limit).await;
    }
    let mut threads = vec![tid];
    for user in ["bob", "alice", "carol", "bob"] {
        threads.push(app.create_thread(user, "another").await.0);
    }
    check_walks(&app, "/v1/chatkit/threads", &threads, 2).await;
}

#[tokio::test]
async fn bad_parameters_are_400s_that_name_them() {
    let app = spawn_app();
    let (tid, _) = app.create_thread("alice", "hello").await;
    let items = format!("/v1/chatkit/threads/{tid}/items");
    for base in ["/v1/chatkit/threads", items.as_str()] {
        for (query, needle) in [
            ("limit=0", "`limit`"),
            ("limit=101", "`limit`"),
            ("limit=abc", "`limit`"),
            ("limit=-1", "`limit`"),
            ("limit=2.5", "`limit`"),
            ("order=sideways", "`order`"),
            ("order=", "`order`"),
            ("after=nope", "`after`"),
            ("before=nope", "`before`"),
            ("after=", "`after`"),
            ("limt=3", "`limt`"),
            ("limit=2&limit=3", "`limit`"),
        ] {
            let error = error_at(&app, reqwest::Method::GET, &format!("{base}?{query}"), 400).await;
            let message = error["message"].as_str().unwrap();
            assert!(message.contains(needle), "{base}?{query}: `{message}` does not name {needle}");
            assert_eq!(error["type"], "invalid_request_error");
        }
    }
    let error = error_at(&app, reqwest::Method::GET, &format!("{items}?user=alice"), 400).await;
    assert!(error["message"].as_str().unwrap().contains("`user`"), "{error}");
    let error = error_at(&app, reqwest::Method::GET, "/v1/chatkit/threads?user=", 400).await;
    assert!(error["message"].as_str().unwrap().contains("`user`"), "{error}");
    // The limits themselves are fine.
    for query in ["limit=1", "limit=100", "order=asc", "order=desc"] {
        get_ok(&app, &format!("/v1/chatkit/threads?{query}")).await;
        get_ok(&app, &format!("{items}?{query}")).await;
    }
}

#[tokio::test]
async fn admin_keys_guard_the_threads_api_but_not_its_document() {
    let app = spawn(Spawn {
        configure: Box::new(|c| c.access.admin_keys = vec![Secret::new("k-rest")]),
        ..Default::default()
    });
    let (tid, _) = app.create_thread("alice", "hello").await;
    let paths = [
        (reqwest::Method::GET, "/v1/chatkit/threads".to_string()),
        (reqwest::Method::GET, format!("/v1/chatkit/threads/{tid}")),
        (reqwest::Method::GET, format!("/v1/chatkit/threads/{tid}/items")),
        (reqwest::Method::DELETE, format!("/v1/chatkit/threads/{tid}")),
    ];
    for (method, path) in &paths {
        let error = error_at(&app, method.clone(), path, 401).await;
        assert_eq!(error["type"], "authentication_error", "{method} {path}");
        let (status, body) = send(&app, method.clone(), path, Some("wrong")).await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        check_error_body(&body);
    }
    for (method, path) in &paths {
        let (status, body) = send(&app, method.clone(), path, Some("k-rest")).await;
        assert_eq!(status, 200, "{method} {path}: {body}");
    }
    let (status, _) = send(&app, reqwest::Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(status, 200);
}

/// Every `$ref` in a document, with where it is.
fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("$ref", Value::String(target)) => found.push(target),
                    _ => refs(inner, found),
                }
            }
        }
        Value::Array(values) => values.iter().for_each(|inner| refs(inner, found)),
        _ => {}
    }
}

#[tokio::test]
async fn the_openapi_document_covers_the_v1_api() {
    let app = spawn_app();
    let response = app.client.get(app.url("/v1/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let document: Value = response.json().await.expect("the document is JSON");
    assert!(document["openapi"].as_str().is_some_and(|version| version.starts_with("3.")), "{}", document["openapi"]);
    assert!(document["info"]["title"].is_string() && document["info"]["version"].is_string());

    let expected: BTreeSet<(&str, &str)> = [
        ("/v1/chatkit/sessions", "post"),
        ("/v1/chatkit/sessions/{session_id}/cancel", "post"),
        ("/v1/chatkit/threads", "get"),
        ("/v1/chatkit/threads/{thread_id}", "get"),
        ("/v1/chatkit/threads/{thread_id}", "delete"),
        ("/v1/chatkit/threads/{thread_id}/items", "get"),
        ("/v1/chatkit/threads/{thread_id}/status", "post"),
        ("/v1/chatkit/threads/{thread_id}/cancel", "post"),
        ("/v1/openapi.json", "get"),
    ]
    .into_iter()
    .collect();
    let paths = document["paths"].as_object().expect("paths");
    let documented: BTreeSet<(&str, &str)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|key| key.as_str() != "parameters")
                .map(move |m| (path.as_str(), m.as_str()))
        })
        .collect();
    assert_eq!(documented, expected);

    // Every operation answers JSON on success and errors, and names its path parameters.
    for (path, method) in &expected {
        let operation = &paths[*path][*method];
        assert!(operation["responses"]["200"]["content"]["application/json"]["schema"].is_object(), "{method} {path}");
        if *path != "/v1/openapi.json" {
            assert!(operation["responses"]["401"].is_object(), "{method} {path} documents 401");
            assert_eq!(operation["security"], Value::Null, "{method} {path} uses the global security");
        }
        for name in ["thread_id", "session_id"] {
            if path.contains(&format!("{{{name}}}")) {
                let parameters = operation["parameters"].as_array().expect("parameters");
                assert!(parameters.iter().any(|p| p["name"] == name && p["in"] == "path"), "{method} {path}");
            }
        }
        // The route exists: whatever it answers, it is not the unknown-route 404.
        let concrete = path.replace("{thread_id}", "thr_nope").replace("{session_id}", "cksess_nope");
        let response =
            app.client.request(method.to_uppercase().parse().unwrap(), app.url(&concrete)).send().await.unwrap();
        let text = response.text().await.unwrap();
        assert!(!text.contains("no route for"), "{method} {path} is documented but not routed: {text}");
    }
    let list_parameters: Vec<&str> = paths["/v1/chatkit/threads"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(list_parameters, ["after", "before", "limit", "order", "user"]);
    assert_eq!(document["security"], json!([{"admin_key": []}]));
    assert_eq!(document["components"]["securitySchemes"]["admin_key"]["scheme"], "bearer");

    // Every reference resolves, and the hosted types are there.
    let schemas = document["components"]["schemas"].as_object().expect("component schemas");
    let mut found = Vec::new();
    refs(&document, &mut found);
    assert!(!found.is_empty());
    for target in found {
        let name = target.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("unexpected $ref {target}"));
        assert!(schemas.contains_key(name), "{target} does not resolve");
    }
    for name in [
        "ChatKitThread",
        "ChatKitThreadList",
        "ChatKitThreadItemList",
        "ChatKitThreadItem",
        "ThreadDeleteResponse",
        "ChatSession",
        "SessionCreateParams",
        "ErrorResponse",
    ] {
        assert!(schemas.contains_key(name), "no schema {name}");
    }
    assert_eq!(schemas["ChatKitThreadItem"]["oneOf"].as_array().map(Vec::len), Some(6));
    // Fixed strings are documented as their values.
    for (name, value) in
        [("ThreadObject", "chatkit.thread"), ("ListObject", "list"), ("SessionObject", "chatkit.session")]
    {
        assert_eq!(schemas[name]["enum"], json!([value]), "{name}");
    }
}

async fn record(app: &TestApp, recorded: &mut Recorded, kind: &'static str, path: &str) -> Value {
    let body = get_ok(app, path).await;
    recorded.push((kind, format!("GET {path}"), body.clone()));
    body
}

#[tokio::test]
async fn rest_answers_validate_with_the_hosted_reference_types() {
    let python = venv_python();
    let app = spawn_app();
    let mut recorded = Recorded::new();
    let tid = rich_thread(&app).await;
    app.create_thread("bob", "another user").await;
    let (closed, _) = app.create_thread("bob", "closed").await;
    app.set_status(&closed, json!({"type": "closed"})).await;
    let (locked, _) = app.create_thread("carol", "locked").await;
    app.set_status(&locked, json!({"type": "locked", "reason": "Under review"})).await;

    let threads = record(&app, &mut recorded, "thread_list", "/v1/chatkit/threads").await;
    assert_eq!(threads["data"].as_array().unwrap().len(), 4);
    record(&app, &mut recorded, "thread_list", "/v1/chatkit/threads?limit=1&order=asc").await;
    record(&app, &mut recorded, "thread_list", "/v1/chatkit/threads?user=bob").await;
    record(&app, &mut recorded, "thread_list", "/v1/chatkit/threads?user=nobody").await;
    for id in [&tid, &closed, &locked] {
        record(&app, &mut recorded, "thread", &format!("/v1/chatkit/threads/{id}")).await;
    }
    let items = format!("/v1/chatkit/threads/{tid}/items");
    let all = record(&app, &mut recorded, "item_list", &format!("{items}?order=asc&limit=100")).await;
    let kinds: BTreeSet<&str> =
        all["data"].as_array().unwrap().iter().map(|item| item["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.len(), 6, "every hosted item type is recorded: {kinds:?}");
    record(&app, &mut recorded, "item_list", &items).await;
    record(&app, &mut recorded, "item_list", &format!("{items}?limit=2&before={}", all["last_id"].as_str().unwrap()))
        .await;

    let (status, deleted) = send(&app, reqwest::Method::DELETE, &format!("/v1/chatkit/threads/{closed}"), None).await;
    assert_eq!(status, 200);
    recorded.push(("thread_deleted", "DELETE a thread".into(), deleted));

    let body = json!({"user": "user_123", "workflow": {"id": "wf_1", "state_variables": {"tier": "gold", "n": 2}},
                      "chatkit_configuration": {"file_upload": {"enabled": true}}});
    let response = app.client.post(app.url("/v1/chatkit/sessions")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let session: Value = response.json().await.unwrap();
    recorded.push(("session", "POST /v1/chatkit/sessions".into(), session.clone()));
    let cancel = format!("/v1/chatkit/sessions/{}/cancel", session["id"].as_str().unwrap());
    let (status, cancelled) = send(&app, reqwest::Method::POST, &cancel, None).await;
    assert_eq!(status, 200, "{cancelled}");
    recorded.push(("session", format!("POST {cancel}"), cancelled));

    let transcript: String = recorded
        .iter()
        .map(|(kind, label, body)| format!("{}\n", json!({"kind": kind, "label": label, "body": body})))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hosted.jsonl");
    std::fs::write(&path, &transcript).unwrap();
    let validator = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/validate_hosted.py");
    // The answers must match the gateway's own OpenAPI document as well.
    let document = get_ok(&app, "/v1/openapi.json").await;
    let openapi = dir.path().join("openapi.json");
    std::fs::write(&openapi, document.to_string()).unwrap();
    let output = Command::new(&python)
        .arg(&validator)
        .arg(&path)
        .arg("--openapi")
        .arg(&openapi)
        .output()
        .expect("run the validator");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{report}");
    assert!(output.status.success(), "the hosted reference types reject what the gateway answered:\n{report}");
    let checked = format!("hosted conformance: {} passed, 0 failed", recorded.len());
    assert!(report.contains(&checked), "every answer was checked: {report}");

    let self_test = Command::new(&python).arg(&validator).arg("--self-test").output().expect("run the self-test");
    assert!(self_test.status.success(), "{}", String::from_utf8_lossy(&self_test.stdout));

    // The SDK's own client pages through threads and items with its cursors and meets every record once.
    let walk =
        Command::new(&python).arg(&validator).arg("--sdk-walk").arg(app.url("/v1")).output().expect("run the SDK walk");
    let out = String::from_utf8_lossy(&walk.stdout);
    assert!(walk.status.success(), "{out}{}", String::from_utf8_lossy(&walk.stderr));
    let walked: Value =
        serde_json::from_str(out.lines().find_map(|l| l.strip_prefix("sdk-walk: ")).expect("the walk's line")).unwrap();
    let threads = get_ok(&app, "/v1/chatkit/threads?order=asc").await;
    assert_eq!(walked["threads"], json!(ids(&threads)));
    for id in ids(&threads) {
        let items = get_ok(&app, &format!("/v1/chatkit/threads/{id}/items?order=asc&limit=100")).await;
        assert_eq!(walked["items"][&id], json!(ids(&items)), "{id}");
    }
}
