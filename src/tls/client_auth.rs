//! Optional client-certificate authentication against several named CA bundles that can be
//! replaced while the server runs (the front-proxy CA rotates; Go servers that load it once
//! break until restarted).

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, ring};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::tls::TlsError;
use crate::tls::identity::{PeerIdentity, subject_names};

/// A named set of CA certificates, e.g. the `requestheader-client-ca-file` key of
/// `kube-system/extension-apiserver-authentication`.
#[derive(Clone)]
pub struct CaBundle {
    name: String,
    certs: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle")
            .field("name", &self.name)
            .field("certificates", &self.certs.len())
            .finish()
    }
}

impl CaBundle {
    /// Parses every `CERTIFICATE` block of `pem`. Fails on malformed PEM, on a certificate
    /// that cannot serve as a trust anchor, or when there is no certificate at all.
    pub fn from_pem(name: impl Into<String>, pem: impl AsRef<[u8]>) -> Result<Self, TlsError> {
        let name = name.into();
        let certs = CertificateDer::pem_slice_iter(pem.as_ref())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::InvalidCaBundle {
                name: name.clone(),
                reason: format!("invalid PEM: {e}"),
            })?;
        Self::from_der(name, certs)
    }

    /// Wraps already-decoded certificates, with the same checks as [`from_pem`](Self::from_pem).
    pub fn from_der(
        name: impl Into<String>,
        certs: Vec<CertificateDer<'static>>,
    ) -> Result<Self, TlsError> {
        let bundle = Self {
            name: name.into(),
            certs,
        };
        bundle.root_store()?;
        Ok(bundle)
    }

    /// The bundle's name, reported in [`PeerIdentity::Certificate::bundle`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CA certificates.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    fn root_store(&self) -> Result<RootCertStore, TlsError> {
        if self.certs.is_empty() {
            return Err(self.invalid("contains no certificates".to_owned()));
        }
        let mut roots = RootCertStore::empty();
        for (index, cert) in self.certs.iter().enumerate() {
            roots
                .add(cert.clone())
                .map_err(|e| self.invalid(format!("certificate #{index}: {e}")))?;
        }
        Ok(roots)
    }

    fn invalid(&self, reason: String) -> TlsError {
        TlsError::InvalidCaBundle {
            name: self.name.clone(),
            reason,
        }
    }
}

/// One bundle, ready to verify against.
struct Entry {
    name: String,
    verifier: Arc<dyn ClientCertVerifier>,
}

/// An immutable snapshot; swapped whole so a handshake never sees half an update.
#[derive(Default)]
struct BundleSet {
    entries: Vec<Entry>,
    /// Which [`ClientCaHandle::set_bundles`] call produced this set (0: none yet).
    generation: u64,
}

impl BundleSet {
    /// The first bundle that verifies the chain. When none does, the most specific
    /// error wins: "expired" from the bundle that knows the issuer says more than "unknown
    /// issuer" from the others.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<&Entry, rustls::Error> {
        let mut chosen: Option<rustls::Error> = None;
        for entry in &self.entries {
            match entry
                .verifier
                .verify_client_cert(end_entity, intermediates, now)
            {
                Ok(_) => return Ok(entry),
                Err(err) => {
                    let keep_old = chosen.as_ref().is_some_and(|old| !is_unknown_issuer(old));
                    if !keep_old {
                        chosen = Some(err);
                    }
                }
            }
        }
        Err(chosen.unwrap_or(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        )))
    }
}

fn is_unknown_issuer(err: &rustls::Error) -> bool {
    matches!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    )
}

struct Shared {
    current: RwLock<Arc<BundleSet>>,
    /// `current.generation`, readable without the lock: open connections compare it on
    /// every request to learn whether their cached identity is still backed by the bundles.
    generation: AtomicU64,
    provider: Arc<CryptoProvider>,
    /// Chains identified so far, so tests can prove the per-request path does no crypto.
    #[cfg(test)]
    identifications: AtomicU64,
}

impl Shared {
    fn snapshot(&self) -> Arc<BundleSet> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The run-time handle on the trusted client CA bundles. Clones share state: give one to the
/// TLS configuration ([`ServerTls::new`](crate::tls::ServerTls::new)) and keep one for the
/// ConfigMap watcher that calls [`set_bundles`](Self::set_bundles).
///
/// The verifier it produces requests a client certificate but never requires one. A
/// presented certificate must chain to at least one bundle, or the handshake fails; with no
/// bundles configured every presented certificate is rejected, while clients presenting
/// none still connect.
#[derive(Clone)]
pub struct ClientCaHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for ClientCaHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCaHandle")
            .field("bundles", &self.bundle_names())
            .finish()
    }
}

impl Default for ClientCaHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientCaHandle {
    /// A handle with no bundles yet.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                current: RwLock::new(Arc::new(BundleSet::default())),
                generation: AtomicU64::new(0),
                provider: Arc::new(ring::default_provider()),
                #[cfg(test)]
                identifications: AtomicU64::new(0),
            }),
        }
    }

    /// A handle starting with `bundles`.
    pub fn with_bundles(bundles: impl IntoIterator<Item = CaBundle>) -> Result<Self, TlsError> {
        let handle = Self::new();
        handle.set_bundles(bundles)?;
        Ok(handle)
    }

    /// Replaces all bundles at once. New handshakes use them immediately; on connections
    /// already open, [`serve`](crate::tls::serve) re-identifies the peer against them at
    /// the next request, so removing a CA also strips the certificate identity from
    /// long-lived connections that it verified. Order matters: a certificate is attributed
    /// to the first bundle that verifies it, so list `requestheader-client-ca-file` before
    /// `client-ca-file`, as Go's authenticator chain does. On error nothing changes.
    pub fn set_bundles(&self, bundles: impl IntoIterator<Item = CaBundle>) -> Result<(), TlsError> {
        let mut seen = HashSet::new();
        let mut entries = Vec::new();
        for bundle in bundles {
            if !seen.insert(bundle.name.clone()) {
                return Err(TlsError::DuplicateBundle { name: bundle.name });
            }
            let roots = bundle.root_store()?;
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::clone(&self.shared.provider),
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| bundle.invalid(e.to_string()))?;
            entries.push(Entry {
                name: bundle.name,
                verifier,
            });
        }
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        tracing::info!(bundles = ?names, "client CA bundles updated");
        let mut current = self
            .shared
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let generation = current.generation + 1;
        *current = Arc::new(BundleSet {
            entries,
            generation,
        });
        // Published while the lock is still held, so concurrent swaps publish their
        // generations in the order their sets were installed. A reader that sees this
        // value and then takes a snapshot gets this set or a newer one.
        self.shared.generation.store(generation, Ordering::Release);
        Ok(())
    }

    /// Counts successful [`set_bundles`](Self::set_bundles) calls: an identity computed at
    /// the current generation is still what the bundles say.
    pub(crate) fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// How many chains were identified (verified against the bundles) so far.
    #[cfg(test)]
    pub(crate) fn identifications(&self) -> u64 {
        self.shared.identifications.load(Ordering::Relaxed)
    }

    /// Names of the configured bundles, in order.
    pub fn bundle_names(&self) -> Vec<String> {
        self.shared
            .snapshot()
            .entries
            .iter()
            .map(|e| e.name.clone())
            .collect()
    }

    /// The rustls verifier backed by this handle.
    pub fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::new(MultiBundleVerifier {
            shared: Arc::clone(&self.shared),
        })
    }

    /// Identifies a peer from its certificate chain (leaf first), as returned by
    /// `ServerConnection::peer_certificates()`, against the current bundles.
    ///
    /// rustls does not tell us which bundle accepted the chain during the handshake, so it is
    /// verified again (a few signature checks). If the bundles changed in between and none
    /// accepts it any more, the peer is [`PeerIdentity::Anonymous`]: it gets no
    /// certificate-based privileges.
    pub fn identify(&self, chain: &[CertificateDer<'_>]) -> PeerIdentity {
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return PeerIdentity::Anonymous;
        };
        match self
            .identify_at(end_entity, intermediates, UnixTime::now())
            .1
        {
            Ok(identity) => identity,
            Err(reason) => {
                tracing::warn!(error = %reason, "treating the client as anonymous");
                PeerIdentity::Anonymous
            }
        }
    }

    /// [`identify`](Self::identify) at `now`, without logging, also returning the generation
    /// of the bundles the answer is based on.
    pub(crate) fn identify_at(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> (u64, Result<PeerIdentity, Unidentified>) {
        #[cfg(test)]
        self.shared.identifications.fetch_add(1, Ordering::Relaxed);
        let set = self.shared.snapshot();
        let identity = set
            .verify(end_entity, intermediates, now)
            .map_err(Unidentified::Unverified)
            .and_then(|entry| {
                let (common_name, organizations) =
                    subject_names(end_entity).map_err(|error| Unidentified::UnreadableSubject {
                        bundle: entry.name.clone(),
                        error,
                    })?;
                Ok(PeerIdentity::Certificate {
                    bundle: entry.name.clone(),
                    common_name,
                    organizations,
                })
            });
        (set.generation, identity)
    }
}

/// Why a presented client certificate earns no identity.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unidentified {
    /// No configured bundle verifies the chain (any more), or it expired.
    #[error("client certificate does not chain to a configured CA bundle: {0}")]
    Unverified(rustls::Error),
    /// Verified, but the user name cannot be read.
    #[error(
        "cannot read the subject of the client certificate verified by bundle {bundle:?}: {error}"
    )]
    UnreadableSubject { bundle: String, error: String },
}

/// Delegates chain verification to one `WebPkiClientVerifier` per bundle (rebuilt on every
/// swap) and handshake signatures to the ring provider.
struct MultiBundleVerifier {
    shared: Arc<Shared>,
}

impl fmt::Debug for MultiBundleVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiBundleVerifier")
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for MultiBundleVerifier {
    /// Always true, even with no bundles: rustls asks more than once per handshake, and an
    /// answer that changed in between (a concurrent swap) would break the handshake.
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// No hints. The subjects live behind a lock and cannot be lent out, and hints would
    /// hurt anyway: Go clients withhold their certificate when none of the hinted CAs
    /// issued it, which turns a CA rotation race into silent anonymous requests. An empty
    /// list lets the client send whatever certificate it has (RFC 5246 §7.4.4, RFC 8446
    /// §4.2.4).
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.shared
            .snapshot()
            .verify(end_entity, intermediates, now)
            .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.shared.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.shared.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.shared
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
