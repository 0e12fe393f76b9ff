//! The aggregated `external.metrics.k8s.io/v1beta1` API that kube-apiserver's aggregator
//! and the HPA controller call (the § numbers cite the external metrics contract): its routes, its wire types and the [`api::MetricSource`] seam, on top of
//! [`crate::apiserver`] (authentication, negotiation, discovery, serving) and
//! [`crate::apimachinery`] (selectors, Quantity, Status).
//!
//! * [`api`]: the seam (where values come from) and its errors as Status;
//! * [`routes`], [`types`], [`openapi`], [`discovery`]: pure HTTP-level logic, tested with
//!   vectors;
//! * [`service`]: the handler tying them together; [`server`]: binding and serving it.
//!
//! It may import the layers below and [`crate::config`]; nothing here knows where values
//! come from (that is `autoscaling`, which implements the seam).

pub mod api;
pub(crate) mod discovery;
#[cfg(any(test, feature = "test-util"))]
pub mod memory;
pub(crate) mod openapi;
pub mod routes;
pub mod server;
pub(crate) mod service;
pub mod types;

pub use service::{ExternalMetricsService, ServiceParts};

use crate::apimachinery::discovery::{GroupVersionSpec, ResourceSpec};

/// The API group we serve.
pub const GROUP: &str = "external.metrics.k8s.io";
/// Its only version.
pub(crate) const VERSION: &str = "v1beta1";
pub(crate) const GROUP_VERSION: &str = "external.metrics.k8s.io/v1beta1";
/// The fixed resource discovery lists (custom-metrics-apiserver's placeholder, §1.2).
pub(crate) const RESOURCE: &str = "externalmetrics";
pub(crate) const SINGULAR: &str = "externalmetric";
/// The kind of every metric response.
pub(crate) const LIST_KIND: &str = "ExternalMetricValueList";

/// What discovery lists: the one fixed resource, never one entry per metric.
pub const API: GroupVersionSpec = GroupVersionSpec {
    group: GROUP,
    version: VERSION,
    group_version: GROUP_VERSION,
    resources: &[ResourceSpec {
        name: RESOURCE,
        singular_name: "",
        singular_resource: SINGULAR,
        namespaced: true,
        kind: LIST_KIND,
        verbs: &["get"],
    }],
};

#[cfg(test)]
mod tests;
