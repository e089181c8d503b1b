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
//!
//! And (feature `orca`) the ORCA load report parsers: no header value panics any of them,
//! whatever its bytes or prefix; every valid report reads back from every form; a report
//! that parses holds only finite, non-negative numbers.

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

#[cfg(feature = "orca")]
mod orca {
    use std::collections::BTreeMap;

    use http::{HeaderMap, HeaderValue};
    use proptest::prelude::*;
    use tower_lb::orca::{HeaderForm, LoadReport, OrcaError};

    /// Numbers a report may hold, and a few awkward ones (0, tiny, huge, integral).
    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            0.0..10.0f64,
            Just(0.0),
            Just(1e-300),
            Just(1e300),
            (0u32..100_000).prop_map(f64::from),
        ]
    }

    /// Metric names every form carries (TEXT cannot carry `,` `=` `:` or spaces).
    fn names() -> impl Strategy<Value = BTreeMap<String, f64>> {
        proptest::collection::btree_map("[a-zA-Z0-9_.\\-]{1,12}", value(), 0..4)
    }

    prop_compose! {
        fn report()(
            cpu in value(), mem in value(), app in value(), rps in any::<u64>(),
            qps in value(), eps in value(),
            named in names(), utilization in names(), cost in names(),
        ) -> LoadReport {
            LoadReport {
                cpu_utilization: cpu,
                mem_utilization: mem,
                application_utilization: app,
                rps,
                rps_fractional: qps,
                eps,
                named_metrics: named,
                utilization,
                request_cost: cost,
            }
        }
    }

    /// A header value of any bytes HTTP allows, with one of the prefixes or none.
    fn header_value() -> impl Strategy<Value = Vec<u8>> {
        let prefix = prop_oneof![
            Just(&b"TEXT "[..]),
            Just(&b"JSON "[..]),
            Just(&b"BIN "[..]),
            Just(&b""[..]),
        ];
        let body = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            "[a-z_.]{0,20}[=:][-+0-9.eEinfatyNI]{0,12}(, ?[a-z_.]{0,20}[=:][-0-9.e]{0,8}){0,4}"
                .prop_map(String::into_bytes),
            "[A-Za-z0-9+/=]{0,120}".prop_map(String::into_bytes),
            "\\{(\"[a-z_A-Z]{1,24}\": ?(-?[0-9.e]{1,8}|\"[A-Za-z0-9.-]{0,9}\"|null|true|\\{\\}|\\[\\]),? ?){0,4}\\}?"
                .prop_map(String::into_bytes),
        ];
        (prefix, body).prop_map(|(p, b)| [p, &b[..]].concat())
    }

    fn valid(report: &LoadReport) -> bool {
        report.validate().is_ok()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn no_header_value_panics_a_parser(value in header_value(), bin in any::<bool>()) {
            let name = if bin { "endpoint-load-metrics-bin" } else { "endpoint-load-metrics" };
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                let mut headers = HeaderMap::new();
                headers.insert(name, value);
                match LoadReport::from_headers(&headers) {
                    Some(Ok(report)) => prop_assert!(valid(&report)),
                    Some(Err(_)) => {}
                    None => prop_assert!(false, "a report header was present"),
                }
            }
            // The parsers on their own, on any bytes.
            if let Ok(report) = LoadReport::parse_bin(&value) {
                prop_assert!(valid(&report));
            }
            if let Ok(report) = LoadReport::from_protobuf(&value) {
                prop_assert!(valid(&report));
            }
            if let Ok(text) = std::str::from_utf8(&value) {
                let parsed = [LoadReport::parse_text(text), LoadReport::parse_json(text)];
                for report in parsed.into_iter().flatten() {
                    prop_assert!(valid(&report));
                }
            }
        }

        #[test]
        fn every_form_reads_back_every_valid_report(report in report()) {
            for form in [HeaderForm::Text, HeaderForm::Json, HeaderForm::Bin, HeaderForm::GrpcBin] {
                let mut headers = HeaderMap::new();
                report.write_headers(&mut headers, form);
                prop_assert_eq!(LoadReport::from_headers(&headers), Some(Ok(report.clone())));
            }
        }

        #[test]
        fn a_bad_number_in_any_field_is_rejected(
            report in report(),
            field in 0usize..5,
            bad in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY), -1e9..-1e-9f64],
        ) {
            let mut report = report;
            *[
                &mut report.cpu_utilization,
                &mut report.mem_utilization,
                &mut report.application_utilization,
                &mut report.rps_fractional,
                &mut report.eps,
            ][field] = bad;
            for form in [HeaderForm::Text, HeaderForm::Json, HeaderForm::Bin, HeaderForm::GrpcBin] {
                let mut headers = HeaderMap::new();
                report.write_headers(&mut headers, form);
                let parsed = LoadReport::from_headers(&headers);
                prop_assert!(
                    matches!(parsed, Some(Err(OrcaError::BadValue { .. }))),
                    "{:?}: {:?}", form, parsed
                );
            }
        }
    }
}
