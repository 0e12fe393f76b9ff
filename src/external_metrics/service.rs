//! The hyper service behind the external metrics server: route → (probes skip) authenticate
//! → authorize → answer, as Go's filter chain orders it (contract §2.3).
//!
//! The hot paths are the HPA's metric request and the aggregator's discovery checks every
//! few seconds. Static documents and fixed errors are serialised once in [`ExternalMetricsService::new`];
//! a request for them costs a route match, the auth calls and a reference-count bump.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, VARY};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::sync::watch;

use crate::external_metrics::api::{
    Answer, Authentication, Authenticator, Authorizer, Decision, MetricSource, Readiness,
    RequestAttributes,
};
use crate::external_metrics::discovery::DiscoveryDocs;
use crate::external_metrics::negotiate::{Offer, negotiate};
use crate::external_metrics::openapi::OpenApiDocs;
use crate::external_metrics::routes::{self, MetricRoute, Route};
use crate::external_metrics::selector_cache::SelectorCache;
use crate::external_metrics::static_doc::StaticDoc;
use crate::external_metrics::status::{PrebuiltStatus, Status};
use crate::external_metrics::types::encode_list;
use crate::external_metrics::{GROUP, VERSION};
use crate::tls::{ConnectionInfo, PeerIdentity};

/// The response body type: every answer is one buffer.
pub type Body = Full<Bytes>;

/// What the service needs from the rest of the process.
pub struct ServiceParts {
    pub authenticator: Arc<dyn Authenticator>,
    pub authorizer: Arc<dyn Authorizer>,
    pub source: Arc<dyn MetricSource>,
    /// `/readyz` passes when every one of these is ready (none: always). Each subsystem
    /// that can make serving impossible (delegated auth, the metric store) sends its own.
    pub readiness: Vec<watch::Receiver<Readiness>>,
}

const JSON_OFFERS: &[Offer] = &[Offer::Json];
/// Legacy JSON first: a client that states no preference gets the document every client
/// understands.
const APIS_OFFERS: &[Offer] = &[Offer::Json, Offer::DiscoveryV2, Offer::DiscoveryV2Beta1];
const JSON_TYPES: &[&str] = &["application/json"];

const NOSNIFF: HeaderName = HeaderName::from_static("x-content-type-options");

#[derive(Clone)]
pub struct ExternalMetricsService {
    shared: Arc<Shared>,
}

struct Shared {
    authenticator: Arc<dyn Authenticator>,
    authorizer: Arc<dyn Authorizer>,
    source: Arc<dyn MetricSource>,
    readiness: Vec<watch::Receiver<Readiness>>,
    discovery: DiscoveryDocs,
    openapi: OpenApiDocs,
    unauthorized: PrebuiltStatus,
    path_not_found: PrebuiltStatus,
    method_not_allowed: PrebuiltStatus,
    not_acceptable: PrebuiltStatus,
    selectors: SelectorCache,
    /// The peer of requests served without a TLS layer in front (tests, or a caller that
    /// does not insert an identity): anonymous at the TLS level.
    anonymous: Arc<PeerIdentity>,
}

impl ExternalMetricsService {
    pub fn new(parts: ServiceParts) -> Self {
        ExternalMetricsService {
            shared: Arc::new(Shared {
                authenticator: parts.authenticator,
                authorizer: parts.authorizer,
                source: parts.source,
                readiness: parts.readiness,
                discovery: DiscoveryDocs::build(),
                openapi: OpenApiDocs::build(),
                unauthorized: PrebuiltStatus::new(&Status::unauthorized()),
                path_not_found: PrebuiltStatus::new(&Status::path_not_found()),
                method_not_allowed: PrebuiltStatus::new(&Status::method_not_allowed()),
                not_acceptable: PrebuiltStatus::new(&Status::not_acceptable(JSON_TYPES)),
                selectors: SelectorCache::default(),
                anonymous: Arc::new(PeerIdentity::Anonymous),
            }),
        }
    }

    /// Answers one request. The request body is never read: every route is a GET.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Body> {
        match hyper::service::Service::call(self, request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }

    /// The request's answer when no seam has to wait (the cache hits and in-memory lookups
    /// of nearly every request): [`respond`](Self::respond) run once on the stack, with no
    /// future boxed. `None`: a seam must wait, and the request goes to
    /// [`handle_parts`](Self::handle_parts).
    fn respond_now(&self, parts: &Parts, peer: &PeerIdentity) -> Option<Response<Body>> {
        let future = pin!(self.respond(parts, peer, Pace::Now));
        match future.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(response) => response,
            // At `Pace::Now` nothing waits, so this is not reached; were it, the request
            // would be answered again at `Pace::MayWait`, which is always right.
            Poll::Pending => None,
        }
    }

    /// The future `call` boxes when a seam has to wait. Written as an `async move` block
    /// rather than an `async fn`: an `async fn` keeps its arguments twice (as captured and
    /// as rebound locals), which with `Parts` took the box past 1 KiB, beyond what glibc's
    /// allocator serves from its per-thread cache.
    #[expect(
        clippy::manual_async_fn,
        reason = "the async fn form doubles the arguments"
    )]
    fn handle_parts(
        self,
        parts: Parts,
        peer: Arc<PeerIdentity>,
    ) -> impl Future<Output = Response<Body>> + Send {
        async move {
            let response = self
                .respond(&parts, &peer, Pace::MayWait)
                .await
                // `Pace::MayWait` waits for every answer, so this is not reached.
                .unwrap_or_else(|| status(&Status::internal("request not answered"), false));
            log_request(&parts, &response);
            response
        }
    }

    /// The answer; `None` only at `Pace::Now`, when a seam's answer is not ready.
    async fn respond(
        &self,
        parts: &Parts,
        peer: &PeerIdentity,
        pace: Pace,
    ) -> Option<Response<Body>> {
        let shared = &*self.shared;
        let route = routes::parse(parts.uri.path(), parts.uri.query());
        let head = parts.method == Method::HEAD;
        if route.is_probe() {
            return Some(self.probe(&route, &parts.method));
        }

        if let Err(refusal) = self.admit(&route, parts, peer, head, pace).await? {
            return Some(refusal);
        }

        if matches!(route, Route::NotFound) {
            return Some(prebuilt(&shared.path_not_found, head));
        }
        if !(parts.method == Method::GET || head) {
            return Some(method_not_allowed(&shared.method_not_allowed, head));
        }
        let headers = &parts.headers;
        let docs = &shared.discovery;
        let openapi = &shared.openapi;
        let response = match route {
            Route::Version => self.document(&docs.version, headers, head, None),
            Route::Apis => match negotiate(headers, APIS_OFFERS) {
                Some(offer) => {
                    let mut response = self.document(docs.apis(offer), headers, head, None);
                    response
                        .headers_mut()
                        .insert(VARY, HeaderValue::from_static("Accept"));
                    response
                }
                None => prebuilt(&shared.not_acceptable, head),
            },
            Route::Group => self.json_document(&docs.api_group, headers, head),
            Route::GroupVersion => self.json_document(&docs.api_resource_list, headers, head),
            Route::OpenApiV2 => self.json_document(&openapi.v2, headers, head),
            Route::OpenApiV3 => self.json_document(&openapi.v3_root, headers, head),
            Route::OpenApiV3GroupVersion => {
                if negotiate(headers, JSON_OFFERS).is_none() {
                    return Some(prebuilt(&shared.not_acceptable, head));
                }
                // A URL pinned to the current hash never changes meaning, so it may be
                // cached for good, as Go's OpenAPI v3 handler allows.
                let pinned = query_param(parts.uri.query(), "hash")
                    .is_some_and(|h| h == openapi.v3_group_version.hash);
                let cache = pinned.then(|| HeaderValue::from_static("public, immutable"));
                self.document(&openapi.v3_group_version, headers, head, cache)
            }
            Route::Metric(metric) => {
                if negotiate(headers, JSON_OFFERS).is_none() {
                    return Some(prebuilt(&shared.not_acceptable, head));
                }
                return self.metric(metric, head, pace).await;
            }
            Route::Healthz | Route::Livez | Route::Readyz | Route::Ping => {
                self.probe(&route, &parts.method)
            }
            Route::NotFound => prebuilt(&shared.path_not_found, head),
        };
        Some(response)
    }

    /// Authenticates and authorizes the request; `Err` is the answer to give instead;
    /// `None` as for [`respond`](Self::respond). A future of its own, so that the identity
    /// and attributes it holds while waiting share room with the metric lookup's state in
    /// the request's future.
    async fn admit(
        &self,
        route: &Route<'_>,
        parts: &Parts,
        peer: &PeerIdentity,
        head: bool,
        pace: Pace,
    ) -> Option<Result<(), Response<Body>>> {
        let shared = &*self.shared;
        let authentication = shared.authenticator.authenticate(peer, &parts.headers);
        let user = match settle(authentication, pace).await? {
            Authentication::User(user) => user,
            Authentication::Rejected(reason) => {
                tracing::debug!(%reason, path = parts.uri.path(), "authentication rejected");
                return Some(Err(prebuilt(&shared.unauthorized, head)));
            }
            Authentication::Error(error) => {
                // The caller is not authenticated, so the backend's error stays in the log.
                tracing::warn!(%error, "cannot authenticate request");
                return Some(Err(status(
                    &Status::internal("cannot authenticate the request"),
                    head,
                )));
            }
        };

        let attributes = request_attributes(route, &parts.method, parts.uri.path());
        let decision = settle(shared.authorizer.authorize(&user, &attributes), pace).await?;
        Some(match decision {
            Decision::Allow => Ok(()),
            Decision::Deny(reason) => {
                tracing::debug!(user = %user.name, ?attributes, %reason, "request forbidden");
                Err(status(
                    &Status::forbidden(&user.name, &attributes, &reason),
                    head,
                ))
            }
            Decision::Error(error) => {
                tracing::warn!(%error, user = %user.name, "cannot authorize request");
                Err(status(
                    &Status::internal(format!("cannot authorize the request: {error}")),
                    head,
                ))
            }
        })
    }

    /// The metric request, once authorized; `None` as for [`respond`](Self::respond). An
    /// `async move` block rather than an `async fn`, which would keep `metric` twice in the
    /// request's future.
    #[expect(
        clippy::manual_async_fn,
        reason = "the async fn form doubles the arguments"
    )]
    fn metric<'a>(
        &'a self,
        metric: MetricRoute<'a>,
        head: bool,
        pace: Pace,
    ) -> impl Future<Output = Option<Response<Body>>> + Send + 'a {
        async move {
            let query = match metric.query {
                Ok(query) => query,
                Err(error) => return Some(status(&Status::bad_request(error.to_string()), head)),
            };
            if query.watch {
                return Some(status(&Status::watch_not_supported(&metric.metric), head));
            }
            let selector = match self.shared.selectors.get(query.label_selector.as_deref()) {
                Ok(selector) => selector,
                Err(error) => return Some(status(&Status::bad_request(error.to_string()), head)),
            };
            let lookup = self
                .shared
                .source
                .get(&metric.namespace, &metric.metric, &selector);
            let values = match settle(lookup, pace).await? {
                Ok(values) => values,
                Err(error) => {
                    tracing::debug!(
                        namespace = %metric.namespace,
                        metric = %metric.metric,
                        %error,
                        "no value to serve"
                    );
                    return Some(status(&Status::from(&error), head));
                }
            };
            Some(match encode_list(&values) {
                Ok(body) => json_response(StatusCode::OK, Bytes::from(body), head),
                Err(error) => {
                    tracing::debug!(%error, "value cannot be served");
                    status(&Status::internal(error.to_string()), head)
                }
            })
        }
    }

    fn probe(&self, route: &Route<'_>, method: &Method) -> Response<Body> {
        let head = method == Method::HEAD;
        if !(method == Method::GET || head) {
            return method_not_allowed(&self.shared.method_not_allowed, head);
        }
        match route {
            Route::Readyz => match self.not_ready_reasons() {
                None => text(StatusCode::OK, Bytes::from_static(b"ok"), head),
                Some(reasons) => text(StatusCode::SERVICE_UNAVAILABLE, Bytes::from(reasons), head),
            },
            _ => text(StatusCode::OK, Bytes::from_static(b"ok"), head),
        }
    }

    /// `None` when every readiness source is ready; otherwise a body listing what is not,
    /// one `[-]reason` line each, in the shape of Go's `/readyz` failures.
    fn not_ready_reasons(&self) -> Option<String> {
        let mut body: Option<String> = None;
        for receiver in &self.shared.readiness {
            let readiness = receiver.borrow();
            if readiness.ready {
                continue;
            }
            let body = body.get_or_insert_with(String::new);
            body.push_str("[-]");
            body.push_str(if readiness.reason.is_empty() {
                "not ready"
            } else {
                &readiness.reason
            });
            body.push('\n');
        }
        body.map(|mut body| {
            body.push_str("readyz check failed\n");
            body
        })
    }

    fn json_document(&self, doc: &StaticDoc, headers: &HeaderMap, head: bool) -> Response<Body> {
        if negotiate(headers, JSON_OFFERS).is_none() {
            return prebuilt(&self.shared.not_acceptable, head);
        }
        self.document(doc, headers, head, None)
    }

    fn document(
        &self,
        doc: &StaticDoc,
        headers: &HeaderMap,
        head: bool,
        cache_control: Option<HeaderValue>,
    ) -> Response<Body> {
        let cache_control = cache_control.unwrap_or(NO_CACHE);
        if doc.not_modified(headers) {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            let h = response.headers_mut();
            h.insert(ETAG, doc.etag.clone());
            h.insert(CACHE_CONTROL, cache_control);
            return response;
        }
        let mut response = body_response(StatusCode::OK, doc.body.clone(), head);
        let h = response.headers_mut();
        h.insert(CONTENT_TYPE, doc.content_type.clone());
        h.insert(ETAG, doc.etag.clone());
        h.insert(CACHE_CONTROL, cache_control);
        h.insert(NOSNIFF, HeaderValue::from_static("nosniff"));
        response
    }

    /// The probe answer for exactly-spelled probe paths, without touching the async
    /// machinery (kubelet probes every few seconds on every replica).
    fn fast_probe(&self, parts: &Parts) -> Option<Response<Body>> {
        let route = match parts.uri.path() {
            "/healthz" => Route::Healthz,
            "/livez" => Route::Livez,
            "/readyz" => Route::Readyz,
            "/healthz/ping" | "/livez/ping" | "/readyz/ping" => Route::Ping,
            _ => return None,
        };
        Some(self.probe(&route, &parts.method))
    }
}

/// Whether answering a request may wait for a seam (authenticator, authorizer, source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// On the stack, in `call`: a seam that cannot answer at once ends the attempt.
    Now,
    /// In the request's own future.
    MayWait,
}

/// A seam's answer; `None` when it is not ready and `pace` is `Now`. The unready answer is
/// then dropped unpolled, which [`Answer`]'s contract makes free of effects, and the
/// request is answered again at `Pace::MayWait`.
async fn settle<T>(answer: Answer<'_, T>, pace: Pace) -> Option<T> {
    match (answer, pace) {
        (Answer::Ready(Some(value)), _) => Some(value),
        (later, Pace::MayWait) => Some(later.await),
        (_, Pace::Now) => None,
    }
}

fn log_request(parts: &Parts, response: &Response<Body>) {
    tracing::debug!(
        method = %parts.method,
        path = parts.uri.path(),
        status = response.status().as_u16(),
        "external metrics request"
    );
}

/// Go's `WithCacheControl` default: API answers depend on who asks, so no shared cache
/// may keep them.
const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache, private");

/// The SubjectAccessReview attributes, as Go's RequestInfo derives them (contract §2.3).
/// Borrowed from the route and constants: nothing is copied for a request.
pub fn request_attributes<'a>(
    route: &'a Route<'_>,
    method: &Method,
    raw_path: &'a str,
) -> RequestAttributes<'a> {
    match route {
        Route::Metric(metric) => {
            let watch = metric.query.as_ref().is_ok_and(|q| q.watch);
            let verb = match *method {
                Method::GET | Method::HEAD if watch => "watch",
                // A collection GET: there is no name after the metric.
                Method::GET | Method::HEAD => "list",
                Method::POST => "create",
                Method::PUT => "update",
                Method::PATCH => "patch",
                Method::DELETE => "deletecollection",
                ref other => {
                    return resource_attributes(
                        Cow::Owned(other.as_str().to_ascii_lowercase()),
                        metric,
                    );
                }
            };
            resource_attributes(Cow::Borrowed(verb), metric)
        }
        _ => RequestAttributes::NonResource {
            verb: match *method {
                Method::GET => Cow::Borrowed("get"),
                Method::HEAD => Cow::Borrowed("head"),
                ref other => Cow::Owned(other.as_str().to_ascii_lowercase()),
            },
            path: routes::decoded_path(raw_path),
        },
    }
}

fn resource_attributes<'a>(
    verb: Cow<'a, str>,
    metric: &'a MetricRoute<'_>,
) -> RequestAttributes<'a> {
    RequestAttributes::Resource {
        verb,
        group: Cow::Borrowed(GROUP),
        version: Cow::Borrowed(VERSION),
        resource: Cow::Borrowed(&metric.metric),
        namespace: Cow::Borrowed(&metric.namespace),
    }
}

/// The first value of `name` in a query string, undecoded (`hash` values are hex).
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

fn body_response(code: StatusCode, body: Bytes, head: bool) -> Response<Body> {
    if head {
        // HEAD: the headers GET would send, Content-Length included, and no body.
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = code;
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        return response;
    }
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = code;
    response
}

fn json_response(code: StatusCode, body: Bytes, head: bool) -> Response<Body> {
    let mut response = body_response(code, body, head);
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, NO_CACHE);
    h.insert(NOSNIFF, HeaderValue::from_static("nosniff"));
    response
}

fn text(code: StatusCode, body: Bytes, head: bool) -> Response<Body> {
    let mut response = body_response(code, body, head);
    let h = response.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, NO_CACHE);
    h.insert(NOSNIFF, HeaderValue::from_static("nosniff"));
    response
}

fn status(status: &Status, head: bool) -> Response<Body> {
    json_response(status.code, status.to_bytes(), head)
}

fn prebuilt(status: &PrebuiltStatus, head: bool) -> Response<Body> {
    json_response(status.code, status.body.clone(), head)
}

fn method_not_allowed(status: &PrebuiltStatus, head: bool) -> Response<Body> {
    let mut response = prebuilt(status, head);
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

/// The service's future: ready at once for probes, boxed otherwise.
pub struct ResponseFuture {
    inner: FutureInner,
}

enum FutureInner {
    Ready(Option<Response<Body>>),
    Pending(Pin<Box<dyn Future<Output = Response<Body>> + Send>>),
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().inner {
            // Polling again after completion is a caller bug; never completing is one of
            // the behaviours `Future` allows for it.
            FutureInner::Ready(response) => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
            FutureInner::Pending(future) => future.as_mut().poll(cx).map(Ok),
        }
    }
}

impl<B> hyper::service::Service<Request<B>> for ExternalMetricsService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    /// Without a connection of its own (tests, or a caller serving it through
    /// [`tls::serve`](crate::tls::serve)), the peer is what the request's extensions hold.
    fn call(&self, request: Request<B>) -> ResponseFuture {
        let (parts, _body) = request.into_parts();
        self.start(parts, |parts| {
            parts
                .extensions
                .get::<Arc<PeerIdentity>>()
                .map_or_else(|| Arc::clone(&self.shared.anonymous), Arc::clone)
        })
    }
}

impl ExternalMetricsService {
    /// The service of one TLS connection: each request's client identity comes from the
    /// connection itself, so nothing is inserted into or looked up in the request.
    pub fn for_connection(&self, connection: ConnectionInfo) -> ConnectionService {
        ConnectionService {
            service: self.clone(),
            connection,
        }
    }

    fn start(
        &self,
        parts: Parts,
        peer: impl FnOnce(&Parts) -> Arc<PeerIdentity>,
    ) -> ResponseFuture {
        if let Some(response) = self.fast_probe(&parts) {
            return ResponseFuture {
                inner: FutureInner::Ready(Some(response)),
            };
        }
        let peer = peer(&parts);
        if let Some(response) = self.respond_now(&parts, &peer) {
            log_request(&parts, &response);
            return ResponseFuture {
                inner: FutureInner::Ready(Some(response)),
            };
        }
        ResponseFuture {
            inner: FutureInner::Pending(Box::pin(self.clone().handle_parts(parts, peer))),
        }
    }
}

/// [`ExternalMetricsService`] bound to one connection; see
/// [`for_connection`](ExternalMetricsService::for_connection).
pub struct ConnectionService {
    service: ExternalMetricsService,
    connection: ConnectionInfo,
}

impl<B> hyper::service::Service<Request<B>> for ConnectionService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: Request<B>) -> ResponseFuture {
        let (parts, _body) = request.into_parts();
        self.service
            .start(parts, |_| self.connection.peer_identity())
    }
}
