//! Signals: the shutdown future (SIGTERM, SIGINT) and the token every long-lived task watches,
//! and the reload task (SIGHUP), which calls what it is given on every SIGHUP until the token is
//! cancelled. A leaf: imports nothing from the crate.

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

/// Calls `reload` on every SIGHUP until `stop` is cancelled. The signal is listened for before
/// this returns (from then on SIGHUP no longer ends the process); the calls happen on a task of
/// their own. Signals that arrive while `reload` runs are coalesced into one more call.
pub(crate) fn on_hangup(stop: CancellationToken, reload: impl Fn() + Send + 'static) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP (no reload by signal): {e}");
                return;
            }
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    got = hup.recv() => match got {
                        Some(()) => reload(),
                        None => return,
                    },
                }
            }
        });
    }
    #[cfg(not(unix))]
    {
        let _ = (stop, reload);
    }
}
