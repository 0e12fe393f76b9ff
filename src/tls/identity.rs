//! Who the client proved to be with its TLS client certificate.

use std::time::Duration;

use rustls_pki_types::UnixTime;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The TLS-level identity of a connection, inserted into every request's extensions as
/// `Arc<PeerIdentity>` by [`serve`](crate::tls::serve). It reflects the client CA bundles in
/// force when the request arrived, not only those of the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// No client certificate was presented (probes, bearer-token callers), or none of the
    /// configured bundles vouches for it any more.
    Anonymous,
    /// A client certificate that chains to a configured CA bundle.
    Certificate {
        /// Name of the bundle that verified it: the first, in configured order, to do so.
        bundle: String,
        /// The subject common name (a Kubernetes user name); empty if the subject has none.
        common_name: String,
        /// The subject organizations (Kubernetes groups), in certificate order.
        organizations: Vec<String>,
    },
}

impl PeerIdentity {
    /// Whether no verified client certificate backs this connection.
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Self::Anonymous)
    }

    /// The verifying bundle's name, if any.
    pub fn bundle(&self) -> Option<&str> {
        match self {
            Self::Anonymous => None,
            Self::Certificate { bundle, .. } => Some(bundle),
        }
    }
}

/// Subject CN and O values of a DER certificate.
///
/// An undecodable CN fails the whole extraction, since the user name would be unknown; an
/// undecodable O is skipped, which can only grant fewer groups.
pub(crate) fn subject_names(der: &[u8]) -> Result<(String, Vec<String>), String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let subject = cert.subject();
    let common_name = match subject.iter_common_name().next() {
        Some(attr) => attr.as_str().map_err(|e| format!("subject CN: {e}"))?,
        None => "",
    };
    let organizations = subject
        .iter_organization()
        .filter_map(|attr| attr.as_str().ok())
        .map(str::to_owned)
        .collect();
    Ok((common_name.to_owned(), organizations))
}

/// The end of a DER certificate's validity period, or `None` if it cannot be read.
pub(crate) fn not_after(der: &[u8]) -> Option<UnixTime> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let seconds = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(UnixTime::since_unix_epoch(Duration::from_secs(seconds)))
}
