//! What the consistent-hashing strategies share: the hash functions, the missing-key
//! fallback, and the preference order that [`BoundedLoad`](super::BoundedLoad) walks.
//!
//! # Hash functions
//!
//! - **CRC-32** (IEEE 802.3: reflected polynomial `0xEDB88320`, initial value and final xor
//!   `0xFFFFFFFF`), the checksum nginx hashes with, so that [`RingHash`](super::RingHash)
//!   places servers and keys exactly where nginx's `hash $key consistent` does, computed by
//!   the `crc32fast` crate (carry-less multiplication where the CPU has it, slicing-by-16
//!   tables elsewhere). Its hasher streams and clones, which the ring needs: nginx hashes a
//!   server's host, a NUL byte and its port as one message, then continues from that state
//!   for every point. It replaced a hand-written slicing-by-8 CRC: as fast on a 15-byte key
//!   (17 ns), 2.2 times faster on 64 bytes (16 against 34 ns) and 10 times on 512, 3 ns
//!   slower on 4 bytes (measured in one run, `x86_64`).
//! - **XXH3-64** with a seed for [`Maglev`](super::Maglev) and
//!   [`Rendezvous`](super::Rendezvous), which need more than 32 bits, from the
//!   `xxhash-rust` crate. XXH3 is a published specification with fixed outputs (Yann
//!   Collet, xxHash, `doc/xxhash_spec.md`), so every client of a fleet places keys alike
//!   whatever version of this crate it runs, as long as it hashes the same names; it is
//!   also among the fastest hashes on short keys (one or two multiplies up to 16 bytes).
//!   It replaced a hand-written wyhash-style hash with no measurable change to Maglev's
//!   pick (`cargo bench --bench pick -- any/maglev/static`, old and new binaries run
//!   alternately: 8 to 16 ns against 18 to 20 ns at 10 endpoints on a loaded host, within
//!   the runs' spread). It is not meant to resist an attacker
//!   who chooses keys to collide; use keys the attacker cannot choose freely (or that the
//!   application has authenticated) when that matters.
//!
//! # Keys
//!
//! A request without a key ([`Context::key`] is `None`), or with an empty key, is routed by
//! the strategy's [`MissingKey`] fallback. Keys of any length are hashed whole, byte for byte.

use super::rng::Rng;
use super::round_robin::{Cycle, RoundRobin};
use super::{Context, Endpoints, Strategy};

// ---------------------------------------------------------------------------------------
// 64-bit hashing
// ---------------------------------------------------------------------------------------

/// The seed request keys are hashed with.
pub(crate) const KEY_SEED: u64 = 0x6b65_795f_7365_6564;

/// The XXH3-64 hash of `bytes` under `seed`. See the [module docs](self).
#[inline]
pub(crate) fn hash64(bytes: &[u8], seed: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(bytes, seed)
}

/// A bijective 64-bit mixer (the finaliser of MurmurHash3): every output bit depends on
/// every input bit.
#[inline]
pub(crate) fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The key hash that stands for a missing key drawn at random, from 32 random bits (kept
/// in a cursor so that later attempts follow the same order).
#[inline]
pub(crate) fn random_key_hash(seed: u32) -> u64 {
    mix64(u64::from(seed) ^ 0x5eed_0f4b_6579)
}

/// The key a strategy should hash: `None` for a missing or empty key.
#[inline]
pub(crate) fn present(key: Option<&[u8]>) -> Option<&[u8]> {
    key.filter(|k| !k.is_empty())
}

// ---------------------------------------------------------------------------------------
// Missing keys
// ---------------------------------------------------------------------------------------

/// How a hashing strategy routes a request that has no key (or an empty one).
///
/// Either way the choice honours weights, and later attempts of the same request
/// ([`Context::attempt`] 1, 2, ...) return other endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum MissingKey {
    /// A random key hash, routed through the same table as real keys: each endpoint gets
    /// its hashed share of keyless requests (its weight's share up to the table's
    /// imbalance). Later attempts follow that random hash's preference order. The default.
    #[default]
    Random,
    /// nginx's smooth weighted round robin over the endpoints (what nginx itself does
    /// with an empty key since 1.17.1): over one cycle of `sum(weights)` keyless requests
    /// each endpoint gets exactly its weight. Attempt `k` returns the endpoint `k` places
    /// after the first choice in index order.
    RoundRobin,
}

/// The missing-key fallback of one strategy, with its random source and round-robin cursor.
#[derive(Debug, Clone, Default)]
pub(crate) struct Keyless {
    pub(crate) mode: MissingKey,
    rng: Rng,
    rr: RoundRobin,
}

impl Keyless {
    pub(crate) fn set_seed(&mut self, seed: u64) {
        self.rng = Rng::seeded(seed);
    }

    /// The seed given with [`set_seed`](Self::set_seed).
    pub(crate) fn seed(&self) -> Option<u64> {
        self.rng.seed()
    }

    /// 32 random bits.
    #[inline]
    pub(crate) fn random32(&self) -> u32 {
        (self.rng.next_u64() >> 32) as u32
    }

    /// The round-robin cycle, when the mode needs one.
    pub(crate) fn build(&self, endpoints: &Endpoints<'_>) -> Option<Cycle> {
        (self.mode == MissingKey::RoundRobin && !endpoints.is_empty())
            .then(|| self.rr.build(endpoints))
    }

    /// Whether a request with `key` is routed by round robin.
    #[inline]
    fn round_robin(&self, key: Option<&[u8]>, cycle: &Option<Cycle>) -> bool {
        self.mode == MissingKey::RoundRobin && present(key).is_none() && cycle.is_some()
    }

    /// [`PreferenceOrder::find`] of a hashing strategy whose table holds `cycle`: the
    /// round-robin order for a keyless request when the mode says so, else `hashed`, the
    /// strategy's own order (which gets `accept`).
    #[inline]
    pub(crate) fn find<F: FnMut(usize) -> bool>(
        &self,
        cycle: &Option<Cycle>,
        endpoints: &Endpoints<'_>,
        key: Option<&[u8]>,
        after: Option<u64>,
        accept: F,
        hashed: impl FnOnce(F) -> Option<(usize, u64)>,
    ) -> Option<(usize, u64)> {
        if self.round_robin(key, cycle) {
            self.find_round_robin(cycle, endpoints, after, accept)
        } else {
            hashed(accept)
        }
    }

    /// The round-robin order: the cycle's next endpoint, then the endpoints after it in index
    /// order. The cursor holds the first choice + 1 (low half) and the steps taken (high
    /// half).
    fn find_round_robin<F: FnMut(usize) -> bool>(
        &self,
        cycle: &Option<Cycle>,
        endpoints: &Endpoints<'_>,
        after: Option<u64>,
        mut accept: F,
    ) -> Option<(usize, u64)> {
        let n = endpoints.len();
        let cycle = cycle.as_ref()?;
        if n == 0 {
            return None;
        }
        let (first, mut step) = match after {
            None => (self.rr.pick(cycle, endpoints, &Context::default()) % n, 0),
            Some(c) => {
                let first = ((c & LOW) as usize).wrapping_sub(1) % n;
                (first, (c >> 32) as usize + 1)
            }
        };
        while step < n {
            let i = (first + step) % n;
            if accept(i) {
                return Some((i, ((step as u64) << 32) | (first as u64 + 1)));
            }
            step += 1;
        }
        None
    }
}

/// The low 32 bits of a cursor.
pub(crate) const LOW: u64 = 0xFFFF_FFFF;

/// The builder methods of a hashing strategy's missing-key fallback, `missing_key` and
/// `seed`, for a strategy with a `keyless: Keyless` field. `$random` says where a keyless
/// request goes in `MissingKey::Random` mode.
macro_rules! keyless_options {
    ($strategy:ty, $random:literal) => {
        impl $strategy {
            #[doc = concat!(
                                "How requests without a key are routed (default ",
                                "[`MissingKey::Random`](crate::strategy::MissingKey::Random): ",
                                $random,
                                ")."
                            )]
            pub fn missing_key(mut self, missing: $crate::strategy::MissingKey) -> Self {
                self.keyless.mode = missing;
                self
            }

            /// Draws the random choices for keyless requests from one reproducible sequence
            /// (see [`Random::with_seed`](crate::strategy::Random::with_seed)).
            pub fn seed(mut self, seed: u64) -> Self {
                self.keyless.set_seed(seed);
                self
            }
        }
    };
}
pub(crate) use keyless_options;

// ---------------------------------------------------------------------------------------
// Preference order
// ---------------------------------------------------------------------------------------

mod sealed {
    pub trait Sealed {}
}

impl sealed::Sealed for super::RingHash {}
impl sealed::Sealed for super::Maglev {}
impl sealed::Sealed for super::Rendezvous {}

/// A strategy that ranks all endpoints for each request key: a first choice, then
/// fallbacks, each endpoint at most once. [`RingHash`](super::RingHash),
/// [`Maglev`](super::Maglev) and [`Rendezvous`](super::Rendezvous) implement it (it is
/// sealed), and [`BoundedLoad`](super::BoundedLoad) walks it to pass over busy endpoints.
///
/// Their [`Strategy::pick`] is this order: attempt 0 is the first endpoint of the key's
/// order, and each later attempt (see [`Strategy::uses_request_key`]) the next one, with
/// [`Context::cursor`] holding the place reached.
pub trait PreferenceOrder: Strategy + sealed::Sealed {
    /// The first endpoint in the preference order of `key` that `accept` accepts, and a
    /// cursor that stands at it.
    ///
    /// With `after` `None` the search starts at the top of the order; with `Some(cursor)`,
    /// just after the endpoint a previous call returned that cursor with. Endpoints that
    /// `accept` rejects are passed over for good: a later search from the returned cursor
    /// does not come back to them. `None` when no endpoint further down the order is
    /// accepted. `key` `None` (or empty) follows the strategy's [`MissingKey`] fallback.
    /// Never allocates, and looks at each endpoint at most once per call.
    fn find<F: FnMut(usize) -> bool>(
        &self,
        table: &Self::Table,
        endpoints: &Endpoints<'_>,
        key: Option<&[u8]>,
        after: Option<u64>,
        accept: F,
    ) -> Option<(usize, u64)>;
}

/// `Strategy::pick` for a preference order: attempt 0 starts the order, later attempts go on
/// from the cursor, and once the order is used up `exhausted(attempt)` answers.
#[inline]
pub(crate) fn pick_in_order<S: PreferenceOrder>(
    strategy: &S,
    table: &S::Table,
    endpoints: &Endpoints<'_>,
    cx: &Context<'_>,
    exhausted: impl FnOnce(u32) -> usize,
) -> usize {
    if endpoints.is_empty() {
        return 0;
    }
    let after = (cx.attempt() > 0).then(|| cx.cursor());
    match strategy.find(table, endpoints, cx.key(), after, |_| true) {
        Some((i, cursor)) => {
            cx.set_cursor(cursor);
            i
        }
        None => exhausted(cx.attempt()),
    }
}

/// [`pick_in_order`] where, once the order is used up, attempt `k` returns endpoint
/// `k mod n`.
#[inline]
pub(crate) fn pick_in_order_wrapping<S: PreferenceOrder>(
    strategy: &S,
    table: &S::Table,
    endpoints: &Endpoints<'_>,
    cx: &Context<'_>,
) -> usize {
    let n = endpoints.len().max(1);
    pick_in_order(strategy, table, endpoints, cx, |attempt| {
        attempt as usize % n
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    /// The checksum nginx places servers and keys with, from `crc32fast`.
    fn crc32_known_vectors() {
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32fast::hash(b""), 0);
        assert_eq!(crc32fast::hash(b"a"), 0xE8B7_BE43);
        assert_eq!(crc32fast::hash(b"abc"), 0x3524_41C2);
        assert_eq!(
            crc32fast::hash(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
        // Published alongside a third-party reimplementation of nginx's chash (see
        // tests/hashing.rs): the CRC-32 of two client addresses.
        assert_eq!(crc32fast::hash(b"192.168.0.1"), 2_307_365_224);
        assert_eq!(crc32fast::hash(b"192.168.0.10"), 3_074_142_674);
    }

    #[test]
    fn hash64_differs_by_length_seed_and_content() {
        assert_ne!(hash64(b"a", 0), hash64(b"a\0", 0));
        assert_ne!(hash64(b"", 0), hash64(b"\0", 0));
        assert_ne!(hash64(b"abc", 0), hash64(b"abc", 1));
        let mut seen = std::collections::HashSet::new();
        for i in 0..100_000u32 {
            assert!(seen.insert(hash64(&i.to_le_bytes(), KEY_SEED)));
        }
    }

    #[test]
    fn hash64_top_bits_are_uniform() {
        // 64 buckets by the top 6 bits over sequential keys.
        let mut counts = [0u32; 64];
        for i in 0..64_000u32 {
            counts[(hash64(format!("key-{i}").as_bytes(), KEY_SEED) >> 58) as usize] += 1;
        }
        for c in counts {
            assert!((850..1150).contains(&c), "{counts:?}");
        }
    }
}
