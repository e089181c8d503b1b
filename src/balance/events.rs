//! The health event hub: every change of an endpoint's health, sent to each subscriber.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use crate::health::HealthEvent;

/// The subscribers of health events. Events before the first subscription are kept (up
/// to [`EARLY_EVENTS`]) for the first subscriber, so it sees every endpoint's first result.
pub(crate) struct EventHub<K> {
    subscribers: Vec<mpsc::UnboundedSender<HealthEvent<K>>>,
    early: Option<Vec<HealthEvent<K>>>,
}

/// How many events are kept for a first subscriber that has not subscribed yet.
const EARLY_EVENTS: usize = 1024;

impl<K: Clone> EventHub<K> {
    pub(crate) fn new() -> Self {
        EventHub {
            subscribers: Vec::new(),
            early: Some(Vec::new()),
        }
    }

    pub(crate) fn emit(&mut self, event: HealthEvent<K>) {
        if let Some(early) = &mut self.early {
            if early.len() < EARLY_EVENTS {
                early.push(event.clone());
            }
        }
        self.subscribers.retain(|s| s.send(event.clone()).is_ok());
    }

    pub(crate) fn subscribe(&mut self) -> HealthEvents<K> {
        let (tx, rx) = mpsc::unbounded_channel();
        for event in self.early.take().unwrap_or_default() {
            let _ = tx.send(event);
        }
        self.subscribers.push(tx);
        HealthEvents { inner: rx }
    }
}

/// A stream of [`HealthEvent`]s; see [`Balance::health_events`](crate::Balance::health_events).
///
/// Read it with [`recv`](HealthEvents::recv), or as a `futures` `Stream`. It ends when the
/// balancer is gone (every handle dropped).
///
/// ```
/// use tower_lb::classify::ErrorsAsFailures;
/// use tower_lb::health::{Health, HealthReason};
/// use tower_lb::{discover, Balance};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let echo = tower::service_fn(|req: String| async move { Ok::<_, std::io::Error>(req) });
/// let balance = Balance::builder()
///     .classify(ErrorsAsFailures)
///     .build(discover::static_list([("a", echo)]))
///     .unwrap();
/// let mut events = balance.health_events();
/// balance.set_draining(&"a", true).unwrap();
/// let event = events.recv().await.unwrap();
/// assert_eq!((event.key, event.to), ("a", Health::Draining));
/// assert!(matches!(event.reason, HealthReason::DrainStarted));
/// # }
/// ```
pub struct HealthEvents<K> {
    inner: mpsc::UnboundedReceiver<HealthEvent<K>>,
}

impl<K> HealthEvents<K> {
    /// A stream that has ended: what a [`Monitor`](crate::Monitor) of a balancer that is
    /// gone returns.
    pub(crate) fn ended() -> Self {
        let (_, inner) = mpsc::unbounded_channel();
        HealthEvents { inner }
    }

    /// The next event; `None` once the balancer is gone and every event was read.
    pub async fn recv(&mut self) -> Option<HealthEvent<K>> {
        self.inner.recv().await
    }

    /// The next event if one is waiting, without waiting; `None` when none is.
    pub fn try_recv(&mut self) -> Option<HealthEvent<K>> {
        self.inner.try_recv().ok()
    }
}

impl<K> futures_core::Stream for HealthEvents<K> {
    type Item = HealthEvent<K>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_recv(cx)
    }
}

impl<K> fmt::Debug for HealthEvents<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthEvents").finish_non_exhaustive()
    }
}
