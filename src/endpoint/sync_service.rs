//! Endpoint services that are `Send` but not `Sync`: [`SyncService`], and the bound every
//! endpoint service meets, [`SyncEndpoint`].

use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};

use tower_service::Service;

/// What the balancer needs of an endpoint service besides `Service` and `Clone`: that it can
/// be sent and shared between threads, and borrows nothing (`Send + Sync + 'static`).
///
/// The balancer keeps one service per endpoint in a snapshot that every handle reads, on
/// every thread, and clones it for each request. Implemented for every
/// `Send + Sync + 'static` type; a service that is `Send` but not `Sync` (a
/// `tower::util::BoxCloneService`, a service that holds a `Cell` or an `mpsc::Receiver`)
/// meets it inside a [`SyncService`], which the compiler names:
///
/// ```compile_fail,E0277
/// use tower::util::BoxCloneService;
/// use tower_lb::classify::ErrorsAsFailures;
/// use tower_lb::{discover, Balance};
///
/// let echo = tower::service_fn(|req: String| async move { Ok::<_, std::io::Error>(req) });
/// let boxed: BoxCloneService<String, String, std::io::Error> = BoxCloneService::new(echo);
/// // error[E0277]: the endpoint service `BoxCloneService<String, String, std::io::Error>`
/// //               cannot be shared between threads: it is not `Sync` (...)
/// //   note: wrap a service that is `Send` but not `Sync` (such as
/// //         `tower::util::BoxCloneService`) in `tower_lb::endpoint::SyncService::new(service)`
/// let balance = Balance::builder()
///     .classify(ErrorsAsFailures)
///     .build(discover::static_list([("a", boxed)]));
/// ```
#[diagnostic::on_unimplemented(
    message = "the endpoint service `{Self}` cannot be shared between threads: it is not `Sync` (or not `Send + 'static`)",
    label = "the balancer keeps this service where every handle, on any thread, clones it",
    note = "wrap a service that is `Send` but not `Sync` (such as `tower::util::BoxCloneService`) \
            in `tower_lb::endpoint::SyncService::new(service)`: it takes a lock only to clone",
    note = "or box it as a `tower::util::BoxCloneSyncService` if the service itself is `Sync`"
)]
pub trait SyncEndpoint: Send + Sync + 'static {}

#[diagnostic::do_not_recommend]
impl<S: Send + Sync + 'static> SyncEndpoint for S {}

/// Makes an endpoint service that is `Send` but not `Sync` usable by the balancer.
///
/// A `tower::util::BoxCloneService` is `Send` but not `Sync`, and the balancer shares each
/// endpoint's service between threads (see [`SyncEndpoint`]). `SyncService` holds the
/// service behind a mutex that is locked only to clone it, which the balancer does once per
/// request; a clone's `poll_ready` and `call` take no lock (they have `&mut self`).
///
/// The cost is that lock, uncontended unless two threads clone the same endpoint at the
/// same instant: 25 instructions per request, 3 % of a whole request through the balancer
/// over `BoxCloneService` endpoints (844 against 820 for `BoxCloneSyncService` endpoints
/// under least request, `scripts/hot-path-instructions.sh --forms`). With 64 tasks on two
/// threads, the two endpoint kinds served the same requests per second, within the noise
/// of a shared machine (`cargo bench --bench balance -- erased/shared`).
///
/// ```
/// use tower::util::BoxCloneService;
/// use tower::{Service, ServiceExt};
/// use tower_lb::classify::ErrorsAsFailures;
/// use tower_lb::endpoint::SyncService;
/// use tower_lb::{discover, Balance};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let echo = |name: &'static str| {
///     let service = tower::service_fn(move |_: ()| async move { Ok::<_, std::io::Error>(name) });
///     // Send, not Sync: it needs the wrapper.
///     SyncService::new(BoxCloneService::new(service))
/// };
/// let mut balance = Balance::builder()
///     .classify(ErrorsAsFailures)
///     .build(discover::static_list([("a", echo("a")), ("b", echo("b"))]))
///     .unwrap();
/// let answer = balance.ready().await.unwrap().call(()).await.unwrap();
/// assert!(answer == "a" || answer == "b");
/// # }
/// ```
pub struct SyncService<S> {
    inner: Mutex<S>,
}

impl<S> SyncService<S> {
    /// Wraps `service`.
    pub fn new(service: S) -> Self {
        SyncService {
            inner: Mutex::new(service),
        }
    }

    /// The service inside.
    pub fn into_inner(self) -> S {
        self.inner.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    fn get_mut(&mut self) -> &mut S {
        self.inner.get_mut().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, S> {
        // A clone that panicked left the service as it was: poisoning says nothing here.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<S: Clone> Clone for SyncService<S> {
    #[inline]
    fn clone(&self) -> Self {
        SyncService::new(self.lock().clone())
    }
}

impl<S: Service<Req>, Req> Service<Req> for SyncService<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.get_mut().poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Req) -> S::Future {
        self.get_mut().call(request)
    }
}

impl<S> fmt::Debug for SyncService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncService").finish_non_exhaustive()
    }
}
