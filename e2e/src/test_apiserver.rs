//! A tiny HTTPS server that can stand behind an APIService, used to check the aggregator path of
//! the harness itself (and available to scenario tests that need a scripted backend).
//!
//! Like a real aggregated API server it requests (does not require) a client certificate and
//! verifies it against the front-proxy CA, and it records what each request carried: path,
//! `X-Remote-*` headers and the verified client certificate's common name.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::controlplane::{IssuedCert, ensure_crypto_provider};

/// A request as the test server saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names lower-cased, in arrival order (repeated headers appear repeatedly).
    pub headers: Vec<(String, String)>,
    /// Common name of the client certificate, present only if it verified against the client CA.
    pub client_cert_cn: Option<String>,
}

impl SeenRequest {
    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header (name case-insensitive).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Custom answers: return `Some((status, json))` to answer a request, `None` for the default.
pub type Responder = Arc<dyn Fn(&SeenRequest) -> Option<(u16, Value)> + Send + Sync>;

/// How to start a [`TestApiServer`].
#[derive(Clone)]
pub struct TestApiServerConfig {
    /// The API group and version it serves discovery for (`GET /apis/<group>/<version>`).
    pub group: String,
    pub version: String,
    /// Serving certificate; for an APIService its SAN must be `<service>.<namespace>.svc`.
    pub serving: IssuedCert,
    /// CA that client certificates must chain to (the front-proxy CA). None: no client auth.
    pub client_ca_pem: Option<String>,
    pub responder: Option<Responder>,
}

impl std::fmt::Debug for TestApiServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApiServerConfig")
            .field("group", &self.group)
            .field("version", &self.version)
            .field("client_auth", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

struct State {
    group: String,
    version: String,
    responder: Option<Responder>,
    seen: Mutex<Vec<SeenRequest>>,
}

/// The running server; it stops when dropped.
pub struct TestApiServer {
    port: u16,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for TestApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApiServer")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl TestApiServer {
    /// Binds 127.0.0.1 on a free port and starts serving.
    pub async fn start(config: TestApiServerConfig) -> Result<Self> {
        ensure_crypto_provider();
        let tls = server_config(&config.serving, config.client_ca_pem.as_deref())?;
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding test API server")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State {
            group: config.group,
            version: config.version,
            responder: config.responder,
            seen: Mutex::new(Vec::new()),
        });
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let task = tokio::spawn(serve(listener, acceptor, Arc::clone(&state)));
        Ok(Self { port, state, task })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Every request seen so far.
    pub fn requests(&self) -> Vec<SeenRequest> {
        // A poisoned lock only means a handler panicked mid-push; the data is still usable.
        self.state
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Requests whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<SeenRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect()
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

fn server_config(serving: &IssuedCert, client_ca_pem: Option<&str>) -> Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("parsing serving certificate")?;
    let key =
        PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes()).context("parsing serving key")?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match client_ca_pem {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots
                    .add(cert.context("parsing client CA")?)
                    .context("adding client CA")?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                // Requested, not required: the aggregator's health checks present one, but a
                // real server must also answer callers that authenticate with tokens.
                .allow_unauthenticated()
                .build()
                .context("building client-certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("serving certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let acceptor = acceptor.clone();
                let state = Arc::clone(&state);
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let cn = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(|cert| common_name(cert));
                    let service = service_fn(move |req| {
                        let state = Arc::clone(&state);
                        let cn = cn.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(req, cn, &state).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

async fn handle(
    req: Request<Incoming>,
    cn: Option<String>,
    state: &State,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    // Drain the body so HTTP/1 keep-alive works; its content is not needed.
    let _ = body.collect().await;
    let seen = SeenRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        client_cert_cn: cn,
    };
    state
        .seen
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(seen.clone());

    let (status, body) = state
        .responder
        .as_ref()
        .and_then(|r| r(&seen))
        .unwrap_or_else(|| default_answer(state, &seen));
    json_response(status, &body)
}

fn default_answer(state: &State, req: &SeenRequest) -> (u16, Value) {
    let group_version = format!("{}/{}", state.group, state.version);
    if req.method == "GET" && req.path == format!("/apis/{group_version}") {
        return (
            200,
            json!({
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": group_version,
                "resources": [],
            }),
        );
    }
    if req.method == "GET" && req.path == format!("/apis/{}", state.group) {
        let version = json!({ "groupVersion": group_version, "version": state.version });
        return (
            200,
            json!({
                "kind": "APIGroup",
                "apiVersion": "v1",
                "name": state.group,
                "versions": [version],
                "preferredVersion": version,
            }),
        );
    }
    (
        404,
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": format!("the server could not find the requested resource {}", req.path),
            "reason": "NotFound",
            "code": 404,
        }),
    )
}

fn json_response(status: u16, body: &Value) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
