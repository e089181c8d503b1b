//! Random subsetting by rendezvous hashing (gRFC A68): [`Random`].

use std::hash::{BuildHasher, Hasher};

use super::{hash_order, Subsetting};
use crate::error::BuildError;

/// Random subsetting by rendezvous hashing, as gRFC A68 specifies it ("A68: Random
/// subsetting with rendezvous hashing LB policy", github.com/grpc/proposal,
/// `A68-random-subsetting.md`).
///
/// Each client draws a random integer seed once (its salt). On every change of the
/// backend set it computes `XXH64(name, seed)` for every backend (A68 hashes the
/// endpoint's first address; here the backend's name, which is its address by default),
/// sorts the backends by that hash, and keeps the first `subset_size`. With fewer backends
/// than `subset_size` it keeps them all. A68 suggests XXH64 (the hash of gRFC A42's ring
/// hash); an earlier draft of A68 gave `subset_size` a default of 20, kept here.
///
/// **Churn.** A backend's hash does not depend on the other backends, so the order of the
/// others never changes: adding or removing one backend changes at most one member of any
/// subset (A68's guarantee; checked by a property test here).
///
/// **Balance.** Each client's subset is an independent random sample, so connections per
/// backend vary like a binomial draw: the spread shrinks as `clients × subset_size /
/// backends` grows (A68's figures; the SRE book's random 30 % subsets of 300 backends for
/// 300 clients: least loaded 63 %, most loaded 121 % of the mean).
///
/// Weights pass through unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Random {
    subset_size: usize,
    seed: u64,
}

impl Random {
    /// The subset size of an earlier draft of gRFC A68.
    pub const DEFAULT_SUBSET_SIZE: usize = 20;

    /// Subsets of `subset_size` backends, with a random seed drawn now (from the standard
    /// library's per-process random hash keys).
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidConfig`] when `subset_size` is 0.
    pub fn new(subset_size: usize) -> Result<Self, BuildError> {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_usize(subset_size);
        Random::with_seed(subset_size, hasher.finish())
    }

    /// Subsets of `subset_size` backends with a given seed: reproducible subsets, for
    /// tests and simulations, or a seed the deployment assigns.
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidConfig`] when `subset_size` is 0.
    pub fn with_seed(subset_size: usize, seed: u64) -> Result<Self, BuildError> {
        BuildError::reject_if(
            subset_size == 0,
            "Random::subset_size",
            subset_size,
            "at least 1",
        )?;
        Ok(Random { subset_size, seed })
    }

    /// The subset size.
    pub fn subset_size(&self) -> usize {
        self.subset_size
    }

    /// The seed (salt) of this client.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

impl Subsetting for Random {
    fn select(&self, backends: &[&str]) -> Vec<(usize, u32)> {
        let mut order = hash_order(backends, self.seed);
        order.truncate(self.subset_size);
        order.into_iter().map(|i| (i, 1)).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn subset(algo: &Random, names: &BTreeSet<String>) -> BTreeSet<String> {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        algo.select(&refs)
            .into_iter()
            .map(|(i, _)| refs[i].to_string())
            .collect()
    }

    #[test]
    fn the_lowest_hashes_win() {
        let names = ["a", "b", "c", "d", "e"];
        let algo = Random::with_seed(2, 42).unwrap();
        let picked: Vec<usize> = algo.select(&names).into_iter().map(|(i, _)| i).collect();
        let mut by_hash: Vec<(u64, usize)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (xxhash_rust::xxh64::xxh64(n.as_bytes(), 42), i))
            .collect();
        by_hash.sort();
        assert_eq!(picked, [by_hash[0].1, by_hash[1].1]);
    }

    #[test]
    fn subset_size_zero_is_an_error() {
        let invalid = super::super::rejected(Random::new(0));
        assert_eq!(invalid.field(), "Random::subset_size");
    }

    proptest! {
        /// gRFC A68's bound: adding or removing one backend changes at most one member of
        /// any subset.
        #[test]
        fn one_backend_changes_at_most_one_member(
            n in 1usize..80,
            size in 1usize..30,
            seed in any::<u64>(),
            extra in 0u32..1000,
            removed in any::<prop::sample::Index>(),
        ) {
            let algo = Random::with_seed(size, seed).unwrap();
            let names: BTreeSet<String> = (0..n).map(|i| format!("10.1.{i}.7:443")).collect();
            let before = subset(&algo, &names);

            let mut grown = names.clone();
            grown.insert(format!("10.2.{extra}.9:443"));
            let after = subset(&algo, &grown);
            prop_assert!(before.difference(&after).count() <= 1);
            prop_assert!(after.difference(&before).count() <= 1);

            let mut shrunk = names.clone();
            let gone = names.iter().nth(removed.index(n)).unwrap().clone();
            shrunk.remove(&gone);
            let after = subset(&algo, &shrunk);
            prop_assert!(before.difference(&after).count() <= 1);
            prop_assert!(after.difference(&before).count() <= 1);
        }
    }
}
