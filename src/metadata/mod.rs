//! What node agents ask the cluster agent about the cluster's objects, kept current by
//! watches: Nodes (labels, annotations) and Namespaces (labels, annotations), answered from
//! kube-runtime reflector stores (shared, never cloned per request).
//!
//! Built so far: Nodes, Namespaces and the pod → services mapper from Endpoints
//! ([`mapper`]); EndpointSlices (`kubernetes_use_endpoint_slices`) are not built yet.
//!
//! It implements the node-agent API's [`MetadataSource`] seam, as `autoscaling` implements
//! the metrics API's: a subsystem above the server it feeds.

pub(crate) mod mapper;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Node};
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::node_api::metadata::{MapperUnavailable, MetadataSource, ServiceMap};

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
    nodes: Store<Node>,
    namespaces: Store<Namespace>,
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

    fn node(&self, name: &str) -> Option<Arc<Node>> {
        self.nodes.get(&reflector::ObjectRef::new(name))
    }

    fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        self.namespaces.get(&reflector::ObjectRef::new(name))
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

/// Starts the watches, and the pod → services mapper when `mapper_enabled`
/// (`kubernetes_collect_metadata_tags`).
pub(crate) fn spawn(
    client: kube::Client,
    mapper_enabled: bool,
    shutdown: CancellationToken,
) -> (ClusterMetadata, Tasks) {
    let (nodes, node_writer) = reflector::store();
    let (namespaces, namespace_writer) = reflector::store();
    let nodes_synced = Arc::new(AtomicBool::new(false));
    let namespaces_synced = Arc::new(AtomicBool::new(false));
    let node_task = watch(
        "Node",
        Api::<Node>::all(client.clone()),
        node_writer,
        Arc::clone(&nodes_synced),
        None,
        shutdown.clone(),
    );
    let namespace_task = watch(
        "Namespace",
        Api::<Namespace>::all(client.clone()),
        namespace_writer,
        Arc::clone(&namespaces_synced),
        None,
        shutdown.clone(),
    );
    let (endpoints, endpoints_writer) = reflector::store();
    let endpoints_synced = Arc::new(AtomicBool::new(false));
    let changed = Arc::new(Notify::new());
    let endpoints_task = watch(
        "Endpoints",
        Api::<Endpoints>::all(client),
        endpoints_writer,
        Arc::clone(&endpoints_synced),
        Some(Arc::clone(&changed)),
        shutdown.clone(),
    );
    let services = Arc::new(RwLock::new(None));
    let mapper_task = rebuild(
        endpoints,
        endpoints_synced,
        changed,
        Arc::clone(&services),
        shutdown,
    );
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
        mapper: mapper_enabled.then(|| {
            let endpoints: Task = Box::pin(endpoints_task);
            let mapper: Task = Box::pin(mapper_task);
            (endpoints, mapper)
        }),
    };
    (metadata, tasks)
}

/// Keeps `writer`'s store current. kube-runtime's watcher re-lists after a dropped watch or
/// a 410 Gone and replaces the store only once the new list is complete, so readers never
/// see it empty in between.
async fn watch<K>(
    kind: &'static str,
    api: Api<K>,
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
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        // Only labels and annotations are served; managed fields can be large.
        .modify(|object: &mut K| {
            object.meta_mut().managed_fields = None;
        })
        .reflect(writer);
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

/// Rebuilds the pod → services map from the Endpoints store after each burst of changes
/// and publishes it whole: readers hold the map they took, never a half-built one.
async fn rebuild(
    endpoints: Store<Endpoints>,
    synced: Arc<AtomicBool>,
    changed: Arc<Notify>,
    services: Arc<RwLock<Option<Arc<ServiceMap>>>>,
    shutdown: CancellationToken,
) -> Result<(), MetadataError> {
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
        let state = endpoints.state();
        let map = Arc::new(mapper::build(state.iter().map(|e| &**e)));
        tracing::debug!(nodes = map.nodes.len(), "metadata map rebuilt");
        *services.write().unwrap_or_else(PoisonError::into_inner) = Some(map);
    }
}
