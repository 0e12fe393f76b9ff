//! Tracing set-up: text by default, JSON lines with `log_format_json`; the level can be
//! changed while the agent runs (`config set log_level debug`).

use std::sync::{Arc, Mutex, PoisonError};

use tracing_subscriber::EnvFilter;

use crate::config::LogLevel;

/// Swaps the installed subscriber's filter.
type Reload = Arc<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// Changes the running agent's log level. Cheap to clone.
#[derive(Clone)]
pub(crate) struct LogLevelHandle {
    current: Arc<Mutex<LogLevel>>,
    /// Swaps the filter of the installed subscriber; `None` where none was installed by us
    /// (a second initialisation in tests).
    reload: Option<Reload>,
}

impl std::fmt::Debug for LogLevelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogLevelHandle")
            .field("current", &self.get())
            .finish_non_exhaustive()
    }
}

impl LogLevelHandle {
    /// A handle that records the level without a subscriber to change (tests, tools).
    #[cfg(any(test, feature = "test-util"))]
    pub(crate) fn detached(level: LogLevel) -> Self {
        LogLevelHandle {
            current: Arc::new(Mutex::new(level)),
            reload: None,
        }
    }

    pub(crate) fn get(&self) -> LogLevel {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `level` to every module at once, `RUST_LOG` included (it was a start-up
    /// choice; the operator's runtime choice wins).
    pub(crate) fn set(&self, level: LogLevel) -> Result<(), String> {
        if let Some(reload) = &self.reload {
            reload(EnvFilter::new(directives(level)))?;
        }
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = level;
        Ok(())
    }
}

/// `RUST_LOG`, when set, wins at start-up: it is how developers trace one module. Otherwise
/// the configured level applies to our code, and chatty dependencies stay at warn.
pub(crate) fn init(level: LogLevel, json: bool, color: bool) -> LogLevelHandle {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(directives(level)));
    let base = tracing_subscriber::fmt().with_writer(std::io::stderr);
    // The reload handle's type names the formatter, so each branch takes its own. A second
    // initialisation (tests) is harmless: nothing is installed and there is nothing to reload.
    let (installed, reload): (bool, Reload) = if json {
        let builder = base
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_env_filter(filter)
            .with_filter_reloading();
        let handle = builder.reload_handle();
        (
            builder.try_init().is_ok(),
            Arc::new(move |f| handle.reload(f).map_err(|e| e.to_string())),
        )
    } else {
        let builder = base
            .with_ansi(use_color(
                color,
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
                std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
            ))
            .with_env_filter(filter)
            .with_filter_reloading();
        let handle = builder.reload_handle();
        (
            builder.try_init().is_ok(),
            Arc::new(move |f| handle.reload(f).map_err(|e| e.to_string())),
        )
    };
    LogLevelHandle {
        current: Arc::new(Mutex::new(level)),
        reload: installed.then_some(reload),
    }
}

/// Colours only for a person at a terminal: never into a pipe or a container log (where escape
/// codes end up as noise in Datadog), never with `--no-color` or the NO_COLOR convention.
fn use_color(allowed: bool, stderr_is_terminal: bool, no_color_env: bool) -> bool {
    allowed && stderr_is_terminal && !no_color_env
}

fn directives(level: LogLevel) -> String {
    let ours = level.as_filter();
    match level {
        LogLevel::Trace | LogLevel::Debug => {
            format!("{ours},hyper=info,h2=info,rustls=info,tower=info")
        }
        _ => format!("warn,datadog_cluster_agent={ours}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_at_a_terminal_when_allowed() {
        for (allowed, tty, env, want) in [
            (true, true, false, true),
            (false, true, false, false),
            (true, false, false, false),
            (true, true, true, false),
            (false, false, true, false),
        ] {
            assert_eq!(use_color(allowed, tty, env), want, "{allowed} {tty} {env}");
        }
    }

    #[test]
    fn a_detached_handle_records_the_level() {
        let handle = LogLevelHandle::detached(LogLevel::Info);
        handle.set(LogLevel::Debug).unwrap();
        assert_eq!(handle.get(), LogLevel::Debug);
        assert_eq!(handle.clone().get(), LogLevel::Debug);
    }
}
