//! [`Lazy`]: a discovery source that keeps its settings until its first poll, checks them,
//! and then runs as a stream. The DNS and etcd sources are built this way, so that their
//! setters work until the balancer takes them and `build_with` can check their settings.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;

use crate::error::BuildError;

/// A running source's stream of changes.
pub(crate) type Running<I> = Pin<Box<dyn Stream<Item = I> + Send>>;

/// Settings `T` until the first poll, then a stream of `I`.
pub(crate) struct Lazy<T, I> {
    settings: Option<T>,
    running: Option<Running<I>>,
}

impl<T, I> Lazy<T, I> {
    pub(crate) fn new(settings: T) -> Self {
        Lazy {
            settings: Some(settings),
            running: None,
        }
    }

    /// The settings, until the source starts.
    pub(crate) fn settings(&self) -> Option<&T> {
        self.settings.as_ref()
    }

    /// The settings to change, until the source starts; after that a change does nothing.
    pub(crate) fn settings_mut(&mut self) -> Option<&mut T> {
        self.settings.as_mut()
    }

    /// Whether the source has started.
    pub(crate) fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Polls the stream, started at the first poll by `start` once `check` accepted the
    /// settings. Settings it rejects yield `invalid(error)` once, and the source ends.
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        check: impl FnOnce(&T) -> Result<(), BuildError>,
        invalid: impl FnOnce(BuildError) -> I,
        start: impl FnOnce(T) -> Running<I>,
    ) -> Poll<Option<I>> {
        let running = match &mut self.running {
            Some(running) => running,
            None => {
                let Some(settings) = self.settings.take() else {
                    return Poll::Ready(None);
                };
                if let Err(error) = check(&settings) {
                    return Poll::Ready(Some(invalid(error)));
                }
                self.running.insert(start(settings))
            }
        };
        running.as_mut().poll_next(cx)
    }
}
