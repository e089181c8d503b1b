//! A strategy chosen at run time: [`AnyStrategy`] and [`StrategyKind`] (re-exported from
//! [`strategy`](super), where their docs are).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::{
    BoundedLoad, Context, Endpoints, LatencyTracking, LeastRequest, Maglev, PeakEwma, Random,
    Rendezvous, RingHash, RoundRobin, Strategy,
};
use crate::error::BuildError;

/// Declares [`AnyStrategy`] and its table with one variant per strategy, and implements
/// [`Strategy`] for it by forwarding every method to the variant's strategy. A strategy
/// added to the crate takes one line in the invocation below; a method added to the trait,
/// one line here.
macro_rules! any_strategy {
    (
        $(#[$enum_doc:meta])*
        enum AnyStrategy {
            $($(#[cfg($cfg:meta)])? $(#[doc = $doc:expr])* $variant:ident($strategy:ty),)*
        }
    ) => {
        $(#[$enum_doc])*
        #[derive(Debug)]
        #[non_exhaustive]
        pub enum AnyStrategy {
            $($(#[cfg($cfg)])? $(#[doc = $doc])* $variant($strategy),)*
        }

        /// The table of an [`AnyStrategy`]: the table of the strategy it holds.
        #[derive(Debug)]
        pub struct AnyTable(Table);

        #[derive(Debug)]
        enum Table {
            $($(#[cfg($cfg)])? $variant(<$strategy as Strategy>::Table),)*
        }

        impl Strategy for AnyStrategy {
            type Table = AnyTable;

            fn build(&self, endpoints: &Endpoints<'_>) -> AnyTable {
                AnyTable(match self {
                    $($(#[cfg($cfg)])? AnyStrategy::$variant(s) => Table::$variant(s.build(endpoints)),)*
                })
            }

            #[inline]
            fn pick(&self, table: &AnyTable, endpoints: &Endpoints<'_>, cx: &Context<'_>) -> usize {
                match (self, &table.0) {
                    $($(#[cfg($cfg)])? (AnyStrategy::$variant(s), Table::$variant(t)) => s.pick(t, endpoints, cx),)*
                    // Not reachable: the balancer passes the table this strategy built.
                    // Index 0 is a valid choice in any non-empty set.
                    _ => 0,
                }
            }

            #[inline]
            fn uses_request_key(&self) -> bool {
                match self { $($(#[cfg($cfg)])? AnyStrategy::$variant(s) => s.uses_request_key(),)* }
            }

            fn latency(&self) -> Option<LatencyTracking> {
                match self { $($(#[cfg($cfg)])? AnyStrategy::$variant(s) => s.latency(),)* }
            }

            fn failure_penalty(&self) -> Option<Duration> {
                match self { $($(#[cfg($cfg)])? AnyStrategy::$variant(s) => s.failure_penalty(),)* }
            }

            fn seed(&self) -> Option<u64> {
                match self { $($(#[cfg($cfg)])? AnyStrategy::$variant(s) => s.seed(),)* }
            }

            fn load_reports(&self) -> bool {
                match self { $($(#[cfg($cfg)])? AnyStrategy::$variant(s) => s.load_reports(),)* }
            }

            fn rebuild_every(&self) -> Option<Duration> {
                match self { $($(#[cfg($cfg)])? AnyStrategy::$variant(s) => s.rebuild_every(),)* }
            }

            fn validate(&self) -> Result<(), BuildError> {
                match self { $($(#[cfg($cfg)])? AnyStrategy::$variant(s) => s.validate(),)* }
            }
        }

        $(
            $(#[cfg($cfg)])?
            impl From<$strategy> for AnyStrategy {
                fn from(strategy: $strategy) -> Self {
                    AnyStrategy::$variant(strategy)
                }
            }
        )*
    };
}

any_strategy! {
    /// One of the built-in strategies, chosen at run time: one type for every built-in
    /// strategy, named by [`StrategyKind`] as a configuration file or a command-line flag
    /// names it.
    ///
    /// A `match` on a configuration string cannot produce one strategy type, so a balancer
    /// whose strategy comes from configuration would otherwise have to be boxed (and lose
    /// its API) or wrapped in an enum of one's own. `AnyStrategy` is that enum: it
    /// implements [`Strategy`] by forwarding every method to the strategy it holds, so
    /// `Balance<K, S, AnyStrategy>` keeps the whole `Balance` API (`endpoints()`,
    /// `set_draining`, health events).
    ///
    /// Parse one from its name with `str::parse`, make one with its defaults from a kind
    /// (`AnyStrategy::from(kind)`), or wrap a strategy you configured:
    /// `AnyStrategy::from(LeastRequest::new().choices(3))`.
    ///
    /// ```
    /// use tower_lb::strategy::{AnyStrategy, StrategyKind};
    /// use tower_lb::{discover, Balance};
    /// use tower_lb::classify::ErrorsAsFailures;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // From a configuration file or a flag: round-robin, random, least-request, peak-ewma,
    /// // ring-hash, maglev or rendezvous.
    /// let strategy: AnyStrategy = "peak-ewma".parse().unwrap();
    /// assert_eq!(strategy.kind(), StrategyKind::PeakEwma);
    ///
    /// let echo = tower::service_fn(|req: String| async move { Ok::<_, std::io::Error>(req) });
    /// let balance = Balance::builder()
    ///     .strategy(strategy)
    ///     .classify(ErrorsAsFailures)
    ///     .build(discover::static_list([("a", echo.clone()), ("b", echo)]))
    ///     .unwrap();
    /// assert_eq!(balance.endpoints().len(), 2);
    ///
    /// // A hashing strategy can be bounded (consistent hashing with bounded loads).
    /// let bounded = AnyStrategy::from(StrategyKind::Maglev).bounded_load(1.25).unwrap();
    /// assert!("round-robin".parse::<AnyStrategy>().unwrap().bounded_load(1.25).is_err());
    /// # }
    /// ```
    ///
    /// # Cost
    ///
    /// A pick costs one `match` more than the strategy it holds (on the strategy and its
    /// table), and `call` one more to ask whether the strategy routes by key: 0 to 3 ns
    /// per pick (`cargo bench --bench pick -- any`, the static strategies in the same run),
    /// and 33 (least request) to 60 (round robin, whose pick is no longer inlined)
    /// instructions per request, 6 to 14 % (`scripts/hot-path-instructions.sh --forms`).
    ///
    /// A strategy of your own is not among the variants; to choose between it and the
    /// built-in ones at run time, write an enum like this one (one `match` per method), or
    /// box the balancer with [`Balance::boxed`](crate::Balance::boxed).
    enum AnyStrategy {
    /// [`RoundRobin`]: `round-robin`.
    RoundRobin(RoundRobin),
    /// [`Random`]: `random`.
    Random(Random),
    /// [`LeastRequest`]: `least-request`.
    LeastRequest(LeastRequest),
    /// [`PeakEwma`]: `peak-ewma`.
    PeakEwma(PeakEwma),
    /// [`RingHash`]: `ring-hash`.
    RingHash(RingHash),
    /// [`Maglev`]: `maglev`.
    Maglev(Maglev),
    /// [`Rendezvous`]: `rendezvous`.
    Rendezvous(Rendezvous),
    /// [`RingHash`] with bounded loads: `ring-hash` and
    /// [`bounded_load`](AnyStrategy::bounded_load).
    BoundedRingHash(BoundedLoad<RingHash>),
    /// [`Maglev`] with bounded loads: `maglev` and
    /// [`bounded_load`](AnyStrategy::bounded_load).
    BoundedMaglev(BoundedLoad<Maglev>),
    /// [`Rendezvous`] with bounded loads: `rendezvous` and
    /// [`bounded_load`](AnyStrategy::bounded_load).
    BoundedRendezvous(BoundedLoad<Rendezvous>),
    #[cfg(feature = "orca")]
    /// [`WeightedRoundRobin`](super::WeightedRoundRobin) (feature `orca`):
    /// `weighted-round-robin`.
    WeightedRoundRobin(super::WeightedRoundRobin),
    }
}

impl AnyStrategy {
    /// The kind of strategy inside (a bounded hashing strategy is of its hashing kind).
    pub fn kind(&self) -> StrategyKind {
        match self {
            AnyStrategy::RoundRobin(_) => StrategyKind::RoundRobin,
            AnyStrategy::Random(_) => StrategyKind::Random,
            AnyStrategy::LeastRequest(_) => StrategyKind::LeastRequest,
            AnyStrategy::PeakEwma(_) => StrategyKind::PeakEwma,
            AnyStrategy::RingHash(_) | AnyStrategy::BoundedRingHash(_) => StrategyKind::RingHash,
            AnyStrategy::Maglev(_) | AnyStrategy::BoundedMaglev(_) => StrategyKind::Maglev,
            AnyStrategy::Rendezvous(_) | AnyStrategy::BoundedRendezvous(_) => {
                StrategyKind::Rendezvous
            }
            #[cfg(feature = "orca")]
            AnyStrategy::WeightedRoundRobin(_) => StrategyKind::WeightedRoundRobin,
        }
    }

    /// The same hashing strategy with bounded loads: each endpoint carries at most
    /// `factor` times the average load (see [`BoundedLoad`]; the factor is checked when the
    /// balancer is built). Fails with [`BuildError::InvalidConfig`] for a strategy that does
    /// not hash (round robin, random, least request, peak-EWMA); a bounded strategy gets the
    /// new factor.
    pub fn bounded_load(self, factor: f64) -> Result<AnyStrategy, BuildError> {
        Ok(match self {
            AnyStrategy::RingHash(s) => BoundedLoad::new(s).factor(factor).into(),
            AnyStrategy::Maglev(s) => BoundedLoad::new(s).factor(factor).into(),
            AnyStrategy::Rendezvous(s) => BoundedLoad::new(s).factor(factor).into(),
            AnyStrategy::BoundedRingHash(s) => s.factor(factor).into(),
            AnyStrategy::BoundedMaglev(s) => s.factor(factor).into(),
            AnyStrategy::BoundedRendezvous(s) => s.factor(factor).into(),
            other => {
                return Err(BuildError::invalid(
                    "AnyStrategy::bounded_load",
                    other.kind().name(),
                    "a hashing strategy: ring-hash, maglev or rendezvous",
                ))
            }
        })
    }
}

/// The name of a built-in strategy, as configuration files and flags give it.
///
/// | name | strategy |
/// |---|---|
/// | `round-robin` | [`RoundRobin`] |
/// | `random` | [`Random`] |
/// | `least-request` | [`LeastRequest`] |
/// | `peak-ewma` | [`PeakEwma`] |
/// | `ring-hash` | [`RingHash`] |
/// | `maglev` | [`Maglev`] |
/// | `rendezvous` | [`Rendezvous`] |
/// | `weighted-round-robin` | `WeightedRoundRobin` (feature `orca`) |
///
/// It is `Copy` and comparable, for configuration structs; [`AnyStrategy::from`] makes the
/// strategy with its defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StrategyKind {
    /// `round-robin`
    RoundRobin,
    /// `random`
    Random,
    /// `least-request`
    LeastRequest,
    /// `peak-ewma`
    PeakEwma,
    /// `ring-hash`
    RingHash,
    /// `maglev`
    Maglev,
    /// `rendezvous`
    Rendezvous,
    /// `weighted-round-robin` (feature `orca`)
    #[cfg(feature = "orca")]
    WeightedRoundRobin,
}

impl StrategyKind {
    /// Every kind, in the order of the table above (with the features enabled).
    pub const ALL: &'static [StrategyKind] = &[
        StrategyKind::RoundRobin,
        StrategyKind::Random,
        StrategyKind::LeastRequest,
        StrategyKind::PeakEwma,
        StrategyKind::RingHash,
        StrategyKind::Maglev,
        StrategyKind::Rendezvous,
        #[cfg(feature = "orca")]
        StrategyKind::WeightedRoundRobin,
    ];

    /// The name: `round-robin`, `least-request`, ...
    pub fn name(self) -> &'static str {
        match self {
            StrategyKind::RoundRobin => "round-robin",
            StrategyKind::Random => "random",
            StrategyKind::LeastRequest => "least-request",
            StrategyKind::PeakEwma => "peak-ewma",
            StrategyKind::RingHash => "ring-hash",
            StrategyKind::Maglev => "maglev",
            StrategyKind::Rendezvous => "rendezvous",
            #[cfg(feature = "orca")]
            StrategyKind::WeightedRoundRobin => "weighted-round-robin",
        }
    }

    /// Whether the strategy routes by a request key (consistent hashing): see
    /// [`Strategy::uses_request_key`].
    pub fn uses_request_key(self) -> bool {
        matches!(
            self,
            StrategyKind::RingHash | StrategyKind::Maglev | StrategyKind::Rendezvous
        )
    }
}

impl From<StrategyKind> for AnyStrategy {
    /// The strategy of this kind, with its defaults.
    fn from(kind: StrategyKind) -> Self {
        match kind {
            StrategyKind::RoundRobin => RoundRobin::new().into(),
            StrategyKind::Random => Random::new().into(),
            StrategyKind::LeastRequest => LeastRequest::new().into(),
            StrategyKind::PeakEwma => PeakEwma::new().into(),
            StrategyKind::RingHash => RingHash::new().into(),
            StrategyKind::Maglev => Maglev::new().into(),
            StrategyKind::Rendezvous => Rendezvous::new().into(),
            #[cfg(feature = "orca")]
            StrategyKind::WeightedRoundRobin => super::WeightedRoundRobin::new().into(),
        }
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for StrategyKind {
    type Err = UnknownStrategy;

    fn from_str(name: &str) -> Result<Self, UnknownStrategy> {
        StrategyKind::ALL
            .iter()
            .copied()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| UnknownStrategy {
                name: name.to_owned(),
            })
    }
}

impl FromStr for AnyStrategy {
    type Err = UnknownStrategy;

    /// The strategy of this name (see [`StrategyKind`]), with its defaults.
    fn from_str(name: &str) -> Result<Self, UnknownStrategy> {
        name.parse::<StrategyKind>().map(AnyStrategy::from)
    }
}

/// A name that is not a built-in strategy's; see [`StrategyKind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownStrategy {
    name: String,
}

impl UnknownStrategy {
    /// The name given.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for UnknownStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown strategy `{}` (expected ", self.name)?;
        for (i, kind) in StrategyKind::ALL.iter().enumerate() {
            let sep = match i {
                0 => "",
                i if i + 1 == StrategyKind::ALL.len() => " or ",
                _ => ", ",
            };
            write!(f, "{sep}{kind}")?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for UnknownStrategy {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::EndpointList;

    #[test]
    fn every_name_parses_back_to_its_kind() {
        for &kind in StrategyKind::ALL {
            assert_eq!(kind.name().parse::<StrategyKind>(), Ok(kind));
            let strategy: AnyStrategy = kind.name().parse().unwrap();
            assert_eq!(strategy.kind(), kind);
            assert_eq!(strategy.uses_request_key(), kind.uses_request_key());
        }
        let unknown = "least-requests".parse::<AnyStrategy>().unwrap_err();
        #[cfg(not(feature = "orca"))]
        let expected = "round-robin, random, least-request, peak-ewma, ring-hash, maglev or \
                        rendezvous";
        #[cfg(feature = "orca")]
        let expected = "round-robin, random, least-request, peak-ewma, ring-hash, maglev, \
                        rendezvous or weighted-round-robin";
        assert_eq!(
            unknown.to_string(),
            format!("unknown strategy `least-requests` (expected {expected})")
        );
    }

    #[test]
    fn picks_are_the_strategy_inside() {
        let list = EndpointList::from_weights([5, 1, 1]);
        let rr = RoundRobin::new();
        let any = AnyStrategy::from(RoundRobin::new());
        let (t1, t2) = (rr.build(&list.endpoints()), any.build(&list.endpoints()));
        for _ in 0..14 {
            let cx = Context::default();
            assert_eq!(
                rr.pick(&t1, &list.endpoints(), &cx),
                any.pick(&t2, &list.endpoints(), &cx)
            );
        }
    }

    #[test]
    fn settings_are_forwarded() {
        let peak = AnyStrategy::from(PeakEwma::new().decay(Duration::ZERO));
        assert!(peak.latency().is_some());
        assert!(peak.validate().is_err());
        let seeded = AnyStrategy::from(LeastRequest::new().with_seed(7));
        assert_eq!(seeded.seed(), Some(7));
        assert!(seeded.failure_penalty().is_some());
        let bounded = AnyStrategy::from(StrategyKind::RingHash)
            .bounded_load(0.5)
            .unwrap();
        assert!(bounded.uses_request_key());
        assert!(bounded.validate().is_err(), "a factor below 1");
        assert!(AnyStrategy::from(StrategyKind::Random)
            .bounded_load(2.0)
            .is_err());
    }

    #[cfg(feature = "orca")]
    #[test]
    fn weighted_round_robin_keeps_its_timer_and_reports() {
        let wrr: AnyStrategy = "weighted-round-robin".parse().unwrap();
        assert!(wrr.load_reports());
        assert_eq!(wrr.rebuild_every(), Some(Duration::from_secs(1)));
        assert!(!AnyStrategy::from(StrategyKind::RoundRobin).load_reports());
        assert_eq!(
            AnyStrategy::from(StrategyKind::RoundRobin).rebuild_every(),
            None
        );
    }
}
