use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_util::stream::{self, StreamExt};

use super::Change;
use crate::endpoint::{Endpoint, Metadata};
use crate::error::BoxError;

/// A discovery source that can only list the current endpoints.
///
/// [`from_snapshots`] calls [`snapshot`](Snapshots::snapshot) in a loop and turns
/// consecutive lists into the few changes between them. The source decides the pace: the
/// first call should answer at once, later calls typically wait for a timer or a watch event
/// before listing again.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::discover::Snapshots;
/// use tower_lb::Endpoint;
///
/// /// Lists the addresses in a file every five seconds.
/// struct AddressFile {
///     path: std::path::PathBuf,
///     first: bool,
/// }
///
/// impl Snapshots<String, ()> for AddressFile {
///     type Error = std::io::Error;
///
///     async fn snapshot(&mut self) -> Result<Vec<Endpoint<String, ()>>, std::io::Error> {
///         if !std::mem::take(&mut self.first) {
///             tokio::time::sleep(Duration::from_secs(5)).await;
///         }
///         let text = tokio::fs::read_to_string(&self.path).await?;
///         Ok(text.lines().map(|line| Endpoint::new(line.trim().to_string(), ())).collect())
///     }
/// }
/// ```
pub trait Snapshots<K, S>: Send + 'static {
    /// The error a listing may fail with; it keeps the last set.
    type Error: Into<BoxError>;

    /// Lists every endpoint that should exist now.
    fn snapshot(&mut self)
        -> impl Future<Output = Result<Vec<Endpoint<K, S>>, Self::Error>> + Send;
}

/// Turns a [`Snapshots`] source into a stream of changes.
///
/// - The first list becomes one [`Change::Reset`].
/// - Later lists become an insert for each new key or each key whose weight or metadata
///   changed, and a remove for each key that is gone. An endpoint that did not change keeps
///   its existing service: the new service in the list is dropped, so connections stay.
/// - An empty list becomes an empty reset (which the balancer ignores by default); the list
///   after it is sent as a full reset so that the balancer and the adapter agree again.
/// - A key listed twice counts once, with its first position and its last description.
/// - An error is passed on and changes nothing.
pub fn from_snapshots<K, S, T>(source: T) -> FromSnapshots<K, S>
where
    T: Snapshots<K, S>,
    K: Clone + Eq + Hash + Send + 'static,
    S: Send + 'static,
{
    let state = Differ {
        source,
        diff: SetDiff::default(),
    };
    let inner = stream::unfold(state, |mut state| async move {
        let batch = match state.source.snapshot().await {
            Ok(list) => state.diff.diff(list).into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e.into())],
        };
        Some((stream::iter(batch), state))
    })
    .flatten();
    FromSnapshots {
        inner: Box::pin(inner),
    }
}

/// The stream returned by [`from_snapshots`].
pub struct FromSnapshots<K, S> {
    #[allow(clippy::type_complexity)]
    inner: Pin<Box<dyn Stream<Item = Result<Change<K, S>, BoxError>> + Send>>,
}

impl<K, S> fmt::Debug for FromSnapshots<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromSnapshots").finish_non_exhaustive()
    }
}

impl<K, S> Stream for FromSnapshots<K, S> {
    type Item = Result<Change<K, S>, BoxError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().inner.as_mut().poll_next(cx)
    }
}

struct Differ<T, K> {
    source: T,
    diff: SetDiff<K>,
}

/// Turns successive whole lists of endpoints into changes: the first list (and the one
/// after an empty list, or after [`remove_all`](SetDiff::remove_all)) as a reset, later
/// ones as removes and inserts of what differs, so an unchanged endpoint keeps its service
/// and statistics. Shared by [`from_snapshots`] and DNS discovery.
pub(crate) struct SetDiff<K> {
    known: HashMap<K, (u32, Metadata)>,
    /// Send the next non-empty list as a full reset.
    resync: bool,
}

impl<K> Default for SetDiff<K> {
    fn default() -> Self {
        SetDiff {
            known: HashMap::new(),
            resync: true,
        }
    }
}

impl<K: Clone + Eq + Hash> SetDiff<K> {
    /// The changes from the last list to `list`. A key listed twice counts once, with its
    /// first position and its last description; an empty list is an empty reset.
    pub(crate) fn diff<S>(&mut self, list: Vec<Endpoint<K, S>>) -> Vec<Change<K, S>> {
        let list = dedup_last_wins(list);
        if list.is_empty() {
            self.resync = true;
            return vec![Change::Reset(Vec::new())];
        }
        let next: HashMap<K, (u32, Metadata)> = list
            .iter()
            .map(|e| (e.key.clone(), (e.weight, e.metadata.clone())))
            .collect();
        let mut changes = Vec::new();
        if std::mem::take(&mut self.resync) {
            changes.push(Change::Reset(list));
        } else {
            for key in self.known.keys().filter(|k| !next.contains_key(*k)) {
                changes.push(Change::Remove(key.clone()));
            }
            for e in list {
                let unchanged = self
                    .known
                    .get(&e.key)
                    .is_some_and(|(w, m)| *w == e.weight && *m == e.metadata);
                if !unchanged {
                    changes.push(Change::Insert(e));
                }
            }
        }
        self.known = next;
        changes
    }

    /// Removes every known endpoint, one `Remove` each (an empty reset would be ignored by
    /// the balancer by default).
    #[cfg(feature = "dns")]
    pub(crate) fn remove_all<S>(&mut self) -> Vec<Change<K, S>> {
        self.resync = false;
        self.known.drain().map(|(k, _)| Change::Remove(k)).collect()
    }

    #[cfg(feature = "dns")]
    pub(crate) fn len(&self) -> usize {
        self.known.len()
    }

    #[cfg(feature = "dns")]
    pub(crate) fn is_empty(&self) -> bool {
        self.known.is_empty()
    }
}

/// Keeps each key once, at its first position, with its last description.
pub(crate) fn dedup_last_wins<K: Clone + Eq + Hash, S>(
    list: Vec<Endpoint<K, S>>,
) -> Vec<Endpoint<K, S>> {
    let mut position: HashMap<K, usize> = HashMap::with_capacity(list.len());
    let mut out: Vec<Endpoint<K, S>> = Vec::with_capacity(list.len());
    for e in list {
        match position.get(&e.key) {
            Some(&i) => out[i] = e,
            None => {
                position.insert(e.key.clone(), out.len());
                out.push(e);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lists(std::vec::IntoIter<Result<Vec<Endpoint<&'static str, u32>>, &'static str>>);

    impl Snapshots<&'static str, u32> for Lists {
        type Error = BoxError;
        async fn snapshot(&mut self) -> Result<Vec<Endpoint<&'static str, u32>>, BoxError> {
            match self.0.next() {
                Some(r) => r.map_err(Into::into),
                None => std::future::pending().await,
            }
        }
    }

    fn describe(change: &Result<Change<&'static str, u32>, BoxError>) -> String {
        match change {
            Ok(Change::Insert(e)) => format!("+{}:{}:{}", e.key, e.service, e.weight),
            Ok(Change::Remove(k)) => format!("-{k}"),
            Ok(Change::Reset(v)) => {
                let keys: Vec<_> = v
                    .iter()
                    .map(|e| format!("{}:{}", e.key, e.service))
                    .collect();
                format!("reset[{}]", keys.join(","))
            }
            Err(e) => format!("err {e}"),
        }
    }

    #[tokio::test]
    async fn diffs_consecutive_lists() {
        let ep = |k, s, w| Endpoint::new(k, s).with_weight(w);
        let lists = vec![
            Ok(vec![ep("a", 1, 1), ep("b", 1, 1)]),
            Ok(vec![ep("a", 2, 1), ep("b", 2, 5), ep("c", 2, 1)]),
            Err("dns down"),
            Ok(vec![ep("c", 3, 1)]),
            Ok(vec![]),
            Ok(vec![ep("c", 4, 1), ep("d", 4, 1), ep("c", 5, 2)]),
        ];
        let mut stream = from_snapshots(Lists(lists.into_iter()));
        let mut seen = Vec::new();
        for _ in 0..8 {
            seen.push(describe(&stream.next().await.unwrap()));
        }
        // a unchanged (its new service 2 is dropped), b reweighted, c new.
        assert_eq!(
            seen[..4],
            ["reset[a:1,b:1]", "+b:2:5", "+c:2:1", "err dns down"]
        );
        // Removals come in hash-map order.
        let mut removed = seen[4..6].to_vec();
        removed.sort();
        assert_eq!(removed, ["-a", "-b"]);
        // An empty list is an empty reset; the next list is a full reset, and "c" listed
        // twice keeps its first place and its last service.
        assert_eq!(seen[6..], ["reset[]", "reset[c:5,d:4]"]);
    }
}
