//! The node-agent API of the real binary, on a real control plane: the Go node agent's
//! `/version` handshake succeeds with the shared token, every refusal reads as the Go DCA
//! writes it, and the port speaks TLS 1.3 only by default.

use std::time::Duration;

use e2e::agent::Agent;
use e2e::agent_env::{AgentPorts, ServingCert, agent_binary, agent_settings};
use e2e::controlplane::{ControlPlane, eventually};
use e2e::datadog_double::DatadogDouble;
use e2e::node_agent::NodeAgentClient;

/// The token `agent_settings` gives the agent.
const TOKEN: &str = "e2eTokenForTheClusterAgent0123456789abcdef";

fn client(max_tls12: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        // Node agents do not verify the DCA's self-signed certificate either.
        .tls_danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10));
    if max_tls12 {
        builder = builder.tls_version_max(reqwest::tls::Version::TLS_1_2);
    }
    builder.build().expect("reqwest client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_agents_handshake_and_refusals_read_as_go_writes_them() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let binary = agent_binary().await.unwrap();
    let cp = ControlPlane::start().await.unwrap();
    let cert = ServingCert::new(cp.agent_namespace()).unwrap();
    let double = DatadogDouble::start().await.unwrap();
    let ports = AgentPorts::pick().unwrap();
    let settings = agent_settings(&cp, &binary, "dca-e2e-node-api", &double, &cert, ports);
    let agent = Agent::spawn(settings).await.unwrap();
    let endpoint = format!("https://127.0.0.1:{}", ports.cmd);

    // What the Go node agent does first; the version it reads picks its later calls.
    let node_agent = NodeAgentClient::new(&endpoint, TOKEN).unwrap();
    let session = eventually(
        "the node-agent API answers /version",
        Duration::from_secs(60),
        || {
            let node_agent = node_agent.clone();
            async move { Ok(node_agent.handshake().await.ok()) }
        },
    )
    .await
    .unwrap();
    let version = session.version();
    assert_eq!(version.major, 7, "{version:?}");
    assert!(version.supports_namespace_metadata(), "{version:?}");
    assert!(version.uses_bulk_pod_tags(), "{version:?}");
    assert!(!version.commit.is_empty(), "{version:?}");

    let http = client(false);
    let url = format!("{endpoint}/version");
    let cases: &[(Option<&str>, u16, &str, bool)] = &[
        (None, 401, "no session token provided\n", true),
        (
            Some("Basic dXNlcjpwYXNz"),
            401,
            "unsupported authorization scheme: Basic\n",
            true,
        ),
        (Some("Bearer"), 403, "invalid session token\n", false),
        (
            Some("Bearer not-the-token"),
            403,
            "invalid session token\n",
            false,
        ),
    ];
    for (auth, code, body, challenge) in cases {
        let mut request = http.get(&url);
        if let Some(auth) = auth {
            request = request.header("Authorization", *auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), *code, "{auth:?}");
        let headers = response.headers().clone();
        assert_eq!(
            headers["content-type"], "text/plain; charset=utf-8",
            "{auth:?}"
        );
        assert_eq!(
            headers
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned()),
            challenge.then(|| r#"Bearer realm="Datadog Agent""#.to_owned()),
            "{auth:?}"
        );
        // One answer, written once (the Go DCA appends a second body on internal paths).
        assert_eq!(response.text().await.unwrap(), *body, "{auth:?}");
    }

    // A route not built yet answers as gorilla/mux does, after the token check.
    let response = http
        .get(format!("{endpoint}/api/v1/tags/pod/node1"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(response.text().await.unwrap(), "404 page not found\n");

    // TLS 1.3 only, unless cluster_agent.allow_legacy_tls.
    let refused = client(true).get(&url).bearer_auth(TOKEN).send().await;
    assert!(refused.is_err(), "a TLS 1.2 client was served: {refused:?}");

    drop(agent);
}
