//! Shared by the reverse proxy tests (each declares `mod proxy` for the example's code).

use std::net::SocketAddr;

use crate::proxy::{Config, Server};

/// The proxy on an ephemeral loopback port with two workers, no health log, and
/// `servers` as its upstreams, each of weight 1.
pub fn config(servers: &[SocketAddr]) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        log_health: false,
        ..Config::default()
    };
    config.upstream.servers = servers
        .iter()
        .map(|&address| Server { address, weight: 1 })
        .collect();
    config
}
