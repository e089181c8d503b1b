//! The proxy's settings: [`Config`] and its sections, deserializable from TOML
//! (`--config FILE`, see `examples/reverse_proxy.toml`), with nginx's defaults, the checks
//! serde cannot make ([`Config::check`]), and nginx-style durations ([`parse_duration`]).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use tower_lb::http::key::HttpKey;
use tower_lb::strategy::StrategyKind;

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
    #[serde(deserialize_with = "de_from_str")]
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

    pub(super) fn worker_count(&self) -> usize {
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
