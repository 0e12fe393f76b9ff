//! The table of every setting we read: key, kind, default, aliases and meaning.
//!
//! One table drives the loader, the `config` command and the README's configuration table
//! (a test compares them), so the documentation cannot drift from the code.

/// How a raw value is interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    /// A string that must never be printed unscrubbed.
    Secret,
    Bool,
    /// 1..=65535.
    Port,
    /// 0 disables the listener, otherwise a port.
    OptionalPort,
    /// Integer seconds (`30`) or a Go duration (`30s`, `1m30s`).
    Duration,
    /// Positive integer.
    Count,
    /// A YAML sequence, or a space- or comma-separated string in the environment.
    List,
}

pub struct Spec {
    pub key: &'static str,
    pub kind: Kind,
    /// The default in the same textual form a user would write.
    pub default: &'static str,
    /// Extra environment variable names accepted for this key, lower precedence than `DD_<KEY>`.
    pub env_aliases: &'static [&'static str],
    pub doc: &'static str,
}

impl Spec {
    /// `DD_` + key upper-cased with `.` → `_`, as the Go agent names its variables.
    pub fn env_name(&self) -> String {
        env_name(self.key)
    }
}

pub fn env_name(key: &str) -> String {
    let mut s = String::with_capacity(key.len() + 3);
    s.push_str("DD_");
    for c in key.chars() {
        s.push(if c == '.' {
            '_'
        } else {
            c.to_ascii_uppercase()
        });
    }
    s
}

const fn spec(key: &'static str, kind: Kind, default: &'static str, doc: &'static str) -> Spec {
    Spec {
        key,
        kind,
        default,
        env_aliases: &[],
        doc,
    }
}

pub static SPECS: &[Spec] = &[
    spec("api_key", Kind::Secret, "", "Datadog API key (required)."),
    spec(
        "app_key",
        Kind::Secret,
        "",
        "Datadog application key, needed to query metrics.",
    ),
    spec(
        "site",
        Kind::Str,
        "datadoghq.com",
        "Datadog site: the API is `https://api.<site>`.",
    ),
    Spec {
        key: "dd_url",
        kind: Kind::Str,
        default: "",
        env_aliases: &["DD_URL"],
        doc: "Base URL for uploads to Datadog instead of `https://<version>-flare.agent.<site>`: `flare --send` posts to `<dd_url>/support/flare/<case>` (a proxy, or a test double). Event and service-check delivery will use it when they land.",
    },
    spec(
        "hostname",
        Kind::Str,
        "",
        "Host name `status` shows and the flare upload reports; default: `DD_POD_NAME`, else the machine's. Events will report it when they land.",
    ),
    spec(
        "cluster_name",
        Kind::Str,
        "",
        "Cluster name, suffixed to host names in events.",
    ),
    spec(
        "cluster_agent.cmd_port",
        Kind::Port,
        "5005",
        "Port of the node-agent API (HTTPS).",
    ),
    spec(
        "cluster_agent.allow_legacy_tls",
        Kind::Bool,
        "false",
        "Accept TLS 1.2 on the node-agent API, which is TLS 1.3 only by default (the Go DCA's legacy mode goes down to TLS 1.0; rustls has nothing older than 1.2).",
    ),
    spec(
        "bind_host",
        Kind::Str,
        "0.0.0.0",
        "Address our HTTPS servers listen on (ours: the Go DCA always uses 0.0.0.0).",
    ),
    spec(
        "cluster_agent.auth_token",
        Kind::Secret,
        "",
        "Token node agents present (at least 32 ASCII letters and digits); default: the `cluster_agent.auth_token` file beside the config file, created (64 hex characters, mode 0600) when missing.",
    ),
    spec(
        "auth_token_file_path",
        Kind::Str,
        "",
        "File holding the local token of our own CLI (`metamap`, `health`, `status`), read by the CLI and accepted by the node-agent API; default: `auth_token` beside the config file, created (64 hex characters, mode 0600) when missing.",
    ),
    spec(
        "ipc_cert_file_path",
        Kind::Str,
        "",
        "PEM file holding the certificate chain and private key the node-agent API serves (re-read when it changes); unset: a self-signed certificate generated at every start, as the Go DCA serves.",
    ),
    spec(
        "cluster_agent.token_name",
        Kind::Str,
        "datadogtoken",
        "ConfigMap holding the event collection resume token.",
    ),
    spec(
        "cluster_agent.kubernetes_service_name",
        Kind::Str,
        "datadog-cluster-agent",
        "Service name of the cluster agent (serving certificate names).",
    ),
    spec(
        "kube_resources_namespace",
        Kind::Str,
        "",
        "Namespace of our ConfigMaps and lock; default: the pod's namespace, else `default`.",
    ),
    Spec {
        key: "kubernetes_collect_metadata_tags",
        kind: Kind::Bool,
        default: "true",
        env_aliases: &["DD_USE_METADATA_MAPPER"],
        doc: "Run the metadata mapper (pod → services) for node agents.",
    },
    spec(
        "kubernetes_use_endpoint_slices",
        Kind::Bool,
        "false",
        "Map services from EndpointSlices instead of Endpoints (`discovery.k8s.io/v1`, else `v1beta1`, as the API server offers; Endpoints, with a warning, when it offers neither).",
    ),
    spec(
        "collect_kubernetes_events",
        Kind::Bool,
        "false",
        "Collect Kubernetes events and send them to Datadog (leader only).",
    ),
    spec(
        "leader_election",
        Kind::Bool,
        "false",
        "Elect one leader among replicas.",
    ),
    spec(
        "leader_lease_duration",
        Kind::Duration,
        "60",
        "Leader lease duration; renew deadline is half, retry period a quarter.",
    ),
    spec(
        "leader_lease_name",
        Kind::Str,
        "datadog-leader-election",
        "Name of the leader election lock object.",
    ),
    spec(
        "leader_election_default_resource",
        Kind::Str,
        "configmap",
        "Lock kind: `configmap` or `lease`.",
    ),
    spec(
        "leader_election_release_on_shutdown",
        Kind::Bool,
        "true",
        "Release the lock on graceful shutdown so another replica leads at once.",
    ),
    spec(
        "kubernetes_node_annotations_as_host_aliases",
        Kind::List,
        "cluster.k8s.io/machine",
        "Node annotations node agents may read as host aliases (`/api/v1/annotations/node/{node}` answers only these).",
    ),
    spec(
        "kubernetes_informers_resync_period",
        Kind::Duration,
        "300",
        "Full resync period of the Kubernetes watches.",
    ),
    spec(
        "kubernetes_kubeconfig_path",
        Kind::Str,
        "",
        "Kubeconfig to use outside a pod; default: KUBECONFIG, then ~/.kube/config.",
    ),
    spec(
        "kubernetes_apiserver_client_timeout",
        Kind::Duration,
        "10",
        "Timeout of requests to the Kubernetes API server.",
    ),
    spec(
        "expvar_port",
        Kind::OptionalPort,
        "5000",
        "Port of the expvar-style JSON document `/debug/vars` (plain HTTP on `bind_host`; 0 = off): command line, pid, resident memory, uptime, version. The same listener as `/metrics` when the two ports are equal.",
    ),
    spec(
        "metrics_port",
        Kind::OptionalPort,
        "5000",
        "Port of the Prometheus `/metrics` endpoint (plain HTTP on `bind_host`; 0 = off): node-agent API requests and latency by handler and status (`api_requests`, `api_elapsed`), Datadog calls by outcome (`datadog_requests`), the rate-limit gauges (`rate_limit_queries_*`), `leader_election_is_leader`, and the external-metrics store and cache counters.",
    ),
    spec(
        "health_port",
        Kind::OptionalPort,
        "0",
        "Port of the Kubernetes probes `/live`, `/ready` and `/startup` (plain HTTP on `bind_host`; 0 = off): the health status JSON, 500 when a component they gate is unhealthy. `/ready` waits for the node and namespace lists and, with external metrics, delegated authentication and the metric store; a failing Datadog API shows in `health` only.",
    ),
    spec(
        "external_metrics_provider.enabled",
        Kind::Bool,
        "false",
        "Serve `external.metrics.k8s.io` for HorizontalPodAutoscalers.",
    ),
    spec(
        "external_metrics_provider.port",
        Kind::Port,
        "8443",
        "Port of the external metrics API server (HTTPS).",
    ),
    spec(
        "external_metrics_provider.cert_dir",
        Kind::Str,
        "",
        "Folder with `tls.crt` and `tls.key` for the external metrics server; default: self-signed.",
    ),
    spec(
        "external_metrics_provider.endpoint",
        Kind::Str,
        "",
        "Datadog API base URL for metric queries; default: DATADOG_HOST, then `https://api.<site>`.",
    ),
    spec(
        "external_metrics_provider.api_key",
        Kind::Secret,
        "",
        "API key for metric queries; default: `api_key`.",
    ),
    spec(
        "external_metrics_provider.app_key",
        Kind::Secret,
        "",
        "Application key for metric queries; default: `app_key`.",
    ),
    spec(
        "external_metrics_provider.refresh_period",
        Kind::Duration,
        "30",
        "How often the leader queries Datadog.",
    ),
    spec(
        "external_metrics_provider.max_age",
        Kind::Duration,
        "120",
        "A point older than max(max_age, 3 × rollup) is invalid.",
    ),
    spec(
        "external_metrics_provider.bucket_size",
        Kind::Duration,
        "300",
        "Time window of each Datadog query.",
    ),
    spec(
        "external_metrics_provider.rollup",
        Kind::Duration,
        "30",
        "Rollup interval appended to each query.",
    ),
    spec(
        "external_metrics_provider.chunk_size",
        Kind::Count,
        "35",
        "Queries per Datadog call (1 to 35).",
    ),
    spec(
        "external_metrics_provider.query_validity_period",
        Kind::Duration,
        "30",
        "Grace added to the maximum age before a served value counts as stale.",
    ),
    spec(
        "external_metrics_provider.max_time_window",
        Kind::Duration,
        "86400",
        "Largest query window accepted.",
    ),
    spec(
        "external_metrics_provider.local_copy_refresh_rate",
        Kind::Duration,
        "30",
        "Expected refresh of a replica's copy of the shared store.",
    ),
    spec(
        "external_metrics.aggregator",
        Kind::Str,
        "avg",
        "Space aggregator of the queries: avg, sum, max or min.",
    ),
    spec(
        "hpa_configmap_name",
        Kind::Str,
        "datadog-custom-metrics",
        "ConfigMap shared by replicas that stores metric values.",
    ),
    spec(
        "hpa_watcher_gc_period",
        Kind::Duration,
        "300",
        "How often entries of deleted HPAs are removed from the store.",
    ),
    spec(
        "log_level",
        Kind::Str,
        "info",
        "trace, debug, info, warn, error, critical or off.",
    ),
    spec(
        "log_format_json",
        Kind::Bool,
        "false",
        "Log JSON lines instead of text.",
    ),
];

/// Settings accepted (and shown by `config`) that nothing reads yet: the subsystems that
/// will read them (node-agent API, event collection, telemetry) are not built. The README
/// marks them, and `start` does not refuse a malformed one (it warns and uses the default).
pub const NOT_YET_USED: &[&str] = &[
    "cluster_name",
    "cluster_agent.token_name",
    "collect_kubernetes_events",
    "kubernetes_informers_resync_period",
    "external_metrics_provider.max_time_window",
];

/// Whether a raw scalar is well formed for `kind`.
pub(super) fn check_kind(kind: Kind, raw: &str) -> Result<(), String> {
    use super::value;
    match kind {
        Kind::Str | Kind::Secret | Kind::List => Ok(()),
        Kind::Bool => value::parse_bool(raw).map(drop),
        Kind::Port => value::parse_port(raw).map(drop),
        Kind::OptionalPort => value::parse_optional_port(raw).map(drop),
        Kind::Count => value::parse_count(raw).map(drop),
        Kind::Duration => value::parse_duration(raw).map(drop),
    }
}

/// The README's configuration table, generated from [`SPECS`].
pub fn markdown_table() -> String {
    let mut out =
        String::from("| setting | environment variable | default | meaning |\n|---|---|---|---|\n");
    for s in SPECS {
        let mut env = format!("`{}`", s.env_name());
        for a in s.env_aliases {
            env.push_str(&format!(", `{a}`"));
        }
        let default = if s.default.is_empty() {
            String::from("—")
        } else {
            format!("`{}`", s.default)
        };
        let unused = if NOT_YET_USED.contains(&s.key) {
            "(not yet used) "
        } else {
            ""
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {unused}{} |\n",
            s.key, env, default, s.doc
        ));
    }
    out
}
