//! Server-reported load (feature `orca`): ORCA load reports on both sides of a connection.
//!
//! A client balancer knows what it sees: its own requests in flight and their latency. A
//! server knows more: how busy its CPU is, how many requests it serves from all its
//! clients, and its own idea of utilization. ORCA (Open Request Cost Aggregation, gRFC A51)
//! is the format in which servers tell clients, and gRPC's `weighted_round_robin` (gRFC A58,
//! with gRFC A114's choice of metric) and Envoy's `client_side_weighted_round_robin` weight
//! endpoints by it. This module holds both sides:
//!
//! - **The report:** [`LoadReport`] is `xds.data.orca.v3.OrcaLoadReport`, with a parser and
//!   an encoder for each form in use: the header `endpoint-load-metrics` with prefix
//!   `TEXT ` ([`LoadReport::parse_text`], `name=value` list), `JSON `
//!   ([`LoadReport::parse_json`], proto3 JSON) or `BIN ` ([`LoadReport::parse_bin`], base64
//!   protobuf), and gRPC's metadata `endpoint-load-metrics-bin` (in trailers) and its legacy
//!   name `x-endpoint-load-metrics-bin`. [`LoadReport::from_headers`] reads whichever is
//!   present. The parsers follow Envoy's (`source/common/orca/orca_parser.cc`); where they
//!   differ, the parser's docs say so.
//! - **The client:** a balancer whose strategy reads reports
//!   ([`WeightedRoundRobin`](crate::strategy::WeightedRoundRobin)), or that is asked to with
//!   [`Builder::load_reports`](crate::Builder::load_reports), reads each response's report
//!   from its headers, and for gRPC from its trailers (with
//!   [`OnBodyEnd`](crate::http::OnBodyEnd)). Each endpoint keeps its latest report, shown
//!   with its age in [`EndpointStats`](crate::EndpointStats); a report that does not parse is
//!   ignored and counted there.
//! - **The server:** [`OrcaLayer`] wraps a server's service (hyper, axum, tonic) and
//!   attaches a report to every response: requests and errors per second over a sliding
//!   window, the process's CPU utilization, and what the handler recorded through the
//!   [`CallMetricRecorder`] in its request's extensions. gRPC responses get theirs in the
//!   trailers.
//!
//! # Bad input
//!
//! Every parser returns [`OrcaError`] rather than panic, whatever the bytes: NaN, infinite
//! and negative values, two reports in one response, unknown JSON fields or TEXT names,
//! malformed base64 or protobuf, and header values longer than [`MAX_HEADER_LEN`].
//!
//! # What is left out
//!
//! Out-of-band reporting (the `OpenRcaService.StreamCoreMetrics` gRPC stream, at most one
//! report per 30 s at the server's minimum) is not implemented: it needs a gRPC client and
//! server of its own, and per-request reports reach the same weights for any endpoint that
//! gets traffic. [`Load::record_load_report`](crate::endpoint::Load::record_load_report)
//! takes reports from any source, so an application can feed one.
//!
//! # Example
//!
//! ```
//! use tower_lb::orca::{HeaderForm, LoadReport};
//!
//! let report = LoadReport {
//!     application_utilization: 0.6,
//!     rps_fractional: 250.0,
//!     ..LoadReport::default()
//! };
//! let mut headers = http::HeaderMap::new();
//! report.write_headers(&mut headers, HeaderForm::Bin);
//! assert_eq!(LoadReport::from_headers(&headers), Some(Ok(report)));
//! ```

mod bin;
mod cpu;
mod error;
mod headers;
mod json;
mod layer;
mod read_reports;
mod recorder;
mod report;
mod text;
mod window;

pub use cpu::CpuSampler;
pub use error::{OrcaError, ValueProblem};
pub use headers::{
    HeaderForm, ENDPOINT_LOAD_METRICS, ENDPOINT_LOAD_METRICS_BIN, X_ENDPOINT_LOAD_METRICS_BIN,
};
pub use layer::{OrcaBody, OrcaFuture, OrcaLayer, OrcaService};
pub use read_reports::ReadReports;
pub use recorder::{CallMetricRecorder, ServerMetricRecorder};
pub use report::{LoadReport, ReceivedReport};
pub use window::RateWindow;

/// The longest report header value read, in bytes (8 KiB); a longer one is
/// [`OrcaError::TooLarge`]. Reports of a few metrics take under 200 bytes.
pub const MAX_HEADER_LEN: usize = 8192;
