//! Serving external metrics from the store, on every replica.
//!
//! A request `(namespace, metric, selector)` is answered from this replica's watched copy of
//! the ConfigMap:
//! - the metric name arrives lower-cased (client-go lower-cases the URL), so names are
//!   compared ignoring ASCII case; the answer carries the name as the HPA wrote it;
//! - entries are those whose labels match the selector. When the selector is made of
//!   equalities only (what an HPA's `matchLabels` becomes), only entries with exactly those
//!   labels are returned: the HPA sums every item it gets, so an entry of another HPA whose
//!   labels are a superset (`{app:web, env:prod}` for a request `app=web`) must not be added
//!   in. The Go DCA returns every match, and one entry per HPA sharing a query: both inflate
//!   the sum. Here entries sharing a query (same name and labels, other HPAs or namespaces)
//!   are returned once;
//! - too old is an error, never a silent 0: if this replica's copy has not changed for
//!   longer than `max(max_age, 3 × rollup) + query_validity_period`, or the value's time is
//!   older than that, the answer is `Stale` saying since when; an invalid entry is `Invalid`
//!   with the reason the leader stored.
//!
//! A metric the store does not have yet (an HPA created seconds ago) is looked up in the
//! HPA watcher's catalog, which is what prevents arbitrary requests from costing Datadog
//! queries: unknown → `NotFound`; unservable → `Invalid` with why. Then:
//! - on the **leader**, one on-demand query, shared by concurrent requests and cached
//!   briefly (moka, single-flight through `entry().or_try_insert_with`);
//! - on a **follower**, `Unavailable` (503) until the leader has written it: only the leader
//!   queries Datadog, so adding replicas never multiplies the Datadog API usage (rate limits
//!   are per organisation), and the wait is at most one refresh (the leader also refreshes
//!   as soon as it sees a new HPA).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::apimachinery::selector::Selector;
use crate::apiserver::seams::{Answer, Readiness};
use crate::autoscaling::hpa::{HpaCatalog, Wanted};
use crate::autoscaling::store::{StoreSnapshot, StoredMetric};
use crate::autoscaling::store_format::format_last_updated;
use crate::autoscaling::telemetry::Telemetry;
use crate::config::Aggregator;
use crate::datadog::response::effective_max_age;
use crate::datadog::{QueryOutcome, ResolveError, Resolver};
use crate::external_metrics::api::{MetricError, MetricSource, MetricValues};
use crate::external_metrics::types::{MetricValue, PublishedValue};

/// Outcomes of recent Datadog queries, by query. Filled by the refresher and by on-demand
/// lookups.
pub(crate) type OutcomeCache = moka::future::Cache<String, QueryOutcome>;

/// Most queries an [`OutcomeCache`] holds.
const OUTCOME_CACHE_CAPACITY: u64 = 10_000;

/// A cache whose values live `ttl`.
pub fn outcome_cache(ttl: Duration) -> OutcomeCache {
    moka::future::Cache::builder()
        .max_capacity(OUTCOME_CACHE_CAPACITY)
        .time_to_live(ttl)
        .build()
}

/// `max(max_age, 3 × rollup) + query_validity_period`, seconds: older is stale.
pub(crate) fn staleness_limit(
    max_age: Duration,
    rollup: Duration,
    query_validity_period: Duration,
) -> i64 {
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    effective_max_age(secs(max_age), secs(rollup)).saturating_add(secs(query_validity_period))
}

/// What the source needs from the settings.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub aggregator: Aggregator,
    pub rollup_secs: u32,
    /// See [`staleness_limit`].
    pub staleness_limit_secs: i64,
    /// `namespace/name` of the ConfigMap, for messages.
    pub configmap: String,
}

/// The answer from the store alone.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lookup {
    Values(Vec<MetricValue>),
    Error(MetricError),
    /// Nothing stored for this request (or the copy is not synced yet).
    Miss,
}

fn rfc3339(unix: i64) -> String {
    jiff::Timestamp::from_second(unix).map_or_else(|_| format!("@{unix}"), format_last_updated)
}

/// The items among `items` that answer `selector`: those whose labels match it, narrowed to
/// those with exactly its labels when it is made of equalities only.
fn select_by_labels<'a, T>(
    items: impl Iterator<Item = &'a T>,
    labels_of: impl Fn(&T) -> &BTreeMap<String, String>,
    selector: &Selector,
) -> Vec<&'a T> {
    let exact = selector.equality_labels();
    items
        .filter(|i| selector.matches(labels_of(i)))
        .filter(|i| exact.as_ref().is_none_or(|l| labels_of(i) == l))
        .collect()
}

/// One item per (metric name ignoring case, labels): the best by `rank` (highest wins).
fn one_per_query<'a, T, R: Ord>(
    items: Vec<&'a T>,
    name_of: impl Fn(&T) -> &str,
    labels_of: impl Fn(&T) -> &BTreeMap<String, String>,
    rank: impl Fn(&T) -> R,
) -> Vec<&'a T> {
    let mut best: BTreeMap<(String, &BTreeMap<String, String>), &'a T> = BTreeMap::new();
    for item in items {
        let key = (name_of(item).to_ascii_lowercase(), labels_of(item));
        match best.get(&key) {
            Some(b) if rank(b) >= rank(item) => {}
            _ => {
                best.insert(key, item);
            }
        }
    }
    best.into_values().collect()
}

/// Answers a request from a store snapshot as of `now` (pure).
pub(crate) fn lookup_store(
    store: &StoreSnapshot,
    namespace: &str,
    metric: &str,
    selector: &Selector,
    now: i64,
    settings: &SourceSettings,
) -> Lookup {
    if !store.synced {
        return Lookup::Miss;
    }
    let limit = settings.staleness_limit_secs;
    let matching = select_by_labels(
        store.with_metric_name(metric),
        |e: &StoredMetric| &e.value.labels,
        selector,
    );
    let chosen = one_per_query(
        matching,
        |e| &e.value.metric_name,
        |e| &e.value.labels,
        // Same namespace first (its own HPA's entry), then valid, then newest.
        |e| {
            (
                e.value.reference.namespace == namespace,
                e.value.valid,
                e.value.timestamp,
            )
        },
    );
    let Some(first) = chosen.first() else {
        return Lookup::Miss;
    };
    if let Some(seen) = store.seen_at {
        let age = now.saturating_sub(seen);
        if age > limit {
            return Lookup::Error(MetricError::Stale {
                metric: first.value.metric_name.clone(),
                detail: format!(
                    "this replica's copy of ConfigMap {} was last updated at {} ({age} s ago, over the {limit} s limit); is the cluster agent leader refreshing it?",
                    settings.configmap,
                    rfc3339(seen)
                ),
            });
        }
    }
    let mut values = Vec::with_capacity(chosen.len());
    for e in chosen {
        let v = &e.value;
        if !v.valid {
            let reason = store.reason(&e.key).map_or_else(
                || {
                    format!(
                        "the last Datadog query for it (at {}) gave no usable point; the cluster agent leader's logs say why",
                        rfc3339(v.timestamp)
                    )
                },
                str::to_owned,
            );
            return Lookup::Error(MetricError::Invalid {
                metric: v.metric_name.clone(),
                reason,
            });
        }
        if let Some(e) = stale_value(&v.metric_name, v.timestamp, now, limit) {
            return Lookup::Error(e);
        }
        values.push(MetricValue {
            metric_name: v.metric_name.clone(),
            metric_labels: v.labels.clone(),
            timestamp: v.timestamp,
            window_seconds: Some(i64::from(settings.rollup_secs)),
            value: v.value,
        });
    }
    Lookup::Values(values)
}

fn published(values: Vec<MetricValue>) -> MetricValues {
    values
        .into_iter()
        .map(|v| Arc::new(PublishedValue::new(v)))
        .collect()
}

fn stale_value(metric: &str, timestamp: i64, now: i64, limit: i64) -> Option<MetricError> {
    let age = now.saturating_sub(timestamp);
    (age > limit).then(|| MetricError::Stale {
        metric: metric.to_owned(),
        detail: format!(
            "its last value is from {} ({age} s ago), older than the {limit} s limit (max(max_age, 3 × rollup) + query_validity_period); check the cluster agent leader's logs for Datadog errors",
            rfc3339(timestamp)
        ),
    })
}

/// What the HPA catalog says about a request the store could not answer (pure).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CatalogAnswer<'a> {
    /// One wanted metric per distinct query.
    Wanted(Vec<&'a Wanted>),
    Error(MetricError),
}

/// Looks `(namespace, metric, selector)` up among what the HPAs want.
pub(crate) fn lookup_catalog<'a>(
    snapshot: &'a crate::autoscaling::hpa::CatalogSnapshot,
    namespace: &str,
    metric: &str,
    selector: &Selector,
) -> CatalogAnswer<'a> {
    let matching = select_by_labels(
        snapshot
            .wanted
            .iter()
            .filter(|w| w.metric_name.eq_ignore_ascii_case(metric)),
        |w: &Wanted| &w.labels,
        selector,
    );
    let chosen = one_per_query(
        matching,
        |w| &w.metric_name,
        |w| &w.labels,
        |w| w.reference.namespace == namespace,
    );
    if !chosen.is_empty() {
        return CatalogAnswer::Wanted(chosen);
    }
    if let Some(p) = snapshot
        .problems
        .iter()
        .find(|p| p.reference.namespace == namespace && p.metric_name.eq_ignore_ascii_case(metric))
    {
        return CatalogAnswer::Error(MetricError::Invalid {
            metric: p.metric_name.clone(),
            reason: p.message.clone(),
        });
    }
    CatalogAnswer::Error(MetricError::NotFound {
        namespace: namespace.to_owned(),
        metric: metric.to_owned(),
    })
}

/// Why an on-demand query produced nothing.
#[derive(Debug, Clone, thiserror::Error)]
enum OnDemandError {
    #[error("{0}")]
    Resolve(#[from] ResolveError),
    #[error("deferred")]
    Deferred,
}

/// The [`MetricSource`] of the Datadog Cluster Agent.
pub struct DatadogMetricSource {
    store: watch::Receiver<Arc<StoreSnapshot>>,
    catalog: HpaCatalog,
    leader: watch::Receiver<bool>,
    resolver: Arc<dyn Resolver>,
    cache: OutcomeCache,
    telemetry: Arc<Telemetry>,
    settings: SourceSettings,
}

impl std::fmt::Debug for DatadogMetricSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatadogMetricSource")
            .field("catalog", &self.catalog)
            .field("leader", &*self.leader.borrow())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl DatadogMetricSource {
    pub fn new(
        store: watch::Receiver<Arc<StoreSnapshot>>,
        catalog: HpaCatalog,
        leader: watch::Receiver<bool>,
        resolver: Arc<dyn Resolver>,
        cache: OutcomeCache,
        telemetry: Arc<Telemetry>,
        settings: SourceSettings,
    ) -> Self {
        DatadogMetricSource {
            store,
            catalog,
            leader,
            resolver,
            cache,
            telemetry,
            settings,
        }
    }

    /// This replica's copy of the store.
    pub fn store(&self) -> Arc<StoreSnapshot> {
        Arc::clone(&self.store.borrow())
    }

    /// How it builds queries and judges staleness.
    pub fn settings(&self) -> &SourceSettings {
        &self.settings
    }

    /// The HPAs this replica knows.
    pub fn catalog(&self) -> &HpaCatalog {
        &self.catalog
    }

    /// Counters and per-metric ages, now.
    pub fn telemetry(&self) -> crate::autoscaling::telemetry::TelemetrySnapshot {
        self.store()
            .telemetry(&self.telemetry, jiff::Timestamp::now().as_second())
    }

    /// Ready to serve once every HPA was listed and the store copy synced; before that,
    /// answers may be `Unavailable` for metrics that exist.
    pub fn readiness(&self) -> Readiness {
        let mut missing = Vec::new();
        if !self.catalog.is_ready() {
            missing.push("the HPA list is not synced yet (check the HPA watch in the logs and the RBAC for horizontalpodautoscalers)".to_owned());
        }
        if !self.store.borrow().synced {
            missing.push(format!(
                "the copy of ConfigMap {} is not synced yet (check the RBAC for configmaps)",
                self.settings.configmap
            ));
        }
        Readiness {
            ready: missing.is_empty(),
            reason: missing.join("; "),
        }
    }

    /// Answers a request as of `now` (unix seconds).
    pub async fn get_at(
        &self,
        namespace: &str,
        metric: &str,
        selector: &Selector,
        now: i64,
    ) -> Result<MetricValues, MetricError> {
        self.answer_at(namespace, metric, selector, now)
            .wait()
            .await
    }

    /// [`get_at`](Self::get_at), answered at once from the store when it holds the metric;
    /// only a miss waits (for the HPA catalog and Datadog).
    fn answer_at<'a>(
        &'a self,
        namespace: &'a str,
        metric: &'a str,
        selector: &'a Selector,
        now: i64,
    ) -> Answer<'a, Result<MetricValues, MetricError>> {
        let store = self.store();
        match lookup_store(&store, namespace, metric, selector, now, &self.settings) {
            Lookup::Values(values) => {
                self.telemetry.store_hit();
                Answer::ready(Ok(published(values)))
            }
            Lookup::Error(e) => Answer::ready(Err(e)),
            Lookup::Miss => Answer::later(move || async move {
                let values = self
                    .on_miss(&store, namespace, metric, selector, now)
                    .await?;
                Ok(published(values))
            }),
        }
    }

    async fn on_miss(
        &self,
        store: &StoreSnapshot,
        namespace: &str,
        metric: &str,
        selector: &Selector,
        now: i64,
    ) -> Result<Vec<MetricValue>, MetricError> {
        if !self.catalog.is_ready() {
            return Err(MetricError::Unavailable(
                "the cluster agent has not finished listing HPAs yet".to_owned(),
            ));
        }
        let snapshot = self.catalog.snapshot();
        let wanted = match lookup_catalog(&snapshot, namespace, metric, selector) {
            CatalogAnswer::Wanted(w) => w,
            CatalogAnswer::Error(e) => return Err(e),
        };
        if !*self.leader.borrow() {
            let why = if store.synced {
                "not yet computed by the leader"
            } else {
                "this replica's copy of the metric store is not synced yet"
            };
            let name = wanted.first().map_or(metric, |w| w.metric_name.as_str());
            return Err(MetricError::Unavailable(format!(
                "metric {name}: {why}; retry shortly"
            )));
        }
        let limit = self.settings.staleness_limit_secs;
        let mut values = Vec::with_capacity(wanted.len());
        for w in wanted {
            let query = w.query(self.settings.aggregator, self.settings.rollup_secs);
            match self.on_demand(&w.metric_name, query, now).await? {
                QueryOutcome::Valid { value, timestamp } => {
                    if let Some(e) = stale_value(&w.metric_name, timestamp, now, limit) {
                        return Err(e);
                    }
                    values.push(MetricValue {
                        metric_name: w.metric_name.clone(),
                        metric_labels: w.labels.clone(),
                        timestamp,
                        window_seconds: Some(i64::from(self.settings.rollup_secs)),
                        value,
                    });
                }
                QueryOutcome::Invalid { reason, .. } => {
                    return Err(MetricError::Invalid {
                        metric: w.metric_name.clone(),
                        reason,
                    });
                }
            }
        }
        Ok(values)
    }

    /// One query, single-flight: concurrent callers share one resolution, and its outcome
    /// is kept for the cache's TTL. Errors are not cached.
    async fn on_demand(
        &self,
        metric: &str,
        query: String,
        now: i64,
    ) -> Result<QueryOutcome, MetricError> {
        let resolver = Arc::clone(&self.resolver);
        let q = query.clone();
        let entry = self
            .cache
            .entry(query)
            .or_try_insert_with(async move {
                let outcomes = resolver.resolve(std::slice::from_ref(&q), now).await?;
                outcomes.get(&q).cloned().ok_or(OnDemandError::Deferred)
            })
            .await;
        match entry {
            Ok(e) => {
                if e.is_fresh() {
                    self.telemetry.cache_miss();
                } else {
                    self.telemetry.cache_hit();
                }
                Ok(e.into_value())
            }
            Err(e) => {
                self.telemetry.cache_miss();
                Err(match &*e {
                    OnDemandError::Deferred => MetricError::Unavailable(format!(
                        "metric {metric}: the Datadog query was deferred (rate-limit budget or backoff); retry shortly"
                    )),
                    OnDemandError::Resolve(ResolveError::Forbidden(m)) => MetricError::Internal(
                        format!("metric {metric}: Datadog refused the credentials: {m}"),
                    ),
                    OnDemandError::Resolve(r) => {
                        MetricError::Unavailable(format!("metric {metric}: {r}"))
                    }
                })
            }
        }
    }
}

impl MetricSource for DatadogMetricSource {
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        metric: &'a str,
        selector: &'a Selector,
    ) -> Answer<'a, Result<MetricValues, MetricError>> {
        self.answer_at(
            namespace,
            metric,
            selector,
            jiff::Timestamp::now().as_second(),
        )
    }
}

#[cfg(test)]
mod tests {
    use futures::future::BoxFuture;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::autoscaling::hpa::{CatalogSnapshot, Problem, ProblemKind};
    use crate::autoscaling::store_format::{ExternalMetricValue, ObjectReference};
    use serde_json::json;

    const NOW: i64 = 1_700_000_000;
    const LIMIT: i64 = 150;

    fn settings() -> SourceSettings {
        SourceSettings {
            aggregator: Aggregator::Avg,
            rollup_secs: 30,
            staleness_limit_secs: LIMIT,
            configmap: "datadog/datadog-custom-metrics".into(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    struct E {
        ns: &'static str,
        hpa: &'static str,
        metric: &'static str,
        labels: &'static [(&'static str, &'static str)],
        value: f64,
        ts: i64,
        valid: bool,
    }

    fn e(ns: &'static str, hpa: &'static str, metric: &'static str) -> E {
        E {
            ns,
            hpa,
            metric,
            labels: &[],
            value: 1.0,
            ts: NOW - 60,
            valid: true,
        }
    }

    impl E {
        fn l(mut self, labels: &'static [(&'static str, &'static str)]) -> Self {
            self.labels = labels;
            self
        }
        fn v(mut self, value: f64) -> Self {
            self.value = value;
            self
        }
        fn ts(mut self, ts: i64) -> Self {
            self.ts = ts;
            self
        }
        fn invalid(mut self) -> Self {
            self.valid = false;
            self
        }
        fn stored(&self) -> StoredMetric {
            let value = ExternalMetricValue {
                metric_name: self.metric.into(),
                labels: labels(self.labels),
                timestamp: self.ts,
                reference: ObjectReference::horizontal(self.ns, self.hpa, "u"),
                value: self.value,
                valid: self.valid,
            };
            StoredMetric {
                key: value.key(),
                value,
            }
        }
    }

    fn store(entries: &[E], seen_at: i64) -> StoreSnapshot {
        StoreSnapshot::from_parts(
            entries.iter().map(E::stored).collect(),
            BTreeMap::new(),
            Some(seen_at),
        )
    }

    fn sel(s: &str) -> Selector {
        Selector::parse(s).unwrap()
    }

    fn values(l: Lookup) -> Vec<(String, f64)> {
        match l {
            Lookup::Values(v) => v.into_iter().map(|v| (v.metric_name, v.value)).collect(),
            other => panic!("expected values, got {other:?}"),
        }
    }

    #[test]
    fn staleness_limit_from_settings() {
        let s = Duration::from_secs;
        assert_eq!(staleness_limit(s(120), s(30), s(30)), 150);
        assert_eq!(staleness_limit(s(120), s(60), s(30)), 210);
        assert_eq!(staleness_limit(s(0), s(0), s(0)), 0);
        assert_eq!(staleness_limit(s(u64::MAX), s(1), s(1)), i64::MAX);
    }

    #[test]
    fn case_insensitive_names_keep_the_hpa_spelling() {
        let st = store(&[e("shop", "web", "Nginx.Net.Request_Per_S").v(7.0)], NOW);
        for requested in [
            "nginx.net.request_per_s",
            "Nginx.Net.Request_Per_S",
            "NGINX.NET.REQUEST_PER_S",
        ] {
            assert_eq!(
                values(lookup_store(
                    &st,
                    "shop",
                    requested,
                    &Selector::everything(),
                    NOW,
                    &settings()
                )),
                [("Nginx.Net.Request_Per_S".to_owned(), 7.0)],
                "{requested}"
            );
        }
        assert_eq!(
            lookup_store(
                &st,
                "shop",
                "nginx.net.request",
                &Selector::everything(),
                NOW,
                &settings()
            ),
            Lookup::Miss
        );
    }

    #[test]
    fn selector_filtering() {
        let st = store(
            &[
                e("shop", "a", "m").l(&[("app", "web")]).v(1.0),
                e("shop", "b", "m")
                    .l(&[("app", "web"), ("env", "prod")])
                    .v(2.0),
                e("shop", "c", "m").l(&[("app", "api")]).v(3.0),
                e("shop", "d", "m").v(4.0),
                e("shop", "e", "m").l(&[("tier", "1")]).v(5.0),
                e("shop", "f", "m").l(&[("tier", "2")]).v(6.0),
            ],
            NOW,
        );
        let cases: &[(&str, &[f64])] = &[
            // Equalities: exactly those labels, not supersets (the HPA would sum them).
            ("app=web", &[1.0]),
            ("app==web", &[1.0]),
            ("app in (web)", &[1.0]),
            ("app=web,env=prod", &[2.0]),
            ("env in (prod),app=web", &[2.0]),
            ("app=api", &[3.0]),
            // No selector: the entry without labels.
            ("", &[4.0]),
            // Set-based selectors: every match, as Selector::matches says.
            ("app in (web,api)", &[1.0, 2.0, 3.0]),
            ("app,env!=prod", &[1.0, 3.0]),
            ("tier>1", &[6.0]),
            ("!app,tier", &[5.0, 6.0]),
        ];
        for (s, want) in cases {
            let mut got: Vec<f64> =
                values(lookup_store(&st, "shop", "m", &sel(s), NOW, &settings()))
                    .into_iter()
                    .map(|(_, v)| v)
                    .collect();
            got.sort_by(f64::total_cmp);
            assert_eq!(&got, want, "selector {s:?}");
        }
        for s in ["app=nope", "app=web,env=dev", "app notin (web,api),env"] {
            assert_eq!(
                lookup_store(&st, "shop", "m", &sel(s), NOW, &settings()),
                Lookup::Miss,
                "{s}"
            );
        }
    }

    #[test]
    fn hpas_sharing_a_query_are_served_once() {
        let st = store(
            &[
                e("shop", "a", "m").l(&[("app", "web")]).v(1.0),
                e("shop", "b", "m").l(&[("app", "web")]).v(1.0),
                e("other", "c", "M").l(&[("app", "web")]).v(1.0),
            ],
            NOW,
        );
        let l = lookup_store(&st, "shop", "m", &sel("app=web"), NOW, &settings());
        let Lookup::Values(v) = l else {
            panic!("{l:?}")
        };
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].metric_name, "m");
        assert_eq!(v[0].metric_labels, labels(&[("app", "web")]));
        assert_eq!(v[0].timestamp, NOW - 60);
        assert_eq!(v[0].window_seconds, Some(30));
        // The requester's own namespace wins over a fresher entry elsewhere.
        let st = store(
            &[
                e("shop", "a", "m").v(1.0).ts(NOW - 100),
                e("other", "c", "m").v(2.0).ts(NOW - 10),
            ],
            NOW,
        );
        assert_eq!(
            values(lookup_store(&st, "shop", "m", &sel(""), NOW, &settings())),
            [("m".into(), 1.0)]
        );
        assert_eq!(
            values(lookup_store(&st, "other", "m", &sel(""), NOW, &settings())),
            [("m".into(), 2.0)]
        );
        assert_eq!(
            values(lookup_store(&st, "third", "m", &sel(""), NOW, &settings())),
            [("m".into(), 2.0)]
        );
    }

    #[test]
    fn staleness_boundaries() {
        // The value: exactly at the limit is served, one second past is stale.
        let at_limit = store(&[e("shop", "a", "m").ts(NOW - LIMIT).v(3.0)], NOW);
        assert_eq!(
            values(lookup_store(
                &at_limit,
                "shop",
                "m",
                &sel(""),
                NOW,
                &settings()
            )),
            [("m".into(), 3.0)]
        );
        let past = store(&[e("shop", "a", "m").ts(NOW - LIMIT - 1)], NOW);
        match lookup_store(&past, "shop", "m", &sel(""), NOW, &settings()) {
            Lookup::Error(MetricError::Stale { metric, detail }) => {
                assert_eq!(metric, "m");
                assert!(detail.contains("2023-11-14T22:10:49Z"), "{detail}");
                assert!(detail.contains("151 s ago"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        // The replica's copy: same boundary.
        let entries = [e("shop", "a", "m").ts(NOW)];
        assert!(matches!(
            lookup_store(
                &store(&entries, NOW - LIMIT),
                "shop",
                "m",
                &sel(""),
                NOW,
                &settings()
            ),
            Lookup::Values(_)
        ));
        match lookup_store(
            &store(&entries, NOW - LIMIT - 1),
            "shop",
            "m",
            &sel(""),
            NOW,
            &settings(),
        ) {
            Lookup::Error(MetricError::Stale { detail, .. }) => {
                assert!(
                    detail.contains("copy of ConfigMap datadog/datadog-custom-metrics"),
                    "{detail}"
                );
                assert!(
                    detail.contains("last updated at 2023-11-14T22:10:49Z"),
                    "{detail}"
                );
            }
            other => panic!("{other:?}"),
        }
        // A stale copy does not turn a miss into an error (the catalog decides).
        assert_eq!(
            lookup_store(
                &store(&entries, NOW - 10_000),
                "shop",
                "x",
                &sel(""),
                NOW,
                &settings()
            ),
            Lookup::Miss
        );
        // A value from the future (clock skew) is not stale.
        assert!(matches!(
            lookup_store(
                &store(&[e("shop", "a", "m").ts(NOW + 30)], NOW),
                "shop",
                "m",
                &sel(""),
                NOW,
                &settings()
            ),
            Lookup::Values(_)
        ));
    }

    #[test]
    fn invalid_entries_say_why() {
        let entries = vec![e("shop", "a", "m").invalid().ts(NOW - 5).stored()];
        let key = entries[0].key.clone();
        let with_reason = StoreSnapshot::from_parts(
            entries.clone(),
            BTreeMap::from([(key, "no serie returned for this query".to_owned())]),
            Some(NOW),
        );
        assert_eq!(
            lookup_store(&with_reason, "shop", "m", &sel(""), NOW, &settings()),
            Lookup::Error(MetricError::Invalid {
                metric: "m".into(),
                reason: "no serie returned for this query".into()
            })
        );
        let without = StoreSnapshot::from_parts(entries, BTreeMap::new(), Some(NOW));
        match lookup_store(&without, "shop", "m", &sel(""), NOW, &settings()) {
            Lookup::Error(MetricError::Invalid { reason, .. }) => {
                assert!(
                    reason.contains("2023-11-14T22:13:15Z") && reason.contains("logs"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Unsynced copy: a miss, never an answer.
        let mut unsynced = store(&[e("shop", "a", "m")], NOW);
        unsynced.synced = false;
        assert_eq!(
            lookup_store(&unsynced, "shop", "m", &sel(""), NOW, &settings()),
            Lookup::Miss
        );
    }

    fn catalog_snapshot() -> CatalogSnapshot {
        let w = |ns: &str, name: &str, metric: &str, l: &[(&str, &str)]| Wanted {
            metric_name: metric.into(),
            labels: labels(l),
            reference: ObjectReference::horizontal(ns, name, "u"),
        };
        CatalogSnapshot {
            wanted: vec![
                w("shop", "a", "Queue.Depth", &[("q", "orders")]),
                w("shop", "b", "Queue.Depth", &[("q", "orders")]),
                w("other", "c", "Queue.Depth", &[("q", "orders"), ("x", "1")]),
            ],
            problems: vec![Problem {
                metric_name: "bad-name".into(),
                kind: ProblemKind::InvalidMetricName,
                message: "External metric name \"bad-name\" is invalid".into(),
                reference: ObjectReference::horizontal("shop", "d", "u"),
            }],
        }
    }

    #[test]
    fn catalog_lookup() {
        let snap = catalog_snapshot();
        match lookup_catalog(&snap, "shop", "queue.depth", &sel("q=orders")) {
            CatalogAnswer::Wanted(w) => {
                assert_eq!(w.len(), 1);
                assert_eq!(w[0].metric_name, "Queue.Depth");
                assert_eq!(w[0].reference.namespace, "shop");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            lookup_catalog(&snap, "shop", "queue.depth", &sel("q=orders,x=1")),
            CatalogAnswer::Wanted(w) if w.len() == 1 && w[0].reference.name == "c"
        ));
        assert_eq!(
            lookup_catalog(&snap, "shop", "queue.depth", &sel("q=other")),
            CatalogAnswer::Error(MetricError::NotFound {
                namespace: "shop".into(),
                metric: "queue.depth".into()
            })
        );
        assert_eq!(
            lookup_catalog(&snap, "shop", "bad-name", &sel("")),
            CatalogAnswer::Error(MetricError::Invalid {
                metric: "bad-name".into(),
                reason: "External metric name \"bad-name\" is invalid".into()
            })
        );
        // Problems are per namespace: elsewhere it is simply unknown.
        assert!(matches!(
            lookup_catalog(&snap, "other", "bad-name", &sel("")),
            CatalogAnswer::Error(MetricError::NotFound { .. })
        ));
    }

    /// Counts calls; answers each query with its configured outcome after a pause, so that
    /// concurrent requests overlap.
    struct FakeResolver {
        calls: AtomicUsize,
        seen: Mutex<Vec<Vec<String>>>,
        outcome: Option<QueryOutcome>,
        error: Option<ResolveError>,
    }

    impl FakeResolver {
        fn new(outcome: Option<QueryOutcome>, error: Option<ResolveError>) -> Arc<Self> {
            Arc::new(FakeResolver {
                calls: AtomicUsize::new(0),
                seen: Mutex::new(Vec::new()),
                outcome,
                error,
            })
        }
    }

    impl Resolver for FakeResolver {
        fn resolve<'a>(
            &'a self,
            queries: &'a [String],
            _now: i64,
        ) -> BoxFuture<'a, Result<BTreeMap<String, QueryOutcome>, ResolveError>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                self.seen.lock().unwrap().push(queries.to_vec());
                tokio::time::sleep(Duration::from_millis(50)).await;
                if let Some(e) = &self.error {
                    return Err(e.clone());
                }
                Ok(queries
                    .iter()
                    .filter_map(|q| self.outcome.clone().map(|o| (q.clone(), o)))
                    .collect())
            })
        }
    }

    fn hpa(
        ns: &str,
        name: &str,
        metric: &str,
        match_labels: serde_json::Value,
    ) -> kube::api::DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "autoscaling/v2beta2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "namespace": ns, "uid": format!("{ns}-{name}"), "generation": 1},
            "spec": {"metrics": [{"type": "External", "external": {"metric": {
                "name": metric, "selector": {"matchLabels": match_labels}}}}]}
        }))
        .unwrap()
    }

    fn source(
        store: StoreSnapshot,
        hpas: Vec<kube::api::DynamicObject>,
        leader: bool,
        resolver: Arc<FakeResolver>,
    ) -> (DatadogMetricSource, watch::Sender<bool>) {
        let (_store_tx, store_rx) = watch::channel(Arc::new(store));
        let (leader_tx, leader_rx) = watch::channel(leader);
        let s = DatadogMetricSource::new(
            store_rx,
            HpaCatalog::from_objects(hpas),
            leader_rx,
            resolver,
            outcome_cache(Duration::from_secs(30)),
            Arc::new(Telemetry::default()),
            settings(),
        );
        (s, leader_tx)
    }

    #[tokio::test]
    async fn store_values_win_without_any_query() {
        let resolver = FakeResolver::new(None, None);
        let st = store(&[e("shop", "a", "m").l(&[("app", "web")]).v(9.0)], NOW);
        let (s, _l) = source(st, vec![], false, resolver.clone());
        let v = s.get_at("shop", "m", &sel("app=web"), NOW).await.unwrap();
        assert_eq!(v[0].value, 9.0);
        assert_eq!(resolver.calls.load(Ordering::SeqCst), 0);
        assert_eq!(s.telemetry().store_hits, 1);
    }

    #[tokio::test]
    async fn leader_queries_once_for_concurrent_requests() {
        let resolver = FakeResolver::new(
            Some(QueryOutcome::Valid {
                value: 42.0,
                timestamp: NOW - 30,
            }),
            None,
        );
        let (s, _l) = source(
            StoreSnapshot::absent(),
            vec![hpa("shop", "a", "Queue.Depth", json!({"q": "orders"}))],
            true,
            resolver.clone(),
        );
        let selector = sel("q=orders");
        let reqs = (0..8).map(|_| s.get_at("shop", "queue.depth", &selector, NOW));
        let results = futures::future::join_all(reqs).await;
        for r in results {
            let v = r.unwrap();
            assert_eq!(v.len(), 1);
            assert_eq!(v[0].metric_name, "Queue.Depth");
            assert_eq!((v[0].value, v[0].timestamp), (42.0, NOW - 30));
        }
        assert_eq!(resolver.calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            resolver.seen.lock().unwrap()[0],
            ["avg:Queue.Depth{q:orders}.rollup(30)"]
        );
        // Later requests hit the cache.
        s.get_at("shop", "queue.depth", &selector, NOW)
            .await
            .unwrap();
        assert_eq!(resolver.calls.load(Ordering::SeqCst), 1);
        let t = s.telemetry();
        assert_eq!((t.cache_misses, t.cache_hits), (1, 8));
    }

    #[tokio::test]
    async fn follower_never_queries() {
        let resolver = FakeResolver::new(Some(QueryOutcome::invalid("x")), None);
        let (s, leader) = source(
            StoreSnapshot::absent(),
            vec![hpa("shop", "a", "m", json!({"app": "web"}))],
            false,
            resolver.clone(),
        );
        match s.get_at("shop", "m", &sel("app=web"), NOW).await {
            Err(MetricError::Unavailable(m)) => {
                assert!(m.contains("not yet computed by the leader"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(resolver.calls.load(Ordering::SeqCst), 0);
        // Unknown metrics are NotFound whatever the role.
        assert!(matches!(
            s.get_at("shop", "unknown", &sel(""), NOW).await,
            Err(MetricError::NotFound { .. })
        ));
        // Promoted: now it asks, and an invalid outcome is an Invalid error with the reason.
        leader.send_replace(true);
        assert_eq!(
            s.get_at("shop", "m", &sel("app=web"), NOW).await,
            Err(MetricError::Invalid {
                metric: "m".into(),
                reason: "x".into()
            })
        );
        assert_eq!(resolver.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn on_demand_errors_are_not_cached() {
        let resolver = FakeResolver::new(
            None,
            Some(ResolveError::RateLimited {
                retry_after_secs: 7,
            }),
        );
        let (s, _l) = source(
            StoreSnapshot::absent(),
            vec![hpa("shop", "a", "m", json!({}))],
            true,
            resolver.clone(),
        );
        for _ in 0..2 {
            match s.get_at("shop", "m", &sel(""), NOW).await {
                Err(MetricError::Unavailable(m)) => assert!(m.contains("rate limit"), "{m}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(resolver.calls.load(Ordering::SeqCst), 2);

        // Deferred (absent from the answer): unavailable, not a zero.
        let deferred = FakeResolver::new(None, None);
        let (s, _l) = source(
            StoreSnapshot::absent(),
            vec![hpa("shop", "a", "m", json!({}))],
            true,
            deferred,
        );
        assert!(
            matches!(s.get_at("shop", "m", &sel(""), NOW).await, Err(MetricError::Unavailable(m)) if m.contains("deferred"))
        );

        // A stale on-demand point is an error too.
        let old = FakeResolver::new(
            Some(QueryOutcome::Valid {
                value: 1.0,
                timestamp: NOW - LIMIT - 1,
            }),
            None,
        );
        let (s, _l) = source(
            StoreSnapshot::absent(),
            vec![hpa("shop", "a", "m", json!({}))],
            true,
            old,
        );
        assert!(matches!(
            s.get_at("shop", "m", &sel(""), NOW).await,
            Err(MetricError::Stale { .. })
        ));
    }

    #[tokio::test]
    async fn unsynced_catalog_is_unavailable() {
        let (_w, reader) = {
            let w = kube::runtime::reflector::store::Writer::<kube::api::DynamicObject>::new(
                crate::autoscaling::hpa::hpa_resource(crate::k8s::HpaVersion::V2beta2),
            );
            let r = w.as_reader();
            (w, r)
        };
        let catalog = HpaCatalog::new(reader, Arc::default());
        let (_st, store_rx) = watch::channel(Arc::new(StoreSnapshot::absent()));
        let (_l, leader_rx) = watch::channel(true);
        let s = DatadogMetricSource::new(
            store_rx,
            catalog,
            leader_rx,
            FakeResolver::new(None, None),
            outcome_cache(Duration::from_secs(30)),
            Arc::new(Telemetry::default()),
            settings(),
        );
        assert!(matches!(
            s.get_at("shop", "m", &sel(""), NOW).await,
            Err(MetricError::Unavailable(_))
        ));
        let r = s.readiness();
        assert!(!r.ready);
        assert!(r.reason.contains("HPA list"), "{}", r.reason);
        assert!(!r.reason.contains("ConfigMap"), "{}", r.reason);
        let (ready, _l) = source(
            StoreSnapshot::absent(),
            vec![],
            true,
            FakeResolver::new(None, None),
        );
        assert_eq!(
            ready.readiness(),
            Readiness {
                ready: true,
                reason: String::new()
            }
        );
    }
}
