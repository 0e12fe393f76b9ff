//! A client that calls the DCA the way the Go node agent does (`pkg/util/clusteragent`,
//! dca-contract §1.5), so e2e tests see our DCA through the eyes of its real consumers.
//!
//! What is copied on purpose:
//! - one shared header set on every request: `Authorization: Bearer <token>` and `X-Real-Ip`
//!   (the `clc_runner_host`, empty on ordinary node agents), no explicit `Content-Type`;
//! - TLS without certificate verification (Go's `InsecureSkipVerify`), HTTP/1.1 only (no ALPN),
//!   Go's default `User-Agent` and `Accept-Encoding: gzip`;
//! - the transport timeouts (dial 1 s + TLS handshake 5 s, response headers 3 s, whole request
//!   10 s, idle connections 60 s, TCP keepalive 20 s);
//! - the paths, the JSON shapes (capitalised keys where Go has no json tags) and the version gates;
//! - any status other than 200 is an error carrying the status (Go's `RemoteServiceError`).
//!
//! JSON is decoded with exact key case: Go's decoder would also accept other casings, but a DCA
//! that depended on that would break other consumers, so the e2e tests should see it.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The header through which cluster-check runners tell the DCA their IP.
pub const REAL_IP_HEADER: &str = "X-Real-Ip";
/// What Go's `net/http` sends when the caller sets no User-Agent, as the node agent does.
pub const GO_USER_AGENT: &str = "Go-http-client/1.1";

/// The Go agent's `http.Transport`/`http.Client` timeouts for the DCA client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub dial: Duration,
    pub tls_handshake: Duration,
    pub response_header: Duration,
    pub total: Duration,
    pub idle: Duration,
    pub tcp_keepalive: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            dial: Duration::from_secs(1),
            tls_handshake: Duration::from_secs(5),
            response_header: Duration::from_secs(3),
            total: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            tcp_keepalive: Duration::from_secs(20),
        }
    }
}

/// Errors of the node-agent client.
#[derive(Debug, thiserror::Error)]
pub enum NodeAgentError {
    #[error("invalid cluster agent endpoint {url:?}: {reason}")]
    Endpoint { url: String, reason: String },
    #[error("invalid header value for {name}")]
    Header { name: &'static str },
    #[error("building the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
    #[error("building the TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
    /// The request did not complete (connection, TLS, timeout, body read).
    #[error("{url} is unavailable: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The DCA answered something other than 200 (Go: `RemoteServiceError(url, resp.Status)`).
    #[error("{url} is unavailable: {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("failed to decode the gzip response from {url}: {source}")]
    Gzip {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to unmarshal JSON from URL: {path}, err: {source}, raw message: {body:?}")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
        body: String,
    },
    /// The bulk pod-tags answer did not contain the node (Go's `GetPodsMetadataForNode`).
    #[error("cluster agent didn't return pods metadata for node: {0}")]
    MissingNode(String),
    /// `/version` answered 0.0.0, which the Go agent treats as "not initialised".
    #[error("the cluster agent reported version 0.0.0")]
    UnsetVersion,
}

impl NodeAgentError {
    /// The HTTP status, when the DCA answered with a non-200 one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            NodeAgentError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The response body of a non-200 answer.
    pub fn body(&self) -> Option<&str> {
        match self {
            NodeAgentError::Status { body, .. } => Some(body),
            _ => None,
        }
    }
}

/// `pkg/version.Version`: no json tags in Go, hence the capitalised keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DcaVersion {
    pub major: i64,
    pub minor: i64,
    pub patch: i64,
    pub pre: String,
    pub meta: String,
    pub commit: String,
}

impl DcaVersion {
    /// Whether the agent uses the bulk `GET /api/v1/tags/pod/{node}`. The Go code tests
    /// `Major >= 1 && Minor >= 3` literally (so 7.2 would not qualify); we copy that.
    pub fn uses_bulk_pod_tags(&self) -> bool {
        self.major >= 1 && self.minor >= 3
    }

    /// Go's `SupportsNamespaceMetadataCollection`: `Major >= 7 && Minor >= 55`, literally.
    pub fn supports_namespace_metadata(&self) -> bool {
        self.major >= 7 && self.minor >= 55
    }

    /// Older DCAs answer followers with 302s to the leader, and the agent then uses its
    /// redirect-following leader client for cluster checks.
    pub fn needs_leader_client(&self) -> bool {
        self.major == 1 && self.minor < 21
    }

    /// `0.0.0` is what the agent holds before the first successful `/version`.
    pub fn is_unset(&self) -> bool {
        self.major == 0 && self.minor == 0 && self.patch == 0
    }
}

/// Service names of each pod, per namespace: `{ns: {pod: {svc: {}}}}`. Go serialises its
/// `sets.Set[string]` as an object with empty-struct values.
pub type NamespacesPodsServices = BTreeMap<String, BTreeMap<String, BTreeMap<String, Empty>>>;

/// The `{}` value of a Go `sets.Set` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// `apiv1.MetadataResponseBundle`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataBundle {
    #[serde(default)]
    pub services: NamespacesPodsServices,
}

/// `apiv1.MetadataResponse`, the answer of `/api/v1/tags/pod/{node}` and `/api/v1/tags/pod`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataResponse {
    #[serde(rename = "Nodes", default)]
    pub nodes: BTreeMap<String, MetadataBundle>,
    #[serde(rename = "Warnings", default)]
    pub warnings: Vec<String>,
    #[serde(rename = "Errors", default)]
    pub errors: String,
}

/// `clusteragent.Metadata`, the answer of `/api/v1/metadata/namespace/{ns}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NamespaceMetadata {
    pub name: String,
    pub namespace: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: BTreeMap<String, String>,
}

/// `types.NodeStatus`, posted to `/api/v1/clusterchecks/status/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub last_change: i64,
}

/// `types.StatusResponse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    pub isuptodate: bool,
}

/// `types.ConfigResponse`; each config is an `integration.Config` kept as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigResponse {
    #[serde(default, deserialize_with = "null_as_default")]
    pub configs: Vec<serde_json::Value>,
    #[serde(default)]
    pub last_change: i64,
}

/// Go decodes `null` into a nil map or slice, which behaves as empty.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Builder for [`NodeAgentClient`].
#[derive(Debug, Clone)]
pub struct NodeAgentClientBuilder {
    endpoint: String,
    token: String,
    real_ip: String,
    timeouts: Timeouts,
}

impl NodeAgentClientBuilder {
    /// The `clc_runner_host` a cluster-check runner sends in `X-Real-Ip` (default empty).
    pub fn real_ip(mut self, ip: &str) -> Self {
        self.real_ip = ip.to_owned();
        self
    }

    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    pub fn build(self) -> Result<NodeAgentClient, NodeAgentError> {
        let endpoint = normalize_endpoint(&self.endpoint)?;

        let mut headers = HeaderMap::new();
        let bearer = HeaderValue::from_str(&format!("Bearer {}", self.token)).map_err(|_| {
            NodeAgentError::Header {
                name: "Authorization",
            }
        })?;
        headers.insert(AUTHORIZATION, bearer);
        let real_ip = HeaderValue::from_str(&self.real_ip).map_err(|_| NodeAgentError::Header {
            name: REAL_IP_HEADER,
        })?;
        headers.insert(HeaderName::from_static("x-real-ip"), real_ip);
        headers.insert(USER_AGENT, HeaderValue::from_static(GO_USER_AGENT));
        // Go's transport asks for gzip and decodes it transparently; we do the same by hand.
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip"));

        let t = self.timeouts;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(insecure_tls_config()?)
            .http1_only()
            // Go writes canonical header names (`X-Real-Ip`); hyper would lower-case them.
            .http1_title_case_headers()
            // reqwest's connect timeout spans TCP connect and TLS handshake together.
            .connect_timeout(t.dial + t.tls_handshake)
            // No response-header timeout in reqwest: a per-read timeout trips on the same
            // stalled server, as Go's `ResponseHeaderTimeout` does.
            .read_timeout(t.response_header)
            .timeout(t.total)
            .pool_idle_timeout(t.idle)
            .pool_max_idle_per_host(1)
            .tcp_keepalive(t.tcp_keepalive)
            // Go's `ProxyFromEnvironment` never proxies loopback, where every e2e DCA lives.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::limited(10))
            .build()
            .map_err(NodeAgentError::Build)?;
        Ok(NodeAgentClient {
            endpoint,
            client,
            headers,
        })
    }
}

/// Go's `cluster_agent.url` handling: `https://` is added when there is no scheme, `http://` is
/// refused.
fn normalize_endpoint(url: &str) -> Result<String, NodeAgentError> {
    let url = url.trim().trim_end_matches('/');
    let with_scheme = if url.contains("://") {
        url.to_owned()
    } else {
        format!("https://{url}")
    };
    if !with_scheme.starts_with("https://") {
        return Err(NodeAgentError::Endpoint {
            url: url.to_owned(),
            reason: "the cluster agent is only reachable over https".to_owned(),
        });
    }
    if with_scheme.len() == "https://".len() {
        return Err(NodeAgentError::Endpoint {
            url: url.to_owned(),
            reason: "no host".to_owned(),
        });
    }
    Ok(with_scheme)
}

/// A rustls client config that, like Go's `InsecureSkipVerify`, accepts any server certificate
/// but still checks the handshake signature against it. No ALPN: Go offers none when HTTP/2 is
/// not forced on a custom TLS config.
fn insecure_tls_config() -> Result<rustls::ClientConfig, NodeAgentError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = datadog_cluster_agent::tls::accept_any_server_certificate(provider.clone());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(NodeAgentError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(config)
}

/// Calls the DCA like the Go node agent.
#[derive(Debug, Clone)]
pub struct NodeAgentClient {
    endpoint: String,
    client: reqwest::Client,
    headers: HeaderMap,
}

impl NodeAgentClient {
    /// `endpoint` is `https://host:port` (a bare `host:port` gets `https://`), `token` the DCA
    /// auth token.
    pub fn builder(endpoint: &str, token: &str) -> NodeAgentClientBuilder {
        NodeAgentClientBuilder {
            endpoint: endpoint.to_owned(),
            token: token.to_owned(),
            real_ip: String::new(),
            timeouts: Timeouts::default(),
        }
    }

    /// A client with the defaults of an ordinary node agent.
    pub fn new(endpoint: &str, token: &str) -> Result<NodeAgentClient, NodeAgentError> {
        NodeAgentClient::builder(endpoint, token).build()
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `GET /version`.
    pub async fn version(&self) -> Result<DcaVersion, NodeAgentError> {
        self.get_json("version").await
    }

    /// The Go agent's init: `GET /version`, after which the version gates decide which calls
    /// the session makes. A 0.0.0 answer is refused, as Go refuses to use an uninitialised
    /// client.
    pub async fn handshake(self) -> Result<NodeAgentSession, NodeAgentError> {
        let version = self.version().await?;
        if version.is_unset() {
            return Err(NodeAgentError::UnsetVersion);
        }
        Ok(NodeAgentSession {
            client: self,
            version,
        })
    }

    /// `GET /api/v1/tags/pod/{node}`, the whole answer (nodes, warnings, errors).
    pub async fn pod_tags_for_node(&self, node: &str) -> Result<MetadataResponse, NodeAgentError> {
        self.get_json(&format!("api/v1/tags/pod/{node}")).await
    }

    /// Go's `GetPodsMetadataForNode`: the node's services, or an error when the answer (a 200 with
    /// only `Warnings`, for an unknown node) does not contain it.
    pub async fn pods_metadata_for_node(
        &self,
        node: &str,
    ) -> Result<NamespacesPodsServices, NodeAgentError> {
        let mut response = self.pod_tags_for_node(node).await?;
        response
            .nodes
            .remove(node)
            .map(|bundle| bundle.services)
            .ok_or_else(|| NodeAgentError::MissingNode(node.to_owned()))
    }

    /// `GET /api/v1/tags/pod/{node}/{ns}/{pod}`: `kube_service:<svc>` strings; `None` when the DCA
    /// answers `null` (nothing cached for the pod).
    pub async fn pod_tags(
        &self,
        node: &str,
        namespace: &str,
        pod: &str,
    ) -> Result<Option<Vec<String>>, NodeAgentError> {
        self.get_json(&format!("api/v1/tags/pod/{node}/{namespace}/{pod}"))
            .await
    }

    /// `GET /api/v1/tags/node/{node}` (`null` reads as empty, like Go's nil map).
    pub async fn node_labels(
        &self,
        node: &str,
    ) -> Result<BTreeMap<String, String>, NodeAgentError> {
        self.get_map(&format!("api/v1/tags/node/{node}")).await
    }

    /// `GET /api/v1/annotations/node/{node}` (`null` reads as empty).
    pub async fn node_annotations(
        &self,
        node: &str,
    ) -> Result<BTreeMap<String, String>, NodeAgentError> {
        self.get_map(&format!("api/v1/annotations/node/{node}"))
            .await
    }

    /// `GET /api/v1/tags/namespace/{ns}` (`null` reads as empty).
    pub async fn namespace_labels(
        &self,
        namespace: &str,
    ) -> Result<BTreeMap<String, String>, NodeAgentError> {
        self.get_map(&format!("api/v1/tags/namespace/{namespace}"))
            .await
    }

    /// `GET /api/v1/metadata/namespace/{ns}` (DCA >= 7.55).
    pub async fn namespace_metadata(
        &self,
        namespace: &str,
    ) -> Result<NamespaceMetadata, NodeAgentError> {
        self.get_json(&format!("api/v1/metadata/namespace/{namespace}"))
            .await
    }

    /// `GET /api/v1/cluster/id`: a JSON string.
    pub async fn cluster_id(&self) -> Result<String, NodeAgentError> {
        self.get_json("api/v1/cluster/id").await
    }

    /// `POST /api/v1/clusterchecks/status/{identifier}` with `{"last_change": N}` (`-1` is the
    /// extra heartbeat of a runner close to expiry).
    pub async fn post_cluster_check_status(
        &self,
        identifier: &str,
        last_change: i64,
    ) -> Result<StatusResponse, NodeAgentError> {
        // Written by hand because it cannot fail: `types.NodeStatus` is one int64 field.
        let body = format!("{{\"last_change\":{last_change}}}").into_bytes();
        self.request_json(
            Method::POST,
            &format!("api/v1/clusterchecks/status/{identifier}"),
            Some(body),
        )
        .await
    }

    /// `GET /api/v1/clusterchecks/configs/{identifier}`.
    pub async fn cluster_check_configs(
        &self,
        identifier: &str,
    ) -> Result<ConfigResponse, NodeAgentError> {
        self.get_json(&format!("api/v1/clusterchecks/configs/{identifier}"))
            .await
    }

    /// `GET /api/v1/endpointschecks/configs/{node}`.
    pub async fn endpoints_check_configs(
        &self,
        node: &str,
    ) -> Result<ConfigResponse, NodeAgentError> {
        self.get_json(&format!("api/v1/endpointschecks/configs/{node}"))
            .await
    }

    /// A GET of any path with the agent's headers, returning the raw 200 body (for paths the Go
    /// agent does not call, e.g. to check that they are refused).
    pub async fn get_raw(&self, path: &str) -> Result<Bytes, NodeAgentError> {
        self.request(Method::GET, path, None).await
    }

    async fn get_map(&self, path: &str) -> Result<BTreeMap<String, String>, NodeAgentError> {
        let map: Option<BTreeMap<String, String>> = self.get_json(path).await?;
        Ok(map.unwrap_or_default())
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, NodeAgentError> {
        self.request_json(Method::GET, path, None).await
    }

    async fn request_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, NodeAgentError> {
        let bytes = self.request(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|source| NodeAgentError::Decode {
            path: path.to_owned(),
            source,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    /// The Go agent's `doQuery`: shared headers, body always read, non-200 is an error.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, NodeAgentError> {
        let url = format!("{}/{}", self.endpoint, path.trim_start_matches('/'));
        let mut request = self
            .client
            .request(method, &url)
            .headers(self.headers.clone());
        if let Some(body) = body {
            request = request.body(body);
        }
        let transport = |source| NodeAgentError::Transport {
            url: url.clone(),
            source,
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let gzipped = response
            .headers()
            .get(CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
        let raw = response.bytes().await.map_err(transport)?;
        let body = if gzipped {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .map_err(|source| NodeAgentError::Gzip {
                    url: url.clone(),
                    source,
                })?;
            Bytes::from(out)
        } else {
            raw
        };
        if status != StatusCode::OK {
            return Err(NodeAgentError::Status {
                url,
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(body)
    }
}

/// A client after its `/version` handshake: it makes the calls the Go node agent makes for the
/// version the DCA reported (dca-contract §1.5, version gates), so an e2e test sees which
/// routes a real agent would hit against our DCA.
#[derive(Debug)]
pub struct NodeAgentSession {
    client: NodeAgentClient,
    version: DcaVersion,
}

/// A pod as the kube_metadata collector knows it: namespace and name.
pub type PodRef<'a> = (&'a str, &'a str);

impl NodeAgentSession {
    pub fn version(&self) -> &DcaVersion {
        &self.version
    }

    /// The calls that need no gate.
    pub fn client(&self) -> &NodeAgentClient {
        &self.client
    }

    /// The service names of `pods` on `node`, as the kube_metadata collector gets them: one bulk
    /// `GET /api/v1/tags/pod/{node}` when the DCA is >= 1.3, else one
    /// `GET /api/v1/tags/pod/{node}/{ns}/{pod}` per pod, whose `kube_service:x` strings are split
    /// on `:` like the collector does. Pods the DCA knows nothing of map to no service.
    pub async fn pod_services(
        &self,
        node: &str,
        pods: &[PodRef<'_>],
    ) -> Result<BTreeMap<(String, String), Vec<String>>, NodeAgentError> {
        let mut out = BTreeMap::new();
        if self.version.uses_bulk_pod_tags() {
            let bulk = self.client.pods_metadata_for_node(node).await?;
            for &(namespace, pod) in pods {
                let services = bulk
                    .get(namespace)
                    .and_then(|pods| pods.get(pod))
                    .map(|set| set.keys().cloned().collect())
                    .unwrap_or_default();
                out.insert((namespace.to_owned(), pod.to_owned()), services);
            }
        } else {
            for &(namespace, pod) in pods {
                let tags = self.client.pod_tags(node, namespace, pod).await?;
                let services = tags
                    .unwrap_or_default()
                    .iter()
                    .map(|tag| service_of_tag(tag).to_owned())
                    .collect();
                out.insert((namespace.to_owned(), pod.to_owned()), services);
            }
        }
        Ok(out)
    }

    /// A namespace's metadata: `GET /api/v1/metadata/namespace/{ns}` (labels and annotations)
    /// when the DCA is >= 7.55, else `GET /api/v1/tags/namespace/{ns}` (labels only).
    pub async fn namespace(&self, namespace: &str) -> Result<NamespaceMetadata, NodeAgentError> {
        if self.version.supports_namespace_metadata() {
            self.client.namespace_metadata(namespace).await
        } else {
            Ok(NamespaceMetadata {
                name: namespace.to_owned(),
                namespace: String::new(),
                annotations: BTreeMap::new(),
                labels: self.client.namespace_labels(namespace).await?,
            })
        }
    }
}

/// `kube_service:x` → `x`; a plain name stays as it is (the collector accepts both).
fn service_of_tag(tag: &str) -> &str {
    tag.split_once(':').map_or(tag, |(_, service)| service)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: i64, minor: i64) -> DcaVersion {
        DcaVersion {
            major,
            minor,
            ..DcaVersion::default()
        }
    }

    #[test]
    fn service_names_are_split_from_their_tags() {
        for (tag, service) in [
            ("kube_service:svc1", "svc1"),
            ("svc1", "svc1"),
            ("kube_service:", ""),
            ("kube_service:a:b", "a:b"),
        ] {
            assert_eq!(service_of_tag(tag), service, "{tag}");
        }
    }

    #[test]
    fn version_gates_follow_the_go_code_literally() {
        assert!(v(1, 3).uses_bulk_pod_tags());
        assert!(!v(1, 2).uses_bulk_pod_tags());
        assert!(v(7, 62).uses_bulk_pod_tags());
        // The literal `Minor >= 3` check: a 7.2 DCA gets per-pod calls.
        assert!(!v(7, 2).uses_bulk_pod_tags());
        assert!(v(7, 55).supports_namespace_metadata());
        assert!(!v(7, 54).supports_namespace_metadata());
        assert!(!v(8, 0).supports_namespace_metadata());
        assert!(v(1, 20).needs_leader_client());
        assert!(!v(7, 62).needs_leader_client());
        assert!(DcaVersion::default().is_unset());
    }

    #[test]
    fn version_json_has_capitalised_keys() {
        let got: DcaVersion = serde_json::from_str(
            r#"{"Major":7,"Minor":62,"Patch":0,"Pre":"","Meta":"","Commit":"abc123"}"#,
        )
        .expect("version");
        assert_eq!(got.major, 7);
        assert_eq!(got.commit, "abc123");
        assert!(serde_json::from_str::<DcaVersion>(r#"{"major":7}"#).is_err());
    }

    #[test]
    fn metadata_response_shapes() {
        let got: MetadataResponse = serde_json::from_str(
            r#"{"Nodes":{"node1":{"services":{"default":{"pod-a":{"svc1":{},"svc2":{}}}}}}}"#,
        )
        .expect("bulk");
        let pods = &got.nodes["node1"].services["default"]["pod-a"];
        assert_eq!(pods.keys().collect::<Vec<_>>(), ["svc1", "svc2"]);
        let warn: MetadataResponse =
            serde_json::from_str(r#"{"Warnings":["Node node1 could not be added"]}"#)
                .expect("warn");
        assert!(warn.nodes.is_empty());
        assert_eq!(warn.warnings.len(), 1);
        let ns: NamespaceMetadata = serde_json::from_str(
            r#"{"Name":"default","Namespace":"","Annotations":null,"Labels":{"team":"a"}}"#,
        )
        .expect("ns");
        assert!(ns.annotations.is_empty());
        assert_eq!(ns.labels["team"], "a");
    }

    #[test]
    fn endpoint_rules() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:5005").expect("bare"),
            "https://127.0.0.1:5005"
        );
        assert_eq!(
            normalize_endpoint("https://dca:5005/").expect("slash"),
            "https://dca:5005"
        );
        assert!(normalize_endpoint("http://dca:5005").is_err());
        assert!(normalize_endpoint("").is_err());
    }
}
