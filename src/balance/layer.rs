use std::fmt;
use std::fmt::Debug;
use std::hash::Hash;
use std::marker::PhantomData;

use tower_layer::Layer;

use super::builder::Builder;
use super::service::Balance;
use crate::discover::Discover;
use crate::strategy::Strategy;

/// Turns an endpoint's key into the service that talks to it.
///
/// Implemented for every `FnMut(&K) -> S`.
pub trait MakeEndpoint<K> {
    /// The service for one endpoint.
    type Service;

    /// Makes the service for `key`.
    fn make_endpoint(&mut self, key: &K) -> Self::Service;
}

impl<K, S, F> MakeEndpoint<K> for F
where
    F: FnMut(&K) -> S,
{
    type Service = S;

    fn make_endpoint(&mut self, key: &K) -> S {
        self(key)
    }
}

/// A [`Layer`] that wraps a [`MakeEndpoint`] (a key-to-service factory) in a [`Balance`].
///
/// The discovery source yields keys (`Change<K, ()>`) and the wrapped factory makes each
/// endpoint's service. Each `layer` call builds an independent balancer from a clone of the
/// discovery source, so the source must be `Clone` (a [`static_list`](crate::discover::static_list)
/// is; for a [`channel`](crate::discover::channel), use [`Builder::build_with`]).
///
/// ```
/// use std::net::SocketAddr;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_lb::{discover, BalanceLayer};
/// use tower_lb::classify::ErrorsAsFailures;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let addrs: Vec<SocketAddr> = vec!["127.0.0.1:8000".parse().unwrap(), "127.0.0.1:8001".parse().unwrap()];
/// let layer = tower_lb::Builder::new()
///     .classify(ErrorsAsFailures)
///     .into_layer(discover::static_list(addrs.into_iter().map(|a| (a, ()))))
///     .unwrap();
/// let service = ServiceBuilder::new()
///     .layer(layer)
///     .service(|addr: &SocketAddr| {
///         let addr = *addr;
///         tower::service_fn(move |_req: ()| async move { Ok::<_, std::io::Error>(addr) })
///     });
/// let answered_by = service.oneshot(()).await.unwrap();
/// assert_eq!(answered_by.ip().to_string(), "127.0.0.1");
/// # }
/// ```
pub struct BalanceLayer<K, D, P, C, T, H = crate::key::NoKey> {
    discovery: D,
    builder: Builder<P, C, T, H>,
    _key: PhantomData<fn() -> K>,
}

impl<K, D, P, C, T, H> BalanceLayer<K, D, P, C, T, H> {
    pub(crate) fn from_builder(discovery: D, builder: Builder<P, C, T, H>) -> Self {
        BalanceLayer {
            discovery,
            builder,
            _key: PhantomData,
        }
    }
}

impl<K, D>
    BalanceLayer<
        K,
        D,
        crate::strategy::LeastRequest,
        crate::classify::DefaultClassifier,
        crate::completion::OnResponse,
    >
{
    /// A layer with the default configuration (see [`Builder::new`]).
    pub fn new(discovery: D) -> Self {
        BalanceLayer::from_builder(discovery, Builder::new())
    }
}

impl<K, D, P, C, T, H, M> Layer<M> for BalanceLayer<K, D, P, C, T, H>
where
    H: Clone,
    D: Discover<K, ()> + Clone + Send + 'static,
    M: MakeEndpoint<K> + Send + 'static,
    M::Service: Clone + Send + Sync + 'static,
    K: Clone + Eq + Hash + Debug + Send + Sync + 'static,
    P: Strategy + Clone,
    C: Clone,
    T: Clone,
{
    type Service = Balance<K, M::Service, P, C, T, H>;

    fn layer(&self, make: M) -> Self::Service {
        // The configuration was validated when the layer was made, and a missing runtime is
        // reported by poll_ready.
        self.builder
            .clone()
            .build_with_unchecked(self.discovery.clone(), make)
    }
}

impl<K, D: fmt::Debug, P: fmt::Debug, C: fmt::Debug, T: fmt::Debug, H: fmt::Debug> fmt::Debug
    for BalanceLayer<K, D, P, C, T, H>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalanceLayer")
            .field("discovery", &self.discovery)
            .field("builder", &self.builder)
            .finish()
    }
}

impl<K, D: Clone, P: Clone, C: Clone, T: Clone, H: Clone> Clone for BalanceLayer<K, D, P, C, T, H> {
    fn clone(&self) -> Self {
        BalanceLayer::from_builder(self.discovery.clone(), self.builder.clone())
    }
}
