//! [`DnsError`]: why a DNS name could not be used or resolved.

use std::fmt;

use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::ResolveError;

/// Why a DNS name could not be used or resolved.
///
/// Errors from [`Dns::a`](super::Dns::a) and [`Dns::srv`](super::Dns::srv) reject bad input before any query. Errors the
/// stream yields keep the last good set (see the [module docs](super#failures)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DnsError {
    /// The name is not a valid DNS name (empty, an empty label, a label over 63 bytes, a
    /// name over 255 bytes, characters IDNA rejects).
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Port 0 was given to [`Dns::a`](super::Dns::a); no endpoint can listen there.
    InvalidPort,
    /// A setting is out of range (the source was polled without the balancer's check;
    /// see [`Dns`](super::Dns)). The source ends after yielding it.
    InvalidConfig(crate::error::BuildError),
    /// The system's resolver configuration could not be read.
    Config(String),
    /// The name does not exist (`NXDOMAIN`).
    NotFound {
        /// The name looked up.
        name: String,
    },
    /// The name exists but has no usable records: an empty answer, or only SRV records
    /// whose targets do not resolve (or all have port 0 or target `.`).
    NoRecords {
        /// The name looked up.
        name: String,
    },
    /// The lookup failed: the server answered with an error (SERVFAIL, REFUSED), or did
    /// not answer in time.
    Resolve {
        /// The name looked up.
        name: String,
        /// The server's response code, when it sent one.
        response_code: Option<u16>,
        /// The resolver's error.
        source: ResolveError,
    },
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::InvalidName { name, reason } => {
                write!(f, "invalid DNS name {name:?}: {reason}")
            }
            DnsError::InvalidPort => f.write_str("port 0 is not a valid endpoint port"),
            DnsError::InvalidConfig(invalid) => invalid.fmt(f),
            DnsError::Config(e) => write!(f, "cannot read the system's DNS configuration: {e}"),
            DnsError::NotFound { name } => write!(f, "DNS name {name} does not exist (NXDOMAIN)"),
            DnsError::NoRecords { name } => {
                write!(
                    f,
                    "DNS name {name} has no usable records; the last set is kept"
                )
            }
            DnsError::Resolve {
                name,
                response_code: Some(code),
                ..
            } => write!(
                f,
                "DNS lookup of {name} failed with {}; the last set is kept",
                <ResponseCode as From<u16>>::from(*code)
            ),
            DnsError::Resolve { name, source, .. } => {
                write!(
                    f,
                    "DNS lookup of {name} failed: {source}; the last set is kept"
                )
            }
        }
    }
}

impl std::error::Error for DnsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DnsError::Resolve { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl DnsError {
    pub(super) fn from_resolve(name: &str, e: ResolveError) -> Self {
        let name = name.to_string();
        if let Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) =
            e.proto().map(|p| p.kind())
        {
            match *response_code {
                ResponseCode::NXDomain => return DnsError::NotFound { name },
                ResponseCode::NoError => return DnsError::NoRecords { name },
                code => {
                    return DnsError::Resolve {
                        name,
                        response_code: Some(u16::from(code)),
                        source: e,
                    }
                }
            }
        }
        DnsError::Resolve {
            name,
            response_code: None,
            source: e,
        }
    }
}
