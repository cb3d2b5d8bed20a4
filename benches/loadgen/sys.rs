//! What the bench reads from /proc (no libc): the open-file limit, a process's CPU time and RSS,
//! and the whole machine's busy time.

use std::process::Command;

/// (soft, hard) RLIMIT_NOFILE of this process, from /proc/self/limits.
pub(crate) fn nofile_limits() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut nums = line["Max open files".len()..].split_whitespace().map(|w| {
        if w == "unlimited" {
            Some(u64::MAX)
        } else {
            w.parse::<u64>().ok()
        }
    });
    Some((nums.next()??, nums.next()??))
}

/// Make sure this process may open `needed` file descriptors. Raises the soft limit to the hard
/// one with `prlimit` (util-linux) when that helps; otherwise explains what to run.
pub(crate) fn ensure_nofile(needed: u64) -> anyhow::Result<()> {
    let Some((soft, hard)) = nofile_limits() else {
        eprintln!("warning: cannot read /proc/self/limits; assuming the open-file limit is enough");
        return Ok(());
    };
    if soft >= needed {
        return Ok(());
    }
    if hard >= needed {
        let pid = std::process::id().to_string();
        let arg = format!("--nofile={hard}:{hard}");
        let _ = Command::new("prlimit").args(["--pid", &pid, &arg]).output();
        if let Some((soft, _)) = nofile_limits()
            && soft >= needed
        {
            eprintln!("raised the open-file soft limit to {soft}");
            return Ok(());
        }
    }
    anyhow::bail!(
        "this run needs about {needed} file descriptors but the open-file limit is {soft} (hard {hard}); \
         run `ulimit -n 65536` in this shell first (as root if the hard limit is lower), then retry"
    )
}

/// Clock ticks per second for /proc/PID/stat times.
pub(crate) fn clk_tck() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// utime + stime of a process, in clock ticks.
pub(crate) fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces and parentheses).
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// VmRSS of a process in KiB.
pub(crate) fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds used by a process between two tick samples.
pub(crate) struct CpuClock {
    pid: String,
    tck: f64,
    start: Option<u64>,
}

impl CpuClock {
    pub(crate) fn start(pid: &str, tck: u64) -> Self {
        CpuClock {
            pid: pid.to_string(),
            tck: tck as f64,
            start: cpu_ticks(pid),
        }
    }
    pub(crate) fn seconds(&self) -> Option<f64> {
        Some((cpu_ticks(&self.pid)?.saturating_sub(self.start?)) as f64 / self.tck)
    }
}

/// Busy time of the whole machine, all CPUs, in clock ticks: user, nice, system, irq, softirq
/// and steal from the first line of /proc/stat (not idle or iowait).
pub(crate) fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .map(|w| w.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    Some(f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7).unwrap_or(&0))
}
