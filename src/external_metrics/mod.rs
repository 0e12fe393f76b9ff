//! The aggregated `external.metrics.k8s.io/v1beta1` API server that kube-apiserver's
//! aggregator and the HPA controller call (see `reference/external-metrics-contract.md`).
//!
//! * [`api`]: the seams (where values come from, who is calling, whether they may);
//! * [`routes`], [`negotiate`], [`status`], [`types`], [`discovery`], [`openapi`]: pure
//!   HTTP-level logic, tested with vectors;
//! * [`service`]: the hyper service tying them together; [`server`]: binding and serving it
//!   over TLS;
//! * [`memory`]: an in-memory [`api::MetricSource`].

pub mod api;
pub mod auth;
pub mod discovery;
pub mod goquote;
pub mod memory;
pub mod negotiate;
pub mod openapi;
pub mod quantity;
pub mod routes;
pub mod selector;
pub mod selector_cache;
pub mod server;
pub mod service;
pub mod static_doc;
pub mod status;
pub mod types;

pub use api::Readiness;
pub use memory::InMemorySource;
pub use server::{ServerError, run, serve_on};
pub use service::{ExternalMetricsService, ServiceParts};

/// The API group we serve.
pub const GROUP: &str = "external.metrics.k8s.io";
/// Its only version.
pub const VERSION: &str = "v1beta1";
pub const GROUP_VERSION: &str = "external.metrics.k8s.io/v1beta1";
/// The fixed resource discovery lists (custom-metrics-apiserver's placeholder, §1.2).
pub const RESOURCE: &str = "externalmetrics";
pub const SINGULAR: &str = "externalmetric";
/// The kind of every metric response.
pub const LIST_KIND: &str = "ExternalMetricValueList";

#[cfg(test)]
mod tests;
