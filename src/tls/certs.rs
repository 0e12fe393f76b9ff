//! The serving certificate: loaded from PEM files and re-read when they change, or generated
//! self-signed when no files are configured.

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::Instrument;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, crypto::ring};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::tls::TlsError;

/// How often [`ServerCertResolver::spawn_reloader`] is usually asked to look at the files.
/// Kubelet takes a minute or more to project a renewed Secret, so a few seconds is plenty.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// Common name used when the self-signed certificate has no SAN to borrow one from.
const FALLBACK_COMMON_NAME: &str = "datadog-cluster-agent";

/// Self-signed certificates are made at start-up and never rotated, so they must outlive any
/// realistic process lifetime.
const SELF_SIGNED_VALIDITY_DAYS: i64 = 3650;

/// The names a server reachable as Service `service` in `namespace` is dialled by: loopback
/// for probes and local tools, and every form of the Service DNS name (the aggregator uses
/// `<service>.<namespace>.svc` as TLS server name).
pub fn default_sans(service: &str, namespace: &str) -> Vec<String> {
    vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// A PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1),
    /// re-read when they change.
    Files {
        /// The certificate chain file.
        cert: PathBuf,
        /// The private key file.
        key: PathBuf,
    },
    /// A certificate generated at start-up for these SANs (entries that parse as IP addresses
    /// become IP SANs, the rest DNS SANs).
    SelfSigned {
        /// The subject alternative names.
        sans: Vec<String>,
    },
}

/// A freshly generated self-signed certificate and its key.
pub struct SelfSignedCert {
    /// The certificate, DER.
    pub cert: CertificateDer<'static>,
    /// The certificate, PEM, for publishing as a CA bundle (e.g. an APIService `caBundle`).
    pub cert_pem: String,
    /// The private key, PKCS#8 DER.
    pub key: PrivatePkcs8KeyDer<'static>,
}

impl fmt::Debug for SelfSignedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelfSignedCert")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// Generates an ECDSA P-256 self-signed server certificate for exactly `sans`.
pub fn generate_self_signed(sans: &[String]) -> Result<SelfSignedCert, TlsError> {
    let mut params = rcgen::CertificateParams::new(sans.to_vec())?;
    let common_name = sans.first().map_or(FALLBACK_COMMON_NAME, String::as_str);
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    set_validity(&mut params, SELF_SIGNED_VALIDITY_DAYS);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(SelfSignedCert {
        cert_pem: cert.pem(),
        cert: cert.der().clone(),
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
    })
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct IssuedPem {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedPem")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// A new certificate authority (ECDSA P-256) valid for `days`: what signs the external
/// metrics server's certificate and what the APIService pins in `caBundle`.
pub fn new_ca(common_name: &str, days: i64) -> Result<IssuedPem, TlsError> {
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, days);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(IssuedPem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A serving certificate for exactly `sans` (the first is the common name), signed by the
/// CA in `ca` (ours or any other, e.g. one `certs/generate.sh` made with openssl).
pub fn issue_serving(ca: &IssuedPem, sans: &[String], days: i64) -> Result<IssuedPem, TlsError> {
    let ca_key = rcgen::KeyPair::from_pem(&ca.key_pem)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let mut params = rcgen::CertificateParams::new(sans.to_vec())?;
    let common_name = sans.first().map_or(FALLBACK_COMMON_NAME, String::as_str);
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, days);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(IssuedPem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Yesterday (to tolerate clock skew between us and clients) until ten years later. Left at
/// rcgen's defaults only if the clock reads before 1970.
fn set_validity(params: &mut rcgen::CertificateParams, days: i64) {
    let Ok(now) = SystemTime::now().duration_since(UNIX_EPOCH) else {
        return;
    };
    let Ok(today) = i64::try_from(now.as_secs() / 86_400) else {
        return;
    };
    let start = today - 1;
    if let (Some((y0, m0, d0)), Some((y1, m1, d1))) =
        (civil_from_days(start), civil_from_days(start + days))
    {
        params.not_before = rcgen::date_time_ymd(y0, m0, d0);
        params.not_after = rcgen::date_time_ymd(y1, m1, d1);
    }
}

/// Converts days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard
/// Hinnant's `civil_from_days`); rcgen only takes calendar dates and we have no date crate.
pub(super) fn civil_from_days(days: i64) -> Option<(i32, u8, u8)> {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Some((
        i32::try_from(year).ok()?,
        u8::try_from(month).ok()?,
        u8::try_from(day).ok()?,
    ))
}

/// The two files behind a reloadable certificate.
#[derive(Debug)]
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
}

/// What the reloader remembers between polls.
#[derive(Debug)]
struct ReloadState {
    /// Fingerprint of the file contents now being served.
    loaded: u64,
    /// Fingerprint of the last content (or read error) that failed, so a broken file is
    /// warned about once rather than on every poll.
    last_failure: Option<u64>,
}

/// Serves the current certificate to every new handshake ([`ResolvesServerCert`]) and swaps
/// it when the files change. Connections already established keep the certificate they were
/// handshaken with, because rustls takes its own `Arc` of the key at handshake time.
pub struct ServerCertResolver {
    current: RwLock<Arc<CertifiedKey>>,
    files: Option<CertFiles>,
    reload: Mutex<ReloadState>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for ServerCertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCertResolver")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerCertResolver {
    /// Builds a resolver for `source`: loads the files (failing fast if they are unusable) or
    /// generates the self-signed certificate.
    pub fn from_source(source: &CertSource) -> Result<Arc<Self>, TlsError> {
        match source {
            CertSource::Files { cert, key } => Self::from_files(cert.clone(), key.clone()),
            CertSource::SelfSigned { sans } => Self::self_signed(sans),
        }
    }

    /// Loads a certificate chain and private key from PEM files. They are re-read by
    /// [`reload_now`](Self::reload_now) and [`spawn_reloader`](Self::spawn_reloader).
    pub fn from_files(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Result<Arc<Self>, TlsError> {
        let files = CertFiles {
            cert: cert.into(),
            key: key.into(),
        };
        let provider = Arc::new(ring::default_provider());
        let (cert_pem, key_pem) = read_files(&files)?;
        let certified = parse_pair(&files, &cert_pem, &key_pem, &provider)?;
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(certified)),
            reload: Mutex::new(ReloadState {
                loaded: fingerprint(&cert_pem, &key_pem),
                last_failure: None,
            }),
            files: Some(files),
            provider,
        }))
    }

    /// Generates a self-signed certificate for exactly `sans` (see [`generate_self_signed`]).
    /// It is never reloaded.
    pub fn self_signed(sans: &[String]) -> Result<Arc<Self>, TlsError> {
        let generated = generate_self_signed(sans)?;
        Self::from_der(vec![generated.cert], PrivateKeyDer::Pkcs8(generated.key))
    }

    /// Serves a fixed, already-parsed chain and key; never reloaded.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(ring::default_provider());
        let certified = CertifiedKey::from_der(chain, key, &provider).map_err(TlsError::Config)?;
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(certified)),
            files: None,
            reload: Mutex::new(ReloadState {
                loaded: 0,
                last_failure: None,
            }),
            provider,
        }))
    }

    /// The certificate and key new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether this resolver watches files (false for self-signed and fixed certificates).
    pub fn is_reloadable(&self) -> bool {
        self.files.is_some()
    }

    /// Re-reads the files now. `Ok(true)` if a new certificate is being served, `Ok(false)`
    /// if the contents are unchanged (or there are no files). On error the previous
    /// certificate stays in service; the error is also logged as a warning, once per distinct
    /// broken content, so callers polling in a loop may ignore it.
    pub fn reload_now(&self) -> Result<bool, TlsError> {
        let Some(files) = &self.files else {
            return Ok(false);
        };
        // Held for the whole reload so concurrent callers cannot interleave and end up
        // serving the older of two new certificates.
        let mut state = self.reload.lock().unwrap_or_else(PoisonError::into_inner);
        let (cert_pem, key_pem) = match read_files(files) {
            Ok(contents) => contents,
            Err(err) => {
                note_failure(&mut state, hash_one(&err.to_string()), &err);
                return Err(err);
            }
        };
        let print = fingerprint(&cert_pem, &key_pem);
        if print == state.loaded {
            state.last_failure = None;
            return Ok(false);
        }
        match parse_pair(files, &cert_pem, &key_pem, &self.provider) {
            Ok(certified) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(certified);
                state.loaded = print;
                state.last_failure = None;
                tracing::info!(
                    cert = %files.cert.display(),
                    key = %files.key.display(),
                    "reloaded TLS serving certificate"
                );
                Ok(true)
            }
            Err(err) => {
                note_failure(&mut state, print, &err);
                Err(err)
            }
        }
    }

    /// Polls the files every `interval` until `shutdown` is cancelled. Returns a finished
    /// handle at once for resolvers without files. Must be called within a tokio runtime.
    pub fn spawn_reloader(
        self: &Arc<Self>,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(
            async move {
                if !this.is_reloadable() {
                    return;
                }
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
                // The first tick fires immediately; the files were just loaded.
                ticker.tick().await;
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        _ = ticker.tick() => {}
                    }
                    let resolver = Arc::clone(&this);
                    // File reads may block (slow or remote volumes); keep them off the runtime.
                    match tokio::task::spawn_blocking(move || resolver.reload_now()).await {
                        // Errors were already logged by reload_now, once per distinct content.
                        Ok(_) => {}
                        Err(err) => {
                            tracing::warn!(error = %err, "TLS certificate reload task failed")
                        }
                    }
                }
            }
            .instrument(tracing::info_span!("tls-cert-reloader")),
        )
    }
}

impl ResolvesServerCert for ServerCertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn note_failure(state: &mut ReloadState, print: u64, err: &TlsError) {
    if state.last_failure != Some(print) {
        tracing::warn!(error = %err, "keeping the previous TLS serving certificate");
        state.last_failure = Some(print);
    }
}

fn read_files(files: &CertFiles) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    Ok((
        read_file("certificate", &files.cert)?,
        read_file("private key", &files.key)?,
    ))
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::ReadFile {
        what,
        path: path.to_owned(),
        error,
    })
}

/// Change detection compares content rather than mtime: mtime granularity can hide a quick
/// rewrite, and the files are small. A hash (not a copy) is kept so that no second copy of the
/// private key lingers in memory; SipHash with fixed keys is fine for spotting changes.
fn fingerprint(cert_pem: &[u8], key_pem: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    cert_pem.hash(&mut hasher);
    key_pem.hash(&mut hasher);
    hasher.finish()
}

fn hash_one(value: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

fn parse_pair(
    files: &CertFiles,
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::InvalidPem {
            what: "certificate",
            path: files.cert.clone(),
            error,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|error| match error {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: files.key.clone(),
        },
        error => TlsError::InvalidPem {
            what: "private key",
            path: files.key.clone(),
            error,
        },
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|error| TlsError::UnsupportedKey {
            path: files.key.clone(),
            error,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // Providers that cannot expose the public key give Unknown; rustls itself accepts
        // that, and a real mismatch would then fail at handshake time instead.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            })
        }
        Err(error) => Err(TlsError::InvalidCertificate {
            path: files.cert.clone(),
            error,
        }),
    }
}
