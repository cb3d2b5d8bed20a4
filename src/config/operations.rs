//! How the node is operated, validated: the format of its log lines, and the timing of its drain
//! on SIGTERM (how long it keeps serving, how long it spreads its closes over, and the deadline
//! of the whole). The drain's parts must fit under its deadline: `drain_delay_secs +
//! drain_window_secs < shutdown_timeout_secs`, or the configuration is refused, naming the key
//! that was set (the deadline, when it was).

use std::time::Duration;

use super::raw::{
    DRAIN_DELAY_SECS, DRAIN_WINDOW_SECS, LOG_FORMAT, RawConfig, SHUTDOWN_TIMEOUT_SECS,
};
use super::{ConfigError, invalid, secs};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    Text,
    /// One JSON object per line, with the fields of the event and of its span.
    Json,
}

/// The drain on SIGTERM, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    /// How long the node keeps serving (new upgrades too) with `/readyz` 503, so that a load
    /// balancer stops sending it clients before it closes any.
    pub delay: Duration,
    /// How long the closes (1012) are spread over, after the delay.
    pub window: Duration,
    /// The most the whole drain may take, from the first SIGTERM; longer than the delay and the
    /// window together.
    pub timeout: Duration,
}

/// Default `shutdown_timeout_secs`: the default delay (5) and window (10), and 10 s for the last
/// clients' closing handshakes and the lifecycle events' flush.
const DEFAULT_TIMEOUT: u64 = 25;

/// Validates the keys of this module in `raw` (which it takes from).
pub(super) fn validate(raw: &mut RawConfig) -> Result<(LogFormat, Drain), ConfigError> {
    let log_format = match raw.log_format.take().as_deref().map(str::trim) {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            return Err(invalid(
                LOG_FORMAT,
                format!("expected \"text\" or \"json\", got {other:?}"),
            ));
        }
    };
    let set = (
        raw.shutdown_timeout_secs.is_some(),
        raw.drain_window_secs.is_some(),
    );
    let drain = Drain {
        delay: secs(DRAIN_DELAY_SECS, raw.drain_delay_secs.take(), 5, 0, 600)?,
        window: secs(DRAIN_WINDOW_SECS, raw.drain_window_secs.take(), 10, 0, 3600)?,
        timeout: secs(
            SHUTDOWN_TIMEOUT_SECS,
            raw.shutdown_timeout_secs.take(),
            DEFAULT_TIMEOUT,
            1,
            7200,
        )?,
    };
    if drain.delay + drain.window >= drain.timeout {
        // The key the operator set: the deadline when it was, else what made the drain longer.
        let key = match set {
            (true, _) => SHUTDOWN_TIMEOUT_SECS,
            (false, true) => DRAIN_WINDOW_SECS,
            (false, false) => DRAIN_DELAY_SECS,
        };
        return Err(invalid(
            key,
            format!(
                "the drain does not fit under its deadline: drain_delay_secs ({}) + \
                 drain_window_secs ({}) must be less than shutdown_timeout_secs ({}), which \
                 bounds the whole drain and leaves the last clients time to close; raise \
                 shutdown_timeout_secs or shorten the drain",
                drain.delay.as_secs(),
                drain.window.as_secs(),
                drain.timeout.as_secs()
            ),
        ));
    }
    Ok((log_format, drain))
}
