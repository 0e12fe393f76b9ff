//! The binary's life as an operator sees it, on a real control plane: JSON logs when
//! `log_format_json` is set, no secret in them, and a Ctrl-C (SIGINT) that ends the process
//! as gracefully as SIGTERM does: exit 0 and the leader lock released for the next replica.

use std::time::{Duration, Instant};

use e2e::agent::Agent;
use e2e::agent_env::{
    AgentPorts, ServingCert, agent_binary, agent_settings, leader_record, panic_lines,
};
use e2e::controlplane::{ControlPlane, eventually};
use e2e::datadog_double::DatadogDouble;

/// How long the agent may take to exit after SIGINT: its drain bound plus the lock release,
/// with room for a loaded 2-core machine. The harness would SIGKILL it after its own grace.
const EXIT_BOUND: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_without_secrets_and_sigint_exits_cleanly() {
    let binary = agent_binary().await.unwrap();
    let cp = ControlPlane::start().await.unwrap();
    let cert = ServingCert::new(cp.agent_namespace()).unwrap();
    let double = DatadogDouble::start().await.unwrap();
    let settings = agent_settings(
        &cp,
        &binary,
        "dca-e2e-lifecycle",
        &double,
        &cert,
        AgentPorts::pick().unwrap(),
    )
    .env("DD_LOG_FORMAT_JSON", "true")
    .env("DD_LEADER_ELECTION", "true");
    let mut agent = Agent::spawn(settings).await.unwrap();
    eventually("the agent holds the lock", Duration::from_secs(120), || {
        let cp = &cp;
        async move {
            Ok(leader_record(cp)
                .await?
                .filter(|r| r.holder_identity == "dca-e2e-lifecycle")
                .map(|_| ()))
        }
    })
    .await
    .unwrap();

    agent.signal("INT").unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = agent.exit_status().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < EXIT_BOUND,
            "still running {EXIT_BOUND:?} after SIGINT"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "exited with {status:?}");

    // client-go's release: holder "", a 1 s lease, so the next replica need not wait.
    let record = leader_record(&cp).await.unwrap().unwrap();
    assert_eq!(record.holder_identity, "", "{record:?}");
    assert_eq!(record.lease_duration_seconds, 1, "{record:?}");

    let log = agent.log();
    assert!(panic_lines(&log).is_empty(), "{log}");
    let mut messages = Vec::new();
    let mut spans = std::collections::BTreeSet::new();
    // The harness's own banner line ("===== e2e harness: start #1 ...") opens each start.
    let agent_lines = log
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("===== e2e harness:"));
    for line in agent_lines {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(event["level"].is_string(), "no level: {line}");
        assert!(event["timestamp"].is_string(), "no timestamp: {line}");
        if let Some(span) = event["span"]["name"].as_str() {
            spans.insert(span.to_owned());
        }
        if let Some(message) = event["message"].as_str() {
            messages.push(message.to_owned());
        }
    }
    assert!(
        messages.iter().any(|m| m.contains("SIGINT received")),
        "{messages:#?}"
    );
    // Events from spawned tasks carry the task's span.
    assert!(spans.contains("leader_election"), "{spans:?}");
    for secret in [double.api_key(), double.app_key()] {
        assert!(!log.contains(secret), "a Datadog key is in the log");
    }
    assert!(
        !log.contains("e2eTokenForTheClusterAgent0123456789abcdef"),
        "the node-agent token is in the log"
    );

    agent.shutdown().unwrap();
    cp.shutdown().unwrap();
}
