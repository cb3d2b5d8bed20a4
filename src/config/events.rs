//! Lifecycle events, validated: which kinds are recorded, and where they go (the Redis stream in
//! a cluster; a configured service, with a journal file, on a single node).

use std::path::PathBuf;

use super::raw::{EVENTS, EVENTS_JOURNAL, EVENTS_SERVICE, EVENTS_STREAM_MAX_LEN, REDIS_URL};
use super::services::ServiceConfig;
use super::{ConfigError, invalid};

/// One kind of lifecycle event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A connection was accepted (recorded before the 101).
    Connect,
    /// A connection ended (or its node died).
    Disconnect,
    /// A subscription was made (recorded before the `ok`).
    Subscribe,
    /// A subscription was ended by the client (recorded before the `ok`).
    Unsubscribe,
}

impl EventKind {
    /// Every kind, in documentation order.
    pub const ALL: [EventKind; 4] = [
        EventKind::Connect,
        EventKind::Disconnect,
        EventKind::Subscribe,
        EventKind::Unsubscribe,
    ];

    /// Its name in the config, the stream and the POSTed JSON.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Connect => "connect",
            EventKind::Disconnect => "disconnect",
            EventKind::Subscribe => "subscribe",
            EventKind::Unsubscribe => "unsubscribe",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// Where events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventsSink {
    /// Cluster: the Redis stream `<prefix>{events}:stream`, trimmed to about `max_len` entries.
    Stream {
        /// `MAXLEN ~` of every `XADD`.
        max_len: u64,
    },
    /// Single node: POSTed in batches to a service; unsent events and open connections are kept
    /// in `journal` so that a restart records what the crash left.
    Service {
        /// The service's name (one of `[services.NAME]`).
        service: String,
        /// The journal file.
        journal: PathBuf,
    },
}

/// The validated `events*` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsConfig {
    kinds: u8,
    /// Where they go.
    pub sink: EventsSink,
}

impl EventsConfig {
    /// True when events of `kind` are recorded.
    pub fn records(&self, kind: EventKind) -> bool {
        self.kinds & kind.bit() != 0
    }
}

/// The raw `events*` keys.
pub struct RawEvents {
    pub kinds: Option<Vec<String>>,
    pub service: Option<String>,
    pub journal: Option<PathBuf>,
    pub stream_max_len: Option<u64>,
}

/// Validates the `events*` keys against the mode (`cluster`: Redis configured) and `services`.
pub fn validate(
    raw: RawEvents,
    cluster: bool,
    services: &[ServiceConfig],
) -> Result<Option<EventsConfig>, ConfigError> {
    let names = raw.kinds.unwrap_or_default();
    let mut kinds = 0u8;
    for n in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let Some(k) = EventKind::ALL.iter().find(|k| k.name() == n) else {
            return Err(invalid(
                EVENTS,
                format!(
                    "{n:?} is not an event; expected connect, disconnect, subscribe or unsubscribe"
                ),
            ));
        };
        kinds |= k.bit();
    }
    if kinds & EventKind::Disconnect.bit() != 0 && kinds & EventKind::Connect.bit() == 0 {
        return Err(invalid(
            EVENTS,
            "disconnect needs connect: a disconnect is recorded for the connections whose \
             connect was recorded (and a dead node's are found that way)",
        ));
    }
    if kinds == 0 {
        for (set, key) in [
            (raw.service.is_some(), EVENTS_SERVICE),
            (raw.journal.is_some(), EVENTS_JOURNAL),
            (raw.stream_max_len.is_some(), EVENTS_STREAM_MAX_LEN),
        ] {
            if set {
                return Err(invalid(
                    key,
                    format!("set, but {EVENTS} names no event to record"),
                ));
            }
        }
        return Ok(None);
    }
    let sink = if cluster {
        for (set, key) in [
            (raw.service.is_some(), EVENTS_SERVICE),
            (raw.journal.is_some(), EVENTS_JOURNAL),
        ] {
            if set {
                return Err(invalid(
                    key,
                    format!(
                        "with {REDIS_URL} set, events go to the Redis stream <prefix>{{events}}:stream \
                         (proto/events.md); this key is for a single node"
                    ),
                ));
            }
        }
        let max_len = raw.stream_max_len.unwrap_or(1_000_000);
        if !(1000..=1_000_000_000).contains(&max_len) {
            return Err(invalid(
                EVENTS_STREAM_MAX_LEN,
                format!("expected a number of entries from 1000 to 1000000000, got {max_len}"),
            ));
        }
        EventsSink::Stream { max_len }
    } else {
        if raw.stream_max_len.is_some() {
            return Err(invalid(
                EVENTS_STREAM_MAX_LEN,
                format!("only with {REDIS_URL}: a single node POSTs events to {EVENTS_SERVICE}"),
            ));
        }
        let Some(service) = raw.service else {
            return Err(invalid(
                EVENTS_SERVICE,
                "a single node (no redis_url) POSTs lifecycle events to a service: name one of \
                 the [services.NAME] tables",
            ));
        };
        if !services.iter().any(|s| s.name == service) {
            return Err(invalid(
                EVENTS_SERVICE,
                format!("{service:?} is not a configured service ([services.{service}])"),
            ));
        }
        let Some(journal) = raw.journal else {
            return Err(invalid(
                EVENTS_JOURNAL,
                "a single node keeps unsent events and open connections in a journal file, so \
                 that a crash loses none: give its path (e.g. /var/lib/herald/events.journal)",
            ));
        };
        if journal.as_os_str().is_empty() || journal.is_dir() {
            return Err(invalid(EVENTS_JOURNAL, "expected a file path"));
        }
        EventsSink::Service { service, journal }
    };
    Ok(Some(EventsConfig { kinds, sink }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kinds: &[&str]) -> RawEvents {
        RawEvents {
            kinds: Some(kinds.iter().map(|s| s.to_string()).collect()),
            service: None,
            journal: None,
            stream_max_len: None,
        }
    }

    #[test]
    fn no_kinds_means_no_events_and_stray_keys_are_refused() {
        assert_eq!(validate(raw(&[]), true, &[]).unwrap(), None);
        let mut r = raw(&[]);
        r.service = Some("x".into());
        let e = validate(r, false, &[]).unwrap_err().to_string();
        assert!(e.contains("events_service"), "{e}");
    }

    #[test]
    fn cluster_events_go_to_the_stream_with_only_the_named_kinds() {
        let c = validate(raw(&["connect", "disconnect"]), true, &[])
            .unwrap()
            .unwrap();
        assert_eq!(c.sink, EventsSink::Stream { max_len: 1_000_000 });
        assert!(c.records(EventKind::Connect) && c.records(EventKind::Disconnect));
        assert!(!c.records(EventKind::Subscribe) && !c.records(EventKind::Unsubscribe));
    }

    #[test]
    fn unknown_kinds_and_a_single_node_without_service_or_journal_are_refused() {
        let e = validate(raw(&["conect"]), true, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"conect\" is not an event"), "{e}");
        let e = validate(raw(&["connect"]), false, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("events_service"), "{e}");
        let mut r = raw(&["connect"]);
        r.service = Some("nope".into());
        let e = validate(r, false, &[]).unwrap_err().to_string();
        assert!(e.contains("not a configured service"), "{e}");
    }
}
