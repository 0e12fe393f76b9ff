//! Smoke tests of the e2e harness itself: the real control plane answers, its HPA controller
//! acts on autoscaling/v2beta2 External metrics, the aggregator reaches an APIService on
//! loopback with the front-proxy identity, and nothing the harness starts outlives it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use e2e::controlplane::{
    ADMIN_USER, CertAuthority, ControlPlane, ControlPlaneOptions, EndpointAddress, ExternalHpa,
    FRONT_PROXY_CLIENT_CN, MetricTarget, eventually, labels,
};
use e2e::process::{self, listening_sockets_of, pid_alive, port_listening};
use e2e::test_apiserver::{TestApiServer, TestApiServerConfig};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints};
use kube::api::{Api, PostParams};

const GENEROUS: Duration = Duration::from_secs(180);

/// Waits until none of `pids` is alive and none of `ports` is listening.
async fn assert_gone(pids: &[u32], ports: &[u16]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
        let listening: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|p| port_listening(*p).unwrap())
            .collect();
        if alive.is_empty() && listening.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "survivors: pids {alive:?}, listening ports {listening:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every listening socket of every process the control plane started, asserting loopback only.
fn loopback_listen_ports(cp: &ControlPlane) -> Vec<u16> {
    let mut ports = Vec::new();
    for pid in cp.all_pids() {
        for addr in listening_sockets_of(pid).unwrap() {
            assert!(
                addr.ip().is_loopback(),
                "pid {pid} listens on {addr}, not on loopback"
            );
            ports.push(addr.port());
        }
    }
    ports
}

#[tokio::test]
async fn control_plane_answers_and_hpa_controller_reports_conditions() {
    let cp = ControlPlane::start().await.unwrap();
    let client = cp.client();

    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.git_version, "v1.20.2");

    // The apiserver, etcd and controller-manager each listen on loopback only.
    let ports = loopback_listen_ports(&cp);
    for expected in [
        cp.ports().apiserver,
        cp.ports().etcd_client,
        cp.ports().controller_manager,
    ] {
        assert!(ports.contains(&expected), "{expected} not in {ports:?}");
    }

    // The agent identity can do what the agent needs in its namespace, and not more.
    let agent = cp.agent_client().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(agent.clone(), cp.agent_namespace());
    let cm: ConfigMap =
        serde_json::from_value(serde_json::json!({ "metadata": { "name": "smoke" } })).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let elsewhere: Api<ConfigMap> = Api::namespaced(agent, "default");
    let denied = elsewhere.create(&PostParams::default(), &cm).await;
    assert!(
        matches!(&denied, Err(kube::Error::Api(s)) if s.code == 403),
        "{denied:?}"
    );

    cp.create_namespace("smoke").await.unwrap();
    let app = labels(&[("app", "web")]);
    cp.create_deployment("smoke", "web", 1, &app).await.unwrap();
    let hpa = ExternalHpa::new(
        "web",
        "nginx.net.request_per_s",
        MetricTarget::AverageValue("10".to_owned()),
    )
    .label("app", "web");
    cp.create_external_hpa("smoke", &hpa).await.unwrap();

    // With no external metrics API registered, the controller still evaluates the HPA and says
    // why it cannot scale.
    let status = eventually("HPA conditions", GENEROUS, || async {
        let status = cp.hpa_status("smoke", "web").await?;
        Ok(status
            .condition("ScalingActive")
            .is_some()
            .then_some(status))
    })
    .await
    .unwrap();
    let scaling_active = status.condition("ScalingActive").unwrap();
    assert_eq!(scaling_active.status, "False", "{status:?}");
    assert!(status.condition("AbleToScale").is_some(), "{status:?}");

    // The deployment controller works (no kubelet, so pods stay Pending).
    let replicas = eventually("deployment status", GENEROUS, || async {
        let r = cp.deployment_replicas("smoke", "web").await?;
        Ok((r.status == 1).then_some(r))
    })
    .await
    .unwrap();
    assert_eq!(replicas.spec, 1);

    let revision = cp.compact_etcd().await.unwrap();
    assert!(revision > 0);

    let pids = cp.all_pids();
    drop(cp);
    assert_gone(&pids, &ports).await;
}

#[tokio::test]
async fn aggregator_reaches_a_loopback_apiservice_with_front_proxy_identity() {
    let cp = ControlPlane::start().await.unwrap();

    let ca = CertAuthority::new("smoke-apiservice-ca").unwrap();
    let server = TestApiServer::start(TestApiServerConfig {
        group: "smoke.example.com".to_owned(),
        version: "v1".to_owned(),
        serving: ca.issue_server(&["smoke-api.smoke-system.svc"]).unwrap(),
        client_ca_pem: Some(cp.front_proxy_ca_pem().to_owned()),
        responder: None,
    })
    .await
    .unwrap();

    cp.register_apiservice(
        "smoke.example.com",
        "v1",
        "smoke-api",
        "smoke-system",
        server.port(),
        ca.cert_pem(),
    )
    .await
    .unwrap();
    cp.wait_apiservice_available("v1.smoke.example.com", GENEROUS)
        .await
        .unwrap();

    // Right after turning Available the aggregator may briefly 404: poll.
    let client = cp.client();
    let body = eventually("GET /apis/smoke.example.com/v1", GENEROUS, || {
        let client = client.clone();
        async move {
            let req = http::Request::get("/apis/smoke.example.com/v1").body(Vec::new())?;
            Ok(Some(client.request_text(req).await?))
        }
    })
    .await
    .unwrap();
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["groupVersion"], "smoke.example.com/v1");

    let ours: Vec<_> = server
        .requests_to("/apis/smoke.example.com/v1")
        .into_iter()
        .filter(|r| r.header("x-remote-user") == Some(ADMIN_USER))
        .collect();
    assert!(!ours.is_empty(), "{:?}", server.requests());
    let seen = &ours[0];
    assert_eq!(
        seen.client_cert_cn.as_deref(),
        Some(FRONT_PROXY_CLIENT_CN),
        "{seen:?}"
    );
    assert!(
        seen.header_all("x-remote-group")
            .contains(&"system:masters")
    );

    // The aggregator's own availability checks come with the same client certificate.
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.client_cert_cn.as_deref() == Some(FRONT_PROXY_CLIENT_CN)),
        "{:?}",
        server.requests()
    );
}

const CHILD_ENV: &str = "DCA_E2E_CONTROLPLANE_HYGIENE_CHILD";

/// Runs this test binary again as a "test process" that starts a control plane, SIGKILLs it, and
/// checks that no process the control plane started survives and no port it listened on is still
/// listening. (Orderly drops are checked at the end of the HPA test.)
#[tokio::test]
async fn nothing_survives_a_sigkilled_test_process() {
    if std::env::var_os(CHILD_ENV).is_some() {
        let cp = ControlPlane::start().await.unwrap();
        let ports = loopback_listen_ports(&cp);
        let pids = cp.all_pids();
        println!(
            "E2E-STATE pids={} ports={} dir={}",
            pids.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(","),
            cp.dir().display()
        );
        tokio::time::sleep(Duration::from_secs(900)).await;
        return;
    }

    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args([
            "--exact",
            "nothing_survives_a_sigkilled_test_process",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (pids, ports, dir) = tokio::task::spawn_blocking(move || {
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            // libtest prints "test <name> ... " without a newline before the output.
            let Some((_, rest)) = line.split_once("E2E-STATE ") else {
                continue;
            };
            let mut pids = Vec::new();
            let mut ports = Vec::new();
            let mut dir = PathBuf::new();
            for field in rest.split_whitespace() {
                if let Some(list) = field.strip_prefix("pids=") {
                    pids = list.split(',').map(|p| p.parse::<u32>().unwrap()).collect();
                }
                if let Some(list) = field.strip_prefix("ports=") {
                    ports = list.split(',').map(|p| p.parse::<u16>().unwrap()).collect();
                }
                if let Some(path) = field.strip_prefix("dir=") {
                    dir = PathBuf::from(path);
                }
            }
            return (pids, ports, dir);
        }
        panic!("child test process never reported its control plane");
    })
    .await
    .unwrap();
    assert!(pids.len() >= 4, "{pids:?}");
    assert!(ports.len() >= 3, "{ports:?}");
    assert!(pids.iter().all(|p| pid_alive(*p)));

    process::send_signal(child.id(), "KILL").unwrap();
    child.wait().unwrap();
    assert_gone(&pids, &ports).await;
    // The guardian also removed the run directory the killed test process could not clean up.
    assert!(dir.starts_with(std::env::temp_dir()), "{}", dir.display());
    eventually("run directory removal", Duration::from_secs(60), || async {
        Ok((!dir.exists()).then_some(()))
    })
    .await
    .unwrap();
}

/// The fixed componentstatus ports and the scheduler work, and the object helpers build the kind
/// of small cluster the metadata-mapper scenarios need (nodes, bound pods marked Ready, a
/// Service with Endpoints pointing at them).
#[tokio::test]
async fn componentstatuses_are_healthy_and_object_helpers_work() {
    let cp = ControlPlane::start_with(ControlPlaneOptions {
        scheduler: true,
        componentstatus_ports: true,
        ..ControlPlaneOptions::default()
    })
    .await
    .unwrap();
    let ports = loopback_listen_ports(&cp);
    assert!(ports.contains(&10252), "{ports:?}");
    assert!(ports.contains(&10251), "{ports:?}");

    let client = cp.client();
    eventually("componentstatuses healthy", GENEROUS, || {
        let client = client.clone();
        async move {
            let req = http::Request::get("/api/v1/componentstatuses").body(Vec::new())?;
            let list: serde_json::Value = serde_json::from_str(&client.request_text(req).await?)?;
            let healthy = |name: &str| {
                list["items"].as_array().is_some_and(|items| {
                    items.iter().any(|i| {
                        i["metadata"]["name"] == name
                            && i["conditions"][0]["type"] == "Healthy"
                            && i["conditions"][0]["status"] == "True"
                    })
                })
            };
            Ok(
                (healthy("controller-manager") && healthy("scheduler") && healthy("etcd-0"))
                    .then_some(()),
            )
        }
    })
    .await
    .unwrap();

    cp.create_namespace("shop").await.unwrap();
    cp.create_node("node-a", &labels(&[("zone", "a")]))
        .await
        .unwrap();
    let web = labels(&[("app", "web")]);
    cp.create_pod("shop", "web-1", &web, Some("node-a"))
        .await
        .unwrap();
    let pod = cp
        .mark_pod_ready("shop", "web-1", Some("10.1.0.5"))
        .await
        .unwrap();
    let status = pod.status.unwrap();
    assert_eq!(status.pod_ip.as_deref(), Some("10.1.0.5"));
    assert!(
        status
            .conditions
            .unwrap()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
    assert_eq!(cp.list_pods("shop", "app=web").await.unwrap().len(), 1);

    // A Service without a selector, so the endpoints controller leaves our Endpoints alone.
    cp.create_service("shop", "web", &Default::default(), &[("http", 80)])
        .await
        .unwrap();
    cp.create_endpoints(
        "shop",
        "web",
        &[EndpointAddress {
            ip: "10.1.0.5".to_owned(),
            node_name: Some("node-a".to_owned()),
            pod: Some("web-1".to_owned()),
        }],
        &[("http", 8080)],
    )
    .await
    .unwrap();
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "shop");
    let subsets = endpoints.get("web").await.unwrap().subsets.unwrap();
    let address = &subsets[0].addresses.as_ref().unwrap()[0];
    assert_eq!(address.node_name.as_deref(), Some("node-a"));
    assert_eq!(
        address.target_ref.as_ref().unwrap().name.as_deref(),
        Some("web-1")
    );

    let pids = cp.all_pids();
    cp.shutdown().unwrap();
    assert_gone(&pids, &ports).await;
}
