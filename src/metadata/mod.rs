//! What node agents ask the cluster agent about the cluster's objects, kept current by
//! watches: Nodes (labels, annotations) and Namespaces (labels, annotations), answered from
//! kube-runtime reflector stores (shared, never cloned per request).
//!
//! Nodes, Namespaces, and the pod → services mapper ([`mapper`]) from Endpoints, or from
//! EndpointSlices with `kubernetes_use_endpoint_slices` ([`slice`]: `discovery.k8s.io/v1`,
//! else `v1beta1`, as the API server offers at start-up).
//!
//! It implements the node-agent API's [`MetadataSource`] seam, as `autoscaling` implements
//! the metrics API's: a subsystem above the server it feeds.

pub(crate) mod endpoints;
pub(crate) mod mapper;
pub(crate) mod slice;
#[cfg(feature = "test-util")]
pub(crate) mod synthetic;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::k8s::EndpointSliceVersion;
use crate::node_api::metadata::{MapperUnavailable, MetadataSource, NamespaceMeta, NodeMeta};
use crate::node_api::service_map::ServiceMap;

/// What the Endpoints watch keeps of each object, trimmed by [`trim_endpoints`] (the
/// benchmark's synthetic cluster holds the same).
pub(crate) type StoredEndpoints = endpoints::Endpoints;
pub(crate) use endpoints::trim_endpoints;

/// What every watch drops before it stores an object: only labels, annotations and the
/// mapper's fields are served, and managed fields can be large.
pub(crate) fn trim<K: kube::Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// What the Node watch keeps of each object: its metadata, asked for alone.
pub(crate) type StoredNode = NodeMeta;
/// What the Namespace watch keeps of each object: its metadata, asked for alone.
pub(crate) type StoredNamespace = NamespaceMeta;

/// How long the mapper waits after a change for more before it rebuilds the map, so a
/// burst of Endpoints updates (a rollout) costs one rebuild.
const REBUILD_DEBOUNCE: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub(crate) enum MetadataError {
    #[error("the {0} watch stream ended")]
    StreamEnded(&'static str),
}

/// The stores behind the node-agent routes; cheap to clone.
#[derive(Clone)]
pub(crate) struct ClusterMetadata {
    nodes: Store<StoredNode>,
    namespaces: Store<StoredNamespace>,
    /// Both first lists completed (before that, "not found" would be a guess).
    nodes_synced: Arc<AtomicBool>,
    namespaces_synced: Arc<AtomicBool>,
    /// The latest map; `None` until the first list of Endpoints is in.
    services: Arc<RwLock<Option<Arc<ServiceMap>>>>,
    /// `kubernetes_collect_metadata_tags`.
    mapper_enabled: bool,
}

impl MetadataSource for ClusterMetadata {
    fn synced(&self) -> bool {
        self.nodes_synced.load(Ordering::Acquire) && self.namespaces_synced.load(Ordering::Acquire)
    }

    fn node(&self, name: &str) -> Option<Arc<NodeMeta>> {
        self.nodes.get(&reflector::ObjectRef::new(name))
    }

    fn namespace(&self, name: &str) -> Option<Arc<NamespaceMeta>> {
        self.namespaces.get(&reflector::ObjectRef::new(name))
    }

    fn node_names(&self) -> Vec<String> {
        self.nodes
            .state()
            .iter()
            .filter_map(|node| node.metadata.name.clone())
            .collect()
    }

    fn namespace_count(&self) -> usize {
        self.namespaces.state().len()
    }

    fn services(&self) -> Result<Arc<ServiceMap>, MapperUnavailable> {
        if !self.mapper_enabled {
            return Err(MapperUnavailable::Disabled);
        }
        self.services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(MapperUnavailable::NotSynced)
    }
}

/// A watch or the mapper: runs until `shutdown`, and fails only if its stream ends.
pub(crate) type Task = futures::future::BoxFuture<'static, Result<(), MetadataError>>;

/// The watches and the mapper, to supervise (the last two only when the mapper is on).
pub(crate) struct Tasks {
    pub(crate) nodes: Task,
    pub(crate) namespaces: Task,
    pub(crate) mapper: Option<(Task, Task)>,
}

/// What the pod → services mapper reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MapperSource {
    Endpoints,
    EndpointSlices(EndpointSliceVersion),
}

impl MapperSource {
    /// EndpointSlices when `kubernetes_use_endpoint_slices` asks for them and the API
    /// server offers them; else Endpoints, which every server has (with a warning when
    /// slices were asked for, so nothing goes unmapped).
    pub(crate) fn choose(use_slices: bool, offered: Option<EndpointSliceVersion>) -> Self {
        match (use_slices, offered) {
            (true, Some(version)) => MapperSource::EndpointSlices(version),
            (true, None) => {
                tracing::warn!(
                    "kubernetes_use_endpoint_slices is true but the API server offers no \
                     discovery.k8s.io EndpointSlices; mapping from Endpoints"
                );
                MapperSource::Endpoints
            }
            (false, _) => MapperSource::Endpoints,
        }
    }
}

/// Starts the watches, and the pod → services mapper when `mapper_enabled`
/// (`kubernetes_collect_metadata_tags`), reading `source`.
pub(crate) fn spawn(
    client: kube::Client,
    mapper_enabled: bool,
    source: MapperSource,
    shutdown: CancellationToken,
) -> (ClusterMetadata, Tasks) {
    let (nodes, node_writer) = reflector::store();
    let (namespaces, namespace_writer) = reflector::store();
    let nodes_synced = Arc::new(AtomicBool::new(false));
    let namespaces_synced = Arc::new(AtomicBool::new(false));
    let node_task = watch(
        "Node",
        Api::<PartialObjectMeta<Node>>::all(client.clone()),
        trim,
        node_writer,
        Arc::clone(&nodes_synced),
        None,
        shutdown.clone(),
    );
    let namespace_task = watch(
        "Namespace",
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        trim,
        namespace_writer,
        Arc::clone(&namespaces_synced),
        None,
        shutdown.clone(),
    );
    let services = Arc::new(RwLock::new(None));
    let (endpoints_task, mapper_task) = match source {
        MapperSource::Endpoints => mapper_tasks::<StoredEndpoints>(
            "Endpoints",
            client,
            trim_endpoints,
            |store| mapper::build(store.iter().map(|e| &**e)),
            Arc::clone(&services),
            shutdown,
        ),
        MapperSource::EndpointSlices(EndpointSliceVersion::V1) => {
            slice_tasks::<slice::V1>(client, Arc::clone(&services), shutdown)
        }
        MapperSource::EndpointSlices(EndpointSliceVersion::V1beta1) => {
            slice_tasks::<slice::V1beta1>(client, Arc::clone(&services), shutdown)
        }
    };
    let metadata = ClusterMetadata {
        nodes,
        namespaces,
        nodes_synced,
        namespaces_synced,
        services,
        mapper_enabled,
    };
    let tasks = Tasks {
        nodes: Box::pin(node_task),
        namespaces: Box::pin(namespace_task),
        mapper: mapper_enabled.then_some((endpoints_task, mapper_task)),
    };
    (metadata, tasks)
}

/// [`mapper_tasks`] over the EndpointSlices of API version `V`.
fn slice_tasks<V: slice::SliceVersion>(
    client: kube::Client,
    services: Arc<RwLock<Option<Arc<ServiceMap>>>>,
    shutdown: CancellationToken,
) -> (Task, Task) {
    mapper_tasks::<slice::EndpointSlice<V>>(
        "EndpointSlice",
        client,
        trim,
        |store| mapper::build_from_slices(store.iter().map(|e| &**e)),
        services,
        shutdown,
    )
}

/// The watch of `K` (objects trimmed by `trim_object`) and the task that rebuilds the map
/// from its store with `build`.
fn mapper_tasks<K>(
    kind: &'static str,
    client: kube::Client,
    trim_object: fn(&mut K),
    build: fn(&[Arc<K>]) -> ServiceMap,
    services: Arc<RwLock<Option<Arc<ServiceMap>>>>,
    shutdown: CancellationToken,
) -> (Task, Task)
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let synced = Arc::new(AtomicBool::new(false));
    let changed = Arc::new(Notify::new());
    let watch_task = watch(
        kind,
        Api::<K>::all(client),
        trim_object,
        writer,
        Arc::clone(&synced),
        Some(Arc::clone(&changed)),
        shutdown.clone(),
    );
    let rebuild_task = rebuild(store, build, synced, changed, services, shutdown);
    (Box::pin(watch_task), Box::pin(rebuild_task))
}

/// Keeps `writer`'s store current. kube-runtime's watcher re-lists after a dropped watch or
/// a 410 Gone and replaces the store only once the new list is complete, so readers never
/// see it empty in between.
async fn watch<K>(
    kind: &'static str,
    api: Api<K>,
    trim_object: fn(&mut K),
    writer: reflector::store::Writer<K>,
    synced: Arc<AtomicBool>,
    changed: Option<Arc<Notify>>,
    shutdown: CancellationToken,
) -> Result<(), MetadataError>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let events = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(trim_object);
    follow(kind, events, writer, synced, changed, shutdown).await
}

/// Applies `events` to `writer`'s store; marks `synced` at the first complete list and
/// tells `changed` of every change from then on (a re-list only once it is complete).
async fn follow<K>(
    kind: &'static str,
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    writer: reflector::store::Writer<K>,
    synced: Arc<AtomicBool>,
    changed: Option<Arc<Notify>>,
    shutdown: CancellationToken,
) -> Result<(), MetadataError>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let stream = events.reflect(writer);
    futures::pin_mut!(stream);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            e = stream.next() => e,
        };
        match event {
            None => return Err(MetadataError::StreamEnded(kind)),
            Some(Err(e)) => {
                tracing::warn!(kind, error = %e, "watch failed; retrying with backoff");
            }
            // The store holds the whole new list only from InitDone on, so a re-list is
            // never seen half done.
            Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
            Some(Ok(watcher::Event::InitDone)) => {
                synced.store(true, Ordering::Release);
                if let Some(changed) = &changed {
                    changed.notify_one();
                }
            }
            Some(Ok(_)) => {
                if let Some(changed) = &changed
                    && synced.load(Ordering::Acquire)
                {
                    changed.notify_one();
                }
            }
        }
    }
}

/// Rebuilds the pod → services map from the store after each burst of changes and
/// publishes it whole: readers hold the map they took, never a half-built one.
async fn rebuild<K>(
    store: Store<K>,
    build: fn(&[Arc<K>]) -> ServiceMap,
    synced: Arc<AtomicBool>,
    changed: Arc<Notify>,
    services: Arc<RwLock<Option<Arc<ServiceMap>>>>,
    shutdown: CancellationToken,
) -> Result<(), MetadataError>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            () = changed.notified() => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(REBUILD_DEBOUNCE) => {}
        }
        if !synced.load(Ordering::Acquire) {
            continue;
        }
        let map = Arc::new(build(&store.state()));
        tracing::debug!(nodes = map.node_count(), "metadata map rebuilt");
        *services.write().unwrap_or_else(PoisonError::into_inner) = Some(map);
    }
}

#[cfg(test)]
mod tests {
    use futures::channel::mpsc;

    use super::*;

    fn endpoints(name: &str, pods: &[&str]) -> StoredEndpoints {
        let addresses: Vec<_> = pods
            .iter()
            .map(|pod| serde_json::json!({"nodeName": "n1", "targetRef": {"kind": "Pod", "name": pod}}))
            .collect();
        let object = serde_json::json!({
            "metadata": {"name": name, "namespace": "shop"},
            "subsets": [{"addresses": addresses}],
        });
        serde_json::from_value(object).expect("parses")
    }

    /// The pods of node n1 in the published map (`None`: no map yet).
    fn published(services: &RwLock<Option<Arc<ServiceMap>>>) -> Option<Vec<String>> {
        let map = services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()?;
        let pods = map.node("n1").map_or_else(Vec::new, |node| {
            node.namespaces()
                .iter()
                .flat_map(|ns| ns.pods())
                .map(|pod| pod.name().to_owned())
                .collect()
        });
        Some(pods)
    }

    async fn settle() {
        // Well past the rebuild's debounce; the clock is paused, so this is exact.
        tokio::time::sleep(REBUILD_DEBOUNCE * 5).await;
    }

    // A watch that drops or gets 410 Gone starts over with a new list (Init, InitApply...,
    // InitDone). Until that list is complete the old store and map keep answering; then
    // what the new list lacks is gone, and at no point is an empty map published.
    #[tokio::test(start_paused = true)]
    async fn a_relist_replaces_the_map_only_once_it_is_complete() {
        use watcher::Event::{Delete, Init, InitApply, InitDone};
        let (events, received) = mpsc::unbounded();
        let (store, writer) = reflector::store();
        let synced = Arc::new(AtomicBool::new(false));
        let changed = Arc::new(Notify::new());
        let services = Arc::new(RwLock::new(None));
        let shutdown = CancellationToken::new();
        let follower = tokio::spawn(follow(
            "Endpoints",
            received.map(Ok),
            writer,
            Arc::clone(&synced),
            Some(Arc::clone(&changed)),
            shutdown.clone(),
        ));
        let rebuilder = tokio::spawn(rebuild(
            store.clone(),
            |store| mapper::build(store.iter().map(|e| &**e)),
            Arc::clone(&synced),
            changed,
            Arc::clone(&services),
            shutdown.clone(),
        ));
        let send = |event| events.unbounded_send(event).expect("follower alive");

        send(Init);
        send(InitApply(endpoints("web", &["web-1"])));
        settle().await;
        assert!(!synced.load(Ordering::Acquire));
        assert_eq!(
            published(&services),
            None,
            "no map before the first list is complete"
        );
        send(InitApply(endpoints("db", &["db-0"])));
        send(InitDone);
        settle().await;
        assert_eq!(
            published(&services),
            Some(vec!["db-0".into(), "web-1".into()])
        );

        // The re-list: half of it in, the old answers stand.
        send(Init);
        send(InitApply(endpoints("web", &["web-1", "web-2"])));
        settle().await;
        assert_eq!(
            published(&services),
            Some(vec!["db-0".into(), "web-1".into()])
        );
        assert_eq!(store.state().len(), 2, "the store is not half replaced");
        send(InitDone);
        settle().await;
        assert_eq!(
            published(&services),
            Some(vec!["web-1".into(), "web-2".into()])
        );

        // Watch events after the list apply one by one.
        send(Delete(endpoints("web", &[])));
        settle().await;
        assert_eq!(published(&services), Some(vec![]));

        shutdown.cancel();
        assert!(follower.await.expect("no panic").is_ok());
        assert!(rebuilder.await.expect("no panic").is_ok());
    }

    // What a metadata-only list or watch (`as=PartialObjectMetadata`) sends for a Node.
    #[test]
    fn a_metadata_only_node_parses_and_is_stored_without_managed_fields() {
        let object = serde_json::json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {
                "name": "n1",
                "resourceVersion": "7",
                "labels": {"kubernetes.io/os": "linux"},
                "annotations": {"cluster.k8s.io/machine": "m-1"},
                "managedFields": [{"manager": "kubelet", "operation": "Update"}],
            },
        });
        let mut node: StoredNode = serde_json::from_value(object).expect("parses");
        trim(&mut node);
        let meta = &node.metadata;
        assert_eq!(meta.name.as_deref(), Some("n1"));
        let labels = meta.labels.as_ref().expect("labels");
        assert_eq!(
            labels.get("kubernetes.io/os").map(String::as_str),
            Some("linux")
        );
        let annotations = meta.annotations.as_ref().expect("annotations");
        assert_eq!(annotations.len(), 1);
        assert_eq!(meta.managed_fields, None);
    }
}
