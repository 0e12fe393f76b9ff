//! Requests by route and status, and their latency: the Go DCA's `api_requests` and
//! `api_elapsed` (its `handler_telemetry.go`), labelled `handler`, `status` and `forwarded`,
//! registered on the registry that `metrics_port`'s `/metrics` serves.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    handler: &'static str,
    status: u16,
    /// Always `false`: every replica answers itself, nothing is forwarded to the leader.
    forwarded: &'static str,
}

/// Prometheus' default buckets (Go's `prometheus.DefBuckets`, so the Go DCA's dashboards
/// read ours), with three below 5 ms, where our answers fall.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

type HistogramFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// One server's request counters; cheap to clone (clones count into the same series).
#[derive(Clone, Debug)]
pub(crate) struct RouteTelemetry {
    requests: Family<RequestLabels, Counter>,
    elapsed: HistogramFamily,
}

impl RouteTelemetry {
    /// Registers `api_requests` and `api_elapsed` on `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let telemetry = RouteTelemetry::unregistered();
        registry.register(
            "api_requests",
            "Requests answered, by handler and status code",
            telemetry.requests.clone(),
        );
        registry.register(
            "api_elapsed",
            "Time to answer a request, in seconds, by handler and status code",
            telemetry.elapsed.clone(),
        );
        telemetry
    }

    /// Counters nobody reads (a server started without `metrics_port`).
    pub(crate) fn unregistered() -> Self {
        RouteTelemetry {
            requests: Family::default(),
            elapsed: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
        }
    }

    pub(crate) fn record(&self, handler: &'static str, status: http::StatusCode, took: Duration) {
        let labels = RequestLabels {
            handler,
            status: status.as_u16(),
            forwarded: "false",
        };
        self.requests.get_or_create(&labels).inc();
        self.elapsed
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn requests_are_counted_by_handler_and_status_and_timed() {
        let mut registry = Registry::default();
        let telemetry = RouteTelemetry::register(&mut registry);
        let ok = http::StatusCode::OK;
        telemetry.record("getPodMetadataForNode", ok, Duration::from_micros(300));
        telemetry.record("getPodMetadataForNode", ok, Duration::from_millis(3));
        telemetry.clone().record(
            "getPodMetadataForNode",
            http::StatusCode::FORBIDDEN,
            Duration::from_micros(10),
        );
        let mut text = String::new();
        encode(&mut text, &registry).expect("encodes");
        let node = r#"handler="getPodMetadataForNode""#;
        for line in [
            format!(r#"api_requests_total{{{node},status="200",forwarded="false"}} 2"#),
            format!(r#"api_requests_total{{{node},status="403",forwarded="false"}} 1"#),
            format!(r#"api_elapsed_count{{{node},status="200",forwarded="false"}} 2"#),
            // 300 µs falls in the first bucket, 3 ms only from the 5 ms one on.
            format!(r#"api_elapsed_bucket{{le="0.0005",{node},status="200",forwarded="false"}} 1"#),
            format!(r#"api_elapsed_bucket{{le="0.0025",{node},status="200",forwarded="false"}} 1"#),
            format!(r#"api_elapsed_bucket{{le="0.005",{node},status="200",forwarded="false"}} 2"#),
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        assert!(text.contains("# TYPE api_elapsed histogram"), "{text}");
    }
}
