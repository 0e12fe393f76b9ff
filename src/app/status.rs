//! Fills the `status` report from the subsystems' handles, at each request: nothing is
//! copied ahead of time, and a section exists only for a subsystem that runs.

use std::sync::Arc;

use crate::autoscaling::DatadogMetricSource;
use crate::autoscaling::store::StoreSnapshot;
use crate::datadog::resolver::DatadogTelemetry;
use crate::leader::{LeaderHandle, LeaderStatus};
use crate::node_api::metadata::MetadataSource;
use crate::status::{
    Agent, DatadogApi, ExternalMetrics, LeaderElection, Metric, NodeAgentApi, Status, StatusSource,
};

pub(crate) struct Parts {
    pub(crate) agent: Agent,
    pub(crate) cmd_port: u16,
    pub(crate) log_level: crate::logging::LoggingHandle,
    pub(crate) leader: LeaderHandle,
    pub(crate) metadata: Arc<dyn MetadataSource>,
    pub(crate) external_metrics: Option<ExternalMetricsParts>,
}

pub(crate) struct ExternalMetricsParts {
    /// `<ns>/<name>` of the ConfigMap store.
    pub(crate) store: String,
    pub(crate) source: Arc<DatadogMetricSource>,
    pub(crate) datadog: Arc<DatadogTelemetry>,
    pub(crate) endpoint: String,
}

/// `explain`'s answers, from the HPA catalog and this replica's copy of the store.
pub(crate) fn explain_source(source: Arc<DatadogMetricSource>) -> crate::explain::ExplainSource {
    Arc::new(move |namespace: &str, name: &str| {
        let catalog = source.catalog().snapshot();
        let ours = |r: &crate::autoscaling::store_format::ObjectReference| {
            r.namespace == namespace && r.name == name
        };
        let wanted: Vec<_> = catalog
            .wanted
            .iter()
            .filter(|w| ours(&w.reference))
            .collect();
        let problems: Vec<String> = catalog
            .problems
            .iter()
            .filter(|p| ours(&p.reference))
            .map(|p| p.message.clone())
            .collect();
        if wanted.is_empty() && problems.is_empty() {
            return None;
        }
        let settings = source.settings();
        let store = source.store();
        let metrics =
            wanted
                .iter()
                .map(|w| {
                    let key = w.key();
                    let stored = store.entries.iter().find(|e| e.key == key).map(|e| {
                        crate::explain::Stored {
                            value: e.value.value,
                            timestamp: e.value.timestamp,
                            valid: e.value.valid,
                            reason: store.reason(&key).map(str::to_owned),
                        }
                    });
                    crate::explain::MetricExplanation {
                        name: w.metric_name.clone(),
                        labels: w.labels.clone(),
                        query: w.query(settings.aggregator, settings.rollup_secs),
                        store_key: key,
                        stored,
                        staleness_limit_secs: settings.staleness_limit_secs,
                    }
                })
                .collect();
        Some(crate::explain::Explanation {
            hpa: format!("{namespace}/{name}"),
            now: unix_now(),
            metrics,
            problems,
        })
    })
}

pub(crate) fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

pub(crate) fn source(parts: Parts) -> StatusSource {
    Arc::new(move || Status {
        agent: Agent {
            now: unix_now(),
            log_level: parts.log_level.get().as_filter().to_owned(),
            ..parts.agent.clone()
        },
        leader_election: leader_election(parts.leader.status()),
        node_agent_api: NodeAgentApi {
            port: parts.cmd_port,
            synced: parts.metadata.synced(),
            nodes: parts.metadata.node_names().len(),
            namespaces: parts.metadata.namespace_count(),
            pods_mapped: parts.metadata.services().ok().map(|map| map.pod_count()),
        },
        external_metrics: parts
            .external_metrics
            .as_ref()
            .map(|em| external_metrics(&em.store, &em.source.store())),
        datadog_api: parts.external_metrics.as_ref().map(datadog_api),
    })
}

fn leader_election(status: LeaderStatus) -> LeaderElection {
    LeaderElection {
        enabled: status.enabled,
        identity: status.identity,
        lock: status.lock,
        state: status.state.as_str().to_owned(),
        is_leader: status.is_leader,
        leader: status.leader,
        acquired_at: status.acquire_time.map(|t| t.to_string()),
        renewed_at: status.renew_time.map(|t| t.to_string()),
        transitions: status.leader_transitions,
        last_error: status.last_error,
    }
}

fn external_metrics(store: &str, snapshot: &StoreSnapshot) -> ExternalMetrics {
    ExternalMetrics {
        store: store.to_owned(),
        store_synced: snapshot.synced,
        store_present: snapshot.present,
        store_updated_at: snapshot.last_updated,
        metrics: snapshot
            .entries
            .iter()
            .map(|entry| {
                let v = &entry.value;
                Metric {
                    hpa: format!("{}/{}", v.reference.namespace, v.reference.name),
                    name: v.metric_name.clone(),
                    labels: v.labels.clone(),
                    value: v.value,
                    timestamp: v.timestamp,
                    valid: v.valid,
                    error: snapshot.reason(&entry.key).map(str::to_owned),
                }
            })
            .collect(),
    }
}

fn datadog_api(em: &ExternalMetricsParts) -> DatadogApi {
    let calls = em.datadog.snapshot();
    let (consecutive_failures, last_error) = em.datadog.failures();
    let key = em.datadog.key_check();
    DatadogApi {
        endpoint: em.endpoint.clone(),
        successes: calls.requests_success,
        errors: calls.requests_error,
        rate_limited: calls.requests_rate_limited,
        retries: calls.retries,
        rate_limit_limit: calls.rate_limit_limit,
        rate_limit_remaining: calls.rate_limit_remaining,
        rate_limit_reset_secs: calls.rate_limit_reset,
        consecutive_failures,
        last_error,
        api_key_checked_at: key.checked_at,
        api_key_valid: key.valid,
        api_key_error: key.error,
    }
}
