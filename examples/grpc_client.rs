//! A tonic gRPC client balanced over three local tonic servers with peak-EWMA; one server is
//! slow and gets fewer requests.
//!
//! ```text
//! cargo run --example grpc_client
//! cargo run --example grpc_client -- --requests 600
//! ```
//!
//! The example starts three servers of a one-method service `echo.Echo/Say` on loopback;
//! the third answers after 40 ms, the others after 2 ms. It sends `--requests N` (default
//! 300) from 8 concurrent tasks through one tower-lb balancer with the
//! [`PeakEwma`](tower_lb::strategy::PeakEwma) strategy, prints each server's share, and
//! exits 0 when the slow server got less than half the share of each fast one (1 otherwise).
//!
//! Why not tonic's own balancing (`Channel::balance_list`): it wraps tower's p2c balancer
//! whose load metric for a channel is always 0, so it spreads requests evenly and the slow
//! server keeps a third of them. tower-lb measures each server's latency and requests in
//! flight.
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

use http::uri::PathAndQuery;
use tonic::body::Body;
use tonic::codec::ProstCodec;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};
use tower_lb::error::BoxError;
use tower_lb::strategy::PeakEwma;
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

async fn start_server(name: &str, delay: Duration) -> Result<SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service = EchoServer {
        name: name.to_owned(),
        delay,
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
// Client stub: `Say` over any gRPC service (here, the balancer).

/// The balancer over one channel per server.
type Balanced = Balance<String, Channel, PeakEwma>;

async fn say(
    grpc: &mut tonic::client::Grpc<Balanced>,
    message: String,
) -> Result<SayReply, Status> {
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let request = Request::new(SayRequest { message });
    let codec = ProstCodec::<SayRequest, SayReply>::default();
    let reply = grpc
        .unary(request, PathAndQuery::from_static(SAY), codec)
        .await?;
    Ok(reply.into_inner())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let requests: usize = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [] => 300,
        [flag, n] if flag == "--requests" => n.parse()?,
        _ => return Err("usage: grpc_client [--requests N]".into()),
    };
    let servers = [
        ("fast-1", Duration::from_millis(2)),
        ("fast-2", Duration::from_millis(2)),
        ("slow", Duration::from_millis(40)),
    ];
    let mut endpoints = Vec::new();
    for (name, delay) in servers {
        let addr = start_server(name, delay).await?;
        let channel = Channel::from_shared(format!("http://{addr}"))?.connect_lazy();
        endpoints.push((name.to_owned(), channel));
    }

    let balance = Balance::builder()
        .strategy(PeakEwma::default())
        .fail_fast(Duration::from_secs(5))
        .build(discover::static_list(endpoints))?;
    let grpc = tonic::client::Grpc::new(balance.clone());

    let answered: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let tasks = 8;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let mut grpc = grpc.clone();
        let answered = answered.clone();
        let n = requests / tasks + usize::from(t < requests % tasks);
        handles.push(tokio::spawn(async move {
            for i in 0..n {
                let reply = say(&mut grpc, format!("hello {t}.{i}")).await?;
                *answered.lock().unwrap().entry(reply.server).or_default() += 1;
            }
            Ok::<_, Status>(())
        }));
    }
    for handle in handles {
        handle.await??;
    }

    let answered = answered.lock().unwrap().clone();
    for e in balance.endpoints() {
        println!(
            "{:>8}: {:>4} requests, latency estimate {:?}",
            e.key,
            answered.get(&e.key).copied().unwrap_or(0),
            e.latency.unwrap_or_default()
        );
    }
    let count = |name: &str| answered.get(name).copied().unwrap_or(0);
    let slow = count("slow");
    let fast = count("fast-1").min(count("fast-2"));
    if slow * 2 >= fast {
        eprintln!("the slow server got {slow} requests, a fast one only {fast}");
        std::process::exit(1);
    }
    println!("peak-EWMA kept the slow server to {slow} of {requests} requests: ok");
    Ok(())
}
