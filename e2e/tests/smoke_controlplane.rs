//! Smoke tests of the e2e harness itself: the real control plane answers, its HPA controller
//! acts on autoscaling/v2beta2 External metrics, the aggregator reaches an APIService on
//! loopback with the front-proxy identity, and nothing the harness starts outlives it.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::agent::Agent;
use e2e::agent_env::{AgentPorts, ServingCert, agent_binary, agent_settings};
use e2e::controlplane::{
    ADMIN_USER, CertAuthority, ControlPlane, ControlPlaneOptions, EndpointAddress, ExternalHpa,
    FRONT_PROXY_CLIENT_CN, MetricTarget, eventually, labels,
};
use e2e::datadog_double::DatadogDouble;
use e2e::process::{
    ChildTest, ListeningSocket, listeners_of, pid_alive, read_parent_line, socket_owners,
    still_listening,
};
use e2e::test_apiserver::{TestApiServer, TestApiServerConfig};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints};
use kube::api::{Api, PostParams};

const GENEROUS: Duration = Duration::from_secs(180);

/// Waits until none of `pids` is alive and none of `sockets` (those very sockets, by inode) is
/// still listening. A port that a parallel test binds again after it was freed is another
/// socket and does not count; a socket that some escaped process still holds does.
async fn assert_gone(pids: &[u32], sockets: &[ListeningSocket]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
        let listening = still_listening(sockets).unwrap();
        if alive.is_empty() && listening.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            let owners: Vec<(ListeningSocket, Vec<u32>)> = listening
                .iter()
                .map(|s| (*s, socket_owners(s.inode)))
                .collect();
            panic!("survivors: pids {alive:?}, listening sockets (with their holders) {owners:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every listening socket of every process the control plane started, asserting loopback only.
fn loopback_listeners(cp: &ControlPlane) -> Vec<ListeningSocket> {
    let mut sockets = Vec::new();
    for pid in cp.all_pids() {
        for socket in listeners_of(pid).unwrap() {
            assert!(
                socket.addr.ip().is_loopback(),
                "pid {pid} listens on {}, not on loopback",
                socket.addr
            );
            sockets.push(socket);
        }
    }
    sockets
}

fn ports_of(sockets: &[ListeningSocket]) -> Vec<u16> {
    sockets.iter().map(|s| s.addr.port()).collect()
}

#[tokio::test]
async fn control_plane_answers_and_hpa_controller_reports_conditions() {
    let cp = ControlPlane::start().await.unwrap();
    let client = cp.client();

    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.git_version, "v1.20.2");

    // The apiserver, etcd and controller-manager each listen on loopback only.
    let sockets = loopback_listeners(&cp);
    let ports = ports_of(&sockets);
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

    // Compaction: an exact list at an old resourceVersion is read from etcd (not the watch
    // cache) and succeeds while etcd still has that revision; once compacted past it, the same
    // list answers 410 Gone with reason Expired, which is what clients must recover from.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "smoke");
    let cm: ConfigMap =
        serde_json::from_value(serde_json::json!({ "metadata": { "name": "before-compaction" } }))
            .unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    let old_rv = created.metadata.resource_version.clone().unwrap();
    let mut changed = created;
    changed.data = Some([("k".to_owned(), "v".to_owned())].into());
    let changed = cms
        .replace("before-compaction", &PostParams::default(), &changed)
        .await
        .unwrap();
    let new_rv: i64 = changed.metadata.resource_version.unwrap().parse().unwrap();
    let exact_list_at = |rv: &str| {
        http::Request::get(format!(
            "/api/v1/namespaces/smoke/configmaps?resourceVersion={rv}&resourceVersionMatch=Exact"
        ))
        .body(Vec::new())
        .unwrap()
    };
    let before: serde_json::Value = client.request(exact_list_at(&old_rv)).await.unwrap();
    assert_eq!(before["metadata"]["resourceVersion"], old_rv.as_str());
    let listed = before["items"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .any(|i| i["metadata"]["name"] == "before-compaction"
                && i["metadata"]["resourceVersion"] == old_rv.as_str()
                && i.get("data").is_none()),
        "{before}"
    );

    let revision = cp.compact_etcd().await.unwrap();
    assert!(
        revision >= new_rv,
        "compacted at {revision}, before {new_rv}"
    );
    let after = client
        .request::<serde_json::Value>(exact_list_at(&old_rv))
        .await;
    match &after {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 410, "{status:?}");
            assert_eq!(status.reason, "Expired", "{status:?}");
        }
        other => panic!("list at compacted resourceVersion {old_rv}: {other:?}"),
    }

    let pids = cp.all_pids();
    drop(cp);
    assert_gone(&pids, &sockets).await;
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
const CHILD_STATE: &str = "E2E-STATE ";
/// What the parent writes to make the child test panic, and the message it panics with.
const PANIC_COMMAND: &str = "panic";
const CHILD_PANIC: &str = "deliberate panic of the child test, with a live control plane and agent";

/// What a child test process started, as it reported it.
#[derive(Debug)]
struct ChildState {
    pids: Vec<u32>,
    sockets: Vec<ListeningSocket>,
    /// Run directories the harness owns (removed by the guardians when the test process dies,
    /// kept for a post-mortem when the test panics).
    run_dirs: Vec<PathBuf>,
    /// The agent's serving certificate: a plain temporary directory of the test process.
    scratch: PathBuf,
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The child role of the hygiene tests: a live control plane and a live agent (the real binary,
/// serving its metrics API on loopback and talking to the apiserver and a Datadog double), all
/// reported to the parent. Then it waits for the parent: killed by a signal, told to panic,
/// or (the parent went away) ends normally.
async fn child_role() {
    let binary = agent_binary().await.unwrap();
    let cp = ControlPlane::start().await.unwrap();
    let double = DatadogDouble::start().await.unwrap();
    let cert = ServingCert::new(cp.agent_namespace()).unwrap();
    let ports = AgentPorts::pick().unwrap();
    let agent = Agent::spawn(agent_settings(
        &cp,
        &binary,
        "dca-e2e-hygiene",
        &double,
        &cert,
        ports,
    ))
    .await
    .unwrap();

    let mut pids = cp.all_pids();
    pids.extend([agent.pid(), agent.pgid()]);
    let mut sockets = loopback_listeners(&cp);
    let cp_ports = cp.ports();
    for port in [
        cp_ports.etcd_client,
        cp_ports.etcd_peer,
        cp_ports.apiserver,
        cp_ports.controller_manager,
    ] {
        assert!(ports_of(&sockets).contains(&port), "{port}: {sockets:?}");
    }
    // The agent is ready once its metrics API answers; whatever else it listens on counts too.
    let agent_sockets = listeners_of(agent.pid()).unwrap();
    assert!(
        agent_sockets
            .iter()
            .any(|s| s.addr.port() == ports.metrics_api && s.addr.ip().is_loopback()),
        "the agent does not listen on 127.0.0.1:{}: {agent_sockets:?}",
        ports.metrics_api
    );
    sockets.extend(agent_sockets);
    // The Datadog double, served by the test process itself.
    sockets.extend(listeners_of(std::process::id()).unwrap());
    println!(
        "{CHILD_STATE}pids={} sockets={} dirs={},{} scratch={}",
        join(&pids),
        join(&sockets),
        cp.dir().display(),
        agent.run_dir().display(),
        cert.dir().display()
    );
    let command = tokio::task::spawn_blocking(read_parent_line).await.unwrap();
    if command.as_deref() == Some(PANIC_COMMAND) {
        panic!("{CHILD_PANIC}");
    }
}

/// Starts `test` (the calling test) as a child test process in its own process group and waits
/// until it reports a live control plane and agent.
fn start_child(test: &str) -> (ChildTest, ChildState) {
    let child = ChildTest::spawn(test, &[(CHILD_ENV, "1")]).unwrap();
    // Building the agent, starting a control plane and the agent: minutes on a loaded machine.
    let line = child
        .wait_for_line(CHILD_STATE, Duration::from_secs(600))
        .unwrap();
    let mut state = ChildState {
        pids: Vec::new(),
        sockets: Vec::new(),
        run_dirs: Vec::new(),
        scratch: PathBuf::new(),
    };
    for field in line.split_whitespace() {
        if let Some(list) = field.strip_prefix("pids=") {
            state.pids = list.split(',').map(|p| p.parse().unwrap()).collect();
        } else if let Some(list) = field.strip_prefix("sockets=") {
            state.sockets = list.split(',').map(|s| s.parse().unwrap()).collect();
        } else if let Some(list) = field.strip_prefix("dirs=") {
            state.run_dirs = list.split(',').map(PathBuf::from).collect();
        } else if let Some(path) = field.strip_prefix("scratch=") {
            state.scratch = PathBuf::from(path);
        }
    }
    // etcd, apiserver, controller-manager and their guardian; the agent and its guardian.
    assert!(state.pids.len() >= 6, "{state:?}");
    // Control plane: etcd client + peer, apiserver, controller-manager; the agent's metrics
    // API; the Datadog double.
    assert!(state.sockets.len() >= 6, "{state:?}");
    assert!(state.pids.iter().all(|p| pid_alive(*p)), "{state:?}");
    assert_eq!(still_listening(&state.sockets).unwrap(), state.sockets);
    for dir in state.run_dirs.iter().chain([&state.scratch]) {
        assert!(dir.starts_with(std::env::temp_dir()), "{}", dir.display());
        assert!(dir.is_dir(), "{}", dir.display());
    }
    (child, state)
}

/// After the test process died of a signal: nothing it started survives, nothing listens, and
/// the guardians removed the run directories it could not clean up.
async fn assert_nothing_left_after_death(child: &mut ChildTest, state: &ChildState) {
    assert_gone(&state.pids, &state.sockets).await;
    for dir in &state.run_dirs {
        eventually("run directory removal", Duration::from_secs(60), || async {
            Ok((!dir.exists()).then_some(()))
        })
        .await
        .unwrap();
    }
    // Every process that inherited the child's stderr (its guardians) is gone too.
    child.wait_output_closed(Duration::from_secs(60)).unwrap();
    remove_scratch(&state.scratch);
}

/// The serving-certificate folder is an ordinary temporary directory that a killed test
/// process cannot remove; tidy it here so repeated runs do not pile them up in /tmp.
fn remove_scratch(dir: &Path) {
    if dir.exists() {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// A test process killed with SIGKILL (no destructor runs) leaves no process, no listening
/// socket and no run directory behind. (Orderly drops are checked at the end of the HPA test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_survives_a_sigkilled_test_process() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child_role().await;
        return;
    }
    let (mut child, state) = start_child("nothing_survives_a_sigkilled_test_process");
    child.signal("KILL").unwrap();
    let status = child.wait(Duration::from_secs(60)).unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");
    assert_nothing_left_after_death(&mut child, &state).await;
}

/// Ctrl-C: SIGINT to the test process's whole process group, as a terminal delivers it to its
/// foreground job. The test process dies of it (Rust installs no SIGINT handler), and the
/// guardians, each in a group of its own, stop everything it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_survives_ctrl_c_of_the_test_process() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child_role().await;
        return;
    }
    let (mut child, state) = start_child("nothing_survives_ctrl_c_of_the_test_process");
    child.signal_group("INT").unwrap();
    let status = child.wait(Duration::from_secs(60)).unwrap();
    assert_eq!(status.signal(), Some(2), "{status:?}");
    assert_nothing_left_after_death(&mut child, &state).await;
}

/// A test that panics with a control plane and an agent live: the harness stops everything
/// while unwinding, checks that no PID survived (it reports "!!!!!!!! e2e …" otherwise), and
/// keeps the run directories for a post-mortem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_survives_a_test_that_panics() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child_role().await;
        return;
    }
    let (mut child, state) = start_child("nothing_survives_a_test_that_panics");
    child.send_line(PANIC_COMMAND).unwrap();
    // The agent gets its full stop grace on the orderly path.
    let status = child.wait(Duration::from_secs(180)).unwrap();
    child.wait_output_closed(Duration::from_secs(60)).unwrap();
    let stderr = child.stderr();
    // libtest's exit code for a failed test run.
    assert_eq!(status.code(), Some(101), "{status:?}\n{stderr}");
    assert!(stderr.contains(CHILD_PANIC), "{stderr}");
    assert!(
        !stderr.contains("!!!!!!!! e2e"),
        "the harness reported survivors:\n{stderr}"
    );
    assert_gone(&state.pids, &state.sockets).await;
    for dir in &state.run_dirs {
        assert!(
            stderr.contains(&format!("kept run directory {}", dir.display())),
            "{} was not kept for a post-mortem:\n{stderr}",
            dir.display()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
    // Dropped while unwinding, like any temporary directory.
    assert!(!state.scratch.exists(), "{}", state.scratch.display());
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
    let sockets = loopback_listeners(&cp);
    let ports = ports_of(&sockets);
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
    assert_gone(&pids, &sockets).await;
}
