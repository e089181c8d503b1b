//! The reverse proxy's fast path (plain requests proxied without hyper) against a scripted
//! upstream over raw TCP: every response framing it relays (length, chunked with trailers,
//! until close, none for HEAD, 204 and 1xx), hop-by-hop headers both ways, malformed and
//! partial answers, upstream connections closed while idle, pipelining, and the hand-over
//! to hyper in the middle of a connection. Each case runs with the fast path on and off,
//! and both must give the client the same answers.
//!
//! Every read waits for a complete answer or the connection's end ([`common::PATIENCE`] only
//! turns a hang into a failure), and a test that needs something to have happened upstream
//! waits for the upstream to report it.

mod common;
#[allow(dead_code)]
#[path = "../examples/reverse_proxy/proxy.rs"]
mod proxy;
mod proxy_common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use proxy::{Config, Proxy};
use proxy_common::{scripted, send, End, Reply, Scripted};

/// What the upstream does for a path: its answer in pieces, and whether it closes the
/// connection after it.
fn script(_method: &str, path: &str) -> Reply {
    match path {
        // A close-delimited answer cut by a reset: the client must be able to tell.
        "/close-reset" => {
            return Reply::new(&[b"HTTP/1.1 200 OK\r\n\r\nthe start, then"], End::Reset)
        }
        // Trailers with a bare LF, and after it what a lenient client would take for the
        // next answer.
        "/trailer-lf" => {
            return Reply::new(
                &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: 1\n\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"],
                End::Keep,
            )
        }
        _ => {}
    }
    let (pieces, close): (Vec<&'static [u8]>, bool) = match path {
        "/chunked" => (
            vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5\r\nConnection: x-secret\r\nX-Secret: 1\r\nX-Kept: yes\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer-A: 1\r\n\r\n"],
            false,
        ),
        "/split" => (
            vec![
                b"HTTP/1.1 200 OK\r\nCont",
                b"ent-Length: 10\r\n",
                b"\r\n01234",
                b"56789",
            ],
            false,
        ),
        "/close" => (vec![b"HTTP/1.1 200 OK\r\n\r\nuntil the end"], true),
        "/http10" => (vec![b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"], true),
        "/head" => (vec![b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"], false),
        "/empty" => (vec![b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"], false),
        "/continue" => (
            vec![b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
            false,
        ),
        "/bad-chunk" => (
            vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
            false,
        ),
        "/bad-head" => (vec![b"HTTP/1.1 2x0 OK\r\n\r\n"], true),
        "/closes" => (
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ncloses"],
            true,
        ),
        // A body after the answer to HEAD, later: it must never reach the next request.
        "/head-extra" => (
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"", b"", b"junk!"],
            false,
        ),
        // Both framings: Transfer-Encoding wins, Content-Length must not reach the client.
        "/te-cl" => (
            vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n"],
            false,
        ),
        // No body after HEAD, whatever Transfer-Encoding says.
        "/head-te" => (
            vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"],
            false,
        ),
        // A coding other than chunked: the body ends with the connection, not at the length.
        "/gzip-close" => (
            vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabcdef"],
            true,
        ),
        // A signed length (refused), and a list of equal lengths (taken).
        "/cl-plus" => (vec![b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok"], true),
        "/cl-list" => (vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok"], false),
        // `Connection` naming a framing header does not remove it.
        "/conn-cl" => (
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: content-length\r\n\r\nok"],
            false,
        ),
        _ => (
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain"],
            false,
        ),
    };
    Reply::new(&pieces, if close { End::Close } else { End::Keep })
}

/// The proxy in front of one upstream, health features off, and the default request
/// timeout (a minute): no upstream here is slow enough to meet it.
async fn proxy(upstream: SocketAddr, fast_path: bool) -> Proxy {
    let mut config: Config = proxy_common::config(&[upstream]);
    config.fast_path = fast_path;
    config.workers = 1;
    config.health.enabled = false;
    config.outlier.enabled = false;
    proxy::start(&config).await.unwrap()
}

/// An answer that ends with `tail`.
fn ends(tail: &'static str) -> impl Fn(&str) -> bool {
    move |text| text.ends_with(tail)
}

/// Only the connection's end ends the read.
fn closed(_: &str) -> bool {
    false
}

/// A complete chunked answer: its last chunk and the end of its trailers.
fn chunked_end(text: &str) -> bool {
    text.contains("\r\n0\r\n") && text.ends_with("\r\n\r\n")
}

/// A complete answer of the proxy's own: its body is two lines (status, reason).
fn own_answer(text: &str) -> bool {
    text.find("\r\n\r\n")
        .is_some_and(|i| text[i + 4..].matches('\n').count() >= 2)
}

/// Whether the peer closes the connection (with nothing more sent first); false if it sends
/// something, or if it never closes ([`common::PATIENCE`]).
async fn is_closed(stream: &mut TcpStream) -> bool {
    let mut rest = [0u8; 16];
    matches!(
        tokio::time::timeout(common::PATIENCE, stream.read(&mut rest)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: example\r\n\r\n")
}

/// Runs `check` against a fresh upstream and proxy, with the fast path on and then off.
async fn both_paths<F, Fut>(check: F)
where
    F: Fn(Arc<Scripted>, SocketAddr, bool) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for fast_path in [true, false] {
        let upstream = Arc::new(scripted(script).await);
        let proxy = proxy(upstream.addr, fast_path).await;
        check(upstream.clone(), proxy.addr, fast_path).await;
    }
}

/// The data of a chunked body.
fn dechunk(mut body: &str) -> String {
    let mut data = String::new();
    loop {
        let line_end = body.find("\r\n").unwrap();
        let size_text = body[..line_end].split(';').next().unwrap().trim();
        let size = usize::from_str_radix(size_text, 16).unwrap();
        body = &body[line_end + 2..];
        if size == 0 {
            return data;
        }
        data.push_str(&body[..size]);
        body = &body[size + 2..];
    }
}

fn body_of(response: &str) -> &str {
    &response[response.find("\r\n\r\n").map_or(0, |i| i + 4)..]
}

#[tokio::test]
async fn chunked_answers_are_relayed_without_their_trailers_and_hop_by_hop_headers() {
    both_paths(|upstream, addr, fast| async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let response = send(&mut stream, &get("/chunked"), chunked_end).await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        // The fast path relays header names as they came; hyper writes them in lower case
        // (which also shows which path served the request).
        if fast {
            assert!(response.contains("X-Kept: yes"), "{response}");
        } else {
            assert!(response.contains("x-kept: yes"), "{response}");
        }
        let lower = response.to_ascii_lowercase();
        assert!(!lower.contains("x-secret"), "{response}");
        assert!(!lower.contains("keep-alive"), "{response}");
        assert!(lower.contains("transfer-encoding: chunked"), "{response}");
        assert_eq!(
            dechunk(body_of(&response)),
            "hello world",
            "{fast}: {response}"
        );
        // Trailers are dropped, as nginx drops them.
        assert!(response.ends_with("\r\n0\r\n\r\n"), "{fast}: {response}");
        assert!(!response.contains("Trailer-A"), "{fast}: {response}");
        // The connection is reused for the next request, here and upstream.
        let response = send(&mut stream, &get("/"), ends("plain")).await;
        assert!(response.ends_with("plain"), "{response}");
        assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
    })
    .await;
}

#[tokio::test]
async fn every_framing_reaches_the_client_whole() {
    both_paths(|upstream, addr, fast| async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // Length, in pieces.
        let response = send(&mut stream, &get("/split"), ends("56789")).await;
        assert!(response.ends_with("\r\n\r\n0123456789"), "{fast}: {response}");
        // Transfer-Encoding with Content-Length: the fast path relays it chunked, without
        // the Content-Length; hyper decodes it and frames "abc" by its length.
        let done = |t: &str| chunked_end(t) || t.ends_with("\r\n\r\nabc");
        let response = send(&mut stream, &get("/te-cl"), done).await;
        if fast {
            assert!(
                !response.to_ascii_lowercase().contains("content-length"),
                "{response}"
            );
            assert_eq!(dechunk(body_of(&response)), "abc", "{response}");
        } else {
            assert_eq!(body_of(&response), "abc", "{response}");
        }
        // `Connection: content-length` keeps the framing; the connection goes on.
        let response = send(&mut stream, &get("/conn-cl"), ends("ok")).await;
        assert!(response.ends_with("\r\n\r\nok"), "{fast}: {response}");
        let response = send(&mut stream, &get("/"), ends("plain")).await;
        assert!(response.ends_with("plain"), "{fast}: {response}");
        // A coding other than chunked: the fast path reads until close, whatever
        // Content-Length says (RFC 9112, section 6.3), and adds chunked framing for the
        // client; hyper's client goes by the length.
        let mut other = TcpStream::connect(addr).await.unwrap();
        let done = move |t: &str| if fast { chunked_end(t) } else { t.ends_with("abc") };
        let response = send(&mut other, &get("/gzip-close"), done).await;
        if fast {
            assert!(
                response
                    .to_ascii_lowercase()
                    .contains("transfer-encoding: gzip, chunked\r\n"),
                "{response}"
            );
            assert_eq!(dechunk(body_of(&response)), "abcdef", "{response}");
        } else {
            assert!(response.contains("abc"), "{response}");
        }
        // Until close: both paths re-frame it as chunked (so that a client can tell a cut
        // answer from a whole one) and keep the client connection.
        let response = send(&mut stream, &get("/close"), chunked_end).await;
        assert!(
            response
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked\r\n"),
            "{fast}: {response}"
        );
        assert_eq!(dechunk(body_of(&response)), "until the end", "{response}");
        assert!(
            !response.to_ascii_lowercase().contains("connection: close"),
            "{fast}: {response}"
        );
        let response = send(&mut stream, &get("/"), ends("plain")).await;
        assert!(response.ends_with("plain"), "{fast}: {response}");
        // No body: HEAD, 204, and the answer after a 100 Continue.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let response = send(
            &mut stream,
            "HEAD /head HTTP/1.1\r\nHost: example\r\n\r\nGET /empty HTTP/1.1\r\nHost: example\r\n\r\nGET /continue HTTP/1.1\r\nHost: example\r\n\r\n",
            ends("\r\n\r\nok"),
        )
        .await;
        let statuses: Vec<&str> = response
            .lines()
            .filter(|l| l.starts_with("HTTP/1.1 "))
            .collect();
        assert_eq!(
            statuses,
            ["HTTP/1.1 200 OK", "HTTP/1.1 204 No Content", "HTTP/1.1 200 OK"],
            "{fast}: {response}"
        );
        assert!(
            response.to_ascii_lowercase().contains("content-length: 100"),
            "{fast}: {response}"
        );
        // HEAD with Transfer-Encoding: no body, and the connection goes on.
        let response = send(
            &mut stream,
            "HEAD /head-te HTTP/1.1\r\nHost: example\r\n\r\n",
            ends("\r\n\r\n"),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{fast}: {response}");
        let response = send(&mut stream, &get("/cl-list"), ends("ok")).await;
        assert!(response.ends_with("\r\n\r\nok"), "{fast}: {response}");
        let response = send(&mut stream, &get("/cl-plus"), own_answer).await;
        assert!(response.starts_with("HTTP/1.1 502"), "{fast}: {response}");
        // An HTTP/1.0 upstream answer: relayed as HTTP/1.1; its connection is not reused.
        let response = send(&mut stream, &get("/http10"), ends("ok")).await;
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{fast}: {response}");
        let before = upstream.connections.load(Ordering::SeqCst);
        let response = send(&mut stream, &get("/"), ends("plain")).await;
        assert!(response.ends_with("plain"), "{fast}: {response}");
        assert_eq!(upstream.connections.load(Ordering::SeqCst), before + 1, "{fast}");
    })
    .await;
}

#[tokio::test]
async fn bytes_an_idle_upstream_connection_receives_never_answer_the_next_request() {
    both_paths(|upstream, addr, fast| async move {
        // The upstream sends a body after its answer to HEAD, late. The next request must
        // get its own answer, on another connection.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let response = send(
            &mut stream,
            "HEAD /head-extra HTTP/1.1\r\nHost: example\r\n\r\n",
            ends("\r\n\r\n"),
        )
        .await;
        assert!(
            response.starts_with("HTTP/1.1 200 OK"),
            "{fast}: {response}"
        );
        // Once the late bytes are written, they wait in the idle connection's socket: the
        // fast path looks there when it takes the connection. Hyper's connection reads them
        // as they come and closes: wait for that too.
        common::eventually(
            "the late body written (and, through hyper, seen)",
            async || {
                upstream.answered.load(Ordering::SeqCst) == 1
                    && (fast || upstream.closed_by_proxy.load(Ordering::SeqCst) == 1)
            },
        )
        .await;
        let response = send(&mut stream, &get("/"), ends("plain")).await;
        assert!(response.ends_with("\r\n\r\nplain"), "{fast}: {response}");
        assert!(!response.contains("junk"), "{fast}: {response}");
        assert_eq!(upstream.connections.load(Ordering::SeqCst), 2, "{fast}");
    })
    .await;
}

#[tokio::test]
async fn malformed_answers_get_502_or_close_the_connection() {
    both_paths(|_upstream, addr, fast| async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let response = send(&mut stream, &get("/bad-head"), own_answer).await;
        assert!(response.starts_with("HTTP/1.1 502"), "{fast}: {response}");
        // A chunked body that turns out malformed after its head: the client connection is
        // closed, as its body cannot be completed. The fast path has relayed the head by
        // then; hyper sends nothing.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let response = send(&mut stream, &get("/bad-chunk"), closed).await;
        if fast {
            assert!(response.starts_with("HTTP/1.1 200"), "{fast}: {response}");
        } else {
            assert_eq!(response, "");
        }
        assert!(
            is_closed(&mut stream).await,
            "{fast}: the connection stayed open"
        );
    })
    .await;
}

#[tokio::test]
async fn the_proxys_own_answer_to_head_has_no_body() {
    // Nothing listens upstream: 502, and after HEAD no body, so the next answer on the
    // connection starts where it should.
    let closed_port = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed_port.local_addr().unwrap();
    drop(closed_port);
    for fast_path in [true, false] {
        let proxy = proxy(addr, fast_path).await;
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let request =
            "HEAD / HTTP/1.1\r\nHost: example\r\n\r\nGET / HTTP/1.1\r\nHost: example\r\n\r\n";
        let two = |t: &str| t.matches("HTTP/1.1 502").count() == 2 && t.ends_with("failed\n");
        let response = send(&mut stream, request, two).await;
        let heads: Vec<&str> = response.split("HTTP/1.1 502").collect();
        assert_eq!(heads.len(), 3, "{fast_path}: {response}");
        // hyper dates its answers; the fast path does not (which shows the path taken).
        assert_eq!(response.contains("date:"), !fast_path, "{response}");
        assert!(body_of(heads[1]).is_empty(), "{fast_path}: {response}");
        assert!(
            body_of(heads[2]).contains("the upstream request failed"),
            "{fast_path}: {response}"
        );
    }
}

#[tokio::test]
async fn requests_the_fast_path_does_not_take_get_hypers_answers() {
    both_paths(|upstream, addr, fast| async move {
        // A target hyper refuses, and a head over the limit.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let response = send(
            &mut stream,
            "GET /a<b> HTTP/1.1\r\nHost: example\r\n\r\n",
            ends("\r\n\r\n"),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 400"), "{fast}: {response}");
        // Sent in two parts with a pause, as a slow client sends them, so that the head
        // usually completes in one read past the limit (16 KiB): 15 000 bytes first, then
        // the rest. However the proxy's reads split it, the answer must be 431.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let big = "a".repeat(17 * 1024);
        let request = format!("GET / HTTP/1.1\r\nHost: example\r\nX-Big: {big}\r\n\r\n");
        stream
            .write_all(&request.as_bytes()[..15_000])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let response = send(&mut stream, &request[15_000..], ends("\r\n\r\n")).await;
        assert!(response.starts_with("HTTP/1.1 431"), "{fast}: {response}");
        assert!(upstream.heads.lock().unwrap().is_empty(), "{fast}");
    })
    .await;
}

#[tokio::test]
async fn an_upstream_connection_closed_while_idle_is_replaced_without_an_error() {
    both_paths(|upstream, addr, fast| async move {
        // The upstream closes after `/closes` without saying so; the next request finds
        // the pooled connection closed, and goes on a new one.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let response = send(&mut stream, &get("/closes"), ends("closes")).await;
        assert!(response.ends_with("closes"), "{fast}: {response}");
        for _ in 0..3 {
            let response = send(&mut stream, &get("/"), ends("plain")).await;
            assert!(response.ends_with("plain"), "{fast}: {response}");
        }
        assert_eq!(upstream.connections.load(Ordering::SeqCst), 2, "{fast}");
        // Each request reached the upstream once.
        assert_eq!(upstream.heads.lock().unwrap().len(), 4, "{fast}");
    })
    .await;
}

#[tokio::test]
async fn pipelined_requests_and_a_hand_over_to_hyper_keep_their_order() {
    both_paths(|upstream, addr, fast| async move {
        // Two plain GETs, a POST with a body (hyper's), and a GET after it, in one write.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "{}{}POST /post HTTP/1.1\r\nHost: example\r\nContent-Length: 3\r\n\r\nabc{}",
            get("/1"),
            get("/2"),
            get("/3")
        );
        let four = |t: &str| t.matches("HTTP/1.1 200 OK").count() == 4 && t.ends_with("plain");
        let response = send(&mut stream, &request, four).await;
        assert_eq!(
            response.matches("HTTP/1.1 200 OK").count(),
            4,
            "{fast}: {response}"
        );
        let paths: Vec<String> = upstream
            .heads
            .lock()
            .unwrap()
            .iter()
            .map(|h| h.split(' ').take(2).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            paths,
            ["GET /1", "GET /2", "POST /post", "GET /3"],
            "{fast}"
        );
        // What the upstream received: forwarded headers, no hop-by-hop ones.
        let heads = upstream.heads.lock().unwrap();
        let first = heads[0].to_ascii_lowercase();
        assert!(first.contains("x-forwarded-for: 127.0.0.1"), "{first}");
        assert!(first.contains("x-forwarded-proto: http"), "{first}");
        assert!(first.contains("host: example"), "{first}");
    })
    .await;
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_removed_and_forwarded_for_is_appended() {
    both_paths(|upstream, addr, fast| async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = "GET / HTTP/1.1\r\nHost: example\r\nConnection: keep-alive, x-private\r\nKeep-Alive: 5\r\nX-Private: 1\r\nTE: trailers\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\nX-Forwarded-Proto: https\r\nX-Public: 2\r\n\r\n";
        let response = send(&mut stream, request, ends("plain")).await;
        assert!(response.ends_with("plain"), "{fast}: {response}");
        let head = upstream.heads.lock().unwrap()[0].to_ascii_lowercase();
        for gone in ["x-private", "keep-alive", "\r\nte:", "connection:", "https"] {
            assert!(!head.contains(gone), "{fast}: {gone} in {head}");
        }
        assert!(head.contains("x-public: 2"), "{fast}: {head}");
        assert!(
            head.contains("x-forwarded-for: 10.0.0.1, 10.0.0.2, 127.0.0.1"),
            "{fast}: {head}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_client_that_asks_to_close_gets_its_answer_then_the_close() {
    both_paths(|_upstream, addr, fast| async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let response = send(
            &mut stream,
            "GET / HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n",
            ends("plain"),
        )
        .await;
        assert!(response.ends_with("plain"), "{fast}: {response}");
        assert!(response.to_ascii_lowercase().contains("connection: close"));
        assert!(is_closed(&mut stream).await, "{fast}");
    })
    .await;
}

#[tokio::test]
async fn a_close_delimited_answer_cut_by_a_reset_reaches_the_client_visibly_cut() {
    both_paths(|_upstream, addr, fast| async move {
        // The upstream resets the connection in the middle of an answer that only its end
        // delimits. Relayed as it came, the client would see a clean close and take the
        // part for the whole; re-framed as chunked, the last chunk is missing.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let response = send(&mut stream, &get("/close-reset"), closed).await;
        if response.starts_with("HTTP/1.1 200") {
            assert!(
                response
                    .to_ascii_lowercase()
                    .contains("transfer-encoding: chunked\r\n"),
                "{fast}: {response}"
            );
            assert!(!response.ends_with("0\r\n\r\n"), "{fast}: {response}");
        } else {
            // The reset came before the answer was read: the proxy's own 502.
            assert!(response.starts_with("HTTP/1.1 502"), "{fast}: {response}");
        }
    })
    .await;
}

#[tokio::test]
async fn trailers_cannot_smuggle_an_answer_to_a_lenient_client() {
    both_paths(|_upstream, addr, fast| async move {
        // A bare LF in the trailers, then what a lenient client would read as the next
        // answer. Only one answer may reach the client, and no trailer byte.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let done = |t: &str| t.ends_with("\r\n0\r\n\r\n") || t.ends_with("\r\n\r\n\r\n");
        let response = send(&mut stream, &get("/trailer-lf"), done).await;
        assert_eq!(
            response.matches("HTTP/1.1 200").count(),
            1,
            "{fast}: {response}"
        );
        assert!(!response.contains("X-T"), "{fast}: {response}");
        if fast {
            assert!(response.ends_with("2\r\nok\r\n0\r\n\r\n"), "{response}");
            // The upstream connection and the client's go on.
            let response = send(&mut stream, &get("/"), ends("plain")).await;
            assert!(response.ends_with("plain"), "{response}");
        }
    })
    .await;
}

#[tokio::test]
async fn header_names_with_underscores_are_dropped_as_nginx_does() {
    both_paths(|upstream, addr, fast| async move {
        // nginx (`underscores_in_headers off`) drops them: behind a proxy that maps
        // `X-User` to `X_User`, a client could otherwise pass one for the other.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = "GET / HTTP/1.1\r\nHost: example\r\nX_User: admin\r\nX-User: me\r\n\r\n";
        let response = send(&mut stream, request, ends("plain")).await;
        assert!(response.ends_with("plain"), "{fast}: {response}");
        let head = upstream.heads.lock().unwrap()[0].to_ascii_lowercase();
        assert!(!head.contains("x_user"), "{fast}: {head}");
        assert!(head.contains("x-user: me"), "{fast}: {head}");
    })
    .await;
}
