//! The Datadog Cluster Agent, in Rust: the library behind the `datadog-cluster-agent` binary.
#![forbid(unsafe_code)]

pub mod apimachinery;
pub mod apiserver;
pub mod app;
pub mod autoscaling;
pub mod cli;
pub mod config;
pub mod datadog;
pub mod error;
pub mod external_metrics;
pub mod k8s;
pub mod leader;
pub mod logging;
pub mod shutdown;
pub mod tls;
pub mod version;
