//! The seams of the external metrics server: where metric values come from
//! ([`MetricSource`]), who is calling ([`Authenticator`]) and whether they may
//! ([`Authorizer`]). The HTTP layer depends only on these, so each side is tested alone.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;

use crate::external_metrics::selector::Selector;
use crate::external_metrics::types::PublishedValue;

/// One value as a source reports it, before it becomes a Quantity on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricValue {
    pub metric_name: String,
    pub metric_labels: BTreeMap<String, String>,
    /// Unix seconds of the point.
    pub timestamp: i64,
    pub window_seconds: Option<i64>,
    pub value: f64,
}

/// Why a source has no value to give. Each maps to one metav1.Status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricError {
    /// 404 NotFound.
    #[error("the server could not find the metric {metric} in namespace {namespace}")]
    NotFound { namespace: String, metric: String },
    /// 500 InternalError: the value exists but is too old to scale on.
    #[error("the value of metric {metric} is stale: {detail}")]
    Stale { metric: String, detail: String },
    /// 500 InternalError: Datadog answered, but not with a usable value.
    #[error("metric {metric} is invalid: {reason}")]
    Invalid { metric: String, reason: String },
    /// 503 ServiceUnavailable: nothing to serve yet (start-up, store not synced).
    #[error("{0}")]
    Unavailable(String),
    /// 500 InternalError.
    #[error("{0}")]
    Internal(String),
}

/// What a source serves: values shared with the source, so that answering a request costs
/// reference-count bumps rather than copies of names and labels, and each value's wire form
/// is written once.
pub type MetricValues = Vec<Arc<PublishedValue>>;

pub trait MetricSource: Send + Sync + 'static {
    /// `metric` is the name as requested (lower-cased by client-go); matching it to what the
    /// HPA wrote is the source's job.
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        metric: &'a str,
        selector: &'a Selector,
    ) -> Answer<'a, Result<MetricValues, MetricError>>;
}

/// What a seam answers: now (a cache hit, an in-memory lookup) or later (a call to the API
/// server or Datadog). Every request goes through three seams, and the ready form lets the
/// common case cost no allocation, where a boxed future per seam would cost one each.
///
/// A `Later` answer must do nothing until it is first polled (as `async` blocks do), so a
/// caller may drop it unpolled and ask again.
pub enum Answer<'a, T> {
    Ready(Option<T>),
    Later(BoxFuture<'a, T>),
}

impl<'a, T> Answer<'a, T> {
    pub fn ready(value: T) -> Self {
        Answer::Ready(Some(value))
    }

    pub fn later(future: impl Future<Output = T> + Send + 'a) -> Self {
        Answer::Later(Box::pin(future))
    }
}

// The value is moved out, never pinned in place, so pinning an `Answer` pins nothing of `T`.
impl<T> Unpin for Answer<'_, T> {}

impl<T> Future for Answer<'_, T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.get_mut() {
            // Polling again after completion is a caller bug; never completing is one of the
            // behaviours `Future` allows for it.
            Answer::Ready(value) => value.take().map_or(Poll::Pending, Poll::Ready),
            Answer::Later(future) => future.as_mut().poll(cx),
        }
    }
}

/// An authenticated identity, as Kubernetes' `user.Info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    pub fn anonymous() -> Self {
        UserInfo {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            ..Default::default()
        }
    }
}

/// What the authenticator concluded from the TLS peer and the headers.
#[derive(Debug, Clone, PartialEq)]
pub enum Authentication {
    /// Shared, so that a cached identity costs a reference-count bump per request.
    User(Arc<UserInfo>),
    /// 401 Unauthorized with this reason (e.g. a bearer token TokenReview rejected).
    Rejected(String),
    /// 500: the authentication backend could not be asked.
    Error(String),
}

/// The request as Kubernetes' RequestInfo sees it, for a SubjectAccessReview. Borrowed from
/// the request (and constants) on the request path; [`into_owned`](Self::into_owned) for a
/// cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RequestAttributes<'a> {
    Resource {
        verb: Cow<'a, str>,
        group: Cow<'a, str>,
        version: Cow<'a, str>,
        resource: Cow<'a, str>,
        namespace: Cow<'a, str>,
    },
    NonResource {
        verb: Cow<'a, str>,
        path: Cow<'a, str>,
    },
}

impl RequestAttributes<'_> {
    pub fn into_owned(self) -> RequestAttributes<'static> {
        let own = |s: Cow<'_, str>| Cow::Owned(s.into_owned());
        match self {
            RequestAttributes::Resource {
                verb,
                group,
                version,
                resource,
                namespace,
            } => RequestAttributes::Resource {
                verb: own(verb),
                group: own(group),
                version: own(version),
                resource: own(resource),
                namespace: own(namespace),
            },
            RequestAttributes::NonResource { verb, path } => RequestAttributes::NonResource {
                verb: own(verb),
                path: own(path),
            },
        }
    }
}

/// Whether a subsystem can serve, and if not why, for `/readyz` and logs. Sent on a
/// `tokio::sync::watch` channel by the side that knows (e.g. delegated auth).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    /// Empty when ready; otherwise what is missing and how to fix it.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow,
    /// 403 Forbidden, with the reason the authorizer gave.
    Deny(String),
    /// 500: the authorization backend could not be asked.
    Error(String),
}

pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(
        &'a self,
        peer: &'a crate::tls::PeerIdentity,
        headers: &'a http::HeaderMap,
    ) -> Answer<'a, Authentication>;
}

pub trait Authorizer: Send + Sync + 'static {
    fn authorize<'a>(
        &'a self,
        user: &'a UserInfo,
        attributes: &'a RequestAttributes<'a>,
    ) -> Answer<'a, Decision>;
}
