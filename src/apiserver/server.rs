//! Serving one of our APIs over TLS until shutdown: the serving certificate (from files,
//! re-read on change, else self-signed), the per-connection service, and the drain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{Request, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::apiserver::response::{Body, ResponseFuture};
use crate::tls::{
    ConnectionInfo, DEFAULT_RELOAD_INTERVAL, PeerIdentity, ServeOptions, ServerCertResolver,
    ServerTls, TlsError, default_sans,
};

/// How long in-flight requests get after shutdown starts. The aggregator retries elsewhere
/// on a dropped connection, and the kubelet's grace period (30 s by default) must cover
/// this plus everything else the process drains.
pub(crate) const DRAIN_PERIOD: Duration = Duration::from_secs(10);

/// File names inside a certificate folder, as a `kubernetes.io/tls` Secret projects them.
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} for the {server}: {source}")]
    Bind {
        server: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{server} TLS: {source}")]
    Tls {
        server: &'static str,
        #[source]
        source: TlsError,
    },
}

/// Where a server's certificate comes from.
#[derive(Debug, Clone, Copy)]
pub struct CertificateSource<'a> {
    /// The server's name in logs and errors, e.g. "external metrics server".
    pub server: &'static str,
    /// The folder holding `tls.crt` and `tls.key`; `None`: self-signed.
    pub dir: Option<&'a Path>,
    /// The setting that names `dir`, for the log line that says which applies.
    pub setting: &'static str,
    /// The Service and namespace whose DNS names a self-signed certificate carries.
    pub service_name: &'a str,
    pub namespace: &'a str,
}

/// The serving certificate: `tls.crt`/`tls.key` from the folder, re-read when they change
/// (until `shutdown`), else self-signed for the Service's names. Must be called within a
/// tokio runtime when a folder is configured.
pub fn serving_certificate(
    source: &CertificateSource<'_>,
    shutdown: &CancellationToken,
) -> Result<Arc<ServerCertResolver>, ServerError> {
    let tls = |source_error| ServerError::Tls {
        server: source.server,
        source: source_error,
    };
    match source.dir {
        Some(dir) => {
            let resolver = ServerCertResolver::from_files(dir.join(CERT_FILE), dir.join(KEY_FILE))
                .map_err(tls)?;
            // The reloader ends with `shutdown`; nothing needs its handle.
            drop(resolver.spawn_reloader(DEFAULT_RELOAD_INTERVAL, shutdown.clone()));
            tracing::info!(
                dir = %dir.display(),
                server = source.server,
                "serving the certificate in {}",
                source.setting
            );
            Ok(resolver)
        }
        None => {
            let sans = default_sans(source.service_name, source.namespace);
            tracing::warn!(
                ?sans,
                server = source.server,
                "no {}: serving a self-signed certificate, which clients can only trust \
                 by skipping verification or pinning this certificate (an APIService's \
                 caBundle)",
                source.setting
            );
            ServerCertResolver::self_signed(&sans).map_err(tls)
        }
    }
}

/// Binds `addr` for `server` (named in the error).
pub async fn bind(server: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            server,
            addr,
            source,
        })
}

/// A service that answers requests given the caller's TLS identity, which it may ask for
/// lazily (a probe never needs it).
pub trait Handler: Clone + Send + Sync + 'static {
    fn start(&self, parts: Parts, peer: impl FnOnce(&Parts) -> Arc<PeerIdentity>)
    -> ResponseFuture;
}

/// A [`Handler`] bound to one TLS connection: each request's client identity comes from the
/// connection itself, so nothing is inserted into or looked up in the request.
pub(crate) struct ConnectionService<H> {
    handler: H,
    connection: ConnectionInfo,
}

impl<H> ConnectionService<H> {
    pub(crate) fn new(handler: H, connection: ConnectionInfo) -> Self {
        ConnectionService {
            handler,
            connection,
        }
    }
}

impl<H: Handler, B> hyper::service::Service<Request<B>> for ConnectionService<H> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: Request<B>) -> ResponseFuture {
        let (parts, _body) = request.into_parts();
        self.handler
            .start(parts, |_| self.connection.peer_identity())
    }
}

/// Serves `handler` over TLS on an already-bound listener until `shutdown`, draining for
/// at most [`DRAIN_PERIOD`].
pub async fn serve_on<H: Handler>(
    listener: TcpListener,
    tls: ServerTls,
    handler: H,
    shutdown: CancellationToken,
) {
    let options = ServeOptions {
        drain: DRAIN_PERIOD,
        ..ServeOptions::default()
    };
    let make = move |connection| ConnectionService::new(handler.clone(), connection);
    crate::tls::serve_connections(listener, tls, make, shutdown, options).await;
}
