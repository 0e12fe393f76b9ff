//! Go's filter chain before a handler: authenticate, then authorize, each seam answered now
//! or later ([`Pace`]), and the refusals worded as Go's apiserver words them.

use std::sync::Arc;

use http::Response;
use http::request::Parts;

use crate::apimachinery::status::{PrebuiltStatus, Status};
use crate::apiserver::response::{Body, prebuilt, status};
use crate::apiserver::seams::{
    Authentication, Authenticator, Authorizer, Decision, Pace, RequestAttributes, settle,
};
use crate::tls::PeerIdentity;

pub(crate) struct Admission {
    authenticator: Arc<dyn Authenticator>,
    authorizer: Arc<dyn Authorizer>,
    unauthorized: PrebuiltStatus,
}

impl Admission {
    pub(crate) fn new(
        authenticator: Arc<dyn Authenticator>,
        authorizer: Arc<dyn Authorizer>,
    ) -> Self {
        Admission {
            authenticator,
            authorizer,
            unauthorized: PrebuiltStatus::new(&Status::unauthorized()),
        }
    }

    /// Authenticates and authorizes the request for the `attributes` it asks for; `Err` is
    /// the answer to give instead; `None` when a seam deferred at [`Pace::Now`]. A future of
    /// its own, so that the identity and attributes it holds while waiting share room with
    /// the handler's state in the request's future.
    pub(crate) async fn admit<'a>(
        &self,
        parts: &Parts,
        peer: &PeerIdentity,
        attributes: impl FnOnce() -> RequestAttributes<'a>,
        head: bool,
        pace: Pace,
    ) -> Option<Result<(), Response<Body>>> {
        let authentication = self.authenticator.authenticate(peer, &parts.headers);
        let user = match settle(authentication, pace).await? {
            Authentication::User(user) => user,
            Authentication::Rejected(reason) => {
                tracing::debug!(%reason, path = parts.uri.path(), "authentication rejected");
                return Some(Err(prebuilt(&self.unauthorized, head)));
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

        let attributes = attributes();
        let decision = settle(self.authorizer.authorize(&user, &attributes), pace).await?;
        Some(match decision {
            Decision::Allow => Ok(()),
            Decision::Deny(reason) => {
                tracing::debug!(user = %user.name, ?attributes, %reason, "request forbidden");
                Err(status(&forbidden(&user.name, &attributes, &reason), head))
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
}

/// Go's `responsewriters.Forbidden` for the request's attributes.
pub(crate) fn forbidden(user: &str, attributes: &RequestAttributes<'_>, reason: &str) -> Status {
    match attributes {
        RequestAttributes::NonResource { verb, path } => {
            Status::forbidden_path(user, verb, path, reason)
        }
        RequestAttributes::Resource {
            verb,
            group,
            resource,
            namespace,
            ..
        } => Status::forbidden_resource(user, verb, group, resource, namespace, reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &Status) -> String {
        String::from_utf8(s.to_json()).unwrap()
    }

    #[test]
    fn forbidden_resource_golden() {
        let attrs = RequestAttributes::Resource {
            verb: "list".into(),
            group: "external.metrics.k8s.io".into(),
            version: "v1beta1".into(),
            resource: "nginx.net.request_per_s".into(),
            namespace: "default".into(),
        };
        assert_eq!(
            json(&forbidden("system:anonymous", &attrs, "")),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"nginx.net.request_per_s.external.metrics.k8s.io is forbidden: User \"system:anonymous\" cannot list resource \"nginx.net.request_per_s\" in API group \"external.metrics.k8s.io\" in the namespace \"default\"","reason":"Forbidden","details":{"group":"external.metrics.k8s.io","kind":"nginx.net.request_per_s"},"code":403}"#
        );
    }

    #[test]
    fn forbidden_appends_the_authorizer_reason() {
        let attrs = RequestAttributes::Resource {
            verb: "list".into(),
            group: "external.metrics.k8s.io".into(),
            version: "v1beta1".into(),
            resource: "m".into(),
            namespace: "".into(),
        };
        let s = forbidden("bob", &attrs, "no RBAC policy matched");
        assert_eq!(
            s.message,
            r#"m.external.metrics.k8s.io is forbidden: User "bob" cannot list resource "m" in API group "external.metrics.k8s.io" at the cluster scope: no RBAC policy matched"#
        );
    }

    #[test]
    fn forbidden_non_resource_golden() {
        let attrs = RequestAttributes::NonResource {
            verb: "get".into(),
            path: "/apis".into(),
        };
        assert_eq!(
            json(&forbidden("system:anonymous", &attrs, "")),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"forbidden: User \"system:anonymous\" cannot get path \"/apis\"","reason":"Forbidden","details":{},"code":403}"#
        );
    }
}
