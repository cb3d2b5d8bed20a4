//! The example backend: the app behind a Herald cluster, in one small service.
//!
//! - `POST /login` signs a demo user in with a session cookie, and `POST /herald/connect` is the
//!   auth hook that lets that cookie open a WebSocket (`auth_service = "app"` on the nodes).
//! - `POST /herald` answers clients' `send` (the nodes' `[services.app]`), and tells the user
//!   through Redis that it did (`FCALL herald_publish_user`).
//! - `POST /publish` publishes to a topic through Redis (`FCALL herald_publish`), and a ticker
//!   publishes to `demo.ticker` every `--tick-ms`.
//! - `GET /` is the browser demo (it loads the JavaScript client from `/herald.js`).
//! - A consumer group reads the lifecycle events stream (`XREADGROUP`); `GET /stats` counts them.
//!
//! Every piece is bounded: sessions (at most `MAX_SESSIONS`, oldest dropped), request bodies
//! (axum's default 2 MiB), Redis calls (timeouts), the events read (100 per call).

mod events;
mod sessions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;
use serde_json::{Value, json};

/// The example backend of a Herald cluster.
#[derive(Parser, Debug)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "BACKEND_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// The Redis the Herald nodes share.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// The nodes' `redis_prefix`.
    #[arg(long, env = "HERALD_REDIS_PREFIX", default_value = "herald:")]
    prefix: String,
    /// Publish to `demo.ticker` this often (0: never).
    #[arg(long, env = "BACKEND_TICK_MS", default_value_t = 1000)]
    tick_ms: u64,
    /// How long a demo session lasts, in seconds (its WebSocket closes with 4001 then).
    #[arg(long, env = "BACKEND_SESSION_SECS", default_value_t = 3600)]
    session_secs: u64,
    /// The Herald WebSocket URL the demo page connects to (default: the page's host, port 8080).
    #[arg(long, env = "BACKEND_HERALD_WS", default_value = "")]
    herald_ws: String,
    /// The consumer group reading the lifecycle events (none: `--events-group ""`).
    #[arg(long, env = "BACKEND_EVENTS_GROUP", default_value = "example")]
    events_group: String,
}

/// What every handler shares.
struct App {
    /// Commands to Redis (publishing); reconnects by itself.
    redis: ConnectionManager,
    sessions: sessions::Sessions,
    events: Arc<events::Counts>,
    /// `send`s answered.
    sends: AtomicU64,
    /// What the demo page is told (`GET /config.json`).
    page_config: Value,
    session_ttl: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "herald_example_backend=info".into()),
        )
        .init();
    let args = Args::parse();
    let client = redis::Client::open(args.redis_url.as_str()).context("REDIS_URL")?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_connection_timeout(Some(Duration::from_secs(2)));
    let redis = ConnectionManager::new_with_config(client.clone(), config)
        .await
        .context("connecting to Redis")?;
    let app = Arc::new(App {
        redis,
        sessions: sessions::Sessions::default(),
        events: Arc::default(),
        sends: AtomicU64::new(0),
        page_config: json!({"ws": args.herald_ws}),
        session_ttl: Duration::from_secs(args.session_secs),
    });
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    if !args.events_group.is_empty() {
        let stream = format!("{}{{events}}:stream", args.prefix);
        tasks.push(tokio::spawn(events::read(
            client.clone(),
            stream,
            args.events_group.clone(),
            app.events.clone(),
            stop.clone(),
        )));
    }
    if args.tick_ms > 0 {
        tasks.push(tokio::spawn(ticker(
            app.redis.clone(),
            Duration::from_millis(args.tick_ms),
            stop.clone(),
        )));
    }
    let router = Router::new()
        .route("/", get(demo))
        .route("/herald.js", get(client_js))
        .route("/config.json", get(page_config))
        .route("/healthz", get(|| async { "ok" }))
        .route("/login", post(sessions::login))
        .route("/logout", post(sessions::logout))
        .route("/herald/connect", post(sessions::connect))
        .route("/herald", post(send))
        .route("/publish", post(publish))
        .route("/stats", get(stats))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "example backend listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        })
        .await?;
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `FCALL herald_publish 1 <topic> <json>`: `[offset, epoch]`.
async fn herald_publish(
    redis: &mut ConnectionManager,
    topic: &str,
    data: &Value,
) -> redis::RedisResult<(u64, String)> {
    redis::cmd("FCALL")
        .arg("herald_publish")
        .arg(1)
        .arg(topic)
        .arg(data.to_string())
        .query_async(redis)
        .await
}

/// Publishes `{"n": i, "at": <unix ms>}` to `demo.ticker` every `every`, until `stop`.
async fn ticker(
    mut redis: ConnectionManager,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        n += 1;
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if let Err(e) = herald_publish(&mut redis, "demo.ticker", &json!({"n": n, "at": at})).await
        {
            tracing::warn!(error = %e, "ticker: publish failed");
        }
    }
}

/// What a Herald node POSTs for a client's `send`: `{"id", "user", "conn", "data"}`.
#[derive(Deserialize)]
struct SendBody {
    user: String,
    conn: String,
    data: Value,
}

/// `POST /herald`: answers a client's `send` with an echo, and tells the user through Redis
/// (every connection of theirs, on every node, gets a `direct` frame).
async fn send(State(app): State<Arc<App>>, headers: HeaderMap, body: String) -> Response {
    let Ok(b) = serde_json::from_str::<SendBody>(&body) else {
        return (StatusCode::BAD_REQUEST, "expected {id, user, conn, data}").into_response();
    };
    // The node vouches for the user in X-Herald-User; the body says the same.
    let vouched = headers
        .get("x-herald-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if vouched != b.user {
        return (StatusCode::BAD_REQUEST, "X-Herald-User does not match").into_response();
    }
    let n = app.sends.fetch_add(1, Ordering::Relaxed) + 1;
    let notice = json!({"notice": "your message reached the backend", "n": n});
    let mut redis = app.redis.clone();
    let directed: redis::RedisResult<u64> = redis::cmd("FCALL")
        .arg("herald_publish_user")
        .arg(1)
        .arg(&b.user)
        .arg(notice.to_string())
        .arg("example")
        .query_async(&mut redis)
        .await;
    if let Err(e) = directed {
        tracing::warn!(error = %e, "could not send the user a direct message");
    }
    axum::Json(json!({"echo": b.data, "user": b.user, "conn": b.conn, "n": n})).into_response()
}

#[derive(Deserialize)]
struct PublishBody {
    topic: String,
    data: Value,
}

/// `POST /publish` `{"topic", "data"}`: publishes through Redis; `{"offset", "epoch"}`.
async fn publish(State(app): State<Arc<App>>, body: String) -> Response {
    let Ok(b) = serde_json::from_str::<PublishBody>(&body) else {
        return (StatusCode::BAD_REQUEST, "expected {topic, data}").into_response();
    };
    let mut redis = app.redis.clone();
    match herald_publish(&mut redis, &b.topic, &b.data).await {
        Ok((offset, epoch)) => {
            axum::Json(json!({"offset": offset, "epoch": epoch})).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("publish failed: {e}")).into_response(),
    }
}

/// `GET /stats`: what this backend has seen.
async fn stats(State(app): State<Arc<App>>) -> axum::Json<Value> {
    axum::Json(json!({
        "sessions": app.sessions.len(),
        "sends": app.sends.load(Ordering::Relaxed),
        "events": app.events.snapshot(),
    }))
}

/// `GET /`: the browser demo.
async fn demo() -> Html<&'static str> {
    Html(include_str!("demo.html"))
}

/// `GET /herald.js`: the JavaScript client, as `clients/js` ships it.
async fn client_js() -> Response {
    (
        [("content-type", "text/javascript; charset=utf-8")],
        include_str!("../../../clients/js/src/herald.js"),
    )
        .into_response()
}

/// `GET /config.json`: where the demo page finds Herald.
async fn page_config(State(app): State<Arc<App>>) -> axum::Json<Value> {
    axum::Json(app.page_config.clone())
}
