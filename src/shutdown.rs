//! SIGTERM and SIGINT turn into one cancellation token every subsystem watches.

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Cancels `token` on the first SIGTERM or SIGINT. A second signal exits at once, for an
/// operator whose drain is taking too long.
pub(crate) fn on_signals(token: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(
        async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
            }
            token.cancel();
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            tracing::warn!("second signal received, exiting without draining");
            std::process::exit(130);
        }
        .instrument(tracing::info_span!("signals")),
    );
    Ok(())
}
