//! HTTP client for Datadog's `GET /api/v1/query` (dca-contract §9, §3.4; Go
//! `comp/autoscaling/datadogclient/impl/singleclient.go` over zorkian's `QueryMetrics`).
//!
//! - Base URL: `external_metrics_provider.endpoint`, else env `DATADOG_HOST`, else
//!   `https://api.<site>`; `http` and `https` are accepted and a trailing `/` is ignored.
//! - Headers: `DD-API-KEY`, `DD-APPLICATION-KEY` (marked sensitive, never logged),
//!   `Accept: application/json`, `User-Agent: Datadog-Cluster-Agent/<version>` (the Go DCA
//!   sends the bare `Datadog-Cluster-Agent`; the product token is kept so anything matching
//!   on it still does, and the version helps support tell builds apart).
//! - Retries: network errors and 5xx are retried with exponential backoff for at most
//!   [`DEFAULT_RETRY_BUDGET`] (as zorkian's `RetryTimeout = 3 s`); 4xx never are.
//! - Errors: non-2xx → `API error <status>: <body>` (Go wording); 2xx with
//!   `"status": "error"` → `API returned error: <error>`; 401/403 → [`ClientError::Forbidden`],
//!   logged with the likely causes; 429 → [`ClientError::RateLimited`] (its text contains
//!   `429 Too Many Requests`, which Go's `IsRateLimitError` looks for).
//! - `X-RateLimit-*` headers are read from every response that has them, 429 included.
//! - TLS: rustls with the ring provider; Mozilla's roots (built in, so a distroless image
//!   works), the system store when there is one (corporate proxies' CAs live there), and an
//!   optional extra CA bundle.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, StatusCode, header};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::batch::query_escape;
use super::ratelimit::RateLimitHeaders;
use super::response::{QueryResponse, ResponseError, parse_query_response};
use crate::config::{Secret, Settings};
use crate::error::Cause;

/// Product token of the `User-Agent`, as the Go DCA sends it.
pub(crate) const USER_AGENT_PRODUCT: &str = "Datadog-Cluster-Agent";
/// Path of the metrics query API.
pub(crate) const QUERY_PATH: &str = "/api/v1/query";
/// Default `site` when none is configured.
pub(crate) const DEFAULT_SITE: &str = "datadoghq.com";
/// Legacy environment variable naming the API base URL.
pub(crate) const DATADOG_HOST_ENV: &str = "DATADOG_HOST";

/// TCP connect plus TLS handshake.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole attempt, body included. Below the 30 s refresh period so that one slow call
/// cannot make a refresh overlap the next.
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// No retry starts later than this after the first attempt.
pub(crate) const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(3);
/// First delay between attempts; doubles after each, with ±25 % jitter.
const INITIAL_RETRY_DELAY: Duration = Duration::from_millis(250);
/// A 35-query answer is a few hundred KiB at most; anything far larger is not an answer.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Error bodies are quoted in errors and logs up to this many bytes.
const MAX_ERROR_BODY_CHARS: usize = 512;

/// Errors of the Datadog client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The configured base URL cannot be used.
    #[error("invalid Datadog API URL {url:?} (from {origin}): {reason}")]
    InvalidEndpoint {
        url: String,
        /// The setting or variable it came from.
        origin: &'static str,
        reason: String,
    },
    /// The API or application key is empty (Go wording).
    #[error(
        "missing the api/app key pair to query Datadog: set DD_API_KEY and DD_APP_KEY (or external_metrics_provider.api_key and app_key)"
    )]
    MissingKeys,
    /// A key cannot be sent as an HTTP header value (the key itself is not shown).
    #[error("the Datadog {0} contains characters that are not allowed in an HTTP header")]
    InvalidKey(&'static str),
    /// The extra CA bundle cannot be used.
    #[error("invalid extra CA bundle for the Datadog client: {0}")]
    Tls(#[source] Cause),
    /// reqwest refused the configuration.
    #[error("cannot build the Datadog HTTP client: {0}")]
    Build(#[source] Cause),
    /// Connection, TLS, timeout or body read error, after retries.
    #[error("request to Datadog failed: {}", .0.chain())]
    Transport(#[source] Cause),
    /// 401/403: wrong application key, missing permission, or the wrong site.
    #[error("API error {status}: {body}")]
    Forbidden { status: StatusCode, body: String },
    /// 429 Too Many Requests.
    #[error("API error 429 Too Many Requests: {body}")]
    RateLimited { body: String },
    /// Any other non-2xx answer (5xx after retries).
    #[error("API error {status}: {body}")]
    Status { status: StatusCode, body: String },
    /// A 2xx answer that is not a usable query response.
    #[error(transparent)]
    Response(#[from] ResponseError),
}

impl ClientError {
    /// `true` when Datadog refused the queries themselves (bad syntax, too long), so the
    /// same call would fail again: 400, 413, 414, 422, or a 2xx saying `"status": "error"`.
    /// This is what per-query backoff counts (see [`super::backoff`]).
    pub fn blames_queries(&self) -> bool {
        match self {
            ClientError::Status { status, .. } => matches!(
                *status,
                StatusCode::BAD_REQUEST
                    | StatusCode::PAYLOAD_TOO_LARGE
                    | StatusCode::URI_TOO_LONG
                    | StatusCode::UNPROCESSABLE_ENTITY
            ),
            ClientError::Response(ResponseError::Api(_)) => true,
            _ => false,
        }
    }
}

/// Picks the API base URL: `endpoint` (`external_metrics_provider.endpoint`), else
/// `datadog_host` (env `DATADOG_HOST`), else `https://api.<site>`. Blank values count as
/// unset. The result has no trailing `/`.
pub(crate) fn resolve_base_url(
    endpoint: Option<&str>,
    datadog_host: Option<&str>,
    site: &str,
) -> Result<String, ClientError> {
    fn set(v: Option<&str>) -> Option<&str> {
        v.map(str::trim).filter(|v| !v.is_empty())
    }
    let (raw, origin) = if let Some(e) = set(endpoint) {
        (e.to_owned(), "external_metrics_provider.endpoint")
    } else if let Some(h) = set(datadog_host) {
        (h.to_owned(), DATADOG_HOST_ENV)
    } else {
        let site = set(Some(site)).unwrap_or(DEFAULT_SITE);
        (format!("https://api.{site}"), "site")
    };
    let invalid = |reason: String| ClientError::InvalidEndpoint {
        url: raw.clone(),
        origin,
        reason,
    };
    let url = reqwest::Url::parse(&raw).map_err(|e| {
        invalid(format!(
            "{e} (expected an absolute URL such as https://api.datadoghq.com)"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "the scheme must be http or https, not {}",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it has no host".to_owned()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("it must not have a query or a fragment".to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "credentials in the URL are not supported (the keys go in headers)".to_owned(),
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// How to build a [`DatadogClient`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// API base URL without trailing `/` (see [`resolve_base_url`]).
    pub base_url: String,
    pub api_key: Secret,
    pub app_key: Secret,
    /// `site`, only quoted in the 403 diagnostic.
    pub site: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub retry_budget: Duration,
    /// PEM certificates trusted on top of the built-in and system roots.
    pub extra_root_certs_pem: Option<Vec<u8>>,
    /// Honour `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` (on by default, as Go's transport does).
    pub use_env_proxy: bool,
}

impl ClientConfig {
    /// Defaults for `base_url` and the keys.
    pub fn new(base_url: impl Into<String>, api_key: Secret, app_key: Secret) -> ClientConfig {
        ClientConfig {
            base_url: base_url.into(),
            api_key,
            app_key,
            site: DEFAULT_SITE.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retry_budget: DEFAULT_RETRY_BUDGET,
            extra_root_certs_pem: None,
            use_env_proxy: true,
        }
    }

    /// From the settings and the process environment (`DATADOG_HOST`).
    pub fn from_settings(settings: &Settings) -> Result<ClientConfig, ClientError> {
        let host = std::env::var(DATADOG_HOST_ENV).ok();
        ClientConfig::from_settings_and_host(settings, host.as_deref())
    }

    /// From the settings, with `DATADOG_HOST` given explicitly.
    pub fn from_settings_and_host(
        settings: &Settings,
        datadog_host: Option<&str>,
    ) -> Result<ClientConfig, ClientError> {
        let em = &settings.external_metrics;
        let base = resolve_base_url(em.endpoint.as_deref(), datadog_host, &settings.site)?;
        let mut config = ClientConfig::new(base, em.api_key.clone(), em.app_key.clone());
        config.site = settings.site.trim().to_owned();
        Ok(config)
    }
}

/// The last `X-RateLimit-*` headers seen during one call, with when they arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitObservation {
    pub headers: RateLimitHeaders,
    pub at: Instant,
}

/// The outcome of one [`DatadogClient::query`] call.
#[derive(Debug, Clone)]
pub struct QueryReply {
    pub result: Result<QueryResponse, ClientError>,
    /// Headers of the last response that carried any, including a 429's.
    pub rate_limit: Option<RateLimitObservation>,
    /// HTTP attempts made (1 without retry).
    pub attempts: u32,
}

/// Client for Datadog's metrics query API. Cheap to clone.
#[derive(Clone)]
pub struct DatadogClient {
    http: reqwest::Client,
    base_url: Arc<str>,
    site: Arc<str>,
    retry_budget: Duration,
}

impl fmt::Debug for DatadogClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The keys live in the reqwest client's default headers and are never shown.
        f.debug_struct("DatadogClient")
            .field("base_url", &self.base_url)
            .field("retry_budget", &self.retry_budget)
            .finish_non_exhaustive()
    }
}

/// The `User-Agent` we send.
pub(crate) fn user_agent() -> String {
    format!("{USER_AGENT_PRODUCT}/{}", crate::version::VERSION)
}

/// rustls client config: ring, TLS 1.2+, Mozilla roots + system roots + `extra_pem`,
/// ALPN h2 and http/1.1.
pub(crate) fn tls_config(extra_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(
        added,
        ignored,
        errors = native.errors.len(),
        "system trust store loaded for the Datadog client"
    );
    if let Some(pem) = extra_pem {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Tls(Cause::new(e)))?;
        if certs.is_empty() {
            return Err(ClientError::Tls(Cause::msg("no PEM certificate found")));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| ClientError::Tls(Cause::new(e)))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Build(Cause::new(e)))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn sensitive_header(value: &str, what: &'static str) -> Result<HeaderValue, ClientError> {
    let mut v = HeaderValue::from_str(value.trim()).map_err(|_| ClientError::InvalidKey(what))?;
    v.set_sensitive(true);
    Ok(v)
}

/// The first [`MAX_ERROR_BODY_CHARS`] bytes of an error body, cut on a character boundary.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.len() <= MAX_ERROR_BODY_CHARS {
        return text.to_owned();
    }
    let mut end = MAX_ERROR_BODY_CHARS;
    // Stops at 0 at the latest, which is always a boundary.
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], body.len())
}

/// One HTTP exchange.
enum Attempt {
    Answer { status: StatusCode, body: Vec<u8> },
    Failed(Cause),
}

impl DatadogClient {
    pub fn new(config: ClientConfig) -> Result<DatadogClient, ClientError> {
        if config.api_key.expose().trim().is_empty() || config.app_key.expose().trim().is_empty() {
            return Err(ClientError::MissingKeys);
        }
        let base_url = resolve_base_url(Some(&config.base_url), None, &config.site)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            "DD-API-KEY",
            sensitive_header(config.api_key.expose(), "API key")?,
        );
        headers.insert(
            "DD-APPLICATION-KEY",
            sensitive_header(config.app_key.expose(), "application key")?,
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let tls = tls_config(config.extra_root_certs_pem.as_deref())?;
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .user_agent(user_agent())
            .default_headers(headers)
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            // A redirect would carry the keys to wherever it points.
            .redirect(reqwest::redirect::Policy::none());
        if !config.use_env_proxy {
            builder = builder.no_proxy();
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Build(Cause::new(e)))?;
        tracing::info!(endpoint = %base_url, "Datadog client for metric queries initialized");
        Ok(DatadogClient {
            http,
            base_url: base_url.into(),
            site: config.site.into(),
            retry_budget: config.retry_budget,
        })
    }

    /// The API base URL in use.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The URL of one query call: queries comma-joined and escaped as Go's `url.QueryEscape`
    /// does, so that the chunking's length accounting ([`super::batch`]) is exact.
    pub fn query_url(&self, from: i64, to: i64, queries: &[String]) -> String {
        format!(
            "{}{QUERY_PATH}?from={from}&to={to}&query={}",
            self.base_url,
            query_escape(&queries.join(","))
        )
    }

    /// `GET /api/v1/query` for `queries` over `[from, to]` (Unix seconds).
    pub async fn query(&self, from: i64, to: i64, queries: &[String]) -> QueryReply {
        let url = self.query_url(from, to, queries);
        let start = Instant::now();
        let mut delay = INITIAL_RETRY_DELAY;
        let mut attempts = 0u32;
        let mut rate_limit = None;
        let result = loop {
            attempts += 1;
            let (retryable, error) = match self.attempt(&url, &mut rate_limit).await {
                Attempt::Answer { status, body } if status.is_success() => {
                    break parse_query_response(&body).map_err(ClientError::from);
                }
                Attempt::Answer { status, body } => {
                    let body = excerpt(&body);
                    match status {
                        StatusCode::TOO_MANY_REQUESTS => {
                            break Err(ClientError::RateLimited { body });
                        }
                        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                            self.log_forbidden(status);
                            break Err(ClientError::Forbidden { status, body });
                        }
                        s => (s.is_server_error(), ClientError::Status { status, body }),
                    }
                }
                Attempt::Failed(msg) => (true, ClientError::Transport(msg)),
            };
            let wait = jittered(delay);
            if !retryable || start.elapsed() + wait > self.retry_budget {
                break Err(error);
            }
            tracing::debug!(attempt = attempts, ?wait, error = %error, "retrying Datadog query");
            tokio::time::sleep(wait).await;
            delay = delay.saturating_mul(2);
        };
        QueryReply {
            result,
            rate_limit,
            attempts,
        }
    }

    /// `GET /api/v1/validate`: whether Datadog accepts the API key (one attempt; `status`
    /// shows the outcome, so a failure is reported, not retried).
    pub async fn validate(&self) -> Result<(), ClientError> {
        let url = format!("{}/api/v1/validate", self.base_url);
        let mut ignored = None;
        match self.attempt(&url, &mut ignored).await {
            Attempt::Answer { status, .. } if status.is_success() => Ok(()),
            Attempt::Answer { status, body }
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN =>
            {
                Err(ClientError::Forbidden {
                    status,
                    body: excerpt(&body),
                })
            }
            Attempt::Answer { status, body } => Err(ClientError::Status {
                status,
                body: excerpt(&body),
            }),
            Attempt::Failed(cause) => Err(ClientError::Transport(cause)),
        }
    }

    async fn attempt(&self, url: &str, rate_limit: &mut Option<RateLimitObservation>) -> Attempt {
        let mut response = match self.http.get(url).send().await {
            Ok(r) => r,
            // reqwest errors name the URL, which holds queries but no key.
            Err(e) => return Attempt::Failed(Cause::new(e)),
        };
        if let Some(headers) = RateLimitHeaders::from_headers(response.headers()) {
            *rate_limit = Some(RateLimitObservation {
                headers,
                at: Instant::now(),
            });
        }
        let status = response.status();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY_BYTES {
                        return Attempt::Failed(Cause::msg(format!(
                            "the response body exceeds {MAX_BODY_BYTES} bytes"
                        )));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Attempt::Failed(Cause::new(e)),
            }
        }
        Attempt::Answer { status, body }
    }

    fn log_forbidden(&self, status: StatusCode) {
        tracing::error!(
            status = status.as_u16(),
            endpoint = %self.base_url,
            site = %self.site,
            "Datadog refused the metrics query: the application key is probably missing, revoked \
             or lacks the timeseries_query permission (DD_APP_KEY or \
             external_metrics_provider.app_key), or the keys belong to an organisation on \
             another Datadog site than the one queried (set DD_SITE, e.g. datadoghq.eu, \
             us3.datadoghq.com, or external_metrics_provider.endpoint)"
        );
    }
}

/// `base` ± 25 %, so that clients failing together do not retry together.
fn jittered(base: Duration) -> Duration {
    use rand::Rng;
    base.mul_f64(rand::rng().random_range(0.75..1.25))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_precedence_vectors() {
        // (endpoint, DATADOG_HOST, site, expected)
        let cases: &[(Option<&str>, Option<&str>, &str, &str)] = &[
            (None, None, "datadoghq.com", "https://api.datadoghq.com"),
            (None, None, "datadoghq.eu", "https://api.datadoghq.eu"),
            (
                None,
                None,
                " us3.datadoghq.com ",
                "https://api.us3.datadoghq.com",
            ),
            (None, None, "", "https://api.datadoghq.com"),
            (
                None,
                Some("https://app.datadoghq.eu"),
                "datadoghq.com",
                "https://app.datadoghq.eu",
            ),
            (
                Some("https://custom.example/"),
                Some("https://app.datadoghq.eu"),
                "datadoghq.com",
                "https://custom.example",
            ),
            (
                Some(""),
                Some(" "),
                "ddog-gov.com",
                "https://api.ddog-gov.com",
            ),
            (
                Some("  "),
                Some("http://127.0.0.1:8080//"),
                "x",
                "http://127.0.0.1:8080",
            ),
            (
                Some("https://proxy.corp:8443/datadog/"),
                None,
                "x",
                "https://proxy.corp:8443/datadog",
            ),
            (
                Some("HTTPS://API.DATADOGHQ.EU"),
                None,
                "x",
                "https://api.datadoghq.eu",
            ),
        ];
        for (endpoint, host, site, want) in cases {
            assert_eq!(
                resolve_base_url(*endpoint, *host, site).as_deref(),
                Ok(*want),
                "{endpoint:?} {host:?} {site:?}"
            );
        }
    }

    #[test]
    fn config_from_settings() {
        let dir = tempfile::tempdir().unwrap();
        let load = |pairs: &'static [(&'static str, &'static str)]| {
            let env = move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            };
            Settings::load_from(None, dir.path(), &env).unwrap()
        };
        // (environment, DATADOG_HOST, base URL, API key, app key)
        type Env = &'static [(&'static str, &'static str)];
        let cases: &[(Env, Option<&str>, &str, &str, &str)] = &[
            (
                &[("DD_API_KEY", "k1"), ("DD_APP_KEY", "a1")],
                None,
                "https://api.datadoghq.com",
                "k1",
                "a1",
            ),
            (
                &[
                    ("DD_API_KEY", "k1"),
                    ("DD_APP_KEY", "a1"),
                    ("DD_SITE", "datadoghq.eu"),
                ],
                None,
                "https://api.datadoghq.eu",
                "k1",
                "a1",
            ),
            (
                &[("DD_SITE", "datadoghq.eu")],
                Some("https://legacy.example"),
                "https://legacy.example",
                "",
                "",
            ),
            (
                &[
                    ("DD_API_KEY", "k1"),
                    ("DD_APP_KEY", "a1"),
                    ("DD_EXTERNAL_METRICS_PROVIDER_API_KEY", "k2"),
                    ("DD_EXTERNAL_METRICS_PROVIDER_APP_KEY", "a2"),
                    (
                        "DD_EXTERNAL_METRICS_PROVIDER_ENDPOINT",
                        "http://10.0.0.1:8080/",
                    ),
                ],
                Some("https://legacy.example"),
                "http://10.0.0.1:8080",
                "k2",
                "a2",
            ),
        ];
        for (env, host, base, api, app) in cases {
            let c = ClientConfig::from_settings_and_host(&load(env), *host).unwrap();
            assert_eq!(c.base_url, *base, "{env:?}");
            assert_eq!(c.api_key.expose(), *api, "{env:?}");
            assert_eq!(c.app_key.expose(), *app, "{env:?}");
            assert_eq!(c.retry_budget, DEFAULT_RETRY_BUDGET);
            assert!(c.use_env_proxy);
        }
        let err = ClientConfig::from_settings_and_host(
            &load(&[("DD_EXTERNAL_METRICS_PROVIDER_ENDPOINT", "nope")]),
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("external_metrics_provider.endpoint"),
            "{err}"
        );
    }

    #[test]
    fn bad_base_urls() {
        // (endpoint, DATADOG_HOST, origin named in the error, words in the reason)
        let cases: &[(Option<&str>, Option<&str>, &str, &str)] = &[
            (
                Some("api.datadoghq.eu"),
                None,
                "external_metrics_provider.endpoint",
                "absolute URL",
            ),
            (
                Some("ftp://x.example"),
                None,
                "external_metrics_provider.endpoint",
                "scheme",
            ),
            (None, Some("unix:/tmp/sock"), "DATADOG_HOST", "scheme"),
            (
                Some("https://x.example/?a=b"),
                None,
                "external_metrics_provider.endpoint",
                "query",
            ),
            (
                Some("https://u:p@x.example"),
                None,
                "external_metrics_provider.endpoint",
                "credentials",
            ),
            (None, Some("https://"), "DATADOG_HOST", ""),
        ];
        for (endpoint, host, origin, words) in cases {
            let err = resolve_base_url(*endpoint, *host, "datadoghq.com").unwrap_err();
            let ClientError::InvalidEndpoint {
                origin: got_origin,
                reason,
                ..
            } = &err
            else {
                panic!("{err:?}");
            };
            assert_eq!(got_origin, origin, "{endpoint:?} {host:?}");
            assert!(reason.contains(words), "{reason}");
        }
    }

    #[test]
    fn blame_vectors() {
        let status = |code: u16| ClientError::Status {
            status: StatusCode::from_u16(code).unwrap(),
            body: String::new(),
        };
        let cases: &[(ClientError, bool)] = &[
            (status(400), true),
            (status(413), true),
            (status(414), true),
            (status(422), true),
            (
                ClientError::Response(ResponseError::Api("bad".into())),
                true,
            ),
            (status(404), false),
            (status(408), false),
            (status(500), false),
            (status(502), false),
            (status(503), false),
            (
                ClientError::Response(ResponseError::Decode(Cause::msg("eof"))),
                false,
            ),
            (ClientError::Transport(Cause::msg("reset")), false),
            (
                ClientError::RateLimited {
                    body: String::new(),
                },
                false,
            ),
            (
                ClientError::Forbidden {
                    status: StatusCode::FORBIDDEN,
                    body: String::new(),
                },
                false,
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.blames_queries(), *want, "{err:?}");
        }
    }

    #[test]
    fn error_texts_match_go() {
        let e = ClientError::Status {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: r#"{"errors":["Internal Server Error"]}"#.into(),
        };
        assert_eq!(
            e.to_string(),
            r#"API error 500 Internal Server Error: {"errors":["Internal Server Error"]}"#
        );
        let e = ClientError::RateLimited { body: "{}".into() };
        assert!(e.to_string().contains("429 Too Many Requests"));
        let e = ClientError::from(ResponseError::Api("boom".into()));
        assert_eq!(e.to_string(), "API returned error: boom");
    }

    #[test]
    fn excerpt_vectors() {
        assert_eq!(excerpt(b"  short \n"), "short");
        let long = "é".repeat(400); // 800 bytes
        let got = excerpt(long.as_bytes());
        assert!(got.ends_with("… (800 bytes)"), "{got}");
        assert!(got.len() <= MAX_ERROR_BODY_CHARS + 20);
        assert_eq!(excerpt(&[0xff, b'a']), "\u{fffd}a");
    }

    #[test]
    fn missing_or_bad_keys_are_refused_without_showing_them() {
        let cases: &[(&str, &str, &str)] = &[
            ("", "app", "missing the api/app key pair"),
            ("api", "  ", "missing the api/app key pair"),
            ("ap\ni-secret", "app", "API key contains characters"),
            (
                "api",
                "app\u{7f}secret",
                "application key contains characters",
            ),
        ];
        for (api, app, want) in cases {
            let err = DatadogClient::new(ClientConfig::new(
                "http://127.0.0.1:1",
                Secret::new(*api),
                Secret::new(*app),
            ))
            .unwrap_err();
            let text = err.to_string();
            assert!(text.contains(want), "{text}");
            assert!(!text.contains("secret"), "{text}");
        }
    }

    #[test]
    fn query_url_escapes_like_go() {
        let client = DatadogClient::new(ClientConfig::new(
            "http://127.0.0.1:1/base/",
            Secret::new("k"),
            Secret::new("a"),
        ))
        .unwrap();
        assert_eq!(client.base_url(), "http://127.0.0.1:1/base");
        assert_eq!(
            client.query_url(
                100,
                400,
                &["avg:a{x:y}.rollup(30)".into(), "sum:b{*}".into()]
            ),
            "http://127.0.0.1:1/base/api/v1/query?from=100&to=400&query=avg%3Aa%7Bx%3Ay%7D.rollup%2830%29%2Csum%3Ab%7B%2A%7D"
        );
        let debug = format!("{client:?}");
        assert!(!debug.contains("DD-API-KEY"), "{debug}");
    }

    #[test]
    fn tls_config_with_extra_ca() {
        let ca = rcgen::generate_simple_self_signed(vec!["dd.test".to_owned()]).unwrap();
        let pem = ca.cert.pem();
        let config = tls_config(Some(pem.as_bytes())).unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        // Bundles of several certificates are fine.
        let two = format!("{pem}{pem}");
        assert!(tls_config(Some(two.as_bytes())).is_ok());
        // No certificate or a broken one is an error, not a silent no-op.
        for bad in [&b""[..], b"not pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n"] {
            assert!(
                matches!(tls_config(Some(bad)), Err(ClientError::Tls(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(tls_config(None).is_ok());
    }

    #[test]
    fn user_agent_names_the_product_and_version() {
        let ua = user_agent();
        assert!(ua.starts_with("Datadog-Cluster-Agent/"), "{ua}");
        assert!(ua.ends_with(crate::version::VERSION));
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(1000));
            assert!(d >= Duration::from_millis(750) && d <= Duration::from_millis(1250));
        }
    }
}
