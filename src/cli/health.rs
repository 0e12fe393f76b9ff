//! `health [-t seconds]`: asks the running agent for `/status/health` with the local token
//! and prints it as the Go DCA's `health` command does (`Agent health: PASS|FAIL`, then the
//! healthy and unhealthy components), then why each unhealthy one is. Exits 1 on FAIL.

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::path::Path;
use std::time::Duration;

use super::local;
use crate::health::Status;

#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// Seconds to wait for the agent's answer.
    #[arg(
        short = 't',
        long = "timeout",
        value_name = "SECONDS",
        default_value_t = 20
    )]
    timeout: u64,
}

#[derive(Debug, thiserror::Error)]
enum HealthError {
    /// Go's wording, which scripts match.
    #[error("found {0} unhealthy components")]
    Unhealthy(usize),
}

pub(super) fn run(cfgpath: Option<&Path>, args: &HealthArgs, colour: bool) -> anyhow::Result<()> {
    let settings = local::settings(cfgpath)?;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let health: Status = local::get_json(&settings, "/status/health", "health status", timeout)?;
    print!(
        "{}",
        render(&health, colour && std::io::stdout().is_terminal())
    );
    if health.is_healthy() {
        Ok(())
    } else {
        Err(HealthError::Unhealthy(health.unhealthy.len()).into())
    }
}

const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const RESET: &str = "\x1b[0m";

/// Go's output line for line (sorted names, the counts and verdict coloured as
/// `fatih/color` does), then one line per reason, which Go does not give.
pub(crate) fn render(health: &Status, colour: bool) -> String {
    let paint = |code: &str, text: &str| {
        if colour {
            format!("{code}{text}{RESET}")
        } else {
            text.to_owned()
        }
    };
    let mut healthy = health.healthy.clone();
    healthy.sort();
    let mut unhealthy = health.unhealthy.clone();
    unhealthy.sort();
    let verdict = if unhealthy.is_empty() {
        paint(GREEN, "PASS")
    } else {
        paint(RED, "FAIL")
    };
    let mut out = format!("Agent health: {verdict}\n");
    if !healthy.is_empty() {
        let count = paint(GREEN, &healthy.len().to_string());
        let _ = writeln!(out, "=== {count} healthy components ===");
        let _ = writeln!(out, "{}", healthy.join(", "));
    }
    if !unhealthy.is_empty() {
        let count = paint(RED, &unhealthy.len().to_string());
        let _ = writeln!(out, "=== {count} unhealthy components ===");
        let _ = writeln!(out, "{}", unhealthy.join(", "));
        for name in &unhealthy {
            if let Some(reason) = health.reasons.get(name) {
                let _ = writeln!(out, "- {name}: {reason}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_as_the_go_command_does_then_the_reasons() {
        let cases: &[(&str, bool, &str)] = &[
            (
                r#"{"Healthy":["metadata-store","external-metrics-auth"],"Unhealthy":[]}"#,
                false,
                "Agent health: PASS\n=== 2 healthy components ===\nexternal-metrics-auth, metadata-store\n",
            ),
            (
                r#"{"Healthy":["metadata-store"],"Unhealthy":["datadog-api"],"Reasons":{"datadog-api":"the last 3 calls to the Datadog API failed"}}"#,
                false,
                "Agent health: FAIL\n=== 1 healthy components ===\nmetadata-store\n\
                 === 1 unhealthy components ===\ndatadog-api\n\
                 - datadog-api: the last 3 calls to the Datadog API failed\n",
            ),
            // From a Go agent: nulls, no reasons.
            (
                r#"{"Healthy":null,"Unhealthy":["forwarder"]}"#,
                false,
                "Agent health: FAIL\n=== 1 unhealthy components ===\nforwarder\n",
            ),
            (
                r#"{"Healthy":["a"],"Unhealthy":["b"]}"#,
                true,
                "Agent health: \x1b[31mFAIL\x1b[0m\n=== \x1b[32m1\x1b[0m healthy components ===\na\n\
                 === \x1b[31m1\x1b[0m unhealthy components ===\nb\n",
            ),
        ];
        for (json, colour, want) in cases {
            let health: Status = serde_json::from_str(json).unwrap();
            assert_eq!(render(&health, *colour), *want, "{json}");
        }
    }
}
