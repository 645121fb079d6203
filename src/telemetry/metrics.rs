//! Every Prometheus metric the gateway exports, named and described once here.
//!
//! Names follow Prometheus conventions: a `chatkit_` prefix, `_total` for
//! counters, `_seconds` for durations in base units. One process-wide registry
//! holds them (several apps in one test process share it, so tests compare
//! before and after). Gauges that describe current state (live actors, queued
//! jobs, open streams, Redis connection) are kept current by their owners or
//! refreshed when `/metrics` is scraped.

use std::sync::LazyLock;

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Every registered family, including labelled ones without series yet.
    names: Vec<String>,
    /// `POST /chatkit` requests by op and outcome.
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    /// Whole turns by outcome (completed, failed, cancelled).
    pub turn_duration: HistogramVec,
    pub turn_first_event: HistogramVec,
    /// Streams open now by kind: turn, thread_viewer, history_viewer.
    pub open_streams: IntGaugeVec,
    pub thread_actors: IntGauge,
    pub mailbox_depth: IntGauge,
    /// Inputs refused by reason: locked, closed, busy, rate_limited.
    pub rejected: IntCounterVec,
    pub lease_wait: HistogramVec,
    pub lease_contended: IntCounter,
    pub fanout_published: IntCounterVec,
    pub fanout_delivered: IntCounterVec,
    pub fanout_latency: HistogramVec,
    pub redis_connected: IntGauge,
    pub redis_reconnects: IntCounter,
    /// Turns stopped because their thread's fence moved on (another replica took it over).
    pub turns_fenced: IntCounter,
    pub model_calls: IntCounterVec,
    /// MCP tool calls, by outcome (`answered`, or why one failed).
    pub mcp_tool_calls: IntCounterVec,
    pub model_tokens: IntCounterVec,
    pub model_errors: IntCounterVec,
    pub agent_calls: IntCounterVec,
    pub agent_errors: IntCounterVec,
    /// 1 while an agent's circuit breaker is open (refusing calls), by agent.
    pub agent_breaker_open: IntGaugeVec,
    pub agent_breaker_opens: IntCounterVec,
    pub store_duration: HistogramVec,
    /// Client-secret lookups in the session cache, by result (hit, miss).
    pub session_cache: IntCounterVec,
}

/// The metrics of this process.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The outcomes of an MCP tool call: answered, the tool's own error, no answer in time, the server
/// unreachable, the call refused by the server, arguments that are not JSON, a tool not offered now,
/// or an answer the gateway does not support (input requests, tasks).
pub const MCP_OUTCOMES: [&str; 8] =
    ["answered", "tool_error", "timeout", "unreachable", "refused", "invalid", "unavailable", "unsupported"];

/// Buckets from 0.5 ms to about 65 s, doubling.
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.0005, 2.0, 18).expect("valid buckets")
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let names = std::cell::RefCell::new(Vec::new());
        let registered = |name: &str| names.borrow_mut().push(name.to_string());
        let counter = |name: &str, help: &str, labels: &[&str]| {
            registered(name);
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            registered(name);
            let opts = HistogramOpts::new(name, help).buckets(latency_buckets());
            let metric = HistogramVec::new(opts, labels).expect("valid histogram");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let gauge = |name: &str, help: &str| {
            registered(name);
            let metric = IntGauge::new(name, help).expect("valid gauge");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let single = |name: &str, help: &str| {
            registered(name);
            let metric = IntCounter::new(name, help).expect("valid counter");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let open_streams = IntGaugeVec::new(Opts::new("chatkit_open_streams", "Streams open now, by kind."), &["kind"])
            .expect("gauge");
        registry.register(Box::new(open_streams.clone())).expect("unique metric");
        registered("chatkit_open_streams");
        let agent_breaker_open = IntGaugeVec::new(
            Opts::new("chatkit_agent_breaker_open", "1 while an agent's circuit breaker refuses calls, by agent."),
            &["agent"],
        )
        .expect("gauge");
        registry.register(Box::new(agent_breaker_open.clone())).expect("unique metric");
        registered("chatkit_agent_breaker_open");
        let metrics = Metrics {
            requests: counter(
                "chatkit_requests_total",
                "POST /chatkit requests by op and outcome.",
                &["op", "outcome"],
            ),
            request_duration: histogram(
                "chatkit_request_duration_seconds",
                "Time to answer a POST /chatkit request (to the response head for streams).",
                &["op"],
            ),
            turn_duration: histogram("chatkit_turn_duration_seconds", "Whole turns, by outcome.", &["outcome"]),
            turn_first_event: histogram(
                "chatkit_turn_first_event_seconds",
                "Time from a turn's start to its first event from the responder.",
                &["responder"],
            ),
            open_streams,
            thread_actors: gauge("chatkit_thread_actors", "Thread actors alive now."),
            mailbox_depth: gauge("chatkit_thread_mailbox_depth", "Jobs waiting in thread actors' queues now."),
            rejected: counter("chatkit_rejected_inputs_total", "Inputs refused, by reason.", &["reason"]),
            lease_wait: histogram("chatkit_lease_wait_seconds", "Time to take a thread's lease.", &["backend"]),
            lease_contended: single(
                "chatkit_lease_contended_total",
                "Lease requests that found the thread's lease held by another replica.",
            ),
            fanout_published: counter(
                "chatkit_fanout_published_total",
                "Messages published, by topic kind.",
                &["topic"],
            ),
            fanout_delivered: counter(
                "chatkit_fanout_delivered_total",
                "Messages written to local viewer streams, by topic kind.",
                &["topic"],
            ),
            fanout_latency: histogram(
                "chatkit_fanout_latency_seconds",
                "From publication to delivery to a local viewer stream (from the envelope's timestamp).",
                &["topic"],
            ),
            redis_connected: gauge("chatkit_redis_connected", "1 while the Redis fan-out connection is up."),
            redis_reconnects: single("chatkit_redis_reconnects_total", "Times the Redis fan-out connection came back."),
            turns_fenced: single(
                "chatkit_turns_fenced_total",
                "Turns stopped because another replica took their thread over (a write under an older fence).",
            ),
            model_calls: counter("chatkit_model_calls_total", "Calls to the model service, by model.", &["model"]),
            mcp_tool_calls: counter(
                "chatkit_mcp_tool_calls_total",
                "Calls of MCP server tools, by outcome: answered, or why one failed.",
                &["outcome"],
            ),
            model_tokens: counter(
                "chatkit_model_tokens_total",
                "Tokens the model service reported, by model and kind (prompt, completion).",
                &["model", "kind"],
            ),
            model_errors: counter("chatkit_model_errors_total", "Failed model calls, by kind.", &["kind"]),
            agent_calls: counter(
                "chatkit_agent_calls_total",
                "Requests to the agent backend, retries included, by operation.",
                &["op"],
            ),
            agent_errors: counter("chatkit_agent_errors_total", "Failed agent operations, by kind.", &["kind"]),
            agent_breaker_open,
            session_cache: counter(
                "chatkit_session_cache_total",
                "Client secrets looked up in the session cache, by result: hit, or miss (read from the store).",
                &["result"],
            ),
            agent_breaker_opens: counter(
                "chatkit_agent_breaker_opens_total",
                "Times an agent's circuit breaker opened (again after a failed trial call), by agent.",
                &["agent"],
            ),
            store_duration: histogram(
                "chatkit_store_operation_seconds",
                "Store operations, by backend and operation.",
                &["backend", "operation"],
            ),
            names: Vec::new(),
            registry,
        };
        let metrics = Metrics { names: names.take(), ..metrics };
        // Label sets known up front are exported at zero, so that dashboards
        // and alerts see the series before the first event.
        for kind in ["turn", "thread_viewer", "history_viewer"] {
            metrics.open_streams.with_label_values(&[kind]);
        }
        for reason in ["locked", "closed", "busy", "rate_limited"] {
            metrics.rejected.with_label_values(&[reason]);
        }
        for kind in [
            "connect",
            "timeout",
            "rate_limited",
            "server",
            "auth",
            "not_found",
            "rejected",
            "broken",
            "unreadable",
            "failed",
            "incomplete",
            "refusal",
        ] {
            metrics.model_errors.with_label_values(&[kind]);
        }
        for op in ["respond", "action", "sync_action", "feedback", "transcribe"] {
            metrics.agent_calls.with_label_values(&[op]);
        }
        for kind in
            ["connect", "timeout", "rate_limited", "server", "refused", "broken", "idle", "invalid", "breaker_open"]
        {
            metrics.agent_errors.with_label_values(&[kind]);
        }
        // The agent of `CHATKIT_AGENT_URL` is labelled `default`; workflow agents add their own series.
        metrics.agent_breaker_open.with_label_values(&["default"]);
        metrics.agent_breaker_opens.with_label_values(&["default"]);
        for outcome in MCP_OUTCOMES {
            metrics.mcp_tool_calls.with_label_values(&[outcome]);
        }
        for topic in ["thread", "user"] {
            metrics.fanout_published.with_label_values(&[topic]);
            metrics.fanout_delivered.with_label_values(&[topic]);
        }
        metrics
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }

    /// The names of every metric family, for checks that dashboards use only these.
    pub fn names(&self) -> Vec<String> {
        self.names.clone()
    }
}

/// Counts a stream as open for as long as it lives.
pub struct OpenStream(&'static str);

impl OpenStream {
    pub fn new(kind: &'static str) -> OpenStream {
        METRICS.open_streams.with_label_values(&[kind]).inc();
        OpenStream(kind)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        METRICS.open_streams.with_label_values(&[self.0]).dec();
    }
}

/// The series a viewer stream touches for every message it delivers, looked up by label once per process rather
/// than once per delivery (a message to 10,000 viewers is 10,000 deliveries).
pub struct DeliveryMetrics {
    delivered: IntCounter,
    latency: Histogram,
}

impl DeliveryMetrics {
    /// Those of thread viewers (`thread`) or of history viewers (`user`).
    pub fn of(thread_topic: bool) -> &'static DeliveryMetrics {
        static THREAD: LazyLock<DeliveryMetrics> = LazyLock::new(|| DeliveryMetrics::labelled("thread"));
        static USER: LazyLock<DeliveryMetrics> = LazyLock::new(|| DeliveryMetrics::labelled("user"));
        if thread_topic {
            &THREAD
        } else {
            &USER
        }
    }

    fn labelled(topic: &str) -> DeliveryMetrics {
        DeliveryMetrics {
            delivered: METRICS.fanout_delivered.with_label_values(&[topic]),
            latency: METRICS.fanout_latency.with_label_values(&[topic]),
        }
    }

    /// Counts one delivery, `latency_seconds` after its publication.
    pub fn record(&self, latency_seconds: f64) {
        self.delivered.inc();
        self.latency.observe(latency_seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_named_once_with_the_prefix() {
        let names = METRICS.names();
        assert_eq!(names.len(), 26, "{names:?}");
        let unique: std::collections::HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        for name in &names {
            assert!(name.starts_with("chatkit_"), "{name}");
            let counter = name.ends_with("_total");
            let rendered = METRICS.render();
            assert!(!counter || rendered.contains(&format!("# TYPE {name} counter")) || !rendered.contains(name));
        }
    }
}
