//! An OTLP/HTTP trace receiver on a free loopback port: a small real HTTP server that decodes each protobuf
//! export (`POST /v1/traces`) and keeps its spans, as a Collector would, for tests that check what the gateway
//! exports.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use prost::Message;
use serde_json::Value;

/// The largest export accepted, so that a broken client cannot exhaust the test's memory.
const MAX_EXPORT: usize = 16 * 1024 * 1024;

/// One exported span, flattened: ids in hex as W3C Trace Context writes them, attributes as JSON values.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// The OTLP `SpanKind`: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    pub attributes: HashMap<String, Value>,
    pub events: Vec<String>,
    /// Its resource's attributes (`service.name`, `service.instance.id`, …).
    pub resource: HashMap<String, Value>,
    /// 2 when the span was marked failed.
    pub status_code: i32,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> &Value {
        self.attributes.get(key).unwrap_or(&Value::Null)
    }

    /// Its resource's `service.instance.id`.
    pub fn instance(&self) -> &str {
        self.resource.get("service.instance.id").and_then(Value::as_str).unwrap_or_default()
    }
}

/// The receiver; it stops accepting when dropped.
pub struct OtlpReceiver {
    port: u16,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    /// How many export requests came, decoded or not, and how many could not be decoded.
    exports: Arc<Mutex<(usize, usize)>>,
    /// The headers of every export request, names in lower case.
    headers: Arc<Mutex<Vec<(String, String)>>>,
    listener: Option<TcpListener>,
}

impl OtlpReceiver {
    pub fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port for the OTLP receiver");
        let port = listener.local_addr().unwrap().port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let exports = Arc::new(Mutex::new((0, 0)));
        let headers = Arc::new(Mutex::new(Vec::new()));
        let accepting = listener.try_clone().unwrap();
        let received = Received { spans: spans.clone(), exports: exports.clone(), headers: headers.clone() };
        std::thread::spawn(move || {
            for connection in accepting.incoming() {
                let Ok(connection) = connection else { return };
                let received = received.clone();
                std::thread::spawn(move || serve(connection, &received));
            }
        });
        OtlpReceiver { port, spans, exports, headers, listener: Some(listener) }
    }

    /// The base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans().into_iter().filter(|span| span.trace_id == trace_id).collect()
    }

    /// The values of header `name` (lower case) across the export requests.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        let headers = self.headers.lock().unwrap();
        headers.iter().filter(|(key, _)| key == name).map(|(_, value)| value.clone()).collect()
    }

    /// (exports received, exports that did not decode).
    pub fn exports(&self) -> (usize, usize) {
        *self.exports.lock().unwrap()
    }

    /// Waits (bounded) until `done` holds of the spans received; the spans then.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[ReceivedSpan]) -> bool) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            let names: Vec<(String, String)> =
                spans.iter().map(|s| (s.instance().to_string(), s.name.clone())).collect();
            assert!(Instant::now() < deadline, "no {what} among the exported spans: {names:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        // Waking the accept loop with a connection of its own ends it once the listener is gone.
        drop(self.listener.take());
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Where the connections' threads put what they receive.
#[derive(Clone)]
struct Received {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    exports: Arc<Mutex<(usize, usize)>>,
    headers: Arc<Mutex<Vec<(String, String)>>>,
}

/// Answers the requests of one keep-alive connection.
fn serve(connection: TcpStream, received: &Received) {
    let _ = connection.set_read_timeout(Some(Duration::from_secs(30)));
    let mut writer = connection.try_clone().unwrap();
    let mut reader = BufReader::new(connection);
    loop {
        let mut length = 0usize;
        let mut first = String::new();
        if reader.read_line(&mut first).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
                received.headers.lock().unwrap().push((name.to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        if length > MAX_EXPORT {
            let _ =
                writer.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            return;
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let decoded =
            first.starts_with("POST /v1/traces").then(|| ExportTraceServiceRequest::decode(&body[..]).ok()).flatten();
        {
            let mut counts = received.exports.lock().unwrap();
            counts.0 += 1;
            counts.1 += usize::from(decoded.is_none());
        }
        let status = match decoded {
            Some(export) => {
                received.spans.lock().unwrap().extend(flatten(export));
                "200 OK"
            }
            None => "400 Bad Request",
        };
        let head = format!("HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
        if writer.write_all(head.as_bytes()).is_err() {
            return;
        }
    }
}

fn flatten(export: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut spans = Vec::new();
    for resource_spans in export.resource_spans {
        let resource = resource_spans.resource.map(|resource| attributes(resource.attributes)).unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(ReceivedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    attributes: attributes(span.attributes),
                    events: span.events.into_iter().map(|event| event.name).collect(),
                    resource: resource.clone(),
                    status_code: span.status.map_or(0, |status| status.code),
                });
            }
        }
    }
    spans
}

fn attributes(pairs: Vec<KeyValue>) -> HashMap<String, Value> {
    pairs
        .into_iter()
        .map(|pair| {
            let value = match pair.value.and_then(|value| value.value) {
                Some(any_value::Value::StringValue(text)) => Value::from(text),
                Some(any_value::Value::IntValue(number)) => Value::from(number),
                Some(any_value::Value::DoubleValue(number)) => Value::from(number),
                Some(any_value::Value::BoolValue(flag)) => Value::from(flag),
                Some(other) => Value::from(format!("{other:?}")),
                None => Value::Null,
            };
            (pair.key, value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
