//! [`Registration`]: a server's key in etcd, under a lease kept alive in the background.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper, PutOptions};
use tokio::task::JoinHandle;

use super::error::{EtcdError, Operation};
use super::value::EndpointValue;
use crate::strategy::rng::Rng;

/// How long a registration waits for etcd to answer one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A server's endpoint registered in etcd: one key whose value is an [`EndpointValue`],
/// attached to a lease that a background task keeps alive.
///
/// - [`register`](Registration::register) grants a lease of the given TTL, writes the key
///   under it and starts the task, which renews the lease every third of the TTL (as etcd's
///   Go client does). While etcd is unreachable it retries; if the lease expired in the
///   meantime (etcd answers a renewal with TTL 0), it grants a new lease and writes the key
///   again, logging an [`EtcdError::LeaseExpired`].
/// - [`shutdown`](Registration::shutdown) stops the task and revokes the lease, which
///   deletes the key at once, so clients drop the endpoint before the server stops
///   accepting. Dropping the `Registration` does the same on a best-effort basis (the
///   revoke runs in a spawned task, when a tokio runtime is there to run it).
/// - A server that dies stops renewing, and etcd deletes the key when the TTL runs out.
///   The TTL is how long clients may keep sending to a dead server: a few seconds is
///   usual. etcd counts TTLs in whole seconds (a shorter one is rounded up) and raises
///   very short ones to its minimum, 1.5 × its election timeout (about 2 s by default).
///
/// ```no_run
/// # async fn run(client: etcd_client::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tower_lb::discover::etcd::{EndpointValue, Registration};
///
/// let value = EndpointValue::new("10.0.0.7:8080")?.with_zone("eu-west-1a");
/// let registration =
///     Registration::register(client, "/services/api/10.0.0.7:8080", &value, Duration::from_secs(5))
///         .await?;
/// // ... serve ...
/// registration.shutdown().await?; // deregister first, then stop serving
/// # Ok(()) }
/// ```
pub struct Registration {
    client: Client,
    key: String,
    /// The current lease (the task replaces it when one expires).
    lease: Arc<AtomicI64>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.key)
            .field("lease", &self.lease_id())
            .field("running", &self.task.is_some())
            .finish()
    }
}

impl Registration {
    /// Writes `value` under `key` with a lease of `ttl` and keeps the lease alive until
    /// [`shutdown`](Registration::shutdown) or drop. Must be called inside a tokio runtime.
    ///
    /// Fails if etcd does not grant the lease or accept the write within 5 s each; nothing
    /// is left behind then (a granted lease is revoked, or expires).
    pub async fn register(
        client: Client,
        key: impl Into<String>,
        value: &EndpointValue,
        ttl: Duration,
    ) -> Result<Self, EtcdError> {
        let key = key.into();
        let value = value.to_json();
        let ttl = ttl_seconds(ttl);
        let lease = put_under_new_lease(&client, &key, &value, ttl).await?;
        let current = Arc::new(AtomicI64::new(lease));
        let task = tokio::spawn(keep_alive(
            client.clone(),
            key.clone(),
            value,
            ttl,
            current.clone(),
        ));
        Ok(Registration {
            client,
            key,
            lease: current,
            task: Some(task),
        })
    }

    /// The key registered.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lease the key is attached to now.
    pub fn lease_id(&self) -> i64 {
        self.lease.load(Ordering::Acquire)
    }

    /// Stops renewing and revokes the lease, which deletes the key. Call it before the
    /// server stops accepting requests, so that clients stop sending first.
    ///
    /// Fails if etcd does not confirm within 5 s; the key then goes when the lease expires.
    pub async fn shutdown(mut self) -> Result<(), EtcdError> {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        revoke(self.client.clone(), self.key.clone(), self.lease_id()).await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else { return };
        task.abort();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (client, key, lease) = (self.client.clone(), self.key.clone(), self.lease_id());
            runtime.spawn(async move {
                if let Err(e) = revoke(client, key, lease).await {
                    tracing::warn!(error = %e, "etcd registration not revoked on drop; it expires with its lease");
                }
            });
        }
    }
}

/// A TTL in etcd's whole seconds, rounded up, at least 1.
fn ttl_seconds(ttl: Duration) -> i64 {
    let secs = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0));
    i64::try_from(secs).unwrap_or(i64::MAX).max(1)
}

async fn revoke(mut client: Client, key: String, lease: i64) -> Result<(), EtcdError> {
    EtcdError::bounded(
        Operation::Revoke,
        &key,
        REQUEST_TIMEOUT,
        client.lease_revoke(lease),
    )
    .await?;
    tracing::debug!(key = %key, lease, "etcd registration revoked");
    Ok(())
}

/// Grants a lease and writes the key under it; revokes the lease if the write fails.
async fn put_under_new_lease(
    client: &Client,
    key: &str,
    value: &str,
    ttl: i64,
) -> Result<i64, EtcdError> {
    let mut leases = client.lease_client();
    let granted = EtcdError::bounded(
        Operation::Grant,
        key,
        REQUEST_TIMEOUT,
        leases.grant(ttl, None),
    )
    .await?;
    let lease = granted.id();
    let mut kv = client.kv_client();
    let options = PutOptions::new().with_lease(lease);
    let put = EtcdError::bounded(
        Operation::Put,
        key,
        REQUEST_TIMEOUT,
        kv.put(key, value, Some(options)),
    )
    .await;
    if let Err(e) = put {
        let _ = revoke(client.clone(), key.to_string(), lease).await;
        return Err(e);
    }
    tracing::debug!(key, lease, ttl, "etcd registration written");
    Ok(lease)
}

/// The background task: renews the lease every third of the TTL; reconnects after a lost
/// stream; registers again under a new lease if the old one expired.
async fn keep_alive(client: Client, key: String, value: String, ttl: i64, lease: Arc<AtomicI64>) {
    let every = Duration::from_secs(ttl as u64) / 3;
    // A renewal that takes longer than the TTL is a failure (the lease is gone by then
    // anyway): waiting out the full request timeout on a silently hung connection could
    // outlast a short TTL. Not shorter: a slow but working etcd must still renew.
    let limit = REQUEST_TIMEOUT.min(Duration::from_secs(ttl as u64));
    let rng = Rng::default();
    let mut failures: u32 = 0;
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    loop {
        if failures > 0 {
            // 100 ms doubling up to a third of the TTL, less a random half.
            let pause = Duration::from_millis(100)
                .saturating_mul(1 << (failures - 1).min(16))
                .min(every);
            tokio::time::sleep(pause.saturating_sub(pause.mul_f64(0.5 * rng.unit()))).await;
        }
        let id = lease.load(Ordering::Acquire);
        let renewed = match stream.as_mut() {
            Some((keeper, responses)) => renew(keeper, responses, &key, limit).await,
            None => {
                let mut leases = client.lease_client();
                match EtcdError::bounded(
                    Operation::KeepAlive,
                    &key,
                    REQUEST_TIMEOUT,
                    leases.keep_alive(id),
                )
                .await
                {
                    Ok(mut opened) => {
                        let renewed = renew(&mut opened.0, &mut opened.1, &key, limit).await;
                        stream = Some(opened);
                        renewed
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match renewed {
            Ok(remaining) if remaining > 0 => {
                failures = 0;
                tokio::time::sleep(every).await;
            }
            Ok(_) => {
                tracing::warn!(error = %EtcdError::LeaseExpired { key: key.clone(), lease: id }, "etcd registration");
                stream = None;
                match put_under_new_lease(&client, &key, &value, ttl).await {
                    Ok(new) => {
                        lease.store(new, Ordering::Release);
                        failures = 0;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "etcd registration not written again; retrying");
                        failures += 1;
                    }
                }
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(error = %e, "etcd lease renewal failed; retrying");
                }
                stream = None;
                failures += 1;
            }
        }
    }
}

/// Sends one renewal and waits (at most `limit` for each step) for its answer: the
/// lease's remaining TTL (0: expired).
async fn renew(
    keeper: &mut LeaseKeeper,
    responses: &mut LeaseKeepAliveStream,
    key: &str,
    limit: Duration,
) -> Result<i64, EtcdError> {
    EtcdError::bounded(Operation::KeepAlive, key, limit, keeper.keep_alive()).await?;
    match EtcdError::bounded(Operation::KeepAlive, key, limit, responses.message()).await? {
        Some(answer) => Ok(answer.ttl()),
        None => Err(EtcdError::request(
            Operation::KeepAlive,
            key,
            etcd_client::Error::LeaseKeepAliveError("etcd closed the stream".into()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_whole_seconds_rounded_up() {
        assert_eq!(ttl_seconds(Duration::ZERO), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1)), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(2001)), 3);
        assert_eq!(ttl_seconds(Duration::from_secs(5)), 5);
        assert_eq!(ttl_seconds(Duration::MAX), i64::MAX);
    }
}
