//! What every HTTPS API of ours needs, and nothing of any one API: the seams a request
//! passes (who is calling, may they, answered now or later: [`seams`]), front-proxy / x509 /
//! TokenReview authentication and SubjectAccessReview authorization with their caches
//! ([`auth`], [`admission`]), content negotiation, discovery and OpenAPI serving, probes,
//! response building, and serving a handler over TLS with a drain ([`server`]).
//!
//! It may import [`crate::apimachinery`], [`crate::tls`], [`crate::version`] and nothing
//! above them: it knows nothing of metrics, so the external metrics API and the node-agent
//! API stand on it side by side.

pub(crate) mod admission;
pub mod auth;
pub(crate) mod discovery;
pub mod negotiate;
pub(crate) mod openapi;
pub(crate) mod probes;
pub(crate) mod response;
pub mod seams;
pub(crate) mod selector_cache;
pub mod server;
pub(crate) mod static_doc;
pub(crate) mod telemetry;
