//! The discovery shapes of `metav1` (`APIGroupList`, `APIGroup`, `APIResourceList`) and of
//! `apidiscovery.k8s.io/v2` (`APIGroupDiscoveryList`), written for one group-version.
//!
//! Declared here rather than taken from k8s-openapi's `meta::v1` types: clients and our
//! golden tests compare these documents byte for byte with Go's, whose field order
//! (TypeMeta first, then declaration order) k8s-openapi's serialisers do not keep.

use serde::Serialize;

/// One resource of a group-version, as discovery lists it.
#[derive(Debug, Clone, Copy)]
pub struct ResourceSpec {
    pub name: &'static str,
    /// `APIResource.singularName`: not `omitempty` in Go, so written even when empty.
    pub singular_name: &'static str,
    /// The singular the aggregated document names.
    pub singular_resource: &'static str,
    pub namespaced: bool,
    pub kind: &'static str,
    pub verbs: &'static [&'static str],
}

/// The one group-version an aggregated API server serves.
#[derive(Debug, Clone, Copy)]
pub struct GroupVersionSpec {
    pub group: &'static str,
    pub version: &'static str,
    /// `group/version`.
    pub group_version: &'static str,
    pub resources: &'static [ResourceSpec],
}

#[derive(Serialize)]
struct GroupVersionForDiscovery {
    #[serde(rename = "groupVersion")]
    group_version: &'static str,
    version: &'static str,
}

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

fn version_for_discovery(spec: &GroupVersionSpec) -> GroupVersionForDiscovery {
    GroupVersionForDiscovery {
        group_version: spec.group_version,
        version: spec.version,
    }
}

fn api_group(spec: &GroupVersionSpec, type_meta: bool) -> ApiGroup {
    ApiGroup {
        kind: type_meta.then_some("APIGroup"),
        api_version: type_meta.then_some("v1"),
        name: spec.group,
        versions: [version_for_discovery(spec)],
        preferred_version: version_for_discovery(spec),
    }
}

#[derive(Serialize)]
struct ApiGroupList {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    groups: [ApiGroup; 1],
}

/// `metav1.APIResource`.
#[derive(Serialize)]
struct ApiResource {
    name: &'static str,
    #[serde(rename = "singularName")]
    singular_name: &'static str,
    namespaced: bool,
    kind: &'static str,
    verbs: &'static [&'static str],
}

#[derive(Serialize)]
struct ApiResourceList {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    #[serde(rename = "groupVersion")]
    group_version: &'static str,
    resources: Vec<ApiResource>,
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
    verbs: &'static [&'static str],
}

#[derive(Serialize)]
struct ApiVersionDiscovery {
    version: &'static str,
    resources: Vec<ApiResourceDiscovery>,
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

pub(crate) fn to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    // Structs of strings, booleans and arrays always serialise; the fallback is unreachable
    // but keeps this total.
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

pub(crate) fn api_group_list_json(spec: &GroupVersionSpec) -> Vec<u8> {
    to_vec(&ApiGroupList {
        kind: "APIGroupList",
        api_version: "v1",
        groups: [api_group(spec, false)],
    })
}

pub(crate) fn api_group_json(spec: &GroupVersionSpec) -> Vec<u8> {
    to_vec(&api_group(spec, true))
}

pub(crate) fn api_resource_list_json(spec: &GroupVersionSpec) -> Vec<u8> {
    to_vec(&ApiResourceList {
        kind: "APIResourceList",
        api_version: "v1",
        group_version: spec.group_version,
        resources: spec
            .resources
            .iter()
            .map(|r| ApiResource {
                name: r.name,
                singular_name: r.singular_name,
                namespaced: r.namespaced,
                kind: r.kind,
                verbs: r.verbs,
            })
            .collect(),
    })
}

/// The aggregated discovery document in `apidiscovery.k8s.io/<version>`.
pub(crate) fn aggregated_discovery_json(
    spec: &GroupVersionSpec,
    api_version: &'static str,
) -> Vec<u8> {
    to_vec(&ApiGroupDiscoveryList {
        kind: "APIGroupDiscoveryList",
        api_version,
        metadata: Empty {},
        items: [ApiGroupDiscovery {
            metadata: NameOnly { name: spec.group },
            versions: [ApiVersionDiscovery {
                version: spec.version,
                resources: spec
                    .resources
                    .iter()
                    .map(|r| ApiResourceDiscovery {
                        resource: r.name,
                        response_kind: GroupVersionKind {
                            group: spec.group,
                            version: spec.version,
                            kind: r.kind,
                        },
                        scope: if r.namespaced {
                            "Namespaced"
                        } else {
                            "Cluster"
                        },
                        singular_resource: r.singular_resource,
                        verbs: r.verbs,
                    })
                    .collect(),
                freshness: "Current",
            }],
        }],
    })
}
