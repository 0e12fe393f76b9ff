//! Binding and serving the external metrics API over TLS until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::apiserver::server::{CertificateSource, ServerError, bind, serve_on};
use crate::config::Settings;
use crate::external_metrics::service::{ExternalMetricsService, ServiceParts};
use crate::tls::{ClientCaHandle, ServerCertResolver, ServerTls};

const SERVER: &str = "external metrics server";

/// The serving certificate: `tls.crt`/`tls.key` from `external_metrics_provider.cert_dir`,
/// re-read when they change (until `shutdown`), else self-signed for the Service's names in
/// `namespace`. Must be called within a tokio runtime when a folder is configured.
pub fn serving_certificate(
    settings: &Settings,
    namespace: &str,
    shutdown: &CancellationToken,
) -> Result<Arc<ServerCertResolver>, ServerError> {
    let source = CertificateSource {
        server: SERVER,
        dir: settings.external_metrics.cert_dir.as_deref(),
        setting: "external_metrics_provider.cert_dir",
        service_name: &settings.cluster_agent.kubernetes_service_name,
        namespace,
    };
    crate::apiserver::server::serving_certificate(&source, shutdown)
}

/// Serves the external metrics API on `bind_host:external_metrics_provider.port` until
/// `shutdown` is cancelled, then drains in-flight requests for at most
/// [`DRAIN_PERIOD`](crate::apiserver::server::DRAIN_PERIOD).
///
/// `client_ca` carries the front-proxy (and client) CA bundles the authenticator trusts;
/// with `None` no client certificate is requested, so only bearer tokens authenticate.
pub async fn run(
    settings: &Settings,
    client_ca: Option<ClientCaHandle>,
    parts: ServiceParts,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let namespace = crate::k8s::resource_namespace(settings);
    let certs = serving_certificate(settings, &namespace, &shutdown)?;
    let tls = ServerTls::new(certs, client_ca).map_err(|source| ServerError::Tls {
        server: SERVER,
        source,
    })?;
    let addr = SocketAddr::new(settings.bind_host, settings.external_metrics.port);
    let listener = bind(SERVER, addr).await?;
    tracing::info!(%addr, "external metrics API server listening");
    serve_on(listener, tls, ExternalMetricsService::new(parts), shutdown).await;
    tracing::info!(%addr, "external metrics API server stopped");
    Ok(())
}
