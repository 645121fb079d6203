//! Every ChatKit operation driven over HTTP against the real server with the echo responder.

use crate::common::*;
use base64::Engine as _;
use serde_json::{json, Value};

/// Longer than a title, with multibyte characters around the 40th so that a
/// byte-based cut would split a character or count wrongly.
const LONG_TEXT: &str = "Grüße aus Köln: naïve café, ünïcödé 日本語のテキスト 🎉 and more words after the title";

fn empty_page() -> Value {
    json!({"data": [], "has_more": false})
}

/// Event types, with `thread.item.updated` replaced by its update's type so order checks see the deltas.
fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e["type"].as_str() {
            Some("thread.item.updated") => e["update"]["type"].as_str().unwrap_or("?").to_string(),
            other => other.unwrap_or("?").to_string(),
        })
        .collect()
}

/// The first `thread.item.done` item of a given item type.
fn done_item<'a>(events: &'a [Value], item_type: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["type"] == "thread.item.done" && e["item"]["type"] == item_type)
        .map(|e| &e["item"])
        .unwrap_or_else(|| panic!("no {item_type} among {:?}", kinds(events)))
}

fn id_of(value: &Value) -> String {
    value["id"].as_str().unwrap_or_else(|| panic!("no id in {value}")).to_string()
}

/// The first text part of a user or assistant message item.
fn text_of(item: &Value) -> &str {
    item["content"][0]["text"].as_str().unwrap_or_default()
}

fn item_types(items: &[Value]) -> Vec<&str> {
    items.iter().map(|item| item["type"].as_str().unwrap_or("?")).collect()
}

fn ids(values: &[Value]) -> Vec<String> {
    values.iter().map(id_of).collect()
}

fn counter_text(widget_item: &Value) -> &str {
    widget_item["widget"]["children"][0]["value"].as_str().unwrap_or_else(|| panic!("not a counter: {widget_item}"))
}

/// Calls an operation that must answer exactly `{}`.
async fn check_empty_answer(app: &TestApp, user: &str, op: &str, params: Value) {
    let (status, text) = app.call_text(user, op, params).await;
    assert_eq!(status, 200, "{op}: {text}");
    assert_eq!(text, "{}", "{op}");
}

/// Walks a listing page by page with `params`, checking each page's size,
/// `has_more` and cursor (present only when more follow); returns all ids in order.
async fn walk(app: &TestApp, user: &str, op: &str, params: Value, sizes: &[usize]) -> Vec<String> {
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for (index, &size) in sizes.iter().enumerate() {
        let mut query = params.clone();
        if let Some(after) = &after {
            query["after"] = json!(after);
        }
        let page = app.call(user, op, query).await;
        let data = page["data"].as_array().expect("data");
        assert_eq!(data.len(), size, "{op} {params} page {index}");
        let last = index + 1 == sizes.len();
        assert_eq!(page["has_more"], json!(!last), "{op} {params} page {index}");
        if last {
            assert!(page.get("after").is_none(), "the last page has no `after`: {page}");
        } else {
            assert_eq!(page["after"], data[size - 1]["id"], "`after` is the page's last id");
        }
        seen.extend(ids(data));
        after = page["after"].as_str().map(str::to_string);
    }
    seen
}

fn reversed(ids: &[String]) -> Vec<String> {
    ids.iter().rev().cloned().collect()
}

/// A user message input carrying attachment ids.
fn input_with_attachments(text: &str, attachment_ids: Value) -> Value {
    let mut input = text_input(text);
    input["attachments"] = attachment_ids;
    input
}

fn action(payload: Value) -> Value {
    json!({"type": "counter.increment", "payload": payload})
}

#[tokio::test]
async fn threads_create_streams_the_reference_event_order() {
    let app = spawn_app();
    let body = request("threads.create", json!({"input": text_input(LONG_TEXT)})).to_string();
    let response = app.post_raw(Some("alice"), body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let raw = response.text().await.expect("body");
    // Only `data:` frames: no `event:`/`id:` lines, comments or `[DONE]`.
    assert!(raw.ends_with("\n\n"), "{raw:?}");
    for frame in raw.split_terminator("\n\n") {
        assert!(frame.starts_with("data: {") && !frame.contains('\n'), "not a lone data frame: {frame:?}");
    }
    let events = parse_sse(&raw);
    let kinds = kinds(&events);
    let deltas = kinds.iter().filter(|k| *k == "assistant_message.content_part.text_delta").count();
    assert!(deltas >= 3, "{kinds:?}");
    let mut expected = vec!["thread.created", "thread.item.done", "stream_options", "thread.item.added"];
    expected.push("assistant_message.content_part.added");
    expected.extend(std::iter::repeat_n("assistant_message.content_part.text_delta", deltas));
    expected.extend(["assistant_message.content_part.done", "thread.item.done", "thread.updated"]);
    assert_eq!(kinds, expected);

    let thread = &events[0]["thread"];
    let thread_id = id_of(thread);
    let expected_thread = json!({
        "id": thread_id, "created_at": thread["created_at"], "status": {"type": "active"},
        "metadata": {}, "items": empty_page()
    });
    assert_eq!(thread, &expected_thread, "a new thread has no title key");

    let user = &events[1]["item"];
    assert_eq!(user["type"], "user_message");
    assert_eq!(user["thread_id"], thread_id);
    assert_eq!(user["content"], json!([{"type": "input_text", "text": LONG_TEXT}]));
    assert_eq!((&user["attachments"], &user["inference_options"]), (&json!([]), &json!({})));
    assert_eq!(events[2], json!({"type": "stream_options", "stream_options": {"allow_cancel": true}}));

    let added = &events[3]["item"];
    assert_eq!((&added["type"], &added["content"]), (&json!("assistant_message"), &json!([])));
    let echo = format!("echo: {LONG_TEXT}");
    let streamed: String = events
        .iter()
        .filter(|e| e["update"]["type"] == "assistant_message.content_part.text_delta")
        .map(|e| e["update"]["delta"].as_str().expect("delta"))
        .collect();
    assert_eq!(streamed, echo);
    let done = &events[events.len() - 2]["item"];
    assert_eq!((id_of(done), text_of(done)), (id_of(added), echo.as_str()));

    let updated = &events[events.len() - 1]["thread"];
    let title: String = LONG_TEXT.chars().take(40).collect();
    assert_eq!(updated["title"], title);
    assert_eq!((id_of(updated), &updated["items"]), (thread_id, &empty_page()));
}

#[tokio::test]
async fn add_user_message_continues_a_thread_without_thread_events() {
    let app = spawn_app();
    let (thread_id, _) = app.create_thread("alice", "first").await;
    let events = app.say("alice", &thread_id, "second").await;
    let kinds = kinds(&events);
    assert_eq!(kinds[..2], ["thread.item.done", "stream_options"]);
    // The title was set by the first turn, so nothing about the thread changes.
    assert!(!kinds.iter().any(|k| k == "thread.created" || k == "thread.updated"), "{kinds:?}");
    assert_eq!(assistant_text(&events), "echo: second");

    let thread = app.call("alice", "threads.get_by_id", json!({"thread_id": thread_id})).await;
    assert_eq!(thread["title"], "first");
    let items = thread["items"]["data"].as_array().expect("items");
    assert_eq!(item_types(items), ["user_message", "assistant_message", "user_message", "assistant_message"]);
    let texts: Vec<&str> = items.iter().map(text_of).collect();
    assert_eq!(texts, ["first", "echo: first", "second", "echo: second"]);
    assert_eq!(thread["items"]["has_more"], false);
}

#[tokio::test]
async fn threads_list_pages_in_both_orders() {
    let app = spawn_app();
    let mut created = Vec::new();
    for n in 0..25 {
        created.push(app.create_thread("alice", &format!("thread {n}")).await.0);
    }
    let newest_first = reversed(&created);
    assert_eq!(walk(&app, "alice", "threads.list", json!({}), &[20, 5]).await, newest_first);
    assert_eq!(walk(&app, "alice", "threads.list", json!({"order": "desc"}), &[20, 5]).await, newest_first);
    assert_eq!(walk(&app, "alice", "threads.list", json!({"order": "asc"}), &[20, 5]).await, created);
    assert_eq!(walk(&app, "alice", "threads.list", json!({"limit": 0}), &[20, 5]).await, newest_first);
    assert_eq!(walk(&app, "alice", "threads.list", json!({"limit": 10, "order": "asc"}), &[10, 10, 5]).await, created);

    // Listed threads carry an empty item page, as in the reference.
    let page = app.call("alice", "threads.list", json!({"limit": 1})).await;
    assert_eq!(page["data"][0]["items"], empty_page());
    assert_eq!(page["data"][0]["title"], "thread 24");

    app.expect_error("alice", "threads.list", json!({"limit": -1}), 400).await;
    app.expect_error("alice", "threads.list", json!({"after": "thr_0000000000000000"}), 400).await;
}

#[tokio::test]
async fn items_list_pages_in_both_orders() {
    let app = spawn_app();
    let (thread_id, _) = app.create_thread("alice", "turn 0").await;
    for n in 1..12 {
        app.say("alice", &thread_id, &format!("turn {n}")).await;
    }
    let all = ids(&app.items("alice", &thread_id).await);
    assert_eq!(all.len(), 24);
    let params = |extra: Value| {
        let mut params = json!({"thread_id": thread_id});
        params.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        params
    };
    let newest_first = reversed(&all);
    assert_eq!(walk(&app, "alice", "items.list", params(json!({"limit": 10})), &[10, 10, 4]).await, newest_first);
    assert_eq!(
        walk(&app, "alice", "items.list", params(json!({"limit": 10, "order": "asc"})), &[10, 10, 4]).await,
        all
    );
    assert_eq!(walk(&app, "alice", "items.list", params(json!({"limit": 0})), &[20, 4]).await, newest_first);
    assert_eq!(walk(&app, "alice", "items.list", params(json!({})), &[20, 4]).await, newest_first);

    app.expect_error("alice", "items.list", params(json!({"limit": -1})), 400).await;
    app.expect_error("alice", "items.list", params(json!({"after": "msg_0000000000000000"})), 400).await;
    // An item of another thread is not part of this listing either.
    let (other, events) = app.create_thread("alice", "elsewhere").await;
    assert_ne!(other, thread_id);
    let foreign = json!({"after": id_of(&events[1]["item"])});
    app.expect_error("alice", "items.list", params(foreign), 400).await;
}

#[tokio::test]
async fn another_user_cannot_see_or_touch_a_thread() {
    let app = spawn_app();
    let (thread_id, events) = app.create_thread("alice", "/widget").await;
    let message_id = id_of(&events[1]["item"]);
    let widget_id = id_of(done_item(&events, "widget"));
    let attachment =
        app.call("alice", "attachments.create", json!({"name": "a.txt", "size": 1, "mime_type": "text/plain"})).await;
    let before = app.call("alice", "threads.get_by_id", json!({"thread_id": thread_id})).await;

    let t = thread_id.as_str();
    let attempts = [
        ("threads.get_by_id", json!({"thread_id": t})),
        ("items.list", json!({"thread_id": t})),
        ("threads.add_user_message", json!({"thread_id": t, "input": text_input("mine now")})),
        ("threads.update", json!({"thread_id": t, "title": "bob's"})),
        ("threads.delete", json!({"thread_id": t})),
        ("threads.retry_after_item", json!({"thread_id": t, "item_id": message_id})),
        ("items.feedback", json!({"thread_id": t, "item_ids": [message_id], "kind": "negative"})),
        ("threads.sync_custom_action", json!({"thread_id": t, "item_id": widget_id, "action": action(json!({}))})),
        ("threads.custom_action", json!({"thread_id": t, "item_id": widget_id, "action": action(json!({}))})),
        ("threads.add_client_tool_output", json!({"thread_id": t, "result": {}})),
        ("threads.add_structured_input", json!({"thread_id": t, "item_id": widget_id, "input": {}})),
        ("attachments.delete", json!({"attachment_id": attachment["id"]})),
    ];
    for (op, params) in attempts {
        // `expect_error` also asserts a JSON body: a streaming op must not start a stream.
        app.expect_error("bob", op, params, 404).await;
    }
    // Bob cannot attach Alice's file to a message of his own either, and that creates nothing.
    let input = input_with_attachments("hi", json!([attachment["id"]]));
    app.expect_error("bob", "threads.create", json!({"input": input}), 404).await;
    assert_eq!(app.call("bob", "threads.list", json!({})).await, empty_page());
    app.expect_error("bob", "threads.list", json!({"after": t}), 400).await;

    assert_eq!(app.call("alice", "threads.get_by_id", json!({"thread_id": t})).await, before);
    let listed = app.call("alice", "threads.list", json!({})).await;
    assert_eq!(ids(listed["data"].as_array().unwrap()), [t]);
    // Alice's attachment survived Bob's delete.
    check_empty_answer(&app, "alice", "attachments.delete", json!({"attachment_id": attachment["id"]})).await;
}

#[tokio::test]
async fn update_delete_and_feedback_answer_as_the_reference() {
    let app = spawn_app();
    let (thread_id, events) = app.create_thread("alice", "hello").await;
    let t = thread_id.as_str();
    let updated = app.call("alice", "threads.update", json!({"thread_id": t, "title": "Renamed"})).await;
    assert_eq!(
        (id_of(&updated), &updated["title"], &updated["items"]),
        (thread_id.clone(), &json!("Renamed"), &empty_page())
    );
    assert_eq!(updated["metadata"], json!({}));
    assert_eq!(app.call("alice", "threads.get_by_id", json!({"thread_id": t})).await["title"], "Renamed");
    app.expect_error("alice", "threads.update", json!({"thread_id": "thr_missing", "title": "x"}), 404).await;

    let assistant = id_of(done_item(&events, "assistant_message"));
    check_empty_answer(
        &app,
        "alice",
        "items.feedback",
        json!({"thread_id": t, "item_ids": [assistant], "kind": "positive"}),
    )
    .await;
    let unknown = json!({"thread_id": "thr_missing", "item_ids": [assistant], "kind": "positive"});
    app.expect_error("alice", "items.feedback", unknown, 404).await;

    check_empty_answer(&app, "alice", "threads.delete", json!({"thread_id": t})).await;
    app.expect_error("alice", "threads.get_by_id", json!({"thread_id": t}), 404).await;
    app.expect_error("alice", "items.list", json!({"thread_id": t}), 404).await;
    app.expect_error("alice", "threads.delete", json!({"thread_id": t}), 404).await;
    assert_eq!(app.call("alice", "threads.list", json!({})).await, empty_page());
}

#[tokio::test]
async fn widget_actions_update_the_counter_and_stream_responses() {
    let app = spawn_app();
    let (thread_id, events) = app.create_thread("alice", "/widget").await;
    let t = thread_id.as_str();
    let widget = done_item(&events, "widget");
    let widget_id = id_of(widget);
    assert_eq!(widget["widget"]["type"], "Card");
    assert_eq!(widget["widget"]["children"][0]["type"], "Text");
    assert_eq!(widget["widget"]["children"][0]["id"], "counter");
    assert_eq!(counter_text(widget), "count: 0");
    assert_eq!(widget["widget"]["children"][1]["type"], "Button");
    assert_eq!(widget["widget"]["children"][1]["onClickAction"]["type"], "counter.increment");

    for expected in ["count: 1", "count: 2"] {
        let sync = json!({"thread_id": t, "item_id": widget_id, "action": action(json!({}))});
        let answer = app.call("alice", "threads.sync_custom_action", sync).await;
        let updated = &answer["updated_item"];
        assert_eq!((id_of(updated), counter_text(updated)), (widget_id.clone(), expected));
    }
    let items = app.items("alice", t).await;
    let stored = items.iter().find(|item| item["id"] == widget_id.as_str()).expect("widget kept");
    assert_eq!(counter_text(stored), "count: 2");

    let message_id = id_of(&events[1]["item"]);
    let not_widget = json!({"thread_id": t, "item_id": message_id, "action": action(json!({}))});
    app.expect_error("alice", "threads.sync_custom_action", not_widget.clone(), 400).await;

    let custom = json!({"thread_id": t, "item_id": widget_id, "action": action(json!({"b": 1, "a": 2}))});
    let streamed = app.stream("alice", "threads.custom_action", custom).await;
    assert_eq!(streamed[0]["type"], "stream_options");
    assert_eq!(assistant_text(&streamed), r#"action: counter.increment {"a":2,"b":1}"#);

    // A non-widget sender gets one error event and nothing else, as in the reference.
    let refused = app.stream("alice", "threads.custom_action", not_widget).await;
    assert_eq!(refused, [json!({"type": "error", "code": "stream.error", "allow_retry": false})]);
}

#[tokio::test]
async fn client_tool_output_completes_the_pending_call() {
    let app = spawn_app();
    let (thread_id, events) = app.create_thread("alice", "/tool").await;
    let call = done_item(&events, "client_tool_call");
    assert_eq!(
        (&call["name"], &call["arguments"], &call["status"]),
        (&json!("get_time"), &json!({"tz": "UTC"}), &json!("pending"))
    );
    assert!(call["call_id"].as_str().is_some_and(|id| !id.is_empty()), "{call}");

    let output = json!({"thread_id": thread_id, "result": {"z": 1, "time": "12:00"}});
    let streamed = app.stream("alice", "threads.add_client_tool_output", output.clone()).await;
    assert_eq!(streamed[0]["type"], "stream_options");
    assert_eq!(assistant_text(&streamed), r#"tool output: {"time":"12:00","z":1}"#);

    let items = app.items("alice", &thread_id).await;
    let stored = items.iter().find(|item| item["id"] == call["id"]).expect("tool call kept");
    assert_eq!((&stored["status"], &stored["output"]), (&json!("completed"), &json!({"z": 1, "time": "12:00"})));
    // The newest item is now the answer, not a pending call.
    app.expect_error("alice", "threads.add_client_tool_output", output, 409).await;
}

#[tokio::test]
async fn structured_input_answers_are_recorded_and_answered() {
    let app = spawn_app();
    let (thread_id, events) = app.create_thread("alice", "/ask").await;
    let t = thread_id.as_str();
    let ask = done_item(&events, "structured_input");
    assert_eq!(ask["status"], "pending");
    let color = &ask["inputs"][0];
    assert_eq!((&color["type"], &color["id"]), (&json!("multiple_choice"), &json!("color")));
    assert_eq!(color["options"], json!([{"value": "red"}, {"value": "blue"}]));
    assert_eq!((&ask["inputs"][1]["type"], &ask["inputs"][1]["id"]), (&json!("freeform"), &json!("why")));

    let submission = json!({"status": "answered", "answers": {"color": {"values": ["red", "blue"]}}});
    let params = json!({"thread_id": t, "item_id": ask["id"], "input": submission});
    let streamed = app.stream("alice", "threads.add_structured_input", params.clone()).await;
    assert_eq!(types(&streamed)[..2], ["stream_options", "thread.item.replaced"]);
    let replaced = &streamed[1]["item"];
    assert_eq!((&replaced["id"], &replaced["status"]), (&ask["id"], &json!("answered")));
    // A single-choice question keeps only the first value; an unanswered one is skipped.
    assert_eq!(replaced["inputs"][0]["answer"]["values"], json!(["red"]));
    assert_eq!(replaced["inputs"][1]["answer"]["skipped"], true);
    assert_eq!(assistant_text(&streamed), "answers: color=red; why=skipped");

    let items = app.items("alice", t).await;
    assert_eq!(items.iter().find(|item| item["id"] == ask["id"]), Some(replaced), "the replacement is stored");
    app.expect_error("alice", "threads.add_structured_input", params, 409).await;
    let not_structured = json!({"thread_id": t, "item_id": events[1]["item"]["id"], "input": submission});
    app.expect_error("alice", "threads.add_structured_input", not_structured, 400).await;
}

#[tokio::test]
async fn retry_after_item_answers_the_message_again() {
    let app = spawn_app();
    let (thread_id, _) = app.create_thread("alice", "first").await;
    app.say("alice", &thread_id, "second").await;
    let before = app.items("alice", &thread_id).await;
    assert_eq!(before.len(), 4);
    let t = thread_id.as_str();

    app.expect_error("alice", "threads.retry_after_item", json!({"thread_id": t, "item_id": "msg_missing"}), 404).await;
    let assistant = json!({"thread_id": t, "item_id": before[1]["id"]});
    app.expect_error("alice", "threads.retry_after_item", assistant, 400).await;
    assert_eq!(app.items("alice", t).await, before, "a refused retry deletes nothing");

    let retry = json!({"thread_id": t, "item_id": before[0]["id"]});
    let events = app.stream("alice", "threads.retry_after_item", retry).await;
    let kinds = types(&events);
    assert_eq!(kinds[0], "stream_options");
    // Later items leave silently and the user message is not sent again.
    assert!(!kinds.contains(&"thread.item.removed") && !kinds.contains(&"thread.updated"), "{kinds:?}");
    assert!(!events.iter().any(|e| e["item"]["type"] == "user_message"), "{kinds:?}");
    assert_eq!(assistant_text(&events), "echo: first");

    let after = app.items("alice", t).await;
    assert_eq!(item_types(&after), ["user_message", "assistant_message"]);
    assert_eq!(after[0], before[0]);
    assert_eq!(after[1]["id"], done_item(&events, "assistant_message")["id"]);
    assert_ne!(after[1]["id"], before[1]["id"]);
}

/// A `multipart/form-data` body as a browser builds it: a decoy field, then `file`.
fn multipart(file_name: &str, mime_type: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "----chatkit-test-7d3f0a";
    let decoy = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nignored\r\n");
    let disposition = format!("Content-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"");
    let mut body = decoy.into_bytes();
    body.extend_from_slice(format!("--{boundary}\r\n{disposition}\r\nContent-Type: {mime_type}\r\n\r\n").as_bytes());
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Fetches a content URL and checks its bytes and type.
async fn check_content(app: &TestApp, url: &str, mime_type: &str, bytes: &[u8]) {
    let response = app.client.get(url).send().await.expect("content fetched");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], mime_type);
    assert_eq!(response.bytes().await.expect("content body").as_ref(), bytes);
}

/// Checks an upload's answer: the same attachment, now without an upload descriptor or metadata.
async fn check_uploaded(response: reqwest::Response, created: &Value) {
    assert_eq!(response.status(), 200);
    let uploaded: Value = response.json().await.expect("attachment JSON");
    let mut expected = created.clone();
    expected.as_object_mut().unwrap().remove("upload_descriptor");
    assert_eq!(uploaded, expected);
}

#[tokio::test]
async fn attachments_upload_preview_attach_and_delete() {
    let app = spawn_app();
    let png: &[u8] = b"\x89PNG\r\n\x1a\n\0\0fake image\r\n--not a boundary";
    let image = app
        .call("alice", "attachments.create", json!({"name": "cat.png", "size": png.len(), "mime_type": "image/png"}))
        .await;
    assert_eq!(
        (&image["type"], &image["name"], &image["mime_type"]),
        (&json!("image"), &json!("cat.png"), &json!("image/png"))
    );
    assert!(image.get("metadata").is_none() && image.get("thread_id").is_none(), "{image}");
    let descriptor = &image["upload_descriptor"];
    assert_eq!((&descriptor["method"], &descriptor["headers"]), (&json!("POST"), &json!({})));
    let upload_url = descriptor["url"].as_str().expect("upload url");
    let preview_url = image["preview_url"].as_str().expect("preview url");

    let text =
        app.call("alice", "attachments.create", json!({"name": "a.txt", "size": 5, "mime_type": "text/plain"})).await;
    assert_eq!(text["type"], "file");
    assert!(text.get("preview_url").is_none() && text.get("metadata").is_none(), "{text}");
    let text_upload = text["upload_descriptor"]["url"].as_str().expect("upload url");

    // ChatKit.js uploads multipart with a `file` field; other clients PUT the raw bytes.
    let (content_type, body) = multipart("cat.png", "image/png", png);
    let response =
        app.client.post(upload_url).header("content-type", content_type).body(body).send().await.expect("upload");
    check_uploaded(response, &image).await;
    check_uploaded(app.client.put(text_upload).body("hello").send().await.expect("upload"), &text).await;
    check_content(&app, preview_url, "image/png", png).await;
    check_content(&app, &text_upload.replace("/upload?", "/content?"), "text/plain", b"hello").await;
    error_of(app.client.get(format!("{preview_url}0")).send().await.expect("sent"), 404).await;
    error_of(app.client.put(format!("{text_upload}0")).body("x").send().await.expect("sent"), 404).await;

    let input = input_with_attachments("look", json!([image["id"]]));
    let events = app.stream("alice", "threads.create", json!({"input": input})).await;
    let thread_id = &events[0]["thread"]["id"];
    let attached = &events[1]["item"]["attachments"];
    assert_eq!(attached.as_array().map(Vec::len), Some(1), "{attached}");
    assert_eq!((&attached[0]["id"], &attached[0]["thread_id"]), (&image["id"], thread_id));
    assert!(attached[0].get("metadata").is_none(), "{attached}");
    let stored = app.items("alice", thread_id.as_str().unwrap()).await;
    assert_eq!(&stored[0]["attachments"], attached);

    let delete = json!({"attachment_id": image["id"]});
    check_empty_answer(&app, "alice", "attachments.delete", delete.clone()).await;
    error_of(app.client.get(preview_url).send().await.expect("sent"), 404).await;
    app.expect_error("alice", "attachments.delete", delete, 404).await;
}

#[tokio::test]
async fn a_message_with_an_unknown_attachment_creates_nothing() {
    let app = spawn_app();
    let input = input_with_attachments("hi", json!(["atc_missing"]));
    app.expect_error("alice", "threads.create", json!({"input": input}), 404).await;
    assert_eq!(app.call("alice", "threads.list", json!({})).await, empty_page());
    let (thread_id, _) = app.create_thread("alice", "real").await;
    let add = json!({"thread_id": thread_id, "input": input});
    app.expect_error("alice", "threads.add_user_message", add, 404).await;
    assert_eq!(app.items("alice", &thread_id).await.len(), 2, "the refused message was not stored");
}

#[tokio::test]
async fn attachments_over_the_size_limit_are_refused() {
    let app = spawn(Spawn { configure: Box::new(|config| config.storage.max_upload_bytes = 64), ..Spawn::default() });
    let create = |size: i64| json!({"name": "big.bin", "size": size, "mime_type": "application/octet-stream"});
    app.expect_error("alice", "attachments.create", create(65), 413).await;
    app.expect_error("alice", "attachments.create", create(-1), 400).await;
    let fits = app.call("alice", "attachments.create", create(64)).await;
    // The declared size is checked again against what is actually uploaded.
    let url = fits["upload_descriptor"]["url"].as_str().expect("upload url");
    error_of(app.client.put(url).body(vec![0u8; 65]).send().await.expect("sent"), 413).await;
    let response = app.client.put(url).body(vec![7u8; 64]).send().await.expect("sent");
    check_uploaded(response, &fits).await;
}

#[tokio::test]
async fn transcribe_decodes_base64_audio() {
    let app = spawn_app();
    let audio = base64::engine::general_purpose::STANDARD.encode([1u8, 2, 3, 4, 5]);
    let params = json!({"audio_base64": audio, "mime_type": "audio/webm;codecs=opus"});
    let answer = app.call("alice", "input.transcribe", params).await;
    assert_eq!(answer, json!({"text": "transcribed 5 bytes of audio/webm"}));
    let invalid = json!({"audio_base64": "not base64!", "mime_type": "audio/webm"});
    let error = app.expect_error("alice", "input.transcribe", invalid, 400).await;
    assert!(error["message"].as_str().unwrap().contains("audio_base64"), "{error}");
}
