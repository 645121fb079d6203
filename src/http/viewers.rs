//! Viewer streams: live Server-Sent Events of one thread's changes
//! (`GET /chatkit/threads/{thread_id}/events`) and of a user's thread history
//! (`GET /chatkit/events`), whoever made them and on whichever replica.
//!
//! Every message carries an `id:` from its topic's sequence. ChatKit events
//! are plain `data:` frames, so a client parses them with its turn-stream
//! types; control messages are named events (`resync`, `thread.deleted`), and
//! heartbeats are comments. A fresh stream starts at the present (plus the
//! in-progress items of a running turn): open it, then fetch the thread.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{CacheControl, CacheDirective};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::Stream;
use serde_json::value::RawValue;
use tokio::sync::{broadcast, watch};

use super::{identify, ApiError, Identity, State};
use crate::fanout::hub::Received;
use crate::fanout::now_us;
use crate::fanout::{CatchUp, Delivery, FanoutError, MessageKind, SequencedMessage, Subscription, Topic};
use crate::sessions::ActiveSession;
use crate::telemetry::metrics::{DeliveryMetrics, OpenStream};

/// `GET /chatkit/threads/{thread_id}/events`.
pub async fn thread_events(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    let Identity { user, session } = identify(&request, &state).await?;
    let thread_id = path.into_inner();
    let last = last_event_id(&request)?;
    state.engine.check_viewer(&user, &thread_id).await?;
    Ok(open(&state, Topic::Thread(thread_id), last, session).await)
}

/// `GET /chatkit/events`.
pub async fn history_events(request: HttpRequest, state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    let Identity { user, session } = identify(&request, &state).await?;
    let last = last_event_id(&request)?;
    Ok(open(&state, Topic::User(user), last, session).await)
}

fn last_event_id(request: &HttpRequest) -> Result<Option<u64>, ApiError> {
    let Some(value) = request.headers().get("last-event-id") else { return Ok(None) };
    let text = value.to_str().unwrap_or("").trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        ApiError::bad_request(format!("`Last-Event-ID` must be an event id from this stream (a number), got `{text}`"))
    })
}

/// Subscribes before answering, so that once the response head arrives the
/// viewer receives everything published after.
async fn open(state: &State, topic: Topic, last: Option<u64>, session: Option<Arc<ActiveSession>>) -> HttpResponse {
    // Listening for session ends starts before anything else, so none is missed.
    let session = session.map(|session| SessionWatch {
        expires: tokio::time::Instant::now() + session.remaining(),
        id: session.id.clone(),
        ended: state.sessions.ended(),
    });
    let (subscription, catch_up) = state.engine.watch(&topic, last).await;
    let closes_on_delete = matches!(topic, Topic::Thread(_));
    let kind = if closes_on_delete { "thread_viewer" } else { "history_viewer" };
    let ends = Ends { closing: state.closing.clone(), session, open: OpenStream::new(kind) };
    let frames = frames(subscription, catch_up, last, state.heartbeats.clone(), ends, closes_on_delete);
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(CacheControl(vec![CacheDirective::NoCache]))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(frames)
}

fn frames(
    mut subscription: Subscription,
    catch_up: Result<CatchUp, FanoutError>,
    last: Option<u64>,
    mut heartbeats: watch::Receiver<u64>,
    ends: Ends,
    closes_on_delete: bool,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    let Ends { mut closing, mut session, open } = ends;
    let metrics = DeliveryMetrics::of(closes_on_delete);
    // The first heartbeat is the next tick after opening, not one that came before.
    heartbeats.borrow_and_update();
    async_stream::stream! {
        // The highest sequence number this viewer has; later copies are skipped.
        let mut delivered = last.unwrap_or(0);
        match catch_up {
            Err(error) => {
                tracing::warn!(%error, "viewer joined while fan-out is unavailable");
                yield Ok(resync("unavailable", None));
            }
            Ok(catch_up) => {
                let head = catch_up.head.max(catch_up.history.last().map_or(0, |m| m.seq));
                match (last, &catch_up.snapshot) {
                    (Some(after), _) => match catch_up.since(after) {
                        Some(missed) => {
                            for message in &missed {
                                yield Ok(frame(message));
                            }
                            delivered = missed.last().map_or(after, |m| m.seq);
                        }
                        None => {
                            yield Ok(resync("gap", Some(head)));
                            delivered = head;
                        }
                    },
                    (None, Some(snapshot)) => {
                        // A turn is running: its items as they stand, then what followed.
                        for added in snapshot_frames(snapshot.seq, &snapshot.items) {
                            yield Ok(added);
                        }
                        delivered = snapshot.seq;
                        match catch_up.since(snapshot.seq) {
                            Some(rest) => {
                                for message in &rest {
                                    yield Ok(frame(message));
                                }
                                delivered = rest.last().map_or(delivered, |m| m.seq);
                            }
                            None => {
                                yield Ok(resync("gap", Some(head)));
                                delivered = head;
                            }
                        }
                    }
                    (None, None) => delivered = head,
                }
            }
        }
        let _open = open;
        loop {
            // In this order: the ends first, so that a busy stream still closes on them; a
            // heartbeat only when nothing else is ready, since any message keeps the stream alive.
            tokio::select! {
                biased;
                _ = closing.wait_for(|closing| *closing) => {
                    // The replica is stopping: reconnect (through the load
                    // balancer, to another replica) after a second.
                    yield Ok(Bytes::from_static(b"retry: 1000\n: closing\n\n"));
                    break;
                }
                reason = session_ended(&mut session) => {
                    // The session's secret no longer works: neither does its stream.
                    yield Ok(Bytes::from(format!("event: session.ended\ndata: {{\"reason\":\"{reason}\"}}\n\n")));
                    break;
                }
                received = subscription.recv() => match received {
                    Received::Delivery(Delivery::Message(message)) => {
                        if message.seq <= delivered {
                            continue;
                        }
                        delivered = message.seq;
                        metrics.record(now_us().saturating_sub(message.sent_at_us) as f64 / 1e6);
                        // Framed by the first viewer on this replica; the others share its bytes.
                        yield Ok(message.rendered(frame));
                        if closes_on_delete && message.kind == MessageKind::Deleted {
                            break;
                        }
                    }
                    Received::Delivery(Delivery::Resync) => yield Ok(resync("fanout", None)),
                    Received::Lagged => {
                        // Too slow to keep up: say so and close, rather than
                        // slow the others or skip events silently.
                        yield Ok(resync("lagged", None));
                        break;
                    }
                },
                // The sender lives as long as the server's state, so an error only means it is stopping.
                Ok(()) = heartbeats.changed() => yield Ok(Bytes::from_static(HEARTBEAT)),
            }
        }
    }
}

/// What ends a viewer stream besides its client: the replica stopping, and
/// (with session auth) its session expiring or being cancelled.
struct Ends {
    closing: watch::Receiver<bool>,
    session: Option<SessionWatch>,
    /// Counts the stream in `chatkit_open_streams` while it lives.
    open: OpenStream,
}

struct SessionWatch {
    id: String,
    expires: tokio::time::Instant,
    ended: broadcast::Receiver<String>,
}

/// Resolves with `expired` or `cancelled` when the stream's session ends;
/// never without a session.
async fn session_ended(session: &mut Option<SessionWatch>) -> &'static str {
    {
        let Some(watch) = session.as_mut() else { return std::future::pending().await };
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(watch.expires) => return "expired",
                ended = watch.ended.recv() => match ended {
                    Ok(id) if id == watch.id => return "cancelled",
                    Ok(_) => {}
                    // Missed notices may have been this session's: close, and
                    // let the client reconnect with its secret if it still works.
                    Err(broadcast::error::RecvError::Lagged(_)) => return "unknown",
                    Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
                },
            }
        }
    }
}

/// What an idle stream receives at every heartbeat: a comment.
const HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// Starts the one heartbeat clock of this replica and answers its ticks, which every viewer stream waits on: a
/// shared clock costs one timer, where one per stream cost a timer each (about 19,000 on a busy replica). It stops
/// when nothing listens any more.
pub fn heartbeat_ticks(every: Duration) -> watch::Receiver<u64> {
    let (ticks, receiver) = watch::channel(0u64);
    tokio::spawn(async move {
        let mut clock = tokio::time::interval(every);
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        clock.tick().await;
        for tick in 1u64.. {
            clock.tick().await;
            if ticks.send(tick).is_err() {
                return;
            }
        }
    });
    receiver
}

/// One message: a ChatKit event as a plain `data:` frame, a deletion as a named event. Made once per message and
/// replica (see `SequencedMessage::rendered`), so its allocation is not per viewer.
fn frame(message: &SequencedMessage) -> Bytes {
    let event = match message.kind {
        MessageKind::Event => "",
        MessageKind::Deleted => "event: thread.deleted\n",
    };
    Bytes::from(format!("id: {}\n{event}data: {}\n\n", message.seq, message.body))
}

/// `event: resync`: the viewer must refetch what it shows.
fn resync(reason: &str, id: Option<u64>) -> Bytes {
    let id = id.map(|id| format!("id: {id}\n")).unwrap_or_default();
    Bytes::from(format!("{id}event: resync\ndata: {{\"reason\":\"{reason}\"}}\n\n"))
}

/// The in-progress items of a running turn, each as a `thread.item.added`
/// carrying its content so far.
fn snapshot_frames(seq: u64, items: &str) -> Vec<Bytes> {
    let items: Vec<Box<RawValue>> = match serde_json::from_str(items) {
        Ok(items) => items,
        Err(error) => {
            tracing::error!(%error, "ignoring a malformed in-progress snapshot");
            return Vec::new();
        }
    };
    items
        .iter()
        .map(|item| {
            Bytes::from(format!("id: {seq}\ndata: {{\"type\":\"thread.item.added\",\"item\":{}}}\n\n", item.get()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use futures_util::StreamExt;

    use super::*;
    use crate::fanout::Hub;

    type Frames = Pin<Box<dyn Stream<Item = Result<Bytes, Infallible>>>>;

    fn open(hub: &Arc<Hub>, beats: &watch::Sender<u64>, closing: &watch::Sender<bool>) -> Frames {
        let (subscription, _) = hub.join("ck:{t:thr_1}");
        let ends = Ends { closing: closing.subscribe(), session: None, open: OpenStream::new("thread_viewer") };
        Box::pin(frames(subscription, Ok(CatchUp::default()), None, beats.subscribe(), ends, true))
    }

    async fn next(stream: &mut Frames) -> Bytes {
        stream.next().await.expect("the stream goes on").expect("infallible")
    }

    #[tokio::test]
    async fn every_viewer_of_a_message_gets_the_same_bytes_framed_once() {
        let hub = Hub::new(8, None);
        let (beats, closing) = (watch::channel(0).0, watch::channel(false).0);
        let (mut first, mut second) = (open(&hub, &beats, &closing), open(&hub, &beats, &closing));
        let message = SequencedMessage::new(7, now_us(), MessageKind::Event, r#"{"type":"thread.updated"}"#.into());
        hub.deliver("ck:{t:thr_1}", Delivery::Message(Arc::new(message)));
        let (a, b) = (next(&mut first).await, next(&mut second).await);
        assert_eq!(&a[..], b"id: 7\ndata: {\"type\":\"thread.updated\"}\n\n");
        assert_eq!(a.as_ptr(), b.as_ptr(), "one frame shared, not one per viewer");

        let deleted = SequencedMessage::new(8, now_us(), MessageKind::Deleted, r#"{"thread_id":"thr_1"}"#.into());
        hub.deliver("ck:{t:thr_1}", Delivery::Message(Arc::new(deleted)));
        let (a, b) = (next(&mut first).await, next(&mut second).await);
        assert_eq!(&a[..], b"id: 8\nevent: thread.deleted\ndata: {\"thread_id\":\"thr_1\"}\n\n");
        assert_eq!(a, b);
        assert!(first.next().await.is_none(), "a deleted thread's stream ends");
    }

    #[tokio::test]
    async fn idle_streams_beat_at_each_tick_of_the_shared_clock_and_close_on_shutdown() {
        let hub = Hub::new(8, None);
        let (beats, closing) = (watch::channel(0).0, watch::channel(false).0);
        beats.send_replace(3);
        let (mut first, mut second) = (open(&hub, &beats, &closing), open(&hub, &beats, &closing));
        // A tick from before a stream opened is not its heartbeat: the next thing it sends is the message.
        let message = SequencedMessage::new(1, now_us(), MessageKind::Event, "{}".into());
        hub.deliver("ck:{t:thr_1}", Delivery::Message(Arc::new(message)));
        assert_eq!(&next(&mut first).await[..], b"id: 1\ndata: {}\n\n");
        beats.send_replace(4);
        assert_eq!(&next(&mut first).await[..], b": heartbeat\n\n");
        assert_eq!(&next(&mut second).await[..], b"id: 1\ndata: {}\n\n");
        assert_eq!(&next(&mut second).await[..], b": heartbeat\n\n");
        closing.send_replace(true);
        assert_eq!(&next(&mut first).await[..], b"retry: 1000\n: closing\n\n");
        assert!(first.next().await.is_none());
    }

    #[tokio::test]
    async fn the_replica_clock_counts_its_ticks() {
        let mut ticks = heartbeat_ticks(Duration::from_millis(5));
        assert_eq!(*ticks.borrow(), 0, "no tick at the start");
        ticks.changed().await.unwrap();
        assert_eq!(*ticks.borrow_and_update(), 1);
        ticks.changed().await.unwrap();
        assert_eq!(*ticks.borrow(), 2);
    }
}
