//! The ConfigMap metric store against a real kube-apiserver 1.20.2 (autoscaling/v2beta2 only),
//! with a fake Datadog resolver and two in-process replicas of the autoscaling subsystem, a
//! leader and a follower, both as the agent identity the harness sets up RBAC for:
//!
//! - an HPA on `nginx.net.request_per_s{app:web}` gets its entry in `datadog-custom-metrics`
//!   under the Go key, in the Go JSON form;
//! - two HPAs sharing a query cost one query;
//! - the follower serves the same values from its own watch, and never asks Datadog;
//! - a deleted HPA's entry leaves the ConfigMap;
//! - an HPA with an invalid metric name gets one Warning Event;
//! - when leadership moves, the new leader takes over the writes.
//!
//! Assertions are about eventual state, with generous deadlines (shared, noisy machines).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datadog_cluster_agent::apimachinery::selector::Selector;
use datadog_cluster_agent::autoscaling::store::{INVALID_REASONS_ANNOTATION, StoreSnapshot};
use datadog_cluster_agent::autoscaling::store_format::{
    DEFAULT_CONFIGMAP_NAME, LAST_UPDATED_ANNOTATION, ObjectReference, StoredEntry, decode_entry,
    encode_entry,
};
use datadog_cluster_agent::autoscaling::{self, AutoscalingHandle};
use datadog_cluster_agent::config::Aggregator;
use datadog_cluster_agent::config::{ExternalMetricsSettings, Secret};
use datadog_cluster_agent::datadog::{QueryOutcome, ResolveError, Resolver};
use datadog_cluster_agent::external_metrics::api::{MetricError, MetricSource};
use datadog_cluster_agent::external_metrics::types::MetricValue;
use datadog_cluster_agent::k8s::{self, HpaVersion};
use e2e::controlplane::{ControlPlane, ExternalHpa, MetricTarget, eventually};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Event};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const GENEROUS: Duration = Duration::from_secs(120);
const APPS: &str = "apps";
const WEB_METRIC: &str = "nginx.net.request_per_s";
const WEB_QUERY: &str = "avg:nginx.net.request_per_s{app:web}.rollup(30)";
const QUEUE_QUERY: &str = "avg:Queue.Depth{queue:orders}.rollup(30)";

/// Answers every query with a fixed value per query (10 unless configured), 30 s old, and
/// records every call.
#[derive(Default)]
struct FakeResolver {
    values: BTreeMap<String, f64>,
    calls: Mutex<Vec<Vec<String>>>,
}

impl FakeResolver {
    fn calls(&self) -> Vec<Vec<String>> {
        self.calls.lock().unwrap().clone()
    }
}

impl Resolver for FakeResolver {
    fn resolve<'a>(
        &'a self,
        queries: &'a [String],
        now: i64,
    ) -> BoxFuture<'a, Result<BTreeMap<String, QueryOutcome>, ResolveError>> {
        self.calls.lock().unwrap().push(queries.to_vec());
        let out = queries
            .iter()
            .map(|q| {
                let value = self.values.get(q).copied().unwrap_or(10.0);
                (
                    q.clone(),
                    QueryOutcome::Valid {
                        value,
                        timestamp: now - 30,
                    },
                )
            })
            .collect();
        Box::pin(async move { Ok(out) })
    }
}

fn settings() -> ExternalMetricsSettings {
    let s = Duration::from_secs;
    ExternalMetricsSettings {
        enabled: true,
        port: 8443,
        cert_dir: None,
        endpoint: None,
        api_key: Secret::new("unused"),
        app_key: Secret::new("unused"),
        refresh_period: s(5),
        max_age: s(120),
        bucket_size: s(300),
        rollup: s(30),
        chunk_size: 35,
        query_validity_period: s(30),
        max_time_window: s(86_400),
        local_copy_refresh_rate: s(30),
        aggregator: Aggregator::Avg,
        hpa_configmap_name: DEFAULT_CONFIGMAP_NAME.to_owned(),
        // Short, so that collection is observable within the test's deadlines.
        hpa_watcher_gc_period: s(3),
    }
}

struct Replica {
    handle: AutoscalingHandle,
    leader: watch::Sender<bool>,
    shutdown: CancellationToken,
}

async fn replica(cp: &ControlPlane, leader: bool, resolver: Arc<FakeResolver>) -> Replica {
    let client = cp.agent_client().await.unwrap();
    let capabilities = k8s::discover(&client).await.unwrap();
    // 1.20 has no autoscaling/v2.
    assert_eq!(capabilities.hpa, Some(HpaVersion::V2beta2));
    let (leader_tx, leader_rx) = watch::channel(leader);
    let shutdown = CancellationToken::new();
    let handle = autoscaling::spawn(
        client,
        &settings(),
        capabilities,
        cp.agent_namespace(),
        resolver,
        leader_rx,
        shutdown.clone(),
    )
    .unwrap();
    Replica {
        handle,
        leader: leader_tx,
        shutdown,
    }
}

async fn store_data(cp: &ControlPlane) -> anyhow::Result<Option<ConfigMap>> {
    let api: Api<ConfigMap> = Api::namespaced(cp.client(), cp.agent_namespace());
    Ok(api.get_opt(DEFAULT_CONFIGMAP_NAME).await?)
}

/// Waits until the ConfigMap holds a valid entry under `key`; returns it and its raw JSON.
async fn wait_valid_entry(
    cp: &ControlPlane,
    key: &str,
) -> (
    datadog_cluster_agent::autoscaling::store_format::ExternalMetricValue,
    String,
) {
    eventually(&format!("valid entry {key}"), GENEROUS, || async move {
        let Some(cm) = store_data(cp).await? else {
            return Ok(None);
        };
        let Some(json) = cm.data.unwrap_or_default().get(key).cloned() else {
            return Ok(None);
        };
        match decode_entry(&json)? {
            StoredEntry::Current(e) if e.valid => Ok(Some((e, json))),
            _ => Ok(None),
        }
    })
    .await
    .unwrap()
}

async fn get(
    source: &dyn MetricSource,
    metric: &str,
    selector: &str,
) -> Result<Vec<MetricValue>, MetricError> {
    let values = source
        .get(APPS, metric, &Selector::parse(selector).unwrap())
        .wait()
        .await?;
    Ok(values.iter().map(|v| MetricValue::clone(v)).collect())
}

fn key(hpa: &str, metric: &str) -> String {
    format!("external_metric-horizontal-{APPS}-{hpa}-{metric}")
}

#[tokio::test]
async fn configmap_store_leader_and_follower() {
    let cp = ControlPlane::start().await.unwrap();
    cp.create_namespace(APPS).await.unwrap();

    let leader_resolver = Arc::new(FakeResolver {
        values: BTreeMap::from([(WEB_QUERY.to_owned(), 12.5), (QUEUE_QUERY.to_owned(), 3.0)]),
        ..FakeResolver::default()
    });
    let follower_resolver = Arc::new(FakeResolver::default());
    let leader = replica(&cp, true, leader_resolver.clone()).await;
    let follower = replica(&cp, false, follower_resolver.clone()).await;

    // 1. An HPA on nginx.net.request_per_s{app:web}: its entry appears under the Go key, as
    //    Go's json.Marshal writes it, with the HPA's UID and the resolved value.
    let web = cp
        .create_external_hpa(
            APPS,
            &ExternalHpa::new("web", WEB_METRIC, MetricTarget::AverageValue("10".into()))
                .label("app", "web"),
        )
        .await
        .unwrap();
    let (entry, json) = wait_valid_entry(&cp, &key("web", WEB_METRIC)).await;
    assert_eq!(entry.metric_name, WEB_METRIC);
    assert_eq!(
        entry.labels,
        BTreeMap::from([("app".to_owned(), "web".to_owned())])
    );
    assert_eq!(entry.value, 12.5);
    assert_eq!(
        entry.reference,
        ObjectReference::horizontal(APPS, "web", web.uid().unwrap())
    );
    assert_eq!(encode_entry(&entry).unwrap(), json);
    assert!(
        json.starts_with(r#"{"metricName":"nginx.net.request_per_s","labels":{"app":"web"},"ts":"#)
    );
    let cm = store_data(&cp).await.unwrap().unwrap();
    let stamp = &cm.annotations()[LAST_UPDATED_ANNOTATION];
    assert!(stamp.parse::<jiff::Timestamp>().is_ok(), "{stamp}");
    assert!(!cm.annotations().contains_key(INVALID_REASONS_ANNOTATION));

    // 2. A second HPA on the same query, and one on another metric (upper-case letters in
    //    its name): the resolver is asked each distinct query once per call.
    cp.create_external_hpa(
        APPS,
        &ExternalHpa::new("web2", WEB_METRIC, MetricTarget::AverageValue("10".into()))
            .label("app", "web"),
    )
    .await
    .unwrap();
    cp.create_external_hpa(
        APPS,
        &ExternalHpa::new("queue", "Queue.Depth", MetricTarget::Value("5".into()))
            .label("queue", "orders"),
    )
    .await
    .unwrap();
    let (web2, _) = wait_valid_entry(&cp, &key("web2", WEB_METRIC)).await;
    assert_eq!(web2.value, 12.5);
    let (queue, _) = wait_valid_entry(&cp, &key("queue", "Queue.Depth")).await;
    assert_eq!(queue.value, 3.0);
    // Let at least one full refresh happen with all three HPAs known.
    let calls_before = leader_resolver.calls().len();
    eventually("a full refresh with both queries", GENEROUS, || {
        let r = leader_resolver.clone();
        async move {
            Ok(r.calls()
                .iter()
                .skip(calls_before)
                .any(|c| c.len() == 2)
                .then_some(()))
        }
    })
    .await
    .unwrap();
    for call in leader_resolver.calls() {
        let mut unique = call.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            call.len(),
            "duplicate query in one call: {call:?}"
        );
        assert!(
            call.iter().all(|q| q == WEB_QUERY || q == QUEUE_QUERY),
            "unexpected query in {call:?}"
        );
    }
    let full = leader_resolver
        .calls()
        .into_iter()
        .rfind(|c| c.len() == 2)
        .unwrap();
    assert_eq!(
        full.iter().filter(|q| *q == WEB_QUERY).count(),
        1,
        "{full:?}"
    );

    // 3. The follower serves the same values from its own watch, asked with the lower-cased
    //    name as the HPA controller does, and never queries Datadog.
    let leader_web = get(&*leader.handle.source, WEB_METRIC, "app=web")
        .await
        .unwrap();
    let follower_web = eventually("follower serves the web metric", GENEROUS, || {
        let source = follower.handle.source.clone();
        async move { Ok(get(&*source, WEB_METRIC, "app=web").await.ok()) }
    })
    .await
    .unwrap();
    assert_eq!(
        follower_web.len(),
        1,
        "HPAs sharing a query are served once"
    );
    assert_eq!(follower_web[0].value, 12.5);
    assert_eq!(follower_web[0].metric_labels, leader_web[0].metric_labels);
    let follower_queue = eventually("follower serves Queue.Depth", GENEROUS, || {
        let source = follower.handle.source.clone();
        async move { Ok(get(&*source, "queue.depth", "queue=orders").await.ok()) }
    })
    .await
    .unwrap();
    assert_eq!(follower_queue[0].metric_name, "Queue.Depth");
    assert_eq!(follower_queue[0].value, 3.0);
    assert!(matches!(
        get(&*follower.handle.source, "no.such.metric", "").await,
        Err(MetricError::NotFound { .. })
    ));
    let copy: Arc<StoreSnapshot> = follower.handle.source.store();
    assert!(copy.synced && copy.present);
    assert!(follower.handle.source.readiness().ready);
    assert!(follower_resolver.calls().is_empty());

    // 4. Deleting an HPA removes its entry (the other HPA sharing the query keeps its own).
    cp.hpa_api(APPS)
        .delete("web2", &DeleteParams::default())
        .await
        .unwrap();
    let cpr = &cp;
    eventually("web2 entry collected", GENEROUS, || async move {
        let cm = store_data(cpr).await?.unwrap_or_default();
        let data = cm.data.unwrap_or_default();
        Ok((!data.contains_key(&key("web2", WEB_METRIC))).then_some(data))
    })
    .await
    .unwrap();
    let data = store_data(&cp).await.unwrap().unwrap().data.unwrap();
    assert!(data.contains_key(&key("web", WEB_METRIC)));

    // 5. An invalid metric name: one Warning Event on the HPA (both replicas notice it; the
    //    Event name is shared, so it is published once), and an Invalid answer saying why.
    let broken = cp
        .create_external_hpa(
            APPS,
            &ExternalHpa::new("broken", "bad-name", MetricTarget::AverageValue("1".into())),
        )
        .await
        .unwrap();
    let events: Api<Event> = Api::namespaced(cp.client(), APPS);
    let found = eventually("InvalidExternalMetric event on broken", GENEROUS, || {
        let events = events.clone();
        async move {
            let list = events
                .list(&ListParams::default().fields("involvedObject.name=broken"))
                .await?;
            let ours: Vec<Event> = list
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("InvalidExternalMetric"))
                .collect();
            Ok((!ours.is_empty()).then_some(ours))
        }
    })
    .await
    .unwrap();
    // Give the second replica time to try as well, then count again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let list = events
        .list(&ListParams::default().fields("involvedObject.name=broken"))
        .await
        .unwrap();
    let count = list
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("InvalidExternalMetric"))
        .count();
    assert_eq!(count, 1, "{:#?}", list.items);
    let event = &found[0];
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        event.source.as_ref().and_then(|s| s.component.as_deref()),
        Some("datadog-cluster-agent")
    );
    assert_eq!(event.involved_object.uid, broken.uid());
    assert_eq!(
        event.involved_object.api_version.as_deref(),
        Some("autoscaling/v2beta2")
    );
    let message = event.message.clone().unwrap_or_default();
    assert!(message.contains("bad-name"), "{message}");
    match get(&*follower.handle.source, "bad-name", "").await {
        Err(MetricError::Invalid { reason, .. }) => {
            assert!(reason.contains("bad-name"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let data = store_data(&cp).await.unwrap().unwrap().data.unwrap();
    assert!(!data.keys().any(|k| k.contains("broken")), "{data:?}");

    // 6. Leadership moves: the old leader stops querying, the new one writes new HPAs.
    leader.leader.send_replace(false);
    follower.leader.send_replace(true);
    let old_leader_calls = leader_resolver.calls().len();
    cp.create_external_hpa(
        APPS,
        &ExternalHpa::new(
            "late",
            "late.metric",
            MetricTarget::AverageValue("1".into()),
        ),
    )
    .await
    .unwrap();
    let (late, _) = wait_valid_entry(&cp, &key("late", "late.metric")).await;
    assert_eq!(late.value, 10.0);
    assert!(
        follower_resolver
            .calls()
            .iter()
            .any(|c| c.contains(&"avg:late.metric{*}.rollup(30)".to_owned()))
    );
    // The old leader may have finished a cycle it had started; never more than that.
    assert!(leader_resolver.calls().len() <= old_leader_calls + 1);
    let data = store_data(&cp).await.unwrap().unwrap().data.unwrap();
    assert!(
        data.contains_key(&key("web", WEB_METRIC)),
        "previous entries kept"
    );

    // Clean shutdown: every task ends, none failed.
    for r in [leader, follower] {
        r.shutdown.cancel();
        tokio::time::timeout(GENEROUS, r.handle.join())
            .await
            .expect("tasks end after shutdown")
            .expect("no task failed");
    }
}
