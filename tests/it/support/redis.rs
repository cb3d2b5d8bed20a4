//! A real `redis-server` for one test, on a free loopback port, in its own directory; killed
//! when dropped. It can be stopped and started again on the same port, with or without
//! persistence (append-only file). `./test.sh` installs redis-server when it is missing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::proc::free_addr;

/// A running (or stopped) redis-server.
pub(crate) struct RedisServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    persist: bool,
}

impl RedisServer {
    /// Starts one without persistence and waits until it answers PING.
    pub(crate) fn start() -> RedisServer {
        RedisServer::start_with(false)
    }

    /// Starts one, with an append-only file when `persist`, and waits until it answers PING.
    pub(crate) fn start_with(persist: bool) -> RedisServer {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).unwrap();
        let dir = std::env::temp_dir().join(format!("herald-redis-{:016x}", u64::from_le_bytes(r)));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer {
            child: None,
            port: free_addr().port(),
            dir,
            persist,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--protected-mode", "yes"])
            .args(["--appendonly", if self.persist { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (./test.sh installs it)");
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.cli(&["PING"]).trim() == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not answer PING within 10 s",
            self.port
        );
    }

    /// Kills the server (SIGKILL: no shutdown save).
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `redis://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis://<user>:<password>@127.0.0.1:<port>`: for a node with its own ACL user.
    pub(crate) fn url_as(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// A connection of the test's own (the default user), opened now: it keeps working when
    /// Redis refuses new connections (`maxclients`) or a user.
    pub(crate) async fn connect(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("a Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connecting to the test's redis-server")
    }

    /// Sends SIGSTOP (`stop: true`) or SIGCONT to the server: it stalls with every connection
    /// open, as an overloaded or frozen host does.
    pub(crate) fn signal_stop(&self, stop: bool) {
        let pid = self.child.as_ref().expect("a running server").id();
        let sig = if stop { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(ok.success(), "kill {sig} {pid}");
    }

    /// Runs `redis-cli` against it (a plain Redis client, no Herald code) and returns stdout.
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
