use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::config::Settings;

pub(super) fn run(cfgpath: Option<&Path>, color: bool) -> anyhow::Result<()> {
    // Configuration errors are reported before anything else starts, so a misconfigured pod
    // fails in milliseconds with the one line that names the setting.
    let (settings, warnings) = Settings::load_for_start(cfgpath)?;
    settings.validate_for_start()?;
    let log_level = crate::logging::init(settings.log_level, settings.log_format_json, color);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("dca-worker")
        .build()?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        crate::shutdown::on_signals(shutdown.clone())?;
        crate::app::run(settings, log_level, shutdown).await
    })
}
