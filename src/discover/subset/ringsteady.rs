//! A consistent ring on stable indices, Google's Ringsteady subsetting: [`Ringsteady`].

use std::fmt;
use std::sync::Arc;

use super::Subsetting;
use crate::error::BuildError;

/// The backend index a name carries, for [`Ringsteady::index_by`].
type IndexFn = dyn Fn(&str) -> Option<u64> + Send + Sync;

/// Ringsteady subsetting: consistent subsetting on a ring whose positions come from a
/// low-discrepancy sequence of stable indices. Source: Peter Ward, Paul Wankadia, Kavita
/// Guliani, "Reinventing Backend Subsetting at Google", ACM Queue 20(5), 2022 (reprinted in
/// CACM, May 2023).
///
/// - **Backends** have stable indices (a task's index in its job, a pod's ordinal in its
///   StatefulSet), read from their names by [`index_by`](Self::index_by) (by default
///   [`ordinal`]). Backend `i` sits on a unit ring at the binary van der Corput point of
///   `i`: its 64 bits reversed, read as a fraction (0, 1/2, 1/4, 3/4, 1/8, ...). A backend
///   whose name carries no index sits at the XXH64 of its name, as in consistent hashing.
/// - **Clients** sit on the same ring by the same sequence: client `j` at the van der
///   Corput point of `j`.
/// - **The subset**: the `subset_size` backends at or after the client's point, going round
///   the ring (ties by name). Every member is whole (weight factor 1).
///
/// **Balance.** The first `2^k` points of the sequence split the ring into equal arcs, and
/// every later point halves one of the largest arcs left, spread evenly; so `n` backends
/// cut the ring into arcs of at most two lengths, well mixed, and `C` clients fall into
/// them as evenly. With as many clients as backends both sides take the same points, and
/// every backend serves exactly `subset_size` clients; otherwise connections differ by
/// about one (the fleet scenario's figures are in the README).
///
/// **Churn.** A point depends only on its own index, so no other point moves when a
/// backend or a client comes or goes. A new backend enters the subsets of the clients just
/// before it on the ring (its fair share of them), each of which drops the last member of
/// its subset; a removed backend is replaced by the next one in its clients' subsets; a
/// new client computes its own subset and no other changes. This is the ideal churn, the
/// reason to prefer Ringsteady over [`Aperture`](super::Aperture), whose positions come
/// from the backends' ranks and all move when one backend comes or goes. The price: the
/// indices must be stable and known, which names alone do not give; without them (the
/// hashed fallback) the ring is only as even as consistent hashing.
#[derive(Clone)]
pub struct Ringsteady {
    client_index: u64,
    subset_size: usize,
    index: Arc<IndexFn>,
}

impl fmt::Debug for Ringsteady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ringsteady")
            .field("client_index", &self.client_index)
            .field("subset_size", &self.subset_size)
            .finish_non_exhaustive()
    }
}

/// The ordinal a name carries the way Kubernetes StatefulSets and most task schedulers
/// name their replicas: the decimal number after the last `-` of the name's first label
/// (the part before the first `.` or `:`). `api-3`, `api-3:8080` and
/// `api-3.api.shop.svc.cluster.local:8080` give 3; `10.0.0.7:80`, `api`, `api-` and
/// `api-x1` give none, and so does a number too large for a `u64`. The default index of
/// [`Ringsteady`].
pub fn ordinal(name: &str) -> Option<u64> {
    let label = name.split(['.', ':']).next().unwrap_or("");
    let (_, digits) = label.rsplit_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl Ringsteady {
    /// Client `client_index` of the fleet (any unique index; no client count is needed),
    /// with subsets of `subset_size` backends, indices read by [`ordinal`].
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidConfig`] when `subset_size` is 0.
    pub fn new(client_index: u64, subset_size: usize) -> Result<Self, BuildError> {
        BuildError::reject_if(
            subset_size == 0,
            "Ringsteady::subset_size",
            subset_size,
            "at least 1",
        )?;
        Ok(Ringsteady {
            client_index,
            subset_size,
            index: Arc::new(ordinal),
        })
    }

    /// Reads each backend's stable index from its name with `index` (`None`: the backend
    /// has none, and sits at the hash of its name). Every client of the fleet must use the
    /// same function, and no two backends should share an index (two that do share a point
    /// and follow each other by name).
    pub fn index_by(mut self, index: impl Fn(&str) -> Option<u64> + Send + Sync + 'static) -> Self {
        self.index = Arc::new(index);
        self
    }

    /// This client's index.
    pub fn client_index(&self) -> u64 {
        self.client_index
    }

    /// The subset size.
    pub fn subset_size(&self) -> usize {
        self.subset_size
    }

    /// A backend's point on the ring, as a 64-bit fraction of a turn.
    fn point(&self, name: &str) -> u64 {
        match (self.index)(name) {
            Some(i) => i.reverse_bits(),
            None => xxhash_rust::xxh64::xxh64(name.as_bytes(), 0),
        }
    }
}

impl Subsetting for Ringsteady {
    fn select(&self, backends: &[&str]) -> Vec<(usize, u32)> {
        let n = backends.len();
        // The names are sorted, so ties on the point fall back to name order via the index.
        let mut ring: Vec<(u64, usize)> = backends
            .iter()
            .enumerate()
            .map(|(i, name)| (self.point(name), i))
            .collect();
        ring.sort_unstable();
        let start = self.client_index.reverse_bits();
        let first = ring.partition_point(|&(point, _)| point < start);
        (0..self.subset_size.min(n))
            .map(|k| (ring[(first + k) % n].1, 1))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(indices: impl IntoIterator<Item = u64>) -> Vec<String> {
        let mut names: Vec<String> = indices.into_iter().map(|i| format!("api-{i}")).collect();
        names.sort();
        names
    }

    fn members(client: u64, size: usize, names: &[String]) -> Vec<String> {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        Ringsteady::new(client, size)
            .unwrap()
            .select(&refs)
            .into_iter()
            .map(|(i, factor)| {
                assert_eq!(factor, 1);
                names[i].clone()
            })
            .collect()
    }

    #[test]
    fn ordinals() {
        for (name, ordinal_) in [
            ("api-3", Some(3)),
            ("api-3:8080", Some(3)),
            ("api-03", Some(3)),
            ("api-3.api.shop.svc.cluster.local:8080", Some(3)),
            ("web-front-12", Some(12)),
            ("10.0.0.7:80", None),
            ("api", None),
            ("api-", None),
            ("api-x1", None),
            ("api-+1", None),
            ("api-99999999999999999999", None),
            ("", None),
        ] {
            assert_eq!(ordinal(name), ordinal_, "{name}");
        }
    }

    #[test]
    fn exact_subsets_on_the_van_der_corput_ring() {
        // Eight backends: points 0, 1/2, 1/4, 3/4, 1/8, 5/8, 3/8, 7/8 for indices 0..8,
        // so ring order is 0, 4, 2, 6, 1, 5, 3, 7.
        let names = names(0..8);
        // Client 0 at 0: the three from backend 0 on.
        assert_eq!(members(0, 3, &names), ["api-0", "api-4", "api-2"]);
        // Client 1 at 1/2: backends 1, 5, 3.
        assert_eq!(members(1, 3, &names), ["api-1", "api-5", "api-3"]);
        // Client 3 at 3/4: backends 3, 7, then round to 0.
        assert_eq!(members(3, 3, &names), ["api-3", "api-7", "api-0"]);
        // Client 9 at 9/16 (between 1/2 and 5/8): backends 5, 3, 7.
        assert_eq!(members(9, 3, &names), ["api-5", "api-3", "api-7"]);
        // A subset as large as the set is the whole set.
        assert_eq!(members(5, 8, &names).len(), 8);
        assert_eq!(members(5, 20, &names).len(), 8);
    }

    #[test]
    fn as_many_clients_as_backends_connect_exactly_evenly() {
        for (n, size) in [(300u64, 10usize), (37, 5), (64, 3), (100, 12)] {
            let names = names(0..n);
            let mut count = std::collections::HashMap::new();
            for client in 0..n {
                for m in members(client, size, &names) {
                    *count.entry(m).or_insert(0) += 1;
                }
            }
            assert_eq!(count.len(), n as usize);
            assert!(
                count.values().all(|&c| c == size),
                "{n} × {size}: {count:?}"
            );
        }
    }

    #[test]
    fn names_without_an_index_are_hashed_and_still_chosen() {
        let names = vec!["10.0.0.1:80".to_owned(), "10.0.0.2:80".to_owned()];
        assert_eq!(members(0, 1, &names).len(), 1);
        assert_eq!(members(0, 5, &names).len(), 2);
        // A custom index reads the last octet.
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let by_octet = Ringsteady::new(0, 1)
            .unwrap()
            .index_by(|name| name.split(':').next()?.rsplit('.').next()?.parse().ok());
        // Index 1 sits at 1/2, index 2 at 1/4: client 0, at 0, takes index 2 first.
        assert_eq!(by_octet.select(&refs), [(1, 1)]);
    }

    #[test]
    fn zero_subset_size_is_rejected() {
        let invalid = super::super::rejected(Ringsteady::new(0, 0));
        assert_eq!(invalid.field(), "Ringsteady::subset_size");
    }

    proptest::proptest! {
        /// The ideal churn: a new backend changes at most one member of any subset (it
        /// joins, the last member leaves), and so does a removed one; a new client changes
        /// no other client's subset (nothing else depends on the client count).
        #[test]
        fn one_backend_changes_at_most_one_member(
            n in 1u64..80,
            size in 1usize..15,
            added in 0u64..200,
            client in 0u64..100,
        ) {
            let before = names(0..n);
            proptest::prop_assume!(added >= n);
            let grown = names((0..n).chain([added]));
            let a = members(client, size, &before);
            let b = members(client, size, &grown);
            let joined = b.iter().filter(|m| !a.contains(m)).count();
            let left = a.iter().filter(|m| !b.contains(m)).count();
            proptest::prop_assert!(joined <= 1 && left <= 1, "{a:?} -> {b:?}");
            // Removing one backend (the middle index).
            let shrunk = names((0..n).filter(|&i| i != n / 2));
            let c = members(client, size, &shrunk);
            let joined = c.iter().filter(|m| !a.contains(m)).count();
            let left = a.iter().filter(|m| !c.contains(m)).count();
            proptest::prop_assert!(joined <= 1 && left <= 1, "{a:?} -> {c:?}");
        }
    }
}
