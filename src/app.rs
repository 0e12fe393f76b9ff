//! Builds every subsystem, gates leader-only work, and owns graceful shutdown.
//!
//! Every long-lived task goes into one `JoinSet`. A task that ends before shutdown was asked
//! for is a failure of the whole process: a replica that silently lost its election loop or
//! its metrics server is worse than one that restarts.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::apiserver::seams::Readiness;
use crate::config::Settings;
use crate::health::Gate;

/// How long shutdown waits for subsystems to finish draining before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// How often the metric source's readiness is re-evaluated for `/readyz`.
const READINESS_POLL: Duration = Duration::from_secs(1);

mod collector;
mod status;

type Tasks = JoinSet<(&'static str, anyhow::Result<()>)>;

/// How often each replica asks Datadog whether the API key is valid (for `status`).
const KEY_CHECK_PERIOD: Duration = Duration::from_secs(30 * 60);

pub(crate) async fn run(
    settings: Settings,
    log_level: crate::logging::LoggingHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let started_at = status::unix_now();
    tracing::info!(
        version = crate::version::VERSION,
        commit = crate::version::COMMIT,
        config_file = ?settings.config_file,
        "starting the Datadog Cluster Agent"
    );
    let crate::k8s::Connection {
        client,
        capabilities,
    } = crate::k8s::connect(&settings).await?;
    let namespace = crate::k8s::resource_namespace(&settings);
    tracing::info!(?capabilities, %namespace, "connected to the Kubernetes API server");

    let mut tasks = Tasks::new();
    // Without election the identity only labels status output, so a machine where it cannot
    // be derived (no DD_POD_NAME, host UTS namespace) still starts.
    let identity = if settings.leader_election.enabled {
        crate::leader::identity()?
    } else {
        crate::leader::identity().unwrap_or_else(|_| "datadog-cluster-agent".to_owned())
    };
    let (leader, election) = crate::leader::spawn(
        client.clone(),
        &settings,
        &namespace,
        identity,
        shutdown.clone(),
    )?;
    tasks.spawn(
        async move { ("leader election", election.await.map_err(Into::into)) }
            .instrument(tracing::info_span!("leader_election_supervisor")),
    );

    // Every replica serves node agents (no forwarding to the leader).
    let token = crate::node_api::token::resolve(
        settings.cluster_agent.auth_token.as_ref(),
        &settings.config_dir,
    )?;
    let local_token = crate::node_api::token::local(&settings.auth_token_file_path)?;
    // Every subsystem registers its series before the telemetry server starts serving them.
    let mut registry = prometheus_client::registry::Registry::default();
    let node_telemetry = crate::apiserver::telemetry::RouteTelemetry::register(&mut registry);
    let mapper_source = crate::metadata::MapperSource::choose(
        settings.kubernetes_use_endpoint_slices,
        capabilities.endpoint_slices,
    );
    let (metadata, watches) = crate::metadata::spawn(
        client.clone(),
        settings.kubernetes_collect_metadata_tags,
        mapper_source,
        shutdown.clone(),
    );
    let health = crate::health::Health::new();
    let metadata = Arc::new(metadata);
    let synced = Arc::clone(&metadata);
    health.register(
        "metadata-store",
        Gate::Readiness,
        Box::new(move || {
            use crate::node_api::metadata::MetadataSource;
            if synced.synced() {
                Ok(())
            } else {
                Err("the first lists of nodes and namespaces are not in yet (check the watches in the logs and the RBAC for nodes and namespaces)".to_owned())
            }
        }),
    );
    let crate::metadata::Tasks {
        nodes,
        namespaces,
        mapper,
    } = watches;
    tasks.spawn(
        async move { ("node watch", nodes.await.map_err(Into::into)) }
            .instrument(tracing::info_span!("node_watch")),
    );
    tasks.spawn(
        async move { ("namespace watch", namespaces.await.map_err(Into::into)) }
            .instrument(tracing::info_span!("namespace_watch")),
    );
    if let Some((endpoints, rebuild)) = mapper {
        tasks.spawn(
            async move { ("endpoints watch", endpoints.await.map_err(Into::into)) }
                .instrument(tracing::info_span!("endpoints_watch")),
        );
        tasks.spawn(
            async move { ("metadata mapper", rebuild.await.map_err(Into::into)) }
                .instrument(tracing::info_span!("metadata_mapper")),
        );
    }
    let node_client = client.clone();
    let (external_metrics, status_parts) = if settings.external_metrics.enabled {
        let (telemetry, parts) = start_external_metrics(
            &settings,
            crate::k8s::Connection {
                client,
                capabilities,
            },
            &namespace,
            &leader,
            &health,
            &shutdown,
            &mut tasks,
        )?;
        (Some(telemetry), Some(parts))
    } else {
        (None, None)
    };
    let node_settings = settings.clone();
    let node_namespace = namespace.clone();
    let stop = shutdown.clone();
    let sources = crate::node_api::Sources {
        metadata: Arc::clone(&metadata) as Arc<dyn crate::node_api::metadata::MetadataSource>,
        health: Arc::clone(&health),
        log_level: log_level.clone(),
        explain: status_parts
            .as_ref()
            .map(|p| status::explain_source(Arc::clone(&p.source))),
        status: status::source(status::Parts {
            agent: crate::status::Agent {
                version: crate::version::VERSION.to_owned(),
                commit: crate::version::COMMIT.to_owned(),
                build_date: crate::version::BUILD_DATE.to_owned(),
                pid: std::process::id(),
                started_at,
                now: started_at,
                config_file: settings
                    .config_file
                    .as_ref()
                    .map(|p| p.display().to_string()),
                hostname: settings
                    .hostname
                    .clone()
                    .unwrap_or_else(|| leader.status().identity),
                cluster_name: settings.cluster_name.clone(),
                log_level: String::new(),
            },
            cmd_port: settings.cluster_agent.cmd_port,
            log_level: log_level.clone(),
            leader: leader.clone(),
            metadata,
            external_metrics: status_parts,
        }),
    };
    tasks.spawn(
        async move {
            let tokens = crate::node_api::Tokens {
                node_agents: token,
                local: local_token,
            };
            let result = crate::node_api::run(
                &node_settings,
                node_client,
                &node_namespace,
                tokens,
                sources,
                node_telemetry,
                stop,
            )
            .await;
            ("node-agent API server", result.map_err(Into::into))
        }
        .instrument(tracing::info_span!("node_api_server")),
    );

    registry.register_collector(Box::new(collector::AgentCollector {
        leader: leader.clone(),
        election: settings.leader_election.enabled,
        external_metrics,
    }));

    let expvar = crate::telemetry::Expvar::new(std::env::args().collect());
    let ports = crate::telemetry::Ports {
        metrics: settings.metrics_port,
        expvar: settings.expvar_port,
        health: settings.health_port,
    };
    let routes = crate::telemetry::Routes {
        metrics: Some(Arc::new(registry)),
        expvar: Some(Arc::new(expvar)),
        health: Some(health),
    };
    let listeners = crate::telemetry::plan(ports, routes);
    for (port, routes) in listeners {
        let addr = std::net::SocketAddr::new(settings.bind_host, port);
        let stop = shutdown.clone();
        tasks.spawn(
            async move {
                let result = crate::telemetry::run(addr, routes, stop).await;
                ("telemetry server", result.map_err(Into::into))
            }
            .instrument(tracing::info_span!("telemetry_server", port)),
        );
    }

    let failure = supervise(&mut tasks, &shutdown).await;
    shutdown.cancel();
    drain(&mut tasks).await;
    match failure {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

fn start_external_metrics(
    settings: &Settings,
    connection: crate::k8s::Connection,
    namespace: &str,
    leader: &crate::leader::LeaderHandle,
    health: &crate::health::Health,
    shutdown: &CancellationToken,
    tasks: &mut Tasks,
) -> anyhow::Result<(
    collector::ExternalMetricsTelemetry,
    status::ExternalMetricsParts,
)> {
    use crate::apiserver::auth::{AuthOptions, DelegatingAuth};

    let crate::k8s::Connection {
        client,
        capabilities,
    } = connection;

    let resolver = crate::datadog::DatadogResolver::from_settings(settings)
        .context("cannot build the Datadog client for external metrics")?;
    let datadog_telemetry = resolver.telemetry();
    let endpoint = resolver.client().base_url().to_owned();
    let validator = resolver.client().clone();
    let checks = Arc::clone(&datadog_telemetry);
    let stop = shutdown.clone();
    tasks.spawn(
        async move {
            // Every replica asks: it is one call per period, and `status` on any replica
            // should say whether the key works.
            loop {
                let result = tokio::select! {
                    () = stop.cancelled() => break,
                    result = validator.validate() => result,
                };
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "Datadog did not validate the API key");
                }
                checks.record_key_check(crate::datadog::resolver::key_check(
                    &result,
                    status::unix_now(),
                ));
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(KEY_CHECK_PERIOD) => {}
                }
            }
            ("API key validation", Ok(()))
        }
        .instrument(tracing::info_span!("api_key_validation")),
    );
    let calls = Arc::clone(&datadog_telemetry);
    health.register(
        "datadog-api",
        Gate::Report,
        Box::new(move || calls.health()),
    );
    let autoscaling = crate::autoscaling::spawn(
        client.clone(),
        &settings.external_metrics,
        capabilities,
        namespace,
        Arc::new(resolver),
        leader.subscribe(),
        shutdown.clone(),
    )?;
    let source = autoscaling.source.clone();
    let status_parts = status::ExternalMetricsParts {
        store: format!(
            "{namespace}/{}",
            settings.external_metrics.hpa_configmap_name
        ),
        source: Arc::clone(&source),
        datadog: Arc::clone(&datadog_telemetry),
        endpoint,
    };
    let telemetry = collector::ExternalMetricsTelemetry {
        datadog: datadog_telemetry,
        autoscaling: Arc::clone(&autoscaling.telemetry),
    };
    tasks.spawn(
        async move { ("autoscaling", autoscaling.join().await.map_err(Into::into)) }
            .instrument(tracing::info_span!("autoscaling_supervisor")),
    );

    let client_ca = crate::tls::ClientCaHandle::new();
    let auth = DelegatingAuth::new(client, client_ca.clone(), AuthOptions::default());
    let auth_task = auth.spawn(shutdown.clone());
    tasks.spawn(
        async move {
            let result = auth_task
                .await
                .map_err(|e| anyhow::anyhow!("task failed: {e}"));
            ("delegated authentication", result)
        }
        .instrument(tracing::info_span!("delegated_auth_supervisor")),
    );

    let (source_ready_tx, source_ready) = watch::channel(source.readiness());
    let polled = source.clone();
    let stop = shutdown.clone();
    tasks.spawn(
        async move {
            let mut tick = tokio::time::interval(READINESS_POLL);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return ("metric source readiness", Ok(())),
                    _ = tick.tick() => {
                        source_ready_tx.send_if_modified(|current| replace_if_changed(current, polled.readiness()));
                    }
                }
            }
        }
        .instrument(tracing::info_span!("metric_source_readiness")),
    );

    health.register(
        "external-metrics-auth",
        Gate::Readiness,
        readiness_check(auth.readiness()),
    );
    health.register(
        "external-metrics-source",
        Gate::Readiness,
        readiness_check(source_ready.clone()),
    );
    let parts = crate::external_metrics::ServiceParts {
        authenticator: auth.clone(),
        authorizer: auth.clone(),
        source,
        readiness: vec![auth.readiness(), source_ready],
    };
    let settings = settings.clone();
    let stop = shutdown.clone();
    tasks.spawn(
        async move {
            let result =
                crate::external_metrics::server::run(&settings, Some(client_ca), parts, stop).await;
            ("external metrics server", result.map_err(Into::into))
        }
        .instrument(tracing::info_span!("external_metrics_server")),
    );
    Ok((telemetry, status_parts))
}

fn readiness_check(readiness: watch::Receiver<Readiness>) -> crate::health::Check {
    Box::new(move || {
        let now = readiness.borrow();
        if now.ready {
            Ok(())
        } else {
            Err(now.reason.clone())
        }
    })
}

fn replace_if_changed(current: &mut Readiness, next: Readiness) -> bool {
    if *current == next {
        return false;
    }
    *current = next;
    true
}

/// Waits for shutdown, or for a task to end first, which is a failure.
async fn supervise(tasks: &mut Tasks, shutdown: &CancellationToken) -> Option<anyhow::Error> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            joined = tasks.join_next() => match joined {
                None => {
                    shutdown.cancelled().await;
                    return None;
                }
                Some(Ok((name, Ok(())))) if shutdown.is_cancelled() => {
                    tracing::debug!(task = name, "stopped");
                }
                Some(Ok((name, Ok(())))) => {
                    return Some(anyhow::anyhow!("{name} stopped unexpectedly"));
                }
                Some(Ok((name, Err(e)))) => {
                    tracing::error!(task = name, error = %format!("{e:#}"), "critical task failed");
                    return Some(e.context(format!("{name} failed")));
                }
                Some(Err(e)) => return Some(anyhow::anyhow!("a task panicked: {e}")),
            }
        }
    }
}

async fn drain(tasks: &mut Tasks) {
    let wait = async {
        while let Some(joined) = tasks.join_next().await {
            if let Ok((name, Err(e))) = joined {
                tracing::warn!(task = name, error = %format!("{e:#}"), "error while stopping");
            }
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, wait).await.is_err() {
        tracing::warn!("some subsystems did not stop within {SHUTDOWN_GRACE:?}; exiting anyway");
        tasks.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One long-running task next to `outcome`, as in `run`: what `supervise` reports.
    async fn supervise_one(
        outcome: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
        cancel_first: bool,
    ) -> Option<String> {
        let shutdown = CancellationToken::new();
        let mut tasks = Tasks::new();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            stop.cancelled().await;
            ("external metrics server", Ok(()))
        });
        if cancel_first {
            shutdown.cancel();
        }
        tasks.spawn(async move { ("leader election", outcome.await) });
        let failure = supervise(&mut tasks, &shutdown).await;
        shutdown.cancel();
        drain(&mut tasks).await;
        failure.map(|e| format!("{e:#}"))
    }

    #[tokio::test]
    async fn a_dying_critical_task_fails_the_process() {
        let failed = supervise_one(async { Err(anyhow::anyhow!("lock lost: 403")) }, false).await;
        assert_eq!(
            failed.as_deref(),
            Some("leader election failed: lock lost: 403")
        );
        let stopped = supervise_one(async { Ok(()) }, false).await;
        assert_eq!(
            stopped.as_deref(),
            Some("leader election stopped unexpectedly")
        );
        let panicked = supervise_one(async { panic!("boom") }, false).await;
        assert!(
            panicked
                .as_deref()
                .is_some_and(|m| m.starts_with("a task panicked")),
            "{panicked:?}"
        );
    }

    #[tokio::test]
    async fn a_requested_shutdown_is_not_a_failure() {
        // A task that ends cleanly while shutting down, as every subsystem does on cancel.
        let stopping = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(())
        };
        assert_eq!(supervise_one(stopping, true).await, None);
    }
}
