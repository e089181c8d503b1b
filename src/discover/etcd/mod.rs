//! etcd discovery and registration (feature `etcd`): endpoints from the keys under a
//! prefix, watched; servers that register themselves under a lease.
//!
//! [`Etcd`] is a discovery source: each key under a prefix is one endpoint, keyed by
//! [`EtcdKey`] (the etcd key and the address), with no service (`()`), made for
//! [`Builder::build_with`](crate::Builder::build_with), which turns each new address into
//! a client. [`Registration`] is the servers' side: it writes one such key under a lease
//! and keeps the lease alive while the server runs.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tower_lb::discover::etcd::etcd_client::{Client, ConnectOptions};
//! use tower_lb::discover::etcd::{Etcd, EtcdKey};
//! use tower_lb::{strategy::RoundRobin, Balance};
//!
//! // Keep-alive pings notice a dead connection that sends no reset; a member that lost its
//! // leader cancels the watch instead of serving a stale one.
//! let options = ConnectOptions::new()
//!     .with_connect_timeout(Duration::from_secs(2))
//!     .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
//!     .with_require_leader(true);
//! let client = Client::connect(["http://10.0.0.1:2379", "http://10.0.0.2:2379"], Some(options)).await?;
//! let balance = Balance::builder()
//!     .strategy(RoundRobin::new())
//!     .build_with(Etcd::prefix(client, "/services/api/"), |key: &EtcdKey| make_client(key.addr()))?;
//! # fn make_client(addr: &str) -> tower::util::BoxCloneSyncService<http::Request<String>, http::Response<String>, std::io::Error> { unimplemented!() }
//! # let _ = balance; Ok(()) }
//! ```
//!
//! The `etcd` feature builds etcd's gRPC definitions with `protoc` (through `etcd-client`),
//! so the build needs the protobuf compiler (`apt-get install protobuf-compiler`, or set
//! `PROTOC`).
//!
//! # The value of a key
//!
//! Each key under the prefix holds one endpoint, in one of two forms:
//!
//! - **Plain**: `host:port`, such as `10.0.0.7:8080`, `[2001:db8::7]:8080` or
//!   `api-1.internal:8080`. Weight 1, no metadata. Surrounding white space (the newline of
//!   `etcdctl put key "$(cat file)"`) is ignored.
//! - **JSON**: an object, as [`EndpointValue::to_json`] writes it:
//!
//!   ```json
//!   {"addr": "10.0.0.7:8080", "weight": 3, "zone": "eu-west-1a", "name": "api-7",
//!    "labels": {"version": "1.4.2"}}
//!   ```
//!
//!   | field | meaning |
//!   |---|---|
//!   | `addr` (or `address`) | required: `host:port` as in the plain form |
//!   | `weight` | a whole number from 0 to 4294967295; default 1 |
//!   | `zone` | [`Metadata::zone`](crate::Metadata::zone), which strategies see (`examples/zone_aware.rs` routes by it) |
//!   | `name` | [`Metadata::name`](crate::Metadata::name), which consistent hashing places the endpoint by; default: the address |
//!   | `labels` | an object of strings: [`Metadata::labels`](crate::Metadata::labels) |
//!   | `metadata` | an object whose string members are read as `zone`, `name` (when not given at the top) and labels; any other JSON is ignored |
//!
//!   Field names match in any case, so etcd's own Go naming package's values
//!   (`{"Op":0,"Addr":"10.0.0.7:8080","Metadata":...}`, from `go.etcd.io/etcd/client/v3/naming/endpoints`)
//!   read as they are, as long as the address has a port. Other fields are ignored.
//!
//! An IP address is normalised (`[2001:DB8::0:7]:80` reads as `[2001:db8::7]:80`); a host
//! name is kept as written, and resolving it is the client's business
//! ([`EtcdKey::socket_addr`] is `None` for it).
//!
//! # Start and watch
//!
//! The source lists the prefix, sends the endpoints as one [`Change::Reset`] (nothing if
//! the prefix is empty; the first endpoints to appear are then a reset), then watches the
//! prefix from the revision after the list's: each change after the list is seen once,
//! and none before it is seen again. A list reads 500 keys per request, every page at the
//! revision of the first, so a large prefix is still one consistent snapshot; responses
//! of up to 64 MiB are accepted (tonic's default limit is 4 MiB). A put of a new key
//! inserts an endpoint; a put that changes the weight or metadata updates it in place (its
//! service and statistics stay); a put that changes the address removes the old endpoint
//! and inserts the new one; a delete (or an expired lease) removes it.
//!
//! # Failures
//!
//! When the watch is cancelled, falls behind a compaction, or loses its connection, and
//! when a list fails or takes longer than [`request_timeout`](Etcd::request_timeout)
//! (default 5 s), the source yields an [`EtcdError`] (the balancer logs it and counts it in
//! [`DiscoveryStats::errors`](crate::discover::DiscoveryStats::errors)), keeps the last good
//! set, and lists the prefix again. The list is compared with what the balancer has and
//! only the differences are sent, then a new watch starts after that list. A list that
//! comes back empty when the set was not is sent as an empty [`Change::Reset`], which the
//! balancer ignores by default (an etcd restored from an empty backup looks just like
//! that; see [`allow_empty_reset`](crate::Builder::allow_empty_reset)); the next endpoints
//! to appear are then sent as a whole reset. Deletes seen by the watch remove endpoints
//! one by one and can empty the set: every server deregistered.
//!
//! Retries back off: the pause before each list after a failure starts at 100 ms and
//! doubles up to 10 s ([`backoff`](Etcd::backoff)), less a random part of up to half (so
//! that many clients do not come back in step). A run of failures ends only when a watch
//! has lasted the longest pause, so a member that answers lists but cancels every watch is
//! retried at a slowing pace too. A compaction that cancels a healthy watch is listed
//! again at once; one that comes in a run of failures waits its turn like any retry.
//!
//! Give the client several endpoints of the cluster: it spreads requests over them and the
//! source's next list goes to a member that answers. HTTP/2 keep-alive
//! ([`ConnectOptions::with_keep_alive`](etcd_client::ConnectOptions::with_keep_alive))
//! notices a connection that died silently; without it a watch on such a connection waits
//! until the operating system gives up on it. With
//! [`with_require_leader(true)`](etcd_client::ConnectOptions::with_require_leader), a member
//! cut off from its cluster's leader cancels the watch (the source then lists through a
//! member that has one) rather than keeping it open with no news.
//!
//! # Bad values
//!
//! A value that cannot be read (see [`ValueError`]), or a key that is not UTF-8, skips
//! that key; every other key applies. Each is logged as a warning and, after the changes of
//! the same list or watch response, one [`EtcdError::InvalidValues`] names them all (so a
//! batch of bad values counts as one discovery error). A key that had a good value keeps
//! its endpoint until it gets a good value again or is deleted.
//!
//! # Registration
//!
//! See [`Registration`]. Put each server under its own key (its address is a good choice:
//! `/services/api/10.0.0.7:8080`), with a TTL of a few seconds. The `etcd` example runs
//! servers that register themselves and a client that balances over them while one leaves.

mod error;
mod key;
mod registration;
mod value;
mod watch;

use std::fmt;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use etcd_client::Client;
use futures_core::Stream;
use futures_util::stream::{self, StreamExt};

pub use error::{EtcdError, InvalidValue, Operation};
/// The etcd client crate this module is built on, for [`Client`] and its options.
pub use etcd_client;
pub use key::EtcdKey;
pub use registration::Registration;
pub use value::{EndpointValue, ValueError};

use crate::discover::lazy::Lazy;
use crate::discover::{Change, Discover, PollChange};
use crate::error::BuildError;
use watch::{Runner, Settings};

/// What an [`Etcd`] source yields.
pub type EtcdChange = Result<Change<EtcdKey, ()>, EtcdError>;

/// A discovery source that watches the keys under an etcd prefix. See the
/// [module docs](self).
///
/// Nothing is requested until the balancer polls it. `build_with` fails with
/// [`BuildError::InvalidConfig`] on a zero [`request_timeout`](Etcd::request_timeout), a zero
/// first [`backoff`](Etcd::backoff) pause, or a longest pause below the first.
pub struct Etcd {
    source: Lazy<(Client, Settings), EtcdChange>,
}

impl fmt::Debug for Etcd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Etcd");
        if let Some((_, settings)) = self.source.settings() {
            d.field("settings", settings);
        }
        d.field("running", &self.source.is_running()).finish()
    }
}

impl Etcd {
    /// Watches the keys that start with `prefix` (end it with `/` so that `/api/` does not
    /// also match `/api-v2/...`). The client is cheap to clone and may be shared.
    pub fn prefix(client: Client, prefix: impl Into<String>) -> Self {
        let settings = Settings {
            prefix: prefix.into(),
            request_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        };
        Etcd {
            source: Lazy::new((client, settings)),
        }
    }

    /// Changes the settings. Once the source has been polled its settings are in use and
    /// a change does nothing (the setters are meant for building, before the balancer).
    fn set(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        if let Some((_, settings)) = self.source.settings_mut() {
            change(settings);
        }
        self
    }

    /// The longest wait for one list request, or for a watch to start (default 5 s). Must
    /// be greater than zero.
    pub fn request_timeout(self, timeout: Duration) -> Self {
        self.set(|s| s.request_timeout = timeout)
    }

    /// The pause before the first retry after a failure (default 100 ms; greater than
    /// zero) and the longest pause (default 10 s; at least `first`). Each pause doubles the
    /// last, less a random part of up to half.
    pub fn backoff(self, first: Duration, max: Duration) -> Self {
        self.set(|s| {
            s.backoff_min = first;
            s.backoff_max = max;
        })
    }

    /// The source as a `Stream` of [`EtcdChange`]s, to combine it with stream adapters or
    /// to read it by hand. The balancer takes the `Etcd` itself, which lets `build_with`
    /// check its settings; a stream whose settings are invalid yields one
    /// [`EtcdError::InvalidConfig`] and ends.
    pub fn into_stream(mut self) -> impl Stream<Item = EtcdChange> + Send + Unpin {
        futures_util::stream::poll_fn(move |cx| Pin::new(&mut self).poll_change(cx))
    }
}

impl Discover<EtcdKey, ()> for Etcd {
    type Error = EtcdError;

    /// The next change: the first list as a [`Change::Reset`], then the differences, and
    /// an [`EtcdError`] for each failure. A source whose settings are invalid yields one
    /// error saying so and ends.
    fn poll_change(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> PollChange<EtcdKey, (), EtcdError> {
        self.get_mut().source.poll_next(
            cx,
            |(_, settings)| settings.validate(),
            |invalid| Err(EtcdError::InvalidConfig(invalid)),
            |(client, settings)| {
                let runner = Runner::new(client, settings);
                let changes = stream::unfold(runner, |mut runner| async move {
                    let batch = runner.step().await;
                    Some((stream::iter(batch), runner))
                });
                Box::pin(changes.flatten())
            },
        )
    }

    fn validate(&self) -> Result<(), BuildError> {
        self.source.settings().map_or(Ok(()), |(_, s)| s.validate())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream::StreamExt;

    /// A client of an address where nothing listens: the checks fail before any request.
    async fn client() -> Client {
        Client::connect(["http://127.0.0.1:9"], None).await.unwrap()
    }

    #[tokio::test]
    async fn bad_settings_name_the_field_and_end_the_stream() {
        let field = |etcd: Etcd| match etcd.validate() {
            Err(BuildError::InvalidConfig(invalid)) => invalid.field(),
            other => panic!("accepted: {other:?}"),
        };
        let ms = Duration::from_millis;
        let etcd = || async { Etcd::prefix(client().await, "/p/") };
        assert!(etcd().await.validate().is_ok());
        assert_eq!(
            field(etcd().await.request_timeout(Duration::ZERO)),
            "Etcd::request_timeout"
        );
        assert_eq!(
            field(etcd().await.backoff(Duration::ZERO, ms(10))),
            "Etcd::backoff (first)"
        );
        assert_eq!(
            field(etcd().await.backoff(ms(20), ms(10))),
            "Etcd::backoff (max)"
        );
        let mut changes = etcd().await.request_timeout(Duration::ZERO).into_stream();
        assert!(matches!(
            changes.next().await,
            Some(Err(EtcdError::InvalidConfig(_)))
        ));
        assert!(changes.next().await.is_none());
    }
}
