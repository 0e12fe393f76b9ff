//! The node and namespace routes: labels, filtered annotations and namespace metadata, in
//! the Go DCA's shapes, from whatever implements [`MetadataSource`].

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::core::PartialObjectMeta;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::apiserver::response::{Body, json_response};
use crate::node_api::go_error;
use crate::node_api::service_map::{NodePods, Pod, ServiceMap};

/// A Node as the node-agent API reads it: its metadata, all that is served (the watch asks
/// the API server for metadata only, so a node's status, most of its size and changing
/// every few seconds, never reaches us).
pub(crate) type NodeMeta = PartialObjectMeta<Node>;
/// A Namespace as the node-agent API reads it (see [`NodeMeta`]).
pub(crate) type NamespaceMeta = PartialObjectMeta<Namespace>;

/// Where the node-agent API finds the cluster's objects.
pub(crate) trait MetadataSource: Send + Sync + 'static {
    /// The first lists completed.
    fn synced(&self) -> bool;
    fn node(&self, name: &str) -> Option<Arc<NodeMeta>>;
    fn namespace(&self, name: &str) -> Option<Arc<NamespaceMeta>>;
    /// The names of the nodes listed, in no particular order.
    fn node_names(&self) -> Vec<String>;
    /// How many namespaces are listed (for `status`).
    fn namespace_count(&self) -> usize;
    /// The pod → services map, shared (never copied per request).
    fn services(&self) -> Result<Arc<ServiceMap>, MapperUnavailable>;
}

/// Why there is no pod → services map to answer from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MapperUnavailable {
    /// The first list of endpoints is not in yet.
    NotSynced,
    /// `kubernetes_collect_metadata_tags` is false.
    Disabled,
}

/// The routes of this module, parsed from a path (segments are not decoded: Kubernetes
/// names are plain DNS labels and subdomains).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetadataRoute<'a> {
    /// `/api/v1/tags/pod` (internal, for `metamap`): every node's bundle.
    AllPods,
    NodeLabels(&'a str),
    NodeAnnotations(&'a str),
    NamespaceLabels(&'a str),
    NamespaceMetadata(&'a str),
    /// `/api/v1/tags/pod/{node}`: the node's bundle.
    PodsOfNode(&'a str),
    /// `/api/v1/tags/pod/{node}/{ns}/{pod}`: `kube_service:` tags.
    PodTags {
        node: &'a str,
        namespace: &'a str,
        pod: &'a str,
    },
}

pub(crate) fn parse(path: &str) -> Option<MetadataRoute<'_>> {
    let rest = path.strip_prefix("/api/v1/")?;
    if rest == "tags/pod" {
        return Some(MetadataRoute::AllPods);
    }
    if let Some(pods) = rest.strip_prefix("tags/pod/") {
        let parts: Vec<&str> = pods.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        return match parts.as_slice() {
            [node] => Some(MetadataRoute::PodsOfNode(node)),
            [node, namespace, pod] => Some(MetadataRoute::PodTags {
                node,
                namespace,
                pod,
            }),
            _ => None,
        };
    }
    let (kind, name) = rest.rsplit_once('/')?;
    if name.is_empty() {
        return None;
    }
    Some(match kind {
        "tags/node" => MetadataRoute::NodeLabels(name),
        "annotations/node" => MetadataRoute::NodeAnnotations(name),
        "tags/namespace" => MetadataRoute::NamespaceLabels(name),
        "metadata/namespace" => MetadataRoute::NamespaceMetadata(name),
        _ => return None,
    })
}

/// Go's `pkg/workloadmeta` EntityMeta: no json tags, hence the capitalised keys.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EntityMeta<'a> {
    name: &'a str,
    namespace: &'a str,
    annotations: &'a BTreeMap<String, String>,
    labels: &'a BTreeMap<String, String>,
}

static EMPTY: BTreeMap<String, String> = BTreeMap::new();

/// A Go `sets.Set[string]` on the wire: `{"a":{},"b":{}}`.
struct GoSet<'a>(&'a [Arc<str>]);

impl Serialize for GoSet<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Empty {}
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for name in self.0 {
            map.serialize_entry(&**name, &Empty {})?;
        }
        map.end()
    }
}

/// `apiv1.MetadataResponseBundle`.
struct Bundle<'a>(&'a NodePods);

impl Serialize for Bundle<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Namespaces<'a>(&'a NodePods);
        struct Pods<'a>(&'a [Pod]);
        impl Serialize for Pods<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_map(self.0.iter().map(|pod| (pod.name(), GoSet(pod.services()))))
            }
        }
        impl Serialize for Namespaces<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let namespaces = self.0.namespaces().iter();
                serializer.collect_map(namespaces.map(|ns| (ns.name(), Pods(ns.pods()))))
            }
        }
        // Go's `services,omitempty`: a node without pods is `{}`.
        let mut map = serializer.serialize_map(Some(usize::from(!self.0.is_empty())))?;
        if !self.0.is_empty() {
            map.serialize_entry("services", &Namespaces(self.0))?;
        }
        map.end()
    }
}

/// `apiv1.MetadataResponse`: node bundles, warnings for unknown nodes (still a 200, as Go
/// answers), and on the all-nodes route the error that stopped it.
#[derive(Serialize, Default)]
struct MetadataResponse<'a> {
    #[serde(rename = "Nodes", skip_serializing_if = "BTreeMap::is_empty")]
    nodes: BTreeMap<&'a str, Bundle<'a>>,
    #[serde(rename = "Warnings", skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    #[serde(rename = "Errors", skip_serializing_if = "str::is_empty")]
    errors: &'a str,
}

const NOT_SYNCED: &str = "the cluster metadata is not synced yet";
const MAPPER_NOT_SYNCED: &str = "the metadata mapper is not synced yet";
const MAPPER_DISABLED: &str = "the metadata mapper is disabled (kubernetes_collect_metadata_tags)";

/// The all-nodes route answers its errors in JSON (`Errors`), which `metamap` renders, as
/// the Go DCA's `getAllMetadata` does.
fn all_pods(source: &dyn MetadataSource) -> Response<Body> {
    let failure = |code: StatusCode, errors: &str| {
        let mut response = json(&MetadataResponse {
            errors,
            ..MetadataResponse::default()
        });
        *response.status_mut() = code;
        response
    };
    if !source.synced() {
        return failure(StatusCode::SERVICE_UNAVAILABLE, NOT_SYNCED);
    }
    let map = match source.services() {
        Ok(map) => map,
        Err(MapperUnavailable::NotSynced) => {
            return failure(StatusCode::SERVICE_UNAVAILABLE, MAPPER_NOT_SYNCED);
        }
        Err(MapperUnavailable::Disabled) => {
            return failure(StatusCode::NOT_FOUND, MAPPER_DISABLED);
        }
    };
    let names = source.node_names();
    let no_pods = NodePods::default();
    let nodes = names
        .iter()
        .map(|name| {
            let pods = map.node(name).unwrap_or(&no_pods);
            (name.as_str(), Bundle(pods))
        })
        .collect();
    json(&MetadataResponse {
        nodes,
        ..MetadataResponse::default()
    })
}

fn json<T: Serialize>(value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => json_response(StatusCode::OK, Bytes::from(body), false),
        Err(e) => go_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), false),
    }
}

/// The answer to `route`. Unknown objects are Go's 500 with workloadmeta's wording.
pub(crate) fn answer(
    source: &dyn MetadataSource,
    route: MetadataRoute<'_>,
    host_alias_annotations: &[String],
) -> Response<Body> {
    if route == MetadataRoute::AllPods {
        return all_pods(source);
    }
    if !source.synced() {
        return go_error(StatusCode::SERVICE_UNAVAILABLE, NOT_SYNCED, false);
    }
    match route {
        MetadataRoute::AllPods => all_pods(source),
        MetadataRoute::PodsOfNode(node) | MetadataRoute::PodTags { node, .. } => {
            let map = match source.services() {
                Ok(map) => map,
                Err(MapperUnavailable::NotSynced) => {
                    return go_error(StatusCode::SERVICE_UNAVAILABLE, MAPPER_NOT_SYNCED, false);
                }
                Err(MapperUnavailable::Disabled) => {
                    return go_error(StatusCode::NOT_FOUND, MAPPER_DISABLED, false);
                }
            };
            let pods = map.node(node);
            if let MetadataRoute::PodTags { namespace, pod, .. } = route {
                // Go answers `null` when nothing is known of the pod.
                let tags: Option<Vec<String>> =
                    pods.and_then(|p| p.services(namespace, pod))
                        .map(|services| {
                            services
                                .iter()
                                .map(|s| format!("kube_service:{s}"))
                                .collect()
                        });
                return json(&tags);
            }
            // A known node without pods is an empty bundle; an unknown one a warning.
            let no_pods = NodePods::default();
            let bundle = pods.or_else(|| source.node(node).map(|_| &no_pods));
            let response = match bundle {
                Some(pods) => MetadataResponse {
                    nodes: BTreeMap::from([(node, Bundle(pods))]),
                    ..MetadataResponse::default()
                },
                None => MetadataResponse {
                    warnings: vec![format!(
                        "Node {node} could not be added to the metadata map bundle: the key \
                         agent/KubernetesMetadataMapping/{node} was not found in the cache"
                    )],
                    ..MetadataResponse::default()
                },
            };
            json(&response)
        }
        MetadataRoute::NodeLabels(name) | MetadataRoute::NodeAnnotations(name) => {
            let Some(node) = source.node(name) else {
                return not_found("nodes", name);
            };
            let meta = &node.metadata;
            if matches!(route, MetadataRoute::NodeLabels(_)) {
                json(meta.labels.as_ref().unwrap_or(&EMPTY))
            } else {
                json(&filter_annotations(
                    meta.annotations.as_ref().unwrap_or(&EMPTY),
                    host_alias_annotations,
                ))
            }
        }
        MetadataRoute::NamespaceLabels(name) | MetadataRoute::NamespaceMetadata(name) => {
            let Some(namespace) = source.namespace(name) else {
                return not_found("namespaces", name);
            };
            let meta = &namespace.metadata;
            if matches!(route, MetadataRoute::NamespaceLabels(_)) {
                json(meta.labels.as_ref().unwrap_or(&EMPTY))
            } else {
                json(&EntityMeta {
                    name: meta.name.as_deref().unwrap_or(name),
                    namespace: "",
                    annotations: meta.annotations.as_ref().unwrap_or(&EMPTY),
                    labels: meta.labels.as_ref().unwrap_or(&EMPTY),
                })
            }
        }
    }
}

fn not_found(kind: &str, name: &str) -> Response<Body> {
    go_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        &format!("\"/{kind}//{name}\" not found"),
        false,
    )
}

/// Only the annotations `kubernetes_node_annotations_as_host_aliases` names.
fn filter_annotations<'a>(
    annotations: &'a BTreeMap<String, String>,
    wanted: &[String],
) -> BTreeMap<&'a str, &'a str> {
    annotations
        .iter()
        .filter(|(key, _)| wanted.iter().any(|w| w == *key))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::node_api::service_map::map_of;

    #[test]
    fn routes() {
        let cases = [
            (
                "/api/v1/tags/node/n1",
                Some(MetadataRoute::NodeLabels("n1")),
            ),
            (
                "/api/v1/annotations/node/n1",
                Some(MetadataRoute::NodeAnnotations("n1")),
            ),
            (
                "/api/v1/tags/namespace/ns",
                Some(MetadataRoute::NamespaceLabels("ns")),
            ),
            (
                "/api/v1/metadata/namespace/ns",
                Some(MetadataRoute::NamespaceMetadata("ns")),
            ),
            ("/api/v1/tags/node/", None),
            ("/api/v1/tags/node", None),
            ("/api/v1/tags/node/a/b", None),
            ("/api/v1/tags/pod/n1", Some(MetadataRoute::PodsOfNode("n1"))),
            (
                "/api/v1/tags/pod/n1/default/web-1",
                Some(MetadataRoute::PodTags {
                    node: "n1",
                    namespace: "default",
                    pod: "web-1",
                }),
            ),
            ("/api/v1/tags/pod/n1/default", None),
            ("/api/v1/tags/pod/n1//web-1", None),
            ("/api/v1/tags/pod/", None),
            ("/api/v1/tags/pod", Some(MetadataRoute::AllPods)),
            ("/version", None),
        ];
        for (path, want) in cases {
            assert_eq!(parse(path), want, "{path}");
        }
    }

    struct Fixed {
        synced: bool,
    }

    fn meta(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
        let map = |pairs: &[(&str, &str)]| {
            (!pairs.is_empty()).then(|| {
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            })
        };
        ObjectMeta {
            name: Some(name.to_owned()),
            labels: map(labels),
            annotations: map(annotations),
            ..ObjectMeta::default()
        }
    }

    impl MetadataSource for Fixed {
        fn synced(&self) -> bool {
            self.synced
        }
        fn namespace_count(&self) -> usize {
            1
        }
        fn services(&self) -> Result<Arc<ServiceMap>, MapperUnavailable> {
            if !self.synced {
                return Err(MapperUnavailable::NotSynced);
            }
            Ok(Arc::new(map_of(&[
                ("n1", "default", "web-1", "web"),
                ("n1", "default", "web-1", "web-internal"),
                ("n1", "default", "db-0", "db"),
            ])))
        }
        fn node(&self, name: &str) -> Option<Arc<NodeMeta>> {
            (name == "n1").then(|| {
                Arc::new(NodeMeta {
                    metadata: meta(
                        "n1",
                        &[("kubernetes.io/os", "linux")],
                        &[("cluster.k8s.io/machine", "m-1"), ("other", "x")],
                    ),
                    ..NodeMeta::default()
                })
            })
        }
        fn node_names(&self) -> Vec<String> {
            // A node without pods, listed before one with: the answer sorts them.
            vec!["n3".to_owned(), "n1".to_owned()]
        }
        fn namespace(&self, name: &str) -> Option<Arc<NamespaceMeta>> {
            match name {
                "team-a" => Some(Arc::new(NamespaceMeta {
                    metadata: meta("team-a", &[("team", "a")], &[("owner", "ops")]),
                    ..NamespaceMeta::default()
                })),
                "bare" => Some(Arc::new(NamespaceMeta {
                    metadata: meta("bare", &[], &[]),
                    ..NamespaceMeta::default()
                })),
                _ => None,
            }
        }
    }

    fn body(response: Response<Body>) -> (u16, String) {
        let status = response.status().as_u16();
        let bytes = futures::executor::block_on(response.into_body().collect())
            .unwrap()
            .to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[test]
    fn answers_in_the_go_shapes() {
        let source = Fixed { synced: true };
        let aliases = vec!["cluster.k8s.io/machine".to_owned()];
        let cases = [
            (
                MetadataRoute::NodeLabels("n1"),
                200,
                r#"{"kubernetes.io/os":"linux"}"#,
            ),
            (
                MetadataRoute::NodeAnnotations("n1"),
                200,
                r#"{"cluster.k8s.io/machine":"m-1"}"#,
            ),
            (
                MetadataRoute::NodeLabels("n2"),
                500,
                "\"/nodes//n2\" not found\n",
            ),
            (
                MetadataRoute::NamespaceLabels("team-a"),
                200,
                r#"{"team":"a"}"#,
            ),
            (MetadataRoute::NamespaceLabels("bare"), 200, "{}"),
            (
                MetadataRoute::NamespaceMetadata("team-a"),
                200,
                r#"{"Name":"team-a","Namespace":"","Annotations":{"owner":"ops"},"Labels":{"team":"a"}}"#,
            ),
            (
                MetadataRoute::NamespaceLabels("gone"),
                500,
                "\"/namespaces//gone\" not found\n",
            ),
            (
                MetadataRoute::PodsOfNode("n1"),
                200,
                r#"{"Nodes":{"n1":{"services":{"default":{"db-0":{"db":{}},"web-1":{"web":{},"web-internal":{}}}}}}}"#,
            ),
            (
                MetadataRoute::AllPods,
                200,
                r#"{"Nodes":{"n1":{"services":{"default":{"db-0":{"db":{}},"web-1":{"web":{},"web-internal":{}}}}},"n3":{}}}"#,
            ),
            (
                MetadataRoute::PodsOfNode("n9"),
                200,
                r#"{"Warnings":["Node n9 could not be added to the metadata map bundle: the key agent/KubernetesMetadataMapping/n9 was not found in the cache"]}"#,
            ),
            (
                MetadataRoute::PodTags {
                    node: "n1",
                    namespace: "default",
                    pod: "web-1",
                },
                200,
                r#"["kube_service:web","kube_service:web-internal"]"#,
            ),
            (
                MetadataRoute::PodTags {
                    node: "n1",
                    namespace: "default",
                    pod: "gone",
                },
                200,
                "null",
            ),
        ];
        for (route, code, want) in cases {
            assert_eq!(
                body(answer(&source, route, &aliases)),
                (code, want.to_owned()),
                "{route:?}"
            );
        }
        // No alias configured: no annotation passes.
        assert_eq!(
            body(answer(&source, MetadataRoute::NodeAnnotations("n1"), &[])),
            (200, "{}".to_owned())
        );
        // Before the first lists: not a guess.
        let unsynced = Fixed { synced: false };
        let (code, _) = body(answer(&unsynced, MetadataRoute::NodeLabels("n1"), &aliases));
        assert_eq!(code, 503);
    }
}
