//! The ground floor: Kubernetes' shapes and grammars as `k8s.io/apimachinery` defines them,
//! pure functions of their input with no I/O and no async runtime. Label selectors (grammar
//! and matching), `resource.Quantity`, Go's string quoting (for messages that must read as
//! Go writes them), name validation, `metav1.Status` and the discovery documents.
//!
//! It may import nothing of this crate: every other layer builds on it, and each parser here
//! takes untrusted input, so each has vector tables, property tests and a fuzz target.

pub(crate) mod discovery;
pub(crate) mod goquote;
pub mod quantity;
pub mod selector;
pub(crate) mod status;
pub mod validation;
