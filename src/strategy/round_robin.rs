//! Smooth weighted round robin, in nginx's order, at O(1) per pick.
//!
//! # The algorithm
//!
//! nginx's smooth weighted round robin (`ngx_http_upstream_get_peer`, nginx 1.3.1 and
//! later) keeps a `current` value per peer. On each pick every peer adds its weight to
//! `current`; the peer with the largest `current` wins (the first one in list order on a
//! tie) and subtracts the total weight `W`. The resulting order interleaves peers as evenly
//! as their weights allow: weights 5, 1, 1 give `a a b a c a a`, then repeat.
//!
//! The order repeats every `W` picks, so this strategy computes one cycle when the endpoint
//! set changes and then serves each pick with one atomic increment and one table read.
//! Computing the cycle does not scan every peer per step: peers of equal weight always win
//! in list order among themselves, so each distinct weight keeps a cursor, and a step only
//! compares the head of each weight class (O(W × distinct weights) per rebuild).
//!
//! # Weights
//!
//! Weights are first divided by their greatest common divisor, which leaves nginx's order
//! unchanged (10, 2, 2 behaves exactly like 5, 1, 1). If the reduced weights still sum to
//! more than the cycle limit, max(65 536, 64 × endpoints), they are scaled down in
//! proportion (each to at least 1) so the cycle fits, and the order is that of the scaled
//! weights. Rounding moves less than one slot per endpoint, so at most 1/64 of the traffic
//! (n slots of a cycle of at least 64 n) goes elsewhere than the exact weights say. The cycle
//! costs 4 bytes a slot: at most 256 bytes per endpoint beyond the first 65 536 slots.
//! Weight `u32::MAX` is valid.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Context, Endpoints, Strategy};

/// The longest cycle the strategy stores is max(MAX_CYCLE, SLOTS_PER_ENDPOINT × n).
const MAX_CYCLE: u64 = 1 << 16;
const SLOTS_PER_ENDPOINT: u64 = 64;

/// Smooth weighted round robin in nginx's order. See the [module docs](self).
///
/// All clones of a balancer share one cursor, so consecutive requests from any task follow
/// the cycle. With equal weights the order is simply the endpoints in discovery order.
#[derive(Debug, Default)]
pub struct RoundRobin {
    cursor: AtomicU64,
}

impl Clone for RoundRobin {
    /// A round robin with its own cursor, starting where this one is now.
    fn clone(&self) -> Self {
        RoundRobin {
            cursor: AtomicU64::new(self.cursor.load(Ordering::Relaxed)),
        }
    }
}

impl RoundRobin {
    /// A round robin that starts at the beginning of the cycle.
    pub fn new() -> Self {
        Self::default()
    }
}

/// One precomputed cycle of picks.
#[derive(Debug, Clone)]
pub struct Cycle {
    order: Box<[u32]>,
}

impl Cycle {
    /// The endpoint indices of one full cycle, in pick order.
    pub fn order(&self) -> &[u32] {
        &self.order
    }
}

impl Strategy for RoundRobin {
    type Table = Cycle;

    fn build(&self, endpoints: &Endpoints<'_>) -> Cycle {
        let weights: Vec<u64> = endpoints.weights().map(u64::from).collect();
        Cycle {
            order: smooth_cycle(&weights).into_boxed_slice(),
        }
    }

    #[inline]
    fn pick(&self, table: &Cycle, _endpoints: &Endpoints<'_>, _cx: &Context) -> usize {
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        table.order[(n % table.order.len() as u64) as usize] as usize
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Reduces weights by their GCD and, if needed, scales them so they sum to at most
/// `max(MAX_CYCLE, n)`, keeping every weight at least 1.
fn reduce(weights: &[u64]) -> Vec<u64> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut w: Vec<u64> = weights.iter().map(|&x| (x / g).max(1)).collect();
    let total: u128 = w.iter().map(|&x| u128::from(x)).sum();
    let cap = MAX_CYCLE.max(SLOTS_PER_ENDPOINT * w.len() as u64);
    if total > u128::from(cap) {
        let room = u128::from(cap - w.len() as u64 + 1).max(1);
        for x in &mut w {
            *x = ((u128::from(*x) * room / total) as u64).max(1);
        }
        let g = w.iter().copied().fold(0, gcd).max(1);
        w.iter_mut().for_each(|x| *x /= g);
    }
    w
}

/// One cycle of nginx's smooth weighted round robin over `weights` (all at least 1).
fn smooth_cycle(weights: &[u64]) -> Vec<u32> {
    let w = reduce(weights);
    if w.iter().all(|&x| x == w[0]) {
        return (0..w.len() as u32).collect();
    }
    let total: u64 = w.iter().sum();

    // Peers of one weight, with the cursor of the next one to win and how many full rounds
    // the class has completed. Members before the cursor have won `round + 1` times, the
    // rest `round` times, so the member at the cursor has the largest `current` in its class
    // and the lowest index among the ties.
    struct Class {
        weight: i128,
        members: Vec<u32>,
        cursor: usize,
        round: i128,
    }
    let mut classes: Vec<Class> = Vec::new();
    let mut by_weight: std::collections::HashMap<u64, usize> = Default::default();
    for (i, &x) in w.iter().enumerate() {
        let c = *by_weight.entry(x).or_insert_with(|| {
            classes.push(Class {
                weight: i128::from(x),
                members: Vec::new(),
                cursor: 0,
                round: 0,
            });
            classes.len() - 1
        });
        classes[c].members.push(i as u32);
    }

    let big_w = i128::from(total);
    let mut order = Vec::with_capacity(total as usize);
    for step in 1..=i128::from(total) {
        // `current` of a peer after `step` additions and `wins` subtractions.
        let mut best: Option<(i128, u32, usize)> = None;
        for (ci, class) in classes.iter().enumerate() {
            let head = class.members[class.cursor];
            let current = step * class.weight - big_w * class.round;
            let better = match best {
                None => true,
                Some((bc, bi, _)) => current > bc || (current == bc && head < bi),
            };
            if better {
                best = Some((current, head, ci));
            }
        }
        let (_, winner, ci) = best.expect("at least one class");
        order.push(winner);
        let class = &mut classes[ci];
        class.cursor += 1;
        if class.cursor == class.members.len() {
            class.cursor = 0;
            class.round += 1;
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    // The order is checked against nginx's O(n) scan, through a real balancer, in
    // tests/strategies.rs.

    #[test]
    fn five_one_one_is_nginx_order() {
        assert_eq!(smooth_cycle(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn gcd_reduction_keeps_the_order() {
        assert_eq!(smooth_cycle(&[10, 2, 2]), smooth_cycle(&[5, 1, 1]));
    }

    #[test]
    fn huge_weights_are_scaled_and_keep_proportions() {
        let cycle = smooth_cycle(&[u64::from(u32::MAX), u64::from(u32::MAX / 2), 1]);
        assert!(cycle.len() as u64 <= MAX_CYCLE + 3);
        let count = |i: u32| cycle.iter().filter(|&&x| x == i).count() as f64;
        let ratio = count(0) / count(1);
        assert!((ratio - 2.0).abs() < 0.01, "ratio {ratio}");
        assert!(count(2) >= 1.0, "every endpoint keeps at least one slot");
    }

    /// The share of picks that go to endpoints with index `>= split`.
    fn share_from(cycle: &[u32], split: u32) -> f64 {
        cycle.iter().filter(|&&i| i >= split).count() as f64 / cycle.len() as f64
    }

    #[test]
    fn many_endpoints_keep_their_shares() {
        // 10 000 of weight 1, then 10 000 of weight 100: the heavy half gets 100/101.
        let weights: Vec<u64> = (0..20_000)
            .map(|i| if i < 10_000 { 1 } else { 100 })
            .collect();
        let share = share_from(&smooth_cycle(&weights), 10_000);
        assert!((share - 100.0 / 101.0).abs() < 0.001, "{share}");

        // 60 000 of weight 1 and one of weight 100 000: the heavy one gets 62.5 %.
        let mut weights = vec![1u64; 60_000];
        weights.push(100_000);
        let share = share_from(&smooth_cycle(&weights), 60_000);
        assert!((share - 0.625).abs() < 0.001, "{share}");
    }

    #[test]
    fn scaling_moves_at_most_a_64th_of_the_traffic() {
        // Weights that sum far beyond the cycle limit, with many tiny ones that round up.
        let weights: Vec<u64> = (0..1_000u64)
            .map(|i| {
                if i % 10 == 0 {
                    u64::from(u32::MAX)
                } else {
                    1 + i
                }
            })
            .collect();
        let cycle = smooth_cycle(&weights);
        let total: f64 = weights.iter().map(|&w| w as f64).sum();
        let mut counts = vec![0u32; weights.len()];
        for &i in &cycle {
            counts[i as usize] += 1;
        }
        let misplaced: f64 = weights
            .iter()
            .zip(&counts)
            .map(|(&w, &c)| (c as f64 / cycle.len() as f64 - w as f64 / total).max(0.0))
            .sum();
        assert!(misplaced <= 1.0 / 64.0, "{misplaced}");
    }

    #[test]
    fn equal_weights_are_plain_rotation() {
        assert_eq!(smooth_cycle(&[9, 9, 9, 9]), vec![0, 1, 2, 3]);
    }
}
