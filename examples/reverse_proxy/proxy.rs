//! The reverse proxy itself, shared by `examples/reverse_proxy.rs` and the fault and
//! bad-input tests (`tests/proxy_fault.rs`, `tests/proxy_input.rs`, which include this file
//! with `#[path]`).
//!
//! - [`Config`]: every setting, deserializable from TOML (`--config FILE`).
//! - [`start`]: binds the listener (one `SO_REUSEPORT` socket per worker thread, like nginx's
//!   worker processes), builds the tower-lb balancer with health checks and outlier
//!   detection, and serves until [`Proxy::shutdown`], which drains in-flight requests.
//! - [`Upstream`]: the tower service for one upstream: pooled HTTP/1.1 connections (the
//!   keep-alive pool of each worker thread, `pool.rs`) or one multiplexed connection per
//!   worker thread (h2c); the request timeout applies here, per upstream, so that the
//!   balancer sees a timeout as the upstream's failure.
//! - [`spawn_demo_upstream`]: a small fast upstream (HTTP/1.1 and h2c) for demos, benchmarks
//!   and tests.
//! - `fast.rs`: plain requests proxied without hyper; `framing.rs`: the smuggling scan in
//!   front of hyper; `rules.rs`: what is refused (400, 405) as nginx refuses it;
//!   `upload.rs`: request bodies on their way upstream, whose errors are the client's;
//!   `stall.rs`: the timeouts between two reads or writes of a client.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use http::header::{ALLOW, CONNECTION, CONTENT_TYPE, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::body::{Body, Incoming};
use hyper::client::conn::{http1 as client1, http2 as client2};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tower::retry::budget::{Budget, TpsBudget};
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};
use tower_lb::discover;
use tower_lb::error::{BoxError, BuildError, Unavailable};
use tower_lb::health::{ActiveChecks, Health, OutlierDetection, TcpProbe};
use tower_lb::http::key::{HttpKey, PreviousEndpoints};
use tower_lb::http::ClientBodyError;
use tower_lb::key::{NoKey, RequestKey};
use tower_lb::strategy::{
    BoundedLoad, LeastRequest, Maglev, PeakEwma, Random, Rendezvous, RingHash, RoundRobin, Strategy,
};
use tower_lb::{EndpointStats, Monitor};

#[path = "fast.rs"]
mod fast;
#[path = "framing.rs"]
mod framing;
#[path = "pool.rs"]
mod pool;
#[path = "rules.rs"]
mod rules;
#[path = "stall.rs"]
mod stall;
#[path = "upload.rs"]
mod upload;
use framing::{Conflict, Scanned};
use pool::{Conn, PooledBody, Pools, ReturnToPool};
use upload::{BodyTimeout, Upload};

// ----------------------------------------------------------------------------------------
// Configuration
// ----------------------------------------------------------------------------------------

/// Every setting of the proxy. The TOML file (`--config FILE`) has the same shape; see
/// `examples/reverse_proxy.toml` for each key next to the nginx directive it replaces.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the proxy listens (nginx: `listen`).
    pub listen: SocketAddr,
    /// Worker threads, each with its own listening socket and upstream connections
    /// (nginx: `worker_processes`). 0: one per CPU.
    pub workers: usize,
    /// Print every change of an upstream's health.
    pub log_health: bool,
    /// Serve plain requests (HTTP/1.1, no body, an idempotent method) without hyper; see
    /// `fast.rs`. On by default; used only with HTTP/1.1 upstreams and strategies that
    /// route by no key.
    pub fast_path: bool,
    pub upstream: UpstreamConfig,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub retry: RetryConfig,
    pub health: HealthConfig,
    pub outlier: OutlierConfig,
    pub admin: AdminConfig,
}

/// The admin listener: `/metrics`, `/status` and `/status.json` (`admin.rs`; Envoy's admin
/// interface, HAProxy's `stats` page, nginx's `stub_status`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve it (not during `--self-test` unless `--admin` is given).
    pub enabled: bool,
    /// Where: never the proxy's own address.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: "127.0.0.1:9901".parse().unwrap(),
        }
    }
}

/// The nginx `upstream` block.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// The upstream block's name (nginx: `upstream NAME`): the balancer's name in its
    /// metrics and logs.
    pub name: String,
    /// `server ADDR weight=N;` lines.
    pub servers: Vec<Server>,
    /// The balancing strategy.
    pub strategy: StrategyKind,
    /// What the hashing strategies hash (nginx: `hash $key consistent;`).
    #[serde(deserialize_with = "de_from_str")]
    pub hash_key: HttpKey,
    /// Bounded load factor for ring-hash and maglev (none: unbounded).
    pub bounded_load: Option<f64>,
    /// `http1` or `h2c` (HTTP/2 over cleartext, prior knowledge).
    pub protocol: Protocol,
    /// Idle keep-alive connections kept per worker, over all upstreams and both paths, the
    /// least recently used closed first (nginx: `keepalive`, per worker process).
    pub keepalive: usize,
    /// The Host header sent upstream: `pass` (the client's, nginx `$host`) or `upstream`
    /// (the upstream's address, nginx's default `$proxy_host`).
    pub host: HostMode,
}

/// One upstream server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub address: SocketAddr,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP connect to an upstream (nginx: `proxy_connect_timeout`); on expiry: 504.
    #[serde(deserialize_with = "de_duration")]
    pub connect: Duration,
    /// From sending the request to the upstream's response head (nginx:
    /// `proxy_read_timeout`, for the first byte); on expiry: 504, and a failure of that
    /// upstream for outlier detection (the timeout is inside the balancer, per upstream).
    #[serde(deserialize_with = "de_duration")]
    pub request: Duration,
    /// How long a request waits for an upstream when none is available; then 503.
    #[serde(deserialize_with = "de_duration")]
    pub fail_fast: Duration,
    /// Idle upstream connections are closed after this.
    #[serde(deserialize_with = "de_duration")]
    pub keepalive: Duration,
    /// On shutdown, how long in-flight requests get to finish.
    #[serde(deserialize_with = "de_duration")]
    pub drain: Duration,
}

/// Limits on what clients send.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// The request head must arrive within this (nginx: `client_header_timeout`); slow
    /// clients are disconnected.
    #[serde(deserialize_with = "de_duration")]
    pub header_read_timeout: Duration,
    /// Largest request head, in bytes (at least 8192; nginx: `large_client_header_buffers`);
    /// larger heads get 431.
    pub max_header_bytes: usize,
    /// Longest wait for the next part of a request body (nginx: `client_body_timeout`,
    /// between two reads, not for the whole body): then 408, or, once the request was
    /// answered, the connection closes.
    #[serde(deserialize_with = "de_duration")]
    pub body_read_timeout: Duration,
    /// Longest wait for the client to take the next part of an answer (nginx:
    /// `send_timeout`, between two writes): then the connection closes.
    #[serde(deserialize_with = "de_duration")]
    pub send_timeout: Duration,
}

/// Retries of idempotent requests that failed before anything was sent (nginx:
/// `proxy_next_upstream error` with `proxy_next_upstream_tries`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Tries in all, the first included (1: no retries).
    pub attempts: u32,
    /// Retries allowed as a share of requests, in percent, over a 10 s window.
    pub budget_percent: f32,
    /// Retries always allowed per second on top of that.
    pub min_per_second: u32,
}

/// Active health checks: a TCP connect to each upstream (HAProxy `check inter rise fall`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub enabled: bool,
    #[serde(deserialize_with = "de_duration")]
    pub interval: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Below this share of healthy upstreams the balancer is in panic mode (0 turns it off).
    pub panic_threshold: f64,
    /// In panic mode, send only to healthy upstreams, and answer 503 when there are none
    /// (default: fail open, over all upstreams, as nginx does when every server failed).
    pub fail_closed: bool,
}

/// Passive health: outlier detection (nginx: `max_fails`, `fail_timeout`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierConfig {
    pub enabled: bool,
    /// Eject an upstream after this many failed requests in a row.
    pub consecutive_failures: u32,
    /// First ejection time; it grows with each ejection.
    #[serde(deserialize_with = "de_duration")]
    pub base_ejection: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub max_ejection: Duration,
    /// At most this share of the upstreams ejected at once for failed requests (rounded
    /// up); unreachable upstreams (connection refused) are ejected beyond it.
    pub max_ejection_percent: u32,
    /// After an ejection, an upstream gets a tenth of its weight until it answers this many
    /// requests in a row, and its first failure ejects it again (0: back at full weight at
    /// once). Default: 5, but 0 for least-request and peak-ewma: under them a tenth of the
    /// weight gets an upstream almost no request at light load (the others score higher
    /// while they are idle), so probation would only hold it back for its 10 s limit.
    pub probation_successes: Option<u32>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().unwrap(),
            workers: 0,
            log_health: true,
            fast_path: true,
            upstream: UpstreamConfig::default(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            retry: RetryConfig::default(),
            health: HealthConfig::default(),
            outlier: OutlierConfig::default(),
            admin: AdminConfig::default(),
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            name: "app".to_owned(),
            servers: Vec::new(),
            strategy: StrategyKind::LeastRequest,
            hash_key: HttpKey::Path,
            bounded_load: None,
            protocol: Protocol::Http1,
            keepalive: 64,
            host: HostMode::Pass,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(60),
            fail_fast: Duration::from_secs(1),
            keepalive: Duration::from_secs(60),
            drain: Duration::from_secs(30),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            body_read_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 3,
            budget_percent: 20.0,
            min_per_second: 10,
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            enabled: true,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            panic_threshold: 0.5,
            fail_closed: false,
        }
    }
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            enabled: true,
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
            probation_successes: None,
        }
    }
}

impl Config {
    /// Reads a TOML config file.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.check()?;
        Ok(config)
    }

    /// Checks what serde cannot.
    pub fn check(&self) -> Result<(), String> {
        if let Some(c) = self.upstream.bounded_load {
            if !(c.is_finite() && c >= 1.0) {
                return Err(format!("bounded_load: {c} is not a number >= 1"));
            }
            if !matches!(
                self.upstream.strategy,
                StrategyKind::RingHash | StrategyKind::Maglev
            ) {
                return Err("bounded_load needs strategy ring-hash or maglev".into());
            }
        }
        if self.retry.attempts == 0 {
            return Err("retry.attempts must be at least 1".into());
        }
        if self.upstream.servers.iter().any(|s| s.weight == 0) {
            return Err("a server's weight must be at least 1".into());
        }
        if self.limits.max_header_bytes < 8192 {
            return Err("limits.max_header_bytes must be at least 8192".into());
        }
        Ok(())
    }

    fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// `"2s"`, `"500ms"`, `"1m"`, `"1h"`, or a bare number of seconds, as nginx writes times.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. 500ms, 2s, 1m)"))?;
    let seconds = match unit.trim() {
        "ms" => number / 1e3,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("`{text}`: unknown unit (ms, s, m or h)")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Seconds(f64),
    }
    match Raw::deserialize(d)? {
        Raw::Text(text) => parse_duration(&text).map_err(serde::de::Error::custom),
        Raw::Seconds(s) if s >= 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
        Raw::Seconds(s) => Err(serde::de::Error::custom(format!("{s} is not a duration"))),
    }
}

fn de_from_str<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let text = String::deserialize(d)?;
    text.parse().map_err(serde::de::Error::custom)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyKind {
    RoundRobin,
    Random,
    LeastRequest,
    PeakEwma,
    RingHash,
    Maglev,
    Rendezvous,
}

impl StrategyKind {
    /// Whether the strategy routes by the request's hash key.
    pub fn hashes(self) -> bool {
        matches!(
            self,
            StrategyKind::RingHash | StrategyKind::Maglev | StrategyKind::Rendezvous
        )
    }
}

impl FromStr for StrategyKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        StrategyKind::deserialize(
            serde::de::value::StrDeserializer::<serde::de::value::Error>::new(name),
        )
        .map_err(|_| {
            format!(
                "unknown strategy `{name}` (expected round-robin, random, least-request, \
                 peak-ewma, ring-hash, maglev or rendezvous)"
            )
        })
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StrategyKind::RoundRobin => "round-robin",
            StrategyKind::Random => "random",
            StrategyKind::LeastRequest => "least-request",
            StrategyKind::PeakEwma => "peak-ewma",
            StrategyKind::RingHash => "ring-hash",
            StrategyKind::Maglev => "maglev",
            StrategyKind::Rendezvous => "rendezvous",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http1,
    H2c,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostMode {
    /// Forward the client's Host header (nginx: `proxy_set_header Host $host;`).
    Pass,
    /// Set Host to the upstream's address (nginx's default, `$proxy_host`).
    Upstream,
}

// ----------------------------------------------------------------------------------------
// Starting and stopping
// ----------------------------------------------------------------------------------------

/// A running proxy.
pub struct Proxy {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Per-upstream statistics.
    pub monitor: Monitor<SocketAddr>,
    /// Every health change so far: when, which upstream, its new state.
    pub health_log: Arc<Mutex<Vec<(Instant, SocketAddr, Health)>>>,
    shutdown: watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn endpoints(&self) -> Vec<EndpointStats<SocketAddr>> {
        self.monitor.endpoints()
    }

    /// Stops accepting connections, lets in-flight requests finish (up to the drain
    /// timeout), and returns when every worker has stopped.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let workers = std::mem::take(&mut self.workers);
        let _ = tokio::task::spawn_blocking(move || {
            for worker in workers {
                let _ = worker.join();
            }
        })
        .await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Shared by every connection of every worker.
struct State {
    balancer: BalancedService,
    /// The same balancer for the fast path (plain requests without hyper), when it is on:
    /// HTTP/1.1 upstreams and a strategy that routes by no key.
    fast: Option<fast::FastService>,
    budget: TpsBudget,
    attempts: u32,
    body_read_timeout: Duration,
    host: HostMode,
    client_ip_key: bool,
}

/// Starts the proxy. Call it inside a tokio runtime: the balancer's background task (health
/// checks, outlier detection) runs there; the proxy's workers run on their own threads.
pub async fn start(config: &Config) -> Result<Proxy, BoxError> {
    config.check()?;
    if config.upstream.servers.is_empty() {
        return Err("no upstream servers configured".into());
    }
    let workers = config.worker_count();
    let pools = Arc::new(PoolSettings {
        workers,
        connect_timeout: config.timeouts.connect,
        request_timeout: config.timeouts.request,
        protocol: config.upstream.protocol,
        idle: Pools::new(
            workers,
            config.upstream.keepalive,
            config.timeouts.keepalive,
        ),
    });
    let endpoints = config
        .upstream
        .servers
        .iter()
        .enumerate()
        .map(|(index, s)| {
            Upstream::new(index, s.address, config.upstream.host, pools.clone())
                .map(|u| (s.address, u, s.weight))
        })
        .collect::<Result<Vec<_>, BoxError>>()?;
    let (balancer, fast, monitor, health_log) = build_balancer(config, endpoints)?;
    let state = Arc::new(State {
        balancer,
        fast,
        budget: TpsBudget::new(
            Duration::from_secs(10),
            config.retry.min_per_second,
            config.retry.budget_percent / 100.0,
        ),
        attempts: config.retry.attempts,
        body_read_timeout: config.limits.body_read_timeout,
        host: config.upstream.host,
        client_ip_key: config.upstream.strategy.hashes()
            && config.upstream.hash_key == HttpKey::ClientIp,
    });

    // One listening socket per worker on the same port (SO_REUSEPORT): the kernel spreads
    // connections over the workers, and each connection stays on its worker's thread.
    let mut listeners = Vec::with_capacity(workers);
    let mut addr = config.listen;
    for _ in 0..workers {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket
            .bind(addr)
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let listener = socket.listen(1024)?;
        addr = listener.local_addr()?;
        listeners.push(listener.into_std()?);
    }

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut handles = Vec::with_capacity(workers);
    for (index, listener) in listeners.into_iter().enumerate() {
        let state = state.clone();
        let limits = config.limits;
        let drain = config.timeouts.drain;
        let mut shutdown_rx = shutdown_rx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("proxy-worker-{index}"))
            .spawn(move || {
                WORKER.with(|w| w.set(index));
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("worker runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("listener");
                    accept_loop(listener, state, limits, drain, &mut shutdown_rx).await;
                });
            })?;
        handles.push(handle);
    }
    Ok(Proxy {
        addr,
        monitor,
        health_log,
        shutdown,
        workers: handles,
    })
}

thread_local! {
    /// The index of the proxy worker this thread is (0 elsewhere).
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    limits: Limits,
    drain: Duration,
    shutdown: &mut watch::Receiver<bool>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Every connection task holds a clone: the drain waits for them all.
    let active = Arc::new(());
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    eprintln!("accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = Arc::new(ClientConn::new(client));
        let state = state.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let mut shutdown = shutdown.clone();
        let active = active.clone();
        tokio::spawn(async move {
            let _active = active;
            // Plain requests first, without hyper; hyper takes over at the first request
            // that is not (from its first byte, read again).
            let (stream, read) = match state.fast.clone() {
                Some(service) => {
                    let ended = fast::serve(
                        stream,
                        connection.clone(),
                        state.clone(),
                        service,
                        &limits,
                        &mut shutdown,
                    )
                    .await;
                    match ended {
                        fast::Ended::Closed => return,
                        fast::Ended::Hyper(stream, read) => (stream, read),
                    }
                }
                None => (stream, Bytes::new()),
            };
            // The smuggling scan starts at the request hyper reads first.
            let served = connection.requests.load(Ordering::Relaxed);
            let io = Scanned::from_request(read, stream, connection.conflict.clone(), served);
            let io = stall::SendTimeout::new(io, limits.send_timeout);
            let service =
                service_fn(move |request| forward(state.clone(), connection.clone(), request));
            let conn = watcher.watch(builder.serve_connection(TokioIo::new(io), service));
            if let Err(error) = conn.await {
                if !is_routine(&error) {
                    eprintln!("connection from {client}: {error}");
                }
            }
        });
    }
    drop(listener);
    let drained = async {
        graceful.shutdown().await;
        while Arc::strong_count(&active) > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let _ = tokio::time::timeout(drain, drained).await;
}

/// Client disconnects, aborted uploads and slow clients are part of normal traffic.
fn is_routine(error: &hyper::Error) -> bool {
    error.is_incomplete_message()
        || error.is_canceled()
        || error.is_timeout()
        || find::<ClientGone>(error).is_some()
        || find::<std::io::Error>(error).is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        || {
            let text = error.to_string();
            text.contains("reset") || text.contains("broken pipe") || text.contains("timed out")
        }
}

/// What the proxy knows of a client connection.
struct ClientConn {
    addr: SocketAddr,
    /// `x-forwarded-for` when the client sent none.
    forwarded_for: HeaderValue,
    /// Requests seen so far, and the one whose head had conflicting framing headers.
    requests: AtomicUsize,
    conflict: Arc<Conflict>,
}

impl ClientConn {
    fn new(addr: SocketAddr) -> Self {
        let forwarded_for = HeaderValue::try_from(addr.ip().to_string()).expect("an IP address");
        ClientConn {
            addr,
            forwarded_for,
            requests: AtomicUsize::new(0),
            conflict: Arc::new(Conflict::new()),
        }
    }
}

// ----------------------------------------------------------------------------------------
// The balancer
// ----------------------------------------------------------------------------------------

/// A request stops counting as in flight when its response body has been streamed.
type Completion = tower_lb::http::OnBodyEnd;
pub type UpstreamBody = tower_lb::http::TrackedBody<PooledBody>;

/// A balancer with its strategy type erased.
type BalancedService = BoxCloneSyncService<Request<Upload>, Response<UpstreamBody>, BoxError>;

type HealthLog = Arc<Mutex<Vec<(Instant, SocketAddr, Health)>>>;

/// The balancer for the hyper path and, when the fast path is on, the same for it.
type Balancers = (
    BalancedService,
    Option<fast::FastService>,
    Monitor<SocketAddr>,
    HealthLog,
);

fn build_balancer(
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
    match (config.upstream.strategy, config.upstream.bounded_load) {
        (StrategyKind::RoundRobin, _) => plain!(RoundRobin::new()),
        (StrategyKind::Random, _) => plain!(Random::new()),
        (StrategyKind::LeastRequest, _) => plain!(LeastRequest::new()),
        (StrategyKind::PeakEwma, _) => plain!(PeakEwma::new()),
        (StrategyKind::RingHash, None) => keyed!(RingHash::new()),
        (StrategyKind::RingHash, Some(c)) => keyed!(BoundedLoad::new(RingHash::new()).factor(c)),
        (StrategyKind::Maglev, None) => keyed!(Maglev::new()),
        (StrategyKind::Maglev, Some(c)) => keyed!(BoundedLoad::new(Maglev::new()).factor(c)),
        (StrategyKind::Rendezvous, _) => keyed!(Rendezvous::new()),
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
            record
                .lock()
                .unwrap()
                .push((Instant::now(), event.key, event.to));
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

// ----------------------------------------------------------------------------------------
// Forwarding
// ----------------------------------------------------------------------------------------

/// What the proxy answers with: the upstream's body, or its own error text.
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// The client went away in the middle of its request (an aborted upload): there is no one
/// to answer, and hyper closes the connection.
#[derive(Debug)]
struct ClientGone;

impl fmt::Display for ClientGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the client aborted its request")
    }
}

impl std::error::Error for ClientGone {}

/// Forwards one request through the balancer and turns its result into the response.
async fn forward(
    state: Arc<State>,
    client: Arc<ClientConn>,
    mut request: Request<Incoming>,
) -> Result<Response<ProxyBody>, ClientGone> {
    // Request smuggling: hyper lets Transfer-Encoding win over Content-Length, drops the
    // latter and closes the connection after the answer (RFC 9112, section 6.3); the scan
    // of the raw bytes (`framing`) tells which request it was, and it is refused outright.
    let index = client.requests.fetch_add(1, Ordering::Relaxed);
    if client.conflict.is(index) {
        return Ok(refused(rules::Refusal {
            status: StatusCode::BAD_REQUEST,
            reason: "the request has both Content-Length and Transfer-Encoding",
        }));
    }
    if let Err(refusal) = rules::check(&request) {
        return Ok(refused(refusal));
    }
    let idempotent = request.method().is_idempotent();
    let headers = request.headers_mut();
    strip_hop_by_hop(headers);
    rules::drop_underscored(headers);
    append_forwarded_for(headers, &client.forwarded_for);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if state.host == HostMode::Pass && !headers.contains_key(HOST) {
        // HTTP/1.0 clients may send none: use the authority of an absolute URI if given.
        if let Some(value) = request
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            request.headers_mut().insert(HOST, value);
        }
    }
    // The `client-ip` hash key reads the peer address from the extensions (an allocation
    // that other keys do without).
    if state.client_ip_key {
        request.extensions_mut().insert(client.addr);
    }

    // The body's errors are the client's, and it may stall only so long between reads.
    let mut request = request.map(|body| Upload::new(body, state.body_read_timeout));
    let mut attempt = 1;
    loop {
        // No timeout around the balancer: the request timeout is the upstream's (see
        // `UpstreamInner::send`), so that outlier detection counts it as a failure.
        let error = match state.balancer.clone().oneshot(request).await {
            Ok(response) => {
                if attempt == 1 {
                    state.budget.deposit();
                }
                let mut response = response.map(Either::Left);
                strip_hop_by_hop(response.headers_mut());
                // The proxy answers in its own HTTP version, whatever the upstream's
                // (an HTTP/1.0 upstream's answer would otherwise say HTTP/1.0).
                *response.version_mut() = http::Version::HTTP_11;
                return Ok(response);
            }
            Err(error) => error,
        };
        // A request that never left the proxy comes back with its error: an idempotent one
        // is tried again within the attempts and the budget. The balancer picks afresh; a
        // hashing strategy passes over the upstreams the request has been to.
        match error.downcast::<NotSent<Request<Upload>>>() {
            Ok(not_sent) => {
                let retry = idempotent && attempt < state.attempts && state.budget.withdraw();
                match not_sent.take() {
                    (Some(back), _) if retry => {
                        request = back;
                        attempt += 1;
                    }
                    (_, cause) => return Ok(error_response(&*cause, attempt)),
                }
            }
            Err(error) => {
                return client_fault(&*error)
                    .unwrap_or_else(|| Ok(error_response(&*error, attempt)))
            }
        }
    }
}

/// The answer to a request that failed because of its own body, if it did: 408 when it
/// stalled (nginx: `client_body_timeout`), 400 when it was malformed, and none when the
/// client went away (nginx: 499 in its log, nothing on the wire).
fn client_fault(
    error: &(dyn std::error::Error + 'static),
) -> Option<Result<Response<ProxyBody>, ClientGone>> {
    let fault = ClientBodyError::find(error)?.get_ref();
    if find::<BodyTimeout>(fault).is_some() {
        return Some(Ok(refused(rules::Refusal {
            status: StatusCode::REQUEST_TIMEOUT,
            reason: "the request body stalled",
        })));
    }
    let malformed = find::<std::io::Error>(fault).is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
        )
    });
    Some(if malformed {
        Ok(refused(rules::Refusal {
            status: StatusCode::BAD_REQUEST,
            reason: "the request body is malformed",
        }))
    } else {
        Err(ClientGone)
    })
}

/// The proxy's answer to a request it refuses: the status and its reason, and the
/// connection closes (what follows on it cannot be trusted to be a request).
fn refused(refusal: rules::Refusal) -> Response<ProxyBody> {
    let mut response = proxy_error(refusal.status, refusal.reason);
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    if refusal.status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, HeaderValue::from_static(rules::ALLOWED));
    }
    response
}

/// Removes the hop-by-hop headers (RFC 9110, section 7.6.1), including those the
/// `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(connection) = headers.remove(CONNECTION) {
        // Rare: most clients send no Connection header with HTTP/1.1.
        let named: Vec<HeaderName> = std::iter::once(connection)
            .chain(headers.get_all(CONNECTION).iter().cloned())
            .filter_map(|value| value.to_str().map(str::to_owned).ok())
            .flat_map(|value| {
                value
                    .split(',')
                    .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
                    .collect::<Vec<_>>()
            })
            .collect();
        for name in &named {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    for name in &HOP_BY_HOP {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
}

/// The hop-by-hop headers besides those `Connection` names, as constants: looking up a
/// `&str` would parse the name on every request.
const HOP_BY_HOP: [HeaderName; 6] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TRANSFER_ENCODING,
    http::header::TE,
    http::header::TRAILER,
    http::header::UPGRADE,
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Appends the client's address to `x-forwarded-for` (nginx: `$proxy_add_x_forwarded_for`).
fn append_forwarded_for(headers: &mut HeaderMap, client: &HeaderValue) {
    let name = X_FORWARDED_FOR;
    if !headers.contains_key(&name) {
        headers.insert(name, client.clone());
        return;
    }
    // Every value the request carried, in order, then this client.
    let mut chain = Vec::new();
    for value in headers.get_all(&name) {
        chain.extend_from_slice(value.as_bytes());
        chain.extend_from_slice(b", ");
    }
    chain.extend_from_slice(client.as_bytes());
    let value = HeaderValue::from_bytes(&chain).unwrap_or_else(|_| client.clone());
    headers.insert(name, value); // replaces every earlier value
}

/// 503 when the balancer had no upstream to offer, 504 when connecting or the response
/// head timed out, 502 when talking to the chosen upstream failed. The client gets a
/// generic reason (nginx's pages say as little); the error, with the upstream's address and
/// its causes, goes to the log.
fn error_response(error: &(dyn std::error::Error + 'static), attempts: u32) -> Response<ProxyBody> {
    let (status, reason) = if find::<Unavailable>(error).is_some() {
        (StatusCode::SERVICE_UNAVAILABLE, "no upstream is available")
    } else if find::<ConnectTimeout>(error).is_some() || find::<ResponseTimeout>(error).is_some() {
        (
            StatusCode::GATEWAY_TIMEOUT,
            "the upstream did not answer in time",
        )
    } else {
        (StatusCode::BAD_GATEWAY, "the upstream request failed")
    };
    let tries = if attempts > 1 {
        format!(" (after {attempts} tries)")
    } else {
        String::new()
    };
    eprintln!("proxy: {status}{tries}: {}", error_chain(error));
    proxy_error(status, reason)
}

fn find<'a, E: std::error::Error + 'static>(
    mut error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    loop {
        if let Some(found) = error.downcast_ref::<E>() {
            return Some(found);
        }
        error = error.source()?;
    }
}

/// An answer of the proxy's own, with a plain text body that says what happened.
fn proxy_error(status: StatusCode, reason: &str) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::from(format!("{status}\n{reason}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// An error and its sources, as `outer: inner: innermost`.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

// ----------------------------------------------------------------------------------------
// One upstream: connection pools and sending
// ----------------------------------------------------------------------------------------

struct PoolSettings {
    workers: usize,
    connect_timeout: Duration,
    /// From sending a request to its response head.
    request_timeout: Duration,
    protocol: Protocol,
    /// The idle HTTP/1.1 connections of every upstream, per worker.
    idle: Pools,
}

/// What goes to an HTTP/1.1 upstream: the client's body, or none for a request kept for a
/// replay (see [`UpstreamInner::send_http1`]).
type SendBody = Either<Upload, Empty<Bytes>>;

/// The service that sends requests to one upstream.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<UpstreamInner>,
}

struct UpstreamInner {
    /// Its place in the config: its connections' key in the pool.
    index: usize,
    addr: SocketAddr,
    authority: Authority,
    host: Option<HeaderValue>,
    settings: Arc<PoolSettings>,
    /// The h2c connection of each worker thread, shared by all its requests.
    h2: Vec<Mutex<Option<client2::SendRequest<Upload>>>>,
}

impl Upstream {
    fn new(
        index: usize,
        addr: SocketAddr,
        host: HostMode,
        settings: Arc<PoolSettings>,
    ) -> Result<Self, BoxError> {
        let authority = Authority::try_from(addr.to_string())?;
        let host = match host {
            HostMode::Upstream => Some(HeaderValue::from_str(authority.as_str())?),
            HostMode::Pass => None,
        };
        let h2 = (0..settings.workers).map(|_| Mutex::default()).collect();
        Ok(Upstream {
            inner: Arc::new(UpstreamInner {
                index,
                addr,
                authority,
                host,
                settings,
                h2,
            }),
        })
    }
}

/// The request did not leave the proxy (connecting failed, or the pooled connection closed
/// before it was written, or lost it before any answer): the request (`R`: hyper's, or the
/// fast path's) is handed back for a retry. The mutex makes it `Sync`, as `BoxError` must
/// be; the request is only ever moved.
pub struct NotSent<R> {
    request: Mutex<Option<R>>,
    cause: BoxError,
}

impl<R: Send + 'static> NotSent<R> {
    fn boxed(request: R, cause: impl Into<BoxError>) -> BoxError {
        Box::new(NotSent {
            request: Mutex::new(Some(request)),
            cause: cause.into(),
        })
    }

    fn take(self) -> (Option<R>, BoxError) {
        (self.request.into_inner().unwrap_or(None), self.cause)
    }
}

impl<R> fmt::Debug for NotSent<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotSent")
            .field("cause", &self.cause)
            .finish()
    }
}

impl<R> fmt::Display for NotSent<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request could not be sent")
    }
}

impl<R: Send + 'static> std::error::Error for NotSent<R> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.cause)
    }
}

#[derive(Debug)]
struct ConnectTimeout(SocketAddr);

impl fmt::Display for ConnectTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connecting to {} timed out", self.0)
    }
}

impl std::error::Error for ConnectTimeout {}

/// The upstream sent no response head within the request timeout: its failure, which the
/// balancer counts (a timeout around the balancer would be a cancellation, which outlier
/// detection ignores, so a black-hole upstream would never be ejected).
#[derive(Debug)]
pub struct ResponseTimeout(SocketAddr, Duration);

impl fmt::Display for ResponseTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} did not answer within {:?}", self.0, self.1)
    }
}

impl std::error::Error for ResponseTimeout {}

/// A connection to an upstream could not be made. The I/O error stays the source, so that
/// the balancer sees a refused connection as proof that the upstream is unreachable.
#[derive(Debug)]
struct ConnectFailed(SocketAddr, std::io::Error);

impl fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connecting to {}: {}", self.0, self.1)
    }
}

impl std::error::Error for ConnectFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.1)
    }
}

impl Service<Request<Upload>> for Upstream {
    type Response = Response<PooledBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<PooledBody>, BoxError>>;

    /// Always ready: connections are made per request when the pool has none idle, and the
    /// balancer's health checks keep requests away from upstreams that are down.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Upload>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { inner.send(request).await })
    }
}

impl Service<fast::FastRequest> for Upstream {
    type Response = Response<fast::FastBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<fast::FastBody>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: fast::FastRequest) -> Self::Future {
        Box::pin(self.inner.clone().send_fast(request))
    }
}

impl UpstreamInner {
    /// The error for a request that did not leave the proxy, or was lost before any
    /// answer: the request comes back to be tried again, marked as having been here, so
    /// that a hashing strategy passes over this upstream for the retry.
    fn not_sent(&self, mut request: Request<Upload>, cause: impl Into<BoxError>) -> BoxError {
        let extensions = request.extensions_mut();
        let mut previous = extensions.remove::<PreviousEndpoints>().unwrap_or_default();
        previous.0.push(self.addr.to_string());
        extensions.insert(previous);
        NotSent::boxed(request, cause)
    }

    fn response_timeout(&self) -> BoxError {
        Box::new(ResponseTimeout(self.addr, self.settings.request_timeout))
    }

    /// This worker's h2c connection slot.
    fn h2(&self) -> &Mutex<Option<client2::SendRequest<Upload>>> {
        let worker = WORKER.with(|w| w.get());
        &self.h2[worker % self.h2.len()]
    }

    async fn connect(&self) -> Result<TcpStream, BoxError> {
        match tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(self.addr))
            .await
        {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Ok(Err(error)) => Err(Box::new(ConnectFailed(self.addr, error))),
            Err(_) => Err(Box::new(ConnectTimeout(self.addr))),
        }
    }

    async fn send(
        self: Arc<Self>,
        mut request: Request<Upload>,
    ) -> Result<Response<PooledBody>, BoxError> {
        if let Some(host) = &self.host {
            request.headers_mut().insert(HOST, host.clone());
        }
        match self.settings.protocol {
            Protocol::Http1 => {
                // HTTP/1.1 upstreams get the origin form: the path and query.
                if request.uri().scheme().is_some() || request.uri().authority().is_some() {
                    let path = request
                        .uri()
                        .path_and_query()
                        .cloned()
                        .unwrap_or_else(|| PathAndQuery::from_static("/"));
                    *request.uri_mut() = Uri::from(path);
                }
                self.send_http1(request).await
            }
            Protocol::H2c => {
                let mut parts = std::mem::take(request.uri_mut()).into_parts();
                parts.scheme = Some(Scheme::HTTP);
                parts.authority = Some(self.authority.clone());
                if parts.path_and_query.is_none() {
                    parts.path_and_query = Some(PathAndQuery::from_static("/"));
                }
                *request.uri_mut() = Uri::from_parts(parts)?;
                *request.version_mut() = http::Version::HTTP_2;
                self.send_h2(request).await
            }
        }
    }

    /// A pooled connection to reuse, ready for a request within the connect timeout (one
    /// that is not may still be busy with an earlier exchange: it is closed).
    async fn take_idle(&self) -> Option<client1::SendRequest<SendBody>> {
        loop {
            let Conn::Hyper(mut sender) = self.settings.idle.take(self.index, false)? else {
                continue;
            };
            if sender.is_closed() {
                continue;
            }
            match tokio::time::timeout(self.settings.connect_timeout, sender.ready()).await {
                Ok(Ok(())) => return Some(sender),
                _ => continue, // closed while idle, or stuck: take another
            }
        }
    }

    async fn send_http1(
        self: Arc<Self>,
        mut request: Request<Upload>,
    ) -> Result<Response<PooledBody>, BoxError> {
        loop {
            let (mut sender, reused) = match self.take_idle().await {
                Some(sender) => (sender, true),
                None => {
                    let stream = match self.connect().await {
                        Ok(stream) => stream,
                        Err(error) => return Err(self.not_sent(request, error)),
                    };
                    let (sender, connection) = match client1::handshake(TokioIo::new(stream)).await
                    {
                        Ok(handshake) => handshake,
                        Err(error) => return Err(self.not_sent(request, error)),
                    };
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    (sender, false)
                }
            };
            if !reused && sender.ready().await.is_err() {
                return Err(self.not_sent(request, "the new connection closed at once"));
            }
            // An idempotent request without a body, sent on a reused connection, is kept (its
            // head copied, its empty body set aside): if the upstream resets or closes the
            // connection before any answer (it died, or closed the idle connection just as it
            // was taken), it goes back to the balancer for another try, as nginx's
            // `proxy_next_upstream error` does. Other requests cannot be replayed once sent.
            let written = request.body().written();
            let (outgoing, kept) =
                if reused && request.method().is_idempotent() && request.body().is_end_stream() {
                    let mut copy = Request::new(Either::Right(Empty::new()));
                    *copy.method_mut() = request.method().clone();
                    *copy.uri_mut() = request.uri().clone();
                    *copy.version_mut() = request.version();
                    *copy.headers_mut() = request.headers().clone();
                    (copy, Some(request))
                } else {
                    (request.map(Either::Left), None)
                };
            let sent = sender.try_send_request(outgoing);
            let Ok(sent) = tokio::time::timeout(self.settings.request_timeout, sent).await else {
                return Err(self.response_timeout());
            };
            match sent {
                Ok(response) => {
                    let back = ReturnToPool::new(sender, self.clone(), written);
                    return Ok(response.map(|body| PooledBody::new(body, Some(back))));
                }
                Err(mut error) => {
                    let returned = error.take_message();
                    let unsent = returned.is_some();
                    let back = returned.and_then(|back| {
                        let (parts, body) = back.into_parts();
                        match body {
                            Either::Left(body) => Some(Request::from_parts(parts, body)),
                            Either::Right(_) => None, // the copy; the original is kept
                        }
                    });
                    match back.or(kept) {
                        // A pooled connection the upstream had closed, and the request was
                        // not written: try another connection.
                        Some(again) if unsent && reused => request = again,
                        // Not written, or a kept request the connection lost unanswered.
                        Some(again) if unsent || lost(error.error()) => {
                            return Err(self.not_sent(again, error.into_error()))
                        }
                        _ => return Err(error.into_error().into()),
                    }
                }
            }
        }
    }

    async fn send_h2(
        self: Arc<Self>,
        request: Request<Upload>,
    ) -> Result<Response<PooledBody>, BoxError> {
        let existing = self.h2().lock().unwrap().clone().filter(|s| !s.is_closed());
        let mut sender = match existing {
            Some(sender) => sender,
            None => {
                let stream = match self.connect().await {
                    Ok(stream) => stream,
                    Err(error) => return Err(self.not_sent(request, error)),
                };
                let (sender, connection) =
                    match client2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await {
                        Ok(handshake) => handshake,
                        Err(error) => return Err(self.not_sent(request, error)),
                    };
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                *self.h2().lock().unwrap() = Some(sender.clone());
                sender
            }
        };
        // A stream on the shared connection, within the connect timeout (the connection
        // may have no room for one).
        match tokio::time::timeout(self.settings.connect_timeout, sender.ready()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(self.not_sent(request, error)),
            Err(_) => return Err(self.not_sent(request, ConnectTimeout(self.addr))),
        }
        let sent = sender.try_send_request(request);
        let Ok(sent) = tokio::time::timeout(self.settings.request_timeout, sent).await else {
            return Err(self.response_timeout());
        };
        match sent {
            Ok(response) => Ok(response.map(|body| PooledBody::new(body, None))),
            Err(mut error) => match error.take_message() {
                Some(back) => Err(self.not_sent(back, error.into_error())),
                None => Err(error.into_error().into()),
            },
        }
    }
}

/// Whether a connection failed by being closed or reset (before any answer, when the
/// request future fails), rather than by a malformed answer or a timeout.
fn lost(error: &hyper::Error) -> bool {
    if error.is_incomplete_message() || error.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return is_connection_loss(io.kind());
        }
        source = cause.source();
    }
    false
}

/// The I/O errors of a connection the other side closed or reset.
fn is_connection_loss(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        kind,
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
    )
}

// ----------------------------------------------------------------------------------------
// Demo upstreams
// ----------------------------------------------------------------------------------------

/// A running demo upstream; dropping it (or [`DemoUpstream::stop`]) closes its listener and
/// every connection at once, like a crashed process.
pub struct DemoUpstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl DemoUpstream {
    pub fn stop(self) {}
}

impl Drop for DemoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The upstream that answered, from the demo upstreams' `x-upstream` header ("" if none).
pub fn answered_by<B>(response: &Response<B>) -> String {
    response
        .headers()
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Starts a demo upstream on `addr` (HTTP/1.1 and h2c on the same port). It answers every
/// request with its own address, in the body and in an `x-upstream` header, and says what
/// it received so that forwarded headers and streamed bodies can be checked with curl.
pub async fn spawn_demo_upstream(addr: SocketAddr) -> Result<DemoUpstream, BoxError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let x_upstream = HeaderValue::try_from(addr.to_string()).expect("an address");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let builder = builder.clone();
            let x_upstream = x_upstream.clone();
            connections.spawn(async move {
                let service = service_fn(move |request| demo_upstream(x_upstream.clone(), request));
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
            // Reap finished connections so the set does not grow.
            while connections.try_join_next().is_some() {}
        }
    });
    Ok(DemoUpstream { addr, task })
}

async fn demo_upstream(
    x_upstream: HeaderValue,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("-")
    };
    let received = match count_body_bytes(body).await {
        Ok(bytes) => format!("{bytes} body bytes"),
        Err(error) => format!("body error: {error}"),
    };
    let text = format!(
        "hello from upstream {} ({} {}, host: {}, {received}, x-forwarded-for: {})\n",
        x_upstream.to_str().unwrap_or("?"),
        parts.method,
        parts.uri,
        header("host"),
        header("x-forwarded-for"),
    );
    let mut response = Response::new(Full::from(text));
    response.headers_mut().insert("x-upstream", x_upstream);
    Ok(response)
}

/// Reads a body frame by frame, keeping only the count.
async fn count_body_bytes(mut body: Incoming) -> Result<usize, hyper::Error> {
    let mut bytes = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            bytes += data.len();
        }
    }
    Ok(bytes)
}
