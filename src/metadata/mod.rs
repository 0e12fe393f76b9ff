//! What node agents ask the cluster agent about the cluster's objects, kept current by
//! watches: Nodes (labels, annotations) and Namespaces (labels, annotations), answered from
//! kube-runtime reflector stores (shared, never cloned per request).
//!
//! Built so far: Nodes and Namespaces. The pod → services mapper (Endpoints or
//! EndpointSlices) is not built yet.
//!
//! It implements the node-agent API's [`MetadataSource`] seam, as `autoscaling` implements
//! the metrics API's: a subsystem above the server it feeds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

use crate::node_api::metadata::MetadataSource;

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
}

/// Starts the watches; each future runs until `shutdown` and fails only if its stream ends.
pub(crate) fn spawn(
    client: kube::Client,
    shutdown: CancellationToken,
) -> (
    ClusterMetadata,
    impl Future<Output = Result<(), MetadataError>> + Send,
    impl Future<Output = Result<(), MetadataError>> + Send,
) {
    let (nodes, node_writer) = reflector::store();
    let (namespaces, namespace_writer) = reflector::store();
    let nodes_synced = Arc::new(AtomicBool::new(false));
    let namespaces_synced = Arc::new(AtomicBool::new(false));
    let node_task = watch(
        "Node",
        Api::<Node>::all(client.clone()),
        node_writer,
        Arc::clone(&nodes_synced),
        shutdown.clone(),
    );
    let namespace_task = watch(
        "Namespace",
        Api::<Namespace>::all(client),
        namespace_writer,
        Arc::clone(&namespaces_synced),
        shutdown,
    );
    let metadata = ClusterMetadata {
        nodes,
        namespaces,
        nodes_synced,
        namespaces_synced,
    };
    (metadata, node_task, namespace_task)
}

/// Keeps `writer`'s store current. kube-runtime's watcher re-lists after a dropped watch or
/// a 410 Gone and replaces the store only once the new list is complete, so readers never
/// see it empty in between.
async fn watch<K>(
    kind: &'static str,
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    synced: Arc<AtomicBool>,
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
            Some(Ok(watcher::Event::InitDone)) => synced.store(true, Ordering::Release),
            Some(Ok(_)) => {}
        }
    }
}
