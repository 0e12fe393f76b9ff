//! Tracing set-up: text by default, JSON lines with `log_format_json`.

use tracing_subscriber::EnvFilter;

use crate::config::LogLevel;

/// `RUST_LOG`, when set, wins: it is how developers trace one module. Otherwise the
/// configured level applies to our code, and chatty dependencies stay at warn.
pub(crate) fn init(level: LogLevel, json: bool, color: bool) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(directives(level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests) is harmless; ignore it.
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder
            .with_ansi(use_color(
                color,
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
                std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
            ))
            .try_init()
    };
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
    use super::use_color;

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
}
