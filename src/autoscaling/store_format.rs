//! Data format of the `datadog-custom-metrics` ConfigMap store (dca-contract §3.2; Go
//! `pkg/clusteragent/autoscaling/custommetrics/{types.go,store.go,store_configmap.go}`).
//!
//! - One data key per (autoscaler, metric): `external_metric-<type>-<namespace>-<name>-<metricName>`
//!   (`type` is `horizontal` or `watermark`; the labels are **not** part of the key, the
//!   metric name keeps its case).
//! - The value is the JSON of [`ExternalMetricValue`], written byte-for-byte as Go's
//!   `json.Marshal` does:
//!   `{"metricName":…,"labels":{…}|null,"ts":…,"reference":{"type":…,"name":…,"namespace":…,"uid":…},"value":…,"valid":…}`.
//! - A legacy value with `hpa` instead of `reference` (detected, as in Go, by an empty
//!   `reference.type`) is a [`DeprecatedExternalMetricValue`], to be deleted.
//! - Annotation `custom-metrics.datadoghq.com/last-updated` = RFC 3339 time of the update.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::config::Aggregator;
use crate::datadog::query::build_query;
use crate::datadog::response::QueryOutcome;

/// Default ConfigMap name (`hpa_configmap_name`).
pub const DEFAULT_CONFIGMAP_NAME: &str = "datadog-custom-metrics";
/// Annotation set to the RFC 3339 time of every update of the ConfigMap.
pub const LAST_UPDATED_ANNOTATION: &str = "custom-metrics.datadoghq.com/last-updated";
/// Prefix of every external metric data key.
pub(crate) const KEY_PREFIX: &str = "external_metric";
/// Separator of the key parts.
pub(crate) const KEY_DELIMITER: &str = "-";
/// `reference.type` of an HPA.
pub(crate) const REFERENCE_TYPE_HORIZONTAL: &str = "horizontal";
/// `reference.type` of a WatermarkPodAutoscaler.
pub(crate) const REFERENCE_TYPE_WATERMARK: &str = "watermark";
/// Maximum length of a ConfigMap data key (Kubernetes `IsConfigMapKey`).
pub(crate) const MAX_CONFIGMAP_KEY_LEN: usize = 253;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreFormatError {
    /// The value is not valid JSON for an entry.
    #[error("could not decode the external metric entry: {0}")]
    Decode(String),
    /// NaN and infinities have no JSON form (Go: `json: unsupported value`).
    #[error("json: unsupported value: {0}")]
    UnsupportedValue(String),
}

/// The autoscaler an entry belongs to (Go `ObjectReference`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct ObjectReference {
    /// `horizontal` or `watermark`; empty in legacy entries.
    #[serde(rename = "type", default, deserialize_with = "null_as_default")]
    pub kind: String,
    /// Autoscaler name.
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    /// Autoscaler namespace.
    #[serde(default, deserialize_with = "null_as_default")]
    pub namespace: String,
    /// Autoscaler UID.
    #[serde(default, deserialize_with = "null_as_default")]
    pub uid: String,
}

impl ObjectReference {
    /// A reference to an HPA.
    pub fn horizontal(
        namespace: impl Into<String>,
        name: impl Into<String>,
        uid: impl Into<String>,
    ) -> Self {
        ObjectReference {
            kind: REFERENCE_TYPE_HORIZONTAL.to_owned(),
            name: name.into(),
            namespace: namespace.into(),
            uid: uid.into(),
        }
    }

    /// A reference to a WatermarkPodAutoscaler.
    pub fn watermark(
        namespace: impl Into<String>,
        name: impl Into<String>,
        uid: impl Into<String>,
    ) -> Self {
        ObjectReference {
            kind: REFERENCE_TYPE_WATERMARK.to_owned(),
            ..ObjectReference::horizontal(namespace, name, uid)
        }
    }
}

/// One stored external metric (Go `ExternalMetricValue`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ExternalMetricValue {
    /// Metric name as written in the autoscaler.
    #[serde(rename = "metricName", default, deserialize_with = "null_as_default")]
    pub metric_name: String,
    /// `matchLabels` of the metric selector (written as `null` when empty, like Go's nil map).
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: BTreeMap<String, String>,
    /// Unix seconds: the point's time when valid, the update time otherwise.
    #[serde(rename = "ts", default, deserialize_with = "null_as_default")]
    pub timestamp: i64,
    /// Owning autoscaler.
    #[serde(default, deserialize_with = "null_as_default")]
    pub reference: ObjectReference,
    /// Last value.
    #[serde(default, deserialize_with = "null_as_default")]
    pub value: f64,
    /// Only valid entries are served.
    #[serde(default, deserialize_with = "null_as_default")]
    pub valid: bool,
}

/// Legacy entry with `hpa` instead of `reference` (Go `DeprecatedExternalMetricValue`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DeprecatedExternalMetricValue {
    /// Metric name.
    #[serde(rename = "metricName", default, deserialize_with = "null_as_default")]
    pub metric_name: String,
    /// Labels.
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: BTreeMap<String, String>,
    /// Unix seconds.
    #[serde(rename = "ts", default, deserialize_with = "null_as_default")]
    pub timestamp: i64,
    /// Owning HPA.
    #[serde(default, deserialize_with = "null_as_default")]
    pub hpa: ObjectReference,
    /// Value.
    #[serde(default, deserialize_with = "null_as_default")]
    pub value: f64,
    /// Always `false` once decoded (Go invalidates legacy entries).
    #[serde(default, deserialize_with = "null_as_default")]
    pub valid: bool,
}

/// A decoded data value.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredEntry {
    /// Current format.
    Current(ExternalMetricValue),
    /// Legacy format: delete it (by the data key it was read from).
    Deprecated(DeprecatedExternalMetricValue),
}

/// Like Go for non-pointer fields: `null` leaves the zero value.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Data key of an entry: `external_metric-<type>-<namespace>-<name>-<metricName>`
/// (Go `ExternalMetricValueKeyFunc`).
pub(crate) fn entry_key(reference: &ObjectReference, metric_name: &str) -> String {
    [
        KEY_PREFIX,
        reference.kind.as_str(),
        reference.namespace.as_str(),
        reference.name.as_str(),
        metric_name,
    ]
    .join(KEY_DELIMITER)
}

/// Data key of a legacy entry: `external_metric-<namespace>-<name>-<metricName>`
/// (Go `DeprecatedExternalMetricValueKeyFunc`).
pub(crate) fn deprecated_entry_key(hpa: &ObjectReference, metric_name: &str) -> String {
    [
        KEY_PREFIX,
        hpa.namespace.as_str(),
        hpa.name.as_str(),
        metric_name,
    ]
    .join(KEY_DELIMITER)
}

/// `true` for data keys holding external metrics (Go: prefix `external_metric`).
pub(crate) fn is_external_metric_key(key: &str) -> bool {
    key.starts_with(KEY_PREFIX)
}

/// `true` if Kubernetes accepts `key` as a ConfigMap data key (at most 253 characters of
/// `[-._a-zA-Z0-9]`, not `.`, not starting with `..`). The Go DCA does not check this,
/// so one overlong key makes every update of the ConfigMap fail.
pub fn is_valid_configmap_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_CONFIGMAP_KEY_LEN
        && key != "."
        && !key.starts_with("..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl ExternalMetricValue {
    /// A fresh, invalid entry (value 0, `ts = now`) as the Go DCA stores for a newly seen
    /// autoscaler metric (`ProcessEMList`).
    pub fn placeholder(
        metric_name: impl Into<String>,
        labels: BTreeMap<String, String>,
        reference: ObjectReference,
        now: i64,
    ) -> Self {
        ExternalMetricValue {
            metric_name: metric_name.into(),
            labels,
            timestamp: now,
            reference,
            value: 0.0,
            valid: false,
        }
    }

    /// [`entry_key`] of this entry.
    pub fn key(&self) -> String {
        entry_key(&self.reference, &self.metric_name)
    }

    /// The Datadog query for this entry ([`build_query`]).
    pub fn query(&self, aggregator: Aggregator, rollup_secs: u32) -> String {
        build_query(aggregator, &self.metric_name, &self.labels, rollup_secs)
    }

    /// Applies the result of this entry's query as the Go leader does
    /// (`UpdateExternalMetrics`): a valid point sets `value`, `ts = point time` and
    /// `valid`; anything else (including no result at all) sets `valid = false`,
    /// `ts = now` and `value` to the rejected point's value if it was only too old, 0
    /// otherwise.
    pub fn apply_outcome(&mut self, outcome: Option<&QueryOutcome>, now: i64) {
        match outcome {
            Some(QueryOutcome::Valid { value, timestamp }) => {
                self.value = *value;
                self.timestamp = *timestamp;
                self.valid = true;
            }
            Some(QueryOutcome::Invalid { value, .. }) => {
                self.value = value.unwrap_or(0.0);
                self.timestamp = now;
                self.valid = false;
            }
            None => {
                self.value = 0.0;
                self.timestamp = now;
                self.valid = false;
            }
        }
    }
}

impl DeprecatedExternalMetricValue {
    /// [`deprecated_entry_key`] of this entry.
    pub fn key(&self) -> String {
        deprecated_entry_key(&self.hpa, &self.metric_name)
    }
}

/// Encodes an entry exactly as Go's `json.Marshal(ExternalMetricValue)`: field order,
/// `null` for no label, Go number formatting (`0`, `12.5`, `1e+21`, `1e-7`) and Go string
/// escaping (`<`, `>`, `&`, U+2028/U+2029 as `\u…`). Fails only for NaN or infinite values.
pub fn encode_entry(entry: &ExternalMetricValue) -> Result<String, StoreFormatError> {
    let value = go_format_float(entry.value)?;
    let mut out = String::with_capacity(128);
    out.push_str("{\"metricName\":");
    push_go_string(&mut out, &entry.metric_name);
    out.push_str(",\"labels\":");
    push_labels(&mut out, &entry.labels);
    out.push_str(",\"ts\":");
    out.push_str(&entry.timestamp.to_string());
    out.push_str(",\"reference\":");
    push_reference(&mut out, &entry.reference);
    out.push_str(",\"value\":");
    out.push_str(&value);
    out.push_str(",\"valid\":");
    out.push_str(if entry.valid { "true" } else { "false" });
    out.push('}');
    Ok(out)
}

/// Encodes a legacy entry as Go would (only useful for tests and migrations).
pub fn encode_deprecated_entry(
    entry: &DeprecatedExternalMetricValue,
) -> Result<String, StoreFormatError> {
    let value = go_format_float(entry.value)?;
    let mut out = String::with_capacity(128);
    out.push_str("{\"metricName\":");
    push_go_string(&mut out, &entry.metric_name);
    out.push_str(",\"labels\":");
    push_labels(&mut out, &entry.labels);
    out.push_str(",\"ts\":");
    out.push_str(&entry.timestamp.to_string());
    out.push_str(",\"hpa\":");
    push_reference(&mut out, &entry.hpa);
    out.push_str(",\"value\":");
    out.push_str(&value);
    out.push_str(",\"valid\":");
    out.push_str(if entry.valid { "true" } else { "false" });
    out.push('}');
    Ok(out)
}

/// Decodes a data value. Like Go: unknown fields are ignored, missing or `null` fields
/// take their zero value, and an entry whose `reference.type` is empty is the legacy
/// format (returned as [`StoredEntry::Deprecated`] with `valid = false`).
pub fn decode_entry(json: &str) -> Result<StoredEntry, StoreFormatError> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "metricName", default, deserialize_with = "null_as_default")]
        metric_name: String,
        #[serde(default, deserialize_with = "null_as_default")]
        labels: BTreeMap<String, String>,
        #[serde(rename = "ts", default, deserialize_with = "null_as_default")]
        timestamp: i64,
        #[serde(default, deserialize_with = "null_as_default")]
        reference: ObjectReference,
        #[serde(default, deserialize_with = "null_as_default")]
        hpa: ObjectReference,
        #[serde(default, deserialize_with = "null_as_default")]
        value: f64,
        #[serde(default, deserialize_with = "null_as_default")]
        valid: bool,
    }

    // serde would also accept a struct written as a JSON array; Go does not.
    if !json.trim_start().starts_with('{') {
        return Err(StoreFormatError::Decode(
            "expected a JSON object".to_owned(),
        ));
    }
    let raw: Raw =
        serde_json::from_str(json).map_err(|e| StoreFormatError::Decode(e.to_string()))?;
    if raw.reference.kind.is_empty() {
        return Ok(StoredEntry::Deprecated(DeprecatedExternalMetricValue {
            metric_name: raw.metric_name,
            labels: raw.labels,
            timestamp: raw.timestamp,
            hpa: raw.hpa,
            value: raw.value,
            valid: false,
        }));
    }
    Ok(StoredEntry::Current(ExternalMetricValue {
        metric_name: raw.metric_name,
        labels: raw.labels,
        timestamp: raw.timestamp,
        reference: raw.reference,
        value: raw.value,
        valid: raw.valid,
    }))
}

/// Value of [`LAST_UPDATED_ANNOTATION`]: RFC 3339, whole seconds, UTC
/// (`2025-01-01T00:00:00Z`; Go formats in the process time zone, UTC in the DCA image).
pub(crate) fn format_last_updated(now: jiff::Timestamp) -> String {
    let mut secs = now.as_second();
    if now.subsec_nanosecond() < 0 {
        secs -= 1;
    }
    jiff::Timestamp::from_second(secs)
        .unwrap_or(now)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn push_labels(out: &mut String, labels: &BTreeMap<String, String>) {
    if labels.is_empty() {
        out.push_str("null");
        return;
    }
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_go_string(out, k);
        out.push(':');
        push_go_string(out, v);
    }
    out.push('}');
}

fn push_reference(out: &mut String, r: &ObjectReference) {
    out.push_str("{\"type\":");
    push_go_string(out, &r.kind);
    out.push_str(",\"name\":");
    push_go_string(out, &r.name);
    out.push_str(",\"namespace\":");
    push_go_string(out, &r.namespace);
    out.push_str(",\"uid\":");
    push_go_string(out, &r.uid);
    out.push('}');
}

/// Go `encoding/json` string encoding with HTML escaping (Go ≥ 1.22: `\b`, `\f`).
fn push_go_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c if (c as u32) < 0x20 || matches!(c, '<' | '>' | '&') => {
                // Below 0x80 here, so both nibbles index the 16-entry table.
                let b = c as u32 as usize;
                out.push_str("\\u00");
                out.push(char::from(HEX[b >> 4]));
                out.push(char::from(HEX[b & 0xF]));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Go `encoding/json` float64 formatting: shortest round-trip digits, plain notation,
/// except exponent notation below 1e-6 or from 1e21 on (`1e+21`, `1e-7`).
pub fn go_format_float(f: f64) -> Result<String, StoreFormatError> {
    if !f.is_finite() {
        return Err(StoreFormatError::UnsupportedValue(
            if f.is_nan() {
                "NaN"
            } else if f > 0.0 {
                "+Inf"
            } else {
                "-Inf"
            }
            .to_owned(),
        ));
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        // Rust: `1e21`, `1.5e-7`; Go: `1e+21`, `1.5e-07` cleaned up to `1.5e-7`.
        let s = format!("{f:e}");
        return Ok(match s.split_once('e') {
            Some((mantissa, exp)) if !exp.starts_with('-') => format!("{mantissa}e+{exp}"),
            _ => s,
        });
    }
    Ok(format!("{f}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn reference(kind: &str, ns: &str, name: &str, uid: &str) -> ObjectReference {
        ObjectReference {
            kind: kind.to_owned(),
            name: name.to_owned(),
            namespace: ns.to_owned(),
            uid: uid.to_owned(),
        }
    }

    /// Go `TestExternalMetricValueKeyFunc`, `TestProcessor_ProcessHPAs` keys.
    #[test]
    fn entry_key_vectors() {
        let cases: &[(ObjectReference, &str, &str)] = &[
            (
                reference("horizontal", "default", "bar", ""),
                "foo",
                "external_metric-horizontal-default-bar-foo",
            ),
            (
                reference("horizontal", "DefauLt", "bar", ""),
                "FoO",
                "external_metric-horizontal-DefauLt-bar-FoO",
            ),
            (
                reference("watermark", "default", "bar", ""),
                "foo",
                "external_metric-watermark-default-bar-foo",
            ),
            (
                reference("watermark", "DefauLt", "bar", ""),
                "FoO",
                "external_metric-watermark-DefauLt-bar-FoO",
            ),
            (
                reference("horizontal", "default", "nginxext", "u-1"),
                "nginx.net.request_per_s",
                "external_metric-horizontal-default-nginxext-nginx.net.request_per_s",
            ),
            (
                reference("", "default", "foo", ""),
                "requests_per_s",
                "external_metric--default-foo-requests_per_s",
            ),
        ];
        for (r, metric, want) in cases {
            assert_eq!(entry_key(r, metric), *want);
            let e = ExternalMetricValue::placeholder(*metric, BTreeMap::new(), r.clone(), 0);
            assert_eq!(e.key(), *want);
        }
        assert_eq!(
            deprecated_entry_key(&reference("", "default", "bar", ""), "requests_per_s"),
            "external_metric-default-bar-requests_per_s"
        );
    }

    #[test]
    fn key_predicates() {
        assert!(is_external_metric_key(
            "external_metric-horizontal-default-bar-foo"
        ));
        assert!(is_external_metric_key("external_metric"));
        assert!(!is_external_metric_key("other"));
        assert!(!is_external_metric_key("External_metric-x"));

        assert!(is_valid_configmap_key(
            "external_metric-horizontal-default-bar-nginx.net.request_per_s"
        ));
        assert!(is_valid_configmap_key(&"a".repeat(253)));
        assert!(!is_valid_configmap_key(&"a".repeat(254)));
        assert!(!is_valid_configmap_key(""));
        assert!(!is_valid_configmap_key("."));
        assert!(!is_valid_configmap_key("..a"));
        assert!(!is_valid_configmap_key("a b"));
        assert!(!is_valid_configmap_key("a/b"));
    }

    /// JSON as Go's `json.Marshal` writes it for the values of the Go store tests
    /// (`TestConfigMapStoreExternalMetrics`, `TestDeprecationStrategy`, controller tests)
    /// and the contract example.
    const GO_VECTORS: &[&str] = &[
        r#"{"metricName":"requests_per_s","labels":{"role":"frontend"},"ts":0,"reference":{"type":"horizontal","name":"foo","namespace":"default","uid":""},"value":0,"valid":false}"#,
        r#"{"metricName":"requests_per_s","labels":{"role":"backend"},"ts":0,"reference":{"type":"watermark","name":"bar","namespace":"default","uid":""},"value":0,"valid":false}"#,
        r#"{"metricName":"requests_per_s","labels":{"bar":"baz"},"ts":12,"reference":{"type":"horizontal","name":"foo","namespace":"default","uid":"1111"},"value":1,"valid":false}"#,
        r#"{"metricName":"metric1","labels":{"foo":"bar"},"ts":0,"reference":{"type":"horizontal","name":"foo","namespace":"default","uid":""},"value":1.3,"valid":true}"#,
        r#"{"metricName":"nginx.net.request_per_s","labels":{"app":"nginx"},"ts":1700000000,"reference":{"type":"horizontal","name":"nginxext","namespace":"default","uid":"9f0c1c55-6a4c-4a8e-9d1e-3c2b8a7f6e5d"},"value":12.5,"valid":true}"#,
        r#"{"metricName":"m","labels":null,"ts":1700000000,"reference":{"type":"horizontal","name":"h","namespace":"ns","uid":"u"},"value":0.5,"valid":true}"#,
        r#"{"metricName":"m","labels":{"a":"1","b":"2"},"ts":-5,"reference":{"type":"watermark","name":"w","namespace":"ns","uid":"u"},"value":-2472.125,"valid":false}"#,
        r#"{"metricName":"m","labels":null,"ts":1,"reference":{"type":"horizontal","name":"h","namespace":"ns","uid":"u"},"value":1e+21,"valid":true}"#,
        r#"{"metricName":"m","labels":null,"ts":1,"reference":{"type":"horizontal","name":"h","namespace":"ns","uid":"u"},"value":1.5e-7,"valid":true}"#,
        r#"{"metricName":"m","labels":null,"ts":1,"reference":{"type":"horizontal","name":"h","namespace":"ns","uid":"u"},"value":100000000000000000000,"valid":true}"#,
        r#"{"metricName":"m","labels":null,"ts":1,"reference":{"type":"horizontal","name":"h","namespace":"ns","uid":"u"},"value":0.000001,"valid":true}"#,
        r#"{"metricName":"m","labels":{"k":"a\u003cb\u003e\u0026c"},"ts":1,"reference":{"type":"horizontal","name":"h","namespace":"ns","uid":"u"},"value":3,"valid":true}"#,
    ];

    #[test]
    fn go_vectors_round_trip_byte_for_byte() {
        for json in GO_VECTORS {
            let StoredEntry::Current(e) = decode_entry(json).unwrap() else {
                panic!("expected current entry: {json}");
            };
            assert_eq!(encode_entry(&e).unwrap(), *json);
        }
    }

    #[test]
    fn decode_go_vector_fields() {
        let StoredEntry::Current(e) = decode_entry(GO_VECTORS[4]).unwrap() else {
            panic!("expected current entry");
        };
        assert_eq!(
            e,
            ExternalMetricValue {
                metric_name: "nginx.net.request_per_s".into(),
                labels: labels(&[("app", "nginx")]),
                timestamp: 1_700_000_000,
                reference: ObjectReference::horizontal(
                    "default",
                    "nginxext",
                    "9f0c1c55-6a4c-4a8e-9d1e-3c2b8a7f6e5d"
                ),
                value: 12.5,
                valid: true,
            }
        );
        assert_eq!(
            e.key(),
            "external_metric-horizontal-default-nginxext-nginx.net.request_per_s"
        );
        assert_eq!(
            e.query(Aggregator::Avg, 30),
            "avg:nginx.net.request_per_s{app:nginx}.rollup(30)"
        );
    }

    /// Go `TestDeprecationStrategy`: legacy values (with `hpa`) and values whose
    /// `reference.type` is empty are deprecated and invalid.
    #[test]
    fn deprecated_vectors() {
        let legacy = r#"{"metricName":"requests_per_s","labels":{"role":"backend"},"ts":0,"hpa":{"type":"","name":"bar","namespace":"default","uid":""},"value":0,"valid":false}"#;
        let StoredEntry::Deprecated(d) = decode_entry(legacy).unwrap() else {
            panic!("expected deprecated");
        };
        assert_eq!(d.metric_name, "requests_per_s");
        assert_eq!(d.hpa.name, "bar");
        assert_eq!(d.hpa.namespace, "default");
        assert_eq!(d.key(), "external_metric-default-bar-requests_per_s");
        assert_eq!(encode_deprecated_entry(&d).unwrap(), legacy);

        // Even a legacy entry marked valid comes back invalid.
        let StoredEntry::Deprecated(d) = decode_entry(
            r#"{"metricName":"m","labels":null,"ts":5,"hpa":{"name":"h","namespace":"ns"},"value":3,"valid":true}"#,
        )
        .unwrap() else {
            panic!("expected deprecated");
        };
        assert!(!d.valid);
        assert_eq!(d.value, 3.0);

        // A current-shaped value with an empty type.
        let no_type = r#"{"metricName":"requests_per_s","labels":{"role":"frontend"},"ts":0,"reference":{"type":"","name":"foo","namespace":"default","uid":""},"value":0,"valid":false}"#;
        assert!(matches!(
            decode_entry(no_type).unwrap(),
            StoredEntry::Deprecated(_)
        ));
    }

    #[test]
    fn decode_is_lenient_like_go() {
        let cases: &[(&str, ExternalMetricValue)] = &[
            (
                r#"{"reference":{"type":"horizontal"},"extra":[1,{"x":2}]}"#,
                ExternalMetricValue {
                    reference: reference("horizontal", "", "", ""),
                    ..ExternalMetricValue::default()
                },
            ),
            (
                r#"{"metricName":null,"labels":{},"ts":null,"reference":{"type":"watermark","name":null},"value":7,"valid":null}"#,
                ExternalMetricValue {
                    reference: reference("watermark", "", "", ""),
                    value: 7.0,
                    ..ExternalMetricValue::default()
                },
            ),
        ];
        for (json, want) in cases {
            assert_eq!(
                decode_entry(json).unwrap(),
                StoredEntry::Current(want.clone()),
                "{json}"
            );
        }
        for bad in [
            "",
            "null",
            "[]",
            "{",
            r#"{"ts":"1"}"#,
            r#"{"ts":1.5}"#,
            r#"{"value":"1"}"#,
            r#"{"labels":{"a":1}}"#,
            r#"{"valid":"true"}"#,
        ] {
            assert!(
                matches!(decode_entry(bad), Err(StoreFormatError::Decode(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn go_float_formatting() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "-0"),
            (1.0, "1"),
            (-1.0, "-1"),
            (12.5, "12.5"),
            (0.1, "0.1"),
            (1.3, "1.3"),
            (2472.0, "2472"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (1.5e22, "1.5e+22"),
            (-1e21, "-1e+21"),
            (1e-6, "0.000001"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (1e-10, "1e-10"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (123456789.125, "123456789.125"),
        ];
        for (f, want) in cases {
            assert_eq!(go_format_float(*f).unwrap(), *want, "{f:e}");
        }
        for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(matches!(
                go_format_float(f),
                Err(StoreFormatError::UnsupportedValue(_))
            ));
            let e = ExternalMetricValue {
                value: f,
                ..ExternalMetricValue::default()
            };
            assert!(encode_entry(&e).is_err());
        }
    }

    #[test]
    fn go_string_escaping() {
        let cases: &[(&str, &str)] = &[
            ("plain", r#""plain""#),
            ("a\"b\\c", r#""a\"b\\c""#),
            ("\n\r\t", r#""\n\r\t""#),
            ("\u{8}\u{c}", r#""\b\f""#),
            ("\u{1}\u{1f}", r#""\u0001\u001f""#),
            ("<>&", r#""\u003c\u003e\u0026""#),
            ("\u{2028}\u{2029}", r#""\u2028\u2029""#),
            ("é✓\u{7f}", "\"é✓\u{7f}\""),
        ];
        for (input, want) in cases {
            let mut out = String::new();
            push_go_string(&mut out, input);
            assert_eq!(out, *want, "{input:?}");
            // And serde reads it back.
            assert_eq!(serde_json::from_str::<String>(&out).unwrap(), *input);
        }
    }

    #[test]
    fn empty_labels_encode_as_null() {
        let e = ExternalMetricValue::placeholder(
            "m",
            BTreeMap::new(),
            ObjectReference::watermark("ns", "w", "u"),
            42,
        );
        assert_eq!(
            encode_entry(&e).unwrap(),
            r#"{"metricName":"m","labels":null,"ts":42,"reference":{"type":"watermark","name":"w","namespace":"ns","uid":"u"},"value":0,"valid":false}"#
        );
        // `{}` decodes to no label and re-encodes as null (Go writes null for a nil map).
        let StoredEntry::Current(d) = decode_entry(
            r#"{"metricName":"m","labels":{},"ts":42,"reference":{"type":"watermark","name":"w","namespace":"ns","uid":"u"},"value":0,"valid":false}"#,
        )
        .unwrap() else {
            panic!("expected current");
        };
        assert_eq!(d, e);
    }

    #[test]
    fn apply_outcome_vectors() {
        let base = ExternalMetricValue {
            metric_name: "m".into(),
            reference: ObjectReference::horizontal("ns", "h", "u"),
            value: 9.0,
            timestamp: 1,
            valid: true,
            ..ExternalMetricValue::default()
        };
        let now = 1_700_000_000;
        let cases: &[(Option<QueryOutcome>, f64, i64, bool)] = &[
            (
                Some(QueryOutcome::Valid {
                    value: 14.0,
                    timestamp: now - 30,
                }),
                14.0,
                now - 30,
                true,
            ),
            (Some(QueryOutcome::invalid("no serie")), 0.0, now, false),
            (
                Some(QueryOutcome::Invalid {
                    reason: "outdated".into(),
                    value: Some(14.0),
                }),
                14.0,
                now,
                false,
            ),
            (None, 0.0, now, false),
        ];
        for (outcome, value, ts, valid) in cases {
            let mut e = base.clone();
            e.apply_outcome(outcome.as_ref(), now);
            assert_eq!((e.value, e.timestamp, e.valid), (*value, *ts, *valid));
            assert_eq!(e.metric_name, "m");
        }
    }

    #[test]
    fn last_updated_format() {
        let cases: &[(&str, &str)] = &[
            ("2025-01-01T00:00:00Z", "2025-01-01T00:00:00Z"),
            ("2025-01-01T00:00:00.999999999Z", "2025-01-01T00:00:00Z"),
            ("2024-02-29T23:59:59.5+02:00", "2024-02-29T21:59:59Z"),
            ("1969-12-31T23:59:59.5Z", "1969-12-31T23:59:59Z"),
        ];
        for (input, want) in cases {
            let ts: jiff::Timestamp = input.parse().unwrap();
            assert_eq!(format_last_updated(ts), *want, "{input}");
        }
        assert_eq!(
            LAST_UPDATED_ANNOTATION,
            "custom-metrics.datadoghq.com/last-updated"
        );
        assert_eq!(DEFAULT_CONFIGMAP_NAME, "datadog-custom-metrics");
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn entry() -> impl Strategy<Value = ExternalMetricValue> {
            (
                any::<String>(),
                proptest::collection::btree_map(any::<String>(), any::<String>(), 0..4),
                any::<i64>(),
                (
                    "[a-z]{1,10}",
                    any::<String>(),
                    any::<String>(),
                    any::<String>(),
                ),
                prop_oneof![
                    (-1_000_000i64..1_000_000).prop_map(|v| v as f64 / 8.0),
                    Just(0.0),
                    Just(1e21),
                    Just(2.5e-9),
                ],
                any::<bool>(),
            )
                .prop_map(
                    |(
                        metric_name,
                        labels,
                        timestamp,
                        (kind, name, namespace, uid),
                        value,
                        valid,
                    )| {
                        ExternalMetricValue {
                            metric_name,
                            labels,
                            timestamp,
                            reference: ObjectReference {
                                kind,
                                name,
                                namespace,
                                uid,
                            },
                            value,
                            valid,
                        }
                    },
                )
        }

        proptest! {
            #[test]
            fn encode_decode_round_trip(e in entry()) {
                let json = encode_entry(&e).unwrap();
                // Valid JSON that serde agrees with.
                let v: serde_json::Value = serde_json::from_str(&json).unwrap();
                prop_assert!(v.is_object());
                prop_assert_eq!(decode_entry(&json).unwrap(), StoredEntry::Current(e.clone()));
                // Stable.
                prop_assert_eq!(encode_entry(&e).unwrap(), json);
            }

            #[test]
            fn decode_never_panics(s in any::<String>()) {
                let _ = decode_entry(&s);
            }

            #[test]
            fn decode_json_like_never_panics(s in r#"[\[\]{}",:0-9a-z_. -]{0,120}"#) {
                let _ = decode_entry(&s);
            }

            #[test]
            fn float_format_parses_back(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
                let s = go_format_float(f).unwrap();
                let back: f64 = s.parse().unwrap();
                prop_assert_eq!(back.to_bits(), f.to_bits());
            }
        }
    }
}
