//! The node and namespace routes: labels, filtered annotations and namespace metadata, in
//! the Go DCA's shapes, from whatever implements [`MetadataSource`].

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use k8s_openapi::api::core::v1::{Namespace, Node};
use serde::Serialize;

use crate::apiserver::response::{Body, json_response};
use crate::node_api::go_error;

/// Where the node-agent API finds the cluster's objects.
pub(crate) trait MetadataSource: Send + Sync + 'static {
    /// The first lists completed.
    fn synced(&self) -> bool;
    fn node(&self, name: &str) -> Option<Arc<Node>>;
    fn namespace(&self, name: &str) -> Option<Arc<Namespace>>;
}

/// The routes of this module, parsed from a path (segments are not decoded: Kubernetes
/// names are plain DNS labels and subdomains).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetadataRoute<'a> {
    NodeLabels(&'a str),
    NodeAnnotations(&'a str),
    NamespaceLabels(&'a str),
    NamespaceMetadata(&'a str),
}

pub(crate) fn parse(path: &str) -> Option<MetadataRoute<'_>> {
    let rest = path.strip_prefix("/api/v1/")?;
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
    if !source.synced() {
        return go_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster metadata is not synced yet",
            false,
        );
    }
    match route {
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
            ("/api/v1/tags/pod/n1", None),
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
        fn node(&self, name: &str) -> Option<Arc<Node>> {
            (name == "n1").then(|| {
                Arc::new(Node {
                    metadata: meta(
                        "n1",
                        &[("kubernetes.io/os", "linux")],
                        &[("cluster.k8s.io/machine", "m-1"), ("other", "x")],
                    ),
                    ..Node::default()
                })
            })
        }
        fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
            match name {
                "team-a" => Some(Arc::new(Namespace {
                    metadata: meta("team-a", &[("team", "a")], &[("owner", "ops")]),
                    ..Namespace::default()
                })),
                "bare" => Some(Arc::new(Namespace {
                    metadata: meta("bare", &[], &[]),
                    ..Namespace::default()
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
