//! What a [`Dns`](super::Dns) source resolves and how: the query, the refresh bounds, the
//! resolver, and their checks.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{ResolverConfig, ResolverOpts};
use hickory_resolver::{Name, TokioResolver};

use super::error::DnsError;
use crate::error::BuildError;

/// What is resolved.
#[derive(Debug, Clone)]
pub(super) enum Query {
    /// The A and AAAA records of `name` (`text` as given), on `port`.
    Ip { name: Name, text: String, port: u16 },
    /// An IP address given in place of a name: itself.
    Literal(SocketAddr),
    /// The SRV records of `name` (`text` as given).
    Srv { name: Name, text: String },
}

/// Where the resolver comes from.
pub(super) enum ResolverSource {
    /// Built from the system's configuration at the first lookup.
    System,
    /// Built from this configuration, with its cache turned off.
    Config(Box<(ResolverConfig, ResolverOpts)>),
    /// Given, used as it is.
    Given(Box<TokioResolver>),
}

/// A source's settings, as the setters left them.
pub(super) struct Settings {
    pub(super) query: Query,
    /// The shortest pause between lookups, and the pause after a failed one.
    pub(super) min_ttl: Duration,
    /// The longest pause between lookups.
    pub(super) max_ttl: Duration,
    /// The random share added to each pause.
    pub(super) jitter: f64,
    /// How long the last good set is kept while lookups fail; `None`: for ever.
    pub(super) max_stale: Option<Duration>,
    /// The most endpoints one answer may give.
    pub(super) max_endpoints: usize,
    pub(super) resolver: ResolverSource,
}

impl Query {
    /// The name as given, for logs and errors.
    pub(super) fn name(&self) -> String {
        match self {
            Query::Ip { text, .. } | Query::Srv { text, .. } => text.clone(),
            Query::Literal(addr) => addr.to_string(),
        }
    }
}

impl Settings {
    /// The defaults for `query`: min TTL 5 s, max TTL 5 min, jitter 0.1, kept for ever
    /// while lookups fail, at most 1024 endpoints, the system's resolver.
    pub(super) fn new(query: Query) -> Self {
        Settings {
            query,
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(300),
            jitter: 0.1,
            max_stale: None,
            max_endpoints: 1024,
            resolver: ResolverSource::System,
        }
    }

    /// Checks the settings, as the balancer checks its own when it is built.
    pub(super) fn validate(&self) -> Result<(), BuildError> {
        BuildError::reject_if(
            self.min_ttl.is_zero(),
            "Dns::min_ttl",
            self.min_ttl,
            "greater than zero",
        )?;
        BuildError::reject_if(
            self.max_ttl < self.min_ttl,
            "Dns::max_ttl",
            self.max_ttl,
            "at least min_ttl",
        )?;
        BuildError::reject_if(
            !(0.0..=1.0).contains(&self.jitter),
            "Dns::jitter",
            self.jitter,
            "within 0..=1",
        )?;
        BuildError::reject_if(
            self.max_endpoints == 0,
            "Dns::max_endpoints",
            self.max_endpoints,
            "at least 1",
        )?;
        Ok(())
    }
}

/// Parses a DNS name, rejecting what no server could answer.
pub(super) fn parse_name(name: &str) -> Result<Name, DnsError> {
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
