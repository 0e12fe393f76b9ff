//! The manifests in `apiservice/` say what the external metrics issue requires: the
//! APIService pins a `caBundle` (never insecureSkipTLSVerify) with priorities 100/100, its
//! Service maps 443 to the agent's default metrics port, and the RBAC grants exactly the
//! delegated-auth roles plus the HPA controller's read access. The e2e suite applies them to a
//! real control plane; this checks the values without one.

use std::path::Path;

use datadog_cluster_agent::config::Settings;
use serde_json::{Value, json};

fn documents(file: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("apiservice")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn one(file: &str) -> Value {
    let mut docs = documents(file);
    assert_eq!(docs.len(), 1, "{file}: {docs:#?}");
    docs.remove(0)
}

fn by_kind_and_name<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {docs:#?}"))
}

#[test]
fn the_apiservice_pins_a_ca_bundle_and_points_at_the_service() {
    let apiservice = one("apiservice.yaml");
    assert_eq!(apiservice["apiVersion"], "apiregistration.k8s.io/v1");
    assert_eq!(apiservice["kind"], "APIService");
    assert_eq!(
        apiservice["metadata"]["name"],
        "v1beta1.external.metrics.k8s.io"
    );
    let spec = &apiservice["spec"];
    assert_eq!(spec["group"], "external.metrics.k8s.io");
    assert_eq!(spec["version"], "v1beta1");
    assert_eq!(spec["groupPriorityMinimum"], 100);
    assert_eq!(spec["versionPriority"], 100);
    assert!(
        spec.get("insecureSkipTLSVerify").is_none(),
        "never insecureSkipTLSVerify: {spec}"
    );
    // Filled in by certs/generate.sh with the CA of the serving certificate.
    assert_eq!(spec["caBundle"], "${CA_BUNDLE}");

    let service = one("service.yaml");
    assert_eq!(service["kind"], "Service");
    assert_eq!(spec["service"]["name"], service["metadata"]["name"]);
    assert_eq!(
        spec["service"]["namespace"],
        service["metadata"]["namespace"]
    );
    assert_eq!(spec["service"]["port"], 443);
}

#[test]
fn the_service_maps_443_to_the_default_metrics_port() {
    let service = one("service.yaml");
    let ports = service["spec"]["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0]["port"], 443);
    assert_eq!(ports[0]["protocol"], "TCP");
    let defaults =
        Settings::load_from(None, Path::new("/nonexistent"), &|_: &str| None::<String>).unwrap();
    assert_eq!(
        ports[0]["targetPort"],
        json!(defaults.external_metrics.port),
        "targetPort must be external_metrics_provider.port's default"
    );
    assert_eq!(
        service["spec"]["selector"],
        json!({"app.kubernetes.io/name": "datadog-cluster-agent"})
    );
}

#[test]
fn rbac_grants_delegated_auth_and_the_hpa_controllers_reads_only() {
    let docs = documents("rbac.yaml");
    assert_eq!(docs.len(), 4, "{docs:#?}");
    let agent = json!([{
        "kind": "ServiceAccount",
        "name": "datadog-cluster-agent",
        "namespace": "datadog"
    }]);

    let delegator = by_kind_and_name(
        &docs,
        "ClusterRoleBinding",
        "datadog-cluster-agent:system:auth-delegator",
    );
    assert_eq!(
        delegator["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"})
    );
    assert_eq!(delegator["subjects"], agent);

    let reader = by_kind_and_name(&docs, "RoleBinding", "datadog-cluster-agent:auth-reader");
    assert_eq!(reader["metadata"]["namespace"], "kube-system");
    assert_eq!(
        reader["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "extension-apiserver-authentication-reader"})
    );
    assert_eq!(reader["subjects"], agent);

    let role = by_kind_and_name(
        &docs,
        "ClusterRole",
        "datadog-cluster-agent:external-metrics-reader",
    );
    assert_eq!(
        role["rules"],
        json!([{
            "apiGroups": ["external.metrics.k8s.io"],
            "resources": ["*"],
            "verbs": ["get", "list", "watch"]
        }]),
        "read-only, and only the external metrics group"
    );
    let binding = by_kind_and_name(
        &docs,
        "ClusterRoleBinding",
        "datadog-cluster-agent:external-metrics-reader",
    );
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "datadog-cluster-agent:external-metrics-reader"})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "horizontal-pod-autoscaler", "namespace": "kube-system"}])
    );
}
