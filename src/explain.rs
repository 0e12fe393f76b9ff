//! `explain <namespace>/<hpa>` (ours): for each External metric of one HPA, what the agent
//! does with it — the Datadog query, what the store holds, the point's age against the
//! staleness limit — and what the metrics API answers the HPA controller, in one verdict.
//! It answers the Go DCA users' most frequent question: why does my HPA get no value?
//!
//! Pure: `app` fills an [`Explanation`] from the HPA catalog and this replica's copy of the
//! store; the node-agent API serves it behind the local token; the CLI renders it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Builds the explanation of `namespace/name`; `None` when no such HPA asks us for a metric.
pub(crate) type ExplainSource =
    std::sync::Arc<dyn Fn(&str, &str) -> Option<Explanation> + Send + Sync>;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Explanation {
    /// `<ns>/<name>`.
    pub(crate) hpa: String,
    /// Unix seconds: ages are relative to it.
    pub(crate) now: i64,
    pub(crate) metrics: Vec<MetricExplanation>,
    /// External metrics of the HPA we cannot serve, and why (as the HPA's events say).
    pub(crate) problems: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct MetricExplanation {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    /// What the leader sends Datadog for it.
    pub(crate) query: String,
    /// Its key in the ConfigMap store.
    pub(crate) store_key: String,
    /// `None`: not in this replica's copy of the store.
    pub(crate) stored: Option<Stored>,
    /// Older points are an error, never served as current.
    pub(crate) staleness_limit_secs: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub(crate) value: f64,
    /// Unix seconds: the point's time when valid, the update time otherwise.
    pub(crate) timestamp: i64,
    pub(crate) valid: bool,
    pub(crate) reason: Option<String>,
}

/// What the metrics API answers for the metric now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    Served(f64),
    Stale { age: i64, limit: i64 },
    Invalid(String),
    NotStored,
}

pub(crate) fn verdict(metric: &MetricExplanation, now: i64) -> Verdict {
    match &metric.stored {
        None => Verdict::NotStored,
        Some(s) if !s.valid => Verdict::Invalid(
            s.reason
                .clone()
                .unwrap_or_else(|| "no reason recorded".to_owned()),
        ),
        Some(s) if now - s.timestamp > metric.staleness_limit_secs => Verdict::Stale {
            age: now - s.timestamp,
            limit: metric.staleness_limit_secs,
        },
        Some(s) => Verdict::Served(s.value),
    }
}

fn value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// The terminal report.
pub(crate) fn render(explanation: &Explanation) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "HorizontalPodAutoscaler {}", explanation.hpa);
    for metric in &explanation.metrics {
        let tags: Vec<String> = metric
            .labels
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect();
        let _ = writeln!(
            out,
            "\n  External metric {}{{{}}}",
            metric.name,
            tags.join(",")
        );
        let _ = writeln!(out, "    Datadog query: {}", metric.query);
        let _ = writeln!(out, "    Store key:     {}", metric.store_key);
        let stored = match &metric.stored {
            None => "nothing yet".to_owned(),
            Some(s) => format!(
                "value {} at {} ({}s old), {}",
                value(s.value),
                jiff::Timestamp::from_second(s.timestamp)
                    .map_or_else(|_| s.timestamp.to_string(), |t| t.to_string()),
                explanation.now - s.timestamp,
                if s.valid { "valid" } else { "invalid" }
            ),
        };
        let _ = writeln!(out, "    Stored:        {stored}");
        let _ = writeln!(
            out,
            "    Staleness:     points older than {}s are an error",
            metric.staleness_limit_secs
        );
        let answer = match verdict(metric, explanation.now) {
            Verdict::Served(v) => format!("the HPA gets {}", value(v)),
            Verdict::Stale { age, limit } => format!(
                "an error: the point is {age}s old, over the {limit}s limit (is a replica leading, and can it reach Datadog? see `status`)"
            ),
            Verdict::Invalid(reason) => format!("an error: {reason}"),
            Verdict::NotStored => "an error: the leader has not resolved this query yet (see Leader Election and Datadog API in `status`)".to_owned(),
        };
        let _ = writeln!(out, "    Answer:        {answer}");
    }
    if !explanation.problems.is_empty() {
        let _ = writeln!(out, "\n  Not served:");
        for problem in &explanation.problems {
            let _ = writeln!(out, "    - {problem}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_644_800;

    fn metric(stored: Option<Stored>) -> MetricExplanation {
        MetricExplanation {
            name: "queue.depth".into(),
            labels: [("queue".to_owned(), "orders".to_owned())].into(),
            query: "avg:queue.depth{queue:orders}.rollup(30)".into(),
            store_key: "external_metric-horizontal-apps-orders-queue.depth".into(),
            stored,
            staleness_limit_secs: 150,
        }
    }

    fn stored(value: f64, age: i64, valid: bool, reason: Option<&str>) -> Option<Stored> {
        Some(Stored {
            value,
            timestamp: NOW - age,
            valid,
            reason: reason.map(str::to_owned),
        })
    }

    #[test]
    fn the_verdict_is_what_the_metrics_api_answers() {
        let cases = [
            (stored(40.0, 20, true, None), Verdict::Served(40.0)),
            (
                stored(40.0, 151, true, None),
                Verdict::Stale {
                    age: 151,
                    limit: 150,
                },
            ),
            (stored(40.0, 150, true, None), Verdict::Served(40.0)),
            (
                stored(0.0, 5, false, Some("503 from Datadog")),
                Verdict::Invalid("503 from Datadog".into()),
            ),
            (
                stored(0.0, 5, false, None),
                Verdict::Invalid("no reason recorded".into()),
            ),
            (None, Verdict::NotStored),
        ];
        for (s, want) in cases {
            assert_eq!(verdict(&metric(s.clone()), NOW), want, "{s:?}");
        }
    }

    #[test]
    fn the_report_reads_as_the_golden_text() {
        let explanation = Explanation {
            hpa: "apps/orders".into(),
            now: NOW,
            metrics: vec![metric(stored(40.0, 8, true, None)), {
                let mut m = metric(None);
                m.name = "other".into();
                m.labels.clear();
                m.query = "avg:other{*}.rollup(30)".into();
                m.store_key = "external_metric-horizontal-apps-orders-other".into();
                m
            }],
            problems: vec!["metric name \"Bad Name\" is not a valid Datadog metric name".into()],
        };
        let want = "\
HorizontalPodAutoscaler apps/orders

  External metric queue.depth{queue:orders}
    Datadog query: avg:queue.depth{queue:orders}.rollup(30)
    Store key:     external_metric-horizontal-apps-orders-queue.depth
    Stored:        value 40 at 2026-12-07T11:59:52Z (8s old), valid
    Staleness:     points older than 150s are an error
    Answer:        the HPA gets 40

  External metric other{}
    Datadog query: avg:other{*}.rollup(30)
    Store key:     external_metric-horizontal-apps-orders-other
    Stored:        nothing yet
    Staleness:     points older than 150s are an error
    Answer:        an error: the leader has not resolved this query yet (see Leader Election and Datadog API in `status`)

  Not served:
    - metric name \"Bad Name\" is not a valid Datadog metric name
";
        assert_eq!(render(&explanation), want);
    }

    #[test]
    fn the_json_round_trips() {
        let explanation = Explanation {
            hpa: "a/b".into(),
            now: NOW,
            metrics: vec![metric(stored(1.5, 1, true, None))],
            problems: Vec::new(),
        };
        let json = serde_json::to_string(&explanation).unwrap();
        assert_eq!(
            serde_json::from_str::<Explanation>(&json).unwrap(),
            explanation
        );
    }
}
