//! `POST /chatkit`: one endpoint for every protocol operation.

use std::convert::Infallible;
use std::time::Instant;

use actix_web::http::header::{CacheControl, CacheDirective, ContentType};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::stream;

use super::{identify, read_body, ApiError, Identity, State};
use crate::engine::{Caller, JsonAnswer, TurnEvent};
use crate::protocol::Request;
use crate::sessions::Admission;
use crate::telemetry::metrics::{OpenStream, METRICS};

pub async fn handle(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let mut op = "unknown";
    let result = answer(&request, payload, &state, &mut op).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(error) => error.code,
    };
    METRICS.requests.with_label_values(&[op, outcome]).inc();
    METRICS.request_duration.with_label_values(&[op]).observe(started.elapsed().as_secs_f64());
    result
}

async fn answer(
    request: &HttpRequest,
    payload: web::Payload,
    state: &State,
    op: &mut &'static str,
) -> Result<HttpResponse, ApiError> {
    let Identity { user, session } = identify(request, state).await?;
    if let Some(session) = &session {
        // Counted before anything is read or written, on every replica.
        if let Admission::Limited { retry_after } = state.sessions.admit(session).await {
            let limit = session.settings.rate_limits.max_requests_per_1_minute;
            METRICS.rejected.with_label_values(&["rate_limited"]).inc();
            return Err(ApiError::rate_limited(retry_after, limit));
        }
    }
    let body = read_body(request, payload, state.max_body_bytes).await?;
    let parsed = Request::parse(&body)?;
    *op = parsed.op();
    // The request span (`request_id.rs`) names the op from here on, in every line logged for it.
    tracing::Span::current().record("op", parsed.op());
    tracing::debug!(op = parsed.op(), %user, "request");
    let caller = Caller { locale: locale_of(request), session };
    if !parsed.is_streaming() {
        // Changes go through the thread's actor, in the thread's order; reads do not queue.
        let answer = if parsed.changes_thread() {
            state.threads.change(user, parsed, caller).await?
        } else {
            state.engine.answer(&user, parsed, &caller, None).await?
        };
        return Ok(HttpResponse::Ok().content_type(ContentType::json()).body(json_body(&answer)?));
    }
    let events = state.threads.turn(user, parsed, caller).await?;
    let open = OpenStream::new("turn");
    // Events that are ready together go out as one chunk: one write for the
    // socket instead of one per event.
    let frames = stream::unfold((events, open, Vec::new()), |(mut events, open, mut ready)| async move {
        if events.recv_many(&mut ready, FRAMES_PER_CHUNK).await == 0 {
            return None;
        }
        let chunk = sse_frames(ready.drain(..));
        Some((Ok::<_, Infallible>(chunk), (events, open, ready)))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(CacheControl(vec![CacheDirective::NoCache]))
        // Tells nginx-style proxies not to buffer the stream.
        .insert_header(("x-accel-buffering", "no"))
        .streaming(frames))
}

/// The first language tag of `Accept-Language` (`fr-FR,fr;q=0.9` gives
/// `fr-FR`), when it is a plausible tag; `*` and junk give none.
fn locale_of(request: &HttpRequest) -> Option<String> {
    let header = request.headers().get(actix_web::http::header::ACCEPT_LANGUAGE)?.to_str().ok()?;
    let tag = header.split(',').next()?.split(';').next()?.trim();
    let plausible = !tag.is_empty()
        && tag.len() <= 35
        && tag != "*"
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    plausible.then(|| tag.to_string())
}

fn json_body(answer: &JsonAnswer) -> Result<Vec<u8>, ApiError> {
    let encoded = match answer {
        JsonAnswer::Thread(thread) => serde_json::to_vec(thread),
        JsonAnswer::Threads(page) => serde_json::to_vec(page),
        JsonAnswer::Items(page) => serde_json::to_vec(page),
        JsonAnswer::Attachment(attachment) => serde_json::to_vec(attachment),
        JsonAnswer::Transcription(result) => serde_json::to_vec(result),
        JsonAnswer::SyncAction(response) => serde_json::to_vec(response),
        JsonAnswer::Empty => Ok(b"{}".to_vec()),
    };
    encoded.map_err(|e| {
        tracing::error!(error = %e, "could not serialize an answer");
        ApiError::unencodable()
    })
}

/// The most turn events framed into one chunk of the response.
const FRAMES_PER_CHUNK: usize = 32;

/// Server-Sent Events, each `data: <json>` and a blank line, nothing else, as
/// the reference frames turn streams.
fn sse_frames(events: impl Iterator<Item = TurnEvent>) -> Bytes {
    let mut chunk = Vec::with_capacity(512);
    for event in events {
        chunk.extend_from_slice(b"data: ");
        chunk.extend_from_slice(event.json.as_bytes());
        chunk.extend_from_slice(b"\n\n");
    }
    Bytes::from(chunk)
}
