//! Discovery: where the balancer learns which endpoints exist.
//!
//! A discovery source is a stream of [`Change`]s: insert (or update) one endpoint, remove one,
//! or reset the whole set. The balancer's background driver consumes it, so changes apply
//! even when no request arrives.
//!
//! | source | what it is |
//! |---|---|
//! | [`static_list`] | a fixed list, applied once |
//! | [`channel`] | a [`Sender`] that pushes changes from anywhere |
//! | [`from_tower`] | any [`tower::discover::Discover`] |
//! | [`from_snapshots`] | a [`Snapshots`] source that yields whole endpoint lists, diffed into changes |
//! | `dns` (feature `dns`) | A/AAAA or SRV records of a DNS name, refreshed by TTL: Kubernetes headless services, Consul |
//! | anything implementing [`Discover`] | every `Stream<Item = Result<Change<K, S>, E>>` does |
//!
//! # What each change does
//!
//! - **Insert of a new key** adds the endpoint at the end of the discovery order.
//! - **Insert of a key that exists** is an update: the service, weight and metadata are
//!   replaced, the endpoint keeps its place in the order and its statistics, and requests in
//!   flight on the old service still count until they finish.
//! - **Remove of an unknown key** is ignored (logged at debug level).
//! - **Reset** replaces the set. Endpoints whose key appears again keep their statistics. A
//!   key listed twice keeps its first position and its last description.
//! - **An empty reset** is ignored by default and the last set stays, because an empty list
//!   from a discovery system is far more often an outage than an intent; it is logged as a
//!   warning and counted in [`DiscoveryStats::empty_resets_ignored`]. Allow it with
//!   [`Builder::allow_empty_reset`](crate::Builder::allow_empty_reset). Removing endpoints
//!   one by one can always empty the set.
//! - **An error** from the stream keeps the last set; it is logged as a warning (once per run
//!   of errors), counted in [`DiscoveryStats::errors`], and the stream is polled again after
//!   a pause of 10 ms that doubles with each further error, up to 2 s, so a source that
//!   fails at once cannot spin the driver.
//! - **The end of the stream** keeps the last set for good; it is logged and shows as
//!   [`DiscoveryStats::ended`].
//!
//! # Writing a source
//!
//! Any stream of `Result<Change<K, S>, E>` is a [`Discover`]; building one with
//! [`futures_util::stream::unfold`](https://docs.rs/futures-util) or a channel is usually
//! simplest. A source that can only list the current endpoints implements [`Snapshots`] and
//! goes through [`from_snapshots`], which sends only what changed.
//!
//! A good source: sends its first list promptly; yields `Err` for a failed lookup instead
//! of an empty list (the balancer keeps the last set and counts the error); paces itself
//! (a timer or a watch) rather than relying on being polled; and keys endpoints by
//! something stable (an address), so the balancer keeps each endpoint's connections and
//! statistics across lists. The `custom_discovery` example watches a file of addresses
//! this way.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;

use crate::endpoint::{Endpoint, Metadata};
use crate::error::{BoxError, BuildError};

mod channel;
#[cfg(feature = "dns")]
#[cfg_attr(docsrs, doc(cfg(feature = "dns")))]
pub mod dns;
pub(crate) mod snapshots;
mod static_list;
mod tower_compat;

pub use channel::{channel, ChannelDiscover, Closed, Sender};
pub use snapshots::{from_snapshots, FromSnapshots, Snapshots};
pub use static_list::{static_list, StaticList};
pub use tower_compat::{from_tower, FromTower};

/// One change to the set of endpoints. See the [module docs](self) for what each does.
#[derive(Debug, Clone)]
pub enum Change<K, S> {
    /// Adds an endpoint, or updates the one with the same key.
    Insert(Endpoint<K, S>),
    /// Removes the endpoint with this key.
    Remove(K),
    /// Replaces the whole set.
    Reset(Vec<Endpoint<K, S>>),
}

impl<K, S> Change<K, S> {
    /// An insert with weight 1 and no metadata.
    pub fn insert(key: K, service: S) -> Self {
        Change::Insert(Endpoint::new(key, service))
    }

    /// An insert with every field given.
    pub fn insert_with(key: K, service: S, weight: u32, metadata: Metadata) -> Self {
        Change::Insert(Endpoint {
            key,
            service,
            weight,
            metadata,
        })
    }

    /// Turns every service in the change into another, for example keys into clients.
    pub fn map_service<T>(self, mut f: impl FnMut(&K, S) -> T) -> Change<K, T> {
        match self {
            Change::Insert(e) => Change::Insert(e.map_service(&mut f)),
            Change::Remove(k) => Change::Remove(k),
            Change::Reset(v) => {
                Change::Reset(v.into_iter().map(|e| e.map_service(&mut f)).collect())
            }
        }
    }
}

/// Statistics of the balancer's discovery source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiscoveryStats {
    /// Changes received so far, including ones that changed nothing (an ignored empty
    /// reset, the removal of an unknown key).
    pub changes: u64,
    /// Errors the source returned; each kept the last set.
    pub errors: u64,
    /// The last error's message.
    pub last_error: Option<String>,
    /// Empty resets that were ignored.
    pub empty_resets_ignored: u64,
    /// Whether the source has ended (the last set stays).
    pub ended: bool,
}

/// What [`Discover::poll_change`] returns.
pub type PollChange<K, S, E> = Poll<Option<Result<Change<K, S>, E>>>;

impl DiscoveryStats {
    /// Counts an error that kept the last set, and keeps its message.
    pub(crate) fn record_error(&mut self, message: String) {
        self.errors += 1;
        self.last_error = Some(message);
    }
}

/// A source of endpoint changes. See the [module docs](self).
///
/// Implemented for every `Stream<Item = Result<Change<K, S>, E>>` where `E` converts into
/// [`BoxError`]; implement [`Stream`] (or this trait) for custom sources.
pub trait Discover<K, S> {
    /// The error a source may yield; it never removes endpoints.
    type Error: Into<BoxError>;

    /// Polls for the next change. `Ready(None)` means the source has ended.
    fn poll_change(self: Pin<&mut Self>, cx: &mut Context<'_>) -> PollChange<K, S, Self::Error>;

    /// Checks the source's settings; called once when the balancer is built, which fails
    /// with the error, as for the balancer's own settings. The default accepts any: a
    /// source with no settings has nothing to check. (The DNS source checks its TTL bounds
    /// and limits here.)
    fn validate(&self) -> Result<(), BuildError> {
        Ok(())
    }
}

impl<T, K, S, E> Discover<K, S> for T
where
    T: Stream<Item = Result<Change<K, S>, E>> + ?Sized,
    E: Into<BoxError>,
{
    type Error = E;

    fn poll_change(self: Pin<&mut Self>, cx: &mut Context<'_>) -> PollChange<K, S, E> {
        self.poll_next(cx)
    }
}
