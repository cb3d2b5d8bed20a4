//! Opening a Herald WebSocket: ticket, TCP connect, upgrade, `welcome`, and request/reply on the
//! control path (`sub`). Errors are short strings: they become failure categories in the report.
//! The steps after the connect work over any stream (plain TCP, or TLS for storm mode).

use crate::codec::{self, Codec};
use crate::http::{Target, Tickets};
use crate::wire::{self, FrameReader, MaskRng, OP_PING, WireError};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// An open WebSocket (welcomed, once `open` or `welcome` returned).
pub(crate) struct Ws<S = TcpStream> {
    pub stream: S,
    pub reader: FrameReader,
    pub rng: MaskRng,
    pub codec: Codec,
    /// The server agreed to permessage-deflate.
    pub deflate: bool,
}

/// A shorter, stable category for an error (numbers that vary per connection are dropped).
pub(crate) fn wire_err(stage: &str, e: WireError) -> String {
    match e {
        WireError::Refused { status, body } => {
            format!(
                "{stage}: HTTP {status} {}",
                crate::http::error_code(body.as_bytes())
            )
        }
        other => format!("{stage}: {other}"),
    }
}

/// Opens a WebSocket, offering permessage-deflate when `deflate` (the server may decline it).
/// Without `tickets` (`--baseline`), the upgrade carries no ticket.
pub(crate) async fn open(
    target: &Target,
    tickets: Option<&Tickets>,
    codec: Codec,
    deflate: bool,
) -> Result<Ws, String> {
    let ticket = match tickets {
        Some(t) => Some(t.get().await?),
        None => None,
    };
    let stream = target
        .connect()
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {e}"))?;
    let mut ws = upgrade(stream, &target.authority, ticket.as_deref(), codec, deflate).await?;
    ws.welcome().await?;
    Ok(ws)
}

/// The upgrade on `/ws` with `ticket` (none: `/ws` alone), over a connected `stream`, up to the
/// 101; offering permessage-deflate when `deflate` (the server may decline it).
pub(crate) async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    authority: &str,
    ticket: Option<&str>,
    codec: Codec,
    deflate: bool,
) -> Result<Ws<S>, String> {
    let path = match ticket {
        Some(t) => format!("/ws?ticket={t}"),
        None => "/ws".to_owned(),
    };
    let (leftover, agreed) =
        wire::upgrade(&mut stream, authority, &path, codec.subprotocol(), deflate)
            .await
            .map_err(|e| wire_err("upgrade", e))?;
    Ok(Ws {
        stream,
        reader: FrameReader::new(leftover, agreed),
        rng: MaskRng::new(),
        codec,
        deflate: agreed,
    })
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    s.chars().take(120).collect()
}

impl<S: AsyncRead + AsyncWrite + Unpin> Ws<S> {
    /// Waits for the first frame, which must be `welcome`.
    pub(crate) async fn welcome(&mut self) -> Result<(), String> {
        let welcome = self
            .next_message()
            .await
            .map_err(|e| wire_err("welcome", e))?;
        match welcome.get("op").and_then(Value::as_str) {
            Some("welcome") => Ok(()),
            _ => Err(format!(
                "welcome: unexpected first frame {}",
                short(&welcome)
            )),
        }
    }

    /// Send one request (a masked data frame in the codec's frame type).
    pub(crate) async fn send(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        wire::push_frame(&mut out, self.codec.opcode(), payload, &mut self.rng);
        self.stream.write_all(&out).await
    }

    /// The next data frame, decoded; pings are answered on the way.
    pub(crate) async fn next_message(&mut self) -> Result<Value, WireError> {
        loop {
            let f = self.reader.next(&mut self.stream).await?;
            if f.opcode == OP_PING {
                let mut out = Vec::with_capacity(f.payload.len() + 6);
                wire::push_frame(&mut out, wire::OP_PONG, f.payload, &mut self.rng);
                self.stream.write_all(&out).await?;
                continue;
            }
            if f.opcode != wire::OP_TEXT && f.opcode != wire::OP_BINARY {
                continue;
            }
            return codec::decode(self.codec, f.payload)
                .ok_or_else(|| WireError::Protocol("undecodable frame".into()));
        }
    }

    /// Wait for the reply to request `id`, skipping other frames (bounded by the caller's timeout).
    pub(crate) async fn reply(&mut self, id: u64) -> Result<Value, WireError> {
        loop {
            let v = self.next_message().await?;
            if v.get("id").and_then(Value::as_u64) == Some(id) {
                return Ok(v);
            }
            if v.get("op").and_then(Value::as_str) == Some("error") && v.get("id").is_none() {
                return Err(WireError::Protocol(format!("server error {}", short(&v))));
            }
        }
    }

    /// Subscribe to `topic`; returns the `ok` reply's epoch.
    pub(crate) async fn subscribe(&mut self, topic: &str) -> Result<String, String> {
        let req = codec::sub_request(self.codec, 1, topic);
        self.send(&req)
            .await
            .map_err(|e| format!("sub send: {}", e.kind()))?;
        let v = self.reply(1).await.map_err(|e| wire_err("sub", e))?;
        match v.get("op").and_then(Value::as_str) {
            Some("ok") => Ok(v
                .get("epoch")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()),
            Some("error") => Err(format!(
                "sub refused: {}",
                v.get("code").and_then(Value::as_str).unwrap_or("?")
            )),
            _ => Err(format!("sub: unexpected reply {}", short(&v))),
        }
    }
}
