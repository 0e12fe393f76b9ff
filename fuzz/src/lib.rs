//! Fuzz targets for the parsers of `datadog-cluster-agent`.
//!
//! Every target takes raw bytes and checks invariants (round trips, agreement with a
//! reference implementation, shapes of outputs), not only the absence of panics: a failed
//! assertion is a panic, which AFL++ records as a crash. The functions live in a library so
//! the AFL binaries (`src/bin/*.rs`), the corpus replayer and the seed tests share them.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::OnceLock;

use datadog_cluster_agent::autoscaling::store_format::{
    StoredEntry, decode_entry, encode_deprecated_entry, encode_entry, go_format_float,
    is_valid_configmap_key,
};
use datadog_cluster_agent::config::Settings;
use datadog_cluster_agent::datadog::response::{
    EvalParams, QueryOutcome, evaluate_response, is_outdated, parse_query_response, select_point,
};
use datadog_cluster_agent::apiserver::negotiate::{
    MediaRange, Offer, negotiate, negotiate_values, parse_accept,
};
use datadog_cluster_agent::apimachinery::quantity::{self, Format, Quantity, QuantityError};
use datadog_cluster_agent::apimachinery::validation::is_dns1123_label;
use datadog_cluster_agent::external_metrics::routes::{self, Route};
use datadog_cluster_agent::apimachinery::selector::{self, Operator, Selector};

/// A fuzz target: bytes in, panics on a broken invariant.
pub type Target = fn(&[u8]);

/// Every target by name, as `src/bin/<name>.rs`, `run.sh` and `replay` know them.
pub const TARGETS: &[(&str, Target)] = &[
    ("selector", selector),
    ("quantity", quantity),
    ("quantity_f64", quantity_f64),
    ("route", route),
    ("accept", accept),
    ("dd_response", dd_response),
    ("store_entry", store_entry),
    ("config", config),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

// ---------------------------------------------------------------------------
// Label selectors
// ---------------------------------------------------------------------------

/// `labels.Parse` on arbitrary text: the canonical form re-parses to the same selector and
/// is a fixed point, whitespace around delimiters is insignificant, and `matches` agrees
/// with an independent reading of Go's match rules on label sets built from the selector.
pub fn selector(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let sel = match selector::parse(&text) {
        Ok(sel) => sel,
        Err(e) => {
            // The message goes into a 400 Status: it must render.
            let _ = e.to_string();
            return;
        }
    };
    let canonical = sel.to_string();
    let reparsed = selector::parse(&canonical)
        .unwrap_or_else(|e| panic!("canonical {canonical:?} of {text:?} does not parse: {e}"));
    assert_eq!(reparsed, sel, "{text:?} -> {canonical:?}");
    assert_eq!(
        reparsed.to_string(),
        canonical,
        "canonical form is not a fixed point"
    );
    assert_eq!(sel.is_empty(), canonical.is_empty());

    let spaced = format!(
        " {} ",
        canonical
            .replace(',', " , ")
            .replace('(', "\t(\n")
            .replace(')', " ) ")
    );
    assert_eq!(
        selector::parse(&spaced).as_ref(),
        Ok(&sel),
        "whitespace changed {canonical:?}"
    );

    for labels in label_sets(&sel, &text, data) {
        let expected = sel
            .requirements()
            .iter()
            .all(|r| reference_match(r.key(), r.operator(), r.values(), &labels));
        assert_eq!(
            sel.matches(&labels),
            expected,
            "{canonical:?} on {labels:?}"
        );
        let hashed: HashMap<&str, &str> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(sel.matches(&hashed), expected);
        let pairs: Vec<(&str, &str)> = hashed.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(sel.matches(pairs.as_slice()), expected);
    }

    if let Some(map) = sel.equality_labels() {
        // The map selects exactly what the selector selects: it must select itself.
        assert!(
            sel.matches(&map),
            "{canonical:?} rejects its own labels {map:?}"
        );
        for (k, v) in &map {
            assert_eq!(sel.requires_exact_match(k), Some(v.as_str()));
        }
    }
    for r in sel.requirements() {
        if let Some(v) = sel.requires_exact_match(r.key()) {
            // The first requirement on the key pins the value: only that value can match.
            let mut labels = BTreeMap::new();
            labels.insert(r.key().to_owned(), format!("{v}-other"));
            assert!(!sel.matches(&labels));
        }
    }
}

/// Go's `Requirement.Matches`, written from the spec rather than from our code.
fn reference_match(
    key: &str,
    op: Operator,
    values: &[String],
    labels: &BTreeMap<String, String>,
) -> bool {
    let got = labels.get(key);
    let listed = |v: &String| values.contains(v);
    match op {
        Operator::Equals | Operator::DoubleEquals | Operator::In => got.is_some_and(listed),
        Operator::NotEquals | Operator::NotIn => !got.is_some_and(listed),
        Operator::Exists => got.is_some(),
        Operator::DoesNotExist => got.is_none(),
        Operator::GreaterThan | Operator::LessThan => {
            // Go's strconv.ParseInt(s, 10, 64) accepts what Rust's i64 parser accepts.
            let (Some(label), [bound]) = (got.and_then(|v| v.parse::<i64>().ok()), values) else {
                return false;
            };
            let Ok(bound) = bound.parse::<i64>() else {
                return false;
            };
            if op == Operator::GreaterThan {
                label > bound
            } else {
                label < bound
            }
        }
    }
}

/// A few label sets that exercise every requirement: keys absent, present with one of the
/// listed values, with another value, or with numbers around a `>`/`<` bound. Choices come
/// from the input bytes so the fuzzer can steer them.
fn label_sets(sel: &Selector, text: &str, data: &[u8]) -> Vec<BTreeMap<String, String>> {
    let keys: BTreeSet<&str> = sel.requirements().iter().map(|r| r.key()).collect();
    // Arbitrary values too (anything a pod label could hold, and more): words of the input.
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || "=!(),<>".contains(c))
        .take(8)
        .collect();
    let mut candidates: BTreeMap<&str, Vec<Option<String>>> = BTreeMap::new();
    for r in sel.requirements() {
        let c = candidates.entry(r.key()).or_insert_with(|| {
            vec![
                None,
                Some(String::new()),
                Some("zz-unlisted".to_owned()),
                Some("+7".to_owned()),
            ]
        });
        c.extend(words.iter().map(|w| Some((*w).to_owned())));
        for v in r.values() {
            c.push(Some(v.clone()));
            if let Ok(n) = v.parse::<i64>() {
                c.extend([n.checked_sub(1), n.checked_add(1)].map(|x| x.map(|x| x.to_string())));
                c.push(Some(format!("0{n}")));
            }
        }
    }
    let mut sets = Vec::new();
    for round in 0..6usize {
        let mut labels = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            let options = &candidates[key];
            let pick = data.get(i * 7 + round).copied().unwrap_or(0) as usize + round * 31 + i;
            if let Some(v) = &options[pick % options.len()] {
                labels.insert((*key).to_owned(), v.clone());
            }
        }
        sets.push(labels);
    }
    sets
}

// ---------------------------------------------------------------------------
// Quantities
// ---------------------------------------------------------------------------

/// `resource.ParseQuantity` on arbitrary text, then every invariant of the canonical form.
pub fn quantity(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match quantity::parse(&text) {
        Ok(q) => check_quantity(&q, &text),
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Invariants of any quantity, whatever produced it (`origin` is for messages).
fn check_quantity(q: &Quantity, origin: &str) {
    let c = q.to_canonical_string();
    assert_eq!(
        q.to_string(),
        c,
        "Display differs from the canonical string"
    );
    check_canonical_shape(q, &c);

    let back = quantity::parse(&c)
        .unwrap_or_else(|e| panic!("{origin:?} -> canonical {c:?} does not parse: {e}"));
    assert_eq!(&back, q, "{origin:?} -> {c:?}");
    assert_eq!(back.cmp(q), Ordering::Equal);
    let again = back.to_canonical_string();
    // A BinarySI value written without a binary suffix comes back as DecimalSI, as in Go
    // (10000 BinarySI -> "10000" -> "10k"); every other canonical string is a fixed point.
    if q.format() != Format::BinarySI || c.ends_with('i') {
        assert_eq!(again, c, "{origin:?}: canonical form is not a fixed point");
    }
    let third = quantity::parse(&again)
        .expect("canonical parses")
        .to_canonical_string();
    assert_eq!(third, again);

    // serde: the canonical string in, the same value out.
    let json = serde_json::to_string(q).expect("serialize");
    assert_eq!(json, format!("\"{c}\""));
    let de: Quantity = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(&de, q);

    // value() and milli_value() round away from zero: bracket the quantity.
    if let Some(m) = q.milli_value() {
        let v = q.value().expect("value fits when the milli-value fits");
        assert_eq!(v.unsigned_abs(), m.unsigned_abs().div_ceil(1000), "{c}");
        assert_eq!(v.signum(), m.signum());
        check_bracket(q, m, |x| Quantity::from_milli(x, Format::DecimalSI), &c);
        assert_eq!(Quantity::from_milli(m, q.format()).milli_value(), Some(m));
    }
    if let Some(v) = q.value() {
        check_bracket(q, v, |x| Quantity::from_i64(x, Format::DecimalSI), &c);
    }
}

/// `n` is `q` rounded away from zero in the unit `make(1)`: `make(n)` is at least as far
/// from zero as `q`, and one unit closer to zero falls short of it.
fn check_bracket(q: &Quantity, n: i64, make: impl Fn(i64) -> Quantity, c: &str) {
    let at = make(n);
    match q.signum() {
        0 => assert_eq!(n, 0, "{c}"),
        1 => {
            assert!(at >= *q, "{c}: {n} is below");
            assert!(make(n - 1) < *q, "{c}: {n} is not the smallest");
        }
        _ => {
            assert!(at <= *q, "{c}: {n} is above");
            assert!(make(n + 1) > *q, "{c}: {n} is not the largest");
        }
    }
}

/// `CanonicalizeBytes`: `-`? integer mantissa (no leading zero), then a known suffix or
/// `e<n>` with `n` a non-zero multiple of 3.
fn check_canonical_shape(q: &Quantity, c: &str) {
    if q.is_zero() {
        assert_eq!(c, "0");
        return;
    }
    let body = match c.strip_prefix('-') {
        Some(body) => {
            assert_eq!(q.signum(), -1, "{c}");
            body
        }
        None => {
            assert_eq!(q.signum(), 1, "{c}");
            c
        }
    };
    let end = body
        .find(|ch: char| !ch.is_ascii_digit())
        .unwrap_or(body.len());
    let (mantissa, suffix) = body.split_at(end);
    assert!(
        !mantissa.is_empty() && !mantissa.starts_with('0'),
        "mantissa of {c:?}"
    );
    match suffix {
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => {
            assert_eq!(q.format(), Format::BinarySI, "{c}");
            let m: u64 = mantissa.parse().expect("binary mantissa fits");
            assert!(!(m >= 1024 && m.is_multiple_of(1024)), "{c}: suffix not maximal");
        }
        _ => {
            // The exponent was lowered to a multiple of 3 by at most two places, except
            // for a BinarySI integer that is not a multiple of 1024 (`2000`, as in Go).
            let binary_integer = q.format() == Format::BinarySI && suffix.is_empty();
            assert!(
                binary_integer || !mantissa.ends_with("000"),
                "{c}: suffix not maximal"
            );
            match suffix {
                "" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => {}
                exp => {
                    let n: i64 = exp
                        .strip_prefix('e')
                        .and_then(|e| e.parse().ok())
                        .unwrap_or_else(|| panic!("{c}: unknown suffix"));
                    assert!(n != 0 && n % 3 == 0, "{c}");
                }
            }
        }
    }
}

/// `from_f64` on arbitrary float bits (`from_i64`/`from_milli` on the same bits, and Go's
/// float formatting of the ConfigMap store too).
pub fn quantity_f64(data: &[u8]) {
    let mut bytes = [0u8; 8];
    let n = data.len().min(8);
    bytes[..n].copy_from_slice(&data[..n]);
    let bits = u64::from_le_bytes(bytes);
    let v = f64::from_bits(bits);

    match quantity::from_f64(v) {
        Err(QuantityError::NonFinite { .. }) => assert!(!v.is_finite()),
        Err(QuantityError::OutOfRange { .. }) => {
            assert!(v.is_finite());
            // Rejected only when ceil(|v| × 1000) cannot fit in an i64.
            assert!(v.abs() * 1000.0 >= 9.2e18, "{v:e} rejected as out of range");
        }
        Err(e) => panic!("from_f64({v:e}): unexpected {e}"),
        Ok(q) => {
            assert!(v.is_finite());
            assert_eq!(q.format(), Format::DecimalSI);
            check_quantity(&q, &format!("{v:e}"));
            if v == 0.0 {
                assert!(q.is_zero());
            } else {
                assert_eq!(q.signum(), if v < 0.0 { -1 } else { 1 }, "{v:e}");
            }
            let c = q.to_canonical_string();
            let back = canonical_to_f64(&c);
            if shortest_exponent(v) >= -9 {
                // No nano rounding: the canonical digits are the shortest round-trip ones.
                assert_eq!(back, v, "{v:e} -> {c}");
            } else {
                // Rounded away from zero to the next nano; reading it back as a float
                // adds at most half an ulp.
                assert!(back.abs() >= v.abs(), "{v:e} -> {c}");
                let slack = 1e-9 * (1.0 + 1e-6) + v.abs() * f64::EPSILON;
                assert!((back - v).abs() <= slack, "{v:e} -> {c}");
            }
            let m = q.milli_value().expect("from_f64 guarantees a milli-value");
            let scaled = v * 1000.0;
            assert!(
                (m as f64 - scaled).abs() <= 1.0 + scaled.abs() * 1e-12,
                "{v:e}: milli-value {m}"
            );
            // A JSON number decodes to the same quantity.
            let json = serde_json::to_string(&v).expect("finite");
            let de: Quantity = serde_json::from_str(&json).expect("number is a quantity");
            assert_eq!(de, q, "{json}");
            // Shortest digits are kept exactly, so the quantity reads back as the float.
            let parsed = quantity::parse(&format!("{v:e}")).expect("`{:e}` parses");
            if shortest_exponent(v) >= -9 {
                assert_eq!(canonical_to_f64(&parsed.to_canonical_string()), v);
            }
        }
    }

    match go_format_float(v) {
        Ok(s) => {
            assert!(v.is_finite());
            assert_eq!(s.parse::<f64>().ok(), Some(v), "{s}");
            assert_eq!(serde_json::from_str::<f64>(&s).ok(), Some(v), "{s}");
            let plain = !s.contains('e');
            let abs = v.abs();
            assert_eq!(plain, abs == 0.0 || (1e-6..1e21).contains(&abs), "{s}");
            if let Some((_, exp)) = s.split_once('e') {
                assert!(exp.starts_with('+') || exp.starts_with('-'), "{s}");
            }
        }
        Err(_) => assert!(!v.is_finite()),
    }

    let i = bits as i64;
    let qi = Quantity::from_i64(i, Format::DecimalSI);
    assert_eq!(qi.value(), Some(i));
    check_quantity(&qi, &i.to_string());
    let qm = Quantity::from_milli(i, Format::BinarySI);
    assert_eq!(qm.milli_value(), Some(i));
    check_quantity(&qm, &format!("{i}m BinarySI"));
}

/// The decimal exponent of the last significant digit of `v`'s shortest representation.
fn shortest_exponent(v: f64) -> i64 {
    let text = format!("{:e}", v.abs());
    let (mantissa, exp) = text.split_once('e').expect("`{:e}` has an exponent");
    let frac = mantissa.split_once('.').map_or(0, |(_, f)| f.len());
    exp.parse::<i64>().expect("exponent") - frac as i64
}

/// Reads a DecimalSI canonical string as the nearest float.
fn canonical_to_f64(c: &str) -> f64 {
    let end = c
        .find(|ch: char| !(ch.is_ascii_digit() || ch == '-'))
        .unwrap_or(c.len());
    let (mantissa, suffix) = c.split_at(end);
    let exp = match suffix {
        "" => 0,
        "n" => -9,
        "u" => -6,
        "m" => -3,
        "k" => 3,
        "M" => 6,
        "G" => 9,
        "T" => 12,
        "P" => 15,
        "E" => 18,
        e => e
            .strip_prefix('e')
            .and_then(|e| e.parse().ok())
            .unwrap_or_else(|| panic!("{c}: not a DecimalSI canonical string")),
    };
    format!("{mantissa}e{exp}")
        .parse()
        .expect("decimal reads as a float")
}

// ---------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------

const BASE: &str = "/apis/external.metrics.k8s.io/v1beta1";

/// The request target (`path?query`, UTF-8-lossy) routed: the route depends only on the
/// decoded path segments, accepted metric paths satisfy what the handler relies on, and
/// re-encoded namespace, metric and selector come back unchanged.
pub fn route(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (&*text, None),
    };
    let r = routes::parse(path, query);
    let _ = routes::decoded_path(path);
    if !path.starts_with('/') {
        assert_eq!(r, Route::NotFound, "{path:?}");
    }
    assert_eq!(
        r.is_probe(),
        matches!(
            r,
            Route::Healthz | Route::Livez | Route::Readyz | Route::Ping
        )
    );

    // Only the decoded segments matter: encoding every byte of every segment changes
    // nothing (segments with a malformed escape have no decoded form to compare).
    if let Some(decoded) = path
        .split('/')
        .map(|s| percent_decode(s, false))
        .collect::<Option<Vec<_>>>()
    {
        let encoded: Vec<String> = decoded.iter().map(|s| percent_encode(s)).collect();
        let encoded = encoded.join("/");
        assert_eq!(routes::parse(&encoded, query), r, "{path:?} vs {encoded:?}");
    }

    match &r {
        Route::Metric(m) => {
            assert!(is_dns1123_label(&m.namespace), "{:?}", m.namespace);
            let metric = m.metric.as_ref();
            assert!(!metric.is_empty() && metric != "." && metric != "..");
            assert!(!metric.contains(['/', '%']), "{metric:?}");
            assert!(!metric.chars().any(char::is_control), "{metric:?}");

            // The query never decides whether the path is a metric path.
            match routes::parse(path, None) {
                Route::Metric(bare) => {
                    assert_eq!(bare.namespace, m.namespace);
                    assert_eq!(bare.metric, m.metric);
                    assert_eq!(bare.query, Ok(Default::default()));
                }
                other => panic!("{path:?} without query is {other:?}"),
            }

            if let Ok(q) = &m.query {
                let mut canonical = String::new();
                if let Some(sel) = &q.label_selector {
                    canonical.push_str("labelSelector=");
                    canonical.push_str(&percent_encode(sel));
                }
                if q.watch {
                    canonical.push_str("&watch=true");
                }
                let target = format!(
                    "{BASE}/namespaces/{}/{}",
                    percent_encode(&m.namespace),
                    percent_encode(metric)
                );
                match routes::parse(&target, Some(&canonical)) {
                    Route::Metric(again) => {
                        assert_eq!(again.namespace, m.namespace);
                        assert_eq!(again.metric, m.metric);
                        assert_eq!(again.query.as_ref(), Ok(q), "{canonical:?}");
                    }
                    other => panic!("{target:?} is {other:?}"),
                }
            }
        }
        other => {
            assert_eq!(
                &routes::parse(path, None),
                other,
                "the query changed the route"
            );
        }
    }
}

/// Every byte but ASCII alphanumerics as `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An independent percent-decoder; `None` for a malformed escape or invalid UTF-8.
fn percent_decode(s: &str, query: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if query => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------
// Accept negotiation
// ---------------------------------------------------------------------------

const OFFER_SETS: &[&[Offer]] = &[
    &[Offer::Json],
    &[Offer::Json, Offer::DiscoveryV2, Offer::DiscoveryV2Beta1],
    &[Offer::DiscoveryV2Beta1, Offer::DiscoveryV2],
    &[],
];

/// Accept header values (one per line): every parsed clause is well formed, negotiation
/// only ever picks an offered representation, and the header-map entry point agrees with
/// the value-list one.
pub fn accept(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let values: Vec<&str> = text.split('\n').collect();
    for v in &values {
        for range in parse_accept(v) {
            check_media_range(&range);
        }
    }

    let mut headers = http::HeaderMap::new();
    let mut visible = Vec::new();
    for v in &values {
        if let Ok(hv) = http::HeaderValue::from_str(v) {
            headers.append(http::header::ACCEPT, hv);
            if !v.trim().is_empty() && v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
                visible.push(*v);
            }
        }
    }

    for offers in OFFER_SETS {
        let picked = negotiate_values(&values, offers);
        if let Some(o) = picked {
            assert!(offers.contains(&o), "{o:?} was not offered");
        }
        let via_headers = negotiate(&headers, offers);
        if let Some(o) = via_headers {
            assert!(offers.contains(&o));
        }
        // Values that are not visible ASCII, or blank, are ignored by the header path.
        if visible.is_empty() {
            assert_eq!(via_headers, offers.first().copied(), "no preference");
        } else {
            assert_eq!(via_headers, negotiate_values(&visible, offers));
        }
    }
}

fn check_media_range(r: &MediaRange<'_>) {
    for part in [r.kind, r.subtype] {
        assert!(!part.is_empty());
        assert_eq!(part, part.trim(), "{r:?}");
        assert!(!part.contains([',', ';']), "{r:?}");
    }
    assert!(!r.kind.contains('/'), "{r:?}");
    assert!(r.kind != "*" || r.subtype == "*", "{r:?}");
    assert!(!r.params.contains(','), "{r:?}");
    assert!((0.0..=1.0).contains(&r.q), "{r:?}");
    for name in ["q", "as", "g", "v", "Q"] {
        if let Some(v) = r.param(name) {
            assert!(r.params.contains(v));
        }
    }
}

// ---------------------------------------------------------------------------
// Datadog query responses
// ---------------------------------------------------------------------------

/// An `/api/v1/query` body: what decodes re-encodes to the same response, and evaluating
/// it gives exactly one outcome per distinct query, never a stale point as valid.
pub fn dd_response(data: &[u8]) {
    let resp = match parse_query_response(data) {
        Ok(resp) => resp,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert_ne!(resp.status.as_deref(), Some("error"));
    let json = serde_json::to_vec(&resp).expect("a decoded response serializes");
    let back = parse_query_response(&json).unwrap_or_else(|e| {
        panic!(
            "re-encoded response does not decode: {e}: {}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(back, resp);

    let count = 1 + data.len() % 4;
    let queries: Vec<String> = (0..count).map(|i| format!("q{}", i % 3)).collect();
    let params = EvalParams {
        now: 1_700_000_000,
        time_window_secs: 300,
        max_age_secs: 120,
    };
    let out = evaluate_response(&queries, &resp, &params);
    let distinct: BTreeSet<&str> = queries.iter().map(String::as_str).collect();
    assert!(out.keys().map(String::as_str).eq(distinct.iter().copied()));
    for outcome in out.values() {
        if let QueryOutcome::Valid { timestamp, .. } = outcome {
            assert!(!is_outdated(*timestamp, params.now, params.max_age_secs));
        }
    }
    for s in &resp.series {
        if let Some((value, _)) = select_point(&s.pointlist) {
            assert!(s.pointlist.iter().any(|p| p.value == Some(value)));
        }
    }
}

// ---------------------------------------------------------------------------
// ConfigMap store entries
// ---------------------------------------------------------------------------

/// A ConfigMap data value: what decodes re-encodes (Go's encoding) to a fixed point that
/// decodes to the same entry, and the encoding is HTML-safe JSON.
pub fn store_entry(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let entry = match decode_entry(&text) {
        Ok(entry) => entry,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let encoded = match &entry {
        StoredEntry::Current(v) => {
            assert!(!v.reference.kind.is_empty());
            let _ = is_valid_configmap_key(&v.key());
            encode_entry(v).expect("decoded values are finite")
        }
        StoredEntry::Deprecated(d) => {
            assert!(!d.valid, "legacy entries are never valid");
            let _ = is_valid_configmap_key(&d.key());
            encode_deprecated_entry(d).expect("decoded values are finite")
        }
    };
    serde_json::from_str::<serde_json::Value>(&encoded)
        .unwrap_or_else(|e| panic!("encoding is not JSON: {e}: {encoded}"));
    assert!(
        !encoded.contains(['<', '>', '&', '\u{2028}', '\u{2029}']),
        "not escaped like Go: {encoded}"
    );
    let back = decode_entry(&encoded).unwrap_or_else(|e| panic!("{e}: {encoded}"));
    assert_eq!(back, entry, "{encoded}");
    let again = match &back {
        StoredEntry::Current(v) => encode_entry(v),
        StoredEntry::Deprecated(d) => encode_deprecated_entry(d),
    };
    assert_eq!(again.as_deref(), Ok(encoded.as_str()));
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

struct ConfigPaths {
    file: PathBuf,
    empty_dir: PathBuf,
}

fn config_paths() -> &'static ConfigPaths {
    static PATHS: OnceLock<ConfigPaths> = OnceLock::new();
    PATHS.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("dca-fuzz-config-{}", std::process::id()));
        let empty_dir = root.join("empty");
        std::fs::create_dir_all(&empty_dir).expect("create the scratch directory");
        ConfigPaths {
            file: root.join("datadog-cluster.yaml"),
            empty_dir,
        }
    })
}

/// `datadog-cluster.yaml` text with an empty environment: loading is deterministic and a
/// loaded configuration renders (scrubbed) as YAML that parses.
pub fn config(data: &[u8]) {
    let paths = config_paths();
    std::fs::write(&paths.file, data).expect("write the config file");
    let env = |_: &str| None;
    let settings = match Settings::load_from(Some(&paths.file), &paths.empty_dir, &env) {
        Ok(s) => s,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let yaml = settings.to_scrubbed_yaml();
    let _ = settings.sources();
    let _ = settings.validate_for_start();
    let _ = format!("{settings:?}");
    serde_saphyr::from_str::<serde_json::Value>(&yaml)
        .unwrap_or_else(|e| panic!("scrubbed YAML does not parse: {e}\n{yaml}"));
    let again = Settings::load_from(Some(&paths.file), &paths.empty_dir, &env)
        .expect("the same file loads twice");
    assert_eq!(again.to_scrubbed_yaml(), yaml);
}
