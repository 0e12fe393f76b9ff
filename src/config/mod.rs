//! Settings from `datadog-cluster.yaml` overridden by `DD_*` environment variables, with the
//! Go DCA's defaults, validated with one-line errors that name the setting.

mod aggregator;
mod spec;
mod value;

pub use spec::{NOT_YET_USED, SPECS, Spec, env_name, markdown_table};
pub use value::{scrub_secret, validate_auth_token};

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use spec::Kind;

pub(crate) const DEFAULT_CONFIG_DIR: &str = "/etc/datadog-agent";
pub(crate) const CONFIG_FILE_NAME: &str = "datadog-cluster.yaml";
/// File beside the config file that holds the node-agent token when none is configured.
pub(crate) const AUTH_TOKEN_FILE_NAME: &str = "cluster_agent.auth_token";
/// The local CLI token's file in the config folder, as the Go DCA names it.
pub(crate) const LOCAL_TOKEN_FILE_NAME: &str = "auth_token";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("invalid YAML in {path} at line {line}, column {column}: {message}")]
    Yaml {
        path: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("invalid value for {key} (from {origin}): {message}")]
    Invalid {
        key: &'static str,
        origin: Source,
        message: String,
    },
    #[error("no API key configured: set DD_API_KEY or api_key")]
    MissingApiKey,
    #[error(
        "external metrics need an application key to query Datadog: set DD_APP_KEY or app_key (or external_metrics_provider.app_key)"
    )]
    MissingAppKey,
    #[error("invalid cluster_agent.auth_token (from {origin}): {message}")]
    AuthToken { origin: Source, message: String },
}

/// Where a value came from, so errors can say which line to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    TokenFile(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("the default"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Env(v) => f.write_str(v),
            Source::TokenFile(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A secret that cannot be printed by accident: `Debug` and `Display` scrub it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", scrub_secret(&self.0))
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&scrub_secret(&self.0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Off,
}

impl LogLevel {
    /// The Go agent's names (and `warning`), case-insensitive; the error names them all.
    pub fn parse(raw: &str) -> Result<Self, String> {
        Ok(match raw.trim().to_ascii_lowercase().as_str() {
            "trace" => LogLevel::Trace,
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" | "warning" => LogLevel::Warn,
            // The Go agent's `critical` has no tracing equivalent; errors are the closest.
            "error" | "critical" => LogLevel::Error,
            "off" => LogLevel::Off,
            _ => {
                return Err(format!(
                    "{raw:?} is not a log level (trace, debug, info, warn, error, critical, off)"
                ));
            }
        })
    }

    pub fn as_filter(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::Off => "off",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockResource {
    ConfigMap,
    Lease,
}

pub use aggregator::{Aggregator, UnknownAggregator};

fn parse_aggregator(raw: &str) -> Result<Aggregator, String> {
    raw.parse()
        .map_err(|_| format!("{raw:?} is not an aggregator (avg, sum, max or min)"))
}

#[derive(Debug, Clone)]
pub struct ClusterAgentSettings {
    pub cmd_port: u16,
    pub allow_legacy_tls: bool,
    /// `None` when neither the setting nor the token file gives one.
    pub auth_token: Option<Secret>,
    pub token_name: String,
    pub kubernetes_service_name: String,
}

#[derive(Debug, Clone)]
pub struct LeaderElectionSettings {
    pub enabled: bool,
    pub lease_duration: Duration,
    pub lease_name: String,
    pub resource: LockResource,
    pub release_on_shutdown: bool,
}

#[derive(Debug, Clone)]
pub struct ExternalMetricsSettings {
    pub enabled: bool,
    pub port: u16,
    pub cert_dir: Option<PathBuf>,
    pub endpoint: Option<String>,
    pub api_key: Secret,
    pub app_key: Secret,
    pub refresh_period: Duration,
    pub max_age: Duration,
    pub bucket_size: Duration,
    pub rollup: Duration,
    pub chunk_size: usize,
    pub query_validity_period: Duration,
    pub max_time_window: Duration,
    pub local_copy_refresh_rate: Duration,
    pub aggregator: Aggregator,
    pub hpa_configmap_name: String,
    pub hpa_watcher_gc_period: Duration,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// The file the settings were read from, if any.
    pub config_file: Option<PathBuf>,
    /// Where the token files live: the config file's folder, or the one `-c` named.
    pub config_dir: PathBuf,
    pub api_key: Secret,
    pub app_key: Secret,
    pub site: String,
    pub dd_url: Option<String>,
    pub hostname: Option<String>,
    pub cluster_name: Option<String>,
    pub cluster_agent: ClusterAgentSettings,
    pub bind_host: std::net::IpAddr,
    pub kube_resources_namespace: Option<String>,
    pub kubernetes_collect_metadata_tags: bool,
    pub kubernetes_use_endpoint_slices: bool,
    pub kubernetes_node_annotations_as_host_aliases: Vec<String>,
    pub collect_kubernetes_events: bool,
    pub leader_election: LeaderElectionSettings,
    pub kubernetes_informers_resync_period: Duration,
    pub kubernetes_kubeconfig_path: Option<PathBuf>,
    /// The local CLI token's file (`auth_token_file_path`, else `auth_token` in
    /// `config_dir`).
    pub auth_token_file_path: PathBuf,
    /// The node-agent API's certificate and key, one PEM file; `None`: self-signed.
    pub ipc_cert_file_path: Option<PathBuf>,
    pub kubernetes_apiserver_client_timeout: Duration,
    pub expvar_port: u16,
    pub metrics_port: u16,
    pub health_port: u16,
    pub external_metrics: ExternalMetricsSettings,
    pub log_level: LogLevel,
    pub log_format_json: bool,
    /// Every setting as resolved, for the `config` command.
    resolved: Resolved,
}

/// A raw value before typing.
#[derive(Debug, Clone, PartialEq)]
enum Raw {
    Scalar(String),
    List(Vec<String>),
}

#[derive(Debug, Clone)]
struct Entry {
    raw: Raw,
    source: Source,
}

#[derive(Clone, Default)]
struct Resolved(BTreeMap<&'static str, Entry>);

/// Raw values include secrets, so only where each came from is shown.
impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, e)| (k, &e.source)))
            .finish()
    }
}

/// Where to look for the configuration file: `-c` may name the file or its folder.
pub(crate) fn config_file_path(cfgpath: Option<&Path>) -> Result<Option<PathBuf>, ConfigError> {
    match cfgpath {
        // A folder without the file is a container configured through the environment alone.
        Some(p) if p.is_dir() => {
            let file = p.join(CONFIG_FILE_NAME);
            Ok(file.exists().then_some(file))
        }
        Some(p) if p.exists() => Ok(Some(p.to_path_buf())),
        Some(p) => Err(ConfigError::Read {
            path: p.to_path_buf(),
            message: "no such file or directory (given with -c/--cfgpath)".into(),
        }),
        None => {
            let default = Path::new(DEFAULT_CONFIG_DIR).join(CONFIG_FILE_NAME);
            Ok(default.exists().then_some(default))
        }
    }
}

/// The folder of the config file, where the token files live.
pub(crate) fn config_dir_of(file: Option<&Path>) -> PathBuf {
    file.and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_DIR))
}

impl Settings {
    /// Loads from the process environment and the file `-c` names (or the default one).
    pub fn load(cfgpath: Option<&Path>) -> Result<Settings, ConfigError> {
        let file = config_file_path(cfgpath)?;
        let dir = match cfgpath {
            Some(p) if p.is_dir() => p.to_path_buf(),
            _ => config_dir_of(file.as_deref()),
        };
        Settings::load_from(file.as_deref(), &dir, &|name| std::env::var(name).ok())
    }

    /// As [`load`](Self::load), for `start`: a malformed value of a setting nothing reads
    /// yet ([`NOT_YET_USED`]) does not stop the agent; it is replaced by the default, and
    /// the warnings say so.
    pub fn load_for_start(cfgpath: Option<&Path>) -> Result<(Settings, Vec<String>), ConfigError> {
        let file = config_file_path(cfgpath)?;
        let dir = match cfgpath {
            Some(p) if p.is_dir() => p.to_path_buf(),
            _ => config_dir_of(file.as_deref()),
        };
        Settings::load_leniently(file.as_deref(), &dir, &|name| std::env::var(name).ok())
    }

    /// [`load_for_start`](Self::load_for_start) with an explicit file and environment.
    pub fn load_leniently(
        file: Option<&Path>,
        config_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Settings, Vec<String>), ConfigError> {
        let (mut resolved, file) = Settings::resolve_from(file, env)?;
        let warnings = resolved.reset_malformed_unused();
        let settings = Settings::from_resolved(resolved, file, config_dir)?;
        Ok((settings, warnings))
    }

    /// Loads with an explicit file and environment, so tests need not touch the process.
    pub fn load_from(
        file: Option<&Path>,
        config_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let (resolved, file) = Settings::resolve_from(file, env)?;
        Settings::from_resolved(resolved, file, config_dir)
    }

    fn resolve_from(
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Resolved, Option<PathBuf>), ConfigError> {
        let file_values = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
                parse_yaml(&text, path)?
            }
            None => BTreeMap::new(),
        };
        Ok((
            resolve(file, &file_values, env),
            file.map(Path::to_path_buf),
        ))
    }

    fn from_resolved(
        r: Resolved,
        config_file: Option<PathBuf>,
        config_dir: &Path,
    ) -> Result<Settings, ConfigError> {
        let api_key = Secret::new(r.string("api_key"));
        let app_key = Secret::new(r.string("app_key"));
        let em_api_key = r.string("external_metrics_provider.api_key");
        let em_app_key = r.string("external_metrics_provider.app_key");
        let chunk_size = r.count("external_metrics_provider.chunk_size")?;
        if chunk_size > 35 {
            return Err(r.invalid(
                "external_metrics_provider.chunk_size",
                format!("{chunk_size} is above Datadog's limit of 35 queries per call"),
            ));
        }
        let resource = match r
            .string("leader_election_default_resource")
            .to_ascii_lowercase()
            .as_str()
        {
            "configmap" | "configmaps" => LockResource::ConfigMap,
            "lease" | "leases" => LockResource::Lease,
            other => {
                return Err(r.invalid(
                    "leader_election_default_resource",
                    format!("{other:?} is not a lock kind (configmap or lease)"),
                ));
            }
        };
        let lease_duration = r.duration("leader_lease_duration")?;
        if lease_duration < Duration::from_secs(2) {
            return Err(r.invalid(
                "leader_lease_duration",
                "must be at least 2 seconds (renewals happen every quarter of it)".into(),
            ));
        }
        let auth_token = resolve_auth_token(&r, config_dir)?;
        Ok(Settings {
            config_file,
            config_dir: config_dir.to_path_buf(),
            site: r.string("site"),
            dd_url: r.opt_string("dd_url"),
            hostname: r.opt_string("hostname"),
            cluster_name: r.opt_string("cluster_name"),
            cluster_agent: ClusterAgentSettings {
                cmd_port: r.port("cluster_agent.cmd_port")?,
                allow_legacy_tls: r.bool("cluster_agent.allow_legacy_tls")?,
                auth_token,
                token_name: r.string("cluster_agent.token_name"),
                kubernetes_service_name: r.string("cluster_agent.kubernetes_service_name"),
            },
            bind_host: r.typed("bind_host", |s| {
                s.trim()
                    .parse()
                    .map_err(|_| format!("{s:?} is not an IP address (e.g. 0.0.0.0 or 127.0.0.1)"))
            })?,
            kube_resources_namespace: r.opt_string("kube_resources_namespace"),
            kubernetes_collect_metadata_tags: r.bool("kubernetes_collect_metadata_tags")?,
            kubernetes_use_endpoint_slices: r.bool("kubernetes_use_endpoint_slices")?,
            kubernetes_node_annotations_as_host_aliases: r
                .list("kubernetes_node_annotations_as_host_aliases"),
            collect_kubernetes_events: r.bool("collect_kubernetes_events")?,
            leader_election: LeaderElectionSettings {
                enabled: r.bool("leader_election")?,
                lease_duration,
                lease_name: r.string("leader_lease_name"),
                resource,
                release_on_shutdown: r.bool("leader_election_release_on_shutdown")?,
            },
            kubernetes_informers_resync_period: r.duration("kubernetes_informers_resync_period")?,
            auth_token_file_path: r
                .opt_string("auth_token_file_path")
                .map_or_else(|| config_dir.join(LOCAL_TOKEN_FILE_NAME), PathBuf::from),
            kubernetes_kubeconfig_path: r
                .opt_string("kubernetes_kubeconfig_path")
                .map(PathBuf::from),
            ipc_cert_file_path: r.opt_string("ipc_cert_file_path").map(PathBuf::from),
            kubernetes_apiserver_client_timeout: r
                .duration("kubernetes_apiserver_client_timeout")?,
            expvar_port: r.optional_port("expvar_port")?,
            metrics_port: r.optional_port("metrics_port")?,
            health_port: r.optional_port("health_port")?,
            external_metrics: ExternalMetricsSettings {
                enabled: r.bool("external_metrics_provider.enabled")?,
                port: r.port("external_metrics_provider.port")?,
                cert_dir: r
                    .opt_string("external_metrics_provider.cert_dir")
                    .map(PathBuf::from),
                endpoint: r.opt_string("external_metrics_provider.endpoint"),
                api_key: if em_api_key.is_empty() {
                    api_key.clone()
                } else {
                    Secret::new(em_api_key)
                },
                app_key: if em_app_key.is_empty() {
                    app_key.clone()
                } else {
                    Secret::new(em_app_key)
                },
                refresh_period: r.nonzero_duration("external_metrics_provider.refresh_period")?,
                max_age: r.duration("external_metrics_provider.max_age")?,
                bucket_size: r.nonzero_duration("external_metrics_provider.bucket_size")?,
                rollup: r.nonzero_duration("external_metrics_provider.rollup")?,
                chunk_size: chunk_size as usize,
                query_validity_period: r
                    .duration("external_metrics_provider.query_validity_period")?,
                max_time_window: r.duration("external_metrics_provider.max_time_window")?,
                local_copy_refresh_rate: r
                    .nonzero_duration("external_metrics_provider.local_copy_refresh_rate")?,
                aggregator: r.typed("external_metrics.aggregator", parse_aggregator)?,
                hpa_configmap_name: r.string("hpa_configmap_name"),
                hpa_watcher_gc_period: r.nonzero_duration("hpa_watcher_gc_period")?,
            },
            api_key,
            app_key,
            log_level: r.typed("log_level", LogLevel::parse)?,
            log_format_json: r.bool("log_format_json")?,
            resolved: r,
        })
    }

    /// Checks what `start` needs beyond well-formed values.
    pub fn validate_for_start(&self) -> Result<(), ConfigError> {
        if self.api_key.is_empty() {
            return Err(ConfigError::MissingApiKey);
        }
        if self.external_metrics.enabled && self.external_metrics.app_key.is_empty() {
            return Err(ConfigError::MissingAppKey);
        }
        Ok(())
    }

    /// The effective configuration as YAML, secrets scrubbed the DCA way.
    pub fn to_scrubbed_yaml(&self) -> String {
        let mut root = serde_json::Map::new();
        for spec in SPECS {
            let Some(entry) = self.resolved.0.get(spec.key) else {
                continue;
            };
            let value = display_value(spec.kind, &entry.raw);
            insert_dotted(&mut root, spec.key, value);
        }
        // The token from the token file is shown too (scrubbed): it is what is in force.
        if let Some(token) = &self.cluster_agent.auth_token {
            insert_dotted(
                &mut root,
                "cluster_agent.auth_token",
                serde_json::Value::String(scrub_secret(token.expose())),
            );
        }
        serde_saphyr::to_string(&serde_json::Value::Object(root))
            .unwrap_or_else(|e| format!("# cannot render the configuration: {e}\n"))
    }

    /// Where each setting came from, for the `config` command's `--sources`.
    pub fn sources(&self) -> Vec<(&'static str, String)> {
        self.resolved
            .0
            .iter()
            .map(|(k, e)| (*k, e.source.to_string()))
            .collect()
    }
}

fn display_value(kind: Kind, raw: &Raw) -> serde_json::Value {
    use serde_json::Value;
    match (kind, raw) {
        (Kind::Secret, Raw::Scalar(s)) => Value::String(scrub_secret(s)),
        (Kind::Bool, Raw::Scalar(s)) => {
            value::parse_bool(s).map(Value::Bool).unwrap_or(Value::Null)
        }
        (Kind::Port | Kind::OptionalPort | Kind::Count, Raw::Scalar(s)) => s
            .trim()
            .parse::<u64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(s.clone())),
        (Kind::Duration, Raw::Scalar(s)) => s
            .trim()
            .parse::<u64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(s.clone())),
        (Kind::List, Raw::List(items)) => {
            Value::Array(items.iter().cloned().map(Value::String).collect())
        }
        (_, Raw::Scalar(s)) => Value::String(s.clone()),
        (_, Raw::List(items)) => Value::String(items.join(" ")),
    }
}

fn insert_dotted(
    root: &mut serde_json::Map<String, serde_json::Value>,
    key: &str,
    value: serde_json::Value,
) {
    let mut parts = key.split('.').peekable();
    let mut node = root;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            node.insert(part.to_owned(), value);
            return;
        }
        let child = node
            .entry(part.to_owned())
            .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
        if !child.is_object() {
            *child = serde_json::Value::Object(serde_json::Map::new());
        }
        match child {
            serde_json::Value::Object(map) => node = map,
            _ => return,
        }
    }
}

/// The token from the setting, else from the token file beside the config file.
fn resolve_auth_token(r: &Resolved, config_dir: &Path) -> Result<Option<Secret>, ConfigError> {
    let configured = r.string("cluster_agent.auth_token");
    let (token, source) = if !configured.is_empty() {
        (configured, r.source("cluster_agent.auth_token"))
    } else {
        let path = config_dir.join(AUTH_TOKEN_FILE_NAME);
        match std::fs::read_to_string(&path) {
            // The Go agent keeps a trailing newline as part of the token, so a file written
            // with `echo` silently breaks every node agent; we strip line endings instead.
            Ok(text) => (
                text.trim_end_matches(['\n', '\r']).to_owned(),
                Source::TokenFile(path),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ConfigError::AuthToken {
                    origin: Source::TokenFile(path),
                    message: format!("cannot read the token file: {e}"),
                });
            }
        }
    };
    validate_auth_token(&token).map_err(|message| ConfigError::AuthToken {
        origin: source,
        message,
    })?;
    Ok(Some(Secret::new(token)))
}

impl Resolved {
    /// Puts back the default of each setting in [`NOT_YET_USED`] whose value is malformed
    /// (the token aside), returning one warning line for each.
    fn reset_malformed_unused(&mut self) -> Vec<String> {
        let mut warnings = Vec::new();
        for spec in SPECS {
            if !NOT_YET_USED.contains(&spec.key) {
                continue;
            }
            let Some(Entry { raw, source }) = self.0.get(spec.key) else {
                continue;
            };
            let checked = match raw {
                Raw::Scalar(raw) => spec::check_kind(spec.kind, raw.trim()),
                Raw::List(_) if spec.kind == Kind::List => Ok(()),
                Raw::List(_) => Err("a list where one value is expected".to_owned()),
            };
            if let Err(message) = checked {
                warnings.push(format!(
                    "ignoring the value of {} (from {source}): {message}; the setting is not \
                     used yet, so the default {:?} stands",
                    spec.key, spec.default
                ));
                self.0.insert(
                    spec.key,
                    Entry {
                        raw: Raw::Scalar(spec.default.to_owned()),
                        source: Source::Default,
                    },
                );
            }
        }
        warnings
    }

    fn entry(&self, key: &str) -> Option<&Entry> {
        self.0.get(key)
    }

    fn source(&self, key: &'static str) -> Source {
        self.entry(key)
            .map(|e| e.source.clone())
            .unwrap_or(Source::Default)
    }

    fn string(&self, key: &'static str) -> String {
        match self.entry(key).map(|e| &e.raw) {
            Some(Raw::Scalar(s)) => s.trim().to_owned(),
            Some(Raw::List(items)) => items.join(" "),
            None => String::new(),
        }
    }

    fn list(&self, key: &'static str) -> Vec<String> {
        match self.entry(key).map(|e| &e.raw) {
            Some(Raw::List(items)) => items.clone(),
            Some(Raw::Scalar(s)) => value::parse_env_list(s),
            None => Vec::new(),
        }
    }

    fn opt_string(&self, key: &'static str) -> Option<String> {
        Some(self.string(key)).filter(|s| !s.is_empty())
    }

    fn invalid(&self, key: &'static str, message: String) -> ConfigError {
        ConfigError::Invalid {
            key,
            origin: self.source(key),
            message,
        }
    }

    fn typed<T>(
        &self,
        key: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        parse(&self.string(key)).map_err(|m| self.invalid(key, m))
    }

    fn bool(&self, key: &'static str) -> Result<bool, ConfigError> {
        self.typed(key, value::parse_bool)
    }
    fn port(&self, key: &'static str) -> Result<u16, ConfigError> {
        self.typed(key, value::parse_port)
    }
    fn optional_port(&self, key: &'static str) -> Result<u16, ConfigError> {
        self.typed(key, value::parse_optional_port)
    }
    fn count(&self, key: &'static str) -> Result<u64, ConfigError> {
        self.typed(key, value::parse_count)
    }
    fn duration(&self, key: &'static str) -> Result<Duration, ConfigError> {
        self.typed(key, value::parse_duration)
    }
    fn nonzero_duration(&self, key: &'static str) -> Result<Duration, ConfigError> {
        let d = self.duration(key)?;
        if d.is_zero() {
            return Err(self.invalid(key, "must be greater than zero".into()));
        }
        Ok(d)
    }
}

/// Default, then file, then environment (main name, then aliases).
fn resolve(
    file: Option<&Path>,
    file_values: &BTreeMap<String, Raw>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Resolved {
    let mut out = BTreeMap::new();
    for spec in SPECS {
        let mut entry = Entry {
            raw: Raw::Scalar(spec.default.to_owned()),
            source: Source::Default,
        };
        if let (Some(path), Some(raw)) = (file, file_values.get(spec.key)) {
            entry = Entry {
                raw: raw.clone(),
                source: Source::File(path.to_path_buf()),
            };
        }
        let names = std::iter::once(spec.env_name())
            .chain(spec.env_aliases.iter().map(|s| (*s).to_owned()));
        for name in names {
            if let Some(v) = env(&name) {
                let raw = if spec.kind == Kind::List {
                    Raw::List(value::parse_env_list(&v))
                } else {
                    Raw::Scalar(v)
                };
                entry = Entry {
                    raw,
                    source: Source::Env(name),
                };
                break;
            }
        }
        out.insert(spec.key, entry);
    }
    Resolved(out)
}

/// Flattens the YAML document into dotted keys (`cluster_agent: {cmd_port: 1}` and
/// `cluster_agent.cmd_port: 1` are the same setting, as in Viper).
fn parse_yaml(text: &str, path: &Path) -> Result<BTreeMap<String, Raw>, ConfigError> {
    if text.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    let doc: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        let rendered = e.to_string();
        let message = rendered
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("syntax error")
            .to_owned();
        ConfigError::Yaml {
            path: path.to_path_buf(),
            line,
            column,
            message,
        }
    })?;
    let mut out = BTreeMap::new();
    match doc {
        serde_json::Value::Object(map) => flatten("", &map, &mut out),
        serde_json::Value::Null => {}
        _ => {
            return Err(ConfigError::Yaml {
                path: path.to_path_buf(),
                line: 1,
                column: 1,
                message: "the document must be a mapping of settings".into(),
            });
        }
    }
    Ok(out)
}

fn flatten(
    prefix: &str,
    map: &serde_json::Map<String, serde_json::Value>,
    out: &mut BTreeMap<String, Raw>,
) {
    for (k, v) in map {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            serde_json::Value::Object(child) => flatten(&key, child, out),
            serde_json::Value::Array(items) => {
                out.insert(key, Raw::List(items.iter().map(scalar_text).collect()));
            }
            // An explicit `key:` with no value means "unset", i.e. the default.
            serde_json::Value::Null => {}
            other => {
                out.insert(key, Raw::Scalar(scalar_text(other)));
            }
        }
    }
}

fn scalar_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;
