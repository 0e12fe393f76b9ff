//! The node-agent API on `cluster_agent.cmd_port` (5005): what node agents
//! (`DD_CLUSTER_AGENT_ENABLED=true`) call, over TLS, with the shared bearer token.
//!
//! The server (TLS 1.3, or 1.2 with `cluster_agent.allow_legacy_tls`; the certificate of
//! `ipc_cert_file_path`, else a self-signed one as the Go DCA serves), requests counted by
//! handler and status on the Prometheus registry, the token check ([`auth`]), `/version`,
//! `/api/v1/cluster/id` ([`cluster_id`]), the node, namespace and pod tag routes
//! ([`metadata`]), and `/api/v1/tags/pod`, which only our CLI's local token opens
//! ([`token`], `metamap`).
//!
//! It stands beside `external_metrics` on [`crate::apiserver`] and never imports it.

pub(crate) mod auth;
pub(crate) mod cluster_id;
pub(crate) mod metadata;
pub(crate) mod service;
pub(crate) mod service_map;
pub(crate) mod token;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use tokio_util::sync::CancellationToken;

use crate::apiserver::response::{Body, NOSNIFF, body_response};
use crate::apiserver::server::{ServerError, bind, serve_on};
use crate::apiserver::telemetry::RouteTelemetry;
use crate::config::{Secret, Settings};
use crate::tls::{DEFAULT_RELOAD_INTERVAL, ServerCertResolver, ServerTls, default_sans};

const SERVER: &str = "node-agent API server";

/// `ipc_cert_file_path` (certificate chain and key in one PEM file, re-read when it
/// changes, until `shutdown`), else a certificate generated now. Node agents do not verify
/// it (Go's InsecureSkipVerify); the generated one names the Service anyway, and localhost
/// for the local CLI.
fn certificate(
    settings: &Settings,
    namespace: &str,
    shutdown: &CancellationToken,
) -> Result<Arc<ServerCertResolver>, crate::tls::TlsError> {
    if let Some(path) = &settings.ipc_cert_file_path {
        let certs = ServerCertResolver::from_files(path, path)?;
        drop(certs.spawn_reloader(DEFAULT_RELOAD_INTERVAL, shutdown.clone()));
        tracing::info!(path = %path.display(), "{SERVER} serves the certificate in ipc_cert_file_path");
        return Ok(certs);
    }
    let mut sans = default_sans(&settings.cluster_agent.kubernetes_service_name, namespace);
    sans.extend(["localhost".to_owned(), "127.0.0.1".to_owned()]);
    ServerCertResolver::self_signed(&sans)
}

/// The two tokens the node-agent API takes ([`token`]).
pub(crate) struct Tokens {
    /// The node agents' (`cluster_agent.auth_token`).
    pub(crate) node_agents: Secret,
    /// Our own CLI's (`auth_token_file_path`).
    pub(crate) local: Secret,
}

/// What the node-agent API answers from.
pub(crate) struct Sources {
    pub(crate) metadata: Arc<dyn metadata::MetadataSource>,
    /// `/status/health`.
    pub(crate) health: Arc<crate::health::Health>,
    /// `/status`.
    pub(crate) status: crate::status::StatusSource,
    /// `/config/log_level`, `/flare/logs`.
    pub(crate) log_level: crate::logging::LoggingHandle,
    /// `/explain/<ns>/<hpa>`, with external metrics.
    pub(crate) explain: Option<crate::explain::ExplainSource>,
}

/// Serves the node-agent API on `bind_host:cluster_agent.cmd_port` until `shutdown`, then
/// drains as the metrics server does. Requests are counted on `telemetry`.
pub(crate) async fn run(
    settings: &Settings,
    client: kube::Client,
    namespace: &str,
    tokens: Tokens,
    sources: Sources,
    telemetry: RouteTelemetry,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let tls_error = |source| ServerError::Tls {
        server: SERVER,
        source,
    };
    let certs = certificate(settings, namespace, &shutdown).map_err(tls_error)?;
    let tls = if settings.cluster_agent.allow_legacy_tls {
        ServerTls::new(certs, None)
    } else {
        ServerTls::tls13_only(certs)
    }
    .map_err(tls_error)?;
    let addr = SocketAddr::new(settings.bind_host, settings.cluster_agent.cmd_port);
    let listener = bind(SERVER, addr).await?;
    tracing::info!(%addr, "node-agent API server listening");
    let cluster_id = Arc::new(cluster_id::KubeClusterId::new(client, namespace));
    let service = service::NodeApiService::new(
        tokens.node_agents,
        tokens.local,
        cluster_id,
        sources.metadata,
        settings.kubernetes_node_annotations_as_host_aliases.clone(),
        telemetry,
        service::Introspection {
            health: sources.health,
            status: sources.status,
            log_level: sources.log_level,
            explain: sources.explain,
        },
    );
    serve_on(listener, tls, service, shutdown).await;
    tracing::info!(%addr, "node-agent API server stopped");
    Ok(())
}

/// Go's `http.Error`: plain text, `nosniff`, the message and a newline.
pub(crate) fn go_error(code: StatusCode, message: &str, head: bool) -> Response<Body> {
    let mut response = body_response(code, Bytes::from(format!("{message}\n")), head);
    let h = response.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(NOSNIFF, HeaderValue::from_static("nosniff"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
