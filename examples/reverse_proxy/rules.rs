//! What the proxy refuses to forward, as nginx refuses it (with `400 Bad Request`, or
//! `405 Not Allowed` for methods it does not proxy), and the request headers it drops.
//!
//! | request | answer | nginx |
//! |---|---|---|
//! | HTTP/1.1 without `Host`, or with two | 400 | 400 ("client sent invalid host header" or duplicate header) |
//! | `Host` empty, or with a space, a tab, a control byte, `/`, `\`, `@`, `..` or another byte a host name cannot hold | 400 | 400 (`ngx_http_validate_host`) |
//! | `Connection` naming `Host` (which would strip it) | 400 | forwards with Host (it reads only `close` and `keep-alive` there) |
//! | a method with a byte other than `A`-`Z`, `-`, `_` (`get`) | 400 | 400 |
//! | `TRACE`, `CONNECT` (no tunnels) | 405 | 405 (`CONNECT`: in current nginx) |
//! | the target `*` (`OPTIONS *` included) | 400 | 400 |
//! | a `..` segment in the path, written as is or percent-encoded (`/a/../b`, `/%2e%2e/`) | 400 | 400 for a `..` above the root; below it, nginx merges the path |
//! | a header name with `_` | dropped | dropped (`underscores_in_headers off`) |
//!
//! nginx merges `/a/../b` into `/b` to choose a location, but `proxy_pass` without a URI
//! forwards the original; the proxy cannot merge without changing what the upstream sees,
//! and a client has no need for such a path, so it refuses every `..` segment. The fast
//! path hands every request these rules refuse to hyper's path, where [`check`] answers
//! it, so that each rule lives in one place.

use http::header::{CONNECTION, HOST};
use http::{HeaderMap, Method, Request, StatusCode, Version};

/// The methods the proxy forwards, for the `Allow` header of a 405.
pub const ALLOWED: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Why a request is refused: its status and the reason, for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: &'static str,
}

const fn bad(reason: &'static str) -> Refusal {
    Refusal {
        status: StatusCode::BAD_REQUEST,
        reason,
    }
}

/// Checks a request hyper parsed against the rules above.
pub fn check<B>(request: &Request<B>) -> Result<(), Refusal> {
    let method = request.method();
    if method == Method::CONNECT || method == Method::TRACE {
        return Err(Refusal {
            status: StatusCode::METHOD_NOT_ALLOWED,
            reason: "the method is not allowed",
        });
    }
    if !valid_method(method.as_str().as_bytes()) {
        return Err(bad("the method is not in capital letters"));
    }
    let uri = request.uri();
    if uri.path() == "*" {
        return Err(bad("the target * is not proxied"));
    }
    if has_dot_segment(uri.path()) {
        return Err(bad("the path has a `..` segment"));
    }
    let headers = request.headers();
    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(bad("the request has two Host headers")),
        (Some(host), None) if !valid_host(host.as_bytes()) => {
            return Err(bad("the Host header is not a host name"))
        }
        (None, _) if request.version() >= Version::HTTP_11 => {
            return Err(bad("an HTTP/1.1 request needs a Host header"))
        }
        _ => {}
    }
    if names_host(headers) {
        return Err(bad("the Connection header names Host"));
    }
    Ok(())
}

/// nginx's methods: capital letters, `-` and `_`.
pub fn valid_method(method: &[u8]) -> bool {
    !method.is_empty()
        && method
            .iter()
            .all(|&b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
}

/// Whether `value` is a host name, an IPv4 address or a bracketed IP literal, with an
/// optional port: RFC 3986's `host [ ":" port ]`, without `..` (as nginx).
pub fn valid_host(value: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = value.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &rest[..end];
        let ok = !literal.is_empty()
            && literal
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b":.%-_~".contains(&b));
        if !ok {
            return false;
        }
        match &rest[end + 1..] {
            [] => return true,
            [b':', port @ ..] => (&b"x"[..], port),
            _ => return false,
        }
    } else {
        match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon + 1..]),
            None => (value, &b""[..]),
        }
    };
    !host.is_empty()
        && host.iter().all(|&b| reg_name_byte(b))
        && !host.windows(2).any(|w| w == b"..")
        && port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
}

/// RFC 3986's `reg-name`: unreserved, sub-delims and `%` of percent-encoding.
fn reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b)
}

/// Whether a path (a query after `?` is not looked at) has a `..` segment, as is or with
/// its dots percent-encoded.
pub fn has_dot_segment(target: &str) -> bool {
    let path = target.split('?').next().unwrap_or_default();
    // The common case costs one scan: no dot and no percent sign, no dot segment.
    if !path.bytes().any(|b| b == b'.' || b == b'%') {
        return false;
    }
    path.split('/').any(|segment| {
        let segment = segment.as_bytes();
        let dot = |s: &[u8]| s == b"." || s.eq_ignore_ascii_case(b"%2e");
        match segment.len() {
            2 => segment == b"..",
            4 => {
                dot(&segment[..1]) && dot(&segment[1..]) || dot(&segment[..3]) && dot(&segment[3..])
            }
            6 => dot(&segment[..3]) && dot(&segment[3..]),
            _ => false,
        }
    })
}

/// Whether the `Connection` header lists `Host`.
fn names_host(headers: &HeaderMap) -> bool {
    headers.get_all(CONNECTION).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"host"))
    })
}

/// Removes the headers whose names have `_` (nginx: `underscores_in_headers off`).
pub fn drop_underscored(headers: &mut HeaderMap) {
    // The common case allocates nothing: no such name.
    if !headers
        .keys()
        .any(|name| has_underscore(name.as_str().as_bytes()))
    {
        return;
    }
    let names: Vec<_> = headers
        .keys()
        .filter(|name| has_underscore(name.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

pub fn has_underscore(name: &[u8]) -> bool {
    name.contains(&b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for good in [
            "example.test",
            "example.test:8080",
            "a",
            "10.0.0.1:80",
            "[::1]",
            "[::1]:8080",
            "under_score.test",
            "xn--bcher-kva.example",
        ] {
            assert!(valid_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "", "a b", "a\tb", "a/b", "a\\b", "user@a", "a..b", ":80", "a:8o", "a:123456", "[::1",
            "[]", "[::1]x", "a\0b", "é.test",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn dot_segments() {
        for bad in [
            "/..",
            "/../x",
            "/a/../b",
            "/a/..?q",
            "/%2e%2e/x",
            "/%2E%2e",
            "/.%2e/",
            "/%2e./",
        ] {
            assert!(has_dot_segment(bad), "{bad}");
        }
        for good in [
            "/",
            "/a/./b",
            "/a..b",
            "/...",
            "/.a",
            "/a?x=/../",
            "/%2e",
            "/%2f%2f",
            "/v1.2/x",
        ] {
            assert!(!has_dot_segment(good), "{good}");
        }
    }

    #[test]
    fn methods() {
        for good in ["GET", "PURGE", "M-SEARCH", "X_Y"] {
            assert!(valid_method(good.as_bytes()), "{good}");
        }
        for bad in ["get", "Get", "GET1", ""] {
            assert!(!valid_method(bad.as_bytes()), "{bad}");
        }
    }
}
