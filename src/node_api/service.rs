//! The node-agent API's handler: the token check first (a refused request never reaches a
//! route), then the route.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::request::Parts;
use http::{Method, StatusCode};
use serde::Serialize;

use crate::apiserver::response::{Body, ResponseFuture, json_response};
use crate::apiserver::seams::Answer;
use crate::apiserver::server::Handler;
use crate::apiserver::telemetry::RouteTelemetry;
use crate::config::LogLevel;
use crate::config::Secret;
use crate::health::Health;
use crate::logging::LoggingHandle;
use crate::node_api::cluster_id::{ClusterIdError, ClusterIdSource};
use crate::node_api::metadata::{self, MetadataSource};
use crate::node_api::{auth, go_error};
use crate::status::StatusSource;
use crate::tls::PeerIdentity;

#[derive(Clone)]
pub(crate) struct NodeApiService {
    shared: Arc<Shared>,
}

struct Shared {
    /// The node agents' token.
    token: Secret,
    /// Our own CLI's token (`auth_token_file_path`).
    local_token: Secret,
    version: Bytes,
    cluster_id: Arc<dyn ClusterIdSource>,
    metadata: Arc<dyn MetadataSource>,
    host_alias_annotations: Vec<String>,
    telemetry: RouteTelemetry,
    introspection: Introspection,
}

/// What the internal routes report of the agent itself.
pub(crate) struct Introspection {
    /// `/status/health`.
    pub(crate) health: Arc<Health>,
    /// `/status`.
    pub(crate) status: StatusSource,
    /// `/config/log_level`, `/flare/logs`.
    pub(crate) log_level: LoggingHandle,
    /// `/explain/<ns>/<hpa>`; `None` without external metrics.
    pub(crate) explain: Option<crate::explain::ExplainSource>,
}

/// An answer known within `call`, or one that must wait for the cluster id.
enum Reply {
    /// With its `handler` label.
    Now(&'static str, http::Response<Body>),
    ClusterIdLater,
}

const CLUSTER_ID_PATH: &str = "/api/v1/cluster/id";
const CLUSTER_ID_HANDLER: &str = "getClusterID";
const HEALTH_PATH: &str = "/status/health";
const STATUS_PATH: &str = "/status";
const LOG_LEVEL_PATH: &str = "/config/log_level";
const FLARE_LOGS_PATH: &str = "/flare/logs";
const EXPLAIN_PREFIX: &str = "/explain/";

/// `pkg/version.Version`: Go has no json tags on it, hence the capitalised keys, which node
/// agents read to pick their calls (bulk pod tags from 1.3, namespace metadata from 7.55).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Version<'a> {
    major: u64,
    minor: u64,
    patch: u64,
    pre: &'a str,
    meta: &'a str,
    commit: &'a str,
}

/// The parts of a semantic version string after the numbers: `-pre` and `+meta`.
fn pre_and_meta(version: &str) -> (&str, &str) {
    let (rest, meta) = version.split_once('+').unwrap_or((version, ""));
    let pre = rest.split_once('-').map_or("", |(_, pre)| pre);
    (pre, meta)
}

fn version_json() -> Bytes {
    let (major, minor, patch) = crate::version::parts();
    let (pre, meta) = pre_and_meta(crate::version::VERSION);
    let version = Version {
        major,
        minor,
        patch,
        pre,
        meta,
        commit: crate::version::COMMIT,
    };
    // Integers and strings always serialise; the fallback keeps this total.
    Bytes::from(serde_json::to_vec(&version).unwrap_or_else(|_| b"{}".to_vec()))
}

impl NodeApiService {
    pub(crate) fn new(
        token: Secret,
        local_token: Secret,
        cluster_id: Arc<dyn ClusterIdSource>,
        metadata: Arc<dyn MetadataSource>,
        host_alias_annotations: Vec<String>,
        telemetry: RouteTelemetry,
        introspection: Introspection,
    ) -> Self {
        NodeApiService {
            shared: Arc::new(Shared {
                token,
                local_token,
                version: version_json(),
                cluster_id,
                metadata,
                host_alias_annotations,
                telemetry,
                introspection,
            }),
        }
    }

    fn respond(&self, parts: &Parts) -> Reply {
        let head = parts.method == Method::HEAD;
        if parts.uri.path() == CLUSTER_ID_PATH
            && parts.method == Method::GET
            && self.authenticate(parts).is_ok()
        {
            // A deferred answer is dropped unstarted and asked again in the request's future.
            return match self.shared.cluster_id.cluster_id() {
                Answer::Ready(id) => Reply::Now(CLUSTER_ID_HANDLER, cluster_id_response(id)),
                Answer::Later(_) => Reply::ClusterIdLater,
            };
        }
        let (handler, response) = self.respond_now(parts, head);
        Reply::Now(handler, response)
    }

    /// External paths take the node agents' token or ours (the CLI reads a node's pods
    /// too); internal ones only ours. A wrong token is refused before any route runs.
    fn authenticate(&self, parts: &Parts) -> Result<(), auth::Refusal> {
        let node_agents = self.shared.token.expose().as_bytes();
        let local = self.shared.local_token.expose().as_bytes();
        match auth::classify(parts.uri.path()) {
            auth::PathClass::External => auth::check(&parts.headers, &[node_agents, local]),
            auth::PathClass::Internal => auth::check(&parts.headers, &[local]),
        }
    }

    /// The answer, and the `handler` label it is counted under.
    fn respond_now(&self, parts: &Parts, head: bool) -> (&'static str, http::Response<Body>) {
        let route = metadata::parse(parts.uri.path());
        let handler = handler_name(route, parts.uri.path());
        (handler, self.answer(parts, route, head))
    }

    fn answer(
        &self,
        parts: &Parts,
        route: Option<metadata::MetadataRoute<'_>>,
        head: bool,
    ) -> http::Response<Body> {
        if let Err(refusal) = self.authenticate(parts) {
            tracing::debug!(
                refusal = refusal.kind(),
                path = parts.uri.path(),
                "node-agent request refused"
            );
            return refusal.response(head);
        }
        if let Some(route) = route {
            return if parts.method == Method::GET {
                metadata::answer(
                    &*self.shared.metadata,
                    route,
                    &self.shared.host_alias_annotations,
                )
            } else {
                method_not_allowed(head)
            };
        }
        match parts.uri.path() {
            "/version" if parts.method == Method::GET => {
                json_response(StatusCode::OK, self.shared.version.clone(), false)
            }
            // Every component, as the `health` command shows them; 200 either way, as Go.
            HEALTH_PATH if parts.method == Method::GET => {
                let status = self.shared.introspection.health.all();
                let body = serde_json::to_vec(&status).unwrap_or_else(|_| b"{}".to_vec());
                json_response(StatusCode::OK, Bytes::from(body), false)
            }
            // The `status` command's report: JSON, or the text it prints (uncoloured).
            STATUS_PATH if parts.method == Method::GET => {
                let status = (self.shared.introspection.status)();
                if parts.uri.query().is_some_and(wants_text) {
                    let mut response = json_response(
                        StatusCode::OK,
                        Bytes::from(crate::status::render(&status, false)),
                        false,
                    );
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                    response
                } else {
                    let body = serde_json::to_vec(&status).unwrap_or_else(|_| b"{}".to_vec());
                    json_response(StatusCode::OK, Bytes::from(body), false)
                }
            }
            // `config get log_level` / `config set log_level <level>` (the level in the
            // query: our server reads no request bodies).
            LOG_LEVEL_PATH if parts.method == Method::GET => {
                log_level_json(self.shared.introspection.log_level.get())
            }
            LOG_LEVEL_PATH if parts.method == Method::POST => {
                let handle = &self.shared.introspection.log_level;
                let asked = parts.uri.query().and_then(query_value);
                match asked.as_deref().map(LogLevel::parse) {
                    None => go_error(
                        StatusCode::BAD_REQUEST,
                        "missing ?value=<level> (trace, debug, info, warn, error, critical, off)",
                        head,
                    ),
                    Some(Err(e)) => go_error(StatusCode::BAD_REQUEST, &e, head),
                    Some(Ok(level)) => match handle.set(level) {
                        Ok(()) => {
                            tracing::info!(level = level.as_filter(), "log level changed");
                            log_level_json(level)
                        }
                        Err(e) => go_error(StatusCode::INTERNAL_SERVER_ERROR, &e, head),
                    },
                }
            }
            // The recent log for `flare`, scrubbed before it leaves the process.
            FLARE_LOGS_PATH if parts.method == Method::GET => {
                let text = crate::scrub::scrub(&self.shared.introspection.log_level.tail().text());
                let mut response = json_response(StatusCode::OK, Bytes::from(text), false);
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                response
            }
            path if path.starts_with(EXPLAIN_PREFIX) => {
                if parts.method == Method::GET {
                    self.explain(&path[EXPLAIN_PREFIX.len()..], head)
                } else {
                    method_not_allowed(head)
                }
            }
            // gorilla/mux answers a known path with another method 405, without a body.
            "/version" | CLUSTER_ID_PATH | HEALTH_PATH | STATUS_PATH | LOG_LEVEL_PATH
            | FLARE_LOGS_PATH => method_not_allowed(head),
            _ => go_error(StatusCode::NOT_FOUND, "404 page not found", head),
        }
    }
}

impl NodeApiService {
    /// `<ns>/<hpa>`: the explanation as JSON, or a plain-text 404 that says what is missing.
    fn explain(&self, rest: &str, head: bool) -> http::Response<Body> {
        let Some(explain) = &self.shared.introspection.explain else {
            return go_error(
                StatusCode::NOT_FOUND,
                "external metrics are off (external_metrics_provider.enabled)",
                head,
            );
        };
        let Some((namespace, name)) = rest
            .split_once('/')
            .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
        else {
            return go_error(
                StatusCode::BAD_REQUEST,
                "expected /explain/<namespace>/<hpa>",
                head,
            );
        };
        match explain(namespace, name) {
            Some(explanation) => {
                let body = serde_json::to_vec(&explanation).unwrap_or_else(|_| b"{}".to_vec());
                json_response(StatusCode::OK, Bytes::from(body), false)
            }
            None => go_error(
                StatusCode::NOT_FOUND,
                &format!(
                    "no HorizontalPodAutoscaler {namespace}/{name} asks this agent for an External metric (is its name right, and does it have an External metric?)"
                ),
                head,
            ),
        }
    }
}

impl Handler for NodeApiService {
    fn start(
        &self,
        parts: Parts,
        _peer: impl FnOnce(&Parts) -> Arc<PeerIdentity>,
    ) -> ResponseFuture {
        let started = Instant::now();
        match self.respond(&parts) {
            Reply::Now(handler, response) => {
                finish(&self.shared.telemetry, handler, &parts, &response, started);
                ResponseFuture::ready(response)
            }
            Reply::ClusterIdLater => {
                let shared = Arc::clone(&self.shared);
                ResponseFuture::pending(async move {
                    let response = cluster_id_response(shared.cluster_id.cluster_id().wait().await);
                    finish(
                        &shared.telemetry,
                        CLUSTER_ID_HANDLER,
                        &parts,
                        &response,
                        started,
                    );
                    response
                })
            }
        }
    }
}

/// `{"log_level":"debug"}`.
fn log_level_json(level: LogLevel) -> http::Response<Body> {
    let body = serde_json::json!({ "log_level": level.as_filter() }).to_string();
    json_response(StatusCode::OK, Bytes::from(body), false)
}

/// The `value` of a query (`value=debug`), percent-decoding nothing: levels are plain words.
fn query_value(query: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("value="))
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// `format=text` among the query's pairs (anything else is JSON, the default).
fn wants_text(query: &str) -> bool {
    query.split('&').any(|pair| pair == "format=text")
}

/// gorilla/mux answers a known path with another method 405, without a body.
fn method_not_allowed(head: bool) -> http::Response<Body> {
    let mut response = go_error(StatusCode::METHOD_NOT_ALLOWED, "", head);
    *response.body_mut() = Body::new(Bytes::new());
    response
}

/// The `handler` label of a request: the name of the Go DCA's handler for its route (a
/// refused request counts under the route it asked for, a path of none as `unknown`).
fn handler_name(route: Option<metadata::MetadataRoute<'_>>, path: &str) -> &'static str {
    use metadata::MetadataRoute as R;
    match route {
        Some(R::AllPods) => "getAllMetadata",
        Some(R::PodsOfNode(_)) => "getPodMetadataForNode",
        Some(R::PodTags { .. }) => "getPodMetadata",
        Some(R::NodeLabels(_)) => "getNodeLabels",
        Some(R::NodeAnnotations(_)) => "getNodeAnnotations",
        Some(R::NamespaceLabels(_)) => "getNamespaceLabels",
        Some(R::NamespaceMetadata(_)) => "getNamespaceMetadata",
        None if path == "/version" => "getVersion",
        None if path == CLUSTER_ID_PATH => CLUSTER_ID_HANDLER,
        None if path == HEALTH_PATH => "getHealth",
        None if path == STATUS_PATH => "getStatus",
        None if path == LOG_LEVEL_PATH => "configLogLevel",
        None if path == FLARE_LOGS_PATH => "getFlareLogs",
        None if path.starts_with(EXPLAIN_PREFIX) => "explainHPA",
        None => "unknown",
    }
}

fn finish(
    telemetry: &RouteTelemetry,
    handler: &'static str,
    parts: &Parts,
    response: &http::Response<Body>,
    started: Instant,
) {
    telemetry.record(handler, response.status(), started.elapsed());
    tracing::debug!(
        method = %parts.method,
        path = parts.uri.path(),
        status = response.status().as_u16(),
        "node-agent request"
    );
}

/// A JSON string, as Go's `json.Marshal(clusterID)`; an error is Go's plain-text 500.
fn cluster_id_response(id: Result<Arc<str>, ClusterIdError>) -> http::Response<Body> {
    match id {
        Ok(id) => {
            let body = serde_json::to_vec(&*id).unwrap_or_else(|_| b"\"\"".to_vec());
            json_response(StatusCode::OK, Bytes::from(body), false)
        }
        Err(error) => {
            let line = crate::error::chain_line(&error);
            tracing::warn!(error = %line, "cannot answer the cluster id");
            go_error(StatusCode::INTERNAL_SERVER_ERROR, &line, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use http::Request;
    use http_body_util::BodyExt;

    use super::*;

    const TOKEN: &str = "e2eTokenForTheClusterAgent0123456789abcdef";
    const LOCAL: &str = "localTokenOfOurOwnCommandLine0123456789";
    const UID: &str = "94e43011-177b-11ea-a4fe-42010a8401d2";

    /// The cluster id at once, later (as on the first request), or an error; counts asks
    /// and starts.
    struct FixedId {
        later: bool,
        fail: bool,
        asked: std::sync::atomic::AtomicUsize,
        started: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl FixedId {
        fn new(later: bool, fail: bool) -> Arc<Self> {
            Arc::new(FixedId {
                later,
                fail,
                asked: Default::default(),
                started: Default::default(),
            })
        }
    }

    impl ClusterIdSource for FixedId {
        fn cluster_id(&self) -> Answer<'_, Result<Arc<str>, ClusterIdError>> {
            use std::sync::atomic::Ordering::SeqCst;
            self.asked.fetch_add(1, SeqCst);
            let value = if self.fail {
                Err(ClusterIdError::NoUid)
            } else {
                Ok(Arc::from(UID))
            };
            if !self.later {
                return Answer::ready(value);
            }
            let started = Arc::clone(&self.started);
            Answer::later(move || async move {
                started.fetch_add(1, SeqCst);
                value
            })
        }
    }

    /// The node and namespace answers are tested in `metadata`; here only their routing.
    struct NoMetadata;

    impl MetadataSource for NoMetadata {
        fn synced(&self) -> bool {
            true
        }
        fn node(&self, _: &str) -> Option<Arc<crate::node_api::metadata::NodeMeta>> {
            None
        }
        fn namespace(&self, _: &str) -> Option<Arc<crate::node_api::metadata::NamespaceMeta>> {
            None
        }
        fn node_names(&self) -> Vec<String> {
            Vec::new()
        }
        fn namespace_count(&self) -> usize {
            0
        }
        fn services(
            &self,
        ) -> Result<
            Arc<crate::node_api::service_map::ServiceMap>,
            crate::node_api::metadata::MapperUnavailable,
        > {
            Err(crate::node_api::metadata::MapperUnavailable::Disabled)
        }
    }

    thread_local! {
        /// One per test thread, so a test's `set` is seen by its own later calls.
        static LOG_LEVEL: LoggingHandle = LoggingHandle::detached(crate::config::LogLevel::Info);
    }

    /// A report with a pid the tests can look for.
    fn status() -> StatusSource {
        Arc::new(|| {
            let mut status = crate::status::Status::default();
            status.agent.version = "7.62.0".into();
            status.agent.pid = 4242;
            status
        })
    }

    /// One healthy component and one that is not.
    fn health() -> Arc<Health> {
        use crate::health::Gate;
        let health = Health::new();
        health.register("metadata-store", Gate::Readiness, Box::new(|| Ok(())));
        health.register(
            "datadog-api",
            Gate::Report,
            Box::new(|| Err("403 Forbidden".to_owned())),
        );
        health
    }

    fn call_with(
        ids: Arc<FixedId>,
        method: Method,
        path: &str,
        auth: Option<&str>,
    ) -> (StatusCode, String) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let (parts, ()) = request.body(()).unwrap().into_parts();
        let service = NodeApiService::new(
            Secret::new(TOKEN),
            Secret::new(LOCAL),
            ids,
            Arc::new(NoMetadata),
            Vec::new(),
            RouteTelemetry::unregistered(),
            Introspection {
                health: health(),
                status: status(),
                log_level: LOG_LEVEL.with(Clone::clone),
                explain: Some(Arc::new(|ns: &str, name: &str| {
                    (ns == "apps" && name == "orders").then(|| crate::explain::Explanation {
                        hpa: "apps/orders".into(),
                        ..Default::default()
                    })
                })),
            },
        );
        let response = futures::executor::block_on(
            service.start(parts, |_| Arc::new(PeerIdentity::Anonymous)),
        )
        .unwrap();
        let status = response.status();
        let body = futures::executor::block_on(response.into_body().collect())
            .unwrap()
            .to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    fn call(method: Method, path: &str, auth: Option<&str>) -> (StatusCode, String) {
        call_with(FixedId::new(false, false), method, path, auth)
    }

    #[test]
    fn requests_are_labelled_with_the_go_handlers_names() {
        let cases = [
            ("/version", "getVersion"),
            ("/api/v1/cluster/id", "getClusterID"),
            ("/api/v1/tags/pod", "getAllMetadata"),
            ("/api/v1/tags/pod/n1", "getPodMetadataForNode"),
            ("/api/v1/tags/pod/n1/shop/web-1", "getPodMetadata"),
            ("/api/v1/tags/node/n1", "getNodeLabels"),
            ("/api/v1/annotations/node/n1", "getNodeAnnotations"),
            ("/api/v1/tags/namespace/shop", "getNamespaceLabels"),
            ("/api/v1/metadata/namespace/shop", "getNamespaceMetadata"),
            ("/api/v1/tags/pod/n1/shop", "unknown"),
            ("/status/health", "getHealth"),
            ("/status", "getStatus"),
            ("/metrics", "unknown"),
        ];
        for (path, want) in cases {
            assert_eq!(handler_name(metadata::parse(path), path), want, "{path}");
        }
    }

    #[test]
    fn the_cluster_id_is_a_json_string_now_or_later() {
        use std::sync::atomic::Ordering::SeqCst;
        let auth = format!("Bearer {TOKEN}");
        for later in [false, true] {
            let ids = FixedId::new(later, false);
            let (status, body) =
                call_with(ids.clone(), Method::GET, "/api/v1/cluster/id", Some(&auth));
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::OK, format!("\"{UID}\"").as_str())
            );
            // Asked twice when it must wait (once within `call`, once in the future), but
            // its work started once.
            let want = if later { (2, 1) } else { (1, 0) };
            assert_eq!(
                (ids.asked.load(SeqCst), ids.started.load(SeqCst)),
                want,
                "{later}"
            );
        }
        let (status, body) = call_with(
            FixedId::new(true, true),
            Method::GET,
            "/api/v1/cluster/id",
            Some(&auth),
        );
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body, "the kube-system namespace has no UID\n");
        // Refused before the id is asked for.
        let ids = FixedId::new(true, false);
        let (status, _) = call_with(ids.clone(), Method::GET, "/api/v1/cluster/id", None);
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(ids.asked.load(SeqCst), 0);
    }

    #[test]
    fn version_answers_the_go_shape_to_a_good_token() {
        let (status, body) = call(Method::GET, "/version", Some(&format!("Bearer {TOKEN}")));
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let (major, minor, patch) = crate::version::parts();
        assert_eq!(v["Major"], major);
        assert_eq!(v["Minor"], minor);
        assert_eq!(v["Patch"], patch);
        assert_eq!(v["Commit"], crate::version::COMMIT);
        assert!(v["Pre"].is_string() && v["Meta"].is_string(), "{body}");
        // Node agents use the bulk and namespace-metadata calls only from 7.55.
        assert!(major >= 7 && minor >= 55, "{major}.{minor}");
    }

    /// No refused request reaches a route: every path, known or not, answers the refusal.
    #[test]
    fn the_token_is_checked_before_any_route() {
        for path in [
            "/version",
            "/api/v1/cluster/id",
            "/api/v1/tags/pod/node1",
            "/nothing",
        ] {
            for (auth, code, body) in [
                (None, 401, "no session token provided\n"),
                (
                    Some("Basic x"),
                    401,
                    "unsupported authorization scheme: Basic\n",
                ),
                (Some("Bearer wrong"), 403, "invalid session token\n"),
            ] {
                let (status, got) = call(Method::GET, path, auth);
                assert_eq!(
                    (status.as_u16(), got.as_str()),
                    (code, body),
                    "{path} {auth:?}"
                );
            }
        }
    }

    /// The Go DCA runs the handler of an internal path for a node agent's token after it
    /// has written a 403 (its double write); here the 403 is the whole answer.
    #[test]
    fn internal_paths_take_only_the_local_token_and_external_ones_either() {
        let node_agents = format!("Bearer {TOKEN}");
        let local = format!("Bearer {LOCAL}");
        let cases: &[(&str, &str, u16, &str)] = &[
            (
                "/api/v1/tags/pod",
                &node_agents,
                403,
                "invalid session token\n",
            ),
            (
                "/api/v1/clusterchecks",
                &node_agents,
                403,
                "invalid session token\n",
            ),
            ("/api/v1/clusterchecks", &local, 404, "404 page not found\n"),
            // The mapper is disabled in these tests: the route ran.
            (
                "/api/v1/tags/pod",
                &local,
                404,
                "{\"Errors\":\"the metadata mapper is disabled (kubernetes_collect_metadata_tags)\"}",
            ),
            ("/version", &local, 200, ""),
            ("/version", &node_agents, 200, ""),
            (
                "/status/health",
                &node_agents,
                403,
                "invalid session token\n",
            ),
            // Every component, the Report-only ones too, with the reasons.
            (
                "/status/health",
                &local,
                200,
                r#"{"Healthy":["metadata-store"],"Unhealthy":["datadog-api"],"Reasons":{"datadog-api":"403 Forbidden"}}"#,
            ),
            ("/status", &node_agents, 403, "invalid session token\n"),
            (
                "/status?format=text",
                &node_agents,
                403,
                "invalid session token\n",
            ),
        ];
        for (path, auth, code, want) in cases {
            let (status, body) = call(Method::GET, path, Some(auth));
            assert_eq!(status.as_u16(), *code, "{path} {body}");
            if !want.is_empty() {
                assert_eq!(body, *want, "{path}");
            }
        }
    }

    #[test]
    fn status_answers_json_or_the_text_report_behind_the_local_token() {
        let local = format!("Bearer {LOCAL}");
        let (code, body) = call(Method::GET, "/status", Some(&local));
        assert_eq!(code, StatusCode::OK, "{body}");
        let status: crate::status::Status = serde_json::from_str(&body).unwrap();
        assert_eq!(status.agent.pid, 4242);
        for query in ["", "?format=json", "?format=yaml"] {
            let (code, body) = call(Method::GET, &format!("/status{query}"), Some(&local));
            assert_eq!(code, StatusCode::OK, "{query}");
            assert!(body.starts_with('{'), "{query}: {body}");
        }
        let (code, text) = call(Method::GET, "/status?x=1&format=text", Some(&local));
        assert_eq!(code, StatusCode::OK);
        assert!(
            text.starts_with("===============================\nDatadog Cluster Agent (v7.62.0)\n"),
            "{text}"
        );
        assert!(text.contains("  Pid:          4242\n"), "{text}");
        let (code, body) = call(Method::POST, "/status", Some(&local));
        assert_eq!((code, body.as_str()), (StatusCode::METHOD_NOT_ALLOWED, ""));
    }

    #[test]
    fn the_log_level_is_read_and_changed_behind_the_local_token() {
        let local = format!("Bearer {LOCAL}");
        let node_agents = format!("Bearer {TOKEN}");
        let cases: &[(Method, &str, &str, u16, &str)] = &[
            (
                Method::GET,
                "/config/log_level",
                &local,
                200,
                r#"{"log_level":"info"}"#,
            ),
            (
                Method::POST,
                "/config/log_level?value=debug",
                &node_agents,
                403,
                "invalid session token\n",
            ),
            (
                Method::GET,
                "/config/log_level",
                &local,
                200,
                r#"{"log_level":"info"}"#,
            ),
            (
                Method::POST,
                "/config/log_level?value=loud",
                &local,
                400,
                "\"loud\" is not a log level (trace, debug, info, warn, error, critical, off)\n",
            ),
            (
                Method::POST,
                "/config/log_level",
                &local,
                400,
                "missing ?value=<level> (trace, debug, info, warn, error, critical, off)\n",
            ),
            (
                Method::POST,
                "/config/log_level?value=DEBUG",
                &local,
                200,
                r#"{"log_level":"debug"}"#,
            ),
            (
                Method::GET,
                "/config/log_level",
                &local,
                200,
                r#"{"log_level":"debug"}"#,
            ),
            (Method::PUT, "/config/log_level", &local, 405, ""),
        ];
        for (method, path, auth, code, want) in cases {
            let (status, body) = call(method.clone(), path, Some(auth));
            assert_eq!(
                (status.as_u16(), body.as_str()),
                (*code, *want),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn the_recent_log_is_served_scrubbed_behind_the_local_token() {
        LOG_LEVEL.with(|handle| {
            handle
                .tail()
                .push(b"request Authorization: Bearer e2eTokenForTheClusterAgent0123456789\n");
        });
        let (code, body) = call(Method::GET, "/flare/logs", Some(&format!("Bearer {LOCAL}")));
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body, "request Authorization: Bearer ********\n");
        let (code, _) = call(Method::GET, "/flare/logs", Some(&format!("Bearer {TOKEN}")));
        assert_eq!(code, StatusCode::FORBIDDEN);
    }

    #[test]
    fn explain_answers_the_hpa_or_says_what_is_missing() {
        let local = format!("Bearer {LOCAL}");
        let (code, body) = call(Method::GET, "/explain/apps/orders", Some(&local));
        assert_eq!(code, StatusCode::OK, "{body}");
        let e: crate::explain::Explanation = serde_json::from_str(&body).unwrap();
        assert_eq!(e.hpa, "apps/orders");
        let cases = [
            (
                "/explain/apps/web",
                404,
                "no HorizontalPodAutoscaler apps/web asks this agent",
            ),
            ("/explain/apps", 400, "expected /explain/<namespace>/<hpa>"),
            (
                "/explain/apps/orders/x",
                400,
                "expected /explain/<namespace>/<hpa>",
            ),
        ];
        for (path, code, want) in cases {
            let (status, body) = call(Method::GET, path, Some(&local));
            assert_eq!(status.as_u16(), code, "{path}");
            assert!(body.starts_with(want), "{path}: {body}");
        }
        let (code, _) = call(
            Method::GET,
            "/explain/apps/orders",
            Some(&format!("Bearer {TOKEN}")),
        );
        assert_eq!(code, StatusCode::FORBIDDEN);
        let (code, _) = call(Method::POST, "/explain/apps/orders", Some(&local));
        assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn unknown_paths_and_methods_answer_as_gorilla_does() {
        let auth = format!("Bearer {TOKEN}");
        let (status, body) = call(
            Method::GET,
            "/api/v1/clusterchecks",
            Some(&format!("Bearer {LOCAL}")),
        );
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::NOT_FOUND, "404 page not found\n")
        );
        let (status, body) = call(Method::POST, "/version", Some(&auth));
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, "")
        );
        let (status, body) = call(Method::GET, "/api/v1/tags/node/n9", Some(&auth));
        assert_eq!(
            (status, body.as_str()),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "\"/nodes//n9\" not found\n"
            )
        );
        let (status, _) = call(Method::DELETE, "/api/v1/tags/node/n9", Some(&auth));
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        // kubernetes_collect_metadata_tags=false: the pod routes say so.
        let (status, body) = call(Method::GET, "/api/v1/tags/pod/n1", Some(&auth));
        assert_eq!(
            (status, body.as_str()),
            (
                StatusCode::NOT_FOUND,
                "the metadata mapper is disabled (kubernetes_collect_metadata_tags)\n"
            )
        );
    }

    #[test]
    fn version_suffixes() {
        for (version, want) in [
            ("7.62.0", ("", "")),
            ("7.62.0-rc.1", ("rc.1", "")),
            ("7.62.0+git.5", ("", "git.5")),
            ("7.62.0-devel+git.5.abc", ("devel", "git.5.abc")),
        ] {
            assert_eq!(pre_and_meta(version), want, "{version}");
        }
    }
}
