//! Starting and stopping: [`start`] binds one `SO_REUSEPORT` listener per worker thread
//! (like nginx's worker processes), builds the balancer and the upstreams, and runs each
//! worker's accept loop, which serves client connections with hyper or hands them to the
//! fast path; [`Proxy::shutdown`] stops accepting and drains in-flight requests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tower::retry::budget::TpsBudget;
use tower_lb::error::BoxError;
use tower_lb::health::Health;
use tower_lb::http::key::HttpKey;
use tower_lb::{EndpointStats, Monitor};

use super::balancer::{build_balancer, BalancedService};
use super::config::{Config, HostMode, Limits};
use super::forward::{find, forward, ClientGone};
use super::framing::{Conflict, Scanned};
use super::pool::Pools;
use super::upstream::{PoolSettings, Upstream};
use super::{fast, stall};

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
pub(super) struct State {
    pub(super) balancer: BalancedService,
    /// The same balancer for the fast path (plain requests without hyper), when it is on:
    /// HTTP/1.1 upstreams and a strategy that routes by no key.
    fast: Option<fast::FastService>,
    pub(super) budget: TpsBudget,
    pub(super) attempts: u32,
    pub(super) body_read_timeout: Duration,
    pub(super) host: HostMode,
    pub(super) client_ip_key: bool,
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
        client_ip_key: config.upstream.strategy.uses_request_key()
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
    pub(super) static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
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
pub(super) struct ClientConn {
    pub(super) addr: SocketAddr,
    /// `x-forwarded-for` when the client sent none.
    pub(super) forwarded_for: HeaderValue,
    /// Requests seen so far, and the one whose head had conflicting framing headers.
    pub(super) requests: AtomicUsize,
    pub(super) conflict: Arc<Conflict>,
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
