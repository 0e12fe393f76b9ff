//! `metav1.Status` error bodies, shaped and worded like the Go apiserver's so that client-go,
//! kubectl and the HPA controller show our errors the way they show Kubernetes' own.

use bytes::Bytes;
use http::StatusCode;
use serde::Serialize;

use crate::apimachinery::goquote::go_quote;

/// A `metav1.Status` with `status: Failure`, ready to be written as the body of the HTTP
/// response with the same code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Status {
    pub code: StatusCode,
    /// `metav1.StatusReason`; empty is Go's `StatusReasonUnknown` and is omitted on the wire.
    pub reason: &'static str,
    pub message: String,
    /// `None` is written as no `details` key; `Some(default)` as `"details":{}`, as Go does
    /// for errors built with an empty GroupResource.
    pub details: Option<StatusDetails>,
}

/// `metav1.StatusDetails`; empty fields are omitted on the wire, as in Go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct StatusDetails {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
}

/// `metav1.StatusCause`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct StatusCause {
    #[serde(skip_serializing_if = "str::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub field: String,
}

/// Field order is Go's (TypeMeta, ListMeta, then the struct fields in declaration order).
#[derive(Serialize)]
struct Wire<'a> {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    metadata: Empty,
    status: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a StatusDetails>,
    code: u16,
}

#[derive(Serialize)]
struct Empty {}

pub(crate) const REASON_BAD_REQUEST: &str = "BadRequest";
pub(crate) const REASON_UNAUTHORIZED: &str = "Unauthorized";
pub(crate) const REASON_FORBIDDEN: &str = "Forbidden";
pub(crate) const REASON_NOT_FOUND: &str = "NotFound";
pub(crate) const REASON_METHOD_NOT_ALLOWED: &str = "MethodNotAllowed";
pub(crate) const REASON_NOT_ACCEPTABLE: &str = "NotAcceptable";
pub(crate) const REASON_INTERNAL_ERROR: &str = "InternalError";
pub(crate) const REASON_SERVICE_UNAVAILABLE: &str = "ServiceUnavailable";

impl Status {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Status {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// Go's `NewBadRequest`: used for selectors and query parameters that do not parse.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Status::new(StatusCode::BAD_REQUEST, REASON_BAD_REQUEST, message)
    }

    /// What Go's authentication filter answers whatever the cause; the cause is only logged,
    /// so a caller probing credentials learns nothing from the body.
    pub(crate) fn unauthorized() -> Self {
        Status::new(
            StatusCode::UNAUTHORIZED,
            REASON_UNAUTHORIZED,
            "Unauthorized",
        )
    }

    /// Go's `responsewriters.Forbidden` for a non-resource request (a path).
    pub(crate) fn forbidden_path(user: &str, verb: &str, path: &str, reason: &str) -> Self {
        let message = format!(
            "forbidden: User {} cannot {verb} path {}",
            go_quote(user),
            go_quote(path)
        );
        Status::forbidden(message, StatusDetails::default(), reason)
    }

    /// Go's `responsewriters.Forbidden` for a resource request: `forbiddenMessage` wrapped by
    /// `NewForbidden` with the request's GroupResource and an empty name (a list has none).
    /// An empty `namespace` is the cluster scope.
    pub(crate) fn forbidden_resource(
        user: &str,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: &str,
        reason: &str,
    ) -> Self {
        let qualified = if group.is_empty() {
            resource.to_owned()
        } else {
            format!("{resource}.{group}")
        };
        let scope = if namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace {}", go_quote(namespace))
        };
        let message = format!(
            "{qualified} is forbidden: User {} cannot {verb} resource {} in API group {} {scope}",
            go_quote(user),
            go_quote(resource),
            go_quote(group),
        );
        let details = StatusDetails {
            group: group.to_owned(),
            kind: resource.to_owned(),
            ..StatusDetails::default()
        };
        Status::forbidden(message, details, reason)
    }

    fn forbidden(mut message: String, details: StatusDetails, reason: &str) -> Self {
        if !reason.is_empty() {
            message.push_str(": ");
            message.push_str(reason);
        }
        Status {
            details: Some(details),
            ..Status::new(StatusCode::FORBIDDEN, REASON_FORBIDDEN, message)
        }
    }

    /// Go's `NewNotFound`-style answer for a named object of a known kind.
    pub(crate) fn not_found(message: impl Into<String>, details: StatusDetails) -> Self {
        Status {
            details: Some(details),
            ..Status::new(StatusCode::NOT_FOUND, REASON_NOT_FOUND, message)
        }
    }

    /// Go's answer for a path no handler serves (`NewGenericServerResponse(404, ...)` with an
    /// empty GroupResource).
    pub(crate) fn path_not_found() -> Self {
        Status {
            details: Some(StatusDetails::default()),
            ..Status::new(
                StatusCode::NOT_FOUND,
                REASON_NOT_FOUND,
                "the server could not find the requested resource",
            )
        }
    }

    /// A method other than GET/HEAD on a path we serve.
    pub(crate) fn method_not_allowed() -> Self {
        Status {
            details: Some(StatusDetails::default()),
            ..Status::new(
                StatusCode::METHOD_NOT_ALLOWED,
                REASON_METHOD_NOT_ALLOWED,
                "the server does not allow this method on the requested resource",
            )
        }
    }

    /// Go's `NewMethodNotSupported(gr, action)`, which a list handler without a watcher
    /// returns for `watch=true`.
    pub(crate) fn method_not_supported(group: &str, kind: &str, action: &str) -> Self {
        Status {
            details: Some(StatusDetails {
                group: group.to_owned(),
                kind: kind.to_owned(),
                ..StatusDetails::default()
            }),
            ..Status::new(
                StatusCode::METHOD_NOT_ALLOWED,
                REASON_METHOD_NOT_ALLOWED,
                format!(
                    "{action} is not supported on resources of kind {}",
                    go_quote(&format!("{kind}.{group}"))
                ),
            )
        }
    }

    /// apimachinery's `NewNotAcceptableError` for the media types we can write.
    pub(crate) fn not_acceptable(offered: &[&str]) -> Self {
        Status::new(
            StatusCode::NOT_ACCEPTABLE,
            REASON_NOT_ACCEPTABLE,
            format!(
                "only the following media types are accepted: {}",
                offered.join(", ")
            ),
        )
    }

    /// Go's `NewInternalError(err)`: the message is prefixed, the bare error is the cause.
    pub(crate) fn internal(error: impl Into<String>) -> Self {
        let error = error.into();
        Status {
            code: StatusCode::INTERNAL_SERVER_ERROR,
            reason: REASON_INTERNAL_ERROR,
            message: format!("Internal error occurred: {error}"),
            details: Some(StatusDetails {
                causes: vec![StatusCause {
                    message: error,
                    ..StatusCause::default()
                }],
                ..StatusDetails::default()
            }),
        }
    }

    /// Go's `NewServiceUnavailable(reason)`.
    pub(crate) fn service_unavailable(message: impl Into<String>) -> Self {
        Status::new(
            StatusCode::SERVICE_UNAVAILABLE,
            REASON_SERVICE_UNAVAILABLE,
            message,
        )
    }

    /// The JSON body.
    pub(crate) fn to_json(&self) -> Vec<u8> {
        let wire = Wire {
            kind: "Status",
            api_version: "v1",
            metadata: Empty {},
            status: "Failure",
            message: &self.message,
            reason: self.reason,
            details: self.details.as_ref(),
            code: self.code.as_u16(),
        };
        // Serialising plain strings, integers and string-keyed structs into a Vec cannot
        // fail; the fallback keeps this total anyway.
        serde_json::to_vec(&wire).unwrap_or_else(|_| {
            format!(
                r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","code":{}}}"#,
                self.code.as_u16()
            )
            .into_bytes()
        })
    }

    pub(crate) fn to_bytes(&self) -> Bytes {
        Bytes::from(self.to_json())
    }
}

/// A Status serialised once, for the errors whose body never changes.
#[derive(Debug, Clone)]
pub(crate) struct PrebuiltStatus {
    pub code: StatusCode,
    pub body: Bytes,
}

impl PrebuiltStatus {
    pub(crate) fn new(status: &Status) -> Self {
        PrebuiltStatus {
            code: status.code,
            body: status.to_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &Status) -> String {
        String::from_utf8(s.to_json()).unwrap()
    }

    #[test]
    fn bad_request_golden() {
        assert_eq!(
            json(&Status::bad_request(
                "unable to parse requirement: found '', expected: identifier"
            )),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"unable to parse requirement: found '', expected: identifier","reason":"BadRequest","code":400}"#
        );
    }

    #[test]
    fn unauthorized_golden() {
        assert_eq!(
            json(&Status::unauthorized()),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#
        );
    }

    #[test]
    fn path_not_found_golden() {
        assert_eq!(
            json(&Status::path_not_found()),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","details":{},"code":404}"#
        );
    }

    #[test]
    fn method_not_allowed_golden() {
        assert_eq!(
            json(&Status::method_not_allowed()),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server does not allow this method on the requested resource","reason":"MethodNotAllowed","details":{},"code":405}"#
        );
    }

    #[test]
    fn not_acceptable_golden() {
        assert_eq!(
            json(&Status::not_acceptable(&["application/json"])),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"only the following media types are accepted: application/json","reason":"NotAcceptable","code":406}"#
        );
    }
}
