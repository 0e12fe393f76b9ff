//! The metadata mapper (dca-contract §2): node → namespace → pod → services, from the ready
//! addresses of each Service's Endpoints, or the ready endpoints of its EndpointSlices,
//! whose target is a Pod on a node.

use k8s_openapi::api::core::v1::{Endpoints, ObjectReference};

use crate::metadata::slice::{EndpointSlice, SERVICE_NAME_LABEL};
use crate::node_api::metadata::ServiceMap;

/// Records that `target`, on `node`, backs `service` of `namespace`, when the target is a
/// Pod. The pod's namespace is the Service's unless the reference says otherwise.
fn add(
    map: &mut ServiceMap,
    service: &str,
    namespace: &str,
    node: Option<&String>,
    target: Option<&ObjectReference>,
) {
    let (Some(node), Some(target)) = (node, target) else {
        return;
    };
    if target.kind.as_deref() != Some("Pod") {
        return;
    }
    let Some(pod) = &target.name else { return };
    let pod_namespace = target.namespace.as_deref().unwrap_or(namespace);
    let pods = map
        .nodes
        .entry(node.clone())
        .or_default()
        .entry(pod_namespace.to_owned())
        .or_default();
    match pods.get_mut(pod.as_str()) {
        Some(services) => {
            if !services.contains(service) {
                services.insert(service.to_owned());
            }
        }
        None => {
            pods.insert(pod.clone(), [service.to_owned()].into());
        }
    }
}

/// The map of every node, from all EndpointSlices: a slice names its Service by the
/// `kubernetes.io/service-name` label (a slice without it belongs to no Service); only
/// ready endpoints count, as only ready addresses do in Endpoints.
pub(crate) fn build_from_slices<'a, V: 'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice<V>>,
) -> ServiceMap {
    let mut map = ServiceMap::default();
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
                endpoint.node_name.as_ref(),
                endpoint.target_ref.as_ref(),
            );
        }
    }
    map
}

/// The map of every node, from all Endpoints. Only `subsets[].addresses` count (ready ones);
/// an address without a Pod target or a node name (leader-election endpoints) is skipped.
pub(crate) fn build<'a>(endpoints: impl IntoIterator<Item = &'a Endpoints>) -> ServiceMap {
    let mut map = ServiceMap::default();
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
                address.node_name.as_ref(),
                address.target_ref.as_ref(),
            );
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{EndpointAddress, EndpointSubset, ObjectReference};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn address(node: Option<&str>, kind: &str, pod: &str) -> EndpointAddress {
        EndpointAddress {
            ip: "10.0.0.1".into(),
            node_name: node.map(str::to_owned),
            target_ref: Some(ObjectReference {
                kind: Some(kind.to_owned()),
                name: Some(pod.to_owned()),
                namespace: Some("shop".to_owned()),
                ..ObjectReference::default()
            }),
            ..EndpointAddress::default()
        }
    }

    fn endpoints(
        name: &str,
        ready: Vec<EndpointAddress>,
        not_ready: Vec<EndpointAddress>,
    ) -> Endpoints {
        Endpoints {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("shop".to_owned()),
                ..ObjectMeta::default()
            },
            subsets: Some(vec![EndpointSubset {
                addresses: Some(ready),
                not_ready_addresses: Some(not_ready),
                ..EndpointSubset::default()
            }]),
        }
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
            let pods = map.nodes.get(node)?.get("shop")?;
            Some(pods.get(pod)?.iter().map(String::as_str).collect())
        };
        assert_eq!(services("n1", "web-1"), Some(vec!["web", "web-internal"]));
        assert_eq!(services("n2", "web-2"), Some(vec!["web"]));
        // Not ready: not mapped.
        assert_eq!(services("n1", "web-3"), None);
        assert_eq!(map.nodes.len(), 2, "{map:?}");
        assert_eq!(map.nodes["n1"]["shop"].len(), 1, "{map:?}");
    }

    #[test]
    fn ready_slice_endpoints_map_to_the_service_their_label_names() {
        use crate::metadata::slice::{Conditions, SliceEndpoint, V1};
        let endpoint =
            |node: Option<&str>, kind: &str, pod: &str, ready: Option<bool>| SliceEndpoint {
                conditions: Conditions { ready },
                node_name: node.map(str::to_owned),
                target_ref: address(None, kind, pod).target_ref,
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
            let pods = map.nodes.get(node)?.get("shop")?;
            Some(pods.get(pod)?.iter().map(String::as_str).collect())
        };
        assert_eq!(services("n1", "web-1"), Some(vec!["web", "web-internal"]));
        // Ready unknown (nil) counts as ready, as the API says.
        assert_eq!(services("n2", "web-2"), Some(vec!["web"]));
        assert_eq!(services("n1", "web-3"), None);
        assert_eq!(services("n1", "web-9"), None);
        assert_eq!(map.nodes["n1"]["shop"].len(), 1, "{map:?}");
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
