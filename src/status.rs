//! The `status` report: what each subsystem says of itself, as plain data (the JSON of
//! `/status` and `status --json`) and as the text an operator reads in a terminal.
//!
//! Pure: `app` fills a [`Status`] from the subsystems' handles at each request, the
//! node-agent API serves it behind the local token, and the CLI renders it, so colour is
//! decided where the terminal is. Sections exist only for subsystems that run: no section
//! pretends (events, the DatadogMetric CRD and control-plane checks come with their issues).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Builds the report on demand, from the subsystems' handles (set up by `app`).
pub(crate) type StatusSource = std::sync::Arc<dyn Fn() -> Status + Send + Sync>;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Status {
    pub(crate) agent: Agent,
    pub(crate) leader_election: LeaderElection,
    pub(crate) node_agent_api: NodeAgentApi,
    /// Only when `external_metrics_provider.enabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) external_metrics: Option<ExternalMetrics>,
    /// Only when external metrics query Datadog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) datadog_api: Option<DatadogApi>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Agent {
    pub(crate) version: String,
    pub(crate) commit: String,
    pub(crate) build_date: String,
    pub(crate) pid: u32,
    /// Unix seconds.
    pub(crate) started_at: i64,
    /// Unix seconds: when this report was made (ages are relative to it).
    pub(crate) now: i64,
    pub(crate) config_file: Option<String>,
    /// `hostname`, else the pod name this replica runs as.
    #[serde(default)]
    pub(crate) hostname: String,
    pub(crate) cluster_name: Option<String>,
    /// As set now (`config set log_level` changes it).
    #[serde(default)]
    pub(crate) log_level: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct LeaderElection {
    pub(crate) enabled: bool,
    pub(crate) identity: String,
    /// `configmap <ns>/<name>` or `lease <ns>/<name>`.
    pub(crate) lock: String,
    /// `Running` (the last attempt reached the lock) or `Failing`.
    pub(crate) state: String,
    pub(crate) is_leader: bool,
    /// Empty when nobody holds the lock.
    pub(crate) leader: String,
    /// RFC 3339, from the lock record (the holder's clock).
    pub(crate) acquired_at: Option<String>,
    pub(crate) renewed_at: Option<String>,
    pub(crate) transitions: i64,
    pub(crate) last_error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct NodeAgentApi {
    pub(crate) port: u16,
    /// The node and namespace lists are in.
    pub(crate) synced: bool,
    pub(crate) nodes: usize,
    pub(crate) namespaces: usize,
    /// Pods in the pod -> services map; `None` while it has none (mapper off or not synced).
    #[serde(default)]
    pub(crate) pods_mapped: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ExternalMetrics {
    /// `<ns>/<name>` of the ConfigMap store.
    pub(crate) store: String,
    pub(crate) store_synced: bool,
    pub(crate) store_present: bool,
    /// Unix seconds, the store's last-updated annotation.
    pub(crate) store_updated_at: Option<i64>,
    pub(crate) metrics: Vec<Metric>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Metric {
    /// `<ns>/<name>` of the HPA asking for it.
    pub(crate) hpa: String,
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) value: f64,
    /// Unix seconds: the point's time when valid, the update time otherwise.
    pub(crate) timestamp: i64,
    pub(crate) valid: bool,
    /// Why it is invalid, as the leader wrote it.
    pub(crate) error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct DatadogApi {
    pub(crate) endpoint: String,
    pub(crate) successes: u64,
    pub(crate) errors: u64,
    pub(crate) rate_limited: u64,
    pub(crate) retries: u64,
    pub(crate) rate_limit_limit: Option<u64>,
    pub(crate) rate_limit_remaining: Option<u64>,
    pub(crate) rate_limit_reset_secs: Option<u64>,
    pub(crate) consecutive_failures: u64,
    pub(crate) last_error: Option<String>,
    /// The last `/api/v1/validate`: when, its verdict (`None`: Datadog could not be asked),
    /// and why not valid.
    #[serde(default)]
    pub(crate) api_key_checked_at: Option<i64>,
    #[serde(default)]
    pub(crate) api_key_valid: Option<bool>,
    #[serde(default)]
    pub(crate) api_key_error: Option<String>,
}

impl ExternalMetrics {
    pub(crate) fn valid_count(&self) -> usize {
        self.metrics.iter().filter(|m| m.valid).count()
    }
}

const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const RESET: &str = "\x1b[0m";

struct Out {
    text: String,
    colour: bool,
}

impl Out {
    fn paint(&self, colour: &str, text: &str) -> String {
        if self.colour {
            format!("{colour}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }

    fn title(&mut self, title: &str) {
        let rule = "=".repeat(title.chars().count());
        let _ = write!(self.text, "\n{title}\n{rule}\n");
    }

    /// `key: value` rows, values aligned one column past the longest key.
    fn rows(&mut self, rows: &[(&str, String)]) {
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
        for (key, value) in rows {
            let _ = writeln!(self.text, "  {:<width$} {value}", format!("{key}:"));
        }
    }
}

fn time(unix: i64) -> String {
    jiff::Timestamp::from_second(unix).map_or_else(|_| unix.to_string(), |t| t.to_string())
}

/// `3d 4h`, `2h 5m`, `4m 10s`, `12s`: the two largest units.
pub(crate) fn duration(secs: i64) -> String {
    let secs = secs.max(0);
    let units = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    let first = units
        .iter()
        .position(|(_, n)| secs >= *n)
        .unwrap_or(units.len() - 1);
    let (u1, n1) = units[first];
    let mut out = format!("{}{u1}", secs / n1);
    if let Some((u2, n2)) = units.get(first + 1) {
        let rest = (secs % n1) / n2;
        if rest > 0 {
            let _ = write!(out, " {rest}{u2}");
        }
    }
    out
}

/// `name{k:v,k2:v2}`, the query's tag form.
fn metric_label(metric: &Metric) -> String {
    let tags: Vec<String> = metric
        .labels
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    format!("{}{{{}}}", metric.name, tags.join(","))
}

fn value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// The terminal report.
pub(crate) fn render(status: &Status, colour: bool) -> String {
    let mut out = Out {
        text: String::new(),
        colour,
    };
    let agent = &status.agent;
    let banner = format!("Datadog Cluster Agent (v{})", agent.version);
    let rule = "=".repeat(banner.len());
    let _ = writeln!(out.text, "{rule}\n{banner}\n{rule}");
    out.rows(&[
        ("Status date", time(agent.now)),
        (
            "Agent start",
            format!(
                "{} (up {})",
                time(agent.started_at),
                duration(agent.now - agent.started_at)
            ),
        ),
        ("Pid", agent.pid.to_string()),
        ("Hostname", agent.hostname.clone()),
        ("Log level", agent.log_level.clone()),
        (
            "Build",
            format!("commit {}, {}", agent.commit, agent.build_date),
        ),
        (
            "Config file",
            agent.config_file.clone().unwrap_or_else(|| "none".into()),
        ),
        (
            "Cluster name",
            agent
                .cluster_name
                .clone()
                .unwrap_or_else(|| "not set".into()),
        ),
    ]);

    render_leader(&mut out, &status.leader_election);

    let node = &status.node_agent_api;
    out.title("Node-agent API");
    let metadata = if node.synced {
        format!("{} nodes, {} namespaces", node.nodes, node.namespaces)
    } else {
        out.paint(YELLOW, "waiting for the node and namespace lists")
    };
    let pods = node.pods_mapped.map_or_else(
        || "none yet (the mapper is off or has not listed the endpoints)".to_owned(),
        |n| format!("{n} pods mapped to their services"),
    );
    out.rows(&[
        ("Port", node.port.to_string()),
        ("Metadata", metadata),
        ("Service map", pods),
    ]);

    if let Some(em) = &status.external_metrics {
        render_external_metrics(&mut out, em, agent.now);
    }
    if let Some(dd) = &status.datadog_api {
        render_datadog(&mut out, dd, agent.now);
    }
    out.text
}

fn render_leader(out: &mut Out, le: &LeaderElection) {
    out.title("Leader Election");
    if !le.enabled {
        out.rows(&[(
            "Leader election",
            format!("off: {} leads alone", le.identity),
        )]);
        return;
    }
    let role = if le.is_leader {
        out.paint(GREEN, "leader")
    } else {
        "follower".to_owned()
    };
    let mut rows = vec![
        ("Lock", format!("{} ({})", le.lock, le.state)),
        ("This replica", format!("{}, {role}", le.identity)),
        (
            "Leader",
            if le.leader.is_empty() {
                out.paint(YELLOW, "nobody holds the lock")
            } else {
                le.leader.clone()
            },
        ),
        (
            "Acquired",
            le.acquired_at.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "Renewed",
            le.renewed_at.clone().unwrap_or_else(|| "-".into()),
        ),
        ("Transitions", le.transitions.to_string()),
    ];
    if let Some(e) = &le.last_error {
        rows.push(("Last error", out.paint(RED, e)));
    }
    out.rows(&rows);
}

fn render_external_metrics(out: &mut Out, em: &ExternalMetrics, now: i64) {
    out.title("External Metrics");
    let store = match (em.store_synced, em.store_present, em.store_updated_at) {
        (false, _, _) => out.paint(YELLOW, &format!("ConfigMap {}, not read yet", em.store)),
        (true, false, _) => format!("ConfigMap {}, not written yet", em.store),
        (true, true, Some(at)) => format!(
            "ConfigMap {}, updated {} ({} ago)",
            em.store,
            time(at),
            duration(now - at)
        ),
        (true, true, None) => format!("ConfigMap {}", em.store),
    };
    let valid = em.valid_count();
    let invalid = em.metrics.len() - valid;
    let counts = format!(
        "{} total, {}, {}",
        em.metrics.len(),
        out.paint(GREEN, &format!("{valid} valid")),
        if invalid > 0 {
            out.paint(RED, &format!("{invalid} invalid"))
        } else {
            "0 invalid".to_owned()
        }
    );
    out.rows(&[("Store", store), ("Metrics", counts)]);
    for metric in &em.metrics {
        let _ = writeln!(out.text, "\n  {}  {}", metric.hpa, metric_label(metric));
        let line = if metric.valid {
            format!(
                "value {} at {} (age {}), {}",
                value(metric.value),
                time(metric.timestamp),
                duration(now - metric.timestamp),
                out.paint(GREEN, "valid")
            )
        } else {
            let why = metric.error.as_deref().unwrap_or("no reason recorded");
            format!("{}: {why}", out.paint(RED, "invalid"))
        };
        let _ = writeln!(out.text, "    {line}");
    }
}

fn render_datadog(out: &mut Out, dd: &DatadogApi, now: i64) {
    out.title("Datadog API");
    let mut rows = vec![
        ("Endpoint", dd.endpoint.clone()),
        (
            "Calls",
            format!(
                "{} ok, {} failed, {} rate-limited ({} retries)",
                dd.successes, dd.errors, dd.rate_limited, dd.retries
            ),
        ),
    ];
    let rate = match (
        dd.rate_limit_remaining,
        dd.rate_limit_limit,
        dd.rate_limit_reset_secs,
    ) {
        (Some(left), Some(limit), reset) => {
            let reset = reset.map_or_else(String::new, |r| {
                format!(
                    ", resets in {}",
                    duration(i64::try_from(r).unwrap_or(i64::MAX))
                )
            });
            format!("{left} of {limit} queries left{reset}")
        }
        _ => "not reported yet".to_owned(),
    };
    rows.push(("Rate limit", rate));
    let key = match (dd.api_key_checked_at, dd.api_key_valid) {
        (None, _) => "not checked yet".to_owned(),
        (Some(at), Some(true)) => format!(
            "{} (checked {} ago)",
            out.paint(GREEN, "valid"),
            duration(now - at)
        ),
        (Some(at), Some(false)) => format!(
            "{} (checked {} ago): {}",
            out.paint(RED, "invalid"),
            duration(now - at),
            dd.api_key_error.as_deref().unwrap_or("")
        ),
        (Some(at), None) => format!(
            "unknown (checked {} ago): {}",
            duration(now - at),
            dd.api_key_error.as_deref().unwrap_or("")
        ),
    };
    rows.push(("API key", key));
    if dd.consecutive_failures > 0 {
        rows.push((
            "Failing",
            out.paint(
                RED,
                &format!("the last {} calls failed", dd.consecutive_failures),
            ),
        ));
    }
    if let Some(e) = &dd.last_error {
        rows.push(("Last error", e.clone()));
    }
    out.rows(&rows);
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

    /// 2026-12-07T12:00:00Z
    const NOW: i64 = 1_796_644_800;

    fn full() -> Status {
        Status {
            agent: Agent {
                version: "7.62.0".into(),
                commit: "abc1234".into(),
                build_date: "2026-12-01T00:00:00Z".into(),
                pid: 42,
                started_at: NOW - 3_725,
                now: NOW,
                config_file: Some("/etc/datadog-agent/datadog-cluster.yaml".into()),
                hostname: "dca-0".into(),
                cluster_name: None,
                log_level: "info".into(),
            },
            leader_election: LeaderElection {
                enabled: true,
                identity: "dca-0".into(),
                lock: "lease datadog/datadog-leader-election".into(),
                state: "Running".into(),
                is_leader: true,
                leader: "dca-0".into(),
                acquired_at: Some("2026-12-07T11:00:00Z".into()),
                renewed_at: Some("2026-12-07T11:59:58Z".into()),
                transitions: 3,
                last_error: None,
            },
            node_agent_api: NodeAgentApi {
                port: 5005,
                synced: true,
                nodes: 12,
                namespaces: 5,
                pods_mapped: Some(150),
            },
            external_metrics: Some(ExternalMetrics {
                store: "datadog/datadog-custom-metrics".into(),
                store_synced: true,
                store_present: true,
                store_updated_at: Some(NOW - 4),
                metrics: vec![
                    Metric {
                        hpa: "default/nginxext".into(),
                        name: "nginx.net.request_per_s".into(),
                        labels: labels(&[("kube_container_name", "nginx")]),
                        value: 12.0,
                        timestamp: NOW - 8,
                        valid: true,
                        error: None,
                    },
                    Metric {
                        hpa: "shop/orders".into(),
                        name: "queue.depth".into(),
                        labels: labels(&[("queue", "orders"), ("env", "prod")]),
                        value: 0.0,
                        timestamp: NOW - 30,
                        valid: false,
                        error: Some("only null values in the last 300 s".into()),
                    },
                ],
            }),
            datadog_api: Some(DatadogApi {
                endpoint: "https://api.datadoghq.com".into(),
                successes: 10,
                errors: 1,
                rate_limited: 0,
                retries: 2,
                rate_limit_limit: Some(100),
                rate_limit_remaining: Some(95),
                rate_limit_reset_secs: Some(12),
                consecutive_failures: 0,
                last_error: Some("HTTP 503".into()),
                api_key_checked_at: Some(NOW - 120),
                api_key_valid: Some(true),
                api_key_error: None,
            }),
        }
    }

    #[test]
    fn the_full_report_reads_as_the_golden_text() {
        let want = "\
===============================
Datadog Cluster Agent (v7.62.0)
===============================
  Status date:  2026-12-07T12:00:00Z
  Agent start:  2026-12-07T10:57:55Z (up 1h 2m)
  Pid:          42
  Hostname:     dca-0
  Log level:    info
  Build:        commit abc1234, 2026-12-01T00:00:00Z
  Config file:  /etc/datadog-agent/datadog-cluster.yaml
  Cluster name: not set

Leader Election
===============
  Lock:         lease datadog/datadog-leader-election (Running)
  This replica: dca-0, leader
  Leader:       dca-0
  Acquired:     2026-12-07T11:00:00Z
  Renewed:      2026-12-07T11:59:58Z
  Transitions:  3

Node-agent API
==============
  Port:        5005
  Metadata:    12 nodes, 5 namespaces
  Service map: 150 pods mapped to their services

External Metrics
================
  Store:   ConfigMap datadog/datadog-custom-metrics, updated 2026-12-07T11:59:56Z (4s ago)
  Metrics: 2 total, 1 valid, 1 invalid

  default/nginxext  nginx.net.request_per_s{kube_container_name:nginx}
    value 12 at 2026-12-07T11:59:52Z (age 8s), valid

  shop/orders  queue.depth{env:prod,queue:orders}
    invalid: only null values in the last 300 s

Datadog API
===========
  Endpoint:   https://api.datadoghq.com
  Calls:      10 ok, 1 failed, 0 rate-limited (2 retries)
  Rate limit: 95 of 100 queries left, resets in 12s
  API key:    valid (checked 2m ago)
  Last error: HTTP 503
";
        assert_eq!(render(&full(), false), want);
    }

    #[test]
    fn sections_follow_what_runs() {
        let mut status = full();
        status.external_metrics = None;
        status.datadog_api = None;
        status.leader_election.enabled = false;
        status.node_agent_api.synced = false;
        let text = render(&status, false);
        assert!(!text.contains("External Metrics"), "{text}");
        assert!(!text.contains("Datadog API"), "{text}");
        assert!(
            text.contains("  Leader election: off: dca-0 leads alone\n"),
            "{text}"
        );
        assert!(
            text.contains("  Metadata:    waiting for the node and namespace lists\n"),
            "{text}"
        );
    }

    #[test]
    fn failures_and_missing_store_are_spelled_out() {
        let mut status = full();
        if let Some(em) = status.external_metrics.as_mut() {
            em.store_present = false;
        }
        if let Some(dd) = status.datadog_api.as_mut() {
            dd.consecutive_failures = 3;
            dd.rate_limit_remaining = None;
            dd.api_key_valid = Some(false);
            dd.api_key_error = Some("403 Forbidden".into());
        }
        status.leader_election.is_leader = false;
        status.leader_election.leader = String::new();
        status.leader_election.last_error = Some("403 on the lease".into());
        let text = render(&status, false);
        for want in [
            "  Store:   ConfigMap datadog/datadog-custom-metrics, not written yet\n",
            "  Failing:    the last 3 calls failed\n",
            "  Rate limit: not reported yet\n",
            "  API key:    invalid (checked 2m ago): 403 Forbidden\n",
            "  This replica: dca-0, follower\n",
            "  Leader:       nobody holds the lock\n",
            "  Last error:   403 on the lease\n",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
    }

    #[test]
    fn colour_only_when_asked() {
        let plain = render(&full(), false);
        assert!(!plain.contains('\x1b'));
        let coloured = render(&full(), true);
        assert!(coloured.contains("\x1b[32mleader\x1b[0m"), "{coloured}");
        assert!(coloured.contains("\x1b[31m1 invalid\x1b[0m"), "{coloured}");
    }

    #[test]
    fn durations_show_the_two_largest_units() {
        for (secs, want) in [
            (0, "0s"),
            (12, "12s"),
            (60, "1m"),
            (250, "4m 10s"),
            (3_725, "1h 2m"),
            (90_000, "1d 1h"),
            (-5, "0s"),
        ] {
            assert_eq!(duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn the_json_round_trips_and_omits_absent_sections() {
        let status = full();
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), status);
        let mut bare = full();
        bare.external_metrics = None;
        bare.datadog_api = None;
        let json = serde_json::to_value(&bare).unwrap();
        assert!(json.get("external_metrics").is_none(), "{json}");
        assert_eq!(json["node_agent_api"]["port"], 5005);
    }
}
