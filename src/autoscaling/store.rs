//! The shared metric store: the `datadog-custom-metrics` ConfigMap (dca-contract §3.2).
//!
//! - The leader writes it ([`StoreWriter`]): created when missing, otherwise replaced with
//!   the resourceVersion it last read as a guard (409 → re-read, rebuild, retry). Data keys
//!   and values follow [`store_format`](super::store_format); keys not starting with
//!   `external_metric` belong to someone else and are kept as they are.
//! - Every replica, the leader included, keeps a local copy fed by a WATCH on that one
//!   ConfigMap ([`run_local_copy`]), where the Go DCA re-reads it every second. The copy
//!   records when it last changed, which is what staleness of the copy is measured against.
//! - Why an entry is invalid has no place in the Go entry format; the leader adds it in the
//!   annotation [`INVALID_REASONS_ANNOTATION`] (a JSON object `{data key: reason}`, bounded
//!   in size), which the Go DCA ignores, so followers can tell the HPA why.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::autoscaling::AutoscalingError;
use crate::autoscaling::store_format::{
    ExternalMetricValue, LAST_UPDATED_ANNOTATION, StoredEntry, decode_entry, encode_entry,
    format_last_updated, is_external_metric_key, is_valid_configmap_key,
};
use crate::autoscaling::telemetry::{MetricAge, Telemetry, TelemetrySnapshot};

/// Annotation holding `{data key: why the entry is invalid}` as JSON.
pub const INVALID_REASONS_ANNOTATION: &str = "custom-metrics.datadoghq.com/invalid-reasons";
/// A reason longer than this is cut (at a character boundary).
pub(crate) const MAX_REASON_BYTES: usize = 512;
/// Reasons are dropped once the annotation would exceed this; annotations share a 256 KiB
/// budget per object.
pub(crate) const MAX_REASONS_BYTES: usize = 64 * 1024;
/// Conflicting writes retried before giving up until the next cycle.
const WRITE_ATTEMPTS: usize = 5;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("cannot read ConfigMap {namespace}/{name}: {source}")]
    Read {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot write ConfigMap {namespace}/{name}: {source}")]
    Write {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "cannot write ConfigMap {namespace}/{name}: still conflicting after {attempts} attempts"
    )]
    Conflict {
        namespace: String,
        name: String,
        attempts: usize,
    },
}

/// One decoded entry of the ConfigMap.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMetric {
    /// Its data key.
    pub key: String,
    pub value: ExternalMetricValue,
}

/// A replica's view of the ConfigMap.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreSnapshot {
    /// The first watch list completed (so an absent ConfigMap really is absent).
    pub synced: bool,
    /// The ConfigMap exists.
    pub present: bool,
    pub resource_version: Option<String>,
    /// Local unix seconds as of which this copy is known current: when its content last
    /// changed, or, for the first sight of the object, its last-updated annotation if older.
    pub seen_at: Option<i64>,
    /// The last-updated annotation, unix seconds.
    pub last_updated: Option<i64>,
    /// Current-format entries, sorted by key.
    pub entries: Vec<StoredMetric>,
    /// Why invalid entries are invalid, by key, as the leader wrote it.
    pub reasons: BTreeMap<String, String>,
    /// `external_metric` keys whose values are legacy or unreadable (deleted at next write).
    pub unusable_keys: Vec<String>,
    /// Lower-cased metric name → indexes in `entries`.
    by_name: HashMap<String, Vec<usize>>,
}

impl StoreSnapshot {
    /// The subsystem's counters, plus this copy's age and per-metric ages as of `now`.
    pub fn telemetry(&self, telemetry: &Telemetry, now: i64) -> TelemetrySnapshot {
        let metrics = self
            .entries
            .iter()
            .map(|e| {
                (
                    e.key.clone(),
                    MetricAge {
                        metric_name: e.value.metric_name.clone(),
                        labels: e.value.labels.clone(),
                        valid: e.value.valid,
                        age_secs: now.saturating_sub(e.value.timestamp),
                    },
                )
            })
            .collect();
        telemetry.snapshot(self.seen_at.map(|t| now.saturating_sub(t)), metrics)
    }

    /// Decodes a ConfigMap (not yet `synced`, no `seen_at`).
    pub fn from_configmap(cm: &ConfigMap) -> Self {
        let mut entries = Vec::new();
        let mut unusable_keys = Vec::new();
        for (key, json) in cm.data.iter().flatten() {
            if !is_external_metric_key(key) {
                continue;
            }
            match decode_entry(json) {
                Ok(StoredEntry::Current(value)) => entries.push(StoredMetric {
                    key: key.clone(),
                    value,
                }),
                Ok(StoredEntry::Deprecated(_)) => unusable_keys.push(key.clone()),
                Err(e) => {
                    tracing::debug!(%key, error = %e, "unreadable entry in the metric store");
                    unusable_keys.push(key.clone());
                }
            }
        }
        let annotations = cm.metadata.annotations.as_ref();
        let reasons = annotations
            .and_then(|a| a.get(INVALID_REASONS_ANNOTATION))
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_default();
        let last_updated = annotations
            .and_then(|a| a.get(LAST_UPDATED_ANNOTATION))
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_second());
        let mut snapshot = StoreSnapshot::from_parts(entries, reasons, None);
        snapshot.present = true;
        snapshot.synced = false;
        snapshot.resource_version = cm.metadata.resource_version.clone();
        snapshot.last_updated = last_updated;
        snapshot.unusable_keys = unusable_keys;
        snapshot
    }

    /// A synced, present snapshot holding `entries` (tests and tools).
    pub fn from_parts(
        mut entries: Vec<StoredMetric>,
        reasons: BTreeMap<String, String>,
        seen_at: Option<i64>,
    ) -> Self {
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            by_name
                .entry(e.value.metric_name.to_ascii_lowercase())
                .or_default()
                .push(i);
        }
        StoreSnapshot {
            synced: true,
            present: true,
            resource_version: None,
            seen_at,
            last_updated: None,
            entries,
            reasons,
            unusable_keys: Vec::new(),
            by_name,
        }
    }

    /// A synced snapshot of an absent ConfigMap.
    pub fn absent() -> Self {
        StoreSnapshot {
            synced: true,
            ..StoreSnapshot::default()
        }
    }

    /// Entries whose metric name equals `name` ignoring ASCII case (client-go lower-cases the
    /// name in the URL; the store keeps the HPA's spelling).
    pub fn with_metric_name<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a StoredMetric> {
        self.by_name
            .get(&name.to_ascii_lowercase())
            .into_iter()
            .flatten()
            .filter_map(|i| self.entries.get(*i))
    }

    /// The stored reason of an invalid entry.
    pub fn reason(&self, key: &str) -> Option<&str> {
        self.reasons.get(key).map(String::as_str)
    }

    /// Every entry by key.
    pub fn entry_map(&self) -> BTreeMap<String, ExternalMetricValue> {
        self.entries
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect()
    }
}

/// The next copy after seeing `cm` at local time `now`.
pub(crate) fn observe(
    previous: &StoreSnapshot,
    cm: &ConfigMap,
    now: i64,
    synced: bool,
) -> StoreSnapshot {
    let mut next = StoreSnapshot::from_configmap(cm);
    next.synced = synced || previous.synced;
    next.seen_at = if previous.present && previous.resource_version == next.resource_version {
        // A re-list of an unchanged object says nothing new about the leader.
        previous.seen_at
    } else if previous.present {
        Some(now)
    } else {
        // First sight (start-up, or re-created): trust the leader's stamp if it is older,
        // so a ConfigMap abandoned hours ago is not taken for a fresh one.
        Some(next.last_updated.map_or(now, |t| t.min(now)))
    };
    next
}

/// The ConfigMap to write: `base` (if any) with its `external_metric` keys replaced by
/// `entries`, the last-updated annotation set to `now` and the reasons annotation set to
/// the reasons of invalid entries.
pub(crate) fn render_configmap(
    base: Option<&ConfigMap>,
    name: &str,
    namespace: &str,
    entries: &BTreeMap<String, ExternalMetricValue>,
    reasons: &BTreeMap<String, String>,
    now: jiff::Timestamp,
) -> ConfigMap {
    let mut cm = base.cloned().unwrap_or_else(|| ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    });
    // Left unset, the server keeps the field ownership as it is.
    cm.metadata.managed_fields = None;
    let mut data: BTreeMap<String, String> = cm
        .data
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !is_external_metric_key(k))
        .collect();
    for (key, entry) in entries {
        if !is_valid_configmap_key(key) {
            tracing::warn!(%key, "not a valid ConfigMap key; entry not stored");
            continue;
        }
        match encode_entry(entry) {
            Ok(json) => {
                data.insert(key.clone(), json);
            }
            Err(e) => tracing::warn!(%key, error = %e, "entry not stored"),
        }
    }
    let annotations = cm.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(LAST_UPDATED_ANNOTATION.to_owned(), format_last_updated(now));
    let invalid_reasons: BTreeMap<&String, &String> = reasons
        .iter()
        .filter(|(k, _)| {
            entries
                .get(*k)
                .is_some_and(|e| !e.valid && data.contains_key(*k))
        })
        .collect();
    match encode_reasons(&invalid_reasons) {
        Some(json) => {
            annotations.insert(INVALID_REASONS_ANNOTATION.to_owned(), json);
        }
        None => {
            annotations.remove(INVALID_REASONS_ANNOTATION);
        }
    }
    cm.data = Some(data);
    cm
}

/// `{key: reason}` as JSON, each reason cut to [`MAX_REASON_BYTES`], stopping before the
/// whole exceeds [`MAX_REASONS_BYTES`]; `None` when there is nothing to say.
fn encode_reasons(reasons: &BTreeMap<&String, &String>) -> Option<String> {
    let mut out = serde_json::Map::new();
    let mut size = 2;
    for (key, reason) in reasons {
        let reason = truncate(reason, MAX_REASON_BYTES);
        // Upper bound of the JSON form: quotes, colon, comma and escapes.
        let cost = key.len() + reason.len() * 2 + 6;
        if size + cost > MAX_REASONS_BYTES {
            break;
        }
        size += cost;
        out.insert((*key).clone(), serde_json::Value::String(reason.to_owned()));
    }
    if out.is_empty() {
        return None;
    }
    serde_json::to_string(&out).ok()
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    // Stops at 0 at the latest, which is always a boundary.
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The leader's writer. It remembers the object it last wrote, so consecutive writes need
/// no read; a conflict means someone else wrote in between, and costs one re-read.
#[derive(Debug)]
pub(crate) struct StoreWriter {
    api: Api<ConfigMap>,
    name: String,
    namespace: String,
    last: Option<ConfigMap>,
}

impl StoreWriter {
    pub(crate) fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        StoreWriter {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            last: None,
        }
    }

    /// Reads the ConfigMap now (an absent one is an empty, synced snapshot).
    pub(crate) async fn load(&mut self) -> Result<StoreSnapshot, StoreError> {
        self.last = self.get().await?;
        Ok(match &self.last {
            Some(cm) => {
                let mut s = StoreSnapshot::from_configmap(cm);
                s.synced = true;
                s
            }
            None => StoreSnapshot::absent(),
        })
    }

    async fn get(&self) -> Result<Option<ConfigMap>, StoreError> {
        self.api
            .get_opt(&self.name)
            .await
            .map_err(|source| StoreError::Read {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                source,
            })
    }

    /// Writes `entries` (all of them: `external_metric` keys not in `entries` are removed).
    pub(crate) async fn write(
        &mut self,
        entries: &BTreeMap<String, ExternalMetricValue>,
        reasons: &BTreeMap<String, String>,
        now: jiff::Timestamp,
    ) -> Result<(), StoreError> {
        let write_err = |source| StoreError::Write {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        };
        if self.last.is_none() {
            self.last = self.get().await?;
        }
        for _ in 0..WRITE_ATTEMPTS {
            let desired = render_configmap(
                self.last.as_ref(),
                &self.name,
                &self.namespace,
                entries,
                reasons,
                now,
            );
            let result = if self.last.is_some() {
                self.api
                    .replace(&self.name, &PostParams::default(), &desired)
                    .await
            } else {
                self.api.create(&PostParams::default(), &desired).await
            };
            match result {
                Ok(written) => {
                    self.last = Some(written);
                    return Ok(());
                }
                // 409: stale resourceVersion (replace) or created meanwhile (create);
                // 404: deleted meanwhile. Either way, start again from what is there now.
                Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {
                    tracing::debug!(
                        code = status.code,
                        "metric store changed under us; re-reading"
                    );
                    self.last = self.get().await?;
                }
                Err(e) => {
                    // What we remember may be what the server refused; read it again next time.
                    self.last = None;
                    return Err(write_err(e));
                }
            }
        }
        self.last = None;
        Err(StoreError::Conflict {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            attempts: WRITE_ATTEMPTS,
        })
    }
}

/// Keeps `tx` current with the ConfigMap through a watch on that single object.
pub(crate) async fn run_local_copy(
    client: kube::Client,
    namespace: String,
    name: String,
    tx: watch::Sender<Arc<StoreSnapshot>>,
    telemetry: Arc<Telemetry>,
    shutdown: CancellationToken,
) -> Result<(), AutoscalingError> {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    // During a (re-)list, the object (if any) is held until the list is complete.
    let mut listed: Option<ConfigMap> = None;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            e = stream.next() => e,
        };
        let now = jiff::Timestamp::now().as_second();
        match event {
            None => return Err(AutoscalingError::TaskEnded("metric store watch stream")),
            Some(Err(e)) => {
                telemetry.store_watch_error();
                tracing::warn!(error = %e, configmap = %name, "metric store watch failed; retrying with backoff");
            }
            Some(Ok(watcher::Event::Init)) => listed = None,
            Some(Ok(watcher::Event::InitApply(cm))) => listed = Some(cm),
            Some(Ok(watcher::Event::InitDone)) => {
                let next = match listed.take() {
                    Some(cm) => observe(&tx.borrow(), &cm, now, true),
                    None => StoreSnapshot::absent(),
                };
                if !tx.borrow().synced {
                    tracing::info!(
                        configmap = %format!("{namespace}/{name}"),
                        present = next.present,
                        entries = next.entries.len(),
                        "metric store copy synced"
                    );
                }
                tx.send_replace(Arc::new(next));
            }
            Some(Ok(watcher::Event::Apply(cm))) => {
                let next = observe(&tx.borrow(), &cm, now, true);
                tx.send_replace(Arc::new(next));
            }
            Some(Ok(watcher::Event::Delete(_))) => {
                tracing::warn!(configmap = %format!("{namespace}/{name}"), "metric store ConfigMap deleted");
                tx.send_replace(Arc::new(StoreSnapshot::absent()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaling::store_format::{ObjectReference, encode_deprecated_entry};

    fn entry(name: &str, metric: &str, valid: bool, ts: i64) -> ExternalMetricValue {
        ExternalMetricValue {
            metric_name: metric.into(),
            labels: BTreeMap::from([("app".to_owned(), "web".to_owned())]),
            timestamp: ts,
            reference: ObjectReference::horizontal("shop", name, "u"),
            value: 2.5,
            valid,
        }
    }

    fn cm(data: &[(&str, &str)], annotations: &[(&str, &str)], rv: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("datadog-custom-metrics".into()),
                namespace: Some("datadog".into()),
                resource_version: Some(rv.into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn decode_configmap() {
        let good = entry("web", "Nginx.Requests", true, 100);
        let good_json = encode_entry(&good).unwrap();
        let legacy = encode_deprecated_entry(&Default::default()).unwrap();
        let c = cm(
            &[
                (&good.key(), &good_json),
                ("external_metric-default-old-m", &legacy),
                ("external_metric-horizontal-x-y-z", "{not json"),
                ("unrelated", "kept"),
            ],
            &[
                (LAST_UPDATED_ANNOTATION, "2025-01-01T00:00:00Z"),
                (INVALID_REASONS_ANNOTATION, r#"{"k":"no serie"}"#),
            ],
            "7",
        );
        let s = StoreSnapshot::from_configmap(&c);
        assert!(s.present && !s.synced);
        assert_eq!(s.resource_version.as_deref(), Some("7"));
        assert_eq!(s.last_updated, Some(1_735_689_600));
        assert_eq!(
            s.entries,
            vec![StoredMetric {
                key: good.key(),
                value: good.clone()
            }]
        );
        assert_eq!(
            s.unusable_keys,
            [
                "external_metric-default-old-m",
                "external_metric-horizontal-x-y-z"
            ]
        );
        assert_eq!(s.reason("k"), Some("no serie"));
        // Case-insensitive lookup by metric name.
        assert_eq!(s.with_metric_name("nginx.requests").count(), 1);
        assert_eq!(s.with_metric_name("NGINX.REQUESTS").count(), 1);
        assert_eq!(s.with_metric_name("nginx").count(), 0);

        // A garbled reasons annotation is ignored, not fatal.
        let c = cm(&[], &[(INVALID_REASONS_ANNOTATION, "[")], "8");
        assert!(StoreSnapshot::from_configmap(&c).reasons.is_empty());
    }

    #[test]
    fn observe_tracks_when_the_copy_changed() {
        let t0 = 1_735_689_600; // 2025-01-01T00:00:00Z
        let first = cm(
            &[],
            &[(LAST_UPDATED_ANNOTATION, "2025-01-01T00:00:00Z")],
            "1",
        );
        // First sight: the annotation when it is older than now...
        let s1 = observe(&StoreSnapshot::default(), &first, t0 + 500, false);
        assert_eq!(s1.seen_at, Some(t0));
        assert!(!s1.synced);
        // ...but never in the future (clock skew).
        let s1b = observe(&StoreSnapshot::default(), &first, t0 - 10, true);
        assert_eq!(s1b.seen_at, Some(t0 - 10));
        assert!(s1b.synced);
        // No annotation: now.
        let bare = cm(&[], &[], "1");
        assert_eq!(
            observe(&StoreSnapshot::absent(), &bare, 42, true).seen_at,
            Some(42)
        );
        // Same resourceVersion again (re-list): unchanged.
        let s2 = observe(&s1, &first, t0 + 900, true);
        assert_eq!(s2.seen_at, Some(t0));
        assert!(s2.synced);
        // New resourceVersion: now, whatever the annotation says.
        let second = cm(
            &[],
            &[(LAST_UPDATED_ANNOTATION, "2025-01-01T00:00:00Z")],
            "2",
        );
        assert_eq!(
            observe(&s2, &second, t0 + 1000, true).seen_at,
            Some(t0 + 1000)
        );
    }

    #[test]
    fn render_replaces_only_our_keys() {
        let now: jiff::Timestamp = "2025-01-01T00:00:05.5Z".parse().unwrap();
        let base = cm(
            &[
                ("external_metric-horizontal-shop-gone-m", "{}"),
                ("external_metric-default-old-m", "{}"),
                ("someone.else", "keep me"),
            ],
            &[("other", "annotation"), (INVALID_REASONS_ANNOTATION, "{}")],
            "41",
        );
        let valid = entry("web", "m", true, 100);
        let invalid = entry("api", "m", false, 100);
        let entries = BTreeMap::from([
            (valid.key(), valid.clone()),
            (invalid.key(), invalid.clone()),
            // Not a storable key: skipped, never sent (it would fail the whole update).
            (
                format!("external_metric-{}", "x".repeat(300)),
                valid.clone(),
            ),
        ]);
        let reasons = BTreeMap::from([
            (invalid.key(), "no serie returned".to_owned()),
            // Reasons of valid or unknown entries are not kept.
            (valid.key(), "stale reason".to_owned()),
            ("external_metric-unknown".to_owned(), "x".to_owned()),
        ]);
        let out = render_configmap(Some(&base), "n", "ns", &entries, &reasons, now);
        assert_eq!(out.metadata.resource_version.as_deref(), Some("41"));
        assert_eq!(out.metadata.name.as_deref(), Some("datadog-custom-metrics"));
        let data = out.data.clone().unwrap();
        let keys: Vec<&str> = data.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "external_metric-horizontal-shop-api-m",
                "external_metric-horizontal-shop-web-m",
                "someone.else"
            ]
        );
        assert_eq!(data[&valid.key()], encode_entry(&valid).unwrap());
        let ann = out.metadata.annotations.clone().unwrap();
        assert_eq!(ann[LAST_UPDATED_ANNOTATION], "2025-01-01T00:00:05Z");
        assert_eq!(ann["other"], "annotation");
        assert_eq!(
            ann[INVALID_REASONS_ANNOTATION],
            r#"{"external_metric-horizontal-shop-api-m":"no serie returned"}"#
        );
        // Round trip through the reader.
        let back = StoreSnapshot::from_configmap(&out);
        assert_eq!(back.entries.len(), 2);
        assert_eq!(back.reason(&invalid.key()), Some("no serie returned"));

        // No base: a new object in the right place; no invalid entry → no reasons annotation.
        let fresh = render_configmap(
            None,
            "datadog-custom-metrics",
            "datadog",
            &BTreeMap::from([(valid.key(), valid)]),
            &BTreeMap::new(),
            now,
        );
        assert_eq!(
            fresh.metadata.name.as_deref(),
            Some("datadog-custom-metrics")
        );
        assert_eq!(fresh.metadata.namespace.as_deref(), Some("datadog"));
        assert!(fresh.metadata.resource_version.is_none());
        assert!(
            !fresh
                .metadata
                .annotations
                .unwrap()
                .contains_key(INVALID_REASONS_ANNOTATION)
        );
    }

    #[test]
    fn reasons_are_bounded() {
        let long = "é".repeat(MAX_REASON_BYTES);
        let keys: Vec<String> = (0..400)
            .map(|i| format!("external_metric-k{i:03}"))
            .collect();
        let reasons: BTreeMap<&String, &String> = keys.iter().map(|k| (k, &long)).collect();
        let json = encode_reasons(&reasons).unwrap();
        assert!(json.len() <= MAX_REASONS_BYTES, "{}", json.len());
        let back: BTreeMap<String, String> = serde_json::from_str(&json).unwrap();
        assert!(!back.is_empty() && back.len() < 400);
        for r in back.values() {
            assert!(r.len() <= MAX_REASON_BYTES);
        }
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(encode_reasons(&BTreeMap::new()), None);
    }

    #[test]
    fn snapshot_reports_counters_and_ages() {
        let t = Telemetry::default();
        t.cache_hit();
        t.cache_miss();
        t.cache_miss();
        t.store_write_error();
        t.store_hit();
        let empty = StoreSnapshot::default().telemetry(&t, 100);
        assert_eq!(empty.last_refresh, None);
        assert_eq!(empty.store_copy_age_secs, None);
        t.refreshed(90);
        let value = ExternalMetricValue {
            metric_name: "m".into(),
            timestamp: 40,
            reference: ObjectReference::horizontal("n", "h", "u"),
            valid: true,
            value: 1.0,
            ..ExternalMetricValue::default()
        };
        let store = StoreSnapshot::from_parts(
            vec![StoredMetric {
                key: value.key(),
                value,
            }],
            BTreeMap::new(),
            Some(70),
        );
        let s = store.telemetry(&t, 100);
        assert_eq!((s.cache_hits, s.cache_misses, s.store_hits), (1, 2, 1));
        assert_eq!(s.store_write_errors, 1);
        assert_eq!((s.refreshes, s.last_refresh), (1, Some(90)));
        assert_eq!(s.store_copy_age_secs, Some(30));
        assert_eq!(s.metrics["external_metric-horizontal-n-h-m"].age_secs, 60);
    }
}
