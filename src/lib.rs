//! The Datadog Cluster Agent, in Rust: the library behind the `datadog-cluster-agent` binary.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod apimachinery;
pub mod apiserver;
pub(crate) mod app;
pub mod autoscaling;
pub mod cli;
pub mod config;
pub mod datadog;
pub(crate) mod error;
pub(crate) mod explain;
pub mod external_metrics;
pub(crate) mod health;
pub mod k8s;
pub mod leader;
pub(crate) mod logging;
pub(crate) mod metadata;
pub(crate) mod node_api;
pub(crate) mod scrub;
pub(crate) mod status;
/// The node-agent API over a synthetic cluster, for its benchmark; never in the shipped
/// binary.
#[cfg(feature = "test-util")]
pub mod node_api_bench {
    pub use crate::metadata::synthetic::{Shape, SyntheticCluster, node_name, serve};
}
pub(crate) mod shutdown;
pub(crate) mod telemetry;
pub mod tls;
pub mod version;
