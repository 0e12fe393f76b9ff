//! The metadata mapper (dca-contract §2): node → namespace → pod → services, from the ready
//! addresses of each Service's Endpoints, or the ready endpoints of its EndpointSlices,
//! whose target is a Pod on a node.

use crate::metadata::endpoints::{Endpoints, TargetRef};
use crate::metadata::slice::{EndpointSlice, SERVICE_NAME_LABEL};
use crate::node_api::service_map::{ServiceMap, ServiceMapBuilder};

/// Records that `target`, on `node`, backs `service` of `namespace`, when the target is a
/// Pod. The pod's namespace is the Service's unless the reference says otherwise.
fn add<'a>(
    map: &mut ServiceMapBuilder<'a>,
    service: &'a str,
    namespace: &'a str,
    node: Option<&'a str>,
    target: Option<&'a TargetRef>,
) {
    let (Some(node), Some(target)) = (node, target) else {
        return;
    };
    let (true, Some(pod)) = (target.is_pod, &target.name) else {
        return;
    };
    let pod_namespace = target.namespace.as_deref().unwrap_or(namespace);
    map.add(node, pod_namespace, pod, service);
}

/// The map of every node, from all EndpointSlices: a slice names its Service by the
/// `kubernetes.io/service-name` label (a slice without it belongs to no Service); only
/// ready endpoints count, as only ready addresses do in Endpoints.
pub(crate) fn build_from_slices<'a, V: 'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice<V>>,
) -> ServiceMap {
    let mut map = ServiceMapBuilder::default();
    for slice in slices {
        let meta = &slice.metadata;
        let service = meta
            .labels
            .as_ref()
            .and_then(|labels| labels.get(SERVICE_NAME_LABEL));
        let (Some(service), Some(namespace)) = (service, &meta.namespace) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            if endpoint.conditions.ready == Some(false) {
                continue;
            }
            add(
                &mut map,
                service,
                namespace,
                endpoint.node_name.as_deref(),
                endpoint.target_ref.as_ref(),
            );
        }
    }
    map.build()
}

/// The map of every node, from all Endpoints. Only `subsets[].addresses` count (ready ones);
/// an address without a Pod target or a node name (leader-election endpoints) is skipped.
pub(crate) fn build<'a>(endpoints: impl IntoIterator<Item = &'a Endpoints>) -> ServiceMap {
    let mut map = ServiceMapBuilder::default();
    for ep in endpoints {
        let (Some(service), Some(namespace)) = (&ep.metadata.name, &ep.metadata.namespace) else {
            continue;
        };
        let addresses = ep
            .subsets
            .iter()
            .flatten()
            .flat_map(|subset| subset.addresses.iter().flatten());
        for address in addresses {
            add(
                &mut map,
                service,
                namespace,
                address.node_name.as_deref(),
                address.target_ref.as_ref(),
            );
        }
    }
    map.build()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde_json::{Value, json};

    use super::*;
    use crate::metadata::endpoints::trim_endpoints;

    fn address(node: Option<&str>, kind: &str, pod: &str) -> Value {
        let mut address = json!({
            "ip": "10.0.0.1",
            "targetRef": {"kind": kind, "name": pod, "namespace": "shop", "uid": "u"},
        });
        if let Some(node) = node {
            address["nodeName"] = node.into();
        }
        address
    }

    /// Parsed and trimmed as the watch parses and trims what the API server sends.
    fn endpoints(name: &str, ready: Vec<Value>, not_ready: Vec<Value>) -> Endpoints {
        let object = json!({
            "metadata": {"name": name, "namespace": "shop"},
            "subsets": [{"addresses": ready, "notReadyAddresses": not_ready,
                         "ports": [{"port": 80}]}],
        });
        let mut endpoints: Endpoints = serde_json::from_value(object).expect("parses");
        trim_endpoints(&mut endpoints);
        endpoints
    }

    #[test]
    fn ready_pod_addresses_on_nodes_map_to_their_services() {
        let all = [
            endpoints(
                "web",
                vec![
                    address(Some("n1"), "Pod", "web-1"),
                    address(Some("n2"), "Pod", "web-2"),
                ],
                vec![address(Some("n1"), "Pod", "web-3")],
            ),
            endpoints(
                "web-internal",
                vec![address(Some("n1"), "Pod", "web-1")],
                vec![],
            ),
            // No node, or not a pod: skipped.
            endpoints(
                "odd",
                vec![
                    address(None, "Pod", "web-1"),
                    address(Some("n1"), "Node", "n1"),
                ],
                vec![],
            ),
            Endpoints {
                metadata: ObjectMeta {
                    name: Some("leader".to_owned()),
                    namespace: Some("shop".to_owned()),
                    ..ObjectMeta::default()
                },
                subsets: None,
            },
        ];
        let map = build(&all);
        let services = |node: &str, pod: &str| -> Option<Vec<&str>> {
            let services = map.node(node)?.services("shop", pod)?;
            Some(services.iter().map(|s| &**s).collect())
        };
        assert_eq!(services("n1", "web-1"), Some(vec!["web", "web-internal"]));
        assert_eq!(services("n2", "web-2"), Some(vec!["web"]));
        // Not ready: not mapped.
        assert_eq!(services("n1", "web-3"), None);
        assert_eq!(map.node_count(), 2, "{map:?}");
        assert_eq!(
            map.node("n1").map(|n| n.namespaces()[0].pods().len()),
            Some(1),
            "{map:?}"
        );
    }

    #[test]
    fn the_map_shares_pod_names_with_the_store() {
        let store = [endpoints(
            "web",
            vec![address(Some("n1"), "Pod", "web-1")],
            vec![],
        )];
        let map = build(&store);
        let stored = store[0].subsets.as_ref().expect("subsets")[0]
            .addresses
            .as_ref()
            .expect("addresses")[0]
            .target_ref
            .as_ref()
            .and_then(|t| t.name.as_deref())
            .expect("pod name");
        let mapped = map.node("n1").expect("n1").namespaces()[0].pods()[0].name();
        assert_eq!(mapped, "web-1");
        assert!(std::ptr::eq(stored, mapped), "one copy of the pod's name");
    }

    #[test]
    fn ready_slice_endpoints_map_to_the_service_their_label_names() {
        use crate::metadata::slice::{Conditions, SliceEndpoint, V1};
        let endpoint =
            |node: Option<&str>, kind: &str, pod: &str, ready: Option<bool>| SliceEndpoint {
                conditions: Conditions { ready },
                node_name: node.map(Into::into),
                target_ref: serde_json::from_value(address(None, kind, pod)["targetRef"].take())
                    .expect("parses"),
            };
        let slice = |name: &str, service: Option<&str>, endpoints| {
            let labels = service.map(|s| [(SERVICE_NAME_LABEL.to_owned(), s.to_owned())].into());
            EndpointSlice::<V1>::new(
                ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some("shop".to_owned()),
                    labels,
                    ..ObjectMeta::default()
                },
                endpoints,
            )
        };
        let all = [
            // One Service in two slices: the union.
            slice(
                "web-abc",
                Some("web"),
                vec![
                    endpoint(Some("n1"), "Pod", "web-1", Some(true)),
                    endpoint(Some("n1"), "Pod", "web-3", Some(false)),
                ],
            ),
            slice(
                "web-def",
                Some("web"),
                vec![endpoint(Some("n2"), "Pod", "web-2", None)],
            ),
            slice(
                "internal-x",
                Some("web-internal"),
                vec![endpoint(Some("n1"), "Pod", "web-1", Some(true))],
            ),
            // No service label, no node, not a pod: skipped.
            slice(
                "orphan",
                None,
                vec![endpoint(Some("n1"), "Pod", "web-9", Some(true))],
            ),
            slice(
                "odd",
                Some("odd"),
                vec![
                    endpoint(None, "Pod", "web-1", Some(true)),
                    endpoint(Some("n1"), "Node", "n1", Some(true)),
                ],
            ),
        ];
        let map = build_from_slices(&all);
        let services = |node: &str, pod: &str| -> Option<Vec<&str>> {
            let services = map.node(node)?.services("shop", pod)?;
            Some(services.iter().map(|s| &**s).collect())
        };
        assert_eq!(services("n1", "web-1"), Some(vec!["web", "web-internal"]));
        // Ready unknown (nil) counts as ready, as the API says.
        assert_eq!(services("n2", "web-2"), Some(vec!["web"]));
        assert_eq!(services("n1", "web-3"), None);
        assert_eq!(services("n1", "web-9"), None);
        assert_eq!(
            map.node("n1").map(|n| n.namespaces()[0].pods().len()),
            Some(1),
            "{map:?}"
        );
        // The same cluster read from Endpoints maps alike.
        let from_slices = build_from_slices(&all[..3]);
        let endpoints = [
            endpoints(
                "web",
                vec![
                    address(Some("n1"), "Pod", "web-1"),
                    address(Some("n2"), "Pod", "web-2"),
                ],
                vec![address(Some("n1"), "Pod", "web-3")],
            ),
            endpoints(
                "web-internal",
                vec![address(Some("n1"), "Pod", "web-1")],
                vec![],
            ),
        ];
        assert_eq!(from_slices, build(&endpoints));
    }
}
