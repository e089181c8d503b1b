//! The fast path's request side: the client's head parsed in place (httparse), checked
//! against what the fast path takes, and rewritten for the upstream ([`FastRequest`]);
//! anything else is left to hyper ([`Parsed::Hyper`]).

use bytes::BytesMut;

use super::{rules, ClientConn, HostMode, HOP_BY_HOP};

/// Most headers httparse reads in one head (hyper's limit too).
pub(super) const MAX_HEADERS: usize = 100;

/// A request on the fast path: its head, rewritten for the upstream.
pub struct FastRequest {
    /// Request line and headers, without `Host` when the upstream's is used, and without the
    /// blank line that ends the head.
    pub(super) head: BytesMut,
    /// A HEAD request: the response has no body, whatever its headers say.
    pub(super) head_method: bool,
    /// The client asked to close the connection after this exchange.
    pub(super) close: bool,
}

/// What became of one request head in the buffer.
pub(super) enum Parsed {
    /// A fast-path request, and the length of its head in the buffer.
    Fast(FastRequest, usize),
    /// Not for the fast path: hyper takes the connection from here.
    Hyper,
    /// The head is not complete yet.
    Partial,
}

/// Reads the request head at the start of `buf`.
pub(super) fn parse(
    buf: &[u8],
    client: &ClientConn,
    host_mode: HostMode,
    max_head: usize,
) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        // Larger than the limit: hyper answers 431.
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Ok(httparse::Status::Complete(_)) | Err(_) => return Parsed::Hyper,
    };
    let (Some(method), Some(path), Some(1)) = (request.method, request.path, request.version)
    else {
        return Parsed::Hyper;
    };
    let head_method = method == "HEAD";
    if !matches!(method, "GET" | "HEAD" | "OPTIONS" | "DELETE")
        || !origin_form(path)
        || rules::has_dot_segment(path)
    {
        return Parsed::Hyper;
    }
    // Hop-by-hop headers, and those `Connection` names.
    let mut close = false;
    let mut named: Vec<&[u8]> = Vec::new();
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade")
                    || token.eq_ignore_ascii_case(b"host")
                    || token.len() >= 11 && token[..11].eq_ignore_ascii_case(b"x-forwarded")
                {
                    // Rare, and the headers this path rewrites: hyper's path decides.
                    return Parsed::Hyper;
                }
                named.push(token);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
            || (name.eq_ignore_ascii_case("content-length") && header.value != b"0")
        {
            return Parsed::Hyper;
        }
    }
    let mut head = BytesMut::with_capacity(len + 64);
    head.extend_from_slice(method.as_bytes());
    head.extend_from_slice(b" ");
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host = false;
    let mut forwarded_for: Option<Vec<u8>> = None;
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("host") {
            if host || !rules::valid_host(header.value) {
                return Parsed::Hyper; // two Host headers, or a bad one: hyper's path refuses
            }
            host = true;
            if host_mode == HostMode::Pass {
                push_header(&mut head, b"host", header.value);
            }
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            let chain = forwarded_for.get_or_insert_with(Vec::new);
            if !chain.is_empty() {
                chain.extend_from_slice(b", ");
            }
            chain.extend_from_slice(header.value);
            continue;
        }
        if is_hop_by_hop(name.as_bytes(), &named)
            || name.eq_ignore_ascii_case("x-forwarded-proto")
            || name.eq_ignore_ascii_case("content-length")
            || rules::has_underscore(name.as_bytes())
        {
            continue;
        }
        push_header(&mut head, name.as_bytes(), header.value);
    }
    if !host {
        return Parsed::Hyper;
    }
    match forwarded_for {
        Some(mut chain) => {
            chain.extend_from_slice(b", ");
            chain.extend_from_slice(client.forwarded_for.as_bytes());
            push_header(&mut head, b"x-forwarded-for", &chain);
        }
        None => push_header(
            &mut head,
            b"x-forwarded-for",
            client.forwarded_for.as_bytes(),
        ),
    }
    head.extend_from_slice(b"x-forwarded-proto: http\r\n");
    Parsed::Fast(
        FastRequest {
            head,
            head_method,
            close,
        },
        len,
    )
}

/// A target in origin form that hyper (the `http` crate) takes as it is: a path, no
/// fragment, no byte it refuses.
fn origin_form(target: &str) -> bool {
    if !target.starts_with('/') {
        return false;
    }
    // The common case, decided without copying the target: bytes that `http` takes in a
    // path and in a query alike (see the test below). Others are rare: `http` decides, and
    // as it drops a fragment, the equality refuses targets with one.
    target.bytes().all(plain_target_byte)
        || http::uri::PathAndQuery::try_from(target).is_ok_and(|p| p.as_str() == target)
}

fn plain_target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"/-._~%!$&'()*+,;=:@?".contains(&b)
}

pub(super) fn push_header(head: &mut BytesMut, name: &[u8], value: &[u8]) {
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// RFC 9110, section 7.6.1, plus the names the message's `Connection` header lists.
pub(super) fn is_hop_by_hop(name: &[u8], named: &[&[u8]]) -> bool {
    std::iter::once(&http::header::CONNECTION)
        .chain(&HOP_BY_HOP)
        .any(|h| h.as_str().as_bytes().eq_ignore_ascii_case(name))
        || named.iter().any(|h| h.eq_ignore_ascii_case(name))
}

impl std::fmt::Debug for FastRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FastRequest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_target_bytes_are_ones_http_takes_in_paths_and_queries() {
        for b in (0..=255u8).filter(|&b| plain_target_byte(b)) {
            let c = b as char;
            for target in [format!("/a{c}b"), format!("/a?q{c}b"), format!("/{c}")] {
                let parsed = http::uri::PathAndQuery::try_from(target.as_str());
                assert!(parsed.is_ok_and(|p| p.as_str() == target), "{target:?}");
            }
        }
        // And the check as a whole refuses what http refuses or changes.
        for target in ["/a<b", "/a b", "/a#frag", "/a?q#f", "*", "http://x/"] {
            assert!(!origin_form(target), "{target:?}");
        }
        for target in ["/", "/a/b?c=d&e=%20", "/a{b}", "/a\"b\"", "/~user/x.html"] {
            assert_eq!(
                origin_form(target),
                http::uri::PathAndQuery::try_from(target).is_ok(),
                "{target:?}"
            );
        }
    }
}
