//! The Kubernetes client, the namespace our objects live in, and what API versions the
//! server offers (we run on 1.20 test clusters and on current ones).

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::config::Settings;

const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("cannot load the in-cluster Kubernetes configuration: {0}")]
    InCluster(String),
    #[error("cannot load kubeconfig {path}: {message} (setting kubernetes_kubeconfig_path)")]
    Kubeconfig { path: String, message: String },
    #[error(
        "cannot find a Kubernetes configuration (not in a pod, no KUBECONFIG, no ~/.kube/config): {0}"
    )]
    Infer(String),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(String),
    #[error("cannot discover the API groups of the Kubernetes API server: {0}")]
    Discovery(String),
}

/// Where the client's configuration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConfigSource<'a> {
    InCluster,
    Kubeconfig(&'a Path),
    Infer,
}

/// An explicit `kubernetes_kubeconfig_path` wins even in a pod (an operator who sets it means
/// it, e.g. to reach another cluster); else the service account in a pod; else KUBECONFIG or
/// `~/.kube/config`.
fn config_source(in_pod: bool, kubeconfig_path: Option<&Path>) -> ConfigSource<'_> {
    match (kubeconfig_path, in_pod) {
        (Some(path), _) => ConfigSource::Kubeconfig(path),
        (None, true) => ConfigSource::InCluster,
        (None, false) => ConfigSource::Infer,
    }
}

/// The client, configured as [`config_source`] decides.
pub async fn client(settings: &Settings) -> Result<kube::Client, K8sError> {
    let in_pod = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let source = config_source(in_pod, settings.kubernetes_kubeconfig_path.as_deref());
    let mut config = match source {
        ConfigSource::InCluster => {
            kube::Config::incluster().map_err(|e| K8sError::InCluster(e.to_string()))?
        }
        ConfigSource::Kubeconfig(path) => {
            let err = |e: &dyn std::fmt::Display| K8sError::Kubeconfig {
                path: path.display().to_string(),
                message: e.to_string(),
            };
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| err(&e))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| err(&e))?
        }
        ConfigSource::Infer => kube::Config::infer()
            .await
            .map_err(|e| K8sError::Infer(e.to_string()))?,
    };
    let timeout = settings.kubernetes_apiserver_client_timeout;
    if !timeout.is_zero() {
        config.connect_timeout = Some(timeout);
        // Watches hold a request open far longer than any single call; kube sets its own
        // per-watch timeout in the query, so the read timeout must not cut them.
        config.read_timeout = None;
        config.write_timeout = Some(timeout);
    }
    kube::Client::try_from(config).map_err(|e| K8sError::Client(e.to_string()))
}

/// `kube_resources_namespace`, else the pod's own namespace, else `default`.
pub fn resource_namespace(settings: &Settings) -> String {
    resource_namespace_from(
        settings.kube_resources_namespace.as_deref(),
        Path::new(SERVICE_ACCOUNT_NAMESPACE),
    )
}

fn resource_namespace_from(configured: Option<&str>, sa_file: &Path) -> String {
    if let Some(ns) = configured.filter(|s| !s.is_empty()) {
        return ns.to_owned();
    }
    match std::fs::read_to_string(sa_file) {
        Ok(ns) if !ns.trim().is_empty() => ns.trim().to_owned(),
        _ => "default".to_owned(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HpaVersion {
    V2,
    V2beta2,
}

impl HpaVersion {
    pub fn api_version(self) -> &'static str {
        match self {
            HpaVersion::V2 => "autoscaling/v2",
            HpaVersion::V2beta2 => "autoscaling/v2beta2",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointSliceVersion {
    V1,
    V1beta1,
}

/// What the API server offers, found once at start-up and handed to the subsystems.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiCapabilities {
    /// `None` when the server offers neither HPA version we read.
    pub hpa: Option<HpaVersion>,
    pub endpoint_slices: Option<EndpointSliceVersion>,
    pub leases: bool,
}

pub async fn discover(client: &kube::Client) -> Result<ApiCapabilities, K8sError> {
    let groups = client
        .list_api_groups()
        .await
        .map_err(|e| K8sError::Discovery(e.to_string()))?;
    let offered: Vec<String> = groups
        .groups
        .iter()
        .flat_map(|g| g.versions.iter().map(|v| v.group_version.clone()))
        .collect();
    Ok(capabilities_from(&offered))
}

/// Picks, from the group-versions the server lists, the newest one we can read of each.
pub fn capabilities_from(group_versions: &[String]) -> ApiCapabilities {
    let has = |gv: &str| group_versions.iter().any(|g| g == gv);
    ApiCapabilities {
        hpa: if has("autoscaling/v2") {
            Some(HpaVersion::V2)
        } else if has("autoscaling/v2beta2") {
            Some(HpaVersion::V2beta2)
        } else {
            None
        },
        endpoint_slices: if has("discovery.k8s.io/v1") {
            Some(EndpointSliceVersion::V1)
        } else if has("discovery.k8s.io/v1beta1") {
            Some(EndpointSliceVersion::V1beta1)
        } else {
            None
        },
        leases: has("coordination.k8s.io/v1"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_prefer_the_newest_version() {
        let gv = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let k120 = capabilities_from(&gv(&[
            "autoscaling/v1",
            "autoscaling/v2beta1",
            "autoscaling/v2beta2",
            "discovery.k8s.io/v1beta1",
            "coordination.k8s.io/v1",
        ]));
        assert_eq!(
            k120,
            ApiCapabilities {
                hpa: Some(HpaVersion::V2beta2),
                endpoint_slices: Some(EndpointSliceVersion::V1beta1),
                leases: true
            }
        );
        let k137 = capabilities_from(&gv(&[
            "autoscaling/v1",
            "autoscaling/v2",
            "discovery.k8s.io/v1",
            "coordination.k8s.io/v1",
        ]));
        assert_eq!(k137.hpa, Some(HpaVersion::V2));
        assert_eq!(k137.endpoint_slices, Some(EndpointSliceVersion::V1));
        let bare = capabilities_from(&gv(&["autoscaling/v1"]));
        assert_eq!(
            bare,
            ApiCapabilities {
                hpa: None,
                endpoint_slices: None,
                leases: false
            }
        );
    }

    #[test]
    fn an_explicit_kubeconfig_wins_then_the_pod_then_inference() {
        let path = Path::new("/etc/kube/config");
        for (in_pod, configured, want) in [
            (true, Some(path), ConfigSource::Kubeconfig(path)),
            (false, Some(path), ConfigSource::Kubeconfig(path)),
            (true, None, ConfigSource::InCluster),
            (false, None, ConfigSource::Infer),
        ] {
            assert_eq!(
                config_source(in_pod, configured),
                want,
                "{in_pod} {configured:?}"
            );
        }
    }

    #[test]
    fn resource_namespace_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let sa = dir.path().join("namespace");
        assert_eq!(resource_namespace_from(None, &sa), "default");
        std::fs::write(&sa, "datadog\n").unwrap();
        assert_eq!(resource_namespace_from(None, &sa), "datadog");
        assert_eq!(resource_namespace_from(Some("custom"), &sa), "custom");
        assert_eq!(resource_namespace_from(Some(""), &sa), "datadog");
    }
}
