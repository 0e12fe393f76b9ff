//! Tracing set-up: text by default, JSON lines with `log_format_json`.

use tracing_subscriber::EnvFilter;

use crate::config::LogLevel;

/// `RUST_LOG`, when set, wins: it is how developers trace one module. Otherwise the
/// configured level applies to our code, and chatty dependencies stay at warn.
pub fn init(level: LogLevel, json: bool, color: bool) {
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
        builder.with_ansi(color).try_init()
    };
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
