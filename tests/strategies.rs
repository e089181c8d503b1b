//! Every built-in strategy, driven through a real `Balance`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{picks, send, settle, stats_of, Backend, CallLog, Gate, Http};
use tower::{Service, ServiceExt};
use tower_lb::classify::ErrorsAsFailures;
use tower_lb::discover;
use tower_lb::strategy::{LatencyTracking, LeastRequest, PeakEwma, Random, RoundRobin};
use tower_lb::{Balance, Endpoint};

fn weighted(list: &[(&'static str, u32)]) -> discover::StaticList<&'static str, Backend> {
    discover::static_list(
        list.iter()
            .map(|&(name, w)| Endpoint::new(name, Backend::new(name)).with_weight(w))
            .collect::<Vec<_>>(),
    )
}

/// Sends `n` sequential requests and returns who answered, in order.
async fn answers<B>(balance: &mut B, n: usize) -> Vec<&'static str>
where
    B: Service<(), Response = &'static str, Error = tower_lb::error::BoxError>,
{
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(send(balance).await.unwrap());
    }
    out
}

fn counts(answers: &[&'static str]) -> HashMap<&'static str, usize> {
    let mut m = HashMap::new();
    for a in answers {
        *m.entry(*a).or_default() += 1;
    }
    m
}

/// nginx's smooth weighted round robin, the O(n) reference scan.
fn nginx_order(weights: &[u64], picks: usize) -> Vec<usize> {
    let total: i128 = weights.iter().map(|&w| i128::from(w)).sum();
    let mut current = vec![0i128; weights.len()];
    (0..picks)
        .map(|_| {
            let mut best = 0;
            for i in 0..weights.len() {
                current[i] += i128::from(weights[i]);
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            best
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Round robin
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn round_robin_weights_5_1_1_follow_nginx_smooth_order() {
    let mut balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build(weighted(&[("a", 5), ("b", 1), ("c", 1)]))
        .unwrap();
    let got = answers(&mut balance, 21).await;
    let expected: Vec<&str> = "aabacaa"
        .repeat(3)
        .chars()
        .map(|c| match c {
            'a' => "a",
            'b' => "b",
            _ => "c",
        })
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn round_robin_equal_weights_rotate_in_discovery_order() {
    // Discovery order, not key order.
    let mut balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build(weighted(&[("c", 3), ("a", 3), ("b", 3)]))
        .unwrap();
    assert_eq!(
        answers(&mut balance, 7).await,
        ["c", "a", "b", "c", "a", "b", "c"]
    );
}

#[tokio::test]
async fn round_robin_matches_nginx_reference_on_assorted_weights() {
    let cases: &[&[u32]] = &[
        &[3, 1],
        &[1, 3],
        &[2, 2, 1],
        &[4, 3, 2, 1],
        &[1, 2, 3, 4, 5, 6, 7],
        &[7, 7, 3, 3, 3, 1],
        &[10, 1, 10, 1, 10],
        &[6, 4],
        &[100, 37, 1, 1, 64],
    ];
    const NAMES: [&str; 7] = ["e0", "e1", "e2", "e3", "e4", "e5", "e6"];
    for weights in cases {
        let list: Vec<_> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Endpoint::new(NAMES[i], Backend::new(NAMES[i])).with_weight(w))
            .collect();
        let mut balance = Balance::builder()
            .strategy(RoundRobin::new())
            .classify(ErrorsAsFailures)
            .build(discover::static_list(list))
            .unwrap();
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let picks = 2 * total as usize;
        let got = answers(&mut balance, picks).await;
        let w64: Vec<u64> = weights.iter().map(|&w| u64::from(w)).collect();
        let expected: Vec<&str> = nginx_order(&w64, picks)
            .into_iter()
            .map(|i| NAMES[i])
            .collect();
        assert_eq!(got, expected, "weights {weights:?}");
    }
}

#[tokio::test]
async fn round_robin_cursor_is_shared_by_clones() {
    let mut a = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build(weighted(&[("a", 1), ("b", 1), ("c", 1)]))
        .unwrap();
    let mut b = a.clone();
    let mut got = Vec::new();
    for i in 0..6 {
        let h = if i % 2 == 0 { &mut a } else { &mut b };
        got.push(send(h).await.unwrap());
    }
    assert_eq!(got, ["a", "b", "c", "a", "b", "c"]);
}

#[tokio::test]
async fn round_robin_follows_a_weight_update() {
    let (tx, rx) = discover::channel();
    tx.insert("a", Backend::new("a")).unwrap();
    tx.insert("b", Backend::new("b")).unwrap();
    let mut balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build(rx)
        .unwrap();
    let before = counts(&answers(&mut balance, 10).await);
    assert_eq!((before["a"], before["b"]), (5, 5));

    tx.insert_with("b", Backend::new("b"), 3, Default::default())
        .unwrap();
    settle().await;
    assert_eq!(stats_of(&balance, &"b").weight, 3);
    // Any 4 consecutive picks of a cycle of length 4 contain each endpoint `weight` times.
    for _ in 0..3 {
        let c = counts(&answers(&mut balance, 4).await);
        assert_eq!((c["a"], c["b"]), (1, 3));
    }
}

// ---------------------------------------------------------------------------------------
// Random
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn random_shares_follow_weights_1_2_3() {
    let mut balance = Balance::builder()
        .strategy(Random::with_seed(0x5eed))
        .classify(ErrorsAsFailures)
        .build(weighted(&[("a", 1), ("b", 2), ("c", 3)]))
        .unwrap();
    const N: usize = 60_000;
    let c = counts(&answers(&mut balance, N).await);
    // Expected 10 000, 20 000, 30 000; one standard deviation is about 120 picks, so
    // ±600 is five of them.
    for (name, expected) in [("a", 10_000), ("b", 20_000), ("c", 30_000)] {
        let got = c[name] as i64;
        assert!(
            (got - expected).abs() < 600,
            "{name}: {got} picks, expected about {expected} ({c:?})"
        );
    }
    // The balancer's own counters agree with what the backends saw.
    for e in balance.endpoints() {
        assert_eq!(e.completed as usize, c[e.key]);
        assert_eq!(e.in_flight, 0);
    }
}

#[tokio::test]
async fn random_equal_weights_are_uniform() {
    let mut balance = Balance::builder()
        .strategy(Random::with_seed(42))
        .classify(ErrorsAsFailures)
        .build(weighted(&[("a", 7), ("b", 7), ("c", 7), ("d", 7)]))
        .unwrap();
    let c = counts(&answers(&mut balance, 40_000).await);
    for name in ["a", "b", "c", "d"] {
        assert!(
            (c[name] as i64 - 10_000).abs() < 500,
            "{name}: {} ({c:?})",
            c[name]
        );
    }
}

#[tokio::test]
async fn random_with_the_same_seed_repeats_its_sequence() {
    let build = || {
        Balance::builder()
            .strategy(Random::with_seed(7))
            .classify(ErrorsAsFailures)
            .build(weighted(&[("a", 1), ("b", 2), ("c", 3)]))
            .unwrap()
    };
    let (mut x, mut y) = (build(), build());
    let first = answers(&mut x, 200).await;
    assert_eq!(first, answers(&mut y, 200).await);
    assert_eq!(counts(&first).len(), 3, "all endpoints appear: {first:?}");
}

// ---------------------------------------------------------------------------------------
// Least request
// ---------------------------------------------------------------------------------------

type Held = Vec<
    tower_lb::balance::ResponseFuture<
        common::Backend,
        (),
        ErrorsAsFailures,
        tower_lb::completion::OnResponse,
    >,
>;

/// Loads endpoint "busy" with `held` requests that do not complete, then adds the other
/// endpoints. Returns the balancer, the held response futures, the discovery sender and the
/// log of calls (empty at return). Every backend holds its responses, so use [`picks`].
async fn with_loaded_endpoint(
    strategy: LeastRequest,
    held: usize,
    others: &[&'static str],
) -> (
    Balance<&'static str, Backend, LeastRequest, ErrorsAsFailures>,
    Held,
    discover::Sender<&'static str, Backend>,
    CallLog,
) {
    let gate = Gate::closed();
    let log = CallLog::new();
    let (tx, rx) = discover::channel();
    tx.insert("busy", Backend::new("busy").gate(&gate).log(&log))
        .unwrap();
    let mut balance = Balance::builder()
        .strategy(strategy)
        .classify(ErrorsAsFailures)
        .build(rx)
        .unwrap();
    let mut futures = Vec::new();
    for _ in 0..held {
        futures.push(balance.ready().await.unwrap().call(()));
    }
    assert_eq!(stats_of(&balance, &"busy").in_flight, held as u64);
    for &name in others {
        tx.insert(name, Backend::new(name).gate(&gate).log(&log))
            .unwrap();
    }
    settle().await;
    assert_eq!(balance.endpoints().len(), 1 + others.len());
    log.take();
    (balance, futures, tx, log)
}

#[tokio::test]
async fn least_request_avoids_the_endpoint_with_requests_in_flight() {
    let (mut balance, held, _tx, log) =
        with_loaded_endpoint(LeastRequest::new().with_seed(11), 5, &["x", "y"]).await;
    let c = counts(&picks(&mut balance, &log, 1_000).await);
    // Any two distinct choices include an idle endpoint, which always beats the busy one.
    assert_eq!(c.get("busy"), None, "{c:?}");
    // Between the two idle ones, ties go to a random choice: roughly half each.
    assert!((c["x"] as i64 - 500).abs() < 100, "{c:?}");
    assert_eq!(c["x"] + c["y"], 1_000);
    assert_eq!(
        common::stat(&balance, |e| e.in_flight),
        [("busy", 5), ("x", 0), ("y", 0)]
    );
    drop(held);
    assert_eq!(stats_of(&balance, &"busy").in_flight, 0);
    assert_eq!(stats_of(&balance, &"busy").cancelled, 5);
}

#[tokio::test]
async fn least_request_two_choices_with_two_endpoints_always_takes_the_idler_one() {
    let (mut balance, _held, _tx, log) =
        with_loaded_endpoint(LeastRequest::new().with_seed(3), 1, &["idle"]).await;
    assert_eq!(picks(&mut balance, &log, 100).await, vec!["idle"; 100]);
}

#[tokio::test]
async fn least_request_full_scan_always_picks_a_minimum() {
    let gate = Gate::closed();
    let log = CallLog::new();
    let names = ["a", "b", "c", "d"];
    let mut balance = Balance::builder()
        .strategy(LeastRequest::new().full_scan().with_seed(5))
        .classify(ErrorsAsFailures)
        .build(discover::static_list(
            names.map(|n| (n, Backend::new(n).gate(&gate).log(&log))),
        ))
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..40 {
        let before: HashMap<_, _> = balance
            .endpoints()
            .into_iter()
            .map(|e| (e.key, e.in_flight))
            .collect();
        let min = *before.values().min().unwrap();
        held.push(balance.ready().await.unwrap().call(()));
        let picked = *log.snapshot().last().unwrap();
        assert_eq!(
            before[picked], min,
            "picked {picked} with in-flight counts {before:?}"
        );
    }
    for e in balance.endpoints() {
        assert_eq!(e.in_flight, 10, "{e:?}");
    }
    // Complete them all: counters return to zero and count completions.
    gate.open();
    for r in futures::future::join_all(held).await {
        r.unwrap();
    }
    for e in balance.endpoints() {
        assert_eq!((e.in_flight, e.completed, e.cancelled), (0, 10, 0), "{e:?}");
    }
}

#[tokio::test]
async fn weighted_least_request_maximises_weight_over_in_flight_plus_one() {
    let gate = Gate::closed();
    let log = CallLog::new();
    let mut balance = Balance::builder()
        .strategy(LeastRequest::new().full_scan().with_seed(21))
        .classify(ErrorsAsFailures)
        .build(discover::static_list([
            Endpoint::new("heavy", Backend::new("heavy").gate(&gate).log(&log)).with_weight(5),
            Endpoint::new("light", Backend::new("light").gate(&gate).log(&log)).with_weight(2),
        ]))
        .unwrap();
    let weight = |k: &str| if k == "heavy" { 5u64 } else { 2 };
    let mut held = Vec::new();
    for step in 0..35 {
        let before = common::stat(&balance, |e| e.in_flight);
        // score = weight / (in_flight + 1), compared exactly: w_a (in_b + 1) vs w_b (in_a + 1).
        let best: Vec<&str> = before
            .iter()
            .filter(|(k, l)| {
                before
                    .iter()
                    .all(|(k2, l2)| weight(k) * (l2 + 1) >= weight(k2) * (l + 1))
            })
            .map(|(k, _)| *k)
            .collect();
        held.push(balance.ready().await.unwrap().call(()));
        let picked = *log.snapshot().last().unwrap();
        assert!(
            best.contains(&picked),
            "step {step}: picked {picked}, best {best:?}, in flight {before:?}"
        );
    }
    // 35 requests split 5:2.
    assert_eq!(
        common::stat(&balance, |e| e.in_flight),
        [("heavy", 25), ("light", 10)]
    );
    gate.open();
    futures::future::join_all(held).await;
}

#[tokio::test]
async fn weighted_least_request_two_choices_with_idle_endpoints_prefers_heavier() {
    // All idle (sequential requests): the heavier of the two drawn always wins, so the
    // lightest of three endpoints is never chosen.
    let mut balance = Balance::builder()
        .strategy(LeastRequest::new().with_seed(1234))
        .classify(ErrorsAsFailures)
        .build(weighted(&[("w1", 1), ("w2", 2), ("w3", 3)]))
        .unwrap();
    let c = counts(&answers(&mut balance, 3_000).await);
    assert_eq!(c.get("w1"), None, "{c:?}");
    // w3 wins every pair it is in (2 of 3 pairs), w2 the pair (w1, w2).
    assert!((c["w3"] as i64 - 2_000).abs() < 150, "{c:?}");
    assert!((c["w2"] as i64 - 1_000).abs() < 150, "{c:?}");
}

#[tokio::test]
async fn least_request_bias_zero_ignores_load() {
    // The documented score is weight / (in_flight + 1)^bias: with bias 0 the load does not
    // count, so equal weights tie and a random one of the choices wins, loaded or not.
    let (mut balance, _held, _tx, log) = with_loaded_endpoint(
        LeastRequest::new().bias(0.0).full_scan().with_seed(77),
        3,
        &["idle"],
    )
    .await;
    let c = counts(&picks(&mut balance, &log, 1_000).await);
    let busy = c.get("busy").copied().unwrap_or(0) as i64;
    assert!(
        (busy - 500).abs() < 100,
        "bias 0 should ignore in-flight counts, but the loaded endpoint got {busy} of 1000 ({c:?})"
    );
}

#[tokio::test]
async fn least_request_bias_zero_with_unequal_weights_compares_weights_only() {
    let (tx, rx) = discover::channel();
    let gate = Gate::closed();
    tx.insert_with(
        "heavy",
        Backend::new("heavy").gate(&gate),
        3,
        Default::default(),
    )
    .unwrap();
    tx.insert_with(
        "light",
        Backend::new("light").gate(&gate),
        1,
        Default::default(),
    )
    .unwrap();
    let mut balance = Balance::builder()
        .strategy(LeastRequest::new().bias(0.0).full_scan().with_seed(4))
        .classify(ErrorsAsFailures)
        .build(rx)
        .unwrap();
    let held = common::hold(&mut balance, 20).await;
    // Load never counts: every request goes to the heavier endpoint.
    assert_eq!(
        common::stat(&balance, |e| e.in_flight),
        [("heavy", 20), ("light", 0)]
    );
    gate.open();
    futures::future::join_all(held).await;
}

// ---------------------------------------------------------------------------------------
// Peak-EWMA
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn peak_ewma_prefers_the_faster_endpoint() {
    let mut balance = Balance::builder()
        .strategy(PeakEwma::new().with_seed(99))
        .classify(ErrorsAsFailures)
        .build(discover::static_list([
            (
                "fast",
                Backend::new("fast").delay(Duration::from_millis(10)),
            ),
            (
                "slow",
                Backend::new("slow").delay(Duration::from_millis(100)),
            ),
        ]))
        .unwrap();
    let c = counts(&answers(&mut balance, 100).await);
    assert!(c["fast"] >= 98, "{c:?}");
    // Every sample of fast is 10 ms, so its estimate is 10 ms (up to rounding).
    let fast = stats_of(&balance, &"fast").latency.unwrap();
    assert!(
        fast.abs_diff(Duration::from_millis(10)) < Duration::from_micros(1),
        "{fast:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_cost_is_latency_times_in_flight_plus_one() {
    // slow: one 100 ms sample; fast: one 10 ms sample. Then requests are held on fast (its
    // gate closes) and never polled, so its in-flight count grows while the clock stands.
    // cost(fast) = 10 ms × (in_flight + 1) × decay, cost(slow) = 100 ms × decay.
    let fast_gate = Gate::opened();
    let log = CallLog::new();
    let (tx, rx) = discover::channel();
    let mut balance = Balance::builder()
        .strategy(PeakEwma::new().with_seed(5))
        .classify(ErrorsAsFailures)
        .build(rx)
        .unwrap();
    tx.insert(
        "slow",
        Backend::new("slow")
            .delay(Duration::from_millis(100))
            .log(&log),
    )
    .unwrap();
    settle().await;
    assert_eq!(send(&mut balance).await.unwrap(), "slow"); // t = 0 .. 100 ms
    tx.insert(
        "fast",
        Backend::new("fast")
            .delay(Duration::from_millis(10))
            .gate(&fast_gate)
            .log(&log),
    )
    .unwrap();
    settle().await;
    // fast has no sample: default 30 ms < 100 ms.
    assert_eq!(send(&mut balance).await.unwrap(), "fast"); // t = 100 .. 110 ms
    assert_eq!(
        stats_of(&balance, &"slow").latency,
        Some(Duration::from_millis(100))
    );
    assert_eq!(
        stats_of(&balance, &"fast").latency,
        Some(Duration::from_millis(10))
    );
    log.take();

    fast_gate.close();
    let held = common::hold(&mut balance, 12).await;
    // At t = 110 ms: fast's estimate is fresh (10 ms), slow's has decayed by exp(-10ms/10s):
    // 99.9 ms. fast wins while 10 × (k + 1) < 99.9, i.e. for k = 0..=8; the 10th goes to
    // slow, which then costs 199.8 ms, so fast takes the rest.
    let picks = log.take();
    let mut expected = vec!["fast"; 9];
    expected.push("slow");
    expected.extend(["fast"; 2]);
    assert_eq!(picks, expected);
    fast_gate.open();
    futures::future::join_all(held).await;
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_does_not_prefer_a_fast_failing_endpoint_http_503() {
    let mut balance = Balance::builder()
        .strategy(PeakEwma::new().with_seed(8))
        .build(discover::static_list([
            ("broken", Http(Backend::new("broken").status(503))),
            (
                "healthy",
                Http(Backend::new("healthy").delay(Duration::from_millis(50))),
            ),
        ]))
        .unwrap();
    let mut c: HashMap<&str, usize> = HashMap::new();
    for _ in 0..200 {
        let r = send(&mut balance).await.unwrap();
        *c.entry(*r.body()).or_default() += 1;
    }
    assert!(c.get("broken").copied().unwrap_or(0) <= 2, "{c:?}");
    let broken = stats_of(&balance, &"broken");
    assert_eq!(broken.failures, broken.completed);
    // The failure counts as at least the 1 s penalty.
    assert!(
        broken.latency.unwrap() >= Duration::from_secs(1),
        "{broken:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_does_not_prefer_a_fast_failing_endpoint_err() {
    let mut balance = Balance::builder()
        .strategy(PeakEwma::new().with_seed(8))
        .classify(ErrorsAsFailures)
        .build(discover::static_list([
            ("broken", Backend::new("broken").failing()),
            (
                "healthy",
                Backend::new("healthy").delay(Duration::from_millis(50)),
            ),
        ]))
        .unwrap();
    let mut ok = 0;
    for _ in 0..200 {
        if send(&mut balance).await.is_ok() {
            ok += 1;
        }
    }
    assert!(ok >= 198, "{ok} of 200 succeeded");
    assert!(stats_of(&balance, &"broken").completed <= 2);
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_without_failure_penalty_would_prefer_the_failing_endpoint() {
    // The contrast case: with no penalty an instant failure looks like the fastest
    // response, which is exactly what the default penalty prevents.
    let mut balance = Balance::builder()
        .strategy(PeakEwma::new().with_seed(8).failure_penalty(Duration::ZERO))
        .classify(ErrorsAsFailures)
        .outlier_detection(None)
        .build(discover::static_list([
            ("broken", Backend::new("broken").failing()),
            (
                "healthy",
                Backend::new("healthy").delay(Duration::from_millis(50)),
            ),
        ]))
        .unwrap();
    for _ in 0..200 {
        let _ = send(&mut balance).await;
    }
    assert!(stats_of(&balance, &"broken").completed >= 190);
}

#[tokio::test(start_paused = true)]
async fn latency_estimate_follows_peak_ewma_formula() {
    // Tracked for a non-latency strategy via track_latency; reported by endpoints().
    let decay = Duration::from_secs(10);
    let (tx, rx) = discover::channel();
    tx.insert("a", Backend::new("a").delay(Duration::from_millis(200)))
        .unwrap();
    let mut balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .track_latency(LatencyTracking {
            decay,
            failure_penalty: Duration::from_secs(1),
        })
        .build(rx)
        .unwrap();
    assert_eq!(stats_of(&balance, &"a").latency, None);
    send(&mut balance).await.unwrap(); // sample 200 ms at t = 200 ms
    assert_eq!(
        stats_of(&balance, &"a").latency,
        Some(Duration::from_millis(200))
    );

    // A higher sample replaces the estimate at once (the peak).
    tx.insert("a", Backend::new("a").delay(Duration::from_millis(300)))
        .unwrap();
    settle().await;
    send(&mut balance).await.unwrap(); // sample 300 ms at t = 500 ms
    assert_eq!(
        stats_of(&balance, &"a").latency,
        Some(Duration::from_millis(300))
    );

    // A lower sample is blended in with weight 1 - exp(-elapsed / decay).
    tokio::time::sleep(Duration::from_millis(4_900)).await; // t = 5.4 s
    tx.insert("a", Backend::new("a").delay(Duration::from_millis(100)))
        .unwrap();
    settle().await;
    send(&mut balance).await.unwrap(); // sample 100 ms at t = 5.5 s, 5 s after the last
    let w = (-5.0f64 / 10.0).exp();
    let expected = 0.3 * w + 0.1 * (1.0 - w);
    let got = stats_of(&balance, &"a").latency.unwrap().as_secs_f64();
    assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
}

#[tokio::test(start_paused = true)]
async fn latency_is_not_reported_without_tracking() {
    let mut balance = Balance::builder()
        .strategy(RoundRobin::new())
        .classify(ErrorsAsFailures)
        .build(discover::static_list([(
            "a",
            Backend::new("a").delay(Duration::from_millis(20)),
        )]))
        .unwrap();
    send(&mut balance).await.unwrap();
    assert_eq!(stats_of(&balance, &"a").latency, None);
}

// ---------------------------------------------------------------------------------------
// Custom strategies and the pick contract
// ---------------------------------------------------------------------------------------

/// Always returns an out-of-range index; the balancer must reduce it modulo the length.
struct OutOfRange(usize);

impl tower_lb::strategy::Strategy for OutOfRange {
    type Table = ();
    fn build(&self, _: &tower_lb::strategy::Endpoints<'_>) {}
    fn pick(
        &self,
        _: &(),
        _: &tower_lb::strategy::Endpoints<'_>,
        _: &tower_lb::strategy::Context,
    ) -> usize {
        self.0
    }
}

#[tokio::test]
async fn out_of_range_picks_are_reduced_modulo_the_length() {
    let mut balance = Balance::builder()
        .strategy(OutOfRange(7))
        .classify(ErrorsAsFailures)
        .build(weighted(&[("a", 1), ("b", 1), ("c", 1)]))
        .unwrap();
    assert_eq!(answers(&mut balance, 3).await, ["b", "b", "b"]);
    let mut balance = Balance::builder()
        .strategy(OutOfRange(usize::MAX))
        .classify(ErrorsAsFailures)
        .build(weighted(&[("a", 1), ("b", 1), ("c", 1)]))
        .unwrap();
    // usize::MAX % 3 == 0 on 64-bit targets.
    assert_eq!(
        answers(&mut balance, 2).await,
        vec![["a", "b", "c"][usize::MAX % 3]; 2]
    );
}

#[tokio::test]
async fn strategies_see_only_eligible_endpoints_in_discovery_order() {
    let mut balance = Balance::builder()
        .strategy(OutOfRange(1))
        .classify(ErrorsAsFailures)
        .build(weighted(&[("z", 0), ("a", 1), ("m", 0), ("b", 1)]))
        .unwrap();
    // Index 1 of the eligible endpoints [a, b].
    assert_eq!(answers(&mut balance, 2).await, ["b", "b"]);
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_unsampled_endpoints_are_free_while_idle_then_cost_default_rtt() {
    // known: one 100 ms sample. A newcomer without samples costs nothing while idle, so it
    // gets the next request whatever default_rtt is; with that request in flight it costs
    // default_rtt × 2, which beats 100 ms only if default_rtt < 50 ms.
    for (default_rtt, newcomer_again) in [
        (Duration::from_millis(30), true),
        (Duration::from_millis(500), false),
    ] {
        let gate = Gate::closed();
        let log = CallLog::new();
        let (tx, rx) = discover::channel();
        tx.insert(
            "known",
            Backend::new("known")
                .delay(Duration::from_millis(100))
                .log(&log),
        )
        .unwrap();
        let mut balance = Balance::builder()
            .strategy(PeakEwma::new().default_rtt(default_rtt).with_seed(1))
            .classify(ErrorsAsFailures)
            .build(rx)
            .unwrap();
        assert_eq!(send(&mut balance).await.unwrap(), "known");
        tx.insert("newcomer", Backend::new("newcomer").gate(&gate).log(&log))
            .unwrap();
        settle().await;
        log.take();
        let _first = balance.ready().await.unwrap().call(());
        let _second = balance.ready().await.unwrap().call(());
        let picks = log.take();
        assert_eq!(
            picks[0], "newcomer",
            "default_rtt {default_rtt:?}: {picks:?}"
        );
        assert_eq!(
            picks[1] == "newcomer",
            newcomer_again,
            "default_rtt {default_rtt:?}: {picks:?}"
        );
    }
}

#[tokio::test]
async fn least_request_with_one_choice_ignores_load() {
    let (mut balance, _held, _tx, log) =
        with_loaded_endpoint(LeastRequest::new().choices(1).with_seed(13), 4, &["idle"]).await;
    let c = counts(&picks(&mut balance, &log, 1_000).await);
    assert!((c["busy"] as i64 - 500).abs() < 100, "{c:?}");
}

#[test]
fn strategies_can_be_driven_outside_a_balancer() {
    use std::sync::Arc;
    use tower_lb::endpoint::Load;
    use tower_lb::strategy::{Context, EndpointList, Strategy};

    let load = Load::with_state(3, Some(Duration::from_millis(7)));
    assert_eq!(load.in_flight(), 3);
    assert_eq!(load.latency(), Some(Duration::from_millis(7)));
    assert_eq!(
        (load.completed(), load.cancelled(), load.failures()),
        (0, 0, 0)
    );

    // Full scan: always the minimum in-flight count.
    let mut list = EndpointList::default();
    for in_flight in [3, 0, 2] {
        list.push(1, Arc::new(Load::with_state(in_flight, None)));
    }
    let lr = LeastRequest::new().full_scan().with_seed(1);
    let table = lr.build(&list.endpoints());
    for _ in 0..50 {
        assert_eq!(lr.pick(&table, &list.endpoints(), &Context::default()), 1);
    }

    // Peak-EWMA: 10 ms × (10 + 1) = 110 ms against 100 ms × 1; both estimates were recorded
    // at time 0, so decaying them to any `now` keeps the order.
    let mut list = EndpointList::default();
    list.push(
        1,
        Arc::new(Load::with_state(10, Some(Duration::from_millis(10)))),
    );
    list.push(
        1,
        Arc::new(Load::with_state(0, Some(Duration::from_millis(100)))),
    );
    let p = PeakEwma::new().with_seed(2);
    p.build(&list.endpoints());
    for now in [0, 1_000_000_000, 5_000_000_000] {
        for _ in 0..20 {
            assert_eq!(p.pick(&(), &list.endpoints(), &Context::at_nanos(now)), 1);
        }
    }

    // Weighted random over a list built from weights.
    let list = EndpointList::from_weights([1, 3]);
    let r = Random::with_seed(9);
    let table = r.build(&list.endpoints());
    let ones = (0..4_000)
        .filter(|_| r.pick(&table, &list.endpoints(), &Context::default()) == 1)
        .count();
    assert!((ones as i64 - 3_000).abs() < 150, "{ones}");
}

#[tokio::test(start_paused = true)]
async fn latency_is_measured_from_the_call_not_from_readiness() {
    let mut balance = Balance::builder()
        .strategy(PeakEwma::new())
        .classify(ErrorsAsFailures)
        .build(discover::static_list([(
            "a",
            Backend::new("a").delay(Duration::from_millis(20)),
        )]))
        .unwrap();
    // Ready now, called half a second later: the endpoint took 20 ms, not 520 ms.
    balance.ready().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(balance.call(()).await.unwrap(), "a");
    assert_eq!(
        stats_of(&balance, &"a").latency,
        Some(Duration::from_millis(20))
    );
}

/// A strategy sees each endpoint's metadata as discovery gives it, in the snapshot it is
/// built for: a zone change rebuilds the table with the new zone.
#[tokio::test]
async fn a_strategy_sees_the_metadata_of_each_endpoint() {
    use std::sync::{Arc, Mutex};
    use tower_lb::strategy::{Context, Endpoints, Strategy};
    use tower_lb::Metadata;

    /// Picks the first endpoint of zone "local", and records the zones of every build.
    #[derive(Default)]
    struct Local(Arc<Mutex<Vec<Vec<Option<String>>>>>);
    impl Strategy for Local {
        type Table = usize;
        fn build(&self, endpoints: &Endpoints<'_>) -> usize {
            let zones = (0..endpoints.len())
                .map(|i| endpoints.metadata(i).zone.as_deref().map(str::to_owned));
            self.0.lock().unwrap().push(zones.collect());
            (0..endpoints.len())
                .find(|&i| endpoints.metadata(i).zone.as_deref() == Some("local"))
                .unwrap_or(0)
        }
        fn pick(&self, local: &usize, _: &Endpoints<'_>, _: &Context<'_>) -> usize {
            *local
        }
    }

    let builds = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = discover::channel();
    let zoned = |name: &'static str, zone: &str| {
        let metadata = Metadata::zone(zone).with_label("rack", "r1");
        Endpoint::new(name, Backend::new(name)).with_metadata(metadata)
    };
    tx.reset(vec![zoned("a", "remote"), zoned("b", "local")])
        .unwrap();
    let mut balance = Balance::builder()
        .strategy(Local(builds.clone()))
        .classify(ErrorsAsFailures)
        .build(rx)
        .unwrap();
    assert_eq!(answers(&mut balance, 3).await, ["b", "b", "b"]);

    // "a" moves to the local zone (and "b" away): the next build sees it.
    tx.send(discover::Change::Insert(zoned("a", "local")))
        .unwrap();
    tx.send(discover::Change::Insert(zoned("b", "remote")))
        .unwrap();
    common::eventually("the zones' change", async || {
        answers(&mut balance, 1).await == ["a"]
    })
    .await;
    let builds = builds.lock().unwrap();
    let zones = |z: [&str; 2]| z.map(|z| Some(z.to_owned())).to_vec();
    assert_eq!(builds.first(), Some(&zones(["remote", "local"])));
    assert_eq!(builds.last(), Some(&zones(["local", "remote"])));
}
