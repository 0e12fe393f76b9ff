//! EndpointSlices as the mapper reads them: only the fields it needs, so a watch of a big
//! cluster's slices keeps no addresses, ports or hints. One type serves
//! `discovery.k8s.io/v1` and `v1beta1` (the same fields in both), told apart by a marker,
//! because a 1.20 API server has only `v1beta1` and 1.25 and later only `v1`.

use std::borrow::Cow;
use std::fmt::Debug;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use crate::metadata::endpoints::TargetRef;

/// The label the EndpointSlice controller sets to the Service's name.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

pub(crate) trait SliceVersion: Clone + Debug + Send + Sync + 'static {
    const VERSION: &'static str;
}

#[derive(Clone, Debug)]
pub(crate) struct V1;

impl SliceVersion for V1 {
    const VERSION: &'static str = "v1";
}

#[derive(Clone, Debug)]
pub(crate) struct V1beta1;

impl SliceVersion for V1beta1 {
    const VERSION: &'static str = "v1beta1";
}

#[derive(Clone, Debug, Deserialize)]
#[serde(bound = "")]
pub(crate) struct EndpointSlice<V> {
    #[serde(default)]
    pub(crate) metadata: ObjectMeta,
    #[serde(default)]
    pub(crate) endpoints: Vec<SliceEndpoint>,
    #[serde(skip)]
    version: PhantomData<V>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SliceEndpoint {
    #[serde(default)]
    pub(crate) conditions: Conditions,
    /// In `v1beta1` only with the `EndpointSliceNodeName` feature gate (1.20 alpha); set
    /// by every `v1` controller.
    pub(crate) node_name: Option<Box<str>>,
    pub(crate) target_ref: Option<TargetRef>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct Conditions {
    /// The API: "nil should be interpreted as ready".
    pub(crate) ready: Option<bool>,
}

impl<V> EndpointSlice<V> {
    #[cfg(test)]
    pub(crate) fn new(metadata: ObjectMeta, endpoints: Vec<SliceEndpoint>) -> Self {
        EndpointSlice {
            metadata,
            endpoints,
            version: PhantomData,
        }
    }
}

impl<V: SliceVersion> kube::Resource for EndpointSlice<V> {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("EndpointSlice")
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("discovery.k8s.io")
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(V::VERSION)
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("endpointslices")
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}
