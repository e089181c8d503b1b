use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;

use super::Change;
use crate::endpoint::Endpoint;

/// A fixed list of endpoints: one [`Change::Reset`] and then nothing, forever.
///
/// The stream never ends (it stays pending), so a static list does not show as an ended
/// source. An empty list is an empty reset, which the balancer ignores by default.
pub fn static_list<K, S, I>(endpoints: I) -> StaticList<K, S>
where
    I: IntoIterator,
    I::Item: Into<Endpoint<K, S>>,
{
    StaticList {
        endpoints: Some(endpoints.into_iter().map(Into::into).collect()),
    }
}

/// The stream returned by [`static_list`].
#[derive(Debug, Clone)]
pub struct StaticList<K, S> {
    endpoints: Option<Vec<Endpoint<K, S>>>,
}

impl<K, S> Unpin for StaticList<K, S> {}

impl<K, S> Stream for StaticList<K, S> {
    type Item = Result<Change<K, S>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut().endpoints.take() {
            Some(list) => Poll::Ready(Some(Ok(Change::Reset(list)))),
            None => Poll::Pending,
        }
    }
}

impl<K, S> From<(K, S)> for Endpoint<K, S> {
    fn from((key, service): (K, S)) -> Self {
        Endpoint::new(key, service)
    }
}

impl<K, S> From<(K, S, u32)> for Endpoint<K, S> {
    fn from((key, service, weight): (K, S, u32)) -> Self {
        Endpoint::new(key, service).with_weight(weight)
    }
}
