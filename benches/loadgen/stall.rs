//! Watches for stalls of the machine during the measured phase. On each watched CPU a thread
//! sleeps 2 ms at a time and notes every wake-up that comes more than [`THRESHOLD`] late. The
//! kernel wakes a sleeping thread within a scheduler slice (about 1.5 ms here, even next to a
//! busy thread on the same CPU), so a later wake-up means the CPU itself did not run: on a
//! virtual machine, the host stopped it. Such a stall delays every delivery in flight and the
//! catch-up after it, so the report prints the stalls next to the latency they explain.
//!
//! A watcher asks for real-time priority (`chrt -f 50`, which needs root or CAP_SYS_NICE) so that
//! its wake-up preempts whatever runs there; without it, a CPU kept busy for longer than a
//! scheduler slice (scenario (b)'s 65 ms sweeps) delays it, and the report says that the watcher
//! ran at normal priority. Without `--watch-cpus` one thread watches wherever the bench runs. A
//! watcher on the server's CPU costs that CPU about 500 short wake-ups a second.

use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A wake-up later than this is a stall.
pub(crate) const THRESHOLD: Duration = Duration::from_millis(5);
const TICK: Duration = Duration::from_millis(2);

/// The stalls one watcher saw, in milliseconds.
#[derive(Serialize, Default, Clone, Debug)]
pub(crate) struct Stalls {
    /// The CPU watched, or None for "wherever the bench runs".
    pub cpu: Option<usize>,
    /// The watcher ran with real-time priority (its late wake-ups are the machine's).
    pub realtime: bool,
    pub count: usize,
    pub longest_ms: f64,
    pub total_ms: f64,
}

/// A watcher thread and the CPU it watches; it returns whether it got real-time priority and
/// how late each late wake-up was.
type Watcher = (
    Option<usize>,
    std::thread::JoinHandle<(bool, Vec<Duration>)>,
);

/// Running watchers; [`Watch::finish`] stops them.
pub(crate) struct Watch {
    /// Tells the threads to stop; each checks after every sleep.
    stop: Arc<AtomicBool>,
    threads: Vec<Watcher>,
}

impl Watch {
    /// One watcher per CPU in `cpus`, or one unpinned watcher when `cpus` is empty.
    pub(crate) fn start(cpus: &[usize]) -> std::io::Result<Watch> {
        let stop = Arc::new(AtomicBool::new(false));
        let targets: Vec<Option<usize>> = if cpus.is_empty() {
            vec![None]
        } else {
            cpus.iter().copied().map(Some).collect()
        };
        let mut threads = Vec::new();
        for cpu in targets {
            let flag = stop.clone();
            let h = std::thread::Builder::new()
                .name("stall-watch".into())
                .spawn(move || {
                    if let Some(c) = cpu {
                        let mut set = rustix::thread::CpuSet::new();
                        set.set(c);
                        if rustix::thread::sched_setaffinity(None, &set).is_err() {
                            eprintln!("herald-bench: cannot watch CPU {c} (not available)");
                            return (false, Vec::new());
                        }
                    }
                    let tid = rustix::thread::gettid().as_raw_nonzero().to_string();
                    let realtime = std::process::Command::new("chrt")
                        .args(["-f", "-p", "50", &tid])
                        .stderr(std::process::Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success());
                    let mut late = Vec::new();
                    while !flag.load(Ordering::Relaxed) {
                        let before = Instant::now();
                        std::thread::sleep(TICK);
                        let over = before.elapsed().saturating_sub(TICK);
                        if over > THRESHOLD {
                            late.push(over);
                        }
                    }
                    (realtime, late)
                })?;
            threads.push((cpu, h));
        }
        Ok(Watch { stop, threads })
    }

    pub(crate) fn finish(self) -> Vec<Stalls> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|(cpu, h)| {
                let (realtime, late) = h.join().unwrap_or_default();
                summarize(cpu, realtime, &late)
            })
            .collect()
    }
}

fn summarize(cpu: Option<usize>, realtime: bool, late: &[Duration]) -> Stalls {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Stalls {
        cpu,
        realtime,
        count: late.len(),
        longest_ms: late.iter().copied().max().map_or(0.0, ms),
        total_ms: late.iter().copied().map(ms).sum::<f64>().max(0.0),
    }
}

/// One line for the human report.
pub(crate) fn describe(all: &[Stalls]) -> String {
    let parts: Vec<String> = all
        .iter()
        .map(|s| {
            let mut at = s
                .cpu
                .map_or("bench CPU".to_string(), |c| format!("CPU {c}"));
            if !s.realtime {
                at.push_str(" (watcher at normal priority)");
            }
            if s.count == 0 {
                format!("{at}: none")
            } else {
                format!(
                    "{at}: {} (longest {:.1} ms, {:.1} ms in all)",
                    s.count, s.longest_ms, s.total_ms
                )
            }
        })
        .collect();
    format!("over {} ms, {}", THRESHOLD.as_millis(), parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_longest_and_total() {
        let s = summarize(
            Some(1),
            true,
            &[Duration::from_millis(6), Duration::from_millis(20)],
        );
        assert_eq!((s.count, s.longest_ms, s.total_ms), (2, 20.0, 26.0));
        let none = summarize(None, false, &[]);
        assert_eq!((none.count, none.total_ms), (0, 0.0));
        assert_eq!(
            describe(&[s, none]),
            "over 5 ms, CPU 1: 2 (longest 20.0 ms, 26.0 ms in all); \
             bench CPU (watcher at normal priority): none"
        );
    }
}
