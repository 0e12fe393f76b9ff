//! Static OpenAPI v2 and v3 documents for the group (contract §1.7). Not needed for the HPA,
//! but kube-apiserver downloads them to build its aggregated spec and, on older versions,
//! logs an error every minute when they are missing. Model names follow k8s.io/metrics
//! (`io.k8s.metrics.pkg.apis.external_metrics.v1beta1.*`) and apimachinery, so the merged
//! spec keys them like every other server's.

use serde_json::{Value, json};

use crate::apiserver::openapi::OpenApiDocs;
use crate::external_metrics::{GROUP, LIST_KIND, VERSION};

const VALUE_MODEL: &str = "io.k8s.metrics.pkg.apis.external_metrics.v1beta1.ExternalMetricValue";
const LIST_MODEL: &str = "io.k8s.metrics.pkg.apis.external_metrics.v1beta1.ExternalMetricValueList";
const LIST_META_MODEL: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";
const QUANTITY_MODEL: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";
const TIME_MODEL: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Time";

/// The metric path as OpenAPI templates it.
const METRIC_PATH: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}";
/// The key of our document in the v3 index, and the path it is served at.
pub(crate) const V3_GROUP_VERSION_KEY: &str = "apis/external.metrics.k8s.io/v1beta1";
pub(crate) const V3_GROUP_VERSION_PATH: &str = "/openapi/v3/apis/external.metrics.k8s.io/v1beta1";

/// The schemas, with references rooted at `prefix` (`#/definitions/` in v2,
/// `#/components/schemas/` in v3).
fn schemas(prefix: &str) -> Value {
    let r = |model: &str| json!({ "$ref": format!("{prefix}{model}") });
    let mut out = serde_json::Map::new();
    out.insert(
        VALUE_MODEL.into(),
        json!({
            "description": "One series of an external metric: its name, the labels that identify the series, and its latest value.",
            "type": "object",
            "required": ["metricName", "metricLabels", "timestamp", "value"],
            "properties": {
                "metricName": {
                    "description": "The name of the metric.",
                    "type": "string",
                },
                "metricLabels": {
                    "description": "The labels of this series.",
                    "type": "object",
                    "additionalProperties": { "type": "string", "default": "" },
                },
                "timestamp": r(TIME_MODEL),
                "window": {
                    "description": "The width, in seconds, of the interval the value was computed over, when known.",
                    "type": "integer",
                    "format": "int64",
                },
                "value": r(QUANTITY_MODEL),
            },
        }),
    );
    out.insert(
        LIST_MODEL.into(),
        json!({
            "description": "The values of an external metric: one item per series matching the label selector.",
            "type": "object",
            "required": ["items"],
            "properties": {
                "apiVersion": {
                    "description": "The versioned schema of this object: external.metrics.k8s.io/v1beta1.",
                    "type": "string",
                },
                "kind": {
                    "description": "The kind of this object: ExternalMetricValueList.",
                    "type": "string",
                },
                "metadata": r(LIST_META_MODEL),
                "items": {
                    "description": "The matching series.",
                    "type": "array",
                    "items": r(VALUE_MODEL),
                },
            },
            "x-kubernetes-group-version-kind": [
                { "group": GROUP, "kind": LIST_KIND, "version": VERSION },
            ],
        }),
    );
    out.insert(
        LIST_META_MODEL.into(),
        json!({
            "description": "Metadata of a list; empty for external metric lists, which have one page and no history.",
            "type": "object",
            "properties": {
                "continue": { "description": "Token for the next page.", "type": "string" },
                "remainingItemCount": {
                    "description": "Number of items after this page.",
                    "type": "integer",
                    "format": "int64",
                },
                "resourceVersion": { "description": "Version of the list.", "type": "string" },
                "selfLink": { "description": "Deprecated; never set.", "type": "string" },
            },
        }),
    );
    out.insert(
        QUANTITY_MODEL.into(),
        json!({
            "description": "A fixed-point decimal number written as a string: an integer or decimal mantissa with an optional SI suffix (n, u, m, k, M, G, T, P, E), binary suffix (Ki ... Ei) or decimal exponent (e3).",
            "type": "string",
        }),
    );
    out.insert(
        TIME_MODEL.into(),
        json!({
            "description": "A point in time, RFC 3339 in UTC with second precision.",
            "type": "string",
            "format": "date-time",
        }),
    );
    Value::Object(out)
}

fn operation_description() -> &'static str {
    "list the values of an external metric in a namespace, filtered by label selector"
}

fn error_responses() -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    for (code, text) in [
        ("400", "BadRequest: the label selector does not parse"),
        ("401", "Unauthorized"),
        ("403", "Forbidden"),
        ("404", "NotFound: no such metric"),
        ("500", "InternalError: the metric has no usable value"),
        ("503", "ServiceUnavailable: no values to serve yet"),
    ] {
        m.insert(code.into(), json!({ "description": text }));
    }
    m
}

/// The Swagger 2.0 document served at `/openapi/v2`.
pub(crate) fn v2_json() -> Vec<u8> {
    let mut responses = error_responses();
    responses.insert(
        "200".into(),
        json!({ "description": "OK", "schema": { "$ref": format!("#/definitions/{LIST_MODEL}") } }),
    );
    let doc = json!({
        "swagger": "2.0",
        "info": info(),
        "paths": {
            METRIC_PATH: {
                "get": {
                    "description": operation_description(),
                    "produces": ["application/json"],
                    "schemes": ["https"],
                    "tags": ["externalMetrics_v1beta1"],
                    "operationId": "listExternalMetricsV1beta1NamespacedExternalMetricValue",
                    "parameters": [label_selector_v2()],
                    "responses": responses,
                    "x-kubernetes-action": "list",
                    "x-kubernetes-group-version-kind": {
                        "group": GROUP, "version": VERSION, "kind": LIST_KIND,
                    },
                },
                "parameters": [
                    path_parameter_v2("namespace", "object name and auth scope, such as for teams and projects"),
                    path_parameter_v2("metric", "name of the external metric"),
                ],
            },
        },
        "definitions": schemas("#/definitions/"),
    });
    to_vec(&doc)
}

/// The OpenAPI 3.0 document for the group-version.
pub(crate) fn v3_group_version_json() -> Vec<u8> {
    let mut responses = error_responses();
    responses.insert(
        "200".into(),
        json!({
            "description": "OK",
            "content": {
                "application/json": {
                    "schema": { "$ref": format!("#/components/schemas/{LIST_MODEL}") },
                },
            },
        }),
    );
    let doc = json!({
        "openapi": "3.0.0",
        "info": info(),
        "paths": {
            METRIC_PATH: {
                "get": {
                    "tags": ["externalMetrics_v1beta1"],
                    "description": operation_description(),
                    "operationId": "listExternalMetricsV1beta1NamespacedExternalMetricValue",
                    "parameters": [{
                        "name": "labelSelector",
                        "in": "query",
                        "description": label_selector_description(),
                        "schema": { "type": "string", "uniqueItems": true },
                    }],
                    "responses": responses,
                    "x-kubernetes-action": "list",
                    "x-kubernetes-group-version-kind": {
                        "group": GROUP, "version": VERSION, "kind": LIST_KIND,
                    },
                },
                "parameters": [
                    path_parameter_v3("namespace", "object name and auth scope, such as for teams and projects"),
                    path_parameter_v3("metric", "name of the external metric"),
                ],
            },
        },
        "components": { "schemas": schemas("#/components/schemas/") },
    });
    to_vec(&doc)
}

fn info() -> Value {
    json!({
        "title": "Datadog Cluster Agent external metrics",
        "version": format!("v{}", crate::version::VERSION),
    })
}

fn label_selector_description() -> &'static str {
    "A selector to restrict the returned series by their labels. Defaults to everything."
}

fn label_selector_v2() -> Value {
    json!({
        "uniqueItems": true,
        "type": "string",
        "description": label_selector_description(),
        "name": "labelSelector",
        "in": "query",
    })
}

fn path_parameter_v2(name: &str, description: &str) -> Value {
    json!({
        "uniqueItems": true,
        "type": "string",
        "description": description,
        "name": name,
        "in": "path",
        "required": true,
    })
}

fn path_parameter_v3(name: &str, description: &str) -> Value {
    json!({
        "name": name,
        "in": "path",
        "description": description,
        "required": true,
        "schema": { "type": "string", "uniqueItems": true },
    })
}

fn to_vec(doc: &Value) -> Vec<u8> {
    // A Value built from literals always serialises; the fallback is unreachable.
    serde_json::to_vec(doc).unwrap_or_else(|_| b"{}".to_vec())
}

/// The three documents, serialised and hashed once.
pub(crate) fn docs() -> OpenApiDocs {
    OpenApiDocs::build(
        v2_json(),
        v3_group_version_json(),
        V3_GROUP_VERSION_KEY,
        V3_GROUP_VERSION_PATH,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` in `doc` resolves inside `doc`.
    fn assert_refs_resolve(doc: &Value, root: &Value) {
        match doc {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    let pointer = r.strip_prefix('#').expect("local ref");
                    assert!(root.pointer(pointer).is_some(), "dangling $ref {r}");
                }
                map.values().for_each(|v| assert_refs_resolve(v, root));
            }
            Value::Array(items) => items.iter().for_each(|v| assert_refs_resolve(v, root)),
            _ => {}
        }
    }

    #[test]
    fn v2_is_a_self_contained_swagger_document() {
        let doc: Value = serde_json::from_slice(&v2_json()).unwrap();
        assert_eq!(doc["swagger"], "2.0");
        assert_refs_resolve(&doc, &doc);
        let defs = doc["definitions"].as_object().unwrap();
        for model in [
            VALUE_MODEL,
            LIST_MODEL,
            LIST_META_MODEL,
            QUANTITY_MODEL,
            TIME_MODEL,
        ] {
            assert!(defs.contains_key(model), "{model}");
        }
        let op = &doc["paths"][METRIC_PATH]["get"];
        assert_eq!(
            op["responses"]["200"]["schema"]["$ref"],
            format!("#/definitions/{LIST_MODEL}")
        );
        assert_eq!(op["parameters"][0]["name"], "labelSelector");
        assert_eq!(
            defs[LIST_MODEL]["x-kubernetes-group-version-kind"][0]["kind"],
            "ExternalMetricValueList"
        );
        assert_eq!(defs[QUANTITY_MODEL]["type"], "string");
        assert_eq!(defs[TIME_MODEL]["format"], "date-time");
        assert_eq!(defs[VALUE_MODEL]["properties"]["window"]["format"], "int64");
    }

    #[test]
    fn v3_is_a_self_contained_openapi_3_document() {
        let doc: Value = serde_json::from_slice(&v3_group_version_json()).unwrap();
        assert_eq!(doc["openapi"], "3.0.0");
        assert_refs_resolve(&doc, &doc);
        assert!(doc["components"]["schemas"][LIST_MODEL].is_object());
        let op = &doc["paths"][METRIC_PATH]["get"];
        assert_eq!(
            op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            format!("#/components/schemas/{LIST_MODEL}")
        );
    }

    #[test]
    fn v3_root_points_at_the_group_version_by_hash() {
        let docs = docs();
        let root: Value = serde_json::from_slice(&docs.v3_root.body).unwrap();
        let url = root["paths"][V3_GROUP_VERSION_KEY]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert_eq!(
            url,
            format!(
                "{V3_GROUP_VERSION_PATH}?hash={}",
                docs.v3_group_version.hash
            )
        );
        assert_eq!(docs.v3_group_version.hash.len(), 128);
    }

    #[test]
    fn documents_are_stable() {
        assert_eq!(v2_json(), v2_json());
        assert_eq!(docs().v3_root.etag, docs().v3_root.etag);
    }
}
