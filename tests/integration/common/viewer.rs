//! A viewer-stream client for tests: opens `GET /chatkit/threads/{id}/events`
//! or `GET /chatkit/events` and reads its frames one at a time.

use std::time::Duration;

use serde_json::Value;

/// How long a test waits for one frame before failing.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// One frame of a viewer stream (heartbeat comments are counted, not returned).
#[derive(Clone, Debug)]
pub struct Frame {
    pub id: Option<u64>,
    /// The SSE event name: `None` for ChatKit events, `resync` or `thread.deleted` for control.
    pub event: Option<String>,
    pub data: Value,
}

impl Frame {
    /// The ChatKit event type, for plain data frames.
    pub fn kind(&self) -> &str {
        match &self.event {
            Some(name) => name,
            None => self.data["type"].as_str().unwrap_or("?"),
        }
    }
}

pub struct Viewer {
    response: reqwest::Response,
    buffer: String,
    pub heartbeats: usize,
    /// The last `retry:` hint the server sent, in milliseconds.
    pub retry: Option<u64>,
    pub ended: bool,
}

/// Opens a viewer stream at `url` as `user`, optionally resuming after `last_id`;
/// panics unless it answers 200 with an event stream.
pub async fn open(url: &str, user: &str, last_id: Option<u64>) -> Viewer {
    let (status, viewer) = try_open(url, user, last_id).await;
    assert_eq!(status, 200, "viewer stream {url} refused");
    viewer.expect("a stream")
}

/// Opens a viewer stream; the status, and the stream when it is 200.
pub async fn try_open(url: &str, user: &str, last_id: Option<u64>) -> (u16, Option<Viewer>) {
    try_open_with(url, &[("x-user-id", user.to_string())], last_id).await
}

/// Opens a viewer stream with a client secret (session authentication).
pub async fn try_open_with_secret(url: &str, secret: &str) -> (u16, Option<Viewer>) {
    try_open_with(url, &[("authorization", format!("Bearer {secret}"))], None).await
}

/// Opens a viewer stream with the given headers.
pub async fn try_open_with(url: &str, headers: &[(&str, String)], last_id: Option<u64>) -> (u16, Option<Viewer>) {
    // No overall timeout: the stream lives as long as the test reads it. Each
    // read is bounded instead.
    let client = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build().expect("client");
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    if let Some(id) = last_id {
        request = request.header("last-event-id", id.to_string());
    }
    let response = tokio::time::timeout(FRAME_TIMEOUT, request.send())
        .await
        .unwrap_or_else(|_| panic!("viewer stream {url} did not answer"))
        .expect("viewer request sent");
    let status = response.status().as_u16();
    if status != 200 {
        return (status, None);
    }
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert_eq!(content_type, "text/event-stream", "viewer stream content type");
    (status, Some(Viewer { response, buffer: String::new(), heartbeats: 0, retry: None, ended: false }))
}

impl Viewer {
    /// The next frame; panics after `FRAME_TIMEOUT` or at the end of the stream.
    pub async fn next(&mut self) -> Frame {
        match self.next_within(FRAME_TIMEOUT).await {
            Some(frame) => frame,
            None if self.ended => panic!("viewer stream ended while a frame was expected"),
            None => panic!("no viewer frame within {FRAME_TIMEOUT:?}"),
        }
    }

    /// The next frame, or `None` if none comes within `wait` or the stream ends.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let raw: String = self.buffer.drain(..end + 2).collect();
                if let Some(frame) = self.parse(&raw) {
                    return Some(frame);
                }
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => return None,
                Ok(Ok(Some(chunk))) => self.buffer.push_str(std::str::from_utf8(&chunk).expect("UTF-8 stream")),
                Ok(Ok(None)) | Ok(Err(_)) => self.ended = true,
            }
        }
    }

    /// Reads frames until one satisfies `done`; returns every frame read, that one last.
    pub async fn until(&mut self, mut done: impl FnMut(&Frame) -> bool) -> Vec<Frame> {
        let mut frames = Vec::new();
        loop {
            let frame = self.next().await;
            let stop = done(&frame);
            frames.push(frame);
            if stop {
                return frames;
            }
        }
    }

    /// Reads until the stream ends (bounded); returns the frames read.
    pub async fn rest(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next_within(FRAME_TIMEOUT).await {
            frames.push(frame);
        }
        assert!(self.ended, "the stream was expected to end");
        frames
    }

    fn parse(&mut self, raw: &str) -> Option<Frame> {
        let (mut id, mut event, mut data) = (None, None, None::<String>);
        let mut comment = false;
        for line in raw.lines() {
            if let Some(value) = line.strip_prefix("retry: ") {
                self.retry = Some(value.parse().unwrap_or_else(|_| panic!("bad retry line: {line}")));
                comment = true;
            } else if line.starts_with(':') {
                comment = true;
            } else if let Some(value) = line.strip_prefix("id: ") {
                id = Some(value.parse().unwrap_or_else(|_| panic!("bad id line: {line}")));
            } else if let Some(value) = line.strip_prefix("event: ") {
                event = Some(value.to_string());
            } else if let Some(value) = line.strip_prefix("data: ") {
                assert!(data.is_none(), "one data line per frame: {raw:?}");
                data = Some(value.to_string());
            } else if !line.is_empty() {
                panic!("unexpected line in a viewer stream: {line:?}");
            }
        }
        let Some(data) = data else {
            assert!(comment, "a frame without data must be a comment: {raw:?}");
            self.heartbeats += 1;
            return None;
        };
        let data = serde_json::from_str(&data).unwrap_or_else(|e| panic!("frame data is not JSON ({e}): {data}"));
        Some(Frame { id, event, data })
    }
}

/// The text of the assistant message as a viewer rebuilt it from frames:
/// `thread.item.added` content plus `output_text.delta`s, or the `done` item.
pub fn rebuilt_text(frames: &[Frame], item_id: &str) -> String {
    let mut text = String::new();
    for frame in frames {
        let data = &frame.data;
        match frame.kind() {
            "thread.item.added" | "thread.item.done" if data["item"]["id"] == item_id => {
                text = data["item"]["content"]
                    .as_array()
                    .map(|parts| parts.iter().filter_map(|p| p["text"].as_str()).collect())
                    .unwrap_or_default();
            }
            "thread.item.updated"
                if data["item_id"] == item_id
                    && data["update"]["type"] == "assistant_message.content_part.text_delta" =>
            {
                text.push_str(data["update"]["delta"].as_str().unwrap_or_default());
            }
            _ => {}
        }
    }
    text
}
