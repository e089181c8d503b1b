//! The built-in `http::Request` keys of `tower_lb::http::key`: exact bytes for present,
//! absent, empty and unusual inputs, and the `HttpKey` flag parser.

#![cfg(feature = "http")]

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use http::header::{HeaderName, HeaderValue, COOKIE};
use http::Request;
use tower_lb::http::key::{
    ClientIp, Cookie, Header, HttpKey, InvalidKey, Path, PathAndQuery, QueryParam,
};
use tower_lb::key::RequestKey;

/// A GET request for `uri` with `headers` in order (repeats kept).
fn request(uri: &str, headers: &[(&str, &[u8])]) -> Request<()> {
    let mut request = Request::get(uri).body(()).unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    request
}

fn with_cookies(cookies: &[&str]) -> Request<()> {
    let headers: Vec<(&str, &[u8])> = cookies.iter().map(|c| ("cookie", c.as_bytes())).collect();
    request("/", &headers)
}

fn with_peer(addr: &str) -> Request<()> {
    let mut request = request("/", &[]);
    request
        .extensions_mut()
        .insert(addr.parse::<SocketAddr>().unwrap());
    request
}

/// The key's bytes, or `None`.
fn key<K: RequestKey<Request<()>>>(key: &K, request: &Request<()>) -> Option<Vec<u8>> {
    key.key(request).map(Cow::into_owned)
}

fn bytes(b: &[u8]) -> Option<Vec<u8>> {
    Some(b.to_vec())
}

// ---------------------------------------------------------------- Header

#[test]
fn header_present_absent_empty() {
    let k = Header::new(HeaderName::from_static("x-user"));
    assert_eq!(
        key(&k, &request("/", &[("x-user", b"alice")])),
        bytes(b"alice")
    );
    assert_eq!(key(&k, &request("/", &[("x-other", b"alice")])), None);
    assert_eq!(key(&k, &request("/", &[("x-user", b"")])), bytes(b""));
}

#[test]
fn header_borrows_from_the_request() {
    let k = Header::new(HeaderName::from_static("x-user"));
    let req = request("/", &[("x-user", b"alice")]);
    assert!(matches!(k.key(&req), Some(Cow::Borrowed(b"alice"))));
}

#[test]
fn header_repeated_takes_the_first_value() {
    let k = Header::try_new("X-Forwarded-For").unwrap();
    let req = request(
        "/",
        &[
            ("x-forwarded-for", b"1.1.1.1"),
            ("x-forwarded-for", b"2.2.2.2"),
        ],
    );
    assert_eq!(key(&k, &req), bytes(b"1.1.1.1"));
}

#[test]
fn header_name_is_case_insensitive() {
    let k = Header::try_new("X-User").unwrap();
    assert_eq!(k.name().as_str(), "x-user");
    assert_eq!(key(&k, &request("/", &[("x-user", b"a")])), bytes(b"a"));
    assert_eq!(Header::try_new(String::from("x-user")).unwrap(), k);
    assert_eq!(Header::from(HeaderName::from_static("x-user")), k);
}

#[test]
fn header_non_utf8_bytes_are_kept() {
    let k = Header::new(HeaderName::from_static("x-raw"));
    let value: &[u8] = b"caf\xe9 \xff\x80";
    assert_eq!(key(&k, &request("/", &[("x-raw", value)])), bytes(value));
}

#[test]
fn header_one_megabyte_value() {
    let value = vec![b'v'; 1 << 20];
    let k = Header::new(HeaderName::from_static("x-big"));
    let req = request("/", &[("x-big", &value)]);
    let got = k.key(&req).unwrap();
    assert!(matches!(got, Cow::Borrowed(_)));
    assert_eq!(got.len(), 1 << 20);
    assert_eq!(&*got, &value[..]);
}

#[test]
fn header_invalid_names_are_errors_not_panics() {
    for name in ["", "bad name", "x:y", "é", "x\ny"] {
        assert_eq!(
            Header::try_new(name),
            Err(InvalidKey::InvalidName {
                kind: "header",
                name: name.to_owned()
            }),
            "{name:?}"
        );
    }
}

// ---------------------------------------------------------------- Cookie

#[test]
fn cookie_present_absent_empty() {
    let k = Cookie::new("id");
    assert_eq!(key(&k, &with_cookies(&["a=1; id=xyz; b=2"])), bytes(b"xyz"));
    assert_eq!(key(&k, &with_cookies(&["id=first"])), bytes(b"first"));
    assert_eq!(key(&k, &with_cookies(&["a=1; b=2"])), None);
    assert_eq!(key(&k, &request("/", &[])), None);
    assert_eq!(key(&k, &with_cookies(&["a=1; id=; b=2"])), bytes(b""));
    assert_eq!(key(&k, &with_cookies(&["id="])), bytes(b""));
    assert_eq!(key(&k, &with_cookies(&[""])), None);
}

#[test]
fn cookie_borrows_from_the_request() {
    let req = with_cookies(&["a=1; id=xyz"]);
    assert!(matches!(
        Cookie::new("id").key(&req),
        Some(Cow::Borrowed(b"xyz"))
    ));
}

#[test]
fn cookie_first_match_wins() {
    let k = Cookie::new("id");
    assert_eq!(key(&k, &with_cookies(&["id=1; id=2"])), bytes(b"1"));
    assert_eq!(key(&k, &with_cookies(&["id=; id=2"])), bytes(b""));
}

#[test]
fn cookie_several_headers() {
    let k = Cookie::new("id");
    assert_eq!(
        key(
            &k,
            &with_cookies(&["a=1; b=2", "c=3; id=second-header", "id=third"])
        ),
        bytes(b"second-header")
    );
    assert_eq!(key(&k, &with_cookies(&["id=one", "id=two"])), bytes(b"one"));
    assert_eq!(key(&k, &with_cookies(&["a=1", "b=2"])), None);
}

#[test]
fn cookie_name_prefixes_and_suffixes_do_not_match() {
    let k = Cookie::new("id");
    assert_eq!(key(&k, &with_cookies(&["xid=1; idx=2; i=3; d=4"])), None);
    assert_eq!(key(&k, &with_cookies(&["xid=1; id=2"])), bytes(b"2"));
    assert_eq!(key(&k, &with_cookies(&["ID=1"])), None, "case-sensitive");
    assert_eq!(
        key(&Cookie::new("xid"), &with_cookies(&["id=1; xid=9"])),
        bytes(b"9")
    );
}

#[test]
fn cookie_whitespace_is_trimmed_around_names_and_values() {
    let k = Cookie::new("id");
    assert_eq!(key(&k, &with_cookies(&["a=1;id=tight"])), bytes(b"tight"));
    assert_eq!(
        key(&k, &with_cookies(&["a=1;   id = spaced  ;b=2"])),
        bytes(b"spaced")
    );
    assert_eq!(key(&k, &with_cookies(&["a=1;\tid=\ttab\t"])), bytes(b"tab"));
    assert_eq!(key(&k, &with_cookies(&["id=in side"])), bytes(b"in side"));
    assert_eq!(key(&k, &with_cookies(&["id=   "])), bytes(b""));
}

#[test]
fn cookie_quoted_values_keep_their_quotes() {
    let k = Cookie::new("id");
    assert_eq!(key(&k, &with_cookies(&["id=\"abc\""])), bytes(b"\"abc\""));
    assert_eq!(
        key(&k, &with_cookies(&["a=1; id=\"\"; b=2"])),
        bytes(b"\"\"")
    );
}

#[test]
fn cookie_value_may_contain_equals_and_commas() {
    let k = Cookie::new("id");
    assert_eq!(key(&k, &with_cookies(&["id=a=b==; c=d"])), bytes(b"a=b=="));
    // Commas do not separate cookies.
    assert_eq!(
        key(&k, &with_cookies(&["id=1, other=2"])),
        bytes(b"1, other=2")
    );
    assert_eq!(key(&k, &with_cookies(&["a=1, id=2"])), None);
}

#[test]
fn cookie_pairs_without_equals_never_match() {
    let k = Cookie::new("id");
    assert_eq!(key(&k, &with_cookies(&["id"])), None);
    assert_eq!(key(&k, &with_cookies(&["id; id=2"])), bytes(b"2"));
    assert_eq!(key(&k, &with_cookies(&[";;; id=3 ;;"])), bytes(b"3"));
}

#[test]
fn cookie_non_utf8_bytes_are_kept() {
    let k = Cookie::new("id");
    let header: &[u8] = b"a=\xff; id=\xe9t\xe9";
    let req = request("/", &[("cookie", header)]);
    assert_eq!(key(&k, &req), bytes(b"\xe9t\xe9"));
}

#[test]
fn cookie_one_megabyte_value() {
    let value = "c".repeat(1 << 20);
    let req = with_cookies(&[&format!("a=1; id={value}; b=2")]);
    let got = Cookie::new("id").key(&req).unwrap();
    assert!(matches!(got, Cow::Borrowed(_)));
    assert_eq!(&*got, value.as_bytes());
}

#[test]
fn cookie_empty_name_never_matches() {
    let k = Cookie::new("");
    assert_eq!(key(&k, &with_cookies(&["=x; y"])), None);
}

#[test]
fn cookie_try_new_checks_the_name() {
    assert_eq!(Cookie::try_new("session").unwrap().name(), "session");
    assert!(Cookie::try_new("__Host-id").is_ok());
    assert!(Cookie::try_new(String::from("foo[bar]")).is_ok());
    for name in ["", "a b", "a;b", "a=b", "a\tb", "a\u{1}b", " a"] {
        assert_eq!(
            Cookie::try_new(name),
            Err(InvalidKey::InvalidName {
                kind: "cookie",
                name: name.to_owned()
            }),
            "{name:?}"
        );
    }
}

// ---------------------------------------------------------------- Path, PathAndQuery

#[test]
fn path_and_path_query() {
    let req = request("/users/42?tab=1&x=%20", &[]);
    assert_eq!(key(&Path, &req), bytes(b"/users/42"));
    assert_eq!(key(&PathAndQuery, &req), bytes(b"/users/42?tab=1&x=%20"));
    assert!(matches!(Path.key(&req), Some(Cow::Borrowed(_))));
    assert!(matches!(PathAndQuery.key(&req), Some(Cow::Borrowed(_))));

    let root = request("/", &[]);
    assert_eq!(key(&Path, &root), bytes(b"/"));
    assert_eq!(key(&PathAndQuery, &root), bytes(b"/"));
}

#[test]
fn path_is_raw() {
    let req = request("/a/../b//c%2Fd", &[]);
    assert_eq!(key(&Path, &req), bytes(b"/a/../b//c%2Fd"));
}

#[test]
fn path_query_keeps_an_empty_query_and_drops_the_fragment() {
    assert_eq!(key(&PathAndQuery, &request("/a?", &[])), bytes(b"/a?"));
    assert_eq!(key(&Path, &request("/a?", &[])), bytes(b"/a"));
    assert_eq!(
        key(&PathAndQuery, &request("/a?b#frag", &[])),
        bytes(b"/a?b")
    );
}

#[test]
fn absolute_form_uses_the_origin_form_path() {
    let req = request("http://example.com/p?q=1", &[]);
    assert_eq!(key(&Path, &req), bytes(b"/p"));
    assert_eq!(key(&PathAndQuery, &req), bytes(b"/p?q=1"));

    let no_path = request("http://example.com?q=1", &[]);
    assert_eq!(key(&Path, &no_path), bytes(b"/"));
    assert_eq!(key(&PathAndQuery, &no_path), bytes(b"/?q=1"));

    let bare = request("http://example.com", &[]);
    assert_eq!(key(&PathAndQuery, &bare), bytes(b"/"));
}

#[test]
fn authority_form_has_no_path() {
    let req = Request::connect("example.com:443").body(()).unwrap();
    assert_eq!(key(&Path, &req), None);
    assert_eq!(key(&PathAndQuery, &req), None);
}

// ---------------------------------------------------------------- QueryParam

fn query(name: &str, uri: &str) -> Option<Vec<u8>> {
    key(&QueryParam::new(name.to_owned()), &request(uri, &[]))
}

#[test]
fn query_present_absent_empty() {
    assert_eq!(query("a", "/?a=1&b=2"), bytes(b"1"));
    assert_eq!(query("b", "/?a=1&b=2"), bytes(b"2"));
    assert_eq!(query("c", "/?a=1&b=2"), None);
    assert_eq!(query("a", "/"), None);
    assert_eq!(query("a", "/?"), None);
    assert_eq!(query("a", "/?a="), bytes(b""));
}

#[test]
fn query_borrows_from_the_request() {
    let req = request("/?a=1", &[]);
    assert!(matches!(
        QueryParam::new("a").key(&req),
        Some(Cow::Borrowed(b"1"))
    ));
}

#[test]
fn query_parameter_without_equals_is_empty() {
    assert_eq!(query("a", "/?a"), bytes(b""));
    assert_eq!(query("a", "/?b=1&a&c=3"), bytes(b""));
    assert_eq!(query("a", "/?a&a=2"), bytes(b""), "first match wins");
}

#[test]
fn query_empty_names_and_empty_parameters() {
    assert_eq!(query("x", "/?=x"), None);
    assert_eq!(query("", "/?=x"), None);
    assert_eq!(query("", "/?a=1&&b=2"), None);
    assert_eq!(query("b", "/?a=1&&b=2"), bytes(b"2"));
    assert_eq!(query("a", "/?&&a=1&&"), bytes(b"1"));
}

#[test]
fn query_first_match_wins() {
    assert_eq!(query("a", "/?a=1&a=2"), bytes(b"1"));
    assert_eq!(query("a", "/?xa=0&ax=0&a=3"), bytes(b"3"));
}

#[test]
fn query_is_not_decoded() {
    assert_eq!(query("q", "/?q=a%20b+c"), bytes(b"a%20b+c"));
    assert_eq!(query("user_id", "/?user%5Fid=7"), None);
    assert_eq!(query("user%5Fid", "/?user%5Fid=7"), bytes(b"7"));
    assert_eq!(query("A", "/?a=1"), None, "case-sensitive");
    // `;` does not separate parameters.
    assert_eq!(query("a", "/?a=1;b=2"), bytes(b"1;b=2"));
    assert_eq!(query("b", "/?a=1;b=2"), None);
    // The value runs to the next `&`, `=` included.
    assert_eq!(query("a", "/?a=b=c&d"), bytes(b"b=c"));
}

#[test]
fn query_long_value() {
    // http::Uri holds at most 65534 bytes, so this is as long as a query can be.
    let value = "q".repeat(60_000);
    assert_eq!(
        query("a", &format!("/?x=1&a={value}&b=2")),
        bytes(value.as_bytes())
    );
}

#[test]
fn query_try_new_checks_the_name() {
    assert_eq!(QueryParam::try_new("user").unwrap().name(), "user");
    assert!(QueryParam::try_new("user%5Fid").is_ok());
    assert!(QueryParam::try_new("a[]").is_ok());
    for name in ["", "a&b", "a=b", "a#b", "a b", "a\u{7f}"] {
        assert_eq!(
            QueryParam::try_new(name),
            Err(InvalidKey::InvalidName {
                kind: "query",
                name: name.to_owned()
            }),
            "{name:?}"
        );
    }
}

// ---------------------------------------------------------------- ClientIp

#[test]
fn client_ip_v4() {
    assert_eq!(
        key(&ClientIp, &with_peer("10.0.0.1:50000")),
        bytes(b"10.0.0.1")
    );
    assert_eq!(key(&ClientIp, &with_peer("10.0.0.1:1")), bytes(b"10.0.0.1"));
    assert_eq!(
        key(&ClientIp, &with_peer("255.255.255.255:65535")),
        bytes(b"255.255.255.255")
    );
}

#[test]
fn client_ip_v6() {
    assert_eq!(
        key(&ClientIp, &with_peer("[2001:db8::1]:443")),
        bytes(b"2001:db8::1")
    );
    assert_eq!(
        key(&ClientIp, &with_peer("[2001:DB8:0:0:0:0:0:1]:443")),
        bytes(b"2001:db8::1")
    );
    assert_eq!(key(&ClientIp, &with_peer("[::1]:80")), bytes(b"::1"));
    assert_eq!(
        key(&ClientIp, &with_peer("[fe80::1%2]:80")),
        bytes(b"fe80::1")
    );
}

#[test]
fn client_ip_v4_mapped_is_written_as_v4() {
    assert_eq!(
        key(&ClientIp, &with_peer("[::ffff:10.0.0.1]:50000")),
        bytes(b"10.0.0.1")
    );
    assert_eq!(
        key(&ClientIp, &with_peer("[::ffff:a00:1]:50000")),
        bytes(b"10.0.0.1")
    );
    // Only the mapped form is IPv4; the deprecated compatible form stays IPv6.
    assert_eq!(
        key(&ClientIp, &with_peer("[::10.0.0.1]:1")),
        bytes(b"::a00:1")
    );
}

#[test]
fn client_ip_absent() {
    assert_eq!(key(&ClientIp, &request("/", &[])), None);
    // An address of some other type is not read.
    let mut req = request("/", &[]);
    req.extensions_mut().insert(String::from("10.0.0.1"));
    assert_eq!(key(&ClientIp, &req), None);
}

#[test]
fn client_ip_from_an_ip_addr_extension() {
    let mut req = request("/", &[]);
    req.extensions_mut()
        .insert(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2)));
    assert_eq!(key(&ClientIp, &req), bytes(b"192.168.1.2"));

    // A SocketAddr takes precedence over an IpAddr.
    req.extensions_mut()
        .insert("[::1]:9".parse::<SocketAddr>().unwrap());
    assert_eq!(key(&ClientIp, &req), bytes(b"::1"));
}

// ---------------------------------------------------------------- HttpKey

#[test]
fn http_key_parses_every_kind() {
    assert_eq!(
        "header:X-User".parse::<HttpKey>(),
        Ok(HttpKey::Header(Header::try_new("x-user").unwrap()))
    );
    assert_eq!(
        "cookie:session".parse::<HttpKey>(),
        Ok(HttpKey::Cookie(Cookie::new("session")))
    );
    assert_eq!(
        "query:user".parse::<HttpKey>(),
        Ok(HttpKey::QueryParam(QueryParam::new("user")))
    );
    assert_eq!("path".parse::<HttpKey>(), Ok(HttpKey::Path));
    assert_eq!("path-query".parse::<HttpKey>(), Ok(HttpKey::PathAndQuery));
    assert_eq!("client-ip".parse::<HttpKey>(), Ok(HttpKey::ClientIp));
}

#[test]
fn http_key_name_is_everything_after_the_first_colon() {
    // A query parameter name may hold a colon; header names may not.
    assert_eq!(
        "query:a:b".parse::<HttpKey>(),
        Ok(HttpKey::QueryParam(QueryParam::new("a:b")))
    );
    assert_eq!(
        "header:a:b".parse::<HttpKey>(),
        Err(InvalidKey::InvalidName {
            kind: "header",
            name: "a:b".into()
        })
    );
}

#[test]
fn http_key_display_round_trips() {
    for text in [
        "header:x-user",
        "cookie:Session",
        "query:user%5Fid",
        "path",
        "path-query",
        "client-ip",
    ] {
        let key: HttpKey = text.parse().unwrap();
        assert_eq!(key.to_string(), text);
        assert_eq!(key.to_string().parse::<HttpKey>(), Ok(key));
    }
    assert_eq!(
        "header:X-User".parse::<HttpKey>().unwrap().to_string(),
        "header:x-user"
    );
}

#[test]
fn http_key_unknown_kinds() {
    for text in [
        "",
        "host",
        "Header:x",
        "PATH",
        "client_ip",
        "path_query",
        "cookies:a",
        " path",
        "path ",
    ] {
        let kind = text.split_once(':').map_or(text, |(kind, _)| kind);
        assert_eq!(
            text.parse::<HttpKey>(),
            Err(InvalidKey::UnknownKind { kind: kind.into() }),
            "{text:?}"
        );
    }
}

#[test]
fn http_key_missing_names() {
    for (text, kind) in [
        ("header", "header"),
        ("header:", "header"),
        ("cookie", "cookie"),
        ("cookie:", "cookie"),
        ("query", "query"),
        ("query:", "query"),
    ] {
        assert_eq!(
            text.parse::<HttpKey>(),
            Err(InvalidKey::MissingName { kind }),
            "{text:?}"
        );
    }
}

#[test]
fn http_key_unexpected_names() {
    for (text, kind) in [
        ("path:/x", "path"),
        ("path:", "path"),
        ("path-query:x", "path-query"),
        ("client-ip:v4", "client-ip"),
    ] {
        assert_eq!(
            text.parse::<HttpKey>(),
            Err(InvalidKey::UnexpectedName { kind }),
            "{text:?}"
        );
    }
}

#[test]
fn http_key_invalid_names() {
    for (text, kind, name) in [
        ("header:bad name", "header", "bad name"),
        ("header: x", "header", " x"),
        ("cookie:a;b", "cookie", "a;b"),
        ("cookie:a=b", "cookie", "a=b"),
        ("cookie: id", "cookie", " id"),
        ("query:a&b", "query", "a&b"),
        ("query:a=b", "query", "a=b"),
        ("query:a#", "query", "a#"),
    ] {
        assert_eq!(
            text.parse::<HttpKey>(),
            Err(InvalidKey::InvalidName {
                kind,
                name: name.into()
            }),
            "{text:?}"
        );
    }
}

#[test]
fn http_key_errors_say_what_to_write() {
    let unknown = "host".parse::<HttpKey>().unwrap_err().to_string();
    assert!(unknown.contains("\"host\""), "{unknown}");
    assert!(
        unknown.contains("header:NAME, cookie:NAME, query:NAME, path, path-query or client-ip"),
        "{unknown}"
    );
    let missing = "cookie:".parse::<HttpKey>().unwrap_err().to_string();
    assert!(missing.contains("cookie:NAME"), "{missing}");
    let unexpected = "path:x".parse::<HttpKey>().unwrap_err().to_string();
    assert!(unexpected.contains("takes no name"), "{unexpected}");
    let invalid = "header:a b".parse::<HttpKey>().unwrap_err().to_string();
    assert!(invalid.contains("\"a b\""), "{invalid}");
    let _: &dyn std::error::Error = &InvalidKey::MissingName { kind: "query" };
}

#[test]
fn http_key_extracts_like_its_variant() {
    let mut req = request(
        "/p?user=7",
        &[("x-user", b"alice"), ("cookie", b"session=s1")],
    );
    req.extensions_mut()
        .insert("10.1.2.3:4".parse::<SocketAddr>().unwrap());
    let cases: [(&str, &[u8]); 6] = [
        ("header:x-user", b"alice"),
        ("cookie:session", b"s1"),
        ("query:user", b"7"),
        ("path", b"/p"),
        ("path-query", b"/p?user=7"),
        ("client-ip", b"10.1.2.3"),
    ];
    for (text, expected) in cases {
        let k: HttpKey = text.parse().unwrap();
        assert_eq!(key(&k, &req), bytes(expected), "{text}");
    }
    let empty = request("/", &[]);
    for text in ["header:x-user", "cookie:session", "query:user", "client-ip"] {
        let k: HttpKey = text.parse().unwrap();
        assert_eq!(key(&k, &empty), None, "{text}");
    }
}

#[test]
fn http_key_from_each_key() {
    assert_eq!(HttpKey::from(Path), HttpKey::Path);
    assert_eq!(HttpKey::from(PathAndQuery), HttpKey::PathAndQuery);
    assert_eq!(HttpKey::from(ClientIp), HttpKey::ClientIp);
    assert_eq!(
        HttpKey::from(Cookie::new("a")),
        HttpKey::Cookie(Cookie::new("a"))
    );
    assert_eq!(
        HttpKey::from(QueryParam::new("a")),
        HttpKey::QueryParam(QueryParam::new("a"))
    );
    let header = Header::new(COOKIE);
    assert_eq!(HttpKey::from(header.clone()), HttpKey::Header(header));
}

#[test]
fn keys_work_for_any_body_type() {
    fn assert_key<K: RequestKey<Request<B>>, B>() {}
    assert_key::<HttpKey, String>();
    assert_key::<Header, Vec<u8>>();
    assert_key::<ClientIp, http_body_util::Empty<bytes::Bytes>>();
}
