//! Tracing set-up: text by default, JSON lines with `log_format_json`; the level can be
//! changed while the agent runs (`config set log_level debug`).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use tracing_subscriber::EnvFilter;

use crate::config::LogLevel;

/// Swaps the installed subscriber's filter.
type Reload = Arc<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// How much of the log `flare` gets: the last lines, not the whole history.
const TAIL_BYTES: usize = 2 << 20;

/// The last [`TAIL_BYTES`] the agent logged, kept beside stderr for `flare` (the agent
/// writes no log file: its logs are the container's).
#[derive(Clone, Default)]
pub(crate) struct LogTail(Arc<Mutex<VecDeque<u8>>>);

impl LogTail {
    pub(crate) fn push(&self, bytes: &[u8]) {
        let mut tail = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        tail.extend(bytes);
        let excess = tail.len().saturating_sub(TAIL_BYTES);
        tail.drain(..excess);
    }

    /// The kept lines, from the first whole one.
    pub(crate) fn text(&self) -> String {
        let tail = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let bytes: Vec<u8> = tail.iter().copied().collect();
        drop(tail);
        let text = String::from_utf8_lossy(&bytes);
        if bytes.len() < TAIL_BYTES {
            return text.into_owned();
        }
        text.split_once('\n')
            .map_or_else(String::new, |(_, rest)| rest.to_owned())
    }
}

/// Writes each log event to stderr and to the tail.
pub(crate) struct Tee(LogTail);

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().write_all(buf)?;
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogTail {
    type Writer = Tee;

    fn make_writer(&'a self) -> Tee {
        Tee(self.clone())
    }
}

/// Changes the running agent's log level, and reads its recent log. Cheap to clone.
#[derive(Clone)]
pub(crate) struct LoggingHandle {
    current: Arc<Mutex<LogLevel>>,
    tail: LogTail,
    /// Swaps the filter of the installed subscriber; `None` where none was installed by us
    /// (a second initialisation in tests).
    reload: Option<Reload>,
}

impl std::fmt::Debug for LoggingHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoggingHandle")
            .field("current", &self.get())
            .finish_non_exhaustive()
    }
}

impl LoggingHandle {
    /// A handle that records the level without a subscriber to change (tests, tools).
    #[cfg(any(test, feature = "test-util"))]
    pub(crate) fn detached(level: LogLevel) -> Self {
        LoggingHandle {
            current: Arc::new(Mutex::new(level)),
            tail: LogTail::default(),
            reload: None,
        }
    }

    pub(crate) fn tail(&self) -> &LogTail {
        &self.tail
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
pub(crate) fn init(level: LogLevel, json: bool, color: bool) -> LoggingHandle {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(directives(level)));
    let tail = LogTail::default();
    let base = tracing_subscriber::fmt().with_writer(tail.clone());
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
    LoggingHandle {
        current: Arc::new(Mutex::new(level)),
        tail,
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
    fn the_tail_keeps_the_last_whole_lines() {
        let tail = LogTail::default();
        tail.push(b"first\n");
        assert_eq!(tail.text(), "first\n");
        let line = format!("{}\n", "x".repeat(1023));
        for _ in 0..(TAIL_BYTES / 1024 + 10) {
            tail.push(line.as_bytes());
        }
        tail.push(b"last\n");
        let text = tail.text();
        assert!(text.len() <= TAIL_BYTES, "{}", text.len());
        assert!(!text.contains("first"));
        assert!(text.ends_with("last\n"));
        assert!(text.lines().all(|l| l == "last" || l.len() == 1023));
    }

    #[test]
    fn a_detached_handle_records_the_level() {
        let handle = LoggingHandle::detached(LogLevel::Info);
        handle.set(LogLevel::Debug).unwrap();
        assert_eq!(handle.get(), LogLevel::Debug);
        assert_eq!(handle.clone().get(), LogLevel::Debug);
    }
}
