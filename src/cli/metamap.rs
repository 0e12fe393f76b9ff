//! `metamap [node]`: asks the running agent for its pod → services map (the internal
//! `/api/v1/tags/pod`, or one node's `/api/v1/tags/pod/{node}`) with the local token, and
//! prints it as the Go DCA's `metadatamapper.tmpl` renders it.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::local::{self, Answer, LocalApiError};

/// A large cluster's map is a few megabytes; the agent builds it from memory.
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct MetamapArgs {
    /// Only this node's pods (default: every node).
    node: Option<String>,
}

#[derive(Debug, thiserror::Error)]
enum MetamapError {
    #[error(transparent)]
    Local(#[from] LocalApiError),
    #[error("the cluster agent at {url} answered {status}: {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
    #[error("the cluster agent answered {status} to {url}: {message}")]
    Mapper {
        url: String,
        status: u16,
        message: String,
    },
}

pub(super) fn run(cfgpath: Option<&Path>, args: &MetamapArgs) -> anyhow::Result<()> {
    let settings = local::settings(cfgpath)?;
    let Answer { url, status, body } =
        local::get(&settings, &path(args.node.as_deref()), TIMEOUT)?.map_err(MetamapError::from)?;
    let parsed = serde_json::from_slice::<Value>(&body)
        .ok()
        .filter(Value::is_object);
    let Some(document) = parsed else {
        let body = String::from_utf8_lossy(&body).trim_end().to_owned();
        return Err(MetamapError::Refused { url, status, body }.into());
    };
    println!("{}", render(&document));
    if status == 200 {
        Ok(())
    } else {
        let message = document["Errors"].as_str().unwrap_or("").to_owned();
        Err(MetamapError::Mapper {
            url,
            status,
            message,
        }
        .into())
    }
}

/// What a path segment cannot hold as is; node names (DNS subdomains) need none of it, and
/// the agent matches segments undecoded.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'/')
    .add(b'?')
    .add(b'#')
    .add(b'%');

fn path(node: Option<&str>) -> String {
    match node {
        Some(node) => format!(
            "/api/v1/tags/pod/{}",
            percent_encoding::utf8_percent_encode(node, SEGMENT)
        ),
        None => "/api/v1/tags/pod".to_owned(),
    }
}

/// Go's `text/template` output of `metadatamapper.tmpl` over the JSON document decoded into
/// `map[string]interface{}`, whitespace trimming included: the header's last newline is
/// eaten by `{{- if .Errors -}}`, and a pod's services print as Go prints a decoded set,
/// `map[svc:map[]]`. The caller adds the final newline (Go's `fmt.Println`).
pub(crate) fn render(document: &Value) -> String {
    let mut out = String::from("===============\nMetadata Mapper\n===============");
    if truthy(&document["Errors"]) {
        let _ = writeln!(
            out,
            "Could not run the service mapper: {}",
            go_value(&document["Errors"])
        );
        return out;
    }
    out.push('\n');
    if let Some(warnings) = document["Warnings"].as_array().filter(|w| !w.is_empty()) {
        out.push_str("Warnings:");
        for warning in warnings {
            let _ = write!(out, "\n   - {}\n", go_value(warning));
        }
    }
    let Some(nodes) = document["Nodes"].as_object().filter(|n| !n.is_empty()) else {
        return out;
    };
    for (node, meta) in sorted(nodes) {
        let _ = write!(out, "\nNode detected: {node}");
        for (_, by_namespace) in meta.as_object().map(sorted).unwrap_or_default() {
            out.push_str("\n  ");
            for (namespace, pods) in by_namespace.as_object().map(sorted).unwrap_or_default() {
                let _ = write!(out, "\n  - Namespace: {namespace}");
                for (pod, services) in pods.as_object().map(sorted).unwrap_or_default() {
                    let _ = write!(
                        out,
                        "\n      - Pod: {pod}\n        Services: {}",
                        go_value(services)
                    );
                }
                out.push_str("\n  ");
            }
        }
    }
    out
}

/// Go's `range` visits map keys in sorted order.
fn sorted(map: &serde_json::Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

/// `text/template`'s truth: zero values, empty strings and empty collections are false.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Go's `%v` of a value `encoding/json` decoded into `interface{}`.
fn go_value(value: &Value) -> String {
    match value {
        Value::Null => "<nil>".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), go_float),
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(go_value).collect();
            format!("[{}]", items.join(" "))
        }
        Value::Object(map) => {
            let items: Vec<String> = sorted(map)
                .into_iter()
                .map(|(k, v)| format!("{k}:{}", go_value(v)))
                .collect();
            format!("map[{}]", items.join(" "))
        }
    }
}

/// Go's `%v` of a float64 (`strconv.FormatFloat(f, 'g', -1, 64)`) for the values JSON
/// numbers take here: whole numbers below 1e21 print without a fraction or exponent.
fn go_float(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e21 {
        format!("{f:.0}")
    } else {
        f.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected outputs worked out from the Go template, one trimming marker at a time.
    #[test]
    fn renders_as_the_go_template_does() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"Nodes":{"node-b":{"services":{"shop":{"web-1":{"web":{},"web-internal":{}}}}},"node-a":{"services":{"default":{"db-0":{"db":{}}},"shop":{"cart-0":{"cart":{}},"api-0":{"api":{}}}}}}}"#,
                "===============\nMetadata Mapper\n===============\n\
                 \nNode detected: node-a\
                 \n  \
                 \n  - Namespace: default\
                 \n      - Pod: db-0\n        Services: map[db:map[]]\
                 \n  \
                 \n  - Namespace: shop\
                 \n      - Pod: api-0\n        Services: map[api:map[]]\
                 \n      - Pod: cart-0\n        Services: map[cart:map[]]\
                 \n  \
                 \nNode detected: node-b\
                 \n  \
                 \n  - Namespace: shop\
                 \n      - Pod: web-1\n        Services: map[web:map[] web-internal:map[]]\
                 \n  ",
            ),
            // A node without pods: Go's omitempty leaves `{}`.
            (
                r#"{"Nodes":{"idle":{}}}"#,
                "===============\nMetadata Mapper\n===============\n\nNode detected: idle",
            ),
            (
                r#"{"Warnings":["Node n9 could not be added to the metadata map bundle: the key agent/KubernetesMetadataMapping/n9 was not found in the cache"]}"#,
                "===============\nMetadata Mapper\n===============\nWarnings:\n   - Node n9 could not be added to the metadata map bundle: the key agent/KubernetesMetadataMapping/n9 was not found in the cache\n",
            ),
            (
                r#"{"Errors":"the metadata mapper is not synced yet"}"#,
                "===============\nMetadata Mapper\n===============Could not run the service mapper: the metadata mapper is not synced yet\n",
            ),
            ("{}", "===============\nMetadata Mapper\n===============\n"),
        ];
        for (json, want) in cases {
            let document: Value = serde_json::from_str(json).unwrap();
            assert_eq!(render(&document), *want, "{json}");
        }
    }

    #[test]
    fn go_prints_decoded_values_so() {
        let cases: &[(&str, &str)] = &[
            ("null", "<nil>"),
            ("true", "true"),
            ("3", "3"),
            ("2.5", "2.5"),
            (r#""x""#, "x"),
            (r#"["a","b"]"#, "[a b]"),
            (r#"{"b":{},"a":[1]}"#, "map[a:[1] b:map[]]"),
        ];
        for (json, want) in cases {
            let value: Value = serde_json::from_str(json).unwrap();
            assert_eq!(go_value(&value), *want, "{json}");
        }
    }

    #[test]
    fn node_names_are_one_path_segment() {
        let cases = [
            (None, "/api/v1/tags/pod"),
            (Some("node-1"), "/api/v1/tags/pod/node-1"),
            (Some("a/b c"), "/api/v1/tags/pod/a%2Fb%20c"),
        ];
        for (node, want) in cases {
            assert_eq!(path(node), want, "{node:?}");
        }
    }
}
