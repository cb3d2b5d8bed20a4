//! The two subprotocols as the bench needs them: building requests, and pulling `t`/`s` out of
//! `msg` frames by scanning bytes (JSON) or walking the MessagePack map minimally, never by full
//! deserialisation on the hot path. Replies on the control path are decoded fully (they are rare).

use crate::wire::find;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    Json,
    Msgpack,
}

impl Codec {
    pub fn subprotocol(self) -> &'static str {
        match self {
            Codec::Json => "herald.v1.json",
            Codec::Msgpack => "herald.v1.msgpack",
        }
    }
    pub fn opcode(self) -> u8 {
        match self {
            Codec::Json => crate::wire::OP_TEXT,
            Codec::Msgpack => crate::wire::OP_BINARY,
        }
    }
}

/// What a fast scan found in a server frame.
pub enum Scan {
    Msg {
        t: u64,
        s: u64,
    },
    /// A `msg` whose data has no numeric `t`/`s` (not ours).
    ForeignMsg,
    /// Anything else (`ok`, `error`, `welcome`, ...).
    Other,
}

/// Decode a control-path frame fully (welcome, ok, error).
pub fn decode(codec: Codec, payload: &[u8]) -> Option<Value> {
    match codec {
        Codec::Json => serde_json::from_slice(payload).ok(),
        Codec::Msgpack => rmp_serde::from_slice(payload).ok(),
    }
}

pub fn sub_request(codec: Codec, id: u64, topic: &str) -> Vec<u8> {
    match codec {
        Codec::Json => format!(r#"{{"op":"sub","id":{id},"topic":"{topic}"}}"#).into_bytes(),
        Codec::Msgpack => {
            let mut o = Vec::with_capacity(32 + topic.len());
            mp_map(&mut o, 3);
            mp_str(&mut o, "op");
            mp_str(&mut o, "sub");
            mp_str(&mut o, "id");
            mp_uint(&mut o, id);
            mp_str(&mut o, "topic");
            mp_str(&mut o, topic);
            o
        }
    }
}

/// The `data` object in JSON: `{"t":..,"s":..,"p":"xxx"}`.
pub fn json_data(out: &mut Vec<u8>, t: u64, s: u64, pad: usize) {
    use std::io::Write as _;
    let _ = write!(out, r#"{{"t":{t},"s":{s},"p":""#);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
}

/// A `pub` request for the WebSocket publisher, appended to `out`.
pub fn pub_request(
    codec: Codec,
    out: &mut Vec<u8>,
    id: u64,
    topic: &str,
    t: u64,
    s: u64,
    pad: usize,
) {
    match codec {
        Codec::Json => {
            use std::io::Write as _;
            let _ = write!(out, r#"{{"op":"pub","id":{id},"topic":"{topic}","data":"#);
            json_data(out, t, s, pad);
            out.push(b'}');
        }
        Codec::Msgpack => {
            mp_map(out, 4);
            mp_str(out, "op");
            mp_str(out, "pub");
            mp_str(out, "id");
            mp_uint(out, id);
            mp_str(out, "topic");
            mp_str(out, topic);
            mp_str(out, "data");
            mp_data(out, t, s, pad);
        }
    }
}

fn mp_data(out: &mut Vec<u8>, t: u64, s: u64, pad: usize) {
    mp_map(out, 3);
    mp_str(out, "t");
    mp_uint(out, t);
    mp_str(out, "s");
    mp_uint(out, s);
    mp_str(out, "p");
    mp_str_len(out, pad);
    out.resize(out.len() + pad, b'x');
}

/// Padding length so that the `msg` frame a subscriber receives is about `size` bytes in total
/// (WebSocket header included), given the topic and epoch as the server reported them.
pub fn pad_for(codec: Codec, size: usize, topic: &str, epoch: &str) -> usize {
    // Representative values: t about 10^10 ns (11 digits), offset and seq of 5 digits.
    let (t, s, offset) = (10_000_000_000u64, 10_000u64, 10_000u64);
    let base = match codec {
        Codec::Json => {
            let mut d = Vec::new();
            json_data(&mut d, t, s, 0);
            format!(r#"{{"op":"msg","topic":"{topic}","offset":{offset},"epoch":"{epoch}","data":"#)
                .len()
                + d.len()
                + 1
        }
        Codec::Msgpack => {
            let mut o = Vec::new();
            mp_map(&mut o, 5);
            for (k, v) in [("op", "msg"), ("topic", topic), ("epoch", epoch)] {
                mp_str(&mut o, k);
                mp_str(&mut o, v);
            }
            mp_str(&mut o, "offset");
            mp_uint(&mut o, offset);
            mp_str(&mut o, "data");
            mp_data(&mut o, t, s, 0);
            o.len()
        }
    };
    let frame = |p: usize| {
        let n = base
            + p
            + if codec == Codec::Msgpack && p >= 32 {
                1
            } else {
                0
            };
        n + if n < 126 { 2 } else { 4 }
    };
    let mut pad = size.saturating_sub(frame(0));
    while pad > 0 && frame(pad) > size {
        pad -= 1;
    }
    pad
}

// ---------------------------------------------------------------------------------------------
// Hot path scanning.

/// Scan a server frame for a bench `msg`.
#[inline]
pub fn scan(codec: Codec, p: &[u8]) -> Scan {
    match codec {
        Codec::Json => scan_json(p),
        Codec::Msgpack => scan_msgpack(p),
    }
}

fn scan_json(p: &[u8]) -> Scan {
    const FAST: &[u8] = br#"{"op":"msg""#;
    if !p.starts_with(FAST) && find(p, br#""op":"msg""#).is_none() {
        return Scan::Other;
    }
    let Some(d) = find(p, br#""data":"#) else {
        return Scan::ForeignMsg;
    };
    let data = &p[d + 7..];
    match (
        json_uint_after(data, br#""t":"#),
        json_uint_after(data, br#""s":"#),
    ) {
        (Some(t), Some(s)) => Scan::Msg { t, s },
        _ => Scan::ForeignMsg,
    }
}

fn json_uint_after(hay: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(hay, key)? + key.len();
    let rest = &hay[at..];
    let skip = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
    let digits = &rest[skip..];
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    Some(
        digits[..n]
            .iter()
            .fold(0u64, |a, &b| a * 10 + (b - b'0') as u64),
    )
}

fn scan_msgpack(p: &[u8]) -> Scan {
    let mut r = Mp { b: p, i: 0 };
    let Some(n) = r.map_len() else {
        return Scan::Other;
    };
    let mut is_msg = false;
    let mut ts = None;
    for _ in 0..n {
        let Some(k) = r.str() else { return Scan::Other };
        match k {
            b"op" => match r.str() {
                Some(v) => is_msg = v == b"msg",
                None => return Scan::Other,
            },
            b"data" => {
                ts = r.data_ts();
            }
            _ => {
                if r.skip(0).is_none() {
                    return Scan::Other;
                }
            }
        }
    }
    match (is_msg, ts) {
        (true, Some((t, s))) => Scan::Msg { t, s },
        (true, None) => Scan::ForeignMsg,
        _ => Scan::Other,
    }
}

/// For publisher replies: (is ok, id) without full decoding in the common case.
pub fn scan_reply(codec: Codec, p: &[u8]) -> Option<(bool, u64)> {
    match codec {
        Codec::Json => {
            let ok = p.starts_with(br#"{"op":"ok""#) || find(p, br#""op":"ok""#).is_some();
            let err = !ok && find(p, br#""op":"error""#).is_some();
            if !ok && !err {
                return None;
            }
            Some((ok, json_uint_after(p, br#""id":"#).unwrap_or(0)))
        }
        Codec::Msgpack => {
            let mut r = Mp { b: p, i: 0 };
            let n = r.map_len()?;
            let (mut op, mut id) = (None, 0);
            for _ in 0..n {
                match r.str()? {
                    b"op" => op = Some(r.str()?.to_vec()),
                    b"id" => id = r.uint()?,
                    _ => r.skip(0)?,
                }
            }
            match op.as_deref() {
                Some(b"ok") => Some((true, id)),
                Some(b"error") => Some((false, id)),
                _ => None,
            }
        }
    }
}

/// Minimal MessagePack reader.
struct Mp<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Mp<'a> {
    fn u8(&mut self) -> Option<u8> {
        let v = *self.b.get(self.i)?;
        self.i += 1;
        Some(v)
    }
    fn be(&mut self, n: usize) -> Option<u64> {
        let s = self.b.get(self.i..self.i + n)?;
        self.i += n;
        Some(s.iter().fold(0u64, |a, &x| (a << 8) | x as u64))
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.i..self.i.checked_add(n)?)?;
        self.i += n;
        Some(s)
    }
    fn map_len(&mut self) -> Option<usize> {
        match self.u8()? {
            m @ 0x80..=0x8f => Some((m & 0x0f) as usize),
            0xde => self.be(2).map(|v| v as usize),
            0xdf => self.be(4).map(|v| v as usize),
            _ => None,
        }
    }
    fn str(&mut self) -> Option<&'a [u8]> {
        let n = match self.u8()? {
            m @ 0xa0..=0xbf => (m & 0x1f) as usize,
            0xd9 | 0xc4 => self.be(1)? as usize,
            0xda | 0xc5 => self.be(2)? as usize,
            0xdb | 0xc6 => self.be(4)? as usize,
            _ => return None,
        };
        self.take(n)
    }
    fn uint(&mut self) -> Option<u64> {
        match self.u8()? {
            v @ 0x00..=0x7f => Some(v as u64),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            0xd0 => self.be(1).filter(|v| *v < 0x80),
            0xd1 => self.be(2).filter(|v| *v < 0x8000),
            0xd2 => self.be(4).filter(|v| *v < 0x8000_0000),
            0xd3 => self.be(8).filter(|v| *v < 1 << 63),
            _ => None,
        }
    }
    /// `data`: a map with `t` and `s`, or a string/bin holding JSON (tolerated).
    fn data_ts(&mut self) -> Option<(u64, u64)> {
        let save = self.i;
        if let Some(n) = self.map_len() {
            let (mut t, mut s) = (None, None);
            for _ in 0..n {
                match self.str()? {
                    b"t" => t = Some(self.uint()?),
                    b"s" => s = Some(self.uint()?),
                    _ => self.skip(0)?,
                }
            }
            return Some((t?, s?));
        }
        self.i = save;
        let raw = self.str()?;
        Some((
            json_uint_after(raw, br#""t":"#)?,
            json_uint_after(raw, br#""s":"#)?,
        ))
    }
    /// Skip one value of any type (depth-bounded).
    fn skip(&mut self, depth: u32) -> Option<()> {
        if depth > 32 {
            return None;
        }
        let m = self.u8()?;
        let skip_n = |me: &mut Self, n: usize| me.take(n).map(|_| ());
        match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Some(()),
            0x80..=0x8f => self.skip_items(2 * (m & 0x0f) as usize, depth),
            0x90..=0x9f => self.skip_items((m & 0x0f) as usize, depth),
            0xa0..=0xbf => skip_n(self, (m & 0x1f) as usize),
            0xc4 | 0xd9 => {
                let n = self.be(1)? as usize;
                skip_n(self, n)
            }
            0xc5 | 0xda => {
                let n = self.be(2)? as usize;
                skip_n(self, n)
            }
            0xc6 | 0xdb => {
                let n = self.be(4)? as usize;
                skip_n(self, n)
            }
            0xc7 => {
                let n = self.be(1)? as usize;
                skip_n(self, n + 1)
            }
            0xc8 => {
                let n = self.be(2)? as usize;
                skip_n(self, n + 1)
            }
            0xc9 => {
                let n = self.be(4)? as usize;
                skip_n(self, n + 1)
            }
            0xca => skip_n(self, 4),
            0xcb => skip_n(self, 8),
            0xcc | 0xd0 => skip_n(self, 1),
            0xcd | 0xd1 => skip_n(self, 2),
            0xce | 0xd2 => skip_n(self, 4),
            0xcf | 0xd3 => skip_n(self, 8),
            0xd4 => skip_n(self, 2),
            0xd5 => skip_n(self, 3),
            0xd6 => skip_n(self, 5),
            0xd7 => skip_n(self, 9),
            0xd8 => skip_n(self, 17),
            0xdc => {
                let n = self.be(2)? as usize;
                self.skip_items(n, depth)
            }
            0xdd => {
                let n = self.be(4)? as usize;
                self.skip_items(n, depth)
            }
            0xde => {
                let n = self.be(2)? as usize;
                self.skip_items(2 * n, depth)
            }
            0xdf => {
                let n = self.be(4)? as usize;
                self.skip_items(2 * n, depth)
            }
            0xc1 => None,
        }
    }
    fn skip_items(&mut self, n: usize, depth: u32) -> Option<()> {
        for _ in 0..n {
            self.skip(depth + 1)?;
        }
        Some(())
    }
}

fn mp_map(o: &mut Vec<u8>, n: usize) {
    if n < 16 {
        o.push(0x80 | n as u8);
    } else {
        o.push(0xde);
        o.extend_from_slice(&(n as u16).to_be_bytes());
    }
}

fn mp_str_len(o: &mut Vec<u8>, n: usize) {
    if n < 32 {
        o.push(0xa0 | n as u8);
    } else if n < 256 {
        o.extend_from_slice(&[0xd9, n as u8]);
    } else if n < 65536 {
        o.push(0xda);
        o.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        o.push(0xdb);
        o.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

fn mp_str(o: &mut Vec<u8>, s: &str) {
    mp_str_len(o, s.len());
    o.extend_from_slice(s.as_bytes());
}

fn mp_uint(o: &mut Vec<u8>, v: u64) {
    if v < 128 {
        o.push(v as u8);
    } else if v < 256 {
        o.extend_from_slice(&[0xcc, v as u8]);
    } else if v < 65536 {
        o.push(0xcd);
        o.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v < 1 << 32 {
        o.push(0xce);
        o.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        o.push(0xcf);
        o.extend_from_slice(&v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_scan_finds_t_and_s_in_any_order() {
        let a = br#"{"op":"msg","topic":"bench.0","offset":3,"epoch":"e","data":{"p":"xx","s":7,"t":123}}"#;
        assert!(matches!(scan(Codec::Json, a), Scan::Msg { t: 123, s: 7 }));
        let b = br#"{"topic":"bench.0","op":"msg","data":{"t":5,"s":6,"p":""},"offset":1}"#;
        assert!(matches!(scan(Codec::Json, b), Scan::Msg { t: 5, s: 6 }));
        assert!(matches!(
            scan(Codec::Json, br#"{"op":"ok","id":1}"#),
            Scan::Other
        ));
    }

    #[test]
    fn msgpack_scan_matches_rmp_encoding() {
        let v = serde_json::json!({"op":"msg","topic":"bench.1","offset":99,"epoch":"ep",
            "data":{"t": 12_345_678_901u64, "s": 300, "p": "x".repeat(40)}});
        let bytes = rmp_serde::to_vec_named(&v).unwrap();
        assert!(matches!(
            scan(Codec::Msgpack, &bytes),
            Scan::Msg {
                t: 12_345_678_901,
                s: 300
            }
        ));
        let ok =
            rmp_serde::to_vec_named(&serde_json::json!({"op":"ok","id":77,"offset":1})).unwrap();
        assert_eq!(scan_reply(Codec::Msgpack, &ok), Some((true, 77)));
    }

    #[test]
    fn msgpack_pub_request_decodes() {
        let mut o = Vec::new();
        pub_request(Codec::Msgpack, &mut o, 9, "bench.3", 1 << 40, 5, 50);
        let v: Value = rmp_serde::from_slice(&o).unwrap();
        assert_eq!(v["op"], "pub");
        assert_eq!(v["data"]["t"], 1u64 << 40);
        assert_eq!(v["data"]["p"].as_str().unwrap().len(), 50);
        let mut j = Vec::new();
        pub_request(Codec::Json, &mut j, 9, "bench.3", 1, 5, 3);
        let v: Value = serde_json::from_slice(&j).unwrap();
        assert_eq!(v["data"]["p"], "xxx");
    }

    #[test]
    fn pad_hits_target_size() {
        let p = pad_for(Codec::Json, 100, "bench.0", "abcdefgh");
        let mut d = Vec::new();
        json_data(&mut d, 10_000_000_000, 10_000, p);
        let frame =
            format!(r#"{{"op":"msg","topic":"bench.0","offset":10000,"epoch":"abcdefgh","data":"#)
                .len()
                + d.len()
                + 1
                + 2;
        assert_eq!(frame, 100);
    }
}
