use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::mpsc;

use super::Change;
use crate::endpoint::{Endpoint, Metadata};

/// A discovery source fed by a [`Sender`] from anywhere: another task, a thread, a callback.
///
/// The channel is unbounded, since changes are small and rare. The balancer applies queued
/// changes in batches of up to 256 (yielding to the runtime between batches) and publishes
/// a new snapshot once the channel is empty, so a burst costs one rebuild and is never
/// seen half applied. When every sender is dropped the source ends and the balancer keeps
/// the last set.
pub fn channel<K, S>() -> (Sender<K, S>, ChannelDiscover<K, S>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Sender { tx }, ChannelDiscover { rx })
}

/// Pushes changes into a [`channel`] source. Cheap to clone.
pub struct Sender<K, S> {
    tx: mpsc::UnboundedSender<Change<K, S>>,
}

impl<K, S> Clone for Sender<K, S> {
    fn clone(&self) -> Self {
        Sender {
            tx: self.tx.clone(),
        }
    }
}

impl<K, S> fmt::Debug for Sender<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("closed", &self.tx.is_closed())
            .finish()
    }
}

/// The balancer that owned the receiving side has been dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the balancer behind this discovery channel is gone")
    }
}

impl std::error::Error for Closed {}

impl<K, S> Sender<K, S> {
    /// Sends any change.
    pub fn send(&self, change: Change<K, S>) -> Result<(), Closed> {
        self.tx.send(change).map_err(|_| Closed)
    }

    /// Inserts (or updates) an endpoint with weight 1.
    pub fn insert(&self, key: K, service: S) -> Result<(), Closed> {
        self.send(Change::insert(key, service))
    }

    /// Inserts (or updates) an endpoint with a weight and metadata.
    pub fn insert_with(
        &self,
        key: K,
        service: S,
        weight: u32,
        metadata: Metadata,
    ) -> Result<(), Closed> {
        self.send(Change::insert_with(key, service, weight, metadata))
    }

    /// Removes an endpoint.
    pub fn remove(&self, key: K) -> Result<(), Closed> {
        self.send(Change::Remove(key))
    }

    /// Replaces the whole set.
    pub fn reset(&self, endpoints: Vec<Endpoint<K, S>>) -> Result<(), Closed> {
        self.send(Change::Reset(endpoints))
    }

    /// Whether the balancer is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The receiving side of a [`channel`]; pass it to the balancer.
pub struct ChannelDiscover<K, S> {
    rx: mpsc::UnboundedReceiver<Change<K, S>>,
}

impl<K, S> fmt::Debug for ChannelDiscover<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelDiscover")
            .field("queued", &self.rx.len())
            .finish()
    }
}

impl<K, S> Stream for ChannelDiscover<K, S> {
    type Item = Result<Change<K, S>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}
