//! HPA external metric → Datadog metrics query (dca-contract §3.2, §3.4).
//!
//! The Go DCA builds one query per `(metricName, matchLabels)` pair of an HPA
//! `External` metric: `<aggregator>:<metric>{k:v,k2:v2}.rollup(<rollup>)`, with the
//! `key:value` tags sorted byte-wise as whole strings and `{*}` when there is no label
//! (`getKey` in `pkg/util/kubernetes/autoscalers/processor.go`). The metric name is sent
//! exactly as written in the HPA (no lower-casing). Identical queries are sent once.
//!
//! Everything here is pure: no I/O, no clock.

use std::collections::{BTreeMap, HashSet};

use crate::config::Aggregator;

/// Maximum length of a Datadog metric name accepted for an HPA external metric.
pub(crate) const MAX_METRIC_NAME_LEN: usize = 200;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The HPA metric name does not match `^[a-zA-Z][a-zA-Z0-9_.]{0,199}$`.
    #[error("metric name {name:?} is invalid: {reason}")]
    InvalidMetricName {
        /// The rejected name, as written in the HPA.
        name: String,
        /// Why it was rejected.
        reason: MetricNameError,
    },
    /// A query cannot be safely placed in a comma-joined batch.
    #[error("invalid query {query:?}: {reason}")]
    InvalidBatchQuery {
        /// The rejected query.
        query: String,
        /// Why it was rejected (Go wording of `validateDatadogExternalQuery`).
        reason: String,
    },
}

/// Why a metric name is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricNameError {
    /// The name is empty.
    #[error("it is empty")]
    Empty,
    /// The name is longer than [`MAX_METRIC_NAME_LEN`] bytes.
    #[error("it is {0} characters long, the maximum is 200")]
    TooLong(usize),
    /// The first character is not an ASCII letter.
    #[error("it must start with an ASCII letter, not {0:?}")]
    BadFirstChar(char),
    /// A later character is not an ASCII letter, digit, `_` or `.`.
    #[error(
        "character {ch:?} at byte {index} is not allowed (only ASCII letters, digits, '_' and '.')"
    )]
    BadChar {
        /// The offending character.
        ch: char,
        /// Its byte offset in the name.
        index: usize,
    },
}

/// Returns `true` when `name` matches `^[a-zA-Z][a-zA-Z0-9_.]{0,199}$`
/// (Go `IsValidMetricName`).
#[cfg(test)]
pub(crate) fn is_valid_metric_name(name: &str) -> bool {
    check_metric_name(name).is_ok()
}

/// Validates an HPA external metric name against `^[a-zA-Z][a-zA-Z0-9_.]{0,199}$`.
///
/// The Go DCA skips such a metric with `metric name "<name>" is invalid`; the error here
/// keeps that prefix and adds the reason.
pub(crate) fn validate_metric_name(name: &str) -> Result<(), QueryError> {
    check_metric_name(name).map_err(|reason| QueryError::InvalidMetricName {
        name: name.to_owned(),
        reason,
    })
}

fn check_metric_name(name: &str) -> Result<(), MetricNameError> {
    let mut chars = name.char_indices();
    let Some((_, first)) = chars.next() else {
        return Err(MetricNameError::Empty);
    };
    if !first.is_ascii_alphabetic() {
        return Err(MetricNameError::BadFirstChar(first));
    }
    for (index, ch) in chars {
        if !(ch.is_ascii_alphanumeric() || ch == '_' || ch == '.') {
            return Err(MetricNameError::BadChar { ch, index });
        }
    }
    // Every character is ASCII here, so the byte length is the character count.
    if name.len() > MAX_METRIC_NAME_LEN {
        return Err(MetricNameError::TooLong(name.len()));
    }
    Ok(())
}

/// Converts HPA `matchLabels` into Datadog tags: `key:value`, sorted byte-wise as whole
/// strings (Go sorts the formatted `k:v` strings, so `a.b:1` sorts before `a:2`).
pub(crate) fn labels_to_tags(labels: &BTreeMap<String, String>) -> Vec<String> {
    let mut tags: Vec<String> = labels.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    tags.sort_unstable();
    tags
}

/// The scope part of a query: `{k:v,k2:v2}` or `{*}` when there is no label.
pub fn scope(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        "{*}".to_owned()
    } else {
        format!("{{{}}}", labels_to_tags(labels).join(","))
    }
}

/// Builds the Datadog query for an HPA external metric, exactly as the Go DCA
/// (`getKey`): `<aggregator>:<metric>{tags}.rollup(<rollup>)`.
///
/// The metric name is used as written (not lower-cased, not validated: call
/// [`validate_metric_name`] first).
pub fn build_query(
    aggregator: Aggregator,
    metric_name: &str,
    labels: &BTreeMap<String, String>,
    rollup_secs: u32,
) -> String {
    format!(
        "{}:{}{}.rollup({})",
        aggregator,
        metric_name,
        scope(labels),
        rollup_secs
    )
}

/// [`validate_metric_name`] then [`build_query`].
#[cfg(test)]
pub(crate) fn build_validated_query(
    aggregator: Aggregator,
    metric_name: &str,
    labels: &BTreeMap<String, String>,
    rollup_secs: u32,
) -> Result<String, QueryError> {
    validate_metric_name(metric_name)?;
    Ok(build_query(aggregator, metric_name, labels, rollup_secs))
}

/// Removes duplicate queries, keeping the first occurrence of each and the input order.
pub(crate) fn dedup_queries<I, S>(queries: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for q in queries {
        let q: String = q.into();
        if seen.insert(q.clone()) {
            out.push(q);
        }
    }
    out
}

/// Checks that a query can be placed in a comma-joined batch without changing the
/// meaning of the other queries (upstream `validateDatadogExternalQuery`): it must not be
/// blank, must have balanced `()`, `{}`, `[]` outside quotes, closed `'`/`"` quotes
/// (with `\` escapes inside them), and no comma at the top level.
///
/// Queries built by [`build_query`] from Kubernetes label selectors always pass; this
/// matters for user-written queries (DatadogMetric CRD).
pub(crate) fn validate_batch_query(query: &str) -> Result<(), QueryError> {
    check_batch_query(query).map_err(|reason| QueryError::InvalidBatchQuery {
        query: query.to_owned(),
        reason,
    })
}

fn check_batch_query(query: &str) -> Result<(), String> {
    if query.trim().is_empty() {
        return Err("query is empty".to_owned());
    }
    let mut open: Vec<char> = Vec::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for ch in query.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == q {
                quote = None;
            }
            continue;
        }
        match ch {
            '\'' | '"' => quote = Some(ch),
            '(' | '{' | '[' => open.push(ch),
            ')' | '}' | ']' => {
                let expected = match ch {
                    ')' => '(',
                    '}' => '{',
                    _ => '[',
                };
                if open.pop() != Some(expected) {
                    return Err(format!("unbalanced delimiter '{ch}'"));
                }
            }
            ',' if open.is_empty() => {
                return Err("query contains a top-level comma".to_owned());
            }
            _ => {}
        }
    }
    if quote.is_some() {
        return Err("query contains an unterminated quoted string".to_owned());
    }
    if let Some(last) = open.last() {
        return Err(format!("query contains an unclosed delimiter '{last}'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Pairs<'a> = &'a [(&'a str, &'a str)];

    fn labels(pairs: Pairs<'_>) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn metric_name_validation_vectors() {
        let long200 = format!("a{}", "b".repeat(199));
        let long201 = format!("a{}", "b".repeat(200));
        let cases: &[(&str, bool)] = &[
            ("nginx.net.request_per_s", true),
            ("a", true),
            ("A", true),
            ("Foo.Bar_9", true),
            ("requests_per_s", true),
            ("kubernetes.io", true),
            (long200.as_str(), true),
            (long201.as_str(), false),
            ("", false),
            ("1abc", false),
            ("_abc", false),
            (".abc", false),
            ("abc-def", false),
            ("abc def", false),
            ("abc\n", false),
            ("abc{foo:bar}", false),
            ("datadogmetric@default:foo", false),
            ("métrique", false),
            ("a,b", false),
        ];
        for (name, ok) in cases {
            assert_eq!(is_valid_metric_name(name), *ok, "name {name:?}");
            assert_eq!(validate_metric_name(name).is_ok(), *ok, "name {name:?}");
        }
    }

    #[test]
    fn metric_name_error_reasons() {
        let cases: &[(&str, MetricNameError)] = &[
            ("", MetricNameError::Empty),
            ("9lives", MetricNameError::BadFirstChar('9')),
            ("ab-c", MetricNameError::BadChar { ch: '-', index: 2 }),
            ("aé", MetricNameError::BadChar { ch: 'é', index: 1 }),
        ];
        for (name, reason) in cases {
            assert_eq!(
                validate_metric_name(name),
                Err(QueryError::InvalidMetricName {
                    name: (*name).to_owned(),
                    reason: reason.clone()
                })
            );
        }
        let long = "a".repeat(201);
        assert_eq!(
            validate_metric_name(&long),
            Err(QueryError::InvalidMetricName {
                name: long.clone(),
                reason: MetricNameError::TooLong(201)
            })
        );
        let msg = validate_metric_name("ab-c").unwrap_err().to_string();
        assert!(msg.starts_with("metric name \"ab-c\" is invalid"), "{msg}");
    }

    /// Vectors from Go `TestGetKey` plus the contract example.
    #[test]
    fn build_query_vectors() {
        let cases: &[(Aggregator, &str, Pairs<'_>, u32, &str)] = &[
            (
                Aggregator::Avg,
                "kubernetes.io",
                &[("foo", "bar")],
                30,
                "avg:kubernetes.io{foo:bar}.rollup(30)",
            ),
            (
                Aggregator::Avg,
                "kubernetes.io",
                &[("zfoo", "bar"), ("afoo", "bar"), ("ffoo", "bar")],
                30,
                "avg:kubernetes.io{afoo:bar,ffoo:bar,zfoo:bar}.rollup(30)",
            ),
            (
                Aggregator::Avg,
                "kubernetes.io",
                &[],
                30,
                "avg:kubernetes.io{*}.rollup(30)",
            ),
            (
                Aggregator::Avg,
                "nginx.net.request_per_s",
                &[("env", "prod"), ("app", "nginx")],
                30,
                "avg:nginx.net.request_per_s{app:nginx,env:prod}.rollup(30)",
            ),
            (
                Aggregator::Sum,
                "Nginx.Net.Request_Per_S",
                &[("App", "Nginx")],
                60,
                "sum:Nginx.Net.Request_Per_S{App:Nginx}.rollup(60)",
            ),
            (
                Aggregator::Max,
                "m",
                &[("a", "2"), ("a.b", "1")],
                0,
                "max:m{a.b:1,a:2}.rollup(0)",
            ),
            (
                Aggregator::Min,
                "m",
                &[("k", "")],
                30,
                "min:m{k:}.rollup(30)",
            ),
        ];
        for (agg, name, l, rollup, want) in cases {
            assert_eq!(build_query(*agg, name, &labels(l), *rollup), *want);
            assert_eq!(
                build_validated_query(*agg, name, &labels(l), *rollup).as_deref(),
                Ok(*want)
            );
        }
        assert!(build_validated_query(Aggregator::Avg, "bad-name", &BTreeMap::new(), 30).is_err());
    }

    #[test]
    fn labels_to_tags_vectors() {
        let cases: &[(Pairs<'_>, &[&str])] = &[
            (&[], &[]),
            (&[("foo", "bar")], &["foo:bar"]),
            (&[("b", "1"), ("a", "2")], &["a:2", "b:1"]),
            // Whole-string byte order: '.' (0x2E) < ':' (0x3A).
            (&[("a", "2"), ("a.b", "1")], &["a.b:1", "a:2"]),
            (&[("Z", "1"), ("a", "1")], &["Z:1", "a:1"]),
        ];
        for (l, want) in cases {
            assert_eq!(labels_to_tags(&labels(l)), *want);
        }
        assert_eq!(scope(&BTreeMap::new()), "{*}");
        assert_eq!(scope(&labels(&[("b", "1"), ("a", "2")])), "{a:2,b:1}");
    }

    #[test]
    fn dedup_vectors() {
        let cases: &[(&[&str], &[&str])] = &[
            (&[], &[]),
            (&["a"], &["a"]),
            (&["a", "a"], &["a"]),
            (&["b", "a", "b", "c", "a"], &["b", "a", "c"]),
            (&["A", "a"], &["A", "a"]),
        ];
        for (input, want) in cases {
            assert_eq!(dedup_queries(input.iter().copied()), *want);
        }
        let owned = vec!["x".to_owned(), "x".to_owned()];
        assert_eq!(dedup_queries(owned), vec!["x".to_owned()]);
    }

    /// Vectors from Go `TestValidateDatadogExternalQuery`.
    #[test]
    fn batch_query_validation_vectors() {
        let cases: &[(&str, Option<&str>)] = &[
            ("avg:requests{env:prod}", None),
            (
                "moving_rollup(avg:requests{env:prod,service:web}, 300, 'sum')",
                None,
            ),
            ("avg:requests{value:\"one,two\"}", None),
            ("avg:requests{value:\"a\\\"b,c\"}", None),
            ("avg:m{a:b,c:d}.rollup(30)", None),
            (
                "avg:attacker{*},avg:victim{*}",
                Some("query contains a top-level comma"),
            ),
            ("  ", Some("query is empty")),
            ("", Some("query is empty")),
            ("avg:requests{env:prod)", Some("unbalanced delimiter ')'")),
            ("avg:requests]", Some("unbalanced delimiter ']'")),
            (
                "avg:requests{env:prod",
                Some("query contains an unclosed delimiter '{'"),
            ),
            (
                "avg:requests{value:\"unterminated}",
                Some("query contains an unterminated quoted string"),
            ),
        ];
        for (q, want) in cases {
            match want {
                None => assert_eq!(validate_batch_query(q), Ok(()), "{q:?}"),
                Some(reason) => assert_eq!(
                    validate_batch_query(q),
                    Err(QueryError::InvalidBatchQuery {
                        query: (*q).to_owned(),
                        reason: (*reason).to_owned()
                    }),
                    "{q:?}"
                ),
            }
        }
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn built_queries_from_valid_names_and_k8s_labels_batch_safely(
                name in "[a-zA-Z][a-zA-Z0-9_.]{0,40}",
                l in proptest::collection::btree_map("[a-z][a-z0-9._/-]{0,10}", "[A-Za-z0-9._-]{0,10}", 0..5),
            ) {
                prop_assert!(is_valid_metric_name(&name));
                let q = build_query(Aggregator::Avg, &name, &l, 30);
                prop_assert!(validate_batch_query(&q).is_ok(), "{}", q);
            }

            #[test]
            fn metric_name_check_never_panics(name in any::<String>()) {
                let _ = validate_metric_name(&name);
                let _ = validate_batch_query(&name);
            }
        }
    }
}
