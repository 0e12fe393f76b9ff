//! The discovery documents of `external.metrics.k8s.io` (contract §1.2) are built by
//! [`crate::apiserver::discovery`] from [`API`](crate::external_metrics::API); these are
//! their golden tests.
//!
//! The group-version document is the one that matters: the aggregator's availability check
//! and its legacy discovery fallback both read it, and an empty `resources` list breaks
//! client-go's discovery caches (kubectl, Helm, Flux, Argo). It lists the single fixed
//! `externalmetrics` resource, never one entry per metric (which made KEDA's discovery time
//! out) and never nothing.

#[cfg(test)]
mod tests {
    use crate::apimachinery::discovery::{
        aggregated_discovery_json, api_group_json, api_group_list_json, api_resource_list_json,
    };
    use crate::external_metrics::API;

    fn s(v: Vec<u8>) -> String {
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn api_resource_list_golden() {
        // Exactly custom-metrics-apiserver's document with the default provider (§1.2).
        assert_eq!(
            s(api_resource_list_json(&API)),
            r#"{"kind":"APIResourceList","apiVersion":"v1","groupVersion":"external.metrics.k8s.io/v1beta1","resources":[{"name":"externalmetrics","singularName":"","namespaced":true,"kind":"ExternalMetricValueList","verbs":["get"]}]}"#
        );
    }

    #[test]
    fn api_group_golden() {
        assert_eq!(
            s(api_group_json(&API)),
            r#"{"kind":"APIGroup","apiVersion":"v1","name":"external.metrics.k8s.io","versions":[{"groupVersion":"external.metrics.k8s.io/v1beta1","version":"v1beta1"}],"preferredVersion":{"groupVersion":"external.metrics.k8s.io/v1beta1","version":"v1beta1"}}"#
        );
    }

    #[test]
    fn api_group_list_golden() {
        assert_eq!(
            s(api_group_list_json(&API)),
            r#"{"kind":"APIGroupList","apiVersion":"v1","groups":[{"name":"external.metrics.k8s.io","versions":[{"groupVersion":"external.metrics.k8s.io/v1beta1","version":"v1beta1"}],"preferredVersion":{"groupVersion":"external.metrics.k8s.io/v1beta1","version":"v1beta1"}}]}"#
        );
    }

    #[test]
    fn aggregated_discovery_golden() {
        assert_eq!(
            s(aggregated_discovery_json(&API, "apidiscovery.k8s.io/v2")),
            r#"{"kind":"APIGroupDiscoveryList","apiVersion":"apidiscovery.k8s.io/v2","metadata":{},"items":[{"metadata":{"name":"external.metrics.k8s.io"},"versions":[{"version":"v1beta1","resources":[{"resource":"externalmetrics","responseKind":{"group":"external.metrics.k8s.io","version":"v1beta1","kind":"ExternalMetricValueList"},"scope":"Namespaced","singularResource":"externalmetric","verbs":["get"]}],"freshness":"Current"}]}]}"#
        );
    }
}
