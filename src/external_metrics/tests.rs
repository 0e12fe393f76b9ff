//! Service-level tests: the hyper service called directly with fake authentication and
//! authorization and the in-memory source, plus one end-to-end run over real TLS.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{
    ACCEPT, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_NONE_MATCH,
    VARY,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::watch;

use crate::apiserver::response::Body;
use crate::apiserver::seams::{
    self as api, Authentication, Authenticator, Authorizer, Decision, Readiness, RequestAttributes,
    UserInfo,
};
use crate::external_metrics::api::{MetricError, MetricValues};
use crate::external_metrics::memory::InMemorySource;
use crate::external_metrics::service::{ExternalMetricsService, ServiceParts};
use crate::external_metrics::types::MetricValue;
use crate::tls::PeerIdentity;

const BASE: &str = "/apis/external.metrics.k8s.io/v1beta1";
const HPA_ACCEPT: &str = "application/vnd.kubernetes.protobuf, */*";
const V2_ACCEPT: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Bearer `good` is bob, `bad` is rejected, `error` fails; no token is anonymous. Records
/// every call with the TLS identity it was given.
#[derive(Default)]
struct FakeAuthenticator {
    calls: Mutex<Vec<PeerIdentity>>,
}

impl Authenticator for FakeAuthenticator {
    fn authenticate<'a>(
        &'a self,
        peer: &'a PeerIdentity,
        headers: &'a HeaderMap,
    ) -> api::Answer<'a, Authentication> {
        self.calls.lock().unwrap().push(peer.clone());
        let token = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let result = match (token, peer) {
            (_, PeerIdentity::Certificate { common_name, .. }) => {
                Authentication::User(Arc::new(UserInfo {
                    name: common_name.clone(),
                    ..UserInfo::default()
                }))
            }
            (Some("good"), _) => Authentication::User(Arc::new(UserInfo {
                name: "bob".into(),
                groups: vec!["system:authenticated".into()],
                ..UserInfo::default()
            })),
            (Some("error"), _) => Authentication::Error("TokenReview unreachable".into()),
            (Some(_), _) => Authentication::Rejected("token not recognised".into()),
            (None, _) => Authentication::User(Arc::new(UserInfo::anonymous())),
        };
        api::Answer::ready(result)
    }
}

/// Allows everyone except `system:anonymous` (denied with a reason) and `mallory` (the
/// backend errors); records every review.
#[derive(Default)]
struct FakeAuthorizer {
    reviews: Mutex<Vec<(String, RequestAttributes<'static>)>>,
}

impl Authorizer for FakeAuthorizer {
    fn authorize<'a>(
        &'a self,
        user: &'a UserInfo,
        attributes: &'a RequestAttributes<'a>,
    ) -> api::Answer<'a, Decision> {
        self.reviews
            .lock()
            .unwrap()
            .push((user.name.clone(), attributes.clone().into_owned()));
        let decision = match user.name.as_str() {
            "system:anonymous" => Decision::Deny(String::new()),
            "mallory" => Decision::Error("SubjectAccessReview: connection refused".into()),
            _ => Decision::Allow,
        };
        api::Answer::ready(decision)
    }
}

struct Harness {
    service: ExternalMetricsService,
    source: Arc<InMemorySource>,
    authn: Arc<FakeAuthenticator>,
    authz: Arc<FakeAuthorizer>,
    ready: Vec<watch::Sender<Readiness>>,
}

fn ready() -> Readiness {
    Readiness {
        ready: true,
        reason: String::new(),
    }
}

fn harness() -> Harness {
    let source = Arc::new(InMemorySource::new());
    let authn = Arc::new(FakeAuthenticator::default());
    let authz = Arc::new(FakeAuthorizer::default());
    let (auth_tx, auth_rx) = watch::channel(ready());
    let (store_tx, store_rx) = watch::channel(ready());
    let service = ExternalMetricsService::new(ServiceParts {
        authenticator: authn.clone(),
        authorizer: authz.clone(),
        source: source.clone(),
        readiness: vec![auth_rx, store_rx],
    });
    Harness {
        service,
        source,
        authn,
        authz,
        ready: vec![auth_tx, store_tx],
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: http::header::HeaderName) -> &str {
        self.headers
            .get(&name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    fn assert_status(&self, code: u16, reason: &str) {
        assert_eq!(self.status.as_u16(), code, "{}", self.body);
        let v = self.json();
        assert_eq!(v["kind"], "Status", "{}", self.body);
        assert_eq!(v["code"], code);
        assert_eq!(v["reason"], reason);
        assert_eq!(self.header(CONTENT_TYPE), "application/json");
    }
}

async fn collect(response: Response<Body>) -> Answer {
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

impl Harness {
    async fn send(&self, request: Request<()>) -> Answer {
        collect(self.service.handle(request).await).await
    }

    async fn get(&self, uri: &str) -> Answer {
        self.send(authed(Method::GET, uri).body(()).unwrap()).await
    }

    fn reviews(&self) -> Vec<(String, RequestAttributes<'static>)> {
        self.authz.reviews.lock().unwrap().clone()
    }

    fn authentications(&self) -> usize {
        self.authn.calls.lock().unwrap().len()
    }
}

fn authed(method: Method, uri: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(AUTHORIZATION, "Bearer good")
}

fn metric_uri(ns: &str, metric: &str, selector: Option<&str>) -> String {
    match selector {
        Some(s) => format!("{BASE}/namespaces/{ns}/{metric}?labelSelector={s}"),
        None => format!("{BASE}/namespaces/{ns}/{metric}"),
    }
}

#[tokio::test]
async fn metric_with_matching_series_is_200_with_items() {
    let h = harness();
    h.source.upsert(MetricValue {
        metric_name: "nginx.net.request_per_s".into(),
        metric_labels: labels(&[("app", "web")]),
        timestamp: 1_634_726_897,
        window_seconds: Some(60),
        value: 40.0,
    });
    h.source.set(
        "nginx.net.request_per_s",
        labels(&[("app", "api")]),
        7.5,
        1_634_726_897,
    );
    let answer = h
        .send(
            authed(
                Method::GET,
                &metric_uri("default", "nginx.net.request_per_s", Some("app%3Dweb")),
            )
            .header(ACCEPT, HPA_ACCEPT)
            .body(())
            .unwrap(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.header(CONTENT_TYPE), "application/json");
    assert_eq!(
        answer.body,
        r#"{"kind":"ExternalMetricValueList","apiVersion":"external.metrics.k8s.io/v1beta1","metadata":{},"items":[{"metricName":"nginx.net.request_per_s","metricLabels":{"app":"web"},"timestamp":"2021-10-20T10:48:17Z","window":60,"value":"40"}]}"#
    );

    // No selector means everything; a set-based selector in client-go's encoding works.
    let all = h
        .get(&metric_uri("default", "nginx.net.request_per_s", None))
        .await;
    assert_eq!(all.json()["items"].as_array().unwrap().len(), 2);
    let set_based = h
        .get(&metric_uri(
            "default",
            "nginx.net.request_per_s",
            Some("app+in+%28api%2Cdb%29"),
        ))
        .await;
    assert_eq!(set_based.json()["items"][0]["value"], "7500m");
}

#[tokio::test]
async fn metric_name_is_matched_case_insensitively() {
    let h = harness();
    h.source
        .set("Hpa.Staging.Request_Time", labels(&[]), 2.0, 0);
    let answer = h
        .get(&metric_uri("default", "hpa.staging.request_time", None))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.json()["items"][0]["metricName"],
        "Hpa.Staging.Request_Time"
    );
}

#[tokio::test]
async fn no_matching_series_is_an_empty_items_array() {
    let h = harness();
    h.source.set("m", labels(&[("app", "web")]), 1.0, 0);
    let answer = h.get(&metric_uri("default", "m", Some("app%3Ddb"))).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.ends_with(r#""items":[]}"#), "{}", answer.body);
}

#[tokio::test]
async fn bad_selector_is_400_with_the_parser_message() {
    let h = harness();
    h.source.set("m", labels(&[]), 1.0, 0);
    let answer = h
        .get(&metric_uri("default", "m", Some("app%3D%3D%3D")))
        .await;
    answer.assert_status(400, "BadRequest");
    let expected = crate::apimachinery::selector::parse("app===")
        .unwrap_err()
        .to_string();
    assert_eq!(answer.json()["message"], expected);

    let escape = h.get(&metric_uri("default", "m", Some("%zz"))).await;
    escape.assert_status(400, "BadRequest");
}

#[tokio::test]
async fn rejected_credentials_are_401() {
    let h = harness();
    let answer = h
        .send(
            Request::get(metric_uri("default", "m", None))
                .header(AUTHORIZATION, "Bearer bad")
                .body(())
                .unwrap(),
        )
        .await;
    answer.assert_status(401, "Unauthorized");
    assert_eq!(answer.json()["message"], "Unauthorized");
    assert!(
        h.reviews().is_empty(),
        "no SAR for an unauthenticated request"
    );
}

#[tokio::test]
async fn authentication_backend_failure_is_500() {
    let h = harness();
    let answer = h
        .send(
            Request::get(BASE)
                .header(AUTHORIZATION, "Bearer error")
                .body(())
                .unwrap(),
        )
        .await;
    answer.assert_status(500, "InternalError");
    assert_eq!(
        answer.json()["message"],
        "Internal error occurred: cannot authenticate the request"
    );
    assert!(!answer.body.contains("TokenReview"), "{}", answer.body);
}

#[tokio::test]
async fn denied_request_is_403_with_the_sar_attributes_kubernetes_uses() {
    let h = harness();
    let answer = h
        .send(
            Request::get(metric_uri("prod", "queue.depth", Some("app%3Dweb")))
                .body(())
                .unwrap(),
        )
        .await;
    answer.assert_status(403, "Forbidden");
    assert_eq!(
        answer.json()["message"],
        r#"queue.depth.external.metrics.k8s.io is forbidden: User "system:anonymous" cannot list resource "queue.depth" in API group "external.metrics.k8s.io" in the namespace "prod""#
    );
    assert_eq!(
        h.reviews(),
        vec![(
            "system:anonymous".to_owned(),
            RequestAttributes::Resource {
                verb: "list".into(),
                group: "external.metrics.k8s.io".into(),
                version: "v1beta1".into(),
                resource: "queue.depth".into(),
                namespace: "prod".into(),
            }
        )]
    );
}

#[tokio::test]
async fn discovery_paths_are_reviewed_as_non_resource_gets() {
    let h = harness();
    h.get(BASE).await;
    h.get("/apis").await;
    h.get("/openapi/v2").await;
    h.get("/nowhere").await;
    let paths: Vec<RequestAttributes> = h.reviews().into_iter().map(|(_, a)| a).collect();
    let non_resource = |path: &str| RequestAttributes::NonResource {
        verb: "get".into(),
        path: path.to_owned().into(),
    };
    assert_eq!(
        paths,
        vec![
            non_resource(BASE),
            non_resource("/apis"),
            non_resource("/openapi/v2"),
            non_resource("/nowhere"),
        ]
    );
    let denied = h.send(Request::get("/apis").body(()).unwrap()).await;
    denied.assert_status(403, "Forbidden");
    assert_eq!(
        denied.json()["message"],
        r#"forbidden: User "system:anonymous" cannot get path "/apis""#
    );
}

#[tokio::test]
async fn authorization_backend_failure_is_500() {
    let h = harness();
    let peer = PeerIdentity::Certificate {
        bundle: "requestheader".into(),
        common_name: "mallory".into(),
        organizations: vec![],
    };
    let mut request = Request::get(BASE).body(()).unwrap();
    request.extensions_mut().insert(Arc::new(peer));
    let answer = h.send(request).await;
    answer.assert_status(500, "InternalError");
    assert!(
        answer.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("Internal error occurred: cannot authorize the request"),
        "{}",
        answer.body
    );
}

#[tokio::test]
async fn the_tls_identity_reaches_the_authenticator() {
    let h = harness();
    let peer = PeerIdentity::Certificate {
        bundle: "requestheader".into(),
        common_name: "front-proxy-client".into(),
        organizations: vec!["system:masters".into()],
    };
    let mut request = Request::get(BASE).body(()).unwrap();
    request.extensions_mut().insert(Arc::new(peer.clone()));
    assert_eq!(h.send(request).await.status, StatusCode::OK);
    assert_eq!(h.authn.calls.lock().unwrap().as_slice(), &[peer]);
    // Without an identity in the extensions the request is anonymous at the TLS level.
    h.get(BASE).await;
    assert_eq!(h.authn.calls.lock().unwrap()[1], PeerIdentity::Anonymous);
}

#[tokio::test]
async fn unknown_paths_are_404_after_authorization() {
    let h = harness();
    for path in [
        "/",
        "/api/v1",
        "/apis/metrics.k8s.io/v1beta1",
        &format!("{BASE}/m"),
        &format!("{BASE}/namespaces/default"),
        &format!("{BASE}/namespaces/default/group/m"),
        &format!("{BASE}/namespaces/default/a%2Fb"),
    ] {
        let answer = h.get(path).await;
        answer.assert_status(404, "NotFound");
        assert_eq!(
            answer.json()["message"],
            "the server could not find the requested resource"
        );
    }
    // Anonymous callers learn nothing about which paths exist.
    let anonymous = h.send(Request::get("/nowhere").body(()).unwrap()).await;
    anonymous.assert_status(403, "Forbidden");
}

#[tokio::test]
async fn unknown_metric_is_404() {
    let h = harness();
    let answer = h.get(&metric_uri("default", "missing.metric", None)).await;
    answer.assert_status(404, "NotFound");
    assert_eq!(
        answer.json()["message"],
        "the server could not find the metric missing.metric in namespace default"
    );
}

#[tokio::test]
async fn watch_is_405_and_reviewed_as_watch() {
    let h = harness();
    h.source.set("m", labels(&[]), 1.0, 0);
    for query in ["watch=true", "watch=1", "watch"] {
        let answer = h.get(&format!("{BASE}/namespaces/default/m?{query}")).await;
        answer.assert_status(405, "MethodNotAllowed");
    }
    let (_, attributes) = h.reviews().pop().unwrap();
    assert!(
        matches!(attributes, RequestAttributes::Resource { ref verb, .. } if verb == "watch"),
        "{attributes:?}"
    );
    let not_watch = h
        .get(&format!("{BASE}/namespaces/default/m?watch=false"))
        .await;
    assert_eq!(not_watch.status, StatusCode::OK);
}

#[tokio::test]
async fn other_methods_are_405_on_known_paths_and_404_elsewhere() {
    let h = harness();
    h.source.set("m", labels(&[]), 1.0, 0);
    for (method, path) in [
        (Method::POST, metric_uri("default", "m", None)),
        (Method::DELETE, metric_uri("default", "m", None)),
        (Method::PUT, BASE.to_owned()),
        (Method::POST, "/apis".to_owned()),
        (Method::PATCH, "/openapi/v2".to_owned()),
        (Method::POST, "/healthz".to_owned()),
    ] {
        let answer = h
            .send(authed(method.clone(), &path).body(()).unwrap())
            .await;
        answer.assert_status(405, "MethodNotAllowed");
        assert_eq!(answer.header(ALLOW), "GET, HEAD", "{method} {path}");
    }
    let verbs: Vec<String> = h
        .reviews()
        .into_iter()
        .map(|(_, a)| match a {
            RequestAttributes::Resource { verb, .. }
            | RequestAttributes::NonResource { verb, .. } => verb.into_owned(),
        })
        .collect();
    assert_eq!(
        verbs,
        ["create", "deletecollection", "put", "post", "patch"]
    );
    let elsewhere = h
        .send(authed(Method::POST, "/nowhere").body(()).unwrap())
        .await;
    elsewhere.assert_status(404, "NotFound");
}

#[tokio::test]
async fn unacceptable_media_types_are_406() {
    let h = harness();
    h.source.set("m", labels(&[]), 1.0, 0);
    for path in [
        metric_uri("default", "m", None),
        BASE.into(),
        "/apis".into(),
        "/openapi/v2".into(),
    ] {
        for accept in ["application/vnd.kubernetes.protobuf", "application/yaml"] {
            let answer = h
                .send(
                    authed(Method::GET, &path)
                        .header(ACCEPT, accept)
                        .body(())
                        .unwrap(),
                )
                .await;
            answer.assert_status(406, "NotAcceptable");
            assert_eq!(
                answer.json()["message"],
                "only the following media types are accepted: application/json"
            );
        }
    }
}

#[tokio::test]
async fn source_failures_map_to_their_status() {
    let h = harness();
    let cases = [
        (
            MetricError::Stale {
                metric: "m".into(),
                detail: "last point is 20 minutes old".into(),
            },
            500,
            "InternalError",
        ),
        (
            MetricError::Invalid {
                metric: "m".into(),
                reason: "DatadogMetric is invalid".into(),
            },
            500,
            "InternalError",
        ),
        (MetricError::Internal("boom".into()), 500, "InternalError"),
        (
            MetricError::Unavailable("metric store not synced yet".into()),
            503,
            "ServiceUnavailable",
        ),
    ];
    for (error, code, reason) in cases {
        h.source.fail_with("m", error.clone());
        let answer = h.get(&metric_uri("default", "m", None)).await;
        answer.assert_status(code, reason);
        assert!(
            answer.json()["message"]
                .as_str()
                .unwrap()
                .contains(&error.to_string()),
            "{}",
            answer.body
        );
    }
}

#[tokio::test]
async fn values_that_are_not_quantities_are_500_naming_the_metric() {
    let h = harness();
    for (i, bad) in [f64::NAN, f64::INFINITY, -1e300].into_iter().enumerate() {
        let name = format!("bad{i}");
        h.source.set(&name, labels(&[]), bad, 0);
        let answer = h.get(&metric_uri("default", &name, None)).await;
        answer.assert_status(500, "InternalError");
        let message = answer.json()["message"].as_str().unwrap().to_owned();
        assert!(
            message.starts_with("Internal error occurred: metric "),
            "{message}"
        );
        assert!(message.contains(&name), "{message}");
        assert!(!answer.body.contains("items"), "{}", answer.body);
    }
}

#[tokio::test]
async fn probes_need_no_credentials() {
    let h = harness();
    for path in [
        "/healthz",
        "/livez",
        "/readyz",
        "/readyz/ping",
        "/healthz/ping",
        // Encoded spellings take the slow path but are still probes.
        "/heal%74hz",
    ] {
        let answer = h.send(Request::get(path).body(()).unwrap()).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert_eq!(answer.body, "ok");
        assert_eq!(answer.header(CONTENT_TYPE), "text/plain; charset=utf-8");
    }
    assert_eq!(h.authentications(), 0);
    assert!(h.reviews().is_empty());
}

#[tokio::test]
async fn readyz_fails_while_any_source_is_not_ready() {
    let h = harness();
    h.ready[1].send_replace(Readiness {
        ready: false,
        reason: "metric store not synced".into(),
    });
    let answer = h.send(Request::get("/readyz").body(()).unwrap()).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        answer.body,
        "[-]metric store not synced\nreadyz check failed\n"
    );
    h.ready[0].send_replace(Readiness {
        ready: false,
        reason: "missing ClusterRoleBinding to system:auth-delegator".into(),
    });
    let answer = h.send(Request::get("/readyz").body(()).unwrap()).await;
    assert_eq!(
        answer.body,
        "[-]missing ClusterRoleBinding to system:auth-delegator\n[-]metric store not synced\nreadyz check failed\n"
    );
    // Liveness is not readiness.
    let live = h.send(Request::get("/livez").body(()).unwrap()).await;
    assert_eq!(live.status, StatusCode::OK);
    h.ready[0].send_replace(ready());
    h.ready[1].send_replace(ready());
    let answer = h.send(Request::get("/readyz").body(()).unwrap()).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn discovery_documents_golden() {
    let h = harness();
    let cases = [
        (
            BASE,
            r#"{"kind":"APIResourceList","apiVersion":"v1","groupVersion":"external.metrics.k8s.io/v1beta1","resources":[{"name":"externalmetrics","singularName":"","namespaced":true,"kind":"ExternalMetricValueList","verbs":["get"]}]}"#,
        ),
        (
            "/apis/external.metrics.k8s.io",
            r#"{"kind":"APIGroup","apiVersion":"v1","name":"external.metrics.k8s.io","versions":[{"groupVersion":"external.metrics.k8s.io/v1beta1","version":"v1beta1"}],"preferredVersion":{"groupVersion":"external.metrics.k8s.io/v1beta1","version":"v1beta1"}}"#,
        ),
        (
            "/apis",
            r#"{"kind":"APIGroupList","apiVersion":"v1","groups":[{"name":"external.metrics.k8s.io","versions":[{"groupVersion":"external.metrics.k8s.io/v1beta1","version":"v1beta1"}],"preferredVersion":{"groupVersion":"external.metrics.k8s.io/v1beta1","version":"v1beta1"}}]}"#,
        ),
    ];
    for (path, want) in cases {
        let answer = h.get(path).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert_eq!(answer.header(CONTENT_TYPE), "application/json");
        assert_eq!(answer.body, want, "{path}");
    }
}

#[tokio::test]
async fn availability_check_as_the_aggregator_sends_it() {
    // Five parallel GETs of the group-version as system:kube-aggregator (contract §1.1).
    let h = harness();
    let peer = Arc::new(PeerIdentity::Certificate {
        bundle: "requestheader".into(),
        common_name: "system:kube-aggregator".into(),
        organizations: vec!["system:masters".into()],
    });
    let requests = (0..5).map(|_| {
        let mut request = Request::get(BASE).body(()).unwrap();
        request.extensions_mut().insert(peer.clone());
        h.service.handle(request)
    });
    for response in futures::future::join_all(requests).await {
        assert_eq!(response.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn aggregated_discovery_with_etag_and_304() {
    let h = harness();
    let first = h
        .send(
            authed(Method::GET, "/apis")
                .header(ACCEPT, V2_ACCEPT)
                .header(
                    ACCEPT,
                    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList",
                )
                .header(ACCEPT, "application/json")
                .body(())
                .unwrap(),
        )
        .await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header(CONTENT_TYPE), V2_ACCEPT);
    assert_eq!(first.header(VARY), "Accept");
    let doc = first.json();
    assert_eq!(doc["kind"], "APIGroupDiscoveryList");
    assert_eq!(doc["apiVersion"], "apidiscovery.k8s.io/v2");
    let group = &doc["items"][0];
    assert_eq!(group["metadata"]["name"], "external.metrics.k8s.io");
    let version = &group["versions"][0];
    assert_eq!(version["version"], "v1beta1");
    assert_eq!(version["freshness"], "Current");
    let resource = &version["resources"][0];
    assert_eq!(resource["resource"], "externalmetrics");
    assert_eq!(resource["scope"], "Namespaced");
    assert_eq!(resource["singularResource"], "externalmetric");
    assert_eq!(resource["verbs"], serde_json::json!(["get"]));
    assert_eq!(
        resource["responseKind"],
        serde_json::json!({"group": "external.metrics.k8s.io", "version": "v1beta1", "kind": "ExternalMetricValueList"})
    );

    let etag = first.header(ETAG).to_owned();
    let second = h
        .send(
            authed(Method::GET, "/apis")
                .header(ACCEPT, V2_ACCEPT)
                .header(IF_NONE_MATCH, &etag)
                .body(())
                .unwrap(),
        )
        .await;
    assert_eq!(second.status, StatusCode::NOT_MODIFIED);
    assert_eq!(second.header(ETAG), etag);
    assert!(second.body.is_empty());

    // The legacy document has its own ETag, so a v2 ETag does not 304 it.
    let legacy = h
        .send(
            authed(Method::GET, "/apis")
                .header(IF_NONE_MATCH, &etag)
                .body(())
                .unwrap(),
        )
        .await;
    assert_eq!(legacy.status, StatusCode::OK);
    assert_eq!(legacy.json()["kind"], "APIGroupList");

    let beta = h
        .send(
            authed(Method::GET, "/apis")
                .header(
                    ACCEPT,
                    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList",
                )
                .body(())
                .unwrap(),
        )
        .await;
    assert_eq!(beta.json()["apiVersion"], "apidiscovery.k8s.io/v2beta1");
}

#[tokio::test]
async fn openapi_documents_are_valid_json_with_etags() {
    let h = harness();
    let v2 = h.get("/openapi/v2").await;
    assert_eq!(v2.status, StatusCode::OK);
    assert_eq!(v2.json()["swagger"], "2.0");
    let v2_etag = v2.header(ETAG).to_owned();
    let again = h
        .send(
            authed(Method::GET, "/openapi/v2")
                .header(IF_NONE_MATCH, &v2_etag)
                .body(())
                .unwrap(),
        )
        .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);

    let root = h.get("/openapi/v3").await;
    assert_eq!(root.status, StatusCode::OK);
    let url = root.json()["paths"]["apis/external.metrics.k8s.io/v1beta1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(url.starts_with("/openapi/v3/apis/external.metrics.k8s.io/v1beta1?hash="));

    let pinned = h.get(&url).await;
    assert_eq!(pinned.status, StatusCode::OK);
    assert_eq!(pinned.json()["openapi"], "3.0.0");
    assert_eq!(pinned.header(CACHE_CONTROL), "public, immutable");
    let hash = url.rsplit('=').next().unwrap();
    assert_eq!(pinned.header(ETAG), format!("\"{hash}\""));

    let unpinned = h
        .get("/openapi/v3/apis/external.metrics.k8s.io/v1beta1")
        .await;
    assert_eq!(unpinned.header(CACHE_CONTROL), "no-cache, private");
    assert_eq!(unpinned.body, pinned.body);
    let stale = h
        .get("/openapi/v3/apis/external.metrics.k8s.io/v1beta1?hash=OLD")
        .await;
    assert_eq!(stale.header(CACHE_CONTROL), "no-cache, private");

    // Conditional GETs of both v3 documents: the aggregator re-fetches them by ETag.
    for path in ["/openapi/v3", url.as_str()] {
        let first = h.get(path).await;
        let etag = first.header(ETAG).to_owned();
        assert!(
            etag.starts_with('"') && etag.ends_with('"'),
            "{path}: {etag}"
        );
        let again = h
            .send(
                authed(Method::GET, path)
                    .header(IF_NONE_MATCH, &etag)
                    .body(())
                    .unwrap(),
            )
            .await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{path}");
        assert!(again.body.is_empty(), "{path}: a 304 has no body");
        assert_eq!(again.header(ETAG), etag, "{path}");
        let changed = h
            .send(
                authed(Method::GET, path)
                    .header(IF_NONE_MATCH, "\"something-else\"")
                    .body(())
                    .unwrap(),
            )
            .await;
        assert_eq!(changed.status, StatusCode::OK, "{path}");
        assert_eq!(changed.body, first.body, "{path}");
    }
}

#[tokio::test]
async fn version_is_served() {
    let h = harness();
    let answer = h.get("/version").await;
    assert_eq!(answer.status, StatusCode::OK);
    let v = answer.json();
    assert_eq!(v["gitVersion"], format!("v{}", crate::version::VERSION));
    assert_eq!(v["compiler"], "rustc");
}

#[tokio::test]
async fn head_is_get_without_a_body() {
    let h = harness();
    h.source.set("m", labels(&[]), 1.0, 0);
    for path in [
        BASE.to_owned(),
        metric_uri("default", "m", None),
        "/healthz".into(),
    ] {
        let get = h.get(&path).await;
        let head = h.send(authed(Method::HEAD, &path).body(()).unwrap()).await;
        assert_eq!(head.status, get.status, "{path}");
        assert!(head.body.is_empty(), "{path}");
        assert_eq!(
            head.header(CONTENT_LENGTH),
            get.body.len().to_string(),
            "{path}"
        );
        assert_eq!(head.header(CONTENT_TYPE), get.header(CONTENT_TYPE));
    }
}

#[tokio::test]
async fn namespace_is_passed_to_the_source() {
    #[derive(Default)]
    struct Recording(Mutex<Vec<(String, String, String)>>);
    impl crate::external_metrics::api::MetricSource for Recording {
        fn get<'a>(
            &'a self,
            namespace: &'a str,
            metric: &'a str,
            selector: &'a crate::apimachinery::selector::Selector,
        ) -> api::Answer<'a, Result<MetricValues, MetricError>> {
            self.0.lock().unwrap().push((
                namespace.to_owned(),
                metric.to_owned(),
                selector.to_string(),
            ));
            api::Answer::ready(Ok(Vec::new()))
        }
    }
    let source = Arc::new(Recording::default());
    let service = ExternalMetricsService::new(ServiceParts {
        authenticator: Arc::new(FakeAuthenticator::default()),
        authorizer: Arc::new(FakeAuthorizer::default()),
        source: source.clone(),
        readiness: Vec::new(),
    });
    let response = service
        .handle(
            authed(
                Method::GET,
                &metric_uri("kube-system", "queue.depth", Some("b%3D2%2Ca%3D1")),
            )
            .body(())
            .unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        source.0.lock().unwrap().as_slice(),
        &[(
            "kube-system".to_owned(),
            "queue.depth".to_owned(),
            "a=1,b=2".to_owned()
        )]
    );
    // Readiness with no sources is ready.
    let ready = service
        .handle(Request::get("/readyz").body(()).unwrap())
        .await;
    assert_eq!(ready.status(), StatusCode::OK);
}

/// A source that always has to wait (as the Datadog source on a store miss), counting how
/// often it is asked and how often what it answered is polled.
struct LaterSource {
    asked: std::sync::atomic::AtomicUsize,
    polled: Arc<std::sync::atomic::AtomicUsize>,
    value: Option<f64>,
}

impl LaterSource {
    fn new(value: Option<f64>) -> Self {
        LaterSource {
            asked: Default::default(),
            polled: Default::default(),
            value,
        }
    }

    fn counts(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::SeqCst;
        (self.asked.load(SeqCst), self.polled.load(SeqCst))
    }
}

impl crate::external_metrics::api::MetricSource for LaterSource {
    fn get<'a>(
        &'a self,
        _namespace: &'a str,
        metric: &'a str,
        _selector: &'a crate::apimachinery::selector::Selector,
    ) -> api::Answer<'a, Result<MetricValues, MetricError>> {
        use std::sync::atomic::Ordering::SeqCst;
        self.asked.fetch_add(1, SeqCst);
        let polled = Arc::clone(&self.polled);
        api::Answer::later(move || async move {
            polled.fetch_add(1, SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            let value = self
                .value
                .ok_or(MetricError::Unavailable("warming up".into()))?;
            let value = MetricValue {
                metric_name: metric.to_owned(),
                metric_labels: BTreeMap::new(),
                timestamp: 1_700_000_000,
                window_seconds: None,
                value,
            };
            Ok(vec![Arc::new(value.into())])
        })
    }
}

/// Allows after a pause, as a SubjectAccessReview on a cache miss does.
struct LaterAuthorizer;

impl Authorizer for LaterAuthorizer {
    fn authorize<'a>(
        &'a self,
        _user: &'a UserInfo,
        _attributes: &'a RequestAttributes<'a>,
    ) -> api::Answer<'a, Decision> {
        api::Answer::later(|| async {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            Decision::Allow
        })
    }
}

async fn get_metric_with(authorizer: Arc<dyn Authorizer>, source: Arc<LaterSource>) -> Answer {
    let service = ExternalMetricsService::new(ServiceParts {
        authenticator: Arc::new(FakeAuthenticator::default()),
        authorizer,
        source,
        readiness: Vec::new(),
    });
    let request = authed(Method::GET, &metric_uri("default", "queue.depth", None));
    collect(service.handle(request.body(()).unwrap()).await).await
}

/// Seams that cannot answer at once (a TokenReview, a SubjectAccessReview, a Datadog query
/// on a miss) are awaited: the request is first tried within `call`, and an answer that is
/// not ready is dropped unpolled and asked for again in the request's own future.
#[tokio::test]
async fn seams_that_must_wait_are_awaited() {
    let source = Arc::new(LaterSource::new(Some(2.0)));
    let answer = get_metric_with(Arc::new(LaterAuthorizer), source.clone()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.json()["items"][0]["value"], "2");
    assert_eq!(answer.json()["items"][0]["metricName"], "queue.depth");
    // The authorizer stopped the first attempt before the source; the awaited attempt
    // asked the source once and polled its answer once.
    assert_eq!(source.counts(), (1, 1));
}

/// With a ready authorizer only the source waits: its first answer is dropped unpolled.
#[tokio::test]
async fn a_source_that_must_wait_is_asked_again_and_polled_once() {
    let source = Arc::new(LaterSource::new(None));
    let answer = get_metric_with(Arc::new(FakeAuthorizer::default()), source.clone()).await;
    answer.assert_status(503, "ServiceUnavailable");
    assert_eq!(source.counts(), (2, 1));
}

/// The whole stack over real TLS: rustls client, `crate::tls::serve`, HTTP/1.1 and HTTP/2,
/// a client certificate reaching the authenticator as the peer identity.
mod tls_end_to_end {
    use super::*;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::{ClientConfig, RootCertStore};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::TlsConnector;
    use tokio_util::sync::CancellationToken;

    use crate::tls::{
        CaBundle, ClientCaHandle, ServerCertResolver, ServerTls, generate_self_signed,
    };

    struct ClientCert {
        cert: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
        ca_pem: String,
    }

    fn front_proxy_client() -> ClientCert {
        let mut ca_params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "front-proxy-ca");
        ca_params.distinguished_name = dn;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "front-proxy-client");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        ClientCert {
            cert: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            ca_pem: ca.pem(),
        }
    }

    async fn request(
        addr: std::net::SocketAddr,
        config: Arc<ClientConfig>,
        http2: bool,
        path: &str,
    ) -> (StatusCode, String) {
        let (status, _, body) = send(addr, config, http2, Method::GET, path).await;
        (status, body)
    }

    async fn send(
        addr: std::net::SocketAddr,
        config: Arc<ClientConfig>,
        http2: bool,
        method: Method,
        path: &str,
    ) -> (StatusCode, HeaderMap, String) {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let tls = TlsConnector::from(config).connect(name, tcp).await.unwrap();
        let io = TokioIo::new(tls);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "localhost")
            .header(ACCEPT, HPA_ACCEPT)
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = if http2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            sender.send_request(request).await.unwrap()
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            sender.send_request(request).await.unwrap()
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn metric_over_tls_with_http1_and_http2() {
        let served =
            generate_self_signed(&["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let resolver = ServerCertResolver::from_der(
            vec![served.cert.clone()],
            PrivateKeyDer::Pkcs8(served.key.clone_key()),
        )
        .unwrap();
        let client_cert = front_proxy_client();
        let client_ca = ClientCaHandle::with_bundles([CaBundle::from_pem(
            "requestheader-client-ca-file",
            &client_cert.ca_pem,
        )
        .unwrap()])
        .unwrap();
        let tls = ServerTls::new(resolver, Some(client_ca)).unwrap();

        let h = harness();
        h.source.set(
            "nginx.net.request_per_s",
            labels(&[("app", "web")]),
            40.0,
            1_634_726_897,
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(crate::apiserver::server::serve_on(
            listener,
            tls,
            h.service.clone(),
            shutdown.clone(),
        ));

        let mut roots = RootCertStore::empty();
        roots.add(served.cert.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = |alpn: &[u8]| {
            let mut config = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_client_auth_cert(vec![client_cert.cert.clone()], client_cert.key.clone_key())
                .unwrap();
            config.alpn_protocols = vec![alpn.to_vec()];
            Arc::new(config)
        };
        let path = metric_uri("default", "nginx.net.request_per_s", Some("app%3Dweb"));
        let want = r#"{"kind":"ExternalMetricValueList","apiVersion":"external.metrics.k8s.io/v1beta1","metadata":{},"items":[{"metricName":"nginx.net.request_per_s","metricLabels":{"app":"web"},"timestamp":"2021-10-20T10:48:17Z","value":"40"}]}"#;
        for (alpn, http2) in [(&b"http/1.1"[..], false), (&b"h2"[..], true)] {
            let (status, body) = request(addr, config(alpn), http2, &path).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body, want);
            // HEAD: same length announced, no body, on both protocols.
            let (status, headers, body) =
                send(addr, config(alpn), http2, Method::HEAD, &path).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(headers[CONTENT_LENGTH], want.len().to_string());
            assert!(body.is_empty());
        }
        // The authenticator saw the verified client certificate, not an anonymous peer.
        let peers = h.authn.calls.lock().unwrap().clone();
        assert_eq!(peers.len(), 4);
        for peer in peers {
            assert!(
                matches!(&peer, PeerIdentity::Certificate { common_name, bundle, .. }
                    if common_name == "front-proxy-client" && bundle == "requestheader-client-ca-file"),
                "{peer:?}"
            );
        }
        // Probes over TLS without any client certificate.
        let anonymous = {
            let mut config = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        };
        assert_eq!(
            request(addr, anonymous, false, "/readyz").await,
            (StatusCode::OK, "ok".to_owned())
        );

        shutdown.cancel();
        server.await.unwrap();
    }
}
