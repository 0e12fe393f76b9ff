//! A black-box conformance suite for `external.metrics.k8s.io/v1beta1` servers, from the
//! external metrics contract (§1, §2, §3, §9 of the project's design notes): discovery
//! documents, Status codes and bodies, label-selector semantics, Quantity formatting, the
//! request-header authentication matrix and the aggregator's availability check.
//!
//! The suite talks HTTPS to a [`Target`] exactly as kube-apiserver's aggregator does: it
//! verifies the serving certificate for the Service name and presents a front-proxy client
//! certificate with `X-Remote-*` headers. Parts of it need more than the URL — values the
//! suite can set ([`Fixtures`]), an admin client of the cluster the server delegates to
//! (RBAC fixtures), a view of the SubjectAccessReviews the server sends ([`ReviewLog`]),
//! extra certificates. Checks that lack what they need say so in their [`Report`]; they
//! never pass silently.
//!
//! Every check is a function taking the target, so a test file can run them one by one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use http::{HeaderMap, Method};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

use crate::controlplane::{CertAuthority, IssuedCert, eventually};

pub const GROUP: &str = "external.metrics.k8s.io";
pub const GROUP_VERSION_PATH: &str = "/apis/external.metrics.k8s.io/v1beta1";
/// The aggregator's Accept for aggregated discovery, plain JSON as fallback.
pub const DISCOVERY_V2_ACCEPT: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
pub const DISCOVERY_V2_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
/// What the HPA controller sends (kube-controller-manager's default content type).
pub const HPA_ACCEPT: &str = "application/vnd.kubernetes.protobuf, */*";

/// The user bound (by the suite's RBAC) to list every external metric.
pub const READER_USER: &str = "conformance:reader";
/// The group bound to list every external metric.
pub const READER_GROUP: &str = "conformance:group-b";
/// A group nothing is bound to.
pub const OTHER_GROUP: &str = "conformance:group-a";
const READER_ROLE: &str = "conformance:external-metrics-reader";

/// The contract's §1.2 `APIResourceList`, as custom-metrics-apiserver serves it.
pub fn golden_api_resource_list() -> Value {
    json!({"kind":"APIResourceList","apiVersion":"v1","groupVersion":"external.metrics.k8s.io/v1beta1",
           "resources":[{"name":"externalmetrics","singularName":"","namespaced":true,
                         "kind":"ExternalMetricValueList","verbs":["get"]}]})
}

/// The contract's §1.2 `APIGroup`.
pub fn golden_api_group() -> Value {
    let version = json!({"groupVersion":"external.metrics.k8s.io/v1beta1","version":"v1beta1"});
    json!({"kind":"APIGroup","apiVersion":"v1","name":GROUP,"versions":[version],"preferredVersion":version})
}

/// The contract's §1.2 item of the aggregated discovery document.
pub fn golden_discovery_v2_item() -> Value {
    json!({
        "metadata": {"name": GROUP},
        "versions": [{
            "version": "v1beta1",
            "resources": [{
                "resource": "externalmetrics",
                "responseKind": {"group": GROUP, "version": "v1beta1", "kind": "ExternalMetricValueList"},
                "scope": "Namespaced",
                "singularResource": "externalmetric",
                "verbs": ["get"],
            }],
            "freshness": "Current",
        }],
    })
}

// ---------------------------------------------------------------------------------------------
// Target description
// ---------------------------------------------------------------------------------------------

/// Sets metric values in the server's source.
pub trait Fixtures: Send + Sync {
    /// Sets series `metric{labels}` to `value` (timestamp: now).
    fn set(&self, metric: &str, labels: &[(&str, &str)], value: f64);
}

/// The SubjectAccessReview request bodies the server has sent so far.
pub trait ReviewLog: Send + Sync {
    fn subject_access_reviews(&self) -> Vec<Value>;
}

/// Where a server listens and how to verify it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `https://host:port`: where to connect.
    pub url: String,
    /// The name the certificate is verified for (and sent as SNI), as the aggregator uses
    /// `<service>.<namespace>.svc`.
    pub server_name: String,
    /// CA bundle that signed the serving certificate (the APIService's `caBundle`).
    pub ca_pem: String,
}

/// Wire protocol for a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "HTTP {} body is not JSON: {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }

    fn describe(&self) -> String {
        format!(
            "HTTP {} {:?}",
            self.status,
            String::from_utf8_lossy(&self.body)
        )
    }
}

impl Endpoint {
    /// An HTTPS client that trusts only `ca_pem`, verifies `server_name`, presents `cert`
    /// (if any) and gives each request `timeout`.
    pub async fn client(
        &self,
        cert: Option<&IssuedCert>,
        protocol: Protocol,
        timeout: Duration,
    ) -> Result<reqwest::Client> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.context("server CA bundle")?)?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
        let mut tls = match cert {
            Some(issued) => builder.with_client_auth_cert(
                CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()?,
                PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())?,
            )?,
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = match protocol {
            Protocol::Http1 => vec![b"http/1.1".to_vec()],
            Protocol::Http2 => vec![b"h2".to_vec()],
        };
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .no_proxy()
            .timeout(timeout);
        if protocol == Protocol::Http1 {
            builder = builder.http1_only();
        }
        let addr = self.socket_addr().await?;
        if self.server_name.parse::<std::net::IpAddr>().is_err() {
            builder = builder.resolve(&self.server_name, addr);
        }
        builder.build().context("building the HTTPS client")
    }

    async fn socket_addr(&self) -> Result<SocketAddr> {
        let url = reqwest::Url::parse(&self.url).with_context(|| format!("URL {}", self.url))?;
        let host = url
            .host_str()
            .ok_or_else(|| anyhow!("{} has no host", self.url))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(443);
        tokio::net::lookup_host((host.as_str(), port))
            .await?
            .next()
            .ok_or_else(|| anyhow!("{host} does not resolve"))
    }

    /// The URL of `path_and_query` under the verified name.
    pub async fn url_for(&self, path_and_query: &str) -> Result<String> {
        let port = self.socket_addr().await?.port();
        let host = if self.server_name.contains(':') {
            format!("[{}]", self.server_name)
        } else {
            self.server_name.clone()
        };
        Ok(format!("https://{host}:{port}{path_and_query}"))
    }

    /// Sends one request with `client`.
    pub async fn send(
        &self,
        client: &reqwest::Client,
        method: Method,
        path_and_query: &str,
        headers: &[(String, String)],
    ) -> Result<Answer> {
        let url = self.url_for(path_and_query).await?;
        let mut request = client.request(method, &url);
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = request.send().await?;
        Ok(Answer {
            status: response.status().as_u16(),
            version: response.version(),
            headers: response.headers().clone(),
            body: response.bytes().await?,
        })
    }

    /// One HTTP/1.1 GET on a fresh connection.
    pub async fn get(
        &self,
        cert: Option<&IssuedCert>,
        path_and_query: &str,
        headers: &[(String, String)],
    ) -> Result<Answer> {
        self.call(cert, Method::GET, path_and_query, headers).await
    }

    /// One HTTP/1.1 request on a fresh connection.
    pub async fn call(
        &self,
        cert: Option<&IssuedCert>,
        method: Method,
        path_and_query: &str,
        headers: &[(String, String)],
    ) -> Result<Answer> {
        let client = self
            .client(cert, Protocol::Http1, Duration::from_secs(30))
            .await?;
        self.send(&client, method, path_and_query, headers).await
    }
}

/// What the suite is pointed at.
pub struct Target {
    pub endpoint: Endpoint,
    /// A front-proxy client certificate with an allowed CN (the aggregator's).
    pub front_proxy: IssuedCert,
    /// A certificate of a `requestheader-client-ca-file` CA whose CN is *not* allowed.
    pub disallowed_front_proxy: Option<IssuedCert>,
    /// A `client-ca-file` certificate with CN `conformance:cert-user` and
    /// O `conformance:group-b`.
    pub client_ca_user: Option<IssuedCert>,
    /// Another listener of the same server build whose `requestheader-allowed-names` is
    /// empty (kube-apiserver does not let the cluster ConfigMap keep that).
    pub empty_allowed_names: Option<Endpoint>,
    /// Admin client of the cluster the server delegates to.
    pub cluster: Option<kube::Client>,
    pub fixtures: Option<Arc<dyn Fixtures>>,
    pub reviews: Option<Arc<dyn ReviewLog>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("endpoint", &self.endpoint)
            .field("cluster", &self.cluster.is_some())
            .field("fixtures", &self.fixtures.is_some())
            .field("reviews", &self.reviews.is_some())
            .field("empty_allowed_names", &self.empty_allowed_names)
            .finish_non_exhaustive()
    }
}

/// What a check could not verify for lack of target capabilities.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub not_verified: Vec<String>,
}

impl Report {
    fn skip(&mut self, what: &str, needs: &str) {
        step(&format!("NOT VERIFIED: {what} (needs {needs})"));
        self.not_verified.push(format!("{what} (needs {needs})"));
    }
}

fn step(message: &str) {
    eprintln!("conformance: {message}");
}

/// Environment variables that point the suite at another server.
pub mod env {
    /// `https://host:port` of the server (required to use the environment).
    pub const URL: &str = "CONFORMANCE_URL";
    /// PEM file: CA bundle of the serving certificate (required).
    pub const CA: &str = "CONFORMANCE_CA";
    /// Name to verify the serving certificate for (default: the URL's host).
    pub const SERVER_NAME: &str = "CONFORMANCE_SERVER_NAME";
    /// PEM files: front-proxy client certificate with an allowed CN, and its key (required).
    pub const CLIENT_CERT: &str = "CONFORMANCE_CLIENT_CERT";
    pub const CLIENT_KEY: &str = "CONFORMANCE_CLIENT_KEY";
    /// PEM files: a front-proxy CA certificate whose CN is not allowed, and its key.
    pub const DISALLOWED_CERT: &str = "CONFORMANCE_DISALLOWED_CERT";
    pub const DISALLOWED_KEY: &str = "CONFORMANCE_DISALLOWED_KEY";
    /// PEM files: a client-ca-file certificate, CN conformance:cert-user, O conformance:group-b.
    pub const USER_CERT: &str = "CONFORMANCE_USER_CERT";
    pub const USER_KEY: &str = "CONFORMANCE_USER_KEY";
    /// Admin kubeconfig of the cluster the server delegates to.
    pub const KUBECONFIG: &str = "CONFORMANCE_KUBECONFIG";
    /// `https://host:port` of an instance with empty requestheader-allowed-names (same CA
    /// and server name).
    pub const EMPTY_ALLOWED_NAMES_URL: &str = "CONFORMANCE_EMPTY_ALLOWED_NAMES_URL";
}

impl Target {
    /// A target from the [`env`] variables, or `None` when `CONFORMANCE_URL` is unset.
    pub async fn from_env() -> Result<Option<Self>> {
        let Ok(url) = std::env::var(env::URL) else {
            return Ok(None);
        };
        let read = |var: &str| -> Result<Option<String>> {
            match std::env::var(var) {
                Ok(path) => Ok(Some(
                    std::fs::read_to_string(&path).with_context(|| format!("{var}={path}"))?,
                )),
                Err(_) => Ok(None),
            }
        };
        let required = |var: &str| -> Result<String> {
            read(var)?.ok_or_else(|| anyhow!("{var} must name a PEM file"))
        };
        let pair = |cert: &str, key: &str| -> Result<Option<IssuedCert>> {
            Ok(match (read(cert)?, read(key)?) {
                (Some(cert_pem), Some(key_pem)) => Some(IssuedCert { cert_pem, key_pem }),
                _ => None,
            })
        };
        let parsed = reqwest::Url::parse(&url).with_context(|| format!("{}={url}", env::URL))?;
        let server_name = std::env::var(env::SERVER_NAME)
            .ok()
            .or_else(|| parsed.host_str().map(str::to_owned))
            .ok_or_else(|| anyhow!("{url} has no host"))?;
        let endpoint = Endpoint {
            url: url.clone(),
            server_name: server_name.clone(),
            ca_pem: required(env::CA)?,
        };
        let cluster = match std::env::var(env::KUBECONFIG) {
            Ok(path) => Some(
                crate::controlplane::client_from_kubeconfig(std::path::Path::new(&path)).await?,
            ),
            Err(_) => None,
        };
        Ok(Some(Target {
            empty_allowed_names: std::env::var(env::EMPTY_ALLOWED_NAMES_URL).ok().map(|url| {
                Endpoint {
                    url,
                    server_name,
                    ca_pem: endpoint.ca_pem.clone(),
                }
            }),
            endpoint,
            front_proxy: IssuedCert {
                cert_pem: required(env::CLIENT_CERT)?,
                key_pem: required(env::CLIENT_KEY)?,
            },
            disallowed_front_proxy: pair(env::DISALLOWED_CERT, env::DISALLOWED_KEY)?,
            client_ca_user: pair(env::USER_CERT, env::USER_KEY)?,
            cluster,
            fixtures: None,
            reviews: None,
        }))
    }

    /// Headers of a front-proxied request for `user` in `groups`.
    pub fn as_user(user: &str, groups: &[&str]) -> Vec<(String, String)> {
        let mut headers = vec![("X-Remote-User".to_owned(), user.to_owned())];
        headers.extend(
            groups
                .iter()
                .map(|g| ("X-Remote-Group".to_owned(), (*g).to_owned())),
        );
        headers
    }

    /// The aggregator's own identity (never reviewed).
    pub fn aggregator() -> Vec<(String, String)> {
        Self::as_user("system:kube-aggregator", &["system:masters"])
    }

    /// Who reads metrics in the data checks: a user authorized through RBAC (so the
    /// SubjectAccessReview path is exercised) when the suite can create RBAC, else the
    /// aggregator's `system:masters` identity.
    pub fn reader(&self) -> Vec<(String, String)> {
        if self.cluster.is_some() {
            Self::as_user(READER_USER, &[])
        } else {
            Self::aggregator()
        }
    }

    /// GET as the front proxy with `headers`.
    pub async fn get(&self, path: &str, headers: &[(String, String)]) -> Result<Answer> {
        self.endpoint
            .get(Some(&self.front_proxy), path, headers)
            .await
    }
}

fn with(mut headers: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    headers.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    headers
}

fn metric_path(namespace: &str, metric: &str, selector: Option<&str>) -> String {
    let mut path = format!("{GROUP_VERSION_PATH}/namespaces/{namespace}/{metric}");
    if let Some(selector) = selector {
        let encoded: String =
            percent_encoding::utf8_percent_encode(selector, percent_encoding::NON_ALPHANUMERIC)
                .collect();
        let _ = write!(path, "?labelSelector={encoded}");
    }
    path
}

/// Checks a `metav1.Status` error body and returns it.
pub fn expect_status(answer: &Answer, code: u16, reason: &str) -> Result<Value> {
    ensure!(
        answer.status == code,
        "expected HTTP {code} ({reason}), got {}",
        answer.describe()
    );
    ensure!(
        answer.content_type().starts_with("application/json"),
        "a Status must be JSON, got Content-Type {:?}",
        answer.content_type()
    );
    let body = answer.json()?;
    ensure!(
        body["kind"] == "Status" && body["apiVersion"] == "v1" && body["status"] == "Failure",
        "not a failure Status: {body}"
    );
    ensure!(
        body["code"] == code,
        "Status code {} != {code}",
        body["code"]
    );
    if !reason.is_empty() {
        ensure!(
            body["reason"] == reason,
            "Status reason {} != {reason}: {body}",
            body["reason"]
        );
    }
    Ok(body)
}

fn expect_json_ok(answer: &Answer) -> Result<Value> {
    ensure!(
        answer.status == 200,
        "expected 200, got {}",
        answer.describe()
    );
    ensure!(
        answer.content_type().starts_with("application/json"),
        "Content-Type {:?}",
        answer.content_type()
    );
    answer.json()
}

/// Checks the `ExternalMetricValueList` shape (contract §1.4) and returns its items.
pub fn expect_metric_list(answer: &Answer) -> Result<Vec<Value>> {
    let body = expect_json_ok(answer)?;
    ensure!(
        body["kind"] == "ExternalMetricValueList"
            && body["apiVersion"] == "external.metrics.k8s.io/v1beta1",
        "not an ExternalMetricValueList: {body}"
    );
    ensure!(
        body["metadata"].is_object(),
        "metadata must be an object: {body}"
    );
    let items = body["items"]
        .as_array()
        .ok_or_else(|| anyhow!("items must be an array, never null: {body}"))?;
    for item in items {
        ensure!(item["metricName"].is_string(), "metricName: {item}");
        ensure!(
            item["metricLabels"].is_object() || item["metricLabels"].is_null(),
            "metricLabels: {item}"
        );
        let ts = item["timestamp"]
            .as_str()
            .ok_or_else(|| anyhow!("timestamp must be a string: {item}"))?;
        ensure!(
            is_rfc3339_utc_seconds(ts),
            "timestamp {ts:?} is not RFC 3339 UTC with second precision"
        );
        ts.parse::<jiff::Timestamp>()
            .with_context(|| format!("timestamp {ts:?}"))?;
        ensure!(
            item["value"].is_string(),
            "value must be a Quantity string: {item}"
        );
        if let Some(window) = item.get("window") {
            ensure!(window.is_i64(), "window must be an integer: {item}");
        }
    }
    Ok(items.clone())
}

fn is_rfc3339_utc_seconds(ts: &str) -> bool {
    let b = ts.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

// ---------------------------------------------------------------------------------------------
// Cluster fixtures
// ---------------------------------------------------------------------------------------------

/// RBAC the auth checks rely on: a ClusterRole listing every external metric, bound to
/// [`READER_USER`] and [`READER_GROUP`]; waits until kube-apiserver's authorizer says so.
pub async fn prepare_cluster(admin: &kube::Client) -> Result<()> {
    let role = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", "ClusterRole"),
        "clusterroles",
    );
    let binding = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding"),
        "clusterrolebindings",
    );
    let objects = [
        (
            role,
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": READER_ROLE},
                "rules": [{"apiGroups": [GROUP], "resources": ["*"], "verbs": ["get", "list", "watch"]}],
            }),
        ),
        (
            binding,
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": READER_ROLE},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": READER_ROLE},
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": READER_USER},
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": READER_GROUP},
                ],
            }),
        ),
    ];
    for (resource, object) in objects {
        let api: Api<DynamicObject> = Api::all_with(admin.clone(), &resource);
        let object: DynamicObject = serde_json::from_value(object)?;
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e).context("creating conformance RBAC"),
        }
    }
    let reviews: Api<SubjectAccessReview> = Api::all(admin.clone());
    for (user, groups) in [
        (READER_USER, vec![]),
        ("conformance:someone", vec![READER_GROUP.to_owned()]),
    ] {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.to_owned()),
                groups: Some(groups),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some("list".into()),
                    group: Some(GROUP.into()),
                    resource: Some("anything".into()),
                    namespace: Some("default".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        eventually(
            &format!("RBAC allows {user}"),
            Duration::from_secs(120),
            || {
                let (reviews, review) = (reviews.clone(), review.clone());
                async move {
                    let answer = reviews.create(&PostParams::default(), &review).await?;
                    Ok(answer.status.is_some_and(|s| s.allowed).then_some(()))
                }
            },
        )
        .await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// Discovery documents (contract §1.2, checklist 10–12).
pub async fn discovery(t: &Target) -> Result<Report> {
    let report = Report::default();

    step("GET /apis/external.metrics.k8s.io/v1beta1 is the APIResourceList of §1.2");
    for (who, headers) in [
        ("the aggregator (system:masters)", Target::aggregator()),
        (
            "an ordinary authenticated user (non-resource SubjectAccessReview)",
            Target::as_user("conformance:discoverer", &[]),
        ),
    ] {
        let answer = t.get(GROUP_VERSION_PATH, &headers).await?;
        let body = expect_json_ok(&answer).with_context(|| format!("as {who}"))?;
        ensure!(
            body == golden_api_resource_list(),
            "as {who}: APIResourceList differs from the contract:\n got  {body}\n want {}",
            golden_api_resource_list()
        );
    }
    let answer = t
        .get(&format!("{GROUP_VERSION_PATH}/"), &Target::aggregator())
        .await?;
    ensure!(
        expect_json_ok(&answer)? == golden_api_resource_list(),
        "with a trailing slash"
    );

    step("GET /apis/external.metrics.k8s.io is the APIGroup of §1.2");
    let answer = t
        .get("/apis/external.metrics.k8s.io", &Target::aggregator())
        .await?;
    let body = expect_json_ok(&answer)?;
    ensure!(
        body == golden_api_group(),
        "APIGroup differs:\n got  {body}\n want {}",
        golden_api_group()
    );

    step("GET /apis (plain JSON) is an APIGroupList with the group");
    let answer = t
        .get(
            "/apis",
            &with(Target::aggregator(), &[("Accept", "application/json")]),
        )
        .await?;
    let body = expect_json_ok(&answer)?;
    ensure!(body["kind"] == "APIGroupList", "{body}");
    let mut group = body["groups"]
        .as_array()
        .and_then(|gs| gs.iter().find(|g| g["name"] == GROUP))
        .cloned()
        .ok_or_else(|| anyhow!("APIGroupList lacks {GROUP}: {body}"))?;
    let mut expected = golden_api_group();
    if let (Some(g), Some(e)) = (group.as_object_mut(), expected.as_object_mut()) {
        // Inside a list, TypeMeta is empty; Go omits it.
        for key in ["kind", "apiVersion"] {
            g.remove(key);
            e.remove(key);
        }
    }
    ensure!(group == expected, "group entry {group}");

    step("GET /apis with the aggregator's v2 Accept is aggregated discovery with an ETag");
    let headers = with(Target::aggregator(), &[("Accept", DISCOVERY_V2_ACCEPT)]);
    let answer = t.get("/apis", &headers).await?;
    ensure!(answer.status == 200, "{}", answer.describe());
    ensure!(
        answer.content_type() == DISCOVERY_V2_CONTENT_TYPE,
        "Content-Type {:?}, want {DISCOVERY_V2_CONTENT_TYPE}",
        answer.content_type()
    );
    let etag = answer
        .header("etag")
        .ok_or_else(|| anyhow!("aggregated discovery without an ETag"))?
        .to_owned();
    let body = answer.json()?;
    ensure!(
        body["kind"] == "APIGroupDiscoveryList" && body["apiVersion"] == "apidiscovery.k8s.io/v2",
        "{body}"
    );
    let item = body["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["metadata"]["name"] == GROUP))
        .ok_or_else(|| {
            anyhow!("the v2 document omits {GROUP}: the aggregator would publish it with no resources: {body}")
        })?;
    ensure!(
        *item == golden_discovery_v2_item(),
        "v2 item differs:\n got  {item}\n want {}",
        golden_discovery_v2_item()
    );

    step("the same request with If-None-Match: <ETag> is 304 Not Modified");
    let answer = t
        .get("/apis", &with(headers.clone(), &[("If-None-Match", &etag)]))
        .await?;
    ensure!(answer.status == 304, "{}", answer.describe());
    ensure!(answer.body.is_empty(), "a 304 has no body");
    let answer = t
        .get(
            "/apis",
            &with(headers, &[("If-None-Match", "\"not-the-current-etag\"")]),
        )
        .await?;
    ensure!(
        answer.status == 200,
        "a stale ETag must get the document: {}",
        answer.describe()
    );
    Ok(report)
}

/// Status codes and bodies (contract §1.3, §1.5, §1.6, §1.8; checklist 13, 19, 20, 22).
pub async fn status_codes(t: &Target) -> Result<Report> {
    let report = Report::default();
    let metric = "conformance.status";
    if let Some(fixtures) = &t.fixtures {
        fixtures.set(metric, &[("app", "web")], 1.0);
    }
    let reader = t.reader();

    step("unknown paths are 404 NotFound Status");
    for path in [
        format!("{GROUP_VERSION_PATH}/{metric}"),
        format!("{GROUP_VERSION_PATH}/namespaces/default"),
        format!("{GROUP_VERSION_PATH}/namespaces/default/group/{metric}"),
        "/apis/unknown.example.com/v1".to_owned(),
        "/nope".to_owned(),
    ] {
        let answer = t.get(&path, &Target::aggregator()).await?;
        expect_status(&answer, 404, "NotFound").with_context(|| format!("GET {path}"))?;
    }

    step("a metric the source does not know is 404 NotFound or an empty list");
    let answer = t
        .get(
            &metric_path("default", "conformance.never-set", None),
            &reader,
        )
        .await?;
    if answer.status == 404 {
        expect_status(&answer, 404, "NotFound")?;
    } else {
        ensure!(
            expect_metric_list(&answer)?.is_empty(),
            "unknown metric: {}",
            answer.describe()
        );
    }

    step("watch=true is 405 MethodNotAllowed (no watcher)");
    let path = format!("{}?watch=true", metric_path("default", metric, None));
    expect_status(
        &t.get(&path, &Target::aggregator()).await?,
        405,
        "MethodNotAllowed",
    )?;

    step("POST, PUT and DELETE on the metric route are 405 MethodNotAllowed");
    for method in [Method::POST, Method::PUT, Method::DELETE] {
        let answer = t
            .endpoint
            .call(
                Some(&t.front_proxy),
                method.clone(),
                &metric_path("default", metric, None),
                &Target::aggregator(),
            )
            .await?;
        expect_status(&answer, 405, "MethodNotAllowed").with_context(|| method.to_string())?;
    }

    step("an Accept without JSON or */* is 406 NotAcceptable; the HPA's Accept gets JSON");
    let answer = t
        .get(
            &metric_path("default", metric, None),
            &with(reader.clone(), &[("Accept", "application/xml")]),
        )
        .await?;
    expect_status(&answer, 406, "NotAcceptable")?;
    let answer = t
        .get(
            &metric_path("default", metric, None),
            &with(reader.clone(), &[("Accept", HPA_ACCEPT)]),
        )
        .await?;
    if t.fixtures.is_some() {
        expect_metric_list(&answer)?;
    } else {
        ensure!(
            matches!(answer.status, 200 | 404),
            "HPA Accept: {}",
            answer.describe()
        );
    }

    step("a selector that does not parse is 400 BadRequest with the parser's message");
    for selector in ["app in (web", "app=web,,", "!", "app notin web"] {
        let answer = t
            .get(&metric_path("default", metric, Some(selector)), &reader)
            .await?;
        let body = expect_status(&answer, 400, "BadRequest")
            .with_context(|| format!("labelSelector {selector:?}"))?;
        ensure!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "a 400 must say what is wrong: {body}"
        );
    }

    step("probes answer without credentials");
    for probe in ["/healthz", "/livez", "/readyz"] {
        let answer = t.endpoint.get(None, probe, &[]).await?;
        ensure!(answer.status == 200, "{probe}: {}", answer.describe());
    }
    Ok(report)
}

/// Label selectors (contract §3.1, checklist 15, 17). Needs [`Fixtures`].
pub async fn selectors(t: &Target) -> Result<Report> {
    let mut report = Report::default();
    let Some(fixtures) = &t.fixtures else {
        report.skip("label selector semantics", "fixtures to set values");
        return Ok(report);
    };
    let metric = "conformance.selector";
    // Each series has a distinct value, by which the answers are identified.
    fixtures.set(metric, &[("app", "web"), ("env", "prod")], 1.0);
    fixtures.set(metric, &[("app", "web"), ("env", "staging")], 2.0);
    fixtures.set(metric, &[("app", "api")], 3.0);
    fixtures.set(metric, &[], 4.0);
    fixtures.set(
        metric,
        &[("app", "db"), ("env", "prod"), ("tier", "backend")],
        5.0,
    );
    let reader = t.reader();
    let cases: &[(Option<&str>, &[&str])] = &[
        (None, &["1", "2", "3", "4", "5"]),
        (Some(""), &["1", "2", "3", "4", "5"]),
        (Some("env=prod"), &["1", "5"]),
        (Some("env==prod"), &["1", "5"]),
        (Some("env!=prod"), &["2", "3", "4"]),
        (Some("env in (prod,staging)"), &["1", "2", "5"]),
        (Some("env in (prod, staging)"), &["1", "2", "5"]),
        (Some("env notin (prod)"), &["2", "3", "4"]),
        (Some("env notin (prod,staging)"), &["3", "4"]),
        (Some("env"), &["1", "2", "5"]),
        (Some("!env"), &["3", "4"]),
        (Some("app=web,env!=staging"), &["1"]),
        (Some("app in (web,api),!env"), &["3"]),
        (Some("app!=web,app!=api"), &["4", "5"]),
        (Some("tier"), &["5"]),
        (Some("env="), &[]),
        (Some("app=nope"), &[]),
    ];
    for (selector, want) in cases {
        step(&format!("labelSelector {selector:?} selects {want:?}"));
        let answer = t
            .get(&metric_path("default", metric, *selector), &reader)
            .await?;
        let items =
            expect_metric_list(&answer).with_context(|| format!("labelSelector {selector:?}"))?;
        let got: BTreeSet<String> = items
            .iter()
            .filter_map(|i| i["value"].as_str().map(str::to_owned))
            .collect();
        let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
        ensure!(
            got == want && items.len() == want.len(),
            "labelSelector {selector:?}: got {got:?} ({} items), want {want:?}",
            items.len()
        );
    }

    step("client-go form-encodes the selector (space as '+'), as the HPA sends it");
    let form_encoded = format!(
        "{GROUP_VERSION_PATH}/namespaces/default/{metric}?labelSelector=env+in+%28prod%2Cstaging%29%2C%21tier"
    );
    let items = expect_metric_list(&t.get(&form_encoded, &reader).await?)?;
    let got: BTreeSet<&str> = items.iter().filter_map(|i| i["value"].as_str()).collect();
    ensure!(
        got == BTreeSet::from(["1", "2"]),
        "'+'-encoded selector: got {got:?}"
    );

    step("metric names arrive lower-cased (client-go) and still match");
    fixtures.set("conformance.MixedCase", &[("app", "web")], 7.0);
    let answer = t
        .get(
            &metric_path("default", "conformance.mixedcase", None),
            &reader,
        )
        .await?;
    let items = expect_metric_list(&answer)?;
    ensure!(
        items.len() == 1 && items[0]["value"] == "7",
        "lower-cased name: {items:?}"
    );
    ensure!(
        items[0]["metricLabels"] == json!({"app": "web"}),
        "label keys and values keep their case: {items:?}"
    );
    Ok(report)
}

/// Values the source holds → canonical Quantity strings (contract §3.3, checklist 18).
pub const QUANTITY_VECTORS: &[(f64, &str)] = &[
    (0.5, "500m"),
    (1.5, "1500m"),
    (3000.0, "3k"),
    (2472.0, "2472"),
    (1e-9, "1n"),
    (1e-10, "1n"),
    (0.0, "0"),
    (1.0, "1"),
    (0.1, "100m"),
    (1.08, "1080m"),
    (123.456, "123456m"),
    (1e-3, "1m"),
    (1e-6, "1u"),
    (12e3, "12k"),
    (1e9, "1G"),
    (1e15, "1P"),
    (9.2e15, "9200T"),
    (-1.5, "-1500m"),
    (1.0 / 3.0, "333333334n"),
];

/// Quantity formatting of served values. Needs [`Fixtures`].
pub async fn quantities(t: &Target) -> Result<Report> {
    let mut report = Report::default();
    let Some(fixtures) = &t.fixtures else {
        report.skip("Quantity formatting", "fixtures to set values");
        return Ok(report);
    };
    let metric = "conformance.quantity";
    for (i, (value, _)) in QUANTITY_VECTORS.iter().enumerate() {
        fixtures.set(metric, &[("case", &i.to_string())], *value);
    }
    let reader = t.reader();
    for (i, (value, want)) in QUANTITY_VECTORS.iter().enumerate() {
        let answer = t
            .get(
                &metric_path("default", metric, Some(&format!("case={i}"))),
                &reader,
            )
            .await?;
        let items = expect_metric_list(&answer)?;
        ensure!(items.len() == 1, "case {i}: {items:?}");
        ensure!(
            items[0]["value"] == *want,
            "value {value:e} is served as {}, want {want:?}",
            items[0]["value"]
        );
    }
    step(&format!(
        "{} values are served as canonical Quantities",
        QUANTITY_VECTORS.len()
    ));

    step(
        "values the HPA cannot read (milli-value beyond int64, NaN, ±Inf) are errors, not numbers",
    );
    for (name, value) in [
        ("conformance.quantity.huge", 1e16),
        ("conformance.quantity.nan", f64::NAN),
        ("conformance.quantity.inf", f64::INFINITY),
    ] {
        fixtures.set(name, &[], value);
        let answer = t.get(&metric_path("default", name, None), &reader).await?;
        ensure!(
            answer.status >= 500,
            "{value}: expected a 5xx Status, got {}",
            answer.describe()
        );
        expect_status(&answer, answer.status, "")?;
    }
    Ok(report)
}

/// Request-header authentication and delegated authorization (contract §2, checklist 1–5).
pub async fn auth_matrix(t: &Target) -> Result<Report> {
    let mut report = Report::default();
    let metric = "conformance.auth";
    let path = metric_path("default", metric, None);
    if let Some(fixtures) = &t.fixtures {
        fixtures.set(metric, &[("app", "web")], 1.0);
    }
    // Accepted = authenticated and authorized: the metric itself (or NotFound without
    // fixtures, which still means authorization passed).
    let accepted = |answer: &Answer, who: &str| -> Result<()> {
        if t.fixtures.is_some() {
            expect_metric_list(answer).with_context(|| format!("{who} must be served"))?;
        } else {
            ensure!(
                matches!(answer.status, 200 | 404),
                "{who} must get past authentication and authorization: {}",
                answer.describe()
            );
        }
        Ok(())
    };

    step("the front proxy with an allowed CN is accepted");
    accepted(&t.get(&path, &t.reader()).await?, "the reader")?;

    step("no client certificate: anonymous, and a SubjectAccessReview denies it (403)");
    let answer = t.endpoint.get(None, &path, &[]).await?;
    let body = expect_status(&answer, 403, "Forbidden")?;
    ensure!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("system:anonymous")),
        "403 for the anonymous user: {body}"
    );

    step("X-Remote-* headers without a trusted certificate are ignored");
    let answer = t
        .endpoint
        .get(
            None,
            &path,
            &Target::as_user("system:admin", &["system:masters"]),
        )
        .await?;
    let body = expect_status(&answer, 403, "Forbidden")?;
    ensure!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("system:anonymous")),
        "spoofed headers must not authenticate: {body}"
    );

    step("a client certificate from an unknown CA fails the TLS handshake");
    let stranger_ca = CertAuthority::new("conformance-unknown-ca")?;
    let stranger = stranger_ca.issue_client("front-proxy-client", &[])?;
    match t
        .endpoint
        .get(Some(&stranger), &path, &Target::aggregator())
        .await
    {
        Err(error) => step(&format!("rejected as expected: {error:#}")),
        Ok(answer) => bail!(
            "a certificate from an unknown CA was not rejected: {}",
            answer.describe()
        ),
    }

    match &t.disallowed_front_proxy {
        Some(cert) => {
            step("a front-proxy CA certificate whose CN is not allowed is 401 Unauthorized");
            let answer = t
                .endpoint
                .get(Some(cert), &path, &Target::aggregator())
                .await?;
            expect_status(&answer, 401, "Unauthorized")?;
        }
        None => report.skip(
            "CN outside requestheader-allowed-names → 401",
            "a front-proxy certificate with a disallowed CN",
        ),
    }

    match (&t.empty_allowed_names, &t.disallowed_front_proxy) {
        (Some(endpoint), Some(cert)) => {
            step(
                "with empty requestheader-allowed-names, any CN of the front-proxy CA is accepted",
            );
            let answer = endpoint.get(Some(cert), &path, &t.reader()).await?;
            accepted(&answer, "any CN with empty allowed names")?;
        }
        _ => report.skip(
            "empty requestheader-allowed-names → any CN accepted",
            "an instance with empty allowed names and a certificate with another CN",
        ),
    }

    step("a SubjectAccessReview denial is 403 Forbidden with Go's message and details");
    let nobody = "conformance:nobody";
    let answer = t
        .get(&path, &Target::as_user(nobody, &[OTHER_GROUP]))
        .await?;
    let body = expect_status(&answer, 403, "Forbidden")?;
    let want = format!(
        "User \"{nobody}\" cannot list resource \"{metric}\" in API group \"{GROUP}\" in the namespace \"default\""
    );
    ensure!(
        body["message"].as_str().is_some_and(|m| m.contains(&want)),
        "403 message should contain {want:?}: {body}"
    );
    ensure!(
        body["details"]["group"] == GROUP && body["details"]["kind"] == metric,
        "403 details name the group and resource: {body}"
    );

    if t.cluster.is_some() {
        step("every X-Remote-Group value counts: only the second group is bound");
        let grouped = "conformance:grouped";
        let answer = t
            .get(&path, &Target::as_user(grouped, &[OTHER_GROUP]))
            .await?;
        expect_status(&answer, 403, "Forbidden").context("without the bound group")?;
        let answer = t
            .get(
                &path,
                &Target::as_user(grouped, &[OTHER_GROUP, READER_GROUP]),
            )
            .await?;
        accepted(&answer, "a user whose second group is bound")?;
        if let Some(reviews) = &t.reviews {
            let review = find_review(reviews.as_ref(), grouped, &[OTHER_GROUP, READER_GROUP])?;
            let groups = &review["spec"]["groups"];
            ensure!(
                *groups == json!([OTHER_GROUP, READER_GROUP, "system:authenticated"]),
                "SubjectAccessReview groups: {groups}"
            );
            let attributes = &review["spec"]["resourceAttributes"];
            ensure!(
                *attributes
                    == json!({"verb": "list", "group": GROUP, "version": "v1beta1",
                              "resource": metric, "namespace": "default"}),
                "SubjectAccessReview attributes: {attributes}"
            );
        }
    } else {
        report.skip(
            "several X-Remote-Group headers → all in the SubjectAccessReview",
            "an admin client for group RBAC",
        );
    }

    step("X-Remote-Extra-<percent-escaped key> headers: accepted, keys decoded and lower-cased");
    let extras_user = "conformance:extras";
    let headers = with(
        Target::as_user(extras_user, &[READER_GROUP]),
        &[
            ("X-Remote-Extra-Acme.com%2Fproject", "Blue"),
            ("X-Remote-Extra-Acme.com%2Fproject", "green"),
            ("X-Remote-Extra-Scopes", "view"),
        ],
    );
    let answer = t.get(&path, &headers).await?;
    if t.cluster.is_some() {
        accepted(&answer, "a user with extras")?;
    } else {
        ensure!(
            matches!(answer.status, 200 | 403 | 404),
            "extras must not break authentication: {}",
            answer.describe()
        );
    }
    match &t.reviews {
        Some(reviews) => {
            let review = find_review(reviews.as_ref(), extras_user, &[READER_GROUP])?;
            let extra = &review["spec"]["extra"];
            ensure!(
                *extra == json!({"acme.com/project": ["Blue", "green"], "scopes": ["view"]}),
                "SubjectAccessReview extra: {extra}"
            );
        }
        None => report.skip(
            "extras decoded into the SubjectAccessReview",
            "a view of the SubjectAccessReviews the server sends",
        ),
    }

    match &t.cluster {
        Some(admin) => {
            step("a bearer token is reviewed (TokenReview): a service-account token is that user");
            let token = service_account_token(admin, "default", "conformance-token").await?;
            let bearer = vec![("Authorization".to_owned(), format!("Bearer {token}"))];
            let answer = t.endpoint.get(None, &path, &bearer).await?;
            let body = expect_status(&answer, 403, "Forbidden")?;
            ensure!(
                body["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("system:serviceaccount:default:conformance-token")),
                "the token's user must be the one authorized: {body}"
            );
            step("an invalid bearer token is 401 Unauthorized");
            let bogus = vec![(
                "Authorization".to_owned(),
                "Bearer conformance-not-a-token".to_owned(),
            )];
            expect_status(
                &t.endpoint.get(None, &path, &bogus).await?,
                401,
                "Unauthorized",
            )?;
        }
        None => report.skip(
            "bearer tokens through TokenReview",
            "an admin client to mint a service-account token",
        ),
    }

    match (&t.client_ca_user, &t.cluster) {
        (Some(cert), Some(_)) => {
            step("a client-ca-file certificate authenticates as CN, with O as groups");
            let answer = t.endpoint.get(Some(cert), &path, &[]).await?;
            accepted(&answer, "a client-ca certificate in the bound group")?;
        }
        _ => report.skip(
            "client-ca-file certificate: CN = user, O = groups",
            "a client-ca certificate and an admin client",
        ),
    }
    Ok(report)
}

/// A token of service account `namespace/name` (created if needed) from the TokenRequest
/// API.
async fn service_account_token(
    admin: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    match accounts.create(&PostParams::default(), &account).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e).context("creating the service account"),
    }
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let issued = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .context("TokenRequest")?;
    issued
        .status
        .map(|s| s.token)
        .ok_or_else(|| anyhow!("TokenRequest without a token"))
}

fn find_review(reviews: &dyn ReviewLog, user: &str, groups: &[&str]) -> Result<Value> {
    reviews
        .subject_access_reviews()
        .into_iter()
        .rev()
        .find(|r| {
            r["spec"]["user"] == user
                && groups.iter().all(|g| {
                    r["spec"]["groups"]
                        .as_array()
                        .is_some_and(|gs| gs.contains(&json!(g)))
                })
        })
        .ok_or_else(|| anyhow!("no SubjectAccessReview for {user} in {groups:?} was sent"))
}

/// The aggregator's availability check (contract §1.1, checklist 9): five parallel GETs of
/// the group-version document as `system:kube-aggregator`/`system:masters`, each bounded
/// by the aggregator's 5 s client timeout. Elapsed times are reported, not asserted.
pub async fn availability_check(t: &Target) -> Result<Report> {
    let report = Report::default();
    let attempt_timeout = Duration::from_secs(5);
    let headers = Target::aggregator();

    step("5 parallel GETs on fresh TLS connections (HTTP/1.1)");
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(
            t.endpoint
                .client(Some(&t.front_proxy), Protocol::Http1, attempt_timeout)
                .await?,
        );
    }
    let attempts = clients.iter().map(|client| async {
        let started = Instant::now();
        let answer = t
            .endpoint
            .send(client, Method::GET, GROUP_VERSION_PATH, &headers)
            .await;
        (answer, started.elapsed())
    });
    check_attempts(futures::future::join_all(attempts).await)?;

    step("5 parallel GETs through one HTTP/2 client, multiplexed as Go's transport does");
    let client = t
        .endpoint
        .client(Some(&t.front_proxy), Protocol::Http2, attempt_timeout)
        .await?;
    let attempts = (0..5).map(|_| async {
        let started = Instant::now();
        let answer = t
            .endpoint
            .send(&client, Method::GET, GROUP_VERSION_PATH, &headers)
            .await;
        (answer, started.elapsed())
    });
    let answers = check_attempts(futures::future::join_all(attempts).await)?;
    ensure!(
        answers.iter().all(|a| a.version == http::Version::HTTP_2),
        "ALPN h2 must be offered"
    );
    Ok(report)
}

fn check_attempts(results: Vec<(Result<Answer>, Duration)>) -> Result<Vec<Answer>> {
    let mut answers = Vec::new();
    for (i, (answer, elapsed)) in results.into_iter().enumerate() {
        let answer = answer.with_context(|| format!("attempt {i} did not complete within 5 s"))?;
        step(&format!(
            "attempt {i}: HTTP {} in {:.1} ms",
            answer.status,
            elapsed.as_secs_f64() * 1000.0
        ));
        ensure!(
            (200..400).contains(&answer.status),
            "attempt {i}: the aggregator needs a 2xx/3xx: {}",
            answer.describe()
        );
        ensure!(
            answer.json()? == golden_api_resource_list(),
            "attempt {i}: wrong document"
        );
        answers.push(answer);
    }
    Ok(answers)
}

/// Every check, in order, with its name.
pub async fn run_all(t: &Target) -> Result<BTreeMap<&'static str, Report>> {
    let mut reports = BTreeMap::new();
    reports.insert("discovery", discovery(t).await.context("discovery")?);
    reports.insert(
        "status_codes",
        status_codes(t).await.context("status codes")?,
    );
    reports.insert("selectors", selectors(t).await.context("selectors")?);
    reports.insert("quantities", quantities(t).await.context("quantities")?);
    reports.insert("auth_matrix", auth_matrix(t).await.context("auth matrix")?);
    reports.insert(
        "availability_check",
        availability_check(t).await.context("availability check")?,
    );
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_shape() {
        assert!(is_rfc3339_utc_seconds("2021-10-20T10:48:17Z"));
        assert!(!is_rfc3339_utc_seconds("2021-10-20T10:48:17.5Z"));
        assert!(!is_rfc3339_utc_seconds("2021-10-20T10:48:17+00:00"));
        assert!(!is_rfc3339_utc_seconds("2021-10-20 10:48:17Z"));
    }

    #[test]
    fn metric_paths_encode_selectors() {
        assert_eq!(
            metric_path("default", "m", Some("env in (a,b),!x")),
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/m?labelSelector=env%20in%20%28a%2Cb%29%2C%21x"
        );
        assert_eq!(
            metric_path("ns", "m", Some("")),
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/ns/m?labelSelector="
        );
        assert_eq!(
            metric_path("ns", "m", None),
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/ns/m"
        );
    }

    #[test]
    fn status_bodies_are_checked() {
        let answer = |status: u16, body: Value| Answer {
            status,
            version: http::Version::HTTP_11,
            headers: {
                let mut h = HeaderMap::new();
                h.insert("content-type", "application/json".parse().unwrap());
                h
            },
            body: Bytes::from(body.to_string()),
        };
        let good = json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                          "message":"x","reason":"NotFound","code":404});
        assert!(expect_status(&answer(404, good.clone()), 404, "NotFound").is_ok());
        assert!(expect_status(&answer(404, good.clone()), 404, "BadRequest").is_err());
        assert!(expect_status(&answer(500, good), 404, "NotFound").is_err());
        let list = json!({"kind":"ExternalMetricValueList","apiVersion":"external.metrics.k8s.io/v1beta1",
                          "metadata":{},"items":null});
        assert!(
            expect_metric_list(&answer(200, list)).is_err(),
            "null items"
        );
    }
}
