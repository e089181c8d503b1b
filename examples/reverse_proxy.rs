//! An HTTP reverse proxy that spreads requests over a group of upstream servers with
//! tower-lb: the Rust counterpart of an nginx `upstream` block.
//!
//! ```text
//! cargo run --release --example reverse_proxy
//! curl -i http://127.0.0.1:8080/        # run it a few times: watch `x-upstream` change
//! ```
//!
//! Without `--upstream`, the example starts three demo upstreams on 127.0.0.1:8000, 8001
//! and 8002, each answering every request with its own address (in the body and in an
//! `x-upstream` header), and a proxy on 127.0.0.1:8080 in front of them. It behaves much
//! like this nginx configuration:
//!
//! ```nginx
//! upstream app {
//!     random two least_conn;        # --strategy least-request (the default)
//!     server 127.0.0.1:8000;        # --upstream 127.0.0.1:8000 ...
//!     server 127.0.0.1:8001;        # (passive health: tower-lb's outlier detection,
//!     server 127.0.0.1:8002;        #  active health: a TCP probe every 2 s)
//!     keepalive 32;                 # pooled keep-alive connections to the upstreams
//! }
//!
//! server {
//!     listen 127.0.0.1:8080;        # --listen 127.0.0.1:8080
//!     location / {
//!         proxy_pass http://app;
//!         proxy_http_version 1.1;
//!         proxy_set_header Connection "";
//!         proxy_set_header Host $host;
//!         proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
//!         proxy_buffering off;      # bodies stream through in both directions
//!     }
//! }
//! ```
//!
//! | `--strategy` | tower-lb strategy | nginx |
//! |---|---|---|
//! | `round-robin` | [`RoundRobin`] (smooth weighted) | the default (no directive) |
//! | `random` | [`Random`] | `random;` |
//! | `least-request` | [`LeastRequest`] (power of two choices) | `random two least_conn;` |
//! | `peak-ewma` | [`PeakEwma`] (latency and load) | none (NGINX Plus has `least_time`) |
//! | `ring-hash` | [`RingHash`] (ketama, nginx-compatible placement) | `hash $key consistent;` |
//! | `maglev` | [`Maglev`] | none |
//! | `rendezvous` | [`Rendezvous`] (highest random weight) | none |
//!
//! The hashing strategies route by `--hash-key` (default `path`): `header:NAME`,
//! `cookie:NAME`, `query:NAME`, `path`, `path-query` (nginx's `$request_uri`) or `client-ip`
//! (nginx's `$remote_addr`). `--bounded-load C` caps each upstream of `ring-hash` or `maglev`
//! at C times the average load (Google's consistent hashing with bounded loads; 1.25 is the
//! usual value).
//!
//! Health, on by default: each upstream is probed with a TCP connect every 2 s (rise 2,
//! fall 3, HAProxy's defaults), and outlier detection ejects an upstream after 5 failed
//! requests in a row, or a poor success rate (Envoy's defaults); it comes back on probation.
//! Every change of an upstream's health is printed as it happens.
//!
//! How the pieces fit:
//!
//! - Each upstream is an [`Upstream`] service: a clone of one shared hyper-util client (one
//!   keep-alive pool) plus the upstream's address, which it writes into the request URI.
//! - A [`tower_lb::Balance`] over a static list of those services picks the upstream for
//!   each request. The strategy is chosen at run time, so the balancer is type-erased into
//!   a [`BoxCloneSyncService`]; each request sends through its own cheap clone.
//! - The proxy front end is a hyper 1 HTTP/1 server. It removes hop-by-hop headers, appends
//!   `x-forwarded-for`, and answers 503 when the balancer has no upstream to offer
//!   ([`tower_lb::error::Unavailable`]) and 502 when talking to the chosen upstream fails.
//! - Every 5 seconds (when there was traffic) it prints each upstream's share of the
//!   requests, read from [`Balance::endpoints`](tower_lb::Balance::endpoints).
//!
//! Flags:
//!
//! ```text
//! --upstream ADDR     proxy to this IP:PORT (repeatable); no demo upstreams are started
//! --strategy NAME     round-robin | random | least-request | peak-ewma
//!                     | ring-hash | maglev | rendezvous
//! --hash-key KEY      what hashing strategies hash: header:NAME | cookie:NAME | query:NAME
//!                     | path | path-query | client-ip (default path)
//! --bounded-load C    cap ring-hash and maglev upstreams at C × the average load
//! --listen ADDR       where the proxy listens (default 127.0.0.1:8080)
//! --self-test N       send N requests through the proxy, print the shares and exit
//!                     (status 0 when all N got 200 OK, 1 otherwise)
//! ```
//!
//! A request keeps counting as in flight until its response body has been streamed to the
//! client (`tower_lb::http::OnBodyEnd`), like nginx's connection count.
//!
//! What this example does not do that nginx does: retry a failed request on the next
//! upstream (`proxy_next_upstream`), upgrade connections (WebSocket), speak HTTP/2 or TLS,
//! or apply timeouts other than the connect timeout.

use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use http::header::{CONNECTION, CONTENT_TYPE};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};
use tower_lb::discover;
use tower_lb::error::{BoxError, BuildError, Unavailable};
use tower_lb::health::{ActiveChecks, OutlierDetection, TcpProbe};
use tower_lb::http::key::HttpKey;
use tower_lb::key::{NoKey, RequestKey};
use tower_lb::strategy::{
    BoundedLoad, LeastRequest, Maglev, PeakEwma, Random, Rendezvous, RingHash, RoundRobin, Strategy,
};
use tower_lb::{EndpointStats, Monitor};

/// The demo upstreams started when no `--upstream` is given.
const DEMO_UPSTREAMS: [&str; 3] = ["127.0.0.1:8000", "127.0.0.1:8001", "127.0.0.1:8002"];
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// How often the share table is printed (when there was traffic since the last one).
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// How long to wait for a TCP connection to an upstream (nginx: `proxy_connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a request waits for an upstream when all are down before it gets a 503.
const FAIL_FAST: Duration = Duration::from_secs(1);
/// Idle keep-alive connections kept per upstream (nginx: `keepalive`).
const KEEPALIVE: usize = 32;
/// Requests the self-test keeps in flight at once, so that load-aware strategies see load.
const SELF_TEST_CONCURRENCY: usize = 16;

/// Headers that describe one connection rather than the message, so a proxy must not
/// forward them (RFC 9110, section 7.6.1). Headers named in `Connection` are removed too.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

const USAGE: &str = "\
usage: reverse_proxy [--upstream ADDR]... [--strategy NAME] [--hash-key KEY]
                     [--bounded-load C] [--listen ADDR] [--self-test N]

  --upstream ADDR   upstream IP:PORT to proxy to; repeat for more. Without it, three demo
                    upstreams are started on 127.0.0.1:8000, 8001 and 8002.
  --strategy NAME   round-robin | random | least-request | peak-ewma | ring-hash | maglev
                    | rendezvous (default least-request)
  --hash-key KEY    what ring-hash, maglev and rendezvous hash: header:NAME | cookie:NAME
                    | query:NAME | path | path-query | client-ip (default path)
  --bounded-load C  with ring-hash or maglev: pass over upstreams with more than C times
                    the average number of requests in flight (C >= 1, e.g. 1.25)
  --listen ADDR     IP:PORT the proxy listens on (default 127.0.0.1:8080)
  --self-test N     send N requests through the proxy, print each upstream's share, and exit
                    with status 0 if all of them got 200 OK (1 otherwise)
  -h, --help        print this help
";

// ----------------------------------------------------------------------------------------
// Command line
// ----------------------------------------------------------------------------------------

/// What the command line asks for.
enum Command {
    Run(Options),
    Help,
}

struct Options {
    upstreams: Vec<SocketAddr>,
    strategy: StrategyKind,
    hash_key: HttpKey,
    bounded_load: Option<f64>,
    listen: SocketAddr,
    self_test: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrategyKind {
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
    fn hashes(self) -> bool {
        matches!(
            self,
            StrategyKind::RingHash | StrategyKind::Maglev | StrategyKind::Rendezvous
        )
    }
}

impl FromStr for StrategyKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "round-robin" => Ok(StrategyKind::RoundRobin),
            "random" => Ok(StrategyKind::Random),
            "least-request" => Ok(StrategyKind::LeastRequest),
            "peak-ewma" => Ok(StrategyKind::PeakEwma),
            "ring-hash" => Ok(StrategyKind::RingHash),
            "maglev" => Ok(StrategyKind::Maglev),
            "rendezvous" => Ok(StrategyKind::Rendezvous),
            _ => Err(format!(
                "unknown strategy `{name}` (expected round-robin, random, least-request, \
                 peak-ewma, ring-hash, maglev or rendezvous)"
            )),
        }
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

/// Parses the arguments after the program name. Accepts `--flag VALUE` and `--flag=VALUE`.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut options = Options {
        upstreams: Vec::new(),
        strategy: StrategyKind::LeastRequest,
        hash_key: HttpKey::Path,
        bounded_load: None,
        listen: parse_addr("--listen", DEFAULT_LISTEN)?,
        self_test: None,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg, None),
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--upstream" => {
                let value = flag_value(&flag, inline, &mut args)?;
                options.upstreams.push(parse_addr(&flag, &value)?);
            }
            "--strategy" => {
                let value = flag_value(&flag, inline, &mut args)?;
                options.strategy = value.parse()?;
            }
            "--hash-key" => {
                let value = flag_value(&flag, inline, &mut args)?;
                options.hash_key = value.parse().map_err(|e| format!("{flag}: {e}"))?;
            }
            "--bounded-load" => {
                let value = flag_value(&flag, inline, &mut args)?;
                match value.parse::<f64>() {
                    Ok(c) if c.is_finite() && c >= 1.0 => options.bounded_load = Some(c),
                    _ => return Err(format!("{flag}: `{value}` is not a number >= 1")),
                }
            }
            "--listen" => {
                let value = flag_value(&flag, inline, &mut args)?;
                options.listen = parse_addr(&flag, &value)?;
            }
            "--self-test" => {
                let value = flag_value(&flag, inline, &mut args)?;
                options.self_test = Some(parse_count(&flag, &value)?);
            }
            _ => return Err(format!("unknown argument `{flag}`")),
        }
    }
    if options.bounded_load.is_some()
        && !matches!(
            options.strategy,
            StrategyKind::RingHash | StrategyKind::Maglev
        )
    {
        return Err("--bounded-load needs --strategy ring-hash or maglev".into());
    }
    Ok(Command::Run(options))
}

/// The value of `flag`: the part after `=`, or else the next argument.
fn flag_value(
    flag: &str,
    inline: Option<String>,
    rest: &mut impl Iterator<Item = String>,
) -> Result<String, String> {
    inline
        .or_else(|| rest.next())
        .ok_or_else(|| format!("{flag} needs a value"))
}

fn parse_addr(flag: &str, value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: `{value}` is not an IP:PORT address"))
}

fn parse_count(flag: &str, value: &str) -> Result<usize, String> {
    match value.parse() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag}: `{value}` is not a positive number")),
    }
}

// ----------------------------------------------------------------------------------------
// Startup
// ----------------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(options)) => options,
        Ok(Command::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("reverse_proxy: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(options).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("reverse_proxy: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the upstreams (unless given), the balancer and the proxy, then either runs the
/// self-test or serves until Ctrl-C.
async fn run(options: Options) -> Result<ExitCode, BoxError> {
    let upstreams = if options.upstreams.is_empty() {
        start_demo_upstreams().await?
    } else {
        options.upstreams.clone()
    };
    let balancer = Balancer::new(&options, &upstreams, &upstream_client())?;

    let listener = bind(options.listen).await?;
    let proxy_addr = listener.local_addr()?;
    let upstream_service = balancer.service.clone();
    tokio::spawn(serve(listener, move |client_addr| {
        let upstream_service = upstream_service.clone();
        service_fn(move |request| forward(upstream_service.clone(), client_addr, request))
    }));
    let hashing = if options.strategy.hashes() {
        format!(" by {}", options.hash_key)
    } else {
        String::new()
    };
    println!(
        "proxy on http://{proxy_addr} balancing with {}{hashing} over {}",
        options.strategy,
        join(&upstreams)
    );

    if let Some(requests) = options.self_test {
        // Bounded load moves keys off busy upstreams by design, so affinity is checked
        // only without it.
        let affinity = options.strategy.hashes()
            && options.hash_key == HttpKey::Path
            && options.bounded_load.is_none();
        return Ok(self_test(loopback(proxy_addr), requests, &balancer, affinity).await);
    }
    tokio::spawn(report_periodically(balancer.clone()));
    tokio::signal::ctrl_c().await?;
    println!(
        "\nshutting down; final shares:\n{}",
        render_table(&balancer.endpoints())
    );
    Ok(ExitCode::SUCCESS)
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, BoxError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| format!("cannot listen on {addr}: {error}").into())
}

/// The client shared by every upstream: one keep-alive pool for all of them.
fn upstream_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(KEEPALIVE)
        .build(connector)
}

/// An unspecified listen address (0.0.0.0 or ::) reached through loopback.
fn loopback(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

fn join(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

// ----------------------------------------------------------------------------------------
// The balancer
// ----------------------------------------------------------------------------------------

type HttpClient = Client<HttpConnector, Incoming>;

/// A request stops counting as in flight when its response body has been streamed.
type Completion = tower_lb::http::OnBodyEnd;
type UpstreamBody = tower_lb::http::TrackedBody<Incoming>;

/// A balancer with its strategy type erased.
type BalancedService = BoxCloneSyncService<Request<Incoming>, Response<UpstreamBody>, BoxError>;

/// The balancer as the proxy uses it: a service to send through, and its statistics.
#[derive(Clone)]
struct Balancer {
    service: BalancedService,
    stats: Monitor<SocketAddr>,
}

impl Balancer {
    fn new(
        options: &Options,
        upstreams: &[SocketAddr],
        client: &HttpClient,
    ) -> Result<Self, BoxError> {
        let endpoints = upstreams
            .iter()
            .map(|&addr| Ok((addr, Upstream::new(addr, client.clone())?)))
            .collect::<Result<Vec<_>, BoxError>>()?;
        let key = options.hash_key.clone();
        let balancer = match (options.strategy, options.bounded_load) {
            (StrategyKind::RoundRobin, _) => Self::build(RoundRobin::new(), NoKey, endpoints),
            (StrategyKind::Random, _) => Self::build(Random::new(), NoKey, endpoints),
            (StrategyKind::LeastRequest, _) => Self::build(LeastRequest::new(), NoKey, endpoints),
            (StrategyKind::PeakEwma, _) => Self::build(PeakEwma::new(), NoKey, endpoints),
            (StrategyKind::RingHash, None) => Self::build(RingHash::new(), key, endpoints),
            (StrategyKind::RingHash, Some(c)) => {
                Self::build(BoundedLoad::new(RingHash::new()).factor(c), key, endpoints)
            }
            (StrategyKind::Maglev, None) => Self::build(Maglev::new(), key, endpoints),
            (StrategyKind::Maglev, Some(c)) => {
                Self::build(BoundedLoad::new(Maglev::new()).factor(c), key, endpoints)
            }
            (StrategyKind::Rendezvous, _) => Self::build(Rendezvous::new(), key, endpoints),
        };
        Ok(balancer?)
    }

    /// Builds a tower-lb balancer with `strategy` (routing by `key`, for the hashing
    /// strategies) over `endpoints`, with active health checks and outlier detection, and
    /// erases its type.
    fn build<P: Strategy, H: RequestKey<Request<Incoming>>>(
        strategy: P,
        key: H,
        endpoints: Vec<(SocketAddr, Upstream)>,
    ) -> Result<Self, BuildError> {
        let balance = tower_lb::Builder::new()
            .strategy(strategy)
            .request_key(key)
            .track_completion(Completion::default())
            .fail_fast(FAIL_FAST)
            .active_checks(TcpProbe::new(), ActiveChecks::new())
            .outlier_detection(OutlierDetection::new())
            .build(discover::static_list(endpoints))?;
        // Print every change of an upstream's health as it happens.
        let mut events = balance.health_events();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                // The first probe answer of a healthy upstream is routine; report the rest.
                if event.to != event.from || event.to != tower_lb::health::Health::Healthy {
                    println!(
                        "health: {} {} -> {} ({})",
                        event.key, event.from, event.to, event.reason
                    );
                }
            }
        });
        Ok(Balancer {
            stats: balance.monitor(),
            service: BoxCloneSyncService::new(balance),
        })
    }

    fn endpoints(&self) -> Vec<EndpointStats<SocketAddr>> {
        self.stats.endpoints()
    }
}

// ----------------------------------------------------------------------------------------
// One upstream
// ----------------------------------------------------------------------------------------

/// The service that sends requests to one upstream: it points the request URI at the
/// upstream and sends it with the shared client.
#[derive(Clone)]
struct Upstream {
    authority: Authority,
    client: HttpClient,
}

impl Upstream {
    fn new(addr: SocketAddr, client: HttpClient) -> Result<Self, BoxError> {
        Ok(Upstream {
            authority: Authority::try_from(addr.to_string())?,
            client,
        })
    }
}

impl Service<Request<Incoming>> for Upstream {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Incoming>, BoxError>>;

    /// Always ready: the client pools connections, and the balancer's health checks keep
    /// requests away from upstreams that are down.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        let sent = upstream_uri(&self.authority, request.uri()).map(|uri| {
            *request.uri_mut() = uri;
            self.client.request(request)
        });
        Box::pin(async move { Ok(sent?.await?) })
    }
}

/// `http://{upstream}{original path and query}`.
fn upstream_uri(upstream: &Authority, original: &Uri) -> Result<Uri, http::Error> {
    let path_and_query = original.path_and_query().map_or("/", |pq| pq.as_str());
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(upstream.clone())
        .path_and_query(path_and_query)
        .build()
}

// ----------------------------------------------------------------------------------------
// The proxy
// ----------------------------------------------------------------------------------------

/// What the proxy answers with: the upstream's body, or its own error text.
type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// Forwards one request through the balancer and turns its result into the response.
async fn forward(
    upstreams: BalancedService,
    client: SocketAddr,
    mut request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    strip_hop_by_hop(request.headers_mut());
    append_forwarded_for(request.headers_mut(), client.ip());
    // The `client-ip` hash key reads the peer address from the extensions.
    request.extensions_mut().insert(client);
    let response = match upstreams.oneshot(request).await {
        Ok(response) => {
            let mut response = response.map(Either::Left);
            strip_hop_by_hop(response.headers_mut());
            response
        }
        Err(error) => error_response(&error),
    };
    Ok(response)
}

/// Removes the hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in &named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Appends the client's address to `x-forwarded-for` (nginx: `$proxy_add_x_forwarded_for`).
fn append_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    let mut chain: Vec<String> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .map(str::to_owned)
        .collect();
    chain.push(client.to_string());
    if let Ok(value) = HeaderValue::try_from(chain.join(", ")) {
        headers.insert("x-forwarded-for", value);
    }
}

/// 503 when the balancer had no upstream to offer, 502 when the chosen upstream failed.
fn error_response(error: &BoxError) -> Response<ProxyBody> {
    let (status, reason) = match error.downcast_ref::<Unavailable>() {
        Some(unavailable) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no upstream is available: {unavailable}"),
        ),
        None => (
            StatusCode::BAD_GATEWAY,
            format!(
                "the upstream request failed: {}",
                error_chain(error.as_ref())
            ),
        ),
    };
    eprintln!("proxy: {status}: {reason}");
    let mut response = Response::new(Either::Right(Full::from(format!("{status}\n{reason}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// An error and its sources, as `outer: inner: innermost`.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
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
// Servers: the proxy front end and the demo upstreams
// ----------------------------------------------------------------------------------------

/// Accepts HTTP/1 connections forever, serving each with the service `make_service` returns
/// for the client's address.
async fn serve<M, S, B>(listener: TcpListener, make_service: M)
where
    M: Fn(SocketAddr) -> S,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Usually out of file descriptors: back off instead of spinning.
                eprintln!("accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = make_service(client);
        tokio::spawn(async move {
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                eprintln!("connection from {client}: {error}");
            }
        });
    }
}

/// Starts the three demo upstreams and returns their addresses.
async fn start_demo_upstreams() -> Result<Vec<SocketAddr>, BoxError> {
    let mut addrs = Vec::new();
    for addr in DEMO_UPSTREAMS {
        let listener = bind(addr.parse()?).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(serve(listener, move |_client| {
            service_fn(move |request| demo_upstream(addr, request))
        }));
        addrs.push(addr);
    }
    Ok(addrs)
}

/// A demo upstream: answers every request with its own address, and says what it received
/// so that the forwarded headers and the streamed request body can be checked with curl.
async fn demo_upstream(
    addr: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let forwarded_for = parts
        .headers
        .get("x-forwarded-for")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let received = match count_body_bytes(body).await {
        Ok(bytes) => format!("{bytes} body bytes"),
        Err(error) => format!("body error: {error}"),
    };
    let text = format!(
        "hello from upstream {addr} ({} {}, {received}, x-forwarded-for: {forwarded_for})\n",
        parts.method, parts.uri
    );
    let mut response = Response::new(Full::from(text));
    if let Ok(value) = HeaderValue::try_from(addr.to_string()) {
        response.headers_mut().insert("x-upstream", value);
    }
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

// ----------------------------------------------------------------------------------------
// Statistics
// ----------------------------------------------------------------------------------------

/// Prints the share table every [`REPORT_EVERY`], when there was traffic since the last one.
async fn report_periodically(balancer: Balancer) {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(REPORT_EVERY);
    ticker.tick().await; // the first tick is immediate
    let mut last = Activity::default();
    loop {
        ticker.tick().await;
        let stats = balancer.endpoints();
        let now = Activity::of(&stats);
        if now != last {
            let secs = started.elapsed().as_secs();
            println!("[{secs:>4}s]\n{}", render_table(&stats));
            last = now;
        }
    }
}

/// Totals that change whenever a request finishes or an upstream is skipped.
#[derive(Debug, Default, PartialEq, Eq)]
struct Activity {
    completed: u64,
    failures: u64,
    cancelled: u64,
}

impl Activity {
    fn of(stats: &[EndpointStats<SocketAddr>]) -> Self {
        stats.iter().fold(Activity::default(), |sum, s| Activity {
            completed: sum.completed + s.completed,
            failures: sum.failures + s.failures,
            cancelled: sum.cancelled + s.cancelled,
        })
    }
}

/// One line per upstream: requests completed, share of all completed requests, failures,
/// requests in flight and (for peak-EWMA) the latency estimate.
///
/// Failures are errors and 5xx or 429 responses, plus every time the balancer skipped the
/// upstream because it was marked down, so a dead upstream can show more failures than
/// requests.
fn render_table(stats: &[EndpointStats<SocketAddr>]) -> String {
    let total: u64 = stats.iter().map(|s| s.completed).sum();
    let header = format!(
        "{:<24} {:>9} {:>7} {:>9} {:>9} {:>9}",
        "upstream", "requests", "share", "failures", "in flight", "latency"
    );
    let rows = stats.iter().map(|s| {
        let share = if total == 0 {
            0.0
        } else {
            100.0 * s.completed as f64 / total as f64
        };
        let latency = s.latency.map_or_else(
            || "-".to_owned(),
            |l| format!("{:.2}ms", l.as_secs_f64() * 1e3),
        );
        format!(
            "{:<24} {:>9} {:>6.1}% {:>9} {:>9} {:>9}",
            s.key.to_string(),
            s.completed,
            share,
            s.failures,
            s.in_flight,
            latency
        )
    });
    std::iter::once(header)
        .chain(rows)
        .collect::<Vec<_>>()
        .join("\n")
}

// ----------------------------------------------------------------------------------------
// Self-test
// ----------------------------------------------------------------------------------------

/// Sends `requests` GETs through the proxy at `proxy`, prints the shares, and returns
/// success if every one was answered 200 OK.
///
/// With `affinity` (a hashing strategy keyed by path), every path is requested twice, and
/// both answers must come from the same upstream.
async fn self_test(
    proxy: SocketAddr,
    requests: usize,
    balancer: &Balancer,
    affinity: bool,
) -> ExitCode {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let path_of = |i: usize| if affinity { i / 2 } else { i };
    let results: Vec<(usize, Result<Answer, BoxError>)> = futures::stream::iter(0..requests)
        .map(|i| {
            let client = &client;
            async move {
                let path = path_of(i);
                (path, self_test_request(client, proxy, path).await)
            }
        })
        .buffer_unordered(SELF_TEST_CONCURRENCY)
        .collect()
        .await;

    let ok = results
        .iter()
        .filter(|(_, r)| matches!(r, Ok((StatusCode::OK, _))))
        .count();
    for (_, failure) in results
        .iter()
        .filter(|(_, r)| !matches!(r, Ok((StatusCode::OK, _))))
        .take(5)
    {
        match failure {
            Ok((status, _)) => eprintln!("self-test: got {status}"),
            Err(error) => eprintln!("self-test: {}", error_chain(error.as_ref())),
        }
    }
    let mut moved = 0;
    if affinity {
        let mut served_by: std::collections::HashMap<usize, &str> = Default::default();
        for (path, result) in &results {
            if let Ok((_, upstream)) = result {
                if *served_by.entry(*path).or_insert(upstream) != upstream.as_str() {
                    moved += 1;
                }
            }
        }
        println!(
            "self-test: {moved} of {} paths answered by two upstreams",
            served_by.len()
        );
    }
    let stats = balancer.endpoints();
    println!("{}", render_table(&stats));
    for idle in stats.iter().filter(|s| s.completed == 0) {
        println!("note: upstream {} got no requests", idle.key);
    }
    println!("self-test: {ok} of {requests} requests answered 200 OK");
    if ok == requests && moved == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A self-test answer: its status and the upstream that sent it.
type Answer = (StatusCode, String);

/// One self-test request: its status and the upstream that answered (`x-upstream`). The
/// body is read to the end so that it streams through.
async fn self_test_request(
    client: &Client<HttpConnector, Empty<Bytes>>,
    proxy: SocketAddr,
    path: usize,
) -> Result<Answer, BoxError> {
    let uri: Uri = format!("http://{proxy}/self-test/{path}").parse()?;
    let response = client.get(uri).await?;
    let status = response.status();
    let upstream = response
        .headers()
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    response.into_body().collect().await?;
    Ok((status, upstream))
}
