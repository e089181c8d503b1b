//! [`EtcdKey`]: how the balancer tells endpoints found in etcd apart.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// The balancer's key for an endpoint found under an etcd prefix: the etcd key and the
/// address its value gives.
///
/// Both take part in equality, so a key whose value moves to another address is a new
/// endpoint (the old one is removed, the new one gets a new service), while a new weight or
/// new metadata at the same address updates the endpoint in place, keeping its service and
/// statistics. `make` in [`Builder::build_with`](crate::Builder::build_with) usually reads
/// only the [address](EtcdKey::addr):
///
/// ```no_run
/// # fn make_client(addr: &str) -> tower::util::BoxCloneSyncService<String, String, std::io::Error> { unimplemented!() }
/// use tower_lb::discover::etcd::EtcdKey;
/// let make = |key: &EtcdKey| make_client(key.addr());
/// # let _ = make;
/// ```
///
/// Its `Debug` and `Display` forms are `addr (key)`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EtcdKey {
    addr: Arc<str>,
    key: Arc<str>,
}

impl EtcdKey {
    /// A key for the endpoint at `addr` registered under the etcd key `key`.
    pub fn new(key: impl Into<Arc<str>>, addr: impl Into<Arc<str>>) -> Self {
        EtcdKey {
            key: key.into(),
            addr: addr.into(),
        }
    }

    /// The etcd key, prefix included.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The endpoint's address, `host:port`, as [`EndpointValue::addr`](super::EndpointValue::addr)
    /// normalised it.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The address as a [`SocketAddr`] when its host is an IP address; `None` for a host
    /// name, which the caller resolves (or hands to a client that does).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.addr.parse().ok()
    }
}

impl fmt::Debug for EtcdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for EtcdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.addr, self.key)
    }
}
