//! Self-test of the fake OpenAI server in `crate::common::fake_openai`: every scripted behaviour seen through plain reqwest.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::common::fake_openai::{self, FakeOpenAi, Reply, StreamEnd, DEFAULT_TRANSCRIPTION, MODEL};
use futures_util::StreamExt;
use serde_json::{json, Value};

/// Bounds every wait on the server, so a broken fake fails instead of stalling.
const WAIT: Duration = Duration::from_secs(5);

/// reqwest is built with `rustls-no-provider`: building any client, even for plain HTTP, needs a
/// process-wide crypto provider, which rustls finds by itself only while ring is its one provider.
fn install_crypto_provider() {
    // This fails only when a provider is installed already, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}

fn client() -> reqwest::Client {
    builder().timeout(Duration::from_secs(10)).build().expect("client")
}

fn chat_body(text: &str) -> Value {
    json!({"model": MODEL, "stream": true, "messages": [{"role": "user", "content": text}]})
}

async fn post_chat(fake: &FakeOpenAi, client: &reqwest::Client, body: &Value) -> reqwest::Response {
    client
        .post(format!("{}/chat/completions", fake.base_url()))
        .bearer_auth("sk-test")
        .header("x-test", "selftest")
        .json(body)
        .send()
        .await
        .expect("request sent")
}

/// The `data:` payloads of an event-stream body, checking that it is made of lone data lines.
fn payloads(body: &str) -> Vec<String> {
    assert!(body.is_empty() || body.ends_with("\n\n"), "body does not end with a complete frame: {body:?}");
    body.split("\n\n")
        .filter(|frame| !frame.is_empty())
        .map(|frame| frame.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data frame: {frame:?}")).to_string())
        .collect()
}

/// The chunks of an event-stream body, and whether it ended with `[DONE]`.
fn decode(body: &str) -> (Vec<Value>, bool) {
    let mut payloads = payloads(body);
    let done = payloads.last().is_some_and(|last| last == "[DONE]");
    if done {
        payloads.pop();
    }
    let chunks = payloads
        .iter()
        .map(|payload| serde_json::from_str(payload).unwrap_or_else(|e| panic!("bad chunk {payload:?}: {e}")))
        .collect();
    (chunks, done)
}

/// Reads a response body piece by piece, as the client's SSE parser would see it; the pieces and the error, if any.
async fn pieces(response: reqwest::Response) -> (Vec<bytes::Bytes>, Option<reqwest::Error>) {
    let mut stream = response.bytes_stream();
    let mut pieces = Vec::new();
    while let Some(piece) = stream.next().await {
        match piece {
            Ok(piece) => pieces.push(piece),
            Err(error) => return (pieces, Some(error)),
        }
    }
    (pieces, None)
}

fn joined(pieces: &[bytes::Bytes]) -> String {
    String::from_utf8(pieces.concat()).expect("body is UTF-8")
}

#[tokio::test]
async fn text_stream_is_sse_ending_with_done_and_the_request_is_recorded() {
    let fake = FakeOpenAi::start();
    assert!(fake.base_url().starts_with("http://127.0.0.1:") && fake.base_url().ends_with("/v1"));
    let chunks = fake_openai::with_usage(fake_openai::text_chunks(MODEL, &["Hel", "lo"]), 7, 2);
    fake.push(Reply::stream(chunks.clone()));
    let body = chat_body("hi");
    let response = post_chat(&fake, &client(), &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let (got, done) = decode(&response.text().await.expect("body"));
    assert!(done, "the stream must end with [DONE]");
    assert_eq!(got, chunks);
    assert_eq!(got[0]["object"], "chat.completion.chunk");
    assert_eq!(got[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(got[1]["choices"][0]["delta"]["content"], "Hel");
    assert_eq!(got[3]["choices"][0]["finish_reason"], "stop");
    assert_eq!(got[4]["choices"], json!([]));
    assert_eq!(got[4]["usage"]["total_tokens"], 9);

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!((request.index, request.method.as_str(), request.path.as_str()), (0, "POST", "/v1/chat/completions"));
    assert_eq!(request.header("Authorization"), Some("Bearer sk-test"));
    assert_eq!(request.header("x-test"), Some("selftest"));
    assert!(request.headers.iter().all(|(name, _)| *name == name.to_ascii_lowercase()), "names are lowercased");
    assert_eq!(request.json.as_ref(), Some(&body));
    assert_eq!(serde_json::from_slice::<Value>(&request.body).expect("raw body"), body);
    assert_eq!(fake.chat_requests().len(), 1);
    assert_eq!(fake.remaining(), 0);

    let (end, _) = fake.wait_stream_ended(0, WAIT).await.expect("stream ended");
    assert_eq!(end, StreamEnd::Completed);
    assert_eq!(fake.stream(0).expect("record").frames_sent, chunks.len() + 1);
    assert_eq!(fake.stream_closed_at(0), None, "a completed stream was not closed early");
    assert_eq!(fake.open_streams(), 0);
}

#[tokio::test]
async fn split_frames_decode_to_the_same_chunks() {
    let fake = FakeOpenAi::start();
    let mut chunks = fake_openai::text_chunks(MODEL, &["Hel", "lo ", "wörld ✓"]);
    let citation = fake_openai::url_citation("https://example.com/a", "Example", 0, 5);
    chunks[2] = fake_openai::annotate(chunks[2].clone(), vec![citation]);
    chunks.extend(fake_openai::tool_call_chunks(MODEL, "call_1", "get_weather", &["{\"ci", "ty\":", "\"Paris\"}"]));
    fake.push(Reply::stream(chunks.clone()).split_every(7));
    let (pieces, error) = pieces(post_chat(&fake, &client(), &chat_body("split")).await).await;
    assert!(error.is_none(), "body failed: {error:?}");
    assert!(pieces.iter().all(|piece| piece.len() <= 7), "a piece is longer than 7 bytes");
    assert!(pieces.len() > 3 * chunks.len(), "only {} pieces", pieces.len());
    let partial = pieces.iter().filter(|piece| !piece.ends_with(b"\n\n")).count();
    assert!(partial > chunks.len(), "pieces must end mid-frame: {partial} do");
    let (got, done) = decode(&joined(&pieces));
    assert!(done);
    assert_eq!(got, chunks);
    assert_eq!(got[2]["choices"][0]["delta"]["annotations"][0]["url_citation"]["url"], "https://example.com/a");
    let tool = &got[5]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!((tool["id"].as_str(), tool["function"]["name"].as_str()), (Some("call_1"), Some("get_weather")));
    let arguments: String = got[6..9]
        .iter()
        .map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str().unwrap())
        .collect();
    assert_eq!(arguments, r#"{"city":"Paris"}"#);
    assert_eq!(got.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn large_chunks_arrive_whole_split_or_not() {
    let fake = FakeOpenAi::start();
    let chunks = fake_openai::large_text_chunks(MODEL, 1 << 20);
    assert_eq!(chunks[1]["choices"][0]["delta"]["content"].as_str().map(str::len), Some(1 << 20));
    fake.push(Reply::stream(chunks.clone()));
    fake.push(Reply::stream(chunks.clone()).split_every(4093));
    let client = client();
    for round in 0..2 {
        let response = post_chat(&fake, &client, &chat_body("large")).await;
        let (got, done) = decode(&response.text().await.expect("body"));
        assert!(done, "round {round}");
        assert!(got == chunks, "round {round}: chunks differ");
    }
}

#[tokio::test]
async fn done_can_be_omitted_and_chunks_can_be_delayed() {
    let fake = FakeOpenAi::start();
    fake.push(Reply::text(MODEL, &["a", "b"]).without_done());
    fake.push(Reply::text(MODEL, &["a", "b"]).delay(Duration::from_millis(100)));
    let client = client();

    let response = post_chat(&fake, &client, &chat_body("no done")).await;
    let (got, done) = decode(&response.text().await.expect("a clean end of body"));
    assert!(!done, "[DONE] was sent");
    assert_eq!(got, fake_openai::text_chunks(MODEL, &["a", "b"]));

    // Five frames with 100 ms before each but the first: their arrivals span at least 400 ms.
    let response = post_chat(&fake, &client, &chat_body("slow")).await;
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    let mut first = None;
    while let Some(piece) = stream.next().await {
        first.get_or_insert_with(Instant::now);
        text.push_str(std::str::from_utf8(&piece.expect("piece")).expect("UTF-8"));
    }
    let spread = first.expect("some frame").elapsed();
    assert!(spread >= Duration::from_millis(350), "frames arrived within {spread:?}");
    let (got, done) = decode(&text);
    assert!(done);
    assert_eq!(got.len(), 4);
}

#[tokio::test]
async fn a_cut_connection_ends_the_body_early() {
    let fake = FakeOpenAi::start();
    fake.push(Reply::text(MODEL, &["one", "two", "three"]).cut_after(2));
    let (pieces, error) = pieces(post_chat(&fake, &client(), &chat_body("cut")).await).await;
    let error = error.expect("the body must fail, not end cleanly");
    assert!(error.is_body() || error.is_decode(), "unexpected error kind: {error:?}");
    let (got, done) = decode(&joined(&pieces));
    assert!(!done);
    assert_eq!(got, fake_openai::text_chunks(MODEL, &["one", "two", "three"])[..2]);
    let (end, _) = fake.wait_stream_ended(0, WAIT).await.expect("stream ended");
    assert_eq!(end, StreamEnd::Cut);
    assert_eq!(fake.stream(0).unwrap().frames_sent, 2);
    assert_eq!(fake.stream_closed_at(0), None, "a cut is not a client close");
}

#[tokio::test]
async fn error_statuses_carry_openai_bodies_and_headers() {
    let fake = FakeOpenAi::start();
    let explicit = fake_openai::error_body("bad temperature", "invalid_request_error", Some("invalid_value"));
    fake.push(Reply::json(400, explicit.clone()));
    fake.push(Reply::error(401, "Incorrect API key provided"));
    fake.push(Reply::error(429, "Rate limit reached").header("retry-after", "2"));
    fake.push(Reply::error(500, "The server had an error"));
    fake.push(Reply::error(503, "The engine is currently overloaded").header("x-request-id", "req_1"));
    let client = client();
    let expected = [
        (400, "invalid_request_error", json!("invalid_value")),
        (401, "invalid_request_error", json!("invalid_api_key")),
        (429, "requests", json!("rate_limit_exceeded")),
        (500, "server_error", Value::Null),
        (503, "server_error", Value::Null),
    ];
    for (status, kind, code) in expected {
        let response = post_chat(&fake, &client, &chat_body("error")).await;
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(response.headers()["content-type"], "application/json");
        let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
        assert_eq!(retry_after.as_deref(), (status == 429).then_some("2"), "{status}");
        if status == 503 {
            assert_eq!(response.headers()["x-request-id"], "req_1");
        }
        let body: Value = response.json().await.expect("JSON body");
        let error = &body["error"];
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{status}: {body}");
        assert_eq!((error["type"].as_str(), &error["code"], &error["param"]), (Some(kind), &code, &Value::Null));
        if status == 400 {
            assert_eq!(body, explicit);
        }
    }
    assert_eq!(fake.remaining(), 0);
}

#[tokio::test]
async fn routers_answer_before_the_queue_and_unscripted_requests_are_readable_errors() {
    let fake = FakeOpenAi::start();
    fake.route(|body| {
        let text = body["messages"][0]["content"].as_str()?;
        text.starts_with("Title:").then(|| Reply::completion(MODEL, "A fine title"))
    });
    fake.push(Reply::text(MODEL, &["first"]));
    fake.push(Reply::text(MODEL, &["second"]));
    let client = client();

    let text_of = |body: &str| -> String {
        let (chunks, _) = decode(body);
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect()
    };
    let first = post_chat(&fake, &client, &chat_body("hello")).await.text().await.expect("body");
    assert_eq!(text_of(&first), "first");
    let title = post_chat(&fake, &client, &chat_body("Title: hello")).await;
    assert_eq!(title.status(), 200);
    let title: Value = title.json().await.expect("completion JSON");
    assert_eq!(title["object"], "chat.completion");
    assert_eq!(
        title["choices"][0]["message"],
        json!({"role": "assistant", "content": "A fine title", "refusal": null})
    );
    assert_eq!(title["choices"][0]["finish_reason"], "stop");
    let second = post_chat(&fake, &client, &chat_body("again")).await.text().await.expect("body");
    assert_eq!(text_of(&second), "second");

    let unscripted = post_chat(&fake, &client, &chat_body("one too many")).await;
    assert_eq!(unscripted.status(), 500);
    let body: Value = unscripted.json().await.expect("JSON");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("no reply scripted") && message.contains("#3"), "{message}");
    assert_eq!(fake.unscripted(), 1);

    let missing = client.get(format!("{}/models", fake.base_url())).send().await.expect("sent");
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.expect("JSON");
    assert!(body["error"]["message"].as_str().expect("message").contains("GET /v1/models"), "{body}");

    assert_eq!(fake.requests().len(), 5);
    assert_eq!(fake.chat_requests().len(), 4);
    // The client kept one connection alive across every answer.
    let requests = fake.requests();
    assert!(requests.iter().all(|r| r.peer == requests[0].peer), "connections were not reused");
}

#[tokio::test]
async fn a_delayed_json_reply_waits() {
    let fake = FakeOpenAi::start();
    fake.push(Reply::completion(MODEL, "late").after(Duration::from_millis(200)));
    let started = Instant::now();
    let response = post_chat(&fake, &client(), &chat_body("wait")).await;
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(200), "answered after {:?}", started.elapsed());
}

#[tokio::test]
async fn a_hang_is_seen_as_a_client_timeout_and_its_close_is_recorded() {
    let fake = FakeOpenAi::start();
    fake.push(Reply::hang());
    let client = builder().timeout(Duration::from_millis(300)).build().expect("client");
    let started = Instant::now();
    let error = client
        .post(format!("{}/chat/completions", fake.base_url()))
        .json(&chat_body("hang"))
        .send()
        .await
        .expect_err("a hang must not answer");
    assert!(error.is_timeout(), "not a timeout: {error:?}");
    let closed = fake.wait_stream_closed(0, WAIT).await.expect("the client closed the hanging request");
    assert!(closed.duration_since(started) < Duration::from_secs(2));
    assert!(fake.stream(0).expect("record").hang);
    assert_eq!(fake.open_streams(), 0);
}

#[tokio::test]
async fn the_server_stops_promptly_with_a_hanging_connection_open() {
    let fake = FakeOpenAi::start();
    fake.push(Reply::hang());
    let mut socket = std::net::TcpStream::connect(fake.addr()).expect("connect");
    socket.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    let body = chat_body("hang").to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).expect("request written");
    assert!(fake.wait_for_requests(1, WAIT).await, "the request did not arrive");
    assert_eq!(fake.open_streams(), 1);
    let started = Instant::now();
    drop(fake);
    assert!(started.elapsed() < Duration::from_secs(2), "stopping took {:?}", started.elapsed());
    // The stopped server closed the connection: no timeout, and no response bytes.
    let mut reply = Vec::new();
    match socket.read_to_end(&mut reply) {
        Ok(_) => assert!(reply.is_empty(), "unexpected response: {:?}", String::from_utf8_lossy(&reply)),
        Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}"),
    }
}

#[tokio::test]
async fn a_reset_is_seen_as_a_connection_error() {
    let fake = FakeOpenAi::start();
    fake.push(Reply::reset());
    let result = client().post(format!("{}/chat/completions", fake.base_url())).json(&chat_body("reset")).send().await;
    let error = result.expect_err("a reset must not answer");
    assert!(!error.is_timeout() && !error.is_status(), "unexpected error kind: {error:?}");
    assert!(error.is_request(), "not a request error: {error:?}");
    assert_eq!(fake.requests().len(), 1, "the client must not have retried");
}

#[tokio::test]
async fn a_client_dropping_the_stream_is_detected_within_100_ms() {
    let fake = FakeOpenAi::start();
    let parts = vec!["word "; 100];
    fake.push(Reply::text(MODEL, &parts).delay(Duration::from_millis(50)));
    let response = post_chat(&fake, &client(), &chat_body("drop me")).await;
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    while payloads_so_far(&text) < 2 {
        let piece = tokio::time::timeout(WAIT, stream.next()).await.expect("a frame in time").expect("more body");
        text.push_str(std::str::from_utf8(&piece.expect("piece")).expect("UTF-8"));
    }
    assert_eq!(fake.open_streams(), 1);
    let dropped = Instant::now();
    drop(stream);
    let closed = fake.wait_stream_closed(0, WAIT).await.expect("the close was detected");
    let lag = closed.saturating_duration_since(dropped);
    assert!(lag < Duration::from_millis(100), "detected {lag:?} after the drop");
    let record = fake.stream(0).expect("record");
    assert!(record.frames_sent < parts.len(), "the stream was not cut short");
    assert_eq!(fake.open_streams(), 0);
}

fn payloads_so_far(text: &str) -> usize {
    text.matches("\n\n").count()
}

#[tokio::test]
async fn transcriptions_are_answered_and_their_multipart_fields_recorded() {
    let fake = FakeOpenAi::start();
    let audio: Vec<u8> = (0..=255u8).cycle().take(3000).chain(*b"\r\n--not-the-boundary\r\n").collect();
    let boundary = "fake-boundary-1234";
    let mut body = Vec::new();
    body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    body.extend_from_slice(b"Content-Disposition: form-data; name=\"file\"; filename=\"clip.wav\"\r\n");
    body.extend_from_slice(b"Content-Type: audio/wav\r\n\r\n");
    body.extend_from_slice(&audio);
    body.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
    body.extend_from_slice(b"Content-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1");
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let url = format!("{}/audio/transcriptions", fake.base_url());
    let client = client();

    let response =
        client.post(&url).header("content-type", &content_type).body(body.clone()).send().await.expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.expect("JSON"), fake_openai::transcription(DEFAULT_TRANSCRIPTION));

    // The same body again, sent with chunked transfer encoding, to a changed default.
    fake.set_transcription_text("hello world");
    let pieces: Vec<Result<bytes::Bytes, std::io::Error>> =
        body.chunks(1000).map(|piece| Ok(bytes::Bytes::copy_from_slice(piece))).collect();
    let streamed = reqwest::Body::wrap_stream(futures_util::stream::iter(pieces));
    let response = client.post(&url).header("content-type", &content_type).body(streamed).send().await.expect("sent");
    assert_eq!(response.json::<Value>().await.expect("JSON"), fake_openai::transcription("hello world"));

    fake.push_transcription(Reply::error(400, "Audio file might be corrupted"));
    let response =
        client.post(&url).header("content-type", &content_type).body(body.clone()).send().await.expect("sent");
    assert_eq!(response.status(), 400);

    let requests = fake.transcription_requests();
    assert_eq!(requests.len(), 3);
    assert!(fake.chat_requests().is_empty());
    assert_eq!(requests[1].header("transfer-encoding"), Some("chunked"));
    for request in &requests {
        assert_eq!(request.body, body);
        assert!(request.json.is_none());
        let names: Vec<&str> = request.parts.iter().map(|part| part.name.as_str()).collect();
        assert_eq!(names, ["file", "model"]);
        let file = request.part("file").expect("file part");
        assert_eq!(file.filename.as_deref(), Some("clip.wav"));
        assert_eq!(file.content_type.as_deref(), Some("audio/wav"));
        assert!(file.data == audio, "file bytes differ");
        assert_eq!(request.field("model").as_deref(), Some("whisper-1"));
        assert_eq!(request.field("file"), None, "a file is not a text field");
    }
}

#[tokio::test]
async fn async_openai_reads_split_streams_errors_and_transcriptions() {
    use async_openai::types::audio::{AudioInput, CreateTranscriptionRequestArgs};

    let fake = FakeOpenAi::start();
    let chunks = fake_openai::with_usage(fake_openai::text_chunks(MODEL, &["Hel", "lo ", "wörld"]), 3, 3);
    fake.push(Reply::stream(chunks.clone()).split_every(5));
    fake.push(Reply::error(401, "Incorrect API key provided"));
    fake.set_transcription_text("bonjour");
    // The client builds its own reqwest client, which needs the crypto provider too.
    install_crypto_provider();
    let config = async_openai::config::OpenAIConfig::new().with_api_base(fake.base_url()).with_api_key("sk-test");
    let client = async_openai::Client::with_config(config);

    let mut stream = client.chat().create_stream_byot::<_, Value>(chat_body("hi")).await.expect("stream opens");
    let mut got = Vec::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, stream.next()).await.expect("a chunk in time") {
        got.push(chunk.expect("chunk parses"));
    }
    assert_eq!(got, chunks);

    let error = client.chat().create_byot::<_, Value>(json!({"model": MODEL, "messages": []})).await.expect_err("401");
    match error {
        async_openai::error::OpenAIError::ApiError(api) => {
            assert_eq!(api.status_code.as_u16(), 401);
            assert_eq!(api.api_error.code.as_deref(), Some("invalid_api_key"));
        }
        other => panic!("not an API error: {other:?}"),
    }

    let audio = vec![7u8; 2048];
    let request = CreateTranscriptionRequestArgs::default()
        .file(AudioInput::from_bytes("dictation.webm".to_string(), audio.clone().into()))
        .model("whisper-1")
        .build()
        .expect("request");
    let response = client.audio().transcription().create(request).await.expect("transcribed");
    assert_eq!(response.text, "bonjour");
    let recorded = fake.transcription_requests();
    assert_eq!(recorded.len(), 1);
    let file = recorded[0].part("file").expect("file part");
    assert_eq!(file.filename.as_deref(), Some("dictation.webm"));
    assert!(file.data == audio, "file bytes differ");
    assert_eq!(recorded[0].field("model").as_deref(), Some("whisper-1"));
    assert_eq!(recorded[0].header("authorization"), Some("Bearer sk-test"));

    // Dropping the client's stream mid-answer closes the upstream connection promptly.
    fake.push(Reply::text(MODEL, &vec!["word "; 100]).delay(Duration::from_millis(50)));
    let mut stream = client.chat().create_stream_byot::<_, Value>(chat_body("drop")).await.expect("stream opens");
    for _ in 0..2 {
        tokio::time::timeout(WAIT, stream.next()).await.expect("a chunk in time").expect("more").expect("chunk");
    }
    let index = fake.chat_requests().last().expect("recorded").index;
    let dropped = Instant::now();
    drop(stream);
    let closed = fake.wait_stream_closed(index, WAIT).await.expect("the close was detected");
    let lag = closed.saturating_duration_since(dropped);
    assert!(lag < Duration::from_millis(100), "detected {lag:?} after the drop");
}

#[tokio::test]
async fn responses_streams_name_each_event_and_send_no_done() {
    let fake = FakeOpenAi::start();
    let fixture = fake_openai::responses_fixture("gw_refusal");
    fake.push_response(fixture.reply());
    let body = json!({"model": MODEL, "stream": true, "input": fixture.user_text});
    let response = client().post(format!("{}/responses", fake.base_url())).json(&body).send().await.expect("sent");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.expect("body");
    let frames: Vec<&str> = text.split("\n\n").filter(|frame| !frame.is_empty()).collect();
    assert_eq!(frames.len(), fixture.events.len(), "one frame per event, no [DONE]: {text}");
    for (frame, event) in frames.iter().zip(&fixture.events) {
        let (name, data) = frame.split_once('\n').expect("two lines");
        assert_eq!(name.strip_prefix("event: "), event["type"].as_str());
        assert_eq!(serde_json::from_str::<Value>(data.strip_prefix("data: ").expect("data line")).unwrap(), *event);
    }
    let recorded = fake.responses_requests();
    assert_eq!((recorded.len(), recorded[0].json.as_ref()), (1, Some(&body)));
    // Nothing scripted: a readable 500, counted.
    let response = client().post(format!("{}/responses", fake.base_url())).json(&body).send().await.expect("sent");
    assert_eq!(response.status(), 500);
    assert_eq!(fake.unscripted(), 1);
}
