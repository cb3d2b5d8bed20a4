//! WebSocket wire handling written for speed, with no WebSocket library: the HTTP/1.1 upgrade
//! (offering permessage-deflate when asked), frame headers, masked client frames, the inflation
//! of compressed messages, and a small frame reader for the control path (handshake, publisher
//! replies). The hot receive path (`rx.rs`) uses `head` directly on raw chunks.

use std::cell::RefCell;

use base64::Engine as _;
use flate2::{Decompress, FlushDecompress, Status};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub(crate) const OP_CONT: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;

/// Frames bigger than this are treated as a protocol error (the bench never expects them).
const MAX_FRAME: usize = 64 << 20;
/// Largest HTTP response head accepted during the upgrade.
const MAX_HEAD: usize = 16 << 10;
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed by server")]
    Eof,
    #[error("upgrade refused: HTTP {status} {body}")]
    Refused { status: u16, body: String },
    #[error("bad upgrade response: {0}")]
    BadUpgrade(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("server closed the WebSocket with code {0}")]
    Closed(u16),
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Head {
    pub fin: bool,
    /// RSV1: a compressed message (permessage-deflate), on its first frame.
    pub rsv1: bool,
    pub opcode: u8,
    pub head_len: usize,
    pub payload_len: usize,
    pub mask: Option<[u8; 4]>,
}

impl Head {
    pub(crate) fn total(&self) -> usize {
        self.head_len + self.payload_len
    }
}

/// How many header bytes are needed to parse the header that starts `buf` (2 until the second
/// byte is known).
pub(crate) fn head_len_needed(buf: &[u8]) -> usize {
    if buf.len() < 2 {
        return 2;
    }
    let ext = match buf[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if buf[1] & 0x80 != 0 { 4 } else { 0 }
}

/// Parse the frame header at the start of `buf`; `Ok(None)` when more bytes are needed.
pub(crate) fn head(buf: &[u8]) -> Result<Option<Head>, WireError> {
    let need = head_len_needed(buf);
    if buf.len() < need {
        return Ok(None);
    }
    let b0 = buf[0];
    // RSV1 is permessage-deflate's: whether it was negotiated is the caller's check.
    if b0 & 0x30 != 0 {
        return Err(WireError::Protocol(format!(
            "reserved bits set (first byte {b0:#04x})"
        )));
    }
    let len7 = (buf[1] & 0x7f) as usize;
    let (payload_len, at) = match len7 {
        126 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b).min(usize::MAX as u64) as usize, 10)
        }
        n => (n, 2),
    };
    if payload_len > MAX_FRAME {
        return Err(WireError::Protocol(format!("frame of {payload_len} bytes")));
    }
    let mask = (buf[1] & 0x80 != 0).then(|| [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    Ok(Some(Head {
        fin: b0 & 0x80 != 0,
        rsv1: b0 & 0x40 != 0,
        opcode: b0 & 0x0f,
        head_len: need,
        payload_len,
        mask,
    }))
}

/// Tiny xorshift generator for mask keys (masking is a protocol rule, not a security need here).
pub(crate) struct MaskRng(u64);

impl MaskRng {
    pub(crate) fn new() -> Self {
        MaskRng(getrandom::u64().unwrap_or(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> [u8; 4] {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x as u32).to_ne_bytes()
    }
}

/// Append one masked client frame (FIN set) to `out`.
pub(crate) fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], rng: &mut MaskRng) {
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    let mask = rng.next();
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Unmask in place (server frames should never be masked; tolerated anyway).
pub(crate) fn unmask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Perform the client side of the WebSocket upgrade. Returns bytes read past the response head
/// (the start of the frame stream), and whether the server agreed to permessage-deflate (offered
/// only when `deflate`, as browsers offer it).
pub(crate) async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
    path_and_query: &str,
    subprotocol: &str,
    deflate: bool,
) -> Result<(Vec<u8>, bool), WireError> {
    let mut key_raw = [0u8; 16];
    getrandom::fill(&mut key_raw).map_err(|e| WireError::BadUpgrade(format!("getrandom: {e}")))?;
    let key = base64::engine::general_purpose::STANDARD.encode(key_raw);
    let offer = if deflate {
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    } else {
        ""
    };
    let req = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {subprotocol}\r\n\
         {offer}User-Agent: herald-bench\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(WireError::BadUpgrade("response head too large".into()));
        }
        let mut chunk = [0u8; 2048];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(WireError::Eof);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if status != 101 {
        // Read a little of the error body, if it arrived with the head (bounded: no extra reads
        // beyond one short attempt).
        let mut body = buf[head_end..].to_vec();
        if body.is_empty() {
            let mut chunk = [0u8; 1024];
            if let Ok(Ok(n)) =
                tokio::time::timeout(std::time::Duration::from_millis(200), s.read(&mut chunk))
                    .await
            {
                body.extend_from_slice(&chunk[..n]);
            }
        }
        let body = String::from_utf8_lossy(&body[..body.len().min(300)])
            .trim()
            .to_string();
        return Err(WireError::Refused { status, body });
    }
    let mut hasher = Sha1::new();
    hasher.update(key.as_bytes());
    hasher.update(WS_GUID.as_bytes());
    let expect = base64::engine::general_purpose::STANDARD.encode(hasher.finalize());
    let (mut accepted, mut agreed) = (false, false);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("sec-websocket-accept") {
                accepted = value.trim() == expect;
            }
            if name.trim().eq_ignore_ascii_case("sec-websocket-extensions") {
                agreed |= value.trim().starts_with("permessage-deflate");
            }
        }
    }
    if agreed && !deflate {
        return Err(WireError::BadUpgrade(
            "permessage-deflate agreed but not offered".into(),
        ));
    }
    if !accepted {
        return Err(WireError::BadUpgrade(
            "missing or wrong Sec-WebSocket-Accept".into(),
        ));
    }
    Ok((buf[head_end..].to_vec(), agreed))
}

thread_local! {
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// Inflates one compressed message (RFC 7692: raw deflate, the sync tail `00 00 ff ff` removed
/// by the sender) into `out`, which it empties first; at most `MAX_FRAME` bytes.
pub(crate) fn inflate(payload: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
    const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];
    out.clear();
    INFLATER.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        for mut input in [payload, &TAIL[..]] {
            loop {
                if out.capacity() - out.len() < 4096 {
                    out.reserve(out.capacity().clamp(4096, MAX_FRAME));
                }
                let (in0, out0) = (d.total_in(), out.len());
                let status = d
                    .decompress_vec(input, out, FlushDecompress::Sync)
                    .map_err(|e| WireError::Protocol(format!("inflate: {e}")))?;
                input = &input[(d.total_in() - in0) as usize..];
                if out.len() > MAX_FRAME {
                    return Err(WireError::Protocol("inflated message too large".into()));
                }
                if status == Status::StreamEnd {
                    return Ok(());
                }
                let progressed = d.total_in() > in0 || out.len() > out0;
                if (input.is_empty() && out.len() < out.capacity()) || !progressed {
                    break;
                }
            }
        }
        Ok(())
    })
}

/// A frame reader for low-rate paths. Reassembles nothing: fragmented data frames are an error
/// here (the server sends one message per frame).
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    /// permessage-deflate was agreed: RSV1 frames are inflated (into `inflated`).
    deflate: bool,
    inflated: Vec<u8>,
    /// Room made in `buf` before each read.
    chunk: usize,
}

pub(crate) struct Frame<'a> {
    pub opcode: u8,
    pub payload: &'a [u8],
}

impl FrameReader {
    pub(crate) fn new(initial: Vec<u8>, deflate: bool) -> Self {
        FrameReader {
            buf: initial,
            start: 0,
            deflate,
            inflated: Vec::new(),
            chunk: 16 << 10,
        }
    }

    /// A reader that reads at most `chunk` bytes at a time: for a connection that only waits
    /// (a storm's held connections), whose buffer would otherwise be 16 KiB.
    pub(crate) fn with_chunk(initial: Vec<u8>, chunk: usize) -> Self {
        FrameReader {
            buf: initial,
            start: 0,
            deflate: false,
            inflated: Vec::new(),
            chunk: chunk.max(16),
        }
    }

    /// The bytes read but not yet returned as frames.
    pub(crate) fn into_leftover(mut self) -> Vec<u8> {
        self.buf.drain(..self.start);
        self.buf
    }

    /// The next complete frame (any opcode). Close frames become `WireError::Closed`.
    pub(crate) async fn next<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<Frame<'_>, WireError> {
        loop {
            if let Some(h) = head(&self.buf[self.start..])?
                && self.buf.len() - self.start >= h.total()
            {
                let from = self.start + h.head_len;
                let to = self.start + h.total();
                self.start = to;
                if let Some(m) = h.mask {
                    unmask(&mut self.buf[from..to], m);
                }
                if !h.fin || h.opcode == OP_CONT {
                    return Err(WireError::Protocol(
                        "fragmented frame on control path".into(),
                    ));
                }
                if h.rsv1 {
                    if !self.deflate || h.opcode & 0x8 != 0 {
                        return Err(WireError::Protocol(
                            "RSV1 without permessage-deflate, or on a control frame".into(),
                        ));
                    }
                    inflate(&self.buf[from..to], &mut self.inflated)?;
                    return Ok(Frame {
                        opcode: h.opcode,
                        payload: &self.inflated,
                    });
                }
                if h.opcode == OP_CLOSE {
                    let p = &self.buf[from..to];
                    let code = if p.len() >= 2 {
                        u16::from_be_bytes([p[0], p[1]])
                    } else {
                        1005
                    };
                    return Err(WireError::Closed(code));
                }
                return Ok(Frame {
                    opcode: h.opcode,
                    payload: &self.buf[from..to],
                });
            }
            if self.start > 0 && self.start >= self.buf.len() / 2 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            self.buf.reserve(self.chunk);
            let n = r.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(WireError::Eof);
            }
        }
    }
}

/// First index of `needle` in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut at = 0;
    while at + needle.len() <= hay.len() {
        let p = hay[at..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)?;
        let i = at + p;
        if &hay[i + 1..i + needle.len()] == rest {
            return Some(i);
        }
        at = i + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_roundtrip_lengths() {
        let mut rng = MaskRng::new();
        for n in [0usize, 1, 125, 126, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let mut out = Vec::new();
            push_frame(&mut out, OP_TEXT, &payload, &mut rng);
            let h = head(&out).unwrap().unwrap();
            assert_eq!(h.payload_len, n);
            assert_eq!(h.total(), out.len());
            let mut p = out[h.head_len..].to_vec();
            unmask(&mut p, h.mask.unwrap());
            assert_eq!(p, payload);
        }
    }

    #[test]
    fn find_works() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"\"t\":1", b"\"t\":"), Some(0));
    }
}
