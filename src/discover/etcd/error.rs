//! [`EtcdError`]: what went wrong talking to etcd.

use std::fmt;
use std::time::Duration;

use super::value::ValueError;

/// What an etcd request was doing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// Listing the keys under the prefix.
    List,
    /// Starting a watch on the prefix, or reading from it.
    Watch,
    /// Granting a lease for a registration.
    Grant,
    /// Writing a registration's key.
    Put,
    /// Keeping a registration's lease alive.
    KeepAlive,
    /// Revoking a registration's lease (which deletes its key).
    Revoke,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::List => "list",
            Operation::Watch => "watch",
            Operation::Grant => "grant a lease for",
            Operation::Put => "put",
            Operation::KeepAlive => "keep alive the lease of",
            Operation::Revoke => "revoke the lease of",
        })
    }
}

/// One key skipped because its value could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidValue {
    /// The etcd key (bytes that are not UTF-8 shown with replacement characters).
    pub key: String,
    /// What is wrong with the value (or the key).
    pub error: ValueError,
}

/// Why etcd discovery or a registration failed. Discovery errors keep the last good set
/// (see the [module docs](super#failures)).
#[derive(Debug)]
#[non_exhaustive]
pub enum EtcdError {
    /// A setting is out of range (the source was polled without the balancer's check;
    /// see [`Etcd`](super::Etcd)). The source ends after yielding it.
    InvalidConfig(crate::error::BuildError),
    /// A request to etcd failed (connection refused or lost, no leader, a gRPC error).
    Request {
        /// What it was doing.
        op: Operation,
        /// The prefix or key it was about.
        target: String,
        /// The client's error (boxed: it carries a whole gRPC status).
        source: Box<etcd_client::Error>,
    },
    /// A request got no answer in time.
    Timeout {
        /// What it was doing.
        op: Operation,
        /// The prefix or key it was about.
        target: String,
        /// How long it waited.
        after: Duration,
    },
    /// etcd closed the watch stream (a member shutting down, say).
    WatchEnded {
        /// The prefix watched.
        prefix: String,
    },
    /// The watch fell behind a compaction: the revisions it needed are gone.
    Compacted {
        /// The prefix watched.
        prefix: String,
        /// The oldest revision etcd still has.
        compact_revision: i64,
    },
    /// etcd cancelled the watch (for example because the member lost its leader, when the
    /// client requires one).
    Canceled {
        /// The prefix watched.
        prefix: String,
        /// etcd's reason, possibly empty.
        reason: String,
    },
    /// Keys whose values could not be read were skipped; every other key was applied.
    /// One error per list or watch response, naming each key.
    InvalidValues {
        /// The prefix watched.
        prefix: String,
        /// The keys skipped, and why.
        skipped: Vec<InvalidValue>,
    },
    /// A registration's lease ran out before it could be renewed; the key is written
    /// again under a new lease.
    LeaseExpired {
        /// The registration's key.
        key: String,
        /// The lease that expired.
        lease: i64,
    },
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EtcdError::InvalidConfig(invalid) => invalid.fmt(f),
            EtcdError::Request { op, target, source } => {
                write!(f, "etcd: cannot {op} {target:?}: {source}")
            }
            EtcdError::Timeout { op, target, after } => {
                write!(f, "etcd: no answer to {op} {target:?} within {after:?}")
            }
            EtcdError::WatchEnded { prefix } => {
                write!(f, "etcd closed the watch on {prefix:?}; listing it again")
            }
            EtcdError::Compacted {
                prefix,
                compact_revision,
            } => write!(
                f,
                "etcd compacted the history a watch on {prefix:?} needed (now from revision \
                 {compact_revision}); listing it again"
            ),
            EtcdError::Canceled { prefix, reason } => {
                write!(
                    f,
                    "etcd cancelled the watch on {prefix:?} ({reason}); listing it again"
                )
            }
            EtcdError::InvalidValues { prefix, skipped } => {
                write!(
                    f,
                    "etcd: {} key(s) under {prefix:?} skipped:",
                    skipped.len()
                )?;
                for (i, s) in skipped.iter().enumerate() {
                    let sep = if i == 0 { " " } else { "; " };
                    write!(f, "{sep}{:?}: {}", s.key, s.error)?;
                }
                Ok(())
            }
            EtcdError::LeaseExpired { key, lease } => write!(
                f,
                "etcd: lease {lease:x} of {key:?} expired before it was renewed; registering again"
            ),
        }
    }
}

impl std::error::Error for EtcdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EtcdError::Request { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

impl EtcdError {
    /// A failed request.
    pub(super) fn request(op: Operation, target: &str, source: etcd_client::Error) -> Self {
        EtcdError::Request {
            op,
            target: target.to_string(),
            source: Box::new(source),
        }
    }

    /// Runs `request`, turning its error or a timeout after `limit` into an [`EtcdError`].
    pub(super) async fn bounded<T>(
        op: Operation,
        target: &str,
        limit: Duration,
        request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, EtcdError> {
        match tokio::time::timeout(limit, request).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(EtcdError::request(op, target, e)),
            Err(_) => Err(EtcdError::Timeout {
                op,
                target: target.to_string(),
                after: limit,
            }),
        }
    }
}
