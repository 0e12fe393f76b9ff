//! HPA-driven metric resolution (dca-contract §3.2, the ConfigMap design).
//!
//! - [`hpa`]: watches HPAs (autoscaling/v2, else v2beta2) and says which external metrics
//!   they want; unservable ones are reported as Events on the HPA.
//! - [`refresher`]: on the leader only, turns those into deduplicated Datadog queries
//!   through a [`Resolver`] and writes the results to the shared ConfigMap.
//! - [`store`]: that ConfigMap; every replica keeps a watched copy of it.
//! - [`source`]: serves the external metrics API from the copy, on every replica.
//!
//! [`spawn`] wires them and hands back the [`DatadogMetricSource`] for the server.

pub mod hpa;
pub mod refresher;
pub mod source;
pub mod store;
pub mod store_format;
pub(crate) mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DynamicObject};
use kube::runtime::reflector;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::ExternalMetricsSettings;
use crate::datadog::Resolver;
use crate::k8s::ApiCapabilities;

pub use source::DatadogMetricSource;
pub use telemetry::{Telemetry, TelemetrySnapshot};

/// Errors of the autoscaling subsystem that the process should treat as fatal.
#[derive(Debug, thiserror::Error)]
pub enum AutoscalingError {
    #[error(
        "the API server offers neither autoscaling/v2 nor autoscaling/v2beta2 HorizontalPodAutoscalers; external metrics cannot work"
    )]
    NoHpaApi,
    #[error("the leader election status channel closed (the election task is gone)")]
    LeaderChannelClosed,
    #[error("{0} ended unexpectedly")]
    TaskEnded(&'static str),
    #[error("task {task} panicked: {message}")]
    Panicked { task: &'static str, message: String },
}

/// What [`spawn`] started.
#[derive(Debug)]
pub struct AutoscalingHandle {
    /// For the external metrics server.
    pub source: Arc<DatadogMetricSource>,
    pub telemetry: Arc<Telemetry>,
    tasks: Vec<(&'static str, JoinHandle<Result<(), AutoscalingError>>)>,
}

impl AutoscalingHandle {
    /// Names of the tasks started.
    pub fn task_names(&self) -> Vec<&'static str> {
        self.tasks.iter().map(|(n, _)| *n).collect()
    }

    /// Waits for every task. Tasks end `Ok` only once shutdown is requested; the first error
    /// (a watch stream that ended, the leader channel closing) or panic is returned at once,
    /// for the caller to treat as fatal.
    pub async fn join(self) -> Result<(), AutoscalingError> {
        let mut pending: Vec<_> = self
            .tasks
            .into_iter()
            .map(|(name, handle)| Box::pin(async move { (name, handle.await) }))
            .collect();
        while !pending.is_empty() {
            let ((name, result), _, rest) = futures::future::select_all(pending).await;
            pending = rest;
            match result {
                Ok(Ok(())) => tracing::debug!(task = name, "autoscaling task ended"),
                Ok(Err(e)) => return Err(e),
                Err(join) => {
                    return Err(AutoscalingError::Panicked {
                        task: name,
                        message: join.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Starts the HPA watcher, the store copy and the problem reporter on this replica, and
/// the refresher that works while `leader` is true. Everything stops when `shutdown` is
/// cancelled. Must be called within a Tokio runtime.
///
/// `external_metrics_provider.local_copy_refresh_rate` is not used: the copy follows the
/// ConfigMap through a watch instead of re-reading it on a timer.
pub fn spawn(
    client: kube::Client,
    settings: &ExternalMetricsSettings,
    capabilities: ApiCapabilities,
    namespace: &str,
    resolver: Arc<dyn Resolver>,
    leader: watch::Receiver<bool>,
    shutdown: CancellationToken,
) -> Result<AutoscalingHandle, AutoscalingError> {
    let version = capabilities.hpa.ok_or(AutoscalingError::NoHpaApi)?;
    let telemetry = Arc::new(Telemetry::default());
    let rollup_secs = u32::try_from(settings.rollup.as_secs()).unwrap_or(u32::MAX);
    let limit = source::staleness_limit(
        settings.max_age,
        settings.rollup,
        settings.query_validity_period,
    );
    if i64::try_from(settings.refresh_period.as_secs()).unwrap_or(i64::MAX) >= limit {
        tracing::warn!(
            refresh_period = ?settings.refresh_period,
            staleness_limit_secs = limit,
            "external_metrics_provider.refresh_period is not shorter than the staleness limit (max(max_age, 3 × rollup) + query_validity_period): values will be reported stale between refreshes"
        );
    }
    // An on-demand value is only needed until the leader's next write.
    let cache = source::outcome_cache(
        settings
            .refresh_period
            .clamp(Duration::from_secs(5), Duration::from_secs(60)),
    );

    let resource = hpa::hpa_resource(version);
    let writer = reflector::store::Writer::<DynamicObject>::new(resource.clone());
    let signal = Arc::new(hpa::CatalogSignal::default());
    let catalog = hpa::HpaCatalog::new(writer.as_reader(), Arc::clone(&signal));
    let (reports_tx, reports_rx) = mpsc::channel(256);
    let (store_tx, store_rx) = watch::channel(Arc::new(store::StoreSnapshot::default()));

    let source = Arc::new(DatadogMetricSource::new(
        store_rx,
        catalog.clone(),
        leader.clone(),
        Arc::clone(&resolver),
        cache.clone(),
        Arc::clone(&telemetry),
        source::SourceSettings {
            aggregator: settings.aggregator,
            rollup_secs,
            staleness_limit_secs: limit,
            configmap: format!("{namespace}/{}", settings.hpa_configmap_name),
        },
    ));

    let mut tasks = Vec::new();
    let hpa_watcher = hpa::HpaWatcher {
        api: Api::all_with(client.clone(), &resource),
        version,
        writer,
        signal,
        reports: reports_tx,
        telemetry: Arc::clone(&telemetry),
    };
    tasks.push((
        "hpa-watcher",
        tokio::spawn(
            hpa_watcher
                .run(shutdown.clone())
                .instrument(tracing::info_span!(
                    "hpa-watcher",
                    api = version.api_version()
                )),
        ),
    ));
    tasks.push((
        "hpa-problem-reporter",
        tokio::spawn(
            hpa::run_reporter(
                client.clone(),
                reports_rx,
                Arc::clone(&telemetry),
                shutdown.clone(),
            )
            .instrument(tracing::info_span!("hpa-problem-reporter")),
        ),
    ));
    tasks.push((
        "metric-store-copy",
        tokio::spawn(
            store::run_local_copy(
                client.clone(),
                namespace.to_owned(),
                settings.hpa_configmap_name.clone(),
                store_tx,
                Arc::clone(&telemetry),
                shutdown.clone(),
            )
            .instrument(tracing::info_span!(
                "metric-store-copy",
                configmap = %settings.hpa_configmap_name
            )),
        ),
    ));
    let refresher = refresher::Refresher {
        client,
        catalog,
        resolver,
        cache,
        telemetry: Arc::clone(&telemetry),
        settings: refresher::RefreshSettings {
            aggregator: settings.aggregator,
            rollup_secs,
            refresh_period: settings.refresh_period,
            gc_period: settings.hpa_watcher_gc_period,
            namespace: namespace.to_owned(),
            configmap: settings.hpa_configmap_name.clone(),
        },
    };
    tasks.push((
        "metrics-refresher",
        tokio::spawn(
            refresher
                .run(leader, shutdown)
                .instrument(tracing::info_span!("metrics-refresher")),
        ),
    ));
    Ok(AutoscalingHandle {
        source,
        telemetry,
        tasks,
    })
}
