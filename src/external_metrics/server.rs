//! Binding and serving the external metrics API over TLS until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::external_metrics::service::{ExternalMetricsService, ServiceParts};
use crate::tls::{
    ClientCaHandle, DEFAULT_RELOAD_INTERVAL, ServeOptions, ServerCertResolver, ServerTls, TlsError,
    default_sans,
};

/// How long in-flight requests get after shutdown starts. The aggregator retries elsewhere
/// on a dropped connection, and the kubelet's grace period (30 s by default) must cover
/// this plus everything else the process drains.
pub const DRAIN_PERIOD: Duration = Duration::from_secs(10);

/// File names inside `external_metrics_provider.cert_dir`, as a `kubernetes.io/tls` Secret
/// projects them.
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} for the external metrics server: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("external metrics server TLS: {0}")]
    Tls(#[from] TlsError),
}

/// The serving certificate: `tls.crt`/`tls.key` from `external_metrics_provider.cert_dir`,
/// re-read when they change (until `shutdown`), else self-signed for the Service's names in
/// `namespace`. Must be called within a tokio runtime when a folder is configured.
pub fn serving_certificate(
    settings: &Settings,
    namespace: &str,
    shutdown: &CancellationToken,
) -> Result<Arc<ServerCertResolver>, ServerError> {
    match &settings.external_metrics.cert_dir {
        Some(dir) => {
            let resolver = ServerCertResolver::from_files(dir.join(CERT_FILE), dir.join(KEY_FILE))?;
            // The reloader ends with `shutdown`; nothing needs its handle.
            drop(resolver.spawn_reloader(DEFAULT_RELOAD_INTERVAL, shutdown.clone()));
            tracing::info!(dir = %dir.display(), "external metrics server uses the certificate in cert_dir");
            Ok(resolver)
        }
        None => {
            let service = &settings.cluster_agent.kubernetes_service_name;
            let sans = default_sans(service, namespace);
            tracing::warn!(
                ?sans,
                "no external_metrics_provider.cert_dir: serving a self-signed certificate, \
                 which the APIService can only trust with insecureSkipTLSVerify or this \
                 certificate in caBundle"
            );
            Ok(ServerCertResolver::self_signed(&sans)?)
        }
    }
}

/// Serves the external metrics API on `bind_host:external_metrics_provider.port` until
/// `shutdown` is cancelled, then drains in-flight requests for at most [`DRAIN_PERIOD`].
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
    let tls = ServerTls::new(certs, client_ca)?;
    let addr = SocketAddr::new(settings.bind_host, settings.external_metrics.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    tracing::info!(%addr, "external metrics API server listening");
    serve_on(listener, tls, ExternalMetricsService::new(parts), shutdown).await;
    tracing::info!(%addr, "external metrics API server stopped");
    Ok(())
}

/// Serves `service` over TLS on an already-bound listener until `shutdown`, draining for
/// at most [`DRAIN_PERIOD`].
pub async fn serve_on(
    listener: TcpListener,
    tls: ServerTls,
    service: ExternalMetricsService,
    shutdown: CancellationToken,
) {
    let options = ServeOptions {
        drain: DRAIN_PERIOD,
        ..ServeOptions::default()
    };
    let make = move |connection| service.for_connection(connection);
    crate::tls::serve_connections(listener, tls, make, shutdown, options).await;
}
