//! Traces: the OpenTelemetry pipeline (OTLP over HTTP, protobuf) behind the `tracing` spans, switched on by
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, and the W3C Trace Context the gateway reads from requests and passes on.
//!
//! Off, nothing here costs more than one relaxed load: the spans below `info` that only traces want are disabled
//! by the log filter, and the helpers return at once. The exporter reads its headers (`OTEL_EXPORTER_OTLP_HEADERS`,
//! often an API key), timeout and compression from the environment itself, so they never pass through `Config`
//! and are never printed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C Trace Context header that carries the trace id, parent span id and sampling flag.
pub const TRACEPARENT: &str = "traceparent";
/// The vendors' part of W3C Trace Context, passed on as it came.
pub const TRACESTATE: &str = "tracestate";

/// Whether spans are exported: set once at start-up, read on every hop that would carry a context.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces (and so continues and passes on trace context).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Which traces are kept, as `OTEL_TRACES_SAMPLER` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SamplerKind {
    #[value(name = "always_on")]
    AlwaysOn,
    #[value(name = "always_off")]
    AlwaysOff,
    #[value(name = "traceidratio")]
    TraceIdRatio,
    #[value(name = "parentbased_always_on")]
    ParentBasedAlwaysOn,
    #[value(name = "parentbased_always_off")]
    ParentBasedAlwaysOff,
    #[value(name = "parentbased_traceidratio")]
    ParentBasedTraceIdRatio,
}

/// Where and how traces are exported; `endpoint: None` means not at all.
#[derive(Clone, Debug)]
pub struct TraceSettings {
    /// The OTLP/HTTP traces URL, `/v1/traces` included.
    pub endpoint: Option<String>,
    pub service_name: String,
    /// `service.instance.id`, unless `OTEL_RESOURCE_ATTRIBUTES` names one.
    pub instance_id: Option<String>,
    pub sampler: SamplerKind,
    /// The ratio of the `*traceidratio` samplers, from 0 to 1.
    pub ratio: f64,
}

impl TraceSettings {
    fn sampler(&self) -> Sampler {
        let ratio = || Sampler::TraceIdRatioBased(self.ratio);
        match self.sampler {
            SamplerKind::AlwaysOn => Sampler::AlwaysOn,
            SamplerKind::AlwaysOff => Sampler::AlwaysOff,
            SamplerKind::TraceIdRatio => ratio(),
            SamplerKind::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            SamplerKind::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            SamplerKind::ParentBasedTraceIdRatio => Sampler::ParentBased(Box::new(ratio())),
        }
    }
}

/// The exporting pipeline while it runs; [`Traces::shutdown`] sends what is still buffered.
pub struct Traces {
    provider: SdkTracerProvider,
    service_name: String,
}

impl Traces {
    /// The `service.name` the spans are exported under.
    pub fn service_name(&self) -> &str {
        &self.service_name
    }

    /// Sends the spans still buffered and stops the exporter, waiting at most `limit`.
    pub fn shutdown(self, limit: Duration) {
        if let Err(error) = self.provider.shutdown_with_timeout(limit) {
            tracing::warn!(%error, "traces still buffered at shutdown were not all sent");
        }
        ENABLED.store(false, Ordering::Relaxed);
    }
}

/// Builds the exporter and tracer for `settings`, when they name an endpoint.
pub(super) fn start(settings: &TraceSettings) -> Result<Option<(Traces, opentelemetry_sdk::trace::Tracer)>, String> {
    let Some(endpoint) = &settings.endpoint else { return Ok(None) };
    // The exporter's HTTP client may speak TLS (an `https://` collector).
    crate::tls::install_provider();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|error| format!("cannot build the OTLP trace exporter for {endpoint}: {error}"))?;
    // The SDK's detectors read `OTEL_RESOURCE_ATTRIBUTES`; the service name is ours, the instance only a default.
    let resource = || opentelemetry_sdk::Resource::builder().with_service_name(settings.service_name.clone());
    let instance = opentelemetry::Key::from_static_str("service.instance.id");
    let resource = match (&settings.instance_id, resource().build().get(&instance)) {
        (Some(id), None) => resource().with_attribute(opentelemetry::KeyValue::new(instance, id.clone())).build(),
        _ => resource().build(),
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(settings.sampler())
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("chatkit-gateway");
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some((Traces { provider, service_name: settings.service_name.clone() }, tracer)))
}

/// Continues the trace an incoming request names in its `traceparent` (and `tracestate`) header, read through
/// `header`, by making it `span`'s parent. Without a valid one the span starts a trace of its own.
pub fn continue_from<'a>(span: &tracing::Span, header: impl Fn(&str) -> Option<&'a str>) {
    if !enabled() || header(TRACEPARENT).is_none() {
        return;
    }
    let carrier = Headers { traceparent: header(TRACEPARENT), tracestate: header(TRACESTATE) };
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Continues the trace of a context received from another replica (a `traceparent` value), as `span`'s parent.
pub fn continue_remote(span: &tracing::Span, traceparent: &str) {
    continue_from(span, |name| (name == TRACEPARENT).then_some(traceparent));
}

/// The headers that carry `span`'s context to the next hop: `traceparent`, and `tracestate` when the trace has
/// one. Empty when traces are off.
pub fn context_headers(span: &tracing::Span) -> Vec<(&'static str, String)> {
    if !enabled() {
        return Vec::new();
    }
    let mut carrier = Outgoing(Vec::with_capacity(2));
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.0
}

/// `span`'s `traceparent` value, for a carrier that has room for one string (a fan-out publication).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    context_headers(span).into_iter().find(|(name, _)| *name == TRACEPARENT).map(|(_, value)| value)
}

/// `span`'s trace id and span id in hex, when traces are on and the span is known to the tracer.
pub fn ids_of(span: &tracing::Span) -> Option<(String, String)> {
    if !enabled() {
        return None;
    }
    ids_in(&span.context()).map(|(trace_id, span_id)| (trace_id.to_string(), span_id.to_string()))
}

/// The trace id and span id of the span a context holds, when it holds a valid one.
pub(super) fn ids_in(context: &opentelemetry::Context) -> Option<(TraceId, SpanId)> {
    let otel = context.span();
    let ids = otel.span_context();
    ids.is_valid().then(|| (ids.trace_id(), ids.span_id()))
}

/// Sets an OpenTelemetry attribute that only traces want (the logs already carry the same under a short name).
pub fn set_attribute(span: &tracing::Span, key: &'static str, value: impl Into<opentelemetry::Value>) {
    if enabled() {
        span.set_attribute(key, value);
    }
}

/// Adds a timestamped event to `span`'s trace, e.g. a model's first token.
pub fn add_event(span: &tracing::Span, name: &'static str) {
    if enabled() {
        span.add_event(name, Vec::new());
    }
}

/// An incoming request's trace headers.
struct Headers<'a> {
    traceparent: Option<&'a str>,
    tracestate: Option<&'a str>,
}

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent,
            TRACESTATE => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// The headers for the next hop.
struct Outgoing(Vec<(&'static str, String)>);

impl Injector for Outgoing {
    fn set(&mut self, key: &str, value: String) {
        let name = match key {
            TRACEPARENT => TRACEPARENT,
            TRACESTATE => TRACESTATE,
            _ => return,
        };
        self.0.push((name, value));
    }
}
