use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::oneshot;

use super::driver::{boxed, Driver};
use super::make::MakeEndpoint;
use super::service::Balance;
use super::shared::Shared;
use crate::classify::DefaultClassifier;
use crate::completion::OnResponse;
use crate::discover::{Change, Discover};
use crate::endpoint::SyncEndpoint;
use crate::error::BuildError;
use crate::health::{
    ActiveChecks, HealthSettings, OutlierDetection, OutlierSignal, Probe, SlowStart,
};
use crate::key::NoKey;
use crate::strategy::rng::Rng;
use crate::strategy::{LatencyTracking, LeastRequest, Strategy};

/// The sequences derived from a balancer's seed: where a scan for a ready endpoint starts,
/// and the jitter of health probes.
const SCAN_STREAM: u64 = 1;
const PROBE_STREAM: u64 = 2;

/// Configures and builds a [`Balance`].
///
/// ```
/// use std::time::Duration;
/// use tower_lb::{discover, strategy::RoundRobin, Balance};
/// use tower_lb::classify::ErrorsAsFailures;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let echo = tower::service_fn(|req: String| async move { Ok::<_, std::io::Error>(req) });
/// let balance = Balance::builder()
///     .strategy(RoundRobin::new())
///     .classify(ErrorsAsFailures)
///     .fail_fast(Duration::from_secs(1))
///     .build(discover::static_list([("a", echo.clone()), ("b", echo)]))
///     .unwrap();
/// assert_eq!(balance.endpoints().len(), 2);
/// # }
/// ```
///
/// # Endpoint services
///
/// `build` takes the endpoint services from discovery, `build_with` makes them from keys.
/// Either way an endpoint service is a `tower::Service` that is `Clone + Send + Sync +
/// 'static` ([`SyncEndpoint`]): hyper clients, tonic channels, `service_fn`, and for HTTP
/// [`HttpEndpoint`](crate::http::HttpEndpoint) (feature `http`). A service that is `Send`
/// but not `Sync`, such as `tower::util::BoxCloneService`, goes in a
/// [`SyncService`](crate::endpoint::SyncService). Its responses must fit the
/// [classifier](Builder::classify): the default one reads `http::Response`, and any other
/// response type needs [`ErrorsAsFailures`](crate::classify::ErrorsAsFailures) or a
/// [`classify_fn`](crate::classify::classify_fn).
#[derive(Debug, Clone)]
pub struct Builder<P = LeastRequest, C = DefaultClassifier, T = OnResponse, H = NoKey> {
    strategy: P,
    classify: C,
    track: T,
    key: H,
    settings: Settings,
}

/// The name of a balancer built without [`Builder::name`].
const DEFAULT_NAME: &str = "default";

/// The settings whose type does not change with the builder's type parameters.
#[derive(Debug, Clone)]
struct Settings {
    fail_fast: Duration,
    allow_empty_reset: bool,
    latency: Option<LatencyTracking>,
    health: HealthSettings,
    seed: Option<u64>,
    load_reports: bool,
    /// The balancer's name in its metrics and its tracing span.
    name: Option<Arc<str>>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            strategy: LeastRequest::default(),
            classify: DefaultClassifier,
            track: OnResponse,
            key: NoKey,
            settings: Settings {
                fail_fast: Duration::from_secs(3),
                allow_empty_reset: false,
                latency: None,
                health: HealthSettings {
                    outlier: Some(OutlierDetection::default()),
                    ..HealthSettings::default()
                },
                seed: None,
                load_reports: false,
                name: None,
            },
        }
    }
}

impl Balance<(), ()> {
    /// A [`Builder`] with the defaults: least request (two choices), the default
    /// classifier, outlier detection on, in-flight until the response, fail fast after 3 s.
    pub fn builder() -> Builder {
        Builder::new()
    }
}

impl Builder {
    /// The defaults: least request (two choices), [`DefaultClassifier`], [`OnResponse`],
    /// [outlier detection](crate::health::outlier) on, fail fast after 3 s (linkerd's
    /// default), empty resets ignored.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<P, C, T, H> Builder<P, C, T, H> {
    /// Sets the [strategy](crate::strategy).
    pub fn strategy<P2: Strategy>(self, strategy: P2) -> Builder<P2, C, T, H> {
        Builder {
            strategy,
            classify: self.classify,
            track: self.track,
            key: self.key,
            settings: self.settings,
        }
    }

    /// Sets the [classifier](crate::classify) that decides which results are failures.
    pub fn classify<C2>(self, classify: C2) -> Builder<P, C2, T, H> {
        Builder {
            strategy: self.strategy,
            classify,
            track: self.track,
            key: self.key,
            settings: self.settings,
        }
    }

    /// Sets when a request stops counting as in flight (see [`completion`](crate::completion)).
    pub fn track_completion<T2>(self, track: T2) -> Builder<P, C, T2, H> {
        Builder {
            strategy: self.strategy,
            classify: self.classify,
            track,
            key: self.key,
            settings: self.settings,
        }
    }

    /// Sets the [key](crate::key) that hashing strategies route each request by (for HTTP,
    /// see `tower_lb::http::key`). Without one ([`NoKey`]), a hashing strategy routes every
    /// request by its missing-key fallback. Strategies that do not
    /// [use a request key](Strategy::uses_request_key) ignore it.
    pub fn request_key<H2>(self, key: H2) -> Builder<P, C, T, H2> {
        Builder {
            strategy: self.strategy,
            classify: self.classify,
            track: self.track,
            key,
            settings: self.settings,
        }
    }

    /// How long `poll_ready` waits for an eligible endpoint before it fails with
    /// [`Unavailable`](crate::error::Unavailable). Zero fails at once. Default 3 s.
    ///
    /// The wait belongs to the handle (each clone has its own). It starts at the first
    /// `poll_ready` that finds no endpoint ready, and ends at the first `poll_ready` that
    /// finds one, or at the first `poll_ready` at or after its deadline that finds none:
    /// that one fails, with [`waited`](crate::error::Unavailable::waited) the time since
    /// the wait began. A handle polled on time (the wait's timer wakes it at the deadline)
    /// fails at the deadline; one polled late fails at that late poll, never later: a wait
    /// never starts over while nothing is ready. The next `poll_ready` after a failure
    /// starts a new wait.
    ///
    /// The wait continues across the `ready()` futures of one handle. A caller whose own,
    /// shorter timeout dropped a `ready()` and who polls the same handle again later
    /// continues the same wait: before the deadline it waits for the rest of it; after the
    /// deadline, with still no endpoint ready, it fails at once (the balancer has then had
    /// no endpoint for the whole timeout), and with one ready it is served. To give each
    /// attempt a full wait of its own, make each attempt on a fresh clone of the handle
    /// (clones are cheap).
    pub fn fail_fast(mut self, timeout: Duration) -> Self {
        self.settings.fail_fast = timeout;
        self
    }

    /// Names the balancer, for operators: the `balancer` label of its
    /// [metrics](crate#features) (feature `metrics`) and the `name` field of its tracing
    /// span, which every event of its background task (health changes, discovery errors,
    /// panic mode) carries. Without a name, both say `default`. Give each balancer of a
    /// process its own name (nginx: the name of an `upstream` block).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.settings.name = Some(name.into());
        self
    }

    /// Whether an empty [`Reset`](crate::discover::Change::Reset) empties the set (`true`)
    /// or is ignored (`false`, the default). See [`discover`](crate::discover).
    pub fn allow_empty_reset(mut self, allow: bool) -> Self {
        self.settings.allow_empty_reset = allow;
        self
    }

    /// Seeds the balancer's own random choices: where the search for a ready endpoint
    /// starts when the strategy's choices are busy, and the jitter of health probes. With a
    /// seeded strategy too (such as [`LeastRequest::with_seed`]), a run whose requests
    /// come in the same order on one thread makes the same choices every time, busy
    /// endpoints and probes included.
    ///
    /// Without it, the balancer takes the strategy's [seed](Strategy::seed) if it has one
    /// (so a seeded strategy alone makes the balancer reproducible), or else draws from
    /// per-thread generators seeded by the operating system.
    pub fn seed(mut self, seed: u64) -> Self {
        self.settings.seed = Some(seed);
        self
    }

    /// Tracks each endpoint's latency estimate even when the strategy does not need it, so
    /// that [`Balance::endpoints`] reports it. This costs two clock reads per request. A
    /// strategy that needs latency (peak-EWMA) uses its own settings and ignores this.
    pub fn track_latency(mut self, tracking: LatencyTracking) -> Self {
        self.settings.latency = Some(tracking);
        self
    }

    /// Reads the load report of every response (feature `orca`) even when the strategy does
    /// not use reports, so that [`Balance::endpoints`] shows each endpoint's latest one. A
    /// strategy that reads reports ([`WeightedRoundRobin`](crate::strategy::WeightedRoundRobin))
    /// turns this on itself. See [`orca`](crate::orca) for where reports are read.
    #[cfg(feature = "orca")]
    pub fn load_reports(mut self, read: bool) -> Self {
        self.settings.load_reports = read;
        self
    }

    /// Probes every endpoint with `probe` on the schedule in `checks`; see
    /// [`health::active`](crate::health::active). Off by default.
    pub fn active_checks(mut self, probe: impl Probe, checks: ActiveChecks) -> Self {
        self.settings.health.active = Some((checks, Arc::new(probe)));
        self
    }

    /// Ejects endpoints whose responses fail; see [`health::outlier`](crate::health::outlier).
    /// On by default, with [`OutlierDetection::default`]; `None` turns it off.
    ///
    /// ```
    /// use tower_lb::{health::OutlierDetection, Balance};
    ///
    /// // Eject after 3 failures in a row instead of 5.
    /// let builder = Balance::builder()
    ///     .outlier_detection(OutlierDetection::new().consecutive_failures(Some(3)));
    /// // No passive health at all.
    /// let builder = Balance::builder().outlier_detection(None);
    /// # drop(builder);
    /// ```
    pub fn outlier_detection(mut self, settings: impl Into<Option<OutlierDetection>>) -> Self {
        self.settings.health.outlier = settings.into();
        self
    }

    /// Ramps the weight of new and recovered endpoints; see
    /// [`health::slow_start`](crate::health::slow_start). Off by default.
    pub fn slow_start(mut self, settings: SlowStart) -> Self {
        self.settings.health.slow_start = Some(settings);
        self
    }

    /// Below this share of healthy endpoints (0.0 to 1.0; default 0.5), the balancer is in
    /// [panic mode](crate::health#panic-mode). 0 turns panic mode off. Outside `0..=1` is
    /// rejected when the balancer is built.
    pub fn panic_threshold(mut self, threshold: f64) -> Self {
        self.settings.health.panic.threshold = threshold;
        self
    }

    /// In panic mode, keep to the healthy endpoints (and fail when there are none) instead
    /// of also sending traffic to those out on a probe verdict alone, or to every endpoint
    /// when none is healthy (see [panic mode](crate::health#panic-mode)). Default `false`
    /// (fail open).
    pub fn fail_closed(mut self, fail_closed: bool) -> Self {
        self.settings.health.panic.fail_closed = fail_closed;
        self
    }

    pub(super) fn validate(&self) -> Result<(), BuildError>
    where
        P: Strategy,
    {
        self.strategy.validate()?;
        self.settings.health.validate()?;
        if let Some(latency) = self.strategy.latency().or(self.settings.latency) {
            BuildError::reject_if(
                latency.decay.is_zero(),
                "LatencyTracking::decay",
                latency.decay,
                "greater than zero",
            )?;
        }
        Ok(())
    }

    /// Builds a balancer over the endpoints `discovery` yields.
    ///
    /// Inside a tokio runtime, the changes the source has ready at once (a static list, say)
    /// are applied before this returns, and the background driver is spawned on that
    /// runtime. (A source with more than 256 changes ready is applied in batches, and its
    /// set is published when the driver has applied them all, right after.)
    /// Outside a runtime the source is not polled until the driver is spawned, at the first
    /// `poll_ready`, and `poll_ready` fails with
    /// [`NoRuntime`](crate::error::NoRuntime) if there is still none. The runtime needs its time driver
    /// (`enable_time` or `enable_all`) for the fail-fast timeout.
    ///
    /// The balancer belongs to the runtime its driver runs on. When that runtime shuts down
    /// (at the end of a `#[tokio::test]`, say) the driver stops with it, and from then on
    /// `poll_ready` fails with [`DriverStopped`](crate::error::DriverStopped) on every
    /// handle, whichever runtime polls it: build a balancer in each runtime.
    ///
    /// Fails with [`BuildError::InvalidConfig`] when a setting is out of range: the
    /// strategy's, the health settings, a probe's, or the discovery source's
    /// ([`Discover::validate`]). Nothing starts then.
    pub fn build<K, S, D>(self, discovery: D) -> Result<Balance<K, S, P, C, T, H>, BuildError>
    where
        D: Discover<K, S> + Send + 'static,
        K: Clone + Eq + Hash + Debug + Send + Sync + 'static,
        S: SyncEndpoint,
        P: Strategy,
    {
        self.validate()?;
        discovery.validate()?;
        Ok(self.build_unchecked(discovery))
    }

    fn build_unchecked<K, S, D>(self, discovery: D) -> Balance<K, S, P, C, T, H>
    where
        D: Discover<K, S> + Send + 'static,
        K: Clone + Eq + Hash + Debug + Send + Sync + 'static,
        S: SyncEndpoint,
        P: Strategy,
    {
        let (stop_tx, stop_rx) = oneshot::channel();
        let latency = self.strategy.latency().or(self.settings.latency);
        // A hashing strategy places keys by weight: slow start and probation must not move them.
        let mut health = self.settings.health;
        health.fixed_weights = self.strategy.uses_request_key();
        let signal = Arc::new(OutlierSignal::new(
            &health.outlier.clone().unwrap_or_default(),
        ));
        let failure_penalty = self.strategy.failure_penalty();
        let reports =
            cfg!(feature = "orca") && (self.settings.load_reports || self.strategy.load_reports());
        // The balancer's own random choices, each from its own sequence of one seed.
        let seed = self.settings.seed.or_else(|| self.strategy.seed());
        let rng = |stream| seed.map_or_else(Rng::default, |seed| Rng::derived(seed, stream));
        let mut shared = Shared::new(
            self.strategy,
            latency,
            failure_penalty,
            self.settings.fail_fast,
            signal,
            stop_tx,
            rng(SCAN_STREAM),
        );
        shared.reports = reports;
        let name = self.settings.name.unwrap_or_else(|| DEFAULT_NAME.into());
        #[cfg(feature = "metrics")]
        {
            shared.metrics = crate::metrics::BalancerMetrics::register(name.clone());
        }
        let shared = Arc::new(shared);
        let driver = Driver::new(
            &shared,
            boxed(discovery),
            stop_rx,
            self.settings.allow_empty_reset,
            health,
            rng(PROBE_STREAM),
        );
        // A span per balancer: every event of its driver names it. At WARN, so that the
        // name comes with the warnings (discovery errors, panic mode) when only those are
        // logged.
        let span = tracing::warn_span!("balancer", name = %name);
        shared.set_driver(Box::pin(tracing::Instrument::instrument(driver, span)));
        // Inside a runtime this applies what the source has ready and spawns the driver, so a
        // static list is in place before the first request. Outside one it fails, and the
        // first poll_ready inside a runtime tries again.
        let _ = shared.ensure_driver();
        Balance::from_shared(shared, self.classify, self.track, self.key)
    }

    /// Builds a balancer whose discovery yields keys only; `make` turns each new key into
    /// its service (an address into a client, say). A key that already has a service keeps
    /// it when it is inserted again (a reweight) or listed in a reset, so its connections
    /// stay; a removed key's service is dropped.
    #[allow(clippy::type_complexity)]
    pub fn build_with<K, D, M>(
        self,
        discovery: D,
        make: M,
    ) -> Result<Balance<K, M::Service, P, C, T, H>, BuildError>
    where
        D: Discover<K, ()> + Send + 'static,
        M: MakeEndpoint<K> + Send + 'static,
        M::Service: Clone + SyncEndpoint,
        K: Clone + Eq + Hash + Debug + Send + Sync + 'static,
        P: Strategy,
    {
        self.validate()?;
        discovery.validate()?;
        Ok(self.build_with_unchecked(discovery, make))
    }

    pub(crate) fn build_with_unchecked<K, D, M>(
        self,
        discovery: D,
        mut make: M,
    ) -> Balance<K, M::Service, P, C, T, H>
    where
        D: Discover<K, ()> + Send + 'static,
        M: MakeEndpoint<K> + Send + 'static,
        M::Service: Clone + SyncEndpoint,
        K: Clone + Eq + Hash + Debug + Send + Sync + 'static,
        P: Strategy,
    {
        // The services made so far, by key: an insert or reset of a key that already has one
        // reuses it (a reweight must not drop the endpoint's connections). It follows what
        // the driver applies: an empty reset the driver ignores leaves it as it is.
        let mut made: HashMap<K, M::Service> = HashMap::new();
        let allow_empty_reset = self.settings.allow_empty_reset;
        let changes = boxed(discovery).map(move |change| {
            change.map(|change| match change {
                Change::Remove(key) => {
                    made.remove(&key);
                    Change::Remove(key)
                }
                Change::Reset(list) if list.is_empty() && !allow_empty_reset => {
                    Change::Reset(Vec::new())
                }
                Change::Reset(list) => {
                    let mut previous = std::mem::take(&mut made);
                    Change::Reset(
                        list.into_iter()
                            .map(|e| {
                                e.map_service(|key, ()| {
                                    let service = previous
                                        .remove(key)
                                        .or_else(|| made.remove(key))
                                        .unwrap_or_else(|| make.make_endpoint(key));
                                    made.insert(key.clone(), service.clone());
                                    service
                                })
                            })
                            .collect(),
                    )
                }
                Change::Insert(e) => Change::Insert(e.map_service(|key, ()| {
                    let service = made
                        .entry(key.clone())
                        .or_insert_with(|| make.make_endpoint(key));
                    service.clone()
                })),
            })
        });
        self.build_unchecked(changes)
    }
}
