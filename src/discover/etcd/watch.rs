//! The discovery loop: list the prefix, watch it from the list's revision, and after any
//! failure list it again and send only what changed.

use std::collections::HashMap;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions, WatchStream, Watcher};
use tokio::time::Instant;

use super::error::{EtcdError, InvalidValue, Operation};
use super::key::EtcdKey;
use super::value::{EndpointValue, ValueError};
use super::EtcdChange;
use crate::discover::Change;
use crate::endpoint::{Endpoint, Metadata};
use crate::error::BuildError;
use crate::strategy::rng::Rng;

/// A discovery source's settings.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) prefix: String,
    /// The longest wait for a list or for a watch to start.
    pub(super) request_timeout: Duration,
    /// The pause before the first retry; it doubles with each failure in a row.
    pub(super) backoff_min: Duration,
    /// The longest pause between retries.
    pub(super) backoff_max: Duration,
}

impl Settings {
    /// Checks the settings, as the balancer checks its own when it is built.
    pub(super) fn validate(&self) -> Result<(), BuildError> {
        BuildError::reject_if(
            self.request_timeout.is_zero(),
            "Etcd::request_timeout",
            self.request_timeout,
            "greater than zero",
        )?;
        BuildError::reject_if(
            self.backoff_min.is_zero(),
            "Etcd::backoff (first)",
            self.backoff_min,
            "greater than zero",
        )?;
        BuildError::reject_if(
            self.backoff_max < self.backoff_min,
            "Etcd::backoff (max)",
            self.backoff_max,
            "at least the first pause",
        )
    }
}

/// What the balancer has from us for one etcd key.
#[derive(Debug, Clone, PartialEq)]
struct Known {
    key: EtcdKey,
    weight: u32,
    metadata: Metadata,
}

impl Known {
    fn endpoint(&self) -> Endpoint<EtcdKey, ()> {
        Endpoint::new(self.key.clone(), ())
            .with_weight(self.weight)
            .with_metadata(self.metadata.clone())
    }
}

enum Phase {
    /// List the prefix (after a pause when `failures` > 0).
    List,
    /// Start a watch from this revision.
    Watch { from: i64 },
    /// Read the watch. The watcher is kept so that the watch lives as long as the stream.
    Watching {
        _watcher: Watcher,
        stream: Box<WatchStream>,
        /// When the watch started.
        since: Instant,
    },
}

pub(super) struct Runner {
    client: Client,
    settings: Settings,
    /// The endpoints the balancer has from us, by etcd key.
    known: HashMap<String, Known>,
    /// Send the next non-empty set as a whole reset: no list has succeeded yet, or the last
    /// one was empty and was sent as an empty reset (which the balancer ignores by default,
    /// so it may still have endpoints we no longer know).
    resync: bool,
    phase: Phase,
    /// Failures in a row, for the backoff. A list that works does not end the run: only a
    /// watch that lasts [`backoff_max`](Settings::backoff_max) does, so a member that
    /// lists but cancels every watch is retried at a slowing pace too.
    failures: u32,
    rng: Rng,
}

impl Runner {
    pub(super) fn new(client: Client, settings: Settings) -> Self {
        Runner {
            client,
            settings,
            known: HashMap::new(),
            resync: true,
            phase: Phase::List,
            failures: 0,
            rng: Rng::default(),
        }
    }

    fn pause(&self) -> Duration {
        let s = &self.settings;
        pause(self.failures, s.backoff_min, s.backoff_max, self.rng.unit())
    }

    /// One step: whatever changes it found (possibly none) and errors, in that order.
    pub(super) async fn step(&mut self) -> Vec<EtcdChange> {
        match std::mem::replace(&mut self.phase, Phase::List) {
            Phase::List => {
                if self.failures > 0 {
                    tokio::time::sleep(self.pause()).await;
                }
                self.list().await
            }
            Phase::Watch { from } => self.start_watch(from).await,
            Phase::Watching {
                _watcher,
                mut stream,
                since,
            } => {
                let message = stream.message().await;
                if since.elapsed() >= self.settings.backoff_max {
                    self.failures = 0;
                }
                let prefix = || self.settings.prefix.clone();
                let out = match message {
                    Ok(Some(response)) if response.compact_revision() != 0 => {
                        vec![Err(EtcdError::Compacted {
                            prefix: prefix(),
                            compact_revision: response.compact_revision(),
                        })]
                    }
                    Ok(Some(response)) if response.canceled() => {
                        self.failures += 1;
                        vec![Err(EtcdError::Canceled {
                            prefix: prefix(),
                            reason: response.cancel_reason().to_string(),
                        })]
                    }
                    Ok(Some(response)) => {
                        self.phase = Phase::Watching {
                            _watcher,
                            stream,
                            since,
                        };
                        return self.apply_events(response.events());
                    }
                    Ok(None) => {
                        self.failures += 1;
                        vec![Err(EtcdError::WatchEnded { prefix: prefix() })]
                    }
                    Err(e) => {
                        self.failures += 1;
                        vec![Err(EtcdError::request(Operation::Watch, &prefix(), e))]
                    }
                };
                tracing::debug!(prefix = %self.settings.prefix, "etcd watch lost; listing again");
                out
            }
        }
    }

    async fn list(&mut self) -> Vec<EtcdChange> {
        match self.list_pages().await {
            Ok((revision, kvs)) => {
                self.phase = Phase::Watch { from: revision + 1 };
                self.apply_list(kvs)
            }
            Err(e) => {
                self.failures += 1;
                vec![Err(e)]
            }
        }
    }

    /// Every key under the prefix, at the revision of the first page, [`LIST_PAGE`] keys
    /// per request; and that revision.
    async fn list_pages(&mut self) -> Result<(i64, Vec<KeyValue>), EtcdError> {
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE);
        let prefix = &self.settings.prefix;
        let end = prefix_end(prefix.as_bytes());
        // etcd takes an empty key as no key: the first key of all is "\0".
        let mut from = if prefix.is_empty() {
            vec![0]
        } else {
            prefix.as_bytes().to_vec()
        };
        let mut revision = 0;
        let mut kvs = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if revision != 0 {
                options = options.with_revision(revision);
            }
            let mut page = EtcdError::bounded(
                Operation::List,
                prefix,
                self.settings.request_timeout,
                kv.get(from.clone(), Some(options)),
            )
            .await?;
            if revision == 0 {
                revision = page.header().map_or(0, |h| h.revision());
            }
            let more = page.more();
            let taken = page.take_kvs();
            match taken.last() {
                Some(last) if more => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => {
                    kvs.extend(taken);
                    return Ok((revision, kvs));
                }
            }
            kvs.extend(taken);
        }
    }

    async fn start_watch(&mut self, from: i64) -> Vec<EtcdChange> {
        let mut watch = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE);
        let prefix = self.settings.prefix.clone();
        let options = WatchOptions::new().with_prefix().with_start_revision(from);
        let started = EtcdError::bounded(
            Operation::Watch,
            &prefix,
            self.settings.request_timeout,
            watch.watch(prefix.as_bytes(), Some(options)),
        )
        .await;
        match started {
            Ok((watcher, stream)) => {
                tracing::debug!(prefix = %prefix, from, "etcd watch started");
                self.phase = Phase::Watching {
                    _watcher: watcher,
                    stream: Box::new(stream),
                    since: Instant::now(),
                };
                Vec::new()
            }
            Err(e) => {
                self.failures += 1;
                vec![Err(e)]
            }
        }
    }

    /// A full list: the first as a reset, later ones as the differences from what the
    /// balancer has. A list that empties a non-empty set is an empty reset, so that the
    /// balancer's [`allow_empty_reset`](crate::Builder::allow_empty_reset) decides.
    fn apply_list(&mut self, kvs: Vec<KeyValue>) -> Vec<EtcdChange> {
        let mut skipped = Vec::new();
        let mut listed: Vec<(String, Known)> = Vec::with_capacity(kvs.len());
        for kv in &kvs {
            match read(kv) {
                Ok((key, known)) => listed.push((key, known)),
                Err(invalid) => {
                    // A key that had a good value keeps it.
                    if let Some(old) = self.known.get(&invalid.key) {
                        listed.push((invalid.key.clone(), old.clone()));
                    }
                    skipped.push(invalid);
                }
            }
        }
        let mut out = Vec::new();
        if listed.is_empty() {
            if !self.known.is_empty() {
                tracing::warn!(prefix = %self.settings.prefix, "etcd prefix listed empty; sending an empty reset");
                out.push(Ok(Change::Reset(Vec::new())));
                self.resync = true;
            }
            self.known.clear();
        } else if std::mem::take(&mut self.resync) {
            out.push(Ok(Change::Reset(
                listed.iter().map(|(_, k)| k.endpoint()).collect(),
            )));
            self.known = listed.into_iter().collect();
        } else {
            let next: HashMap<String, Known> = listed.into_iter().collect();
            let gone: Vec<String> = self
                .known
                .keys()
                .filter(|k| !next.contains_key(*k))
                .cloned()
                .collect();
            for key in gone {
                if let Some(old) = self.known.remove(&key) {
                    out.push(Ok(Change::Remove(old.key)));
                }
            }
            let mut next: Vec<(String, Known)> = next.into_iter().collect();
            next.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, known) in next {
                out.extend(self.upsert(key, known));
            }
        }
        tracing::debug!(prefix = %self.settings.prefix, endpoints = self.known.len(), changes = out.len(), "etcd prefix listed");
        self.finish(out, skipped)
    }

    fn apply_events(&mut self, events: &[etcd_client::Event]) -> Vec<EtcdChange> {
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        for event in events {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                EventType::Delete => {
                    let key = String::from_utf8_lossy(kv.key());
                    if let Some(old) = self.known.remove(key.as_ref()) {
                        out.push(Ok(Change::Remove(old.key)));
                    }
                }
                EventType::Put => match read(kv) {
                    Ok((key, known)) => out.extend(self.upsert(key, known)),
                    Err(invalid) => skipped.push(invalid),
                },
            }
        }
        if self.resync && !self.known.is_empty() {
            // The first endpoints after an empty list: the whole set, as a reset.
            self.resync = false;
            let mut known: Vec<&Known> = self.known.values().collect();
            known.sort_by(|a, b| a.key.key().cmp(b.key.key()));
            out = vec![Ok(Change::Reset(
                known.into_iter().map(Known::endpoint).collect(),
            ))];
        }
        self.finish(out, skipped)
    }

    /// The changes that make the balancer's endpoint for `key` the one described.
    fn upsert(&mut self, key: String, known: Known) -> Vec<EtcdChange> {
        let mut out = Vec::new();
        match self.known.get(&key) {
            Some(old) if *old == known => return out,
            // A new address is a new endpoint.
            Some(old) if old.key != known.key => out.push(Ok(Change::Remove(old.key.clone()))),
            _ => {}
        }
        out.push(Ok(Change::Insert(known.endpoint())));
        self.known.insert(key, known);
        out
    }

    /// Appends one error naming the skipped keys, after the changes, and logs each.
    fn finish(&self, mut out: Vec<EtcdChange>, skipped: Vec<InvalidValue>) -> Vec<EtcdChange> {
        if skipped.is_empty() {
            return out;
        }
        for s in &skipped {
            tracing::warn!(key = %s.key, error = %s.error, "etcd value skipped");
        }
        out.push(Err(EtcdError::InvalidValues {
            prefix: self.settings.prefix.clone(),
            skipped,
        }));
        out
    }
}

/// Keys per list request. Pages are read at the revision of the first, so the list is one
/// consistent snapshot however many it takes.
const LIST_PAGE: i64 = 500;

/// The largest response accepted: a page of [`LIST_PAGE`] values, or one watch response
/// (all the events of one revision). etcd accepts values up to 1.5 MiB by default
/// (`--max-request-bytes`); tonic's default limit is 4 MiB.
const MAX_MESSAGE: usize = 64 << 20;

/// The end of the key range of `prefix`: the prefix with its last byte below 0xff
/// incremented (what follows it dropped); `"\0"` (every key) when there is none.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|&b| b < 0xff) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            end
        }
        None => vec![0],
    }
}

/// The pause before retry number `failures` (from 1): `min` doubled each time, at most
/// `max`, less `unit` (random, in `[0, 1)`) times half of it ("equal jitter"), so that
/// clients that lost the same etcd do not come back in step.
fn pause(failures: u32, min: Duration, max: Duration, unit: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(30);
    let base = min.saturating_mul(1 << doublings).min(max);
    base.saturating_sub(base.mul_f64(0.5 * unit))
}

/// Reads one key and its value.
fn read(kv: &KeyValue) -> Result<(String, Known), InvalidValue> {
    let key = match std::str::from_utf8(kv.key()) {
        Ok(key) => key.to_string(),
        Err(_) => {
            return Err(InvalidValue {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                error: ValueError::KeyNotUtf8,
            })
        }
    };
    match EndpointValue::parse(kv.value()) {
        Ok(value) => {
            let (addr, weight, mut metadata) = value.into_parts();
            if metadata.name.is_none() {
                metadata.name = Some(addr.clone());
            }
            let known = Known {
                key: EtcdKey::new(key.as_str(), addr),
                weight,
                metadata,
            };
            Ok((key, known))
        }
        Err(error) => Err(InvalidValue { key, error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_less_up_to_half() {
        let ms = Duration::from_millis;
        let pauses: Vec<Duration> = (1..=9)
            .map(|n| pause(n, ms(100), ms(10_000), 0.0))
            .collect();
        assert_eq!(
            pauses,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000].map(ms)
        );
        assert_eq!(pause(3, ms(100), ms(10_000), 0.5), ms(300));
        assert!(pause(3, ms(100), ms(10_000), 0.999_999) > ms(200));
        assert_eq!(
            pause(u32::MAX, ms(100), Duration::MAX, 0.0),
            ms(100) * (1 << 30)
        );
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/svc/"), b"/svc0");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }
}
