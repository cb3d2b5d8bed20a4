//! The composition root: builds the hub, the bus, auth and the gateway from a [`Config`], wires
//! the bus's messages into the hub (and its lost topics into closing their subscribers), and owns
//! the order of shutdown: on SIGTERM, `/readyz` 503 at once, then the drain ([`drain`]: keep
//! serving for a delay, then close every client with 1012 spread over a window, then wait for
//! them up to the deadline; a second signal cuts it short), then stop accepting, and only then
//! stop the background tasks (the bus keeps delivering to the clients still open meanwhile). It
//! also wires SIGHUP to reloading the TLS certificate ([`crate::gateway::tls`]).

mod drain;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::keys::VerifyKey;
use crate::auth::{Jwks, JwtVerifier, MemoryTicketStore, TicketStore, Tickets};
use crate::bus::local::LocalBus;
use crate::bus::redis::{RedisBus, Settings as RedisSettingsForBus};
use crate::bus::summaries::{LocalSummaries, Summaries};
use crate::bus::{
    Bus, Direct, DirectSink, Disconnect, DisconnectSink, Interest, LostSink, PresenceEvent,
    PresenceSink, Sink, Sinks,
};
use crate::config::Config;
use crate::config::events::EventsSink;
use crate::gateway::tls::Certs;
use crate::gateway::{self, Gateway};
use crate::hub::{self, Hub};
use crate::lifecycle::Lifecycle;
use crate::lifecycle::webhook::WebhookEvents;
use crate::protocol::{CloseCode, Topic};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Redis could not be reached or refused the function library.
    #[error(transparent)]
    Redis(#[from] crate::bus::redis::RedisError),
    /// The operating system gave no random bytes (for the node's ids and epochs).
    #[error("no random bytes from the operating system: {0}")]
    Random(#[from] getrandom::Error),
    /// A backend service's settings could not be used.
    #[error(transparent)]
    Proxy(#[from] crate::proxy::ProxyError),
    /// Lifecycle events could not be set up (Redis, or the journal file).
    #[error("lifecycle events: {0}")]
    Events(#[from] crate::lifecycle::LifecycleError),
    /// A JWT public key file holds no usable key.
    #[error("jwt_public_key_files: {0}")]
    JwtKey(#[from] crate::auth::KeyError),
    /// The JWKS URL could not be used.
    #[error("jwt_jwks_url: {0}")]
    Jwks(#[from] crate::auth::jwks::JwksError),
    /// The TLS files could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::gateway::tls::TlsError),
    /// The metrics recorder could not be built.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The bus the configuration asks for, and what comes with it.
struct Buses {
    bus: Arc<dyn Bus>,
    /// What this node listens for, on a bus shared with other nodes only.
    interest: Option<Arc<dyn Interest>>,
    /// Where nodes share their dashboard summaries.
    summaries: Arc<dyn Summaries>,
    tickets: Arc<dyn TicketStore>,
    /// The in-process bus, for its sweeper.
    local: Option<Arc<LocalBus>>,
}

/// A started node.
pub struct Running {
    /// The address it listens on (the real port when the config said port 0).
    pub addr: SocketAddr,
    /// Shared state, for tests and the CLI.
    pub gateway: Arc<Gateway>,
    /// Cancelled to start the drain.
    drain: CancellationToken,
    /// Cancelled to cut the drain short.
    hurry: drain::Hurry,
    /// The accept loop and drain; finishes when shutdown is complete.
    done: JoinHandle<()>,
}

impl Running {
    /// Starts draining: `/readyz` 503 at once, then the rest in the background (keep serving for
    /// `drain_delay_secs`, then close every connection with 1012 over `drain_window_secs`).
    pub fn shutdown(&self) {
        self.gateway.draining.store(true, Ordering::SeqCst);
        if self.gateway.config.drain.delay.is_zero() {
            // No delay: new work is refused from now on, not from when the drain task runs.
            self.gateway.closing.store(true, Ordering::SeqCst);
        }
        self.drain.cancel();
    }

    /// Cuts the drain short (starting it if need be): every connection left is closed with 1012
    /// at once, and the node stops soon after.
    pub fn hurry(&self) {
        self.shutdown();
        self.hurry.cancel();
    }

    /// Waits until shutdown has completed (all connections closed, or the deadline passed).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Parts of a node a test replaces; [`start`] replaces none.
#[derive(Default)]
pub struct Hooks {
    /// The clock the in-process ticket store reads expiry from (the real one when `None`).
    pub ticket_clock: Option<crate::auth::ticket::Clock>,
}

/// Binds and starts a node; returns once it accepts connections.
pub async fn start(config: Config) -> Result<Running, ServerError> {
    start_with(config, Hooks::default()).await
}

/// [`start`] with the parts `hooks` replaces (tests).
pub async fn start_with(config: Config, hooks: Hooks) -> Result<Running, ServerError> {
    let config = Arc::new(config);
    let files = crate::fdlimit::raise();
    if files.after != files.before {
        tracing::debug!(before = ?files.before, after = ?files.after, "raised the open-files limit");
    }
    if let Some(line) = crate::fdlimit::shortfall(config.max_connections, files.after) {
        tracing::warn!("{line}");
    }
    // The node's own metrics: several nodes in one process each count theirs.
    let metrics = crate::metrics::Metrics::new()?;
    if config.admin.metrics_public {
        tracing::warn!("metrics_public is set: GET /metrics answers anyone, without a key");
    }
    let hub = Arc::new(
        Hub::with_metrics(config.outbox_bytes, metrics.clone())
            .compressing_from(config.compression.min_bytes),
    );
    let to_hub = hub.clone();
    let sink: Sink = Arc::new(move |m| to_hub.deliver(m));
    let to_hub = hub.clone();
    let direct: DirectSink = Arc::new(move |d: &Direct| {
        to_hub.deliver_direct(&d.user, d.from.as_deref(), &d.data);
    });
    let (to_hub, node) = (hub.clone(), config.node_id.clone());
    let disconnect: DisconnectSink = Arc::new(move |d: &Disconnect| {
        // `Some(None)`: one connection, not of this node.
        let only = d.conn.as_deref().map(|c| gateway::conn_number(&node, c));
        let which = |id| only.is_none_or(|o| o == Some(id));
        let Some(n) = to_hub.close_user(&d.user, CloseCode::Disconnected, which) else {
            return false;
        };
        if n > 0 {
            tracing::info!(user = %d.user, "disconnect order: closing {n} connections with 4003");
        }
        true
    });
    let to_hub = hub.clone();
    let presence: PresenceSink = Arc::new(move |e: &PresenceEvent| {
        to_hub.deliver_presence(&e.topic, e.join, &e.conn, &e.user);
    });
    let to_hub = hub.clone();
    let lost: LostSink = Arc::new(move |t: &Topic| {
        // They resume with `since` on a node that can replay exactly (or learn it cannot).
        let n = to_hub.close_topic(t, CloseCode::Restarting);
        tracing::warn!("cannot fill a gap in {t:?}: closed its {n} local subscribers with 1012");
    });
    let sinks = Sinks {
        messages: sink,
        direct,
        disconnect,
        presence,
        lost,
    };
    let stop = CancellationToken::new();
    // The Redis bus, whose command connection the event log shares in a cluster.
    let mut redis = None;
    // `interest`: only a bus shared with other nodes needs to be told what this node listens for.
    let Buses {
        bus,
        interest,
        summaries,
        tickets,
        local,
    } = match &config.redis {
        None => {
            let local = Arc::new(LocalBus::new(
                sinks,
                config.history_size,
                config.history_ttl,
                config.history_bytes,
            )?);
            Buses {
                bus: local.clone(),
                interest: None,
                summaries: Arc::new(LocalSummaries::default()),
                tickets: Arc::new(
                    hooks
                        .ticket_clock
                        .map_or_else(MemoryTicketStore::new, MemoryTicketStore::with_clock),
                ),
                local: Some(local),
            }
        }
        Some(r) => {
            let settings = RedisSettingsForBus {
                url: &r.url,
                prefix: &r.prefix,
                history_size: config.history_size,
                history_ttl: config.history_ttl,
                node_ttl: config.node_ttl,
                metrics: &metrics,
            };
            let bus = RedisBus::connect(settings, sinks, stop.clone()).await?;
            // Tickets share the bus's command connection, which its monitor keeps checked.
            let store = bus.ticket_store(&r.prefix);
            redis = Some(bus.clone());
            Buses {
                bus: bus.clone(),
                interest: Some(bus.clone()),
                summaries: bus,
                tickets: Arc::new(store),
                local: None,
            }
        }
    };
    // One acceptor; SIGHUP reloads the certificate its handshakes get, until the node stops.
    let tls = match &config.tls {
        Some(files) => {
            let certs = Certs::load(&files.cert, &files.key)?;
            let acceptor = certs.acceptor()?;
            let reload = move || certs.reload_logged();
            crate::shutdown::on_hangup(stop.clone(), reload);
            Some(acceptor)
        }
        None => {
            let nothing = || tracing::info!("SIGHUP: nothing to reload (no TLS configured)");
            crate::shutdown::on_hangup(stop.clone(), nothing);
            None
        }
    };
    let jwt = jwt_verifier(&config, &stop)?;
    let listener = listen(config.listen).map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;
    let proxy = Arc::new(crate::proxy::Proxy::new(
        &config.services,
        config.max_message_bytes,
        &stop,
        metrics.clone(),
    )?);
    let (events, webhook) = lifecycle(&config, redis, &proxy, &stop).await?;
    let gw = Arc::new(Gateway {
        jwt,
        tickets: Tickets::new(tickets, config.ticket_ttl),
        proxy,
        events,
        config: config.clone(),
        hub: hub.clone(),
        bus,
        interest,
        draining: AtomicBool::new(false),
        closing: AtomicBool::new(false),
        conns: gateway::limits::ConnLimits::new(config.max_connections, &config.limits),
        tickets_by_ip: gateway::limits::Buckets::new(
            config.limits.ticket_rate_per_ip,
            TICKET_RATE_KEYS,
        ),
        tickets_by_user: gateway::limits::Buckets::new(
            config.limits.ticket_rate_per_user,
            TICKET_RATE_KEYS,
        ),
        // Random upper half: keys stay unique across processes even if two nodes share an id.
        next_conn_key: std::sync::atomic::AtomicU64::new(random_u32()? << 32),
        tracker: TaskTracker::new(),
        refusals: Default::default(),
        metrics,
        summaries,
        dashboard: Default::default(),
    });
    tokio::spawn(hub::heartbeat::run(
        hub.clone(),
        config.ping_interval,
        stop.clone(),
    ));
    if let Some(local) = local {
        tokio::spawn(sweep(local, stop.clone()));
    }
    // Once a second: the dashboard's point of this node, shared with the cluster.
    tokio::spawn(gateway::dashboard::run(gw.clone(), stop.clone()));
    let (drain, hurry) = (CancellationToken::new(), CancellationToken::new());
    let phases = Phases {
        drain: drain.clone(),
        hurry: hurry.clone(),
        stop,
    };
    let done = tokio::spawn(drive(gw.clone(), listener, tls, phases, webhook));
    Ok(Running {
        addr,
        gateway: gw,
        drain,
        hurry,
        done,
    })
}

/// The verifier of every configured JWT key; with a JWKS URL, its refresh task runs until
/// `stop` (the first fetch starts now; tokens needing it get `unavailable` until it succeeds).
fn jwt_verifier(config: &Config, stop: &CancellationToken) -> Result<JwtVerifier, ServerError> {
    let mut keys = Vec::new();
    if let Some(secret) = &config.jwt_secret {
        keys.push(VerifyKey::secret(secret));
    }
    for f in &config.jwt_keys.public_key_files {
        keys.push(VerifyKey::from_pem(&f.path, &f.pem)?);
    }
    let jwks = match &config.jwt_keys.jwks_url {
        None => None,
        Some(url) => {
            let jwks = Arc::new(Jwks::new(
                url,
                config.jwt_keys.jwks_refresh,
                config.jwt_keys.jwks_refresh_min,
            )?);
            tokio::spawn(jwks.clone().run(stop.clone()));
            Some(jwks)
        }
    };
    Ok(JwtVerifier::new(keys, jwks, config.jwt_leeway)
        .with_claims(config.jwt_audience.as_deref(), config.jwt_issuer.as_deref()))
}

/// Most addresses, and most users, whose ticket rate is tracked at once.
const TICKET_RATE_KEYS: usize = 100_000;

/// The tokens of a node's end, in order.
struct Phases {
    /// Cancelled to start the drain.
    drain: CancellationToken,
    /// Cancelled to cut the drain short.
    hurry: drain::Hurry,
    /// Cancelled once the drain is over: every background task (the bus, heartbeats, health
    /// checks, reloads) watches it.
    stop: CancellationToken,
}

/// Serves until the drain starts, drains, then stops the rest.
async fn drive(
    gw: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    phases: Phases,
    webhook: Option<Arc<WebhookEvents>>,
) {
    // The listener outlives the drain: meanwhile `/readyz` answers 503 and (after the delay) new
    // clients are refused with 503 `draining`, so a load balancer sees the node not ready, not gone.
    let accepting = CancellationToken::new();
    let listening = tokio::spawn(gateway::serve(gw.clone(), listener, tls, accepting.clone()));
    phases.drain.cancelled().await;
    let began = tokio::time::Instant::now();
    gw.draining.store(true, Ordering::SeqCst);
    drain::run(&gw, &phases.hurry, began).await;
    accepting.cancel();
    let _ = listening.await;
    // The drain's disconnects go out too, within what is left of the deadline (or a second).
    if let Some(w) = webhook {
        let left = gw.config.drain.timeout.saturating_sub(began.elapsed());
        w.flush(left.max(Duration::from_secs(1))).await;
    }
    phases.stop.cancel();
}

/// The lifecycle event log the config asks for: the Redis stream in a cluster, the journal and
/// service on a single node, or none.
async fn lifecycle(
    config: &Config,
    redis: Option<Arc<RedisBus>>,
    proxy: &Arc<crate::proxy::Proxy>,
    stop: &CancellationToken,
) -> Result<(Lifecycle, Option<Arc<WebhookEvents>>), ServerError> {
    let Some(ev) = &config.events else {
        return Ok((Lifecycle::default(), None));
    };
    match (&ev.sink, redis) {
        (EventsSink::Stream { max_len }, Some(bus)) => {
            let log = bus
                .event_log(
                    &config.node_id,
                    ev.clone(),
                    *max_len,
                    config.node_ttl,
                    stop.clone(),
                )
                .await?;
            Ok((Lifecycle::new(ev.clone(), log), None))
        }
        (EventsSink::Service { service, journal }, _) => {
            let log = WebhookEvents::start(journal, &config.node_id, service, proxy.clone())?;
            Ok((Lifecycle::new(ev.clone(), log.clone()), Some(log)))
        }
        (EventsSink::Stream { .. }, None) => Err(ServerError::Events(
            crate::lifecycle::LifecycleError::Unavailable("the events stream needs Redis".into()),
        )),
    }
}

/// 32 random bits.
fn random_u32() -> Result<u64, getrandom::Error> {
    let mut r = [0u8; 4];
    getrandom::fill(&mut r)?;
    Ok(u64::from(u32::from_le_bytes(r)))
}

/// Drops aged-out topic logs once a minute.
async fn sweep(bus: Arc<LocalBus>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => bus.sweep(),
        }
    }
}

/// Runs a node until SIGTERM or SIGINT, then drains; a second one cuts the drain short. SIGHUP
/// meanwhile reloads the TLS certificate.
pub async fn run(config: Config) -> Result<(), ServerError> {
    let mut signals = crate::shutdown::Signals::new();
    let running = start(config).await?;
    tracing::info!(node = %running.gateway.config.node_id, "listening on {}", running.addr);
    let first = signals.next().await;
    tracing::info!("{first}: draining");
    running.shutdown();
    let hurry = running.hurry.clone();
    tokio::spawn(async move {
        let second = signals.next().await;
        tracing::warn!("{second} while draining: closing every connection left at once");
        hurry.cancel();
    });
    running.wait().await;
    tracing::info!("stopped");
    Ok(())
}

/// Completed handshakes the kernel may hold for the accept loop. A node that neighbours send
/// their clients to after a failure takes thousands of connections at once; the usual default
/// (128, and what `TcpListener::bind` asks for) drops SYNs past it, each costing its client a
/// retransmission a second or more later. The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the client listener with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as `bind` does).
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

#[cfg(test)]
mod listen_tests {
    use super::*;

    #[tokio::test]
    async fn the_listener_holds_thousands_of_handshakes_not_the_usual_128() {
        let l = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = l.local_addr().unwrap().port();
        // `ss` shows a listener's backlog as its Send-Q; the kernel caps it at somaxconn.
        let out = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{port}")])
            .output()
            .expect("ss (iproute2) runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let backlog: u32 = text.split_whitespace().nth(2).unwrap().parse().unwrap();
        let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap();
        let cap: u32 = cap.trim().parse().unwrap();
        assert_eq!(backlog, LISTEN_BACKLOG.min(cap), "{text}");
        assert!(backlog > 128, "net.core.somaxconn is {cap} here: {text}");
    }
}
