//! A [`MetricSource`] that serves values held in memory: what the autoscaling store feeds in
//! production-like setups without Datadog, and what the server's tests drive.
//!
//! Metric names match case-insensitively, since client-go lower-cases the name in the URL
//! while the HPA spec may not be (contract §1.3). Namespaces are not part of the key:
//! external metrics are cluster-wide values, and namespace scoping is the authorizer's job.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use foldhash::fast::RandomState;

use crate::apimachinery::selector::Selector;
use crate::apiserver::seams::Answer;
use crate::external_metrics::api::{MetricError, MetricSource, MetricValues};
use crate::external_metrics::types::MetricValue;

#[derive(Debug, Default)]
pub struct InMemorySource {
    state: RwLock<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Lower-cased metric name → its series, one per distinct label set.
    metrics: HashMap<String, MetricValues, RandomState>,
    /// Lower-cased metric name → the error to answer instead of values.
    failures: HashMap<String, MetricError, RandomState>,
}

fn key(metric: &str) -> String {
    metric.to_lowercase()
}

impl InMemorySource {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the value of the series `metric{labels}`, replacing any previous value of that
    /// exact series. `metric` is stored as given (the HPA's spelling) and served under it.
    pub fn set(&self, metric: &str, labels: BTreeMap<String, String>, value: f64, timestamp: i64) {
        self.upsert(MetricValue {
            metric_name: metric.to_owned(),
            metric_labels: labels,
            timestamp,
            window_seconds: None,
            value,
        });
    }

    /// Like [`set`](Self::set), with every field (the window too) given.
    pub fn upsert(&self, value: MetricValue) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let series = state.metrics.entry(key(&value.metric_name)).or_default();
        match series
            .iter_mut()
            .find(|s| s.metric_labels == value.metric_labels)
        {
            Some(existing) => *existing = Arc::new(value.into()),
            None => series.push(Arc::new(value.into())),
        }
    }

    /// Removes the series `metric{labels}`; returns whether it existed. A metric left with
    /// no series is forgotten (so it answers NotFound again).
    pub fn remove(&self, metric: &str, labels: &BTreeMap<String, String>) -> bool {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let k = key(metric);
        let Some(series) = state.metrics.get_mut(&k) else {
            return false;
        };
        let before = series.len();
        series.retain(|s| &s.metric_labels != labels);
        let removed = series.len() != before;
        if series.is_empty() {
            state.metrics.remove(&k);
        }
        removed
    }

    /// Forgets every series of `metric`; returns whether it had any.
    pub fn remove_metric(&self, metric: &str) -> bool {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        state.metrics.remove(&key(metric)).is_some()
    }

    /// Makes requests for `metric` fail with `error` until [`clear_failure`](Self::clear_failure).
    pub fn fail_with(&self, metric: &str, error: MetricError) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        state.failures.insert(key(metric), error);
    }

    pub fn clear_failure(&self, metric: &str) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        state.failures.remove(&key(metric));
    }

    /// The series of `metric` whose labels match `selector`.
    pub fn lookup(
        &self,
        namespace: &str,
        metric: &str,
        selector: &Selector,
    ) -> Result<MetricValues, MetricError> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        // Requests arrive lower-cased already, so this rarely allocates.
        let k = if metric.chars().any(char::is_uppercase) {
            std::borrow::Cow::Owned(key(metric))
        } else {
            std::borrow::Cow::Borrowed(metric)
        };
        if let Some(error) = state.failures.get(k.as_ref()) {
            return Err(error.clone());
        }
        let series = state
            .metrics
            .get(k.as_ref())
            .ok_or_else(|| MetricError::NotFound {
                namespace: namespace.to_owned(),
                metric: metric.to_owned(),
            })?;
        Ok(series
            .iter()
            .filter(|s| selector.matches(&s.metric_labels))
            .cloned()
            .collect())
    }
}

impl MetricSource for InMemorySource {
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        metric: &'a str,
        selector: &'a Selector,
    ) -> Answer<'a, Result<MetricValues, MetricError>> {
        Answer::ready(self.lookup(namespace, metric, selector))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(s: &str) -> Selector {
        Selector::parse(s).unwrap()
    }

    #[test]
    fn serves_matching_series_case_insensitively() {
        let src = InMemorySource::new();
        src.set("Nginx.Requests", labels(&[("app", "web")]), 10.0, 100);
        src.set("Nginx.Requests", labels(&[("app", "api")]), 20.0, 100);
        let all = src
            .lookup("ns", "nginx.requests", &Selector::everything())
            .unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].metric_name, "Nginx.Requests");
        let web = src.lookup("ns", "nginx.requests", &sel("app=web")).unwrap();
        assert_eq!(web.len(), 1);
        assert_eq!(web[0].value, 10.0);
        // Go's semantics: != matches absent keys too.
        assert_eq!(
            src.lookup("ns", "NGINX.REQUESTS", &sel("app!=web"))
                .unwrap()
                .len(),
            1
        );
        assert!(
            src.lookup("ns", "nginx.requests", &sel("app=db"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn set_replaces_the_same_series() {
        let src = InMemorySource::new();
        src.set("m", labels(&[("a", "1")]), 1.0, 1);
        src.set("M", labels(&[("a", "1")]), 2.0, 2);
        let v = src.lookup("ns", "m", &Selector::everything()).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].value, v[0].timestamp), (2.0, 2));
    }

    #[test]
    fn unknown_metric_is_not_found() {
        let src = InMemorySource::new();
        assert_eq!(
            src.lookup("prod", "nope", &Selector::everything()),
            Err(MetricError::NotFound {
                namespace: "prod".into(),
                metric: "nope".into()
            })
        );
    }

    #[test]
    fn removal() {
        let src = InMemorySource::new();
        src.set("m", labels(&[("a", "1")]), 1.0, 1);
        src.set("m", labels(&[("a", "2")]), 1.0, 1);
        assert!(src.remove("m", &labels(&[("a", "1")])));
        assert!(!src.remove("m", &labels(&[("a", "1")])));
        assert_eq!(
            src.lookup("ns", "m", &Selector::everything())
                .unwrap()
                .len(),
            1
        );
        assert!(src.remove("M", &labels(&[("a", "2")])));
        assert!(src.lookup("ns", "m", &Selector::everything()).is_err());
        src.set("m", labels(&[]), 1.0, 1);
        assert!(src.remove_metric("M"));
        assert!(!src.remove_metric("m"));
    }

    #[test]
    fn injected_failures_win_until_cleared() {
        let src = InMemorySource::new();
        src.set("m", labels(&[]), 1.0, 1);
        src.fail_with("M", MetricError::Unavailable("warming up".into()));
        assert_eq!(
            src.lookup("ns", "m", &Selector::everything()),
            Err(MetricError::Unavailable("warming up".into()))
        );
        src.clear_failure("m");
        assert!(src.lookup("ns", "m", &Selector::everything()).is_ok());
    }

    #[tokio::test]
    async fn is_a_metric_source() {
        let src: std::sync::Arc<dyn MetricSource> = std::sync::Arc::new(InMemorySource::new());
        let err = src
            .get("ns", "m", &Selector::everything())
            .wait()
            .await
            .unwrap_err();
        assert!(matches!(err, MetricError::NotFound { .. }));
    }
}
