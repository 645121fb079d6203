//! The subscriber task: one pub/sub connection per replica, subscribed to the
//! control channel and to the channels local viewers watch; it hands messages
//! to the hub and control messages to their receivers, and reconnects with
//! backoff.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::connection::{
    CommandConnection, ConnectionStatus, RedisClient, CONNECT_TIMEOUT, MAX_BACKOFF, MIN_BACKOFF, RESPONSE_TIMEOUT,
};
use super::{CANCEL_REQUEST, CONTROL, LEASE_WANTED, RESYNC_NOTICE, SESSION_ENDED};
use crate::fanout::{Delivery, Hub, SequencedMessage};
use crate::telemetry::metrics::METRICS;

/// How often subscriptions without local viewers are dropped.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// What the rest of the backend asks of the subscriber task.
/// Waits out one back-off pause while the subscriber cannot connect, and answers the doubled
/// pause for the next failure. Viewers joining meanwhile are acknowledged at once: their channel
/// is in the hub, so they are served when the connection returns, with a `resync` then.
pub(super) async fn wait_out(
    backoff: Duration,
    commands: &mut mpsc::Receiver<SubscriberCommand>,
    emptied: &mut mpsc::Receiver<String>,
) -> Duration {
    let pause = tokio::time::sleep(backoff);
    tokio::pin!(pause);
    loop {
        tokio::select! {
            _ = &mut pause => break,
            Some(SubscriberCommand::Subscribe(_, ack)) = commands.recv() => { let _ = ack.send(()); }
            Some(_) = emptied.recv() => {}
        }
    }
    (backoff * 2).min(MAX_BACKOFF)
}

pub(super) enum SubscriberCommand {
    /// Subscribe to the channel, then acknowledge.
    Subscribe(String, oneshot::Sender<()>),
}

/// The subscriber task, with what it shares with the rest of the backend.
pub(super) struct Subscriber {
    pub client: RedisClient,
    /// The command and publication connections, told to reconnect at once when this one does.
    pub connections: [Arc<CommandConnection>; 2],
    pub hub: Arc<Hub>,
    pub status: Arc<ConnectionStatus>,
    pub cancels: broadcast::Sender<String>,
    pub lease_wanted: broadcast::Sender<String>,
    pub session_ends: broadcast::Sender<String>,
    pub ping_every: Duration,
}

impl Subscriber {
    /// Holds the subscriber connection: follows local viewers' channels, hands
    /// messages to the hub, and reconnects with backoff.
    pub async fn run(self, commands: mpsc::Receiver<SubscriberCommand>, emptied: mpsc::Receiver<String>) {
        let client = match &self.client {
            RedisClient::Single(client) => client.clone(),
            RedisClient::Cluster { nodes, .. } => {
                let nodes = nodes.clone();
                return self.run_cluster(nodes, commands, emptied).await;
            }
        };
        self.run_single(client, commands, emptied).await
    }

    /// The subscriber connection to one Redis server.
    async fn run_single(
        self,
        client: redis::Client,
        mut commands: mpsc::Receiver<SubscriberCommand>,
        mut emptied: mpsc::Receiver<String>,
    ) {
        let hub = &self.hub;
        let status = &self.status;
        let mut backoff = MIN_BACKOFF;
        let mut connected_before = false;
        loop {
            let connected = match tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub()).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err("timed out connecting to Redis".to_string()),
            };
            let pubsub = match connected {
                Ok(pubsub) => pubsub,
                Err(error) => {
                    status.down(&error);
                    backoff = wait_out(backoff, &mut commands, &mut emptied).await;
                    continue;
                }
            };
            let (mut sink, mut stream) = pubsub.split();
            let mut subscribed: HashSet<String> = hub.channels().into_iter().collect();
            let mut wanted: Vec<String> = subscribed.iter().cloned().collect();
            wanted.push(CONTROL.to_string());
            if let Err(error) = sink.subscribe(&wanted).await {
                status.down(&error);
                tokio::time::sleep(backoff).await;
                continue;
            }
            backoff = MIN_BACKOFF;
            self.came_back(connected_before);
            connected_before = true;
            let mut sweep = tokio::time::interval(SWEEP_EVERY);
            sweep.tick().await;
            let mut ping = tokio::time::interval(self.ping_every);
            ping.tick().await;
            let error = loop {
                tokio::select! {
                    message = stream.next() => {
                        let Some(message) = message else { break "subscriber connection closed".to_string() };
                        let channel = message.get_channel_name();
                        let Ok(payload) = std::str::from_utf8(message.get_payload_bytes()) else { continue };
                        self.received(channel, payload);
                    }
                    Some(command) = commands.recv() => {
                        let mut acks = Vec::new();
                        let mut fresh = Vec::new();
                        let mut next = Some(command);
                        // Subscribes everything queued in one command.
                        while let Some(SubscriberCommand::Subscribe(channel, ack)) = next {
                            if subscribed.insert(channel.clone()) {
                                fresh.push(channel);
                            }
                            acks.push(ack);
                            next = commands.try_recv().ok();
                        }
                        if !fresh.is_empty() {
                            if let Err(error) = sink.subscribe(&fresh).await {
                                for ack in acks {
                                    let _ = ack.send(());
                                }
                                break error.to_string();
                            }
                        }
                        for ack in acks {
                            let _ = ack.send(());
                        }
                    }
                    Some(channel) = emptied.recv() => {
                        if !hub.has_viewers(&channel) && subscribed.remove(&channel) {
                            if let Err(error) = sink.unsubscribe(&channel).await {
                                break error.to_string();
                            }
                        }
                    }
                    _ = ping.tick() => {
                        // A silent network partition never closes the stream; a ping notices it.
                        match tokio::time::timeout(RESPONSE_TIMEOUT, sink.ping::<redis::Value>()).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(error)) => break error.to_string(),
                            Err(_) => break "Redis did not answer a ping".to_string(),
                        }
                    }
                    _ = sweep.tick() => {
                        let idle: Vec<String> = subscribed.iter().filter(|c| !hub.has_viewers(c)).cloned().collect();
                        for channel in &idle {
                            subscribed.remove(channel);
                        }
                        if !idle.is_empty() {
                            if let Err(error) = sink.unsubscribe(&idle).await {
                                break error.to_string();
                            }
                        }
                    }
                }
            };
            tracing::warn!(%error, "Redis fan-out connection lost; reconnecting");
            status.down(&error);
            hub.resync_all();
        }
    }

    /// The subscriber connection is up: after a loss, the command connections
    /// retry at once and viewers resync.
    pub(super) fn came_back(&self, after_loss: bool) {
        if after_loss {
            // Before the flag: whatever was cached under the old epoch must not be trusted once it is up.
            self.status.notice_losses.fetch_add(1, Ordering::SeqCst);
        }
        self.status.subscribed.store(true, Ordering::SeqCst);
        METRICS.redis_connected.set(1);
        if after_loss {
            self.status.reconnects.fetch_add(1, Ordering::Relaxed);
            METRICS.redis_reconnects.inc();
            tracing::info!("Redis fan-out reconnected");
            for connection in &self.connections {
                connection.retry_now();
            }
            // Whatever was published while the connection was down is lost to
            // these viewers: they must refetch.
            self.hub.resync_all();
        }
    }

    /// Hands on a message from Redis: a control message to its receivers, a
    /// topic's message to the hub.
    pub(super) fn received(&self, channel: &str, payload: &str) {
        if channel == CONTROL {
            if let Some(thread_id) = payload.strip_prefix(CANCEL_REQUEST) {
                let _ = self.cancels.send(thread_id.to_string());
            } else if let Some(thread_id) = payload.strip_prefix(LEASE_WANTED) {
                let _ = self.lease_wanted.send(thread_id.to_string());
            } else if let Some(session_id) = payload.strip_prefix(SESSION_ENDED) {
                let _ = self.session_ends.send(session_id.to_string());
            } else if let Some(target) = payload.strip_prefix(RESYNC_NOTICE) {
                // Another replica (or this one) dropped publications on the channel.
                if target == "*" {
                    self.hub.resync_all();
                } else {
                    self.hub.deliver(target, Delivery::Resync);
                }
            }
        } else if let Some(publication) = SequencedMessage::decode_publication(payload) {
            // The consumer span of the messaging conventions, in the publishing turn's trace when the
            // publication carries its context (below `info`: traces only).
            let span = tracing::debug_span!(
                "fanout.deliver",
                otel.name = "deliver",
                otel.kind = "consumer",
                messaging.system = "redis",
                messaging.operation.type = "process",
                messaging.destination.name = channel,
                messaging.batch.message_count = publication.messages.len() as i64,
            );
            if let Some(context) = publication.context.filter(|_| !span.is_disabled()) {
                crate::telemetry::traces::continue_remote(&span, context);
            }
            let _delivering = span.enter();
            for message in publication.messages {
                self.hub.deliver(channel, Delivery::Message(Arc::new(message)));
            }
        } else {
            tracing::warn!(channel, "ignoring a malformed fan-out message");
        }
    }
}
