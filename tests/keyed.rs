//! Routing by request key through the balancer: strategies that use a key choose at `call`
//! time, fall back along the key's preference order when an endpoint cannot take the
//! request, and wait for a busy preferred endpoint rather than fail.
//!
//! Every test in which a request waits runs under tokio's paused clock: the fail-fast
//! timeout can then only end a wait that nothing else would end, however loaded the machine.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tower::{Service, ServiceExt};
use tower_lb::classify::ErrorsAsFailures;
use tower_lb::completion::OnResponse;
use tower_lb::error::{BoxError, Unavailable, UnavailableReason};
use tower_lb::key::key_fn;
use tower_lb::strategy::{self, Endpoints, Strategy};
use tower_lb::{discover, Balance};

/// Routes key byte `b` to endpoint `b % n`, then `b + 1`, ... on later attempts; requests
/// without a key go to the last endpoint.
struct ByFirstByte;

impl Strategy for ByFirstByte {
    type Table = ();

    fn build(&self, _: &Endpoints<'_>) {}

    fn pick(&self, _: &(), endpoints: &Endpoints<'_>, cx: &strategy::Context<'_>) -> usize {
        let n = endpoints.len();
        match cx.key() {
            Some(key) => (key[0] as usize + cx.attempt() as usize) % n,
            None => n - 1,
        }
    }

    fn uses_request_key(&self) -> bool {
        true
    }
}

const READY: u8 = 0;
const BUSY: u8 = 1;
const BROKEN: u8 = 2;

/// An endpoint answering with its name, whose readiness the test controls.
#[derive(Clone)]
struct Switch {
    name: &'static str,
    state: Arc<AtomicU8>,
    waiters: Arc<Mutex<Vec<Waker>>>,
}

impl Switch {
    fn new(name: &'static str) -> Self {
        Switch {
            name,
            state: Arc::new(AtomicU8::new(READY)),
            waiters: Arc::default(),
        }
    }

    fn set(&self, state: u8) {
        self.state.store(state, Ordering::SeqCst);
        for w in self.waiters.lock().unwrap().drain(..) {
            w.wake();
        }
    }
}

impl<R> Service<R> for Switch {
    type Response = &'static str;
    type Error = BoxError;
    type Future = std::future::Ready<Result<&'static str, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self.state.load(Ordering::SeqCst) {
            READY => Poll::Ready(Ok(())),
            BUSY => {
                self.waiters.lock().unwrap().push(cx.waker().clone());
                Poll::Pending
            }
            _ => Poll::Ready(Err("broken".into())),
        }
    }

    fn call(&mut self, _: R) -> Self::Future {
        std::future::ready(Ok(self.name))
    }
}

fn balancer(
    switches: &[Switch],
) -> Balance<
    &'static str,
    Switch,
    ByFirstByte,
    ErrorsAsFailures,
    tower_lb::completion::OnResponse,
    impl tower_lb::key::RequestKey<Vec<u8>>,
> {
    Balance::builder()
        .strategy(ByFirstByte)
        .classify(ErrorsAsFailures)
        .request_key(key_fn(|req: &Vec<u8>| Some(req.clone())))
        .fail_fast(Duration::from_secs(1))
        .build(discover::static_list(
            switches
                .iter()
                .map(|s| (s.name, s.clone()))
                .collect::<Vec<_>>(),
        ))
        .unwrap()
}

fn three() -> Vec<Switch> {
    vec![Switch::new("a"), Switch::new("b"), Switch::new("c")]
}

#[tokio::test]
async fn the_same_key_reaches_the_same_endpoint() {
    let switches = three();
    let mut lb = balancer(&switches);
    for _ in 0..3 {
        assert_eq!(lb.ready().await.unwrap().call(vec![1]).await.unwrap(), "b");
        assert_eq!(lb.ready().await.unwrap().call(vec![5]).await.unwrap(), "c");
    }
    // No key, and an empty key, take the strategy's missing-key route.
    assert_eq!(lb.ready().await.unwrap().call(vec![]).await.unwrap(), "c");
}

#[tokio::test]
async fn a_busy_or_broken_endpoint_falls_back_along_the_preference_order() {
    let switches = three();
    let mut lb = balancer(&switches);
    switches[1].set(BUSY);
    assert_eq!(lb.ready().await.unwrap().call(vec![1]).await.unwrap(), "c");
    switches[2].set(BROKEN);
    assert_eq!(lb.ready().await.unwrap().call(vec![1]).await.unwrap(), "a");
    // Keys that prefer a ready endpoint are not disturbed.
    assert_eq!(lb.ready().await.unwrap().call(vec![0]).await.unwrap(), "a");
    // Only the broken endpoint failed readiness checks (in the walks, and in the searches
    // of poll_ready for any ready endpoint that came across it).
    let failures = stat(&lb, |e| e.readiness_failures);
    assert_eq!(failures[..2], [("a", 0), ("b", 0)]);
    assert!(failures[2].1 >= 1, "{failures:?}");
}

/// `(key, stat)` for each endpoint, in discovery order.
fn stat<S, P: Strategy, C, T, H>(
    lb: &Balance<&'static str, S, P, C, T, H>,
    stat: impl Fn(&tower_lb::EndpointStats<&'static str>) -> u64,
) -> Vec<(&'static str, u64)> {
    lb.endpoints().iter().map(|e| (e.key, stat(e))).collect()
}

/// Makes `lb` ready while only `reserved` can take a request, so `poll_ready` reserves it;
/// then drains it and sets it busy: its `call` routes the request anew, and the others are
/// busy.
async fn ready_through_drained<H>(
    lb: &mut Balance<&'static str, Switch, ByFirstByte, ErrorsAsFailures, OnResponse, H>,
    switches: &[Switch],
    reserved: usize,
) where
    H: tower_lb::key::RequestKey<Vec<u8>>,
{
    for (i, s) in switches.iter().enumerate() {
        s.set(if i == reserved { READY } else { BUSY });
    }
    ServiceExt::<Vec<u8>>::ready(&mut *lb).await.unwrap();
    switches[reserved].set(BUSY);
    lb.set_draining(&switches[reserved].name, true).unwrap();
}

#[tokio::test(start_paused = true)]
async fn when_every_endpoint_is_busy_at_the_call_the_request_waits_for_the_first_ready_one() {
    let switches = three();
    let mut lb = balancer(&switches);
    // Key 1 prefers b, then c, then a; b is drained after poll_ready reserved it.
    ready_through_drained(&mut lb, &switches, 1).await;
    let task = tokio::spawn(lb.call(vec![1]));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!task.is_finished());
    // A less preferred endpoint frees up first and takes it.
    switches[0].set(READY);
    assert_eq!(task.await.unwrap().unwrap(), "a");
}

#[tokio::test(start_paused = true)]
async fn busy_endpoints_fail_fast_in_poll_ready_and_in_a_waiting_request() {
    let switches = three();
    let mut lb = balancer(&switches);
    for s in &switches {
        s.set(BUSY);
    }
    let check = |err: BoxError| {
        let unavailable = err.downcast_ref::<Unavailable>().expect("Unavailable");
        assert_eq!(unavailable.reason(), UnavailableReason::NoneReady);
        assert_eq!(unavailable.waited(), Duration::from_secs(1));
    };
    check(lb.ready().await.unwrap_err());
    ready_through_drained(&mut lb, &switches, 2).await;
    check(lb.call(vec![1]).await.unwrap_err());
    // Nothing stays counted in flight.
    assert!(lb.endpoints().iter().all(|e| e.in_flight == 0));
}

#[tokio::test(start_paused = true)]
async fn when_every_endpoint_is_broken_poll_ready_fails_fast_with_the_error() {
    let switches = three();
    let mut lb = balancer(&switches);
    for s in &switches {
        s.set(BROKEN);
    }
    let err = lb.ready().await.unwrap_err();
    let unavailable = err.downcast_ref::<Unavailable>().expect("Unavailable");
    assert_eq!(unavailable.reason(), UnavailableReason::NoneReady);
    assert_eq!(unavailable.waited(), Duration::from_secs(1));
    assert_eq!(unavailable.endpoints(), 3);
    assert!(std::error::Error::source(unavailable).is_some());
}

#[tokio::test]
async fn call_without_poll_ready_is_an_error_not_a_panic() {
    let switches = three();
    let mut lb = balancer(&switches);
    let err = lb.call(vec![1]).await.unwrap_err();
    assert!(err.is::<tower_lb::error::NotReady>());
}

#[tokio::test(start_paused = true)]
async fn a_drained_endpoint_is_passed_over_for_the_next_in_order() {
    let switches = three();
    let mut lb = balancer(&switches);
    lb.set_draining(&"b", true).unwrap();
    assert_eq!(lb.ready().await.unwrap().call(vec![1]).await.unwrap(), "c");
    lb.set_draining(&"b", false).unwrap();
    tokio::task::yield_now().await;
    assert_eq!(lb.ready().await.unwrap().call(vec![1]).await.unwrap(), "b");
    assert!(lb.set_draining(&"zzz", true).is_err());
}

#[tokio::test(start_paused = true)]
async fn when_every_endpoint_was_drained_since_the_snapshot_the_request_waits_for_the_next() {
    let switches = three();
    let lb = balancer(&switches);
    for name in ["a", "b", "c"] {
        lb.set_draining(&name, true).unwrap();
    }
    // Polled before the driver has published a snapshot without them: poll_ready waits
    // for that snapshot (as without a key), instead of arming a call that can only fail.
    let mut other = lb.clone();
    let mut request = Box::pin(async move { other.ready().await?.call(vec![1]).await });
    assert!(futures::poll!(request.as_mut()).is_pending());
    lb.set_draining(&"c", false).unwrap();
    assert_eq!(request.await.unwrap(), "c");
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_on_busy_endpoints_is_not_sent_to_one_drained_meanwhile() {
    let switches = three();
    let mut lb = balancer(&switches);
    // Key 1 prefers b, then c, then a; c is drained after poll_ready reserved it.
    ready_through_drained(&mut lb, &switches, 2).await;
    let task = tokio::spawn(lb.call(vec![1]));
    tokio::time::sleep(Duration::from_millis(20)).await;
    lb.set_draining(&"b", true).unwrap();
    switches[1].set(READY);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!task.is_finished(), "sent to the drained endpoint");
    switches[0].set(READY);
    assert_eq!(task.await.unwrap().unwrap(), "a");

    // When every endpoint it waits on is drained, it fails at once, saying why.
    lb.set_draining(&"b", false).unwrap();
    lb.set_draining(&"c", false).unwrap();
    ready_through_drained(&mut lb, &switches, 2).await;
    let task = tokio::spawn(lb.call(vec![1]));
    tokio::time::sleep(Duration::from_millis(20)).await;
    for name in ["a", "b", "c"] {
        lb.set_draining(&name, true).unwrap();
    }
    switches[1].set(READY);
    let err = task.await.unwrap().unwrap_err();
    let unavailable = err.downcast_ref::<Unavailable>().expect("Unavailable");
    assert_eq!(unavailable.reason(), UnavailableReason::AllUnhealthy);
    assert!(unavailable.waited() < Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn poll_ready_waits_while_every_endpoint_is_busy() {
    let switches = three();
    let mut lb = balancer(&switches);
    for s in &switches {
        s.set(BUSY);
    }
    // Backpressure: no endpoint can take a request, so the caller is not told it can send.
    assert!(futures::poll!(ServiceExt::<Vec<u8>>::ready(&mut lb)).is_pending());
    let mut other = lb.clone();
    let task = tokio::spawn(async move { other.ready().await?.call(vec![1]).await });
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
    assert!(!task.is_finished());
    // An endpoint that frees up wakes it; key 1 prefers b (busy), then c.
    switches[2].set(READY);
    assert_eq!(task.await.unwrap().unwrap(), "c");
}

#[tokio::test(start_paused = true)]
async fn a_waiting_request_takes_an_endpoint_added_meanwhile() {
    let switches = three();
    let (tx, rx) = discover::channel();
    tx.insert("a", switches[0].clone()).unwrap();
    let mut lb = Balance::builder()
        .strategy(ByFirstByte)
        .classify(ErrorsAsFailures)
        .request_key(key_fn(|req: &Vec<u8>| Some(req.clone())))
        .fail_fast(Duration::from_secs(1))
        .build(rx)
        .unwrap();
    // Ready through "a", which is then drained; "b" comes, busy: the request waits for it.
    lb.ready().await.unwrap();
    lb.set_draining(&"a", true).unwrap();
    switches[1].set(BUSY);
    tx.insert("b", switches[1].clone()).unwrap();
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
    let task = tokio::spawn(lb.call(vec![1]));
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
    assert!(!task.is_finished());
    // "c" is added while it waits: it walks the key's order again over the new set.
    tx.insert("c", switches[2].clone()).unwrap();
    assert_eq!(task.await.unwrap().unwrap(), "c");

    // Waiting on a busy "b" whose service is replaced: the new service takes it.
    lb.set_draining(&"a", false).unwrap();
    lb.set_draining(&"c", true).unwrap();
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
    ready_through_drained(&mut lb, &switches, 0).await;
    let task = tokio::spawn(lb.call(vec![1]));
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
    assert!(!task.is_finished());
    tx.insert("b", Switch::new("b2")).unwrap();
    assert_eq!(task.await.unwrap().unwrap(), "b2");
}

/// Through a real balancer, the nginx-compatible ring places HTTP requests exactly as the
/// strategy alone does for the same server names: a `SocketAddr` key is named `ip:port`.
#[cfg(feature = "http")]
#[tokio::test]
async fn ring_hash_through_the_balancer_matches_the_ring_for_the_same_names() {
    use std::net::SocketAddr;
    use tower_lb::http::key::Header;
    use tower_lb::strategy::{EndpointList, RingHash};

    let addrs: Vec<SocketAddr> = (8000..8005)
        .map(|port| format!("127.0.0.1:{port}").parse().unwrap())
        .collect();
    let echo = |addr: SocketAddr| {
        tower::service_fn(move |_req: http::Request<()>| async move {
            Ok::<_, BoxError>(http::Response::new(addr))
        })
    };
    let mut lb = Balance::builder()
        .strategy(RingHash::new())
        .request_key(Header::new(http::HeaderName::from_static("x-user")))
        .build(discover::static_list(
            addrs.iter().map(|&a| (a, echo(a))).collect::<Vec<_>>(),
        ))
        .unwrap();

    let ring = RingHash::new();
    let names = EndpointList::from_named(addrs.iter().map(|a| (a.to_string(), 1)));
    let table = ring.build(&names.endpoints());
    for user in 0..200 {
        let user = format!("user-{user}");
        let request = http::Request::builder()
            .header("x-user", &user)
            .body(())
            .unwrap();
        let served_by = *lb
            .ready()
            .await
            .unwrap()
            .call(request)
            .await
            .unwrap()
            .body();
        let cx = strategy::Context::with_key(Some(user.as_bytes()));
        let expected = addrs[ring.pick(&table, &names.endpoints(), &cx)];
        assert_eq!(served_by, expected, "{user}");
    }
}

/// Slow start leaves a hashing strategy's weights alone: a weight that ramped would move
/// keys between endpoints at every step. A new endpoint takes its keys at once, and no key
/// moves again while the window passes.
#[tokio::test(start_paused = true)]
async fn slow_start_does_not_move_the_keys_of_a_hashing_strategy() {
    use tower_lb::health::SlowStart;
    use tower_lb::strategy::RingHash;

    let (tx, rx) = discover::channel();
    let mut lb = Balance::builder()
        .strategy(RingHash::new())
        .classify(ErrorsAsFailures)
        .request_key(key_fn(|req: &Vec<u8>| Some(req.clone())))
        .slow_start(SlowStart::new(Duration::from_secs(10)))
        .build(rx)
        .unwrap();
    let switches = three();
    for s in &switches[..2] {
        tx.insert(s.name, s.clone()).unwrap();
    }
    tokio::task::yield_now().await;
    let route = |lb: &mut _| {
        let lb: &mut Balance<_, _, _, _, _, _> = lb;
        let mut served = Vec::new();
        for key in 0..200u32 {
            let answer = lb
                .ready()
                .now_or_never()
                .expect("ready")
                .unwrap()
                .call(key.to_be_bytes().to_vec())
                .now_or_never()
                .expect("answered")
                .unwrap();
            served.push(answer);
        }
        served
    };
    use futures::FutureExt;
    let before = route(&mut lb);
    tx.insert(switches[2].name, switches[2].clone()).unwrap();
    tokio::task::yield_now().await;
    let at_start = route(&mut lb);
    // Keys only moved to the new endpoint.
    for (b, a) in before.iter().zip(&at_start) {
        assert!(a == b || *a == "c", "{b} -> {a}");
    }
    assert!(at_start.contains(&"c"));
    for _ in 0..4 {
        tokio::time::advance(Duration::from_millis(2500)).await;
        tokio::task::yield_now().await;
        assert_eq!(route(&mut lb), at_start);
    }
}

/// A retry: the key, and the endpoints earlier tries went to.
type Retry = (Vec<u8>, Vec<String>);

#[derive(Clone)]
struct RetryKey;

impl tower_lb::key::RequestKey<Retry> for RetryKey {
    fn key<'r>(&self, request: &'r Retry) -> Option<std::borrow::Cow<'r, [u8]>> {
        Some(std::borrow::Cow::Borrowed(&request.0))
    }

    fn previous_endpoints<'r>(&self, request: &'r Retry) -> &'r [String] {
        &request.1
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_passes_over_the_endpoints_it_went_to() {
    let switches = three();
    let mut lb = Balance::builder()
        .strategy(ByFirstByte)
        .classify(ErrorsAsFailures)
        .request_key(RetryKey)
        .fail_fast(Duration::from_millis(100))
        .build(discover::static_list(
            switches
                .iter()
                .map(|s| (s.name, s.clone()))
                .collect::<Vec<_>>(),
        ))
        .unwrap();
    let mut send = async |previous: &[&str]| {
        let previous = previous.iter().map(|p| p.to_string()).collect();
        lb.ready().await.unwrap().call((vec![1], previous)).await
    };
    // Key 1 prefers b, then c, then a.
    assert_eq!(send(&[]).await.unwrap(), "b");
    assert_eq!(send(&["b"]).await.unwrap(), "c");
    assert_eq!(send(&["b", "c"]).await.unwrap(), "a");
    assert_eq!(send(&["c"]).await.unwrap(), "b");
    assert_eq!(send(&["zzz"]).await.unwrap(), "b");
    // Every endpoint tried: the first in the key's order again, rather than failing.
    assert_eq!(send(&["b", "c", "a"]).await.unwrap(), "b");
    // A busy endpoint is passed over as usual: c busy, so the retry after b goes to a.
    switches[2].set(BUSY);
    assert_eq!(send(&["b"]).await.unwrap(), "a");
    // With the only other candidates broken, back to the endpoint tried before.
    switches[2].set(BROKEN);
    switches[0].set(BROKEN);
    assert_eq!(send(&["b"]).await.unwrap(), "b");
    // And with the other candidates busy, the retry waits for them (here: fails fast),
    // instead of going back to b.
    switches[2].set(BUSY);
    switches[0].set(BUSY);
    let error = send(&["b"]).await.unwrap_err();
    assert!(error.is::<Unavailable>(), "{error}");
}
