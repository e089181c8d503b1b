//! Deterministic subsetting (SRE book, chapter 20): [`Deterministic`].

use super::{hash_order, Subsetting};
use crate::error::BuildError;

/// Deterministic subsetting, as the Google SRE book gives it (Beyer et al., *Site
/// Reliability Engineering*, O'Reilly 2016, chapter 20, "Load Balancing in the Datacenter",
/// section "A Subset Selection Algorithm: Deterministic Subsetting").
///
/// With `B` backends and subsets of `k`:
///
/// 1. `subset_count = B / k` (whole subsets; a remainder of `B mod k` backends sits out
///    the round).
/// 2. Clients are grouped in rounds of `subset_count` consecutive ids:
///    `round = client_id / subset_count`.
/// 3. Every client of a round shuffles the backends the same way, with a seed derived
///    from the round.
/// 4. The client takes subset `client_id mod subset_count` of the shuffled list: the
///    backends `k × subset_id .. k × (subset_id + 1)`.
///
/// Within a round each backend goes to exactly one client, so when the clients fill whole
/// rounds every backend has the same number of clients (300 clients × 300 backends,
/// subsets of 10: 10 clients each, the book's figure 20-5). With fewer backends than `k`,
/// the subset is every backend.
///
/// **The shuffle.** The book's pseudocode seeds Python's `random.shuffle` with the round.
/// Every client of a fleet must compute the same permutation, across builds and versions,
/// so here the shuffle is the order of `XXH64(name, seed = round)` (ties by name): a
/// seeded random permutation that depends only on the backend names, not on a random
/// number generator's version nor on the order in which discovery lists the backends.
///
/// **Churn.** Adding or removing one backend changes the shuffle's positions of the others
/// and possibly `subset_count`, so most clients' subsets change: the price of the exact
/// balance (the reason for Google's later algorithms, CACM May 2023).
///
/// Weights pass through unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deterministic {
    client_id: u64,
    subset_size: usize,
}

impl Deterministic {
    /// Client `client_id` (0, 1, 2, ... across the fleet) with subsets of `subset_size`
    /// backends.
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidConfig`] when `subset_size` is 0.
    pub fn new(client_id: u64, subset_size: usize) -> Result<Self, BuildError> {
        BuildError::reject_if(
            subset_size == 0,
            "Deterministic::subset_size",
            subset_size,
            "at least 1",
        )?;
        Ok(Deterministic {
            client_id,
            subset_size,
        })
    }

    /// This client's id.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The subset size.
    pub fn subset_size(&self) -> usize {
        self.subset_size
    }
}

impl Subsetting for Deterministic {
    fn select(&self, backends: &[&str]) -> Vec<(usize, u32)> {
        let k = self.subset_size;
        if backends.len() <= k {
            return (0..backends.len()).map(|i| (i, 1)).collect();
        }
        let subset_count = (backends.len() / k) as u64;
        let round = self.client_id / subset_count;
        let subset_id = (self.client_id % subset_count) as usize;
        let shuffled = hash_order(backends, round);
        shuffled[subset_id * k..(subset_id + 1) * k]
            .iter()
            .map(|&i| (i, 1))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        let mut v: Vec<String> = (0..n).map(|i| format!("10.0.0.{i}:80")).collect();
        v.sort();
        v
    }

    fn picks(algo: &Deterministic, names: &[String]) -> Vec<usize> {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        algo.select(&refs).into_iter().map(|(i, _)| i).collect()
    }

    #[test]
    fn a_round_partitions_the_backends() {
        // 12 backends, subsets of 3: 4 subsets per round; clients 0..4 form round 0 and
        // share one shuffle, so together they take every backend exactly once.
        let names = names(12);
        let mut round0: Vec<usize> = (0..4)
            .flat_map(|id| picks(&Deterministic::new(id, 3).unwrap(), &names))
            .collect();
        round0.sort();
        assert_eq!(round0, (0..12).collect::<Vec<_>>());
    }

    #[test]
    fn exact_subsets_of_a_small_fleet() {
        // 10.0.0.0:80 to 10.0.0.5:80, subsets of 2: rounds of 3 clients. The shuffle of
        // round r is the order of XXH64(name, r): a fixed, portable permutation.
        let names = names(6);
        let subsets: Vec<Vec<usize>> = (0..6)
            .map(|id| picks(&Deterministic::new(id, 2).unwrap(), &names))
            .collect();
        // Round 0 orders the names by XXH64(name, 0), round 1 by XXH64(name, 1).
        assert_eq!(subsets, [[1, 4], [5, 0], [2, 3], [5, 2], [4, 1], [0, 3]]);
        // Rounds of 3 clients each cover all six backends once.
        for round in subsets.chunks(3) {
            let mut all: Vec<usize> = round.concat();
            all.sort();
            assert_eq!(all, (0..6).collect::<Vec<_>>());
        }
    }

    #[test]
    fn equal_connections_for_300_by_300() {
        let names = names(300);
        let mut connections = vec![0u32; 300];
        for id in 0..300 {
            for i in picks(&Deterministic::new(id, 10).unwrap(), &names) {
                connections[i] += 1;
            }
        }
        assert!(connections.iter().all(|&c| c == 10), "{connections:?}");
    }

    #[test]
    fn fewer_backends_than_the_subset_means_all_of_them() {
        let names = names(3);
        assert_eq!(
            picks(&Deterministic::new(5, 10).unwrap(), &names),
            [0, 1, 2]
        );
    }

    #[test]
    fn subset_size_zero_is_an_error() {
        let invalid = super::super::rejected(Deterministic::new(0, 0));
        assert_eq!(invalid.field(), "Deterministic::subset_size");
        assert_eq!(invalid.value(), "0");
    }
}
