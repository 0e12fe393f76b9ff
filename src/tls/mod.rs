//! TLS building blocks shared by the aggregated `external.metrics.k8s.io` server and the
//! node-agent API server.
//!
//! * [`ServerCertResolver`]: the serving certificate, from PEM files (re-read when they change)
//!   or self-signed with rcgen.
//! * [`ClientCaHandle`]: a client-certificate verifier that requests but never requires a
//!   certificate, trusting several named CA bundles that can be replaced at run time.
//! * [`PeerIdentity`]: who the client's certificate says it is, under the bundles in force.
//! * [`ServerTls`] and [`serve`]: the rustls configuration and an HTTPS accept/serve loop with
//!   graceful draining.
//!
//! Everything uses the ring provider explicitly, so nothing here depends on which provider
//! (if any) the process installed as its default.
#![forbid(unsafe_code)]

mod any_server_cert;
mod certs;
mod client_auth;
mod config;
mod identity;
mod peer;
mod serve;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use any_server_cert::accept_any_server_certificate;
pub use certs::{
    CertSource, DEFAULT_RELOAD_INTERVAL, IssuedPem, SelfSignedCert, ServerCertResolver,
    default_sans, generate_self_signed, issue_serving, new_ca,
};
pub use client_auth::{CaBundle, ClientCaHandle};
pub use config::{ServerTls, server_config};
pub use identity::PeerIdentity;
pub use serve::{
    ConnectionInfo, RemoteAddr, ServeOptions, TcpKeepalive, configure_stream, serve,
    serve_connections, serve_with_options,
};

/// The ALPN identifiers both servers offer, most preferred first.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Errors from loading certificates and keys and from building TLS configurations.
///
/// Messages name the file (or bundle) and the problem, because they usually end up in a
/// start-up failure or a reload warning that an operator has to act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read TLS {what} {}: {error}", path.display())]
    ReadFile {
        /// `"certificate"` or `"private key"`.
        what: &'static str,
        /// The file that failed.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A file holds malformed PEM (for example a half-written file).
    #[error("invalid PEM in TLS {what} {}: {error}", path.display())]
    InvalidPem {
        /// `"certificate"` or `"private key"`.
        what: &'static str,
        /// The file that failed.
        path: PathBuf,
        /// The PEM parser's error.
        error: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no `CERTIFICATE` block.
    #[error("no certificate found in {}", path.display())]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// The key file holds no PKCS#8, PKCS#1 or SEC1 private key.
    #[error("no private key found in {}", path.display())]
    NoPrivateKey {
        /// The key file.
        path: PathBuf,
    },
    /// The private key could not be loaded by the crypto provider.
    #[error("unsupported private key in {}: {error}", path.display())]
    UnsupportedKey {
        /// The key file.
        path: PathBuf,
        /// The provider's error.
        error: rustls::Error,
    },
    /// The leaf certificate could not be parsed.
    #[error("invalid certificate in {}: {error}", path.display())]
    InvalidCertificate {
        /// The certificate file.
        path: PathBuf,
        /// The parser's error.
        error: rustls::Error,
    },
    /// The private key does not belong to the leaf certificate.
    #[error(
        "private key {} does not match certificate {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rcgen failed to generate the self-signed certificate.
    #[error("cannot generate self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
    /// A client CA bundle is unusable.
    #[error("invalid client CA bundle {name:?}: {reason}")]
    InvalidCaBundle {
        /// The bundle's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two client CA bundles share a name, so the verifying bundle would be ambiguous.
    #[error("duplicate client CA bundle name {name:?}")]
    DuplicateBundle {
        /// The repeated name.
        name: String,
    },
    /// rustls refused the configuration.
    #[error("cannot build TLS configuration: {0}")]
    Config(rustls::Error),
}
