//! What traces see of the model service: its HTTP transport, which passes the current span's trace context on
//! as `traceparent`, and [`ModelCall`], one streamed request's span in the GenAI semantic conventions (model,
//! token counts, time to first token).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use upstream_http::header::{HeaderName, HeaderValue};

use super::settings::ModelApi;
use crate::telemetry::traces;

/// async-openai's transport (a tower service) on the gateway's reqwest client, adding the trace context of the
/// span the request is made in. Without traces it adds nothing and costs one relaxed load.
#[derive(Clone, Debug)]
pub(super) struct TracedTransport {
    http: upstream_http::Client,
}

impl TracedTransport {
    pub(super) fn new(http: upstream_http::Client) -> TracedTransport {
        TracedTransport { http }
    }
}

type Answer = Pin<Box<dyn Future<Output = Result<upstream_http::Response, OpenAIError>> + Send + 'static>>;

impl tower::Service<HttpRequestFactory> for TracedTransport {
    type Response = upstream_http::Response;
    type Error = OpenAIError;
    type Future = Answer;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        // Read now: `call` runs inside the model call's span, the future may be polled anywhere.
        let context = traces::context_headers(&tracing::Span::current());
        let http = self.http.clone();
        Box::pin(async move {
            let mut request = factory.build().await?;
            for (name, value) in context {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    request.headers_mut().insert(HeaderName::from_static(name), value);
                }
            }
            http.execute(request).await.map_err(OpenAIError::Reqwest)
        })
    }
}

/// One streamed model request as a client span (below `info`: traces only), ended when dropped.
pub(super) struct ModelCall {
    pub span: tracing::Span,
    started: Instant,
    answered: bool,
}

impl ModelCall {
    /// The span of a request for `model` through `api`.
    pub(super) fn start(api: ModelApi, model: &str) -> ModelCall {
        let span = tracing::debug_span!(
            "model.call",
            otel.name = %format_args!("chat {model}"),
            otel.kind = "client",
            gen_ai.operation.name = "chat",
            gen_ai.provider.name = "openai",
            gen_ai.request.model = model,
            chatkit.model_api = match api {
                ModelApi::Chat => "chat_completions",
                ModelApi::Responses => "responses",
            },
            gen_ai.response.model = tracing::field::Empty,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            gen_ai.response.time_to_first_chunk = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        ModelCall { span, started: Instant::now(), answered: false }
    }

    /// Notes the first event of the answer: its time since the request, in seconds, and an event on the span.
    pub(super) fn first_event(&mut self, response_model: Option<&str>) {
        if self.answered || self.span.is_disabled() {
            return;
        }
        self.answered = true;
        self.span.record("gen_ai.response.time_to_first_chunk", self.started.elapsed().as_secs_f64());
        if let Some(model) = response_model {
            self.span.record("gen_ai.response.model", model);
        }
        traces::add_event(&self.span, "gen_ai.first_chunk");
    }

    /// Records the token counts the service reported.
    pub(super) fn usage(&self, input: u64, output: u64) {
        // As signed integers: the trace layer writes an unsigned one as text.
        self.span.record("gen_ai.usage.input_tokens", i64::try_from(input).unwrap_or(i64::MAX));
        self.span.record("gen_ai.usage.output_tokens", i64::try_from(output).unwrap_or(i64::MAX));
    }

    /// Marks the call failed.
    pub(super) fn failed(&self) {
        self.span.record("otel.status_code", "ERROR");
    }
}
