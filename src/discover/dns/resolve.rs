//! One lookup: the resolver, and an answer's endpoints and TTL for A/AAAA and SRV records.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use hickory_resolver::config::{LookupIpStrategy, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{Name, TokioResolver};

use super::error::DnsError;
use super::settings::{Query, ResolverSource};
use crate::endpoint::Endpoint;

fn no_cache(mut options: ResolverOpts) -> ResolverOpts {
    options.cache_size = 0;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options
}

pub(super) fn build_resolver(source: &ResolverSource) -> Result<TokioResolver, DnsError> {
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
pub(super) struct Answer {
    pub(super) endpoints: Vec<Endpoint<SocketAddr, ()>>,
    pub(super) ttl: Duration,
}

fn remaining(valid_until: std::time::Instant) -> Duration {
    valid_until.saturating_duration_since(std::time::Instant::now())
}

pub(super) async fn resolve(resolver: &TokioResolver, query: &Query) -> Result<Answer, DnsError> {
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
