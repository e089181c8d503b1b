//! A tonic gRPC client balanced over four local tonic servers: peak-EWMA sends few requests
//! to a slow server, and a server that answers every call with `UNAVAILABLE` is seen failing
//! and ejected.
//!
//! ```text
//! cargo run --example grpc_client
//! cargo run --example grpc_client -- --requests 600
//! ```
//!
//! The example starts four servers of a one-method service `echo.Echo/Say` on loopback:
//! `fast-1` and `fast-2` answer after 2 ms, `slow` after 40 ms, and `broken` answers every
//! call at once with the gRPC status `UNAVAILABLE` (HTTP 200, the status in the response
//! head, as tonic sends a handler's `Err(Status)`).
//!
//! 1. It sends `--requests N` (default 300) from 8 concurrent tasks through one tower-lb
//!    balancer over the three healthy servers with the
//!    [`PeakEwma`](tower_lb::strategy::PeakEwma) strategy, and prints each server's share.
//! 2. It sends 40 requests one by one through a round-robin balancer over all four servers,
//!    with outlier detection on. Round robin does not look at latency, so only the failures
//!    can keep traffic away from `broken`: after 5 `UNAVAILABLE`s in a row it is ejected (the
//!    health event is printed) and the remaining requests all succeed. (Under peak-EWMA each
//!    of its failures would also count as a 1 s response.)
//!
//! It exits 0 when the slow server got less than half the share of each fast one and the
//! broken server was ejected after its 5 failures were counted; 1 otherwise.
//!
//! Both balancers keep each request in flight until its response body ends
//! ([`OnBodyEnd`](tower_lb::http::OnBodyEnd)), the completion policy to use for gRPC: a
//! status that arrives in the trailers (after messages) is judged too.
//!
//! Why not tonic's own balancing (`Channel::balance_list`): it wraps tower's p2c balancer
//! whose load metric for a channel is always 0, so it spreads requests evenly and the slow
//! server keeps its share. tower-lb measures each server's latency and requests in flight,
//! and reads the gRPC status of every call.
//!
//! No `protoc`, no build script, no generated code: the messages are plain structs with
//! `#[derive(prost::Message)]` (the same wire format `protoc` output would have: the
//! equivalent `.proto` is below), and the client and server stubs are a few lines over
//! tonic's `client::Grpc` and `server::Grpc` with its `ProstCodec`.
//!
//! ```proto
//! syntax = "proto3";
//! package echo;
//! service Echo { rpc Say(SayRequest) returns (SayReply); }
//! message SayRequest { string message = 1; }
//! message SayReply { string message = 1; string server = 2; }
//! ```
//!
//! Each server is one [`tonic::transport::Channel`] (an HTTP/2 connection that multiplexes
//! requests), the endpoint service of the balancer; `tonic::client::Grpc` runs over the
//! balancer like over any channel.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use http::uri::PathAndQuery;
use tonic::body::Body;
use tonic::client::GrpcService;
use tonic::codec::ProstCodec;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status};
use tower_lb::endpoint::EndpointState;
use tower_lb::error::BoxError;
use tower_lb::health::OutlierDetection;
use tower_lb::http::OnBodyEnd;
use tower_lb::strategy::{PeakEwma, RoundRobin};
use tower_lb::{discover, Balance};

/// `echo.SayRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SayRequest {
    /// What to echo.
    #[prost(string, tag = "1")]
    pub message: String,
}

/// `echo.SayReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SayReply {
    /// The echoed message.
    #[prost(string, tag = "1")]
    pub message: String,
    /// Which server answered.
    #[prost(string, tag = "2")]
    pub server: String,
}

const SAY: &str = "/echo.Echo/Say";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

// ---------------------------------------------------------------------------------------
// Server stub: routes `/echo.Echo/Say` to the handler through tonic's `server::Grpc`.

#[derive(Clone)]
struct EchoServer {
    name: String,
    delay: Duration,
    /// Answers every call with this status instead of a reply.
    fails_with: Option<Code>,
}

/// The handler of `Say`, as tonic's `UnaryService`.
struct SayHandler(EchoServer);

impl tower::Service<Request<SayRequest>> for SayHandler {
    type Response = Response<SayReply>;
    type Error = Status;
    type Future = BoxFuture<Result<Response<SayReply>, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<SayRequest>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move {
            if let Some(code) = server.fails_with {
                return Err(Status::new(code, format!("{} is broken", server.name)));
            }
            tokio::time::sleep(server.delay).await;
            Ok(Response::new(SayReply {
                message: request.into_inner().message,
                server: server.name,
            }))
        })
    }
}

impl tower::Service<http::Request<Body>> for EchoServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let handler = SayHandler(self.clone());
        Box::pin(async move {
            if request.uri().path() != SAY {
                return Ok(Status::unimplemented(request.uri().path().to_owned()).into_http());
            }
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<SayReply, SayRequest>::default());
            Ok(grpc.unary(handler, request).await)
        })
    }
}

async fn start_server(
    name: &str,
    delay: Duration,
    fails_with: Option<Code>,
) -> Result<SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service = EchoServer {
        name: name.to_owned(),
        delay,
        fails_with,
    };
    tokio::spawn(async move {
        let incoming = TcpIncoming::from(listener);
        if let Err(e) = Server::builder()
            .serve_with_incoming(service, incoming)
            .await
        {
            eprintln!("server {addr}: {e}");
        }
    });
    Ok(addr)
}

// ---------------------------------------------------------------------------------------
// Client stub: `Say` over any gRPC service (here, a balancer).

async fn say<T>(grpc: &mut tonic::client::Grpc<T>, message: String) -> Result<SayReply, Status>
where
    T: GrpcService<Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.into().to_string()))?;
    let request = Request::new(SayRequest { message });
    let codec = ProstCodec::<SayRequest, SayReply>::default();
    let reply = grpc
        .unary(request, PathAndQuery::from_static(SAY), codec)
        .await?;
    Ok(reply.into_inner())
}

/// Answers per server, and the calls that failed.
#[derive(Default)]
struct Tally {
    answered: BTreeMap<String, usize>,
    failed: usize,
}

impl Tally {
    fn answers(&self, server: &str) -> usize {
        self.answered.get(server).copied().unwrap_or(0)
    }
}

/// Phase 1: `requests` calls from 8 tasks through a peak-EWMA balancer.
async fn peak_ewma(endpoints: Vec<(String, Channel)>, requests: usize) -> Result<bool, BoxError> {
    let balance = Balance::builder()
        .strategy(PeakEwma::default())
        .track_completion(OnBodyEnd)
        .fail_fast(Duration::from_secs(5))
        .build(discover::static_list(endpoints))?;
    let grpc = tonic::client::Grpc::new(balance.clone());

    let answered: Arc<Mutex<Tally>> = Arc::default();
    let tasks = 8;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let mut grpc = grpc.clone();
        let answered = answered.clone();
        let n = requests / tasks + usize::from(t < requests % tasks);
        handles.push(tokio::spawn(async move {
            for i in 0..n {
                let reply = say(&mut grpc, format!("hello {t}.{i}")).await?;
                *answered
                    .lock()
                    .unwrap()
                    .answered
                    .entry(reply.server)
                    .or_default() += 1;
            }
            Ok::<_, Status>(())
        }));
    }
    for handle in handles {
        handle.await??;
    }

    let answered = answered.lock().unwrap();
    println!("peak-EWMA, {requests} requests from {tasks} tasks:");
    for e in balance.endpoints() {
        println!(
            "{:>8}: {:>4} requests, latency estimate {:?}",
            e.key,
            answered.answers(&e.key),
            e.latency.unwrap_or_default()
        );
    }
    let slow = answered.answers("slow");
    let fast = answered.answers("fast-1").min(answered.answers("fast-2"));
    if slow * 2 >= fast {
        eprintln!("the slow server got {slow} requests, a fast one only {fast}");
        return Ok(false);
    }
    println!("peak-EWMA kept the slow server to {slow} of {requests} requests: ok");
    Ok(true)
}

/// Phase 2: 40 calls one by one through a round-robin balancer with outlier detection.
async fn outlier_detection(endpoints: Vec<(String, Channel)>) -> Result<bool, BoxError> {
    let balance = Balance::builder()
        .strategy(RoundRobin::new())
        .track_completion(OnBodyEnd)
        .outlier_detection(OutlierDetection::new())
        .build(discover::static_list(endpoints))?;
    let mut events = balance.health_events();
    let mut grpc = tonic::client::Grpc::new(balance.clone());

    println!("\nround robin with outlier detection, 40 requests one by one:");
    let mut tally = Tally::default();
    let mut ejected_after = None;
    for i in 1..=40 {
        match say(&mut grpc, format!("hello {i}")).await {
            Ok(reply) => *tally.answered.entry(reply.server).or_default() += 1,
            Err(status) => {
                println!(
                    "  request {i:>2}: {:?}: {}",
                    status.code(),
                    status.message()
                );
                tally.failed += 1;
            }
        }
        let broken = balance.endpoints().into_iter().find(|e| e.key == "broken");
        if ejected_after.is_none() && broken.is_some_and(|e| e.state == EndpointState::Ejected) {
            ejected_after = Some(i);
            // The ejection happened on the completion path; the health event follows from
            // the balancer's background task.
            let event = tokio::time::timeout(Duration::from_secs(5), events.next()).await;
            if let Ok(Some(event)) = event {
                println!("  health event: {event}");
            }
        }
    }
    for e in balance.endpoints() {
        println!(
            "{:>8}: {:>4} answers, {:>2} failures, {:?}",
            e.key,
            tally.answers(&e.key),
            e.failures,
            e.state
        );
    }
    match ejected_after {
        Some(n) if tally.failed == 5 => {
            println!(
                "broken was ejected after {n} requests, its 5th UNAVAILABLE in a row; the other \
                 {} requests all succeeded: ok",
                40 - n
            );
            Ok(true)
        }
        _ => {
            eprintln!(
                "broken was not ejected after 5 failures ({} failed)",
                tally.failed
            );
            Ok(false)
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let requests: usize = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [] => 300,
        [flag, n] if flag == "--requests" => n.parse()?,
        _ => return Err("usage: grpc_client [--requests N]".into()),
    };
    let servers = [
        ("fast-1", Duration::from_millis(2), None),
        ("fast-2", Duration::from_millis(2), None),
        ("slow", Duration::from_millis(40), None),
        ("broken", Duration::ZERO, Some(Code::Unavailable)),
    ];
    let mut endpoints = Vec::new();
    for (name, delay, fails_with) in servers {
        let addr = start_server(name, delay, fails_with).await?;
        let channel = Channel::from_shared(format!("http://{addr}"))?.connect_lazy();
        endpoints.push((name.to_owned(), channel));
    }

    let healthy = endpoints[..3].to_vec();
    let spread = peak_ewma(healthy, requests).await?;
    let ejected = outlier_detection(endpoints).await?;
    if !(spread && ejected) {
        std::process::exit(1);
    }
    Ok(())
}
