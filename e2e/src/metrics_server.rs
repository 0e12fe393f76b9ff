//! Our external metrics server, run in-process against a real [`ControlPlane`] the way a
//! cluster runs it: a serving certificate from files signed by a test CA (re-read when they
//! change), delegated authentication and authorization with the agent's own RBAC from
//! `apiservice/rbac.yaml`, an [`InMemorySource`] the test fills, and registration through
//! the aggregator from `apiservice/apiservice.yaml` (`caBundle`, never
//! `insecureSkipTLSVerify`).
//!
//! The agent identity is a dedicated service account of the agent namespace: the harness's
//! own agent account already holds auth-delegator and the reader Role through the harness's
//! bootstrap RBAC, so using it would not show whether our manifests are enough.
//!
//! Optionally the agent's API traffic goes through a recording proxy ([`ReviewRecorder`]),
//! so tests can read the SubjectAccessReviews the server sent (groups, extras) — the only
//! place those are observable, since RBAC ignores extras.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use datadog_cluster_agent::apiserver::auth::config::{
    CONFIGMAP_NAME, CONFIGMAP_NAMESPACE, KEY_REQUESTHEADER_CA,
};
use datadog_cluster_agent::apiserver::auth::watcher::apply_configmap;
use datadog_cluster_agent::apiserver::auth::{AuthOptions, DelegatingAuth, ReviewApi};
use datadog_cluster_agent::apiserver::seams::Readiness;
use datadog_cluster_agent::apiserver::server::serve_on;
use datadog_cluster_agent::apiserver::server::{CERT_FILE, KEY_FILE};
use datadog_cluster_agent::config::Settings;
use datadog_cluster_agent::external_metrics::memory::InMemorySource;
use datadog_cluster_agent::external_metrics::server::serving_certificate;
use datadog_cluster_agent::external_metrics::{ExternalMetricsService, ServiceParts};
use datadog_cluster_agent::tls::{ClientCaHandle, ServerCertResolver, ServerTls};
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

use crate::conformance::{Endpoint, Fixtures, ReviewLog};
use crate::controlplane::{CertAuthority, ControlPlane, IssuedCert, eventually};

/// The APIService we register.
pub const APISERVICE_NAME: &str = "v1beta1.external.metrics.k8s.io";
/// The Service name in `apiservice/service.yaml` and `apiservice/apiservice.yaml`.
pub const SERVICE_NAME: &str = "datadog-cluster-agent-metrics-api";
/// The service account the manifests bind (`apiservice/rbac.yaml` subjects).
const MANIFEST_SERVICE_ACCOUNT: &str = "datadog-cluster-agent";
const MANIFEST_NAMESPACE: &str = "datadog";

const GENEROUS: Duration = Duration::from_secs(180);

fn manifest(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../apiservice")
        .join(name)
}

/// How to start a [`MetricsServer`].
#[derive(Debug, Clone)]
pub struct MetricsServerOptions {
    /// Service account the agent runs as, in the control plane's agent namespace.
    pub service_account: String,
    /// Delegated auth tunables (short RBAC probe interval by default, so readiness settles
    /// fast).
    pub auth: AuthOptions,
    /// Route the agent's API traffic through a [`ReviewRecorder`].
    pub record_reviews: bool,
}

impl Default for MetricsServerOptions {
    fn default() -> Self {
        Self {
            service_account: "dca-e2e-metrics-api".to_owned(),
            auth: AuthOptions {
                probe_interval: Duration::from_secs(1),
                ..AuthOptions::default()
            },
            record_reviews: false,
        }
    }
}

/// The running server; stops when dropped.
pub struct MetricsServer {
    source: Arc<InMemorySource>,
    auth: Arc<DelegatingAuth>,
    resolver: Arc<ServerCertResolver>,
    handshakes: Arc<CountingResolver>,
    agent_client: kube::Client,
    serving_ca: CertAuthority,
    cert_dir: tempfile::TempDir,
    addr: SocketAddr,
    namespace: String,
    agent_user: String,
    recorder: Option<ReviewRecorder>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .field("agent_user", &self.agent_user)
            .field("cert_dir", &self.cert_dir.path())
            .finish_non_exhaustive()
    }
}

impl MetricsServer {
    /// Applies our RBAC manifests for a fresh agent identity, starts the server on
    /// 127.0.0.1:<free port> and waits until `/readyz` passes (trust ConfigMap read, both
    /// review APIs permitted). Does not register the APIService: see [`register`](Self::register).
    pub async fn start(cp: &ControlPlane, options: MetricsServerOptions) -> Result<Self> {
        crate::controlplane::ensure_crypto_provider();
        let namespace = cp.agent_namespace().to_owned();
        let admin = cp.client();
        let sa = &options.service_account;
        let agent_user = format!("system:serviceaccount:{namespace}:{sa}");

        create_or_replace(
            &admin,
            json!({ "apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": { "name": sa, "namespace": namespace } }),
        )
        .await?;
        apply_rbac_manifests(&admin, &namespace, sa).await?;

        let cert_dir = tempfile::Builder::new()
            .prefix("dca-e2e-metrics-api-")
            .tempdir()
            .context("creating the serving certificate folder")?;

        // The identity kube-apiserver maps a service-account client certificate to: the
        // user name and the service-account groups.
        let sa_group = format!("system:serviceaccounts:{namespace}");
        let identity = cp.issue_client_cert(&agent_user, &["system:serviceaccounts", &sa_group])?;
        let (identity_cert, identity_key) = identity.write(cert_dir.path(), "agent")?;
        let upstream = SocketAddr::from(([127, 0, 0, 1], cp.ports().apiserver));
        let (recorder, kubeconfig) = if options.record_reviews {
            let recorder = ReviewRecorder::start(upstream, cp.ca_cert_pem(), &identity).await?;
            let ca = cert_dir.path().join("recorder-ca.crt");
            std::fs::write(&ca, &recorder.ca_pem)?;
            let kubeconfig = write_kubeconfig(
                cert_dir.path(),
                &format!("https://{}", recorder.addr),
                &ca,
                &identity_cert,
                &identity_key,
            )?;
            (Some(recorder), kubeconfig)
        } else {
            let kubeconfig = write_kubeconfig(
                cert_dir.path(),
                &cp.server_url(),
                cp.ca_cert_path(),
                &identity_cert,
                &identity_key,
            )?;
            (None, kubeconfig)
        };
        let agent_client = crate::controlplane::client_from_kubeconfig(&kubeconfig).await?;

        let serving_ca = CertAuthority::new("dca-e2e-metrics-api-serving-ca")?;
        write_serving_files(cert_dir.path(), &serving_ca, &namespace)?;

        let shutdown = CancellationToken::new();
        // The production path: settings naming a cert_dir, loaded (and hot-reloaded) by
        // the server module, exactly as `run` does.
        let dir = cert_dir.path().to_string_lossy().into_owned();
        let settings = Settings::load_from(None, cert_dir.path(), &|name| {
            (name == "DD_EXTERNAL_METRICS_PROVIDER_CERT_DIR").then(|| dir.clone())
        })
        .map_err(|e| anyhow!("settings: {e}"))?;
        let resolver = serving_certificate(&settings, &namespace, &shutdown)?;
        anyhow::ensure!(
            resolver.is_reloadable(),
            "the serving certificate must come from the files"
        );

        let handshakes = Arc::new(CountingResolver {
            inner: resolver.clone(),
            server_name: format!("{SERVICE_NAME}.{namespace}.svc"),
            h2: AtomicU64::new(0),
        });
        let client_ca = ClientCaHandle::new();
        let auth = DelegatingAuth::new(agent_client.clone(), client_ca.clone(), options.auth);
        let mut tasks = vec![auth.spawn(shutdown.clone())];
        let source = Arc::new(InMemorySource::new());
        let tls = ServerTls::new(handshakes.clone(), Some(client_ca))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let service = ExternalMetricsService::new(ServiceParts {
            authenticator: auth.clone(),
            authorizer: auth.clone(),
            source: source.clone(),
            readiness: vec![auth.readiness()],
        });
        tasks.push(tokio::spawn(serve_on(
            listener,
            tls,
            service,
            shutdown.clone(),
        )));

        let server = Self {
            source,
            auth,
            resolver,
            handshakes,
            agent_client,
            serving_ca,
            cert_dir,
            addr,
            namespace,
            agent_user,
            recorder,
            shutdown,
            tasks,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    /// Waits for `/readyz` (unauthenticated, as the kubelet calls it) and for both RBAC
    /// probes to have succeeded.
    async fn wait_ready(&self) -> Result<()> {
        let endpoint = self.endpoint();
        let tracker = self.auth.readiness_tracker();
        eventually("the metrics server is ready", GENEROUS, || {
            let endpoint = endpoint.clone();
            let readiness: Readiness = self.auth.readiness().borrow().clone();
            let verified = !tracker.review_unverified(ReviewApi::TokenReview)
                && !tracker.review_unverified(ReviewApi::SubjectAccessReview);
            async move {
                let answer = endpoint.get(None, "/readyz", &[]).await?;
                if answer.status == 200 && verified {
                    Ok(Some(()))
                } else {
                    Err(anyhow!(
                        "/readyz {} {:?}; auth {readiness:?}; review RBAC verified: {verified}",
                        answer.status,
                        String::from_utf8_lossy(&answer.body)
                    ))
                }
            }
        })
        .await
    }

    /// Registers the server through the aggregator from our manifests: `apiservice.yaml`
    /// with `caBundle` = the serving CA, backed by an ExternalName Service → localhost on
    /// our port (named as in `service.yaml`; loopback cannot be an Endpoints address and
    /// there is no kube-proxy for a ClusterIP). Created with POST/PUT: server-side apply of
    /// an APIService panics 1.20's apiserver.
    pub async fn register(&self, cp: &ControlPlane) -> Result<()> {
        let admin = cp.client();
        let port = i32::from(self.addr.port());

        let text = std::fs::read_to_string(manifest("service.yaml"))?;
        let mut service: Value = serde_saphyr::from_str(&text).context("service.yaml")?;
        service["metadata"]["namespace"] = json!(self.namespace);
        let port_name = service["spec"]["ports"][0]["name"].clone();
        service["spec"] = json!({
            "type": "ExternalName",
            "externalName": "localhost",
            "ports": [ { "name": port_name, "protocol": "TCP", "port": port } ],
        });
        let service: Service = serde_json::from_value(service)?;
        let services: Api<Service> = Api::namespaced(admin.clone(), &self.namespace);
        match services.create(&PostParams::default(), &service).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let mut current = services.get(SERVICE_NAME).await?;
                current.spec = service.spec;
                services
                    .replace(SERVICE_NAME, &PostParams::default(), &current)
                    .await?;
            }
            Err(e) => return Err(e).context("creating the metrics Service"),
        }

        let text = std::fs::read_to_string(manifest("apiservice.yaml"))?;
        let mut apiservice: Value = serde_saphyr::from_str(&text).context("apiservice.yaml")?;
        let spec = &mut apiservice["spec"];
        anyhow::ensure!(
            spec["caBundle"] == json!("${CA_BUNDLE}"),
            "apiservice.yaml no longer has the caBundle placeholder generate.sh fills"
        );
        anyhow::ensure!(
            spec.get("insecureSkipTLSVerify").is_none(),
            "apiservice.yaml must not skip TLS verification"
        );
        // Filled below as bytes; the typed field serialises them as base64.
        if let Some(spec) = spec.as_object_mut() {
            spec.remove("caBundle");
        }
        spec["service"]["namespace"] = json!(self.namespace);
        spec["service"]["port"] = json!(port);
        let mut apiservice: APIService = serde_json::from_value(apiservice)?;
        if let Some(spec) = apiservice.spec.as_mut() {
            spec.ca_bundle = Some(ByteString(self.serving_ca.cert_pem().as_bytes().to_vec()));
        }
        let api: Api<APIService> = Api::all(admin);
        match api.create(&PostParams::default(), &apiservice).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let current = api.get(APISERVICE_NAME).await?;
                apiservice.metadata.resource_version = current.metadata.resource_version;
                api.replace(APISERVICE_NAME, &PostParams::default(), &apiservice)
                    .await?;
                Ok(())
            }
            Err(e) => Err(e).context("creating the APIService"),
        }
    }

    /// The values the server answers with.
    pub fn source(&self) -> &Arc<InMemorySource> {
        &self.source
    }

    /// The delegated auth instance (configuration in force, statistics).
    pub fn auth(&self) -> &Arc<DelegatingAuth> {
        &self.auth
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `<service>.<namespace>.svc`, the TLS server name the aggregator verifies.
    pub fn server_name(&self) -> String {
        format!("{SERVICE_NAME}.{}.svc", self.namespace)
    }

    /// The CA in the APIService's `caBundle`.
    pub fn serving_ca_pem(&self) -> &str {
        self.serving_ca.cert_pem()
    }

    /// TLS handshakes so far that asked for the Service name and offered HTTP/2: Go's
    /// transport (the aggregator) does, the suite's HTTP/1.1 clients do not.
    pub fn aggregator_handshakes(&self) -> u64 {
        self.handshakes.h2.load(Ordering::SeqCst)
    }

    /// The user the server authenticates to kube-apiserver as.
    pub fn agent_user(&self) -> &str {
        &self.agent_user
    }

    /// How to reach the server directly, verifying it as the aggregator does.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            url: format!("https://{}", self.addr),
            server_name: self.server_name(),
            ca_pem: self.serving_ca.cert_pem().to_owned(),
        }
    }

    /// The SubjectAccessReview bodies the server sent, when started with `record_reviews`.
    pub fn subject_access_reviews(&self) -> Vec<Value> {
        self.recorder
            .as_ref()
            .map(ReviewRecorder::reviews)
            .unwrap_or_default()
    }

    /// A [`ReviewLog`] view of the recorder, if any.
    pub fn review_log(&self) -> Option<Arc<dyn ReviewLog>> {
        self.recorder
            .as_ref()
            .map(|r| Arc::new(r.log.clone()) as Arc<dyn ReviewLog>)
    }

    /// A [`Fixtures`] view of the source.
    pub fn fixtures(&self) -> Arc<dyn Fixtures> {
        Arc::new(SourceFixtures(self.source.clone()))
    }

    /// The certificate a new TLS handshake gets now.
    pub async fn presented_certificate(&self) -> Result<CertificateDer<'static>> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.serving_ca.cert_pem().as_bytes()) {
            roots.add(cert?)?;
        }
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let tcp = TcpStream::connect(self.addr).await?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(self.server_name())?, tcp)
            .await
            .context("TLS handshake with the metrics server")?;
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|c| c.clone().into_owned())
            .ok_or_else(|| anyhow!("the server presented no certificate"))
    }

    /// Replaces `tls.crt`/`tls.key` with a new key and certificate from the same CA (what
    /// a cert-manager renewal or `certs/generate.sh` re-run does), then waits until new
    /// handshakes get it. Returns the new certificate.
    pub async fn rotate_serving_cert(&self) -> Result<CertificateDer<'static>> {
        let before = self.presented_certificate().await?;
        let issued = write_serving_files(self.cert_dir.path(), &self.serving_ca, &self.namespace)?;
        let expected = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())?;
        anyhow::ensure!(expected != before, "the new certificate is the old one");
        eventually("the new serving certificate is served", GENEROUS, || {
            let expected = expected.clone();
            async move {
                let now = self.presented_certificate().await?;
                Ok((now == expected).then_some(now))
            }
        })
        .await
    }

    /// Adds `ca_pem` to `requestheader-client-ca-file` in the trust ConfigMap, keeping the
    /// CAs already there (the first step of every real rotation), and waits until this
    /// server applied it. kube-apiserver keeps added CAs: it merges its own into the key.
    pub async fn add_front_proxy_ca(&self, cp: &ControlPlane, ca_pem: &str) -> Result<()> {
        edit_trust_configmap(&cp.client(), |data| {
            let bundle = data.entry(KEY_REQUESTHEADER_CA.to_owned()).or_default();
            if !bundle.contains(ca_pem.trim()) {
                if !bundle.is_empty() && !bundle.ends_with('\n') {
                    bundle.push('\n');
                }
                bundle.push_str(ca_pem);
            }
        })
        .await?;
        eventually(
            "the metrics server trusts the added CA",
            GENEROUS,
            || async {
                let applied = self
                    .auth
                    .config()
                    .requestheader_ca_pem
                    .is_some_and(|pem| pem.contains(ca_pem.trim()));
                Ok(applied.then_some(()))
            },
        )
        .await
    }

    /// A second listener of the same server (same source, same serving certificate) whose
    /// delegated auth uses the live trust ConfigMap changed by `edit`, applied once and not
    /// watched. For trust configurations kube-apiserver would not let the ConfigMap keep
    /// (it merges its own flags back in), such as empty `requestheader-allowed-names`.
    pub async fn start_static_trust_replica(
        &self,
        edit: impl FnOnce(&mut BTreeMap<String, String>),
    ) -> Result<Replica> {
        let configmaps: Api<ConfigMap> =
            Api::namespaced(self.agent_client.clone(), CONFIGMAP_NAMESPACE);
        let mut cm = configmaps.get(CONFIGMAP_NAME).await?;
        edit(cm.data.get_or_insert_with(Default::default));
        let client_ca = ClientCaHandle::new();
        let auth = DelegatingAuth::new(
            self.agent_client.clone(),
            client_ca.clone(),
            AuthOptions::default(),
        );
        apply_configmap(&auth, &cm).map_err(|e| anyhow!("applying the edited ConfigMap: {e}"))?;
        let tls = ServerTls::new(self.resolver.clone(), Some(client_ca))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = self.shutdown.child_token();
        let service = ExternalMetricsService::new(ServiceParts {
            authenticator: auth.clone(),
            authorizer: auth,
            source: self.source.clone(),
            readiness: Vec::new(),
        });
        let task = tokio::spawn(serve_on(listener, tls, service, shutdown.clone()));
        Ok(Replica {
            endpoint: Endpoint {
                url: format!("https://{addr}"),
                server_name: self.server_name(),
                ca_pem: self.serving_ca.cert_pem().to_owned(),
            },
            shutdown,
            task,
        })
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A listener started by [`MetricsServer::start_static_trust_replica`]; stops when dropped.
#[derive(Debug)]
pub struct Replica {
    pub endpoint: Endpoint,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.task.abort();
    }
}

/// The serving certificate resolver, counting the handshakes that look like the
/// aggregator's.
#[derive(Debug)]
struct CountingResolver {
    inner: Arc<ServerCertResolver>,
    server_name: String,
    h2: AtomicU64,
}

impl ResolvesServerCert for CountingResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let named = hello.server_name() == Some(self.server_name.as_str());
        let h2 = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == b"h2"));
        if named && h2 {
            self.h2.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.resolve(hello)
    }
}

struct SourceFixtures(Arc<InMemorySource>);

impl Fixtures for SourceFixtures {
    fn set(&self, metric: &str, labels: &[(&str, &str)], value: f64) {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let now = jiff::Timestamp::now().as_second();
        self.0.set(metric, labels, value, now);
    }
}

/// Issues a serving certificate for every name the Service is dialled by, plus loopback,
/// and writes it over `tls.crt`/`tls.key`. Each file is replaced by a rename so a reader
/// never sees half a file; a reader may still see a new certificate with the old key for
/// a moment, which the server's reloader rejects (keeping the old pair) and retries.
fn write_serving_files(dir: &Path, ca: &CertAuthority, namespace: &str) -> Result<IssuedCert> {
    let names = [
        format!("{SERVICE_NAME}.{namespace}.svc"),
        SERVICE_NAME.to_owned(),
        format!("{SERVICE_NAME}.{namespace}"),
        format!("{SERVICE_NAME}.{namespace}.svc.cluster.local"),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ];
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let issued = ca.issue_server(&names)?;
    for (file, content) in [(KEY_FILE, &issued.key_pem), (CERT_FILE, &issued.cert_pem)] {
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, content)?;
        std::fs::rename(&tmp, dir.join(file))?;
    }
    Ok(issued)
}

fn write_kubeconfig(
    dir: &Path,
    server: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<PathBuf> {
    let q = |s: &str| Value::String(s.to_owned()).to_string();
    let p = |p: &Path| q(&p.to_string_lossy());
    let path = dir.join("agent.kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: agent\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: agent\ncurrent-context: e2e\n",
            q(server),
            p(ca),
            p(cert),
            p(key),
        ),
    )?;
    Ok(path)
}

/// Applies `apiservice/rbac.yaml` with its agent subjects (`datadog/datadog-cluster-agent`)
/// replaced by `namespace/service_account`.
pub async fn apply_rbac_manifests(
    admin: &kube::Client,
    namespace: &str,
    service_account: &str,
) -> Result<()> {
    let text = std::fs::read_to_string(manifest("rbac.yaml"))?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).context("rbac.yaml")?;
    anyhow::ensure!(!docs.is_empty(), "rbac.yaml has no objects");
    let mut substituted = 0;
    for mut doc in docs {
        if let Some(subjects) = doc.get_mut("subjects").and_then(Value::as_array_mut) {
            for subject in subjects {
                if subject["kind"] == "ServiceAccount"
                    && subject["name"] == MANIFEST_SERVICE_ACCOUNT
                    && subject["namespace"] == MANIFEST_NAMESPACE
                {
                    subject["name"] = json!(service_account);
                    subject["namespace"] = json!(namespace);
                    substituted += 1;
                }
            }
        }
        create_or_replace(admin, doc).await?;
    }
    anyhow::ensure!(
        substituted >= 2,
        "rbac.yaml no longer binds the agent's service account (auth-delegator and the reader Role)"
    );
    Ok(())
}

fn api_resource(kind: &str, api_version: &str) -> Result<(ApiResource, bool)> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let (plural, namespaced) = match kind {
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        "Role" => ("roles", true),
        "RoleBinding" => ("rolebindings", true),
        "ServiceAccount" => ("serviceaccounts", true),
        other => bail!("no plural known for kind {other}"),
    };
    Ok((
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural),
        namespaced,
    ))
}

/// POST, or PUT over the existing object on a conflict.
async fn create_or_replace(admin: &kube::Client, object: Value) -> Result<()> {
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (resource, namespaced) = api_resource(&kind, api_version)?;
    let api: Api<DynamicObject> = if namespaced {
        let ns = object["metadata"]["namespace"]
            .as_str()
            .ok_or_else(|| anyhow!("{kind} {name} has no namespace"))?;
        Api::namespaced_with(admin.clone(), ns, &resource)
    } else {
        Api::all_with(admin.clone(), &resource)
    };
    let mut dynamic: DynamicObject = serde_json::from_value(object)?;
    match api.create(&PostParams::default(), &dynamic).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let current = api.get(&name).await?;
            dynamic.metadata.resource_version = current.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &dynamic)
                .await
                .with_context(|| format!("replacing {kind} {name}"))?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("creating {kind} {name}")),
    }
}

/// Read-modify-write of the trust ConfigMap, retried on conflicts with kube-apiserver's
/// controller that maintains it.
pub async fn edit_trust_configmap(
    admin: &kube::Client,
    edit: impl Fn(&mut BTreeMap<String, String>),
) -> Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(admin.clone(), CONFIGMAP_NAMESPACE);
    eventually("edit the trust ConfigMap", GENEROUS, || {
        let api = api.clone();
        let edit = &edit;
        async move {
            let mut cm = api.get(CONFIGMAP_NAME).await?;
            edit(cm.data.get_or_insert_with(Default::default));
            api.replace(CONFIGMAP_NAME, &PostParams::default(), &cm)
                .await?;
            Ok(Some(()))
        }
    })
    .await
}

/// Sets the APIService's `caBundle`. kube-apiserver's proxy keeps one transport (and its
/// HTTP/2 connection) per distinct TLS configuration, caBundle bytes included, so a changed
/// bundle — even the same CA with different whitespace — makes later proxied requests open
/// new TLS connections, verified against the bundle. Without that, a long-lived connection
/// would hide whether a rotated serving certificate is accepted.
pub async fn set_ca_bundle(admin: &kube::Client, bundle_pem: &str) -> Result<()> {
    let api: Api<APIService> = Api::all(admin.clone());
    let encoded = serde_json::to_value(ByteString(bundle_pem.as_bytes().to_vec()))?;
    api.patch(
        APISERVICE_NAME,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "caBundle": encoded } })),
    )
    .await
    .context("patching the APIService caBundle")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Review recorder
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct RecordedReviews(Arc<Mutex<Vec<Value>>>);

impl ReviewLog for RecordedReviews {
    fn subject_access_reviews(&self) -> Vec<Value> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// An HTTPS reverse proxy between the agent and kube-apiserver, presenting the agent's
/// client certificate upstream, that keeps a copy of every SubjectAccessReview request
/// body. Each downstream connection gets its own upstream connection; HTTP/1.1 only, so
/// watches stream through unchanged.
pub struct ReviewRecorder {
    addr: SocketAddr,
    ca_pem: String,
    log: RecordedReviews,
    task: JoinHandle<()>,
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

impl ReviewRecorder {
    async fn start(
        upstream: SocketAddr,
        upstream_ca_pem: &str,
        identity: &IssuedCert,
    ) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca = CertAuthority::new("dca-e2e-review-recorder-ca")?;
        let serving = ca.issue_server(&["127.0.0.1"])?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()?,
                PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes())?,
            )?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];

        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(upstream_ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()?,
                PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())?,
            )?;
        client.alpn_protocols = vec![b"http/1.1".to_vec()];

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let log = RecordedReviews::default();
        let task = tokio::spawn(proxy_loop(
            listener,
            TlsAcceptor::from(Arc::new(server)),
            TlsConnector::from(Arc::new(client)),
            upstream,
            log.clone(),
        ));
        Ok(Self {
            addr,
            ca_pem: ca.cert_pem().to_owned(),
            log,
            task,
        })
    }

    fn reviews(&self) -> Vec<Value> {
        self.log.subject_access_reviews()
    }
}

impl Drop for ReviewRecorder {
    fn drop(&mut self) {
        // Dropping the accept task's JoinSet aborts every connection task.
        self.task.abort();
    }
}

async fn proxy_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    upstream: SocketAddr,
    log: RecordedReviews,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let (acceptor, connector, log) = (acceptor.clone(), connector.clone(), log.clone());
                connections.spawn(async move {
                    if let Err(error) = proxy_connection(tcp, acceptor, connector, upstream, log).await {
                        tracing::debug!(%error, "review recorder connection ended");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn proxy_connection(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    upstream: SocketAddr,
    log: RecordedReviews,
) -> Result<()> {
    let downstream = acceptor.accept(tcp).await?;
    let upstream_tls = connector
        .connect(
            ServerName::IpAddress(upstream.ip().into()),
            TcpStream::connect(upstream).await?,
        )
        .await?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake::<_, ProxyBody>(TokioIo::new(upstream_tls)).await?;
    let upstream_task = tokio::spawn(connection);
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let service = service_fn(move |request: Request<Incoming>| {
        let (sender, log) = (sender.clone(), log.clone());
        async move { forward(request, &sender, &log).await }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(downstream), service)
        .await;
    upstream_task.abort();
    served.map_err(Into::into)
}

async fn forward(
    request: Request<Incoming>,
    sender: &tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<ProxyBody>>,
    log: &RecordedReviews,
) -> Result<Response<Incoming>, hyper::Error> {
    let (parts, body) = request.into_parts();
    let body: ProxyBody = if parts.method == http::Method::POST
        && parts.uri.path().ends_with("/subjectaccessreviews")
    {
        let bytes = body.collect().await?.to_bytes();
        if let Ok(review) = serde_json::from_slice::<Value>(&bytes) {
            log.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(review);
        }
        Full::new(bytes).map_err(|never| match never {}).boxed()
    } else {
        body.boxed()
    };
    let mut sender = sender.lock().await;
    sender.ready().await?;
    sender.send_request(Request::from_parts(parts, body)).await
}
