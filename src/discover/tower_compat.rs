use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use pin_project_lite::pin_project;

use super::Change;
use crate::endpoint::Endpoint;

/// Adapts any [`tower::discover::Discover`] into a discovery source.
///
/// tower's inserts carry no weight or metadata, so every endpoint gets weight 1. Errors pass
/// through (and keep the last set).
pub fn from_tower<D>(discover: D) -> FromTower<D>
where
    D: tower::discover::Discover,
{
    FromTower { inner: discover }
}

pin_project! {
    /// The stream returned by [`from_tower`].
    #[derive(Debug)]
    pub struct FromTower<D> {
        #[pin]
        inner: D,
    }
}

impl<D> Stream for FromTower<D>
where
    D: tower::discover::Discover,
{
    type Item = Result<Change<D::Key, D::Service>, D::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.project().inner.poll_discover(cx).map(|change| {
            change.map(|result| {
                result.map(|change| match change {
                    tower::discover::Change::Insert(key, service) => {
                        Change::Insert(Endpoint::new(key, service))
                    }
                    tower::discover::Change::Remove(key) => Change::Remove(key),
                })
            })
        })
    }
}
