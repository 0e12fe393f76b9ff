//! Build identity, stamped by build.rs.

pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");
pub(crate) const COMMIT: &str = env!("DCA_BUILD_COMMIT");
pub const BUILD_DATE: &str = env!("DCA_BUILD_DATE");
pub(crate) const RUSTC: &str = env!("DCA_BUILD_RUSTC");

/// The numeric parts node agents compare (`Major`, `Minor`, `Patch`).
pub fn parts() -> (u64, u64, u64) {
    let mut it = VERSION
        .split(['.', '-', '+'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

pub fn long() -> String {
    format!(
        "Cluster Agent v{VERSION} - Commit: {COMMIT} - Build date: {BUILD_DATE} - Rust version: {RUSTC}"
    )
}
