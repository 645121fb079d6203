//! Wire conformance: everything the server sends for all 16 ops, judged by
//! openai-chatkit 1.6.5's own pydantic types (`tests/conformance/validate.py`).

use crate::common::*;
use base64::Engine as _;
use serde_json::{json, Value};

/// Drives every op, recording each response and event.
async fn drive_every_op(app: &TestApp) {
    let user = "conformance";
    // A message that carries an attachment and every other kind of input.
    let created = app.create_rich_thread(user).await;
    let file =
        app.call(user, "attachments.create", json!({"name": "notes.txt", "size": 5, "mime_type": "text/plain"})).await;
    let thread_id = created[0]["thread"]["id"].as_str().unwrap().to_string();
    let tid = thread_id.as_str();
    app.say(user, tid, "second message").await;

    let widget = app.say(user, tid, "/widget").await;
    let widget_id = find_item(&widget, "widget")["id"].clone();
    for command in ["/gallery", "/markdown", "/cite", "/workflow", "/image", "/live-widget"] {
        app.say(user, tid, command).await;
    }
    let action = json!({"type": "counter.increment", "payload": {"b": [1, 2], "a": null}});
    app.call(user, "threads.sync_custom_action", json!({"thread_id": tid, "item_id": widget_id, "action": action}))
        .await;
    app.stream(user, "threads.custom_action", json!({"thread_id": tid, "item_id": widget_id, "action": action})).await;
    let user_item = find_item(&created, "user_message")["id"].clone();
    // A non-widget sender: the reference answers one error event.
    app.stream(user, "threads.custom_action", json!({"thread_id": tid, "item_id": user_item, "action": action})).await;

    app.say(user, tid, "/tool").await;
    app.stream(user, "threads.add_client_tool_output", json!({"thread_id": tid, "result": {"time": "12:00"}})).await;

    let ask = app.say(user, tid, "/ask").await;
    let ask_id = find_item(&ask, "structured_input")["id"].clone();
    let answers =
        json!({"status": "answered", "answers": {"color": {"values": ["blue"]}, "why": {"values": ["calm"]}}});
    app.stream(user, "threads.add_structured_input", json!({"thread_id": tid, "item_id": ask_id, "input": answers}))
        .await;

    app.stream(user, "threads.retry_after_item", json!({"thread_id": tid, "item_id": user_item})).await;

    app.call(user, "threads.get_by_id", json!({"thread_id": tid})).await;
    app.call(user, "threads.list", json!({})).await;
    app.call(user, "threads.list", json!({"limit": 1, "order": "asc"})).await;
    app.call(user, "items.list", json!({"thread_id": tid})).await;
    app.call(user, "items.list", json!({"thread_id": tid, "limit": 2, "order": "asc"})).await;
    app.call(user, "items.feedback", json!({"thread_id": tid, "item_ids": [user_item], "kind": "positive"})).await;
    app.call(user, "threads.update", json!({"thread_id": tid, "title": "Renamed"})).await;
    let audio = base64::engine::general_purpose::STANDARD.encode(b"RIFF....");
    app.call(user, "input.transcribe", json!({"audio_base64": audio, "mime_type": "audio/webm;codecs=opus"})).await;
    app.call(user, "attachments.delete", json!({"attachment_id": file["id"]})).await;

    let (other, _) = app.create_thread(user, "to be deleted").await;
    app.call(user, "threads.delete", json!({"thread_id": other})).await;
}

/// What viewer streams carried: the history stream during every op, and a
/// thread stream through a turn with a widget, a rename and a status change.
async fn viewer_frames(app: &TestApp, history: &mut crate::common::viewer::Viewer) -> Vec<(&'static str, Value)> {
    let user = "conformance";
    let (tid, _) = app.create_thread(user, "watched").await;
    let mut thread = app.view_thread(user, &tid).await;
    let widget = app.say(user, &tid, "/widget").await;
    let widget_id = find_item(&widget, "widget")["id"].clone();
    let increment = json!({"type": "counter.increment", "payload": {}});
    app.call(user, "threads.sync_custom_action", json!({"thread_id": tid, "item_id": widget_id, "action": increment}))
        .await;
    app.say(user, &tid, "and a plain answer").await;
    // Workflow task updates, annotations and image progress reach viewers too.
    for command in ["/workflow", "/cite", "/image", "/live-widget"] {
        app.say(user, &tid, command).await;
    }
    app.call(user, "threads.update", json!({"thread_id": tid, "title": "Watched"})).await;
    let locked = app.client.post(app.url(&format!("/v1/chatkit/threads/{tid}/status")));
    assert!(locked.json(&json!({"type": "locked", "reason": "r"})).send().await.unwrap().status().is_success());
    let mut frames = Vec::new();
    for frame in thread.until(|f| f.data["thread"]["status"]["type"] == "locked").await {
        frames.push(("viewer:thread", frame.data));
    }
    for frame in history.until(|f| f.data["thread"]["status"]["type"] == "locked").await {
        // Deletions are named control events, not ChatKit events.
        if frame.event.is_none() {
            frames.push(("viewer:history", frame.data));
        }
    }
    let kinds: std::collections::BTreeSet<&str> = frames.iter().filter_map(|(_, f)| f["type"].as_str()).collect();
    let expected = [
        "thread.created",
        "thread.updated",
        "thread.item.added",
        "thread.item.updated",
        "thread.item.done",
        "thread.item.replaced",
    ];
    for kind in expected {
        assert!(kinds.contains(kind), "viewer streams carried no {kind}: {kinds:?}");
    }
    frames
}

#[tokio::test]
async fn every_response_and_event_validates_with_the_reference_types() {
    let app = spawn(Spawn { record: true, ..Default::default() });
    let mut history = app.view_history("conformance").await;
    drive_every_op(&app).await;
    let viewed = viewer_frames(&app, &mut history).await;

    let mut transcript = app.transcript_lines();
    let ops: std::collections::BTreeSet<String> = transcript
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["op"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ops.len(), 16, "the transcript covers every op: {ops:?}");
    let viewer_lines = viewed.len();
    for (stream, frame) in viewed {
        transcript.push_str(&format!("{}\n", json!({"op": stream, "kind": "viewer_event", "body": frame})));
    }

    let report = check_conformance(&transcript);
    let checked = format!("{} passed, 0 failed", transcript.lines().count());
    assert!(viewer_lines > 0 && report.contains(&checked), "every line, viewer frames too, was checked: {report}");
}

/// The echo's widget gallery (`src/responder/gallery.json`, what `/gallery` sends and the chat
/// page's renderer is tested on) is valid to openai-chatkit's widget types, each component strictly
/// as its own class (`tests/conformance/check_widget_gallery.py`).
#[test]
fn the_widget_gallery_validates_with_the_reference_widget_types() {
    let report = run_check("check_widget_gallery.py");
    assert!(report.contains("fixtures are valid"), "{report}");
}

/// The items the content renderer's harness renders (`tests/browser/content-fixtures.json`) are
/// items openai-chatkit would send (`tests/conformance/check_content_fixtures.py`).
#[test]
fn the_content_fixtures_validate_with_the_reference_item_types() {
    run_check("check_content_fixtures.py");
}

/// Runs a check script of `tests/conformance/` with the test venv's Python; fails with its output.
fn run_check(script: &str) -> String {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/conformance").join(script);
    let output = std::process::Command::new(venv_python()).arg(&path).output().expect("run the check");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{script} failed:\n{report}");
    report
}
