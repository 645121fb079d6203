//! The reference oracle for the Responses API mapping: every fixture of `tests/fixtures/responses/` (a model
//! stream as the OpenAI API sends it) run through openai-chatkit 1.6.5 by `tests/conformance/responses_oracle.py`,
//! with assertions on what the reference streams and stores. The gateway's own Responses mapping is later held to
//! the same output with `normalize`, which keeps only what two runs share.

use std::path::PathBuf;
use std::process::Command;

use crate::common::venv_python;
use serde_json::{json, Value};

/// Every fixture, and the client tools its agent declares.
pub const CASES: [(&str, &[&str]); 6] = [
    ("text_with_citations", &[]),
    ("reasoning", &[]),
    ("image_generation", &[]),
    ("function_call", &["get_time"]),
    ("refusal", &[]),
    ("failed", &[]),
];

fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn fixture_path(case: &str) -> PathBuf {
    repo_path(&format!("tests/fixtures/responses/{case}.json"))
}

/// A fixture's model stream, for the assertions that compare the reference's output with its input.
fn fixture_events(case: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixture_path(case)).expect("read the fixture");
    let fixture: Value = serde_json::from_str(&text).expect("a fixture is JSON");
    fixture["events"].as_array().expect("a fixture has events").clone()
}

/// What the reference did with one fixture: the events it streamed and the items it stored, oldest first.
pub struct Oracle {
    pub events: Vec<Value>,
    pub items: Vec<Value>,
}

impl Oracle {
    /// The stored items' types, in order.
    fn item_types(&self) -> Vec<&str> {
        self.items.iter().map(|item| item["type"].as_str().unwrap_or_default()).collect()
    }

    /// The streamed `thread.item.updated` updates of one type.
    fn updates(&self, update_type: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["update"]["type"] == update_type).map(|e| &e["update"]).collect()
    }

    fn item(&self, item_type: &str) -> &Value {
        self.items.iter().find(|item| item["type"] == item_type).unwrap_or_else(|| panic!("no stored {item_type}"))
    }
}

/// Runs the oracle on a fixture (its client tools declared as `CASES` says).
pub fn run_oracle(case: &str) -> Oracle {
    let (_, tools) = CASES.iter().find(|(name, _)| *name == case).expect("a known case");
    let mut command = Command::new(venv_python());
    command.arg(repo_path("tests/conformance/responses_oracle.py")).arg(fixture_path(case));
    for tool in *tools {
        command.args(["--client-tool", tool]);
    }
    let output = command.output().expect("run the oracle");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the oracle failed on {case}:\n{stderr}");
    let answer: Value = serde_json::from_slice(&output.stdout).expect("the oracle prints one JSON object");
    let list = |key: &str| answer[key].as_array().unwrap_or_else(|| panic!("no {key} in the answer")).clone();
    Oracle { events: list("events"), items: list("items") }
}

/// `items` without what differs from run to run, so that two runs on one fixture (the reference's twice, or the
/// reference's and the gateway's) compare equal exactly when they store the same thing:
/// - every item's `id`: the store makes most (random in the reference, the gateway's own scheme in the gateway); the
///   ones taken from the model stream (assistant messages, client tool calls) are checked by the oracle tests;
/// - `thread_id`: the thread is created by the run;
/// - `created_at`: the wall clock when the item was made;
/// - a workflow's `summary.duration`: whole seconds the workflow took, 0 or 1 depending on the machine's speed.
///
/// What the model chose stays: texts, annotations, tasks, image ids and URLs, tool names, arguments and call ids.
pub fn normalize(items: &[Value]) -> Vec<Value> {
    items
        .iter()
        .map(|item| {
            let mut item = item.clone();
            if let Some(fields) = item.as_object_mut() {
                for key in ["id", "thread_id", "created_at"] {
                    fields.remove(key);
                }
            }
            if let Some(summary) = item.pointer_mut("/workflow/summary").and_then(Value::as_object_mut) {
                summary.remove("duration");
            }
            item
        })
        .collect()
}

/// The texts of a stream's `text_delta` updates, joined.
fn streamed_text(oracle: &Oracle) -> String {
    let deltas = oracle.updates("assistant_message.content_part.text_delta");
    deltas.iter().map(|u| u["delta"].as_str().unwrap_or_default()).collect()
}

/// The one `item` of the fixture's `response.output_item.done` event of `item_type`.
fn done_item(case: &str, item_type: &str) -> Value {
    let events = fixture_events(case);
    let done = events.iter().find(|e| e["type"] == "response.output_item.done" && e["item"]["type"] == item_type);
    done.unwrap_or_else(|| panic!("{case} has no {item_type} item"))["item"].clone()
}

#[test]
fn fixtures_are_streams_the_openai_types_accept() {
    let mut command = Command::new(venv_python());
    command.arg(repo_path("tests/conformance/responses_oracle.py")).arg("--self-check");
    command.args(CASES.iter().map(|(case, _)| fixture_path(case)));
    let output = command.output().expect("run the self-check");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{report}");
    assert!(report.contains("6 fixtures valid"), "{report}");
}

#[test]
fn citations_are_stored_as_url_and_file_sources() {
    let oracle = run_oracle("text_with_citations");
    assert_eq!(oracle.item_types(), ["user_message", "assistant_message"]);
    let message = done_item("text_with_citations", "message");
    let assistant = oracle.item("assistant_message");
    // The reference reuses the Responses message id as the thread item's id.
    assert_eq!(assistant["id"], message["id"]);
    let text = message["content"][0]["text"].as_str().expect("the answer's text");
    assert_eq!(assistant["content"][0]["text"], text);
    assert_eq!(streamed_text(&oracle), text);
    // url_citation and container_file_citation are placed at their end_index, file_citation at its index; file
    // sources take the filename as their title too.
    let raw: Vec<&Value> = message["content"][0]["annotations"].as_array().expect("annotations").iter().collect();
    let expected = json!([
        {"type": "annotation", "index": raw[0]["end_index"],
         "source": {"type": "url", "url": raw[0]["url"], "title": raw[0]["title"]}},
        {"type": "annotation", "index": raw[1]["index"],
         "source": {"type": "file", "filename": "team-notes.md", "title": "team-notes.md"}},
        {"type": "annotation", "index": raw[2]["end_index"],
         "source": {"type": "file", "filename": "build.log", "title": "build.log"}},
    ]);
    assert_eq!(assistant["content"][0]["annotations"], expected);
    // Each annotation is streamed as it arrives, numbered per content part.
    let added = oracle.updates("assistant_message.content_part.annotation_added");
    let streamed: Vec<&Value> = added.iter().map(|u| &u["annotation"]).collect();
    assert_eq!(json!(streamed), expected);
    assert_eq!(added.iter().map(|u| u["annotation_index"].as_u64()).collect::<Vec<_>>(), [Some(0), Some(1), Some(2)]);
    // The part's `done` update carries the text without its annotations: only the stored item has them.
    let done = oracle.updates("assistant_message.content_part.done");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["content"], json!({"type": "output_text", "text": text, "annotations": []}));
    assert!(oracle.events.iter().all(|e| e["type"] != "error"));
}

#[test]
fn reasoning_is_stored_as_a_workflow_of_thoughts() {
    let oracle = run_oracle("reasoning");
    assert_eq!(oracle.item_types(), ["user_message", "workflow", "assistant_message"]);
    let summaries: Vec<Value> = done_item("reasoning", "reasoning")["summary"]
        .as_array()
        .expect("summary parts")
        .iter()
        .map(|part| json!({"type": "thought", "content": part["text"], "status_indicator": "none"}))
        .collect();
    let workflow = &oracle.item("workflow")["workflow"];
    assert_eq!(workflow["type"], "reasoning");
    assert_eq!(workflow["tasks"], json!(summaries));
    // Closed when the answer starts, collapsed, with the seconds it took as its summary.
    assert_eq!(workflow["expanded"], false);
    assert!(workflow["summary"]["duration"].is_u64(), "{workflow}");
    // Only the first summary part streams (added on its first delta, updated on each further delta and once more
    // at its done); the second one is added whole at its done.
    let kinds: Vec<&str> = oracle
        .events
        .iter()
        .filter_map(|e| e["update"]["type"].as_str().filter(|kind| kind.starts_with("workflow.")))
        .collect();
    assert_eq!(
        kinds,
        [
            "workflow.task.added",
            "workflow.task.updated",
            "workflow.task.updated",
            "workflow.task.updated",
            "workflow.task.added"
        ]
    );
    // The workflow is announced empty and done before the answer's message is added.
    let position = |kind: &str, item_type: &str| {
        oracle.events.iter().position(|e| e["type"] == kind && e["item"]["type"] == item_type).expect(kind)
    };
    assert_eq!(oracle.events[position("thread.item.added", "workflow")]["item"]["workflow"]["tasks"], json!([]));
    assert!(position("thread.item.done", "workflow") < position("thread.item.added", "assistant_message"));
}

#[test]
fn an_image_generation_call_is_stored_as_a_generated_image() {
    let oracle = run_oracle("image_generation");
    assert_eq!(oracle.item_types(), ["user_message", "generated_image", "assistant_message"]);
    let call = done_item("image_generation", "image_generation_call");
    let result = call["result"].as_str().expect("the final image");
    // The item's id is the store's (a message id); the image keeps the call's id, and the URL is a data URL.
    let image = oracle.item("generated_image");
    assert_eq!(image["image"], json!({"id": call["id"], "url": format!("data:image/png;base64,{result}")}));
    assert_ne!(image["id"], call["id"]);
    // Each partial image replaces the image while streaming, with progress 0 (no expected count is configured).
    let partials: Vec<String> = fixture_events("image_generation")
        .iter()
        .filter(|e| e["type"] == "response.image_generation_call.partial_image")
        .map(|e| format!("data:image/png;base64,{}", e["partial_image_b64"].as_str().unwrap_or_default()))
        .collect();
    let updates = oracle.updates("generated_image.updated");
    assert_eq!(updates.iter().map(|u| u["image"]["url"].as_str().unwrap_or_default()).collect::<Vec<_>>(), partials);
    assert!(updates.iter().all(|u| u["progress"] == 0.0 && u["image"]["id"] == call["id"]));
}

#[test]
fn a_client_tool_call_is_stored_pending_without_an_added_event() {
    let oracle = run_oracle("function_call");
    assert_eq!(oracle.item_types(), ["user_message", "client_tool_call"]);
    let call = done_item("function_call", "function_call");
    let arguments: Value = serde_json::from_str(call["arguments"].as_str().expect("arguments")).expect("JSON");
    let stored = oracle.item("client_tool_call");
    assert_eq!(stored["id"], call["id"]);
    assert_eq!(stored["call_id"], call["call_id"]);
    assert_eq!(stored["name"], "get_time");
    assert_eq!(stored["arguments"], arguments);
    assert_eq!(stored["status"], "pending");
    // The call reaches the client only as one `thread.item.done`, after the stream options.
    let after_options: Vec<&Value> =
        oracle.events.iter().skip_while(|e| e["type"] != "stream_options").skip(1).collect();
    assert_eq!(after_options.len(), 1, "{after_options:?}");
    assert_eq!(after_options[0]["type"], "thread.item.done");
    assert_eq!(after_options[0]["item"], *stored);
}

#[test]
fn a_refusal_is_stored_as_the_answer_and_then_fails_the_turn() {
    let oracle = run_oracle("refusal");
    let message = done_item("refusal", "message");
    let refusal = &message["content"][0]["refusal"];
    // The refusal's text becomes an ordinary assistant message: announced empty, its deltas not streamed, stored
    // whole when the item is done.
    assert_eq!(oracle.item_types(), ["user_message", "assistant_message"]);
    let stored = oracle.item("assistant_message");
    assert_eq!(stored["id"], message["id"]);
    assert_eq!(stored["content"], json!([{"type": "output_text", "text": refusal, "annotations": []}]));
    let added = oracle.updates("assistant_message.content_part.added");
    assert_eq!(added.len(), 1);
    assert_eq!(added[0]["content"]["text"], "");
    assert!(oracle.updates("assistant_message.content_part.text_delta").is_empty());
    // Then the Agents SDK raises ModelRefusalError, which ends the turn with a retryable generic error.
    assert_eq!(oracle.events.last(), Some(&json!({"type": "error", "code": "stream.error", "allow_retry": true})));
}

#[test]
fn a_failed_response_ends_the_turn_with_an_error_and_stores_nothing() {
    let oracle = run_oracle("failed");
    // What streamed before the failure reached the client, but the unfinished message is not stored.
    assert_eq!(streamed_text(&oracle), "Paris is the capital");
    assert_eq!(oracle.item_types(), ["user_message"]);
    assert!(oracle.events.iter().all(|e| e["type"] != "thread.item.done" || e["item"]["type"] == "user_message"));
    // The API's error message is not passed on: the reference answers its generic stream error.
    assert_eq!(oracle.events.last(), Some(&json!({"type": "error", "code": "stream.error", "allow_retry": true})));
}

#[test]
fn normalize_keeps_what_two_runs_share() {
    // Two runs on the fixture with the most run-specific values (generated ids, a thread, timestamps, a duration).
    let (first, second) = (run_oracle("reasoning").items, run_oracle("reasoning").items);
    assert_ne!(first, second, "two runs make different ids and timestamps");
    assert_eq!(normalize(&first), normalize(&second));
    let normalized = normalize(&first);
    for item in &normalized {
        assert!(item.get("id").is_none() && item.get("thread_id").is_none() && item.get("created_at").is_none());
    }
    assert_eq!(normalized[1]["workflow"]["summary"], json!({}));
    // What the model chose still tells runs apart.
    let mut changed = first.clone();
    changed[2]["content"][0]["text"] = json!("17 × 23 = 392.");
    assert_ne!(normalize(&changed), normalized);
    let mut changed = first;
    changed[1]["workflow"]["tasks"][1]["content"] = json!("A different thought.");
    assert_ne!(normalize(&changed), normalized);
}
