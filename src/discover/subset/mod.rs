//! Subsetting: each client of a large fleet balances over a small subset of the backends.
//!
//! When hundreds of clients each balance over hundreds of backends, full connectivity costs
//! connections and memory on both sides, and health checks grow as clients × backends.
//! Subsetting gives each client a few backends, chosen so that every backend still gets
//! its share of clients, and so that a change of the backend set moves few connections.
//!
//! [`subset`] wraps any discovery source ([`static_list`](super::static_list),
//! [`channel`](super::channel), DNS, a custom one) in an adapter that tracks the full
//! backend set and passes on to the balancer only the changes of this client's subset. It
//! passes weights and metadata through, and shows the current subset in a
//! [`SubsetHandle`]. Four algorithms come with the crate, one per file:
//!
//! | algorithm | source | connections per backend | when one backend comes or goes |
//! |---|---|---|---|
//! | [`Deterministic`] | SRE book, chapter 20 | equal when clients fill whole rounds | most subsets of the fleet change |
//! | [`Random`] | gRFC A68 | random: spread grows as subsets shrink | at most one member of any subset changes |
//! | [`Aperture`] | Finagle's deterministic aperture | equal up to the slice edges, whose fractional shares reach the balancer as weights | most subsets gain or lose an edge member |
//! | [`Ringsteady`] | Google's Ringsteady (ACM Queue 2022) | equal with as many clients as backends, else within about one | at most one member of any subset changes; needs stable backend indices |
//!
//! Every client of a fleet must use the same algorithm and settings, and see the same
//! backend names. A backend's name is its [`Metadata::name`](crate::Metadata::name), or
//! else its key's `Debug` form without quotes (as for consistent hashing); algorithms see
//! the names sorted, so the order in which discovery lists the backends does not matter.
//! Names should be unique.
//!
//! ```
//! use tower_lb::discover::{self, subset};
//! use tower_lb::Balance;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_lb::error::BoxError> {
//! let echo = tower::service_fn(|req: String| async move { Ok::<_, std::io::Error>(req) });
//! let backends = (0..30).map(|i| (format!("10.0.0.{i}:80"), echo.clone()));
//! // Client 7 of the fleet connects to 10 of the 30 backends.
//! let algorithm = subset::Deterministic::new(7, 10)?;
//! let (source, handle) = subset::subset(discover::static_list(backends), algorithm);
//! let balance = Balance::builder().build(source)?;
//! # let _ = balance;
//! # tokio::task::yield_now().await;
//! println!("{:?}", handle.stats().keys().collect::<Vec<_>>());
//! # Ok(())
//! # }
//! ```
//!
//! Bad settings (a subset size of 0, a client id not below the client count) are a
//! [`BuildError::InvalidConfig`](crate::error::BuildError::InvalidConfig) naming the setting,
//! as for the balancer's own settings.
//!
//! # Writing an algorithm
//!
//! Implement [`Subsetting`]: given the sorted names of every backend, return the chosen
//! indices with a weight factor each. The adapter multiplies each member's weight by its
//! factor, so an algorithm that gives some members a fraction of a full share (the ring's
//! edges) returns [`FULL_SHARE`] for whole members and less for the others.

mod adapter;
mod aperture;
mod deterministic;
mod random;
mod ringsteady;

pub use adapter::{subset, Member, Subset, SubsetHandle, SubsetStats};
pub use aperture::Aperture;
pub use deterministic::Deterministic;
pub use random::Random;
pub use ringsteady::{ordinal, Ringsteady};

/// The weight factor of a whole member, for algorithms with fractional shares: a member
/// that gets a quarter of a full share has factor `FULL_SHARE / 4`. Hundredths: precise
/// enough for the edges of a slice (two members of many), and small enough that smooth
/// weighted round robin's cycle over a subset of 10 stays near 1 000 slots (4 KB).
pub const FULL_SHARE: u32 = 100;

/// A subsetting algorithm: which backends this client uses.
pub trait Subsetting: Send + 'static {
    /// Chooses this client's subset of `backends`, the names of every backend sorted
    /// ascending: `(index into backends, weight factor)` per member, in the order the
    /// algorithm ranks them. The factor multiplies the member's weight; algorithms without
    /// fractional shares return 1. Called whenever the backend set changes; never called
    /// with an empty list.
    fn select(&self, backends: &[&str]) -> Vec<(usize, u32)>;
}

/// The setting a [`BuildError::InvalidConfig`](crate::error::BuildError) names, for tests.
#[cfg(test)]
fn rejected<T: std::fmt::Debug>(
    result: Result<T, crate::error::BuildError>,
) -> crate::error::InvalidConfig {
    match result {
        Err(crate::error::BuildError::InvalidConfig(invalid)) => invalid,
        other => panic!("accepted: {other:?}"),
    }
}

/// The indices `0..n` ordered by `XXH64(name, seed)`, ties by name: a seeded random
/// permutation that depends only on the names, so every client computes the same one.
fn hash_order(backends: &[&str], seed: u64) -> Vec<usize> {
    let mut order: Vec<(u64, usize)> = backends
        .iter()
        .enumerate()
        .map(|(i, name)| (xxhash_rust::xxh64::xxh64(name.as_bytes(), seed), i))
        .collect();
    // The names are sorted, so ties on the hash fall back to name order via the index.
    order.sort_unstable();
    order.into_iter().map(|(_, i)| i).collect()
}

/// A boxed algorithm is one too, to choose the algorithm at run time.
impl<T: Subsetting + ?Sized> Subsetting for Box<T> {
    fn select(&self, backends: &[&str]) -> Vec<(usize, u32)> {
        (**self).select(backends)
    }
}
