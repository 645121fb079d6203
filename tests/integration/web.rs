//! Pages on other origins (`CHATKIT_ALLOWED_ORIGINS`, CORS) and serving under a
//! path prefix (`CHATKIT_BASE_PATH`), over real HTTP.

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;

const ALLOWED: &str = "http://localhost:3000";
const OTHER: &str = "https://evil.example";

/// The CORS headers of an answer, by name, in a stable order.
fn cors_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("access-control-") || name.as_str() == "vary")
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or("?").to_string()))
        .collect();
    found.sort();
    found
}

fn with_origins(origins: &'static str) -> Spawn {
    Spawn {
        configure: Box::new(move |config| config.web.allowed_origins = vec![origins.to_string()]),
        ..Spawn::default()
    }
}

async fn preflight(app: &TestApp, path: &str, origin: &str, method: &str) -> reqwest::Response {
    app.client
        .request(Method::OPTIONS, app.url(path))
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header("access-control-request-headers", "content-type,x-user-id")
        .send()
        .await
        .expect("preflight sent")
}

/// `POST /chatkit` as a browser on `origin` sends it.
async fn post_from(app: &TestApp, origin: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/chatkit"))
        .header("origin", origin)
        .header("x-user-id", "alice")
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request sent")
}

/// A viewer stream's answer headers (the stream itself is dropped).
async fn stream_headers(app: &TestApp, path: &str, origin: &str) -> (StatusCode, HeaderMap) {
    let response = app
        .client
        .get(app.url(path))
        .header("origin", origin)
        .header("x-user-id", "alice")
        .send()
        .await
        .expect("stream opened");
    (response.status(), response.headers().clone())
}

fn allowed_answer() -> Vec<(String, String)> {
    [
        ("access-control-allow-origin", ALLOWED),
        ("access-control-expose-headers", "retry-after, x-request-id"),
        ("vary", "Origin"),
    ]
    .iter()
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect()
}

#[tokio::test]
async fn an_allowed_origin_passes_preflight_and_reads_turns_streams_and_uploads() {
    let app = spawn(Spawn {
        configure: Box::new(|config| {
            config.web.allowed_origins = vec!["https://app.example.com".into(), "HTTP://LOCALHOST:3000".into()];
            config.access.user_header = "x-tenant-user".into();
        }),
        ..Spawn::default()
    });
    for (path, method) in [
        ("/chatkit", "POST"),
        ("/chatkit/events", "GET"),
        ("/chatkit/threads/thr_x/events", "GET"),
        ("/chatkit/attachments/atc_x/upload", "PUT"),
    ] {
        let response = preflight(&app, path, ALLOWED, method).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "{path}");
        let expected: Vec<(String, String)> = [
            ("access-control-allow-headers", "authorization, content-type, last-event-id, x-tenant-user"),
            ("access-control-allow-methods", "GET, POST, PUT"),
            ("access-control-allow-origin", ALLOWED),
            ("access-control-max-age", "600"),
            ("vary", "Origin"),
        ]
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
        assert_eq!(cors_headers(response.headers()), expected, "{path}");
    }

    // A streamed turn, as the page on the other origin reads it.
    let user_header = |builder: reqwest::RequestBuilder| builder.header("x-tenant-user", "alice");
    let response = user_header(app.client.post(app.url("/chatkit")))
        .header("origin", ALLOWED)
        .header("content-type", "application/json")
        .body(request("threads.create", json!({"input": text_input("hi there")})).to_string())
        .send()
        .await
        .expect("turn sent");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(cors_headers(response.headers()), allowed_answer());
    let events = parse_sse(&response.text().await.expect("stream body"));
    assert!(assistant_text(&events).contains("hi there"), "{events:?}");
    let thread_id = events[0]["thread"]["id"].as_str().expect("thread id").to_string();

    // Errors are readable too, so the page can show why.
    let response = app
        .client
        .post(app.url("/chatkit"))
        .header("origin", ALLOWED)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(cors_headers(response.headers()), allowed_answer());

    for path in ["/chatkit/events".to_string(), format!("/chatkit/threads/{thread_id}/events")] {
        let response = user_header(app.client.get(app.url(&path))).header("origin", ALLOWED).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(cors_headers(response.headers()), allowed_answer(), "{path}");
    }

    // Upload and preview of an attachment.
    let created = user_header(app.client.post(app.url("/chatkit")))
        .header("content-type", "application/json")
        .body(request("attachments.create", json!({"name": "a.png", "size": 3, "mime_type": "image/png"})).to_string())
        .send()
        .await
        .unwrap();
    let created: Value = created.json().await.unwrap();
    let upload = created["upload_descriptor"]["url"].as_str().expect("upload url");
    let response = app.client.put(upload).header("origin", ALLOWED).body("png").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(cors_headers(response.headers()), allowed_answer());
    let preview = created["preview_url"].as_str().expect("preview url");
    let response = app.client.get(preview).header("origin", ALLOWED).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(cors_headers(response.headers()), allowed_answer());
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"png");

    // The `/v1` API, the page and the probes are not opened.
    for path in ["/v1/chatkit/threads", "/", "/healthz", "/chatkit-live.js"] {
        let response = app.client.get(app.url(path)).header("origin", ALLOWED).send().await.unwrap();
        assert!(cors_headers(response.headers()).is_empty(), "{path}: {:?}", response.headers());
        let response = preflight(&app, path, ALLOWED, "GET").await;
        assert!(cors_headers(response.headers()).is_empty(), "{path}: {:?}", response.headers());
        assert!(response.status().is_client_error(), "{path}: {}", response.status());
    }
}

#[tokio::test]
async fn another_origin_is_refused_without_allow_headers() {
    let app = spawn(with_origins(ALLOWED));
    for origin in [OTHER, "http://localhost:3001", "http://localhost"] {
        let response = preflight(&app, "/chatkit", origin, "POST").await;
        assert!(cors_headers(response.headers()).is_empty(), "{origin}: {:?}", response.headers());
        let body = error_of(response, 403).await;
        assert_eq!(body["code"], "origin_not_allowed");
        assert!(body["message"].as_str().unwrap().contains(origin), "{body}");
        // An actual request gets no allow header, so the browser hides the answer.
        let response = post_from(&app, origin, request("threads.list", json!({}))).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(cors_headers(response.headers()), [("vary".to_string(), "Origin".to_string())]);
        let (status, headers) = stream_headers(&app, "/chatkit/events", origin).await;
        assert_eq!((status, cors_headers(&headers).len()), (StatusCode::OK, 1), "{headers:?}");
    }
}

#[tokio::test]
async fn nothing_is_opened_without_the_setting() {
    let app = spawn_app();
    let response = preflight(&app, "/chatkit", ALLOWED, "POST").await;
    assert!(cors_headers(response.headers()).is_empty(), "{:?}", response.headers());
    error_of(response, 403).await;
    let response = post_from(&app, ALLOWED, request("threads.list", json!({}))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(cors_headers(response.headers()).is_empty(), "{:?}", response.headers());
    let (status, headers) = stream_headers(&app, "/chatkit/events", ALLOWED).await;
    assert_eq!(status, StatusCode::OK);
    assert!(cors_headers(&headers).is_empty(), "{headers:?}");
}

#[test]
fn a_bad_origin_or_base_path_stops_the_start_with_a_clear_error() {
    use actix_web::http::header::HeaderName;
    use chatkit_gateway::app::App;
    use chatkit_gateway::config::Config;
    for (origins, base, needle) in [
        (vec!["https://app.example.com/chat"], "", "https://app.example.com/chat"),
        (vec!["app.example.com"], "", "CHATKIT_ALLOWED_ORIGINS"),
        (vec![], "/chat/{id}", "CHATKIT_BASE_PATH"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_tests(dir.path().to_path_buf());
        config.web.allowed_origins = origins.iter().map(|origin| origin.to_string()).collect();
        config.web.base_path = base.into();
        let store = std::sync::Arc::new(chatkit_gateway::store::MemoryStore::new());
        let responder = std::sync::Arc::new(chatkit_gateway::responder::EchoResponder::new());
        let result = actix_web::rt::System::new().block_on(async move {
            App::build_with(config, HeaderName::from_static("x-user-id"), store, responder).map(|_| ())
        });
        let error = result.expect_err("the app must refuse to start").to_string();
        assert!(error.starts_with("invalid configuration") && error.contains(needle), "{error}");
    }
}

fn under_chat(public_url: Option<String>) -> TestApp {
    let mut app = spawn(Spawn {
        configure: Box::new(move |config| {
            config.web.base_path = "chat/".into();
            config.server.public_url = public_url;
        }),
        ..Spawn::default()
    });
    app.base = format!("{}/chat", app.base);
    app
}

#[tokio::test]
async fn under_a_base_path_everything_moves_under_the_prefix() {
    let app = under_chat(None);
    let root = app.base.trim_end_matches("/chat").to_string();

    let (thread_id, events) = app.create_thread("alice", "through the prefix").await;
    assert!(assistant_text(&events).contains("through the prefix"), "{events:?}");
    let items = app.items("alice", &thread_id).await;
    assert_eq!(items.len(), 2, "{items:?}");
    let mut viewer = app.view_thread("alice", &thread_id).await;
    app.call("alice", "threads.update", json!({"thread_id": thread_id, "title": "Renamed"})).await;
    let frames = viewer.until(|frame| frame.data.to_string().contains("Renamed")).await;
    assert!(!frames.is_empty());

    // Upload and preview links carry the prefix, and work.
    let created =
        app.call("alice", "attachments.create", json!({"name": "a.png", "size": 3, "mime_type": "image/png"})).await;
    let upload = created["upload_descriptor"]["url"].as_str().expect("upload url");
    let preview = created["preview_url"].as_str().expect("preview url");
    for url in [upload, preview] {
        assert!(url.starts_with(&format!("{}/chatkit/attachments/", app.base)), "{url}");
    }
    assert_eq!(app.client.put(upload).body("png").send().await.unwrap().status(), StatusCode::OK);
    let content = app.client.get(preview).send().await.unwrap();
    assert_eq!(content.status(), StatusCode::OK);
    assert_eq!(content.bytes().await.unwrap().as_ref(), b"png");

    // The page at `/chat/`, with relative asset URLs that resolve under the prefix.
    let page = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    for asset in ["page/chat.css", "page/widgets.css", "chatkit-live.js", "page/app.js"] {
        assert!(html.contains(&format!("\"{asset}\"")), "{asset} in {html}");
        let response = app.client.get(app.url(&format!("/{asset}"))).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
    }
    // The modules `app.js` imports resolve under the prefix too, and none calls an absolute path.
    for module in ["app", "api", "state", "history", "thread", "items", "composer", "thread-actions", "hooks"] {
        let response = app.client.get(app.url(&format!("/page/{module}.js"))).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{module}.js");
        let script = response.text().await.unwrap();
        assert!(!script.contains("\"/chatkit") && !script.contains("`/chatkit"), "{module}.js calls are relative");
        if module == "api" {
            assert!(script.contains("fetch(\"chatkit\""), "the page's calls go to `chatkit`, relative");
        }
    }
    // `/chat` redirects to `/chat/`, where relative URLs resolve under the prefix.
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let response = no_redirects.get(format!("{root}/chat?thread=thr_1")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(response.headers()["location"], "/chat/?thread=thr_1");

    // Nothing answers outside the prefix but the probes and the metrics.
    for path in ["/chatkit", "/", "/chatkit-live.js", "/v1/chatkit/threads", "/chatx/chatkit"] {
        let response = app.client.post(format!("{root}{path}")).header("x-user-id", "alice").send().await.unwrap();
        let response =
            if path == "/chatkit" { response } else { app.client.get(format!("{root}{path}")).send().await.unwrap() };
        error_of(response, 404).await;
    }
    for path in ["/healthz", "/readyz", "/metrics", "/chat/healthz", "/chat/readyz", "/chat/metrics"] {
        let response = app.client.get(format!("{root}{path}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let threads = app.client.get(app.url("/v1/chatkit/threads")).send().await.unwrap();
    assert_eq!(threads.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_explicit_public_url_is_the_full_external_root() {
    let app = under_chat(Some("https://gw.example.com/ext/chat/".into()));
    let created =
        app.call("alice", "attachments.create", json!({"name": "a.png", "size": 3, "mime_type": "image/png"})).await;
    let upload = created["upload_descriptor"]["url"].as_str().expect("upload url");
    assert!(upload.starts_with("https://gw.example.com/ext/chat/chatkit/attachments/"), "{upload}");
}

#[tokio::test]
async fn cors_follows_the_base_path() {
    let mut app = spawn(Spawn {
        configure: Box::new(|config| {
            config.web.base_path = "/chat".into();
            config.web.allowed_origins = vec![ALLOWED.into()];
        }),
        ..Spawn::default()
    });
    app.base = format!("{}/chat", app.base);
    let response = preflight(&app, "/chatkit", ALLOWED, "POST").await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(cors_headers(response.headers()).contains(&("access-control-allow-origin".into(), ALLOWED.into())));
    let response = post_from(&app, ALLOWED, request("threads.list", json!({}))).await;
    assert_eq!(cors_headers(response.headers()), allowed_answer());
}
