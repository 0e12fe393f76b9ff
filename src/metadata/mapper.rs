//! The metadata mapper (dca-contract §2): node → namespace → pod → services, from the ready
//! addresses of each Service's Endpoints whose target is a Pod on a known node.

use k8s_openapi::api::core::v1::Endpoints;

use crate::node_api::metadata::ServiceMap;

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
            let (Some(node), Some(target)) = (&address.node_name, &address.target_ref) else {
                continue;
            };
            if target.kind.as_deref() != Some("Pod") {
                continue;
            }
            let Some(pod) = &target.name else { continue };
            // The pod's namespace is the Service's: Endpoints never point across namespaces.
            let pod_namespace = target.namespace.as_ref().unwrap_or(namespace);
            map.nodes
                .entry(node.clone())
                .or_default()
                .entry(pod_namespace.clone())
                .or_default()
                .entry(pod.clone())
                .or_default()
                .insert(service.clone());
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
}
