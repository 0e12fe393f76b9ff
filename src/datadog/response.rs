//! `/api/v1/query` response: lenient serde types and the mapping of a chunk's series back
//! to its queries, with point selection and validity (dca-contract §3.4, §9; Go
//! `queryDatadogExternal` in `pkg/util/kubernetes/autoscalers/datadogexternal.go`).
//!
//! Rules, for one chunk of queries sent together:
//! - a series maps to `queries[query_index]`; `query_index` may be absent only when the
//!   chunk holds a single query. A missing or out-of-range index makes the **whole chunk**
//!   invalid ("Datadog API response did not match the submitted query batch"), as the
//!   current Go DCA does (fail closed);
//! - a second series for the same query makes it invalid ("multiple series found...");
//! - null values are skipped; the penultimate non-null point is used, or the only one;
//!   its timestamp is `ms / 1000` (truncated);
//! - a series with only null values (or no point) is invalid, never a 0;
//! - a query without any series is invalid ("no serie returned for this query...");
//! - a point older than `max_age` (`now - ts > max_age`, with
//!   `max_age = max(external_metrics_provider.max_age, 3 × rollup)`) is invalid.
//!
//! A 2xx body with `"status": "error"` is an error `API returned error: <error>`.

use crate::error::Cause;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::ser::{SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

/// Reason for a query whose results came back in several series.
pub(crate) const MULTIPLE_SERIES_REASON: &str =
    "multiple series found. Please change your query to return a single serie";
/// Reason for every query of a chunk whose series could not be matched to the queries.
pub(crate) const BATCH_MISMATCH_REASON: &str =
    "Datadog API response did not match the submitted query batch";

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// The body is not a JSON object of the expected shape.
    #[error("could not decode the /api/v1/query response: {0}")]
    Decode(#[source] Cause),
    /// The body says `"status": "error"` (zorkian wording).
    #[error("API returned error: {0}")]
    Api(String),
}

/// One `[timestamp_ms, value]` pair of a `pointlist`. Either part may be `null`.
///
/// Decoding accepts arrays of any length (missing parts are `None`, extra ones ignored),
/// as Go's `[2]*float64` does; an element that is neither a number nor `null` is an error.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DataPoint {
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: Option<f64>,
    /// The value, `None` for a null (empty bucket).
    pub value: Option<f64>,
}

impl DataPoint {
    /// A point with both parts set.
    pub fn new(timestamp_ms: f64, value: f64) -> Self {
        DataPoint {
            timestamp_ms: Some(timestamp_ms),
            value: Some(value),
        }
    }

    /// A point with a null value.
    pub fn null(timestamp_ms: f64) -> Self {
        DataPoint {
            timestamp_ms: Some(timestamp_ms),
            value: None,
        }
    }
}

impl Serialize for DataPoint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut t = serializer.serialize_tuple(2)?;
        t.serialize_element(&self.timestamp_ms)?;
        t.serialize_element(&self.value)?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for DataPoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PointVisitor;

        impl<'de> Visitor<'de> for PointVisitor {
            type Value = DataPoint;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array [timestamp_ms, value]")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<DataPoint, A::Error> {
                let timestamp_ms = seq.next_element::<Option<f64>>()?.flatten();
                let value = seq.next_element::<Option<f64>>()?.flatten();
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(DataPoint {
                    timestamp_ms,
                    value,
                })
            }
        }

        deserializer.deserialize_seq(PointVisitor)
    }
}

/// One series of the response (OpenAPI `MetricsQueryMetadata`). Unknown fields are
/// ignored; every field is optional.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Series {
    /// Metric name, e.g. `system.cpu.idle` (or an expression for formulas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Display name of the metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Points, oldest first.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub pointlist: Vec<DataPoint>,
    /// Start of the series, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<f64>,
    /// End of the series, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<f64>,
    /// Interval between points (seconds in practice).
    #[serde(
        default,
        deserialize_with = "opt_integer",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<i64>,
    /// Aggregation, e.g. `avg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggr: Option<String>,
    /// Number of points.
    #[serde(
        default,
        deserialize_with = "opt_integer",
        skip_serializing_if = "Option::is_none"
    )]
    pub length: Option<i64>,
    /// Scope: comma-separated tags, `*` for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The expression evaluated (may be normalised by the backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    /// Index (0-based) of the query of the comma-joined batch this series answers.
    #[serde(
        default,
        deserialize_with = "opt_integer",
        skip_serializing_if = "Option::is_none"
    )]
    pub query_index: Option<i64>,
    /// Tags identifying the series.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tag_set: Vec<String>,
    /// Unit pair, kept as raw JSON (unused here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<serde_json::Value>,
}

/// The `/api/v1/query` body (OpenAPI `MetricsQueryResponse`). Unknown fields are ignored;
/// every field is optional.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct QueryResponse {
    /// `ok` or `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Error text when `status` is `error` (a non-string is kept as its JSON text).
    #[serde(
        default,
        deserialize_with = "opt_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub error: Option<String>,
    /// Type of response, e.g. `time_series`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub res_type: Option<String>,
    /// The series.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub series: Vec<Series>,
    /// Start of the requested window, ms since the epoch.
    #[serde(
        default,
        deserialize_with = "opt_integer",
        skip_serializing_if = "Option::is_none"
    )]
    pub from_date: Option<i64>,
    /// End of the requested window, ms since the epoch.
    #[serde(
        default,
        deserialize_with = "opt_integer",
        skip_serializing_if = "Option::is_none"
    )]
    pub to_date: Option<i64>,
    /// The query as received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Tag keys grouped by.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub group_by: Vec<String>,
    /// Message (`success`, or empty).
    #[serde(
        default,
        deserialize_with = "opt_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub message: Option<String>,
}

/// `null` → `T::default()`.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// An integer, also accepted as an integral float (`20.0`); `null` → `None`.
fn opt_integer<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    let n = Option::<serde_json::Number>::deserialize(deserializer)?;
    let Some(n) = n else { return Ok(None) };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => {
            // Integral and in range: the conversion is exact.
            Ok(Some(f as i64))
        }
        _ => Err(de::Error::custom(format!("expected an integer, got {n}"))),
    }
}

/// A string; any other non-null JSON value is kept as its JSON text.
fn opt_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(
        match Option::<serde_json::Value>::deserialize(deserializer)? {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(other) => Some(other.to_string()),
        },
    )
}

/// Decodes a 2xx `/api/v1/query` body. `"status": "error"` gives
/// [`ResponseError::Api`] with the `error` text.
pub fn parse_query_response(body: &[u8]) -> Result<QueryResponse, ResponseError> {
    // serde would also accept a struct written as a JSON array; Go does not.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ResponseError::Decode(Cause::msg("expected a JSON object")));
    }
    let resp: QueryResponse =
        serde_json::from_slice(body).map_err(|e| ResponseError::Decode(Cause::new(e)))?;
    if resp.status.as_deref() == Some("error") {
        return Err(ResponseError::Api(resp.error.unwrap_or_default()));
    }
    Ok(resp)
}

/// Result for one query.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryOutcome {
    /// A usable point.
    Valid {
        /// The point's value.
        value: f64,
        /// The point's time, Unix seconds.
        timestamp: i64,
    },
    /// No usable point.
    Invalid {
        /// Why (Go wording where Go has one).
        reason: String,
        /// The value of the point that was rejected as too old, if any. The Go ConfigMap
        /// path keeps that value in invalid entries; in every other case it writes 0.
        value: Option<f64>,
    },
}

impl QueryOutcome {
    /// An invalid outcome without value.
    pub fn invalid(reason: impl Into<String>) -> Self {
        QueryOutcome::Invalid {
            reason: reason.into(),
            value: None,
        }
    }

    /// `true` for [`QueryOutcome::Valid`].
    pub fn is_valid(&self) -> bool {
        matches!(self, QueryOutcome::Valid { .. })
    }
}

/// Parameters of [`evaluate_series`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalParams {
    /// Current time, Unix seconds (the `to` of the query).
    pub now: i64,
    /// Queried window (`to - from`), seconds; only used in messages.
    pub time_window_secs: i64,
    /// A point with `now - ts > max_age_secs` is invalid. See [`effective_max_age`].
    pub max_age_secs: i64,
}

/// `max(external_metrics_provider.max_age, 3 × external_metrics_provider.rollup)`,
/// seconds (120 with the defaults).
pub(crate) fn effective_max_age(max_age_secs: i64, rollup_secs: i64) -> i64 {
    max_age_secs.max(rollup_secs.saturating_mul(3))
}

/// `true` when a point at `timestamp` is too old: `now - timestamp > max_age_secs`.
pub fn is_outdated(timestamp: i64, now: i64, max_age_secs: i64) -> bool {
    now.saturating_sub(timestamp) > max_age_secs
}

/// Picks the point to use from a pointlist: the penultimate point with a non-null value
/// (the last bucket may be partial), or the only one. Points without a timestamp are
/// skipped. Returns `(value, timestamp_seconds)`.
pub fn select_point(points: &[DataPoint]) -> Option<(f64, i64)> {
    let mut usable = points
        .iter()
        .rev()
        .filter_map(|p| Some((p.value?, p.timestamp_ms?)));
    let last = usable.next()?;
    let (value, ts_ms) = usable.next().unwrap_or(last);
    Some((value, ms_to_secs(ts_ms)))
}

/// Go `int64(ms / 1000)`: truncation toward zero (saturating for absurd values).
fn ms_to_secs(ms: f64) -> i64 {
    (ms / 1000.0).trunc() as i64
}

/// Finds the index of the query a series answers (Go `matchDatadogExternalSeries`).
pub(crate) fn match_query_index(series: &Series, query_count: usize) -> Result<usize, String> {
    match series.query_index {
        None if query_count == 1 => Ok(0),
        None => Err(format!(
            "missing QueryIndex for a batch of {query_count} queries"
        )),
        Some(i) => usize::try_from(i)
            .ok()
            .filter(|i| *i < query_count)
            .ok_or_else(|| format!("QueryIndex {i} is outside the batch of {query_count} queries")),
    }
}

/// Every query of `queries` invalid with the same reason (e.g. for a failed HTTP call).
pub(crate) fn invalidate_all<S: AsRef<str>>(
    queries: &[S],
    reason: &str,
) -> BTreeMap<String, QueryOutcome> {
    queries
        .iter()
        .map(|q| (q.as_ref().to_owned(), QueryOutcome::invalid(reason)))
        .collect()
}

/// Maps the series returned for one chunk back to the chunk's queries (see the module
/// docs). The result has exactly one entry per distinct query of `queries`.
pub(crate) fn evaluate_series<S: AsRef<str>>(
    queries: &[S],
    series: &[Series],
    params: &EvalParams,
) -> BTreeMap<String, QueryOutcome> {
    let mut answered = Vec::with_capacity(series.len());
    for s in series {
        let query = match_query_index(s, queries.len())
            .ok()
            .and_then(|i| queries.get(i));
        match query {
            Some(q) => answered.push(q.as_ref()),
            None => return invalidate_all(queries, BATCH_MISMATCH_REASON),
        }
    }

    let mut out: BTreeMap<String, QueryOutcome> = BTreeMap::new();
    for (s, query) in series.iter().zip(answered) {
        if out.contains_key(query) {
            out.insert(
                query.to_owned(),
                QueryOutcome::invalid(MULTIPLE_SERIES_REASON),
            );
            continue;
        }
        let outcome = match select_point(&s.pointlist) {
            None => {
                let mut reason = format!(
                    "only null values found in API response ({} points), check data is available in the last {} seconds",
                    s.pointlist.len(),
                    params.time_window_secs
                );
                if let Some(interval) = s.interval {
                    reason.push_str(&format!(" (interval was {interval})"));
                }
                QueryOutcome::invalid(reason)
            }
            Some((value, timestamp)) if is_outdated(timestamp, params.now, params.max_age_secs) => {
                QueryOutcome::Invalid {
                    reason: format!(
                        "Query returned outdated result, check MaxAge setting, query: {query}"
                    ),
                    value: Some(value),
                }
            }
            Some((value, timestamp)) => QueryOutcome::Valid { value, timestamp },
        };
        out.insert(query.to_owned(), outcome);
    }

    for q in queries {
        let q = q.as_ref();
        if !out.contains_key(q) {
            out.insert(
                q.to_owned(),
                QueryOutcome::invalid(format!(
                    "no serie returned for this query, check data is available in the last {} seconds",
                    params.time_window_secs
                )),
            );
        }
    }
    out
}

/// [`evaluate_series`] on a decoded response.
pub fn evaluate_response<S: AsRef<str>>(
    queries: &[S],
    response: &QueryResponse,
    params: &EvalParams,
) -> BTreeMap<String, QueryOutcome> {
    evaluate_series(queries, &response.series, params)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn params() -> EvalParams {
        EvalParams {
            now: NOW,
            time_window_secs: 300,
            max_age_secs: 120,
        }
    }

    /// Go tests: `makePoints(ts, val)` and `makePartialPoints(ts)`.
    fn p(ts: i64, v: f64) -> DataPoint {
        DataPoint::new(ts as f64, v)
    }
    fn n(ts: i64) -> DataPoint {
        DataPoint::null(ts as f64)
    }

    fn series(index: Option<i64>, points: Vec<DataPoint>) -> Series {
        Series {
            query_index: index,
            pointlist: points,
            ..Series::default()
        }
    }

    fn valid(value: f64, timestamp: i64) -> QueryOutcome {
        QueryOutcome::Valid { value, timestamp }
    }

    /// Params under which the Go test timestamps (100..400 s) are never outdated.
    fn go_params() -> EvalParams {
        EvalParams {
            now: 400,
            time_window_secs: 300,
            max_age_secs: 1_000,
        }
    }

    #[test]
    fn select_point_vectors() {
        type Case<'a> = (&'a [DataPoint], Option<(f64, i64)>);
        let cases: &[Case<'_>] = &[
            (&[], None),
            (&[n(1000)], None),
            (&[n(1000), n(2000)], None),
            (&[p(1000, 5.0)], Some((5.0, 1))),
            (&[p(1000, 5.0), p(2000, 6.0)], Some((5.0, 1))),
            (&[p(1000, 5.0), p(2000, 6.0), p(3000, 7.0)], Some((6.0, 2))),
            // Only one non-null point among nulls: use it (Go before 7.5x returned nothing).
            (&[p(1000, 5.0), n(2000)], Some((5.0, 1))),
            (&[n(1000), p(2000, 5.0), n(3000)], Some((5.0, 2))),
            // Nulls between the two most recent non-null points are skipped.
            (
                &[p(1000, 1.0), n(2000), p(3000, 3.0), n(4000), n(5000)],
                Some((1.0, 1)),
            ),
            // A 0 value is a real value.
            (&[p(1000, 0.0), p(2000, 9.0)], Some((0.0, 1))),
            // ms → s truncates.
            (&[p(1999, 1.0), p(2999, 2.0)], Some((1.0, 1))),
            // Points without timestamp are unusable.
            (
                &[
                    p(1000, 1.0),
                    DataPoint {
                        timestamp_ms: None,
                        value: Some(2.0),
                    },
                ],
                Some((1.0, 1)),
            ),
        ];
        for (points, want) in cases {
            assert_eq!(select_point(points), *want, "{points:?}");
        }
    }

    /// Go `TestDatadogExternalQuery` "metrics with different granularities Datadog".
    #[test]
    fn go_vector_different_granularities() {
        let queries = [
            "mymetric{foo:bar,baz:ar}",
            "mymetric2{foo:baz}",
            "my.aws.metric{ba:bar}",
            "another.metric{foo:empty}",
        ];
        let mut empty = series(Some(3), vec![n(10000), n(20000), n(30000), n(40000)]);
        empty.interval = Some(2);
        let got = evaluate_series(
            &queries,
            &[
                series(
                    Some(0),
                    vec![
                        p(100000, 40.0),
                        n(11000),
                        p(200000, 23.0),
                        p(300000, 42.0),
                        p(400000, 911.0),
                    ],
                ),
                series(
                    Some(1),
                    vec![
                        n(10000),
                        p(110000, 70.0),
                        n(20000),
                        p(300000, 42.0),
                        n(40000),
                    ],
                ),
                series(
                    Some(2),
                    vec![n(10000), p(110000, 3.0), n(20000), n(30000), n(40000)],
                ),
                empty,
            ],
            &go_params(),
        );
        let want: BTreeMap<String, QueryOutcome> = [
            ("mymetric{foo:bar,baz:ar}", valid(42.0, 300)),
            ("mymetric2{foo:baz}", valid(70.0, 110)),
            ("my.aws.metric{ba:bar}", valid(3.0, 110)),
            (
                "another.metric{foo:empty}",
                QueryOutcome::invalid(
                    "only null values found in API response (4 points), check data is available in the last 300 seconds (interval was 2)",
                ),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(got, want);
    }

    /// Go `TestDatadogExternalQuery` "retrieved multiple series for query".
    #[test]
    fn go_vector_multiple_series() {
        let q0 = "sum:system.io.rkb_s{device:sda} + sum:system.io.rkb_s{device:sdb}by{host}";
        let queries = [q0, "mymetric2{foo:baz}", "my.aws.metric{ba:bar}"];
        let pts = || {
            vec![
                p(100000, 40.0),
                n(11000),
                p(200000, 23.0),
                p(300000, 42.0),
                p(400000, 911.0),
            ]
        };
        let got = evaluate_series(
            &queries,
            &[
                series(Some(0), pts()),
                series(Some(0), pts()),
                series(
                    Some(1),
                    vec![
                        n(10000),
                        p(110000, 70.0),
                        n(20000),
                        p(300000, 42.0),
                        n(40000),
                    ],
                ),
                series(
                    Some(2),
                    vec![n(10000), p(110000, 3.0), n(20000), n(30000), n(40000)],
                ),
            ],
            &go_params(),
        );
        assert_eq!(got[q0], QueryOutcome::invalid(MULTIPLE_SERIES_REASON));
        assert_eq!(got["mymetric2{foo:baz}"], valid(70.0, 110));
        assert_eq!(got["my.aws.metric{ba:bar}"], valid(3.0, 110));
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn multiple_series_after_a_null_only_series_is_still_multiple() {
        let got = evaluate_series(
            &["a", "b"],
            &[
                series(Some(0), vec![n(1000)]),
                series(Some(0), vec![p(NOW * 1000, 1.0)]),
                series(Some(0), vec![p(NOW * 1000, 2.0)]),
            ],
            &params(),
        );
        assert_eq!(got["a"], QueryOutcome::invalid(MULTIPLE_SERIES_REASON));
    }

    /// Go "missing queryIndex" and `TestDatadogExternalQueryFailsClosedOnInvalidQueryIndex`.
    #[test]
    fn bad_query_index_invalidates_the_whole_chunk() {
        let queries = ["avg:metric-a{*}", "avg:metric-b{*}"];
        for bad in [None, Some(-1), Some(2), Some(i64::MAX)] {
            let got = evaluate_series(
                &queries,
                &[
                    series(Some(0), vec![p(NOW * 1000, 1.0)]),
                    series(bad, vec![p(NOW * 1000, 1.0)]),
                ],
                &params(),
            );
            assert_eq!(
                got,
                invalidate_all(&queries, BATCH_MISMATCH_REASON),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn match_query_index_vectors() {
        let cases: &[(Option<i64>, usize, Result<usize, &str>)] = &[
            (None, 1, Ok(0)),
            (Some(0), 1, Ok(0)),
            (
                Some(1),
                1,
                Err("QueryIndex 1 is outside the batch of 1 queries"),
            ),
            (None, 2, Err("missing QueryIndex for a batch of 2 queries")),
            (Some(1), 2, Ok(1)),
            (
                Some(-1),
                2,
                Err("QueryIndex -1 is outside the batch of 2 queries"),
            ),
            (None, 0, Err("missing QueryIndex for a batch of 0 queries")),
        ];
        for (idx, count, want) in cases {
            assert_eq!(
                match_query_index(&series(*idx, vec![]), *count),
                want.map_err(str::to_owned),
                "{idx:?} {count}"
            );
        }
    }

    #[test]
    fn reordered_series_map_by_query_index() {
        let ts = NOW * 1000;
        let got = evaluate_series(
            &["q0", "q1", "q2"],
            &[
                series(Some(2), vec![p(ts - 60_000, 2.0), p(ts, 20.0)]),
                series(Some(0), vec![p(ts - 60_000, 0.5), p(ts, 5.0)]),
                series(Some(1), vec![p(ts - 60_000, 1.0), p(ts, 10.0)]),
            ],
            &params(),
        );
        assert_eq!(got["q0"], valid(0.5, NOW - 60));
        assert_eq!(got["q1"], valid(1.0, NOW - 60));
        assert_eq!(got["q2"], valid(2.0, NOW - 60));
    }

    #[test]
    fn missing_series_is_invalid() {
        let got = evaluate_series(
            &["q0", "q1"],
            &[series(Some(1), vec![p(NOW * 1000, 1.0)])],
            &params(),
        );
        assert_eq!(
            got["q0"],
            QueryOutcome::invalid(
                "no serie returned for this query, check data is available in the last 300 seconds"
            )
        );
        assert_eq!(got["q1"], valid(1.0, NOW));
        // No series at all.
        let got = evaluate_series(&["q0"], &[], &params());
        assert!(!got["q0"].is_valid());
        // Empty chunk.
        assert!(evaluate_series::<&str>(&[], &[], &params()).is_empty());
    }

    #[test]
    fn single_query_without_index_maps_to_it() {
        let got = evaluate_series(&["q"], &[series(None, vec![p(NOW * 1000, 3.0)])], &params());
        assert_eq!(got["q"], valid(3.0, NOW));
    }

    #[test]
    fn empty_pointlist_is_invalid_not_zero() {
        let got = evaluate_series(&["q"], &[series(Some(0), vec![])], &params());
        assert_eq!(
            got["q"],
            QueryOutcome::invalid(
                "only null values found in API response (0 points), check data is available in the last 300 seconds"
            )
        );
    }

    #[test]
    fn staleness_vectors() {
        // max_age 120: now - ts > 120 is outdated.
        let cases: &[(i64, bool)] = &[
            (NOW, true),
            (NOW - 119, true),
            (NOW - 120, true),
            (NOW - 121, false),
            (NOW - 100_000, false),
            (NOW + 60, true), // future points are accepted
        ];
        for (ts, ok) in cases {
            let got = evaluate_series(&["q"], &[series(None, vec![p(ts * 1000, 7.0)])], &params());
            if *ok {
                assert_eq!(got["q"], valid(7.0, *ts), "ts {ts}");
            } else {
                assert_eq!(
                    got["q"],
                    QueryOutcome::Invalid {
                        reason: "Query returned outdated result, check MaxAge setting, query: q"
                            .to_owned(),
                        value: Some(7.0)
                    },
                    "ts {ts}"
                );
            }
        }
        assert_eq!(effective_max_age(120, 30), 120);
        assert_eq!(effective_max_age(120, 60), 180);
        assert_eq!(effective_max_age(0, 0), 0);
        assert!(!is_outdated(i64::MIN, i64::MAX, i64::MAX));
    }

    /// Go `TestProcessor_UpdateExternalMetrics` "do not update valid sparse metric": the
    /// penultimate point is years old, so the query is invalid but keeps its value.
    #[test]
    fn go_vector_outdated_penultimate() {
        let got = evaluate_series(
            &["avg:requests_per_s{2foo:bar}.rollup(30)"],
            &[series(
                None,
                vec![
                    p(1_431_492_452_000, 12.0),
                    p(1_431_492_453_000, 14.0),
                    p((NOW - 30) * 1000, 1000.0),
                ],
            )],
            &EvalParams {
                max_age_secs: 30,
                ..params()
            },
        );
        let QueryOutcome::Invalid { value, .. } = &got["avg:requests_per_s{2foo:bar}.rollup(30)"]
        else {
            panic!("expected invalid: {got:?}");
        };
        assert_eq!(*value, Some(14.0));
    }

    const REAL_BODY: &str = r#"{"status":"ok","res_type":"time_series","resp_version":1,
        "query":"avg:system.cpu.idle{*}.rollup(30),avg:nginx.net.request_per_s{app:nginx}.rollup(30)",
        "from_date":1681683000000,"to_date":1681683300000,
        "series":[
          {"unit":[{"family":"percentage","scale_factor":1.0,"name":"percent","short_name":"%","plural":"percent","id":17},null],
           "query_index":1,"aggr":"avg","metric":"nginx.net.request_per_s","tag_set":["app:nginx"],
           "expression":"avg:nginx.net.request_per_s{app:nginx}.rollup(30)","scope":"app:nginx",
           "interval":30,"length":3,"start":1681683210000.0,"end":1681683299000.0,
           "pointlist":[[1681683210000.0,2470.5],[1681683240000.0,2472.0],[1681683270000.0,null],[1681683300000.0,2480.25]],
           "display_name":"nginx.net.request_per_s","attributes":{}},
          {"unit":null,"query_index":0,"aggr":"avg","metric":"system.cpu.idle","tag_set":[],
           "expression":"avg:system.cpu.idle{*}.rollup(30)","scope":"*","interval":30.0,"length":2,
           "start":1681683240000.0,"end":1681683299000.0,
           "pointlist":[[1681683240000.0,77.62145685254418],[1681683270000.0,78.5]],
           "display_name":"system.cpu.idle"}
        ],
        "values":[],"times":[],"message":"","group_by":[]}"#;

    #[test]
    fn parse_realistic_body() {
        let resp = parse_query_response(REAL_BODY.as_bytes()).unwrap();
        assert_eq!(resp.status.as_deref(), Some("ok"));
        assert_eq!(resp.res_type.as_deref(), Some("time_series"));
        assert_eq!(resp.from_date, Some(1_681_683_000_000));
        assert_eq!(resp.to_date, Some(1_681_683_300_000));
        assert_eq!(resp.message.as_deref(), Some(""));
        assert_eq!(resp.series.len(), 2);
        let s = &resp.series[0];
        assert_eq!(s.query_index, Some(1));
        assert_eq!(s.metric.as_deref(), Some("nginx.net.request_per_s"));
        assert_eq!(s.scope.as_deref(), Some("app:nginx"));
        assert_eq!(s.interval, Some(30));
        assert_eq!(s.tag_set, ["app:nginx"]);
        assert_eq!(s.pointlist[2], DataPoint::null(1_681_683_270_000.0));
        assert_eq!(resp.series[1].interval, Some(30));

        let queries = [
            "avg:system.cpu.idle{*}.rollup(30)",
            "avg:nginx.net.request_per_s{app:nginx}.rollup(30)",
        ];
        let got = evaluate_response(
            &queries,
            &resp,
            &EvalParams {
                now: 1_681_683_300,
                time_window_secs: 300,
                max_age_secs: 120,
            },
        );
        assert_eq!(got[queries[0]], valid(77.62145685254418, 1_681_683_240));
        assert_eq!(got[queries[1]], valid(2472.0, 1_681_683_240));
    }

    #[test]
    fn parse_status_error() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"status":"error","res_type":"time_series","series":[],"error":"Error parsing query: unable to parse avg:{: Rule 'scope_expr' didn't match","message":""}"#,
                "API returned error: Error parsing query: unable to parse avg:{: Rule 'scope_expr' didn't match",
            ),
            (r#"{"status":"error"}"#, "API returned error: "),
            (
                r#"{"status":"error","error":["a","b"]}"#,
                r#"API returned error: ["a","b"]"#,
            ),
        ];
        for (body, want) in cases {
            let err = parse_query_response(body.as_bytes()).unwrap_err();
            assert!(matches!(err, ResponseError::Api(_)));
            assert_eq!(err.to_string(), *want);
        }
    }

    #[test]
    fn parse_lenient_vectors() {
        let ok_cases: &[&str] = &[
            "{}",
            r#"{"status":"ok"}"#,
            r#"{"status":"ok","series":null}"#,
            r#"{"series":[{}]}"#,
            r#"{"series":[{"pointlist":null,"tag_set":null,"query_index":null}]}"#,
            r#"{"series":[{"pointlist":[[]]}]}"#,
            r#"{"series":[{"pointlist":[[1000]]}]}"#,
            r#"{"series":[{"pointlist":[[1000,2,3,4]]}]}"#,
            r#"{"series":[{"pointlist":[[null,null]]}]}"#,
            r#"{"series":[{"query_index":1.0}]}"#,
            r#"{"unknown":{"nested":[1,2]},"status":"ok","error":null}"#,
            r#"{"status":"warning","error":"partial"}"#,
        ];
        for body in ok_cases {
            assert!(parse_query_response(body.as_bytes()).is_ok(), "{body}");
        }
        let err_cases: &[&str] = &[
            "",
            "null",
            "[]",
            "not json",
            r#"{"series":{}}"#,
            r#"{"series":[{"pointlist":[["a",1]]}]}"#,
            r#"{"series":[{"pointlist":[1,2]}]}"#,
            r#"{"series":[{"query_index":0.5}]}"#,
            r#"{"series":[{"query_index":"0"}]}"#,
            r#"{"status":1}"#,
        ];
        for body in err_cases {
            assert!(
                matches!(
                    parse_query_response(body.as_bytes()),
                    Err(ResponseError::Decode(_))
                ),
                "{body}"
            );
        }
        let r = parse_query_response(br#"{"series":[{"pointlist":[[1000]]}]}"#).unwrap();
        assert_eq!(
            r.series[0].pointlist[0],
            DataPoint {
                timestamp_ms: Some(1000.0),
                value: None
            }
        );
        let r = parse_query_response(br#"{"series":[{"pointlist":[[1000,2,3]]}]}"#).unwrap();
        assert_eq!(r.series[0].pointlist[0], DataPoint::new(1000.0, 2.0));
    }

    #[test]
    fn serialize_round_trip() {
        let resp = QueryResponse {
            status: Some("ok".into()),
            series: vec![Series {
                query_index: Some(0),
                pointlist: vec![DataPoint::new(1000.0, 1.5), DataPoint::null(2000.0)],
                ..Series::default()
            }],
            ..QueryResponse::default()
        };
        let json = serde_json::to_string(&resp).unwrap();
        assert_eq!(
            json,
            r#"{"status":"ok","series":[{"pointlist":[[1000.0,1.5],[2000.0,null]],"query_index":0}]}"#
        );
        assert_eq!(parse_query_response(json.as_bytes()).unwrap(), resp);
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn point() -> impl Strategy<Value = DataPoint> {
            (
                proptest::option::weighted(0.95, 0i64..4_000_000_000_000i64),
                proptest::option::weighted(
                    0.7,
                    (-4_000_000i64..4_000_000).prop_map(|v| v as f64 / 4.0),
                ),
            )
                .prop_map(|(t, v)| DataPoint {
                    timestamp_ms: t.map(|t| t as f64),
                    value: v,
                })
        }

        fn a_series() -> impl Strategy<Value = Series> {
            (
                proptest::option::weighted(0.9, -1i64..6),
                proptest::collection::vec(point(), 0..8),
            )
                .prop_map(|(query_index, pointlist)| Series {
                    query_index,
                    pointlist,
                    ..Series::default()
                })
        }

        proptest! {
            #[test]
            fn any_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = parse_query_response(&body);
            }

            #[test]
            fn json_like_text_never_panics(body in r#"[\[\]{}",:0-9a-z_. -]{0,200}"#) {
                let _ = parse_query_response(body.as_bytes());
            }

            #[test]
            fn evaluation_covers_every_query(
                nq in 0usize..5,
                series in proptest::collection::vec(a_series(), 0..8),
                now in 0i64..4_000_000_000i64,
                max_age in 0i64..1000,
            ) {
                let queries: Vec<String> = (0..nq).map(|i| format!("q{i}")).collect();
                let p = EvalParams { now, time_window_secs: 300, max_age_secs: max_age };
                let got = evaluate_series(&queries, &series, &p);
                prop_assert_eq!(got.len(), queries.len());
                for q in &queries {
                    prop_assert!(got.contains_key(q));
                }
                for o in got.values() {
                    if let QueryOutcome::Valid { timestamp, .. } = o {
                        prop_assert!(now - *timestamp <= max_age);
                    }
                }
            }

            #[test]
            fn serialized_responses_parse_back(series in proptest::collection::vec(a_series(), 0..4)) {
                let resp = QueryResponse { status: Some("ok".into()), series, ..QueryResponse::default() };
                let json = serde_json::to_vec(&resp).unwrap();
                prop_assert_eq!(parse_query_response(&json).unwrap(), resp);
            }
        }
    }
}
