//! Endpoints as the mapper reads them: only the fields it needs, so the watch of a big
//! cluster's Endpoints keeps no IPs, ports, UIDs or resource versions of 150,000 pods.
//! The reference to a pod is shared with EndpointSlices, whose endpoints carry the same.

use std::borrow::Cow;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer};

/// An endpoint's `targetRef`, kept only as far as the mapper reads it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub(crate) struct TargetRef {
    /// Whether `kind` is `Pod`, the only kind mapped.
    #[serde(rename = "kind", default, deserialize_with = "kind_is_pod")]
    pub(crate) is_pod: bool,
    /// Shared with the map, which serves pods by this name.
    #[serde(default, deserialize_with = "shared_str")]
    pub(crate) name: Option<Arc<str>>,
    /// `None` also when it is the Endpoints' own ([`trim_endpoints`] drops the copy).
    pub(crate) namespace: Option<Box<str>>,
}

fn shared_str<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Arc<str>>, D::Error> {
    let name: Option<Box<str>> = Option::deserialize(deserializer)?;
    Ok(name.map(Arc::from))
}

fn kind_is_pod<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    let kind: Option<Cow<'de, str>> = Option::deserialize(deserializer)?;
    Ok(kind.as_deref() == Some("Pod"))
}

#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct Endpoints {
    #[serde(default)]
    pub(crate) metadata: ObjectMeta,
    pub(crate) subsets: Option<Vec<Subset>>,
}

/// Only `addresses` (the ready ones); `notReadyAddresses` and ports are not read.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct Subset {
    pub(crate) addresses: Option<Vec<Address>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Address {
    pub(crate) node_name: Option<Box<str>>,
    pub(crate) target_ref: Option<TargetRef>,
}

/// What the Endpoints watch drops before it stores an object: the metadata the mapper does
/// not read (labels, annotations, managed fields), and each pod reference's copy of the
/// Endpoints' namespace.
pub(crate) fn trim_endpoints(endpoints: &mut Endpoints) {
    let meta = &mut endpoints.metadata;
    meta.managed_fields = None;
    meta.labels = None;
    meta.annotations = None;
    meta.owner_references = None;
    let namespace = meta.namespace.as_deref();
    let targets = endpoints
        .subsets
        .iter_mut()
        .flatten()
        .flat_map(|subset| subset.addresses.iter_mut().flatten())
        .filter_map(|address| address.target_ref.as_mut());
    for target in targets {
        if target.namespace.as_deref() == namespace {
            target.namespace = None;
        }
    }
}

impl kube::Resource for Endpoints {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("Endpoints")
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("endpoints")
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // What the endpoints controller writes, ports, IPs and all; what the store keeps of it.
    #[test]
    fn an_api_servers_endpoints_parse_to_what_the_mapper_reads() {
        let object = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {
                "name": "web", "namespace": "shop", "resourceVersion": "42",
                "labels": {"app": "web"},
                "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "t"},
                "managedFields": [{"manager": "kube-controller-manager"}],
            },
            "subsets": [{
                "addresses": [
                    {"ip": "10.0.0.1", "nodeName": "n1",
                     "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-1",
                                   "uid": "u", "resourceVersion": "7"}},
                    {"ip": "10.0.0.2", "nodeName": "n1",
                     "targetRef": {"kind": "Pod", "namespace": "other", "name": "web-2"}},
                    {"ip": "10.0.0.3", "targetRef": {"kind": "Node", "name": "n1"}},
                    {"ip": "10.0.0.4"},
                ],
                "notReadyAddresses": [{"ip": "10.0.0.5", "nodeName": "n2"}],
                "ports": [{"port": 8080, "protocol": "TCP"}],
            }, {"notReadyAddresses": []}],
        });
        let mut endpoints: Endpoints = serde_json::from_value(object).expect("parses");
        trim_endpoints(&mut endpoints);
        let meta = &endpoints.metadata;
        assert_eq!(
            (meta.name.as_deref(), meta.namespace.as_deref()),
            (Some("web"), Some("shop"))
        );
        assert_eq!(meta.resource_version.as_deref(), Some("42"));
        assert_eq!((&meta.labels, &meta.annotations), (&None, &None));
        assert_eq!(meta.managed_fields, None);
        let subsets = endpoints.subsets.as_deref().expect("subsets");
        assert_eq!(subsets.len(), 2);
        assert!(subsets[1].addresses.is_none());
        let got: Vec<(Option<&str>, Option<TargetRef>)> = subsets[0]
            .addresses
            .iter()
            .flatten()
            .map(|a| (a.node_name.as_deref(), a.target_ref.clone()))
            .collect();
        let target = |is_pod, name: &str, namespace: Option<&str>| TargetRef {
            is_pod,
            name: Some(name.into()),
            namespace: namespace.map(Into::into),
        };
        assert_eq!(
            got,
            [
                // The Endpoints' own namespace is not kept twice.
                (Some("n1"), Some(target(true, "web-1", None))),
                (Some("n1"), Some(target(true, "web-2", Some("other")))),
                (None, Some(target(false, "n1", None))),
                (None, None),
            ]
        );
    }
}
