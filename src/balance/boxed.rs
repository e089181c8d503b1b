//! [`BoxBalance`]: a balancer with its type parameters erased, that still reports its
//! statistics.

use std::fmt;
use std::task::{Context, Poll};

use tower::util::BoxCloneSyncService;
use tower_service::Service;

use super::monitor::Monitor;
use super::service::Balance;
use crate::error::BoxError;
use crate::strategy::Strategy;

/// A [`Balance`] with its strategy, classifier, completion policy, request key and endpoint
/// service erased: a [`BoxCloneSyncService`] and the balancer's [`Monitor`].
///
/// Made by [`Balance::boxed`]. It is a `Service` (`Clone + Send + Sync`, as the balancer
/// is), whose type names only the endpoint key, the request and the response, so it fits
/// in a struct field or a `match` whose arms build different balancers. The statistics,
/// health events and draining stay at hand through [`monitor`](Self::monitor).
///
/// Erasing costs a boxed response future per request (one allocation) and dynamic calls:
/// 200 instructions per request, 37 % more than the same balancer unboxed (747 against 547
/// under least request, `scripts/hot-path-instructions.sh --forms`). A field of type
/// `Balance<...>` (with [`AnyStrategy`](crate::strategy::AnyStrategy) for a strategy chosen
/// at run time) costs neither.
///
/// ```
/// use tower::{Service, ServiceExt};
/// use tower_lb::balance::BoxBalance;
/// use tower_lb::classify::ErrorsAsFailures;
/// use tower_lb::{discover, Balance};
///
/// /// An application's state: the balancer's type is named without its strategy.
/// struct App {
///     backends: BoxBalance<&'static str, String, String>,
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let echo = tower::service_fn(|req: String| async move { Ok::<_, std::io::Error>(req) });
/// let strategy = "round-robin".parse::<tower_lb::strategy::AnyStrategy>().unwrap();
/// let mut app = App {
///     backends: Balance::builder()
///         .strategy(strategy)
///         .classify(ErrorsAsFailures)
///         .build(discover::static_list([("a", echo.clone()), ("b", echo)]))
///         .unwrap()
///         .boxed(),
/// };
/// let answer = app.backends.ready().await.unwrap().call("hi".into()).await.unwrap();
/// assert_eq!(answer, "hi");
/// assert_eq!(app.backends.monitor().endpoints().len(), 2);
/// # }
/// ```
pub struct BoxBalance<K, Req, Res> {
    service: BoxCloneSyncService<Req, Res, BoxError>,
    monitor: Monitor<K>,
}

impl<K, S, P, C, T, H> Balance<K, S, P, C, T, H>
where
    K: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
    S: Send + Sync + 'static,
    P: Strategy,
{
    /// Erases the balancer's type parameters but the key's: a [`BoxBalance`], which is a
    /// `BoxCloneSyncService` with this balancer's [`Monitor`].
    pub fn boxed<Req>(self) -> BoxBalance<K, Req, <Self as Service<Req>>::Response>
    where
        Self: Service<Req, Error = BoxError> + Clone + Send + Sync + 'static,
        <Self as Service<Req>>::Future: Send + 'static,
    {
        let monitor = self.monitor();
        BoxBalance {
            service: BoxCloneSyncService::new(self),
            monitor,
        }
    }
}

impl<K, Req, Res> BoxBalance<K, Req, Res> {
    /// The balancer's statistics, health events and draining.
    pub fn monitor(&self) -> &Monitor<K> {
        &self.monitor
    }

    /// The service and the monitor, apart.
    pub fn into_parts(self) -> (BoxCloneSyncService<Req, Res, BoxError>, Monitor<K>) {
        (self.service, self.monitor)
    }
}

impl<K, Req, Res> Service<Req> for BoxBalance<K, Req, Res> {
    type Response = Res;
    type Error = BoxError;
    type Future = <BoxCloneSyncService<Req, Res, BoxError> as Service<Req>>::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.service.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        self.service.call(request)
    }
}

impl<K, Req, Res> Clone for BoxBalance<K, Req, Res> {
    fn clone(&self) -> Self {
        BoxBalance {
            service: self.service.clone(),
            monitor: self.monitor.clone(),
        }
    }
}

impl<K, Req, Res> fmt::Debug for BoxBalance<K, Req, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxBalance")
            .field("monitor", &self.monitor)
            .finish_non_exhaustive()
    }
}
