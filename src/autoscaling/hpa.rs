//! HPA watcher: which external metrics the cluster's HorizontalPodAutoscalers want
//! (dca-contract §3.2 "HPA/WPA watch").
//!
//! HPAs are watched cluster-wide on `autoscaling/v2` when the server offers it, else on
//! `autoscaling/v2beta2` (Kubernetes 1.20). k8s-openapi only has v2 types, and both versions
//! share the shape of what we read (`spec.metrics[].external.metric.{name,selector}`), so the
//! objects are read as [`DynamicObject`]s and the few fields we need are decoded leniently
//! here, one metric at a time: a malformed metric never hides its neighbours.
//!
//! Differences from the Go DCA, on purpose:
//! - a metric the DCA cannot serve (invalid name, a `matchExpressions` that has no Datadog
//!   tag form, a ConfigMap key over 253 characters, the same metric twice with different
//!   selectors) is reported once per HPA generation as a Warning Event on the HPA and in the
//!   logs, instead of only a log line;
//! - `matchExpressions` are not ignored: `key In [value]` (a single value) is the same as
//!   `matchLabels: {key: value}` and becomes a tag; any other expression makes the metric
//!   unservable, because querying without it would scale on data the HPA did not ask for.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event as CoreEvent, EventSource, ObjectReference as CoreRef};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::Deserialize;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::autoscaling::AutoscalingError;
use crate::autoscaling::store_format::{ObjectReference, entry_key, is_valid_configmap_key};
use crate::autoscaling::telemetry::Telemetry;
use crate::config::Aggregator;
use crate::datadog::query::{build_query, validate_metric_name};
use crate::k8s::HpaVersion;

/// `source.component` and `reportingComponent` of the Events we emit.
pub(crate) const EVENT_COMPONENT: &str = "datadog-cluster-agent";

/// One external metric an HPA wants, ready to become a store entry and a Datadog query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// As written in the HPA (Datadog is queried with this exact spelling).
    pub metric_name: String,
    /// `matchLabels`, plus single-valued `In` expressions.
    pub labels: BTreeMap<String, String>,
    pub reference: ObjectReference,
}

impl Wanted {
    /// The ConfigMap data key of this metric's entry.
    pub fn key(&self) -> String {
        entry_key(&self.reference, &self.metric_name)
    }

    /// The Datadog query for this metric.
    pub fn query(&self, aggregator: Aggregator, rollup_secs: u32) -> String {
        build_query(aggregator, &self.metric_name, &self.labels, rollup_secs)
    }
}

/// Why an HPA external metric cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// The name does not match `^[a-zA-Z][a-zA-Z0-9_.]{0,199}$`, or the metric is malformed.
    InvalidMetricName,
    /// A `matchExpressions` requirement has no Datadog tag form, or contradicts `matchLabels`.
    UnsupportedSelector,
    /// `external_metric-horizontal-<ns>-<name>-<metric>` is not a valid ConfigMap key.
    KeyTooLong,
    /// The same metric name appears twice in one HPA with different selectors: the store keys
    /// entries by HPA and metric name, so only the first can be stored.
    DuplicateMetric,
}

impl ProblemKind {
    /// The Event `reason`.
    pub fn reason(self) -> &'static str {
        match self {
            ProblemKind::InvalidMetricName => "InvalidExternalMetric",
            ProblemKind::UnsupportedSelector => "UnsupportedExternalMetricSelector",
            ProblemKind::KeyTooLong => "ExternalMetricKeyTooLong",
            ProblemKind::DuplicateMetric => "DuplicateExternalMetric",
        }
    }
}

/// An external metric of an HPA that will not be queried, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// As written in the HPA (possibly empty when the metric has no name).
    pub metric_name: String,
    pub kind: ProblemKind,
    /// A sentence for the Event, the logs and the HPA's status (through the metrics API).
    pub message: String,
    pub reference: ObjectReference,
}

/// The parts of an HPA spec we read. Every field is optional so that a server that omits
/// one (or writes `null`) never makes the whole HPA unreadable.
#[derive(Debug, Default, Deserialize)]
struct MetricSpec {
    external: Option<ExternalSource>,
}

#[derive(Debug, Default, Deserialize)]
struct ExternalSource {
    metric: Option<MetricIdentifier>,
}

#[derive(Debug, Default, Deserialize)]
struct MetricIdentifier {
    name: Option<String>,
    selector: Option<LabelSelector>,
}

#[derive(Debug, Default, Deserialize)]
struct LabelSelector {
    #[serde(rename = "matchLabels")]
    match_labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "matchExpressions")]
    match_expressions: Option<Vec<LabelSelectorRequirement>>,
}

#[derive(Debug, Default, Deserialize)]
struct LabelSelectorRequirement {
    key: Option<String>,
    operator: Option<String>,
    values: Option<Vec<String>>,
}

/// The HPA's namespace, name and UID as a store reference.
pub(crate) fn reference_of(hpa: &DynamicObject) -> ObjectReference {
    ObjectReference::horizontal(
        hpa.metadata.namespace.clone().unwrap_or_default(),
        hpa.metadata.name.clone().unwrap_or_default(),
        hpa.metadata.uid.clone().unwrap_or_default(),
    )
}

/// The external metrics of an HPA: those we can serve, and those we cannot (with why).
/// Pure; the order follows `spec.metrics`.
pub(crate) fn external_metrics_of(hpa: &DynamicObject) -> (Vec<Wanted>, Vec<Problem>) {
    let reference = reference_of(hpa);
    let mut wanted: Vec<Wanted> = Vec::new();
    let mut problems = Vec::new();
    let metrics = hpa
        .data
        .get("spec")
        .and_then(|s| s.get("metrics"))
        .and_then(|m| m.as_array());
    let Some(metrics) = metrics else {
        return (wanted, problems);
    };
    for raw in metrics {
        let is_external = raw.get("type").and_then(|t| t.as_str()) == Some("External");
        if !is_external {
            continue;
        }
        let problem = |metric_name: &str, kind, message: String| Problem {
            metric_name: metric_name.to_owned(),
            kind,
            message,
            reference: reference.clone(),
        };
        let spec: MetricSpec = match MetricSpec::deserialize(raw) {
            Ok(s) => s,
            Err(e) => {
                problems.push(problem(
                    "",
                    ProblemKind::InvalidMetricName,
                    format!("an External metric could not be read: {e}"),
                ));
                continue;
            }
        };
        let metric = spec.external.and_then(|e| e.metric).unwrap_or_default();
        let name = metric.name.unwrap_or_default();
        if let Err(e) = validate_metric_name(&name) {
            problems.push(problem(
                &name,
                ProblemKind::InvalidMetricName,
                format!("External {e}; it must match ^[a-zA-Z][a-zA-Z0-9_.]{{0,199}}$, so it is not queried"),
            ));
            continue;
        }
        let labels = match selector_labels(metric.selector.unwrap_or_default()) {
            Ok(l) => l,
            Err(reason) => {
                problems.push(problem(
                    &name,
                    ProblemKind::UnsupportedSelector,
                    format!("External metric {name:?}: {reason}, so it is not queried"),
                ));
                continue;
            }
        };
        let w = Wanted {
            metric_name: name.clone(),
            labels,
            reference: reference.clone(),
        };
        let key = w.key();
        if !is_valid_configmap_key(&key) {
            problems.push(problem(
                &name,
                ProblemKind::KeyTooLong,
                format!(
                    "External metric {name:?}: its store key {key:?} is {} characters long, over the 253 a ConfigMap key may have; shorten the HPA name or the metric name",
                    key.len()
                ),
            ));
            continue;
        }
        match wanted.iter().find(|o| o.metric_name == w.metric_name) {
            Some(other) if other.labels == w.labels => {}
            Some(_) => problems.push(problem(
                &name,
                ProblemKind::DuplicateMetric,
                format!(
                    "External metric {name:?} appears more than once with different selectors; only the first one is served"
                ),
            )),
            None => wanted.push(w),
        }
    }
    (wanted, problems)
}

/// `matchLabels` plus the `matchExpressions` that are equalities, or why not.
fn selector_labels(selector: LabelSelector) -> Result<BTreeMap<String, String>, String> {
    let mut labels = selector.match_labels.unwrap_or_default();
    for expr in selector.match_expressions.unwrap_or_default() {
        let key = expr.key.unwrap_or_default();
        let operator = expr.operator.unwrap_or_default();
        let values = expr.values.unwrap_or_default();
        match (operator.as_str(), values.as_slice()) {
            ("In", [value]) => match labels.get(&key) {
                Some(existing) if existing != value => {
                    return Err(format!(
                        "matchExpressions {key} In [{value}] contradicts matchLabels {key}: {existing}, the selector can never match"
                    ));
                }
                _ => {
                    labels.insert(key, value.clone());
                }
            },
            _ => {
                return Err(format!(
                    "matchExpressions {key} {operator} [{}] has no Datadog tag form (only `In` with a single value does)",
                    values.join(", ")
                ));
            }
        }
    }
    Ok(labels)
}

/// What the HPA watcher tells the catalog's readers.
#[derive(Debug, Default)]
pub struct CatalogSignal {
    /// True after the first full list.
    ready: AtomicBool,
    /// Woken when what the HPAs want may have changed (the refresher waits on it).
    changed: Notify,
    /// Bumped with every such change, after the store holds it: a snapshot built at a
    /// revision stays valid until the revision moves.
    revision: AtomicU64,
}

impl CatalogSignal {
    /// Records a change the store already holds, then wakes the refresher.
    pub fn mark_changed(&self) {
        self.revision.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
    }

    /// Marks the first list complete; `true` if it was not before.
    pub fn mark_ready(&self) -> bool {
        !self.ready.swap(true, Ordering::AcqRel)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Every HPA the watcher knows, for the refresher and the metric source.
#[derive(Clone)]
pub struct HpaCatalog {
    store: Store<DynamicObject>,
    signal: Arc<CatalogSignal>,
    /// The last snapshot and the revision it was built at. Without it, every request for
    /// a metric the store does not hold yet re-read every HPA (a burst of 10,000 such
    /// requests with 1,000 HPAs cost 20 s of CPU and 600 MiB).
    cached: Arc<Mutex<Option<Built>>>,
}

/// A snapshot and the signal's revision it was built at.
struct Built {
    revision: u64,
    snapshot: Arc<CatalogSnapshot>,
}

impl std::fmt::Debug for HpaCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HpaCatalog")
            .field("hpas", &self.store.len())
            .field("ready", &self.is_ready())
            .finish()
    }
}

/// What all HPAs want, at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CatalogSnapshot {
    /// Sorted by store key.
    pub wanted: Vec<Wanted>,
    pub problems: Vec<Problem>,
}

impl HpaCatalog {
    /// A catalog over a reflector store, told of changes by `signal`.
    pub fn new(store: Store<DynamicObject>, signal: Arc<CatalogSignal>) -> Self {
        HpaCatalog {
            store,
            signal,
            cached: Arc::new(Mutex::new(None)),
        }
    }

    /// A catalog holding exactly `hpas`, already synced (tests and tools).
    pub fn from_objects(hpas: Vec<DynamicObject>) -> Self {
        let mut writer = reflector::store::Writer::new(hpa_resource(HpaVersion::V2));
        writer.apply_watcher_event(&watcher::Event::Init);
        for hpa in hpas {
            writer.apply_watcher_event(&watcher::Event::InitApply(hpa));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let signal = Arc::new(CatalogSignal::default());
        signal.mark_ready();
        HpaCatalog::new(writer.as_reader(), signal)
    }

    /// `true` once the first list of HPAs is complete. Before that, an HPA missing from the
    /// catalog may simply not be listed yet: nothing may be garbage-collected or declared
    /// unknown.
    pub fn is_ready(&self) -> bool {
        self.signal.is_ready()
    }

    /// Notified when an HPA is added, deleted, or its spec (generation) changes.
    pub fn changed(&self) -> &Notify {
        &self.signal.changed
    }

    /// Number of HPAs known.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// `true` when no HPA is known.
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// What every HPA wants now, rebuilt only when the watcher reported a change since the
    /// last call.
    pub fn snapshot(&self) -> Arc<CatalogSnapshot> {
        // Read the revision before the store: a change landing while we build tags our
        // snapshot with the older revision, so the next caller rebuilds.
        let revision = self.signal.revision.load(Ordering::Acquire);
        // A poisoned lock only means a builder panicked; the cached value is still whole.
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(built) = cached.as_ref()
            && built.revision == revision
        {
            return Arc::clone(&built.snapshot);
        }
        let snapshot = Arc::new(build_snapshot(&self.store));
        *cached = Some(Built {
            revision,
            snapshot: Arc::clone(&snapshot),
        });
        snapshot
    }
}

fn build_snapshot(store: &Store<DynamicObject>) -> CatalogSnapshot {
    let mut out = CatalogSnapshot::default();
    for hpa in store.state() {
        let (wanted, problems) = external_metrics_of(&hpa);
        out.wanted.extend(wanted);
        out.problems.extend(problems);
    }
    out.wanted.sort_by_cached_key(Wanted::key);
    out.problems.sort_by(|a, b| {
        (&a.reference.namespace, &a.reference.name, &a.metric_name).cmp(&(
            &b.reference.namespace,
            &b.reference.name,
            &b.metric_name,
        ))
    });
    out
}

/// The HPA resource for the discovered version.
pub(crate) fn hpa_resource(version: HpaVersion) -> ApiResource {
    let v = match version {
        HpaVersion::V2 => "v2",
        HpaVersion::V2beta2 => "v2beta2",
    };
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("autoscaling", v, "HorizontalPodAutoscaler"),
        "horizontalpodautoscalers",
    )
}

/// A problem to publish as an Event on its HPA.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProblemReport {
    pub problem: Problem,
    pub generation: i64,
    /// `autoscaling/v2` or `autoscaling/v2beta2`, for `involvedObject.apiVersion`.
    pub api_version: String,
}

/// The Warning Event for a problem. Its name is derived from the HPA UID, generation and
/// problem, so every replica (and a restarted one) computes the same name and a second
/// creation answers 409: the Event is published once per HPA generation across the cluster.
pub(crate) fn problem_event(report: &ProblemReport, now: jiff::Timestamp) -> CoreEvent {
    let p = &report.problem;
    let r = &p.reference;
    let mut hash = Fnv1a::default();
    for part in [
        r.uid.as_str(),
        &report.generation.to_string(),
        &p.metric_name,
        p.kind.reason(),
        &p.message,
    ] {
        hash.write(part.as_bytes());
        hash.write(&[0]);
    }
    let suffix = format!(".{:016x}", hash.finish());
    // An Event name is a DNS subdomain (≤ 253). HPA names are too, so cut the prefix and
    // keep it free of a trailing '.' or '-' that would make the name invalid.
    let mut prefix: String = r.name.chars().take(253 - suffix.len()).collect();
    while prefix.ends_with(['.', '-']) {
        prefix.pop();
    }
    CoreEvent {
        metadata: ObjectMeta {
            name: Some(format!("{prefix}{suffix}")),
            namespace: Some(r.namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: CoreRef {
            api_version: Some(report.api_version.clone()),
            kind: Some("HorizontalPodAutoscaler".to_owned()),
            name: Some(r.name.clone()),
            namespace: Some(r.namespace.clone()),
            uid: Some(r.uid.clone()),
            ..CoreRef::default()
        },
        reason: Some(p.kind.reason().to_owned()),
        message: Some(p.message.clone()),
        type_: Some("Warning".to_owned()),
        source: Some(EventSource {
            component: Some(EVENT_COMPONENT.to_owned()),
            host: None,
        }),
        reporting_component: Some(EVENT_COMPONENT.to_owned()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        ..CoreEvent::default()
    }
}

/// 64-bit FNV-1a: stable across processes and Rust versions (unlike `DefaultHasher`), which
/// the Event names rely on.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Which HPA generations were already checked, so each problem is reported once per
/// generation (status updates, which do not bump the generation, are ignored).
#[derive(Debug, Default)]
struct GenerationTracker {
    seen: HashMap<String, i64>,
}

impl GenerationTracker {
    /// `true` when this (uid, generation) was not seen before; records it.
    fn first_sight(&mut self, uid: &str, generation: i64) -> bool {
        self.seen.insert(uid.to_owned(), generation) != Some(generation)
    }

    fn forget(&mut self, uid: &str) {
        self.seen.remove(uid);
    }

    fn retain(&mut self, live: &HashSet<String>) {
        self.seen.retain(|uid, _| live.contains(uid));
    }
}

/// Spawn-time wiring of the HPA watcher.
pub(crate) struct HpaWatcher {
    pub api: Api<DynamicObject>,
    pub version: HpaVersion,
    pub writer: reflector::store::Writer<DynamicObject>,
    pub signal: Arc<CatalogSignal>,
    pub reports: mpsc::Sender<ProblemReport>,
    pub telemetry: Arc<Telemetry>,
}

impl HpaWatcher {
    /// Watches HPAs until shutdown; the stream retries with backoff on its own, so only a
    /// stream that ends is an error.
    pub(crate) async fn run(self, shutdown: CancellationToken) -> Result<(), AutoscalingError> {
        let HpaWatcher {
            api,
            version,
            writer,
            signal,
            reports,
            telemetry,
        } = self;
        let store = writer.as_reader();
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            // Only the spec and identity are read; status and annotations (the
            // last-applied configuration can be large) would only cost memory.
            .modify(|hpa: &mut DynamicObject| {
                hpa.metadata.managed_fields = None;
                hpa.metadata.annotations = None;
                hpa.metadata.labels = None;
                if let Some(obj) = hpa.data.as_object_mut() {
                    obj.remove("status");
                }
            })
            .reflect(writer);
        futures::pin_mut!(stream);
        let mut tracker = GenerationTracker::default();
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                e = stream.next() => e,
            };
            match event {
                None => return Err(AutoscalingError::TaskEnded("HPA watch stream")),
                Some(Err(e)) => {
                    telemetry.hpa_watch_error();
                    tracing::warn!(error = %e, "HPA watch failed; retrying with backoff");
                }
                Some(Ok(watcher::Event::Apply(hpa) | watcher::Event::InitApply(hpa))) => {
                    let uid = hpa.metadata.uid.clone().unwrap_or_default();
                    let generation = hpa.metadata.generation.unwrap_or(0);
                    if tracker.first_sight(&uid, generation) {
                        // During the initial list, InitDone notifies once for all.
                        if signal.is_ready() {
                            signal.mark_changed();
                        }
                        let (_, problems) = external_metrics_of(&hpa);
                        for problem in problems {
                            tracing::warn!(
                                hpa = %format!("{}/{}", problem.reference.namespace, problem.reference.name),
                                generation,
                                reason = problem.kind.reason(),
                                "{}",
                                problem.message
                            );
                            let report = ProblemReport {
                                problem,
                                generation,
                                api_version: version.api_version().to_owned(),
                            };
                            // The reporter only ends at shutdown.
                            if reports.send(report).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                }
                Some(Ok(watcher::Event::Delete(hpa))) => {
                    let uid = hpa.metadata.uid.clone().unwrap_or_default();
                    tracker.forget(&uid);
                    signal.mark_changed();
                }
                Some(Ok(watcher::Event::Init)) => {}
                Some(Ok(watcher::Event::InitDone)) => {
                    let live: HashSet<String> = store
                        .state()
                        .iter()
                        .filter_map(|h| h.metadata.uid.clone())
                        .collect();
                    tracker.retain(&live);
                    if signal.mark_ready() {
                        tracing::info!(hpas = live.len(), "HPA list synced");
                    }
                    signal.mark_changed();
                }
            }
        }
    }
}

/// Publishes problem Events. Transient failures are retried a few times; a 409 means the
/// Event already exists (another replica, or this one before a restart, published it).
pub(crate) async fn run_reporter(
    client: kube::Client,
    mut reports: mpsc::Receiver<ProblemReport>,
    telemetry: Arc<Telemetry>,
    shutdown: CancellationToken,
) -> Result<(), AutoscalingError> {
    const ATTEMPTS: u32 = 4;
    loop {
        let report = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = reports.recv() => match r {
                Some(r) => r,
                None => return Ok(()),
            },
        };
        let r = &report.problem.reference;
        let api: Api<CoreEvent> = Api::namespaced(client.clone(), &r.namespace);
        let mut delay = Duration::from_secs(1);
        for attempt in 1..=ATTEMPTS {
            let event = problem_event(&report, jiff::Timestamp::now());
            match api.create(&PostParams::default(), &event).await {
                Ok(_) => {
                    telemetry.event_emitted();
                    break;
                }
                Err(kube::Error::Api(status)) if status.code == 409 => break,
                Err(e) if attempt == ATTEMPTS => {
                    tracing::error!(
                        hpa = %format!("{}/{}", r.namespace, r.name),
                        error = %e,
                        "could not publish the Event about an unservable external metric"
                    );
                }
                Err(e) => {
                    tracing::debug!(error = %e, attempt, "Event creation failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay *= 2;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hpa(api_version: &str, metrics: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": api_version,
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "generation": 3},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 5,
                "metrics": metrics
            }
        }))
        .unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn wanted(name: &str, l: &[(&str, &str)]) -> Wanted {
        Wanted {
            metric_name: name.to_owned(),
            labels: labels(l),
            reference: ObjectReference::horizontal("shop", "web", "u-1"),
        }
    }

    /// (metrics JSON, wanted, problem kinds)
    type Case = (
        serde_json::Value,
        Vec<Wanted>,
        Vec<(&'static str, ProblemKind)>,
    );

    #[test]
    fn external_metrics_table() {
        let long_metric = format!("a{}", "b".repeat(199));
        let cases: Vec<Case> = vec![
            // v2beta2 shape as the e2e harness creates it.
            (
                json!([{"type": "External", "external": {
                    "metric": {"name": "nginx.net.request_per_s", "selector": {"matchLabels": {"app": "nginx"}}},
                    "target": {"type": "AverageValue", "averageValue": "10"}}}]),
                vec![wanted("nginx.net.request_per_s", &[("app", "nginx")])],
                vec![],
            ),
            // No selector at all, and an explicit null selector.
            (
                json!([
                    {"type": "External", "external": {"metric": {"name": "queue.depth"}, "target": {"type": "Value", "value": "1"}}},
                    {"type": "External", "external": {"metric": {"name": "Other.Metric", "selector": null}}}
                ]),
                vec![wanted("queue.depth", &[]), wanted("Other.Metric", &[])],
                vec![],
            ),
            // Non-external metrics are ignored; unknown fields too.
            (
                json!([
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
                    {"type": "Pods", "pods": {"metric": {"name": "x"}}},
                    {"type": "External", "external": {"metric": {"name": "m", "future": 1}}, "extra": true}
                ]),
                vec![wanted("m", &[])],
                vec![],
            ),
            // Invalid names: reported, not queried; a valid neighbour survives.
            (
                json!([
                    {"type": "External", "external": {"metric": {"name": "bad-name"}}},
                    {"type": "External", "external": {"metric": {"name": "9lives"}}},
                    {"type": "External", "external": {}},
                    {"type": "External"},
                    {"type": "External", "external": {"metric": {"name": "ok"}}}
                ]),
                vec![wanted("ok", &[])],
                vec![
                    ("bad-name", ProblemKind::InvalidMetricName),
                    ("9lives", ProblemKind::InvalidMetricName),
                    ("", ProblemKind::InvalidMetricName),
                    ("", ProblemKind::InvalidMetricName),
                ],
            ),
            // A 200-character name is fine.
            (
                json!([{"type": "External", "external": {"metric": {"name": long_metric}}}]),
                vec![wanted(&long_metric, &[])],
                vec![],
            ),
            // matchExpressions: single-valued In becomes a tag; others are reported.
            (
                json!([
                    {"type": "External", "external": {"metric": {"name": "a", "selector": {
                        "matchLabels": {"app": "web"},
                        "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]}}}},
                    {"type": "External", "external": {"metric": {"name": "b", "selector": {
                        "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "dev"]}]}}}},
                    {"type": "External", "external": {"metric": {"name": "c", "selector": {
                        "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]}}}},
                    {"type": "External", "external": {"metric": {"name": "d", "selector": {
                        "matchExpressions": [{"key": "env", "operator": "Exists"}]}}}},
                    {"type": "External", "external": {"metric": {"name": "e", "selector": {
                        "matchLabels": {"env": "dev"},
                        "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]}}}},
                    {"type": "External", "external": {"metric": {"name": "f", "selector": {
                        "matchLabels": {"env": "prod"},
                        "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]}}}}
                ]),
                vec![
                    wanted("a", &[("app", "web"), ("env", "prod")]),
                    wanted("f", &[("env", "prod")]),
                ],
                vec![
                    ("b", ProblemKind::UnsupportedSelector),
                    ("c", ProblemKind::UnsupportedSelector),
                    ("d", ProblemKind::UnsupportedSelector),
                    ("e", ProblemKind::UnsupportedSelector),
                ],
            ),
            // The same metric twice: identical → once; different selectors → reported.
            (
                json!([
                    {"type": "External", "external": {"metric": {"name": "m", "selector": {"matchLabels": {"a": "1"}}}}},
                    {"type": "External", "external": {"metric": {"name": "m", "selector": {"matchLabels": {"a": "1"}}}}},
                    {"type": "External", "external": {"metric": {"name": "m", "selector": {"matchLabels": {"a": "2"}}}}}
                ]),
                vec![wanted("m", &[("a", "1")])],
                vec![("m", ProblemKind::DuplicateMetric)],
            ),
            // Malformed metric (wrong type for a field): reported, neighbours kept.
            (
                json!([
                    {"type": "External", "external": {"metric": {"name": 5}}},
                    {"type": "External", "external": {"metric": {"name": "m"}}}
                ]),
                vec![wanted("m", &[])],
                vec![("", ProblemKind::InvalidMetricName)],
            ),
            (json!(null), vec![], vec![]),
            (json!([]), vec![], vec![]),
        ];
        for (api_version, _) in [("autoscaling/v2beta2", ()), ("autoscaling/v2", ())] {
            for (metrics, want, want_problems) in &cases {
                let (got, problems) = external_metrics_of(&hpa(api_version, metrics.clone()));
                assert_eq!(&got, want, "{metrics}");
                let kinds: Vec<(&str, ProblemKind)> = problems
                    .iter()
                    .map(|p| (p.metric_name.as_str(), p.kind))
                    .collect();
                assert_eq!(&kinds, want_problems, "{metrics}");
                for p in &problems {
                    assert_eq!(
                        p.reference,
                        ObjectReference::horizontal("shop", "web", "u-1")
                    );
                    assert!(!p.message.is_empty());
                }
            }
        }
    }

    #[test]
    fn problem_messages_say_why() {
        let (_, problems) = external_metrics_of(&hpa(
            "autoscaling/v2beta2",
            json!([
                {"type": "External", "external": {"metric": {"name": "bad-name"}}},
                {"type": "External", "external": {"metric": {"name": "c", "selector": {
                    "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev", "qa"]}]}}}}
            ]),
        ));
        assert!(
            problems[0].message.contains("\"bad-name\" is invalid")
                && problems[0].message.contains("not queried"),
            "{}",
            problems[0].message
        );
        assert!(
            problems[1].message.contains("env NotIn [dev, qa]"),
            "{}",
            problems[1].message
        );
    }

    #[test]
    fn missing_spec_and_metadata_are_tolerated() {
        let bare: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "autoscaling/v2beta2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "x"}
        }))
        .unwrap();
        assert_eq!(external_metrics_of(&bare), (vec![], vec![]));
        let no_uid: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "autoscaling/v2beta2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "x", "namespace": "n"},
            "spec": {"metrics": [{"type": "External", "external": {"metric": {"name": "m"}}}]}
        }))
        .unwrap();
        let (w, _) = external_metrics_of(&no_uid);
        assert_eq!(w[0].reference, ObjectReference::horizontal("n", "x", ""));
        assert_eq!(w[0].key(), "external_metric-horizontal-n-x-m");
        assert_eq!(w[0].query(Aggregator::Avg, 30), "avg:m{*}.rollup(30)");
    }

    #[test]
    fn overlong_store_key_is_a_problem() {
        let name = "h".repeat(200);
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "namespace": "n", "uid": "u"},
            "spec": {"metrics": [{"type": "External", "external": {"metric": {"name": "m".repeat(60)}}}]}
        }))
        .unwrap();
        let (w, p) = external_metrics_of(&obj);
        assert!(w.is_empty());
        assert_eq!(p[0].kind, ProblemKind::KeyTooLong);
    }

    #[test]
    fn event_names_are_stable_and_valid() {
        let report = |generation, name: &str| ProblemReport {
            problem: Problem {
                metric_name: "bad-name".into(),
                kind: ProblemKind::InvalidMetricName,
                message: "m".into(),
                reference: ObjectReference::horizontal("shop", name, "u-1"),
            },
            generation,
            api_version: "autoscaling/v2beta2".into(),
        };
        let now: jiff::Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
        let later: jiff::Timestamp = "2025-01-02T00:00:00Z".parse().unwrap();
        let a = problem_event(&report(1, "web"), now);
        // Same HPA generation and problem, any time, any replica: same name.
        assert_eq!(
            a.metadata.name,
            problem_event(&report(1, "web"), later).metadata.name
        );
        // A new generation is a new Event.
        assert_ne!(
            a.metadata.name,
            problem_event(&report(2, "web"), now).metadata.name
        );
        let name = a.metadata.name.clone().unwrap();
        assert!(
            name.starts_with("web.") && name.len() == "web.".len() + 16,
            "{name}"
        );
        assert_eq!(a.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(a.type_.as_deref(), Some("Warning"));
        assert_eq!(a.reason.as_deref(), Some("InvalidExternalMetric"));
        assert_eq!(
            a.source.as_ref().and_then(|s| s.component.as_deref()),
            Some("datadog-cluster-agent")
        );
        assert_eq!(
            a.involved_object.kind.as_deref(),
            Some("HorizontalPodAutoscaler")
        );
        assert_eq!(a.involved_object.uid.as_deref(), Some("u-1"));
        assert_eq!(
            a.involved_object.api_version.as_deref(),
            Some("autoscaling/v2beta2")
        );

        let long = format!("{}-.x", "a".repeat(250));
        let e = problem_event(&report(1, &long), now);
        let n = e.metadata.name.unwrap();
        assert!(n.len() <= 253, "{}", n.len());
        assert!(!n.contains("-."), "{n}");
    }

    #[test]
    fn fnv_vectors() {
        // Published FNV-1a 64 test vectors.
        for (input, want) in [
            ("", 0xcbf2_9ce4_8422_2325u64),
            ("a", 0xaf63_dc4c_8601_ec8c),
            ("foobar", 0x8594_4171_f739_67e8),
        ] {
            let mut h = Fnv1a::default();
            h.write(input.as_bytes());
            assert_eq!(h.finish(), want, "{input}");
        }
    }

    #[test]
    fn generations_are_reported_once() {
        let mut t = GenerationTracker::default();
        assert!(t.first_sight("u", 1));
        assert!(!t.first_sight("u", 1));
        assert!(t.first_sight("u", 2));
        assert!(t.first_sight("v", 2));
        t.retain(&HashSet::from(["v".to_owned()]));
        assert!(t.first_sight("u", 2));
        t.forget("v");
        assert!(t.first_sight("v", 2));
    }

    #[test]
    fn catalog_snapshot_is_sorted_across_hpas() {
        let mk = |ns: &str, name: &str, metric: &str| -> DynamicObject {
            serde_json::from_value(json!({
                "apiVersion": "autoscaling/v2beta2", "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": name, "namespace": ns, "uid": format!("{ns}-{name}")},
                "spec": {"metrics": [{"type": "External", "external": {"metric": {"name": metric}}}]}
            }))
            .unwrap()
        };
        let catalog = HpaCatalog::from_objects(vec![
            mk("b", "z", "m"),
            mk("a", "y", "m"),
            mk("a", "x", "bad-name"),
        ]);
        assert!(catalog.is_ready());
        assert_eq!(catalog.len(), 3);
        let snap = catalog.snapshot();
        let keys: Vec<String> = snap.wanted.iter().map(Wanted::key).collect();
        assert_eq!(
            keys,
            [
                "external_metric-horizontal-a-y-m",
                "external_metric-horizontal-b-z-m"
            ]
        );
        assert_eq!(snap.problems.len(), 1);
        assert_eq!(snap.problems[0].reference.name, "x");
    }

    #[test]
    fn snapshot_is_rebuilt_only_after_a_reported_change() {
        let mk = |name: &str, metric: &str| -> DynamicObject {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": name, "namespace": "shop", "uid": name},
                "spec": {"metrics": [{"type": "External", "external": {"metric": {"name": metric}}}]}
            }))
            .unwrap()
        };
        let mut writer = reflector::store::Writer::new(hpa_resource(HpaVersion::V2));
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(mk("a", "m1")));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let signal = Arc::new(CatalogSignal::default());
        assert!(signal.mark_ready());
        assert!(!signal.mark_ready(), "only the first list reports ready");
        let catalog = HpaCatalog::new(writer.as_reader(), Arc::clone(&signal));
        let names = |s: &CatalogSnapshot| -> Vec<String> {
            s.wanted.iter().map(|w| w.metric_name.clone()).collect()
        };

        let first = catalog.snapshot();
        assert_eq!(names(&first), ["m1"]);
        assert!(
            Arc::ptr_eq(&first, &catalog.snapshot()),
            "no change reported: the same snapshot is shared"
        );
        assert!(
            Arc::ptr_eq(&first, &catalog.clone().snapshot()),
            "clones of the catalog share its cache"
        );

        writer.apply_watcher_event(&watcher::Event::Apply(mk("b", "m2")));
        signal.mark_changed();
        let second = catalog.snapshot();
        assert_eq!(names(&second), ["m1", "m2"]);
        assert!(!Arc::ptr_eq(&first, &second));

        writer.apply_watcher_event(&watcher::Event::Delete(mk("a", "m1")));
        signal.mark_changed();
        assert_eq!(names(&catalog.snapshot()), ["m2"]);
    }
}
