//! Building responses: every answer is one buffer, with the headers Go's apiserver sends
//! (`Cache-Control: no-cache, private`, `X-Content-Type-Options: nosniff`), and HEAD answered
//! with GET's headers and no body.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::apimachinery::status::{PrebuiltStatus, Status};
use crate::apiserver::static_doc::StaticDoc;

/// The response body type: every answer is one buffer.
pub(crate) type Body = Full<Bytes>;

pub(crate) const NOSNIFF: HeaderName = HeaderName::from_static("x-content-type-options");

/// Go's `WithCacheControl` default: API answers depend on who asks, so no shared cache
/// may keep them.
pub(crate) const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache, private");

pub(crate) fn body_response(code: StatusCode, body: Bytes, head: bool) -> Response<Body> {
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

pub(crate) fn json_response(code: StatusCode, body: Bytes, head: bool) -> Response<Body> {
    let mut response = body_response(code, body, head);
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, NO_CACHE);
    h.insert(NOSNIFF, HeaderValue::from_static("nosniff"));
    response
}

pub(crate) fn text(code: StatusCode, body: Bytes, head: bool) -> Response<Body> {
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

pub(crate) fn status(status: &Status, head: bool) -> Response<Body> {
    json_response(status.code, status.to_bytes(), head)
}

pub(crate) fn prebuilt(status: &PrebuiltStatus, head: bool) -> Response<Body> {
    json_response(status.code, status.body.clone(), head)
}

/// 405 with the methods every route of ours allows.
pub(crate) fn method_not_allowed(status: &PrebuiltStatus, head: bool) -> Response<Body> {
    let mut response = prebuilt(status, head);
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

/// A static document, or 304 when the client's `If-None-Match` names its ETag.
/// `cache_control` defaults to [`NO_CACHE`].
pub(crate) fn document(
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

/// A service's future: the answer itself when it was known within `call`, boxed otherwise.
pub struct ResponseFuture {
    inner: FutureInner,
}

enum FutureInner {
    Ready(Option<Response<Body>>),
    Pending(Pin<Box<dyn Future<Output = Response<Body>> + Send>>),
}

impl ResponseFuture {
    pub fn ready(response: Response<Body>) -> Self {
        ResponseFuture {
            inner: FutureInner::Ready(Some(response)),
        }
    }

    pub fn pending(future: impl Future<Output = Response<Body>> + Send + 'static) -> Self {
        ResponseFuture {
            inner: FutureInner::Pending(Box::pin(future)),
        }
    }
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
