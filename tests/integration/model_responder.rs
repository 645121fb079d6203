//! The model responder end to end: the whole gateway on loopback, its `OpenAiResponder` pointed at the fake
//! OpenAI-compatible server of `crate::common::fake_openai`, driven through `POST /chatkit` as ChatKit.js drives it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::fake_openai::{self, FakeOpenAi, Reply, MODEL};
use crate::common::viewer::{rebuilt_text, Frame};
use crate::common::*;
use base64::Engine as _;
use chatkit_gateway::config::Config;
use chatkit_gateway::ids::UserId;
use chatkit_gateway::ids::{new_id, IdKind};
use chatkit_gateway::protocol::{ItemBody, Order, ThreadItem};
use chatkit_gateway::responder::{ModelSettings, OpenAiResponder};
use chatkit_gateway::secret::Secret;
use chatkit_gateway::store::ListQuery;
use serde_json::{json, Value};

/// The key the gateway sends upstream; no part of it may ever reach a client.
const KEY: &str = "sk-test-gateway-key-0123456789abcdef";
/// The system prompt every test configures.
const SYSTEM_PROMPT: &str = "You are the test assistant of the model responder tests.";
/// How the title request begins, which is how a router tells it from a turn.
const TITLE_PROMPT_START: &str = "Write a title of 3 to 6 words";
/// The history the model gets unless a test says otherwise: more items than any test writes.
const HISTORY: usize = 40;
/// The client tools every test offers unless it says otherwise.
const TOOLS: &str = r#"[
    {"name": "get_time", "description": "The local time in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
    {"name": "open_tab"}
]"#;
/// The note the engine stores for the model when a client cancels a turn.
const CANCELLED_NOTE: &str = "The user cancelled the stream. Stop responding to the prior request.";
/// Bounds every wait on the fake server.
const WAIT: Duration = Duration::from_secs(10);

/// A gateway whose responder is an `OpenAiResponder` talking to `fake`. The fake is dropped first, so that no
/// turn can keep the gateway's shutdown waiting on an upstream call.
struct Model {
    fake: FakeOpenAi,
    app: TestApp,
}

/// Starts a fake model server and a gateway answering through it; `tweak` changes the configuration.
fn start(tweak: impl FnOnce(&mut Config)) -> Model {
    start_tuned(tweak, |_| {})
}

/// As `start`, and `tune` changes the responder's settings, e.g. to shorten its timeout.
fn start_tuned(tweak: impl FnOnce(&mut Config), tune: impl FnOnce(&mut ModelSettings)) -> Model {
    let fake = FakeOpenAi::start();
    let mut config = Config::for_tests("unused".into());
    config.model.name = Some(MODEL.into());
    config.model.openai_api_key = Some(Secret::new(KEY));
    config.model.openai_base_url = fake.base_url();
    config.model.system_prompt = SYSTEM_PROMPT.into();
    config.model.history_items = HISTORY;
    config.model.client_tools = Some(TOOLS.into());
    config.model.titles = false;
    config.model.model_timeout_secs = 10;
    config.model.transcribe_model = "transcribe-test".into();
    tweak(&mut config);
    let mut settings = config.model.settings().expect("valid model settings").expect("a model responder");
    settings.retry_backoff = Duration::from_millis(10);
    tune(&mut settings);
    let responder = OpenAiResponder::new(settings).expect("responder builds");
    let configure = move |app_config: &mut Config| {
        let data_dir = app_config.storage.data_dir.clone();
        *app_config = config;
        app_config.storage.data_dir = data_dir;
    };
    let app = spawn(Spawn { responder: Arc::new(responder), configure: Box::new(configure), ..Spawn::default() });
    Model { fake, app }
}

impl Model {
    /// The JSON bodies of the chat requests made for turns, title requests left out.
    fn turn_requests(&self) -> Vec<Value> {
        self.fake
            .chat_requests()
            .into_iter()
            .filter_map(|request| request.json)
            .filter(|body| !is_title(body))
            .collect()
    }

    /// The JSON bodies of the title requests.
    fn title_requests(&self) -> Vec<Value> {
        self.fake.chat_requests().into_iter().filter_map(|request| request.json).filter(is_title).collect()
    }

    /// The body of the newest turn request.
    fn last_turn_request(&self) -> Value {
        self.turn_requests().pop().expect("a turn request was made")
    }

    /// Answers every title request with `title`.
    fn answer_titles(&self, title: &'static str) {
        self.fake.route(move |body| is_title(body).then(|| Reply::completion(MODEL, title)));
    }
}

/// Whether a chat request is the title request, by its system prompt.
fn is_title(body: &Value) -> bool {
    body["messages"][0]["content"].as_str().is_some_and(|prompt| prompt.starts_with(TITLE_PROMPT_START))
}

/// A user message input with inference options.
fn input_with(text: &str, inference_options: Value) -> Value {
    json!({"content": [{"type": "input_text", "text": text}], "attachments": [], "inference_options": inference_options})
}

/// Each event's type, with the update's type for `thread.item.updated`.
fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|event| match event["update"]["type"].as_str() {
            Some(update) => update.trim_start_matches("assistant_message.content_part.").to_string(),
            None => event["type"].as_str().unwrap_or("?").to_string(),
        })
        .collect()
}

/// The one error event of a failed turn, which must end it.
fn turn_error(events: &[Value]) -> Value {
    let errors = events.iter().filter(|event| event["type"] == "error").count();
    assert_eq!(errors, 1, "one error event: {events:?}");
    let last = events.last().expect("events").clone();
    assert_eq!(last["type"], "error", "the error ends the turn: {events:?}");
    assert_eq!(last["code"], "custom", "{last}");
    last
}

/// Sends a message the gateway must refuse before calling the model: its turn
/// ends with one error event (no retry) whose message names every one of
/// `names`, and the model service gets no new request. Answers the events.
async fn refused_before_upstream(m: &Model, thread_id: &str, input: Value, names: &[&str]) -> Vec<Value> {
    let before = m.fake.chat_requests().len();
    let events =
        m.app.stream("alice", "threads.add_user_message", json!({"thread_id": thread_id, "input": input})).await;
    let error = turn_error(&events);
    assert_eq!(error["allow_retry"], false);
    let message = message_of(&error);
    assert!(names.iter().all(|name| message.contains(name)), "{message} names {names:?}");
    assert_eq!(m.fake.chat_requests().len(), before, "no model call for a refused message");
    events
}

/// The message of an error event.
fn message_of(error: &Value) -> &str {
    error["message"].as_str().unwrap_or_else(|| panic!("an error event without a message: {error}"))
}

/// The user message as the model gets it.
fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

/// An assistant answer as the model gets it.
fn assistant(text: &str) -> Value {
    json!({"role": "assistant", "content": text})
}

/// The system message when no language is asked for.
fn system() -> Value {
    json!({"role": "system", "content": SYSTEM_PROMPT})
}

/// Everything stored for a thread, hidden items included, oldest first.
async fn stored_items(app: &TestApp, thread_id: &str) -> Vec<ThreadItem> {
    let query = ListQuery::first(100, Order::Asc);
    app.store.list_items(&UserId("alice".into()), thread_id, &query).await.expect("thread is stored").data
}

/// Starts a streaming operation as `alice` and reads its events until one satisfies `stop`; returns the response,
/// still open, and the events read.
async fn stream_until(
    app: &TestApp,
    op: &str,
    params: Value,
    stop: impl Fn(&Value) -> bool,
) -> (reqwest::Response, Vec<Value>) {
    let mut response = app.post_raw(Some("alice"), request(op, params).to_string()).await;
    assert_eq!(response.status(), 200);
    let mut received = Vec::new();
    loop {
        let chunk = tokio::time::timeout(WAIT, response.chunk())
            .await
            .expect("the next event in time")
            .expect("stream readable")
            .expect("the stream ended before the awaited event");
        received.extend_from_slice(&chunk);
        let text = String::from_utf8_lossy(&received);
        if let Some(end) = text.rfind("\n\n") {
            let events = parse_sse(&text[..end + 2]);
            if events.iter().any(&stop) {
                return (response, events);
            }
        }
    }
}

/// Whether an event is a text delta.
fn is_delta(event: &Value) -> bool {
    event["update"]["type"] == "assistant_message.content_part.text_delta"
}

/// Streams an operation as `alice` with an optional `Accept-Language`.
async fn stream_in(app: &TestApp, language: Option<&str>, op: &str, params: Value) -> Vec<Value> {
    let mut builder = app
        .client
        .post(app.url("/chatkit"))
        .header("content-type", "application/json")
        .header("x-user-id", "alice")
        .body(request(op, params).to_string());
    if let Some(language) = language {
        builder = builder.header("accept-language", language);
    }
    let response = builder.send().await.expect("request sent");
    assert_eq!(response.status(), 200);
    parse_sse(&response.text().await.expect("body"))
}

// ---------------------------------------------------------------------------
// 1. Event mapping.

#[tokio::test]
async fn chunks_stream_as_chatkit_events_and_rebuild_the_stored_message() {
    let m = start(|_| {});
    let mut chunks = fake_openai::text_chunks(MODEL, &["Hel", "lo, ", "wörld ✓", " See the docs."]);
    let citation = fake_openai::url_citation("https://docs.example/guide", "The guide", 15, 28);
    chunks[4] = fake_openai::annotate(chunks[4].clone(), vec![citation]);
    // Frames split every 3 bytes: mid-frame, mid-JSON and mid-character.
    m.fake.push(Reply::stream(chunks).split_every(3));
    let (thread_id, events) = m.app.create_thread("alice", "hello").await;
    let expected = [
        "thread.created",
        "thread.item.done",
        "stream_options",
        "thread.item.added",
        "added",
        "text_delta",
        "text_delta",
        "text_delta",
        "text_delta",
        "annotation_added",
        "done",
        "thread.item.done",
    ];
    assert_eq!(kinds(&events), expected, "{events:#?}");
    assert_eq!(events[1]["item"]["type"], "user_message");
    let added = &events[3]["item"];
    assert_eq!((&added["type"], &added["content"]), (&json!("assistant_message"), &json!([])), "added empty");
    let item_id = added["id"].as_str().expect("item id");
    assert!(events[4..11].iter().all(|event| event["item_id"] == item_id), "updates name the added item");
    let text = "Hello, wörld ✓ See the docs.";
    assert_eq!(deltas(&events), text);
    assert_eq!(assistant_text(&events), text);
    let annotation = &events[9]["update"];
    assert_eq!((&annotation["content_index"], &annotation["annotation_index"]), (&json!(0), &json!(0)));
    assert_eq!(annotation["annotation"]["source"]["url"], "https://docs.example/guide");
    assert_eq!(events[10]["update"]["content"]["text"], text, "content_part.done carries the whole text");

    // The stored message is the one the deltas built, with its citation.
    let items = m.app.items("alice", &thread_id).await;
    assert_eq!(items.len(), 2, "{items:?}");
    let stored = &items[1];
    assert_eq!((&stored["id"], &stored["type"]), (&json!(item_id), &json!("assistant_message")));
    assert_eq!(stored["content"][0]["text"], text);
    let source = &stored["content"][0]["annotations"][0]["source"];
    assert_eq!(
        (&source["type"], &source["url"], &source["title"]),
        (&json!("url"), &json!("https://docs.example/guide"), &json!("The guide"))
    );
    assert_eq!(stored["content"][0]["annotations"][0]["index"], 28);
    let request = m.last_turn_request();
    assert_eq!((&request["model"], &request["stream"]), (&json!(MODEL), &json!(true)));
    assert_eq!(fake_openai::StreamEnd::Completed, m.fake.wait_stream_ended(0, WAIT).await.expect("ended").0);

    // One large chunk is one delta, whole.
    let large = fake_openai::large_text(200_000);
    m.fake.push(Reply::stream(fake_openai::large_text_chunks(MODEL, large.len())).split_every(1500));
    let events = m.app.say("alice", &thread_id, "more").await;
    let expected =
        ["thread.item.done", "stream_options", "thread.item.added", "added", "text_delta", "done", "thread.item.done"];
    assert_eq!(kinds(&events), expected);
    assert!(deltas(&events) == large, "the large delta arrived whole");
    let items = m.app.items("alice", &thread_id).await;
    assert!(items[3]["content"][0]["text"] == json!(large), "the large answer is stored whole");

    // A server that sends a usage chunk last and no `[DONE]` ends the answer as well.
    let chunks = fake_openai::with_usage(fake_openai::text_chunks(MODEL, &["Short."]), 12, 2);
    m.fake.push(Reply::stream(chunks).without_done());
    let events = m.app.say("alice", &thread_id, "short").await;
    assert_eq!(kinds(&events), expected);
    assert_eq!(assistant_text(&events), "Short.");
}

// ---------------------------------------------------------------------------
// 2. The model's input.

#[tokio::test]
async fn the_thread_becomes_the_models_input_as_the_reference_converts_it() {
    let m = start(|_| {});
    // A user message with a tag and quoted text; as the newest item its quote goes along.
    let tagged = json!({
        "content": [
            {"type": "input_text", "text": "Hi "},
            {"type": "input_tag", "id": "tag_1", "text": "Ann", "data": {"team": "ops"}, "interactive": false},
        ],
        "attachments": [],
        "quoted_text": "old quote",
        "inference_options": {},
    });
    m.fake.push(Reply::text(MODEL, &["Hello Ann."]));
    let events = m.app.stream("alice", "threads.create", json!({"input": tagged})).await;
    let thread_id = events[0]["thread"]["id"].as_str().expect("thread.created").to_string();
    let first = m.last_turn_request()["messages"].clone();
    let tag_context = first[3]["content"].as_str().expect("tag context").to_string();
    assert!(tag_context.starts_with("# User-provided context for @-mentions"), "{tag_context}");
    assert!(tag_context.ends_with("\n@Ann: {\"team\":\"ops\"}"), "{tag_context}");
    let quote = user("The user is referring to this in particular: \nold quote");
    assert_eq!(first, json!([system(), user("Hi @Ann"), quote, user(&tag_context)]));

    // A client tool call, completed.
    m.fake.push(Reply::stream(fake_openai::tool_call_chunks(
        MODEL,
        "call_1",
        "get_time",
        &["{\"city\"", ": \"Oslo\"}"],
    )));
    turn_ends_with_pending_call(&m.app.say("alice", &thread_id, "What time is it?").await);
    m.fake.push(Reply::text(MODEL, &["It is noon."]));
    let params = json!({"thread_id": thread_id, "result": {"time": "12:00"}});
    assert_eq!(assistant_text(&m.app.stream("alice", "threads.add_client_tool_output", params).await), "It is noon.");

    // A turn the client cancels: its partial answer and a hidden note stay.
    m.fake.push(Reply::text(MODEL, &["Once ", "upon a time"]).delay(Duration::from_millis(300)));
    let params = json!({"thread_id": thread_id, "input": text_input("Tell me a story")});
    let (response, _) = stream_until(&m.app, "threads.add_user_message", params, is_delta).await;
    drop(response);
    eventually("the cancelled turn is stored", || async {
        stored_items(&m.app, &thread_id).await.iter().any(|item| matches!(item.body, ItemBody::SdkHiddenContext { .. }))
    })
    .await;

    // A widget, stored as a responder's action stores one, and a tool call that never gets its output.
    let widget = json!({"type": "Card", "children": [{"type": "Text", "value": "Sunny"}]});
    let widget_id = new_id(IdKind::Message);
    let item = ThreadItem::new(
        widget_id.clone(),
        thread_id.clone(),
        ItemBody::Widget { widget: widget.clone(), copy_text: None },
    );
    m.app.store.add_item(&UserId("alice".into()), &item).await.expect("widget stored");
    m.fake.push(Reply::stream(fake_openai::tool_call_chunks(MODEL, "call_2", "open_tab", &["{}"])));
    turn_ends_with_pending_call(&m.app.say("alice", &thread_id, "Open a tab").await);
    let pending = stored_items(&m.app, &thread_id).await.pop().expect("items");
    assert!(matches!(&pending.body, ItemBody::ClientToolCall(call) if call.call_id == "call_2"), "{pending:?}");

    // The newest message quotes something; the first one's quote no longer counts.
    m.fake.push(Reply::text(MODEL, &["Done."]));
    let input = json!({"content": [{"type": "input_text", "text": "Last one"}], "attachments": [], "quoted_text": "this part", "inference_options": {}});
    let events =
        m.app.stream("alice", "threads.add_user_message", json!({"thread_id": thread_id, "input": input})).await;
    assert_eq!(assistant_text(&events), "Done.");
    let expected = json!([
        system(),
        user("Hi @Ann"),
        user(&tag_context),
        assistant("Hello Ann."),
        user("What time is it?"),
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{\"city\":\"Oslo\"}"}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"time\":\"12:00\"}"},
        assistant("It is noon."),
        user("Tell me a story"),
        assistant("Once "),
        user(&format!("Hidden context for the agent (not shown to the user):\n<HiddenContext>\n{CANCELLED_NOTE}\n</HiddenContext>")),
        user(&format!("The following graphical UI widget (id: {widget_id}) was displayed to the user:{widget}")),
        user("Open a tab"),
        user("Last one"),
        user("The user is referring to this in particular: \nthis part"),
    ]);
    let messages = m.last_turn_request()["messages"].clone();
    assert_eq!(messages, expected, "got {messages:#}");
    assert!(!messages.to_string().contains("call_2"), "the pending tool call stays out");
}

/// Checks that a turn ended with a pending client tool call; returns that call.
fn turn_ends_with_pending_call(events: &[Value]) -> Value {
    let last = events.last().expect("events");
    assert_eq!(
        (&last["type"], &last["item"]["type"]),
        (&json!("thread.item.done"), &json!("client_tool_call")),
        "{events:?}"
    );
    assert_eq!(last["item"]["status"], "pending");
    last["item"].clone()
}

#[tokio::test]
async fn only_the_newest_history_items_reach_the_model() {
    let m = start(|config| config.model.history_items = 3);
    m.fake.push(Reply::text(MODEL, &["A1"])).push(Reply::text(MODEL, &["A2"])).push(Reply::text(MODEL, &["A3"]));
    let (thread_id, _) = m.app.create_thread("alice", "one").await;
    m.app.say("alice", &thread_id, "two").await;
    m.app.say("alice", &thread_id, "three").await;
    let requests = m.turn_requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0]["messages"], json!([system(), user("one")]));
    assert_eq!(requests[1]["messages"], json!([system(), user("one"), assistant("A1"), user("two")]));
    assert_eq!(requests[2]["messages"], json!([system(), user("two"), assistant("A2"), user("three")]), "three items");
}

// ---------------------------------------------------------------------------
// 3. Titles.

#[tokio::test]
async fn the_first_turn_names_the_thread_and_later_turns_do_not() {
    let m = start(|config| {
        config.model.titles = true;
        config.model.title_model = Some("title-model".into());
    });
    m.answer_titles("\"Planning a Paris Trip.\"");
    m.fake.push(Reply::text(MODEL, &["Sure, ", "let us plan it."]));
    let (thread_id, events) = m.app.create_thread("alice", "Plan a trip to Paris").await;
    let kinds = kinds(&events);
    assert_eq!(kinds[kinds.len() - 2..], ["thread.item.done", "thread.updated"], "{kinds:?}");
    let updated = &events.last().unwrap()["thread"];
    assert_eq!((&updated["id"], &updated["title"]), (&json!(thread_id), &json!("Planning a Paris Trip")));
    let titles = m.title_requests();
    assert_eq!(titles.len(), 1);
    assert_eq!((&titles[0]["model"], &titles[0]["stream"]), (&json!("title-model"), &json!(false)));
    assert_eq!(titles[0]["messages"][1], user("User: Plan a trip to Paris\nAssistant: Sure, let us plan it."));
    let thread = m.app.call("alice", "threads.get_by_id", json!({"thread_id": thread_id})).await;
    assert_eq!(thread["title"], "Planning a Paris Trip", "the title is stored");

    m.fake.push(Reply::text(MODEL, &["Sure."]));
    let events = m.app.say("alice", &thread_id, "And Rome?").await;
    assert!(!events.iter().any(|event| event["type"] == "thread.updated"), "{events:?}");
    assert_eq!(m.title_requests().len(), 1, "a named thread gets no second title");

    let untitled = start(|_| {});
    untitled.answer_titles("Never Asked For");
    untitled.fake.push(Reply::text(MODEL, &["Hi."]));
    let (thread_id, events) = untitled.app.create_thread("alice", "hello").await;
    assert!(!events.iter().any(|event| event["type"] == "thread.updated"), "{events:?}");
    assert!(untitled.title_requests().is_empty(), "titles: false makes no title call");
    let thread = untitled.app.call("alice", "threads.get_by_id", json!({"thread_id": thread_id})).await;
    assert_eq!(thread["title"], Value::Null);
}

// ---------------------------------------------------------------------------
// 4. Model selection.

#[tokio::test]
async fn a_message_picks_an_allowed_model_and_an_unknown_one_is_refused_before_any_call() {
    let m = start(|config| config.model.models = vec!["big-model".into(), "small-model".into()]);
    m.fake.push(Reply::text("big-model", &["Big answer."])).push(Reply::text(MODEL, &["Default answer."]));
    let input = input_with("hello", json!({"model": "big-model"}));
    let events = m.app.stream("alice", "threads.create", json!({"input": input})).await;
    let thread_id = events[0]["thread"]["id"].as_str().unwrap().to_string();
    assert_eq!(assistant_text(&events), "Big answer.");
    assert_eq!(m.last_turn_request()["model"], "big-model");
    m.app.say("alice", &thread_id, "and now?").await;
    assert_eq!(m.last_turn_request()["model"], MODEL, "no choice, the default model");

    let input = input_with("hello", json!({"model": "gpt-unknown"}));
    let events =
        refused_before_upstream(&m, &thread_id, input, &["gpt-unknown", "fake-model, big-model, small-model"]).await;
    assert_eq!(kinds(&events), ["thread.item.done", "stream_options", "error"]);
}

// ---------------------------------------------------------------------------
// 5. Client tools.

#[tokio::test]
async fn a_client_tool_call_ends_the_turn_and_its_output_continues_it() {
    let m = start(|_| {});
    let parts = ["{\"ci", "ty\": \"Pa", "ris\"}"];
    m.fake.push(Reply::stream(fake_openai::tool_call_chunks(MODEL, "call_abc", "get_time", &parts)));
    let (thread_id, events) = m.app.create_thread("alice", "What time is it in Paris?").await;
    assert_eq!(kinds(&events), ["thread.created", "thread.item.done", "stream_options", "thread.item.done"]);
    let call = turn_ends_with_pending_call(&events);
    assert_eq!((&call["call_id"], &call["name"]), (&json!("call_abc"), &json!("get_time")));
    assert_eq!(call["arguments"], json!({"city": "Paris"}), "arguments parsed from their pieces");
    let first = m.last_turn_request();
    let tools = first["tools"].as_array().expect("tools offered");
    assert_eq!(tools[0]["function"]["name"], "get_time");
    assert_eq!(tools[0]["function"]["parameters"]["properties"]["city"]["type"], "string");
    assert_eq!(
        tools[1],
        json!({"type": "function", "function": {"name": "open_tab", "parameters": {"type": "object", "properties": {}}}})
    );
    assert!(first.get("tool_choice").is_none(), "no tool forced: {first}");

    m.fake.push(Reply::text(MODEL, &["It is ", "14:05 in Paris."]));
    let params = json!({"thread_id": thread_id, "result": {"time": "14:05"}});
    let events = m.app.stream("alice", "threads.add_client_tool_output", params).await;
    assert_eq!(kinds(&events)[..3], ["stream_options", "thread.item.added", "added"]);
    assert_eq!(assistant_text(&events), "It is 14:05 in Paris.");
    let messages = m.last_turn_request()["messages"].clone();
    assert_eq!(
        messages,
        json!([
            system(),
            user("What time is it in Paris?"),
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_abc", "type": "function", "function": {"name": "get_time", "arguments": "{\"city\":\"Paris\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_abc", "content": "{\"time\":\"14:05\"}"},
        ])
    );
    let items = m.app.items("alice", &thread_id).await;
    let types: Vec<&str> = items.iter().map(|item| item["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["user_message", "client_tool_call", "assistant_message"]);
    assert_eq!((&items[1]["status"], &items[1]["output"]), (&json!("completed"), &json!({"time": "14:05"})));
}

#[tokio::test]
async fn a_chosen_tool_is_forced_for_that_message_and_an_undeclared_one_is_refused() {
    let m = start(|_| {});
    m.fake.push(Reply::stream(fake_openai::tool_call_chunks(MODEL, "call_1", "open_tab", &["{}"])));
    let input = input_with("Open one", json!({"tool_choice": {"id": "open_tab"}}));
    let events = m.app.stream("alice", "threads.create", json!({"input": input})).await;
    let thread_id = events[0]["thread"]["id"].as_str().unwrap().to_string();
    assert_eq!(turn_ends_with_pending_call(&events)["name"], "open_tab");
    let forced = json!({"type": "function", "function": {"name": "open_tab"}});
    assert_eq!(m.last_turn_request()["tool_choice"], forced);

    // Forcing the tool again after its output would make the model call it again, and again: the Agents SDK
    // resets the choice after a tool call for that reason (`reset_tool_choice`).
    m.fake.push(Reply::text(MODEL, &["Opened."]));
    let params = json!({"thread_id": thread_id, "result": {"opened": true}});
    assert_eq!(assistant_text(&m.app.stream("alice", "threads.add_client_tool_output", params).await), "Opened.");
    let after_output = m.last_turn_request();
    assert!(after_output.get("tool_choice").is_none(), "the tool is not forced after its output: {after_output}");
    assert!(after_output["tools"].is_array(), "the tools are still offered");

    let input = input_with("Delete everything", json!({"tool_choice": {"id": "rm_rf"}}));
    refused_before_upstream(&m, &thread_id, input, &["rm_rf", "get_time, open_tab"]).await;
}

#[tokio::test]
async fn parallel_tool_calls_pass_one_call_to_the_client_and_its_output_to_that_call() {
    let m = start(|_| {});
    let calls = json!({"role": "assistant", "content": null, "tool_calls": [
        {"index": 0, "id": "call_paris", "type": "function", "function": {"name": "get_time", "arguments": "{\"city\": \"Paris\"}"}},
        {"index": 1, "id": "call_rome", "type": "function", "function": {"name": "get_time", "arguments": "{\"city\": \"Rome\"}"}},
    ]});
    let chunks = vec![fake_openai::chunk(MODEL, calls, None), fake_openai::chunk(MODEL, json!({}), Some("tool_calls"))];
    m.fake.push(Reply::stream(chunks));
    let (thread_id, events) = m.app.create_thread("alice", "What time is it in Paris and in Rome?").await;
    let calls: Vec<&Value> = events.iter().filter(|event| event["item"]["type"] == "client_tool_call").collect();
    assert_eq!(calls.len(), 1, "the client answers one pending call per turn: {events:?}");
    let call = turn_ends_with_pending_call(&events);
    assert_eq!((&call["call_id"], &call["arguments"]), (&json!("call_paris"), &json!({"city": "Paris"})));

    // The client answers the call it was given, and the output is recorded against that call.
    m.fake.push(Reply::text(MODEL, &["It is noon in Paris."]));
    let params = json!({"thread_id": thread_id, "result": {"time": "12:00"}});
    m.app.stream("alice", "threads.add_client_tool_output", params).await;
    let messages = m.last_turn_request()["messages"].clone();
    assert_eq!(messages[2]["tool_calls"][0]["id"], "call_paris", "{messages:#}");
    assert_eq!(messages[3], json!({"role": "tool", "tool_call_id": "call_paris", "content": "{\"time\":\"12:00\"}"}));
    let items = m.app.items("alice", &thread_id).await;
    let stored: Vec<(&Value, &Value)> = items.iter().map(|item| (&item["type"], &item["call_id"])).collect();
    assert_eq!(stored[1], (&json!("client_tool_call"), &json!("call_paris")), "{items:?}");
    assert_eq!(items.len(), 3, "{items:?}");
}

// ---------------------------------------------------------------------------
// 6. Failures.

/// One way the model service fails, and what the user must be told.
struct Failure {
    what: &'static str,
    reply: Reply,
    allow_retry: bool,
    says: &'static [&'static str],
    never_says: &'static [&'static str],
}

/// Runs a first turn against a service that answers every chat request with `failure.reply`, and checks the
/// one error event it ends with; `timeout` is the responder's.
async fn check_failure(failure: Failure, timeout: Duration) {
    let what = failure.what;
    let m = start_tuned(|_| {}, |settings| settings.timeout = timeout);
    // Every attempt gets the same failure, however often the client tries.
    let reply = failure.reply.clone();
    m.fake.route(move |_| Some(reply.clone()));
    let (thread_id, events) = m.app.create_thread("alice", "hello").await;
    assert_eq!(kinds(&events), ["thread.created", "thread.item.done", "stream_options", "error"], "{what}");
    let error = turn_error(&events);
    assert_eq!(error["allow_retry"], failure.allow_retry, "{what}: {error}");
    let message = message_of(&error);
    assert!(!message.contains('{') && message.ends_with('.'), "{what}: not readable: {message}");
    for needle in failure.says {
        assert!(message.contains(needle), "{what}: `{message}` does not say `{needle}`");
    }
    for needle in failure.never_says.iter().chain(&[KEY, "http error", "cut off"]) {
        assert!(!message.contains(needle), "{what}: `{message}` says `{needle}`");
    }
    let items = m.app.items("alice", &thread_id).await;
    assert_eq!(items.len(), 1, "{what}: only the user's message is stored: {items:?}");
}

/// What an upstream 401 says: part of the key, which must stay in the gateway's log.
const LEAKY: &str =
    "Incorrect API key provided: sk-test-****cdef. You can find your API key at https://platform.example.";

#[tokio::test]
async fn upstream_error_statuses_become_readable_error_events() {
    let failures = [
        Failure {
            what: "400",
            reply: Reply::error(400, "Invalid value for 'messages[1].role'."),
            allow_retry: false,
            says: &["HTTP 400", "Invalid value for 'messages[1].role'."],
            never_says: &[],
        },
        Failure {
            what: "401",
            reply: Reply::error(401, LEAKY),
            allow_retry: false,
            says: &["credentials"],
            never_says: &["sk-", "cdef", "Incorrect API key", "platform.example"],
        },
        Failure {
            what: "403",
            reply: Reply::error(403, "Project `proj_1` does not have access to model `fake-model`."),
            allow_retry: false,
            says: &["credentials"],
            never_says: &["proj_1"],
        },
        Failure {
            what: "404",
            reply: Reply::error(404, "The model `fake-model` does not exist or you do not have access to it."),
            allow_retry: false,
            says: &["`fake-model`", "not available"],
            never_says: &["do not have access"],
        },
        Failure {
            what: "429",
            reply: Reply::error(429, "Rate limit reached for requests."),
            allow_retry: true,
            says: &["rate limited"],
            never_says: &[],
        },
        Failure {
            what: "500",
            reply: Reply::error(500, "The server had an error while processing your request."),
            allow_retry: true,
            says: &["HTTP 500"],
            never_says: &["processing your request"],
        },
        Failure {
            what: "503",
            reply: Reply::error(503, "The engine is currently overloaded."),
            allow_retry: true,
            says: &["HTTP 503"],
            never_says: &["overloaded"],
        },
    ];
    for failure in failures {
        check_failure(failure, Duration::from_secs(10)).await;
    }
}

#[tokio::test]
async fn error_statuses_without_an_openai_error_body_are_refusals_not_cut_answers() {
    let failures = [
        // A proxy in front of the service, with its own page and a key it echoes.
        Failure {
            what: "401 page",
            reply: Reply::json(401, json!(format!("<html>401 Authorization Required: {LEAKY}</html>")))
                .header("content-type", "text/html"),
            allow_retry: false,
            says: &["refused"],
            never_says: &["sk-", "cdef", "html"],
        },
        // LM Studio's shape.
        Failure {
            what: "400 string error",
            reply: Reply::json(400, json!({"error": "Unexpected endpoint or method."})),
            allow_retry: false,
            says: &["refused"],
            never_says: &["Unexpected endpoint"],
        },
        // vLLM's own shape, which keeps the status.
        Failure {
            what: "404 vLLM",
            reply: Reply::json(
                404,
                json!({"object": "error", "message": "The model `fake-model` does not exist.", "type": "NotFoundError", "param": null, "code": 404}),
            ),
            allow_retry: false,
            says: &["`fake-model`", "not available"],
            never_says: &[],
        },
    ];
    for failure in failures {
        check_failure(failure, Duration::from_secs(10)).await;
    }
}

#[tokio::test]
async fn a_service_that_never_answers_times_out_retryably() {
    let hang = Failure {
        what: "hang",
        reply: Reply::hang(),
        allow_retry: true,
        says: &["did not answer in time"],
        never_says: &[],
    };
    let started = Instant::now();
    check_failure(hang, Duration::from_millis(400)).await;
    assert!(started.elapsed() < Duration::from_secs(5), "the timeout applied: {:?}", started.elapsed());
}

/// The gateway retries connection failures before the first token and leaves every other retry to the user
/// (`allow_retry`). `async-openai`'s default transport has a retry layer of its own (each 429 or 5xx sent four
/// times, waiting out `retry-after`); the responder installs the plain transport instead, so a rate-limited
/// service is asked once and "rate limited" stays "rate limited".
#[tokio::test]
async fn a_rate_limited_or_failing_service_is_asked_once() {
    for status in [429, 500, 503] {
        let m = start_tuned(|_| {}, |settings| settings.timeout = Duration::from_secs(2));
        m.fake.route(move |_| Some(Reply::error(status, "Try later.").header("retry-after", "1")));
        let (_, events) = m.app.create_thread("alice", "hello").await;
        let error = turn_error(&events);
        assert!(!message_of(&error).contains("in time"), "{status}: {error}");
        assert_eq!(m.fake.chat_requests().len(), 1, "{status}: the model service was asked more than once");
    }
}

#[tokio::test]
async fn a_stream_cut_midway_keeps_the_partial_answer_and_may_be_retried() {
    let m = start(|_| {});
    m.fake.push(Reply::text(MODEL, &["Half an ", "answer", " and more"]).cut_after(3));
    m.fake.push(Reply::text(MODEL, &["Never used."]));
    let (thread_id, events) = m.app.create_thread("alice", "hello").await;
    let expected = [
        "thread.created",
        "thread.item.done",
        "stream_options",
        "thread.item.added",
        "added",
        "text_delta",
        "text_delta",
        "error",
    ];
    assert_eq!(kinds(&events), expected);
    let error = turn_error(&events);
    assert_eq!(error["allow_retry"], true);
    assert!(message_of(&error).contains("cut off"), "{error}");
    let items = m.app.items("alice", &thread_id).await;
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(
        (&items[1]["type"], &items[1]["content"][0]["text"]),
        (&json!("assistant_message"), &json!("Half an answer"))
    );
    assert_eq!(items[1]["id"], events[3]["item"]["id"], "the streamed message is the stored one");
    assert_eq!(m.fake.chat_requests().len(), 1, "nothing is retried once the answer began");
    assert_eq!(m.fake.remaining(), 1);
}

#[tokio::test]
async fn a_stream_that_stalls_midway_times_out_and_keeps_the_partial_answer() {
    let m = start_tuned(|_| {}, |settings| settings.timeout = Duration::from_millis(400));
    let chunks = vec![
        fake_openai::chunk(MODEL, json!({"role": "assistant", "content": "Half an answer"}), None),
        fake_openai::chunk(MODEL, json!({"content": " too late"}), None),
        fake_openai::chunk(MODEL, json!({}), Some("stop")),
    ];
    m.fake.push(Reply::stream(chunks).delay(Duration::from_secs(3)));
    let (thread_id, events) = m.app.create_thread("alice", "hello").await;
    assert_eq!(deltas(&events), "Half an answer");
    let error = turn_error(&events);
    assert_eq!(error["allow_retry"], true);
    assert!(message_of(&error).contains("did not answer in time"), "{error}");
    let items = m.app.items("alice", &thread_id).await;
    assert_eq!(items[1]["content"][0]["text"], "Half an answer", "{items:?}");
    assert!(m.fake.wait_stream_closed(0, WAIT).await.is_some(), "the gateway hung up on the stalled stream");
}

// ---------------------------------------------------------------------------
// 7. Retries.

#[tokio::test]
async fn connection_failures_before_the_first_token_are_retried() {
    let m = start(|config| config.model.model_retries = 2);
    m.fake.push(Reply::reset()).push(Reply::reset()).push(Reply::text(MODEL, &["Third time lucky."]));
    let (_, events) = m.app.create_thread("alice", "hello").await;
    assert_eq!(assistant_text(&events), "Third time lucky.");
    assert!(!events.iter().any(|event| event["type"] == "error"), "{events:?}");
    let requests = m.turn_requests();
    assert_eq!(requests.len(), 3);
    assert!(requests.iter().all(|request| *request == requests[0]), "the same request each time");

    // One reset more than the retries allow fails, retryably.
    let m = start(|config| config.model.model_retries = 1);
    m.fake.push(Reply::reset()).push(Reply::reset()).push(Reply::text(MODEL, &["Too late."]));
    let (_, events) = m.app.create_thread("alice", "hello").await;
    let error = turn_error(&events);
    assert_eq!(error["allow_retry"], true);
    assert!(message_of(&error).contains("Could not reach the model service"), "{error}");
    assert_eq!(m.fake.chat_requests().len(), 2);
}

#[tokio::test]
async fn a_stream_cut_after_content_is_not_retried() {
    let m = start(|config| config.model.model_retries = 2);
    m.fake.push(Reply::text(MODEL, &["Partial"]).cut_after(2)).push(Reply::text(MODEL, &["A retry."]));
    let (_, events) = m.app.create_thread("alice", "hello").await;
    assert_eq!(deltas(&events), "Partial");
    assert_eq!(turn_error(&events)["allow_retry"], true);
    assert_eq!(m.fake.chat_requests().len(), 1, "no retry once a token came");
    assert_eq!(m.fake.remaining(), 1);
}

// ---------------------------------------------------------------------------
// 8. Cancellation.

#[tokio::test]
async fn a_client_that_leaves_closes_the_upstream_stream_at_once() {
    let m = start(|_| {});
    let parts = ["First ", "second ", "third ", "fourth"];
    m.fake.push(Reply::text(MODEL, &parts).delay(Duration::from_millis(500)));
    let params = json!({"input": text_input("tell me slowly")});
    let (response, events) = stream_until(&m.app, "threads.create", params, is_delta).await;
    let thread_id = events[0]["thread"]["id"].as_str().expect("thread.created").to_string();
    assert_eq!(deltas(&events), "First ");
    assert_eq!(m.fake.open_streams(), 1, "the upstream stream is still open");
    let dropped = Instant::now();
    drop(response);
    let closed = m.fake.wait_stream_closed(0, WAIT).await.expect("the gateway closed the upstream stream");
    let after = closed.saturating_duration_since(dropped);
    assert!(after < Duration::from_millis(100), "upstream closed {after:?} after the client left");
    assert!(m.fake.stream(0).expect("record").frames_sent < parts.len() + 2, "closed before the stream ended");

    eventually("the cancelled turn is stored", || async {
        stored_items(&m.app, &thread_id).await.iter().any(|item| matches!(item.body, ItemBody::SdkHiddenContext { .. }))
    })
    .await;
    let items = m.app.items("alice", &thread_id).await;
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!((&items[1]["type"], &items[1]["content"][0]["text"]), (&json!("assistant_message"), &json!("First ")));
    assert_eq!(m.fake.chat_requests().len(), 1);
}

// ---------------------------------------------------------------------------
// 9. Dictation.

#[tokio::test]
async fn dictation_is_transcribed_upstream_and_other_formats_are_refused() {
    let m = start(|_| {});
    m.fake.set_transcription_text("bonjour tout le monde");
    let audio = b"\x1aE\xdf\xa3 fake webm bytes".to_vec();
    let encoded = base64::engine::general_purpose::STANDARD.encode(&audio);
    let params = json!({"audio_base64": encoded, "mime_type": "audio/webm;codecs=opus"});
    let answer = m.app.call("alice", "input.transcribe", params).await;
    assert_eq!(answer, json!({"text": "bonjour tout le monde"}));
    let requests = m.fake.transcription_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].field("model").as_deref(), Some("transcribe-test"));
    let file = requests[0].part("file").expect("a file part");
    assert_eq!((file.filename.as_deref(), &file.data), (Some("dictation.webm"), &audio));
    assert_eq!(requests[0].header("authorization"), Some(format!("Bearer {KEY}").as_str()));

    let params = json!({"audio_base64": encoded, "mime_type": "audio/wav"});
    let error = m.app.expect_error("alice", "input.transcribe", params, 400).await;
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("audio/webm, audio/ogg, audio/mp4") && message.contains("audio/wav"), "{message}");
    assert_eq!(m.fake.transcription_requests().len(), 1, "a refused format is not sent upstream");

    // Some compatible servers answer only the text.
    m.fake.push_transcription(Reply::json(200, json!({"text": "just the text"})));
    let params = json!({"audio_base64": encoded, "mime_type": "audio/ogg"});
    assert_eq!(m.app.call("alice", "input.transcribe", params).await, json!({"text": "just the text"}));
    let file = m.fake.transcription_requests()[1].part("file").expect("a file part").clone();
    assert_eq!(file.filename.as_deref(), Some("dictation.ogg"));
}

// ---------------------------------------------------------------------------
// 10. Locale.

#[tokio::test]
async fn accept_language_becomes_a_language_instruction() {
    let m = start(|_| {});
    m.fake.push(Reply::text(MODEL, &["Bonjour."])).push(Reply::text(MODEL, &["Hello."]));
    let params = json!({"input": text_input("salut")});
    let events = stream_in(&m.app, Some("fr-FR,fr;q=0.9,en;q=0.5"), "threads.create", params).await;
    assert_eq!(assistant_text(&events), "Bonjour.");
    let prompt = m.last_turn_request()["messages"][0].clone();
    assert_eq!(prompt["role"], "system");
    let text = prompt["content"].as_str().unwrap();
    assert!(text.starts_with(SYSTEM_PROMPT) && text.contains("`fr-FR`"), "{text}");
    assert!(!text.contains("q=0.9") && !text.contains("en"), "only the first tag: {text}");

    let params = json!({"input": text_input("hello")});
    stream_in(&m.app, None, "threads.create", params).await;
    assert_eq!(m.last_turn_request()["messages"][0], system(), "no language, no instruction");
}

// ---------------------------------------------------------------------------
// 11. Viewers.

#[tokio::test]
async fn another_tab_sees_the_models_answer_and_the_title() {
    let m = start(|config| config.model.titles = true);
    m.answer_titles("Greetings From Paris");
    m.fake.push(Reply::text(MODEL, &["Bonjour ", "Paris", "!"]).delay(Duration::from_millis(150)));
    let mut history = m.app.view_history("alice").await;
    let params = json!({"input": text_input("Say hello to Paris")});
    let (response, events) =
        stream_until(&m.app, "threads.create", params, |event| event["type"] == "thread.created").await;
    let thread_id = events[0]["thread"]["id"].as_str().unwrap().to_string();
    let mut tab = m.app.view_thread("alice", &thread_id).await;
    let rest = tokio::time::timeout(WAIT, response.text()).await.expect("turn ends in time").expect("body");
    let rest = parse_sse(&rest);
    assert_eq!(rest.last().unwrap()["type"], "thread.updated");

    let frames = tab.until(|frame| frame.kind() == "thread.updated").await;
    let kinds: Vec<&str> = frames.iter().map(Frame::kind).collect();
    let done = frames
        .iter()
        .find(|frame| frame.kind() == "thread.item.done" && frame.data["item"]["type"] == "assistant_message")
        .unwrap_or_else(|| panic!("the tab saw no answer: {kinds:?}"));
    let item_id = done.data["item"]["id"].as_str().unwrap();
    assert_eq!(rebuilt_text(&frames, item_id), "Bonjour Paris!");
    assert!(kinds.contains(&"thread.item.updated"), "the answer streamed to the tab: {kinds:?}");
    assert_eq!(frames.last().unwrap().data["thread"]["title"], "Greetings From Paris");

    let seen = history.until(|frame| frame.kind() == "thread.updated").await;
    assert_eq!(seen.last().unwrap().data["thread"]["title"], "Greetings From Paris");
    assert_eq!(seen.last().unwrap().data["thread"]["id"], json!(thread_id));
}
