//! Builds every subsystem, gates leader-only work, and owns graceful shutdown.

use tokio_util::sync::CancellationToken;

use crate::config::Settings;

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    tracing::info!(
        version = crate::version::VERSION,
        commit = crate::version::COMMIT,
        config_file = ?settings.config_file,
        "starting the Datadog Cluster Agent"
    );
    let client = crate::k8s::client(&settings).await?;
    let capabilities = crate::k8s::discover(&client).await?;
    let namespace = crate::k8s::resource_namespace(&settings);
    tracing::info!(?capabilities, %namespace, "connected to the Kubernetes API server");
    shutdown.cancelled().await;
    tracing::info!("stopped");
    Ok(())
}
