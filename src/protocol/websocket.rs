//! RFC 6455 framing, both directions, as pure functions over byte slices.
//!
//! Server frames are never masked, so a frame's bytes (header and payload) are the same for
//! every subscriber: [`FrameBuf`] builds one in place, once, and the hub hands the resulting
//! `Bytes` to every outbox. Client frames are parsed by [`Assembler`], which enforces the
//! message size limit as soon as a header announces the size, joins fragments, answers the
//! RFC's rules for control frames and checks UTF-8 of text messages. On a connection that
//! negotiated permessage-deflate it also inflates the messages whose first frame has RSV1 set,
//! bounded by the same limit ([`super::deflate`]).

use base64::Engine;
use bytes::{Buf, Bytes};
use sha1::{Digest, Sha1};

/// Longest header of an unmasked frame: 2 bytes plus a 64-bit length.
pub const MAX_SERVER_HEADER: usize = 10;

/// The GUID of RFC 6455 section 1.3.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A frame's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0
    Continuation,
    /// 0x1
    Text,
    /// 0x2
    Binary,
    /// 0x8
    Close,
    /// 0x9
    Ping,
    /// 0xA
    Pong,
}

impl OpCode {
    fn from_bits(b: u8) -> Option<OpCode> {
        Some(match b {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// A violation of RFC 6455 or of the size limit by the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// The peer broke the framing rules; close with 1002.
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    /// A message over the limit; close with 1009.
    #[error("message of {size} bytes is over the limit of {limit} bytes")]
    TooBig {
        /// The announced (or accumulated) size.
        size: u64,
        /// The configured limit.
        limit: usize,
    },
    /// A text message that is not UTF-8; close with 1007.
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// A compressed message that does not inflate (not raw deflate data); close with 1007.
    #[error("compressed message is not valid deflate data")]
    BadDeflate,
}

impl WsError {
    /// The close code that tells the peer what it did wrong.
    pub fn close_code(&self) -> super::CloseCode {
        match self {
            WsError::Protocol(_) => super::CloseCode::ProtocolError,
            WsError::TooBig { .. } => super::CloseCode::TooBig,
            WsError::InvalidUtf8 | WsError::BadDeflate => super::CloseCode::InvalidPayload,
        }
    }
}

/// A whole message or control frame received from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A text message (UTF-8 checked).
    Text(Vec<u8>),
    /// A binary message.
    Binary(Vec<u8>),
    /// A ping, with its payload (to echo in the pong).
    Ping(Vec<u8>),
    /// A pong.
    Pong,
    /// A close frame, with its code if it had one.
    Close(Option<u16>),
}

/// What one call to [`Assembler::step`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The input holds no complete frame yet.
    NeedMore,
    /// A frame (a fragment) was consumed; call again.
    Consumed(usize),
    /// A frame was consumed and completed a message.
    Message(usize, Incoming),
}

/// Reassembles messages from frames received from a peer.
#[derive(Debug)]
pub struct Assembler {
    max_message: usize,
    /// Whether frames must be masked (true on the server side).
    expect_masked: bool,
    /// permessage-deflate was negotiated: RSV1 on a message's first frame means compressed.
    deflate: bool,
    /// The opcode, whether compressed, and bytes of a fragmented message in progress; empty
    /// when none.
    fragments: Option<(OpCode, bool, Vec<u8>)>,
}

impl Assembler {
    /// For a server reading client frames: every frame must be masked.
    pub fn server(max_message: usize) -> Assembler {
        Assembler {
            max_message,
            expect_masked: true,
            deflate: false,
            fragments: None,
        }
    }

    /// For a client reading server frames: no frame may be masked.
    pub fn client(max_message: usize) -> Assembler {
        Assembler {
            max_message,
            expect_masked: false,
            deflate: false,
            fragments: None,
        }
    }

    /// The same, on a connection that negotiated permessage-deflate (when `on`): a data message
    /// whose first frame has RSV1 set is inflated, to at most the message limit (1009 past it).
    pub fn with_deflate(mut self, on: bool) -> Assembler {
        self.deflate = on;
        self
    }

    /// True while a fragmented message is half received (the caller keeps its read buffer).
    pub fn in_message(&self) -> bool {
        self.fragments.is_some()
    }

    /// Parses at most one frame from the front of `input`.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, WsError> {
        if input.len() < 2 {
            return Ok(Step::NeedMore);
        }
        let b0 = input[0];
        let b1 = input[1];
        let fin = b0 & 0x80 != 0;
        let compressed = b0 & 0x40 != 0;
        if b0 & 0x30 != 0 || (compressed && !self.deflate) {
            return Err(WsError::Protocol(
                "reserved bits set without a negotiated extension",
            ));
        }
        let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(WsError::Protocol("reserved opcode"))?;
        if compressed && opcode.is_control() {
            return Err(WsError::Protocol("RSV1 set on a control frame"));
        }
        if compressed && opcode == OpCode::Continuation {
            return Err(WsError::Protocol("RSV1 set on a continuation frame"));
        }
        let masked = b1 & 0x80 != 0;
        if masked != self.expect_masked {
            return Err(WsError::Protocol(if self.expect_masked {
                "client frames must be masked"
            } else {
                "server frames must not be masked"
            }));
        }
        let (len, mut at) = match b1 & 0x7F {
            126 => {
                if input.len() < 4 {
                    return Ok(Step::NeedMore);
                }
                (u16::from_be_bytes([input[2], input[3]]) as u64, 4)
            }
            127 => {
                if input.len() < 10 {
                    return Ok(Step::NeedMore);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&input[2..10]);
                let n = u64::from_be_bytes(b);
                if n >> 63 != 0 {
                    return Err(WsError::Protocol("payload length has its top bit set"));
                }
                (n, 10)
            }
            n => (n as u64, 2),
        };
        if opcode.is_control() {
            if !fin {
                return Err(WsError::Protocol("fragmented control frame"));
            }
            if len > 125 {
                return Err(WsError::Protocol("control frame payload over 125 bytes"));
            }
        } else {
            // Refuse as soon as the header says the message is too big, before buffering it.
            let so_far = self
                .fragments
                .as_ref()
                .map_or(0, |(_, _, b)| b.len() as u64);
            if len.saturating_add(so_far) > self.max_message as u64 {
                return Err(WsError::TooBig {
                    size: len.saturating_add(so_far),
                    limit: self.max_message,
                });
            }
        }
        let mask = if masked {
            if input.len() < at + 4 {
                return Ok(Step::NeedMore);
            }
            let m = [input[at], input[at + 1], input[at + 2], input[at + 3]];
            at += 4;
            Some(m)
        } else {
            None
        };
        let len = len as usize;
        if input.len() < at + len {
            return Ok(Step::NeedMore);
        }
        let mut payload = input[at..at + len].to_vec();
        if let Some(m) = mask {
            apply_mask(&mut payload, m);
        }
        let used = at + len;
        let done = |m| Ok(Step::Message(used, m));
        match opcode {
            OpCode::Ping => done(Incoming::Ping(payload)),
            OpCode::Pong => done(Incoming::Pong),
            OpCode::Close => done(Incoming::Close(parse_close(&payload)?)),
            OpCode::Text | OpCode::Binary => {
                if self.fragments.is_some() {
                    return Err(WsError::Protocol(
                        "new data frame inside a fragmented message",
                    ));
                }
                if fin {
                    done(self.finish(opcode, compressed, payload)?)
                } else {
                    self.fragments = Some((opcode, compressed, payload));
                    Ok(Step::Consumed(used))
                }
            }
            OpCode::Continuation => {
                let Some((first, compressed, mut buf)) = self.fragments.take() else {
                    return Err(WsError::Protocol("continuation frame without a message"));
                };
                buf.extend_from_slice(&payload);
                if fin {
                    done(self.finish(first, compressed, buf)?)
                } else {
                    self.fragments = Some((first, compressed, buf));
                    Ok(Step::Consumed(used))
                }
            }
        }
    }
}

impl Assembler {
    /// A whole data message: inflated first when it was sent compressed (bounded by the
    /// message limit: a bomb is refused once its output reaches it, never allocated whole).
    fn finish(
        &self,
        opcode: OpCode,
        compressed: bool,
        payload: Vec<u8>,
    ) -> Result<Incoming, WsError> {
        let payload = if compressed {
            super::deflate::inflate(&payload, self.max_message)?
        } else {
            payload
        };
        finish(opcode, payload)
    }
}

fn finish(opcode: OpCode, payload: Vec<u8>) -> Result<Incoming, WsError> {
    if opcode == OpCode::Text {
        if simdutf8::basic::from_utf8(&payload).is_err() {
            return Err(WsError::InvalidUtf8);
        }
        Ok(Incoming::Text(payload))
    } else {
        Ok(Incoming::Binary(payload))
    }
}

fn parse_close(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(WsError::Protocol("close frame with a one-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            // The codes registered with IANA (1012-1014 included) and the application range.
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(WsError::Protocol("close frame with an invalid code"));
            }
            if simdutf8::basic::from_utf8(&payload[2..]).is_err() {
                return Err(WsError::InvalidUtf8);
            }
            Ok(Some(code))
        }
    }
}

/// XORs `data` with the masking key (RFC 6455 section 5.3).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let word = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Writes the header of an unmasked, final frame into the end of `out` and returns where it
/// starts.
pub fn server_header(opcode: OpCode, len: usize, out: &mut [u8; MAX_SERVER_HEADER]) -> usize {
    let b0 = 0x80 | opcode.bits();
    if len < 126 {
        out[8] = b0;
        out[9] = len as u8;
        8
    } else if len <= u16::MAX as usize {
        out[6] = b0;
        out[7] = 126;
        out[8..10].copy_from_slice(&(len as u16).to_be_bytes());
        6
    } else {
        out[0] = b0;
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        0
    }
}

/// A buffer that becomes one complete server frame: the payload is written after room for the
/// longest header, and [`FrameBuf::finish`] puts the header right before it, with no copy.
pub struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    /// A buffer for a payload of about `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> FrameBuf {
        let mut buf = Vec::with_capacity(capacity + MAX_SERVER_HEADER);
        buf.extend_from_slice(&[0u8; MAX_SERVER_HEADER]);
        FrameBuf { buf }
    }

    /// The payload so far; write into it (it starts empty).
    pub fn payload(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The whole frame: header plus payload, shared.
    pub fn finish(mut self, opcode: OpCode) -> Bytes {
        let len = self.buf.len() - MAX_SERVER_HEADER;
        let mut h = [0u8; MAX_SERVER_HEADER];
        let start = server_header(opcode, len, &mut h);
        self.buf[start..MAX_SERVER_HEADER].copy_from_slice(&h[start..]);
        let mut b = Bytes::from(self.buf);
        b.advance(start);
        b
    }
}

/// One complete server frame around `payload`.
pub fn server_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut f = FrameBuf::with_capacity(payload.len());
    f.payload().extend_from_slice(payload);
    f.finish(opcode)
}

/// A close frame with `code` and `reason` (truncated to fit 125 bytes).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut p = Vec::with_capacity(2 + reason.len());
    p.extend_from_slice(&code.to_be_bytes());
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    p.extend_from_slice(&reason.as_bytes()[..end]);
    server_frame(OpCode::Close, &p)
}

/// A masked client frame (for clients and tests), final unless `fin` is false.
pub fn client_frame(opcode: OpCode, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | opcode.bits());
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
    out
}

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

#[cfg(test)]
mod tests;
