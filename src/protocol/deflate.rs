//! permessage-deflate (RFC 7692) in Herald's own framing: the negotiation of the upgrade, the
//! compression of a server frame, and the bounded inflation of a client message.
//!
//! Herald agrees only to `server_no_context_takeover; client_no_context_takeover`: every message
//! either way is compressed on its own, so a broadcast is deflated **once per codec** and the same
//! frame shared by every subscriber that negotiated the extension, and no connection holds a
//! compressor or an inflater. The state that does exist is one deflater and one inflater per
//! thread that used them (reset before every message: a message never refers to another), never
//! one per connection. Offers it cannot honour (a `server_max_window_bits` below 15: the
//! deflater always uses the 32 KiB window) are declined, and so are malformed ones: the upgrade
//! then goes on without the extension, it never fails because of it.
//!
//! Inflation is bounded by the message limit: output goes into a buffer that grows to at most the
//! limit, and a message that would inflate past it is refused (1009) as soon as it reaches it.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::websocket::{MAX_SERVER_HEADER, OpCode, WsError, server_header};

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const EXTENSION: &str = "permessage-deflate";

/// The answer to an accepted offer.
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/// The answer to an accepted offer that named `server_max_window_bits=15` (RFC 7692 §7.1.2.1:
/// accepting that parameter means answering it).
const ANSWER_WINDOW: &str = "permessage-deflate; server_no_context_takeover; \
                             client_no_context_takeover; server_max_window_bits=15";

/// The four octets a deflate sync flush ends with, removed from every compressed message and
/// appended again before inflating one (RFC 7692 §7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Compression level: zlib's default. A broadcast is compressed once and its bytes sent to every
/// subscriber, so a better ratio is worth more than a faster pass here.
const LEVEL: u32 = 6;

/// The smallest payload compressed by default (`compression_min_bytes`). Below about half a
/// kilobyte a frame fits in one TCP segment whether compressed or not, and deflating saves a few
/// dozen bytes against a deflate on the node and an inflate on every client.
pub const DEFAULT_MIN_BYTES: usize = 512;

/// Most offers (extension elements) read from one upgrade request; any past them are ignored.
const MAX_OFFERS: usize = 32;

/// The smallest buffer an inflated message starts with.
const MIN_INFLATE: usize = 4096;

/// Scratch space a thread's deflater keeps between messages; a larger one is freed after use.
const KEEP_SCRATCH: usize = 256 * 1024;

/// Why an upgrade goes on without permessage-deflate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Declined {
    /// The client offered no permessage-deflate.
    #[error("not offered")]
    NotOffered,
    /// An offer's syntax is wrong (RFC 6455 §9.1).
    #[error("malformed offer: {0}")]
    Malformed(&'static str),
    /// An offer Herald cannot honour, or that RFC 7692 §5 says to decline.
    #[error("offer declined: {0}")]
    Unsupported(&'static str),
}

/// An accepted permessage-deflate offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The offer named `server_max_window_bits=15`, which the answer repeats.
    window_named: bool,
}

impl Agreed {
    /// The `Sec-WebSocket-Extensions` value of the 101.
    pub fn answer(self) -> &'static str {
        if self.window_named {
            ANSWER_WINDOW
        } else {
            ANSWER
        }
    }
}

/// Chooses among the permessage-deflate offers of the `Sec-WebSocket-Extensions` header values
/// (every one the request carried, in order): the first the server can honour, in the client's
/// order of preference. Other extensions are ignored; a malformed header value offers nothing.
/// The error says why the last offer was declined ([`Declined::NotOffered`] when there was none).
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Agreed, Declined> {
    let mut why = Declined::NotOffered;
    let mut seen = 0;
    for value in values {
        let elements = match split_unquoted(value, b',') {
            Ok(e) => e,
            Err(e) => {
                why = e;
                continue;
            }
        };
        for element in elements {
            let element = element.trim_matches(OWS);
            if element.is_empty() {
                continue;
            }
            seen += 1;
            if seen > MAX_OFFERS {
                return Err(why);
            }
            match offer(element) {
                Ok(Some(agreed)) => return Ok(agreed),
                Ok(None) => {}
                Err(e) => why = e,
            }
        }
    }
    Err(why)
}

const OWS: &[char] = &[' ', '\t'];

/// One extension element: `Ok(None)` when it is another extension than permessage-deflate.
fn offer(element: &str) -> Result<Option<Agreed>, Declined> {
    let mut parts = split_unquoted(element, b';')?.into_iter();
    let name = parts.next().unwrap_or("").trim_matches(OWS);
    if !is_token(name) {
        return Err(Declined::Malformed("an extension name is not a token"));
    }
    if !name.eq_ignore_ascii_case(EXTENSION) {
        return Ok(None);
    }
    let (mut server_nct, mut client_nct, mut server_bits, mut client_bits) =
        (false, false, None, false);
    for param in parts {
        let param = param.trim_matches(OWS);
        let (key, value) = match param.split_once('=') {
            None => (param, None),
            Some((k, v)) => (k.trim_matches(OWS), Some(param_value(v.trim_matches(OWS))?)),
        };
        if !is_token(key) {
            return Err(Declined::Malformed("a parameter name is not a token"));
        }
        let dup = || Declined::Unsupported("a parameter is given twice");
        match key.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" | "client_no_context_takeover" if value.is_some() => {
                return Err(Declined::Unsupported("a *_no_context_takeover has a value"));
            }
            "server_no_context_takeover" => {
                if std::mem::replace(&mut server_nct, true) {
                    return Err(dup());
                }
            }
            "client_no_context_takeover" => {
                if std::mem::replace(&mut client_nct, true) {
                    return Err(dup());
                }
            }
            "server_max_window_bits" => {
                let bits = value
                    .as_deref()
                    .and_then(window_bits)
                    .ok_or(Declined::Unsupported(
                        "server_max_window_bits needs a value from 8 to 15",
                    ))?;
                if server_bits.replace(bits).is_some() {
                    return Err(dup());
                }
            }
            "client_max_window_bits" => {
                // A hint that the client can use a smaller window: accepted, with or without a
                // value, by not constraining it (the answer leaves it out).
                if value.as_deref().is_some_and(|v| window_bits(v).is_none()) {
                    return Err(Declined::Unsupported(
                        "client_max_window_bits has a value outside 8 to 15",
                    ));
                }
                if std::mem::replace(&mut client_bits, true) {
                    return Err(dup());
                }
            }
            _ => return Err(Declined::Unsupported("an unknown parameter")),
        }
    }
    match server_bits {
        Some(b) if b < 15 => Err(Declined::Unsupported(
            "server_max_window_bits below 15: the deflater always uses a 32 KiB window",
        )),
        bits => Ok(Some(Agreed {
            window_named: bits.is_some(),
        })),
    }
}

/// `8` to `15`, spelled without leading zeros.
fn window_bits(v: &str) -> Option<u8> {
    match v {
        "8" | "9" | "10" | "11" | "12" | "13" | "14" | "15" => v.parse().ok(),
        _ => None,
    }
}

/// A parameter's value: a token, or a quoted string whose content is a token (RFC 6455 §9.1).
fn param_value(v: &str) -> Result<String, Declined> {
    let unquoted = match v.strip_prefix('"') {
        None => v.to_owned(),
        Some(rest) => {
            let inner = rest
                .strip_suffix('"')
                .ok_or(Declined::Malformed("an unterminated quoted value"))?;
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                out.push(if c == '\\' {
                    chars
                        .next()
                        .ok_or(Declined::Malformed("a quoted value ends in a backslash"))?
                } else {
                    c
                });
            }
            out
        }
    };
    if is_token(&unquoted) {
        Ok(unquoted)
    } else {
        Err(Declined::Malformed("a parameter value is not a token"))
    }
}

/// RFC 7230 `token`: one or more `tchar`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Splits `s` on `sep` outside quoted strings (with their backslash escapes).
fn split_unquoted(s: &str, sep: u8) -> Result<Vec<&str>, Declined> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, b) in s.bytes().enumerate() {
        if quoted {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => quoted = false,
                _ => {}
            }
        } else if b == b'"' {
            quoted = true;
        } else if b == sep {
            out.push(&s[start..i]);
            start = i + 1;
        }
    }
    if quoted {
        return Err(Declined::Malformed("an unterminated quoted string"));
    }
    out.push(&s[start..]);
    Ok(out)
}

/// A thread's deflater and the scratch space it compresses into.
struct Deflater {
    compress: Compress,
    scratch: Vec<u8>,
}

thread_local! {
    static DEFLATER: RefCell<Option<Box<Deflater>>> = const { RefCell::new(None) };
    static INFLATER: RefCell<Option<Box<Decompress>>> = const { RefCell::new(None) };
}

/// The payload of a complete, unmasked, final server frame, and its opcode bits.
fn split_server_frame(frame: &[u8]) -> Option<(u8, &[u8])> {
    let (&b0, rest) = frame.split_first()?;
    let at = match rest.first()? & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    Some((b0 & 0x0f, frame.get(at..)?))
}

/// The compressed form of `plain`, a complete server data frame made by this crate (final,
/// unmasked): the same message deflated on its own, RSV1 set, the sync tail removed. When
/// deflating does not make it smaller, `plain` itself (a message may go uncompressed on a
/// connection that negotiated the extension). One compression, whatever the number of
/// subscribers the result is queued to.
pub fn deflate_frame(plain: &Bytes) -> Bytes {
    let Some((bits, payload)) = split_server_frame(plain) else {
        return plain.clone();
    };
    let opcode = match bits {
        0x1 => OpCode::Text,
        0x2 => OpCode::Binary,
        _ => return plain.clone(),
    };
    compressed_frame(opcode, payload).unwrap_or_else(|| plain.clone())
}

/// A final server frame of `opcode` carrying `payload` deflated (RSV1 set), or `None` when the
/// compressed payload would not be smaller than `payload`.
pub fn compressed_frame(opcode: OpCode, payload: &[u8]) -> Option<Bytes> {
    compress(opcode, payload, true)
}

/// A final server frame of `opcode` carrying `payload` deflated (RSV1 set), even when that is
/// larger than `payload` (the conformance echo compresses everything); plain only if the
/// deflater failed.
pub fn always_compressed_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    compress(opcode, payload, false)
        .unwrap_or_else(|| super::websocket::server_frame(opcode, payload))
}

fn compress(opcode: OpCode, payload: &[u8], only_smaller: bool) -> Option<Bytes> {
    DEFLATER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d = slot.get_or_insert_with(|| {
            Box::new(Deflater {
                compress: Compress::new(Compression::new(LEVEL), false),
                scratch: Vec::new(),
            })
        });
        d.compress.reset();
        d.scratch.clear();
        let deflated = deflate_into(&mut d.compress, payload, &mut d.scratch);
        let frame = deflated.then(|| {
            let body = &d.scratch[..d.scratch.len() - TAIL.len()];
            (!only_smaller || body.len() < payload.len()).then(|| {
                let mut h = [0u8; MAX_SERVER_HEADER];
                let start = server_header(opcode, body.len(), &mut h);
                h[start] |= 0x40;
                let mut f = Vec::with_capacity(MAX_SERVER_HEADER - start + body.len());
                f.extend_from_slice(&h[start..]);
                f.extend_from_slice(body);
                Bytes::from(f)
            })
        });
        if d.scratch.capacity() > KEEP_SCRATCH {
            d.scratch = Vec::new();
        }
        frame.flatten()
    })
}

/// Deflates `input` with a sync flush into `out`; true when the output ends with the sync tail
/// (always, unless the deflater failed).
fn deflate_into(c: &mut Compress, input: &[u8], out: &mut Vec<u8>) -> bool {
    out.reserve(input.len() / 2 + 64);
    let mut at = 0;
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(1024));
        }
        let before = c.total_in();
        if c.compress_vec(&input[at..], out, FlushCompress::Sync)
            .is_err()
        {
            return false;
        }
        at += (c.total_in() - before) as usize;
        // All input taken and room left over: the flush is complete.
        if at == input.len() && out.len() < out.capacity() {
            return out.ends_with(&TAIL);
        }
    }
}

/// Inflates one compressed message (`payload` as received, without the sync tail) into a new
/// buffer of at most `limit` bytes. A message that would inflate past `limit` is
/// [`WsError::TooBig`] as soon as its output reaches it; data that is not raw deflate is
/// [`WsError::BadDeflate`].
pub fn inflate(payload: &[u8], limit: usize) -> Result<Vec<u8>, WsError> {
    let mut out = Vec::new();
    inflate_into(payload, limit, &mut out)?;
    Ok(out)
}

/// [`inflate`] into `out` (which it empties first); `out` never grows past `limit` bytes of
/// capacity, whatever the input.
pub fn inflate_into(payload: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), WsError> {
    out.clear();
    if out.capacity() > limit {
        *out = Vec::new();
    }
    let start = payload.len().saturating_mul(4).max(MIN_INFLATE).min(limit);
    out.reserve_exact(start);
    INFLATER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d = slot.get_or_insert_with(|| Box::new(Decompress::new(false)));
        d.reset(false);
        for input in [payload, &TAIL[..]] {
            if inflate_part(d, input, limit, out)? {
                break;
            }
        }
        Ok(())
    })
}

/// Feeds one part of the input; true when the stream ended (a final block: the rest is ignored).
/// Output goes into `out` up to `limit` bytes; past that, one byte more is [`WsError::TooBig`].
fn inflate_part(
    d: &mut Decompress,
    mut input: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<bool, WsError> {
    loop {
        let len = out.len();
        let (in0, out0) = (d.total_in(), d.total_out());
        if len >= limit {
            // Full at the limit: any more output is a message over it.
            let mut probe = [0u8; 1];
            let status = d
                .decompress(input, &mut probe, FlushDecompress::Sync)
                .map_err(|_| WsError::BadDeflate)?;
            if d.total_out() > out0 {
                return Err(WsError::TooBig {
                    size: limit as u64 + 1,
                    limit,
                });
            }
            let used = (d.total_in() - in0) as usize;
            input = &input[used..];
            if status == Status::StreamEnd {
                return Ok(true);
            }
            if input.is_empty() || used == 0 {
                return Ok(false);
            }
            continue;
        }
        // Room: what is reserved, else as much again (at least MIN_INFLATE), never past limit.
        let end = if len < out.capacity() {
            out.capacity()
        } else {
            len + len.max(MIN_INFLATE)
        }
        .min(limit);
        out.reserve_exact(end - len);
        out.resize(end, 0);
        let r = d.decompress(input, &mut out[len..], FlushDecompress::Sync);
        let wrote = (d.total_out() - out0) as usize;
        out.truncate(len + wrote);
        let status = r.map_err(|_| WsError::BadDeflate)?;
        let used = (d.total_in() - in0) as usize;
        input = &input[used..];
        if status == Status::StreamEnd {
            return Ok(true);
        }
        // All input taken and room left over: nothing is pending.
        if (input.is_empty() && out.len() < end) || (used == 0 && wrote == 0) {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests;
