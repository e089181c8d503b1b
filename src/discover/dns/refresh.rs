//! The refresh loop of a [`Dns`](super::Dns) source: a lookup when the last answer
//! expires, the difference from the previous answer as changes, and the rules for failed
//! and oversized answers.

use std::net::SocketAddr;
use std::time::Duration;

use futures_core::Stream;
use futures_util::stream::{self, StreamExt};
use hickory_resolver::TokioResolver;
use tokio::time::Instant;

use super::error::DnsError;
use super::resolve::{build_resolver, resolve};
use super::settings::Settings;
use super::DnsChange;
use crate::discover::snapshots::SetDiff;
use crate::endpoint::Endpoint;
use crate::strategy::rng::Rng;
use crate::time::after;

/// The state the stream carries between lookups.
pub(super) struct Runner {
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
    /// The changes of a source with these settings, lookup after lookup.
    pub(super) fn changes(settings: Settings, rng: Rng) -> impl Stream<Item = DnsChange> + Send {
        let runner = Runner {
            settings,
            resolver: None,
            diff: SetDiff::default(),
            next_at: None,
            last_good: None,
            rng,
        };
        stream::unfold(runner, |mut runner| async move {
            let batch = runner.step().await;
            Some((stream::iter(batch), runner))
        })
        .flatten()
    }

    fn name(&self) -> String {
        self.settings.query.name()
    }

    /// The pause before the next lookup of an answer valid for `base`: within the TTL
    /// bounds, plus the jitter. (The settings were checked: `min_ttl <= max_ttl`.)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::dns::settings::{parse_name, Query};

    #[test]
    fn pauses_stay_within_bounds() {
        let runner = Runner {
            settings: Settings {
                min_ttl: Duration::from_secs(2),
                max_ttl: Duration::from_secs(10),
                jitter: 0.5,
                ..Settings::new(Query::Ip {
                    name: parse_name("x.example.").unwrap(),
                    text: "x.example.".into(),
                    port: 1,
                })
            },
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
}
