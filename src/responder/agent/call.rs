//! One signed request to the agent: retries before the first event, the event-stream reader, and
//! how each failure is told to the user.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::Rng;
use serde_json::Value;
use tracing::Instrument;

use super::breaker::{Admit, Breaker};
use super::settings::AgentSettings;
use crate::responder::ResponderError;
use crate::telemetry::metrics::METRICS;

/// The longest error body read from the agent, so a broken agent cannot make the gateway buffer without end.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Why a call to the agent failed, in terms of what the user is told.
#[derive(Debug)]
pub(super) enum Failure {
    /// Could not connect, or the connection broke before an answer.
    Connect(String),
    /// No answer (or first event) within the timeout.
    Timeout,
    /// An error status; `message` when the body is a ChatKit-style `{"error": {"message"}}`.
    Status { status: u16, message: Option<String> },
    /// The stream broke off after it began.
    Broken(String),
    /// The stream went silent for longer than the timeout after it began.
    Idle,
    /// The agent answered something that breaks the protocol.
    Invalid(String),
    /// The circuit breaker is open: the agent failed too often in a row, and was not called.
    BreakerOpen,
}

impl Failure {
    fn from_http(error: upstream_http::Error) -> Failure {
        if error.is_timeout() {
            Failure::Timeout
        } else {
            Failure::Connect(error.to_string())
        }
    }

    /// Failures worth another attempt before anything reached the user.
    fn retryable(&self) -> bool {
        match self {
            Failure::Connect(_) | Failure::Timeout => true,
            Failure::Status { status, .. } => *status == 429 || *status >= 500,
            Failure::Broken(_) | Failure::Idle | Failure::Invalid(_) | Failure::BreakerOpen => false,
        }
    }

    /// The same failure seen after the first event: a broken connection or a timeout is a cut stream then.
    pub(super) fn mid_stream(self) -> Failure {
        match self {
            Failure::Connect(detail) => Failure::Broken(detail),
            Failure::Timeout => Failure::Idle,
            other => other,
        }
    }

    /// The error event the user sees: retryable for what may pass (the agent down, busy or slow),
    /// not for requests the agent refuses or answers it cannot give.
    pub(super) fn into_error(self) -> ResponderError {
        let kind = match &self {
            Failure::Connect(_) => "connect",
            Failure::Timeout => "timeout",
            Failure::Status { status: 429, .. } => "rate_limited",
            Failure::Status { status, .. } if *status >= 500 => "server",
            Failure::Status { .. } => "refused",
            Failure::Broken(_) => "broken",
            Failure::Idle => "idle",
            Failure::Invalid(_) => "invalid",
            Failure::BreakerOpen => "breaker_open",
        };
        METRICS.agent_errors.with_label_values(&[kind]).inc();
        let (message, allow_retry) = match self {
            Failure::Connect(detail) => {
                tracing::warn!(%detail, "cannot reach the agent");
                ("Could not reach the agent. Try again in a moment.".to_string(), true)
            }
            Failure::Timeout => ("The agent did not answer in time. Try again.".to_string(), true),
            Failure::Status { status: 429, .. } => {
                ("The agent is busy (rate limited). Try again in a moment.".to_string(), true)
            }
            Failure::Status { status, message } if status >= 500 => {
                tracing::warn!(status, ?message, "agent error");
                (format!("The agent failed (HTTP {status}). Try again."), true)
            }
            Failure::Status { status, message: Some(message) } => {
                tracing::info!(status, %message, "the agent refused a request");
                (message, false)
            }
            Failure::Status { status, message: None } => {
                (format!("The agent refused the request (HTTP {status})."), false)
            }
            Failure::Broken(detail) => {
                tracing::warn!(%detail, "the agent's answer broke off");
                ("The agent's answer was cut off. Try again.".to_string(), true)
            }
            Failure::Idle => ("The agent stopped answering. Try again.".to_string(), true),
            Failure::BreakerOpen => {
                ("Could not reach the agent: it is failing repeatedly. Try again in a moment.".to_string(), true)
            }
            Failure::Invalid(detail) => {
                tracing::warn!(%detail, "the agent sent an answer the gateway refuses");
                (format!("The agent sent an invalid answer: {detail}"), false)
            }
        };
        ResponderError::Custom { message, allow_retry }
    }
}

/// Posts signed JSON bodies to the agent.
pub(super) struct Caller {
    http: upstream_http::Client,
    settings: AgentSettings,
    breaker: Breaker,
}

impl Caller {
    pub(super) fn new(settings: AgentSettings) -> Result<Caller, String> {
        let http = upstream_http::Client::builder()
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| format!("cannot build the HTTP client for the agent: {e}"))?;
        let breaker = Breaker::new(&settings.name, settings.breaker_threshold, settings.breaker_cooldown);
        Ok(Caller { http, settings, breaker })
    }

    pub(super) fn settings(&self) -> &AgentSettings {
        &self.settings
    }

    /// One signed request; a success status is the only `Ok`, with the request's client span (below `info`:
    /// traces only), which the caller keeps while it reads the answer. The agent receives the span's
    /// `traceparent`, so that its own spans join the turn's trace.
    async fn send(
        &self,
        op: &str,
        body: &Bytes,
        accept: &str,
    ) -> Result<(upstream_http::Response, tracing::Span), Failure> {
        METRICS.agent_calls.with_label_values(&[op]).inc();
        let span = tracing::debug_span!(
            "agent.call",
            otel.name = %format_args!("agent {op}"),
            otel.kind = "client",
            http.request.method = "POST",
            server.address = host_of(&self.settings.url),
            http.response.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let id = format!("msg_{:032x}", rand::rng().random::<u128>());
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let signature = self.settings.signer.sign(&id, timestamp, body);
        let request = self
            .http
            .post(&self.settings.url)
            .header("content-type", "application/json")
            .header("accept", accept)
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.clone());
        let request = crate::telemetry::traces::context_headers(&span)
            .into_iter()
            .fold(request, |request, (name, value)| request.header(name, value));
        let mut response = match request.send().instrument(span.clone()).await {
            Ok(response) => response,
            Err(error) => {
                span.record("otel.status_code", "ERROR");
                return Err(Failure::from_http(error));
            }
        };
        let status = response.status();
        span.record("http.response.status_code", i64::from(status.as_u16()));
        if status.is_success() {
            return Ok((response, span));
        }
        span.record("otel.status_code", "ERROR");
        let mut text = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            text.extend_from_slice(&chunk);
            if text.len() > MAX_ERROR_BODY {
                break;
            }
        }
        let value: Value = serde_json::from_slice(&text).unwrap_or_default();
        let message = value["error"]["message"].as_str().map(str::to_string);
        Err(Failure::Status { status: status.as_u16(), message })
    }

    /// Runs `attempt` behind the circuit breaker: refused at once while it is open; the outcome
    /// (after the retries) tells the breaker whether the agent is up.
    async fn guarded<T, F, Fut>(&self, attempt: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        if self.breaker.admit() == Admit::Refuse {
            return Err(Failure::BreakerOpen);
        }
        let result = self.retrying(attempt).await;
        match &result {
            // The failures that say the agent is down, overloaded or too slow are the retryable ones.
            Err(failure) if failure.retryable() => self.breaker.failed(),
            _ => self.breaker.succeeded(),
        }
        result
    }

    /// Runs `attempt` with the retry policy: retryable failures are tried again after a pause that
    /// doubles, at most `retries` times, and never once the retry budget is spent.
    async fn retrying<T, F, Fut>(&self, mut attempt: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let started = Instant::now();
        let mut tries = 0;
        loop {
            let result = match tokio::time::timeout(self.settings.timeout, attempt()).await {
                Err(_) => Err(Failure::Timeout),
                Ok(result) => result,
            };
            match result {
                Err(failure) if failure.retryable() && tries < self.settings.retries => {
                    let pause = self.settings.retry_backoff * 2u32.saturating_pow(tries);
                    if started.elapsed() + pause >= self.settings.retry_budget {
                        return Err(failure);
                    }
                    tracing::info!(?failure, tries, ?pause, "retrying the agent call");
                    tokio::time::sleep(pause).await;
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    /// Opens an event stream and reads its first event (`None` when it ends without one).
    pub(super) async fn open_stream(&self, op: &str, body: Bytes) -> Result<(EventReader, Option<String>), Failure> {
        self.guarded(|| async {
            let (response, span) = self.send(op, &body, "text/event-stream").await?;
            let kind = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
            if !kind.starts_with("text/event-stream") {
                return Err(Failure::Invalid(format!("expected a text/event-stream answer, got `{kind}`")));
            }
            let mut reader = EventReader { response, buffer: Vec::new(), ended: false, _span: span };
            let first = reader.next().await?;
            Ok((reader, first))
        })
        .await
    }

    /// Posts a body and reads a JSON answer (`null` for an empty body).
    pub(super) async fn call_json(&self, op: &str, body: Bytes) -> Result<Value, Failure> {
        self.guarded(|| async {
            let (response, _span) = self.send(op, &body, "application/json").await?;
            let bytes = response.bytes().await.map_err(Failure::from_http)?;
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(Value::Null);
            }
            serde_json::from_slice(&bytes).map_err(|e| Failure::Invalid(format!("the answer is not JSON: {e}")))
        })
        .await
    }
}

/// The host an agent URL names (`server.address` in traces), without its scheme, credentials, port or path.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    }
}

/// Reads the `data:` payloads of a `text/event-stream`, one per event.
pub(super) struct EventReader {
    response: upstream_http::Response,
    buffer: Vec<u8>,
    ended: bool,
    /// The call's span, which lasts as long as its stream is read.
    _span: tracing::Span,
}

impl EventReader {
    /// The next event's data; `None` at the end of the stream (or at `data: [DONE]`).
    pub(super) async fn next(&mut self) -> Result<Option<String>, Failure> {
        loop {
            if let Some(frame) = self.take_frame() {
                match frame_data(frame) {
                    Some(data) if data == "[DONE]" => {
                        self.ended = true;
                        self.buffer.clear();
                        return Ok(None);
                    }
                    Some(data) => return Ok(Some(data)),
                    None => continue,
                }
            }
            if self.ended {
                return Ok(None);
            }
            match self.response.chunk().await {
                Err(error) => return Err(Failure::Broken(error.to_string())),
                Ok(Some(bytes)) => self.buffer.extend_from_slice(&bytes),
                Ok(None) => {
                    // A last event without its blank line still counts.
                    self.ended = true;
                    if !self.buffer.iter().all(u8::is_ascii_whitespace) {
                        self.buffer.extend_from_slice(b"\n\n");
                    }
                }
            }
        }
    }

    /// Removes one complete frame (up to a blank line) from the buffer.
    fn take_frame(&mut self) -> Option<String> {
        let text = &self.buffer;
        let (end, skip) = text.iter().enumerate().find_map(|(i, &byte)| match byte {
            b'\n' if text.get(i + 1) == Some(&b'\n') => Some((i, 2)),
            b'\r' if text[i..].starts_with(b"\r\n\r\n") => Some((i, 4)),
            _ => None,
        })?;
        let frame = String::from_utf8_lossy(&text[..end]).into_owned();
        self.buffer.drain(..end + skip);
        Some(frame)
    }
}

/// The data of one frame, its `data:` lines joined; `None` for a frame without data (a comment).
fn frame_data(frame: String) -> Option<String> {
    let mut lines = frame.lines().filter_map(|line| line.strip_prefix("data:"));
    let first = lines.next()?;
    let Some(second) = lines.next() else {
        // The usual frame is one `data:` line, whose text needs no copy when it is the whole frame.
        let data = first.strip_prefix(' ').unwrap_or(first);
        return Some(if frame.len() == data.len() + 6 && frame.starts_with("data: ") {
            let mut frame = frame;
            frame.drain(..6);
            frame
        } else {
            data.to_string()
        });
    };
    let data: Vec<&str> =
        [first, second].into_iter().chain(lines).map(|data| data.strip_prefix(' ').unwrap_or(data)).collect();
    Some(data.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_of_an_agent_url_leaves_the_rest_out() {
        assert_eq!(host_of("https://user:pw@agents.example.com:8443/chatkit?x=1"), "agents.example.com");
        assert_eq!(host_of("http://127.0.0.1:9000"), "127.0.0.1");
        assert_eq!(host_of("http://[::1]:9000/a"), "::1");
        assert_eq!(host_of("agent.local/path"), "agent.local");
    }

    #[test]
    fn frames_give_their_data_lines() {
        let data = |frame: &str| frame_data(frame.to_string());
        assert_eq!(data("event: x\ndata: {\"a\":\ndata: 1}").as_deref(), Some("{\"a\":\n1}"));
        assert_eq!(data(": heartbeat"), None);
        assert_eq!(data("data:[DONE]").as_deref(), Some("[DONE]"));
        assert_eq!(data("data: {\"a\": 1}").as_deref(), Some("{\"a\": 1}"));
        assert_eq!(data("data:  two spaces").as_deref(), Some(" two spaces"));
        assert_eq!(data("id: 7\ndata: x").as_deref(), Some("x"));
    }

    #[test]
    fn only_transient_failures_are_retried() {
        assert!(Failure::Status { status: 503, message: None }.retryable());
        assert!(Failure::Status { status: 429, message: None }.retryable());
        assert!(!Failure::Status { status: 400, message: None }.retryable());
        assert!(Failure::Timeout.retryable() && !Failure::Timeout.mid_stream().retryable());
        let refused = Failure::Status { status: 403, message: Some("No access.".into()) }.into_error();
        assert!(matches!(refused, ResponderError::Custom { message, allow_retry: false } if message == "No access."));
    }
}
