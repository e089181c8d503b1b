//! The static stride scheduler of gRPC's weighted round robin (C++ and Go), lock-free.
//!
//! # The algorithm
//!
//! Weights are scaled so that the largest is 65 535 (`u16::MAX`). A shared sequence number
//! `seq` counts picks; `i = seq % n` is the endpoint its turn falls to and
//! `generation = seq / n` how many times the turn went round. Endpoint `i` takes its turn
//! unless `(w[i] × generation + i × 32 767) % 65 535 < 65 535 − w[i]`, so it takes `w[i]` of
//! every 65 535 generations, spread evenly over them (the multiplication strides through
//! the generations; the offset `i × 32 767` staggers neighbours so that two equal weights do
//! not skip the same generations). An endpoint of the largest weight never skips, so a pick
//! takes at most `n` turns, and on average `max / mean` turns.
//!
//! Before scaling, as gRPC C++ does (`static_stride_scheduler.cc`): a weight of 0 means
//! unknown and takes the mean of the known weights; the largest weight is capped at 10 × the
//! mean (so a pick averages at most 10 turns), and every known weight is raised to at least
//! 0.01 × the mean (at least 1 after scaling), so that near-zero weights are still picked now
//! and then rather than never. With fewer than two endpoints, or no known weight, there is
//! no schedule (the caller falls back to round robin).
//!
//! gRPC takes one sequence number per turn with an atomic increment. This implementation
//! reads the sequence, computes locally which turn from there is taken, and moves the
//! sequence past it with one compare-and-swap (retried if another pick moved it first): the
//! same sequence of picks as gRPC's, with one atomic read-modify-write per pick instead of
//! one per turn. The sequence is a `u32`, as in gRPC, and wraps.

use std::sync::atomic::{AtomicU32, Ordering};

/// The largest scaled weight.
const MAX_WEIGHT: u64 = u16::MAX as u64;
/// The stagger between neighbours: half the largest weight.
const OFFSET: u64 = MAX_WEIGHT / 2;
/// Weights above this many times the mean are capped.
const MAX_RATIO: f64 = 10.0;
/// Weights below this many times the mean are raised.
const MIN_RATIO: f64 = 0.01;

/// Scaled weights for the stride scheduler. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticStride {
    weights: Box<[u16]>,
}

impl StaticStride {
    /// Scales `weights` (0 = unknown; negative and non-finite values count as unknown).
    /// `None` when there are fewer than two endpoints or no known weight.
    pub fn new(weights: &[f64]) -> Option<Self> {
        let n = weights.len();
        if n < 2 {
            return None;
        }
        let known = || {
            weights
                .iter()
                .copied()
                .filter(|w| w.is_finite() && *w > 0.0)
        };
        let count = known().count();
        if count == 0 {
            return None;
        }
        let sum: f64 = known().sum();
        let mean = sum / count as f64;
        let max = known().fold(0.0, f64::max).min(MAX_RATIO * mean);
        let scale = MAX_WEIGHT as f64 / max;
        let scaled_mean = (scale * mean).round().clamp(1.0, MAX_WEIGHT as f64);
        let lower = (scaled_mean * MIN_RATIO).round().max(1.0);
        let scaled = weights
            .iter()
            .map(|&w| {
                if !(w.is_finite() && w > 0.0) {
                    scaled_mean as u16
                } else {
                    (w.min(max) * scale).round().clamp(lower, MAX_WEIGHT as f64) as u16
                }
            })
            .collect();
        Some(StaticStride { weights: scaled })
    }

    /// The scaled weights, in endpoint order (the largest is 65 535).
    pub fn weights(&self) -> &[u16] {
        &self.weights
    }

    /// Takes the next pick from `sequence`: the index of the endpoint whose turn it is.
    #[inline]
    pub fn pick(&self, sequence: &AtomicU32) -> usize {
        let mut current = sequence.load(Ordering::Relaxed);
        loop {
            let (turns, index) = self.next_from(current);
            match sequence.compare_exchange_weak(
                current,
                current.wrapping_add(turns),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return index,
                Err(actual) => current = actual,
            }
        }
    }

    /// From sequence number `seq` on, the number of turns until one is taken (that one
    /// included) and the endpoint that takes it.
    #[inline]
    fn next_from(&self, mut seq: u32) -> (u32, usize) {
        let n = self.weights.len() as u32;
        let mut i = seq % n;
        let mut generation = u64::from(seq / n);
        let mut turns = 1;
        loop {
            let w = u64::from(self.weights[i as usize]);
            if (w * generation + u64::from(i) * OFFSET) % MAX_WEIGHT >= MAX_WEIGHT - w {
                return (turns, i as usize);
            }
            turns += 1;
            seq = seq.wrapping_add(1);
            if seq == 0 {
                // The sequence wrapped: turn and generation start over, as gRPC's do.
                i = 0;
                generation = 0;
            } else {
                i += 1;
                if i == n {
                    i = 0;
                    generation += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(weights: &[f64], count: usize) -> Vec<usize> {
        let stride = StaticStride::new(weights).unwrap();
        let sequence = AtomicU32::new(0);
        (0..count).map(|_| stride.pick(&sequence)).collect()
    }

    fn counts(picks: &[usize], n: usize) -> Vec<usize> {
        (0..n)
            .map(|i| picks.iter().filter(|&&p| p == i).count())
            .collect()
    }

    #[test]
    fn one_two_three_over_six_picks() {
        let p = picks(&[1.0, 2.0, 3.0], 6);
        assert_eq!(p, [1, 2, 2, 0, 1, 2]);
        assert_eq!(counts(&p, 3), [1, 2, 3]);
        // And over many cycles, in proportion.
        assert_eq!(
            counts(&picks(&[1.0, 2.0, 3.0], 6000), 3),
            [1000, 2000, 3000]
        );
    }

    #[test]
    fn an_unknown_weight_takes_the_mean() {
        let stride = StaticStride::new(&[3.0, 0.0, 1.0]).unwrap();
        assert_eq!(stride.weights(), [65535, 43690, 21845]);
        assert_eq!(counts(&picks(&[3.0, 0.0, 1.0], 6), 3), [3, 2, 1]);
    }

    #[test]
    fn equal_known_weights_are_exact_round_robin() {
        assert_eq!(picks(&[300.0, 300.0, 0.0], 9), [0, 1, 2, 0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn the_largest_is_capped_at_ten_means_and_the_smallest_raised_to_a_hundredth() {
        let stride = StaticStride::new(&[1000.0, 1.0, 1.0, 1.0]).unwrap();
        // Mean 250.75, cap 2507.5 > 1000: not capped; the 1s are raised to 0.01 × mean.
        let mean = (65535.0 * 250.75f64 / 1000.0).round();
        let lower = (mean * 0.01).round() as u16;
        assert_eq!(stride.weights(), [65535, lower, lower, lower]);
        let many =
            StaticStride::new(&[1e6, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]).unwrap();
        // Mean 90 910: the 1e6 is capped at 10 × the mean, and the 1s (about a millionth of the cap)
        // are raised to 0.01 × the mean (0.001 of the cap).
        let w = many.weights();
        assert_eq!(w[0], 65535);
        assert_eq!(w[1], ((65535.0f64 / 10.0).round() * 0.01).round() as u16);
    }

    #[test]
    fn no_schedule_for_one_endpoint_or_no_known_weight() {
        assert_eq!(StaticStride::new(&[5.0]), None);
        assert_eq!(StaticStride::new(&[0.0, 0.0]), None);
        assert_eq!(StaticStride::new(&[f64::NAN, -1.0]), None);
        assert!(StaticStride::new(&[0.0, 2.0]).is_some());
    }

    #[test]
    fn the_sequence_wraps_like_grpcs() {
        let stride = StaticStride::new(&[1.0, 2.0, 3.0]).unwrap();
        let sequence = AtomicU32::new(u32::MAX - 1);
        for _ in 0..10 {
            let i = stride.pick(&sequence);
            assert!(i < 3);
        }
    }

    #[test]
    fn one_pick_per_turn_taken_matches_grpcs_turn_by_turn_loop() {
        // gRPC's loop: one sequence number per turn, skipping until a turn is taken.
        let weights = [5.0, 0.5, 2.0, 0.0, 9.0, 3.3];
        let stride = StaticStride::new(&weights).unwrap();
        let n = weights.len() as u32;
        let mut seq = 7u32;
        let sequence = AtomicU32::new(7);
        for _ in 0..2000 {
            let expected = loop {
                let s = seq;
                seq = seq.wrapping_add(1);
                let (i, gen) = (s % n, u64::from(s / n));
                let w = u64::from(stride.weights()[i as usize]);
                if (w * gen + u64::from(i) * OFFSET) % MAX_WEIGHT >= MAX_WEIGHT - w {
                    break i as usize;
                }
            };
            assert_eq!(stride.pick(&sequence), expected);
        }
        assert_eq!(sequence.load(Ordering::Relaxed), seq);
    }
}
