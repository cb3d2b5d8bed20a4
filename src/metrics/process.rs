//! The process's own figures, read from `/proc/self` when metrics are rendered (never on a
//! timer): CPU time (`stat`), resident memory (`status`), open file descriptors (the entries of
//! `fd`, counted only when asked: with 100,000 sockets that is a long directory) and their limit
//! (`limits`). Linux only; elsewhere (or when `/proc` is not mounted) a figure is left out.

use std::fmt::Write;

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`: 100 on every Linux the kernel's
/// userspace ABI supports, whatever the kernel's own `HZ`).
const USER_HZ: f64 = 100.0;

/// What was read.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Process {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident memory, bytes.
    pub rss_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft limit of open file descriptors.
    pub max_fds: Option<u64>,
}

impl Process {
    /// Reads the figures; `fds`: count the open file descriptors too.
    pub fn read(fds: bool) -> Process {
        Process {
            cpu_seconds: std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|s| cpu_seconds(&s)),
            rss_bytes: std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| rss_bytes(&s)),
            open_fds: if fds {
                std::fs::read_dir("/proc/self/fd")
                    .ok()
                    .map(|d| d.count() as u64)
            } else {
                None
            },
            max_fds: std::fs::read_to_string("/proc/self/limits")
                .ok()
                .and_then(|s| max_fds(&s)),
        }
    }

    /// Appends the figures read, in the Prometheus text format, to `out`.
    pub(crate) fn render(&self, out: &mut String) {
        let mut line = |name: &str, kind: &str, value: Option<String>| {
            if let Some(v) = value {
                let help = super::catalog::CATALOG
                    .iter()
                    .find(|d| d.name == name)
                    .map_or("", |d| d.help);
                let _ = write!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n\n"
                );
            }
        };
        line(
            super::catalog::CPU,
            "counter",
            self.cpu_seconds.map(|c| c.to_string()),
        );
        line(
            super::catalog::RSS,
            "gauge",
            self.rss_bytes.map(|c| c.to_string()),
        );
        line(
            super::catalog::OPEN_FDS,
            "gauge",
            self.open_fds.map(|c| c.to_string()),
        );
        line(
            super::catalog::MAX_FDS,
            "gauge",
            self.max_fds.map(|c| c.to_string()),
        );
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in seconds. The fields are
/// counted after the command name's closing parenthesis: the name may hold spaces and `)`.
fn cpu_seconds(stat: &str) -> Option<f64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After `)`: field 3 (state) is the first; utime is field 14, stime 15.
    let mut fields = after.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// `VmRSS:  1234 kB` of `/proc/<pid>/status`, in bytes.
fn rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line["VmRSS:".len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The soft limit of `Max open files` in `/proc/<pid>/limits`.
fn max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_the_command_name_whatever_it_holds() {
        let stat = "4242 (herald (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 75 0 0 20 0 \
                    9 0 12345 1000000 500 18446744073709551615";
        assert_eq!(cpu_seconds(stat), Some(3.25));
        assert_eq!(cpu_seconds("no parenthesis"), None);
    }

    #[test]
    fn resident_memory_and_the_fd_limit_are_read_from_their_lines() {
        let status = "Name:\therald\nVmPeak:\t  99 kB\nVmRSS:\t    2048 kB\nThreads:\t3\n";
        assert_eq!(rss_bytes(status), Some(2048 * 1024));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            65536                524288               files\n";
        assert_eq!(max_fds(limits), Some(65536));
    }

    #[test]
    fn this_process_can_be_read() {
        let p = Process::read(true);
        assert!(p.cpu_seconds.is_some() && p.rss_bytes.is_some_and(|r| r > 0));
        assert!(p.open_fds.is_some_and(|n| n > 0) && p.max_fds.is_some());
        let mut out = String::new();
        p.render(&mut out);
        assert!(
            out.contains("# TYPE process_cpu_seconds_total counter\n"),
            "{out}"
        );
    }
}
