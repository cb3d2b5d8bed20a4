//! WebSocket upgrades on `GET /ws` and `GET /topics/{topic}`: every check that can refuse runs
//! here, before the 101 (draining, a valid upgrade, Origin, subprotocol, topic and query, the
//! connection limit, the ticket, the grants), then the raw TCP stream is taken back from hyper and
//! handed to [`super::connection`]. permessage-deflate is negotiated here too ([`deflate`]): an
//! offer is accepted or declined, never a reason to refuse. (The connection limits per node and per address are counted
//! when the TCP connection is accepted, [`super::limits`].) A refused upgrade is logged here,
//! where both the refusal and the client address are known ([`super::rejection::RefusalLog`]);
//! an accepted one's task runs in its span, `conn` (connection id, user, node), so that every
//! line logged for the connection carries them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use futures_util::FutureExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tracing::Instrument;

use super::Gateway;
use super::auth_hook;
use super::client::ConnInfo;
use super::connection::{self, Endpoint};
use super::guarded::Guarded;
use super::rejection::Rejection;
use crate::protocol::deflate::{self, Agreed, Declined};
use crate::protocol::{CloseCode, Codec, Position, Topic, close};

/// The stream hyper hands back after the 101, with any bytes it had read past the request.
pub(super) enum Taken {
    Plain(Guarded<TcpStream>, bytes::Bytes),
    /// Boxed: a TLS session is kilobytes, and inline it would size every connection's task.
    Tls(Box<TlsStream<Guarded<TcpStream>>>, bytes::Bytes),
}

/// Takes the stream back from hyper. A plain function, not inline in the async task: the
/// downcast's result holds a whole TLS session, which must not live in the task's state.
pub(super) fn take_stream(upgraded: hyper::upgrade::Upgraded) -> Option<Taken> {
    let upgraded = match upgraded.downcast::<TokioIo<Guarded<TcpStream>>>() {
        Ok(p) => return Some(Taken::Plain(p.io.into_inner(), p.read_buf)),
        Err(u) => u,
    };
    match upgraded.downcast::<TokioIo<TlsStream<Guarded<TcpStream>>>>() {
        Ok(p) => Some(Taken::Tls(Box::new(p.io.into_inner()), p.read_buf)),
        Err(_) => None,
    }
}

/// What is left to do once a connection ends: its disconnect counted and recorded, and its count
/// in the cluster released. Small on purpose: it waits beside the connection as long as it lives
/// (the connection hands back its id and user when it ends, rather than both keeping them).
struct Ending {
    gw: Arc<Gateway>,
    /// A proxied client's place in its address's count, held while its WebSocket is open.
    /// Boxed: most clients are not proxied, and this waits beside every connection.
    _address_permit: Option<Box<super::limits::Permit>>,
}

impl Ending {
    async fn record(self, ended: connection::Ended) {
        let connection::Ended { code, conn, user } = ended;
        tracing::debug!(code, "connection closed");
        self.gw.metrics.disconnected(code);
        if let Some(recording) = self.gw.events.disconnected(&conn, &user, code) {
            recording.await;
        }
        let _ = self.gw.bus.close_conn(&user, &conn).await;
    }
}

/// Spawns a connection's own task: `connection` until it ends, then its `ending` (boxed, so
/// that only the ending's few fields wait beside the connection). A task of its own, apart from
/// the upgrade's, and unboxed: an idle connection is mostly this one allocation, and what the
/// upgrade needed (the request's parts, the identity before it moved) is gone with the upgrade's
/// task instead of lingering in this one's state.
fn spawn_connection<F>(connection: F, ending: Ending)
where
    F: Future<Output = connection::Ended> + Send + 'static,
{
    let tracker = ending.gw.tracker.clone();
    let task = connection.then(move |ended| Box::pin(ending.record(ended)));
    // The connection's span is a debug span: off, the task carries none.
    let span = tracing::Span::current();
    if span.is_disabled() {
        tracker.spawn(task);
    } else {
        tracker.spawn(task.instrument(span));
    }
}

/// `GET /ws`: the multiplexed endpoint.
pub async fn ws(State(gw): State<Arc<Gateway>>, req: Request) -> Result<Response, Rejection> {
    logged(gw, req, None).await
}

/// `GET /topics/{topic}`: a socket already subscribed to one topic.
pub async fn topic(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, Rejection> {
    logged(gw, req, Some(name)).await
}

/// [`upgrade`], its refusal logged with the client address and counted by its code.
async fn logged(
    gw: Arc<Gateway>,
    req: Request,
    topic: Option<String>,
) -> Result<Response, Rejection> {
    let client = client_of(&gw, &req);
    let r = upgrade(gw.clone(), req, topic).await;
    if let Err(e) = &r {
        gw.refusals.refused("upgrade", client, e);
        gw.metrics.refused(e.code());
    }
    r
}

/// The request's client address ([`ConnInfo`]; loopback for a request that did not come
/// through the accept loop, which only tests of the router make).
fn client_of(gw: &Gateway, req: &Request) -> std::net::IpAddr {
    match req.extensions().get::<ConnInfo>() {
        Some(info) => info.client_of(req.headers(), &gw.config.limits),
        None => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    }
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// The codec for the offered subprotocols: the client's first supported choice; JSON (and no
/// answer header) when none is offered.
fn choose_codec(headers: &HeaderMap) -> Result<Option<Codec>, Rejection> {
    let mut offered = false;
    for v in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let s = v
            .to_str()
            .map_err(|_| Rejection::BadRequest("Sec-WebSocket-Protocol is not ASCII".into()))?;
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            offered = true;
            if let Some(c) = Codec::from_subprotocol(name) {
                return Ok(Some(c));
            }
        }
    }
    if offered {
        Err(Rejection::UnsupportedSubprotocol)
    } else {
        Ok(None)
    }
}

pub(crate) fn parse_since(query: &HashMap<String, String>) -> Result<Option<Position>, Rejection> {
    match (query.get("since"), query.get("epoch")) {
        (None, None) => Ok(None),
        (Some(s), Some(e)) => {
            let offset = s.parse::<u64>().map_err(|_| {
                Rejection::BadRequest("`since` must be a non-negative integer offset".into())
            })?;
            if e.len() > crate::protocol::frame::MAX_EPOCH {
                return Err(Rejection::BadRequest("`epoch` is too long".into()));
            }
            Ok(Some(Position {
                offset,
                epoch: Arc::from(e.as_str()),
            }))
        }
        _ => Err(Rejection::BadRequest(
            "`since` and `epoch` go together: give both or neither".into(),
        )),
    }
}

/// The permessage-deflate offer accepted among the request's `Sec-WebSocket-Extensions`, when
/// `compression` is on; `None` (the upgrade goes on without it) when none can be honoured. A
/// header value that is not ASCII offers nothing.
pub(super) fn deflate_offer(gw: &Gateway, headers: &HeaderMap) -> Option<Agreed> {
    if !gw.config.compression.enabled {
        return None;
    }
    let values = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok());
    match deflate::negotiate(values) {
        Ok(agreed) => Some(agreed),
        Err(Declined::NotOffered) => None,
        Err(why) => {
            tracing::debug!("permessage-deflate {why}; going on without it");
            None
        }
    }
}

/// The `Sec-WebSocket-Key` of a valid RFC 6455 upgrade request.
pub(super) fn handshake_key(req: &Request) -> Result<Vec<u8>, Rejection> {
    let headers = req.headers();
    if req.method() != Method::GET
        || !header_has_token(headers, header::CONNECTION, "upgrade")
        || !header_has_token(headers, header::UPGRADE, "websocket")
    {
        return Err(Rejection::NotWebSocket(
            "expected GET with Connection: Upgrade and Upgrade: websocket",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(Rejection::NotWebSocket("Sec-WebSocket-Version must be 13"));
    }
    match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(k) if k.len() == 24 => Ok(k.as_bytes().to_vec()),
        _ => Err(Rejection::NotWebSocket(
            "missing or malformed Sec-WebSocket-Key",
        )),
    }
}

/// The 101 answer to a handshake with `key`, naming `subprotocol` when one was chosen and the
/// permessage-deflate agreement when there is one.
pub(super) fn switching(
    key: &[u8],
    subprotocol: Option<&'static str>,
    deflate: Option<Agreed>,
) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    let accept = crate::protocol::websocket::accept_key(key);
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    if let Some(p) = subprotocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    if let Some(d) = deflate {
        h.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(d.answer()),
        );
    }
    resp
}

async fn upgrade(
    gw: Arc<Gateway>,
    mut req: Request,
    topic: Option<String>,
) -> Result<Response, Rejection> {
    let started = std::time::Instant::now();
    if gw.closing.load(Ordering::Relaxed) {
        return Err(Rejection::Draining);
    }
    let key = handshake_key(&req)?;
    let headers = req.headers();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let o = origin.to_str().unwrap_or("");
        if !gw.config.origin_allowed(o) {
            return Err(Rejection::OriginNotAllowed(o.chars().take(100).collect()));
        }
    }
    let chosen = choose_codec(headers)?;
    let agreed = deflate_offer(&gw, headers);
    let query = Query::<HashMap<String, String>>::try_from_uri(req.uri())
        .map_err(|e| Rejection::BadRequest(format!("bad query string: {e}")))?
        .0;
    let endpoint = match topic {
        None => Endpoint::Multiplexed,
        Some(name) => {
            let t = Topic::parse(&name).map_err(Rejection::BadTopic)?;
            Endpoint::Topic(t, parse_since(&query)?)
        }
    };
    // A client that a trusted proxy names per request counts against its address here, for as
    // long as its WebSocket is open (its TCP connection is the proxy's, counted at accept).
    let address_permit = match req.extensions().get::<ConnInfo>() {
        Some(info) if info.forwarded => {
            let client = info.client_of(req.headers(), &gw.config.limits);
            Some(gw.conns.admit_forwarded(client)?)
        }
        _ => None,
    };
    // The headers some service forwards, as the client sent them at the upgrade.
    let forwarded: Vec<(String, String)> = gw
        .proxy
        .forwarded_headers()
        .iter()
        .filter_map(|name| {
            let v = req.headers().get(name.as_str())?.to_str().ok()?;
            Some((name.clone(), v.to_owned()))
        })
        .collect();
    let identity = match (query.get("ticket"), &gw.config.auth_service) {
        (None, Some(service)) => {
            let from = Asker::of(&gw, &req);
            hook(&gw, from, service, &forwarded).await?
        }
        (ticket, _) => gw.tickets.redeem(ticket.map(String::as_str)).await?,
    };
    if let Endpoint::Topic(t, _) = &endpoint
        && !identity.grants.can_subscribe(t.as_str())
    {
        return Err(Rejection::Forbidden(format!(
            "this ticket's grants do not allow subscribing to {t:?}"
        )));
    }
    // Before the 101: counted across the cluster and its user's channel watched (together, one
    // round trip's time), recorded in the hub with its `welcome` queued (so directed messages
    // reach it from here), and only then its connect recorded. Undone on every way out; once
    // it runs, uncounted (and its disconnect recorded) when the connection ends.
    //
    // All of it runs in the connection's own task, which this handler only waits for: a client
    // that goes away mid-upgrade cancels the handler, and a setup cancelled half-way would leave
    // the connection in the hub and its user's channel watched for ever. The task sees such a
    // client as an upgrade that never completes, and undoes everything.
    let conn_num = gw.next_conn_key.fetch_add(1, Ordering::Relaxed);
    let conn_key: Arc<str> = Arc::from(super::conn_id(&gw.config.node_id, conn_num));
    let limit = gw.config.max_connections_per_user;
    let user = identity.user.clone();
    let codec = chosen.unwrap_or(Codec::Json);
    let deflate = agreed.is_some();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (set_up, set_up_rx) = tokio::sync::oneshot::channel::<Result<(), Rejection>>();
    let task_gw = gw.clone();
    // A debug span: with `herald=debug` every line of the connection carries its id, user and
    // node. Not at info: a span lives as long as its connection, in the subscriber's registry
    // (with its formatted fields), 0.40 KiB per idle connection in scenario (d) (2.99 against
    // 2.59 KiB); the few info lines a connection writes (a slow consumer's) name it themselves.
    let span = tracing::debug_span!(
        "conn",
        conn = &*conn_key,
        user = &*user,
        node = gw.config.node_id.as_str()
    );
    let ending = Ending {
        gw: gw.clone(),
        _address_permit: address_permit.map(Box::new),
    };
    let task = async move {
        let gw = task_gw;
        let (opened, user_watched) = tokio::join!(
            gw.bus.open_conn(&user, &conn_key, limit),
            gw.watch_user(&user)
        );
        if !matches!(opened, Ok(true)) {
            if user_watched.is_ok() {
                gw.unwatch_user(&user).await;
            }
            let _ = set_up.send(Err(match opened {
                Ok(_) => Rejection::TooManyUserConnections(limit),
                Err(e) => e.into(),
            }));
            return;
        }
        let sub = connection::register(
            &gw,
            &identity,
            &conn_key,
            conn_num,
            codec,
            deflate,
            &user_watched,
        );
        let user_watched = user_watched.is_ok();
        if let Err(e) = gw.events.connected(&conn_key, &user).await {
            connection::unregister(&gw, &user, &sub, user_watched).await;
            let _ = gw.bus.close_conn(&user, &conn_key).await;
            let _ = set_up.send(Err(e.into()));
            return;
        }
        // The handler answers 101 now; if it is gone, the upgrade below never completes.
        let _ = set_up.send(Ok(()));
        let ended = |code: u16| connection::Ended {
            code,
            conn: conn_key.clone(),
            user: user.clone(),
        };
        let taken = match on_upgrade.await {
            Ok(u) => take_stream(u),
            Err(e) => {
                tracing::debug!("upgrade did not complete: {e}");
                connection::unregister(&gw, &user, &sub, user_watched).await;
                return ending.record(ended(close::ABNORMAL)).await;
            }
        };
        let Some(taken) = taken else {
            tracing::error!("upgraded connection is neither TCP nor TLS over TCP");
            connection::unregister(&gw, &user, &sub, user_watched).await;
            return ending.record(ended(CloseCode::Internal.code())).await;
        };
        let accepted = connection::Accepted {
            gw,
            sub,
            user_watched,
            identity,
            forwarded,
            conn: conn_key.clone(),
            codec,
            endpoint,
        };
        tracing::debug!(?codec, deflate, "connection open");
        match taken {
            Taken::Plain(io, buf) => {
                // Plain TCP: the fan-out may write to the socket itself while the connection's
                // writer is idle (TLS records need the connection's own TLS state).
                let fd = std::os::fd::AsRawFd::as_raw_fd(io.get_ref());
                spawn_connection(connection::run(accepted, io, buf, Some(fd)), ending)
            }
            Taken::Tls(io, buf) => {
                spawn_connection(connection::run(accepted, io, buf, None), ending)
            }
        }
    };
    gw.tracker.spawn(task.instrument(span));
    match set_up_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(refused)) => return Err(refused),
        Err(_) => {
            return Err(Rejection::Unavailable(crate::bus::BusError::Unavailable(
                "the connection's setup ended without an answer".into(),
            )));
        }
    }
    gw.metrics.handshake.record(started.elapsed().as_secs_f64());
    Ok(switching(&key, chosen.map(Codec::subprotocol), agreed))
}

/// Who asks for an upgrade without a ticket, taken from the request (which cannot be held
/// across an await: its body is not `Sync`).
struct Asker {
    address: std::net::IpAddr,
    path: String,
    origin: Option<String>,
}

impl Asker {
    fn of(gw: &Gateway, req: &Request) -> Asker {
        let address = client_of(gw, req);
        let origin = req.headers().get(header::ORIGIN);
        Asker {
            address,
            path: req.uri().path().to_owned(),
            origin: origin.and_then(|o| o.to_str().ok()).map(str::to_owned),
        }
    }
}

/// Authenticates an upgrade without a ticket through the auth hook (its Origin already
/// checked), counted like a ticket: per client address, then per user.
async fn hook(
    gw: &Gateway,
    from: Asker,
    service: &str,
    forwarded: &[(String, String)],
) -> Result<crate::auth::Identity, Rejection> {
    let address = from.address;
    gw.tickets_by_ip
        .take(&super::limits::IpKey::of(address))
        .map_err(|retry_after| Rejection::TooFast {
            what: "sessions checked for this address",
            retry_after,
        })?;
    let ask = auth_hook::Request {
        address,
        path: &from.path,
        origin: from.origin.as_deref(),
        node: &gw.config.node_id,
        headers: forwarded,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let identity = auth_hook::authenticate(&gw.proxy, service, ask, now)
        .await
        .inspect_err(|e| match e {
            auth_hook::HookError::Unavailable(_) | auth_hook::HookError::BadAnswer(_) => {
                let cause = std::error::Error::source(e).map(ToString::to_string);
                tracing::warn!(service, client = %address, error = %e, ?cause, "auth hook failed: 503");
            }
            _ => tracing::debug!(service, client = %address, error = %e, "auth hook refused"),
        })?;
    gw.tickets_by_user
        .take(&identity.user)
        .map_err(|retry_after| Rejection::TooFast {
            what: "connections for this user",
            retry_after,
        })?;
    Ok(identity)
}
