//! The Kubernetes client, the namespace our objects live in, and what API versions the
//! server offers (we run on 1.20 test clusters and on current ones).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};

use crate::config::Settings;
use crate::error::Cause;

const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// How long start-up keeps trying an API server it cannot reach (or that answers 5xx or
/// 429, as one still starting does) before giving up, and the first pause between tries.
const STARTUP_PATIENCE: Duration = Duration::from_secs(60);
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(8);
/// One try of `GET /apis`: a server that accepts connections but never answers must not
/// hold start-up past its patience.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a refusal's message a start-up error quotes (kube puts a whole non-Status
/// body, e.g. a web server's HTML page, there).
const MAX_QUOTED: usize = 200;

/// Each message names what was used (a file, a URL, and the setting or variable it came
/// from) and what to check; the library's error follows as the source.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error(
        "cannot load the in-cluster Kubernetes configuration (KUBERNETES_SERVICE_HOST is set); \
         check that the pod mounts its service account token"
    )]
    InCluster(#[source] kube::config::InClusterError),
    #[error("cannot load kubeconfig {path} (from {origin}); check the path and the file")]
    Kubeconfig {
        path: String,
        origin: &'static str,
        #[source]
        source: KubeconfigError,
    },
    #[error(
        "cannot find a Kubernetes configuration: not in a pod (no KUBERNETES_SERVICE_HOST), \
         no KUBECONFIG and no {home_config}; set kubernetes_kubeconfig_path or KUBECONFIG"
    )]
    NoConfiguration { home_config: String },
    #[error("cannot build the Kubernetes client for {url} (from {origin})")]
    Client {
        url: String,
        origin: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "cannot reach the Kubernetes API server at {url} (from {origin}) after trying for \
         {waited_secs} s; check that it is running and that the address is right"
    )]
    Unreachable {
        url: String,
        origin: String,
        waited_secs: u64,
        #[source]
        source: Cause,
    },
    #[error(
        "cannot verify the TLS connection to the Kubernetes API server at {url} (from \
         {origin}); check the certificate authority it names"
    )]
    Tls {
        url: String,
        origin: String,
        #[source]
        source: kube::Error,
    },
    /// The credentials plugin's own output is left out: it may hold a credential.
    #[error(
        "cannot get credentials for the Kubernetes API server at {url} (from {origin}); run \
         its credentials plugin by hand to see why"
    )]
    Credentials { url: String, origin: String },
    #[error(
        "the Kubernetes API server at {url} (from {origin}) refused our credentials (HTTP \
         {code} to GET /apis); check the token or client certificate there"
    )]
    Unauthorized {
        url: String,
        origin: String,
        code: u16,
        #[source]
        source: Cause,
    },
    #[error(
        "the server at {url} (from {origin}) answered HTTP {code} to GET /apis, which no \
         Kubernetes API server does; check that the address is the API server's"
    )]
    NotAnApiServer {
        url: String,
        origin: String,
        code: u16,
        #[source]
        source: Cause,
    },
}

/// Where the client's configuration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConfigSource<'a> {
    InCluster,
    Kubeconfig(&'a Path),
    Infer,
}

/// An explicit `kubernetes_kubeconfig_path` wins even in a pod (an operator who sets it means
/// it, e.g. to reach another cluster); else the service account in a pod; else KUBECONFIG or
/// `~/.kube/config`.
fn config_source(in_pod: bool, kubeconfig_path: Option<&Path>) -> ConfigSource<'_> {
    match (kubeconfig_path, in_pod) {
        (Some(path), _) => ConfigSource::Kubeconfig(path),
        (None, true) => ConfigSource::InCluster,
        (None, false) => ConfigSource::Infer,
    }
}

/// Outside a pod with no path configured, as client-go infers it: KUBECONFIG (a list of
/// files, merged) when set and not empty, else `~/.kube/config` when it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Inferred {
    Env(OsString),
    Home(PathBuf),
    Nothing,
}

fn infer_source(kubeconfig_env: Option<OsString>, home_config: Option<&Path>) -> Inferred {
    match kubeconfig_env {
        Some(value) if std::env::split_paths(&value).any(|p| !p.as_os_str().is_empty()) => {
            Inferred::Env(value)
        }
        _ => match home_config {
            Some(path) if path.is_file() => Inferred::Home(path.to_owned()),
            _ => Inferred::Nothing,
        },
    }
}

/// A client and what it was configured from, for messages.
pub struct Connection {
    pub client: kube::Client,
    pub capabilities: ApiCapabilities,
}

/// The client, configured as [`config_source`] decides, and what its API server offers.
/// An API server that cannot be reached yet is retried with backoff for a bounded time.
pub async fn connect(settings: &Settings) -> Result<Connection, K8sError> {
    let (client, url, origin) = client_with_origin(settings).await?;
    let capabilities = discover_patiently(&client, &url, &origin, STARTUP_PATIENCE).await?;
    Ok(Connection {
        client,
        capabilities,
    })
}

async fn client_with_origin(
    settings: &Settings,
) -> Result<(kube::Client, String, String), K8sError> {
    let in_pod = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let source = config_source(in_pod, settings.kubernetes_kubeconfig_path.as_deref());
    let options = KubeConfigOptions::default();
    let (mut config, origin) = match source {
        ConfigSource::InCluster => (
            kube::Config::incluster().map_err(K8sError::InCluster)?,
            "the pod's service account".to_owned(),
        ),
        ConfigSource::Kubeconfig(path) => {
            let origin = "setting kubernetes_kubeconfig_path";
            let kubeconfig = read_kubeconfig(path, origin)?;
            let config = from_kubeconfig(kubeconfig, &options, path, origin).await?;
            (config, format!("kubeconfig {}", path.display()))
        }
        ConfigSource::Infer => {
            let home = std::env::home_dir().map(|h| h.join(".kube").join("config"));
            match infer_source(std::env::var_os("KUBECONFIG"), home.as_deref()) {
                Inferred::Env(value) => {
                    let (kubeconfig, path) = read_kubeconfig_list(&value)?;
                    let config = from_kubeconfig(kubeconfig, &options, &path, "KUBECONFIG").await?;
                    (
                        config,
                        format!("KUBECONFIG={}", PathBuf::from(&value).display()),
                    )
                }
                Inferred::Home(path) => {
                    let origin = "~/.kube/config";
                    let kubeconfig = read_kubeconfig(&path, origin)?;
                    let config = from_kubeconfig(kubeconfig, &options, &path, origin).await?;
                    (config, format!("kubeconfig {}", path.display()))
                }
                Inferred::Nothing => {
                    return Err(K8sError::NoConfiguration {
                        home_config: home.map_or_else(
                            || "~/.kube/config".to_owned(),
                            |h| h.display().to_string(),
                        ),
                    });
                }
            }
        }
    };
    let timeout = settings.kubernetes_apiserver_client_timeout;
    if !timeout.is_zero() {
        config.connect_timeout = Some(timeout);
        // Watches hold a request open far longer than any single call; kube sets its own
        // per-watch timeout in the query, so the read timeout must not cut them.
        config.read_timeout = None;
        config.write_timeout = Some(timeout);
    }
    let url = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).map_err(|source| K8sError::Client {
        url: url.clone(),
        origin: origin.clone(),
        source,
    })?;
    Ok((client, url, origin))
}

/// The files a KUBECONFIG list names, merged in order, skipping the missing ones as
/// client-go does; an error when none exists. Also the first file read, for messages.
fn read_kubeconfig_list(value: &OsString) -> Result<(Kubeconfig, PathBuf), K8sError> {
    let listed: Vec<PathBuf> = std::env::split_paths(value)
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    let present: Vec<&PathBuf> = listed.iter().filter(|p| p.exists()).collect();
    let Some(first) = present.first() else {
        // Nothing to merge: report the first file as missing, in the reader's words.
        let missing = listed.first().cloned().unwrap_or_default();
        return read_kubeconfig(&missing, "KUBECONFIG").map(|k| (k, missing));
    };
    let mut merged = Kubeconfig::default();
    for path in &present {
        let next = read_kubeconfig(path, "KUBECONFIG")?;
        merged = merged.merge(next).map_err(|source| K8sError::Kubeconfig {
            path: path.display().to_string(),
            origin: "KUBECONFIG",
            source,
        })?;
    }
    Ok((merged, (*first).clone()))
}

fn read_kubeconfig(path: &Path, origin: &'static str) -> Result<Kubeconfig, K8sError> {
    Kubeconfig::read_from(path).map_err(|source| K8sError::Kubeconfig {
        path: path.display().to_string(),
        origin,
        source,
    })
}

async fn from_kubeconfig(
    kubeconfig: Kubeconfig,
    options: &KubeConfigOptions,
    path: &Path,
    origin: &'static str,
) -> Result<kube::Config, K8sError> {
    kube::Config::from_custom_kubeconfig(kubeconfig, options)
        .await
        .map_err(|source| K8sError::Kubeconfig {
            path: path.display().to_string(),
            origin,
            source,
        })
}

/// `kube_resources_namespace`, else the pod's own namespace, else `default`.
pub(crate) fn resource_namespace(settings: &Settings) -> String {
    resource_namespace_from(
        settings.kube_resources_namespace.as_deref(),
        Path::new(SERVICE_ACCOUNT_NAMESPACE),
    )
}

fn resource_namespace_from(configured: Option<&str>, sa_file: &Path) -> String {
    if let Some(ns) = configured.filter(|s| !s.is_empty()) {
        return ns.to_owned();
    }
    match std::fs::read_to_string(sa_file) {
        Ok(ns) if !ns.trim().is_empty() => ns.trim().to_owned(),
        _ => "default".to_owned(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HpaVersion {
    V2,
    V2beta2,
}

impl HpaVersion {
    pub fn api_version(self) -> &'static str {
        match self {
            HpaVersion::V2 => "autoscaling/v2",
            HpaVersion::V2beta2 => "autoscaling/v2beta2",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointSliceVersion {
    V1,
    V1beta1,
}

/// What the API server offers, found once at start-up and handed to the subsystems.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiCapabilities {
    /// `None` when the server offers neither HPA version we read.
    pub hpa: Option<HpaVersion>,
    pub endpoint_slices: Option<EndpointSliceVersion>,
    pub leases: bool,
}

/// What `GET /apis` failing means for start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiscoveryFailure {
    /// Not reached, or answered as a server still starting does (5xx, 429): try again.
    Retry,
    /// 401 or 403.
    Unauthorized(u16),
    /// Any other answer (a 200 that is no APIGroupList counts as 200): not a Kubernetes
    /// API server, or not its address.
    Unexpected(u16),
    /// The TLS handshake failed on the certificate: retrying cannot help.
    Tls,
    /// The kubeconfig's credentials plugin failed.
    Credentials,
}

fn classify(error: &kube::Error) -> DiscoveryFailure {
    match error {
        kube::Error::Api(status) => match status.code {
            401 | 403 => DiscoveryFailure::Unauthorized(status.code),
            429 | 500..=599 => DiscoveryFailure::Retry,
            code => DiscoveryFailure::Unexpected(code),
        },
        kube::Error::SerdeError(_) => DiscoveryFailure::Unexpected(200),
        kube::Error::Auth(_) => DiscoveryFailure::Credentials,
        other if caused_by_tls(other) => DiscoveryFailure::Tls,
        _ => DiscoveryFailure::Retry,
    }
}

/// Whether a rustls error is somewhere in the chain (a certificate the client refused).
fn caused_by_tls(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// The message of a refusal, on one line and cut to [`MAX_QUOTED`] characters: the
/// Status the server sent, or the body kube put in its place when there was none.
fn api_message(error: &kube::Error) -> Cause {
    let message = match error {
        kube::Error::Api(status) => status.message.as_str(),
        _ => "",
    };
    let mut line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        return Cause::msg("no message");
    }
    if let Some((cut, _)) = line.char_indices().nth(MAX_QUOTED) {
        line.truncate(cut);
        line.push('…');
    }
    Cause::msg(line)
}

/// What `client`'s API server offers, asked once.
pub async fn discover(client: &kube::Client) -> Result<ApiCapabilities, K8sError> {
    discover_patiently(client, "its API server", "the given client", Duration::ZERO).await
}

/// The group-versions the server offers, asked until `patience` runs out while the server
/// cannot be reached (doubling pauses from 0.5 s to 8 s).
async fn discover_patiently(
    client: &kube::Client,
    url: &str,
    origin: &str,
    patience: Duration,
) -> Result<ApiCapabilities, K8sError> {
    let start = tokio::time::Instant::now();
    let mut pause = FIRST_RETRY;
    loop {
        let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, client.list_api_groups()).await;
        let error = match attempt {
            Err(_elapsed) => None,
            Ok(Err(error)) => Some(error),
            Ok(Ok(groups)) => {
                let offered: Vec<String> = groups
                    .groups
                    .iter()
                    .flat_map(|g| g.versions.iter().map(|v| v.group_version.clone()))
                    .collect();
                return Ok(capabilities_from(&offered));
            }
        };
        let (url, origin) = (url.to_owned(), origin.to_owned());
        let failure = error.as_ref().map_or(DiscoveryFailure::Retry, classify);
        let cause = match &error {
            Some(error) => Cause::msg(crate::error::chain_line(error)),
            None => Cause::msg(format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())),
        };
        match (failure, error) {
            (DiscoveryFailure::Unauthorized(code), Some(error)) => {
                return Err(K8sError::Unauthorized {
                    url,
                    origin,
                    code,
                    source: api_message(&error),
                });
            }
            (DiscoveryFailure::Unexpected(code), Some(error)) => {
                return Err(K8sError::NotAnApiServer {
                    url,
                    origin,
                    code,
                    source: api_message(&error),
                });
            }
            (DiscoveryFailure::Tls, Some(error)) => {
                return Err(K8sError::Tls {
                    url,
                    origin,
                    source: error,
                });
            }
            (DiscoveryFailure::Credentials, _) => {
                return Err(K8sError::Credentials { url, origin });
            }
            (_, _) if start.elapsed() + pause > patience => {
                return Err(K8sError::Unreachable {
                    url,
                    origin,
                    waited_secs: start.elapsed().as_secs(),
                    source: cause,
                });
            }
            (_, _) => {
                tracing::warn!(
                    %url,
                    error = %cause,
                    retry_in = ?pause,
                    "cannot reach the Kubernetes API server yet"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY);
            }
        }
    }
}

/// Picks, from the group-versions the server lists, the newest one we can read of each.
pub(crate) fn capabilities_from(group_versions: &[String]) -> ApiCapabilities {
    let has = |gv: &str| group_versions.iter().any(|g| g == gv);
    ApiCapabilities {
        hpa: if has("autoscaling/v2") {
            Some(HpaVersion::V2)
        } else if has("autoscaling/v2beta2") {
            Some(HpaVersion::V2beta2)
        } else {
            None
        },
        endpoint_slices: if has("discovery.k8s.io/v1") {
            Some(EndpointSliceVersion::V1)
        } else if has("discovery.k8s.io/v1beta1") {
            Some(EndpointSliceVersion::V1beta1)
        } else {
            None
        },
        leases: has("coordination.k8s.io/v1"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn outside_a_pod_kubeconfig_then_the_home_file() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("config");
        let missing = dir.path().join("missing");
        std::fs::write(&home, "apiVersion: v1\nkind: Config\n").unwrap();
        let env = |v: &str| Some(OsString::from(v));
        let cases: &[(Option<OsString>, &Path, Inferred)] = &[
            (env("/a:/b"), &home, Inferred::Env("/a:/b".into())),
            // A KUBECONFIG naming a missing file is still what the user asked for.
            (
                env("/nonexistent"),
                &home,
                Inferred::Env("/nonexistent".into()),
            ),
            (env(""), &home, Inferred::Home(home.clone())),
            (env(":"), &home, Inferred::Home(home.clone())),
            (None, &home, Inferred::Home(home.clone())),
            (None, &missing, Inferred::Nothing),
        ];
        for (kubeconfig, home_config, want) in cases {
            assert_eq!(
                &infer_source(kubeconfig.clone(), Some(home_config)),
                want,
                "{kubeconfig:?} {home_config:?}"
            );
        }
        assert_eq!(infer_source(None, None), Inferred::Nothing);
    }

    #[test]
    fn a_kubeconfig_list_skips_missing_files_as_client_go_does() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::write(
            &real,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: \
             https://10.0.0.1:6443\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\n\
             current-context: c\nusers:\n- name: u\n  user: {}\n",
        )
        .unwrap();
        let missing = dir.path().join("missing");
        let list = std::env::join_paths([&missing, &real]).unwrap();
        let (kubeconfig, first) = read_kubeconfig_list(&list).unwrap();
        assert_eq!(first, real);
        assert_eq!(kubeconfig.current_context.as_deref(), Some("c"));
        let only_missing = std::env::join_paths([&missing]).unwrap();
        let err = read_kubeconfig_list(&only_missing).unwrap_err();
        let line = crate::error::chain_line(&err);
        assert!(
            line.contains(&missing.display().to_string()) && line.contains("KUBECONFIG"),
            "{line}"
        );
    }

    #[test]
    fn what_a_failed_discovery_means() {
        let api = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            }))
        };
        let cases = [
            (api(401), DiscoveryFailure::Unauthorized(401)),
            (api(403), DiscoveryFailure::Unauthorized(403)),
            (api(404), DiscoveryFailure::Unexpected(404)),
            (api(400), DiscoveryFailure::Unexpected(400)),
            (api(429), DiscoveryFailure::Retry),
            (api(500), DiscoveryFailure::Retry),
            (api(503), DiscoveryFailure::Retry),
            (
                kube::Error::Service(Box::new(std::io::Error::other("refused"))),
                DiscoveryFailure::Retry,
            ),
            (
                kube::Error::Service(Box::new(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
                ))),
                DiscoveryFailure::Tls,
            ),
            (
                kube::Error::SerdeError(serde_json::from_str::<u8>("<html>").unwrap_err()),
                DiscoveryFailure::Unexpected(200),
            ),
        ];
        for (error, want) in cases {
            assert_eq!(classify(&error), want, "{error}");
        }
    }

    /// A plain-HTTP server on 127.0.0.1 that answers each connection with the next of
    /// `answers` (the last one repeated), counting connections.
    async fn http_server(answers: Vec<String>) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let served = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&served);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst);
                let answer = answers[n.min(answers.len() - 1)].clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        (url, served)
    }

    fn answer(status: &str, content_type: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn client_for(url: &str) -> kube::Client {
        let config = kube::Config::new(url.parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    const GROUPS: &str = r#"{"kind":"APIGroupList","apiVersion":"v1","groups":[{"name":"autoscaling","versions":[{"groupVersion":"autoscaling/v2","version":"v2"}],"preferredVersion":{"groupVersion":"autoscaling/v2","version":"v2"}}]}"#;

    #[tokio::test]
    async fn an_unreachable_api_server_is_named_with_its_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let err = discover_patiently(&client_for(&url), &url, "KUBECONFIG=/k", Duration::ZERO)
            .await
            .unwrap_err();
        assert!(matches!(err, K8sError::Unreachable { .. }), "{err:?}");
        let line = crate::error::chain_line(&err);
        assert!(
            line.contains(&url) && line.contains("KUBECONFIG=/k"),
            "{line}"
        );
        assert!(line.contains("check that it is running"), "{line}");
    }

    #[tokio::test]
    async fn a_server_that_is_no_api_server_is_named_as_such() {
        let (url, _) =
            http_server(vec![answer("404 Not Found", "text/plain", "no such page")]).await;
        let err = discover_patiently(&client_for(&url), &url, "kubeconfig /k", Duration::ZERO)
            .await
            .unwrap_err();
        let line = crate::error::chain_line(&err);
        assert!(
            matches!(err, K8sError::NotAnApiServer { code: 404, .. }),
            "{line}"
        );
        assert!(line.contains(&url) && line.contains("HTTP 404"), "{line}");
        // No library debug dump in the line.
        assert!(
            !line.contains("Status {") && !line.contains("ApiError"),
            "{line}"
        );
    }

    #[test]
    fn a_quoted_body_is_one_short_line() {
        let page = format!("<html>\n<body>{}</body>\n</html>", "x".repeat(500));
        let error = kube::Error::Api(Box::new(kube::core::Status {
            code: 404,
            message: page,
            ..Default::default()
        }));
        let quoted = api_message(&error).to_string();
        assert!(!quoted.contains('\n'), "{quoted}");
        assert_eq!(quoted.chars().count(), MAX_QUOTED + 1, "{quoted}");
    }

    #[tokio::test]
    async fn refused_credentials_are_named_as_such() {
        let status = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;
        let (url, _) =
            http_server(vec![answer("401 Unauthorized", "application/json", status)]).await;
        let err = discover_patiently(&client_for(&url), &url, "kubeconfig /k", Duration::ZERO)
            .await
            .unwrap_err();
        assert!(
            matches!(err, K8sError::Unauthorized { code: 401, .. }),
            "{err:?}"
        );
        assert!(crate::error::chain_line(&err).contains("refused our credentials"));
    }

    #[tokio::test]
    async fn a_starting_api_server_is_retried_until_it_answers() {
        // 500, not 503: kube's client retries 503 itself.
        let unavailable = answer("500 Internal Server Error", "text/plain", "etcd not ready");
        let ok = answer("200 OK", "application/json", GROUPS);
        let (url, served) = http_server(vec![unavailable.clone(), unavailable, ok]).await;
        let capabilities = discover_patiently(
            &client_for(&url),
            &url,
            "kubeconfig /k",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        assert_eq!(capabilities.hpa, Some(HpaVersion::V2));
        assert_eq!(served.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn capabilities_prefer_the_newest_version() {
        let gv = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let k120 = capabilities_from(&gv(&[
            "autoscaling/v1",
            "autoscaling/v2beta1",
            "autoscaling/v2beta2",
            "discovery.k8s.io/v1beta1",
            "coordination.k8s.io/v1",
        ]));
        assert_eq!(
            k120,
            ApiCapabilities {
                hpa: Some(HpaVersion::V2beta2),
                endpoint_slices: Some(EndpointSliceVersion::V1beta1),
                leases: true
            }
        );
        let k137 = capabilities_from(&gv(&[
            "autoscaling/v1",
            "autoscaling/v2",
            "discovery.k8s.io/v1",
            "coordination.k8s.io/v1",
        ]));
        assert_eq!(k137.hpa, Some(HpaVersion::V2));
        assert_eq!(k137.endpoint_slices, Some(EndpointSliceVersion::V1));
        let bare = capabilities_from(&gv(&["autoscaling/v1"]));
        assert_eq!(
            bare,
            ApiCapabilities {
                hpa: None,
                endpoint_slices: None,
                leases: false
            }
        );
    }

    #[test]
    fn an_explicit_kubeconfig_wins_then_the_pod_then_inference() {
        let path = Path::new("/etc/kube/config");
        for (in_pod, configured, want) in [
            (true, Some(path), ConfigSource::Kubeconfig(path)),
            (false, Some(path), ConfigSource::Kubeconfig(path)),
            (true, None, ConfigSource::InCluster),
            (false, None, ConfigSource::Infer),
        ] {
            assert_eq!(
                config_source(in_pod, configured),
                want,
                "{in_pod} {configured:?}"
            );
        }
    }

    #[test]
    fn resource_namespace_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let sa = dir.path().join("namespace");
        assert_eq!(resource_namespace_from(None, &sa), "default");
        std::fs::write(&sa, "datadog\n").unwrap();
        assert_eq!(resource_namespace_from(None, &sa), "datadog");
        assert_eq!(resource_namespace_from(Some("custom"), &sa), "custom");
        assert_eq!(resource_namespace_from(Some(""), &sa), "datadog");
    }
}
