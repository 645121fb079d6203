//! Server tools over MCP end to end: a real MCP server (`tests/mcp/server.py`, the Python `mcp` SDK over
//! streamable HTTP), the gateway's registry and model responder, and the fake OpenAI upstream scripting the
//! model's tool calls. What the user sees (the workflow and its tasks) is checked against the reference types.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::fake_openai::{self, FakeOpenAi, Reply, MODEL};
use crate::common::mcp::{url_on, McpServer};
use crate::common::process::GatewayProcess;
use crate::common::*;
use chatkit_gateway::config::Config;
use chatkit_gateway::responder::{McpRegistry, OpenAiResponder};
use chatkit_gateway::secret::Secret;
use serde_json::{json, Value};

/// A client tool offered beside the server tools.
const CLIENT_TOOLS: &str = r#"[{"name": "get_time"}]"#;
/// The header every test sends to the MCP server, which its `header` tool reads back.
const TOKEN: &str = "tok-mcp-secret-123";
const USER: &str = "mcp-user";
/// Bounds waits for things that happen in the background (a reconnect, a refresh).
const WAIT: Duration = Duration::from_secs(40);

/// A gateway whose model responder offers the tools of the test MCP servers.
struct Gateway {
    fake: FakeOpenAi,
    registry: Arc<McpRegistry>,
    app: TestApp,
}

/// Starts a gateway on `servers` (the `CHATKIT_MCP_SERVERS` value); `tweak` changes the configuration.
async fn start(servers: Value, tweak: impl FnOnce(&mut Config)) -> Gateway {
    let fake = FakeOpenAi::start();
    let mut config = Config::for_tests("unused".into());
    config.model.name = Some(MODEL.into());
    config.model.openai_api_key = Some(Secret::new("sk-test"));
    config.model.openai_base_url = fake.base_url();
    config.model.titles = false;
    config.model.client_tools = Some(CLIENT_TOOLS.into());
    config.model.mcp_servers = Some(Secret::new(servers.to_string()));
    config.model.mcp_tool_timeout_secs = 2;
    tweak(&mut config);
    let model = config.model.settings().expect("model settings").expect("a model");
    let mut mcp = config.model.mcp_settings().expect("MCP settings").expect("MCP servers");
    mcp.reconnect_backoff = Duration::from_millis(100);
    let registry = McpRegistry::start(mcp).await;
    let responder =
        OpenAiResponder::with_mcp(model, Some(registry.view(None).expect("all servers"))).expect("responder");
    let app = spawn(Spawn { responder: Arc::new(responder), record: true, ..Spawn::default() });
    Gateway { fake, registry, app }
}

/// One server entry: the test server at `port`, named `name`, sending the test header.
fn entry(name: &str, port: u16) -> Value {
    json!({"name": name, "url": url_on(port), "headers": {"X-Test-Token": TOKEN}})
}

/// A model reply that calls the tools `calls` (id, name, arguments) in one round.
fn calls(calls: &[(&str, &str, &str)]) -> Reply {
    let mut first = Vec::new();
    for (index, (id, name, arguments)) in calls.iter().enumerate() {
        first.push(
            json!({"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": arguments}}),
        );
    }
    Reply::stream(vec![
        fake_openai::chunk(MODEL, json!({"role": "assistant", "content": null, "tool_calls": first}), None),
        fake_openai::chunk(MODEL, json!({}), Some("tool_calls")),
    ])
}

/// The names of the tools a model request offered.
fn offered(request: &Value) -> Vec<String> {
    request["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["function"]["name"].as_str())
        .map(String::from)
        .collect()
}

/// The tool messages of a model request, by call id.
fn tool_message(request: &Value, call_id: &str) -> String {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool" && m["tool_call_id"] == call_id)
        .and_then(|m| m["content"].as_str())
        .unwrap_or_else(|| panic!("no tool message for {call_id} in {request}"))
        .to_string()
}

fn chat_bodies(fake: &FakeOpenAi) -> Vec<Value> {
    fake.chat_requests().into_iter().filter_map(|request| request.json).collect()
}

/// The workflow item of a turn's `thread.item.done`, and the index of that event.
fn workflow_done(events: &[Value]) -> (usize, &Value) {
    events
        .iter()
        .enumerate()
        .find(|(_, e)| e["type"] == "thread.item.done" && e["item"]["type"] == "workflow")
        .map(|(index, e)| (index, &e["item"]))
        .unwrap_or_else(|| panic!("no workflow done among {:?}", types(events)))
}

/// Task updates of the turn, in order: (event type or update type, task index, task).
fn task_events(events: &[Value]) -> Vec<(String, u64, Value)> {
    let mut out = Vec::new();
    for event in events {
        if event["type"] == "thread.item.added" && event["item"]["type"] == "workflow" {
            for (index, task) in event["item"]["workflow"]["tasks"].as_array().unwrap().iter().enumerate() {
                out.push(("added".to_string(), index as u64, task.clone()));
            }
        }
        if let Some(kind @ ("workflow.task.added" | "workflow.task.updated")) = event["update"]["type"].as_str() {
            out.push((
                kind.to_string(),
                event["update"]["task_index"].as_u64().unwrap(),
                event["update"]["task"].clone(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_show_as_tasks_and_their_results_reach_the_model() {
    let server = McpServer::start();
    let gateway = start(json!([entry("math", server.port)]), |_| {}).await;
    gateway.fake.push(calls(&[("call_add", "math__add", r#"{"a": 2, "b": 3}"#)]));
    gateway.fake.push(calls(&[("call_header", "math__header", r#"{"name": "x-test-token"}"#)]));
    gateway.fake.push(Reply::text(MODEL, &["2 + 3 = ", "5."]));
    let (thread_id, events) = gateway.app.create_thread(USER, "What is 2 + 3?").await;

    // What the user saw: one workflow, a task per call, loading then complete, closed before the answer.
    let tasks = task_events(&events);
    let statuses: Vec<(&str, u64, &str, &str)> = tasks
        .iter()
        .map(|(kind, index, task)| {
            (kind.as_str(), *index, task["status_indicator"].as_str().unwrap(), task["title"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("added", 0, "loading", "Add two numbers"),
            ("workflow.task.updated", 0, "complete", "Add two numbers"),
            ("workflow.task.added", 1, "loading", "header"),
            ("workflow.task.updated", 1, "complete", "header"),
        ]
    );
    assert!(tasks.iter().all(|(_, _, task)| task.get("content").is_none()), "no failure: {tasks:?}");
    let (done_at, workflow) = workflow_done(&events);
    let message_at =
        events.iter().position(|e| e["type"] == "thread.item.added" && e["item"]["type"] == "assistant_message");
    assert!(message_at.is_some_and(|at| at > done_at), "the workflow closes before the answer: {:?}", types(&events));
    assert_eq!(workflow["workflow"]["expanded"], false);
    assert!(workflow["workflow"]["summary"]["duration"].is_u64(), "{workflow}");
    assert_eq!(assistant_text(&events), "2 + 3 = 5.");

    // What the model saw: the server tools beside the client tool, then each result as a tool message.
    let bodies = chat_bodies(&gateway.fake);
    assert_eq!(bodies.len(), 3, "one request per round");
    let mut names = offered(&bodies[0]);
    names.sort();
    assert_eq!(
        names,
        ["get_time", "math__add", "math__enable_multiply", "math__explode", "math__header", "math__slow"]
    );
    let add = bodies[0]["tools"].as_array().unwrap().iter().find(|t| t["function"]["name"] == "math__add").unwrap();
    assert_eq!(add["function"]["description"], "Adds two integers.");
    assert_eq!(add["function"]["parameters"]["required"], json!(["a", "b"]));
    assert_eq!(tool_message(&bodies[1], "call_add"), "5");
    let assistant = bodies[1]["messages"].as_array().unwrap().iter().find(|m| m["role"] == "assistant").unwrap();
    assert_eq!(assistant["tool_calls"][0]["function"]["name"], "math__add");
    assert_eq!(tool_message(&bodies[2], "call_add"), "5");
    assert_eq!(tool_message(&bodies[2], "call_header"), TOKEN, "the configured header reached the server");

    // What was kept: the workflow with its completed tasks, before the answer.
    let items = gateway.app.items(USER, &thread_id).await;
    let kinds: Vec<&str> = items.iter().map(|item| item["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["user_message", "workflow", "assistant_message"]);
    assert_eq!(items[1]["workflow"]["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(items[1]["workflow"]["tasks"][1]["status_indicator"], "complete");

    check_conformance(&gateway.app.transcript_lines());
    drop(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_tools_show_failed_tasks_and_the_turn_still_answers() {
    let server = McpServer::start();
    let gateway = start(json!([entry("math", server.port)]), |_| {}).await;
    gateway.fake.push(calls(&[
        ("call_slow", "math__slow", r#"{"seconds": 30}"#),
        ("call_boom", "math__explode", "{}"),
        ("call_bad", "math__add", "{not json"),
    ]));
    gateway.fake.push(Reply::text(MODEL, &["Sorry, the tools failed."]));
    let (_, events) = gateway.app.create_thread(USER, "Try the tools").await;

    let done: Vec<Value> = task_events(&events)
        .into_iter()
        .filter(|(kind, _, _)| kind == "workflow.task.updated")
        .map(|(_, _, task)| task)
        .collect();
    assert_eq!(done.len(), 3, "{:?}", types(&events));
    assert!(done.iter().all(|task| task["status_indicator"] == "complete"));
    let contents: Vec<&str> = done.iter().map(|task| task["content"].as_str().unwrap_or_default()).collect();
    assert!(
        contents[0].starts_with("Failed:") && contents[0].contains("did not answer within 2 seconds"),
        "{contents:?}"
    );
    assert!(contents[1].starts_with("Failed:") && contents[1].contains("exploded on purpose"), "{contents:?}");
    assert!(contents[2].contains("not a JSON object"), "{contents:?}");
    assert_eq!(assistant_text(&events), "Sorry, the tools failed.");
    assert_eq!(events.last().unwrap()["type"], "thread.item.done", "the turn ended normally: {:?}", types(&events));

    let bodies = chat_bodies(&gateway.fake);
    assert!(tool_message(&bodies[1], "call_slow").starts_with("The tool call failed: The tool did not answer"));
    assert!(tool_message(&bodies[1], "call_boom").contains("exploded on purpose"));
    check_conformance(&gateway.app.transcript_lines());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allow_list_limits_what_the_model_sees_and_calls() {
    let server = McpServer::start();
    let mut math = entry("math", server.port);
    math["tools"] = json!(["add"]);
    let gateway = start(json!([math]), |_| {}).await;
    // The model calls a tool it was not offered: refused without reaching the server.
    gateway.fake.push(calls(&[("call_boom", "math__explode", "{}")]));
    gateway.fake.push(Reply::text(MODEL, &["Only adding is allowed."]));
    let (_, events) = gateway.app.create_thread(USER, "Explode").await;
    let bodies = chat_bodies(&gateway.fake);
    let mut names = offered(&bodies[0]);
    names.sort();
    assert_eq!(names, ["get_time", "math__add"]);
    assert!(tool_message(&bodies[1], "call_boom").contains("not available"), "{}", bodies[1]);
    assert_eq!(assistant_text(&events), "Only adding is allowed.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_tool_list_is_refreshed() {
    let server = McpServer::start();
    let gateway = start(json!([entry("math", server.port)]), |_| {}).await;
    let tools = gateway.registry.view(None).unwrap();
    assert!(!tools.tools().iter().any(|tool| tool.name == "math__multiply"));
    gateway.fake.push(calls(&[("call_enable", "math__enable_multiply", "{}")]));
    gateway.fake.push(Reply::text(MODEL, &["Multiplying is on."]));
    let (thread_id, _) = gateway.app.create_thread(USER, "Enable multiplication").await;
    // The server's `notifications/tools/list_changed` makes the registry list the tools again.
    let deadline = Instant::now() + WAIT;
    while !tools.tools().iter().any(|tool| tool.name == "math__multiply") {
        assert!(Instant::now() < deadline, "the new tool never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gateway.fake.push(calls(&[("call_mul", "math__multiply", r#"{"a": 6, "b": 7}"#)]));
    gateway.fake.push(Reply::text(MODEL, &["42."]));
    gateway.app.say(USER, &thread_id, "6 times 7?").await;
    let bodies = chat_bodies(&gateway.fake);
    assert!(offered(&bodies[2]).contains(&"math__multiply".to_string()), "{}", bodies[2]);
    assert_eq!(tool_message(&bodies[3], "call_mul"), "42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tool_round_limit_ends_the_turn_with_an_answer() {
    let server = McpServer::start();
    let gateway = start(json!([entry("math", server.port)]), |config| config.model.mcp_max_tool_rounds = 2).await;
    gateway.fake.push(calls(&[("call_1", "math__add", r#"{"a": 1, "b": 1}"#)]));
    gateway.fake.push(calls(&[("call_2", "math__add", r#"{"a": 2, "b": 2}"#)]));
    gateway.fake.push(Reply::text(MODEL, &["I stopped after two rounds."]));
    let (_, events) = gateway.app.create_thread(USER, "Keep adding").await;
    let bodies = chat_bodies(&gateway.fake);
    assert_eq!(bodies.len(), 3);
    assert!(offered(&bodies[1]).contains(&"math__add".to_string()), "the second round still offers them");
    // Past the limit: no server tools (the client tool stays), and the model is told to answer.
    assert_eq!(offered(&bodies[2]), ["get_time"]);
    let last = tool_message(&bodies[2], "call_2");
    assert!(last.starts_with("4\n\n") && last.contains("Answer the user now"), "{last}");
    assert_eq!(assistant_text(&events), "I stopped after two rounds.");
    assert_eq!(workflow_done(&events).1["workflow"]["tasks"].as_array().unwrap().len(), 2);

    // A model that calls a server tool anyway ends the turn with an error event, not a hang or a crash.
    gateway.fake.push(calls(&[("call_3", "math__add", r#"{"a": 3, "b": 3}"#)]));
    gateway.fake.push(calls(&[("call_4", "math__add", r#"{"a": 4, "b": 4}"#)]));
    gateway.fake.push(calls(&[("call_5", "math__add", r#"{"a": 5, "b": 5}"#)]));
    let (_, events) = gateway.app.create_thread(USER, "Add forever").await;
    let error = events.iter().find(|e| e["type"] == "error").unwrap_or_else(|| panic!("{:?}", types(&events)));
    assert!(error["message"].as_str().unwrap_or_default().contains("limit of 2 rounds"), "{error}");
    assert_eq!(workflow_done(&events).1["workflow"]["tasks"].as_array().unwrap().len(), 2, "the workflow is kept");
    check_conformance(&gateway.app.transcript_lines());
}

/// The gateway binary with an MCP server that is down at start: it starts and answers, and once the server is
/// up (on the port it was configured with) its tools come, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_down_at_start_does_not_stop_the_gateway() {
    let fake = FakeOpenAi::start();
    // The model calls the tool whenever it is offered and has no result yet, and answers otherwise.
    fake.route(|body| {
        let answered = body["messages"].as_array().is_some_and(|m| m.iter().any(|m| m["role"] == "tool"));
        let has_tool = offered(body).contains(&"later__add".to_string());
        Some(if has_tool && !answered {
            calls(&[("call_later", "later__add", r#"{"a": 20, "b": 22}"#)])
        } else if answered {
            Reply::text(MODEL, &["The server answered."])
        } else {
            Reply::text(MODEL, &["No tools yet."])
        })
    });
    let port = free_port();
    let servers = json!([entry("later", port)]).to_string();
    let gateway = GatewayProcess::start(&[
        ("CHATKIT_MODEL", MODEL.to_string()),
        ("OPENAI_BASE_URL", fake.base_url()),
        ("OPENAI_API_KEY", "sk-test".to_string()),
        ("CHATKIT_TITLES", "false".to_string()),
        ("CHATKIT_MCP_SERVERS", servers),
        ("CHATKIT_MCP_TOOL_TIMEOUT_SECS", "5".to_string()),
    ]);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let turn = |text: &'static str| {
        let client = client.clone();
        let url = format!("{}/chatkit", gateway.base);
        async move {
            let body = request("threads.create", json!({"input": text_input(text)}));
            let response = client.post(url).header("x-user-id", USER).body(body.to_string()).send().await.unwrap();
            assert_eq!(response.status(), 200);
            parse_sse(&response.text().await.unwrap())
        }
    };
    let events = turn("Anything?").await;
    assert_eq!(assistant_text(&events), "No tools yet.", "the gateway answers while the server is down");
    assert!(!offered(&chat_bodies(&fake)[0]).contains(&"later__add".to_string()));

    let _server = McpServer::start_on(port);
    let deadline = Instant::now() + WAIT;
    loop {
        let events = turn("Now?").await;
        if assistant_text(&events) == "The server answered." {
            let tasks = task_events(&events);
            assert_eq!(tasks.last().unwrap().2["status_indicator"], "complete");
            break;
        }
        assert!(Instant::now() < deadline, "the server's tools never came");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let last = chat_bodies(&fake).pop().unwrap();
    assert_eq!(tool_message(&last, "call_later"), "42");
}

/// A server that goes away mid-life fails the calls made meanwhile (a failed task, an answer), and its
/// tools work again once it is back: the registry notices the broken session and reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_reconnected() {
    let server = McpServer::start();
    let port = server.port;
    let gateway = start(json!([entry("math", port)]), |_| {}).await;
    gateway.fake.route(|body| {
        let result = body["messages"].as_array().and_then(|m| m.iter().rev().find(|m| m["role"] == "tool")).cloned();
        Some(match result {
            None => calls(&[("call_add", "math__add", r#"{"a": 2, "b": 3}"#)]),
            Some(result) => {
                Reply::text(MODEL, &[&format!("Result: {}", result["content"].as_str().unwrap_or_default())])
            }
        })
    });
    let (thread_id, events) = gateway.app.create_thread(USER, "Add").await;
    assert_eq!(assistant_text(&events), "Result: 5");

    drop(server);
    let events = gateway.app.say(USER, &thread_id, "Add again").await;
    let failed = task_events(&events).into_iter().find(|(kind, _, _)| kind == "workflow.task.updated").unwrap().2;
    assert!(failed["content"].as_str().unwrap_or_default().starts_with("Failed:"), "{failed}");
    assert!(assistant_text(&events).starts_with("Result: The tool call failed"), "the turn still answers");

    let _back = McpServer::start_on(port);
    let deadline = Instant::now() + WAIT;
    loop {
        let events = gateway.app.say(USER, &thread_id, "And now?").await;
        if assistant_text(&events) == "Result: 5" {
            break;
        }
        assert!(Instant::now() < deadline, "the server's tools never worked again: {}", assistant_text(&events));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The model service failing after tool calls were shown ends the turn with an `error` event, and the
/// workflow of those calls is closed and kept, as the user saw it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_failure_after_tool_calls_keeps_their_workflow() {
    let server = McpServer::start();
    let gateway = start(json!([entry("math", server.port)]), |_| {}).await;
    gateway.fake.push(calls(&[("call_add", "math__add", r#"{"a": 2, "b": 3}"#)]));
    gateway.fake.push(Reply::error(400, "the request was refused"));
    let (thread_id, events) = gateway.app.create_thread(USER, "Add, then fail").await;
    let (done_at, workflow) = workflow_done(&events);
    let error_at = events.iter().position(|e| e["type"] == "error").unwrap_or_else(|| panic!("{:?}", types(&events)));
    assert!(done_at < error_at, "{:?}", types(&events));
    assert_eq!(workflow["workflow"]["tasks"][0]["status_indicator"], "complete");
    let items = gateway.app.items(USER, &thread_id).await;
    let kinds: Vec<&str> = items.iter().map(|item| item["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["user_message", "workflow"]);
    check_conformance(&gateway.app.transcript_lines());
}

/// A workflow's `mcp_servers` picks whose tools its model sees; the same server under two names is two
/// servers, each with its own prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_offers_and_calls_only_the_servers_it_names() {
    let server = McpServer::start();
    let mut only_add = entry("more", server.port);
    only_add["tools"] = json!(["add"]);
    let gateway = start(json!([entry("math", server.port), only_add]), |_| {}).await;
    let more = gateway.registry.view(Some(&["more".to_string()])).unwrap();
    let names: Vec<String> = more.tools().into_iter().map(|tool| tool.name).collect();
    assert_eq!(names, ["more__add"]);
    assert!(more.owns("more__add") && !more.owns("math__add"));
    assert_eq!(more.call("more__add", r#"{"a": 40, "b": 2}"#).await.model_text(), "42");
    let refused = more.call("math__add", r#"{"a": 1, "b": 1}"#).await.model_text();
    assert!(refused.contains("not available"), "{refused}");
    let all: Vec<String> = gateway.registry.view(None).unwrap().tools().into_iter().map(|tool| tool.name).collect();
    assert_eq!(all.len(), 6, "five tools of `math`, one of `more`: {all:?}");
    assert!(gateway.registry.view(Some(&["mail".to_string()])).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_responses_api_runs_server_tools_between_rounds_too() {
    let server = McpServer::start();
    let gateway = start(json!([entry("math", server.port)]), |config| {
        config.model.model_api = Some("responses".into());
    })
    .await;
    let fake = &gateway.fake;
    fake.push_response(Reply::responses(fake_openai::response_call_events(
        "call_add",
        "math__add",
        r#"{"a": 2, "b": 3}"#,
    )));
    fake.push_response(Reply::responses(fake_openai::response_text_events("2 + 3 = 5.")));
    let (thread_id, events) = gateway.app.create_thread(USER, "What is 2 + 3?").await;

    // The call showed as a task that completed, in a workflow closed before the answer.
    let tasks = task_events(&events);
    assert_eq!(tasks.first().map(|(kind, _, _)| kind.as_str()), Some("added"), "{tasks:?}");
    let (_, last_index, last_task) = tasks.last().unwrap();
    assert_eq!((*last_index, &last_task["status_indicator"]), (0, &json!("complete")), "{tasks:?}");
    let (workflow_at, _) = workflow_done(&events);
    let answer_at = events
        .iter()
        .position(|e| e["type"] == "thread.item.added" && e["item"]["type"] == "assistant_message")
        .expect("an answer");
    assert!(workflow_at < answer_at, "the workflow closes before the answer starts");

    // The server tool was offered in Responses form, and its result went back as a function_call_output.
    let requests: Vec<Value> = fake.responses_requests().into_iter().filter_map(|r| r.json).collect();
    assert_eq!(requests.len(), 2, "one request per round");
    let offered: Vec<&str> =
        requests[0]["tools"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    assert!(offered.contains(&"math__add") && offered.contains(&"get_time"), "{offered:?}");
    let input = requests[1]["input"].as_array().unwrap();
    let call = input.iter().find(|i| i["type"] == "function_call").expect("the call in the next input");
    assert_eq!((&call["call_id"], &call["name"]), (&json!("call_add"), &json!("math__add")));
    let output = input.iter().find(|i| i["type"] == "function_call_output").expect("its output");
    assert_eq!(output["call_id"], "call_add");
    assert!(output["output"].as_str().unwrap().contains('5'), "{output}");

    // The thread keeps the workflow and the answer.
    let items = gateway.app.items(USER, &thread_id).await;
    let kinds: Vec<&str> = items.iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["user_message", "workflow", "assistant_message"]);
    assert_eq!(items[2]["content"][0]["text"], "2 + 3 = 5.");
    check_conformance(&gateway.app.transcript_lines());
}
