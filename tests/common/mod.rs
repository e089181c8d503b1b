//! Test backends shared by the integration tests.
//!
//! Every backend answers with its own name, so a test can see which endpoint served a request.
//! Its behaviour is configurable: a delay (tokio's clock, so paused-clock tests stay instant),
//! a gate that holds responses until the test opens it, failures, readiness errors, and a log
//! of the calls it received in the order `call` was invoked.
//!
//! For tests over real sockets: [`Server`], a hyper HTTP/1 server on 127.0.0.1, and
//! [`ToEndpoint`], a hyper-util client for one endpoint.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tower::Service;
use tower_lb::error::BoxError;
use tower_lb::Balance;

pub type BoxFut<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// The names of the backends that received a call, in call order.
#[derive(Clone, Default)]
pub struct CallLog(Arc<Mutex<Vec<&'static str>>>);

impl CallLog {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&self, name: &'static str) {
        self.0.lock().unwrap().push(name);
    }

    pub fn take(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    pub fn snapshot(&self) -> Vec<&'static str> {
        self.0.lock().unwrap().clone()
    }

    pub fn count(&self, name: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|n| **n == name)
            .count()
    }
}

/// Holds responses while closed. Clones share the state.
#[derive(Clone)]
pub struct Gate {
    tx: Arc<watch::Sender<bool>>,
}

impl Gate {
    /// A gate that holds every response until [`Gate::open`].
    pub fn closed() -> Self {
        Gate {
            tx: Arc::new(watch::channel(false).0),
        }
    }

    /// A gate that lets every response through until [`Gate::close`].
    pub fn opened() -> Self {
        Gate {
            tx: Arc::new(watch::channel(true).0),
        }
    }

    pub fn open(&self) {
        self.tx.send_replace(true);
    }

    pub fn close(&self) {
        self.tx.send_replace(false);
    }

    fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }
}

/// A backend service answering `()` requests with its name.
#[derive(Clone)]
pub struct Backend {
    pub name: &'static str,
    delay: Duration,
    yields: usize,
    gate: Option<Gate>,
    fail: bool,
    status: u16,
    ready_error: bool,
    calls: Arc<AtomicUsize>,
    log: Option<CallLog>,
}

impl Backend {
    pub fn new(name: &'static str) -> Self {
        Backend {
            name,
            delay: Duration::ZERO,
            yields: 0,
            gate: None,
            fail: false,
            status: 200,
            ready_error: false,
            calls: Arc::default(),
            log: None,
        }
    }

    /// Responds after `delay` on tokio's clock.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Yields to the scheduler `n` times before responding (so the response future is
    /// pending on its first poll).
    pub fn yielding(mut self, n: usize) -> Self {
        self.yields = n;
        self
    }

    /// Holds each response until `gate` is open (then waits `delay`).
    pub fn gate(mut self, gate: &Gate) -> Self {
        self.gate = Some(gate.clone());
        self
    }

    /// Every call returns `Err`.
    pub fn failing(mut self) -> Self {
        self.fail = true;
        self
    }

    /// The HTTP status of [`Http`] responses.
    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// `poll_ready` returns `Err`.
    pub fn ready_error(mut self) -> Self {
        self.ready_error = true;
        self
    }

    pub fn log(mut self, log: &CallLog) -> Self {
        self.log = Some(log.clone());
        self
    }

    /// How many times `call` was invoked (on this backend and its clones).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn respond(&mut self) -> BoxFut<&'static str> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(log) = &self.log {
            log.push(self.name);
        }
        let name = self.name;
        let delay = self.delay;
        let yields = self.yields;
        let fail = self.fail;
        let gate = self.gate.as_ref().map(Gate::subscribe);
        Box::pin(async move {
            if let Some(mut gate) = gate {
                gate.wait_for(|open| *open).await.expect("gate dropped");
            }
            for _ in 0..yields {
                tokio::task::yield_now().await;
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if fail {
                Err(format!("{name} failed").into())
            } else {
                Ok(name)
            }
        })
    }
}

impl Service<()> for Backend {
    type Response = &'static str;
    type Error = BoxError;
    type Future = BoxFut<&'static str>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.ready_error {
            Poll::Ready(Err(format!("{} is broken", self.name).into()))
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, _req: ()) -> Self::Future {
        self.respond()
    }
}

/// A [`Backend`] that answers with an `http::Response` carrying its status and its name as
/// the body, so that the default classifier applies.
#[derive(Clone)]
pub struct Http(pub Backend);

impl Service<()> for Http {
    type Response = http::Response<&'static str>;
    type Error = BoxError;
    type Future = BoxFut<http::Response<&'static str>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, _req: ()) -> Self::Future {
        let status = self.0.status;
        let fut = self.0.respond();
        Box::pin(async move {
            let name = fut.await?;
            Ok(http::Response::builder().status(status).body(name).unwrap())
        })
    }
}

/// Sends one request through `balance` and returns the answer.
///
/// Panics if the request takes more than a minute (on tokio's clock), so that a request
/// routed to a backend that never answers fails the test instead of hanging it.
pub async fn send<S, B>(balance: &mut B) -> Result<S, BoxError>
where
    B: Service<(), Response = S, Error = BoxError>,
{
    use tower::ServiceExt;
    tokio::time::timeout(Duration::from_secs(60), async {
        balance.ready().await?.call(()).await
    })
    .await
    .expect("request hung for a minute")
}

/// Starts `n` requests and returns their response futures, unpolled, so that each one
/// stays in flight until the test awaits or drops it.
pub async fn hold<B>(balance: &mut B, n: usize) -> Vec<B::Future>
where
    B: Service<(), Error = BoxError>,
{
    use tower::ServiceExt;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(balance.ready().await.expect("ready").call(()));
    }
    held
}

/// Picks an endpoint for each of `n` requests without waiting for responses: each response
/// future is dropped at once (cancelled), so in-flight counts stay as they were. Returns the
/// backends called, in order, as recorded by `log`.
pub async fn picks<B>(balance: &mut B, log: &CallLog, n: usize) -> Vec<&'static str>
where
    B: Service<(), Error = BoxError>,
{
    use tower::ServiceExt;
    let before = log.snapshot().len();
    for _ in 0..n {
        let ready = balance.ready().await.expect("ready");
        drop(ready.call(()));
    }
    log.snapshot()[before..].to_vec()
}

/// How long [`eventually`] waits for its condition before it fails the test: far longer
/// than any condition here takes on a loaded machine, so that it only turns a hang into a
/// failure and no assertion depends on it.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Waits (real clock) until `condition` holds, checking it every 5 ms, and returns how long
/// that took. Fails the test, saying it was waiting for `what`, after [`PATIENCE`].
///
/// For tests over real sockets, where tokio's paused clock cannot stand in: they wait for
/// what they need to have happened instead of sleeping for a while and hoping it has.
pub async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) -> Duration {
    let start = std::time::Instant::now();
    loop {
        if condition().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < PATIENCE,
            "still waiting for {what} after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Lets the balancer's background driver (and any other ready task) run.
pub async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

/// Per-key statistics of a balancer, as `(key, stat)` pairs in discovery order.
pub fn stat<K, S, P, C, T>(
    balance: &Balance<K, S, P, C, T>,
    f: impl Fn(&tower_lb::EndpointStats<K>) -> u64,
) -> Vec<(K, u64)>
where
    K: Clone,
    P: tower_lb::strategy::Strategy,
{
    balance
        .endpoints()
        .iter()
        .map(|e| (e.key.clone(), f(e)))
        .collect()
}

/// The keys of a balancer, in discovery order.
pub fn keys<K, S, P, C, T>(balance: &Balance<K, S, P, C, T>) -> Vec<K>
where
    K: Clone,
    P: tower_lb::strategy::Strategy,
{
    balance.endpoints().into_iter().map(|e| e.key).collect()
}

/// The stats of the endpoint with `key`.
pub fn stats_of<K, S, P, C, T>(
    balance: &Balance<K, S, P, C, T>,
    key: &K,
) -> tower_lb::EndpointStats<K>
where
    K: Clone + PartialEq + std::fmt::Debug,
    P: tower_lb::strategy::Strategy,
{
    balance
        .endpoints()
        .into_iter()
        .find(|e| &e.key == key)
        .unwrap_or_else(|| panic!("no endpoint {key:?}"))
}

// ------------------------------------------------------------------------------------------
// Real HTTP servers and clients (hyper, real sockets, real clock)
// ------------------------------------------------------------------------------------------

/// The status of a server that hangs: it answers no request until it is told otherwise.
pub const HANG: u16 = 0;

/// A hyper HTTP/1 server on 127.0.0.1 answering every request with a status that can change
/// (or hanging), and `"{addr} {path and query}"` as the body. Requests to `/health` are
/// probes; the others are counted as hits.
pub struct Server {
    pub addr: SocketAddr,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    pub async fn start(status: u16) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut server = Server {
            addr: listener.local_addr().unwrap(),
            status: Arc::new(AtomicU16::new(status)),
            hits: Arc::default(),
            shutdown: None,
            task: None,
        };
        server.serve(listener);
        server
    }

    fn serve(&mut self, listener: TcpListener) {
        let (tx, mut rx) = oneshot::channel::<()>();
        let (addr, status, hits) = (self.addr, self.status.clone(), self.hits.clone());
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let (status, hits) = (status.clone(), hits.clone());
                        connections.spawn(async move {
                            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                                answer(addr, req, status.clone(), hits.clone())
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                }
            }
            drop(listener);
            // Closes every open connection before the task ends.
            connections.shutdown().await;
        });
        self.shutdown = Some(tx);
        self.task = Some(task);
    }

    /// Answers with `status` from now on ([`HANG`]: holds every answer until it changes).
    pub fn set(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Requests received, not counting `/health` probes.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting, closes every connection, and waits until that is done. Returns a
    /// socket bound (not listening) to the old address, so that connections are refused and
    /// the port is not handed to another test while it lives.
    pub async fn stop(&mut self) -> TcpSocket {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
        let tombstone = TcpSocket::new_v4().unwrap();
        tombstone.set_reuseaddr(true).unwrap();
        tombstone.bind(self.addr).unwrap();
        tombstone
    }

    /// Listens again on the same address.
    pub fn restart(&mut self, tombstone: TcpSocket) {
        let listener = tombstone.listen(1024).unwrap();
        self.serve(listener);
    }
}

/// One request's answer from the server at `addr`.
async fn answer(
    addr: SocketAddr,
    req: Request<Incoming>,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/health" {
        hits.fetch_add(1, Ordering::SeqCst);
    }
    let mut code = status.load(Ordering::SeqCst);
    while code == HANG {
        tokio::time::sleep(Duration::from_millis(10)).await;
        code = status.load(Ordering::SeqCst);
    }
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    Ok(Response::builder()
        .status(code)
        .body(Full::new(Bytes::from(format!("{addr} {path}"))))
        .unwrap())
}

/// The client for one endpoint: the library's `HttpEndpoint` over a shared hyper-util
/// client.
pub type ToEndpoint = tower_lb::http::HttpEndpoint<Client<HttpConnector, Empty<Bytes>>>;

pub fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An endpoint per server, keyed by its address, all sharing one client.
pub fn endpoints(servers: &[&Server]) -> Vec<(SocketAddr, ToEndpoint)> {
    let client = client();
    servers
        .iter()
        .map(|s| (s.addr, ToEndpoint::from_addr(client.clone(), s.addr)))
        .collect()
}

/// Collects what a tracing fmt subscriber writes (`with_writer(move || captured.clone())`).
#[derive(Clone, Default)]
pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// The lines written since the last call.
    pub fn take(&self) -> Vec<String> {
        let bytes = std::mem::take(&mut *self.0.lock().unwrap());
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Serves `service` with hyper on 127.0.0.1 (HTTP/1).
pub fn serve<S, B>(listener: tokio::net::TcpListener, service: S)
where
    S: Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(service.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
}
