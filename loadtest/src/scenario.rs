//! The scenarios as one virtual client runs them: its setup, its request loop, and what counts as success.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::cli::{Endpoint, Scenario};
use crate::report::{ErrorKind, Stats};
use crate::sse::{SseParser, StreamCheck};

/// Threads each `list` client makes first, more than a page so that every page is full.
const LIST_SETUP_THREADS: usize = 25;
/// The page size `list` asks for and expects back.
const LIST_LIMIT: usize = 20;
/// The rate limit of the clients' sessions: far above what one client sends in a minute, so
/// that no request is refused and each still goes through the session's sliding window.
const SESSION_RATE_LIMIT: u32 = 10_000_000;
/// The clients' sessions' life in seconds: longer than any run.
const SESSION_SECONDS: u32 = 86_400;

/// What every client shares: where to send and how long to wait.
#[derive(Debug)]
pub struct Target {
    pub endpoint: Endpoint,
    pub user_header: HeaderName,
    /// `Bearer <admin key>`: each client then authenticates with a session's client secret.
    pub admin_key: Option<HeaderValue>,
    pub timeout: Duration,
    pub scenario: Scenario,
    /// Connections opened by all clients, setup included; equal to the concurrency when keep-alive holds.
    pub connections: AtomicU64,
}

/// When results start to count and when the run stops, the same for all clients.
#[derive(Clone, Copy, Debug)]
pub struct Phases {
    pub measure_from: Instant,
    pub end: Instant,
}

/// How one request ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Ok {
        latency: Duration,
        /// To the first bytes of the body, for event streams.
        ttfb: Option<Duration>,
        /// To the end of the first complete event, for event streams.
        first_event: Option<Duration>,
        thread_id: Option<String>,
    },
    Failed(ErrorKind, String),
    /// The run ended while the request was under way, so it counts neither way.
    Cut,
}

/// Which answer a request should get.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Expect {
    /// An event stream with an assistant answer.
    Turn,
    /// An event stream with an assistant answer and a `thread.created` event.
    Create,
    /// A JSON page of exactly `LIST_LIMIT` threads.
    FullPage,
    /// Any JSON object, such as the thread that `threads.update` and the admin API answer.
    Object,
}

#[derive(Deserialize)]
struct ListPage {
    data: Vec<IgnoredAny>,
}

/// One simulated user: its own user id, its own connection, and requests sent strictly one after another.
pub struct VirtualClient {
    index: u32,
    /// The client's one keep-alive connection, absent until the first request and
    /// after any request that did not read its answer to the end.
    connection: Option<SendRequest<Full<Bytes>>>,
    target: Arc<Target>,
    /// Who the client is: the user header and its user, or `Authorization` and its session's client secret.
    identity: (HeaderName, HeaderValue),
    content_type: HeaderValue,
    host: HeaderValue,
    thread_id: Option<String>,
    sent: u64,
}

impl VirtualClient {
    pub fn new(index: u32, target: Arc<Target>) -> Result<Self, String> {
        let user = HeaderValue::from_str(&format!("load-{index}")).map_err(|e| e.to_string())?;
        let host = HeaderValue::from_str(&target.endpoint.authority).map_err(|e| e.to_string())?;
        let content_type = HeaderValue::from_static("application/json");
        let identity = (target.user_header.clone(), user);
        Ok(VirtualClient { index, connection: None, target, identity, content_type, host, thread_id: None, sent: 0 })
    }

    /// Makes what the scenario needs before the clock starts: the client's session when it
    /// authenticates with one, then a thread to talk in, or threads to list.
    pub async fn setup(&mut self) -> Result<(), String> {
        if let Some(admin_key) = self.target.admin_key.clone() {
            let secret = self.create_session(admin_key).await?;
            let bearer = HeaderValue::from_str(&format!("Bearer {secret}")).map_err(|e| e.to_string())?;
            self.identity = (AUTHORIZATION, bearer);
        }
        match self.target.scenario {
            Scenario::Turn => self.thread_id = Some(self.create_thread().await?),
            Scenario::List => {
                for _ in 0..LIST_SETUP_THREADS {
                    self.create_thread().await?;
                }
            }
            // The fan-out, mixed and idle scenarios run their own setup in their modules, not through a virtual client.
            Scenario::Create | Scenario::Fanout | Scenario::Mixed | Scenario::Idle => {}
        }
        Ok(())
    }

    /// `POST /v1/chatkit/sessions` for this client's user, beside the endpoint's `/chatkit`; the client secret.
    async fn create_session(&mut self, admin_key: HeaderValue) -> Result<String, String> {
        #[derive(Deserialize)]
        struct Created {
            client_secret: String,
        }
        let path = self.target.endpoint.path.strip_suffix("/chatkit").ok_or_else(|| {
            format!("--admin-key needs a URL whose path ends in /chatkit, not {}", self.target.endpoint.path)
        })?;
        let body = json!({
            "user": format!("load-{}", self.index),
            "workflow": {"id": "load"},
            "expires_after": SESSION_SECONDS,
            "rate_limits": {"max_requests_per_1_minute": SESSION_RATE_LIMIT},
        });
        let request = Request::post(format!("{path}/v1/chatkit/sessions"))
            .header(HOST, &self.host)
            .header(CONTENT_TYPE, &self.content_type)
            .header(AUTHORIZATION, admin_key)
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| format!("cannot build the session request: {e}"))?;
        let mut connection = self.ready_connection().await?;
        let response = connection.send_request(request).await.map_err(|e| describe(&e))?;
        let status = response.status();
        let bytes = response.into_body().collect().await.map_err(|e| describe(&e))?.to_bytes();
        if status != StatusCode::OK {
            return Err(format!("creating a session answered {status}: {}", String::from_utf8_lossy(&bytes)));
        }
        self.connection = Some(connection);
        let created: Created = serde_json::from_slice(&bytes).map_err(|e| format!("session answer: {e}"))?;
        Ok(created.client_secret)
    }

    async fn create_thread(&mut self) -> Result<String, String> {
        let body = self.create_body();
        match self.exchange(&body, Expect::Create, None).await {
            Outcome::Ok { thread_id: Some(id), .. } => Ok(id),
            Outcome::Ok { thread_id: None, .. } => Err("threads.create returned no thread id".into()),
            Outcome::Failed(kind, detail) => Err(format!("threads.create failed ({}): {detail}", kind.key())),
            Outcome::Cut => Err("threads.create was cut off".into()),
        }
    }

    /// Sends requests back to back until the run ends, recording those that start after the warm-up.
    pub async fn run(mut self, phases: Phases, stats: &Mutex<Stats>) {
        loop {
            let started = Instant::now();
            if started >= phases.end {
                break;
            }
            let (body, expect) = match self.target.scenario {
                Scenario::Turn => (self.turn_body(), Expect::Turn),
                Scenario::Create => (self.create_body(), Expect::Create),
                Scenario::List => (json!({"type": "threads.list", "params": {"limit": LIST_LIMIT}}), Expect::FullPage),
                // The fan-out, mixed and idle scenarios have no request loop of this kind; their modules drive them.
                Scenario::Fanout | Scenario::Mixed | Scenario::Idle => break,
            };
            let outcome = self.exchange(&body, expect, Some(phases.end)).await;
            if started < phases.measure_from {
                continue;
            }
            // A poisoned lock only means another client panicked; its counts are still sound.
            let mut stats = stats.lock().unwrap_or_else(|poison| poison.into_inner());
            match outcome {
                Outcome::Ok { latency, ttfb, .. } => stats.record_ok(latency, ttfb),
                Outcome::Failed(kind, detail) => stats.record_error(kind, &detail),
                Outcome::Cut => break,
            }
        }
    }

    fn next_text(&mut self) -> String {
        self.sent += 1;
        format!("hello {}", self.sent)
    }

    fn create_body(&mut self) -> Value {
        let greeting = self.next_text();
        let text = format!("load test thread of load-{}: {greeting}", self.index);
        json!({"type": "threads.create", "params": {"input": user_input(&text)}})
    }

    fn turn_body(&mut self) -> Value {
        let text = self.next_text();
        json!({
            "type": "threads.add_user_message",
            "params": {"thread_id": self.thread_id, "input": user_input(&text)},
        })
    }

    /// Sends one request and reads its whole answer, within the request timeout and the end of the run.
    ///
    /// A request that is cut off takes its connection with it, since the
    /// connection may still carry the rest of that answer; the next request opens a new one.
    async fn exchange(&mut self, body: &Value, expect: Expect, run_end: Option<Instant>) -> Outcome {
        let start = Instant::now();
        let timeout_at = start + self.target.timeout;
        let limit = run_end.map_or(timeout_at, |end| end.min(timeout_at));
        match tokio::time::timeout_at(limit, self.exchange_unbounded(body, expect, start)).await {
            Ok(outcome) => outcome,
            Err(_) if limit < timeout_at => Outcome::Cut,
            Err(_) => {
                Outcome::Failed(ErrorKind::Timeout, format!("no complete answer within {:?}", self.target.timeout))
            }
        }
    }

    async fn exchange_unbounded(&mut self, body: &Value, expect: Expect, start: Instant) -> Outcome {
        let mut connection = match self.ready_connection().await {
            Ok(connection) => connection,
            Err(detail) => return Outcome::Failed(ErrorKind::Transport, detail),
        };
        let body = serde_json::to_vec(body).expect("a JSON value serializes");
        let request = Request::post(self.target.endpoint.path.as_str())
            .header(HOST, &self.host)
            .header(CONTENT_TYPE, &self.content_type)
            .header(&self.identity.0, &self.identity.1)
            .body(Full::new(Bytes::from(body)))
            .expect("the method, path and headers were all validated up front");
        let (outcome, read_to_end) = send_and_read(&mut connection, request, expect, start).await;
        if read_to_end {
            self.connection = Some(connection);
        }
        outcome
    }

    /// The kept connection once it can take a request, or a new one when it is gone or was never made.
    async fn ready_connection(&mut self) -> Result<SendRequest<Full<Bytes>>, String> {
        if let Some(mut connection) = self.connection.take() {
            // `ready` waits for the previous exchange to be fully wrapped up, and
            // fails only when the server has closed the connection in the meantime.
            if connection.ready().await.is_ok() {
                return Ok(connection);
            }
        }
        open_connection(self.target.endpoint.addr, &self.target.connections).await
    }
}

/// Opens one HTTP/1 connection and counts it in `opened`.
pub(crate) async fn open_connection(addr: SocketAddr, opened: &AtomicU64) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
    let (sender, driver) =
        http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("HTTP handshake failed: {}", describe(&e)))?;
    // The driver does the reading and writing; it ends when the sender is
    // dropped or the server closes the connection, and its error then is
    // already reported through the request that saw it.
    tokio::spawn(async move {
        let _ = driver.await;
    });
    opened.fetch_add(1, Ordering::Relaxed);
    Ok(sender)
}

/// Sends one request and reads its whole answer as `expect` says; the flag says
/// whether the answer was read to its end, so the connection can carry another.
pub(crate) async fn send_and_read(
    connection: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
    expect: Expect,
    start: Instant,
) -> (Outcome, bool) {
    let response = match connection.send_request(request).await {
        Ok(response) => response,
        Err(e) => return (Outcome::Failed(ErrorKind::Transport, format!("request failed: {}", describe(&e))), false),
    };
    if response.status() != StatusCode::OK {
        return read_refusal(response).await;
    }
    match expect {
        Expect::Turn | Expect::Create => read_stream(response, expect, start).await,
        Expect::FullPage | Expect::Object => read_json(response, expect, start).await,
    }
}

pub(crate) fn user_input(text: &str) -> Value {
    json!({
        "content": [{"type": "input_text", "text": text}],
        "attachments": [],
        "inference_options": {},
    })
}

/// Reads a non-200 answer so the connection stays usable, and reports its status with the start of its body.
pub(crate) async fn read_refusal(response: Response<Incoming>) -> (Outcome, bool) {
    let status = response.status();
    let (text, read_to_end) = match response.into_body().collect().await {
        Ok(body) => (String::from_utf8_lossy(&body.to_bytes()).chars().take(200).collect::<String>(), true),
        Err(_) => (String::new(), false),
    };
    (Outcome::Failed(ErrorKind::Http(status.as_u16()), format!("{status}: {text}")), read_to_end)
}

/// Reads an event stream to its end; the flag says whether the end was reached.
async fn read_stream(response: Response<Incoming>, expect: Expect, start: Instant) -> (Outcome, bool) {
    let content_type = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.starts_with("text/event-stream") {
        let detail = format!("content type is `{content_type}`, not text/event-stream");
        return (Outcome::Failed(ErrorKind::BadStream, detail), false);
    }
    let mut parser = SseParser::new();
    let mut check = StreamCheck::default();
    let mut ttfb = None;
    let mut first_event = None;
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                return (Outcome::Failed(ErrorKind::BadStream, format!("stream broke off: {}", describe(&e))), false)
            }
        };
        let Ok(chunk) = frame.into_data() else { continue };
        if ttfb.is_none() && !chunk.is_empty() {
            ttfb = Some(start.elapsed());
        }
        parser.feed(&chunk, |data| check.observe(data));
        if first_event.is_none() && check.events > 0 {
            first_event = Some(start.elapsed());
        }
    }
    let latency = start.elapsed();
    if parser.has_partial_event() {
        return (Outcome::Failed(ErrorKind::BadStream, "stream ended in the middle of an event".into()), true);
    }
    let problem = match expect {
        Expect::Create => check.create_problem(),
        _ => check.turn_problem(),
    };
    let outcome = match problem {
        Some(problem) => {
            let kind =
                if check.retryable_error && check.malformed == 0 { ErrorKind::Retryable } else { ErrorKind::BadStream };
            Outcome::Failed(kind, format!("{problem} ({} events)", check.events))
        }
        None => Outcome::Ok { latency, ttfb, first_event, thread_id: check.thread_id },
    };
    (outcome, true)
}

/// Reads a JSON answer and checks it: a full page for `FullPage`, any object for `Object`; the flag
/// says whether the body was read to its end.
async fn read_json(response: Response<Incoming>, expect: Expect, start: Instant) -> (Outcome, bool) {
    let bytes = match response.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return (Outcome::Failed(ErrorKind::BadBody, format!("body broke off: {}", describe(&e))), false),
    };
    let latency = start.elapsed();
    let ok = Outcome::Ok { latency, ttfb: None, first_event: None, thread_id: None };
    let outcome = if let Expect::Object = expect {
        match serde_json::from_slice::<serde_json::Map<String, Value>>(&bytes) {
            Ok(_) => ok,
            Err(e) => Outcome::Failed(ErrorKind::BadBody, format!("answer is not a JSON object: {e}")),
        }
    } else {
        match serde_json::from_slice::<ListPage>(&bytes) {
            Ok(page) if page.data.len() == LIST_LIMIT => ok,
            Ok(page) => Outcome::Failed(
                ErrorKind::BadBody,
                format!("page has {} threads, expected {LIST_LIMIT}", page.data.len()),
            ),
            Err(e) => Outcome::Failed(ErrorKind::BadBody, format!("answer is not a page of threads: {e}")),
        }
    };
    (outcome, true)
}

/// An error with its causes, since hyper keeps the useful part (such as "connection reset") in the source chain.
pub(crate) fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
