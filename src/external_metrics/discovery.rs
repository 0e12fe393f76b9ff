//! Discovery documents (contract §1.2) and `/version`, built once.
//!
//! The group-version document is the one that matters: the aggregator's availability check
//! and its legacy discovery fallback both read it, and an empty `resources` list breaks
//! client-go's discovery caches (kubectl, Helm, Flux, Argo). It lists the single fixed
//! `externalmetrics` resource, never one entry per metric (which made KEDA's discovery time
//! out) and never nothing.

use serde::Serialize;

use crate::external_metrics::negotiate::Offer;
use crate::external_metrics::static_doc::StaticDoc;
use crate::external_metrics::{GROUP, GROUP_VERSION, LIST_KIND, RESOURCE, SINGULAR, VERSION};

#[derive(Serialize)]
struct GroupVersionForDiscovery {
    #[serde(rename = "groupVersion")]
    group_version: &'static str,
    version: &'static str,
}

const OUR_VERSION: GroupVersionForDiscovery = GroupVersionForDiscovery {
    group_version: GROUP_VERSION,
    version: VERSION,
};

/// `metav1.APIGroup`. Inside a list its TypeMeta is empty and omitted.
#[derive(Serialize)]
struct ApiGroup {
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(rename = "apiVersion", skip_serializing_if = "Option::is_none")]
    api_version: Option<&'static str>,
    name: &'static str,
    versions: [GroupVersionForDiscovery; 1],
    #[serde(rename = "preferredVersion")]
    preferred_version: GroupVersionForDiscovery,
}

fn api_group(type_meta: bool) -> ApiGroup {
    ApiGroup {
        kind: type_meta.then_some("APIGroup"),
        api_version: type_meta.then_some("v1"),
        name: GROUP,
        versions: [OUR_VERSION],
        preferred_version: OUR_VERSION,
    }
}

#[derive(Serialize)]
struct ApiGroupList {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    groups: [ApiGroup; 1],
}

/// `metav1.APIResource`; `singularName` is not `omitempty` in Go, so it is written empty.
#[derive(Serialize)]
struct ApiResource {
    name: &'static str,
    #[serde(rename = "singularName")]
    singular_name: &'static str,
    namespaced: bool,
    kind: &'static str,
    verbs: [&'static str; 1],
}

#[derive(Serialize)]
struct ApiResourceList {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    #[serde(rename = "groupVersion")]
    group_version: &'static str,
    resources: [ApiResource; 1],
}

// apidiscovery.k8s.io/v2 (and v2beta1, same shape).

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct NameOnly {
    name: &'static str,
}

#[derive(Serialize)]
struct GroupVersionKind {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
}

#[derive(Serialize)]
struct ApiResourceDiscovery {
    resource: &'static str,
    #[serde(rename = "responseKind")]
    response_kind: GroupVersionKind,
    scope: &'static str,
    #[serde(rename = "singularResource")]
    singular_resource: &'static str,
    verbs: [&'static str; 1],
}

#[derive(Serialize)]
struct ApiVersionDiscovery {
    version: &'static str,
    resources: [ApiResourceDiscovery; 1],
    freshness: &'static str,
}

#[derive(Serialize)]
struct ApiGroupDiscovery {
    metadata: NameOnly,
    versions: [ApiVersionDiscovery; 1],
}

#[derive(Serialize)]
struct ApiGroupDiscoveryList {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    metadata: Empty,
    items: [ApiGroupDiscovery; 1],
}

/// Kubernetes' `version.Info`.
#[derive(Serialize)]
struct VersionInfo {
    major: String,
    minor: String,
    #[serde(rename = "gitVersion")]
    git_version: String,
    #[serde(rename = "gitCommit")]
    git_commit: &'static str,
    /// Unknown to the build; Go leaves it empty in the same case.
    #[serde(rename = "gitTreeState")]
    git_tree_state: &'static str,
    #[serde(rename = "buildDate")]
    build_date: &'static str,
    /// The field clients read for the toolchain; ours is rustc.
    #[serde(rename = "goVersion")]
    go_version: &'static str,
    compiler: &'static str,
    platform: String,
}

fn to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    // Structs of strings, booleans and arrays always serialise; the fallback is unreachable
    // but keeps this total.
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

pub fn api_group_list_json() -> Vec<u8> {
    to_vec(&ApiGroupList {
        kind: "APIGroupList",
        api_version: "v1",
        groups: [api_group(false)],
    })
}

pub fn api_group_json() -> Vec<u8> {
    to_vec(&api_group(true))
}

pub fn api_resource_list_json() -> Vec<u8> {
    to_vec(&ApiResourceList {
        kind: "APIResourceList",
        api_version: "v1",
        group_version: GROUP_VERSION,
        resources: [ApiResource {
            name: RESOURCE,
            singular_name: "",
            namespaced: true,
            kind: LIST_KIND,
            verbs: ["get"],
        }],
    })
}

/// The aggregated discovery document in `apidiscovery.k8s.io/<version>`.
pub fn aggregated_discovery_json(api_version: &'static str) -> Vec<u8> {
    to_vec(&ApiGroupDiscoveryList {
        kind: "APIGroupDiscoveryList",
        api_version,
        metadata: Empty {},
        items: [ApiGroupDiscovery {
            metadata: NameOnly { name: GROUP },
            versions: [ApiVersionDiscovery {
                version: VERSION,
                resources: [ApiResourceDiscovery {
                    resource: RESOURCE,
                    response_kind: GroupVersionKind {
                        group: GROUP,
                        version: VERSION,
                        kind: LIST_KIND,
                    },
                    scope: "Namespaced",
                    singular_resource: SINGULAR,
                    verbs: ["get"],
                }],
                freshness: "Current",
            }],
        }],
    })
}

pub fn version_json() -> Vec<u8> {
    let (major, minor, patch) = crate::version::parts();
    to_vec(&VersionInfo {
        major: major.to_string(),
        minor: minor.to_string(),
        git_version: format!("v{major}.{minor}.{patch}"),
        git_commit: crate::version::COMMIT,
        git_tree_state: "",
        build_date: crate::version::BUILD_DATE,
        go_version: crate::version::RUSTC,
        compiler: "rustc",
        platform: platform(),
    })
}

/// `GOOS/GOARCH`, with Go's architecture names, which is what clients compare.
fn platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        other => other,
    };
    format!("{}/{arch}", std::env::consts::OS)
}

/// Every discovery document, serialised once.
#[derive(Debug, Clone)]
pub struct DiscoveryDocs {
    pub api_group_list: StaticDoc,
    pub aggregated_v2: StaticDoc,
    pub aggregated_v2beta1: StaticDoc,
    pub api_group: StaticDoc,
    pub api_resource_list: StaticDoc,
    pub version: StaticDoc,
}

impl DiscoveryDocs {
    pub fn build() -> Self {
        DiscoveryDocs {
            api_group_list: StaticDoc::new(api_group_list_json(), Offer::Json.content_type()),
            aggregated_v2: StaticDoc::new(
                aggregated_discovery_json("apidiscovery.k8s.io/v2"),
                Offer::DiscoveryV2.content_type(),
            ),
            aggregated_v2beta1: StaticDoc::new(
                aggregated_discovery_json("apidiscovery.k8s.io/v2beta1"),
                Offer::DiscoveryV2Beta1.content_type(),
            ),
            api_group: StaticDoc::new(api_group_json(), Offer::Json.content_type()),
            api_resource_list: StaticDoc::new(api_resource_list_json(), Offer::Json.content_type()),
            version: StaticDoc::new(version_json(), Offer::Json.content_type()),
        }
    }

    /// The `/apis` document in the negotiated representation.
    pub fn apis(&self, offer: Offer) -> &StaticDoc {
        match offer {
            Offer::Json => &self.api_group_list,
            Offer::DiscoveryV2 => &self.aggregated_v2,
            Offer::DiscoveryV2Beta1 => &self.aggregated_v2beta1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: Vec<u8>) -> String {
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn api_resource_list_golden() {
        // Exactly custom-metrics-apiserver's document with the default provider (§1.2).
        assert_eq!(
            s(api_resource_list_json()),
            r#"{"kind":"APIResourceList","apiVersion":"v1","groupVersion":"external.metrics.k8s.io/v1beta1","resources":[{"name":"externalmetrics","singularName":"","namespaced":true,"kind":"ExternalMetricValueList","verbs":["get"]}]}"#
        );
    }

    #[test]
    fn api_group_golden() {
        assert_eq!(
            s(api_group_json()),
            r#"{"kind":"APIGroup","apiVersion":"v1","name":"external.metrics.k8s.io","versions":[{"groupVersion":"external.metrics.k8s.io/v1beta1","version":"v1beta1"}],"preferredVersion":{"groupVersion":"external.metrics.k8s.io/v1beta1","version":"v1beta1"}}"#
        );
    }

    #[test]
    fn api_group_list_golden() {
        assert_eq!(
            s(api_group_list_json()),
            r#"{"kind":"APIGroupList","apiVersion":"v1","groups":[{"name":"external.metrics.k8s.io","versions":[{"groupVersion":"external.metrics.k8s.io/v1beta1","version":"v1beta1"}],"preferredVersion":{"groupVersion":"external.metrics.k8s.io/v1beta1","version":"v1beta1"}}]}"#
        );
    }

    #[test]
    fn aggregated_discovery_golden() {
        assert_eq!(
            s(aggregated_discovery_json("apidiscovery.k8s.io/v2")),
            r#"{"kind":"APIGroupDiscoveryList","apiVersion":"apidiscovery.k8s.io/v2","metadata":{},"items":[{"metadata":{"name":"external.metrics.k8s.io"},"versions":[{"version":"v1beta1","resources":[{"resource":"externalmetrics","responseKind":{"group":"external.metrics.k8s.io","version":"v1beta1","kind":"ExternalMetricValueList"},"scope":"Namespaced","singularResource":"externalmetric","verbs":["get"]}],"freshness":"Current"}]}]}"#
        );
    }

    #[test]
    fn version_has_the_kubernetes_version_info_shape() {
        let v: serde_json::Value = serde_json::from_slice(&version_json()).unwrap();
        let (major, minor, patch) = crate::version::parts();
        assert_eq!(v["major"], major.to_string());
        assert_eq!(v["minor"], minor.to_string());
        assert_eq!(v["gitVersion"], format!("v{major}.{minor}.{patch}"));
        assert_eq!(v["gitCommit"], crate::version::COMMIT);
        assert_eq!(v["compiler"], "rustc");
        let platform = v["platform"].as_str().unwrap();
        assert!(platform.starts_with(std::env::consts::OS), "{platform}");
        for key in ["gitTreeState", "buildDate", "goVersion"] {
            assert!(v[key].is_string(), "{key}");
        }
    }

    #[test]
    fn representations_have_distinct_etags() {
        let docs = DiscoveryDocs::build();
        assert_ne!(docs.api_group_list.etag, docs.aggregated_v2.etag);
        assert_ne!(docs.aggregated_v2.etag, docs.aggregated_v2beta1.etag);
        assert_eq!(
            docs.apis(Offer::DiscoveryV2).content_type,
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        );
    }
}
