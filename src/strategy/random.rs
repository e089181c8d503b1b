//! Weighted random choice in O(1) per pick, with Vose's alias method.
//!
//! With equal weights a pick is one uniform draw. Otherwise [`Strategy::build`] makes an
//! alias table (Walker 1977; Vose, "A linear algorithm for generating random numbers with a
//! given distribution", IEEE TSE 1991): each of the `n` slots holds a threshold and an alias.
//! A pick draws one 64-bit number, uses its high half to choose a slot and its low half as a
//! coin against the slot's threshold, and returns the slot or its alias. The probability of
//! endpoint `i` is `weight[i] / sum(weights)`, up to the 2⁻³² resolution of the thresholds.

use super::rng::Rng;
use super::{Context, Endpoints, Strategy};

/// Weighted random choice. See the [module docs](self).
#[derive(Debug, Default, Clone)]
pub struct Random {
    rng: Rng,
}

impl Random {
    /// Random choice with a per-thread generator seeded from the operating system.
    pub fn new() -> Self {
        Self::default()
    }

    /// Random choice from one reproducible sequence (see [`LeastRequest::with_seed`](super::LeastRequest::with_seed)).
    pub fn with_seed(seed: u64) -> Self {
        Random {
            rng: Rng::seeded(seed),
        }
    }
}

/// The precomputed choice table.
#[derive(Debug, Clone)]
pub enum AliasTable {
    /// All weights are equal: draw uniformly.
    Uniform,
    /// Slot thresholds (out of 2³²) and aliases.
    Alias(Box<[(u64, u32)]>),
}

impl Strategy for Random {
    type Table = AliasTable;

    fn build(&self, endpoints: &Endpoints<'_>) -> AliasTable {
        let weights: Vec<u32> = endpoints.weights().collect();
        if weights.iter().all(|&w| w == weights[0]) {
            return AliasTable::Uniform;
        }
        AliasTable::Alias(alias_table(&weights).into_boxed_slice())
    }

    fn seed(&self) -> Option<u64> {
        self.rng.seed()
    }

    #[inline]
    fn pick(&self, table: &AliasTable, endpoints: &Endpoints<'_>, _cx: &Context) -> usize {
        match table {
            AliasTable::Uniform => self.rng.below(endpoints.len()),
            AliasTable::Alias(slots) => {
                let r = self.rng.next_u64();
                let slot = (((r >> 32) * slots.len() as u64) >> 32) as usize;
                let (threshold, alias) = slots[slot];
                // Branch-free: the coin is unpredictable, so a branch would mispredict often.
                let keep = ((r & 0xffff_ffff) < threshold) as usize;
                keep * slot + (1 - keep) * alias as usize
            }
        }
    }
}

/// Builds Vose's alias table; thresholds are probabilities scaled to 2³².
pub(crate) fn alias_table(weights: &[u32]) -> Vec<(u64, u32)> {
    let n = weights.len();
    let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    let mut scaled: Vec<f64> = weights
        .iter()
        .map(|&w| f64::from(w) * n as f64 / total)
        .collect();
    let mut table = vec![(1u64 << 32, 0u32); n];
    let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| scaled[i] < 1.0);
    while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
        table[s] = (
            ((scaled[s] * 4_294_967_296.0) as u64).min(1 << 32),
            l as u32,
        );
        scaled[l] -= 1.0 - scaled[s];
        if scaled[l] < 1.0 {
            large.pop();
            small.push(l);
        }
    }
    // Whatever is left is 1 up to rounding: always keep the slot itself.
    for i in small.into_iter().chain(large) {
        table[i] = (1 << 32, i as u32);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact probability of each endpoint implied by a table.
    fn implied(table: &[(u64, u32)]) -> Vec<f64> {
        let n = table.len() as f64;
        let mut p = vec![0.0; table.len()];
        for (slot, &(t, alias)) in table.iter().enumerate() {
            let keep = t as f64 / 4_294_967_296.0;
            p[slot] += keep / n;
            p[alias as usize] += (1.0 - keep) / n;
        }
        p
    }

    #[test]
    fn alias_table_reproduces_weights() {
        for weights in [
            vec![5, 1, 1],
            vec![1, 2, 3, 4],
            vec![u32::MAX, 1, u32::MAX / 3],
            vec![9, 1],
        ] {
            let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
            let p = implied(&alias_table(&weights));
            for (i, &w) in weights.iter().enumerate() {
                assert!(
                    (p[i] - f64::from(w) / total).abs() < 1e-6,
                    "{weights:?}: {p:?}"
                );
            }
        }
    }
}
