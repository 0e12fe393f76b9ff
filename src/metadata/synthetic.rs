//! A synthetic cluster behind the real node-agent API, for `bench/node_api.sh`: the objects
//! are parsed from the JSON an API server sends and trimmed as the watches trim them, the
//! map is built by the mapper's own function, and requests go through the real service
//! (token check, routes, shapes) over the real TLS server. Only the watches are left out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::apiserver::seams::Answer;
use crate::apiserver::server::serve_on;
use crate::apiserver::telemetry::RouteTelemetry;
use crate::config::Secret;
use crate::metadata::{StoredEndpoints, StoredNamespace, StoredNode, mapper, trim, trim_endpoints};
use crate::node_api::cluster_id::{ClusterIdError, ClusterIdSource};
use crate::node_api::metadata::{MapperUnavailable, MetadataSource, NamespaceMeta, NodeMeta};
use crate::node_api::service::NodeApiService;
use crate::node_api::service_map::ServiceMap;
use crate::tls::{ServerCertResolver, ServerTls, TlsError};

/// How big the synthetic cluster is.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub nodes: usize,
    pub pods: usize,
    pub services: usize,
    pub namespaces: usize,
}

/// The name of node `i`, as the benchmark's clients ask for it.
pub fn node_name(i: usize) -> String {
    format!(
        "ip-10-{}-{}-{}.ec2.internal",
        i / 65536 % 256,
        i / 256 % 256,
        i % 256
    )
}

fn namespace_name(i: usize) -> String {
    format!("team-{i:03}")
}

fn service_name(i: usize) -> String {
    format!("service-{i:05}-api")
}

/// A pod name as a Deployment's ReplicaSet writes it.
fn pod_name(service: usize, k: usize) -> String {
    format!("{}-5f7d8c9b4-{:05x}", service_name(service), k)
}

fn uid(kind: u32, i: usize) -> String {
    format!("{kind:08x}-{:04x}-4000-8000-{i:012x}", i % 65536)
}

const TIME: &str = "2026-12-01T00:00:00Z";

/// Service `s`'s Endpoints as the endpoints controller writes them: pods `s * per ..`, the
/// pod `p` on node `p % nodes`.
fn endpoints_json(shape: Shape, s: usize) -> Value {
    let per = shape.pods / shape.services;
    let namespace = namespace_name(s % shape.namespaces);
    let addresses: Vec<Value> = (0..per)
        .map(|k| {
            let p = s * per + k;
            json!({
                "ip": format!("10.{}.{}.{}", 100 + p / 65536 % 100, p / 256 % 256, p % 256),
                "nodeName": node_name(p % shape.nodes),
                "targetRef": {
                    "kind": "Pod",
                    "namespace": namespace,
                    "name": pod_name(s, k),
                    "uid": uid(2, p),
                    "resourceVersion": format!("{}", 100_000 + p),
                },
            })
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {
            "name": service_name(s),
            "namespace": namespace,
            "uid": uid(1, s),
            "resourceVersion": format!("{}", 200_000 + s),
            "creationTimestamp": TIME,
            "labels": {"app.kubernetes.io/name": service_name(s), "team": namespace},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": TIME},
            "managedFields": [{
                "manager": "kube-controller-manager",
                "operation": "Update",
                "apiVersion": "v1",
                "time": TIME,
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:annotations": {}, "f:labels": {}}, "f:subsets": {}},
            }],
        },
        "subsets": [{
            "addresses": addresses,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }],
    })
}

/// A node as a metadata-only watch (`as=PartialObjectMetadata`) sends it: the labels and
/// annotations the kubelet and the cloud controller set, and managed fields (which the
/// watch trims).
fn node_json(i: usize) -> Value {
    let name = node_name(i);
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": {
            "name": name,
            "uid": uid(3, i),
            "resourceVersion": format!("{}", 300_000 + i),
            "creationTimestamp": TIME,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "m5.2xlarge",
                "topology.kubernetes.io/region": "us-east-1",
                "topology.kubernetes.io/zone": format!("us-east-1{}", ["a", "b", "c"][i % 3]),
                "eks.amazonaws.com/nodegroup": format!("pool-{}", i % 20),
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": "amd64",
            },
            "annotations": {
                "cluster.k8s.io/machine": format!("machine-{i}"),
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
            "managedFields": [{"manager": "kubelet", "operation": "Update", "apiVersion": "v1",
                               "time": TIME, "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}}],
        },
    })
}

/// Parses `value` as a watch parses an object, and trims it as the watch does.
fn parse<K: kube::Resource + for<'de> Deserialize<'de>>(
    value: Value,
    trim_object: fn(&mut K),
) -> Result<K, serde_json::Error> {
    let mut object: K = serde_json::from_value(value)?;
    trim_object(&mut object);
    Ok(object)
}

/// The cluster held as the agent holds it: the trimmed objects of the watches' stores and
/// the map the mapper built from them.
pub struct SyntheticCluster {
    /// Kept, as the Endpoints store keeps them, so the benchmark's memory counts them.
    endpoints: Vec<Arc<StoredEndpoints>>,
    nodes: HashMap<String, Arc<StoredNode>>,
    namespaces: HashMap<String, Arc<StoredNamespace>>,
    services: Arc<ServiceMap>,
    /// How long [`mapper::build`] took over the whole store.
    pub build_time: Duration,
}

impl SyntheticCluster {
    pub fn new(shape: Shape) -> Result<Self, serde_json::Error> {
        let mut endpoints = Vec::with_capacity(shape.services);
        for s in 0..shape.services {
            endpoints.push(Arc::new(parse(endpoints_json(shape, s), trim_endpoints)?));
        }
        let mut nodes = HashMap::with_capacity(shape.nodes);
        for i in 0..shape.nodes {
            nodes.insert(node_name(i), Arc::new(parse(node_json(i), trim)?));
        }
        let mut namespaces = HashMap::with_capacity(shape.namespaces);
        for i in 0..shape.namespaces {
            let value = json!({"metadata": {"name": namespace_name(i), "labels": {"team": format!("team-{i}")}}});
            namespaces.insert(namespace_name(i), Arc::new(parse(value, trim)?));
        }
        let started = Instant::now();
        let services = Arc::new(mapper::build(endpoints.iter().map(|e| &**e)));
        let build_time = started.elapsed();
        Ok(SyntheticCluster {
            endpoints,
            nodes,
            namespaces,
            services,
            build_time,
        })
    }

    /// Pods in the map (a check that the build saw them all).
    pub fn mapped_pods(&self) -> usize {
        self.services.pod_count()
    }

    pub fn endpoints_objects(&self) -> usize {
        self.endpoints.len()
    }
}

struct Metadata(Arc<SyntheticCluster>);

impl MetadataSource for Metadata {
    fn synced(&self) -> bool {
        true
    }

    fn node(&self, name: &str) -> Option<Arc<NodeMeta>> {
        self.0.nodes.get(name).cloned()
    }

    fn namespace(&self, name: &str) -> Option<Arc<NamespaceMeta>> {
        self.0.namespaces.get(name).cloned()
    }

    fn node_names(&self) -> Vec<String> {
        self.0.nodes.keys().cloned().collect()
    }

    fn namespace_count(&self) -> usize {
        self.0.namespaces.len()
    }

    fn services(&self) -> Result<Arc<ServiceMap>, MapperUnavailable> {
        Ok(Arc::clone(&self.0.services))
    }
}

struct FixedClusterId;

impl ClusterIdSource for FixedClusterId {
    fn cluster_id(&self) -> Answer<'_, Result<Arc<str>, ClusterIdError>> {
        Answer::Ready(Ok(Arc::from("94e43011-177b-11ea-a4fe-42010a8401d2")))
    }
}

/// Serves the node-agent API over `cluster` on `listener` until `shutdown`, with the
/// production TLS (1.3 only, self-signed) and `token` as the node agents' token.
pub async fn serve(
    cluster: Arc<SyntheticCluster>,
    listener: TcpListener,
    token: &str,
    shutdown: CancellationToken,
) -> Result<(), TlsError> {
    let certs = ServerCertResolver::self_signed(&["localhost".into(), "127.0.0.1".into()])?;
    let tls = ServerTls::tls13_only(certs)?;
    let service = NodeApiService::new(
        Secret::new(token),
        Secret::new(format!("{token}-local")),
        Arc::new(FixedClusterId),
        Arc::new(Metadata(cluster)),
        vec!["cluster.k8s.io/machine".to_owned()],
        // Counted as in production, on a registry of its own.
        RouteTelemetry::register(&mut Registry::default()),
        crate::node_api::service::Introspection {
            health: crate::health::Health::new(),
            status: Arc::new(crate::status::Status::default),
            log_level: crate::logging::LoggingHandle::detached(crate::config::LogLevel::Info),
            explain: None,
        },
    );
    serve_on(listener, tls, service, shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The benchmark refuses to run on a cluster that does not parse or map whole; a small
    // one here keeps the generator honest without the benchmark's build.
    #[test]
    fn a_small_synthetic_cluster_parses_and_maps_every_pod() {
        let shape = Shape {
            nodes: 7,
            pods: 60,
            services: 6,
            namespaces: 3,
        };
        let cluster = SyntheticCluster::new(shape).expect("the generated objects parse");
        assert_eq!(cluster.mapped_pods(), 60);
        assert_eq!(cluster.endpoints_objects(), 6);
        assert_eq!(cluster.services.node_count(), 7);
        let node = cluster.nodes.get(&node_name(3)).expect("node 3");
        assert!(
            node.metadata.managed_fields.is_none(),
            "the watch's trim drops them"
        );
        assert_eq!(node.metadata.labels.as_ref().map(|l| l.len()), Some(9));
        let pods = cluster.services.node(&node_name(0)).expect("node 0");
        let services: Vec<_> = pods
            .namespaces()
            .iter()
            .flat_map(|ns| ns.pods())
            .flat_map(|pod| pod.services())
            .collect();
        assert!(services.iter().all(|s| s.starts_with("service-")));
        assert_eq!(
            cluster.namespaces[&namespace_name(1)]
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("team"))
                .map(String::as_str),
            Some("team-1")
        );
    }
}
