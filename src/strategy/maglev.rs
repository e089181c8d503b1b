//! Maglev hashing: a lookup table of prime size, one slot read per pick, weighted.
//!
//! # The algorithm
//!
//! Maglev (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load Balancer",
//! NSDI 2016, section 3.4) fills a table of `M` slots, `M` prime, with endpoint indices. Each
//! endpoint has its own permutation of the slots, `offset + j × skip (mod M)`, with `offset`
//! in `[0, M)` and `skip` in `[1, M)` from two independent hashes of its
//! [name](Endpoints::name); because `M` is prime every `skip` visits every slot. Endpoints
//! take turns; on its turn an endpoint takes the next slot of its permutation that is still
//! empty, until the table is full. A key's hash then picks a slot: one multiply and one read
//! per pick, at any number of endpoints.
//!
//! Every endpoint ends up with `M / n` slots, give or take one, so the imbalance between
//! endpoints is at most about `n / M`: under 1 % when `M > 100 n`. When an endpoint is
//! removed, the slots it held are refilled by the others, and some other slots change owner
//! too (see [Disruption](#disruption)).
//!
//! # Weights
//!
//! Each endpoint of weight `w` is given a quota of `1 + (M - n) × w / sum(weights)` slots
//! (the fractions go to the largest remainders, ties to the lower index), so the table holds
//! the weights exactly, to one slot, and every endpoint has at least one. Turns interleave in
//! proportion to the weights, as in the weighted variant Envoy uses: endpoint `i`'s `k`-th
//! turn comes at time `(k + ½) / weight[i]`, ties in index order, so with equal weights the
//! turns go round in index order exactly as in the paper (and the first `M mod n` endpoints
//! get the extra slots). The times depend only on the weights, not on `n` or `M`, so adding
//! or removing an endpoint does not reshuffle the others' turns. The turns are ordered by a
//! counting sort on those times, in O(M). An endpoint of weight 0 gets no slot (if every
//! weight is 0, all count as 1).
//!
//! # Table size
//!
//! By default `M` is the smallest prime at least `max(65 537, P)`, where `P` is the smallest
//! power of two at least `100 n` (65 537 is Envoy's default; `M > 100 n` keeps the imbalance
//! under 1 %), at most about 2²⁶: 65 537 up to 655 endpoints, 131 101 up to 1 310, 262 147 up
//! to 2 621, 1 048 583 for 10 000. The size depends on `n` only through that power of two:
//! a table of another size places nearly every key differently, so a size that followed
//! `n` exactly (say the first prime above `100 n`) would move almost all keys whenever an
//! endpoint came or went. With the power-of-two steps that happens only when `n` crosses
//! 656, 1 311, 2 622, ...; set the size explicitly to rule it out.
//!
//! [`Maglev::table_size`] sets it: a prime from 101 to 2²⁶, checked by
//! [`Strategy::validate`]. A configured size smaller than the number of endpoints that have
//! weight is raised to the smallest prime at least that number, so that each can have a slot
//! (validation cannot know `n`); the imbalance then grows, up to one endpoint holding twice
//! the slots of another. The table costs 4 bytes a slot, plus 8 bytes per endpoint for the
//! fallback order (16 when weights differ): 400 to 800 bytes per endpoint from 656
//! endpoints on, 26 KB per endpoint for ten.
//!
//! # Disruption
//!
//! Refilling the table after a change reassigns some slots of endpoints that stayed (a slot
//! freed early lets another endpoint take it sooner, which frees the slot it took before,
//! and so on), more the fewer slots each endpoint has. Measured for removing one endpoint,
//! as a multiple of the ideal `1/n` of keys: 1.03 at `n = 10` (`M` = 65 537), 1.6 at
//! `n = 100` (65 537), about 5 to 7 at `n = 1000` (131 101); a table of `M = 6 500 n`
//! brings `n = 1000` down to 1.7. [`RingHash`](super::RingHash) and
//! [`Rendezvous`](super::Rendezvous) move only the removed endpoint's keys; Maglev trades that
//! for its even spread and O(1) lookup (Envoy's documentation: "Maglev is not as stable as
//! ring hash").
//!
//! # Fallback order
//!
//! Attempt 0 is the key's slot. Later attempts (when that endpoint cannot take the request)
//! return the other endpoints in weighted rendezvous order for the same key hash (see
//! [`Rendezvous`](super::Rendezvous)), skipping the slot's endpoint: every endpoint exactly
//! once in `n` attempts, the failed endpoint's keys spread over the others in proportion to
//! their weights, and the order stays put when unrelated endpoints come and go. Each
//! fallback attempt costs O(n) (one mix per endpoint); the first choice stays O(1). Once all
//! endpoints have been returned, attempt `k` returns endpoint `k mod n`.
//!
//! Requests without a key (or with an empty one) follow [`MissingKey`](super::MissingKey):
//! `Random` reads a random slot (slots are weight-proportional), `RoundRobin` uses nginx's
//! smooth weighted round robin.
//!
//! Building the table costs about `M ln M` slot probes (the last empty slots take the most
//! finding): a few milliseconds for 1 000 endpoints, off the hot path.

use super::hashing::{
    hash64, keyless_options, pick_in_order_wrapping, Keyless, PreferenceOrder, LOW,
};
use super::rendezvous::{key_hash, Scorer};
use super::round_robin::Cycle;
use super::{Context, Endpoints, Strategy};
use crate::error::BuildError;

/// The default table size when `100 n` is smaller (Envoy's default).
pub const DEFAULT_MIN_TABLE_SIZE: usize = 65_537;
/// The smallest table size [`Maglev::table_size`] accepts.
pub const MIN_TABLE_SIZE: usize = 101;
/// The largest table size [`Maglev::table_size`] accepts (2²⁶, 256 MiB of table).
pub const MAX_TABLE_SIZE: usize = 1 << 26;

/// Slots per endpoint the default size aims for.
const SLOTS_PER_ENDPOINT: usize = 100;
const OFFSET_SEED: u64 = 0x6d61_676c_6576_5f6f;
const SKIP_SEED: u64 = 0x6d61_676c_6576_5f73;
const EMPTY: u32 = u32::MAX;

/// Maglev consistent hashing. See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct Maglev {
    size: Option<usize>,
    keyless: Keyless,
}

impl Maglev {
    /// Maglev with the default table size, routing keyless requests at random.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the table size `M`: a prime from [`MIN_TABLE_SIZE`] to [`MAX_TABLE_SIZE`]
    /// (other values are rejected when the balancer is built). Raised, if it is smaller
    /// than the number of endpoints, to the smallest prime at least that number.
    pub fn table_size(mut self, m: usize) -> Self {
        self.size = Some(m);
        self
    }

    /// The table size for `placed` endpoints with weight.
    fn size_for(&self, placed: usize) -> usize {
        let placed = placed.max(1);
        match self.size {
            Some(m) if m >= placed && m <= MAX_TABLE_SIZE && is_prime(m as u64) => m,
            Some(m) => {
                next_prime(m.clamp(placed.max(2), MAX_TABLE_SIZE.max(placed)) as u64) as usize
            }
            None => {
                // A power of two at least 100 n, so that the size (and with it every slot)
                // changes only when n crosses a power-of-two boundary, not with every
                // endpoint that comes or goes.
                let want = SLOTS_PER_ENDPOINT
                    .saturating_mul(placed)
                    .checked_next_power_of_two()
                    .unwrap_or(MAX_TABLE_SIZE)
                    .clamp(DEFAULT_MIN_TABLE_SIZE, MAX_TABLE_SIZE);
                next_prime(want.max(placed) as u64) as usize
            }
        }
    }
}

keyless_options!(Maglev, "a random slot");

/// The lookup table [`Maglev`] builds.
#[derive(Debug, Clone)]
pub struct MaglevTable {
    slots: Box<[u32]>,
    scorer: Scorer,
    cycle: Option<Cycle>,
}

impl MaglevTable {
    /// The number of slots, `M`.
    pub fn size(&self) -> usize {
        self.slots.len()
    }

    /// The endpoint index in each slot.
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// Bytes of heap memory the table holds.
    pub fn heap_size(&self) -> usize {
        self.slots.len() * 4
            + self.scorer.heap_size()
            + self.cycle.as_ref().map_or(0, |c| c.order().len() * 4)
    }

    /// The slot of key hash `h` (Lemire's multiply-shift reduction).
    #[inline]
    fn slot(&self, h: u64) -> usize {
        ((u128::from(h) * self.slots.len() as u128) >> 64) as usize
    }
}

/// Whether `n` is prime (trial division by 6k ± 1; `n` is at most about 2²⁶ here).
pub(crate) fn is_prime(n: u64) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n % 2 == 0 || n % 3 == 0 {
        return false;
    }
    let mut d = 5;
    while d * d <= n {
        if n % d == 0 || n % (d + 2) == 0 {
            return false;
        }
        d += 6;
    }
    true
}

/// The smallest prime at least `n`.
pub(crate) fn next_prime(n: u64) -> u64 {
    let mut m = n.max(2);
    while !is_prime(m) {
        m += 1;
    }
    m
}

/// Slot quotas: one each, and `m - n` more shared by weight with largest remainders.
fn quotas(weights: &[u64], m: usize) -> Vec<u32> {
    let placed = weights.iter().filter(|&&w| w > 0).count();
    let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let rest = (m - placed) as u128;
    let mut q = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(placed);
    let mut given = 0u128;
    for (i, &w) in weights.iter().enumerate() {
        if w == 0 {
            q.push(0);
            continue;
        }
        let share = rest * u128::from(w);
        given += share / total;
        q.push(1 + (share / total) as u32);
        remainders.push((share % total, i));
    }
    remainders.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in remainders.iter().take((rest - given) as usize) {
        q[i] += 1;
    }
    q
}

/// Fills `m` slots (m prime, `m >= placed endpoints`) from names and weights.
fn populate(names: &[&str], weights: &[u64], m: usize) -> Vec<u32> {
    let q = quotas(weights, m);
    let m64 = m as u64;

    // Turn order: endpoint i's k-th turn comes at time (k + 1/2) / weight[i], scaled so
    // that the heaviest endpoint takes one turn per bucket; ties (equal weights) go in index
    // order. Turns of tiny weights that would come after bucket 2m all go in the last one.
    let max_w = weights.iter().copied().max().unwrap_or(1) as f64;
    let buckets = 2 * m;
    let bucket = |k: u32, w: u64| -> usize {
        (((f64::from(k) + 0.5) * (max_w / w as f64)) as usize).min(buckets - 1)
    };
    let mut starts = vec![0u32; buckets + 1];
    for (&qi, &w) in q.iter().zip(weights) {
        for k in 0..qi {
            starts[bucket(k, w) + 1] += 1;
        }
    }
    for b in 0..buckets {
        starts[b + 1] += starts[b];
    }
    let mut order = vec![0u32; m];
    for (i, (&qi, &w)) in q.iter().zip(weights).enumerate() {
        for k in 0..qi {
            let b = bucket(k, w);
            order[starts[b] as usize] = i as u32;
            starts[b] += 1;
        }
    }
    drop(starts);

    // Each endpoint's permutation: next slot and skip.
    let mut next: Vec<u32> = Vec::with_capacity(names.len());
    let mut skip: Vec<u32> = Vec::with_capacity(names.len());
    for name in names {
        next.push((hash64(name.as_bytes(), OFFSET_SEED) % m64) as u32);
        skip.push((hash64(name.as_bytes(), SKIP_SEED) % (m64 - 1) + 1) as u32);
    }

    let mut slots = vec![EMPTY; m];
    for &e in &order {
        let e = e as usize;
        let (mut c, s) = (u64::from(next[e]), u64::from(skip[e]));
        // Terminates: the quotas sum to m, so an empty slot remains on every turn, and a
        // skip coprime with m reaches every slot within m steps.
        loop {
            let slot = c as usize;
            c += s;
            if c >= m64 {
                c -= m64;
            }
            if slots[slot] == EMPTY {
                slots[slot] = e as u32;
                break;
            }
        }
        next[e] = c as u32;
    }
    slots
}

impl Strategy for Maglev {
    type Table = MaglevTable;

    fn build(&self, endpoints: &Endpoints<'_>) -> MaglevTable {
        let n = endpoints.len();
        let all_zero = endpoints.weights().all(|w| w == 0);
        let weights: Vec<u64> = endpoints
            .weights()
            .map(|w| if all_zero { 1 } else { u64::from(w) })
            .collect();
        let placed = weights.iter().filter(|&&w| w > 0).count();
        let slots = if n == 0 {
            Vec::new()
        } else {
            let names: Vec<&str> = (0..n).map(|i| endpoints.name(i)).collect();
            populate(&names, &weights, self.size_for(placed))
        };
        MaglevTable {
            slots: slots.into_boxed_slice(),
            scorer: Scorer::new(endpoints),
            cycle: self.keyless.build(endpoints),
        }
    }

    #[inline]
    fn pick(&self, table: &MaglevTable, endpoints: &Endpoints<'_>, cx: &Context<'_>) -> usize {
        pick_in_order_wrapping(self, table, endpoints, cx)
    }

    fn uses_request_key(&self) -> bool {
        true
    }

    fn seed(&self) -> Option<u64> {
        self.keyless.seed()
    }

    fn validate(&self) -> Result<(), BuildError> {
        match self.size {
            Some(m) if !(MIN_TABLE_SIZE..=MAX_TABLE_SIZE).contains(&m) => Err(BuildError::invalid(
                "Maglev::table_size",
                m,
                "from 101 to 2^26",
            )),
            Some(m) if !is_prime(m as u64) => {
                Err(BuildError::invalid("Maglev::table_size", m, "a prime"))
            }
            _ => Ok(()),
        }
    }
}

impl PreferenceOrder for Maglev {
    #[inline]
    fn find<F: FnMut(usize) -> bool>(
        &self,
        table: &MaglevTable,
        endpoints: &Endpoints<'_>,
        key: Option<&[u8]>,
        after: Option<u64>,
        accept: F,
    ) -> Option<(usize, u64)> {
        let keyless = &self.keyless;
        keyless.find(&table.cycle, endpoints, key, after, accept, |mut accept| {
            let n = endpoints.len();
            if table.slots.is_empty() || table.scorer.len() != n {
                return None;
            }
            let (h, seed) = key_hash(keyless, key, after);
            let first = table.slots[table.slot(h)] as usize;
            let seed = u64::from(seed) << 32;
            let below = match after.map(|c| c & LOW) {
                None => {
                    if accept(first) {
                        return Some((first, seed));
                    }
                    None
                }
                Some(0) => None,
                Some(prev) => {
                    let prev = prev as usize - 1;
                    if prev >= n {
                        return None;
                    }
                    Some(table.scorer.rank(h, prev))
                }
            };
            let i = table.scorer.best(h, below, first, accept)?;
            Some((i, seed | (i as u64 + 1)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::EndpointList;

    fn counts(table: &MaglevTable, n: usize) -> Vec<u32> {
        let mut c = vec![0u32; n];
        for &e in table.slots() {
            c[e as usize] += 1;
        }
        c
    }

    #[test]
    fn primes() {
        let small: Vec<u64> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65_537));
        assert!(!is_prime(65_535));
        assert_eq!(next_prime(100_000), 100_003);
        assert_eq!(next_prime(1_000_000), 1_000_003);
        assert_eq!(next_prime(65_537), 65_537);
    }

    #[test]
    fn default_sizes() {
        let m = Maglev::new();
        assert_eq!(m.size_for(1), 65_537);
        assert_eq!(m.size_for(10), 65_537);
        assert_eq!(m.size_for(655), 65_537);
        assert_eq!(m.size_for(656), 131_101);
        assert_eq!(m.size_for(999), 131_101);
        assert_eq!(m.size_for(1000), 131_101);
        assert_eq!(m.size_for(10_000), 1_048_583);
        assert!(m.size_for(10_000_000) >= 10_000_000);
        // A configured size below n is raised to a prime at least n.
        let small = Maglev::new().table_size(101);
        assert_eq!(small.size_for(50), 101);
        assert_eq!(small.size_for(500), 503);
        // A non-prime configured size (rejected by validate) still builds.
        assert!(is_prime(Maglev::new().table_size(1000).size_for(3) as u64));
        assert_eq!(Maglev::new().table_size(0).size_for(1), 2);
    }

    #[test]
    fn validate_rejects_bad_sizes() {
        assert!(Maglev::new().validate().is_ok());
        assert!(Maglev::new().table_size(65_537).validate().is_ok());
        assert!(Maglev::new().table_size(101).validate().is_ok());
        assert!(Maglev::new().table_size(65_536).validate().is_err());
        assert!(Maglev::new().table_size(97).validate().is_err());
        assert!(Maglev::new().table_size(0).validate().is_err());
        assert!(Maglev::new()
            .table_size(MAX_TABLE_SIZE + 1)
            .validate()
            .is_err());
    }

    #[test]
    fn equal_weights_fill_evenly() {
        for n in [1, 2, 10, 100, 1000] {
            let list = EndpointList::from_weights(vec![1; n]);
            let table = Maglev::new().build(&list.endpoints());
            let c = counts(&table, n);
            let (min, max) = (*c.iter().min().unwrap(), *c.iter().max().unwrap());
            assert!(max - min <= 1, "n {n}: {min}..{max}");
            // Slot shares within 1 % of each other at the default size (M > 100 n).
            assert!(
                f64::from(max) / f64::from(min) <= 1.01,
                "n {n}: {min}..{max}"
            );
        }
    }

    #[test]
    fn weights_are_held_to_one_slot() {
        let weights = [1u32, 2, 3, 0, 10, u32::MAX / 4];
        let list = EndpointList::from_weights(weights);
        let table = Maglev::new().table_size(10_007).build(&list.endpoints());
        let c = counts(&table, weights.len());
        assert_eq!(c[3], 0);
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        for (i, &w) in weights.iter().enumerate() {
            if w > 0 {
                let want = 1.0 + (10_007.0 - 5.0) * f64::from(w) / total;
                assert!((f64::from(c[i]) - want).abs() <= 1.0, "{c:?}");
            }
        }
    }

    #[test]
    fn tiny_table_and_many_endpoints() {
        let list = EndpointList::from_weights(vec![1; 300]);
        let table = Maglev::new().table_size(101).build(&list.endpoints());
        assert_eq!(table.size(), 307);
        assert!(counts(&table, 300).iter().all(|&c| c >= 1));
    }
}
