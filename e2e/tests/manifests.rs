//! What `kubectl apply -k manifests/` installs, checked without a cluster: every file is
//! installed, the RBAC bound to the agent names its verbs and resources, the Deployment is
//! hardened, and every setting its environment gives is one the agent reads, with ports
//! and paths that agree with the Services, probes and volumes. `manifests_rbac.rs` applies
//! the same objects to a real control plane.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use datadog_cluster_agent::config::{NOT_YET_USED, SPECS, Settings, env_name};
use e2e::manifests::{Rendered, render, repo_root, yaml_files};
use serde_json::{Value, json};

const AGENT: &str = "datadog-cluster-agent";
const NAMESPACE: &str = "datadog";

fn rendered() -> Vec<Rendered> {
    render(&repo_root().join("manifests")).unwrap()
}

fn find<'a>(objects: &'a [Rendered], kind: &str, name: &str) -> &'a Value {
    &objects
        .iter()
        .find(|r| r.kind() == kind && r.name() == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
        .object
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn agent_container(objects: &[Rendered]) -> &Value {
    let deployment = find(objects, "Deployment", AGENT);
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1, "{containers:#?}");
    &containers[0]
}

fn container_port(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

/// The Deployment's env as the agent would see it: literal values, the pod's own fields,
/// and realistic stand-ins for the Secret's values.
fn deployment_env(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_owned();
            let value = if let Some(v) = e["value"].as_str() {
                v.to_owned()
            } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace" {
                NAMESPACE.to_owned()
            } else if e["valueFrom"]["fieldRef"].is_object() {
                "datadog-cluster-agent-7d9f-abcde".to_owned()
            } else if e["valueFrom"]["secretKeyRef"].is_object() {
                "0123456789abcdef0123456789abcdefABCDEF".to_owned()
            } else {
                panic!("env {name}: neither a value, a field nor a Secret key: {e}")
            };
            (name, value)
        })
        .collect()
}

#[test]
fn every_manifest_is_installed_once_and_only_the_apiservice_template_is_left_out() {
    let root = repo_root();
    let installed: BTreeSet<PathBuf> = rendered().into_iter().map(|r| r.file).collect();
    let mut present = BTreeSet::new();
    for dir in ["manifests", "apiservice"] {
        for file in yaml_files(&root.join(dir)).unwrap() {
            if file.file_name().is_some_and(|n| n != "kustomization.yaml") {
                present.insert(file);
            }
        }
    }
    let left_out: Vec<&PathBuf> = present.difference(&installed).collect();
    // The APIService needs the caBundle of the CA certs/generate.sh makes; its output
    // (with the bundle filled in) is what users apply.
    let template = root
        .join("apiservice/apiservice.yaml")
        .canonicalize()
        .unwrap();
    assert_eq!(
        left_out,
        [&template],
        "files kubectl apply -k would not install"
    );
}

#[test]
fn everything_installed_is_labelled_and_namespaced_where_it_must_be() {
    let objects = rendered();
    for r in &objects {
        let namespaced = !matches!(r.kind(), "Namespace" | "ClusterRole" | "ClusterRoleBinding");
        let ns = r.object["metadata"]["namespace"].as_str();
        assert_eq!(
            ns.is_some(),
            namespaced,
            "{} {}: namespace {ns:?}",
            r.kind(),
            r.name()
        );
    }
    // Our objects go to our namespace; only the example and the kube-system reader binding
    // live elsewhere.
    for r in objects
        .iter()
        .filter(|r| r.name().starts_with(AGENT) && r.kind() != "RoleBinding")
    {
        if let Some(ns) = r.object["metadata"]["namespace"].as_str() {
            assert_eq!(ns, NAMESPACE, "{} {}", r.kind(), r.name());
        }
    }
}

#[test]
fn rbac_bound_to_the_agent_names_every_verb_and_resource() {
    let objects = rendered();
    let subject = json!({"kind": "ServiceAccount", "name": AGENT, "namespace": NAMESPACE});
    let mut bound: Vec<(&str, &str)> = Vec::new();
    for r in &objects {
        if matches!(r.kind(), "ClusterRoleBinding" | "RoleBinding")
            && r.object["subjects"]
                .as_array()
                .is_some_and(|s| s.contains(&subject))
        {
            bound.push((
                r.object["roleRef"]["kind"].as_str().unwrap(),
                r.object["roleRef"]["name"].as_str().unwrap(),
            ));
        }
    }
    let ours: BTreeSet<(&str, &str)> = bound
        .iter()
        .copied()
        .filter(|(_, name)| name.starts_with(AGENT))
        .collect();
    assert_eq!(
        ours,
        BTreeSet::from([("Role", AGENT), ("ClusterRole", AGENT)]),
        "bindings: {bound:?}"
    );
    // Besides our two roles, only the two Kubernetes roles every aggregated API server is
    // bound to: they are Kubernetes' own, defined by the cluster.
    let others: BTreeSet<&str> = bound
        .iter()
        .filter(|(_, name)| !name.starts_with(AGENT))
        .map(|(_, name)| *name)
        .collect();
    assert_eq!(
        others,
        BTreeSet::from([
            "extension-apiserver-authentication-reader",
            "system:auth-delegator"
        ])
    );
    let allowed_verbs = ["get", "list", "watch", "create", "update"];
    for (kind, name) in ours {
        let role = find(&objects, kind, name);
        for rule in role["rules"].as_array().unwrap() {
            for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                assert!(
                    !strings(&rule[field]).contains(&"*"),
                    "{kind} {name}: a wildcard in {field}: {rule}"
                );
            }
            assert!(rule.get("nonResourceURLs").is_none(), "{rule}");
            for verb in strings(&rule["verbs"]) {
                assert!(allowed_verbs.contains(&verb), "{kind} {name}: {verb}");
            }
            for resource in strings(&rule["resources"]) {
                assert!(
                    !matches!(resource, "secrets" | "pods/exec" | "serviceaccounts/token"),
                    "{kind} {name}: {resource}"
                );
            }
        }
    }
}

#[test]
fn the_deployment_runs_non_root_read_only_with_limits_and_probes() {
    let objects = rendered();
    let deployment = find(&objects, "Deployment", AGENT);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], AGENT);
    find(&objects, "ServiceAccount", AGENT);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(
        pod["securityContext"]["runAsUser"]
            .as_u64()
            .is_some_and(|uid| uid > 0),
        "a numeric non-root UID: {}",
        pod["securityContext"]
    );
    let container = agent_container(&objects);
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true, "{security}");
    assert_eq!(security["allowPrivilegeEscalation"], false, "{security}");
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    assert!(security["capabilities"].get("add").is_none(), "{security}");
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][bound][resource].is_string(),
                "resources.{bound}.{resource}: {}",
                container["resources"]
            );
        }
    }
    for (probe, path) in [
        ("startupProbe", "/startup"),
        ("livenessProbe", "/live"),
        ("readinessProbe", "/ready"),
    ] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "health", "{probe}");
    }
    // Keys and tokens come from the Secret, never as literals in the Deployment.
    let secret = find(&objects, "Secret", AGENT);
    for e in container["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        if ["DD_API_KEY", "DD_APP_KEY", "DD_CLUSTER_AGENT_AUTH_TOKEN"].contains(&name) {
            let from = &e["valueFrom"]["secretKeyRef"];
            assert_eq!(from["name"], AGENT, "{name}");
            let key = from["key"].as_str().unwrap();
            assert!(secret["stringData"][key].is_string(), "{name}: key {key}");
        }
    }
}

#[test]
fn the_deployment_env_is_settings_the_agent_reads_and_agrees_with_ports_and_mounts() {
    let objects = rendered();
    let container = agent_container(&objects);
    let env = deployment_env(container);
    let known: BTreeSet<String> = SPECS.iter().map(|s| s.env_name()).collect();
    let not_yet: BTreeSet<String> = NOT_YET_USED.iter().map(|k| env_name(k)).collect();
    // Read straight from the environment, not through the settings (as in the Go DCA).
    let env_only = [("DD_POD_NAME", "src/leader/identity.rs")];
    for (name, reader) in env_only {
        let source = std::fs::read_to_string(repo_root().join(reader)).unwrap();
        assert!(
            source.contains(&format!("std::env::var(\"{name}\")")),
            "{reader} no longer reads {name}"
        );
    }
    for name in env.keys() {
        if env_only.iter().any(|(n, _)| n == name) {
            continue;
        }
        assert!(known.contains(name), "{name} is no setting of ours");
        assert!(!not_yet.contains(name), "{name}: nothing reads it yet");
    }
    let settings = Settings::load_from(None, Path::new("/nonexistent"), &|name: &str| {
        env.get(name).cloned()
    })
    .unwrap_or_else(|e| panic!("the Deployment's environment does not load: {e}"));
    assert!(settings.leader_election.enabled);
    assert!(settings.external_metrics.enabled);
    assert_eq!(
        u64::from(settings.health_port),
        container_port(container, "health")
    );
    assert_eq!(
        u64::from(settings.external_metrics.port),
        container_port(container, "metricsapi")
    );
    assert_eq!(
        u64::from(settings.cluster_agent.cmd_port),
        container_port(container, "agentport")
    );
    assert_eq!(
        u64::from(settings.metrics_port),
        container_port(container, "metrics")
    );
    // The Services reach those ports and select the agent's pods.
    let labels = &find(&objects, "Deployment", AGENT)["spec"]["template"]["metadata"]["labels"];
    for (service, target) in [
        (AGENT, json!("agentport")),
        (
            "datadog-cluster-agent-metrics-api",
            json!(settings.external_metrics.port),
        ),
    ] {
        let spec = &find(&objects, "Service", service)["spec"];
        assert_eq!(&spec["selector"], labels, "{service}");
        assert_eq!(spec["ports"][0]["targetPort"], target, "{service}");
    }
    // Where the agent writes or reads files, a volume is mounted: the root is read-only.
    let mounts: BTreeMap<&str, &str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap(),
                m["name"].as_str().unwrap(),
            )
        })
        .collect();
    let volumes = &find(&objects, "Deployment", AGENT)["spec"]["template"]["spec"]["volumes"];
    let volume = |name: &str| -> &Value {
        volumes
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    let token_dir = settings.auth_token_file_path.parent().unwrap();
    let token_volume = mounts
        .get(token_dir.to_str().unwrap())
        .unwrap_or_else(|| panic!("{} is not mounted", token_dir.display()));
    assert!(volume(token_volume)["emptyDir"].is_object());
    let cert_dir = settings.external_metrics.cert_dir.as_deref().unwrap();
    let cert_volume = mounts
        .get(cert_dir.to_str().unwrap())
        .unwrap_or_else(|| panic!("{} is not mounted", cert_dir.display()));
    let secret_name = volume(cert_volume)["secret"]["secretName"]
        .as_str()
        .unwrap();
    let generate = std::fs::read_to_string(repo_root().join("certs/generate.sh")).unwrap();
    assert!(
        generate.contains(&format!("name: {secret_name}")),
        "certs/generate.sh does not write the Secret {secret_name}"
    );
    let cli = std::fs::read_to_string(repo_root().join("src/cli/certs.rs")).unwrap();
    assert!(
        cli.contains(&format!("const SECRET_NAME: &str = \"{secret_name}\";")),
        "`certs generate` does not write the Secret {secret_name}"
    );
}

#[test]
fn the_example_hpa_asks_for_an_external_metric() {
    let objects = rendered();
    let hpa = find(&objects, "HorizontalPodAutoscaler", "nginxext");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    let metric = &hpa["spec"]["metrics"][0];
    assert_eq!(metric["type"], "External");
    assert_eq!(
        metric["external"]["metric"]["name"],
        "nginx.net.request_per_s"
    );
    let target = &hpa["spec"]["scaleTargetRef"]["name"];
    find(&objects, "Deployment", target.as_str().unwrap());
}
