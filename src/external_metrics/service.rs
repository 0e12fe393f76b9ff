//! The hyper service behind the external metrics server: route → (probes skip) authenticate
//! → authorize → answer, as Go's filter chain orders it (contract §2.3).
//!
//! The hot paths are the HPA's metric request and the aggregator's discovery checks every
//! few seconds. Static documents and fixed errors are serialised once in [`ExternalMetricsService::new`];
//! a request for them costs a route match, the auth calls and a reference-count bump.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::header::VARY;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use tokio::sync::watch;

use crate::apimachinery::status::{PrebuiltStatus, Status};
use crate::apiserver::admission::Admission;
use crate::apiserver::discovery::DiscoveryDocs;
use crate::apiserver::negotiate::{Offer, negotiate};
use crate::apiserver::openapi::OpenApiDocs;
use crate::apiserver::probes::{Probe, Probes};
use crate::apiserver::response::{
    Body, ResponseFuture, document, json_response, method_not_allowed, prebuilt, status,
};
use crate::apiserver::seams::{
    Authenticator, Authorizer, Pace, Readiness, RequestAttributes, attempt_now, settle,
};
use crate::apiserver::selector_cache::SelectorCache;
use crate::apiserver::server::Handler;
use crate::apiserver::static_doc::StaticDoc;
use crate::external_metrics::api::{MetricSource, watch_not_supported};
use crate::external_metrics::routes::{self, MetricRoute, Route};
use crate::external_metrics::types::encode_list;
use crate::external_metrics::{API, GROUP, VERSION};
use crate::tls::PeerIdentity;

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

#[derive(Clone)]
pub struct ExternalMetricsService {
    shared: Arc<Shared>,
}

struct Shared {
    admission: Admission,
    source: Arc<dyn MetricSource>,
    probes: Probes,
    discovery: DiscoveryDocs,
    openapi: OpenApiDocs,
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
                admission: Admission::new(parts.authenticator, parts.authorizer),
                source: parts.source,
                probes: Probes::new(parts.readiness),
                discovery: DiscoveryDocs::build(&API),
                openapi: super::openapi::docs(),
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
    /// future boxed. `None`: a seam deferred, and the request goes to
    /// [`handle_parts`](Self::handle_parts).
    fn respond_now(&self, parts: &Parts, peer: &PeerIdentity) -> Option<Response<Body>> {
        attempt_now(self.respond(parts, peer, Pace::Now))
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
        if let Some(probe) = route.probe() {
            return Some(shared.probes.answer(probe, &parts.method));
        }

        let attributes = || request_attributes(&route, &parts.method, parts.uri.path());
        if let Err(refusal) = shared
            .admission
            .admit(parts, peer, attributes, head, pace)
            .await?
        {
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
            Route::Version => document(&docs.version, headers, head, None),
            Route::Apis => match negotiate(headers, APIS_OFFERS) {
                Some(offer) => {
                    let mut response = document(docs.apis(offer), headers, head, None);
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
                document(&openapi.v3_group_version, headers, head, cache)
            }
            Route::Metric(metric) => {
                if negotiate(headers, JSON_OFFERS).is_none() {
                    return Some(prebuilt(&shared.not_acceptable, head));
                }
                return self.metric(metric, head, pace).await;
            }
            Route::Healthz => shared.probes.answer(Probe::Healthz, &parts.method),
            Route::Livez => shared.probes.answer(Probe::Livez, &parts.method),
            Route::Readyz => shared.probes.answer(Probe::Readyz, &parts.method),
            Route::Ping => shared.probes.answer(Probe::Ping, &parts.method),
            Route::NotFound => prebuilt(&shared.path_not_found, head),
        };
        Some(response)
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
                return Some(status(&watch_not_supported(&metric.metric), head));
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

    fn json_document(&self, doc: &StaticDoc, headers: &HeaderMap, head: bool) -> Response<Body> {
        if negotiate(headers, JSON_OFFERS).is_none() {
            return prebuilt(&self.shared.not_acceptable, head);
        }
        document(doc, headers, head, None)
    }

    /// The probe answer for exactly-spelled probe paths, without touching the async
    /// machinery (kubelet probes every few seconds on every replica).
    fn fast_probe(&self, parts: &Parts) -> Option<Response<Body>> {
        let probe = Probe::from_exact_path(parts.uri.path())?;
        Some(self.shared.probes.answer(probe, &parts.method))
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

/// The SubjectAccessReview attributes, as Go's RequestInfo derives them (contract §2.3).
/// Borrowed from the route and constants: nothing is copied for a request.
pub(crate) fn request_attributes<'a>(
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

impl Handler for ExternalMetricsService {
    fn start(
        &self,
        parts: Parts,
        peer: impl FnOnce(&Parts) -> Arc<PeerIdentity>,
    ) -> ResponseFuture {
        if let Some(response) = self.fast_probe(&parts) {
            return ResponseFuture::ready(response);
        }
        let peer = peer(&parts);
        if let Some(response) = self.respond_now(&parts, &peer) {
            log_request(&parts, &response);
            return ResponseFuture::ready(response);
        }
        ResponseFuture::pending(self.clone().handle_parts(parts, peer))
    }
}
