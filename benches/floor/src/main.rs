//! `herald-floor`: what this machine's kernel charges for a fan-out, with nothing else in the way.
//!
//! One thread, pinned to `--writer-cpu`, writes one `--size`-byte message to each of `--conns`
//! loopback TCP connections per round (`--rounds` rounds, `--interval-ms` apart), with a plain
//! `send` per connection or with io_uring batches of `--batch` sends. Another thread, pinned to
//! `--reader-cpu`, reads them with edge-triggered epoll, as a load generator would. There is no
//! WebSocket framing, no protocol and no async runtime: a gateway that writes one frame per
//! subscriber cannot do better than this on the same machine.
//!
//! It reports the writer's CPU time per write (`CLOCK_THREAD_CPUTIME_ID`) and the latency from
//! the start of a round to each receipt. Every connection gets exactly one message per round, so
//! message `m` of a connection belongs to round `m`: latency is exact, nothing is parsed.
//! Loopback only; every loop is bounded by the round count or a deadline.
//!
//! `--reader tokio` reads the way `herald-bench` does instead: a tokio runtime on the reader's
//! core with one task per connection, each waiting for readiness and then reading. Herald's (b)
//! is measured by such a receiver, so the floor with it isolates what the receiver adds to the
//! writer's core (the wake-ups loopback TCP makes there) from what the server adds.
//! `--mode writev` sends each message with a one-slice `writev`, the call Herald's writer makes.
//! `--reader-work-ns N` has the epoll reader spend N ns on each message, as a receiver that
//! parses what it reads does.

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Send,
    Writev,
    Uring,
}

#[derive(Clone, Copy, PartialEq)]
enum Reader {
    Epoll,
    Tokio,
}

struct Args {
    conns: usize,
    rounds: usize,
    interval_ms: u64,
    size: usize,
    mode: Mode,
    batch: usize,
    fixed: bool,
    writer_cpu: usize,
    reader_cpu: usize,
    reader: Reader,
    reader_work_ns: u64,
}

const USAGE: &str = "usage: herald-floor [--conns N] [--rounds R] [--interval-ms MS] [--size B] \
[--mode send|writev|uring] [--batch N] [--fixed] [--writer-cpu C] [--reader-cpu C] \
[--reader epoll|tokio] [--reader-work-ns N]";

fn parse() -> Result<Args, String> {
    let mut a = Args {
        conns: 10_000,
        rounds: 20,
        interval_ms: 200,
        size: 100,
        mode: Mode::Send,
        batch: 256,
        fixed: false,
        writer_cpu: 0,
        reader_cpu: 1,
        reader: Reader::Epoll,
        reader_work_ns: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--fixed" {
            a.fixed = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        let v = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = |v: &str| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--conns" => a.conns = num(&v)?,
            "--rounds" => a.rounds = num(&v)?,
            "--interval-ms" => a.interval_ms = num(&v)? as u64,
            "--size" => a.size = num(&v)?,
            "--batch" => a.batch = num(&v)?,
            "--writer-cpu" => a.writer_cpu = num(&v)?,
            "--reader-cpu" => a.reader_cpu = num(&v)?,
            "--reader-work-ns" => a.reader_work_ns = num(&v)? as u64,
            "--mode" => {
                a.mode = match v.as_str() {
                    "send" => Mode::Send,
                    "writev" => Mode::Writev,
                    "uring" => Mode::Uring,
                    _ => return Err(format!("--mode: send, writev or uring, not {v}")),
                }
            }
            "--reader" => {
                a.reader = match v.as_str() {
                    "epoll" => Reader::Epoll,
                    "tokio" => Reader::Tokio,
                    _ => return Err(format!("--reader: epoll or tokio, not {v}")),
                }
            }
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    if a.conns == 0 || a.rounds == 0 || a.batch == 0 || !(8..=4096).contains(&a.size) {
        return Err("--conns, --rounds and --batch must be positive; --size 8..=4096".into());
    }
    Ok(a)
}

/// Raise the soft open-file limit to the hard one; fail if `needed` descriptors still do not fit.
fn ensure_nofile(needed: u64) -> Result<(), String> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
    if l.rlim_cur < needed {
        return Err(format!(
            "{needed} file descriptors needed (2 per connection), the limit is {}: lower --conns",
            l.rlim_cur
        ));
    }
    Ok(())
}

fn pin(cpu: usize) -> Result<(), String> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only touch
    // that set.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(format!("cannot pin to CPU {cpu}"));
    }
    Ok(())
}

/// Busy for `ns` nanoseconds: `--reader-work-ns`, the work a real receiver does per message
/// (`herald-bench` parses each frame and its JSON), so that the floor's reader can be made as
/// slow as the bench's and its effect on the tail seen.
fn spin(ns: u64) {
    if ns == 0 {
        return;
    }
    let t = Instant::now();
    while (t.elapsed().as_nanos() as u64) < ns {
        std::hint::spin_loop();
    }
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec passed.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Received {
    latencies_ns: Vec<u64>,
    cpu_ns: u64,
}

/// The reading side: connects every socket, then reads until every message has arrived or the
/// deadline passes.
fn reader(
    a: &Args,
    addr: std::net::SocketAddr,
    epoch: Instant,
    starts: &[AtomicU64],
) -> Result<Received, String> {
    pin(a.reader_cpu)?;
    // SAFETY: plain syscall; the descriptor is checked and closed by the OwnedFd below.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err("epoll_create1 failed".into());
    }
    let mut socks = Vec::with_capacity(a.conns);
    for k in 0..a.conns {
        let s = TcpStream::connect(addr).map_err(|e| format!("connect {k}: {e}"))?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: k as u64,
        };
        // SAFETY: `s` is open for as long as `socks` lives, which outlives the epoll use.
        if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) } != 0 {
            return Err("epoll_ctl failed".into());
        }
        socks.push(s);
    }
    let total = a.conns * a.rounds;
    let mut latencies_ns = Vec::with_capacity(total);
    let mut bytes = vec![0usize; a.conns];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut buf = vec![0u8; 4096];
    let deadline = Instant::now()
        + Duration::from_millis(a.interval_ms * a.rounds as u64)
        + Duration::from_secs(60);
    let cpu0 = thread_cpu_ns();
    while latencies_ns.len() < total && Instant::now() < deadline {
        // SAFETY: `events` has room for 1024 entries.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), 1024, 100) };
        for e in &events[..n.max(0) as usize] {
            let k = e.u64 as usize;
            let fd = socks[k].as_raw_fd();
            loop {
                // SAFETY: reads at most buf.len() bytes into buf.
                let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if r <= 0 {
                    break;
                }
                let now = epoch.elapsed().as_nanos() as u64;
                let before = bytes[k] / a.size;
                bytes[k] += r as usize;
                let after = (bytes[k] / a.size).min(a.rounds);
                for start in &starts[before.min(after)..after] {
                    latencies_ns.push(now.saturating_sub(start.load(Ordering::Acquire)));
                    spin(a.reader_work_ns);
                }
                if (r as usize) < buf.len() {
                    break;
                }
            }
        }
    }
    let cpu_ns = thread_cpu_ns() - cpu0;
    // SAFETY: `ep` is ours and not used after this.
    unsafe { libc::close(ep) };
    Ok(Received {
        latencies_ns,
        cpu_ns,
    })
}

/// The reading side as `herald-bench` has it: a multi-thread tokio runtime with one worker,
/// pinned to the reader's core, and one task per connection that waits for readiness and reads
/// until the socket is empty. The whole is bounded by the same deadline as the epoll reader.
/// Every socket stays open until every task is done: closing 9,950 sockets while the last round
/// is still arriving costs the reader's core the FINs and their answers, and put the p99 at
/// 108–122 ms in a first version that closed each socket as its task ended (47–51 ms with
/// them kept open; the epoll reader's is 48–52 ms).
fn tokio_reader(
    a: &Args,
    addr: std::net::SocketAddr,
    epoch: Instant,
    starts: &Arc<Vec<AtomicU64>>,
) -> Result<Received, String> {
    pin(a.reader_cpu)?;
    let cpu = a.reader_cpu;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(move || {
            let _ = pin(cpu);
        })
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let deadline = Duration::from_millis(a.interval_ms * a.rounds as u64) + Duration::from_secs(60);
    let (conns, size, rounds, starts) = (a.conns, a.size, a.rounds, starts.clone());
    // Every task pushes its latencies here; with one worker the lock is never contended.
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(conns * rounds)));
    let lat = latencies.clone();
    let run = rt.spawn(async move {
        let mut socks = Vec::with_capacity(conns);
        for k in 0..conns {
            let s = TcpStream::connect(addr).map_err(|e| format!("connect {k}: {e}"))?;
            s.set_nonblocking(true).map_err(|e| e.to_string())?;
            socks.push(tokio::net::TcpStream::from_std(s).map_err(|e| e.to_string())?);
        }
        // This task runs on the one worker, so this is the receiving thread's CPU.
        let cpu0 = thread_cpu_ns();
        let mut tasks = Vec::with_capacity(conns);
        for s in socks {
            let (lat, starts) = (lat.clone(), starts.clone());
            tasks.push(tokio::spawn(async move {
                read_rounds(&s, size, rounds, epoch, &starts, &lat).await;
                // Closing a socket is work for this thread's core (the FIN and its answer):
                // every socket stays open until every message has arrived, as with the epoll
                // reader, so that no connection's close delays another's last message.
                s
            }));
        }
        let mut open = Vec::with_capacity(conns);
        let all = async {
            for t in tasks {
                if let Ok(s) = t.await {
                    open.push(s);
                }
            }
        };
        let _ = tokio::time::timeout(deadline, all).await;
        let cpu = thread_cpu_ns() - cpu0;
        drop(open);
        Ok::<u64, String>(cpu)
    });
    let cpu_ns = rt
        .block_on(run)
        .map_err(|e| format!("the reader task failed: {e}"))??;
    rt.shutdown_timeout(Duration::from_secs(1));
    let latencies_ns = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(Received {
        latencies_ns,
        cpu_ns,
    })
}

/// One connection of the tokio reader: reads until it has had `rounds` messages of `size` bytes
/// (or the socket fails), recording each message's latency.
async fn read_rounds(
    s: &tokio::net::TcpStream,
    size: usize,
    rounds: usize,
    epoch: Instant,
    starts: &[AtomicU64],
    lat: &std::sync::Mutex<Vec<u64>>,
) {
    let mut bytes = 0usize;
    while bytes / size < rounds {
        if s.readable().await.is_err() {
            return;
        }
        loop {
            let r = READ_BUF.with_borrow_mut(|buf| s.try_read(&mut buf[..]));
            match r {
                Ok(0) => return,
                Ok(r) => {
                    let now = epoch.elapsed().as_nanos() as u64;
                    let before = bytes / size;
                    bytes += r;
                    let after = (bytes / size).min(rounds);
                    let mut l = lat.lock().unwrap_or_else(|p| p.into_inner());
                    for start in &starts[before.min(after)..after] {
                        l.push(now.saturating_sub(start.load(Ordering::Acquire)));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return,
            }
        }
    }
}

std::thread_local! {
    /// The tokio reader's one buffer per thread: a task reads without yielding, so tasks never
    /// share it at once (as in herald-bench).
    static READ_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 4096]);
}

/// One round of writes with io_uring: `batch` sends per submission, each checked.
fn uring_round(
    ring: &mut io_uring::IoUring,
    fds: &[i32],
    msg: &[u8],
    batch: usize,
    fixed: bool,
) -> Result<(), String> {
    for (c, chunk) in fds.chunks(batch).enumerate() {
        {
            let mut sq = ring.submission();
            for (j, &fd) in chunk.iter().enumerate() {
                let (ptr, len) = (msg.as_ptr(), msg.len() as u32);
                let e = if fixed {
                    let idx = (c * batch + j) as u32;
                    io_uring::opcode::Send::new(io_uring::types::Fixed(idx), ptr, len).build()
                } else {
                    io_uring::opcode::Send::new(io_uring::types::Fd(fd), ptr, len).build()
                };
                // SAFETY: `msg` outlives the submission: we wait for every completion below.
                unsafe { sq.push(&e) }.map_err(|_| "submission queue full".to_string())?;
            }
        }
        ring.submit_and_wait(chunk.len())
            .map_err(|e| format!("io_uring_enter: {e}"))?;
        for cqe in ring.completion() {
            if cqe.result() != msg.len() as i32 {
                return Err(format!("a send returned {}", cqe.result()));
            }
        }
    }
    Ok(())
}

fn run(a: Args) -> Result<String, String> {
    ensure_nofile(2 * a.conns as u64 + 64)?;
    let epoch = Instant::now();
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let starts: Arc<Vec<AtomicU64>> =
        Arc::new((0..a.rounds).map(|_| AtomicU64::new(u64::MAX)).collect());
    let a = Arc::new(a);
    let rx = {
        let (a, starts) = (a.clone(), starts.clone());
        std::thread::spawn(move || match a.reader {
            Reader::Epoll => reader(&a, addr, epoch, &starts),
            Reader::Tokio => tokio_reader(&a, addr, epoch, &starts),
        })
    };
    pin(a.writer_cpu)?;
    // Accept without blocking, so that a reader that fails to connect (its error is reported
    // below) or a connect phase over a minute cannot leave this loop waiting forever.
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let accept_deadline = Instant::now() + Duration::from_secs(60);
    let mut server = Vec::with_capacity(a.conns);
    while server.len() < a.conns {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                s.set_nonblocking(true).map_err(|e| e.to_string())?;
                server.push(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if rx.is_finished() {
                    return match rx.join() {
                        Ok(Err(e)) => Err(e),
                        _ => Err("the reader stopped while connecting".into()),
                    };
                }
                if Instant::now() >= accept_deadline {
                    return Err(format!(
                        "only {} of {} connected in 60 s",
                        server.len(),
                        a.conns
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let fds: Vec<i32> = server.iter().map(|s| s.as_raw_fd()).collect();
    let mut ring = match a.mode {
        Mode::Uring => {
            let r = io_uring::IoUring::new(a.batch.next_power_of_two() as u32)
                .map_err(|e| format!("io_uring_setup: {e}"))?;
            if a.fixed {
                r.submitter()
                    .register_files(&fds)
                    .map_err(|e| format!("register_files: {e}"))?;
            }
            Some(r)
        }
        Mode::Send | Mode::Writev => None,
    };
    let msg = vec![b'x'; a.size];
    let (mut cpu_ns, mut wall) = (0u64, Duration::ZERO);
    let t_start = Instant::now();
    for r in 0..a.rounds {
        let due = t_start + Duration::from_millis(a.interval_ms * r as u64);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let (c0, w0) = (thread_cpu_ns(), Instant::now());
        starts[r].store(epoch.elapsed().as_nanos() as u64, Ordering::Release);
        match ring.as_mut() {
            None if a.mode == Mode::Writev => {
                for &fd in &fds {
                    let iov = libc::iovec {
                        iov_base: msg.as_ptr() as *mut libc::c_void,
                        iov_len: msg.len(),
                    };
                    // SAFETY: the one slice points into `msg`, which lives across the call.
                    let n = unsafe { libc::writev(fd, &iov, 1) };
                    if n != msg.len() as isize {
                        return Err(format!("writev returned {n}"));
                    }
                }
            }
            None => {
                for &fd in &fds {
                    // SAFETY: sends from `msg`, which lives across the call.
                    let n = unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), 0) };
                    if n != msg.len() as isize {
                        return Err(format!("send returned {n}"));
                    }
                }
            }
            Some(ring) => uring_round(ring, &fds, &msg, a.batch, a.fixed)?,
        }
        wall += w0.elapsed();
        cpu_ns += thread_cpu_ns() - c0;
    }
    let got = rx.join().map_err(|_| "reader panicked".to_string())??;
    let mut lat = got.latencies_ns;
    let writes = (a.conns * a.rounds) as f64;
    if lat.len() != a.conns * a.rounds {
        return Err(format!("{} of {} messages arrived", lat.len(), writes));
    }
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1e6;
    let mode = match a.mode {
        Mode::Send => "send".to_string(),
        Mode::Writev => "writev".to_string(),
        Mode::Uring => format!(
            "uring, batches of {}{}",
            a.batch,
            if a.fixed { ", fixed files" } else { "" }
        ),
    };
    Ok(format!(
        "herald-floor ({mode}, {} reader): {} connections x {} rounds of {} B, writer on CPU {}, reader on CPU {}\n\
         writer   {:.2} us CPU per write, {:.2} ms per round ({:.2} us wall per write)\n\
         reader   {:.2} us CPU per message\n\
         latency  ms from round start: p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}\n",
        match a.reader {
            Reader::Epoll => "epoll",
            Reader::Tokio => "tokio",
        },
        a.conns,
        a.rounds,
        a.size,
        a.writer_cpu,
        a.reader_cpu,
        cpu_ns as f64 / 1e3 / writes,
        wall.as_secs_f64() * 1e3 / a.rounds as f64,
        wall.as_nanos() as f64 / 1e3 / writes,
        got.cpu_ns as f64 / 1e3 / writes,
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0),
    ))
}

fn main() -> std::process::ExitCode {
    match parse().and_then(run) {
        Ok(report) => {
            print!("{report}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald-floor: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
