//! Signals: the shutdown signals (SIGTERM, SIGINT) as a stream that is listened to from its
//! creation on, so that the first one starts the drain and a second one, however soon after,
//! cuts it short; and the reload task (SIGHUP), which calls what it is given on every SIGHUP
//! until the token is cancelled. A leaf: imports nothing from the crate.

use tokio_util::sync::CancellationToken;

/// SIGTERM and SIGINT, listened for from [`Signals::new`] on (from then on they no longer end
/// the process: the node decides what each one means).
pub(crate) struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Starts listening. Must be called inside the runtime. A signal that cannot be listened for
    /// is logged as an error and never arrives.
    pub(crate) fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!("cannot listen for {name}: {e}");
                    None
                }
            };
            Signals {
                term: listen(SignalKind::terminate(), "SIGTERM"),
                int: listen(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        {
            Signals {}
        }
    }

    /// Completes on the next SIGTERM or SIGINT (one received since the last call counts) and
    /// names it.
    pub(crate) async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                if let Some(s) = s
                    && s.recv().await.is_some()
                {
                    return;
                }
                std::future::pending::<()>().await
            }
            tokio::select! {
                _ = recv(&mut self.term) => "SIGTERM",
                _ = recv(&mut self.int) => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => "Ctrl-C",
                Err(_) => std::future::pending().await,
            }
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
