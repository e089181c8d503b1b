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

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use futures_util::stream::{self, StreamExt};
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{Name, ResolveError, TokioResolver};
use tokio::time::Instant;

use super::snapshots::SetDiff;
use super::Change;
use crate::endpoint::Endpoint;
use crate::strategy::rng::Rng;
use crate::time::after;

/// What a [`Dns`] source yields.
pub type DnsChange = Result<Change<SocketAddr, ()>, DnsError>;

/// Why a DNS name could not be used or resolved.
///
/// Errors from [`Dns::a`] and [`Dns::srv`] reject bad input before any query. Errors the
/// stream yields keep the last good set (see the [module docs](self#failures)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DnsError {
    /// The name is not a valid DNS name (empty, an empty label, a label over 63 bytes, a
    /// name over 255 bytes, characters IDNA rejects).
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Port 0 was given to [`Dns::a`]; no endpoint can listen there.
    InvalidPort,
    /// The system's resolver configuration could not be read.
    Config(String),
    /// The name does not exist (`NXDOMAIN`).
    NotFound {
        /// The name looked up.
        name: String,
    },
    /// The name exists but has no usable records: an empty answer, or only SRV records
    /// whose targets do not resolve (or all have port 0 or target `.`).
    NoRecords {
        /// The name looked up.
        name: String,
    },
    /// The lookup failed: the server answered with an error (SERVFAIL, REFUSED), or did
    /// not answer in time.
    Resolve {
        /// The name looked up.
        name: String,
        /// The server's response code, when it sent one.
        response_code: Option<u16>,
        /// The resolver's error.
        source: ResolveError,
    },
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::InvalidName { name, reason } => {
                write!(f, "invalid DNS name {name:?}: {reason}")
            }
            DnsError::InvalidPort => f.write_str("port 0 is not a valid endpoint port"),
            DnsError::Config(e) => write!(f, "cannot read the system's DNS configuration: {e}"),
            DnsError::NotFound { name } => write!(f, "DNS name {name} does not exist (NXDOMAIN)"),
            DnsError::NoRecords { name } => {
                write!(
                    f,
                    "DNS name {name} has no usable records; the last set is kept"
                )
            }
            DnsError::Resolve {
                name,
                response_code: Some(code),
                ..
            } => write!(
                f,
                "DNS lookup of {name} failed with {}; the last set is kept",
                <ResponseCode as From<u16>>::from(*code)
            ),
            DnsError::Resolve { name, source, .. } => {
                write!(
                    f,
                    "DNS lookup of {name} failed: {source}; the last set is kept"
                )
            }
        }
    }
}

impl std::error::Error for DnsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DnsError::Resolve { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl DnsError {
    fn from_resolve(name: &str, e: ResolveError) -> Self {
        let name = name.to_string();
        if let Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) =
            e.proto().map(|p| p.kind())
        {
            match *response_code {
                ResponseCode::NXDomain => return DnsError::NotFound { name },
                ResponseCode::NoError => return DnsError::NoRecords { name },
                code => {
                    return DnsError::Resolve {
                        name,
                        response_code: Some(u16::from(code)),
                        source: e,
                    }
                }
            }
        }
        DnsError::Resolve {
            name,
            response_code: None,
            source: e,
        }
    }
}

#[derive(Debug, Clone)]
enum Query {
    Ip { name: Name, text: String, port: u16 },
    Literal(SocketAddr),
    Srv { name: Name, text: String },
}

enum ResolverSource {
    System,
    Config(Box<(ResolverConfig, ResolverOpts)>),
    Given(Box<TokioResolver>),
}

struct Settings {
    query: Query,
    min_ttl: Duration,
    max_ttl: Duration,
    jitter: f64,
    max_stale: Option<Duration>,
    max_endpoints: usize,
    resolver: ResolverSource,
}

/// A discovery source that resolves a DNS name. See the [module docs](self).
///
/// Build it with [`Dns::a`] or [`Dns::srv`], adjust it with the setters, and pass it to
/// [`Builder::build_with`](crate::Builder::build_with). Nothing is queried until the
/// balancer polls it.
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

fn parse_name(name: &str) -> Result<Name, DnsError> {
    let invalid = |reason: String| DnsError::InvalidName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() || name == "." {
        return Err(invalid("the name is empty".into()));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("whitespace or control characters".into()));
    }
    let parsed = Name::from_utf8(name).map_err(|e| invalid(e.to_string()))?;
    if parsed.num_labels() == 0 {
        return Err(invalid("the name is empty".into()));
    }
    Ok(parsed)
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
            settings: Some(Settings {
                query,
                min_ttl: Duration::from_secs(5),
                max_ttl: Duration::from_secs(300),
                jitter: 0.1,
                max_stale: None,
                max_endpoints: 1024,
                resolver: ResolverSource::System,
            }),
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
    /// pause before retrying a failed lookup. Zero is taken as 1 ms.
    pub fn min_ttl(self, min: Duration) -> Self {
        self.set(|s| s.min_ttl = min.max(Duration::from_millis(1)))
    }

    /// The longest time between two lookups, whatever the TTL (default 5 min). A value
    /// below [`min_ttl`](Dns::min_ttl) is raised to it.
    pub fn max_ttl(self, max: Duration) -> Self {
        self.set(|s| s.max_ttl = max)
    }

    /// The random share added to each pause, from 0.0 (none) to 1.0 (up to double);
    /// default 0.1. Values outside are clamped, NaN is 0.
    pub fn jitter(self, jitter: f64) -> Self {
        let jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
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
        self.set(|s| s.max_endpoints = max.max(1))
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
}

fn no_cache(mut options: ResolverOpts) -> ResolverOpts {
    options.cache_size = 0;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options
}

fn build_resolver(source: &ResolverSource) -> Result<TokioResolver, DnsError> {
    let provider = TokioConnectionProvider::default();
    Ok(match source {
        ResolverSource::Given(r) => (**r).clone(),
        ResolverSource::Config(c) => {
            let (config, options) = &**c;
            TokioResolver::builder_with_config(config.clone(), provider)
                .with_options(no_cache(options.clone()))
                .build()
        }
        ResolverSource::System => {
            let mut builder =
                TokioResolver::builder(provider).map_err(|e| DnsError::Config(e.to_string()))?;
            let options = no_cache(builder.options_mut().clone());
            *builder.options_mut() = options;
            builder.build()
        }
    })
}

/// One answer: the endpoints and how long it is valid.
struct Answer {
    endpoints: Vec<Endpoint<SocketAddr, ()>>,
    ttl: Duration,
}

fn remaining(valid_until: std::time::Instant) -> Duration {
    valid_until.saturating_duration_since(std::time::Instant::now())
}

async fn resolve(resolver: &TokioResolver, query: &Query) -> Result<Answer, DnsError> {
    match query {
        Query::Literal(addr) => Ok(Answer {
            endpoints: vec![Endpoint::new(*addr, ())],
            ttl: Duration::MAX,
        }),
        Query::Ip { name, text, port } => {
            let lookup = resolver
                .lookup_ip(name.clone())
                .await
                .map_err(|e| DnsError::from_resolve(text, e))?;
            let endpoints = lookup
                .iter()
                .map(|ip| Endpoint::new(SocketAddr::new(ip, *port), ()))
                .collect();
            Ok(Answer {
                endpoints,
                ttl: remaining(lookup.valid_until()),
            })
        }
        Query::Srv { name, text } => resolve_srv(resolver, name, text).await,
    }
}

/// At most this many target lookups of one SRV answer run at once.
const SRV_CONCURRENCY: usize = 16;

async fn resolve_srv(
    resolver: &TokioResolver,
    name: &Name,
    text: &str,
) -> Result<Answer, DnsError> {
    let lookup = resolver
        .srv_lookup(name.clone())
        .await
        .map_err(|e| DnsError::from_resolve(text, e))?;
    let mut ttl = remaining(lookup.as_lookup().valid_until());
    // Priority groups, lowest number first; records with target "." or port 0 are unusable.
    let mut groups: BTreeMap<u16, Vec<(Name, u16, u16)>> = BTreeMap::new();
    for srv in lookup.iter() {
        if srv.target().is_root() || srv.port() == 0 {
            tracing::debug!(name = text, target = %srv.target(), port = srv.port(), "unusable SRV record skipped");
            continue;
        }
        groups.entry(srv.priority()).or_default().push((
            srv.target().clone(),
            srv.port(),
            srv.weight(),
        ));
    }
    for (priority, records) in groups {
        let mut targets: Vec<Name> = records.iter().map(|(t, _, _)| t.clone()).collect();
        targets.sort();
        targets.dedup();
        let resolved: HashMap<Name, (Vec<IpAddr>, Duration)> = stream::iter(targets)
            .map(|target| async move {
                let result = resolver.lookup_ip(target.clone()).await;
                (target, result)
            })
            .buffer_unordered(SRV_CONCURRENCY)
            .filter_map(|(target, result)| async move {
                match result {
                    Ok(ips) => Some((
                        target,
                        (ips.iter().collect(), remaining(ips.valid_until())),
                    )),
                    Err(e) => {
                        tracing::warn!(name = text, %target, error = %e, "SRV target does not resolve; skipped");
                        None
                    }
                }
            })
            .collect()
            .await;
        let all_zero = records.iter().all(|(_, _, w)| *w == 0);
        let mut endpoints: Vec<Endpoint<SocketAddr, ()>> = Vec::new();
        let mut index: HashMap<SocketAddr, usize> = HashMap::new();
        let mut group_ttl = ttl;
        for (target, port, weight) in &records {
            let Some((ips, target_ttl)) = resolved.get(target) else {
                continue;
            };
            group_ttl = group_ttl.min(*target_ttl);
            let weight = if all_zero { 1 } else { u32::from(*weight) };
            for ip in ips {
                let addr = SocketAddr::new(*ip, *port);
                match index.get(&addr) {
                    Some(&i) => {
                        endpoints[i].weight = endpoints[i].weight.saturating_add(weight);
                    }
                    None => {
                        index.insert(addr, endpoints.len());
                        endpoints.push(Endpoint::new(addr, ()).with_weight(weight));
                    }
                }
            }
        }
        if !endpoints.is_empty() {
            ttl = group_ttl;
            tracing::trace!(
                name = text,
                priority,
                endpoints = endpoints.len(),
                "SRV group chosen"
            );
            return Ok(Answer { endpoints, ttl });
        }
        tracing::debug!(
            name = text,
            priority,
            "no target of this SRV priority group resolves; trying the next"
        );
    }
    Err(DnsError::NoRecords {
        name: text.to_string(),
    })
}

/// The state the stream carries between lookups.
struct Runner {
    settings: Settings,
    resolver: Option<TokioResolver>,
    /// The addresses and weights the balancer has from us, and what changed since.
    diff: SetDiff<SocketAddr>,
    /// When the next lookup is due; `None` means now.
    next_at: Option<Instant>,
    /// When the last good answer came.
    last_good: Option<Instant>,
    rng: Rng,
}

impl Runner {
    fn name(&self) -> String {
        match &self.settings.query {
            Query::Ip { text, .. } | Query::Srv { text, .. } => text.clone(),
            Query::Literal(addr) => addr.to_string(),
        }
    }

    fn pause(&self, base: Duration) -> Duration {
        let base = base.clamp(
            self.settings.min_ttl,
            self.settings.max_ttl.max(self.settings.min_ttl),
        );
        let extra = base.as_secs_f64() * self.settings.jitter * self.rng.unit();
        base.saturating_add(Duration::try_from_secs_f64(extra).unwrap_or_default())
    }

    async fn step(&mut self) -> Vec<DnsChange> {
        if let Some(at) = self.next_at {
            tokio::time::sleep_until(at).await;
        }
        let result = match &self.resolver {
            Some(r) => resolve(r, &self.settings.query).await,
            None => match build_resolver(&self.settings.resolver) {
                Ok(r) => {
                    let result = resolve(&r, &self.settings.query).await;
                    self.resolver = Some(r);
                    result
                }
                Err(e) => Err(e),
            },
        };
        let now = Instant::now();
        match result {
            Ok(answer) if !answer.endpoints.is_empty() => {
                self.next_at = Some(after(now, self.pause(answer.ttl)));
                self.last_good = Some(now);
                self.apply(answer.endpoints)
            }
            Ok(_) => self.failed(DnsError::NoRecords { name: self.name() }, now),
            Err(e) => self.failed(e, now),
        }
    }

    fn failed(&mut self, e: DnsError, now: Instant) -> Vec<DnsChange> {
        self.next_at = Some(after(now, self.pause(self.settings.min_ttl)));
        let mut out = vec![Err(e)];
        let stale = match (self.settings.max_stale, self.last_good) {
            (Some(max), Some(at)) => now.saturating_duration_since(at) >= max,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if stale && !self.diff.is_empty() {
            tracing::warn!(
                name = %self.name(),
                endpoints = self.diff.len(),
                "no good DNS answer for longer than max_stale; removing every endpoint"
            );
            out.extend(self.diff.remove_all().into_iter().map(Ok));
        }
        out
    }

    fn apply(&mut self, mut endpoints: Vec<Endpoint<SocketAddr, ()>>) -> Vec<DnsChange> {
        if endpoints.len() > self.settings.max_endpoints {
            endpoints.sort_by_key(|e| e.key);
            endpoints.dedup_by_key(|e| e.key);
            if endpoints.len() > self.settings.max_endpoints {
                tracing::warn!(
                    name = %self.name(),
                    answered = endpoints.len(),
                    kept = self.settings.max_endpoints,
                    "DNS answer has more addresses than max_endpoints; keeping the lowest"
                );
                endpoints.truncate(self.settings.max_endpoints);
            }
        }
        let out: Vec<DnsChange> = self.diff.diff(endpoints).into_iter().map(Ok).collect();
        if !out.is_empty() {
            tracing::debug!(name = %self.name(), endpoints = self.diff.len(), changes = out.len(), "DNS answer changed the set");
        }
        out
    }
}

impl Stream for Dns {
    type Item = DnsChange;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<DnsChange>> {
        let this = self.get_mut();
        let running = match &mut this.running {
            Some(running) => running,
            None => {
                let Some(settings) = this.settings.take() else {
                    return Poll::Ready(None);
                };
                let runner = Runner {
                    settings,
                    resolver: None,
                    diff: SetDiff::default(),
                    next_at: None,
                    last_good: None,
                    rng: Rng::default(),
                };
                let inner = stream::unfold(runner, |mut runner| async move {
                    let batch = runner.step().await;
                    Some((stream::iter(batch), runner))
                })
                .flatten();
                this.running.insert(Box::pin(inner))
            }
        };
        running.as_mut().poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn pauses_stay_within_bounds() {
        let runner = Runner {
            settings: Dns::a("x.example.", 1)
                .unwrap()
                .min_ttl(Duration::from_secs(2))
                .max_ttl(Duration::from_secs(10))
                .jitter(0.5)
                .settings
                .unwrap(),
            resolver: None,
            diff: SetDiff::default(),
            next_at: None,
            last_good: None,
            rng: Rng::seeded(3),
        };
        for ttl in [Duration::ZERO, Duration::from_secs(4), Duration::MAX] {
            for _ in 0..100 {
                let p = runner.pause(ttl);
                let base = ttl.clamp(Duration::from_secs(2), Duration::from_secs(10));
                assert!(p >= base && p <= base.mul_f64(1.5), "{ttl:?} -> {p:?}");
            }
        }
    }

    #[tokio::test]
    async fn an_ip_address_resolves_to_itself() {
        let mut dns = Dns::a("127.0.0.7", 9000).unwrap();
        match dns.next().await {
            Some(Ok(Change::Reset(list))) => {
                assert_eq!(list.len(), 1);
                assert_eq!(list[0].key, "127.0.0.7:9000".parse().unwrap());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
