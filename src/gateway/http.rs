//! The HTTP API on the gateway's port: tickets, publishing, disconnecting, health and readiness
//! (metrics and the dashboard: [`super::admin`], [`super::dashboard`]). The WebSocket routes are in [`super::upgrade`]. Every refusal goes through
//! [`Rejection`].

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::Gateway;
use super::client::ConnInfo;
use super::limits::IpKey;
use super::rejection::Rejection;
use crate::auth;
use crate::bus::{Direct, Disconnect, is_conn_id};
use crate::protocol::Topic;

fn authorization(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// `POST /v1/tickets`: a JWT in, a one-time ticket out.
/// Rate limited per client address (before any verification) and per user.
pub async fn tickets(State(gw): State<Arc<Gateway>>, req: Request) -> Result<Response, Rejection> {
    refuse_when_draining(&gw)?;
    // A backend with the server API key mints tickets for its users directly; it is trusted,
    // so the per-address rate (against ticket floods before any check) does not apply to it.
    let backend = auth::check_api_key(&gw.config.api_key, authorization(&req)).is_ok();
    let (identity, ttl) = if backend {
        minted(&gw, req).await?
    } else {
        let client = client_address(&gw, &req);
        gw.tickets_by_ip
            .take(&IpKey::of(client))
            .map_err(|retry_after| Rejection::TooFast {
                what: "tickets for this address",
                retry_after,
            })?;
        let token = auth::bearer(authorization(&req))?;
        (gw.jwt.verify(token).await?, gw.tickets.ttl())
    };
    gw.tickets_by_user
        .take(&identity.user)
        .map_err(|retry_after| Rejection::TooFast {
            what: "tickets for this user",
            retry_after,
        })?;
    let ticket = gw.tickets.issue_for(identity, ttl).await?;
    gw.metrics.tickets.increment(1);
    let body = serde_json::json!({"ticket": ticket, "expires_in": ttl.as_secs()});
    Ok(Json(body).into_response())
}

/// What a backend asks a ticket for: `{"sub": "...", "grants": {...}, "expires_in": 30,
/// "expires_at": <unix seconds>}` (the last two optional).
#[derive(Deserialize)]
struct MintBody {
    sub: String,
    grants: auth::RawGrants,
    /// Seconds the ticket stays redeemable: 1 to `ticket_ttl_secs` (its default).
    #[serde(default)]
    expires_in: Option<u64>,
    /// When the session it opens ends (unix seconds; closed with 4001 then unless refreshed);
    /// absent: never.
    #[serde(default)]
    expires_at: Option<u64>,
}

/// The identity and ticket lifetime a backend's `POST /v1/tickets` body asks for. The identity
/// expires at the body's `expires_at`, or never: the backend vouches for the user.
async fn minted(gw: &Gateway, req: Request) -> Result<(auth::Identity, Duration), Rejection> {
    let body = read_body(req.into_body(), gw.config.max_message_bytes).await?;
    let b: MintBody = serde_json::from_slice(&body).map_err(|e| {
        Rejection::BadRequest(format!(
            "with the API key, the body must be {{\"sub\": \"...\", \"grants\": {{...}}, \
             \"expires_in\": <seconds, optional>}}: {e}"
        ))
    })?;
    if b.sub.is_empty() || b.sub.len() > 255 {
        return Err(Rejection::BadRequest("`sub` must be 1 to 255 bytes".into()));
    }
    let max = gw.tickets.ttl().as_secs();
    let secs = b.expires_in.unwrap_or(max);
    if secs == 0 || secs > max {
        return Err(Rejection::BadRequest(format!(
            "`expires_in` must be from 1 to {max} seconds (ticket_ttl_secs)"
        )));
    }
    let grants = auth::Grants::from_raw(&b.grants)
        .map_err(|e| Rejection::BadRequest(format!("`grants`: {e}")))?;
    let identity = auth::Identity {
        user: b.sub.into(),
        grants: Arc::new(grants),
        expires_at: match b.expires_at {
            None => u64::MAX,
            Some(at) if at > unix_now() => at,
            Some(_) => {
                return Err(Rejection::BadRequest(
                    "`expires_at` (unix seconds) must be in the future".into(),
                ));
            }
        },
    };
    Ok((identity, Duration::from_secs(secs)))
}

/// The request's client address ([`ConnInfo`]; the loopback address for a request that did
/// not come through the accept loop, which does not happen outside tests of the router).
fn client_address(gw: &Gateway, req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnInfo>()
        .map(|i| i.client_of(req.headers(), &gw.config.limits))
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

/// A draining node takes no new work once it has started closing its connections (during the
/// drain's delay it still does): clients should go to another node.
fn refuse_when_draining(gw: &Gateway) -> Result<(), Rejection> {
    if gw.closing.load(Ordering::Relaxed) {
        return Err(Rejection::Draining);
    }
    Ok(())
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    /// A topic, or...
    #[serde(default)]
    topic: Option<String>,
    /// ...a user (directed message).
    #[serde(default)]
    user: Option<String>,
    /// With `user`: the sender's name, shown as the `direct` frame's `from`.
    #[serde(default)]
    from: Option<String>,
    /// Required; JSON `null` is a valid payload (hence not an `Option`, which would read it as absent).
    #[serde(borrow)]
    data: &'a RawValue,
}

/// `POST /v1/publish`: the server API (API key). `{"topic", "data"}` in, `{"offset", "epoch"}`
/// out; or `{"user", "data"[, "from"]}` in (a directed message to every connection of that
/// user, on every node; not stored), `{"sent": true}` out.
pub async fn publish(State(gw): State<Arc<Gateway>>, req: Request) -> Result<Response, Rejection> {
    refuse_when_draining(&gw)?;
    auth::check_api_key(&gw.config.api_key, authorization(&req))?;
    let limit = gw.config.max_message_bytes;
    let body = read_body(req.into_body(), limit).await?;
    let parsed: PublishBody<'_> = serde_json::from_slice(&body).map_err(|e| {
        Rejection::BadRequest(format!(
            "body must be {{\"topic\": \"...\", \"data\": <any JSON>}} or \
             {{\"user\": \"...\", \"data\": <any JSON>}}: {e}"
        ))
    })?;
    let data = Bytes::copy_from_slice(parsed.data.get().as_bytes());
    crate::protocol::frame::check_nesting(&data).map_err(Rejection::BadRequest)?;
    match (parsed.topic, parsed.user) {
        (Some(t), None) => {
            let topic = Topic::parse(&t).map_err(Rejection::BadTopic)?;
            let pos = gw.bus.publish(&topic, data).await?;
            gw.metrics.published_api.increment(1);
            Ok(
                Json(serde_json::json!({"offset": pos.offset, "epoch": &*pos.epoch}))
                    .into_response(),
            )
        }
        (None, Some(user)) => {
            if bad_name(&user) {
                return Err(Rejection::BadRequest(
                    "`user` must be 1 to 255 bytes without spaces or braces".into(),
                ));
            }
            if parsed
                .from
                .as_deref()
                .is_some_and(|f| bad_name(f) || f == "-")
            {
                return Err(Rejection::BadRequest(
                    "`from` must be 1 to 255 bytes without spaces or braces".into(),
                ));
            }
            let direct = Direct {
                user: Arc::from(user),
                from: parsed.from.map(Arc::from),
                data,
            };
            gw.bus.publish_direct(direct).await?;
            Ok(Json(serde_json::json!({"sent": true})).into_response())
        }
        _ => Err(Rejection::BadRequest(
            "give exactly one of `topic` and `user`".into(),
        )),
    }
}

/// Largest `POST /v1/disconnect` body (413 beyond): a user and a connection id fit many times.
const DISCONNECT_BODY_BYTES: usize = 4096;

/// What a backend asks `POST /v1/disconnect` for. Unknown fields are refused: a misspelt `conn`
/// must not widen the order to every connection of the user.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    user: String,
    /// Only this connection (its id, as in its `welcome`).
    #[serde(default)]
    conn: Option<String>,
}

/// `POST /v1/disconnect`: the server API (API key). `{"user"[, "conn"]}` in: every connection
/// of the user (or only the one named), on every node, is closed with 4003. `{"nodes": N}` out:
/// how many nodes held a connection of the user and got the order (each closes the matching
/// ones as it gets it, which on other nodes may be just after the answer). Also while draining:
/// a revocation is not new work.
pub async fn disconnect(
    State(gw): State<Arc<Gateway>>,
    req: Request,
) -> Result<Response, Rejection> {
    auth::check_api_key(&gw.config.api_key, authorization(&req))?;
    let body = read_body(req.into_body(), DISCONNECT_BODY_BYTES).await?;
    // An object: serde would also read the struct from an array (`["bob"]`).
    let parsed = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body)
        .and_then(|o| serde_json::from_value::<DisconnectBody>(serde_json::Value::Object(o)));
    let b = parsed.map_err(|e| {
        Rejection::BadRequest(format!(
            "body must be {{\"user\": \"...\"}} or {{\"user\": \"...\", \"conn\": \"...\"}}: {e}"
        ))
    })?;
    if bad_name(&b.user) {
        return Err(Rejection::BadRequest(
            "`user` must be 1 to 255 bytes without spaces or braces".into(),
        ));
    }
    if b.conn.as_deref().is_some_and(|c| !is_conn_id(c.as_bytes())) {
        return Err(Rejection::BadRequest(
            "`conn` must be a connection id as `welcome` gives it: 1 to 128 bytes of \
             A-Z, a-z, 0-9, `_` and `-`"
                .into(),
        ));
    }
    let order = Disconnect {
        user: Arc::from(b.user),
        conn: b.conn.map(Arc::from),
    };
    let nodes = gw.bus.disconnect(order).await?;
    Ok(Json(serde_json::json!({"nodes": nodes})).into_response())
}

/// True when `s` cannot name a user (or a sender) on a user's Redis channel: empty, over 255
/// bytes, or holding white space or a brace (what `herald.lua` refuses too).
fn bad_name(s: &str) -> bool {
    s.is_empty() || s.len() > 255 || s.contains(|c: char| c.is_whitespace() || c == '{' || c == '}')
}

/// Time allowed for a request body to arrive (408 beyond).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

async fn read_body(body: Body, limit: usize) -> Result<Bytes, Rejection> {
    let read = tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit));
    let read = read
        .await
        .map_err(|_| Rejection::BodyTimeout(BODY_TIMEOUT.as_secs()))?;
    read.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return Rejection::PayloadTooLarge(limit);
            }
            source = s.source();
        }
        Rejection::BadRequest(format!("could not read the body: {e}"))
    })
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: 200 while accepting clients and the bus works; 503 from the start of a drain
/// (its delay included, while the node still accepts them) or while the bus is down.
pub async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    let draining = gw.draining.load(Ordering::Relaxed);
    let bus = gw.bus.is_ready();
    let status = if draining || !bus {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = serde_json::json!({
        "status": if status == StatusCode::OK { "ready" } else { "not_ready" },
        "draining": draining,
        "bus": if bus { "up" } else { "down" },
    });
    (status, Json(body)).into_response()
}

/// Any other route.
pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({"error": "not_found", "message": "no such route"})),
    )
        .into_response()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
