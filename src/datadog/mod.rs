//! The Datadog API: query building, batching and response evaluation (pure), and the client.

pub mod batch;
pub mod query;
pub mod response;
