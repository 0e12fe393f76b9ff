//! The real agent binary run against a [`ControlPlane`] and a [`DatadogDouble`]: its
//! environment, its serving certificate, its registration behind the aggregator, and the
//! views a test needs of what it does (the metric store, the leader lock, direct reads of
//! its external metrics API as the HPA controller makes them).
//!
//! The binary is built on demand ([`agent_binary`]): the e2e crate depends on the agent's
//! library, and a library dependency does not build the package's binaries, so a plain
//! `cargo test -p e2e` would otherwise run a stale binary or none.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use datadog_cluster_agent::autoscaling::store::INVALID_REASONS_ANNOTATION;
use datadog_cluster_agent::autoscaling::store_format::{
    DEFAULT_CONFIGMAP_NAME, ExternalMetricValue, LAST_UPDATED_ANNOTATION, StoredEntry, decode_entry,
};
use datadog_cluster_agent::leader::record::{LEADER_ANNOTATION, LeaderElectionRecord};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;

use crate::agent::{AgentSettings, DCA_BIN_ENV};
use crate::controlplane::{
    CertAuthority, ControlPlane, FRONT_PROXY_CLIENT_CN, ensure_crypto_provider,
};
use crate::datadog_double::DatadogDouble;
use crate::process;

/// The API group the agent serves.
pub const METRICS_GROUP: &str = "external.metrics.k8s.io";
pub const METRICS_VERSION: &str = "v1beta1";
/// The APIService registering it.
pub const APISERVICE_NAME: &str = "v1beta1.external.metrics.k8s.io";
/// The Service behind the APIService (the name `apiservice/service.yaml` uses).
pub const SERVICE_NAME: &str = "datadog-cluster-agent-metrics-api";
/// The leader lock's default name (`leader_lease_name`).
pub const LEADER_LOCK_NAME: &str = "datadog-leader-election";
/// Who kube-controller-manager's HPA controller is (`--use-service-account-credentials`),
/// as the aggregator forwards it.
pub const HPA_CONTROLLER_USER: &str = "system:serviceaccount:kube-system:horizontal-pod-autoscaler";
pub const HPA_CONTROLLER_GROUPS: &[&str] = &[
    "system:serviceaccounts",
    "system:serviceaccounts:kube-system",
    "system:authenticated",
];
/// SIGTERM → SIGKILL grace for agents: above the agent's own bound on draining (the
/// metrics server's 10 s drain inside the app's 20 s shutdown grace), so that a clean exit
/// is what the test sees rather than our SIGKILL.
pub const AGENT_STOP_GRACE: Duration = Duration::from_secs(30);

static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The agent binary: `$DCA_BIN` if set, else the workspace's debug build, brought up to date
/// first with `cargo build -p datadog-cluster-agent --bin datadog-cluster-agent` (once per
/// test process; a no-op when nothing changed). The path comes from cargo's own report, so a
/// target directory set in a cargo config is honoured.
pub async fn agent_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(DCA_BIN_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{DCA_BIN_ENV}={} is not a file", path.display());
        }
        return Ok(path);
    }
    tokio::task::spawn_blocking(|| {
        BUILT
            .get_or_init(|| build_agent().map_err(|e| format!("{e:#}")))
            .clone()
    })
    .await
    .context("agent build task")?
    .map_err(|e| anyhow!(e))
}

fn build_agent() -> Result<PathBuf> {
    // The cargo running this test (set at run time by `cargo test`), else the one that built it.
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    eprintln!("e2e: building the agent binary (set {DCA_BIN_ENV} to use a prebuilt one)");
    let mut command = Command::new(&cargo);
    // cargo gives this test process variables describing the e2e package. Build scripts
    // track some of them (ring's tracks CARGO_MANIFEST_DIR), so passing them on would make
    // this build and every ordinary one invalidate each other's artifacts in the shared
    // target directory.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if is_cargo_test_variable(key) {
            command.env_remove(key);
        }
    }
    let output = command
        .args([
            "build",
            "--package",
            "datadog-cluster-agent",
            "--bin",
            "datadog-cluster-agent",
            "--message-format=json",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {} build", Path::new(&cargo).display()))?;
    if !output.status.success() {
        bail!(
            "`cargo build -p datadog-cluster-agent` failed ({}); see the compiler output above, or set {DCA_BIN_ENV}",
            output.status
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| {
            m["reason"] == "compiler-artifact" && m["target"]["name"] == "datadog-cluster-agent"
        })
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| anyhow!("cargo reported no datadog-cluster-agent executable"))
}

/// Variables cargo sets for the processes it runs (tests, `cargo run`), as opposed to
/// configuration a user sets (`CARGO_HOME`, `CARGO_TARGET_DIR`, `CARGO_PROFILE_*`, …).
fn is_cargo_test_variable(key: &str) -> bool {
    const EXACT: &[&str] = &[
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    EXACT.contains(&key) || key.starts_with("CARGO_PKG_") || key.starts_with("CARGO_BIN_EXE_")
}

/// A serving certificate for the agent, from a test CA, in a folder laid out as
/// `external_metrics_provider.cert_dir` expects (`tls.crt`, `tls.key`). It names
/// `<service>.<namespace>.svc` (what the aggregator verifies) and the loopback address.
pub struct ServingCert {
    ca_pem: String,
    dir: tempfile::TempDir,
    server_name: String,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("dir", &self.dir.path())
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ServingCert {
    pub fn new(namespace: &str) -> Result<Self> {
        let ca = CertAuthority::new("dca-e2e-serving-ca")?;
        let server_name = format!("{SERVICE_NAME}.{namespace}.svc");
        let cert = ca.issue_server(&[&server_name, "localhost", "127.0.0.1"])?;
        let dir = tempfile::Builder::new()
            .prefix("dca-e2e-serving-")
            .tempdir()
            .context("creating the serving certificate folder")?;
        std::fs::write(dir.path().join("tls.crt"), &cert.cert_pem)?;
        std::fs::write(dir.path().join("tls.key"), &cert.key_pem)?;
        Ok(Self {
            ca_pem: ca.cert_pem().to_owned(),
            dir,
            server_name,
        })
    }

    /// As an operator makes it: `datadog-cluster-agent certs generate` (no test CA), its
    /// printed caBundle checked against the `ca.crt` it wrote.
    pub fn from_agent_cli(binary: &Path, namespace: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("dca-e2e-serving-")
            .tempdir()
            .context("creating the serving certificate folder")?;
        let out = Command::new(binary)
            .args([
                "certs",
                "generate",
                "--service",
                SERVICE_NAME,
                "--namespace",
            ])
            .arg(namespace)
            .arg("--out")
            .arg(dir.path())
            .env_clear()
            .output()
            .context("running certs generate")?;
        anyhow::ensure!(
            out.status.success(),
            "certs generate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ca_pem = std::fs::read_to_string(dir.path().join("ca.crt"))?;
        let printed = String::from_utf8(out.stdout)?;
        let decoded =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, printed.trim())
                .context("certs generate printed no base64 caBundle")?;
        anyhow::ensure!(
            decoded == ca_pem.as_bytes(),
            "the printed caBundle is not ca.crt"
        );
        Ok(Self {
            ca_pem,
            dir,
            server_name: format!("{SERVICE_NAME}.{namespace}.svc"),
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The APIService's `caBundle`.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn server_name(&self) -> &str {
        &self.server_name
    }
}

/// The ports one agent process listens on (all on 127.0.0.1), so that replicas can share
/// the machine.
#[derive(Debug, Clone, Copy)]
pub struct AgentPorts {
    pub metrics_api: u16,
    pub cmd: u16,
    pub expvar: u16,
    pub prometheus: u16,
    /// `health_port`: the probes `/live`, `/ready`, `/startup`.
    pub health: u16,
}

impl AgentPorts {
    pub fn pick() -> Result<Self> {
        Ok(Self {
            metrics_api: process::free_port()?,
            cmd: process::free_port()?,
            expvar: process::free_port()?,
            prometheus: process::free_port()?,
            health: process::free_port()?,
        })
    }
}

/// How an agent process is started: the settings of a production replica pointed at the
/// test's cluster and Datadog double, with short periods. Callers add or override
/// variables with [`AgentSettings::env`].
pub fn agent_settings(
    cp: &ControlPlane,
    binary: &Path,
    name: &str,
    double: &DatadogDouble,
    cert: &ServingCert,
    ports: AgentPorts,
) -> AgentSettings {
    let mut settings = AgentSettings {
        name: name.to_owned(),
        binary: Some(binary.to_owned()),
        stop_grace: AGENT_STOP_GRACE,
        ..AgentSettings::default()
    }
    .readiness_url(format!("https://127.0.0.1:{}/readyz", ports.metrics_api));
    let vars: [(&str, String); 21] = [
        ("DD_API_KEY", double.api_key().to_owned()),
        ("DD_APP_KEY", double.app_key().to_owned()),
        ("DD_POD_NAME", name.to_owned()),
        ("DD_BIND_HOST", "127.0.0.1".to_owned()),
        ("DD_CLUSTER_AGENT_CMD_PORT", ports.cmd.to_string()),
        ("DD_EXPVAR_PORT", ports.expvar.to_string()),
        ("DD_METRICS_PORT", ports.prometheus.to_string()),
        ("DD_HEALTH_PORT", ports.health.to_string()),
        // Letters and digits, at least 32: what a production token looks like.
        (
            "DD_CLUSTER_AGENT_AUTH_TOKEN",
            "e2eTokenForTheClusterAgent0123456789abcdef".to_owned(),
        ),
        (
            "DD_KUBERNETES_KUBECONFIG_PATH",
            cp.kubeconfig_agent_path().display().to_string(),
        ),
        (
            "DD_KUBE_RESOURCES_NAMESPACE",
            cp.agent_namespace().to_owned(),
        ),
        ("DD_EXTERNAL_METRICS_PROVIDER_ENABLED", "true".to_owned()),
        ("DD_EXTERNAL_METRICS_PROVIDER_ENDPOINT", double.base_url()),
        (
            "DD_EXTERNAL_METRICS_PROVIDER_PORT",
            ports.metrics_api.to_string(),
        ),
        (
            "DD_EXTERNAL_METRICS_PROVIDER_CERT_DIR",
            cert.dir().display().to_string(),
        ),
        (
            "DD_EXTERNAL_METRICS_PROVIDER_REFRESH_PERIOD",
            "5".to_owned(),
        ),
        ("DD_HPA_WATCHER_GC_PERIOD", "5".to_owned()),
        ("DD_LEADER_ELECTION", "false".to_owned()),
        ("DD_LEADER_LEASE_DURATION", "6".to_owned()),
        ("DD_LOG_LEVEL", "debug".to_owned()),
        // No event collection: these tests are about autoscaling, and it would need the
        // leader's intake traffic too.
        ("DD_COLLECT_KUBERNETES_EVENTS", "false".to_owned()),
    ];
    for (key, value) in vars {
        settings = settings.env(key, value);
    }
    settings
}

/// Registers the agent listening on `port` as `v1beta1.external.metrics.k8s.io` (or points
/// the registration at it) and waits until the aggregator reports it Available.
pub async fn register_metrics_api(cp: &ControlPlane, cert: &ServingCert, port: u16) -> Result<()> {
    cp.register_apiservice(
        METRICS_GROUP,
        METRICS_VERSION,
        SERVICE_NAME,
        cp.agent_namespace(),
        port,
        cert.ca_pem(),
    )
    .await?;
    cp.wait_apiservice_available(APISERVICE_NAME, Duration::from_secs(180))
        .await
}

/// An answer of the agent's metrics API.
#[derive(Debug, Clone)]
pub struct MetricAnswer {
    pub status: u16,
    pub body: Value,
}

impl MetricAnswer {
    /// The values of an `ExternalMetricValueList`, parsed from their Quantity strings.
    pub fn values(&self) -> Result<Vec<f64>> {
        if self.status != 200 {
            bail!("HTTP {}: {}", self.status, self.body);
        }
        let items = self.body["items"]
            .as_array()
            .ok_or_else(|| anyhow!("no items in {}", self.body))?;
        items
            .iter()
            .map(|item| {
                let raw = item["value"]
                    .as_str()
                    .ok_or_else(|| anyhow!("item without a value: {item}"))?;
                parse_quantity(raw)
            })
            .collect()
    }

    /// The `message` of a `Status` answer.
    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or("")
    }
}

/// Enough of Kubernetes' Quantity grammar for metric values: plain decimals and the
/// decimal SI suffixes apimachinery emits (`500m`, `12k`).
pub fn parse_quantity(raw: &str) -> Result<f64> {
    let (number, scale) = match raw.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let scale = match c {
                'n' => 1e-9,
                'u' => 1e-6,
                'm' => 1e-3,
                'k' => 1e3,
                'M' => 1e6,
                'G' => 1e9,
                'T' => 1e12,
                _ => bail!("unsupported Quantity suffix in {raw:?}"),
            };
            (&raw[..i], scale)
        }
        _ => (raw, 1.0),
    };
    let n: f64 = number
        .parse()
        .with_context(|| format!("invalid Quantity {raw:?}"))?;
    Ok(n * scale)
}

/// A client of one agent's metrics API, as the aggregator calls it: TLS verified against
/// the serving CA for `<service>.<namespace>.svc`, the front-proxy client certificate, and
/// the caller's identity in `X-Remote-*` headers.
#[derive(Debug, Clone)]
pub struct MetricsApiClient {
    http: reqwest::Client,
    base: String,
}

impl MetricsApiClient {
    pub fn new(cp: &ControlPlane, cert: &ServingCert, port: u16) -> Result<Self> {
        ensure_crypto_provider();
        let pki = cp.pki_paths();
        let mut identity = std::fs::read(&pki.front_proxy_client_cert)
            .with_context(|| format!("reading {}", pki.front_proxy_client_cert.display()))?;
        identity.extend(
            std::fs::read(&pki.front_proxy_client_key)
                .with_context(|| format!("reading {}", pki.front_proxy_client_key.display()))?,
        );
        let http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(cert.ca_pem().as_bytes())?])
            .identity(reqwest::Identity::from_pem(&identity).with_context(|| {
                format!("front-proxy client certificate ({FRONT_PROXY_CLIENT_CN})")
            })?)
            .resolve(cert.server_name(), SocketAddr::from(([127, 0, 0, 1], port)))
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the metrics API client")?;
        Ok(Self {
            http,
            base: format!("https://{}:{port}", cert.server_name()),
        })
    }

    /// `GET /apis/external.metrics.k8s.io/v1beta1/namespaces/<ns>/<metric>` as the HPA
    /// controller asks it: metric name lower-cased, `labelSelector` when there is one.
    pub async fn get_metric(
        &self,
        namespace: &str,
        metric: &str,
        selector: &str,
    ) -> Result<MetricAnswer> {
        let mut request = self
            .http
            .get(format!(
                "{}/apis/{METRICS_GROUP}/{METRICS_VERSION}/namespaces/{namespace}/{}",
                self.base,
                metric.to_ascii_lowercase()
            ))
            .header("Accept", "application/json")
            .header("X-Remote-User", HPA_CONTROLLER_USER);
        for group in HPA_CONTROLLER_GROUPS {
            request = request.header("X-Remote-Group", *group);
        }
        if !selector.is_empty() {
            request = request.query(&[("labelSelector", selector)]);
        }
        let response = request.send().await.context("metrics API request")?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.context("metrics API body")?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(MetricAnswer { status, body })
    }
}

/// The `datadog-custom-metrics` ConfigMap as the tests read it.
#[derive(Debug, Clone, Default)]
pub struct StoreView {
    pub entries: BTreeMap<String, ExternalMetricValue>,
    /// Data keys that are not entries of the current format.
    pub other_keys: Vec<String>,
    /// Why invalid entries are invalid, by data key.
    pub reasons: BTreeMap<String, String>,
    /// When the leader last wrote it (`custom-metrics.datadoghq.com/last-updated`).
    pub last_updated: Option<jiff::Timestamp>,
}

impl StoreView {
    pub fn keys(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }
}

impl StoreView {
    /// Reads a `datadog-custom-metrics` ConfigMap.
    pub fn of(cm: ConfigMap) -> Result<StoreView> {
        let mut view = StoreView::default();
        for (key, json) in cm.data.unwrap_or_default() {
            match decode_entry(&json) {
                Ok(StoredEntry::Current(entry)) => {
                    view.entries.insert(key, entry);
                }
                _ => view.other_keys.push(key),
            }
        }
        let annotations = cm.metadata.annotations.unwrap_or_default();
        view.last_updated = annotations
            .get(LAST_UPDATED_ANNOTATION)
            .and_then(|t| t.parse().ok());
        if let Some(raw) = annotations.get(INVALID_REASONS_ANNOTATION) {
            view.reasons = serde_json::from_str(raw).with_context(|| {
                format!("{INVALID_REASONS_ANNOTATION} is not a JSON object: {raw}")
            })?;
        }
        Ok(view)
    }
}

/// The metric store, if the ConfigMap exists.
pub async fn metric_store(cp: &ControlPlane) -> Result<Option<StoreView>> {
    let api: Api<ConfigMap> = Api::namespaced(cp.client(), cp.agent_namespace());
    api.get_opt(DEFAULT_CONFIGMAP_NAME)
        .await?
        .map(StoreView::of)
        .transpose()
}

/// Every version of the metric store written while it runs, in order, from a watch (so no
/// write between two polls is missed). Stops when dropped.
pub struct StoreHistory {
    versions: Arc<Mutex<Vec<StoreView>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StoreHistory {
    pub fn start(cp: &ControlPlane) -> StoreHistory {
        let api: Api<ConfigMap> = Api::namespaced(cp.client(), cp.agent_namespace());
        let versions = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&versions);
        let config =
            watcher::Config::default().fields(&format!("metadata.name={DEFAULT_CONFIGMAP_NAME}"));
        let task = tokio::spawn(async move {
            let stream = watcher(api, config).default_backoff().applied_objects();
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                match event.map_err(anyhow::Error::from).and_then(StoreView::of) {
                    Ok(view) => sink.lock().unwrap().push(view),
                    Err(e) => eprintln!("metric store watch: {e:#}"),
                }
            }
        });
        StoreHistory { versions, task }
    }

    /// The versions seen so far.
    pub fn versions(&self) -> Vec<StoreView> {
        self.versions.lock().unwrap().clone()
    }
}

impl Drop for StoreHistory {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The ConfigMap store's data key of an HPA's metric (Go's format).
pub fn store_key(namespace: &str, hpa: &str, metric: &str) -> String {
    format!("external_metric-horizontal-{namespace}-{hpa}-{metric}")
}

/// The leader record of the ConfigMap lock, if the lock exists.
pub async fn leader_record(cp: &ControlPlane) -> Result<Option<LeaderElectionRecord>> {
    let api: Api<ConfigMap> = Api::namespaced(cp.client(), cp.agent_namespace());
    let Some(cm) = api.get_opt(LEADER_LOCK_NAME).await? else {
        return Ok(None);
    };
    let raw = cm
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LEADER_ANNOTATION));
    Ok(Some(
        LeaderElectionRecord::from_annotation(raw.map(String::as_str))
            .map_err(|e| anyhow!("{LEADER_ANNOTATION}: {e}"))?,
    ))
}

/// `spec.replicas` of a Deployment (what the HPA controller sets).
pub async fn deployment_spec_replicas(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<i32> {
    let d = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .with_context(|| format!("reading Deployment {namespace}/{name}"))?;
    Ok(d.spec.and_then(|s| s.replicas).unwrap_or(1))
}

/// Lines of an agent log that report a panic.
pub fn panic_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("panicked at") || l.contains("a task panicked"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for (raw, want) in [
            ("40", 40.0),
            ("2472", 2472.0),
            ("500m", 0.5),
            ("12k", 12_000.0),
            ("1500m", 1.5),
            ("-3", -3.0),
        ] {
            assert_eq!(parse_quantity(raw).unwrap(), want, "{raw}");
        }
        assert!(parse_quantity("1Ki").is_err());
        assert!(parse_quantity("x").is_err());
    }

    #[test]
    fn cargo_test_variables_are_told_apart() {
        for key in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_BIN_EXE_x",
            "OUT_DIR",
        ] {
            assert!(is_cargo_test_variable(key), "{key}");
        }
        for key in [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_PROFILE_DEV_DEBUG",
            "PATH",
        ] {
            assert!(!is_cargo_test_variable(key), "{key}");
        }
    }

    #[test]
    fn panic_lines_are_found() {
        let log = "INFO ok\nthread 'tokio-runtime-worker' panicked at src/x.rs:1:1:\nboom\n";
        assert_eq!(panic_lines(log).len(), 1);
        assert!(panic_lines("INFO stopped\n").is_empty());
    }
}
