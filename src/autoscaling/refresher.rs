//! The leader's loop: what the HPAs want → Datadog queries → the ConfigMap store
//! (dca-contract §3.2 `processingLoop`, §3.4).
//!
//! Every `refresh_period`, the wanted metrics of every HPA become queries
//! (`build_query(aggregator, metric as written, labels, rollup)`), identical queries are
//! asked once whatever the number of HPAs sharing them, and each outcome is applied to every
//! entry of its query. A query the resolver deferred (rate-limit budget, backoff) keeps its
//! entries' previous values, which then age until the source calls them stale; a failed
//! resolution does the same rather than zeroing everything.
//!
//! The whole set of entries is written each time, so an entry whose HPA is gone, or whose
//! metric changed, is collected at the next write. Writes also happen:
//! - every `hpa_watcher_gc_period` without querying, when something is to be collected
//!   (in case `refresh_period` is the longer of the two);
//! - shortly after the HPA watcher reports a change, querying only the queries no entry has
//!   a value for yet, so a new HPA gets its value without waiting a whole period.
//!
//! Nothing is collected before the HPA watcher has listed every HPA once, since an HPA
//! missing from an incomplete list is not a deleted one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::autoscaling::AutoscalingError;
use crate::autoscaling::hpa::{HpaCatalog, Wanted};
use crate::autoscaling::source::OutcomeCache;
use crate::autoscaling::store::{StoreSnapshot, StoreWriter};
use crate::autoscaling::store_format::ExternalMetricValue;
use crate::autoscaling::telemetry::Telemetry;
use crate::config::Aggregator;
use crate::datadog::query::build_query;
use crate::datadog::{QueryOutcome, Resolver};

/// Reason stored for an entry no query has answered yet.
pub(crate) const NOT_YET_QUERIED: &str = "not queried from Datadog yet (new metric, or its query was deferred by the rate-limit budget or a backoff)";
/// Pause after an HPA change before refreshing, so a burst of changes costs one write.
const CHANGE_DEBOUNCE: Duration = Duration::from_secs(1);

/// The store after one cycle, before and after querying.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Every entry to write, by key.
    pub entries: BTreeMap<String, ExternalMetricValue>,
    /// Why invalid entries are invalid.
    pub reasons: BTreeMap<String, String>,
    /// Every distinct query, in key order of their first entry.
    pub queries: Vec<String>,
    /// The queries no previous entry had a value for.
    pub new_queries: Vec<String>,
    /// Keys of the previous store that are not written again.
    pub removed: Vec<String>,
    /// Keys that were not in the previous store.
    pub added: Vec<String>,
    query_of: BTreeMap<String, String>,
    fresh: BTreeSet<String>,
}

/// What the resolver said for a cycle.
#[derive(Debug, Clone, Copy)]
pub enum Resolution<'a> {
    /// Outcomes by query; absent queries were deferred.
    Resolved(&'a BTreeMap<String, QueryOutcome>),
    /// The whole resolution failed with this message.
    Failed(&'a str),
    /// Nothing was asked (garbage collection only).
    NotAsked,
}

/// Builds the next store from what the HPAs want and the previous store (pure).
///
/// An entry starts from the previous value of the same query if any entry had one (so a
/// second HPA sharing a query, or an HPA re-created under the same name, inherits it),
/// otherwise as a placeholder (invalid, 0, `ts = now`), as Go does.
pub fn plan(
    wanted: &[Wanted],
    previous: &StoreSnapshot,
    aggregator: Aggregator,
    rollup_secs: u32,
    now: i64,
) -> Plan {
    let query = |name: &str, labels| build_query(aggregator, name, labels, rollup_secs);
    // The best previous state of each query: valid first, then the newest.
    let mut by_query: BTreeMap<String, (&ExternalMetricValue, Option<&str>)> = BTreeMap::new();
    for e in &previous.entries {
        let q = query(&e.value.metric_name, &e.value.labels);
        let better = by_query
            .get(&q)
            .is_none_or(|(b, _)| (e.value.valid, e.value.timestamp) > (b.valid, b.timestamp));
        if better {
            by_query.insert(q, (&e.value, previous.reason(&e.key)));
        }
    }
    let mut out = Plan {
        entries: BTreeMap::new(),
        reasons: BTreeMap::new(),
        queries: Vec::new(),
        new_queries: Vec::new(),
        removed: Vec::new(),
        added: Vec::new(),
        query_of: BTreeMap::new(),
        fresh: BTreeSet::new(),
    };
    let mut seen_queries = BTreeSet::new();
    for w in wanted {
        let key = w.key();
        if out.entries.contains_key(&key) {
            continue;
        }
        let q = query(&w.metric_name, &w.labels);
        let mut entry = ExternalMetricValue::placeholder(
            &w.metric_name,
            w.labels.clone(),
            w.reference.clone(),
            now,
        );
        match by_query.get(&q) {
            Some((prev, reason)) => {
                entry.value = prev.value;
                entry.timestamp = prev.timestamp;
                entry.valid = prev.valid;
                if let (false, Some(r)) = (prev.valid, reason) {
                    out.reasons.insert(key.clone(), (*r).to_owned());
                }
            }
            None => {
                out.fresh.insert(key.clone());
                out.reasons.insert(key.clone(), NOT_YET_QUERIED.to_owned());
            }
        }
        if seen_queries.insert(q.clone()) {
            if !by_query.contains_key(&q) {
                out.new_queries.push(q.clone());
            }
            out.queries.push(q.clone());
        }
        out.query_of.insert(key.clone(), q);
        out.entries.insert(key, entry);
    }
    out.removed = previous
        .entries
        .iter()
        .map(|e| &e.key)
        .chain(&previous.unusable_keys)
        .filter(|k| !out.entries.contains_key(*k))
        .cloned()
        .collect();
    let before: BTreeSet<&String> = previous.entries.iter().map(|e| &e.key).collect();
    out.added = out
        .entries
        .keys()
        .filter(|k| !before.contains(k))
        .cloned()
        .collect();
    out
}

impl Plan {
    /// Applies what the resolver said (pure). Entries of deferred queries, and all entries
    /// when the resolution failed, keep their values.
    pub fn apply(&mut self, resolution: Resolution<'_>, now: i64) {
        for (key, entry) in &mut self.entries {
            let Some(q) = self.query_of.get(key) else {
                continue;
            };
            match resolution {
                Resolution::Resolved(outcomes) => {
                    let Some(outcome) = outcomes.get(q) else {
                        continue;
                    };
                    let outcome = sanitize(outcome);
                    entry.apply_outcome(Some(&outcome), now);
                    match outcome {
                        QueryOutcome::Valid { .. } => {
                            self.reasons.remove(key);
                        }
                        QueryOutcome::Invalid { reason, .. } => {
                            self.reasons.insert(key.clone(), reason);
                        }
                    }
                    self.fresh.remove(key);
                }
                Resolution::Failed(message) => {
                    if !entry.valid {
                        self.reasons.insert(
                            key.clone(),
                            format!("the last Datadog query failed: {message}"),
                        );
                    }
                }
                Resolution::NotAsked => {}
            }
        }
    }
}

/// NaN and infinities have no JSON form and no meaning for an HPA.
fn sanitize(outcome: &QueryOutcome) -> QueryOutcome {
    match outcome {
        QueryOutcome::Valid { value, .. } if !value.is_finite() => {
            QueryOutcome::invalid(format!("Datadog returned a non-finite value ({value})"))
        }
        QueryOutcome::Invalid { reason, value } => QueryOutcome::Invalid {
            reason: reason.clone(),
            value: value.filter(|v| v.is_finite()),
        },
        other => other.clone(),
    }
}

/// What kind of cycle to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cycle {
    /// Query everything.
    Full,
    /// Query only what has no value yet; write only if something changed.
    New,
    /// Query nothing; write only if something is to be collected.
    Gc,
}

/// Refresher settings.
#[derive(Debug, Clone)]
pub(crate) struct RefreshSettings {
    pub aggregator: Aggregator,
    pub rollup_secs: u32,
    pub refresh_period: Duration,
    pub gc_period: Duration,
    pub namespace: String,
    pub configmap: String,
}

pub(crate) struct Refresher {
    pub client: kube::Client,
    pub catalog: HpaCatalog,
    pub resolver: Arc<dyn Resolver>,
    pub cache: OutcomeCache,
    pub telemetry: Arc<Telemetry>,
    pub settings: RefreshSettings,
}

fn now_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl Refresher {
    /// Refreshes while this replica leads; waits while it does not.
    pub(crate) async fn run(
        self,
        mut leader: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) -> Result<(), AutoscalingError> {
        loop {
            while !*leader.borrow_and_update() {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    r = leader.changed() => r.map_err(|_| AutoscalingError::LeaderChannelClosed)?,
                }
            }
            tracing::info!(
                refresh_period = ?self.settings.refresh_period,
                "leading: refreshing external metrics from Datadog"
            );
            let lost = async {
                loop {
                    leader
                        .changed()
                        .await
                        .map_err(|_| AutoscalingError::LeaderChannelClosed)?;
                    if !*leader.borrow_and_update() {
                        return Ok::<(), AutoscalingError>(());
                    }
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = lost => {
                    r?;
                    tracing::info!("no longer leading: external metrics refresh stopped");
                }
                () = self.lead() => {}
            }
        }
    }

    /// The refresh loop of one leadership term (ends only when dropped).
    async fn lead(&self) {
        // Until every HPA is listed once, an absent HPA may just be unlisted yet.
        while !self.catalog.is_ready() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut writer = StoreWriter::new(
            self.client.clone(),
            &self.settings.namespace,
            &self.settings.configmap,
        );
        // Start from what is stored: values of the previous leader are still good.
        let mut backoff = Duration::from_secs(1);
        let mut current = loop {
            match writer.load().await {
                Ok(s) => break s,
                Err(e) => {
                    self.telemetry.store_write_error();
                    tracing::warn!(error = %e, "cannot read the metric store; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        };
        let mut refresh = tokio::time::interval(self.settings.refresh_period);
        refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let gc_period = self.settings.gc_period;
        let mut gc = tokio::time::interval_at(Instant::now() + gc_period, gc_period);
        gc.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let changed = self.catalog.changed();
        loop {
            let cycle = tokio::select! {
                _ = refresh.tick() => Cycle::Full,
                _ = gc.tick() => Cycle::Gc,
                () = changed.notified() => {
                    tokio::time::sleep(CHANGE_DEBOUNCE).await;
                    Cycle::New
                }
            };
            if let Some(next) = self.cycle(cycle, &current, &mut writer).await {
                current = next;
            }
        }
    }

    /// One cycle; returns the new store state (also when the write failed: the leader's
    /// memory is the truth, and the next write carries it).
    async fn cycle(
        &self,
        cycle: Cycle,
        current: &StoreSnapshot,
        writer: &mut StoreWriter,
    ) -> Option<StoreSnapshot> {
        let s = &self.settings;
        let catalog = self.catalog.snapshot();
        let mut plan = plan(
            &catalog.wanted,
            current,
            s.aggregator,
            s.rollup_secs,
            now_secs(),
        );
        let ask = match cycle {
            Cycle::Full => plan.queries.clone(),
            Cycle::New => plan.new_queries.clone(),
            Cycle::Gc => Vec::new(),
        };
        // Between full refreshes, write only when the set of entries changes (an HPA
        // sharing an existing query still needs its own entry).
        if cycle != Cycle::Full
            && ask.is_empty()
            && plan.removed.is_empty()
            && plan.added.is_empty()
        {
            return None;
        }
        if !plan.removed.is_empty() {
            tracing::info!(keys = ?plan.removed, "removing entries of HPAs that are gone or changed");
        }
        let outcomes;
        let failure;
        let resolution = if ask.is_empty() {
            Resolution::NotAsked
        } else {
            match self.resolver.resolve(&ask, now_secs()).await {
                Ok(o) => {
                    for (q, outcome) in &o {
                        self.cache.insert(q.clone(), outcome.clone()).await;
                    }
                    let deferred = ask.iter().filter(|q| !o.contains_key(*q)).count();
                    if deferred > 0 {
                        tracing::debug!(deferred, "queries deferred by the resolver");
                    }
                    outcomes = o;
                    Resolution::Resolved(&outcomes)
                }
                Err(e) => {
                    self.telemetry.resolve_error();
                    tracing::warn!(error = %e, queries = ask.len(), "Datadog resolution failed; keeping previous values");
                    failure = e.to_string();
                    Resolution::Failed(&failure)
                }
            }
        };
        let now = now_secs();
        plan.apply(resolution, now);
        match writer
            .write(&plan.entries, &plan.reasons, jiff::Timestamp::now())
            .await
        {
            Ok(()) => {
                self.telemetry.store_written();
                if cycle == Cycle::Full {
                    self.telemetry.refreshed(now);
                }
            }
            Err(e) => {
                self.telemetry.store_write_error();
                tracing::error!(error = %e, "cannot write the metric store");
            }
        }
        let entries = plan
            .entries
            .into_iter()
            .map(|(key, value)| crate::autoscaling::store::StoredMetric { key, value })
            .collect();
        Some(StoreSnapshot::from_parts(entries, plan.reasons, Some(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaling::store::StoredMetric;
    use crate::autoscaling::store_format::ObjectReference;

    const NOW: i64 = 1_700_000_000;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn w(ns: &str, hpa: &str, metric: &str, l: &[(&str, &str)]) -> Wanted {
        Wanted {
            metric_name: metric.into(),
            labels: labels(l),
            reference: ObjectReference::horizontal(ns, hpa, format!("uid-{hpa}")),
        }
    }

    fn stored(wanted: &Wanted, value: f64, ts: i64, valid: bool) -> StoredMetric {
        let value = ExternalMetricValue {
            metric_name: wanted.metric_name.clone(),
            labels: wanted.labels.clone(),
            timestamp: ts,
            reference: wanted.reference.clone(),
            value,
            valid,
        };
        StoredMetric {
            key: value.key(),
            value,
        }
    }

    #[test]
    fn queries_are_deduplicated_across_hpas() {
        let wanted = [
            w("shop", "a", "nginx.req", &[("app", "web")]),
            w("shop", "b", "nginx.req", &[("app", "web")]),
            w("other", "c", "nginx.req", &[("app", "web")]),
            w("shop", "d", "nginx.req", &[("app", "api")]),
            // Same name, other case: another query (Datadog gets the HPA's spelling).
            w("shop", "e", "Nginx.Req", &[("app", "web")]),
        ];
        let p = plan(&wanted, &StoreSnapshot::absent(), Aggregator::Avg, 30, NOW);
        assert_eq!(
            p.queries,
            [
                "avg:nginx.req{app:web}.rollup(30)",
                "avg:nginx.req{app:api}.rollup(30)",
                "avg:Nginx.Req{app:web}.rollup(30)",
            ]
        );
        assert_eq!(p.new_queries, p.queries);
        assert_eq!(p.entries.len(), 5);
        assert_eq!(p.added.len(), 5);
        assert!(p.removed.is_empty());
        // Placeholders, as Go stores them.
        for e in p.entries.values() {
            assert_eq!((e.value, e.timestamp, e.valid), (0.0, NOW, false));
        }
        assert_eq!(p.reasons.len(), 5);

        // One outcome per query, applied to every entry sharing it.
        let mut p = p;
        let outcomes = BTreeMap::from([
            (
                "avg:nginx.req{app:web}.rollup(30)".to_owned(),
                QueryOutcome::Valid {
                    value: 12.5,
                    timestamp: NOW - 45,
                },
            ),
            (
                "avg:nginx.req{app:api}.rollup(30)".to_owned(),
                QueryOutcome::invalid("no serie returned for this query"),
            ),
        ]);
        p.apply(Resolution::Resolved(&outcomes), NOW + 1);
        for hpa in ["a", "b"] {
            let e = &p.entries[&format!("external_metric-horizontal-shop-{hpa}-nginx.req")];
            assert_eq!((e.value, e.timestamp, e.valid), (12.5, NOW - 45, true));
        }
        let c = &p.entries["external_metric-horizontal-other-c-nginx.req"];
        assert!(c.valid);
        let d_key = "external_metric-horizontal-shop-d-nginx.req";
        assert_eq!(
            (p.entries[d_key].valid, p.entries[d_key].timestamp),
            (false, NOW + 1)
        );
        assert_eq!(p.reasons[d_key], "no serie returned for this query");
        // Deferred (absent) query: the placeholder stays, with its reason.
        let e_key = "external_metric-horizontal-shop-e-Nginx.Req";
        assert_eq!(p.entries[e_key].timestamp, NOW);
        assert_eq!(p.reasons[e_key], NOT_YET_QUERIED);
        assert!(
            !p.reasons
                .contains_key("external_metric-horizontal-shop-a-nginx.req")
        );
    }

    #[test]
    fn previous_values_are_kept_and_shared() {
        let a = w("shop", "a", "m", &[("app", "web")]);
        let b = w("shop", "b", "m", &[("app", "web")]);
        let gone = w("shop", "gone", "m", &[]);
        let changed_old = w("shop", "c", "old.metric", &[]);
        let changed_new = w("shop", "c", "new.metric", &[]);
        let relabeled_old = w("shop", "r", "m", &[("app", "v1")]);
        let relabeled_new = w("shop", "r", "m", &[("app", "v2")]);
        let mut previous = StoreSnapshot::from_parts(
            vec![
                stored(&a, 7.0, NOW - 50, true),
                stored(&gone, 1.0, NOW - 50, true),
                stored(&changed_old, 1.0, NOW - 50, true),
                stored(&relabeled_old, 3.0, NOW - 50, true),
            ],
            BTreeMap::new(),
            Some(NOW),
        );
        previous.unusable_keys = vec!["external_metric-default-legacy-m".into()];
        let wanted = [
            a.clone(),
            b.clone(),
            changed_new.clone(),
            relabeled_new.clone(),
        ];
        let p = plan(&wanted, &previous, Aggregator::Avg, 30, NOW);
        let mut added = p.added.clone();
        added.sort();
        let mut want = vec![b.key(), changed_new.key()];
        want.sort();
        // The relabelled HPA keeps its key, so it is not "added".
        assert_eq!(added, want);
        // b shares a's query: it starts with a's value, and the query is not new.
        assert_eq!(p.entries[&b.key()].value, 7.0);
        assert!(p.entries[&b.key()].valid);
        assert_eq!(p.entries[&a.key()].reference.uid, "uid-a");
        assert_eq!(p.entries[&b.key()].reference.uid, "uid-b");
        assert_eq!(
            p.new_queries,
            ["avg:new.metric{*}.rollup(30)", "avg:m{app:v2}.rollup(30)"]
        );
        // The relabelled HPA keeps its key but not the old value.
        let r = &p.entries[&relabeled_new.key()];
        assert_eq!(
            (r.value, r.valid, r.labels.clone()),
            (0.0, false, labels(&[("app", "v2")]))
        );
        // Deleted HPA, renamed metric and legacy entries are collected.
        let mut removed = p.removed.clone();
        removed.sort();
        assert_eq!(
            removed,
            [
                "external_metric-default-legacy-m",
                "external_metric-horizontal-shop-c-old.metric",
                "external_metric-horizontal-shop-gone-m",
            ]
        );

        // Nothing asked (GC): values untouched.
        let mut gc = p.clone();
        gc.apply(Resolution::NotAsked, NOW + 100);
        assert_eq!(gc.entries, p.entries);
        // Resolution failed: values kept; invalid entries say why.
        let mut failed = p.clone();
        failed.apply(
            Resolution::Failed("Datadog rate limit reached; next query in 9 s"),
            NOW + 100,
        );
        assert_eq!(failed.entries, p.entries);
        assert_eq!(
            failed.reasons[&relabeled_new.key()],
            "the last Datadog query failed: Datadog rate limit reached; next query in 9 s"
        );
        assert!(!failed.reasons.contains_key(&a.key()));
        // Deferred query: the valid value and its old timestamp are kept (it will age).
        let mut deferred = p.clone();
        deferred.apply(Resolution::Resolved(&BTreeMap::new()), NOW + 100);
        assert_eq!(deferred.entries[&a.key()].timestamp, NOW - 50);
        assert!(deferred.entries[&a.key()].valid);
    }

    #[test]
    fn invalid_previous_reasons_follow_the_query() {
        let a = w("shop", "a", "m", &[]);
        let previous = StoreSnapshot::from_parts(
            vec![stored(&a, 0.0, NOW - 5, false)],
            BTreeMap::from([(a.key(), "multiple series found".to_owned())]),
            Some(NOW),
        );
        let b = w("shop", "b", "m", &[]);
        let p = plan(&[a.clone(), b.clone()], &previous, Aggregator::Sum, 60, NOW);
        assert_eq!(p.queries, ["sum:m{*}.rollup(60)"]);
        assert!(p.new_queries.is_empty());
        assert_eq!(p.reasons[&a.key()], "multiple series found");
        assert_eq!(p.reasons[&b.key()], "multiple series found");
    }

    #[test]
    fn non_finite_values_become_invalid() {
        let a = w("shop", "a", "m", &[]);
        let mut p = plan(
            std::slice::from_ref(&a),
            &StoreSnapshot::absent(),
            Aggregator::Avg,
            30,
            NOW,
        );
        let outcomes = BTreeMap::from([(
            "avg:m{*}.rollup(30)".to_owned(),
            QueryOutcome::Valid {
                value: f64::NAN,
                timestamp: NOW,
            },
        )]);
        p.apply(Resolution::Resolved(&outcomes), NOW);
        let e = &p.entries[&a.key()];
        assert!(!e.valid);
        assert_eq!(e.value, 0.0);
        assert!(p.reasons[&a.key()].contains("non-finite"));
        assert!(crate::autoscaling::store_format::encode_entry(e).is_ok());
    }

    #[test]
    fn duplicate_keys_keep_the_first() {
        let a1 = w("shop", "a", "m", &[("x", "1")]);
        let a2 = w("shop", "a", "m", &[("x", "2")]);
        let p = plan(
            &[a1.clone(), a2],
            &StoreSnapshot::absent(),
            Aggregator::Avg,
            30,
            NOW,
        );
        assert_eq!(p.entries.len(), 1);
        assert_eq!(p.entries[&a1.key()].labels, labels(&[("x", "1")]));
        assert_eq!(p.queries, ["avg:m{x:1}.rollup(30)"]);
    }
}
