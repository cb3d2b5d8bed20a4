//! The WebSocket upgrade by hand over a `TcpStream`, for exact control of the request headers and
//! a view of the refusal's status and JSON body; then raw frames both ways, built with
//! `herald::protocol::websocket`, for what a WebSocket library would never send. A raw client
//! never answers pings.

use std::net::SocketAddr;
use std::time::Duration;

use herald::protocol::websocket::{Assembler, Incoming, OpCode, Step, client_frame};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::WAIT;

/// The masking key of every raw client frame.
pub(crate) const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// The answer to a hand-made upgrade request.
pub(crate) struct Upgrade {
    /// The HTTP status.
    pub status: u16,
    /// The response headers (names lowercase).
    pub headers: Vec<(String, String)>,
    /// The body as JSON (`Null` when empty).
    pub body: Value,
    stream: TcpStream,
    leftover: Vec<u8>,
}

impl Upgrade {
    /// The value of response header `name` (lowercase), if present.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The refusal's `error` code ("" when there is none).
    pub(crate) fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }

    /// Asserts a refusal with `status` and `error` code, and a human `message`.
    pub(crate) fn assert_refused(&self, status: u16, error: &str) {
        assert_eq!(
            (self.status, self.error()),
            (status, error),
            "body: {}",
            self.body
        );
        assert!(
            self.body["message"].is_string(),
            "a refusal has a message: {}",
            self.body
        );
    }

    /// The WebSocket, which must have been accepted (101).
    pub(crate) fn into_ws(self) -> RawWs {
        assert_eq!(self.status, 101, "the upgrade is accepted: {}", self.body);
        RawWs {
            stream: self.stream,
            buf: self.leftover,
            asm: Assembler::client(64 << 20),
        }
    }
}

/// A TCP connection to `addr` whose receive buffer is `rcvbuf` bytes (so it fills quickly).
pub(crate) async fn connect_small(addr: SocketAddr, rcvbuf: u32) -> TcpStream {
    let s = TcpSocket::new_v4().expect("a socket");
    s.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
    s.connect(addr).await.expect("connecting")
}

/// Sends `GET path` as a WebSocket upgrade (with a fixed key, version 13 and `extra` headers)
/// and reads the answer.
pub(crate) async fn upgrade(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> Upgrade {
    let stream = TcpStream::connect(addr).await.expect("connecting");
    upgrade_on(stream, addr, path, extra).await
}

/// [`upgrade`] over a stream already connected to `addr`.
pub(crate) async fn upgrade_on(
    mut stream: TcpStream,
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
) -> Upgrade {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.expect("writing");
    // One bound for the whole answer, however it is split into reads.
    let deadline = tokio::time::Instant::now() + WAIT;
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read_more(&mut stream, &mut buf, left())
            .await
            .expect("the upgrade is answered");
    };
    let mut rest = buf.split_off(head_end);
    let head = String::from_utf8(buf).expect("an ASCII response head");
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {head}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = Value::Null;
    if status != 101 {
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while rest.len() < len {
            read_more(&mut stream, &mut rest, left())
                .await
                .expect("the whole body");
        }
        if len > 0 {
            body = serde_json::from_slice(&rest[..len]).unwrap_or_else(|_| {
                panic!("a JSON body: {}", String::from_utf8_lossy(&rest[..len]))
            });
        }
        rest.clear();
    }
    Upgrade {
        status,
        headers,
        body,
        stream,
        leftover: rest,
    }
}

/// Reads once into `buf`; `Err` on end of stream, error or timeout.
async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>, bound: Duration) -> Result<(), String> {
    let mut chunk = [0u8; 16384];
    match tokio::time::timeout(bound, s.read(&mut chunk)).await {
        Err(_) => Err(format!("nothing read within {bound:?}")),
        Ok(Ok(0)) => Err("the connection ended".into()),
        Ok(Ok(n)) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Ok(Err(e)) => Err(format!("read failed: {e}")),
    }
}

/// A WebSocket driven frame by frame.
pub(crate) struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
    asm: Assembler,
}

impl RawWs {
    /// Writes bytes as they are.
    pub(crate) async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("writing");
    }

    /// Sends a masked, final frame.
    pub(crate) async fn send_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        self.write(&client_frame(opcode, true, payload, MASK)).await;
    }

    /// The next whole message or control frame from the server, within `bound`.
    pub(crate) async fn next_incoming_within(&mut self, bound: Duration) -> Incoming {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            match self
                .asm
                .step(&self.buf)
                .expect("the server frames correctly")
            {
                Step::NeedMore => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if let Err(e) = read_more(&mut self.stream, &mut self.buf, left).await {
                        panic!("waiting for a frame: {e}");
                    }
                }
                Step::Consumed(n) => {
                    self.buf.drain(..n);
                }
                Step::Message(n, m) => {
                    self.buf.drain(..n);
                    return m;
                }
            }
        }
    }

    /// The next server frame other than a ping, as it came: its first byte (FIN, RSV1-3,
    /// opcode) and its payload, not inflated, within [`WAIT`]. For a look at the wire itself
    /// (RSV1, sizes); not for use inside a fragmented message.
    pub(crate) async fn next_wire_frame(&mut self) -> (u8, Vec<u8>) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some((b0, start, len)) = server_frame_header(&self.buf)
                && self.buf.len() >= start + len
            {
                let payload = self.buf[start..start + len].to_vec();
                self.buf.drain(..start + len);
                if b0 & 0x0f != 0x9 {
                    return (b0, payload);
                }
                continue;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Err(e) = read_more(&mut self.stream, &mut self.buf, left).await {
                panic!("waiting for a frame: {e}");
            }
        }
    }

    /// The next data frame decoded (text as JSON, binary as MessagePack); pings are skipped
    /// unanswered. Fails the test on a close frame, or when no data frame arrives within
    /// [`WAIT`] (pings do not extend it).
    pub(crate) async fn next_frame(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_incoming_within(left).await {
                Incoming::Close(c) => panic!("closed with {c:?} while waiting for a frame"),
                Incoming::Text(t) => return serde_json::from_slice(&t).expect("JSON text"),
                Incoming::Binary(b) => return rmp_serde::from_slice(&b).expect("MessagePack"),
                Incoming::Ping(_) | Incoming::Pong => {}
            }
        }
    }

    /// Reads what is left until the connection ends, and checks that the server reset it (RST)
    /// rather than closed it (FIN): a socket it dropped with unsent bytes is freed at once.
    /// Fails the test when that takes more than [`WAIT`], however much is read meanwhile.
    pub(crate) async fn expect_reset(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => panic!("the connection neither ended nor was reset"),
                Ok(Ok(0)) => panic!("the server closed with FIN, keeping its unsent bytes"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Ok(Err(e)) => panic!("reading: {e}"),
            }
        }
    }

    /// Reads until the server's close frame (skipping everything else) and returns its code.
    pub(crate) async fn expect_close_within(&mut self, bound: Duration) -> u16 {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Incoming::Close(code) = self.next_incoming_within(left).await {
                return code.expect("a close frame with a code");
            }
        }
    }
}

/// The first byte, the payload's start and its length, of the unmasked frame at the start of
/// `buf`, once its header is there.
fn server_frame_header(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    assert_eq!(b1 & 0x80, 0, "server frames are not masked");
    Some(match b1 & 0x7f {
        126 => (
            b0,
            4,
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
        ),
        127 => {
            let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (b0, 10, u64::from_be_bytes(b) as usize)
        }
        n => (b0, 2, usize::from(n)),
    })
}
