//! The model responder on the Responses API end to end: the whole gateway on loopback, its
//! `OpenAiResponder` streaming scripted Responses events (`tests/fixtures/responses/gw_*.json`) from the
//! fake OpenAI server; persisted items read back with `items.list`, every event and answer validated by
//! the reference's pydantic types, and the requests the fake recorded checked for input and tools.

use std::sync::Arc;
use std::time::Duration;

use crate::common::fake_openai::{self, responses_fixture, FakeOpenAi, Reply, MODEL};
use crate::common::*;
use chatkit_gateway::config::Config;
use chatkit_gateway::http::AuthMode;
use chatkit_gateway::responder::{EchoResponder, OpenAiResponder, WorkflowDefaults, WorkflowRouter};
use serde_json::{json, Value};

const USER: &str = "alice";
const INSTRUCTIONS: &str = "You are the test assistant of the Responses API tests.";
const TOOLS: &str = r#"[{"name": "get_time", "description": "The local time in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]"#;

/// A gateway answering through the Responses API of `fake`; its transcript is recorded for conformance.
struct Gateway {
    fake: FakeOpenAi,
    app: TestApp,
}

fn config_for(fake: &FakeOpenAi, tweak: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::for_tests("unused".into());
    config.model.name = Some(MODEL.into());
    config.model.openai_base_url = fake.base_url();
    config.model.model_api = Some("responses".into());
    config.model.system_prompt = INSTRUCTIONS.into();
    config.model.client_tools = Some(TOOLS.into());
    config.model.titles = false;
    config.model.model_timeout_secs = 10;
    tweak(&mut config);
    config
}

fn start(tweak: impl FnOnce(&mut Config)) -> Gateway {
    let fake = FakeOpenAi::start();
    let config = config_for(&fake, tweak);
    let settings = config.model.settings().expect("valid model settings").expect("a model responder");
    let responder = OpenAiResponder::new(settings).expect("responder builds");
    let app = spawn(Spawn { responder: Arc::new(responder), record: true, ..Spawn::default() });
    Gateway { fake, app }
}

impl Gateway {
    /// Plays fixture `name` as the answer to a new thread with its user text; the thread and the events.
    async fn play(&self, name: &str) -> (String, Vec<Value>) {
        let fixture = responses_fixture(name);
        self.fake.push_response(fixture.reply());
        self.app.create_thread(USER, &fixture.user_text).await
    }

    /// The JSON bodies of the Responses requests so far.
    fn requests(&self) -> Vec<Value> {
        self.fake.responses_requests().into_iter().filter_map(|request| request.json).collect()
    }

    /// Every response and event so far passes the reference's types.
    fn check_conformance(&self) {
        let transcript = self.app.transcript_lines();
        let report = check_conformance(&transcript);
        let checked = format!("{} passed, 0 failed", transcript.lines().count());
        assert!(report.contains(&checked), "{report}");
    }
}

/// Each event's type, with the update's type for `thread.item.updated` and the item's for added and done.
fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|event| match (event["update"]["type"].as_str(), event["item"]["type"].as_str()) {
            (Some(update), _) => update.trim_start_matches("assistant_message.content_part.").to_string(),
            (None, Some(item)) => format!("{}:{item}", event["type"].as_str().unwrap_or("?")),
            (None, None) => event["type"].as_str().unwrap_or("?").to_string(),
        })
        .collect()
}

fn item_of<'a>(items: &'a [Value], kind: &str) -> &'a Value {
    items.iter().find(|item| item["type"] == kind).unwrap_or_else(|| panic!("no {kind} among {items:#?}"))
}

#[tokio::test]
async fn text_with_citations_streams_and_keeps_its_annotations() {
    let gw = start(|_| {});
    let (thread, events) = gw.play("gw_citations").await;
    let kinds = kinds(&events);
    let turn: Vec<&str> = kinds.iter().map(String::as_str).skip(3).collect();
    assert_eq!(
        turn,
        [
            "thread.item.added:assistant_message",
            "added",
            "text_delta",
            "annotation_added",
            "text_delta",
            "annotation_added",
            "text_delta",
            "annotation_added",
            "done",
            "thread.item.done:assistant_message",
        ],
        "{kinds:?}"
    );
    let indexes: Vec<&Value> = events.iter().filter_map(|e| e["update"].get("annotation_index")).collect();
    assert_eq!(indexes, [&json!(0), &json!(1), &json!(2)], "the nameless file citation is dropped without a gap");
    let items = gw.app.items(USER, &thread).await;
    let message = item_of(&items, "assistant_message");
    assert_eq!(message["content"][0]["text"], "Rust 2024 shipped. The notes agree. See chart.csv.");
    let annotations = &message["content"][0]["annotations"];
    assert_eq!(
        annotations,
        &json!([
            {"type": "annotation", "source": {"type": "url", "title": "Rust Blog", "url": "https://blog.rust-lang.org/"}, "index": 18},
            {"type": "annotation", "source": {"type": "file", "title": "release-notes.md", "filename": "release-notes.md"}, "index": 31},
            {"type": "annotation", "source": {"type": "file", "title": "chart.csv", "filename": "chart.csv"}, "index": 41},
        ])
    );
    let request = &gw.requests()[0];
    assert_eq!(
        (&request["instructions"], &request["stream"], &request["store"]),
        (&json!(INSTRUCTIONS), &json!(true), &json!(false))
    );
    assert!(request.get("previous_response_id").is_none(), "the store is the history");
    assert_eq!(
        request["tools"],
        json!([{"type": "function", "name": "get_time", "description": "The local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": false}])
    );
    gw.check_conformance();
}

#[tokio::test]
async fn reasoning_summaries_stream_as_thoughts_of_a_reasoning_workflow() {
    let gw = start(|config| config.model.reasoning_summary = Some("auto".into()));
    let (thread, events) = gw.play("gw_reasoning").await;
    let kinds = kinds(&events);
    let turn: Vec<&str> = kinds.iter().map(String::as_str).skip(3).take(7).collect();
    assert_eq!(
        turn,
        [
            "thread.item.added:workflow",
            "workflow.task.added",
            "workflow.task.updated",
            "workflow.task.updated",
            "workflow.task.added",
            "thread.item.done:workflow",
            "thread.item.added:assistant_message",
        ],
        "{kinds:?}"
    );
    assert_eq!(events[4]["update"]["task"]["content"], "**Multiplying** ", "the first thought streams as it comes");
    let items = gw.app.items(USER, &thread).await;
    let types: Vec<&str> = items.iter().filter_map(|item| item["type"].as_str()).collect();
    assert_eq!(types, ["user_message", "workflow", "assistant_message"]);
    let workflow = &item_of(&items, "workflow")["workflow"];
    assert_eq!(workflow["type"], "reasoning");
    let thoughts: Vec<&Value> = workflow["tasks"].as_array().unwrap().iter().map(|task| &task["content"]).collect();
    assert_eq!(thoughts, [&json!("**Multiplying** 17 by 23."), &json!("Checking: 391.")]);
    assert!(workflow["summary"]["duration"].is_i64() && workflow["expanded"] == false, "{workflow}");
    assert_eq!(item_of(&items, "assistant_message")["content"][0]["text"], "17 × 23 = 391.");
    assert_eq!(gw.requests()[0]["reasoning"], json!({"summary": "auto"}));
    gw.check_conformance();
}

#[tokio::test]
async fn generated_images_stream_their_partials_then_the_final_image() {
    let tools = r#"[{"type": "image_generation", "partial_images": 2}]"#;
    let gw = start(|config| config.model.hosted_tools = Some(tools.into()));
    let (thread, events) = gw.play("gw_image").await;
    let updates: Vec<&Value> = events.iter().filter(|e| e["update"]["type"] == "generated_image.updated").collect();
    let progress: Vec<f64> = updates.iter().filter_map(|e| e["update"]["progress"].as_f64()).collect();
    assert_eq!(progress, [0.0, 0.5]);
    assert_eq!(updates[1]["update"]["image"], json!({"id": "ig_gw", "url": "data:image/png;base64,UGFydGlhbDE="}));
    let items = gw.app.items(USER, &thread).await;
    let types: Vec<&str> = items.iter().filter_map(|item| item["type"].as_str()).collect();
    assert_eq!(types, ["user_message", "generated_image", "assistant_message"]);
    assert_eq!(
        item_of(&items, "generated_image")["image"],
        json!({"id": "ig_gw", "url": "data:image/png;base64,RmluYWxJbWFnZQ=="})
    );
    assert_eq!(gw.requests()[0]["tools"][1], json!({"type": "image_generation", "partial_images": 2}));
    gw.check_conformance();
}

#[tokio::test]
async fn hosted_tools_reach_the_request_and_web_searches_show_as_tasks() {
    let tools = r#"[{"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_docs"]}, {"type": "code_interpreter"}]"#;
    let gw = start(|config| config.model.hosted_tools = Some(tools.into()));
    let (thread, events) = gw.play("gw_web_search").await;
    let sent = &gw.requests()[0]["tools"];
    assert_eq!(sent[0]["name"], "get_time");
    assert_eq!(sent[1], json!({"type": "web_search"}));
    assert_eq!(sent[2], json!({"type": "file_search", "vector_store_ids": ["vs_docs"]}));
    assert_eq!(sent[3], json!({"type": "code_interpreter", "container": {"type": "auto"}}));
    let added = events.iter().find(|e| e["type"] == "thread.item.added" && e["item"]["type"] == "workflow").unwrap();
    let running = &added["item"]["workflow"]["tasks"][0];
    assert_eq!((&running["type"], &running["status_indicator"]), (&json!("web_search"), &json!("loading")));
    let items = gw.app.items(USER, &thread).await;
    let search = &item_of(&items, "workflow")["workflow"]["tasks"][0];
    assert_eq!(search["status_indicator"], "complete");
    assert_eq!(search["queries"], json!(["rust 1.85 release"]));
    let message = item_of(&items, "assistant_message");
    assert_eq!(message["content"][0]["annotations"][0]["source"]["title"], "Announcing Rust 1.85.0");
    gw.check_conformance();
}

#[tokio::test]
async fn a_client_tool_call_ends_the_turn_and_its_output_goes_back_as_function_items() {
    let gw = start(|_| {});
    let (thread, events) = gw.play("gw_function_call").await;
    let call = &events.iter().rev().find(|e| e["type"] == "thread.item.done").unwrap()["item"];
    assert_eq!(
        (&call["type"], &call["status"], &call["call_id"], &call["name"], &call["arguments"]),
        (
            &json!("client_tool_call"),
            &json!("pending"),
            &json!("call_gw_time"),
            &json!("get_time"),
            &json!({"city": "Paris"})
        )
    );
    gw.fake.push_response(Reply::responses(fake_openai::response_text_events("It is noon in Paris.")));
    let params = json!({"thread_id": thread, "result": {"time": "12:00"}});
    let answered = gw.app.stream(USER, "threads.add_client_tool_output", params).await;
    assert_eq!(assistant_text(&answered), "It is noon in Paris.");
    let input = &gw.requests()[1]["input"];
    let tail: Vec<&Value> = input.as_array().unwrap().iter().rev().take(2).rev().collect();
    assert_eq!(
        tail,
        [
            &json!({"type": "function_call", "call_id": "call_gw_time", "name": "get_time", "arguments": "{\"city\":\"Paris\"}"}),
            &json!({"type": "function_call_output", "call_id": "call_gw_time", "output": "{\"time\":\"12:00\"}"}),
        ]
    );
    gw.check_conformance();
}

#[tokio::test]
async fn a_call_to_a_tool_nobody_offers_is_an_error_and_titles_come_through_responses() {
    let gw = start(|config| config.model.titles = true);
    let mut fixture = responses_fixture("gw_function_call");
    let renamed = serde_json::to_string(&fixture.events).unwrap().replace("\"get_time\"", "\"launch_rockets\"");
    fixture.events = serde_json::from_str(&renamed).unwrap();
    gw.fake.push_response(fixture.reply());
    let (thread, events) = gw.app.create_thread(USER, &fixture.user_text).await;
    let last = events.last().unwrap();
    assert_eq!((&last["type"], &last["allow_retry"]), (&json!("error"), &json!(true)));
    assert!(last["message"].as_str().unwrap().contains("`launch_rockets`"), "{last}");
    // A first turn that answers gets a title, asked of the Responses API too.
    gw.fake.push_response(Reply::responses(fake_openai::response_text_events("It is noon.")));
    let title = json!({"id": "resp_t", "object": "response", "status": "completed", "output": [
        {"type": "message", "id": "msg_t", "role": "assistant", "content": [{"type": "output_text", "text": "\"Time in Paris.\"", "annotations": []}]}]});
    gw.fake.push_response(Reply::json(200, title));
    let (_, events) = gw.app.create_thread(USER, "What time is it?").await;
    let updated = events.iter().find(|e| e["type"] == "thread.updated").expect("a title");
    assert_eq!(updated["thread"]["title"], "Time in Paris");
    let asked = gw.requests().pop().unwrap();
    assert_eq!((&asked["stream"], &asked["store"]), (&Value::Null, &json!(false)));
    assert!(asked["input"].as_str().unwrap().contains("Assistant: It is noon."), "{asked}");
    assert!(gw.app.items(USER, &thread).await.iter().all(|item| item["type"] != "client_tool_call"));
    gw.check_conformance();
}

#[tokio::test]
async fn a_refusal_is_the_answer_then_a_retryable_error() {
    let gw = start(|_| {});
    let (thread, events) = gw.play("gw_refusal").await;
    assert_eq!(deltas(&events), "I can't help with that.");
    // As in the reference, where the Agents SDK raises on a refusal once the message is done.
    let last = events.last().unwrap();
    assert_eq!(
        (&last["type"], &last["code"], &last["allow_retry"]),
        (&json!("error"), &json!("stream.error"), &json!(true))
    );
    let items = gw.app.items(USER, &thread).await;
    assert_eq!(item_of(&items, "assistant_message")["content"][0]["text"], "I can't help with that.");
    gw.check_conformance();
}

#[tokio::test]
async fn a_failed_response_ends_the_turn_with_a_stream_error_not_a_5xx() {
    let gw = start(|_| {});
    // `create_thread` asserts the 200 and the event stream.
    let (thread, events) = gw.play("gw_failed").await;
    let last = events.last().unwrap();
    assert_eq!(
        (&last["type"], &last["code"], &last["allow_retry"]),
        (&json!("error"), &json!("stream.error"), &json!(true))
    );
    // What the user saw of the answer is kept, as for any failed turn.
    let items = gw.app.items(USER, &thread).await;
    assert_eq!(item_of(&items, "assistant_message")["content"][0]["text"], "The capital");
    // An unknown event type is skipped rather than failing the turn.
    let mut events = fake_openai::response_text_events("Still fine.");
    events.insert(1, json!({"type": "response.brand_new_event", "sequence_number": 99, "payload": {}}));
    gw.fake.push_response(Reply::responses(events));
    assert_eq!(assistant_text(&gw.app.say(USER, &thread, "again").await), "Still fine.");
    gw.check_conformance();
}

#[tokio::test]
async fn a_multi_turn_thread_with_attachments_converts_as_the_reference_does() {
    let gw = start(|_| {});
    let mut attachment_ids = Vec::new();
    for (name, mime, bytes) in [("cat.png", "image/png", &b"PNG"[..]), ("notes.txt", "text/plain", &b"hello"[..])] {
        let created = gw
            .app
            .call(USER, "attachments.create", json!({"name": name, "size": bytes.len(), "mime_type": mime}))
            .await;
        let url = created["upload_descriptor"]["url"].as_str().expect("upload url");
        assert!(gw.app.client.put(url).body(bytes.to_vec()).send().await.unwrap().status().is_success());
        attachment_ids.push(created["id"].clone());
    }
    gw.fake.push_response(Reply::responses(fake_openai::response_text_events("A cat and notes.")));
    let input = json!({"content": [{"type": "input_text", "text": "What are these?"}], "attachments": attachment_ids,
        "quoted_text": "old quote", "inference_options": {}});
    let events = gw.app.stream(USER, "threads.create", json!({"input": input})).await;
    let thread = events[0]["thread"]["id"].as_str().unwrap().to_string();
    gw.fake.push_response(Reply::responses(fake_openai::response_text_events("Yes.")));
    gw.app.say(USER, &thread, "Sure?").await;
    let second = gw.requests().pop().unwrap();
    assert_eq!(
        second["input"],
        json!([
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "What are these?"},
                {"type": "input_image", "detail": "auto", "image_url": "data:image/png;base64,UE5H"},
                {"type": "input_file", "filename": "notes.txt", "file_data": "data:text/plain;base64,aGVsbG8="},
            ]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "A cat and notes.", "annotations": []}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Sure?"}]},
        ]),
        "the quote counts on the last message only"
    );
    let first = &gw.requests()[0]["input"];
    assert_eq!(first[1]["content"][0]["text"], "The user is referring to this in particular: \nold quote");
    gw.check_conformance();
}

#[tokio::test]
async fn each_workflow_entry_is_a_profile_with_its_api_and_tools() {
    let fake = FakeOpenAi::start();
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let text = "[workflows.wf_chat]\nresponder = \"model\"\napi = \"chat\"\nclient_tools = []\n\
        [workflows.wf_resp]\nresponder = \"model\"\napi = \"responses\"\nmodel = \"profile-model\"\n\
        instructions = \"You answer for the profile.\"\nhosted_tools = [{type = \"web_search\"}]\n\
        client_tools = [{name = \"lookup\", description = \"Looks a word up\"}]\n";
    std::fs::write(file.path(), text).unwrap();
    // The environment says `chat`: the `wf_resp` entry overrides it.
    let config = config_for(&fake, |config| config.model.model_api = Some("chat".into()));
    let defaults = WorkflowDefaults {
        responder: Arc::new(EchoResponder::new()),
        model: config.model.settings().expect("valid model settings"),
        agent_history_items: 20,
        agent_timeout: Duration::from_secs(5),
        mcp: None,
    };
    let router = WorkflowRouter::load(file.path().to_path_buf(), defaults.clone()).expect("valid workflows file");
    let app = spawn(Spawn {
        responder: Arc::new(router),
        configure: Box::new(|config| config.access.auth = Some(AuthMode::Session)),
        ..Spawn::default()
    });
    fake.push(Reply::text(MODEL, &["By chat."]));
    fake.push_response(Reply::responses(fake_openai::response_text_events("By responses.")));
    for (workflow, answer) in [("wf_chat", "By chat."), ("wf_resp", "By responses.")] {
        let body = json!({"user": USER, "workflow": {"id": workflow}});
        let session: Value =
            app.client.post(app.url("/v1/chatkit/sessions")).json(&body).send().await.unwrap().json().await.unwrap();
        let secret = session["client_secret"].as_str().expect("a client secret");
        let turn = request("threads.create", json!({"input": text_input("Hi")}));
        let response = app.client.post(app.url("/chatkit")).bearer_auth(secret).json(&turn).send().await.unwrap();
        let events = parse_sse(&response.text().await.unwrap());
        assert_eq!(assistant_text(&events), answer, "{workflow}");
    }
    assert_eq!((fake.chat_requests().len(), fake.responses_requests().len()), (1, 1));
    // `client_tools = []` offers none on the chat entry, where the environment declares `get_time`.
    assert!(fake.chat_requests()[0].json.as_ref().unwrap().get("tools").is_none(), "no tools on wf_chat");
    // The responses entry is a profile of its own: model, instructions, client and hosted tools.
    let profile = fake.responses_requests()[0].json.clone().unwrap();
    assert_eq!(
        (&profile["model"], &profile["instructions"]),
        (&json!("profile-model"), &json!("You answer for the profile."))
    );
    assert_eq!(
        profile["tools"],
        json!([
            {"type": "function", "name": "lookup", "description": "Looks a word up",
             "parameters": {"type": "object", "properties": {}}, "strict": false},
            {"type": "web_search"},
        ])
    );
    // Hosted tools on a chat entry, or of an unknown type, are refused with the entry named.
    for (bad, needle) in [
        (
            "[workflows.wf_x]\nresponder = \"model\"\napi = \"chat\"\nhosted_tools = [{type = \"web_search\"}]\n",
            "responses",
        ),
        ("[workflows.wf_x]\nresponder = \"model\"\nhosted_tools = [{type = \"crystal_ball\"}]\n", "`crystal_ball`"),
        ("[workflows.wf_x]\nresponder = \"model\"\napi = \"soap\"\n", "soap"),
        (
            "[workflows.wf_x]\nresponder = \"model\"\nclient_tools = [{name = \"a b\"}]\n",
            "`client_tools`: tool name `a b`",
        ),
    ] {
        std::fs::write(file.path(), bad).unwrap();
        let error = WorkflowRouter::load(file.path().to_path_buf(), defaults.clone()).err().expect("refused");
        assert!(error.contains("wf_x") && error.contains(needle), "{error}");
    }
}

/// The oracle comparison: every fixture of the reference oracle (`responses_oracle.rs`) played through the gateway
/// stores the same items as openai-chatkit 1.6.5 stores from the same model stream (ids, thread ids, timestamps and
/// the workflow's wall-clock duration aside), ends the same way (an `error` event or none), and every event the
/// gateway streamed passes the reference's types. One difference is by design: a response that fails midway keeps
/// the part of the answer the user saw (as every failed turn of the gateway does, README "Model responder"), where
/// the reference drops it; so for `failed` the stored items are the reference's plus that partial answer.
#[tokio::test]
async fn every_oracle_fixture_stores_what_the_reference_stores() {
    use crate::responses_oracle::{normalize, run_oracle, CASES};
    for (case, _) in CASES {
        let gw = start(|_| {});
        let (thread, events) = gw.play(case).await;
        let oracle = run_oracle(case);
        let mut items = gw.app.items(USER, &thread).await;
        if case == "failed" {
            let partial = items.pop().expect("the partial answer");
            assert_eq!(partial["type"], "assistant_message", "{case}: the kept partial answer");
        }
        assert_eq!(
            normalize(&items),
            normalize(&oracle.items),
            "{case}: the gateway stored (left) what the reference did not (right)"
        );
        let error_of = |events: &[Value]| {
            events.iter().find(|e| e["type"] == "error").map(|e| (e["code"].clone(), e["allow_retry"].clone()))
        };
        assert_eq!(error_of(&events), error_of(&oracle.events), "{case}: the turn ends as the reference's does");
        gw.check_conformance();
    }
}
