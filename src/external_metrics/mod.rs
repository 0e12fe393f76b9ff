//! The aggregated `external.metrics.k8s.io/v1beta1` API server.

pub mod api;
pub mod quantity;
pub mod selector;
