//! Real tonic servers on 127.0.0.1 behind a balancer of tonic channels: gRPC failures are
//! seen whether their status comes in the response head (trailers-only) or in the trailers.
//!
//! The servers speak a two-method service, `test.Calls/Unary` and `test.Calls/Stream`
//! (server streaming), with messages written by hand with `#[derive(prost::Message)]`: no
//! `protoc`. Each server answers as its [`Script`] says.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use futures::stream::{self, Stream, StreamExt};
use http::uri::PathAndQuery;
use tonic::body::Body;
use tonic::client::{Grpc, GrpcService};
use tonic::codec::ProstCodec;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status};
use tower::service_fn;
use tower_lb::completion::{OnResponse, TrackCompletion};
use tower_lb::endpoint::EndpointState;
use tower_lb::error::BoxError;
use tower_lb::health::OutlierDetection;
use tower_lb::http::OnBodyEnd;
use tower_lb::strategy::RoundRobin;
use tower_lb::{discover, Balance, EndpointStats};

/// The request of both methods.
#[derive(Clone, PartialEq, prost::Message)]
struct Ask {
    /// How many messages a stream sends before its end.
    #[prost(uint32, tag = "1")]
    messages: u32,
}

/// One answer: the name of the server that sent it.
#[derive(Clone, PartialEq, prost::Message)]
struct Answer {
    #[prost(string, tag = "1")]
    server: String,
}

const UNARY: &str = "/test.Calls/Unary";
const STREAM: &str = "/test.Calls/Stream";

/// How a server ends its calls: `None` is OK.
#[derive(Clone, Copy, Debug)]
struct Script {
    /// A unary call's status: an error is sent before any message (trailers-only).
    unary: Option<Code>,
    /// A stream's status, sent in the trailers after its messages.
    stream: Option<Code>,
    /// Streams never end: after their messages they wait for ever.
    hang: bool,
}

const HEALTHY: Script = Script {
    unary: None,
    stream: None,
    hang: false,
};

type Answers = Pin<Box<dyn Stream<Item = Result<Answer, Status>> + Send>>;

#[derive(Clone)]
struct Calls {
    name: String,
    script: Script,
}

impl Calls {
    /// `Unary`: an answer, or the scripted error before any message.
    async fn unary(self, _: Request<Ask>) -> Result<Response<Answer>, Status> {
        match self.script.unary {
            None => Ok(Response::new(self.answer())),
            Some(code) => Err(Status::new(code, format!("{} says no", self.name))),
        }
    }

    /// `Stream`: `messages` answers, then the scripted status in the trailers (or no end
    /// at all).
    async fn stream(self, request: Request<Ask>) -> Result<Response<Answers>, Status> {
        let messages = request.into_inner().messages as usize;
        let mut answers = vec![Ok(self.answer()); messages];
        if let Some(code) = self.script.stream {
            answers.push(Err(Status::new(code, "the stream failed")));
        }
        let answers = stream::iter(answers);
        Ok(Response::new(if self.script.hang {
            Box::pin(answers.chain(stream::pending()))
        } else {
            Box::pin(answers)
        }))
    }

    fn answer(&self) -> Answer {
        Answer {
            server: self.name.clone(),
        }
    }

    /// Routes one HTTP/2 request to its method through tonic's `server::Grpc`.
    async fn serve(self, request: http::Request<Body>) -> Result<http::Response<Body>, Infallible> {
        let mut grpc = tonic::server::Grpc::new(ProstCodec::<Answer, Ask>::default());
        let calls = self;
        Ok(match request.uri().path() {
            UNARY => {
                let method = service_fn(move |r| calls.clone().unary(r));
                grpc.unary(method, request).await
            }
            STREAM => {
                let method = service_fn(move |r| calls.clone().stream(r));
                grpc.server_streaming(method, request).await
            }
            path => Status::unimplemented(path.to_owned()).into_http(),
        })
    }
}

/// Starts a server on an ephemeral loopback port; returns its channel, keyed by its name.
async fn start(name: &str, script: Script) -> (String, Channel) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let calls = Calls {
        name: name.to_owned(),
        script,
    };
    let service = service_fn(move |request| calls.clone().serve(request));
    tokio::spawn(Server::builder().serve_with_incoming(service, TcpIncoming::from(listener)));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    (name.to_owned(), channel)
}

/// A round-robin balancer over servers with these scripts, named `s0`, `s1`, ...
async fn balancer<T>(
    scripts: &[Script],
    track: T,
    outliers: bool,
) -> Balance<String, Channel, RoundRobin, tower_lb::classify::DefaultClassifier, T>
where
    T: TrackCompletion<http::Response<Body>>,
{
    let mut servers = Vec::new();
    for (i, &script) in scripts.iter().enumerate() {
        servers.push(start(&format!("s{i}"), script).await);
    }
    let mut builder = Balance::builder()
        .strategy(RoundRobin::new())
        .track_completion(track);
    if outliers {
        builder = builder.outlier_detection(OutlierDetection::new());
    }
    builder.build(discover::static_list(servers)).unwrap()
}

/// One unary call: the answering server's name, or the status.
async fn unary<T>(grpc: &mut Grpc<T>) -> Result<String, Status>
where
    T: GrpcService<Body>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.into().to_string()))?;
    let path = PathAndQuery::from_static(UNARY);
    let codec = ProstCodec::<Ask, Answer>::default();
    let answer = grpc
        .unary(Request::new(Ask { messages: 1 }), path, codec)
        .await?;
    Ok(answer.into_inner().server)
}

/// One streaming call of `messages` messages, read to its end: the servers that answered
/// and the final status.
async fn streamed<T>(grpc: &mut Grpc<T>, messages: u32) -> (Vec<String>, Result<(), Status>)
where
    T: GrpcService<Body>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    let mut answers = Vec::new();
    let result = async {
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.into().to_string()))?;
        let path = PathAndQuery::from_static(STREAM);
        let codec = ProstCodec::<Ask, Answer>::default();
        let mut stream = grpc
            .server_streaming(Request::new(Ask { messages }), path, codec)
            .await?
            .into_inner();
        while let Some(answer) = stream.message().await? {
            answers.push(answer.server);
        }
        Ok(())
    }
    .await;
    (answers, result)
}

fn stats(endpoints: &[EndpointStats<String>], key: &str) -> (u64, u64, u64, u64) {
    let e = endpoints.iter().find(|e| e.key == key).unwrap();
    (e.completed, e.failures, e.cancelled, e.in_flight)
}

#[tokio::test]
async fn an_unavailable_server_is_counted_ejected_and_avoided() {
    let broken = Script {
        unary: Some(Code::Unavailable),
        ..HEALTHY
    };
    let balance = balancer(&[HEALTHY, HEALTHY, broken], OnResponse, true).await;
    let mut grpc = Grpc::new(balance.clone());

    // Round robin: s0, s1, s2, ... until s2 has failed 5 times in a row and is ejected.
    let mut unavailable = 0;
    for _ in 0..15 {
        match unary(&mut grpc).await {
            Ok(_) => {}
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                unavailable += 1;
            }
        }
    }
    assert_eq!(unavailable, 5);
    let endpoints = balance.endpoints();
    assert_eq!(stats(&endpoints, "s2"), (5, 5, 0, 0));
    let s2 = endpoints.iter().find(|e| e.key == "s2").unwrap();
    assert_eq!(s2.state, EndpointState::Ejected);

    // Every later call goes to the healthy servers.
    let mut answered = BTreeMap::<String, usize>::new();
    for _ in 0..30 {
        *answered.entry(unary(&mut grpc).await.unwrap()).or_default() += 1;
    }
    assert_eq!(answered.keys().collect::<Vec<_>>(), ["s0", "s1"]);
    assert!(answered.values().all(|&n| n >= 14), "{answered:?}");
    let endpoints = balance.endpoints();
    assert_eq!(stats(&endpoints, "s2"), (5, 5, 0, 0));
    for healthy in ["s0", "s1"] {
        let (completed, failures, cancelled, in_flight) = stats(&endpoints, healthy);
        assert_eq!((failures, cancelled, in_flight), (0, 0, 0));
        assert!(completed >= 19, "{healthy}: {completed}");
    }
}

#[tokio::test]
async fn application_answers_are_not_failures() {
    for code in [Code::InvalidArgument, Code::NotFound] {
        let script = Script {
            unary: Some(code),
            ..HEALTHY
        };
        // With outlier detection on: 20 such answers in a row eject nothing.
        let balance = balancer(&[script], OnBodyEnd, true).await;
        let mut grpc = Grpc::new(balance.clone());
        for _ in 0..20 {
            assert_eq!(unary(&mut grpc).await.unwrap_err().code(), code);
        }
        let endpoints = balance.endpoints();
        assert_eq!(stats(&endpoints, "s0"), (20, 0, 0, 0), "{code:?}");
        assert_eq!(endpoints[0].state, EndpointState::Active);
    }
}

#[tokio::test]
async fn successful_calls_read_to_their_trailers_are_successes() {
    let balance = balancer(&[HEALTHY], OnBodyEnd, true).await;
    let mut grpc = Grpc::new(balance.clone());
    for _ in 0..10 {
        assert_eq!(unary(&mut grpc).await.unwrap(), "s0");
        let (answers, end) = streamed(&mut grpc, 3).await;
        assert_eq!((answers.len(), end.map_err(|s| s.code())), (3, Ok(())));
    }
    assert_eq!(stats(&balance.endpoints(), "s0"), (20, 0, 0, 0));
}

#[tokio::test]
async fn a_status_in_the_trailers_after_messages_is_seen_with_on_body_end() {
    let broken = Script {
        stream: Some(Code::Unavailable),
        ..HEALTHY
    };
    let balance = balancer(&[broken], OnBodyEnd, false).await;
    let mut grpc = Grpc::new(balance.clone());
    for _ in 0..4 {
        let (answers, end) = streamed(&mut grpc, 2).await;
        assert_eq!(answers, ["s0", "s0"]);
        assert_eq!(end.unwrap_err().code(), Code::Unavailable);
    }
    assert_eq!(stats(&balance.endpoints(), "s0"), (4, 4, 0, 0));
}

#[tokio::test]
async fn failing_streams_get_a_server_ejected_with_on_body_end() {
    let broken = Script {
        stream: Some(Code::Internal),
        ..HEALTHY
    };
    let balance = balancer(&[HEALTHY, HEALTHY, broken], OnBodyEnd, true).await;
    let mut grpc = Grpc::new(balance.clone());
    let mut failed = 0;
    for _ in 0..15 {
        let (answers, end) = streamed(&mut grpc, 1).await;
        assert_eq!(answers.len(), 1);
        if let Err(status) = end {
            assert_eq!((status.code(), answers[0].as_str()), (Code::Internal, "s2"));
            failed += 1;
        }
    }
    assert_eq!(failed, 5);
    let endpoints = balance.endpoints();
    assert_eq!(endpoints[2].state, EndpointState::Ejected);
    for _ in 0..10 {
        let (answers, end) = streamed(&mut grpc, 1).await;
        assert!(end.is_ok() && answers[0] != "s2", "{answers:?}");
    }
}

#[tokio::test]
async fn with_on_response_a_status_in_the_trailers_counts_as_a_success() {
    // Documented: the request is over at the head, before the trailers.
    let broken = Script {
        stream: Some(Code::Unavailable),
        ..HEALTHY
    };
    let balance = balancer(&[broken], OnResponse, false).await;
    let mut grpc = Grpc::new(balance.clone());
    for _ in 0..3 {
        let (_, end) = streamed(&mut grpc, 1).await;
        assert_eq!(end.unwrap_err().code(), Code::Unavailable);
    }
    assert_eq!(stats(&balance.endpoints(), "s0"), (3, 0, 0, 0));
}

#[tokio::test]
async fn a_stream_dropped_before_its_trailers_is_cancelled() {
    let endless = Script {
        hang: true,
        ..HEALTHY
    };
    let balance = balancer(&[endless], OnBodyEnd, false).await;
    let mut grpc = Grpc::new(balance.clone());
    grpc.ready().await.unwrap();
    let mut stream = grpc
        .server_streaming(
            Request::new(Ask { messages: 1 }),
            PathAndQuery::from_static(STREAM),
            ProstCodec::<Ask, Answer>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    assert_eq!(stats(&balance.endpoints(), "s0"), (0, 0, 0, 1));
    drop(stream);
    assert_eq!(stats(&balance.endpoints(), "s0"), (0, 0, 1, 0));
}
