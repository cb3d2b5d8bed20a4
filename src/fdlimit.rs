//! The open-files limit: every WebSocket is a file descriptor, so a node raises its soft
//! `RLIMIT_NOFILE` to the hard limit at start, and says in one log line, with the fix, when
//! `max_connections` cannot be reached under it. A leaf: imports nothing from the crate.

/// File descriptors a node needs besides its connections: the listener, Redis, backends' pools,
/// the journal, logs.
const OVERHEAD: u64 = 256;

/// The soft limit before and after raising it (`None`: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Raised {
    pub(crate) before: Option<u64>,
    pub(crate) after: Option<u64>,
}

/// Raises the soft limit of open files to the hard limit.
pub(crate) fn raise() -> Raised {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let before = lim.current;
    if lim.current == lim.maximum {
        return Raised {
            before,
            after: before,
        };
    }
    let wanted = rustix::process::Rlimit {
        current: lim.maximum,
        maximum: lim.maximum,
    };
    let after = match setrlimit(Resource::Nofile, wanted) {
        Ok(()) => lim.maximum,
        Err(_) => before,
    };
    Raised { before, after }
}

/// The warning to log when `max_connections` cannot be reached under `limit` open files.
pub(crate) fn shortfall(max_connections: usize, limit: Option<u64>) -> Option<String> {
    let limit = limit?;
    let needed = (max_connections as u64).saturating_add(OVERHEAD);
    (limit < needed).then(|| {
        format!(
            "max_connections is {max_connections} but this process may open only {limit} files \
             (its hard limit): about {} connections fit. Raise the limit to at least {needed} \
             (systemd: LimitNOFILE={needed}; docker: --ulimit nofile={needed}:{needed}; a shell: \
             ulimit -n {needed}) or lower max_connections",
            limit.saturating_sub(OVERHEAD)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_reaches_the_hard_limit_and_never_lowers() {
        let r = raise();
        let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
        assert_eq!(r.after, hard);
        assert!(r.after >= r.before || r.after.is_none());
    }

    #[test]
    fn a_limit_below_max_connections_gets_one_line_with_the_fix() {
        let line = shortfall(100_000, Some(20_000)).unwrap();
        assert!(line.contains("100000") && line.contains("20000"), "{line}");
        assert!(line.contains("LimitNOFILE=100256"), "{line}");
        assert_eq!(shortfall(10_000, Some(20_000)), None);
        assert_eq!(shortfall(100_000, None), None, "unlimited");
    }
}
