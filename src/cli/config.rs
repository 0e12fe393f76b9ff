//! `config`: the effective configuration (file + environment), secrets scrubbed; and, on
//! the running agent, `config get log_level` / `config set log_level <level>`, the one
//! setting that changes without a restart (as in the Go DCA).

use std::path::Path;
use std::time::Duration;

use super::local::{self, Answer, LocalApiError};
use crate::config::{LogLevel, Settings, markdown_table};

const TIMEOUT: Duration = Duration::from_secs(20);
/// The settings the running agent changes on request.
const RUNTIME_SETTINGS: &[&str] = &["log_level"];

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Also print where each setting came from (default, file or environment variable).
    #[arg(long)]
    sources: bool,
    /// Print the README's configuration table instead (for maintainers).
    #[arg(long, hide = true)]
    markdown_table: bool,
    #[command(subcommand)]
    action: Option<ConfigAction>,
}

#[derive(Debug, clap::Subcommand)]
enum ConfigAction {
    /// Print a runtime setting of the running agent (log_level).
    Get { key: String },
    /// Change a runtime setting of the running agent (log_level) until it restarts.
    Set { key: String, value: String },
}

#[derive(Debug, thiserror::Error)]
enum ConfigError {
    #[error(transparent)]
    Local(#[from] LocalApiError),
    #[error("{0:?} cannot be read or changed at run time; only {RUNTIME_SETTINGS:?} can")]
    NotRuntime(String),
    #[error("{0}")]
    BadValue(String),
    #[error("the cluster agent at {url} answered {status}: {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
}

/// The query that sets `key` to `value`, checked here first so a typo fails before any
/// request.
fn set_path(key: &str, value: &str) -> Result<String, ConfigError> {
    if !RUNTIME_SETTINGS.contains(&key) {
        return Err(ConfigError::NotRuntime(key.to_owned()));
    }
    let level = LogLevel::parse(value).map_err(ConfigError::BadValue)?;
    Ok(format!("/config/{key}?value={}", level.as_filter()))
}

fn get_path(key: &str) -> Result<String, ConfigError> {
    if RUNTIME_SETTINGS.contains(&key) {
        Ok(format!("/config/{key}"))
    } else {
        Err(ConfigError::NotRuntime(key.to_owned()))
    }
}

/// `log_level is debug`, from the agent's `{"log_level":"debug"}`.
fn describe(key: &str, body: &[u8]) -> String {
    let value = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get(key).and_then(|v| v.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    format!("{key} is {value}")
}

pub(super) fn run(cfgpath: Option<&Path>, args: &ConfigArgs) -> anyhow::Result<()> {
    if args.markdown_table {
        print!("{}", markdown_table());
        return Ok(());
    }
    match &args.action {
        None => {}
        Some(ConfigAction::Get { key }) => return remote(cfgpath, key, &get_path(key)?, false),
        Some(ConfigAction::Set { key, value }) => {
            return remote(cfgpath, key, &set_path(key, value)?, true);
        }
    }
    let settings = Settings::load(cfgpath)?;
    print!("{}", settings.to_scrubbed_yaml());
    if args.sources {
        println!("# sources");
        for (key, source) in settings.sources() {
            println!("# {key}: {source}");
        }
    }
    Ok(())
}

fn remote(cfgpath: Option<&Path>, key: &str, path: &str, change: bool) -> anyhow::Result<()> {
    let settings = local::settings(cfgpath)?;
    let answer = if change {
        local::post(&settings, path, TIMEOUT)?
    } else {
        local::get(&settings, path, TIMEOUT)?
    };
    let Answer { url, status, body } = answer.map_err(ConfigError::from)?;
    if status != 200 {
        let body = String::from_utf8_lossy(&body).trim_end().to_owned();
        return Err(ConfigError::Refused { url, status, body }.into());
    }
    println!("{}", describe(key, &body));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_log_level_changes_at_run_time_and_only_to_a_level() {
        let cases: &[(&str, &str, Result<&str, &str>)] = &[
            ("log_level", "debug", Ok("/config/log_level?value=debug")),
            ("log_level", "WARNING", Ok("/config/log_level?value=warn")),
            ("log_level", "critical", Ok("/config/log_level?value=error")),
            ("log_level", "loud", Err("\"loud\" is not a log level")),
            (
                "api_key",
                "x",
                Err("\"api_key\" cannot be read or changed at run time"),
            ),
        ];
        for (key, value, want) in cases {
            let got = set_path(key, value).map_err(|e| e.to_string());
            match (got, want) {
                (Ok(path), Ok(want)) => assert_eq!(path, *want),
                (Err(e), Err(want)) => assert!(e.starts_with(want), "{e}"),
                (got, want) => panic!("{key}={value}: {got:?}, want {want:?}"),
            }
        }
        assert_eq!(get_path("log_level").unwrap(), "/config/log_level");
        assert!(get_path("site").is_err());
    }

    #[test]
    fn the_answer_reads_as_a_sentence() {
        assert_eq!(
            describe("log_level", br#"{"log_level":"debug"}"#),
            "log_level is debug"
        );
        assert_eq!(describe("log_level", b"odd\n"), "log_level is odd");
    }
}
