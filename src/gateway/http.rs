//! The HTTP API on the gateway's port: tickets, publishing, health, readiness and metrics. The
//! WebSocket routes are in [`super::upgrade`]. Every refusal goes through [`Rejection`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::Gateway;
use super::rejection::Rejection;
use crate::auth;
use crate::bus::Direct;
use crate::protocol::Topic;

fn authorization(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// `POST /v1/tickets`: a JWT in, a one-time ticket out.
pub async fn tickets(State(gw): State<Arc<Gateway>>, req: Request) -> Result<Response, Rejection> {
    refuse_when_draining(&gw)?;
    let token = auth::bearer(authorization(&req))?;
    let identity = gw.jwt.verify(token)?;
    let ticket = gw.tickets.issue(identity).await?;
    crate::metrics::ticket_issued();
    let body = serde_json::json!({"ticket": ticket, "expires_in": gw.tickets.ttl().as_secs()});
    Ok(Json(body).into_response())
}

/// A draining node takes no new work: clients should go to another node.
fn refuse_when_draining(gw: &Gateway) -> Result<(), Rejection> {
    if gw.draining.load(Ordering::Relaxed) {
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
    match (parsed.topic, parsed.user) {
        (Some(t), None) => {
            let topic = Topic::parse(&t).map_err(Rejection::BadTopic)?;
            let pos = gw.bus.publish(&topic, data).await?;
            crate::metrics::published();
            Ok(
                Json(serde_json::json!({"offset": pos.offset, "epoch": &*pos.epoch}))
                    .into_response(),
            )
        }
        (None, Some(user)) => {
            let bad_name = |s: &str| s.is_empty() || s.len() > 255 || s.contains([' ', '{', '}']);
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

async fn read_body(body: Body, limit: usize) -> Result<Bytes, Rejection> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
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

/// `GET /readyz`: 200 while accepting clients and the bus works; 503 while draining or bus down.
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

/// `GET /metrics`: Prometheus text format.
pub async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
        .into_response()
}

/// Any other route.
pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({"error": "not_found", "message": "no such route"})),
    )
        .into_response()
}
