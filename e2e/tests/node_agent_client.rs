//! The node-agent client against a tiny TLS stub with a self-signed certificate: it must send
//! the Go agent's headers, skip certificate verification, stay on HTTP/1.1, decode the DCA's
//! JSON shapes and turn non-200 answers into errors carrying status and body.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use e2e::node_agent::{NodeAgentClient, NodeAgentError, Timeouts};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const TOKEN: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCD";

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    version: Version,
    alpn: Option<Vec<u8>>,
    headers: http::HeaderMap,
    body: Bytes,
}

struct Stub {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stub {
    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("response")
}

/// Answers like the DCA routes of dca-contract §1.3.
async fn answer(
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &[u8],
    version: &'static str,
) -> Response<Full<Bytes>> {
    let json = |s: &'static str| reply(StatusCode::OK, "application/json", s);
    if auth != Some(&format!("Bearer {TOKEN}")) {
        return reply(
            StatusCode::FORBIDDEN,
            "text/plain; charset=utf-8",
            "invalid session token\n",
        );
    }
    match (method, path) {
        ("GET", "/version") => json(version),
        ("GET", "/api/v1/tags/pod/node1") => json(
            r#"{"Nodes":{"node1":{"services":{"default":{"pod-a":{"svc1":{},"svc2":{}}},"kube-system":{"dns-1":{"kube-dns":{}}}}}}}"#,
        ),
        ("GET", "/api/v1/tags/pod/ghost") => json(
            r#"{"Warnings":["Node ghost could not be added to the metadata map bundle: the key agent/KubernetesMetadataMapping/ghost was not found in the cache"]}"#,
        ),
        ("GET", "/api/v1/tags/pod/node1/default/pod-a") => {
            json(r#"["kube_service:svc1","kube_service:svc2"]"#)
        }
        ("GET", "/api/v1/tags/pod/node1/default/unknown") => json("null"),
        ("GET", "/api/v1/tags/pod/broken") => json(r#"{"Nodes":"#),
        ("GET", "/api/v1/tags/node/node1") => {
            json(r#"{"kubernetes.io/os":"linux","topology.kubernetes.io/zone":"z1"}"#)
        }
        ("GET", "/api/v1/tags/node/missing") => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            "\"/nodes//missing\" not found\n",
        ),
        ("GET", "/api/v1/annotations/node/node1") => json(r#"{"cluster.k8s.io/machine":"m-1"}"#),
        ("GET", "/api/v1/annotations/node/bare") => json("null"),
        ("GET", "/api/v1/tags/namespace/default") => {
            let mut r = reply(StatusCode::OK, "application/json", gzip(br#"{"team":"a"}"#));
            r.headers_mut()
                .insert("content-encoding", "gzip".parse().expect("header"));
            r
        }
        ("GET", "/api/v1/metadata/namespace/default") => json(
            r#"{"Name":"default","Namespace":"","Annotations":{"owner":"me"},"Labels":{"team":"a"}}"#,
        ),
        ("GET", "/api/v1/cluster/id") => json(r#""94e43011-177b-11ea-a4fe-42010a8401d2""#),
        ("POST", "/api/v1/clusterchecks/status/runner-1") => {
            let sent: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            if sent == serde_json::json!({"last_change": -1}) {
                json(r#"{"isuptodate":true}"#)
            } else {
                reply(StatusCode::BAD_REQUEST, "text/plain", "bad status body\n")
            }
        }
        ("GET", "/api/v1/clusterchecks/configs/runner-1") => json(
            r#"{"last_change":123,"configs":[{"check_name":"http_check","instances":["bmFtZTogeA=="],"cluster_check":true}]}"#,
        ),
        ("GET", "/api/v1/endpointschecks/configs/node1") => {
            json(r#"{"last_change":0,"configs":null}"#)
        }
        ("GET", "/slow") => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            json("{}")
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "404 page not found\n",
        ),
    }
}

const VERSION_7_62: &str =
    r#"{"Major":7,"Minor":62,"Patch":1,"Pre":"rc.1","Meta":"git.1","Commit":"abc123"}"#;

async fn start_stub() -> Stub {
    start_stub_reporting(VERSION_7_62).await
}

/// A stub whose `/version` answers `version`.
async fn start_stub_reporting(version: &'static str) -> Stub {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("self-signed cert");
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    // The DCA's minimum is TLS 1.3.
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("tls versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .expect("server cert");
    // Offered so that a client advertising h2 would visibly negotiate it.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let record = record.clone();
            connections.spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                let service = service_fn(move |req: Request<Incoming>| {
                    let record = record.clone();
                    let alpn = alpn.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let auth = parts
                            .headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        record.lock().expect("lock").push(Seen {
                            method: parts.method.to_string(),
                            path: parts.uri.path().to_owned(),
                            version: parts.version,
                            alpn,
                            headers: parts.headers.clone(),
                            body: body.clone(),
                        });
                        Ok::<_, Infallible>(
                            answer(
                                parts.method.as_str(),
                                parts.uri.path(),
                                auth.as_deref(),
                                &body,
                                version,
                            )
                            .await,
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Stub { addr, seen, task }
}

fn setup() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[tokio::test]
async fn every_call_carries_the_go_agent_headers() {
    setup();
    let stub = start_stub().await;
    let client = NodeAgentClient::new(&stub.url(), TOKEN).expect("client");

    let version = client.version().await.expect("version");
    assert_eq!((version.major, version.minor, version.patch), (7, 62, 1));
    assert_eq!(
        (
            version.pre.as_str(),
            version.meta.as_str(),
            version.commit.as_str()
        ),
        ("rc.1", "git.1", "abc123")
    );
    assert!(version.uses_bulk_pod_tags());
    assert!(version.supports_namespace_metadata());
    client.cluster_id().await.expect("cluster id");
    client
        .post_cluster_check_status("runner-1", -1)
        .await
        .expect("status");

    let seen = stub.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        let header = |name: &str| {
            s.headers
                .get(name)
                .map(|v| v.to_str().expect("ascii").to_owned())
        };
        assert_eq!(
            header("authorization").as_deref(),
            Some(format!("Bearer {TOKEN}").as_str()),
            "{}",
            s.path
        );
        assert_eq!(
            header("x-real-ip").as_deref(),
            Some(""),
            "X-Real-Ip is sent, empty, on a node agent"
        );
        assert_eq!(header("user-agent").as_deref(), Some("Go-http-client/1.1"));
        assert_eq!(header("accept-encoding").as_deref(), Some("gzip"));
        assert_eq!(
            header("content-type"),
            None,
            "the Go agent sets no Content-Type"
        );
        assert_eq!(s.version, Version::HTTP_11);
        assert_eq!(s.alpn, None, "HTTP/2 is off: no ALPN offered");
    }
    assert_eq!(seen[2].method, "POST");
    assert_eq!(&seen[2].body[..], br#"{"last_change":-1}"#);
}

#[tokio::test]
async fn a_cluster_check_runner_sends_its_ip() {
    setup();
    let stub = start_stub().await;
    let client = NodeAgentClient::builder(&stub.url(), TOKEN)
        .real_ip("10.0.0.7")
        .build()
        .expect("client");
    client
        .cluster_check_configs("runner-1")
        .await
        .expect("configs");
    assert_eq!(stub.seen()[0].headers["x-real-ip"], "10.0.0.7");
}

#[tokio::test]
async fn decodes_every_dca_shape() {
    setup();
    let stub = start_stub().await;
    // A bare host:port gets https:// like `cluster_agent.url`.
    let client = NodeAgentClient::new(&stub.addr.to_string(), TOKEN).expect("client");

    let bulk = client.pod_tags_for_node("node1").await.expect("bulk");
    let services = &bulk.nodes["node1"].services;
    assert_eq!(
        services["default"]["pod-a"].keys().collect::<Vec<_>>(),
        ["svc1", "svc2"]
    );
    assert_eq!(
        services["kube-system"]["dns-1"].keys().collect::<Vec<_>>(),
        ["kube-dns"]
    );
    assert!(bulk.warnings.is_empty());
    assert_eq!(
        client
            .pods_metadata_for_node("node1")
            .await
            .expect("services"),
        *services
    );

    let ghost = client
        .pod_tags_for_node("ghost")
        .await
        .expect("200 with warnings");
    assert!(ghost.nodes.is_empty());
    assert!(ghost.warnings[0].contains("ghost"));
    assert!(matches!(
        client.pods_metadata_for_node("ghost").await,
        Err(NodeAgentError::MissingNode(n)) if n == "ghost"
    ));

    assert_eq!(
        client
            .pod_tags("node1", "default", "pod-a")
            .await
            .expect("pod tags"),
        Some(vec![
            "kube_service:svc1".to_owned(),
            "kube_service:svc2".to_owned()
        ])
    );
    assert_eq!(
        client
            .pod_tags("node1", "default", "unknown")
            .await
            .expect("null"),
        None
    );

    let labels = client.node_labels("node1").await.expect("labels");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    let annotations = client.node_annotations("node1").await.expect("annotations");
    assert_eq!(annotations["cluster.k8s.io/machine"], "m-1");
    assert!(
        client
            .node_annotations("bare")
            .await
            .expect("null map")
            .is_empty()
    );
    let ns_labels = client
        .namespace_labels("default")
        .await
        .expect("gzip-encoded labels");
    assert_eq!(ns_labels["team"], "a");
    let meta = client
        .namespace_metadata("default")
        .await
        .expect("metadata");
    assert_eq!(meta.name, "default");
    assert_eq!(meta.namespace, "");
    assert_eq!(meta.annotations["owner"], "me");
    assert_eq!(meta.labels["team"], "a");
    assert_eq!(
        client.cluster_id().await.expect("id"),
        "94e43011-177b-11ea-a4fe-42010a8401d2"
    );

    let configs = client
        .cluster_check_configs("runner-1")
        .await
        .expect("configs");
    assert_eq!(configs.last_change, 123);
    assert_eq!(configs.configs[0]["check_name"], "http_check");
    let endpoints = client
        .endpoints_check_configs("node1")
        .await
        .expect("endpoints");
    assert!(endpoints.configs.is_empty());
}

#[tokio::test]
async fn non_200_and_bad_json_are_errors() {
    setup();
    let stub = start_stub().await;
    let client = NodeAgentClient::new(&stub.url(), TOKEN).expect("client");

    let err = client.node_labels("missing").await.expect_err("500");
    assert_eq!(err.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
    assert_eq!(err.body(), Some("\"/nodes//missing\" not found\n"));
    assert!(
        err.to_string().contains("/api/v1/tags/node/missing"),
        "{err}"
    );

    let unknown = client.get_raw("api/v1/nope").await.expect_err("404");
    assert_eq!(unknown.status(), Some(StatusCode::NOT_FOUND));

    let wrong =
        NodeAgentClient::new(&stub.url(), "wrong-token-wrong-token-wrong-token").expect("client");
    let err = wrong.version().await.expect_err("403");
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));
    assert_eq!(err.body(), Some("invalid session token\n"));

    let err = client
        .pod_tags_for_node("broken")
        .await
        .expect_err("truncated JSON");
    assert!(matches!(err, NodeAgentError::Decode { .. }), "{err}");

    assert!(
        NodeAgentClient::new("http://127.0.0.1:5005", TOKEN).is_err(),
        "http is refused"
    );
}

#[tokio::test]
async fn a_stalled_dca_times_out() {
    setup();
    let stub = start_stub().await;
    let client = NodeAgentClient::builder(&stub.url(), TOKEN)
        .timeouts(Timeouts {
            response_header: Duration::from_millis(200),
            ..Timeouts::default()
        })
        .build()
        .expect("client");
    let err = client.get_raw("slow").await.expect_err("timeout");
    assert!(matches!(err, NodeAgentError::Transport { .. }), "{err}");

    // Nothing listening: the request fails instead of hanging.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let nobody = NodeAgentClient::new(&format!("https://{addr}"), TOKEN).expect("client");
    assert!(matches!(
        nobody.version().await,
        Err(NodeAgentError::Transport { .. })
    ));
}

fn paths(stub: &Stub) -> Vec<String> {
    stub.seen().into_iter().map(|s| s.path).collect()
}

/// After `/version`, the session makes the calls the Go agent makes for that version: bulk pod
/// tags from 1.3, one call per pod before; namespace metadata from 7.55, namespace tags before.
#[tokio::test]
async fn the_version_handshake_chooses_the_calls() {
    setup();
    let pods = [("default", "pod-a"), ("default", "unknown")];
    let expected_services = |with_unknown: bool| {
        let mut m = std::collections::BTreeMap::new();
        m.insert(
            ("default".to_owned(), "pod-a".to_owned()),
            vec!["svc1".to_owned(), "svc2".to_owned()],
        );
        if with_unknown {
            m.insert(("default".to_owned(), "unknown".to_owned()), Vec::new());
        }
        m
    };
    let cases: [(&'static str, &[&str], &[&str], bool); 3] = [
        (
            VERSION_7_62,
            &["/version", "/api/v1/tags/pod/node1"],
            &["/api/v1/metadata/namespace/default"],
            true,
        ),
        (
            r#"{"Major":7,"Minor":54,"Patch":0,"Pre":"","Meta":"","Commit":""}"#,
            &["/version", "/api/v1/tags/pod/node1"],
            &["/api/v1/tags/namespace/default"],
            false,
        ),
        (
            r#"{"Major":1,"Minor":2,"Patch":0,"Pre":"","Meta":"","Commit":""}"#,
            &[
                "/version",
                "/api/v1/tags/pod/node1/default/pod-a",
                "/api/v1/tags/pod/node1/default/unknown",
            ],
            &["/api/v1/tags/namespace/default"],
            false,
        ),
    ];
    for (version, pod_calls, namespace_calls, namespace_annotations) in cases {
        let stub = start_stub_reporting(version).await;
        let session = NodeAgentClient::new(&stub.url(), TOKEN)
            .expect("client")
            .handshake()
            .await
            .expect("handshake");
        let services = session.pod_services("node1", &pods).await.expect("pods");
        assert_eq!(services, expected_services(true), "{version}");
        assert_eq!(paths(&stub), pod_calls, "{version}");

        let namespace = session.namespace("default").await.expect("namespace");
        assert_eq!(namespace.name, "default", "{version}");
        assert_eq!(
            namespace.labels.get("team").map(String::as_str),
            Some("a"),
            "{version}"
        );
        assert_eq!(
            namespace.annotations.contains_key("owner"),
            namespace_annotations,
            "{version}"
        );
        assert_eq!(
            paths(&stub)[pod_calls.len()..],
            namespace_calls[..],
            "{version}"
        );
    }
}

/// 0.0.0 is the Go agent's "not initialised": no session is built on it.
#[tokio::test]
async fn a_zero_version_fails_the_handshake() {
    setup();
    let stub =
        start_stub_reporting(r#"{"Major":0,"Minor":0,"Patch":0,"Pre":"","Meta":"","Commit":""}"#)
            .await;
    let err = NodeAgentClient::new(&stub.url(), TOKEN)
        .expect("client")
        .handshake()
        .await
        .expect_err("0.0.0 accepted");
    assert!(matches!(err, NodeAgentError::UnsetVersion), "{err:?}");
    assert_eq!(paths(&stub), ["/version"]);
}
