//! The paths the server answers, parsed from the request target without I/O (contract §1.1,
//! §1.3). Path segments are percent-decoded one by one, so an encoded `/` (`%2F`) inside a
//! segment can never create or hide a segment.

use std::borrow::Cow;

use crate::apimachinery::validation::is_dns1123_label;
use crate::apiserver::probes::Probe;
use crate::external_metrics::{GROUP, VERSION};

/// What a request asks for. Borrows from the request target; decoding allocates only when a
/// segment or parameter actually contains an escape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/healthz`
    Healthz,
    /// `/livez`
    Livez,
    /// `/readyz`
    Readyz,
    /// `/healthz/ping`, `/livez/ping`, `/readyz/ping`: always ok while the process answers.
    Ping,
    /// `/version`
    Version,
    /// `/apis`: APIGroupList, or the aggregated discovery document.
    Apis,
    /// `/apis/external.metrics.k8s.io`: APIGroup.
    Group,
    /// `/apis/external.metrics.k8s.io/v1beta1`: APIResourceList.
    GroupVersion,
    /// `/openapi/v2`
    OpenApiV2,
    /// `/openapi/v3`: the index of per-group-version documents.
    OpenApiV3,
    /// `/openapi/v3/apis/external.metrics.k8s.io/v1beta1`
    OpenApiV3GroupVersion,
    /// `/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}`
    Metric(MetricRoute<'a>),
    /// Anything else.
    NotFound,
}

impl Route<'_> {
    /// Probes are answered without authentication or authorization, as Go's
    /// `AlwaysAllowPaths` does: the kubelet calls them without credentials.
    pub fn is_probe(&self) -> bool {
        self.probe().is_some()
    }

    pub fn probe(&self) -> Option<Probe> {
        match self {
            Route::Healthz => Some(Probe::Healthz),
            Route::Livez => Some(Probe::Livez),
            Route::Readyz => Some(Probe::Readyz),
            Route::Ping => Some(Probe::Ping),
            _ => None,
        }
    }
}

/// The metric request: namespace and metric as sent (decoded), and its query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricRoute<'a> {
    pub namespace: Cow<'a, str>,
    /// The metric name as the client sent it (client-go lower-cases it).
    pub metric: Cow<'a, str>,
    /// Parsed ListOptions; an error becomes 400 only after authorization, as in Go, where
    /// parameters are decoded by the handler behind the authorization filter.
    pub query: Result<MetricQuery<'a>, QueryError>,
}

/// The ListOptions we act on. Others (`resourceVersion`, `limit`, `timeoutSeconds`, ...) are
/// accepted and ignored: there is one page and no history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricQuery<'a> {
    /// `labelSelector`, decoded; `None` when absent. Absent and empty both mean everything.
    pub label_selector: Option<Cow<'a, str>>,
    /// `watch`, read as Go's `Convert_Slice_string_To_bool` reads it: present and neither
    /// `0` nor `false` (any case) means true, the empty value included.
    pub watch: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Go's URL parser drops such a pair, which for `labelSelector` would silently widen the
    /// selection to everything; we refuse instead.
    #[error("invalid URL escape in query parameter {0:?}")]
    InvalidEscape(&'static str),
    #[error("query parameter {0:?} is not valid UTF-8")]
    InvalidUtf8(&'static str),
}

/// Longest path we route: `/openapi/v3/apis/<group>/<version>` and the metric path both
/// have at most six segments.
const MAX_SEGMENTS: usize = 6;

/// Parses a request target's path and query (as in `http::Uri::path` / `query`).
pub fn parse<'a>(path: &'a str, query: Option<&'a str>) -> Route<'a> {
    let Some(rest) = path.strip_prefix('/') else {
        return Route::NotFound;
    };
    let mut raw = [""; MAX_SEGMENTS + 1];
    let mut n = 0;
    for segment in split_ascii(rest, b'/') {
        if n == raw.len() {
            return Route::NotFound;
        }
        raw[n] = segment;
        n += 1;
    }
    // One trailing slash is tolerated on the discovery documents, as Go's discovery
    // handlers tolerate it; everywhere else it is a different (unknown) path.
    let trailing = n > 1 && raw[n - 1].is_empty();
    let segments = if trailing { &raw[..n - 1] } else { &raw[..n] };
    if segments.len() > MAX_SEGMENTS {
        return Route::NotFound;
    }

    let is = |i: usize, literal: &str| segment_is(segments[i], literal);
    let route = match segments.len() {
        1 if is(0, "healthz") => Route::Healthz,
        1 if is(0, "livez") => Route::Livez,
        1 if is(0, "readyz") => Route::Readyz,
        1 if is(0, "version") => Route::Version,
        1 if is(0, "apis") => Route::Apis,
        2 if (is(0, "healthz") || is(0, "livez") || is(0, "readyz")) && is(1, "ping") => {
            Route::Ping
        }
        2 if is(0, "apis") && is(1, GROUP) => Route::Group,
        2 if is(0, "openapi") && is(1, "v2") => Route::OpenApiV2,
        2 if is(0, "openapi") && is(1, "v3") => Route::OpenApiV3,
        3 if is(0, "apis") && is(1, GROUP) && is(2, VERSION) => Route::GroupVersion,
        5 if is(0, "openapi") && is(1, "v3") && is(2, "apis") && is(3, GROUP) && is(4, VERSION) => {
            Route::OpenApiV3GroupVersion
        }
        6 if !trailing
            && is(0, "apis")
            && is(1, GROUP)
            && is(2, VERSION)
            && is(3, "namespaces") =>
        {
            return metric_route(segments[4], segments[5], query);
        }
        _ => Route::NotFound,
    };
    let trailing_allowed = matches!(
        route,
        Route::Apis | Route::Group | Route::GroupVersion | Route::OpenApiV3
    );
    if trailing && !trailing_allowed {
        return Route::NotFound;
    }
    route
}

fn metric_route<'a>(namespace: &'a str, metric: &'a str, query: Option<&'a str>) -> Route<'a> {
    let (Some(namespace), Some(metric)) = (decode_segment(namespace), decode_segment(metric))
    else {
        return Route::NotFound;
    };
    if !is_dns1123_label(&namespace) || !is_valid_metric_segment(&metric) {
        return Route::NotFound;
    }
    Route::Metric(MetricRoute {
        namespace,
        metric,
        query: parse_query(query.unwrap_or("")),
    })
}

/// `s.split(char::from(sep))` for an ASCII separator, scanning bytes: every request's path
/// and query go through it, and for such short strings `str::split`'s searcher costs more
/// than the scan itself.
fn split_ascii(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    debug_assert!(sep.is_ascii());
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.bytes().position(|b| b == sep) {
            Some(i) => {
                // An ASCII byte is a character boundary on both sides.
                rest = Some(&current[i + 1..]);
                Some(&current[..i])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

fn segment_is(raw: &str, literal: &str) -> bool {
    raw == literal
        || (raw.contains('%') && decode_segment(raw).is_some_and(|decoded| decoded == literal))
}

/// Percent-decodes one path segment; `None` for a malformed escape or invalid UTF-8.
fn decode_segment(raw: &str) -> Option<Cow<'_, str>> {
    percent_decode(raw, false).ok()
}

/// A metric segment as Go's `IsValidPathSegmentName` accepts it (not `.` or `..`, no `/`
/// or `%`), minus control characters, which no metric name contains.
fn is_valid_metric_segment(s: &str) -> bool {
    let allowed = if s.is_ascii() {
        // One pass over the bytes for the names every request carries.
        s.bytes()
            .all(|b| b != b'/' && b != b'%' && !b.is_ascii_control())
    } else {
        !s.contains(['/', '%']) && !s.chars().any(char::is_control)
    };
    !s.is_empty() && s != "." && s != ".." && allowed
}

fn parse_query(query: &str) -> Result<MetricQuery<'_>, QueryError> {
    let mut out = MetricQuery::default();
    let mut seen_selector = false;
    let mut seen_watch = false;
    for pair in split_ascii(query, b'&') {
        if pair.is_empty() {
            continue;
        }
        let (key, value) = match pair.bytes().position(|b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, ""),
        };
        // A key that does not decode cannot be one of ours.
        let Ok(key) = percent_decode(key, true) else {
            continue;
        };
        // Go's url.Values.Get and the ListOptions decoder both use the first value.
        match key.as_ref() {
            "labelSelector" if !seen_selector => {
                seen_selector = true;
                out.label_selector = Some(percent_decode(value, true).map_err(|e| match e {
                    DecodeError::Escape => QueryError::InvalidEscape("labelSelector"),
                    DecodeError::Utf8 => QueryError::InvalidUtf8("labelSelector"),
                })?);
            }
            "watch" if !seen_watch => {
                seen_watch = true;
                // Undecodable is not `0`/`false`, so it counts as true, like any other value.
                out.watch = match percent_decode(value, true) {
                    Ok(v) => !(v == "0" || v.eq_ignore_ascii_case("false")),
                    Err(_) => true,
                };
            }
            _ => {}
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecodeError {
    Escape,
    Utf8,
}

/// Percent-decoding that, unlike the `percent-encoding` crate's, rejects malformed escapes,
/// and in query mode reads `+` as a space (client-go encodes selectors with
/// `url.Values.Encode`, which writes spaces as `+`).
fn percent_decode(raw: &str, query: bool) -> Result<Cow<'_, str>, DecodeError> {
    let bytes = raw.as_bytes();
    if !(bytes.contains(&b'%') || query && bytes.contains(&b'+')) {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|b| hex_value(*b));
                let lo = bytes.get(i + 2).and_then(|b| hex_value(*b));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(DecodeError::Escape);
                };
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if query => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| DecodeError::Utf8)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The path as Go's `req.URL.Path` has it (decoded), for non-resource authorization. Falls
/// back to the raw path when it does not decode, which can only match fewer RBAC rules.
pub fn decoded_path(raw: &str) -> Cow<'_, str> {
    percent_decode(raw, false).unwrap_or(Cow::Borrowed(raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BASE: &str = "/apis/external.metrics.k8s.io/v1beta1";

    fn metric<'a>(ns: &'a str, m: &'a str, selector: Option<&'a str>, watch: bool) -> Route<'a> {
        Route::Metric(MetricRoute {
            namespace: Cow::Borrowed(ns),
            metric: Cow::Borrowed(m),
            query: Ok(MetricQuery {
                label_selector: selector.map(Cow::Borrowed),
                watch,
            }),
        })
    }

    #[test]
    fn ascii_split_is_str_split() {
        for s in [
            "", "/", "a", "a/b", "/a/b/", "a//b", "é/€/x", "//", "a&b=c&&d",
        ] {
            for sep in [b'/', b'&'] {
                let ours: Vec<&str> = split_ascii(s, sep).collect();
                let std: Vec<&str> = s.split(char::from(sep)).collect();
                assert_eq!(ours, std, "{s:?} on {:?}", char::from(sep));
            }
        }
    }

    #[test]
    fn static_routes() {
        let cases: &[(&str, Route<'_>)] = &[
            ("/healthz", Route::Healthz),
            ("/livez", Route::Livez),
            ("/readyz", Route::Readyz),
            ("/healthz/ping", Route::Ping),
            ("/livez/ping", Route::Ping),
            ("/readyz/ping", Route::Ping),
            ("/version", Route::Version),
            ("/apis", Route::Apis),
            ("/apis/", Route::Apis),
            ("/apis/external.metrics.k8s.io", Route::Group),
            ("/apis/external.metrics.k8s.io/", Route::Group),
            (BASE, Route::GroupVersion),
            (
                "/apis/external.metrics.k8s.io/v1beta1/",
                Route::GroupVersion,
            ),
            (
                "/apis/external%2Emetrics.k8s.io/v1beta1",
                Route::GroupVersion,
            ),
            ("/openapi/v2", Route::OpenApiV2),
            ("/openapi/v3", Route::OpenApiV3),
            ("/openapi/v3/", Route::OpenApiV3),
            (
                "/openapi/v3/apis/external.metrics.k8s.io/v1beta1",
                Route::OpenApiV3GroupVersion,
            ),
        ];
        for (path, want) in cases {
            assert_eq!(&parse(path, None), want, "{path}");
        }
    }

    #[test]
    fn unknown_paths_are_not_found() {
        let cases = [
            "",
            "/",
            "//apis",
            "apis",
            "/healthz/",
            "/version/",
            "/openapi/v2/",
            "/healthz/log",
            "/api",
            "/apis/metrics.k8s.io",
            "/apis/external.metrics.k8s.io/v1beta2",
            "/apis/external.metrics.k8s.io/v1beta1/m",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/default",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/m/",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/group/m",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces//m",
            "/apis/external.metrics.k8s.io/v1beta1/nspaces/default/m",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/Default/m",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/-ns/m",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/ns/.",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/ns/..",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/ns/a%2Fb",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/ns/a%2fb",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/ns/a%25b",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/ns/a%zzb",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/ns/a%ff",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/ns/a%00",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/n%2Fs/m",
            "/openapi/v3/apis/external.metrics.k8s.io",
            "/openapi/v3/apis/external.metrics.k8s.io/v1beta1/",
            "/a/b/c/d/e/f/g/h",
        ];
        for path in cases {
            assert_eq!(parse(path, None), Route::NotFound, "{path:?}");
        }
    }

    #[test]
    fn metric_routes() {
        let p = |s: &str| format!("{BASE}/namespaces/{s}");
        assert_eq!(
            parse(&p("default/nginx.net.request_per_s"), None),
            metric("default", "nginx.net.request_per_s", None, false)
        );
        assert_eq!(
            parse(&p("ns-1/datadogmetric@ns-1:my-metric"), None),
            metric("ns-1", "datadogmetric@ns-1:my-metric", None, false)
        );
        // Decoded, case kept (client-go lower-cases; we pass on what was sent).
        assert_eq!(
            parse(&p("default/Queue%20Depth"), None),
            metric("default", "Queue Depth", None, false)
        );
        // `+` is a space only in the query.
        assert_eq!(
            parse(&p("default/a+b"), None),
            metric("default", "a+b", None, false)
        );
    }

    #[test]
    fn metric_queries() {
        let path = format!("{BASE}/namespaces/default/m");
        let q = |query: &str| match parse(&path, Some(query)) {
            Route::Metric(m) => m
                .query
                .map(|q| (q.label_selector.map(Cow::into_owned), q.watch)),
            other => panic!("{other:?}"),
        };
        assert_eq!(q(""), Ok((None, false)));
        assert_eq!(q("labelSelector="), Ok((Some(String::new()), false)));
        assert_eq!(
            q("labelSelector=app%3Dweb"),
            Ok((Some("app=web".into()), false))
        );
        assert_eq!(
            q("labelSelector=app+in+%28a%2Cb%29%2C%21canary"),
            Ok((Some("app in (a,b),!canary".into()), false))
        );
        assert_eq!(
            q("labelSelector=a%3Db&labelSelector=c%3Dd"),
            Ok((Some("a=b".into()), false))
        );
        assert_eq!(q("label%53elector=x%3Dy"), Ok((Some("x=y".into()), false)));
        assert_eq!(
            q("resourceVersion=0&limit=500&timeoutSeconds=x&labelSelector=k"),
            Ok((Some("k".into()), false))
        );
        for on in [
            "watch=true",
            "watch=1",
            "watch=True",
            "watch=",
            "watch",
            "watch=yes",
        ] {
            assert_eq!(q(on), Ok((None, true)), "{on}");
        }
        for off in [
            "watch=false",
            "watch=0",
            "watch=FALSE",
            "watch=false&watch=true",
        ] {
            assert_eq!(q(off), Ok((None, false)), "{off}");
        }
        assert_eq!(
            q("labelSelector=%zz"),
            Err(QueryError::InvalidEscape("labelSelector"))
        );
        assert_eq!(
            q("labelSelector=a%3"),
            Err(QueryError::InvalidEscape("labelSelector"))
        );
        assert_eq!(
            q("labelSelector=%ff"),
            Err(QueryError::InvalidUtf8("labelSelector"))
        );
        // Someone else's broken parameter is not our problem.
        assert_eq!(
            q("other=%zz&labelSelector=a"),
            Ok((Some("a".into()), false))
        );
    }

    #[test]
    fn probes_are_exactly_the_probe_routes() {
        for path in ["/healthz", "/livez", "/readyz", "/readyz/ping"] {
            assert!(parse(path, None).is_probe(), "{path}");
        }
        for path in ["/version", "/apis", BASE, "/openapi/v2", "/nope"] {
            assert!(!parse(path, None).is_probe(), "{path}");
        }
    }

    #[test]
    fn dns1123_labels() {
        for ok in ["a", "default", "kube-system", "a1", "1a", &"a".repeat(63)] {
            assert!(is_dns1123_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
    }

    #[test]
    fn decoded_path_falls_back_to_raw() {
        assert_eq!(decoded_path("/apis"), "/apis");
        assert_eq!(decoded_path("/a%20b"), "/a b");
        assert_eq!(decoded_path("/a+b"), "/a+b");
        assert_eq!(decoded_path("/a%zz"), "/a%zz");
    }

    proptest! {
        #[test]
        fn ascii_split_is_str_split_everywhere(s in "[a/&é=]{0,24}|.{0,40}") {
            for sep in [b'/', b'&'] {
                let ours: Vec<&str> = split_ascii(&s, sep).collect();
                let std: Vec<&str> = s.split(char::from(sep)).collect();
                prop_assert_eq!(ours, std);
            }
        }

        #[test]
        fn parse_never_panics(path in ".{0,200}", query in proptest::option::of(".{0,200}")) {
            let _ = parse(&path, query.as_deref());
        }

        #[test]
        fn parse_never_panics_on_path_like_input(
            path in "(/(apis|external\\.metrics\\.k8s\\.io|v1beta1|namespaces|openapi|v3|%[0-9a-fA-Fz]{0,2}|[a-z%+.]{0,8})){0,8}/?",
            query in "([a-zA-Z%+=&]{0,10}(labelSelector|watch)=[a-z%0-9+(),!=]{0,20}&?){0,3}",
        ) {
            let route = parse(&path, Some(&query));
            if let Route::Metric(m) = route {
                // Whatever was accepted satisfies the invariants the handler relies on.
                prop_assert!(is_dns1123_label(&m.namespace));
                prop_assert!(!m.metric.contains('/'));
                prop_assert!(!m.metric.is_empty());
            }
        }
    }
}
