//! End-to-end tests of the chat page (`GET /`) in headless Chromium: two tabs
//! on one thread, a turn streaming from one into the other, a lock and a close
//! through the status API, a rename in one tab seen in the other's history
//! list, the same across two replicas sharing Redis, chatkit-live.js
//! driving a ChatKit.js element, and a page on another origin that streams a
//! turn and a viewer stream when `CHATKIT_ALLOWED_ORIGINS` lists it and is
//! refused by the browser otherwise, the page under `CHATKIT_BASE_PATH`, the
//! turn interactions (`interact-e2e.mjs`): client tool calls answered by the page's
//! handler, structured input, Stop by button and by Escape, Retry, feedback, Copy,
//! and attachments uploaded from the composer and sent with a message (`attach-e2e.mjs`).
//!
//! Each test starts the gateway and runs one scenario of
//! `tests/browser/e2e.mjs` (playwright-core with Debian's Chromium) under a
//! time limit. Screenshots go to `target/browser-artifacts/<scenario>/`, with
//! the scenario's log. `bash scripts/test.sh` installs what these tests need.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::redis::RedisServer;
use crate::common::*;
use chatkit_gateway::protocol::{ItemUpdate, ThreadStreamEvent};
use chatkit_gateway::responder::{EchoResponder, EventStream, RespondInput, Responder, TurnContext};
use futures_util::StreamExt;

/// How long one scenario may run, browser start included.
const SCENARIO_LIMIT: Duration = Duration::from_secs(120);
/// Between two text deltas of an answer, so that a tab visibly streams it.
const DELTA_PACE: Duration = Duration::from_millis(250);

/// What to install when the browser tests cannot run.
const INSTALL: &str = "run `bash scripts/test.sh`, which installs them, or by hand (as root): \
                       `apt-get install -y chromium` and `(cd tests/browser && npm ci)` with Node.js 20 or later";

/// The echo responder, with a pause before each text delta (of a message or of a widget) and a
/// progress update first.
struct PacedEcho(EchoResponder);

/// The progress update the paced echo sends before its answer (`interact-e2e.mjs` expects it).
const PACED_PROGRESS: &str = "Echoing slowly…";

#[async_trait::async_trait]
impl Responder for PacedEcho {
    fn name(&self) -> &'static str {
        "paced-echo"
    }

    fn respond(&self, turn: TurnContext, input: RespondInput) -> EventStream {
        let progress = ThreadStreamEvent::ProgressUpdate { icon: None, text: PACED_PROGRESS.to_string() };
        let answer = self.0.respond(turn, input).then(|event| async move {
            if let Ok(ThreadStreamEvent::ItemUpdated {
                update: ItemUpdate::TextDelta { .. } | ItemUpdate::WidgetTextDelta { .. },
                ..
            }) = &event
            {
                tokio::time::sleep(DELTA_PACE).await;
            }
            event
        });
        Box::pin(futures_util::stream::once(async { Ok(progress) }).chain(answer))
    }
}

fn paced() -> Spawn {
    Spawn { responder: Arc::new(PacedEcho(EchoResponder::new())), ..Default::default() }
}

/// Node, Chromium and playwright-core, found or the test fails saying how to install them.
struct Browser {
    dir: PathBuf,
    chromium: PathBuf,
}

fn browser() -> Browser {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium =
        std::env::var_os("CHATKIT_CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    let mut missing = Vec::new();
    match Command::new("node").arg("--version").output() {
        Ok(output) if output.status.success() => {
            let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
            let major: u32 =
                version.trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
            if major < 20 {
                missing.push(format!("Node.js 20 or later (found {version})"));
            }
        }
        _ => missing.push("Node.js (`node` is not on PATH)".to_string()),
    }
    if !chromium.exists() {
        missing.push(format!("Chromium at {} (set CHATKIT_CHROMIUM to use another)", chromium.display()));
    }
    if !dir.join("node_modules/playwright-core/package.json").exists() {
        missing.push(format!("playwright-core in {}/node_modules", dir.display()));
    }
    assert!(missing.is_empty(), "the browser tests need {}: {INSTALL}", missing.join(", "));
    Browser { dir, chromium }
}

/// `$CARGO_TARGET_DIR/browser-artifacts/<scenario>` (default `target/`), emptied.
fn artifacts(scenario: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |dir| root.join(dir));
    let dir = target.join("browser-artifacts").join(scenario);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("artifact directory");
    dir
}

/// Runs one scenario of `e2e.mjs` against the given gateways; fails with its log.
fn run(scenario: &str, apps: &[&TestApp]) {
    run_with(scenario, apps, &[]);
}

/// Runs one scenario with extra arguments for `e2e.mjs`.
fn run_with(scenario: &str, apps: &[&TestApp], extra: &[&str]) {
    let browser = browser();
    let dir = artifacts(scenario);
    let log_path = dir.join("e2e.log");
    let log = File::create(&log_path).expect("log file");
    let mut command = Command::new("node");
    command.arg(browser.dir.join("e2e.mjs")).arg(scenario);
    for app in apps {
        command.arg("--base").arg(&app.base);
    }
    command
        .args(extra)
        .arg("--artifacts")
        .arg(&dir)
        .env("CHATKIT_CHROMIUM", &browser.chromium)
        .current_dir(&browser.dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log);
    let started = Instant::now();
    let mut child = command.spawn().expect("node starts");
    let status = loop {
        if let Some(status) = child.try_wait().expect("node runs") {
            break Some(status);
        }
        if started.elapsed() > SCENARIO_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    println!("{output}");
    match status {
        Some(status) if status.success() => {}
        Some(status) => panic!("scenario `{scenario}` failed ({status}); artifacts in {}:\n{output}", dir.display()),
        None => panic!(
            "scenario `{scenario}` did not finish within {SCENARIO_LIMIT:?}; artifacts in {}:\n{output}",
            dir.display()
        ),
    }
}

#[test]
fn a_turn_sent_in_one_tab_streams_into_the_other() {
    let app = spawn(paced());
    run("turn", &[&app]);
}

#[test]
fn a_lock_through_the_status_api_disables_both_composers_with_the_reason() {
    let app = spawn(paced());
    run("lock", &[&app]);
}

#[test]
fn closing_the_thread_replaces_both_composers_with_a_banner() {
    let app = spawn(paced());
    run("close", &[&app]);
}

#[test]
fn a_rename_in_one_tab_shows_in_the_other_tabs_history_list() {
    let app = spawn(paced());
    run("rename", &[&app]);
}

#[test]
fn two_tabs_on_two_replicas_sharing_redis_stay_in_sync() {
    let redis = RedisServer::start();
    let replicas = redis.replicas(2, paced);
    let (one, two) = (&replicas[0], &replicas[1]);
    run("replicas", &[one, two]);
}

#[test]
fn chatkit_live_js_calls_fetch_updates_after_each_change() {
    let app = spawn(paced());
    run("chatkit-live", &[&app]);
}

#[test]
fn the_page_works_under_a_base_path() {
    let mut app = spawn(Spawn { configure: Box::new(|config| config.web.base_path = "/chat".into()), ..paced() });
    app.base = format!("{}/chat", app.base);
    run("turn", &[&app]);
}

/// The echo's `/gallery`: a widget per component family renders in the page, none as text
/// (a screenshot of each under `target/browser-artifacts/gallery/`).
#[test]
fn every_widget_component_family_renders() {
    let app = spawn_app();
    run("gallery", &[&app]);
}

/// The counter widget's Increment is a `streaming: false` action: it goes through
/// `threads.sync_custom_action`, and the count changes in place in this tab and, live, in another.
#[test]
fn the_counter_increments_in_place_in_both_tabs_through_a_sync_action() {
    let app = spawn_app();
    run("counter", &[&app]);
}

/// A widget's streamed updates render live: its text grows delta by delta and its badge is
/// replaced, in the tab that sent the turn and in another tab watching the thread.
#[test]
fn a_streamed_widget_updates_live_in_both_tabs() {
    let app = spawn(paced());
    run("live-widget", &[&app]);
}

/// A form widget's values reach the server in the submitted action's payload.
#[test]
fn a_form_widget_sends_its_values_in_the_action_payload() {
    let app = spawn_app();
    run("widget-form", &[&app]);
}

/// axe-core finds no serious or critical accessibility violation on the page with messages and
/// every widget family, in the light and the dark colour scheme.
#[test]
fn the_page_has_no_serious_accessibility_violations() {
    let app = spawn_app();
    run("a11y", &[&app]);
}

/// A client tool handler the page registers (after it loaded) answers the echo's `/tool`, and
/// the answer with the handler's result shows; without a handler the call stays pending, named.
#[test]
fn a_client_tool_call_is_answered_by_the_pages_handler() {
    let app = spawn_app();
    run("tool", &[&app]);
}

/// The echo's `/ask` renders as a form: one is answered (a choice and a reason), another skipped;
/// both then show read-only with their answers.
#[test]
fn structured_input_forms_are_answered_and_skipped() {
    let app = spawn_app();
    run("ask", &[&app]);
}

/// Stop mid-answer (the paced echo): streaming stops, the partial answer stays and is stored,
/// the composer is back to Send, no error shows; the progress line showed while it streamed.
#[test]
fn stop_ends_a_streaming_answer_and_keeps_the_partial_text() {
    let app = spawn(paced());
    run("stop", &[&app]);
}

/// Keyboard only: Tab to the message field, type, Enter sends, Escape stops.
#[test]
fn a_turn_is_sent_and_stopped_from_the_keyboard() {
    let app = spawn(paced());
    run("keyboard-stop", &[&app]);
}

/// Retry on the last answer regenerates it in place of the old one (here and in the store).
#[test]
fn retry_replaces_the_last_answer() {
    let app = spawn_app();
    run("retry", &[&app]);
}

/// Thumbs up and down send `items.feedback` and show the choice with `aria-pressed`; Copy puts
/// the answer's text on the clipboard and says so.
#[test]
fn feedback_and_copy_work_on_an_answer() {
    let app = spawn_app();
    run("feedback-copy", &[&app]);
}

/// The echo's showcase turns in the page: Markdown rendered with its script and handler
/// neutralized, citations with their sources, a workflow's tasks complete, a generated image.
#[test]
fn markdown_citations_workflows_and_images_render_safely() {
    let app = spawn_app();
    run("content", &[&app]);
}

/// An image attached with the Attach button uploads with its progress shown, previews in its chip,
/// goes with a message and shows as a thumbnail in it (and in the stored message); a file removed
/// before sending is deleted and not sent.
#[test]
fn an_attached_image_uploads_previews_and_is_sent_with_the_message() {
    let app = spawn_app();
    run("attach", &[&app]);
}

/// A file dropped on the composer uploads; Send waits for it (and for a failed upload's retry), and
/// the file alone, without text, is sent and shows with its name and type.
#[test]
fn a_dropped_file_uploads_and_is_sent_alone_once_its_upload_is_done() {
    let app = spawn_app();
    run("attach-drop", &[&app]);
}

/// The content renderer on its own (`tests/browser/content-harness.mjs`): sanitized Markdown,
/// citations, workflows and their updates, images, streamed deltas.
#[test]
fn the_content_renderer_passes_its_harness() {
    harness("content-harness.mjs", "content-harness");
}

/// The thread follows a streaming answer while the reader is at the bottom, and stops following
/// once they scroll up.
#[test]
fn auto_scroll_stops_when_the_reader_scrolls_up() {
    let app = spawn(paced());
    run("autoscroll", &[&app]);
}

/// On a phone-sized screen the history sits above the thread and no message reaches past the
/// screen's edge; the history shows when each thread started ("just now").
#[test]
fn the_page_fits_a_narrow_screen() {
    let app = spawn_app();
    run("narrow", &[&app]);
}

/// The widget renderer on its own (`tests/browser/widgets-harness.mjs`): every component of the
/// gallery and of its degraded entries, form values, loading states, streamed updates, keyboard use.
#[test]
fn the_widget_renderer_passes_its_harness() {
    harness("widgets-harness.mjs", "widgets-harness");
}

/// Runs one of the renderers' harnesses in `tests/browser/`; fails with its log.
fn harness(script: &str, artifacts_name: &str) {
    let browser = browser();
    let dir = artifacts(artifacts_name);
    let output = Command::new("node")
        .arg(browser.dir.join(script))
        .arg("--artifacts")
        .arg(&dir)
        .env("CHATKIT_CHROMIUM", &browser.chromium)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .stdin(Stdio::null())
        .output()
        .expect("node starts");
    let log = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{log}");
    assert!(output.status.success(), "{script} failed; artifacts in {}:\n{log}", dir.display());
}

/// The origin of a page the browser serves itself, other than the gateway's
/// (`127.0.0.1`): `localhost`, so that both are on loopback.
fn another_origin() -> String {
    format!("http://localhost:{}", free_port())
}

#[test]
fn a_page_on_an_allowed_origin_streams_a_turn_and_a_viewer_stream() {
    let origin = another_origin();
    let allowed = origin.clone();
    let app = spawn(Spawn { configure: Box::new(move |config| config.web.allowed_origins = vec![allowed]), ..paced() });
    run_with("cors", &[&app], &["--origin", &origin]);
}

#[test]
fn the_browser_refuses_a_page_on_an_origin_not_allowed() {
    let app = spawn(Spawn {
        configure: Box::new(|config| config.web.allowed_origins = vec!["https://app.example.com".into()]),
        ..paced()
    });
    run_with("cors-refused", &[&app], &["--origin", &another_origin()]);
    let unset = spawn(paced());
    run_with("cors-refused", &[&unset], &["--origin", &another_origin()]);
}

/// The page and its scripts come from the binary, with the identity settings filled in.
#[tokio::test]
async fn the_page_and_its_scripts_are_served_from_the_binary() {
    let app = spawn_app();
    let page = app.client.get(app.url("/")).send().await.expect("page");
    assert_eq!(page.status(), 200);
    let header = |name: &str| page.headers().get(name).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(header("content-type").as_deref(), Some("text/html; charset=utf-8"));
    assert!(header("content-security-policy").is_some_and(|csp| csp.contains("script-src 'self'")));
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<meta name="chatkit-auth" content="header">"#), "{html}");
    assert!(html.contains(r#"<meta name="chatkit-user-header" content="x-user-id">"#), "{html}");
    assert!(html.contains(r#"<script src="page/app.js" type="module"></script>"#), "{html}");
    let javascript = "text/javascript; charset=utf-8";
    let mut modules = Vec::new();
    for (path, kind, needle) in [
        ("/page/app.js", javascript, "function start()"),
        ("/page/api.js", javascript, "export async function post"),
        ("/page/state.js", javascript, "export function setCurrent"),
        ("/page/history.js", javascript, "\"chatkit/events\""),
        ("/page/thread.js", javascript, "/events`"),
        ("/page/items.js", javascript, "threads.sync_custom_action"),
        ("/page/composer.js", javascript, "export async function runTurn"),
        ("/page/attachments.js", javascript, "attachments.create"),
        ("/page/attachment-chips.js", javascript, "export function renderMessageAttachments"),
        ("/page/attachments.css", "text/css; charset=utf-8", "#attachments"),
        ("/page/thread-actions.js", javascript, "threads.delete"),
        ("/page/hooks.js", javascript, "window.chatkitPage"),
        ("/page/chat.css", "text/css; charset=utf-8", "#closed-banner"),
        ("/chatkit-live.js", javascript, "fetchUpdates"),
        ("/page/widgets.js", javascript, "export function renderWidget"),
        ("/page/widgets-forms.js", javascript, "export"),
        ("/page/widgets-chart.js", javascript, "export"),
        ("/page/widgets.css", "text/css; charset=utf-8", ".w-"),
        ("/page/time.js", javascript, "export function relativeTime"),
        ("/page/markdown.js", javascript, "export function renderMarkdown"),
        ("/page/content.js", javascript, "export function renderAssistant"),
        ("/page/content.css", "text/css; charset=utf-8", ".c-"),
        ("/page/turn-controls.js", javascript, "allow_cancel"),
        ("/page/interactive-items.js", javascript, "threads.add_client_tool_output"),
        ("/page/message-actions.js", javascript, "items.feedback"),
        ("/page/interact.css", "text/css; charset=utf-8", ".tool-call"),
        ("/page/vendor/marked.esm.js", javascript, "marked"),
        ("/page/vendor/purify.es.mjs", javascript, "DOMPurify"),
    ] {
        let response = app.client.get(app.url(path)).send().await.expect(path);
        assert_eq!(response.status(), 200, "{path}");
        let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
        assert_eq!(content_type.as_deref(), Some(kind), "{path}");
        let body = response.text().await.unwrap();
        assert!(body.contains(needle), "{path}");
        if path.starts_with("/page/") && kind == javascript {
            modules.push((path, body));
        }
    }
    // Every module a page module imports is served too (and so listed above).
    for (path, body) in &modules {
        let imports =
            body.split(['"', '\'']).filter(|s| s.starts_with("./") && (s.ends_with(".js") || s.ends_with(".mjs")));
        for import in imports {
            let imported = format!("/page/{}", &import[2..]);
            assert!(modules.iter().any(|(served, _)| *served == imported), "{path} imports {import}, not served");
        }
    }
    let missing = app.client.get(app.url("/page/nothing.js")).send().await.expect("answer");
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.expect("an error body");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("nothing.js")), "{body}");
}
