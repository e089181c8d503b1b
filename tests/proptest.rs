//! Random sequences of discovery changes, applied through a `discover::channel` and
//! interleaved with requests, against a model of the documented semantics:
//!
//! - insert of a new key appends it; insert of a known key updates weight and service in place;
//! - remove deletes the key (unknown keys are ignored);
//! - reset replaces the set, a duplicated key keeping its first position and last value;
//! - an empty reset is ignored unless `allow_empty_reset(true)`;
//! - only endpoints with weight > 0 receive requests.
//!
//! And random `grpc-status` values and content types against the classifier: no input
//! panics, and only the sixteen canonical codes read as anything but `UNKNOWN`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Ready;
use std::task::{Context, Poll};
use std::time::Duration;

use proptest::prelude::*;
use tower::{Service, ServiceExt};
use tower_lb::classify::{Classify, DefaultClassifier, GrpcCode, GrpcCodes, Outcome};
use tower_lb::discover::{self, Change};
use tower_lb::error::{Unavailable, UnavailableReason};
use tower_lb::strategy::{LeastRequest, PeakEwma, Random, RoundRobin, Strategy as LbStrategy};
use tower_lb::{Balance, Endpoint};

/// Answers with its key and a tag that identifies this particular service instance.
#[derive(Clone, Debug)]
struct Tagged {
    key: u8,
    tag: u32,
}

impl Service<()> for Tagged {
    type Response = (u8, u32);
    type Error = Infallible;
    type Future = Ready<Result<(u8, u32), Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        std::future::ready(Ok((self.key, self.tag)))
    }
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, u32),
    Remove(u8),
    Reset(Vec<(u8, u32)>),
    Picks(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, 0u32..=5).prop_map(|(k, w)| Op::Insert(k, w)),
        2 => (0u8..7).prop_map(Op::Remove),
        2 => prop::collection::vec((0u8..6, 0u32..=5), 0..7).prop_map(Op::Reset),
        3 => (1usize..8).prop_map(Op::Picks),
    ]
}

/// The documented semantics, on a plain vector in discovery order: (key, weight, tag).
#[derive(Default)]
struct Model {
    endpoints: Vec<(u8, u32, u32)>,
    allow_empty_reset: bool,
}

impl Model {
    fn insert(&mut self, key: u8, weight: u32, tag: u32) {
        match self.endpoints.iter_mut().find(|e| e.0 == key) {
            Some(e) => {
                e.1 = weight;
                e.2 = tag;
            }
            None => self.endpoints.push((key, weight, tag)),
        }
    }

    fn remove(&mut self, key: u8) {
        self.endpoints.retain(|e| e.0 != key);
    }

    fn reset(&mut self, list: &[(u8, u32, u32)]) {
        if list.is_empty() && !self.allow_empty_reset {
            return;
        }
        let mut next: Vec<(u8, u32, u32)> = Vec::new();
        for &(k, w, t) in list {
            match next.iter_mut().find(|e| e.0 == k) {
                Some(e) => {
                    e.1 = w;
                    e.2 = t;
                }
                None => next.push((k, w, t)),
            }
        }
        self.endpoints = next;
    }

    fn eligible(&self) -> HashMap<u8, (u32, u32)> {
        self.endpoints
            .iter()
            .filter(|e| e.1 > 0)
            .map(|&(k, w, t)| (k, (w, t)))
            .collect()
    }
}

type Answer = Result<(u8, u32), tower_lb::error::BoxError>;

async fn pick<P: LbStrategy>(
    balance: &mut Balance<u8, Tagged, P, tower_lb::classify::ErrorsAsFailures>,
) -> Answer {
    balance.ready().await?.call(()).await
}

async fn run<P: LbStrategy>(strategy: P, allow_empty_reset: bool, ops: Vec<Op>, exact_rr: bool) {
    let (tx, rx) = discover::channel();
    let mut balance = Balance::builder()
        .strategy(strategy)
        .classify(tower_lb::classify::ErrorsAsFailures)
        .allow_empty_reset(allow_empty_reset)
        .fail_fast(Duration::ZERO)
        .build(rx)
        .unwrap();
    let mut model = Model {
        allow_empty_reset,
        ..Model::default()
    };
    let mut sent = 0u64;
    let mut next_tag = 0u32;
    let mut tag = || {
        next_tag += 1;
        next_tag
    };

    for (step, op) in ops.into_iter().enumerate() {
        let change = match op {
            Op::Insert(k, w) => {
                let t = tag();
                model.insert(k, w, t);
                Some(Change::insert_with(
                    k,
                    Tagged { key: k, tag: t },
                    w,
                    Default::default(),
                ))
            }
            Op::Remove(k) => {
                model.remove(k);
                Some(Change::Remove(k))
            }
            Op::Reset(list) => {
                let list: Vec<(u8, u32, u32)> =
                    list.into_iter().map(|(k, w)| (k, w, tag())).collect();
                model.reset(&list);
                Some(Change::Reset(
                    list.into_iter()
                        .map(|(k, w, t)| Endpoint::new(k, Tagged { key: k, tag: t }).with_weight(w))
                        .collect(),
                ))
            }
            Op::Picks(n) => {
                let eligible = model.eligible();
                for _ in 0..n {
                    let answer = pick(&mut balance).await;
                    check(step, &model, &eligible, answer);
                }
                None
            }
        };
        let Some(change) = change else { continue };
        tx.send(change).unwrap();
        sent += 1;
        // Wait until the driver has taken the change.
        let mut spins = 0;
        while balance.discovery_stats().changes < sent {
            spins += 1;
            assert!(
                spins < 10_000,
                "step {step}: the driver did not apply the change"
            );
            tokio::task::yield_now().await;
        }
        let got: Vec<(u8, u32)> = balance
            .endpoints()
            .iter()
            .map(|e| (e.key, e.weight))
            .collect();
        let want: Vec<(u8, u32)> = model.endpoints.iter().map(|e| (e.0, e.1)).collect();
        assert_eq!(got, want, "step {step}: endpoints differ from the model");

        // One pick after every change; with round robin, a full window of picks.
        let eligible = model.eligible();
        let total: u32 = eligible.values().map(|v| v.0).sum();
        let window = if exact_rr && total > 0 {
            total as usize
        } else {
            1
        };
        let mut counts: HashMap<u8, u32> = HashMap::new();
        for _ in 0..window {
            let answer = pick(&mut balance).await;
            if let Ok((k, _)) = answer {
                *counts.entry(k).or_default() += 1;
            }
            check(step, &model, &eligible, answer);
        }
        if exact_rr && total > 0 {
            // Any `total` consecutive picks hold each endpoint exactly `weight` times.
            let want: HashMap<u8, u32> = eligible.iter().map(|(k, v)| (*k, v.0)).collect();
            assert_eq!(counts, want, "step {step}: round robin window");
        }
    }
}

fn check(step: usize, model: &Model, eligible: &HashMap<u8, (u32, u32)>, answer: Answer) {
    match answer {
        Ok((key, tag)) => {
            let current = eligible.get(&key);
            assert!(
                current.is_some(),
                "step {step}: {key} answered but the eligible set is {eligible:?}"
            );
            assert_eq!(
                current.unwrap().1,
                tag,
                "step {step}: {key} answered with an old service"
            );
        }
        Err(err) => {
            assert!(
                eligible.is_empty(),
                "step {step}: {err} with eligible {eligible:?}"
            );
            let u = err
                .downcast_ref::<Unavailable>()
                .unwrap_or_else(|| panic!("step {step}: unexpected error {err}"));
            let expected = if model.endpoints.is_empty() {
                UnavailableReason::NoEndpoints
            } else {
                UnavailableReason::AllZeroWeight
            };
            assert_eq!(u.reason(), expected, "step {step}");
            assert_eq!(u.endpoints(), model.endpoints.len(), "step {step}");
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    })]

    #[test]
    fn picks_follow_the_modelled_endpoint_set(
        strategy in 0usize..4,
        allow_empty_reset in any::<bool>(),
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let rt = runtime();
        match strategy {
            0 => rt.block_on(run(RoundRobin::new(), allow_empty_reset, ops, true)),
            1 => rt.block_on(run(Random::with_seed(seed), allow_empty_reset, ops, false)),
            2 => rt.block_on(run(LeastRequest::new().with_seed(seed), allow_empty_reset, ops, false)),
            _ => rt.block_on(run(PeakEwma::new().with_seed(seed), allow_empty_reset, ops, false)),
        }
    }
}

/// The model of `grpc-status`: the decimal forms of 0 to 16, nothing else.
fn modelled_code(value: &[u8]) -> GrpcCode {
    (0..=16)
        .find(|n: &i32| n.to_string().as_bytes() == value)
        .and_then(GrpcCode::from_i32)
        .unwrap_or(GrpcCode::Unknown)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2048,
        ..ProptestConfig::default()
    })]

    #[test]
    fn grpc_status_values_never_panic_and_only_canonical_codes_count(
        value in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..6),
            prop::collection::vec(prop::sample::select(b"0123456789+- ".to_vec()), 0..4),
        ],
        content_type in prop::collection::vec(any::<u8>(), 0..24),
        grpc_content in any::<bool>(),
        status in 100u16..600,
    ) {
        let code = GrpcCode::from_bytes(&value);
        prop_assert_eq!(code, modelled_code(&value));

        // Through a whole response: whatever the head holds, the classifier answers.
        let mut response = http::Response::builder().status(status);
        let content_type = if grpc_content {
            let mut grpc = b"application/grpc".to_vec();
            grpc.extend_from_slice(&content_type);
            grpc
        } else {
            content_type
        };
        if let Ok(v) = http::HeaderValue::from_bytes(&content_type) {
            response = response.header("content-type", v);
        }
        let status_sent = http::HeaderValue::from_bytes(&value).ok();
        if let Some(v) = status_sent.clone() {
            response = response.header("grpc-status", v);
        }
        let result: Result<_, ()> = Ok(response.body(()).unwrap());
        let outcome = DefaultClassifier.classify(&result);
        let grpc = status == 200 && tower_lb::classify::is_grpc(result.as_ref().unwrap().headers());
        let expected = match (grpc, status_sent) {
            (false, _) => tower_lb::classify::status_outcome(http::StatusCode::from_u16(status).unwrap()),
            (true, None) => Outcome::Trailers(GrpcCodes::DEFAULT_FAILURES),
            (true, Some(_)) if GrpcCodes::DEFAULT_FAILURES.contains(code) => Outcome::Failure,
            (true, Some(_)) => Outcome::Success,
        };
        prop_assert_eq!(outcome, expected);
    }
}
