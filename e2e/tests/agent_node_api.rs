//! The node-agent API of the real binary, on a real control plane: the Go node agent's
//! `/version` handshake succeeds with the shared token, every refusal reads as the Go DCA
//! writes it, the port speaks TLS 1.3 only by default, and the cluster id is the
//! `kube-system` UID, kept in `datadog-cluster-id`, the same from a second replica and after
//! a restart; node labels, filtered node annotations and namespace labels and metadata follow
//! the objects as the watches deliver them; the pod → services map follows Services with
//! selectors over pods made Ready through the status subresource (the real endpoints
//! controller writes the Endpoints), in the bulk answer and the per-pod tags.

use std::time::Duration;

use e2e::agent::Agent;
use e2e::agent_env::{AgentPorts, ServingCert, agent_binary, agent_settings};
use e2e::controlplane::{ControlPlane, eventually};
use e2e::datadog_double::DatadogDouble;
use e2e::node_agent::NodeAgentClient;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};

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

/// `datadog-cluster-agent metamap [node]` against `agent`, as an operator runs it in the
/// agent's container; its stdout, after checking it exited 0.
fn metamap(agent: &Agent, node: Option<&str>) -> String {
    let mut args = vec!["metamap"];
    args.extend(node);
    let output = agent.command(&args).unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "metamap {node:?}: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
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
    let mut agent = Agent::spawn(settings).await.unwrap();
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

    // Every answer above is counted by handler and status on metrics_port's /metrics (the
    // Go DCA's api_requests and api_elapsed), refusals included.
    let scrape = reqwest::get(format!("http://127.0.0.1:{}/metrics", ports.prometheus))
        .await
        .unwrap();
    assert_eq!(scrape.status().as_u16(), 200);
    let telemetry = scrape.text().await.unwrap();
    let series = |name: &str, status: u16| -> Option<u64> {
        let prefix =
            format!(r#"{name}{{handler="getVersion",status="{status}",forwarded="false"}} "#);
        telemetry
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.parse().ok())
    };
    assert_eq!(series("api_requests_total", 401), Some(2), "{telemetry}");
    assert_eq!(series("api_requests_total", 403), Some(2), "{telemetry}");
    assert!(series("api_requests_total", 200) >= Some(1), "{telemetry}");
    assert_eq!(series("api_elapsed_count", 403), Some(2), "{telemetry}");

    // expvar_port (here not metrics_port, so its own listener) serves /debug/vars only: this
    // process's figures.
    let expvar = format!("http://127.0.0.1:{}", ports.expvar);
    let vars = reqwest::get(format!("{expvar}/debug/vars")).await.unwrap();
    assert_eq!(vars.status().as_u16(), 200);
    let vars: serde_json::Value = vars.json().await.unwrap();
    assert_eq!(vars["process"]["pid"], agent.pid(), "{vars}");
    assert!(
        vars["process"]["rss_bytes"]
            .as_u64()
            .is_some_and(|b| b > 1 << 20),
        "{vars}"
    );
    assert!(
        vars["cmdline"]
            .as_array()
            .is_some_and(|args| args.iter().any(|a| a == "start")),
        "{vars}"
    );
    let wrong_port = reqwest::get(format!("{expvar}/metrics")).await.unwrap();
    assert_eq!(wrong_port.status().as_u16(), 404);

    // The Kubernetes probes on health_port: ready once the node and namespace lists are in
    // (and delegated authentication and the metric store, external metrics being on).
    let probes = format!("http://127.0.0.1:{}", ports.health);
    let ready: serde_json::Value =
        eventually("/ready answers 200", Duration::from_secs(90), || {
            let url = format!("{probes}/ready");
            async move {
                let response = reqwest::get(url).await?;
                Ok(if response.status() == 200 {
                    Some(response.json().await?)
                } else {
                    None
                })
            }
        })
        .await
        .unwrap();
    let names = |status: &serde_json::Value, key: &str| -> Vec<String> {
        status[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        names(&ready, "Healthy").contains(&"metadata-store".to_owned()),
        "{ready}"
    );
    assert!(names(&ready, "Unhealthy").is_empty(), "{ready}");
    // Report-only components are not probed: Kubernetes must not act on Datadog's health.
    assert!(
        !names(&ready, "Healthy").contains(&"datadog-api".to_owned()),
        "{ready}"
    );
    for probe in ["live", "startup"] {
        let response = reqwest::get(format!("{probes}/{probe}")).await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "/{probe}");
    }
    // `health`, as an operator runs it in the container: every component, the Datadog API
    // included, and exit 0.
    let health = agent.command(&["health"]).unwrap();
    let report = String::from_utf8_lossy(&health.stdout).into_owned();
    assert!(
        health.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&health.stderr)
    );
    assert!(report.starts_with("Agent health: PASS\n"), "{report}");
    for component in ["metadata-store", "datadog-api", "external-metrics-auth"] {
        assert!(report.contains(component), "{component}: {report}");
    }
    assert!(!report.contains("unhealthy components"), "{report}");

    // The log level changes while the agent runs (`config set log_level`), as in Go: at
    // error, a request's debug line is gone; back at debug, it is there again.
    let log_from = |offset: u64| -> String {
        let bytes = std::fs::read(agent.log_path()).unwrap();
        String::from_utf8_lossy(&bytes[usize::try_from(offset).unwrap()..]).into_owned()
    };
    let log_len = || std::fs::metadata(agent.log_path()).unwrap().len();
    let cli = |args: &[&str]| -> String {
        let out = agent.command(args).unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(cli(&["config", "get", "log_level"]), "log_level is debug\n");
    assert_eq!(
        cli(&["config", "set", "log_level", "error"]),
        "log_level is error\n"
    );
    let quiet_from = log_len();
    // A request the node-agent API logs at debug.
    let logged_request = || async {
        let version = http
            .get(format!("{endpoint}/version"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(version.status().as_u16(), 200);
    };
    logged_request().await;
    assert!(
        !log_from(quiet_from).contains("node-agent request"),
        "a debug line at level error:\n{}",
        log_from(quiet_from)
    );
    let status_text = cli(&["status"]);
    assert!(
        status_text.contains("  Log level:    error\n"),
        "{status_text}"
    );
    assert_eq!(
        cli(&["config", "set", "log_level", "debug"]),
        "log_level is debug\n"
    );
    let loud_from = log_len();
    logged_request().await;
    eventually("the debug line is back", Duration::from_secs(30), || {
        let text = log_from(loud_from);
        async move { Ok(text.contains("node-agent request").then_some(())) }
    })
    .await
    .unwrap();

    // `flare 1234 --send`, as an operator runs it: an archive of scrubbed files, none of
    // which holds a key or a token, posted to the flare route with Go's fields.
    let local_token = std::fs::read_to_string(agent.local_token_path()).unwrap();
    let flare = agent
        .command_with_env(
            &["flare", "1234", "-e", "ops@example.com", "--send"],
            &[
                ("DD_API_KEY", double.api_key()),
                ("DD_DD_URL", &double.base_url()),
            ],
        )
        .unwrap();
    let flare_out = String::from_utf8_lossy(&flare.stdout).into_owned();
    assert!(
        flare.status.success(),
        "{flare_out}{}",
        String::from_utf8_lossy(&flare.stderr)
    );
    let archive_path = flare_out.lines().next().unwrap().to_owned();
    assert!(flare_out.contains("sent to "), "{flare_out}");
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&archive_path).unwrap()).unwrap();
    let mut files = BTreeMap::new();
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).unwrap();
        files.insert(file.name().to_owned(), text);
    }
    for name in [
        "flare/status.log",
        "flare/status.json",
        "flare/health.json",
        "flare/log-level.json",
        "flare/cluster-agent.log",
        "flare/telemetry.log",
        "flare/expvar.json",
        "flare/config.yaml",
        "flare/envvars.log",
        "flare/version.log",
    ] {
        assert!(
            files.contains_key(name),
            "{name} missing: {:?}",
            files.keys()
        );
    }
    let status: serde_json::Value = serde_json::from_str(&files["flare/status.json"]).unwrap();
    assert_eq!(status["agent"]["pid"], agent.pid());
    assert!(files["flare/cluster-agent.log"].contains("node-agent request"));
    assert!(files["flare/telemetry.log"].contains("api_requests_total"));
    for (name, text) in &files {
        for secret in [
            double.api_key(),
            double.app_key(),
            TOKEN,
            local_token.trim(),
        ] {
            assert!(!text.contains(secret), "{name} holds a secret");
        }
    }
    let uploads = double.requests_to("/support/flare/1234");
    let upload = uploads
        .iter()
        .find(|r| r.method == http::Method::POST)
        .unwrap();
    assert_eq!(upload.header("dd-api-key"), Some(double.api_key()));
    for (field, want) in [
        ("case_id", Some("1234")),
        ("email", Some("ops@example.com")),
        ("source", Some("local")),
    ] {
        assert_eq!(
            upload
                .multipart_field(field)
                .and_then(|p| p.text.as_deref()),
            want,
            "{field}"
        );
    }
    assert!(upload.multipart_field("agent_version").is_some());
    assert!(upload.multipart_field("hostname").is_some());
    let file = upload.multipart_field("flare_file").unwrap();
    assert_eq!(
        u64::try_from(file.size).unwrap(),
        std::fs::metadata(&archive_path).unwrap().len()
    );
    std::fs::remove_file(&archive_path).unwrap();

    // Node and namespace metadata, as the watches see them.
    let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let nodes: Api<Node> = Api::all(cp.client());
    let node = Node {
        metadata: ObjectMeta {
            name: Some("dca-e2e-node".to_owned()),
            labels: Some(map(&[("kubernetes.io/os", "linux"), ("pool", "a")])),
            annotations: Some(map(&[("cluster.k8s.io/machine", "m-1"), ("note", "x")])),
            ..ObjectMeta::default()
        },
        ..Node::default()
    };
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let namespaces: Api<Namespace> = Api::all(cp.client());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some("dca-e2e-team".to_owned()),
            labels: Some(map(&[("team", "a")])),
            annotations: Some(map(&[("owner", "ops")])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();

    // The node's labels as the API server has them: kube-controller-manager 1.20 adds
    // `beta.kubernetes.io/os` from `kubernetes.io/os` a moment after creation, so the served
    // labels must follow the object, whichever version of it the watch delivered last.
    let nodes_ref = &nodes;
    let labels = eventually(
        "the node's current labels are served",
        Duration::from_secs(60),
        || {
            let node_agent = node_agent.clone();
            async move {
                let served = node_agent.node_labels("dca-e2e-node").await.ok();
                let current = nodes_ref.get("dca-e2e-node").await?.metadata.labels;
                Ok(served.filter(|s| Some(s) == current.as_ref()))
            }
        },
    )
    .await
    .unwrap();
    for (key, value) in [("kubernetes.io/os", "linux"), ("pool", "a")] {
        assert_eq!(
            labels.get(key).map(String::as_str),
            Some(value),
            "{labels:?}"
        );
    }
    let annotations = node_agent.node_annotations("dca-e2e-node").await.unwrap();
    assert_eq!(
        annotations,
        map(&[("cluster.k8s.io/machine", "m-1")]),
        "only the host alias"
    );
    let team = eventually("the namespace is served", Duration::from_secs(60), || {
        let node_agent = node_agent.clone();
        async move { Ok(node_agent.namespace_metadata("dca-e2e-team").await.ok()) }
    })
    .await
    .unwrap();
    assert_eq!(team.name, "dca-e2e-team");
    assert_eq!(team.namespace, "");
    assert_eq!(team.labels, map(&[("team", "a")]));
    assert_eq!(
        team.annotations.get("owner").map(String::as_str),
        Some("ops")
    );
    assert_eq!(
        node_agent.namespace_labels("dca-e2e-team").await.unwrap(),
        map(&[("team", "a")])
    );

    // A label change reaches the answers once the watch delivers it.
    let patch = serde_json::json!({"metadata": {"labels": {"pool": "b"}}});
    nodes
        .patch(
            "dca-e2e-node",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    eventually(
        "the new node label is served",
        Duration::from_secs(60),
        || {
            let node_agent = node_agent.clone();
            async move {
                let labels = node_agent.node_labels("dca-e2e-node").await?;
                Ok((labels.get("pool").map(String::as_str) == Some("b")).then_some(()))
            }
        },
    )
    .await
    .unwrap();
    // An unknown node is Go's 500.
    let unknown = node_agent.node_labels("no-such-node").await.unwrap_err();
    assert_eq!(unknown.status().map(|s| s.as_u16()), Some(500), "{unknown}");
    assert_eq!(unknown.body(), Some("\"/nodes//no-such-node\" not found\n"));
    nodes
        .delete("dca-e2e-node", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "a deleted node is no longer served",
        Duration::from_secs(60),
        || {
            let node_agent = node_agent.clone();
            async move {
                Ok(node_agent
                    .node_labels("dca-e2e-node")
                    .await
                    .err()
                    .and_then(|e| e.status())
                    .filter(|s| s.as_u16() == 500)
                    .map(|_| ()))
            }
        },
    )
    .await
    .unwrap();

    // The pod → services map, from the real endpoints controller's Endpoints.
    cp.create_namespace("shop").await.unwrap();
    for node in ["node-a", "node-b"] {
        cp.create_node(node, &map(&[])).await.unwrap();
    }
    let pods = [
        (
            "web-1",
            "node-a",
            "10.1.0.1",
            &[("app", "web"), ("tier", "front")][..],
        ),
        ("web-2", "node-b", "10.1.0.2", &[("app", "web")][..]),
        ("db-0", "node-a", "10.1.0.3", &[("app", "db")][..]),
    ];
    for (name, node, ip, pod_labels) in pods {
        cp.create_pod("shop", name, &map(pod_labels), Some(node))
            .await
            .unwrap();
        cp.mark_pod_ready("shop", name, Some(ip)).await.unwrap();
    }
    for (service, selector) in [
        ("web", ("app", "web")),
        ("front", ("tier", "front")),
        ("db", ("app", "db")),
    ] {
        cp.create_service("shop", service, &map(&[selector]), &[("http", 80)])
            .await
            .unwrap();
    }
    let services_of = |bundle: &e2e::node_agent::NamespacesPodsServices, pod: &str| {
        bundle
            .get("shop")
            .and_then(|pods| pods.get(pod))
            .map(|set| set.keys().cloned().collect::<Vec<_>>())
    };
    let wanted_a = |bundle: &e2e::node_agent::NamespacesPodsServices| {
        services_of(bundle, "web-1") == Some(vec!["front".to_owned(), "web".to_owned()])
            && services_of(bundle, "db-0") == Some(vec!["db".to_owned()])
    };
    eventually(
        "node-a's pods map to their services",
        Duration::from_secs(120),
        || {
            let node_agent = node_agent.clone();
            async move {
                let bundle = node_agent.pods_metadata_for_node("node-a").await?;
                Ok(wanted_a(&bundle).then_some(()))
            }
        },
    )
    .await
    .unwrap();
    // A replica in EndpointSlices mode maps the same from the slices controller's objects
    // (1.20: discovery.k8s.io/v1beta1, with nodeName through the harness's feature gate).
    let slice_ports = AgentPorts::pick().unwrap();
    let slice_settings = agent_settings(
        &cp,
        &binary,
        "dca-e2e-node-api-slices",
        &double,
        &cert,
        slice_ports,
    )
    .env("DD_KUBERNETES_USE_ENDPOINT_SLICES", "true");
    let slice_agent = Agent::spawn(slice_settings).await.unwrap();
    let from_slices =
        NodeAgentClient::new(&format!("https://127.0.0.1:{}", slice_ports.cmd), TOKEN).unwrap();
    eventually(
        "node-a's pods map to their services, from EndpointSlices",
        Duration::from_secs(120),
        || {
            let from_slices = from_slices.clone();
            async move {
                let bundle = from_slices.pods_metadata_for_node("node-a").await?;
                Ok(wanted_a(&bundle).then_some(()))
            }
        },
    )
    .await
    .unwrap();
    let log = std::fs::read_to_string(slice_agent.log_path()).unwrap();
    assert!(
        log.contains("/apis/discovery.k8s.io/v1beta1/endpointslices")
            && !log.contains("/api/v1/endpoints?"),
        "the slices replica did not watch EndpointSlices alone: {}",
        slice_agent.log_path().display()
    );
    assert_eq!(
        from_slices.pods_metadata_for_node("node-b").await.unwrap(),
        node_agent.pods_metadata_for_node("node-b").await.unwrap()
    );
    let node_b = node_agent.pods_metadata_for_node("node-b").await.unwrap();
    assert_eq!(
        services_of(&node_b, "web-2"),
        Some(vec!["web".to_owned()]),
        "{node_b:?}"
    );
    assert_eq!(node_b["shop"].len(), 1, "only node-b's pods: {node_b:?}");
    assert_eq!(
        node_agent
            .pod_tags("node-a", "shop", "web-1")
            .await
            .unwrap(),
        Some(vec![
            "kube_service:front".to_owned(),
            "kube_service:web".to_owned()
        ])
    );
    assert_eq!(
        node_agent
            .pod_tags("node-a", "shop", "nobody")
            .await
            .unwrap(),
        None
    );
    // What the Go agent's kube_metadata collector asks, through its version gate (bulk).
    let seen = session
        .pod_services("node-a", &[("shop", "web-1"), ("shop", "db-0")])
        .await
        .unwrap();
    assert_eq!(
        seen[&("shop".to_owned(), "db-0".to_owned())],
        vec!["db".to_owned()]
    );
    // An unknown node: Go's 200 with a warning, and no node in the answer.
    let unknown = node_agent.pod_tags_for_node("node-z").await.unwrap();
    assert!(unknown.nodes.is_empty(), "{unknown:?}");
    assert_eq!(
        unknown.warnings,
        vec!["Node node-z could not be added to the metadata map bundle: the key agent/KubernetesMetadataMapping/node-z was not found in the cache".to_owned()]
    );

    // A pod turned not Ready, and a deleted Service, leave the answers.
    let not_ready = serde_json::json!({"status": {"conditions": [
        {"type": "Ready", "status": "False", "lastTransitionTime": jiff::Timestamp::now().to_string()},
    ]}});
    Api::<Pod>::namespaced(cp.client(), "shop")
        .patch_status("db-0", &PatchParams::default(), &Patch::Merge(&not_ready))
        .await
        .unwrap();
    Api::<Service>::namespaced(cp.client(), "shop")
        .delete("front", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the not-Ready pod and the deleted Service are gone",
        Duration::from_secs(120),
        || {
            let node_agent = node_agent.clone();
            async move {
                let bundle = node_agent.pods_metadata_for_node("node-a").await?;
                let web_only = services_of(&bundle, "web-1") == Some(vec!["web".to_owned()]);
                Ok((web_only && services_of(&bundle, "db-0").is_none()).then_some(()))
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        node_agent.pod_tags("node-a", "shop", "db-0").await.unwrap(),
        None
    );
    eventually(
        "the not-Ready pod and the deleted Service are gone, from EndpointSlices",
        Duration::from_secs(120),
        || {
            let from_slices = from_slices.clone();
            async move {
                let bundle = from_slices.pods_metadata_for_node("node-a").await?;
                let web_only = services_of(&bundle, "web-1") == Some(vec!["web".to_owned()]);
                Ok((web_only && services_of(&bundle, "db-0").is_none()).then_some(()))
            }
        },
    )
    .await
    .unwrap();
    drop(slice_agent);

    // `metamap` reads the running agent's map with the local token, in Go's format.
    let one_node = metamap(&agent, Some("node-a"));
    assert_eq!(
        one_node,
        "===============\nMetadata Mapper\n===============\n\
         \nNode detected: node-a\
         \n  \
         \n  - Namespace: shop\
         \n      - Pod: web-1\n        Services: map[web:map[]]\
         \n  \n"
    );
    let every_node = metamap(&agent, None);
    for node in ["node-a", "node-b"] {
        let pod = if node == "node-a" { "web-1" } else { "web-2" };
        let section = format!(
            "\nNode detected: {node}\n  \n  - Namespace: shop\n      - Pod: {pod}\n        \
             Services: map[web:map[]]\n  "
        );
        assert!(every_node.contains(&section), "{section:?} in {every_node}");
    }
    // The all-nodes route is our CLI's: the node agents' token does not open it.
    let local_token = std::fs::read_to_string(agent.local_token_path()).unwrap();
    for (token, code, body) in [
        (TOKEN, 403, "invalid session token\n"),
        (local_token.as_str(), 404, "404 page not found\n"),
    ] {
        let response = http
            .get(format!("{endpoint}/api/v1/clusterchecks"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), code);
        assert_eq!(response.text().await.unwrap(), body);
    }
    let response = http
        .get(format!("{endpoint}/api/v1/tags/pod"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);

    // TLS 1.3 only, unless cluster_agent.allow_legacy_tls.
    let refused = client(true).get(&url).bearer_auth(TOKEN).send().await;
    assert!(refused.is_err(), "a TLS 1.2 client was served: {refused:?}");

    // The cluster id: kube-system's UID, written once to the ConfigMap.
    let kube_system: Api<Namespace> = Api::all(cp.client());
    let uid = kube_system
        .get("kube-system")
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    assert_eq!(node_agent.cluster_id().await.unwrap(), uid);
    let configmaps: Api<ConfigMap> = Api::namespaced(cp.client(), cp.agent_namespace());
    let stored = configmaps.get("datadog-cluster-id").await.unwrap();
    assert_eq!(stored.data.unwrap()["id"], uid);

    // A second replica answers the same, from the ConfigMap (every replica serves). It
    // serves the certificate of ipc_cert_file_path (chain and key in one PEM file) instead
    // of a self-signed one.
    let other_ports = AgentPorts::pick().unwrap();
    let ipc_cert = cert.dir().join("ipc_cert.pem");
    let pem = [
        std::fs::read_to_string(cert.dir().join("tls.crt")).unwrap(),
        std::fs::read_to_string(cert.dir().join("tls.key")).unwrap(),
    ]
    .concat();
    std::fs::write(&ipc_cert, pem).unwrap();
    let other_settings = agent_settings(
        &cp,
        &binary,
        "dca-e2e-node-api-2",
        &double,
        &cert,
        other_ports,
    )
    .env("DD_IPC_CERT_FILE_PATH", ipc_cert.display().to_string());
    let other = Agent::spawn(other_settings).await.unwrap();
    let other_endpoint = format!("https://127.0.0.1:{}", other_ports.cmd);
    let other_client = NodeAgentClient::new(&other_endpoint, TOKEN).unwrap();
    let from_other = eventually(
        "the second replica answers the cluster id",
        Duration::from_secs(60),
        || {
            let other_client = other_client.clone();
            async move { Ok(other_client.cluster_id().await.ok()) }
        },
    )
    .await
    .unwrap();
    assert_eq!(from_other, uid);
    // A client that trusts only the test CA completes the handshake: the configured
    // certificate is the one served (a self-signed one would fail verification).
    let verifying = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.ca_pem().as_bytes()).unwrap()])
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let verified = verifying
        .get(format!("{other_endpoint}/version"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(verified.status().as_u16(), 200);
    // The first replica's self-signed certificate does not verify against it.
    let unverified = verifying.get(&url).bearer_auth(TOKEN).send().await;
    assert!(
        unverified.is_err(),
        "a self-signed certificate verified: {unverified:?}"
    );
    drop(other);

    // And the same after a restart.
    agent.restart().await.unwrap();
    let again = eventually(
        "the restarted agent answers the cluster id",
        Duration::from_secs(60),
        || {
            let node_agent = node_agent.clone();
            async move { Ok(node_agent.cluster_id().await.ok()) }
        },
    )
    .await
    .unwrap();
    assert_eq!(again, uid);
    let versions = configmaps.get("datadog-cluster-id").await.unwrap();
    assert_eq!(
        versions.metadata.resource_version, stored.metadata.resource_version,
        "written once"
    );
}
