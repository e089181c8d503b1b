//! One balancer shared by many tasks and threads; in-flight accounting under cancellation and
//! (feature `http`) until the end of the response body.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{stats_of, Backend, Gate};
use tower::{Service, ServiceExt};
use tower_lb::classify::{DefaultClassifier, ErrorsAsFailures};
use tower_lb::completion::OnResponse;
use tower_lb::discover;
use tower_lb::error::BoxError;
use tower_lb::strategy::{LeastRequest, PeakEwma, Random, RoundRobin, Strategy};
use tower_lb::{Balance, BalanceLayer};

#[test]
fn balance_is_clone_send_sync() {
    fn assert_shared<T: Clone + Send + Sync + 'static>() {}
    fn assert_send<T: Send + 'static>() {}
    assert_shared::<Balance<SocketAddr, Backend>>();
    assert_shared::<Balance<SocketAddr, Backend, RoundRobin, ErrorsAsFailures>>();
    assert_shared::<Balance<String, Backend, Random, ErrorsAsFailures>>();
    assert_shared::<Balance<u64, Backend, PeakEwma, DefaultClassifier, OnResponse>>();
    assert_shared::<Balance<u64, Backend, LeastRequest, ErrorsAsFailures>>();
    assert_send::<tower_lb::balance::ResponseFuture<Backend, (), ErrorsAsFailures, OnResponse>>();
    assert_shared::<
        BalanceLayer<
            SocketAddr,
            discover::StaticList<SocketAddr, ()>,
            LeastRequest,
            ErrorsAsFailures,
            OnResponse,
        >,
    >();
    assert_send::<discover::Sender<SocketAddr, Backend>>();
    #[cfg(feature = "http")]
    assert_shared::<
        Balance<SocketAddr, Backend, LeastRequest, DefaultClassifier, tower_lb::http::OnBodyEnd>,
    >();
}

const TASKS: usize = 64;
const PER_TASK: usize = 250;

/// 64 tasks on two worker threads, each with its own clone, send `PER_TASK` requests.
/// Returns the completed count per endpoint.
async fn hammer<P: Strategy>(strategy: P) -> Vec<(&'static str, u64)> {
    let names = ["a", "b", "c", "d"];
    let balance = Balance::builder()
        .strategy(strategy)
        .classify(ErrorsAsFailures)
        .build(discover::static_list(
            names.map(|n| (n, Backend::new(n).yielding(2))),
        ))
        .unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let mut b = balance.clone();
            tokio::spawn(async move {
                let mut answered = 0;
                for _ in 0..PER_TASK {
                    let r: Result<&str, BoxError> = async { b.ready().await?.call(()).await }.await;
                    r.unwrap();
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, TASKS * PER_TASK);
    let eps = balance.endpoints();
    for e in &eps {
        assert_eq!((e.in_flight, e.cancelled, e.failures), (0, 0, 0), "{e:?}");
    }
    assert_eq!(
        eps.iter().map(|e| e.completed).sum::<u64>(),
        (TASKS * PER_TASK) as u64
    );
    eps.iter().map(|e| (e.key, e.completed)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_share_one_least_request_balancer() {
    let split = hammer(LeastRequest::new()).await;
    for (k, n) in split {
        assert!(n > 0, "{k} got nothing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_share_one_round_robin_cursor() {
    // One pick per request, one shared cursor: an exactly even split.
    let split = hammer(RoundRobin::new()).await;
    let each = (TASKS * PER_TASK / 4) as u64;
    assert_eq!(split, [("a", each), ("b", each), ("c", each), ("d", each)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_share_one_random_balancer() {
    hammer(Random::new()).await;
    hammer(Random::with_seed(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_share_one_peak_ewma_balancer() {
    hammer(PeakEwma::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cancellations_return_in_flight_to_zero() {
    let balance = Balance::builder()
        .strategy(LeastRequest::new())
        .classify(ErrorsAsFailures)
        .build(discover::static_list(
            ["a", "b", "c"].map(|n| (n, Backend::new(n).yielding(1))),
        ))
        .unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let mut b = balance.clone();
            tokio::spawn(async move {
                for i in 0..PER_TASK {
                    let ready = b.ready().await.unwrap();
                    let mut fut = Box::pin(ready.call(()));
                    if i % 2 == 0 {
                        fut.await.unwrap();
                    } else {
                        // The backend yields first, so this poll is always pending.
                        assert!(futures::poll!(&mut fut).is_pending());
                        drop(fut);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let eps = balance.endpoints();
    let half = (TASKS * PER_TASK / 2) as u64;
    assert!(eps.iter().all(|e| e.in_flight == 0), "{eps:?}");
    assert_eq!(eps.iter().map(|e| e.completed).sum::<u64>(), half);
    assert_eq!(eps.iter().map(|e| e.cancelled).sum::<u64>(), half);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_never_counts_a_cancelled_request_even_momentarily() {
    // Every request is cancelled, so `completed` must read 0 at every instant ("not counting
    // cancelled ones"; "at every instant, requests sent = in_flight + completed + cancelled").
    // A reader on another thread watches it while two tasks cancel requests as fast as they
    // can. Correct counters can never show a non-zero value here; the loop stops at the
    // first one seen, or after a bounded number of reads.
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build(discover::static_list([(
            "a",
            Backend::new("a").yielding(1),
        )]))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let cancellers: Vec<_> = (0..2)
        .map(|_| {
            let mut b = balance.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut fut = Box::pin(b.ready().await.unwrap().call(()));
                    assert!(futures::poll!(&mut fut).is_pending());
                    drop(fut);
                    n += 1;
                    if n % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                n
            })
        })
        .collect();
    let watched = balance.clone();
    let reader = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let mut reads = 0u64;
        while std::time::Instant::now() < deadline && reads < 3_000_000 {
            let a = &watched.endpoints()[0];
            if a.completed != 0 {
                return Some((reads, a.clone()));
            }
            reads += 1;
        }
        None
    });
    let violation = reader.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for c in cancellers {
        sent += c.await.unwrap();
    }
    let a = stats_of(&balance, &"a");
    assert_eq!((a.in_flight, a.completed, a.cancelled), (0, 0, sent));
    if let Some((reads, seen)) = violation {
        panic!(
            "after {reads} reads, a reader saw completed = {} although every request was \
             cancelled: {seen:?}",
            seen.completed
        );
    }
}

// ---------------------------------------------------------------------------------------
// Cancellation, one request at a time
// ---------------------------------------------------------------------------------------

fn single(backend: Backend) -> Balance<&'static str, Backend, RoundRobin, ErrorsAsFailures> {
    Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build(discover::static_list([(backend.name, backend)]))
        .unwrap()
}

#[tokio::test]
async fn dropping_a_response_future_cancels_the_request() {
    let gate = Gate::closed();
    let mut balance = single(Backend::new("a").gate(&gate));
    let mut fut = Box::pin(balance.ready().await.unwrap().call(()));
    assert!(futures::poll!(&mut fut).is_pending());
    assert_eq!(stats_of(&balance, &"a").in_flight, 1);
    drop(fut);
    let a = stats_of(&balance, &"a");
    assert_eq!(
        (a.in_flight, a.cancelled, a.completed, a.failures),
        (0, 1, 0, 0)
    );
}

#[tokio::test]
async fn dropping_a_response_future_that_was_never_polled_cancels_it() {
    let mut balance = single(Backend::new("a"));
    let fut = balance.ready().await.unwrap().call(());
    assert_eq!(stats_of(&balance, &"a").in_flight, 1);
    drop(fut);
    let a = stats_of(&balance, &"a");
    assert_eq!((a.in_flight, a.cancelled, a.completed), (0, 1, 0));
}

#[tokio::test]
async fn a_ready_handle_that_never_calls_counts_nothing() {
    let mut balance = single(Backend::new("a"));
    balance.ready().await.unwrap();
    drop(balance.clone());
    let a = stats_of(&balance, &"a");
    assert_eq!((a.in_flight, a.cancelled, a.completed), (0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_timeout_around_the_response_cancels_it_and_samples_the_wait() {
    let mut balance = Balance::builder()
        .strategy(PeakEwma::new().with_seed(1))
        .classify(ErrorsAsFailures)
        .build(discover::static_list([(
            "hung",
            Backend::new("hung").delay(Duration::from_secs(60)),
        )]))
        .unwrap();
    let fut = balance.ready().await.unwrap().call(());
    let r = tokio::time::timeout(Duration::from_millis(250), fut).await;
    assert!(r.is_err(), "timed out");
    let s = stats_of(&balance, &"hung");
    assert_eq!(
        (s.in_flight, s.cancelled, s.completed, s.failures),
        (0, 1, 0, 0)
    );
    // The time waited is a lower bound of the latency and is recorded as a sample.
    assert_eq!(s.latency, Some(Duration::from_millis(250)));
}

#[tokio::test(start_paused = true)]
async fn select_losing_the_race_cancels_the_request() {
    let mut balance = single(Backend::new("slow").delay(Duration::from_secs(5)));
    let fut = balance.ready().await.unwrap().call(());
    tokio::select! {
        _ = fut => panic!("the backend answers after 5 s"),
        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
    let s = stats_of(&balance, &"slow");
    assert_eq!((s.in_flight, s.cancelled, s.completed), (0, 1, 0));

    // Completed requests are not cancellations.
    let fut = balance.ready().await.unwrap().call(());
    assert_eq!(fut.await.unwrap(), "slow");
    let s = stats_of(&balance, &"slow");
    assert_eq!((s.in_flight, s.cancelled, s.completed), (0, 1, 1));
}

#[tokio::test]
async fn failed_requests_count_as_completed_failures_not_cancellations() {
    let mut balance = single(Backend::new("bad").failing());
    for _ in 0..3 {
        let err = balance.ready().await.unwrap().call(()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad failed",
            "endpoint errors pass through"
        );
    }
    let s = stats_of(&balance, &"bad");
    assert_eq!(
        (s.in_flight, s.completed, s.failures, s.cancelled),
        (0, 3, 3, 0)
    );
}

#[tokio::test]
async fn default_classifier_counts_5xx_and_429_as_failures() {
    use common::Http;
    for (status, failure) in [(200, 0), (404, 0), (429, 1), (500, 1), (503, 1)] {
        let mut balance = Balance::builder()
            .strategy(RoundRobin::new())
            .build(discover::static_list([(
                "a",
                Http(Backend::new("a").status(status)),
            )]))
            .unwrap();
        let r = balance.ready().await.unwrap().call(()).await.unwrap();
        assert_eq!(r.status().as_u16(), status);
        let s = stats_of(&balance, &"a");
        assert_eq!((s.completed, s.failures), (1, failure), "status {status}");
    }
}

#[tokio::test]
async fn a_closure_classifier_decides_failures() {
    let mut balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(tower_lb::classify::classify_fn(
            |r: &Result<&'static str, BoxError>| match r {
                Ok("b") => tower_lb::classify::Outcome::Failure,
                Ok(_) => tower_lb::classify::Outcome::Success,
                Err(_) => tower_lb::classify::Outcome::Failure,
            },
        ))
        .build(discover::static_list([
            ("a", Backend::new("a")),
            ("b", Backend::new("b")),
        ]))
        .unwrap();
    for _ in 0..4 {
        balance.ready().await.unwrap().call(()).await.unwrap();
    }
    assert_eq!(common::stat(&balance, |e| e.failures), [("a", 0), ("b", 2)]);
}

#[tokio::test]
async fn polling_a_completed_response_future_again_is_an_error_not_a_panic() {
    // An `async` block panics when polled after it completed; the balancer's response
    // future must not poll it again.
    let service = tower::service_fn(|()| async move { Ok::<_, BoxError>("done") });
    let mut balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build(discover::static_list([("a", service)]))
        .unwrap();
    let mut response = Box::pin(balance.ready().await.unwrap().call(()));
    assert_eq!(response.as_mut().await.unwrap(), "done");
    for _ in 0..2 {
        let again = futures::poll!(response.as_mut());
        let std::task::Poll::Ready(Err(err)) = again else {
            panic!("a completed response future must fail when polled again");
        };
        assert!(err.to_string().contains("after it completed"), "{err}");
    }
    assert_eq!(stats_of(&balance, &"a").completed, 1);
    assert_eq!(stats_of(&balance, &"a").in_flight, 0);
}

// ---------------------------------------------------------------------------------------
// In flight until the end of the body (feature "http")
// ---------------------------------------------------------------------------------------

#[cfg(feature = "http")]
mod body {
    use super::*;
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use futures::channel::mpsc;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::{Body, Frame};
    use tower_lb::http::OnBodyEnd;

    type Chunks = mpsc::UnboundedReceiver<Result<Frame<Bytes>, std::io::Error>>;
    type Streamed = StreamBody<Chunks>;

    /// Answers each request with the next prepared streaming body.
    #[derive(Clone, Default)]
    struct Streaming {
        bodies: Arc<Mutex<VecDeque<Streamed>>>,
    }

    impl Streaming {
        /// Prepares a body and returns the sender that feeds it.
        fn prepare(&self) -> mpsc::UnboundedSender<Result<Frame<Bytes>, std::io::Error>> {
            let (tx, rx) = mpsc::unbounded();
            self.bodies.lock().unwrap().push_back(StreamBody::new(rx));
            tx
        }
    }

    impl Service<()> for Streaming {
        type Response = http::Response<Streamed>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: ()) -> Self::Future {
            let body = self
                .bodies
                .lock()
                .unwrap()
                .pop_front()
                .expect("a prepared body");
            std::future::ready(Ok(http::Response::new(body)))
        }
    }

    /// Round robin over one endpoint "a", in flight until the body ends.
    fn on_body_end<S: Send + Sync + 'static>(
        service: S,
    ) -> Balance<&'static str, S, RoundRobin, tower_lb::classify::DefaultClassifier, OnBodyEnd>
    {
        Balance::builder()
            .strategy(RoundRobin::new())
            .track_completion(OnBodyEnd)
            .build(discover::static_list([("a", service)]))
            .unwrap()
    }

    fn frame(s: &'static str) -> Result<Frame<Bytes>, std::io::Error> {
        Ok(Frame::data(Bytes::from_static(s.as_bytes())))
    }

    #[tokio::test]
    async fn on_body_end_keeps_the_request_in_flight_until_the_body_ends() {
        let backend = Streaming::default();
        let mut balance = on_body_end(backend.clone());
        let chunks = backend.prepare();
        let response = balance.ready().await.unwrap().call(()).await.unwrap();
        // The outcome is recorded at the head, but the request stays in flight and is not
        // completed until its body ends (sent = in_flight + completed + cancelled).
        let s = stats_of(&balance, &"a");
        assert_eq!((s.in_flight, s.completed, s.cancelled), (1, 0, 0));

        let mut body = response.into_body();
        chunks.unbounded_send(frame("hello")).unwrap();
        let f = body.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "hello");
        assert_eq!(stats_of(&balance, &"a").in_flight, 1, "body not finished");

        drop(chunks); // the end of the body
        assert!(body.frame().await.is_none());
        let s = stats_of(&balance, &"a");
        assert_eq!((s.in_flight, s.completed, s.cancelled), (0, 1, 0));
        drop(body);
        assert_eq!(
            stats_of(&balance, &"a").in_flight,
            0,
            "released exactly once"
        );
    }

    #[tokio::test]
    async fn on_body_end_releases_when_the_body_is_dropped_or_fails() {
        let backend = Streaming::default();
        let mut balance = on_body_end(backend.clone());

        let _chunks = backend.prepare();
        let response = balance.ready().await.unwrap().call(()).await.unwrap();
        assert_eq!(stats_of(&balance, &"a").in_flight, 1);
        drop(response);
        let s = stats_of(&balance, &"a");
        assert_eq!((s.in_flight, s.cancelled), (0, 0), "dropped, not cancelled");

        let chunks = backend.prepare();
        let response = balance.ready().await.unwrap().call(()).await.unwrap();
        let mut body = response.into_body();
        chunks
            .unbounded_send(Err(std::io::Error::other("reset")))
            .unwrap();
        assert!(body.frame().await.unwrap().is_err());
        assert_eq!(
            stats_of(&balance, &"a").in_flight,
            0,
            "released on a body error"
        );
        drop(body);
        assert_eq!(stats_of(&balance, &"a").in_flight, 0);

        let _chunks = backend.prepare();
        let response = balance.ready().await.unwrap().call(()).await.unwrap();
        let inner = response.into_body().into_inner();
        assert_eq!(
            stats_of(&balance, &"a").in_flight,
            0,
            "into_inner ends tracking"
        );
        drop(inner);
        let s = stats_of(&balance, &"a");
        assert_eq!((s.in_flight, s.completed, s.cancelled), (0, 3, 0));
    }

    #[tokio::test]
    async fn on_body_end_with_a_full_body_releases_after_the_last_frame() {
        use http_body_util::Full;
        let service = tower::service_fn(|_: ()| async {
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                b"payload",
            ))))
        });
        let mut balance = on_body_end(service);
        let response = balance.ready().await.unwrap().call(()).await.unwrap();
        let body = response.into_body();
        assert_eq!(body.size_hint().exact(), Some(7));
        assert!(!body.is_end_stream());
        assert_eq!(stats_of(&balance, &"a").in_flight, 1);
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "payload");
        assert_eq!(stats_of(&balance, &"a").in_flight, 0);
    }

    #[tokio::test]
    async fn on_response_releases_at_the_head_even_if_the_body_is_unread() {
        let backend = Streaming::default();
        let mut balance = Balance::builder()
            .strategy(RoundRobin::new())
            .build(discover::static_list([("a", backend.clone())]))
            .unwrap();
        let _chunks = backend.prepare();
        let _response = balance.ready().await.unwrap().call(()).await.unwrap();
        let s = stats_of(&balance, &"a");
        assert_eq!((s.in_flight, s.completed), (0, 1));
    }

    #[tokio::test]
    async fn least_request_sees_streaming_responses_as_load() {
        let a = Streaming::default();
        let b = Streaming::default();
        let mut balance = Balance::builder()
            .strategy(LeastRequest::new().with_seed(6))
            .track_completion(OnBodyEnd)
            .build(discover::static_list([("a", a.clone()), ("b", b.clone())]))
            .unwrap();
        // Keep one body open on whichever endpoint the first request went to.
        let (a_tx, b_tx) = (a.prepare(), b.prepare());
        let open = balance.ready().await.unwrap().call(()).await.unwrap();
        let busy = if stats_of(&balance, &"a").in_flight == 1 {
            "a"
        } else {
            "b"
        };
        let idle = if busy == "a" { "b" } else { "a" };
        let idle_backend = if idle == "a" { &a } else { &b };
        // The idle backend still holds the body prepared for it; discard it.
        idle_backend.bodies.lock().unwrap().clear();
        // Every later request is answered and its body finished at once: all go to idle.
        for _ in 0..20 {
            let tx = idle_backend.prepare();
            drop(tx);
            let response = balance.ready().await.unwrap().call(()).await.unwrap();
            response.into_body().collect().await.unwrap();
        }
        // The open body keeps busy's request in flight (and not yet completed).
        let s = stats_of(&balance, &busy);
        assert_eq!((s.in_flight, s.completed), (1, 0));
        assert_eq!(stats_of(&balance, &idle).completed, 20);
        drop((open, a_tx, b_tx));
        let s = stats_of(&balance, &busy);
        assert_eq!((s.in_flight, s.completed, s.cancelled), (0, 1, 0));
    }
}
