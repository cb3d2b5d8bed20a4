//! Demo sessions: `POST /login` gives a browser a session cookie, and `POST /herald/connect` (the
//! Herald nodes' auth hook) turns that cookie into an identity. Sessions live in memory, at most
//! [`MAX_SESSIONS`] of them (past it the oldest goes), each for the backend's `--session-secs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::json;

use crate::App;

/// Most sessions kept.
const MAX_SESSIONS: usize = 10_000;
/// The cookie's name.
const COOKIE: &str = "demo_session";

/// A signed-in user.
#[derive(Clone)]
struct Session {
    user: String,
    /// Unix seconds.
    expires_at: u64,
    /// When it was made, to drop the oldest first.
    seq: u64,
}

/// Sessions by their cookie value. Locked only to read or change the maps.
#[derive(Default)]
pub(crate) struct Sessions {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_cookie: HashMap<String, Session>,
    /// Creation order, to drop the oldest past [`MAX_SESSIONS`].
    order: BTreeMap<u64, String>,
    next: u64,
}

impl Sessions {
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().by_cookie.len()
    }

    fn open(&self, user: String, expires_at: u64) -> String {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).expect("random bytes");
        let cookie = URL_SAFE_NO_PAD.encode(raw);
        let mut g = self.inner.lock();
        while g.by_cookie.len() >= MAX_SESSIONS {
            let Some((_, oldest)) = g.order.pop_first() else {
                break;
            };
            g.by_cookie.remove(&oldest);
        }
        g.next += 1;
        let seq = g.next;
        g.order.insert(seq, cookie.clone());
        g.by_cookie.insert(
            cookie.clone(),
            Session {
                user,
                expires_at,
                seq,
            },
        );
        cookie
    }

    fn get(&self, cookie: &str) -> Option<Session> {
        self.inner.lock().by_cookie.get(cookie).cloned()
    }

    fn close(&self, cookie: &str) {
        let mut g = self.inner.lock();
        if let Some(s) = g.by_cookie.remove(cookie) {
            g.order.remove(&s.seq);
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The session cookie's value in a `Cookie` header.
fn cookie_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

#[derive(Deserialize)]
pub(crate) struct Login {
    user: String,
}

/// `POST /login` `{"user": "ann"}`: any name of 1 to 32 letters, digits, `_` or `-` signs in
/// (a demo: no password). Sets the session cookie.
pub(crate) async fn login(State(app): State<Arc<App>>, body: String) -> Response {
    let Ok(l) = serde_json::from_str::<Login>(&body) else {
        return (StatusCode::BAD_REQUEST, "expected {\"user\": \"...\"}").into_response();
    };
    let ok = (1..=32).contains(&l.user.len())
        && l.user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        return (StatusCode::BAD_REQUEST, "user: 1 to 32 of A-Z a-z 0-9 _ -").into_response();
    }
    let expires_at = now() + app.session_ttl.as_secs();
    let cookie = app.sessions.open(l.user.clone(), expires_at);
    let set = format!(
        "{COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}",
        app.session_ttl.as_secs()
    );
    (
        [(header::SET_COOKIE, set)],
        axum::Json(json!({"user": l.user, "expires_at": expires_at})),
    )
        .into_response()
}

/// `POST /logout`: ends the session.
pub(crate) async fn logout(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(c) = cookie_of(&headers) {
        app.sessions.close(c);
    }
    let clear = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0");
    ([(header::SET_COOKIE, clear)], StatusCode::NO_CONTENT).into_response()
}

/// `POST /herald/connect`: the nodes' auth hook. The cookie (forwarded by the node, which
/// checked the page's `Origin` first) names a session: its user, what it may do, and when it
/// ends; no session: 401.
pub(crate) async fn connect(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let session = cookie_of(&headers).and_then(|c| app.sessions.get(c));
    match session {
        Some(s) if s.expires_at > now() => axum::Json(json!({
            "sub": s.user,
            "grants": {
                "subscribe": ["demo.>", format!("user.{}", s.user)],
                "publish": ["demo.chat"],
                "send": ["app"],
            },
            "expires_at": s.expires_at,
        }))
        .into_response(),
        _ => StatusCode::UNAUTHORIZED.into_response(),
    }
}
