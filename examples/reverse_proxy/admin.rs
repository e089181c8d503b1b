//! The proxy's admin listener, on its own address (default 127.0.0.1:9901, like Envoy's
//! admin interface), never on the proxy's:
//!
//! - `GET /metrics`: the balancer's metrics (tower-lb's feature `metrics`) in Prometheus
//!   text format, rendered by metrics-exporter-prometheus (nginx: the stub_status module or
//!   an exporter; HAProxy: `stats uri` with `;csv`, or its Prometheus exporter);
//! - `GET /status`: an HTML page in the spirit of HAProxy's stats page, one row per
//!   upstream (state, weight, in flight, requests, failures, latency p50 and p99, a chart of
//!   requests and failures over the last five minutes) and the last health events. The
//!   page carries its first data inline and then refreshes itself from `/status.json` every
//!   two seconds without reloading. Everything is inline (`status.html`): no external
//!   asset, no CDN;
//! - `GET /status.json`: what the page shows, for scripts.
//!
//! The per-upstream figures come from the balancer's [`Monitor`] (exact counters); the
//! latency quantiles from the Prometheus summary of `tower_lb_request_duration_seconds`
//! (over the exporter's rolling window, a minute), so they are there only with the
//! `metrics` feature. A task samples the counters every [`SAMPLE_EVERY`] for the charts and
//! runs the exporter's upkeep.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use metrics_util::MetricKindMask;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tower_lb::endpoint::EndpointState;
use tower_lb::error::BoxError;
use tower_lb::health::Health;
use tower_lb::{EndpointStats, Monitor};

/// The status page: HTML, CSS and script in one file, `__STATUS_JSON__` replaced by the
/// first data so that the page shows it without waiting for a fetch.
const STATUS_PAGE: &str = include_str!("status.html");
/// How often the counters are sampled for the charts.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples kept per upstream: five minutes.
const HISTORY: usize = 150;
/// Health events shown.
const EVENTS: usize = 20;

/// Where the figures come from.
pub struct Sources {
    /// The balancer's name (the `balancer` label of its metrics).
    pub balancer: String,
    /// The strategy, as `--strategy` names it.
    pub strategy: String,
    pub monitor: Monitor<SocketAddr>,
    pub health_log: Arc<Mutex<Vec<(Instant, SocketAddr, Health)>>>,
    /// The Prometheus recorder's handle, when one is installed.
    pub prometheus: Option<PrometheusHandle>,
}

/// Requests and failures per sample interval, per upstream.
#[derive(Default)]
struct History {
    /// The counters at the last sample: (requests, failures).
    last: HashMap<SocketAddr, (u64, u64)>,
    series: HashMap<SocketAddr, VecDeque<(u64, u64)>>,
}

struct Admin {
    sources: Sources,
    started: Instant,
    history: Mutex<History>,
}

/// A running admin listener; dropping it stops it.
pub struct AdminServer {
    pub addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// How long a series that stopped changing stays in `/metrics`: a removed upstream's
/// series end this long after its last update (the balancer refreshes live ones).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Installs the Prometheus recorder (before the balancer is built, so that it registers
/// its metrics there). `None` without the `metrics` feature: nothing would be recorded.
pub fn install_recorder() -> Result<Option<PrometheusHandle>, BoxError> {
    if !cfg!(feature = "metrics") {
        return Ok(None);
    }
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .idle_timeout(MetricKindMask::ALL, Some(IDLE_TIMEOUT))
        .install_recorder()?;
    Ok(Some(handle))
}

/// Binds `addr` and serves the admin endpoints on the current runtime.
pub async fn start(addr: SocketAddr, sources: Sources) -> Result<AdminServer, BoxError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("admin: cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr()?;
    let admin = Arc::new(Admin {
        sources,
        started: Instant::now(),
        history: Mutex::default(),
    });
    admin.sample();
    let sampler = tokio::spawn({
        let admin = admin.clone();
        async move {
            let mut ticker = tokio::time::interval(SAMPLE_EVERY);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                admin.sample();
            }
        }
    });
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let admin = admin.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(&request)) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(AdminServer {
        addr,
        tasks: vec![sampler, server],
    })
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .header(CACHE_CONTROL, "no-store")
        .body(Full::new(body.into()))
        .expect("valid response")
}

impl Admin {
    fn handle(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
        }
        match request.uri().path() {
            "/metrics" => match &self.sources.prometheus {
                Some(handle) => respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    handle.render(),
                ),
                None => respond(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "no metrics recorder: build the example with --features metrics\n",
                ),
            },
            "/status.json" => respond(
                StatusCode::OK,
                "application/json",
                self.status().to_string(),
            ),
            "/status" => {
                // `</` cannot appear in JSON text inside a script element unescaped.
                let data = self.status().to_string().replace("</", "<\\/");
                let page = STATUS_PAGE.replace("__STATUS_JSON__", &data);
                respond(StatusCode::OK, "text/html; charset=utf-8", page)
            }
            "/" => Response::builder()
                .status(StatusCode::FOUND)
                .header(LOCATION, "/status")
                .body(Full::new(Bytes::new()))
                .expect("valid response"),
            _ => respond(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: try /status, /status.json or /metrics\n",
            ),
        }
    }

    /// Takes one sample of every upstream's counters for the charts, and runs the
    /// exporter's upkeep (drains histograms, drops idle series).
    fn sample(&self) {
        let mut history = self.history.lock().unwrap();
        let History { last, series } = &mut *history;
        for stats in self.sources.monitor.endpoints() {
            let now = (requests(&stats), stats.failures);
            let before = last.insert(stats.key, now).unwrap_or(now);
            let points = series.entry(stats.key).or_default();
            points.push_back((
                now.0.saturating_sub(before.0),
                now.1.saturating_sub(before.1),
            ));
            while points.len() > HISTORY {
                points.pop_front();
            }
        }
        drop(history);
        if let Some(handle) = &self.sources.prometheus {
            handle.run_upkeep();
        }
    }

    /// What `/status.json` returns and the page shows.
    fn status(&self) -> Value {
        let quantiles = self
            .sources
            .prometheus
            .as_ref()
            .map(|h| latency_quantiles(&h.render(), &self.sources.balancer))
            .unwrap_or_default();
        let history = self.history.lock().unwrap();
        let upstreams: Vec<Value> = self
            .sources
            .monitor
            .endpoints()
            .iter()
            .map(|stats| {
                let name = stats.key.to_string();
                let (p50, p99) = quantiles.get(&name).copied().unwrap_or((None, None));
                let points = history.series.get(&stats.key);
                let column = |pick: fn(&(u64, u64)) -> u64| -> Vec<u64> {
                    points.map_or(Vec::new(), |p| p.iter().map(pick).collect())
                };
                json!({
                    "name": name,
                    "state": state_name(stats.state),
                    "up": matches!(stats.state, EndpointState::Active | EndpointState::Probation),
                    "weight": stats.weight,
                    "in_flight": stats.in_flight,
                    "requests": requests(stats),
                    "failures": stats.failures,
                    "cancelled": stats.cancelled,
                    "p50_ms": p50.map(|s| s * 1e3),
                    "p99_ms": p99.map(|s| s * 1e3),
                    "chart": {
                        "every_s": SAMPLE_EVERY.as_secs(),
                        "requests": column(|p| p.0),
                        "failures": column(|p| p.1),
                    },
                })
            })
            .collect();
        drop(history);
        let now = Instant::now();
        let log = self.sources.health_log.lock().unwrap();
        let events: Vec<Value> = log
            .iter()
            .rev()
            .take(EVENTS)
            .map(|(at, key, health)| {
                json!({
                    "ago_s": now.saturating_duration_since(*at).as_secs_f64(),
                    "upstream": key.to_string(),
                    "health": health.to_string(),
                })
            })
            .collect();
        json!({
            "balancer": self.sources.balancer,
            "strategy": self.sources.strategy,
            "uptime_s": self.started.elapsed().as_secs(),
            "metrics": self.sources.prometheus.is_some(),
            "upstreams": upstreams,
            "events": events,
        })
    }
}

/// Requests sent: in flight, completed or cancelled.
fn requests(stats: &EndpointStats<SocketAddr>) -> u64 {
    stats.in_flight + stats.completed + stats.cancelled
}

fn state_name(state: EndpointState) -> &'static str {
    match state {
        EndpointState::Active => "UP",
        EndpointState::Probation => "UP (probation)",
        EndpointState::ZeroWeight => "NO WEIGHT",
        EndpointState::Unhealthy => "DOWN",
        EndpointState::Ejected => "DOWN (ejected)",
        EndpointState::Draining => "DRAINING",
        _ => "UNKNOWN",
    }
}

/// The p50 and p99 latencies (seconds) per endpoint of `balancer`, read from the summary
/// lines of `tower_lb_request_duration_seconds` in Prometheus text (none for an endpoint
/// without samples, whose summary says 0).
fn latency_quantiles(text: &str, balancer: &str) -> HashMap<String, (Option<f64>, Option<f64>)> {
    let mut out: HashMap<String, (Option<f64>, Option<f64>)> = HashMap::new();
    let mut empty = Vec::new();
    for line in text.lines() {
        let (rest, count) =
            if let Some(rest) = line.strip_prefix("tower_lb_request_duration_seconds_count{") {
                (rest, true)
            } else if let Some(rest) = line.strip_prefix("tower_lb_request_duration_seconds{") {
                (rest, false)
            } else {
                continue;
            };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
            let len = labels[start..].find('"')?;
            Some(&labels[start..start + len])
        };
        if label("balancer") != Some(balancer) {
            continue;
        }
        if count {
            if let (Some(endpoint), Ok(0)) = (label("endpoint"), value.trim().parse::<u64>()) {
                empty.push(endpoint.to_owned());
            }
            continue;
        }
        let (Some(endpoint), Some(quantile), Ok(value)) = (
            label("endpoint"),
            label("quantile"),
            value.trim().parse::<f64>(),
        ) else {
            continue;
        };
        let entry = out.entry(endpoint.to_owned()).or_default();
        match quantile {
            "0.5" => entry.0 = Some(value),
            "0.99" => entry.1 = Some(value),
            _ => {}
        }
    }
    for endpoint in empty {
        out.remove(&endpoint);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_read_per_endpoint_of_one_balancer() {
        let text = "\
# TYPE tower_lb_request_duration_seconds summary
tower_lb_request_duration_seconds{balancer=\"app\",endpoint=\"127.0.0.1:8000\",quantile=\"0.5\"} 0.001
tower_lb_request_duration_seconds{balancer=\"app\",endpoint=\"127.0.0.1:8000\",quantile=\"0.99\"} 0.004
tower_lb_request_duration_seconds{balancer=\"other\",endpoint=\"127.0.0.1:8000\",quantile=\"0.5\"} 9
tower_lb_request_duration_seconds_sum{balancer=\"app\",endpoint=\"127.0.0.1:8000\"} 0.5
tower_lb_request_duration_seconds_count{balancer=\"app\",endpoint=\"127.0.0.1:8000\"} 2
tower_lb_request_duration_seconds{balancer=\"app\",endpoint=\"127.0.0.1:8001\",quantile=\"0.5\"} 0
tower_lb_request_duration_seconds_count{balancer=\"app\",endpoint=\"127.0.0.1:8001\"} 0
";
        let q = latency_quantiles(text, "app");
        // 8001 has no sample: no quantiles rather than zeros.
        assert_eq!(q.len(), 1);
        assert_eq!(q["127.0.0.1:8000"], (Some(0.001), Some(0.004)));
    }
}
