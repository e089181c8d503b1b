//! The TCP connect probe, [`TcpProbe`] (re-exported as `health::TcpProbe`, where its docs are).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use super::probe::{Probe, ProbeFailure, ProbeTarget};
use crate::error::BuildError;

/// The default [`TcpProbe::timeout`]: 1 s.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Healthy when a TCP connection to the endpoint opens.
///
/// It opens a connection to the endpoint and closes it at once, without sending a
/// byte. It is the cheapest check there is, and it answers one question only: is something
/// listening? A process that accepts connections but cannot serve them passes it; use the
/// HTTP probe (`HttpProbe`, feature `http`) or a [`Probe`] of your own to check more.
///
/// # Which address it connects to
///
/// The endpoint's [name](super::ProbeTarget::name) is the address (its
/// [`Metadata::name`](crate::Metadata::name), or else its key's `Debug` form without
/// quotes): `SocketAddr` keys give `ip:port` and connect without a DNS lookup, and
/// `"host:port"` names are resolved (every resolved address is tried in turn, as
/// [`tokio::net::TcpStream::connect`] does).
///
/// When the health port differs from the serving port (a separate admin or health-check
/// listener, like HAProxy's `port` check option or Envoy's health-check port override),
/// [`TcpProbe::port`] replaces the name's port. For any other mapping, implement [`Probe`] for
/// a type of your own; it is a single method.
///
/// # Settings and defaults
///
/// | setting | default | |
/// |---|---|---|
/// | [`timeout`](TcpProbe::timeout) | 1 s | the connection must open within it, or the probe fails with [`ProbeFailure::Timeout`] |
/// | [`port`](TcpProbe::port) | the name's own port | connect to this port instead |
///
/// The setters take any value; [`Probe::validate`] checks them (a zero timeout, port 0), so
/// that the balancer's `build` fails with [`BuildError::InvalidConfig`], as for every other
/// setting.
///
/// # Failures
///
/// - the connection is refused, reset, unreachable, or the name does not resolve:
///   [`ProbeFailure::Connect`] with the [`io::Error`];
/// - no connection within the timeout: [`ProbeFailure::Timeout`].
///
/// The probe must run inside a tokio runtime with its IO and time drivers enabled (the
/// balancer's background task is one).
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use tower_lb::health::{Probe, ProbeTarget, TcpProbe};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // The endpoints serve on their own ports; their health listener is on 8081.
/// let probe = TcpProbe::new().port(8081).timeout(Duration::from_millis(500));
///
/// // Probes run inside the balancer; called by hand, they take the endpoint's name.
/// let endpoint = ProbeTarget::new("10.0.0.7:8080");
/// match probe.probe(&endpoint).await {
///     Ok(()) => println!("{} is up", endpoint.name()),
///     Err(why) => println!("{} is down: {why}", endpoint.name()),
/// }
/// # Ok(()) }
/// ```
///
/// # Invalid settings are errors, not panics
///
/// ```
/// use std::time::Duration;
/// use tower_lb::health::{Probe, TcpProbe};
///
/// let probe = TcpProbe::new(); // the endpoint name's address, 1 s timeout
/// let admin = TcpProbe::new().port(9901).timeout(Duration::from_millis(250));
/// assert!(probe.validate().is_ok() && admin.validate().is_ok());
///
/// // Checked when the balancer is built, or by `validate`.
/// assert!(TcpProbe::new().port(0).validate().is_err());
/// assert!(TcpProbe::new().timeout(Duration::ZERO).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpProbe {
    timeout: Duration,
    port: Option<u16>,
}

impl Default for TcpProbe {
    fn default() -> Self {
        TcpProbe::new()
    }
}

impl TcpProbe {
    /// A probe that connects to the endpoint name's address, with a 1 s timeout.
    pub fn new() -> Self {
        TcpProbe {
            timeout: DEFAULT_TIMEOUT,
            port: None,
        }
    }

    /// The connection must open within `timeout` (default 1 s), or the probe fails with
    /// [`ProbeFailure::Timeout`].
    ///
    /// The balancer also bounds every probe with its own timeout; the shorter one applies.
    /// Must be greater than zero (every probe would fail).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connects to `port` instead of the name's port (the host stays the name's).
    ///
    /// Keys that format as `ip:port`, `[ipv6]:port`, `host:port`, or a bare IP address or
    /// host name all work; a name that fits none of these fails each probe with
    /// [`ProbeFailure::Connect`] of kind [`InvalidInput`](io::ErrorKind::InvalidInput).
    /// Must not be 0 (not a port one can connect to).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// The address this probe connects to for an endpoint named `key`.
    fn address(&self, key: &str) -> io::Result<String> {
        match self.port {
            None => Ok(key.to_owned()),
            Some(port) => with_port(key, port),
        }
    }
}

impl Probe for TcpProbe {
    type Future = Pin<Box<dyn Future<Output = Result<(), ProbeFailure>> + Send + 'static>>;

    fn probe(&self, target: &ProbeTarget) -> Self::Future {
        let address = self.address(target.name());
        let timeout = self.timeout;
        Box::pin(async move {
            let address = address.map_err(ProbeFailure::Connect)?;
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
                // Dropping the stream closes the connection at once.
                Ok(Ok(_stream)) => Ok(()),
                Ok(Err(e)) => Err(ProbeFailure::Connect(e)),
                Err(_) => Err(ProbeFailure::Timeout(timeout)),
            }
        })
    }

    fn validate(&self) -> Result<(), BuildError> {
        BuildError::reject_if(
            self.timeout.is_zero(),
            "TcpProbe::timeout",
            self.timeout,
            "greater than zero",
        )?;
        BuildError::reject_if(
            self.port == Some(0),
            "TcpProbe::port",
            0,
            "a port other than 0",
        )?;
        Ok(())
    }
}

/// `address` (`ip:port`, `[ipv6]:port`, `host:port`, an IP address or a host name) with its
/// port replaced by, or set to, `port`.
fn with_port(address: &str, port: u16) -> io::Result<String> {
    if let Ok(mut socket) = address.parse::<SocketAddr>() {
        socket.set_port(port);
        return Ok(socket.to_string());
    }
    if let Ok(ip) = address.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port).to_string());
    }
    if let Some(ip) = address
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse::<Ipv6Addr>().ok())
    {
        return Ok(SocketAddr::new(IpAddr::V6(ip), port).to_string());
    }
    let host = match address.rsplit_once(':') {
        None => address,
        Some((host, old)) if !host.contains([':', '[', ']']) && old.parse::<u16>().is_ok() => host,
        Some(_) => "",
    };
    if host.is_empty() || host.contains(['[', ']', '/', ' ']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("endpoint address `{address}` is not `host:port`, `ip:port` or a host"),
        ));
    }
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::with_port;

    #[test]
    fn port_override_keeps_the_host() {
        let cases = [
            ("127.0.0.1:8080", "127.0.0.1:81"),
            ("[::1]:8080", "[::1]:81"),
            ("::1", "[::1]:81"),
            ("[::1]", "[::1]:81"),
            ("10.0.0.1", "10.0.0.1:81"),
            ("example.com:443", "example.com:81"),
            ("example.com", "example.com:81"),
        ];
        for (key, expected) in cases {
            assert_eq!(with_port(key, 81).unwrap(), expected, "{key}");
        }
    }

    #[test]
    fn port_override_rejects_what_is_not_an_address() {
        for key in [
            "",
            ":80",
            "host:port",
            "a b:80",
            "http://host:80",
            "[::1]x:80",
        ] {
            let err = with_port(key, 81).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{key}");
        }
    }
}
