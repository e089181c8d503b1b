//! DNS discovery (feature `dns`): endpoints from A/AAAA or SRV records, refreshed by TTL.
//!
//! [`Dns`] is a discovery source: a stream of [`Change`]s keyed by [`SocketAddr`] that
//! carries no service (`()`), made for [`Builder::build_with`](crate::Builder::build_with),
//! which turns each new address into a client:
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::net::SocketAddr;
//! use tower_lb::discover::dns::Dns;
//! use tower_lb::{strategy::RoundRobin, Balance};
//!
//! // Every address of `web.internal` on port 8080, refreshed when the records expire.
//! let dns = Dns::a("web.internal.", 8080)?;
//! let balance = Balance::builder()
//!     .strategy(RoundRobin::new())
//!     .build_with(dns, |addr: &SocketAddr| make_client(*addr))?;
//! # fn make_client(addr: SocketAddr) -> tower::util::BoxCloneSyncService<http::Request<String>, http::Response<String>, std::io::Error> { unimplemented!() }
//! # let _ = balance; Ok(()) }
//! ```
//!
//! # Two ways to resolve a name
//!
//! - [`Dns::a(name, port)`](Dns::a): the A and AAAA records of `name`, each address with
//!   the given port and weight 1. An IP address in place of a name resolves to itself.
//! - [`Dns::srv(name)`](Dns::srv): the SRV records of `name`. Only the group with the
//!   lowest priority number that has a target that resolves is used (a higher priority
//!   number is a fallback, RFC 2782). Each target's addresses get the record's port and its
//!   weight as the endpoint's weight. When every record of the group has weight 0, they
//!   all get weight 1 (RFC 2782: pick them evenly); otherwise a weight-0 record stays in
//!   the set with weight 0 and gets no traffic. Targets that do not resolve are skipped
//!   and logged; a target of `.` ("no service here") is ignored.
//!
//! An address reached through several records (duplicate records, two targets with the
//! same address) is one endpoint; under SRV its weight is the sum of theirs.
//!
//! # Refresh
//!
//! The name is resolved again when its answer expires: after its TTL (for SRV, the
//! smallest TTL of the SRV records and their targets' addresses), bounded by
//! [`min_ttl`](Dns::min_ttl) (default 5 s; it also paces retries after a failure) and
//! [`max_ttl`](Dns::max_ttl) (default 5 min), plus a random [`jitter`](Dns::jitter) of up to
//! 10 % so that many clients do not query in step. Resolvers built here do not cache, so a
//! refresh is always a fresh query.
//!
//! Each answer is compared with the previous one and only the difference is sent: new
//! addresses are inserted, vanished ones removed, and an address whose weight changed is
//! updated in place. An address that stays keeps its service (its connections) and its
//! statistics. The first answer is sent as one [`Change::Reset`].
//!
//! # Failures
//!
//! A failed lookup (SERVFAIL, a timeout, a refused query), `NXDOMAIN` and an empty answer
//! all keep the last good set. Each is yielded as a [`DnsError`], which the balancer logs
//! and counts in [`DiscoveryStats::errors`](crate::discover::DiscoveryStats::errors), and
//! the name is tried again after [`min_ttl`](Dns::min_ttl). By default the last good set
//! is kept for as long as lookups fail. With [`max_stale`](Dns::max_stale), once that much
//! time has passed since the last good answer, every endpoint is removed (a warning is
//! logged); the next good answer adds them back.
//!
//! Answers with more than [`max_endpoints`](Dns::max_endpoints) addresses (default 1024)
//! keep the lowest addresses and log a warning. Answers larger than a UDP datagram come
//! over TCP (the resolver retries truncated answers over TCP).
//!
//! # Which resolver
//!
//! By default the system's configuration (`/etc/resolv.conf`: name servers, search
//! domains, `ndots`), read at the first lookup. [`nameservers`](Dns::nameservers) sends
//! the queries to given servers instead, [`resolver_config`](Dns::resolver_config) takes a
//! whole hickory configuration, and [`resolver`](Dns::resolver) uses a resolver you built
//! (keep its cache small or off: a cached answer is not refreshed before it expires).
//! A name that ends with a dot is fully qualified and skips the search domains, which
//! saves queries.
//!
//! # Kubernetes headless services
//!
//! A headless service (`clusterIP: None`) has one A record per ready pod, so the balancer
//! sees pods come and go:
//!
//! ```no_run
//! # fn main() -> Result<(), tower_lb::discover::dns::DnsError> {
//! use std::time::Duration;
//! use tower_lb::discover::dns::Dns;
//!
//! // Pods behind the headless service `api` in namespace `shop`.
//! let dns = Dns::a("api.shop.svc.cluster.local.", 8080)?
//!     // CoreDNS answers with a TTL of 5 s by default (the `ttl` option of the
//!     // kubernetes plugin); poll at most every 2 s, at least every 30 s.
//!     .min_ttl(Duration::from_secs(2))
//!     .max_ttl(Duration::from_secs(30));
//! // A named port gives SRV records with the port in them:
//! let by_port = Dns::srv("_http._tcp.api.shop.svc.cluster.local.")?;
//! # let _ = (dns, by_port); Ok(()) }
//! ```
//!
//! A ClusterIP (non-headless) service has one virtual address, so balancing over it in the
//! client balances nothing; use a headless service.
//!
//! # Consul
//!
//! Consul's DNS interface answers `<service>.service.consul` with A records of healthy
//! instances and `_<service>._tcp.service.consul` (or `<service>.service.consul` with type
//! SRV) with each instance's port; with `[tag.]` prefixes and datacenters as Consul
//! documents. Its agent listens on port 8600 and gives TTL 0 by default (`dns_config.service_ttl`),
//! so [`min_ttl`](Dns::min_ttl) sets the pace:
//!
//! ```no_run
//! # fn main() -> Result<(), tower_lb::discover::dns::DnsError> {
//! use std::time::Duration;
//! use tower_lb::discover::dns::Dns;
//!
//! let dns = Dns::srv("billing.service.consul.")?
//!     .nameservers(["127.0.0.1:8600".parse().unwrap()])
//!     .min_ttl(Duration::from_secs(1));
//! # let _ = dns; Ok(()) }
//! ```
//!
//! Consul SRV records have equal weights; set weights with Consul's `weights` in the
//! service definition.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;

use super::{Change, Discover, PollChange};
use crate::error::BuildError;
use crate::strategy::rng::Rng;

mod error;
mod refresh;
mod resolve;
mod settings;

pub use error::DnsError;

use refresh::Runner;
use settings::{parse_name, Query, ResolverSource, Settings};

/// What a [`Dns`] source yields.
pub type DnsChange = Result<Change<SocketAddr, ()>, DnsError>;

/// A discovery source that resolves a DNS name. See the [module docs](self).
///
/// Build it with [`Dns::a`] or [`Dns::srv`], adjust it with the setters, and pass it to
/// [`Builder::build_with`](crate::Builder::build_with). Nothing is queried until the
/// balancer polls it.
///
/// The setters take any value; [`Discover::validate`] checks them, and so the balancer's
/// `build_with` fails with [`BuildError::InvalidConfig`] on a zero `min_ttl`, a `max_ttl`
/// below `min_ttl`, a `jitter` outside `0..=1` or a zero `max_endpoints`, as it does for
/// its own settings.
pub struct Dns {
    settings: Option<Settings>,
    running: Option<Pin<Box<dyn Stream<Item = DnsChange> + Send>>>,
}

impl fmt::Debug for Dns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Dns");
        if let Some(s) = &self.settings {
            d.field("query", &s.query)
                .field("min_ttl", &s.min_ttl)
                .field("max_ttl", &s.max_ttl)
                .field("jitter", &s.jitter)
                .field("max_stale", &s.max_stale)
                .field("max_endpoints", &s.max_endpoints);
        }
        d.field("running", &self.running.is_some()).finish()
    }
}

impl Dns {
    /// Resolves the A and AAAA records of `name`; each address becomes an endpoint on
    /// `port` with weight 1. An IP address resolves to itself.
    ///
    /// Fails with [`DnsError::InvalidName`] for a malformed name and
    /// [`DnsError::InvalidPort`] for port 0.
    pub fn a(name: &str, port: u16) -> Result<Self, DnsError> {
        if port == 0 {
            return Err(DnsError::InvalidPort);
        }
        let query = match name.parse::<IpAddr>() {
            Ok(ip) => Query::Literal(SocketAddr::new(ip, port)),
            Err(_) => Query::Ip {
                name: parse_name(name)?,
                text: name.to_string(),
                port,
            },
        };
        Ok(Self::new(query))
    }

    /// Resolves the SRV records of `name` (such as `_http._tcp.api.example.com.`); see the
    /// [module docs](self#two-ways-to-resolve-a-name) for ports, weights and priorities.
    ///
    /// Fails with [`DnsError::InvalidName`] for a malformed name.
    pub fn srv(name: &str) -> Result<Self, DnsError> {
        Ok(Self::new(Query::Srv {
            name: parse_name(name)?,
            text: name.to_string(),
        }))
    }

    fn new(query: Query) -> Self {
        Dns {
            settings: Some(Settings::new(query)),
            running: None,
        }
    }

    /// Changes the settings. Once the source has been polled its settings are in use and
    /// a change does nothing (the setters are meant for building, before the balancer).
    fn set(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        if let Some(settings) = self.settings.as_mut() {
            change(settings);
        }
        self
    }

    /// The shortest time between two lookups, whatever the TTL (default 5 s); also the
    /// pause before retrying a failed lookup. Must be greater than zero.
    pub fn min_ttl(self, min: Duration) -> Self {
        self.set(|s| s.min_ttl = min)
    }

    /// The longest time between two lookups, whatever the TTL (default 5 min). Must be at
    /// least [`min_ttl`](Dns::min_ttl).
    pub fn max_ttl(self, max: Duration) -> Self {
        self.set(|s| s.max_ttl = max)
    }

    /// The random share added to each pause, from 0.0 (none) to 1.0 (up to double);
    /// default 0.1. Must be within `0..=1`.
    pub fn jitter(self, jitter: f64) -> Self {
        self.set(|s| s.jitter = jitter)
    }

    /// How long after the last good answer the set is kept while lookups fail or come
    /// back empty; then every endpoint is removed. Default: kept for ever.
    pub fn max_stale(self, max: Duration) -> Self {
        self.set(|s| s.max_stale = Some(max))
    }

    /// The most endpoints one answer may give (default 1024; at least 1). Beyond it the
    /// lowest addresses are kept and a warning is logged.
    pub fn max_endpoints(self, max: usize) -> Self {
        self.set(|s| s.max_endpoints = max)
    }

    /// Sends queries to these name servers (over UDP, and TCP for long answers) instead
    /// of the system's, with no search domains and no cache.
    pub fn nameservers(self, servers: impl IntoIterator<Item = SocketAddr>) -> Self {
        let mut config = ResolverConfig::new();
        for addr in servers {
            config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
        }
        self.resolver_config(config, ResolverOpts::default())
    }

    /// Builds the resolver from this configuration and these options, with its cache
    /// turned off and both A and AAAA queried.
    pub fn resolver_config(self, config: ResolverConfig, options: ResolverOpts) -> Self {
        self.set(|s| s.resolver = ResolverSource::Config(Box::new((config, options))))
    }

    /// Uses this resolver as it is (its cache and address-family strategy included).
    pub fn resolver(self, resolver: TokioResolver) -> Self {
        self.set(|s| s.resolver = ResolverSource::Given(Box::new(resolver)))
    }

    /// The source as a `Stream` of [`DnsChange`]s, to combine it with stream adapters (a
    /// `map` that adds metadata, say) or to read it by hand. The balancer takes the `Dns`
    /// itself, which lets `build_with` check its settings; a stream whose settings are
    /// invalid yields one [`DnsError::InvalidConfig`] and ends.
    pub fn into_stream(mut self) -> impl Stream<Item = DnsChange> + Send + Unpin {
        futures_util::stream::poll_fn(move |cx| Pin::new(&mut self).poll_change(cx))
    }
}

impl Discover<SocketAddr, ()> for Dns {
    type Error = DnsError;

    /// The next change: the first answer as a [`Change::Reset`], then the differences, and
    /// a [`DnsError`] for each failed lookup. A source whose settings are invalid (see
    /// [`validate`](Discover::validate)) yields one error saying so and ends.
    fn poll_change(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> PollChange<SocketAddr, (), DnsError> {
        let this = self.get_mut();
        let running = match &mut this.running {
            Some(running) => running,
            None => {
                let Some(settings) = this.settings.take() else {
                    return Poll::Ready(None);
                };
                if let Err(invalid) = settings.validate() {
                    return Poll::Ready(Some(Err(DnsError::InvalidConfig(invalid))));
                }
                this.running
                    .insert(Box::pin(Runner::changes(settings, Rng::default())))
            }
        };
        running.as_mut().poll_next(cx)
    }

    fn validate(&self) -> Result<(), BuildError> {
        self.settings.as_ref().map_or(Ok(()), Settings::validate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream::StreamExt;

    #[test]
    fn bad_input_is_a_typed_error() {
        assert!(matches!(
            Dns::a("web.example.", 0),
            Err(DnsError::InvalidPort)
        ));
        for bad in [
            "",
            ".",
            "a..b",
            "has space.example",
            "tab\there",
            &"x".repeat(64),
            &format!("{}.", ["abcdefghij"; 30].join(".")),
        ] {
            assert!(
                matches!(Dns::a(bad, 80), Err(DnsError::InvalidName { .. })),
                "{bad:?} accepted"
            );
            assert!(
                matches!(Dns::srv(bad), Err(DnsError::InvalidName { .. })),
                "{bad:?}"
            );
        }
        assert!(Dns::a("web.example.", 80).is_ok());
        assert!(Dns::a("127.0.0.1", 80).is_ok());
        assert!(Dns::a("::1", 80).is_ok());
        assert!(Dns::srv("_http._tcp.web.example.").is_ok());
    }

    #[test]
    fn settings_out_of_range_are_rejected_not_clamped() {
        let dns = || Dns::a("web.example.", 80).unwrap();
        let field = |dns: Dns| match dns.validate() {
            Err(BuildError::InvalidConfig(invalid)) => invalid.field(),
            Ok(()) => "accepted",
        };
        assert_eq!(field(dns().min_ttl(Duration::ZERO)), "Dns::min_ttl");
        assert_eq!(
            field(
                dns()
                    .min_ttl(Duration::from_secs(10))
                    .max_ttl(Duration::from_secs(9))
            ),
            "Dns::max_ttl"
        );
        for jitter in [-0.1, 1.5, f64::NAN] {
            assert_eq!(field(dns().jitter(jitter)), "Dns::jitter", "{jitter}");
        }
        assert_eq!(field(dns().max_endpoints(0)), "Dns::max_endpoints");
        assert_eq!(
            field(dns().jitter(1.0).max_ttl(Duration::from_secs(5))),
            "accepted"
        );
    }

    #[tokio::test]
    async fn invalid_settings_polled_anyway_end_the_source_with_an_error() {
        let mut changes = Dns::a("127.0.0.7", 9000).unwrap().jitter(2.0).into_stream();
        assert!(matches!(
            changes.next().await,
            Some(Err(DnsError::InvalidConfig(_)))
        ));
        assert!(changes.next().await.is_none());
    }

    #[tokio::test]
    async fn an_ip_address_resolves_to_itself() {
        let mut changes = Dns::a("127.0.0.7", 9000).unwrap().into_stream();
        match changes.next().await {
            Some(Ok(Change::Reset(list))) => {
                assert_eq!(list.len(), 1);
                assert_eq!(list[0].key, "127.0.0.7:9000".parse().unwrap());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
