//! Our external metrics server behind the real kube-apiserver 1.20 aggregator and the real
//! HPA controller, registered from `apiservice/*.yaml` with a pinned `caBundle`, running as
//! an agent identity that only `apiservice/rbac.yaml` grants anything:
//!
//! (a) the APIService becomes Available;
//! (b) discovery and a metric read through kube-apiserver (`kubectl get --raw`) are ours;
//! (c) an autoscaling/v2beta2 HPA scales a Deployment from 1 to 4 when the source reports
//!     40 against an AverageValue of 10;
//! (d) the serving certificate files are replaced and the front-proxy CA is rotated
//!     (ConfigMap bundle old + new) without restarting the server: the APIService stays
//!     Available, the HPA keeps scaling on the value, and a certificate of the new CA alone
//!     is accepted;
//! (e) an HPA on a metric whose source fails reports FailedGetExternalMetric and keeps its
//!     replicas.
//!
//! One control plane for all steps: each step builds on the state of the previous ones.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use datadog_cluster_agent::external_metrics::api::MetricError;
use e2e::conformance::{Target, expect_metric_list, golden_api_resource_list};
use e2e::controlplane::{
    CertAuthority, ControlPlane, ExternalHpa, FRONT_PROXY_CLIENT_CN, HpaCondition, MetricTarget,
    eventually, labels,
};
use e2e::metrics_server::{APISERVICE_NAME, MetricsServer, MetricsServerOptions, set_ca_bundle};
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

const GENEROUS: Duration = Duration::from_secs(240);
const NAMESPACE: &str = "default";
const METRIC: &str = "nginx.net.request_per_s";
const FAILING_METRIC: &str = "queue.depth.failing";
/// The identity kube-controller-manager's HPA controller calls with
/// (`--use-service-account-credentials`).
const HPA_USER: &str = "system:serviceaccount:kube-system:horizontal-pod-autoscaler";

fn step(message: &str) {
    eprintln!("\n===== {message}");
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// `GET <path>` through kube-apiserver as the admin, like `kubectl get --raw`.
async fn raw_get(client: &kube::Client, path: &str) -> Result<(u16, String)> {
    let request = http::Request::get(path).body(kube::client::Body::from(Vec::new()))?;
    let response = client.send(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect_bytes().await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Polls until a proxied GET answers 200 (for a few seconds after turning Available the
/// aggregator may still answer 404/503 while its proxy handler catches up).
async fn proxied_json(client: &kube::Client, path: &str) -> Result<Value> {
    eventually(
        &format!("GET {path} through kube-apiserver"),
        GENEROUS,
        || async {
            let (status, body) = raw_get(client, path).await?;
            if status == 200 {
                Ok(Some(serde_json::from_str::<Value>(&body)?))
            } else {
                Err(anyhow!("HTTP {status}: {body}"))
            }
        },
    )
    .await
}

/// Like [`proxied_json`], once the aggregator has opened a new connection to the server
/// (more handshakes than `handshakes_before`), so the answer proves that connection works.
async fn proxied_over_new_connection(
    server: &MetricsServer,
    client: &kube::Client,
    path: &str,
    handshakes_before: u64,
) -> Result<Value> {
    eventually(
        &format!("GET {path} over a new aggregator connection"),
        GENEROUS,
        || async {
            let (status, body) = raw_get(client, path).await?;
            let redialled = server.aggregator_handshakes() > handshakes_before;
            if status == 200 && redialled {
                Ok(Some(serde_json::from_str::<Value>(&body)?))
            } else {
                Err(anyhow!(
                    "HTTP {status} {body}; aggregator dialled again: {redialled}"
                ))
            }
        },
    )
    .await
}

async fn apiservice_available(cp: &ControlPlane) -> Result<Option<String>> {
    let api: Api<APIService> = Api::all(cp.client());
    let svc = api.get(APISERVICE_NAME).await?;
    let condition = svc
        .status
        .and_then(|s| s.conditions)
        .and_then(|cs| cs.into_iter().find(|c| c.type_ == "Available"))
        .ok_or_else(|| anyhow!("no Available condition"))?;
    Ok((condition.status != "True").then(|| {
        format!(
            "Available={} {} {}",
            condition.status,
            condition.reason.unwrap_or_default(),
            condition.message.unwrap_or_default()
        )
    }))
}

fn condition_is(c: Option<&HpaCondition>, status: &str) -> bool {
    c.is_some_and(|c| c.status == status)
}

/// Waits until the Deployment was scaled to `replicas` and the HPA says it can scale and is
/// scaling on a value it read.
async fn wait_scaled(cp: &ControlPlane, hpa: &str, replicas: i32) -> Result<()> {
    eventually(
        &format!("HPA {hpa} scales its Deployment to {replicas}"),
        GENEROUS,
        || async {
            let deployment = cp.deployment_replicas(NAMESPACE, hpa).await?;
            let status = cp.hpa_status(NAMESPACE, hpa).await?;
            let ok = deployment.spec == replicas
                && status.desired_replicas == i64::from(replicas)
                && condition_is(status.condition("AbleToScale"), "True")
                && condition_is(status.condition("ScalingActive"), "True");
            if ok {
                Ok(Some(()))
            } else {
                Err(anyhow!(
                    "Deployment spec.replicas {}, HPA status {}",
                    deployment.spec,
                    status.raw
                ))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_metrics_through_the_real_aggregator_and_hpa_controller() {
    let cp = ControlPlane::start().await.unwrap();
    let admin = cp.client();
    let server = MetricsServer::start(&cp, MetricsServerOptions::default())
        .await
        .unwrap();
    let source = server.source().clone();
    eprintln!(
        "metrics server on {} as {}",
        server.addr(),
        server.agent_user()
    );

    // ------------------------------------------------------------------------------------
    step("(a) the APIService from apiservice/apiservice.yaml becomes Available");
    server.register(&cp).await.unwrap();
    let registered: APIService = Api::<APIService>::all(admin.clone())
        .get(APISERVICE_NAME)
        .await
        .unwrap();
    let spec = registered.spec.clone().unwrap();
    assert_eq!(spec.insecure_skip_tls_verify, None);
    assert_eq!(
        spec.ca_bundle.map(|b| b.0),
        Some(server.serving_ca_pem().as_bytes().to_vec())
    );
    cp.wait_apiservice_available(APISERVICE_NAME, GENEROUS)
        .await
        .unwrap();

    // ------------------------------------------------------------------------------------
    step("(b) discovery and a metric through kube-apiserver are our JSON");
    let web = labels(&[("app", "web")]);
    source.set(METRIC, web.clone(), 40.0, now());
    source.set(METRIC, labels(&[("app", "api")]), 7.0, now());
    let discovery = proxied_json(&admin, "/apis/external.metrics.k8s.io/v1beta1")
        .await
        .unwrap();
    assert_eq!(discovery, golden_api_resource_list());
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}/{METRIC}?labelSelector=app%3Dweb"
    );
    let list = proxied_json(&admin, &path).await.unwrap();
    assert_eq!(list["kind"], "ExternalMetricValueList");
    assert_eq!(list["apiVersion"], "external.metrics.k8s.io/v1beta1");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["metricName"], METRIC);
    assert_eq!(items[0]["metricLabels"], json!({"app": "web"}));
    assert_eq!(items[0]["value"], "40");
    // The aggregator publishes the group-version with our resource.
    let (status, body) = raw_get(&admin, "/apis/external.metrics.k8s.io")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("external.metrics.k8s.io/v1beta1"), "{body}");

    // ------------------------------------------------------------------------------------
    step("(c) a v2beta2 HPA (External, matchLabels app=web, AverageValue 10) scales 1 → 4");
    let reviews_before = server.auth().stats().subject_access_reviews;
    cp.create_deployment(NAMESPACE, "web", 1, &web)
        .await
        .unwrap();
    let hpa = ExternalHpa::new("web", METRIC, MetricTarget::AverageValue("10".into()))
        .label("app", "web");
    cp.create_external_hpa(NAMESPACE, &hpa).await.unwrap();
    wait_scaled(&cp, "web", 4).await.unwrap();
    let status = cp.hpa_status(NAMESPACE, "web").await.unwrap();
    let current = &status.current_metrics[0]["external"];
    assert_eq!(current["metric"]["name"], METRIC, "{}", status.raw);
    assert_eq!(
        current["metric"]["selector"]["matchLabels"],
        json!({"app": "web"})
    );
    // The HPA controller is neither admin nor system:masters: its requests were reviewed
    // with the permissions our manifests give the agent.
    assert!(
        server.auth().stats().subject_access_reviews > reviews_before,
        "the HPA's requests must go through SubjectAccessReviews"
    );

    // ------------------------------------------------------------------------------------
    step("(d) serving certificate replaced and front-proxy CA rotated, no restart");
    let watching = AtomicBool::new(true);
    let sampler = async {
        // Whatever the HPA says while certificates change: it must never stop scaling.
        let mut bad = Vec::new();
        let mut samples = 0;
        while watching.load(Ordering::SeqCst) {
            if let Ok(status) = cp.hpa_status(NAMESPACE, "web").await {
                samples += 1;
                for c in &status.conditions {
                    if (c.type_ == "AbleToScale" || c.type_ == "ScalingActive")
                        && c.status != "True"
                    {
                        bad.push(format!("HPA {c:?}"));
                    }
                }
            }
            if let Ok(Some(problem)) = apiservice_available(&cp).await {
                bad.push(format!("APIService {problem}"));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        (samples, bad)
    };
    let rotation = async {
        let result = rotate(&cp, &server).await;
        watching.store(false, Ordering::SeqCst);
        result
    };
    let (rotated, (samples, bad)) = tokio::join!(rotation, sampler);
    rotated.unwrap();
    eprintln!("HPA sampled {samples} times during the rotation");
    assert!(
        bad.is_empty(),
        "the HPA stopped scaling during the rotation: {bad:?}"
    );
    assert_eq!(apiservice_available(&cp).await.unwrap(), None);

    // ------------------------------------------------------------------------------------
    step("(e) an HPA on a metric whose source fails: FailedGetExternalMetric, replicas kept");
    source.fail_with(
        FAILING_METRIC,
        MetricError::Internal("backend unavailable for e2e".into()),
    );
    let worker = labels(&[("app", "worker")]);
    cp.create_deployment(NAMESPACE, "worker", 2, &worker)
        .await
        .unwrap();
    let hpa = ExternalHpa::new(
        "worker",
        FAILING_METRIC,
        MetricTarget::AverageValue("5".into()),
    )
    .label("queue", "orders");
    cp.create_external_hpa(NAMESPACE, &hpa).await.unwrap();
    let failed = eventually(
        "HPA worker reports FailedGetExternalMetric",
        GENEROUS,
        || async {
            let status = cp.hpa_status(NAMESPACE, "worker").await?;
            Ok(status
                .condition("ScalingActive")
                .filter(|c| c.status == "False" && c.reason == "FailedGetExternalMetric")
                .cloned())
        },
    )
    .await
    .unwrap();
    assert!(
        failed.message.contains("backend unavailable for e2e"),
        "the HPA shows our Status message: {failed:?}"
    );
    let events: Api<Event> = Api::namespaced(admin.clone(), NAMESPACE);
    let event = eventually("a FailedGetExternalMetric event", GENEROUS, || async {
        let list = events
            .list(&ListParams::default().fields("involvedObject.name=worker"))
            .await?;
        Ok(list
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedGetExternalMetric")))
    })
    .await
    .unwrap();
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        cp.deployment_replicas(NAMESPACE, "worker")
            .await
            .unwrap()
            .spec,
        2,
        "a failing metric must not change the replica count"
    );
    // The other HPA is unaffected by the failing metric.
    wait_scaled(&cp, "web", 6).await.unwrap();
}

/// Step (d): both rotations, then proof that they were applied and that the HPA tracks a
/// new value.
async fn rotate(cp: &ControlPlane, server: &MetricsServer) -> Result<()> {
    let admin = cp.client();

    // Serving certificate: new key, same CA, files replaced under the running server.
    let old = server.presented_certificate().await?;
    let new = server.rotate_serving_cert().await?;
    anyhow::ensure!(old != new, "the served certificate changed");
    eprintln!("serving certificate replaced; new handshakes get the new one");
    // Same CA, new bytes: the aggregator builds a new proxy transport and dials again, so
    // the metric below travels over a connection that verified the new certificate.
    let handshakes = server.aggregator_handshakes();
    set_ca_bundle(&admin, &format!("{}\n", server.serving_ca_pem())).await?;
    let list = proxied_over_new_connection(
        server,
        &admin,
        &format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}/{METRIC}?labelSelector=app%3Dweb"),
        handshakes,
    )
    .await
    .context("reading the metric through the aggregator after the serving rotation")?;
    anyhow::ensure!(list["items"][0]["value"] == "40", "{list}");

    // Front-proxy CA: the bundle becomes old + new, as a real rotation's first step.
    let new_ca = CertAuthority::new("dca-e2e-rotated-front-proxy-ca")?;
    let new_client = new_ca.issue_client(FRONT_PROXY_CLIENT_CN, &[])?;
    let endpoint = server.endpoint();
    let hpa_identity = Target::as_user(
        HPA_USER,
        &[
            "system:serviceaccounts",
            "system:serviceaccounts:kube-system",
        ],
    );
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}/{METRIC}?labelSelector=app%3Dweb"
    );
    anyhow::ensure!(
        endpoint
            .get(Some(&new_client), &path, &hpa_identity)
            .await
            .is_err(),
        "a certificate of the new CA must be refused before the rotation"
    );
    server.add_front_proxy_ca(cp, new_ca.cert_pem()).await?;
    let answer = endpoint
        .get(Some(&new_client), &path, &hpa_identity)
        .await
        .context("a request signed by the new CA only")?;
    let items = expect_metric_list(&answer)?;
    anyhow::ensure!(
        items.len() == 1 && items[0]["value"] == "40",
        "new-CA request: {items:?}"
    );
    eprintln!("a front-proxy certificate of the new CA alone is accepted");
    // The old CA is still in the bundle: the aggregator (still on the old client
    // certificate) keeps being served, over new connections too.
    let handshakes = server.aggregator_handshakes();
    set_ca_bundle(&admin, &format!("{}\n\n", server.serving_ca_pem())).await?;
    let discovery = proxied_over_new_connection(
        server,
        &admin,
        "/apis/external.metrics.k8s.io/v1beta1",
        handshakes,
    )
    .await?;
    anyhow::ensure!(discovery == golden_api_resource_list(), "{discovery}");

    // The HPA tracks a new value after both rotations.
    server.source().set(
        METRIC,
        BTreeMap::from([("app".to_owned(), "web".to_owned())]),
        60.0,
        now(),
    );
    wait_scaled(cp, "web", 6).await?;
    if let Some(problem) = apiservice_available(cp).await? {
        anyhow::bail!("APIService after the rotation: {problem}");
    }
    Ok(())
}
