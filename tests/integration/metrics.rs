//! `/metrics`: every family named in `telemetry::metrics` is exported after a
//! short workload (turns through a model, a lock, viewers, Redis fan-out), and
//! the values move the way the workload says.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::common::fake_openai::{self, FakeOpenAi, Reply, MODEL};
use crate::common::redis::RedisServer;
use crate::common::*;
use chatkit_gateway::config::Config;
use chatkit_gateway::responder::OpenAiResponder;
use chatkit_gateway::secret::Secret;
use serde_json::json;

/// The samples of a scrape: `name{labels}` → value.
struct Scrape {
    families: Vec<String>,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    async fn of(app: &TestApp) -> Scrape {
        let response = app.client.get(app.url("/metrics")).send().await.expect("scrape");
        assert_eq!(response.status().as_u16(), 200);
        let text = response.text().await.unwrap();
        let mut families = Vec::new();
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                families.push(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') && !line.is_empty() {
                let (key, value) = line.rsplit_once(' ').expect("name and value");
                samples.insert(key.to_string(), value.parse().unwrap_or_else(|_| panic!("bad value in {line}")));
            }
        }
        Scrape { families, samples }
    }

    /// The sum of the samples whose key starts with `name` and holds every label.
    fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.samples
            .iter()
            .filter(|(key, _)| {
                let bare = key.split('{').next().unwrap();
                bare == name && labels.iter().all(|label| key.contains(label))
            })
            .map(|(_, value)| value)
            .sum()
    }
}

/// The registry is process-wide and every test of this program moves it, so
/// the workload runs in a process of its own, where the exact counts hold.
#[test]
fn metrics_cover_every_family_and_move_with_the_work() {
    if crate::common::alone("metrics::metrics_cover_every_family_and_move_with_the_work") {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(workload());
    }
}

async fn workload() {
    let redis = RedisServer::start();
    let fake = FakeOpenAi::start();
    fake.route(|request| {
        let title = request["messages"][0]["content"].as_str().is_some_and(|c| c.starts_with("Write a title"));
        title.then(|| Reply::completion(MODEL, "Metrics Test Thread"))
    });
    for _ in 0..2 {
        fake.push(Reply::stream(fake_openai::with_usage(fake_openai::text_chunks(MODEL, &["Hel", "lo"]), 11, 2)));
    }
    let mut config = Config::for_tests("unused".into());
    config.model.name = Some(MODEL.into());
    config.model.openai_api_key = Some(Secret::new("sk-metrics"));
    config.model.openai_base_url = fake.base_url();
    let responder = OpenAiResponder::new(config.model.settings().unwrap().unwrap()).unwrap();
    let url = redis.url();
    let app = spawn(Spawn {
        responder: Arc::new(responder),
        configure: Box::new(move |c| c.fanout.redis_url = Some(Secret::new(url))),
        ..Default::default()
    });
    eventually("Redis is connected", || async { Scrape::of(&app).await.sum("chatkit_redis_connected", &[]) == 1.0 })
        .await;
    let before = Scrape::of(&app).await;

    let mut history = app.view_history("alice").await;
    let (tid, events) = app.create_thread("alice", "hello").await;
    assert_eq!(assistant_text(&events), "Hello");
    let mut viewer = app.view_thread("alice", &tid).await;
    let during = Scrape::of(&app).await;
    assert_eq!(during.sum("chatkit_open_streams", &["kind=\"thread_viewer\""]), 1.0);
    assert_eq!(during.sum("chatkit_open_streams", &["kind=\"history_viewer\""]), 1.0);
    app.say("alice", &tid, "again").await;
    let lock = app.client.post(app.url(&format!("/v1/chatkit/threads/{tid}/status")));
    assert!(lock.json(&json!({"type": "locked", "reason": "r"})).send().await.unwrap().status().is_success());
    assert!(refused_with(&app.say("alice", &tid, "refused").await, "r"));
    viewer.until(|f| f.data["thread"]["status"]["type"] == "locked").await;
    history.until(|f| f.data["thread"]["status"]["type"] == "locked").await;
    drop((viewer, history));

    let after = Scrape::of(&app).await;
    let moved = |name: &str, labels: &[&str]| after.sum(name, labels) - before.sum(name, labels);
    for family in chatkit_gateway::telemetry::metrics::METRICS.names() {
        assert!(after.families.contains(&family), "`{family}` is not exported");
    }
    for family in [
        "chatkit_requests_total",
        "chatkit_request_duration_seconds",
        "chatkit_turn_duration_seconds",
        "chatkit_turn_first_event_seconds",
        "chatkit_open_streams",
        "chatkit_thread_actors",
        "chatkit_thread_mailbox_depth",
        "chatkit_rejected_inputs_total",
        "chatkit_lease_wait_seconds",
        "chatkit_lease_contended_total",
        "chatkit_fanout_published_total",
        "chatkit_fanout_delivered_total",
        "chatkit_fanout_latency_seconds",
        "chatkit_redis_connected",
        "chatkit_redis_reconnects_total",
        "chatkit_model_calls_total",
        "chatkit_model_tokens_total",
        "chatkit_model_errors_total",
        "chatkit_store_operation_seconds",
    ] {
        assert!(after.families.iter().any(|f| f == family), "`{family}` is missing from /metrics");
    }
    assert_eq!(moved("chatkit_requests_total", &["op=\"threads.create\"", "outcome=\"ok\""]), 1.0);
    assert_eq!(moved("chatkit_requests_total", &["op=\"threads.add_user_message\"", "outcome=\"ok\""]), 2.0);
    assert_eq!(
        moved("chatkit_turn_duration_seconds_count", &["outcome=\"completed\""]),
        3.0,
        "two answers and a refusal"
    );
    assert_eq!(moved("chatkit_turn_first_event_seconds_count", &[]), 2.0, "the refused turn had no responder event");
    assert_eq!(moved("chatkit_rejected_inputs_total", &["reason=\"locked\""]), 1.0);
    assert_eq!(moved("chatkit_model_calls_total", &["model=\"fake-model\""]), 3.0, "two turns and a title");
    assert_eq!(moved("chatkit_model_tokens_total", &["kind=\"prompt\""]), 22.0);
    assert_eq!(moved("chatkit_model_tokens_total", &["kind=\"completion\""]), 4.0);
    assert!(moved("chatkit_fanout_published_total", &["topic=\"thread\""]) >= 8.0);
    assert!(moved("chatkit_fanout_delivered_total", &["topic=\"user\""]) >= 3.0, "created, titled, locked");
    assert!(moved("chatkit_fanout_latency_seconds_count", &[]) >= 4.0);
    // The first job takes the thread's lease; the next ones, following at once, run under the
    // lease its actor kept.
    assert!(moved("chatkit_lease_wait_seconds_count", &["backend=\"redis\""]) >= 1.0, "a job takes the lease");
    assert!(moved("chatkit_store_operation_seconds_count", &["backend=\"memory\"", "operation=\"add_item\""]) >= 4.0);
    assert_eq!(after.sum("chatkit_thread_actors", &[]), 1.0);
    eventually("closed viewers leave the gauge", || async {
        Scrape::of(&app).await.sum("chatkit_open_streams", &["_viewer"]) == 0.0
    })
    .await;
}
