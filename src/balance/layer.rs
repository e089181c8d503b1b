use std::fmt;
use std::fmt::Debug;
use std::hash::Hash;
use std::marker::PhantomData;

use tower_layer::Layer;

use super::builder::Builder;
use super::make::MakeEndpoint;
use super::service::Balance;
use crate::discover::Discover;
use crate::endpoint::SyncEndpoint;
use crate::error::BuildError;
use crate::strategy::Strategy;

/// A [`Layer`] that wraps a [`MakeEndpoint`] (a key-to-service factory) in a [`Balance`].
///
/// The discovery source yields keys (`Change<K, ()>`) and the wrapped factory makes each
/// endpoint's service. Each `layer` call builds an independent balancer from a clone of the
/// discovery source, so the source must be `Clone` (a [`static_list`](crate::discover::static_list)
/// is; for a [`channel`](crate::discover::channel), use [`Builder::build_with`]). Make one
/// with [`Builder::into_layer`] or [`BalanceLayer::new`].
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

impl<P, C, T, H> Builder<P, C, T, H> {
    /// A [`BalanceLayer`] that builds this balancer around a [`MakeEndpoint`] in a
    /// `tower::ServiceBuilder`. Checks the configuration now, since a layer cannot fail.
    ///
    /// Each `layer` call builds a balancer of its own from a clone of `discovery`, so the
    /// source must be `Clone`: a [`static_list`](crate::discover::static_list) is. A source
    /// that can be consumed only once (a [`channel`](crate::discover::channel),
    /// [`from_snapshots`](crate::discover::from_snapshots), DNS) goes to
    /// [`Builder::build_with`] instead, which takes the same factory.
    pub fn into_layer<K, D>(
        self,
        discovery: D,
    ) -> Result<BalanceLayer<K, D, P, C, T, H>, BuildError>
    where
        D: LayerDiscover<K>,
        P: Strategy,
    {
        self.validate()?;
        discovery.validate()?;
        Ok(BalanceLayer::from_builder(discovery, self))
    }
}

impl<K, D, P, C, T, H> BalanceLayer<K, D, P, C, T, H> {
    fn from_builder(discovery: D, builder: Builder<P, C, T, H>) -> Self {
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
    D: LayerDiscover<K>,
    M: MakeEndpoint<K> + Send + 'static,
    M::Service: Clone + SyncEndpoint,
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

/// A discovery source a [`BalanceLayer`] can use: one that yields keys and can be cloned,
/// since each `layer` call builds a balancer from a clone of it.
///
/// Implemented for every `Discover<K, ()> + Clone + Send + 'static`. A source that is not
/// `Clone` (a [`channel`](crate::discover::channel),
/// [`from_snapshots`](crate::discover::from_snapshots), DNS) goes to
/// [`Builder::build_with`], which takes the same key-to-service factory. The compiler
/// says so where the source is given:
///
/// ```compile_fail,E0277
/// use std::net::SocketAddr;
/// use tower_lb::{discover, Builder};
///
/// let (tx, rx) = discover::channel::<SocketAddr, ()>();
/// // error[E0277]: `ChannelDiscover<SocketAddr, ()>` cannot be the discovery source of a
/// //               `BalanceLayer`
/// //   note: for a source that can be used once (`discover::channel`, ...), build the
/// //         balancer with `Builder::build_with(source, make_endpoint)` instead
/// let layer = Builder::new().into_layer(rx);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the discovery source of a `BalanceLayer`",
    label = "a layer builds a balancer from a clone of this source for every `layer` call",
    note = "a `BalanceLayer` needs a source that yields keys (`Change<K, ()>`) and is `Clone`, \
            such as `discover::static_list`",
    note = "for a source that can be used once (`discover::channel`, `discover::from_snapshots`, \
            `Dns`), build the balancer with `Builder::build_with(source, make_endpoint)` instead"
)]
pub trait LayerDiscover<K>: Discover<K, ()> + Clone + Send + 'static {}

#[diagnostic::do_not_recommend]
impl<K, D> LayerDiscover<K> for D where D: Discover<K, ()> + Clone + Send + 'static {}
