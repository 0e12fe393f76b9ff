//! The seam of the external metrics API: where metric values come from ([`MetricSource`]),
//! and why there may be none ([`MetricError`], each one a `metav1.Status`).

use std::sync::Arc;

use crate::apimachinery::selector::Selector;
use crate::apimachinery::status::{Status, StatusDetails};
use crate::apiserver::seams::Answer;
use crate::external_metrics::types::PublishedValue;
use crate::external_metrics::{GROUP, RESOURCE};

/// Why a source has no value to give. Each maps to one metav1.Status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricError {
    /// 404 NotFound.
    #[error("the server could not find the metric {metric} in namespace {namespace}")]
    NotFound { namespace: String, metric: String },
    /// 500 InternalError: the value exists but is too old to scale on.
    #[error("the value of metric {metric} is stale: {detail}")]
    Stale { metric: String, detail: String },
    /// 500 InternalError: Datadog answered, but not with a usable value.
    #[error("metric {metric} is invalid: {reason}")]
    Invalid { metric: String, reason: String },
    /// 503 ServiceUnavailable: nothing to serve yet (start-up, store not synced).
    #[error("{0}")]
    Unavailable(String),
    /// 500 InternalError.
    #[error("{0}")]
    Internal(String),
}

/// What a source serves: values shared with the source, so that answering a request costs
/// reference-count bumps rather than copies of names and labels, and each value's wire form
/// is written once.
pub(crate) type MetricValues = Vec<Arc<PublishedValue>>;

pub trait MetricSource: Send + Sync + 'static {
    /// `metric` is the name as requested (lower-cased by client-go); matching it to what the
    /// HPA wrote is the source's job.
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        metric: &'a str,
        selector: &'a Selector,
    ) -> Answer<'a, Result<MetricValues, MetricError>>;
}

impl From<&MetricError> for Status {
    /// The Status a source's error becomes.
    fn from(error: &MetricError) -> Self {
        match error {
            MetricError::NotFound { metric, .. } => Status::not_found(
                error.to_string(),
                StatusDetails {
                    name: metric.clone(),
                    group: GROUP.to_owned(),
                    kind: RESOURCE.to_owned(),
                    ..StatusDetails::default()
                },
            ),
            MetricError::Stale { .. } | MetricError::Invalid { .. } | MetricError::Internal(_) => {
                Status::internal(error.to_string())
            }
            MetricError::Unavailable(message) => Status::service_unavailable(message.clone()),
        }
    }
}

/// Go's answer to `watch=true` on a metric: the list handler has no watcher.
pub(crate) fn watch_not_supported(metric: &str) -> Status {
    Status::method_not_supported(GROUP, metric, "watch")
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;
    use crate::apimachinery::status::REASON_INTERNAL_ERROR;

    fn json(s: &Status) -> String {
        String::from_utf8(s.to_json()).unwrap()
    }

    #[test]
    fn watch_not_supported_golden() {
        assert_eq!(
            json(&watch_not_supported("queue.depth")),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"watch is not supported on resources of kind \"queue.depth.external.metrics.k8s.io\"","reason":"MethodNotAllowed","details":{"group":"external.metrics.k8s.io","kind":"queue.depth"},"code":405}"#
        );
    }

    #[test]
    fn metric_not_found_golden() {
        let err = MetricError::NotFound {
            namespace: "prod".into(),
            metric: "queue.depth".into(),
        };
        assert_eq!(
            json(&Status::from(&err)),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the metric queue.depth in namespace prod","reason":"NotFound","details":{"name":"queue.depth","group":"external.metrics.k8s.io","kind":"externalmetrics"},"code":404}"#
        );
    }

    #[test]
    fn internal_error_golden() {
        let err = MetricError::Invalid {
            metric: "m".into(),
            reason: "DatadogMetric is invalid".into(),
        };
        assert_eq!(
            json(&Status::from(&err)),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Internal error occurred: metric m is invalid: DatadogMetric is invalid","reason":"InternalError","details":{"causes":[{"message":"metric m is invalid: DatadogMetric is invalid"}]},"code":500}"#
        );
        let stale = MetricError::Stale {
            metric: "m".into(),
            detail: "last point 600s old".into(),
        };
        let s = Status::from(&stale);
        assert_eq!(s.code, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            s.message,
            "Internal error occurred: the value of metric m is stale: last point 600s old"
        );
        let s = Status::from(&MetricError::Internal("boom".into()));
        assert_eq!(s.reason, REASON_INTERNAL_ERROR);
        assert_eq!(s.message, "Internal error occurred: boom");
    }

    #[test]
    fn service_unavailable_golden() {
        assert_eq!(
            json(&Status::from(&MetricError::Unavailable(
                "metric store not synced yet".into()
            ))),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"metric store not synced yet","reason":"ServiceUnavailable","code":503}"#
        );
    }
}
