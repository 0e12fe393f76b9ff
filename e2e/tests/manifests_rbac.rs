//! The shipped manifests on a real control plane: everything `kubectl apply -k manifests/`
//! renders is accepted by kube-apiserver, and the agent, holding only the RBAC they grant,
//! does its whole job (ready, leader over a Lease, cluster id, the pod -> services map, an
//! HPA's metric resolved through the aggregator) while SelfSubjectAccessReview shows it can
//! do nothing broader. Its serving certificate comes from `certs generate`, so the real
//! aggregator verifying it against the printed caBundle checks that command too.

use std::time::Duration;

use e2e::agent::Agent;
use e2e::agent_env::{
    AgentPorts, MetricsApiClient, ServingCert, agent_binary, agent_settings, metric_store,
    register_metrics_api, store_key,
};
use e2e::controlplane::{ControlPlane, ControlPlaneOptions, EndpointAddress, eventually};
use e2e::datadog_double::{DatadogDouble, points_ending_now};
use e2e::manifests::{Rendered, render, repo_root};
use e2e::node_agent::NodeAgentClient;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use serde_json::{Value, json};

const GENEROUS: Duration = Duration::from_secs(180);
const TOKEN: &str = "e2eTokenForTheClusterAgent0123456789abcdef";
/// The example HPA of manifests/hpa-example, and the query the agent makes for it.
const EXAMPLE_NAMESPACE: &str = "default";
const EXAMPLE_HPA: &str = "nginxext";
const EXAMPLE_METRIC: &str = "nginx.net.request_per_s";
const EXAMPLE_QUERY: &str = "avg:nginx.net.request_per_s{kube_container_name:nginx}.rollup(5)";

/// The rendered objects as this 1.20 control plane takes them: it serves HPAs as
/// autoscaling/v2beta2 (the same External metric schema), not the v2 current clusters do.
fn adapted(objects: Vec<Rendered>) -> Vec<Value> {
    objects
        .into_iter()
        .map(|r| {
            let mut object = r.object;
            if object["kind"] == "HorizontalPodAutoscaler" {
                assert_eq!(object["apiVersion"], "autoscaling/v2");
                object["apiVersion"] = json!("autoscaling/v2beta2");
            }
            object
        })
        .collect()
}

async fn apply(client: &kube::Client, object: &Value) {
    let api_version = object["apiVersion"].as_str().unwrap();
    let kind = object["kind"].as_str().unwrap();
    let name = object["metadata"]["name"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let (resource, capabilities) =
        pinned_kind(client, &GroupVersionKind::gvk(group, version, kind))
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
    let api: Api<DynamicObject> = match capabilities.scope {
        Scope::Namespaced => Api::namespaced_with(
            client.clone(),
            object["metadata"]["namespace"].as_str().unwrap(),
            &resource,
        ),
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    api.patch(
        name,
        &PatchParams::apply("manifests-e2e").force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("kube-apiserver refused {kind} {name}: {e}"));
}

/// Whether the agent may do `verb` on `resource` (`group/resource`, `resource` for the core
/// group) in `namespace` (empty: cluster-wide), by its own SelfSubjectAccessReview.
async fn can(
    agent: &kube::Client,
    verb: &str,
    resource: &str,
    namespace: &str,
    name: &str,
) -> bool {
    let (group, resource) = resource.split_once('/').unwrap_or(("", resource));
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": { "resourceAttributes": {
            "verb": verb, "group": group, "resource": resource,
            "namespace": namespace, "name": name,
        } },
    });
    let request = http::Request::post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&review).unwrap())
        .unwrap();
    let answer: Value = agent.request(request).await.unwrap();
    answer["status"]["allowed"].as_bool().unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_rbac_is_enough_for_the_agent_and_nothing_more() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let binary = agent_binary().await.unwrap();
    let cp = ControlPlane::start_with(ControlPlaneOptions {
        agent_rbac: false,
        ..ControlPlaneOptions::default()
    })
    .await
    .unwrap();
    // The manifests' namespace and ServiceAccount are the harness's defaults, so the agent's
    // client certificate is the ServiceAccount the manifests bind.
    assert_eq!(cp.agent_namespace(), "datadog");
    assert_eq!(
        cp.agent_user(),
        "system:serviceaccount:datadog:datadog-cluster-agent"
    );
    let objects = adapted(render(&repo_root().join("manifests")).unwrap());
    assert!(objects.len() >= 15, "{objects:#?}");
    for object in &objects {
        apply(&cp.client(), object).await;
    }

    // What it may do, and what it may not: secrets, writes outside its ConfigMaps and
    // Lease, deletes, other namespaces' ConfigMaps, escalation.
    let agent_client = cp.agent_client().await.unwrap();
    let allowed: &[(&str, &str, &str, &str)] = &[
        ("list", "nodes", "", ""),
        ("watch", "namespaces", "", ""),
        ("get", "namespaces", "", "kube-system"),
        ("list", "endpoints", "", ""),
        ("watch", "discovery.k8s.io/endpointslices", "", ""),
        ("watch", "autoscaling/horizontalpodautoscalers", "", ""),
        ("create", "events", "shop", ""),
        ("update", "configmaps", "datadog", "datadog-custom-metrics"),
        ("create", "coordination.k8s.io/leases", "datadog", ""),
        ("create", "authentication.k8s.io/tokenreviews", "", ""),
        (
            "create",
            "authorization.k8s.io/subjectaccessreviews",
            "",
            "",
        ),
        (
            "watch",
            "configmaps",
            "kube-system",
            "extension-apiserver-authentication",
        ),
    ];
    let denied: &[(&str, &str, &str, &str)] = &[
        ("get", "secrets", "datadog", "datadog-cluster-agent"),
        ("list", "secrets", "", ""),
        ("list", "pods", "", ""),
        ("create", "pods", "datadog", ""),
        ("delete", "configmaps", "datadog", "datadog-custom-metrics"),
        ("patch", "configmaps", "datadog", "datadog-custom-metrics"),
        (
            "update",
            "configmaps",
            "kube-system",
            "extension-apiserver-authentication",
        ),
        ("get", "configmaps", "kube-system", "kube-proxy"),
        ("create", "configmaps", "default", ""),
        ("delete", "coordination.k8s.io/leases", "datadog", ""),
        ("update", "coordination.k8s.io/leases", "kube-system", ""),
        ("patch", "nodes", "", "node-a"),
        ("delete", "namespaces", "", "default"),
        (
            "update",
            "autoscaling/horizontalpodautoscalers",
            "default",
            EXAMPLE_HPA,
        ),
        ("escalate", "rbac.authorization.k8s.io/clusterroles", "", ""),
        ("bind", "rbac.authorization.k8s.io/clusterroles", "", ""),
        ("impersonate", "users", "", ""),
        (
            "create",
            "serviceaccounts/token",
            "datadog",
            "datadog-cluster-agent",
        ),
    ];
    for (verb, resource, namespace, name) in allowed {
        assert!(
            can(&agent_client, verb, resource, namespace, name).await,
            "the agent may not {verb} {resource} {namespace}/{name}"
        );
    }
    for (verb, resource, namespace, name) in denied {
        assert!(
            !can(&agent_client, verb, resource, namespace, name).await,
            "the agent may {verb} {resource} {namespace}/{name}: broader than it needs"
        );
    }

    // The agent with nothing but those grants, as the Deployment configures it.
    // The serving certificate as the README has users make it.
    let cert = ServingCert::from_agent_cli(&binary, cp.agent_namespace()).unwrap();
    let double = DatadogDouble::start().await.unwrap();
    double.set_series(EXAMPLE_QUERY, points_ending_now(&[12.0; 4], 5));
    let ports = AgentPorts::pick().unwrap();
    let settings = agent_settings(&cp, &binary, "dca-e2e-manifests", &double, &cert, ports)
        .env("DD_LEADER_ELECTION", "true")
        .env("DD_LEADER_ELECTION_DEFAULT_RESOURCE", "lease")
        .env("DD_EXTERNAL_METRICS_PROVIDER_ROLLUP", "5");
    let agent = Agent::spawn(settings).await.unwrap();

    let ready = format!("http://127.0.0.1:{}/ready", ports.health);
    eventually("/ready answers 200", GENEROUS, || {
        let url = ready.clone();
        async move { Ok((reqwest::get(url).await?.status() == 200).then_some(())) }
    })
    .await
    .unwrap();
    let scrape = format!("http://127.0.0.1:{}/metrics", ports.prometheus);
    eventually("the agent leads through its Lease", GENEROUS, || {
        let url = scrape.clone();
        async move {
            let text = reqwest::get(url).await?.text().await?;
            Ok(text
                .lines()
                .any(|l| {
                    l.starts_with("leader_election_is_leader{")
                        && l.contains(r#"is_leader="true""#)
                        && l.ends_with(" 1")
                })
                .then_some(()))
        }
    })
    .await
    .unwrap();

    let node_agent =
        NodeAgentClient::new(&format!("https://127.0.0.1:{}", ports.cmd), TOKEN).unwrap();
    let cluster_id = eventually("the cluster id", GENEROUS, || {
        let node_agent = node_agent.clone();
        async move { Ok(node_agent.cluster_id().await.ok()) }
    })
    .await
    .unwrap();
    assert_eq!(cluster_id.len(), 36, "{cluster_id}");

    // A Service without a selector and its hand-made Endpoints: the controller leaves those
    // alone, so the map holds exactly them.
    cp.create_service(
        EXAMPLE_NAMESPACE,
        "web",
        &Default::default(),
        &[("http", 80)],
    )
    .await
    .unwrap();
    cp.create_endpoints(
        EXAMPLE_NAMESPACE,
        "web",
        &[EndpointAddress {
            ip: "10.1.0.7".to_owned(),
            node_name: Some("node-a".to_owned()),
            pod: Some("web-1".to_owned()),
        }],
        &[("http", 80)],
    )
    .await
    .unwrap();
    let agent_ref = &agent;
    eventually("metamap shows the Endpoints", GENEROUS, || async move {
        let out = agent_ref.command(&["metamap", "node-a"])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok((out.status.success() && text.contains("Services: map[web:map[]]")).then_some(()))
    })
    .await
    .unwrap();

    // The example HPA's metric, resolved by the leader, written to the store, served to
    // the HPA controller's identity through the delegated-auth RBAC of apiservice/.
    let key = store_key(EXAMPLE_NAMESPACE, EXAMPLE_HPA, EXAMPLE_METRIC);
    let cpr = &cp;
    eventually("the example HPA's metric is in the store", GENEROUS, || {
        let key = key.clone();
        async move {
            let store = metric_store(cpr).await?.unwrap_or_default();
            Ok(store
                .entries
                .get(&key)
                .filter(|e| e.valid && e.value == 12.0)
                .map(|_| ()))
        }
    })
    .await
    .unwrap();
    register_metrics_api(&cp, &cert, ports.metrics_api)
        .await
        .unwrap();
    let api = MetricsApiClient::new(&cp, &cert, ports.metrics_api).unwrap();
    let api_ref = &api;
    let answer = eventually(
        "the metrics API serves the example",
        GENEROUS,
        || async move {
            let answer = api_ref
                .get_metric(
                    EXAMPLE_NAMESPACE,
                    EXAMPLE_METRIC,
                    "kube_container_name=nginx",
                )
                .await?;
            Ok((answer.status == 200).then_some(answer))
        },
    )
    .await
    .unwrap();
    assert_eq!(answer.body["items"][0]["value"], "12", "{:?}", answer.body);

    // Nothing it tried was refused along the way.
    let log = agent.log();
    for refusal in ["forbidden", "Forbidden", " 403 "] {
        assert!(
            !log.contains(refusal),
            "{refusal} in the agent's log:\n{log}"
        );
    }
}
