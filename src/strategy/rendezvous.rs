//! Weighted rendezvous hashing (highest random weight): no table, one hash per endpoint.
//!
//! # The algorithm
//!
//! For a request key, every endpoint gets a pseudo-random score from the key and its name,
//! and the endpoint with the highest score wins (Thaler and Ravishankar, "Using Name-Based
//! Mappings to Increase Hit Rates", IEEE/ACM ToN 1998). Removing an endpoint moves only the
//! keys it had won, each to the key's runner-up; adding one takes from every endpoint only
//! the keys it now wins. The runner-ups are the fallback order: attempt `k` returns the
//! endpoint with the `k`-th highest score, so attempts `0..n` return every endpoint exactly
//! once.
//!
//! With weights, the score is Schindler's "logarithmic method" (Resch and Schindler,
//! "Weighted Distributed Hash Tables", 2005; also Schindler, "Weighted Rendezvous Hashing",
//! 2015): with `u` uniform in (0, 1) from the hash of key and name,
//!
//! ```text
//! score = weight / -ln(u)
//! ```
//!
//! `-ln(u) / weight` is exponentially distributed with rate `weight`, and the smallest of
//! independent exponentials is endpoint `i` with probability `weight[i] / sum(weights)`,
//! exactly. Changing one endpoint's weight moves keys only to or from that endpoint.
//!
//! # Cost
//!
//! [`Strategy::build`] hashes each endpoint's [name](Endpoints::name) once (8 bytes per
//! endpoint, plus 8 for its weight when weights differ). A pick hashes the key once, then
//! mixes it with each endpoint's name hash: one multiply-xorshift mix per endpoint when all
//! weights are equal (the highest hash wins), plus a logarithm and a division when they
//! differ. That is O(n) per pick: the cheapest choice for a few dozen endpoints, the most
//! expensive for thousands ([`Maglev`](super::Maglev) is O(1)).
//!
//! # Details
//!
//! - Scores are compared as 32-bit values (the top half of the mix, or the score rounded to
//!   `f32`), ties broken by the lower index; the order is the same at every attempt.
//! - An endpoint of weight 0 scores lowest: it is never the first choice unless every
//!   endpoint has weight 0 (then all count as equal).
//! - A request without a key (or with an empty one) follows the
//!   [`MissingKey`](super::MissingKey) fallback: `Random` ranks by a random key hash (32
//!   random bits, kept in the cursor), `RoundRobin` uses nginx's smooth weighted round robin.
//! - Once all endpoints have been returned, attempt `k` returns endpoint `k mod n`.

use super::hashing::{
    hash64, keyless_options, mix64, pick_in_order_wrapping, present, random_key_hash, Keyless,
    PreferenceOrder, KEY_SEED, LOW,
};
use super::round_robin::Cycle;
use super::{Context, Endpoints, Strategy};

/// The seed endpoint names are hashed with.
const NAME_SEED: u64 = 0x6872_775f_6e61_6d65;

/// Weighted rendezvous (highest random weight) hashing. See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct Rendezvous {
    keyless: Keyless,
}

impl Rendezvous {
    /// Rendezvous hashing that routes keyless requests at random.
    pub fn new() -> Self {
        Self::default()
    }
}

keyless_options!(Rendezvous, "a random key hash, ranked like a real key");

/// What [`Rendezvous`] precomputes: each endpoint's name hash (and weight, when weights
/// differ).
#[derive(Debug, Clone)]
pub struct RendezvousTable {
    scorer: Scorer,
    cycle: Option<Cycle>,
}

impl RendezvousTable {
    /// Bytes of heap memory the table holds.
    pub fn heap_size(&self) -> usize {
        self.scorer.heap_size() + self.cycle.as_ref().map_or(0, |c| c.order().len() * 4)
    }
}

/// Ranks endpoints for a key hash by weighted rendezvous scores.
#[derive(Debug, Clone)]
pub(crate) struct Scorer {
    names: Box<[u64]>,
    /// `None` when every weight is equal: then the mix alone ranks.
    weights: Option<Box<[f64]>>,
}

impl Scorer {
    pub(crate) fn new(endpoints: &Endpoints<'_>) -> Self {
        let names = (0..endpoints.len())
            .map(|i| hash64(endpoints.name(i).as_bytes(), NAME_SEED))
            .collect();
        let first = endpoints.weights().next().unwrap_or(1);
        let weights = (!endpoints.weights().all(|w| w == first))
            .then(|| endpoints.weights().map(f64::from).collect());
        Scorer { names, weights }
    }

    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    pub(crate) fn heap_size(&self) -> usize {
        self.names.len() * 8 + self.weights.as_ref().map_or(0, |w| w.len() * 8)
    }

    /// The rank of endpoint `i` for key hash `h`: higher is preferred, and no two
    /// endpoints share one.
    #[inline]
    pub(crate) fn rank(&self, h: u64, i: usize) -> u64 {
        let x = mix64(h ^ self.names[i]);
        let score = match &self.weights {
            None => (x >> 32) as u32,
            Some(w) => weighted_score(x, w[i]),
        };
        (u64::from(score) << 32) | u64::from(u32::MAX - i as u32)
    }

    /// The highest-ranked endpoint ranked below `below` (anywhere, if `None`), other than
    /// `skip`, that `accept` accepts. `accept` is asked only about endpoints that would
    /// beat the best accepted so far.
    #[inline]
    pub(crate) fn best<F: FnMut(usize) -> bool>(
        &self,
        h: u64,
        below: Option<u64>,
        skip: usize,
        mut accept: F,
    ) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for i in 0..self.names.len() {
            let r = self.rank(h, i);
            let in_range = below.is_none_or(|b| r < b);
            if in_range && best.is_none_or(|(b, _)| r > b) && i != skip && accept(i) {
                best = Some((r, i));
            }
        }
        best.map(|(_, i)| i)
    }
}

/// `weight / -ln(u)` with `u` in (0, 1) from the top 53 bits of `x`, as the bits of an `f32`
/// (which order like the values for positive numbers). 0 for weight 0.
#[inline]
fn weighted_score(x: u64, weight: f64) -> u32 {
    if weight <= 0.0 {
        return 0;
    }
    let u = ((x >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64);
    // -ln(u) lies in [5.5e-17, 37.5]; with weight <= 2^32 the score stays finite as f32.
    ((weight / -u.ln()) as f32).to_bits()
}

/// The key hash and the random seed (0 for a real key) of a request.
#[inline]
pub(crate) fn key_hash(keyless: &Keyless, key: Option<&[u8]>, after: Option<u64>) -> (u64, u32) {
    match present(key) {
        Some(k) => (hash64(k, KEY_SEED), 0),
        None => {
            let seed = match after {
                None => keyless.random32(),
                Some(c) => (c >> 32) as u32,
            };
            (random_key_hash(seed), seed)
        }
    }
}

impl Strategy for Rendezvous {
    type Table = RendezvousTable;

    fn build(&self, endpoints: &Endpoints<'_>) -> RendezvousTable {
        RendezvousTable {
            scorer: Scorer::new(endpoints),
            cycle: self.keyless.build(endpoints),
        }
    }

    #[inline]
    fn pick(&self, table: &RendezvousTable, endpoints: &Endpoints<'_>, cx: &Context<'_>) -> usize {
        pick_in_order_wrapping(self, table, endpoints, cx)
    }

    fn uses_request_key(&self) -> bool {
        true
    }

    fn seed(&self) -> Option<u64> {
        self.keyless.seed()
    }
}

impl PreferenceOrder for Rendezvous {
    fn find<F: FnMut(usize) -> bool>(
        &self,
        table: &RendezvousTable,
        endpoints: &Endpoints<'_>,
        key: Option<&[u8]>,
        after: Option<u64>,
        accept: F,
    ) -> Option<(usize, u64)> {
        let keyless = &self.keyless;
        keyless.find(&table.cycle, endpoints, key, after, accept, |accept| {
            let n = table.scorer.len();
            if n == 0 || n != endpoints.len() {
                return None;
            }
            let (h, seed) = key_hash(keyless, key, after);
            let below = match after.map(|c| c & LOW) {
                None | Some(0) => None,
                Some(prev) => {
                    let prev = prev as usize - 1;
                    if prev >= n {
                        return None;
                    }
                    Some(table.scorer.rank(h, prev))
                }
            };
            let i = table.scorer.best(h, below, usize::MAX, accept)?;
            Some((i, (u64::from(seed) << 32) | (i as u64 + 1)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::EndpointList;

    #[test]
    fn weighted_scores_win_in_proportion() {
        let list = EndpointList::from_weights([1, 2, 3, 4]);
        let rv = Rendezvous::new();
        let table = rv.build(&list.endpoints());
        let mut counts = [0u32; 4];
        for i in 0..100_000u32 {
            let key = i.to_le_bytes();
            counts[rv.pick(&table, &list.endpoints(), &Context::with_key(Some(&key)))] += 1;
        }
        for (i, &c) in counts.iter().enumerate() {
            let want = 10_000.0 * (i + 1) as f64;
            assert!((f64::from(c) - want).abs() < want * 0.04, "{counts:?}");
        }
    }

    #[test]
    fn ranks_are_distinct_and_skip_works() {
        let list = EndpointList::from_weights([1, 1, 1]);
        let s = Scorer::new(&list.endpoints());
        let h = 12345;
        let best = s.best(h, None, usize::MAX, |_| true).unwrap();
        let second = s
            .best(h, Some(s.rank(h, best)), usize::MAX, |_| true)
            .unwrap();
        let skipped = s.best(h, None, best, |_| true).unwrap();
        assert_ne!(best, second);
        assert_eq!(second, skipped);
    }
}
