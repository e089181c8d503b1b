//! The TCP and HTTP health probes against real servers on 127.0.0.1: hyper servers, and raw
//! TCP listeners that answer with bytes that are not HTTP.
//!
//! Every probe runs under a guard ([`common::PATIENCE`]), so a probe that hangs fails its test
//! instead of hanging it. Timeouts are real (tokio's paused clock does not drive real sockets)
//! and short; no assertion depends on how fast the machine is: a probe that must not wait for
//! its timeout is checked by the failure it reports, not by a stopwatch.
//!
//! The HTTP tests (module `http`) need the `http` feature: `cargo test --all-features --test probes`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tower_lb::error::BuildError;
use tower_lb::health::{Probe, ProbeFailure, ProbeTarget, TcpProbe};

/// An address where nothing listens: a listener's port, after the listener is dropped.
async fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Runs one probe, failing the test if it hangs.
async fn run<P: Probe>(probe: &P, addr: SocketAddr) -> Result<(), ProbeFailure> {
    tokio::time::timeout(
        common::PATIENCE,
        probe.probe(&ProbeTarget::new(addr.to_string())),
    )
    .await
    .expect("the probe hung")
}

#[tokio::test]
async fn tcp_healthy_when_a_connection_opens() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    run(&TcpProbe::new(), addr).await.unwrap();
    // The probe opened a connection and closed it without sending anything.
    let (mut stream, _) = listener.accept().await.unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
    // String keys are resolved.
    run_key(&TcpProbe::new(), format!("localhost:{}", addr.port()))
        .await
        .unwrap();
}

async fn run_key(probe: &TcpProbe, key: String) -> Result<(), ProbeFailure> {
    tokio::time::timeout(common::PATIENCE, probe.probe(&ProbeTarget::new(key)))
        .await
        .expect("the probe hung")
}

#[tokio::test]
async fn tcp_refused_fails_with_connect() {
    let addr = refused_addr().await;
    match run(&TcpProbe::new(), addr).await {
        Err(ProbeFailure::Connect(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused)
        }
        other => panic!("expected Connect, got {other:?}"),
    }
}

#[tokio::test]
async fn tcp_port_override_connects_to_the_health_port() {
    let health = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = health.local_addr().unwrap().port();
    let serving = refused_addr().await;
    let probe = TcpProbe::new().port(port);
    run(&probe, serving).await.unwrap();
    assert!(matches!(
        run(&TcpProbe::new(), serving).await,
        Err(ProbeFailure::Connect(_))
    ));
    // A key that is not an address fails each probe; it does not panic.
    match run_key(&probe, "not an address:80".into()).await {
        Err(ProbeFailure::Connect(e)) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput),
        other => panic!("expected Connect(InvalidInput), got {other:?}"),
    }
}

#[tokio::test]
async fn an_invalid_tcp_configuration_is_an_error_when_the_balancer_is_built() {
    let field = |probe: TcpProbe| match probe.validate() {
        Err(BuildError::InvalidConfig(invalid)) => (invalid.field(), invalid.value().to_owned()),
        Err(other) => panic!("{other}"),
        Ok(()) => ("accepted", String::new()),
    };
    assert_eq!(
        field(TcpProbe::new().port(0)),
        ("TcpProbe::port", "0".into())
    );
    assert_eq!(
        field(TcpProbe::new().timeout(Duration::ZERO)),
        ("TcpProbe::timeout", "0ns".into())
    );
    assert_eq!(
        field(TcpProbe::new().timeout(Duration::from_millis(1))).0,
        "accepted"
    );
    // The balancer checks the probe with its own settings: nothing starts.
    let built = tower_lb::Balance::builder()
        .active_checks(
            TcpProbe::new().port(0),
            tower_lb::health::ActiveChecks::new(),
        )
        .build(tower_lb::discover::static_list([(
            "a",
            common::Backend::new("a"),
        )]));
    assert!(matches!(built, Err(BuildError::InvalidConfig(i)) if i.field() == "TcpProbe::port"));
}

/// The HTTP probe (feature `http`).
#[cfg(feature = "http")]
mod http {
    use std::convert::Infallible;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use bytes::Bytes;
    use http_body_util::combinators::BoxBody;
    use http_body_util::{BodyExt, Empty, Full, StreamBody};
    use hyper::body::{Frame, Incoming};
    use hyper::{Method, Request, Response, StatusCode};
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::io::AsyncWriteExt;
    use tokio::task::{JoinHandle, JoinSet};
    use tower_lb::health::HttpProbe;

    use super::*;

    type Body = BoxBody<Bytes, Infallible>;

    /// What a server saw of one request.
    #[derive(Debug, Clone, PartialEq)]
    struct Seen {
        method: Method,
        path: String,
        host: Option<String>,
    }

    /// A hyper HTTP/1 server on 127.0.0.1 that answers with `handler`, records every request,
    /// and counts the connections it accepted. Stops (closing its connections) when dropped.
    struct Server {
        addr: SocketAddr,
        seen: Arc<Mutex<Vec<Seen>>>,
        connections: Arc<AtomicUsize>,
        task: JoinHandle<()>,
    }

    impl Server {
        async fn start<F, Fut>(handler: F) -> Server
        where
            F: Fn() -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = Response<Body>> + Send + 'static,
        {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let connections = Arc::new(AtomicUsize::new(0));
            let (log, count) = (seen.clone(), connections.clone());
            let task = tokio::spawn(async move {
                let mut open = JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    count.fetch_add(1, Ordering::SeqCst);
                    let (log, handler) = (log.clone(), handler.clone());
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        log.lock().unwrap().push(Seen {
                            method: req.method().clone(),
                            path: req.uri().path_and_query().unwrap().to_string(),
                            host: req
                                .headers()
                                .get(hyper::header::HOST)
                                .map(|h| h.to_str().unwrap().to_owned()),
                        });
                        let response = handler();
                        async move { Ok::<_, Infallible>(response.await) }
                    });
                    open.spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            Server {
                addr,
                seen,
                connections,
                task,
            }
        }

        /// A server answering every request with `status` and a short body.
        async fn status(status: StatusCode) -> Server {
            Server::start(move || async move { respond(status, "ok") }).await
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
        Response::builder()
            .status(status)
            .body(Full::new(body.into()).boxed())
            .unwrap()
    }

    /// A raw TCP server that reads the request, writes `reply`, then closes the connection or
    /// (with `hold`) keeps it open for a minute.
    async fn raw(reply: &'static [u8], hold: bool) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let _ = stream.read(&mut request).await;
                    let _ = stream.write_all(reply).await;
                    if hold {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                });
            }
        });
        (addr, task)
    }

    fn client() -> Client<HttpConnector, Empty<Bytes>> {
        Client::builder(TokioExecutor::new()).build_http()
    }

    #[tokio::test]
    async fn http_200_is_healthy_and_sends_get_slash_with_the_key_as_host() {
        let server = Server::status(StatusCode::OK).await;
        // The request body type is inferred from the client.
        let probe = HttpProbe::new(client());
        run(&probe, server.addr).await.unwrap();
        assert_eq!(
            server.seen(),
            [Seen {
                method: Method::GET,
                path: "/".into(),
                host: Some(server.addr.to_string()),
            }]
        );
    }

    #[tokio::test]
    async fn http_500_fails_with_status() {
        let server = Server::status(StatusCode::INTERNAL_SERVER_ERROR).await;
        let probe = HttpProbe::new(client());
        match run(&probe, server.addr).await {
            Err(ProbeFailure::Status(s)) => assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR),
            other => panic!("expected Status(500), got {other:?}"),
        }
    }

    #[tokio::test]
    async fn accepted_statuses_are_configurable() {
        let no_content = Server::status(StatusCode::NO_CONTENT).await;
        let unavailable = Server::status(StatusCode::SERVICE_UNAVAILABLE).await;
        let only_200 = HttpProbe::new(client()).accept_status(200..=200);
        assert!(matches!(
            run(&only_200, no_content.addr).await,
            Err(ProbeFailure::Status(StatusCode::NO_CONTENT))
        ));
        let with_503 = HttpProbe::new(client()).accept_status(200..);
        run(&with_503, unavailable.addr).await.unwrap();
    }

    #[tokio::test]
    async fn a_redirect_is_judged_by_its_status_and_never_followed() {
        let target = Server::status(StatusCode::OK).await;
        let location = format!("http://{}/elsewhere", target.addr);
        let redirect = Server::start(move || {
            let location = location.clone();
            async move {
                Response::builder()
                    .status(StatusCode::FOUND)
                    .header(hyper::header::LOCATION, location)
                    .body(Full::new(Bytes::new()).boxed())
                    .unwrap()
            }
        })
        .await;

        // Default: 2xx and 3xx pass.
        run(&HttpProbe::new(client()), redirect.addr).await.unwrap();
        // Envoy's rule: only 200 passes.
        let strict = HttpProbe::new(client()).accept_status(200..=200);
        assert!(matches!(
            run(&strict, redirect.addr).await,
            Err(ProbeFailure::Status(StatusCode::FOUND))
        ));
        assert_eq!(redirect.seen().len(), 2);
        assert_eq!(target.seen(), [], "the redirect was followed");
    }

    #[tokio::test]
    async fn a_server_that_hangs_fails_with_timeout() {
        let server = Server::start(|| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            respond(StatusCode::OK, "too late")
        })
        .await;
        let timeout = Duration::from_millis(200);
        let probe = HttpProbe::new(client()).timeout(timeout);
        let start = Instant::now();
        // The probe's own timeout ends it (the guard in `run` would say "hung"), never
        // before it is due.
        match run(&probe, server.addr).await {
            Err(ProbeFailure::Timeout(t)) => assert_eq!(t, timeout),
            other => panic!("expected Timeout, got {other:?}"),
        }
        let took = start.elapsed();
        assert!(took >= timeout, "{took:?}");
    }

    #[tokio::test]
    async fn a_body_that_never_ends_fails_with_timeout() {
        let server = Server::start(|| async {
            let pending = futures::stream::pending::<Result<Frame<Bytes>, Infallible>>();
            Response::new(StreamBody::new(pending).boxed())
        })
        .await;
        let probe = HttpProbe::new(client()).timeout(Duration::from_millis(200));
        assert!(matches!(
            run(&probe, server.addr).await,
            Err(ProbeFailure::Timeout(_))
        ));
    }

    #[tokio::test]
    async fn connection_refused_fails_with_connect() {
        let addr = refused_addr().await;
        match run(&HttpProbe::new(client()), addr).await {
            Err(ProbeFailure::Connect(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
                // The transport's error stays reachable as the source.
                let source = std::error::Error::source(&e).expect("a source");
                assert!(source.to_string().contains("client error"), "{source}");
            }
            other => panic!("expected Connect, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn bytes_that_are_not_http_fail_without_hanging() {
        let cases: [(&'static [u8], bool); 4] = [
            (b"SSH-2.0-OpenSSH_9.6\r\n", true),
            (b"\x00\x01\x02\xff\xfe garbage \r\n\r\n", false),
            (b"", false),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort",
                false,
            ),
        ];
        // A probe that waited for more bytes would end with its 5 s timeout: the failure it
        // reports shows that it did not.
        let probe = HttpProbe::new(client()).timeout(Duration::from_secs(5));
        for (reply, hold) in cases {
            let (addr, task) = raw(reply, hold).await;
            match run(&probe, addr).await {
                Err(ProbeFailure::Transport(_) | ProbeFailure::Connect(_)) => {}
                other => panic!("{reply:?}: expected a transport failure, got {other:?}"),
            }
            task.abort();
        }
    }

    #[tokio::test]
    async fn a_huge_body_fails_with_body_too_large_without_being_read() {
        // 10 MB with a Content-Length: rejected from the announced length.
        let huge = Bytes::from(vec![b'x'; 10_000_000]);
        let server = Server::start(move || {
            let huge = huge.clone();
            async move { respond(StatusCode::OK, huge) }
        })
        .await;
        let probe = HttpProbe::new(client());
        assert!(matches!(
            run(&probe, server.addr).await,
            Err(ProbeFailure::BodyTooLarge { limit: 16384 })
        ));
    }

    #[tokio::test]
    async fn an_endless_chunked_body_fails_with_body_too_large() {
        // No announced length and no end: only stopping at the limit can end the probe early.
        let chunks = Arc::new(AtomicUsize::new(0));
        let produced = chunks.clone();
        let server = Server::start(move || {
            let produced = produced.clone();
            async move {
                let stream = futures::stream::repeat_with(move || {
                    produced.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; 1024])))
                });
                Response::new(StreamBody::new(stream).boxed())
            }
        })
        .await;
        // Ended by the limit, not by the 5 s timeout (which would fail with `Timeout`).
        let probe = HttpProbe::new(client())
            .timeout(Duration::from_secs(5))
            .body_limit(64 * 1024);
        assert!(matches!(
            run(&probe, server.addr).await,
            Err(ProbeFailure::BodyTooLarge { limit: 65536 })
        ));
        assert!(chunks.load(Ordering::SeqCst) > 64);
    }

    #[tokio::test]
    async fn the_body_limit_is_inclusive() {
        let server = Server::start(|| async { respond(StatusCode::OK, "0123456789") }).await;
        run(&HttpProbe::new(client()).body_limit(10), server.addr)
            .await
            .unwrap();
        assert!(matches!(
            run(&HttpProbe::new(client()).body_limit(9), server.addr).await,
            Err(ProbeFailure::BodyTooLarge { limit: 9 })
        ));
    }

    #[tokio::test]
    async fn method_path_and_host_are_sent() {
        let server = Server::status(StatusCode::OK).await;
        let probe = HttpProbe::new(client())
            .method(Method::HEAD)
            .path("/healthz?full=1")
            .host("api.internal:8443");
        run(&probe, server.addr).await.unwrap();
        assert_eq!(
            server.seen(),
            [Seen {
                method: Method::HEAD,
                path: "/healthz?full=1".into(),
                host: Some("api.internal:8443".into()),
            }]
        );
    }

    #[tokio::test]
    async fn a_read_body_lets_the_connection_be_reused() {
        let server = Server::status(StatusCode::OK).await;
        let probe = HttpProbe::new(client());
        run(&probe, server.addr).await.unwrap();
        // The client puts a connection back in its pool from a task of its own, once the
        // response body has been read: probe until a probe goes over the first connection.
        // A body left unread would close every connection, and this would never happen.
        let mut probes = 1;
        common::eventually("a probe over a reused connection", async || {
            run(&probe, server.addr).await.unwrap();
            probes += 1;
            server.connections.load(Ordering::SeqCst) < probes
        })
        .await;
        assert_eq!(server.seen().len(), probes);
    }

    #[tokio::test]
    async fn an_invalid_http_configuration_is_an_error() {
        let invalid = |probe: HttpProbe<_, Empty<Bytes>>| {
            matches!(probe.validate(), Err(BuildError::InvalidConfig(_)))
        };
        let probe = || HttpProbe::new(client());
        for path in ["", "healthz", "*", "/a b", "/a#frag", "http://host/"] {
            assert!(invalid(probe().path(path)), "path {path:?}");
        }
        for host in ["", "a b", "user@host", "host/path", "host:port"] {
            assert!(invalid(probe().host(host)), "host {host:?}");
        }
        assert!(invalid(probe().timeout(Duration::ZERO)));
        #[allow(clippy::reversed_empty_ranges)]
        let empty = 300..200;
        assert!(invalid(probe().accept_status(empty)));
        assert!(invalid(probe().accept_status(200..200)));
        assert!(invalid(probe().accept_status(0..=99)));
        assert!(invalid(probe().accept_status(200..=1000)));
        assert!(!invalid(probe().accept_status(..)));
        assert!(!invalid(probe().accept_status(100..=999)));
        assert!(!invalid(probe().path("/").host("[::1]:80")));
    }
}
