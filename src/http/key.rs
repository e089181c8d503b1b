//! Request keys for `http::Request`: the bytes a consistent-hashing strategy (ring hash,
//! Maglev, rendezvous) hashes to keep a client, a session or a cache key on one endpoint.
//!
//! | key | bytes | nginx equivalent |
//! |---|---|---|
//! | [`Header::new(name)`](Header) | the header's first value | `hash $http_NAME consistent` |
//! | [`Cookie::new(name)`](Cookie) | the cookie's value, quotes kept | `hash $cookie_NAME consistent` |
//! | [`Path`] | the raw URI path | `$uri`, except that nginx decodes and normalises it |
//! | [`PathAndQuery`] | the path and `?query` | `hash $request_uri consistent` |
//! | [`QueryParam::new(name)`](QueryParam) | the parameter's raw value | `hash $arg_NAME consistent` |
//! | [`ClientIp`] | the client IP as text, e.g. `10.0.0.1` | `hash $remote_addr consistent` |
//!
//! [`HttpKey`] is any one of them, parsed from the flag syntax
//! `header:NAME`, `cookie:NAME`, `query:NAME`, `path`, `path-query` or `client-ip`.
//!
//! ```
//! use std::net::SocketAddr;
//! use tower_lb::http::key::{ClientIp, Cookie, Header, HttpKey, PathAndQuery, QueryParam};
//! use tower_lb::key::RequestKey;
//!
//! let mut request = http::Request::builder()
//!     .uri("/cart?user=42&lang=en")
//!     .header("x-tenant", "acme")
//!     .header("cookie", "theme=dark; session=abc123")
//!     .body(())
//!     .unwrap();
//! // Servers do not add the peer address by themselves; the accept loop inserts it.
//! let peer: SocketAddr = "10.0.0.1:50000".parse().unwrap();
//! request.extensions_mut().insert(peer);
//!
//! let tenant = Header::new(http::HeaderName::from_static("x-tenant"));
//! assert_eq!(tenant.key(&request).as_deref(), Some(&b"acme"[..]));
//! assert_eq!(Cookie::new("session").key(&request).as_deref(), Some(&b"abc123"[..]));
//! assert_eq!(QueryParam::new("user").key(&request).as_deref(), Some(&b"42"[..]));
//! assert_eq!(
//!     PathAndQuery.key(&request).as_deref(),
//!     Some(&b"/cart?user=42&lang=en"[..])
//! );
//! assert_eq!(ClientIp.key(&request).as_deref(), Some(&b"10.0.0.1"[..]));
//! assert_eq!(Cookie::new("missing").key(&request), None);
//!
//! // The same keys from a command-line flag such as `--hash-key cookie:session`.
//! let from_flag: HttpKey = "cookie:session".parse().unwrap();
//! assert_eq!(from_flag.key(&request).as_deref(), Some(&b"abc123"[..]));
//! assert!("cookie:".parse::<HttpKey>().is_err());
//! ```
//!
//! # Missing and empty keys
//!
//! A key that is absent (no such header, cookie or parameter, no client address) is `None`.
//! A key that is present but empty (`x-tenant:` with no value, `?user=`) is `Some` of an
//! empty slice: the extractors report what the request holds, and the balancer treats an
//! empty key like a missing one, routing the request by the strategy's missing-key fallback
//! (see [`crate::key`]).
//!
//! # Borrowing
//!
//! Every key but [`ClientIp`] borrows its bytes from the request (`Cow::Borrowed`), so taking
//! a key does not allocate. [`ClientIp`] formats the address as text, which allocates a few
//! bytes; [`PathAndQuery`] allocates only for an absolute-form URI with an empty path
//! (`http://host?q`), to add the `/` that origin-form requests carry.
//!
//! # Retries
//!
//! Every key here reads a [`PreviousEndpoints`] extension: a retry that names the endpoints
//! its earlier tries went to passes over them in its key's preference order and goes to the
//! next one (see [`crate::key`](crate::key#retries-go-to-another-endpoint)).
//!
//! # Getting the client address into the request
//!
//! [`ClientIp`] reads a [`SocketAddr`] (or an [`IpAddr`]) from the request's
//! [extensions](http::Request::extensions). hyper's servers do not add one: insert it where
//! the connection is accepted, since that is where the peer address is known.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
//! use hyper_util::rt::TokioIo;
//!
//! # async fn handle(request: Request<Incoming>) -> Result<Response<String>, hyper::Error> {
//! #     Ok(Response::new(String::new()))
//! # }
//! # async fn run() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! loop {
//!     let (stream, peer): (_, SocketAddr) = listener.accept().await?;
//!     let service = service_fn(move |mut request: Request<Incoming>| {
//!         request.extensions_mut().insert(peer); // what ClientIp reads
//!         handle(request)
//!     });
//!     tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
//! }
//! # }
//! ```
//!
//! axum's `into_make_service_with_connect_info::<SocketAddr>()` stores the address as
//! `ConnectInfo<SocketAddr>`, a different type: copy it into a plain `SocketAddr` in a
//! middleware, or read it with [`key_fn`](crate::key::key_fn). Behind another proxy the
//! connection's peer is that proxy; key on the header it sets instead
//! (`Header::try_new("x-real-ip")`), and only if that proxy is trusted to set it.

use std::borrow::Cow;
use std::error::Error;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use http::header::{HeaderName, COOKIE};
use http::Request;

use crate::key::RequestKey;

/// A request extension for retries under a hashing strategy: the names of the endpoints
/// the request's earlier tries went to (as [`Endpoints::name`](crate::strategy::Endpoints::name)
/// gives them). The balancer passes over them and sends the retry to the next endpoint of
/// the key's order; see [`crate::key`](crate::key#retries-go-to-another-endpoint).
///
/// ```
/// use tower_lb::http::key::{Path, PreviousEndpoints};
/// use tower_lb::key::RequestKey;
///
/// let mut retry = http::Request::new(());
/// retry
///     .extensions_mut()
///     .insert(PreviousEndpoints(vec!["10.0.0.1:80".into()])); // the first try failed there
/// assert_eq!(Path.previous_endpoints(&retry), ["10.0.0.1:80"]);
/// assert!(Path.previous_endpoints(&http::Request::new(())).is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreviousEndpoints(pub Vec<String>);

impl PreviousEndpoints {
    /// Adds `served_by` (the endpoint an earlier try went to) to the request's
    /// `PreviousEndpoints`, creating it: what a retry policy does before it sends a request
    /// again, with the [`ServedBy`](super::ServedBy) of the failed try's response or error.
    ///
    /// ```
    /// use tower_lb::http::key::{Path, PreviousEndpoints};
    /// use tower_lb::http::ServedBy;
    /// use tower_lb::key::RequestKey;
    ///
    /// # fn retry<B>(request: &mut http::Request<B>, failed: &Result<http::Response<()>, tower_lb::error::BoxError>) {
    /// // In a `tower::retry::Policy`, with the result of the try that failed:
    /// if let Some(served_by) = ServedBy::of(failed) {
    ///     PreviousEndpoints::add(request, served_by);
    /// }
    /// # }
    /// ```
    pub fn add<B>(request: &mut Request<B>, served_by: &super::ServedBy) {
        let previous = request
            .extensions_mut()
            .get_or_insert_with(PreviousEndpoints::default);
        if !previous.0.iter().any(|p| p == served_by.name()) {
            previous.0.push(served_by.name().to_owned());
        }
    }

    fn of<B>(request: &Request<B>) -> &[String] {
        request
            .extensions()
            .get::<PreviousEndpoints>()
            .map_or(&[], |p| &p.0)
    }
}

/// The value of a request header.
///
/// The key is the header value's raw bytes: values that are not UTF-8 (`obs-text`) are hashed
/// as they are. If the header appears more than once, the **first** value is the key (the
/// others are ignored, not joined).
///
/// ```
/// use tower_lb::http::key::Header;
/// use tower_lb::key::RequestKey;
///
/// let key = Header::new(http::header::HOST);
/// let request = http::Request::get("/").header("host", "shop.example").body(()).unwrap();
/// assert_eq!(key.key(&request).as_deref(), Some(&b"shop.example"[..]));
///
/// // Names from configuration are checked when the key is made, not when it is used.
/// assert!(Header::try_new("x-user-id").is_ok());
/// assert!(Header::try_new("bad name").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    name: HeaderName,
}

impl Header {
    /// A key on the header `name`.
    pub fn new(name: HeaderName) -> Self {
        Header { name }
    }

    /// A key on the header named `name`, which is case-insensitive (`X-User` and `x-user`
    /// are the same header).
    ///
    /// # Errors
    ///
    /// [`InvalidKey::InvalidName`] if `name` is empty or not a valid HTTP header name.
    pub fn try_new(name: impl AsRef<str>) -> Result<Self, InvalidKey> {
        let name = name.as_ref();
        HeaderName::from_bytes(name.as_bytes())
            .map(Header::new)
            .map_err(|_| InvalidKey::invalid_name(KeyKind::Header, name))
    }

    /// The header's name, in lowercase.
    pub fn name(&self) -> &HeaderName {
        &self.name
    }
}

impl From<HeaderName> for Header {
    fn from(name: HeaderName) -> Self {
        Header::new(name)
    }
}

impl<B> RequestKey<Request<B>> for Header {
    fn previous_endpoints<'r>(&self, request: &'r Request<B>) -> &'r [String] {
        PreviousEndpoints::of(request)
    }

    fn key<'r>(&self, request: &'r Request<B>) -> Option<Cow<'r, [u8]>> {
        request
            .headers()
            .get(&self.name)
            .map(|value| Cow::Borrowed(value.as_bytes()))
    }
}

/// The value of a cookie sent in the `Cookie` request header.
///
/// The `Cookie` header is read as RFC 6265 (section 5.4) `name=value` pairs separated by
/// `;`:
///
/// - Every `Cookie` header is read, in order (HTTP/2 clients may split cookies over several
///   headers); the **first** pair whose name matches is the key.
/// - Names match exactly and case-sensitively: `id` does not match `xid` or `ID`.
/// - Spaces and tabs around a name and around a value are ignored; whitespace inside a value
///   is kept.
/// - A value in double quotes keeps its quotes: `id="abc"` gives `"abc"` (5 bytes). RFC 6265
///   makes the quotes part of the value, browsers send them back unchanged, and nginx's
///   `$cookie_NAME` keeps them, so placement matches nginx's.
/// - A pair without `=` has no name and never matches; an empty value (`id=`) is an empty
///   key. Commas do not separate cookies.
/// - Bytes that are not UTF-8 are compared and returned as they are.
///
/// ```
/// use tower_lb::http::key::Cookie;
/// use tower_lb::key::RequestKey;
///
/// let key = Cookie::new("session");
/// let request = http::Request::get("/")
///     .header("cookie", "theme=dark; session=\"a1\"; session=later")
///     .body(())
///     .unwrap();
/// assert_eq!(key.key(&request).as_deref(), Some(&b"\"a1\""[..]));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cookie {
    name: Cow<'static, str>,
}

impl Cookie {
    /// A key on the cookie `name`.
    ///
    /// This never fails: a name that cannot occur in a `Cookie` header (one that is empty
    /// or holds whitespace, control characters, `;` or `=`) simply never matches. Use
    /// [`try_new`](Cookie::try_new) to reject such names instead, for example when they come
    /// from configuration.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Cookie { name: name.into() }
    }

    /// A key on the cookie `name`, checked.
    ///
    /// # Errors
    ///
    /// [`InvalidKey::InvalidName`] if `name` is empty or holds whitespace, control
    /// characters, `;` or `=`.
    pub fn try_new(name: impl Into<Cow<'static, str>>) -> Result<Self, InvalidKey> {
        checked_name(name.into(), b";=", KeyKind::Cookie).map(|name| Cookie { name })
    }

    /// The cookie's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<B> RequestKey<Request<B>> for Cookie {
    fn previous_endpoints<'r>(&self, request: &'r Request<B>) -> &'r [String] {
        PreviousEndpoints::of(request)
    }

    fn key<'r>(&self, request: &'r Request<B>) -> Option<Cow<'r, [u8]>> {
        let name = self.name.as_bytes();
        if name.is_empty() {
            return None;
        }
        request
            .headers()
            .get_all(COOKIE)
            .iter()
            .find_map(|header| find_cookie(header.as_bytes(), name))
            .map(Cow::Borrowed)
    }
}

/// The value of the first cookie called `name` in one `Cookie` header value.
fn find_cookie<'h>(header: &'h [u8], name: &[u8]) -> Option<&'h [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let eq = pair.iter().position(|&b| b == b'=')?;
        (trim_ows(&pair[..eq]) == name).then(|| trim_ows(&pair[eq + 1..]))
    })
}

/// `bytes` without leading and trailing spaces and tabs (HTTP's optional whitespace).
fn trim_ows(bytes: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// The URI path, e.g. `/users/42` for `GET /users/42?tab=1`.
///
/// The path is the raw one from the request line: not percent-decoded, with `.` and `..`
/// segments and repeated slashes kept. An absolute-form URI without a path
/// (`http://host`) has the path `/`; an authority-form URI (`CONNECT host:443`) has none, and
/// gives `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Path;

impl<B> RequestKey<Request<B>> for Path {
    fn previous_endpoints<'r>(&self, request: &'r Request<B>) -> &'r [String] {
        PreviousEndpoints::of(request)
    }

    fn key<'r>(&self, request: &'r Request<B>) -> Option<Cow<'r, [u8]>> {
        let path = request.uri().path();
        (!path.is_empty()).then_some(Cow::Borrowed(path.as_bytes()))
    }
}

/// The URI path and query, e.g. `/users/42?tab=1`.
///
/// For origin-form requests (what clients send to servers: `GET /users/42?tab=1`) this is
/// exactly nginx's `$request_uri`: the raw path and query as sent, not decoded. A `?` with an
/// empty query is kept, so `/a?` and `/a` are different keys. The fragment is never part of
/// it (clients do not send one, and `http::Uri` drops it). For an absolute-form URI
/// (`GET http://host/users/42?tab=1`, sent to forward proxies) it is the same
/// `/users/42?tab=1` as for the origin form; the scheme and host are not part of it.
/// An authority-form URI (`CONNECT host:443`) gives `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathAndQuery;

impl<B> RequestKey<Request<B>> for PathAndQuery {
    fn previous_endpoints<'r>(&self, request: &'r Request<B>) -> &'r [String] {
        PreviousEndpoints::of(request)
    }

    fn key<'r>(&self, request: &'r Request<B>) -> Option<Cow<'r, [u8]>> {
        let path_and_query = request.uri().path_and_query()?.as_str();
        if path_and_query.starts_with('?') {
            // `http://host?q`: the origin form of the same request is `/?q`.
            let mut owned = Vec::with_capacity(path_and_query.len() + 1);
            owned.push(b'/');
            owned.extend_from_slice(path_and_query.as_bytes());
            return Some(Cow::Owned(owned));
        }
        (!path_and_query.is_empty()).then_some(Cow::Borrowed(path_and_query.as_bytes()))
    }
}

/// The value of a query parameter, e.g. `42` for `user` in `/cart?user=42&lang=en`.
///
/// The query is split into parameters at `&` (not at `;`), and each parameter into a name
/// and a value at its first `=`:
///
/// - The **first** parameter whose name matches is the key; later ones are ignored.
/// - Names and values are raw, **not percent-decoded** (and `+` is not a space): the name
///   `user%5Fid` matches only `QueryParam::new("user%5Fid")`, not `"user_id"`, and the key
///   for `?q=a%20b` is `a%20b`. Clients that encode the same value differently land on
///   different endpoints. nginx's `$arg_NAME` is not decoded either.
/// - Names match exactly and case-sensitively.
/// - A parameter without `=` (`?debug`) has an empty value: the key is `Some` of an empty
///   slice, as for `?debug=`.
/// - A parameter with an empty name (`?=x`) matches no name; empty parameters (`?a=1&&b=2`)
///   are skipped.
///
/// ```
/// use tower_lb::http::key::QueryParam;
/// use tower_lb::key::RequestKey;
///
/// let request = http::Request::get("/search?q=rust%20lb&page=2&q=ignored").body(()).unwrap();
/// assert_eq!(QueryParam::new("q").key(&request).as_deref(), Some(&b"rust%20lb"[..]));
/// assert_eq!(QueryParam::new("sort").key(&request), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryParam {
    name: Cow<'static, str>,
}

impl QueryParam {
    /// A key on the query parameter `name`, compared with the raw (encoded) names in the
    /// query.
    ///
    /// This never fails: a name that cannot occur in a query (one that is empty or holds `&`,
    /// `=`, `#`, whitespace or control characters) simply never matches. Use
    /// [`try_new`](QueryParam::try_new) to reject such names instead.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        QueryParam { name: name.into() }
    }

    /// A key on the query parameter `name`, checked.
    ///
    /// # Errors
    ///
    /// [`InvalidKey::InvalidName`] if `name` is empty or holds `&`, `=`, `#`, whitespace or
    /// control characters.
    pub fn try_new(name: impl Into<Cow<'static, str>>) -> Result<Self, InvalidKey> {
        checked_name(name.into(), b"&=#", KeyKind::Query).map(|name| QueryParam { name })
    }

    /// The parameter's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// `name` if it is not empty and holds no whitespace, control character or byte of
/// `separators` (the bytes that end a name where it is looked for).
fn checked_name(
    name: Cow<'static, str>,
    separators: &[u8],
    kind: KeyKind,
) -> Result<Cow<'static, str>, InvalidKey> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| !(b.is_ascii_whitespace() || b.is_ascii_control() || separators.contains(&b)));
    if valid {
        Ok(name)
    } else {
        Err(InvalidKey::invalid_name(kind, &name))
    }
}

impl<B> RequestKey<Request<B>> for QueryParam {
    fn previous_endpoints<'r>(&self, request: &'r Request<B>) -> &'r [String] {
        PreviousEndpoints::of(request)
    }

    fn key<'r>(&self, request: &'r Request<B>) -> Option<Cow<'r, [u8]>> {
        let name = self.name.as_bytes();
        if name.is_empty() {
            return None;
        }
        let query = request.uri().query()?.as_bytes();
        query.split(|&b| b == b'&').find_map(|param| {
            let (param_name, value) = match param.iter().position(|&b| b == b'=') {
                Some(eq) => (&param[..eq], &param[eq + 1..]),
                None => (param, &param[param.len()..]),
            };
            (param_name == name).then_some(Cow::Borrowed(value))
        })
    }
}

/// The client's IP address as text, e.g. `10.0.0.1` or `2001:db8::1`.
///
/// The address comes from a [`SocketAddr`] in the request's
/// [extensions](http::Request::extensions), or failing that an [`IpAddr`]; without either
/// the key is `None`. Servers do not insert one by themselves: see the
/// [module docs](self#getting-the-client-address-into-the-request).
///
/// - The key is the address's text, not its octets, because nginx's
///   `hash $remote_addr consistent` hashes the text, and hashing the same bytes is what
///   lets an nginx-compatible ring place clients as nginx does. The port is not part of it
///   (each connection has a new port).
/// - IPv6 addresses are in the RFC 5952 form Rust prints: lowercase, the longest run of
///   zeros shortened to `::`.
/// - An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a dual-stack IPv6 socket reports
///   for an IPv4 client) is written as the IPv4 address (`10.0.0.1`), so a client keeps its
///   endpoint whichever socket it arrives on.
///
/// ```
/// use std::net::SocketAddr;
/// use tower_lb::http::key::ClientIp;
/// use tower_lb::key::RequestKey;
///
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert("[::ffff:10.0.0.1]:443".parse::<SocketAddr>().unwrap());
/// assert_eq!(ClientIp.key(&request).as_deref(), Some(&b"10.0.0.1"[..]));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientIp;

impl<B> RequestKey<Request<B>> for ClientIp {
    fn previous_endpoints<'r>(&self, request: &'r Request<B>) -> &'r [String] {
        PreviousEndpoints::of(request)
    }

    fn key<'r>(&self, request: &'r Request<B>) -> Option<Cow<'r, [u8]>> {
        let extensions = request.extensions();
        let ip = match extensions.get::<SocketAddr>() {
            Some(addr) => addr.ip(),
            None => *extensions.get::<IpAddr>()?,
        };
        Some(Cow::Owned(ip.to_canonical().to_string().into_bytes()))
    }
}

/// Any one of the keys in this module, chosen at run time, for example from a command-line
/// flag.
///
/// It parses from (and [displays](fmt::Display) as) one of:
///
/// | text | key |
/// |---|---|
/// | `header:NAME` | [`Header`] (the name is case-insensitive) |
/// | `cookie:NAME` | [`Cookie`] |
/// | `query:NAME` | [`QueryParam`] |
/// | `path` | [`Path`] |
/// | `path-query` | [`PathAndQuery`] |
/// | `client-ip` | [`ClientIp`] |
///
/// The kind is lowercase and is separated from the name by the first `:`; the name is taken
/// as written (no whitespace is trimmed) and is checked as by the kind's `try_new`.
///
/// ```
/// use tower_lb::http::key::{HttpKey, InvalidKey};
///
/// let key: HttpKey = "header:X-User".parse().unwrap();
/// assert_eq!(key.to_string(), "header:x-user");
/// assert!(matches!("host".parse::<HttpKey>(), Err(InvalidKey::UnknownKind { .. })));
/// assert!(matches!("query:".parse::<HttpKey>(), Err(InvalidKey::MissingName { .. })));
/// assert!(matches!("path:/x".parse::<HttpKey>(), Err(InvalidKey::UnexpectedName { .. })));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpKey {
    /// `header:NAME`: a header's first value.
    Header(Header),
    /// `cookie:NAME`: a cookie's value.
    Cookie(Cookie),
    /// `query:NAME`: a query parameter's raw value.
    QueryParam(QueryParam),
    /// `path`: the URI path.
    Path,
    /// `path-query`: the URI path and query (nginx's `$request_uri`).
    PathAndQuery,
    /// `client-ip`: the client IP address as text.
    ClientIp,
}

impl<B> RequestKey<Request<B>> for HttpKey {
    fn previous_endpoints<'r>(&self, request: &'r Request<B>) -> &'r [String] {
        PreviousEndpoints::of(request)
    }

    fn key<'r>(&self, request: &'r Request<B>) -> Option<Cow<'r, [u8]>> {
        match self {
            HttpKey::Header(key) => key.key(request),
            HttpKey::Cookie(key) => key.key(request),
            HttpKey::QueryParam(key) => key.key(request),
            HttpKey::Path => Path.key(request),
            HttpKey::PathAndQuery => PathAndQuery.key(request),
            HttpKey::ClientIp => ClientIp.key(request),
        }
    }
}

impl FromStr for HttpKey {
    type Err = InvalidKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, name) = match s.split_once(':') {
            Some((kind, name)) => (kind, Some(name)),
            None => (s, None),
        };
        let kind = KeyKind::parse(kind).ok_or_else(|| InvalidKey::UnknownKind {
            kind: kind.to_owned(),
        })?;
        let named = |name: Option<&str>| match name {
            Some(name) if !name.is_empty() => Ok(name.to_owned()),
            _ => Err(InvalidKey::MissingName { kind: kind.text() }),
        };
        match kind {
            KeyKind::Header => Header::try_new(named(name)?).map(HttpKey::Header),
            KeyKind::Cookie => Cookie::try_new(named(name)?).map(HttpKey::Cookie),
            KeyKind::Query => QueryParam::try_new(named(name)?).map(HttpKey::QueryParam),
            KeyKind::Path | KeyKind::PathQuery | KeyKind::ClientIp => {
                if name.is_some() {
                    return Err(InvalidKey::UnexpectedName { kind: kind.text() });
                }
                Ok(match kind {
                    KeyKind::Path => HttpKey::Path,
                    KeyKind::PathQuery => HttpKey::PathAndQuery,
                    _ => HttpKey::ClientIp,
                })
            }
        }
    }
}

impl fmt::Display for HttpKey {
    /// Writes the key in the syntax [`FromStr`] reads, e.g. `cookie:session`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpKey::Header(key) => write!(f, "header:{}", key.name()),
            HttpKey::Cookie(key) => write!(f, "cookie:{}", key.name()),
            HttpKey::QueryParam(key) => write!(f, "query:{}", key.name()),
            HttpKey::Path => f.write_str("path"),
            HttpKey::PathAndQuery => f.write_str("path-query"),
            HttpKey::ClientIp => f.write_str("client-ip"),
        }
    }
}

impl From<Header> for HttpKey {
    fn from(key: Header) -> Self {
        HttpKey::Header(key)
    }
}

impl From<Cookie> for HttpKey {
    fn from(key: Cookie) -> Self {
        HttpKey::Cookie(key)
    }
}

impl From<QueryParam> for HttpKey {
    fn from(key: QueryParam) -> Self {
        HttpKey::QueryParam(key)
    }
}

impl From<Path> for HttpKey {
    fn from(_: Path) -> Self {
        HttpKey::Path
    }
}

impl From<PathAndQuery> for HttpKey {
    fn from(_: PathAndQuery) -> Self {
        HttpKey::PathAndQuery
    }
}

impl From<ClientIp> for HttpKey {
    fn from(_: ClientIp) -> Self {
        HttpKey::ClientIp
    }
}

/// The kinds of [`HttpKey`], as written before the `:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Header,
    Cookie,
    Query,
    Path,
    PathQuery,
    ClientIp,
}

impl KeyKind {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "header" => KeyKind::Header,
            "cookie" => KeyKind::Cookie,
            "query" => KeyKind::Query,
            "path" => KeyKind::Path,
            "path-query" => KeyKind::PathQuery,
            "client-ip" => KeyKind::ClientIp,
            _ => return None,
        })
    }

    fn text(self) -> &'static str {
        match self {
            KeyKind::Header => "header",
            KeyKind::Cookie => "cookie",
            KeyKind::Query => "query",
            KeyKind::Path => "path",
            KeyKind::PathQuery => "path-query",
            KeyKind::ClientIp => "client-ip",
        }
    }
}

const EXPECTED: &str = "header:NAME, cookie:NAME, query:NAME, path, path-query or client-ip";

/// A request key that could not be made: a name that is not valid for its kind, or text
/// that is not in [`HttpKey`]'s syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidKey {
    /// The text before the `:` is not a kind of key.
    UnknownKind {
        /// The kind as written.
        kind: String,
    },
    /// A kind that needs a name (`header`, `cookie`, `query`) has none, or an empty one.
    MissingName {
        /// The kind: `header`, `cookie` or `query`.
        kind: &'static str,
    },
    /// A kind that takes no name (`path`, `path-query`, `client-ip`) has one.
    UnexpectedName {
        /// The kind: `path`, `path-query` or `client-ip`.
        kind: &'static str,
    },
    /// The name is not valid for its kind (see the kind's `try_new`).
    InvalidName {
        /// The kind: `header`, `cookie` or `query`.
        kind: &'static str,
        /// The name as written.
        name: String,
    },
}

impl InvalidKey {
    fn invalid_name(kind: KeyKind, name: &str) -> Self {
        InvalidKey::InvalidName {
            kind: kind.text(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for InvalidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidKey::UnknownKind { kind } => {
                write!(f, "unknown request key kind {kind:?}: expected {EXPECTED}")
            }
            InvalidKey::MissingName { kind } => {
                write!(f, "request key `{kind}` needs a name, as in `{kind}:NAME`")
            }
            InvalidKey::UnexpectedName { kind } => {
                write!(f, "request key `{kind}` takes no name: write just `{kind}`")
            }
            InvalidKey::InvalidName { kind, name } => match *kind {
                "header" => write!(f, "{name:?} is not a valid HTTP header name"),
                "cookie" => write!(
                    f,
                    "{name:?} is not a valid cookie name: it must be non-empty, without \
                     whitespace, control characters, `;` or `=`"
                ),
                _ => write!(
                    f,
                    "{name:?} is not a valid query parameter name: it must be non-empty, \
                     without whitespace, control characters, `&`, `=` or `#`"
                ),
            },
        }
    }
}

impl Error for InvalidKey {}
