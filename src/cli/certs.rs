//! `certs generate`: the external metrics server's CA and serving certificate, without
//! openssl. Writes what `certs/generate.sh` writes (`ca.crt`, `ca.key`, `tls.crt`,
//! `tls.key`, the `Secret` mounted at `external_metrics_provider.cert_dir`, and the
//! `APIService` with its `caBundle` filled in) and prints the `caBundle`, so
//! `CA_BUNDLE=$(datadog-cluster-agent certs generate)` works in a script.
//!
//! An existing `ca.crt`/`ca.key` in the folder is kept and signs the new serving
//! certificate: re-running rotates the certificate without touching the APIService's trust.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::tls::{IssuedPem, issue_serving, new_ca};

/// The APIService template `certs/generate.sh` fills in too.
const APISERVICE_TEMPLATE: &str = include_str!("../../apiservice/apiservice.yaml");
const TEMPLATE_SERVICE: &str = "datadog-cluster-agent-metrics-api";
const TEMPLATE_NAMESPACE: &str = "datadog";
/// The Secret `manifests/cluster-agent/cluster-agent.yaml` mounts.
const SECRET_NAME: &str = "datadog-cluster-agent-metrics-api-cert";
const CA_COMMON_NAME: &str = "datadog-cluster-agent-metrics-ca";
const CA_DAYS: i64 = 3650;

#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CertsCommand {
    /// Make (or rotate) the external metrics server's serving certificate and its CA; print the APIService caBundle.
    Generate(GenerateArgs),
}

#[derive(Debug, clap::Args)]
struct GenerateArgs {
    /// The Service the aggregator dials (the certificate names <service>.<namespace>.svc).
    #[arg(long, default_value = TEMPLATE_SERVICE)]
    service: String,
    /// The agent's namespace.
    #[arg(long, default_value = TEMPLATE_NAMESPACE)]
    namespace: String,
    /// Folder to write to (created when missing; an existing CA there is reused).
    #[arg(long, default_value = "certs/out")]
    out: PathBuf,
    /// Days the serving certificate is valid.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u16).range(1..))]
    days: u16,
}

#[derive(Debug, thiserror::Error)]
enum CertsError {
    #[error(
        "--{flag} must be a DNS-1123 label (lower-case letters, digits and '-', at most 63), not {value:?}"
    )]
    NotALabel { flag: &'static str, value: String },
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} exists without {}: remove it or add the missing half", present.display(), missing.display())]
    HalfCa { present: PathBuf, missing: PathBuf },
    #[error("cannot make the certificates: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// What the aggregator may dial: the short names and the cluster-domain one.
fn sans(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn secret_yaml(namespace: &str, serving: &IssuedPem) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {SECRET_NAME}\n  namespace: {namespace}\n  labels:\n    app.kubernetes.io/name: datadog-cluster-agent\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b64(serving.cert_pem.as_bytes()),
        b64(serving.key_pem.as_bytes())
    )
}

fn apiservice_yaml(service: &str, namespace: &str, ca_bundle: &str) -> String {
    APISERVICE_TEMPLATE
        .replace("${CA_BUNDLE}", ca_bundle)
        .replace(
            &format!("namespace: {TEMPLATE_NAMESPACE}"),
            &format!("namespace: {namespace}"),
        )
        .replace(
            &format!("name: {TEMPLATE_SERVICE}"),
            &format!("name: {service}"),
        )
}

fn read(path: &Path) -> Result<Option<String>, CertsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CertsError::Io {
            what: "read",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes through a temporary file and a rename, so a reader (the agent re-reads its
/// certificate) never sees half a file; `mode` applies from creation.
fn write(path: &Path, contents: &str, mode: u32) -> Result<(), CertsError> {
    let io = |what, source| CertsError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io("write", e))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io("write", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("write", e))
}

/// The CA in `out`, or a new one written there.
fn ca(out: &Path) -> Result<IssuedPem, CertsError> {
    let (cert_path, key_path) = (out.join("ca.crt"), out.join("ca.key"));
    match (read(&cert_path)?, read(&key_path)?) {
        (Some(cert_pem), Some(key_pem)) => Ok(IssuedPem { cert_pem, key_pem }),
        (None, None) => {
            let ca = new_ca(CA_COMMON_NAME, CA_DAYS)?;
            write(&key_path, &ca.key_pem, 0o600)?;
            write(&cert_path, &ca.cert_pem, 0o644)?;
            Ok(ca)
        }
        (Some(_), None) => Err(CertsError::HalfCa {
            present: cert_path,
            missing: key_path,
        }),
        (None, Some(_)) => Err(CertsError::HalfCa {
            present: key_path,
            missing: cert_path,
        }),
    }
}

/// Writes everything into `args.out`; returns the caBundle.
fn generate(args: &GenerateArgs) -> Result<String, CertsError> {
    for (flag, value) in [("service", &args.service), ("namespace", &args.namespace)] {
        if !is_dns_label(value) {
            return Err(CertsError::NotALabel {
                flag,
                value: value.clone(),
            });
        }
    }
    std::fs::create_dir_all(&args.out).map_err(|source| CertsError::Io {
        what: "create",
        path: args.out.clone(),
        source,
    })?;
    let ca = ca(&args.out)?;
    let serving = issue_serving(
        &ca,
        &sans(&args.service, &args.namespace),
        i64::from(args.days),
    )?;
    write(&args.out.join("tls.key"), &serving.key_pem, 0o600)?;
    write(&args.out.join("tls.crt"), &serving.cert_pem, 0o644)?;
    write(
        &args.out.join("secret.yaml"),
        &secret_yaml(&args.namespace, &serving),
        0o600,
    )?;
    let ca_bundle = b64(ca.cert_pem.as_bytes());
    write(
        &args.out.join("apiservice.yaml"),
        &apiservice_yaml(&args.service, &args.namespace, &ca_bundle),
        0o644,
    )?;
    Ok(ca_bundle)
}

pub(super) fn run(args: &CertsArgs) -> anyhow::Result<()> {
    let CertsCommand::Generate(args) = &args.command;
    let ca_bundle = generate(args)?;
    eprintln!(
        "wrote {out}/{{ca.crt,ca.key,tls.crt,tls.key,secret.yaml,apiservice.yaml}}; apply {out}/secret.yaml and {out}/apiservice.yaml",
        out = args.out.display()
    );
    println!("{ca_bundle}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::Arc;

    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _};

    use super::*;

    fn args(out: &Path) -> GenerateArgs {
        GenerateArgs {
            service: "metrics".into(),
            namespace: "dd".into(),
            out: out.to_owned(),
            days: 30,
        }
    }

    /// Verifies `tls.crt` in `dir` against `ca.crt` there, for `name`.
    fn verifies(dir: &Path, name: &str) -> Result<(), rustls::Error> {
        let ca = CertificateDer::from_pem_file(dir.join("ca.crt")).unwrap();
        let leaf = CertificateDer::from_pem_file(dir.join("tls.crt")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    #[test]
    fn the_serving_certificate_chains_to_the_ca_for_every_name_the_aggregator_dials() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = generate(&args(dir.path())).unwrap();
        for name in [
            "metrics.dd.svc",
            "metrics",
            "metrics.dd",
            "metrics.dd.svc.cluster.local",
        ] {
            verifies(dir.path(), name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(verifies(dir.path(), "other.dd.svc").is_err());
        let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
        assert_eq!(bundle, b64(&ca));
        for (file, mode) in [
            ("ca.key", 0o600),
            ("tls.key", 0o600),
            ("secret.yaml", 0o600),
            ("tls.crt", 0o644),
        ] {
            let meta = std::fs::metadata(dir.path().join(file)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
        }
    }

    #[test]
    fn a_second_run_keeps_the_ca_and_rotates_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let first = generate(&args(dir.path())).unwrap();
        let cert = std::fs::read_to_string(dir.path().join("tls.crt")).unwrap();
        let second = generate(&args(dir.path())).unwrap();
        assert_eq!(first, second, "the caBundle must not change on rotation");
        assert_ne!(
            cert,
            std::fs::read_to_string(dir.path().join("tls.crt")).unwrap()
        );
        verifies(dir.path(), "metrics.dd.svc").unwrap();
    }

    #[test]
    fn the_manifests_carry_the_bundle_and_the_names() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = generate(&args(dir.path())).unwrap();
        let apiservice: serde_json::Value = serde_saphyr::from_str(
            &std::fs::read_to_string(dir.path().join("apiservice.yaml")).unwrap(),
        )
        .unwrap();
        assert_eq!(apiservice["spec"]["caBundle"], bundle.as_str());
        assert_eq!(apiservice["spec"]["service"]["name"], "metrics");
        assert_eq!(apiservice["spec"]["service"]["namespace"], "dd");
        assert_eq!(
            apiservice["metadata"]["name"],
            "v1beta1.external.metrics.k8s.io"
        );
        let secret: serde_json::Value = serde_saphyr::from_str(
            &std::fs::read_to_string(dir.path().join("secret.yaml")).unwrap(),
        )
        .unwrap();
        assert_eq!(secret["metadata"]["name"], SECRET_NAME);
        assert_eq!(secret["metadata"]["namespace"], "dd");
        assert_eq!(secret["type"], "kubernetes.io/tls");
        let cert = std::fs::read(dir.path().join("tls.crt")).unwrap();
        assert_eq!(secret["data"]["tls.crt"], b64(&cert).as_str());
    }

    #[test]
    fn bad_names_and_half_a_ca_are_refused_naming_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let mut bad = args(dir.path());
        bad.namespace = "Data_Dog".into();
        let err = generate(&bad).unwrap_err().to_string();
        assert!(
            err.starts_with("--namespace must be a DNS-1123 label"),
            "{err}"
        );
        std::fs::write(dir.path().join("ca.crt"), "x").unwrap();
        let err = generate(&args(dir.path())).unwrap_err().to_string();
        assert!(
            err.contains("ca.crt exists without") && err.contains("ca.key"),
            "{err}"
        );
        for (label, ok) in [
            ("a", true),
            ("dd-1", true),
            ("-a", false),
            ("a-", false),
            ("A", false),
            ("a.b", false),
            ("", false),
        ] {
            assert_eq!(is_dns_label(label), ok, "{label:?}");
        }
        assert!(is_dns_label(&"a".repeat(63)) && !is_dns_label(&"a".repeat(64)));
    }

    #[test]
    fn a_ca_made_elsewhere_signs_too() {
        // As certs/generate.sh leaves one: only the two PEM files.
        let dir = tempfile::tempdir().unwrap();
        let other = new_ca("someone-elses-ca", 30).unwrap();
        std::fs::write(dir.path().join("ca.crt"), &other.cert_pem).unwrap();
        std::fs::write(dir.path().join("ca.key"), &other.key_pem).unwrap();
        generate(&args(dir.path())).unwrap();
        verifies(dir.path(), "metrics.dd.svc").unwrap();
    }
}
