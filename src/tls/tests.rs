//! End-to-end tests: real TLS handshakes over 127.0.0.1 with tokio-rustls clients, and
//! certificates made with rcgen.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::tls::{
    CaBundle, CertSource, ClientCaHandle, PeerIdentity, RemoteAddr, ServeOptions,
    ServerCertResolver, ServerTls, TlsError, default_sans, generate_self_signed, serve,
    serve_with_options,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const FRONT_PROXY: &str = "requestheader-client-ca-file";
const CLIENT_CA: &str = "client-ca-file";
const ORGANIZATION_OID: [u64; 4] = [2, 5, 4, 10];

fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

// ---------------------------------------------------------------------------------------
// Certificate fixtures

struct TestCa {
    cert: CertificateDer<'static>,
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

struct Leaf {
    cert: CertificateDer<'static>,
    cert_pem: String,
    key: KeyPair,
}

impl Leaf {
    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

fn test_ca(name: &str) -> TestCa {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    TestCa {
        pem: cert.pem(),
        cert: cert.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

impl TestCa {
    /// rcgen keeps one value per attribute type, so a second O is added under its raw OID;
    /// two values are enough to prove all are read.
    fn leaf(
        &self,
        common_name: &str,
        organizations: &[&str],
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> Leaf {
        assert!(
            organizations.len() <= 2,
            "rcgen fixture supports two O values"
        );
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        if let Some(first) = organizations.first() {
            dn.push(DnType::OrganizationName, *first);
        }
        if let Some(second) = organizations.get(1) {
            dn.push(DnType::CustomDnType(ORGANIZATION_OID.to_vec()), *second);
        }
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            cert: cert.der().clone(),
            key,
        }
    }

    fn server_leaf(&self) -> Leaf {
        self.leaf(
            "server",
            &[],
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client_leaf(&self, common_name: &str, organizations: &[&str]) -> Leaf {
        self.leaf(
            common_name,
            organizations,
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    fn bundle(&self, name: &str) -> CaBundle {
        CaBundle::from_pem(name, &self.pem).unwrap()
    }
}

fn write_pair(dir: &Path, leaf: &Leaf) -> (PathBuf, PathBuf) {
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, leaf.key.serialize_pem()).unwrap();
    (cert, key)
}

// ---------------------------------------------------------------------------------------
// Server harness

/// What the test service saw for one request.
#[derive(Debug)]
struct Seen {
    peer: Option<Arc<PeerIdentity>>,
    remote: Option<RemoteAddr>,
    version: http::Version,
}

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    seen: mpsc::UnboundedReceiver<Seen>,
    started: mpsc::UnboundedReceiver<()>,
}

impl Server {
    async fn start(tls: ServerTls) -> Self {
        Self::start_with(tls, ServeOptions::default()).await
    }

    /// Serves `GET /` (answers at once) and `GET /slow/<ms>` (signals `started`, then waits).
    async fn start_with(tls: ServerTls, options: ServeOptions) -> Self {
        install_provider();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let (started_tx, started) = mpsc::unbounded_channel();
        let service = service_fn(move |request: Request<Incoming>| {
            let seen_tx = seen_tx.clone();
            let started_tx = started_tx.clone();
            async move {
                let path = request.uri().path().to_owned();
                let _ = seen_tx.send(Seen {
                    peer: request.extensions().get::<Arc<PeerIdentity>>().cloned(),
                    remote: request.extensions().get::<RemoteAddr>().copied(),
                    version: request.version(),
                });
                if let Some(ms) = path.strip_prefix("/slow/") {
                    let _ = started_tx.send(());
                    tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("ok {path}")))))
            }
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve_with_options(
            listener,
            tls,
            service,
            shutdown.clone(),
            options,
        ));
        Self {
            addr,
            shutdown,
            task,
            seen,
            started,
        }
    }

    async fn next_seen(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(5), self.seen.recv())
            .await
            .expect("request reached the service")
            .unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("serve returned")
            .unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Client harness

fn client_config(
    trusted: &[&CertificateDer<'static>],
    identity: Option<&Leaf>,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in trusted {
        roots.add((*cert).clone()).unwrap();
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
    let mut config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(vec![leaf.cert.clone()], leaf.key_der())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

fn h1_client(trusted: &[&CertificateDer<'static>], identity: Option<&Leaf>) -> Arc<ClientConfig> {
    client_config(trusted, identity, rustls::DEFAULT_VERSIONS, &[b"http/1.1"])
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: &str,
) -> Result<TlsStream<TcpStream>, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_owned())?;
    Ok(TlsConnector::from(config).connect(name, tcp).await?)
}

/// One HTTP/1.1 client connection, kept open so it can be reused.
struct H1Conn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    server_cert: CertificateDer<'static>,
}

impl H1Conn {
    async fn open(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<Self, BoxError> {
        let stream = tls_connect(addr, config, "localhost").await?;
        let server_cert = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            sender,
            server_cert,
        })
    }

    async fn get(&mut self, path: &str) -> Result<(StatusCode, String), BoxError> {
        let request = Request::get(path)
            .header(http::header::HOST, "localhost")
            .body(Empty::new())?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// One HTTP/2 client connection, kept open so it can be reused.
struct H2Conn {
    sender: hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
}

impl H2Conn {
    async fn open(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<Self, BoxError> {
        let stream = tls_connect(addr, config, "localhost").await?;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { sender })
    }

    async fn get(&mut self, path: &str) -> Result<StatusCode, BoxError> {
        let request = Request::get(format!("https://localhost{path}")).body(Empty::new())?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        Ok(status)
    }
}

/// Either kind of kept-alive connection, so one scenario can run over both.
enum KeptAlive {
    H1(H1Conn),
    H2(H2Conn),
}

impl KeptAlive {
    async fn open(
        addr: SocketAddr,
        trusted: &[&CertificateDer<'static>],
        identity: &Leaf,
        http2: bool,
    ) -> Self {
        let alpn: &[&[u8]] = if http2 { &[b"h2"] } else { &[b"http/1.1"] };
        let config = client_config(trusted, Some(identity), rustls::DEFAULT_VERSIONS, alpn);
        if http2 {
            Self::H2(H2Conn::open(addr, config).await.unwrap())
        } else {
            Self::H1(H1Conn::open(addr, config).await.unwrap())
        }
    }

    async fn get(&mut self, path: &str) {
        let status = match self {
            Self::H1(conn) => conn.get(path).await.unwrap().0,
            Self::H2(conn) => conn.get(path).await.unwrap(),
        };
        assert_eq!(status, StatusCode::OK);
    }
}

/// Connects, sends `GET path`, returns the body; any failure (handshake or request) is Err.
async fn fetch(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    path: &str,
) -> Result<String, BoxError> {
    let mut conn = H1Conn::open(addr, config).await?;
    let (status, body) = conn.get(path).await?;
    assert_eq!(status, StatusCode::OK);
    Ok(body)
}

async fn served_cert(addr: SocketAddr, config: Arc<ClientConfig>) -> CertificateDer<'static> {
    H1Conn::open(addr, config).await.unwrap().server_cert
}

fn tls_with_client_ca(server: &Leaf, handle: &ClientCaHandle) -> ServerTls {
    let resolver =
        ServerCertResolver::from_der(vec![server.cert.clone()], server.key_der()).unwrap();
    ServerTls::new(resolver, Some(handle.clone())).unwrap()
}

// ---------------------------------------------------------------------------------------
// Serving certificate: self-signed

#[test]
fn default_sans_cover_loopback_and_every_service_name() {
    assert_eq!(
        default_sans("dca-metrics", "datadog"),
        [
            "localhost",
            "127.0.0.1",
            "dca-metrics",
            "dca-metrics.datadog",
            "dca-metrics.datadog.svc",
            "dca-metrics.datadog.svc.cluster.local",
        ]
    );
}

#[test]
fn self_signed_certificate_has_exactly_the_requested_sans() {
    let mut sans = default_sans("dca-metrics", "datadog");
    sans.push("::1".to_owned());
    let generated = generate_self_signed(&sans).unwrap();

    let (_, cert) = X509Certificate::from_der(&generated.cert).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let mut dns = BTreeSet::new();
    let mut ips = BTreeSet::new();
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(d) => {
                dns.insert(d.to_string());
            }
            GeneralName::IPAddress(bytes) => {
                let ip = match bytes.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap()),
                    16 => IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap()),
                    n => panic!("IP SAN of {n} bytes"),
                };
                ips.insert(ip);
            }
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    let expected_dns: BTreeSet<String> = [
        "localhost",
        "dca-metrics",
        "dca-metrics.datadog",
        "dca-metrics.datadog.svc",
        "dca-metrics.datadog.svc.cluster.local",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(dns, expected_dns);
    assert_eq!(
        ips,
        BTreeSet::from([
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        ])
    );
    assert_eq!(
        san.value.general_names.len(),
        7,
        "no duplicate or extra SANs"
    );

    // A server certificate, usable today, not a CA.
    let validity = cert.validity();
    assert!(validity.is_valid());
    assert!(validity.time_to_expiration().unwrap().whole_days() > 3000);
    assert!(!cert.is_ca());
    assert_eq!(
        cert.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "localhost"
    );
    assert!(
        generated
            .cert_pem
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
}

#[test]
fn calendar_conversion_matches_known_dates() {
    use crate::tls::certs::civil_from_days;
    assert_eq!(civil_from_days(0), Some((1970, 1, 1)));
    assert_eq!(civil_from_days(-1), Some((1969, 12, 31)));
    assert_eq!(civil_from_days(11_016), Some((2000, 2, 29)));
    assert_eq!(civil_from_days(19_782), Some((2024, 2, 29)));
    assert_eq!(civil_from_days(20_819), Some((2027, 1, 1)));
}

#[tokio::test]
async fn self_signed_resolver_serves_its_certificate_to_the_service_name() {
    let sans = default_sans("dca-metrics", "datadog");
    let resolver = ServerCertResolver::from_source(&CertSource::SelfSigned { sans }).unwrap();
    assert!(!resolver.is_reloadable());
    assert!(!resolver.reload_now().unwrap());
    let cert = resolver.current().cert[0].clone();
    let server = Server::start(ServerTls::new(resolver, None).unwrap()).await;

    let config = h1_client(&[&cert], None);
    let stream = tls_connect(server.addr, config, "dca-metrics.datadog.svc")
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.peer_certificates().unwrap()[0], cert);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Serving certificate: files and hot reload

#[tokio::test]
async fn changed_cert_file_is_served_to_the_next_connection_without_restart() {
    let ca_a = test_ca("server CA A");
    let ca_b = test_ca("server CA B");
    let leaf_a = ca_a.server_leaf();
    let leaf_b = ca_b.server_leaf();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = write_pair(dir.path(), &leaf_a);
    let resolver = ServerCertResolver::from_files(&cert_path, &key_path).unwrap();
    let mut server = Server::start(ServerTls::new(resolver.clone(), None).unwrap()).await;
    let config = h1_client(&[&ca_a.cert, &ca_b.cert], None);

    let mut old = H1Conn::open(server.addr, config.clone()).await.unwrap();
    assert_eq!(old.server_cert, leaf_a.cert);
    assert!(
        !resolver.reload_now().unwrap(),
        "unchanged files are not reloaded"
    );

    write_pair(dir.path(), &leaf_b);
    assert!(resolver.reload_now().unwrap());
    assert_eq!(served_cert(server.addr, config.clone()).await, leaf_b.cert);

    // The connection made before the swap still works, on its original certificate.
    let (status, body) = old.get("/").await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok /"));
    assert_eq!(old.server_cert, leaf_a.cert);
    server.next_seen().await;
    server.stop().await;
}

#[tokio::test]
async fn reloader_task_picks_up_changes_and_stops_on_cancel() {
    let ca = test_ca("server CA");
    let (first, second) = (ca.server_leaf(), ca.server_leaf());
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = write_pair(dir.path(), &first);
    let resolver = ServerCertResolver::from_files(cert_path, key_path).unwrap();
    let stop = CancellationToken::new();
    let reloader = resolver.spawn_reloader(Duration::from_millis(20), stop.clone());

    write_pair(dir.path(), &second);
    let deadline = Instant::now() + Duration::from_secs(5);
    while resolver.current().cert[0] != second.cert {
        assert!(
            Instant::now() < deadline,
            "reloader never picked up the new files"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), reloader)
        .await
        .expect("reloader stopped")
        .unwrap();
}

#[tokio::test]
async fn bad_new_files_keep_the_old_certificate() {
    let ca = test_ca("server CA");
    let good = ca.server_leaf();
    let other = ca.server_leaf();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = write_pair(dir.path(), &good);
    let resolver = ServerCertResolver::from_files(&cert_path, &key_path).unwrap();
    let server = Server::start(ServerTls::new(resolver.clone(), None).unwrap()).await;
    let config = h1_client(&[&ca.cert], None);

    // Half-written certificate.
    let half = &good.cert_pem[..good.cert_pem.len() / 2];
    std::fs::write(&cert_path, half).unwrap();
    let err = resolver.reload_now().unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::InvalidPem {
                what: "certificate",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&cert_path.display().to_string()));
    // Asking again with the same broken content fails the same way (warned only once).
    assert!(resolver.reload_now().is_err());
    assert_eq!(served_cert(server.addr, config.clone()).await, good.cert);

    // New certificate, old key.
    std::fs::write(&cert_path, &other.cert_pem).unwrap();
    let err = resolver.reload_now().unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    assert_eq!(served_cert(server.addr, config.clone()).await, good.cert);

    // Key file gone (e.g. mid-rotation).
    std::fs::remove_file(&key_path).unwrap();
    let err = resolver.reload_now().unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "cannot read TLS private key {}: ",
            key_path.display()
        )),
        "{err}"
    );
    assert_eq!(served_cert(server.addr, config.clone()).await, good.cert);

    // Once the pair is consistent again it is picked up.
    std::fs::write(&key_path, other.key.serialize_pem()).unwrap();
    assert!(resolver.reload_now().unwrap());
    assert_eq!(served_cert(server.addr, config).await, other.cert);
    server.stop().await;
}

#[test]
fn file_errors_name_the_file_and_the_problem() {
    install_provider();
    let ca = test_ca("server CA");
    let leaf = ca.server_leaf();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = write_pair(dir.path(), &leaf);

    let missing = dir.path().join("absent.crt");
    let err = ServerCertResolver::from_files(&missing, &key_path).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "cannot read TLS certificate {}: ",
            missing.display()
        )),
        "{message}"
    );
    assert!(
        matches!(err, TlsError::ReadFile { ref error, .. } if error.kind() == std::io::ErrorKind::NotFound)
    );

    std::fs::write(&key_path, "not a key\n").unwrap();
    let err = ServerCertResolver::from_files(&cert_path, &key_path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("no private key found in {}", key_path.display())
    );

    std::fs::write(&cert_path, leaf.key.serialize_pem()).unwrap();
    let err = ServerCertResolver::from_files(&cert_path, &key_path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("no certificate found in {}", cert_path.display())
    );
}

#[tokio::test]
async fn pkcs1_rsa_and_sec1_ec_keys_are_served() {
    let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/tls/testdata");
    for (cert, key) in [("rsa.crt", "rsa-pkcs1.key"), ("ec.crt", "ec-sec1.key")] {
        let resolver =
            ServerCertResolver::from_files(testdata.join(cert), testdata.join(key)).unwrap();
        let served = resolver.current().cert[0].clone();
        let server = Server::start(ServerTls::new(resolver, None).unwrap()).await;
        let config = h1_client(&[&served], None);
        let body = fetch(server.addr, config, "/").await.unwrap();
        assert_eq!(body, "ok /", "{cert}");
        server.stop().await;
    }
}

#[test]
fn combined_pem_file_with_chain_and_key_loads() {
    install_provider();
    let ca = test_ca("server CA");
    let leaf = ca.server_leaf();
    let dir = tempfile::tempdir().unwrap();
    let combined = dir.path().join("tls.pem");
    let key_pem = leaf.key.serialize_pem();
    std::fs::write(&combined, format!("{}{}{}", leaf.cert_pem, ca.pem, key_pem)).unwrap();
    let resolver = ServerCertResolver::from_files(&combined, &combined).unwrap();
    assert_eq!(
        resolver.current().cert,
        vec![leaf.cert.clone(), ca.cert.clone()]
    );
}

// ---------------------------------------------------------------------------------------
// Client certificates

#[tokio::test]
async fn client_without_certificate_is_anonymous() {
    let server_ca = test_ca("server CA");
    let front_proxy = test_ca("front-proxy CA");
    let handle = ClientCaHandle::with_bundles([front_proxy.bundle(FRONT_PROXY)]).unwrap();
    let mut server = Server::start(tls_with_client_ca(&server_ca.server_leaf(), &handle)).await;

    let body = fetch(server.addr, h1_client(&[&server_ca.cert], None), "/")
        .await
        .unwrap();
    assert_eq!(body, "ok /");
    let seen = server.next_seen().await;
    assert_eq!(*seen.peer.unwrap(), PeerIdentity::Anonymous);
    assert_eq!(seen.remote.unwrap().0.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    server.stop().await;
}

#[tokio::test]
async fn client_certificate_reports_bundle_cn_and_organizations() {
    let server_ca = test_ca("server CA");
    let front_proxy = test_ca("front-proxy CA");
    let rotated_in = test_ca("front-proxy CA (next)");
    let cluster_ca = test_ca("cluster CA");
    // Several CAs in one bundle, as during a rotation.
    let front_proxy_pem = format!("{}{}", rotated_in.pem, front_proxy.pem);
    let handle = ClientCaHandle::with_bundles([
        CaBundle::from_pem(FRONT_PROXY, front_proxy_pem).unwrap(),
        cluster_ca.bundle(CLIENT_CA),
    ])
    .unwrap();
    assert_eq!(handle.bundle_names(), [FRONT_PROXY, CLIENT_CA]);
    let mut server = Server::start(tls_with_client_ca(&server_ca.server_leaf(), &handle)).await;

    let proxy_client = front_proxy.client_leaf("front-proxy-client", &[]);
    fetch(
        server.addr,
        h1_client(&[&server_ca.cert], Some(&proxy_client)),
        "/",
    )
    .await
    .unwrap();
    assert_eq!(
        *server.next_seen().await.peer.unwrap(),
        PeerIdentity::Certificate {
            bundle: FRONT_PROXY.to_owned(),
            common_name: "front-proxy-client".to_owned(),
            organizations: vec![],
        }
    );

    let admin = cluster_ca.client_leaf("alice", &["system:masters", "datadog-admins"]);
    fetch(
        server.addr,
        h1_client(&[&server_ca.cert], Some(&admin)),
        "/",
    )
    .await
    .unwrap();
    let peer = server.next_seen().await.peer.unwrap();
    assert_eq!(
        *peer,
        PeerIdentity::Certificate {
            bundle: CLIENT_CA.to_owned(),
            common_name: "alice".to_owned(),
            organizations: vec!["system:masters".to_owned(), "datadog-admins".to_owned()],
        }
    );
    assert_eq!(peer.bundle(), Some(CLIENT_CA));
    assert!(!peer.is_anonymous());
    server.stop().await;
}

#[tokio::test]
async fn client_certificate_over_http2_is_identified() {
    let server_ca = test_ca("server CA");
    let front_proxy = test_ca("front-proxy CA");
    let handle = ClientCaHandle::with_bundles([front_proxy.bundle(FRONT_PROXY)]).unwrap();
    let mut server = Server::start(tls_with_client_ca(&server_ca.server_leaf(), &handle)).await;
    let client = front_proxy.client_leaf("front-proxy-client", &["aggregator"]);
    let config = client_config(
        &[&server_ca.cert],
        Some(&client),
        rustls::DEFAULT_VERSIONS,
        &[b"h2"],
    );

    let stream = tls_connect(server.addr, config, "localhost").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    for _ in 0..2 {
        let request = Request::get("https://localhost/apis")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let seen = server.next_seen().await;
        assert_eq!(seen.version, http::Version::HTTP_2);
        assert_eq!(seen.peer.unwrap().bundle(), Some(FRONT_PROXY));
    }
    server.stop().await;
}

#[tokio::test]
async fn certificate_from_an_unknown_ca_is_rejected_at_the_handshake() {
    let server_ca = test_ca("server CA");
    let front_proxy = test_ca("front-proxy CA");
    let stranger = test_ca("some other CA");
    let handle = ClientCaHandle::with_bundles([front_proxy.bundle(FRONT_PROXY)]).unwrap();
    let mut server = Server::start(tls_with_client_ca(&server_ca.server_leaf(), &handle)).await;
    let intruder = stranger.client_leaf("front-proxy-client", &["system:masters"]);

    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let config = client_config(
            &[&server_ca.cert],
            Some(&intruder),
            versions,
            &[b"http/1.1"],
        );
        let err = fetch(server.addr, config, "/").await.unwrap_err();
        let chain = format!("{err:?}");
        assert!(chain.contains("UnknownCA"), "{chain}");
    }
    // A server certificate (no clientAuth usage) from a trusted CA is refused as well.
    let wrong_usage = front_proxy.server_leaf();
    let err = fetch(
        server.addr,
        h1_client(&[&server_ca.cert], Some(&wrong_usage)),
        "/",
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:?}").contains("UnsupportedCertificate"),
        "{err:?}"
    );

    // The server survived and still serves legitimate clients.
    fetch(server.addr, h1_client(&[&server_ca.cert], None), "/")
        .await
        .unwrap();
    assert_eq!(
        *server.next_seen().await.peer.unwrap(),
        PeerIdentity::Anonymous
    );
    assert!(
        server.seen.try_recv().is_err(),
        "rejected clients never reached the service"
    );
    server.stop().await;
}

#[tokio::test]
async fn swapped_ca_bundle_applies_to_new_handshakes() {
    let server_ca = test_ca("server CA");
    let old_ca = test_ca("front-proxy CA (old)");
    let new_ca = test_ca("front-proxy CA (new)");
    let handle = ClientCaHandle::with_bundles([old_ca.bundle(FRONT_PROXY)]).unwrap();
    let mut server = Server::start(tls_with_client_ca(&server_ca.server_leaf(), &handle)).await;
    let old_client = old_ca.client_leaf("front-proxy-client", &[]);
    let new_client = new_ca.client_leaf("front-proxy-client", &[]);

    let mut established = H1Conn::open(
        server.addr,
        h1_client(&[&server_ca.cert], Some(&old_client)),
    )
    .await
    .unwrap();
    established.get("/").await.unwrap();
    assert_eq!(
        server.next_seen().await.peer.unwrap().bundle(),
        Some(FRONT_PROXY)
    );
    assert!(
        fetch(
            server.addr,
            h1_client(&[&server_ca.cert], Some(&new_client)),
            "/"
        )
        .await
        .is_err()
    );

    handle.set_bundles([new_ca.bundle(FRONT_PROXY)]).unwrap();

    fetch(
        server.addr,
        h1_client(&[&server_ca.cert], Some(&new_client)),
        "/",
    )
    .await
    .unwrap();
    assert_eq!(
        server.next_seen().await.peer.unwrap().bundle(),
        Some(FRONT_PROXY)
    );
    let err = fetch(
        server.addr,
        h1_client(&[&server_ca.cert], Some(&old_client)),
        "/",
    )
    .await
    .unwrap_err();
    assert!(format!("{err:?}").contains("UnknownCA"), "{err:?}");

    // The connection verified before the swap stays open, but its certificate no longer
    // vouches for anyone.
    let (status, _) = established.get("/").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        *server.next_seen().await.peer.unwrap(),
        PeerIdentity::Anonymous
    );

    // Re-identifying its chain directly agrees.
    assert_eq!(
        handle.identify(std::slice::from_ref(&old_client.cert)),
        PeerIdentity::Anonymous
    );
    assert_eq!(handle.identify(&[]), PeerIdentity::Anonymous);
    server.stop().await;
}

/// Sends one request on `conn` and returns the identity the service saw with it.
async fn identity_of_next_request(server: &mut Server, conn: &mut KeptAlive) -> PeerIdentity {
    conn.get("/").await;
    let seen = server.next_seen().await;
    PeerIdentity::clone(&seen.peer.unwrap())
}

/// Go verifies the client chain on every request; a connection kept open across a CA
/// rotation must not keep the removed CA's trust.
async fn open_connection_follows_bundle_swaps(http2: bool) {
    let server_ca = test_ca("server CA");
    let front_proxy = test_ca("front-proxy CA");
    let next_ca = test_ca("front-proxy CA (next)");
    let cluster_ca = test_ca("cluster CA");
    let handle = ClientCaHandle::with_bundles([front_proxy.bundle(FRONT_PROXY)]).unwrap();
    let mut server = Server::start(tls_with_client_ca(&server_ca.server_leaf(), &handle)).await;
    let client = front_proxy.client_leaf("front-proxy-client", &["aggregator"]);
    let certified = PeerIdentity::Certificate {
        bundle: FRONT_PROXY.to_owned(),
        common_name: "front-proxy-client".to_owned(),
        organizations: vec!["aggregator".to_owned()],
    };
    let mut conn = KeptAlive::open(server.addr, &[&server_ca.cert], &client, http2).await;

    assert_eq!(
        identity_of_next_request(&mut server, &mut conn).await,
        certified
    );
    // No swap: the cached identity is reused, nothing is verified again.
    let verified = handle.identifications();
    for _ in 0..3 {
        assert_eq!(
            identity_of_next_request(&mut server, &mut conn).await,
            certified
        );
    }
    assert_eq!(handle.identifications(), verified);

    // A CA added next to it (the first half of a rotation) changes nothing, and the chain
    // is verified once for the new bundles, not per request.
    let rotating =
        CaBundle::from_pem(FRONT_PROXY, format!("{}{}", front_proxy.pem, next_ca.pem)).unwrap();
    handle
        .set_bundles([rotating, cluster_ca.bundle(CLIENT_CA)])
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            identity_of_next_request(&mut server, &mut conn).await,
            certified
        );
    }
    assert_eq!(handle.identifications(), verified + 1);

    // The old CA is removed: the very next request on the same connection is anonymous.
    handle
        .set_bundles([next_ca.bundle(FRONT_PROXY), cluster_ca.bundle(CLIENT_CA)])
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            identity_of_next_request(&mut server, &mut conn).await,
            PeerIdentity::Anonymous
        );
    }
    assert_eq!(handle.identifications(), verified + 2);

    // Trusting the CA again (e.g. a rotation rolled back) restores the identity, as
    // per-request verification would.
    handle
        .set_bundles([front_proxy.bundle(FRONT_PROXY)])
        .unwrap();
    assert_eq!(
        identity_of_next_request(&mut server, &mut conn).await,
        certified
    );
    server.stop().await;
}

#[tokio::test]
async fn http1_keep_alive_connection_follows_bundle_swaps() {
    open_connection_follows_bundle_swaps(false).await;
}

#[tokio::test]
async fn http2_connection_follows_bundle_swaps() {
    open_connection_follows_bundle_swaps(true).await;
}

#[tokio::test]
async fn concurrent_http2_streams_share_one_reidentification() {
    let server_ca = test_ca("server CA");
    let front_proxy = test_ca("front-proxy CA");
    let handle = ClientCaHandle::with_bundles([front_proxy.bundle(FRONT_PROXY)]).unwrap();
    let mut server = Server::start(tls_with_client_ca(&server_ca.server_leaf(), &handle)).await;
    let client = front_proxy.client_leaf("front-proxy-client", &[]);
    let mut conn = KeptAlive::open(server.addr, &[&server_ca.cert], &client, true).await;
    // With TLS 1.3 the client is done before the server has checked its certificate; one
    // request makes sure the connection is established before the swap.
    assert_eq!(
        identity_of_next_request(&mut server, &mut conn)
            .await
            .bundle(),
        Some(FRONT_PROXY)
    );
    let KeptAlive::H2(conn) = conn else {
        unreachable!("asked for HTTP/2");
    };
    let before = handle.identifications();
    handle
        .set_bundles([test_ca("other CA").bundle(FRONT_PROXY)])
        .unwrap();

    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut conn = H2Conn {
            sender: conn.sender.clone(),
        };
        streams.spawn(async move { conn.get("/slow/50").await.unwrap() });
    }
    while let Some(status) = streams.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    for _ in 0..8 {
        assert_eq!(
            *server.next_seen().await.peer.unwrap(),
            PeerIdentity::Anonymous
        );
    }
    assert_eq!(handle.identifications(), before + 1);
    server.stop().await;
}

#[test]
fn identity_lapses_when_a_chain_certificate_expires() {
    install_provider();
    let ca = test_ca("front-proxy CA");
    let handle = ClientCaHandle::with_bundles([ca.bundle(FRONT_PROXY)]).unwrap();
    let leaf = ca.client_leaf("front-proxy-client", &[]);
    let expiry = crate::tls::identity::not_after(&leaf.cert).unwrap();
    let at = |seconds: u64| {
        move || rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(seconds))
    };
    let remote = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
    let peer = crate::tls::peer::ConnectionPeer::new(
        Some(&handle),
        Some(std::slice::from_ref(&leaf.cert)),
        remote,
    );
    let verified = handle.identifications();

    assert_eq!(
        peer.current_at(at(expiry.as_secs())).bundle(),
        Some(FRONT_PROXY)
    );
    assert_eq!(handle.identifications(), verified, "still valid: cached");
    assert_eq!(
        *peer.current_at(at(expiry.as_secs() + 1)),
        PeerIdentity::Anonymous
    );
    assert_eq!(handle.identifications(), verified + 1);
    // Expired for good: later requests do not verify again.
    assert_eq!(
        *peer.current_at(at(expiry.as_secs() + 60)),
        PeerIdentity::Anonymous
    );
    assert_eq!(handle.identifications(), verified + 1);

    // Without a certificate there is nothing to follow.
    let anonymous = crate::tls::peer::ConnectionPeer::new(Some(&handle), Some(&[]), remote);
    assert_eq!(*anonymous.current(), PeerIdentity::Anonymous);
    let unrequested =
        crate::tls::peer::ConnectionPeer::new(None, Some(std::slice::from_ref(&leaf.cert)), remote);
    assert_eq!(*unrequested.current(), PeerIdentity::Anonymous);
}

#[tokio::test]
async fn without_bundles_presented_certificates_are_rejected_and_others_served() {
    let server_ca = test_ca("server CA");
    let some_ca = test_ca("some CA");
    let handle = ClientCaHandle::new();
    let mut server = Server::start(tls_with_client_ca(&server_ca.server_leaf(), &handle)).await;

    fetch(server.addr, h1_client(&[&server_ca.cert], None), "/")
        .await
        .unwrap();
    assert_eq!(
        *server.next_seen().await.peer.unwrap(),
        PeerIdentity::Anonymous
    );
    let client = some_ca.client_leaf("someone", &[]);
    assert!(
        fetch(
            server.addr,
            h1_client(&[&server_ca.cert], Some(&client)),
            "/"
        )
        .await
        .is_err()
    );
    server.stop().await;
}

#[tokio::test]
async fn without_client_auth_certificates_are_not_requested() {
    let server_ca = test_ca("server CA");
    let some_ca = test_ca("some CA");
    let leaf = server_ca.server_leaf();
    let resolver = ServerCertResolver::from_der(vec![leaf.cert.clone()], leaf.key_der()).unwrap();
    let tls = ServerTls::new(resolver, None).unwrap();
    assert!(tls.client_ca().is_none());
    let mut server = Server::start(tls).await;
    let client = some_ca.client_leaf("someone", &[]);

    fetch(
        server.addr,
        h1_client(&[&server_ca.cert], Some(&client)),
        "/",
    )
    .await
    .unwrap();
    assert_eq!(
        *server.next_seen().await.peer.unwrap(),
        PeerIdentity::Anonymous
    );
    server.stop().await;
}

#[test]
fn invalid_bundles_are_refused_and_keep_the_previous_set() {
    install_provider();
    let ca = test_ca("CA");
    let handle = ClientCaHandle::with_bundles([ca.bundle(FRONT_PROXY)]).unwrap();

    let err = CaBundle::from_pem(CLIENT_CA, "").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid client CA bundle \"client-ca-file\": contains no certificates"
    );
    let err = CaBundle::from_pem(CLIENT_CA, "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap_err();
    assert!(matches!(err, TlsError::InvalidCaBundle { .. }), "{err}");
    let err = CaBundle::from_der(CLIENT_CA, vec![CertificateDer::from(vec![1, 2, 3])]).unwrap_err();
    assert!(err.to_string().contains("certificate #0"), "{err}");

    let err = handle
        .set_bundles([ca.bundle(CLIENT_CA), ca.bundle(CLIENT_CA)])
        .unwrap_err();
    assert!(matches!(err, TlsError::DuplicateBundle { ref name } if name == CLIENT_CA));
    assert_eq!(handle.bundle_names(), [FRONT_PROXY]);

    handle.set_bundles([]).unwrap();
    assert!(handle.bundle_names().is_empty());
}

#[test]
fn first_matching_bundle_wins_when_a_ca_is_in_several() {
    install_provider();
    let shared = test_ca("shared CA");
    let handle =
        ClientCaHandle::with_bundles([shared.bundle(FRONT_PROXY), shared.bundle(CLIENT_CA)])
            .unwrap();
    let leaf = shared.client_leaf("front-proxy-client", &[]);
    assert_eq!(
        handle.identify(std::slice::from_ref(&leaf.cert)).bundle(),
        Some(FRONT_PROXY)
    );
    handle
        .set_bundles([shared.bundle(CLIENT_CA), shared.bundle(FRONT_PROXY)])
        .unwrap();
    assert_eq!(handle.identify(&[leaf.cert]).bundle(), Some(CLIENT_CA));
}

// ---------------------------------------------------------------------------------------
// Serve loop

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_refuses_new_connections() {
    let ca = test_ca("server CA");
    let leaf = ca.server_leaf();
    let resolver = ServerCertResolver::from_der(vec![leaf.cert.clone()], leaf.key_der()).unwrap();
    let tls = ServerTls::new(resolver, None).unwrap();
    install_provider();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let service = service_fn(move |_request: Request<Incoming>| {
        let started_tx = started_tx.clone();
        async move {
            let _ = started_tx.send(());
            tokio::time::sleep(Duration::from_millis(600)).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"slow done"))))
        }
    });
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(
        listener,
        tls,
        service,
        shutdown.clone(),
        Duration::from_secs(5),
    ));

    let config = h1_client(&[&ca.cert], None);
    let in_flight = tokio::spawn(fetch(addr, config.clone(), "/slow"));
    tokio::time::timeout(Duration::from_secs(5), started.recv())
        .await
        .unwrap()
        .unwrap();
    // An idle connection (handshake done, no request) is closed by the drain too.
    let idle = H1Conn::open(addr, config.clone()).await.unwrap();
    shutdown.cancel();

    // The listener closes at once, long before the slow request finishes.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        // A connect racing the close can also be reset from the backlog; retry until the
        // closed listener answers with a plain refusal.
        match TcpStream::connect(addr).await {
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "listener still open after shutdown"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    assert!(!in_flight.is_finished());

    let body = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(body, "slow done");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve returned once drained")
        .unwrap();
    drop(idle);
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn drain_period_bounds_shutdown() {
    let ca = test_ca("server CA");
    let leaf = ca.server_leaf();
    let resolver = ServerCertResolver::from_der(vec![leaf.cert.clone()], leaf.key_der()).unwrap();
    let options = ServeOptions {
        drain: Duration::from_millis(200),
        ..ServeOptions::default()
    };
    let mut server = Server::start_with(ServerTls::new(resolver, None).unwrap(), options).await;
    let in_flight = tokio::spawn(fetch(
        server.addr,
        h1_client(&[&ca.cert], None),
        "/slow/30000",
    ));
    tokio::time::timeout(Duration::from_secs(5), server.started.recv())
        .await
        .unwrap()
        .unwrap();

    let begun = Instant::now();
    server.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("serve returned after the drain period")
        .unwrap();
    assert!(begun.elapsed() < Duration::from_secs(3));
    let result = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_err(), "the slow request was cut off");
}

#[tokio::test]
async fn stalled_handshakes_and_request_heads_are_timed_out() {
    let ca = test_ca("server CA");
    let leaf = ca.server_leaf();
    let resolver = ServerCertResolver::from_der(vec![leaf.cert.clone()], leaf.key_der()).unwrap();
    let options = ServeOptions {
        handshake_timeout: Duration::from_millis(200),
        header_read_timeout: Duration::from_millis(200),
        ..ServeOptions::default()
    };
    let mut server = Server::start_with(ServerTls::new(resolver, None).unwrap(), options).await;

    // TCP connected, no ClientHello.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut sink)).await;
    assert!(
        read.is_ok(),
        "server should close a connection that never handshakes"
    );

    // Handshake done, request head never finished (slowloris).
    let mut slow = tls_connect(server.addr, h1_client(&[&ca.cert], None), "localhost")
        .await
        .unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut sink)).await;
    assert!(
        read.is_ok(),
        "server should close a connection with a stalled request head"
    );

    // Garbage instead of TLS.
    let mut garbage = TcpStream::connect(server.addr).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut sink)).await;

    // None of that hurt the server.
    fetch(server.addr, h1_client(&[&ca.cert], None), "/")
        .await
        .unwrap();
    server.next_seen().await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// TCP options of accepted connections

/// A connected pair over loopback: (client, the server's accepted end).
async fn accepted_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    (client, accepted)
}

#[tokio::test]
async fn accepted_connections_get_nodelay_and_keepalive() {
    let (_client, accepted) = accepted_pair().await;
    let keepalive = crate::tls::TcpKeepalive::default();
    crate::tls::configure_stream(&accepted, Some(&keepalive)).unwrap();
    let socket = socket2::SockRef::from(&accepted);
    assert!(accepted.nodelay().unwrap());
    assert!(socket.keepalive().unwrap());
    assert_eq!(
        socket.tcp_keepalive_time().unwrap(),
        Duration::from_secs(60)
    );
    assert_eq!(
        socket.tcp_keepalive_interval().unwrap(),
        Duration::from_secs(10)
    );
    assert_eq!(socket.tcp_keepalive_retries().unwrap(), 2);
    // Unacknowledged data gives up when keep-alive would: 60 s + 2 × 10 s.
    assert_eq!(
        socket.tcp_user_timeout().unwrap(),
        Some(Duration::from_secs(80))
    );
}

#[tokio::test]
async fn keepalive_can_be_left_to_the_system() {
    let (_client, accepted) = accepted_pair().await;
    crate::tls::configure_stream(&accepted, None).unwrap();
    let socket = socket2::SockRef::from(&accepted);
    assert!(accepted.nodelay().unwrap());
    assert!(!socket.keepalive().unwrap());
    assert_eq!(socket.tcp_user_timeout().unwrap(), None);
}

#[test]
fn serving_keeps_connections_alive_by_default() {
    assert_eq!(
        ServeOptions::default().tcp_keepalive,
        Some(crate::tls::TcpKeepalive::default())
    );
}
