//! `/api/v1/cluster/id`: one id per cluster, the same from every replica and across
//! restarts. As the Go DCA's `GetOrCreateClusterID`: the ConfigMap `datadog-cluster-id`
//! (key `id`) in our namespace holds it; the first replica to need it writes the UID of the
//! `kube-system` namespace there (so a re-created ConfigMap gets the same id again).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::OnceCell;

use crate::apiserver::seams::Answer;
use crate::error::Cause;

pub(crate) const CONFIGMAP_NAME: &str = "datadog-cluster-id";
pub(crate) const KEY: &str = "id";
const SEED_NAMESPACE: &str = "kube-system";

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ClusterIdError {
    #[error("cannot read or write the ConfigMap {namespace}/{CONFIGMAP_NAME}: {source}")]
    ConfigMap {
        namespace: String,
        #[source]
        source: Cause,
    },
    #[error("cannot read the UID of the {SEED_NAMESPACE} namespace: {source}")]
    Seed {
        #[source]
        source: Cause,
    },
    #[error("the {SEED_NAMESPACE} namespace has no UID")]
    NoUid,
}

/// Where the id comes from: the cluster, or a test's fixed value.
pub(crate) trait ClusterIdSource: Send + Sync + 'static {
    /// Ready once known (it never changes), later while it is read or written.
    fn cluster_id(&self) -> Answer<'_, Result<Arc<str>, ClusterIdError>>;
}

/// The id kept once read: it never changes, so the cluster is asked once per process
/// (a failed attempt is not kept, and the next request asks again).
pub(crate) struct KubeClusterId {
    configmaps: Api<ConfigMap>,
    namespaces: Api<Namespace>,
    namespace: String,
    known: OnceCell<Arc<str>>,
}

impl KubeClusterId {
    pub(crate) fn new(client: kube::Client, namespace: &str) -> Self {
        KubeClusterId {
            configmaps: Api::namespaced(client.clone(), namespace),
            namespaces: Api::all(client),
            namespace: namespace.to_owned(),
            known: OnceCell::new(),
        }
    }

    fn configmap_error(&self, error: kube::Error) -> ClusterIdError {
        ClusterIdError::ConfigMap {
            namespace: self.namespace.clone(),
            source: Cause::new(error),
        }
    }

    async fn seed(&self) -> Result<String, ClusterIdError> {
        let namespace =
            self.namespaces
                .get(SEED_NAMESPACE)
                .await
                .map_err(|e| ClusterIdError::Seed {
                    source: Cause::new(e),
                })?;
        namespace
            .metadata
            .uid
            .filter(|uid| !uid.is_empty())
            .ok_or(ClusterIdError::NoUid)
    }

    /// Reads the ConfigMap; creates it, or adds the missing key, from the seed. A replica
    /// that loses the race to create or update reads what the winner wrote.
    async fn get_or_create(&self) -> Result<Arc<str>, ClusterIdError> {
        for _ in 0..3 {
            let existing = self
                .configmaps
                .get_opt(CONFIGMAP_NAME)
                .await
                .map_err(|e| self.configmap_error(e))?;
            if let Some(id) = existing.as_ref().and_then(id_of) {
                return Ok(Arc::from(id));
            }
            let id = self.seed().await?;
            let written = match existing {
                None => {
                    self.configmaps
                        .create(&PostParams::default(), &new_configmap(&id))
                        .await
                }
                Some(mut cm) => {
                    cm.data
                        .get_or_insert_with(BTreeMap::new)
                        .insert(KEY.to_owned(), id.clone());
                    self.configmaps
                        .replace(CONFIGMAP_NAME, &PostParams::default(), &cm)
                        .await
                }
            };
            match written {
                Ok(_) => {
                    tracing::info!(cluster_id = %id, "wrote the cluster id");
                    return Ok(Arc::from(id));
                }
                // 409: another replica wrote first (create) or in between (update).
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(e) => return Err(self.configmap_error(e)),
            }
        }
        Err(ClusterIdError::ConfigMap {
            namespace: self.namespace.clone(),
            source: Cause::msg("it kept changing while being written"),
        })
    }
}

impl ClusterIdSource for KubeClusterId {
    fn cluster_id(&self) -> Answer<'_, Result<Arc<str>, ClusterIdError>> {
        match self.known.get() {
            Some(id) => Answer::ready(Ok(Arc::clone(id))),
            None => Answer::later(move || async move {
                self.known
                    .get_or_try_init(|| self.get_or_create())
                    .await
                    .cloned()
            }),
        }
    }
}

/// The id a ConfigMap holds, if any (Go takes any value under the key).
fn id_of(cm: &ConfigMap) -> Option<&str> {
    cm.data
        .as_ref()?
        .get(KEY)
        .map(String::as_str)
        .filter(|id| !id.is_empty())
}

fn new_configmap(id: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(CONFIGMAP_NAME.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(KEY.to_owned(), id.to_owned())])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_the_value_under_its_key() {
        let with = |data: Option<&[(&str, &str)]>| ConfigMap {
            data: data.map(|d| {
                d.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            }),
            ..ConfigMap::default()
        };
        let uid = "94e43011-177b-11ea-a4fe-42010a8401d2";
        assert_eq!(id_of(&with(Some(&[("id", uid)]))), Some(uid));
        assert_eq!(id_of(&with(Some(&[("id", "")]))), None);
        assert_eq!(id_of(&with(Some(&[("other", uid)]))), None);
        assert_eq!(id_of(&with(None)), None);
        let fresh = new_configmap(uid);
        assert_eq!(fresh.metadata.name.as_deref(), Some(CONFIGMAP_NAME));
        assert_eq!(id_of(&fresh), Some(uid));
    }
}
