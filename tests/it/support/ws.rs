//! A WebSocket client (tokio-tungstenite) that speaks either codec: frames go out as JSON text or
//! MessagePack binary, and come back decoded into `serde_json::Value` whatever their encoding.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{Codec, WAIT};

/// A connected WebSocket client.
pub(crate) struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The codec it speaks.
    pub codec: Codec,
}

/// Opens `ws://addr{path}`, offering `codec`'s subprotocol (none: no header, JSON) plus `headers`.
pub(crate) async fn open(
    addr: SocketAddr,
    path: &str,
    codec: Option<Codec>,
    headers: &[(&str, &str)],
) -> Result<(Client, Response), Error> {
    let mut req = format!("ws://{addr}{path}").into_client_request()?;
    if let Some(c) = codec {
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(c.subprotocol()),
        );
    }
    for (k, v) in headers {
        req.headers_mut().insert(
            HeaderName::from_bytes(k.as_bytes()).expect("a header name"),
            HeaderValue::from_str(v).expect("a header value"),
        );
    }
    let (ws, resp) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async_with_config(req, None, true),
    )
    .await
    .expect("the upgrade is answered")?;
    let codec = codec.unwrap_or(Codec::Json);
    Ok((Client { ws, codec }, resp))
}

/// Encodes a frame the way `codec` sends it.
pub(crate) fn encode(codec: Codec, frame: &Value) -> Message {
    match codec {
        Codec::Json => Message::text(frame.to_string()),
        Codec::MsgPack => Message::binary(rmp_serde::to_vec_named(frame).expect("msgpack")),
    }
}

/// Decodes a data message: text as JSON, binary as MessagePack.
pub(crate) fn decode(m: &Message) -> Option<Value> {
    match m {
        Message::Text(t) => Some(serde_json::from_str(t).expect("the server sends JSON text")),
        Message::Binary(b) => {
            Some(rmp_serde::from_slice(b).expect("the server sends MessagePack binary"))
        }
        _ => None,
    }
}

impl Client {
    /// Sends `frame` in the connection's codec.
    pub(crate) async fn send_json(&mut self, frame: Value) {
        let m = encode(self.codec, &frame);
        self.send(m).await;
    }

    /// Sends a message as it is (any frame type, any payload).
    pub(crate) async fn send(&mut self, m: Message) {
        self.ws.send(m).await.expect("sending a message");
    }

    /// Closes with `code` and waits (bounded) for the server's close and the end of the stream.
    pub(crate) async fn close(&mut self, code: u16) {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        let frame = CloseFrame {
            code: code.into(),
            reason: "".into(),
        };
        self.ws
            .send(Message::Close(Some(frame)))
            .await
            .expect("sending close");
        let _ = tokio::time::timeout(WAIT, async { while self.ws.next().await.is_some() {} }).await;
    }

    /// Queues messages without flushing; [`Client::flush`] sends them together.
    pub(crate) async fn feed(&mut self, m: Message) {
        self.ws.feed(m).await.expect("queueing a message");
    }

    /// Sends everything queued by [`Client::feed`].
    pub(crate) async fn flush(&mut self) {
        self.ws.flush().await.expect("flushing");
    }

    /// The next data frame, decoded; pings are skipped (and answered by tungstenite). Fails the
    /// test on a close or when no data frame arrives within [`WAIT`] (pings do not extend it).
    pub(crate) async fn next_frame(&mut self) -> Value {
        match self.next_event().await {
            Ok(v) => v,
            Err(code) => panic!("closed with {code} while waiting for a frame"),
        }
    }

    /// The next data frame (`Ok`) or the server's close code (`Err`); pings are skipped. Fails
    /// the test when the connection ends without a close frame or nothing comes within [`WAIT`].
    pub(crate) async fn next_event(&mut self) -> Result<Value, u16> {
        self.next_event_within(WAIT).await
    }

    /// [`Client::next_event`] with another bound.
    pub(crate) async fn next_event_within(&mut self, bound: Duration) -> Result<Value, u16> {
        let deadline = tokio::time::Instant::now() + bound;
        self.next_event_until(deadline, bound).await
    }

    /// The next data frame or close code before `deadline` (`bound` after the wait began, for
    /// the failure message); pings are skipped without moving the deadline.
    async fn next_event_until(
        &mut self,
        deadline: tokio::time::Instant,
        bound: Duration,
    ) -> Result<Value, u16> {
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("nothing within {bound:?}"));
            match m {
                Some(Ok(Message::Close(Some(f)))) => return Err(u16::from(f.code)),
                Some(Ok(Message::Close(None))) => panic!("a close frame without a code"),
                Some(Ok(m)) => {
                    if let Some(v) = decode(&m) {
                        return Ok(v);
                    }
                }
                Some(Err(e)) => panic!("connection failed: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// The next data frame, or `None` once the connection is gone (closed, reset, or ended, as
    /// when its node is killed). Fails the test when neither happens within [`WAIT`] (pings do
    /// not extend it).
    pub(crate) async fn next_or_gone(&mut self) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("nothing within {WAIT:?}"));
            match m {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                Some(Ok(m)) => {
                    if let Some(v) = decode(&m) {
                        return Some(v);
                    }
                }
            }
        }
    }

    /// The next data frame (`Ok`), or how the connection ended (`Err`): the server's close code,
    /// or `None` when it broke or ended without one. Fails the test when neither happens within
    /// `bound` (pings do not extend it).
    pub(crate) async fn next_or_end_within(
        &mut self,
        bound: Duration,
    ) -> Result<Value, Option<u16>> {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("nothing within {bound:?}"));
            match m {
                Some(Ok(Message::Close(f))) => return Err(f.map(|f| u16::from(f.code))),
                Some(Err(_)) | None => return Err(None),
                Some(Ok(m)) => {
                    if let Some(v) = decode(&m) {
                        return Ok(v);
                    }
                }
            }
        }
    }

    /// Reads until the server's close frame and returns its code, skipping data frames. Fails the
    /// test when the connection ends without one or nothing arrives within [`WAIT`].
    pub(crate) async fn expect_close(&mut self) -> u16 {
        self.expect_close_within(WAIT).await
    }

    /// [`Client::expect_close`] with another bound.
    pub(crate) async fn expect_close_within(&mut self, bound: Duration) -> u16 {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no close frame within {bound:?}"));
            match m {
                Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
                Some(Ok(Message::Close(None))) => panic!("a close frame without a code"),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("connection failed before a close frame: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// Reads until `n` pings have come (tungstenite answers each one as it reads it); fails the
    /// test if the connection closes first, or the pings do not all come within `bound`.
    /// Returns the data frames read meanwhile.
    pub(crate) async fn answer_pings(&mut self, n: usize, bound: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + bound;
        let (mut pings, mut frames) = (0, Vec::new());
        while pings < n {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{pings} pings of {n} within {bound:?}"));
            match m {
                Some(Ok(Message::Ping(_))) => pings += 1,
                Some(Ok(Message::Close(c))) => {
                    panic!("closed by the server after {pings} pings: {c:?}")
                }
                Some(Ok(m)) => frames.extend(decode(&m)),
                Some(Err(e)) => panic!("connection failed: {e}"),
                None => panic!("connection ended"),
            }
        }
        frames
    }

    /// Sends a request and returns its answer: the first reply carrying its `id`, or an
    /// id-less `rate_limited` error (the rate limit dropped the frame undecoded, so its answer
    /// has no `id`: proto/README.md section 5.4). Other frames in between (`msg`, pushes, other
    /// id-less errors, pings) are skipped. Fails the test on a close, or when no answer comes
    /// within [`WAIT`] of the send, however many frames were skipped meanwhile. Meant for one
    /// request in flight: a `rate_limited` is taken as this request's.
    pub(crate) async fn request(&mut self, frame: Value) -> Value {
        self.try_request(frame)
            .await
            .unwrap_or_else(|code| panic!("closed with {code} while waiting for an answer"))
    }

    /// [`Client::request`], or (`Err`) the server's close code when it closes first.
    pub(crate) async fn try_request(&mut self, frame: Value) -> Result<Value, u16> {
        let id = frame["id"].clone();
        self.send_json(frame).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let f = self.next_event_until(deadline, WAIT).await?;
            let answers = match f.get("id") {
                Some(got) => f["op"] != "msg" && *got == id,
                None => f["op"] == "error" && f["code"] == "rate_limited",
            };
            if answers {
                return Ok(f);
            }
        }
    }

    /// Subscribes to `topic` (request `id`) and returns the `ok`, failing the test on anything else.
    pub(crate) async fn sub(&mut self, id: u64, topic: &str) -> Value {
        let r = self
            .request(json!({"op": "sub", "id": id, "topic": topic}))
            .await;
        assert_eq!(r["op"], "ok", "sub {topic}: {r}");
        r
    }

    /// Subscribes with `since`; returns the reply as it came.
    pub(crate) async fn sub_since(
        &mut self,
        id: u64,
        topic: &str,
        offset: u64,
        epoch: &str,
    ) -> Value {
        self.request(json!({
            "op": "sub", "id": id, "topic": topic,
            "since": {"offset": offset, "epoch": epoch},
        }))
        .await
    }

    /// The next frame, which must be a `msg` of `topic`; returns it.
    pub(crate) async fn next_msg(&mut self, topic: &str) -> Value {
        let f = self.next_frame().await;
        assert_eq!(f["op"], "msg", "expected a msg of {topic}: {f}");
        assert_eq!(f["topic"], topic, "{f}");
        f
    }

    /// Reads the `msg` frames with exactly `offsets`, in order (no other frame in between).
    pub(crate) async fn expect_offsets(
        &mut self,
        topic: &str,
        offsets: RangeInclusive<u64>,
    ) -> Vec<Value> {
        let mut out = Vec::new();
        for want in offsets {
            let m = self.next_msg(topic).await;
            assert_eq!(m["offset"], want, "offsets arrive in order, no gap: {m}");
            out.push(m);
        }
        out
    }
}
