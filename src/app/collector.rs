//! What `/metrics` reports of the subsystems that keep their own counters (atomics on their
//! hot paths): read at each scrape, so nothing is copied between scrapes. Names follow the
//! Go DCA where it has one (`datadog_requests`, `rate_limit_queries_*`,
//! `leader_election_is_leader`); the external-metrics counters are ours.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::autoscaling::Telemetry as AutoscalingTelemetry;
use crate::datadog::resolver::DatadogTelemetry;
use crate::leader::LeaderHandle;

#[derive(Debug)]
pub(crate) struct AgentCollector {
    pub(crate) leader: LeaderHandle,
    /// `leader_election`: whether this replica takes part in an election.
    pub(crate) election: bool,
    /// Set when external metrics are served.
    pub(crate) external_metrics: Option<ExternalMetricsTelemetry>,
}

#[derive(Debug)]
pub(crate) struct ExternalMetricsTelemetry {
    pub(crate) datadog: Arc<DatadogTelemetry>,
    pub(crate) autoscaling: Arc<AutoscalingTelemetry>,
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn bool_label(value: bool) -> &'static str {
    if value { "true" } else { "false" }
}

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let labels = [
            ("join_leader", bool_label(self.election)),
            ("is_leader", bool_label(self.leader.is_leader())),
        ];
        let mut family = encoder.encode_descriptor(
            "leader_election_is_leader",
            "1 on the replica that runs the leader-only work",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(self.leader.is_leader()))
            .encode(family.encode_family(&labels)?)?;
        let Some(em) = &self.external_metrics else {
            return Ok(());
        };
        let datadog = em.datadog.snapshot();
        let mut requests = encoder.encode_descriptor(
            "datadog_requests",
            "Datadog /api/v1/query calls, by outcome",
            None,
            MetricType::Counter,
        )?;
        for (status, value) in [
            ("success", datadog.requests_success),
            ("error", datadog.requests_error),
            ("rate_limit_error", datadog.requests_rate_limited),
        ] {
            ConstCounter::new(value).encode(requests.encode_family(&[("status", status)])?)?;
        }
        counter(
            &mut encoder,
            "datadog_request_retries",
            "Extra HTTP attempts made by retries of Datadog calls",
            datadog.retries,
        )?;
        // Only what a Datadog answer told us: an unknown budget is no series, not a 0.
        for (name, help, value) in [
            (
                "rate_limit_queries_limit",
                "X-RateLimit-Limit last seen",
                datadog.rate_limit_limit,
            ),
            (
                "rate_limit_queries_remaining",
                "X-RateLimit-Remaining last seen",
                datadog.rate_limit_remaining,
            ),
            (
                "rate_limit_queries_reset",
                "Seconds until the rate-limit window resets",
                datadog.rate_limit_reset,
            ),
            (
                "rate_limit_queries_period",
                "X-RateLimit-Period last seen, seconds",
                datadog.rate_limit_period,
            ),
        ] {
            if let Some(value) = value {
                gauge(
                    &mut encoder,
                    name,
                    help,
                    i64::try_from(value).unwrap_or(i64::MAX),
                )?;
            }
        }
        let autoscaling = em.autoscaling.snapshot(None, Default::default());
        for (name, help, value) in [
            (
                "external_metrics_store_hits",
                "Metric requests answered from the shared store",
                autoscaling.store_hits,
            ),
            (
                "external_metrics_cache_hits",
                "On-demand lookups answered by the cache",
                autoscaling.cache_hits,
            ),
            (
                "external_metrics_cache_misses",
                "On-demand lookups that queried Datadog",
                autoscaling.cache_misses,
            ),
            (
                "external_metrics_refreshes",
                "Refreshes of every HPA's metrics (leader)",
                autoscaling.refreshes,
            ),
            (
                "external_metrics_resolve_errors",
                "Refreshes or lookups that failed",
                autoscaling.resolve_errors,
            ),
            (
                "external_metrics_store_writes",
                "Writes of the shared store ConfigMap",
                autoscaling.store_writes,
            ),
            (
                "external_metrics_store_write_errors",
                "Failed writes of the shared store",
                autoscaling.store_write_errors,
            ),
        ] {
            counter(&mut encoder, name, help, value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    use super::*;

    fn scrape(collector: AgentCollector) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collector));
        let mut text = String::new();
        encode(&mut text, &registry).expect("encodes");
        text
    }

    #[test]
    fn a_replica_without_external_metrics_reports_its_leadership() {
        let text = scrape(AgentCollector {
            leader: LeaderHandle::always_leader("dca-0"),
            election: false,
            external_metrics: None,
        });
        assert!(
            text.lines().any(
                |l| l == r#"leader_election_is_leader{join_leader="false",is_leader="true"} 1"#
            ),
            "{text}"
        );
        assert!(!text.contains("datadog_requests"), "{text}");
    }

    #[test]
    fn the_counters_are_read_at_each_scrape() {
        let autoscaling = Arc::new(AutoscalingTelemetry::default());
        let datadog = Arc::new(DatadogTelemetry::default());
        let collector = AgentCollector {
            leader: LeaderHandle::always_leader("dca-0"),
            election: true,
            external_metrics: Some(ExternalMetricsTelemetry {
                datadog: Arc::clone(&datadog),
                autoscaling: Arc::clone(&autoscaling),
            }),
        };
        autoscaling.store_hit();
        autoscaling.store_hit();
        autoscaling.cache_miss();
        let text = scrape(collector);
        for line in [
            r#"datadog_requests_total{status="success"} 0"#,
            r#"datadog_requests_total{status="rate_limit_error"} 0"#,
            "external_metrics_store_hits_total 2",
            "external_metrics_cache_misses_total 1",
            "external_metrics_cache_hits_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        // No Datadog answer yet: no rate-limit series.
        assert!(!text.contains("rate_limit_queries"), "{text}");
    }
}
