//! Consistent hashing with bounded loads: a key stays on its endpoint unless that endpoint
//! already carries more than its share.
//!
//! # The algorithm
//!
//! Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded Loads" (SODA 2018),
//! as deployed by Vimeo (Rodland, "Improving load balancing with a new consistent-hashing
//! algorithm", 2016) and in HAProxy's `hash-balance-factor`: with `c >= 1` the balance
//! factor, `T` the requests in flight over all endpoints and `n` the endpoints, each
//! endpoint may carry
//!
//! ```text
//! capacity = ceil(c × (T + 1) / n)
//! ```
//!
//! requests (the `+ 1` is the request being placed). A request goes to the first endpoint
//! in its key's preference order whose in-flight count is below its capacity: the key's own
//! endpoint when it is not overloaded, otherwise the next one, as the wrapped strategy ranks
//! them (the next endpoint clockwise on a [`RingHash`](super::RingHash) ring, the next in
//! rendezvous order for [`Maglev`](super::Maglev) and
//! [`Rendezvous`](super::Rendezvous)). No endpoint then carries more than `c` times the
//! average (rounded up), however skewed the keys: with `c = 1.25` (the default, Vimeo's
//! choice) a hot key spills onto its next endpoints instead of overloading one, while most
//! keys stay where they hash.
//!
//! With weights, an endpoint's capacity is its weight's share:
//! `ceil(c × (T + 1) × weight / sum(weights))`, which is the formula above when weights are
//! equal. An endpoint with nothing in flight is always below capacity.
//!
//! # Attempts and cost
//!
//! Later attempts (when the chosen endpoint cannot take the request) go on down the
//! preference order from the endpoint last chosen, still passing over overloaded
//! endpoints; the endpoints passed over are not returned again. Once the order is used up,
//! attempt `k` returns endpoint `k mod n`. If every endpoint looks overloaded (counters
//! change while a pick reads them), attempt 0 returns the key's own endpoint.
//!
//! Reading the load costs one atomic read of the chosen endpoint; only when it has requests
//! in flight does the pick sum the in-flight counts of all endpoints (O(n), once per pick)
//! to know `T`. Passing over an endpoint costs the wrapped strategy's fallback step (O(1) on
//! a ring, O(n) for Maglev and rendezvous, but one scan finds the first endpoint below
//! capacity).

use super::hashing::PreferenceOrder;
use super::{Context, Endpoints, Strategy};
use crate::error::BuildError;

/// The default balance factor (Vimeo's).
pub const DEFAULT_FACTOR: f64 = 1.25;

/// Consistent hashing with bounded loads around a hashing strategy. See the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct BoundedLoad<S> {
    inner: S,
    factor: f64,
}

impl<S: Default> Default for BoundedLoad<S> {
    fn default() -> Self {
        BoundedLoad::new(S::default())
    }
}

impl<S> BoundedLoad<S> {
    /// Bounds the loads of `inner`'s choices with the default factor, 1.25.
    pub fn new(inner: S) -> Self {
        BoundedLoad {
            inner,
            factor: DEFAULT_FACTOR,
        }
    }

    /// The balance factor `c`: no endpoint takes a request while it carries `c` times its
    /// share of the requests in flight. Must be finite and at least 1 (checked when the
    /// balancer is built); 1 is the tightest bound (and moves the most keys), larger values
    /// move fewer keys.
    pub fn factor(mut self, c: f64) -> Self {
        self.factor = c;
        self
    }

    /// The wrapped strategy.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

/// The table of a [`BoundedLoad`]: the wrapped strategy's table and the total weight.
#[derive(Debug, Clone)]
pub struct BoundedTable<T> {
    inner: T,
    /// The sum of the weights, as capacities use them (every weight counts 1 if all are 0).
    total_weight: f64,
    all_zero: bool,
}

impl<T> BoundedTable<T> {
    /// The wrapped strategy's table.
    pub fn inner(&self) -> &T {
        &self.inner
    }
}

impl<S: PreferenceOrder> Strategy for BoundedLoad<S> {
    type Table = BoundedTable<S::Table>;

    fn build(&self, endpoints: &Endpoints<'_>) -> Self::Table {
        let all_zero = endpoints.weights().all(|w| w == 0);
        let total_weight = if all_zero {
            endpoints.len() as f64
        } else {
            endpoints.weights().map(f64::from).sum()
        };
        BoundedTable {
            inner: self.inner.build(endpoints),
            total_weight,
            all_zero,
        }
    }

    fn pick(&self, table: &Self::Table, endpoints: &Endpoints<'_>, cx: &Context<'_>) -> usize {
        let n = endpoints.len();
        if n == 0 {
            return 0;
        }
        let mut total: Option<u64> = None;
        let below_capacity = |i: usize| {
            let weight = if table.all_zero {
                1.0
            } else {
                f64::from(endpoints.weight(i))
            };
            if weight <= 0.0 {
                return false;
            }
            let load = endpoints.load(i).in_flight();
            if load == 0 {
                return true;
            }
            let total = *total.get_or_insert_with(|| endpoints.total_in_flight());
            let capacity =
                (self.factor * (total as f64 + 1.0) * weight / table.total_weight).ceil();
            (load as f64) < capacity
        };
        let after = (cx.attempt() > 0).then(|| cx.cursor());
        let key = cx.key();
        if let Some((i, cursor)) =
            self.inner
                .find(&table.inner, endpoints, key, after, below_capacity)
        {
            cx.set_cursor(cursor);
            return i;
        }
        if after.is_none() {
            // Everything looked overloaded: the counters moved while we read them.
            if let Some((i, cursor)) = self
                .inner
                .find(&table.inner, endpoints, key, None, |_| true)
            {
                cx.set_cursor(cursor);
                return i;
            }
        }
        cx.attempt() as usize % n
    }

    fn uses_request_key(&self) -> bool {
        true
    }

    fn seed(&self) -> Option<u64> {
        self.inner.seed()
    }

    fn validate(&self) -> Result<(), BuildError> {
        BuildError::reject_if(
            !self.factor.is_finite() || self.factor < 1.0,
            "BoundedLoad::factor",
            self.factor,
            "finite and at least 1",
        )?;
        self.inner.validate()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::endpoint::Load;
    use crate::strategy::rng::Rng;
    use crate::strategy::{EndpointList, Maglev, Rendezvous, RingHash};

    /// Keys 0..k drawn with probability proportional to 1 / (rank + 1)^s.
    struct Zipf {
        cdf: Vec<f64>,
        rng: Rng,
    }

    impl Zipf {
        fn new(k: usize, s: f64, seed: u64) -> Self {
            let mut acc = 0.0;
            let mut cdf: Vec<f64> = (0..k)
                .map(|r| {
                    acc += 1.0 / ((r + 1) as f64).powf(s);
                    acc
                })
                .collect();
            cdf.iter_mut().for_each(|x| *x /= acc);
            Zipf {
                cdf,
                rng: Rng::seeded(seed),
            }
        }

        fn sample(&self) -> usize {
            let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
        }
    }

    /// Places `requests` Zipf(1.1) keyed requests that all stay in flight; returns the
    /// in-flight counts.
    fn place<S: Strategy>(strategy: &S, n: usize, requests: usize) -> Vec<u64> {
        let loads: Vec<Arc<Load>> = (0..n).map(|_| Arc::default()).collect();
        let mut list = EndpointList::default();
        for (i, load) in loads.iter().enumerate() {
            list.push_named(format!("10.0.0.{i}:80"), 1, load.clone());
        }
        let endpoints = list.endpoints();
        let table = strategy.build(&endpoints);
        let zipf = Zipf::new(10_000, 1.1, 7);
        for _ in 0..requests {
            let key = format!("user-{}", zipf.sample());
            let i = strategy.pick(&table, &endpoints, &Context::with_key(Some(key.as_bytes())));
            loads[i].start();
        }
        loads.iter().map(|l| l.in_flight()).collect()
    }

    fn max_over_mean(loads: &[u64]) -> f64 {
        let max = *loads.iter().max().unwrap() as f64;
        let mean = loads.iter().sum::<u64>() as f64 / loads.len() as f64;
        max / mean
    }

    #[test]
    fn zipf_keys_stay_within_the_factor() {
        let (n, requests) = (10, 20_000);
        let bound = |c: f64| (c * requests as f64 / n as f64).ceil() as u64;
        for c in [1.25, 1.0, 2.0] {
            for (name, loads) in [
                (
                    "ring",
                    place(&BoundedLoad::new(RingHash::new()).factor(c), n, requests),
                ),
                (
                    "maglev",
                    place(&BoundedLoad::new(Maglev::new()).factor(c), n, requests),
                ),
                (
                    "rendezvous",
                    place(&BoundedLoad::new(Rendezvous::new()).factor(c), n, requests),
                ),
            ] {
                let max = *loads.iter().max().unwrap();
                assert!(max <= bound(c), "{name} c={c}: {loads:?}");
                assert_eq!(loads.iter().sum::<u64>(), requests as u64);
                eprintln!(
                    "bounded {name} c={c}: max/mean {:.3}",
                    max_over_mean(&loads)
                );
            }
        }
        // Without the bound the hottest key's endpoint carries far more than its share.
        let unbounded = place(&RingHash::new(), n, requests);
        let skew = max_over_mean(&unbounded);
        eprintln!("unbounded ring: max/mean {skew:.3}");
        assert!(skew > 1.5, "{unbounded:?}");
    }

    #[test]
    fn idle_endpoints_keep_their_keys() {
        let list = EndpointList::from_weights([1, 1, 1, 1]);
        let plain = RingHash::new();
        let bounded = BoundedLoad::new(RingHash::new());
        let (pt, bt) = (
            plain.build(&list.endpoints()),
            bounded.build(&list.endpoints()),
        );
        for i in 0..1000u32 {
            let key = i.to_le_bytes();
            let cx = || Context::with_key(Some(&key));
            assert_eq!(
                plain.pick(&pt, &list.endpoints(), &cx()),
                bounded.pick(&bt, &list.endpoints(), &cx())
            );
        }
    }

    #[test]
    fn overloaded_first_choice_is_passed_over_and_attempts_continue() {
        let loads: Vec<Arc<Load>> = (0..4).map(|_| Arc::default()).collect();
        let mut list = EndpointList::default();
        for load in &loads {
            list.push(1, load.clone());
        }
        let s = BoundedLoad::new(Maglev::new());
        let table = s.build(&list.endpoints());
        let key = b"hot".as_slice();
        let first = s.pick(&table, &list.endpoints(), &Context::with_key(Some(key)));
        for _ in 0..10 {
            loads[first].start();
        }
        // T = 10, capacity = ceil(1.25 × 11 / 4) = 4: the first choice (10) is over it.
        let cx = Context::with_key(Some(key));
        let second = s.pick(&table, &list.endpoints(), &cx);
        assert_ne!(second, first);
        let mut seen = vec![second];
        let mut cx = cx;
        for _ in 0..2 {
            cx = cx.next_attempt();
            seen.push(s.pick(&table, &list.endpoints(), &cx));
        }
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(!seen.contains(&first));
        // Used up: in range, no panic.
        cx = cx.next_attempt();
        assert!(s.pick(&table, &list.endpoints(), &cx) < 4);
    }

    #[test]
    fn validate_checks_the_factor() {
        assert!(BoundedLoad::new(RingHash::new()).validate().is_ok());
        assert!(BoundedLoad::new(RingHash::new())
            .factor(1.0)
            .validate()
            .is_ok());
        for bad in [0.99, 0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(BoundedLoad::new(RingHash::new())
                .factor(bad)
                .validate()
                .is_err());
        }
        assert!(BoundedLoad::new(Maglev::new().table_size(4))
            .validate()
            .is_err());
    }
}
