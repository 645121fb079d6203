//! Logs and metrics: the global log subscriber, in plain text or one JSON object per line, and the metrics registry.

pub mod metrics;

use tracing_subscriber::EnvFilter;

/// How log lines are written to stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    Text,
    /// One JSON object per line, for log collectors: timestamp, level, message,
    /// target, the event's fields, and the spans it is inside with their fields.
    Json,
}

/// Installs the global log subscriber; `RUST_LOG` wins over the configured filter.
pub fn init(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    // A second call (several apps in one test process) keeps the first subscriber.
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Text => {
            // Colours only on a terminal: log files and collectors get plain text.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            builder.with_target(false).with_ansi(ansi).try_init()
        }
        // The event's fields sit at the top level beside `message`, so that a collector indexes
        // them as they are; the span list carries the request span's `request_id`, method and
        // route on every line logged inside a request (and is where a trace id will appear
        // once requests are traced), so the innermost span alone is not repeated.
        LogFormat::Json => {
            builder.json().flatten_event(true).with_current_span(false).with_span_list(true).with_ansi(false).try_init()
        }
    };
}
