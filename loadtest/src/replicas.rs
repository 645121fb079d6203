//! The gateway replicas that the multi-replica scenarios (fanout, mixed) spread over, and the setup they share.
//!
//! Requests go over kept keep-alive connections, pooled per replica; every viewer stream gets a connection of its
//! own, which closes with the stream.

use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::Endpoint;
use crate::report::ErrorKind;
use crate::scenario::{describe, open_connection, read_refusal, send_and_read, user_input, Expect, Outcome};

/// File descriptors a run needs beside one per viewer: request and setup connections, the runtime, stdio.
const SPARE_FDS: u64 = 512;
/// Upper bound on the result shards viewers and senders record into, as in the request scenarios.
pub const MAX_SHARDS: usize = 64;
/// Threads being created at once during setup.
pub const CREATE_CONCURRENCY: usize = 32;
/// How often the progress line is printed.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// A delivery at least this late counts as slow in the timeline.
pub const SLOW_DELIVERY: Duration = Duration::from_millis(100);
/// Lost deliveries the report lists one by one.
pub const LOST_SAMPLES: usize = 20;

/// Prints a line on stderr, first clearing the progress line when stderr is a terminal.
pub fn say(message: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("\r\x1b[2K{message}");
    } else {
        eprintln!("{message}");
    }
}

/// Microseconds since the Unix epoch, the clock that markers carry.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_micros() as u64)
}

/// A lock whose poisoning only means another task panicked; the counts under it are still sound.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// CPU time this process has used so far, user and system, in seconds; `None` where `/proc` does not say.
pub fn cpu_seconds() -> Option<f64> {
    cpu_seconds_at("/proc/self/stat")
}

/// The CPU time, user and system, that the processes `pids` have used so far, in seconds; `None` when one of
/// them is gone or this is not Linux.
pub fn cpu_seconds_of(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|pid| cpu_seconds_at(&format!("/proc/{pid}/stat"))).sum()
}

fn cpu_seconds_at(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name in parentheses may hold spaces; the fields after it start with the state (field 3), so user
    // time (field 14) and system time (field 15) come 11 and 12 places later.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    // Linux counts these in USER_HZ, which is 100 on every architecture it supports.
    Some((user + system) as f64 / 100.0)
}

/// Refuses a run this process cannot hold open, naming the fix, rather than failing midway with EMFILE.
pub fn check_fd_limit(viewers: u32) -> Result<(), String> {
    // Only Linux says it this way; elsewhere the run goes ahead unchecked.
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else { return Ok(()) };
    let soft = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|value| value.parse::<u64>().ok());
    let needed = u64::from(viewers) + SPARE_FDS;
    match soft {
        Some(soft) if soft < needed => Err(format!(
            "{viewers} viewers need about {needed} open files, but this process may open {soft}; \
             raise the limit first (for example `ulimit -n {needed}`)"
        )),
        _ => Ok(()),
    }
}

/// Runs `make(0..count)` with at most `concurrency` under way at once and answers the results in index order, or the
/// first error.
pub async fn in_parallel<T, F, Fut>(count: u32, concurrency: usize, make: F) -> Result<Vec<T>, String>
where
    T: Send + 'static,
    F: Fn(u32) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, String>> + Send + 'static,
{
    let next = Arc::new(AtomicU32::new(0));
    let make = Arc::new(make);
    let mut workers: JoinSet<Result<Vec<(u32, T)>, String>> = JoinSet::new();
    for _ in 0..concurrency.clamp(1, count.max(1) as usize) {
        let (next, make) = (Arc::clone(&next), Arc::clone(&make));
        workers.spawn(async move {
            let mut made = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    return Ok(made);
                }
                made.push((index, make(index).await?));
            }
        });
    }
    let mut results: Vec<Option<T>> = (0..count).map(|_| None).collect();
    while let Some(joined) = workers.join_next().await {
        let made = joined.map_err(|e| format!("a setup task failed: {e}"))??;
        for (index, result) in made {
            results[index as usize] = Some(result);
        }
    }
    results.into_iter().enumerate().map(|(i, r)| r.ok_or_else(|| format!("item {i} was not made"))).collect()
}

/// One gateway replica: where to connect, and its idle keep-alive connections.
struct Replica {
    endpoint: Endpoint,
    host: HeaderValue,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

/// The replicas of one run, with what every request to them shares.
pub struct Pool {
    replicas: Vec<Replica>,
    user_header: HeaderName,
    timeout: Duration,
    json: HeaderValue,
    event_stream: HeaderValue,
    /// Connections opened over the whole run.
    connections: AtomicU64,
}

impl Pool {
    pub fn new(endpoints: &[Endpoint], user_header: HeaderName, timeout: Duration) -> Result<Self, String> {
        let replicas = endpoints
            .iter()
            .map(|endpoint| {
                let host = HeaderValue::from_str(&endpoint.authority).map_err(|e| e.to_string())?;
                Ok(Replica { endpoint: endpoint.clone(), host, idle: Mutex::new(Vec::new()) })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Pool {
            replicas,
            user_header,
            timeout,
            json: HeaderValue::from_static("application/json"),
            event_stream: HeaderValue::from_static("text/event-stream"),
            connections: AtomicU64::new(0),
        })
    }

    /// How many replicas there are.
    pub fn count(&self) -> usize {
        self.replicas.len()
    }

    /// The replicas' `host:port`, in the order of `--url`.
    pub fn authorities(&self) -> Vec<String> {
        self.replicas.iter().map(|replica| replica.endpoint.authority.clone()).collect()
    }

    /// The limit on one request, or on opening one stream.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Connections opened so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Posts a JSON body on a kept connection to `replica` and reads the whole answer, within the request timeout.
    pub async fn post(&self, replica: usize, path: &str, user: &HeaderValue, body: &Value, expect: Expect) -> Outcome {
        let limit = self.timeout;
        match tokio::time::timeout(limit, self.post_unbounded(replica, path, user, body, expect)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Failed(ErrorKind::Timeout, format!("no complete answer within {limit:?}")),
        }
    }

    async fn post_unbounded(
        &self,
        replica: usize,
        path: &str,
        user: &HeaderValue,
        body: &Value,
        expect: Expect,
    ) -> Outcome {
        let start = Instant::now();
        let replica = &self.replicas[replica];
        let mut connection = match self.kept_connection(replica).await {
            Ok(connection) => connection,
            Err(detail) => return Outcome::Failed(ErrorKind::Transport, detail),
        };
        let body = serde_json::to_vec(body).expect("a JSON value serializes");
        let request = match Request::post(path)
            .header(HOST, &replica.host)
            .header(CONTENT_TYPE, &self.json)
            .header(&self.user_header, user)
            .body(Full::new(Bytes::from(body)))
        {
            Ok(request) => request,
            Err(e) => return Outcome::Failed(ErrorKind::Transport, format!("cannot build a request for {path}: {e}")),
        };
        let (outcome, read_to_end) = send_and_read(&mut connection, request, expect, start).await;
        if read_to_end {
            lock(&replica.idle).push(connection);
        }
        outcome
    }

    /// An idle connection to `replica` that can take a request, or a new one.
    async fn kept_connection(&self, replica: &Replica) -> Result<SendRequest<Full<Bytes>>, String> {
        loop {
            let Some(mut connection) = lock(&replica.idle).pop() else { break };
            // `ready` fails only when the server closed the connection while it was idle.
            if connection.ready().await.is_ok() {
                return Ok(connection);
            }
        }
        open_connection(replica.endpoint.addr, &self.connections).await
    }

    /// Connects to `replica` and asks for the event stream at `path`, up to a 200 with the event-stream type; the
    /// connection must be kept as long as the stream is read.
    pub async fn open_stream(
        &self,
        replica: usize,
        path: &str,
        user: &HeaderValue,
    ) -> Result<(SendRequest<Full<Bytes>>, Response<Incoming>), (ErrorKind, String)> {
        let replica = &self.replicas[replica];
        let mut connection =
            open_connection(replica.endpoint.addr, &self.connections).await.map_err(|e| (ErrorKind::Transport, e))?;
        let request = Request::get(path)
            .header(HOST, &replica.host)
            .header(ACCEPT, &self.event_stream)
            .header(&self.user_header, user)
            .body(Full::new(Bytes::new()))
            .map_err(|e| (ErrorKind::Transport, format!("cannot build the request: {e}")))?;
        let response = connection
            .send_request(request)
            .await
            .map_err(|e| (ErrorKind::Transport, format!("request failed: {}", describe(&e))))?;
        if response.status() != StatusCode::OK {
            return match read_refusal(response).await.0 {
                Outcome::Failed(kind, detail) => Err((kind, detail)),
                _ => Err((ErrorKind::BadStream, "refused without a reason".into())),
            };
        }
        let content_type = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !content_type.starts_with("text/event-stream") {
            return Err((ErrorKind::BadStream, format!("content type is `{content_type}`, not text/event-stream")));
        }
        Ok((connection, response))
    }

    /// Creates a thread for `user` through `replica`, with `text` as its first message, and answers its id, checked to
    /// fit in a URL path as it is.
    pub async fn create_thread(&self, replica: usize, user: &HeaderValue, text: &str) -> Result<String, String> {
        let create = json!({"type": "threads.create", "params": {"input": user_input(text)}});
        let id = match self.post(replica, "/chatkit", user, &create, Expect::Create).await {
            Outcome::Ok { thread_id: Some(id), .. } => id,
            Outcome::Ok { thread_id: None, .. } => return Err("threads.create returned no thread id".into()),
            Outcome::Failed(kind, detail) => return Err(format!("threads.create failed ({}): {detail}", kind.key())),
            Outcome::Cut => return Err("threads.create was cut off".into()),
        };
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(format!("thread id `{id}` does not fit in a URL path as it is"));
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_cpu_time_on_linux() {
        if cfg!(target_os = "linux") {
            let used = cpu_seconds().expect("Linux has /proc/self/stat");
            assert!((0.0..1e6).contains(&used), "{used}");
            let me = std::process::id();
            let twice = cpu_seconds_of(&[me, me]).expect("this process is there");
            assert!(twice >= 2.0 * used && twice < 2.0 * used + 1.0, "{twice} is about twice {used}");
            assert_eq!(cpu_seconds_of(&[me, u32::MAX]), None, "a process that is not there");
        }
    }

    #[tokio::test]
    async fn runs_every_index_once_and_answers_in_order() {
        let made = in_parallel(50, 7, |i| async move { Ok::<_, String>(i * 2) }).await.unwrap();
        assert_eq!(made, (0..50).map(|i| i * 2).collect::<Vec<_>>());
        let none = in_parallel(0, 7, |i| async move { Ok::<_, String>(i) }).await.unwrap();
        assert!(none.is_empty());
        let failed = in_parallel(10, 3, |i| async move {
            if i == 4 {
                Err("four".to_string())
            } else {
                Ok(i)
            }
        })
        .await;
        assert_eq!(failed, Err("four".to_string()));
    }
}
