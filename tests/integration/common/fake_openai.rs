//! A fake OpenAI-compatible HTTP server for tests of model responders: scripted Chat Completions streams and errors.
//!
//! The server listens on 127.0.0.1 (port 0) and speaks just enough HTTP/1.1 by
//! hand, on a raw `tokio` listener in its own thread, to do what a web framework
//! would refuse to do: split SSE frames across writes at odd byte boundaries,
//! cut a body mid-stream, hang, close a connection without any response, and
//! note the instant a client hangs up.
//!
//! Routes: `POST /v1/chat/completions` answers from the routers (see
//! [`FakeOpenAi::route`]) and then from the queue (see [`FakeOpenAi::push`]);
//! `POST /v1/responses` answers from its own queue (see [`FakeOpenAi::push_response`]),
//! typically scripted Responses stream events sent as `event: <type>` + `data: <json>`
//! frames (see [`Reply::responses`] and the fixtures of [`responses_fixture`]);
//! `POST /v1/audio/transcriptions` answers from its own queue or with a default
//! `{"text": ..., "usage": ...}`; anything else gets a 404 with an OpenAI-style error body.
//! Every request is recorded, whatever it gets.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};

/// The model name the helpers use when a test has no reason to pick one.
pub const MODEL: &str = "fake-model";
/// The `id` of every chunk and completion the helpers build.
pub const COMPLETION_ID: &str = "chatcmpl-fake";
/// The `created` timestamp of every chunk and completion the helpers build.
pub const CREATED: u64 = 1_700_000_000;
/// The text of a transcription when nothing else is scripted.
pub const DEFAULT_TRANSCRIPTION: &str = "fake transcription";

/// A request head larger than this is refused, so a broken client cannot grow the buffer forever.
const MAX_HEAD: usize = 1 << 20;

/// A router: answers some chat requests by their JSON body (`null` when the body is not JSON).
type Router = dyn Fn(&Value) -> Option<Reply> + Send + Sync;

// ---------------------------------------------------------------------------
// Replies.

/// What the server answers to one request.
#[derive(Clone, Debug)]
pub struct Reply {
    kind: Kind,
    headers: Vec<(String, String)>,
    after: Duration,
}

#[derive(Clone, Debug)]
enum Kind {
    Json { status: u16, body: Value },
    Stream(StreamReply),
    Hang,
    Reset,
}

#[derive(Clone, Debug)]
struct StreamReply {
    /// The payloads of the `data:` frames, `[DONE]` excluded.
    frames: Vec<String>,
    /// The `event:` line of each frame, when it has one (Responses streams name every event).
    names: Vec<Option<String>>,
    delay: Duration,
    done: bool,
    cut_after: Option<usize>,
    split_every: Option<usize>,
}

impl Reply {
    fn new(kind: Kind) -> Reply {
        Reply { kind, headers: Vec::new(), after: Duration::ZERO }
    }

    /// A 200 event stream of `chat.completion.chunk` bodies, one `data: <json>` frame each, then `data: [DONE]`.
    pub fn stream(chunks: Vec<Value>) -> Reply {
        Reply::stream_frames(chunks.iter().map(Value::to_string).collect())
    }

    /// A 200 event stream of raw frame payloads (sent as `data: <payload>`), for malformed chunks.
    pub fn stream_frames(frames: Vec<String>) -> Reply {
        Reply::new(Kind::Stream(StreamReply {
            frames,
            names: Vec::new(),
            delay: Duration::ZERO,
            done: true,
            cut_after: None,
            split_every: None,
        }))
    }

    /// A 200 Responses API event stream: each event as `event: <its type>` and `data: <json>`, and no
    /// `[DONE]` frame, as OpenAI sends it.
    pub fn responses(events: Vec<Value>) -> Reply {
        let names = events.iter().map(|event| event["type"].as_str().map(str::to_string)).collect();
        let mut reply = Reply::stream(events).without_done();
        reply = reply.with_stream("responses", |stream| stream.names = names);
        reply
    }

    /// A streamed assistant text: `Reply::stream(text_chunks(model, parts))`.
    pub fn text(model: &str, parts: &[&str]) -> Reply {
        Reply::stream(text_chunks(model, parts))
    }

    /// A non-streaming answer with a JSON body, for completions and errors.
    pub fn json(status: u16, body: Value) -> Reply {
        Reply::new(Kind::Json { status, body })
    }

    /// A 200 `chat.completion` whose assistant message is `content`, as a title request gets.
    pub fn completion(model: &str, content: &str) -> Reply {
        Reply::json(200, completion(model, content))
    }

    /// An error status with an OpenAI error body whose `type` and `code` are what OpenAI sends for that status.
    pub fn error(status: u16, message: &str) -> Reply {
        let (kind, code) = match status {
            401 => ("invalid_request_error", Some("invalid_api_key")),
            403 => ("permission_error", None),
            404 => ("invalid_request_error", Some("model_not_found")),
            429 => ("requests", Some("rate_limit_exceeded")),
            500.. => ("server_error", None),
            _ => ("invalid_request_error", None),
        };
        Reply::json(status, error_body(message, kind, code))
    }

    /// Reads the request and never answers, until the client gives up or the server stops.
    pub fn hang() -> Reply {
        Reply::new(Kind::Hang)
    }

    /// Reads the request and closes the connection without any response (a TCP reset).
    pub fn reset() -> Reply {
        Reply::new(Kind::Reset)
    }

    /// Adds a response header, replacing a default one of the same name (e.g. `retry-after`, `content-type`).
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// Waits this long after reading the request before doing anything else.
    pub fn after(mut self, wait: Duration) -> Reply {
        self.after = wait;
        self
    }

    /// Streams only: waits this long before every frame but the first (`[DONE]` included).
    pub fn delay(self, delay: Duration) -> Reply {
        self.with_stream("delay", |stream| stream.delay = delay)
    }

    /// Streams only: ends the body cleanly without the `data: [DONE]` frame.
    pub fn without_done(self) -> Reply {
        self.with_stream("without_done", |stream| stream.done = false)
    }

    /// Streams only: closes the TCP connection after `frames` chunks, mid-body and without `[DONE]`.
    pub fn cut_after(self, frames: usize) -> Reply {
        self.with_stream("cut_after", |stream| stream.cut_after = Some(frames))
    }

    /// Streams only: writes the body in pieces of `bytes` bytes (each its own HTTP chunk and TCP write),
    /// so frames arrive split at odd places; frames sent without a delay between them are split as one run,
    /// so a piece can also hold the end of one frame and the start of the next.
    pub fn split_every(self, bytes: usize) -> Reply {
        assert!(bytes > 0, "split_every needs a positive piece size");
        self.with_stream("split_every", |stream| stream.split_every = Some(bytes))
    }

    fn with_stream(mut self, option: &str, change: impl FnOnce(&mut StreamReply)) -> Reply {
        match &mut self.kind {
            Kind::Stream(stream) => change(stream),
            other => panic!("`{option}` applies to stream replies only, not to {other:?}"),
        }
        self
    }
}

// ---------------------------------------------------------------------------
// Bodies.

/// One `chat.completion.chunk` with a single choice carrying `delta`.
pub fn chunk(model: &str, delta: Value, finish_reason: Option<&str>) -> Value {
    json!({
        "id": COMPLETION_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
    })
}

/// An assistant text stream: a `role: assistant` chunk, one content delta per part, then `finish_reason: stop`.
pub fn text_chunks(model: &str, parts: &[&str]) -> Vec<Value> {
    let mut chunks = vec![chunk(model, json!({"role": "assistant", "content": ""}), None)];
    chunks.extend(parts.iter().map(|part| chunk(model, json!({"content": part}), None)));
    chunks.push(chunk(model, json!({}), Some("stop")));
    chunks
}

/// A text stream whose single content delta is `len` bytes of ASCII text (see [`large_text`]).
pub fn large_text_chunks(model: &str, len: usize) -> Vec<Value> {
    text_chunks(model, &[&large_text(len)])
}

/// One tool call: id, name and empty arguments first, the arguments in `argument_parts`, then `finish_reason: tool_calls`.
pub fn tool_call_chunks(model: &str, call_id: &str, name: &str, argument_parts: &[&str]) -> Vec<Value> {
    let first = json!({
        "role": "assistant",
        "content": null,
        "tool_calls": [{"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}],
    });
    let mut chunks = vec![chunk(model, first, None)];
    chunks.extend(
        argument_parts
            .iter()
            .map(|part| chunk(model, json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}), None)),
    );
    chunks.push(chunk(model, json!({}), Some("tool_calls")));
    chunks
}

/// Appends the usage chunk OpenAI sends last when `stream_options.include_usage` is set (its `choices` are empty).
pub fn with_usage(mut chunks: Vec<Value>, prompt_tokens: u64, completion_tokens: u64) -> Vec<Value> {
    let model = chunks.first().and_then(|first| first["model"].as_str()).unwrap_or(MODEL).to_string();
    chunks.push(json!({
        "id": COMPLETION_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": [],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }));
    chunks
}

/// A `url_citation` annotation, as web-search models attach to message text.
pub fn url_citation(url: &str, title: &str, start_index: usize, end_index: usize) -> Value {
    json!({
        "type": "url_citation",
        "url_citation": {"url": url, "title": title, "start_index": start_index, "end_index": end_index},
    })
}

/// Sets `annotations` on the delta of a chunk's first choice.
pub fn annotate(mut chunk: Value, annotations: Vec<Value>) -> Value {
    chunk["choices"][0]["delta"]["annotations"] = Value::Array(annotations);
    chunk
}

/// A non-streaming `chat.completion` whose assistant message is `content`.
pub fn completion(model: &str, content: &str) -> Value {
    json!({
        "id": COMPLETION_ID,
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": null},
            "logprobs": null,
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    })
}

/// A transcription answer as OpenAI sends it for `whisper-1`: the text and a duration `usage`.
///
/// `async-openai` 0.43 requires `usage` in a transcription response; a server that sends
/// only `{"text": ...}` (as some OpenAI-compatible servers do) fails its typed `create`.
pub fn transcription(text: &str) -> Value {
    json!({"text": text, "usage": {"type": "duration", "seconds": 1}})
}

/// An OpenAI error body: `{"error": {"message", "type", "param": null, "code"}}`.
pub fn error_body(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// `len` bytes of deterministic ASCII words, for large deltas.
pub fn large_text(len: usize) -> String {
    const WORDS: [&str; 8] = ["lorem ", "ipsum ", "dolor ", "sit ", "amet ", "consectetur ", "adipiscing ", "elit\n"];
    let mut text = String::with_capacity(len + 16);
    for word in WORDS.iter().cycle() {
        if text.len() >= len {
            break;
        }
        text.push_str(word);
    }
    text.truncate(len);
    text
}

/// A Responses stream that answers `text` in one message (`msg_<n>` upstream), numbered as OpenAI numbers events.
pub fn response_text_events(text: &str) -> Vec<Value> {
    let message =
        json!({"type": "message", "id": "msg_fake", "status": "in_progress", "role": "assistant", "content": []});
    let part = json!({"type": "output_text", "text": "", "annotations": []});
    let done_part = json!({"type": "output_text", "text": text, "annotations": []});
    let mut done_message = message.clone();
    done_message["status"] = json!("completed");
    done_message["content"] = json!([done_part]);
    sequenced(vec![
        json!({"type": "response.created", "response": response_object("in_progress", json!([]))}),
        json!({"type": "response.output_item.added", "output_index": 0, "item": message}),
        json!({"type": "response.content_part.added", "item_id": "msg_fake", "output_index": 0, "content_index": 0, "part": part}),
        json!({"type": "response.output_text.delta", "item_id": "msg_fake", "output_index": 0, "content_index": 0, "delta": text, "logprobs": []}),
        json!({"type": "response.output_text.done", "item_id": "msg_fake", "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
        json!({"type": "response.content_part.done", "item_id": "msg_fake", "output_index": 0, "content_index": 0, "part": done_part}),
        json!({"type": "response.output_item.done", "output_index": 0, "item": done_message}),
        json!({"type": "response.completed", "response": response_object("completed", json!([done_message]))}),
    ])
}

/// A response that calls function `name` once, with `arguments` (JSON text), as call `call_id`.
pub fn response_call_events(call_id: &str, name: &str, arguments: &str) -> Vec<Value> {
    let item_id = format!("fc_{call_id}");
    let call = |status: &str, arguments: &str| json!({"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments, "status": status});
    let done = call("completed", arguments);
    sequenced(vec![
        json!({"type": "response.created", "response": response_object("in_progress", json!([]))}),
        json!({"type": "response.output_item.added", "output_index": 0, "item": call("in_progress", "")}),
        json!({"type": "response.function_call_arguments.done", "item_id": item_id, "output_index": 0, "arguments": arguments}),
        json!({"type": "response.output_item.done", "output_index": 0, "item": done}),
        json!({"type": "response.completed", "response": response_object("completed", json!([done]))}),
    ])
}

/// A `response` object as the lifecycle events carry it.
pub fn response_object(status: &str, output: Value) -> Value {
    json!({
        "id": "resp_fake", "object": "response", "created_at": CREATED, "status": status, "model": MODEL,
        "output": output, "error": null, "incomplete_details": null,
        "usage": if status == "completed" { json!({"input_tokens": 12, "output_tokens": 4, "total_tokens": 16}) } else { Value::Null },
    })
}

/// Numbers events with `sequence_number` from 0, as OpenAI does.
pub fn sequenced(mut events: Vec<Value>) -> Vec<Value> {
    for (number, event) in events.iter_mut().enumerate() {
        event["sequence_number"] = json!(number);
    }
    events
}

/// A scripted Responses stream in `tests/fixtures/responses/<name>.json`.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct ResponsesFixture {
    /// What the stream shows, for whoever reads the fixture.
    pub description: String,
    /// What the user says to get this answer.
    pub user_text: String,
    /// The stream events, exactly as the OpenAI API sends them.
    pub events: Vec<Value>,
}

impl ResponsesFixture {
    /// The reply that streams the fixture's events.
    pub fn reply(&self) -> Reply {
        Reply::responses(self.events.clone())
    }
}

/// Loads `tests/fixtures/responses/<name>.json`; a missing or malformed fixture fails the test, naming it.
pub fn responses_fixture(name: &str) -> ResponsesFixture {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/responses/{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let fixture: ResponsesFixture =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not a fixture: {e}", path.display()));
    assert!(!fixture.description.is_empty(), "{}: the fixture needs a description", path.display());
    for (position, event) in fixture.events.iter().enumerate() {
        assert!(
            event["type"].is_string() && event["sequence_number"].is_u64(),
            "{}: event {position} needs `type` and `sequence_number`",
            path.display()
        );
    }
    fixture
}

// ---------------------------------------------------------------------------
// Records.

/// One request as the server read it.
#[derive(Clone, Debug)]
pub struct Request {
    /// Its position in [`FakeOpenAi::requests`], the key of the stream queries.
    pub index: usize,
    /// The client's address; two requests from one port came over one (kept-alive) connection.
    pub peer: SocketAddr,
    pub method: String,
    /// The path without the query string, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Header names are lowercased; values are kept as sent (lossily decoded).
    pub headers: Vec<(String, String)>,
    /// The body as received (chunked transfer encoding undone).
    pub body: Vec<u8>,
    /// The body parsed as JSON, when it is JSON.
    pub json: Option<Value>,
    /// The parts of a `multipart/form-data` body, in order.
    pub parts: Vec<Part>,
}

/// One part of a `multipart/form-data` body.
#[derive(Clone, Debug)]
pub struct Part {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: Vec<u8>,
}

impl Request {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The first multipart part called `name`.
    pub fn part(&self, name: &str) -> Option<&Part> {
        self.parts.iter().find(|part| part.name == name)
    }

    /// The text of a multipart field that is not a file, e.g. `model`.
    pub fn field(&self, name: &str) -> Option<String> {
        self.parts
            .iter()
            .find(|part| part.name == name && part.filename.is_none())
            .map(|part| String::from_utf8_lossy(&part.data).into_owned())
    }

    pub fn is_chat(&self) -> bool {
        self.method == "POST" && self.path == "/v1/chat/completions"
    }

    pub fn is_responses(&self) -> bool {
        self.method == "POST" && self.path == "/v1/responses"
    }

    pub fn is_transcription(&self) -> bool {
        self.method == "POST" && self.path == "/v1/audio/transcriptions"
    }
}

/// How a streamed (or hanging) reply ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// Every frame was sent and the body was ended.
    Completed,
    /// The client closed the connection (or a write to it failed) before the reply was complete.
    ClientClosed,
    /// The server cut the connection as scripted by [`Reply::cut_after`].
    Cut,
}

/// The life of one streamed or hanging reply.
#[derive(Clone, Debug)]
pub struct StreamRecord {
    pub request_index: usize,
    /// Whether the reply was [`Reply::hang`] rather than a stream.
    pub hang: bool,
    /// Frames fully written so far, `[DONE]` included.
    pub frames_sent: usize,
    /// How and when it ended; `None` while it is open.
    pub end: Option<(StreamEnd, Instant)>,
}

// ---------------------------------------------------------------------------
// The server.

/// A running fake server, stopped (every connection closed) when dropped.
pub struct FakeOpenAi {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<std::thread::JoinHandle<()>>,
}

struct State {
    inner: Mutex<Inner>,
    /// Woken on every change, for the `wait_*` methods.
    changed: Notify,
}

struct Inner {
    requests: Vec<Request>,
    chat: VecDeque<Reply>,
    responses: VecDeque<Reply>,
    routers: Vec<Box<Router>>,
    transcriptions: VecDeque<Reply>,
    transcription_text: String,
    streams: Vec<StreamRecord>,
    unscripted: usize,
}

impl FakeOpenAi {
    /// Starts a server on a free loopback port; it accepts connections when this returns.
    pub fn start() -> FakeOpenAi {
        let listener = std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("bind loopback");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(State {
            inner: Mutex::new(Inner {
                requests: Vec::new(),
                chat: VecDeque::new(),
                responses: VecDeque::new(),
                routers: Vec::new(),
                transcriptions: VecDeque::new(),
                transcription_text: DEFAULT_TRANSCRIPTION.to_string(),
                streams: Vec::new(),
                unscripted: 0,
            }),
            changed: Notify::new(),
        });
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server_state = state.clone();
        // The server has its own runtime in its own thread, so it neither depends on nor
        // blocks the test's runtime; dropping that runtime drops every connection, hanging ones included.
        let server = std::thread::Builder::new()
            .name("fake-openai".to_string())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("tokio listener");
                    tokio::select! {
                        _ = accept(listener, server_state) => {}
                        _ = stop_rx => {}
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("spawn fake OpenAI server");
        FakeOpenAi { addr, state, stop: Some(stop_tx), server: Some(server) }
    }

    /// The API base URL, `http://127.0.0.1:<port>/v1`, as a client's `api_base` wants it.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.addr.port())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Appends a reply to the queue that answers chat completion requests in arrival order.
    pub fn push(&self, reply: Reply) -> &Self {
        self.state.lock().chat.push_back(reply);
        self
    }

    /// Appends a reply to the queue that answers `POST /v1/responses` requests in arrival order.
    pub fn push_response(&self, reply: Reply) -> &Self {
        self.state.lock().responses.push_back(reply);
        self
    }

    /// The Responses API requests so far.
    pub fn responses_requests(&self) -> Vec<Request> {
        self.state.lock().requests.iter().filter(|request| request.is_responses()).cloned().collect()
    }

    /// Adds a router, consulted (in the order added) with each chat request's JSON body before the queue;
    /// the first `Some` answers the request and leaves the queue alone.
    pub fn route(&self, router: impl Fn(&Value) -> Option<Reply> + Send + Sync + 'static) -> &Self {
        self.state.lock().routers.push(Box::new(router));
        self
    }

    /// Chat replies still queued.
    pub fn remaining(&self) -> usize {
        self.state.lock().chat.len()
    }

    /// Chat and Responses requests that found nothing scripted and got a 500.
    pub fn unscripted(&self) -> usize {
        self.state.lock().unscripted
    }

    /// Appends a reply to the transcription queue; when it is empty, transcriptions get
    /// [`transcription`] of the default text.
    pub fn push_transcription(&self, reply: Reply) -> &Self {
        self.state.lock().transcriptions.push_back(reply);
        self
    }

    /// Sets the text of the default transcription answer (see [`transcription`]).
    pub fn set_transcription_text(&self, text: &str) -> &Self {
        self.state.lock().transcription_text = text.to_string();
        self
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().requests.clone()
    }

    /// The chat completion requests so far.
    pub fn chat_requests(&self) -> Vec<Request> {
        self.state.lock().requests.iter().filter(|request| request.is_chat()).cloned().collect()
    }

    /// The transcription requests so far.
    pub fn transcription_requests(&self) -> Vec<Request> {
        self.state.lock().requests.iter().filter(|request| request.is_transcription()).cloned().collect()
    }

    /// Waits (bounded) until at least `count` requests arrived; whether they did.
    pub async fn wait_for_requests(&self, count: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |inner| (inner.requests.len() >= count).then_some(())).await.is_some()
    }

    /// The streamed or hanging reply to request `request_index` (an index into [`FakeOpenAi::requests`]).
    pub fn stream(&self, request_index: usize) -> Option<StreamRecord> {
        self.state.lock().streams.iter().find(|stream| stream.request_index == request_index).cloned()
    }

    /// When the client closed the reply to request `request_index` before it was complete, if it did.
    pub fn stream_closed_at(&self, request_index: usize) -> Option<Instant> {
        match self.stream(request_index)?.end? {
            (StreamEnd::ClientClosed, at) => Some(at),
            _ => None,
        }
    }

    /// Waits (bounded) until the client closes the reply to request `request_index`; when it did.
    /// Returns `None` at the timeout, and at once if the reply ended another way.
    pub async fn wait_stream_closed(&self, request_index: usize, timeout: Duration) -> Option<Instant> {
        match self.wait_stream_ended(request_index, timeout).await? {
            (StreamEnd::ClientClosed, at) => Some(at),
            _ => None,
        }
    }

    /// Waits (bounded) until the reply to request `request_index` ends, however it ends.
    pub async fn wait_stream_ended(&self, request_index: usize, timeout: Duration) -> Option<(StreamEnd, Instant)> {
        self.wait_until(timeout, |inner| {
            inner.streams.iter().find(|stream| stream.request_index == request_index).and_then(|stream| stream.end)
        })
        .await
    }

    /// Streamed or hanging replies whose connection is open now.
    pub fn open_streams(&self) -> usize {
        self.state.lock().streams.iter().filter(|stream| stream.end.is_none()).count()
    }

    async fn wait_until<T>(&self, timeout: Duration, mut check: impl FnMut(&Inner) -> Option<T>) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register before checking, so a change between the check and the wait is not missed.
            let notified = self.state.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let found = check(&self.state.lock());
            if found.is_some() {
                return found;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let found = check(&self.state.lock());
                return found;
            }
        }
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn changed(&self) {
        self.changed.notify_waiters();
    }

    /// Records a request, picks its reply and, for a stream or a hang, opens its record, all at
    /// once: whoever sees the request also sees its stream. Routers run under the lock; they get
    /// only the request's JSON, so they cannot reach the server to deadlock it.
    fn reply_to(&self, mut request: Request) -> (usize, Reply) {
        let mut inner = self.lock();
        let index = inner.requests.len();
        request.index = index;
        let reply = match (request.method.as_str(), request.path.as_str()) {
            ("POST", "/v1/chat/completions") => chat_reply(&mut inner, &request),
            ("POST", "/v1/responses") => inner.responses.pop_front().unwrap_or_else(|| {
                inner.unscripted += 1;
                let message = format!("fake OpenAI server: no reply scripted for Responses request #{index}");
                Reply::json(500, error_body(&message, "server_error", Some("fake_unscripted")))
            }),
            ("POST", "/v1/audio/transcriptions") => {
                let text = inner.transcription_text.clone();
                inner.transcriptions.pop_front().unwrap_or_else(|| Reply::json(200, transcription(&text)))
            }
            (method, path) => Reply::json(
                404,
                error_body(
                    &format!("fake OpenAI server: no route for {method} {path}"),
                    "invalid_request_error",
                    Some("unknown_url"),
                ),
            ),
        };
        inner.requests.push(request);
        if let Kind::Stream(_) | Kind::Hang = reply.kind {
            let hang = matches!(reply.kind, Kind::Hang);
            let record = StreamRecord { request_index: index, hang, frames_sent: 0, end: None };
            inner.streams.push(record);
        }
        drop(inner);
        self.changed();
        (index, reply)
    }

    fn update_stream(&self, request_index: usize, update: impl FnOnce(&mut StreamRecord)) {
        if let Some(stream) = self.lock().streams.iter_mut().find(|stream| stream.request_index == request_index) {
            update(stream);
        }
        self.changed();
    }
}

/// Picks the reply to a chat request: the first router that answers, else the queue, else a readable 500.
fn chat_reply(inner: &mut Inner, request: &Request) -> Reply {
    let body = request.json.clone().unwrap_or(Value::Null);
    for router in &inner.routers {
        // A panicking router becomes a readable 500 instead of a dropped connection.
        match std::panic::catch_unwind(AssertUnwindSafe(|| router(&body))) {
            Ok(Some(reply)) => return reply,
            Ok(None) => {}
            Err(_) => {
                let message = format!("fake OpenAI server: a router panicked on request #{}", request.index);
                return Reply::json(500, error_body(&message, "server_error", Some("fake_router_panicked")));
            }
        }
    }
    if let Some(reply) = inner.chat.pop_front() {
        return reply;
    }
    inner.unscripted += 1;
    let message = format!(
        "fake OpenAI server: no reply scripted for chat completion request #{} (model {}); push one or add a router",
        request.index, body["model"]
    );
    Reply::json(500, error_body(&message, "server_error", Some("fake_unscripted")))
}

async fn accept(listener: TcpListener, state: Arc<State>) {
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                let _ = socket.set_nodelay(true);
                tokio::spawn(connection(socket, peer, state.clone()));
            }
            // Out of file descriptors, most likely: wait a little rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Serves requests on one connection until either side closes it.
async fn connection(mut socket: TcpStream, peer: SocketAddr, state: Arc<State>) {
    let mut buffer = Vec::new();
    loop {
        let request = match read_request(&mut socket, peer, &mut buffer).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(problem) => {
                let body =
                    error_body(&format!("fake OpenAI server: bad request: {problem}"), "invalid_request_error", None);
                let _ = socket.write_all(&json_response(400, &body, &[], false)).await;
                return;
            }
        };
        let keep_alive = request.header("connection").is_none_or(|value| !value.eq_ignore_ascii_case("close"));
        let (index, reply) = state.reply_to(request);
        if !play(&mut socket, &state, index, reply, keep_alive).await {
            return;
        }
    }
}

/// Plays one reply; whether the connection can serve another request.
async fn play(socket: &mut TcpStream, state: &State, index: usize, reply: Reply, keep_alive: bool) -> bool {
    let Reply { kind, headers, after } = reply;
    match kind {
        Kind::Json { status, body } => {
            sleep(after).await;
            socket.write_all(&json_response(status, &body, &headers, keep_alive)).await.is_ok() && keep_alive
        }
        Kind::Reset => {
            sleep(after).await;
            // A zero linger makes the close a reset (RST) rather than an orderly end of stream.
            let _ = socket.set_zero_linger();
            false
        }
        Kind::Hang => {
            let at = closed(socket).await;
            state.update_stream(index, |stream| stream.end = Some((StreamEnd::ClientClosed, at)));
            false
        }
        Kind::Stream(stream) => {
            let (mut reader, mut writer) = socket.split();
            let send = async {
                sleep(after).await;
                send_stream(&mut writer, &stream, &headers, state, index).await
            };
            let end = tokio::select! {
                at = closed(&mut reader) => (StreamEnd::ClientClosed, at),
                end = send => (end, Instant::now()),
            };
            state.update_stream(index, |stream| stream.end = Some(end));
            end.0 == StreamEnd::Completed && keep_alive
        }
    }
}

async fn sleep(wait: Duration) {
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

/// Resolves when the peer closes its side (or the socket fails), with that instant.
/// Bytes a client sends meanwhile (it should send none) are dropped.
async fn closed(reader: &mut (impl AsyncRead + Unpin)) -> Instant {
    let mut scratch = [0u8; 1024];
    loop {
        match reader.read(&mut scratch).await {
            Ok(0) | Err(_) => return Instant::now(),
            Ok(_) => {}
        }
    }
}

/// Writes a streamed reply; how it ended (a failed write counts as the client closing).
async fn send_stream(
    writer: &mut (impl AsyncWrite + Unpin),
    stream: &StreamReply,
    headers: &[(String, String)],
    state: &State,
    index: usize,
) -> StreamEnd {
    let defaults =
        [("content-type", "text/event-stream"), ("cache-control", "no-cache"), ("transfer-encoding", "chunked")];
    let mut frames: Vec<(Option<&str>, &str)> = stream
        .frames
        .iter()
        .enumerate()
        .map(|(position, frame)| (stream.names.get(position).and_then(Option::as_deref), frame.as_str()))
        .collect();
    let cut = stream.cut_after.is_some();
    match stream.cut_after {
        Some(count) => frames.truncate(count),
        None if stream.done => frames.push((None, "[DONE]")),
        None => {}
    }
    // Frames sent without a pause between them form one run of bytes, split as a whole.
    let mut runs: Vec<(Duration, Vec<u8>, usize)> = Vec::new();
    for (position, (name, frame)) in frames.iter().enumerate() {
        let pause = if position == 0 { Duration::ZERO } else { stream.delay };
        let bytes = match name {
            Some(name) => format!("event: {name}\ndata: {frame}\n\n").into_bytes(),
            None => format!("data: {frame}\n\n").into_bytes(),
        };
        match runs.last_mut() {
            Some((_, run, count)) if pause.is_zero() => {
                run.extend_from_slice(&bytes);
                *count += 1;
            }
            _ => runs.push((pause, bytes, 1)),
        }
    }
    if writer.write_all(&response_head(200, &defaults, headers, true)).await.is_err() {
        return StreamEnd::ClientClosed;
    }
    for (pause, run, count) in runs {
        sleep(pause).await;
        for piece in run.chunks(stream.split_every.unwrap_or(run.len()).max(1)) {
            let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
            chunk.extend_from_slice(piece);
            chunk.extend_from_slice(b"\r\n");
            if writer.write_all(&chunk).await.is_err() {
                return StreamEnd::ClientClosed;
            }
        }
        state.update_stream(index, |stream| stream.frames_sent += count);
    }
    if cut {
        let _ = writer.shutdown().await;
        return StreamEnd::Cut;
    }
    if writer.write_all(b"0\r\n\r\n").await.is_err() {
        return StreamEnd::ClientClosed;
    }
    StreamEnd::Completed
}

fn json_response(status: u16, body: &Value, headers: &[(String, String)], keep_alive: bool) -> Vec<u8> {
    let body = body.to_string();
    let length = body.len().to_string();
    let defaults = [("content-type", "application/json"), ("content-length", length.as_str())];
    let mut bytes = response_head(status, &defaults, headers, keep_alive);
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// The status line and headers; `extra` headers replace defaults of the same name.
fn response_head(status: u16, defaults: &[(&str, &str)], extra: &[(String, String)], keep_alive: bool) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in defaults {
        if !extra.iter().any(|(extra_name, _)| extra_name == name) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !keep_alive {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

// ---------------------------------------------------------------------------
// Reading requests.

/// Reads one request; `None` when the client closed the connection between requests.
async fn read_request(
    socket: &mut TcpStream,
    peer: SocketAddr,
    buffer: &mut Vec<u8>,
) -> Result<Option<Request>, String> {
    let head_end = loop {
        if let Some(end) = find(buffer, b"\r\n\r\n") {
            break end;
        }
        if buffer.len() > MAX_HEAD {
            return Err("request head too large".to_string());
        }
        if !fill(socket, buffer).await? {
            return if buffer.is_empty() { Ok(None) } else { Err("connection closed mid-head".to_string()) };
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    buffer.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut words = request_line.split_whitespace();
    let (Some(method), Some(target), Some(_version)) = (words.next(), words.next(), words.next()) else {
        return Err(format!("bad request line {request_line:?}"));
    };
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    if header(&headers, "expect").is_some_and(|value| value.eq_ignore_ascii_case("100-continue")) {
        socket.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.map_err(|e| e.to_string())?;
    }
    let chunked =
        header(&headers, "transfer-encoding").is_some_and(|value| value.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        read_chunked(socket, buffer).await?
    } else {
        let length = match header(&headers, "content-length") {
            Some(value) => value.parse::<usize>().map_err(|_| format!("bad content-length {value:?}"))?,
            None => 0,
        };
        take(socket, buffer, length).await?
    };
    // The query string is not needed by any route.
    let path = target.split_once('?').map_or(target, |(path, _)| path).to_string();
    let content_type = header(&headers, "content-type").unwrap_or_default().to_string();
    let parts = if content_type.to_ascii_lowercase().starts_with("multipart/form-data") {
        parse_multipart(&content_type, &body)
    } else {
        Vec::new()
    };
    let json = if parts.is_empty() { serde_json::from_slice(&body).ok() } else { None };
    Ok(Some(Request { index: 0, peer, method: method.to_string(), path, headers, body, json, parts }))
}

/// Reads more bytes into `buffer`; false at end of stream.
async fn fill(socket: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<bool, String> {
    let mut chunk = [0u8; 16 * 1024];
    let read = socket.read(&mut chunk).await.map_err(|e| e.to_string())?;
    buffer.extend_from_slice(&chunk[..read]);
    Ok(read > 0)
}

/// Takes exactly `count` bytes off the front of the buffered input.
async fn take(socket: &mut TcpStream, buffer: &mut Vec<u8>, count: usize) -> Result<Vec<u8>, String> {
    while buffer.len() < count {
        if !fill(socket, buffer).await? {
            return Err("connection closed mid-body".to_string());
        }
    }
    Ok(buffer.drain(..count).collect())
}

/// Takes one CRLF-terminated line (without its CRLF) off the front of the buffered input.
async fn line(socket: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<String, String> {
    loop {
        if let Some(end) = find(buffer, b"\r\n") {
            let line = String::from_utf8_lossy(&buffer[..end]).into_owned();
            buffer.drain(..end + 2);
            return Ok(line);
        }
        if buffer.len() > MAX_HEAD {
            return Err("chunk line too long".to_string());
        }
        if !fill(socket, buffer).await? {
            return Err("connection closed mid-body".to_string());
        }
    }
}

/// Reads a body sent with `transfer-encoding: chunked`.
async fn read_chunked(socket: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let size_line = line(socket, buffer).await?;
        let size_text = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| format!("bad chunk size {size_line:?}"))?;
        if size == 0 {
            // Trailers, if any, end with an empty line.
            while !line(socket, buffer).await?.is_empty() {}
            return Ok(body);
        }
        body.extend_from_slice(&take(socket, buffer, size).await?);
        if take(socket, buffer, 2).await? != b"\r\n" {
            return Err("chunk not followed by CRLF".to_string());
        }
    }
}

/// Splits a `multipart/form-data` body into its parts; whatever does not parse is left out.
fn parse_multipart(content_type: &str, body: &[u8]) -> Vec<Part> {
    let Some(boundary) = content_type.split(';').find_map(|param| param.trim().strip_prefix("boundary=")) else {
        return Vec::new();
    };
    let delimiter = format!("--{}", boundary.trim_matches('"')).into_bytes();
    let mut closing = b"\r\n".to_vec();
    closing.extend_from_slice(&delimiter);
    let mut parts = Vec::new();
    let Some(start) = find(body, &delimiter) else {
        return parts;
    };
    let mut rest = &body[start + delimiter.len()..];
    while let Some(after_break) = rest.strip_prefix(b"\r\n") {
        let Some(end) = find(after_break, &closing) else {
            break;
        };
        let part = &after_break[..end];
        rest = &after_break[end + closing.len()..];
        let Some(head_end) = find(part, b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&part[..head_end]);
        let data = part[head_end + 4..].to_vec();
        let mut name = None;
        let mut filename = None;
        let mut content_type = None;
        for line in head.split("\r\n") {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            match key.trim().to_ascii_lowercase().as_str() {
                "content-disposition" => {
                    for param in value.split(';').skip(1) {
                        if let Some((key, value)) = param.trim().split_once('=') {
                            let value = value.trim().trim_matches('"').to_string();
                            match key.trim() {
                                "name" => name = Some(value),
                                "filename" => filename = Some(value),
                                _ => {}
                            }
                        }
                    }
                }
                "content-type" => content_type = Some(value.trim().to_string()),
                _ => {}
            }
        }
        parts.push(Part { name: name.unwrap_or_default(), filename, content_type, data });
    }
    parts
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|window| window == needle)
}
