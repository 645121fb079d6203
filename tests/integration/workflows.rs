//! Workflows pick responders: a workflows file routes each session's turns to the agent of its
//! `workflow.id` (two fake agents over real HTTP), refuses sessions of unknown workflows, and is
//! reloaded (as SIGHUP does) without disturbing a running turn; a bad file keeps the old routes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::agent::{answer, SECRET, WAIT};
use crate::common::fake_openai::{FakeOpenAi, Reply};
use crate::common::*;
use chatkit_gateway::http::AuthMode;
use chatkit_gateway::responder::{EchoResponder, WorkflowDefaults, WorkflowRouter};
use serde_json::{json, Value};

/// Two fake agents and a gateway in session mode whose responder is a router over `file`.
/// Fields drop in order: the agents first, so no turn keeps the gateway's shutdown waiting.
struct Setup {
    a: FakeOpenAi,
    b: FakeOpenAi,
    app: TestApp,
    router: Arc<WorkflowRouter>,
    file: tempfile::NamedTempFile,
}

/// A workflow entry pointing at `fake`.
fn agent_entry(id: &str, fake: &FakeOpenAi) -> String {
    format!(
        "[workflows.{id}]\nresponder = \"agent\"\nurl = \"{}/chat/completions\"\nsecret = \"{SECRET}\"\n",
        fake.base_url()
    )
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write the workflows file");
}

fn start(file_text: impl Fn(&FakeOpenAi, &FakeOpenAi) -> String) -> Setup {
    let (a, b) = (FakeOpenAi::start(), FakeOpenAi::start());
    let file = tempfile::NamedTempFile::new().expect("temp file");
    write(file.path(), &file_text(&a, &b));
    // The model service, for `model` entries, is fake `b` too.
    let mut config = chatkit_gateway::config::Config::for_tests("unused".into());
    config.model.name = Some("env-model".into());
    config.model.openai_base_url = b.base_url();
    config.model.titles = false;
    let defaults = WorkflowDefaults {
        responder: Arc::new(EchoResponder::new()),
        model: config.model.settings().expect("valid model settings"),
        mcp: None,
        agent_history_items: 20,
        agent_timeout: Duration::from_secs(5),
    };
    let router = Arc::new(WorkflowRouter::load(file.path().to_path_buf(), defaults).expect("valid workflows file"));
    let app = spawn(Spawn {
        responder: router.clone(),
        configure: Box::new(|config| config.access.auth = Some(AuthMode::Session)),
        ..Spawn::default()
    });
    Setup { a, b, app, router, file }
}

impl Setup {
    /// `POST /v1/chatkit/sessions` for `workflow`: the status and the answer.
    async fn create_session(&self, workflow: &str) -> (u16, Value) {
        let body = json!({"user": "alice", "workflow": {"id": workflow}});
        let response = self.app.client.post(self.app.url("/v1/chatkit/sessions")).json(&body).send().await.unwrap();
        (response.status().as_u16(), response.json().await.expect("JSON"))
    }

    /// The client secret of a new session of `workflow`.
    async fn secret(&self, workflow: &str) -> String {
        let (status, session) = self.create_session(workflow).await;
        assert_eq!(status, 200, "{session}");
        session["client_secret"].as_str().expect("a client secret").to_string()
    }

    /// A new thread's turn, authenticated by a session's client secret.
    async fn turn(&self, secret: &str, text: &str) -> Vec<Value> {
        let body = request("threads.create", json!({"input": text_input(text)}));
        let response = self.app.client.post(self.app.url("/chatkit")).bearer_auth(secret).json(&body).send().await;
        let response = response.expect("request");
        assert_eq!(response.status(), 200);
        parse_sse(&response.text().await.expect("body"))
    }
}

fn workflow_of(fake: &FakeOpenAi, index: usize) -> Value {
    fake.requests()[index].json.as_ref().expect("a JSON body")["workflow"]["id"].clone()
}

#[tokio::test]
async fn two_workflows_reach_two_agents_and_unknown_workflows_are_refused() {
    let s = start(|a, b| format!("{}{}", agent_entry("wf_a", a), agent_entry("wf_b", b)));
    s.a.push(Reply::stream(answer("msg_a", &["From ", "A."])));
    s.b.push(Reply::stream(answer("msg_b", &["From B."])));
    let (secret_a, secret_b) = (s.secret("wf_a").await, s.secret("wf_b").await);
    let events_b = s.turn(&secret_b, "to b").await;
    assert_eq!(assistant_text(&events_b), "From B.");
    assert_eq!(assistant_text(&s.turn(&secret_a, "to a").await), "From A.");
    assert_eq!((s.a.requests().len(), s.b.requests().len()), (1, 1));
    assert_eq!((workflow_of(&s.a, 0), workflow_of(&s.b, 0)), (json!("wf_a"), json!("wf_b")));

    // Feedback has no turn, and still reaches the agent of its session's workflow.
    s.b.push(Reply::json(200, json!({})));
    let thread_id = events_b[0]["thread"]["id"].clone();
    let feedback =
        request("items.feedback", json!({"thread_id": thread_id, "item_ids": ["msg_b"], "kind": "positive"}));
    let response = s.app.client.post(s.app.url("/chatkit")).bearer_auth(&secret_b).json(&feedback).send().await;
    assert_eq!(response.expect("request").status(), 200);
    assert_eq!(s.b.requests()[1].json.as_ref().expect("a JSON body")["op"], "feedback");
    assert_eq!((s.a.requests().len(), s.b.requests().len()), (1, 2));

    let (status, error) = s.create_session("wf_nobody").await;
    assert_eq!(status, 400, "{error}");
    assert!(error.to_string().contains("unknown workflow `wf_nobody`"), "{error}");
    assert_eq!((s.a.requests().len(), s.b.requests().len()), (1, 2), "no agent was called");
}

#[tokio::test]
async fn a_reload_routes_new_turns_while_a_running_turn_finishes_and_a_bad_file_changes_nothing() {
    let s = start(|a, _| agent_entry("wf_a", a));
    let secret = s.secret("wf_a").await;
    // A's answer takes about a second, long enough to reload while it streams.
    s.a.push(
        Reply::stream(answer("msg_slow", &["One ", "two ", "three ", "four ", "five."]))
            .delay(Duration::from_millis(150)),
    );
    let running = {
        let (client, url, secret) = (s.app.client.clone(), s.app.url("/chatkit"), secret.clone());
        tokio::spawn(async move {
            let body = request("threads.create", json!({"input": text_input("slow")}));
            let response = client.post(url).bearer_auth(secret).json(&body).send().await.expect("request");
            parse_sse(&response.text().await.expect("body"))
        })
    };
    assert!(s.a.wait_for_requests(1, WAIT).await, "the turn reached agent A");

    write(s.file.path(), &agent_entry("wf_a", &s.b));
    s.router.reload().expect("the new file loads");
    s.b.push(Reply::stream(answer("msg_new", &["Now B."])));
    assert_eq!(assistant_text(&s.turn(&secret, "after the reload").await), "Now B.");
    let events = tokio::time::timeout(WAIT, running).await.expect("bounded").expect("the turn task");
    assert_eq!(assistant_text(&events), "One two three four five.", "the running turn finished on A");
    assert!(!events.iter().any(|event| event["type"] == "error"), "{events:?}");

    write(s.file.path(), "[workflows.wf_a]\nresponder = \"agent\"\nurl = 42\n");
    let error = s.router.reload().expect_err("a bad file is refused");
    assert!(error.contains("invalid"), "{error}");
    s.b.push(Reply::stream(answer("msg_kept", &["Still B."])));
    assert_eq!(assistant_text(&s.turn(&secret, "after the bad reload").await), "Still B.");
    assert_eq!((s.a.requests().len(), s.b.requests().len()), (1, 2));

    // A session whose workflow the file no longer names gets the default entry.
    write(s.file.path(), "[default]\nresponder = \"echo\"\n");
    s.router.reload().expect("the new file loads");
    let events = s.turn(&secret, "to the default").await;
    assert!(assistant_text(&events).contains("to the default"), "echo answered: {events:?}");
    assert_eq!((s.a.requests().len(), s.b.requests().len()), (1, 2), "no agent was called");
}

/// SIGHUP itself reloads the file of a gateway built from its configuration, as `main` builds it.
/// The signal goes to the whole test program, so the test runs in a process of its own.
#[test]
fn sighup_reloads_the_workflows_file_of_a_configured_gateway() {
    if !alone("workflows::sighup_reloads_the_workflows_file_of_a_configured_gateway") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("workflows.toml");
    write(&file, "[workflows.wf_one]\nresponder = \"echo\"\n");
    let mut config = chatkit_gateway::config::Config::for_tests(dir.path().join("data"));
    config.agent.workflows = Some(file.clone());
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let app = chatkit_gateway::app::App::build(config).await.expect("app builds");
            addr_tx.send(app.local_addr()).expect("report address");
            app.run_until(async {
                let _ = stop_rx.await;
            })
            .await
            .expect("app runs");
        })
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(20)).expect("app started");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        // A listener of the test's own, so that a SIGHUP sent before the gateway listens cannot end the process.
        let _guard = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).expect("SIGHUP listener");
        let client = reqwest::Client::new();
        let create = |workflow: &str| {
            let body = json!({"user": "alice", "workflow": {"id": workflow}});
            let request = client.post(format!("http://{addr}/v1/chatkit/sessions")).json(&body).send();
            async move { request.await.expect("request").status().as_u16() }
        };
        assert_eq!((create("wf_one").await, create("wf_two").await), (200, 400));
        write(&file, "[workflows.wf_two]\nresponder = \"echo\"\n");
        let started = std::time::Instant::now();
        loop {
            let kill = std::process::Command::new("kill").args(["-HUP", &std::process::id().to_string()]).status();
            assert!(kill.expect("kill runs").success());
            tokio::time::sleep(Duration::from_millis(100)).await;
            if create("wf_two").await == 200 {
                break;
            }
            assert!(started.elapsed() < WAIT, "SIGHUP did not reload the workflows file");
        }
        assert_eq!(create("wf_one").await, 400, "the reloaded file no longer names wf_one");
    });
    let _ = stop_tx.send(());
    server.join().expect("the app thread");
}

#[tokio::test]
async fn a_workflow_can_use_the_model_responder_with_its_own_model_and_instructions() {
    let s = start(|_, _| {
        "[workflows.wf_m]\nresponder = \"model\"\nmodel = \"wf-model\"\ninstructions = \"Be brief.\"\n".into()
    });
    s.b.push(Reply::text("wf-model", &["Brief."]));
    let events = s.turn(&s.secret("wf_m").await, "hello").await;
    assert_eq!(assistant_text(&events), "Brief.");
    let body = s.b.requests()[0].json.clone().expect("a JSON body");
    assert_eq!((&body["model"], &body["messages"][0]["content"]), (&json!("wf-model"), &json!("Be brief.")));
}
