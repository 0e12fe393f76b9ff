//! The seams of the external metrics server: where metric values come from
//! ([`MetricSource`]), who is calling ([`Authenticator`]) and whether they may
//! ([`Authorizer`]). The HTTP layer depends only on these, so each side is tested alone.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::external_metrics::selector::Selector;

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

pub trait MetricSource: Send + Sync + 'static {
    /// `metric` is the name as requested (lower-cased by client-go); matching it to what the
    /// HPA wrote is the source's job.
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        metric: &'a str,
        selector: &'a Selector,
    ) -> BoxFuture<'a, Result<Vec<MetricValue>, MetricError>>;
}

/// An authenticated identity, as Kubernetes' `user.Info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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

/// The request as Kubernetes' RequestInfo sees it, for a SubjectAccessReview.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RequestAttributes {
    Resource {
        verb: String,
        group: String,
        version: String,
        resource: String,
        namespace: String,
    },
    NonResource {
        verb: String,
        path: String,
    },
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
    ) -> BoxFuture<'a, Authentication>;
}

pub trait Authorizer: Send + Sync + 'static {
    fn authorize<'a>(
        &'a self,
        user: &'a UserInfo,
        attributes: &'a RequestAttributes,
    ) -> BoxFuture<'a, Decision>;
}
