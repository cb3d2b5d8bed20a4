//! Shutdown: the signal future (SIGTERM, SIGINT) and the token every long-lived task watches.
//! A leaf: imports nothing from the crate.

use tokio_util::sync::CancellationToken;

/// Completes on SIGTERM or SIGINT, or when `token` is cancelled by someone else (tests).
pub(crate) async fn signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                token.cancelled().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            r = tokio::signal::ctrl_c() => { if r.is_ok() { tracing::info!("SIGINT: draining") } }
            _ = token.cancelled() => {}
        }
    }
    #[cfg(not(unix))]
    {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = token.cancelled() => {}
        }
    }
}
