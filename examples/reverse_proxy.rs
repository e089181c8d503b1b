//! An HTTP reverse proxy that spreads requests over a group of upstream servers with
//! tower-lb: the Rust counterpart of an nginx `upstream` block, in production shape.
//!
//! ```text
//! cargo run --release --example reverse_proxy
//! curl -i http://127.0.0.1:8080/        # run it a few times: watch `x-upstream` change
//! cargo run --release --example reverse_proxy -- --config examples/reverse_proxy.toml
//! ```
//!
//! Without `--upstream` or `--config`, the example starts three demo upstreams on
//! 127.0.0.1:8000, 8001 and 8002, each answering every request with its own address (in the
//! body and in an `x-upstream` header), and a proxy on 127.0.0.1:8080 in front of them. It
//! behaves much like this nginx configuration:
//!
//! ```nginx
//! upstream app {
//!     random two least_conn;        # strategy = "least-request" (the default)
//!     server 127.0.0.1:8000;        # [[upstream.servers]] address = "127.0.0.1:8000"
//!     server 127.0.0.1:8001;
//!     server 127.0.0.1:8002;
//!     keepalive 64;                 # upstream.keepalive (per worker, all upstreams)
//! }
//! server {
//!     listen 127.0.0.1:8080;        # listen
//!     client_header_timeout 10s;    # limits.header_read_timeout
//!     client_body_timeout 60s;      # limits.body_read_timeout
//!     send_timeout 60s;             # limits.send_timeout
//!     location / {
//!         proxy_pass http://app;
//!         proxy_http_version 1.1;
//!         proxy_set_header Connection "";
//!         proxy_set_header Host $host;                  # upstream.host = "pass"
//!         proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
//!         proxy_set_header X-Forwarded-Proto $scheme;
//!         proxy_connect_timeout 2s;                     # timeouts.connect
//!         proxy_read_timeout 60s;                       # timeouts.request
//!         proxy_next_upstream error; proxy_next_upstream_tries 3;  # retry.attempts
//!         proxy_buffering off;      # bodies stream through in both directions
//!     }
//! }
//! ```
//!
//! `examples/reverse_proxy.toml` shows every setting of the config file; the proxy itself is
//! in `examples/reverse_proxy/`, one file per concept, from `proxy.rs` (shared with the tests
//! in `tests/proxy_*.rs`).
//!
//! What it does:
//!
//! - HTTP/1.1 to clients; HTTP/1.1 or h2c (`upstream.protocol`) to the upstreams, with a
//!   keep-alive pool per worker thread (at most `upstream.keepalive` idle connections over
//!   all upstreams, as nginx's `keepalive`). Bodies stream in both directions.
//! - Hop-by-hop headers and header names with `_` are removed; `x-forwarded-for` and
//!   `x-forwarded-proto` are added; Host is the client's (`pass`) or the upstream's
//!   (`upstream`). The upstream address is always a configured one, whatever the Host
//!   header or an absolute URI say.
//! - Requests nginx refuses are refused (400: no or two Hosts, a Host that is no host
//!   name, a lowercase method, `*`, `..` segments; 405: `TRACE`, `CONNECT`); see `rules.rs`.
//! - 502 when the upstream fails, 503 when no upstream is available, 504 on connect or
//!   request timeout, each with a generic plain-text reason (the details go to the log).
//!   The request timeout is each upstream's, inside the balancer: a timeout counts as that
//!   upstream's failure, and an upstream that never answers is ejected.
//! - A request body the client aborts gets no answer, a malformed one 400, one that stalls
//!   for `limits.body_read_timeout` 408; none of them counts against the upstream
//!   (`tower_lb::http::ClientBody`). A client that takes no part of an answer for
//!   `limits.send_timeout` is disconnected.
//! - An idempotent request that fails before it was sent (connection refused, or a pooled
//!   connection closed) is retried through the balancer, within `retry.attempts` and a
//!   budget (20 % of requests plus 10 per second), so it is not lost. Under a hashing
//!   strategy the retry goes to the next upstream in the key's order.
//! - With every upstream down, requests still try them (fail open, then 502, like nginx);
//!   `health.fail_closed = true` answers 503 instead.
//! - Requests with both Content-Length and Transfer-Encoding get 400; request heads larger
//!   than `limits.max_header_bytes` get 431; a client that does not send its head within
//!   `limits.header_read_timeout` is disconnected.
//! - Active health checks (TCP connect every 2 s, rise 2, fall 3) and outlier detection (5
//!   failures in a row eject an upstream), on by default; every change is printed. A
//!   restarted upstream serves again at the first probe that reaches it.
//! - An admin listener on 127.0.0.1:9901 (`--admin ADDR|off`; `admin.rs`): `/status`, a
//!   live page in the spirit of HAProxy's stats page, `/status.json`, and `/metrics` in
//!   Prometheus format (with `--features metrics`). Off during `--self-test` unless given.
//! - Ctrl-C stops accepting, lets in-flight requests finish (`timeouts.drain`), and exits.
//! - `workers` threads (default: one per CPU), each with its own listening socket
//!   (`SO_REUSEPORT`) and upstream connections, like nginx's worker processes.
//! - A fast path for plain requests (HTTP/1.1, no body, `GET`, `HEAD`, `OPTIONS`,
//!   `DELETE`): parsed in place and relayed without hyper, one task per client connection
//!   for both legs; any other request hands the connection to hyper (`fast.rs`). Both
//!   paths re-frame a body that the upstream's close delimits as chunked (so that a client
//!   sees when it was cut) and drop trailers.
//!
//! | `--strategy` | tower-lb strategy | nginx |
//! |---|---|---|
//! | `round-robin` | [`RoundRobin`](tower_lb::strategy::RoundRobin) (smooth weighted) | the default (no directive) |
//! | `random` | [`Random`](tower_lb::strategy::Random) | `random;` |
//! | `least-request` | [`LeastRequest`](tower_lb::strategy::LeastRequest) (power of two choices) | `random two least_conn;` |
//! | `peak-ewma` | [`PeakEwma`](tower_lb::strategy::PeakEwma) (latency and load) | none (NGINX Plus has `least_time`) |
//! | `ring-hash` | [`RingHash`](tower_lb::strategy::RingHash) (ketama, nginx-compatible placement) | `hash $key consistent;` |
//! | `maglev` | [`Maglev`](tower_lb::strategy::Maglev) | none |
//! | `rendezvous` | [`Rendezvous`](tower_lb::strategy::Rendezvous) (highest random weight) | none |
//!
//! The hashing strategies route by `--hash-key` (default `path`): `header:NAME`,
//! `cookie:NAME`, `query:NAME`, `path`, `path-query` (nginx's `$request_uri`) or `client-ip`
//! (nginx's `$remote_addr`). `--bounded-load C` caps each upstream of `ring-hash` or `maglev`
//! at C times the average load.
//!
//! A request keeps counting as in flight until its response body has been streamed to the
//! client (`tower_lb::http::OnBodyEnd`), like nginx's connection count.
//!
//! What this example does not do that nginx does: TLS, WebSocket upgrades, HTTP/2 to
//! clients, retries of requests whose body was already sent, caching, or a timeout between
//! two reads of an upstream's response body (the request timeout bounds the head).

#[path = "reverse_proxy/admin.rs"]
mod admin;
#[allow(dead_code)]
#[path = "reverse_proxy/proxy.rs"]
mod proxy;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_lb::error::BoxError;
use tower_lb::http::key::HttpKey;
use tower_lb::strategy::UnknownStrategy;
use tower_lb::EndpointStats;

use proxy::{error_chain, Config, Protocol, Server};

/// The demo upstreams started when no upstream is configured.
const DEMO_UPSTREAMS: [&str; 3] = ["127.0.0.1:8000", "127.0.0.1:8001", "127.0.0.1:8002"];
/// How often the share table is printed (when there was traffic since the last one).
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// Requests the self-test keeps in flight at once, so that load-aware strategies see load.
const SELF_TEST_CONCURRENCY: usize = 16;

const USAGE: &str = "\
usage: reverse_proxy [--config FILE] [--upstream ADDR]... [--strategy NAME] [--hash-key KEY]
                     [--bounded-load C] [--listen ADDR] [--workers N] [--h2c]
                     [--admin ADDR|off] [--self-test N] [--upstreams-only]

  --config FILE     read the settings from a TOML file (see examples/reverse_proxy.toml);
                    the flags below override it
  --upstream ADDR   upstream IP:PORT to proxy to; repeat for more. Without it (and without
                    servers in the config), three demo upstreams are started on
                    127.0.0.1:8000, 8001 and 8002.
  --strategy NAME   round-robin | random | least-request | peak-ewma | ring-hash | maglev
                    | rendezvous (default least-request)
  --hash-key KEY    what ring-hash, maglev and rendezvous hash: header:NAME | cookie:NAME
                    | query:NAME | path | path-query | client-ip (default path)
  --bounded-load C  with ring-hash or maglev: pass over upstreams with more than C times
                    the average number of requests in flight (C >= 1, e.g. 1.25)
  --listen ADDR     IP:PORT the proxy listens on (default 127.0.0.1:8080)
  --workers N       proxy worker threads (default: one per CPU)
  --h2c             speak HTTP/2 over cleartext to the upstreams
  --admin ADDR|off  the admin listener: /status (live status page), /status.json and
                    /metrics (Prometheus; with --features metrics) (default 127.0.0.1:9901;
                    off during --self-test unless given)
  --self-test N     send N requests through the proxy, print each upstream's share, and exit
                    with status 0 if all of them got 200 OK (1 otherwise)
  --upstreams-only  start only the demo upstreams (for benchmarks) and wait for Ctrl-C
  -h, --help        print this help
";

// ----------------------------------------------------------------------------------------
// Command line
// ----------------------------------------------------------------------------------------

/// What the command line asks for.
enum Command {
    Run(Box<Options>),
    Help,
}

struct Options {
    config: Config,
    /// `--admin` was given.
    admin_flag: bool,
    self_test: Option<usize>,
    upstreams_only: bool,
}

/// Parses the arguments after the program name. Accepts `--flag VALUE` and `--flag=VALUE`.
/// `--config` is read first, wherever it is, so that the other flags override it.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut pairs = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg, None),
        };
        let value = match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--h2c" | "--upstreams-only" => None,
            _ => Some(flag_value(&flag, inline, &mut args)?),
        };
        pairs.push((flag, value));
    }
    let mut config = Config::default();
    for (flag, value) in &pairs {
        if flag == "--config" {
            let path = value.as_deref().unwrap_or_default();
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("--config {path}: {e}"))?;
            config = Config::from_toml(&text).map_err(|e| format!("--config {path}: {e}"))?;
        }
    }
    let mut options = Options {
        config,
        admin_flag: false,
        self_test: None,
        upstreams_only: false,
    };
    let mut flag_upstreams = Vec::new();
    for (flag, value) in pairs {
        let value = value.unwrap_or_default();
        let upstream = &mut options.config.upstream;
        match flag.as_str() {
            "--config" => {}
            "--upstream" => flag_upstreams.push(Server {
                address: parse_addr(&flag, &value)?,
                weight: 1,
            }),
            "--strategy" => {
                upstream.strategy = value.parse().map_err(|e: UnknownStrategy| e.to_string())?
            }
            "--hash-key" => {
                upstream.hash_key = value
                    .parse::<HttpKey>()
                    .map_err(|e| format!("{flag}: {e}"))?
            }
            "--bounded-load" => match value.parse::<f64>() {
                Ok(c) if c.is_finite() && c >= 1.0 => upstream.bounded_load = Some(c),
                _ => return Err(format!("{flag}: `{value}` is not a number >= 1")),
            },
            "--listen" => options.config.listen = parse_addr(&flag, &value)?,
            "--workers" => options.config.workers = parse_count(&flag, &value)?,
            "--h2c" => upstream.protocol = Protocol::H2c,
            "--admin" => {
                options.admin_flag = true;
                options.config.admin.enabled = value != "off";
                if value != "off" {
                    options.config.admin.listen = parse_addr(&flag, &value)?;
                }
            }
            "--self-test" => options.self_test = Some(parse_count(&flag, &value)?),
            "--upstreams-only" => options.upstreams_only = true,
            _ => return Err(format!("unknown argument `{flag}`")),
        }
    }
    if !flag_upstreams.is_empty() {
        options.config.upstream.servers = flag_upstreams;
    }
    options.config.check()?;
    Ok(Command::Run(Box::new(options)))
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

fn main() -> ExitCode {
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
    // The balancer's background task, the demo upstreams and the self-test client run on
    // this runtime; the proxy's workers have their own threads.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("reverse_proxy: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("reverse_proxy: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the upstreams (unless configured), the balancer and the proxy, then either runs
/// the self-test or serves until Ctrl-C.
async fn run(options: Box<Options>) -> Result<ExitCode, BoxError> {
    let mut config = options.config;
    let mut demo = Vec::new();
    if config.upstream.servers.is_empty() || options.upstreams_only {
        // `--upstreams-only --upstream ADDR...` starts the demo upstreams on those addresses.
        let addrs: Vec<SocketAddr> = if config.upstream.servers.is_empty() {
            DEMO_UPSTREAMS
                .iter()
                .map(|a| a.parse())
                .collect::<Result<_, _>>()?
        } else {
            config
                .upstream
                .servers
                .drain(..)
                .map(|s| s.address)
                .collect()
        };
        for addr in addrs {
            let upstream = proxy::spawn_demo_upstream(addr).await?;
            config.upstream.servers.push(Server {
                address: upstream.addr,
                weight: 1,
            });
            demo.push(upstream);
        }
    }
    if options.upstreams_only {
        println!(
            "demo upstreams on {} (Ctrl-C stops them)",
            join(&demo.iter().map(|u| u.addr).collect::<Vec<_>>())
        );
        tokio::signal::ctrl_c().await?;
        return Ok(ExitCode::SUCCESS);
    }
    // The admin listener's recorder goes in before the balancer registers its metrics.
    let admin_on = config.admin.enabled && (options.self_test.is_none() || options.admin_flag);
    let prometheus = if admin_on {
        admin::install_recorder()?
    } else {
        None
    };
    let proxy = proxy::start(&config).await?;
    let upstream = &config.upstream;
    let hashing = if upstream.strategy.uses_request_key() {
        format!(" by {}", upstream.hash_key)
    } else {
        String::new()
    };
    let h2c = if upstream.protocol == Protocol::H2c {
        " (h2c)"
    } else {
        ""
    };
    let servers: Vec<SocketAddr> = upstream.servers.iter().map(|s| s.address).collect();
    println!(
        "proxy on http://{} balancing with {}{hashing} over {}{h2c}",
        proxy.addr,
        upstream.strategy,
        join(&servers)
    );

    let _admin = if admin_on {
        let sources = admin::Sources {
            balancer: upstream.name.clone(),
            strategy: upstream.strategy.to_string(),
            monitor: proxy.monitor.clone(),
            health_log: proxy.health_log.clone(),
            prometheus,
        };
        let admin = admin::start(config.admin.listen, sources).await?;
        println!(
            "admin on http://{0} (/status, /status.json, /metrics)",
            admin.addr
        );
        Some(admin)
    } else {
        None
    };

    if let Some(requests) = options.self_test {
        // Bounded load moves keys off busy upstreams by design, so affinity is checked
        // only without it.
        let affinity = upstream.strategy.uses_request_key()
            && upstream.hash_key == HttpKey::Path
            && upstream.bounded_load.is_none();
        let code = self_test(loopback(proxy.addr), requests, &proxy, affinity).await;
        proxy.shutdown().await;
        return Ok(code);
    }
    let reporter = tokio::spawn(report_periodically(proxy.monitor.clone()));
    tokio::signal::ctrl_c().await?;
    println!("\nshutting down: draining in-flight requests (Ctrl-C again to quit at once)");
    reporter.abort();
    let stats = proxy.monitor.clone();
    tokio::select! {
        _ = proxy.shutdown() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!("final shares:\n{}", render_table(&stats.endpoints()));
    Ok(ExitCode::SUCCESS)
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
// Statistics
// ----------------------------------------------------------------------------------------

/// Prints the share table every [`REPORT_EVERY`], when there was traffic since the last one.
async fn report_periodically(monitor: tower_lb::Monitor<SocketAddr>) {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(REPORT_EVERY);
    ticker.tick().await; // the first tick is immediate
    let mut last = Activity::default();
    loop {
        ticker.tick().await;
        let stats = monitor.endpoints();
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
    running: &proxy::Proxy,
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
    let stats = running.endpoints();
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
    let upstream = proxy::answered_by(&response);
    response.into_body().collect().await?;
    Ok((status, upstream))
}
