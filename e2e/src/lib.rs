//! End-to-end harness: a real Kubernetes control plane, a Datadog API double and a node-agent
//! client, used by the scenario tests under `e2e/tests/`.
#![forbid(unsafe_code)]

pub mod agent;
pub mod agent_env;
pub mod conformance;
pub mod controlplane;
pub mod datadog_double;
pub mod manifests;
pub mod metrics_server;
pub mod node_agent;
pub mod process;
pub mod test_apiserver;
