//! Local delivery: one bounded broadcast channel per topic with viewers on
//! this replica, shared by both backends.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::{broadcast, mpsc};

use super::SequencedMessage;

/// What a local viewer receives.
#[derive(Clone, Debug)]
pub enum Delivery {
    Message(Arc<SequencedMessage>),
    /// Messages may have been missed (the backend lost its connection): the
    /// viewer must refetch what it shows.
    Resync,
}

/// What a subscription yields.
#[derive(Debug)]
pub enum Received {
    Delivery(Delivery),
    /// The viewer fell further behind than its buffer: it must resync and go.
    Lagged,
}

pub struct Hub {
    topics: DashMap<String, broadcast::Sender<Delivery>>,
    buffer: usize,
    /// Told the channel name when a topic's last local viewer leaves, so a
    /// backend can stop listening to it.
    on_empty: Option<mpsc::Sender<String>>,
}

impl Hub {
    pub fn new(buffer: usize, on_empty: Option<mpsc::Sender<String>>) -> Arc<Hub> {
        Arc::new(Hub { topics: DashMap::new(), buffer: buffer.max(1), on_empty })
    }

    /// Adds a local viewer of `channel`; the second value is true when it is the first one.
    pub fn join(self: &Arc<Self>, channel: &str) -> (Subscription, bool) {
        let mut first = false;
        let receiver = self
            .topics
            .entry(channel.to_string())
            .or_insert_with(|| {
                first = true;
                broadcast::channel(self.buffer).0
            })
            .subscribe();
        let subscription = Subscription { receiver: Some(receiver), channel: channel.to_string(), hub: self.clone() };
        (subscription, first)
    }

    /// Hands a message to the local viewers of `channel`, if there are any.
    pub fn deliver(&self, channel: &str, delivery: Delivery) {
        if let Some(sender) = self.topics.get(channel) {
            // No receiver left is not an error: the last viewer is leaving.
            let _ = sender.send(delivery);
        }
    }

    /// Tells every local viewer that messages may have been missed.
    pub fn resync_all(&self) {
        for topic in self.topics.iter() {
            let _ = topic.value().send(Delivery::Resync);
        }
    }

    /// Channels with local viewers now.
    pub fn channels(&self) -> Vec<String> {
        self.topics.iter().map(|topic| topic.key().clone()).collect()
    }

    pub fn has_viewers(&self, channel: &str) -> bool {
        self.topics.get(channel).is_some_and(|sender| sender.receiver_count() > 0)
    }

    /// Local viewers over all topics.
    pub fn viewers(&self) -> usize {
        self.topics.iter().map(|topic| topic.value().receiver_count()).sum()
    }

    fn leave(&self, channel: &str) {
        let removed = self.topics.remove_if(channel, |_, sender| sender.receiver_count() == 0).is_some();
        if removed {
            if let Some(on_empty) = &self.on_empty {
                // A full queue only delays the unsubscribe: the backend also
                // sweeps channels without viewers.
                let _ = on_empty.try_send(channel.to_string());
            }
        }
    }
}

/// One local viewer's place on a topic; leaving is dropping it.
pub struct Subscription {
    receiver: Option<broadcast::Receiver<Delivery>>,
    channel: String,
    hub: Arc<Hub>,
}

impl Subscription {
    pub async fn recv(&mut self) -> Received {
        let Some(receiver) = self.receiver.as_mut() else { return Received::Lagged };
        match receiver.recv().await {
            Ok(delivery) => Received::Delivery(delivery),
            Err(broadcast::error::RecvError::Lagged(_)) => Received::Lagged,
            // The hub keeps a topic's sender while any receiver lives, so
            // this cannot happen; treat it as a gap rather than hang.
            Err(broadcast::error::RecvError::Closed) => Received::Lagged,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.receiver.take();
        self.hub.leave(&self.channel);
    }
}
