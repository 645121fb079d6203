//! Traces end to end: replica processes exporting to a real OTLP/HTTP receiver, with Redis, PostgreSQL and the fake
//! model service. One turn's trace holds its HTTP span, the actor's queue and run, the store's writes, the model
//! call with its GenAI attributes, the fan-out's publish and the viewer delivery on the other replica; the model
//! service and agent backends receive its `traceparent`; JSON log lines carry its ids. Without an endpoint,
//! nothing of a trace is passed on.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::agent::{answer, SECRET};
use crate::common::fake_openai::{text_chunks, with_usage, FakeOpenAi, Reply, MODEL};
use crate::common::otlp::{OtlpReceiver, ReceivedSpan};
use crate::common::postgres::TestDatabase;
use crate::common::process::GatewayProcess;
use crate::common::redis::RedisServer;
use crate::common::*;

/// The trace a client started, and the span of it that calls the gateway.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
/// What the exporter sends a collector to be let in.
const COLLECTOR_KEY: &str = "collector-key-5c1e7a";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{CLIENT_SPAN}-01")
}

/// The settings that export a replica's traces to `receiver` as instance `instance`, sent every 100 ms.
fn exporting(receiver: &OtlpReceiver, instance: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_SERVICE_NAME", "chatkit-gateway".into()),
        ("OTEL_RESOURCE_ATTRIBUTES", format!("service.instance.id={instance}")),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ]
}

/// A replica answering through the fake model service, with `extra` settings.
fn model_replica(fake: &FakeOpenAi, extra: Vec<(&'static str, String)>) -> GatewayProcess {
    let mut env = vec![
        ("OPENAI_BASE_URL", fake.base_url()),
        ("OPENAI_API_KEY", "sk-traces".into()),
        ("CHATKIT_MODEL", MODEL.into()),
        ("CHATKIT_TITLES", "false".into()),
    ];
    env.extend(extra);
    GatewayProcess::start(&env)
}

/// Posts a ChatKit request as alice, with `traceparent` when given; the whole SSE body.
async fn post(replica: &GatewayProcess, op: &str, params: Value, traceparent: Option<String>) -> Vec<Value> {
    let headers: Vec<(&str, String)> = traceparent.into_iter().map(|value| ("traceparent", value)).collect();
    let response = replica.post_chatkit(op, params, &headers).await;
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(30), response.text()).await.expect("the stream ends");
    parse_sse(&body.unwrap())
}

/// The one span of `spans` named `name`, on `instance`.
fn one<'a>(spans: &'a [ReceivedSpan], name: &str, instance: &str) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.name == name && s.instance() == instance).collect();
    let names: Vec<(&str, &str)> = spans.iter().map(|s| (s.instance(), s.name.as_str())).collect();
    assert_eq!(found.len(), 1, "one `{name}` span on {instance} in {names:?}");
    found[0]
}

/// Asserts that `spans` form one tree under the client's span: each one's parent is the client's span or
/// another span of the trace.
fn check_one_tree(spans: &[ReceivedSpan]) {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    for span in spans {
        assert_eq!(span.trace_id, TRACE_ID);
        assert!(
            span.parent_span_id == CLIENT_SPAN || ids.contains(span.parent_span_id.as_str()),
            "`{}` on {} hangs from {}, outside the trace",
            span.name,
            span.instance(),
            span.parent_span_id
        );
    }
}

#[tokio::test]
async fn a_turn_is_one_trace_across_two_replicas_with_redis_and_the_model() {
    let receiver = OtlpReceiver::start();
    let fake = FakeOpenAi::start();
    fake.push(Reply::text(MODEL, &["First."]));
    fake.push(Reply::stream(with_usage(text_chunks(MODEL, &["Traced ", "answer."]), 12, 5)));
    let (redis, database) = (RedisServer::start(), TestDatabase::create().await);
    let shared = |instance: &str| {
        let mut env = exporting(&receiver, instance);
        env.extend([("DATABASE_URL", database.url.clone()), ("REDIS_URL", redis.url())]);
        env.push(("CHATKIT_LOG_FORMAT", "json".into()));
        env
    };
    let mut on_a = shared("replica-a");
    // The exporter's headers (a collector's API key): sent with every export, never logged.
    on_a.push(("OTEL_EXPORTER_OTLP_HEADERS", format!("x-collector-key={COLLECTOR_KEY}")));
    // Debug lines of the gateway too, so that the turn logs more than its answer.
    on_a.push(("CHATKIT_LOG", "info,chatkit_gateway=debug".into()));
    let mut a = model_replica(&fake, on_a);
    let b = model_replica(&fake, shared("replica-b"));

    let first = post(&a, "threads.create", json!({"input": text_input("hello")}), None).await;
    let thread_id = first[0]["thread"]["id"].as_str().expect("a thread").to_string();
    let mut viewer = viewer::open(&format!("{}/chatkit/threads/{thread_id}/events", b.base), "alice", None).await;
    let params = json!({"thread_id": thread_id, "input": text_input("trace this")});
    let events = post(&a, "threads.add_user_message", params, Some(traceparent())).await;
    assert_eq!(assistant_text(&events), "Traced answer.");
    let seen = viewer
        .until(|frame| frame.kind() == "thread.item.done" && frame.data.to_string().contains("Traced answer."))
        .await;
    assert!(!seen.is_empty(), "the viewer on replica b saw the answer");

    // The model service was called in the trace, by the model call's span.
    let called = fake.chat_requests();
    let sent = called[1].header("traceparent").expect("the model service got a traceparent").to_string();
    assert!(sent.starts_with(&format!("00-{TRACE_ID}-")) && sent.ends_with("-01"), "{sent}");
    assert_eq!(called[0].header("traceparent").map(|t| t.contains(TRACE_ID)), Some(false), "turn 1 is its own trace");

    let spans = receiver
        .wait_for("delivery on replica-b in the trace", |spans| {
            spans.iter().any(|s| s.trace_id == TRACE_ID && s.instance() == "replica-b" && s.name == "deliver")
                && spans.iter().any(|s| s.trace_id == TRACE_ID && s.name == "POST /chatkit")
        })
        .await;
    let trace: Vec<ReceivedSpan> = spans.into_iter().filter(|s| s.trace_id == TRACE_ID).collect();
    check_one_tree(&trace);

    let server = one(&trace, "POST /chatkit", "replica-a");
    assert_eq!(
        (server.kind, server.parent_span_id.as_str()),
        (2, CLIENT_SPAN),
        "the server span continues the client's"
    );
    assert_eq!(server.attribute("http.response.status_code"), &json!(200));
    assert_ne!(server.status_code, 2, "not marked failed");
    assert_eq!(server.attribute("op"), &json!("threads.add_user_message"));
    assert_eq!(server.attribute("http.route"), &json!("/chatkit"));
    assert!(server.attribute("request_id").as_str().is_some_and(|id| id.starts_with("req_")));

    let queued = one(&trace, "thread.queue", "replica-a");
    let run = one(&trace, "thread.run", "replica-a");
    assert_eq!((queued.parent_span_id.as_str(), run.parent_span_id.as_str()), (&*server.span_id, &*server.span_id));
    assert_eq!(run.attribute("thread_id"), &json!(thread_id));

    let writes: Vec<&ReceivedSpan> = trace.iter().filter(|s| s.attribute("db.system.name") == "postgresql").collect();
    assert!(writes.iter().all(|s| s.kind == 3 && s.instance() == "replica-a"), "store calls are client spans");
    let operations: HashSet<&str> = writes.iter().filter_map(|s| s.attribute("db.operation.name").as_str()).collect();
    assert!(operations.contains("add_item"), "the turn's items are written in the trace: {operations:?}");

    let model = one(&trace, &format!("chat {MODEL}"), "replica-a");
    assert_eq!(model.kind, 3);
    assert_eq!(model.attribute("gen_ai.operation.name"), &json!("chat"));
    assert_eq!(model.attribute("gen_ai.request.model"), &json!(MODEL));
    assert_eq!(model.attribute("gen_ai.usage.input_tokens"), &json!(12));
    assert_eq!(model.attribute("gen_ai.usage.output_tokens"), &json!(5));
    let first_chunk = model.attribute("gen_ai.response.time_to_first_chunk").as_f64().expect("a time to first chunk");
    assert!(first_chunk > 0.0 && first_chunk < 30.0, "{first_chunk}");
    assert!(model.events.iter().any(|event| event == "gen_ai.first_chunk"), "{:?}", model.events);
    assert_eq!(sent.split('-').nth(2), Some(model.span_id.as_str()), "the model service's parent is the model call");

    // Replica b delivered what replica a published, in the same trace, as a child of the publication.
    let publishes: Vec<&ReceivedSpan> =
        trace.iter().filter(|s| s.name == "publish thread" && s.instance() == "replica-a").collect();
    assert!(!publishes.is_empty() && publishes.iter().all(|s| s.kind == 4), "producer spans");
    let deliveries: Vec<&ReceivedSpan> =
        trace.iter().filter(|s| s.name == "deliver" && s.instance() == "replica-b").collect();
    for delivery in &deliveries {
        assert_eq!(delivery.kind, 5);
        assert!(publishes.iter().any(|p| p.span_id == delivery.parent_span_id), "a delivery hangs from a publication");
    }
    assert_eq!(receiver.exports().1, 0, "every export decoded");
    assert!(
        receiver.header_values("x-collector-key").contains(&COLLECTOR_KEY.to_string()),
        "OTEL_EXPORTER_OTLP_HEADERS"
    );

    // Every JSON line logged inside a request carries its trace and span ids; turn 2's carry the client's trace.
    a.signal("TERM");
    assert!(a.wait_exit(Duration::from_secs(20)).success());
    let lines = a.stdout_lines();
    let mut in_trace = 0;
    for line in &lines {
        let parsed: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(!line.contains(COLLECTOR_KEY) && !line.contains("sk-traces"), "a line carries a secret: {line}");
        let spans = parsed["spans"].as_array().cloned().unwrap_or_default();
        if spans.iter().any(|span| span["name"] == "http.request") {
            let (trace_id, span_id) = (parsed["trace_id"].as_str(), parsed["span_id"].as_str());
            assert!(trace_id.is_some_and(|id| id.len() == 32) && span_id.is_some_and(|id| id.len() == 16), "{line}");
            in_trace += usize::from(trace_id == Some(TRACE_ID));
        }
    }
    assert!(in_trace >= 2, "the traced turn's lines (its request and its answer) carry its trace id: {lines:#?}");
    assert!(lines.iter().any(|line| line.contains("SIGTERM")), "the shutdown is logged");
}

#[tokio::test]
async fn an_agent_backend_call_joins_the_trace_and_gets_its_traceparent() {
    let receiver = OtlpReceiver::start();
    let agent = FakeOpenAi::start();
    agent.push(Reply::stream(answer("msg_traced", &["Agent ", "answer."])));
    let mut env = exporting(&receiver, "replica-agent");
    env.extend([
        ("CHATKIT_AGENT_URL", format!("{}/chat/completions", agent.base_url())),
        ("CHATKIT_AGENT_SECRET", SECRET.into()),
    ]);
    let gateway = GatewayProcess::start(&env);
    let events = post(&gateway, "threads.create", json!({"input": text_input("hi")}), Some(traceparent())).await;
    assert_eq!(assistant_text(&events), "Agent answer.");

    let sent = agent.requests()[0].header("traceparent").expect("the agent got a traceparent").to_string();
    let spans = receiver
        .wait_for("the agent call", |spans| spans.iter().any(|s| s.trace_id == TRACE_ID && s.name == "agent respond"))
        .await;
    let trace: Vec<ReceivedSpan> = spans.into_iter().filter(|s| s.trace_id == TRACE_ID).collect();
    check_one_tree(&trace);
    let call = one(&trace, "agent respond", "replica-agent");
    assert_eq!((call.kind, call.attribute("http.response.status_code")), (3, &json!(200)));
    assert_eq!(call.attribute("server.address"), &json!("127.0.0.1"));
    assert_eq!(sent, format!("00-{TRACE_ID}-{}-01", call.span_id), "the agent's parent is the call's span");
}

#[tokio::test]
async fn without_an_endpoint_trace_context_is_not_passed_on() {
    let fake = FakeOpenAi::start();
    fake.push(Reply::text(MODEL, &["Untraced."]));
    let gateway = model_replica(&fake, Vec::new());
    let events = post(&gateway, "threads.create", json!({"input": text_input("hi")}), Some(traceparent())).await;
    assert_eq!(assistant_text(&events), "Untraced.");
    assert_eq!(fake.chat_requests()[0].header("traceparent"), None);
}

#[tokio::test]
async fn sampled_out_traces_still_pass_their_context_on_and_export_nothing() {
    let receiver = OtlpReceiver::start();
    let fake = FakeOpenAi::start();
    fake.push(Reply::text(MODEL, &["Not kept."]));
    let mut env = exporting(&receiver, "replica-sampled");
    env.push(("OTEL_TRACES_SAMPLER", "always_off".into()));
    let gateway = model_replica(&fake, env);
    let events = post(&gateway, "threads.create", json!({"input": text_input("hi")}), Some(traceparent())).await;
    assert_eq!(assistant_text(&events), "Not kept.");
    let sent = fake.chat_requests()[0].header("traceparent").expect("the context goes on").to_string();
    assert!(sent.starts_with(&format!("00-{TRACE_ID}-")) && sent.ends_with("-00"), "marked not sampled: {sent}");
    // Twice the export interval and more: nothing of it arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.trace(TRACE_ID).is_empty());
}
