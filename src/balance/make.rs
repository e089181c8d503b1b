//! [`MakeEndpoint`]: how a balancer whose discovery yields keys makes each endpoint's
//! service.

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
