//! A consistent ring, Finagle's deterministic aperture: [`Aperture`].

use super::{Subsetting, FULL_SHARE};
use crate::error::BuildError;

/// A consistent ring: Finagle's deterministic aperture (Twitter's Finagle,
/// `finagle-core/.../loadbalancer/aperture/`: `ProcessCoordinate.scala`, `Ring.scala`,
/// `DeterministicAperture.scala`), followed exactly, in integer arithmetic.
///
/// - **Backends** sit on a unit ring in name order: backend `j` of `B` owns the arc
///   `[j / B, (j + 1) / B)` (`Ring`).
/// - **Clients** sit on the same ring: client `i` of `C` starts at `i / C`, and each owns
///   a unit of width `1 / C` (`ProcessCoordinate.FromInstanceId`, without its optional
///   rotation).
/// - **The aperture**: a client's slice starts at its offset and is the smallest whole
///   number of client units that covers `aperture` backends: width
///   `min(1, ceil(aperture × C / B) / C)` (`DeterministicAperture.dApertureWidth`), with
///   `aperture = min(12, B)` by default (Finagle's `MinDeterministicAperture`, 12).
/// - **Fractional weights**: the subset is every backend the slice overlaps, and each
///   member's share is the overlap of the slice with its arc, divided by the arc's length
///   (`Ring.weight`): 1 inside the slice, less at its two edges.
///
/// Since the slices of all clients together cover the ring the same number of times
/// everywhere (`ceil(aperture × C / B)` times), every backend gets the same total share of
/// clients: connections differ by at most the edges, and requests, which follow the shares,
/// are balanced. Finagle picks within the slice by weighted power of two choices; here the
/// shares reach the balancer as weights: the adapter multiplies a member's weight by its
/// share in hundredths ([`FULL_SHARE`](super::FULL_SHARE) for a whole member, at least 1
/// at an edge), so the balancer's strategy (weighted round robin, weighted least request)
/// sends each member its fraction.
///
/// **Churn.** When a backend comes or goes, every arc is renormalised (`j / B` becomes
/// `j / (B ± 1)`), so most slices shift by a fraction of an arc: a client gains or loses at
/// most two members each way (an edge, and the backend itself), most of them with a small
/// share, unless the slice's number of client units `ceil(aperture × C / B)` changes, when
/// every slice grows or shrinks. When clients scale, every offset `i / C` moves and the
/// width may gain a unit. Either way most clients change a member, where the ideal is a
/// change only for the clients of the backend that came or went. Google's Ringsteady
/// subsetting (CACM, May 2023) avoids this with stable backend task indices placed by a
/// low-discrepancy sequence; discovery gives names, not indices,
/// so this crate follows Finagle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aperture {
    client_id: u64,
    client_count: u64,
    aperture: usize,
}

impl Aperture {
    /// Finagle's minimum deterministic aperture, the default here.
    pub const DEFAULT_APERTURE: usize = 12;

    /// Client `client_id` of `client_count` (ids 0 to `client_count - 1`), with an
    /// aperture of [`DEFAULT_APERTURE`](Self::DEFAULT_APERTURE) backends.
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidConfig`] when `client_count` is 0 or `client_id` is not below it.
    pub fn new(client_id: u64, client_count: u64) -> Result<Self, BuildError> {
        BuildError::reject_if(
            client_count == 0,
            "Aperture::client_count",
            client_count,
            "at least 1",
        )?;
        BuildError::reject_if(
            client_id >= client_count,
            "Aperture::client_id",
            client_id,
            "less than the client count",
        )?;
        Ok(Aperture {
            client_id,
            client_count,
            aperture: Self::DEFAULT_APERTURE,
        })
    }

    /// Sets the aperture: the least number of backends a client's slice covers (more when
    /// the slice must round up to whole client units).
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidConfig`] when `aperture` is 0.
    pub fn aperture(mut self, aperture: usize) -> Result<Self, BuildError> {
        BuildError::reject_if(aperture == 0, "Aperture::aperture", aperture, "at least 1")?;
        self.aperture = aperture;
        Ok(self)
    }

    /// This client's id.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The number of clients.
    pub fn client_count(&self) -> u64 {
        self.client_count
    }
}

impl Subsetting for Aperture {
    fn select(&self, backends: &[&str]) -> Vec<(usize, u32)> {
        let n = backends.len() as u128;
        if n == 0 {
            return Vec::new();
        }
        let c = u128::from(self.client_count);
        // Ring positions in units of 1 / (C × B): client unit = B, backend arc = C.
        let ring = c * n;
        let aperture = (self.aperture as u128).min(n);
        let rounds = (aperture * c).div_ceil(n);
        let width = (rounds * n).min(ring);
        let start = u128::from(self.client_id) * n;
        let end = start + width;
        if width == ring {
            return (0..backends.len()).map(|i| (i, FULL_SHARE)).collect();
        }
        // Overlap of the slice with each arc it touches, in ring units; a slice nearly as
        // wide as the ring can touch its first arc again at its end.
        let mut overlaps: Vec<(usize, u128)> = Vec::new();
        let mut j = start / c;
        while j * c < end {
            let (arc_start, arc_end) = (j * c, (j + 1) * c);
            let overlap = arc_end.min(end) - arc_start.max(start);
            let index = (j % n) as usize;
            match overlaps.first_mut() {
                Some(first) if first.0 == index => first.1 += overlap,
                _ => overlaps.push((index, overlap)),
            }
            j += 1;
        }
        overlaps
            .into_iter()
            .map(|(i, overlap)| {
                let share = (overlap * u128::from(FULL_SHARE) + c / 2) / c;
                (i, (share as u32).max(1))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(id: u64, clients: u64, aperture: usize, n: usize) -> Vec<(usize, u32)> {
        let names: Vec<String> = (0..n).map(|i| format!("b{i:03}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        Aperture::new(id, clients)
            .unwrap()
            .aperture(aperture)
            .unwrap()
            .select(&refs)
    }

    #[test]
    fn exact_slices_with_fractional_edges() {
        // 3 clients, 4 backends, aperture 2: width ceil(2 × 3 / 4) = 2 client units = 2/3.
        // Client 0: [0, 2/3) covers backends 0, 1 whole and 2/3 of backend 2.
        assert_eq!(select(0, 3, 2, 4), [(0, 100), (1, 100), (2, 67)]);
        // Client 1: [1/3, 1): 2/3 of backend 1 (its arc [1/4, 1/2)), backends 2, 3 whole.
        assert_eq!(select(1, 3, 2, 4), [(1, 67), (2, 100), (3, 100)]);
        // Client 2: [2/3, 4/3) wraps: 1/3 of backend 2, backend 3, backend 0, 1/3 of 1.
        assert_eq!(select(2, 3, 2, 4), [(2, 33), (3, 100), (0, 100), (1, 33)]);
    }

    #[test]
    fn shares_sum_to_the_same_total_for_every_backend() {
        for (clients, n) in [
            (300u64, 300usize),
            (100, 37),
            (7, 50),
            (301, 300),
            (300, 301),
        ] {
            let mut total = vec![0u32; n];
            for id in 0..clients {
                for (i, share) in select(id, clients, 12, n) {
                    total[i] += share;
                }
            }
            // Every point of the ring is covered by `units` slices, so each backend's
            // shares add up to `units` whole shares, up to the rounding of the partial
            // ones: at most one per slice edge inside its arc, of which there are at most
            // two per client unit that starts or ends there.
            let units = (12.min(n) as u64 * clients).div_ceil(n as u64) as u32;
            let edges = 2 * (clients.div_ceil(n as u64) as u32 + 1);
            for (i, &t) in total.iter().enumerate() {
                assert!(
                    t.abs_diff(units * FULL_SHARE) <= edges,
                    "{clients}×{n}: backend {i} has {t}, not {}",
                    units * FULL_SHARE
                );
            }
        }
    }

    fn members(id: u64, clients: u64, aperture: usize, names: &[String]) -> Vec<String> {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let algo = Aperture::new(id, clients)
            .unwrap()
            .aperture(aperture)
            .unwrap();
        algo.select(&refs)
            .into_iter()
            .map(|(i, _)| names[i].clone())
            .collect()
    }

    fn changes(before: &[String], after: &[String]) -> (usize, usize) {
        let joined = after.iter().filter(|m| !before.contains(m)).count();
        let left = before.iter().filter(|m| !after.contains(m)).count();
        (joined, left)
    }

    proptest::proptest! {
        /// One backend more or less moves each slice by less than one arc at each end,
        /// so a client's subset gains and loses at most two members each way (an edge and
        /// the backend itself), as long as the slice keeps its width: the number of
        /// client units, `ceil(aperture × C / B)` with the aperture capped at `B`, may
        /// change with `B`, and then every slice grows or shrinks.
        #[test]
        fn one_backend_changes_at_most_two_members_each_way(
            clients in 1u64..60,
            n in 1usize..60,
            aperture in 1usize..20,
            at in proptest::prelude::any::<proptest::sample::Index>(),
            id in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            // Even names for the backends, an odd one for the new backend: anywhere in
            // the order.
            let names: Vec<String> = (0..n).map(|i| format!("b{:04}", 2 * i + 2)).collect();
            let mut grown = names.clone();
            grown.push(format!("b{:04}", 2 * at.index(n + 1) + 1));
            grown.sort();
            let units = |b: usize| (aperture.min(b) as u64 * clients).div_ceil(b as u64);
            proptest::prop_assume!(units(n) == units(n + 1));
            let id = id.index(clients as usize) as u64;
            let before = members(id, clients, aperture, &names);
            let after = members(id, clients, aperture, &grown);
            let (joined, left) = changes(&before, &after);
            proptest::prop_assert!(joined <= 2 && left <= 2, "{before:?} -> {after:?}");
            let (joined, left) = changes(&after, &before);
            proptest::prop_assert!(joined <= 2 && left <= 2, "{after:?} -> {before:?}");
        }
    }

    #[test]
    fn whole_ring_when_the_aperture_covers_it() {
        let all = select(3, 5, 12, 4);
        assert_eq!(all.len(), 4);
        assert!(all.iter().all(|&(_, s)| s == FULL_SHARE));
    }

    #[test]
    fn bad_settings_are_errors() {
        let invalid = super::super::rejected(Aperture::new(0, 0));
        assert_eq!(invalid.field(), "Aperture::client_count");
        let invalid = super::super::rejected(Aperture::new(5, 5));
        assert_eq!(invalid.field(), "Aperture::client_id");
        assert_eq!(
            invalid.to_string(),
            "invalid load balancer configuration: Aperture::client_id is 5; it must be less than the client count"
        );
        let invalid = super::super::rejected(Aperture::new(0, 5).unwrap().aperture(0));
        assert_eq!(invalid.field(), "Aperture::aperture");
    }
}
