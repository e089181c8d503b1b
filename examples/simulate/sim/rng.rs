//! The simulator's random numbers: [`SimRng`] (splitmix64), seeded per use from the
//! scenario's seed and a label ([`derive_seed`]), so that every contestant sees the same
//! arrivals, keys and service times (common random numbers).

/// splitmix64: a small, fast, seedable generator; every random number of a run comes from
/// one of these, seeded from the scenario's seed and a label.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        SimRng(seed)
    }

    /// A generator for `label`, independent of the generators of other labels.
    pub fn derived(seed: u64, label: &str) -> Self {
        SimRng(derive_seed(seed, label))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Exponential with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// tower's `p2c::Balance::from_rng` takes tower's own `Rng` trait.
impl tower::util::rng::Rng for SimRng {
    fn next_u64(&mut self) -> u64 {
        SimRng::next_u64(self)
    }
}

/// A seed for `label` derived from `seed` (FNV-1a of the label, then one splitmix step).
pub fn derive_seed(seed: u64, label: &str) -> u64 {
    let mut h = seed ^ 0xcbf2_9ce4_8422_2325;
    for b in label.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    SimRng::new(h).next_u64()
}
