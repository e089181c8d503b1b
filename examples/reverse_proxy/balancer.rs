//! The tower-lb balancer over the upstreams: the strategy chosen at run time, the request
//! key for hashing strategies, health checks and outlier detection, the per-upstream
//! timeout inside the balancer, and the type-erased services the hyper path and the fast
//! path call.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use http::{Request, Response};
use tower::util::BoxCloneSyncService;
use tower_lb::discover;
use tower_lb::error::{BoxError, BuildError};
use tower_lb::health::{ActiveChecks, Health, OutlierDetection, TcpProbe};
use tower_lb::key::{NoKey, RequestKey};
use tower_lb::strategy::StrategyKind;
use tower_lb::strategy::{AnyStrategy, Strategy};
use tower_lb::Monitor;

use super::config::{Config, Protocol};
use super::fast;
use super::pool::PooledBody;
use super::upload::Upload;
use super::upstream::Upstream;

/// A request stops counting as in flight when its response body has been streamed.
type Completion = tower_lb::http::OnBodyEnd;
pub type UpstreamBody = tower_lb::http::TrackedBody<PooledBody>;

/// A balancer with its strategy type erased.
pub(super) type BalancedService =
    BoxCloneSyncService<Request<Upload>, Response<UpstreamBody>, BoxError>;

type HealthLog = Arc<Mutex<Vec<(Instant, SocketAddr, Health)>>>;

/// The balancer for the hyper path and, when the fast path is on, the same for it.
type Balancers = (
    BalancedService,
    Option<fast::FastService>,
    Monitor<SocketAddr>,
    HealthLog,
);

pub(super) fn build_balancer(
    config: &Config,
    endpoints: Vec<(SocketAddr, Upstream, u32)>,
) -> Result<Balancers, BuildError> {
    let key = config.upstream.hash_key.clone();
    let fast = config.upstream.protocol == Protocol::Http1 && config.fast_path;
    // A strategy that routes by no key serves both paths; a hashing one only hyper's.
    macro_rules! plain {
        ($strategy:expr) => {{
            let (balance, monitor, log) = build(config, $strategy, NoKey, endpoints)?;
            let fast = fast.then(|| BoxCloneSyncService::new(balance.clone()));
            Ok((BoxCloneSyncService::new(balance), fast, monitor, log))
        }};
    }
    macro_rules! keyed {
        ($strategy:expr) => {{
            let (balance, monitor, log) = build(config, $strategy, key, endpoints)?;
            Ok((BoxCloneSyncService::new(balance), None, monitor, log))
        }};
    }
    let strategy = AnyStrategy::from(config.upstream.strategy);
    let strategy = match config.upstream.bounded_load {
        Some(c) => strategy.bounded_load(c)?,
        None => strategy,
    };
    if strategy.uses_request_key() {
        keyed!(strategy)
    } else {
        plain!(strategy)
    }
}

/// A balancer, with its monitor and its health log.
type Built<P, H> = (ProxyBalance<P, H>, Monitor<SocketAddr>, HealthLog);

/// The tower-lb balancer the proxy builds.
type ProxyBalance<P, H> = tower_lb::Balance<
    SocketAddr,
    Upstream,
    P,
    tower_lb::classify::DefaultClassifier,
    Completion,
    H,
>;

/// Builds a tower-lb balancer with `strategy` (routing by `key`, for the hashing strategies)
/// with active health checks and outlier detection, and erases its type.
fn build<P: Strategy, H: RequestKey<Request<Upload>>>(
    config: &Config,
    strategy: P,
    key: H,
    endpoints: Vec<(SocketAddr, Upstream, u32)>,
) -> Result<Built<P, H>, BuildError> {
    let mut builder = tower_lb::Builder::new()
        .name(config.upstream.name.as_str())
        .strategy(strategy)
        .request_key(key)
        .track_completion(Completion::default())
        .fail_fast(config.timeouts.fail_fast);
    let health = &config.health;
    builder = builder
        .panic_threshold(health.panic_threshold)
        .fail_closed(health.fail_closed);
    if health.enabled {
        builder = builder.active_checks(
            TcpProbe::new(),
            ActiveChecks::new()
                .interval(health.interval)
                .timeout(health.timeout)
                .rise(health.rise)
                .fall(health.fall),
        );
    }
    let outlier = &config.outlier;
    if outlier.enabled {
        // Probation's tenth of the weight starves an upstream under the load-aware
        // strategies at light load: none for them unless configured.
        let probation = outlier
            .probation_successes
            .unwrap_or(match config.upstream.strategy {
                StrategyKind::LeastRequest | StrategyKind::PeakEwma => 0,
                _ => 5,
            });
        builder = builder.outlier_detection(
            OutlierDetection::new()
                .consecutive_failures(Some(outlier.consecutive_failures))
                .base_ejection(outlier.base_ejection)
                .max_ejection(outlier.max_ejection)
                .max_ejection_percent(outlier.max_ejection_percent)
                .probation_successes((probation > 0).then_some(probation)),
        );
    }
    let balance = builder.build(discover::static_list(endpoints))?;
    let log: HealthLog = Default::default();
    let mut events = balance.health_events();
    let print = config.log_health;
    let record = log.clone();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            {
                // The status page shows the last 20; keep a few hundred, never more.
                let mut log = record.lock().unwrap();
                if log.len() >= 512 {
                    log.drain(..256);
                }
                log.push((Instant::now(), event.key, event.to));
            }
            // The first probe answer of a healthy upstream is routine; report the rest.
            if print && (event.to != event.from || event.to != Health::Healthy) {
                println!(
                    "health: {} {} -> {} ({})",
                    event.key, event.from, event.to, event.reason
                );
            }
        }
    });
    let monitor = balance.monitor();
    Ok((balance, monitor, log))
}
