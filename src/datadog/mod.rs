//! The Datadog API: query building, batching and response evaluation (pure), the rate-limit
//! budget and per-query backoff (pure), the HTTP client, and the resolver that ties them.

pub(crate) mod backoff;
pub(crate) mod batch;
pub mod client;
pub mod query;
pub(crate) mod ratelimit;
pub mod resolver;
pub mod response;

use std::collections::BTreeMap;

use futures::future::BoxFuture;

pub use client::{ClientConfig, ClientError, DatadogClient};
pub use resolver::{DatadogResolver, DatadogTelemetry, ResolverConfig, TelemetrySnapshot};
pub use response::QueryOutcome;

/// Why a whole resolution produced nothing (per-query problems are `QueryOutcome::Invalid`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResolveError {
    /// Datadog answered 429, or our budget says a call now would exhaust the organisation's
    /// rate limit: nothing is asked until `retry_after_secs` has passed.
    #[error("Datadog rate limit reached; next query in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// 401/403: the keys or the site are wrong; retrying will not help.
    #[error("Datadog refused the credentials: {0}")]
    Forbidden(String),
    #[error("{0}")]
    Other(String),
}

/// Turns Datadog queries into outcomes: batching, concurrency, retries, rate-limit budget and
/// per-query backoff live behind this seam, so the autoscaling side is tested with a fake.
pub trait Resolver: Send + Sync + 'static {
    /// Resolves `queries` (deduplicated by the caller) as of `now` (unix seconds). Queries
    /// deferred by the rate-limit budget or a backoff are absent from the map; the caller
    /// keeps serving their previous values until those go stale.
    fn resolve<'a>(
        &'a self,
        queries: &'a [String],
        now: i64,
    ) -> BoxFuture<'a, Result<BTreeMap<String, QueryOutcome>, ResolveError>>;
}
