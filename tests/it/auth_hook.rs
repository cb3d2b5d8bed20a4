//! Cookie sessions through the auth hook: an upgrade without `?ticket=` is authenticated by a real
//! backend that checks a session cookie (`POST /herald/connect`), in every outcome: a good
//! session connects and receives, a bad one gets 401, a banned user 403, a foreign Origin 403
//! before the backend is asked, and a backend that is down 503.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::{Value, json};

use crate::support::ws;
use crate::support::{Codec, Node, UNSET, now_secs, upgrade};

/// What the hook sent: the cookie header and the JSON body.
type Asked = (Option<String>, Value);

/// An app backend that knows two sessions, and remembers what the hook sent it.
struct SessionBackend {
    addr: SocketAddr,
    /// Every `POST /herald/connect`: its cookie header and its JSON body.
    seen: Arc<Mutex<Vec<Asked>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SessionBackend {
    async fn start() -> SessionBackend {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let app = Router::new().route(
            "/herald/connect",
            post(move |headers: HeaderMap, body: String| {
                let log = log.clone();
                async move {
                    let cookie = headers
                        .get("cookie")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    log.lock().unwrap().push((cookie.clone(), body));
                    let session = cookie.as_deref().and_then(|c| {
                        c.split(';')
                            .map(str::trim)
                            .find_map(|kv| kv.strip_prefix("session="))
                    });
                    match session {
                        Some("s3cr3t-alice") => (
                            StatusCode::OK,
                            axum::Json(json!({
                                "sub": "alice",
                                "grants": {"subscribe": ["news.>"], "publish": []},
                                "expires_at": now_secs() + 3600,
                            })),
                        )
                            .into_response(),
                        Some("s3cr3t-mallory") => StatusCode::FORBIDDEN.into_response(),
                        _ => StatusCode::UNAUTHORIZED.into_response(),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        SessionBackend { addr, seen, task }
    }

    fn toml(&self) -> String {
        format!(
            "auth_service = \"sessions\"\n\
             allowed_origins = [\"https://app.example.com\"]\n\
             [services.sessions]\n\
             endpoints = [\"http://{}\"]\n\
             forward_headers = [\"cookie\"]\n\
             timeout_ms = 2000\n",
            self.addr
        )
    }

    fn seen(&self) -> Vec<Asked> {
        self.seen.lock().unwrap().clone()
    }
}

/// Serves `app` on 127.0.0.1:0 as the node's auth service: the node's TOML for it, and its task.
async fn hook_service(app: Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let toml = format!(
        "auth_service = \"sessions\"\n[services.sessions]\nendpoints = [\"http://{addr}\"]\n"
    );
    (toml, task)
}

const APP: &str = "https://app.example.com";

#[tokio::test]
async fn a_good_session_cookie_connects_and_receives_without_a_ticket() {
    let backend = SessionBackend::start().await;
    // No JWT secret at all: the hook is this node's only way to know a user.
    let node = Node::with_toml(&backend.toml(), &[("HERALD_JWT_SECRET", UNSET)]).await;
    let headers = [
        ("cookie", "theme=dark; session=s3cr3t-alice"),
        ("origin", APP),
    ];
    let (mut c, resp) = ws::open(node.addr, "/ws", Some(Codec::Json), &headers)
        .await
        .expect("the upgrade succeeds");
    assert_eq!(resp.status(), 101);
    let w = c.next_frame().await;
    assert_eq!(
        (w["op"].as_str(), w["user"].as_str()),
        (Some("welcome"), Some("alice"))
    );
    c.sub(1, "news.eu").await;
    node.publish("news.eu", json!({"n": 1})).await;
    assert_eq!(c.next_msg("news.eu").await["data"], json!({"n": 1}));
    // The grants the backend gave hold.
    c.send_json(json!({"op": "sub", "id": 2, "topic": "admin"}))
        .await;
    let e = c.next_frame().await;
    assert_eq!(
        (e["op"].as_str(), e["code"].as_str()),
        (Some("error"), Some("forbidden"))
    );

    // What the backend was told: the cookie, the client address, the path and the Origin.
    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    let (cookie, body) = &seen[0];
    assert_eq!(cookie.as_deref(), Some("theme=dark; session=s3cr3t-alice"));
    assert_eq!(body["address"], "127.0.0.1");
    assert_eq!(body["path"], "/ws");
    assert_eq!(body["origin"], APP);
    // A ticket still works beside the hook (here there is no JWT key, so a backend mints it).
    let mint = json!({"sub": "bob", "grants": {"subscribe": ["news.>"]}}).to_string();
    let (status, out) = node
        .http
        .post("/v1/tickets", Some(crate::support::API_KEY), &mint)
        .await;
    assert_eq!(status, 200, "{out}");
    let ticket = out["ticket"].as_str().unwrap();
    let mut b = node
        .open(&format!("/topics/news.eu?ticket={ticket}"), Codec::Json)
        .await;
    assert_eq!(b.next_frame().await["user"], "bob");
    assert_eq!(backend.seen().len(), 1, "a ticket does not ask the hook");
    backend.task.abort();
}

#[tokio::test]
async fn a_bad_or_banned_session_is_refused_before_the_upgrade() {
    let backend = SessionBackend::start().await;
    let node = Node::with_toml(&backend.toml(), &[]).await;
    for (cookie, status, code) in [
        (Some("session=stolen-guess"), 401, "session_rejected"),
        (None, 401, "session_rejected"),
        (Some("session=s3cr3t-mallory"), 403, "forbidden"),
    ] {
        let mut headers = vec![("Origin", APP)];
        if let Some(c) = cookie {
            headers.push(("Cookie", c));
        }
        upgrade(node.addr, "/ws", &headers)
            .await
            .assert_refused(status, code);
    }
    assert_eq!(backend.seen().len(), 3);
    // A foreign page cannot ride the user's cookie: its Origin is refused before the hook.
    upgrade(
        node.addr,
        "/ws",
        &[
            ("Origin", "https://evil.example"),
            ("Cookie", "session=s3cr3t-alice"),
        ],
    )
    .await
    .assert_refused(403, "origin_not_allowed");
    assert_eq!(backend.seen().len(), 3, "the backend was not asked");
    backend.task.abort();
}

#[tokio::test]
async fn a_session_backend_that_is_down_gives_503_never_an_open_door() {
    let backend = SessionBackend::start().await;
    let toml = backend.toml();
    backend.task.abort();
    let _ = backend.task.await;
    let node = Node::with_toml(&toml, &[]).await;
    let headers = [("Origin", APP), ("Cookie", "session=s3cr3t-alice")];
    upgrade(node.addr, "/ws", &headers)
        .await
        .assert_refused(503, "unavailable");
    upgrade(node.addr, "/topics/news.eu", &headers)
        .await
        .assert_refused(503, "unavailable");
}

#[tokio::test]
async fn a_session_backend_answering_nonsense_gives_503() {
    let (toml, task) = hook_service(Router::new().route(
        "/herald/connect",
        post(|| async { axum::Json(json!({"user": "alice"})) }),
    ))
    .await;
    let node = Node::with_toml(&toml, &[]).await;
    upgrade(node.addr, "/ws", &[])
        .await
        .assert_refused(503, "unavailable");
    task.abort();
}

#[tokio::test]
async fn auth_service_must_name_a_configured_service() {
    let env: Vec<(String, String)> = [
        ("HERALD_API_KEY", crate::support::API_KEY),
        ("HERALD_AUTH_SERVICE", "sessions"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let err = herald::config::Config::load(None, &env).unwrap_err();
    assert!(err.to_string().contains("auth_service"), "{err}");
    assert!(err.to_string().contains("[services.sessions]"), "{err}");
}

#[tokio::test]
async fn a_session_backend_answer_larger_than_max_message_bytes_gives_503() {
    // A well-formed identity, padded past the node's bound on what it reads from the hook.
    let (toml, task) = hook_service(Router::new().route(
        "/herald/connect",
        post(|| async {
            axum::Json(json!({
                "sub": "alice",
                "grants": {"subscribe": [">"], "publish": []},
                "padding": "x".repeat(200 * 1024),
            }))
        }),
    ))
    .await;
    // 64 KiB (the default max_message_bytes) refuses it; 256 KiB lets the same answer through.
    let node = Node::with_toml(&toml, &[]).await;
    upgrade(node.addr, "/ws", &[])
        .await
        .assert_refused(503, "unavailable");
    let roomy = Node::with_toml(&toml, &[("HERALD_MAX_MESSAGE_BYTES", "262144")]).await;
    let (mut c, _) = ws::open(roomy.addr, "/ws", Some(Codec::Json), &[])
        .await
        .expect("the same answer connects under a larger bound");
    assert_eq!(c.next_frame().await["op"], "welcome");
    task.abort();
}
