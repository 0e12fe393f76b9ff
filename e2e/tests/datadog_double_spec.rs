//! Keeps the Datadog double honest: its real responses are validated against the schemas of
//! Datadog's published OpenAPI spec, and its behaviour (batching, auth, rate limits, faults,
//! recording) is checked over HTTP.
//!
//! The spec is our copy of the operations we use (`e2e/spec/datadog-api-v1-subset.json`, with
//! every component they reference), or the whole published spec named by `DD_OPENAPI_SPEC`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::datadog_double::{
    DatadogDouble, Fault, MetricUnit, Route, SeriesSpec, points_ending_now,
    points_ending_now_with_gaps,
};
use serde_json::{Map, Value, json};

const PATIENCE: Duration = Duration::from_secs(30);

/// The spec, or why it could not be had. Kept as a `Result` so that every test names the
/// cause: a panic inside `LazyLock` would poison it, and the other tests would only say so.
static SPEC: LazyLock<Result<Value, String>> = LazyLock::new(load_spec);

#[track_caller]
fn spec() -> &'static Value {
    match &*SPEC {
        Ok(spec) => spec,
        Err(why) => panic!("{why}"),
    }
}

/// Our copy of the operations of Datadog's published v1 spec that the client and the double
/// use (`e2e/spec/`), or the whole spec from `DD_OPENAPI_SPEC` to check against a newer one.
fn load_spec() -> Result<Value, String> {
    let path = std::env::var_os("DD_OPENAPI_SPEC")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("spec/datadog-api-v1-subset.json")
        });
    let text = std::fs::read_to_string(&path).map_err(|err| {
        format!(
            "cannot read Datadog's OpenAPI spec at {}: {err} (DD_OPENAPI_SPEC, when set, \
             names the file)",
            path.display()
        )
    })?;
    // The spec is trusted and far larger than a config file, so the parser's
    // anti-abuse budget does not apply. YAML, so JSON too.
    let mut options = serde_saphyr::Options::default();
    options.budget = None;
    serde_saphyr::from_str_with_options(&text, options)
        .map_err(|err| format!("cannot parse {} as YAML: {err}", path.display()))
}

fn setup() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client")
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

// ---------------------------------------------------------------------------------------------
// OpenAPI 3.0 -> JSON Schema (draft 7)
// ---------------------------------------------------------------------------------------------

fn pointer<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let ptr = reference
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("only local $refs are expected, got {reference}"));
    doc.pointer(ptr)
        .unwrap_or_else(|| panic!("$ref {reference} does not resolve in the spec"))
}

/// Follows a `$ref` to `#/components/responses/...` or `#/components/requestBodies/...`.
fn deref<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => deref(doc, pointer(doc, r)),
        None => v,
    }
}

fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// The declared content type and schema of a response.
fn response_schema(path: &str, method: &str, status: u16) -> (String, Value) {
    let op = format!("/paths/{}/{method}", escape_pointer(path));
    let responses = spec()
        .pointer(&format!("{op}/responses"))
        .unwrap_or_else(|| panic!("the spec has no {method} {path}"));
    let response = responses
        .get(status.to_string())
        .unwrap_or_else(|| panic!("the spec declares no {status} for {method} {path}"));
    content_schema(
        deref(spec(), response),
        &format!("{status} of {method} {path}"),
    )
}

fn request_schema(path: &str, method: &str) -> (String, Value) {
    let body = spec()
        .pointer(&format!(
            "/paths/{}/{method}/requestBody",
            escape_pointer(path)
        ))
        .unwrap_or_else(|| panic!("the spec has no request body for {method} {path}"));
    content_schema(deref(spec(), body), &format!("request of {method} {path}"))
}

fn content_schema(holder: &Value, what: &str) -> (String, Value) {
    let content = holder
        .get("content")
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("{what} has no content"));
    assert_eq!(content.len(), 1, "{what}: expected one content type");
    let (content_type, media) = content.iter().next().expect("one entry");
    let schema = media
        .get("schema")
        .unwrap_or_else(|| panic!("{what} has no schema"));
    (content_type.clone(), schema.clone())
}

const OPENAPI_ONLY: &[&str] = &[
    "nullable",
    "readOnly",
    "writeOnly",
    "example",
    "examples",
    "discriminator",
    "xml",
    "externalDocs",
    "deprecated",
];

/// Converts one OpenAPI 3.0 schema object to JSON Schema, recording the component schemas it
/// references. `nullable: true` becomes a type union; objects become closed
/// (`additionalProperties: false` unless the spec says otherwise) so that a misspelt or invented
/// field in the double fails validation instead of passing silently.
fn convert(schema: &Value, defs: &mut Map<String, Value>) -> Value {
    let Some(obj) = schema.as_object() else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (key, value) in obj {
        if OPENAPI_ONLY.contains(&key.as_str()) || key.starts_with("x-") {
            continue;
        }
        let converted = match key.as_str() {
            "$ref" => {
                let r = value.as_str().expect("$ref is a string");
                let name = r
                    .strip_prefix("#/components/schemas/")
                    .unwrap_or_else(|| panic!("unexpected schema $ref {r}"));
                if !defs.contains_key(name) {
                    // Reserve the slot first: schemas may be recursive.
                    defs.insert(name.to_owned(), Value::Null);
                    let target = convert(pointer(spec(), r), defs);
                    defs.insert(name.to_owned(), target);
                }
                Value::String(format!("#/definitions/{name}"))
            }
            "properties" | "patternProperties" => Value::Object(
                value
                    .as_object()
                    .expect("properties is a map")
                    .iter()
                    .map(|(k, v)| (k.clone(), convert(v, defs)))
                    .collect(),
            ),
            "items" | "additionalProperties" | "not" => convert(value, defs),
            "allOf" | "anyOf" | "oneOf" => Value::Array(
                value
                    .as_array()
                    .expect("combinator is a list")
                    .iter()
                    .map(|v| convert(v, defs))
                    .collect(),
            ),
            _ => value.clone(),
        };
        out.insert(key.clone(), converted);
    }
    if obj.contains_key("properties") && !obj.contains_key("additionalProperties") {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    if obj.get("nullable").and_then(Value::as_bool) == Some(true) {
        if let Some(t) = out.get("type").and_then(Value::as_str).map(str::to_owned) {
            out.insert("type".into(), json!([t, "null"]));
            if let Some(Value::Array(values)) = out.get_mut("enum") {
                values.push(Value::Null);
            }
        } else {
            return json!({"anyOf": [Value::Object(out), {"type": "null"}]});
        }
    }
    Value::Object(out)
}

fn validator(schema: &Value) -> jsonschema::Validator {
    let mut defs = Map::new();
    let mut root = convert(schema, &mut defs)
        .as_object()
        .cloned()
        .expect("schema is an object");
    root.insert(
        "$schema".into(),
        json!("http://json-schema.org/draft-07/schema#"),
    );
    root.insert("definitions".into(), Value::Object(defs));
    jsonschema::draft7::new(&Value::Object(root)).expect("converted schema compiles")
}

#[track_caller]
fn assert_valid(schema: &Value, instance: &Value, what: &str) {
    let v = validator(schema);
    let errors: Vec<String> = v
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not match the spec: {errors:#?}\ninstance: {instance:#}"
    );
}

#[track_caller]
fn assert_invalid(schema: &Value, instance: &Value, what: &str) {
    assert!(
        !validator(schema).is_valid(instance),
        "{what} unexpectedly matches the spec: {instance:#}"
    );
}

/// Checks status, `Content-Type` and body of a real response against the spec.
async fn check_response(
    response: reqwest::Response,
    path: &str,
    method: &str,
) -> (reqwest::header::HeaderMap, Value) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("body");
    let (content_type, schema) = response_schema(path, method, status);
    assert_eq!(
        headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
        content_type,
        "Content-Type of the {status} answer to {method} {path}"
    );
    let json: Value = serde_json::from_slice(&body).unwrap_or_else(|err| {
        panic!(
            "{status} answer to {method} {path} is not JSON ({err}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    assert_valid(
        &schema,
        &json,
        &format!("{status} answer to {method} {path}"),
    );
    (headers, json)
}

async fn query(dd: &DatadogDouble, queries: &[&str], window_s: i64) -> reqwest::Response {
    let to = now_s();
    let from = (to - window_s).to_string();
    let to = to.to_string();
    let joined = queries.join(",");
    client()
        .get(format!("{}/api/v1/query", dd.base_url()))
        .header("DD-API-KEY", dd.api_key())
        .header("DD-APPLICATION-KEY", dd.app_key())
        .query(&[
            ("from", from.as_str()),
            ("to", to.as_str()),
            ("query", joined.as_str()),
        ])
        .send()
        .await
        .expect("query request")
}

fn header_u64(headers: &reqwest::header::HeaderMap, name: &str) -> u64 {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .expect("ascii")
        .parse()
        .expect("integer header")
}

fn series_by_index(body: &Value) -> Vec<(u64, Vec<Value>)> {
    body["series"]
        .as_array()
        .expect("series array")
        .iter()
        .map(|s| {
            (
                s["query_index"].as_u64().expect("query_index"),
                s["pointlist"].as_array().expect("pointlist").clone(),
            )
        })
        .collect()
}

fn values(pointlist: &[Value]) -> Vec<Option<f64>> {
    pointlist.iter().map(|p| p[1].as_f64()).collect()
}

// ---------------------------------------------------------------------------------------------
// Schema conformance
// ---------------------------------------------------------------------------------------------

#[test]
fn converter_enforces_nullability_and_closed_objects() {
    let (_, schema) = response_schema("/api/v1/query", "get", 200);
    assert_valid(
        &schema,
        &json!({"status": "ok", "series": []}),
        "minimal answer",
    );
    assert_invalid(
        &schema,
        &json!({"status": "ok", "sereis": []}),
        "misspelt field",
    );
    assert_invalid(
        &schema,
        &json!({"series": [{"pointlist": [[1.0]]}]}),
        "one-element point",
    );
    assert_invalid(
        &schema,
        &json!({"series": [{"unit": null}]}),
        "null unit array",
    );
    assert_valid(
        &schema,
        &json!({"series": [{"pointlist": [[1.0, null]], "aggr": null, "unit": [null, null]}]}),
        "nullable point value, aggr and units",
    );
}

#[tokio::test]
async fn query_with_values_matches_the_spec() {
    setup();
    let dd = DatadogDouble::start().await.expect("double");
    let q = "avg:nginx.net.request_per_s{app:web,env:prod}.rollup(30)";
    dd.set_series(q, points_ending_now(&[10.0, 20.0, 40.0], 30));

    let response = query(&dd, &[q], 300).await;
    assert_eq!(response.status(), 200);
    let (headers, body) = check_response(response, "/api/v1/query", "get").await;

    assert_eq!(body["status"], "ok");
    assert_eq!(body["res_type"], "time_series");
    assert_eq!(body["query"], q);
    let from = body["from_date"].as_i64().expect("from_date");
    let to = body["to_date"].as_i64().expect("to_date");
    assert_eq!(to - from, 300_000, "from_date/to_date are milliseconds");
    let s = &body["series"][0];
    assert_eq!(s["metric"], "nginx.net.request_per_s");
    assert_eq!(s["scope"], "app:web,env:prod");
    assert_eq!(s["aggr"], "avg");
    assert_eq!(s["query_index"], 0);
    assert_eq!(s["length"], 3);
    let points = s["pointlist"].as_array().expect("pointlist");
    assert_eq!(values(points), [Some(10.0), Some(20.0), Some(40.0)]);
    let stamps: Vec<f64> = points.iter().map(|p| p[0].as_f64().expect("ts")).collect();
    assert!(
        stamps.windows(2).all(|w| w[1] - w[0] == 30_000.0),
        "{stamps:?}"
    );
    assert!(stamps.iter().all(|t| (from as f64..=to as f64).contains(t)));
    assert_eq!(s["start"].as_f64(), Some(stamps[0]));
    assert_eq!(s["end"].as_f64(), Some(stamps[2]));

    assert_eq!(header_u64(&headers, "x-ratelimit-limit"), 1600);
    assert_eq!(header_u64(&headers, "x-ratelimit-remaining"), 1599);
    assert_eq!(header_u64(&headers, "x-ratelimit-period"), 3600);
    assert!((1..=3600).contains(&header_u64(&headers, "x-ratelimit-reset")));
}

#[tokio::test]
async fn query_with_null_points_matches_the_spec() {
    setup();
    let dd = DatadogDouble::start().await.expect("double");
    let relative = "sum:queue.depth{queue:jobs}.rollup(60)";
    dd.set_series(
        relative,
        points_ending_now_with_gaps(&[Some(3.0), None, Some(5.0), None], 60),
    );
    let absolute = "max:disk.used{*}";
    let t = (now_s() - 100) * 1000;
    dd.set_series(absolute, vec![(t - 20_000, Some(1.5)), (t, None)]);
    let unset = "avg:never.reported{*}";

    let response = query(&dd, &[relative, absolute, unset], 600).await;
    let (_, body) = check_response(response, "/api/v1/query", "get").await;
    let series = series_by_index(&body);
    assert_eq!(
        series.len(),
        2,
        "no series for a query without data: {body:#}"
    );
    assert_eq!(values(&series[0].1), [Some(3.0), None, Some(5.0), None]);
    assert_eq!(series[1].0, 1);
    assert_eq!(values(&series[1].1), [Some(1.5), None]);
    assert_eq!(body["series"][1]["scope"], "*");
    assert_eq!(
        body["series"][1]["pointlist"][0][0].as_f64(),
        Some((t - 20_000) as f64)
    );
}

#[tokio::test]
async fn query_with_several_series_matches_the_spec() {
    setup();
    let dd = DatadogDouble::start().await.expect("double");
    let q = "avg:kubernetes.cpu.usage.total{kube_deployment:web} by {pod_name}";
    let per_second = MetricUnit {
        family: "time".into(),
        name: "second".into(),
        plural: "seconds".into(),
        scale_factor: 1.0,
        short_name: "s".into(),
    };
    let core = MetricUnit {
        family: "cpu".into(),
        name: "nanocore".into(),
        plural: "nanocores".into(),
        scale_factor: 1e-9,
        short_name: "ncores".into(),
    };
    dd.set_multiple_series(
        q,
        vec![
            SeriesSpec::new(points_ending_now(&[1.0, 2.0], 20))
                .with_scope("kube_deployment:web,pod_name:web-a")
                .with_tag_set(&["pod_name:web-a"])
                .with_unit([Some(core), Some(per_second)]),
            SeriesSpec::new(points_ending_now(&[3.0, 4.0], 20))
                .with_scope("kube_deployment:web,pod_name:web-b")
                .with_tag_set(&["pod_name:web-b"]),
        ],
    );
    let response = query(&dd, &[q], 300).await;
    let (_, body) = check_response(response, "/api/v1/query", "get").await;
    let series = body["series"].as_array().expect("series");
    assert_eq!(series.len(), 2);
    assert!(series.iter().all(|s| s["query_index"] == 0));
    assert_eq!(series[0]["tag_set"], json!(["pod_name:web-a"]));
    assert_eq!(series[0]["unit"][1]["name"], "second");
    assert_eq!(series[1]["unit"], json!([null, null]));
}

#[tokio::test]
async fn query_error_status_matches_the_spec() {
    setup();
    let dd = DatadogDouble::start().await.expect("double");
    dd.push_fault(
        Route::Query,
        Fault::QueryError("Rate limit of 300 requests in 3600 seconds reached".into()),
        1,
    );
    let (_, body) =
        check_response(query(&dd, &["avg:a{*}"], 60).await, "/api/v1/query", "get").await;
    assert_eq!(body["status"], "error");
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("Rate limit")
    );
}

#[tokio::test]
async fn validate_matches_the_spec() {
    setup();
    let dd = DatadogDouble::start().await.expect("double");
    let url = format!("{}/api/v1/validate", dd.base_url());

    let ok = client()
        .get(&url)
        .header("DD-API-KEY", dd.api_key())
        .send()
        .await
        .expect("validate");
    assert_eq!(ok.status(), 200);
    let (_, body) = check_response(ok, "/api/v1/validate", "get").await;
    assert_eq!(body, json!({"valid": true}));

    // The forwarder's health check passes the key as a query parameter.
    let ok = client()
        .get(&url)
        .query(&[("api_key", dd.api_key())])
        .send()
        .await
        .expect("validate");
    assert_eq!(ok.status(), 200);

    for bad in [Some("0000000000000000000000000000dead"), None] {
        let mut request = client().get(&url);
        if let Some(key) = bad {
            request = request.header("DD-API-KEY", key);
        }
        let response = request.send().await.expect("validate");
        assert_eq!(response.status(), 403);
        let (_, body) = check_response(response, "/api/v1/validate", "get").await;
        assert_eq!(body, json!({"errors": ["Forbidden"]}));
    }
}

#[tokio::test]
async fn query_auth_errors_match_the_spec() {
    setup();
    let dd = DatadogDouble::start().await.expect("double");
    let url = format!("{}/api/v1/query", dd.base_url());
    let params = [("from", "0"), ("to", "60"), ("query", "avg:a{*}")];

    let only_api_key = client()
        .get(&url)
        .header("DD-API-KEY", dd.api_key())
        .query(&params)
        .send()
        .await
        .expect("query");
    assert_eq!(
        only_api_key.status(),
        403,
        "the application key is required"
    );
    let (headers, body) = check_response(only_api_key, "/api/v1/query", "get").await;
    assert_eq!(body, json!({"errors": ["Forbidden"]}));
    assert!(headers.get("x-ratelimit-remaining").is_none());

    let wrong_api_key = client()
        .get(&url)
        .header("DD-API-KEY", "nope")
        .header("DD-APPLICATION-KEY", dd.app_key())
        .query(&params)
        .send()
        .await
        .expect("query");
    assert_eq!(wrong_api_key.status(), 403);

    let via_params = client()
        .get(&url)
        .query(&params)
        .query(&[("api_key", dd.api_key()), ("application_key", dd.app_key())])
        .send()
        .await
        .expect("query");
    assert_eq!(via_params.status(), 200);
    check_response(via_params, "/api/v1/query", "get").await;

    let missing_from = client()
        .get(&url)
        .header("DD-API-KEY", dd.api_key())
        .header("DD-APPLICATION-KEY", dd.app_key())
        .query(&[("to", "60"), ("query", "avg:a{*}")])
        .send()
        .await
        .expect("query");
    assert_eq!(missing_from.status(), 400);
    check_response(missing_from, "/api/v1/query", "get").await;
}

#[tokio::test]
async fn rate_limit_budget_and_429_match_the_spec() {
    setup();
    let dd = DatadogDouble::start().await.expect("double");
    dd.set_rate_limit(2, 3600);

    let first = query(&dd, &["avg:a{*}"], 60).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header_u64(first.headers(), "x-ratelimit-remaining"), 1);
    let second = query(&dd, &["avg:a{*}"], 60).await;
    assert_eq!(second.status(), 200);
    let reset_before = header_u64(second.headers(), "x-ratelimit-reset");
    assert_eq!(header_u64(second.headers(), "x-ratelimit-remaining"), 0);

    let limited = query(&dd, &["avg:a{*}"], 60).await;
    assert_eq!(limited.status(), 429);
    let (headers, body) = check_response(limited, "/api/v1/query", "get").await;
    assert_eq!(body, json!({"errors": ["Too Many Requests"]}));
    assert_eq!(header_u64(&headers, "x-ratelimit-limit"), 2);
    assert_eq!(header_u64(&headers, "x-ratelimit-period"), 3600);
    assert_eq!(header_u64(&headers, "x-ratelimit-remaining"), 0);
    let reset = header_u64(&headers, "x-ratelimit-reset");
    assert!(
        (1..=reset_before).contains(&reset),
        "reset counts down: {reset} after {reset_before}"
    );

    // A short period refills the budget once it ends.
    dd.set_rate_limit(1, 1);
    assert_eq!(query(&dd, &["avg:a{*}"], 60).await.status(), 200);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let response = query(&dd, &["avg:a{*}"], 60).await;
        if response.status() == 200 {
            break;
        }
        assert_eq!(response.status(), 429);
        assert!(Instant::now() < deadline, "the budget never refilled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn check_run_matches_the_spec() {
    setup();
    let dd = DatadogDouble::start().await.expect("double");
    let (request_type, request) = request_schema("/api/v1/check_run", "post");
    let url = format!("{}/api/v1/check_run", dd.base_url());
    let checks = json!([{
        "check": "kube_apiserver_controlplane.up",
        "host_name": "dca-host",
        "status": 0,
        "tags": ["component:scheduler"],
        "message": "",
        "timestamp": now_s(),
    }]);
    assert_valid(&request, &checks, "service checks sent by the test");

    let response = client()
        .post(&url)
        .header("DD-API-KEY", dd.api_key())
        .header("Content-Type", request_type)
        .body(checks.to_string())
        .send()
        .await
        .expect("check_run");
    assert_eq!(response.status(), 202);
    let (_, body) = check_response(response, "/api/v1/check_run", "post").await;
    assert_eq!(body, json!({"status": "ok"}));
    assert_eq!(dd.requests_to("/api/v1/check_run")[0].json, Some(checks));

    // What the spec rejects, the double rejects.
    let missing_host = json!([{"check": "x", "status": 0, "tags": []}]);
    assert_invalid(&request, &missing_host, "check without host_name");
    let bad_status = json!([{"check": "x", "host_name": "h", "status": 7, "tags": []}]);
    assert_invalid(&request, &bad_status, "check with status 7");
    for invalid in [missing_host, bad_status] {
        let response = client()
            .post(&url)
            .header("DD-API-KEY", dd.api_key())
            .body(invalid.to_string())
            .send()
            .await
            .expect("check_run");
        assert_eq!(response.status(), 400, "{invalid}");
        check_response(response, "/api/v1/check_run", "post").await;
    }

    let forbidden = client()
        .post(&url)
        .body("[]")
        .send()
        .await
        .expect("check_run");
    assert_eq!(forbidden.status(), 403);
    check_response(forbidden, "/api/v1/check_run", "post").await;
}

fn compress(encoding: &str, payload: &[u8]) -> Vec<u8> {
    match encoding {
        "identity" => payload.to_vec(),
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(payload).expect("zlib");
            e.finish().expect("zlib")
        }
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(payload).expect("gzip");
            e.finish().expect("gzip")
        }
        "zstd" => {
            ruzstd::encoding::compress_to_vec(payload, ruzstd::encoding::CompressionLevel::Fastest)
        }
        other => panic!("no encoder for {other}"),
    }
}

#[tokio::test]
async fn series_v1_accepts_every_encoding_and_matches_the_spec() {
    setup();
    let dd = DatadogDouble::start().await.expect("double");
    let (request_type, request) = request_schema("/api/v1/series", "post");
    let payload = json!({"series": [{
        "metric": "datadog.cluster_agent.up",
        "points": [[now_s() as f64, 1.0]],
        "tags": ["cluster_name:e2e"],
        "host": "dca-host",
        "type": "gauge",
        "interval": null,
    }]});
    assert_valid(&request, &payload, "metrics payload sent by the test");
    let raw = payload.to_string();

    for encoding in ["identity", "deflate", "gzip", "zstd"] {
        let mut req = client()
            .post(format!("{}/api/v1/series", dd.base_url()))
            .header("DD-API-KEY", dd.api_key())
            .header("Content-Type", request_type.as_str())
            .body(compress(encoding, raw.as_bytes()));
        if encoding != "identity" {
            req = req.header("Content-Encoding", encoding);
        }
        let response = req.send().await.expect("series");
        assert_eq!(response.status(), 202, "{encoding}");
        check_response(response, "/api/v1/series", "post").await;
    }
    let recorded = dd.requests_to("/api/v1/series");
    assert_eq!(recorded.len(), 4);
    for r in &recorded {
        assert_eq!(r.json.as_ref(), Some(&payload), "{:?}", r.content_encoding);
        assert_eq!(r.status, Some(reqwest::StatusCode::ACCEPTED));
    }

    let one_element_point = json!({"series": [{"metric": "m", "points": [[1.0]]}]});
    assert_invalid(&request, &one_element_point, "one-element point");
    let response = client()
        .post(format!("{}/api/v1/series", dd.base_url()))
        .header("DD-API-KEY", dd.api_key())
        .body(one_element_point.to_string())
        .send()
        .await
        .expect("series");
    assert_eq!(response.status(), 400);
    check_response(response, "/api/v1/series", "post").await;

    let garbage = client()
        .post(format!("{}/api/v1/series", dd.base_url()))
        .header("DD-API-KEY", dd.api_key())
        .header("Content-Encoding", "gzip")
        .body("not gzip")
        .send()
        .await
        .expect("series");
    assert_eq!(garbage.status(), 400);
    check_response(garbage, "/api/v1/series", "post").await;
}

// ---------------------------------------------------------------------------------------------
// Behaviour
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn batched_queries_map_to_their_series_by_query_index() {
    setup();
    let dd = DatadogDouble::start().await.expect("double");
    let q0 = "avg:nginx.net.request_per_s{app:web,env:prod}.rollup(30)";
    let q1 = "sum:redis.clients{role:primary}.rollup(sum, 30)";
    let q2 = "max:http.latency{service:api,region:eu}.rollup(30)";
    // Set in another order than they are queried, with distinct values.
    dd.set_series(q2, points_ending_now(&[2.0, 2.5], 30));
    dd.set_series(q0, points_ending_now(&[0.0, 0.5], 30));
    dd.set_series(q1, points_ending_now(&[1.0, 1.5], 30));

    let response = query(&dd, &[q0, q1, q2], 300).await;
    let (_, body) = check_response(response, "/api/v1/query", "get").await;
    let mut series = series_by_index(&body);
    assert_eq!(series.len(), 3);
    series.sort_by_key(|(i, _)| *i);
    for (index, pointlist) in &series {
        let base = *index as f64;
        assert_eq!(
            values(pointlist),
            [Some(base), Some(base + 0.5)],
            "query_index {index}"
        );
    }
    assert_eq!(body["series"][1]["scope"], "role:primary");
    assert_eq!(
        dd.query_calls(),
        vec![vec![q0.to_owned(), q1.to_owned(), q2.to_owned()]]
    );
}

#[tokio::test]
async fn faults_shape_the_next_answers() {
    setup();
    let dd = DatadogDouble::start().await.expect("double");
    let q = "avg:a{x:y}.rollup(30)";
    let other = "avg:b{*}.rollup(30)";
    dd.set_series(q, points_ending_now(&[1.0, 2.0], 30));
    dd.set_series(other, points_ending_now(&[3.0], 30));

    // A queued 429 carries the rate-limit headers, then the route recovers.
    dd.push_fault(Route::Query, Fault::too_many_requests(), 1);
    let limited = query(&dd, &[q], 300).await;
    assert_eq!(limited.status(), 429);
    let (headers, _) = check_response(limited, "/api/v1/query", "get").await;
    assert_eq!(header_u64(&headers, "x-ratelimit-remaining"), 0);
    assert_eq!(header_u64(&headers, "x-ratelimit-limit"), 1600);
    assert_eq!(query(&dd, &[q], 300).await.status(), 200);

    // 5xx, in queue order.
    dd.push_faults(
        Route::Query,
        [
            Fault::Status(reqwest::StatusCode::INTERNAL_SERVER_ERROR),
            Fault::Status(reqwest::StatusCode::SERVICE_UNAVAILABLE),
        ],
    );
    assert_eq!(query(&dd, &[q], 300).await.status(), 500);
    let unavailable = query(&dd, &[q], 300).await;
    assert_eq!(unavailable.status(), 503);
    let body: Value = unavailable.json().await.expect("error body");
    assert_eq!(body, json!({"errors": ["Service Unavailable"]}));
    assert_eq!(query(&dd, &[q], 300).await.status(), 200);

    // Malformed JSON with a 200.
    dd.push_fault(Route::Query, Fault::MalformedJson, 1);
    let malformed = query(&dd, &[q], 300).await;
    assert_eq!(malformed.status(), 200);
    let text = malformed.text().await.expect("body");
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");

    // A series missing from a batch: the fault waits for a batch containing its query.
    dd.push_fault(Route::Query, Fault::DropSeries(q.to_owned()), 1);
    let (_, untouched) =
        check_response(query(&dd, &[other], 300).await, "/api/v1/query", "get").await;
    assert_eq!(series_by_index(&untouched).len(), 1);
    let (_, partial) =
        check_response(query(&dd, &[other, q], 300).await, "/api/v1/query", "get").await;
    let partial = series_by_index(&partial);
    assert_eq!(partial.len(), 1);
    assert_eq!(partial[0].0, 0, "only the series of `other` is left");
    let (_, whole) =
        check_response(query(&dd, &[other, q], 300).await, "/api/v1/query", "get").await;
    assert_eq!(series_by_index(&whole).len(), 2);

    // A slow answer.
    let delay = Duration::from_millis(400);
    dd.push_fault(Route::Query, Fault::Delay(delay), 1);
    let started = Instant::now();
    let slow = query(&dd, &[q], 300).await;
    assert!(started.elapsed() >= delay);
    assert_eq!(slow.status(), 200);

    // A sticky fault lasts until removed; it is per route.
    dd.set_sticky_fault(
        Route::Validate,
        Some(Fault::Status(reqwest::StatusCode::BAD_GATEWAY)),
    );
    let validate = format!("{}/api/v1/validate", dd.base_url());
    for _ in 0..2 {
        let r = client()
            .get(&validate)
            .header("DD-API-KEY", dd.api_key())
            .send()
            .await
            .expect("validate");
        assert_eq!(r.status(), 502);
    }
    assert_eq!(query(&dd, &[q], 300).await.status(), 200);
    dd.set_sticky_fault(Route::Validate, None);
    let r = client()
        .get(&validate)
        .header("DD-API-KEY", dd.api_key())
        .send()
        .await
        .expect("validate");
    assert_eq!(r.status(), 200);

    // Faults come after auth: a bad key is still a 403.
    dd.push_fault(
        Route::Validate,
        Fault::Status(reqwest::StatusCode::INTERNAL_SERVER_ERROR),
        1,
    );
    let r = client().get(&validate).send().await.expect("validate");
    assert_eq!(r.status(), 403);
    dd.clear_faults();
    let r = client()
        .get(&validate)
        .header("DD-API-KEY", dd.api_key())
        .send()
        .await
        .expect("validate");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_series_outside_the_window_is_not_returned() {
    setup();
    let dd = DatadogDouble::start().await.expect("double");
    let q = "avg:old{*}";
    let an_hour_ago = (now_s() - 3600) * 1000;
    dd.set_series(q, vec![(an_hour_ago, 1.0)]);
    let (_, body) = check_response(query(&dd, &[q], 300).await, "/api/v1/query", "get").await;
    assert_eq!(body["series"], json!([]));
    let (_, body) = check_response(query(&dd, &[q], 7200).await, "/api/v1/query", "get").await;
    assert_eq!(body["series"].as_array().map(Vec::len), Some(1));
    dd.clear_series(q);
    let (_, body) = check_response(query(&dd, &[q], 7200).await, "/api/v1/query", "get").await;
    assert_eq!(body["series"], json!([]));
}

#[tokio::test]
async fn intake_accepts_agent_event_payloads() {
    setup();
    let dd = DatadogDouble::start().await.expect("double");
    let payload = json!({
        "apiKey": "",
        "events": {"kubernetes": [{
            "msg_title": "Events from the Pod default/web-1",
            "msg_text": "%%% \n1 **Scheduled**: ok\n \n _Events emitted by the default-scheduler seen at x since y_ \n\n %%%",
            "timestamp": now_s(),
            "priority": "normal",
            "host": "node-1",
            "tags": ["kube_kind:Pod"],
            "alert_type": "info",
            "aggregation_key": "kubernetes_apiserver:uid-1",
            "source_type_name": "kubernetes",
            "event_type": "kubernetes_apiserver",
        }]},
        "internalHostname": "dca-host",
    });
    let raw = payload.to_string();
    let url = format!("{}/intake/", dd.base_url());
    for encoding in ["zstd", "deflate", "identity"] {
        let mut req = client()
            .post(&url)
            .header("DD-Api-Key", dd.api_key())
            .header("Content-Type", "application/json")
            .body(compress(encoding, raw.as_bytes()));
        if encoding != "identity" {
            req = req.header("Content-Encoding", encoding);
        }
        assert_eq!(
            req.send().await.expect("intake").status(),
            202,
            "{encoding}"
        );
    }
    let seen = dd
        .wait_for_requests("/intake/", 3, PATIENCE)
        .await
        .expect("intake requests");
    assert!(seen.iter().all(|r| r.json.as_ref() == Some(&payload)));
    assert_eq!(seen[0].content_encoding.as_deref(), Some("zstd"));
    assert!(seen[0].raw_body_len != seen[0].body.len());

    let bad_key = client()
        .post(&url)
        .header("DD-Api-Key", "x")
        .body(raw.clone())
        .send()
        .await
        .expect("intake");
    assert_eq!(bad_key.status(), 403);
    let not_events = client()
        .post(&url)
        .header("DD-Api-Key", dd.api_key())
        .body(r#"{"events":[1]}"#)
        .send()
        .await
        .expect("intake");
    assert_eq!(not_events.status(), 400);
    let no_slash = client()
        .post(format!("{}/intake", dd.base_url()))
        .header("DD-Api-Key", dd.api_key())
        .body(raw)
        .send()
        .await
        .expect("intake");
    assert_eq!(no_slash.status(), 404);
}

fn multipart_body(boundary: &str, fields: &[(&str, &str)], file: (&str, &[u8])) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        )
        .expect("write");
    }
    write!(
        body,
        "--{boundary}\r\nContent-Disposition: form-data; name=\"flare_file\"; filename=\"{}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n",
        file.0
    )
    .expect("write");
    body.extend_from_slice(file.1);
    write!(body, "\r\n--{boundary}--\r\n").expect("write");
    body
}

#[tokio::test]
async fn flare_upload_records_fields_and_file() {
    setup();
    let dd = DatadogDouble::start().await.expect("double");
    let url = format!("{}/support/flare/1234", dd.base_url());

    let head = client()
        .head(&url)
        .header("DD-API-KEY", dd.api_key())
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), 200);

    let archive = vec![7u8; 4096];
    let boundary = "e2e-boundary-0123456789";
    let body = multipart_body(
        boundary,
        &[
            ("case_id", "1234"),
            ("email", "ops@example.com"),
            ("source", "local"),
        ],
        ("datadog-agent-2025-01-01-00-00-00.zip", &archive),
    );
    let response = client()
        .post(&url)
        .header("DD-API-KEY", dd.api_key())
        .header(
            "Content-Type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .expect("flare");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/json"),
        "the agent refuses a flare answer that is not application/json"
    );
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer, json!({"case_id": 1234}));

    let posted = dd
        .requests_to("/support/flare")
        .into_iter()
        .find(|r| r.method == reqwest::Method::POST)
        .expect("recorded flare");
    let names: Vec<&str> = posted.multipart.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["case_id", "email", "source", "flare_file"]);
    let file = posted.multipart_field("flare_file").expect("flare_file");
    assert_eq!(
        file.file_name.as_deref(),
        Some("datadog-agent-2025-01-01-00-00-00.zip")
    );
    assert_eq!(file.size, archive.len());
    assert_eq!(
        posted
            .multipart_field("source")
            .and_then(|p| p.text.as_deref()),
        Some("local")
    );

    // Without a case in the path or the form, the backend allocates one.
    let body = multipart_body(boundary, &[], ("f.zip", b"zip"));
    let response = client()
        .post(format!("{}/support/flare", dd.base_url()))
        .header("DD-API-KEY", dd.api_key())
        .header(
            "Content-Type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .expect("flare");
    let answer: Value = response.json().await.expect("json");
    assert!(
        answer["case_id"].as_u64().is_some_and(|id| id > 0),
        "{answer}"
    );

    let forbidden = client().post(&url).body("x").send().await.expect("flare");
    assert_eq!(forbidden.status(), 403);
    let no_file = client()
        .post(&url)
        .header("DD-API-KEY", dd.api_key())
        .header("Content-Type", format!("multipart/form-data; boundary={boundary}"))
        .body(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\nx\r\n--{boundary}--\r\n"))
        .send()
        .await
        .expect("flare");
    assert_eq!(no_file.status(), 400);
}

#[tokio::test]
async fn requests_are_recorded_for_assertions() {
    setup();
    let dd = DatadogDouble::start().await.expect("double");
    let q = "avg:m{a:b,c:d}.rollup(30)";
    let response = client()
        .get(format!("{}/api/v1/query", dd.base_url()))
        .header("DD-API-KEY", dd.api_key())
        .header("DD-APPLICATION-KEY", dd.app_key())
        .header("User-Agent", "Datadog-Cluster-Agent")
        .query(&[
            ("from", "100"),
            ("to", "400"),
            ("query", &format!("{q},sum:n{{*}}")),
        ])
        .send()
        .await
        .expect("query");
    assert_eq!(response.status(), 200);

    let recorded = dd.requests();
    assert_eq!(recorded.len(), 1);
    let r = &recorded[0];
    assert_eq!(r.method, reqwest::Method::GET);
    assert_eq!(r.path, "/api/v1/query");
    assert_eq!(r.query_param("from"), Some("100"));
    assert_eq!(r.query_param("to"), Some("400"));
    assert_eq!(r.header("user-agent"), Some("Datadog-Cluster-Agent"));
    assert_eq!(r.header("dd-api-key"), Some(dd.api_key()));
    assert_eq!(r.metric_queries(), [q, "sum:n{*}"]);
    assert_eq!(r.status, Some(reqwest::StatusCode::OK));
    assert_eq!(
        dd.query_calls(),
        vec![vec![q.to_owned(), "sum:n{*}".to_owned()]]
    );

    let unknown = client()
        .get(format!("{}/api/v2/query/timeseries", dd.base_url()))
        .send()
        .await
        .expect("404");
    assert_eq!(unknown.status(), 404);
    let wrong_method = client()
        .post(format!("{}/api/v1/query", dd.base_url()))
        .header("DD-API-KEY", dd.api_key())
        .send()
        .await
        .expect("405");
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(dd.requests_to("/api/").len(), 3);

    dd.clear_requests();
    assert!(dd.requests().is_empty());
    assert!(dd.query_calls().is_empty());
    let err = dd
        .wait_for_requests("/api/v1/check_run", 1, Duration::from_millis(100))
        .await
        .expect_err("nothing was sent");
    assert!(err.to_string().contains("/api/v1/check_run"), "{err}");

    // A waiter is woken by a request that arrives later.
    let base = dd.base_url();
    let key = dd.api_key().to_owned();
    let sender = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        client()
            .post(format!("{base}/api/v1/check_run"))
            .header("DD-API-KEY", key)
            .body("[]")
            .send()
            .await
            .expect("check_run")
            .status()
    });
    let seen = dd
        .wait_for_requests("/api/v1/check_run", 1, PATIENCE)
        .await
        .expect("woken");
    assert_eq!(seen.len(), 1);
    assert_eq!(sender.await.expect("sender"), 202);
}

#[tokio::test]
async fn dropping_the_double_stops_the_server() {
    setup();
    let dd = DatadogDouble::start().await.expect("double");
    let url = format!("{}/api/v1/validate", dd.base_url());
    let fresh = || {
        reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client")
    };
    assert_eq!(
        fresh()
            .get(&url)
            .header("DD-API-KEY", dd.api_key())
            .send()
            .await
            .expect("up")
            .status(),
        200
    );
    drop(dd);
    let deadline = Instant::now() + PATIENCE;
    while fresh().get(&url).send().await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the double still answers after drop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn unencoded_braces_and_commas_in_the_query_string_are_accepted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    setup();
    let dd = DatadogDouble::start().await.expect("double");
    let q = "avg:m{a:b,c:d}.rollup(30)";
    dd.set_series(q, points_ending_now(&[1.0], 30));
    // What a client that leaves `{`, `}`, `:` and `,` unescaped (the url crate's query encoding)
    // puts on the wire.
    let to = now_s();
    let request = format!(
        "GET /api/v1/query?from={}&to={to}&query={q},sum:n%7B*%7D HTTP/1.1\r\nHost: {}\r\n\
         DD-API-KEY: {}\r\nDD-APPLICATION-KEY: {}\r\nConnection: close\r\n\r\n",
        to - 300,
        dd.addr(),
        dd.api_key(),
        dd.app_key()
    );
    let mut stream = tokio::net::TcpStream::connect(dd.addr())
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        dd.query_calls(),
        vec![vec![q.to_owned(), "sum:n{*}".to_owned()]]
    );
    let body: Value =
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).expect("body")).expect("json");
    assert_eq!(body["series"][0]["query_index"], 0);
}
