//! The reverse proxy itself, shared by `examples/reverse_proxy.rs` and the tests
//! (`tests/proxy_*.rs`, which include this file with `#[path]`). One file per concept:
//!
//! - `config.rs`: [`Config`], every setting, deserializable from TOML (`--config FILE`).
//! - `server.rs`: [`start`] binds the listener (one `SO_REUSEPORT` socket per worker thread,
//!   like nginx's worker processes), builds the balancer and the upstreams, and runs the
//!   accept loops until [`Proxy::shutdown`], which drains in-flight requests.
//! - `balancer.rs`: the tower-lb balancer, with health checks and outlier detection.
//! - `forward.rs`: one request on the hyper path, retries, and the error responses.
//! - `upstream.rs`: [`Upstream`], the tower service for one upstream: pooled HTTP/1.1
//!   connections (the keep-alive pool of each worker thread, `pool.rs`) or one multiplexed
//!   connection per worker thread (h2c); the request timeout applies here, per upstream, so
//!   that the balancer sees a timeout as the upstream's failure.
//! - `demo.rs`: [`spawn_demo_upstream`], a small fast upstream (HTTP/1.1 and h2c) for demos,
//!   benchmarks and tests.
//! - `fast.rs`: plain requests proxied without hyper; `framing.rs`: the smuggling scan in
//!   front of hyper; `rules.rs`: what is refused (400, 405) as nginx refuses it;
//!   `upload.rs`: request bodies on their way upstream, whose errors are the client's;
//!   `stall.rs`: the timeouts between two reads or writes of a client.

#[path = "balancer.rs"]
mod balancer;
#[path = "config.rs"]
mod config;
#[path = "demo.rs"]
mod demo;
#[path = "fast.rs"]
mod fast;
#[path = "forward.rs"]
mod forward;
#[path = "framing.rs"]
mod framing;
#[path = "pool.rs"]
mod pool;
#[path = "rules.rs"]
mod rules;
#[path = "server.rs"]
mod server;
#[path = "stall.rs"]
mod stall;
#[path = "upload.rs"]
mod upload;
#[path = "upstream.rs"]
mod upstream;

// The proxy's public items, at the paths they had when it was one file. Each includer (the
// example, `tests/proxy_*.rs`) uses a part of them.
#[allow(unused_imports)]
pub use self::{
    balancer::UpstreamBody,
    config::{
        parse_duration, Config, HealthConfig, HostMode, Limits, OutlierConfig, Protocol,
        RetryConfig, Server, Timeouts, UpstreamConfig,
    },
    demo::{answered_by, spawn_demo_upstream, DemoUpstream},
    forward::{error_chain, ProxyBody},
    server::{start, Proxy},
    upstream::{NotSent, ResponseTimeout, Upstream},
};
#[allow(unused_imports)]
pub use tower_lb::strategy::StrategyKind;
