//! `ExternalMetricValueList` on the wire (contract §1.4), written by hand: field order is
//! Go's, nothing is built twice, and a value that cannot be a Quantity is an error instead
//! of a number the HPA would misread.

use std::fmt::Write as _;

use crate::external_metrics::api::MetricValue;
use crate::external_metrics::quantity::{self, QuantityError};

/// Why a list could not be written; answered as 500 InternalError naming the metric.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    #[error("metric {metric} has value {value} that cannot be served as a quantity: {source}")]
    Quantity {
        metric: String,
        value: f64,
        source: QuantityError,
    },
    /// metav1.Time marshals years 0 to 9999 only; Go's encoder fails beyond that.
    #[error("metric {metric} has timestamp {timestamp}, outside the years 0000 to 9999")]
    Timestamp { metric: String, timestamp: i64 },
}

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z as Unix seconds.
const MIN_TIMESTAMP: i64 = -62_167_219_200;
const MAX_TIMESTAMP: i64 = 253_402_300_799;

const LIST_PREFIX: &str = r#"{"kind":"ExternalMetricValueList","apiVersion":"external.metrics.k8s.io/v1beta1","metadata":{},"items":["#;
const LIST_SUFFIX: &str = "]}";

/// Serialises `values` as an `ExternalMetricValueList`:
/// * `items` is `[]` when empty, never `null` (the HPA would fail on a nil list anyway, but
///   other clients decode into non-optional arrays);
/// * `metricLabels` is always an object, `{}` when there are none: Go decodes `{}` and
///   `null` alike, and strict decoders elsewhere want an object;
/// * `timestamp` is RFC 3339 in UTC with second precision, as `metav1.Time` writes it;
/// * `window` is omitted when unknown, as Go's `omitempty` does;
/// * `value` is the canonical Quantity string.
pub fn encode_list(values: &[MetricValue]) -> Result<Vec<u8>, EncodeError> {
    let mut out = String::with_capacity(LIST_PREFIX.len() + LIST_SUFFIX.len() + values.len() * 160);
    out.push_str(LIST_PREFIX);
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_item(&mut out, v)?;
    }
    out.push_str(LIST_SUFFIX);
    Ok(out.into_bytes())
}

fn write_item(out: &mut String, v: &MetricValue) -> Result<(), EncodeError> {
    let value = quantity::from_f64(v.value).map_err(|source| EncodeError::Quantity {
        metric: v.metric_name.clone(),
        value: v.value,
        source,
    })?;
    out.push_str(r#"{"metricName":"#);
    write_json_string(out, &v.metric_name);
    out.push_str(r#","metricLabels":{"#);
    for (i, (k, val)) in v.metric_labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_string(out, k);
        out.push(':');
        write_json_string(out, val);
    }
    out.push_str(r#"},"timestamp":""#);
    write_timestamp(out, v.timestamp).map_err(|()| EncodeError::Timestamp {
        metric: v.metric_name.clone(),
        timestamp: v.timestamp,
    })?;
    out.push('"');
    if let Some(window) = v.window_seconds {
        // Writing into a String cannot fail.
        let _ = write!(out, r#","window":{window}"#);
    }
    out.push_str(r#","value":""#);
    // Canonical quantities are ASCII digits, sign, suffix letters: nothing to escape.
    out.push_str(&value.to_canonical_string());
    out.push_str("\"}");
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix second `ts`.
fn write_timestamp(out: &mut String, ts: i64) -> Result<(), ()> {
    if !(MIN_TIMESTAMP..=MAX_TIMESTAMP).contains(&ts) {
        return Err(());
    }
    let days = ts.div_euclid(86_400);
    let secs = ts.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    );
    Ok(())
}

/// Proleptic Gregorian date of a count of days since 1970-01-01, by counting 400-year eras
/// of 146 097 days from 0000-03-01 (so leap days fall at the end of each shifted year).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A JSON string literal, escaped as Go's encoder escapes it (`<`, `>`, `&`, U+2028 and
/// U+2029 included), so bodies are byte-identical to what a Go server would write.
pub fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escape: Option<&str> = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            _ => None,
        };
        let needs_hex =
            escape.is_none() && (c < ' ' || matches!(c, '<' | '>' | '&' | '\u{2028}' | '\u{2029}'));
        if escape.is_none() && !needs_hex {
            continue;
        }
        out.push_str(&s[start..i]);
        match escape {
            Some(e) => out.push_str(e),
            None => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
        }
        start = i + c.len_utf8();
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn value(
        name: &str,
        labels: &[(&str, &str)],
        ts: i64,
        window: Option<i64>,
        v: f64,
    ) -> MetricValue {
        MetricValue {
            metric_name: name.into(),
            metric_labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            timestamp: ts,
            window_seconds: window,
            value: v,
        }
    }

    fn encode(values: &[MetricValue]) -> String {
        String::from_utf8(encode_list(values).unwrap()).unwrap()
    }

    #[test]
    fn empty_list_has_empty_items() {
        assert_eq!(
            encode(&[]),
            r#"{"kind":"ExternalMetricValueList","apiVersion":"external.metrics.k8s.io/v1beta1","metadata":{},"items":[]}"#
        );
    }

    #[test]
    fn list_golden() {
        // 2021-10-20T10:48:17Z, the KEDA docs example.
        let items = [
            value("s1-rabbitmq-queuename2", &[], 1_634_726_897, None, 0.0),
            value(
                "nginx.net.request_per_s",
                &[("app", "web"), ("kube_namespace", "prod")],
                1_634_726_897,
                Some(300),
                1.5,
            ),
        ];
        assert_eq!(
            encode(&items),
            concat!(
                r#"{"kind":"ExternalMetricValueList","apiVersion":"external.metrics.k8s.io/v1beta1","metadata":{},"items":["#,
                r#"{"metricName":"s1-rabbitmq-queuename2","metricLabels":{},"timestamp":"2021-10-20T10:48:17Z","value":"0"},"#,
                r#"{"metricName":"nginx.net.request_per_s","metricLabels":{"app":"web","kube_namespace":"prod"},"timestamp":"2021-10-20T10:48:17Z","window":300,"value":"1500m"}"#,
                "]}"
            )
        );
    }

    #[test]
    fn list_is_valid_json_with_the_upstream_shape() {
        let items = [value("m", &[("a\"b", "<x>&\u{1}")], 0, Some(60), 3000.0)];
        let doc: serde_json::Value = serde_json::from_slice(&encode_list(&items).unwrap()).unwrap();
        let item = &doc["items"][0];
        assert_eq!(item["metricLabels"]["a\"b"], "<x>&\u{1}");
        assert_eq!(item["timestamp"], "1970-01-01T00:00:00Z");
        assert_eq!(item["window"], 60);
        assert_eq!(item["value"], "3k");
    }

    #[test]
    fn values_that_are_not_quantities_are_errors_naming_the_metric() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300] {
            let err = encode_list(&[value("queue.depth", &[], 0, None, bad)]).unwrap_err();
            assert!(
                matches!(&err, EncodeError::Quantity { metric, .. } if metric == "queue.depth"),
                "{err}"
            );
            assert!(err.to_string().contains("queue.depth"), "{err}");
        }
    }

    #[test]
    fn timestamps_outside_metav1_time_are_errors() {
        assert!(encode_list(&[value("m", &[], MAX_TIMESTAMP + 1, None, 1.0)]).is_err());
        assert!(encode_list(&[value("m", &[], MIN_TIMESTAMP - 1, None, 1.0)]).is_err());
        assert!(encode_list(&[value("m", &[], i64::MIN, None, 1.0)]).is_err());
    }

    #[test]
    fn timestamp_vectors() {
        let cases = [
            (0, "1970-01-01T00:00:00Z"),
            (1_634_726_897, "2021-10-20T10:48:17Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (4_107_542_399, "2100-02-28T23:59:59Z"),
            (-1, "1969-12-31T23:59:59Z"),
            (MIN_TIMESTAMP, "0000-01-01T00:00:00Z"),
            (MAX_TIMESTAMP, "9999-12-31T23:59:59Z"),
        ];
        for (ts, want) in cases {
            let mut s = String::new();
            write_timestamp(&mut s, ts).unwrap();
            assert_eq!(s, want, "{ts}");
        }
    }

    #[test]
    fn timestamps_agree_with_jiff() {
        for ts in (MIN_TIMESTAMP..MAX_TIMESTAMP)
            .step_by(7_777_777_777)
            .chain([1_700_000_000])
        {
            let mut s = String::new();
            write_timestamp(&mut s, ts).unwrap();
            let want = jiff::Timestamp::from_second(ts)
                .unwrap()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            assert_eq!(s, want, "{ts}");
        }
    }

    #[test]
    fn json_string_escaping_matches_go() {
        let mut s = String::new();
        write_json_string(&mut s, "a\"b\\c\nd\u{1}<>&\u{2028}é");
        assert_eq!(s, r#""a\"b\\c\nd\u0001\u003c\u003e\u0026\u2028é""#);
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}<>&\u{2028}é");
    }
}
