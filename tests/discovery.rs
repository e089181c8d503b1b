//! Discovery sources and how the balancer applies their changes.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use common::{keys, send, settle, stat, stats_of, Backend, Gate};
use tower::{Service, ServiceExt};
use tower_lb::classify::ErrorsAsFailures;
use tower_lb::discover::{self, Change, Snapshots};
use tower_lb::endpoint::EndpointState;
use tower_lb::error::{BoxError, BuildError, DriverStopped, Unavailable, UnavailableReason};
use tower_lb::strategy::{LeastRequest, PeakEwma, Random, RoundRobin, Strategy};
use tower_lb::{Balance, Endpoint, Metadata};

type Rr = Balance<&'static str, Backend, RoundRobin, ErrorsAsFailures>;

fn rr<D>(discovery: D) -> Rr
where
    D: tower_lb::discover::Discover<&'static str, Backend> + Send + 'static,
{
    rr_failing_after(Duration::from_millis(100), discovery)
}

fn rr_failing_after<D>(fail_fast: Duration, discovery: D) -> Rr
where
    D: tower_lb::discover::Discover<&'static str, Backend> + Send + 'static,
{
    Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .fail_fast(fail_fast)
        .build(discovery)
        .unwrap()
}

/// A current-thread runtime with its timers.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn weights<K: Clone, S, P: Strategy, C, T>(b: &Balance<K, S, P, C, T>) -> Vec<(K, u64)> {
    stat(b, |e| u64::from(e.weight))
}

async fn answers<B>(balance: &mut B, n: usize) -> Vec<&'static str>
where
    B: Service<(), Response = &'static str, Error = BoxError>,
{
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(send(balance).await.unwrap());
    }
    out
}

// ---------------------------------------------------------------------------------------
// Static lists
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn static_list_is_in_place_when_build_returns() {
    let balance = rr(discover::static_list([
        Endpoint::new("a", Backend::new("a")),
        Endpoint::new("b", Backend::new("b"))
            .with_weight(4)
            .with_metadata(Metadata::zone("eu-1").with_label("rack", "r7")),
        Endpoint::new("c", Backend::new("c")).with_weight(0),
    ]));
    // No yield: the list is applied by build itself.
    let eps = balance.endpoints();
    assert_eq!(
        eps.iter()
            .map(|e| (e.key, e.weight, e.state))
            .collect::<Vec<_>>(),
        [
            ("a", 1, EndpointState::Active),
            ("b", 4, EndpointState::Active),
            ("c", 0, EndpointState::ZeroWeight),
        ]
    );
    assert_eq!(eps[1].metadata.zone.as_deref(), Some("eu-1"));
    assert_eq!(
        eps[1]
            .metadata
            .labels
            .iter()
            .map(|(k, v)| (&**k, &**v))
            .collect::<Vec<_>>(),
        [("rack", "r7")]
    );
    for e in &eps {
        assert_eq!(
            (e.in_flight, e.completed, e.failures, e.cancelled),
            (0, 0, 0, 0)
        );
        assert_eq!(e.latency, None);
    }
    settle().await;
    let stats = balance.discovery_stats();
    assert_eq!(stats.changes, 1);
    assert_eq!(stats.errors, 0);
    assert!(!stats.ended, "a static list never ends");
}

#[tokio::test]
async fn static_list_accepts_tuples_with_weights() {
    let mut balance = rr(discover::static_list([
        ("a", Backend::new("a"), 2),
        ("b", Backend::new("b"), 1),
    ]));
    assert_eq!(weights(&balance), [("a", 2), ("b", 1)]);
    assert_eq!(
        answers(&mut balance, 6).await,
        ["a", "b", "a", "a", "b", "a"]
    );
}

// ---------------------------------------------------------------------------------------
// Channel: changes apply in the background, without requests
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn channel_changes_apply_without_any_request() {
    let (tx, rx) = discover::channel();
    let balance = rr(rx);
    assert!(balance.endpoints().is_empty());

    tx.insert("a", Backend::new("a")).unwrap();
    tx.insert("b", Backend::new("b")).unwrap();
    settle().await;
    assert_eq!(keys(&balance), ["a", "b"]);

    tx.insert_with("a", Backend::new("a"), 3, Metadata::zone("z"))
        .unwrap();
    settle().await;
    assert_eq!(
        weights(&balance),
        [("a", 3), ("b", 1)],
        "update keeps the place"
    );
    assert_eq!(stats_of(&balance, &"a").metadata.zone.as_deref(), Some("z"));

    tx.insert("c", Backend::new("c")).unwrap();
    tx.remove("b").unwrap();
    settle().await;
    assert_eq!(keys(&balance), ["a", "c"]);

    tx.reset(vec![
        Endpoint::new("d", Backend::new("d")),
        Endpoint::new("c", Backend::new("c")),
    ])
    .unwrap();
    settle().await;
    assert_eq!(keys(&balance), ["d", "c"], "a reset sets the order");

    tx.insert("e", Backend::new("e")).unwrap();
    settle().await;
    assert_eq!(keys(&balance), ["d", "c", "e"], "new keys go last");

    tx.send(Change::Remove("d")).unwrap();
    settle().await;
    assert_eq!(keys(&balance), ["c", "e"]);
    assert_eq!(balance.discovery_stats().changes, 8);
}

#[tokio::test]
async fn a_burst_of_changes_is_applied_completely() {
    let (tx, rx) = discover::channel();
    let balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build(rx)
        .unwrap();
    for i in 0..1_000u32 {
        tx.insert(i, Backend::new("x")).unwrap();
    }
    for i in (0..1_000u32).filter(|i| i % 2 == 1) {
        tx.remove(i).unwrap();
    }
    for _ in 0..1_000 {
        if balance.endpoints().len() == 500 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        keys(&balance),
        (0..1_000u32).filter(|i| i % 2 == 0).collect::<Vec<_>>()
    );
}

/// A source fed by the test, which records, each time the driver polls it, the endpoint
/// set the balancer has published (through a monitor the test hands it after building).
#[derive(Clone, Default)]
struct Recording {
    state: std::sync::Arc<std::sync::Mutex<RecordingState>>,
}

#[derive(Default)]
struct RecordingState {
    queue: std::collections::VecDeque<Change<u32, Backend>>,
    waker: Option<std::task::Waker>,
    monitor: Option<tower_lb::balance::Monitor<u32>>,
    seen: Vec<Vec<u32>>,
}

impl Recording {
    fn push(&self, changes: impl IntoIterator<Item = Change<u32, Backend>>) {
        let mut state = self.state.lock().unwrap();
        state.queue.extend(changes);
        if let Some(w) = state.waker.take() {
            w.wake();
        }
    }

    fn seen(&self) -> Vec<Vec<u32>> {
        std::mem::take(&mut self.state.lock().unwrap().seen)
    }
}

impl futures::Stream for Recording {
    type Item = Result<Change<u32, Backend>, Infallible>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let mut state = self.state.lock().unwrap();
        if let Some(monitor) = &state.monitor {
            let mut keys: Vec<u32> = monitor.endpoints().into_iter().map(|e| e.key).collect();
            keys.sort_unstable();
            if state.seen.last() != Some(&keys) {
                state.seen.push(keys);
            }
        }
        match state.queue.pop_front() {
            Some(change) => std::task::Poll::Ready(Some(Ok(change))),
            None => {
                state.waker = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        }
    }
}

#[tokio::test]
async fn a_burst_larger_than_one_batch_is_published_whole() {
    let source = Recording::default();
    let old: Vec<u32> = (0..300).collect();
    let new: Vec<u32> = (1_000..1_300).collect();
    source.push(std::iter::once(Change::Reset(
        old.iter()
            .map(|&k| Endpoint::new(k, Backend::new("x")))
            .collect(),
    )));
    let balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build(source.clone())
        .unwrap();
    assert_eq!(keys(&balance), old);
    source.state.lock().unwrap().monitor = Some(balance.monitor());
    // A source that turns a new list into removes and inserts: 600 changes, ready at once.
    source.push(old.iter().map(|&k| Change::Remove(k)));
    source.push(new.iter().map(|&k| Change::insert(k, Backend::new("x"))));
    for _ in 0..1_000 {
        if keys(&balance) == new {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(keys(&balance), new);
    // Between the driver's batches, only the whole old set or the whole new one was out.
    let seen = source.seen();
    assert!(
        seen.iter().all(|keys| *keys == old || *keys == new),
        "a half-applied set was published: {:?}",
        seen.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_source_that_is_never_pending_is_still_published() {
    let mut next = 0u32;
    let endless = futures::stream::poll_fn(move |_| {
        next += 1;
        std::task::Poll::Ready(Some(Ok::<_, Infallible>(Change::insert(
            next % 10,
            Backend::new("x"),
        ))))
    });
    let balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build(endless)
        .unwrap();
    for _ in 0..10_000 {
        if balance.endpoints().len() == 10 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let mut published = keys(&balance);
    published.sort_unstable();
    assert_eq!(published, (0..10).collect::<Vec<_>>());
}

#[tokio::test]
async fn changes_sent_before_build_are_applied_by_build() {
    let (tx, rx) = discover::channel();
    tx.insert("a", Backend::new("a")).unwrap();
    tx.insert("b", Backend::new("b")).unwrap();
    let balance = rr(rx);
    assert_eq!(keys(&balance), ["a", "b"]);
}

#[tokio::test]
async fn update_keeps_statistics_and_swaps_the_service() {
    let (tx, rx) = discover::channel();
    tx.insert("a", Backend::new("a-v1")).unwrap();
    let mut balance = rr(rx);
    assert_eq!(answers(&mut balance, 3).await, ["a-v1"; 3]);

    tx.insert("a", Backend::new("a-v2")).unwrap();
    settle().await;
    assert_eq!(
        stats_of(&balance, &"a").completed,
        3,
        "insert with same key keeps stats"
    );
    assert_eq!(answers(&mut balance, 2).await, ["a-v2"; 2]);
    assert_eq!(stats_of(&balance, &"a").completed, 5);
}

#[tokio::test]
async fn requests_in_flight_on_an_updated_service_still_count() {
    let gate = Gate::closed();
    let (tx, rx) = discover::channel();
    tx.insert("a", Backend::new("a-v1").gate(&gate)).unwrap();
    let mut balance = rr(rx);
    let held = balance.ready().await.unwrap().call(());
    tx.insert_with("a", Backend::new("a-v2"), 2, Metadata::default())
        .unwrap();
    settle().await;
    let a = stats_of(&balance, &"a");
    assert_eq!((a.weight, a.in_flight), (2, 1));
    gate.open();
    assert_eq!(held.await.unwrap(), "a-v1");
    let a = stats_of(&balance, &"a");
    assert_eq!((a.in_flight, a.completed), (0, 1));
}

#[tokio::test]
async fn requests_in_flight_on_a_removed_endpoint_finish_normally() {
    let gate = Gate::closed();
    let (tx, rx) = discover::channel();
    tx.insert("a", Backend::new("a").gate(&gate)).unwrap();
    tx.insert("b", Backend::new("b")).unwrap();
    let mut balance = rr(rx);
    let held = balance.ready().await.unwrap().call(()); // a
    tx.remove("a").unwrap();
    settle().await;
    assert_eq!(keys(&balance), ["b"]);
    assert_eq!(answers(&mut balance, 3).await, ["b"; 3]);
    gate.open();
    assert_eq!(held.await.unwrap(), "a");
}

#[tokio::test]
async fn reset_keeps_statistics_of_keys_that_stay() {
    let (tx, rx) = discover::channel();
    tx.insert("a", Backend::new("a")).unwrap();
    tx.insert("b", Backend::new("b")).unwrap();
    let mut balance = rr(rx);
    answers(&mut balance, 4).await; // a, b, a, b
    tx.reset(vec![
        Endpoint::new("c", Backend::new("c")),
        Endpoint::new("b", Backend::new("b")),
    ])
    .unwrap();
    settle().await;
    assert_eq!(stat(&balance, |e| e.completed), [("c", 0), ("b", 2)]);

    // A key that comes back after it was removed starts afresh.
    tx.insert("a", Backend::new("a")).unwrap();
    settle().await;
    assert_eq!(
        stat(&balance, |e| e.completed),
        [("c", 0), ("b", 2), ("a", 0)]
    );
}

#[tokio::test]
async fn remove_of_an_unknown_key_is_ignored() {
    let (tx, rx) = discover::channel();
    tx.insert("a", Backend::new("a")).unwrap();
    let mut balance = rr(rx);
    tx.remove("nope").unwrap();
    tx.insert("b", Backend::new("b")).unwrap();
    settle().await;
    assert_eq!(keys(&balance), ["a", "b"]);
    assert_eq!(balance.discovery_stats().errors, 0);
    assert_eq!(answers(&mut balance, 2).await, ["a", "b"]);
}

#[tokio::test]
async fn duplicate_keys_in_a_reset_keep_first_position_and_last_value() {
    let (tx, rx) = discover::channel();
    let mut balance = rr(rx);
    tx.reset(vec![
        Endpoint::new("a", Backend::new("a-first")).with_weight(1),
        Endpoint::new("b", Backend::new("b")),
        Endpoint::new("a", Backend::new("a-last")).with_weight(2),
    ])
    .unwrap();
    settle().await;
    assert_eq!(weights(&balance), [("a", 2), ("b", 1)]);
    // Weights 2, 1: a a b ... but only if a's last description won.
    assert_eq!(answers(&mut balance, 3).await, ["a-last", "b", "a-last"]);
}

#[tokio::test]
async fn duplicate_keys_in_a_static_list_keep_first_position_and_last_value() {
    let mut balance = rr(discover::static_list([
        ("x", Backend::new("x1"), 1),
        ("y", Backend::new("y"), 1),
        ("x", Backend::new("x2"), 1),
        ("y", Backend::new("y2"), 1),
    ]));
    assert_eq!(keys(&balance), ["x", "y"]);
    assert_eq!(answers(&mut balance, 2).await, ["x2", "y2"]);
}

// ---------------------------------------------------------------------------------------
// Empty resets, errors, the end of the stream
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_empty_reset_is_ignored_by_default() {
    let (tx, rx) = discover::channel();
    tx.insert("a", Backend::new("a")).unwrap();
    let mut balance = rr(rx);
    tx.reset(Vec::new()).unwrap();
    settle().await;
    assert_eq!(keys(&balance), ["a"]);
    assert_eq!(balance.discovery_stats().empty_resets_ignored, 1);
    assert_eq!(answers(&mut balance, 1).await, ["a"]);

    // An empty static list is an empty reset too.
    let balance = rr(discover::static_list(Vec::<Endpoint<&str, Backend>>::new()));
    assert_eq!(balance.discovery_stats().empty_resets_ignored, 1);
}

#[tokio::test(start_paused = true)]
async fn an_empty_reset_empties_the_set_when_allowed() {
    let (tx, rx) = discover::channel();
    tx.insert("a", Backend::new("a")).unwrap();
    let mut balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .allow_empty_reset(true)
        .fail_fast(Duration::from_millis(50))
        .build(rx)
        .unwrap();
    tx.reset(Vec::new()).unwrap();
    settle().await;
    assert!(balance.endpoints().is_empty());
    assert_eq!(balance.discovery_stats().empty_resets_ignored, 0);
    let err = balance.ready().await.unwrap_err();
    let err = err.downcast_ref::<Unavailable>().expect("Unavailable");
    assert_eq!(err.reason(), UnavailableReason::NoEndpoints);
}

#[tokio::test]
async fn removing_every_endpoint_one_by_one_empties_the_set() {
    let (tx, rx) = discover::channel();
    tx.insert("a", Backend::new("a")).unwrap();
    let balance = rr(rx);
    tx.remove("a").unwrap();
    settle().await;
    assert!(balance.endpoints().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_discovery_error_keeps_the_set_and_is_counted() {
    let (tx, rx) =
        futures::channel::mpsc::unbounded::<Result<Change<&str, Backend>, std::io::Error>>();
    tx.unbounded_send(Ok(Change::insert("a", Backend::new("a"))))
        .unwrap();
    let mut balance = rr(rx);
    tx.unbounded_send(Err(std::io::Error::other("dns down")))
        .unwrap();
    settle().await;
    let stats = balance.discovery_stats();
    assert_eq!(stats.errors, 1);
    assert_eq!(stats.last_error.as_deref(), Some("dns down"));
    assert!(!stats.ended);
    assert_eq!(keys(&balance), ["a"]);
    assert_eq!(answers(&mut balance, 1).await, ["a"]);

    // The stream is polled again after an error, once the 10 ms backoff has passed.
    tx.unbounded_send(Ok(Change::insert("b", Backend::new("b"))))
        .unwrap();
    settle().await;
    assert_eq!(keys(&balance), ["a"], "still backing off");
    tokio::time::sleep(Duration::from_millis(10)).await;
    settle().await;
    assert_eq!(keys(&balance), ["a", "b"]);
    assert_eq!(balance.discovery_stats().errors, 1);
}

#[tokio::test]
async fn an_ended_stream_keeps_the_set() {
    let (tx, rx) = discover::channel();
    tx.insert("a", Backend::new("a")).unwrap();
    tx.insert("b", Backend::new("b")).unwrap();
    let mut balance = rr(rx);
    drop(tx);
    settle().await;
    assert!(balance.discovery_stats().ended);
    assert_eq!(keys(&balance), ["a", "b"]);
    assert_eq!(answers(&mut balance, 4).await, ["a", "b", "a", "b"]);
}

// ---------------------------------------------------------------------------------------
// Adapters
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn from_tower_adapts_a_service_list() {
    let list = tower::discover::ServiceList::new(vec![
        Backend::new("zero"),
        Backend::new("one"),
        Backend::new("two"),
    ]);
    let mut balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build(discover::from_tower(list))
        .unwrap();
    settle().await;
    assert_eq!(weights(&balance), [(0usize, 1), (1, 1), (2, 1)]);
    // A ServiceList ends after its inserts; the set stays.
    assert!(balance.discovery_stats().ended);
    assert_eq!(balance.discovery_stats().changes, 3);
    assert_eq!(
        answers(&mut balance, 4).await,
        ["zero", "one", "two", "zero"]
    );
}

#[tokio::test]
async fn from_tower_passes_removes_through() {
    let (tx, rx) = futures::channel::mpsc::unbounded::<
        Result<tower::discover::Change<u16, Backend>, Infallible>,
    >();
    let balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build(discover::from_tower(rx))
        .unwrap();
    tx.unbounded_send(Ok(tower::discover::Change::Insert(1, Backend::new("1"))))
        .unwrap();
    tx.unbounded_send(Ok(tower::discover::Change::Insert(2, Backend::new("2"))))
        .unwrap();
    tx.unbounded_send(Ok(tower::discover::Change::Remove(1)))
        .unwrap();
    settle().await;
    assert_eq!(keys(&balance), [2]);
}

/// A snapshot source fed by the test, one list per `snapshot` call.
struct Lists(
    tokio::sync::mpsc::UnboundedReceiver<Result<Vec<Endpoint<&'static str, Backend>>, String>>,
);

impl Snapshots<&'static str, Backend> for Lists {
    type Error = BoxError;

    async fn snapshot(&mut self) -> Result<Vec<Endpoint<&'static str, Backend>>, BoxError> {
        match self.0.recv().await {
            Some(list) => list.map_err(Into::into),
            None => std::future::pending().await,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn from_snapshots_diffs_lists_into_changes() {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let ep = |k: &'static str, name: &'static str, w: u32| {
        Endpoint::new(k, Backend::new(name)).with_weight(w)
    };
    tx.send(Ok(vec![ep("a", "a1", 1), ep("b", "b1", 1)]))
        .unwrap();
    let mut balance = rr(discover::from_snapshots(Lists(rx)));
    settle().await;
    assert_eq!(keys(&balance), ["a", "b"]);
    assert_eq!(answers(&mut balance, 2).await, ["a1", "b1"]);

    // a unchanged (its new service is dropped, the old one stays), b reweighted, c new.
    tx.send(Ok(vec![
        ep("a", "a2", 1),
        ep("b", "b2", 2),
        ep("c", "c2", 1),
    ]))
    .unwrap();
    settle().await;
    assert_eq!(weights(&balance), [("a", 1), ("b", 2), ("c", 1)]);
    assert_eq!(
        stat(&balance, |e| e.completed),
        [("a", 1), ("b", 1), ("c", 0)]
    );
    let c = common_counts(&answers(&mut balance, 4).await);
    assert_eq!(c.get("a1"), Some(&1), "{c:?}");
    assert_eq!(c.get("a2"), None, "{c:?}");
    assert_eq!(c.get("b2"), Some(&2), "{c:?}");
    assert_eq!(c.get("c2"), Some(&1), "{c:?}");

    // An error changes nothing (and the source is polled again after a 10 ms backoff).
    tx.send(Err("registry unreachable".to_string())).unwrap();
    settle().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(balance.discovery_stats().errors, 1);
    assert_eq!(keys(&balance), ["a", "b", "c"]);

    // An empty list is an empty reset: ignored, the set stays.
    tx.send(Ok(vec![])).unwrap();
    settle().await;
    assert_eq!(balance.discovery_stats().empty_resets_ignored, 1);
    assert_eq!(keys(&balance), ["a", "b", "c"]);

    // The next list is a full reset, so the balancer and the adapter agree again.
    tx.send(Ok(vec![ep("c", "c3", 1), ep("d", "d3", 1)]))
        .unwrap();
    settle().await;
    assert_eq!(keys(&balance), ["c", "d"]);
    assert_eq!(answers(&mut balance, 2).await.len(), 2);

    // A removal.
    tx.send(Ok(vec![ep("d", "d3", 1)])).unwrap();
    settle().await;
    assert_eq!(keys(&balance), ["d"]);
}

fn common_counts(answers: &[&'static str]) -> HashMap<&'static str, usize> {
    let mut m = HashMap::new();
    for a in answers {
        *m.entry(*a).or_default() += 1;
    }
    m
}

#[tokio::test]
async fn build_with_makes_a_service_per_key() {
    let (tx, rx) = discover::channel::<&'static str, ()>();
    tx.insert("a", ()).unwrap();
    let made = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let made2 = made.clone();
    let mut balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build_with(rx, move |key: &&'static str| {
            made2.lock().unwrap().push(*key);
            Backend::new(key)
        })
        .unwrap();
    tx.insert("b", ()).unwrap();
    settle().await;
    assert_eq!(answers(&mut balance, 2).await, ["a", "b"]);
    assert_eq!(*made.lock().unwrap(), ["a", "b"]);
}

#[tokio::test]
async fn balance_layer_builds_an_independent_balancer_per_layer_call() {
    use tower::Layer;
    let layer = Balance::builder()
        .strategy(LeastRequest::new().with_seed(1))
        .classify(ErrorsAsFailures)
        .into_layer(discover::static_list([("a", ()), ("b", ())]))
        .unwrap();
    let make = |key: &&'static str| Backend::new(key);
    let mut one = layer.layer(make);
    let two = layer.layer(make);
    let answers = answers(&mut one, 10).await;
    assert!(answers.iter().all(|a| *a == "a" || *a == "b"));
    let total: u64 = one.endpoints().iter().map(|e| e.completed).sum();
    assert_eq!(total, 10);
    assert_eq!(two.endpoints().iter().map(|e| e.completed).sum::<u64>(), 0);
}

#[tokio::test]
async fn balance_layer_works_with_round_robin_in_a_service_builder() {
    let layer = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .into_layer(discover::static_list([("a", ()), ("b", ()), ("c", ())]))
        .unwrap();
    let mut balance = tower::ServiceBuilder::new()
        .layer(layer)
        .service(|key: &&'static str| Backend::new(key));
    assert_eq!(
        answers(&mut balance, 6).await,
        ["a", "b", "c", "a", "b", "c"]
    );
}

// ---------------------------------------------------------------------------------------
// Weights
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn weight_zero_endpoints_get_no_traffic() {
    let mut balance = rr(discover::static_list([
        ("off", Backend::new("off"), 0),
        ("on", Backend::new("on"), 1),
        ("off2", Backend::new("off2"), 0),
    ]));
    assert_eq!(answers(&mut balance, 5).await, ["on"; 5]);
    // Same with the random strategies.
    let mut balance = Balance::builder()
        .strategy(LeastRequest::new().with_seed(3))
        .classify(ErrorsAsFailures)
        .build(discover::static_list([
            ("off", Backend::new("off"), 0),
            ("on1", Backend::new("on1"), 1),
            ("on2", Backend::new("on2"), 1),
        ]))
        .unwrap();
    let got = answers(&mut balance, 200).await;
    assert!(!got.contains(&"off"));
    let mut balance = Balance::builder()
        .strategy(Random::with_seed(3))
        .classify(ErrorsAsFailures)
        .build(discover::static_list([
            ("off", Backend::new("off"), 0),
            ("on1", Backend::new("on1"), 1),
        ]))
        .unwrap();
    assert_eq!(answers(&mut balance, 50).await, ["on1"; 50]);
}

#[tokio::test(start_paused = true)]
async fn all_zero_weights_fail_with_all_zero_weight() {
    let mut balance = rr(discover::static_list([
        ("a", Backend::new("a"), 0),
        ("b", Backend::new("b"), 0),
    ]));
    let err = balance.ready().await.unwrap_err();
    let err = err.downcast_ref::<Unavailable>().expect("Unavailable");
    assert_eq!(err.reason(), UnavailableReason::AllZeroWeight);
    assert_eq!(err.endpoints(), 2);
    assert_eq!(err.waited(), Duration::from_millis(100));
}

#[tokio::test]
async fn raising_a_zero_weight_makes_the_endpoint_eligible() {
    let (tx, rx) = discover::channel();
    tx.insert("a", Backend::new("a")).unwrap();
    tx.insert_with("b", Backend::new("b"), 0, Metadata::default())
        .unwrap();
    let mut balance = rr(rx);
    assert_eq!(answers(&mut balance, 2).await, ["a", "a"]);
    tx.insert("b", Backend::new("b")).unwrap();
    settle().await;
    assert_eq!(stats_of(&balance, &"b").state, EndpointState::Active);
    let got = answers(&mut balance, 4).await;
    assert_eq!(got.iter().filter(|a| **a == "b").count(), 2, "{got:?}");
}

async fn huge_weights<P: Strategy>(strategy: P) -> HashMap<&'static str, usize> {
    let mut balance = Balance::builder()
        .strategy(strategy)
        .classify(ErrorsAsFailures)
        .build(discover::static_list([
            ("max1", Backend::new("max1"), u32::MAX),
            ("one", Backend::new("one"), 1),
            ("max2", Backend::new("max2"), u32::MAX),
            ("half", Backend::new("half"), u32::MAX / 2),
        ]))
        .unwrap();
    let got = answers(&mut balance, 2_000).await;
    assert_eq!(
        weights(&balance),
        [
            ("max1", u64::from(u32::MAX)),
            ("one", 1),
            ("max2", u64::from(u32::MAX)),
            ("half", u64::from(u32::MAX / 2)),
        ]
    );
    assert_eq!(
        balance.endpoints().iter().map(|e| e.completed).sum::<u64>(),
        2_000
    );
    common_counts(&got)
}

#[tokio::test]
async fn weight_u32_max_works_with_every_strategy() {
    // Round robin: scaled to a cycle of at most 65 536 picks, proportions kept (2 : 2 : 1).
    let c = huge_weights(RoundRobin::new()).await;
    assert!(c.get("one").copied().unwrap_or(0) <= 1, "{c:?}");
    let (m1, m2, h) = (c["max1"] as i64, c["max2"] as i64, c["half"] as i64);
    assert!(
        (m1 - 800).abs() <= 2 && (m2 - 800).abs() <= 2 && (h - 400).abs() <= 2,
        "{c:?}"
    );

    let c = huge_weights(Random::with_seed(17)).await;
    assert_eq!(c.get("one"), None, "{c:?}");
    assert!((c["max1"] as i64 - 800).abs() < 100, "{c:?}");
    assert!((c["half"] as i64 - 400).abs() < 100, "{c:?}");

    // Least request, idle endpoints: the heavier of the two choices wins.
    let c = huge_weights(LeastRequest::new().with_seed(17)).await;
    assert_eq!(c.get("one"), None, "{c:?}");
    let c = huge_weights(LeastRequest::new().full_scan().with_seed(17)).await;
    assert_eq!(c.get("one"), None, "{c:?}");
    assert_eq!(c.get("half"), None, "{c:?}");
    // Other biases compare in f64.
    let c = huge_weights(LeastRequest::new().bias(1.5).with_seed(17)).await;
    assert_eq!(c.get("one"), None, "{c:?}");
    let c = huge_weights(LeastRequest::new().bias(0.5).full_scan().with_seed(17)).await;
    assert_eq!(c.get("one"), None, "{c:?}");
    assert_eq!(c.get("half"), None, "{c:?}");

    // Peak-EWMA ignores weights; it must not panic either.
    let c = huge_weights(PeakEwma::new().with_seed(17)).await;
    assert_eq!(c.values().sum::<usize>(), 2_000);
}

#[tokio::test]
async fn weighted_least_request_with_huge_weights_and_load_does_not_overflow() {
    let gate = Gate::closed();
    let mut balance = Balance::builder()
        .strategy(LeastRequest::new().full_scan().with_seed(2))
        .classify(ErrorsAsFailures)
        .build(discover::static_list([
            ("max", Backend::new("max").gate(&gate), u32::MAX),
            ("half", Backend::new("half").gate(&gate), u32::MAX / 2 + 1),
        ]))
        .unwrap();
    let held = common::hold(&mut balance, 30).await;
    // Scores w / (in + 1) with w_max ≈ 2 w_half: a 2 : 1 split.
    let split = stat(&balance, |e| e.in_flight);
    assert_eq!(split, [("max", 20), ("half", 10)]);
    gate.open();
    futures::future::join_all(held).await;
}

// ---------------------------------------------------------------------------------------
// The background driver's lifetime
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_driver_stops_when_the_last_handle_is_dropped() {
    let gate = Gate::closed();
    let (tx, rx) = discover::channel();
    tx.insert("a", Backend::new("a").gate(&gate)).unwrap();
    let mut balance = rr(rx);
    let clone = balance.clone();
    let in_flight = balance.ready().await.unwrap().call(());

    settle().await;
    assert!(!tx.is_closed());
    drop(balance);
    settle().await;
    assert!(!tx.is_closed(), "a clone is still alive");
    drop(clone);
    settle().await;
    assert!(tx.is_closed(), "the driver must stop with the last handle");
    assert!(tx.insert("b", Backend::new("b")).is_err());

    // A response future outlives the balancer and still completes.
    gate.open();
    assert_eq!(in_flight.await.unwrap(), "a");
}

#[test]
fn built_outside_a_runtime_the_driver_starts_at_the_first_poll_ready_inside_one() {
    let (tx, rx) = discover::channel();
    tx.insert("a", Backend::new("a")).unwrap();
    let mut balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build(rx)
        .expect("building outside a runtime is fine");
    // Outside a runtime the source is not polled at all (it might need timers or I/O).
    assert!(
        keys(&balance).is_empty(),
        "no source is polled outside a runtime"
    );

    let err = futures::executor::block_on(balance.ready()).unwrap_err();
    assert_eq!(
        err.downcast_ref::<tower_lb::error::NoRuntime>(),
        Some(&tower_lb::error::NoRuntime)
    );

    runtime().block_on(async {
        assert_eq!(send(&mut balance).await.unwrap(), "a");
        tx.insert("b", Backend::new("b")).unwrap();
        settle().await;
        assert_eq!(keys(&balance), ["a", "b"], "the driver runs now");
    });
}

#[test]
fn a_balancer_whose_runtime_shut_down_fails_saying_so() {
    // Built (and its driver spawned) in one runtime, which then shuts down, as a
    // `#[tokio::test]` runtime does at the end of its test.
    let first = runtime();
    let (tx, rx) = discover::channel();
    tx.insert("a", Backend::new("a")).unwrap();
    let mut balance = first.block_on(async { rr(rx) });
    first.block_on(async { assert_eq!(send(&mut balance).await.unwrap(), "a") });
    drop(first);

    // Used from another runtime: nothing would apply changes or end ejections any more, so
    // every poll_ready fails, with an error that says why.
    let second = runtime();
    second.block_on(async {
        for _ in 0..2 {
            let err = balance.ready().await.unwrap_err();
            assert!(err.is::<DriverStopped>(), "{err}");
            assert!(err.to_string().contains("runtime it was built in"), "{err}");
        }
    });
}

#[test]
fn a_handle_waiting_when_its_runtime_shuts_down_is_told_at_once() {
    let first = runtime();
    let (_tx, rx) = discover::channel::<&str, Backend>();
    let mut balance = first.block_on(async { rr_failing_after(Duration::from_secs(3_600), rx) });
    // Another thread's runtime waits for an endpoint (for up to an hour) ...
    let (waiting_tx, waiting_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        runtime().block_on(async {
            let mut ready = std::pin::pin!(balance.ready());
            assert!(futures::poll!(ready.as_mut()).is_pending());
            waiting_tx.send(()).unwrap();
            let err = ready.await.unwrap_err();
            assert!(err.is::<DriverStopped>(), "{err}");
        });
    });
    waiting_rx.recv().unwrap();
    // ... when the balancer's own runtime shuts down: it is woken and told.
    drop(first);
    waiter.join().unwrap();
}

#[test]
fn invalid_configurations_are_rejected() {
    let list = || discover::static_list([("a", Backend::new("a"))]);
    let invalid = |r: Result<_, BuildError>| match r {
        Err(BuildError::InvalidConfig(_)) => {}
        Err(e) => panic!("wrong error {e:?}"),
        Ok(_) => panic!("accepted"),
    };
    invalid(
        Balance::builder()
            .strategy(LeastRequest::new().choices(0))
            .classify(ErrorsAsFailures)
            .build(list())
            .map(drop),
    );
    for bias in [-1.0, f64::NAN, f64::INFINITY] {
        invalid(
            Balance::builder()
                .strategy(LeastRequest::new().bias(bias))
                .classify(ErrorsAsFailures)
                .build(list())
                .map(drop),
        );
    }
    invalid(
        Balance::builder()
            .strategy(PeakEwma::new().decay(Duration::ZERO))
            .classify(ErrorsAsFailures)
            .build(list())
            .map(drop),
    );
    invalid(
        Balance::builder()
            .strategy(RoundRobin::new())
            .classify(ErrorsAsFailures)
            .track_latency(tower_lb::strategy::LatencyTracking {
                decay: Duration::ZERO,
                failure_penalty: Duration::ZERO,
            })
            .build(list())
            .map(drop),
    );
    invalid(
        Balance::builder()
            .strategy(LeastRequest::new().choices(0))
            .classify(ErrorsAsFailures)
            .into_layer::<&str, _>(discover::static_list([("a", ())]))
            .map(drop),
    );
    // Valid edge values.
    assert!(Balance::builder()
        .strategy(LeastRequest::new().choices(1).bias(0.0))
        .classify(ErrorsAsFailures)
        .build(list())
        .is_ok());
}

/// The documented `Snapshots` pattern: the first call answers at once, later calls wait for a
/// timer before listing again.
struct Periodic {
    first: bool,
}

impl Snapshots<&'static str, Backend> for Periodic {
    type Error = Infallible;

    async fn snapshot(&mut self) -> Result<Vec<Endpoint<&'static str, Backend>>, Infallible> {
        if !std::mem::take(&mut self.first) {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        Ok(vec![Endpoint::new("a", Backend::new("a"))])
    }
}

#[test]
fn building_outside_a_runtime_with_a_timer_based_snapshot_source() {
    // Building outside a runtime is documented to work (the driver starts at the first
    // poll_ready). build() must therefore not drive a source into code that needs a runtime.
    let built = std::panic::catch_unwind(|| {
        Balance::builder()
            .strategy(RoundRobin::new())
            .classify(ErrorsAsFailures)
            .build(discover::from_snapshots(Periodic { first: true }))
            .map(drop)
    });
    let built = built.unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!("Builder::build panicked outside a runtime: {msg}")
    });
    assert!(built.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_timer_based_snapshot_source_inside_a_runtime() {
    let mut balance = rr(discover::from_snapshots(Periodic { first: true }));
    assert_eq!(keys(&balance), ["a"]);
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(keys(&balance), ["a"]);
    assert_eq!(answers(&mut balance, 2).await, ["a", "a"]);
    assert_eq!(balance.discovery_stats().errors, 0);
}

#[tokio::test]
async fn a_monitor_reports_without_keeping_the_balancer_alive() {
    let (tx, rx) = discover::channel();
    tx.insert("a", Backend::new("a")).unwrap();
    let mut balance = rr(rx);
    let monitor = balance.monitor();
    let monitor2 = monitor.clone();
    answers(&mut balance, 3).await;
    tx.remove("zz").unwrap();
    settle().await;
    assert!(monitor.is_alive());
    assert_eq!(monitor.endpoints(), balance.endpoints());
    assert_eq!(monitor.endpoints()[0].completed, 3);
    assert_eq!(monitor2.discovery_stats(), balance.discovery_stats());
    assert_eq!(monitor2.health_stats(), balance.health_stats());

    drop(balance);
    settle().await;
    assert!(!monitor.is_alive());
    assert!(monitor.endpoints().is_empty());
    // Once the balancer is gone: an empty balancer's figures, and an ended event stream.
    assert_eq!(monitor2.discovery_stats(), Default::default());
    assert_eq!(monitor2.health_stats(), Default::default());
    assert!(monitor2.health_events().recv().await.is_none());
    assert!(
        tx.is_closed(),
        "the monitor must not keep the driver running"
    );
}

#[tokio::test(start_paused = true)]
async fn a_source_that_keeps_failing_is_polled_with_backoff_and_recovery_is_seen() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let polls = Arc::new(AtomicUsize::new(0));
    let healthy = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicBool::new(false));
    let source = {
        let (polls, healthy, sent) = (polls.clone(), healthy.clone(), sent.clone());
        futures::stream::poll_fn(move |_cx| {
            polls.fetch_add(1, Ordering::Relaxed);
            if !healthy.load(Ordering::Relaxed) {
                return std::task::Poll::Ready(Some(Err::<Change<&str, Backend>, _>(
                    BoxError::from("registry unreachable"),
                )));
            }
            if sent.swap(true, Ordering::Relaxed) {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(Some(Ok(Change::insert("a", Backend::new("a")))))
            }
        })
    };
    let balance = rr(source);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // 10 ms, 20 ms, 40 ms, ... between polls: about 7 in the first second, not millions.
    let in_a_second = polls.load(Ordering::Relaxed);
    assert!(
        (5..=10).contains(&in_a_second),
        "{in_a_second} polls in one second"
    );
    assert_eq!(balance.discovery_stats().errors as usize, in_a_second);
    assert!(keys(&balance).is_empty());

    // The backoff is capped at 2 s, so a recovery shows within that.
    healthy.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(keys(&balance), ["a"]);
}

/// The keys a `build_with` balancer made a service for, in order.
type Made = std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>;

/// A round-robin balancer built with `build_with` over a channel of keys, recording each
/// service it makes.
fn making(allow_empty_reset: bool) -> (Rr, discover::Sender<&'static str, ()>, Made) {
    let made = Made::default();
    let (tx, rx) = discover::channel::<&'static str, ()>();
    let balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .allow_empty_reset(allow_empty_reset)
        .build_with(rx, {
            let made = made.clone();
            move |key: &&'static str| {
                made.lock().unwrap().push(*key);
                Backend::new(key)
            }
        })
        .unwrap();
    (balance, tx, made)
}

#[tokio::test]
async fn build_with_makes_each_service_once_and_keeps_it_across_reweights_and_resets() {
    let (mut balance, tx, made) = making(false);
    tx.insert("a", ()).unwrap();
    tx.insert("b", ()).unwrap();
    settle().await;
    // A reweight, and a reset that lists known keys plus a new one: only "c" is made.
    tx.insert_with("a", (), 5, Metadata::default()).unwrap();
    tx.reset(vec![
        Endpoint::new("a", ()),
        Endpoint::new("b", ()),
        Endpoint::new("c", ()),
    ])
    .unwrap();
    settle().await;
    assert_eq!(keys(&balance), ["a", "b", "c"]);
    assert_eq!(*made.lock().unwrap(), ["a", "b", "c"]);
    // A removed key that comes back gets a new service.
    tx.remove("b").unwrap();
    tx.insert("b", ()).unwrap();
    settle().await;
    assert_eq!(*made.lock().unwrap(), ["a", "b", "c", "b"]);
    assert_eq!(answers(&mut balance, 3).await.len(), 3);
}

#[tokio::test]
async fn build_with_keeps_its_services_across_an_ignored_empty_reset() {
    let (mut balance, tx, made) = making(false);
    tx.insert("a", ()).unwrap();
    tx.insert("b", ()).unwrap();
    settle().await;
    // The empty reset is ignored (the default), so the endpoints and their services stay:
    // the next reset of the same keys makes nothing new.
    tx.reset(Vec::new()).unwrap();
    settle().await;
    assert_eq!(balance.discovery_stats().empty_resets_ignored, 1);
    tx.reset(vec![Endpoint::new("a", ()), Endpoint::new("b", ())])
        .unwrap();
    settle().await;
    assert_eq!(keys(&balance), ["a", "b"]);
    assert_eq!(*made.lock().unwrap(), ["a", "b"]);
    assert_eq!(answers(&mut balance, 2).await.len(), 2);

    // With empty resets honoured, the services go with their endpoints.
    let (balance, tx, made) = making(true);
    tx.insert("a", ()).unwrap();
    tx.reset(Vec::new()).unwrap();
    tx.insert("a", ()).unwrap();
    settle().await;
    assert_eq!(keys(&balance), ["a"]);
    assert_eq!(*made.lock().unwrap(), ["a", "a"]);
}

/// Round robin whose table build panics when it sees exactly three endpoints: every time,
/// or only the first time.
struct PanicsOnThree {
    inner: RoundRobin,
    once: bool,
    panicked: std::sync::atomic::AtomicBool,
}

impl PanicsOnThree {
    fn new(once: bool) -> Self {
        PanicsOnThree {
            inner: RoundRobin::new(),
            once,
            panicked: Default::default(),
        }
    }
}

impl Strategy for PanicsOnThree {
    type Table = <RoundRobin as Strategy>::Table;

    fn build(&self, endpoints: &tower_lb::strategy::Endpoints<'_>) -> Self::Table {
        if endpoints.len() == 3 {
            let again = self
                .panicked
                .swap(true, std::sync::atomic::Ordering::SeqCst);
            assert!(self.once && again, "a bug in a user's strategy");
        }
        self.inner.build(endpoints)
    }

    fn pick(
        &self,
        table: &Self::Table,
        endpoints: &tower_lb::strategy::Endpoints<'_>,
        cx: &tower_lb::strategy::Context,
    ) -> usize {
        self.inner.pick(table, endpoints, cx)
    }
}

#[tokio::test(start_paused = true)]
async fn a_strategy_that_panics_in_build_keeps_the_last_set_and_the_driver_alive() {
    let (tx, rx) = discover::channel();
    tx.insert("a", Backend::new("a")).unwrap();
    tx.insert("b", Backend::new("b")).unwrap();
    let mut balance = Balance::builder()
        .strategy(PanicsOnThree::new(false))
        .classify(ErrorsAsFailures)
        .build(rx)
        .unwrap();
    assert_eq!(keys(&balance), ["a", "b"]);
    tx.insert("c", Backend::new("c")).unwrap();
    settle().await;
    // The build for a, b, c panicked: the last set stays and serves, and it shows.
    assert_eq!(keys(&balance), ["a", "b"]);
    let stats = balance.discovery_stats();
    assert_eq!(stats.errors, 1);
    assert!(stats.last_error.unwrap().contains("panicked"));
    assert_eq!(answers(&mut balance, 2).await, ["a", "b"]);
    // The driver is alive: the next change applies.
    tx.remove("b").unwrap();
    settle().await;
    assert_eq!(keys(&balance), ["a", "c"]);
}

#[tokio::test(start_paused = true)]
async fn a_publish_that_failed_on_a_panicking_build_is_retried() {
    let (tx, rx) = discover::channel();
    tx.insert("a", Backend::new("a")).unwrap();
    tx.insert("b", Backend::new("b")).unwrap();
    let balance = Balance::builder()
        .strategy(PanicsOnThree::new(true))
        .classify(ErrorsAsFailures)
        .build(rx)
        .unwrap();
    tx.insert("c", Backend::new("c")).unwrap();
    settle().await;
    assert_eq!(keys(&balance), ["a", "b"]);
    let stats = balance.discovery_stats();
    assert_eq!(stats.errors, 1);
    assert!(stats.last_error.unwrap().contains("panicked"));
    // No further change comes, yet the set with "c" is published when the build is retried.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(keys(&balance), ["a", "b", "c"]);
    assert_eq!(balance.discovery_stats().errors, 1);
}

#[tokio::test]
async fn a_discovery_source_that_panics_ends_and_keeps_the_set() {
    let mut sent = false;
    let source = futures::stream::poll_fn(move |_cx| {
        if std::mem::replace(&mut sent, true) {
            panic!("a bug in a user's discovery source");
        }
        std::task::Poll::Ready(Some(Ok::<_, Infallible>(Change::insert(
            "a",
            Backend::new("a"),
        ))))
    });
    let mut balance = rr(source);
    settle().await;
    assert_eq!(keys(&balance), ["a"]);
    let stats = balance.discovery_stats();
    assert!(stats.ended);
    assert!(stats.last_error.unwrap().contains("panicked"));
    assert_eq!(answers(&mut balance, 1).await, ["a"]);
}
