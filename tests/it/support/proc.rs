//! The `herald` binary as a child process: a clean environment, a free loopback port, output
//! read line by line with bounded waits, SIGTERM and SIGHUP.

use std::net::{SocketAddr, TcpListener};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

use super::Node;

/// Test defaults of every `herald` process, which `env` may override: a drain without delay or
/// window, so that SIGTERM ends a test's node at once (the drain's tests set their own).
pub(crate) const PROC_DEFAULTS: &[(&str, &str)] = &[
    ("HERALD_DRAIN_DELAY_SECS", "0"),
    ("HERALD_DRAIN_WINDOW_SECS", "0"),
];

/// `herald` with an empty environment (so the developer's `HERALD_*` never leak in), the
/// [`PROC_DEFAULTS`], `args` and `env`; output piped; killed if the test drops it.
pub(crate) fn herald(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_herald"));
    c.args(args)
        .env_clear()
        .envs(PROC_DEFAULTS.iter().copied())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// A loopback address with a port that was free a moment ago.
pub(crate) fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding port 0");
    l.local_addr().expect("its address")
}

/// A `herald serve` process (`args` after `serve`, e.g. `--config FILE`) on a free loopback
/// port with the test secrets plus `env`, its output drained; returns once `/healthz` answers.
pub(crate) async fn serve(args: &[&str], env: &[(&str, &str)]) -> (Child, Node) {
    serve_on(free_addr(), args, env).await
}

/// [`serve`] on `addr` (e.g. the port of a node that was stopped, to start it again).
pub(crate) async fn serve_on(
    addr: SocketAddr,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Child, Node) {
    let listen = addr.to_string();
    let mut all = vec![
        ("HERALD_LISTEN", listen.as_str()),
        ("HERALD_API_KEY", super::API_KEY),
        ("HERALD_JWT_SECRET", super::JWT_SECRET),
    ];
    all.extend_from_slice(env);
    let argv: Vec<&str> = std::iter::once("serve")
        .chain(args.iter().copied())
        .collect();
    let mut child = herald(&argv, &all).spawn().expect("spawning herald serve");
    stderr(&mut child).drain();
    stdout(&mut child).drain();
    let node = Node::external(addr);
    wait_healthy(&node, Duration::from_secs(10)).await;
    (child, node)
}

/// Runs `herald args` to completion (bounded) and returns its status, stdout and stderr.
pub(crate) async fn run(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let child = herald(args, env).spawn().expect("spawning herald");
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("herald {args:?} did not finish within 20 s"))
        .expect("herald's output");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Lines of a child's stdout or stderr, read with a bound.
pub(crate) struct Output<R> {
    lines: Lines<BufReader<R>>,
    /// Every line read so far, for failure messages.
    pub seen: Vec<String>,
}

/// The stdout of `child`, line by line.
pub(crate) fn stdout(child: &mut Child) -> Output<ChildStdout> {
    Output::new(child.stdout.take().expect("stdout is piped"))
}

/// The stderr of `child`, line by line.
pub(crate) fn stderr(child: &mut Child) -> Output<ChildStderr> {
    Output::new(child.stderr.take().expect("stderr is piped"))
}

impl<R: tokio::io::AsyncRead + Unpin + Send + 'static> Output<R> {
    fn new(r: R) -> Self {
        Output {
            lines: BufReader::new(r).lines(),
            seen: Vec::new(),
        }
    }

    /// Reads lines until one satisfies `pred` and returns it; fails the test at end of output or
    /// when none comes within `bound`.
    pub(crate) async fn until(&mut self, bound: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no such line within {bound:?}; read: {:#?}", self.seen))
                .expect("reading the child's output")
                .unwrap_or_else(|| panic!("output ended; read: {:#?}", self.seen));
            self.seen.push(line.clone());
            if pred(&line) {
                return line;
            }
        }
    }

    /// Reads the rest of the output, until the child closes it (it exits); fails the test when
    /// that takes longer than `bound`. Returns every line read, these and the earlier ones.
    pub(crate) async fn rest(mut self, bound: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("output still open after {bound:?}"))
                .expect("reading the child's output");
            match line {
                Some(l) => self.seen.push(l),
                None => return self.seen,
            }
        }
    }

    /// Keeps reading in the background so the child never blocks on a full pipe.
    pub(crate) fn drain(mut self) {
        tokio::spawn(async move { while let Ok(Some(_)) = self.lines.next_line().await {} });
    }
}

/// Polls `GET /healthz` until it answers 200; fails the test after `bound`.
pub(crate) async fn wait_healthy(node: &Node, bound: Duration) {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let r = node
            .http
            .try_request(hyper::Method::GET, "/healthz", &[], Vec::new())
            .await;
        if r.is_ok_and(|r| r.status == 200) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} did not become healthy within {bound:?}",
            node.addr
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends SIGTERM to `child`.
pub(crate) fn sigterm(child: &Child) {
    signal(child, "-TERM");
}

/// Sends SIGHUP to `child` (a node reloads its TLS certificate).
pub(crate) fn sighup(child: &Child) {
    signal(child, "-HUP");
}

fn signal(child: &Child, sig: &str) {
    let pid = child.id().expect("the child is running");
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill {sig} {pid}");
}

/// Waits for `child` to exit within `bound`.
pub(crate) async fn wait_exit(child: &mut Child, bound: Duration) -> ExitStatus {
    tokio::time::timeout(bound, child.wait())
        .await
        .unwrap_or_else(|_| panic!("the process did not exit within {bound:?}"))
        .expect("waiting for the process")
}
