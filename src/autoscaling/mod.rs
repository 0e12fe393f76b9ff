//! HPA-driven metric resolution: the shared store format, the watcher and the refresher.

pub mod store_format;
