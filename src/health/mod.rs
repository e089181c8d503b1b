//! Health: keeping traffic away from endpoints that are down, broken or slow, and bringing
//! it back when they recover.

mod probe;
mod tcp_probe;
#[cfg(feature = "http")]
mod http_probe;

pub use probe::{Probe, ProbeFailure};
pub use tcp_probe::TcpProbe;
#[cfg(feature = "http")]
pub use http_probe::HttpProbe;

/// Placeholder, replaced by the active-check settings.
#[derive(Debug)]
pub struct ActiveChecks;
