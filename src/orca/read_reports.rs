//! A classifier wrapper that reads load reports from HTTP responses.

use super::error::OrcaError;
use super::report::LoadReport;
use crate::classify::{Classify, Outcome};

/// Reads the load report of each `http::Response` head for the balancer, and classifies as
/// the wrapped classifier does: for a [`classify_fn`](crate::classify::classify_fn), or a
/// classifier of your own, which find no
/// reports (see [`Classify::load_report`]). [`DefaultClassifier`](crate::classify::DefaultClassifier)
/// and [`GrpcClassifier`](crate::classify::GrpcClassifier) read reports without it.
///
/// ```
/// use tower_lb::classify::{classify_fn, Outcome};
/// use tower_lb::orca::ReadReports;
/// use tower_lb::Balance;
///
/// // Every response is a success, and its report is read.
/// let classify = ReadReports(classify_fn(|_: &Result<http::Response<()>, std::io::Error>| {
///     Outcome::Success
/// }));
/// let builder = Balance::builder().classify(classify).load_reports(true);
/// # drop(builder);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadReports<C>(pub C);

impl<C, B, E> Classify<http::Response<B>, E> for ReadReports<C>
where
    C: Classify<http::Response<B>, E>,
{
    #[inline]
    fn classify(&self, result: &Result<http::Response<B>, E>) -> Outcome {
        self.0.classify(result)
    }

    #[inline]
    fn load_report(&self, response: &http::Response<B>) -> Option<Result<LoadReport, OrcaError>> {
        LoadReport::from_headers(response.headers())
    }
}
