//! `GET /conformance/echo`, only in builds with the cargo feature `conformance` (never a default
//! or release build): a WebSocket with no ticket that echoes every message through Herald's own
//! framing ([`crate::protocol::websocket`]), so that the Autobahn cases (`kosoku`) test the very
//! code that serves clients. Its connections count and time out like every other. It negotiates
//! permessage-deflate as `/ws` does ([`super::upgrade::deflate_offer`]); where it was agreed, it
//! inflates the client's compressed messages and compresses every echo once, whatever its size
//! (even where that makes it larger: kosoku hashes an uncompressed text echo on a compressed
//! connection as a `str` and fails the case), so that the compression cases (12.*, 13.*) test
//! the node's own deflate and inflate.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Gateway;
use super::rejection::Rejection;
use super::upgrade::{Taken, deflate_offer, handshake_key, switching, take_stream};
use crate::protocol::CloseCode;
use crate::protocol::deflate::always_compressed_frame;
use crate::protocol::websocket::{Assembler, Incoming, OpCode, Step, close_frame, server_frame};

/// The upgrade: checked as any other (draining, a valid handshake), then echoed.
pub async fn echo(State(gw): State<Arc<Gateway>>, mut req: Request) -> Result<Response, Rejection> {
    if gw.closing.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Rejection::Draining);
    }
    let key = handshake_key(&req)?;
    let agreed = deflate_offer(&gw, req.headers());
    let deflate = agreed.is_some();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let limit = gw.config.max_message_bytes;
    gw.tracker.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        match take_stream(upgraded) {
            Some(Taken::Plain(io, buf)) => run(io, buf.to_vec(), limit, deflate).await,
            Some(Taken::Tls(io, buf)) => run(io, buf.to_vec(), limit, deflate).await,
            None => {}
        }
    });
    Ok(switching(&key, None, agreed))
}

/// Echoes until the peer closes or breaks the protocol; compressed where `deflate` was agreed.
async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    mut buf: Vec<u8>,
    limit: usize,
    deflate: bool,
) {
    let mut asm = Assembler::server(limit).with_deflate(deflate);
    let echo = |opcode: OpCode, p: &[u8]| {
        if deflate {
            always_compressed_frame(opcode, p)
        } else {
            server_frame(opcode, p)
        }
    };
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match asm.step(&buf) {
            Ok(Step::NeedMore) => match io.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            },
            Ok(Step::Consumed(n)) => {
                buf.drain(..n);
            }
            Ok(Step::Message(n, m)) => {
                buf.drain(..n);
                let out = match m {
                    Incoming::Text(p) => echo(OpCode::Text, &p),
                    Incoming::Binary(p) => echo(OpCode::Binary, &p),
                    Incoming::Ping(p) => server_frame(OpCode::Pong, &p),
                    Incoming::Pong => continue,
                    Incoming::Close(code) => {
                        let _ = io
                            .write_all(&close_frame(code.unwrap_or(CloseCode::Normal.code()), ""))
                            .await;
                        let _ = io.shutdown().await;
                        return;
                    }
                };
                if io.write_all(&out).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let code = e.close_code();
                let _ = io.write_all(&close_frame(code.code(), code.reason())).await;
                let _ = io.shutdown().await;
                return;
            }
        }
    }
}
