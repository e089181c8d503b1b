//! Request keys: what consistent-hashing strategies hash to keep a client, a session or a
//! cache key on the same endpoint.
//!
//! A [`RequestKey`] reads a key from a request as bytes. The balancer takes it at `call`
//! time when its strategy [uses a request key](crate::strategy::Strategy::uses_request_key)
//! (ring hash, Maglev, rendezvous) and hands it to the strategy in
//! [`Context::key`](crate::strategy::Context::key).
//!
//! - A request without a key (`None`), or with an empty key, is routed by the strategy's
//!   missing-key fallback (random or round robin), so such requests spread out instead of
//!   all landing on one endpoint. nginx (since 1.17.1) also balances requests with an empty
//!   `$key` by round robin.
//! - Keys of any length and any bytes (non-UTF-8 header values included) are hashed as they
//!   are.
//!
//! Keys for `http::Request` (a header, a cookie, the path, a query parameter, the client IP)
//! are in `tower_lb::http::key` (feature `http`). Any closure `Fn(&Req) -> Option<Vec<u8>>`
//! wrapped in [`key_fn`] is a key too.
//!
//! # Retries go to another endpoint
//!
//! A key keeps a request on one endpoint, so a retry of a request that failed there would
//! go back to it. [`RequestKey::previous_endpoints`] names the endpoints a request's
//! earlier tries went to: the balancer passes over them in the key's preference order and
//! sends the retry to the next endpoint, as nginx's `proxy_next_upstream` does under
//! `hash ... consistent` and Envoy's `previous_hosts` retry predicate does. Names are those
//! of [`Endpoints::name`](crate::strategy::Endpoints::name) (for a `SocketAddr` key,
//! `127.0.0.1:8000`). When every other candidate is unavailable (flagged, or failing its
//! readiness check), a previous endpoint is used after all rather than failing the
//! request. The HTTP keys read the names from the request's
//! [`PreviousEndpoints`](crate::http::key::PreviousEndpoints) extension; a [`key_fn`] key
//! names none (implement the trait to route retries elsewhere).
//! Strategies that do not route by key pick before the request is seen and ignore this;
//! their retries are balanced afresh.

use std::borrow::Cow;
use std::fmt;

/// Takes the key a request is routed by. See the [module docs](self).
pub trait RequestKey<Req>: Clone + Send + Sync + 'static {
    /// The request's key, or `None` when it has none.
    fn key<'r>(&self, request: &'r Req) -> Option<Cow<'r, [u8]>>;

    /// The names of the endpoints this request's earlier tries went to (default none);
    /// they are passed over. See [the module docs](self#retries-go-to-another-endpoint).
    fn previous_endpoints<'r>(&self, _request: &'r Req) -> &'r [String] {
        &[]
    }
}

/// No key: the balancer's default. A hashing strategy that gets no key routes every
/// request by its missing-key fallback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoKey;

impl<Req> RequestKey<Req> for NoKey {
    #[inline]
    fn key<'r>(&self, _request: &'r Req) -> Option<Cow<'r, [u8]>> {
        None
    }
}

/// A [`RequestKey`] from a closure that returns the key as owned bytes.
///
/// ```
/// use tower_lb::key::{key_fn, RequestKey};
///
/// let by_user = key_fn(|req: &(u32, String)| Some(req.0.to_be_bytes().to_vec()));
/// assert_eq!(by_user.key(&(7, "x".into())).as_deref(), Some(&[0, 0, 0, 7][..]));
/// ```
pub fn key_fn<F>(f: F) -> KeyFn<F> {
    KeyFn(f)
}

/// A closure used as a [`RequestKey`]; made by [`key_fn`].
#[derive(Clone, Copy)]
pub struct KeyFn<F>(F);

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFn")
    }
}

impl<F, Req> RequestKey<Req> for KeyFn<F>
where
    F: Fn(&Req) -> Option<Vec<u8>> + Clone + Send + Sync + 'static,
{
    fn key<'r>(&self, request: &'r Req) -> Option<Cow<'r, [u8]>> {
        (self.0)(request).map(Cow::Owned)
    }
}
