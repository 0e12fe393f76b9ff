//! `ExternalMetricValueList` on the wire (contract §1.4), written by hand: field order is
//! Go's, nothing is built twice, and a value that cannot be a Quantity is an error instead
//! of a number the HPA would misread.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use crate::apimachinery::quantity::{self, QuantityError};

/// One value as a source reports it, before it becomes a Quantity on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricValue {
    pub metric_name: String,
    pub metric_labels: BTreeMap<String, String>,
    /// Unix seconds of the point.
    pub timestamp: i64,
    pub window_seconds: Option<i64>,
    pub value: f64,
}

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
pub(crate) fn encode_list<V: ListItem>(values: &[V]) -> Result<Vec<u8>, EncodeError> {
    let capacity = LIST_PREFIX.len()
        + LIST_SUFFIX.len()
        + values.iter().map(|v| v.capacity() + 1).sum::<usize>();
    let mut out = String::with_capacity(capacity);
    out.push_str(LIST_PREFIX);
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        v.write_to(&mut out)?;
    }
    out.push_str(LIST_SUFFIX);
    Ok(out.into_bytes())
}

/// One item of an `ExternalMetricValueList`, as it is written on the wire.
pub(crate) trait ListItem {
    fn write_to(&self, out: &mut String) -> Result<(), EncodeError>;
    /// Bytes `write_to` is expected to write, so the list is allocated once.
    fn capacity(&self) -> usize;
}

impl ListItem for MetricValue {
    fn write_to(&self, out: &mut String) -> Result<(), EncodeError> {
        write_item(out, self)
    }

    fn capacity(&self) -> usize {
        item_capacity(self)
    }
}

impl<T: ListItem> ListItem for Arc<T> {
    fn write_to(&self, out: &mut String) -> Result<(), EncodeError> {
        T::write_to(self, out)
    }

    fn capacity(&self) -> usize {
        T::capacity(self)
    }
}

/// A value as a source publishes it: immutable, shared by every request that serves it,
/// and written in its wire form once, when first served, rather than for every request
/// (the HPA controller asks for the same value every 15 s, from each replica).
#[derive(Debug)]
pub struct PublishedValue {
    value: MetricValue,
    wire: OnceLock<Result<Box<str>, EncodeError>>,
}

impl PublishedValue {
    pub fn new(value: MetricValue) -> Self {
        PublishedValue {
            value,
            wire: OnceLock::new(),
        }
    }

    pub fn value(&self) -> &MetricValue {
        &self.value
    }

    /// The item's JSON, as [`encode_list`] writes it for the plain value.
    pub fn wire(&self) -> Result<&str, EncodeError> {
        let wire = self.wire.get_or_init(|| {
            let mut out = String::with_capacity(item_capacity(&self.value));
            write_item(&mut out, &self.value).map(|()| out.into_boxed_str())
        });
        match wire {
            Ok(json) => Ok(json),
            Err(error) => Err(error.clone()),
        }
    }
}

impl From<MetricValue> for PublishedValue {
    fn from(value: MetricValue) -> Self {
        PublishedValue::new(value)
    }
}

impl std::ops::Deref for PublishedValue {
    type Target = MetricValue;

    fn deref(&self) -> &MetricValue {
        &self.value
    }
}

impl PartialEq for PublishedValue {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl ListItem for PublishedValue {
    fn write_to(&self, out: &mut String) -> Result<(), EncodeError> {
        out.push_str(self.wire()?);
        Ok(())
    }

    fn capacity(&self) -> usize {
        match self.wire.get() {
            Some(Ok(json)) => json.len(),
            _ => item_capacity(&self.value),
        }
    }
}

/// Keys, punctuation and the longest timestamp, window and value of one item.
const ITEM_FIXED: usize = 160;

/// An item's size when nothing needs escaping, so the buffer is allocated once.
fn item_capacity(v: &MetricValue) -> usize {
    let labels: usize = v
        .metric_labels
        .iter()
        .map(|(k, val)| k.len() + val.len() + 6)
        .sum();
    ITEM_FIXED + v.metric_name.len() + labels
}

fn write_item(out: &mut String, v: &MetricValue) -> Result<(), EncodeError> {
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
        out.push_str(r#","window":"#);
        push_i64(out, window);
    }
    out.push_str(r#","value":""#);
    // Canonical quantities are ASCII digits, sign, suffix letters: nothing to escape.
    if !push_milli_quantity(out, v.value) {
        let value = quantity::from_f64(v.value).map_err(|source| EncodeError::Quantity {
            metric: v.metric_name.clone(),
            value: v.value,
            source,
        })?;
        out.push_str(&value.to_canonical_string());
    }
    out.push_str("\"}");
    Ok(())
}

/// Below this magnitude two different multiples of 0.001 never round to the same float
/// (an ulp is at most 2^-20), so a float that is the nearest to one of them has that
/// multiple as its shortest round-trip decimal.
const MILLI_FAST_LIMIT: f64 = 8_589_934_592.0; // 2^33

/// Writes the canonical Quantity of `v` when `v` is the float nearest to a whole number of
/// thousandths below [`MILLI_FAST_LIMIT`] in magnitude, which metric values nearly always
/// are, and returns `true`; otherwise writes nothing and returns `false`. The same string
/// as `quantity::from_f64(v)?.to_canonical_string()` (checked by a property test), without
/// its exact decimal arithmetic, which dominated the cost of encoding a list.
fn push_milli_quantity(out: &mut String, v: f64) -> bool {
    if v.is_nan() || v.abs() >= MILLI_FAST_LIMIT {
        return false;
    }
    let milli = (v * 1000.0).round();
    if milli / 1000.0 != v {
        return false;
    }
    // |milli| < 2^43: the float is an exact integer and the conversion is exact.
    let milli = milli as i64;
    if milli == 0 {
        out.push('0');
        return true;
    }
    // CanonicalizeBytes: integer mantissa, exponent a multiple of 3, largest suffix.
    let mut mantissa = milli.unsigned_abs();
    let mut suffix = 0;
    while mantissa.is_multiple_of(1000) {
        mantissa /= 1000;
        suffix += 1;
    }
    if milli < 0 {
        out.push('-');
    }
    push_u64(out, mantissa);
    // 2^33 × 1000 < 10^13, so at most four groups of three zeros come off.
    out.push_str(["m", "", "k", "M", "G"][suffix]);
    true
}

fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits only.
    out.extend(buf[i..].iter().map(|&b| char::from(b)));
}

fn push_i64(out: &mut String, n: i64) {
    if n < 0 {
        out.push('-');
    }
    push_u64(out, n.unsigned_abs());
}

/// `n` (0 ≤ n < 10^width) with leading zeros.
fn push_padded(out: &mut String, n: i64, width: u32) {
    let mut divisor = 10i64.pow(width - 1);
    while divisor > 0 {
        out.push(char::from(b'0' + (n / divisor % 10) as u8));
        divisor /= 10;
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix second `ts`.
fn write_timestamp(out: &mut String, ts: i64) -> Result<(), ()> {
    if !(MIN_TIMESTAMP..=MAX_TIMESTAMP).contains(&ts) {
        return Err(());
    }
    let days = ts.div_euclid(86_400);
    let secs = ts.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    push_padded(out, y, 4);
    out.push('-');
    push_padded(out, m, 2);
    out.push('-');
    push_padded(out, d, 2);
    out.push('T');
    push_padded(out, secs / 3600, 2);
    out.push(':');
    push_padded(out, secs % 3600 / 60, 2);
    out.push(':');
    push_padded(out, secs % 60, 2);
    out.push('Z');
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
pub(crate) fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    // Byte by byte: everything to escape is ASCII except U+2028/U+2029 (E2 80 A8/A9), and
    // an escape always starts on a character boundary.
    while i < bytes.len() {
        let b = bytes[i];
        let len = match b {
            0x00..=0x1f | b'"' | b'\\' | b'<' | b'>' | b'&' => 1,
            0xe2 if bytes.get(i + 1) == Some(&0x80)
                && matches!(bytes.get(i + 2), Some(0xa8 | 0xa9)) =>
            {
                3
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.push_str(&s[start..i]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0xe2 => out.push_str(if bytes[i + 2] == 0xa8 {
                "\\u2028"
            } else {
                "\\u2029"
            }),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        i += len;
        start = i;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
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
    fn common_values_take_the_fast_path() {
        let cases = [
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (1.5, "1500m"),
            (0.1, "100m"),
            (0.001, "1m"),
            (-2.25, "-2250m"),
            (1500.0, "1500"),
            (3000.0, "3k"),
            (1_500_000.0, "1500k"),
            (1e9, "1G"),
            (8e9, "8G"),
            (123.456, "123456m"),
        ];
        for (v, want) in cases {
            let mut s = String::new();
            assert!(push_milli_quantity(&mut s, v), "{v}");
            assert_eq!(s, want, "{v}");
        }
    }

    #[test]
    fn other_values_take_the_exact_path() {
        for v in [
            0.0001,
            0.1 + 0.2,
            1e10,
            -1e10,
            f64::NAN,
            f64::INFINITY,
            1e-300,
        ] {
            let mut s = String::new();
            assert!(!push_milli_quantity(&mut s, v), "{v}");
            assert!(s.is_empty());
        }
        let item = |v| encode(&[value("m", &[], 0, None, v)]);
        assert!(item(0.0001).contains(r#""value":"100u""#));
        assert!(item(0.1 + 0.2).contains(r#""value":"300000001n""#));
        assert!(item(1e10).contains(r#""value":"10G""#));
    }

    /// The character-wise escaper the byte-wise one replaced, as its reference.
    fn reference_json_string(s: &str) -> String {
        let mut out = String::from('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c < ' ' || matches!(c, '<' | '>' | '&' | '\u{2028}' | '\u{2029}') => {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                }
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    fn quantity_inputs() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            -1e13..1e13f64,
            -10.0..10.0f64,
            (-(1i64 << 44)..(1i64 << 44)).prop_map(|m| m as f64 / 1000.0),
            (-1_000_000i64..1_000_000).prop_map(|m| m as f64 / 1000.0),
            (-9_999i64..9_999, 0u32..5).prop_map(|(m, k)| m as f64 * 1000f64.powi(k as i32)),
            (-1_000_000i64..1_000_000).prop_map(|m| m as f64 / 10_000.0),
        ]
    }

    proptest! {
        #[test]
        fn fast_quantities_match_the_exact_path(v in quantity_inputs()) {
            let mut fast = String::new();
            if push_milli_quantity(&mut fast, v) {
                let exact = quantity::from_f64(v).expect("in range").to_canonical_string();
                prop_assert_eq!(fast, exact);
            }
        }

        #[test]
        fn published_values_encode_as_plain_ones(
            name in "[a-z.<&\"é]{1,12}",
            labels in proptest::collection::btree_map("[a-z_]{1,6}", "[a-z0-9<>\"]{0,6}", 0..4),
            ts in MIN_TIMESTAMP - 10..MAX_TIMESTAMP + 10,
            window in proptest::option::of(0i64..100_000),
            v in prop_oneof![quantity_inputs(), Just(f64::NAN), Just(f64::INFINITY), Just(1e300)],
        ) {
            let plain = vec![MetricValue {
                metric_name: name,
                metric_labels: labels,
                timestamp: ts,
                window_seconds: window,
                value: v,
            }; 2];
            let published: Vec<Arc<PublishedValue>> =
                plain.iter().map(|p| Arc::new(PublishedValue::new(p.clone()))).collect();
            // Twice: the second list reuses the wire forms the first one wrote.
            // Errors compare by message: a NaN in them is not equal to itself.
            let want = encode_list(&plain).map_err(|e| e.to_string());
            for _ in 0..2 {
                prop_assert_eq!(encode_list(&published).map_err(|e| e.to_string()), want.clone());
            }
        }

        #[test]
        fn json_strings_match_the_reference(
            s in prop_oneof![any::<String>(), "[a-z<>&\"\\\\\u{2028}\u{2029}\u{1}\u{7f}é€]{0,12}"],
        ) {
            let mut out = String::new();
            write_json_string(&mut out, &s);
            prop_assert_eq!(out, reference_json_string(&s));
        }
    }

    #[test]
    fn a_published_value_is_written_once() {
        let published =
            PublishedValue::new(value("m", &[("app", "web")], 1_700_000_000, None, 1.5));
        let first = published.wire().unwrap();
        let second = published.wire().unwrap();
        assert!(std::ptr::eq(first, second));
        assert!(first.starts_with(r#"{"metricName":"m","#), "{first}");
        assert!(first.ends_with(r#""value":"1500m"}"#), "{first}");
        // It reads as the value it publishes.
        assert_eq!(published.metric_labels["app"], "web");
        assert_eq!(
            *published.value(),
            value("m", &[("app", "web")], 1_700_000_000, None, 1.5)
        );
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
