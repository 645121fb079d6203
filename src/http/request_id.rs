//! Request ids: every answer carries `x-request-id`, every JSON error body the same id as
//! `error.request_id`, and every line logged while a request is handled the `http.request` span
//! that names it, so that an id a client reports finds the request's log lines. With traces on, that span is
//! also the trace's server span, continuing the client's `traceparent`, and its trace id joins the logs.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::InternalError;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::HttpMessage;
use tracing::Instrument;

use crate::ids::{new_id, IdKind};
use crate::telemetry::traces;

/// The header that carries the id, in and out.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest incoming id kept; a longer one is replaced, so that a client cannot fill the logs.
const MAX_INCOMING_LEN: usize = 200;

/// The id of the request being handled, in its extensions for handlers that want it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(pub String);

tokio::task_local! {
    // Error bodies read the id from here rather than having the middleware rewrite them:
    // `ApiError::error_response` renders the body once, wherever it is called (a handler, an
    // extractor's error handler, the CORS middleware's refusal), and all of those run inside the
    // future this middleware scopes, so no body is parsed or buffered a second time.
    static CURRENT: RequestId;
}

/// The id of the request whose handling is running on this task, if any.
pub(super) fn current() -> Option<String> {
    CURRENT.try_with(|id| id.0.clone()).ok()
}

/// An incoming id worth keeping: visible ASCII (no spaces, so that it stays one token in text
/// logs) of at most [`MAX_INCOMING_LEN`] characters.
fn incoming(request: &ServiceRequest) -> Option<String> {
    let value = request.headers().get(&REQUEST_ID)?.to_str().ok()?;
    let sane =
        !value.is_empty() && value.len() <= MAX_INCOMING_LEN && value.bytes().all(|byte| byte.is_ascii_graphic());
    sane.then(|| value.to_owned())
}

/// Makes the request's span a trace's server span: named by its route, continuing the trace the client's
/// `traceparent` names, with the HTTP semantic conventions' attributes, and its trace id in the logs.
fn traced(span: &tracing::Span, request: &ServiceRequest, route: Option<&str>) {
    let route = route.unwrap_or("unmatched");
    span.record("otel.name", format!("{} {route}", request.method()).as_str());
    span.record("otel.kind", "server");
    traces::continue_from(span, |name| request.headers().get(name).and_then(|value| value.to_str().ok()));
    traces::set_attribute(span, "http.request.method", request.method().to_string());
    traces::set_attribute(span, "http.route", route.to_string());
    traces::set_attribute(span, "url.path", request.path().to_string());
    if let Some((trace_id, _)) = traces::ids_of(span) {
        span.record("trace_id", trace_id.as_str());
    }
}

/// Probes and scrapes arrive every few seconds; their answers are logged below `info`.
fn routine(route: &str) -> bool {
    ["/healthz", "/readyz", "/metrics"].iter().any(|probe| route.ends_with(probe))
}

/// The middleware (`actix_web::middleware::from_fn`), the outermost one: names the request, runs
/// everything else inside its span and the id's scope, and marks the answer with the id.
pub async fn middleware(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let id = incoming(&request).unwrap_or_else(|| new_id(IdKind::Request));
    let route = request.match_pattern();
    // The span every line logged while the request is handled sits in, and the trace's server span. `op` is
    // recorded by `POST /chatkit` once the body names it. The query string is left out: attachment links carry
    // their capability in it. The `otel.*` fields name the span in traces and stay empty in the logs without them.
    let span = tracing::info_span!(
        "http.request",
        request_id = %id,
        method = %request.method(),
        path = request.path(),
        route = route.as_deref(),
        op = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if traces::enabled() {
        traced(&span, &request, route.as_deref());
    }
    request.extensions_mut().insert(RequestId(id.clone()));
    // Always valid: a kept id is visible ASCII, a new one hex.
    let header = HeaderValue::from_str(&id).ok();
    let started = std::time::Instant::now();
    let handled = async move {
        let outcome = next.call(request).await;
        let status = match &outcome {
            Ok(response) => response.status(),
            Err(error) => error.as_response_error().status_code(),
        };
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if traces::enabled() {
            let current = tracing::Span::current();
            traces::set_attribute(&current, "http.response.status_code", i64::from(status.as_u16()));
            if status.is_server_error() {
                current.record("otel.status_code", "ERROR");
            }
        }
        // For a stream this is the time to its head; the stream itself runs on.
        if route.as_deref().is_some_and(routine) {
            tracing::debug!(status = status.as_u16(), elapsed_ms, "answered");
        } else {
            tracing::info!(status = status.as_u16(), elapsed_ms, "answered");
        }
        match outcome {
            Ok(response) => {
                let mut response = response.map_into_boxed_body();
                if let Some(value) = header {
                    response.headers_mut().insert(REQUEST_ID, value);
                }
                Ok(response)
            }
            // An error that escaped the inner layers would be rendered by actix after this scope
            // has ended, without the id; it is rendered here instead and handed on ready-made.
            // (The request itself cannot be kept to build a response from: actix needs it unshared.)
            Err(error) => {
                let mut rendered = error.error_response();
                if let Some(value) = header {
                    rendered.headers_mut().insert(REQUEST_ID, value);
                }
                Err(InternalError::from_response(error, rendered).into())
            }
        }
    };
    CURRENT.scope(RequestId(id), handled).instrument(span).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn only_sane_incoming_ids_are_kept() {
        let with = |value: &str| incoming(&TestRequest::default().insert_header((REQUEST_ID, value)).to_srv_request());
        assert_eq!(with("abc-123_X.y:z").as_deref(), Some("abc-123_X.y:z"));
        assert_eq!(with(&"a".repeat(MAX_INCOMING_LEN)).map(|id| id.len()), Some(MAX_INCOMING_LEN));
        for bad in ["", "two words", "tab\there", &"a".repeat(MAX_INCOMING_LEN + 1)] {
            assert_eq!(with(bad), None, "{bad:?}");
        }
        assert_eq!(incoming(&TestRequest::default().to_srv_request()), None);
    }

    #[test]
    fn probes_are_routine() {
        assert!(routine("/healthz") && routine("/chat/readyz") && routine("/metrics"));
        assert!(!routine("/chatkit") && !routine("/chatkit/events"));
    }
}
