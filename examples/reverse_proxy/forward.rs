//! Forwarding one request on the hyper path: the refusals of `rules.rs`, the rewritten
//! headers (hop-by-hop removed, `x-forwarded-for` and `x-forwarded-proto` added), retries
//! through the balancer within the budget, and the mapping of errors to 400, 408, 502, 503
//! and 504 responses with a generic reason.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ALLOW, CONNECTION, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tower::retry::budget::Budget;
use tower::ServiceExt;
use tower_lb::error::Unavailable;
use tower_lb::http::ClientBodyError;

use super::balancer::UpstreamBody;
use super::config::HostMode;
use super::rules;
use super::server::{ClientConn, State};
use super::upload::{BodyTimeout, Upload};
use super::upstream::{ConnectTimeout, NotSent, ResponseTimeout};

/// What the proxy answers with: the upstream's body, or its own error text.
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// The client went away in the middle of its request (an aborted upload): there is no one
/// to answer, and hyper closes the connection.
#[derive(Debug)]
pub(super) struct ClientGone;

impl fmt::Display for ClientGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the client aborted its request")
    }
}

impl std::error::Error for ClientGone {}

/// Forwards one request through the balancer and turns its result into the response.
pub(super) async fn forward(
    state: Arc<State>,
    client: Arc<ClientConn>,
    mut request: Request<Incoming>,
) -> Result<Response<ProxyBody>, ClientGone> {
    // Request smuggling: hyper lets Transfer-Encoding win over Content-Length, drops the
    // latter and closes the connection after the answer (RFC 9112, section 6.3); the scan
    // of the raw bytes (`framing`) tells which request it was, and it is refused outright.
    let index = client.requests.fetch_add(1, Ordering::Relaxed);
    if client.conflict.is(index) {
        return Ok(refused(rules::Refusal {
            status: StatusCode::BAD_REQUEST,
            reason: "the request has both Content-Length and Transfer-Encoding",
        }));
    }
    if let Err(refusal) = rules::check(&request) {
        return Ok(refused(refusal));
    }
    let idempotent = request.method().is_idempotent();
    let headers = request.headers_mut();
    strip_hop_by_hop(headers);
    rules::drop_underscored(headers);
    append_forwarded_for(headers, &client.forwarded_for);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if state.host == HostMode::Pass && !headers.contains_key(HOST) {
        // HTTP/1.0 clients may send none: use the authority of an absolute URI if given.
        if let Some(value) = request
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            request.headers_mut().insert(HOST, value);
        }
    }
    // The `client-ip` hash key reads the peer address from the extensions (an allocation
    // that other keys do without).
    if state.client_ip_key {
        request.extensions_mut().insert(client.addr);
    }

    // The body's errors are the client's, and it may stall only so long between reads.
    let mut request = request.map(|body| Upload::new(body, state.body_read_timeout));
    let mut attempt = 1;
    loop {
        // No timeout around the balancer: the request timeout is the upstream's (see
        // `UpstreamInner::send`), so that outlier detection counts it as a failure.
        let error = match state.balancer.clone().oneshot(request).await {
            Ok(response) => {
                if attempt == 1 {
                    state.budget.deposit();
                }
                let mut response = response.map(Either::Left);
                strip_hop_by_hop(response.headers_mut());
                // The proxy answers in its own HTTP version, whatever the upstream's
                // (an HTTP/1.0 upstream's answer would otherwise say HTTP/1.0).
                *response.version_mut() = http::Version::HTTP_11;
                return Ok(response);
            }
            Err(error) => error,
        };
        // A request that never left the proxy comes back with its error: an idempotent one
        // is tried again within the attempts and the budget. The balancer picks afresh; a
        // hashing strategy passes over the upstreams the request has been to.
        match error.downcast::<NotSent<Request<Upload>>>() {
            Ok(not_sent) => {
                let retry = idempotent && attempt < state.attempts && state.budget.withdraw();
                match not_sent.take() {
                    (Some(back), _) if retry => {
                        request = back;
                        attempt += 1;
                    }
                    (_, cause) => return Ok(error_response(&*cause, attempt)),
                }
            }
            Err(error) => {
                return client_fault(&*error)
                    .unwrap_or_else(|| Ok(error_response(&*error, attempt)))
            }
        }
    }
}

/// The answer to a request that failed because of its own body, if it did: 408 when it
/// stalled (nginx: `client_body_timeout`), 400 when it was malformed, and none when the
/// client went away (nginx: 499 in its log, nothing on the wire).
fn client_fault(
    error: &(dyn std::error::Error + 'static),
) -> Option<Result<Response<ProxyBody>, ClientGone>> {
    let fault = ClientBodyError::find(error)?.get_ref();
    if find::<BodyTimeout>(fault).is_some() {
        return Some(Ok(refused(rules::Refusal {
            status: StatusCode::REQUEST_TIMEOUT,
            reason: "the request body stalled",
        })));
    }
    let malformed = find::<std::io::Error>(fault).is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
        )
    });
    Some(if malformed {
        Ok(refused(rules::Refusal {
            status: StatusCode::BAD_REQUEST,
            reason: "the request body is malformed",
        }))
    } else {
        Err(ClientGone)
    })
}

/// The proxy's answer to a request it refuses: the status and its reason, and the
/// connection closes (what follows on it cannot be trusted to be a request).
fn refused(refusal: rules::Refusal) -> Response<ProxyBody> {
    let mut response = proxy_error(refusal.status, refusal.reason);
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    if refusal.status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, HeaderValue::from_static(rules::ALLOWED));
    }
    response
}

/// Removes the hop-by-hop headers (RFC 9110, section 7.6.1), including those the
/// `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(connection) = headers.remove(CONNECTION) {
        // Rare: most clients send no Connection header with HTTP/1.1.
        let named: Vec<HeaderName> = std::iter::once(connection)
            .chain(headers.get_all(CONNECTION).iter().cloned())
            .filter_map(|value| value.to_str().map(str::to_owned).ok())
            .flat_map(|value| {
                value
                    .split(',')
                    .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
                    .collect::<Vec<_>>()
            })
            .collect();
        for name in &named {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    for name in &HOP_BY_HOP {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
}

/// The hop-by-hop headers besides those `Connection` names, as constants: looking up a
/// `&str` would parse the name on every request.
pub(super) const HOP_BY_HOP: [HeaderName; 6] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TRANSFER_ENCODING,
    http::header::TE,
    http::header::TRAILER,
    http::header::UPGRADE,
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Appends the client's address to `x-forwarded-for` (nginx: `$proxy_add_x_forwarded_for`).
fn append_forwarded_for(headers: &mut HeaderMap, client: &HeaderValue) {
    let name = X_FORWARDED_FOR;
    if !headers.contains_key(&name) {
        headers.insert(name, client.clone());
        return;
    }
    // Every value the request carried, in order, then this client.
    let mut chain = Vec::new();
    for value in headers.get_all(&name) {
        chain.extend_from_slice(value.as_bytes());
        chain.extend_from_slice(b", ");
    }
    chain.extend_from_slice(client.as_bytes());
    let value = HeaderValue::from_bytes(&chain).unwrap_or_else(|_| client.clone());
    headers.insert(name, value); // replaces every earlier value
}

/// 503 when the balancer had no upstream to offer, 504 when connecting or the response
/// head timed out, 502 when talking to the chosen upstream failed. The client gets a
/// generic reason (nginx's pages say as little); the error, with the upstream's address and
/// its causes, goes to the log.
pub(super) fn error_response(
    error: &(dyn std::error::Error + 'static),
    attempts: u32,
) -> Response<ProxyBody> {
    let (status, reason) = if find::<Unavailable>(error).is_some() {
        (StatusCode::SERVICE_UNAVAILABLE, "no upstream is available")
    } else if find::<ConnectTimeout>(error).is_some() || find::<ResponseTimeout>(error).is_some() {
        (
            StatusCode::GATEWAY_TIMEOUT,
            "the upstream did not answer in time",
        )
    } else {
        (StatusCode::BAD_GATEWAY, "the upstream request failed")
    };
    let tries = if attempts > 1 {
        format!(" (after {attempts} tries)")
    } else {
        String::new()
    };
    eprintln!("proxy: {status}{tries}: {}", error_chain(error));
    proxy_error(status, reason)
}

pub(super) fn find<'a, E: std::error::Error + 'static>(
    mut error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    loop {
        if let Some(found) = error.downcast_ref::<E>() {
            return Some(found);
        }
        error = error.source()?;
    }
}

/// An answer of the proxy's own, with a plain text body that says what happened.
fn proxy_error(status: StatusCode, reason: &str) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::from(format!("{status}\n{reason}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// An error and its sources, as `outer: inner: innermost`.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
