//! Readiness: waiting for an eligible endpoint, failing fast with a reason, skipping endpoints
//! that are not ready. All timing runs on tokio's paused clock.

mod common;

use std::time::Duration;

use common::{send, settle, stats_of, Backend, Gate};
use futures::FutureExt;
use tokio::time::Instant;
use tower::limit::ConcurrencyLimit;
use tower::{Service, ServiceExt};
use tower_lb::classify::ErrorsAsFailures;
use tower_lb::discover;
use tower_lb::error::{BoxError, NotReady, Unavailable, UnavailableReason};
use tower_lb::strategy::{LeastRequest, Random, RoundRobin};
use tower_lb::Balance;

fn unavailable(err: &BoxError) -> &Unavailable {
    err.downcast_ref::<Unavailable>()
        .unwrap_or_else(|| panic!("expected Unavailable, got {err:?}"))
}

/// Round robin over `&str` keys, errors as failures, and the given fail-fast timeout.
fn rr<S, D>(
    fail_fast: Duration,
    discovery: D,
) -> Balance<&'static str, S, RoundRobin, ErrorsAsFailures>
where
    D: tower_lb::discover::Discover<&'static str, S> + Send + 'static,
    S: Send + Sync + 'static,
{
    Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .fail_fast(fail_fast)
        .build(discovery)
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn no_endpoints_waits_fail_fast_then_fails_with_no_endpoints() {
    let (_tx, rx) = discover::channel::<&str, Backend>();
    let mut balance = rr(Duration::from_secs(2), rx);
    let start = Instant::now();
    let err = balance.ready().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    let u = unavailable(&err);
    assert_eq!(u.reason(), UnavailableReason::NoEndpoints);
    assert_eq!(u.waited(), Duration::from_secs(2));
    assert_eq!(u.endpoints(), 0);
    assert!(err.to_string().contains("no endpoints"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn the_default_fail_fast_is_three_seconds() {
    let (_tx, rx) = discover::channel::<&str, Backend>();
    let mut balance = Balance::builder()
        .classify(ErrorsAsFailures)
        .build(rx)
        .unwrap();
    let start = Instant::now();
    let err = balance.ready().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(unavailable(&err).reason(), UnavailableReason::NoEndpoints);
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_inserted_during_the_wait_serves_the_request() {
    let (tx, rx) = discover::channel();
    let mut balance = rr(Duration::from_secs(3), rx);
    let start = Instant::now();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.insert("late", Backend::new("late")).unwrap();
        // Keep the source open.
        std::future::pending::<()>().await;
    });
    let answer = balance.ready().await.unwrap().call(()).await.unwrap();
    assert_eq!(answer, "late");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn every_waiting_clone_is_woken_by_a_new_endpoint() {
    let (tx, rx) = discover::channel();
    let balance = rr(Duration::from_secs(3), rx);
    let start = Instant::now();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let mut b = balance.clone();
            tokio::spawn(async move {
                let answer: Result<&str, BoxError> =
                    async { b.ready().await?.call(()).await }.await;
                answer.map(|_| Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    tx.insert("a", Backend::new("a")).unwrap();
    for t in tasks {
        let done = t.await.unwrap().expect("request served");
        assert_eq!(done - start, Duration::from_millis(1_500));
    }
    assert_eq!(stats_of(&balance, &"a").completed, 10);
}

#[tokio::test(start_paused = true)]
async fn fail_fast_zero_fails_at_once() {
    let (_tx, rx) = discover::channel::<&str, Backend>();
    let mut balance = rr(Duration::ZERO, rx);
    let result = balance.ready().now_or_never();
    let err = result
        .expect("fail_fast(0) must not return Pending")
        .unwrap_err();
    assert_eq!(unavailable(&err).reason(), UnavailableReason::NoEndpoints);
    assert_eq!(unavailable(&err).waited(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_handle_recovers_after_failing_fast() {
    let (tx, rx) = discover::channel();
    let mut balance = rr(Duration::from_millis(500), rx);
    assert!(balance.ready().await.is_err());
    tx.insert("a", Backend::new("a")).unwrap();
    settle().await;
    assert_eq!(send(&mut balance).await.unwrap(), "a");

    // Emptied again: the next request waits a full fail-fast period, not what is left of an
    // old one.
    tx.remove("a").unwrap();
    settle().await;
    let start = Instant::now();
    assert!(balance.ready().await.is_err());
    assert_eq!(start.elapsed(), Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_gave_up_on_ready_continues_the_same_wait() {
    // The caller gives up on readiness after one second (its own timeout) and comes back
    // with the same handle: before the deadline it waits out the rest of the wait; after
    // it, with still no endpoint, it fails at once, saying how long it has waited.
    let (tx, rx) = discover::channel::<&str, Backend>();
    let mut balance = rr(Duration::from_secs(3), rx);
    let start = Instant::now();
    let given_up = tokio::time::timeout(Duration::from_secs(1), balance.ready()).await;
    assert!(given_up.is_err());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let err = balance.ready().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(unavailable(&err).waited(), Duration::from_secs(3));

    let start = Instant::now();
    let given_up = tokio::time::timeout(Duration::from_secs(1), balance.ready()).await;
    assert!(given_up.is_err());
    tokio::time::sleep(Duration::from_secs(3_600)).await;
    let err = balance
        .ready()
        .now_or_never()
        .expect("fails at once")
        .unwrap_err();
    assert_eq!(unavailable(&err).waited(), start.elapsed());

    // A fresh clone has a full wait of its own.
    let mut clone = balance.clone();
    let given_up = tokio::time::timeout(Duration::from_secs(1), balance.ready()).await;
    assert!(given_up.is_err());
    tokio::time::sleep(Duration::from_secs(3_600)).await;
    let start = Instant::now();
    let err = clone.ready().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(unavailable(&err).waited(), Duration::from_secs(3));

    // And a handle that comes back after its deadline to a ready endpoint is served.
    tx.insert("a", Backend::new("a")).unwrap();
    settle().await;
    assert_eq!(send(&mut balance).await.unwrap(), "a");
}

#[tokio::test(start_paused = true)]
async fn a_wait_polled_late_fails_at_its_deadline_with_the_time_it_waited() {
    // The caller polls once and then does not poll again until long after the deadline (a
    // blocked runtime, a loop that polls on its own schedule). The wait has ended all the
    // same: it fails, and says how long it really waited, however late the poll.
    let (_tx, rx) = discover::channel::<&str, Backend>();
    let mut balance = rr(Duration::from_secs(3), rx);
    for late in [Duration::from_millis(3_500), Duration::from_secs(3_600)] {
        let start = Instant::now();
        assert!(futures::poll!(ServiceExt::<()>::ready(&mut balance)).is_pending());
        tokio::time::sleep(late).await;
        let polled = futures::poll!(ServiceExt::<()>::ready(&mut balance));
        let std::task::Poll::Ready(Err(err)) = polled else {
            panic!("polled {late:?} after a 3 s wait began, the wait must have failed");
        };
        let u = unavailable(&err);
        assert_eq!(u.reason(), UnavailableReason::NoEndpoints);
        assert_eq!(u.waited(), late);
        assert_eq!(start.elapsed(), late);
    }
}

// ---------------------------------------------------------------------------------------
// Endpoints that are not ready
// ---------------------------------------------------------------------------------------

type Limited = ConcurrencyLimit<Backend>;

fn limited(name: &'static str, gate: &Gate, max: usize) -> Limited {
    ConcurrencyLimit::new(Backend::new(name).gate(gate), max)
}

/// Round robin over "a" alone, with one request slot, answering when `gate` opens.
fn one_single_slot(gate: &Gate) -> Balance<&'static str, Limited, RoundRobin, ErrorsAsFailures> {
    rr(
        Duration::from_secs(3),
        discover::static_list([("a", limited("a", gate, 1))]),
    )
}

/// Round robin over "a" and "b", one request slot each, answering when `gate` opens.
fn two_single_slot(
    fail_fast: Duration,
    gate: &Gate,
) -> Balance<&'static str, Limited, RoundRobin, ErrorsAsFailures> {
    rr(
        fail_fast,
        discover::static_list([("a", limited("a", gate, 1)), ("b", limited("b", gate, 1))]),
    )
}

#[tokio::test(start_paused = true)]
async fn a_busy_endpoints_share_spreads_over_the_others() {
    // "a" is held busy; round robin must split its share between "b" and "c" rather than
    // send it all to its neighbour "b".
    let gate = Gate::closed();
    let open = Gate::opened();
    let mut balance = rr(
        Duration::from_secs(3),
        discover::static_list([
            ("a", limited("a", &gate, 1)),
            ("b", limited("b", &open, 1_000)),
            ("c", limited("c", &open, 1_000)),
        ]),
    );
    let _held = balance.ready().await.unwrap().call(());
    let mut counts = std::collections::HashMap::new();
    for _ in 0..300 {
        *counts.entry(send(&mut balance).await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(counts.get("a"), None);
    assert_eq!((counts["b"], counts["c"]), (150, 150), "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn a_readiness_failure_is_counted_once_per_poll() {
    let mut balance = rr(
        Duration::ZERO,
        discover::static_list([("broken", Backend::new("broken").ready_error())]),
    );
    assert!(balance.ready().await.is_err());
    let s = stats_of(&balance, &"broken");
    assert_eq!((s.failures, s.readiness_failures), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn endpoints_that_are_not_ready_are_skipped() {
    let gate = Gate::closed();
    let mut balance = rr(
        Duration::from_secs(3),
        discover::static_list([
            ("busy", limited("busy", &gate, 1)),
            ("free", ConcurrencyLimit::new(Backend::new("free"), 1_000)),
        ]),
    );
    // The first request takes busy's only permit and is held.
    let held = balance.ready().await.unwrap().call(());
    assert_eq!(stats_of(&balance, &"busy").in_flight, 1);

    let start = Instant::now();
    for _ in 0..10 {
        assert_eq!(send(&mut balance).await.unwrap(), "free");
    }
    assert_eq!(start.elapsed(), Duration::ZERO, "nobody waited for busy");
    assert_eq!(stats_of(&balance, &"free").completed, 10);
    assert_eq!(
        stats_of(&balance, &"busy").failures,
        0,
        "not ready is not a failure"
    );
    gate.open();
    assert_eq!(held.await.unwrap(), "busy");
}

#[tokio::test(start_paused = true)]
async fn least_request_also_falls_back_when_its_choice_is_not_ready() {
    // busy has a limit of 1 held by a request; with two endpoints least request always
    // prefers the idle one anyway, so load busy's twin too: both have one request in
    // flight, but only `free` has room for more.
    let gate = Gate::closed();
    let mut balance = Balance::builder()
        .strategy(LeastRequest::new().with_seed(4))
        .classify(ErrorsAsFailures)
        .build(discover::static_list([
            ("busy", limited("busy", &gate, 1)),
            ("free", limited("free", &gate, 1_000)),
        ]))
        .unwrap();
    let held = common::hold(&mut balance, 2).await;
    assert_eq!(
        common::stat(&balance, |e| e.in_flight),
        [("busy", 1), ("free", 1)]
    );
    gate.open();
    // New requests complete at once; held ones are never polled, so the counts stay 1 : 1
    // at every pick and either endpoint may be chosen: busy's choice must fall back.
    for _ in 0..20 {
        assert_eq!(send(&mut balance).await.unwrap(), "free");
    }
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn when_no_endpoint_becomes_ready_the_error_is_none_ready() {
    let gate = Gate::closed();
    let mut balance = two_single_slot(Duration::from_secs(2), &gate);
    let _held_a = balance.ready().await.unwrap().call(());
    let _held_b = balance.ready().await.unwrap().call(());
    let start = Instant::now();
    let err = balance.ready().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    let u = unavailable(&err);
    assert_eq!(u.reason(), UnavailableReason::NoneReady);
    assert_eq!(u.endpoints(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_becoming_ready_wakes_the_waiting_caller() {
    let gate = Gate::closed();
    let mut balance = two_single_slot(Duration::from_secs(3), &gate);
    let held_a = balance.ready().await.unwrap().call(());
    let _held_b = balance.ready().await.unwrap().call(());
    let start = Instant::now();
    let (ready, ()) = tokio::join!(balance.ready(), async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        drop(held_a); // cancels a's request and frees its permit
    });
    ready.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(700));
    gate.open();
    assert_eq!(balance.call(()).await.unwrap(), "a");
    assert_eq!(stats_of(&balance, &"a").cancelled, 1);
}

#[tokio::test(start_paused = true)]
async fn readiness_is_reserved_per_clone() {
    let gate = Gate::opened();
    let mut first = one_single_slot(&gate);
    let mut second = first.clone();
    // `first` holds the only permit for its next call.
    first.ready().await.unwrap();
    let mut waiting = Box::pin(second.ready());
    assert!(futures::poll!(&mut waiting).is_pending());
    // Calling and completing first's request frees the permit for second.
    assert_eq!(first.call(()).await.unwrap(), "a");
    let second = waiting.await.unwrap();
    assert_eq!(second.call(()).await.unwrap(), "a");
}

#[tokio::test(start_paused = true)]
async fn dropping_a_ready_handle_releases_its_reservation() {
    let gate = Gate::opened();
    let mut first = one_single_slot(&gate);
    let mut second = first.clone();
    first.ready().await.unwrap();
    drop(first);
    let start = Instant::now();
    assert_eq!(send(&mut second).await.unwrap(), "a");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(stats_of(&second, &"a").in_flight, 0);
}

// ---------------------------------------------------------------------------------------
// Readiness errors
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_endpoint_failing_poll_ready_is_skipped_and_counted() {
    let mut balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build(discover::static_list([
            ("broken", Backend::new("broken").ready_error()),
            ("ok", Backend::new("ok")),
        ]))
        .unwrap();
    let start = Instant::now();
    for _ in 0..10 {
        assert_eq!(send(&mut balance).await.unwrap(), "ok");
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    let broken = stats_of(&balance, &"broken");
    // Round robin advances its cursor for every choice, including the one that found
    // "broken" failing, so with two endpoints "broken" is every request's first choice:
    // one readiness failure per request, every request still served at once by "ok",
    // until the fifth failure in a row ejects "broken" (outlier detection is on by
    // default) and the rest go straight to "ok".
    assert_eq!(
        (
            broken.failures,
            broken.readiness_failures,
            broken.completed,
            broken.in_flight
        ),
        (5, 5, 0, 0)
    );
    assert_eq!(broken.state, tower_lb::endpoint::EndpointState::Ejected);
    let ok = stats_of(&balance, &"ok");
    assert_eq!((ok.failures, ok.completed), (0, 10));
}

#[tokio::test(start_paused = true)]
async fn when_every_endpoint_fails_poll_ready_the_error_is_none_ready() {
    let mut balance = rr(
        Duration::from_millis(300),
        discover::static_list([
            ("x", Backend::new("x").ready_error()),
            ("y", Backend::new("y").ready_error()),
        ]),
    );
    let err = balance.ready().await.unwrap_err();
    assert_eq!(unavailable(&err).reason(), UnavailableReason::NoneReady);
    for e in balance.endpoints() {
        assert!(e.failures >= 1, "{e:?}");
        assert_eq!(e.completed, 0);
    }
}

// ---------------------------------------------------------------------------------------
// Misuse
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn call_without_poll_ready_fails_with_not_ready() {
    let mut balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build(discover::static_list([("a", Backend::new("a"))]))
        .unwrap();
    let err = balance.call(()).await.unwrap_err();
    assert!(err.downcast_ref::<NotReady>().is_some(), "{err:?}");

    // One poll_ready allows one call.
    balance.ready().await.unwrap();
    assert_eq!(balance.call(()).await.unwrap(), "a");
    let err = balance.call(()).await.unwrap_err();
    assert!(err.downcast_ref::<NotReady>().is_some(), "{err:?}");

    let a = stats_of(&balance, &"a");
    assert_eq!(
        (a.completed, a.in_flight, a.failures, a.cancelled),
        (1, 0, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn readiness_errors_are_counted_separately_and_become_the_error_source() {
    let mut balance = rr(
        Duration::from_millis(1_500),
        discover::static_list([
            ("x", Backend::new("x").ready_error()),
            ("y", Backend::new("y").failing()),
        ]),
    );
    // y is ready but fails its requests; x fails its readiness checks.
    for _ in 0..4 {
        let err = send(&mut balance).await.unwrap_err();
        assert_eq!(err.to_string(), "y failed");
    }
    let x = stats_of(&balance, &"x");
    let y = stats_of(&balance, &"y");
    // x is every request's first choice (round robin's cursor also advances past it); y
    // served them all.
    assert_eq!((x.readiness_failures, x.failures, x.completed), (4, 4, 0));
    assert_eq!((y.readiness_failures, y.failures, y.completed), (0, 4, 4));

    // With only x left, the Unavailable error carries x's readiness error as its source.
    let (tx, rx) = discover::channel();
    tx.insert("x", Backend::new("x").ready_error()).unwrap();
    let mut only_x = rr(Duration::from_millis(1_500), rx);
    let err = only_x.ready().await.unwrap_err();
    let u = unavailable(&err);
    assert_eq!(u.reason(), UnavailableReason::NoneReady);
    let source = std::error::Error::source(u).expect("the readiness error as source");
    assert_eq!(source.to_string(), "x is broken");
    // Whole milliseconds in the message.
    assert!(err.to_string().contains("after waiting 1.5s"), "{err}");

    // No readiness error: no source.
    tx.remove("x").unwrap();
    settle().await;
    let err = only_x.ready().await.unwrap_err();
    assert_eq!(unavailable(&err).reason(), UnavailableReason::NoEndpoints);
    assert!(std::error::Error::source(unavailable(&err)).is_none());
}

#[test]
fn a_static_list_built_outside_a_runtime_serves_the_first_request_with_fail_fast_zero() {
    // The endpoints are known when the balancer is built; only the runtime is missing. The
    // first request inside a runtime must see them even if it may not wait at all.
    let mut balance = rr(
        Duration::ZERO,
        discover::static_list([("a", Backend::new("a"))]),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let answer = send(&mut balance).await;
        assert_eq!(
            answer.map_err(|e| e.to_string()),
            Ok("a"),
            "first request after building outside a runtime"
        );
    });
}

/// An endpoint answering with its name, whose readiness the test scripts.
#[derive(Clone)]
struct Stub {
    name: &'static str,
    readiness: Readiness,
}

#[derive(Clone)]
enum Readiness {
    Ready,
    /// Never ready (and never wakes anyone).
    Never,
    /// Fails its first `poll_ready` (counted here), then is always ready.
    FailsFirst(std::sync::Arc<std::sync::atomic::AtomicUsize>),
}

impl Service<()> for Stub {
    type Response = &'static str;
    type Error = BoxError;
    type Future = std::future::Ready<Result<&'static str, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        match &self.readiness {
            Readiness::Ready => std::task::Poll::Ready(Ok(())),
            Readiness::Never => std::task::Poll::Pending,
            Readiness::FailsFirst(polls) => {
                let n = polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                std::task::Poll::Ready(if n == 0 {
                    Err("warming up".into())
                } else {
                    Ok(())
                })
            }
        }
    }

    fn call(&mut self, _: ()) -> Self::Future {
        std::future::ready(Ok(self.name))
    }
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_recovering_from_a_readiness_error_is_used_without_waiting_for_fail_fast() {
    let polls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut balance = rr(
        Duration::from_secs(3),
        discover::static_list([(
            "a",
            Stub {
                name: "recovered",
                readiness: Readiness::FailsFirst(polls.clone()),
            },
        )]),
    );
    let start = Instant::now();
    assert_eq!(send(&mut balance).await.unwrap(), "recovered");
    // Nothing wakes a handle whose only endpoint failed: it looks again after 5 ms.
    assert_eq!(start.elapsed(), Duration::from_millis(5));
    assert_eq!(stats_of(&balance, &"a").readiness_failures, 1);
}

#[tokio::test(start_paused = true)]
async fn endpoints_that_keep_failing_readiness_are_rechecked_with_backoff_until_fail_fast() {
    let mut balance = rr(
        Duration::from_secs(1),
        discover::static_list([("broken", Backend::new("broken").ready_error())]),
    );
    let err = balance.ready().await.unwrap_err();
    assert_eq!(unavailable(&err).reason(), UnavailableReason::NoneReady);
    // Looks at 0, 5, 15, 35, 75, 155, 255, ... ms (5 ms doubling, at most 100 ms apart):
    // 13 looks in one second, not thousands.
    let checks = stats_of(&balance, &"broken").readiness_failures;
    assert!((10..=16).contains(&checks), "{checks} readiness checks");
}

// ---------------------------------------------------------------------------------------
// A reserved endpoint that changed before the call
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_reserved_endpoint_drained_removed_or_replaced_before_the_call_is_passed_over() {
    let (tx, rx) = discover::channel();
    tx.insert("a", Backend::new("a")).unwrap();
    let mut balance = rr(Duration::from_secs(3), rx);

    // Drained after poll_ready reserved it.
    balance.ready().await.unwrap();
    tx.insert("b", Backend::new("b")).unwrap();
    balance.set_draining(&"a", true).unwrap();
    settle().await;
    assert_eq!(balance.call(()).await.unwrap(), "b");

    // Removed after poll_ready reserved it ("b", the only endpoint not draining).
    balance.ready().await.unwrap();
    tx.remove("b").unwrap();
    tx.insert("c", Backend::new("c")).unwrap();
    settle().await;
    assert_eq!(balance.call(()).await.unwrap(), "c");

    // Replaced (a new service under the same key) after poll_ready reserved it.
    balance.ready().await.unwrap();
    tx.insert("c", Backend::new("c2")).unwrap();
    settle().await;
    assert_eq!(balance.call(()).await.unwrap(), "c2");
    assert_eq!(
        stats_of(&balance, &"c").completed,
        2,
        "the key keeps its statistics"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stale_reservation_with_nothing_ready_at_the_call_waits_for_an_endpoint() {
    let gate = Gate::closed();
    let mut first = two_single_slot(Duration::from_secs(3), &gate);
    let mut second = first.clone();
    // `first` holds one endpoint's only permit; `second` sends to the other, and the
    // request holds its permit until the gate opens.
    first.ready().await.unwrap();
    let held = second.ready().await.unwrap().call(());
    let busy = if stats_of(&first, &"a").in_flight == 1 {
        "a"
    } else {
        "b"
    };
    let reserved = if busy == "a" { "b" } else { "a" };
    first.set_draining(&reserved, true).unwrap();
    settle().await;
    // The reserved endpoint is draining and the other is busy: the request waits for the
    // busy one rather than go to the drained one.
    let start = Instant::now();
    let (answer, held) = tokio::join!(first.call(()), async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        gate.open();
        held.await
    });
    assert_eq!(held.unwrap(), busy);
    assert_eq!(answer.unwrap(), busy);
    assert_eq!(start.elapsed(), Duration::from_millis(700));
    assert_eq!(stats_of(&first, &reserved).completed, 0);
}

// ---------------------------------------------------------------------------------------
// Reproducible runs
// ---------------------------------------------------------------------------------------

const NAMES: [&str; 16] = [
    "e0", "e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8", "e9", "e10", "e11", "e12", "e13", "e14",
    "e15",
];

/// 16 endpoints of which three (2, 9 and 13) are ready: most picks land on a busy one, and
/// the balancer scans for a ready one.
fn mostly_busy() -> discover::StaticList<&'static str, Stub> {
    discover::static_list(NAMES.iter().enumerate().map(|(i, name)| {
        let readiness = if [2, 9, 13].contains(&i) {
            Readiness::Ready
        } else {
            Readiness::Never
        };
        (*name, Stub { name, readiness })
    }))
}

/// The endpoints that answer 60 requests in a row.
async fn choices<P: tower_lb::strategy::Strategy>(
    mut balance: Balance<&'static str, Stub, P, ErrorsAsFailures>,
) -> Vec<&'static str> {
    let mut answers = Vec::new();
    for _ in 0..60 {
        answers.push(send(&mut balance).await.unwrap());
    }
    answers
}

#[tokio::test(start_paused = true)]
async fn a_seeded_strategy_makes_choices_over_busy_endpoints_reproducible() {
    let random = |seed| {
        Balance::builder()
            .strategy(Random::with_seed(seed))
            .classify(ErrorsAsFailures)
            .build(mostly_busy())
            .unwrap()
    };
    let first = choices(random(7)).await;
    assert_eq!(first, choices(random(7)).await);
    assert_ne!(first, choices(random(8)).await, "the seed decides");
    for name in ["e2", "e9", "e13"] {
        assert!(first.contains(&name), "{name} is never chosen: {first:?}");
    }

    let least = |seed| {
        Balance::builder()
            .strategy(LeastRequest::new().with_seed(seed))
            .classify(ErrorsAsFailures)
            .build(mostly_busy())
            .unwrap()
    };
    assert_eq!(choices(least(3)).await, choices(least(3)).await);

    // The balancer's own seed, with a strategy that has none (round robin): where its
    // scans start repeats.
    let seeded = |seed| {
        Balance::builder()
            .strategy(RoundRobin::new())
            .classify(ErrorsAsFailures)
            .seed(seed)
            .build(mostly_busy())
            .unwrap()
    };
    let first = choices(seeded(11)).await;
    assert_eq!(first, choices(seeded(11)).await);
    assert_ne!(first, choices(seeded(12)).await);
}
