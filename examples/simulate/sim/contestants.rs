//! The contestants: an [`Algo`] (this crate's strategies, tower's `p2c::Balance`, the
//! oracle) with or without the crate's health features, and the standard line-ups the
//! scenarios use.

/// A balancing algorithm that competes in a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algo {
    RoundRobin,
    Random,
    LeastRequest,
    /// `LeastRequest::full_scan()`: every endpoint scored on each pick.
    LeastRequestAll,
    PeakEwma,
    RingHash,
    Maglev,
    Rendezvous,
    BoundedRing,
    BoundedMaglev,
    /// tower 0.5 `p2c::Balance` over `load::PendingRequests`.
    TowerPending,
    /// tower 0.5 `p2c::Balance` over `load::PeakEwma` (RTT 30 ms, decay 10 s).
    TowerPeakEwma,
    /// The simulator's oracle: the shortest true queue among the backends that answer.
    Oracle,
    /// `WeightedRoundRobin` (feature `orca`) with gRPC's defaults, fed by the backends'
    /// load reports.
    WeightedRoundRobin,
}

/// A contestant: an algorithm, and for this crate's strategies the health features on top.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Contestant {
    pub algo: Algo,
    /// Outlier detection with the crate's defaults (`OutlierDetection::new()`: Envoy's
    /// thresholds, at most half the backends ejected for failed requests); without it,
    /// `Builder::outlier_detection(None)`, the strategy alone.
    pub outlier: bool,
    /// `Builder::slow_start(SlowStart::new(10 s))`.
    pub slow_start: bool,
    /// Each endpoint service wrapped in `tower::timeout::Timeout` with the scenario's
    /// deadline, so a request that runs out of time is an error the balancer sees (a
    /// failure for outlier detection, a penalised sample for peak-EWMA) instead of a
    /// cancellation.
    pub endpoint_timeout: bool,
}

impl Contestant {
    pub const fn new(algo: Algo) -> Self {
        Contestant {
            algo,
            outlier: false,
            slow_start: false,
            endpoint_timeout: false,
        }
    }

    pub const fn outlier(mut self) -> Self {
        self.outlier = true;
        self
    }

    pub const fn slow_start(mut self) -> Self {
        self.slow_start = true;
        self
    }

    pub const fn endpoint_timeout(mut self) -> Self {
        self.endpoint_timeout = true;
        self
    }

    pub fn is_ours(&self) -> bool {
        !matches!(
            self.algo,
            Algo::TowerPending | Algo::TowerPeakEwma | Algo::Oracle
        )
    }

    pub fn name(&self) -> String {
        let mut name = match self.algo {
            Algo::RoundRobin => "round-robin",
            Algo::Random => "random",
            Algo::LeastRequest => "least-request",
            Algo::LeastRequestAll => "least-request (scan all)",
            Algo::PeakEwma => "peak-ewma",
            Algo::RingHash => "ring-hash",
            Algo::Maglev => "maglev",
            Algo::Rendezvous => "rendezvous",
            Algo::BoundedRing => "bounded-load ring-hash",
            Algo::BoundedMaglev => "bounded-load maglev",
            Algo::TowerPending => "tower p2c PendingRequests",
            Algo::TowerPeakEwma => "tower p2c PeakEwma",
            Algo::Oracle => "oracle (shortest true queue)",
            Algo::WeightedRoundRobin => "weighted-round-robin (ORCA reports)",
        }
        .to_owned();
        if self.outlier {
            name.push_str(" + outlier");
        }
        if self.slow_start {
            name.push_str(" + slow start");
        }
        if self.endpoint_timeout {
            name.push_str(" + endpoint timeout");
        }
        name
    }
}

/// The contestants of the scenarios without keys.
pub fn standard_contestants() -> Vec<Contestant> {
    use Algo::*;
    vec![
        Contestant::new(RoundRobin),
        Contestant::new(Random),
        Contestant::new(LeastRequest),
        Contestant::new(LeastRequestAll),
        Contestant::new(PeakEwma),
        Contestant::new(RoundRobin).outlier(),
        Contestant::new(LeastRequest).outlier(),
        Contestant::new(PeakEwma).outlier(),
        Contestant::new(LeastRequest).outlier().endpoint_timeout(),
        Contestant::new(PeakEwma).outlier().endpoint_timeout(),
        Contestant::new(TowerPending),
        Contestant::new(TowerPeakEwma),
        Contestant::new(Oracle),
    ]
}

/// The contestants of the scenarios with load reports: the standard ones, and weighted
/// round robin by the reports when the `orca` feature is on.
pub fn orca_contestants() -> Vec<Contestant> {
    let mut contestants = standard_contestants();
    if cfg!(feature = "orca") {
        contestants.insert(5, Contestant::new(Algo::WeightedRoundRobin));
    }
    contestants
}

/// The contestants of the hot-keys scenario.
pub fn hashing_contestants() -> Vec<Contestant> {
    use Algo::*;
    vec![
        Contestant::new(RingHash),
        Contestant::new(Maglev),
        Contestant::new(Rendezvous),
        Contestant::new(BoundedRing),
        Contestant::new(BoundedMaglev),
        Contestant::new(RoundRobin),
        Contestant::new(LeastRequest),
        Contestant::new(PeakEwma),
        Contestant::new(Oracle),
    ]
}
