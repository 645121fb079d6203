//! `chatkit-loadtest agent-echo --port N [--delay-ms D]`: a minimal agent backend (wire format v1) that answers
//! `respond` with the events the built-in echo responder makes, to measure the cost of the agent hop (and, with a
//! delay, to give the chaos run turns slow enough to be interrupted).
//!
//! It is a small HTTP/1.1 server on a tokio listener, bound to 127.0.0.1 only, that keeps connections
//! alive as the gateway's agent client expects. It does not verify the Standard Webhooks signature:
//! it serves only a benchmark on loopback, and a real agent must verify it.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The largest request head or body read; the gateway's bodies carry at most 20 items.
const MAX_REQUEST: usize = 4 * 1024 * 1024;

/// Numbers the assistant messages, so that each has an id of its own.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Listens on 127.0.0.1:`port` until the process is stopped, waiting `delay` before each answer.
pub async fn serve(port: u16, delay: Duration) -> Result<(), String> {
    let listener =
        TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    eprintln!("chatkit-loadtest: echo agent listening on 127.0.0.1:{port}");
    run(listener, delay).await
}

async fn run(listener: TcpListener, delay: Duration) -> Result<(), String> {
    loop {
        let (stream, _) = listener.accept().await.map_err(|e| format!("cannot accept a connection: {e}"))?;
        tokio::spawn(connection(stream, delay));
    }
}

/// Answers the requests of one keep-alive connection in turn, until the peer closes it or sends
/// something this server does not read.
async fn connection(mut stream: TcpStream, delay: Duration) {
    let _ = stream.set_nodelay(true);
    let mut buffer = Vec::with_capacity(8192);
    loop {
        let Some(head_end) = read_until_head(&mut stream, &mut buffer).await else { return };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse::<usize>().ok());
        let Some(length) = length.filter(|length| *length <= MAX_REQUEST) else {
            // Chunked or oversized bodies are never sent by the gateway; refuse them and close.
            let _ =
                stream.write_all(&response(411, "application/json", &error_json("a Content-Length is required"))).await;
            return;
        };
        let close = head.lines().any(|line| line.starts_with("connection:") && line.contains("close"));
        while buffer.len() < head_end + length {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        }
        let answer = match serde_json::from_slice::<Request<'_>>(&buffer[head_end..head_end + length]) {
            Ok(request) => answer(&request),
            Err(e) => response(400, "application/json", &error_json(&format!("the body is not JSON ({e})"))),
        };
        buffer.drain(..head_end + length);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if stream.write_all(&answer).await.is_err() || close {
            return;
        }
    }
}

/// Reads until `buffer` holds a whole request head, and answers where its body starts.
async fn read_until_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            return Some(at + 4);
        }
        if buffer.len() > MAX_REQUEST {
            return None;
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
    }
}

/// What the echo agent reads of a request. The rest (the history items above all) is skipped
/// without being built into a tree, as an agent that needs only the new input would do.
#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(default, borrow)]
    thread: Option<ThreadRef<'a>>,
    #[serde(default)]
    item: Value,
}

#[derive(Deserialize)]
struct ThreadRef<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
}

/// The whole HTTP response to one agent request.
fn answer(request: &Request<'_>) -> Vec<u8> {
    if request.op != "respond" {
        let message = format!("the echo agent answers only `respond`, not `{}`", request.op);
        return response(400, "application/json", &error_json(&message));
    }
    let thread_id = request.thread.as_ref().map(|thread| thread.id.as_ref()).unwrap_or_default();
    let item = &request.item;
    let text: String = item["content"]
        .as_array()
        .map(|parts| parts.iter().filter_map(|part| part["text"].as_str()).collect())
        .unwrap_or_default();
    let created_at = item["created_at"].as_str().unwrap_or_default();
    let body = echo_events(thread_id, created_at, &format!("echo: {text}"));
    response(200, "text/event-stream", &body)
}

/// The events of one assistant message as the echo responder streams it (added, part added, three
/// text deltas, part done, item done), framed as `data:` lines. They are written as text from
/// templates, as a lean agent would, so that the benchmark measures the hop rather than this agent.
fn echo_events(thread_id: &str, created_at: &str, text: &str) -> String {
    let id = format!("msg_agentecho{:012}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    // Every value interpolated below is written as a JSON string, escaped.
    let quoted = |value: &str| Value::from(value).to_string();
    // The user item's own timestamp is a valid one in the gateway's format, which saves a clock here.
    let item = |content: &str| {
        format!(
            r#"{{"type":"assistant_message","id":"{id}","thread_id":{},"created_at":{},"content":{content}}}"#,
            quoted(thread_id),
            quoted(created_at)
        )
    };
    let part = |text: &str| format!(r#"{{"type":"output_text","text":{},"annotations":[]}}"#, quoted(text));
    let update = |update: String| format!(r#"{{"type":"thread.item.updated","item_id":"{id}","update":{update}}}"#);
    // The same pieces as the echo responder's: at least three, about 16 characters each.
    let chars: Vec<char> = text.chars().collect();
    let count = (chars.len() / 16).clamp(3, 64).min(chars.len().max(1));
    let size = chars.len().div_ceil(count).max(1);
    let mut deltas: Vec<String> = chars.chunks(size).map(|piece| piece.iter().collect()).collect();
    deltas.resize(deltas.len().max(3), String::new());
    let mut events = vec![
        format!(r#"{{"type":"thread.item.added","item":{}}}"#, item("[]")),
        update(format!(
            r#"{{"type":"assistant_message.content_part.added","content_index":0,"content":{}}}"#,
            part("")
        )),
    ];
    for delta in deltas {
        events.push(update(format!(
            r#"{{"type":"assistant_message.content_part.text_delta","content_index":0,"delta":{}}}"#,
            quoted(&delta)
        )));
    }
    events.push(update(format!(
        r#"{{"type":"assistant_message.content_part.done","content_index":0,"content":{}}}"#,
        part(text)
    )));
    events.push(format!(r#"{{"type":"thread.item.done","item":{}}}"#, item(&format!("[{}]", part(text)))));
    events.iter().map(|event| format!("data: {event}\n\n")).collect()
}

fn error_json(message: &str) -> String {
    json!({"error": {"message": message}}).to_string()
}

/// A keep-alive HTTP/1.1 response with a known length, which lets the gateway reuse the connection.
fn response(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        _ => "Length Required",
    };
    let mut out =
        format!("HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n", body.len())
            .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends one request on `stream` and reads its whole response: the head, lowercased, and the body.
    async fn exchange(stream: &mut TcpStream, body: &str) -> (String, String) {
        let request = format!("POST /agent HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}", body.len());
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buffer = Vec::new();
        let head_end = read_until_head(stream, &mut buffer).await.expect("a response head");
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse().ok())
            .expect("a content-length");
        while buffer.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).await.unwrap();
            assert!(read > 0, "the connection closed inside the body");
            buffer.extend_from_slice(&chunk[..read]);
        }
        (head, String::from_utf8(buffer[head_end..head_end + length].to_vec()).unwrap())
    }

    #[tokio::test]
    async fn answers_respond_with_echo_events_on_one_connection() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(run(listener, Duration::ZERO));
        let mut stream = TcpStream::connect(address).await.unwrap();
        let request = json!({"version": 1, "op": "respond", "thread": {"id": "thr_1"}, "item": {
            "type": "user_message", "id": "msg_u", "thread_id": "thr_1", "created_at": "2026-12-06T15:00:00",
            "content": [{"type": "input_text", "text": "hello there"}]}});
        let test = async {
            let mut ids = Vec::new();
            // Two turns on the same connection show that it stays alive between them.
            for _ in 0..2 {
                let (head, body) = exchange(&mut stream, &request.to_string()).await;
                assert!(head.starts_with("http/1.1 200"), "{head}");
                assert!(head.contains("content-type: text/event-stream"), "{head}");
                let events: Vec<Value> = body
                    .split("\n\n")
                    .filter(|frame| !frame.is_empty())
                    .map(|frame| serde_json::from_str(frame.strip_prefix("data: ").expect("a data line")).unwrap())
                    .collect();
                let kinds: Vec<&str> =
                    events.iter().map(|e| e["update"]["type"].as_str().or(e["type"].as_str()).unwrap()).collect();
                let delta = "assistant_message.content_part.text_delta";
                assert_eq!(
                    kinds,
                    [
                        "thread.item.added",
                        "assistant_message.content_part.added",
                        delta,
                        delta,
                        delta,
                        "assistant_message.content_part.done",
                        "thread.item.done"
                    ]
                );
                let done = &events[6]["item"];
                assert_eq!(done["type"], "assistant_message");
                assert_eq!(done["thread_id"], "thr_1");
                assert_eq!(
                    done["content"][0],
                    json!({"type": "output_text", "text": "echo: hello there", "annotations": []})
                );
                assert_eq!(events[0]["item"]["id"], done["id"]);
                ids.push(done["id"].clone());
            }
            assert_ne!(ids[0], ids[1], "each answer has a message id of its own");
            let (head, body) = exchange(&mut stream, r#"{"version": 1, "op": "feedback"}"#).await;
            assert!(head.starts_with("http/1.1 400"), "{head}");
            assert!(body.contains("only `respond`"), "{body}");
        };
        tokio::time::timeout(Duration::from_secs(10), test).await.expect("the agent answered in time");
    }

    #[tokio::test]
    async fn waits_the_delay_before_each_answer() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let address = listener.local_addr().unwrap();
        let delay = Duration::from_millis(300);
        tokio::spawn(run(listener, delay));
        let mut stream = TcpStream::connect(address).await.unwrap();
        let request = json!({"version": 1, "op": "respond", "thread": {"id": "thr_1"}, "item": {
            "type": "user_message", "id": "msg_u", "thread_id": "thr_1", "created_at": "2026-12-06T15:00:00",
            "content": [{"type": "input_text", "text": "slowly"}]}});
        let started = std::time::Instant::now();
        let (head, body) = tokio::time::timeout(Duration::from_secs(10), exchange(&mut stream, &request.to_string()))
            .await
            .expect("the agent answered in time");
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(body.contains("echo: slowly"), "{body}");
        assert!(started.elapsed() >= delay, "answered after {:?}, before the {delay:?} delay", started.elapsed());
    }
}
