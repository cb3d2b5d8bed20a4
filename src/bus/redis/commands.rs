//! The command connection to Redis: one multiplexed connection shared by the bus, the Redis
//! ticket store and the event log, that can be rebuilt from scratch whatever error its own
//! reconnect met.
//!
//! A `ConnectionManager` reconnects by itself after I/O errors, but when its reconnect is refused
//! for another reason (Redis refusing the login while an ACL user is switched off, say) it keeps
//! answering every command with that error, even once Redis accepts the login again. The bus's
//! monitor therefore checks the connection while Redis seems away and, when a check fails,
//! replaces it here with a new one; every user takes the current one for each command.
//!
//! Owns only the connection; what counts as Redis being away is the bus's decision.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// How long building a new connection may take (connect and handshake).
const REBUILD_DEADLINE: Duration = Duration::from_secs(1);

/// The shared command connection. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Commands {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// The current connection, cloned out for each command; a plain lock, held only to clone or
    /// replace the handle, never across `.await`.
    conn: parking_lot::RwLock<ConnectionManager>,
    /// One rebuild at a time: failures seen by many at once cause one new connection.
    rebuilding: tokio::sync::Mutex<()>,
}

impl Commands {
    /// Connects with `config` (its timeouts and retries apply to every command).
    pub(crate) async fn connect(
        client: redis::Client,
        config: ConnectionManagerConfig,
    ) -> redis::RedisResult<Commands> {
        let conn = ConnectionManager::new_with_config(client.clone(), config.clone()).await?;
        Ok(Commands {
            inner: Arc::new(Inner {
                client,
                config,
                conn: parking_lot::RwLock::new(conn),
                rebuilding: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The current connection, for one command or one pipeline.
    pub(crate) fn get(&self) -> ConnectionManager {
        self.inner.conn.read().clone()
    }

    /// Replaces the connection with a new one, within `REBUILD_DEADLINE` (1 s). When a rebuild is
    /// already under way, waits for it instead of starting another.
    pub(crate) async fn rebuild(&self) -> redis::RedisResult<()> {
        let Ok(_one) = self.inner.rebuilding.try_lock() else {
            let _done = self.inner.rebuilding.lock().await;
            return Ok(());
        };
        let fresh = ConnectionManager::new_with_config(
            self.inner.client.clone(),
            self.inner.config.clone(),
        );
        match tokio::time::timeout(REBUILD_DEADLINE, fresh).await {
            Ok(Ok(conn)) => {
                *self.inner.conn.write() = conn;
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "connecting to Redis timed out",
            ))),
        }
    }
}

/// `FCALL <function> 1 <key>`: a call of one of `herald.lua`'s functions on its one key; the
/// function's other arguments follow with `.arg`.
pub(crate) fn fcall(function: &str, key: impl redis::ToRedisArgs) -> redis::Cmd {
    let mut c = redis::cmd("FCALL");
    c.arg(function).arg(1).arg(key);
    c
}
