//! Logs, traces and metrics: the global subscriber (log lines in plain text or one JSON object per line, and the
//! OpenTelemetry layer when traces are exported), and the metrics registry.

pub mod metrics;
pub mod traces;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use traces::{SamplerKind, TraceSettings, Traces};

/// How log lines are written to stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    Text,
    /// One JSON object per line, for log collectors: timestamp, level, message,
    /// target, the event's fields, the spans it is inside with their fields, and
    /// the trace and span ids while traces are exported.
    Json,
}

/// The crate whose spans traces record; everything else reaches traces only as warnings and errors.
const OWN_TARGET: &str = "chatkit_gateway";

/// Installs the global subscriber; `RUST_LOG` wins over the configured log filter. With an endpoint in `traces`,
/// spans are exported too; the answer then has to be kept and shut down at exit, so that the last spans are sent.
pub fn init(filter: &str, format: LogFormat, traces: &TraceSettings) -> Result<Option<Traces>, String> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    // A second call (several apps in one test process) keeps the first subscriber.
    let Some((traces, tracer)) = traces::start(traces)? else {
        // Without traces the log filter is the subscriber's only filter, as a global one: callsites below it are
        // off for good, and nothing pays for the per-layer filtering that traces need.
        let _ = tracing_subscriber::registry().with(filter).with(log_lines(format)).try_init();
        return Ok(None);
    };
    // Spans of this crate at `debug` and above (the store calls, the actor's queue, the fan-out hops and the
    // model call live there, below the default log level, so that without traces they are never built), and
    // warnings and errors as span events.
    let wanted = filter_fn(|meta| match meta.is_span() {
        true => meta.target().starts_with(OWN_TARGET) && *meta.level() <= LevelFilter::DEBUG,
        false => *meta.level() <= LevelFilter::WARN,
    })
    .with_max_level_hint(LevelFilter::DEBUG);
    // Without the source locations, threads and busy/idle times the layer can add: spans carry what the
    // conventions name, and building them costs less.
    let exporting = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false);
    let _ = tracing_subscriber::registry()
        .with(log_lines(format).with_filter(filter))
        .with(exporting.with_filter(wanted))
        .try_init();
    // The endpoint is not logged: its URL may carry credentials.
    tracing::info!(service = %traces.service_name(), "exporting traces over OTLP/HTTP");
    Ok(Some(traces))
}

/// The layer that writes log lines in `format`.
fn log_lines<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    match format {
        LogFormat::Text => {
            // Colours only on a terminal: log files and collectors get plain text.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            tracing_subscriber::fmt::layer().with_target(false).with_ansi(ansi).boxed()
        }
        // The event's fields sit at the top level beside `message`, so that a collector indexes them as they are;
        // the span list carries the request span's `request_id`, method and route on every line logged inside a
        // request, so the innermost span alone is not repeated.
        LogFormat::Json => {
            let lines = tracing_subscriber::fmt::format().json().flatten_event(true).with_current_span(false);
            tracing_subscriber::fmt::layer()
                .fmt_fields(JsonFields::new())
                .event_format(WithTraceIds(lines.with_span_list(true)))
                .with_ansi(false)
                .boxed()
        }
    }
}

/// The JSON line format with the trace and span ids of the innermost span the line is logged in (`trace_id`,
/// `span_id`, as W3C Trace Context writes them), so that a log line finds its trace.
struct WithTraceIds(Format<Json>);

impl<S, N> FormatEvent<S, N> for WithTraceIds
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let ids = match traces::enabled() {
            true => ctx.lookup_current().and_then(|span| {
                let dispatch = tracing::dispatcher::get_default(Clone::clone);
                traces::ids_in(&tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?)
            }),
            false => None,
        };
        let Some((trace_id, span_id)) = ids else { return self.0.format_event(ctx, writer, event) };
        let mut line = String::with_capacity(256);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // The JSON format writes one object and a newline; the ids join the object as its last fields.
        match line.trim_end().strip_suffix('}') {
            Some(object) => writeln!(writer, "{object},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"),
            None => writer.write_str(&line),
        }
    }
}
