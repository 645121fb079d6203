//! Viewer streams as the multi-replica scenarios run them: every one opened, with bounded concurrency, before the load
//! starts (a fresh stream starts at the present), then read until the run tells them to stop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::header::HeaderValue;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::replicas::{now_us, say, Pool};
use crate::report::ErrorKind;
use crate::scenario::describe;
use crate::sse::SseParser;

/// How long stopped viewers get to wrap up before they are abandoned.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How the viewers stand, for the progress line and the checks after opening.
#[derive(Default)]
pub struct ViewerProgress {
    pub opened: AtomicU64,
    pub open_failed: AtomicU64,
    /// Open streams that ended before the run told them to stop.
    pub streams_ended: AtomicU64,
}

/// What a scenario does with one viewer stream: where it opens, and what it makes of each event.
pub trait Listener: Send + 'static {
    fn pool(&self) -> &Pool;
    fn progress(&self) -> &ViewerProgress;
    /// The replica, the path and the user of the stream.
    fn target(&self) -> (usize, String, HeaderValue);
    /// Counts the stream as open, before the run learns that it is.
    fn record_opened(&self);
    /// Counts a failure: `open_<kind>` for a stream that did not open, `stream_closed` or `stream_broken` for one that
    /// ended before the run did.
    fn record_error(&self, key: String, detail: &str);
    /// Records one event: its name (empty for a plain `data:` event), its data and when its chunk arrived.
    fn observe(&mut self, name: &[u8], data: &[u8], received_us: u64);
    /// Called once when the stream is over: `ended` when it ended before the run told it to stop.
    fn finish(&mut self, ended: bool);
}

/// Starts every listener's stream, at most `open_concurrency` opening at once, and waits until each has opened or
/// failed, or `deadline` passes; the streams then read until `stop` turns true.
///
/// The error says why setup is abandoned: a deadline passed or a viewer task vanished. A run in which some (or even
/// all) streams failed to open is not an error here; the counts in `progress` say so.
pub async fn open_all<L: Listener>(
    listeners: Vec<L>,
    progress: &ViewerProgress,
    open_concurrency: u32,
    stop: watch::Receiver<bool>,
    deadline: Instant,
) -> (JoinSet<()>, Result<(), String>) {
    let total = listeners.len();
    let permits = Arc::new(Semaphore::new(open_concurrency.max(1) as usize));
    let (opened_tx, mut opened_rx) = mpsc::channel::<bool>(total.max(1));
    let mut viewers = JoinSet::new();
    let started = Instant::now();
    for listener in listeners {
        let (permits, opened_tx, stop) = (Arc::clone(&permits), opened_tx.clone(), stop.clone());
        viewers.spawn(watch_stream(listener, permits, opened_tx, stop));
    }
    drop(opened_tx);
    let mut reported = 0;
    while reported < total {
        match tokio::time::timeout_at(deadline, opened_rx.recv()).await {
            Ok(Some(_)) => reported += 1,
            Ok(None) => return (viewers, Err("a viewer stopped before reporting whether it opened".into())),
            Err(_) => {
                let message = format!(
                    "setup timed out: {} of {total} viewers open and {} failed after {:.1} s of opening",
                    progress.opened.load(Ordering::Relaxed),
                    progress.open_failed.load(Ordering::Relaxed),
                    started.elapsed().as_secs_f64()
                );
                return (viewers, Err(message));
            }
        }
    }
    (viewers, Ok(()))
}

/// Tells every viewer to stop and waits a little for them to wrap up, abandoning those that do not.
pub async fn stop_all(mut viewers: JoinSet<()>, stop: &watch::Sender<bool>) {
    stop.send_replace(true);
    let stopped = tokio::time::timeout(STOP_GRACE, async { while viewers.join_next().await.is_some() {} }).await;
    if stopped.is_err() {
        say(&format!("chatkit-loadtest: some viewers did not stop within {STOP_GRACE:?}; abandoning them"));
        viewers.abort_all();
    }
}

/// One viewer: opens its stream within the request timeout, says whether it opened, then reads it to the stop.
async fn watch_stream<L: Listener>(
    mut listener: L,
    permits: Arc<Semaphore>,
    opened: mpsc::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(permit) = permits.acquire_owned().await else { return };
    let (replica, path, user) = listener.target();
    let timeout = listener.pool().timeout();
    let open = tokio::time::timeout(timeout, listener.pool().open_stream(replica, &path, &user))
        .await
        .unwrap_or_else(|_| Err((ErrorKind::Timeout, format!("no response head within {timeout:?}"))));
    drop(permit);
    let (connection, response) = match open {
        Ok(open) => open,
        Err((kind, detail)) => {
            listener.record_error(format!("open_{}", kind.key()), &detail);
            listener.progress().open_failed.fetch_add(1, Ordering::Relaxed);
            let _ = opened.send(false).await;
            return;
        }
    };
    // Counted before it is reported, so the count is complete once every viewer has reported.
    listener.record_opened();
    listener.progress().opened.fetch_add(1, Ordering::Relaxed);
    let _ = opened.send(true).await;
    drop(opened);

    let mut body = response.into_body();
    let mut parser = SseParser::new();
    let ended = loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break None,
            frame = body.frame() => match frame {
                None => break Some(("stream_closed", "the gateway ended the stream".to_string())),
                Some(Err(e)) => break Some(("stream_broken", format!("stream broke off: {}", describe(&e)))),
                Some(Ok(frame)) => {
                    let Ok(chunk) = frame.into_data() else { continue };
                    let received_us = now_us();
                    parser.feed_named(&chunk, |name, data| listener.observe(name, data, received_us));
                }
            },
        }
    };
    if let Some((key, detail)) = &ended {
        listener.progress().streams_ended.fetch_add(1, Ordering::Relaxed);
        listener.record_error(key.to_string(), detail);
    }
    listener.finish(ended.is_some());
    // The connection lives as long as the stream was read, then closes with it.
    drop(connection);
}
