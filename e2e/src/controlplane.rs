//! A real Kubernetes v1.20.2 control plane (etcd, kube-apiserver, kube-controller-manager and
//! optionally kube-scheduler) on 127.0.0.1, started fresh for a test.
//!
//! The binaries come from `controlplane/build.sh` (built once from Debian's `kubernetes` source
//! package and cached under `~/.cache/datadog-cluster-agent/`). Each [`ControlPlane`] gets its own
//! temporary directory, freshly generated certificates and free ports, so tests can run in
//! parallel. Every process lives in a [`ProcessGroup`] and dies with the `ControlPlane` or with the
//! test process, whichever goes first.
//!
//! Each flag below says why it is set; the ones that work around a failure say what failed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use serde_json::{Value, json};

use crate::process::{self, ProcessGroup};

/// The Kubernetes version the harness builds and runs.
pub const KUBERNETES_VERSION: &str = "v1.20.2";

/// The field manager for everything the harness applies.
/// See where the API server is started.
const ENDPOINT_SLICE_NODE_NAME: &str = "--feature-gates=EndpointSliceNodeName=true";
const FIELD_MANAGER: &str = "dca-e2e-harness";

/// Installs rustls' ring provider as the process default. kube 5 and reqwest (built with
/// `rustls-no-provider`) need one before they build a client; a second install is harmless.
pub fn ensure_crypto_provider() {
    // Err means a provider is already installed, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Runs `controlplane/build.sh` (cached after the first run) and returns the binary directory.
pub fn ensure_binaries() -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane/build.sh");
    let output = Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}); see its messages above",
            script.display(),
            output.status
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let dir = stdout
        .lines()
        .last()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| anyhow!("{} printed no binary directory", script.display()))?;
    Ok(PathBuf::from(dir))
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// What an issued certificate may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertUsage {
    Server,
    Client,
    ServerAndClient,
}

/// A PEM certificate and its PKCS#8 PEM private key.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl IssuedCert {
    /// Writes `<stem>.crt` and `<stem>.key` into `dir`; returns both paths.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        fs::write(&cert, &self.cert_pem).with_context(|| format!("writing {}", cert.display()))?;
        fs::write(&key, &self.key_pem).with_context(|| format!("writing {}", key.display()))?;
        Ok((cert, key))
    }
}

/// A throwaway certificate authority (ECDSA P-256) that issues leaf certificates.
pub struct CertAuthority {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority").finish_non_exhaustive()
    }
}

impl CertAuthority {
    /// A new self-signed CA with the given common name.
    pub fn new(common_name: &str) -> Result<Self> {
        let key = KeyPair::generate().context("generating CA key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name, &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .with_context(|| format!("self-signing CA {common_name}"))?;
        Ok(Self {
            params,
            key,
            cert_pem: cert.pem(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a leaf certificate. `sans` may mix DNS names and IP addresses.
    pub fn issue(
        &self,
        common_name: &str,
        organizations: &[&str],
        sans: &[&str],
        usage: CertUsage,
    ) -> Result<IssuedCert> {
        let key = KeyPair::generate().context("generating leaf key")?;
        let mut params =
            CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .with_context(|| format!("certificate parameters for {common_name}"))?;
        params.distinguished_name = dn(common_name, organizations);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match usage {
            CertUsage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            CertUsage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            CertUsage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .with_context(|| format!("signing certificate for {common_name}"))?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A serving certificate for the given names.
    pub fn issue_server(&self, sans: &[&str]) -> Result<IssuedCert> {
        let cn = sans.first().copied().unwrap_or("server");
        self.issue(cn, &[], sans, CertUsage::Server)
    }

    /// A client certificate: the apiserver maps CN to the user name and O to groups.
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> Result<IssuedCert> {
        self.issue(user, groups, &[], CertUsage::Client)
    }
}

fn dn(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for org in organizations {
        dn.push(DnType::OrganizationName, *org);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

// ---------------------------------------------------------------------------------------------
// Options and layout
// ---------------------------------------------------------------------------------------------

/// How to start a [`ControlPlane`].
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    /// Also run kube-scheduler (it has nothing to schedule onto without nodes).
    pub scheduler: bool,
    /// Serve kube-controller-manager's (and the scheduler's) insecure health port on the fixed
    /// 127.0.0.1:10252 (10251) that `componentstatuses` probes. Only one control plane per
    /// machine can do this at a time; the harness serialises them with a file lock.
    pub componentstatus_ports: bool,
    /// `--horizontal-pod-autoscaler-sync-period`.
    pub hpa_sync_period: Duration,
    /// `--horizontal-pod-autoscaler-downscale-stabilization` (upstream default 5 min; shorter so
    /// scale-down scenarios finish in reasonable time).
    pub hpa_downscale_stabilization: Duration,
    /// Namespace of the agent under test (its ConfigMaps, leases and events go there).
    pub agent_namespace: String,
    /// ServiceAccount name the agent's client certificate impersonates.
    pub agent_service_account: String,
    /// Grant the agent the harness's own roles. Off: the agent's namespace and
    /// ServiceAccount exist but it may do nothing until the test applies RBAC (the shipped
    /// manifests, to prove they suffice).
    pub agent_rbac: bool,
    /// Upper bound for the whole start-up (generous: the machine is shared).
    pub start_timeout: Duration,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        Self {
            scheduler: false,
            componentstatus_ports: false,
            hpa_sync_period: Duration::from_secs(3),
            hpa_downscale_stabilization: Duration::from_secs(10),
            agent_namespace: "datadog".to_owned(),
            agent_service_account: "datadog-cluster-agent".to_owned(),
            agent_rbac: true,
            start_timeout: Duration::from_secs(300),
        }
    }
}

/// Paths of the generated certificates and keys.
#[derive(Debug, Clone)]
pub struct PkiPaths {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub apiserver_cert: PathBuf,
    pub apiserver_key: PathBuf,
    pub service_account_key: PathBuf,
    pub service_account_pub: PathBuf,
    pub front_proxy_ca_cert: PathBuf,
    pub front_proxy_client_cert: PathBuf,
    pub front_proxy_client_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub controller_manager_cert: PathBuf,
    pub controller_manager_key: PathBuf,
    pub scheduler_cert: PathBuf,
    pub scheduler_key: PathBuf,
    pub agent_cert: PathBuf,
    pub agent_key: PathBuf,
}

/// The admin's user name (CN of the admin client cert, group system:masters).
pub const ADMIN_USER: &str = "kubernetes-admin";
/// The user name the front-proxy client certificate carries.
pub const FRONT_PROXY_CLIENT_CN: &str = "front-proxy-client";

struct Pki {
    paths: PkiPaths,
    cluster_ca: CertAuthority,
    front_proxy_ca_pem: String,
}

fn generate_pki(dir: &Path, agent_user: &str, agent_groups: &[&str]) -> Result<Pki> {
    fs::create_dir_all(dir)?;
    let ca = CertAuthority::new("dca-e2e-cluster-ca")?;
    let ca_cert = dir.join("ca.crt");
    let ca_key = dir.join("ca.key");
    fs::write(&ca_cert, ca.cert_pem())?;
    fs::write(&ca_key, ca.key_pem())?;

    let (apiserver_cert, apiserver_key) = ca
        .issue(
            "kube-apiserver",
            &[],
            &[
                "127.0.0.1",
                "localhost",
                "10.0.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            CertUsage::Server,
        )?
        .write(dir, "apiserver")?;

    let sa = KeyPair::generate().context("generating service-account key")?;
    let service_account_key = dir.join("sa.key");
    let service_account_pub = dir.join("sa.pub");
    fs::write(&service_account_key, sa.serialize_pem())?;
    fs::write(&service_account_pub, sa.public_key_pem())?;

    let front_proxy_ca = CertAuthority::new("dca-e2e-front-proxy-ca")?;
    let front_proxy_ca_cert = dir.join("front-proxy-ca.crt");
    fs::write(&front_proxy_ca_cert, front_proxy_ca.cert_pem())?;
    let (front_proxy_client_cert, front_proxy_client_key) = front_proxy_ca
        .issue_client(FRONT_PROXY_CLIENT_CN, &[])?
        .write(dir, "front-proxy-client")?;

    let (admin_cert, admin_key) = ca
        .issue_client(ADMIN_USER, &["system:masters"])?
        .write(dir, "admin")?;
    let (controller_manager_cert, controller_manager_key) = ca
        .issue_client("system:kube-controller-manager", &[])?
        .write(dir, "controller-manager")?;
    let (scheduler_cert, scheduler_key) = ca
        .issue_client("system:kube-scheduler", &[])?
        .write(dir, "scheduler")?;
    let (agent_cert, agent_key) = ca
        .issue_client(agent_user, agent_groups)?
        .write(dir, "agent")?;

    Ok(Pki {
        paths: PkiPaths {
            ca_cert,
            ca_key,
            apiserver_cert,
            apiserver_key,
            service_account_key,
            service_account_pub,
            front_proxy_ca_cert,
            front_proxy_client_cert,
            front_proxy_client_key,
            admin_cert,
            admin_key,
            controller_manager_cert,
            controller_manager_key,
            scheduler_cert,
            scheduler_key,
            agent_cert,
            agent_key,
        },
        cluster_ca: ca,
        front_proxy_ca_pem: front_proxy_ca.cert_pem().to_owned(),
    })
}

/// A kubeconfig that authenticates with a client certificate. Every scalar is written as a JSON
/// string, which is also a valid double-quoted YAML scalar, so paths need no YAML escaping.
fn kubeconfig_yaml(
    server: &str,
    ca: &Path,
    user: &str,
    cert: &Path,
    key: &Path,
    namespace: &str,
) -> String {
    let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    let p = |p: &Path| q(&p.to_string_lossy());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate: {cert}\n    client-key: {key}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: {user}\n    namespace: {namespace}\ncurrent-context: e2e\n",
        server = q(server),
        ca = p(ca),
        user = q(user),
        cert = p(cert),
        key = p(key),
        namespace = q(namespace),
    )
}

/// A kube client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client> {
    ensure_crypto_provider();
    let kubeconfig =
        Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading {}", path.display()))?;
    Client::try_from(config).context("building kube client")
}

/// Ports of one control plane, all on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub etcd_client: u16,
    pub etcd_peer: u16,
    pub apiserver: u16,
    pub controller_manager: u16,
    pub scheduler: u16,
}

impl Ports {
    fn pick() -> Result<Self> {
        Ok(Self {
            etcd_client: process::free_port()?,
            etcd_peer: process::free_port()?,
            apiserver: process::free_port()?,
            controller_manager: process::free_port()?,
            scheduler: process::free_port()?,
        })
    }
}

/// PIDs of the control-plane processes.
#[derive(Debug, Clone, Copy)]
pub struct Pids {
    pub etcd: u32,
    pub apiserver: u32,
    pub controller_manager: u32,
    pub scheduler: Option<u32>,
}

// ---------------------------------------------------------------------------------------------
// Test-object descriptions
// ---------------------------------------------------------------------------------------------

/// The target of an External metric in an autoscaling/v2beta2 HPA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricTarget {
    /// Desired replicas = ceil(value / averageValue).
    AverageValue(String),
    /// Desired replicas = ceil(current × value / target).
    Value(String),
}

/// An autoscaling/v2beta2 HPA on a Deployment with one External metric.
#[derive(Debug, Clone)]
pub struct ExternalHpa {
    pub name: String,
    pub deployment: String,
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub metric_name: String,
    /// `metric.selector.matchLabels`; empty means no selector at all.
    pub match_labels: BTreeMap<String, String>,
    pub target: MetricTarget,
    /// `spec.behavior`, verbatim (v2beta2 shape).
    pub behavior: Option<Value>,
}

impl ExternalHpa {
    /// An HPA named like the deployment, 1..=10 replicas.
    pub fn new(deployment: &str, metric_name: &str, target: MetricTarget) -> Self {
        Self {
            name: deployment.to_owned(),
            deployment: deployment.to_owned(),
            min_replicas: 1,
            max_replicas: 10,
            metric_name: metric_name.to_owned(),
            match_labels: BTreeMap::new(),
            target,
            behavior: None,
        }
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.match_labels.insert(key.to_owned(), value.to_owned());
        self
    }

    fn to_json(&self, namespace: &str) -> Value {
        let mut metric = json!({ "name": self.metric_name });
        if !self.match_labels.is_empty() {
            metric["selector"] = json!({ "matchLabels": self.match_labels });
        }
        let target = match &self.target {
            MetricTarget::AverageValue(v) => json!({ "type": "AverageValue", "averageValue": v }),
            MetricTarget::Value(v) => json!({ "type": "Value", "value": v }),
        };
        let mut spec = json!({
            "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": self.deployment },
            "minReplicas": self.min_replicas,
            "maxReplicas": self.max_replicas,
            "metrics": [ { "type": "External", "external": { "metric": metric, "target": target } } ],
        });
        if let Some(behavior) = &self.behavior {
            spec["behavior"] = behavior.clone();
        }
        json!({
            "apiVersion": "autoscaling/v2beta2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": { "name": self.name, "namespace": namespace },
            "spec": spec,
        })
    }
}

/// The `autoscaling/v2beta2` HPA resource, which k8s-openapi 0.29 has no type for.
pub fn hpa_v2beta2_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("autoscaling", "v2beta2", "HorizontalPodAutoscaler"),
        "horizontalpodautoscalers",
    )
}

/// One entry of an HPA's `status.conditions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HpaCondition {
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// The parts of an HPA's status the tests look at, plus the raw status.
#[derive(Debug, Clone)]
pub struct HpaStatus {
    pub current_replicas: i64,
    pub desired_replicas: i64,
    pub conditions: Vec<HpaCondition>,
    pub current_metrics: Vec<Value>,
    pub raw: Value,
}

impl HpaStatus {
    fn from_status(status: &Value) -> Self {
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        Self {
            current_replicas: status
                .get("currentReplicas")
                .and_then(Value::as_i64)
                .unwrap_or(0),
            desired_replicas: status
                .get("desiredReplicas")
                .and_then(Value::as_i64)
                .unwrap_or(0),
            conditions: status
                .get("conditions")
                .and_then(Value::as_array)
                .map(|cs| {
                    cs.iter()
                        .map(|c| HpaCondition {
                            type_: text(c, "type"),
                            status: text(c, "status"),
                            reason: text(c, "reason"),
                            message: text(c, "message"),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            current_metrics: status
                .get("currentMetrics")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            raw: status.clone(),
        }
    }

    pub fn condition(&self, type_: &str) -> Option<&HpaCondition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// `spec.replicas` and `status.replicas` of a Deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeploymentReplicas {
    pub spec: i32,
    pub status: i32,
}

/// One address of an Endpoints subset.
#[derive(Debug, Clone)]
pub struct EndpointAddress {
    pub ip: String,
    pub node_name: Option<String>,
    /// Name of the Pod (same namespace) the address belongs to.
    pub pod: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------------------------

/// Polls `check` every 500 ms until it returns `Ok(Some(value))` or `deadline` passes. Errors from
/// `check` are remembered for the failure message but do not stop the polling: eventual state,
/// not timing, is what tests assert.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let until = Instant::now() + deadline;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last_error = Some(err),
        }
        if Instant::now() >= until {
            return Err(match last_error {
                Some(err) => err.context(format!("{what}: not reached within {deadline:?}")),
                None => anyhow!("{what}: not reached within {deadline:?}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The control plane
// ---------------------------------------------------------------------------------------------

/// A running control plane; everything stops when it is dropped.
pub struct ControlPlane {
    // Field order matters for drop: processes go before the directory they write into.
    group: ProcessGroup,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    bin_dir: PathBuf,
    options: ControlPlaneOptions,
    ports: Ports,
    pids: Pids,
    pki: Pki,
    admin_kubeconfig: PathBuf,
    agent_kubeconfig: PathBuf,
    client: Client,
    logs: Vec<(String, PathBuf)>,
    _componentstatus_lock: Option<File>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("dir", &self.dir_path)
            .field("ports", &self.ports)
            .field("pids", &self.pids)
            .finish_non_exhaustive()
    }
}

/// Start-up failed because a port we picked was taken in the meantime; worth another try.
#[derive(Debug, thiserror::Error)]
#[error("a control-plane port was taken before it could be bound: {0}")]
struct PortRace(String);

impl ControlPlane {
    /// Starts a control plane with default options.
    pub async fn start() -> Result<Self> {
        Self::start_with(ControlPlaneOptions::default()).await
    }

    /// Builds (once) and starts a control plane; waits until the apiserver is ready, the
    /// controller-manager is healthy and its ServiceAccount controllers are working.
    pub async fn start_with(options: ControlPlaneOptions) -> Result<Self> {
        ensure_crypto_provider();
        let bin_dir = tokio::task::spawn_blocking(ensure_binaries)
            .await
            .context("build.sh task")??;
        let lock = if options.componentstatus_ports {
            Some(
                tokio::task::spawn_blocking(lock_componentstatus_ports)
                    .await
                    .context("lock task")??,
            )
        } else {
            None
        };
        let mut lock = lock;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(&options, &bin_dir, &mut lock).await {
                Ok(cp) => return Ok(cp),
                Err(err) if attempt < 3 && err.downcast_ref::<PortRace>().is_some() => {
                    eprintln!("e2e control plane: {err:#}; retrying with new ports");
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn start_once(
        options: &ControlPlaneOptions,
        bin_dir: &Path,
        lock: &mut Option<File>,
    ) -> Result<Self> {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("dca-e2e-cp-")
            .tempdir()
            .context("creating control-plane directory")?;
        let dir_path = dir.path().to_owned();
        let agent_user = format!(
            "system:serviceaccount:{}:{}",
            options.agent_namespace, options.agent_service_account
        );
        let agent_ns_group = format!("system:serviceaccounts:{}", options.agent_namespace);
        let pki = generate_pki(
            &dir_path.join("pki"),
            &agent_user,
            &["system:serviceaccounts", &agent_ns_group],
        )?;
        let ports = Ports::pick()?;
        let server_url = format!("https://127.0.0.1:{}", ports.apiserver);
        let admin_kubeconfig = dir_path.join("admin.kubeconfig");
        let agent_kubeconfig = dir_path.join("agent.kubeconfig");
        let cm_kubeconfig = dir_path.join("controller-manager.kubeconfig");
        let sched_kubeconfig = dir_path.join("scheduler.kubeconfig");
        let p = &pki.paths;
        for (path, user, cert, key, ns) in [
            (
                &admin_kubeconfig,
                ADMIN_USER,
                &p.admin_cert,
                &p.admin_key,
                "default",
            ),
            (
                &agent_kubeconfig,
                agent_user.as_str(),
                &p.agent_cert,
                &p.agent_key,
                options.agent_namespace.as_str(),
            ),
            (
                &cm_kubeconfig,
                "system:kube-controller-manager",
                &p.controller_manager_cert,
                &p.controller_manager_key,
                "kube-system",
            ),
            (
                &sched_kubeconfig,
                "system:kube-scheduler",
                &p.scheduler_cert,
                &p.scheduler_key,
                "kube-system",
            ),
        ] {
            fs::write(
                path,
                kubeconfig_yaml(&server_url, &p.ca_cert, user, cert, key, ns),
            )
            .with_context(|| format!("writing {}", path.display()))?;
        }
        let logs_dir = dir_path.join("logs");
        fs::create_dir_all(&logs_dir)?;

        let mut group = ProcessGroup::new("control-plane", Some(&dir_path))?;
        let deadline = started + options.start_timeout;
        let mut logs = Vec::new();

        // etcd
        let etcd_log = logs_dir.join("etcd.log");
        let mut etcd = Command::new(bin_dir.join("etcd"));
        let peer = format!("http://127.0.0.1:{}", ports.etcd_peer);
        let client_url = format!("http://127.0.0.1:{}", ports.etcd_client);
        etcd.arg("--name=default")
            .arg(format!("--data-dir={}", dir_path.join("etcd").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            .arg("--log-level=warn")
            .arg("--logger=zap");
        let etcd_pid = group.spawn("etcd", etcd, &etcd_log)?;
        logs.push(("etcd".to_owned(), etcd_log.clone()));
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(5))
            .build()
            .context("building readiness HTTP client")?;
        {
            let url = format!("{client_url}/health");
            wait_component(&mut group, etcd_pid, "etcd", &etcd_log, deadline, || {
                let http = http.clone();
                let url = url.clone();
                async move {
                    let resp = http.get(&url).send().await?;
                    Ok(resp.status().is_success() && resp.text().await?.contains("true"))
                }
            })
            .await?;
        }

        // kube-apiserver
        let apiserver_log = logs_dir.join("kube-apiserver.log");
        let mut apiserver = Command::new(bin_dir.join("kube-apiserver"));
        apiserver
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={}", ports.apiserver))
            // The legacy insecure port would be 127.0.0.1:8080 in every control plane at once.
            .arg("--insecure-port=0")
            .arg(format!(
                "--cert-dir={}",
                dir_path.join("apiserver-certs").display()
            ))
            .arg("--endpoint-reconciler-type=none")
            // 1.20's EndpointSlices (discovery.k8s.io/v1beta1) carry nodeName only with this
            // alpha gate, on the API server (which keeps the field) and the controller
            // manager (which sets it); `v1` (1.21+) always has it.
            .arg(ENDPOINT_SLICE_NODE_NAME)
            .arg(format!("--etcd-servers={client_url}"))
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg(format!("--tls-cert-file={}", p.apiserver_cert.display()))
            .arg(format!(
                "--tls-private-key-file={}",
                p.apiserver_key.display()
            ))
            .arg(format!("--client-ca-file={}", p.ca_cert.display()))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!(
                "--service-account-key-file={}",
                p.service_account_pub.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                p.service_account_key.display()
            ))
            .arg("--authorization-mode=Node,RBAC")
            .arg(format!(
                "--requestheader-client-ca-file={}",
                p.front_proxy_ca_cert.display()
            ))
            .arg(format!(
                "--requestheader-allowed-names={FRONT_PROXY_CLIENT_CN}"
            ))
            .arg("--requestheader-username-headers=X-Remote-User")
            .arg("--requestheader-group-headers=X-Remote-Group")
            .arg("--requestheader-extra-headers-prefix=X-Remote-Extra-")
            .arg(format!(
                "--proxy-client-cert-file={}",
                p.front_proxy_client_cert.display()
            ))
            .arg(format!(
                "--proxy-client-key-file={}",
                p.front_proxy_client_key.display()
            ))
            .arg("--allow-privileged=true")
            .arg("--profiling=false");
        let apiserver_pid = group.spawn("kube-apiserver", apiserver, &apiserver_log)?;
        logs.push(("kube-apiserver".to_owned(), apiserver_log.clone()));
        let client = client_from_kubeconfig(&admin_kubeconfig).await?;
        wait_component(
            &mut group,
            apiserver_pid,
            "kube-apiserver",
            &apiserver_log,
            deadline,
            || {
                let client = client.clone();
                async move {
                    let req = http::Request::get("/readyz").body(Vec::new())?;
                    Ok(client.request_text(req).await?.trim() == "ok")
                }
            },
        )
        .await?;

        bootstrap_objects(&client, options).await?;

        // kube-controller-manager
        let cm_log = logs_dir.join("kube-controller-manager.log");
        let mut cm = Command::new(bin_dir.join("kube-controller-manager"));
        let insecure_port = if options.componentstatus_ports {
            "10252"
        } else {
            "0"
        };
        cm.arg(format!("--kubeconfig={}", cm_kubeconfig.display()))
            .arg(format!(
                "--authentication-kubeconfig={}",
                cm_kubeconfig.display()
            ))
            .arg(format!(
                "--authorization-kubeconfig={}",
                cm_kubeconfig.display()
            ))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", ports.controller_manager))
            // 1.20 still has an insecure HTTP port that binds 0.0.0.0:10252 unless told otherwise.
            .arg("--address=127.0.0.1")
            .arg(format!("--port={insecure_port}"))
            .arg(format!(
                "--cert-dir={}",
                dir_path.join("controller-manager-certs").display()
            ))
            .arg("--leader-elect=false")
            .arg("--controllers=*")
            .arg(ENDPOINT_SLICE_NODE_NAME)
            .arg("--use-service-account-credentials=true")
            .arg(format!(
                "--service-account-private-key-file={}",
                p.service_account_key.display()
            ))
            .arg(format!("--root-ca-file={}", p.ca_cert.display()))
            .arg(format!(
                "--cluster-signing-cert-file={}",
                p.ca_cert.display()
            ))
            .arg(format!("--cluster-signing-key-file={}", p.ca_key.display()))
            .arg(format!(
                "--horizontal-pod-autoscaler-sync-period={}s",
                options.hpa_sync_period.as_secs().max(1)
            ))
            .arg(format!(
                "--horizontal-pod-autoscaler-downscale-stabilization={}s",
                options.hpa_downscale_stabilization.as_secs()
            ))
            .arg("--profiling=false");
        let cm_pid = group.spawn("kube-controller-manager", cm, &cm_log)?;
        logs.push(("kube-controller-manager".to_owned(), cm_log.clone()));

        let mut scheduler_pid = None;
        if options.scheduler {
            let log = logs_dir.join("kube-scheduler.log");
            let insecure_port = if options.componentstatus_ports {
                "10251"
            } else {
                "0"
            };
            let mut sched = Command::new(bin_dir.join("kube-scheduler"));
            sched
                .arg(format!("--kubeconfig={}", sched_kubeconfig.display()))
                .arg(format!(
                    "--authentication-kubeconfig={}",
                    sched_kubeconfig.display()
                ))
                .arg(format!(
                    "--authorization-kubeconfig={}",
                    sched_kubeconfig.display()
                ))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--secure-port={}", ports.scheduler))
                .arg("--address=127.0.0.1")
                .arg(format!("--port={insecure_port}"))
                .arg(format!(
                    "--cert-dir={}",
                    dir_path.join("scheduler-certs").display()
                ))
                .arg("--leader-elect=false")
                .arg("--profiling=false");
            let pid = group.spawn("kube-scheduler", sched, &log)?;
            logs.push(("kube-scheduler".to_owned(), log.clone()));
            let url = format!("https://127.0.0.1:{}/healthz", ports.scheduler);
            wait_component(&mut group, pid, "kube-scheduler", &log, deadline, || {
                let http = http.clone();
                let url = url.clone();
                async move { Ok(http.get(&url).send().await?.status().is_success()) }
            })
            .await?;
            scheduler_pid = Some(pid);
        }

        {
            let url = format!("https://127.0.0.1:{}/healthz", ports.controller_manager);
            wait_component(
                &mut group,
                cm_pid,
                "kube-controller-manager",
                &cm_log,
                deadline,
                || {
                    let http = http.clone();
                    let url = url.clone();
                    async move { Ok(http.get(&url).send().await?.status().is_success()) }
                },
            )
            .await?;
        }
        // The ServiceAccount controller creating `default` proves the controllers run; pods
        // cannot be created in a namespace before its `default` ServiceAccount exists.
        {
            let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
            wait_component(
                &mut group,
                cm_pid,
                "kube-controller-manager (ServiceAccount controller)",
                &cm_log,
                deadline,
                || {
                    let sas = sas.clone();
                    async move { Ok(sas.get_opt("default").await?.is_some()) }
                },
            )
            .await?;
        }

        eprintln!(
            "e2e control plane: ready in {:.1} s at {server_url} (run directory {})",
            started.elapsed().as_secs_f64(),
            dir_path.display()
        );
        Ok(Self {
            group,
            dir: Some(dir),
            dir_path,
            bin_dir: bin_dir.to_owned(),
            options: options.clone(),
            ports,
            pids: Pids {
                etcd: etcd_pid,
                apiserver: apiserver_pid,
                controller_manager: cm_pid,
                scheduler: scheduler_pid,
            },
            pki,
            admin_kubeconfig,
            agent_kubeconfig,
            client,
            logs,
            _componentstatus_lock: lock.take(),
        })
    }

    // ---- accessors -----------------------------------------------------------------------------

    /// `https://127.0.0.1:<port>` of the kube-apiserver.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.ports.apiserver)
    }

    /// An admin (system:masters) client.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// A client authenticated as the agent under test (restricted by the harness's RBAC).
    pub async fn agent_client(&self) -> Result<Client> {
        client_from_kubeconfig(&self.agent_kubeconfig).await
    }

    pub fn kubeconfig_admin_path(&self) -> &Path {
        &self.admin_kubeconfig
    }

    pub fn kubeconfig_agent_path(&self) -> &Path {
        &self.agent_kubeconfig
    }

    /// The cluster CA (signs the apiserver serving cert and all client certs).
    pub fn ca_cert_path(&self) -> &Path {
        &self.pki.paths.ca_cert
    }

    pub fn ca_cert_pem(&self) -> &str {
        self.pki.cluster_ca.cert_pem()
    }

    /// The CA of the front-proxy client certificate the aggregator presents to API services.
    pub fn front_proxy_ca_path(&self) -> &Path {
        &self.pki.paths.front_proxy_ca_cert
    }

    pub fn front_proxy_ca_pem(&self) -> &str {
        &self.pki.front_proxy_ca_pem
    }

    /// Every generated certificate and key.
    pub fn pki_paths(&self) -> &PkiPaths {
        &self.pki.paths
    }

    /// Issues an extra client certificate from the cluster CA (e.g. another user for authz tests).
    pub fn issue_client_cert(&self, user: &str, groups: &[&str]) -> Result<IssuedCert> {
        self.pki.cluster_ca.issue_client(user, groups)
    }

    /// The agent's user name: `system:serviceaccount:<ns>:<sa>`.
    pub fn agent_user(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.options.agent_namespace, self.options.agent_service_account
        )
    }

    pub fn agent_namespace(&self) -> &str {
        &self.options.agent_namespace
    }

    /// The run directory (certificates, kubeconfigs, logs, etcd data).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    pub fn ports(&self) -> Ports {
        self.ports
    }

    pub fn pids(&self) -> Pids {
        self.pids
    }

    /// PIDs of all processes started for this control plane, and the guardian's.
    pub fn all_pids(&self) -> Vec<u32> {
        let mut pids = self.group.started_pids();
        pids.push(self.group.guardian_pid());
        pids
    }

    /// Log files of the components, by name.
    pub fn log_paths(&self) -> &[(String, PathBuf)] {
        &self.logs
    }

    /// Stops everything now (same as dropping) and reports problems instead of panicking.
    pub fn shutdown(mut self) -> Result<()> {
        self.group.shutdown()
    }

    // ---- helpers for tests ---------------------------------------------------------------------

    /// Creates a namespace and waits until its `default` ServiceAccount exists (pods need it).
    pub async fn create_namespace(&self, name: &str) -> Result<()> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": name } }))?;
        match namespaces.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(err) => return Err(err).with_context(|| format!("creating namespace {name}")),
        }
        // Pod admission refuses pods ("No API token found for service account") until the
        // token controller has created the default account's token and referenced it, which
        // happens a moment after the account itself: wait for the reference, not the account.
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), name);
        eventually(
            &format!("ServiceAccount {name}/default with its token"),
            Duration::from_secs(120),
            || {
                let sas = sas.clone();
                async move {
                    let sa = sas.get_opt("default").await?;
                    Ok(sa
                        .filter(|sa| sa.secrets.as_ref().is_some_and(|s| !s.is_empty()))
                        .map(|_| ()))
                }
            },
        )
        .await
    }

    /// Creates a Deployment whose pods select `labels`. No kubelet runs, so its pods stay Pending.
    pub async fn create_deployment(
        &self,
        namespace: &str,
        name: &str,
        replicas: i32,
        labels: &BTreeMap<String, String>,
    ) -> Result<Deployment> {
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": namespace, "labels": labels },
            "spec": {
                "replicas": replicas,
                "selector": { "matchLabels": labels },
                "template": {
                    "metadata": { "labels": labels },
                    "spec": { "containers": [ {
                        "name": "app",
                        // Never pulled: there is no kubelet.
                        "image": "registry.invalid/e2e/pause:1",
                        "resources": { "requests": { "cpu": "10m", "memory": "16Mi" } }
                    } ] }
                }
            }
        }))?;
        Api::<Deployment>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &deployment)
            .await
            .with_context(|| format!("creating Deployment {namespace}/{name}"))
    }

    /// Sets a Deployment's `spec.replicas`.
    pub async fn scale_deployment(&self, namespace: &str, name: &str, replicas: i32) -> Result<()> {
        Api::<Deployment>::namespaced(self.client.clone(), namespace)
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "replicas": replicas } })),
            )
            .await
            .with_context(|| format!("scaling Deployment {namespace}/{name}"))?;
        Ok(())
    }

    /// `spec.replicas` / `status.replicas` of a Deployment.
    pub async fn deployment_replicas(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<DeploymentReplicas> {
        let d = Api::<Deployment>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await
            .with_context(|| format!("reading Deployment {namespace}/{name}"))?;
        Ok(DeploymentReplicas {
            spec: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            status: d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0),
        })
    }

    /// Creates an autoscaling/v2beta2 HPA with one External metric.
    pub async fn create_external_hpa(
        &self,
        namespace: &str,
        hpa: &ExternalHpa,
    ) -> Result<DynamicObject> {
        let api = self.hpa_api(namespace);
        let object: DynamicObject = serde_json::from_value(hpa.to_json(namespace))?;
        api.create(&PostParams::default(), &object)
            .await
            .with_context(|| format!("creating HPA {namespace}/{}", hpa.name))
    }

    /// Replaces an HPA's spec with `hpa`'s (through autoscaling/v2beta2, so `behavior` survives).
    pub async fn update_external_hpa(&self, namespace: &str, hpa: &ExternalHpa) -> Result<()> {
        let api = self.hpa_api(namespace);
        let spec = hpa.to_json(namespace)["spec"].clone();
        api.patch(
            &hpa.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .with_context(|| format!("updating HPA {namespace}/{}", hpa.name))?;
        Ok(())
    }

    /// An `Api` for autoscaling/v2beta2 HPAs in `namespace`.
    pub fn hpa_api(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &hpa_v2beta2_resource())
    }

    /// The HPA's status as the controller last wrote it.
    pub async fn hpa_status(&self, namespace: &str, name: &str) -> Result<HpaStatus> {
        let hpa = self
            .hpa_api(namespace)
            .get(name)
            .await
            .with_context(|| format!("reading HPA {namespace}/{name}"))?;
        Ok(HpaStatus::from_status(
            hpa.data.get("status").unwrap_or(&Value::Null),
        ))
    }

    /// Creates a ClusterIP Service.
    pub async fn create_service(
        &self,
        namespace: &str,
        name: &str,
        selector: &BTreeMap<String, String>,
        ports: &[(&str, i32)],
    ) -> Result<Service> {
        let ports: Vec<Value> = ports
            .iter()
            .map(|(n, p)| json!({ "name": n, "port": p, "protocol": "TCP" }))
            .collect();
        let service: Service = serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": namespace },
            "spec": { "selector": selector, "ports": ports },
        }))?;
        Api::<Service>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &service)
            .await
            .with_context(|| format!("creating Service {namespace}/{name}"))
    }

    /// Creates (or replaces) an Endpoints object with one subset. Addresses may not be loopback.
    pub async fn create_endpoints(
        &self,
        namespace: &str,
        name: &str,
        addresses: &[EndpointAddress],
        ports: &[(&str, i32)],
    ) -> Result<Endpoints> {
        let addresses: Vec<Value> = addresses
            .iter()
            .map(|a| {
                let mut v = json!({ "ip": a.ip });
                if let Some(node) = &a.node_name {
                    v["nodeName"] = json!(node);
                }
                if let Some(pod) = &a.pod {
                    v["targetRef"] = json!({ "kind": "Pod", "name": pod, "namespace": namespace });
                }
                v
            })
            .collect();
        let ports: Vec<Value> = ports
            .iter()
            .map(|(n, p)| json!({ "name": n, "port": p, "protocol": "TCP" }))
            .collect();
        let endpoints: Endpoints = serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": namespace },
            "subsets": [ { "addresses": addresses, "ports": ports } ],
        }))?;
        let api = Api::<Endpoints>::namespaced(self.client.clone(), namespace);
        match api.create(&PostParams::default(), &endpoints).await {
            Ok(e) => Ok(e),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                // The endpoints controller may have created it for a Service with a selector.
                let mut current = api.get(name).await?;
                current.subsets = endpoints.subsets;
                api.replace(name, &PostParams::default(), &current)
                    .await
                    .with_context(|| format!("replacing Endpoints {namespace}/{name}"))
            }
            Err(err) => Err(err).with_context(|| format!("creating Endpoints {namespace}/{name}")),
        }
    }

    /// Creates a Node object (no kubelet backs it).
    pub async fn create_node(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<Node> {
        let node: Node = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": labels },
        }))?;
        Api::<Node>::all(self.client.clone())
            .create(&PostParams::default(), &node)
            .await
            .with_context(|| format!("creating Node {name}"))
    }

    /// Creates a Pod, optionally already bound to `node_name` (no scheduler needed).
    pub async fn create_pod(
        &self,
        namespace: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
        node_name: Option<&str>,
    ) -> Result<Pod> {
        let mut spec =
            json!({ "containers": [ { "name": "app", "image": "registry.invalid/e2e/pause:1" } ] });
        if let Some(node) = node_name {
            spec["nodeName"] = json!(node);
        }
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": namespace, "labels": labels },
            "spec": spec,
        }))?;
        let pods = Api::<Pod>::namespaced(self.client.clone(), namespace);
        // The apiserver answers ServerTimeout with a Retry-After while admission still waits
        // for a controller (the service-account token); it asks to retry, so we do, bounded.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match pods.create(&PostParams::default(), &pod).await {
                Err(kube::Error::Api(status))
                    if status.reason == "ServerTimeout"
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                other => return other.with_context(|| format!("creating Pod {namespace}/{name}")),
            }
        }
    }

    /// Marks a pod Running and Ready through the status subresource, as a kubelet would.
    pub async fn mark_pod_ready(
        &self,
        namespace: &str,
        name: &str,
        pod_ip: Option<&str>,
    ) -> Result<Pod> {
        let now = jiff::Timestamp::now().to_string();
        let mut status = json!({
            "phase": "Running",
            "conditions": [
                { "type": "Initialized", "status": "True", "lastTransitionTime": now },
                { "type": "ContainersReady", "status": "True", "lastTransitionTime": now },
                { "type": "Ready", "status": "True", "lastTransitionTime": now },
                { "type": "PodScheduled", "status": "True", "lastTransitionTime": now },
            ],
            "startTime": now,
        });
        if let Some(ip) = pod_ip {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{ "ip": ip }]);
        }
        Api::<Pod>::namespaced(self.client.clone(), namespace)
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .with_context(|| format!("marking Pod {namespace}/{name} ready"))
    }

    /// Pods in `namespace` matching a label selector like `app=web`.
    pub async fn list_pods(&self, namespace: &str, selector: &str) -> Result<Vec<Pod>> {
        let lp = kube::api::ListParams::default().labels(selector);
        Ok(Api::<Pod>::namespaced(self.client.clone(), namespace)
            .list(&lp)
            .await
            .with_context(|| format!("listing pods {namespace} {selector}"))?
            .items)
    }

    /// Compacts etcd at its current revision (older resourceVersions then answer 410 Gone).
    /// Returns the revision compacted at.
    pub async fn compact_etcd(&self) -> Result<i64> {
        let endpoint = format!("http://127.0.0.1:{}", self.ports.etcd_client);
        let etcdctl = self.bin_dir.join("etcdctl");
        let status = tokio::process::Command::new(&etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .args(["endpoint", "status", "--write-out=json"])
            .output()
            .await
            .context("running etcdctl endpoint status")?;
        if !status.status.success() {
            bail!(
                "etcdctl endpoint status failed: {}",
                String::from_utf8_lossy(&status.stderr)
            );
        }
        let parsed: Value = serde_json::from_slice(&status.stdout)
            .context("parsing etcdctl endpoint status output")?;
        let revision = parsed
            .get(0)
            .and_then(|e| e.pointer("/Status/header/revision"))
            .and_then(Value::as_i64)
            .ok_or_else(|| anyhow!("no revision in etcdctl output: {parsed}"))?;
        let compact = tokio::process::Command::new(&etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .args(["compact", &revision.to_string(), "--physical"])
            .output()
            .await
            .context("running etcdctl compact")?;
        if !compact.status.success() {
            let stderr = String::from_utf8_lossy(&compact.stderr);
            // The apiserver compacts on its own every 5 minutes; losing that race is fine.
            if !stderr.contains("required revision has been compacted") {
                bail!("etcdctl compact {revision} failed: {stderr}");
            }
        }
        Ok(revision)
    }

    /// Registers an aggregated API served on `https://localhost:<port>`: an ExternalName Service
    /// `<namespace>/<service_name>` → localhost (Endpoints may not point at loopback and there is
    /// no kube-proxy for a ClusterIP) and an APIService `<version>.<group>` that trusts
    /// `ca_bundle_pem` for a serving cert with SAN `<service_name>.<namespace>.svc`.
    /// Uses POST/PUT: server-side apply of an APIService panics 1.20.2's apiserver.
    pub async fn register_apiservice(
        &self,
        group: &str,
        version: &str,
        service_name: &str,
        namespace: &str,
        port: u16,
        ca_bundle_pem: &str,
    ) -> Result<APIService> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        if namespaces.get_opt(namespace).await?.is_none() {
            self.create_namespace(namespace).await?;
        }
        let service: Service = serde_json::from_value(json!({
            "metadata": { "name": service_name, "namespace": namespace },
            "spec": {
                "type": "ExternalName",
                "externalName": "localhost",
                "ports": [ { "name": "https", "port": port, "protocol": "TCP" } ],
            },
        }))?;
        let services: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        match services.create(&PostParams::default(), &service).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let mut current = services.get(service_name).await?;
                current.spec = service.spec;
                services
                    .replace(service_name, &PostParams::default(), &current)
                    .await
                    .with_context(|| format!("replacing Service {namespace}/{service_name}"))?;
            }
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("creating Service {namespace}/{service_name}"));
            }
        }

        let name = format!("{version}.{group}");
        let mut apiservice: APIService = serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": {
                "group": group,
                "version": version,
                "service": { "name": service_name, "namespace": namespace, "port": port },
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        }))?;
        if let Some(spec) = apiservice.spec.as_mut() {
            spec.ca_bundle = Some(ByteString(ca_bundle_pem.as_bytes().to_vec()));
        }
        let api: Api<APIService> = Api::all(self.client.clone());
        match api.create(&PostParams::default(), &apiservice).await {
            Ok(created) => Ok(created),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let current = api.get(&name).await?;
                apiservice.metadata.resource_version = current.metadata.resource_version;
                api.replace(&name, &PostParams::default(), &apiservice)
                    .await
                    .with_context(|| format!("replacing APIService {name}"))
            }
            Err(err) => Err(err).with_context(|| format!("creating APIService {name}")),
        }
    }

    /// Waits until the APIService reports `Available=True`.
    pub async fn wait_apiservice_available(&self, name: &str, deadline: Duration) -> Result<()> {
        let api: Api<APIService> = Api::all(self.client.clone());
        let mut last = String::from("no status yet");
        let until = Instant::now() + deadline;
        loop {
            if let Some(svc) = api.get_opt(name).await? {
                let available = svc
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|cs| cs.iter().find(|c| c.type_ == "Available"));
                if let Some(c) = available {
                    if c.status == "True" {
                        return Ok(());
                    }
                    last = format!(
                        "Available={} reason={} message={}",
                        c.status,
                        c.reason.as_deref().unwrap_or(""),
                        c.message.as_deref().unwrap_or("")
                    );
                }
            } else {
                last = "APIService does not exist".to_owned();
            }
            if Instant::now() >= until {
                bail!("APIService {name} not Available within {deadline:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn dump_logs(&self) {
        for (name, path) in &self.logs {
            eprintln!(
                "===== {name} log ({}), last 8 KiB =====\n{}",
                path.display(),
                process::log_tail(path, 8 * 1024)
            );
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            self.dump_logs();
        }
        let result = self.group.shutdown();
        if panicking || result.is_err() || std::env::var_os(process::KEEP_DIR_ENV).is_some() {
            // Keep certificates, kubeconfigs and logs for a post-mortem.
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("e2e control plane: kept run directory {}", kept.display());
            }
        }
        if let Err(err) = result {
            eprintln!("!!!!!!!! e2e control plane: {err:#}");
            if !panicking {
                panic!("{err:#}");
            }
        }
    }
}

/// Serialises control planes that use the fixed componentstatus ports 10251/10252, across test
/// binaries too (a file lock, released when the file is closed).
fn lock_componentstatus_ports() -> Result<File> {
    let path = std::env::temp_dir().join("dca-e2e-componentstatus-ports.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

/// Polls `ready` until it returns true, failing early (with the log) if the process exits and
/// classifying "address already in use" as a [`PortRace`].
async fn wait_component<F, Fut>(
    group: &mut ProcessGroup,
    pid: u32,
    name: &str,
    log: &Path,
    deadline: Instant,
    mut ready: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    loop {
        if let Some(status) = group.exit_status(pid)? {
            let tail = process::log_tail(log, 16 * 1024);
            if tail.contains("address already in use") {
                return Err(PortRace(format!("{name} exited: {tail}")).into());
            }
            bail!(
                "{name} exited during start-up ({}); log {}:\n{tail}",
                process::describe_status(status),
                log.display()
            );
        }
        let last_error = match ready().await {
            Ok(true) => return Ok(()),
            Ok(false) => "not ready yet".to_owned(),
            Err(err) => format!("{err:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "{name} not ready before the start-up deadline (last: {last_error}); log {}:\n{}",
                log.display(),
                process::log_tail(log, 16 * 1024)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// RBAC and namespaces every test needs: what the agent may do, and the external-metrics read
/// permission 1.20's bootstrap policy does not give the HPA controller.
async fn bootstrap_objects(client: &Client, options: &ControlPlaneOptions) -> Result<()> {
    let ns = &options.agent_namespace;
    let sa = &options.agent_service_account;
    let agent_subject = json!([{ "kind": "ServiceAccount", "name": sa, "namespace": ns }]);

    apply(
        client,
        None,
        &json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns },
        }),
    )
    .await?;
    apply(client, Some(ns), &json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": sa, "namespace": ns },
    }))
    .await?;

    let objects = [
        (
            None,
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": { "name": "dca-e2e:external-metrics-reader" },
                "rules": [ { "apiGroups": ["external.metrics.k8s.io"], "resources": ["*"], "verbs": ["get", "list", "watch"] } ],
            }),
        ),
        (
            None,
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": { "name": "dca-e2e:hpa-external-metrics" },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "dca-e2e:external-metrics-reader" },
                "subjects": [ { "kind": "ServiceAccount", "name": "horizontal-pod-autoscaler", "namespace": "kube-system" } ],
            }),
        ),
        (
            None,
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": { "name": "dca-e2e:agent" },
                "rules": [
                    { "apiGroups": [""], "resources": ["pods", "nodes", "namespaces", "services", "endpoints", "events", "componentstatuses"], "verbs": ["get", "list", "watch"] },
                    { "apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch", "update"] },
                    { "apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["get", "list", "watch", "create", "patch"] },
                    { "apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": ["get", "list", "watch"] },
                    { "apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"] },
                    { "nonResourceURLs": ["/version", "/healthz", "/readyz", "/livez"], "verbs": ["get"] },
                ],
            }),
        ),
        (
            None,
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": { "name": "dca-e2e:agent" },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "dca-e2e:agent" },
                "subjects": agent_subject,
            }),
        ),
        // TokenReviews and SubjectAccessReviews, for authenticating/authorising API callers.
        (
            None,
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": { "name": "dca-e2e:agent:auth-delegator" },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator" },
                "subjects": agent_subject,
            }),
        ),
        (
            Some("kube-system"),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": { "name": "dca-e2e:agent:auth-reader", "namespace": "kube-system" },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "extension-apiserver-authentication-reader" },
                "subjects": agent_subject,
            }),
        ),
        (
            Some(ns.as_str()),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": { "name": "dca-e2e:agent", "namespace": ns },
                "rules": [
                    { "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"] },
                    { "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "list", "watch", "create", "update", "patch"] },
                    { "apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"] },
                ],
            }),
        ),
        (
            Some(ns.as_str()),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": { "name": "dca-e2e:agent", "namespace": ns },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "dca-e2e:agent" },
                "subjects": agent_subject,
            }),
        ),
    ];
    // The first two grant the HPA controller its read access, which is the cluster's, not
    // the agent's.
    let granted = if options.agent_rbac { objects.len() } else { 2 };
    for (namespace, object) in &objects[..granted] {
        apply(client, *namespace, object).await?;
    }
    Ok(())
}

/// Server-side apply of one object given as JSON (fine for everything except APIServices).
async fn apply(client: &Client, namespace: Option<&str>, object: &Value) -> Result<()> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "ClusterRole" => "clusterroles",
        "ClusterRoleBinding" => "clusterrolebindings",
        "Role" => "roles",
        "RoleBinding" => "rolebindings",
        "Namespace" => "namespaces",
        "ServiceAccount" => "serviceaccounts",
        other => bail!("apply: no plural known for kind {other}"),
    };
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .with_context(|| format!("applying {kind} {name}"))?;
    Ok(())
}

/// A label selector string (`a=1,b=2`) for a label map.
pub fn selector(labels: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}={v}");
    }
    out
}

/// A label map from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpa_json_has_the_v2beta2_external_shape() {
        let hpa = ExternalHpa::new(
            "web",
            "nginx.net.request_per_s",
            MetricTarget::AverageValue("10".into()),
        )
        .label("app", "web");
        let v = hpa.to_json("default");
        assert_eq!(v["apiVersion"], "autoscaling/v2beta2");
        let ext = &v["spec"]["metrics"][0]["external"];
        assert_eq!(ext["metric"]["name"], "nginx.net.request_per_s");
        assert_eq!(ext["metric"]["selector"]["matchLabels"]["app"], "web");
        assert_eq!(
            ext["target"],
            json!({ "type": "AverageValue", "averageValue": "10" })
        );
        let no_selector =
            ExternalHpa::new("web", "m", MetricTarget::Value("5".into())).to_json("ns");
        assert!(
            no_selector["spec"]["metrics"][0]["external"]["metric"]
                .get("selector")
                .is_none()
        );
        assert_eq!(
            no_selector["spec"]["metrics"][0]["external"]["target"]["value"],
            "5"
        );
    }

    #[test]
    fn kubeconfig_quotes_scalars() {
        let y = kubeconfig_yaml(
            "https://127.0.0.1:1",
            Path::new("/tmp/a b/ca.crt"),
            "system:serviceaccount:datadog:dca",
            Path::new("/c.crt"),
            Path::new("/c.key"),
            "datadog",
        );
        assert!(y.contains("certificate-authority: \"/tmp/a b/ca.crt\""));
        assert!(y.contains("user: \"system:serviceaccount:datadog:dca\""));
    }

    #[test]
    fn ca_issues_leaves_that_chain_to_it() {
        let ca = CertAuthority::new("test-ca").unwrap();
        let leaf = ca.issue_server(&["svc.ns.svc", "127.0.0.1"]).unwrap();
        assert!(leaf.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(leaf.key_pem.contains("PRIVATE KEY"));
        assert_ne!(leaf.cert_pem, ca.cert_pem());
    }

    #[test]
    fn selector_joins_labels() {
        assert_eq!(selector(&labels(&[("b", "2"), ("a", "1")])), "a=1,b=2");
    }

    /// Runs build.sh's `main` against a scratch cache with the build, apt and etcd steps
    /// replaced, after `setup` (bash) prepared the cache. Returns (stdout, stderr).
    fn build_script_main(cache: &Path, setup: &str) -> (String, String) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane/build.sh");
        let program = format!(
            r#"source "$1"
ensure_packages() {{ :; }}
link_etcd() {{ :; }}
build_from_source() {{
  log "FAKE BUILD"
  for cmd in "${{COMMANDS[@]}}"; do printf '#!/bin/sh\n' >"$BIN_DIR/$cmd"; chmod +x "$BIN_DIR/$cmd"; done
  printf '%s\n' "$STAMP_LINE" >"$STAMP"
}}
mkdir -p "$BIN_DIR"
{setup}
main"#
        );
        let output = Command::new("bash")
            .arg("-c")
            .arg(program)
            .arg("build-test")
            .arg(&script)
            .env("XDG_CACHE_HOME", cache)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stdout}\n{stderr}");
        (stdout, stderr)
    }

    #[test]
    fn build_script_rebuilds_when_the_recorded_source_version_differs() {
        let cache = tempfile::tempdir().unwrap();
        let bin = cache.path().join("datadog-cluster-agent/k8s-v1.20.2/bin");
        let reuse = format!("reusing cached binaries in {}", bin.display());
        let binaries = "for cmd in \"${COMMANDS[@]}\"; do : >\"$BIN_DIR/$cmd\"; chmod +x \"$BIN_DIR/$cmd\"; done";

        // Empty cache: build, then the next run reuses.
        let (stdout, stderr) = build_script_main(cache.path(), "");
        assert!(stderr.contains("FAKE BUILD"), "{stderr}");
        assert_eq!(stdout.lines().last(), Some(bin.to_str().unwrap()));
        let stamp = fs::read_to_string(bin.join(".complete")).unwrap();
        assert_eq!(stamp, "v1.20.2 1.20.5+really1.20.2-1.1+deb12u1\n");
        let (_, stderr) = build_script_main(cache.path(), "");
        assert!(!stderr.contains("FAKE BUILD"), "{stderr}");
        assert!(stderr.contains(&reuse), "{stderr}");

        // Binaries built from another Debian source version: rebuild, and say why.
        let (_, stderr) = build_script_main(
            cache.path(),
            &format!("{binaries}; printf 'v1.20.2 1.20.5+really1.20.2-1\\n' >\"$STAMP\""),
        );
        assert!(stderr.contains("FAKE BUILD"), "{stderr}");
        assert!(
            stderr.contains("built from 'v1.20.2 1.20.5+really1.20.2-1'"),
            "{stderr}"
        );
        assert!(!stderr.contains(&reuse), "{stderr}");
        let (_, stderr) = build_script_main(cache.path(), "");
        assert!(stderr.contains(&reuse), "{stderr}");

        // An old-format stamp (version only) and a missing binary rebuild too.
        for setup in [
            format!("{binaries}; printf 'v1.20.2\\n' >\"$STAMP\""),
            "rm -f \"$BIN_DIR/kube-scheduler\"".to_owned(),
        ] {
            let (_, stderr) = build_script_main(cache.path(), &setup);
            assert!(stderr.contains("FAKE BUILD"), "{setup}: {stderr}");
        }
    }
}
